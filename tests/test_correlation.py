"""Known answers for latent <-> feature association: monotone relations, a bivariate normal with
known rho (interval coverage), missing rows, constant columns, and the top-match summary."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drlcore.analysis.correlation import COLUMNS, best_matches, latent_feature_correlation
from drlcore.errors import DrlError


def lookup(table, dim, feature, method):
    row = table[(table["dim"] == dim) & (table["feature"] == feature) & (table["method"] == method)]
    assert len(row) == 1
    return row.iloc[0]


@pytest.fixture
def morphology(rng):
    n = 800
    area = rng.lognormal(mean=5.0, sigma=0.5, size=n)
    colour = rng.uniform(size=n)
    angle = rng.uniform(-1.0, 1.0, size=n)
    Z = np.column_stack(
        [
            np.log(area) ** 3,  # monotone but far from linear in area
            rng.standard_normal(n),  # unrelated to everything
            np.abs(angle) + 0.01 * rng.standard_normal(n),  # non-monotone in angle
        ]
    )
    F = pd.DataFrame({"morph_area": area, "morph_colour": colour, "morph_angle": angle})
    return Z, F


def test_schema_and_names(morphology):
    Z, F = morphology
    table = latent_feature_correlation(Z, F, dim_names=["z0: size", "z1", "z2: angle"], n_boot=50)
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 * 3 * 3
    assert table["dim"].dtype == np.int64 and table["n"].dtype == np.int64
    assert set(table["method"]) == {"pearson", "spearman", "mi"}
    assert lookup(table, 0, "morph_area", "spearman")["dim_name"] == "z0: size"


def test_monotone_dim_correlates_with_area_not_colour(morphology):
    Z, F = morphology
    table = latent_feature_correlation(Z, F, n_boot=100)
    area = lookup(table, 0, "morph_area", "spearman")
    assert area["value"] == pytest.approx(1.0, abs=1e-12)
    assert area["p_value"] < 1e-12
    colour = lookup(table, 0, "morph_colour", "spearman")
    assert abs(colour["value"]) < 0.1
    assert colour["ci_low"] < 0.0 < colour["ci_high"]
    # Pearson sees a weaker (non-linear) relation than Spearman.
    assert lookup(table, 0, "morph_area", "pearson")["value"] < area["value"]
    assert lookup(table, 0, "morph_area", "mi")["value"] > 1.0
    assert lookup(table, 0, "morph_colour", "mi")["value"] < 0.05


def test_mi_sees_a_non_monotone_relation(morphology):
    Z, F = morphology
    table = latent_feature_correlation(Z, F, n_boot=100)
    assert abs(lookup(table, 2, "morph_angle", "spearman")["value"]) < 0.15
    mi = lookup(table, 2, "morph_angle", "mi")
    assert mi["value"] > 0.4
    assert mi["ci_low"] > 0.2
    assert mi["p_value"] < 1e-6
    unrelated = lookup(table, 1, "morph_angle", "mi")
    assert unrelated["value"] < 0.05
    assert unrelated["p_value"] > 1e-3


def test_intervals_cover_a_known_correlation(rng):
    rho, n = 0.5, 5000
    sample = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    table = latent_feature_correlation(sample[:, :1], pd.DataFrame({"f": sample[:, 1]}), n_boot=200)
    pearson = lookup(table, 0, "f", "pearson")
    assert pearson["ci_low"] < rho < pearson["ci_high"]
    assert pearson["ci_high"] - pearson["ci_low"] == pytest.approx(2 * 1.96 * (1 - rho**2) / math.sqrt(n), rel=0.1)
    # Spearman's population value for a bivariate normal: (6 / pi) asin(rho / 2).
    rho_s = 6 / math.pi * math.asin(rho / 2)
    spearman = lookup(table, 0, "f", "spearman")
    assert spearman["ci_low"] < rho_s < spearman["ci_high"]
    # MI of a bivariate normal is -log(1 - rho^2) / 2; binning makes the estimate slightly low.
    mi = lookup(table, 0, "f", "mi")
    true_mi = -0.5 * math.log(1 - rho**2)
    assert mi["ci_low"] < mi["value"] < mi["ci_high"]
    assert mi["ci_low"] < true_mi < mi["ci_high"]
    assert 0.8 * true_mi < mi["value"] < 1.1 * true_mi


def test_interval_coverage_over_repeats():
    # 95% intervals on 200 independent samples: coverage within binomial noise of 0.95.
    rho, n, repeats = 0.5, 300, 200
    generator = np.random.default_rng(11)
    covered = {"pearson": 0, "spearman": 0, "mi": 0}
    rho_s = 6 / math.pi * math.asin(rho / 2)
    true_mi = -0.5 * math.log(1 - rho**2)
    for _ in range(repeats):
        sample = generator.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
        table = latent_feature_correlation(
            sample[:, :1], pd.DataFrame({"f": sample[:, 1]}), n_boot=100, seed=int(generator.integers(1 << 30))
        )
        p, s, mi = (lookup(table, 0, "f", method) for method in ("pearson", "spearman", "mi"))
        covered["pearson"] += p["ci_low"] < rho < p["ci_high"]
        covered["spearman"] += s["ci_low"] < rho_s < s["ci_high"]
        covered["mi"] += mi["ci_low"] < true_mi < mi["ci_high"]
    for method, count in covered.items():
        assert 0.90 <= count / repeats <= 0.995, method


def test_values_match_scipy(rng):
    x = rng.standard_normal(300)
    y = x + rng.standard_normal(300)
    table = latent_feature_correlation(x, pd.DataFrame({"f": y}), methods=("pearson", "spearman"))
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    assert lookup(table, 0, "f", "pearson")["value"] == pytest.approx(pearson.statistic)
    assert lookup(table, 0, "f", "pearson")["p_value"] == pytest.approx(pearson.pvalue, rel=1e-6)
    assert lookup(table, 0, "f", "spearman")["value"] == pytest.approx(spearman.statistic)
    assert lookup(table, 0, "f", "spearman")["p_value"] == pytest.approx(spearman.pvalue, rel=1e-6)
    low, high = pearson.confidence_interval(0.95)
    assert lookup(table, 0, "f", "pearson")["ci_low"] == pytest.approx(low)
    assert lookup(table, 0, "f", "pearson")["ci_high"] == pytest.approx(high)


def test_missing_rows_are_dropped_per_pair(morphology):
    Z, F = morphology
    F = F.copy()
    F.loc[::4, "morph_area"] = np.nan
    F.loc[1, "morph_colour"] = np.inf
    Z = Z.copy()
    Z[2, 1] = np.nan
    table = latent_feature_correlation(Z, F, n_boot=20)
    n_rows = len(F)
    assert lookup(table, 0, "morph_area", "spearman")["n"] == n_rows - n_rows // 4
    assert lookup(table, 0, "morph_area", "spearman")["value"] == pytest.approx(1.0)
    assert lookup(table, 0, "morph_colour", "pearson")["n"] == n_rows - 1
    assert lookup(table, 1, "morph_colour", "pearson")["n"] == n_rows - 2
    assert lookup(table, 2, "morph_angle", "mi")["n"] == n_rows
    assert table["value"].notna().all()


def test_constant_and_empty_columns_give_nan_without_warnings(morphology):
    Z, F = morphology
    F = F.assign(morph_flat=3.0, morph_failed=np.nan, morph_note="ok", morph_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = latent_feature_correlation(Z, F, n_boot=20)
    for feature in ("morph_flat", "morph_failed", "morph_ok"):
        rows = table[table["feature"] == feature]
        assert len(rows) == 3 * 3
        assert rows[["value", "ci_low", "ci_high", "p_value", "q_value"]].isna().all().all()
    assert lookup(table, 0, "morph_failed", "pearson")["n"] == 0
    assert table.attrs["skipped_features"] == ["morph_note"]


def test_deterministic_and_seeded(morphology):
    Z, F = morphology
    first = latent_feature_correlation(Z, F, n_boot=30, seed=1)
    pd.testing.assert_frame_equal(first, latent_feature_correlation(Z, F, n_boot=30, seed=1))
    other = latent_feature_correlation(Z, F, n_boot=30, seed=2)
    mi = first["method"] == "mi"
    assert not np.allclose(first.loc[mi, "ci_low"], other.loc[mi, "ci_low"])
    # A pair's interval does not depend on which other columns are in the table.
    alone = latent_feature_correlation(Z, F[["morph_area", "morph_colour"]], n_boot=30, seed=1)
    assert lookup(alone, 1, "morph_colour", "mi")["ci_low"] == lookup(first, 1, "morph_colour", "mi")["ci_low"]


def test_q_values_are_benjamini_hochberg(morphology):
    Z, F = morphology
    table = latent_feature_correlation(Z, F, methods=("pearson",))
    expected = stats.false_discovery_control(table["p_value"])
    np.testing.assert_allclose(table["q_value"], expected)


def test_best_matches(morphology):
    Z, F = morphology
    table = latent_feature_correlation(Z, F, dim_names=["a", "b", "c"], n_boot=20)
    top = best_matches(table, method="spearman", top=2)
    assert list(top.columns) == ["dim", "dim_name", "rank", "feature", "value", "ci_low", "ci_high", "p_value", "q_value"]
    assert len(top) == 6
    first = top[(top["dim"] == 0) & (top["rank"] == 1)].iloc[0]
    assert first["feature"] == "morph_area" and first["dim_name"] == "a"
    assert first["value"] == pytest.approx(1.0)
    by_mi = best_matches(table, method="mi", top=1)
    assert by_mi.loc[by_mi["dim"] == 2, "feature"].item() == "morph_angle"
    with pytest.raises(DrlError, match="kendall"):
        best_matches(table, method="kendall")


def test_invalid_input_raises_user_error(morphology):
    Z, F = morphology
    with pytest.raises(DrlError, match="rows"):
        latent_feature_correlation(Z[:-1], F)
    with pytest.raises(DrlError, match="dim_names"):
        latent_feature_correlation(Z, F, dim_names=["a"])
    with pytest.raises(DrlError, match="method"):
        latent_feature_correlation(Z, F, methods=("kendall",))
    with pytest.raises(DrlError, match="DataFrame"):
        latent_feature_correlation(Z, F.to_numpy())


@pytest.mark.slow
def test_analysis_size_table_is_complete():
    # The time this takes is measured in benchmarks/bench_cores.py, not asserted here.
    generator = np.random.default_rng(0)
    n = 2000
    Z = generator.standard_normal((n, 10))
    F = pd.DataFrame({f"morph_{i}": generator.standard_normal(n) for i in range(25)})
    F["morph_0"] = Z[:, 3] + 0.1 * generator.standard_normal(n)  # one strong pair
    table = latent_feature_correlation(Z, F, n_boot=200)
    assert len(table) == 10 * 25 * 3 and table["n"].eq(n).all()
    assert table[["value", "ci_low", "ci_high", "q_value"]].notna().all().all()
    strong = table[(table.method == "spearman") & (table.dim == 3) & (table.feature == "morph_0")]
    assert strong["value"].item() > 0.9 and strong["q_value"].item() < 1e-6
    null = table[(table.method == "spearman") & ~((table.dim == 3) & (table.feature == "morph_0"))]
    assert (null["value"].abs() < 0.12).all()
