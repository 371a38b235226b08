"""The task process's side: put itself into its sandbox before user code (:func:`enter`).

Runs in the forked task process, single-threaded. Every page of Python this
touches is a copy-on-write fault (~3 µs here): keep it lean.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Sequence

from loadmaster.errors import SandboxError
from loadmaster.node.sandbox import capabilities as caps
from loadmaster.node.sandbox import landlock, namespaces, seccomp
from loadmaster.node.sandbox.paths import (
    _PROC_RIGHTS,
    _around,
    _static_fd_runs,
    _static_path_rules,
    _under,
    python_paths_under_tmp,
)
from loadmaster.node.sandbox.prepare import _landlock_abi
from loadmaster.node.sandbox.spec import Sandbox, SandboxDirs, SandboxState

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any


def enter(
    policy: Sandbox,
    dirs: SandboxDirs,
    *,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    deferred: list[Any] | None = None,
    nproc_extra: int = 0,
) -> SandboxState:
    """Put the calling process into its sandbox (child side, before user code).

    Call in the forked task process, single-threaded. Changes the working
    directory to ``dirs.workdir``, sets ``TMPDIR``/``TMP``/``TEMP`` (and
    ``HOME`` if ``policy.fresh_home``), makes ``/tmp`` and ``/dev/shm`` private
    mounts, then enforces Landlock rules. Declared ``inputs`` become readable,
    ``outputs`` writable: a directory for its whole tree; a file that does not
    exist yet is created empty so that a rule can name it (a path ending in
    ``/`` is created as a directory).

    Never raises for a missing kernel feature: the returned state lists what
    is in force and why the rest is not.

    With ``deferred`` (a slot's forker, ``process/slotforker.py``), Landlock is
    not enforced here: the ruleset is built and appended to ``deferred``
    (with a function that builds it again), each task forked from this
    process enforcing it for itself (:func:`enter_task`); ``nproc_extra``
    raises the process-count limit by the forker itself.

    Raises:
        SandboxError: ``dirs.workdir`` is missing (``prepare`` was not called).
    """
    if not policy.enabled:
        return SandboxState(enabled=False, workdir=os.getcwd(), tmpdir=os.environ.get("TMPDIR", "/tmp"))
    notes: list[str] = []
    try:
        os.chdir(dirs.workdir)
    except OSError as exc:
        raise SandboxError(f"sandbox work directory {dirs.workdir!r} is unusable: {exc}; call prepare() first") from exc

    # The task's own directories, opened while their paths still name them
    # (the private /tmp may hide them when the sandbox lives under /tmp).
    own_fds: list[int] = []
    if policy.landlock and not (dirs.ruleset is not None and dirs.ruleset.own_rules):
        for d in (dirs.workdir, dirs.tmpdir, dirs.shmdir):
            with contextlib.suppress(OSError):
                own_fds.append(landlock.open_path(d))

    # Declared paths under /tmp or /dev/shm would vanish behind the private
    # mounts: they are held open (inside the new namespace, before /tmp is
    # covered) and bound back at their own paths after.
    declared_tmp: list[tuple[str, bool]] = []
    # Declared writable paths outside the sandbox: made writable again in the read-only
    # view; created first (the view refuses creating them), outside any namespace.
    writable: list[str] = []
    if policy.allow_write or outputs:
        for p in (*policy.allow_write, *outputs):
            p_abs = os.path.abspath(p)
            if _under(p_abs, dirs.root):
                continue
            if not os.path.lexists(p_abs):
                _create_output(p, p_abs, notes)
            if os.path.lexists(p_abs):
                writable.append(p_abs)
    if policy.private_tmp:
        for p in (*policy.allow_read, *inputs, *policy.allow_write, *outputs):
            p_abs = os.path.abspath(p)
            if not (_under(p_abs, "/tmp") or _under(p_abs, "/dev/shm")) or _under(p_abs, dirs.root):
                continue
            declared_tmp.append((p_abs, p in outputs or p in policy.allow_write))

    # 1. Namespaces and mounts (Landlock would forbid mount afterwards).
    slot = dirs.slot
    pids = False
    if slot is not None and slot.pids is not None:  # root: the slot's pids cgroup counts the tree
        try:
            os.write(slot.pids.procs_fd, b"0")
            pids = policy.max_processes is not None
        except OSError as exc:
            notes.append(f"not in the slot's pids cgroup: {exc}")
    ns_kind = ""
    private = False
    read_only = False
    tmp_size = None
    # Network off: a network namespace with loopback only (UDP, netlink and the node's
    # abstract sockets are out of reach, not only TCP). Tasks allowed some TCP ports keep
    # the node's network, with Landlock's TCP rules.
    private_net = not policy.network and not policy.allow_connect_ports
    net_ns = False
    if policy.private_tmp and slot is not None and not declared_tmp:
        try:
            ns_kind = namespaces.join_slot(slot, network=not private_net)
            net_ns = private_net and slot.net_fd is not None
            private = True
            tmp_size = slot.tmp_size
            read_only = not slot.read_only
            if not read_only:
                notes.append(slot.read_only)
            elif writable:
                # The slot's namespace is shared by its tasks one after another: binds for
                # this task's outputs go into a copy of it of the task's own.
                namespaces.unshare(namespaces.CLONE_NEWNS)
                notes.extend(namespaces.writable_binds(writable))
            os.chdir(dirs.workdir)
        except OSError as exc:
            notes.append(f"private /tmp not in force: {exc}")
    elif policy.private_tmp:
        try:
            ns_kind = namespaces.enter_mount_namespace()
            if private_net:
                try:
                    namespaces.enter_network_namespace()
                    net_ns = True
                except OSError as exc:
                    notes.append(f"no network namespace: {exc}")
            held = namespaces.hold([*python_paths_under_tmp(), *(p for p, _ in declared_tmp)])
            namespaces.bind(dirs.tmpdir, "/tmp")
            private = True
            has_shm = os.path.isdir("/dev/shm")
            if has_shm:
                namespaces.bind(dirs.shmdir, "/dev/shm")
            if _under(dirs.workdir, "/tmp") or _under(dirs.workdir, "/dev/shm"):
                # The sandbox itself lives under /tmp (or /dev/shm), now hidden:
                # make the work directory reachable at its own path again.
                # The cwd (entered above) still names the hidden directory.
                hidden = os.open(".", os.O_PATH | os.O_CLOEXEC)
                try:
                    os.makedirs(dirs.workdir, exist_ok=True)
                    namespaces.bind(f"/proc/self/fd/{hidden}", dirs.workdir)
                finally:
                    os.close(hidden)
            notes.extend(namespaces.rebind(held))
            try:
                rw = ["/tmp", *(["/dev/shm"] if has_shm else []), dirs.workdir, *writable]
                notes.extend(namespaces.read_only_view(rw))
                read_only = True
            except OSError as exc:
                notes.append(f"no read-only view: {exc}")
            os.chdir(dirs.workdir)
        except OSError as exc:
            notes.append(f"private /tmp not in force: {exc}")
    else:
        notes.append("private /tmp off by policy")
    if private and policy.tmp_size is not None and tmp_size is None:
        notes.append("private /tmp has no size limit (a namespace of the task's own: a directory on disk)")
    tmp_seen = "/tmp" if private else dirs.tmpdir
    if tmp_seen.startswith("/proc/"):  # a slot's tmpfs, but the slot could not be joined
        tmp_seen = os.path.join(dirs.root, "tmp")

    # 2. Environment the task sees.
    env = os.environ
    for var in ("TMPDIR", "TMP", "TEMP"):
        if env.get(var) != tmp_seen:  # setting costs the child more than looking
            env[var] = tmp_seen
    env["PWD"] = dirs.workdir
    if policy.fresh_home:
        env["HOME"] = dirs.workdir
    tempfile_mod = sys.modules.get("tempfile")
    if tempfile_mod is not None:
        tempfile_mod.tempdir = None  # type: ignore[attr-defined]  # forget the zygote's cached choice

    # 3a. A process-count limit. RLIMIT_NPROC counts the real uid's processes in the
    # caller's user namespace: in the slot's (or the task's own) user namespace that is
    # the task's tree alone. Without a user namespace it would count every process of
    # the uid on the node (root's included), so it is not set there.
    nproc = False
    if policy.max_processes is not None and ns_kind == "user+mount" and private:
        try:
            n = policy.max_processes + nproc_extra
            resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
            nproc = True
        except (OSError, ValueError) as exc:
            notes.append(f"no process-count limit: {exc}")
    elif policy.max_processes is not None and not pids:
        notes.append("no process-count limit: no user namespace (root) and no pids cgroup slot")

    # 3. No capabilities (root keeps uid 0 but no privilege; joining namespaces needed them).
    dropped_note = caps.drop_all()
    if dropped_note:
        notes.append(f"capabilities not all dropped: {dropped_note}")

    # 3b. No UNIX sockets (connect to a path is governed by neither Landlock nor the
    # network namespace): a seccomp filter, after no_new_privs (set by drop_all).
    # The kernel keyrings are refused either way (the zygote's session keyring is inherited).
    unix_ok = True
    seccomp_note = seccomp.install(policy.unix_sockets)
    if seccomp_note:
        notes.append(f"{'' if policy.unix_sockets else 'UNIX sockets and '}kernel keyrings not refused: "
                     f"{seccomp_note}")
    elif not policy.unix_sockets:
        unix_ok = False

    # 4. Landlock, last.
    abi = 0
    fs_rules = net_rules = scoped = False
    if not policy.landlock:
        notes.append("Landlock off by policy")
    else:
        abi = _landlock_abi()
        if not abi:
            notes.append("Landlock unavailable on this kernel (or disabled): no file-access rules")
        else:
            if policy.allow_connect_ports and not policy.network and not landlock.net_rights_for_abi(abi):
                notes.append(f"no TCP rules on Landlock ABI {abi} (they need ABI 4, Linux 6.7): the network is open")
            try:
                if deferred is not None:
                    kept = tuple(own_fds)
                    own_fds = []  # kept open by the forker: it builds the ruleset again now and then

                    def build(notes: list[str]) -> landlock.Ruleset:
                        return _rules(policy, dirs, list(kept), private, inputs, outputs, notes)

                    rs = build(notes)
                    deferred.extend((rs, build))
                    net_rules, scoped = bool(rs.handled_net), bool(rs.scoped)
                else:
                    net_rules, scoped = _restrict(policy, dirs, own_fds, abi, private, inputs, outputs, notes)
                fs_rules = True
            except OSError as exc:
                notes.append(f"Landlock not in force: {exc}")
    for fd in own_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return SandboxState(
        enabled=True,
        private_tmp=private,
        namespaces=ns_kind if private else "",
        landlock_abi=abi,
        fs_rules=fs_rules,
        network_rules=net_rules,
        scoped=scoped,
        workdir=dirs.workdir,
        tmpdir=tmp_seen,
        notes=tuple(notes),
        caps_dropped=not dropped_note,
        net_namespace=net_ns,
        max_processes=policy.max_processes if nproc or pids else None,
        read_only_view=read_only,
        unix_sockets=unix_ok,
        tmp_size=tmp_size,
    )



def _rules(
    policy: Sandbox,
    dirs: SandboxDirs,
    own_fds: list[int],
    private: bool,
    inputs: Sequence[str],
    outputs: Sequence[str],
    notes: list[str],
) -> landlock.Ruleset:
    """The task's ruleset with every rule but its own ``/proc/<pid>`` (``rs.proc_rule``), not enforced.

    The zygote may have made the ruleset with its static rules already, for this
    task alone (``dirs.ruleset``, see ``prepare.prepared_ruleset``): then only the
    task's own rules are added here.
    """
    abi = _landlock_abi()
    sandboxes_dir = dirs.parent or os.path.dirname(dirs.root)
    rs = dirs.ruleset
    if rs is None or rs.fd < 0 or rs.abi != abi:
        rs = new_ruleset(policy, abi)
        rs.allow_prepared(_static_path_rules(sandboxes_dir, rs.handled_fs))
    try:
        if rs.proc_rule is None:
            rs.proc_rule = landlock.SettableRule(rs.handled_fs, _PROC_RIGHTS)
        # Rules attach to inodes, and the private /tmp is a bind mount whose root
        # is the tmp directory itself: name each directory, not their parent.
        for fd in own_fds:
            rs.allow_fd(fd, landlock.WRITE_RIGHTS)
        if not private and not policy.private_tmp:
            # /tmp was not asked to be private: the task may use the shared one.
            rs.allow_path("/tmp", landlock.WRITE_RIGHTS)
        elif not private:
            notes.append("shared /tmp is denied by Landlock; TMPDIR points to the task's own directory")
        if not private and os.path.isdir("/dev/shm"):
            rs.allow_path("/dev/shm", landlock.WRITE_RIGHTS)
        for p in (*policy.allow_read, *inputs):
            p_abs = os.path.abspath(p)
            if not os.path.lexists(p_abs):
                notes.append(f"declared input {p!r} does not exist: no rule added")
            for q in _around(p_abs, sandboxes_dir):
                rs.allow_path(q, landlock.READ_RIGHTS)
        for p in (*policy.allow_write, *outputs):
            p_abs = os.path.abspath(p)
            if not os.path.lexists(p_abs):
                _create_output(p, p_abs, notes)
            if not os.path.lexists(p_abs):
                notes.append(f"declared output {p!r} cannot be created: no rule added")
            for q in _around(p_abs, sandboxes_dir):
                rs.allow_path(q, landlock.WRITE_RIGHTS)
        for port in policy.allow_connect_ports:
            rs.allow_port(port, landlock.ACCESS_NET_CONNECT_TCP)
    except BaseException:
        rs.close()
        raise
    return rs


def enter_task(rs: landlock.Ruleset) -> None:
    """Enforce ``rs`` (built by :func:`_rules`) with a rule for this process's own ``/proc/<pid>``.

    Called in a task process forked by a slot's forker (everything else of
    :func:`enter` was done once, in the forker), and by :func:`_restrict`.
    The ruleset object is shared with the forker: the rule added here stays in
    it, naming this process's ``/proc`` directory, whose inode dies with the
    process (a later process with the same pid has a new one); the forker
    builds the ruleset afresh every ``slotforker.REBUILD_EVERY`` tasks.

    Raises:
        OSError: the rule or the enforcement was refused (the task must not run).
    """
    fd = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC)
    try:
        assert rs.proc_rule is not None
        rs.proc_rule.add_to(rs, fd)
    finally:
        os.close(fd)
    rs.restrict_self()


def _restrict(
    policy: Sandbox,
    dirs: SandboxDirs,
    own_fds: list[int],
    abi: int,
    private: bool,
    inputs: Sequence[str],
    outputs: Sequence[str],
    notes: list[str],
) -> tuple[bool, bool]:
    """Build and enforce the task's ruleset; returns (network rules, scoping) in force."""
    rs = _rules(policy, dirs, own_fds, private, inputs, outputs, notes)
    try:
        enter_task(rs)
    finally:
        rs.close()
    # The task need not hold these. Closed by runs of consecutive fds, found by the
    # zygote: a loop of closes here cost ~0.3 ms per task in copy-on-write faults.
    for low, high in _static_fd_runs(dirs.parent or os.path.dirname(dirs.root)):
        os.closerange(low, high + 1)
    # The caches now name closed fds; they are left as they are (clearing them cost the task
    # ~80 µs of copy-on-write faults), since this process never prepares a sandbox again.
    return bool(rs.handled_net), bool(rs.scoped)


def new_ruleset(policy: Sandbox, abi: int) -> landlock.Ruleset:
    """An empty ruleset handling what ``policy`` restricts on a kernel of Landlock ``abi``."""
    handled_net = 0 if policy.network else landlock.net_rights_for_abi(abi)
    scoped = 0
    if abi >= 6:
        if policy.scope_signals:
            scoped |= landlock.SCOPE_SIGNAL
        if not policy.network:
            scoped |= landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    return landlock.Ruleset(abi, handled_fs=landlock.fs_rights_for_abi(abi), handled_net=handled_net, scoped=scoped)


def _create_output(p: str, p_abs: str, notes: list[str]) -> None:
    try:
        if p.endswith("/"):
            os.makedirs(p_abs, exist_ok=True)
        else:
            os.close(os.open(p_abs, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
    except OSError as exc:
        notes.append(f"declared output {p!r}: {exc}")


