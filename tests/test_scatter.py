"""The WebGL scatter map's Python side (explorer/scatter.py): what it sends to the browser
(float32 x/y in [-1, 1], one uint8 colour code a point, the legend), how it reads the lasso
selection back, the lazily fetched hover index, and the component call under AppTest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drlcore.data import rundir
from explorer.scatter import (BUILD_DIR, CHUNK, MAX_CATEGORIES, HoverSource, decode_selection,
                              encode_points, write_hover_index)


def _xy(encoded):
    xy = np.frombuffer(encoded.xy, dtype=np.float32)
    n = encoded.meta["n"]
    return xy[:n], xy[n:]


def _codes(encoded):
    return np.frombuffer(encoded.codes, dtype=np.uint8)


def test_the_built_component_is_in_the_package():
    assert (BUILD_DIR / "index.html").is_file()
    js = BUILD_DIR / "scatter.js"
    assert js.is_file() and 50_000 < js.stat().st_size < 1_000_000
    html = (BUILD_DIR / "index.html").read_text()
    assert 'src="scatter.js"' in html and "http" not in html  # nothing from a CDN


def test_positions_are_float32_in_the_unit_square_with_one_scale():
    x = np.array([10.0, 20.0, 30.0, 40.0])
    y = np.array([5.0, 6.0, 7.0, 5.0])
    enc = encode_points(x, y)
    assert len(enc.xy) == 4 * 2 * 4 and len(enc.codes) == 4
    sx, sy = _xy(enc)
    assert np.all(np.abs(sx) <= 0.95 + 1e-6) and np.all(np.abs(sy) <= 0.95 + 1e-6)
    assert sx.min() == pytest.approx(-0.95) and sx.max() == pytest.approx(0.95)
    # Same scale on both axes: y's range (2) over x's range (30) is kept.
    assert (sy.max() - sy.min()) / (sx.max() - sx.min()) == pytest.approx(2 / 30, rel=1e-5)
    # Back to data units through the recorded extent.
    x0, x1, y0, y1 = enc.meta["extent"]
    assert x0 + (sx + 0.95) / 1.9 * (x1 - x0) == pytest.approx(x, rel=1e-5)
    assert enc.meta["mode"] == "none" and enc.meta["n"] == 4


def test_one_point_and_bad_coordinates_do_not_break_the_scale():
    enc = encode_points([3.0], [4.0])
    assert _xy(enc)[0][0] == 0 and _xy(enc)[1][0] == 0
    enc = encode_points([0.0, np.nan, 2.0], [0.0, 1.0, np.inf], color=[1.0, 2.0, 3.0])
    sx, sy = _xy(enc)
    assert np.isfinite(sx).all() and np.isfinite(sy).all()
    assert _codes(enc)[1] == 255 and _codes(enc)[2] == 255  # drawn as missing
    with pytest.raises(ValueError, match="y has"):
        encode_points([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="color has"):
        encode_points([1.0, 2.0], [1.0, 2.0], color=[1.0])


def test_categorical_colour_codes_legend_and_palette():
    labels = pd.Series(["b", None, "a", "b", "c"])
    enc = encode_points(np.arange(5.0), np.arange(5.0), labels, title="Class",
                        palette={"a": "#111111", "b": "#222222"})
    meta = enc.meta
    assert meta["mode"] == "categorical" and meta["title"] == "Class"
    assert meta["categories"] == ["(no label)", "a", "b", "c"]
    names = [meta["categories"][c] for c in _codes(enc)]
    assert names == ["b", "(no label)", "a", "b", "c"]
    assert meta["palette"][1:3] == ["#111111", "#222222"]
    assert meta["palette"][0] == "#b8bec6"  # missing is grey
    # A string column and a pandas categorical of it encode the same.
    same = encode_points(np.arange(5.0), np.arange(5.0), labels.astype("category"), title="Class",
                         palette={"a": "#111111", "b": "#222222"})
    assert same.codes == enc.codes and same.meta["token"] == enc.meta["token"]


def test_numbers_can_be_categories_and_order_is_kept():
    enc = encode_points(np.zeros(4), np.zeros(4), np.array([3, 1, 3, 2]), categorical=True)
    assert enc.meta["categories"] == ["1", "2", "3"]
    assert _codes(enc).tolist() == [2, 0, 2, 1]
    enc = encode_points(np.zeros(3), np.zeros(3), ["x", "y", "z"], category_order=["z", "x"])
    assert enc.meta["categories"] == ["z", "x", "y"]


def test_more_categories_than_codes_fold_the_rarest_into_other():
    n_cat = MAX_CATEGORIES + 40
    # category k appears k + 1 times: the rarest are the low numbers.
    labels = np.concatenate([np.full(k + 1, f"c{k:03d}") for k in range(n_cat)])
    enc = encode_points(np.zeros(len(labels)), np.zeros(len(labels)), labels)
    names = enc.meta["categories"]
    assert len(names) == MAX_CATEGORIES and names[-1] == "(other)"
    assert len(enc.meta["palette"]) == len(names)
    codes = _codes(enc)
    assert codes.max() < len(names)
    kept = set(names[:-1])
    assert f"c{n_cat - 1:03d}" in kept and "c000" not in kept
    decoded = np.array([names[c] for c in codes])
    assert np.all((decoded == labels) | (decoded == "(other)"))
    assert np.all(decoded[np.isin(labels, list(kept))] == labels[np.isin(labels, list(kept))])


def test_numeric_colour_is_quantised_between_min_and_max():
    values = np.array([2.0, 4.0, np.nan, 3.0, 2.5])
    enc = encode_points(np.arange(5.0), np.arange(5.0), values, title="area")
    meta = enc.meta
    assert meta["mode"] == "continuous" and meta["vmin"] == 2.0 and meta["vmax"] == 4.0
    assert _codes(enc).tolist() == [0, 254, 255, 127, 64]
    assert len(meta["palette"]) == 256 and all(c.startswith("#") and len(c) == 7 for c in meta["palette"])
    # A constant column and an all-missing one still encode.
    assert _codes(encode_points(np.zeros(3), np.zeros(3), np.ones(3))).tolist() == [0, 0, 0]
    empty = encode_points(np.zeros(2), np.zeros(2), np.full(2, np.nan))
    assert _codes(empty).tolist() == [255, 255] and empty.meta["vmin"] is None
    json.dumps(empty.meta)  # the legend travels as JSON


def test_token_follows_the_content():
    x, y = np.arange(4.0), np.arange(4.0)
    a = encode_points(x, y, ["a", "b", "a", "b"])
    assert encode_points(x, y, ["a", "b", "a", "b"]).meta["token"] == a.meta["token"]
    assert encode_points(x, y, ["a", "a", "a", "b"]).meta["token"] != a.meta["token"]
    assert encode_points(x, y[::-1], ["a", "b", "a", "b"]).meta["token"] != a.meta["token"]


def test_a_million_points_travel_in_nine_megabytes():
    n = 1_000_000
    rng = np.random.default_rng(0)
    enc = encode_points(rng.normal(size=n), rng.normal(size=n), rng.integers(0, 5, n).astype(str))
    assert enc.nbytes == 9 * n
    assert len(json.dumps(enc.meta)) < 2000


def test_selection_comes_back_as_sorted_positions():
    raw = np.array([7, 3, 3, 11], dtype="<u4").tobytes()
    value = {"selection": base64.b64encode(raw).decode(), "n": 4, "seq": 1}
    assert decode_selection(value) == [3, 7, 11]
    assert decode_selection(None) == [] and decode_selection({"selection": "", "n": 0}) == []
    with pytest.raises(ValueError):
        decode_selection({"selection": base64.b64encode(b"abc").decode()})


def test_hover_index_chunks(tmp_path):
    n = CHUNK * 2 + 5
    captions = [f"cell {i}" for i in range(n)]
    files = [f"{i:04d}.jpg" if i % 3 else None for i in range(n)]
    folder = write_hover_index(HoverSource(captions=captions, folder=tmp_path, files=files), n, tmp_path / "idx")
    chunks = sorted(folder.glob("*.json"), key=lambda p: int(p.stem))
    assert [p.stem for p in chunks] == ["0", "1", "2"] and (folder / "complete").exists()
    rows = [row for p in chunks for row in json.loads(p.read_text())]
    assert len(rows) == n
    assert rows[CHUNK + 1] == [f"{CHUNK + 1:04d}.jpg" if (CHUNK + 1) % 3 else None, f"cell {CHUNK + 1}"]
    assert rows[0] == [None, "cell 0"]
    # Same content -> same folder, not rewritten; other content -> another folder.
    stamp = (folder / "0.json").stat().st_mtime_ns
    again = write_hover_index(HoverSource(captions=captions, folder=tmp_path, files=files), n, tmp_path / "idx")
    assert again == folder and (folder / "0.json").stat().st_mtime_ns == stamp
    other = write_hover_index(HoverSource(captions=captions[::-1], folder=tmp_path, files=files), n, tmp_path / "idx")
    assert other != folder
    keyed = write_hover_index(HoverSource(captions=captions, key="objects@123"), n, tmp_path / "idx")
    assert keyed not in (folder, other)
    with pytest.raises(ValueError, match="captions"):
        write_hover_index(HoverSource(captions=captions[:3]), n, tmp_path / "idx")


SCRIPT = """
import numpy as np, streamlit as st
from pathlib import Path
from explorer.scatter import scatter_map
n = 3000
rng = np.random.default_rng(1)
folder = Path(st.session_state.get("folder", "."))
keep = st.session_state.get("keep", False)
sel = scatter_map(rng.normal(size=n), rng.normal(size=n), rng.integers(0, 3, n).astype(str),
                  labels=[f"obj {i}" for i in range(n)], key="m", title="cluster",
                  images=(folder, [f"{i}.jpg" for i in range(n)]),
                  selected=st.session_state.get("held") if keep else None)
st.session_state["held"] = sel
st.write(f"selected: {len(sel)}")
"""


def _component(at):
    elements = at.get("component_instance")
    assert len(elements) == 1
    return elements[0].proto


def test_component_call_under_apptest(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_string(SCRIPT)
    at.session_state["folder"] = str(tmp_path)
    at.run()
    assert not at.exception
    proto = _component(at)
    assert proto.component_name == "explorer.scatter.drl_scatter"
    args = json.loads(proto.json_args)
    meta = args["meta"]
    assert meta["n"] == 3000 and meta["mode"] == "categorical" and meta["categories"] == ["0", "1", "2"]
    sizes = {s.key: len(s.bytes) for s in proto.special_args}
    assert sizes == {"xy": 3000 * 8, "codes": 3000}  # raw bytes, no JSON point lists
    assert len(proto.json_args) < 10_000
    # The hover index and the image folder are served as sibling component routes.
    images = meta["images"]
    assert images["chunk"] == CHUNK
    assert images["index"].startswith("../explorer.scatter.hover_") and images["files"].startswith("../explorer.scatter.images_")
    index_dirs = list((tmp_path / "cache" / "scatter-hover").iterdir())
    assert len(index_dirs) == 1 and images["index"] == f"../explorer.scatter.hover_{index_dirs[0].name}/"
    assert at.markdown[0].value == "selected: 0"

    # What the browser sends after a lasso: base64 uint32 positions.
    picked = np.array([5, 2999, 17], dtype="<u4")
    at.session_state["m"] = {"selection": base64.b64encode(picked.tobytes()).decode(), "n": 3, "seq": 1}
    at.run()
    assert at.markdown[0].value == "selected: 3"
    assert at.session_state["held"] == [5, 17, 2999]
    assert "selected" not in {s.key for s in _component(at).special_args}  # uncontrolled

    # Controlled: the held selection goes back to the browser as uint32 bytes.
    at.session_state["keep"] = True
    at.run()
    sent = {s.key: s.bytes for s in _component(at).special_args}
    assert np.frombuffer(sent["selected"], dtype="<u4").tolist() == [5, 17, 2999]
    # ... named in the JSON arguments too (Streamlit re-renders a component on those only).
    token = json.loads(_component(at).json_args)["selection_token"]
    at.session_state["held"] = [5]
    at.run()
    assert json.loads(_component(at).json_args)["selection_token"] != token


def test_component_route_serves_only_its_folder(tmp_path):
    # The hover routes rely on Streamlit serving the files of a component declared with path=.
    from streamlit.web.server.component_file_utils import build_safe_abspath

    (tmp_path / "a.jpg").write_bytes(b"x")
    assert build_safe_abspath(str(tmp_path), "a.jpg") == str(Path(tmp_path / "a.jpg").resolve())
    assert build_safe_abspath(str(tmp_path), "../secret") is None


# --------------------------------------------------------------------------- the class map page

APP = Path(__file__).resolve().parents[1] / "explorer" / "app.py"


@pytest.fixture
def class_map_run(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from app_fixtures import make_run

    root = tmp_path / "runs"
    make_run(root, "cells", n=90)
    monkeypatch.setenv("DRL_RUNS_DIR", str(root))
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    return root


def _class_map():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    at.switch_page("views/class_map.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _map_component(at):
    return [el.proto for el in at.get("component_instance")
            if el.proto.component_name == "explorer.scatter.drl_scatter"]


def test_class_map_uses_plotly_below_the_threshold_and_webgl_when_ticked(class_map_run):
    at = _class_map()
    assert not _map_component(at) and at.get("plotly_chart")
    at.checkbox(key="map.webgl").check().run()
    assert not at.exception
    (proto,) = _map_component(at)
    meta = json.loads(proto.json_args)["meta"]
    assert meta["n"] == 90 and meta["mode"] == "categorical" and meta["title"] == "Class"
    # The hover index places each object's thumbnail in the run's thumbs folder: a byte range of
    # a shard, which holds exactly the thumbnail's bytes.
    index_dir = next((class_map_run.parent / "cache" / "scatter-hover").iterdir())
    rows = json.loads((index_dir / "0.json").read_text())
    file, caption, offset, length = rows[4]
    shard = (class_map_run / "cells" / "thumbs" / file).read_bytes()
    sha = pd.read_parquet(class_map_run / "cells" / "objects.parquet")["sha256"].iloc[4]
    assert shard[offset:offset + length] == rundir.read_thumb(class_map_run / "cells", sha)
    assert caption.startswith("img_0004.jpg")

    # A lasso in the browser: positions come back, the page holds object rows as the Plotly path does.
    picked = np.arange(0, 90, 3, dtype="<u4")
    at.session_state["map.webgl_chart"] = {"selection": base64.b64encode(picked.tobytes()).decode(),
                                           "n": len(picked), "seq": 1}
    at.run()
    assert not at.exception
    assert at.session_state["map.selected"] == list(range(0, 90, 3))
    assert any("Selection: 30 of 90" in h.value for h in at.subheader)
    # ... and goes back to the browser as the selection to show.
    (proto,) = _map_component(at)
    sent = {s.key: s.bytes for s in proto.special_args}
    assert np.frombuffer(sent["selected"], dtype="<u4").tolist() == list(range(0, 90, 3))
    # Colour by a number: a colour scale.
    at.selectbox(key="map.color_by").set_value("morph_area").run()
    (proto,) = _map_component(at)
    assert json.loads(proto.json_args)["meta"]["mode"] == "continuous"


def test_class_map_draws_with_webgl_above_the_threshold(class_map_run, monkeypatch):
    import explorer.scatter

    monkeypatch.setattr(explorer.scatter, "WEBGL_MIN_POINTS", 50)
    at = _class_map()
    assert _map_component(at)
    assert not [c for c in at.get("plotly_chart") if "umap" in c.proto.spec[:4000].lower()]
    assert any("drawn with WebGL" in c.value for c in at.caption)
