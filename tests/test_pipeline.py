"""The one-shot pipeline and the analysis stage, end to end, on drawn cells and a tiny model.

The backbone is timm's random-init ``test_vit`` (64 px) and the source model a small random VAE,
so these tests check plumbing, caching, resumption and the handling of degenerate runs, not the
quality of the representation (that is measured in the benchmarks and on real data).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.draw import ellipse

from drlcore.data import rundir
from drlcore.analysis.analyze import AnalyzeConfig, analyze_run
from drlcore.disentangle.artifacts import save_model
from drlcore.errors import DrlError
from drlcore.embedding.features import FeatureConfig
from drlcore.runs.pipeline import PipelineConfig, run_pipeline
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

LATENT = 4


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    from drlcore.embedding.backbones import load_backbone

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=backbone.spec.feature_dim, latent_dim=LATENT,
                                 hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, 64)))
    path = tmp_path_factory.mktemp("source") / "model"
    save_model(path, model, {
        "backbone": {"name": "test-tiny", "timm_name": backbone.spec.timm_name,
                     "weights_hash": backbone.weights_hash, "feature_dim": 64},
        "dim_names": [f"z{j}: f{j}" for j in range(LATENT)]})
    return path


def _cell(rng, size: int, radius: float, colour, elongation: float = 1.0) -> np.ndarray:
    image = np.full((size, size, 3), 235, np.uint8)
    rr, cc = ellipse(size / 2, size / 2, radius, radius * elongation, shape=image.shape[:2])
    image[rr, cc] = colour
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def make_dataset(root, n_per_class: int = 12, classes=("round", "long", "pale")) -> None:
    """Three visibly different kinds of drawn cell, one folder per class."""
    rng = np.random.default_rng(0)
    looks = {"round": ((120, 40, 160), 1.0), "long": ((150, 60, 60), 1.8),
             "pale": ((200, 170, 210), 1.0)}
    for cls in classes:
        (root / cls).mkdir(parents=True)
        colour, elongation = looks[cls]
        for i in range(n_per_class):
            radius = 10 + 2 * i % 14
            Image.fromarray(_cell(rng, 80, radius, colour, elongation)).save(
                root / cls / f"{cls}_{i}.png")


def _config(tmp_path, source_model, **kwargs) -> PipelineConfig:
    features = FeatureConfig(backbone="test-tiny", pretrained=False,
                             cache_dir=str(tmp_path / "cache"), batch_size=8)
    return PipelineConfig(features=features, source_model=str(source_model), transfer_epochs=2,
                          **kwargs)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "cells"
    make_dataset(root)
    return root


def test_run_writes_a_complete_run_folder(tmp_path, dataset, source_model):
    run = run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model))
    objects = pd.read_parquet(run / "objects.parquet")
    assert len(objects) == 36
    for col in ("path", "label", "sha256", "z_mean_0", f"z_mean_{LATENT - 1}", "recon_error",
                "morph_area", "morph_ok", "pca_x", "umap_y", "anomaly_knn",
                "anomaly_mahalanobis", "anomaly_score", "z_score_0"):
        assert col in objects, col
    assert objects["morph_ok"].all()
    # Drawn radii are known: measured area must follow them, so the morphology is real.
    assert objects.groupby("label")["morph_area"].median()["round"] > 300
    analysis = json.loads((run / "analysis.json").read_text())
    assert set(analysis["classification"]) == {"latent", "features"}
    assert "holdout_each_class" in analysis["anomaly"]
    assert analysis["projections"]["pca"]["trustworthiness"] > 0.5
    corr = pd.read_parquet(run / "correlations.parquet")
    assert set(corr["method"]) == {"pearson", "spearman", "mi"}
    assert (run / "model" / "model.safetensors").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and set(manifest["stages"]) == set(rundir.STAGES)
    assert manifest["stages"]["features"]["backbone"] == "test-tiny"
    assert manifest["stages"]["pipeline"]["transferred"] is True
    assert not list(run.glob("*.partial"))


def test_second_run_is_served_from_caches(tmp_path, dataset, source_model, monkeypatch):
    config = _config(tmp_path, source_model)
    first = run_pipeline(dataset, tmp_path / "run1", config)

    import drlcore.embedding.backbones as backbones
    import drlcore.disentangle.transfer as transfer

    def forbidden(*args, **kwargs):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(backbones.Backbone, "embed", forbidden)
    monkeypatch.setattr(transfer, "transfer", forbidden)
    second = run_pipeline(dataset, tmp_path / "run2", config)
    a = pd.read_parquet(first / "objects.parquet")
    b = pd.read_parquet(second / "objects.parquet")
    np.testing.assert_array_equal(a.filter(like="z_mean_").to_numpy(),
                                  b.filter(like="z_mean_").to_numpy())


def test_rerun_after_interrupted_analysis_resumes(tmp_path, dataset, source_model, monkeypatch):
    config = _config(tmp_path, source_model)
    import drlcore.analysis.analyze as analyze

    real = analyze._projections

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze, "_projections", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(dataset, tmp_path / "run", config)
    # Nothing half-written: the encoded table is there, the analysis is not.
    assert (tmp_path / "run" / "objects.parquet").is_file()
    assert not (tmp_path / "run" / "analysis.json").exists()
    monkeypatch.setattr(analyze, "_projections", real)
    run = run_pipeline(dataset, tmp_path / "run", config)
    assert "umap_x" in pd.read_parquet(run / "objects.parquet")


def test_analyze_is_idempotent(tmp_path, dataset, source_model):
    run = run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model))
    before = (run / "objects.parquet").read_bytes()
    stamp = (run / "analysis.json").stat().st_mtime_ns
    analyze_run(run, AnalyzeConfig(cache_dir=str(tmp_path / "cache")))
    assert (run / "analysis.json").stat().st_mtime_ns == stamp
    assert (run / "objects.parquet").read_bytes() == before


def test_known_classes_change_the_anomaly_scores(tmp_path, dataset, source_model):
    run = run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model,
                                                          known_classes=("round", "long")))
    analysis = json.loads((run / "analysis.json").read_text())
    objects = pd.read_parquet(run / "objects.parquet")
    assert analysis["anomaly"]["known_classes"] == ["round", "long"]
    assert objects.loc[objects["label"] == "pale", "anomaly_known"].eq(False).all()
    assert "known_vs_rest" in analysis["anomaly"]


def test_one_class_is_a_note_not_a_crash(tmp_path, source_model):
    root = tmp_path / "one"
    make_dataset(root, classes=("round",))
    run = run_pipeline(root, tmp_path / "run", _config(tmp_path, source_model))
    notes = json.loads((run / "analysis.json").read_text())["notes"]
    assert any("one class" in n for n in notes)


def test_one_image_gives_clear_notes(tmp_path, source_model):
    root = tmp_path / "single"
    root.mkdir()
    Image.fromarray(_cell(np.random.default_rng(0), 80, 12, (120, 40, 160))).save(root / "a.png")
    run = run_pipeline(root, tmp_path / "run", _config(tmp_path, source_model))
    analysis = json.loads((run / "analysis.json").read_text())
    assert any("only one image" in n for n in analysis["notes"])
    assert any("too few to fine-tune" in n for n in analysis["notes"])
    assert len(pd.read_parquet(run / "objects.parquet")) == 1


def test_constant_images_and_failed_segmentation(tmp_path, source_model):
    root = tmp_path / "blank"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(root / f"blank_{i}.png")
    run = run_pipeline(root, tmp_path / "run", _config(tmp_path, source_model))
    analysis = json.loads((run / "analysis.json").read_text())
    objects = pd.read_parquet(run / "objects.parquet")
    assert not objects["morph_ok"].any()
    assert objects["morph_area"].isna().all()  # never silent zeros
    joined = " ".join(analysis["notes"])
    assert "segmentation failed on every image" in joined
    assert "same latent code" in joined or "no 2-D maps" in joined


def test_non_finite_features_are_left_out_with_a_note(tmp_path, dataset, source_model):
    run = run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model))
    objects = pd.read_parquet(run / "objects.parquet")
    objects.loc[3, "z_mean_0"] = np.nan
    objects.to_parquet(run / "objects.parquet")
    # Recorded as an encoder would: a file changed behind the manifest's back is refused.
    rundir.record_files(run, "encode", [rundir.OBJECTS])
    analyze_run(run, AnalyzeConfig(cache_dir=str(tmp_path / "cache")))
    analysis = json.loads((run / "analysis.json").read_text())
    assert any("non-finite" in n for n in analysis["notes"])
    objects = pd.read_parquet(run / "objects.parquet")
    assert np.isnan(objects.loc[3, "pca_x"]) and np.isfinite(objects.loc[4, "pca_x"])


def test_zip_input_and_bad_files_are_listed(tmp_path, dataset, source_model):
    (dataset / "round" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dataset.rglob("*.png")):
            zf.write(path, f"cells/{path.relative_to(dataset)}")
    run = run_pipeline(archive, tmp_path / "run", _config(tmp_path, source_model))
    skipped = pd.read_csv(run / "skipped.csv")
    assert skipped["path"].str.contains("broken.png").any()
    assert len(pd.read_parquet(run / "objects.parquet")) == 36


def test_source_model_for_another_backbone_is_refused(tmp_path, dataset, source_model):
    config = PipelineConfig(features=FeatureConfig(backbone="dino-vits16",
                                                   cache_dir=str(tmp_path / "c")),
                            source_model=str(source_model))
    with pytest.raises(DrlError, match="trained on backbone 'test-tiny'"):
        run_pipeline(dataset, tmp_path / "run", config)


def test_no_images_is_a_clear_error(tmp_path, source_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(DrlError):
        run_pipeline(tmp_path / "empty", tmp_path / "run", _config(tmp_path, source_model))


def test_morphology_is_served_from_the_cache_in_a_new_run(tmp_path, dataset, source_model,
                                                          monkeypatch):
    config = _config(tmp_path, source_model)
    run_pipeline(dataset, tmp_path / "run1", config)
    import drlcore.analysis.morphology as morphology

    def forbidden(*args, **kwargs):
        raise AssertionError("morphology should have come from the cache")

    monkeypatch.setattr(morphology, "measure_dataset", forbidden)
    run = run_pipeline(dataset, tmp_path / "run2", config)
    assert pd.read_parquet(run / "objects.parquet")["morph_ok"].all()


def test_new_images_encoded_with_the_reference_model_land_on_its_map(tmp_path, dataset,
                                                                     source_model):
    from drlcore.analysis.analyze import project_onto
    from drlcore.disentangle.encode import encode_run
    from drlcore.embedding.features import extract_features

    config = _config(tmp_path, source_model)
    reference = run_pipeline(dataset, tmp_path / "reference", config)
    new_images = tmp_path / "new"
    (new_images / "round").mkdir(parents=True)
    for path in sorted((dataset / "round").glob("*.png"))[:5]:
        (new_images / "round" / path.name).write_bytes(path.read_bytes())
    extract_features(new_images, tmp_path / "new-run", config.features)
    encode_run(reference / "model", tmp_path / "new-run", tmp_path / "new-run")

    ref = pd.read_parquet(reference / "objects.parquet").set_index("path")
    new = pd.read_parquet(tmp_path / "new-run" / "objects.parquet")
    coords = project_onto(reference, tmp_path / "new-run", "pca")
    np.testing.assert_allclose(coords, ref.loc[new["path"], ["pca_x", "pca_y"]].to_numpy(),
                               atol=1e-6)
    umap = project_onto(reference, tmp_path / "new-run", "umap")
    # Copies of reference images land exactly where their originals are on the UMAP map (that
    # new, unseen points land among their class is checked on clusters in test_projection).
    np.testing.assert_allclose(umap, ref.loc[new["path"], ["umap_x", "umap_y"]].to_numpy(), atol=1e-6)

    other = run_pipeline(new_images, tmp_path / "other-model", config)  # fine-tuned anew
    with pytest.raises(DrlError, match="another model"):
        project_onto(reference, other, "pca")


def test_every_cache_lives_in_its_own_subfolder_of_the_named_cache_folder(tmp_path, dataset,
                                                                          source_model):
    run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "classification", "features", "models", "morphology", "projections"]


@pytest.mark.slow
def test_the_second_core_changes_no_answer(tmp_path, dataset, source_model, monkeypatch):
    """Morphology in worker processes, and the raw features' classifiers and the UMAP map
    prepared in a spare process during the transfer (as on runs of hundreds of images), give
    the run the same numbers as one process does."""
    from drlcore import workers
    from drlcore.analysis import analyze

    with monkeypatch.context() as patch:
        patch.setattr(analyze, "PARALLEL_MORPHOLOGY_MIN", 10)
        patch.setattr(analyze, "PARALLEL_ANALYSIS_MIN", 10)
        patch.setattr(analyze, "_MORPHOLOGY_TASK", 5)  # several tasks per worker
        patch.setattr(workers, "available_cores", lambda: 2)
        run = run_pipeline(dataset, tmp_path / "run", _config(tmp_path, source_model))
    assert any((tmp_path / "cache" / "classification").iterdir()), "nothing classified ahead"
    shared = pd.read_parquet(run / "objects.parquet")
    shared_classes = json.loads((run / "analysis.json").read_text())["classification"]

    # The same run analysed again in this process alone, from an empty cache.
    analyze.analyze_run(run, analyze.AnalyzeConfig(cache_dir=str(tmp_path / "other-cache")))
    alone = pd.read_parquet(run / "objects.parquet")
    alone_classes = json.loads((run / "analysis.json").read_text())["classification"]
    morph = [c for c in alone if c.startswith("morph_")]
    pd.testing.assert_frame_equal(alone[morph], shared[morph])
    np.testing.assert_allclose(alone[["umap_x", "umap_y"]], shared[["umap_x", "umap_y"]])
    for part in ("latent", "features"):
        for model, scores in alone_classes[part]["models"].items():
            for key in ("balanced_accuracy", "confusion_matrix"):
                assert scores[key] == shared_classes[part]["models"][model][key]
