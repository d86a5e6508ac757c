"""Large-run helpers: the stratified sampler, chunked hashing, and analysis above the threshold."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from drlcore.analysis import scale
from drlcore.runs.pipeline import run_pipeline


def test_stratified_sample_keeps_class_proportions_and_small_classes():
    labels = np.array(["a"] * 9000 + ["b"] * 900 + ["c"] * 97 + ["d"] * 3)
    idx = scale.stratified_sample(len(labels), 1000, labels, seed=1)
    assert len(idx) == 1000 and len(np.unique(idx)) == 1000
    assert np.all(np.diff(idx) > 0)
    counts = pd.Series(labels[idx]).value_counts()
    assert abs(counts["a"] - 900) <= 2 and abs(counts["b"] - 90) <= 2
    assert counts["c"] in (9, 10, 11)
    assert counts["d"] >= 1  # 0.3 expected: a rare class is never dropped


def test_stratified_sample_is_seeded_and_uniform_without_labels():
    a = scale.stratified_sample(10_000, 500, None, seed=3)
    b = scale.stratified_sample(10_000, 500, None, seed=3)
    c = scale.stratified_sample(10_000, 500, None, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 500 and a.min() >= 0 and a.max() < 10_000
    # Uniform: each half of the range gets about half of the sample.
    assert 200 < (a < 5000).sum() < 300
    assert np.array_equal(scale.stratified_sample(7, 10, None), np.arange(7))


def test_chunked_hash_equals_whole_buffer_hash(tmp_path):
    X = np.random.default_rng(0).normal(size=(1001, 13)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    whole = hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()
    assert scale.sha256_array(mm, chunk_bytes=1000) == whole
    assert scale.sha256_array(X) == whole
    assert scale.sha256_array(X[:, 2:5], chunk_bytes=64) == hashlib.sha256(
        np.ascontiguousarray(X[:, 2:5]).tobytes()).hexdigest()
    empty = np.zeros((5, 0))
    assert scale.sha256_array(empty) == hashlib.sha256(b"").hexdigest()


def test_analysis_above_the_threshold_records_its_samples(tmp_path, monkeypatch):
    from tests.test_pipeline import _config, make_dataset

    monkeypatch.setattr(scale, "ANALYZE_FULL_MAX", 30)
    monkeypatch.setattr(scale, "CORRELATION_SAMPLE", 20)
    monkeypatch.setattr(scale, "CLASSIFICATION_SAMPLE", 24)
    monkeypatch.setattr(scale, "UMAP_FIT_SAMPLE", 22)
    monkeypatch.setattr(scale, "MAP_TRANSFORM_CHUNK", 5)
    monkeypatch.setattr(scale, "KNN_EXACT_MAX", 30)
    from drlcore.analysis import analyze

    monkeypatch.setattr(analyze, "MORPHOLOGY_CHUNK", 10)
    make_dataset(tmp_path / "cells")
    model = _make_source_model(tmp_path)
    run = run_pipeline(tmp_path / "cells", tmp_path / "run", _config(tmp_path, model))
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["samples"] == {"n_objects": 36, "correlations": 20, "classification": 24,
                                   "umap_fit": 22}
    assert any("stratified by label" in n and "20" in n and "fitted on one of 22" in n
               for n in analysis["notes"])
    assert analysis["projections"]["umap"]["fitted_on"] == 22
    assert "fitted_on" not in analysis["projections"]["pca"]
    assert analysis["anomaly"]["knn"] == {"k": 10, "method": "approximate",
                                          "index": "pynndescent"}
    assert any("approximate nearest neighbours" in n for n in analysis["notes"])
    objects = pd.read_parquet(run / "objects.parquet")
    for col in ("morph_area", "pca_x", "umap_y", "anomaly_knn", "anomaly_score", "z_score_0"):
        assert col in objects and objects[col].notna().all(), col
    assert set(analysis["classification"]) == {"latent", "features"}
    # Morphology is measured and cached a chunk at a time (36 distinct images, chunks of 10).
    morph_cache = tmp_path / "cache" / "morphology" / f"v{analyze.MORPHOLOGY_CACHE_VERSION}"
    # (one folder per chunk; each entry's checksum record sits beside it as <key>.sums.json)
    assert len([p for p in morph_cache.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 4
    corr = pd.read_parquet(run / "correlations.parquet")
    assert set(corr["method"]) == {"pearson", "spearman", "mi"}
    # Placing objects on this map refits the very map drawn: the sample's own copies land on
    # their places (transform puts exact copies on their reference point).
    from drlcore.analysis.analyze import project_onto

    placed = project_onto(run, run, "umap")
    on_map = objects[["umap_x", "umap_y"]].to_numpy()
    same = np.isclose(placed, on_map, atol=1e-6).all(axis=1)
    assert same.sum() >= 22


def _make_source_model(tmp_path):
    import torch

    from drlcore.disentangle.artifacts import save_model
    from drlcore.embedding.backbones import load_backbone
    from drlcore.disentangle.vae import FeatureVAE, VAEConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=backbone.spec.feature_dim, latent_dim=4,
                                 hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, 64)))
    path = tmp_path / "source" / "model"
    save_model(path, model, {
        "backbone": {"name": "test-tiny", "timm_name": backbone.spec.timm_name,
                     "weights_hash": backbone.weights_hash, "feature_dim": 64},
        "dim_names": [f"z{j}: f{j}" for j in range(4)]})
    return path
