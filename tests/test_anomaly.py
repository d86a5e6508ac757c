"""Anomaly scorers on synthetic clusters with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drlcore.analysis.anomaly import (
    score_against_known,
    KNNScorer,
    MahalanobisScorer,
    combine_scores,
    holdout_each_class,
    latent_zscores,
    open_set_evaluation,
    out_of_range_axes,
)
from drlcore.errors import DrlError

SCORERS = [lambda: KNNScorer(k=10), lambda: MahalanobisScorer()]


@pytest.mark.parametrize("make_scorer", SCORERS, ids=["knn", "mahalanobis"])
def test_separated_cluster_is_found_and_same_distribution_is_chance(make_scorer, rng):
    known_train = rng.normal(size=(400, 5))
    known_test = rng.normal(size=(200, 5))
    far = rng.normal(size=(200, 5)) + np.array([6.0, 0, 0, 0, 0])
    same = rng.normal(size=(200, 5))
    scorer = make_scorer().fit(known_train)
    is_unknown = np.r_[np.zeros(200, bool), np.ones(200, bool)]
    separated = open_set_evaluation(scorer.score_samples(np.r_[known_test, far]), is_unknown)
    chance = open_set_evaluation(scorer.score_samples(np.r_[known_test, same]), is_unknown)
    assert separated["auroc"] > 0.99 and separated["aupr"] > 0.99
    assert chance["auroc"] == pytest.approx(0.5, abs=0.08)
    assert separated["note"] is None


def test_knn_leave_one_out_excludes_self_but_not_duplicates(rng):
    known = rng.normal(size=(50, 3))
    known = np.r_[known, known[:1]]           # row 50 duplicates row 0
    scorer = KNNScorer(k=1)
    loo = scorer.fit_score(known)
    assert loo[0] == 0.0 and loo[50] == 0.0     # each other's nearest neighbour, at distance 0
    assert (loo[1:50] > 0).all()                 # no other point matches itself
    # Scoring the known set as if it were new data includes the self-match: all zero.
    assert np.allclose(scorer.score_samples(known), 0.0)
    np.testing.assert_array_equal(scorer.score_training(), loo)
    # Leave-one-out equals brute force.
    distances = np.linalg.norm(known[:, None] - known[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    np.testing.assert_allclose(loo, distances.min(axis=1))


def test_knn_mean_of_k_distances_brute_force(rng):
    known = rng.normal(size=(30, 2))
    new = rng.normal(size=(5, 2))
    scores = KNNScorer(k=4).fit(known).score_samples(new)
    distances = np.sort(np.linalg.norm(new[:, None] - known[None], axis=2), axis=1)[:, :4]
    np.testing.assert_allclose(scores, distances.mean(axis=1))
    # k larger than the known set minus one is capped so leave-one-out stays defined.
    assert KNNScorer(k=50).fit(known).k_ == 29


def test_mahalanobis_matches_closed_form_for_hand_built_gaussian():
    a, b = 2.0, 0.5
    # Mean (0, 0), covariance diag(a^2/2, b^2/2) exactly (maximum-likelihood estimate).
    known = np.array([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]])
    points = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    scorer = MahalanobisScorer(shrinkage=None).fit(known)
    expected = np.sqrt(2 * points[:, 0] ** 2 / a**2 + 2 * points[:, 1] ** 2 / b**2)
    np.testing.assert_allclose(scorer.score_samples(points), expected)
    np.testing.assert_allclose(scorer.score_training(), np.sqrt(2.0))  # every corner: 1 sd each way


def test_mahalanobis_takes_nearest_class_and_shrinkage_is_close_for_large_n(rng):
    cov = np.array([[2.0, 0.6], [0.6, 1.0]])
    chol = np.linalg.cholesky(cov)
    first = rng.normal(size=(5000, 2)) @ chol.T
    second = rng.normal(size=(5000, 2)) @ chol.T + np.array([20.0, 0.0])
    X = np.r_[first, second]
    y = np.r_[np.zeros(5000, int), np.ones(5000, int)]
    point = np.array([[21.0, 1.0]])
    diff = point[0] - np.array([20.0, 0.0])
    truth = math.sqrt(diff @ np.linalg.inv(cov) @ diff)
    for covariance in ("shared", "per_class"):
        scorer = MahalanobisScorer(covariance=covariance).fit(X, y)
        assert scorer.score_samples(point)[0] == pytest.approx(truth, rel=0.05)
    # Without labels one class centred between the clusters: the point is much less unusual.
    unlabelled = MahalanobisScorer().fit(X)
    assert unlabelled.classes_.size == 1


def test_scorers_validate_inputs(rng):
    scorer = KNNScorer().fit(rng.normal(size=(20, 3)))
    with pytest.raises(DrlError, match="fitted on 3"):
        scorer.score_samples(rng.normal(size=(2, 4)))
    with pytest.raises(DrlError, match="NaN"):
        MahalanobisScorer().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(DrlError, match="not fitted"):
        MahalanobisScorer().score_samples(np.zeros((1, 2)))


def test_latent_zscores_flag_only_the_shifted_dimension(rng):
    known = rng.normal(size=(1000, 4)) * np.array([1.0, 5.0, 0.1, 2.0])
    new = rng.normal(size=(50, 4)) * np.array([1.0, 5.0, 0.1, 2.0])
    new[:, 2] += 1.0                                  # +10 sigma on dimension 2 only
    z = latent_zscores(new, known)
    assert (np.abs(z[:, 2]) > 5).all()
    assert np.median(np.abs(z[:, [0, 1, 3]])) < 1.0
    names = ["z0: colour", "z1: shape", "z2: scale", "z3"]
    flagged = out_of_range_axes(z[0], names)
    assert len(flagged) >= 1 and flagged[0].startswith("z2: scale = +")
    assert flagged[0].endswith("sigma (beyond the known range)")
    assert out_of_range_axes(np.array([0.1, -4.25, 3.5, np.nan]), names) == [
        "z1: shape = -4.2 sigma (beyond the known range)",
        "z2: scale = +3.5 sigma (beyond the known range)",
    ]


def test_latent_zscores_guard_zero_mad():
    known = np.c_[np.r_[np.zeros(9), 1.0], np.full(10, 3.0)]   # MAD 0; constant column
    z = latent_zscores(np.array([[1.0, 5.0]]), known)
    assert np.isfinite(z).all()
    assert z[0, 0] == pytest.approx(1.0 / (0.1 * 1.2533))
    assert z[0, 1] == pytest.approx(2.0)


def test_combine_scores_rank_normalises_against_known():
    reference = np.array([True, True, True, True, False, False])
    knn = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 0.5])
    recon = np.array([100.0, 300.0, 200.0, 400.0, 1000.0, np.nan])
    combined = combine_scores({"knn": knn, "recon": recon}, reference)
    assert combined[4] == 1.0                        # beyond every known object on both
    assert combined[5] == 0.0                        # below all known on knn; recon ignored
    np.testing.assert_allclose(combined[:4], [0.125, 0.5, 0.5, 0.875])  # knn 3/8 + recon 5/8
    with pytest.raises(DrlError, match="reference mask"):
        combine_scores({"knn": knn[:3]}, reference)


def test_open_set_evaluation_one_class_gives_nan_with_note():
    result = open_set_evaluation(np.arange(5.0), np.zeros(5, bool))
    assert math.isnan(result["auroc"]) and math.isnan(result["aupr"])
    assert "need both" in result["note"]
    result = open_set_evaluation(np.array([0.0, np.nan, 2.0]), np.array([False, False, True]))
    assert result["auroc"] == 1.0 and "left out" in result["note"]


def test_holdout_each_class_flags_the_odd_class_out(rng):
    centres = {"a": [0, 0, 0], "b": [0.3, 0, 0], "c": [12, 12, 0]}
    Z = np.concatenate([rng.normal(size=(150, 3)) + c for c in centres.values()])
    labels = np.repeat(list(centres), 150)
    result = holdout_each_class(Z, labels, lambda: MahalanobisScorer(), seed=0)
    per_class = result["per_class"]
    assert per_class["c"]["auroc"] > 0.99           # far from a and b
    assert per_class["a"]["auroc"] < 0.75             # overlaps b: hard to flag
    assert result["worst_class"] in ("a", "b")
    assert result["worst_auroc"] == min(r["auroc"] for r in per_class.values())
    knn = holdout_each_class(Z, labels, lambda: KNNScorer(k=5), use_labels=False)
    assert knn["per_class"]["c"]["auroc"] > 0.99
    default = holdout_each_class(Z, labels)
    assert default["scorer"] == "KNNScorer" and default["per_class"]["c"]["auroc"] > 0.99
    with pytest.raises(DrlError, match="at least 2"):
        holdout_each_class(Z, np.zeros(len(Z)), lambda: KNNScorer())


def test_score_against_known_flags_the_unknown_cluster_and_its_axis():
    rng = np.random.default_rng(3)
    known = rng.normal(size=(200, 4))
    unknown = rng.normal(size=(40, 4))
    unknown[:, 2] += 8.0  # far out along axis 2 only
    Z = np.vstack([known, unknown, [[np.nan] * 4]])
    is_known = np.r_[np.ones(200, bool), np.zeros(41, bool)]
    labels = np.r_[np.where(np.arange(200) % 2, "a", "b"), ["c"] * 41].astype(object)
    cols = score_against_known(Z, is_known, labels=labels, recon_error=np.r_[np.arange(240.0), np.nan], k=5)
    for name in ("anomaly_knn", "anomaly_mahalanobis", "anomaly_score"):
        assert np.isnan(cols[name][-1])
        assert open_set_evaluation(cols[name][:-1], ~is_known[:-1])["auroc"] > 0.99
    assert cols["anomaly_known"].sum() == 200
    shifted = np.abs([cols[f"z_score_{j}"][200:240].mean() for j in range(4)])
    assert shifted.argmax() == 2 and shifted[2] > 5 and np.delete(shifted, 2).max() < 1


def _separated_clusters(rng, n: int, n_dims: int = 8, spread: float = 4.0):
    centres = rng.normal(0, spread, (5, n_dims))
    return centres[rng.integers(0, 5, n)] + rng.normal(size=(n, n_dims))


@pytest.mark.parametrize("spread", [4.0, 1.0], ids=["separated", "overlapping"])
def test_approximate_knn_agrees_with_exact(spread, rng):
    """pynndescent's neighbours give nearly the exact kNN distances, for the known objects
    (leave-one-out) and for new ones, far-out ones included (well-separated classes make a
    neighbour graph in pieces; each piece is searched on its own)."""
    from scipy.stats import spearmanr

    X = _separated_clusters(rng, 6000, spread=spread)
    queries = np.r_[_separated_clusters(rng, 500, spread=spread),
                    rng.normal(0, 3 * spread, (500, X.shape[1]))]
    exact = KNNScorer(k=10, method="exact").fit(X)
    approx = KNNScorer(k=10, method="approximate", seed=0).fit(X)
    assert exact.method_ == "exact" and approx.method_ == "approximate"
    train_e, train_a = exact.score_training(), approx.score_training()
    query_e, query_a = exact.score_samples(queries), approx.score_samples(queries)
    assert spearmanr(train_e, train_a)[0] > 0.95
    assert spearmanr(query_e, query_a)[0] > 0.95
    assert spearmanr(query_e[500:], query_a[500:])[0] > 0.95  # the far-out ones alone
    # Found neighbours are real neighbours: never nearer than the exact ones (pynndescent works
    # in float32), rarely farther.
    for e, a in ((train_e, train_a), (query_e, query_a)):
        assert np.all(a >= e * (1 - 1e-5))
        assert np.median(a / e - 1) < 0.01
    # Seeded: the same fit twice gives the same scores.
    again = KNNScorer(k=10, method="approximate", seed=0).fit(X)
    np.testing.assert_array_equal(again.score_training(), train_a)


def test_knn_method_auto_switches_at_the_threshold(monkeypatch, rng):
    from drlcore.analysis import anomaly, scale

    monkeypatch.setattr(scale, "KNN_EXACT_MAX", 100)
    assert anomaly.knn_method(100) == "exact" and anomaly.knn_method(101) == "approximate"
    assert anomaly.knn_method(10**6, "exact") == "exact"
    with pytest.raises(DrlError, match="kNN method"):
        anomaly.knn_method(10, "fast")
    assert KNNScorer().fit(rng.normal(size=(150, 3))).method_ == "approximate"
    # The leave-one-out rule holds on the approximate path too: an object is not its own
    # neighbour, an exact duplicate of it is.
    X = rng.normal(size=(150, 3))
    X[1] = X[0]
    scores = KNNScorer(k=1).fit(X).score_training()
    assert scores[0] == 0.0 and scores[1] == 0.0 and np.all(scores[2:] > 0)


_KNN_IN_A_FRESH_PROCESS = """
import json, numpy as np
from numba.core.dispatcher import Dispatcher
from drlcore.analysis.anomaly import KNNScorer
from drlcore.analysis.numba_cache import PYNNDESCENT_MODULES
import importlib
X = np.random.default_rng(0).normal(size=(300, 4))
scores = KNNScorer(k=5, method="approximate", seed=0).fit(X).score_training()
hits = misses = 0
for name in PYNNDESCENT_MODULES:
    for f in vars(importlib.import_module(name)).values():
        if isinstance(f, Dispatcher) and type(f._cache).__name__ != "NullCache":
            hits += sum(f.stats.cache_hits.values())
            # A signature that takes a compiled function (the distance) as an argument is keyed
            # by that function object, so numba cannot find it in another process: compiled anew.
            misses += sum(n for sig, n in f.stats.cache_misses.items()
                          if "CPUDispatcher" not in repr(sig))
print(json.dumps({"hits": hits, "misses": misses, "scores": scores.tolist()}))
"""


@pytest.mark.slow
def test_a_fresh_process_loads_pynndescents_compiled_code_from_the_cache():
    """pynndescent's numba functions (most compiled without cache=True) are cached on disk:
    after this process has built a graph, a fresh one loads them instead of compiling (its first
    approximate kNN fit took ~28 s, now ~11 s: the functions that take the distance function
    as an argument still compile), and scores the same."""
    import json
    import os
    import subprocess
    import sys

    X = np.random.default_rng(0).normal(size=(300, 4))
    here = KNNScorer(k=5, method="approximate", seed=0).fit(X).score_training()
    out = subprocess.run([sys.executable, "-c", _KNN_IN_A_FRESH_PROCESS], capture_output=True,
                         text=True, check=True, timeout=300, env=os.environ.copy())
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["misses"] == 0 and fresh["hits"] >= 10, fresh
    np.testing.assert_array_equal(np.asarray(fresh["scores"]), here)
    assert "Cannot cache" not in out.stderr
