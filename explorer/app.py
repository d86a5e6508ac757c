"""drl explorer: entry file. Run with ``drl explore`` or
``streamlit run explorer/app.py -- [--runs-dir DIR] [--run RUN_DIR ...]``.

Sets the page config, the shared sidebar (run picker, chart download format) and the state
defaults once, then hands over to ``st.navigation``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

try:
    import explorer  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.access import parse_serving_args, require_token  # noqa: E402
from explorer.data import is_demo, is_run_dir, list_runs, parse_app_args, resolve_runs_dir  # noqa: E402
from explorer.jobs import show_jobs  # noqa: E402
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


def sidebar(pages: dict) -> None:
    # A page that just finished building a run asks for it here, before the picker exists.
    if "app.request_run" in st.session_state:
        st.session_state["app.run"] = st.session_state.pop("app.request_run")
    runs_dir = Path(st.session_state["app.runs_dir"])
    options = list(dict.fromkeys([*st.session_state["app.extra_runs"], *map(str, list_runs(runs_dir))]))
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
    sidebar(pages)
    nav.run()


main()
