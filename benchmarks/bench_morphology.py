"""Morphology time per object: this tree against a baseline tree, on the same images, same run.

Each tree runs in its own child process (its own ``drlcore`` on ``PYTHONPATH``) and times what the
analysis stage does per image: decode the file as the features stage did
(``drlcore.data.decode.decode``), then ``drlcore.analysis.morphology.measure_dataset`` on the
decoded images (cold: no morphology cache is involved). The trees alternate for ``--rounds``
rounds so that a change of machine load hits both; the reported ratio is the median over rounds
of (this tree's seconds / baseline's seconds), by the wall clock and by the children's CPU time
(steadier on a loaded machine), with the range of the wall-clock ratio over the rounds. Timings
are noisy on a shared machine: read the ratio, not the absolute figures.

    git archive <commit> drlcore | tar -x -C /tmp/base     # the baseline tree
    .venv/bin/python benchmarks/bench_morphology.py --baseline /tmp/base \\
        --data ../shared/data/ifc-cellcycle --n 600 --data ../shared/data/blood-cells-pbc --n 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
from pathlib import Path
from drlcore.data import decode
from drlcore.data.discover import ImageRecord
from drlcore.analysis import morphology
paths = json.loads(sys.argv[1])
t0, c0 = time.perf_counter(), time.process_time()
images = []
for p in paths:
    image = decode.decode(Path(p).read_bytes())
    images.append((image.rgb, None, image.channel_pixels,
                   image.channel_map.names if image.channel_pixels is not None else None))
t1, c1 = time.perf_counter(), time.process_time()
frame = morphology.measure_dataset(images)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"decode_s": t1 - t0, "measure_s": t2 - t1,
                  "decode_cpu_s": c1 - c0, "measure_cpu_s": c2 - c1,
                  "failed": int((~frame["morph_ok"]).sum()), "columns": frame.shape[1]}))
"""


def _images(folder: Path, n: int) -> list[str]:
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in (".tif", ".tiff", ".jpg", ".jpeg", ".png"))
    step = max(1, len(files) // n)
    return [str(p) for p in files[::step][:n]]


def _time(tree: Path, paths: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    # cwd too: "python -c" puts the working folder first on sys.path, ahead of PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths)], env=env, cwd=tree,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the tree {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, type=Path, help="folder holding the baseline drlcore")
    ap.add_argument("--data", action="append", required=True, type=Path)
    ap.add_argument("--n", action="append", type=int, default=None,
                    help="images per --data folder, evenly spaced (default 300)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    counts = args.n or [300] * len(args.data)
    for folder, n in zip(args.data, counts):
        paths = _images(folder, n)
        rows = []
        for _ in range(args.rounds):
            base = _time(args.baseline, paths)
            new = _time(ROOT, paths)
            rows.append((base, new))
        per = lambda r, key: [x[key] for x in r]  # noqa: E731
        base_total = [b["decode_s"] + b["measure_s"] for b, _ in rows]
        new_total = [m["decode_s"] + m["measure_s"] for _, m in rows]
        print(json.dumps({
            "data": folder.name, "images": len(paths),
            "baseline_ms_per_object": round(1e3 * statistics.median(base_total) / len(paths), 2),
            "new_ms_per_object": round(1e3 * statistics.median(new_total) / len(paths), 2),
            "ratio_decode_plus_measure": round(statistics.median(
                n_ / b_ for n_, b_ in zip(new_total, base_total)), 3),
            "ratio_measure_only": round(statistics.median(
                m["measure_s"] / b["measure_s"] for b, m in rows), 3),
            # CPU seconds of each child: what other processes on a loaded machine take from the
            # wall clock does not count, so the ratio wavers less between rounds.
            "ratio_cpu_decode_plus_measure": round(statistics.median(
                (m["decode_cpu_s"] + m["measure_cpu_s"]) / (b["decode_cpu_s"] + b["measure_cpu_s"])
                for b, m in rows), 3),
            "ratio_cpu_measure_only": round(statistics.median(
                m["measure_cpu_s"] / b["measure_cpu_s"] for b, m in rows), 3),
            "ratio_range_decode_plus_measure": [
                round(min(n_ / b_ for n_, b_ in zip(new_total, base_total)), 3),
                round(max(n_ / b_ for n_, b_ in zip(new_total, base_total)), 3)],
            "baseline_failed": rows[0][0]["failed"], "new_failed": rows[0][1]["failed"],
            "baseline_columns": rows[0][0]["columns"], "new_columns": rows[0][1]["columns"],
        }))


if __name__ == "__main__":
    main()
