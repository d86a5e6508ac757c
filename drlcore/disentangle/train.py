"""Training: the optimisation loops and evaluation shared by source training and transfer.

Source training (``drl train-source``, rendering and embedding the weak pairs) lives in
:mod:`drlcore.disentangle.source`; it calls ``train_weakly`` / ``train_unsupervised`` and
``evaluate_disentanglement`` from here.

Transfer (``drl transfer``, fine-tuning a source model on a user's images) lives in
:mod:`drlcore.disentangle.transfer` and runs through the same ``_optimise`` loop.

The optimisation itself (``train_weakly``, ``train_unsupervised``) works on plain feature arrays,
so it can be tested on synthetic features without rendering or a backbone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from drlcore.errors import DrlError
from drlcore.progress import NullReporter, Reporter
from drlcore.disentangle.vae import FeatureVAE, VAEConfig, ada_gvae_loss, beta_vae_loss

__all__ = [
    "TrainResult",
    "train_weakly",
    "train_unsupervised",
    "encode_means",
    "evaluate_disentanglement",
    "latent_activity",
    "INACTIVE_STD",
]

# A latent dimension whose posterior mean varies less than this across images carries no
# information (its posterior collapsed onto the prior); same threshold as OMES's active_threshold.
INACTIVE_STD = 0.05


def latent_activity(codes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The engine's one inactive-dimension rule: per-dimension spread of the posterior means
    (sample std, ddof 1, as OMES's ``active_threshold`` in ``metrics.compute_omes``) and the
    dimensions whose spread is below ``INACTIVE_STD``. Returns ``(std, inactive)``."""
    codes = np.asarray(codes, dtype=np.float64)
    std = codes.std(axis=0, ddof=1) if codes.shape[0] > 1 else np.zeros(codes.shape[1])
    return std, [int(j) for j in np.flatnonzero(std < INACTIVE_STD)]

METHODS = ("ada-gvae", "beta-vae")


@dataclass
class TrainResult:
    model: FeatureVAE
    curve: list[dict] = field(default_factory=list)  # {"step", "loss", "recon", "kl", ...}
    seconds: float = 0.0


# -- optimisation on feature arrays ---------------------------------------------------------------


def _as_features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: memory-mapped input is read-only
    if t.ndim != 2 or t.shape[0] < 2:
        raise DrlError(f"{name}: expected a (n, D) feature matrix with n >= 2, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DrlError(f"{name}: features contain NaN or infinity; re-extract them")
    return t


def _optimise(model: FeatureVAE, n_items: int, step_loss: Callable[[torch.Tensor], tuple],
              steps: int, batch_size: int, lr: float, weight_decay: float,
              reporter: Reporter, stage: str, parameters=None,
              end_of_epoch: Callable[[int], bool] | None = None,
              fused: bool = False) -> list[dict]:
    """AdamW over shuffled mini-batches (epoch permutations); returns the averaged loss curve.
    ``fused``: torch's one-pass AdamW kernel (see ``TransferConfig.fused_optimiser``).

    An epoch is ``n_items // batch_size`` steps over one permutation (the incomplete last batch
    is dropped, so every step sees a full batch). ``parameters``: what to optimise (default all of
    the model's). ``end_of_epoch(epoch)`` is called after each epoch with the model in eval mode;
    returning True stops the loop (early stopping).
    """
    params = [p for p in (model.parameters() if parameters is None else parameters)
              if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                  **({"fused": True} if fused else {}))
    batch_size = min(batch_size, n_items)
    log_every = max(1, steps // 100)
    curve: list[dict] = []
    running: dict[str, float] = {}
    order = torch.randperm(n_items)
    cursor, epoch, pending = 0, 0, 0
    model.train()
    with reporter.stage(stage, total=steps, unit="step") as bar:
        for step in range(1, steps + 1):
            if cursor + batch_size > n_items:
                order, cursor = torch.randperm(n_items), 0
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            loss, parts = step_loss(idx)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for key, value in parts.items():
                running[key] = running.get(key, 0.0) + value
            pending += 1
            if step % log_every == 0 or step == steps:
                point = {"step": step, **{k: v / pending for k, v in running.items()}}
                curve.append(point)
                running, pending = {}, 0
                bar.update(log_every if step % log_every == 0 else step % log_every,
                           loss=point["loss"])
            if end_of_epoch is not None and cursor + batch_size > n_items:
                epoch += 1
                model.eval()
                stop = end_of_epoch(epoch)
                model.train()
                if stop:
                    if pending:
                        curve.append({"step": step,
                                      **{k: v / pending for k, v in running.items()}})
                        bar.update(pending)
                    bar.finish(stopped=f"early, epoch {epoch}")
                    break
    model.eval()
    return curve


def _new_model(input_dim: int, latent_dim: int, hidden_dims, fit_on: torch.Tensor) -> FeatureVAE:
    model = FeatureVAE(VAEConfig(input_dim=input_dim, latent_dim=latent_dim,
                                 hidden_dims=tuple(hidden_dims)))
    model.fit_standardisation(fit_on)
    return model


def train_weakly(x1: np.ndarray, x2: np.ndarray, *, latent_dim: int = 10,
                 hidden_dims: tuple[int, ...] = (512, 256), steps: int = 3000,
                 batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                 beta: float = 1.0, seed: int = 0,
                 reporter: Reporter | None = None) -> TrainResult:
    """Ada-GVAE on weak pairs: row i of ``x1`` and ``x2`` are the features of one pair."""
    x1 = _as_features(x1, "train_weakly x1")
    x2 = _as_features(x2, "train_weakly x2")
    if x1.shape != x2.shape:
        raise DrlError(f"train_weakly: pair halves differ in shape {tuple(x1.shape)} vs "
                       f"{tuple(x2.shape)}")
    start = time.perf_counter()
    # A private RNG stream: the same seed gives the same model, whatever ran before in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_model(x1.shape[1], latent_dim, hidden_dims, torch.cat([x1, x2]))
        # Standardised once here, not twice per batch (bit for bit the same numbers); the raw
        # copies are dropped.
        x1, x2 = model.standardise(x1), model.standardise(x2)
        curve = _optimise(model, x1.shape[0],
                          lambda idx: ada_gvae_loss(model, x1[idx], x2[idx], beta,
                                                    standardised=True),
                          steps, batch_size, lr, weight_decay, reporter or NullReporter(),
                          "training Ada-GVAE")
    return TrainResult(model, curve, time.perf_counter() - start)


def train_unsupervised(x: np.ndarray, *, latent_dim: int = 10,
                       hidden_dims: tuple[int, ...] = (512, 256), steps: int = 3000,
                       batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
                       beta: float = 1.0, seed: int = 0,
                       reporter: Reporter | None = None) -> TrainResult:
    """beta-VAE on unpaired features (the baseline the weak supervision is compared against)."""
    x = _as_features(x, "train_unsupervised x")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_model(x.shape[1], latent_dim, hidden_dims, x)
        x = model.standardise(x)
        curve = _optimise(model, x.shape[0],
                          lambda idx: beta_vae_loss(model, x[idx], beta, standardised=True),
                          steps, batch_size, lr, weight_decay, reporter or NullReporter(),
                          "training beta-VAE")
    return TrainResult(model, curve, time.perf_counter() - start)


@torch.no_grad()
def encode_means(model: FeatureVAE, features: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Posterior means (n, J) as float64 (what the metrics take)."""
    model.eval()
    x = features.float() if torch.is_tensor(features) else torch.from_numpy(
        np.array(features, dtype=np.float32))
    out = [model.encode(x[i:i + batch_size])[0] for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).double().numpy()


# -- evaluation -----------------------------------------------------------------------------------


def evaluate_disentanglement(model: FeatureVAE, eval_features: np.ndarray,
                             eval_factors: np.ndarray, pair_features: tuple[np.ndarray, np.ndarray],
                             pair_factor: np.ndarray, factor_names: list[str],
                             seed: int = 0) -> dict:
    """MIG and DCI on random samples, OMES on one-factor pairs, and what each dimension encodes.

    Each active latent dimension is named after the factor of largest DCI importance for it (how
    much the gradient-boosted trees *use* the dimension to predict each factor), unless it mixes
    factors or carries none clearly (``metrics.associate_dims`` rules). DCI importance rather
    than OMES's R: it is defined for every factor, including binary ones that R cannot see.
    Inactive dimensions (posterior mean nearly constant over images) are named "inactive".
    """
    from drlcore.analysis.metrics import associate_dims, compute_dci, compute_mig, compute_omes, dim_names

    codes = encode_means(model, eval_features)
    factors = np.asarray(eval_factors)
    half = codes.shape[0] // 2
    mig = compute_mig(codes, factors)
    dci = compute_dci(codes[:half], factors[:half], codes[half:], factors[half:], seed=seed)
    z1 = encode_means(model, pair_features[0])
    z2 = encode_means(model, pair_features[1])
    omes = compute_omes(z1, z2, np.asarray(pair_factor), num_factors=len(factor_names),
                        active_threshold=INACTIVE_STD, codes=codes)

    latent_std, inactive = latent_activity(codes)
    importance = np.asarray(
        [[np.nan if v is None else v for v in row] for row in dci["importance"]], dtype=float)
    return {
        "mig": mig["mig"],
        "mig_details": mig,
        "dci": dci,
        "omes": omes,
        "latent_std": latent_std.tolist(),
        "inactive_dims": inactive,
        "dim_factor": associate_dims(importance, factor_names, inactive),
        "dim_names": dim_names(importance, factor_names, inactive),
        "n_eval": int(codes.shape[0]),
        "n_omes_pairs": int(z1.shape[0]),
    }
