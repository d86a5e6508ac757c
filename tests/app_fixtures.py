"""A small synthetic run directory in the schema the explorer reads (contract: "Run directory").

Objects are drawn ellipses whose size, elongation and brightness are known, so latent dims and
morphology features are correlated by construction. The lead may later swap this for a tiny
real pipeline run; the app tests only rely on the schema.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage.draw import ellipse

from drlcore.io import atomic_write_csv, atomic_write_json, atomic_write_parquet, fingerprint, sha256_bytes

CLASSES = ("lymphocyte", "neutrophil", "platelet")
MORPH = ("morph_area", "morph_eccentricity", "morph_mean_intensity", "morph_solidity")
FACTORS = ("size", "elongation", "brightness")


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
             thumbs: bool = True, with_umap: bool = True) -> Path:
    """Write a complete analysed run folder ``root/name`` and return its path."""
    rng = np.random.default_rng(seed)
    run = Path(root) / name
    (run / "thumbs").mkdir(parents=True, exist_ok=True)
    (run / "model").mkdir(exist_ok=True)
    labels = np.array(CLASSES)[np.arange(n) % len(CLASSES)]
    factors = rng.uniform(0, 1, size=(n, len(FACTORS)))
    factors[labels == "platelet", 0] *= 0.3  # platelets are small
    z = rng.normal(0, 0.15, size=(n, n_dims))
    z[:, :3] += (factors - 0.5) * 4
    shas, rows = [], []
    for i in range(n):
        jpeg = _draw(*factors[i], rng) if thumbs else f"{seed}-{i}".encode()
        sha = sha256_bytes(jpeg)
        if thumbs:
            (run / "thumbs" / f"{sha}.jpg").write_bytes(jpeg)
        shas.append(sha)
        rows.append(f"{labels[i]}/img_{i:04d}.jpg")
    df = pd.DataFrame({
        "row": np.arange(n), "path": rows, "label": labels,
        "split": np.where(np.arange(n) % 5 == 0, "test", "train"), "sha256": shas,
        "width": 64, "height": 64, "mode": "RGB", "note": None, "source": [f"/nonexistent/{p}" for p in rows],
    })
    for j in range(n_dims):
        df[f"z_mean_{j}"] = z[:, j].astype(np.float32)
    df["z_std_mean"] = rng.uniform(0.1, 0.5, n).astype(np.float32)
    df["recon_error"] = rng.gamma(2.0, 0.5, n).astype(np.float32)
    df["morph_area"] = np.pi * (6 + 20 * factors[:, 0]) ** 2 * (1 - 0.7 * factors[:, 1])
    df["morph_eccentricity"] = np.sqrt(1 - (1 - 0.7 * factors[:, 1]) ** 2)
    df["morph_mean_intensity"] = 120 + 100 * factors[:, 2] + rng.normal(0, 3, n)
    df["morph_solidity"] = rng.uniform(0.9, 1.0, n)
    df.loc[7, "morph_solidity"] = np.nan  # one failed measurement, as real runs have
    df["morph_ok"] = df["morph_solidity"].notna()
    df["morph_note"] = np.where(df["morph_ok"], None, "segmentation failed")
    centred = z - z.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    df["pca_x"], df["pca_y"] = u[:, 0] * s[0], u[:, 1] * s[1]
    if with_umap:
        df["umap_x"] = df["pca_x"] + rng.normal(0, 0.1, n)
        df["umap_y"] = df["pca_y"] + rng.normal(0, 0.1, n)
    known = labels != "platelet"
    mu, sd = z[known].mean(0), z[known].std(0)
    zs = (z - mu) / sd
    for j in range(n_dims):
        df[f"z_score_{j}"] = zs[:, j].astype(np.float32)
    df["anomaly_knn"] = np.abs(zs).max(1)
    df["anomaly_mahalanobis"] = np.sqrt((zs ** 2).sum(1))
    df["anomaly_recon"] = df["recon_error"]
    df["anomaly_score"] = df["anomaly_mahalanobis"]
    atomic_write_parquet(run / "images.parquet", df[["row", "path", "label", "split", "sha256", "width",
                                                    "height", "mode", "note", "source"]])
    atomic_write_csv(run / "skipped.csv", pd.DataFrame({"path": ["broken.jpg"], "reason": ["truncated JPEG"]}))
    np.save(run / "features.npy", rng.normal(size=(n, 8)).astype(np.float32))

    corr_rows = []
    for j in range(n_dims):
        for feat in MORPH:
            x, y = df[f"z_mean_{j}"].to_numpy(float), df[feat].to_numpy(float)
            ok = np.isfinite(y)
            r = float(np.corrcoef(x[ok], y[ok])[0, 1])
            rho = float(pd.Series(x[ok]).rank().corr(pd.Series(y[ok]).rank()))
            for method, value in (("pearson", r), ("spearman", rho), ("mi", abs(r) * 0.8)):
                corr_rows.append({"dim": j, "dim_name": _dim_name(j), "feature": feat, "method": method,
                                  "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1,
                                  "p_value": 0.001 if abs(value) > 0.3 else 0.5,
                                  "q_value": 0.002 if abs(value) > 0.3 else 0.6})
    atomic_write_parquet(run / "correlations.parquet", pd.DataFrame(corr_rows))

    df["anomaly_known"] = known
    atomic_write_parquet(run / "objects.parquet", df)
    atomic_write_json(run / "analysis.json", {
        "schema_version": 1, "n_objects": n, "dim_names": [_dim_name(j) for j in range(n_dims)],
        "config": {"known_classes": ["lymphocyte", "neutrophil"], "umap": with_umap, "seed": seed},
        "classification": {"latent": {"logistic": {"balanced_accuracy": 0.9}}},
        "anomaly": {"known_classes": ["lymphocyte", "neutrophil"], "n_known": int(known.sum()),
                    "known_vs_rest": {"anomaly_score": {"auroc": 0.88, "aupr": 0.7, "n_known": int(known.sum()),
                                                        "n_unknown": int((~known).sum()), "note": None}}},
        "projections": {"umap": {"trustworthiness": 0.93}, "pca": {"trustworthiness": 0.88}},
        "notes": ["Synthetic fixture run: numbers are illustrative."],
        "summary": {"headline": ["classification (logistic, latent): balanced accuracy 0.900"], "notes": []},
    })
    importance = np.zeros((n_dims, len(FACTORS)))
    importance[:3, :3] = np.eye(3) * 0.8 + 0.05
    atomic_write_json(run / "model" / "config.json", {
        "schema_version": 1, "architecture": {"input_dim": 8, "latent_dim": n_dims, "hidden_dims": [16]},
        "backbone": {"name": "test-tiny", "timm_name": "test_vit", "weights_hash": "ab12cd34"},
        "dim_names": [_dim_name(j) for j in range(n_dims)],
        "dim_factor": [*FACTORS, *([None] * (n_dims - 3))],
        "inactive_dims": list(range(3, n_dims)),
        "training": {"source": "texture-dsprites", "epochs": 2},
    })
    evaluation = {"mig": 0.41, "dci": {"disentanglement": 0.72, "completeness": 0.68, "informativeness": 0.9,
                                       "importance": importance.tolist()},
                  "omes": {"omes": 0.64, "per_factor": [0.7, 0.6, 0.62]}}
    atomic_write_json(run / "model" / "metrics.json", {
        "method": "ada-gvae", "model_hash": "feedbeef" * 8,
        "headline": {"mig": 0.41, "dci_disentanglement": 0.72, "dci_completeness": 0.68,
                     "dci_informativeness": 0.9, "omes": 0.64, "active_dims": 3},
        "evaluation": evaluation, "data": {"factor_names": list(FACTORS)},
    })
    (run / "model" / "model.safetensors").write_bytes(b"")
    data_fp = fingerprint(shas)
    # As `drl run` writes it: the features manifest at the top level, later stages beside it.
    atomic_write_json(run / "manifest.json", {
        "stage": "features", "backbone": "test-tiny", "timm_name": "test_vit",
        "weights_hash": "ab12cd34", "weights_source": "random-init", "dtype": "fp32",
        "data": {"root": "/data/blood", "layout": "class-folders", "fingerprint": data_fp},
        "counts": {"accepted": n, "skipped": 1, "labels": len(CLASSES)},
        "created": "2026-11-28T04:00:00Z",
        "model": {"model_hash": "feedbeef" * 4, "parent_model_hash": "0123abcd" * 8,
                  "backbone": {"name": "test-tiny"}},
        "pipeline": {"notes": ["Fixture note from the pipeline."], "transferred": True, "version": 1},
        "encode": {"stage": "encode"},
        "analyze": {"stage": "analyze"},
    })
    return run


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

    from drlcore.artifacts import save_model
    from drlcore.backbones import load_backbone
    from drlcore.vae import FeatureVAE, VAEConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=backbone.spec.feature_dim, latent_dim=latent_dim, hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, backbone.spec.feature_dim)))
    save_model(path, model, {
        "backbone": {"name": "test-tiny", "timm_name": backbone.spec.timm_name,
                     "weights_hash": backbone.weights_hash, "feature_dim": backbone.spec.feature_dim},
        "dim_names": [f"z{j}: f{j}" for j in range(latent_dim)]})
    return Path(path)
