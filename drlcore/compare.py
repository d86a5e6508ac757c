"""Compare a selection of objects with the rest (effect sizes per column)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from drlcore.errors import DrlError

__all__ = ["cohens_d", "effect_sizes"]


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
