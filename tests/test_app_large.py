"""The explorer on runs larger than a Plotly figure should carry, and its shared, read-only tables.

Above ``figures.DISPLAY_MAX_POINTS`` objects the scatter plots draw a seeded sample while every
statistic uses all objects; histograms are binned on the server whatever the size; run tables are
read once per file version and shared, so no page may write into them.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run  # noqa: E402

from drlcore.data import rundir  # noqa: E402
from drlcore.io import atomic_write_parquet  # noqa: E402
from drlcore.analysis.traversal import traversal_indices  # noqa: E402
from explorer import figures  # noqa: E402
from explorer.data import Run, _read_parquet  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
N_LARGE = figures.DISPLAY_MAX_POINTS + 5_000


def _n_points(trace: dict) -> int:
    x = trace.get("x", [])
    if isinstance(x, dict) and "bdata" in x:
        return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize
    return len(x)


def _values(trace: dict, axis: str) -> np.ndarray:
    v = trace.get(axis, [])
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, dtype=float)


def _charts(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def large_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("large-runs")
    make_run(root, "large", n=N_LARGE, n_dims=6, thumbs=False)
    return root


def _app(runs: Path, page: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- pure figure parts


def test_display_sample_is_seeded_keeps_selection_and_respects_the_mask():
    df = pd.DataFrame({"row": np.arange(1000) + 10, "v": np.arange(1000.0)})
    assert figures.display_sample(df, 2000) is df
    a = figures.display_sample(df, 100, keep_rows=[10, 1009])
    b = figures.display_sample(df, 100, keep_rows=[10, 1009])
    assert a["row"].tolist() == b["row"].tolist()  # the same sample on every rerun
    assert {10, 1009} <= set(a["row"]) and 100 <= len(a) <= 102
    assert a["row"].is_monotonic_increasing  # table order
    assert figures.display_sample(df, 100, seed=1)["row"].tolist() != a["row"].tolist()
    even = (df["row"] % 2 == 0).to_numpy()
    masked = figures.display_sample(df, 100, keep_rows=[11], where=even)
    assert len(masked) == 100 and (masked["row"] % 2 == 0).all()  # 11 is outside the mask
    assert len(figures.display_sample(df, 600, where=even)) == 500  # all that qualify


def test_pair_scatter_draws_a_sample_above_the_limit_and_says_so():
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"row": np.arange(n), "path": [f"p{i}" for i in range(n)],
                       "label": np.where(np.arange(n) % 2, "a", "b"),
                       "z": rng.normal(size=n), "f": rng.normal(size=n)})
    df.loc[:99, "f"] = np.nan
    fig = figures.pair_scatter(df, "z", "f", "z", "f", selected_rows=[5, 2999], max_points=500)
    drawn = sum(len(t.x) for t in fig.data)
    assert drawn == 501  # row 5 has no value for f, so only 2999 is added to the sample
    rows = {int(r) for t in fig.data for r in t.customdata[:, 0]}
    assert 2999 in rows and 5 not in rows
    assert "501 of 2,900 objects" in fig.layout.title.text
    small = figures.pair_scatter(df, "z", "f", "z", "f")
    assert sum(len(t.x) for t in small.data) == n - 100 and small.layout.title.text is None


def test_anomaly_histogram_bins_on_the_server_with_exact_counts():
    scores = np.arange(100, dtype=float)  # 0..99 in 50 equal bins: two per bin
    fig = figures.anomaly_histogram(scores, None, threshold=50.0)
    (bars,) = fig.data
    assert bars.type == "bar" and list(bars.y) == [2] * 50
    assert bars.x[0] == pytest.approx(0.99) and bars.width == pytest.approx(1.98)
    known = np.arange(100) < 30
    with_nan = np.append(scores, np.nan)
    fig = figures.anomaly_histogram(with_nan, np.append(known, False), threshold=None)
    assert [t.name for t in fig.data] == ["known classes", "other classes"]
    assert sum(fig.data[0].y) == 30 and sum(fig.data[1].y) == 70  # the NaN is in no bin
    flat = figures.anomaly_histogram(np.ones(10), None, None)  # one value: still one bar of 10
    assert sum(flat.data[0].y) == 10


# --------------------------------------------------------------------------- shared tables


def test_run_tables_are_shared_read_only_and_copies_do_not_leak(tmp_path):
    run_dir = make_run(tmp_path, "shared", n=40)
    a, b = Run(run_dir), Run(run_dir)
    _read_parquet.clear()
    first, second = a.objects, b.objects
    col = rundir.latent_column(0)
    assert np.shares_memory(first[col].to_numpy(), second[col].to_numpy())  # one copy in memory
    with pytest.raises(ValueError, match="read-only"):
        first[col].to_numpy()[0] = 99.0
    first["added_by_a_page"] = 1.0
    assert "added_by_a_page" not in Run(run_dir).objects
    assert "added_by_a_page" not in second


# --------------------------------------------------------------------------- pages on a large run


def test_correlations_and_anomalies_draw_samples_but_count_everything(large_runs, monkeypatch):
    at = _app(large_runs, "correlations", monkeypatch)
    _, scatter = _charts(at)
    assert sum(_n_points(t) for t in scatter["data"]) == figures.DISPLAY_MAX_POINTS
    assert f"{figures.DISPLAY_MAX_POINTS:,} of" in scatter["layout"]["title"]["text"]
    assert any("seeded random sample" in c.value for c in at.caption)

    at.switch_page("views/anomalies.py").run()
    assert not at.exception, [e.value for e in at.exception]
    hist, map_fig = _charts(at)[:2]
    assert all(t["type"] == "bar" for t in hist["data"])
    assert sum(_values(t, "y").sum() for t in hist["data"]) == N_LARGE  # every object counted
    drawn = sum(_n_points(t) for t in map_fig["data"] if t["name"] != "flagged as anomalous")
    assert figures.DISPLAY_MAX_POINTS <= drawn <= figures.DISPLAY_MAX_POINTS * 1.2
    assert any(c.value.startswith(f"Drawn: {drawn:,} of {N_LARGE:,} objects") for c in at.caption)
    flagged = int(at.metric[0].value.replace(",", ""))
    ringed = next(t for t in map_fig["data"] if t["name"] == "flagged as anomalous")
    assert 0 < _n_points(ringed) <= flagged


def test_traversal_strip_shows_the_objects_at_its_positions_whatever_the_row_order(tmp_path,
                                                                                     monkeypatch):
    runs = tmp_path / "runs"
    run_dir = make_run(runs, "reversed", n=60, n_dims=6)
    objects = pd.read_parquet(run_dir / rundir.OBJECTS)
    objects = objects.iloc[::-1].reset_index(drop=True)  # rows no longer equal positions
    atomic_write_parquet(run_dir / rundir.OBJECTS, objects)
    at = _app(runs, "traversals", monkeypatch)
    dim = at.session_state["trav.dim"]
    z = objects[[rundir.latent_column(j) for j in range(6)]].to_numpy(np.float64)
    expected = objects["row"].to_numpy()[traversal_indices(z, dim, 9)].tolist()
    shown = [int(b.key.split(".view.")[1].split(".")[0]) for b in at.button
             if b.key and b.key.startswith(f"trav.strip.{dim}.view.")]
    assert shown == expected



def test_cached_figures_are_shared_until_the_run_or_the_settings_change(tmp_path):
    from drlcore.io import atomic_write_json
    from explorer.ui import cached_figure

    run_dir = make_run(tmp_path, "figs", n=30)
    builds = []

    def build():
        builds.append(1)
        return go.Figure()

    first = cached_figure(Run(run_dir), "view", ("a", 1), build)
    assert cached_figure(Run(run_dir), "view", ("a", 1), build) is first  # another rerun/session
    assert len(builds) == 1
    assert cached_figure(Run(run_dir), "view", ("a", 2), build) is not first  # other settings
    analysis = json.loads((run_dir / rundir.ANALYSIS).read_text())
    atomic_write_json(run_dir / rundir.ANALYSIS, dict(analysis, rewritten=True))  # re-analysed
    assert cached_figure(Run(run_dir), "view", ("a", 1), build) is not first
    assert len(builds) == 3
