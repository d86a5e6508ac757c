"""The WebGL scatter map in a real headless Chromium (Debian's, through Playwright): 10^6 points
draw, hovering a point shows its caption and image, and a lasso drawn with the mouse comes back
to Python as the selected positions (the app writes how many).

Runs ``streamlit run tests/apps/scatter_app.py`` on a free port. WebGL there is Chromium's
software renderer (SwiftShader), so the draw time printed is a CPU figure, not a GPU one; it is
reported, never asserted. A screenshot goes to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_support import CHROMIUM, chromium, free_port, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "scatter_app.py"
ARTIFACTS = ROOT / "test-artifacts"
N = int(os.environ.get("DRL_SCATTER_TEST_N", 1_000_000))  # smaller only to debug

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


def _points(n: int):
    """The app's points (same seed and recipe as tests/apps/scatter_app.py)."""
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, -2.0], [3.0, 3.0], [4.0, -3.0], [-2.0, 4.0]])
    cluster = rng.integers(0, len(centres), n)
    xy = centres[cluster] + rng.normal(0, 0.8, (n, 2))
    return xy[:, 0].astype(np.float32).astype(float), xy[:, 1].astype(np.float32).astype(float)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("scatter-images")
    for i, colour in enumerate(["red", "green", "blue"]):
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).ellipse((8, 8, 56, 56), fill=colour)
        im.save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def server(images, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home")), "SCATTER_N": str(N),
           "SCATTER_IMAGES": str(images), "DRL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with serve(cmd, port, tmp_path_factory.mktemp("log") / "streamlit.log", ROOT, env, timeout=90) as url:
        yield url


def _selected_text(page) -> str:
    texts = [t for t in page.locator("[data-testid='stMarkdownContainer']").all_inner_texts()
             if t.startswith("selected:")]
    return texts[0] if texts else ""


def test_a_million_points_draw_hover_and_lasso(server, images):
    with chromium(playwright_api) as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 950})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"{e} {e.stack}"))
        t0 = time.monotonic()
        page.goto(server)
        frame_el = page.wait_for_selector("iframe[title*='drl_scatter']", timeout=120_000)
        frame = frame_el.content_frame()
        frame.wait_for_function("window.__drlScatter && window.__drlScatter.ready", timeout=240_000)
        load_s = time.monotonic() - t0
        state = frame.evaluate("({...window.__drlScatter, screenPosition: undefined})")
        assert state["n"] == N, state
        webgl = frame.evaluate("""() => { const gl = document.createElement('canvas').getContext('webgl');
            const d = gl && gl.getExtension('WEBGL_debug_renderer_info');
            return gl ? (d ? gl.getParameter(d.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER)) : null; }""")
        timing = {"points": N, "draw_ms": round(state["drawMs"]), "page_to_drawn_s": round(load_s, 1),
                  "renderer": webgl}
        print(f"\nWebGL scatter: {json.dumps(timing)}")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "scatter_timing.json").write_text(json.dumps(timing, indent=1))
        assert frame.locator("#status").inner_text().startswith(f"{N:,} points")
        assert _selected_text(page) == "selected: 0"

        canvas = frame.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                                " return [r.left, r.top, r.width, r.height]; })()")
        box = frame_el.bounding_box()

        def on_page(i: int) -> tuple[float, float]:
            sx, sy = frame.evaluate(f"window.__drlScatter.screenPosition({i})")
            return box["x"] + canvas[0] + sx, box["y"] + canvas[1] + sy

        # Screen position is linear in the data: two points give the mapping for all of them.
        x, y = _points(N)
        i, j = int(np.argmin(x)), int(np.argmax(x))
        k, m = int(np.argmin(y)), int(np.argmax(y))
        (pxi, _), (pxj, _) = on_page(i), on_page(j)
        (_, pyk), (_, pym) = on_page(k), on_page(m)
        ax = (pxj - pxi) / (x[j] - x[i])
        ay = (pym - pyk) / (y[m] - y[k])
        px, py = pxi + (x - x[i]) * ax, pyk + (y - y[k]) * ay
        assert ax > 0 and ay < 0  # y grows upwards on the map

        # Hover an isolated point: its caption and its image (served by the app, not a CDN).
        far = int(np.argmax(np.hypot(x - x.mean(), y - y.mean())))
        page.mouse.move(*on_page(far))
        frame.wait_for_function("document.getElementById('tooltip').style.display === 'block'", timeout=20_000)
        frame.wait_for_function(f"document.getElementById('tooltip-caption').textContent === 'point {far}'",
                                timeout=20_000)
        frame.wait_for_function("(() => { const im = document.getElementById('tooltip-img');"
                                " return im.complete && im.naturalWidth === 64; })()", timeout=20_000)
        src = frame.evaluate("document.getElementById('tooltip-img').src")
        assert src.startswith(server) and src.endswith(f"img{far % 3}.png")

        # Lasso: a circle around the upper-right cluster's centre, drawn with the mouse. It ends
        # where it began, which regl-scatterplot also reads as a click (the component keeps the lasso).
        frame.click("#lasso")
        cx, cy = pxi + (3.0 - x[i]) * ax, pyk + (3.0 - y[k]) * ay
        r = 0.9 * abs(ax)  # about one standard deviation of the cluster
        polygon = [(cx + r * math.cos(2 * math.pi * t / 48), cy + r * math.sin(2 * math.pi * t / 48))
                   for t in range(49)]
        page.mouse.move(*polygon[0])
        page.mouse.down()
        for point in polygon[1:]:
            page.mouse.move(*point, steps=2)
        page.mouse.up()
        t1 = time.monotonic()
        frame.wait_for_function("window.__drlScatter.selection > 1", timeout=120_000)
        in_browser = frame.evaluate("window.__drlScatter.selection")
        page.wait_for_function("n => [...document.querySelectorAll(\"[data-testid='stMarkdownContainer']\")]"
                               ".some(e => e.innerText === `selected: ${n}`)", arg=in_browser, timeout=120_000)
        print(f"lasso -> Python: {time.monotonic() - t1:.1f} s")
        got = int(re.match(r"selected: (\d+)", _selected_text(page)).group(1))

        from matplotlib.path import Path as Polygon

        inside = Polygon(polygon).contains_points(np.column_stack([px, py]))
        expected = int(inside.sum())
        assert expected > 0.05 * N  # the circle holds a good share of one of the four clusters
        # Points within a pixel of the drawn outline may fall either way.
        assert abs(got - expected) <= 0.01 * expected, (got, expected)
        first = [int(v) for v in re.findall(r"\d+", page.locator("text=first selected").inner_text())]
        assert first and all(inside[v] for v in first)
        page.screenshot(path=str(_shots() / "scatter-1m-lasso.png"))
        assert not errors, "\n".join(errors)


def _shots() -> Path:
    out = ARTIFACTS / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def explorer_server(tmp_path_factory):
    from app_fixtures import make_run

    runs = tmp_path_factory.mktemp("scatter-runs")
    make_run(runs, "cells", n=150)
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home")), "DRL_RUNS_DIR": str(runs),
           "DRL_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--runs-dir", str(runs)]
    with serve(cmd, port, tmp_path_factory.mktemp("log") / "streamlit.log", ROOT, env, timeout=90) as url:
        yield url


def test_class_map_webgl_hover_thumbnail_and_lasso_selection(explorer_server):
    with chromium(playwright_api) as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"{e} {e.stack}"))
        page.goto(f"{explorer_server}/class_map", wait_until="domcontentloaded")
        page.get_by_text("WebGL map (hover shows the image)").click(timeout=60_000)
        frame_el = page.wait_for_selector("iframe[title*='drl_scatter']", timeout=60_000)
        frame = frame_el.content_frame()
        frame.wait_for_function("window.__drlScatter && window.__drlScatter.ready", timeout=60_000)
        assert frame.evaluate("window.__drlScatter.n") == 150
        canvas = frame.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                                " return [r.left, r.top, r.width, r.height]; })()")
        box = frame_el.bounding_box()
        positions = np.array(frame.evaluate("Array.from({length: 150}, (_, i) => window.__drlScatter.screenPosition(i))"))
        positions[:, 0] += box["x"] + canvas[0]
        positions[:, 1] += box["y"] + canvas[1]

        # Hover: the object's thumbnail from the run folder, served by the app.
        lonely = int(np.argmax([np.min(np.hypot(*(np.delete(positions, i, axis=0) - p).T))
                                for i, p in enumerate(positions)]))
        page.mouse.move(*positions[lonely])
        frame.wait_for_function(f"document.getElementById('tooltip-caption').textContent.startsWith('img_{lonely:04d}.jpg')",
                                timeout=20_000)
        frame.wait_for_function("(() => { const im = document.getElementById('tooltip-img');"
                                " return im.complete && im.naturalWidth > 0; })()", timeout=20_000)
        # The run keeps its thumbnails in shards: the browser fetched the shard from the app's
        # component route once and shows the thumbnail's byte range of it.
        assert frame.evaluate("document.getElementById('tooltip-img').src").startswith("blob:")
        fetched = frame.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
        assert any("/component/explorer.scatter.images_" in u and u.endswith(".bin") for u in fetched)

        # Lasso around every point: the page's selection panel opens for all 150.
        frame.click("#lasso")
        lo, hi = positions.min(axis=0) - 12, positions.max(axis=0) + 12
        corners = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1]), (lo[0], lo[1] + 20)]
        page.mouse.move(*corners[0])
        page.mouse.down()
        for corner in corners[1:]:
            page.mouse.move(*corner, steps=15)
        page.mouse.up()
        page.get_by_text("Selection: 150 of 150 objects").wait_for(timeout=60_000)
        frame.wait_for_function("window.__drlScatter.selection === 150", timeout=20_000)
        page.screenshot(path=str(_shots() / "class-map-webgl.png"))
        # Clearing on the page clears the map (the selection is Python's).
        page.get_by_role("button", name="Clear selection").last.click()
        frame.wait_for_function("window.__drlScatter.selection === 0", timeout=60_000)
        assert not errors, "\n".join(errors)
