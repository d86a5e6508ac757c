"""The VAE model file: config, standardisation, closed-form KLs, Ada-GVAE aggregation, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from drlcore.errors import DrlError
from drlcore.disentangle.vae import (FeatureVAE, VAEConfig, ada_gvae_aggregate, ada_gvae_loss, beta_vae_loss,
                         gaussian_kl_between, kl_per_dim)


def test_config_round_trip_and_unknown_keys():
    cfg = VAEConfig(input_dim=32, latent_dim=4, hidden_dims=[16, 8], activation="gelu")
    assert cfg.hidden_dims == (16, 8)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DrlError, match="unknown VAEConfig setting.*'width'"):
        VAEConfig.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(DrlError, match="activation"):
        VAEConfig(input_dim=4, activation="tanhh")


def test_kl_closed_forms_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    lv1, lv2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q1, q2 = Normal(mu1, (0.5 * lv1).exp()), Normal(mu2, (0.5 * lv2).exp())
    prior = Normal(torch.zeros(5, 3), torch.ones(5, 3))
    torch.testing.assert_close(kl_per_dim(mu1, lv1), kl_divergence(q1, prior))
    torch.testing.assert_close(gaussian_kl_between(mu1, lv1, mu2, lv2), kl_divergence(q1, q2))
    # KL is asymmetric: the argument order is the documented one, not its mirror.
    assert not torch.allclose(gaussian_kl_between(mu1, lv1, mu2, lv2),
                              gaussian_kl_between(mu2, lv2, mu1, lv1))


def test_aggregation_averages_unchanged_dims_and_keeps_changed_ones():
    mu1 = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    mu2 = torch.tensor([[0.1, 1.0, -2.0, 3.05]])  # dim 2 changed a lot
    lv1 = torch.log(torch.tensor([[1.0, 0.5, 0.2, 1.0]]))
    lv2 = torch.log(torch.tensor([[1.0, 0.7, 0.2, 1.0]]))
    m1, l1, m2, l2, shared = ada_gvae_aggregate(mu1, lv1, mu2, lv2)
    assert shared.tolist() == [[True, True, False, True]]
    # Shared dims: both sides get the mean of means and the mean of variances (not log-variances).
    torch.testing.assert_close(m1[0, [0, 1, 3]], torch.tensor([0.05, 1.0, 3.025]))
    torch.testing.assert_close(m1, torch.where(shared, m2, m1))
    torch.testing.assert_close(l1[0, 1].exp(), torch.tensor(0.6))
    torch.testing.assert_close(l2[0, 1].exp(), torch.tensor(0.6))
    # The changed dim keeps each side's own posterior.
    assert m1[0, 2].item() == 2.0 and m2[0, 2].item() == -2.0
    torch.testing.assert_close(l1[0, 2], lv1[0, 2])


def test_aggregation_threshold_is_per_pair():
    # Pair 0: deltas on a tiny scale (dims 0,1 ~0, dim 2 changed by 0.2).
    # Pair 1: deltas on a huge scale (dim 3 changed by 50, dims 0-2 moved by ~1.5).
    # A batch-wide threshold ((max+min)/2 over the batch, ~625) would call every dim of pair 0
    # shared, including its changed dim 2; per pair, each pair's changed dim stays unshared.
    mu1 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mu2 = torch.tensor([[0.0, 0.01, 0.2, 0.0], [1.5, 1.4, 1.6, 50.0]])
    lv = torch.zeros(2, 4)
    _, _, _, _, shared = ada_gvae_aggregate(mu1, lv, mu2, lv)
    assert shared.tolist() == [[True, True, False, True], [True, True, True, False]]


def test_aggregation_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        ada_gvae_aggregate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4),
                           torch.zeros(2, 4))


def test_standardisation_is_fitted_stored_and_used(rng):
    x = rng.normal(loc=[5.0, -3.0, 100.0], scale=[2.0, 0.5, 30.0], size=(500, 3))
    x[:, 1] = 7.0  # a constant feature must not blow up
    model = FeatureVAE(VAEConfig(input_dim=3, latent_dim=2, hidden_dims=(8,)))
    assert not bool(model.standardisation_fitted)
    model.fit_standardisation(x)
    assert bool(model.standardisation_fitted)
    state = model.state_dict()
    assert {"feature_mean", "feature_std", "standardisation_fitted"} <= set(state)
    np.testing.assert_allclose(state["feature_mean"].numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["feature_std"].numpy()[[0, 2]], x.std(0, ddof=1)[[0, 2]],
                               rtol=1e-5)
    assert state["feature_std"][1].item() == 1.0
    z = model.standardise(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(z[:, [0, 2]].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, [0, 2]].std(0, ddof=1), 1.0, atol=1e-4)
    # encode() goes through the standardisation: shifting the stored mean changes the codes.
    mu_before = model.encode(torch.as_tensor(x[:4], dtype=torch.float32))[0]
    model.feature_mean += 10.0
    assert not torch.allclose(mu_before, model.encode(torch.as_tensor(x[:4], dtype=torch.float32))[0])
    with pytest.raises(DrlError, match="NaN"):
        model.fit_standardisation(np.full((3, 3), np.nan))
    with pytest.raises(DrlError, match="shape"):
        model.encode(torch.zeros(2, 5))


def _toy_model(seed=0, input_dim=6, latent_dim=3):
    torch.manual_seed(seed)
    return FeatureVAE(VAEConfig(input_dim=input_dim, latent_dim=latent_dim, hidden_dims=(16,)))


def test_losses_have_expected_parts_and_fall_on_a_short_run(rng):
    # Two underlying factors mixed into six features: three latents can explain nearly all of it.
    x = torch.as_tensor(rng.normal(size=(256, 2)) @ rng.normal(size=(2, 6)), dtype=torch.float32)
    model = _toy_model()
    model.fit_standardisation(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(300):
        loss, parts = beta_vae_loss(model, x, beta=1.0, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else parts["loss"]
    assert set(parts) == {"loss", "recon", "kl"}
    assert parts["loss"] < 0.6 * first
    # With beta=0 the KL does not enter the loss.
    l0, p0 = beta_vae_loss(model, x, beta=0.0, generator=torch.Generator().manual_seed(1))
    assert l0.item() == pytest.approx(p0["recon"], rel=1e-6)


def test_ada_gvae_loss_parts_and_shared_fraction(rng):
    x1 = torch.as_tensor(rng.normal(size=(64, 6)), dtype=torch.float32)
    model = _toy_model()
    model.fit_standardisation(x1)
    loss, parts = ada_gvae_loss(model, x1, x1.clone(), beta=1.0,
                                generator=torch.Generator().manual_seed(0))
    assert set(parts) == {"loss", "recon", "kl", "shared_fraction"}
    # Identical images: every delta is 0, so tau = 0 and no dim is "below" it; the aggregation
    # leaves identical posteriors identical either way, and the loss is finite.
    assert np.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError):
        ada_gvae_loss(model, x1, x1[:10], beta=1.0)


def test_losses_on_pre_standardised_features_are_the_same_numbers():
    # Training standardises its feature matrix once (``standardised=True``) instead of twice
    # per batch; the trained models are the same only if the losses are, bit for bit.
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=40, latent_dim=5, hidden_dims=(16,)))
    model.fit_standardisation(torch.randn(100, 40) * 3 + 1)
    x1, x2 = torch.randn(32, 40) * 3 + 1, torch.randn(32, 40) * 3 + 1
    z1, z2 = model.standardise(x1), model.standardise(x2)
    results = {}
    for std in (False, True):
        results[std] = (
            beta_vae_loss(model, z1 if std else x1, 1.0, generator=torch.Generator().manual_seed(3),
                          return_mu=True, standardised=std),
            ada_gvae_loss(model, z1 if std else x1, z2 if std else x2, 1.0,
                          generator=torch.Generator().manual_seed(3), standardised=std))
    (a, b), (ref_a, ref_b) = results[True], results[False]
    assert torch.equal(a[0], ref_a[0]) and a[1] == ref_a[1] and torch.equal(a[2], ref_a[2])
    assert torch.equal(b[0], ref_b[0]) and b[1] == ref_b[1]
