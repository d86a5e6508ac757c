"""Class map: UMAP/PCA of the latent space, coloured by class, feature, latent dim or anomaly score.

Plotly hover labels cannot show images, so hover shows the object's name, class and colour
value, and a click (or box/lasso selection) shows the images: one clicked point opens large
with its metadata; a selection opens a gallery plus a comparison of the selection vs the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.analyze import project_onto
from drlcore.compare import effect_sizes
from drlcore.errors import DrlError
from drlcore.naming import axis_help, axis_label
from explorer.data import file_stamp, is_run_dir, list_runs
from explorer.figures import effect_size_chart, feature_label, latent_map
from explorer.report import ReportSection, build_report
from explorer.scatter import class_map_webgl, webgl_wanted
from explorer.ui import (csv_download, image_grid, object_detail, report_download, require_run,
                         selected_rows_from_event, show_chart)

run = require_run()
st.title("Class map")
df = run.objects
projections = run.projections()
if not projections:
    st.info("This run has no map coordinates (umap_x/pca_x): run `drl analyze` on it.")
    st.stop()
if st.session_state["map.projection"] not in projections:
    st.session_state["map.projection"] = projections[0]

names = run.dim_names
colour_options = {"class": "Class"} if run.has_labels else {}
if "anomaly_score" in df:
    colour_options["anomaly_score"] = "Anomaly score"
colour_options.update({c: f"Latent · {n}" for c, n in zip(run.latent_columns, names, strict=False)})
colour_options.update({c: f"Morphology · {feature_label(c)}" for c in run.morph_columns})
if not colour_options:
    colour_options["none"] = "None"
if st.session_state["map.color_by"] not in colour_options:
    st.session_state["map.color_by"] = next(iter(colour_options))

controls = st.columns([1, 2, 2])
controls[0].radio("Map", projections, key="map.projection", format_func=str.upper, horizontal=True)
controls[1].selectbox("Colour by", list(colour_options), key="map.color_by", format_func=colour_options.get)
others = [str(p) for p in list_runs(Path(st.session_state["app.runs_dir"])) if p != run.path]
if st.session_state["app.reference_run"] not in others:
    st.session_state["app.reference_run"] = ""
controls[2].selectbox("Place another run on this map (grey)", ["", *others], key="app.reference_run",
                      format_func=lambda p: "none" if not p else Path(p).name,
                      help="New images encoded with this run's model (drl encode RUN/model IMAGES "
                           "--out NEW) are placed on this map with the fitted UMAP/PCA transform.")

proj = st.session_state["map.projection"]
x_col, y_col = f"{proj}_x", f"{proj}_y"
colour = st.session_state["map.color_by"]
colour_col = None if colour == "none" else ("label" if colour == "class" else colour)
continuous = colour_col not in (None, "label")
if colour_col in run.latent_columns and run.axes:
    _axis = run.axes[run.latent_columns.index(colour_col)]
    st.caption(f"Colour: {axis_label(_axis)}", help=axis_help(_axis))
flagged = None
if "anomaly_score" in df and st.session_state.get("map.show_flagged", True):
    threshold = st.session_state.get("anom.threshold")
    if threshold is not None:
        flagged = (df["anomaly_score"] >= threshold).to_numpy()
@st.cache_data(max_entries=8, show_spinner="Placing the other run on this map…")
def _placed(reference: str, reference_stamp, other: str, other_stamp, projection: str) -> np.ndarray:
    return project_onto(reference, other, projection)


background, background_name = None, "other run"
other_path = st.session_state.get("app.reference_run")
if other_path and is_run_dir(Path(other_path)):
    try:
        coords = _placed(str(run.path), file_stamp(run.path / "objects.parquet"), other_path,
                         file_stamp(Path(other_path) / "objects.parquet"), proj)
    except DrlError as exc:
        st.info(str(exc), icon=":material/info:")
    else:
        background = pd.DataFrame(coords, columns=[x_col, y_col])
        background_name = f"{Path(other_path).name} (placed on this map)"

if webgl_wanted(len(df)):  # WebGL (explorer/scatter.py) above ~100k objects or when ticked
    fig = class_map_webgl(run, df, x_col, y_col, colour_col, continuous, colour_options.get(colour),
                          flagged=flagged, background=background)
else:
    fig = latent_map(df, x_col, y_col, colour_col, continuous, colour_title=colour_options.get(colour),
                     highlight=flagged, selected_rows=st.session_state["map.selected"], background=background,
                     background_name=background_name)

    def _on_select() -> None:
        rows = selected_rows_from_event("map.chart")
        st.session_state["map.selected"] = rows
        st.session_state["map.focus"] = rows[0] if len(rows) == 1 else None

    show_chart(fig, key="map.chart", filename=f"{run.name}-{proj}-map", on_select=_on_select)
trust = run.analysis.get("projections", {}).get(proj, {}).get("trustworthiness")
note = f" Map trustworthiness {trust:.2f} (1 = neighbours on the map are neighbours in latent space)." if trust else ""
st.caption("Hover a point for its name and class; click it to see the image; drag a box or lasso "
           "(modebar) to select a group and compare it with the rest." + note)
if flagged is not None:
    st.caption(f"Orange rings: {int(flagged.sum())} objects flagged on the Anomalies page.")

object_detail(run, st.session_state["map.focus"], "map.focus")
selected = st.session_state["map.selected"]
effects = None
if len(selected) > 1:
    mask = df["row"].isin(selected).to_numpy()
    st.subheader(f"Selection: {int(mask.sum())} of {len(df)} objects")
    if run.has_labels:
        st.caption("Classes in the selection: " + ", ".join(
            f"{k} {v}" for k, v in df.loc[mask, "label"].value_counts().items()))
    tabs = st.tabs(["Images", "Selection vs rest"])
    with tabs[0]:
        image_grid(run, df[mask], key_prefix="map.gallery", focus_key="map.focus")
    with tabs[1]:
        columns = [*run.latent_columns, *run.morph_columns]
        effects = effect_sizes(df, mask, columns)
        labels = {**dict(zip(run.latent_columns, names, strict=False)),
                  **{c: feature_label(c) for c in run.morph_columns}}
        st.caption("Cohen's d: difference of means in pooled standard deviations; |d| ≥ 0.8 is a large effect.")
        show_chart(effect_size_chart(effects, labels), key="map.effects", filename=f"{run.name}-selection-effects")
        shown = effects.assign(column=effects["column"].map(labels))
        st.dataframe(shown.drop(columns="abs_d"), hide_index=True, width="stretch")
        csv_download(shown, f"{run.name}-selection-vs-rest.csv", key="map.effects_csv")
    csv_download(df.loc[mask, ["row", "path", "label", x_col, y_col]], f"{run.name}-selection.csv",
                 key="map.sel_csv", label="Download selected objects (CSV)")
    if st.button("Clear selection", key="map.clear", icon=":material/deselect:"):
        st.session_state["map.selected"] = []
        st.rerun()


def _report() -> str:
    sections = [ReportSection(f"{proj.upper()} map coloured by {colour_options.get(colour)}", figures=[fig])]
    if effects is not None:
        labels = {**dict(zip(run.latent_columns, names, strict=False)),
                  **{c: feature_label(c) for c in run.morph_columns}}
        sel = df[df["row"].isin(selected)].head(24)
        sections.append(ReportSection(
            f"Selection of {len(selected)} objects vs the rest", figures=[effect_size_chart(effects, labels)],
            images=[(b, str(lbl)) for b, lbl in ((run.thumb_bytes(str(s)), lab) for s, lab in
                                                  zip(sel["sha256"], sel.get("label", sel["path"]), strict=False)) if b],
            table=effects.assign(column=effects["column"].map(labels)).drop(columns="abs_d")))
    return build_report(f"Class map — {run.name}", sections,
                        {**run.provenance(), "view": "class map", "projection": proj, "colour": colour,
                         "selected objects": len(selected)})


report_download(_report, f"{run.name}-map.html", key="map.report")
