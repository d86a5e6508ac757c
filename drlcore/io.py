"""Atomic writes and content hashing.

Every file the engine writes goes through these helpers: write to a temporary name in the same
folder, flush to disk, then ``os.replace``. A run that is killed midway leaves either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_write_parquet",
    "atomic_write_csv",
    "read_json",
    "json_value",
    "file_record",
    "update_json",
    "sha256_bytes",
    "sha256_file",
    "fingerprint",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); give it the permissions a plain open() would, so
    # results in a shared lab folder stay readable by colleagues.
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (sorted keys, indented, NaN written as null so any reader can parse it)."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=True, default=_json_default,
                      allow_nan=False)
    atomic_write_text(path, text + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def json_value(obj: Any) -> Any:
    """``obj`` as :func:`atomic_write_json` stores it and :func:`read_json` gives it back (numpy
    values as plain ones, NaN as None): what a checksum of written JSON must be computed on."""
    return json.loads(json.dumps(_nan_to_none(obj), default=_json_default, allow_nan=False))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def update_json(path: str | os.PathLike, entries: dict) -> dict:
    """Set top-level ``entries`` in a JSON object file (created if missing), atomically.

    How each stage records itself in a run's ``manifest.json`` without dropping what the
    other stages wrote there. A file that is not a JSON object is replaced."""
    path = Path(path)
    current = read_json(path) if path.is_file() else {}
    if not isinstance(current, dict):
        current = {}
    current.update(entries)
    atomic_write_json(path, current)
    return current


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def atomic_write_parquet(path: str | os.PathLike, df) -> None:
    with atomic_open(path, "wb") as fh:
        df.to_parquet(fh, index=False)


def atomic_write_csv(path: str | os.PathLike, df) -> None:
    with atomic_open(path, "w") as fh:
        df.to_csv(fh, index=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """Size and sha256 of a file, as run manifests and caches record what they wrote."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def fingerprint(parts: Iterable[Any]) -> str:
    """Stable short hash of an ordered sequence of JSON-able parts (cache keys, data fingerprints)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=_json_default).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]
