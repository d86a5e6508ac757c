"""Run discovery and cached loaders for the explorer.

Tables and JSON files are cached keyed by the file path *and* its modification stamp, so a
re-analysed run is picked up without restarting the app. Nothing here computes what the
engine owns; anomaly re-scoring goes through ``drlcore.analysis.anomaly``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.data import rundir
from drlcore.errors import DrlError
from drlcore.io import read_json
from drlcore.data.rundir import RUNS_DIR_ENV, default_runs_dir  # noqa: F401 - part of this module's API

DEMO_RUN_NAME = "demo-texture-dsprites"  # drlcore.runs.demo.DEMO_NAME (kept literal: no engine import at startup)


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    """Arguments after ``--`` on ``streamlit run explorer/app.py -- ...`` (as ``drl explore`` passes
    them): ``--runs-dir DIR`` and repeated ``--run RUN_DIR``. Unknown arguments are ignored."""
    parser = argparse.ArgumentParser(prog="drl explore", add_help=False, allow_abbrev=False)
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--run", action="append", default=[])
    parser.add_argument("--pipeline-config", default=None)
    return parser.parse_known_args(argv)[0]


def pipeline_config(settings: dict | None = None, backbone: str | None = None,
                    source_model: str | None = None):
    """The ``PipelineConfig`` for data added from the app.

    ``settings`` come from ``--pipeline-config FILE.json`` (lab-wide defaults, e.g. a shared
    cache folder or an in-house source model): top-level keys are ``PipelineConfig`` fields and
    ``"features"`` holds ``FeatureConfig`` fields. Unknown keys are an error, as everywhere.
    The backbone and source model chosen in the page override the file.
    """
    from drlcore.runs.pipeline import PipelineConfig

    settings = dict(settings or {})
    features = dict(settings.pop("features", {}) or {})
    if backbone:
        features["backbone"] = backbone
    if source_model:
        settings["source_model"] = source_model
    return PipelineConfig.from_dict({**settings, "features": features})


def read_pipeline_settings(path: str | None) -> dict:
    if not path:
        return {}
    try:
        settings = read_json(path)
    except (OSError, ValueError) as exc:
        raise DrlError(f"cannot read the pipeline settings file {path}: {exc}") from exc
    if not isinstance(settings, dict):
        raise DrlError(f"{path} must hold a JSON object of pipeline settings")
    return settings


def resolve_runs_dir(cli_value: str | None, environ: dict | None = None) -> Path:
    """``--runs-dir`` wins, then ``$DRL_RUNS_DIR``, then the per-user data folder."""
    environ = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    return default_runs_dir(environ).resolve()


def is_run_dir(path: Path) -> bool:
    """A run the explorer can open (encoded, not still being built)."""
    return rundir.is_complete_run(path)


def list_runs(runs_dir: Path) -> list[Path]:
    """Complete runs under ``runs_dir``: the demo first, then newest first."""
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
    runs.sort(key=lambda p: (not is_demo(p), -p.stat().st_mtime))
    return runs


def is_demo(path: Path) -> bool:
    return path.name == DEMO_RUN_NAME or (path / rundir.DEMO_MARKER).is_file()


def file_stamp(path: Path) -> tuple[int, int]:
    """Cache key part that changes when the file is rewritten (atomic writes change mtime)."""
    try:
        st_ = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st_.st_mtime_ns, st_.st_size)


@st.cache_resource(max_entries=8, show_spinner=False)
def _read_parquet(path: str, stamp: tuple[int, int]) -> pd.DataFrame:
    """One read-only copy of a run table per file version, shared by every session.

    ``st.cache_data`` would unpickle a fresh copy on every access: for a 10^6-object run that
    was a third of each page's server time and one more copy of the table per rerun. The arrays
    are marked read-only so a page that tried to write into the shared table fails loudly;
    :meth:`Run._table` hands out shallow copies, so adding a column never reaches it either.

    Read through :func:`drlcore.data.rundir.read_table`: checked against the run's manifest, and
    a damaged file is a DrlError naming it (never a pyarrow traceback on the page)."""
    table = rundir.read_table(Path(path).parent, Path(path).name)
    _freeze(table)
    return table


@st.cache_data(max_entries=64, show_spinner=False)
def _check_run(run_dir: str, stamps: tuple) -> tuple[bool, str, tuple[str, ...]]:
    report = rundir.check_run(run_dir)
    return report.ok, report.summary(), tuple(report.problems())


def run_check(path: Path) -> tuple[bool, str, tuple[str, ...]]:
    """(intact, one-line summary, one line per damaged or missing file): the words of
    ``drl check``. Files are hashed once per version of the manifest and of each recorded file
    (their stamps key the cache), so listing runs stays cheap."""
    path = Path(path)
    try:
        manifest = rundir.read_manifest(path)
    except DrlError as exc:
        return False, f"{path.name} is damaged: {exc}", ()
    names = sorted(manifest.get(rundir.FILES) or {})
    stamps = (file_stamp(path / rundir.MANIFEST), *(file_stamp(path / n) for n in names))
    return _check_run(str(path), stamps)


@st.cache_data(max_entries=16, show_spinner=False)
def _class_names(run_dir: str, stamp, _objects: pd.DataFrame) -> tuple[str, ...]:
    """Sorted class names of a run's objects table (named by run and stamp; not hashed)."""
    labels = _objects["label"]
    return tuple(sorted(str(v) for v in pd.unique(labels[labels.notna()].to_numpy(object))))


def _freeze(table: pd.DataFrame) -> None:
    for block in table._mgr.blocks:  # pandas' block arrays: the column data itself
        values = getattr(block, "values", None)
        if isinstance(values, np.ndarray):
            values.flags.writeable = False


# The run's JSON files, each through its drlcore.data.rundir reader (the one place that knows their
# layout), cached by the run folder and the file's stamp.
_READERS = {
    rundir.MANIFEST: rundir.read_manifest,
    rundir.ANALYSIS: rundir.read_analysis,
    f"{rundir.MODEL}/{rundir.MODEL_CONFIG}": rundir.model_config,
    f"{rundir.MODEL}/{rundir.MODEL_METRICS}": rundir.model_metrics,
}


@st.cache_data(max_entries=32, show_spinner=False)
def _read_run_json(run_dir: str, name: str, stamp: tuple[int, int]) -> dict:
    return _READERS[name](run_dir)


@st.cache_resource(max_entries=8, show_spinner=False)
def _thumb_store(run_dir: str, stamp) -> rundir.Thumbs:
    """The run's thumbnail store (either layout; its shard index is memory-mapped, so it is
    shared, never copied), reopened when the thumbnails are rewritten."""
    return rundir.open_thumbs(run_dir)


@st.cache_data(max_entries=2048, show_spinner=False)
def _thumb_bytes(run_dir: str, sha: str, stamp) -> bytes | None:
    return _thumb_store(run_dir, stamp).get(sha)


@dataclass(frozen=True)
class Run:
    """Read-only view of one run folder: a thin cached wrapper over :mod:`drlcore.data.rundir`.

    Tables are read once per file version and shared read-only across reruns and sessions
    (``st.cache_resource``); JSON files are cached by path and file stamp (``st.cache_data``);
    each ``Run`` is built once per rerun and keeps its shallow table copies (``cached_property``).
    """

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def _table(self, name: str) -> pd.DataFrame | None:
        p = self.path / name
        return _read_parquet(str(p), file_stamp(p)).copy(deep=False) if p.is_file() else None

    def _json(self, name: str) -> dict:
        return _read_run_json(str(self.path), name, file_stamp(self.path / name))

    @property
    def objects_stamp(self) -> tuple[int, int]:
        """Changes whenever the objects table is rewritten (a cache key for derived views)."""
        return file_stamp(self.path / rundir.OBJECTS)

    @property
    def version(self) -> tuple:
        """Changes whenever any table or JSON file a view is drawn from is rewritten."""
        return (self.objects_stamp, file_stamp(self.path / rundir.CORRELATIONS),
                file_stamp(self.path / rundir.ANALYSIS), file_stamp(self.path / rundir.MANIFEST))

    @cached_property
    def objects(self) -> pd.DataFrame:
        df = self._table(rundir.OBJECTS)
        if df is None:
            raise DrlError(f"{self.path} has no {rundir.OBJECTS}; it is not a finished run")
        if "row" not in df.columns:
            df = df.assign(row=np.arange(len(df)))
        return df

    @cached_property
    def correlations(self) -> pd.DataFrame | None:
        return self._table(rundir.CORRELATIONS)

    @cached_property
    def analysis(self) -> dict:
        return self._json(rundir.ANALYSIS)

    @cached_property
    def manifest(self) -> dict:
        """The manifest's stage entries by stage name (``features``, ``model``, ``encode``,
        ``pipeline``, ``analyze``), whatever layout the folder was written in."""
        return self._json(rundir.MANIFEST)["stages"]

    @cached_property
    def model_config(self) -> dict:
        return self._json(f"{rundir.MODEL}/{rundir.MODEL_CONFIG}")

    @cached_property
    def model_metrics(self) -> dict:
        return self._json(f"{rundir.MODEL}/{rundir.MODEL_METRICS}")

    @property
    def skipped(self) -> pd.DataFrame | None:
        p = self.path / rundir.SKIPPED
        if not p.is_file():
            return None
        return pd.read_csv(p)

    @cached_property
    def latent_columns(self) -> list[str]:
        return rundir.latent_columns(self.objects.columns)

    @cached_property
    def zscore_columns(self) -> list[str]:
        return rundir.zscore_columns(self.objects.columns)

    @cached_property
    def morph_columns(self) -> list[str]:
        return rundir.morph_columns(self.objects)

    @cached_property
    def dim_names(self) -> list[str]:
        """Display names from the run's own data (analysis.json ``dim_names``: ``z3: size``,
        ``z4 (unnamed)``); the model's source names where the run has not been analysed."""
        return rundir.display_dim_names(self.analysis, self.model_config, len(self.latent_columns))

    @cached_property
    def source_dim_names(self) -> list[str]:
        """Names the axes got on the synthetic source (model/config.json), ``z3: scale``."""
        return rundir.dim_names(self.model_config, len(self.latent_columns))

    @cached_property
    def axes(self) -> list[dict]:
        """analysis.json's per-axis naming records (drlcore.analysis.naming), [] for an older analysis."""
        return rundir.axis_records(self.analysis, len(self.latent_columns))

    @property
    def inactive_dims(self) -> set[int]:
        return set(self.model_config.get("inactive_dims") or [])

    @property
    def has_labels(self) -> bool:
        df = self.objects
        return "label" in df.columns and df["label"].notna().any()

    @cached_property
    def classes(self) -> list[str]:
        if not self.has_labels:
            return []
        return list(_class_names(str(self.path), self.objects_stamp, self.objects))

    def projections(self) -> list[str]:
        cols = set(self.objects.columns)
        return [p for p in ("umap", "pca") if {f"{p}_x", f"{p}_y"} <= cols]

    @property
    def thumbs_stamp(self) -> tuple:
        """Changes when thumbnails are added (shards rewritten, or files added to the folder)."""
        folder = self.path / rundir.THUMBS
        return (file_stamp(folder / rundir.THUMB_TOC), file_stamp(folder))

    @property
    def thumbs(self) -> rundir.Thumbs:
        """The run's thumbnails (:class:`drlcore.data.rundir.Thumbs`, shards or one file each)."""
        return _thumb_store(str(self.path), self.thumbs_stamp)

    def thumb_bytes(self, sha: str) -> bytes | None:
        return _thumb_bytes(str(self.path), str(sha), self.thumbs_stamp)

    @cached_property
    def features_manifest(self) -> dict:
        """The features stage's manifest entry ({} when the features were not made here)."""
        return rundir.stage_entry({"stages": self.manifest}, "features")

    def provenance(self) -> dict:
        """The stamp every export carries: what model, what data, which parameters."""
        return rundir.provenance(self.path, manifest={"stages": self.manifest},
                                 config=self.model_config, analysis=self.analysis,
                                 n_objects=len(self.objects))


def backbone_summary(run: Run) -> tuple[str, str]:
    """(backbone name, why it was used) from the manifest, in words for the Datasets page."""
    feats = run.features_manifest
    model_backbone = (run.model_config.get("backbone") or {}).get("name")
    name = feats.get("backbone") or model_backbone or "unknown"
    reason = feats.get("backbone_reason")
    if not reason and model_backbone and model_backbone == name:
        reason = ("the model was trained on this backbone's features, so the images are embedded "
                  "with the same backbone")
    reason = reason or f"recorded in {rundir.MANIFEST} without a reason"
    weights = feats.get("weights_source")
    if weights:
        reason += f"; weights: {weights}"
    if feats.get("dtype"):
        reason += f", {feats['dtype']}"
    engine = feats.get("engine") or {}
    if engine.get("used"):
        reason += f"; engine {engine['used']}"
    precision = feats.get("precision") or {}
    if precision.get("used"):
        reason += f"; precision {precision['used']}"
        if precision.get("reason"):
            reason += f" ({precision['reason']})"
    return name, reason


def pipeline_notes(run: Run) -> list[str]:
    """Notes the pipeline left for the user (e.g. too few images to fine-tune)."""
    return rundir.pipeline_notes({"stages": run.manifest})
