"""Figure and report builders, without Streamlit."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run  # noqa: E402

from drlcore.data import rundir  # noqa: E402
from explorer import figures  # noqa: E402
from explorer.report import ReportSection, build_report  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"), "cells", n=60)


@pytest.fixture(scope="module")
def objects(run_dir):
    return pd.read_parquet(run_dir / "objects.parquet")


@pytest.fixture(scope="module")
def corr(run_dir):
    return pd.read_parquet(run_dir / "correlations.parquet")


def test_plot_config_downloads_svg_or_png_in_the_browser():
    assert figures.plot_config("svg")["toImageButtonOptions"]["format"] == "svg"
    assert figures.plot_config("png")["toImageButtonOptions"]["format"] == "png"
    with pytest.raises(ValueError):
        figures.plot_config("jpeg")


def test_correlation_heatmap_is_dims_by_features_with_diverging_scale(corr):
    fig = figures.correlation_heatmap(corr, "pearson", [f"z{j}" for j in range(6)], grouped=False)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (6, 4)
    assert (heat.zmin, heat.zmax, heat.zmid) == (-1, 1, 0)
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]
    # Cell (dim 0, area) carries its identity for the click handler and its stored value.
    cell = np.asarray(heat.customdata)[0, 0]
    assert list(cell) == ["morph_area", "0"]
    # The clickable overlay: one marker per cell, carrying the same (feature, dim) pair.
    cells = fig.data[1]
    assert len(cells.x) == 6 * 4 and list(cells.customdata[5]) == ["morph_eccentricity", "1"]
    assert (cells.x[5], cells.y[5]) == ("eccentricity", "z1")
    expected = corr[(corr.method == "pearson") & (corr.dim == 0) & (corr.feature == "morph_area")].value.item()
    assert np.asarray(heat.z)[0, 0] == pytest.approx(expected)
    mi = figures.correlation_heatmap(corr, "mi").data[0]
    assert mi.zmin == 0 and mi.zmid is None
    assert fig.layout.font.size >= 14


def _family_table():
    """Hand-built pearson table: z0 follows hue, z1 area, z2 eccentricity, z3 nothing."""
    strong = {(0, "morph_hue"): 0.8, (1, "morph_area"): 0.9, (1, "morph_perimeter"): 0.7,
              (2, "morph_eccentricity"): -0.6, (3, "morph_glcm_contrast"): 0.1}
    features = ["morph_area", "morph_eccentricity", "morph_glcm_contrast", "morph_hue",
                "morph_intensity_mean", "morph_perimeter"]
    rows = [{"dim": d, "dim_name": f"z{d}", "feature": f, "method": "pearson",
             "value": strong.get((d, f), 0.05 * (d - 1.5)), "ci_low": -1, "ci_high": 1,
             "p_value": 0.5, "q_value": 0.5, "n": 50} for d in range(4) for f in features]
    return pd.DataFrame(rows)


def test_correlation_heatmap_groups_features_by_family_and_rows_by_best_family():
    table = _family_table()
    fig = figures.correlation_heatmap(table, "pearson", [f"z{j}" for j in range(4)])
    heat = fig.data[0]
    assert list(heat.x) == ["area", "perimeter", "eccentricity", "hue", "intensity mean",
                            "glcm contrast"]
    # rows: size axis, shape axis, colour axis, then the one with no family to speak of
    assert list(heat.y)[:3] == ["z1", "z2", "z0"]
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["<b>size</b>", "<b>shape</b>", "<b>colour</b>", "<b>intensity</b>",
                      "<b>texture</b>"]
    assert fig.layout.annotations[0].x == pytest.approx(0.5)  # centred over area, perimeter
    assert len(fig.layout.shapes) == 4  # a rule between each pair of families
    # the click overlay follows the reordering
    assert list(fig.data[1].customdata[0]) == ["morph_area", "1"]
    # naming records take precedence: an unnamed axis goes last even if it has a strong cell
    axes = [{"dim": 0, "status": "unnamed"}, {"dim": 1, "status": "named", "family": "size", "r": 0.9},
            {"dim": 2, "status": "named", "family": "shape", "r": -0.6},
            {"dim": 3, "status": "inactive"}]
    rows, _, _ = figures.heatmap_order(
        table.pivot_table(index="dim", columns="feature", values="value"), axes)
    assert rows == [1, 2, 0, 3]


def test_correlation_heatmap_cluster_keeps_families_together():
    table = _family_table()
    grid = table.pivot_table(index="dim", columns="feature", values="value")
    rows, cols, spans = figures.heatmap_order(grid, cluster=True)
    assert sorted(rows) == [0, 1, 2, 3] and sorted(cols) == sorted(grid.columns)
    assert set(cols[:2]) == {"morph_area", "morph_perimeter"}
    assert [s[0] for s in spans] == ["size", "shape", "colour", "intensity", "texture"]
    fig = figures.correlation_heatmap(table, "pearson", cluster=True)
    assert np.asarray(fig.data[0].z).shape == (4, 6)


def test_latent_map_uses_webgl_okabe_ito_and_row_customdata(objects):
    fig = figures.latent_map(objects, "umap_x", "umap_y", "label", continuous=False)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert [t.name for t in fig.data] == ["lymphocyte", "neutrophil", "platelet"]
    assert [t.marker.color for t in fig.data] == list(figures.OKABE_ITO[:3])
    rows = np.concatenate([np.asarray(t.customdata)[:, 0].astype(int) for t in fig.data])
    assert sorted(rows) == list(range(len(objects)))


def test_latent_map_continuous_highlight_selection_and_background(objects):
    flagged = (objects["anomaly_score"] > objects["anomaly_score"].quantile(0.9)).to_numpy()
    fig = figures.latent_map(objects, "pca_x", "pca_y", "anomaly_score", continuous=True, highlight=flagged,
                             selected_rows=[0, 5], background=objects.head(10), background_name="ref")
    names = [t.name for t in fig.data]
    assert names[0] == "ref" and names[-1] == "flagged as anomalous"
    assert len(fig.data[-1].x) == flagged.sum()
    main = fig.data[1]
    assert main.marker.colorscale[0][1] != main.marker.colorscale[-1][1]
    assert list(main.selectedpoints) == [0, 5]


def test_latent_map_draws_100k_points():
    # The time this takes is measured in benchmarks/bench_cores.py, not asserted here.
    rng = np.random.default_rng(0)
    n = 100_000
    df = pd.DataFrame({"row": np.arange(n), "path": [f"img_{i}.png" for i in range(n)],
                       "label": rng.choice(list("abcdefghij"), n), "umap_x": rng.normal(size=n),
                       "umap_y": rng.normal(size=n), "z_mean_0": rng.normal(size=n)})
    fig = figures.latent_map(df, "umap_x", "umap_y", "z_mean_0", continuous=True)
    assert len(fig.data[0].x) == n
    np.testing.assert_array_equal(fig.data[0].x, df["umap_x"].to_numpy())


def test_pair_scatter_skips_missing_values(objects):
    fig = figures.pair_scatter(objects, "z_mean_0", "morph_solidity", "z0", "solidity")
    assert sum(len(t.x) for t in fig.data) == objects["morph_solidity"].notna().sum()


def test_effect_size_chart_orders_largest_first():
    effects = pd.DataFrame({"column": ["a", "b", "c"], "cohens_d": [2.0, -1.0, np.nan],
                            "mean_selected": [1, 2, 3], "mean_rest": [0, 3, 3], "abs_d": [2.0, 1.0, np.nan]})
    fig = figures.effect_size_chart(effects)
    assert list(fig.data[0].y) == ["b", "a"]  # plotly draws the last bar on top


def test_factor_heatmap_and_metric_bars():
    fig = figures.factor_heatmap(np.eye(2), ["z0: size", "z1"], ["size", "shape"])
    assert np.asarray(fig.data[0].z).shape == (2, 2)
    bars = figures.metric_bars({"MIG": 0.4, "OMES": 0.6})
    assert list(bars.data[0].y) == [0.4, 0.6]


def test_report_is_one_offline_file_with_provenance(objects, run_dir):
    fig = figures.latent_map(objects, "umap_x", "umap_y", "label", continuous=False)
    thumb = rundir.read_thumb(run_dir, str(objects["sha256"].iloc[0]))
    html = build_report("Class map — cells", [
        ReportSection("Map", figures=[fig, figures.metric_bars({"MIG": 0.4})]),
        ReportSection("Images", images=[(thumb, "lymphocyte · <img_1>")], table=objects[["path", "label"]].head(3)),
    ], {"model hash": "feedbeef", "data fingerprint": "abc123", "params": {"k": 10}})
    plotly_js = get_plotlyjs()
    assert html.count(plotly_js) == 1  # inlined once, shared by every figure
    rest = html.replace(plotly_js, "")
    assert "Plotly.newPlot" in rest and rest.count("Plotly.newPlot('drl-fig-") == 2
    # Nothing outside the inlined library points at the network: no CDN, no remote images.
    assert not re.search(r"https?://", rest), re.findall(r"https?://\S{0,40}", rest)[:3]
    assert not re.search(r"<script[^>]+src=", html)
    assert "data:image/jpeg;base64," in rest
    assert "feedbeef" in rest and "abc123" in rest and "provenance" in rest.lower()
    assert "&lt;img_1&gt;" in rest  # captions are escaped
    assert "format:'svg'" in rest and "format:'png'" in rest
