"""Axis names from the run's own data: known answers on hand-built tables, and one setup where
the truth is known (latents built to follow area and hue) through the real correlation code."""

import numpy as np
import pandas as pd
import pytest

from drlcore.analysis import morphology
from drlcore.analysis.correlation import latent_feature_correlation
from drlcore.errors import DrlError
from drlcore.analysis.naming import (FAMILY_FEATURES, NamingConfig, axis_label, best_family_axes,
                            feature_family, name_axes)


def _table(rows):
    """rows: (dim, feature, value, q) -> a correlation table with a narrow CI around value."""
    return pd.DataFrame([{"dim": d, "dim_name": f"z{d}", "feature": f, "method": "spearman",
                          "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "p_value": q,
                          "q_value": q, "n": 100} for d, f, v, q in rows])


SOURCE = ["z0: scale", "z1: colour", "z2: texture", "z3: unassigned"]


def test_every_morphology_feature_but_orientation_has_a_family():
    for feature in morphology.FEATURE_NAMES:
        fam = feature_family(feature)
        assert (fam is None) == (feature == "morph_orientation"), feature
    assert feature_family("factor_scale") is None
    assert feature_family("morph_ch2_intensity_mean") == "intensity"
    assert feature_family("morph_ch0_mean") == feature_family("morph_ch1_dapi_mean") == "intensity"
    assert set(FAMILY_FEATURES["size"]) >= {"morph_area", "morph_perimeter", "morph_major_axis"}


def test_known_answer_named_unnamed_and_shared_family():
    corr = _table([
        (0, "morph_area", 0.55, 1e-6), (0, "morph_hue", 0.2, 0.01),
        (1, "morph_hue", -0.7, 1e-9), (1, "morph_area", 0.1, 0.3),
        (2, "morph_perimeter", 0.8, 1e-9),            # stronger size axis than z0
        (3, "morph_area", 0.31, 0.001),               # too weak
        (3, "morph_glcm_contrast", 0.6, 0.2),         # strong but not significant
    ])
    axes = name_axes(corr, SOURCE, source_factors=["scale", "colour", "texture", None])
    by = {a["dim"]: a for a in axes}
    assert by[2]["name"] == "z2: size" and by[2]["feature"] == "morph_perimeter"
    assert by[0]["name"] == "z0: size (2)" and by[0]["status"] == "named"
    assert by[1]["name"] == "z1: colour" and by[1]["r"] == pytest.approx(-0.7)
    assert by[1]["ci_low"] == pytest.approx(-0.75) and by[1]["q_value"] == pytest.approx(1e-9)
    assert by[3]["status"] == "unnamed" and by[3]["name"] == "z3 (unnamed)"
    assert by[3]["family"] is None
    # the strongest association is cited, even though it failed the significance test
    assert "glcm contrast ρ=0.60" in by[3]["reason"] and "q < 0.05" in by[3]["reason"]
    assert by[0]["provenance"] == "learned as scale on the synthetic source"
    assert by[3]["provenance"].startswith("no single factor")
    assert axis_label(by[1]) == "z1: colour — hue ρ=-0.70 [-0.75, -0.65]"
    assert axis_label(by[3]) == "z3 (unnamed)"


def test_threshold_is_a_parameter_and_inactive_wins():
    corr = _table([(0, "morph_area", 0.55, 1e-6), (1, "morph_hue", 0.9, 1e-9)])
    src = ["z0: scale", "z1: colour"]
    assert name_axes(corr, src)[0]["status"] == "named"
    assert name_axes(_table([(0, "morph_area", 0.45, 1e-6)]), src[:1])[0]["status"] == "unnamed"
    strict = name_axes(corr, src, config=NamingConfig(min_abs_r=0.6))
    assert strict[0]["status"] == "unnamed" and "|ρ| >= 0.6" in strict[0]["reason"]
    inactive = name_axes(corr, src, inactive=[1])
    assert inactive[1]["status"] == "inactive" and inactive[1]["name"] == "z1: inactive"
    assert "inactive" in inactive[1]["reason"]
    with pytest.raises(DrlError):
        NamingConfig(min_abs_r=0)
    with pytest.raises(DrlError):
        NamingConfig(method="mi")


def test_no_correlations_and_factor_columns_are_ignored():
    corr = _table([(0, "factor_scale", 0.99, 1e-12), (0, "morph_orientation", 0.9, 1e-9)])
    axes = name_axes(corr, ["z0: scale", "z1"])
    assert axes[0]["status"] == "unnamed" and "no morphology" in axes[0]["reason"]
    assert axes[1]["provenance"].startswith("no single factor")
    empty = name_axes(pd.DataFrame(columns=list(corr.columns)), ["z0: scale"])
    assert empty[0]["status"] == "unnamed"
    assert best_family_axes(pd.DataFrame(), empty) == {}


def test_known_truth_through_the_real_correlation_code():
    """z0 follows log(area), z1 follows hue, z2 is noise, z3 weakly follows area: the names must
    be size, colour, unnamed, and z3 must not steal 'size'."""
    rng = np.random.default_rng(0)
    n = 400
    area = rng.uniform(200, 5000, n)
    feats = pd.DataFrame({
        "morph_area": area,
        "morph_equivalent_diameter": 2 * np.sqrt(area / np.pi),
        "morph_hue": rng.uniform(180, 300, n),
        "morph_eccentricity": rng.uniform(0, 0.9, n),
        "morph_intensity_mean": rng.uniform(50, 200, n),
        "morph_glcm_contrast": rng.uniform(0, 10, n),
    })
    Z = np.column_stack([
        np.log(area) + rng.normal(0, 0.2, n),
        -(feats["morph_hue"] - 240) / 30 + rng.normal(0, 0.3, n),
        rng.normal(0, 1, n),
        0.15 * (np.log(area) - np.log(area).mean()) + rng.normal(0, 1, n),
    ])
    corr = latent_feature_correlation(Z, feats, dim_names=SOURCE, methods=("pearson", "spearman"))
    axes = name_axes(corr, SOURCE)
    assert [a["name"] for a in axes] == ["z0: size", "z1: colour", "z2 (unnamed)", "z3 (unnamed)"]
    assert axes[0]["r"] > 0.9 and axes[0]["ci_low"] < axes[0]["r"] < axes[0]["ci_high"]
    assert axes[1]["r"] < -0.8 and axes[1]["feature"] == "morph_hue"
    best = best_family_axes(corr, axes)
    assert best["size"]["dim"] == 0 and best["colour"]["dim"] == 1
    assert best["intensity"]["name"] in ("z2 (unnamed)", "z3 (unnamed)")


def test_axis_help_explains_names_and_reasons():
    corr = _table([(0, "morph_area", 0.55, 1e-6), (1, "morph_area", 0.2, 0.01)])
    a = name_axes(corr, ["z0: scale", "z1: colour"])
    from drlcore.analysis.naming import axis_help
    assert "area (size family), ρ = 0.55, 95% CI [0.50, 0.60]" in axis_help(a[0])
    assert "learned as scale on the synthetic source" in axis_help(a[0])
    assert axis_help(a[1]).startswith("Unnamed: no family") and "area ρ=0.20" in axis_help(a[1])


def test_the_run_headline_lists_named_axes_and_counts_the_rest():
    """A 36-axis run's console summary names its anchored axes and counts the others, rather
    than listing 32 '(unnamed)' entries."""
    from drlcore.analysis.analyze import _summary

    axes = ([{"dim": 0, "name": "z0: equivalent diameter", "status": "named"},
             {"dim": 1, "name": "z1: mean r", "status": "named"}]
            + [{"dim": j, "name": f"z{j} (unnamed)", "status": "unnamed"} for j in range(2, 35)]
            + [{"dim": 35, "name": "z35: inactive", "status": "inactive"}])
    corr = pd.DataFrame(columns=["dim", "feature", "r", "ci_low", "ci_high"])
    lines = _summary({}, {}, {}, corr, axes, [])["headline"]
    assert ("axes named from this data: 2 of 36 (z0: equivalent diameter, z1: mean r; "
            "33 unnamed; 1 inactive)") in lines
    lines = _summary({}, {}, {}, corr, axes[2:5], [])["headline"]
    assert "axes named from this data: 0 of 3 (3 unnamed)" in lines
