"""Reduced precision: the downstream agreement core on known answers, and ``--precision`` through
the features stage (manifest, cache key, CLI, Dask workers) with the tiny random backbone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from drlcore.embedding import backbones
from drlcore.embedding.backbones import get_spec, load_backbone, precision_decision
from drlcore.cli import build_parser, main
from drlcore.errors import DrlError
from drlcore.data import rundir
from drlcore.embedding.features import FeatureConfig, extract_features
from drlcore.embedding.precision import (MIN_KNN_OVERLAP, MIN_LATENT_R, accuracy_noise, agreement,
                               axis_correlations, knn_overlap)

# ---------------------------------------------------------------------------------------------
# The pure core: known answers


def _clustered(rng, n_per_class=50, classes=3, dims=16, separation=10.0):
    """Classes in dims 0-3 (centres at scale ``separation``, spread 1); dims 4.. are small
    (scale 0.01) and carry no class."""
    centres = rng.normal(0, separation, (classes, 4))
    labels = np.repeat(np.arange(classes), n_per_class)
    big = centres[labels] + rng.normal(0, 1, (len(labels), 4))
    small = rng.normal(0, 0.01, (len(labels), dims - 4))
    return np.hstack([big, small]).astype(np.float32), labels.astype(str)


def _reads(columns):
    """An 'encoder' whose latent axes are the given feature columns."""
    return lambda features: np.asarray(features)[:, columns]


def test_identical_inputs_agree_perfectly(rng):
    x, labels = _clustered(rng)
    out = agreement(x, x.copy(), labels=labels, encode=_reads([0, 1, 15]))
    assert out["passed"] and all(out["checks"].values())
    assert set(out["checks"]) == {"latent", "knn", "classification"}
    np.testing.assert_allclose(out["latent_r"], 1.0, atol=1e-12)
    assert out["knn_overlap"] == 1.0 and out["latent_knn_overlap"] == 1.0
    assert out["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    ba = out["balanced_accuracy"]
    assert ba["difference"] == 0.0 and ba["reference"] == ba["reduced"] > 0.9
    assert ba["folds"] == 5 and ba["noise"] >= 0


def test_permuted_copy_fails_every_check(rng):
    x, labels = _clustered(rng)
    shuffled = x[rng.permutation(len(x))]
    out = agreement(x, shuffled, labels=labels, encode=_reads([0, 1, 15]))
    assert out["checks"] == {"latent": False, "knn": False, "classification": False}
    assert not out["passed"]
    assert out["latent_r_min"] < 0.5 and out["knn_overlap"] < 0.3
    assert out["balanced_accuracy"]["reduced"] < 0.6  # chance is 1/3


def test_noise_on_a_quiet_axis_fails_only_the_latent_check(rng):
    """Noise as large as a small-scale column: distances (and so neighbours and classes) barely
    move, but a latent axis that reads that column loses its agreement. Classes overlap a
    little, so the folds' accuracies spread and the noise is not zero."""
    x, labels = _clustered(rng, separation=1.5)
    noisy = x.copy()
    noisy[:, 15] += rng.normal(0, 0.01, len(x)).astype(np.float32)
    out = agreement(x, noisy, labels=labels, encode=_reads([0, 1, 15]))
    assert out["checks"] == {"latent": False, "knn": True, "classification": True}
    ba = out["balanced_accuracy"]
    assert 0.5 < ba["reference"] < 0.99 and ba["noise"] > 0
    r = out["latent_r"]
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(1.0) and r[2] < 0.9
    assert out["latent_r_min"] == r[2]


def test_noise_off_the_latent_axes_fails_only_the_neighbours(rng):
    """Noise on columns no latent axis reads: codes identical, classes intact (they live in
    dims 0-3), neighbourhoods within a class scrambled."""
    x, labels = _clustered(rng)
    noisy = x.copy()
    noisy[:, 4:] += rng.normal(0, 3, (len(x), x.shape[1] - 4)).astype(np.float32)
    out = agreement(x, noisy, labels=labels, encode=_reads([0, 1, 2]))
    assert out["checks"] == {"latent": True, "knn": False, "classification": True}
    assert out["knn_overlap"] < MIN_KNN_OVERLAP and out["latent_r_min"] >= MIN_LATENT_R


def test_an_axis_constant_in_one_set_is_a_disagreement(rng):
    x, _ = _clustered(rng)
    flat = x.copy()
    flat[:, 15] = 0.5
    out = agreement(x, flat, encode=_reads([0, 15]))
    assert out["latent_r"][1] is None and out["checks"]["latent"] is False
    assert "classification" not in out["checks"]  # no labels: not run


def test_accuracy_noise_known_answer():
    # mean 0.85, squared deviations sum 0.025 -> var 0.00625 (ddof 1), SE = sqrt(var / 5)
    # = 0.0353553; noise = 2 * sqrt(2) * SE = 0.1 exactly.
    assert accuracy_noise([0.8, 0.9, 0.85, 0.75, 0.95]) == pytest.approx(0.1)
    assert accuracy_noise([0.7, 0.7, 0.7]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DrlError, match="two or more"):
        accuracy_noise([0.9])
    with pytest.raises(DrlError):
        accuracy_noise([0.9, float("nan")])


def test_knn_overlap_and_axis_correlations_known_answers(rng):
    a = rng.normal(size=(200, 8))
    assert knn_overlap(a, a.copy()) == 1.0
    assert knn_overlap(a, 3.0 * a + 1.0) == 1.0  # scale and shift keep Euclidean neighbours
    unrelated = knn_overlap(a, rng.normal(size=(200, 8)))
    assert unrelated < 0.2  # ~ k / n = 0.05 for unrelated sets
    with pytest.raises(DrlError):
        knn_overlap(a[:10], a[:10])  # needs more than k rows
    with pytest.raises(DrlError):
        knn_overlap(a, a[:, :4])
    b = np.column_stack([2 * a[:, 0] + 1, -a[:, 1], np.ones(200)])
    r = axis_correlations(a[:, :3], b)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0) and np.isnan(r[2])


def test_agreement_refuses_mismatched_shapes(rng):
    x, _ = _clustered(rng)
    with pytest.raises(DrlError, match="shape"):
        agreement(x, x[:-1])


# ---------------------------------------------------------------------------------------------
# The decision rule


@pytest.mark.parametrize("agrees, native, pretrained, used, says", [
    (None, True, True, "fp32", "never checked"),
    (False, True, True, "fp32", "failed"),
    (True, False, True, "fp32", "no native bf16"),
    (True, True, False, "fp32", "not these"),
    (True, True, True, "bf16", "passed"),
])
def test_auto_needs_a_recorded_verdict_and_native_bf16(monkeypatch, agrees, native, pretrained,
                                                       used, says):
    spec = dataclasses.replace(get_spec("effnet-lite0"), bf16_agrees=agrees)
    monkeypatch.setattr(backbones, "_bf16_native", lambda device: native)
    decision = precision_decision(spec, "auto", "cpu", pretrained)
    assert decision["requested"] == "auto" and decision["used"] == used
    assert says in decision["reason"] and decision["reason"].startswith(f"auto: {used}")
    # Asking explicitly always wins, and says so.
    for asked in ("fp32", "bf16"):
        forced = precision_decision(spec, asked, "cpu", pretrained)
        assert forced["used"] == asked and forced["reason"].startswith(f"requested {asked}")


def test_feature_config_validates_precision():
    assert FeatureConfig().precision == "auto"
    for bad in ("fp16", "BF16", None, 16):
        with pytest.raises(DrlError, match="precision"):
            FeatureConfig(precision=bad)
    assert FeatureConfig.from_dict({"precision": "bf16"}).precision == "bf16"
    assert FeatureConfig.from_dict({}).precision == "auto"  # settings from before the field
    assert FeatureConfig(precision="fp32").to_dict()["precision"] == "fp32"


# ---------------------------------------------------------------------------------------------
# Through the features stage


@pytest.fixture
def dataset(tmp_path, rng):
    root = tmp_path / "cells"
    for label in ("round", "spiky"):
        (root / label).mkdir(parents=True)
    for i in range(8):
        image = rng.integers(0, 256, (30 + 3 * i, 40 + i, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / ("round", "spiky")[i % 2] / f"c{i:02d}.png")
    return root


def _config(tmp_path, precision, **kw):
    return FeatureConfig(backbone="test-tiny", pretrained=False, batch_size=3,
                         cache_dir=str(tmp_path / "cache"), precision=precision, **kw)


def test_precision_reaches_manifest_and_cache_key(dataset, tmp_path):
    f32 = extract_features(dataset, tmp_path / "fp32", _config(tmp_path, "fp32"))
    b16 = extract_features(dataset, tmp_path / "bf16", _config(tmp_path, "bf16"))
    for result, used in ((f32, "fp32"), (b16, "bf16")):
        entry = rundir.stage_entry(tmp_path / used, "features")  # as written to disk
        assert entry["dtype"] == result.manifest["dtype"] == used
        assert entry["precision"]["requested"] == entry["precision"]["used"] == used
        assert entry["precision"]["reason"].startswith(f"requested {used}")
        assert result.features.dtype == np.float32
        assert np.load(tmp_path / used / "features.npy").dtype == np.float32
    assert f32.manifest["cache"]["key"] != b16.manifest["cache"]["key"]
    assert not np.array_equal(f32.features, b16.features)  # bf16 really ran
    np.testing.assert_allclose(b16.features, f32.features, atol=0.1 * np.abs(f32.features).max())

    # Served from the cache, each precision gets its own vectors back and no forward pass.
    for precision, reference in (("fp32", f32), ("bf16", b16)):
        backbone = load_backbone("test-tiny", pretrained=False, dtype=precision)
        again = extract_features(dataset, tmp_path / f"again-{precision}",
                                 _config(tmp_path, precision), backbone=backbone)
        assert backbone.forward_calls == 0
        np.testing.assert_array_equal(again.features, reference.features)
        assert again.manifest["cache"]["key"] == reference.manifest["cache"]["key"]


def test_auto_is_recorded_with_its_reason(dataset, tmp_path):
    result = extract_features(dataset, tmp_path / "auto", _config(tmp_path, "auto"))
    entry = result.manifest["precision"]
    assert entry["requested"] == "auto" and entry["used"] == result.manifest["dtype"] == "fp32"
    assert entry["reason"].startswith("auto: fp32") and "test-tiny" in entry["reason"]


def test_a_backbone_of_another_precision_is_refused(dataset, tmp_path):
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32")
    with pytest.raises(DrlError, match="precision bf16"):
        extract_features(dataset, tmp_path / "x", _config(tmp_path, "bf16"), backbone=backbone)


@pytest.mark.parametrize("command", ["features", "run", "encode", "transfer"])
def test_precision_flag_reaches_the_feature_config(command):
    from drlcore.cli import _feature_config

    head = {"features": ["features", "data"], "run": ["run", "data"],
            "encode": ["encode", "model", "data"], "transfer": ["transfer", "model", "data"]}
    parser = build_parser()
    args = parser.parse_args([*head[command], "--out", "o", "--precision", "bf16"])
    assert _feature_config(args).precision == "bf16"
    assert _feature_config(parser.parse_args([*head[command], "--out", "o"])).precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args([*head[command], "--out", "o", "--precision", "fp16"])


def test_cli_features_with_precision(dataset, tmp_path, capsys):
    """``drl features --precision``, on the tiny backbone's random weights saved as a file (a
    named weights file is not the registry's, so auto would be fp32)."""
    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"
    save_file(load_backbone("test-tiny", pretrained=False).model.state_dict(), str(weights))
    out = tmp_path / "cli-bf16"
    main(["features", str(dataset), "--out", str(out), "--backbone", "test-tiny", "--weights",
          str(weights), "--precision", "bf16", "--batch-size", "4", "--cache-dir",
          str(tmp_path / "cache")])
    assert "bf16" in capsys.readouterr().out
    entry = rundir.stage_entry(out, "features")
    assert entry["dtype"] == "bf16" and entry["precision"]["requested"] == "bf16"
    main(["features", str(dataset), "--out", str(tmp_path / "cli-auto"), "--backbone",
          "test-tiny", "--weights", str(weights), "--cache-dir", str(tmp_path / "cache")])
    auto = rundir.stage_entry(tmp_path / "cli-auto", "features")
    assert auto["precision"]["used"] == "fp32" and "not these" in auto["precision"]["reason"]
    assert auto["cache"]["key"] != entry["cache"]["key"]


@pytest.mark.slow
def test_dask_workers_run_the_requested_precision(dataset, tmp_path):
    """The driver's resolved precision travels to the workers (BackboneSettings.dtype): bf16
    features from a 2-process LocalCluster equal the single-process bf16 ones, not fp32's."""
    pytest.importorskip("dask.distributed", reason="needs the extra [dask]")
    from drlcore.embedding.distributed import ClusterConfig

    single = extract_features(dataset, tmp_path / "single", _config(tmp_path, "bf16"))
    f32 = extract_features(dataset, tmp_path / "f32", _config(tmp_path, "fp32"))
    config = dataclasses.replace(_config(tmp_path, "bf16"), cache_dir=str(tmp_path / "c-dask"))
    try:
        on_dask = extract_features(dataset, tmp_path / "dask", config,
                                   cluster=ClusterConfig(cluster="local", n_workers=2))
    finally:
        # Worker processes start multiprocessing's resource tracker, which would otherwise
        # outlive the test (the session-end check wants no process left).
        from multiprocessing import resource_tracker

        stop = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop is not None:
            stop()
    assert on_dask.manifest["dtype"] == "bf16"
    assert on_dask.manifest["cache"]["key"] == single.manifest["cache"]["key"]
    np.testing.assert_allclose(on_dask.features, single.features, rtol=0, atol=1e-6)
    assert not np.allclose(on_dask.features, f32.features, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The noise-floor rule: reduced precision passes when it moves the features less than a re-save


def test_noise_floor_rule_on_constructed_data(rng):
    """A 'reduced' set that moves the features less than the 'perturbed' (re-saved) set passes
    the kNN check although its overlap is below the fixed 0.95; one that moves them more fails."""
    x, labels = _clustered(rng)
    small = x + rng.normal(0, 0.02, x.shape).astype(np.float32)
    large = x + rng.normal(0, 0.2, x.shape).astype(np.float32)
    passes = agreement(x, small, perturbed=large)
    assert passes["knn_overlap"] > passes["noise_floor"]["knn_overlap"]
    assert passes["thresholds"]["knn_overlap"] == passes["noise_floor"]["knn_overlap"]
    assert passes["checks"]["knn"] and passes["passed"]
    fails = agreement(x, large, perturbed=small)
    assert fails["knn_overlap"] < fails["noise_floor"]["knn_overlap"]
    assert not fails["checks"]["knn"] and not fails["passed"]
    # Without a perturbed set the fixed threshold rules, as before.
    assert agreement(x, small)["thresholds"]["knn_overlap"] == MIN_KNN_OVERLAP
    # The floor sets the latent threshold too, when an encoder is given.
    with_latent = agreement(x, small, encode=_reads([0, 1, 15]), perturbed=large)
    assert with_latent["thresholds"]["latent_r_min"] == with_latent["noise_floor"]["latent_r_min"]


def test_jpeg_resave_is_a_small_perturbation(rng):
    from drlcore.embedding.precision import jpeg_resave

    smooth = np.repeat(np.repeat(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), 8, 1), 8, 2)
    out = jpeg_resave(smooth)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert not np.array_equal(out, smooth)
    assert np.abs(out.astype(int) - smooth).mean() < 8
    with pytest.raises(DrlError):
        jpeg_resave(smooth.astype(np.float32))
