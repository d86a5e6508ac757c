"""Input checks shared by the estimators (anomaly scorers, projections): done once, at the door,
with messages that say what to do."""

from __future__ import annotations

from typing import Any

import numpy as np

from drlcore.errors import DrlError

__all__ = ["as_finite_matrix"]


def as_finite_matrix(X: Any, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """``X`` as a float64 (n_objects, n_dims) array with at least one row and no NaN/inf.

    A 1-D input is one dimension over many objects. ``n_features``, when given, is what the
    estimator was fitted on.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DrlError(f"{name} must be a 2-D array (n_objects, n_dims), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DrlError(f"{name} has no rows")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise DrlError(f"{name} has {bad} row(s) with NaN or infinite values; drop or encode them "
                       "again first")
    if n_features is not None and X.shape[1] != n_features:
        raise DrlError(f"{name} has {X.shape[1]} dimensions but this was fitted on {n_features}")
    return X
