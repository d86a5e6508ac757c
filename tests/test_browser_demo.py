"""The README's main job, for real: ``drl explore`` with nothing on disk builds the demo with the
shipped source model, shows it, and a second launch opens it at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_support import CHROMIUM, chromium, free_port, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


def _explore(tmp_path, runs_dir, log_name):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "DRL_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "drlcore.cli", "explore", "--headless", "--port", str(port),
           "--runs-dir", str(runs_dir)]
    return serve(cmd, port, tmp_path / log_name, ROOT, env)


def _nav(page, title: str) -> None:
    """Change page inside the app (same session), as a user clicking the sidebar does."""
    page.locator("[data-testid='stSidebarNavLink']", has_text=title).first.click()


def test_first_launch_builds_and_opens_the_demo(tmp_path):
    from drlcore.runs import jobs
    from drlcore.runs.demo import DEMO_NAME

    runs_dir = tmp_path / "runs"
    target = runs_dir / DEMO_NAME
    with chromium(playwright_api) as browser, _explore(tmp_path, runs_dir, "first.log") as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("Building the demo").first.wait_for(timeout=120_000)
        assert jobs.read_job(target).running
        # Leave for another page while it builds: the build goes on, the sidebar shows it.
        _nav(page, "Latent axes")
        page.get_by_text("Building the demo").first.wait_for(timeout=30_000)
        # A second tab attaches to the same build instead of starting another.
        second = browser.new_page(viewport={"width": 1440, "height": 1800})
        second.goto(url, wait_until="domcontentloaded")
        second.get_by_text("Building the demo").first.wait_for(timeout=60_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        second.screenshot(path=str(SHOTS / "demo-00-building.png"), full_page=True)
        # Rendering, embedding and analysing 600 sprites on a CPU: allow a few minutes.
        second.get_by_text(f"Open: {DEMO_NAME}").wait_for(timeout=600_000)
        assert jobs.read_job(target).state == "done"
        assert jobs.log_path(target).read_text().count("job started") == 1  # one build
        # The first tab, still on Latent axes, now shows the demo's axes; back on Datasets, it is open.
        # The traversal strip draws image by image, so wait for the count rather than read it once.
        page.wait_for_function(
            "() => document.querySelectorAll(\"[data-testid='stImage'] img\").length >= 9",
            timeout=120_000)
        page.screenshot(path=str(SHOTS / "demo-02-latent-axes.png"), full_page=True)
        _nav(page, "Datasets")
        page.get_by_text(f"Open: {DEMO_NAME}").wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "demo-01-first-launch.png"), full_page=True)
        assert (target / "analysis.json").is_file()
        # The demo is rendered Texture-dSprites: it is encoded by the dSprites source model, not
        # by drl run's default source (cells).
        from drlcore.data import rundir
        from drlcore.io import sha256_file
        from drlcore.runs.pipeline import shipped_source_model

        dsprites = shipped_source_model("effnet-lite0", "dsprites") / rundir.MODEL_WEIGHTS
        assert rundir.model_hash(target) == sha256_file(dsprites)
    assert jobs.log_path(target).read_text().count("job started") == 1

    # Second launch: the demo is there, nothing is rebuilt.
    stamp = (runs_dir / DEMO_NAME / "analysis.json").stat().st_mtime_ns
    with chromium(playwright_api) as browser, _explore(tmp_path, runs_dir, "second.log") as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text(f"Open: {DEMO_NAME}").wait_for(timeout=60_000)
        assert not page.get_by_text("Building the demo").count()
    assert (runs_dir / DEMO_NAME / "analysis.json").stat().st_mtime_ns == stamp
