"""Datasets: what is open, earlier runs, and adding new data (zip upload or a server folder)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from drlcore.errors import DrlError
from explorer.data import (Run, backbone_summary, is_demo, list_runs, pipeline_config, pipeline_notes,
                           read_pipeline_settings)
from explorer.ui import csv_download, current_run

st.title("Datasets")
runs_dir = Path(st.session_state["app.runs_dir"])


def _open(path: str) -> None:
    st.session_state["app.request_run"] = path


def _summary(run: Run) -> None:
    df = run.objects
    st.subheader(f"Open: {run.name}")
    cols = st.columns(4)
    cols[0].metric("Objects", f"{len(df):,}")
    cols[1].metric("Classes", len(run.classes) if run.has_labels else "unlabelled")
    skipped = run.skipped
    cols[2].metric("Skipped images", 0 if skipped is None else len(skipped))
    cols[3].metric("Latent dims", len(run.latent_columns))
    name, reason = backbone_summary(run)
    st.markdown(f"**Backbone:** `{name}` — {reason}.")
    model = run.manifest.get("model") or {}
    transferred = (run.manifest.get("pipeline") or {}).get("transferred")
    parent = model.get("parent_model_hash") or run.model_config.get("parent_model_hash")
    if parent:
        st.caption(f"Model fine-tuned on these images from source model {parent[:12]}.")
    elif transferred is False:
        st.caption("The source model is used as it is (not fine-tuned on these images).")
    for note in pipeline_notes(run):
        st.info(note, icon=":material/info:")
    for line in run.analysis.get("summary", {}).get("headline", []):
        st.markdown(f"- {line}")
    for note in run.analysis.get("notes", []):
        st.info(note, icon=":material/info:")
    if run.has_labels:
        counts = df["label"].value_counts().rename_axis("class").reset_index(name="objects")
        with st.expander("Objects per class"):
            st.dataframe(counts, hide_index=True, width="stretch")
            csv_download(counts, f"{run.name}-classes.csv", key="data.classes_csv")
    if skipped is not None and len(skipped):
        with st.expander(f"Skipped images ({len(skipped)})"):
            st.dataframe(skipped, hide_index=True, width="stretch")
            csv_download(skipped, f"{run.name}-skipped.csv", key="data.skipped_csv")


run = current_run()
if run is not None:
    try:
        _summary(run)
    except DrlError as exc:
        st.error(str(exc))
else:
    st.info("No run is open yet: build the demo or add your own images below.")

st.subheader("Runs")
runs = list_runs(runs_dir)
st.caption(f"Runs are kept in `{runs_dir}` (change with `drl explore --runs-dir DIR`).")
if runs:
    table = pd.DataFrame({
        "run": [p.name + (" (demo)" if is_demo(p) else "") for p in runs],
        "modified": [dt.datetime.fromtimestamp((p / "objects.parquet").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
                     for p in runs],
    })
    st.dataframe(table, hide_index=True, width="stretch")
if not any(is_demo(p) for p in runs):
    autobuild = st.session_state.pop("app.autobuild_demo", False)
    if st.button("Build the demo (Texture-dSprites, about a minute)", key="data.build_demo",
                 icon=":material/play_circle:") or autobuild:
        demo_error = None
        with st.status("Building the demo run…", expanded=True) as status:
            try:
                from drlcore.demo import build_demo
                from explorer.progress_ui import StreamlitReporter

                path = build_demo(runs_dir, reporter=StreamlitReporter())
            except DrlError as exc:
                status.update(label="The demo could not be built", state="error", expanded=False)
                demo_error = str(exc)
            else:
                status.update(label="Demo ready", state="complete")
                _open(str(path))
        if demo_error:
            st.error(demo_error, icon=":material/error:")
        else:
            st.rerun()

st.subheader("Add data")
st.markdown("Images in one folder per class (or a flat folder, or a CSV listing them). "
            "They go through the whole pipeline: features, model transfer, encoding, analysis.")
source_kind = st.radio("Where are the images?", ["Upload a .zip", "Folder on the server"], key="data.source",
                       horizontal=True)
upload = folder = None
if source_kind == "Upload a .zip":
    upload = st.file_uploader("Zip of images", type=["zip"], key="data.upload")
else:
    folder = st.text_input("Folder path on the server", key="data.folder", placeholder="/data/my-cells")
default_name = Path(upload.name).stem if upload is not None else (Path(folder).name if folder else "")
run_name = st.text_input("Name for the new run", key="data.name", placeholder=default_name or "my-cells")
try:
    settings = read_pipeline_settings(st.session_state.get("app.pipeline_settings_file"))
except DrlError as exc:
    st.error(str(exc))
    settings = {}
with st.expander("Advanced: backbone and source model"):
    from drlcore.backbones import BACKBONES, DEFAULT_BACKBONE

    default_backbone = (settings.get("features") or {}).get("backbone", DEFAULT_BACKBONE)
    # Test-only backbones are offered only when the settings file asks for one.
    offered = [n for n in BACKBONES if not n.startswith("test-") or n == default_backbone]
    if st.session_state.get("data.backbone") not in offered:
        st.session_state["data.backbone"] = default_backbone
    st.selectbox("Backbone (feature extractor)", offered, key="data.backbone",
                 format_func=lambda name: f"{name}: {BACKBONES[name].description}")
    st.text_input("Source model folder (empty: the one shipped for this backbone)", key="data.source_model",
                  placeholder=settings.get("source_model") or "shipped with drl")
    st.caption(f"The default {DEFAULT_BACKBONE} works offline; DINO backbones need their weights on this "
               "computer. The source model must have been trained on the same backbone.")


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")
    return name or "run"


def _fresh_dir(name: str) -> Path:
    """A run folder name not used yet; an earlier run is never overwritten."""
    base = _safe_name(name)
    candidate, i = runs_dir / base, 2
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        candidate, i = runs_dir / f"{base}-{i}", i + 1
    return candidate


if st.button("Analyse", key="data.start", type="primary", icon=":material/rocket_launch:",
             disabled=(upload is None and not folder)):
    final = _fresh_dir(run_name or default_name)
    partial = final.with_name(final.name + ".partial")
    workdir = Path(tempfile.mkdtemp(prefix="drl-upload-"))
    failure = None
    with st.status(f"Analysing into {final.name}…", expanded=True) as status:
        try:
            if upload is not None:
                data = workdir / _safe_name(Path(upload.name).name)
                data.write_bytes(upload.getvalue())
            else:
                data = Path(folder).expanduser()
                if not data.exists():
                    raise DrlError(f"folder {data} does not exist on the server")
            from drlcore.pipeline import run_pipeline
            from explorer.progress_ui import StreamlitReporter

            runs_dir.mkdir(parents=True, exist_ok=True)
            # Built under <name>.partial and renamed when complete, so the run list never shows
            # half a run, and a failure leaves every earlier run untouched.
            config = pipeline_config(settings, st.session_state.get("data.backbone"),
                                     st.session_state.get("data.source_model") or None)
            run_pipeline(data, partial, config, StreamlitReporter())
            partial.rename(final)
        except DrlError as exc:
            status.update(label="The data could not be analysed", state="error", expanded=False)
            failure = str(exc)
            shutil.rmtree(partial, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - show the user something actionable, keep the app alive
            status.update(label="Unexpected error", state="error", expanded=False)
            failure = f"Unexpected error while analysing: {type(exc).__name__}: {exc}"
            shutil.rmtree(partial, ignore_errors=True)
        else:
            status.update(label=f"Done: {final.name}", state="complete")
            _open(str(final))
            st.session_state["data.just_added"] = final.name
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        st.error(f"{failure}\n\nNo run was changed.", icon=":material/error:")
    elif st.session_state.get("data.just_added") == final.name:
        st.rerun()

if st.session_state.get("data.just_added") and run is not None and run.name == st.session_state["data.just_added"]:
    st.success(f"New run **{run.name}** is open. Explore it with the pages on the left.")
