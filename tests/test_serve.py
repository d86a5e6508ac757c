"""Serving ``drl explore``: loopback by default, a token when exposed, and a clean stop on SIGTERM
(the port is free and the process group gone within seconds, also with a browser session open)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from drlcore.cli import _explore_plan, build_parser
from drlcore.errors import DrlError

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run  # noqa: E402
from browser_support import CHROMIUM, chromium, free_port, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _plan(*argv):
    return _explore_plan(build_parser().parse_args(["explore", *argv]))


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_default_is_loopback_without_a_token(monkeypatch):
    monkeypatch.delenv("DRL_EXPLORE_TOKEN", raising=False)
    cmd, url, env = _plan()
    assert _after(cmd, "--server.address") == "127.0.0.1"
    assert "DRL_EXPLORE_TOKEN" not in env and "token" not in url
    assert url == "http://127.0.0.1:8501/"
    # A served app does not watch its own sources (that cost a rerun's worth of CPU each time).
    assert _after(cmd, "--server.fileWatcherType") == "none"
    assert _after(cmd, "--server.runOnSave") == "false"
    assert _after(cmd, "--runner.postScriptGC") == "false"


def test_an_exposed_address_gets_a_fresh_token():
    cmd, url, env = _plan("--host", "0.0.0.0", "--port", "9999")
    token = env["DRL_EXPLORE_TOKEN"]
    assert len(token) >= 24 and url == f"http://127.0.0.1:9999/?token={token}"
    assert token not in " ".join(cmd)  # never on the command line, where ps shows it
    assert _plan("--host", "0.0.0.0")[2]["DRL_EXPLORE_TOKEN"] != token
    _, url, env = _plan("--host", "10.1.2.3", "--token", "lab-token")
    assert env["DRL_EXPLORE_TOKEN"] == "lab-token" and url.endswith("?token=lab-token")
    _, url, env = _plan("--host", "0.0.0.0", "--no-token")
    assert "DRL_EXPLORE_TOKEN" not in env and "token" not in url
    _, _, env = _plan("--token", "on-loopback-too")
    assert env["DRL_EXPLORE_TOKEN"] == "on-loopback-too"


def test_bad_serving_options_are_refused(tmp_path):
    with pytest.raises(DrlError, match="contradict"):
        _plan("--token", "x", "--no-token")
    with pytest.raises(DrlError, match="must not be empty"):
        _plan("--token", " ")
    with pytest.raises(DrlError, match="no such folder"):
        _plan("--data-root", str(tmp_path / "missing"))
    with pytest.raises(DrlError, match="positive"):
        _plan("--max-upload-mb", "0")


def test_roots_and_limits_reach_the_app(tmp_path):
    (tmp_path / "data").mkdir()
    cmd, _, _ = _plan("--data-root", str(tmp_path / "data"), "--max-upload-mb", "50",
                      "--min-free-mb", "10")
    assert _after(cmd, "--server.maxUploadSize") == "50"
    app_args = cmd[cmd.index("--") + 1:]
    from explorer.access import parse_serving_args

    parsed = parse_serving_args(app_args)
    assert parsed.data_root == [str((tmp_path / "data").resolve())]
    assert parsed.min_free_mb == 10 and parsed.max_upload_mb == 50


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(addr) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a new server would
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    # A zombie still counts as a member until it is reaped.
    return False


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium")
def test_sigterm_frees_the_port_with_sessions_open(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    runs = tmp_path / "runs"
    make_run(runs, "cells", n=40)  # a run to open, so no demo job starts
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("DRL_EXPLORE_TOKEN", None)
    cmd = [sys.executable, "-m", "drlcore.cli", "explore", "--headless", "--port", str(port),
           "--runs-dir", str(runs), "--token", "t0ken-for-this-test"]
    with chromium(playwright_api) as browser, serve(cmd, port, tmp_path / "serve.log", ROOT, env) as url:
        from browser_support import STARTED

        pid = STARTED[-1]
        assert _listen_addresses(port) == {"127.0.0.1"}, "drl explore must listen on loopback only"
        pages = [browser.new_page() for _ in range(3)]
        pages[0].goto(url, wait_until="domcontentloaded")
        pages[0].get_by_text("needs the token printed in the terminal").wait_for(timeout=60_000)
        for page in pages[1:]:
            page.goto(f"{url}/?token=t0ken-for-this-test", wait_until="domcontentloaded")
        for page in pages[1:]:
            page.get_by_text("Open: cells").wait_for(timeout=60_000)
        assert os.getpgid(pid) == pid  # exec'd: the server is the process we started
        start = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while True:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it, so a finished server is not a zombie
            if _port_free(port) and _group_gone(pid):
                break
            assert time.monotonic() - start < 10, "the server still holds the port 10 s after SIGTERM"
            time.sleep(0.2)
        print(f"port free and process group gone {time.monotonic() - start:.1f} s after SIGTERM")
