"""``drl encode``: a model and a folder of features -> one row of latents per image.

``objects.parquet`` gets the columns of ``images.parquet`` (path, label, ...) followed by
``z_mean_0 .. z_mean_{J-1}`` (posterior means: the representation), ``z_std_mean`` (the mean
posterior standard deviation: how unsure the encoder is about this image) and ``recon_error``
(mean squared reconstruction error in the model's standardised feature space, from the
posterior mean: how unlike the model's training data the image is). The run's ``manifest.json``
gets ``model`` and ``encode`` entries tying the table to the model hash, the backbone and the data.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import DrlError
from .io import atomic_write_parquet, read_json, sha256_file, update_json
from .progress import NullReporter, Reporter
from .vae import FeatureVAE

__all__ = ["encode_features", "encode_run", "load_features_dir", "ENCODE_VERSION"]

ENCODE_VERSION = 1


@torch.no_grad()
def encode_features(model: FeatureVAE, features: np.ndarray, batch_size: int = 1024,
                    reporter: Reporter | None = None) -> dict[str, np.ndarray]:
    """Encode raw backbone features (n, D): ``z_mean`` (n, J), ``z_std`` (n, J), ``recon_error`` (n,)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != model.config.input_dim:
        raise DrlError(f"the model expects features of shape (n, {model.config.input_dim}), got "
                       f"{features.shape}; were they made with another backbone?")
    n = features.shape[0]
    z_mean = np.empty((n, model.config.latent_dim), dtype=np.float32)
    z_std = np.empty_like(z_mean)
    recon_error = np.empty(n, dtype=np.float32)
    model.eval()
    with (reporter or NullReporter()).stage("encoding", total=n, unit="img") as bar:
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.array(features[start:start + batch_size], dtype=np.float32))
            if not torch.isfinite(x).all():
                raise DrlError(f"features rows {start}..{start + len(x) - 1} contain NaN or "
                               "infinity; re-extract the features")
            mu, logvar = model.encode(x)
            stop = start + len(x)
            z_mean[start:stop] = mu.numpy()
            z_std[start:stop] = (0.5 * logvar).exp().numpy()
            recon_error[start:stop] = (model.decode(mu) - model.standardise(x)).pow(2).mean(1).numpy()
            bar.update(len(x))
    return {"z_mean": z_mean, "z_std": z_std, "recon_error": recon_error}


def _features_entry(manifest: dict) -> dict:
    """The features stage's entry, whether the manifest is the stage's own or a merged run one."""
    entry = manifest.get("features") if isinstance(manifest.get("features"), dict) else manifest
    return entry if isinstance(entry, dict) else {}


def load_features_dir(features_dir: str | Path) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """``features.npy``, ``images.parquet`` and the features stage's manifest entry of a folder."""
    features_dir = Path(features_dir)
    paths = {name: features_dir / name
             for name in ("features.npy", "images.parquet", "manifest.json")}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise DrlError(f"{features_dir} lacks {', '.join(missing)}: it is not a folder written by "
                       "`drl features` (or the feature extraction did not finish)")
    try:
        manifest = read_json(paths["manifest.json"])
        features = np.load(paths["features.npy"], mmap_mode="r", allow_pickle=False)
        table = pd.read_parquet(paths["images.parquet"])
    except Exception as exc:  # damaged files: the user should re-extract, not read a traceback
        raise DrlError(f"the features in {features_dir} cannot be read ({exc}); re-run "
                       "`drl features`") from None
    entry = _features_entry(manifest)
    if "backbone" not in entry:
        raise DrlError(f"{paths['manifest.json']} does not say which backbone made the features; "
                       "re-run `drl features`")
    if features.ndim != 2 or features.shape[0] != len(table):
        raise DrlError(f"{features_dir}: features.npy has shape {features.shape} but "
                       f"images.parquet has {len(table)} rows; re-run `drl features`")
    return features, table, entry


def encode_run(model_dir: str | Path, features_dir: str | Path, out_dir: str | Path,
               reporter: Reporter | None = None, batch_size: int = 1024) -> Path:
    """Encode a features folder with a model; write ``out_dir/objects.parquet``; return its path."""
    from .artifacts import load_model

    reporter = reporter or NullReporter()
    features, table, fentry = load_features_dir(features_dir)
    model, meta = load_model(model_dir, expected_backbone=fentry.get("backbone"),
                             expected_weights_hash=fentry.get("weights_hash"),
                             expected_feature_dim=features.shape[1])
    codes = encode_features(model, features, batch_size=batch_size, reporter=reporter)

    latent_dim = model.config.latent_dim
    objects = table.reset_index(drop=True).copy()
    clash = [c for c in objects.columns if c.startswith("z_mean_")
             or c in ("z_std_mean", "recon_error")]
    objects = objects.drop(columns=clash)
    latents = pd.DataFrame(codes["z_mean"].astype(np.float64),
                           columns=[f"z_mean_{j}" for j in range(latent_dim)])
    objects = pd.concat([objects, latents], axis=1)
    objects["z_std_mean"] = codes["z_std"].mean(axis=1).astype(np.float64)
    objects["recon_error"] = codes["recon_error"].astype(np.float64)

    out_dir = Path(out_dir)
    out_path = out_dir / "objects.parquet"
    atomic_write_parquet(out_path, objects)

    model_entry = {
        "model_hash": meta["model_hash"],
        "parent_model_hash": meta.get("provenance", {}).get("parent_model_hash"),
        "model_dir": str(Path(model_dir).resolve()),
        "backbone": meta["backbone"],
        "latent_dim": latent_dim,
        "dim_names": meta["dim_names"],
        "dim_factor": meta["dim_factor"],
        "inactive_dims": meta["inactive_dims"],
        "method": meta.get("training", {}).get("method"),
    }
    encode_entry = {
        "stage": "encode",
        "version": ENCODE_VERSION,
        "model_hash": meta["model_hash"],
        "backbone": meta["backbone"]["name"],
        "weights_hash": meta["backbone"]["weights_hash"],
        "data_fingerprint": (fentry.get("data") or {}).get("fingerprint"),
        "features_sha256": sha256_file(Path(features_dir) / "features.npy"),
        "n_objects": int(len(objects)),
        "columns": [f"z_mean_{j}" for j in range(latent_dim)] + ["z_std_mean", "recon_error"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    update_json(out_dir / "manifest.json", {"model": model_entry, "encode": encode_entry})
    reporter.message(f"encoded {len(objects)} images with model {meta['model_hash'][:12]} -> "
                     f"{out_path}")
    return out_path
