"""Shared fixtures. Real data lives outside the project, in ../shared/data; tests that need it skip
cleanly when it is absent so the suite runs anywhere."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import browser_support  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "blood-cells-pbc").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


_MARK = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def pytest_configure(config):
    # Inherited by every process the tests start (servers, job workers, browsers).
    os.environ[browser_support.MARK_ENV] = _MARK


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process the tests started is still alive; kill it."""
    import time

    deadline = time.monotonic() + 5  # a server stopped a moment ago may still be exiting
    left = _leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _leftovers()
    if not left:
        return
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lines = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in left)
    print(f"\nERROR: the tests left {len(left)} process(es) running (now killed):\n{lines}",
          file=sys.stderr)
    session.exitstatus = 1


def _leftovers() -> list[tuple[int, str]]:
    """Processes the tests started that are still alive, except this process's own resource
    trackers (multiprocessing's and loky's, started with the first worker pool): they are
    children of this process that end when it does, on the end of their pipe from it."""
    return [(pid, cmd) for pid, cmd in browser_support.leftover_processes(_MARK)
            if not ("resource_tracker import main" in cmd and _parent(pid) == os.getpid())]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
