"""``adamw.AdamW`` gives ``torch.optim.AdamW``'s weights bit for bit (both of its paths), and
the training loops built on it give the models they gave with torch's optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drlcore.disentangle import adamw, train
from drlcore.disentangle.adamw import AdamW
from drlcore.disentangle.vae import FeatureVAE, VAEConfig, ada_gvae_loss, beta_vae_loss

# Sizes with and without a partial vector at the end, and one spanning several chunks.
SHAPES = [(300, 70), (70,), (72, 33), (72,), (7, 3), (20,), (1,)]


def _params(seed: int = 1) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.05) for s in SHAPES]


def _run(make_optimiser, steps: int = 25) -> list[torch.Tensor]:
    params = _params()
    opt = make_optimiser(params)
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        for k, p in enumerate(params):
            # Gradients over several scales; one parameter skips a step (no gradient: no step).
            p.grad = None if (k == 3 and step % 5 == 2) else \
                torch.randn(p.shape, generator=g) * 10.0 ** -(1 + step % 4)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("use_numba", [True, False])
def test_adamw_matches_torch_bit_for_bit(monkeypatch, weight_decay, use_numba):
    monkeypatch.setattr(AdamW, "CHUNK", 64 * 32)  # several chunks per large parameter
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ref = _run(lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=weight_decay,
                                                    foreach=False))
            ours = _run(lambda ps: AdamW(ps, lr=3e-3, weight_decay=weight_decay,
                                         use_numba=use_numba))
        finally:
            torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    assert any(not torch.equal(a, b) for a, b in zip(ours, _params()))  # it did move them


def test_the_fast_path_is_there():
    # numba comes with umap-learn (a dependency); losing it would silently cost the speed.
    assert adamw._kernels(), "numba kernels of adamw.AdamW did not compile"
    assert AdamW(_params(), lr=1e-3)._kernels


def test_losses_on_pre_standardised_features_are_the_same_numbers():
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=40, latent_dim=5, hidden_dims=(16,)))
    model.fit_standardisation(torch.randn(100, 40) * 3 + 1)
    x1, x2 = torch.randn(32, 40) * 3 + 1, torch.randn(32, 40) * 3 + 1
    z1, z2 = model.standardise(x1), model.standardise(x2)
    for std in (False, True):
        a = beta_vae_loss(model, z1 if std else x1, 1.0, generator=torch.Generator().manual_seed(3),
                          return_mu=True, standardised=std)
        b = ada_gvae_loss(model, z1 if std else x1, z2 if std else x2, 1.0,
                          generator=torch.Generator().manual_seed(3), standardised=std)
        if not std:
            ref_a, ref_b = a, b
    assert torch.equal(a[0], ref_a[0]) and a[1] == ref_a[1] and torch.equal(a[2], ref_a[2])
    assert torch.equal(b[0], ref_b[0]) and b[1] == ref_b[1]


def _torch_adamw(params, lr, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def test_training_gives_the_model_torchs_adamw_gave(monkeypatch):
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(96, 24)).astype(np.float32)
    x2 = (x1 + 0.3 * rng.normal(size=x1.shape)).astype(np.float32)
    kw = dict(latent_dim=4, hidden_dims=(32,), steps=40, batch_size=32, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        ours = [train.train_weakly(x1, x2, **kw), train.train_unsupervised(x1, **kw)]
        monkeypatch.setattr(train, "AdamW", _torch_adamw)
        ref = [train.train_weakly(x1, x2, **kw), train.train_unsupervised(x1, **kw)]
    for a, b in zip(ours, ref):
        assert a.curve == b.curve
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fine_tuning_gives_the_model_torchs_adamw_gave(monkeypatch):
    """The transfer (anchored, early stopping) runs through the same loop: same curve, same
    chosen epoch, same weights as with torch's optimiser."""
    from drlcore.disentangle.transfer import TransferConfig, fine_tune

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 24)).astype(np.float32) * rng.uniform(0.5, 3, size=24)
    values = {"morph_area": x[:, 0] * 2 + rng.normal(size=120)}
    # Stops early (epoch 14 of 17 kept, of 40 allowed): the copy of the best epoch is compared
    # too, not just the last weights.
    cfg = TransferConfig(epochs=40, patience=3, batch_size=16, latent_dim=6, lr=1e-2,
                         anchors=("morph_area",))

    def tune():
        torch.manual_seed(5)
        source = FeatureVAE(VAEConfig(input_dim=24, latent_dim=4, hidden_dims=(32,)))
        return fine_tune(source, x, cfg, values)

    ours, info = tune()
    monkeypatch.setattr(train, "AdamW", _torch_adamw)
    ref, ref_info = tune()
    assert 0 < info["best_epoch"] < info["epochs_run"] < cfg.epochs
    assert info["curve"] == ref_info["curve"] and info["best_epoch"] == ref_info["best_epoch"]
    sa, sb = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
