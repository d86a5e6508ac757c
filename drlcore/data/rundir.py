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

The manifest is versioned and nested, one entry per stage, and records every file a stage
wrote (size, sha256, which stage) so that what is read back is what was written::

    {"schema_version": 2,
     "stages": {"features": {...}, "model": {...}, "encode": {...}, "pipeline": {...},
                "analyze": {...}},
     "files": {"features.npy": {"size": ..., "sha256": ..., "stage": "features"}, ...}}

Stages record their files with :func:`record_files`; readers go through :func:`verify_file`,
:func:`read_table` and :func:`load_features`, which refuse a file whose size or hash differs
with a :class:`DrlError` naming the file, the stage that wrote it and how to rebuild it, and
:func:`check_run` (``drl check``) verifies a whole folder. Runs written before the records are
read as before (nothing to check them against).

Stages write their files through this module too (:func:`write_features`, :func:`write_objects`,
:func:`write_analysis`; the run's model through :func:`install_model` / :func:`new_partial_model`
and :func:`commit_model`, keyed by what it was made from).

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
from drlcore.io import atomic_write_json, file_record, read_json, sha256_file

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
    "morph_columns", "axis_records", "display_dim_names",
    "write_features", "write_objects", "write_analysis", "model_stage_key", "has_model_for",
    "replace_folder", "install_model", "new_partial_model", "commit_model",
    "FILES", "record_files", "verify_file", "read_table", "load_features", "check_run",
    "RunCheck", "model_files", "thumb_files", "rebuild_hint", "files_intact",
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
FILES = "files"  # the manifest's record of every file a stage wrote (record_files)

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
        # Files that failed their check against the manifest's record: their thumbnails are
        # treated as absent (a blank tile, and rewritten by the next `drl features`), never shown
        # damaged. `drl check` names them.
        self.damaged: set[str] = set()
        self._records: dict = {}
        self._verified: dict[int, bool] = {}
        try:
            self._records = read_manifest(self.folder.parent).get(FILES) or {}
        except DrlError:
            pass  # an unreadable manifest: nothing to check against (readers say so elsewhere)
        toc = self.folder / THUMB_TOC
        if toc.is_file():
            if not self._intact(THUMB_INDEX) or not self._intact(THUMB_TOC):
                return  # the index cannot be trusted: no thumbnail is served from the shards
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

    def _intact(self, name: str) -> bool:
        """Whether ``thumbs/<name>`` matches its record (size and sha256; a shard is at most
        a few MB); True when it has none (older runs)."""
        record = self._records.get(f"{THUMBS}/{name}")
        if not isinstance(record, Mapping):
            return True
        if _damage(self.folder.parent, f"{THUMBS}/{name}", record, full=True) is None:
            return True
        self.damaged.add(f"{THUMBS}/{name}")
        return False

    def shard_intact(self, k: int) -> bool:
        """Whether shard ``k`` matches its record; checked once per store."""
        k = int(k)
        if k not in self._verified:
            self._verified[k] = self._intact(thumb_shard_name(k))
        return self._verified[k]

    def damaged_shards(self) -> set[int]:
        """The shards (numbers) whose bytes differ from their record; checks them all."""
        shards = np.unique(np.asarray(self.index["shard"])) if len(self.index) else []
        return {int(k) for k in shards if not self.shard_intact(k)}

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
            if not self.shard_intact(entry["shard"]):
                return None
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
            bad = {int(k) for k in np.unique(self.index[pos[found]]["shard"])
                   if not self.shard_intact(k)}
            if bad:  # a client fetching a damaged shard would show its bytes: none served
                found &= ~np.isin(self.index[pos]["shard"], list(bad))
        if found.any():
            entries = self.index[pos[found]]
            offsets[found] = entries["offset"]
            lengths[found] = entries["length"]
            shard_names = {k: thumb_shard_name(k) for k in np.unique(entries["shard"])}
            for i, k in zip(np.flatnonzero(found), entries["shard"]):
                names[i] = shard_names[k]
        rest = np.flatnonzero(~found)
        if len(rest) and self.folder.is_dir():  # the one-file layout (older runs)
            files = set(os.listdir(self.folder)) if len(rest) > 64 else None
            for i in rest:
                name = f"{shas[i]}.jpg"
                if name in files if files is not None else (self.folder / name).is_file():
                    names[i] = name
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
        # Thumbnails in shards that fail their check are made again (as missing ones are);
        # the damaged shard files are removed on close.
        bad = self.existing.damaged_shards()
        if bad:
            keep = ~np.isin(np.asarray(self.existing.index["shard"]), list(bad))
            self.existing.index = np.asarray(self.existing.index)[keep]
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
        # Shards the new index no longer points into (damaged ones whose thumbnails were made
        # again) are removed, so no unchecked bytes stay in the run.
        used = {thumb_shard_name(k) for k in np.unique(index["shard"])}
        for path in self.folder.glob("shard-*.bin"):
            if path.name not in used:
                path.unlink(missing_ok=True)


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
        upgraded = {"schema_version": SCHEMA_VERSION, "stages": dict(stages)}
        if isinstance(raw.get(FILES), dict):
            upgraded[FILES] = dict(raw[FILES])
        return upgraded
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
    try:  # inside the try: is_file() itself raises PermissionError in an unreadable folder
        if not manifest.is_file():
            return False
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
    features_dir = Path(features_dir)
    paths = {name: features_dir / name for name in (FEATURES, IMAGES, MANIFEST)}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise DrlError(f"{features_dir} lacks {', '.join(missing)}: it is not a folder written by "
                       "`drl features` (or the feature extraction did not finish)")
    manifest = read_manifest(features_dir)
    # Checked against the manifest first (a damaged file is named, with how to rebuild it).
    features = load_features(features_dir, manifest)
    table = read_table(features_dir, IMAGES, manifest)
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


def _json_or_empty(run_dir: str | os.PathLike, name: str) -> dict:
    path = Path(run_dir) / name
    if not path.is_file():
        return {}
    verify_file(run_dir, name)  # small: size and sha256 against the manifest's record
    try:
        value = read_json(path)
    except (OSError, ValueError) as exc:
        raise DrlError(f"{path} is not valid JSON ({exc}); re-run the stage that writes it") from None
    return value if isinstance(value, dict) else {}


def read_analysis(run_dir: str | os.PathLike) -> dict:
    """``analysis.json`` of the run ({} when the run has not been analysed); a damaged file is a
    DrlError that says to re-run the analysis."""
    return _json_or_empty(run_dir, ANALYSIS)


def model_config(run_dir: str | os.PathLike) -> dict:
    """``model/config.json`` of the run ({} when there is no model)."""
    return _json_or_empty(run_dir, f"{MODEL}/{MODEL_CONFIG}")


def model_metrics(run_dir: str | os.PathLike) -> dict:
    """``model/metrics.json`` of the run (training or transfer metrics; {} when absent)."""
    return _json_or_empty(run_dir, f"{MODEL}/{MODEL_METRICS}")


def dim_names(config_or_run: str | os.PathLike | Mapping, n_dims: int) -> list[str]:
    """Display names of the ``n_dims`` latent axes (``z3: scale``) from the model config (a
    run folder or its ``model/config.json`` dict); ``z<j>`` where the model names none."""
    config = config_or_run if isinstance(config_or_run, Mapping) else model_config(config_or_run)
    names = list(config.get("dim_names") or [])
    return [str(names[j]) if j < len(names) and names[j] else f"z{j}" for j in range(n_dims)]


def morph_columns(table) -> list[str]:
    """The numeric morphology feature columns (``morph_*``) of an objects table, in table order
    (the ``morph_ok`` flag and ``morph_note`` text left out)."""
    import pandas as pd

    return [c for c in table.columns if str(c).startswith("morph_")
            and c not in ("morph_ok", "morph_note")
            and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]


def axis_records(analysis: Mapping, n_dims: int) -> list[dict]:
    """analysis.json's per-axis naming records (drlcore.analysis.naming), one per latent axis;
    [] for an older analysis or one that does not match the ``n_dims`` axes."""
    axes = analysis.get("axes")
    if isinstance(axes, list) and len(axes) == n_dims and all(isinstance(a, dict) for a in axes):
        return axes
    return []


def display_dim_names(analysis: Mapping, config: Mapping, n_dims: int) -> list[str]:
    """The axes' display names: from the run's own data (analysis.json ``dim_names``, ``z3:
    size``, ``z4 (unnamed)``) when it named them, else the model's source names."""
    names = analysis.get("dim_names")
    if isinstance(names, list) and len(names) == n_dims and axis_records(analysis, n_dims):
        return [str(n) for n in names]
    return dim_names(config, n_dims)


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


# --------------------------------------------------------------------------- writing the stages' files
#
# The stages hand their results here and never spell a path into the run folder themselves:
# following ``out_dir`` from ``run_pipeline``, every file of the run is written by this module
# (the model's own files by drlcore.disentangle.artifacts, into the folder handed out by
# :func:`new_partial_model`). Each write is atomic (a temporary name, then a rename).


def write_features(run_dir: str | os.PathLike, features: np.ndarray, images, skipped) -> None:
    """The features stage's files: ``features.npy`` (row i <-> ``images.parquet`` row i), the
    images table and the list of skipped files. The stage records its manifest entry after."""
    from drlcore.io import atomic_save_npy, atomic_write_csv, atomic_write_parquet

    run_dir = Path(run_dir)
    atomic_save_npy(run_dir / FEATURES, features)
    atomic_write_parquet(run_dir / IMAGES, images)
    atomic_write_csv(run_dir / SKIPPED, skipped)


def write_objects(run_dir: str | os.PathLike, objects) -> Path:
    """Replace ``objects.parquet`` (one row per object) and return its path."""
    from drlcore.io import atomic_write_parquet

    path = Path(run_dir) / OBJECTS
    atomic_write_parquet(path, objects)
    return path


def write_analysis(run_dir: str | os.PathLike, correlations, objects, analysis: Mapping) -> None:
    """The analysis stage's files. ``analysis.json`` goes last: it is what says the run is
    complete (:func:`is_complete_run`), so a run killed midway is never taken for finished."""
    from drlcore.io import atomic_write_parquet

    run_dir = Path(run_dir)
    atomic_write_parquet(run_dir / CORRELATIONS, correlations)
    write_objects(run_dir, objects)
    atomic_write_json(run_dir / ANALYSIS, dict(analysis))


def model_stage_key(run_dir: str | os.PathLike) -> str | None:
    """The key ``drl run`` recorded for the run's model (what it was made from), or None."""
    path = Path(run_dir) / MODEL / MODEL_STAGE_KEY
    return read_json(path).get("key") if path.is_file() else None


def has_model_for(run_dir: str | os.PathLike, key: str) -> bool:
    """Whether the run holds a complete, undamaged model made for ``key`` (the stage can be
    skipped). Its files are checked against their records before the key is read, since the key
    file may be the damaged one: a damaged model is rebuilt, never reused."""
    return ((Path(run_dir) / MODEL / MODEL_CONFIG).is_file()
            and files_intact(run_dir, f"{MODEL}/") and model_stage_key(run_dir) == key)


def _write_model_key(model_dir: Path, key: str) -> None:
    atomic_write_json(model_dir / MODEL_STAGE_KEY, {"key": key})


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike, copy: bool = False) -> None:
    """Put folder ``src`` at ``dst`` (moved, or copied when ``copy``), the old ``dst`` removed
    only once the new one is complete: a reader sees the old folder or the new one."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        staging = dst.with_name(dst.name + ".incoming")
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(src, staging)
        src = staging
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        src.rename(dst)


def install_model(run_dir: str | os.PathLike, model_folder: str | os.PathLike, key: str) -> Path:
    """Copy a finished model folder (a shipped source model, a cached transfer) in as the run's
    ``model/``, recorded as made for ``key``; returns the run's model folder."""
    model_dir = Path(run_dir) / MODEL
    replace_folder(model_folder, model_dir, copy=True)
    _write_model_key(model_dir, key)
    return model_dir


def new_partial_model(run_dir: str | os.PathLike) -> Path:
    """An empty place to build the run's next model (``model.partial``, not yet made: the
    writer creates it); what an interrupted build left there is removed."""
    import shutil

    partial = Path(run_dir) / f"{MODEL}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def commit_model(run_dir: str | os.PathLike, partial: str | os.PathLike, key: str) -> Path:
    """Make the model built in ``partial`` (:func:`new_partial_model`) the run's ``model/``,
    recorded as made for ``key``; returns the run's model folder."""
    partial = Path(partial)
    _write_model_key(partial, key)
    model_dir = Path(run_dir) / MODEL
    replace_folder(partial, model_dir)
    return model_dir
# --------------------------------------------------------------------------- file records
#
# Why every reader checks: a run folder lives for years on lab shares and laptops; a copy cut
# short, a crash of another tool or a flipped bit on a network share must give an error that
# names the file, never numbers that differ from what the images give. The manifest records
# size and sha256 of each file a stage wrote; a size check is a stat, and hashing costs about a
# second per GB here, small against reading and using the file (measured: see the README's
# reliability section).

# Written into a run folder by drl but not stage outputs: never "foreign".
_OWN_FILES = (MANIFEST, JOB, DEMO_MARKER)


def rebuild_hint(run_dir: str | os.PathLike, manifest: Mapping | None = None) -> str:
    """How to rebuild a run's damaged or missing file, with the data folder it was made from."""
    data = None
    try:
        manifest = read_manifest(run_dir) if manifest is None else manifest
        data = (stage_entry(manifest, "features").get("data") or {}).get("root")
    except DrlError:
        pass
    return (f"rerun `drl run {data or 'DATA'} --out {run_dir}`: finished stages are reused "
            f"from the cache")


def model_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of the run's model folder, as names relative to the run folder."""
    run_dir = Path(run_dir)
    folder = run_dir / MODEL
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(run_dir)) for p in folder.rglob("*") if p.is_file())


def thumb_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of the thumbnails' shard layout (table of contents, index, shards), as names
    relative to the run folder. One-file-per-image thumbnails (older runs) are not recorded."""
    folder = Path(run_dir) / THUMBS
    if not (folder / THUMB_TOC).is_file():
        return []
    names = [THUMB_TOC, THUMB_INDEX, *sorted(p.name for p in folder.glob("shard-*.bin"))]
    return [f"{THUMBS}/{n}" for n in names if (folder / n).is_file()]


def record_files(run_dir: str | os.PathLike, stage: str, names: Iterable[str],
                 replace: str | None = None) -> dict:
    """Record the size and sha256 of each of ``names`` (relative to ``run_dir``) as written by
    ``stage``, in the manifest's ``files``; a name whose file is absent loses its record.
    ``replace`` (a folder prefix such as ``"thumbs/"``): records under it that are not among
    ``names`` are dropped (files the stage removed). Returns the whole manifest."""
    if stage not in STAGES:
        raise ValueError(f"unknown run stage {stage!r}; stages are {STAGES}")
    run_dir = Path(run_dir)
    names = list(dict.fromkeys(str(n) for n in names))
    try:
        manifest = read_manifest(run_dir)
    except DrlError:
        manifest = _empty()
    files = dict(manifest.get(FILES) or {})
    if replace:
        files = {k: v for k, v in files.items() if not k.startswith(replace) or k in names}
    for name in names:
        path = run_dir / name
        if path.is_file():
            files[name] = {**file_record(path), "stage": stage}
        else:
            files.pop(name, None)
    manifest[FILES] = files
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def _damage(run_dir: Path, name: str, record: Mapping, full: bool) -> str | None:
    """What is wrong with one recorded file (None when it matches its record)."""
    path = run_dir / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size != record.get("size"):
        return (f"{size:,} bytes where {record.get('size'):,} were written (cut short or "
                f"overwritten)" if isinstance(record.get("size"), int) else "no size recorded")
    if full:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if digest != record.get("sha256"):
            return "its contents differ from what was written (sha256 mismatch)"
    return None


def files_intact(run_dir: str | os.PathLike, prefix: str, full: bool = True) -> bool:
    """Whether every recorded file whose name starts with ``prefix`` (``"model/"``) matches its
    record: what a stage checks before it calls its earlier output up to date, so a rerun
    rebuilds a damaged one instead of keeping it."""
    run_dir = Path(run_dir)
    try:
        files = read_manifest(run_dir).get(FILES) or {}
    except DrlError:
        return False
    return all(isinstance(rec, Mapping) and _damage(run_dir, name, rec, full) is None
               for name, rec in files.items() if name.startswith(prefix))


def _damage_error(run_dir: Path, name: str, record: Mapping, problem: str,
                  manifest: Mapping | None) -> DrlError:
    stage = record.get("stage") or "an earlier"
    what = "is missing" if problem == "missing" else f"is damaged: {problem}"
    return DrlError(f"{run_dir / name} {what}. It was written by the `{stage}` stage; to rebuild "
                    f"it, {rebuild_hint(run_dir, manifest)}")


def verify_file(run_dir: str | os.PathLike, name: str, manifest: Mapping | None = None,
                full: bool = True) -> Path:
    """``run_dir / name`` once it matches what the manifest recorded: its size always, its
    sha256 with ``full``. A mismatch (or a recorded file that is gone) is a DrlError naming the
    file, the stage that wrote it and how to rebuild it. A file without a record (runs written
    before the records) is returned unchecked, present or not."""
    run_dir = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run_dir)
    record = (manifest.get(FILES) or {}).get(name)
    if isinstance(record, Mapping):
        problem = _damage(run_dir, name, record, full)
        if problem is not None:
            raise _damage_error(run_dir, name, record, problem, manifest)
    return run_dir / name


def read_table(run_dir: str | os.PathLike, name: str, manifest: Mapping | None = None,
               columns: list[str] | None = None):
    """A run table (Parquet), checked against its record first (size and sha256: the table is
    read whole anyway). A file that is damaged or cannot be parsed is a DrlError saying which
    and how to rebuild it, never a pyarrow traceback."""
    import pandas as pd

    run_dir = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run_dir)
    path = verify_file(run_dir, name, manifest)
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...: a damaged file
        record = (manifest.get(FILES) or {}).get(name) or {}
        stage = record.get("stage")
        by = f" It was written by the `{stage}` stage;" if stage else ""
        raise DrlError(f"{path} is damaged: it cannot be read as a table "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
                       f"{by} to rebuild it, {rebuild_hint(run_dir, manifest)}") from None


def load_features(run_dir: str | os.PathLike, manifest: Mapping | None = None,
                  full: bool = True) -> np.ndarray:
    """``features.npy`` memory-mapped, checked against its record (size always; sha256 with
    ``full``: ~8 ms for 1,600 x 1,280 float32 here). DrlError when damaged or unreadable."""
    run_dir = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run_dir)
    path = verify_file(run_dir, FEATURES, manifest, full=full)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DrlError(f"{path} is damaged: it cannot be read as an array ({exc}). To rebuild "
                       f"it, {rebuild_hint(run_dir, manifest)}") from None


@dataclass(frozen=True)
class RunCheck:
    """What :func:`check_run` found. ``missing`` and ``damaged``: (name, stage, problem);
    ``foreign``: files no stage recorded (leftovers, or files put there by hand)."""

    run_dir: Path
    checked: int
    missing: list[tuple[str, str, str]]
    damaged: list[tuple[str, str, str]]
    foreign: list[str]
    recorded: bool  # False: the run was written before file records; nothing to check against
    hint: str

    @property
    def ok(self) -> bool:
        return not self.missing and not self.damaged

    def problems(self) -> list[str]:
        """One line per missing or damaged file, in the words readers use."""
        return ([f"{self.run_dir / n} is missing (written by the `{s}` stage)"
                 for n, s, _ in self.missing]
                + [f"{self.run_dir / n} is damaged: {p} (written by the `{s}` stage)"
                   for n, s, p in self.damaged])

    def summary(self) -> str:
        if not self.recorded:
            return (f"{self.run_dir.name}: written before drl recorded file checksums; nothing to "
                    f"verify (rerun it to add them)")
        if self.ok:
            return f"{self.run_dir.name}: all {self.checked} recorded files intact"
        return (f"{self.run_dir.name} is damaged: {len(self.damaged)} damaged and "
                f"{len(self.missing)} missing of {self.checked} recorded files; to rebuild, "
                f"{self.hint}")


def check_run(run_dir: str | os.PathLike, full: bool = True) -> RunCheck:
    """Verify every file of a run against its manifest (like ``git fsck``): which recorded files
    are missing or damaged (size, and sha256 with ``full``), and which files no stage recorded.
    An unreadable manifest is a DrlError."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    files = manifest.get(FILES) or {}
    missing, damaged = [], []
    for name, record in sorted(files.items()):
        if not isinstance(record, Mapping):
            damaged.append((name, "?", "its record in the manifest is not readable"))
            continue
        problem = _damage(run_dir, name, record, full)
        stage = str(record.get("stage") or "?")
        if problem == "missing":
            missing.append((name, stage, problem))
        elif problem is not None:
            damaged.append((name, stage, problem))
    foreign = []
    if run_dir.is_dir():
        for path in sorted(run_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(run_dir)
            name = rel.as_posix()
            if name in files or name in _OWN_FILES:
                continue
            if rel.parts[0] == VIEWS and len(rel.parts) == 2 and _VIEW_NAME.match(path.stem) \
                    and path.suffix == ".json":
                continue  # saved views are written by the explorer, by design
            if rel.parts[0] == THUMBS and len(rel.parts) == 2 and path.suffix == ".jpg" \
                    and len(path.stem) == 64:
                continue  # the one-file-per-image thumbnails of older runs
            if not files and not name.startswith(".") and "/." not in name:
                continue  # an unrecorded (older) run: its files are not foreign
            foreign.append(name)
    return RunCheck(run_dir=run_dir, checked=len(files), missing=missing, damaged=damaged,
                    foreign=foreign, recorded=bool(files), hint=rebuild_hint(run_dir, manifest))
