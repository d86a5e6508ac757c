"""Content-hash feature cache: an image already embedded by the same model is never embedded again.

Layout::

    FEATURE_CACHE/<key>/                    key = cache_key(backbone, preprocessing)
        info.json                        what the key stands for (for people; never read back)
        shard-<time>-<pid>-<n>.npy       float32 (n, D): one written batch
        shard-<time>-<pid>-<n>.json      {"hashes": [...n sha256], "meta": [...n dicts]}

The key folds in everything that changes a feature vector: backbone name, weights hash, compute
dtype, inference engine (when not torch), preprocessing (input size, mean/std, interpolation,
padding, intensity range) and ``CACHE_VERSION``. Rows are keyed by the sha256 of the image
*file bytes*, so renaming or moving files keeps their features.

Each batch is one shard written atomically, the vectors first and the ``.json`` key list last:
a shard only counts once its ``.json`` exists, so a run killed midway keeps every batch it
finished and never sees half a batch. Writers never touch each other's shards, so two runs may
share a cache folder.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from drlcore.io import atomic_save_npy, atomic_write_json, fingerprint

__all__ = ["CACHE_VERSION", "ContentStore", "FeatureCache", "cache_key", "cache_root",
           "default_cache_dir", "feature_cache_dir"]

# Bump when decoding or preprocessing changes in a way the key parts do not show.
CACHE_VERSION = 1

_shard_counter = itertools.count()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder every cache lives under, each in its own subfolder (``features/``,
    ``models/``, ``morphology/``, ``projections/``): ``cache_dir`` when given (``--cache-dir``),
    else ``$DRL_CACHE_DIR`` (read now, not at import), else the user cache folder."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DRL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("drl"))


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ContentStore:
    """Folders by content key: ``root/<key>/`` holds whatever was stored under ``key``.

    The one cache primitive behind the model, morphology and projection caches (the feature
    cache's shards, written batch by batch by several runs at once, have their own layout). An entry is
    filled in a hidden temporary folder beside it and renamed into place, so it exists complete
    or not at all: a run killed while storing leaves only a ``.<key>.*.partial`` folder, which
    readers never see. Two writers of the same key both succeed; the first rename wins and the
    other copy is dropped (same key, same content).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key

    def get(self, key: str) -> Path | None:
        """The entry's folder, or None when nothing is stored under ``key``."""
        folder = self.path(key)
        return folder if folder.is_dir() else None

    def put(self, key: str, fill: Callable[[Path], None]) -> Path:
        """Store an entry: ``fill(folder)`` writes its files into an empty folder, which then
        becomes ``root/<key>`` atomically. Returns the entry's folder."""
        final = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}.", suffix=".partial"))
        try:
            # mkdtemp makes the folder private; a shared lab cache must stay readable.
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)
            fill(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another writer stored it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def discard(self, key: str) -> None:
        """Remove the entry stored under ``key`` (a damaged one, say), if any. It is first renamed
        to a hidden name, so readers see it complete or not at all, never half deleted."""
        folder = self.path(key)
        if not folder.is_dir():
            return
        doomed = self.root / f".{key}.{os.getpid()}-{next(_shard_counter)}.partial"
        try:
            os.rename(folder, doomed)
        except OSError:
            return  # another process removed or replaced it first
        shutil.rmtree(doomed, ignore_errors=True)

    def keys(self) -> list[str]:
        """Every complete entry's key, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))


def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "features"


def default_cache_dir() -> Path:
    """The feature cache when no folder is named: ``$DRL_CACHE_DIR/features`` or the user's."""
    return feature_cache_dir()


def cache_key(backbone_name: str, weights_hash: str, dtype: str, preprocessing: dict,
              engine: str = "torch") -> str:
    """``engine`` (drlcore.embedding.engines) joins the key only when it is not torch, so the
    torch features cached before engines existed (the same numbers) keep their key."""
    parts = ["features", CACHE_VERSION, backbone_name, weights_hash, dtype, preprocessing]
    if engine != "torch":
        parts.append({"engine": engine})
    return fingerprint(parts)


class FeatureCache:
    """Feature vectors by image hash for one key (one model + preprocessing)."""

    def __init__(self, root: str | os.PathLike, key: str, info: dict | None = None):
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key
        self._info = info
        self._vectors: dict[str, np.ndarray] | None = None
        self._meta: dict[str, dict] = {}

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is not None:
            return self._vectors
        vectors: dict[str, np.ndarray] = {}
        for index_file in sorted(self.folder.glob("shard-*.json")):
            try:
                with open(index_file, encoding="utf-8") as fh:
                    index = json.load(fh)
                array = np.load(index_file.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                continue  # an unreadable shard only costs a recomputation
            hashes = index.get("hashes", [])
            meta = index.get("meta") or [None] * len(hashes)
            if array.ndim != 2 or len(array) != len(hashes) or len(meta) != len(hashes):
                continue
            for row, (digest, info) in enumerate(zip(hashes, meta)):
                vectors[digest] = array[row]
                if info is not None:
                    self._meta[digest] = info
        self._vectors = vectors
        return vectors

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, digest: str) -> bool:
        return digest in self._load()

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes`` (float32 copies); misses are simply absent."""
        vectors = self._load()
        return {h: np.array(vectors[h], dtype=np.float32) for h in hashes if h in vectors}

    def metadata(self, hashes: Sequence[str]) -> dict[str, dict]:
        """Per-image facts stored with the vectors (e.g. width, height, mode), where present."""
        self._load()
        return {h: self._meta[h] for h in hashes if h in self._meta}

    def put(self, hashes: Sequence[str], vectors: np.ndarray,
            meta: Sequence[dict] | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        hashes = list(hashes)
        if vectors.ndim != 2 or len(vectors) != len(hashes):
            raise ValueError(f"{len(hashes)} hashes for vectors of shape {vectors.shape}")
        if meta is not None and len(meta) != len(hashes):
            raise ValueError(f"{len(hashes)} hashes but {len(meta)} metadata entries")
        if not hashes:
            return
        if self._info is not None and not (self.folder / "info.json").exists():
            atomic_write_json(self.folder / "info.json", self._info)
        stem = f"shard-{time.time_ns()}-{os.getpid()}-{next(_shard_counter)}"
        atomic_save_npy(self.folder / f"{stem}.npy", vectors)
        # Written last: the shard exists for readers only from here on.
        atomic_write_json(self.folder / f"{stem}.json",
                          {"hashes": hashes, "meta": list(meta) if meta is not None else None})
        store = self._load()
        for row, digest in enumerate(hashes):
            store[digest] = vectors[row]
            if meta is not None:
                self._meta[digest] = meta[row]
