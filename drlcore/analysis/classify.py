"""How well the class labels can be read from a representation (latents or raw features).

``evaluate_classifiers`` trains small, seeded classifiers and returns plain dicts: accuracy,
balanced accuracy, the confusion matrix and per-fold scores, for each model. It uses the
dataset's own train/test split when there is one, else stratified k-fold cross-validation with
every sample predicted once, out of fold.

Models
------
``mlp``  StandardScaler -> MLPClassifier (one hidden layer of 128, Adam, early stopping on a 10%
         validation split); ``gbt``  HistGradientBoostingClassifier (early stopping likewise).
For wide inputs (raw backbone features, 384-1280 dims) both pipelines first project onto the
first ``max_dims`` (128) principal components (of the unscaled features), fitted on the training
fold only: the MLP's first
layer and the trees' histograms scale with the width, and 128 components keep the class structure
of these features (measured on 2,250 x 1280: see the timing test).

Everything is seeded, so the same inputs and seed give the same numbers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from drlcore.errors import DrlError
from drlcore.progress import NullReporter, Reporter

__all__ = ["MODELS", "evaluate_classifiers"]

MODELS = ("mlp", "gbt")
MAX_DIMS = 128
_EARLY_STOPPING_FRACTION = 0.1


def evaluate_classifiers(
    X,
    y,
    split=None,
    seed: int = 0,
    n_splits: int = 5,
    models: Sequence[str] = MODELS,
    max_dims: int | None = MAX_DIMS,
    threads: int | None = 1,
    reporter: Reporter | None = None,
) -> dict:
    """Accuracy of each classifier in ``models`` at predicting labels ``y`` (n,) from ``X`` (n, d).

    ``split`` (n,), optional: the dataset's own split. Rows marked ``"train"`` train, rows marked
    ``"test"`` are scored, anything else is left out. Without a usable split (None, or no train
    or no test rows) the protocol is stratified k-fold with ``n_splits`` folds, fewer when the
    smallest class is smaller. Rows with NaN/inf features or a missing label are dropped; classes
    with a single sample cannot be cross-validated and are dropped too. All drops are counted in
    ``dropped`` and explained in ``notes``.

    ``max_dims``: inputs wider than this are PCA-projected to it inside each pipeline (None: never).
    ``threads``: BLAS/OpenMP threads for the fits, restored afterwards (None: library defaults).
    One by default: fits on a few thousand rows gain little from threads, and OpenMP's
    spin-waiting collapses when cores are shared (HistGradientBoosting on 1,800 x 10 took 15.7 s
    with the default threads on a loaded 2-core machine, 0.9 s with one).

    Returns ``{"protocol", "n_splits", "n_samples", "n_features", "labels", "class_counts",
    "chance": {"accuracy", "balanced_accuracy"}, "dropped", "notes", "reduction", "models"}``;
    ``models[name]`` has ``accuracy``, ``balanced_accuracy``, ``confusion_matrix`` (rows = true
    label, columns = predicted, in ``labels`` order), ``labels``, ``folds`` (per-fold accuracy and
    balanced accuracy), ``accuracy_std`` and ``fit_seconds``. With fewer than two classes
    ``models`` is empty and ``notes`` says why.
    """
    reporter = reporter or NullReporter()
    models = tuple(models)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise DrlError(f"Unknown classifier(s) {unknown}; choose from {list(MODELS)}.")
    if n_splits < 2:
        raise DrlError(f"n_splits must be at least 2, got {n_splits}.")

    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[1] == 0:
        raise DrlError(f"X must be a (n_samples, n_features) array, got shape {X.shape}.")
    labels_in = pd.Series(np.asarray(y, dtype=object).ravel())
    if len(labels_in) != X.shape[0]:
        raise DrlError(f"X has {X.shape[0]} rows but there are {len(labels_in)} labels.")
    split_in = None if split is None else pd.Series(np.asarray(split, dtype=object).ravel())
    if split_in is not None and len(split_in) != X.shape[0]:
        raise DrlError(f"X has {X.shape[0]} rows but the split has {len(split_in)} entries.")

    notes: list[str] = []
    dropped = {"non_finite": 0, "unlabelled": 0, "rare_class": 0, "outside_split": 0}
    keep = np.ones(X.shape[0], dtype=bool)

    finite = np.isfinite(X).all(axis=1)
    dropped["non_finite"] = int((~finite).sum())
    if dropped["non_finite"]:
        notes.append(f"{dropped['non_finite']} rows with NaN or infinite features were left out.")
    labelled = labels_in.notna().to_numpy()
    dropped["unlabelled"] = int((finite & ~labelled).sum())
    if dropped["unlabelled"]:
        notes.append(f"{dropped['unlabelled']} rows without a label were left out.")
    keep &= finite & labelled
    text_labels = labels_in.where(labels_in.isna(), labels_in.astype(str)).to_numpy()

    protocol, is_train, is_test = "stratified-kfold", None, None
    if split_in is not None:
        values = split_in.astype(str).str.strip().str.lower().to_numpy()
        is_train, is_test = (values == "train") & keep, (values == "test") & keep
        if is_train.any() and is_test.any():
            protocol = "split"
            outside = keep & ~is_train & ~is_test
            dropped["outside_split"] = int(outside.sum())
            if dropped["outside_split"]:
                notes.append(f"{dropped['outside_split']} rows marked neither train nor test were left out.")
            keep &= ~outside
        elif split_in.notna().any():
            notes.append("The split column has no usable train and test rows; used stratified cross-validation instead.")

    if protocol == "stratified-kfold":
        counts = pd.Series(text_labels[keep]).value_counts()
        singletons = counts.index[counts < 2]
        if len(singletons):
            rare = keep & np.isin(text_labels, list(singletons))
            dropped["rare_class"] = int(rare.sum())
            notes.append(
                f"Classes with a single sample cannot be cross-validated and were left out: "
                f"{', '.join(map(str, singletons))}."
            )
            keep &= ~rare

    classes, encoded = np.unique(text_labels[keep].astype(str), return_inverse=True)
    class_counts = {str(c): int(n) for c, n in zip(classes, np.bincount(encoded, minlength=len(classes)))}
    Xk = X[keep]
    result = {
        "protocol": protocol,
        "n_splits": None,
        "n_samples": int(keep.sum()),
        "n_features": int(X.shape[1]),
        "labels": [str(c) for c in classes],
        "class_counts": class_counts,
        "chance": {
            "accuracy": float(max(class_counts.values()) / keep.sum()) if keep.any() else None,
            "balanced_accuracy": float(1.0 / len(classes)) if len(classes) else None,
        },
        "dropped": dropped,
        "notes": notes,
        "reduction": None,
        "models": {},
    }
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if len(classes) == 1 else "none"
        notes.append(f"Classification needs at least two classes with labelled samples; found {found}.")
        return result

    if protocol == "split":
        train_rows, test_rows = is_train[keep], is_test[keep]
        folds = [(np.flatnonzero(train_rows), np.flatnonzero(test_rows))]
        trained_on = np.unique(encoded[train_rows])
        if trained_on.size < 2:
            notes.append(
                f"The training split holds only one class ('{classes[trained_on[0]]}'); "
                "classification needs at least two."
            )
            return result
        unseen = sorted(set(classes[encoded[test_rows]]) - set(classes[encoded[train_rows]]))
        if unseen:
            notes.append(f"Test classes absent from the training split (always misclassified): {', '.join(unseen)}.")
    else:
        from sklearn.model_selection import StratifiedKFold

        smallest = min(class_counts.values())
        folds_used = min(n_splits, smallest)
        if folds_used < n_splits:
            notes.append(f"The smallest class has {smallest} samples, so {folds_used}-fold instead of {n_splits}-fold cross-validation.")
        result["n_splits"] = folds_used
        splitter = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
        folds = list(splitter.split(Xk, encoded))

    reduce_to = max_dims if max_dims is not None and Xk.shape[1] > max_dims else None
    if reduce_to is not None:
        result["reduction"] = {"method": "pca", "n_components": int(reduce_to), "from": int(Xk.shape[1])}

    from threadpoolctl import threadpool_limits

    with (
        threadpool_limits(limits=threads),
        reporter.stage("classifiers", total=len(models) * len(folds), unit="fit") as bar,
    ):
        for name in models:
            predicted = np.full(len(encoded), -1)
            fold_scores = []
            started = time.perf_counter()
            for train_idx, test_idx in folds:
                pipeline = _pipeline(name, seed, reduce_to, encoded[train_idx], len(train_idx))
                with warnings.catch_warnings():
                    # Early stopping ends most fits before max_iter; the rest are still usable.
                    warnings.simplefilter("ignore", category=_convergence_warning())
                    pipeline.fit(Xk[train_idx], encoded[train_idx])
                predicted[test_idx] = pipeline.predict(Xk[test_idx])
                fold_confusion = _confusion(encoded[test_idx], predicted[test_idx], len(classes))
                fold_scores.append(
                    {"accuracy": _accuracy(fold_confusion), "balanced_accuracy": _balanced_accuracy(fold_confusion)}
                )
                bar.update(1, model=name, acc=fold_scores[-1]["accuracy"])
            scored = np.concatenate([test_idx for _, test_idx in folds])
            confusion = _confusion(encoded[scored], predicted[scored], len(classes))
            result["models"][name] = {
                "accuracy": _accuracy(confusion),
                "balanced_accuracy": _balanced_accuracy(confusion),
                "accuracy_std": float(np.std([f["accuracy"] for f in fold_scores])),
                "confusion_matrix": confusion.tolist(),
                "labels": result["labels"],
                "folds": fold_scores,
                "fit_seconds": round(time.perf_counter() - started, 3),
            }
    return result


def _convergence_warning():
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning


def _pipeline(name: str, seed: int, reduce_to: int | None, train_labels: np.ndarray, n_train: int):
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Both estimators carve a stratified validation set for early stopping. Below ~50 validation
    # samples its score is too coarse to stop on (the MLP quit after a dozen steps on 150
    # samples), and stratifying needs two samples of every class and one validation sample each.
    class_sizes = np.bincount(train_labels)
    class_sizes = class_sizes[class_sizes > 0]
    n_validation = _EARLY_STOPPING_FRACTION * n_train
    early_stopping = bool(n_validation >= max(50, 2 * class_sizes.size) and class_sizes.min() >= 2)
    steps = []
    if reduce_to is not None:
        # PCA on the unscaled features: standardising first would lift dead or near-constant
        # backbone channels to unit variance and let noise crowd out the leading components.
        steps.append(PCA(n_components=min(reduce_to, n_train), svd_solver="randomized", random_state=seed))
    steps.append(StandardScaler())
    if name == "mlp":
        steps.append(
            MLPClassifier(
                hidden_layer_sizes=(128,),
                alpha=1e-3,
                # Small batches: a few thousand samples still give many steps per epoch.
                batch_size=min(64, n_train),
                max_iter=300,
                early_stopping=early_stopping,
                validation_fraction=_EARLY_STOPPING_FRACTION,
                n_iter_no_change=10,
                random_state=seed,
            )
        )
    else:
        steps.append(
            HistGradientBoostingClassifier(
                max_iter=200,
                early_stopping=early_stopping,
                validation_fraction=_EARLY_STOPPING_FRACTION,
                n_iter_no_change=10,
                random_state=seed,
            )
        )
    return make_pipeline(*steps)


def _confusion(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / confusion.sum())


def _balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes present in the scored rows (as sklearn, without its warning
    when a predicted class is absent from the truth)."""
    support = confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(confusion)[present] / support[present]))
