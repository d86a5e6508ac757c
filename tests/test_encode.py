"""The encode stage: latents per image, the run manifest, and refusing the wrong backbone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from drlcore.disentangle.artifacts import save_model
from drlcore.data import rundir
from drlcore.disentangle.encode import encode_features, encode_run
from drlcore.errors import DrlError
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

D, J = 16, 4
BACKBONE = {"name": "test-tiny", "timm_name": "test_vit", "weights_hash": "ab" * 32,
            "feature_dim": D}


@pytest.fixture
def model_dir(tmp_path, rng):
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=D, latent_dim=J, hidden_dims=(8,)))
    model.fit_standardisation(rng.normal(size=(40, D)))
    path = tmp_path / "model"
    save_model(path, model, {"backbone": BACKBONE,
                             "dim_names": [f"z{j}: f{j}" for j in range(J)]})
    return path


def _features_dir(path, features, backbone="test-tiny", weights_hash="ab" * 32, v1=False):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "features.npy", features)
    n = len(features)
    pd.DataFrame({"row": np.arange(n), "path": [f"a/{i}.png" for i in range(n)],
                  "label": ["a"] * n, "sha256": [f"{i:064x}" for i in range(n)]}
                 ).to_parquet(path / "images.parquet")
    entry = {"backbone": backbone, "weights_hash": weights_hash,
             "data": {"fingerprint": "d" * 32}}
    if v1:  # as the features stage wrote it before the manifest had a schema_version
        (path / "manifest.json").write_text(json.dumps({"stage": "features", **entry}))
    else:
        rundir.record_stage(path, "features", entry)
        rundir.record_stage(path, "analyze", {"key": "x"})
    return path


def test_encode_features_matches_the_model(model_dir, rng):
    from drlcore.disentangle.artifacts import load_model

    model, _ = load_model(model_dir)
    x = rng.normal(size=(10, D)).astype(np.float32)
    out = encode_features(model, x, batch_size=3)  # batches must not change the answer
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(x))
        err = (model.reconstruct(torch.from_numpy(x)) - model.standardise(torch.from_numpy(x)))
    np.testing.assert_allclose(out["z_mean"], mu.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["z_std"], (0.5 * logvar).exp().numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["recon_error"], err.pow(2).mean(1).numpy(), rtol=1e-5)
    assert out["z_mean"].shape == (10, J) and out["recon_error"].shape == (10,)
    with pytest.raises(DrlError, match="another backbone"):
        encode_features(model, x[:, :5])


@pytest.mark.parametrize("v1", [False, True])
def test_encode_run_writes_objects_and_merges_the_manifest(model_dir, tmp_path, rng, v1):
    run = _features_dir(tmp_path / "run", rng.normal(size=(7, D)).astype(np.float32), v1=v1)
    path = encode_run(model_dir, run, run)
    assert path == run / "objects.parquet"
    objects = pd.read_parquet(path)
    assert list(objects.columns) == ["row", "path", "label", "sha256",
                                     *[f"z_mean_{j}" for j in range(J)], "z_std_mean",
                                     "recon_error"]
    assert len(objects) == 7 and objects["path"].iloc[3] == "a/3.png"
    assert np.isfinite(objects.filter(like="z_").to_numpy()).all()
    assert (objects["z_std_mean"] > 0).all() and (objects["recon_error"] >= 0).all()

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["schema_version"] == 2  # an older layout is upgraded on write
    stages = manifest["stages"]
    assert stages["encode"]["model_hash"] == stages["model"]["model_hash"]
    assert stages["encode"]["data_fingerprint"] == "d" * 32
    assert stages["encode"]["backbone"] == "test-tiny"
    assert stages["model"]["dim_names"] == [f"z{j}: f{j}" for j in range(J)]
    # What was there before is kept.
    assert stages["features"]["backbone"] == "test-tiny"
    if not v1:
        assert stages["analyze"] == {"key": "x"}

    # Re-encoding replaces the latent columns instead of duplicating them.
    encode_run(model_dir, run, run)
    assert list(pd.read_parquet(path).columns) == list(objects.columns)


def test_encode_run_refuses_a_model_of_another_backbone(model_dir, tmp_path, rng):
    feats = rng.normal(size=(5, D)).astype(np.float32)
    wrong = _features_dir(tmp_path / "wrong", feats, backbone="effnet-lite0")
    with pytest.raises(DrlError, match="effnet-lite0"):
        encode_run(model_dir, wrong, wrong)
    other_weights = _features_dir(tmp_path / "w", feats, weights_hash="cd" * 32)
    with pytest.raises(DrlError, match="other weights"):
        encode_run(model_dir, other_weights, other_weights)
    assert not (wrong / "objects.parquet").exists()


def test_incomplete_features_folder_is_refused(tmp_path, rng):
    run = _features_dir(tmp_path / "run", rng.normal(size=(5, D)).astype(np.float32))
    (run / "images.parquet").unlink()
    with pytest.raises(DrlError, match="lacks images.parquet"):
        rundir.load_features_dir(run)
    run2 = _features_dir(tmp_path / "run2", rng.normal(size=(5, D)).astype(np.float32))
    pd.DataFrame({"row": [0, 1]}).to_parquet(run2 / "images.parquet")
    with pytest.raises(DrlError, match="2 rows"):
        rundir.load_features_dir(run2)
