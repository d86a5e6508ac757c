"""Every explorer page under Streamlit's AppTest, driven by widget keys and session state."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run, make_source_model, make_zip  # noqa: E402

from drlcore.data import rundir  # noqa: E402
from explorer.data import list_runs as list_runs_  # noqa: E402

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
    import drlcore.runs.jobs
    from drlcore.errors import DrlError

    def no_demo(*args, **kwargs):  # first launch would start the demo job; here it cannot
        raise DrlError("demo unavailable in this test")

    monkeypatch.setattr(drlcore.runs.jobs, "start_job", no_demo)
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
        return next(m.value for m in at.markdown if m.value.startswith("####")
                   and "Axis card" not in m.value)

    first = heading()
    at.selectbox(key="trav.dim").set_value(2).run()
    assert heading() != first and "z2: intensity" in heading()  # named from the run's data
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
    at.selectbox(key="corr.feature").set_value("morph_intensity_mean").run()
    _, scatter = _charts(at)
    assert scatter["layout"]["yaxis"]["title"]["text"] == "intensity mean"
    # family labels over the grouped features; the cluster toggle reorders without error
    assert any(a["text"] == "<b>size</b>" for a in heat["layout"]["annotations"])
    at.toggle(key="corr.cluster").set_value(True).run()
    assert not at.exception and len(_charts(at)[0]["data"][0]["y"]) == len(heat["data"][0]["y"])


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


def test_add_data_from_missing_folder_fails_cleanly_and_keeps_runs(runs_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(runs_dir)])
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(runs_dir / "does-not-exist")).run()
    at.button(key="data.start").click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert sorted(p.name for p in runs_dir.iterdir()) == before
    assert at.session_state["app.run"] == str(runs_dir / "cells")


def test_add_data_without_images_shows_engine_error(runs_dir, tmp_path, monkeypatch):
    """The job runs in a worker process; its failure reaches the page that started it."""
    from drlcore.runs import jobs

    junk = tmp_path / "notes"
    junk.mkdir()
    (junk / "readme.txt").write_text("no images here")
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(tmp_path)])
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(junk)).run()
    at.button(key="data.start").click().run()
    assert not at.exception and not at.error
    target = runs_dir / "notes"
    deadline = time.monotonic() + 120
    while jobs.read_job(target) is None or jobs.read_job(target).running:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.3)
    at.run()
    assert not at.exception
    assert any("image" in e.value.lower() for e in at.error), "a bad folder must show what was wrong"
    # The failed job's folder is not a run: the picker and the open run are unchanged.
    assert [p.name for p in list_runs_(runs_dir)] == [p for p in before if (runs_dir / p).is_dir()]
    assert at.session_state["app.run"] == str(runs_dir / "cells")


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
    from drlcore.runs.pipeline import run_pipeline
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
    # Axis names come from the run's own data, the synthetic-source name stays as provenance.
    analysis = json.loads((runs / "real" / "analysis.json").read_text())
    assert len(analysis["axes"]) == len(analysis["dim_names"]) == len(analysis["source_dim_names"])
    at = _app("traversals")
    heading = next(m.value for m in at.markdown if m.value.startswith("####")
                   and "Axis card" not in m.value)
    assert heading.removeprefix("#### ").startswith(analysis["dim_names"][0])
    assert any("Provenance:" in c.value for c in at.caption)
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
    import drlcore.runs.jobs
    from drlcore.errors import DrlError

    def no_source_model(*args, **kwargs):
        raise DrlError("no shipped source model for backbone 'effnet-lite0'")

    monkeypatch.setattr(drlcore.runs.jobs, "start_job", no_source_model)
    monkeypatch.setenv("DRL_RUNS_DIR", str(tmp_path / "runs"))
    at = _app()
    at.button(key="data.build_demo").click().run()
    assert not at.exception
    assert any("no shipped source model" in e.value for e in at.error)


@pytest.mark.slow
def test_first_launch_builds_the_demo_and_opens_it(tmp_path, monkeypatch):
    """No run anywhere: the Datasets page starts the demo job by itself; a second session
    attaches to it instead of starting another; when it is done, the run opens."""
    import drlcore.runs.demo
    from drlcore.runs import jobs

    runs = tmp_path / "fresh"
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(drlcore.runs.demo, "DEMO_IMAGES", 24)  # the worker builds a small demo
    target = runs / drlcore.runs.demo.DEMO_NAME
    at = _app()
    assert jobs.read_job(target).running
    assert any("Building the demo" in str(p.proto) for p in at.get("progress")) or at.caption
    second = _app()  # another tab while it builds
    assert jobs.log_path(target).read_text().count("job started") == 1
    deadline = time.monotonic() + 300
    while jobs.read_job(target).running:
        assert time.monotonic() < deadline, jobs.log_path(target).read_text()
        time.sleep(0.5)
    assert jobs.read_job(target).state == "done", jobs.read_job(target).error
    for session in (at, second):
        session.run()  # the live fragment's next tick: the watched job is done, the run opens
        session.run()
        assert not session.exception
        assert session.session_state["app.run"] == str(target)
    assert jobs.log_path(target).read_text().count("job started") == 1


def test_a_job_that_died_shows_as_failed_and_is_not_listed(runs_dir):
    half = make_run(runs_dir, "half-built", n=20)
    (half / "job.json").write_text(json.dumps({"state": "running", "kind": "run", "pid": None,
                                               "message": "[3/4] encode"}))
    at = _app()
    assert not at.exception
    picker = at.sidebar.selectbox(key="app.run_picker")
    assert "half-built" not in picker.options and "cells" in picker.options
    at.session_state["app.jobs_watched"] = [str(half)]
    at.run()
    assert any("stopped unexpectedly" in e.value and "[3/4] encode" in e.value for e in at.error)


def test_a_running_job_shows_its_progress_on_every_page(runs_dir):
    from drlcore.runs import jobs

    target = runs_dir / "growing"
    target.mkdir()
    (target / "job.json").write_text(json.dumps({"state": "running", "kind": "run", "pid": os.getpid(),
                                                 "message": "embedding: 30/90", "fraction": 1 / 3}))
    fd = jobs._try_lock(target)  # stands for the worker holding its lock
    try:
        for page in (None, "traversals"):
            at = _app(page)
            bars = at.sidebar.get("progress")
            assert bars and "embedding: 30/90" in str(bars[0].proto), page
    finally:
        os.close(fd)


def test_token_is_required_when_the_server_has_one(runs_dir, monkeypatch):
    monkeypatch.setenv("DRL_EXPLORE_TOKEN", "s3cret-token")
    at = _app()
    assert any("token printed in the terminal" in w.value for w in at.warning)
    assert not at.get("selectbox") and not at.metric  # nothing of the runs is shown
    at.query_params["token"] = "wrong"
    at.run()
    assert any("not this server" in e.value for e in at.error) and not at.metric
    at.query_params["token"] = "s3cret-token"
    at.run()
    assert at.metric and not at.warning
    at.query_params.clear()
    at.run()  # remembered for the session
    assert at.metric


def test_token_comparison():
    from explorer.access import expected_token, token_matches

    assert token_matches("abc", "abc") and not token_matches("abd", "abc")
    assert not token_matches("", "abc") and not token_matches(None, "abc")
    assert expected_token({}) is None and expected_token({"DRL_EXPLORE_TOKEN": "x"}) == "x"


def test_server_folder_refused_without_data_root_or_outside_it(runs_dir, tmp_path, monkeypatch):
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(tmp_path)).run()
    at.button(key="data.start").click().run()
    assert any("without --data-root" in e.value for e in at.error)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(tmp_path)
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(allowed)])
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(allowed / "link")).run()
    at.button(key="data.start").click().run()
    assert any("outside the folders" in e.value for e in at.error)
    assert sorted(p.name for p in runs_dir.iterdir()) == before


def test_run_refused_when_the_runs_folder_is_short_of_space(runs_dir, tmp_path, monkeypatch):
    data = tmp_path / "data" / "cells"
    data.mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(tmp_path / "data"),
                                      "--min-free-mb", str(2 ** 40)])
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(data)).run()
    at.button(key="data.start").click().run()
    assert any("not enough free disk space" in e.value for e in at.error)
    assert sorted(p.name for p in runs_dir.iterdir()) == before


def test_two_sessions_adding_data_at_once_get_their_own_runs(runs_dir, tmp_path, monkeypatch):
    from drlcore.runs import jobs

    data = tmp_path / "data" / "notes"
    data.mkdir(parents=True)
    (data / "readme.txt").write_text("no images: the jobs fail fast")
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(tmp_path / "data")])
    sessions = []
    for _ in range(2):
        at = _app()
        at.radio(key="data.source").set_value("Folder on the server").run()
        at.text_input(key="data.folder").input(str(data)).run()
        at.text_input(key="data.name").input("same-name").run()
        sessions.append(at)
    for at in sessions:
        at.button(key="data.start").click().run()
        assert not at.exception
    targets = [runs_dir / "same-name", runs_dir / "same-name-2"]
    assert [at.session_state["data.started"] for at in sessions] == [t.name for t in targets]
    for target in targets:
        deadline = time.monotonic() + 120
        while jobs.read_job(target).running:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert jobs.log_path(target).read_text().count("job started") == 1


def test_class_map_places_a_run_of_the_same_model_and_refuses_another(runs_dir, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    foreign = make_run(runs_dir, "other-model", n=30, seed=4)
    manifest = json.loads((foreign / rundir.MANIFEST).read_text())
    manifest["stages"]["model"]["model_hash"] = "0" * 64
    (foreign / rundir.MANIFEST).write_text(json.dumps(manifest))
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
