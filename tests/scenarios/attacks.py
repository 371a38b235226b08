"""Issue 14's attacks, run as a hostile task would, through a default Executor; prints JSON.

Who runs this: ``tests/test_sandbox_attacks.py``, once as root and once as an
ordinary user (``tests/unprivileged.py``). Each attack is a task function that
tries one way out of its sandbox and returns what it saw; this script adds what
an outside observer sees (marker files, victims, the zygote still serving) and
writes one JSON object to OUT_JSON.

Usage: python attacks.py OUT_JSON SCRATCH_DIR

SCRATCH_DIR is writable by the user running this script but not declared to
any task: a file appearing there can only have been made by loadmaster itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import sys

import loadmaster

_NR_ADD_KEY, _NR_KEYCTL = {"aarch64": (217, 219)}.get(platform.machine(), (248, 250))


def open_fds() -> list[list[str]]:
    """Every fd this task process holds, with what it points to."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory fd listdir itself used, now closed
            continue
        if target.startswith("/proc/") and target.endswith("/fd"):
            continue
        out.append([name, target])
    return out


def _sockets() -> list[int]:
    return [int(fd) for fd, target in open_fds() if target.startswith("socket:")]


def forge_pickle(marker: str) -> int:
    """Send a pickle that would run a command to every socket this task holds (hole 1)."""
    import pickle
    import socket

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    sent = 0
    blob = pickle.dumps((0, 0, 0, Evil(), None, None))
    for fd in _sockets():
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.send(blob)
            sent += 1
        except OSError:
            pass
        finally:
            s.close()
    return sent


def forge_spill(victim: str) -> int:
    """Name a victim file as this task's spill file, for every task id, then die (hole 2)."""
    import pickle
    import socket

    sent = 0
    for fd in _sockets():
        s = socket.socket(fileno=os.dup(fd))
        try:
            for tid in range(64):  # task ids here are < 20; more would fill the socket buffer
                s.send(pickle.dumps((tid, 0, 0, None, victim, None)), socket.MSG_DONTWAIT)
                sent += 1
        except OSError:
            pass
        finally:
            s.close()
    os._exit(0)  # no genuine report: the old zygote took the forged one


def forge_other(fifo: str) -> int:
    """Report a result for every other task id, in the current format, while the victim runs."""
    import pickle
    import socket

    with open(fifo, "w") as fh:  # opens once the victim has the other end: it is running
        from loadmaster.node.process.protocol import STATUS_OK, child_report

        fake = pickle.dumps("forged")
        sent = 0
        for fd in _sockets():
            s = socket.socket(fileno=os.dup(fd))
            try:
                for tid in range(64):  # task ids here are < 20; more would fill the socket buffer
                    s.send(child_report(tid, STATUS_OK, 0, fake), socket.MSG_DONTWAIT)
                    sent += 1
            except OSError:
                pass
            finally:
                s.close()
        fh.write("x")
    return sent


def victim(fifo: str) -> str:
    """Hold the fifo's read end until ``forge_other`` has sent its forgeries and written."""
    with open(fifo) as fh:
        fh.read()
    return "genuine"


def cgroup_writes() -> dict[str, str]:
    """Write to this task's own cgroup files by path (hole 3's by-path half)."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if ctrl != "memory":
            continue
        for name in ("memory.limit_in_bytes", "cgroup.procs", "memory.max_usage_in_bytes"):
            p = f"/sys/fs/cgroup/memory{path}/{name}"
            try:
                with open(p, "w") as fh:
                    fh.write("1")
                out[name] = "written"
            except OSError as exc:
                out[name] = type(exc).__name__
    return out


def privileges() -> dict[str, object]:
    """What a root task could do with its capabilities (hole 8)."""
    import socket

    with open("/proc/self/status") as fh:
        eff = next(int(line.split()[1], 16) for line in fh if line.startswith("CapEff:"))
    out: dict[str, object] = {"cap_eff": eff}
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        out["raw_socket"] = "opened"
    except OSError as exc:
        out["raw_socket"] = type(exc).__name__
    try:
        os.chown("notes.txt" if os.path.exists("notes.txt") else ".", 65534, 65534)
        out["chown_other"] = "done"
    except OSError as exc:
        out["chown_other"] = type(exc).__name__
    return out


def read_home(home: str) -> dict[str, str]:
    """Read a secret in the caller's home, which sys.path names (hole 4), and import from there."""
    out = {}
    try:
        with open(os.path.join(home, ".ssh", "id_rsa")) as fh:
            out["ssh_key"] = "read:" + fh.read()
    except OSError as exc:
        out["ssh_key"] = type(exc).__name__
    try:
        out["import"] = __import__("lm_home_module").VALUE
    except Exception as exc:
        out["import"] = f"{type(exc).__name__}: {exc}"
    return out


def network(udp_port: int) -> dict[str, object]:
    """UDP to the node's loopback and the node's interfaces by netlink, with the network off (hole 6)."""
    import socket

    out: dict[str, object] = {}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"escaped", ("127.0.0.1", udp_port))
        out["udp"] = "sent"
    except OSError as exc:
        out["udp"] = type(exc).__name__
    try:
        out["interfaces"] = sorted(name for _, name in socket.if_nameindex())  # a netlink query
    except OSError as exc:
        out["interfaces"] = type(exc).__name__
    return out


def daemonize() -> int:
    """Leave a setsid double-fork daemon behind; return its pid (hole 9)."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            while True:
                os.pause()
        os._exit(0)
    os.close(w)
    return int(os.read(r, 32))


def alive(pid: int) -> bool:
    """True when ``pid`` still runs: waits (on its pidfd, up to 10 s) for a SIGKILL already sent
    to take effect; a zombie nobody reaps counts as dead."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        return not select.select([fd], [], [], 10)[0]
    finally:
        os.close(fd)


def fork_bomb(n: int) -> dict[str, object]:
    """Start ``n`` processes that stay alive together (hole 11); return how many started."""
    r, w = os.pipe()
    started, error = 0, ""
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as exc:
            error = type(exc).__name__
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # held until the parent closes its end
            os._exit(0)
        started += 1
    os.close(w)
    os.close(r)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    return {"started": started, "error": error}


def metadata(victim: str) -> dict[str, str]:
    """Change a file outside the sandbox without writing it: mode, times, xattr, owner (hole 7)."""
    out = {}
    tries = {
        "chmod": lambda: os.chmod(victim, 0o600),
        "utime": lambda: os.utime(victim, (0, 0)),
        "setxattr": lambda: os.setxattr(victim, "user.lm-attack", b"1"),
        "chown_self": lambda: os.chown(victim, os.getuid(), os.getgid()),
    }
    for name, call in tries.items():
        try:
            call()
            out[name] = "done"
        except OSError as exc:
            out[name] = f"{type(exc).__name__}: {exc.strerror}"
    return out


def unix_connect(path: str) -> str:
    """Connect to a listening UNIX socket on a path outside the sandbox (hole 6, a docker socket)."""
    import socket

    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        return f"socket: {type(exc).__name__}: {exc.strerror}"
    try:
        s.connect(path)
        s.send(b"escaped")
        return "connected"
    except OSError as exc:
        return f"connect: {type(exc).__name__}: {exc.strerror}"
    finally:
        s.close()


def unix_dgram(path: str) -> dict[str, str]:
    """Reach a datagram UNIX socket on a path (journald's, /dev/log) without ``socket(AF_UNIX)``:
    a datagram ``socketpair`` can ``sendto`` any address, or be re-``connect``ed (hole 6)."""
    import socket

    out: dict[str, str] = {}
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as exc:
        return {"socketpair": f"{type(exc).__name__}: {exc.strerror}"}
    with a, b:
        for name, call in (("sendto", lambda: a.sendto(b"sendto-escaped", path)),
                           ("connect", lambda: (b.connect(path), b.send(b"connect-escaped")))):
            try:
                call()
                out[name] = "sent"
            except OSError as exc:
                out[name] = f"{type(exc).__name__}: {exc.strerror}"
    return out


def session_key() -> str:
    """Read a secret from the session keyring the task inherited (the caller's login keys)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    kid = libc.syscall(_NR_KEYCTL, 10, -3, b"user", b"lm-session-secret", 0)  # KEYCTL_SEARCH, session
    if kid < 0:
        return f"search: errno {ctypes.get_errno()}"
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall(_NR_KEYCTL, 11, kid, buf, 64)  # KEYCTL_READ
    return buf.raw[:n].decode() if n >= 0 else f"read: errno {ctypes.get_errno()}"


def userns_remount(victim: str) -> dict[str, object]:
    """A new user namespace (full capabilities in it), then remount the read-only view writable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[str, object] = {}
    if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        out["unshare"] = ctypes.get_errno()
    for target in (os.path.dirname(victim), "/"):
        r = libc.mount(None, target.encode(), None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND: writable again
        out[f"remount {target}"] = r if r == 0 else ctypes.get_errno()
        r = libc.umount2(target.encode(), 2)  # MNT_DETACH: what is beneath
        out[f"umount {target}"] = r if r == 0 else ctypes.get_errno()
    try:
        with open(victim, "w") as fh:
            fh.write("pwned")
        out["write"] = "written"
    except OSError as exc:
        out["write"] = exc.strerror
    return out


def multiprocessing_inside() -> dict[str, object]:
    """What Python's multiprocessing still does inside a default sandbox (hole 6's cost)."""
    import multiprocessing as mp
    import operator
    from concurrent.futures import ProcessPoolExecutor

    out: dict[str, object] = {"start_method": mp.get_start_method()}
    with mp.Pool(2) as pool:
        out["pool"] = pool.map(operator.neg, [1, 2, 3])
    q: mp.Queue[int] = mp.Queue()
    p = mp.Process(target=q.put, args=(7,))
    p.start()
    out["queue"] = q.get(timeout=60)
    p.join()
    a, b = mp.Pipe()
    a.send("duplex")
    out["pipe"] = b.recv()
    with ProcessPoolExecutor(2) as ppe:
        out["process_pool_executor"] = list(ppe.map(operator.neg, [4, 5]))
    try:  # its server process fails to listen; the parent sees the pipe close
        with mp.Manager() as m:
            out["manager"] = m.list([1])[0]
    except Exception as exc:
        out["manager"] = f"{type(exc).__name__}: {exc}"
    return out


def fill_tmp(mib: int) -> dict[str, object]:
    """Write ``mib`` MiB into the private /tmp, 1 MiB at a time (hole 11's second half)."""
    written = 0
    chunk = b"x" * (1 << 20)
    try:
        with open("/tmp/filler", "wb") as fh:
            for _ in range(mib):
                fh.write(chunk)
                fh.flush()
                written += 1
        return {"written_mib": written, "error": ""}
    except OSError as exc:
        return {"written_mib": written, "error": f"{type(exc).__name__}: {exc.strerror}"}


def outcome(f: loadmaster.TaskFuture) -> object:
    try:
        got: object = f.result(timeout=120)
    except Exception as exc:
        got = f"raised:{type(exc).__name__}:{exc}"
    if os.environ.get("LM_ATK_DEBUG"):
        print(repr(got)[:300], flush=True)
    return got


def main() -> None:
    out_json, scratch = sys.argv[1], sys.argv[2]
    res: dict[str, object] = {"uid": os.getuid()}
    marker = os.path.join(scratch, "zygote-ran-this")
    spill_victim = os.path.join(scratch, "spill-victim.txt")
    with open(spill_victim, "w") as fh:
        fh.write("victim's data")
    fifo = os.path.join(scratch, "sync.fifo")
    os.mkfifo(fifo, 0o666)
    share = loadmaster.Sandbox(allow_write=[fifo])
    # A caller whose script lives in its home (sys.path[0] = $HOME), as in issue 14.
    home = os.path.join(scratch, "home")
    os.makedirs(os.path.join(home, ".ssh"))
    with open(os.path.join(home, ".ssh", "id_rsa"), "w") as fh:
        fh.write("PRIVATE KEY")
    with open(os.path.join(home, "lm_home_module.py"), "w") as fh:
        fh.write("VALUE = 'imported'\n")
    os.environ["HOME"] = home
    sys.path.insert(0, home)
    slash_victim = os.path.join(scratch, "written-from-slash")
    meta_victim = os.path.join(scratch, "meta-victim.txt")
    with open(meta_victim, "w") as fh:
        fh.write("victim")
    os.chmod(meta_victim, 0o644)
    os.utime(meta_victim, (1_000_000_000, 1_000_000_000))
    meta_before = os.stat(meta_victim)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = os.path.join(scratch, "docker.sock")
    listener.bind(sock_path)
    os.chmod(sock_path, 0o777)
    listener.listen(8)
    listener.setblocking(False)
    # A secret in a session keyring of this script's own (the zygotes inherit it, as from a login).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.syscall(_NR_KEYCTL, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous: nothing outlives the script
    libc.syscall(_NR_ADD_KEY, b"user", b"lm-session-secret", b"hunter2", 7, -3)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal_path = os.path.join(scratch, "journal.sock")
    journal.bind(journal_path)
    os.chmod(journal_path, 0o777)
    journal.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    with loadmaster.Executor(cores=2, memory="2GiB", history=":memory:") as ex:
        res["fds"] = outcome(ex.submit(open_fds))
        res["forge_pickle_sent"] = outcome(ex.submit(forge_pickle, marker))
        res["after_forge_pickle"] = outcome(ex.submit(sum, [1, 2]))
        res["forge_spill"] = outcome(ex.submit(forge_spill, spill_victim))
        res["cgroup_writes"] = outcome(ex.submit(cgroup_writes))
        res["privileges"] = outcome(ex.submit(privileges))
        cmd = outcome(ex.submit_command(["grep", "CapEff", "/proc/self/status"]))
        res["exec_caps"] = getattr(cmd, "stdout", str(cmd))
        res["read_home"] = outcome(ex.submit(read_home, home))
        res["network"] = outcome(ex.submit(network, udp.getsockname()[1]))
        # The default limit is 1,024; 64 here keeps the bomb's memory (sampled RSS) small.
        f = ex.options(sandbox=loadmaster.Sandbox(max_processes=64),
                       resources={"memory": "1GiB", "wall_time": 120}).submit(fork_bomb, 200)
        res["fork_bomb"] = outcome(f)
        res["fork_bomb_box"] = f.report.extra.get("sandbox", {}).get("max_processes") if f.report else None
        res["fork_bomb_reported"] = f.report.max_processes if f.report else None
        res["fork_bomb_refused"] = (f.report.extra.get("sandbox", {}).get("leftovers", {}).get("forks_refused")
                                    if f.report else None)
        m = ex.submit(metadata, meta_victim)
        res["metadata"] = outcome(m)
        res["metadata_box"] = m.report.extra.get("sandbox") if m.report else None
        res["unix_connect"] = outcome(ex.submit(unix_connect, sock_path))
        res["unix_connect_cmd"] = str(outcome(ex.submit_command(
            [sys.executable, "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({sock_path!r})"])))
        res["unix_dgram"] = outcome(ex.submit(unix_dgram, journal_path))
        res["session_key"] = outcome(ex.submit(session_key))
        res["session_key_unix"] = outcome(ex.options(sandbox=loadmaster.Sandbox(unix_sockets=True)).submit(session_key))
        res["userns_remount"] = outcome(ex.submit(userns_remount, meta_victim))
        res["multiprocessing"] = outcome(ex.options(resources={"memory": "1GiB", "wall_time": 120})
                                         .submit(multiprocessing_inside))
        res["multiprocessing_unix"] = outcome(ex.options(sandbox=loadmaster.Sandbox(unix_sockets=True),
                                                         resources={"memory": "1GiB", "wall_time": 120})
                                              .submit(multiprocessing_inside))
        try:
            small_tmp = loadmaster.Sandbox(tmp_size=8 << 20)  # type: ignore[call-arg]  # absent before issue 14's fix
            t = ex.options(sandbox=small_tmp).submit(fill_tmp, 16)
            res["fill_tmp"] = outcome(t)
            res["fill_tmp_box"] = t.report.extra.get("sandbox") if t.report else None
        except Exception as exc:
            res["fill_tmp"] = f"raised:{type(exc).__name__}:{exc}"
        res["default_tmp"] = outcome(ex.submit(fill_tmp, 16))
        d = ex.submit(daemonize)
        res["daemon_pid"] = outcome(d)
        res["daemon_alive_after_task"] = isinstance(res["daemon_pid"], int) and alive(res["daemon_pid"])
        res["daemon_report"] = d.report.extra.get("stray_processes_killed") if d.report else None
        res["cwd_slash"] = str(outcome(ex.submit_command(
            ["sh", "-c", f"echo x > {slash_victim}; touch ./lm-slash-$$ && rm ./lm-slash-$$ && echo wrote-root"],
            cwd="/")))
        small = {"cores": 0.5, "memory": "256MiB", "wall_time": 120}  # room for both at once
        v = ex.options(sandbox=share, resources=small).submit(victim, fifo)
        a = ex.options(sandbox=share, resources=small).submit(forge_other, fifo)
        res["forge_other_sent"] = outcome(a)
        res["victim"] = outcome(v)
    try:
        res["udp_received"] = udp.recv(100).decode()
    except BlockingIOError:
        res["udp_received"] = ""
    res["node_interfaces"] = sorted(name for _, name in socket.if_nameindex())
    try:
        conn, _ = listener.accept()
        res["unix_accepted"] = conn.recv(100).decode() or "connected"
    except BlockingIOError:
        res["unix_accepted"] = ""
    dgrams: list[str] = []
    while True:
        try:
            dgrams.append(journal.recv(100).decode())
        except BlockingIOError:
            break
    res["unix_dgram_received"] = dgrams
    meta_after = os.stat(meta_victim)
    res["meta_changed"] = [what for what, a, b in (("mode", meta_before.st_mode, meta_after.st_mode),
                                                    ("mtime", meta_before.st_mtime, meta_after.st_mtime))
                           if a != b] + (["xattr"] if os.listxattr(meta_victim) else [])
    res["marker_exists"] = os.path.exists(marker)
    res["slash_victim_exists"] = os.path.exists(slash_victim)
    res["spill_victim_exists"] = os.path.exists(spill_victim)
    with open(out_json, "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    main()
