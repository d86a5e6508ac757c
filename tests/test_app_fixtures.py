"""Contract: the app tests' hand-made run folder (app_fixtures.make_run) has the layout the engine
writes. make_run stays hand-made (it can write 100k objects in seconds, with known effects), so
this test runs the tiny real pipeline once and compares the two folders' files, columns, dtypes
and JSON structure. When the engine's output changes, this fails until make_run follows.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run, make_source_model  # noqa: E402
from test_pipeline import make_dataset  # noqa: E402

from drlcore.data import rundir  # noqa: E402
from drlcore.analysis.analyze import AnalyzeConfig  # noqa: E402
from drlcore.analysis.morphology import FEATURE_NAMES  # noqa: E402

# Files only some runs have: a background job's state, saved views, the demo's marker.
OPTIONAL = {rundir.JOB, rundir.VIEWS, rundir.DEMO_MARKER}
ENCODE_COLUMNS = ("z_std_mean", "recon_error")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    """The tiny real pipeline (as in test_pipeline.py: random test-tiny backbone, random source
    VAE, 36 drawn cells in 3 classes), with known classes like the fixture's."""
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline

    root = tmp_path_factory.mktemp("engine")
    source = make_source_model(root / "source")
    make_dataset(root / "cells")
    config = PipelineConfig(
        features=FeatureConfig(backbone="test-tiny", pretrained=False,
                               cache_dir=str(root / "cache"), batch_size=8),
        source_model=str(source), transfer_epochs=2, known_classes=("round", "long"))
    return run_pipeline(root / "cells", root / "run", config)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("fixture"), "cells", n=60)


def _json(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def _kind(column: str) -> str:
    for kind, pattern in (("latent", r"z_mean_\d+"), ("zscore", r"z_score_\d+"),
                          ("morph", r"morph_.+"), ("map", r"(pca|umap)_[xy]"),
                          ("anomaly", r"anomaly_.+")):
        if re.fullmatch(pattern, column):
            return kind
    return "encode" if column in ENCODE_COLUMNS else "metadata"


def _by_kind(columns) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for c in columns:
        kinds.setdefault(_kind(c), []).append(c)
    return kinds


def _kind_order(columns) -> list[str]:
    order: list[str] = []
    for c in columns:
        if not order or order[-1] != _kind(c):
            order.append(_kind(c))
    return order


def _keys(d) -> list[str]:
    return sorted(d)


def test_same_files(engine, fixture):
    def names(folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir()} - OPTIONAL

    assert names(fixture) == names(engine)
    assert names(fixture / rundir.MODEL) == names(engine / rundir.MODEL)
    # One thumbnail per object, by its image hash, in the same layout (the shards).
    assert names(fixture / rundir.THUMBS) == names(engine / rundir.THUMBS) == {
        rundir.THUMB_TOC, rundir.THUMB_INDEX, rundir.thumb_shard_name(0)}
    for run in (engine, fixture):
        objects = pd.read_parquet(run / rundir.OBJECTS)
        assert rundir.open_thumbs(run).contains(objects["sha256"]).all()


def test_objects_columns_by_kind_and_dtypes(engine, fixture):
    real = pd.read_parquet(engine / rundir.OBJECTS)
    fake = pd.read_parquet(fixture / rundir.OBJECTS)
    real_kinds, fake_kinds = _by_kind(real.columns), _by_kind(fake.columns)
    assert set(fake_kinds) == set(real_kinds)
    assert _kind_order(fake.columns) == _kind_order(real.columns)
    for kind in ("metadata", "encode", "map", "anomaly"):
        assert fake_kinds[kind] == real_kinds[kind], kind
    # Latent means and their z-scores: z_mean_0..d-1 and z_score_0..d-1, in order.
    for run_cols in (real.columns, fake.columns):
        latent = rundir.latent_columns(run_cols)
        assert latent == [rundir.latent_column(j) for j in range(len(latent))]
        assert rundir.zscore_columns(run_cols) == [f"z_score_{j}" for j in range(len(latent))]
    # Morphology: the engine writes every feature it measures; the fixture a few of those names.
    flags = ["morph_ok", "morph_note"]
    # RGB and grey images add the grey integrated contrast and its background (issue 19).
    grey = ["morph_intensity_integrated", "morph_intensity_background"]
    assert real_kinds["morph"] == [*FEATURE_NAMES, *grey, *flags]
    assert fake_kinds["morph"][-2:] == flags
    assert set(fake_kinds["morph"]) <= set(real_kinds["morph"]), \
        sorted(set(fake_kinds["morph"]) - set(real_kinds["morph"]))
    # Dtypes, column by column (latent columns compared as a kind: the dimension counts differ).
    for column in fake.columns:
        twin = column if column in real else (
            "z_mean_0" if _kind(column) == "latent" else "z_score_0")
        assert str(fake[column].dtype) == str(real[twin].dtype), column


def test_images_table_matches(engine, fixture):
    real = pd.read_parquet(engine / rundir.IMAGES)
    fake = pd.read_parquet(fixture / rundir.IMAGES)
    assert list(fake.columns) == list(real.columns)
    assert dict(fake.dtypes.astype(str)) == dict(real.dtypes.astype(str))
    assert list(pd.read_csv(fixture / rundir.SKIPPED).columns) == ["path", "reason"]


def test_correlations_table_matches(engine, fixture):
    real = pd.read_parquet(engine / rundir.CORRELATIONS)
    fake = pd.read_parquet(fixture / rundir.CORRELATIONS)
    assert list(fake.columns) == list(real.columns)
    assert dict(fake.dtypes.astype(str)) == dict(real.dtypes.astype(str))
    assert set(fake["method"]) == set(real["method"])
    for run, corr in ((engine, real), (fixture, fake)):
        names = _json(run, rundir.ANALYSIS)["dim_names"]
        assert list(corr["dim_name"]) == [names[d] for d in corr["dim"]]
        assert set(corr["feature"]) <= set(pd.read_parquet(run / rundir.OBJECTS).columns)


def test_analysis_json_structure(engine, fixture):
    real, fake = _json(engine, rundir.ANALYSIS), _json(fixture, rundir.ANALYSIS)
    assert _keys(fake) == _keys(real)  # "samples" only above scale.ANALYZE_FULL_MAX objects
    assert fake["schema_version"] == real["schema_version"]
    fields = [f.name for f in dataclasses.fields(AnalyzeConfig)]
    assert _keys(fake["config"]) == _keys(real["config"]) == sorted(fields)
    # classification: per representation, per model
    assert _keys(fake["classification"]) == _keys(real["classification"])
    for rep, result in real["classification"].items():
        mine = fake["classification"][rep]
        assert _keys(mine) == _keys(result), rep
        assert _keys(mine["models"]) == _keys(result["models"]), rep
        for model, scores in result["models"].items():
            assert _keys(mine["models"][model]) == _keys(scores), (rep, model)
        assert _keys(mine["chance"]) == _keys(result["chance"])
    # axes: one naming record per latent axis; dim_names are their names
    for run, analysis in ((engine, real), (fixture, fake)):
        n_dims = len(rundir.latent_columns(pd.read_parquet(run / rundir.OBJECTS).columns))
        assert len(analysis["axes"]) == len(analysis["dim_names"]) == n_dims
        assert analysis["dim_names"] == [a["name"] for a in analysis["axes"]]
        assert len(analysis["source_dim_names"]) == n_dims
    record_keys = _keys(real["axes"][0])
    assert all(_keys(a) == record_keys for a in fake["axes"] + real["axes"])
    # anomaly (both runs have known classes), maps, summary
    assert _keys(fake["anomaly"]) == _keys(real["anomaly"])
    assert _keys(fake["anomaly"]["known_vs_rest"]) == _keys(real["anomaly"]["known_vs_rest"])
    for name, result in real["anomaly"]["known_vs_rest"].items():
        assert _keys(fake["anomaly"]["known_vs_rest"][name]) == _keys(result), name
    hold, fake_hold = real["anomaly"]["holdout_each_class"], fake["anomaly"]["holdout_each_class"]
    assert _keys(fake_hold) == _keys(hold)
    per_class = next(iter(hold["per_class"].values()))
    assert all(_keys(v) == _keys(per_class) for v in fake_hold["per_class"].values())
    assert _keys(fake["projections"]) == _keys(real["projections"])
    for name, result in real["projections"].items():
        assert _keys(fake["projections"][name]) == _keys(result)
    assert _keys(fake["summary"]) == _keys(real["summary"])
    best = next(iter(real["summary"]["best_correlations"].values()))
    assert fake["summary"]["best_correlations"]
    assert all(_keys(v) == _keys(best) for v in fake["summary"]["best_correlations"].values())


def test_manifest_layout(engine, fixture):
    real, fake = _json(engine, rundir.MANIFEST), _json(fixture, rundir.MANIFEST)
    assert fake["schema_version"] == real["schema_version"] == rundir.SCHEMA_VERSION
    # The engine records every file it wrote (size, sha256, stage: issue 24); the fixture writes
    # none, like runs made before the records, which readers open unchecked.
    assert _keys(real) == ["files", "schema_version", "stages"]
    assert _keys(fake) == ["schema_version", "stages"]
    assert _keys(fake["stages"]) == _keys(real["stages"]) == sorted(rundir.STAGES)
    for stage, entry in real["stages"].items():
        assert _keys(fake["stages"][stage]) == _keys(entry), stage
    features, fake_features = real["stages"]["features"], fake["stages"]["features"]
    for part in ("data", "counts", "preprocessing", "preprocess", "precision", "cache"):
        assert _keys(fake_features[part]) == _keys(features[part]), part
    assert _keys(fake["stages"]["model"]["backbone"]) == _keys(real["stages"]["model"]["backbone"])
    # The model hash is a sha256 (64 hex digits) and ties the manifest to model/config.json.
    for run, manifest in ((engine, real), (fixture, fake)):
        model_hash = manifest["stages"]["model"]["model_hash"]
        assert re.fullmatch(r"[0-9a-f]{64}", model_hash)
        assert model_hash == manifest["stages"]["encode"]["model_hash"]
        assert model_hash == rundir.model_config(run)["weights_sha256"]
        assert rundir.features_info(run) is not None


def test_model_folder(engine, fixture):
    real, fake = rundir.model_config(engine), rundir.model_config(fixture)
    assert _keys(fake) == _keys(real)
    for part in ("architecture", "backbone", "provenance"):
        assert _keys(fake[part]) == _keys(real[part]), part
    # A run whose model came as it is from a source model (the demo) carries the source's
    # metrics: the fixture's have the shipped source model's layout.
    from drlcore.runs.pipeline import shipped_source_model

    shipped = json.loads((shipped_source_model("effnet-lite0") / rundir.MODEL_METRICS).read_text())
    metrics = rundir.model_metrics(fixture)
    for part in ("headline", "evaluation", "data"):
        assert set(metrics[part]) <= set(shipped[part]), part
    assert set(metrics["evaluation"]["dci"]) <= set(shipped["evaluation"]["dci"])
    assert set(metrics["evaluation"]["omes"]) <= set(shipped["evaluation"]["omes"])
