"""``drl run``: the one-shot pipeline a biologist uses.

features -> transfer from the shipped source model -> encode -> analyze, in one run folder.

Each stage leaves complete files or nothing (atomic writes; the transferred model is built in a
``.partial`` folder and renamed), and each is skipped when its inputs have not changed, so a rerun
after an interruption resumes where it stopped and a second run on the same data is served from
caches: features from the feature cache, the transferred model from the model cache (keyed by
source model, features and transfer settings), analysis from its own content key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drlcore.errors import DrlError
from drlcore.data import rundir
from drlcore.io import fingerprint, sha256_file
from drlcore.progress import NullReporter, Reporter

__all__ = ["PipelineConfig", "run_pipeline", "shipped_source_model", "resolve_source_model", "ASSETS_DIR",
           "DEFAULT_SOURCE", "default_source"]

def _assets_dir() -> Path:
    """The shipped models: the package ``drlcore.assets`` (the repo's ``assets/`` folder in an
    editable install, installed files in a wheel)."""
    import importlib.resources

    return Path(str(importlib.resources.files("drlcore.assets")))


ASSETS_DIR = _assets_dir()
PIPELINE_VERSION = 3  # 2: anchored transfers stop early on the full objective (anchor term included)
# 3: default anchors and latent size chosen from the data (drlcore.analysis.axis_card)
# Fine-tuning a VAE on fewer objects than this only memorises them.
MIN_IMAGES_FOR_TRANSFER = 32


def _default_feature_config():
    from drlcore.embedding.features import FeatureConfig

    return FeatureConfig()


@dataclass(frozen=True)
class PipelineConfig:
    features: object = field(default_factory=_default_feature_config)  # drlcore.embedding.features.FeatureConfig
    source_model: str | None = None  # default: the shipped model for the backbone
    transfer: bool = True  # False: encode with the source model as is (the demo does this)
    transfer_epochs: int | None = None  # a ceiling: early stopping decides (TransferConfig)
    # None: chosen from the data, the anchors plus a label-free number of free axes
    # (axis_card.free_axis_count); an int fixes it (10 keeps the source model's head and names).
    latent_dim: int | None = None
    # "auto": the families the raw features can read (axis_card.select_anchors); () or "none":
    # no anchors; a list: those morphology features, tied to the first axes (e.g. morph_area).
    anchors: tuple[str, ...] | str = "auto"
    known_classes: tuple[str, ...] | None = None
    umap: bool = True
    extra_columns: str | None = None  # a Parquet file with columns joined onto objects by "path"
    # Multi-channel images: the channel the object mask is cut from (AnalyzeConfig.mask_channel).
    mask_channel: str | None = None

    def __post_init__(self) -> None:
        # Checked here, not at the transfer stage: a misspelt anchor fails before any embedding.
        if isinstance(self.anchors, str) and self.anchors.strip().lower() in ("auto", "none", ""):
            object.__setattr__(self, "anchors", "auto" if self.anchors.strip().lower() == "auto"
                               else ())
        elif self.anchors:
            from drlcore.disentangle.transfer import anchor_names

            object.__setattr__(self, "anchors", anchor_names(self.anchors))
        else:
            object.__setattr__(self, "anchors", ())

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        """Settings as JSON (``drl explore --pipeline-config FILE``): ``PipelineConfig`` fields,
        with ``"features"`` holding ``FeatureConfig`` fields. Unknown keys are an error."""
        from drlcore.config import from_dict
        from drlcore.embedding.features import FeatureConfig

        values = dict(d) if isinstance(d, dict) else d
        if isinstance(values, dict) and "features" in values:
            values["features"] = FeatureConfig.from_dict(values["features"] or {})
        return from_dict(cls, values, "pipeline")


# Shipped source models by the rendered source they were trained on: folder name per backbone.
SHIPPED_SOURCES = {"dsprites": "source-{backbone}", "cells": "source-cells-{backbone}"}


# The default source, decided by benchmarks/axis_quality.py on the two real sets (the demo left
# out: it is rendered Texture-dSprites, the dsprites model's own domain). Discovered axes, same
# class information (blood 0.81 vs 0.81, plankton 0.97 vs 0.96 of raw), better area axes with
# cells (blood rho 0.69 vs 0.63-0.65; plankton with canvas 0.47 vs 0.38), open set level.
DEFAULT_SOURCE = "cells"


def default_source(backbone: str) -> str:
    """``cells`` where it is shipped for ``backbone``, else ``dsprites``."""
    folder = ASSETS_DIR / SHIPPED_SOURCES[DEFAULT_SOURCE].format(backbone=backbone)
    return DEFAULT_SOURCE if (folder / rundir.MODEL_CONFIG).is_file() else "dsprites"


def shipped_source_model(backbone: str, source: str | None = None) -> Path:
    """The shipped source model of ``source`` (default: ``default_source(backbone)``)."""
    source = source or default_source(backbone)
    if source not in SHIPPED_SOURCES:
        raise DrlError(f"unknown source {source!r}; shipped sources: {sorted(SHIPPED_SOURCES)}")
    path = ASSETS_DIR / SHIPPED_SOURCES[source].format(backbone=backbone)
    if not (path / rundir.MODEL_CONFIG).is_file():
        raise DrlError(
            f"no shipped {source} source model for backbone {backbone!r} (looked in {path}). "
            f"Train one with `drl train-source --source {source} --backbone {backbone} --out "
            f"MODEL_DIR` and pass `--source-model MODEL_DIR`, or use the default backbone "
            f"effnet-lite0.")
    return path


def resolve_source_model(source_model: str | None, backbone: str) -> Path:
    """``--source-model``: a model folder, or ``dsprites`` / ``cells`` for the shipped model of
    that source (a folder of that name is reached as ``./cells``); None = ``default_source``."""
    if not source_model:
        return shipped_source_model(backbone)
    if source_model in SHIPPED_SOURCES:
        return shipped_source_model(backbone, source_model)
    return Path(source_model)


def choose_axes(run_dir: Path, config: PipelineConfig, reporter: Reporter) -> tuple[dict, dict | None]:
    """The anchors and the latent size of the transfer: as configured, or chosen from the data
    (``anchors="auto"``, ``latent_dim=None``). Returns the choice (recorded in the manifest) and
    the morphology table when it was measured (the anchor values are read from it)."""
    from drlcore.analysis import axis_card
    from drlcore.analysis.analyze import measure_morphology
    from drlcore.disentangle.transfer import anchor_names

    choice: dict = {}
    morph = None
    features = rundir.load_features(run_dir, full=False)  # just written and recorded
    finite = np.isfinite(features).all(axis=1)
    if config.anchors == "auto":
        reporter.message("transfer: measuring morphology to choose the anchored axes")
        morph = measure_morphology(run_dir, config.features.cache_dir, reporter,
                                   mask_channel=config.mask_channel)
        sel = axis_card.select_anchors(np.asarray(features)[finite],
                                       morph[finite].reset_index(drop=True))
        anchors = tuple(sel["anchors"])
        choice["anchors"] = {"mode": "auto", **sel}
    else:
        anchors = anchor_names(config.anchors) if config.anchors else ()
        choice["anchors"] = {"mode": "given" if anchors else "none", "anchors": list(anchors)}
    if config.latent_dim is None:
        free = axis_card.free_axis_count(np.asarray(features)[finite])
        latent_dim = len(anchors) + free["n_free"]
        choice["free"] = {"mode": "auto", **free}
    else:
        latent_dim = int(config.latent_dim)
        choice["free"] = {"mode": "given", "n_free": max(0, latent_dim - len(anchors))}
    choice["latent_dim"] = latent_dim
    if anchors:
        reporter.message(f"transfer: {latent_dim} axes, {len(anchors)} anchored to "
                         f"{', '.join(a.removeprefix('morph_') for a in anchors)}")
    return choice, morph


def _transfer_stage(source: Path, run_dir: Path, config: PipelineConfig, reporter: Reporter,
                    cache_notes: list[str], choice: dict | None = None, morph=None,
                    on_training=None) -> Path:
    from drlcore.data.cache import ContentStore, cache_root, cache_write_note
    from drlcore.analysis.analyze import measure_anchor_values
    from drlcore.analysis.axis_card import measured_values
    from drlcore.disentangle.transfer import TransferConfig, transfer

    if choice is None:
        choice, morph = choose_axes(run_dir, config, reporter)
    settings = {"latent_dim": choice["latent_dim"],
                "anchors": tuple(choice["anchors"]["anchors"])}
    if config.transfer_epochs is not None:
        settings["epochs"] = config.transfer_epochs
    tconfig = TransferConfig(**settings)
    key = fingerprint(["transfer", PIPELINE_VERSION, sha256_file(source / rundir.MODEL_WEIGHTS),
                       sha256_file(run_dir / rundir.FEATURES), dataclasses.asdict(tconfig)])
    if rundir.has_model_for(run_dir, key):
        reporter.message("transfer: up to date, reusing the run's model")
        return run_dir / rundir.MODEL

    store = ContentStore(cache_root(config.features.cache_dir) / "models")
    cached = store.get(key)
    if cached is not None and (cached / rundir.MODEL_WEIGHTS).is_file():
        reporter.message("transfer: served from the model cache")
        return rundir.install_model(run_dir, cached, key)

    partial = rundir.new_partial_model(run_dir)
    values = None
    if tconfig.anchors and morph is not None:
        values = {name: measured_values(morph, name) for name in tconfig.anchors}
    elif tconfig.anchors:  # morphology before transfer (the analysis reuses it from the cache)
        reporter.message(f"transfer: measuring {', '.join(tconfig.anchors)} to anchor axes")
        values = measure_anchor_values(run_dir, tconfig.anchors, config.features.cache_dir,
                                       reporter, mask_channel=config.mask_channel)
    if on_training is not None:
        on_training()
    transfer(source, run_dir, partial, tconfig, reporter=reporter, anchor_values=values)
    model_dir = rundir.commit_model(run_dir, partial, key)
    try:
        store.put(key, lambda folder: shutil.copytree(model_dir, folder, dirs_exist_ok=True))
    except OSError as err:  # a full or read-only cache must not fail the run
        note = cache_write_note(cache_root(config.features.cache_dir), err)
        reporter.message(f"note: {note}")
        cache_notes.append(note)
    return model_dir


def _copy_source_model(source: Path, run_dir: Path) -> Path:
    """The source model as it is, as the run's model (keyed by its weights, so a rerun skips)."""
    key = fingerprint(["source-as-is", sha256_file(source / rundir.MODEL_WEIGHTS)])
    if rundir.has_model_for(run_dir, key):
        return run_dir / rundir.MODEL
    return rundir.install_model(run_dir, source, key)


def run_pipeline(data: str | Path, out_dir: str | Path, config: PipelineConfig | None = None,
                 reporter: Reporter | None = None, cluster=None) -> Path:
    """Run every stage on ``data`` into ``out_dir`` and return ``out_dir``.

    ``cluster`` (a :class:`drlcore.embedding.distributed.ClusterConfig`): embed the images on Dask; the
    later stages (a small VAE, the analysis) run here. It is not a setting of the run: the
    outputs are the same either way.

    Warnings that libraries raise on the way (e.g. scikit-learn on constant images) are not
    printed: they are counted into the manifest's ``pipeline.warnings`` (see
    :func:`drlcore.progress.capture_warnings`) and one line says how many there were.
    """
    from drlcore.progress import capture_warnings

    reporter = reporter or NullReporter()
    with capture_warnings() as log:
        out = _run_stages(data, out_dir, config, reporter, cluster)
    entry = rundir.stage_entry(out, "pipeline")
    entry["warnings"] = log.summary()
    rundir.record_stage(out, "pipeline", entry)
    if log.total:
        kinds = len(entry["warnings"])
        reporter.message(f"note: {log.total} message(s) of {kinds} kind(s) from the libraries "
                         f"used were recorded in the run's notes (manifest.json, pipeline "
                         f"warnings), not printed")
    return out


def _run_stages(data, out_dir, config: PipelineConfig | None, reporter: Reporter,
                cluster) -> Path:
    from drlcore.analysis.analyze import (RAW_CLASSIFICATION, AnalyzeConfig,
                                          classify_features_ahead, spare_process_pays,
                                          warm_up_umap)
    from drlcore.analysis.projection import umap_compiled_here
    from drlcore.embedding.features import extract_features
    from drlcore.workers import SideTasks, WorkerPool

    config = config or PipelineConfig()
    reporter = reporter or NullReporter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = config.features.backbone
    source = resolve_source_model(config.source_model, backbone)
    if not (source / rundir.MODEL_CONFIG).is_file():
        raise DrlError(f"source model folder {source} has no {rundir.MODEL_CONFIG}")
    from drlcore.disentangle.artifacts import read_model_config

    model_backbone = read_model_config(source)["backbone"]["name"]  # strict: a clear DrlError
    if model_backbone and model_backbone != backbone:
        raise DrlError(f"the source model {source} was trained on backbone {model_backbone!r} "
                       f"but features are requested with {backbone!r}; pass --backbone "
                       f"{model_backbone} or a source model trained on {backbone!r}")

    reporter.message(f"[1/4] features ({backbone})")
    extract_features(data, out_dir, config.features, reporter=reporter, cluster=cluster)
    features = rundir.load_features(out_dir, full=False)  # just written and recorded
    notes: list[str] = []
    data_entry = rundir.stage_entry(out_dir, "features").get("data") or {}
    # What the caches met (damaged entries recomputed, a cache that could not be written),
    # kept apart from `notes`, which decide whether to fine-tune.
    cache_notes = list(rundir.stage_entry(out_dir, "features").get("notes") or [])
    finite = np.isfinite(features).all(axis=1)
    if config.transfer and finite.sum() < MIN_IMAGES_FOR_TRANSFER:
        notes.append(f"only {int(finite.sum())} usable image(s): too few to fine-tune the source "
                     f"model (at least {MIN_IMAGES_FOR_TRANSFER} are needed), so it is used as "
                     f"it is")
    analysis_config = AnalyzeConfig(known_classes=config.known_classes, umap=config.umap,
                                    cache_dir=config.features.cache_dir,
                                    mask_channel=config.mask_channel)
    with contextlib.ExitStack() as stack:
        side: list[SideTasks] = []

        def start_side_tasks() -> None:
            """Called when the transfer starts training, on one core: the other prepares the
            parts of the analysis that need no model (not before: a rerun whose model is
            cached has nothing to prepare, its analysis is up to date)."""
            if side or not spare_process_pays(int(finite.sum())):
                return
            side.append(SideTasks(stack.enter_context(WorkerPool(1, finish_on_exit=False))))
            if config.umap and not umap_compiled_here():  # else this process maps faster
                side[0].start("compile the UMAP code", warm_up_umap, analysis_config.seed)
            side[0].start(RAW_CLASSIFICATION, classify_features_ahead, out_dir, analysis_config)

        model_dir, choice = _transfer_or_copy(source, out_dir, config, reporter, notes,
                                              cache_notes, start_side_tasks)
        _encode_and_analyze(model_dir, out_dir, config, analysis_config, reporter, notes,
                            cache_notes, data_entry, choice, side[0] if side else None)
    return out_dir


def _transfer_or_copy(source, out_dir, config, reporter, notes, cache_notes, on_training):
    choice = None
    if config.transfer and not notes:
        reporter.message("[2/4] transfer: fine-tuning the source model on these images")
        choice, morph = choose_axes(out_dir, config, reporter)
        model_dir = _transfer_stage(source, out_dir, config, reporter, cache_notes, choice, morph,
                                    on_training)
    else:
        reporter.message("[2/4] transfer skipped: using the source model as it is")
        model_dir = _copy_source_model(source, out_dir)
    rundir.record_files(out_dir, "model", rundir.model_files(out_dir),
                        replace=f"{rundir.MODEL}/")
    return model_dir, choice


def _encode_and_analyze(model_dir, out_dir, config, analysis_config, reporter, notes, cache_notes,
                        data_entry, choice, side) -> None:
    from drlcore.analysis.analyze import analyze_run
    from drlcore.disentangle.encode import encode_run

    reporter.message("[3/4] encode")
    encode_run(model_dir, out_dir, out_dir, reporter=reporter)
    # Before the analysis, which carries these notes into analysis.json.
    # How files became objects comes first: it is what a reader must know to trust the rest.
    rundir.record_stage(out_dir, "pipeline", {
        "version": PIPELINE_VERSION,
        "notes": list(dict.fromkeys([*(data_entry.get("notes") or []), *notes, *cache_notes])),
        "transferred": config.transfer and not notes,
        **({"axes": choice} if choice else {})})
    if config.extra_columns:
        _join_extra_columns(out_dir, Path(config.extra_columns))

    reporter.message("[4/4] analyze")
    analyze_run(out_dir, analysis_config, reporter=reporter, side=side)


def _join_extra_columns(run_dir: Path, extra: Path) -> None:
    import pandas as pd

    objects = rundir.read_table(run_dir, rundir.OBJECTS)
    table = pd.read_parquet(extra)
    new_cols = [c for c in table.columns if c != "path" and c not in objects.columns]
    if not new_cols:
        return
    merged = objects.merge(table[["path", *new_cols]], on="path", how="left")
    assert len(merged) == len(objects), "extra columns must have one row per path"
    rundir.write_objects(run_dir, merged)
    rundir.record_files(run_dir, "pipeline", [rundir.OBJECTS])
