"""Class map: UMAP/PCA of the latent space, coloured by class, feature, latent dim or anomaly score.

Plotly hover labels cannot show images, so hover shows the object's name, class and colour
value, and a click (or box/lasso selection) shows the images: one clicked point opens large
with its metadata; a selection opens a gallery plus a comparison of the selection vs the rest.
"Group A vs group B" compares two groups instead, each defined by class, by a map selection or
by a threshold on any feature or latent axis (Hedges' g with CI and BH q, drlcore.analysis.compare).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.analysis.analyze import project_onto
from drlcore.analysis.compare import compare_groups, effect_sizes
from drlcore.errors import DrlError
from drlcore.analysis.naming import axis_help, axis_label
from explorer.data import Run, is_run_dir, list_runs
from explorer.figures import (effect_size_chart, feature_label, group_effect_chart, latent_map, map_colour_choices,
                              map_colour_column, measure_labels)
from explorer.report import ReportSection, build_report
from explorer.scatter import class_map_webgl, webgl_wanted
from explorer.share import GROUP_KINDS
from explorer.ui import (cached_figure, csv_download, image_grid, object_detail, report_download,
                         require_run, selected_rows_from_event, show_chart)

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
colour_options = map_colour_choices(df.columns, run.latent_columns, names, run.morph_columns, run.has_labels)
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
colour_col, continuous = map_colour_column(colour)
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
        coords = _placed(str(run.path), run.objects_stamp, other_path,
                         Run(Path(other_path)).objects_stamp, proj)
    except DrlError as exc:
        st.info(str(exc), icon=":material/info:")
    else:
        background = pd.DataFrame(coords, columns=[x_col, y_col])
        background_name = f"{Path(other_path).name} (placed on this map)"

if webgl_wanted(len(df)):  # WebGL (explorer/scatter.py) above ~100k objects or when ticked
    fig = class_map_webgl(run, df, x_col, y_col, colour_col, continuous, colour_options.get(colour),
                          flagged=flagged, background=background)
else:
    threshold_shown = None if flagged is None else st.session_state.get("anom.threshold")
    other_shown = None if background is None else (  # the placed coordinates themselves
        background_name, hashlib.blake2b(background.to_numpy().tobytes(), digest_size=16).hexdigest())
    selected_now = tuple(st.session_state["map.selected"] or ())
    fig = cached_figure(
        run, "class map", (proj, colour_col, continuous, colour_options.get(colour), threshold_shown,
                           selected_now, other_shown),
        lambda: latent_map(df, x_col, y_col, colour_col, continuous, colour_title=colour_options.get(colour),
                           highlight=flagged, selected_rows=list(selected_now), background=background,
                           background_name=background_name))

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

COMPARE = {"rest": "Selection vs the rest", "groups": "Group A vs group B"}
KIND_LABELS = {"class": "class", "selection": "map selection", "threshold": "threshold",
               "rest": "everything not in A"}
# Anything measured per object can define a group by threshold.
threshold_options = {c: f"Latent · {n}" for c, n in zip(run.latent_columns, names, strict=False)}
threshold_options.update({c: f"Morphology · {feature_label(c)}" for c in run.morph_columns})
if "anomaly_score" in df:
    threshold_options["anomaly_score"] = "Anomaly score"


def _median(column: str) -> float:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0


def _init_groups() -> None:
    """Entering "Group A vs group B" with nothing chosen: the first two classes."""
    if st.session_state["map.compare"] != "groups" or not run.classes:
        return
    for g, i in (("a", 0), ("b", 1)):
        if st.session_state[f"map.{g}.kind"] == "class" and not st.session_state[f"map.{g}.classes"]:
            if i < len(run.classes):
                st.session_state[f"map.{g}.classes"] = [run.classes[i]]
            else:
                st.session_state[f"map.{g}.kind"] = "rest"


def _on_threshold_feature(g: str) -> None:
    st.session_state[f"map.{g}.value"] = _median(st.session_state[f"map.{g}.feature"])


def _use_selection(g: str) -> None:
    st.session_state[f"map.{g}.rows"] = list(st.session_state["map.selected"])
    st.session_state[f"map.{g}.kind"] = "selection"


def _group_controls(g: str) -> tuple[np.ndarray | None, str]:
    """The widgets that define group ``g`` ("a" or "b"); (mask over df or None for "the rest",
    description)."""
    key = f"map.{g}."
    kinds = [k for k in GROUP_KINDS if (k != "class" or run.has_labels) and (k != "rest" or g == "b")
             and (k != "threshold" or threshold_options)]
    if st.session_state[key + "kind"] not in kinds:
        st.session_state[key + "kind"] = kinds[0]
    st.radio(f"Group {g.upper()} by", kinds, key=key + "kind", format_func=KIND_LABELS.get, horizontal=True)
    kind = st.session_state[key + "kind"]
    if kind == "class":
        st.session_state[key + "classes"] = [c for c in st.session_state[key + "classes"] if c in run.classes]
        st.multiselect("Classes", run.classes, key=key + "classes", placeholder="Choose one or more classes")
        chosen = st.session_state[key + "classes"]
        mask = df["label"].astype(str).isin(chosen).to_numpy() if chosen else np.zeros(len(df), bool)
        return mask, ("class " + ", ".join(chosen)) if chosen else "no class chosen"
    if kind == "selection":
        n_sel = len(st.session_state["map.selected"])
        st.button(f"Use the map selection ({n_sel} objects)", key=key + "use", on_click=_use_selection,
                  args=(g,), disabled=n_sel == 0, icon=":material/ads_click:",
                  help="Drag a box or lasso on the map (modebar), then take those objects as this group.")
        mask = df["row"].isin(st.session_state[key + "rows"]).to_numpy()
        return mask, f"{int(mask.sum())} objects picked on the map"
    if kind == "threshold":
        if st.session_state[key + "feature"] not in threshold_options:
            st.session_state[key + "feature"] = (run.morph_columns or list(threshold_options))[0]
            st.session_state[key + "value"] = None
        feature = st.session_state[key + "feature"]
        if st.session_state[key + "value"] is None:
            st.session_state[key + "value"] = _median(feature)
        st.selectbox("Feature or latent axis", list(threshold_options), key=key + "feature",
                     format_func=threshold_options.get, on_change=_on_threshold_feature, args=(g,))
        values = pd.to_numeric(df[feature], errors="coerce").to_numpy(float)
        finite = values[np.isfinite(values)]
        spread = float(np.ptp(finite)) if len(finite) else 1.0
        cols = st.columns([1, 2])
        cols[0].radio("Objects with", [">=", "<="], key=key + "op", horizontal=True,
                      format_func={">=": "≥ value", "<=": "≤ value"}.get)
        cols[1].number_input("Value", key=key + "value", step=max(spread / 100, 1e-6), format="%.4g",
                             help="The feature's median is the starting point.")
        value, op = float(st.session_state[key + "value"]), st.session_state[key + "op"]
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(values) & ((values >= value) if op == ">=" else (values <= value))
        return mask, f"{threshold_options[feature].split(' · ')[-1]} {op} {value:.4g}"
    return None, "everything not in A"


def _two_groups() -> tuple[pd.DataFrame, str, str] | None:
    """Group A vs group B: the definitions, the comparison table and chart, images side by side."""
    cols = st.columns(2, border=True)
    with cols[0]:
        a_mask, a_desc = _group_controls("a")
    with cols[1]:
        b_mask, b_desc = _group_controls("b")
    assert a_mask is not None  # "rest" is offered for B only
    if b_mask is None:
        b_mask = ~a_mask
    both = a_mask & b_mask
    st.markdown(f"**A:** {a_desc} ({int(a_mask.sum())} objects) · **B:** {b_desc} ({int(b_mask.sum())} objects)")
    if both.any():
        st.warning(f"{int(both.sum())} objects are in both groups; they count in both.", icon=":material/warning:")
    columns = [*run.latent_columns, *run.morph_columns]
    try:
        table = compare_groups(df, a_mask, b_mask, columns)
    except DrlError as exc:
        st.info(f"Define both groups to compare them: {exc}.", icon=":material/info:")
        return None
    labels = measure_labels(run.latent_columns, names, run.morph_columns)
    st.caption("Hedges' g: difference of means (A − B) in pooled standard deviations, corrected for "
               "small groups; |g| ≥ 0.8 is a large effect. 95% CI from its normal approximation; "
               f"q: Benjamini-Hochberg over the {len(columns)} measures compared (Welch t-test p).")
    show_chart(group_effect_chart(table, labels), key="map.group_effects", filename=f"{run.name}-group-a-vs-b")
    shown = table.drop(columns="abs_g").assign(
        measure=["latent axis" if c in run.latent_columns else "morphology" for c in table["column"]],
        name=table["column"].map(labels))
    shown = shown[["measure", "name", *[c for c in shown.columns if c not in ("measure", "name")]]]
    st.dataframe(shown.drop(columns="column"), hide_index=True, width="stretch")
    csv_download(shown, f"{run.name}-group-a-vs-b.csv", key="map.group_csv")
    pics = st.columns(2)
    for col, g, mask in ((pics[0], "a", a_mask), (pics[1], "b", b_mask)):
        with col:
            members = df[mask]
            st.markdown(f"**Group {g.upper()}**")
            if len(members) > 12:
                st.caption(f"12 of {len(members)} objects, drawn at random.")
                members = members.sample(n=12, random_state=0)
            image_grid(run, members, key_prefix=f"map.group_{g}", focus_key="map.focus", n_cols=4, max_images=12)
    return table, f"{a_desc} ({int(a_mask.sum())})", f"{b_desc} ({int(b_mask.sum())})"


st.radio("Compare", list(COMPARE), key="map.compare", format_func=COMPARE.get, horizontal=True,
         on_change=_init_groups,
         help="The selection on the map against every other object, or two groups you define.")
object_detail(run, st.session_state["map.focus"], "map.focus")
selected = st.session_state["map.selected"]
effects = None
groups = None
if st.session_state["map.compare"] == "groups":
    if selected:
        st.caption(f"{len(selected)} objects selected on the map: take them as a group with "
                   "“Group by: map selection”.")
    groups = _two_groups()
elif len(selected) > 1:
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
        labels = measure_labels(run.latent_columns, names, run.morph_columns)
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
        labels = measure_labels(run.latent_columns, names, run.morph_columns)
        sel = df[df["row"].isin(selected)].head(24)
        sections.append(ReportSection(
            f"Selection of {len(selected)} objects vs the rest", figures=[effect_size_chart(effects, labels)],
            images=[(b, str(lbl)) for b, lbl in ((run.thumb_bytes(str(s)), lab) for s, lab in
                                                  zip(sel["sha256"], sel.get("label", sel["path"]), strict=False)) if b],
            table=effects.assign(column=effects["column"].map(labels)).drop(columns="abs_d")))
    if groups is not None:
        table, a_desc, b_desc = groups
        labels = measure_labels(run.latent_columns, names, run.morph_columns)
        sections.append(ReportSection(
            f"Group A: {a_desc} vs group B: {b_desc}", figures=[group_effect_chart(table, labels)],
            table=table.assign(column=table["column"].map(labels)).drop(columns="abs_g")))
    return build_report(f"Class map — {run.name}", sections,
                        {**run.provenance(), "view": "class map", "projection": proj, "colour": colour,
                         "selected objects": len(selected), "compare": COMPARE[st.session_state["map.compare"]],
                         **({"group A": groups[1], "group B": groups[2]} if groups else {})})


report_download(_report, f"{run.name}-map.html", key="map.report")
