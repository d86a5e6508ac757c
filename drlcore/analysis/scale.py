"""Helpers that let the analysis stage handle runs far larger than fit comfortably in memory.

Above ``ANALYZE_FULL_MAX`` objects, the analysis fits its models on a stated, seeded, stratified
sample (by class label when there are labels, else uniform) and records each sample size in
``analysis.json["samples"]``: correlations, classification and the open-set hold-out evaluation
on samples; the UMAP map fitted on a sample, with every other object placed on it by
``transform``; PCA on everything. Anomaly scores cover every object, their kNN part from an
approximate neighbour index (pynndescent) above ``KNN_EXACT_MAX`` known objects. Below the
thresholds, nothing is sampled or approximated and nothing changes.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Runs with at most this many objects are analysed in full, exactly as before.
ANALYZE_FULL_MAX = 100_000
# Sample sizes used above the threshold.
CORRELATION_SAMPLE = 20_000
CLASSIFICATION_SAMPLE = 20_000
# The UMAP map above the threshold: fitted on this many objects (stratified like the others),
# the rest placed with ``transform`` in chunks of MAP_TRANSFORM_CHUNK (bounded memory).
UMAP_FIT_SAMPLE = 100_000
MAP_TRANSFORM_CHUNK = 50_000
# kNN anomaly scores: an exact neighbour search (scikit-learn) up to this many known objects,
# approximate nearest neighbours (pynndescent, seeded) above it.
KNN_EXACT_MAX = 100_000

# Bytes hashed per step by :func:`sha256_array` (a bounded copy, never the whole matrix).
HASH_CHUNK_BYTES = 64 << 20


def stratified_sample(n: int, size: int, labels=None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded sample of ``size`` out of ``n`` objects.

    With ``labels`` (length ``n``), each class keeps its share of the sample (largest-remainder
    rounding) and every class keeps at least one object, so rare classes are never dropped.
    Without labels the sample is uniform. ``size >= n`` returns every index.
    """
    if n < 0 or size < 0:
        raise ValueError("n and size must be non-negative")
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} objects")
    classes, inverse = np.unique(labels.astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    exact = counts * (size / n)
    take = np.maximum(np.floor(exact).astype(int), 1)
    take = np.minimum(take, counts)
    # Hand out what rounding left over to the largest remainders.
    short = size - int(take.sum())
    if short > 0:
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        for c in order:
            if short == 0:
                break
            if take[c] < counts[c]:
                take[c] += 1
                short -= 1
    chosen = []
    for c, k in enumerate(take):
        members = np.flatnonzero(inverse == c)
        chosen.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen))


def sha256_array(a: np.ndarray, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """The SHA-256 of ``np.ascontiguousarray(a).tobytes()``, computed in row chunks.

    Equal to hashing the whole buffer at once, but never copies more than ``chunk_bytes`` of a
    memory-mapped matrix at a time.
    """
    h = hashlib.sha256()
    if a.ndim == 0 or len(a) == 0:
        h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()
    row_bytes = max(1, a[:1].nbytes)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, len(a), step):
        h.update(np.ascontiguousarray(a[start:start + step]).tobytes())
    return h.hexdigest()
