"""Analysis time and peak memory against the number of objects, on synthetic run folders.

Each size gets a run folder built directly in the run-folder format: float32 features (random
low-rank signal with class structure, plus noise), ``objects.parquet`` with ``z_mean_*`` latents
from a linear map of the features, labels, and a pool of small generated thumbnail JPEGs that the
objects point at (at most ``--pool`` distinct images, repeated: a million files would be a test of
the file system, not of the analysis). Morphology is cached per image hash; the pool is measured
once in a warm-up, so the timed runs measure the analysis proper. Each size is analysed in its own
child process, whose peak RSS (``ru_maxrss``) is reported with the time of each analysis part and
the growth exponent of time against N (slope of log time on log N between the sizes).

    .venv/bin/python benchmarks/bench_scale.py --sizes 10000,100000 [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drlcore import rundir  # noqa: E402

PARTS = ("_morphology", "_correlations", "_classification", "_anomalies", "_projections")
CLASSES = ("alpha", "beta", "gamma", "delta", "eps")


def _thumb(rng, k: int) -> bytes:
    size = 48
    img = np.full((size, size, 3), 230, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    r = 6 + (k % 12)
    e = 1.0 + (k % 5) * 0.2
    img[((yy - 24) / r) ** 2 + ((xx - 24) / (r * e)) ** 2 <= 1] = (80 + k % 120, 40, 150)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_run(run: Path, n: int, pool: int, dim: int = 128, latent: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = run / "images"
    images.mkdir(parents=True, exist_ok=True)
    pool = min(pool, n)
    paths, hashes = [], []
    for k in range(pool):
        data = _thumb(rng, k)
        p = images / f"img_{k:05d}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
        hashes.append(hashlib.sha256(data).hexdigest())
    y = rng.integers(0, len(CLASSES), n)
    centres = rng.normal(0, 2, (len(CLASSES), 8))
    basis = rng.normal(0, 1, (8, dim)).astype(np.float32)
    X = np.empty((n, dim), np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        low = (centres[y[s:e]] + rng.normal(0, 1, (e - s, 8))).astype(np.float32)
        X[s:e] = low @ basis + rng.normal(0, 0.5, (e - s, dim)).astype(np.float32)
    np.save(run / rundir.FEATURES, X)
    W = rng.normal(0, 1 / np.sqrt(dim), (dim, latent)).astype(np.float32)
    Z = X @ W
    which = np.arange(n) % pool
    cols = {"path": np.array(paths, object)[which], "source": str(images),
            "label": np.array(CLASSES, object)[y], "split": "train",
            "sha256": np.array(hashes, object)[which], "recon_error": rng.random(n)}
    cols.update({rundir.latent_column(j): Z[:, j].astype(np.float64) for j in range(latent)})
    pd.DataFrame(cols).to_parquet(run / rundir.OBJECTS)
    rundir.record_stage(run, "features", {"key": f"synthetic-{n}", "backbone": "synthetic",
                                          "n": n, "dim": dim})
    rundir.record_stage(run, "encode", {"key": f"synthetic-{n}"})


def _child(run: str, cache: str, quick: bool, out):
    from drlcore import analyze

    times = {}
    for name in PARTS:
        fn = getattr(analyze, name)

        def timed(*a, _fn=fn, _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                times[_name.strip("_")] = time.perf_counter() - t
        setattr(analyze, name, timed)
    cfg = analyze.AnalyzeConfig(cache_dir=cache, n_boot=50 if quick else 200, umap=True)
    t0 = time.perf_counter()
    analyze.analyze_run(run, cfg)
    times["total"] = time.perf_counter() - t0
    a = json.loads((Path(run) / rundir.ANALYSIS).read_text())
    out.put({"times": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
             / 1024, "samples": a.get("samples", {})})


def measure(run: Path, cache: Path, quick: bool) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(str(run), str(cache), quick, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"analysis of {run} failed (exit {p.exitcode})")
    return q.get()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--pool", type=int, default=2000, help="distinct thumbnail images")
    ap.add_argument("--work", default="/tmp/drl-bench-scale")
    ap.add_argument("--quick", action="store_true", help="fewer bootstrap resamples")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_scale.md"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    cache = work / "cache"
    rows = []
    warm = work / "warm"
    if not (warm / rundir.ANALYSIS).is_file():
        build_run(warm, args.pool, args.pool)
        measure(warm, cache, True)  # measures the pool's morphology once, into the cache
    for n in sizes:
        run = work / f"run_{n}"
        t = time.perf_counter()
        if not (run / rundir.OBJECTS).is_file():
            build_run(run, n, args.pool)
        (run / rundir.ANALYSIS).unlink(missing_ok=True)
        build_s = time.perf_counter() - t
        r = measure(run, cache, args.quick)
        r.update(n=n, build_s=build_s)
        rows.append(r)
        print(json.dumps(r), flush=True)
        write(rows, args)
    return rows


def write(rows, args):
    parts = [p.strip("_") for p in PARTS] + ["total"]
    lines = ["# Analysis at scale (synthetic runs)", "",
             f"Command: `.venv/bin/python benchmarks/bench_scale.py --sizes {args.sizes}"
             f"{' --quick' if args.quick else ''}`; {args.pool} distinct thumbnails repeated; "
             "morphology served from the per-image cache (warmed once). Seconds per part; "
             "peak RSS of the analysing process.", "",
             "| N | " + " | ".join(parts) + " | peak RSS (MiB) | samples |",
             "|" + "---|" * (len(parts) + 3)]
    for r in rows:
        lines.append(f"| {r['n']} | " + " | ".join(f"{r['times'].get(p, float('nan')):.1f}"
                                                   for p in parts)
                     + f" | {r['peak_rss_mib']:.0f} | {r['samples'] or 'full'} |")
    if len(rows) >= 2:
        lines += ["", "Growth exponent of time against N (log-log slope, first to last size; "
                  "goal <= 1.1):", ""]
        a, b = rows[0], rows[-1]
        for p in parts:
            ta, tb = a["times"].get(p), b["times"].get(p)
            if ta and tb and ta > 0.05:
                lines.append(f"- {p}: {np.log(tb / ta) / np.log(b['n'] / a['n']):.2f}")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
