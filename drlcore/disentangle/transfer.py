"""Transfer (``drl transfer``): fine-tune a source model on the features of a user's images.

No factor labels exist on the user's images, so fine-tuning optimises the unsupervised beta-VAE
objective, through the same loop as source training (``train._optimise``).

Why fine-tuning lost class information, and what the defaults are (``benchmarks/
transfer_study.py``: shipped effnet-lite0 source model, latent means, stratified 70/30 split,
seed 0; ratio = balanced accuracy on latents / on raw features, MLP and logistic regression):

- **Not posterior collapse.** Every variant keeps all 10 axes active; the KL of the code is
  ~20-40 nats against a reconstruction term of hundreds, and beta 0.1-0.5 or a KL capacity
  (Burgess et al.) changed the ratios by no more than the split's noise (+-0.02).
- **Nearly dead backbone units.** 144 of the 1280 effnet-lite0 dimensions on the blood cells
  have a std below a tenth of the median (some are non-zero on one image); standardised, they
  become spikes of |z| up to sqrt(n) that dominate the squared-error likelihood and the
  validation loss. On half of the blood-cell classes this made early stopping keep epoch 0
  (ratio 0.54). ``min_relative_std`` floors each std at 0.3 x the median std (ratio 0.91 there).
- **Epochs by a validation criterion.** ``epochs`` is a ceiling; after each epoch the loss on a
  validation split (fixed noise) is measured, training stops after ``patience`` epochs without
  improvement and the best epoch's weights are kept (recorded in ``metrics.json``). It picks
  12-22 epochs on blood cells and ~50 on plankton; a fixed 20 was too short for plankton.
- **What does not help:** freezing the decoder or the encoder (ratios 0.51-0.80), lr 3e-4,
  and not re-fitting the standardisation (0.39-0.70).
- **What limits the blood cells is the size of the code.** Ten unsupervised axes keep ~0.8 of
  the class information whatever the schedule (a beta-VAE from scratch 0.81, PCA to 10 axes
  0.75); 16 axes reach 0.87, 32 axes 0.89. ``latent_dim`` None keeps the source's size and
  every weight (and the source's dimension names). Another size gets a new head: the encoder's
  output layer and the decoder's input layer are re-initialised (their shapes change), every
  hidden layer keeps the source weights, and the axes carry no source names (``dim_factor``
  None) because no source axis survives a new head.
- **Anchored axes** (``anchors``; ``drl run`` chooses them from the data, see
  ``drlcore.analysis.axis_card``): measured morphology features (as rank-normal scores of the
  training rows, ``anchor_transform``) are tied to the first axes by a regression term from the axis's posterior mean
  to the feature, the "few labels" setting of Locatello et al. 2020 with morphology as the labels.
  A held-out share of the images (``anchor_holdout``) is excluded from fine-tuning altogether
  (both losses and early stopping), and each anchored axis's correlation is reported on those
  images only.

One inactive-dimension rule for the whole engine: ``train.latent_activity`` (sample std, ddof 1,
below ``INACTIVE_STD``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drlcore.config import from_dict as _from_dict
from drlcore.errors import DrlError
from drlcore.io import sha256_bytes
from drlcore.progress import NullReporter, Reporter
from drlcore.disentangle.train import _as_features, _optimise, encode_means, latent_activity
from drlcore.disentangle.vae import FeatureVAE, beta_vae_loss
from drlcore.analysis.axis_card import rank_normal_scores

__all__ = ["TransferConfig", "FREEZE", "transfer", "fine_tune", "split_rows", "anchor_report",
           "anchor_names", "rank_normal_scores"]

FREEZE = ("none", "decoder", "encoder")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of ``drl transfer`` (the paper: AdamW, lr 1e-4, ~20 epochs, beta-VAE objective).

    Defaults chosen by ``benchmarks/transfer_study.py`` (see the module docstring).
    """

    epochs: int = 200  # a ceiling: early stopping on the validation loss decides
    patience: int = 10  # epochs without a better validation loss before stopping; 0: no stopping
    # 1e-3, not the paper's 1e-4: with ~1.5-2k images, 1e-4 barely moves the sprite-trained model.
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    beta: float = 1.0
    # KL capacity (Burgess et al. 2018): the KL term becomes beta * |KL - C| with C rising
    # linearly from 0 to ``capacity`` nats over ``capacity_epochs``; None: plain beta-VAE.
    capacity: float | None = None
    capacity_epochs: int = 20
    freeze: str = "none"  # "decoder" or "encoder": keep that half at the source weights
    latent_dim: int | None = None  # None: the source model's size (keeps its weights and names)
    seed: int = 0
    val_fraction: float = 0.1
    # Re-fit the feature standardisation on the target images before fine-tuning: backbone
    # features of cells and of rendered sprites differ in mean and spread per dimension; with the
    # source statistics, the unit-variance likelihood would weigh dimensions by how far they
    # drifted rather than by how they vary among cells (cf. re-estimating batch-norm statistics).
    refit_standardisation: bool = True
    # Floor of each feature dimension's std, as a fraction of the median std, when re-fitting:
    # without it, nearly dead backbone units (blood cells: 144 of 1280 dims below 0.1 x median)
    # become spikes of |z| up to sqrt(n) that dominate the likelihood and the validation loss.
    min_relative_std: float = 0.3
    # Anchored axes: morphology feature names (e.g. "morph_area"), tied to axes 0, 1, ... in order.
    anchors: tuple[str, ...] = ()
    anchor_weight: float = 100.0  # per image, against a reconstruction term of hundreds of nats
    anchor_holdout: float = 0.2  # share of images held out of fine-tuning to report r on
    # "rank": each anchor target is the normal score of its rank among the training rows
    # (monotone, so the axis keeps the measurement's order); "linear": standardised values.
    # Skewed sizes (plankton: a few organisms 10-100x the median area) made the squared anchor
    # error follow the few largest objects under "linear"; see benchmarks/axis_quality.py.
    anchor_transform: str = "rank"
    # torch's one-pass (fused) AdamW kernel: the step reads each parameter-sized array once, not
    # seven times: about 1.6x faster per step (1,304 blood cells: 28-31 s -> 12 s, that run
    # also stopping earlier). It rounds differently from the for-loop kernel, so the same seed
    # gives another (equally good) model.
    fused_optimiser: bool = True
    # The training loss recorded per epoch (the curve in metrics.json; early stopping reads the
    # validation loss only) is taken on a fixed sample of this many training rows: all ~1,200
    # cost about a tenth of the fine-tuning.
    train_eval_rows: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchors", tuple(str(a) for a in self.anchors))
        if int(self.epochs) < 0 or int(self.batch_size) < 1 or int(self.patience) < 0:
            raise DrlError("TransferConfig: epochs and patience must be >= 0, batch_size >= 1")
        if int(self.train_eval_rows) < 1:
            raise DrlError(f"TransferConfig.train_eval_rows must be >= 1, got {self.train_eval_rows}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DrlError(f"TransferConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.beta < 0:
            raise DrlError("TransferConfig: lr must be > 0 and beta >= 0")
        if self.capacity is not None and (self.capacity < 0 or int(self.capacity_epochs) < 1):
            raise DrlError("TransferConfig: capacity must be >= 0 nats and capacity_epochs >= 1")
        if self.freeze not in FREEZE:
            raise DrlError(f"TransferConfig.freeze must be one of {FREEZE}, got {self.freeze!r}")
        if self.latent_dim is not None and int(self.latent_dim) < 1:
            raise DrlError(f"TransferConfig.latent_dim must be >= 1, got {self.latent_dim}")
        if len(set(self.anchors)) != len(self.anchors):
            raise DrlError(f"TransferConfig.anchors lists a feature twice: {list(self.anchors)}")
        if self.anchors and not 0.0 < self.anchor_holdout < 1.0:
            raise DrlError(f"TransferConfig.anchor_holdout must be in (0, 1), got "
                           f"{self.anchor_holdout}")
        if not 0.0 <= self.min_relative_std <= 1.0:
            raise DrlError("TransferConfig.min_relative_std must be in [0, 1]")
        if self.anchor_weight < 0:
            raise DrlError("TransferConfig.anchor_weight must be >= 0")
        if self.anchor_transform not in ("rank", "linear"):
            raise DrlError(f"TransferConfig.anchor_transform must be 'rank' or 'linear', got "
                           f"{self.anchor_transform!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["anchors"] = list(self.anchors)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TransferConfig:
        return _from_dict(cls, d)


def anchor_names(spec) -> tuple[str, ...]:
    """``"area,eccentricity,hue"`` (or a sequence) -> ``("morph_area", ...)``, checked against
    the morphology features the engine measures."""
    from drlcore.analysis.morphology import FEATURE_NAMES

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name = item if item.startswith("morph_") else f"morph_{item}"
        if name not in FEATURE_NAMES:
            known = ", ".join(f.removeprefix("morph_") for f in FEATURE_NAMES)
            raise DrlError(f"cannot anchor {item!r}: not a morphology feature; choose from {known}")
        names.append(name)
    return tuple(names)


# -- pure parts -----------------------------------------------------------------------------------


def split_rows(n: int, config: TransferConfig) -> dict[str, np.ndarray]:
    """Row indices of the training, validation and (anchored runs only) held-out sets.

    A seeded permutation: the held-out rows come first, then validation, then training. The
    held-out rows take no part in fine-tuning (neither loss, nor early stopping).
    """
    order = np.random.default_rng(config.seed).permutation(n)
    n_hold = int(round(config.anchor_holdout * n)) if config.anchors else 0
    rest = n - n_hold
    n_val = int(round(config.val_fraction * rest)) if rest >= 10 else 0
    return {"heldout": np.sort(order[:n_hold]), "val": np.sort(order[n_hold:n_hold + n_val]),
            "train": np.sort(order[n_hold + n_val:])}


def _pearson_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, list[float] | None, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan"), None, n
    r = float(np.corrcoef(a[ok], b[ok])[0, 1])
    if n < 4:
        return r, None, n
    z, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1.0 / np.sqrt(n - 3)
    return r, [float(np.tanh(z - 1.96 * se)), float(np.tanh(z + 1.96 * se))], n


def anchor_report(codes: np.ndarray, values: dict[str, np.ndarray], anchors: tuple[str, ...],
                  heldout: np.ndarray, train: np.ndarray) -> dict:
    """Per anchored feature: its axis, Pearson r (95% Fisher CI) on the held-out rows, r on the
    training rows for comparison, and the row counts."""
    out = {}
    for axis, name in enumerate(anchors):
        v = np.asarray(values[name], dtype=float)
        r, ci, n = _pearson_ci(codes[heldout, axis], v[heldout])
        r_train, _, _ = _pearson_ci(codes[train, axis], v[train])
        out[name] = {"axis": axis, "r_heldout": r, "ci": ci, "n_heldout": n,
                     "r_train": r_train}
    return out


def _with_latent_dim(model: FeatureVAE, latent_dim: int) -> tuple[FeatureVAE, bool]:
    """The model itself, or a copy with a new head of ``latent_dim`` latents (every tensor whose
    shape is unchanged - hidden layers, standardisation buffers - is kept)."""
    if latent_dim == model.config.latent_dim:
        return model, False
    new = FeatureVAE(dataclasses.replace(model.config, latent_dim=int(latent_dim)))
    own = new.state_dict()
    kept = {k: v for k, v in model.state_dict().items() if own[k].shape == v.shape}
    new.load_state_dict({**own, **kept})
    return new, True


def _trainable(model: FeatureVAE, freeze: str) -> list[torch.nn.Parameter]:
    if freeze == "decoder":
        return list(model.encoder.parameters())
    if freeze == "encoder":
        return list(model.decoder.parameters())
    return list(model.parameters())


def _snapshot(model: FeatureVAE) -> dict[str, torch.Tensor]:
    """A copy of the weights and buffers to restore later (``load_state_dict``): plain clones,
    without deepcopy's walk over the dict's Python objects."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _one_thread():
    """Train the small VAE on one torch thread. Its matmuls (64 x 1280 by a few hundred) are too
    small to share: on the 2-core machine with other work running, two threads spin-waited at
    1.5 s per step against 0.17 s on one (25 ms of CPU against 300; the features stage leaves
    torch at every core, which is right for the backbone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fine_tune(model: FeatureVAE, features, config: TransferConfig = TransferConfig(),
              anchor_values: dict[str, np.ndarray] | None = None,
              reporter: Reporter | None = None) -> tuple[FeatureVAE, dict]:
    """Fine-tune ``model`` (modified in place, or replaced by one with a new head) on raw
    ``features`` (n, D); returns the model and what happened (curve, split, chosen epoch).

    ``anchor_values``: for each name in ``config.anchors``, an (n,) array of that feature per row
    (NaN where it could not be measured; such rows are left out of the anchor term).
    """
    reporter = reporter or NullReporter()
    x = _as_features(features, "transfer features")
    n = x.shape[0]
    latent_dim = config.latent_dim or model.config.latent_dim
    if len(config.anchors) > latent_dim:
        raise DrlError(f"{len(config.anchors)} anchors but only {latent_dim} latent axes")
    missing = [a for a in config.anchors if anchor_values is None or a not in anchor_values]
    if missing:
        raise DrlError(f"no values given for anchored feature(s) {missing}")
    split = split_rows(n, config)
    train_idx = torch.from_numpy(split["train"])
    if train_idx.numel() < 2:
        raise DrlError(f"transfer: only {train_idx.numel()} training row(s) after the split")
    x_train, x_val = x[train_idx], x[torch.from_numpy(split["val"])]

    # Anchor targets on the training rows only: standardised with training statistics, NaN
    # (unmeasured) entries masked. Held-out rows never enter this tensor.
    targets = mask = val_targets = val_mask = None
    anchor_stats = {}
    if config.anchors:
        cols = []
        for name in config.anchors:
            v = np.asarray(anchor_values[name], dtype=np.float64)
            if v.shape != (n,):
                raise DrlError(f"anchor {name!r}: expected {n} values, got shape {v.shape}")
            tv = v[split["train"]]
            ok = np.isfinite(tv)
            if ok.sum() < 3 or np.std(tv[ok]) == 0:
                raise DrlError(f"anchor {name!r}: fewer than 3 measured training images, or the "
                               f"feature is constant (hue or saturation of grayscale images, for "
                               f"example); it cannot anchor an axis - choose another feature")
            mean, std = float(tv[ok].mean()), float(tv[ok].std())
            anchor_stats[name] = {"mean": mean, "std": std, "n_train": int(ok.sum()),
                                  "transform": config.anchor_transform}
            # Training and validation rows (the validation rows judge early stopping, so the
            # anchor term must count there too); transformed with training statistics.
            rows = np.concatenate([split["train"], split["val"]])
            fv = v[rows]
            fok = np.isfinite(fv)
            if config.anchor_transform == "rank":
                target = rank_normal_scores(tv[ok], np.where(fok, fv, tv[ok][0]))
            else:
                target = (fv - mean) / std
            cols.append(np.stack([np.where(fok, target, 0.0), fok.astype(float)]))
        stacked = np.stack(cols, axis=2)  # (2, n_train + n_val, n_anchors)
        n_tr = len(split["train"])
        targets = torch.from_numpy(stacked[0, :n_tr]).float()
        mask = torch.from_numpy(stacked[1, :n_tr]).float()
        val_targets = torch.from_numpy(stacked[0, n_tr:]).float()
        val_mask = torch.from_numpy(stacked[1, n_tr:]).float()

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(config.seed)
        model, new_head = _with_latent_dim(model, latent_dim)
        if config.refit_standardisation:
            model.fit_standardisation(x_train, config.min_relative_std)
        n_anchor = len(config.anchors)
        # Standardised once: every step and every evaluation used to redo it (twice each), and
        # fine-tuning never changes the standardisation buffers. Elementwise, so bit for bit
        # the same numbers. Only the standardised rows are kept (no second copy in memory).
        with torch.no_grad():
            z_train, z_val = model.standardise(x_train), model.standardise(x_val)
        del x_train, x_val

        def evaluate(data: torch.Tensor, anchor_targets=None, anchor_mask=None) -> dict | None:
            """Loss parts on standardised ``data``; with anchor targets the anchor term is part
            of "loss", so early stopping judges the objective that was trained, not the VAE half
            of it (which on the demo chose epoch 0 and silently threw the anchoring away)."""
            if data.shape[0] == 0:
                return None
            gen = torch.Generator().manual_seed(config.seed + 1)  # fixed noise across epochs
            with torch.no_grad():
                if anchor_targets is None:
                    _, parts = beta_vae_loss(model, data, config.beta, generator=gen,
                                             standardised=True)
                    return parts
                _, parts, mu = beta_vae_loss(model, data, config.beta, generator=gen,
                                             return_mu=True, standardised=True)
                err = (((mu[:, :n_anchor] - anchor_targets).pow(2) * anchor_mask).sum(0)
                       / anchor_mask.sum(0).clamp(min=1))
                anchor = float(err.sum())
            return {**parts, "loss": parts["loss"] + config.anchor_weight * anchor, "anchor": anchor}

        sample = torch.arange(z_train.shape[0])
        if z_train.shape[0] > config.train_eval_rows:
            sample = torch.randperm(z_train.shape[0], generator=torch.Generator().manual_seed(
                config.seed + 2))[:config.train_eval_rows].sort().values
        z_sample = z_train[sample]

        def evaluate_train():
            return (evaluate(z_sample, targets[sample], mask[sample]) if n_anchor
                    else evaluate(z_sample))

        def evaluate_val():
            return evaluate(z_val, val_targets, val_mask) if n_anchor else evaluate(z_val)

        batch = min(config.batch_size, z_train.shape[0])
        steps_per_epoch = max(1, z_train.shape[0] // batch)
        capacity_steps = config.capacity_epochs * steps_per_epoch
        state = {"step": 0}

        def step_loss(idx: torch.Tensor):
            state["step"] += 1
            cap = None
            if config.capacity is not None:
                cap = config.capacity * min(1.0, state["step"] / capacity_steps)
            if not n_anchor:
                return beta_vae_loss(model, z_train[idx], config.beta, capacity=cap,
                                     standardised=True)
            loss, parts, mu = beta_vae_loss(model, z_train[idx], config.beta, capacity=cap,
                                            return_mu=True, standardised=True)
            m = mask[idx]
            err = ((mu[:, :n_anchor] - targets[idx]).pow(2) * m).sum(0) / m.sum(0).clamp(min=1)
            anchor = err.sum()
            loss = loss + config.anchor_weight * anchor
            return loss, {**parts, "loss": loss.item(), "anchor": anchor.item()}

        curve = [{"epoch": 0, "train": evaluate_train(), "val": evaluate_val()}]
        best = {"epoch": 0, "loss": curve[0]["val"]["loss"] if curve[0]["val"] else None,
                "state": _snapshot(model)}
        use_val = config.patience > 0 and z_val.shape[0] > 0

        def end_of_epoch(epoch: int) -> bool:
            point = {"epoch": epoch, "train": evaluate_train(), "val": evaluate_val()}
            curve.append(point)
            if not use_val:
                return False
            if point["val"]["loss"] < best["loss"]:
                best.update(epoch=epoch, loss=point["val"]["loss"], state=_snapshot(model))
            return epoch - best["epoch"] >= config.patience

        steps = config.epochs * steps_per_epoch
        if steps:
            _optimise(model, z_train.shape[0], step_loss, steps, batch, config.lr,
                      config.weight_decay, reporter, "transfer (fine-tuning)",
                      parameters=_trainable(model, config.freeze), end_of_epoch=end_of_epoch,
                      fused=config.fused_optimiser)
        epochs_run = len(curve) - 1
        if use_val:
            model.load_state_dict(best["state"])
        model.eval()
    info = {
        "curve": curve, "n_train": int(len(split["train"])), "n_val": int(len(split["val"])),
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"] if use_val else epochs_run,
        "stopping": ("early stopping on the validation loss, patience "
                     f"{config.patience}" if use_val else "fixed number of epochs"),
        "new_head": new_head, "seconds": round(time.perf_counter() - start, 2),
        "split": split,
    }
    if config.anchors:
        info["anchor_standardisation"] = anchor_stats
    return model, info


def _rows_digest(rows: np.ndarray, hashes) -> str:
    """sha256 over the held-out images' content hashes (or row numbers when none are known)."""
    items = [str(hashes[i]) for i in rows] if hashes is not None else [str(int(i)) for i in rows]
    return sha256_bytes("\n".join(items).encode())


# -- the stage ------------------------------------------------------------------------------------


def transfer(model_dir: str | Path, features: str | Path | np.ndarray, out_dir: str | Path,
             config: TransferConfig = TransferConfig(), reporter: Reporter | None = None,
             expected_backbone: str | None = None, expected_weights_hash: str | None = None,
             anchor_values: dict[str, np.ndarray] | None = None) -> dict:
    """Fine-tune the model in ``model_dir`` on target features; save to ``out_dir``.

    ``features`` is a folder written by the features stage (its manifest is checked against the
    model's backbone) or a (n, D) array (then pass ``expected_backbone`` / ``expected_weights_hash``
    to have them checked). ``anchor_values`` as in ``fine_tune`` (anchored runs only). Returns the
    metrics written to ``metrics.json``.
    """
    from drlcore.disentangle.artifacts import load_model, save_model
    from drlcore.data.rundir import load_features_dir

    reporter = reporter or NullReporter()
    data_fingerprint = hashes = None
    if isinstance(features, (str, Path)):
        feats, images, fmanifest = load_features_dir(features)
        expected_backbone = fmanifest.get("backbone")
        expected_weights_hash = fmanifest.get("weights_hash")
        data_fingerprint = (fmanifest.get("data") or {}).get("fingerprint")
        if images is not None and "sha256" in getattr(images, "columns", ()):
            hashes = images["sha256"].astype(str).to_numpy()
    else:
        feats = features
    source, meta = load_model(model_dir, expected_backbone=expected_backbone,
                              expected_weights_hash=expected_weights_hash,
                              expected_feature_dim=np.shape(feats)[1])
    model, info = fine_tune(source, feats, config, anchor_values, reporter)
    split = info.pop("split")

    codes = encode_means(model, feats)
    latent_std, inactive = latent_activity(codes)
    J = model.config.latent_dim
    if info["new_head"]:
        dim_factor = [None] * J
        dim_names = [f"z{j}: unassigned" for j in range(J)]
    else:
        dim_factor, dim_names = list(meta["dim_factor"]), list(meta["dim_names"])
    for axis, name in enumerate(config.anchors):
        short = name.removeprefix("morph_")
        dim_factor[axis] = f"anchor:{short}"
        dim_names[axis] = f"z{axis}: {short} (anchored)"
    metrics = {
        "transfer": {**info, "latent_std": latent_std.tolist(), "inactive_dims": inactive},
        "source": {"model_hash": meta["model_hash"], "metrics": meta.get("metrics", {})},
    }
    if config.anchors:
        metrics["anchors"] = anchor_report(codes, anchor_values, config.anchors,
                                           split["heldout"], split["train"])
        metrics["anchor_heldout"] = {"rows": split["heldout"].tolist(),
                                     "sha256": _rows_digest(split["heldout"], hashes)}
    training = {"method": "transfer", "objective": "beta-vae", "config": config.to_dict(),
                "optimizer": "AdamW", "data_fingerprint": data_fingerprint,
                "source_training": meta.get("training", {})}
    digest = save_model(out_dir, model, {
        "backbone": meta["backbone"],
        "dim_names": dim_names,
        "dim_factor": dim_factor,
        "inactive_dims": inactive,
        "training": training,
        "parent_model_hash": meta["model_hash"],
        "metrics": metrics,
        "extra": {"anchored": [j < len(config.anchors) for j in range(J)]},
    })
    last = info["curve"][info["best_epoch"]]
    val_text = f", val loss {last['val']['loss']:.4g}" if last["val"] else ""
    reporter.message(f"transferred model {digest[:12]} -> {out_dir}: epoch {info['best_epoch']} "
                     f"of {info['epochs_run']}, train loss {last['train']['loss']:.4g}{val_text}")
    metrics["model_hash"] = digest
    return metrics
