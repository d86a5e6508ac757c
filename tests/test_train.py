"""Training on feature arrays (synthetic factors), transfer, and the full source pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from drlcore.artifacts import load_model, read_metrics, save_model
from drlcore.errors import DrlError
from drlcore.metrics import compute_mig
from drlcore.source import SourceTrainConfig
from drlcore.train import (TransferConfig, encode_means, train_unsupervised, train_weakly,
                           transfer)

N_FACTORS, FEATURE_DIM, LEVELS = 4, 24, 10


def _toy_source(n_pairs: int, seed: int = 0):
    """Features = orthogonal mixing of independent factors + a mild nonlinearity + noise.

    Weak pairs change exactly one factor. The mixing hides the factor axes: an unsupervised model
    has no reason to align its latents with them (the isotropic prior is rotation-invariant),
    while the pairs tell a weakly supervised one which directions change together.
    """
    rng = np.random.default_rng(seed)
    mixing = np.linalg.qr(rng.normal(size=(FEATURE_DIM, FEATURE_DIM)))[0][:, :N_FACTORS] * 3

    def features(f):
        lin = ((f / (LEVELS - 1) - 0.5) * 2) @ mixing.T
        return (lin + 0.3 * np.tanh(lin) + 0.01 * rng.normal(size=lin.shape)).astype(np.float32)

    f1 = rng.integers(0, LEVELS, size=(n_pairs, N_FACTORS))
    f2 = f1.copy()
    rows, which = np.arange(n_pairs), rng.integers(0, N_FACTORS, size=n_pairs)
    f2[rows, which] = (f1[rows, which] + rng.integers(1, LEVELS, size=n_pairs)) % LEVELS
    f_eval = rng.integers(0, LEVELS, size=(2000, N_FACTORS))
    return features(f1), features(f2), features(f_eval), f_eval


TINY = dict(latent_dim=6, hidden_dims=(64,), steps=600, lr=1e-3, beta=1.0)


def test_weak_supervision_recovers_mixed_factors_better_than_beta_vae():
    x1, x2, x_eval, f_eval = _toy_source(4000)
    weak = train_weakly(x1, x2, batch_size=64, seed=1, **TINY)
    # Same budget: as many steps and as many images per step.
    unsup = train_unsupervised(np.concatenate([x1, x2]), batch_size=128, seed=1, **TINY)
    mig_weak = compute_mig(encode_means(weak.model, x_eval), f_eval)["mig"]
    mig_unsup = compute_mig(encode_means(unsup.model, x_eval), f_eval)["mig"]
    assert mig_weak > 0.5, mig_weak
    assert mig_weak > mig_unsup + 0.3, (mig_weak, mig_unsup)
    # The loss curve is recorded and falls.
    curve = weak.curve
    assert curve[-1]["step"] == 600 and len(curve) == 100
    assert {"loss", "recon", "kl", "shared_fraction"} <= set(curve[0])
    assert curve[-1]["loss"] < 0.5 * curve[0]["loss"]


def test_training_is_deterministic_given_the_seed():
    x1, x2, _, _ = _toy_source(300)
    kw = dict(TINY, steps=20)
    a = train_weakly(x1, x2, batch_size=32, seed=3, **kw).model.state_dict()
    torch.rand(7)  # whatever ran before must not matter
    b = train_weakly(x1, x2, batch_size=32, seed=3, **kw).model.state_dict()
    c = train_weakly(x1, x2, batch_size=32, seed=4, **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_refuses_bad_features():
    x1, x2, _, _ = _toy_source(50)
    with pytest.raises(DrlError, match="differ in shape"):
        train_weakly(x1, x2[:10], steps=1)
    bad = x1.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DrlError, match="NaN"):
        train_unsupervised(bad, steps=1)


def test_configs_reject_unknown_keys_and_round_trip():
    cfg = SourceTrainConfig(steps=10, k=None, hidden_dims=[32])
    assert SourceTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(DrlError, match="unknown keys"):
        SourceTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(DrlError, match="unknown keys"):
        TransferConfig.from_dict({"epochs": 2, "momentum": 0.9})
    with pytest.raises(DrlError, match="method"):
        SourceTrainConfig(method="vae")


BACKBONE = {"name": "test-tiny", "timm_name": "test_vit", "weights_hash": "ab" * 32,
            "feature_dim": FEATURE_DIM}


@pytest.fixture
def source_model(tmp_path):
    x1, x2, _, _ = _toy_source(500)
    result = train_weakly(x1, x2, batch_size=64, seed=0, **dict(TINY, steps=100))
    names = [f"z{j}: f{j}" for j in range(6)]
    model_dir = tmp_path / "source"
    digest = save_model(model_dir, result.model, {
        "backbone": BACKBONE, "dim_names": names, "dim_factor": [f"f{j}" for j in range(6)],
        "training": {"method": "ada-gvae"}, "metrics": {"headline": {"mig": 0.9}}})
    return model_dir, digest, names


def _write_features_dir(path, features, backbone="test-tiny", weights_hash="ab" * 32):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "features.npy", features)
    n = len(features)
    pd.DataFrame({"row": np.arange(n), "path": [f"c{i % 2}/img_{i}.png" for i in range(n)],
                  "label": [f"c{i % 2}" for i in range(n)], "split": [None] * n,
                  "sha256": [f"{i:064x}" for i in range(n)], "width": 10, "height": 10,
                  "mode": "RGB", "note": None, "source": "/x"}).to_parquet(path / "images.parquet")
    (path / "manifest.json").write_text(json.dumps({
        "stage": "features", "backbone": backbone, "weights_hash": weights_hash,
        "feature_dim": features.shape[1], "data": {"fingerprint": "f" * 32}}))
    return path


def test_transfer_keeps_names_changes_weights_and_records_the_parent(source_model, tmp_path):
    model_dir, parent_hash, names = source_model
    # Target data: the same kind of features, shifted and rescaled (a domain shift).
    _, _, target, _ = _toy_source(10, seed=5)
    target = target[:300] * 1.5 + 2.0
    features_dir = _write_features_dir(tmp_path / "run", target)
    out = tmp_path / "run" / "model"
    metrics = transfer(model_dir, features_dir, out, TransferConfig(epochs=3, batch_size=32))

    source, _ = load_model(model_dir)
    tuned, meta = load_model(out, expected_backbone="test-tiny")
    assert meta["dim_names"] == names
    assert meta["provenance"]["parent_model_hash"] == parent_hash
    assert meta["training"]["method"] == "transfer"
    assert meta["training"]["data_fingerprint"] == "f" * 32
    changed = [k for k in source.state_dict() if k.startswith(("encoder", "decoder"))
               and not torch.equal(source.state_dict()[k], tuned.state_dict()[k])]
    assert len(changed) == 8  # every weight and bias of both MLPs was fine-tuned
    # The standardisation was re-fitted on the target (training split) features.
    np.testing.assert_allclose(tuned.feature_mean.numpy(), target.mean(0), atol=0.3)

    curve = read_metrics(out)["transfer"]["curve"]
    assert [p["epoch"] for p in curve] == [0, 1, 2, 3]
    assert curve[-1]["val"]["loss"] < curve[0]["val"]["loss"]
    assert metrics["transfer"]["n_val"] == 30 and metrics["source"]["model_hash"] == parent_hash


def test_transfer_is_deterministic_and_refuses_another_backbone(source_model, tmp_path):
    model_dir, _, _ = source_model
    _, _, target, _ = _toy_source(10, seed=6)
    cfg = TransferConfig(epochs=1, batch_size=64)
    transfer(model_dir, target[:200], tmp_path / "a", cfg)
    transfer(model_dir, target[:200], tmp_path / "b", cfg)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()

    wrong = _write_features_dir(tmp_path / "wrong", target[:50], backbone="dino-vits16")
    with pytest.raises(DrlError, match="dino-vits16"):
        transfer(model_dir, wrong, tmp_path / "c", cfg)
    with pytest.raises(DrlError, match="expects 24-d"):
        transfer(model_dir, target[:50, :10], tmp_path / "d", cfg)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_train_source_end_to_end_with_the_tiny_backbone(tmp_path):
    from drlcore.backbones import load_backbone
    from drlcore.cache import FeatureCache
    from drlcore.dsprites import DSpritesConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    cfg = SourceTrainConfig(steps=60, batch_size=32, n_anchors=40, variants_per_anchor=2,
                            n_eval=120, n_omes_pairs_per_factor=6, latent_dim=5,
                            hidden_dims=(32,))
    cache = FeatureCache(tmp_path / "cache", "k")
    from drlcore.source import train_source

    metrics = train_source(tmp_path / "m", backbone, cfg, cache=cache, compare_baseline=True)
    model, meta = load_model(tmp_path / "m", expected_backbone="test-tiny",
                             expected_weights_hash=backbone.weights_hash)
    assert meta["backbone"]["feature_dim"] == backbone.spec.feature_dim
    assert len(meta["dim_names"]) == 5 and all(n.startswith(f"z{j}: ")
                                               for j, n in enumerate(meta["dim_names"]))
    ds_cfg = DSpritesConfig.from_dict(meta["training"]["dsprites"])
    assert ds_cfg.image_size == backbone.spec.input_size
    saved = read_metrics(tmp_path / "m")
    assert set(saved["comparison"]) == {"ada-gvae", "beta-vae"}
    for name in ("mig", "dci_disentanglement", "omes"):
        assert 0.0 <= saved["headline"][name] <= 1.0
    assert saved["evaluation"]["n_omes_pairs"] == 6 * 7
    assert len(saved["training_curve"]) == 60
    assert metrics["model_hash"] == meta["model_hash"]
    # Every image went through the cache: a second run embeds nothing new and gives the same model.
    calls = backbone.forward_calls
    train_source(tmp_path / "m2", backbone, cfg, cache=cache)
    assert backbone.forward_calls == calls
    assert (tmp_path / "m2" / "model.safetensors").read_bytes() == \
        (tmp_path / "m" / "model.safetensors").read_bytes()
