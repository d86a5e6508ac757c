"""Training: the optimisation loops and evaluation shared by source training and transfer.

Source training (``drl train-source``, rendering and embedding the weak pairs) lives in
:mod:`drlcore.source`; it calls ``train_weakly`` / ``train_unsupervised`` and
``evaluate_disentanglement`` from here.

Transfer (``drl transfer``): fine-tune every weight of a source model on the features of a user's
images with the unsupervised beta-VAE objective (no factor labels exist there), keeping the
dimension names the source model earned.

The optimisation itself (``train_weakly``, ``train_unsupervised``) works on plain feature arrays,
so it can be tested on synthetic features without rendering or a backbone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .errors import DrlError
from .progress import NullReporter, Reporter
from .vae import FeatureVAE, VAEConfig, ada_gvae_loss, beta_vae_loss

__all__ = [
    "TransferConfig",
    "TrainResult",
    "train_weakly",
    "train_unsupervised",
    "encode_means",
    "evaluate_disentanglement",
    "transfer",
    "INACTIVE_STD",
]

# A latent dimension whose posterior mean varies less than this across images carries no
# information (its posterior collapsed onto the prior); same threshold as OMES's active_threshold.
INACTIVE_STD = 0.05

METHODS = ("ada-gvae", "beta-vae")


def _from_dict(cls, d: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise DrlError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class TransferConfig:
    """Settings of ``drl transfer`` (paper: AdamW, lr 1e-4, ~20 epochs, beta-VAE objective)."""

    epochs: int = 20
    # 1e-3, not the paper's 1e-4: with 20 epochs of ~1.5-2k images, 1e-4 barely moves the
    # sprite-trained model. Measured with the shipped effnet-lite0 source model, balanced accuracy
    # of an MLP on the latent means went 0.60 -> 0.69 (blood cells) and 0.79 -> 0.83 (plankton);
    # 60 epochs or beta 0.25 gained nothing more (benchmarks/real_data.py, assets/README.md).
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    beta: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    # Re-fit the feature standardisation on the target images before fine-tuning. Backbone
    # features of cells and of rendered sprites differ in mean and spread per dimension; with the
    # source statistics, the target inputs would arrive off-centre and mis-scaled, the encoder's
    # first layer would see inputs unlike anything it was trained on, and the unit-variance
    # likelihood would weigh dimensions by how far they drifted rather than by how they vary
    # among cells. Re-fitting maps the target features into the range the network knows (the same
    # idea as re-estimating batch-norm statistics on a new domain); fine-tuning then adapts the
    # weights to what actually varies among the cells.
    refit_standardisation: bool = True

    def __post_init__(self) -> None:
        if int(self.epochs) < 0 or int(self.batch_size) < 1:
            raise DrlError("TransferConfig: epochs must be >= 0 and batch_size >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DrlError(f"TransferConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.beta < 0:
            raise DrlError("TransferConfig: lr must be > 0 and beta >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransferConfig:
        return _from_dict(cls, d)


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
              reporter: Reporter, stage: str) -> list[dict]:
    """AdamW over shuffled mini-batches (epoch permutations); returns the averaged loss curve."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch_size = min(batch_size, n_items)
    log_every = max(1, steps // 100)
    curve: list[dict] = []
    running: dict[str, float] = {}
    order = torch.randperm(n_items)
    cursor = 0
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
            if step % log_every == 0 or step == steps:
                n = log_every if step % log_every == 0 else step % log_every
                point = {"step": step, **{k: v / n for k, v in running.items()}}
                curve.append(point)
                running = {}
                bar.update(n, loss=point["loss"])
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
        curve = _optimise(model, x1.shape[0],
                          lambda idx: ada_gvae_loss(model, x1[idx], x2[idx], beta),
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
        curve = _optimise(model, x.shape[0], lambda idx: beta_vae_loss(model, x[idx], beta),
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
    from .metrics import associate_dims, compute_dci, compute_mig, compute_omes, dim_names

    codes = encode_means(model, eval_features)
    factors = np.asarray(eval_factors)
    half = codes.shape[0] // 2
    mig = compute_mig(codes, factors)
    dci = compute_dci(codes[:half], factors[:half], codes[half:], factors[half:], seed=seed)
    z1 = encode_means(model, pair_features[0])
    z2 = encode_means(model, pair_features[1])
    omes = compute_omes(z1, z2, np.asarray(pair_factor), num_factors=len(factor_names),
                        active_threshold=INACTIVE_STD, codes=codes)

    latent_std = codes.std(axis=0, ddof=1)
    inactive = [int(j) for j in np.flatnonzero(latent_std < INACTIVE_STD)]
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


# -- transfer -------------------------------------------------------------------------------------


def transfer(model_dir: str | Path, features: str | Path | np.ndarray, out_dir: str | Path,
             config: TransferConfig = TransferConfig(), reporter: Reporter | None = None,
             expected_backbone: str | None = None,
             expected_weights_hash: str | None = None) -> dict:
    """Fine-tune the model in ``model_dir`` on target features; save to ``out_dir``.

    ``features`` is a folder written by the features stage (its manifest is checked against the
    model's backbone) or a (n, D) array (then pass ``expected_backbone`` / ``expected_weights_hash``
    to have them checked). All weights are trained with the beta-VAE objective; the dimension
    names are kept. Returns the metrics written to ``metrics.json``.
    """
    from .artifacts import load_model, save_model
    from .encode import load_features_dir

    reporter = reporter or NullReporter()
    data_fingerprint = None
    if isinstance(features, (str, Path)):
        feats, _, fmanifest = load_features_dir(features)
        expected_backbone = fmanifest.get("backbone")
        expected_weights_hash = fmanifest.get("weights_hash")
        data_fingerprint = (fmanifest.get("data") or {}).get("fingerprint")
    else:
        feats = features
    model, meta = load_model(model_dir, expected_backbone=expected_backbone,
                             expected_weights_hash=expected_weights_hash,
                             expected_feature_dim=np.shape(feats)[1])
    x = _as_features(feats, "transfer features")
    n = x.shape[0]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        order = torch.randperm(n)
        n_val = int(round(config.val_fraction * n)) if n >= 10 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        x_train, x_val = x[train_idx], x[val_idx]
        if config.refit_standardisation:
            model.fit_standardisation(x_train)

        def evaluate(data: torch.Tensor) -> dict | None:
            if data.shape[0] == 0:
                return None
            # A fixed noise stream so that epoch-to-epoch differences are the model's, not noise.
            gen = torch.Generator().manual_seed(config.seed + 1)
            model.eval()
            with torch.no_grad():
                _, parts = beta_vae_loss(model, data, config.beta, generator=gen)
            return parts

        steps_per_epoch = max(1, int(np.ceil(x_train.shape[0] / config.batch_size)))
        curve = [{"epoch": 0, "train": evaluate(x_train), "val": evaluate(x_val)}]
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
        start = time.perf_counter()
        with reporter.stage("transfer (fine-tuning)", total=config.epochs * steps_per_epoch,
                            unit="step") as bar:
            for epoch in range(1, config.epochs + 1):
                model.train()
                perm = torch.randperm(x_train.shape[0])
                for s in range(steps_per_epoch):
                    idx = perm[s * config.batch_size:(s + 1) * config.batch_size]
                    loss, parts = beta_vae_loss(model, x_train[idx], config.beta)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    bar.update(1, epoch=epoch, loss=parts["loss"])
                curve.append({"epoch": epoch, "train": evaluate(x_train), "val": evaluate(x_val)})
        model.eval()
        seconds = time.perf_counter() - start

    codes = encode_means(model, x)
    latent_std = codes.std(axis=0)
    inactive = [int(j) for j in np.flatnonzero(latent_std < INACTIVE_STD)]
    metrics = {
        "transfer": {"curve": curve, "n_train": int(x_train.shape[0]), "n_val": int(n_val),
                     "seconds": round(seconds, 2), "latent_std": latent_std.tolist(),
                     "inactive_dims": inactive},
        "source": {"model_hash": meta["model_hash"], "metrics": meta.get("metrics", {})},
    }
    training = {"method": "transfer", "objective": "beta-vae", "config": config.to_dict(),
                "optimizer": "AdamW", "data_fingerprint": data_fingerprint,
                "source_training": meta.get("training", {})}
    digest = save_model(out_dir, model, {
        "backbone": meta["backbone"],
        "dim_names": meta["dim_names"],
        "dim_factor": meta["dim_factor"],
        "inactive_dims": inactive,
        "training": training,
        "parent_model_hash": meta["model_hash"],
        "metrics": metrics,
    })
    last = curve[-1]
    val_text = f", val loss {last['val']['loss']:.4g}" if last["val"] else ""
    reporter.message(f"transferred model {digest[:12]} -> {out_dir}: train loss "
                     f"{last['train']['loss']:.4g}{val_text}")
    metrics["model_hash"] = digest
    return metrics
