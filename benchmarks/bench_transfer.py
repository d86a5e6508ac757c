"""Transfer (fine-tuning) time: this tree against a baseline tree, on one run's features, and
whether both give the same model.

The transfer's inputs are read once from a finished ``drl run`` folder, with this tree: the
features, the transfer settings the run recorded (``model/config.json``: latent size, anchors,
seed...), the anchor values from its objects table (``axis_card.measured_values``), and the
shipped source model of the run's backbone. Each tree then runs ``transfer.fine_tune`` on them in
its own child process (its own ``drlcore`` on ``PYTHONPATH``), alternating for ``--rounds``
rounds, and which goes first alternating too, so that a change of machine load hits both; the
reported ratio is the median over rounds of (this tree's seconds / baseline's seconds). Each
child saves the fine-tuned weights and the curve, and the report says whether they are
bit-identical between the trees (the point of the transfer speed-up: same seed, same model).
Timings are noisy on a shared machine: read the ratio, not the absolute figures.

    git archive <commit> drlcore | tar -x -C /tmp/base     # the baseline tree
    .venv/bin/python benchmarks/bench_transfer.py --baseline /tmp/base --run /tmp/run-blood1300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
import numpy as np, torch
import drlcore
from drlcore.disentangle.artifacts import load_model
from drlcore.disentangle.transfer import TransferConfig, fine_tune
inputs, out = sys.argv[1], sys.argv[2]
meta = json.load(open(inputs + ".json"))
z = np.load(inputs + ".npz")
values = {k.removeprefix("anchor__"): z[k] for k in z.files if k.startswith("anchor__")}
cfg = TransferConfig.from_dict(meta["config"])
model = load_model(meta["source"])[0]
t0 = time.perf_counter()
model, info = fine_tune(model, z["features"], cfg, values or None)
seconds = time.perf_counter() - t0
steps = info["epochs_run"] * max(1, info["n_train"] // min(cfg.batch_size, info["n_train"]))
torch.save({"state": model.state_dict(), "curve": info["curve"]}, out)
print(json.dumps({"seconds": seconds, "steps": steps, "epochs_run": info["epochs_run"],
                  "best_epoch": info["best_epoch"], "drlcore": drlcore.__file__}))
"""


def _inputs(run: Path, folder: Path) -> str:
    from drlcore.analysis.axis_card import measured_values
    from drlcore.data import rundir
    from drlcore.runs.pipeline import shipped_source_model

    features = np.asarray(rundir.load_features(run, full=False), dtype=np.float32)
    config = json.loads((run / "model" / "config.json").read_text())
    training = config["training"]["config"]
    objects = rundir.read_table(run, rundir.OBJECTS)
    if len(objects) != len(features):
        raise SystemExit(f"{run}: {len(objects)} objects but {len(features)} feature rows")
    values = {f"anchor__{name}": np.asarray(measured_values(objects, name), dtype=np.float64)
              for name in training.get("anchors", [])}
    backbone = rundir.features_info(run).backbone
    stem = str(folder / "inputs")
    np.savez(stem + ".npz", features=features, **values)
    Path(stem + ".json").write_text(json.dumps({
        "config": training, "source": str(shipped_source_model(backbone))}))
    return stem


def _child(tree: Path, stem: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    # cwd=tree: ``python -c`` puts the working directory first on sys.path, so run from
    # elsewhere both children would import the drlcore found there (a first version of this
    # script timed this tree against itself that way); the child reports which it imported.
    done = subprocess.run([sys.executable, "-c", _CHILD, stem, str(out)], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["drlcore"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the child for {tree} imported {result['drlcore']}")
    return result


def _same(a: Path, b: Path) -> dict:
    import torch

    x, y = torch.load(a), torch.load(b)
    diff = max(((x["state"][k].double() - y["state"][k].double()).abs().max().item()
                for k in x["state"] if x["state"][k].numel()), default=0.0)
    return {"weights_bit_identical": all(torch.equal(x["state"][k], y["state"][k])
                                         for k in x["state"]),
            "max_abs_weight_diff": diff, "curves_equal": x["curve"] == y["curve"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a tree with the old drlcore")
    ap.add_argument("--run", type=Path, required=True, help="a finished drl run folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        folder = Path(tmp)
        stem = _inputs(args.run, folder)
        rounds = []
        for r in range(args.rounds):
            # Which tree goes first alternates too: load tends to drift within a round.
            if r % 2:
                old = _child(args.baseline, stem, folder / f"old{r}.pt")
                new = _child(ROOT, stem, folder / f"new{r}.pt")
            else:
                new = _child(ROOT, stem, folder / f"new{r}.pt")
                old = _child(args.baseline, stem, folder / f"old{r}.pt")
            same = _same(folder / f"new{r}.pt", folder / f"old{r}.pt")
            rounds.append({"this": new, "baseline": old, "ratio": new["seconds"] / old["seconds"],
                           **same})
            print(f"round {r + 1}: this {new['seconds']:.1f} s ({new['steps'] / new['seconds']:.1f} "
                  f"steps/s), baseline {old['seconds']:.1f} s ({old['steps'] / old['seconds']:.1f} "
                  f"steps/s), ratio {rounds[-1]['ratio']:.2f}; best epoch {new['best_epoch']} vs "
                  f"{old['best_epoch']} of {new['epochs_run']} vs {old['epochs_run']}; weights "
                  f"bit-identical {same['weights_bit_identical']} (max |diff| "
                  f"{same['max_abs_weight_diff']:.3g}), curves equal {same['curves_equal']}",
                  flush=True)
    summary = {"run": str(args.run), "rounds": rounds,
               "median_ratio": statistics.median(r["ratio"] for r in rounds),
               "load_average": os.getloadavg()}
    print(f"median ratio this / baseline: {summary['median_ratio']:.2f} "
          f"(load average at the end {summary['load_average'][0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
