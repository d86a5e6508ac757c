"""Load: N concurrent headless browser sessions clicking through every page of one run.

    .venv/bin/python benchmarks/bench_load.py [--sessions 20] [--rounds 2] [--run RUN_DIR | --objects 1600]
        [--clients browser|protocol|mixed] [--think SECONDS]

Starts ``drl explore --headless`` on a free port (a synthetic run of ``--objects`` objects, or a
copy-free ``--run`` given by path), opens ``--sessions`` browser contexts in one headless Chromium
(/usr/bin/chromium) and has each click through the sidebar pages ``--rounds`` times. A page's time
is from the click to its title drawn and Streamlit's "running" indicator gone. Reports errors
(exception boxes, error alerts, timeouts), the median and the max page time per page and overall,
then stops the server with SIGTERM and reports how long it took to free the port.

``--clients``: ``browser`` (every session a Chromium context, as above), ``protocol`` (every
session speaks Streamlit's websocket protocol itself, as the browser does, but draws nothing: the
time is from asking for a page to the server's "script finished"), or ``mixed``: one Chromium
session, timed as a user sees it, while the other sessions load the server over the protocol.
On a 2-core machine the browsers' drawing, not the server, dominates a browser-only run; a lab
server's users each draw on their own laptop, which ``mixed`` stands for.

CPU seconds are split between the server's process tree and everything else this benchmark
started (Chromium and Playwright's driver), sampled every 0.5 s: on one machine the browsers
compete with the server for the same cores, which a lab server's users, each on their own
laptop, do not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PAGES = ["Latent axes", "Correlations", "Class map", "Anomalies", "Source model", "Datasets"]
# The URL path of each page (explorer/app.py; the default page has none), which the protocol
# client asks for by name.
PAGE_PATHS = {"Latent axes": "traversals", "Correlations": "correlations", "Class map": "class_map",
              "Anomalies": "anomalies", "Source model": "source_model", "Datasets": ""}  # the default
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(runs_dir: Path, run: Path | None, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "drlcore.cli", "explore", "--headless", "--port", str(port),
           "--runs-dir", str(runs_dir)]
    if run is not None:
        cmd.append(str(run))
    env = {**os.environ}
    env.pop("DRL_EXPLORE_TOKEN", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start:\n{log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)


async def _settle(page, title: str, timeout_ms: float) -> None:
    await page.locator("h1", has_text=title).first.wait_for(timeout=timeout_ms)
    # The status widget shows "Running..." while the script runs; wait for it to go.
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    await page.locator("[data-testid='stMain']").first.wait_for(timeout=timeout_ms)


async def _session(browser, url: str, rounds: int, times: dict, errors: list, idx: int,
                   timeout_ms: float, think: float = 0.0) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    try:
        t0 = time.perf_counter()
        try:
            await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            await _settle(page, "Datasets", timeout_ms)
        except Exception as exc:  # noqa: BLE001 - a timeout is a result here
            errors.append(f"session {idx} first load: {type(exc).__name__}: {str(exc)[:120]}")
            return
        times.setdefault("first load", []).append(time.perf_counter() - t0)

        async def visit(title: str) -> list[str]:
            await page.locator("[data-testid='stSidebarNavLink']", has_text=title).first.click()
            await _settle(page, title, timeout_ms)
            shown = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
            return [(await shown.first.inner_text())[:160]] if await shown.count() else []

        await _click_through(visit, rounds, think, times, errors, f"session {idx}")
    finally:
        await context.close()


async def _click_through(visit, rounds: int, think: float, times: dict, errors: list,
                         who: str) -> None:
    """Visit every page ``rounds`` times (``await visit(title)`` returns the errors the page
    shows), pausing ``think`` seconds on average before each; page times go to ``times``."""
    for _ in range(rounds):
        for title in PAGES:
            await _think(think, who)
            t0 = time.perf_counter()
            try:
                shown = await visit(title)
            except Exception as exc:  # noqa: BLE001 - a timeout is a result here
                errors.append(f"{who} {title}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            times.setdefault(title, []).append(time.perf_counter() - t0)
            errors.extend(f"{who} {title}: error shown: {e}" for e in shown)


async def _think(seconds: float, who: str) -> None:
    """A person's pause before the next click: ``seconds`` on average, spread 0.5x-1.5x by a
    per-session seeded generator so the sessions do not click in step."""
    if seconds > 0:
        rng = _THINK_RNG.setdefault(who, random.Random(who))
        await asyncio.sleep(seconds * rng.uniform(0.5, 1.5))


_THINK_RNG: dict[str, random.Random] = {}


async def _protocol_rerun(ws, page_path: str, timeout_s: float) -> list[str]:
    """Ask for a page the way the browser does (a BackMsg ``rerun_script`` naming it) and read
    the server's messages until its ``script_finished``; returns any exception texts shown."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = BackMsg()
    msg.rerun_script.page_name = page_path
    msg.rerun_script.query_string = ""
    await ws.send(msg.SerializeToString())
    shown: list[str] = []
    async with asyncio.timeout(timeout_s):
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(await ws.recv())
            kind = fwd.WhichOneof("type")
            if (kind == "delta" and fwd.delta.WhichOneof("type") == "new_element"
                    and fwd.delta.new_element.WhichOneof("type") == "exception"):
                shown.append(fwd.delta.new_element.exception.message[:160])
            if kind == "page_not_found":
                shown.append(f"page not found: {page_path}")
            if kind == "script_finished":
                return shown


async def _protocol_session(url: str, rounds: int, times: dict, errors: list, idx: int,
                            timeout_ms: float, think: float = 0.0) -> None:
    import websockets

    ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
    async with websockets.connect(ws_url, subprotocols=["streamlit"], max_size=None) as ws:
        t0 = time.perf_counter()
        try:
            await _protocol_rerun(ws, "", timeout_ms / 1000)
        except TimeoutError:
            errors.append(f"protocol session {idx} first load: no script_finished in time")
            return
        times.setdefault("first load", []).append(time.perf_counter() - t0)
        await _click_through(lambda title: _protocol_rerun(ws, PAGE_PATHS[title], timeout_ms / 1000),
                             rounds, think, times, errors, f"protocol session {idx}")


async def _load(url: str, sessions: int, rounds: int, timeout_ms: float, clients: str = "browser",
                think: float = 0.0):
    """Returns (times, errors, browser_times): page times of every session, the errors, and the
    times of the browser sessions alone (all sessions for ``browser``, one for ``mixed``)."""
    from playwright.async_api import async_playwright

    times: dict[str, list[float]] = {}
    seen: dict[str, list[float]] = {}
    errors: list[str] = []
    n_browsers = {"browser": sessions, "mixed": 1, "protocol": 0}[clients]
    protocol = [_protocol_session(url, rounds, times, errors, i, timeout_ms, think)
                for i in range(n_browsers, sessions)]
    if not n_browsers:
        await asyncio.gather(*protocol)
        return times, errors, seen
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*[_session(browser, url, rounds, seen, errors, i, timeout_ms, think)
                                   for i in range(n_browsers)], *protocol)
        finally:
            await browser.close()
    for name, ts in seen.items():
        times.setdefault(name, []).extend(ts)
    return times, errors, seen


class CPUSplit:
    """CPU seconds used by the server's process tree and by the rest of this process's
    descendants (the browsers), sampled so that processes which end early still count."""

    def __init__(self, server_pid: int, interval: float = 0.5):
        import psutil

        self._psutil = psutil
        self.server_pid = server_pid
        self.seen: dict[int, tuple[bool, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        psutil = self._psutil
        try:
            server = psutil.Process(self.server_pid)
            server_pids = {self.server_pid, *(c.pid for c in server.children(recursive=True))}
        except psutil.Error:
            server_pids = {self.server_pid}
        for p in psutil.Process().children(recursive=True):
            try:
                t = p.cpu_times()
                self.seen[p.pid] = (p.pid in server_pids, t.user + t.system)
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> tuple[float, float]:
        self._sample()
        self._stop.set()
        self._thread.join()
        server = sum(c for is_server, c in self.seen.values() if is_server)
        return server, sum(c for is_server, c in self.seen.values() if not is_server)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _table(title: str, times: dict[str, list[float]]) -> None:
    print(f"-- {title}")
    print(f"{'page':14s} {'n':>4s} {'median s':>9s} {'max s':>7s}")
    for name, ts in times.items():
        print(f"{name:14s} {len(ts):4d} {statistics.median(ts):9.2f} {max(ts):7.2f}")
    every = [t for name, ts in times.items() if name != "first load" for t in ts]
    if every:
        print(f"{'all pages':14s} {len(every):4d} {statistics.median(every):9.2f} {max(every):7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--objects", type=int, default=1600, help="size of the synthetic run")
    ap.add_argument("--run", default=None, help="an existing run folder to load instead")
    ap.add_argument("--timeout", type=float, default=60, help="seconds before a page counts as failed")
    ap.add_argument("--think", type=float, default=0.0,
                    help="mean seconds a session pauses before each click (0: none, the upper bound)")
    ap.add_argument("--clients", choices=("browser", "protocol", "mixed"), default="browser",
                    help="who the sessions are (see the module docstring)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="drl-load-"))
    runs_dir = work / "runs"
    run = Path(args.run).resolve() if args.run else None
    if run is None:
        from app_fixtures import make_run

        make_run(runs_dir, "load", n=args.objects, n_dims=10)
    port = _free_port()
    proc = _start_server(runs_dir, run, port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    cpu = CPUSplit(proc.pid)
    try:
        t0 = time.perf_counter()
        times, errors, browser_times = asyncio.run(
            _load(url, args.sessions, args.rounds, args.timeout * 1000, args.clients, args.think))
        wall = time.perf_counter() - t0
    finally:
        server_cpu, client_cpu = cpu.stop()
        t_stop = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        while not _port_free(port) and time.perf_counter() - t_stop < 30:
            time.sleep(0.1)
        freed = time.perf_counter() - t_stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    who = {"browser": "browser sessions", "protocol": "protocol sessions",
           "mixed": "sessions (1 browser, the rest protocol)"}[args.clients]
    pause = f", {args.think:g} s mean pause before each click" if args.think else ", no pause between clicks"
    print(f"{args.sessions} {who} x {args.rounds} rounds x {len(PAGES)} pages{pause} on "
          f"{run or f'a synthetic run of {args.objects} objects'}; {os.cpu_count()} CPUs; wall {wall:.0f} s")
    _table("all sessions", times)
    if args.clients == "mixed":
        _table("the browser session alone (click to page drawn)", browser_times)
    print(f"CPU seconds: server {server_cpu:.0f}, clients {client_cpu:.0f} "
          f"({server_cpu / max(server_cpu + client_cpu, 1e-9):.0%} server) over {wall:.0f} s wall "
          f"on {os.cpu_count()} CPUs")
    print(f"errors: {len(errors)}")
    for line in errors[:20]:
        print("  " + line)
    print(f"SIGTERM -> port free in {freed:.1f} s (server exit code {proc.returncode})")


if __name__ == "__main__":
    main()
