"""Run discovery and cached loaders for the explorer.

Tables are cached with ``st.cache_data`` keyed by the file path *and* its modification stamp,
so a re-analysed run is picked up without restarting the app. Nothing here computes what the
engine owns; anomaly re-scoring goes through ``drlcore.anomaly``.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.errors import DrlError
from drlcore.io import read_json

DEMO_RUN_NAME = "demo-texture-dsprites"  # drlcore.demo.DEMO_NAME (kept literal: no engine import at startup)
RUNS_DIR_ENV = "DRL_RUNS_DIR"
_Z_MEAN = re.compile(r"^z_mean_(\d+)$")
_Z_SCORE = re.compile(r"^z_score_(\d+)$")


def default_runs_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("drl")) / "runs"


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
    import dataclasses

    from drlcore.features import FeatureConfig
    from drlcore.pipeline import PipelineConfig

    settings = dict(settings or {})
    features = dict(settings.pop("features", {}) or {})
    if backbone:
        features["backbone"] = backbone
    if source_model:
        settings["source_model"] = source_model
    known = {f.name for f in dataclasses.fields(PipelineConfig)} - {"features"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise DrlError(f"unknown pipeline setting(s) {unknown}; known: {sorted(known)}")
    if "known_classes" in settings and settings["known_classes"] is not None:
        settings["known_classes"] = tuple(settings["known_classes"])
    return PipelineConfig(features=FeatureConfig.from_dict(features), **settings)


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
    value = cli_value or environ.get(RUNS_DIR_ENV)
    return Path(value).expanduser().resolve() if value else default_runs_dir()


def is_run_dir(path: Path) -> bool:
    return (path / "objects.parquet").is_file() and not path.name.endswith(".partial")


def list_runs(runs_dir: Path) -> list[Path]:
    """Complete runs under ``runs_dir``: the demo first, then newest first."""
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
    runs.sort(key=lambda p: (not is_demo(p), -p.stat().st_mtime))
    return runs


def is_demo(path: Path) -> bool:
    return path.name == DEMO_RUN_NAME or (path / "demo.json").is_file()


def file_stamp(path: Path) -> tuple[int, int]:
    """Cache key part that changes when the file is rewritten (atomic writes change mtime)."""
    try:
        st_ = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st_.st_mtime_ns, st_.st_size)


@st.cache_data(max_entries=8, show_spinner=False)
def _read_parquet(path: str, stamp: tuple[int, int]) -> pd.DataFrame:
    return pd.read_parquet(path)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_json(path: str, stamp: tuple[int, int]) -> dict:
    return read_json(path)


@st.cache_data(max_entries=2048, show_spinner=False)
def _read_bytes(path: str, stamp: tuple[int, int]) -> bytes:
    return Path(path).read_bytes()


@dataclass(frozen=True)
class Run:
    """Read-only view of one run folder.

    Files are cached across reruns by path and file stamp (``st.cache_data``); each ``Run`` is
    built once per rerun, so ``cached_property`` keeps one copy of each table per rerun.
    """

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def _table(self, name: str) -> pd.DataFrame | None:
        p = self.path / name
        return _read_parquet(str(p), file_stamp(p)) if p.is_file() else None

    def _json(self, *parts: str) -> dict:
        p = self.path.joinpath(*parts)
        if not p.is_file():
            return {}
        try:
            return _read_json(str(p), file_stamp(p))
        except ValueError as exc:
            raise DrlError(f"{p} is not valid JSON ({exc}); re-run the stage that writes it") from exc

    @cached_property
    def objects(self) -> pd.DataFrame:
        df = self._table("objects.parquet")
        if df is None:
            raise DrlError(f"{self.path} has no objects.parquet; it is not a finished run")
        if "row" not in df.columns:
            df = df.assign(row=np.arange(len(df)))
        return df

    @cached_property
    def correlations(self) -> pd.DataFrame | None:
        return self._table("correlations.parquet")

    @cached_property
    def analysis(self) -> dict:
        return self._json("analysis.json")

    @cached_property
    def manifest(self) -> dict:
        return self._json("manifest.json")

    @cached_property
    def model_config(self) -> dict:
        return self._json("model", "config.json")

    @cached_property
    def model_metrics(self) -> dict:
        return self._json("model", "metrics.json")

    @property
    def skipped(self) -> pd.DataFrame | None:
        p = self.path / "skipped.csv"
        if not p.is_file():
            return None
        return pd.read_csv(p)

    @cached_property
    def latent_columns(self) -> list[str]:
        cols = [c for c in self.objects.columns if _Z_MEAN.match(c)]
        return sorted(cols, key=lambda c: int(_Z_MEAN.match(c).group(1)))

    @cached_property
    def zscore_columns(self) -> list[str]:
        cols = [c for c in self.objects.columns if _Z_SCORE.match(c)]
        return sorted(cols, key=lambda c: int(_Z_SCORE.match(c).group(1)))

    @cached_property
    def morph_columns(self) -> list[str]:
        df = self.objects
        return [c for c in df.columns if c.startswith("morph_") and c not in ("morph_ok", "morph_note")
                and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]

    @cached_property
    def dim_names(self) -> list[str]:
        """Display names ``z3: scale`` from model/config.json, ``z3`` where the model has none."""
        names = list(self.model_config.get("dim_names") or [])
        n = len(self.latent_columns)
        return [names[j] if j < len(names) and names[j] else f"z{j}" for j in range(n)]

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
        return sorted(self.objects["label"].dropna().astype(str).unique())

    def projections(self) -> list[str]:
        cols = set(self.objects.columns)
        return [p for p in ("umap", "pca") if {f"{p}_x", f"{p}_y"} <= cols]

    def thumb_path(self, sha: str) -> Path:
        return self.path / "thumbs" / f"{sha}.jpg"

    def thumb_bytes(self, sha: str) -> bytes | None:
        p = self.thumb_path(sha)
        return _read_bytes(str(p), file_stamp(p)) if p.is_file() else None

    @cached_property
    def features_manifest(self) -> dict:
        """The features stage's manifest: nested under "features", or (as ``drl run`` writes it)
        the top level of manifest.json with the later stages beside it."""
        man = self.manifest
        if isinstance(man.get("features"), dict):
            return man["features"]
        return man if man.get("stage") == "features" or "backbone" in man else {}

    def provenance(self) -> dict:
        """The stamp every export carries: what model, what data, which parameters."""
        man = self.manifest
        feats = self.features_manifest
        model = self.model_config.get("backbone", {})
        return {
            "run": str(self.path),
            "backbone": feats.get("backbone") or model.get("name"),
            "backbone weights hash": feats.get("weights_hash") or model.get("weights_hash"),
            "model hash": man.get("model", {}).get("model_hash") or man.get("model", {}).get("weights_hash"),
            "data fingerprint": feats.get("data", {}).get("fingerprint"),
            "objects": len(self.objects),
            "analysis parameters": self.analysis.get("config") or self.analysis.get("params") or {},
        }


def backbone_summary(run: Run) -> tuple[str, str]:
    """(backbone name, why it was used) from the manifest, in words for the Datasets page."""
    feats = run.features_manifest
    model_backbone = (run.model_config.get("backbone") or {}).get("name")
    name = feats.get("backbone") or model_backbone or "unknown"
    reason = feats.get("backbone_reason")
    if not reason and model_backbone and model_backbone == name:
        reason = ("the model was trained on this backbone's features, so the images are embedded "
                  "with the same backbone")
    reason = reason or "recorded in manifest.json without a reason"
    weights = feats.get("weights_source")
    if weights:
        reason += f"; weights: {weights}"
    if feats.get("dtype"):
        reason += f", {feats['dtype']}"
    return name, reason


def pipeline_notes(run: Run) -> list[str]:
    """Notes the pipeline left for the user (e.g. too few images to fine-tune)."""
    notes = (run.manifest.get("pipeline") or {}).get("notes") or []
    return [str(n) for n in notes]
