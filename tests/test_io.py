"""Atomic writes: all or nothing, ordinary permissions, JSON any reader can parse."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from drlcore.io import atomic_open, atomic_save_npy, atomic_write_json, fingerprint, sha256_file


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write('{"v": 2, "half')
            raise RuntimeError("killed midway")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    finally:
        os.umask(old)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o644


def test_json_writes_nan_as_null_and_numpy_scalars(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(0.5),
                                            "z": [np.int64(3), np.inf]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 0.5, "z": [3, None]}


def test_hashes_are_stable_and_order_sensitive(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert fingerprint(["a", {"k": 1}]) == fingerprint(["a", {"k": 1}])
    assert fingerprint(["a", "b"]) != fingerprint(["b", "a"])


def test_update_json_keeps_what_other_stages_wrote(tmp_path):
    from drlcore.io import update_json

    manifest = tmp_path / "manifest.json"
    update_json(manifest, {"encode": {"n": 3}})
    update_json(manifest, {"analyze": {"key": "k"}})
    update_json(manifest, {"encode": {"n": 4}})
    assert json.loads(manifest.read_text()) == {"encode": {"n": 4}, "analyze": {"key": "k"}}
    manifest.write_text("[1, 2]")  # not an object: replaced rather than crashing a stage
    assert update_json(manifest, {"x": 1}) == {"x": 1}
