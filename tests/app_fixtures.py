"""A small synthetic run directory in the layout the engine writes (drlcore.data.rundir).

Objects are drawn ellipses whose size, elongation and brightness are known, so latent dims and
morphology features are correlated by construction. The tables are hand-made (a 100k-object run
takes seconds) but follow what ``drl run`` writes: same files, column names and dtypes, JSON
structure and manifest layout. tests/test_app_fixtures.py runs the tiny real pipeline and checks
this folder against it, so the two cannot drift apart. Derived parts (axis names, the summary,
open-set scores) are computed with the engine's own pure functions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage.draw import ellipse

from drlcore.data import rundir
from drlcore.io import atomic_write_csv, atomic_write_json, atomic_write_parquet, fingerprint, sha256_bytes

CLASSES = ("lymphocyte", "neutrophil", "platelet")
MORPH = ("morph_area", "morph_eccentricity", "morph_intensity_mean", "morph_solidity")
FACTORS = ("size", "elongation", "brightness")
KNOWN = ("lymphocyte", "neutrophil")
MODEL_HASH = "feedbeef" * 8  # sha256 of the (fictional) weights
PARENT_HASH = "0123abcd" * 8
WEIGHTS_HASH = "ab12cd34ef567890"  # the backbone's, 16 hex digits like drlcore.embedding.backbones'
CREATED = "2026-11-28T04:00:00Z"
STRING_COLUMNS = ("path", "label", "split", "sha256", "mode", "note", "source")
IMAGE_COLUMNS = ("row", "path", "label", "split", "sha256", "width", "height", "mode", "note",
                 "source")


def _draw(size: float, elong: float, bright: float, rng: np.random.Generator, side: int = 64) -> bytes:
    img = np.full((side, side, 3), 235, np.uint8)
    r_major = 6 + 20 * size
    r_minor = max(3.0, r_major * (1 - 0.7 * elong))
    rr, cc = ellipse(side / 2, side / 2, r_minor, r_major, shape=img.shape[:2],
                     rotation=rng.uniform(0, np.pi))
    colour = np.array([120 + 100 * bright, 60 + 80 * bright, 160], np.uint8)
    img[rr, cc] = colour
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def make_run(root: Path, name: str = "demo", n: int = 120, n_dims: int = 6, seed: int = 0,
             thumbs: bool = True, with_umap: bool = True, thumb_layout: str = "shards") -> Path:
    """Write a complete analysed run folder ``root/name`` and return its path.

    ``thumb_layout``: ``"shards"`` as the engine writes thumbnails now (rundir.ThumbWriter), or
    ``"files"``, one ``thumbs/<sha256>.jpg`` per image, as runs written before the shards."""
    if thumb_layout not in ("shards", "files"):
        raise ValueError(f"thumb_layout is 'shards' or 'files', not {thumb_layout!r}")
    rng = np.random.default_rng(seed)
    run = Path(root) / name
    (run / rundir.THUMBS).mkdir(parents=True, exist_ok=True)
    (run / rundir.MODEL).mkdir(exist_ok=True)
    writer = rundir.ThumbWriter(run)
    labels = np.array(CLASSES)[np.arange(n) % len(CLASSES)]
    factors = rng.uniform(0, 1, size=(n, len(FACTORS)))
    factors[labels == "platelet", 0] *= 0.3  # platelets are small
    z = rng.normal(0, 0.15, size=(n, n_dims))
    z[:, :3] += (factors - 0.5) * 4
    shas, rows = [], []
    for i in range(n):
        jpeg = _draw(*factors[i], rng) if thumbs else f"{seed}-{i}".encode()
        sha = sha256_bytes(jpeg)
        if thumbs and thumb_layout == "files":
            rundir.thumb_path(run, sha).write_bytes(jpeg)
        elif thumbs:
            writer.add(sha, jpeg)
        shas.append(sha)
        rows.append(f"{labels[i]}/img_{i:04d}.jpg")
    writer.close()
    # images.parquet columns, then encode's, then analyze's, in the engine's order and dtypes.
    df = pd.DataFrame({
        "row": np.arange(n), "path": rows, "label": labels,
        "split": np.where(np.arange(n) % 5 == 0, "test", "train"), "sha256": shas,
        "width": 64, "height": 64, "mode": "RGB", "note": None, "source": [f"/nonexistent/{p}" for p in rows],
    }).astype({c: "string" for c in STRING_COLUMNS})
    for j in range(n_dims):
        df[rundir.latent_column(j)] = z[:, j]
    df["z_std_mean"] = rng.uniform(0.1, 0.5, n)
    df["recon_error"] = rng.gamma(2.0, 0.5, n)
    df["morph_area"] = np.pi * (6 + 20 * factors[:, 0]) ** 2 * (1 - 0.7 * factors[:, 1])
    df["morph_eccentricity"] = np.sqrt(1 - (1 - 0.7 * factors[:, 1]) ** 2)
    df["morph_intensity_mean"] = 120 + 100 * factors[:, 2] + rng.normal(0, 3, n)
    df["morph_solidity"] = rng.uniform(0.9, 1.0, n)
    df.loc[7, "morph_solidity"] = np.nan  # one failed measurement, as real runs have
    df["morph_ok"] = df["morph_solidity"].notna()
    df["morph_note"] = pd.Series(np.where(df["morph_ok"], None, "segmentation failed"), dtype=object)
    centred = z - z.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    df["pca_x"], df["pca_y"] = u[:, 0] * s[0], u[:, 1] * s[1]
    if with_umap:
        df["umap_x"] = df["pca_x"] + rng.normal(0, 0.1, n)
        df["umap_y"] = df["pca_y"] + rng.normal(0, 0.1, n)
    known = np.isin(labels, KNOWN)
    mu, sd = z[known].mean(0), z[known].std(0)
    zs = (z - mu) / sd
    df["anomaly_knn"] = np.abs(zs).max(1)
    df["anomaly_mahalanobis"] = np.sqrt((zs ** 2).sum(1))
    df["anomaly_recon"] = df["recon_error"]
    df["anomaly_score"] = df["anomaly_mahalanobis"]
    df["anomaly_known"] = known
    for j in range(n_dims):
        df[f"z_score_{j}"] = zs[:, j]
    atomic_write_parquet(run / rundir.IMAGES, df[list(IMAGE_COLUMNS)])
    atomic_write_csv(run / rundir.SKIPPED, pd.DataFrame({"path": ["broken.jpg"], "reason": ["truncated JPEG"]}))
    features = rng.normal(size=(n, 8)).astype(np.float32)
    np.save(run / rundir.FEATURES, features)

    corr_rows = []
    for j in range(n_dims):
        for feat in MORPH:
            x, y = df[rundir.latent_column(j)].to_numpy(float), df[feat].to_numpy(float)
            ok = np.isfinite(y)
            r = float(np.corrcoef(x[ok], y[ok])[0, 1])
            rho = float(pd.Series(x[ok]).rank().corr(pd.Series(y[ok]).rank()))
            for method, value in (("pearson", r), ("spearman", rho), ("mi", abs(r) * 0.8)):
                corr_rows.append({"dim": j, "dim_name": _dim_name(j), "feature": feat, "method": method,
                                  "value": value, "ci_low": max(-1.0, value - 0.1), "ci_high": min(1.0, value + 0.1),
                                  "p_value": 0.001 if abs(value) > 0.3 else 0.5,
                                  "q_value": 0.002 if abs(value) > 0.3 else 0.6, "n": int(ok.sum())})
    corr = pd.DataFrame(corr_rows)
    atomic_write_parquet(run / rundir.OBJECTS, df)

    source_names = [_dim_name(j) for j in range(n_dims)]
    dim_factor = [*FACTORS, *([None] * (n_dims - 3))]
    inactive = list(range(3, n_dims))
    analysis = _analysis(df, corr, labels, known, source_names, dim_factor, inactive, seed,
                         with_umap, features)
    corr["dim_name"] = [analysis["dim_names"][d] for d in corr["dim"]]
    atomic_write_parquet(run / rundir.CORRELATIONS, corr)
    atomic_write_json(run / rundir.ANALYSIS, analysis)

    importance = np.zeros((n_dims, len(FACTORS)))
    importance[:3, :3] = np.eye(3) * 0.8 + 0.05
    backbone = {"feature_dim": 8, "name": "test-tiny", "timm_name": "test_vit",
                "weights_hash": WEIGHTS_HASH}
    atomic_write_json(run / rundir.MODEL / rundir.MODEL_CONFIG, {
        "schema_version": 1,
        "architecture": {"activation": "relu", "dropout": 0.0, "hidden_dims": [16], "input_dim": 8,
                         "latent_dim": n_dims},
        "backbone": backbone, "dim_names": source_names, "dim_factor": dim_factor,
        "inactive_dims": inactive, "extra": {"anchored": [False] * n_dims},
        "feature_standardisation": "per-feature mean/std fitted on the training features",
        "provenance": {"created": CREATED, "drlcore": "0.1.0", "parent_model_hash": PARENT_HASH,
                       "torch": "2.0"},
        "training": {"method": "ada-gvae", "source": "texture-dsprites", "epochs": 2},
        "weights_sha256": MODEL_HASH,
    })
    evaluation = {"mig": 0.41, "dci": {"disentanglement": 0.72, "completeness": 0.68, "informativeness": 0.9,
                                       "importance": importance.tolist()},
                  "omes": {"omes": 0.64, "per_factor": [0.7, 0.6, 0.62]}}
    atomic_write_json(run / rundir.MODEL / rundir.MODEL_METRICS, {
        "method": "ada-gvae", "model_hash": MODEL_HASH,
        "headline": {"mig": 0.41, "dci_disentanglement": 0.72, "dci_completeness": 0.68,
                     "dci_informativeness": 0.9, "omes": 0.64, "active_dims": 3},
        "evaluation": evaluation, "data": {"factor_names": list(FACTORS)},
    })
    (run / rundir.MODEL / rundir.MODEL_WEIGHTS).write_bytes(b"")
    atomic_write_json(run / rundir.MODEL / rundir.MODEL_STAGE_KEY,
                      {"key": fingerprint(["fixture-model", MODEL_HASH])})
    atomic_write_json(run / rundir.MANIFEST, _manifest(run, n, n_dims, shas, source_names,
                                                       dim_factor, inactive, backbone,
                                                       analysis["key"]))
    return run


def _analysis(df, corr, labels, known, source_names, dim_factor, inactive, seed, with_umap,
              features) -> dict:
    """analysis.json as drlcore.analysis.analyze writes it; names, summary and open-set scores come from
    the engine's own pure functions."""
    import dataclasses

    from drlcore.analysis import anomaly, axis_card
    from drlcore.analysis.analyze import AnalyzeConfig, _summary
    from drlcore.analysis.naming import name_axes

    n = len(df)
    axes = name_axes(corr, source_names, inactive=inactive, source_factors=dim_factor)
    counts = {c: int((labels == c).sum()) for c in CLASSES}

    def scores(balanced: float) -> dict:
        k = len(CLASSES)
        return {"accuracy": balanced, "accuracy_std": 0.02, "balanced_accuracy": balanced,
                "confusion_matrix": [[counts[c] if a == b else 0 for b in range(k)]
                                     for a, c in enumerate(CLASSES)],
                "fit_seconds": 0.1, "labels": list(CLASSES),
                "folds": [{"accuracy": balanced, "balanced_accuracy": balanced}] * 5}

    def classification(n_features: int, balanced: float, models=("gbt", "mlp")) -> dict:
        return {"chance": {"accuracy": 1 / len(CLASSES), "balanced_accuracy": 1 / len(CLASSES)},
                "class_counts": counts,
                "dropped": {"non_finite": 0, "outside_split": 0, "rare_class": 0, "unlabelled": 0},
                "labels": list(CLASSES),
                "models": {m: scores(balanced - (0.05 if m == "gbt" else 0)) for m in models},
                "n_features": n_features, "n_samples": n, "n_splits": 5, "notes": [],
                "protocol": "stratified-kfold", "reduction": None}

    n_dims = len(source_names)
    # As analyze: both models on the latents, the MLP on the raw features (raw_feature_models).
    classes = {"latent": classification(n_dims, 0.9),
               "features": classification(8, 0.85, models=("mlp",))}
    is_unknown = ~known
    per_class = {c: {"aupr": 0.7, "auroc": 0.8, "n_known": n - counts[c], "n_unknown": counts[c],
                     "note": None} for c in CLASSES}
    anomaly_summary = {
        "known_classes": list(KNOWN), "n_known": int(known.sum()),
        "knn": {"k": 10, "method": "exact", "index": "scikit-learn"},
        "known_vs_rest": {name: anomaly.open_set_evaluation(df[name].to_numpy(float), is_unknown)
                          for name in ("anomaly_knn", "anomaly_mahalanobis", "anomaly_score")},
        "holdout_each_class": {"mean_aupr": 0.7, "mean_auroc": 0.8, "per_class": per_class,
                               "scorer": "KNNScorer", "worst_auroc": 0.8,
                               "worst_class": CLASSES[-1]},
    }
    projections = {"pca": {"trustworthiness": 0.88}}
    if with_umap:
        projections["umap"] = {"trustworthiness": 0.93}
    notes = ["Synthetic fixture run: numbers are illustrative."]
    config = dataclasses.asdict(AnalyzeConfig(known_classes=KNOWN, umap=with_umap, seed=seed))
    return {
        "schema_version": 1, "key": fingerprint(["fixture-analysis", n, seed]),
        "config": config, "n_objects": n, "dim_names": [a["name"] for a in axes],
        "source_dim_names": list(source_names), "axes": axes,
        "axis_card": {"rows": "all images (the transfer held none out)",
                      "axes": axis_card.axis_card(df[[rundir.latent_column(j) for j in range(
                          n_dims)]].to_numpy(float), features, df, axes,
                          rows_label="all images (the transfer held none out)"),
                      "choice": None, "statistic": "spearman", "baselines": "fixture",
                      "seconds": 0.1},
        "classification": classes,
        "anomaly": anomaly_summary, "projections": projections, "notes": notes,
        "summary": _summary(classes, anomaly_summary, projections, corr, axes, notes),
        "seconds": 1.0,
    }


def _manifest(run, n, n_dims, shas, source_names, dim_factor, inactive, backbone, analysis_key):
    """manifest.json as `drl run` writes it (schema_version 2, one entry per stage)."""
    data_fp = fingerprint(shas)
    features = {
        "backbone": "test-tiny", "timm_name": "test_vit", "weights_hash": WEIGHTS_HASH,
        "weights_source": "random-init", "dtype": "fp32",
        "precision": {"requested": "auto", "used": "fp32",
                      "reason": "auto: no bf16 agreement recorded for this backbone, so fp32"},
        "engine": {"requested": "auto", "used": "torch",
                   "reason": "auto: a random-init backbone stays on torch"},
        "feature_dim": 8, "pooling": "cls", "notes": [],
        "preprocessing": {"input_size": 64, "intensity_range": None, "interpolation": "bicubic",
                          "mean": [0.5] * 3, "pad_to_square": True, "std": [0.5] * 3},
        "preprocess": {"longest_side": {"max": 64, "median": 64.0, "min": 64, "p10": 64.0,
                                        "p90": 64.0},
                       "mode": "pad", "n_sized": n,
                       "reason": "auto: crop sizes are similar (p90/p10 of the longest side 1.00 "
                                 "< 2), so each crop is padded to a square",
                       "requested": "auto",
                       "rule": {"fired": False, "statistic": "p90 / p10 of the longest side",
                                "threshold": 2.0, "value": 1.0}},
        "data": {"root": "/data/blood", "layout": "class-folders", "fingerprint": data_fp,
                 "reading": "per-file", "notes": []},
        "counts": {"accepted": n, "skipped": 1, "labels": len(CLASSES)},
        "cache": {"key": fingerprint(["fixture-features"]), "root": "/cache/features", "version": 1},
        "versions": {"drlcore": "0.1.0", "python": "3.11", "timm": "1.0", "torch": "2.0"},
        "created": CREATED,
    }
    model = {"backbone": backbone, "dim_factor": dim_factor, "dim_names": source_names,
             "inactive_dims": inactive, "latent_dim": n_dims, "method": "transfer",
             "model_dir": str(run / rundir.MODEL), "model_hash": MODEL_HASH,
             "parent_model_hash": PARENT_HASH}
    encode = {"backbone": "test-tiny",
              "columns": [*(rundir.latent_column(j) for j in range(n_dims)), "z_std_mean",
                          "recon_error"],
              "created": CREATED, "data_fingerprint": data_fp, "features_sha256": "f" * 64,
              "model_hash": MODEL_HASH, "n_objects": n, "version": 1, "weights_hash": WEIGHTS_HASH}
    return {"schema_version": rundir.SCHEMA_VERSION, "stages": {
        "features": features, "model": model, "encode": encode,
        "pipeline": {"notes": ["Fixture note from the pipeline."], "transferred": True, "version": 3,
                     "warnings": [],
                     "axes": {"anchors": {"mode": "none", "anchors": []},
                              "free": {"mode": "given", "n_free": n_dims},
                              "latent_dim": n_dims}},
        "analyze": {"key": analysis_key, "version": 2},
    }}


def _dim_name(j: int) -> str:
    return f"z{j}: {FACTORS[j]}" if j < len(FACTORS) else f"z{j}"


def make_zip(path: Path, n_per_class: int = 4) -> Path:
    """A zip of class folders with small drawn images, for the upload path."""
    import zipfile

    rng = np.random.default_rng(1)
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("round", "long"):
            for i in range(n_per_class):
                elong = 0.1 if cls == "round" else 0.8
                zf.writestr(f"{cls}/{cls}_{i}.jpg", _draw(rng.uniform(0.3, 0.9), elong, rng.uniform(), rng))
    return path


def make_source_model(path: Path, latent_dim: int = 4) -> Path:
    """A tiny random-init source model on the ``test-tiny`` backbone (plumbing, not quality)."""
    import torch

    from drlcore.disentangle.artifacts import save_model
    from drlcore.embedding.backbones import load_backbone
    from drlcore.disentangle.vae import FeatureVAE, VAEConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=backbone.spec.feature_dim, latent_dim=latent_dim, hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, backbone.spec.feature_dim)))
    save_model(path, model, {
        "backbone": {"name": "test-tiny", "timm_name": backbone.spec.timm_name,
                     "weights_hash": backbone.weights_hash, "feature_dim": backbone.spec.feature_dim},
        "dim_names": [f"z{j}: f{j}" for j in range(latent_dim)]})
    return Path(path)
