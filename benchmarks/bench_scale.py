"""Analysis time and peak memory against the number of objects, on synthetic run folders, and the
app's server time on the largest one.

Each size gets a run folder built in the run-folder format (drlcore.data.rundir), every object its own
image: ``N`` distinct small generated JPEGs (48 px ellipses of varying size, elongation and
colour) under ``images/`` (what morphology reads), the same bytes as the run's thumbnails in
shards (rundir.ThumbWriter), float32 features (low-rank class structure plus noise, written in
chunks), ``objects.parquet`` with ``z_mean_*`` latents from a linear map of the features, five
labels and the engine's manifest entries. Built once and kept under ``--work``.

Each size is analysed cold (its own empty cache, so morphology measures every image, in
``--jobs`` processes) in a child process. Per stage (morphology, correlations, classification,
anomaly, maps) we report its seconds and the peak memory while it ran: the RSS of the analysing
process and its worker processes together, sampled every 0.2 s (psutil), beside the process's
own ``ru_maxrss``. Growth exponents are the slopes of log time against log N between sizes (goal
<= 1.1; above ``drlcore.analysis.scale.ANALYZE_FULL_MAX`` objects the sampled parts stop growing by
design). Then the app (Streamlit AppTest, in this process: server time of a rerun, no network or
browser drawing) opens each page on the largest run, first visit and warm, and times one
interaction per page.

    .venv/bin/python benchmarks/bench_scale.py --sizes 10000,100000,1000000 [--quick] [--jobs 2]

``--app-run RUN`` times only the app, on an existing analysed run folder (for example one that
``tests/app_fixtures.make_run`` wrote with a million objects), into ``--app-out``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drlcore.data import rundir  # noqa: E402

STAGES = {"_morphology": "morphology", "_correlations": "correlations",
          "_classification": "classification", "_anomalies": "anomaly", "_projections": "maps"}
CLASSES = ("alpha", "beta", "gamma", "delta", "eps")
SIDE = 48
PER_FOLDER = 1000


def _image(rng: np.random.Generator, label: int) -> bytes:
    """A 48 px ellipse whose size, elongation and colour depend on the class, with noise."""
    img = np.full((SIDE, SIDE, 3), 230, np.uint8)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = 6 + 2 * label + rng.uniform(0, 6)
    e = 1.0 + 0.15 * label + rng.uniform(0, 0.4)
    c = SIDE / 2 + rng.uniform(-3, 3, 2)
    inside = ((yy - c[0]) / r) ** 2 + ((xx - c[1]) / (r * e)) ** 2 <= 1
    img[inside] = (60 + 30 * label + rng.integers(0, 40), 40, 150)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _image_path(images: Path, k: int) -> Path:
    return images / f"{k // PER_FOLDER:04d}" / f"c{k:07d}.jpg"


def _make_images(args) -> list[tuple[str, bytes]]:
    """Images start..stop-1, written to their files; returns (sha256, bytes) of each."""
    images, start, stop, labels, seed = args
    rng = np.random.default_rng([seed, start])
    out = []
    for k, label in zip(range(start, stop), labels):
        data = _image(rng, int(label))
        path = _image_path(images, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


def build_run(run: Path, n: int, jobs: int, dim: int = 128, latent: int = 10, seed: int = 0):
    """The synthetic run of ``n`` objects (see the module docstring); reused when complete."""
    marker = run / "bench-built.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"n": n, "seed": seed}:
        return
    rng = np.random.default_rng(seed)
    images = run / "images"
    images.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, len(CLASSES), n)
    step = 5000
    tasks = [(images, s, min(n, s + step), y[s:s + step], seed) for s in range(0, n, step)]
    hashes = []
    with rundir.ThumbWriter(run) as thumbs, mp.get_context("spawn").Pool(jobs) as pool:
        for part in pool.imap(_make_images, tasks):  # in order: the shards follow the rows
            for sha, data in part:
                thumbs.add(sha, data)
                hashes.append(sha)
    centres = rng.normal(0, 2, (len(CLASSES), 8))
    basis = rng.normal(0, 1, (8, dim)).astype(np.float32)
    X = np.lib.format.open_memmap(run / rundir.FEATURES, mode="w+", dtype=np.float32,
                                  shape=(n, dim))
    W = rng.normal(0, 1 / np.sqrt(dim), (dim, latent)).astype(np.float32)
    Z = np.empty((n, latent), np.float64)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        low = (centres[y[s:e]] + rng.normal(0, 1, (e - s, 8))).astype(np.float32)
        X[s:e] = low @ basis + rng.normal(0, 0.5, (e - s, dim)).astype(np.float32)
        Z[s:e] = X[s:e] @ W
    X.flush()
    del X
    rel = [str(_image_path(images, k).relative_to(images)) for k in range(n)]
    cols = {"row": np.arange(n), "path": rel, "label": np.array(CLASSES, object)[y],
            "split": "train", "sha256": hashes,
            "source": [str(images / p) for p in rel], "recon_error": rng.random(n)}
    cols.update({rundir.latent_column(j): Z[:, j] for j in range(latent)})
    frame = pd.DataFrame(cols).astype({c: "string" for c in ("path", "label", "split", "sha256",
                                                              "source")})
    frame.to_parquet(run / rundir.OBJECTS, index=False)
    rundir.record_stage(run, "features", {"key": f"synthetic-{n}", "backbone": "synthetic",
                                          "feature_dim": dim, "dtype": "fp32",
                                          "preprocessing": {}})
    rundir.record_stage(run, "encode", {"key": f"synthetic-{n}"})
    marker.write_text(json.dumps({"n": n, "seed": seed}))


# --------------------------------------------------------------------------- memory sampling


class TreeRSS:
    """Peak resident memory of this process and its children (worker processes), sampled."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.window = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker that just ended
                pass
        return total

    def _run(self):
        while not self._stop.wait(self.interval):
            rss = self._rss()
            self.peak = max(self.peak, rss)
            self.window = max(self.window, rss)

    def start_window(self) -> None:
        self.window = self._rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _mib(nbytes: float) -> float:
    return nbytes / 2**20


def _warm_up() -> float:
    """Compile the numba code of UMAP and pynndescent on a tiny set, as a long-lived process
    would have done already, so the stage times measure the work and not the JIT (reported on
    its own)."""
    from drlcore.analysis.anomaly import KNNScorer
    from drlcore.analysis.projection import UMAPProjector

    t = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(300, 10))
    UMAPProjector().fit(X).transform(X[:50] + 0.01)
    KNNScorer(method="approximate").fit(X).score_samples(X[:20] + 0.1)
    return time.perf_counter() - t


def _child(run: str, cache: str, quick: bool, jobs: int, progress: str, out):
    from drlcore.analysis import analyze

    warmup = _warm_up()
    tree = TreeRSS()
    stages: dict[str, dict] = {}

    def save_progress(state: str):
        Path(progress).write_text(json.dumps({"state": state, "stages": stages}, indent=1))

    for attr, name in STAGES.items():
        fn = getattr(analyze, attr)

        def timed(*a, _fn=fn, _name=name, **k):
            tree.start_window()
            save_progress(f"running {_name}")
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                stages[_name] = {
                    "seconds": time.perf_counter() - t, "peak_tree_mib": _mib(tree.window),
                    "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                save_progress(f"{_name} done")
        setattr(analyze, attr, timed)
    cfg = analyze.AnalyzeConfig(cache_dir=cache, n_boot=50 if quick else 200, umap=True,
                                n_jobs=jobs)
    t0 = time.perf_counter()
    analyze.analyze_run(run, cfg)
    total = time.perf_counter() - t0
    tree.stop()
    a = rundir.read_analysis(run)
    save_progress("done")
    out.put({"stages": stages, "total_s": total, "warmup_s": warmup,
             "peak_tree_mib": _mib(tree.peak),
             "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "samples": a.get("samples", {}), "knn": a.get("anomaly", {}).get("knn"),
             "umap": a.get("projections", {}).get("umap")})


def measure(run: Path, cache: Path, quick: bool, jobs: int, progress: Path) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(str(run), str(cache), quick, jobs, str(progress), q))
    p.start()
    result = q.get()  # before join: a large result would block the child's exit
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"analysis of {run} failed (exit {p.exitcode})")
    return result


# --------------------------------------------------------------------------- the app


def _app_child(run: str, cache: str, repeats: int, out):
    """Page and interaction timings on ``run`` (bench_app.py's AppTest harness, on a real run)."""
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_app import _timed

    os.environ["DRL_RUNS_DIR"] = str(Path(run).parent)
    os.environ["DRL_CACHE_DIR"] = cache
    tree = TreeRSS()
    rows = []
    t0 = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=1800)
    at.session_state["app.run"] = run
    at.run()
    rows.append(("start the app on this run (first script run)", time.perf_counter() - t0, None))

    def page(name):
        return lambda: at.switch_page(f"views/{name}.py").run()

    for name in ("datasets", "traversals", "correlations", "class_map", "anomalies",
                 "source_model"):
        t = time.perf_counter()
        page(name)()
        first = time.perf_counter() - t
        rows.append((f"open page {name}", first, _timed(page(name), repeats)))
    def interaction(name, page_name, fn):
        page(page_name)()
        t = time.perf_counter()
        fn()
        rows.append((name, time.perf_counter() - t, _timed(fn, repeats)))

    dims = iter(list(range(1, 10)) * (repeats + 1))
    interaction("latent axes: change dimension", "traversals",
                lambda: at.selectbox(key="trav.dim").set_value(next(dims)).run())
    colours = iter(["morph_area", "z_mean_3", "anomaly_score", "class"] * (repeats + 1))
    interaction("class map: change colour", "class_map",
                lambda: at.selectbox(key="map.color_by").set_value(next(colours)).run())
    quantiles = iter([0.9, 0.99, 0.95] * (repeats + 1))
    interaction("anomalies: move threshold", "anomalies",
                lambda: at.slider(key="anom.quantile").set_value(next(quantiles)).run())
    tree.stop()
    errors = [str(e.value) for e in at.exception] if at.exception else []
    out.put({"rows": rows, "peak_tree_mib": _mib(tree.peak), "errors": errors})


def measure_app(run: Path, cache: Path, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_app_child, args=(str(run), str(cache), repeats, q))
    p.start()
    result = q.get()
    p.join()
    return result


# --------------------------------------------------------------------------- driver


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--work", default="/tmp/drl-bench-scale")
    ap.add_argument("--jobs", type=int, default=2, help="processes for building and morphology")
    ap.add_argument("--quick", action="store_true", help="50 bootstrap resamples, not 200")
    ap.add_argument("--app", default="largest", help="'largest', 'none' or a size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_scale.md"))
    ap.add_argument("--app-run", default=None, help="time only the app on this analysed run folder")
    ap.add_argument("--app-out", default=str(ROOT / "benchmarks" / "results" / "bench_scale_app.md"))
    args = ap.parse_args(argv)
    if args.app_run:
        run = Path(args.app_run).resolve()
        n = len(pd.read_parquet(run / rundir.OBJECTS, columns=["row"]))
        app = measure_app(run, Path(args.work) / "cache_app", args.repeats)
        app["n"] = n
        lines = [f"# App server time on an analysed run of {n:,} objects", "",
                 f"Command: `.venv/bin/python benchmarks/bench_scale.py --app-run {args.app_run}`, "
                 "on this 2-core machine shared with other work (timings are noisy).", "",
                 *_app_lines(app, args.repeats)]
        Path(args.app_out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        return app
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    results_json = work / "results.json"
    saved = json.loads(results_json.read_text()) if results_json.is_file() else {}
    for n in sizes:
        run = work / f"run_{n}"
        t = time.perf_counter()
        build_run(run, n, args.jobs)
        build_s = time.perf_counter() - t
        print(f"{n}: run folder ready in {build_s:.0f} s", flush=True)
        for name in (rundir.ANALYSIS, rundir.CORRELATIONS):
            (run / name).unlink(missing_ok=True)
        cache = work / f"cache_{n}"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        r = measure(run, cache, args.quick, args.jobs, work / f"progress_{n}.json")
        r.update(n=n, quick=args.quick, jobs=args.jobs,
                 thumbs_mib=_mib(sum(p.stat().st_size for p in (run / rundir.THUMBS).iterdir())),
                 n_shards=len(list((run / rundir.THUMBS).glob("shard-*"))))
        saved[str(n)] = r
        results_json.write_text(json.dumps(saved, indent=1))
        print(json.dumps(r), flush=True)
        write(saved, args)
    if args.app != "none":
        n = max(sizes) if args.app == "largest" else int(args.app)
        app = measure_app(work / f"run_{n}", work / f"cache_{n}", args.repeats)
        app["n"] = n
        saved["app"] = app
        results_json.write_text(json.dumps(saved, indent=1))
        print(json.dumps(app), flush=True)
        write(saved, args)
    return saved


def write(saved: dict, args) -> None:
    rows = sorted((r for k, r in saved.items() if k.isdigit()), key=lambda r: r["n"])
    names = list(STAGES.values())
    lines = ["# Analysis at scale (synthetic runs)", "",
             f"Command: `.venv/bin/python benchmarks/bench_scale.py --sizes {args.sizes}"
             f"{' --quick' if args.quick else ''} --jobs {args.jobs}`, on this 2-core machine "
             "shared with other work (timings are noisy). Every object has its own generated "
             "48 px image (morphology measures all of them, cold cache, in "
             f"{args.jobs} processes); thumbnails in shards. Peak memory per stage is the RSS of "
             "the analysing process plus its worker processes, sampled every 0.2 s. Each "
             "analysis runs in a fresh process that first compiles UMAP's and pynndescent's "
             "numba code on a tiny set (JIT seconds in the last column, not in the stages).", "",
             "Seconds per stage:", "",
             "| N | " + " | ".join(names) + " | total | JIT warm-up |",
             "|" + "---|" * (len(names) + 3)]
    for r in rows:
        warm = r.get("warmup_s")
        lines.append(f"| {r['n']:,} | " + " | ".join(
            f"{r['stages'][s]['seconds']:.1f}" if s in r["stages"] else "-" for s in names)
            + f" | {r['total_s']:.1f} | " + ("in the stages" if warm is None else f"{warm:.1f}")
            + " |")
    lines += ["", "Peak memory per stage (MiB, process tree), and the whole analysis (tree; the "
              "analysing process alone, ru_maxrss):", "",
              "| N | " + " | ".join(names) + " | whole (tree) | whole (process) |",
              "|" + "---|" * (len(names) + 3)]
    for r in rows:
        lines.append(f"| {r['n']:,} | " + " | ".join(
            f"{r['stages'][s]['peak_tree_mib']:.0f}" if s in r["stages"] else "-" for s in names)
            + f" | {r['peak_tree_mib']:.0f} | {r['maxrss_mib']:.0f} |")
    lines += ["", "What was sampled or approximated (analysis.json):", ""]
    for r in rows:
        umap = r.get("umap") or {}
        lines.append(f"- {r['n']:,}: samples {r['samples'] or 'none (all objects)'}; kNN "
                     f"{(r.get('knn') or {}).get('method')}; UMAP fitted on "
                     f"{umap.get('fitted_on', r['n'])}, trustworthiness "
                     f"{umap.get('trustworthiness', float('nan')):.3f}; thumbnails "
                     f"{r.get('thumbs_mib', 0):.0f} MiB in {r.get('n_shards')} shards")
    if len(rows) >= 2:
        lines += ["", "Growth exponent of time against N (log-log slope; goal <= 1.1):", "",
                  "| stage | " + " | ".join(f"{a['n']:,} -> {b['n']:,}"
                                           for a, b in zip(rows, rows[1:])) + " |",
                  "|" + "---|" * len(rows)]
        for s in names + ["total"]:
            cells = []
            for a, b in zip(rows, rows[1:]):
                ta = a["total_s"] if s == "total" else a["stages"].get(s, {}).get("seconds")
                tb = b["total_s"] if s == "total" else b["stages"].get(s, {}).get("seconds")
                cells.append(f"{np.log(tb / ta) / np.log(b['n'] / a['n']):.2f}"
                             if ta and tb and ta > 0.05 else "-")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    app = saved.get("app")
    if app:
        lines += [""] + _app_lines(app, args.repeats)
    Path(args.out).write_text("\n".join(lines) + "\n")


def _app_lines(app: dict, repeats: int) -> list[str]:
    lines = [f"App server time on the {app['n']:,}-object run (Streamlit AppTest: one "
             "script rerun, no network or drawing; first visit and warm median of "
             f"{repeats}; goal < 1 s). Peak memory of the app process tree: "
             f"{app['peak_tree_mib']:.0f} MiB.", "",
             "| action | first (s) | warm (s) |", "|---|---|---|"]
    for name, first, warm in app["rows"]:
        lines.append(f"| {name} | {first:.2f} | " + ("-" if warm is None else f"{warm:.2f}") + " |")
    if app.get("errors"):
        lines += ["", "App errors: " + "; ".join(app["errors"])]
    return lines


if __name__ == "__main__":
    main()
