"""Anomalies: which objects are unlike the classes you call "known", and along which axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.analysis import anomaly
from explorer.figures import anomaly_histogram, anomaly_map
from explorer.report import ReportSection, build_report
from explorer.ui import (cached_figure, csv_download, image_grid, object_detail, report_download, require_run,
                         show_chart)

SCORES = {"anomaly_score": "Combined (rank average)", "anomaly_knn": "kNN distance",
          "anomaly_mahalanobis": "Mahalanobis distance", "anomaly_recon": "Reconstruction error"}

run = require_run()
st.title("Anomalies")
df = run.objects
if "anomaly_score" not in df:
    st.info("This run has no anomaly scores: run `drl analyze` on it.")
    st.stop()
names = run.dim_names
zcols = run.latent_columns
stored_known = (run.analysis.get("anomaly", {}).get("known_classes")
                or run.analysis.get("config", {}).get("known_classes") or run.classes)
stored_known = sorted(c for c in stored_known if c in run.classes)
if st.session_state["anom.known"] is None or not set(st.session_state["anom.known"]) <= set(run.classes):
    st.session_state["anom.known"] = stored_known


@st.cache_data(max_entries=16, show_spinner="Re-scoring against the chosen known classes…")
def rescore(run_path: str, stamp, known: tuple[str, ...]) -> pd.DataFrame:
    """Scores and per-axis z-scores with the scorers fitted on ``known`` classes (engine code)."""
    columns = anomaly.score_against_known(
        df[zcols].to_numpy(np.float64), df["label"].isin(known).to_numpy(),
        labels=df["label"].to_numpy(object),
        recon_error=df["recon_error"].to_numpy(float) if "recon_error" in df else None)
    out = pd.DataFrame(columns, index=df.index)
    return out


@st.cache_data(max_entries=64, show_spinner=False)
def evaluate(run_path: str, stamp, score_col: str, known: tuple[str, ...], _values: np.ndarray,
             _unknown: np.ndarray) -> dict:
    """Open-set AUROC/AP of one score for one choice of known classes (what the arrays are is
    named by the run, its stamp, the score and the classes: 10^6 values are not hashed)."""
    return anomaly.open_set_evaluation(_values, _unknown)


labelled = run.has_labels
if labelled:
    st.multiselect("Known classes (the model of 'normal')", run.classes, key="anom.known",
                   help="Objects of the other classes are the ones we hope to flag.")
known_classes = tuple(sorted(st.session_state["anom.known"] or []))
if labelled and not known_classes:
    st.warning("Choose at least one known class.")
    st.stop()
scores = df
if labelled and list(known_classes) != stored_known:
    if df["label"].isin(known_classes).sum() < 3:
        st.warning("Fewer than 3 objects in the known classes: choose more.")
        st.stop()
    scores = rescore(str(run.path), run.objects_stamp, known_classes)
    st.caption("Scores recomputed for this choice of known classes.")
if "anomaly_known" in scores:
    known_mask = scores["anomaly_known"].fillna(False).to_numpy(bool)
elif labelled:
    known_mask = df["label"].isin(known_classes).to_numpy()
else:
    known_mask = np.ones(len(df), bool)

available = [s for s in SCORES if s in scores and scores[s].notna().any()]
controls = st.columns([2, 2])
controls[0].selectbox("Score", available, key="anom.score", format_func=SCORES.get)
score_col = st.session_state["anom.score"]
controls[1].slider("Flag objects above this percentile of the known classes", 0.80, 0.999,
                   key="anom.quantile", step=0.001, format="%.3f")
values = scores[score_col].to_numpy(float)
threshold, flagged = anomaly.flag_above_quantile(values, known_mask, st.session_state["anom.quantile"])
st.session_state["anom.threshold"] = threshold if score_col == "anomaly_score" else None

unknown = ~known_mask
metric_cols = st.columns(3)
metric_cols[0].metric("Flagged objects", f"{int(flagged.sum()):,}")
metric_cols[1].metric("Known-class objects", f"{int(known_mask.sum()):,}")
if labelled and unknown.any() and known_mask.any():
    evaluation = evaluate(str(run.path), run.objects_stamp, score_col, known_classes, values, unknown)
    metric_cols[2].metric("AUROC (other vs known classes)", f"{evaluation['auroc']:.3f}",
                          help="0.5 = chance, 1 = every object of another class scores above every known one.")
    if evaluation.get("note"):
        st.caption(evaluation["note"])
else:
    metric_cols[2].metric("AUROC", "—", help="Needs labels and at least one class left out of the known set.")

view = (score_col, known_classes, st.session_state["anom.quantile"])
hist = cached_figure(run, "anomaly histogram", view, lambda: anomaly_histogram(
    values, known_mask if labelled else None, threshold, SCORES[score_col]))
show_chart(hist, key="anom.hist", filename=f"{run.name}-anomaly-histogram")


proj = run.projections()
map_fig = None
if proj:
    map_fig, n_drawn, n_ringed = cached_figure(run, "anomaly map", (*view, proj[0]),
                                               lambda: anomaly_map(df, proj[0], values, flagged, labelled))
    st.subheader("Flagged objects on the map")
    if n_drawn < len(df):
        st.caption(f"Drawn: {n_drawn:,} of {len(df):,} objects, a seeded random sample plus the "
                   f"most anomalous flagged ones; {n_ringed:,} of the {int(flagged.sum()):,} "
                   "flagged objects are among them, ringed. The counts and AUROC above use every object.")
    show_chart(map_fig, key="anom.map", filename=f"{run.name}-anomalies-map")

st.subheader("Most anomalous objects")
n_top = st.slider("How many", 8, 96, key="anom.top", step=8)
ranking = -np.nan_to_num(values, nan=-np.inf)
top_k = np.argpartition(ranking, n_top - 1)[:n_top] if len(values) > n_top else np.arange(len(values))
order = top_k[np.argsort(ranking[top_k], kind="stable")]
zscore_cols = [c for c in scores.columns if c.startswith("z_score_")]
zscore_cols = sorted(zscore_cols, key=lambda c: int(c.rsplit("_", 1)[1]))
ranked = df.iloc[order].copy()
ranked["score"] = values[order]
if zscore_cols and len(zscore_cols) == len(names):
    zmat = scores[zscore_cols].to_numpy(float)[order]
    ranked["out_of_range_axes"] = ["; ".join(anomaly.out_of_range_axes(zrow, names)) or "none beyond ±3σ"
                                   for zrow in zmat]
object_detail(run, st.session_state["anom.focus"], "anom.focus")
image_grid(run, ranked, key_prefix="anom.gallery", focus_key="anom.focus", max_images=n_top,
           captions=[f"#{i + 1} · {s:.3g}" for i, s in enumerate(ranked["score"])])
table_cols = [c for c in ("row", "path", "label", "score", "out_of_range_axes") if c in ranked]
st.dataframe(ranked[table_cols], hide_index=True, width="stretch")
csv_download(ranked[table_cols], f"{run.name}-anomalies.csv", key="anom.csv")
report_download(lambda: build_report(
    f"Anomalies — {run.name}",
    [ReportSection(f"{SCORES[score_col]} (known: {', '.join(known_classes) or 'all'})",
                   figures=[f for f in (hist, map_fig) if f is not None]),
     ReportSection("Most anomalous objects", table=ranked[table_cols],
                   images=[(b, f"#{i + 1}") for i, b in enumerate(run.thumb_bytes(str(s)) for s in ranked["sha256"]) if b])],
    {**run.provenance(), "view": "anomalies", "known classes": list(known_classes), "score": score_col,
     "flag percentile": st.session_state["anom.quantile"]}), f"{run.name}-anomalies.html", key="anom.report")
