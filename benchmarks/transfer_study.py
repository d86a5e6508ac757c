"""Why does fine-tuning discard class information? Transfer variants, measured in one process.

For each dataset (a folder written by ``drl features``: features.npy + images.parquet with labels)
the features are loaded once; each transfer variant fine-tunes the shipped source model in
process (``drlcore.disentangle.transfer.fine_tune``, unsupervised: labels are never seen), and the latent
means of all images are scored with a class read-out on one stratified 70/30 split (seed 0):
the engine's MLP (``classify.evaluate_classifiers``, balanced accuracy) and a logistic
regression. Ratios are latent / raw features with the same read-out and split. Also printed: KL
and reconstruction on the validation split, active dimensions (``train.latent_activity``) and the
epoch chosen by early stopping.

    DRL_CACHE_DIR=/tmp/drl-cache .venv/bin/python benchmarks/transfer_study.py \\
        /tmp/warm/blood-cells-pbc /tmp/warm/plankton-ndsb [--variants a,b,...] [--classes half] \
        [--anchor area,hue]

``--classes first-half`` / ``second-half`` keep only half of the classes (sorted by name), so
settings chosen on one half can be confirmed on the other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from drlcore.disentangle.artifacts import load_model
from drlcore.analysis.classify import evaluate_classifiers
from drlcore.runs.pipeline import shipped_source_model
from drlcore.data.rundir import load_features_dir
from drlcore.disentangle.train import encode_means, latent_activity, train_unsupervised
from drlcore.disentangle.transfer import TransferConfig, fine_tune

OLD = dict(epochs=20, patience=0)  # the previous defaults: 20 fixed epochs, beta 1
VARIANTS = {
    "source-as-is": None,
    "old-20ep-b1": TransferConfig(**OLD),
    "es-b1": TransferConfig(beta=1.0),
    "es-b0.5": TransferConfig(beta=0.5),
    "es-b0.25": TransferConfig(beta=0.25),
    "es-b0.1": TransferConfig(beta=0.1),
    "es-b1-lr3e-4": TransferConfig(beta=1.0, lr=3e-4),
    "es-b1-cap25": TransferConfig(beta=1.0, capacity=25.0),
    "es-b1-cap50": TransferConfig(beta=1.0, capacity=50.0),
    "es-b1-freeze-dec": TransferConfig(beta=1.0, freeze="decoder"),
    "es-b1-freeze-enc": TransferConfig(beta=1.0, freeze="encoder"),
    "es-b1-norefit": TransferConfig(beta=1.0, refit_standardisation=False),
    "es-b1-j16": TransferConfig(beta=1.0, latent_dim=16),
    "es-b1-j32": TransferConfig(beta=1.0, latent_dim=32),
    "es-b1-floor0.1": TransferConfig(beta=1.0, min_relative_std=0.1),
    "es-b1-floor0.3": TransferConfig(beta=1.0, min_relative_std=0.3),
    "es-b0.1-floor0.1": TransferConfig(beta=0.1, min_relative_std=0.1),
    "old-floor0.1": TransferConfig(**OLD, min_relative_std=0.1),
    "scratch-b1": "scratch",
    "pca10": "pca",
}


def stratified_split(y: np.ndarray, seed: int = 0, test: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.full(len(y), "train", dtype=object)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        split[rows[:int(round(test * len(rows)))]] = "test"
    return split


def logreg_balanced_accuracy(X, y, split, reduce_to: int | None = 128) -> float:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr, te = split == "train", split == "test"
    steps = [PCA(reduce_to, random_state=0)] if reduce_to and X.shape[1] > reduce_to else []
    clf = make_pipeline(*steps, StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(X[tr], y[tr])
    return float(balanced_accuracy_score(y[te], clf.predict(X[te])))


def readout(X, y, split) -> dict:
    mlp = evaluate_classifiers(X, y, split=split, models=("mlp",))["models"]["mlp"]
    return {"mlp": float(mlp["balanced_accuracy"]), "logreg": logreg_balanced_accuracy(X, y, split)}


def run_variant(name, variant, feats, model_dir):
    start = time.perf_counter()
    info = {}
    if variant == "pca":
        from sklearn.decomposition import PCA

        codes = PCA(10, random_state=0).fit_transform((feats - feats.mean(0)) / (feats.std(0) + 1e-6))
    elif variant == "scratch":
        res = train_unsupervised(feats, steps=200 * (len(feats) // 64), batch_size=64, beta=1.0)
        codes = encode_means(res.model, feats)
    else:
        model, _ = load_model(model_dir)
        if variant is not None:
            model, info = fine_tune(model, feats, variant)
        codes = encode_means(model, feats)
    _, inactive = latent_activity(codes)
    out = {"active": codes.shape[1] - len(inactive), "J": codes.shape[1],
           "seconds": round(time.perf_counter() - start, 1)}
    if info:
        best = info["curve"][info["best_epoch"]]["val"] or {}
        out.update(best_epoch=info["best_epoch"], epochs_run=info["epochs_run"],
                   val_recon=round(best.get("recon", float("nan")), 1),
                   val_kl=round(best.get("kl", float("nan")), 1))
    return codes, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--classes", choices=("all", "first-half", "second-half"), default="all")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--anchor", default=None, help="also run the default settings anchored to "
                    "these morphology features (r on held-out images; cache: DRL_CACHE_DIR)")
    args = ap.parse_args(argv)
    model_dir = shipped_source_model("effnet-lite0")
    rows = []
    for ds in args.datasets:
        feats, images, _ = load_features_dir(ds)
        feats = np.asarray(feats, dtype=np.float32)
        y = images["label"].astype(str).to_numpy()
        if args.classes != "all":
            classes = sorted(set(y))
            half = classes[:len(classes) // 2] if args.classes == "first-half" else \
                classes[len(classes) // 2:]
            keep = np.isin(y, half)
            feats, y = feats[keep], y[keep]
        split = stratified_split(y)
        raw = readout(feats, y, split)
        print(f"\n{Path(ds).name} ({args.classes}): n={len(y)}, raw MLP {raw['mlp']:.3f}, "
              f"raw logreg {raw['logreg']:.3f}", flush=True)
        for name in args.variants.split(","):
            codes, out = run_variant(name, VARIANTS[name], feats, model_dir)
            lat = readout(codes, y, split)
            row = {"dataset": Path(ds).name, "classes": args.classes, "variant": name,
                   "mlp": lat["mlp"], "logreg": lat["logreg"],
                   "ratio_mlp": lat["mlp"] / raw["mlp"], "ratio_logreg": lat["logreg"] / raw["logreg"],
                   "raw_mlp": raw["mlp"], "raw_logreg": raw["logreg"], **out}
            rows.append(row)
            extra = " ".join(f"{k}={v}" for k, v in out.items())
            print(f"  {name:18s} MLP {lat['mlp']:.3f} ({row['ratio_mlp']:.2f})  logreg "
                  f"{lat['logreg']:.3f} ({row['ratio_logreg']:.2f})  {extra}", flush=True)
        if args.anchor and args.classes == "all":
            import os

            from drlcore.analysis.analyze import measure_anchor_values
            from drlcore.disentangle.transfer import anchor_names, anchor_report

            names = anchor_names(args.anchor)
            values = measure_anchor_values(ds, names, os.environ.get("DRL_CACHE_DIR"))
            cfg = TransferConfig(anchors=names)
            model, info = fine_tune(load_model(model_dir)[0], feats, cfg, values)
            codes = encode_means(model, feats)
            rep = anchor_report(codes, values, names, info["split"]["heldout"],
                                info["split"]["train"])
            lat = readout(codes, y, split)
            print(f"  anchored {args.anchor}: MLP {lat['mlp']:.3f} "
                  f"({lat['mlp'] / raw['mlp']:.2f}) logreg {lat['logreg']:.3f} "
                  f"({lat['logreg'] / raw['logreg']:.2f}); " + ", ".join(
                      f"{k}: axis {v['axis']} r_heldout {v['r_heldout']:.2f} (train "
                      f"{v['r_train']:.2f})" for k, v in rep.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
