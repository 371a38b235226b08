"""The zygote's sandboxed-task slots: namespace slots, the sandbox module, the slots' forkers.

A mixin of :class:`~loadmaster.node.process.zygote.Zygote` (the loop and
forking are there): which namespace slot a sandboxed task runs in
(``ns_slots.py``), and the zygote's side of each slot's forker
(``slotforker.py``): made on demand, dropped when its policy or functions no
longer serve, made again when found dead.
"""

from __future__ import annotations

import _pickle as pickle  # see protocol.py
import gc
import os

from loadmaster.node.process.protocol import KIND_COMMAND, RunOrder
from loadmaster.node.process.slotforker import MISSES_BEFORE_REMAKE, SlotForker
from loadmaster.node.process.slotforker import make as make_forker

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.node.process.fncache import FnCache
    from loadmaster.node.process.running import Running


class SandboxSlots:
    """Namespace slots and their forkers (mixed into ``Zygote``)."""

    if TYPE_CHECKING:  # the Zygote's, used here
        _sandbox_mod: Any
        quiet_sandbox: bool
        sandbox_parent: str
        ns_pool: Any
        forkers: dict[int, SlotForker]
        notes: list[str]
        sock_w: Any
        fns: FnCache
        pinned: tuple[str, ...]
        close_in_child: tuple[int, ...]
        pidfds: dict[int, int]
        running: dict[int, Running]

        def _fork(self) -> int: ...

    def _sandbox(self) -> Any:
        """The sandbox module, imported on the first sandboxed task (it adds ~2 MiB)."""
        if self._sandbox_mod is None:
            from loadmaster.node.sandbox import policy as sandbox
            from loadmaster.node.sandbox import prepare

            prepare.quiet = self.quiet_sandbox
            self._sandbox_mod = sandbox
            gc.freeze()
        return self._sandbox_mod

    def _ns_slot(self, order: RunOrder) -> Any:
        """A namespace slot for a sandboxed task with a private /tmp, when one can serve it."""
        assert order.sandbox is not None
        policy, inputs, outputs = order.sandbox
        if not (policy.enabled and policy.private_tmp) or _tmpish(self.sandbox_parent):
            return None
        declared = (*policy.allow_read, *policy.allow_write, *inputs, *outputs)
        command = pickle.loads(order.payload) if order.kind == KIND_COMMAND else None
        if any(_tmpish(p) for p in declared) or (command is not None and command.cwd and _tmpish(command.cwd)):
            return None  # needs binds of its own: a namespace of its own
        if self.ns_pool is None:
            from loadmaster.node.sandbox.ns_slots import NamespacePool

            self.ns_pool = NamespacePool(self.sandbox_parent)
        return self.ns_pool.acquire(policy.tmp_size)

    def _forker(self, slot: Any, order: RunOrder) -> SlotForker | None:
        """The slot's forker for ``order`` (made now if need be), or None: the task takes the per-task path."""
        policy = order.sandbox[0]  # type: ignore[index]
        f = slot.forker
        if f is not None and f.policy != policy:
            self._drop_forker(slot)  # a slot serves one policy at a time
            f = None
        if f is not None and order.fn_key not in f.fn_keys:
            n = f.misses[order.fn_key] = f.misses.get(order.fn_key, 0) + 1
            if n < MISSES_BEFORE_REMAKE:
                return None
            self._drop_forker(slot)  # made again, with the functions the zygote holds now
            f = None
        if f is None:
            if slot.forker_broken:
                return None
            self._sandbox()  # imported (and frozen) before the fork, not in the forker
            dirs = self._sandbox().SandboxDirs(root=slot.root, workdir=slot.workdir, tmpdir=slot.tmpdir,
                                               shm=slot.shmdir, slot=slot, parent=self.sandbox_parent)
            f, why = make_forker(self._fork, slot, dirs, policy, report_sock=self.sock_w,
                                 close_fds=self._not_for_forkers(), fn_cache=self.fns, pinned=self.pinned)
            if f is None:
                slot.forker_broken = why
                self.notes.append(f"a namespace slot has no forker ({why}): its tasks take the per-task path")
                return None
            slot.forker = f
            self.forkers[f.pid] = f
        return f

    def _not_for_forkers(self) -> tuple[int, ...]:
        """The zygote's fds a new forker closes: the client's pipes, other forkers', running tasks'."""
        fds = [*self.close_in_child, *(f.sock.fileno() for f in self.forkers.values()), *self.pidfds]
        for r in self.running.values():
            if r.capture is not None:
                fds.extend(r.capture)
        return tuple(fds)

    def _drop_forker(self, slot: Any) -> None:
        f = slot.forker
        slot.forker = None
        if f is not None:
            self.forkers.pop(f.pid, None)
            f.close()

    def _fork_in_slot(self, forker: SlotForker, ns_slot: Any, order: RunOrder, capture: tuple[int, int],
                      slot: Any) -> int:
        """Have the slot's forker fork the task (its pid), or -1: the task takes the per-task path.

        A forker found gone is reaped and made again once, and the order (which
        it had not started) sent there; one that lacks the function counts a miss.
        """
        for _attempt in (0, 1):
            try:
                pid = forker.run(order, capture, None if slot is None else slot.fd_procs)
            except OSError:
                self._drop_forker(ns_slot)
                made = self._forker(ns_slot, order)
                if made is None:
                    return -1
                forker = made
                continue
            if pid < 0:
                forker.misses[order.fn_key] = forker.misses.get(order.fn_key, 0) + 1
                forker.fn_keys.discard(order.fn_key)
            return pid
        return -1



def _tmpish(path: str) -> bool:
    p = os.path.abspath(path)
    return any(p == top or p.startswith(top + "/") for top in ("/tmp", "/dev/shm"))
