"""The local backend: one node runtime, this machine, in this process; no server.

Runs in the client: constructed by the executor, then used by the engine
thread only (and :meth:`LocalBackend.wake` from any thread). It hosts one
:class:`~loadmaster.node.runtime.NodeRuntime` and forwards to it: its
:meth:`~LocalBackend.wait` is the runtime's ``poll``, so the engine's loop is
one ``select`` on the zygotes' pipes and a wake pipe, as before the seam.

Does not cover: placement (the scheduler decides what starts), or what the
node does with an order (``node/runtime.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loadmaster.backends.base import Backend
from loadmaster.node.orders import Event, NodeConfig, NodeInfo, Order
from loadmaster.node.runtime import NodeRuntime


class LocalBackend(Backend):
    """One node runtime in this process.

    Args:
        config: the node to build (``NodeConfig()``: this machine, defaults).
        runtime: an already built runtime to host instead.
    """

    def __init__(self, config: NodeConfig | None = None, *, runtime: NodeRuntime | None = None) -> None:
        self.runtime = runtime if runtime is not None else NodeRuntime(config or NodeConfig())
        self.name = self.runtime.name
        self._closed = False

    def nodes(self) -> list[NodeInfo]:
        """The one node (none once closed)."""
        return [] if self._closed else [self.runtime.info]

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        """Hand ``orders`` to the runtime."""
        self.runtime.submit(orders)

    def cancel(self, node: str, task_id: int) -> None:
        """Stop a task on the runtime."""
        self.runtime.cancel(task_id)

    def wait(self, timeout: float | None) -> list[Event]:
        """The runtime's ``poll``."""
        return self.runtime.poll(timeout)  # type: ignore[return-value]

    def wake(self) -> None:
        """Wake a ``wait`` (any thread)."""
        self.runtime.wake()

    def admitter(self, node: str) -> Callable[[int], bool] | None:
        """The runtime's ledger admission, asked directly by the scheduler (``None``: no ledger)."""
        return self.runtime.admit if self.runtime.admission is not None else None

    def close(self) -> None:
        """Stop the runtime's zygotes and give its ledger share back (idempotent)."""
        if not self._closed:
            self._closed = True
            self.runtime.close()
