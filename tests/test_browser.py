"""The explorer in a real headless Chromium: charts actually draw, buttons work, uploads land.

Starts ``streamlit run explorer/app.py -- --runs-dir X`` on a free port. Screenshots go to
``test-artifacts/screenshots/`` (gitignored) for a human look. Skips cleanly without Chromium.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run, make_source_model, make_zip  # noqa: E402
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
    root = tmp_path_factory.mktemp("browser-runs")
    make_run(root, "cells", n=150)
    return root


@pytest.fixture(scope="module")
def pipeline_settings(tmp_path_factory):
    """Runs added in the browser use the random tiny backbone and a tiny source model, so the
    real pipeline runs end to end in seconds, offline."""
    import json

    root = tmp_path_factory.mktemp("pipeline")
    try:
        source = make_source_model(root / "source")
    except ImportError as exc:  # engine parts not installed: upload test skips, others run
        return None, str(exc)
    path = root / "settings.json"
    path.write_text(json.dumps({"features": {"backbone": "test-tiny", "pretrained": False, "batch_size": 8,
                                             "cache_dir": str(root / "cache")},
                                "source_model": str(source), "transfer_epochs": 2}))
    return path, None


@pytest.fixture(scope="module")
def server(runs_dir, pipeline_settings, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home")), "DRL_RUNS_DIR": str(runs_dir)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--runs-dir", str(runs_dir),
           *(["--pipeline-config", str(pipeline_settings[0])] if pipeline_settings[0] else [])]
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


def _open(page, url: str, path: str = "") -> None:
    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
    page.wait_for_selector("[data-testid='stSidebar']", timeout=30_000)
    _settle(page)


def _settle(page, timeout: float = 30.0) -> None:
    """Wait until the script run finished (no running indicator) and the DOM is quiet."""
    page.wait_for_timeout(500)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = page.locator("[data-testid='stStatusWidget']").count()
        if not running:
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(800)


def _points_per_chart(page) -> list[int]:
    """Data points plotly actually holds in each drawn chart (works for SVG and WebGL traces)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(g =>
        (g._fullData || []).reduce((s, t) => s + (t.x ? t.x.length : (t.z ? t.z.length : 0)), 0))""")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_datasets_page(server, page):
    _open(page, server)
    assert page.get_by_text("Open: cells").is_visible()
    assert page.get_by_text("test-tiny").first.is_visible()
    _shot(page, "01-datasets")
    assert not page.js_errors


@pytest.mark.parametrize("path,name,min_charts", [
    ("traversals", "02-latent-axes", 0),
    ("correlations", "03-correlations", 2),
    ("class_map", "04-class-map", 1),
    ("anomalies", "05-anomalies", 2),
    ("source_model", "06-source-model", 2),
])
def test_page_charts_draw(server, page, path, name, min_charts):
    _open(page, server, path)
    if min_charts:
        try:
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
        except playwright_api.TimeoutError:
            _shot(page, f"{name}-FAILED")
            raise
        page.wait_for_timeout(1000)
        points = _points_per_chart(page)
        assert len(points) >= min_charts and all(p > 0 for p in points), points
    else:
        assert wait_for_images(page, 9, timeout_ms=30_000) >= 9
    if path == "class_map":
        assert page.locator(".js-plotly-plot canvas").count() > 0, "scattergl draws on a WebGL canvas"
    _shot(page, name)
    assert not page.js_errors, page.js_errors


def test_traversal_view_opens_large_image(server, page):
    _open(page, server, "traversals")
    page.get_by_role("button", name="View").first.click()
    _settle(page)
    page.get_by_role("button", name="Close").wait_for(timeout=15_000)
    assert page.get_by_text("Latent dims").first.is_visible()
    _shot(page, "07-latent-axes-detail")


def test_map_box_selection_shows_gallery(server, page):
    _open(page, server, "class_map")
    page.wait_for_selector(".js-plotly-plot .nsewdrag", timeout=30_000)
    page.wait_for_timeout(1000)
    # Box-select the whole plot area with the modebar's box tool.
    page.locator(".js-plotly-plot").first.hover()
    page.locator("[data-title='Box Select']").first.click()
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    x0, y0 = box["x"] + 0.05 * box["width"], box["y"] + 0.05 * box["height"]
    x1, y1 = box["x"] + 0.95 * box["width"], box["y"] + 0.95 * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.get_by_text("Selection:").first.wait_for(timeout=30_000)
    _settle(page)
    assert wait_for_images(page, 1, timeout_ms=30_000) > 0
    _shot(page, "08-class-map-selection")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_bad_upload_shows_error_and_touches_no_run(server, page, runs_dir, tmp_path):
    from explorer.data import list_runs

    runs_before = list_runs(runs_dir)
    before = {run.name: _snapshot(run) for run in runs_before}
    bad = tmp_path / "not-images.zip"
    import zipfile

    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("notes/readme.txt", "no images in here")
    _open(page, server)
    page.locator("input[type='file']").set_input_files(str(bad))
    _settle(page)
    page.get_by_role("button", name="Analyse").click()
    page.locator("[data-testid='stAlertContentError']").first.wait_for(timeout=120_000)
    _shot(page, "09-bad-upload")
    # The failed job keeps only its record (job.json and log, so any tab can say why it failed);
    # no new run appears, earlier runs are byte for byte as they were, the upload is deleted.
    assert list_runs(runs_dir) == runs_before
    assert {run.name: _snapshot(run) for run in runs_before} == before
    failed = runs_dir / "not-images"
    assert not (failed / "objects.parquet").exists()
    uploads = runs_dir / ".uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_zip_upload_creates_a_new_run(server, page, runs_dir, tmp_path, pipeline_settings, request):
    if pipeline_settings[0] is None:
        pytest.skip(f"engine pipeline not available: {pipeline_settings[1]}")
    good = make_zip(tmp_path / "shapes.zip", n_per_class=4)
    request.addfinalizer(lambda: shutil.rmtree(runs_dir / "shapes", ignore_errors=True))  # new sessions open the newest run
    _open(page, server)
    page.locator("input[type='file']").set_input_files(str(good))
    _settle(page)
    page.get_by_role("button", name="Analyse").click()
    page.get_by_text("is open. Explore it").first.wait_for(timeout=600_000)
    _settle(page)
    _shot(page, "10-upload-done")
    assert (runs_dir / "shapes" / "objects.parquet").is_file()
    assert not (runs_dir / "shapes.partial").exists()
    # The new run is open and its pages draw.
    assert page.get_by_text("Open: shapes").is_visible()
    page.get_by_role("link", name="Class map").click()
    _settle(page)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
    assert sum(_points_per_chart(page)) == 8
    _shot(page, "10b-upload-class-map")


def test_two_sessions_adding_data_at_once_each_get_their_own_run(server, browser, runs_dir, tmp_path,
                                                                  pipeline_settings, request):
    """Two people upload a zip of the same name at the same moment: two runs, each complete."""
    if pipeline_settings[0] is None:
        pytest.skip(f"engine pipeline not available: {pipeline_settings[1]}")
    from drlcore.data import rundir

    zips = []
    for i, who in enumerate("ab"):
        (tmp_path / who).mkdir()
        zips.append(make_zip(tmp_path / who / "plates.zip", n_per_class=3 + i))
    before = {p.name for p in runs_dir.iterdir()}
    request.addfinalizer(lambda: [shutil.rmtree(p, ignore_errors=True) for p in runs_dir.iterdir()
                                  if p.name not in before])
    pages = []
    for path in zips:
        ctx = browser.new_context(viewport={"width": 1440, "height": 1800})
        request.addfinalizer(ctx.close)
        pg = ctx.new_page()
        _open(pg, server)
        pg.locator("input[type='file']").set_input_files(str(path))
        _settle(pg)
        pages.append(pg)
    for pg in pages:  # both clicks before either job has finished
        pg.get_by_role("button", name="Analyse").click()
    # Watch both pages at once: a page that finished first must not wait unseen while the test
    # waits on the other; an error on either fails at once with its text.
    opened_ok, deadline = set(), time.monotonic() + 120
    while len(opened_ok) < len(pages) and time.monotonic() < deadline:
        for i, pg in enumerate(pages):
            if i in opened_ok:
                continue
            errors = pg.locator("[data-testid='stAlertContentError']")
            assert not errors.count(), errors.first.inner_text()
            if pg.get_by_text("is open. Explore it").count():
                opened_ok.add(i)
        pages[0].wait_for_timeout(500)
    assert len(opened_ok) == len(pages), [p.name for p in runs_dir.iterdir()]
    new_runs = sorted(p for p in runs_dir.iterdir() if p.name not in before and rundir.is_complete_run(p))
    assert len(new_runs) == 2, [p.name for p in runs_dir.iterdir()]
    assert all(p.name.startswith("plates") for p in new_runs)
    # Each session opened its own run, holding its own images (3 vs 4 per class).
    sizes = sorted(len(pd.read_parquet(p / rundir.OBJECTS)) for p in new_runs)
    assert sizes == [6, 8]
    opened = {pg.locator("h3", has_text="Open: ").first.inner_text().strip() for pg in pages}
    assert opened == {f"Open: {p.name}" for p in new_runs}, opened


def test_html_report_downloads_and_draws_offline(server, page, browser, tmp_path):
    _open(page, server, "correlations")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Download this view as an HTML report").click()
    report = tmp_path / "report.html"
    info.value.save_as(report)
    assert report.stat().st_size > 1_000_000  # plotly.js is inside
    offline = browser.new_context(viewport={"width": 1280, "height": 1600}, offline=True)
    try:
        pg = offline.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(report.as_uri())
        pg.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        points = _points_per_chart(pg)
        assert len(points) == 2 and all(p > 0 for p in points), points
        assert pg.locator("#provenance").inner_text().count("data fingerprint") == 1
        assert not errors, errors
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / "11-report-offline.png"), full_page=True)
    finally:
        offline.close()


def test_heatmap_cell_click_picks_the_pair(server, page):
    _open(page, server, "correlations")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
    page.wait_for_timeout(1000)
    # Rows and columns are ordered by family (and the names come from the run's own data), so the
    # cell for (z1, intensity mean) is looked up in the drawn figure, then clicked where it is drawn.
    cell = page.evaluate("""() => {
        const gd = document.querySelector('.js-plotly-plot');
        const heat = gd._fullData[0];
        const rows = heat.customdata.length, cols = heat.customdata[0].length;
        for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
            const [feature, dim] = heat.customdata[i][j];
            if (dim === '1' && heat.x[j] === 'intensity mean') return {i, j, rows, cols, row: heat.y[i]};
        }
        return null; }""")
    assert cell is not None
    heat = page.locator(".js-plotly-plot").first
    drag = heat.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(drag["x"] + drag["width"] * ((cell["j"] + 0.5) / cell["cols"]),
                     drag["y"] + drag["height"] * ((cell["i"] + 0.5) / cell["rows"]))
    page.get_by_text(f"between {cell['row']} and intensity mean").wait_for(timeout=30_000)
    _settle(page)
    title = page.evaluate("() => document.querySelectorAll('.js-plotly-plot')[1].layout.yaxis.title.text")
    assert title == "intensity mean"


def test_100k_point_map_draws(server, page, runs_dir, request):
    make_run(runs_dir, "big", n=100_000, n_dims=6, thumbs=False, seed=2)
    request.addfinalizer(lambda: shutil.rmtree(runs_dir / "big", ignore_errors=True))
    _open(page, server, "class_map")
    # Pick the big run in the sidebar's run picker, as a user would.
    page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first.click()
    page.get_by_role("option", name="big").click()
    _settle(page, timeout=120)
    page.wait_for_function("""() => { const g = document.querySelector('.js-plotly-plot');
        return g && g._fullData && g._fullData.reduce((s, t) => s + (t.x ? t.x.length : 0), 0) >= 100000; }""",
                           timeout=120_000)
    assert page.locator(".js-plotly-plot canvas").count() > 0
    _shot(page, "12-class-map-100k")
    assert not page.js_errors, page.js_errors
