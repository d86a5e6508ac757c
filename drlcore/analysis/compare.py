"""Compare groups of objects: a selection with the rest, or group A with group B.

Effect sizes are Hedges' g for two groups (Cohen's d with the small-sample correction), with a
confidence interval from the normal approximation to its sampling distribution (Hedges & Olkin
1985), and a Welch t-test p-value per column; q-values are Benjamini-Hochberg over the columns
compared, so "significant" survives looking at thirty features at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from drlcore.errors import DrlError

__all__ = ["cohens_d", "effect_sizes", "hedges_g", "compare_groups", "GROUP_COLUMNS"]

GROUP_COLUMNS = ["column", "n_a", "n_b", "mean_a", "mean_b", "hedges_g", "ci_low", "ci_high",
                 "p_value", "q_value", "abs_g"]


def cohens_d(selected: np.ndarray, rest: np.ndarray) -> float:
    """Cohen's d with the pooled standard deviation; NaN when undefined (n < 2 or no spread)."""
    a = np.asarray(selected, dtype=np.float64)
    b = np.asarray(rest, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n0 = len(a), len(b)
    if n1 < 2 or n0 < 2:
        return float("nan")
    pooled_var = ((n1 - 1) * a.var(ddof=1) + (n0 - 1) * b.var(ddof=1)) / (n1 + n0 - 2)
    if pooled_var <= 0:
        return float("nan")
    return float((a.mean() - b.mean()) / np.sqrt(pooled_var))


def effect_sizes(df: pd.DataFrame, mask, columns: list[str]) -> pd.DataFrame:
    """Per-column comparison of the rows in ``mask`` against all other rows.

    Returns one row per column with ``column, n_selected, n_rest, mean_selected, mean_rest,
    cohens_d, abs_d``, sorted by ``abs_d`` (largest difference first; undefined d last).
    Non-finite values are left out per column, so a failed morphology measurement on a few
    objects does not void the comparison.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(df),):
        raise DrlError(f"selection mask has {mask.shape[0] if mask.ndim else 0} entries but the table has {len(df)} rows")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DrlError(f"cannot compare unknown columns: {', '.join(missing)}")
    rows = []
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        sel, rest = values[mask], values[~mask]
        sel_f, rest_f = sel[np.isfinite(sel)], rest[np.isfinite(rest)]
        d = cohens_d(sel_f, rest_f)
        rows.append({
            "column": col,
            "n_selected": len(sel_f),
            "n_rest": len(rest_f),
            "mean_selected": float(sel_f.mean()) if len(sel_f) else float("nan"),
            "mean_rest": float(rest_f.mean()) if len(rest_f) else float("nan"),
            "cohens_d": d,
            "abs_d": abs(d),
        })
    out = pd.DataFrame(rows, columns=["column", "n_selected", "n_rest", "mean_selected",
                                      "mean_rest", "cohens_d", "abs_d"])
    return out.sort_values("abs_d", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def hedges_g(a: np.ndarray, b: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """Hedges' g of ``a`` minus ``b`` and its ``ci`` interval; NaNs when undefined."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n2 = len(a), len(b)
    d = cohens_d(a, b)
    if not np.isfinite(d):
        return (float("nan"),) * 3
    correction = 1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)
    g = d * correction
    se = np.sqrt((n1 + n2) / (n1 * n2) + g * g / (2.0 * (n1 + n2)))
    z = stats.norm.ppf(0.5 + ci / 2.0)
    return float(g), float(g - z * se), float(g + z * se)


def compare_groups(df: pd.DataFrame, group_a, group_b, columns: list[str],
                   ci: float = 0.95) -> pd.DataFrame:
    """Per-column comparison of the rows in ``group_a`` with the rows in ``group_b``.

    The masks may overlap only if the caller means it (an object in both counts in both). Returns
    one row per column (:data:`GROUP_COLUMNS`) sorted by ``abs_g``, largest first, undefined last.
    """
    from scipy import stats

    a_mask = np.asarray(group_a, dtype=bool)
    b_mask = np.asarray(group_b, dtype=bool)
    for name, mask in (("group A", a_mask), ("group B", b_mask)):
        if mask.shape != (len(df),):
            raise DrlError(f"{name} mask has {mask.size} entries but the table has {len(df)} rows")
    if a_mask.sum() < 2 or b_mask.sum() < 2:
        raise DrlError(f"each group needs at least two objects (A has {int(a_mask.sum())}, "
                       f"B has {int(b_mask.sum())})")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DrlError(f"cannot compare unknown columns: {', '.join(missing)}")
    rows = []
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        a, b = values[a_mask], values[b_mask]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        g, low, high = hedges_g(a, b, ci)
        p = (float(stats.ttest_ind(a, b, equal_var=False).pvalue)
             if np.isfinite(g) else float("nan"))
        rows.append({"column": col, "n_a": len(a), "n_b": len(b),
                     "mean_a": float(a.mean()) if len(a) else float("nan"),
                     "mean_b": float(b.mean()) if len(b) else float("nan"),
                     "hedges_g": g, "ci_low": low, "ci_high": high, "p_value": p,
                     "q_value": float("nan"), "abs_g": abs(g)})
    out = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    tested = out["p_value"].notna()
    if tested.any():
        out.loc[tested, "q_value"] = stats.false_discovery_control(out.loc[tested, "p_value"])
    return out.sort_values("abs_g", ascending=False, na_position="last",
                           kind="stable").reset_index(drop=True)
