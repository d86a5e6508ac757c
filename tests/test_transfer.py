"""Transfer: fine-tuning a source model on target features (tiny synthetic models and features)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from drlcore.disentangle.artifacts import load_model, read_metrics, save_model
from drlcore.errors import DrlError
from drlcore.disentangle.train import encode_means, train_unsupervised
from drlcore.disentangle.transfer import (TransferConfig, anchor_names, fine_tune, split_rows, transfer)

D, J = 24, 6
BACKBONE = {"name": "test-tiny", "timm_name": "test_vit", "weights_hash": "ab" * 32,
            "feature_dim": D}


def _features(n: int, seed: int, n_factors: int = 4):
    """Features = a random linear mixing of independent factors + noise; returns (x, factors)."""
    rng = np.random.default_rng(seed)
    mixing = np.linalg.qr(np.random.default_rng(99).normal(size=(D, D)))[0][:, :n_factors] * 3
    f = rng.normal(size=(n, n_factors))
    x = f @ mixing.T + 0.05 * rng.normal(size=(n, D))
    return x.astype(np.float32), f


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    x, _ = _features(400, seed=0)
    result = train_unsupervised(x, latent_dim=J, hidden_dims=(32,), steps=60, batch_size=64)
    names = [f"z{j}: f{j}" for j in range(J)]
    model_dir = tmp_path_factory.mktemp("src") / "source"
    digest = save_model(model_dir, result.model, {
        "backbone": BACKBONE, "dim_names": names, "dim_factor": [f"f{j}" for j in range(J)],
        "training": {"method": "beta-vae"}, "metrics": {"headline": {"mig": 0.5}}})
    return model_dir, digest, names


def _write_features_dir(path, features, backbone="test-tiny", weights_hash="ab" * 32):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "features.npy", features)
    n = len(features)
    pd.DataFrame({"row": np.arange(n), "path": [f"c{i % 2}/img_{i}.png" for i in range(n)],
                  "label": [f"c{i % 2}" for i in range(n)], "split": [None] * n,
                  "sha256": [f"{i:064x}" for i in range(n)], "width": 10, "height": 10,
                  "mode": "RGB", "note": None, "source": "/x"}).to_parquet(path / "images.parquet")
    (path / "manifest.json").write_text(json.dumps({
        "stage": "features", "backbone": backbone, "weights_hash": weights_hash,
        "feature_dim": features.shape[1], "data": {"fingerprint": "f" * 32}}))
    return path


def test_transfer_keeps_names_changes_weights_and_records_the_parent(source_model, tmp_path):
    model_dir, parent_hash, names = source_model
    target, _ = _features(300, seed=5)
    target = target * 1.5 + 2.0  # a domain shift
    features_dir = _write_features_dir(tmp_path / "run", target)
    out = tmp_path / "run" / "model"
    metrics = transfer(model_dir, features_dir, out,
                       TransferConfig(epochs=3, patience=0, batch_size=32))

    source, _ = load_model(model_dir)
    tuned, meta = load_model(out, expected_backbone="test-tiny")
    assert meta["dim_names"] == names
    assert meta["provenance"]["parent_model_hash"] == parent_hash
    assert meta["training"]["method"] == "transfer"
    assert meta["training"]["data_fingerprint"] == "f" * 32
    changed = [k for k in source.state_dict() if k.startswith(("encoder", "decoder"))
               and not torch.equal(source.state_dict()[k], tuned.state_dict()[k])]
    assert len(changed) == 8  # every weight and bias of both MLPs (two linear layers each)
    np.testing.assert_allclose(tuned.feature_mean.numpy(), target.mean(0), atol=0.3)

    saved = read_metrics(out)["transfer"]
    assert [p["epoch"] for p in saved["curve"]] == [0, 1, 2, 3]
    assert saved["curve"][-1]["val"]["loss"] < saved["curve"][0]["val"]["loss"]
    assert saved["best_epoch"] == saved["epochs_run"] == 3
    assert metrics["transfer"]["n_val"] == 30 and metrics["source"]["model_hash"] == parent_hash
    assert "anchors" not in metrics and not any(meta["extra"]["anchored"])


def test_early_stopping_keeps_the_best_validation_epoch(source_model):
    model_dir, _, _ = source_model
    x, _ = _features(200, seed=3)
    model, _ = load_model(model_dir)
    # lr so high that the validation loss stops improving quickly; the best epoch is restored.
    tuned, info = fine_tune(model, x, TransferConfig(epochs=60, patience=3, lr=3e-2,
                                                     batch_size=32))
    vals = [p["val"]["loss"] for p in info["curve"]]
    assert info["best_epoch"] == int(np.argmin(vals))
    assert info["epochs_run"] == info["best_epoch"] + 3 < 60
    assert "early stopping" in info["stopping"]


def test_transfer_is_deterministic_and_refuses_another_backbone(source_model, tmp_path):
    model_dir, _, _ = source_model
    target, _ = _features(200, seed=6)
    cfg = TransferConfig(epochs=2, batch_size=64)
    transfer(model_dir, target, tmp_path / "a", cfg)
    transfer(model_dir, target, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()

    wrong = _write_features_dir(tmp_path / "wrong", target[:50], backbone="dino-vits16")
    with pytest.raises(DrlError, match="dino-vits16"):
        transfer(model_dir, wrong, tmp_path / "c", cfg)
    with pytest.raises(DrlError, match="expects 24-d"):
        transfer(model_dir, target[:50, :10], tmp_path / "d", cfg)
    assert not (tmp_path / "c").exists()


def test_another_latent_size_gets_a_new_head_and_no_source_names(source_model, tmp_path):
    model_dir, _, _ = source_model
    target, _ = _features(200, seed=7)
    transfer(model_dir, target, tmp_path / "m", TransferConfig(epochs=1, latent_dim=3))
    model, meta = load_model(tmp_path / "m")
    source, _ = load_model(model_dir)
    assert model.config.latent_dim == 3 and meta["dim_factor"] == [None] * 3
    assert read_metrics(tmp_path / "m")["transfer"]["new_head"] is True
    # Hidden layers start from the source weights; only the resized head is new.
    assert model.encoder[0].weight.shape == source.encoder[0].weight.shape


def test_freezing_keeps_that_half_at_the_source_weights(source_model):
    model_dir, _, _ = source_model
    x, _ = _features(200, seed=8)
    source, _ = load_model(model_dir)
    model, _ = load_model(model_dir)
    tuned, _ = fine_tune(model, x, TransferConfig(epochs=2, patience=0, freeze="decoder"))
    for k, v in source.decoder.state_dict().items():
        assert torch.equal(v, tuned.decoder.state_dict()[k])
    assert not torch.equal(source.encoder[0].weight, tuned.encoder[0].weight)


def test_configs_check_their_values():
    with pytest.raises(DrlError, match="freeze"):
        TransferConfig(freeze="all")
    with pytest.raises(DrlError, match="twice"):
        TransferConfig(anchors=("morph_area", "morph_area"))
    with pytest.raises(DrlError, match="unknown .*Config setting"):
        TransferConfig.from_dict({"epochs": 2, "momentum": 0.9})
    cfg = TransferConfig(anchors=("morph_area",), capacity=5.0)
    assert TransferConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert anchor_names("area, hue") == ("morph_area", "morph_hue")
    with pytest.raises(DrlError, match="not a morphology feature"):
        anchor_names("areaa")


# -- anchored axes --------------------------------------------------------------------------------


def _anchored_data(n: int = 400):
    """A known 'area' factor linearly embedded in the features with three other factors."""
    x, f = _features(n, seed=11)
    return x, {"morph_area": 50.0 + 10.0 * f[:, 2]}


def test_anchored_axis_follows_the_feature_on_held_out_images(source_model, tmp_path):
    model_dir, _, _ = source_model
    x, values = _anchored_data()
    cfg = TransferConfig(epochs=30, batch_size=32, anchors=("morph_area",), anchor_weight=50.0)
    metrics = transfer(model_dir, x, tmp_path / "m", cfg, anchor_values=values)
    report = metrics["anchors"]["morph_area"]
    assert report["axis"] == 0
    assert report["n_heldout"] == 80  # 20% of 400
    assert abs(report["r_heldout"]) > 0.9, report
    assert report["ci"][0] <= report["r_heldout"] <= report["ci"][1]
    _, meta = load_model(tmp_path / "m")
    assert meta["dim_factor"][0] == "anchor:area" and meta["extra"]["anchored"][0]
    assert not any(meta["extra"]["anchored"][1:])
    held = metrics["anchor_heldout"]
    assert held["rows"] == split_rows(len(x), cfg)["heldout"].tolist()
    assert len(held["sha256"]) == 64

    # Unanchored, the same axis has no reason to follow area.
    plain = transfer(model_dir, x, tmp_path / "p", TransferConfig(epochs=30, batch_size=32))
    assert "anchors" not in plain
    z = encode_means(load_model(tmp_path / "p")[0], x)
    rows = held["rows"]
    r_plain = abs(np.corrcoef(z[rows, 0], values["morph_area"][rows])[0, 1])
    assert r_plain < abs(report["r_heldout"]) - 0.2, (r_plain, report["r_heldout"])


def test_held_out_rows_never_reach_the_fine_tuning(source_model):
    """By construction: changing held-out features and anchor values changes nothing."""
    model_dir, _, _ = source_model
    x, values = _anchored_data(200)
    cfg = TransferConfig(epochs=3, batch_size=32, anchors=("morph_area",))
    held = split_rows(len(x), cfg)["heldout"]
    assert len(held) == 40 and not set(held) & set(split_rows(len(x), cfg)["train"])

    x2, values2 = x.copy(), {"morph_area": values["morph_area"].copy()}
    x2[held] += 100.0
    values2["morph_area"][held] = np.nan  # would poison the loss if any held-out row entered it
    a, _ = fine_tune(load_model(model_dir)[0], x, cfg, values)
    b, _ = fine_tune(load_model(model_dir)[0], x2, cfg, values2)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_anchored_mode_refuses_missing_or_constant_values(source_model):
    model_dir, _, _ = source_model
    x, _ = _anchored_data(100)
    cfg = TransferConfig(epochs=1, anchors=("morph_area",))
    with pytest.raises(DrlError, match="no values"):
        fine_tune(load_model(model_dir)[0], x, cfg, None)
    with pytest.raises(DrlError, match="constant"):
        fine_tune(load_model(model_dir)[0], x, cfg, {"morph_area": np.ones(100)})


@pytest.mark.slow
def test_anchored_drl_run_measures_morphology_first_and_records_the_anchor(tmp_path):
    """``drl run --anchor area``: morphology is measured before transfer (on the run's images)
    and the anchored axis is reported on held-out images; the default run stays unanchored."""
    import test_pipeline as tp

    from drlcore.embedding.backbones import load_backbone
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline
    from drlcore.disentangle.vae import FeatureVAE, VAEConfig

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=64, latent_dim=4, hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, 64)))
    source = tmp_path / "source"
    save_model(source, model, {"backbone": {"name": "test-tiny", "timm_name":
                                            backbone.spec.timm_name, "weights_hash":
                                            backbone.weights_hash, "feature_dim": 64}})
    tp.make_dataset(tmp_path / "cells")
    features = FeatureConfig(backbone="test-tiny", pretrained=False,
                             cache_dir=str(tmp_path / "cache"), batch_size=8)
    run = run_pipeline(tmp_path / "cells", tmp_path / "run",
                       PipelineConfig(features=features, source_model=str(source),
                                      transfer_epochs=5, anchors=("area",), umap=False))
    metrics = read_metrics(run / "model")
    assert metrics["anchors"]["morph_area"]["axis"] == 0
    assert metrics["anchors"]["morph_area"]["n_heldout"] == round(0.2 * 36)
    assert load_model(run / "model")[1]["dim_factor"][0] == "anchor:area"


def test_std_floor_tames_nearly_dead_feature_units():
    from drlcore.disentangle.vae import FeatureVAE, VAEConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    x[:, 3] = 0.0
    x[7, 3] = 1.0  # a unit that fires on one image: plain standardisation makes it |z| = 20
    model = FeatureVAE(VAEConfig(input_dim=8, latent_dim=2, hidden_dims=(4,)))
    model.fit_standardisation(x)
    z = model.standardise(torch.from_numpy(x).float())
    assert abs(float(z[7, 3])) > 19  # ~sqrt(n)
    model.fit_standardisation(x, min_relative_std=0.3)
    median = float(np.median(x.std(0, ddof=1)))
    assert float(model.feature_std[3]) == pytest.approx(0.3 * median, rel=1e-4)
    np.testing.assert_allclose(model.feature_std.numpy()[[0, 1, 2]], x.std(0, ddof=1)[:3],
                               rtol=1e-5)  # ordinary dimensions keep their own std


def test_early_stopping_of_an_anchored_run_judges_the_anchor_term_too(source_model):
    """The validation loss that picks the epoch includes the anchor term (validation rows are
    anchored with training statistics), so an anchored run never falls back to the source model
    because the VAE half of the loss was best before any anchoring."""
    model_dir, _, _ = source_model
    x, values = _anchored_data(300)
    cfg = TransferConfig(epochs=15, patience=5, batch_size=32, anchors=("morph_area",),
                         anchor_weight=50.0)
    _, info = fine_tune(load_model(model_dir)[0], x, cfg, values)
    vals = [point["val"] for point in info["curve"]]
    assert all("anchor" in v for v in vals)
    # The chosen epoch is the minimum of the full objective on the validation rows.
    full = [v["loss"] for v in vals]
    assert info["best_epoch"] == int(np.argmin(full[: info["epochs_run"] + 1]))
    assert info["best_epoch"] > 0 and vals[info["best_epoch"]]["anchor"] < vals[0]["anchor"]
    for v in vals:
        assert v["loss"] >= v["anchor"] * cfg.anchor_weight
