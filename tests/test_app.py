"""Every explorer page under Streamlit's AppTest, driven by widget keys and session state."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run, make_source_model, make_zip  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
PAGES = ["datasets", "traversals", "correlations", "class_map", "anomalies", "source_model"]


@pytest.fixture(scope="module")
def runs_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-template")
    make_run(root, "cells", n=90)
    return root


@pytest.fixture
def runs_dir(tmp_path, runs_template, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(runs_template, root)
    monkeypatch.setenv("DRL_RUNS_DIR", str(root))
    return root


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def _charts(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _n_points(trace: dict) -> int:
    """Length of a trace's x, whether plain JSON or plotly's base64 typed array ({dtype, bdata})."""
    x = trace.get("x", [])
    if isinstance(x, dict) and "bdata" in x:
        import base64

        import numpy as np

        return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize
    return len(x)


def _configs(at) -> list[dict]:
    return [json.loads(el.proto.config) for el in at.get("plotly_chart")]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_error(runs_dir, page):
    at = _app(page)
    assert not at.error, [e.value for e in at.error]
    assert at.title, "page drew no title"
    assert at.session_state["app.run"] == str(runs_dir / "cells")


def test_pages_without_a_run_point_to_datasets(tmp_path, monkeypatch):
    import drlcore.demo
    from drlcore.errors import DrlError

    def no_demo(*args, **kwargs):  # first launch would build the demo; here it cannot
        raise DrlError("demo unavailable in this test")

    monkeypatch.setattr(drlcore.demo, "build_demo", no_demo)
    monkeypatch.setenv("DRL_RUNS_DIR", str(tmp_path / "empty"))
    at = _app("class_map")
    assert any("No run is open" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_datasets_page_summarises_run_and_backbone(runs_dir):
    at = _app()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Objects"] == "90" and metrics["Skipped images"] == "1"
    backbone = next(m.value for m in at.markdown if m.value.startswith("**Backbone:**"))
    assert "test-tiny" in backbone and "random-init" in backbone and "trained on this backbone" in backbone
    assert any("0123abcd" in c.value for c in at.caption)  # fine-tuned from this source model
    assert any("Fixture note from the pipeline" in i.value for i in at.info)


def test_run_picker_switches_run_and_survives_page_changes(runs_dir):
    make_run(runs_dir, "second", n=30, seed=3)
    at = _app()
    picker = at.sidebar.selectbox(key="app.run_picker")
    picker.select(str(runs_dir / "second")).run()
    assert at.session_state["app.run"] == str(runs_dir / "second")
    at.switch_page("views/class_map.py").run()
    assert at.session_state["app.run"] == str(runs_dir / "second")
    assert sum(_n_points(t) for t in _charts(at)[0]["data"]) == 30


def test_chart_download_format_follows_sidebar(runs_dir):
    at = _app("correlations")
    assert _configs(at)[0]["toImageButtonOptions"]["format"] == "svg"
    at = _app()  # AppTest keeps the entry file's sidebar in the tree only before a page switch
    at.radio(key="ui.image_format_picker").set_value("png").run()
    at.switch_page("views/correlations.py").run()
    assert _configs(at)[0]["toImageButtonOptions"]["format"] == "png"


def test_traversal_dimension_and_steps_change_the_strip(runs_dir):
    at = _app("traversals")
    assert len(at.get("image")) == 9
    def heading():
        return next(m.value for m in at.markdown if m.value.startswith("####"))

    first = heading()
    at.selectbox(key="trav.dim").set_value(2).run()
    assert heading() != first and "brightness" in heading()
    at.slider(key="trav.n_steps").set_value(5).run()
    assert len(at.get("image")) == 5
    at.toggle(key="trav.show_all").set_value(True).run()
    assert len(at.get("image")) == 5 * 3  # the fixture's 3 active dimensions


def test_traversal_view_button_opens_object_detail(runs_dir):
    at = _app("traversals")
    at.button[0].click().run()
    assert at.session_state["trav.focus"] is not None
    assert any("img_" in m.value for m in at.markdown)


def test_correlation_method_and_pair_drive_the_charts(runs_dir):
    at = _app("correlations")
    heat, scatter = _charts(at)
    assert heat["data"][0]["zmid"] == 0
    at.segmented_control(key="corr.method").set_value("mi").run()
    heat, _ = _charts(at)
    assert "zmid" not in heat["data"][0] and heat["data"][0]["zmin"] == 0
    at.selectbox(key="corr.feature").set_value("morph_mean_intensity").run()
    _, scatter = _charts(at)
    assert scatter["layout"]["yaxis"]["title"]["text"] == "mean intensity"


def test_correlation_selection_shows_gallery(runs_dir):
    at = _app("correlations")
    assert not at.get("image")
    at.session_state["corr.selected"] = [0, 1, 2]
    at.run()
    assert len(at.get("image")) == 3
    assert any("3 selected objects" in h.value for h in at.subheader)


def test_class_map_colour_and_selection_compare(runs_dir):
    at = _app("class_map")
    spec = _charts(at)[0]
    assert spec["data"][0]["type"] == "scattergl" and len(spec["data"]) == 3
    at.selectbox(key="map.color_by").set_value("morph_area").run()
    spec = _charts(at)[0]
    assert len([t for t in spec["data"] if t.get("name") != "flagged as anomalous"]) == 1
    assert "colorscale" in spec["data"][0]["marker"]
    at.radio(key="map.projection").set_value("pca").run()
    assert _charts(at)[0]["layout"]["xaxis"]["title"]["text"] == "PC 1"
    # A lasso selection arrives through the chart callback as object rows; drive it directly.
    at.session_state["map.selected"] = list(range(0, 90, 3))  # every lymphocyte
    at.run()
    assert any("Selection: 30 of 90" in h.value for h in at.subheader)
    table = at.dataframe[-1].value
    assert {"column", "cohens_d"} <= set(table.columns)
    assert len(at.get("image")) == 30


def test_class_map_single_click_opens_detail(runs_dir):
    at = _app("class_map")
    at.session_state["map.focus"] = 4
    at.run()
    assert any("img_0004" in m.value for m in at.markdown)


def test_anomalies_known_classes_rescore_and_auroc(runs_dir):
    at = _app("anomalies")
    auroc = {m.label: m.value for m in at.metric}["AUROC (other vs known classes)"]
    assert float(auroc) > 0.5
    at.multiselect(key="anom.known").set_value(["lymphocyte"]).run()
    assert not at.exception
    assert any("recomputed" in c.value for c in at.caption)
    new = {m.label: m.value for m in at.metric}
    assert new["Known-class objects"] == "30"
    at.slider(key="anom.quantile").set_value(0.8).run()
    flagged_low = int({m.label: m.value for m in at.metric}["Flagged objects"].replace(",", ""))
    at.slider(key="anom.quantile").set_value(0.999).run()
    flagged_high = int({m.label: m.value for m in at.metric}["Flagged objects"].replace(",", ""))
    assert flagged_low > flagged_high
    ranked = at.dataframe[-1].value
    assert "out_of_range_axes" in ranked and ranked["score"].is_monotonic_decreasing


def test_source_model_shows_metrics_and_factor_heatmap(runs_dir):
    at = _app("source_model")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MIG"] == "0.410" and metrics["OMES"] == "0.640"
    heat = _charts(at)[1]
    assert heat["data"][0]["x"] == ["size", "elongation", "brightness"]


def test_add_data_from_missing_folder_fails_cleanly_and_keeps_runs(runs_dir):
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(runs_dir / "does-not-exist")).run()
    at.button(key="data.start").click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert sorted(p.name for p in runs_dir.iterdir()) == before
    assert at.session_state["app.run"] == str(runs_dir / "cells")


def test_add_data_without_images_shows_engine_error(runs_dir, tmp_path):
    pytest.importorskip("drlcore.pipeline")
    junk = tmp_path / "notes"
    junk.mkdir()
    (junk / "readme.txt").write_text("no images here")
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(junk)).run()
    at.button(key="data.start").click().run()
    assert not at.exception
    assert at.error, "a bad folder must show what was wrong"
    assert sorted(p.name for p in runs_dir.iterdir()) == before


def test_args_after_double_dash_are_parsed(tmp_path):
    from explorer.data import parse_app_args, resolve_runs_dir

    args = parse_app_args(["--runs-dir", "/r", "--run", "/a", "--run", "/b", "--runxfail"])
    assert args.runs_dir == "/r" and args.run == ["/a", "/b"]
    assert resolve_runs_dir("/r", {"DRL_RUNS_DIR": "/env"}) == Path("/r")
    assert resolve_runs_dir(None, {"DRL_RUNS_DIR": str(tmp_path)}) == tmp_path
    assert resolve_runs_dir(None, {}).parts[-1] == "runs"


def test_run_given_on_the_command_line_opens_first(runs_dir, monkeypatch):
    other = make_run(runs_dir.parent, "elsewhere", n=20, seed=5)
    monkeypatch.setattr(sys, "argv", ["app.py", "--run", str(other)])
    at = _app()
    assert at.session_state["app.run"] == str(other)


@pytest.mark.slow
def test_every_page_on_a_real_pipeline_run(tmp_path, monkeypatch):
    """The real engine's files (not the fixture's idea of them) drive every page."""
    from drlcore.pipeline import run_pipeline
    from explorer.data import pipeline_config

    source = make_source_model(tmp_path / "source")
    config = pipeline_config({"features": {"backbone": "test-tiny", "pretrained": False, "batch_size": 8,
                                           "cache_dir": str(tmp_path / "cache")},
                              "source_model": str(source), "transfer_epochs": 2})
    runs = tmp_path / "runs"
    run_pipeline(make_zip(tmp_path / "cells.zip", n_per_class=6), runs / "real", config)
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    for page in PAGES:
        at = _app(page)
        assert not at.error, (page, [e.value for e in at.error])
        assert at.title, page
    at = _app("class_map")
    assert sum(_n_points(t) for t in _charts(at)[0]["data"]) == 12
    at = _app("anomalies")
    at.multiselect(key="anom.known").set_value(["round"]).run()
    assert not at.exception and not at.error


def test_pipeline_settings_reject_unknown_keys():
    from drlcore.errors import DrlError
    from explorer.data import pipeline_config

    config = pipeline_config({"features": {"backbone": "test-tiny"}, "transfer_epochs": 3}, source_model="/m")
    assert config.features.backbone == "test-tiny" and config.source_model == "/m" and config.transfer_epochs == 3
    with pytest.raises(DrlError, match="unknown pipeline setting"):
        pipeline_config({"epochs": 3})


def test_build_demo_failure_is_shown_not_raised(tmp_path, monkeypatch):
    import drlcore.demo
    from drlcore.errors import DrlError

    def no_source_model(*args, **kwargs):
        raise DrlError("no shipped source model for backbone 'effnet-lite0'")

    monkeypatch.setattr(drlcore.demo, "build_demo", no_source_model)
    monkeypatch.setenv("DRL_RUNS_DIR", str(tmp_path / "runs"))
    at = _app()
    at.button(key="data.build_demo").click().run()
    assert not at.exception
    assert any("no shipped source model" in e.value for e in at.error)


def test_first_launch_builds_the_demo_and_opens_it(tmp_path, monkeypatch):
    """No run anywhere: the Datasets page builds the demo by itself (the engine's build_demo)."""
    import drlcore.demo

    runs = tmp_path / "fresh"
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    calls = []

    def fake_build_demo(runs_dir, reporter=None, **kwargs):
        calls.append(Path(runs_dir))
        path = make_run(Path(runs_dir), drlcore.demo.DEMO_NAME, n=40)
        (path / "demo.json").write_text(json.dumps({"version": drlcore.demo.DEMO_VERSION}))
        return path

    monkeypatch.setattr(drlcore.demo, "build_demo", fake_build_demo)
    at = _app()
    assert calls == [runs]
    assert at.session_state["app.run"] == str(runs / drlcore.demo.DEMO_NAME)
    at.run()  # later reruns do not build again
    assert calls == [runs]


def test_class_map_places_a_run_of_the_same_model_and_refuses_another(runs_dir, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    foreign = make_run(runs_dir, "other-model", n=30, seed=4)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["model"]["model_hash"] = "0" * 32
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    make_run(runs_dir, "new-images", n=30, seed=3)  # newest: opens first; same model as "cells"

    at = _app("class_map")
    assert at.session_state["app.run"] == str(runs_dir / "new-images")
    at.radio(key="map.projection").set_value("pca").run()
    at.selectbox(key="app.reference_run").select(str(runs_dir / "cells")).run()
    assert not at.exception, [e.value for e in at.exception]
    names = [t.get("name") for t in _charts(at)[0]["data"]]
    assert "cells (placed on this map)" in names

    at.selectbox(key="app.reference_run").select(str(foreign)).run()
    assert any("another model" in i.value for i in at.info)
    names = [t.get("name") for t in _charts(at)[0]["data"]]
    assert not any("placed on this map" in str(n) for n in names)
