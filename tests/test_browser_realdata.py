"""Every page of ``drl explore`` in headless Chromium on a real run of the blood-cell images.

The run is made by the real one-shot pipeline with the default backbone and the shipped source
model, exactly as a biologist would (``drl run``), on 60 real cells of each of the 8 classes,
then served with ``drl explore``. Screenshots go to ``test-artifacts/screenshots/blood-*.png``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_support import CHROMIUM, chromium, free_port, serve, wait_for_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser, pytest.mark.slow, pytest.mark.realdata,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


# Images per class: 480 real cells give every page the same content as the whole set of 1,600
# (8 classes, a transfer that trains, open-set scores, a UMAP map) in a third of the time.
PER_CLASS = 60


@pytest.fixture(scope="module")
def blood_run(shared_data, tmp_path_factory):
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline
    from drlcore.progress import TqdmReporter

    root = tmp_path_factory.mktemp("blood")
    data = root / "blood-cells"  # a class-folder set of links to the real files
    for folder in sorted(p for p in (shared_data / "blood-cells-pbc").iterdir() if p.is_dir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:PER_CLASS]:
            (data / folder.name / image.name).symlink_to(image)
    cache = os.environ.get("DRL_TEST_CACHE_DIR") or str(root / "cache")
    config = PipelineConfig(features=FeatureConfig(cache_dir=cache))
    return run_pipeline(data, root / "runs" / "blood-cells", config, reporter=TqdmReporter())


@pytest.fixture(scope="module")
def server(blood_run, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home"))}
    # Exactly what a user runs: drl explore on the run folder.
    cmd = [sys.executable, "-m", "drlcore.cli", "explore", str(blood_run), "--headless",
           "--port", str(port), "--runs-dir", str(blood_run.parent)]
    with serve(cmd, port, tmp_path_factory.mktemp("log") / "explore.log", ROOT, env) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium(playwright_api) as b:
        yield b


def _open(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1800})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("[data-testid='stSidebar']", timeout=60_000)
    page.wait_for_timeout(500)
    deadline = time.monotonic() + 120
    while page.locator("[data-testid='stStatusWidget']").count() and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    page.wait_for_timeout(1000)
    return ctx, page, errors


PAGES = [  # (url path, screenshot, charts that must hold points)
    ("", "blood-01-datasets", 0),
    ("traversals", "blood-02-latent-axes", 0),
    ("correlations", "blood-03-correlations", 2),
    ("class_map", "blood-04-class-map", 1),
    ("anomalies", "blood-05-anomalies", 2),
    ("source_model", "blood-06-source-model", 2),
]


@pytest.mark.parametrize("path,shot,min_charts", PAGES)
def test_every_page_works_on_the_blood_cell_run(server, browser, path, shot, min_charts):
    ctx, page, errors = _open(browser, f"{server}/{path}")
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        # The open run is named in the sidebar's run picker on every page. Streamlit draws
        # the sidebar's elements one at a time, so wait for the picker (CI once read it
        # before it was drawn, as an empty string).
        picker_text = """() => Array.from(document.querySelectorAll(
            "[data-testid='stSidebar'] [data-testid='stSelectbox'] input")).map(i => i.value)
            .concat(Array.from(document.querySelectorAll(
            "[data-testid='stSidebar'] [data-testid='stSelectbox']")).map(e => e.textContent))
            .join(" ")"""
        try:
            page.wait_for_function(f"({picker_text})().includes('blood-cells')", timeout=60_000)
        except playwright_api.TimeoutError:
            pass  # the assertion below says what the picker held
        picker = page.evaluate(picker_text)
        assert "blood-cells" in picker, picker
        assert not page.locator("[data-testid='stException']").count()
        if min_charts:
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
            page.wait_for_timeout(1500)
            points = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                .map(g => (g._fullData || []).reduce((s, t) =>
                    s + (t.x ? t.x.length : (t.z ? t.z.length : 0)), 0))""")
            assert len(points) >= min_charts and all(p > 0 for p in points), points
        elif path == "traversals":
            assert wait_for_images(page, 9) >= 9
        else:
            assert page.get_by_text("effnet-lite0").first.is_visible()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        assert not errors, errors
    finally:
        ctx.close()
