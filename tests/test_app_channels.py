"""The image viewer and the Latent axes strip of a multi-channel run (Streamlit AppTest): the
composite plus one choice per recorded channel, each channel decoded on demand from the
original file and scaled with the run's recorded dataset-wide range."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import source_model  # noqa: E402, F401 (fixture)

from drlcore.data import ingest, rundir  # noqa: E402
from drlcore.data.decode import channel_view  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
NAMES = ("DNA", "actin", "ER", "mito")


def _cell(i: int, big: bool) -> np.ndarray:
    """(4, 40, 40) uint16: a bright nucleus (DNA) in a cell body (actin, ER, mito)."""
    from skimage.draw import disk

    rng = np.random.default_rng(i + 10 * big)
    arr = rng.normal(100, 5, (4, 40, 40))
    radius = 14 if big else 8
    rr, cc = disk((20, 20), radius, shape=(40, 40))
    arr[1][rr, cc] += 2000 + 200 * i
    arr[2][rr, cc] += 800
    arr[3][rr, cc] += 300 if big else 3000
    rr, cc = disk((20, 20), radius // 2, shape=(40, 40))
    arr[0][rr, cc] += 5000
    return np.clip(arr, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory, source_model):  # noqa: F811
    """A real tiny run (random test backbone) of 4-channel 16-bit TIFF stacks."""
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline

    root = tmp_path_factory.mktemp("channel-run")
    data = root / "stacks"
    for cls, big in (("big", True), ("small", False)):
        (data / cls).mkdir(parents=True)
        for i in range(5):
            tifffile.imwrite(data / cls / f"cell{i}.tif", _cell(i, big), photometric="minisblack",
                             metadata={"axes": "CYX"})
    features = FeatureConfig(backbone="test-tiny", pretrained=False, cache_dir=str(root / "cache"),
                             batch_size=10, channels=",".join(f"{n}={c}" for n, c in zip(
                                 NAMES, ("blue", "green", "magenta", "grey"), strict=True)))
    run = run_pipeline(data, root / "runs" / "fluo",
                       PipelineConfig(features=features, source_model=str(source_model),
                                      transfer_epochs=2))
    return run


@pytest.fixture
def images(monkeypatch):
    """Every image the app hands the browser: its URL -> (bytes, mimetype)."""
    seen: dict[str, tuple[bytes, str]] = {}
    original = MediaFileManager.add

    def record(self, path_or_data, mimetype, coordinates, file_name=None, **kwargs):
        url = original(self, path_or_data, mimetype, coordinates, file_name, **kwargs)
        if isinstance(path_or_data, bytes):
            seen[url] = (path_or_data, mimetype)
        return url

    monkeypatch.setattr(MediaFileManager, "add", record)
    return seen


def _app(run: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("DRL_RUNS_DIR", str(run.parent))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    at.switch_page("views/traversals.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _recorded(run: Path) -> dict:
    entry = json.loads((run / "manifest.json").read_text())["stages"]["features"]
    return entry["preprocessing"]["channels"]


def _object(run: Path, row: int) -> pd.Series:
    objects = pd.read_parquet(run / "objects.parquet")
    return objects[objects["row"] == row].iloc[0] if "row" in objects else objects.iloc[row]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _captions(at) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def _shown(at, images, caption_has: str) -> tuple[np.ndarray, str]:
    """Pixels and mimetype of the one image on screen whose caption contains ``caption_has``."""
    hits = [img for el in at.get("image") for img in el.proto.imgs if caption_has in img.caption]
    assert len(hits) == 1, [img.caption for el in at.get("image") for img in el.proto.imgs]
    data, mime = images[hits[0].url]
    return _pixels(data), mime


def test_viewer_offers_each_channel_and_shows_it_scaled_by_the_run_range(channel_run, monkeypatch,
                                                                         images):
    recorded = _recorded(channel_run)
    assert recorded["names"] == list(NAMES)
    at = _app(channel_run, monkeypatch)
    at.session_state["trav.focus"] = 3
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    choice = at.radio(key="trav.focus.channel")
    assert list(choice.options) == ["Composite", *NAMES]
    obj = _object(channel_run, 3)
    data = ingest.read_bytes(ingest.ImageRecord(obj["path"], None, None, obj["source"]))
    # The composite, as the features stage made it (recorded ranges and colours).
    shown, mime = _shown(at, images, "· composite")
    assert mime == "image/png"  # lossless: the pixels are the decoded ones
    np.testing.assert_array_equal(shown, channel_view(data, recorded, None))
    for k, name in enumerate(NAMES):
        choice = at.radio(key="trav.focus.channel").set_value(k)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        lo, hi = recorded["ranges"][k]
        shown, _ = _shown(at, images, f"· {name} (")
        assert any(f"{lo:g} to {hi:g} shown as black to white" in c for c in _captions(at))
        np.testing.assert_array_equal(shown, channel_view(data, recorded, k))
        assert (shown[..., 0] == shown[..., 1]).all()  # grey
    at.toggle(key="trav.focus.tint").set_value(True).run()
    shown, _ = _shown(at, images, "· mito (")  # mito is grey in the composite: tint = grey
    np.testing.assert_array_equal(shown, channel_view(data, recorded, 3, tint=True))
    at.radio(key="trav.focus.channel").set_value(1).run()  # actin, green
    shown, _ = _shown(at, images, "· actin (")
    np.testing.assert_array_equal(shown, channel_view(data, recorded, 1, tint=True))
    assert shown[..., 1].any() and not shown[..., 0].any() and not shown[..., 2].any()


def test_traversal_strip_swaps_to_one_channel(channel_run, monkeypatch, images):
    at = _app(channel_run, monkeypatch)
    strip = at.radio(key="trav.channel")
    assert list(strip.options) == ["Composite", *NAMES]
    at.radio(key="trav.channel").set_value(0).run()  # DNA
    assert not at.exception, [e.value for e in at.exception]
    objects = pd.read_parquet(channel_run / "objects.parquet")
    recorded = _recorded(channel_run)
    shown = [img for el in at.get("image") for img in el.proto.imgs]
    steps = at.session_state["trav.n_steps"]
    assert len(shown) == steps
    from drlcore.analysis.traversal import traversal_indices

    z = objects[rundir.latent_columns(objects.columns)].to_numpy(np.float64)
    rows = traversal_indices(z, at.session_state["trav.dim"], steps)
    for img, row in zip(shown, rows, strict=True):  # each is channel DNA of its step's object
        data, mime = images[img.url]
        assert mime == "image/png"
        obj = _object(channel_run, int(row))
        raw = ingest.read_bytes(ingest.ImageRecord(obj["path"], None, None, obj["source"]))
        np.testing.assert_array_equal(_pixels(data), channel_view(raw, recorded, 0))
    assert not any("unreadable" in c.value for c in at.caption)


def test_viewer_says_plainly_when_the_original_file_is_gone(channel_run, monkeypatch, images):
    obj = _object(channel_run, 2)
    source = Path(obj["source"])
    hidden = source.with_suffix(".moved")
    source.rename(hidden)
    try:
        at = _app(channel_run, monkeypatch)
        at.session_state["trav.focus"] = 2
        at.run()
        at.radio(key="trav.focus.channel").set_value(2).run()
        assert not at.exception, [e.value for e in at.exception]
        warning = " ".join(w.value for w in at.warning)
        assert "cannot be read" in warning and "channel ER" in warning
        assert obj["path"] in warning
        assert any("composite thumbnail" in c for c in _captions(at))  # still shows the object
    finally:
        hidden.rename(source)
