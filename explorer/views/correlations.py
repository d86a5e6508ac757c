"""Correlations: latent dims x morphology features; click a cell to see the pair and its images."""

from __future__ import annotations

import streamlit as st

from drlcore.data import rundir
from drlcore.analysis.naming import axis_help, axis_label
from explorer.figures import (DISPLAY_MAX_POINTS, correlated_features, feature_label,
                              heatmap_features, pair_scatter, run_heatmap)
from explorer.report import ReportSection, axes_section, build_report
from explorer.ui import (cached_figure, csv_download, image_grid, object_detail, report_download,
                         require_run, selected_rows_from_event, show_chart)

METHODS = {"pearson": "Pearson r", "spearman": "Spearman ρ", "mi": "Mutual information"}

run = require_run()
st.title("Correlations")
corr = run.correlations
if corr is None or corr.empty:
    st.info(f"This run has no {rundir.CORRELATIONS}: run `drl analyze` on it.")
    st.stop()
df = run.objects
names = run.dim_names
features = correlated_features(corr, df.columns)
methods = [m for m in METHODS if m in set(corr["method"])]
if st.session_state["corr.method"] not in methods:
    st.session_state["corr.method"] = methods[0]
if st.session_state["corr.feature"] not in features:
    st.session_state["corr.feature"] = features[0] if features else None
if st.session_state["corr.dim"] >= len(names):
    st.session_state["corr.dim"] = 0


def _on_cell_click() -> None:
    """A click on the heatmap picks the pair shown below (the selectboxes follow)."""
    event = st.session_state.get("corr.heatmap") or {}
    points = (event.get("selection") or {}).get("points") or []
    if points:
        custom = points[0].get("customdata")
        if custom is not None and len(custom) == 2:
            feature, dim = custom[0], int(custom[1])
            if feature in features:
                st.session_state["corr.feature"] = feature
                st.session_state["corr.dim"] = dim
                st.session_state["corr.selected"] = []


st.segmented_control("Measure", methods, key="corr.method", format_func=METHODS.get)
method = st.session_state["corr.method"] or methods[0]
st.caption("Rows: latent axes, named from this run's own data and ordered by the family they follow; "
           "columns: handcrafted morphology features grouped by family. Click a cell to see that pair.")
st.toggle("Cluster axes and features (hierarchical)", key="corr.cluster",
          help="Orders axes, and features within each family, by average-linkage clustering of "
               "their correlation profiles instead of by family.")
clustered = bool(st.session_state.get("corr.cluster"))
shown = heatmap_features(features)
every = False
if len(shown) < len(features):
    every = st.toggle(f"Every per-channel measurement ({len(features)} columns, not "
                      f"{len(shown)})", key="corr.every",
                      help="By default the heatmap shows, per channel, the integrated and mean "
                           "intensity and texture over the cell and DNA content over the "
                           "nucleus; this adds every compartment (nucleus, cytoplasm) and "
                           "measure (std, quartiles, MAD, mass displacement, background).")
    shown = heatmap_features(features, every=every)
heat = cached_figure(run, "correlation heatmap", (method, clustered, every), lambda: run_heatmap(
    corr, df.columns, names, run.axes, method, cluster=clustered, every=every))
show_chart(heat, key="corr.heatmap", filename=f"{run.name}-correlations-{method}", on_select=_on_cell_click,
           selection_mode=("points",))

pick = st.columns(2)
pick[0].selectbox("Latent dimension", list(range(len(names))), key="corr.dim", format_func=lambda j: names[j])
pick[1].selectbox("Morphology feature", features, key="corr.feature", format_func=feature_label)
dim, feature = st.session_state["corr.dim"], st.session_state["corr.feature"]
if dim < len(run.axes):
    st.markdown(f"**Axis:** {axis_label(run.axes[dim])}", help=axis_help(run.axes[dim]))
    st.caption(axis_help(run.axes[dim]))
zcol = run.latent_columns[dim]
row = corr[(corr["dim"] == dim) & (corr["feature"] == feature) & (corr["method"] == method)]
if len(row):
    r = row.iloc[0]
    ci = f" (95% CI {r['ci_low']:.2f} to {r['ci_high']:.2f})" if "ci_low" in r and r["ci_low"] == r["ci_low"] else ""
    st.markdown(f"**{METHODS[method]}** between *{names[dim]}* and *{feature_label(feature)}*: "
                f"**{r['value']:.3f}**{ci}")


def _on_points_selected() -> None:
    st.session_state["corr.selected"] = selected_rows_from_event("corr.scatter")


selected_now = tuple(st.session_state["corr.selected"] or ())
scatter = cached_figure(run, "pair scatter", (zcol, feature, selected_now), lambda: pair_scatter(
    df, zcol, feature, names[dim], feature_label(feature), selected_rows=list(selected_now)))
show_chart(scatter, key="corr.scatter", filename=f"{run.name}-{zcol}-vs-{feature}", on_select=_on_points_selected)
st.caption("Drag a box or lasso around points to see their images."
           + (f" Above {DISPLAY_MAX_POINTS:,} objects the plot draws a seeded random sample (selected "
              "objects always among them); the correlation values use every object the analysis "
              "measured." if len(df) > DISPLAY_MAX_POINTS else ""))

selected = st.session_state["corr.selected"]
object_detail(run, st.session_state.get("corr.focus"), "corr.focus")
if selected:
    sel = df[df["row"].isin(selected)]
    st.subheader(f"{len(sel)} selected objects")
    image_grid(run, sel, key_prefix="corr.gallery", focus_key="corr.focus")
    csv_download(sel[["row", "path", "label", zcol, feature]], f"{run.name}-selection.csv", key="corr.sel_csv")

table = corr[corr["method"] == method].pivot_table(index="dim", columns="feature", values="value", aggfunc="first")
table = table.rename(columns=feature_label).rename_axis(columns=None)
table.insert(0, "dimension", [names[d] if d < len(names) else f"z{d}" for d in table.index])
if run.axes:
    table.insert(1, "about", [axis_help(run.axes[d]) if d < len(run.axes) else "" for d in table.index])
exports = st.columns(2)
with exports[0]:
    csv_download(corr, f"{run.name}-correlations.csv", key="corr.csv", label="Download all correlations (CSV)")
with exports[1]:
    report_download(lambda: build_report(
        f"Correlations — {run.name}",
        [ReportSection(f"{METHODS[method]}: latent dimensions x morphology", figures=[heat], table=table),
         ReportSection(f"{names[dim]} vs {feature_label(feature)}", figures=[scatter]),
         *[sec for sec in (axes_section(run.axes),) if sec is not None]],
        {**run.provenance(), "view": "correlations", "method": method}),
        f"{run.name}-correlations.html", key="corr.report")
