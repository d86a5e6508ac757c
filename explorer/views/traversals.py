"""Latent axes: for each dimension, real images along it, its name and its best morphology match."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.analysis.correlation import best_matches
from drlcore.analysis.naming import NamingConfig, axis_help, axis_label
from drlcore.analysis.traversal import traversal_indices, traversal_values
from explorer.downloads import FIGURE_MIME, file_download, montage_bytes
from drlcore.analysis.axis_card import card_order
from explorer.figures import axis_card_chart, feature_label, plot_config, traversal_captions
from explorer.report import ReportSection, axes_section, build_report
from explorer.ui import (caption_for, channel_choice, csv_download, image_grid, object_detail, report_download,
                         require_run, run_channels)

run = require_run()
st.title("Latent axes")
st.caption("Each row walks one latent dimension from low to high (2nd to 98th percentile) with the other "
           "dimensions held at their median, and shows the real image nearest to each step.")

df = run.objects
zcols = run.latent_columns
names = run.dim_names
if not zcols:
    st.error("This run has no latent columns (z_mean_*): re-encode it.")
    st.stop()
if st.session_state["trav.dim"] >= len(zcols):
    st.session_state["trav.dim"] = 0


@st.cache_data(max_entries=64, show_spinner=False)
def _strip(run_path: str, stamp, dim: int, n_steps: int) -> tuple[list[int], list[float]]:
    z = df[zcols].to_numpy(np.float64)
    return traversal_indices(z, dim, n_steps), traversal_values(z, dim, n_steps).tolist()


def _best_matches(dim: int, k: int = 3) -> pd.DataFrame:
    corr = run.correlations
    if corr is None or corr.empty or "pearson" not in set(corr["method"]):
        return pd.DataFrame()
    best = best_matches(corr, method="pearson", top=k)
    return best[best["dim"] == dim]


def _axis_line(dim: int) -> str:
    """The axis named from this run's data, with r and CI, or why it is unnamed; provenance."""
    if dim >= len(run.axes):
        return ""
    return axis_help(run.axes[dim])


def _match_text(dim: int) -> str:
    best = _best_matches(dim)
    if best.empty:
        return "no morphology correlations in this run"
    return ", ".join(f"{feature_label(f)} (r = {r:+.2f})" for f, r in zip(best["feature"], best["value"], strict=True))


card = (run.analysis.get("axis_card") or {}).get("axes") or []
if card:
    with st.container(border=True):
        st.markdown("#### Axis card", help=(
            "For every axis: anchored (tied to a measurement during fine-tuning) or free, the "
            "measure it is judged on (its anchor, or the feature its name comes from), its "
            "Spearman ρ with a 95% CI on this run, next to the best single principal component "
            "of the raw backbone features and the ceiling (a cross-validated ridge read-out of "
            "the raw features) for the same measure."))
        where = (run.analysis.get("axis_card") or {}).get("rows") or "all images"
        st.caption(f"Measured on {where}. An axis that reaches the ceiling holds all the raw "
                   "features know about its measure; one below the best PCA axis adds nothing "
                   "to a plain PCA.")
        st.plotly_chart(axis_card_chart(card, top=None if st.session_state.get(
            "trav.card_all") else 12), config=plot_config(filename=f"{run.name}-axis-card"),
            key="trav.card_chart")
        st.toggle("Show every axis", key="trav.card_all")
        card_table = pd.DataFrame([{
            "axis": r["name"], "kind": r["kind"],
            "measure": feature_label(r["feature"]) if r.get("feature") else "",
            "ρ": r.get("rho"), "CI low": r.get("ci_low"), "CI high": r.get("ci_high"),
            "best PCA |ρ|": r.get("pca_rho"), "ceiling |ρ|": r.get("ceiling_rho"),
            "of ceiling": r.get("of_ceiling"), "n": r.get("n")} for r in card_order(card)])
        st.dataframe(card_table, hide_index=True, key="trav.card_table",
                     column_config={c: st.column_config.NumberColumn(format="%.2f") for c in
                                    ("ρ", "CI low", "CI high", "best PCA |ρ|", "ceiling |ρ|",
                                     "of ceiling")})

stamp = run.objects_stamp
controls = st.columns([3, 1])
active = [j for j in range(len(zcols)) if j not in run.inactive_dims]
# Anchored axes first, then the strongest free ones (the card's order), so a 36-axis code
# shows what it holds at the top of the list.
dim_order = [r["dim"] for r in card_order(card) if r["dim"] < len(zcols)] if card else []
dim_order += [j for j in range(len(zcols)) if j not in dim_order]
controls[0].selectbox("Dimension", dim_order, key="trav.dim", format_func=lambda j: names[j]
                      + ("  (inactive)" if j in run.inactive_dims and "inactive" not in names[j] else ""),
                      help="Axes are named after the morphology family they follow on this run's own "
                           f"images (|r| >= {NamingConfig().min_abs_r:g}, BH q < {NamingConfig().alpha:g}); "
                           "the synthetic-source name is provenance.")
controls[1].slider("Images per axis", 5, 15, key="trav.n_steps", step=2)
n_steps = st.session_state["trav.n_steps"]
show_all = st.toggle("Show all active dimensions", key="trav.show_all")
recorded = run_channels(run)
strip_channel = None
if recorded is not None:
    strip_channel = channel_choice(recorded, "trav.channel", label="Images show",
                                   help="The composite thumbnails, or one channel of each object, decoded "
                                        "from its original file and scaled with this run's dataset-wide "
                                        "range for that channel.")

object_detail(run, st.session_state["trav.focus"], "trav.focus")

dims = [j for j in dim_order if j in active] if show_all else [st.session_state["trav.dim"]]
summary_rows = []
for dim in dims:
    rows, values = _strip(str(run.path), stamp, dim, n_steps)
    with st.container(border=True):
        axis = run.axes[dim] if dim < len(run.axes) else {"name": names[dim]}
        st.markdown(f"#### {axis_label(axis)}", help=_axis_line(dim) or None)
        if _axis_line(dim):
            st.caption(_axis_line(dim))
        st.markdown(f"Best morphology matches: {_match_text(dim)}")
        picked = df.iloc[rows]  # traversal_indices gives table positions
        captions = traversal_captions(names[dim], values)
        image_grid(run, picked, key_prefix=f"trav.strip.{dim}", focus_key="trav.focus", n_cols=n_steps,
                   max_images=n_steps, captions=captions, channel=strip_channel)
    summary_rows.append({"dim": dim, "name": names[dim], "about": _axis_line(dim),
                         "source_name": run.source_dim_names[dim], "best_matches": _match_text(dim),
                         "rows": " ".join(map(str, picked["row"] if "row" in picked else rows))})

table = pd.DataFrame(summary_rows)
exports = st.columns(2)
with exports[0]:
    csv_download(table, f"{run.name}-latent-axes.csv", key="trav.csv")


def _report() -> str:
    sections = []
    for dim in dims:
        rows, values = _strip(str(run.path), stamp, dim, n_steps)
        picked = df.iloc[rows]
        images = [(run.thumb_bytes(str(sha)) or b"", f"{v:+.2f} · {caption_for(obj)}")
                  for (_, obj), sha, v in zip(picked.iterrows(), picked["sha256"], values, strict=True)]
        axis = run.axes[dim] if dim < len(run.axes) else {"name": names[dim]}
        sections.append(ReportSection(axis_label(axis),
                                      text=f"{_axis_line(dim)} Best morphology matches: {_match_text(dim)}",
                                      images=[im for im in images if im[0]]))
    names_section = axes_section(run.axes)
    if names_section is not None:
        sections.insert(0, names_section)
    return build_report(f"Latent axes — {run.name}", sections,
                        {**run.provenance(), "view": "latent axes", "steps": n_steps, "quantiles": "0.02-0.98"})


with exports[1]:
    report_download(_report, f"{run.name}-latent-axes.html", key="trav.report")


with st.expander("Slide montage of this axis (PNG / SVG, stamped)", icon=":material/photo_library:"):
    st.caption("The strip from one extreme of the axis to the other, with the next-nearest objects "
               "at each step as extra rows, drawn as `drl figures` draws it: one figure for a slide, "
               "captioned with the run, model, backbone, data fingerprint and date (also in the "
               "file's metadata).")
    if st.session_state["trav.montage_class"] not in ("", *run.classes):
        st.session_state["trav.montage_class"] = ""
    options = st.columns(2)
    options[0].selectbox("Objects of", ["", *run.classes], key="trav.montage_class",
                         format_func=lambda c: c or "all classes", disabled=not run.classes)
    options[1].slider("Rows per axis", 1, 5, key="trav.montage_rows")
    montage_dim = st.session_state["trav.dim"]
    montage_class = st.session_state["trav.montage_class"] or None
    montage_rows = st.session_state["trav.montage_rows"]
    stem = re.sub(r"[^\w.-]+", "-", f"{run.name}-axis-{montage_dim}" + (f"-{montage_class}" if montage_class else ""))
    st.caption(f"Axis {names[montage_dim]}, {n_steps} steps x {montage_rows} rows"
               + (f", class {montage_class} only." if montage_class else "."))
    buttons = st.columns(2)
    for col, fmt in zip(buttons, ("png", "svg"), strict=True):
        with col:
            file_download(f"Montage ({fmt.upper()})",
                          lambda fmt=fmt: montage_bytes(run.path, montage_dim, fmt, n_steps=n_steps,
                                                        n_rows=montage_rows, label=montage_class),
                          f"{stem}.{fmt}", FIGURE_MIME[fmt], key=f"trav.montage_{fmt}")
