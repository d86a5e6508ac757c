"""The run folder's writers (drlcore.data.rundir): the stages' files and the run's model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from drlcore.data import rundir


def _model(folder, weights: bytes) -> None:
    folder.mkdir(parents=True)
    (folder / rundir.MODEL_CONFIG).write_text("{}")
    (folder / rundir.MODEL_WEIGHTS).write_bytes(weights)


def test_installed_and_committed_models_are_keyed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    source = tmp_path / "source"
    _model(source, b"source")
    assert not rundir.has_model_for(run, "k1") and rundir.model_stage_key(run) is None
    model = rundir.install_model(run, source, "k1")
    assert model == run / rundir.MODEL and (model / rundir.MODEL_WEIGHTS).read_bytes() == b"source"
    assert rundir.has_model_for(run, "k1") and not rundir.has_model_for(run, "k2")
    assert (source / rundir.MODEL_WEIGHTS).is_file()  # copied, not moved
    assert not (source / rundir.MODEL_STAGE_KEY).exists()  # the key is the run's, not the source's

    partial = rundir.new_partial_model(run)
    assert not partial.exists() and partial.parent == run
    _model(partial, b"transferred")
    rundir.commit_model(run, partial, "k2")
    assert not partial.exists()
    assert (run / rundir.MODEL / rundir.MODEL_WEIGHTS).read_bytes() == b"transferred"
    assert rundir.model_stage_key(run) == "k2"
    assert sorted(p.name for p in run.iterdir()) == [rundir.MODEL]  # no .old / .incoming left

    _model(rundir.new_partial_model(run), b"left by a killed run")
    assert not rundir.new_partial_model(run).exists()  # cleared for the next build


def test_stage_files_land_where_readers_look(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    features = np.arange(6, dtype=np.float32).reshape(3, 2)
    images = pd.DataFrame({"path": ["a.png", "b.png", "c.png"]})
    skipped = pd.DataFrame({"path": ["d.txt"], "reason": ["not an image"]})
    rundir.write_features(run, features, images, skipped)
    np.testing.assert_array_equal(np.load(run / rundir.FEATURES), features)
    pd.testing.assert_frame_equal(pd.read_parquet(run / rundir.IMAGES), images)
    assert pd.read_csv(run / rundir.SKIPPED)["reason"].tolist() == ["not an image"]

    objects = images.assign(z_mean_0=[0.1, 0.2, 0.3])
    assert rundir.write_objects(run, objects) == run / rundir.OBJECTS
    assert not rundir.is_complete_run(run)  # encoded, not analysed
    corr = pd.DataFrame({"dim": [0], "feature": ["morph_area"], "method": ["pearson"],
                         "value": [0.5]})
    rundir.write_analysis(run, corr, objects.assign(pca_x=0.0), {"schema_version": 1})
    assert rundir.is_complete_run(run) and rundir.read_analysis(run) == {"schema_version": 1}
    assert "pca_x" in pd.read_parquet(run / rundir.OBJECTS)
    assert pd.read_parquet(run / rundir.CORRELATIONS)["value"].tolist() == [0.5]
