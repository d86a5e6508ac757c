"""drl explorer: entry file. Run with ``drl explore`` or
``streamlit run explorer/app.py -- [--runs-dir DIR] [--run RUN_DIR ...]``.

Sets the page config, the shared sidebar (run picker, chart download format, saved views) and
the state defaults once, then hands over to ``st.navigation``.

Views are shareable (explorer.share): the page is the URL's path, the rest of what it shows is in
the query string, restored when a browser session opens with one and rewritten on every run; a
view saved by name goes into the run folder (``RUN/views/<name>.json``) and reopens from the
sidebar.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import streamlit as st

try:
    import explorer  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drlcore.data import rundir  # noqa: E402
from drlcore.errors import DrlError  # noqa: E402
from explorer import share  # noqa: E402
from explorer.access import parse_serving_args, require_token  # noqa: E402
from explorer.data import is_demo, is_run_dir, list_runs, parse_app_args, resolve_runs_dir  # noqa: E402
from explorer.jobs import show_jobs, unwatch  # noqa: E402
from explorer.ui import init_state, keep_state  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "views"  # not pages/: Streamlit would also serve that folder as legacy pages


def _startup() -> None:
    """Once per browser session: where runs live, and which run opens first."""
    if "app.runs_dir" in st.session_state:
        return
    args = parse_app_args(sys.argv[1:])
    runs_dir = resolve_runs_dir(args.runs_dir)
    extra = [str(Path(p).expanduser().resolve()) for p in args.run]
    st.session_state["app.runs_dir"] = str(runs_dir)
    st.session_state["app.extra_runs"] = extra
    st.session_state["app.pipeline_settings_file"] = args.pipeline_config
    serving = parse_serving_args(sys.argv[1:])
    st.session_state["app.data_roots"] = [str(Path(r).expanduser().resolve()) for r in serving.data_root]
    st.session_state["app.min_free_mb"] = serving.min_free_mb
    st.session_state["app.max_upload_mb"] = serving.max_upload_mb
    init_state()
    if st.session_state["app.run"] is None:
        # Named runs first; else the demo (list_runs puts it first), else the newest run.
        candidates = [p for p in extra if is_run_dir(Path(p))] + [str(p) for p in list_runs(runs_dir)]
        st.session_state["app.run"] = candidates[0] if candidates else None
        # First launch with nothing to show: the Datasets page builds the demo, with progress.
        st.session_state["app.autobuild_demo"] = not candidates and not extra


def _run_label(path: str) -> str:
    p = Path(path)
    return f"{p.name} (demo)" if is_demo(p) else p.name


def _copy_state(source: str, target: str) -> None:
    st.session_state[target] = st.session_state[source]


def _run_options() -> list[str]:
    runs_dir = Path(st.session_state["app.runs_dir"])
    return list(dict.fromkeys([*st.session_state["app.extra_runs"], *map(str, list_runs(runs_dir))]))


def _note(kind: str, text: str) -> None:
    st.session_state["app.view_note"] = (kind, text)


def _apply_view(params: dict, page: str, source: str) -> None:
    """Session state from a link's or a saved view's parameters, before any widget is drawn."""
    problems = []
    name = (params.get("run") or [None])[-1]
    if name:
        match = next((p for p in _run_options() if Path(p).name == name), None)
        if match:
            st.session_state["app.run"] = match
        else:
            problems.append(f"run {name!r} is not among this server's runs")
    state, unreadable = share.state_from_params(params, page)
    for key, value in state.items():
        st.session_state[key] = value
    if unreadable:
        problems.append("could not read " + ", ".join(unreadable))
    if problems:
        _note("warning", f"{source}: " + "; ".join(problems) + ".")


def _restore_from_url(page: str) -> None:
    """Once per browser session: a link's parameters become the view."""
    if st.session_state.get("app.url_restored"):
        return
    st.session_state["app.url_restored"] = True
    params = {key: st.query_params.get_all(key) for key in st.query_params.keys()}
    if set(params) & share.owned_names():
        _apply_view(params, page, "This link")


def _open_requested_view(pages: dict, page: str) -> None:
    """A saved view picked in the sidebar (the callback only asks): its state, then its page."""
    view = st.session_state.pop("app.request_view", None)
    if not view:
        return
    target = view.get("page") if view.get("page") in pages else page
    params = {k: ([v] if isinstance(v, str) else list(v)) for k, v in (view.get("params") or {}).items()
              if k != "run"}  # the view belongs to the run whose folder holds it, the one open
    _apply_view(params, target, f"Saved view {view['name']!r}")
    if "app.view_note" not in st.session_state:
        _note("success", f"Opened the saved view {view['name']!r}.")
    if target != page:
        st.switch_page(pages[target])


def _write_url(page: str) -> None:
    """The address bar follows what is on screen, so it can be bookmarked or sent."""
    run = st.session_state.get("app.run")
    params, left_out = share.view_params(st.session_state, page, Path(run).name if run else None)
    flat = share.flatten(params)
    owned = share.owned_names()
    for key in list(st.query_params.keys()):
        if key in owned and key not in flat:
            del st.query_params[key]
    for key, value in flat.items():
        if st.query_params.get_all(key) != (value if isinstance(value, list) else [value]):
            st.query_params[key] = value
    st.session_state["app.url_left_out"] = left_out


def _save_view() -> None:
    run = st.session_state.get("app.run")
    name = (st.session_state.get("app.view_name") or "").strip()
    page = st.session_state.get("app.page", "datasets")
    if not run:
        return
    params, _ = share.view_params(st.session_state, page, Path(run).name, max_rows_chars=None)
    try:
        rundir.save_view(run, name, {"page": page, "params": params,
                                     "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    except (DrlError, OSError) as exc:
        _note("error", f"The view was not saved: {exc}")
    else:
        _note("success", f"Saved the view {name!r} in {Path(run).name}/{rundir.VIEWS}/.")


def _pick_view() -> None:
    name = st.session_state.get("app.view_pick")
    st.session_state["app.view_pick"] = None
    run = st.session_state.get("app.run")
    if not name or not run:
        return
    try:
        st.session_state["app.request_view"] = {**rundir.read_view(run, name), "name": name}
    except DrlError as exc:
        _note("error", str(exc))


def _views_panel() -> None:
    run = st.session_state.get("app.run")
    note = st.session_state.pop("app.view_note", None)
    with st.expander("Views", icon=":material/bookmark:", expanded=note is not None):
        st.caption("The address bar holds this view (page, run, choices): copy it to share or bookmark it.")
        left_out = st.session_state.get("app.url_left_out") or []
        if left_out:
            st.caption("The map selection is too large for a link; save the view to keep it.")
        if run:
            names = rundir.list_views(run)
            st.text_input("Name", key="app.view_name", placeholder="e.g. platelets vs rest")
            st.button("Save this view", key="app.view_save", on_click=_save_view, icon=":material/bookmark_add:",
                      help="Into the run folder, so everyone who opens this run finds it.")
            if names:
                st.selectbox("Saved views", names, index=None, key="app.view_pick", on_change=_pick_view,
                             placeholder="Open a saved view")
        if note is not None:
            kind, text = note
            {"success": st.success, "warning": st.warning}.get(kind, st.error)(text)


def sidebar(pages: dict) -> None:
    # A page that just finished building a run asks for it here, before the picker exists.
    if "app.request_run" in st.session_state:
        st.session_state["app.run"] = st.session_state.pop("app.request_run")
        unwatch(st.session_state["app.run"])
    runs_dir = Path(st.session_state["app.runs_dir"])
    options = _run_options()
    current = st.session_state.get("app.run")
    if current and current not in options:
        options.insert(0, current)
    with st.sidebar:
        st.caption("What did the network learn from your images?")
        if options:
            # Widget keys are dropped when the page changes, so the choice lives in "app.run"
            # and the widget ("app.run_picker") only mirrors it.
            st.session_state["app.run_picker"] = current
            st.selectbox("Run", options, key="app.run_picker", format_func=_run_label,
                         on_change=_copy_state, args=("app.run_picker", "app.run"),
                         help=f"Runs are read from {runs_dir}")
        else:
            st.info("No runs yet.")
        st.page_link(pages["datasets"], label="Add data", icon=":material/add_circle:")
        show_jobs(runs_dir, compact=True)  # a running job shows on every page
        st.divider()
        st.session_state["ui.image_format_picker"] = st.session_state["ui.image_format"]
        st.radio("Chart download format", ["svg", "png"], key="ui.image_format_picker", horizontal=True,
                 on_change=_copy_state, args=("ui.image_format_picker", "ui.image_format"),
                 format_func=str.upper,
                 help="The camera icon above each chart saves it in this format, for slides and papers.")
        _views_panel()


_CSS = """
<style>
html, body, [class*="css"] { font-size: 16px; }
[data-testid="stImageCaption"], [data-testid="stCaptionContainer"] { font-size: 14px; }
div[data-testid="stMetricValue"] { font-size: 1.8rem; }
</style>
"""


def main() -> None:
    st.set_page_config(page_title="drl explorer", page_icon=":material/biotech:", layout="wide")
    st.html(_CSS)
    st.logo(str(Path(__file__).resolve().parent / "static" / "logo.svg"), size="large")
    require_token()
    _startup()
    keep_state()
    pages = {
        "datasets": st.Page(PAGES_DIR / "datasets.py", title="Datasets", icon=":material/folder_open:", default=True),
        "traversals": st.Page(PAGES_DIR / "traversals.py", title="Latent axes", icon=":material/linear_scale:"),
        "correlations": st.Page(PAGES_DIR / "correlations.py", title="Correlations", icon=":material/grid_on:"),
        "class_map": st.Page(PAGES_DIR / "class_map.py", title="Class map", icon=":material/scatter_plot:"),
        "anomalies": st.Page(PAGES_DIR / "anomalies.py", title="Anomalies", icon=":material/crisis_alert:"),
        "source_model": st.Page(PAGES_DIR / "source_model.py", title="Source model", icon=":material/model_training:"),
    }
    nav = st.navigation({"Data": [pages["datasets"]],
                         "Explore": [pages["traversals"], pages["correlations"], pages["class_map"],
                                     pages["anomalies"]],
                         "Model": [pages["source_model"]]})
    page = next((key for key, p in pages.items() if p.url_path == nav.url_path), "datasets")
    st.session_state["app.page"] = page
    _restore_from_url(page)
    _open_requested_view(pages, page)
    sidebar(pages)
    _write_url(page)
    nav.run()


main()
