"""``drl export``: a run's results in the formats other tools read.

- ``h5ad``: an AnnData file that ``anndata.read_h5ad`` and scanpy open as they are. ``X`` holds
  the latent means (objects x axes; ``var`` says what each axis is: its name from the run's own
  data, the factor it learned on the synthetic source, whether it is active), ``obs`` the image
  metadata, handcrafted morphology, anomaly scores and reconstruction error, ``obsm`` the 2-D maps
  (``X_umap``, ``X_pca``, scanpy's names) and, on request, the raw backbone features
  (``X_backbone``), ``uns`` the latent-morphology correlations, the classification and open-set
  results and the run's provenance (manifest).
- ``csv`` / ``parquet``: the per-object table as it is (one row per image), for R, Excel or pandas.

The export is a view of files the run already holds; nothing is recomputed. The output is written
atomically, so a failed export never leaves a half file under the final name.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drlcore.errors import DrlError
from drlcore.io import atomic_write_csv, atomic_write_parquet

__all__ = ["FORMATS", "export_run", "run_to_anndata"]

FORMATS = ("h5ad", "csv", "parquet")
_MAP_COLUMNS = {"umap": ("umap_x", "umap_y"), "pca": ("pca_x", "pca_y")}


def _read_run(run_dir: Path) -> tuple[pd.DataFrame, dict, dict, pd.DataFrame | None]:
    from drlcore.data import rundir

    objects_path = run_dir / rundir.OBJECTS
    if not objects_path.is_file():
        raise DrlError(f"{run_dir} has no {rundir.OBJECTS}: it is not an encoded run folder "
                       f"(make one with `drl run DATA --out {run_dir}`)")
    manifest = rundir.read_manifest(run_dir)
    objects = rundir.read_table(run_dir, rundir.OBJECTS, manifest)  # checked against the manifest
    analysis = rundir.read_analysis(run_dir)
    corr_path = run_dir / rundir.CORRELATIONS
    corr = rundir.read_table(run_dir, rundir.CORRELATIONS, manifest) if corr_path.is_file() else None
    return objects, analysis, manifest, corr


def _plain(value: Any) -> Any:
    """JSON-like data in the types h5py can store: no None, no nested non-string keys."""
    if value is None:
        return "none"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if all(isinstance(v, str) for v in items) or all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return np.asarray(items) if items else np.asarray([], dtype=str)
        # Mixed or nested lists do not fit an HDF5 array: keep them readable as JSON text.
        return json.dumps(value, default=str)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return value


def _safe_text(values: pd.Series) -> pd.Series:
    """Strings h5py can write: file names with undecodable bytes keep a visible escape."""
    return values.map(lambda v: v.encode("utf-8", "backslashreplace").decode("utf-8")
                      if isinstance(v, str) else v)


def run_to_anndata(run_dir: str | Path, with_features: bool = False):
    """The run as an ``anndata.AnnData`` (see the module docstring for what goes where)."""
    try:
        import anndata
    except ImportError:
        raise DrlError("exporting to h5ad needs the anndata package: pip install anndata") from None
    from drlcore.data import rundir

    run_dir = Path(run_dir)
    objects, analysis, manifest, corr = _read_run(run_dir)
    zcols = rundir.latent_columns(objects)
    if not zcols:
        raise DrlError(f"{run_dir / rundir.OBJECTS} has no latent columns: re-encode the run")
    names = list(analysis.get("dim_names") or rundir.dim_names(run_dir, len(zcols)))
    source_names = list(analysis.get("source_dim_names") or
                        rundir.dim_names(run_dir, len(zcols)))
    model = rundir.stage_entry(manifest, "model")
    inactive = set(model.get("inactive_dims") or [])

    var = pd.DataFrame({
        "axis": [f"z{j}" for j in range(len(zcols))],
        "source_name": [str(n) for n in source_names],
        "active": [j not in inactive for j in range(len(zcols))],
    })
    axes = analysis.get("axes")
    if isinstance(axes, list) and len(axes) == len(zcols):
        for key in ("family", "feature", "status", "r", "ci_low", "ci_high", "q_value", "reason"):
            if any(isinstance(a, dict) and key in a for a in axes):
                column = [a.get(key) if isinstance(a, dict) else None for a in axes]
                var[key] = pd.Series(column, dtype=object if key in (
                    "family", "feature", "status", "reason") else float)
    for key in ("family", "feature", "status", "reason"):
        if key in var:
            var[key] = var[key].fillna("").astype(str)
    # Axis names must be unique to be an index: "size" twice becomes "size", "size-1".
    var.index = pd.Index(_unique([str(n) for n in names]))

    obs_cols = [c for c in objects.columns if c not in zcols
                and c not in sum(_MAP_COLUMNS.values(), ())]
    obs = objects[obs_cols].copy()
    for col in obs.columns:
        if obs[col].dtype == object or (pd.api.types.is_string_dtype(obs[col])
                                        and not isinstance(obs[col].dtype, pd.CategoricalDtype)):
            obs[col] = obs[col].astype(object)
            filled = obs[col].where(obs[col].notna(), None)
            if all(isinstance(v, str) or v is None for v in filled):
                obs[col] = _safe_text(filled.fillna("")).astype(str)
            else:
                obs[col] = filled.map(lambda v: "" if v is None else str(v))
    for col in ("label", "split", "mode"):
        if col in obs:
            obs[col] = obs[col].astype("category")
    key = "path" if "path" in obs else None
    obs.index = pd.Index(_unique(list(_safe_text(obs[key]).astype(str)) if key
                                 else [str(i) for i in range(len(obs))]))

    obsm = {}
    for name, (cx, cy) in _MAP_COLUMNS.items():
        if cx in objects and cy in objects:
            obsm[f"X_{name}"] = objects[[cx, cy]].to_numpy(np.float64)
    if with_features:
        features_path = run_dir / rundir.FEATURES
        if not features_path.is_file():
            raise DrlError(f"{run_dir} has no {rundir.FEATURES} to include")
        # A plain ndarray (a view of the memory map): anndata has no writer for np.memmap, which
        # .astype() keeps when the file is already float32.
        obsm["X_backbone"] = np.asarray(rundir.load_features(run_dir), dtype=np.float32)

    uns: dict[str, Any] = {
        "drl": _plain({"run": run_dir.name, "manifest": manifest,
                       "analysis": {k: analysis.get(k) for k in
                                    ("dim_names", "classification", "anomaly", "projections",
                                     "notes", "n_objects") if k in analysis}}),
    }
    if corr is not None and len(corr):
        table = corr.copy()
        for col in table.columns:
            if table[col].dtype == object:
                table[col] = table[col].astype(str)
        uns["latent_morphology_correlations"] = table.reset_index(drop=True)

    X = objects[zcols].to_numpy(np.float32)
    obs, var = _object_strings(obs), _object_strings(var)
    if "latent_morphology_correlations" in uns:
        uns["latent_morphology_correlations"] = _object_strings(
            uns["latent_morphology_correlations"])
    return anndata.AnnData(X=X, obs=obs, var=var, obsm=obsm, uns=uns)


def _object_strings(df: pd.DataFrame) -> pd.DataFrame:
    """Plain Python strings: files written with pandas' newer string dtype need anndata >= 0.11
    to be read, and collaborators' scanpy installs are often older."""
    df = df.copy()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            cats = df[col].cat.categories
            if pd.api.types.is_string_dtype(cats):
                df[col] = df[col].cat.rename_categories(
                    pd.Index(np.asarray(cats, dtype=object), dtype=object))
        elif pd.api.types.is_string_dtype(df[col]) and df[col].dtype != object:
            df[col] = pd.Series(np.asarray(df[col], dtype=object), index=df.index, dtype=object)
    df.index = pd.Index([str(i) for i in df.index], dtype=object)
    return df


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            out.append(f"{name}-{seen[name]}")
        else:
            seen[name] = 0
            out.append(name)
    return out


def export_run(run_dir: str | Path, out: str | Path, fmt: str | None = None,
               with_features: bool = False) -> Path:
    """Write the run to ``out`` as ``fmt`` (default: from the file extension); return ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    fmt = (fmt or out.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DrlError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)} "
                       "(--format, or the extension of the output file)")
    if out.is_dir():
        raise DrlError(f"{out} is a folder: give a file name, e.g. {out / (run_dir.name + '.' + fmt)}")
    if fmt == "h5ad":
        adata = run_to_anndata(run_dir, with_features=with_features)
        # anndata writes through h5py by file name, so the atomic write is done here: a
        # temporary name beside the target, renamed once complete.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            adata.write_h5ad(tmp)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return out
    objects, _, _, _ = _read_run(run_dir)
    if fmt == "csv":
        atomic_write_csv(out, objects)
    else:
        atomic_write_parquet(out, objects)
    return out
