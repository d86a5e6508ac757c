"""Shareable views in a real headless Chromium: a pasted link opens the view it describes.

Starts ``streamlit run explorer/app.py -- --runs-dir X`` on a free port (stopped by PID at the
end, see browser_support.serve). Skips cleanly without Chromium or Playwright.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run  # noqa: E402
from browser_support import CHROMIUM, chromium, free_port, serve, wait_for_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-views-runs")
    make_run(root, "cells", n=90)
    make_run(root, "second", n=30, seed=3)  # newest: what opens without a link
    return root


@pytest.fixture(scope="module")
def server(runs_dir, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home")), "DRL_RUNS_DIR": str(runs_dir)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--runs-dir", str(runs_dir)]
    with serve(cmd, port, tmp_path_factory.mktemp("log") / "streamlit.log", ROOT, env, timeout=60) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium(playwright_api) as b:
        yield b


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1800}, device_scale_factor=1)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors
    yield pg
    ctx.close()


def _settle(page, timeout: float = 30.0) -> None:
    """Wait until the script run finished (no running indicator) and the DOM is quiet."""
    page.wait_for_timeout(500)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not page.locator("[data-testid='stStatusWidget']").count():
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(800)


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("[data-testid='stSidebar']", timeout=30_000)
    _settle(page)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_link_opens_the_latent_axis_it_names(server, page):
    _open(page, f"{server}/traversals?run=cells&dim=2&steps=7")
    heading = page.locator("h4").filter(has_text="z2")
    heading.first.wait_for(timeout=30_000)
    assert "z2: intensity" in heading.first.inner_text()
    # The strip's images arrive one by one; a strip that stops short still fails here.
    assert wait_for_images(page, 7, timeout_ms=30_000) == 7
    # The run picker shows the linked run, not the newest one.
    picker = page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first
    shown = picker.evaluate("el => el.textContent + ' ' + Array.from(el.querySelectorAll('input'))"
                            ".map(i => i.value).join(' ')")
    assert "cells" in shown and "second" not in shown, shown
    # The address bar still describes the view (rewritten by the app, same parameters).
    assert "/traversals?" in page.url and "dim=2" in page.url and "run=cells" in page.url
    _shot(page, "20-link-latent-axis")
    assert not page.js_errors, page.js_errors


def test_a_link_opens_two_groups_on_the_class_map(server, page):
    _open(page, f"{server}/class_map?run=cells&compare=groups&a=class&a_class=lymphocyte"
                f"&b=class&b_class=platelet")
    page.get_by_text("class lymphocyte (30 objects)").first.wait_for(timeout=60_000)
    assert page.get_by_text("class platelet (30 objects)").first.is_visible()
    page.get_by_text("Hedges' g").first.wait_for(timeout=30_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    # Group images side by side: 12 of each group's 30.
    assert wait_for_images(page, 24) == 24
    _shot(page, "21-link-two-groups")
    assert not page.js_errors, page.js_errors
