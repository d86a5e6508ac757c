"""The run folder: the one contract between the stages and the explorer.

Every stage writes into one folder; this module owns what is in it::

    RUN/
        manifest.json          what made each file (below)
        features.npy           float32 (N, D) backbone features, row i <-> images.parquet row i
        images.parquet         one row per accepted image (path, label, split, sha256, ...)
        skipped.csv            path, reason for each image left out
        thumbs/                the thumbnails (JPEG), by image content hash (:class:`Thumbs`):
            shards.json        table of contents of the shard layout (runs written since v0.1)
            index.npy          sha256 -> (shard, offset, length), sorted by sha256
            shard-NNNNN.bin    the JPEG bytes of up to a few thousand thumbnails, back to back
            <sha256>.jpg       or one file per image (runs written before the shards; still read)
        model/                 the model that encoded the run: config.json, model.safetensors,
                               metrics.json, pipeline_key.json (what `drl run` made it from)
        objects.parquet        images.parquet + latents (z_mean_<j>) + analysis columns
        correlations.parquet   latent axes x handcrafted features
        analysis.json          what `drl analyze` computed
        views/<name>.json      explorer views saved by name (page + its URL parameters)
        demo.json              only in the built-in demo run (drlcore.runs.demo): what built it

The manifest is versioned and nested, one entry per stage::

    {"schema_version": 2,
     "stages": {"features": {...}, "model": {...}, "encode": {...}, "pipeline": {...},
                "analyze": {...}}}

Stages write their entry with :func:`record_stage` (read-modify-write, atomic, other entries
kept) and everybody reads with :func:`read_manifest`, which also opens the layout written before
``schema_version`` existed (v1: the features stage's entry at the top level, later stages beside
it). Nobody else spells these file names or parses the manifest.
"""

from __future__ import annotations

import array
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drlcore.errors import DrlError
from drlcore.io import atomic_write_json, read_json

__all__ = [
    "SCHEMA_VERSION", "STAGES", "MANIFEST", "OBJECTS", "FEATURES", "IMAGES", "SKIPPED", "THUMBS",
    "MODEL", "CORRELATIONS", "ANALYSIS", "JOB", "MODEL_CONFIG", "MODEL_METRICS",
    "default_runs_dir", "read_manifest", "upgrade_manifest", "record_stage", "stage_entry",
    "is_run_dir", "is_complete_run", "FeaturesInfo", "features_info", "load_features_dir",
    "latent_columns", "zscore_columns", "latent_index", "latent_column", "dim_names",
    "model_config", "model_metrics", "model_hash", "pipeline_notes", "provenance", "thumb_path",
    "Thumbs", "ThumbWriter", "open_thumbs", "read_thumb", "THUMB_SCHEMA_VERSION", "THUMB_TOC",
    "THUMB_INDEX", "thumb_shard_name",
    "VIEWS", "VIEW_SCHEMA_VERSION", "view_path", "save_view", "list_views", "read_view",
    "DEMO_MARKER", "read_analysis", "MODEL_WEIGHTS", "MODEL_STAGE_KEY",
]

SCHEMA_VERSION = 2
STAGES = ("features", "model", "encode", "pipeline", "analyze")

MANIFEST = "manifest.json"
OBJECTS = "objects.parquet"
FEATURES = "features.npy"
IMAGES = "images.parquet"
SKIPPED = "skipped.csv"
THUMBS = "thumbs"
MODEL = "model"
CORRELATIONS = "correlations.parquet"
ANALYSIS = "analysis.json"
JOB = "job.json"  # written by drlcore.runs.jobs while a background job builds the folder
VIEWS = "views"  # saved explorer views, one <name>.json each (save_view / read_view)
VIEW_SCHEMA_VERSION = 1
DEMO_MARKER = "demo.json"  # written by drlcore.runs.demo once the demo run is complete
# Inside MODEL, and in any model folder (written by drlcore.disentangle.artifacts, which takes these names).
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_METRICS = "metrics.json"
MODEL_STAGE_KEY = "pipeline_key.json"  # drlcore.runs.pipeline: the key the run's model was made for

RUNS_DIR_ENV = "DRL_RUNS_DIR"
_LATENT = re.compile(r"^z_mean_(\d+)$")
_ZSCORE = re.compile(r"^z_score_(\d+)$")
# A view name is its file name: letters, digits, space, '_', '.', '-'; no path, no hidden file.
_VIEW_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.-]{0,62}[A-Za-z0-9_-])?$")


def default_runs_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where runs live unless told otherwise: ``$DRL_RUNS_DIR`` (read now), else the per-user
    data folder's ``runs``."""
    environ = os.environ if environ is None else environ
    value = environ.get(RUNS_DIR_ENV)
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("drl")) / "runs"


def thumb_path(run_dir: str | os.PathLike, sha256: str) -> Path:
    """Where the one-file-per-image layout keeps a thumbnail. Read thumbnails through
    :func:`open_thumbs` / :func:`read_thumb`, which also know the shard layout."""
    return Path(run_dir) / THUMBS / f"{sha256}.jpg"


# --------------------------------------------------------------------------- thumbnails
#
# Why shards of JPEG bytes with a sorted index (and not one padded uint8 array, or a zip):
# a thumbnail is a JPEG of at most 160 px (drlcore.data.geometry.thumbnail), a few KB; a padded
# 160 x 160 x 3 array would be ~77 KB each (77 GB for 10^6 objects), and the bytes are what the
# app sends to the browser anyway, so no decode/encode on the way. A zip's central directory
# must be parsed whole before the first read (seconds and ~0.5 GB of entries at 10^6); the index
# here is a memory-mapped, sorted array, so opening is instant and a lookup is a binary search
# plus one read of `length` bytes. Shards stay small (THUMB_SHARD_MAX_BYTES) because the app's
# WebGL map has the browser fetch a whole shard through Streamlit's static component route
# (which has no range requests) and slice the hovered thumbnail out of it.

THUMB_SCHEMA_VERSION = 1
THUMB_TOC = "shards.json"
THUMB_INDEX = "index.npy"
THUMB_SHARD_MAX_BYTES = 4 << 20
THUMB_SHARD_MAX_COUNT = 10_000
THUMB_INDEX_DTYPE = np.dtype([("sha256", "S64"), ("shard", "<u4"), ("offset", "<u8"),
                              ("length", "<u4")])


def thumb_shard_name(k: int) -> str:
    return f"shard-{int(k):05d}.bin"


class Thumbs:
    """A run's thumbnails, read from whichever layout the run was written in: the shards
    (``shards.json`` + ``index.npy`` + ``shard-*.bin``) and, for what they do not hold, one
    ``<sha256>.jpg`` per image (runs written before the shards)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.folder = Path(run_dir) / THUMBS
        self.n_shards = 0
        self.index = np.zeros(0, THUMB_INDEX_DTYPE)
        toc = self.folder / THUMB_TOC
        if toc.is_file():
            try:
                meta = read_json(toc)
                self.index = np.load(self.folder / THUMB_INDEX, mmap_mode="r",
                                     allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DrlError(f"the thumbnails of {self.folder.parent.name} cannot be read "
                               f"({exc}); rerun `drl features` on the run") from None
            version = meta.get("schema_version") if isinstance(meta, dict) else None
            if version != THUMB_SCHEMA_VERSION:
                raise DrlError(f"{toc} has schema_version {version!r}; this drl reads "
                               f"{THUMB_SCHEMA_VERSION}. Update drl, or rerun `drl features`")
            if self.index.dtype != THUMB_INDEX_DTYPE:
                raise DrlError(f"{self.folder / THUMB_INDEX} is not a thumbnail index")
            self.n_shards = int(meta.get("n_shards", 0))

    def __len__(self) -> int:
        return len(self.index)

    def _positions(self, shas) -> tuple[np.ndarray, np.ndarray]:
        """Index positions of ``shas`` and whether each is there (vectorised)."""
        keys = np.asarray([str(s) for s in shas], dtype="S64")
        if not len(self.index):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        column = self.index["sha256"]
        pos = np.minimum(np.searchsorted(column, keys), len(column) - 1)
        return pos, column[pos] == keys

    def contains(self, shas) -> np.ndarray:
        """Whether each of ``shas`` has a thumbnail here (either layout)."""
        shas = [str(s) for s in shas]
        pos, found = self._positions(shas)
        missing = np.flatnonzero(~found)
        if len(missing) and self.folder.is_dir():
            files = set(os.listdir(self.folder)) if len(missing) > 64 else None
            for i in missing:
                name = f"{shas[i]}.jpg"
                found[i] = name in files if files is not None else (self.folder / name).is_file()
        return found

    def __contains__(self, sha: str) -> bool:
        return bool(self.contains([sha])[0])

    def get(self, sha: str) -> bytes | None:
        """The thumbnail's JPEG bytes, or None when the run has none for this image."""
        pos, found = self._positions([sha])
        if found[0]:
            entry = self.index[pos[0]]
            try:
                with open(self.folder / thumb_shard_name(entry["shard"]), "rb") as fh:
                    fh.seek(int(entry["offset"]))
                    data = fh.read(int(entry["length"]))
            except OSError:
                return None
            return data if len(data) == int(entry["length"]) else None
        try:
            return thumb_path(self.folder.parent, sha).read_bytes()
        except OSError:
            return None

    def locations(self, shas) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        """Where each thumbnail lies inside the ``thumbs`` folder: (file name, offset, length)
        per sha; offset and length are -1 for a whole file (the one-file layout), the name None
        where there is no thumbnail. For a client that fetches files from the folder."""
        shas = [str(s) for s in shas]
        pos, found = self._positions(shas)
        offsets = np.full(len(shas), -1, np.int64)
        lengths = np.full(len(shas), -1, np.int64)
        names: list[str | None] = [None] * len(shas)
        if found.any():
            entries = self.index[pos[found]]
            offsets[found] = entries["offset"]
            lengths[found] = entries["length"]
            shard_names = {k: thumb_shard_name(k) for k in np.unique(entries["shard"])}
            for i, k in zip(np.flatnonzero(found), entries["shard"]):
                names[i] = shard_names[k]
        rest = np.flatnonzero(~found)
        if len(rest):
            have = self.contains([shas[i] for i in rest])
            for i, ok in zip(rest, have):
                if ok:
                    names[i] = f"{shas[i]}.jpg"
        return names, offsets, lengths


def open_thumbs(run_dir: str | os.PathLike) -> Thumbs:
    """The run's thumbnails (see :class:`Thumbs`); an empty store when it has none."""
    return Thumbs(run_dir)


def read_thumb(run_dir: str | os.PathLike, sha256: str) -> bytes | None:
    """One thumbnail's JPEG bytes (either layout), or None. Opens the store each call: a
    caller reading many should keep an :func:`open_thumbs` store."""
    return Thumbs(run_dir).get(sha256)


class ThumbWriter:
    """Adds thumbnails to a run in the shard layout; what the run already holds (either layout)
    is kept and not written again.

    Atomic: a shard is written under a hidden temporary name and renamed when full (or at
    :meth:`close`); :meth:`close` then replaces the index and, last, the table of contents, each
    atomically. A reader sees the old set of thumbnails or the new one, never part of a shard;
    a run killed before ``close`` leaves its completed shards unindexed (they are rewritten by
    the next run). Use as a context manager: leaving the block commits what was added, on error
    too (finished work is kept, as the feature cache keeps finished batches).
    """

    def __init__(self, run_dir: str | os.PathLike, max_bytes: int = THUMB_SHARD_MAX_BYTES,
                 max_count: int = THUMB_SHARD_MAX_COUNT):
        self.existing = Thumbs(run_dir)
        self.folder = self.existing.folder
        self.max_bytes, self.max_count = int(max_bytes), int(max_count)
        self._next_shard = self.existing.n_shards
        self._added: set[str] = set()
        self._shas: list[str] = []
        self._where = array.array("q")  # shard, offset, length per added thumbnail
        self._fh = None
        self._tmp: str | None = None
        self._shard = -1
        self._size = self._count = 0
        self.closed = False

    def __enter__(self) -> ThumbWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def missing(self, shas) -> np.ndarray:
        """Which of ``shas`` have no thumbnail yet, here or among those added."""
        shas = [str(s) for s in shas]
        have = self.existing.contains(shas)
        return np.array([not h and s not in self._added for s, h in zip(shas, have)], bool)

    def add(self, sha: str, data: bytes) -> None:
        """Add one thumbnail (JPEG bytes) under its image's sha256. A sha added before is
        skipped; ask :meth:`missing` first to skip the ones the run already holds."""
        sha = str(sha)
        if self.closed:
            raise ValueError("this ThumbWriter is closed")
        if len(sha) != 64:
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        if sha in self._added:
            return
        if self._fh is None or self._count >= self.max_count or (
                self._count and self._size + len(data) > self.max_bytes):
            self._finish_shard()
            self._open_shard()
        self._fh.write(data)
        self._added.add(sha)
        self._shas.append(sha)
        self._where.extend((self._shard, self._size, len(data)))
        self._size += len(data)
        self._count += 1

    def _open_shard(self) -> None:
        import tempfile

        self.folder.mkdir(parents=True, exist_ok=True)
        self._shard = self._next_shard
        self._next_shard += 1
        name = thumb_shard_name(self._shard)
        fd, self._tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self._tmp, 0o666 & ~mask)
        self._fh = os.fdopen(fd, "wb")
        self._size = self._count = 0

    def _finish_shard(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.folder / thumb_shard_name(self._shard))
        self._fh, self._tmp = None, None

    def close(self) -> None:
        """Commit: the last shard, the merged index, then the table of contents."""
        if self.closed:
            return
        self.closed = True
        self._finish_shard()
        if not self._added:
            return
        from drlcore.io import atomic_save_npy

        new = np.zeros(len(self._shas), THUMB_INDEX_DTYPE)
        new["sha256"] = self._shas
        entries = np.frombuffer(self._where, dtype=np.int64).reshape(-1, 3)
        new["shard"], new["offset"], new["length"] = entries[:, 0], entries[:, 1], entries[:, 2]
        old = np.asarray(self.existing.index)
        if len(old):  # what the run held already keeps its entry
            new = new[~self.existing._positions(new["sha256"].astype(str))[1]]
        index = np.concatenate([old, new])
        index = index[np.argsort(index["sha256"], kind="stable")]
        atomic_save_npy(self.folder / THUMB_INDEX, index)
        atomic_write_json(self.folder / THUMB_TOC, {
            "schema_version": THUMB_SCHEMA_VERSION, "format": "jpeg", "count": int(len(index)),
            "n_shards": int(self._next_shard), "index": THUMB_INDEX})


# --------------------------------------------------------------------------- manifest


def _empty() -> dict:
    return {"schema_version": SCHEMA_VERSION, "stages": {}}


def _strip_stage_key(entry: Any) -> Any:
    # v1 entries carried {"stage": NAME} to say what they were; the nesting says it now.
    if isinstance(entry, dict):
        return {k: v for k, v in entry.items() if k != "stage"}
    return entry


def upgrade_manifest(raw: Any) -> dict:
    """A manifest as stored -> the current nested layout (a new dict; ``raw`` is not changed).

    v1 (no ``schema_version``): the features stage wrote the whole file (its entry at the top
    level, ``"stage": "features"``, ``backbone`` a string) and later stages set their entries
    beside it (``model``, whose ``backbone`` is a dict, ``encode``, ``pipeline``, ``analyze``).
    A file nested under ``"features"`` without a version is read the same way.
    """
    if not isinstance(raw, dict):
        raise DrlError(f"the run manifest must be a JSON object, not {type(raw).__name__}")
    version = raw.get("schema_version")
    if version == SCHEMA_VERSION:
        stages = raw.get("stages")
        if not isinstance(stages, dict):
            raise DrlError("the run manifest has schema_version 2 but no 'stages' object")
        return {"schema_version": SCHEMA_VERSION, "stages": dict(stages)}
    if version is not None:
        raise DrlError(f"the run manifest has schema_version {version!r}; this drl reads "
                       f"versions 1 and {SCHEMA_VERSION}. Update drl, or rerun the run")
    stages: dict[str, dict] = {}
    later = {name: raw[name] for name in STAGES
             if name != "features" and isinstance(raw.get(name), dict)}
    if isinstance(raw.get("features"), dict):
        stages["features"] = _strip_stage_key(raw["features"])
    else:
        top = {k: v for k, v in raw.items() if k not in later}
        if top.get("stage") == "features" or isinstance(top.get("backbone"), str):
            stages["features"] = _strip_stage_key(top)
    for name, entry in later.items():
        stages[name] = _strip_stage_key(entry)
    return {"schema_version": SCHEMA_VERSION, "stages": stages}


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The run's manifest in the current layout; an empty one if the folder has none yet."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return _empty()
    try:
        raw = read_json(path)
    except (OSError, ValueError) as exc:
        raise DrlError(f"{path} cannot be read ({exc}); rerun the run (`drl run`)") from None
    return upgrade_manifest(raw)


def record_stage(run_dir: str | os.PathLike, name: str, entry: Mapping[str, Any]) -> dict:
    """Set stage ``name``'s entry in the run manifest, keeping every other stage's; returns the
    whole manifest. The file is rewritten atomically (an older layout is upgraded on the way)."""
    if name not in STAGES:
        raise ValueError(f"unknown run stage {name!r}; stages are {STAGES}")
    try:
        manifest = read_manifest(run_dir)
    except DrlError:
        manifest = _empty()  # a damaged manifest is replaced, not kept half-readable
    manifest["stages"][name] = _strip_stage_key(dict(entry))
    atomic_write_json(Path(run_dir) / MANIFEST, manifest)
    return manifest


def stage_entry(run_dir_or_manifest: str | os.PathLike | Mapping, name: str) -> dict:
    """One stage's entry ({} when the stage has not run)."""
    manifest = (run_dir_or_manifest if isinstance(run_dir_or_manifest, Mapping)
                else read_manifest(run_dir_or_manifest))
    entry = manifest.get("stages", {}).get(name)
    return dict(entry) if isinstance(entry, dict) else {}


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a run manifest drl wrote (any known layout): the test for "may
    drl write into this folder". Reads one small file; never raises."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        raw = read_json(manifest)
        if not isinstance(raw, dict):
            return False
        if raw.get("schema_version") == SCHEMA_VERSION:
            return isinstance(raw.get("stages"), dict)
        return "schema_version" not in raw and bool(upgrade_manifest(raw)["stages"])
    except (OSError, ValueError, DrlError):
        return False


def is_complete_run(path: str | os.PathLike) -> bool:
    """A run the explorer can open: encoded and analysed, and not a folder still being built
    (named ``*.partial``, or with a background job's ``job.json`` that does not say "done")."""
    path = Path(path)
    if path.name.endswith(".partial") or not (path / OBJECTS).is_file():
        return False
    job = path / JOB
    if job.is_file():
        try:
            return read_json(job).get("state") == "done"
        except (OSError, ValueError, AttributeError):
            return False
    return (path / ANALYSIS).is_file()


# --------------------------------------------------------------------------- typed readers


@dataclass(frozen=True)
class FeaturesInfo:
    """What the features stage recorded: the backbone that made the features and the data."""

    backbone: str
    weights_hash: str | None
    weights_source: str | None
    dtype: str | None
    feature_dim: int | None
    preprocessing: dict
    data_fingerprint: str | None
    entry: dict = field(repr=False)  # the whole stage entry, for anything not named above

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        irange = self.preprocessing.get("intensity_range")
        return tuple(irange) if irange else None


def features_info(run_dir_or_manifest: str | os.PathLike | Mapping) -> FeaturesInfo | None:
    """The features stage's entry as :class:`FeaturesInfo`; None when features were not made
    here (or the entry does not say which backbone made them)."""
    entry = stage_entry(run_dir_or_manifest, "features")
    if not isinstance(entry.get("backbone"), str):
        return None
    dim = entry.get("feature_dim")
    return FeaturesInfo(backbone=entry["backbone"], weights_hash=entry.get("weights_hash"),
                        weights_source=entry.get("weights_source"), dtype=entry.get("dtype"),
                        feature_dim=int(dim) if dim is not None else None,
                        preprocessing=dict(entry.get("preprocessing") or {}),
                        data_fingerprint=(entry.get("data") or {}).get("fingerprint"),
                        entry=entry)


def load_features_dir(features_dir: str | os.PathLike):
    """``features.npy`` (memory-mapped), ``images.parquet`` and the features stage's manifest
    entry (a dict) of a folder the features stage wrote; DrlError saying what to do otherwise."""
    import pandas as pd

    features_dir = Path(features_dir)
    paths = {name: features_dir / name for name in (FEATURES, IMAGES, MANIFEST)}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise DrlError(f"{features_dir} lacks {', '.join(missing)}: it is not a folder written by "
                       "`drl features` (or the feature extraction did not finish)")
    try:
        manifest = read_manifest(features_dir)
        features = np.load(paths[FEATURES], mmap_mode="r", allow_pickle=False)
        table = pd.read_parquet(paths[IMAGES])
    except Exception as exc:  # damaged files: the user should re-extract, not read a traceback
        raise DrlError(f"the features in {features_dir} cannot be read ({exc}); re-run "
                       "`drl features`") from None
    info = features_info(manifest)
    if info is None:
        raise DrlError(f"{paths[MANIFEST]} does not say which backbone made the features; "
                       "re-run `drl features`")
    if features.ndim != 2 or features.shape[0] != len(table):
        raise DrlError(f"{features_dir}: {FEATURES} has shape {features.shape} but "
                       f"{IMAGES} has {len(table)} rows; re-run `drl features`")
    return features, table, info.entry


def _indexed(columns: Iterable[str], pattern: re.Pattern) -> list[str]:
    found = [(int(m.group(1)), c) for c in columns if (m := pattern.match(str(c)))]
    return [c for _, c in sorted(found)]


def latent_columns(columns: Iterable[str]) -> list[str]:
    """The latent-mean columns ``z_mean_<j>`` among ``columns`` (a table's columns), sorted by
    ``j`` as a number (``z_mean_10`` after ``z_mean_9``)."""
    return _indexed(columns, _LATENT)


def zscore_columns(columns: Iterable[str]) -> list[str]:
    """The per-axis robust z-score columns ``z_score_<j>`` the analysis adds, sorted by ``j``."""
    return _indexed(columns, _ZSCORE)


def latent_index(column: str) -> int | None:
    m = _LATENT.match(str(column))
    return int(m.group(1)) if m else None


def latent_column(j: int) -> str:
    return f"z_mean_{int(j)}"


def _json_or_empty(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = read_json(path)
    except (OSError, ValueError) as exc:
        raise DrlError(f"{path} is not valid JSON ({exc}); re-run the stage that writes it") from None
    return value if isinstance(value, dict) else {}


def read_analysis(run_dir: str | os.PathLike) -> dict:
    """``analysis.json`` of the run ({} when the run has not been analysed); a damaged file is a
    DrlError that says to re-run the analysis."""
    return _json_or_empty(Path(run_dir) / ANALYSIS)


def model_config(run_dir: str | os.PathLike) -> dict:
    """``model/config.json`` of the run ({} when there is no model)."""
    return _json_or_empty(Path(run_dir) / MODEL / MODEL_CONFIG)


def model_metrics(run_dir: str | os.PathLike) -> dict:
    """``model/metrics.json`` of the run (training or transfer metrics; {} when absent)."""
    return _json_or_empty(Path(run_dir) / MODEL / MODEL_METRICS)


def dim_names(config_or_run: str | os.PathLike | Mapping, n_dims: int) -> list[str]:
    """Display names of the ``n_dims`` latent axes (``z3: scale``) from the model config (a
    run folder or its ``model/config.json`` dict); ``z<j>`` where the model names none."""
    config = config_or_run if isinstance(config_or_run, Mapping) else model_config(config_or_run)
    names = list(config.get("dim_names") or [])
    return [str(names[j]) if j < len(names) and names[j] else f"z{j}" for j in range(n_dims)]


def model_hash(run_dir_or_manifest: str | os.PathLike | Mapping) -> str | None:
    """The hash of the model that encoded the run (the manifest's ``model`` entry)."""
    return stage_entry(run_dir_or_manifest, "model").get("model_hash")


def pipeline_notes(run_dir_or_manifest: str | os.PathLike | Mapping) -> list[str]:
    """Notes ``drl run`` left for the user (e.g. too few images to fine-tune)."""
    notes = stage_entry(run_dir_or_manifest, "pipeline").get("notes") or []
    return [str(n) for n in notes]


def provenance(run_dir: str | os.PathLike, manifest: Mapping | None = None,
               config: Mapping | None = None, analysis: Mapping | None = None,
               n_objects: int | None = None) -> dict:
    """The stamp every export carries: which backbone and model, which data, which parameters.

    ``manifest``, ``config`` (model/config.json) and ``analysis`` may be passed when the caller
    already holds them (the explorer caches them); otherwise they are read from ``run_dir``."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir) if manifest is None else manifest
    config = model_config(run_dir) if config is None else config
    if analysis is None:
        analysis = read_analysis(run_dir)
    info = features_info(manifest)
    backbone = config.get("backbone") or {}
    model = stage_entry(manifest, "model")
    return {
        "run": str(run_dir),
        "backbone": (info.backbone if info else None) or backbone.get("name"),
        "backbone weights hash": (info.weights_hash if info else None)
        or backbone.get("weights_hash"),
        "model hash": model.get("model_hash"),
        # What ran the backbone, in what arithmetic (features made before engines: torch).
        "engine": (((info.entry.get("engine") or {}).get("used") or "torch") if info else None),
        "precision": info.dtype if info else None,
        "data fingerprint": info.data_fingerprint if info else None,
        "objects": n_objects,
        "analysis parameters": analysis.get("config") or {},
    }


# --------------------------------------------------------------------------- saved views


def view_path(run_dir: str | os.PathLike, name: str) -> Path:
    """``RUN/views/<name>.json``; a name that could leave the folder or hide the file is refused."""
    name = str(name).strip()
    if not _VIEW_NAME.match(name):
        raise DrlError(f"a view name is 1-64 letters, digits, spaces, '_', '.' or '-', starting "
                       f"with a letter or digit (not {name!r})")
    return Path(run_dir) / VIEWS / f"{name}.json"


def save_view(run_dir: str | os.PathLike, name: str, view: Mapping[str, Any]) -> Path:
    """Write a saved view (what the explorer shows: page and parameters) atomically; an
    existing view of the same name is replaced."""
    path = view_path(run_dir, name)
    atomic_write_json(path, {**dict(view), "schema_version": VIEW_SCHEMA_VERSION,
                             "name": name.strip()})
    return path


def list_views(run_dir: str | os.PathLike) -> list[str]:
    """Names of the views saved in this run, sorted (temporary and foreign files left out)."""
    folder = Path(run_dir) / VIEWS
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.is_file() and _VIEW_NAME.match(p.stem))


def read_view(run_dir: str | os.PathLike, name: str) -> dict:
    """A saved view as written by :func:`save_view`; a missing, unreadable or newer file is an
    error that says which."""
    path = view_path(run_dir, name)
    if not path.is_file():
        raise DrlError(f"no saved view {name!r} in {Path(run_dir).name}")
    try:
        view = read_json(path)
    except (OSError, ValueError) as exc:
        raise DrlError(f"the saved view {path} cannot be read ({exc})") from exc
    if not isinstance(view, dict):
        raise DrlError(f"the saved view {path} is not a JSON object")
    version = view.get("schema_version")
    if version != VIEW_SCHEMA_VERSION:
        raise DrlError(f"the saved view {path} has schema_version {version!r}; this drl reads "
                       f"{VIEW_SCHEMA_VERSION}")
    return view
