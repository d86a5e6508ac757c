"""The settings of ``drl run``, built in one place for the command line and the Python API.

``drl run DATA --out OUT --backbone ... --anchor area`` (:mod:`drlcore.cli`) and
``drl.run(DATA, OUT, backbone=..., anchor="area")`` (:mod:`drlcore.runs.api`) name the same
options and turn them into the same :class:`~drlcore.runs.pipeline.PipelineConfig` here, so the
two can never disagree on a default or a check. Option names are the command line's, with
``-`` written ``_``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from drlcore.errors import DrlError

__all__ = ["FEATURE_OPTIONS", "RUN_OPTIONS", "feature_config", "pipeline_config", "cluster_config",
           "prepare_run_folder"]

# Options of the features stage (every command that embeds images takes them).
FEATURE_OPTIONS = ("backbone", "weights", "cache_dir", "batch_size", "preprocess", "no_pad",
                   "precision", "engine", "channels", "channel_pattern")
# Options of ``drl run`` besides the feature options (``force`` and the cluster options are not
# settings of the run: the outputs are the same either way).
RUN_OPTIONS = ("source_model", "known_classes", "epochs", "latent_dim", "anchor", "mask_channel")


def feature_config(*, backbone: str | None = "effnet-lite0", weights: str | None = None,
                   cache_dir: str | None = None, batch_size: int = 32,
                   preprocess: str | None = None, no_pad: bool = False,
                   precision: str | None = "auto", channels: str | None = None,
                   channel_pattern: str | None = None, engine: str | None = "auto",
                   **overrides):
    """``--backbone --weights --cache-dir --batch-size --preprocess --no-pad --precision
    --engine --channels --channel-pattern`` as a ``FeatureConfig``; ``overrides`` are further
    ``FeatureConfig`` fields (unknown ones are an error there). ``backbone=None`` keeps the
    ``FeatureConfig`` default; ``channel_pattern="none"`` keeps every file separate."""
    from drlcore.embedding.features import FeatureConfig

    if no_pad:
        if preprocess not in (None, "stretch"):
            raise DrlError(f"--no-pad means --preprocess stretch; it contradicts --preprocess "
                           f"{preprocess}")
        preprocess = "stretch"
    kwargs = dict(batch_size=batch_size, preprocess=preprocess or "auto", cache_dir=cache_dir,
                  weights=weights, channels=channels, precision=precision or "auto",
                  engine=engine or "auto")
    if channel_pattern is not None:
        kwargs["channel_pattern"] = None if channel_pattern.lower() == "none" else channel_pattern
    if backbone is not None:
        kwargs["backbone"] = backbone
    kwargs.update(overrides)
    return FeatureConfig(**kwargs)


def pipeline_config(features, *, source_model: str | None = None,
                    known_classes=None, epochs: int | None = None,
                    latent_dim: int | None = None, anchor: str | None = None,
                    mask_channel: str | None = None):
    """``drl run``'s own options (``--source-model --known-classes --epochs --latent-dim
    --anchor --mask-channel``) over ``features`` (a ``FeatureConfig``) as a ``PipelineConfig``. ``anchor``
    is the command line's comma list (``"area,eccentricity"``) or a sequence of names."""
    from drlcore.runs.pipeline import PipelineConfig

    if isinstance(known_classes, str):
        known_classes = (known_classes,)
    return PipelineConfig(
        features=features,
        source_model=None if source_model is None else str(source_model),
        known_classes=tuple(known_classes) if known_classes else None,
        transfer_epochs=epochs,
        latent_dim=latent_dim,
        anchors=_anchors(anchor),
        mask_channel=mask_channel,
    )


def _anchors(anchor):
    """``--anchor``: absent or ``auto`` -> chosen from the data after measuring (the default),
    ``none`` -> no anchored axis, else the named measurements."""
    from drlcore.disentangle.transfer import anchor_names

    if anchor is None or (isinstance(anchor, str) and anchor.strip().lower() == "auto"):
        return "auto"
    if isinstance(anchor, str) and anchor.strip().lower() == "none":
        return ()
    return anchor_names(anchor) if anchor else ()


def cluster_config(cluster: str | None = None, scheduler: str | None = None,
                   workers: int | None = None):
    """``--cluster / --scheduler / --workers`` as a ``ClusterConfig`` (None without them).
    Checked before any work: without Dask this is the one error the user sees."""
    if cluster is None and scheduler is None:
        if workers is not None:
            raise DrlError("--workers sizes the cluster of --cluster local; give that too")
        return None
    from drlcore.embedding.distributed import ClusterConfig, require_dask

    config = ClusterConfig(cluster=cluster, scheduler=scheduler, n_workers=workers)
    require_dask()
    return config


def prepare_run_folder(out: str | os.PathLike, data: str | os.PathLike | None,
                       force: bool = False, cache_dir: str | os.PathLike | None = None) -> Path:
    """Every command that writes a run folder checks its ``out`` (and cache folder) here first:
    a folder that holds other files and is not a run is refused unless ``force``."""
    from drlcore.data.outdir import check_cache_dir, prepare_output_dir

    note = check_cache_dir(cache_dir)
    if note:  # a cache folder that cannot be written only costs speed: say so, go on
        print(f"note: {note}", file=sys.stderr)
    return prepare_output_dir(out, data, force=force)
