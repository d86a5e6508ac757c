"""Datasets: what is open, earlier runs, and adding new data (zip upload or a server folder)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import streamlit as st

from drlcore.data import rundir
from drlcore.errors import DrlError
from drlcore.embedding.features import describe_preprocess
from explorer.data import (Run, backbone_summary, is_demo, list_runs, pipeline_config, pipeline_notes,
                           read_pipeline_settings, run_check)
from explorer import jobs as app_jobs
from explorer.downloads import EXPORT_MIME, export_bytes, file_download
from explorer.ui import csv_download, current_run, show_damaged

st.title("Datasets")
runs_dir = Path(st.session_state["app.runs_dir"])


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
    prepared = describe_preprocess(run.features_manifest)
    if prepared:
        st.caption(f"Images prepared by {prepared}.")
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
    with st.expander("Export for scanpy, R or Excel (h5ad, CSV, Parquet)", icon=":material/download:"):
        st.caption("The files `drl export` writes. h5ad (AnnData, opens in scanpy): latent means as `X` "
                   "with the axis names in `var`, image metadata, morphology and anomaly scores in "
                   "`obs`, the UMAP/PCA maps in `obsm`, correlations and provenance in `uns`. CSV and "
                   "Parquet: the per-object table, one row per image.")
        st.checkbox("Include the backbone features in the h5ad (`obsm['X_backbone']`, larger file)",
                    key="data.export_features", disabled=not (run.path / rundir.FEATURES).is_file())
        with_features = bool(st.session_state.get("data.export_features"))
        buttons = st.columns(3)
        for col, fmt in zip(buttons, ("h5ad", "csv", "parquet"), strict=True):
            with col:
                file_download(f"{fmt} file", lambda fmt=fmt: export_bytes(run.path, fmt, with_features and fmt == "h5ad"),
                              f"{run.name}.{fmt}", EXPORT_MIME[fmt], key=f"data.export_{fmt}")
    if skipped is not None and len(skipped):
        with st.expander(f"Skipped images ({len(skipped)})"):
            st.dataframe(skipped, hide_index=True, width="stretch")
            csv_download(skipped, f"{run.name}-skipped.csv", key="data.skipped_csv")


run = current_run()
if run is not None:
    ok, summary, problems = run_check(run.path)
    if not ok:
        st.subheader(f"Open: {run.name}")
        show_damaged(summary, problems)
    else:
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
    checks = [run_check(p) for p in runs]
    table = pd.DataFrame({
        "run": [p.name + (" (demo)" if is_demo(p) else "") for p in runs],
        "modified": [dt.datetime.fromtimestamp((p / rundir.OBJECTS).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
                     for p in runs],
        # The words of `drl check`: a damaged run is listed as such, the others open as usual.
        "state": ["intact" if ok else "damaged: " + "; ".join(problems or (summary,))
                  for ok, summary, problems in checks],
    })
    st.dataframe(table, hide_index=True, width="stretch")
app_jobs.show_jobs(runs_dir)  # live progress of running jobs; a watched one opens when done
if not any(is_demo(p) for p in runs):
    from drlcore.runs import jobs

    from explorer.data import DEMO_RUN_NAME

    demo_job = jobs.read_job(runs_dir / DEMO_RUN_NAME)
    autobuild = st.session_state.pop("app.autobuild_demo", False)
    if demo_job is not None and demo_job.running:
        app_jobs.watch(demo_job.target)  # another tab started it: wait for the same build
    else:
        if demo_job is not None and demo_job.state == "failed" and not autobuild:
            st.error(f"The demo could not be built: {demo_job.error}", icon=":material/error:")
        if st.button("Build the demo (Texture-dSprites, about a minute)", key="data.build_demo",
                     icon=":material/play_circle:") or autobuild:
            try:
                app_jobs.start_demo(runs_dir)
            except DrlError as exc:
                st.error(str(exc), icon=":material/error:")
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
    from drlcore.embedding.backbones import BACKBONES, DEFAULT_BACKBONE

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
    preprocess_modes = ["auto", "pad", "canvas", "stretch"]
    feature_settings = settings.get("features") or {}
    default_preprocess = feature_settings.get("preprocess") or {True: "pad", False: "stretch"}.get(
        feature_settings.get("pad_to_square"), "auto")  # pad_to_square: an older settings file
    if st.session_state.get("data.preprocess") not in preprocess_modes:
        st.session_state["data.preprocess"] = (default_preprocess if default_preprocess in preprocess_modes
                                               else "auto")
    st.selectbox("Image preprocessing", preprocess_modes, key="data.preprocess",
                 help="auto: canvas when crop sizes vary widely (90th/10th percentile of the longest side "
                      ">= 2), else pad. pad: each image padded to a square (absolute size lost). canvas: "
                      "all images on one canvas sized from the 95th percentile of crop sizes, so object "
                      "size stays visible to the network (larger crops shrink to fit). stretch: each image "
                      "stretched to a square.")


with st.expander("Fluorescence channels (2-8 channel TIFFs, or one file per channel)"):
    st.text_input("Channel names and colours", key="data.channels",
                  placeholder="DNA=blue,actin=green,mito=magenta  (or by index: 0=blue,1=green; "
                              "or names in order: BrightField,DAPI,actin)",
                  help="Each channel is tinted its colour and the tints are added into the RGB "
                       "composite the network and the thumbnails see. Colours: blue, green, magenta, "
                       "grey, cyan, yellow, orange, red, #rrggbb, or off. Empty: green/magenta for 2 "
                       "channels, else blue, green, magenta, grey, cyan...")
    st.text_input("Mask channel", key="data.mask_channel",
                  placeholder="BrightField  (a channel name, or its 0-based index)",
                  help="The channel the object outline is cut from, measured per channel and "
                       "compartment. Empty: the bright-field channel where one is named so, else "
                       "the non-DNA channel that best separates an object. A DNA stain (DAPI, "
                       "Hoechst, DRAQ5, DNA, PI, nuclear...), recognised by its name, gives the "
                       "nucleus and the DNA-content measurements. Name channels in order in "
                       "'Channel names and colours' (BrightField,DAPI,actin) when the files do not.")
    st.text_input("One-file-per-channel rule (regex on the file name without extension)",
                  key="data.channel_pattern", placeholder="^(?P<object>.+)_(?P<channel>[^_]+)$",
                  help="Files such as cell1_DNA.tif, cell1_actin.tif become one image. Without a rule "
                       "here, only names ending in channel names (DAPI, DNA, GFP, BF, ch1, w2...) whose "
                       "files are single-channel images of one size are grouped; a rule given here "
                       "groups whatever it matches (colour files never). 'none' keeps every file "
                       "separate.")


def _channel_pattern_setting() -> str | None:
    from drlcore.data.discover import DEFAULT_CHANNEL_PATTERN

    pattern = (st.session_state.get("data.channel_pattern") or "").strip()
    if not pattern:
        return DEFAULT_CHANNEL_PATTERN
    return None if pattern.lower() == "none" else pattern


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _preview(path: str, pattern: str | None, stamp: object) -> dict:
    """What discovery will read (headers only, no pixel decoded); ``stamp`` keys the cache
    (folder mtime or upload id)."""
    from drlcore.data.discover import IngestConfig, discover

    dataset = discover(path, IngestConfig(channel_pattern=pattern))
    return {"objects": len(dataset.records), "classes": len(dataset.labels),
            "layout": dataset.layout, "reading": dataset.reading, "notes": list(dataset.notes),
            "channels": dataset.channel_names, "skipped": len(dataset.skipped),
            "loose": sum(1 for r in dataset.records if r.note)}


def _show_preview(upload, folder: str | None, roots: list[str]) -> None:
    """The Add-data preview: how the files will become objects, before any job starts."""
    import tempfile

    from drlcore.runs import jobs

    try:
        pattern = _channel_pattern_setting()
        if upload is not None:
            with tempfile.TemporaryDirectory(prefix="drl-preview-") as tmp:
                path = Path(tmp) / "upload.zip"
                path.write_bytes(upload.getvalue())
                info = _preview(str(path), pattern, ("upload", upload.file_id, upload.size))
        elif folder and roots:
            path = jobs.resolve_data_folder(folder, roots)
            info = _preview(str(path), pattern, ("folder", path.stat().st_mtime_ns))
        else:
            return
    except (DrlError, OSError) as exc:
        st.caption(f"Preview: {exc}")
        return
    channels = ", ".join(info["channels"] or [])
    reading = {"per-file": "one image per file",
               "per-channel": f"one object per set of channel files ({channels})",
               "mixed": f"channel files grouped per object ({channels}); {info['loose']:,} other "
                        f"file(s) read as one image each"}[info["reading"]]
    classes = f"{info['classes']} classes" if info["classes"] else "no classes"
    st.markdown(f"**Preview:** {info['objects']:,} objects, {classes} (layout "
                f"{info['layout']}); read as {reading}.")
    for note in info["notes"][:6]:
        st.caption(note)
    if info["skipped"]:
        st.caption(f"{info['skipped']:,} file(s) or folder(s) will be skipped, each with its reason "
                   "(listed with the run).")


def _settings_for_job(base: dict) -> dict:
    """The page's choices over the settings file, as the JSON the worker rebuilds its config from."""
    settings = dict(base)
    features = dict(settings.pop("features", {}) or {})
    if st.session_state.get("data.backbone"):
        features["backbone"] = st.session_state["data.backbone"]
    if st.session_state.get("data.source_model"):
        settings["source_model"] = st.session_state["data.source_model"]
    if st.session_state.get("data.preprocess"):
        features["preprocess"] = st.session_state["data.preprocess"]
        features.pop("pad_to_square", None)  # an older settings file's spelling of the same choice
    if (st.session_state.get("data.channels") or "").strip():
        features["channels"] = st.session_state["data.channels"].strip()
    mask_channel = (st.session_state.get("data.mask_channel") or "").strip()
    if mask_channel:
        settings["mask_channel"] = mask_channel
    if (st.session_state.get("data.channel_pattern") or "").strip():
        features["channel_pattern"] = _channel_pattern_setting()
    settings["features"] = features
    pipeline_config(settings)  # unknown keys and bad values fail here, before any job starts
    return settings


def _start_analysis() -> None:
    """Check the request, reserve a fresh run folder, hand the work to a background job."""
    from drlcore.runs import jobs

    job_settings = _settings_for_job(settings)
    upload_bytes = 0
    data = None
    if upload is not None:
        upload_bytes = upload.size
        limit_mb = float(st.session_state.get("app.max_upload_mb") or 0)
        if limit_mb and upload_bytes > limit_mb * 2**20:
            raise DrlError(f"the upload is {upload_bytes / 2**20:,.0f} MiB, over this server's limit of "
                           f"{limit_mb:,.0f} MiB (`drl explore --max-upload-mb`)")
    else:
        data = jobs.resolve_data_folder(folder, st.session_state.get("app.data_roots") or [])
    # Features, thumbnails and the model come to well under twice the upload; a folder is read in place.
    needed = float(st.session_state.get("app.min_free_mb") or 0) * 2**20 + 2 * upload_bytes
    jobs.check_free_space(runs_dir, int(needed))
    target = jobs.reserve_run_dir(runs_dir, run_name or default_name)
    cleanup = None
    if upload is not None:
        cleanup = runs_dir / ".uploads" / target.name
        cleanup.mkdir(parents=True, exist_ok=True)
        data = cleanup / jobs.safe_run_name(Path(upload.name).name)
        data.write_bytes(upload.getvalue())
    app_jobs.start_run(target, data, job_settings, cleanup=cleanup)
    st.session_state["data.started"] = target.name


roots = st.session_state.get("app.data_roots") or []
_show_preview(upload, folder if source_kind == "Folder on the server" else None, roots)
if source_kind == "Folder on the server":
    if roots:
        st.caption("Folders under " + ", ".join(f"`{r}`" for r in roots) + " can be read.")
    else:
        st.caption("This server reads no folders (started without `--data-root`): upload a zip instead.")
if st.button("Analyse", key="data.start", type="primary", icon=":material/rocket_launch:",
             disabled=(upload is None and not folder)):
    try:
        _start_analysis()
    except DrlError as exc:
        st.error(f"{exc}\n\nNo run was changed.", icon=":material/error:")
    else:
        st.rerun()

if st.session_state.get("data.just_added") and run is not None and run.name == st.session_state["data.just_added"]:
    st.success(f"New run **{run.name}** is open. Explore it with the pages on the left.")
