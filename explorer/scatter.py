"""A WebGL scatter map for large maps (10^5 to 10^6+ points): a Streamlit v1 custom component on
the npm package ``regl-scatterplot``, built once with esbuild and shipped in the package
(``explorer/components/scatter/frontend/build``; the sources and build script sit beside it).
Nothing is fetched from a CDN when the app runs.

Pan (drag), zoom (scroll), colour by a categorical or numeric column, lasso selection (toolbar
"Lasso" mode, or shift-drag) returned to Python as row positions, and the image of the hovered
point.

What travels to the browser, per point: x and y as float32 (scaled to [-1, 1]) and one uint8
colour code, as raw ``bytes`` arguments (protobuf bytes, not JSON): 9 bytes a point, 9 MB for
10^6. A categorical column becomes category codes (the 254 most frequent categories, the rest
folded into one "(other)" category) with a palette; a numeric column is quantised to 255 levels
between its min and max (255 = missing) with a 255-colour scale; so every colouring draws the
same way. The selection comes back as base64 of uint32 positions in a small JSON value.

Hover captions and images cannot travel with the points at this scale (a million file names is
tens of MB), so the browser fetches them lazily: :func:`write_hover_index` writes the caption and
image file name of each point into JSON chunks of ``CHUNK`` points in a cache folder, and both
that folder and the image folder are served by Streamlit's own component file route (a
component declared with ``path=``), so the hovered point's chunk (once per 1024 points) and its
thumbnail come from the app server itself: offline, no rerun of the script. An image may be a
byte range of a larger file (a run's thumbnail shard, :class:`drlcore.data.rundir.Thumbs`): the route
serves whole files only, so the browser fetches the shard once (a few MB, kept for the next
hovers) and cuts the thumbnail out of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from drlcore.data.cache import cache_root
from drlcore.io import atomic_write_text

__all__ = ["BUILD_DIR", "CHUNK", "MAX_CATEGORIES", "WEBGL_MIN_POINTS", "HoverSource", "Encoded",
           "encode_points", "decode_selection", "write_hover_index", "scatter_map", "draw_encoded",
           "webgl_wanted", "class_map_webgl"]

BUILD_DIR = Path(__file__).parent / "components" / "scatter" / "frontend" / "build"
CHUNK = 1024
MAX_CATEGORIES = 254  # codes 0..253 are categories, 254 "(other)" when folded, 255 missing
MISSING_CODE = 255
OTHER_LABEL = "(other)"
_CATEGORY_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
                     "#000000")  # Okabe-Ito, as on the Plotly map
_MISSING_COLOUR = "#b8bec6"


@dataclass(frozen=True)
class Encoded:
    """What :func:`scatter_map` sends: JSON ``meta`` and the raw typed arrays."""

    meta: dict
    xy: bytes  # float32 x[0..n) then y[0..n), in [-1, 1]
    codes: bytes  # uint8 per point

    @property
    def nbytes(self) -> int:
        return len(self.xy) + len(self.codes)


@dataclass(frozen=True)
class HoverSource:
    """Hover captions and images for each point, fetched by the browser only when hovered.

    ``captions[i]`` is shown for point i; ``files[i]`` is the name of its image inside
    ``folder`` (None or "" for none), or ``(name, offset, length)`` for an image that is a byte
    range of that file (offset -1: the whole file). ``key`` names this content cheaply (for
    example the objects table's path and stamp); without it the content is hashed on each
    call."""

    captions: Sequence[str] | None = None
    folder: Path | None = None
    files: Sequence[str | None] | None = None
    key: str | None = field(default=None)


def _continuous_palette(scale: str) -> list[str]:
    from plotly.colors import sample_colorscale

    steps = [i / 254 for i in range(255)]
    colours = sample_colorscale(scale, steps, colortype="rgb")
    out = []
    for c in colours:  # "rgb(r, g, b)" -> "#rrggbb" (regl-scatterplot reads hex)
        r, g, b = (int(round(float(v))) for v in re.findall(r"[\d.]+", c)[:3])
        out.append(f"#{r:02x}{g:02x}{b:02x}")
    return out


def encode_points(x, y, color=None, *, categorical: bool | None = None, title: str = "",
                  palette: dict[str, str] | Sequence[str] | None = None,
                  colour_scale: str = "Viridis", category_order: Sequence[str] | None = None,
                  missing_label: str = "(no label)") -> Encoded:
    """Points -> compact arrays and their legend. Pure: no Streamlit.

    ``color`` is None (one colour), a numeric array (continuous, unless ``categorical``) or
    anything else (categorical; missing values become ``missing_label``). ``palette`` maps
    category -> colour (or lists colours in category order). Points with a non-finite x or y
    are placed at the centre (and coloured as missing on a numeric colouring)."""
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    n = len(xs)
    if len(ys) != n:
        raise ValueError(f"x has {n} values but y has {len(ys)}")
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    # One scale for both axes keeps the map's aspect ratio (UMAP/PCA distances mean something).
    good_x, good_y = xs[~bad], ys[~bad]
    if len(good_x):
        cx = (good_x.min() + good_x.max()) / 2
        cy = (good_y.min() + good_y.max()) / 2
        half = max(good_x.max() - good_x.min(), good_y.max() - good_y.min()) / 2
    else:
        cx = cy = 0.0
        half = 0.0
    half = half if half > 0 else 1.0
    # 0.95 leaves a margin so the outermost points are not cut by the frame.
    sx = np.where(bad, 0.0, (xs - cx) / half * 0.95).astype(np.float32)
    sy = np.where(bad, 0.0, (ys - cy) / half * 0.95).astype(np.float32)
    xy = np.concatenate([sx, sy]).tobytes()

    meta: dict[str, Any] = {"n": n, "title": title, "mode": "none", "categories": [], "palette": [],
                            "vmin": None, "vmax": None,
                            "extent": [float(cx - half), float(cx + half), float(cy - half), float(cy + half)]}
    codes = np.zeros(n, np.uint8)
    if color is not None:
        series = color.reset_index(drop=True) if isinstance(color, pd.Series) else pd.Series(color)
        if len(series) != n:
            raise ValueError(f"color has {len(series)} values for {n} points")
        numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
        if categorical is None:
            categorical = not numeric
        if categorical:
            codes, names = _category_codes(series, missing_label, category_order)
            meta.update(mode="categorical", categories=names,
                        palette=_category_palette(names, palette, missing_label))
        else:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            finite = np.isfinite(values)
            lo = float(values[finite].min()) if finite.any() else None
            hi = float(values[finite].max()) if finite.any() else None
            codes = np.full(n, MISSING_CODE, np.uint8)
            if finite.any():
                span = hi - lo
                q = np.zeros(int(finite.sum())) if span <= 0 else (values[finite] - lo) / span * 254
                codes[finite] = np.clip(np.rint(q), 0, 254).astype(np.uint8)
            meta.update(mode="continuous", vmin=lo, vmax=hi,
                        palette=[*_continuous_palette(colour_scale), _MISSING_COLOUR])
    if bad.any() and meta["mode"] == "continuous":
        codes[bad] = MISSING_CODE
    digest = hashlib.blake2b(xy, digest_size=16)
    digest.update(codes.tobytes())
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    meta["token"] = digest.hexdigest()
    return Encoded(meta=meta, xy=xy, codes=codes.tobytes())


def _category_codes(series: pd.Series, missing_label: str,
                    order: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    # factorize once (fast on 10^6 strings), then name, order and fold the few distinct values.
    raw_codes, uniques = pd.factorize(series, use_na_sentinel=True)
    names_of = [str(u) for u in uniques]
    if (raw_codes < 0).any():
        raw_codes = np.where(raw_codes < 0, len(names_of), raw_codes)
        names_of.append(missing_label)
    counts = np.bincount(raw_codes, minlength=len(names_of))
    totals: dict[str, int] = {}
    for name, c in zip(names_of, counts, strict=True):  # distinct values may share a string
        totals[name] = totals.get(name, 0) + int(c)
    if order is not None:
        wanted = [str(c) for c in order]
        names = [c for c in wanted if c in totals]
        names += sorted(c for c in totals if c not in set(names))
    else:
        names = sorted(totals)
    if len(names) > MAX_CATEGORIES:
        frequent = sorted(totals, key=lambda c: (-totals[c], c))[:MAX_CATEGORIES - 1]
        keep = set(frequent)
        names = [c for c in names if c in keep] + [OTHER_LABEL]
    lookup = {name: i for i, name in enumerate(names)}
    other = lookup.get(OTHER_LABEL, 0)
    to_final = np.array([lookup.get(name, other) for name in names_of], dtype=np.uint8)
    return to_final[raw_codes] if len(raw_codes) else np.zeros(0, np.uint8), names


def _category_palette(names: list[str], palette, missing_label: str) -> list[str]:
    if isinstance(palette, dict):
        return [palette.get(n, _MISSING_COLOUR if n in (missing_label, OTHER_LABEL) else
                            _CATEGORY_COLOURS[i % len(_CATEGORY_COLOURS)]) for i, n in enumerate(names)]
    if palette is not None:
        colours = list(palette)
        return [colours[i % len(colours)] for i in range(len(names))]
    out, k = [], 0
    for n in names:
        if n in (missing_label, OTHER_LABEL):
            out.append(_MISSING_COLOUR)
        else:
            out.append(_CATEGORY_COLOURS[k % len(_CATEGORY_COLOURS)])
            k += 1
    return out


def decode_selection(value) -> list[int]:
    """The component's value -> sorted point positions ([] for none)."""
    if not value or not isinstance(value, dict) or not value.get("selection"):
        return []
    raw = base64.b64decode(value["selection"])
    if len(raw) % 4:
        raise ValueError("selection bytes are not a whole number of uint32")
    return np.unique(np.frombuffer(raw, dtype="<u4")).astype(int).tolist()


def _hover_digest(source: HoverSource, n: int) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{n}|{source.folder}|".encode())
    if source.key is not None:
        h.update(source.key.encode())
    else:
        for part in (source.captions, source.files):
            h.update(b"\0" if part is None else "\x1f".join("" if v is None else str(v) for v in part).encode())
    return h.hexdigest()


def _resolved(value):
    return value() if callable(value) else value


def write_hover_index(source: HoverSource, n: int, root: Path | None = None) -> Path:
    """Write (once) the JSON chunks ``<k>.json`` = ``[[file, caption], ...]`` for points
    ``k*CHUNK ..`` (``[file, caption, offset, length]`` for a byte range of ``file``); returns
    their folder (under the cache root's ``scatter-hover/``).
    ``captions`` and ``files`` may be callables: with a ``key`` they are called only when the
    folder for that key is not complete yet."""
    if source.key is None:
        source = HoverSource(_resolved(source.captions), source.folder, _resolved(source.files))
    folder = (root or cache_root() / "scatter-hover") / _hover_digest(source, n)
    done = folder / "complete"
    if done.exists():
        return folder
    captions, files = _resolved(source.captions), _resolved(source.files)
    for name, part in (("captions", captions), ("files", files)):
        if part is not None and len(part) != n:
            raise ValueError(f"hover {name} has {len(part)} values for {n} points")
    folder.mkdir(parents=True, exist_ok=True)
    captions = None if captions is None else np.asarray(captions, dtype=object)
    files = None if files is None else list(files)  # entries may be (name, offset, length)
    for k, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        rows = [_hover_row(None if files is None else files[i],
                           None if captions is None else captions[i])
                for i in range(start, stop)]
        atomic_write_text(folder / f"{k}.json", json.dumps(rows, separators=(",", ":")))
    atomic_write_text(done, str(n))
    return folder


def _hover_row(file, caption) -> list:
    text = "" if caption is None else str(caption)
    if isinstance(file, (tuple, list)):
        name, offset, length = file
        if not name:
            return [None, text]
        if offset is not None and int(offset) >= 0:
            return [str(name), text, int(offset), int(length)]
        return [str(name), text]
    return [str(file) if file else None, text]


def _declare(name: str, path: Path):
    import streamlit.components.v1 as components

    return components.declare_component(name, path=str(path))


def _route(component) -> str:
    """The URL of a declared folder as seen from the scatter component's page
    (``/component/<name>/index.html``): its sibling ``../<name>/``."""
    return f"../{component.name}/"


def scatter_map(x, y, color=None, labels: Sequence[str] | None = None, key: str | None = None, *,
                title: str = "", categorical: bool | None = None,
                palette: dict[str, str] | Sequence[str] | None = None, colour_scale: str = "Viridis",
                images: tuple[Path, Sequence[str | None]] | None = None, hover_key: str | None = None,
                selected: Sequence[int] | None = None, height: int = 560,
                point_size: float | None = None, on_change=None) -> list[int]:
    """Draw a WebGL scatter map; return the positions (0..n-1) of the lasso-selected points.

    ``labels`` are hover captions per point; ``images`` is ``(folder, file name per point)`` for
    the hover image; ``hover_key`` names the hover content cheaply (else it is hashed);
    ``selected`` (optional) is the selection to show: pass back what was returned to keep it
    and [] to clear it; None leaves the selection to the browser."""
    encoded = encode_points(x, y, color, categorical=categorical, title=title, palette=palette,
                            colour_scale=colour_scale)
    return draw_encoded(encoded, key=key, labels=labels, images=images, hover_key=hover_key,
                        selected=selected, height=height, point_size=point_size, on_change=on_change)


def draw_encoded(encoded: Encoded, key: str | None = None, *, labels=None, images=None,
                 hover_key: str | None = None, selected: Sequence[int] | None = None,
                 height: int = 560, point_size: float | None = None, on_change=None) -> list[int]:
    """:func:`scatter_map` for points already encoded (a caller may cache :func:`encode_points`).
    ``labels`` and ``images[1]`` may be callables returning the sequences: they are only called
    when the hover index for ``hover_key`` is not written yet."""
    n = encoded.meta["n"]
    meta = dict(encoded.meta, height=int(height), point_size=point_size, images=None)
    component = _declare("drl_scatter", BUILD_DIR)
    if labels is not None or images is not None:
        folder, files = images if images is not None else (None, None)
        source = HoverSource(captions=labels, folder=Path(folder) if folder else None, files=files,
                             key=hover_key)
        index_dir = write_hover_index(source, n)
        index = _declare(f"hover_{index_dir.name}", index_dir)
        files_route = None
        if folder is not None:
            tag = hashlib.blake2b(str(Path(folder).resolve()).encode(), digest_size=8).hexdigest()
            files_route = _route(_declare(f"images_{tag}", Path(folder)))
        meta["images"] = {"index": _route(index), "files": files_route, "chunk": CHUNK}
    extra = {}
    if selected is not None:  # controlled: the plot shows exactly this selection
        chosen = np.asarray(selected, dtype=np.int64).ravel()
        extra["selected"] = np.unique(chosen[(chosen >= 0) & (chosen < n)]).astype("<u4").tobytes()
        # Streamlit re-renders a component when its JSON arguments change, not its bytes: name
        # the selection in JSON so a new one reaches the browser.
        extra["selection_token"] = hashlib.blake2b(extra["selected"], digest_size=8).hexdigest()
    value = component(meta=meta, xy=encoded.xy, codes=encoded.codes, key=key, default=None,
                      on_change=on_change, **extra)
    if value is None and key is not None:
        value = st.session_state.get(key)
    return decode_selection(value)


# --------------------------------------------------------------------------- the class map page

WEBGL_MIN_POINTS = 100_000  # above this the class map draws with WebGL; Plotly below
REPORT_SAMPLE = 20_000  # points of the (Plotly) map figure that goes into an HTML report


def webgl_wanted(n: int) -> bool:
    """Whether the class map draws with WebGL: always above :data:`WEBGL_MIN_POINTS` objects,
    else when the user ticks the box."""
    if n > WEBGL_MIN_POINTS:
        st.caption(f"{n:,} objects: the map is drawn with WebGL (Plotly is used up to "
                   f"{WEBGL_MIN_POINTS:,}).")
        return True
    return st.checkbox("WebGL map (hover shows the image)", key="map.webgl",
                       help="Draw the map with WebGL (regl-scatterplot): pans and zooms smoothly at "
                            "a million points and shows each object's image on hover. Plotly's map "
                            "(box select, modebar export) is used otherwise.")


def _index_of_rows(df: pd.DataFrame, rows: Sequence[int]) -> np.ndarray:
    return np.flatnonzero(df["row"].isin(list(rows)).to_numpy()) if len(rows) else np.zeros(0, int)


def class_map_webgl(run, df: pd.DataFrame, x_col: str, y_col: str, colour_col: str | None,
                    continuous: bool, title: str | None, *, key: str = "map.webgl_chart",
                    flagged: np.ndarray | None = None, background: pd.DataFrame | None = None):
    """The class map's WebGL path. The selection lives where the Plotly path keeps it
    (``map.selected`` holds object rows, ``map.focus`` the one clicked); hover shows the
    object's thumbnail and name. Returns a Plotly figure of a seeded sample of
    :data:`REPORT_SAMPLE` objects for the page's HTML report."""
    from drlcore.data import rundir
    from explorer.figures import MISSING_LABEL, latent_map

    title = title or (colour_col or "")
    encoded = _encoded_map(str(run.path), run.objects_stamp, df, x_col, y_col, colour_col, continuous, title)
    hover_key = f"{run.path}@{run.objects_stamp}@{run.thumbs_stamp}"

    def captions():
        text = df["path"].astype(str).map(lambda p: Path(p).name)
        if "label" in df:
            text = text + " · " + df["label"].astype("string").fillna(MISSING_LABEL)
        return text.tolist()

    def files():
        """Where each point's thumbnail lies in the run's thumbs folder (a shard's byte range,
        or a whole file in runs written before the shards)."""
        if "sha256" not in df:
            return None
        names, offsets, lengths = run.thumbs.locations(df["sha256"].astype(str))
        return list(zip(names, offsets.tolist(), lengths.tolist()))

    # A new selection from the browser (its event id differs from the last one seen) becomes the
    # page's selection before the map is drawn, so the map is sent the selection it just made.
    value = st.session_state.get(key)
    event = value.get("seq") if isinstance(value, dict) else None
    if event is not None and event != st.session_state.get(f"{key}.seen"):
        st.session_state[f"{key}.seen"] = event
        positions = decode_selection(value)
        rows = df["row"].to_numpy()[positions].astype(int).tolist() if positions else []
        st.session_state["map.selected"] = rows
        st.session_state["map.focus"] = rows[0] if len(rows) == 1 else None
    selected = _index_of_rows(df, st.session_state.get("map.selected", []))
    draw_encoded(encoded, key=key, labels=captions, images=(run.path / rundir.THUMBS, files), hover_key=hover_key,
                 selected=selected, height=600)
    notes = ["Drag to pan, scroll to zoom; choose Lasso (or shift-drag) to select a group and "
             "compare it with the rest; hover a point for its image; click one to open it."]
    if flagged is not None and np.any(flagged):
        notes.append("Anomaly rings are drawn on the Plotly map only (untick WebGL below 100k objects).")
    if background is not None and len(background):
        notes.append("The other run is placed on the Plotly map only.")
    st.caption(" ".join(notes))
    sample = df if len(df) <= REPORT_SAMPLE else df.sample(REPORT_SAMPLE, random_state=0)
    fig = latent_map(sample, x_col, y_col, colour_col, continuous, colour_title=title)
    if len(sample) < len(df):
        fig.update_layout(title=f"Seeded random sample of {len(sample):,} of {len(df):,} objects")
    return fig


@st.cache_resource(max_entries=4, show_spinner=False)
def _encoded_map(path: str, stamp, _df: pd.DataFrame, x_col: str, y_col: str, colour_col: str | None,
                 continuous: bool, title: str) -> Encoded:
    """:func:`encode_points` for a run's map, kept across reruns (the same object, no copy).
    The run path and objects stamp name the table (``_df`` is not hashed: 10^6 rows)."""
    from explorer.figures import MISSING_LABEL, class_colours

    color, palette, scale = None, None, "Viridis"
    if colour_col is not None and colour_col in _df:
        color = _df[colour_col]
        if continuous:
            scale = "Cividis" if colour_col.startswith("anomaly") else "Viridis"
        else:
            names = sorted(str(v) for v in color.astype("string").fillna(MISSING_LABEL).unique())
            palette = {g: c for g, (c, _) in class_colours(names).items()}
    return encode_points(_df[x_col].to_numpy(), _df[y_col].to_numpy(), color, categorical=not continuous,
                         title=title, palette=palette, colour_scale=scale, missing_label=MISSING_LABEL)
