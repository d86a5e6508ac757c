"""Worker processes for the CPU's other cores, that end when this process ends.

The pipeline is mostly one-core work between its parallel stages (a small VAE on one thread,
scikit-learn fits, numba's compiler), so on a laptop or this project's two-core machines a
core sits idle for much of a run. ``WorkerPool`` hands work to processes on those cores::

    with WorkerPool(1) as pool:
        task = pool.submit(fit_something, X)
        ...                      # the main process works meanwhile
        result = task.get()

Processes, not threads: the work is Python-heavy (numba compiling, scikit-learn's Python layers)
and would hold the main process's GIL. They are joblib's loky processes: started fresh (forking a
process that has already run torch's or scikit-learn's OpenMP threads can hang the child), and,
unlike ``multiprocessing``'s spawn, without running the caller's script again, so a user's script
or notebook needs no ``if __name__ == "__main__"`` guard.

Every worker ends with the process that started it: leaving the ``with`` block shuts the pool
down (killing the workers at once when it is left by an error or Ctrl-C), and each worker watches
its parent, so that not even ``kill -9`` of the parent leaves one behind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["WorkerPool", "SideTasks", "available_cores"]

_PARENT_POLL_SECONDS = 0.5


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` set;
    ``os.cpu_count`` would count the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid:  # the parent died without closing the pool
                os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


class WorkerPool:
    """``n`` worker processes; a context manager (see the module docstring).

    ``submit(fn, *args)`` returns a ``concurrent.futures.Future``; ``map(fn, items)`` yields
    results in order. Tasks run in the order submitted; with ``n=1`` every task runs in the same
    process, so what one task loads or compiles the next one finds ready. Each worker runs its
    libraries (OpenMP, BLAS, numba) on ``threads_per_worker`` threads.

    Leaving the ``with`` block normally waits for the submitted tasks; with
    ``finish_on_exit=False`` it kills the workers instead, for tasks whose results are optional
    (:class:`SideTasks`: whatever was needed has been waited for by then).
    """

    def __init__(self, n: int, threads_per_worker: int = 1, finish_on_exit: bool = True):
        from joblib.externals.loky import ProcessPoolExecutor

        if n < 1:
            raise ValueError(f"a worker pool needs at least one process, got {n}")
        self.n = int(n)
        self._finish_on_exit = finish_on_exit
        self._submitted: list = []
        threads = str(int(threads_per_worker))
        self._executor = ProcessPoolExecutor(
            self.n, initializer=_watch_parent, initargs=(os.getpid(),),
            env={name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})

    def submit(self, fn: Callable, *args: Any):
        future = self._executor.submit(fn, *args)
        self._submitted.append(future)
        return future

    def map(self, fn: Callable, items: Iterable):
        return self._executor.map(fn, items)

    def close(self, wait: bool = True) -> None:
        """Finish the submitted tasks and end the workers (``wait=False``: kill them now)."""
        self._executor.shutdown(wait=wait, kill_workers=not wait)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Idle workers are always let go gracefully: a killed worker cannot release what its
        # libraries hold (umap-learn leaves a semaphore that Python then warns about at exit).
        idle = all(future.done() for future in self._submitted)
        self.close(wait=exc_type is None and (self._finish_on_exit or idle))


class SideTasks:
    """Named tasks on a :class:`WorkerPool` whose results the caller could also compute itself.

    Each task fills a cache that the main process then reads; ``wait(name)`` blocks until the
    task is done, so the main process never computes the same thing at the same time. A task
    that fails costs nothing but its time: ``wait`` returns None, the failure is kept in
    ``failures``, and the caller computes the part as it would have without the task.
    """

    def __init__(self, pool: WorkerPool):
        self._pool = pool
        self._tasks: dict[str, Any] = {}
        self.failures: dict[str, str] = {}

    def start(self, name: str, fn: Callable, *args: Any) -> bool:
        """Submit ``fn(*args)`` as ``name`` unless a task of that name was started already."""
        if name in self._tasks:
            return False
        self._tasks[name] = self._pool.submit(fn, *args)
        return True

    def started(self, name: str) -> bool:
        return name in self._tasks

    def wait(self, name: str) -> Any:
        task = self._tasks.get(name)
        if task is None:
            return None
        try:
            return task.result()
        except Exception as err:  # the caller computes the part itself
            self.failures[name] = f"{type(err).__name__}: {err}"
            return None
