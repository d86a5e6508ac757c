"""What is read back is what was written (issue 24): faults a lab meets, built in the tests.

A flipped bit in a feature-cache shard, a run's features and tables, a thumbnail shard; a
Parquet file cut in half; a full disk (a small tmpfs, mounted when the tests run as root and
skipped otherwise) under the cache and under --out; a read-only cache folder; and in the app, a
damaged run among good ones. Caches recompute what fails its check; run folders refuse it with
a message naming the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drlcore import cli
from drlcore.data import rundir
from drlcore.embedding.features import FeatureConfig
from drlcore.runs.pipeline import PipelineConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import make_dataset, source_model  # noqa: E402,F401 - a fixture


def _config(cache: Path, source: Path) -> PipelineConfig:
    return PipelineConfig(features=FeatureConfig(backbone="test-tiny", pretrained=False,
                                                 cache_dir=str(cache), batch_size=8),
                          source_model=str(source), transfer_epochs=2)


def _flip(path: Path, offset: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, read_only: bool = False):
    """A small filesystem of its own at ``where`` (a full disk on demand); skips the test when
    mounting is not permitted (not root, or no mount namespace)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity") / "cells"
    make_dataset(root)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, source_model):  # noqa: F811
    """A run made with a healthy cache: the numbers every faulty case must reproduce."""
    base = tmp_path_factory.mktemp("reference")
    run = run_pipeline(dataset, base / "run", _config(base / "cache", source_model))
    return run


def _same_result(run: Path, reference: Path) -> None:
    np.testing.assert_array_equal(np.load(run / rundir.FEATURES), np.load(reference / rundir.FEATURES))
    a, b = pd.read_parquet(run / rundir.OBJECTS), pd.read_parquet(reference / rundir.OBJECTS)
    z = rundir.latent_columns(a.columns)
    np.testing.assert_allclose(a[z].to_numpy(), b[z].to_numpy(), atol=1e-6)


def _notes(run: Path) -> list[str]:
    return rundir.read_analysis(run).get("notes", [])


def test_every_file_a_stage_writes_is_recorded_and_the_run_checks_clean(reference, capsys):
    files = rundir.read_manifest(reference)[rundir.FILES]
    for name, stage in [(rundir.FEATURES, "features"), (rundir.IMAGES, "features"),
                        ("thumbs/index.npy", "features"), ("thumbs/shard-00000.bin", "features"),
                        ("model/model.safetensors", "model"), ("model/config.json", "model"),
                        (rundir.OBJECTS, "analyze"), (rundir.CORRELATIONS, "analyze"),
                        (rundir.ANALYSIS, "analyze")]:
        assert files[name]["stage"] == stage, name
    assert cli.main(["check", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "foreign" not in out


def test_a_flipped_bit_in_a_feature_cache_shard_is_re_embedded_with_a_note(
        tmp_path, dataset, source_model, reference):  # noqa: F811
    cache = tmp_path / "cache"
    run_pipeline(dataset, tmp_path / "first", _config(cache, source_model))
    shards = sorted((cache / "features").rglob("shard-*.npy"))
    assert len(shards) >= 2
    for shard in shards[:2]:
        _flip(shard)
    run = run_pipeline(dataset, tmp_path / "second", _config(cache, source_model))
    _same_result(run, reference)  # never the damaged vectors
    assert any("2 feature-cache shard(s)" in n and "embedded again" in n for n in _notes(run))


def test_a_damaged_run_file_is_refused_by_every_command_naming_it(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _flip(run / rundir.FEATURES)
    assert cli.main(["analyze", str(run)]) == 2
    err = capsys.readouterr().err
    assert "features.npy is damaged" in err and "`features` stage" in err
    assert "finished stages are reused from the cache" in err and "Traceback" not in err
    shutil.copy(reference / rundir.FEATURES, run / rundir.FEATURES)

    table = run / rundir.OBJECTS
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # cut short by a copy
    for argv in (["analyze", str(run)], ["export", str(run), "--out", str(tmp_path / "x.csv")],
                 ["figures", str(run), "--out", str(tmp_path / "fig")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "objects.parquet is damaged" in err, (argv, err)
        assert "ArrowInvalid" not in err and "Traceback" not in err
    assert cli.main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert "objects.parquet is damaged" in out and "`analyze` stage" in out

    _flip(run / rundir.CORRELATIONS, -40)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "y.parquet")]) == 2
    assert "damaged" in capsys.readouterr().err


def test_a_full_cache_disk_finishes_the_run_with_one_note(tmp_path, dataset, source_model,
                                                          reference):  # noqa: F811
    with _tmpfs(tmp_path / "cache", "12k") as cache:
        run = run_pipeline(dataset, tmp_path / "run", _config(cache, source_model))
    _same_result(run, reference)
    notes = [n for n in _notes(run) if "could not be written" in n]
    assert len(notes) == 1 and "No space left on device" in notes[0] and str(cache) in notes[0]
    assert rundir.check_run(run).ok


def test_a_read_only_cache_is_read_and_never_fails_the_run(tmp_path, dataset, source_model,
                                                           reference):  # noqa: F811
    with _tmpfs(tmp_path / "cache", "64m") as cache:
        run_pipeline(dataset, tmp_path / "fill", _config(cache, source_model))
        _remount(cache, "ro")
        run = run_pipeline(dataset, tmp_path / "run", _config(cache, source_model))
        _same_result(run, reference)
        assert not any("could not be written" in n for n in _notes(run))  # all served
    with _tmpfs(tmp_path / "empty", "1m", read_only=True) as empty:
        run = run_pipeline(dataset, tmp_path / "run2", _config(empty, source_model))
    _same_result(run, reference)
    assert any("could not be written" in n and "Read-only file system" in n for n in _notes(run))


def test_a_full_disk_under_out_is_a_clear_error_and_a_rerun_resumes(tmp_path, dataset,
                                                                     source_model, reference,
                                                                     capsys):  # noqa: F811
    cache = tmp_path / "cache"
    run_pipeline(dataset, tmp_path / "warm", _config(cache, source_model))
    with _tmpfs(tmp_path / "disk", "96k") as disk:
        out = disk / "run"
        with pytest.raises(OSError, match="No space left on device"):
            run_pipeline(dataset, out, _config(cache, source_model))
        for path in out.rglob("*"):  # what lies under a final name is whole
            if path.is_file() and not path.name.startswith("."):
                if path.suffix == ".parquet":
                    pd.read_parquet(path)
                elif path.suffix == ".npy":
                    np.load(path)
        _remount(disk, "size=64m")
        run = run_pipeline(dataset, out, _config(cache, source_model))
        _same_result(run, reference)
        assert rundir.check_run(run).ok


# --------------------------------------------------------------------------- the app

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
PAGES = ["datasets", "traversals", "correlations", "class_map", "anomalies", "source_model"]


def _record_whole_run(run: Path) -> None:
    """Records for a fixture run, as the stages write them."""
    rundir.record_files(run, "features", [rundir.FEATURES, rundir.IMAGES, rundir.SKIPPED,
                                          *rundir.thumb_files(run)], replace="thumbs/")
    rundir.record_files(run, "model", rundir.model_files(run), replace="model/")
    rundir.record_files(run, "analyze", [rundir.OBJECTS, rundir.CORRELATIONS, rundir.ANALYSIS])


def test_a_damaged_run_shows_as_damaged_and_the_others_open(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_fixtures import make_run

    runs = tmp_path / "runs"
    good = make_run(runs, "good", n=40, seed=1)
    bad = make_run(runs, "cut", n=40, seed=2)  # newest: opens first
    os.utime(good, (1, 1))
    for run in (good, bad):
        _record_whole_run(run)
    table = bad / rundir.OBJECTS
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    words = rundir.check_run(bad).problems()[0]  # what `drl check` says

    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["app.run"] == str(bad)
    errors = " ".join(e.value for e in at.error)
    assert words in errors and "finished stages are reused" in errors
    state = at.dataframe[0].value.set_index("run")["state"]
    assert state["good"] == "intact" and state["cut"].startswith("damaged: ")
    assert words in state["cut"]
    for page in PAGES[1:]:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert any(words in e.value for e in at.error), page
    # The other run opens from the sidebar, on every page.
    at.switch_page("views/datasets.py").run()
    at.sidebar.selectbox(key="app.run_picker").select(str(good)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    for page in PAGES[1:]:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception and not at.error, (page, [e.value for e in at.error])


def test_a_rerun_rebuilds_a_damaged_model_and_keeps_the_analysis(tmp_path, dataset, source_model,
                                                                  reference):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _flip(run / rundir.MODEL / rundir.MODEL_WEIGHTS)
    assert not rundir.check_run(run).ok
    again = run_pipeline(dataset, run, _config(tmp_path / "cache", source_model))
    assert rundir.check_run(again).ok
    _same_result(again, reference)
    # A cached rerun used to leave objects.parquet as `encode` rewrote it, without the
    # analysis columns, while analysis.json said "up to date".
    assert list(pd.read_parquet(again / rundir.OBJECTS).columns) == list(
        pd.read_parquet(reference / rundir.OBJECTS).columns)
