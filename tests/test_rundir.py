"""The run folder's contract: the versioned manifest, its one writer, its upgrade of older
layouts, the typed readers, and a rerun into the same folder keeping every stage's entry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drlcore.data import rundir
from drlcore.errors import DrlError

# The manifest exactly as the code before schema_version wrote it (features stage at the top,
# later stages set beside it by update_json).
V1_MANIFEST = {
    "stage": "features", "backbone": "test-tiny", "timm_name": "test_vit",
    "weights_hash": "ab12cd34", "weights_source": "random-init", "dtype": "fp32",
    "feature_dim": 64, "pooling": "avg",
    "preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                      "interpolation": "bicubic", "pad_to_square": True,
                      "intensity_range": [0.0, 4095.0]},
    "data": {"root": "/data/cells", "layout": "class-folders", "fingerprint": "f" * 32},
    "counts": {"accepted": 3, "skipped": 0, "labels": 1},
    "cache": {"root": "/c", "key": "k", "version": 1},
    "versions": {"drlcore": "0.1"}, "created": "2026-11-28T04:00:00Z",
    "model": {"model_hash": "m" * 64, "parent_model_hash": None, "model_dir": "/r/model",
              "backbone": {"name": "test-tiny", "weights_hash": "ab12cd34"}, "latent_dim": 4,
              "dim_names": ["z0: a", "z1", "z2", "z3"]},
    "encode": {"stage": "encode", "version": 1, "model_hash": "m" * 64, "n_objects": 3},
    "pipeline": {"version": 1, "notes": ["too few images"], "transferred": False},
    "analyze": {"stage": "analyze", "key": "a" * 32, "version": 1},
}


def test_v1_manifest_opens_through_read_manifest(tmp_path):
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(V1_MANIFEST))
    manifest = rundir.read_manifest(tmp_path)
    assert manifest["schema_version"] == rundir.SCHEMA_VERSION
    stages = manifest["stages"]
    assert set(stages) == set(rundir.STAGES)
    assert stages["features"]["backbone"] == "test-tiny"
    assert "model" not in stages["features"] and "stage" not in stages["features"]
    assert stages["model"]["backbone"] == {"name": "test-tiny", "weights_hash": "ab12cd34"}
    assert stages["analyze"] == {"key": "a" * 32, "version": 1}
    info = rundir.features_info(tmp_path)
    assert info.backbone == "test-tiny" and info.weights_hash == "ab12cd34"
    assert info.data_fingerprint == "f" * 32 and info.intensity_range == (0.0, 4095.0)
    assert rundir.model_hash(tmp_path) == "m" * 64
    assert rundir.pipeline_notes(tmp_path) == ["too few images"]
    assert rundir.is_run_dir(tmp_path)


def test_record_stage_upgrades_v1_and_keeps_the_other_stages(tmp_path):
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(V1_MANIFEST))
    rundir.record_stage(tmp_path, "analyze", {"key": "b" * 32, "version": 1})
    raw = json.loads((tmp_path / rundir.MANIFEST).read_text())
    assert raw["schema_version"] == 2 and set(raw) == {"schema_version", "stages"}
    assert raw["stages"]["analyze"]["key"] == "b" * 32
    assert raw["stages"]["features"]["backbone"] == "test-tiny"
    assert raw["stages"]["encode"]["n_objects"] == 3
    assert rundir.read_manifest(tmp_path) == raw


def test_record_stage_creates_and_refuses_unknown_stages(tmp_path):
    assert not rundir.is_run_dir(tmp_path)
    rundir.record_stage(tmp_path, "pipeline", {"notes": []})
    assert rundir.is_run_dir(tmp_path)
    assert rundir.read_manifest(tmp_path)["stages"] == {"pipeline": {"notes": []}}
    with pytest.raises(ValueError, match="unknown run stage"):
        rundir.record_stage(tmp_path, "plotting", {})


def test_read_manifest_refuses_a_future_version_and_damage(tmp_path):
    assert rundir.read_manifest(tmp_path) == {"schema_version": 2, "stages": {}}
    path = tmp_path / rundir.MANIFEST
    path.write_text(json.dumps({"schema_version": 3, "stages": {}}))
    with pytest.raises(DrlError, match="schema_version 3"):
        rundir.read_manifest(tmp_path)
    assert not rundir.is_run_dir(tmp_path)
    path.write_text("{not json")
    with pytest.raises(DrlError, match="cannot be read"):
        rundir.read_manifest(tmp_path)
    assert not rundir.is_run_dir(tmp_path)


@pytest.mark.parametrize("content", ['{"name": "my-package", "version": "1.0"}', "[1, 2]",
                                     '{"schema_version": 2}'])
def test_is_run_dir_is_false_for_other_manifests(tmp_path, content):
    (tmp_path / rundir.MANIFEST).write_text(content)
    assert not rundir.is_run_dir(tmp_path)


def test_latent_columns_sort_numerically_and_ignore_lookalikes():
    cols = ["path", "z_mean_10", "z_mean_2", "z_mean_0", "z_mean_x", "z_std_mean", "z_score_1",
            "z_mean_1", "zz_mean_3", "z_mean_9"]
    assert rundir.latent_columns(cols) == ["z_mean_0", "z_mean_1", "z_mean_2", "z_mean_9",
                                           "z_mean_10"]
    assert rundir.zscore_columns(cols) == ["z_score_1"]
    assert rundir.latent_index("z_mean_12") == 12 and rundir.latent_index("z_std_mean") is None
    assert rundir.latent_column(3) == "z_mean_3"


def test_dim_names_fall_back_per_axis(tmp_path):
    assert rundir.dim_names(tmp_path, 2) == ["z0", "z1"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"dim_names": ["z0: size", ""]}))
    assert rundir.dim_names(tmp_path, 3) == ["z0: size", "z1", "z2"]


def test_read_analysis_is_empty_before_the_analysis_and_refuses_damage(tmp_path):
    assert rundir.read_analysis(tmp_path) == {}
    (tmp_path / rundir.ANALYSIS).write_text(json.dumps({"schema_version": 1, "dim_names": ["z0"]}))
    assert rundir.read_analysis(tmp_path)["dim_names"] == ["z0"]
    (tmp_path / rundir.ANALYSIS).write_text("{")
    with pytest.raises(DrlError, match="not valid JSON"):
        rundir.read_analysis(tmp_path)


def test_default_runs_dir_reads_the_environment_when_called(tmp_path):
    assert rundir.default_runs_dir({"DRL_RUNS_DIR": str(tmp_path)}) == tmp_path
    assert rundir.default_runs_dir({}).name == "runs"


def test_load_features_dir_checks_the_folder(tmp_path):
    with pytest.raises(DrlError, match="lacks"):
        rundir.load_features_dir(tmp_path)
    np.save(tmp_path / rundir.FEATURES, np.zeros((3, 4), np.float32))
    pd.DataFrame({"path": ["a", "b", "c"]}).to_parquet(tmp_path / rundir.IMAGES)
    rundir.record_stage(tmp_path, "pipeline", {})
    with pytest.raises(DrlError, match="which backbone"):
        rundir.load_features_dir(tmp_path)
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(V1_MANIFEST))
    features, table, entry = rundir.load_features_dir(tmp_path)
    assert features.shape == (3, 4) and len(table) == 3 and entry["backbone"] == "test-tiny"


def test_provenance_names_backbone_model_and_data(tmp_path):
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(V1_MANIFEST))
    stamp = rundir.provenance(tmp_path, n_objects=3)
    assert stamp["backbone"] == "test-tiny" and stamp["model hash"] == "m" * 64
    assert stamp["data fingerprint"] == "f" * 32 and stamp["objects"] == 3
    # Features made before engines existed ran on torch.
    assert stamp["engine"] == "torch"


def _tiny_pipeline(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from app_fixtures import make_source_model, make_zip

    from drlcore.runs.pipeline import PipelineConfig

    source = make_source_model(tmp_path / "source")
    config = PipelineConfig.from_dict({
        "features": {"backbone": "test-tiny", "pretrained": False, "batch_size": 8,
                     "cache_dir": str(tmp_path / "cache")},
        "source_model": str(source), "transfer_epochs": 1, "umap": False})
    return make_zip(tmp_path / "cells.zip", n_per_class=6), config


def test_rerun_into_the_same_folder_keeps_every_stage(tmp_path):
    from drlcore.analysis.analyze import AnalyzeConfig, analyze_run
    from drlcore.runs.pipeline import run_pipeline

    data, config = _tiny_pipeline(tmp_path)
    run = run_pipeline(data, tmp_path / "run", config)
    first = rundir.read_manifest(run)["stages"]
    assert set(first) == set(rundir.STAGES)

    run_pipeline(data, run, config)  # every stage is up to date this time
    second = rundir.read_manifest(run)["stages"]
    assert set(second) == set(rundir.STAGES)
    assert second["analyze"] == first["analyze"] and second["model"] == first["model"]
    assert second["features"]["data"] == first["features"]["data"]

    # An analysis that is up to date still records itself when its entry went missing.
    manifest = rundir.read_manifest(run)
    del manifest["stages"]["analyze"]
    (run / rundir.MANIFEST).write_text(json.dumps(manifest))
    analyze_run(run, AnalyzeConfig(umap=False, cache_dir=config.features.cache_dir))
    assert rundir.stage_entry(run, "analyze") == first["analyze"]


def test_rerun_into_a_v1_run_folder_upgrades_it_and_keeps_every_stage(tmp_path):
    from drlcore.runs.pipeline import run_pipeline

    data, config = _tiny_pipeline(tmp_path)
    run = run_pipeline(data, tmp_path / "run", config)
    stages = rundir.read_manifest(run)["stages"]
    # Rewrite the manifest as the code before schema_version left it.
    v1 = {"stage": "features", **stages["features"],
          **{name: {"stage": name, **stages[name]} if name in ("encode", "analyze")
             else stages[name] for name in ("model", "encode", "pipeline", "analyze")}}
    (run / rundir.MANIFEST).write_text(json.dumps(v1))
    assert rundir.read_manifest(run)["stages"] == stages  # opens as it was written

    run_pipeline(data, run, config)
    raw = json.loads((run / rundir.MANIFEST).read_text())
    assert raw["schema_version"] == 2 and set(raw["stages"]) == set(rundir.STAGES)
    assert raw["stages"]["analyze"] == stages["analyze"]


# --------------------------------------------------------------------------- file records


def _recorded_run(tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    run.mkdir()
    rundir.record_stage(run, "features", {"backbone": "b", "data": {"root": "/data/cells"}})
    np.save(run / rundir.FEATURES, np.arange(40, dtype=np.float32).reshape(10, 4))
    pd.DataFrame({"row": range(10), "x": np.linspace(0, 1, 10)}).to_parquet(run / rundir.OBJECTS)
    rundir.record_files(run, "features", [rundir.FEATURES])
    rundir.record_files(run, "encode", [rundir.OBJECTS])
    return run


def _flip(path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_records_say_size_hash_and_stage(tmp_path):
    run = _recorded_run(tmp_path)
    files = rundir.read_manifest(run)[rundir.FILES]
    assert files[rundir.FEATURES]["stage"] == "features"
    assert files[rundir.FEATURES]["size"] == (run / rundir.FEATURES).stat().st_size
    assert files[rundir.OBJECTS]["stage"] == "encode"
    assert rundir.load_features(run).shape == (10, 4)
    assert len(rundir.read_table(run, rundir.OBJECTS)) == 10
    # A later stage rewriting the manifest keeps the records.
    rundir.record_stage(run, "analyze", {"key": "k"})
    assert set(rundir.read_manifest(run)[rundir.FILES]) == {rundir.FEATURES, rundir.OBJECTS}


def test_a_flipped_bit_in_features_is_refused_naming_file_stage_and_fix(tmp_path):
    run = _recorded_run(tmp_path)
    _flip(run / rundir.FEATURES)
    with pytest.raises(DrlError) as err:
        rundir.load_features(run)
    text = str(err.value)
    assert "features.npy is damaged" in text and "sha256" in text
    assert "`features` stage" in text
    assert f"rerun `drl run /data/cells --out {run}`: finished stages are reused" in text
    rundir.load_features(run, full=False)  # sizes only: a bit flip passes, as documented


def test_a_truncated_table_is_a_clear_error_with_or_without_a_record(tmp_path):
    run = _recorded_run(tmp_path)
    path = run / rundir.OBJECTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DrlError, match=r"objects.parquet is damaged: \d[\d,]* bytes where"):
        rundir.read_table(run, rundir.OBJECTS)
    manifest = rundir.read_manifest(run)
    del manifest[rundir.FILES][rundir.OBJECTS]  # as a run written before the records
    (run / rundir.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DrlError, match="cannot be read as a table"):
        rundir.read_table(run, rundir.OBJECTS)


def test_check_run_reports_missing_damaged_and_foreign(tmp_path, capsys):
    from drlcore import cli

    run = _recorded_run(tmp_path)
    assert cli.main(["check", str(run)]) == 0
    assert "all 2 recorded files intact" in capsys.readouterr().out
    _flip(run / rundir.OBJECTS)
    (run / "notes.txt").write_text("mine")
    report = rundir.check_run(run)
    assert not report.ok and [d[0] for d in report.damaged] == [rundir.OBJECTS]
    assert report.foreign == ["notes.txt"]
    assert cli.main(["check", str(run), "--quick"]) == 0  # same size: only the hash sees it
    capsys.readouterr()
    assert cli.main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert "objects.parquet is damaged" in out and "`encode` stage" in out
    assert "notes.txt is foreign" in out
    (run / rundir.FEATURES).unlink()
    report = rundir.check_run(run)
    assert [m[0] for m in report.missing] == [rundir.FEATURES]
    assert "is missing (written by the `features` stage)" in report.problems()[0]


def test_a_damaged_thumbnail_shard_is_never_served_and_is_rewritten(tmp_path):
    run = tmp_path / "run"
    shas = [f"{i:064x}" for i in range(6)]
    with rundir.ThumbWriter(run, max_count=3) as writer:
        for i, sha in enumerate(shas):
            writer.add(sha, bytes([i]) * 50)
    rundir.record_files(run, "features", rundir.thumb_files(run), replace="thumbs/")
    _flip(run / rundir.THUMBS / rundir.thumb_shard_name(1))
    thumbs = rundir.open_thumbs(run)
    assert thumbs.get(shas[0]) == bytes([0]) * 50
    assert thumbs.get(shas[4]) is None                 # in the damaged shard: none, not wrong
    names, _, _ = thumbs.locations(shas)
    assert names[:3] == [rundir.thumb_shard_name(0)] * 3 and names[3:] == [None] * 3
    assert [d[0] for d in rundir.check_run(run).damaged] == ["thumbs/shard-00001.bin"]
    writer = rundir.ThumbWriter(run, max_count=3)     # the next features stage
    assert list(writer.missing(shas)) == [False] * 3 + [True] * 3
    with writer:
        for i in range(3, 6):
            writer.add(shas[i], bytes([i]) * 50)
    rundir.record_files(run, "features", rundir.thumb_files(run), replace="thumbs/")
    thumbs = rundir.open_thumbs(run)
    assert [thumbs.get(s) for s in shas] == [bytes([i]) * 50 for i in range(6)]
    assert rundir.check_run(run).ok and not (run / "thumbs" / "shard-00001.bin").exists()
