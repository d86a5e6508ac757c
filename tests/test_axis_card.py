"""Default anchors, free-axis count, anchored-axis naming and the axis card (issue 19): known
answers on synthetic data, the figure builders without Streamlit, and the Latent axes page."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drlcore.analysis import axis_card
from drlcore.analysis.naming import name_axes

sys.path.insert(0, str(Path(__file__).parent))


def _features(n=400, d=40, seed=0):
    """Raw features with a known structure: column 0..2 carry three latent variables."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, 3))
    X = rng.normal(scale=0.3, size=(n, d))
    # Each hidden variable is repeated over a different number of columns, so after per-column
    # standardisation the three directions still have distinct variances (10, 5, 2) and the
    # principal axes align with them.
    X[:, 0:10] += hidden[:, [0]]
    X[:, 10:15] += hidden[:, [1]]
    X[:, 15:17] += hidden[:, [2]]
    return X, hidden, rng


def test_select_anchors_keeps_readable_family_and_drops_unreadable():
    X, hidden, rng = _features()
    morph = pd.DataFrame({
        # size is read by the features (a monotone function of a hidden variable) ...
        "morph_area": np.exp(hidden[:, 0]) * 100,
        "morph_perimeter": np.exp(hidden[:, 0] / 2) * 40 + rng.normal(scale=20, size=len(X)),
        # ... shape is pure noise the features know nothing about.
        "morph_eccentricity": rng.uniform(size=len(X)),
        "morph_solidity": rng.uniform(size=len(X)),
        "morph_ok": True,
    })
    sel = axis_card.select_anchors(X, morph)
    assert sel["anchors"] == ["morph_area"]
    assert sel["families"]["size"]["anchored"] and sel["families"]["size"]["rho"] > 0.9
    assert not sel["families"]["shape"]["anchored"]
    assert sel["families"]["shape"]["rho"] < 0.5
    assert "< 0.5" in sel["families"]["shape"]["why"]


def test_unmeasured_rows_are_left_out_of_the_readout():
    X, hidden, _ = _features()
    area = hidden[:, 0].copy()
    ok = np.ones(len(X), bool)
    ok[::7] = False
    area[~ok] = 1e6  # a failed measurement must not count, whatever value it holds
    morph = pd.DataFrame({"morph_area": area, "morph_ok": ok})
    read = axis_card.readability(X, morph)
    assert read["morph_area"]["rho"] > 0.95 and read["morph_area"]["n"] == ok.sum()


def test_anchor_groups_split_intensity_by_channel_and_take_new_families():
    cols = ["morph_area", "morph_ch0_intensity_mean", "morph_ch1_intensity_mean",
            "morph_intensity_mean", "morph_glcm_contrast", "morph_orientation",
            "morph_DNA_nucleus_integrated", "morph_DNA_cell_mean"]

    def family(c):  # a stand-in for an extended naming.feature_family (e.g. a DNA family)
        if "integrated" in c:
            return "dna"
        if c.endswith("_cell_mean"):
            return "intensity"
        from drlcore.analysis.naming import feature_family
        return feature_family(c)

    # Per-channel means alone (no per-compartment columns): one group per channel.
    groups = axis_card.anchor_groups([c for c in cols if "_DNA_" not in c], family)
    assert groups["size"] == ["morph_area"]
    assert groups["intensity (ch0)"] == ["morph_ch0_intensity_mean"]
    assert groups["intensity (ch1)"] == ["morph_ch1_intensity_mean"]
    assert groups["intensity"] == ["morph_intensity_mean"]
    # With per-compartment columns those means are repeats, and the DNA channel's intensity
    # is the DNA-content family's axis, not a second one.
    groups = axis_card.anchor_groups(cols, family)
    assert "intensity (ch0)" not in groups and "intensity (DNA)" not in groups
    assert groups["dna"] == ["morph_DNA_nucleus_integrated"]
    assert not any(g.startswith("texture") for g in groups)  # excluded family
    assert "morph_orientation" not in sum(groups.values(), [])


def test_max_anchors_keeps_the_best_read():
    X, hidden, _ = _features()
    noise = np.random.default_rng(5).normal(size=(len(X), 2))
    morph = pd.DataFrame({"morph_area": hidden[:, 0],
                          "morph_eccentricity": hidden[:, 1] + 1.2 * noise[:, 0],
                          "morph_intensity_mean": hidden[:, 2] + 0.4 * noise[:, 1],
                          "morph_ok": True})
    sel = axis_card.select_anchors(X, morph, max_anchors=2)
    assert sel["families"]["shape"]["rho"] > 0.5  # readable, but the weakest of three
    assert sel["anchors"] == ["morph_area", "morph_intensity_mean"]
    assert "more than 2" in sel["families"]["shape"]["why"]


@pytest.mark.parametrize("k", [3, 12])
def test_free_axis_count_is_the_effective_dimension(k):
    rng = np.random.default_rng(1)
    n, d = 600, 60
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0].T  # k orthonormal directions
    X = rng.normal(size=(n, k)) @ basis * 5 + rng.normal(scale=0.01, size=(n, d))
    # Standardising each column keeps k equal directions only roughly; the count must be close.
    res = axis_card.free_axis_count(X, min_free=1, max_free=64)
    assert abs(res["n_free"] - k) <= max(1, k // 4)
    assert res["explained_variance"] > 0.9


def test_free_axis_count_is_clipped():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 80))  # isotropic: effective dimension ~ 80
    assert axis_card.free_axis_count(X, min_free=4, max_free=16)["n_free"] == 16
    line = np.outer(rng.normal(size=300), rng.normal(size=80)) + 1e-6 * rng.normal(size=(300, 80))
    assert axis_card.free_axis_count(line, min_free=4, max_free=16)["n_free"] == 4


def test_axis_card_known_answers():
    X, hidden, rng = _features(n=500)
    measure = hidden[:, 0]
    morph = pd.DataFrame({"morph_area": measure, "morph_eccentricity": hidden[:, 2],
                          "morph_ok": True})
    Z = np.column_stack([measure, rng.normal(size=len(X)), -hidden[:, 2]])
    axes = [{"name": "z0: area", "status": "named", "feature": "morph_area"},
            {"name": "z1 (unnamed)", "status": "unnamed", "feature": "morph_area"},
            {"name": "z2: shape", "status": "named", "feature": "morph_eccentricity"}]
    card = axis_card.axis_card(Z, X, morph, axes, anchors=("morph_area",))
    a, noise, neg = card
    assert a["kind"] == "anchored" and noise["kind"] == "free"
    assert a["rho"] == pytest.approx(1.0) and a["ci_low"] > 0.99
    assert abs(noise["rho"]) < 0.15 and noise["ci_low"] < 0 < noise["ci_high"]
    assert neg["rho"] == pytest.approx(-1.0)
    # The measure lies along a direction of large variance: a principal axis and the ridge
    # read it almost perfectly.
    assert a["pca_rho"] > 0.95 and a["ceiling_rho"] > 0.95
    assert a["of_ceiling"] == pytest.approx(1 / a["ceiling_rho"])
    # Rows restrict every number to the held-out images.
    held = np.arange(0, 500, 5)
    part = axis_card.axis_card(Z, X, morph, axes, anchors=("morph_area",), rows=held,
                               rows_label="100 held out")
    assert part[0]["n"] == 100 and part[0]["rows"] == "100 held out"


def test_axis_card_pca_baseline_below_ceiling_for_a_mixed_measure():
    """A measure spread over many small directions: no single PC follows it, the ridge does."""
    rng = np.random.default_rng(3)
    n, d = 800, 30
    X = rng.normal(size=(n, d)) * np.linspace(3, 1, d)
    measure = X[:, 10:30].sum(1) / np.linspace(3, 1, d)[10:30].mean()
    morph = pd.DataFrame({"morph_area": measure, "morph_ok": True})
    card = axis_card.axis_card(measure[:, None], X, morph, [{"name": "z0", "status": "named",
                                                             "feature": "morph_area"}])
    assert card[0]["ceiling_rho"] > 0.95
    assert card[0]["pca_rho"] < 0.6
    assert card[0]["beats_pca"] is True


def test_card_order_anchored_first_then_strongest_free():
    card = [{"dim": 0, "kind": "free", "status": "unnamed", "rho": 0.2},
            {"dim": 1, "kind": "anchored", "status": "named", "rho": 0.5},
            {"dim": 2, "kind": "free", "status": "named", "rho": -0.7},
            {"dim": 3, "kind": "free", "status": "named", "rho": 0.6},
            {"dim": 4, "kind": "free", "status": "unnamed", "rho": None}]
    assert [r["dim"] for r in axis_card.card_order(card)] == [1, 2, 3, 0, 4]


def _corr(rows):
    return pd.DataFrame([{"dim": d, "feature": f, "method": "spearman", "value": v,
                          "ci_low": v - 0.05, "ci_high": v + 0.05, "p_value": 1e-6,
                          "q_value": 1e-5, "n": 300} for d, f, v in rows])


def test_anchored_axis_is_named_after_its_anchor():
    corr = _corr([(0, "morph_area", 0.85), (0, "morph_intensity_mean", 0.9),
                  (1, "morph_major_axis", 0.7), (2, "morph_area", 0.6)])
    axes = name_axes(corr, ["z0", "z1", "z2"],
                     source_factors=["anchor:area", None, None])
    assert axes[0]["status"] == "named" and axes[0]["name"] == "z0: area"
    assert axes[0]["feature"] == "morph_area" and axes[0]["r"] == pytest.approx(0.85)
    assert axes[0]["provenance"].startswith("anchored to area")
    # free axes take their family as before; the anchored one does not claim "size"
    assert axes[1]["name"] == "z1: size" and axes[2]["name"] == "z2: size (2)"


def test_anchored_axis_unnamed_when_its_anchor_is_not_supported():
    corr = _corr([(0, "morph_area", 0.3), (0, "morph_intensity_mean", 0.9)])
    axes = name_axes(corr, ["z0"], source_factors=["anchor:morph_area"])
    assert axes[0]["status"] == "unnamed"
    assert "area" in axes[0]["reason"] and "intensity" not in axes[0]["reason"]


def _toy_card():
    return [{"dim": 0, "name": "z0: area", "kind": "anchored", "status": "named",
             "feature": "morph_area", "rows": "20 held out", "rho": 0.9, "ci_low": 0.85,
             "ci_high": 0.94, "n": 20, "pca_rho": 0.5, "pca_axis": 0, "ceiling_rho": 0.92,
             "of_ceiling": 0.98, "beats_pca": True},
            {"dim": 1, "name": "z1 (unnamed)", "kind": "free", "status": "unnamed",
             "feature": "morph_eccentricity", "rows": "20 held out", "rho": -0.1,
             "ci_low": -0.5, "ci_high": 0.3, "n": 20, "pca_rho": 0.2, "pca_axis": 3,
             "ceiling_rho": 0.4, "of_ceiling": 0.25, "beats_pca": False},
            {"dim": 2, "name": "z2", "kind": "free", "status": "unnamed", "feature": None,
             "rho": None}]


def test_axis_card_chart_plotly():
    from explorer.figures import axis_card_chart

    fig = axis_card_chart(_toy_card())
    ceiling, pca, axis = fig.data
    assert list(axis.y) == ["z0: area · anchored to area",
                            "z1 (unnamed) · free, follows eccentricity"]
    assert list(axis.x) == pytest.approx([0.9, 0.1])
    assert list(pca.x) == pytest.approx([0.5, 0.2]) and list(ceiling.x) == pytest.approx([0.92, 0.4])
    # CI of an axis whose interval crosses 0: from 0 to the larger |bound|
    assert list(axis.error_x.arrayminus) == pytest.approx([0.05, 0.1])
    assert list(axis.error_x.array) == pytest.approx([0.04, 0.4])
    assert "no axis" in axis_card_chart([]).layout.annotations[0].text


def test_axis_card_matplotlib(tmp_path):
    from drlcore.errors import DrlError
    from drlcore.runs.slides import draw_axis_card

    fig = draw_axis_card(_toy_card())
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["z0: area · anchored to area", "z1 (unnamed) · free, follows eccentricity"]
    fig.savefig(tmp_path / "card.png")
    assert (tmp_path / "card.png").stat().st_size > 1000
    with pytest.raises(DrlError):
        draw_axis_card([])


def test_latent_axes_page_shows_the_card(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_fixtures import make_run

    make_run(tmp_path / "runs", "cells", n=90)
    monkeypatch.setenv("DRL_RUNS_DIR", str(tmp_path / "runs"))
    app = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
    at = AppTest.from_file(app, default_timeout=60)
    at.run()
    at.switch_page("views/traversals.py").run()
    assert not at.exception
    assert any("Axis card" in m.value for m in at.markdown)
    tables = [d.value for d in at.dataframe if "ceiling |ρ|" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert list(table["axis"])[:1] and {"ρ", "best PCA |ρ|", "ceiling |ρ|"} <= set(table.columns)
    assert len(table) == 6


def test_rank_normal_scores_tame_a_skewed_anchor():
    from scipy import stats

    from drlcore.disentangle.transfer import rank_normal_scores

    rng = np.random.default_rng(4)
    area = np.exp(rng.normal(scale=1.5, size=2000))  # heavily right-skewed, like plankton sizes
    z = rank_normal_scores(area, area)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.05
    assert abs(stats.skew(z)) < 0.05 < abs(stats.skew(area))
    assert stats.spearmanr(z, area).statistic == pytest.approx(1.0)
    # values outside the reference map to the extremes, in order
    out = rank_normal_scores(area, np.array([area.min() / 2, np.median(area), area.max() * 2]))
    assert out[0] < -3 < 3 < out[2] and abs(out[1]) < 0.01


def test_colour_is_not_anchored_on_grey_images_nor_composites():
    X, hidden, rng = _features()
    grey = pd.DataFrame({"morph_mean_r": hidden[:, 0], "morph_saturation": np.full(len(X), 0.01),
                         "morph_value": hidden[:, 0] + 0.01 * rng.normal(size=len(X)),
                         "morph_ok": True})
    sel = axis_card.select_anchors(X, grey)
    assert sel["anchors"] == ["morph_value"]
    assert "grey" in sel["families"]["colour"]["why"]
    fluo = pd.DataFrame({"morph_ch0_intensity_mean": hidden[:, 0],
                         "morph_ch1_intensity_mean": hidden[:, 1],
                         "morph_intensity_mean": hidden[:, 0] + hidden[:, 1],
                         "morph_mean_r": hidden[:, 2], "morph_saturation": 0.5, "morph_ok": True})
    sel = axis_card.select_anchors(X, fluo)
    assert set(sel["anchors"]) == {"morph_ch0_intensity_mean", "morph_ch1_intensity_mean"}
    assert "composite" in sel["families"]["colour"]["why"]
    assert "composite" in sel["families"]["intensity"]["why"]


def test_unmeasured_channel_columns_do_not_hide_the_intensity():
    """Single-channel images carry empty per-channel columns: the composite rule must not fire."""
    X, hidden, _ = _features()
    morph = pd.DataFrame({"morph_value": hidden[:, 0], "morph_ch0_mean": np.nan,
                          "morph_ch1_mean": np.nan, "morph_ok": True})
    assert axis_card.select_anchors(X, morph)["anchors"] == ["morph_value"]


def test_anchor_groups_on_per_channel_measurements_give_one_dna_axis():
    """A fluorescence run measured per channel and compartment: the DNA channel gives one
    DNA-content group (not also an intensity group), and the older per-channel means
    (morph_ch<k>_<name>_mean) do not form groups of their own beside the new columns."""
    from drlcore.analysis.axis_card import anchor_groups

    columns = ["morph_area", "morph_eccentricity", "morph_ch0_BrightField_mean", "morph_ch1_DNA_mean",
               "morph_DNA_cell_integrated", "morph_DNA_nucleus_integrated", "morph_DNA_cell_mean",
               "morph_DNA_cytoplasm_integrated", "morph_BrightField_cell_mean",
               "morph_BrightField_cytoplasm_mad"]
    groups = anchor_groups(columns)
    assert "intensity (DNA)" not in groups
    assert set(groups["dna"]) >= {"morph_DNA_cell_integrated", "morph_DNA_nucleus_integrated"}
    assert not any(c.startswith("morph_ch") for cols in groups.values() for c in cols)
    assert set(groups["intensity (BrightField)"]) == {"morph_BrightField_cell_mean",
                                                      "morph_BrightField_cytoplasm_mad"}
    # Without per-compartment columns the per-channel means stay the candidates they were.
    old = anchor_groups(["morph_area", "morph_ch0_BrightField_mean", "morph_ch1_DNA_mean"])
    assert old["intensity (ch0)"] == ["morph_ch0_BrightField_mean"]
