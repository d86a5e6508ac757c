"""Bad or odd input, as a careless or unlucky user gives it: each kind gets a clear message or a
correct skip with a reason, loses nothing, and never a traceback (issue 11, item 4)."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import struct
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drlcore import cli
from drlcore.disentangle.artifacts import load_model, read_model_config, save_model
from drlcore.data.decode import read_bytes
from drlcore.data.discover import ImageRecord, IngestConfig, discover
from drlcore.errors import DrlError, SkipImage
from drlcore.embedding.features import FeatureConfig
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file kinds")


def _png(path: Path, seed: int = 0, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "data"
    for i in range(n):
        _png(root / "cls" / f"img{i}.png", seed=i)
    return root


def _discover_within(root, seconds: float = 30.0, **kw):
    """discover() in a thread: a blocking open would hang it, and the test must say so."""
    result: dict = {}

    def target():
        try:
            result["ds"] = discover(root, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "discover() blocked"
    if "error" in result:
        raise result["error"]
    return result["ds"]


def _reasons(ds) -> dict[str, str]:
    return dict(ds.skipped)


# --------------------------------------------------------------------------- not regular files


@posix_only
def test_named_pipe_is_skipped_and_never_opened(tmp_path):
    root = _folder(tmp_path)
    os.mkfifo(root / "cls" / "pipe.jpg")  # opening it for reading would block forever
    ds = _discover_within(root)
    assert len(ds.records) == 3
    assert _reasons(ds)["cls/pipe.jpg"] == "not a regular file (named pipe)"
    record = ImageRecord("cls/pipe.jpg", "cls", None, str(root / "cls" / "pipe.jpg"))
    with pytest.raises(SkipImage, match="named pipe"):
        read_bytes(record)  # a record made before the file became a pipe: still no block


@posix_only
def test_symlinks_to_devices_and_broken_links_are_skipped(tmp_path):
    root = _folder(tmp_path)
    os.symlink("/dev/zero", root / "cls" / "zero.png")  # reading it would never end
    os.symlink(root / "nowhere.png", root / "cls" / "broken.png")
    os.symlink(root / "cls" / "img0.png", root / "cls" / "link.png")  # to a regular file: read
    ds = _discover_within(root)
    reasons = _reasons(ds)
    assert reasons["cls/zero.png"] == "not a regular file (character device)"
    assert reasons["cls/broken.png"] == "broken symbolic link"
    assert "cls/link.png" in {r.path for r in ds.records}
    with pytest.raises(SkipImage, match="character device"):
        read_bytes(ImageRecord("z", None, None, str(root / "cls" / "zero.png")))


@posix_only
def test_socket_is_skipped(tmp_path):
    root = _folder(tmp_path)
    path = root / "cls" / "s.png"
    if len(str(path)) > 100:
        pytest.skip("socket path too long for AF_UNIX")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        assert _reasons(_discover_within(root))["cls/s.png"] == "not a regular file (socket)"
    finally:
        sock.close()


def test_file_over_the_size_cap_is_skipped_not_read(tmp_path):
    root = _folder(tmp_path)
    big = root / "cls" / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(5 * 2**20)  # sparse: costs no disk
    ds = discover(root, IngestConfig(max_file_bytes=2**20))
    assert _reasons(ds)["cls/big.png"].startswith("file too large (5.0 MiB; limit 1.0 MiB")
    with pytest.raises(SkipImage, match="file too large"):
        read_bytes(ImageRecord("b", None, None, str(big)), max_bytes=2**20)


@posix_only
def test_input_that_is_a_pipe_or_a_device_is_a_clear_error(tmp_path):
    os.mkfifo(tmp_path / "data.zip")
    with pytest.raises(DrlError, match="is a named pipe, not a folder or a .zip"):
        _discover_within(tmp_path / "data.zip")
    with pytest.raises(DrlError, match="is a character device"):
        discover("/dev/zero")


# --------------------------------------------------------------------------- zips


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _set_flag(path: Path, bit: int) -> None:
    """Set a general-purpose flag bit in every local and central header of a small zip."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            flags = struct.unpack("<H", data[i + offset:i + offset + 2])[0] | bit
            data[i + offset:i + offset + 2] = struct.pack("<H", flags)
            start = i + 4
    path.write_bytes(bytes(data))


def test_zip_entry_over_the_cap_is_skipped_before_inflating(tmp_path):
    archive = _zip(tmp_path / "d.zip", {"a/ok.png": _png_bytes(), "a/huge.tif": bytes(3 * 2**20)})
    ds = discover(archive, IngestConfig(max_file_bytes=2**20))
    assert [r.path for r in ds.records] == ["ok.png"]  # the single top folder is the root
    assert _reasons(ds)["huge.tif"].startswith("file too large (3.0 MiB")
    with pytest.raises(SkipImage, match="file too large"):
        read_bytes(ImageRecord("h", None, None, f"zip:{archive}::a/huge.tif"), max_bytes=2**20)


def test_zip_whole_archive_over_the_cap_is_refused(tmp_path):
    archive = _zip(tmp_path / "d.zip", {f"a/{i}.tif": bytes(2**20) for i in range(3)})
    with pytest.raises(DrlError, match="would unpack to 3.0 MiB, more than the limit"):
        discover(archive, IngestConfig(max_zip_uncompressed_bytes=2 * 2**20))


def test_zip_entry_whose_declared_size_lies_is_not_inflated_past_it(tmp_path):
    payload = _png_bytes() + bytes(4096)
    archive = _zip(tmp_path / "d.zip", {"x.png": payload})
    data = bytearray(archive.read_bytes())
    cd = data.find(b"PK\x01\x02")
    data[cd + 24:cd + 28] = struct.pack("<I", 100)  # central directory: "100 bytes inflated"
    archive.write_bytes(bytes(data))
    record = discover(archive).records[0]
    with pytest.raises(SkipImage):  # stops at 100 bytes; the CRC then says it is damaged
        read_bytes(record)


def test_encrypted_zip_says_so(tmp_path):
    archive = _zip(tmp_path / "d.zip", {"a/1.png": _png_bytes(1), "a/2.png": _png_bytes(2)})
    _set_flag(archive, 0x1)
    with pytest.raises(DrlError, match="encrypted zip: not supported, unzip it first"):
        discover(archive)


def test_zip_entry_name_that_is_not_utf8_is_read_as_cp437(tmp_path):
    archive = _zip(tmp_path / "d.zip", {"a/caf\u00e9.png": _png_bytes(1), "a/ok.png": _png_bytes(2)})
    data = archive.read_bytes()
    assert data.count("caf\u00e9".encode()) == 2  # local header + central directory, flag 0x800
    archive.write_bytes(data.replace("caf\u00e9".encode(), b"caf\xe9\xe9"))  # not valid UTF-8
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(archive)  # what made the whole zip "not a readable zip file"
    ds = discover(archive)
    names = sorted(r.path for r in ds.records)
    assert names == [b"caf\xe9\xe9.png".decode("cp437"), "ok.png"]
    assert all(len(read_bytes(r)) > 0 for r in ds.records)


# --------------------------------------------------------------------------- CSVs and names


def test_csv_with_a_field_over_128_kib_skips_that_row_only(tmp_path):
    root = _folder(tmp_path)
    rows = ["filename,label", "cls/img0.png,a", f'cls/img1.png,"{"x" * 200_000}"',
            "cls/img2.png,b"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = discover(root)
    assert ds.layout == "csv"
    assert {r.path: r.label for r in ds.records} == {"cls/img0.png": "a", "cls/img2.png": "b"}
    reasons = [reason for path, reason in ds.skipped]
    assert any(r.startswith("CSV row skipped (line 3: field larger than field limit") for r in reasons)
    assert ("cls/img1.png", "not listed in CSV") in ds.skipped  # nothing vanishes silently


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file systems that store bytes")
def test_file_names_that_are_not_utf8_are_skipped_with_a_reason_and_tables_are_written(
        tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path)
    bad = os.fsdecode(b"caf\xe9.png")
    _png(root / "cls" / bad, seed=9)
    _png(root / os.fsdecode(b"dossier\xff") / "x.png", seed=10)
    ds = discover(root)
    assert len(ds.records) == 3
    reasons = _reasons(ds)
    assert reasons["cls/caf\\xe9.png"].startswith("file name is not valid UTF-8")
    assert reasons["dossier\\xff/x.png"].startswith("file name is not valid UTF-8")

    _tiny_cli(monkeypatch)
    code = cli.main(["features", str(root), "--out", str(tmp_path / "run"),
                     "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    skipped = pd.read_csv(tmp_path / "run" / "skipped.csv")
    assert "cls/caf\\xe9.png" in set(skipped["path"])
    assert len(pd.read_parquet(tmp_path / "run" / "images.parquet")) == 3


# --------------------------------------------------------------------------- output paths


def _tiny_cli(monkeypatch) -> None:
    """The CLI with the tiny random-init backbone (it has no pretrained weights to load)."""
    monkeypatch.setattr(cli, "_feature_config", lambda args, **kw: FeatureConfig(
        backbone="test-tiny", pretrained=False, cache_dir=args.cache_dir, batch_size=4))


def _features(tmp_path, data, out, *extra) -> int:
    return cli.main(["features", str(data), "--out", str(out), "--cache-dir",
                     str(tmp_path / "cache"), *extra])


def _one_line_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def test_out_naming_an_existing_file(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    root = _folder(tmp_path)
    (tmp_path / "out.txt").write_text("mine")
    for command in (["features"], ["run"]):
        code = cli.main([*command, str(root), "--out", str(tmp_path / "out.txt"),
                         "--cache-dir", str(tmp_path / "cache")])
        _one_line_error(capsys, code, "is a file, not a folder")
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_out_below_a_file_cannot_be_created(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    (tmp_path / "f").write_text("x")
    code = _features(tmp_path, _folder(tmp_path), tmp_path / "f" / "run")
    _one_line_error(capsys, code, "cannot be created")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through permission bits")
def test_out_and_cache_dir_not_writable(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _one_line_error(capsys, _features(tmp_path, _folder(tmp_path), locked / "run"),
                        "cannot be created")
        code = cli.main(["features", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                         "--cache-dir", str(locked)])
        assert code == 0 and "goes on without storing to the cache" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    """Whoever runs the tests (root ignores permission bits): a failing write probe."""
    from drlcore.data import outdir

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outdir.tempfile, "TemporaryFile", refuse)
    with pytest.raises(DrlError, match="is not writable .Permission denied"):
        outdir.prepare_output_dir(tmp_path / "run")
    # A cache folder that cannot be written is a note, not an error: the run goes on.
    note = outdir.check_cache_dir(tmp_path / "cache")
    assert "is not writable (Permission denied)" in note and "goes on without" in note


def test_cache_dir_naming_a_file(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    (tmp_path / "cachefile").write_text("x")
    code = cli.main(["features", str(_folder(tmp_path)), "--out", str(tmp_path / "run"),
                     "--cache-dir", str(tmp_path / "cachefile")])
    _one_line_error(capsys, code, "cache folder", "is a file")


def test_out_holding_the_users_files_is_refused_unless_force(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    root = _folder(tmp_path)
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    np.save(out / "features.npy", np.arange(3.0))
    model = _model(tmp_path)
    for command in ("features", "run", "encode"):
        args = [command, *([str(model)] if command == "encode" else []), str(root),
                "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
        _one_line_error(capsys, cli.main(args), "is not empty", "--force")
    np.testing.assert_array_equal(np.load(out / "features.npy"), np.arange(3.0))
    assert _features(tmp_path, root, out, "--force") == 0  # asked for: written there
    assert (out / "images.parquet").is_file()


def test_out_inside_the_input_is_not_read_as_input(tmp_path, monkeypatch):
    _tiny_cli(monkeypatch)
    root = _folder(tmp_path, n=4)
    out = root / "results"
    assert _features(tmp_path, root, out) == 0
    assert _features(tmp_path, root, out) == 0  # its thumbnails are now inside the input
    assert len(pd.read_parquet(out / "images.parquet")) == 4
    # Another run folder of ours inside the input is listed, not ingested.
    assert _features(tmp_path, root, tmp_path / "elsewhere") == 0
    skipped = pd.read_csv(tmp_path / "elsewhere" / "skipped.csv")
    assert ("results", "a drl run folder (output, not input)") in set(
        zip(skipped["path"], skipped["reason"]))
    assert len(pd.read_parquet(tmp_path / "elsewhere" / "images.parquet")) == 4


def test_out_equal_to_the_input_is_refused(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    root = _folder(tmp_path)
    before = sorted(p.name for p in root.rglob("*"))
    _one_line_error(capsys, _features(tmp_path, root, root), "is the input folder itself")
    assert sorted(p.name for p in root.rglob("*")) == before


def test_a_killed_first_run_is_still_ours_to_resume(tmp_path):
    from drlcore.data.outdir import prepare_output_dir

    out = prepare_output_dir(tmp_path / "run")
    (out / "thumbs").mkdir()  # all a run killed mid-embedding leaves
    assert prepare_output_dir(out) == out  # no --force needed


def test_os_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "features.npy"))

    monkeypatch.setitem(cli.COMMANDS, "features", full)
    code = cli.main(["features", "x", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, code, "No space left on device", "features.npy")


# --------------------------------------------------------------------------- model files


def _model(tmp_path) -> Path:
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=8, latent_dim=3, hidden_dims=(16,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(32, 8)))
    path = tmp_path / "model"
    save_model(path, model, {"backbone": {"name": "test-tiny", "timm_name": "test_vit",
                                          "weights_hash": "abc", "feature_dim": 8}})
    return path


def _edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("backbone"), "'backbone' is missing or null"),
    (lambda c: c.update(backbone=None), "'backbone' is missing or null"),
    (lambda c: c["backbone"].update(name=None), "backbone 'name' must be a non-empty string"),
    (lambda c: c["backbone"].update(feature_dim="8"), "backbone 'feature_dim' must be a positive"),
    (lambda c: c["architecture"].update(latent_dim="10"), "'latent_dim' must be int, not str"),
    (lambda c: c.update(architecture=[1, 2]), "'architecture' must be an object"),
    (lambda c: c.update(dim_names="z0"), "'dim_names' must be a list"),
])
def test_model_config_missing_null_or_wrong_types(tmp_path, edit, message, capsys):
    path = _model(tmp_path)
    _edit_config(path, edit)
    with pytest.raises(DrlError, match=message):
        read_model_config(path)
    with pytest.raises(DrlError, match=message):
        load_model(path)
    code = cli.main(["encode", str(path), str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, code, message.split("'")[1])


def test_model_with_nan_weights_is_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from drlcore.io import sha256_file

    path = _model(tmp_path)
    load_model(path)  # the intact model loads
    state = load_file(path / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[name][0, 0] = float("nan")
    save_file(state, path / "model.safetensors")
    _edit_config(path, lambda c: c.update(weights_sha256=sha256_file(path / "model.safetensors")))
    with pytest.raises(DrlError, match=f"NaN or infinite weights \\({name}"):
        load_model(path)
