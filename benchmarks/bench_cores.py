"""Speed of the analysis cores at the sizes the tests used to time, as ratios to a baseline.

    .venv/bin/python benchmarks/bench_cores.py [--repeat 3] [--only classify,correlation,map]

The test suite checks what these cores compute, never how long they take (a shared or slow
machine must not fail a test). Here each core is timed at its analysis size:

- ``classify``: ``evaluate_classifiers`` on 2,250 raw 1,280-d backbone features, 8 classes
  (the old test allowed 300 s);
- ``correlation``: ``latent_feature_correlation``, 2,000 objects x 10 axes x 25 features, 200
  bootstrap resamples (old limit 10 s);
- ``map``: ``explorer.figures.latent_map`` with 100,000 points (old limit 5 s).

Each time is divided by a fixed NumPy baseline (matrix products and a sort) timed on the same
machine in the same process, so the ratio says how the core compares with this machine's speed
and can be compared across machines and loads. The best of ``--repeat`` runs is reported (the
least disturbed by other processes). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _baseline() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((384, 384))
    for _ in range(20):
        a = np.tanh(a @ a.T / 384.0)
    np.sort(rng.standard_normal(2_000_000))


def _classify():
    from drlcore.analysis.classify import evaluate_classifiers

    generator = np.random.default_rng(0)
    n, n_classes = 2250, 8
    labels = np.arange(n) % n_classes
    X = np.abs(0.3 * generator.standard_normal((n_classes, 1280))[labels]
               + generator.standard_normal((n, 1280))).astype(np.float32)
    return lambda: evaluate_classifiers(X, labels)


def _correlation():
    import pandas as pd

    from drlcore.analysis.correlation import latent_feature_correlation

    generator = np.random.default_rng(0)
    n = 2000
    Z = generator.standard_normal((n, 10))
    F = pd.DataFrame({f"morph_{i}": generator.standard_normal(n) for i in range(25)})
    return lambda: latent_feature_correlation(Z, F, n_boot=200)


def _map():
    import pandas as pd

    from explorer import figures

    rng = np.random.default_rng(0)
    n = 100_000
    df = pd.DataFrame({"row": np.arange(n), "path": [f"img_{i}.png" for i in range(n)],
                       "label": rng.choice(list("abcdefghij"), n), "umap_x": rng.normal(size=n),
                       "umap_y": rng.normal(size=n), "z_mean_0": rng.normal(size=n)})
    return lambda: figures.latent_map(df, "umap_x", "umap_y", "z_mean_0", continuous=True)


CORES = {"classify": _classify, "correlation": _correlation, "map": _map}


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(CORES),
                        help=f"comma-separated cores to time (of {', '.join(CORES)})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CORES))
    if unknown:
        parser.error(f"unknown cores {unknown}; choose from {sorted(CORES)}")
    _baseline()  # warm-up: BLAS threads, page faults
    baseline = _best(_baseline, args.repeat)
    result = {"baseline_s": round(baseline, 4), "repeat": args.repeat, "cores": {}}
    for name in names:
        fn = CORES[name]()
        fn_time = _best(fn, args.repeat)
        result["cores"][name] = {"seconds": round(fn_time, 3),
                                 "ratio_to_baseline": round(fn_time / baseline, 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
