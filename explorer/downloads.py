"""Files the app hands out, made by the engine: the run as ``drl export`` writes it (h5ad, CSV,
Parquet) and a stamped axis montage as ``drl figures`` draws it (PNG, SVG).

The engine writes files; here each is written into a private temporary folder and its bytes
returned, so what a browser downloads is byte for byte what the command line would have written.
The bytes are made only when the button is pressed (Streamlit's deferred download), never on an
ordinary rerun: an h5ad of a large run is tens of megabytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import streamlit as st

EXPORT_MIME = {"h5ad": "application/x-hdf5", "csv": "text/csv",
               "parquet": "application/vnd.apache.parquet"}
FIGURE_MIME = {"png": "image/png", "svg": "image/svg+xml"}


def export_bytes(run_dir: str | Path, fmt: str, with_features: bool = False) -> bytes:
    """The bytes ``drl export RUN --format fmt`` writes."""
    from drlcore.runs.export import export_run

    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="drl-export-") as tmp:
        out = export_run(run_dir, Path(tmp) / f"{run_dir.name}.{fmt}", fmt, with_features=with_features)
        return out.read_bytes()


def montage_bytes(run_dir: str | Path, dim: int, fmt: str, n_steps: int = 9, n_rows: int = 3,
                  label: str | None = None) -> bytes:
    """The bytes of the stamped montage of latent axis ``dim`` (``drl figures``' axis
    figure, optionally of one class)."""
    from drlcore.runs.slides import SlideConfig, write_axis_montage

    config = SlideConfig(formats=(fmt,), n_steps=n_steps, n_rows=n_rows, label=label or None)
    with tempfile.TemporaryDirectory(prefix="drl-montage-") as tmp:
        (path,) = write_axis_montage(run_dir, dim, tmp, config)
        return path.read_bytes()


def file_download(label: str, build: Callable[[], bytes], file_name: str, mime: str, key: str,
                  help: str | None = None) -> None:
    """A download button whose bytes are built when it is pressed."""
    st.download_button(label, data=build, file_name=file_name, mime=mime, key=key,
                       icon=":material/download:", on_click="ignore", help=help)
