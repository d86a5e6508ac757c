"""Downloads, two-group comparison and shareable views in the explorer (Streamlit AppTest).

Download buttons build their bytes when pressed (Streamlit's deferred download); the tests
record the callable each button registers and call it, so the bytes checked are the bytes a
browser would receive.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run  # noqa: E402

from drlcore.data import rundir  # noqa: E402
from drlcore.errors import DrlError  # noqa: E402
from explorer import share  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")


@pytest.fixture(scope="module")
def runs_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("views-template")
    make_run(root, "cells", n=90)
    return root


@pytest.fixture
def runs_dir(tmp_path, runs_template, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(runs_template, root)
    monkeypatch.setenv("DRL_RUNS_DIR", str(root))
    return root


@pytest.fixture
def deferred(monkeypatch):
    """file id -> the callable a download button registered for it."""
    seen: dict[str, tuple] = {}
    original = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        file_id = original(self, data_callable, mimetype, coordinates, file_name, **kwargs)
        seen[file_id] = (data_callable, mimetype, file_name)
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return seen


def _new(page: str | None = None, params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    if page:
        at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _app(page: str | None = None) -> AppTest:
    at = _new()
    if page:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def _button_bytes(at: AppTest, deferred: dict, key: str) -> tuple[str, bytes]:
    """(file name, bytes) the download button with widget ``key`` hands out."""
    button = next(b for b in at.get("download_button") if b.proto.id.endswith(key))
    build, _, file_name = deferred[button.proto.deferred_file_id]
    return file_name, build()


def _charts(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


# --------------------------------------------------------------------------- downloads


def test_datasets_page_downloads_open_as_h5ad_csv_and_parquet(runs_dir, deferred, tmp_path):
    anndata = pytest.importorskip("anndata")
    at = _app()
    objects = pd.read_parquet(runs_dir / "cells" / rundir.OBJECTS)
    zcols = rundir.latent_columns(objects)

    _, h5ad = _button_bytes(at, deferred, "data.export_h5ad")
    (tmp_path / "cells.h5ad").write_bytes(h5ad)
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.shape == (90, len(zcols))
    np.testing.assert_allclose(adata.X, objects[zcols].to_numpy(np.float32))
    assert list(adata.obs["label"].astype(str)) == list(objects["label"])
    np.testing.assert_allclose(adata.obsm["X_umap"], objects[["umap_x", "umap_y"]].to_numpy())
    assert "X_backbone" not in adata.obsm

    _, csv = _button_bytes(at, deferred, "data.export_csv")
    table = pd.read_csv(io.BytesIO(csv))
    assert list(table.columns) == list(objects.columns) and len(table) == 90
    np.testing.assert_allclose(table["morph_area"], objects["morph_area"])

    _, parquet = _button_bytes(at, deferred, "data.export_parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(parquet)), objects)

    # With the backbone features asked for, the h5ad carries them.
    at.checkbox(key="data.export_features").check().run()
    _, h5ad = _button_bytes(at, deferred, "data.export_h5ad")
    (tmp_path / "with-features.h5ad").write_bytes(h5ad)
    features = np.load(runs_dir / "cells" / rundir.FEATURES)
    np.testing.assert_allclose(anndata.read_h5ad(tmp_path / "with-features.h5ad").obsm["X_backbone"], features)


def test_axis_montage_downloads_are_stamped_png_and_svg(runs_dir, deferred):
    from PIL import Image

    at = _app("traversals")
    at.selectbox(key="trav.dim").set_value(2).run()
    at.selectbox(key="trav.montage_class").set_value("platelet").run()
    at.slider(key="trav.montage_rows").set_value(2).run()
    assert not at.exception
    _, png = _button_bytes(at, deferred, "trav.montage_png")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    stamp = json.loads(image.info["Description"])
    assert stamp["run"] == "cells" and stamp["backbone"] == "test-tiny"
    assert "class platelet" in image.info["Title"] and "z2" in image.info["Title"]
    _, svg = _button_bytes(at, deferred, "trav.montage_svg")
    text = svg.decode("utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "run cells · model" in text and "class platelet" in text
    # 2 rows x 9 steps of thumbnails in the SVG.
    assert text.count("<image") == 18


def test_montage_file_name_follows_axis_and_class(runs_dir, deferred):
    at = _app("traversals")
    at.selectbox(key="trav.montage_class").set_value("neutrophil").run()
    names = {_button_bytes(at, deferred, f"trav.montage_{fmt}")[0] for fmt in ("png", "svg")}
    assert names == {"cells-axis-0-neutrophil.png", "cells-axis-0-neutrophil.svg"}


# --------------------------------------------------------------------------- two groups


def _groups_page() -> AppTest:
    at = _app("class_map")
    at.radio(key="map.compare").set_value("groups").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _group_table(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "hedges_g" in d.value.columns)


def test_two_classes_compared_in_the_expected_direction(runs_dir):
    """Fixture: platelets are small (their size factor is scaled by 0.3) and z0 follows size, so
    lymphocytes vs platelets has area and z0 on top, both positive (A larger)."""
    at = _groups_page()
    # Entering the mode picks the first two classes.
    assert at.session_state["map.a.classes"] == ["lymphocyte"]
    assert at.session_state["map.b.classes"] == ["neutrophil"]
    at.multiselect(key="map.b.classes").set_value(["platelet"]).run()
    table = _group_table(at)
    assert {"name", "measure", "n_a", "n_b", "hedges_g", "ci_low", "ci_high", "q_value"} <= set(table.columns)
    assert (table["n_a"] == 30).all() and (table["n_b"].max() == 30)
    top2 = set(table["name"].head(2))
    assert top2 == {"area", "z0: size"}, table.head()
    assert (table["hedges_g"].head(2) > 1.0).all() and (table["q_value"].head(2) < 0.05).all()
    assert (table["ci_low"] <= table["hedges_g"]).all() and (table["hedges_g"] <= table["ci_high"]).all()
    g = table["hedges_g"].abs().to_numpy()
    assert np.all(np.diff(g[np.isfinite(g)]) <= 1e-12), "sorted by |g|"
    # Swapping the groups flips every sign.
    at.multiselect(key="map.a.classes").set_value(["platelet"]).run()
    at.multiselect(key="map.b.classes").set_value(["lymphocyte"]).run()
    swapped = _group_table(at).set_index("name")["hedges_g"]
    np.testing.assert_allclose(swapped.loc[table["name"]], -table["hedges_g"].to_numpy())
    # Images of each group side by side: 12 of 30 each.
    assert len(at.get("image")) == 24
    chart = _charts(at)[-1]
    assert chart["data"][0]["orientation"] == "h" and "error_x" in chart["data"][0]


def test_threshold_and_map_selection_groups(runs_dir):
    at = _groups_page()
    objects = pd.read_parquet(runs_dir / "cells" / rundir.OBJECTS)
    at.radio(key="map.a.kind").set_value("threshold").run()
    assert at.session_state["map.a.feature"] == "morph_area"
    median = float(np.nanmedian(objects["morph_area"]))
    assert at.session_state["map.a.value"] == pytest.approx(median)
    at.radio(key="map.b.kind").set_value("rest").run()
    table = _group_table(at)
    area = table.set_index("name").loc["area"]
    big = objects["morph_area"] >= median
    assert area["n_a"] == big.sum() and area["n_b"] == (~big).sum()
    assert area["hedges_g"] > 1.5 and set(table["name"].head(2)) == {"area", "z0: size"}
    # Group B from a map selection (a lasso arrives as object rows in map.selected).
    at.session_state["map.selected"] = list(range(2, 90, 3))  # the platelets
    at.run()
    at.radio(key="map.b.kind").set_value("selection").run()
    at.button(key="map.b.use").click().run()
    assert at.session_state["map.b.rows"] == list(range(2, 90, 3))
    at.radio(key="map.a.kind").set_value("class").run()
    at.multiselect(key="map.a.classes").set_value(["lymphocyte"]).run()
    table = _group_table(at)
    assert set(table["name"].head(2)) == {"area", "z0: size"} and (table["hedges_g"].head(2) > 0).all()


def test_too_small_a_group_says_so_and_rest_mode_still_works(runs_dir):
    at = _groups_page()
    at.multiselect(key="map.a.classes").set_value([]).run()
    assert any("at least two objects" in i.value for i in at.info)
    at.radio(key="map.compare").set_value("rest").run()
    at.session_state["map.selected"] = list(range(0, 90, 3))
    at.run()
    assert any("Selection: 30 of 90" in h.value for h in at.subheader)
    assert "cohens_d" in at.dataframe[-1].value.columns


# --------------------------------------------------------------------------- shareable views


def test_query_params_restore_the_view(runs_dir):
    make_run(runs_dir, "second", n=30, seed=3)  # newest: would open by default
    at = _new("traversals", {"run": "cells", "dim": "2", "steps": "7"})
    assert at.session_state["app.run"] == str(runs_dir / "cells")
    assert at.session_state["trav.dim"] == 2 and at.session_state["trav.n_steps"] == 7
    heading = next(m.value for m in at.markdown if m.value.startswith("####")
                   and "Axis card" not in m.value)
    assert "z2: intensity" in heading
    assert len(at.get("image")) == 7


def test_query_params_restore_groups_and_thresholds(runs_dir):
    at = _new("class_map", {"colour": "morph_area", "map": "pca", "compare": "groups",
                            "a": "threshold", "a_feature": "morph_area", "a_op": ">=", "a_value": "500",
                            "b": "class", "b_class": ["platelet", "neutrophil"]})
    state = at.session_state
    assert state["map.color_by"] == "morph_area" and state["map.projection"] == "pca"
    assert state["map.a.kind"] == "threshold" and state["map.a.value"] == 500.0
    assert state["map.b.classes"] == ["platelet", "neutrophil"]
    assert any("**A:** area >= 500" in m.value for m in at.markdown)
    assert _group_table(at)["n_b"].max() == 60


def test_the_url_follows_the_view(runs_dir):
    at = _app("class_map")
    at.radio(key="map.compare").set_value("groups").run()
    at.multiselect(key="map.b.classes").set_value(["platelet"]).run()
    params = at.query_params
    assert params["run"] == "cells" and params["compare"] == "groups"
    assert params["a"] == "class" and params["a_class"] == "lymphocyte" and params["b_class"] == "platelet"
    assert "a_feature" not in params  # fields of kinds not in use stay out of the link
    at.multiselect(key="map.b.classes").set_value(["platelet", "neutrophil"]).run()
    assert at.query_params["b_class"] == ["platelet", "neutrophil"]
    at.switch_page("views/traversals.py").run()
    at.selectbox(key="trav.dim").set_value(1).run()
    params = at.query_params
    assert params["dim"] == "1" and params["run"] == "cells" and "compare" not in params


def test_bad_link_values_are_skipped_and_reported(runs_dir):
    at = _new("traversals", {"run": "nope", "dim": "two", "steps": "9"})
    assert not at.exception
    assert at.session_state["app.run"] == str(runs_dir / "cells")
    notes = [w.value for w in at.sidebar.warning]
    assert any("'nope'" in n and "dim=two" in n for n in notes), notes


def test_saved_view_round_trips(runs_dir):
    at = _app("class_map")
    at.radio(key="map.compare").set_value("groups").run()
    at.radio(key="map.a.kind").set_value("threshold").run()
    at.number_input(key="map.a.value").set_value(700.0).run()
    at.selectbox(key="map.color_by").set_value("morph_eccentricity").run()
    at.text_input(key="app.view_name").input("big vs neutrophils").run()
    at.button(key="app.view_save").click().run()
    assert not at.exception
    path = runs_dir / "cells" / rundir.VIEWS / "big vs neutrophils.json"
    view = json.loads(path.read_text())
    assert view["page"] == "class_map" and view["schema_version"] == rundir.VIEW_SCHEMA_VERSION
    assert view["params"]["a_value"] == ["700.0"] and view["params"]["colour"] == ["morph_eccentricity"]
    assert any("Saved the view" in s.value for s in at.sidebar.success)

    # A fresh session on another page reopens it: page, colour and groups come back.
    fresh = _app("traversals")
    assert fresh.sidebar.selectbox(key="app.view_pick").options == ["big vs neutrophils"]
    fresh.sidebar.selectbox(key="app.view_pick").set_value("big vs neutrophils").run()  # switches page
    assert not fresh.exception, [e.value for e in fresh.exception]
    assert fresh.session_state["app.page"] == "class_map"
    assert fresh.session_state["map.color_by"] == "morph_eccentricity"
    assert fresh.session_state["map.a.value"] == 700.0 and fresh.session_state["map.compare"] == "groups"
    assert any("**A:** area >= 700" in m.value for m in fresh.markdown)


def test_bad_view_name_is_refused(runs_dir):
    at = _app()
    at.text_input(key="app.view_name").input("../escape").run()
    at.button(key="app.view_save").click().run()
    assert any("not saved" in e.value for e in at.sidebar.error)
    assert not (runs_dir / "cells" / rundir.VIEWS).exists() and not (runs_dir / "escape.json").exists()


# --------------------------------------------------------------------------- pure parts


def test_rows_encode_as_ranges_and_back():
    rows = [0, 1, 2, 5, 7, 8, 100]
    assert share.encode_rows(rows) == "0-2,5,7-8,100"
    assert share.decode_rows("0-2,5,7-8,100") == rows
    assert share.encode_rows([]) == "" and share.decode_rows("") == []
    with pytest.raises(ValueError):
        share.decode_rows("5-2")


def test_params_round_trip_through_state():
    state = {"map.projection": "umap", "map.color_by": "class", "map.selected": [3, 4, 5],
             "map.compare": "groups", "map.a.kind": "threshold", "map.a.feature": "z_mean_1",
             "map.a.op": "<=", "map.a.value": 0.1 + 0.2, "map.a.classes": ["x"],
             "map.b.kind": "rest"}
    params, left_out = share.view_params(state, "class_map", "cells")
    assert not left_out and "a_class" not in params and params["b"] == ["rest"]
    back, problems = share.state_from_params(params, "class_map")
    assert not problems
    assert back["map.a.value"] == 0.1 + 0.2  # repr keeps every digit
    assert {k: back[k] for k in back} == {k: state[k] for k in back}
    # A huge lasso stays out of the link (a saved view keeps it).
    state["map.selected"] = list(range(0, 20_000, 2))
    params, left_out = share.view_params(state, "class_map")
    assert left_out == ["sel"] and "sel" not in params
    params, _ = share.view_params(state, "class_map", max_rows_chars=None)
    assert share.decode_rows(params["sel"][0]) == state["map.selected"]


def test_view_names_are_checked_and_views_are_versioned(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "trailing."):
        with pytest.raises(DrlError, match="view name"):
            rundir.save_view(run, bad, {})
    rundir.save_view(run, "ok view-1", {"page": "datasets", "params": {}})
    (run / rundir.VIEWS / ".ok view-1.json.123.tmp").write_text("half")
    assert rundir.list_views(run) == ["ok view-1"]
    assert rundir.read_view(run, "ok view-1")["page"] == "datasets"
    (run / rundir.VIEWS / "future.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DrlError, match="schema_version 99"):
        rundir.read_view(run, "future")
    with pytest.raises(DrlError, match="no saved view"):
        rundir.read_view(run, "missing")


def test_group_effect_chart_marks_significance_and_sign():
    from explorer.figures import group_effect_chart

    table = pd.DataFrame({"column": ["morph_area", "z_mean_0"], "n_a": [10, 10], "n_b": [10, 10],
                          "mean_a": [5.0, 0.0], "mean_b": [1.0, 1.0], "hedges_g": [2.0, -0.3],
                          "ci_low": [1.0, -1.2], "ci_high": [3.0, 0.6], "p_value": [0.001, 0.5],
                          "q_value": [0.002, 0.5], "abs_g": [2.0, 0.3]})
    bar = group_effect_chart(table, {"z_mean_0": "z0: size"}).data[0]
    assert list(bar.y) == ["z0: size", "area"]  # largest |g| on top
    assert list(bar.marker.color) == ["rgba(0,0,0,0)", "#D55E00"]  # hollow where q >= 0.05
    np.testing.assert_allclose(bar.error_x.array, [0.9, 1.0])
    np.testing.assert_allclose(bar.error_x.arrayminus, [0.9, 1.0])
