"""Model directories: round trip, and every refusal the loader promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drlcore.disentangle.artifacts import (CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, load_model, model_hash,
                               read_model_config, save_model)
from drlcore.errors import DrlError
from drlcore.io import sha256_file
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

BACKBONE = {"name": "test-tiny", "timm_name": "test_tiny", "weights_hash": "ab" * 32,
            "feature_dim": 12}


def _model(rng) -> tuple[FeatureVAE, np.ndarray]:
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=12, latent_dim=3, hidden_dims=(16, 8)))
    x = rng.normal(loc=3.0, scale=2.0, size=(50, 12)).astype(np.float32)
    model.fit_standardisation(x)
    return model.eval(), x


@pytest.fixture
def saved(tmp_path, rng):
    model, x = _model(rng)
    digest = save_model(tmp_path / "m", model, {
        "backbone": BACKBONE, "dim_names": ["z0: scale", "z1: inactive", "z2: shape"],
        "dim_factor": ["scale", None, "shape"], "inactive_dims": [1],
        "training": {"steps": 5}, "metrics": {"mig": 0.5}})
    return tmp_path / "m", model, x, digest


def test_round_trip_gives_identical_outputs(saved):
    model_dir, model, x, digest = saved
    assert {p.name for p in model_dir.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE}
    assert digest == sha256_file(model_dir / WEIGHTS_FILE) == model_hash(model_dir)
    loaded, meta = load_model(model_dir, expected_backbone="test-tiny",
                              expected_weights_hash="ab" * 32, expected_feature_dim=12)
    assert not loaded.training
    xt = torch.as_tensor(x)
    with torch.no_grad():
        for a, b in zip(model.encode(xt), loaded.encode(xt)):
            assert torch.equal(a, b)
        assert torch.equal(model.reconstruct(xt), loaded.reconstruct(xt))
    # The standardisation travels in the weights file, not as constants in code.
    assert torch.equal(loaded.feature_mean, model.feature_mean)
    assert meta["model_hash"] == digest
    assert meta["dim_names"][2] == "z2: shape" and meta["dim_factor"][1] is None
    assert meta["metrics"] == {"mig": 0.5}
    cfg = read_model_config(model_dir)
    assert cfg["schema_version"] == 1 and cfg["architecture"]["hidden_dims"] == [16, 8]
    assert cfg["provenance"]["parent_model_hash"] is None


def test_no_pickle_in_the_weights(saved):
    data = (saved[0] / WEIGHTS_FILE).read_bytes()
    assert b"pickle" not in data and not data.startswith(b"PK")  # torch.save zips a pickle


def _rewrite_config(model_dir, **changes):
    path = model_dir / CONFIG_FILE
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unknown_schema_version_is_refused_loudly(saved):
    _rewrite_config(saved[0], schema_version=99)
    with pytest.raises(DrlError, match=r"schema_version 99.*knows only \[1\]"):
        load_model(saved[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"expected_backbone": "effnet-lite0"}, "test-tiny.*effnet-lite0"),
    ({"expected_weights_hash": "cd" * 32}, "other weights"),
    ({"expected_feature_dim": 1280}, "expects 12-d features.*1280-d"),
])
def test_wrong_backbone_is_refused(saved, kwargs, match):
    with pytest.raises(DrlError, match=match):
        load_model(saved[0], **kwargs)


def test_truncated_weights_are_refused(saved):
    path = saved[0] / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DrlError, match="damaged"):
        load_model(saved[0])


def test_weights_that_match_their_hash_but_do_not_parse_are_refused(saved):
    path = saved[0] / WEIGHTS_FILE
    path.write_bytes(b"\x00" * 64)
    _rewrite_config(saved[0], weights_sha256=sha256_file(path))
    with pytest.raises(DrlError, match="cannot be read"):
        load_model(saved[0])


def test_weights_of_another_architecture_are_refused(saved, rng):
    model_dir = saved[0]
    _rewrite_config(model_dir, architecture={**read_model_config(model_dir)["architecture"],
                                             "hidden_dims": [16]})
    with pytest.raises(DrlError, match="does not fit the architecture"):
        load_model(model_dir)


@pytest.mark.parametrize("name", [CONFIG_FILE, METRICS_FILE])
def test_corrupted_json_is_refused(saved, name):
    (saved[0] / name).write_text('{"schema_version": 1, "archit')
    with pytest.raises(DrlError, match="damaged"):
        load_model(saved[0])


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_file_is_refused(saved, name):
    (saved[0] / name).unlink()
    with pytest.raises(DrlError, match=f"{name} is missing"):
        load_model(saved[0])


def test_missing_directory_and_unknown_config_keys(saved, tmp_path):
    with pytest.raises(DrlError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    _rewrite_config(saved[0], architecture={**read_model_config(saved[0])["architecture"],
                                            "depth": 3})
    with pytest.raises(DrlError, match="unknown VAEConfig setting.*depth"):
        load_model(saved[0])


def test_save_refuses_an_unfitted_model_or_bad_meta(tmp_path):
    model = FeatureVAE(VAEConfig(input_dim=12, latent_dim=3))
    with pytest.raises(ValueError, match="never fitted"):
        save_model(tmp_path / "a", model, {"backbone": BACKBONE})
    model.fit_standardisation(np.random.default_rng(0).normal(size=(5, 12)))
    with pytest.raises(ValueError, match="feature_dim"):
        save_model(tmp_path / "b", model, {"backbone": {**BACKBONE, "feature_dim": 7}})
    with pytest.raises(ValueError, match="unknown meta"):
        save_model(tmp_path / "c", model, {"backbone": BACKBONE, "colour": 1})
    assert not (tmp_path / "a").exists()


def test_identical_models_give_identical_bytes(tmp_path, rng):
    model, _ = _model(rng)
    hashes = {save_model(tmp_path / str(i), model, {"backbone": BACKBONE}) for i in range(4)}
    assert len(hashes) == 1  # the model hash is a content hash: caches key on it
