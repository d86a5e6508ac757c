"""Source training (``drl train-source``): a weakly supervised model on a rendered source.

Render pairs of images that differ in ``k`` known factors, embed them with the frozen backbone,
train an Ada-GVAE on the features (:func:`drlcore.disentangle.train.train_weakly`), measure how disentangled
the latents are on freshly rendered held-out images (MIG, DCI, OMES), name each latent dimension
after the factor it encodes, and save the model directory.

Two sources share one interface (``factor_names``, ``factor_sizes``, ``sample_factors``,
``render``, ...), so everything here is written once for both:

- ``dsprites``: Texture-dSprites (:mod:`drlcore.disentangle.dsprites`), the paper's source: shape, colour,
  texture, scale, orientation, position;
- ``cells``: synthetic cells (:mod:`drlcore.disentangle.cells`): size, elongation, orientation, boundary
  irregularity, nucleus size and offset, stain hue and intensity, granularity, background, noise,
  blur, in a stained-smear and two plankton appearances.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drlcore.config import from_dict as _from_dict
from drlcore.errors import DrlError
from drlcore.progress import NullReporter, Reporter
from drlcore.disentangle.train import (METHODS, TrainResult, evaluate_disentanglement, train_unsupervised,
                    train_weakly)

__all__ = ["SOURCES", "SourceTrainConfig", "make_source", "train_source", "train_source_cli"]

SOURCES = ("dsprites", "cells")
# Recorded in the feature-cache key of rendered images (the dsprites value predates the cells
# source and is kept so existing caches stay valid).
_CACHE_SOURCE = {"dsprites": "texture-dsprites", "cells": "synthetic-cells"}


@dataclass(frozen=True)
class SourceTrainConfig:
    """Settings of ``drl train-source``.

    Budget (default effnet-lite0 on a 2-core CPU). The backbone dominates: ~0.06 CPU-s per
    224 px image, i.e. ~30 img/s on two free cores; rendering is ~1 ms (dSprites) or ~5 ms
    (cells) per image. The defaults render and embed ~8,400 images with dSprites (2,000 anchors x
    2 variants -> 4,000 pairs over ~5,960 distinct training images; 1,000 held-out samples and
    7 x 100 one-factor pairs for evaluation) and ~9,600 with cells (13 x 100 one-factor pairs),
    and train 2,000 steps of 128 pairs (~2.4 GFLOP a step). Measured on the shared 2-core
    development machine (load 5-8, so 2-4x slower than free cores), dSprites:
    embedding 839 s; Ada-GVAE 3,000 steps 388 s: MIG 0.18, DCI-D 0.27, OMES 0.32 vs beta-VAE
    0.03 / 0.05 / 0.26; 2,000 steps (defaults): MIG 0.19, DCI-D 0.26, OMES 0.31, i.e. the last
    third of the steps bought nothing measurable. Anchors are reused ``variants_per_anchor``
    times, which multiplies pairs without multiplying the images to embed. All images go through
    the feature cache, so a rerun with the same data settings only renders (seconds).

    ``k`` is the number of factors changed per pair; ``None`` draws it from 1..K-1 per pair (the
    paper's k=rand setting). Ada-GVAE does not need to know it either way.
    """

    method: str = "ada-gvae"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 1.0
    k: int | None = 1
    latent_dim: int = 10
    hidden_dims: tuple[int, ...] = (512, 256)
    seed: int = 0
    n_anchors: int = 2000
    variants_per_anchor: int = 2
    n_eval: int = 1000
    n_omes_pairs_per_factor: int = 100
    # Which rendered source to train on (SOURCES).
    source: str = "dsprites"
    # Texture-dSprites settings as DSpritesConfig.to_dict(); None = the renderer's defaults (all
    # seven factors at full cardinality: the source should cover as many ways of varying as the
    # renderer offers, and cardinalities cost nothing - only the number of images does).
    dsprites: dict | None = None
    # Synthetic-cell settings as CellsConfig.to_dict(); None = the renderer's defaults (all 13
    # factors).
    cells: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.method not in METHODS:
            raise DrlError(f"unknown training method {self.method!r}; choose one of {METHODS}")
        if self.source not in SOURCES:
            raise DrlError(f"unknown source {self.source!r}; choose one of {SOURCES}")
        other = "cells" if self.source == "dsprites" else "dsprites"
        if getattr(self, other) is not None:
            raise DrlError(f"SourceTrainConfig: {other} settings given but the source is "
                           f"{self.source!r}")
        for name in ("steps", "batch_size", "latent_dim", "n_anchors", "variants_per_anchor",
                     "n_eval", "n_omes_pairs_per_factor"):
            if int(getattr(self, name)) < 1:
                raise DrlError(f"SourceTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k is not None and int(self.k) < 1:
            raise DrlError(f"SourceTrainConfig.k must be >= 1 or None (random), got {self.k}")
        if self.lr <= 0 or self.beta < 0:
            raise DrlError("SourceTrainConfig: lr must be > 0 and beta >= 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SourceTrainConfig:
        return _from_dict(cls, d)


def make_source(config: SourceTrainConfig, image_size: int):
    """The renderer ``config`` names, drawing at ``image_size`` (the backbone's input side)."""
    if config.source == "cells":
        from drlcore.disentangle.cells import CellsConfig, SyntheticCells

        cells_config = CellsConfig.from_dict(config.cells) if config.cells else CellsConfig()
        return SyntheticCells(dataclasses.replace(cells_config, image_size=image_size))
    from drlcore.disentangle.dsprites import DSpritesConfig, TextureDSprites

    ds_config = DSpritesConfig.from_dict(config.dsprites) if config.dsprites else DSpritesConfig()
    return TextureDSprites(dataclasses.replace(ds_config, image_size=image_size))


def _headline(ev: dict) -> dict:
    """The few numbers a person compares at a glance."""
    return {"mig": ev["mig"], "dci_disentanglement": ev["dci"].get("disentanglement"),
            "dci_completeness": ev["dci"].get("completeness"),
            "dci_informativeness": ev["dci"].get("informativeness"),
            "omes": ev["omes"].get("omes"), "active_dims": len(ev["dim_factor"])
            - len(ev["inactive_dims"])}


def _embed_factor_rows(ds, backbone, rows: np.ndarray, cache, reporter: Reporter, stage: str,
                       chunk: int = 256) -> np.ndarray:
    """Render and embed each factor row; in chunks, so memory stays at one chunk of images."""
    from drlcore.embedding.features import embed_arrays

    out = np.empty((rows.shape[0], backbone.spec.feature_dim), dtype=np.float32)
    with reporter.stage(stage, total=rows.shape[0], unit="img") as bar:
        for start in range(0, rows.shape[0], chunk):
            part = rows[start:start + chunk]
            out[start:start + len(part)] = embed_arrays(backbone, ds.render(part), cache, None)
            bar.update(len(part))
    return out


def _embed_unique(ds, backbone, rows: np.ndarray, cache, reporter: Reporter,
                  stage: str) -> np.ndarray:
    """Features for every row of ``rows``, rendering and embedding each distinct row once."""
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    return _embed_factor_rows(ds, backbone, unique, cache, reporter, stage)[inverse.reshape(-1)]


def _backbone_meta(backbone) -> dict:
    spec = backbone.spec
    return {"name": spec.name, "timm_name": spec.timm_name, "weights_hash": backbone.weights_hash,
            "feature_dim": int(spec.feature_dim), "dtype": getattr(backbone, "dtype", None)}


def train_source(out_dir: str | Path, backbone, config: SourceTrainConfig = SourceTrainConfig(),
                 reporter: Reporter | None = None, cache=None,
                 compare_baseline: bool = False) -> dict:
    """Train a source model on the rendered source of ``config`` and save it to ``out_dir``.

    Returns the metrics written to ``metrics.json``. With ``compare_baseline`` a beta-VAE is
    trained on the same training images with the same number of steps and images per step, and
    evaluated on the same held-out data; its scores are recorded beside the model's.
    """
    from drlcore.disentangle.artifacts import save_model
    from drlcore.disentangle.dsprites import sample_one_factor_pairs, sample_weak_pairs

    reporter = reporter or NullReporter()
    started = time.perf_counter()
    ds = make_source(config, backbone.spec.input_size)
    factor_names = list(ds.factor_names)
    rng = np.random.default_rng(config.seed)

    # Training pairs, then fresh held-out data drawn after them from the same stream: held-out
    # images may coincide with training ones by chance (the factor spaces have ~10^7-10^8
    # points), but they are sampled independently of the training set.
    f1, f2, changed = sample_weak_pairs(ds, config.n_anchors, config.k,
                                        config.variants_per_anchor, rng)
    eval_factors = ds.sample_factors(config.n_eval, rng)
    p1, p2, pair_factor = sample_one_factor_pairs(ds, config.n_omes_pairs_per_factor, rng)

    n_pairs = f1.shape[0]
    train_feats = _embed_unique(ds, backbone, np.concatenate([f1, f2]), cache, reporter,
                                "rendering + embedding training pairs")
    x1, x2 = train_feats[:n_pairs], train_feats[n_pairs:]
    eval_feats = _embed_unique(ds, backbone, np.concatenate([eval_factors, p1, p2]), cache,
                               reporter, "rendering + embedding held-out images")
    n_pp = p1.shape[0]
    x_eval = eval_feats[:config.n_eval]
    pair_feats = (eval_feats[config.n_eval:config.n_eval + n_pp], eval_feats[config.n_eval + n_pp:])
    embed_seconds = time.perf_counter() - started

    common = dict(latent_dim=config.latent_dim, hidden_dims=config.hidden_dims,
                  steps=config.steps, lr=config.lr, weight_decay=config.weight_decay,
                  beta=config.beta, seed=config.seed, reporter=reporter)
    results: dict[str, TrainResult] = {}
    if config.method == "ada-gvae":
        results["ada-gvae"] = train_weakly(x1, x2, batch_size=config.batch_size, **common)
    if config.method == "beta-vae" or compare_baseline:
        # Same budget: as many steps, and as many images per step (a pair is two images).
        unpaired = np.concatenate([x1, x2])
        results["beta-vae"] = train_unsupervised(unpaired, batch_size=2 * config.batch_size,
                                                 **common)

    reporter.message("evaluating on held-out renders (MIG, DCI, OMES)")
    evaluations = {name: evaluate_disentanglement(r.model, x_eval, eval_factors, pair_feats,
                                                  pair_factor, factor_names, seed=config.seed)
                   for name, r in results.items()}
    chosen = evaluations[config.method]
    model = results[config.method].model

    metrics: dict[str, Any] = {
        "method": config.method,
        "source": config.source,
        "headline": _headline(chosen),
        "evaluation": chosen,
        "training_curve": results[config.method].curve,
        "timing_seconds": {"render_and_embed": round(embed_seconds, 2),
                           **{f"train_{n}": round(r.seconds, 2) for n, r in results.items()},
                           "total": round(time.perf_counter() - started, 2)},
        "data": {"n_pairs": int(n_pairs), "n_train_images": int(len(np.unique(
            np.concatenate([f1, f2]), axis=0))), "changed_factors_per_pair_mean":
            float(np.asarray(changed).sum(axis=1).mean()), "factor_names": factor_names},
    }
    if compare_baseline:
        metrics["comparison"] = {name: _headline(ev) for name, ev in evaluations.items()}
        metrics["baseline"] = {"method": "beta-vae", "evaluation": evaluations["beta-vae"],
                               "training_curve": results["beta-vae"].curve}

    # The renderer settings sit under the source's own key ("dsprites" as before the cells
    # source existed, so older readers such as the demo find them where they always were).
    training = {"method": config.method, "objective": "ada-gvae" if config.method == "ada-gvae"
                else "beta-vae", "config": config.to_dict(), "source": config.source,
                config.source: ds.config.to_dict(), "optimizer": "AdamW",
                "compare_baseline": compare_baseline}
    digest = save_model(out_dir, model, {
        "backbone": _backbone_meta(backbone),
        "dim_names": chosen["dim_names"],
        "dim_factor": chosen["dim_factor"],
        "inactive_dims": chosen["inactive_dims"],
        "training": training,
        "metrics": metrics,
    })
    h = metrics["headline"]
    reporter.message(f"source model {digest[:12]} -> {out_dir}: MIG {h['mig']:.3f}, "
                     f"DCI-D {h['dci_disentanglement']:.3f}, OMES {h['omes']:.3f}, "
                     f"{h['active_dims']} active dims")
    metrics["model_hash"] = digest
    return metrics


def train_source_cli(out_dir: str | Path, backbone_name: str, weights: str | None = None,
                     config: SourceTrainConfig = SourceTrainConfig(), cache_dir: str | None = None,
                     compare_baseline: bool = False, reporter: Reporter | None = None) -> dict:
    """``drl train-source``: load the backbone and the feature cache, then ``train_source``."""
    from drlcore.embedding.backbones import load_backbone
    from drlcore.data.cache import FeatureCache, cache_key, feature_cache_dir
    from drlcore.embedding.features import preprocessing_of

    backbone = load_backbone(backbone_name, weights=weights, cache_dir=cache_dir)
    # Rendered images are made square at the backbone's input size: no padding, 8-bit.
    preprocessing = {**preprocessing_of(backbone, pad_to_square=False, intensity_range=None),
                     "source": _CACHE_SOURCE[config.source]}
    root = feature_cache_dir(cache_dir)
    cache = FeatureCache(root, cache_key(backbone.spec.name, backbone.weights_hash, backbone.dtype,
                                         preprocessing, backbone.engine),
                         info={"backbone": backbone.spec.name, "weights_hash": backbone.weights_hash,
                               "dtype": backbone.dtype, "engine": backbone.engine,
                               "preprocessing": preprocessing})
    return train_source(out_dir, backbone, config, reporter=reporter, cache=cache,
                        compare_baseline=compare_baseline)
