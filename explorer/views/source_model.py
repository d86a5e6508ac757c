"""Source model: how disentangled the model in use is (MIG, DCI, OMES) and which latent dimension
captures which ground-truth factor, as measured on the source data where factors are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.data import rundir
from drlcore.io import read_json
from explorer.figures import factor_heatmap, metric_bars
from explorer.report import ReportSection, build_report
from explorer.ui import csv_download, report_download, require_run, show_chart

run = require_run()
st.title("Source model")
config = run.model_config
metrics = run.model_metrics
origin = "this run's model"
recorded = metrics.get("source", {}).get("metrics") if isinstance(metrics.get("source"), dict) else None
if "evaluation" not in metrics and "headline" not in metrics and isinstance(recorded, dict) and recorded:
    # A transferred model has no ground-truth factors on the user's images; its disentanglement
    # was measured on the source model it came from, whose metrics the transfer recorded.
    metrics, origin = recorded, "the source model it was transferred from"
if "evaluation" not in metrics and "headline" not in metrics:
    # Older runs recorded no source metrics: the shipped default for the backbone.
    backbone = config.get("backbone", {}).get("name")
    try:
        from drlcore.runs.pipeline import shipped_source_model

        source_dir = shipped_source_model(backbone) if backbone else None
    except Exception:  # noqa: BLE001 - no shipped model for this backbone: say so below
        source_dir = None
    if source_dir is not None and (Path(source_dir) / rundir.MODEL_METRICS).is_file():
        metrics = read_json(Path(source_dir) / rundir.MODEL_METRICS)
        origin = f"the source model it was transferred from ({Path(source_dir).name})"
if not metrics:
    st.info(f"No disentanglement metrics found for this model "
            f"({rundir.MODEL}/{rundir.MODEL_METRICS}).")
    st.stop()

headline = metrics.get("headline", {})
evaluation = metrics.get("evaluation", metrics)
dci = evaluation.get("dci", {}) if isinstance(evaluation.get("dci"), dict) else {}
omes = evaluation.get("omes", {}) if isinstance(evaluation.get("omes"), dict) else {}


def _first(*values):
    return next((float(v) for v in values if isinstance(v, (int, float)) and v == v), None)


scores = {
    "MIG": _first(headline.get("mig"), evaluation.get("mig")),
    "DCI disentanglement": _first(headline.get("dci_disentanglement"), dci.get("disentanglement")),
    "DCI completeness": _first(headline.get("dci_completeness"), dci.get("completeness")),
    "DCI informativeness": _first(headline.get("dci_informativeness"), dci.get("informativeness")),
    "OMES": _first(headline.get("omes"), omes.get("omes")),
}
scores = {k: v for k, v in scores.items() if v is not None}
st.caption(f"Measured on held-out Texture-dSprites renders with known factors, for {origin}. "
           "All scores run from 0 to 1; higher means each factor is carried by its own latent dimension.")
backbone = config.get("backbone", {})
cols = st.columns(len(scores) or 1)
for col, (name, value) in zip(cols, scores.items(), strict=False):
    col.metric(name, f"{value:.3f}")
st.markdown(f"Backbone **{backbone.get('name', '?')}** · training method "
            f"**{metrics.get('method') or config.get('training', {}).get('method', '?')}** · model hash "
            f"`{(metrics.get('model_hash') or '')[:12] or '—'}`")
bars = metric_bars(scores) if scores else None
if bars is not None:
    show_chart(bars, key="src.bars", filename=f"{run.name}-disentanglement-scores")

names = list(config.get("dim_names") or evaluation.get("dim_names") or [])
factor_names = list(metrics.get("data", {}).get("factor_names") or metrics.get("factor_names") or [])
importance = dci.get("importance")
heat = None
if importance is not None:
    matrix = np.array([[np.nan if v is None else v for v in row] for row in importance], dtype=float)
    if not names or len(names) != matrix.shape[0]:
        names = [f"z{j}" for j in range(matrix.shape[0])]
    if len(factor_names) != matrix.shape[1]:
        factor_names = [f"factor {k}" for k in range(matrix.shape[1])]
    st.subheader("Which dimension captures which factor")
    st.caption("DCI importance of each latent dimension (rows) for predicting each factor (columns).")
    heat = factor_heatmap(matrix, names, factor_names)
    show_chart(heat, key="src.heatmap", filename=f"{run.name}-dimension-factor")
    table = pd.DataFrame(matrix, index=names, columns=factor_names).reset_index(names="dimension")
    csv_download(table, f"{run.name}-dimension-factor.csv", key="src.csv")
inactive = config.get("inactive_dims") or []
if inactive:
    st.caption(f"Inactive dimensions (carry almost no information): {', '.join(f'z{j}' for j in inactive)}.")
per_factor = omes.get("per_factor")
if isinstance(per_factor, list) and len(per_factor) == len(factor_names):
    st.markdown("**OMES per factor:** " + ", ".join(f"{f} {v:.2f}" for f, v in zip(factor_names, per_factor, strict=True)
                                                     if isinstance(v, (int, float))))

report_download(lambda: build_report(
    f"Source model — {run.name}",
    [ReportSection("Disentanglement scores", figures=[f for f in (bars,) if f is not None]),
     ReportSection("Dimension × factor", figures=[f for f in (heat,) if f is not None])],
    {**run.provenance(), "view": "source model", "metrics from": origin}),
    f"{run.name}-source-model.html", key="src.report")
