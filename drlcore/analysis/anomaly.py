"""Open-set anomaly scores in latent space: how unlike the *known* objects is each object?

Scorers are fitted on the known objects only and follow scikit-learn's estimator shape
(``fit`` / ``score_samples``, learned state ending in ``_``), with one deliberate difference:
**higher scores mean more anomalous** (scikit-learn's outlier detectors return the opposite).

- ``KNNScorer``: mean Euclidean distance to the ``k`` nearest known objects. ``fit_score`` gives
  leave-one-out scores for the known set itself (a point is not its own neighbour; an exact
  duplicate still is), so known and new objects are scored on the same footing. The neighbours
  are exact (scikit-learn) up to ``drlcore.analysis.scale.KNN_EXACT_MAX`` known objects and approximate
  above it (pynndescent's seeded NN-descent graph, which umap-learn already depends on): an
  exact search over 10^6 objects would dominate the analysis, and a score that ranks objects
  needs neighbours that are nearly, not provably, the nearest (checked against the exact ones in
  the tests).
- ``MahalanobisScorer``: distance to the nearest known class centre under a Ledoit-Wolf shrunk
  covariance (shared across classes, or one per class); one class when unlabelled.
- ``combine_scores``: puts scores on one scale by ranking each against the known set, then
  averages them (reconstruction error from the VAE can join as just another entry).
- ``latent_zscores`` / ``out_of_range_axes``: which latent axes make an object unusual.
- ``open_set_evaluation`` / ``holdout_each_class``: AUROC / AUPR of "unknown vs known".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf, empirical_covariance
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from drlcore.errors import DrlError
from drlcore.validation import as_finite_matrix
from drlcore.progress import NullReporter, Reporter

__all__ = [
    "flag_above_quantile",
    "KNNScorer",
    "knn_method",
    "MahalanobisScorer",
    "combine_scores",
    "latent_zscores",
    "out_of_range_axes",
    "open_set_evaluation",
    "holdout_each_class",
    "score_against_known",
]

# Median absolute deviation -> standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
# Mean absolute deviation -> standard deviation of a normal distribution (sqrt(pi/2)).
MEAN_AD_TO_SIGMA = 1.2533


KNN_METHODS = ("auto", "exact", "approximate")
# Neighbours kept per node in the approximate graph: more than k makes NN-descent's candidates
# (neighbours of neighbours) richer, so the k nearest are found more often.
APPROX_GRAPH_NEIGHBORS = 30
# Rows queried at a time against the approximate index (bounded memory).
APPROX_QUERY_CHUNK = 100_000
# Search breadth of an approximate query (pynndescent's epsilon: 0.1 by default). At 0.3 the
# kNN distances of new objects, far-out ones included, are within a few per cent of the exact
# ones (measured on clustered data; the tests check the rank agreement).
APPROX_QUERY_EPSILON = 0.3
# Connected pieces of the known objects' neighbour graph smaller than this are searched exactly.
APPROX_MIN_COMPONENT = 2_000


def knn_method(n_known: int, method: str = "auto") -> str:
    """``"exact"`` or ``"approximate"``: what ``method`` means for ``n_known`` known objects
    (auto: approximate above ``drlcore.analysis.scale.KNN_EXACT_MAX``)."""
    from drlcore.analysis import scale

    if method not in KNN_METHODS:
        raise DrlError(f"the kNN method must be one of {', '.join(KNN_METHODS)}, not {method!r}")
    if method == "auto":
        return "approximate" if n_known > scale.KNN_EXACT_MAX else "exact"
    return method


class KNNScorer:
    """Mean distance to the ``k`` nearest known objects (higher = more anomalous).

    ``method``: ``"exact"`` (scikit-learn's tree search), ``"approximate"`` (pynndescent, seeded
    by ``seed``) or ``"auto"`` (exact up to ``drlcore.analysis.scale.KNN_EXACT_MAX`` known objects); the
    one used is ``method_``.
    """

    def __init__(self, k: int = 10, method: str = "auto", seed: int = 0):
        self.k = k
        self.method = method
        self.seed = seed

    def fit(self, X, y=None) -> KNNScorer:
        """Index the known objects. ``y`` is accepted and ignored (same call as Mahalanobis)."""
        X = as_finite_matrix(X)
        if self.k < 1:
            raise DrlError(f"k must be at least 1, got {self.k}")
        if X.shape[0] < 2:
            raise DrlError("the kNN anomaly score needs at least 2 known objects")
        self.n_features_in_ = X.shape[1]
        self.n_samples_fit_ = X.shape[0]
        # Leave-one-out scoring of the known set can use at most n - 1 neighbours; new data then
        # uses the same k so the two are comparable.
        self.k_ = min(self.k, X.shape[0] - 1)
        self.method_ = knn_method(X.shape[0], self.method)
        if self.method_ == "approximate":
            self.index_ = self._nndescent(X)
            self.searchers_ = self._component_searchers(X)
        else:
            self.index_ = NearestNeighbors(n_neighbors=self.k_).fit(X)
        return self

    def _nndescent(self, X: np.ndarray):
        from drlcore.analysis.numba_cache import import_pynndescent

        n_neighbors = min(X.shape[0] - 1, max(APPROX_GRAPH_NEIGHBORS, self.k_ + 1))
        return import_pynndescent().NNDescent(X, n_neighbors=n_neighbors,
                                              random_state=self.seed, n_jobs=1)

    def _component_searchers(self, X: np.ndarray) -> list[tuple[np.ndarray | None, Any, bool]]:
        """What new objects are searched with: ``(rows of X or None for all, index, exact)``.

        A graph search cannot leave the connected piece of the neighbour graph it starts in, and
        a new object far from every known one may start in the wrong piece (well-separated
        classes give separate pieces). So each large piece gets its own index and is searched
        on its own (the results merged), and the small pieces together are searched exactly.
        """
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        indices, _ = self.index_.neighbor_graph
        valid = indices >= 0
        rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
        graph = csr_matrix((np.ones(int(valid.sum()), np.int8), (rows[valid], indices[valid])),
                           shape=(len(indices), len(indices)))
        n_pieces, piece = connected_components(graph, directed=True, connection="weak")
        if n_pieces == 1:
            return [(None, self.index_, False)]
        sizes = np.bincount(piece, minlength=n_pieces)
        searchers = []
        for c in np.flatnonzero(sizes >= APPROX_MIN_COMPONENT):
            members = np.flatnonzero(piece == c)
            searchers.append((members, self._nndescent(X[members]), False))
        small = np.flatnonzero(sizes[piece] < APPROX_MIN_COMPONENT)
        if small.size:
            searchers.append((small, NearestNeighbors().fit(X[small]), True))
        return searchers

    def _query(self, X: np.ndarray) -> np.ndarray:
        """Distances to the ``k_`` nearest known objects found by the approximate searchers."""
        found = []
        for members, index, exact in self.searchers_:
            k = min(self.k_, len(members) if members is not None else self.n_samples_fit_)
            if exact:
                distances, _ = index.kneighbors(X, n_neighbors=k)
            else:
                _, distances = index.query(X, k=k, epsilon=APPROX_QUERY_EPSILON)
            found.append(np.asarray(distances, np.float64))
        return np.sort(np.hstack(found), axis=1)[:, :self.k_]

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise DrlError("KNNScorer is not fitted; call fit() on the known objects first")

    def score_samples(self, X) -> np.ndarray:
        """Scores for new objects (every known object may be a neighbour)."""
        self._check_fitted()
        X = as_finite_matrix(X, n_features=self.n_features_in_)
        if self.method_ == "approximate":
            out = np.empty(X.shape[0])
            for start in range(0, X.shape[0], APPROX_QUERY_CHUNK):
                part = X[start:start + APPROX_QUERY_CHUNK]
                out[start:start + len(part)] = self._query(part).mean(axis=1)
            return out
        distances, _ = self.index_.kneighbors(X, n_neighbors=self.k_)
        return distances.mean(axis=1)

    def score_training(self) -> np.ndarray:
        """Leave-one-out scores of the fitted (known) objects, in fit order.

        Each known object's own row is excluded from its neighbours (by index, so an exact
        duplicate elsewhere in the known set still counts, at distance 0).
        """
        self._check_fitted()
        if self.method_ == "approximate":
            indices, distances = self.index_.neighbor_graph
            distances = np.where(indices == np.arange(len(indices))[:, None], np.inf,
                                 distances.astype(np.float64))
            # The graph keeps more neighbours than k (and usually the point itself): drop the
            # point by index, keep the k nearest of the rest.
            distances = np.sort(distances, axis=1)[:, :self.k_]
            return distances.mean(axis=1)
        distances, _ = self.index_.kneighbors(None, n_neighbors=self.k_)
        return distances.mean(axis=1)

    def fit_score(self, X, y=None) -> np.ndarray:
        """``fit(X)`` then ``score_training()``."""
        return self.fit(X, y).score_training()


class MahalanobisScorer:
    """Minimum Mahalanobis distance to the known class centres (higher = more anomalous).

    ``covariance="shared"`` pools the within-class scatter of all classes into one covariance
    (stable with few objects per class); ``"per_class"`` estimates one per class (classes with
    fewer than ``min_class_size`` objects fall back to the shared one). ``shrinkage="ledoit-wolf"``
    shrinks towards a scaled identity so the inverse exists even with more dimensions than
    objects; ``None`` uses the empirical (maximum-likelihood) covariance.
    """

    def __init__(self, covariance: str = "shared", shrinkage: str | None = "ledoit-wolf",
                 min_class_size: int = 10):
        self.covariance = covariance
        self.shrinkage = shrinkage
        self.min_class_size = min_class_size

    def _estimate(self, centred: np.ndarray) -> np.ndarray:
        if self.shrinkage == "ledoit-wolf":
            return LedoitWolf(assume_centered=True).fit(centred).covariance_
        return empirical_covariance(centred, assume_centered=True)

    def fit(self, X, y=None) -> MahalanobisScorer:
        X = as_finite_matrix(X)
        if self.covariance not in ("shared", "per_class"):
            raise DrlError(f"covariance must be 'shared' or 'per_class', got {self.covariance!r}")
        if self.shrinkage not in ("ledoit-wolf", None):
            raise DrlError(f"shrinkage must be 'ledoit-wolf' or None, got {self.shrinkage!r}")
        if X.shape[0] < 2:
            raise DrlError("the Mahalanobis anomaly score needs at least 2 known objects")
        labels = np.zeros(X.shape[0], dtype=int) if y is None else np.asarray(y)
        if labels.shape != (X.shape[0],):
            raise DrlError(f"labels have shape {labels.shape}, expected ({X.shape[0]},)")
        self.classes_, inverse = np.unique(labels, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        self.means_ = np.stack([X[inverse == c].mean(axis=0) for c in range(len(self.classes_))])
        residuals = X - self.means_[inverse]
        shared = self._estimate(residuals)
        covariances = []
        for c in range(len(self.classes_)):
            members = inverse == c
            if self.covariance == "per_class" and members.sum() >= self.min_class_size:
                covariances.append(self._estimate(residuals[members]))
            else:
                covariances.append(shared)
        self.covariances_ = np.stack(covariances)
        # pinv: a singular empirical covariance (flat dimension) must not crash the analysis.
        self.precisions_ = np.stack([np.linalg.pinv(c, hermitian=True) for c in covariances])
        self.training_scores_ = self.score_samples(X)
        return self

    def score_samples(self, X) -> np.ndarray:
        if not hasattr(self, "precisions_"):
            raise DrlError("MahalanobisScorer is not fitted; call fit() on the known objects first")
        X = as_finite_matrix(X, n_features=self.n_features_in_)
        best = np.full(X.shape[0], np.inf)
        for mean, precision in zip(self.means_, self.precisions_):
            diff = X - mean
            squared = np.einsum("ij,jk,ik->i", diff, precision, diff)
            best = np.minimum(best, np.sqrt(np.maximum(squared, 0.0)))
        return best

    def score_training(self) -> np.ndarray:
        """In-sample scores of the fitted objects (each helped fit its class mean and covariance:
        a small optimistic bias, of order dims / class size)."""
        if not hasattr(self, "training_scores_"):
            raise DrlError("MahalanobisScorer is not fitted; call fit() on the known objects first")
        return self.training_scores_.copy()

    def fit_score(self, X, y=None) -> np.ndarray:
        """``fit(X, y)`` then ``score_training()``."""
        return self.fit(X, y).score_training()


def combine_scores(scores: Mapping[str, Sequence[float]], reference_mask) -> np.ndarray:
    """Average of rank-normalised scores; the ranks are taken against the known set.

    Each score ``s`` (higher = more anomalous) becomes the fraction of known objects
    (``reference_mask`` True) scoring below it, ties counted half: about uniform on [0, 1] over
    the known set, 1 for an object more extreme than every known one. Scales differ wildly
    between scorers (a distance in latent units, a reconstruction error in feature units), and
    ranking makes them commensurable without assuming any distribution. NaN entries are ignored
    per object; an object with no finite score gets NaN.
    """
    if not scores:
        raise DrlError("combine_scores needs at least one score")
    reference_mask = np.asarray(reference_mask, dtype=bool)
    ranked = []
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != reference_mask.shape:
            raise DrlError(f"score {name!r} has {values.shape[0]} values but the reference mask "
                           f"has {reference_mask.shape[0]}")
        reference = np.sort(values[reference_mask & np.isfinite(values)])
        if reference.size == 0:
            raise DrlError(f"score {name!r} has no finite value on the known objects")
        below = np.searchsorted(reference, values, side="left")
        at_or_below = np.searchsorted(reference, values, side="right")
        rank = (below + at_or_below) / (2.0 * reference.size)
        ranked.append(np.where(np.isfinite(values), rank, np.nan))
    stacked = np.stack(ranked)
    finite = np.isfinite(stacked)
    total = np.where(finite, stacked, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def score_against_known(Z, known, labels=None, recon_error=None, k: int = 10,
                        knn: str = "auto", seed: int = 0) -> dict:
    """Every anomaly column for all objects, with the scorers fitted on the ``known`` ones.

    ``known`` is a boolean mask; rows with non-finite codes are never known and score NaN.
    Known objects are scored leave-one-out, so none is its own nearest neighbour. Returns
    arrays keyed by column name: ``anomaly_knn``, ``anomaly_mahalanobis``, ``anomaly_recon``
    (when ``recon_error`` is given), the rank-combined ``anomaly_score``, ``anomaly_known`` and
    per-axis robust ``z_score_<j>``. This is the one place the engine and the app combine them.
    ``knn`` / ``seed``: the :class:`KNNScorer` method and its seed (auto: approximate above
    ``drlcore.analysis.scale.KNN_EXACT_MAX`` known objects; :func:`knn_method` says which).
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise DrlError(f"Z must be a 2-D array (n_samples, n_dims), got shape {Z.shape}")
    n, n_dims = Z.shape
    finite = np.isfinite(Z).all(axis=1)
    known = np.asarray(known, bool) & finite
    if known.sum() < 2:
        raise ValueError("score_against_known needs at least 2 known objects with finite codes")
    Zk = Z[known]
    yk = None if labels is None else np.asarray(labels, object)[known]
    knn = KNNScorer(k=max(1, min(k, int(known.sum()) - 1)), method=knn, seed=seed).fit(Zk)
    scores = {"anomaly_knn": np.full(n, np.nan), "anomaly_mahalanobis": np.full(n, np.nan)}
    scores["anomaly_knn"][known] = knn.score_training()
    other = finite & ~known
    if other.any():
        scores["anomaly_knn"][other] = knn.score_samples(Z[other])
    scores["anomaly_mahalanobis"][finite] = MahalanobisScorer().fit(Zk, yk).score_samples(
        Z[finite])
    if recon_error is not None:
        scores["anomaly_recon"] = np.asarray(recon_error, float)
    columns = dict(scores)
    columns["anomaly_score"] = combine_scores(scores, reference_mask=known)
    columns["anomaly_known"] = known
    zs = np.full((n, n_dims), np.nan)
    zs[finite] = latent_zscores(Z[finite], Zk)
    for j in range(n_dims):
        columns[f"z_score_{j}"] = zs[:, j]
    return columns


def latent_zscores(Z, Z_known) -> np.ndarray:
    """Per-dimension robust z-scores of ``Z`` against the known objects ``Z_known``.

    Centre: median of the known set; scale: median absolute deviation x 1.4826 (the standard
    deviation for normal data, but not dragged by the outliers we are looking for). Where the MAD
    is 0 (more than half the known values identical) the mean absolute deviation x 1.2533 is
    used, and where that is 0 too (a dimension constant on the known set) the scale is 1, so the
    z-score is the raw difference from that constant.
    """
    Z = as_finite_matrix(Z, "Z")
    Z_known = as_finite_matrix(Z_known, "Z_known", n_features=Z.shape[1])
    centre = np.median(Z_known, axis=0)
    deviation = np.abs(Z_known - centre)
    scale = np.median(deviation, axis=0) * MAD_TO_SIGMA
    fallback = deviation.mean(axis=0) * MEAN_AD_TO_SIGMA
    scale = np.where(scale > 0, scale, fallback)
    scale = np.where(scale > 0, scale, 1.0)
    return (Z - centre) / scale


def flag_above_quantile(scores, reference_mask, quantile: float = 0.95) -> tuple[float, np.ndarray]:
    """(threshold, flagged): the ``quantile`` of the finite scores where ``reference_mask``
    holds (the known classes), and which objects score at or above it (NaN: never flagged;
    no reference scores: a NaN threshold and nothing flagged)."""
    scores = np.asarray(scores, dtype=float)
    reference = scores[np.asarray(reference_mask, dtype=bool) & np.isfinite(scores)]
    threshold = float(np.quantile(reference, quantile)) if len(reference) else float("nan")
    with np.errstate(invalid="ignore"):
        return threshold, np.isfinite(scores) & (scores >= threshold)


def out_of_range_axes(z_row, dim_names: Sequence[str], threshold: float = 3.0) -> list[str]:
    """Human-readable list of the axes where ``|z| >= threshold``, most extreme first.

    >>> out_of_range_axes([0.1, 4.2], ["z0: colour", "z1: scale"])
    ['z1: scale = +4.2 sigma (beyond the known range)']
    """
    z_row = np.asarray(z_row, dtype=np.float64).ravel()
    if len(dim_names) != z_row.size:
        raise DrlError(f"{z_row.size} z-scores but {len(dim_names)} dimension names")
    flagged = [i for i in np.argsort(-np.abs(np.nan_to_num(z_row, nan=0.0)))
               if np.isfinite(z_row[i]) and abs(z_row[i]) >= threshold]
    return [f"{dim_names[i]} = {z_row[i]:+.1f} sigma (beyond the known range)" for i in flagged]


def open_set_evaluation(scores, is_unknown) -> dict:
    """AUROC and average precision of ``scores`` for telling unknown (positive) from known.

    Returns ``{"auroc", "aupr", "n_known", "n_unknown", "note"}``; AUROC/AUPR are NaN with a note
    when only one group is present. Objects with a non-finite score are left out (and counted in
    the note). Chance level: AUROC 0.5, AUPR = fraction of unknowns.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_unknown = np.asarray(is_unknown, dtype=bool).ravel()
    if scores.shape != is_unknown.shape:
        raise DrlError(f"{scores.size} scores but {is_unknown.size} unknown flags")
    notes = []
    finite = np.isfinite(scores)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} object(s) without a finite score left out")
        scores, is_unknown = scores[finite], is_unknown[finite]
    n_unknown = int(is_unknown.sum())
    n_known = int(is_unknown.size - n_unknown)
    if n_unknown == 0 or n_known == 0:
        notes.append("AUROC/AUPR undefined: need both known and unknown objects, got "
                     f"{n_known} known and {n_unknown} unknown")
        auroc = aupr = math.nan
    else:
        auroc = float(roc_auc_score(is_unknown, scores))
        aupr = float(average_precision_score(is_unknown, scores))
    return {"auroc": auroc, "aupr": aupr, "n_known": n_known, "n_unknown": n_unknown,
            "note": "; ".join(notes) if notes else None}


def _stratified_train_mask(labels: np.ndarray, test_fraction: float,
                           rng: np.random.Generator) -> np.ndarray:
    train = np.ones(labels.size, dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        n_test = int(round(test_fraction * members.size))
        if members.size >= 2:
            n_test = min(max(n_test, 1), members.size - 1)
            train[rng.choice(members, size=n_test, replace=False)] = False
    return train


def holdout_each_class(Z, labels, scorer_factory: Callable[[], Any] | None = None,
                       test_fraction: float = 0.3,
                       seed: int = 0, train_mask=None, use_labels: bool = True,
                       reporter: Reporter | None = None) -> dict:
    """Hold out each class in turn as the "unknown" and measure how well it is flagged.

    For each class ``c``: the scorer (``scorer_factory()``, default ``KNNScorer(k=10)``) is
    fitted on the train part of the
    other classes (with their labels when ``use_labels``), then scores the test part of the other
    classes (known) and every object of ``c`` (unknown). The train/test split is ``train_mask``
    when given (e.g. the dataset's own split), else a stratified random split with
    ``test_fraction`` held out. Returns ``{"scorer", "per_class": {c: {"auroc", "aupr",
    "n_known", "n_unknown", "note"}}, "mean_auroc", "worst_auroc", "worst_class", "mean_aupr"}``.
    """
    Z = as_finite_matrix(Z, "Z")
    labels = np.asarray(labels)
    if labels.shape != (Z.shape[0],):
        raise DrlError(f"labels have shape {labels.shape}, expected ({Z.shape[0]},)")
    scorer_factory = scorer_factory or (lambda: KNNScorer(k=10))
    classes = np.unique(labels)
    if classes.size < 2:
        raise DrlError("holding out classes needs at least 2 labelled classes, "
                       f"found {classes.size}")
    if train_mask is None:
        train_mask = _stratified_train_mask(labels, test_fraction, np.random.default_rng(seed))
    else:
        train_mask = np.asarray(train_mask, dtype=bool)
        if train_mask.shape != labels.shape:
            raise DrlError("train_mask must have one entry per object")
    reporter = reporter or NullReporter()
    per_class: dict[str, dict] = {}
    scorer_name = None
    with reporter.stage("open-set hold-out", total=classes.size, unit="class") as bar:
        for held_out in classes:
            unknown = labels == held_out
            fit_rows = ~unknown & train_mask
            eval_rows = unknown | (~unknown & ~train_mask)
            scorer = scorer_factory()
            scorer_name = type(scorer).__name__
            scorer.fit(Z[fit_rows], labels[fit_rows] if use_labels else None)
            result = open_set_evaluation(scorer.score_samples(Z[eval_rows]), unknown[eval_rows])
            per_class[str(held_out)] = result
            bar.update(1)
    aurocs = {name: r["auroc"] for name, r in per_class.items() if np.isfinite(r["auroc"])}
    auprs = [r["aupr"] for r in per_class.values() if np.isfinite(r["aupr"])]
    worst = min(aurocs, key=aurocs.get) if aurocs else None
    return {
        "scorer": scorer_name,
        "per_class": per_class,
        "mean_auroc": float(np.mean(list(aurocs.values()))) if aurocs else math.nan,
        "worst_auroc": aurocs[worst] if worst is not None else math.nan,
        "worst_class": worst,
        "mean_aupr": float(np.mean(auprs)) if auprs else math.nan,
    }
