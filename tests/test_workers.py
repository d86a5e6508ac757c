"""Worker processes (drlcore.workers): results in order, and no process outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drlcore.workers import SideTasks, WorkerPool

ROOT = Path(__file__).resolve().parent.parent


def _square(x):
    return x * x


def _pid_and_ppid(_=None):
    return os.getpid(), os.getppid()


def _fail(message):
    raise ValueError(message)


def _ended(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` is gone or a zombie (ended, waiting for whoever reaps it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_pool_maps_in_order_and_its_workers_are_children_that_end_with_it():
    with WorkerPool(2) as pool:
        assert list(pool.map(_square, range(20))) == [x * x for x in range(20)]
        pid, ppid = pool.submit(_pid_and_ppid).result()
    assert ppid == os.getpid() and pid != os.getpid()
    assert _ended(pid)


def test_side_tasks_run_in_one_process_once_each_and_a_failure_is_kept_not_raised():
    with WorkerPool(1, finish_on_exit=False) as pool:
        side = SideTasks(pool)
        assert side.start("a", _pid_and_ppid)
        assert not side.start("a", _fail, "never run")  # the same part is not started twice
        assert side.start("b", _pid_and_ppid)
        assert side.start("c", _fail, "broken part")
        assert side.wait("a") == side.wait("b")  # one warm process serves every part
        assert side.wait("c") is None and "broken part" in side.failures["c"]
        assert side.wait("never started") is None


def test_a_busy_worker_is_killed_when_its_results_are_optional():
    started = time.monotonic()
    with WorkerPool(1, finish_on_exit=False) as pool:
        pid = pool.submit(_pid_and_ppid).result()[0]
        pool.submit(time.sleep, 60)
        time.sleep(0.5)
    assert time.monotonic() - started < 30
    assert _ended(pid)


_ORPHAN_SCRIPT = """
import sys, time
from drlcore.workers import WorkerPool
import test_workers
pool = WorkerPool(1)
print(pool.submit(test_workers._pid_and_ppid).result()[0], flush=True)
pool.submit(time.sleep, 120)
time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_worker_ends_when_its_parent_is_killed_with_sigkill():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)
    try:
        worker = int(parent.stdout.readline())
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    assert _ended(worker), "the worker outlived its killed parent"
