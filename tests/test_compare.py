"""Two-group comparison: known answers for Hedges' g, its interval and the BH q-values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drlcore.analysis.compare import compare_groups, hedges_g
from drlcore.errors import DrlError


def test_hedges_g_known_value():
    a = np.array([2.0, 4.0, 6.0])
    b = np.array([1.0, 2.0, 3.0])
    # Pooled sd: sqrt((2*4 + 2*1) / 4) = sqrt(2.5); d = (4 - 2) / sqrt(2.5); J = 1 - 3/(4*6 - 9).
    d = 2.0 / np.sqrt(2.5)
    g, low, high = hedges_g(a, b)
    assert g == pytest.approx(d * (1 - 3 / 15))
    se = np.sqrt(6 / 9 + g * g / 12)
    assert low == pytest.approx(g - 1.959964 * se, rel=1e-5)
    assert high == pytest.approx(g + 1.959964 * se, rel=1e-5)


def test_hedges_g_undefined():
    assert np.isnan(hedges_g([1.0], [1.0, 2.0])[0])
    assert np.isnan(hedges_g([1.0, 1.0], [1.0, 1.0])[0])


def test_compare_groups_ranks_the_real_difference_first():
    rng = np.random.default_rng(0)
    n = 400
    group = np.repeat([0, 1, 2], [150, 150, 100])  # 2 belongs to neither group
    df = pd.DataFrame({
        "shifted": rng.normal(size=n) + 1.0 * (group == 0),
        "noise": rng.normal(size=n),
        "wider": rng.normal(size=n) * np.where(group == 1, 3.0, 1.0),
    })
    df.loc[3, "shifted"] = np.nan  # a failed measurement is left out, not fatal
    out = compare_groups(df, group == 0, group == 1, ["noise", "shifted", "wider"])
    assert list(out["column"])[0] == "shifted"
    top = out.iloc[0]
    assert top["n_a"] == 149 and top["n_b"] == 150
    assert 0.75 < top["hedges_g"] < 1.25 and top["ci_low"] < top["hedges_g"] < top["ci_high"]
    assert top["q_value"] < 1e-10
    noise = out.set_index("column").loc["noise"]
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["q_value"] > 0.05
    # The q-values are Benjamini-Hochberg over the three Welch p-values.
    np.testing.assert_allclose(out["q_value"], stats.false_discovery_control(out["p_value"]))
    expected_p = stats.ttest_ind(df["noise"][group == 0], df["noise"][group == 1],
                                 equal_var=False).pvalue
    assert noise["p_value"] == pytest.approx(expected_p)


def test_compare_groups_refuses_tiny_groups_and_unknown_columns():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(DrlError, match="at least two objects"):
        compare_groups(df, [True, False, False, False], [False, True, True, True], ["x"])
    with pytest.raises(DrlError, match="unknown columns"):
        compare_groups(df, [True, True, False, False], [False, False, True, True], ["y"])
