"""Explorer speed: server time per interaction on a synthetic 10k-object run, and map figure build
time for 100k points.

    .venv/bin/python benchmarks/bench_app.py [--objects 10000] [--map-points 100000] [--repeats 3]

AppTest runs the script in this process, so its wall time is the server-side time of one rerun
(script + figure building + serialisation), without network and browser drawing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_app(n_objects: int, repeats: int) -> list[tuple[str, float]]:
    from streamlit.testing.v1 import AppTest

    from app_fixtures import make_run

    root = Path(tempfile.mkdtemp(prefix="drl-bench-"))
    t0 = time.perf_counter()
    make_run(root, "bench", n=n_objects, n_dims=10)
    print(f"synthetic run with {n_objects} objects written in {time.perf_counter() - t0:.1f} s")
    os.environ["DRL_RUNS_DIR"] = str(root)
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=120).run()  # warm caches
    results = []

    def page(name):
        return lambda: at.switch_page(f"views/{name}.py").run()

    for name in ("traversals", "correlations", "class_map", "anomalies", "source_model", "datasets"):
        page(name)()  # first visit fills caches
        results.append((f"open page {name}", _timed(page(name), repeats)))
    page("traversals")()
    dims = iter(list(range(1, 10)) * repeats)
    results.append(("latent axes: change dimension", _timed(
        lambda: at.selectbox(key="trav.dim").set_value(next(dims)).run(), repeats)))
    page("correlations")()
    methods = iter(["spearman", "mi", "pearson"] * repeats)
    results.append(("correlations: switch measure", _timed(
        lambda: at.segmented_control(key="corr.method").set_value(next(methods)).run(), repeats)))
    page("class_map")()
    colours = iter(["morph_area", "z_mean_3", "anomaly_score", "class"] * repeats)
    results.append(("class map: change colour", _timed(
        lambda: at.selectbox(key="map.color_by").set_value(next(colours)).run(), repeats)))

    def select():
        at.session_state["map.selected"] = list(range(0, n_objects, 20))
        at.run()

    results.append((f"class map: select {n_objects // 20} objects (gallery + effect sizes)", _timed(select, repeats)))
    page("anomalies")()
    quantiles = iter([0.9, 0.99, 0.95] * repeats)
    results.append(("anomalies: move threshold", _timed(
        lambda: at.slider(key="anom.quantile").set_value(next(quantiles)).run(), repeats)))
    known = iter([["lymphocyte"], ["lymphocyte", "neutrophil"], ["neutrophil"]] * repeats)
    results.append(("anomalies: change known classes (re-score, first time)", _timed(
        lambda: at.multiselect(key="anom.known").set_value(next(known)).run(), 1)))
    assert not at.exception, at.exception
    return results


def bench_map(n_points: int, repeats: int) -> list[tuple[str, float]]:
    from explorer.figures import latent_map

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"row": np.arange(n_points), "path": [f"class_{i % 15}/img_{i}.png" for i in range(n_points)],
                       "label": [f"class_{i % 15}" for i in range(n_points)], "umap_x": rng.normal(size=n_points),
                       "umap_y": rng.normal(size=n_points), "morph_area": rng.gamma(2, 100, n_points)})
    cat = _timed(lambda: latent_map(df, "umap_x", "umap_y", "label", False), repeats)
    cont = _timed(lambda: latent_map(df, "umap_x", "umap_y", "morph_area", True), repeats)
    fig = latent_map(df, "umap_x", "umap_y", "label", False)
    ser = _timed(fig.to_json, repeats)
    size = len(fig.to_json()) / 2**20
    return [(f"map figure, {n_points} points, 15 classes", cat),
            (f"map figure, {n_points} points, continuous colour", cont),
            (f"map figure to JSON ({size:.1f} MiB)", ser)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--map-points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = bench_map(args.map_points, args.repeats) + bench_app(args.objects, args.repeats)
    width = max(len(name) for name, _ in rows)
    print(f"\n{'measurement':<{width}}  median ms")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1000:9.1f}")


if __name__ == "__main__":
    main()
