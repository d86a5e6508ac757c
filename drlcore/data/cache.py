"""Content-hash feature cache: an image already embedded by the same model is never embedded again.

Layout::

    FEATURE_CACHE/<key>/                    key = cache_key(backbone, preprocessing)
        info.json                        what the key stands for (for people; never read back)
        shard-<time>-<pid>-<n>.npy       float32 (n, D): one written batch
        shard-<time>-<pid>-<n>.json      {"hashes": [...n sha256], "meta": [...n dicts],
                                          "sha256": checksum of the .npy bytes and the lists}

The key folds in everything that changes a feature vector: backbone name, weights hash, compute
dtype, inference engine (when not torch), preprocessing (input size, mean/std, interpolation,
padding, intensity range) and ``CACHE_VERSION``. Rows are keyed by the sha256 of the image
*file bytes*, so renaming or moving files keeps their features.

Each batch is one shard written atomically, the vectors first and the ``.json`` key list last:
a shard only counts once its ``.json`` exists, so a run killed midway keeps every batch it
finished and never sees half a batch. Writers never touch each other's shards, so two runs may
share a cache folder.

What is read back is checked: a shard whose checksum does not match (a flipped bit, a file cut
short) or that has none (written before the checksums) is ignored, so its images are embedded
again, and :attr:`FeatureCache.damaged` says how many were. sha256 and not BLAKE2: with the
CPU's SHA instructions hashlib's sha256 ran at ~1.0-1.2 GB/s against blake2b's ~0.6 GB/s on
shards of 40 KB-8 MB (this machine). A cache is an optimisation: a folder that cannot be written
(a full disk, read-only) turns writing off with one :attr:`FeatureCache.note`, never an error.
"""

from __future__ import annotations

import hashlib
import io
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

from drlcore.io import (atomic_write_bytes, atomic_write_json, fingerprint, json_value, read_json,
                        sha256_bytes, sha256_file)

__all__ = ["CACHE_VERSION", "ContentStore", "FeatureCache", "cache_key", "cache_root",
           "cache_write_note", "default_cache_dir", "feature_cache_dir"]

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
_SUMS = ".sums.json"  # beside each ContentStore entry: {relative path: [size, sha256]}


def cache_write_note(root: str | os.PathLike, err: OSError) -> str:
    """The one note a run leaves when a cache cannot be written. Every cache under the same root
    words it the same way, so a run that meets a full disk in several caches shows it once."""
    reason = err.strerror or str(err)
    # The system's words, whichever library raised it: copytree's shutil.Error lists one error
    # per file, pyarrow words it its own way; both carry the errno.
    code = err.errno or next((int(m) for m in re.findall(r"errno (\d+)", str(err), re.I)), None)
    if code:
        reason = os.strerror(code)
    return (f"the cache in {root} could not be written ({reason}); this run went on without "
            f"storing to it (results are unaffected, a rerun recomputes what was not stored)")


def _folder_sums(folder: Path) -> dict[str, list]:
    return {str(p.relative_to(folder)): [p.stat().st_size, sha256_file(p)]
            for p in sorted(folder.rglob("*")) if p.is_file()}


class ContentStore:
    """Folders by content key: ``root/<key>/`` holds whatever was stored under ``key``.

    The one cache primitive behind the model, morphology and projection caches (the feature
    cache's shards, written batch by batch by several runs at once, have their own layout). An entry is
    filled in a hidden temporary folder beside it and renamed into place, so it exists complete
    or not at all: a run killed while storing leaves only a ``.<key>.*.partial`` folder, which
    readers never see. Two writers of the same key both succeed; the first rename wins and the
    other copy is dropped (same key, same content).

    Each entry's files are checked when it is read: ``<key>.sums.json`` beside the folder (not in
    it, so a caller may copy the folder as it is) records every file's size and sha256, and
    :meth:`get` treats an entry whose files differ (removed) or that has no record as absent: a
    damaged cache entry costs a recomputation, never a wrong result.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key

    def _sums_path(self, key: str) -> Path:
        return self.root / f"{key}{_SUMS}"

    def _intact(self, key: str) -> bool | None:
        """True when the entry's files match its record, False when they differ, None when it
        has no record (written before the records, or its writer is between two steps)."""
        try:
            sums = read_json(self._sums_path(key))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return False
        try:
            return sums == _folder_sums(self.path(key))
        except OSError:
            return False

    def get(self, key: str) -> Path | None:
        """The entry's folder, or None when nothing intact is stored under ``key``: an entry
        whose files differ from its record is discarded, one without a record is a miss."""
        folder = self.path(key)
        if not folder.is_dir():
            return None
        intact = self._intact(key)
        if intact is False:
            self.discard(key)
        return folder if intact else None

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
            sums = _folder_sums(tmp)
            won = False
            for _ in range(2):
                try:
                    os.rename(tmp, final)
                    won = True
                    break
                except OSError:
                    if not final.is_dir():
                        raise
                    if self._intact(key):
                        break  # another writer stored it first: same key, same content
                    self.discard(key)  # one without a valid record is replaced
            if won:
                # After the rename, and only by the writer whose folder is in place: a run
                # killed in between leaves an entry without a record, which is only a miss.
                atomic_write_json(self._sums_path(key), sums)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
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
        try:  # the record first: a folder never outlives it holding another entry's record
            self._sums_path(key).unlink()
        except OSError:
            pass
        doomed = self.root / f".{key}.{os.getpid()}-{next(_shard_counter)}.partial"
        try:
            os.rename(folder, doomed)
        except OSError:
            return  # another process removed or replaced it first (or the cache is read-only)
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


def _shard_checksum(vectors_sha256: str, hashes: list, meta) -> str:
    """What a shard's ``.json`` records: a sha256 over the ``.npy`` file's sha256, the key list
    and the metadata, so a flipped bit in either file is caught."""
    h = hashlib.sha256(vectors_sha256.encode("ascii"))
    h.update(json.dumps([hashes, meta], sort_keys=True).encode("utf-8"))
    return h.hexdigest()


class _Shard:
    __slots__ = ("npy", "hashes", "meta", "checksum", "array")

    def __init__(self, npy: Path, hashes: list, meta: list, checksum):
        self.npy, self.hashes, self.meta, self.checksum = npy, hashes, meta, checksum
        self.array: np.ndarray | None = None  # set once the shard passed its check


class FeatureCache:
    """Feature vectors by image hash for one key (one model + preprocessing).

    A shard is checked the first time one of its vectors is asked for (a cache shared by many
    data sets costs only the shards a run uses). ``damaged`` counts the shards that failed
    (ignored, so their images are embedded again); ``note`` is set, and writing stops, when the
    cache folder cannot be written. :meth:`notes` words both for the run's notes."""

    def __init__(self, root: str | os.PathLike, key: str, info: dict | None = None):
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key
        self._info = info
        self._where: dict[str, tuple[_Shard, int]] | None = None
        self._mine: dict[str, tuple[np.ndarray, dict | None]] = {}  # written by this process
        self.damaged = 0  # shards ignored: checksum mismatch, unreadable, or without a checksum
        self.damaged_rows = 0
        self.note: str | None = None

    def notes(self) -> list[str]:
        notes = []
        if self.damaged:
            notes.append(f"{self.damaged} feature-cache shard(s) in {self.folder} failed their "
                         f"checksum ({self.damaged_rows} cached vector(s)); they were ignored "
                         f"and those images embedded again")
        if self.note:
            notes.append(self.note)
        return notes

    def _index(self) -> dict[str, tuple[_Shard, int]]:
        """Every stored image hash -> (shard, row), from the shards' key lists (not checked yet)."""
        if self._where is not None:
            return self._where
        where: dict[str, tuple[_Shard, int]] = {}
        try:
            index_files = sorted(self.folder.glob("shard-*.json"))
        except OSError:
            index_files = []  # an unreadable cache folder is an empty cache
        for index_file in index_files:
            try:
                index = read_json(index_file)
                hashes = list(index["hashes"])
                meta = index.get("meta") or [None] * len(hashes)
                if len(meta) != len(hashes):
                    raise ValueError("key list and metadata differ in length")
                shard = _Shard(index_file.with_suffix(".npy"), hashes, index.get("meta"),
                               index.get("sha256"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.damaged += 1  # an unreadable key list: its images are embedded again
                continue
            for row, digest in enumerate(hashes):
                where[digest] = (shard, row)
        self._where = where
        return where

    def _check(self, shard: _Shard) -> bool:
        """Verify a shard once: its checksum over the vectors' bytes and the key list."""
        if shard.array is not None:
            return True
        if shard.checksum is False:
            return False  # failed before: counted once
        ok, array = False, None
        if shard.checksum:  # None: written before the checksums, not trusted
            try:
                ok = shard.checksum == _shard_checksum(sha256_file(shard.npy), shard.hashes,
                                                       shard.meta)
                array = np.load(shard.npy, mmap_mode="r", allow_pickle=False) if ok else None
            except (OSError, ValueError):
                ok = False
        if ok and (array.ndim != 2 or len(array) != len(shard.hashes)):
            ok = False
        if not ok:
            shard.checksum = False  # every row of it is a miss from now on
            self.damaged += 1
            self.damaged_rows += len(shard.hashes)
            return False
        shard.array = array
        return True

    def _lookup(self, digest: str) -> tuple[np.ndarray, dict | None] | None:
        if digest in self._mine:
            return self._mine[digest]
        found = self._index().get(digest)
        if found is None:
            return None
        shard, row = found
        if not self._check(shard):
            return None
        return shard.array[row], (shard.meta[row] if shard.meta else None)

    def __len__(self) -> int:
        return len(set(self._index()) | set(self._mine))

    def __contains__(self, digest: str) -> bool:
        return self._lookup(digest) is not None

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes`` (float32 copies); misses, and rows of shards that
        fail their check, are simply absent."""
        out = {}
        for h in hashes:
            found = self._lookup(h)
            if found is not None:
                out[h] = np.array(found[0], dtype=np.float32)
        return out

    def metadata(self, hashes: Sequence[str]) -> dict[str, dict]:
        """Per-image facts stored with the vectors (e.g. width, height, mode), where present."""
        out = {}
        for h in hashes:
            found = self._lookup(h)
            if found is not None and found[1] is not None:
                out[h] = found[1]
        return out

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
        for row, digest in enumerate(hashes):
            self._mine[digest] = (vectors[row], meta[row] if meta is not None else None)
        if self.note is None:
            try:
                self._write_shard(hashes, vectors, meta)
            except OSError as err:  # full disk, read-only folder: go on without the cache
                # Named by the cache root (the folder above features/), as the other caches
                # name it, so a run that meets the same full disk twice notes it once.
                root = self.root.parent if self.root.name == "features" else self.root
                self.note = cache_write_note(root, err)

    def _write_shard(self, hashes: list[str], vectors: np.ndarray, meta) -> None:
        if self._info is not None and not (self.folder / "info.json").exists():
            atomic_write_json(self.folder / "info.json", self._info)
        stem = f"shard-{time.time_ns()}-{os.getpid()}-{next(_shard_counter)}"
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(vectors), allow_pickle=False)
        data = buffer.getvalue()
        atomic_write_bytes(self.folder / f"{stem}.npy", data)
        # As the .json will hold them (numpy scalars as numbers, NaN as null), so the checksum
        # computed here is the one a reader recomputes.
        hashes, meta = json_value([hashes, list(meta) if meta is not None else None])
        # Written last: the shard exists for readers only from here on.
        atomic_write_json(self.folder / f"{stem}.json",
                          {"hashes": hashes, "meta": meta,
                           "sha256": _shard_checksum(sha256_bytes(data), hashes, meta)})
