"""Streamlit helpers shared by the pages: state defaults, the current run, charts, galleries,
downloads. Session state holds UI state only, under namespaced keys (``app.*``, ``trav.*``, ...).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from drlcore.errors import DrlError
from explorer.data import Run, is_run_dir, run_check
from explorer.figures import plot_config

STATE_DEFAULTS: dict = {
    "app.run": None,            # path (str) of the run on screen
    "app.reference_run": "",  # optional second run drawn beneath the map
    "ui.image_format": "svg",
    "trav.dim": 0,
    "trav.focus": None,
    "trav.n_steps": 9,
    "corr.method": "pearson",
    "corr.dim": 0,
    "corr.feature": None,
    "corr.selected": [],
    "map.projection": None,
    "map.color_by": "class",
    "map.selected": [],
    "map.focus": None,
    "anom.known": None,
    "anom.method": "stored",
    "anom.quantile": 0.95,
    "anom.focus": None,
    "anom.score": "anomaly_score",
    "anom.top": 24,
    "anom.threshold": None,
    "corr.focus": None,
    "trav.show_all": False,
    "trav.card_all": False,  # the axis card shows the first 12 axes unless asked for every one
    "trav.channel": -1,  # multi-channel runs: the strip shows the composite (-1) or channel k
    "trav.montage_class": "",  # axis montage download: one class ("" = all) and rows per axis
    "trav.montage_rows": 3,
    "corr.cluster": False,
    "corr.every": False,
    # Class map, "Group A vs group B": each group by class, map selection or a threshold
    # (explorer.share puts these in the URL).
    "map.compare": "rest",
    **{f"map.{g}.{field}": value for g in ("a", "b") for field, value in
       (("kind", "class"), ("classes", []), ("rows", []), ("feature", None), ("op", ">="),
        ("value", None))},
}


def init_state(extra: dict | None = None) -> None:
    """Set defaults once per session; never overwrite what the user chose."""
    for key, value in {**STATE_DEFAULTS, **(extra or {})}.items():
        if key not in st.session_state:
            st.session_state[key] = list(value) if isinstance(value, list) else value


def keep_state() -> None:
    """Carry UI choices across pages.

    Streamlit forgets a widget's keyed value when a rerun does not draw that widget (e.g. after
    switching page); writing each known key back at the top of every run keeps it.
    """
    init_state()
    for key in STATE_DEFAULTS:
        st.session_state[key] = st.session_state[key]


def current_run() -> Run | None:
    path = st.session_state.get("app.run")
    if not path:
        return None
    p = Path(path)
    return Run(p) if is_run_dir(p) else None


def require_run() -> Run:
    """The run on screen, or a friendly stop pointing at the Datasets page."""
    run = current_run()
    if run is None:
        st.info("No run is open. Pick one in the sidebar, or add data on the **Datasets** page.")
        st.stop()
    ok, summary, problems = run_check(run.path)
    if not ok:  # checked before any page reads a file of it: no page shows a traceback
        show_damaged(summary, problems)
        st.stop()
    try:
        run.objects  # noqa: B018 - load once so a broken run fails here with a clear message
    except DrlError as exc:
        st.error(str(exc))
        st.info("Pick another run in the sidebar.")
        st.stop()
    return run


def show_damaged(summary: str, problems) -> None:
    """A damaged run, in the words of ``drl check``."""
    st.error("\n\n".join([summary, *problems]), icon=":material/broken_image:")
    st.info("Pick another run in the sidebar; `drl check RUN` lists the same files.")


@st.cache_resource(max_entries=64, show_spinner=False)
def _shared_figure(key: tuple, _build: Callable):
    return _build()


def cached_figure(run: Run, view: str, settings: tuple, build: Callable):
    """``build()`` (a figure, or a tuple holding one), once per run version, view and settings,
    shared by reruns and sessions.

    ``settings`` must name everything the figure depends on besides the run's files. Safe to
    share because nothing changes a figure after it is built (``st.plotly_chart`` serialises a
    copy). Building the figures was about half of a page's server time, most of it repeated
    for the same run and the same defaults in every session."""
    return _shared_figure((str(run.path), run.version, view, settings), build)


def show_chart(fig: go.Figure, key: str, filename: str, on_select: Callable | str = "ignore",
               selection_mode: Sequence[str] = ("points", "box", "lasso")):
    """Plotly chart whose modebar camera saves SVG or PNG (sidebar choice), fully in the browser."""
    config = plot_config(st.session_state.get("ui.image_format", "svg"), filename)
    if on_select == "ignore":
        return st.plotly_chart(fig, key=key, config=config, width="stretch", theme=None)
    # theme=None keeps our own slide-sized fonts and colour-blind-safe palettes.
    return st.plotly_chart(fig, key=key, config=config, width="stretch", theme=None, on_select=on_select,
                           selection_mode=tuple(selection_mode))


def selected_rows_from_event(chart_key: str) -> list[int]:
    """Object rows of the points selected in a chart (``customdata[0]`` is the row)."""
    event = st.session_state.get(chart_key)
    if not event:
        return []
    selection = event.get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    rows = []
    for point in selection.get("points", []):
        custom = point.get("customdata")
        if custom is not None and len(custom):
            try:
                rows.append(int(float(custom[0])))
            except (TypeError, ValueError):
                continue
    return sorted(set(rows))


def csv_download(df: pd.DataFrame, filename: str, key: str, label: str = "Download table (CSV)") -> None:
    st.download_button(label, data=lambda: df.to_csv(index=False).encode("utf-8"), file_name=filename,
                       mime="text/csv", key=key, icon=":material/download:", on_click="ignore")


def report_download(build: Callable[[], str], filename: str, key: str) -> None:
    """HTML report built only when clicked (it inlines ~4 MB of plotly.js)."""
    st.download_button("Download this view as an HTML report", data=lambda: build().encode("utf-8"),
                       file_name=filename, mime="text/html", key=key, icon=":material/description:",
                       on_click="ignore", help="One file with interactive charts, images and a provenance "
                                              "stamp; opens offline on any laptop.")


def caption_for(row: pd.Series) -> str:
    name = Path(str(row.get("path", row.get("row")))).name
    label = row.get("label")
    return f"{name}" if label is None or (isinstance(label, float) and np.isnan(label)) else f"{label} · {name}"


def image_grid(run: Run, rows: pd.DataFrame, key_prefix: str, focus_key: str, n_cols: int = 8,
               max_images: int = 48, captions: Sequence[str] | None = None,
               channel: int | None = None) -> None:
    """Thumbnails in a grid; the button under each opens it large (``focus_key`` = its row).

    ``channel`` (multi-channel runs): show that channel of each object, decoded on demand from
    its original file (:func:`channel_png`), instead of the composite thumbnail."""
    if rows.empty:
        st.caption("No objects to show.")
        return
    shown = rows.head(max_images)
    if len(rows) > max_images:
        st.caption(f"Showing {max_images} of {len(rows)} objects.")
    cols = st.columns(n_cols)
    for i, (_, obj) in enumerate(shown.iterrows()):
        with cols[i % n_cols]:
            text = captions[i] if captions is not None else caption_for(obj)
            if channel is not None:
                shown_png, why = channel_png(run, obj, channel)
                if shown_png is not None:
                    st.image(shown_png, caption=text, width="stretch", output_format="PNG")
                else:
                    st.caption(f"(original file unreadable: {why}) {text}")
            else:
                thumb = run.thumb_bytes(str(obj.get("sha256", "")))
                if thumb is not None:
                    st.image(thumb, caption=text, width="stretch")
                else:
                    st.caption(f"(no thumbnail) {text}")
            st.button("View", key=f"{key_prefix}.view.{int(obj['row'])}.{i}", icon=":material/zoom_in:",
                      on_click=_set_state, args=(focus_key, int(obj["row"])), type="tertiary",
                      help="Show this image large, with its measurements")


def _set_state(key: str, value) -> None:
    st.session_state[key] = value


def object_detail(run: Run, row: int | None, close_key: str) -> None:
    """Large image and its metadata for one object."""
    if row is None:
        return
    df = run.objects
    match = df[df["row"] == row]
    if match.empty:
        return
    obj = match.iloc[0]
    recorded = run_channels(run)
    with st.container(border=True):
        left, right = st.columns([1, 1.4])
        with left:
            if recorded is not None:
                _channel_detail(run, obj, recorded, close_key)
            else:
                image = _large_image(run, obj)
                if image is not None:
                    st.image(image, caption=str(obj.get("path")), width="stretch")
        with right:
            st.markdown(f"**{obj.get('path')}**")
            meta = {k: obj[k] for k in ("label", "split", "width", "height", "mode", "note") if k in obj.index}
            for k in ("anomaly_score", "recon_error", "z_std_mean"):
                if k in obj.index:
                    meta[k] = obj[k]
            latent = {name: obj[col] for name, col in zip(run.dim_names, run.latent_columns, strict=False)}
            morph = {c.removeprefix("morph_").replace("_", " "): obj[c] for c in run.morph_columns}
            st.dataframe(pd.DataFrame({"value": [_fmt(v) for v in meta.values()]},
                                      index=[k.replace("_", " ") for k in meta]), width="stretch")
            tabs = st.tabs(["Latent dims", "Morphology"])
            tabs[0].dataframe(pd.DataFrame({"value": [_fmt(v) for v in latent.values()]}, index=list(latent)),
                              width="stretch")
            tabs[1].dataframe(pd.DataFrame({"value": [_fmt(v) for v in morph.values()]}, index=list(morph)),
                              width="stretch")
            st.button("Close", key=f"{close_key}.close", on_click=_set_state, args=(close_key, None),
                      icon=":material/close:")


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "—" if not np.isfinite(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def _large_image(run: Run, obj: pd.Series):
    """The original image when it is still reachable, else the stored thumbnail."""
    source = str(obj.get("source") or "")
    try:
        from drlcore.data.ingest import ImageRecord, decode, read_bytes  # engine owns decoding (16-bit, TIFF, zip)

        record = ImageRecord(path=str(obj.get("path")), label=obj.get("label"), split=obj.get("split"),
                             source=source)
        return decode(read_bytes(record), _ingest_config()).rgb
    except Exception:  # noqa: BLE001 - the original may be gone; the thumbnail still shows the object
        pass
    thumb = run.thumb_bytes(str(obj.get("sha256", "")))
    if thumb is None:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(thumb))


def run_channels(run: Run) -> dict | None:
    """The run's recorded channels (features manifest ``preprocessing.channels``: ``ranges``,
    ``names``, ``colours``) when its images have more than one channel, else None."""
    chan = (run.features_manifest.get("preprocessing") or {}).get("channels") or {}
    names, ranges = chan.get("names") or [], chan.get("ranges") or []
    if len(names) < 2 or len(ranges) != len(names):
        return None
    return {"names": [str(n) for n in names], "ranges": [list(map(float, r)) for r in ranges],
            "colours": list(chan.get("colours") or [])}


def channel_choice(recorded: dict, key: str, label: str = "Channel", **kwargs) -> int | None:
    """"Composite" plus one choice per recorded channel; None for the composite, else k."""
    names = recorded["names"]
    if st.session_state.get(key, -1) not in range(-1, len(names)):
        st.session_state[key] = -1
    value = st.radio(label, list(range(-1, len(names))), key=key, horizontal=True,
                     format_func=lambda k: "Composite" if k < 0 else names[k], **kwargs)
    return None if value is None or value < 0 else int(value)


@st.cache_data(max_entries=1024, show_spinner=False)
def _channel_png(run_path: str, objects_stamp, source: str, source_stamp, recorded: dict,
                 channel: int | None, tint: bool) -> bytes:
    from PIL import Image

    from drlcore.data.decode import channel_view
    from drlcore.data.ingest import ImageRecord, read_bytes

    data = read_bytes(ImageRecord(path=source, label=None, split=None, source=source))
    buf = io.BytesIO()
    Image.fromarray(channel_view(data, recorded, channel, tint=tint)).save(buf, format="PNG")
    return buf.getvalue()


def channel_png(run: Run, obj: pd.Series, channel: int | None,
                tint: bool = False) -> tuple[bytes | None, str | None]:
    """(PNG of the object's composite or channel k, decoded from its original file with the
    run's recorded ranges, None) or (None, why it could not be read). Cached by run, objects
    stamp and the original file's stamp."""
    from drlcore.data.decode import source_stamp

    recorded = run_channels(run)
    source = str(obj.get("source") or "")
    if recorded is None or not source:
        return None, "the run does not record the object's file or its channels"
    try:
        return _channel_png(str(run.path), run.objects_stamp, source, source_stamp(source),
                            recorded, channel, tint), None
    except Exception as exc:  # noqa: BLE001 - the file may be gone, moved or changed
        return None, str(getattr(exc, "reason", None) or exc)


def _channel_detail(run: Run, obj: pd.Series, recorded: dict, close_key: str) -> None:
    """The viewer of a multi-channel object: the composite or one channel, from the original."""
    names, colours = recorded["names"], recorded["colours"]
    channel = channel_choice(recorded, f"{close_key}.channel",
                             help="Each channel alone, scaled with this run's dataset-wide range "
                                  "for it (the same for every image), decoded from the original file.")
    tint = False
    if channel is not None:
        tint = st.toggle("In its display colour", key=f"{close_key}.tint")
    png, why = channel_png(run, obj, channel, tint)
    path = str(obj.get("path"))
    if png is not None:
        if channel is None:
            caption = f"{path} · composite"
        else:
            lo, hi = recorded["ranges"][channel]
            colour = colours[channel] if channel < len(colours) else "grey"
            caption = (f"{path} · {names[channel]} ({colour} in the composite), "
                       f"{lo:g} to {hi:g} shown as black to {'full colour' if tint else 'white'}")
        st.image(png, caption=caption, width="stretch", output_format="PNG")  # lossless
        return
    what = "the composite" if channel is None else f"channel {names[channel]}"
    st.warning(f"The original file of {path} cannot be read ({why}), so {what} cannot be decoded "
               "from it. Below is the stored composite thumbnail.")
    thumb = run.thumb_bytes(str(obj.get("sha256", "")))
    if thumb is not None:
        st.image(thumb, caption=f"{path} · composite thumbnail", width="stretch")


def _ingest_config():
    from drlcore.data.ingest import IngestConfig

    return IngestConfig()
