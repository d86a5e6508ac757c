"""The issue-20 check: ``drl features`` with its defaults against ``--engine torch --precision
fp32``, whole command (a fresh process: imports, model load, hashing, decoding, thumbnails,
writing) on the same images with a cold feature cache, interleaved in one run.

    .venv/bin/python benchmarks/features_defaults_vs_torch.py DATA [--repeat 2]

Three commands per round: torch fp32; the defaults with nothing cached at all (the exported
graph is made and probed first: once per machine); the defaults with the graph cached but the
feature cache cold (every later dataset). Prints wall seconds, the ratios, the engine and
precision the defaults chose, and their agreement with torch fp32 (lowest cosine, kNN@10).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def drl(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "drlcore.cli", "features", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    from drlcore.embedding.engines import lowest_cosine
    from drlcore.embedding.precision import knn_overlap

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_graph = tmp / "graph-cache"
        # Made once outside the timing: the exported graph and its probe verdict.
        drl([str(args.data), "--out", str(tmp / "warmup"), "--cache-dir", str(warm_graph)])
        shutil.rmtree(warm_graph / "features")
        rows = []
        for rep in range(args.repeat):
            t_torch = drl([str(args.data), "--out", str(tmp / f"torch-{rep}"), "--cache-dir",
                           str(tmp / f"c-torch-{rep}"), "--engine", "torch",
                           "--precision", "fp32"])
            t_cold = drl([str(args.data), "--out", str(tmp / f"cold-{rep}"), "--cache-dir",
                          str(tmp / f"c-cold-{rep}")])
            cache = tmp / f"c-graph-{rep}"
            shutil.copytree(warm_graph, cache)
            t_graph = drl([str(args.data), "--out", str(tmp / f"graph-{rep}"), "--cache-dir",
                           str(cache)])
            rows.append((t_torch, t_cold, t_graph))
            print(f"round {rep + 1}: torch fp32 {t_torch:.1f} s; defaults, nothing cached "
                  f"{t_cold:.1f} s ({t_torch / t_cold:.2f}x); defaults, graph cached "
                  f"{t_graph:.1f} s ({t_torch / t_graph:.2f}x)", flush=True)
        manifest = json.loads((tmp / "graph-0" / "manifest.json").read_text())
        entry = manifest["stages"]["features"] if "stages" in manifest else manifest["features"]
        reference = np.load(tmp / "torch-0" / "features.npy")
        default = np.load(tmp / "graph-0" / "features.npy")
        print(f"images {len(reference)}; defaults ran engine {entry['engine']['used']}, "
              f"precision {entry['dtype']}; vs torch fp32: lowest cosine "
              f"{lowest_cosine(reference, default):.5f}, kNN@10 "
              f"{knn_overlap(reference, default):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
