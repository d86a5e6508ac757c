"""Is reduced precision safe for a backbone? Judged by what the user sees downstream.

A raw cosine rule (bf16 vs fp32 features >= 0.999) says nothing about the latent axes, the
neighbours or the class read-out a user looks at. ``agreement`` compares fp32 features with
reduced-precision features of the *same images* on the three things drl shows:

1. latent codes: one model transferred on the fp32 features (the same transfer for both)
   encodes both feature sets; Pearson r per latent axis must be >= ``MIN_LATENT_R`` (0.999),
2. kNN@10 neighbourhoods in feature space: mean share of each image's 10 nearest neighbours
   (Euclidean, self excluded) found in both sets >= ``MIN_KNN_OVERLAP`` (0.95),
3. classification: balanced accuracy of the MLP read-out (:mod:`drlcore.analysis.classify`, same seed,
   same folds) is lower by no more than the cross-validation noise of the estimate (a
   non-inferiority check: a higher accuracy passes): two standard
   errors of a difference of two such estimates, ``2 * sqrt(2) * SE``, with SE the spread of
   the reference's per-fold balanced accuracies, ``std(folds, ddof=1) / sqrt(k)``
   (:func:`accuracy_noise`). The binomial SE of a proportion on n images,
   ``sqrt(p (1 - p) / n)``, which estimates the same thing, is reported beside it.

The thresholds 0.999 and 0.95 are stricter than the features' own noise: re-saving each image
as a quality-95 JPEG moves EfficientNet-Lite0's kNN@10 neighbourhoods more (overlap ~0.8) than
bf16 arithmetic does (~0.89). With ``perturbed`` (the reference backbone's fp32 features of the
same images after such a re-save, :func:`jpeg_resave`), the latent and kNN thresholds become
that noise floor instead (:func:`noise_floor`): reduced precision passes when it moves the
latent axes and the neighbourhoods no more than a re-save the user would never notice, and the
class read-out stays within its cross-validation noise.

Pure core: arrays in, a plain dict out; the sampler that embeds real images and runs the
transfer is ``benchmarks/precision_check.py``. Verdicts measured there are recorded per
backbone in :data:`drlcore.embedding.backbones.BACKBONES` (``bf16_agrees``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from drlcore.errors import DrlError

__all__ = ["MIN_LATENT_R", "MIN_KNN_OVERLAP", "NOISE_JPEG_QUALITY", "knn_overlap",
           "axis_correlations", "accuracy_noise", "jpeg_resave", "noise_floor", "agreement"]

MIN_LATENT_R = 0.999
MIN_KNN_OVERLAP = 0.95
# The re-save that sets the noise floor: quality 95 is the highest setting common tools offer by
# default and is visually lossless; a pipeline that cannot tell it from the original has no use
# for features more exact than its effect.
NOISE_JPEG_QUALITY = 95


def jpeg_resave(images: np.ndarray, quality: int = NOISE_JPEG_QUALITY) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same images after a JPEG round trip at ``quality`` (the
    backbone's input re-saved, so every data type, 16-bit TIFFs included, gets one floor)."""
    import io

    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DrlError(f"jpeg_resave needs uint8 (N, H, W, 3) images, got {images.dtype} "
                       f"{images.shape}")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def noise_floor(reference: np.ndarray, perturbed: np.ndarray, k: int = 10,
                encode: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """How far an innocuous perturbation (a JPEG re-save) moves the features: kNN@k overlap of
    ``reference`` with ``perturbed`` and, with ``encode``, the lowest latent r per axis."""
    out = {"knn_overlap": knn_overlap(reference, perturbed, k)}
    if encode is not None:
        r = axis_correlations(encode(reference), encode(perturbed))
        finite = r[np.isfinite(r)]
        out["latent_r_min"] = float(finite.min()) if finite.size else float("nan")
    return out


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours (Euclidean, self excluded) shared by the
    neighbourhoods computed in ``a`` and in ``b`` (same rows): 1 identical, ~k/n unrelated."""
    from sklearn.neighbors import NearestNeighbors

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise DrlError(f"knn_overlap needs two (n, d) arrays of one shape, got {a.shape}, {b.shape}")
    if a.shape[0] <= k:
        raise DrlError(f"knn_overlap needs more than k={k} rows, got {a.shape[0]}")
    na = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a, return_distance=False)
    nb = NearestNeighbors(n_neighbors=k + 1).fit(b).kneighbors(b, return_distance=False)
    shared = [len(set(ra[ra != i][:k]) & set(rb[rb != i][:k]))
              for i, (ra, rb) in enumerate(zip(na, nb))]
    return float(np.mean(shared) / k)


def axis_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column of two (n, J) arrays; NaN where a column is constant in either."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise DrlError(f"axis_correlations needs two (n, J) arrays of one shape, got "
                       f"{a.shape}, {b.shape}")
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def accuracy_noise(fold_scores) -> float:
    """Noise of a difference of two k-fold balanced accuracies: ``2 * sqrt(2) * SE`` with
    ``SE = std(fold_scores, ddof=1) / sqrt(k)`` (two standard errors of a difference of two
    independent estimates, each with the spread these folds show)."""
    scores = np.asarray(fold_scores, np.float64)
    if scores.ndim != 1 or scores.size < 2 or not np.isfinite(scores).all():
        raise DrlError(f"accuracy_noise needs two or more finite fold scores, got {fold_scores!r}")
    return float(2.0 * np.sqrt(2.0) * scores.std(ddof=1) / np.sqrt(scores.size))


def agreement(reference: np.ndarray, reduced: np.ndarray, labels=None,
              encode: Callable[[np.ndarray], np.ndarray] | None = None, k: int = 10,
              seed: int = 0, perturbed: np.ndarray | None = None) -> dict:
    """Downstream agreement of ``reduced`` (e.g. bf16) with ``reference`` (fp32) features.

    ``encode``: features (n, D) -> latent means (n, J), a model transferred on ``reference``;
    None skips the latent check. ``labels``: class per row; None skips classification.
    ``perturbed``: fp32 features of the same images after a JPEG re-save (:func:`jpeg_resave`);
    given, the latent and kNN thresholds are that noise floor (:func:`noise_floor`) instead of
    the fixed ``MIN_LATENT_R`` / ``MIN_KNN_OVERLAP``.
    Returns the numbers, each check's verdict and ``passed`` (every check that ran passed).
    """
    from drlcore.analysis.classify import evaluate_classifiers

    reference = np.asarray(reference, np.float32)
    reduced = np.asarray(reduced, np.float32)
    if reference.shape != reduced.shape or reference.ndim != 2:
        raise DrlError(f"reference and reduced features differ in shape: {reference.shape} vs "
                       f"{reduced.shape}")
    cosine = np.sum(reference * reduced, 1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(reduced, axis=1) + 1e-12)
    out: dict = {"n": int(reference.shape[0]), "cosine_min": float(cosine.min()),
                 "cosine_median": float(np.median(cosine)), "checks": {}}
    floor = None
    if perturbed is not None:
        perturbed = np.asarray(perturbed, np.float32)
        if perturbed.shape != reference.shape:
            raise DrlError(f"perturbed features differ in shape from the reference: "
                           f"{perturbed.shape} vs {reference.shape}")
        floor = noise_floor(reference, perturbed, k, encode)
        out["noise_floor"] = floor
    min_r = floor["latent_r_min"] if floor is not None and encode is not None else MIN_LATENT_R
    min_knn = floor["knn_overlap"] if floor is not None else MIN_KNN_OVERLAP
    out["thresholds"] = {"latent_r_min": min_r, "knn_overlap": min_knn}

    if encode is not None:
        codes_ref, codes_red = encode(reference), encode(reduced)
        r = axis_correlations(codes_ref, codes_red)
        finite = r[np.isfinite(r)]
        r_min = float(finite.min()) if finite.size else float("nan")
        out["latent_r"] = [None if not np.isfinite(v) else float(v) for v in r]
        out["latent_r_min"] = r_min
        # An axis constant in one set and not the other (NaN r) is a disagreement too.
        out["checks"]["latent"] = bool(finite.size == r.size and finite.size
                                       and r_min >= min_r)
        # Reported, not checked: neighbours in the latent space (the map's neighbourhoods).
        out["latent_knn_overlap"] = knn_overlap(codes_ref, codes_red, k)

    out["knn_overlap"] = knn_overlap(reference, reduced, k)
    out["checks"]["knn"] = out["knn_overlap"] >= min_knn

    if labels is not None:
        fits = [evaluate_classifiers(features, labels, seed=seed, models=("mlp",))
                ["models"]["mlp"] for features in (reference, reduced)]
        accs = [float(fit["balanced_accuracy"]) for fit in fits]
        folds = [f["balanced_accuracy"] for f in fits[0]["folds"]]
        p, n = accs[0], out["n"]
        binomial_se = float(np.sqrt(p * (1.0 - p) / n))
        # One fold (no labels split into folds) shows no spread: fall back to the binomial SE.
        noise = (accuracy_noise(folds) if len(folds) >= 2
                 else float(2.0 * np.sqrt(2.0) * binomial_se))
        out["balanced_accuracy"] = {
            "reference": accs[0], "reduced": accs[1], "difference": accs[1] - accs[0],
            "noise": noise, "folds": len(folds),
            "binomial_se": binomial_se}
        # Non-inferiority: the question is whether reduced precision costs the user anything,
        # so a gain is not a failure (plankton, OpenVINO bf16: +0.0187 against noise 0.0185).
        out["checks"]["classification"] = bool(accs[1] - accs[0] >= -noise)

    out["passed"] = bool(all(out["checks"].values()))
    return out
