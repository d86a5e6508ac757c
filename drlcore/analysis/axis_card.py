"""What the raw features can read, which measurements anchor the default axes, how many free axes
to keep, and the axis card: every axis next to the best PCA axis and the ridge ceiling.

Pure functions: arrays and DataFrames in, plain dicts out; nothing is read from disk.

- **Readability** (``readout``): a 5-fold cross-validated ridge read-out of each morphology column
  (as rank-normal scores, so a skewed size does not understate it) from the standardised raw
  features (out-of-fold predictions, Spearman rho against the measured value). It is the ceiling for any linear axis of those features, and the test of whether a
  measurement can anchor an axis at all. To stay cheap on large runs it is fitted on at most
  ``max_rows`` rows and on the first ``max_components`` principal components of the standardised
  features (a label-free projection; on the developer sets it costs < 0.01 of rho against the
  full 1280 dimensions, see ``benchmarks/axis_quality.py``).
- **Default anchors** (``select_anchors``): columns are grouped by ``naming.feature_family`` (and
  by channel for per-channel families); a family is anchored when its best column is read with
  |rho| >= ``min_rho`` (0.5, the bar names need); its best-read column represents it.
- **Free axes** (``free_axis_count``): the effective dimension (participation ratio) of the
  standardised raw features' spectrum, clipped to [``min_free``, ``max_free``], label-free.
- **Axis card** (``axis_card``): for every axis, Spearman rho with its measure (the anchor for an
  anchored axis, the naming feature for a free one) with a Bonett-Wright Fisher CI, on the
  images held out of fine-tuning where there are such, next to the best single PCA axis of the
  raw features (first as many PCs as the model has axes) and the ridge ceiling on the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["rank_normal_scores", "ANCHOR_MIN_RHO", "EXCLUDED_FAMILIES", "readout", "readability", "anchor_groups",
           "select_anchors", "free_axis_count", "pca_scores", "spearman_ci", "axis_card", "card_order",
           "card_label", "measured_values"]

ANCHOR_MIN_RHO = 0.5
# Texture (GLCM) statistics change with the resize a backbone sees, not with the cell; the issue's
# anchor families are size, shape, colour, intensity per channel and DNA content.
EXCLUDED_FAMILIES = frozenset({"texture"})
PER_CHANNEL_FAMILIES = frozenset({"intensity", "texture"})
MAX_ANCHORS = 6
CV_FOLDS = 5
RIDGE_ALPHAS = np.logspace(-2, 5, 15)
_COMPARTMENTS = ("cell", "object", "whole", "nucleus", "nuclei", "cytoplasm", "cytoplasmic")
_CHANNEL_RE = re.compile(r"^morph_(?P<channel>ch\d+)_")
_CHANNEL_COMPARTMENT_RE = re.compile(
    rf"^morph_(?P<channel>[^_]+)_(?:{'|'.join(_COMPARTMENTS)})_")


def _standardised(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    std = X.std(0)
    return (X - X.mean(0)) / np.where(std > 0, std, 1.0)


def _top_components(Xs: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first ``k`` right singular vectors (rows) of ``Xs``: exact through the small Gram
    matrix's eigendecomposition (one BLAS thread: a full SVD on a loaded 2-core machine took a
    minute for 1,600 x 1,280, this takes about a second)."""
    gram = Xs.T @ Xs
    w, v = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1][:k]
    return v[:, order].T


def _eigenvalues(Xs: np.ndarray) -> np.ndarray:
    small = Xs @ Xs.T if Xs.shape[0] < Xs.shape[1] else Xs.T @ Xs
    return np.clip(np.linalg.eigvalsh(small)[::-1], 0.0, None)


def pca_scores(X: np.ndarray, n: int, max_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Scores of every row on the first ``n`` principal components of the standardised features
    (fitted on at most ``max_rows`` sampled rows, so a large run stays cheap)."""
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, np.float64)
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 0, std, 1.0)
    fit = X if len(X) <= max_rows else X[np.sort(np.random.default_rng(seed).choice(
        len(X), max_rows, replace=False))]
    n = max(1, min(int(n), *fit.shape))
    with threadpool_limits(1):
        vt = _top_components((fit - mean) / std, n, seed)
        return ((X - mean) / std) @ vt.T


def _rank(v: np.ndarray) -> np.ndarray:
    return stats.rankdata(v)


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 4 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), n
    return float(np.corrcoef(_rank(a[ok]), _rank(b[ok]))[0, 1]), n


def spearman_ci(a, b, ci: float = 0.95) -> dict:
    """Spearman rho of two vectors over the rows where both are finite, with the Fisher-z CI of
    Bonett & Wright (variance (1 + rho^2/2) / (n - 3)), as ``correlation.py`` gives it."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rho, n = _spearman(a, b)
    if not np.isfinite(rho):
        return {"rho": None, "ci_low": None, "ci_high": None, "n": n}
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    se = np.sqrt((1 + rho ** 2 / 2) / max(n - 3, 1))
    zc = stats.norm.ppf(0.5 + ci / 2)
    return {"rho": rho, "ci_low": float(np.tanh(z - zc * se)),
            "ci_high": float(np.tanh(z + zc * se)), "n": n}


def readout(X: np.ndarray, targets: Mapping[str, np.ndarray], seed: int = 0,
            max_rows: int = 2000, max_components: int = 256,
            basis: tuple | None = None) -> dict[str, np.ndarray]:
    """Out-of-fold ridge predictions of each target from the raw features (NaN where the target
    is missing or the row was not sampled). One SVD per fold serves every target and alpha."""
    X = np.asarray(X, np.float64)
    n = len(X)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, max_rows, replace=False)) if n > max_rows else np.arange(n)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        if basis is None or not np.array_equal(basis[0], rows):
            basis = _basis(X, rows, max_components)
        return _readout(X, rows, targets, rng, basis, max_components)


def _basis(X: np.ndarray, rows: np.ndarray, k: int) -> tuple:
    """(rows, mean, std, first k principal directions) of the standardised sampled rows: one
    decomposition serves the PCA baseline and the ridge read-out."""
    fit = X[rows]
    mean, std = fit.mean(0), fit.std(0)
    std = np.where(std > 0, std, 1.0)
    Xs = (fit - mean) / std
    return rows, mean, std, _top_components(Xs, min(k, *Xs.shape), 0)


def _readout(X, rows, targets, rng, basis, max_components):
    n = len(X)
    _, mean, std, vt = basis
    P = ((X[rows] - mean) / std) @ vt[:max_components].T  # label-free projection
    out = {}
    folds = np.arange(len(rows)) % CV_FOLDS
    rng.shuffle(folds)
    bases: dict[bytes, tuple] = {}  # one decomposition per training-row set, shared by targets
    for name, values in targets.items():
        v = np.asarray(values, float)[rows]
        pred_rows = np.full(len(rows), np.nan)
        ok = np.isfinite(v)
        if ok.sum() >= 2 * CV_FOLDS and np.ptp(v[ok]) > 0:
            for f in range(CV_FOLDS):
                tr, te = ok & (folds != f), ok & (folds == f)
                if tr.sum() < 3 or te.sum() == 0:
                    continue
                # Rank-normal targets: the ceiling of a monotone read-out, which is what a
                # Spearman rho asks for; on plankton area (skew 4.5) a read-out of the raw
                # values reaches held-out rho 0.83, of the rank-normal scores 0.92.
                key = np.packbits(tr).tobytes()
                if key not in bases:
                    bases[key] = _ridge_basis(P[tr])
                pred_rows[te] = _ridge_solve(bases[key], rank_normal_scores(v[tr], v[tr]),
                                             P[te])
        pred = np.full(n, np.nan)
        pred[rows] = pred_rows
        out[name] = pred
    return out


def _ridge_basis(A: np.ndarray) -> tuple:
    mu = A.mean(0)
    Ac = A - mu
    s2, v = np.linalg.eigh(Ac.T @ Ac)
    return mu, Ac, np.clip(s2, 0.0, None), v, Ac @ v


def _ridge_solve(basis: tuple, y: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Ridge on centred A with alpha chosen by generalised cross-validation (closed form on the
    eigendecomposition of A'A, as sklearn's ``RidgeCV`` does), then predictions for B."""
    mu, Ac, s2, v, Av = basis
    ym = y.mean()
    yc = y - ym
    vty = v.T @ (Ac.T @ yc)  # = S U'y in the SVD's terms
    best, best_w = np.inf, None
    for alpha in RIDGE_ALPHAS:
        coef = vty / (s2 + alpha)
        fit = Av @ coef
        dof = float((s2 / (s2 + alpha)).sum())
        gcv = np.mean((yc - fit) ** 2) / max(1e-12, (1 - dof / len(y))) ** 2
        if gcv < best:
            best, best_w = gcv, v @ coef
    return (B - mu) @ best_w + ym


def rank_normal_scores(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normal scores of ``values`` by their position among ``reference`` (the training rows):
    Phi^-1 of the mid-rank quantile (ties share it), interpolated for values between reference
    points; monotone, mean ~0 and sd ~1 on the reference whatever its skew."""
    ref = np.sort(np.asarray(reference, float))
    n = len(ref)
    lo = np.searchsorted(ref, values, side="left")
    hi = np.searchsorted(ref, values, side="right")
    q = np.clip((lo + hi) / 2.0, 0.5, n - 0.5) / n  # mid-rank quantile in (0, 1)
    return stats.norm.ppf(q)


def _channel(column: str) -> str | None:
    m = _CHANNEL_RE.match(column) or _CHANNEL_COMPARTMENT_RE.match(column)
    return m.group("channel") if m else None


def anchor_groups(columns: Sequence[str], family_of=None) -> dict[str, list[str]]:
    """Candidate anchor columns grouped by family; per-channel families (intensity, texture) are
    split by the channel named in the column (``morph_ch1_*``, ``morph_<channel>_<compartment>_*``),
    so each channel's intensity can anchor its own axis. Excluded families are left out."""
    if family_of is None:
        from drlcore.analysis.naming import feature_family as family_of
    columns = [str(c) for c in columns]
    # Where each channel is measured per compartment, the older one-number-per-channel means
    # (morph_ch<k>_<name>_mean) repeat them under another channel name: one axis each, not two.
    if any(_CHANNEL_COMPARTMENT_RE.match(c) for c in columns):
        columns = [c for c in columns if not _CHANNEL_RE.match(c)]
    groups: dict[str, list[str]] = {}
    for col in columns:
        fam = family_of(col)
        if fam is None or fam in EXCLUDED_FAMILIES:
            continue
        ch = _channel(col) if fam in PER_CHANNEL_FAMILIES else None
        groups.setdefault(f"{fam} ({ch})" if ch else str(fam), []).append(col)
    # The DNA channel's intensity is DNA content again: that channel's axis is the DNA-content
    # family's (integrated DNA, what a cell-cycle biologist reads), not a second one beside it.
    for ch in {_channel(col) for col in groups.get("dna", [])} - {None}:
        groups.pop(f"intensity ({ch})", None)
    return groups


def readability(X: np.ndarray, morph: pd.DataFrame, columns: Sequence[str] | None = None,
                seed: int = 0, max_rows: int = 2000) -> dict[str, dict]:
    """Per morphology column: the ridge read-out's out-of-fold |Spearman rho| and n."""
    cols = [c for c in (columns if columns is not None else morph.columns)
            if c in morph.columns and str(c).startswith("morph_")
            and pd.api.types.is_numeric_dtype(morph[c]) and morph[c].dtype != bool]
    targets = {c: measured_values(morph, c) for c in cols}
    preds = readout(X, targets, seed=seed, max_rows=max_rows)
    out = {}
    for c in cols:
        rho, n = _spearman(preds[c], targets[c])
        out[c] = {"rho": abs(rho) if np.isfinite(rho) else None, "n": n}
    return out


def measured_values(morph: pd.DataFrame, column: str) -> np.ndarray:
    """A morphology column as floats, NaN where segmentation failed (``morph_ok`` False): what
    anchors are fitted on and read-outs are scored against."""
    values = pd.to_numeric(morph[column], errors="coerce").to_numpy(float)
    if "morph_ok" in morph:
        values = np.where(morph["morph_ok"].astype(bool).to_numpy(), values, np.nan)
    return values


def _not_measurements(groups: Mapping[str, list[str]], morph: pd.DataFrame) -> dict[str, str]:
    """Groups that measure the display, not the object: the colour of grey images (hue and the
    RGB means of a grey image are its intensity again) and, where each channel is measured, the
    colour and intensity of the false-colour composite the backbone sees."""
    from drlcore.analysis.morphology import ACHROMATIC_SATURATION

    out = {}
    per_channel = [c for g, cols in groups.items() if g.endswith(")") and "(" in g for c in cols]
    if any(np.isfinite(measured_values(morph, c)).any() for c in per_channel):
        for g in ("colour", "intensity"):
            if g in groups:
                out[g] = ("measured on the false-colour composite of the channels; each "
                          "channel's own intensity is a candidate instead")
    if "colour" in groups and "colour" not in out and "morph_saturation" in morph:
        sat = measured_values(morph, "morph_saturation")
        sat = sat[np.isfinite(sat)]
        if len(sat) and float(np.median(sat)) < ACHROMATIC_SATURATION:
            out["colour"] = "grey images: their colour columns repeat the intensity"
    return out


def select_anchors(X: np.ndarray, morph: pd.DataFrame, min_rho: float = ANCHOR_MIN_RHO,
                   max_anchors: int = MAX_ANCHORS, seed: int = 0, family_of=None,
                   max_rows: int = 2000) -> dict:
    """The default anchors: for each family group, its best-read column; groups whose best
    column the raw features read with |rho| >= ``min_rho`` are anchored (strongest first, at most
    ``max_anchors``). Returns ``{"anchors": [...], "families": {group: {...}}, "rule": str}``."""
    groups = anchor_groups([c for c in morph.columns if str(c).startswith("morph_")], family_of)
    dropped = _not_measurements(groups, morph)
    groups = {g: cols for g, cols in groups.items() if g not in dropped}
    read = readability(X, morph, [c for cols in groups.values() for c in cols], seed, max_rows)
    families = {}
    for group, cols in groups.items():
        scored = [(read[c]["rho"], c) for c in cols if read.get(c, {}).get("rho") is not None]
        if not scored:
            families[group] = {"column": None, "rho": None, "anchored": False,
                               "why": "not measured (constant or missing on these images)"}
            continue
        rho, col = max(scored, key=lambda t: (t[0], t[1]))
        families[group] = {"column": col, "rho": round(float(rho), 4), "anchored": False,
                           "why": None}
    for group, why in dropped.items():
        families[group] = {"column": None, "rho": None, "anchored": False, "why": why}
    ranked = sorted((g for g in families if families[g]["rho"] is not None),
                    key=lambda g: -families[g]["rho"])
    anchors = []
    for g in ranked:
        fam = families[g]
        if fam["rho"] < min_rho:
            fam["why"] = f"the raw features read it with |rho| {fam['rho']:.2f} < {min_rho:g}"
        elif len(anchors) >= max_anchors:
            fam["why"] = f"more than {max_anchors} readable families; weaker ones stay free"
        else:
            fam["anchored"], fam["why"] = True, f"read with |rho| {fam['rho']:.2f} >= {min_rho:g}"
            anchors.append(fam["column"])
    return {"anchors": anchors, "families": families,
            "rule": (f"per family, the column a {CV_FOLDS}-fold ridge read-out of the raw features "
                     f"follows best; anchored when |Spearman rho| >= {min_rho:g} "
                     f"(at most {max_anchors})")}


def free_axis_count(X: np.ndarray, min_free: int = 8, max_free: int = 32,
                    max_rows: int = 2000, seed: int = 0) -> dict:
    """Label-free number of free axes: the participation ratio (sum l)^2 / sum l^2 of the
    eigenvalues of the standardised features' covariance (the effective number of dimensions
    the variance is spread over), rounded up and clipped to [min_free, max_free]."""
    X = np.asarray(X, np.float64)
    X = X[np.isfinite(X).all(1)]
    if len(X) > max_rows:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))]
    if len(X) < 3:
        return {"n_free": min_free, "participation_ratio": None, "rule": "too few rows"}
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        lam = _eigenvalues(_standardised(X))
    pr = float(lam.sum() ** 2 / (lam ** 2).sum())
    n_free = int(np.clip(int(np.ceil(pr)), min_free, max_free))
    explained = float(lam[:n_free].sum() / lam.sum())
    return {"n_free": n_free, "participation_ratio": round(pr, 2),
            "explained_variance": round(explained, 4),
            "rule": (f"participation ratio of the standardised features' spectrum, rounded up, "
                     f"clipped to [{min_free}, {max_free}]")}


def axis_card(Z: np.ndarray, X: np.ndarray, morph: pd.DataFrame, axes: Sequence[Mapping],
              anchors: Sequence[str] = (), rows: np.ndarray | None = None,
              rows_label: str = "all images", seed: int = 0, max_rows: int = 2000,
              ceiling: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """One record per axis: ``dim``, ``name``, ``kind`` (anchored / free), ``status``, ``feature``
    (the measure it is judged on: its anchor, else the feature naming chose), ``rho`` with
    ``ci_low``/``ci_high``/``n`` on ``rows``, ``pca_rho`` and ``pca_axis`` (best of the first J
    PCs of the standardised raw features, J = number of axes), ``ceiling_rho`` (ridge read-out),
    ``of_ceiling`` and ``beats_pca``. Correlations are signed for the axis, absolute for
    the baselines (their sign is arbitrary)."""
    Z = np.asarray(Z, np.float64)
    n, J = Z.shape
    rows = np.arange(n) if rows is None else np.asarray(rows, int)
    measures = {}
    for j, axis in enumerate(axes):
        feat = anchors[j] if j < len(anchors) else axis.get("feature")
        if feat and feat in morph.columns:
            measures[j] = str(feat)
    needed = sorted(set(measures.values()))
    values = {c: measured_values(morph, c) for c in needed}
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, np.float64)
    if not np.isfinite(X).all():
        raise ValueError("axis_card needs finite features (pass the finite rows)")
    sample = (np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
              if n > max_rows else np.arange(n))
    with threadpool_limits(1):
        basis = _basis(X, sample, max(256, J))
        _, mean, std, vt = basis
        pcs = ((X - mean) / std) @ vt[:min(J, len(vt))].T
    if ceiling is None:
        ceiling = (readout(X, values, seed=seed, max_rows=max_rows, basis=basis)
                   if len(needed) else {})
    card = []
    for j, axis in enumerate(axes):
        rec = {"dim": j, "name": axis.get("name") or f"z{j}", "status": axis.get("status"),
               "kind": "anchored" if j < len(anchors) else "free", "feature": measures.get(j),
               "rows": rows_label, "rho": None, "ci_low": None, "ci_high": None, "n": 0,
               "pca_rho": None, "pca_axis": None, "ceiling_rho": None, "of_ceiling": None,
               "beats_pca": None}
        feat = measures.get(j)
        if feat is not None:
            v = values[feat][rows]
            rec.update(spearman_ci(Z[rows, j], v))
            best = (None, None)
            for k in range(pcs.shape[1]):
                r, _ = _spearman(pcs[rows, k], v)
                if np.isfinite(r) and (best[0] is None or abs(r) > best[0]):
                    best = (abs(r), k)
            rec["pca_rho"], rec["pca_axis"] = best
            c, _ = _spearman(ceiling[feat][rows], v) if feat in ceiling else (float("nan"), 0)
            rec["ceiling_rho"] = abs(c) if np.isfinite(c) else None
            if rec["rho"] is not None:
                if rec["ceiling_rho"]:
                    rec["of_ceiling"] = abs(rec["rho"]) / rec["ceiling_rho"]
                if rec["pca_rho"] is not None:
                    rec["beats_pca"] = bool(abs(rec["rho"]) > rec["pca_rho"])
        card.append(rec)
    return card


def card_order(card: Sequence[Mapping]) -> list[Mapping]:
    """Display order: anchored axes (in axis order), then free axes with a supported name, then
    the other free axes, each by decreasing |rho| with their measure (axes without one last)."""
    def key(rec):
        rho = rec.get("rho")
        strength = -abs(rho) if rho is not None else 1.0
        if rec.get("kind") == "anchored":
            return (0, rec["dim"], 0.0)
        return (1 if rec.get("status") == "named" else 2, strength, rec["dim"])
    return sorted(card, key=key)


def card_label(rec: Mapping) -> str:
    """``z0: area · anchored to area`` / ``z7: size · free, follows major axis``."""
    what = str(rec.get("feature") or "").removeprefix("morph_").replace("_", " ")
    if rec.get("kind") == "anchored":
        return f"{rec['name']} · anchored to {what}"
    return f"{rec['name']} · free" + (f", follows {what}" if what else "")
