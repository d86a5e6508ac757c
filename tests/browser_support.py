"""What the browser tests share: starting the app on a free port and launching Debian's Chromium
(never a downloaded browser), and the bookkeeping that proves no test leaves a process behind.

Every process the tests start carries ``DRL_TEST_MARK=<this session>`` in its environment
(conftest sets it in the test process, children inherit it, also detached job workers that a
server starts). ``leftover_processes`` finds those still alive at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out, and this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


MARK_ENV = "DRL_TEST_MARK"
STARTED: list[int] = []  # pids of servers started through spawn()


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen in its own process group, remembered for the session-end check."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    STARTED.append(proc.pid)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL to the whole group if it is still there after ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the server left in its group


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead
    except (OSError, IndexError):
        return False


def leftover_processes(mark: str) -> list[tuple[int, str]]:
    """Live processes (other than this one) whose environment carries ``mark``, or that were
    started by spawn() and are still alive: (pid, command line)."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            found[int(entry.name)] = None
    for pid in STARTED:
        if _alive(pid):
            found[pid] = None
    out = []
    for pid in sorted(found):
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append((pid, cmd.strip()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(cmd: list[str], port: int, log_path: Path, cwd: Path, env: dict,
          timeout: float = 90) -> Iterator[str]:
    """Run ``cmd`` (a Streamlit server on ``port``) until its health check answers; yield its URL."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w+") as log:
        proc = spawn(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the app did not start ({' '.join(cmd[:4])}...):\n"
                                f"{log.read()[-3000:]}")
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            stop(proc)


@contextlib.contextmanager
def chromium(playwright_api):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_for_images(page, at_least: int, timeout_ms: int = 60_000) -> int:
    """Wait until the page shows ``at_least`` Streamlit images, all decoded; return how many.

    A page draws its images one element at a time after the first arrives, so counting right
    after the first appears races the server (a traversal strip once counted 5 of 9 in CI).
    """
    page.wait_for_function(
        """n => { const imgs = document.querySelectorAll("[data-testid='stImage'] img");
                  return imgs.length >= n && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0); }""",
        arg=at_least, timeout=timeout_ms)
    return page.locator("[data-testid='stImage'] img").count()
