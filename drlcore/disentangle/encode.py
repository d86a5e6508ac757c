"""``drl encode``: a model and a folder of features -> one row of latents per image.

``objects.parquet`` gets the columns of ``images.parquet`` (path, label, ...) followed by
``z_mean_0 .. z_mean_{J-1}`` (posterior means: the representation), ``z_std_mean`` (the mean
posterior standard deviation: how unsure the encoder is about this image) and ``recon_error``
(mean squared reconstruction error in the model's standardised feature space, from the
posterior mean: how unlike the model's training data the image is). The run's manifest
(:mod:`drlcore.data.rundir`) gets ``model`` and ``encode`` entries tying the table to the model hash, the backbone and the data.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from drlcore.errors import DrlError
from drlcore.data import rundir
from drlcore.io import sha256_file
from drlcore.progress import NullReporter, Reporter
from drlcore.disentangle.vae import FeatureVAE

__all__ = ["encode_features", "encode_run", "ENCODE_VERSION"]

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


def encode_run(model_dir: str | Path, features_dir: str | Path, out_dir: str | Path,
               reporter: Reporter | None = None, batch_size: int = 1024) -> Path:
    """Encode a features folder with a model; write ``out_dir/objects.parquet``; return its path."""
    from drlcore.disentangle.artifacts import load_model

    reporter = reporter or NullReporter()
    features, table, fentry = rundir.load_features_dir(features_dir)
    model, meta = load_model(model_dir, expected_backbone=fentry.get("backbone"),
                             expected_weights_hash=fentry.get("weights_hash"),
                             expected_feature_dim=features.shape[1])
    codes = encode_features(model, features, batch_size=batch_size, reporter=reporter)

    latent_dim = model.config.latent_dim
    objects = table.reset_index(drop=True).copy()
    zcols = [rundir.latent_column(j) for j in range(latent_dim)]
    clash = [*rundir.latent_columns(objects.columns),
             *(c for c in ("z_std_mean", "recon_error") if c in objects.columns)]
    objects = objects.drop(columns=clash)
    latents = pd.DataFrame(codes["z_mean"].astype(np.float64), columns=zcols)
    objects = pd.concat([objects, latents], axis=1)
    objects["z_std_mean"] = codes["z_std"].mean(axis=1).astype(np.float64)
    objects["recon_error"] = codes["recon_error"].astype(np.float64)

    out_dir = Path(out_dir)
    out_path = rundir.write_objects(out_dir, objects)

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
        "version": ENCODE_VERSION,
        "model_hash": meta["model_hash"],
        "backbone": meta["backbone"]["name"],
        "weights_hash": meta["backbone"]["weights_hash"],
        "data_fingerprint": (fentry.get("data") or {}).get("fingerprint"),
        "features_sha256": sha256_file(Path(features_dir) / rundir.FEATURES),
        "n_objects": int(len(objects)),
        "columns": [*zcols, "z_std_mean", "recon_error"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rundir.record_stage(out_dir, "model", model_entry)
    rundir.record_stage(out_dir, "encode", encode_entry)
    rundir.record_files(out_dir, "encode", [rundir.OBJECTS])
    reporter.message(f"encoded {len(objects)} images with model {meta['model_hash'][:12]} -> "
                     f"{out_path}")
    return out_path
