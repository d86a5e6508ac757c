"""The Python API (drlcore.runs.api) and the example notebook.

The notebook is executed in a real kernel (nbclient) on a fixture run, and each figure it shows
is compared with the figure the explorer's page draws for the same run (Streamlit AppTest): the
notebook and the app must agree because they call the same builders.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app_views import runs_dir, runs_template  # noqa: E402,F401 - a fixture run, 90 objects
from test_pipeline import make_dataset, source_model  # noqa: E402,F401 - the pipeline tests' tiny source model

import drlcore  # noqa: E402
from drlcore.data import rundir  # noqa: E402
from drlcore.errors import DrlError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "explore_a_run.ipynb"
APP = str(ROOT / "explorer" / "app.py")
PLOTLY_MIME = "application/vnd.plotly.v1+json"


# --------------------------------------------------------------------------- the package


def test_import_drlcore_is_light_and_names_are_lazy():
    code = ("import sys, drlcore as drl\n"
            "heavy = ('pandas', 'plotly', 'streamlit', 'torch', 'sklearn', 'explorer')\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "drl.open_run\n"
            "print([m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.splitlines()
    assert out == ["[]", "[]"], out
    assert drlcore.open_run is drlcore.runs.api.open_run and drlcore.DrlError is DrlError
    with pytest.raises(AttributeError):
        drlcore.no_such_name  # noqa: B018


def test_open_run_tables_are_read_once_and_kept(runs_dir):
    run = drlcore.open_run(runs_dir / "cells")
    assert "90 objects, 3 classes" in repr(run) and "z0: size" in repr(run)
    assert run.objects is run.objects
    assert list(run.latents.columns) == [f"z_mean_{j}" for j in range(6)]
    assert set(run.morphology.columns) == {"morph_area", "morph_eccentricity",
                                           "morph_intensity_mean", "morph_solidity"}
    assert run.classes == ["lymphocyte", "neutrophil", "platelet"]
    assert run.analysis.dim_names[:3] == ["z0: size", "z1: shape", "z2: intensity"]
    assert run.analysis.config["known_classes"] == ["lymphocyte", "neutrophil"]
    axes = run.axes
    assert list(axes["status"][:3]) == ["named"] * 3 and axes.loc[0, "feature"] == "morph_area"
    thumbs = run.thumbnails([0, 5])
    assert [t.size for t in thumbs] == [(64, 64), (64, 64)]
    path = run.objects["path"].iloc[5]
    assert run.thumbnail_bytes([path]) == run.thumbnail_bytes([5])


def test_traversal_and_groups_follow_the_fixture(runs_dir):
    """z0 follows size and platelets are small: the z0 strip climbs, and lymphocytes vs
    platelets puts z0 and area on top with A larger."""
    run = drlcore.open_run(runs_dir / "cells")
    strip = run.traversal(0, n_steps=7)
    assert len(strip) == 7 and np.all(np.diff(strip["value"]) > 0)
    assert np.corrcoef(strip["value"], strip["z_mean_0"])[0, 1] > 0.9
    assert strip["caption"].iloc[0].startswith("z0 = ")
    table = run.compare("lymphocyte", "platelet")
    assert set(table["column"].head(2)) == {"z_mean_0", "morph_area"}
    assert (table["hedges_g"].head(2) > 1).all()
    rest = run.compare("platelet")
    assert int(rest["n_b"].iloc[0]) == 60
    assert run.traversal("size")["row"].tolist() == run.traversal(0)["row"].tolist()


def test_clear_errors(runs_dir, tmp_path):
    with pytest.raises(DrlError, match="no run folder"):
        drlcore.open_run(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DrlError, match="not a drl run folder"):
        drlcore.open_run(tmp_path / "plain")
    run = drlcore.open_run(runs_dir / "cells")
    with pytest.raises(DrlError, match="no figure 'pie'.*heatmap"):
        run.figure("pie")
    with pytest.raises(DrlError, match="no class 'monocyte'"):
        run.compare("monocyte")
    with pytest.raises(DrlError, match="axis 9 does not exist"):
        run.traversal(9)
    with pytest.raises(DrlError, match="cannot colour by"):
        run.figure("class map", colour="nothing")
    with pytest.raises(DrlError, match="figure 'heatmap' takes no option colour; its options: method, cluster, every"):
        run.figure("heatmap", colour="x")
    with pytest.raises(DrlError, match="no object with row 1000"):
        run.thumbnails([1000])
    with pytest.raises(DrlError, match="unknown option.*bakbone"):
        drlcore.run(tmp_path / "data", tmp_path / "out", bakbone="effnet-lite0")


def test_run_options_are_the_cli_options():
    """drl.run(**options) and `drl run --...` build the same PipelineConfig."""
    from drlcore.cli import _feature_config, build_parser
    from drlcore.runs.options import feature_config, pipeline_config

    args = build_parser().parse_args(["run", "data", "--out", "o", "--backbone", "test-tiny",
                                      "--batch-size", "8", "--preprocess", "canvas",
                                      "--known-classes", "a", "b", "--epochs", "3",
                                      "--anchor", "area"])
    from_cli = pipeline_config(_feature_config(args), source_model=args.source_model,
                               known_classes=args.known_classes, epochs=args.epochs,
                               latent_dim=args.latent_dim, anchor=args.anchor)
    from_api = pipeline_config(feature_config(backbone="test-tiny", batch_size=8,
                                              preprocess="canvas"),
                               known_classes=["a", "b"], epochs=3, anchor="area")
    assert from_cli == from_api
    assert from_api.anchors == ("morph_area",) and from_api.transfer_epochs == 3


@pytest.mark.slow
def test_run_from_python_reports_progress(tmp_path, source_model):
    """drl.run on drawn cells (tiny random-init backbone, 2 transfer epochs): the run opens with
    the options given, and the progress callback saw every stage."""
    data = tmp_path / "cells"
    make_dataset(data, n_per_class=12)
    seen: list[tuple] = []
    run = drlcore.run(data, tmp_path / "run", backbone="test-tiny", pretrained=False,
                      batch_size=8, cache_dir=str(tmp_path / "cache"),
                      source_model=str(source_model), epochs=2, known_classes=["round", "long"],
                      progress=lambda stage, done, total, postfix: seen.append((stage, done, total)))
    assert isinstance(run, drlcore.Run) and len(run.objects) == 36
    assert sorted(run.analysis.config["known_classes"]) == ["long", "round"]
    assert rundir.stage_entry(run.path, "pipeline")["transferred"] is True
    finished = [(s, d, t) for s, d, t in seen if t]
    assert finished and all(d <= t for _, d, t in finished), seen
    assert len({s for s, _, _ in seen}) >= 3, seen
    # The originals decode as the pipeline decoded them (drawn 80 x 80 RGB cells).
    original = run.images([0, run.objects["path"].iloc[1]])
    assert [im.shape for im in original] == [(80, 80, 3)] * 2 and original[0].dtype == np.uint8


# --------------------------------------------------------------------------- the example notebook


def _plain(value):
    """Figure JSON with Plotly's typed arrays ({"dtype", "bdata"}) decoded to lists, so a figure
    serialised by the notebook and by Streamlit compare as values."""
    if isinstance(value, dict):
        if set(value) >= {"dtype", "bdata"} and set(value) <= {"dtype", "bdata", "shape"}:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            if "shape" in value:
                shape = value["shape"]
                array = array.reshape([int(n) for n in str(shape).split(",")]
                                      if isinstance(shape, str) else shape)
            return _plain(array.tolist())
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same(a, b, where="figure"):
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys differ {sorted(set(a) ^ set(b))}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _figure(spec: dict) -> dict:
    return _plain({"data": spec["data"], "layout": spec["layout"]})


def _execute_notebook(run_dir: Path, workdir: Path) -> dict[str, dict]:
    """Run the example notebook in a fresh kernel on ``run_dir``; its figures by cell tag."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's own spec: jupyter_client starts it with this interpreter.
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**__import__("os").environ, "DRL_EXAMPLE_RUN": str(run_dir)})
    figures = {}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            data = output.get("data", {})
            if tags and PLOTLY_MIME in data:
                figures[tags[0]] = _figure(data[PLOTLY_MIME])
    return figures


def _app_figures(runs_dir: Path) -> dict[str, dict]:
    """The figures the explorer's pages draw for the run on screen, untouched (AppTest)."""
    from streamlit.testing.v1 import AppTest

    def page(name: str, **state) -> list[dict]:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.switch_page(f"views/{name}.py").run()
        for key, value in state.items():
            at.radio(key=key).set_value(value).run()
        assert not at.exception, [e.value for e in at.exception]
        return [_figure(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]

    heatmap = page("correlations")[0]
    class_map = page("class_map")[0]
    groups = page("class_map", **{"map.compare": "groups"})[-1]
    histogram, anomaly_map = page("anomalies")[:2]
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/traversals.py").run()
    assert not at.exception, [e.value for e in at.exception]
    prefix = "trav.strip.0.view."  # one "View" button per image, keyed by the object's row
    strip_rows = [int(b.key[len(prefix):].split(".")[0]) for b in at.button
                  if b.key and b.key.startswith(prefix)]
    strip_captions = [el.proto.imgs[0].caption for el in at.get("image")]
    return {"heatmap": heatmap, "class map": class_map, "groups": groups,
            "anomaly map": anomaly_map, "anomaly histogram": histogram,
            "traversal": {"rows": strip_rows, "captions": strip_captions}}


def test_example_notebook_runs_and_draws_the_apps_figures(runs_dir, tmp_path):
    figures = _execute_notebook(runs_dir / "cells", tmp_path)
    assert set(figures) == {"heatmap", "traversal", "class map", "groups", "anomaly map"}, figures
    app = _app_figures(runs_dir)
    run = drlcore.open_run(runs_dir / "cells")
    # The histogram is not in the notebook: the API's own figure is checked in this process.
    figures["anomaly histogram"] = _figure(json.loads(run.figure("anomaly histogram").to_json()))
    strip = app.pop("traversal")
    for name, spec in app.items():
        _same(figures[name], spec, name)
    # The strip has no Plotly chart in the app (the page shows an image grid): the notebook's
    # images and captions are the page's objects and captions.
    titles = [a["text"] for a in figures["traversal"]["layout"]["annotations"]]
    assert titles == strip["captions"] and len(titles) == 9
    sources = [t["source"] for t in figures["traversal"]["data"]]
    expected = ["data:image/jpeg;base64," + base64.b64encode(b).decode() for b in
                run.thumbnail_bytes(strip["rows"])]
    assert sources == expected


def test_open_run_refuses_a_damaged_table_like_every_reader(tmp_path):
    """The notebook API reads tables through rundir.read_table: a flipped bit in a recorded
    objects.parquet is an error naming the file and the rerun, never other numbers."""
    from app_fixtures import make_run

    run = make_run(tmp_path, n=30)
    rundir.record_files(run, "analyze", [rundir.OBJECTS, rundir.CORRELATIONS])
    assert len(drlcore.open_run(run).objects) == 30
    path = run / rundir.OBJECTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DrlError, match=r"objects\.parquet is damaged.*rerun"):
        drlcore.open_run(run).objects
