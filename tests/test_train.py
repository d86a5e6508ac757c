"""Training on feature arrays (synthetic factors) and the full source pipeline (transfer:
tests/test_transfer.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drlcore.disentangle.artifacts import load_model, read_metrics
from drlcore.errors import DrlError
from drlcore.analysis.metrics import compute_mig
from drlcore.disentangle.source import SourceTrainConfig
from drlcore.disentangle.train import encode_means, latent_activity, train_unsupervised, train_weakly
from drlcore.disentangle.transfer import TransferConfig

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


def test_one_inactive_dimension_rule():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(50, 3))
    codes[:, 1] = 0.3 + 0.01 * rng.normal(size=50)  # nearly constant: collapsed onto the prior
    std, inactive = latent_activity(codes)
    np.testing.assert_allclose(std, codes.std(axis=0, ddof=1))
    assert inactive == [1]


def test_configs_reject_unknown_keys_and_round_trip():
    cfg = SourceTrainConfig(steps=10, k=None, hidden_dims=[32])
    assert SourceTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(DrlError, match="unknown .*Config setting"):
        SourceTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(DrlError, match="unknown .*Config setting"):
        TransferConfig.from_dict({"epochs": 2, "momentum": 0.9})
    with pytest.raises(DrlError, match="method"):
        SourceTrainConfig(method="vae")


@pytest.mark.slow
def test_train_source_end_to_end_with_the_tiny_backbone(tmp_path):
    from drlcore.embedding.backbones import load_backbone
    from drlcore.data.cache import FeatureCache
    from drlcore.disentangle.dsprites import DSpritesConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    cfg = SourceTrainConfig(steps=60, batch_size=32, n_anchors=40, variants_per_anchor=2,
                            n_eval=120, n_omes_pairs_per_factor=6, latent_dim=5,
                            hidden_dims=(32,))
    cache = FeatureCache(tmp_path / "cache", "k")
    from drlcore.disentangle.source import train_source

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
