"""What checking costs: a cached rerun of `drl run` with and without verification (issue 24).

    python benchmarks/bench_integrity.py DATA WORKDIR [--repeats 3]

Fills WORKDIR/cache and WORKDIR/run with one full run, reruns once untimed (warm page cache),
then times cached reruns into the same folder, alternating "checked" (as shipped) and
"unchecked" (every size/sha256 check of run files, thumbnail shards, feature-cache shards and
ContentStore entries, and the recording of file hashes, replaced by no-ops in this process).
Prints the medians and the ratio. Timings are noisy on a shared machine: compare the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def unchecked():
    from drlcore.data import cache, rundir

    saved = (rundir._damage, rundir.record_files, cache.FeatureCache._check,
             cache.ContentStore._intact)

    def check_nothing(self, shard):
        if shard.array is None:
            shard.array = np.load(shard.npy, mmap_mode="r", allow_pickle=False)
        return True

    rundir._damage = lambda *a, **k: None
    rundir.record_files = lambda run_dir, *a, **k: rundir.read_manifest(run_dir)
    cache.FeatureCache._check = check_nothing
    cache.ContentStore._intact = lambda self, key: True
    try:
        yield
    finally:
        (rundir._damage, rundir.record_files, cache.FeatureCache._check,
         cache.ContentStore._intact) = saved


def main() -> None:
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("workdir")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.workdir)
    config = PipelineConfig(features=FeatureConfig(cache_dir=str(work / "cache")))
    out = work / "run"

    def once() -> float:
        t0 = time.perf_counter()
        run_pipeline(args.data, out, config)
        return time.perf_counter() - t0

    print(f"full run: {once():.1f} s", flush=True)
    print(f"first cached rerun (untimed warm-up): {once():.2f} s", flush=True)
    times: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(args.repeats):
        times["checked"].append(once())
        with unchecked():
            times["unchecked"].append(once())
        print({k: [round(t, 2) for t in v] for k, v in times.items()}, flush=True)
    on, off = (statistics.median(times[k]) for k in ("checked", "unchecked"))
    print(f"cached rerun, median of {args.repeats}: checked {on:.2f} s, unchecked {off:.2f} s, "
          f"checking costs {100 * (on - off) / off:+.1f}%")


if __name__ == "__main__":
    main()
