"""Classification from representations: known answers on synthetic latents, the dataset's own
split, degenerate label sets and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drlcore.analysis.classify import evaluate_classifiers
from drlcore.errors import DrlError
from drlcore.progress import CallbackReporter


def separable(rng, n_per_class=60, n_classes=3, dims=5):
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = 10.0 * np.eye(n_classes, dims)
    X = centres[labels] + rng.standard_normal((len(labels), dims))
    names = np.array(["basophil", "eosinophil", "neutrophil", "monocyte"])[labels]
    return X, names


def without_timing(result):
    for model in result["models"].values():
        model.pop("fit_seconds")
    return result


def test_separable_latents_are_classified_perfectly(rng):
    X, y = separable(rng)
    result = evaluate_classifiers(X, y, seed=0)
    assert result["protocol"] == "stratified-kfold" and result["n_splits"] == 5
    assert result["labels"] == ["basophil", "eosinophil", "neutrophil"]
    assert result["class_counts"] == {"basophil": 60, "eosinophil": 60, "neutrophil": 60}
    for name in ("mlp", "gbt"):
        model = result["models"][name]
        assert model["accuracy"] >= 0.98
        assert model["balanced_accuracy"] >= 0.98
        confusion = np.asarray(model["confusion_matrix"])
        assert confusion.shape == (3, 3) and confusion.sum() == 180  # every sample once, out of fold
        assert len(model["folds"]) == 5
    assert result["reduction"] is None
    json.dumps(result, allow_nan=False)


def test_random_labels_score_near_chance(rng):
    X = rng.standard_normal((300, 5))
    y = rng.integers(0, 3, size=300)
    result = evaluate_classifiers(X, y, seed=0)
    assert result["chance"]["balanced_accuracy"] == pytest.approx(1 / 3)
    for model in result["models"].values():
        assert 0.2 < model["balanced_accuracy"] < 0.47


def test_own_split_is_honoured(rng):
    # The label rule flips between train and test: trained on train, scored on test, the models
    # must be wrong almost everywhere (cross-validation over all rows would score ~0.5).
    X = rng.standard_normal((200, 2))
    split = np.array(["train"] * 120 + ["test"] * 60 + ["val"] * 20)
    y = np.where(X[:, 0] > 0, "a", "b")
    y[120:180] = np.where(X[120:180, 0] > 0, "b", "a")
    result = evaluate_classifiers(X, y, split=split, seed=0)
    assert result["protocol"] == "split" and result["n_splits"] is None
    assert result["dropped"]["outside_split"] == 20
    for model in result["models"].values():
        assert np.asarray(model["confusion_matrix"]).sum() == 60
        assert model["accuracy"] < 0.15
        assert len(model["folds"]) == 1


def test_split_without_test_rows_falls_back_to_cross_validation(rng):
    X, y = separable(rng, n_per_class=20)
    result = evaluate_classifiers(X, y, split=["train"] * len(y), models=("gbt",))
    assert result["protocol"] == "stratified-kfold"
    assert any("split" in note for note in result["notes"])
    none_split = evaluate_classifiers(X, y, split=[None] * len(y), models=("gbt",))
    assert none_split["protocol"] == "stratified-kfold" and none_split["notes"] == []


def test_one_class_returns_a_note(rng):
    result = evaluate_classifiers(rng.standard_normal((30, 4)), ["basophil"] * 30)
    assert result["models"] == {}
    assert "two classes" in result["notes"][-1] and "basophil" in result["notes"][-1]
    unlabelled = evaluate_classifiers(rng.standard_normal((5, 4)), [None] * 5)
    assert unlabelled["models"] == {} and unlabelled["dropped"]["unlabelled"] == 5
    json.dumps(unlabelled, allow_nan=False)
    # A second class with a single sample cannot be cross-validated: one class remains.
    lone = evaluate_classifiers(rng.standard_normal((31, 4)), ["basophil"] * 30 + ["monocyte"])
    assert lone["models"] == {} and lone["dropped"]["rare_class"] == 1
    # The own split trains on one class only.
    split = ["train"] * 20 + ["test"] * 10
    one_sided = evaluate_classifiers(rng.standard_normal((30, 4)), ["a"] * 20 + ["b"] * 10, split=split)
    assert one_sided["models"] == {} and "training split" in one_sided["notes"][-1]


def test_deterministic_for_a_seed(rng):
    X = rng.standard_normal((150, 6))
    y = (X[:, 0] + 0.5 * rng.standard_normal(150) > 0).astype(int)
    first = without_timing(evaluate_classifiers(X, y, seed=3))
    assert first == without_timing(evaluate_classifiers(X, y, seed=3))
    assert first["labels"] == ["0", "1"]


def test_bad_rows_are_dropped_and_counted(rng):
    X, y = separable(rng, n_per_class=30)
    X[0, 1] = np.nan
    X[1, 2] = np.inf
    y = y.astype(object)
    y[2] = None
    result = evaluate_classifiers(X, y, models=("mlp",))
    assert result["dropped"]["non_finite"] == 2
    assert result["dropped"]["unlabelled"] == 1
    assert result["n_samples"] == 87
    assert np.asarray(result["models"]["mlp"]["confusion_matrix"]).sum() == 87
    assert len(result["notes"]) == 2


def test_small_classes_reduce_folds_and_singletons_are_dropped(rng):
    X, y = separable(rng, n_per_class=20, n_classes=4)
    y = y.astype(object)
    keep = np.r_[np.arange(60), 60, 61, 62]  # the fourth class keeps three samples
    result = evaluate_classifiers(X[keep], y[keep], n_splits=5, models=("gbt",))
    assert result["n_splits"] == 3
    assert any("3-fold" in note for note in result["notes"])
    keep = np.r_[np.arange(60), 60]  # the fourth class keeps one sample
    result = evaluate_classifiers(X[keep], y[keep], models=("gbt",))
    assert result["dropped"]["rare_class"] == 1
    assert result["labels"] == ["basophil", "eosinophil", "neutrophil"]
    assert result["n_splits"] == 5


def test_unseen_test_class_is_noted(rng):
    X, y = separable(rng, n_per_class=30)
    split = np.where(np.arange(90) % 3 == 0, "test", "train")
    split[y == "neutrophil"] = "test"
    result = evaluate_classifiers(X, y, split=split, models=("gbt",))
    assert any("neutrophil" in note for note in result["notes"])
    confusion = np.asarray(result["models"]["gbt"]["confusion_matrix"])
    assert confusion[2, 2] == 0


def test_wide_inputs_are_projected_and_reported(rng):
    X, y = separable(rng, n_per_class=30, dims=40)
    calls = []
    reporter = CallbackReporter(lambda stage, done, total, postfix: calls.append((done, total)), min_interval=0)
    result = evaluate_classifiers(X, y, max_dims=8, n_splits=3, reporter=reporter)
    assert result["reduction"] == {"method": "pca", "n_components": 8, "from": 40}
    assert result["models"]["mlp"]["accuracy"] >= 0.95
    assert calls[-1] == (6, 6)


def test_invalid_arguments_raise_user_errors(rng):
    X, y = separable(rng, n_per_class=10)
    with pytest.raises(DrlError, match="classifier"):
        evaluate_classifiers(X, y, models=("svm",))
    with pytest.raises(DrlError, match="labels"):
        evaluate_classifiers(X, y[:-1])
    with pytest.raises(DrlError, match="split"):
        evaluate_classifiers(X, y, split=["train"])


@pytest.mark.slow
def test_raw_backbone_features_at_analysis_size():
    # The time this takes is measured in benchmarks/bench_cores.py, not asserted here. The
    # models are the ones the analysis fits on raw features (the latents' GBT runs elsewhere).
    from drlcore.analysis.analyze import AnalyzeConfig

    generator = np.random.default_rng(0)
    n, n_classes = 2250, 8
    labels = np.arange(n) % n_classes
    X = np.abs(0.3 * generator.standard_normal((n_classes, 1280))[labels] + generator.standard_normal((n, 1280)))
    models = AnalyzeConfig().raw_feature_models
    result = evaluate_classifiers(X.astype(np.float32), labels, models=models)
    assert result["reduction"]["n_components"] == 128
    assert set(result["models"]) == set(models)
    assert result["models"]["mlp"]["accuracy"] > 2 * result["chance"]["accuracy"]
