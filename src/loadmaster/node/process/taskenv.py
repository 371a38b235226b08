"""The environment a task sees: the user's own, its thread counts, its GPUs.

Used by the client (the zygote's environment, ``zygote_client.py``) and in the
task process (``taskproc.py``). The zygote runs with the user's environment
and two changes, both undone per task here:

* the thread-count variables of numeric libraries (``THREAD_VARS``) the user
  did not set are ``1`` in the zygote (a fork from a process with OpenBLAS
  threads running cost twice as much); a task gets them set to the cores it
  was allocated, rounded up (``RunOrder.threads``). With one core that is
  the zygote's ``1`` already, so the usual task changes nothing. A library the
  zygote imported before the fork (``preload=["numpy"]``) sized its thread
  pool then, to one thread: the variables reach what the task starts or
  imports itself (a command, a subprocess, a library first imported in the
  task), not a pool that already exists.
* ``CUDA_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES`` and
  ``ROCR_VISIBLE_DEVICES`` are empty in the zygote, so a task that holds no
  GPU sees none; a task given GPUs gets ``CUDA_VISIBLE_DEVICES`` set to them.

Nothing else of loadmaster's is in a task's environment: the zygote learns its
``sys.path`` and options from its command line, so ``PYTHONPATH`` stays what
the user had. A command given its own ``env=`` gets exactly that, plus the
thread variables it does not set and the GPU variables.

Imported by the zygote: stdlib only.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def threads_for(cores: float | None) -> int:
    """The thread count of a task allocated ``cores`` (rounded up; at least 1)."""
    if cores is None or cores <= 1:
        return 1
    n = int(cores)
    return n if n == cores else n + 1


def zygote_env(environ: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The zygote's environment (the user's, thread pools pinned, GPUs hidden) and the pinned names."""
    env = dict(environ)
    pinned = tuple(var for var in THREAD_VARS if var not in env)
    for var in pinned:
        env[var] = "1"
    for var in GPU_VARS:
        env[var] = ""
    return env, pinned


def for_task(environ: MutableMapping[str, str], pinned: tuple[str, ...], threads: int,
             gpu_ids: tuple[str, ...]) -> None:
    """Give a task's inherited environment (``os.environ`` in the task process) its threads and GPUs."""
    if threads != 1:
        n = str(threads)
        for var in pinned:
            environ[var] = n
    if gpu_ids:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)


def explicit(env: Mapping[str, str], threads: int, gpu_ids: tuple[str, ...]) -> dict[str, str]:
    """A command's own ``env=``, with the thread variables it does not set and the GPU variables."""
    out = dict(env)
    n = str(threads)
    for var in THREAD_VARS:
        out.setdefault(var, n)
    for var in GPU_VARS:
        out[var] = ""
    if gpu_ids:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return out
