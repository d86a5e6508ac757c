"""Preprocessing modes: the dataset-wide canvas keeps absolute size, pad erases it; auto chooses
by the spread of crop sizes; the choice reaches the manifest and the feature cache key."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from drlcore.data import ingest
from drlcore.embedding.backbones import load_backbone
from drlcore.cli import _feature_config, build_parser
from drlcore.errors import DrlError
from drlcore.embedding.features import (FeatureConfig, describe_preprocess, extract_features,
                              preprocessing_of)
from drlcore.data.geometry import (AUTO_SPREAD, choose_preprocess, prepare, shrinks, to_canvas,
                              to_square)
from drlcore.runs.pipeline import PipelineConfig

BACKGROUND, OBJECT = 235, 30


def _disk_crop(side: int) -> np.ndarray:
    """A tight crop: a dark disk of radius 0.4 * side, centred on a pale background."""
    img = np.full((side, side, 3), BACKGROUND, np.uint8)
    rr, cc = disk((side / 2 - 0.5, side / 2 - 0.5), 0.4 * side, shape=img.shape[:2])
    img[rr, cc] = OBJECT
    return img


def _object_pixels(prepared: np.ndarray) -> int:
    """Object area on the model input, in input pixels."""
    return int((prepared[..., 0] < (BACKGROUND + OBJECT) / 2).sum())


# ------------------------------------------------------------------------------- pure geometry


def test_canvas_keeps_absolute_size_and_pad_erases_it():
    small, large = _disk_crop(40), _disk_crop(160)
    on_canvas = [_object_pixels(to_canvas(c, 64, 200)) for c in (small, large)]
    padded = [_object_pixels(to_square(c, 64, True)) for c in (small, large)]
    # Canvas: one scale for both, so the area ratio is the true one, (40/160)^2 = 1/16.
    assert on_canvas[0] / on_canvas[1] == pytest.approx(1 / 16, rel=0.2)
    # 160 px at 64/200 input px per pixel: a disk of radius 0.4 * 51.2 px.
    assert on_canvas[1] == pytest.approx(np.pi * (0.4 * 160 * 64 / 200) ** 2, rel=0.1)
    # Pad: each crop fills the input, so both objects look the same size.
    assert padded[0] == pytest.approx(padded[1], rel=0.05)


def test_canvas_shrinks_only_crops_larger_than_the_canvas():
    big = _disk_crop(300)
    out = to_canvas(big, 64, 200)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert shrinks(300, 300, 200) and not shrinks(200, 120, 200)
    # Shrunk to fit: it spans the whole input, as padding would make it.
    assert _object_pixels(out) == pytest.approx(_object_pixels(to_square(big, 64, True)), rel=0.05)
    # A wide crop keeps its aspect ratio on the canvas and is centred.
    wide = np.full((20, 100, 3), BACKGROUND, np.uint8)
    wide[2:18, 2:98] = OBJECT
    out = to_canvas(wide, 100, 100, interpolation="nearest")
    dark = np.argwhere(out[..., 0] < 128)  # rows 40..59 hold the crop
    assert dark[:, 0].min() == 42 and dark[:, 0].max() == 57
    assert dark[:, 1].min() == 2 and dark[:, 1].max() == 97


def test_canvas_fill_is_the_crops_own_border_colour():
    crop = np.full((10, 10, 3), (12, 34, 56), np.uint8)
    crop[4:6, 4:6] = 255
    out = to_canvas(crop, 50, 40, interpolation="nearest")
    assert tuple(out[0, 0]) == (12, 34, 56) and tuple(out[-1, -1]) == (12, 34, 56)


def test_prepare_dispatches_and_refuses_unresolved_modes():
    crop = _disk_crop(40)
    np.testing.assert_array_equal(prepare(crop, 64, "pad"), to_square(crop, 64, True))
    np.testing.assert_array_equal(prepare(crop, 64, "stretch"), to_square(crop, 64, False))
    np.testing.assert_array_equal(prepare(crop, 64, "canvas", 80), to_canvas(crop, 64, 80))
    with pytest.raises(ValueError, match="auto"):
        prepare(crop, 64, "auto")
    with pytest.raises(ValueError, match="canvas side"):
        prepare(crop, 64, "canvas")


def test_choose_preprocess_known_answers():
    sides = list(range(1, 101))  # p10 10.9, p90 90.1, p95 95.05
    record = choose_preprocess(sides, "auto", 95.0)
    assert record["mode"] == "canvas" and record["requested"] == "auto"
    assert record["rule"]["value"] == pytest.approx(90.1 / 10.9)
    assert record["rule"]["threshold"] == AUTO_SPREAD and record["rule"]["fired"]
    assert record["canvas_side"] == 96 and record["shrunk"] == 4  # 97, 98, 99, 100
    assert record["longest_side"]["median"] == pytest.approx(50.5)
    assert record["n_sized"] == 100

    uniform = choose_preprocess([360, 363, 358, 361] * 5 + [None], "auto")
    assert uniform["mode"] == "pad" and not uniform["rule"]["fired"]
    assert uniform["n_sized"] == 20 and "canvas_side" not in uniform
    # Just under and at the threshold.
    assert choose_preprocess([100] * 20 + [199] * 80, "auto")["mode"] == "pad"
    assert choose_preprocess([100] * 20 + [200] * 80, "auto")["mode"] == "canvas"
    # Requested modes are kept; canvas without any size falls back to pad, saying so.
    assert choose_preprocess([360] * 5, "canvas")["canvas_side"] == 360
    assert choose_preprocess(sides, "pad")["mode"] == "pad"
    fallback = choose_preprocess([None], "canvas")
    assert fallback["mode"] == "pad" and "no image size" in fallback["reason"]
    with pytest.raises(ValueError):
        choose_preprocess(sides, "squash")


def test_longest_side_reads_headers_only():
    def encoded(fmt, w, h):
        buffer = io.BytesIO()
        Image.new("RGB", (w, h)).save(buffer, format=fmt)
        return buffer.getvalue()

    assert ingest.longest_side(encoded("PNG", 30, 70)) == 70
    assert ingest.longest_side(encoded("JPEG", 90, 40)) == 90
    assert ingest.longest_side(encoded("BMP", 12, 5)) == 12
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((3, 50, 20), np.uint16), photometric="minisblack")  # 3 channels of 20 x 50
    assert ingest.longest_side(buffer.getvalue()) == 50
    assert ingest.longest_side(b"not an image") is None
    assert ingest.longest_side(b"") is None


# ----------------------------------------------------------------------------- configuration


def test_old_configs_with_pad_to_square_still_load():
    assert FeatureConfig.from_dict({"pad_to_square": True}).preprocess == "pad"
    assert FeatureConfig.from_dict({"pad_to_square": False}).preprocess == "stretch"
    assert FeatureConfig(pad_to_square=False) == FeatureConfig(preprocess="stretch")
    assert FeatureConfig.from_dict({"pad_to_square": True}).pad_to_square is None
    assert FeatureConfig().preprocess == "auto"
    old = PipelineConfig.from_dict({"features": {"backbone": "test-tiny", "pad_to_square": True}})
    assert old.features.preprocess == "pad"
    # A saved new config round-trips.
    config = FeatureConfig(preprocess="canvas", canvas_percentile=90.0)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DrlError, match="contradicts"):
        FeatureConfig(preprocess="canvas", pad_to_square=True)
    with pytest.raises(DrlError, match="unknown preprocessing"):
        FeatureConfig(preprocess="squash")
    with pytest.raises(DrlError, match="canvas percentile"):
        FeatureConfig(canvas_percentile=20.0)


def test_cli_preprocess_option():
    parser = build_parser()

    def config(*extra):
        return _feature_config(parser.parse_args(["features", "data", "--out", "o", *extra]))

    assert config().preprocess == "auto"
    assert config("--preprocess", "canvas").preprocess == "canvas"
    assert config("--no-pad").preprocess == "stretch"
    assert config("--no-pad", "--preprocess", "stretch").preprocess == "stretch"
    with pytest.raises(DrlError, match="contradicts"):
        config("--no-pad", "--preprocess", "canvas")
    run = parser.parse_args(["run", "data", "--out", "o", "--preprocess", "pad"])
    assert _feature_config(run).preprocess == "pad"


def test_cache_key_parts_differ_by_mode():
    tiny = load_backbone("test-tiny", pretrained=False)
    pad = preprocessing_of(tiny, True, None)
    stretch = preprocessing_of(tiny, False, None)
    canvas = preprocessing_of(tiny, True, None, canvas_side=200)
    # Pad keeps the key parts it had before the canvas mode (its pixels did not change).
    assert pad == {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                   "interpolation": "bicubic", "pad_to_square": True, "intensity_range": None}
    assert len({str(p) for p in (pad, stretch, canvas,
                                 preprocessing_of(tiny, True, None, canvas_side=201))}) == 4


# ------------------------------------------------------------------------ the features stage


@pytest.fixture
def tiny_recording():
    """The tiny backbone, recording every input batch it embeds."""
    backbone = load_backbone("test-tiny", pretrained=False)
    seen: list[np.ndarray] = []
    embed = backbone.embed

    def recording(images):
        seen.append(np.array(images))
        return embed(images)

    backbone.embed = recording
    backbone.seen = seen
    return backbone


SIDES = [40 + 8 * i for i in range(16)] + [400]  # 40..160 and one large crop


@pytest.fixture
def varied(tmp_path):
    root = tmp_path / "disks"
    root.mkdir()
    for side in SIDES:
        Image.fromarray(_disk_crop(side)).save(root / f"d{side:03d}.png")
    return root


def _inputs_by_path(result, backbone) -> dict[str, np.ndarray]:
    inputs = np.concatenate(backbone.seen)
    assert len(inputs) == len(result.table)  # one input per image (no duplicates here)
    return dict(zip(result.table["path"], inputs))


def test_features_stage_canvas_end_to_end(varied, tmp_path, tiny_recording):
    config = FeatureConfig(backbone="test-tiny", pretrained=False, batch_size=4,
                           cache_dir=str(tmp_path / "cache"))
    result = extract_features(varied, tmp_path / "canvas", config, backbone=tiny_recording)
    record = result.manifest["preprocess"]
    # 17 sides: p95 = 160 + 0.2 * (400 - 160) = 208; only the 400 px crop is larger.
    assert record["requested"] == "auto" and record["mode"] == "canvas"
    assert record["canvas_side"] == 208 and record["shrunk"] == 1
    assert record["rule"]["value"] >= AUTO_SPREAD and record["n_sized"] == len(SIDES)
    assert result.manifest["preprocessing"]["canvas_side"] == 208
    from drlcore.data import rundir

    assert rundir.stage_entry(tmp_path / "canvas", "features")["preprocess"] == record
    assert "canvas" in describe_preprocess(result.manifest)
    assert "1 image(s) larger than the canvas shrunk" in describe_preprocess(result.manifest)

    inputs = _inputs_by_path(result, tiny_recording)
    small, large = (_object_pixels(inputs[f"d{s:03d}.png"]) for s in (40, 160))
    assert small / large == pytest.approx((40 / 160) ** 2, rel=0.25)
    # The shrunk crop fills the canvas, like a padded one.
    assert _object_pixels(inputs["d400.png"]) == pytest.approx(
        _object_pixels(to_square(_disk_crop(400), 64, True)), rel=0.05)

    # Pad mode on the same images: same-looking objects, another cache key, other features.
    tiny_recording.seen.clear()
    pad = extract_features(varied, tmp_path / "pad",
                           FeatureConfig(backbone="test-tiny", pretrained=False, batch_size=4,
                                         cache_dir=str(tmp_path / "cache"), preprocess="pad"),
                           backbone=tiny_recording)
    assert len(tiny_recording.seen) > 0  # not served from the canvas features
    assert pad.manifest["preprocess"]["mode"] == "pad"
    assert pad.manifest["cache"]["key"] != result.manifest["cache"]["key"]
    assert not np.allclose(pad.features, result.features)
    inputs = _inputs_by_path(pad, tiny_recording)
    small, large = (_object_pixels(inputs[f"d{s:03d}.png"]) for s in (40, 160))
    assert small == pytest.approx(large, rel=0.05)


def test_auto_pads_uniform_sizes(tmp_path, tiny_recording):
    root = tmp_path / "uniform"
    root.mkdir()
    for i, side in enumerate([60, 62, 64, 66, 68, 70]):
        Image.fromarray(_disk_crop(side)).save(root / f"u{i}.png")
    result = extract_features(root, tmp_path / "run",
                              FeatureConfig(backbone="test-tiny", pretrained=False,
                                            cache_dir=str(tmp_path / "cache")),
                              backbone=tiny_recording)
    record = result.manifest["preprocess"]
    assert record["mode"] == "pad" and not record["rule"]["fired"]
    assert "canvas_side" not in result.manifest["preprocessing"]
    assert describe_preprocess(result.manifest).startswith("pad:")
    inputs = np.concatenate(tiny_recording.seen)
    expected = np.stack([to_square(_disk_crop(s), 64, True) for s in [60, 62, 64, 66, 68, 70]])
    np.testing.assert_array_equal(inputs, expected)


def test_describe_preprocess_of_an_old_run():
    assert describe_preprocess({"preprocessing": {"input_size": 224, "pad_to_square": True}}
                               ).startswith("pad:")
    assert describe_preprocess({"preprocessing": {"pad_to_square": False}}).startswith("stretch:")


# ----------------------------------------------------------------------------------- the app


def test_app_shows_the_mode_and_passes_the_chosen_one(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(Path(__file__).parent))
    from app_fixtures import make_run

    from explorer import jobs as app_jobs

    runs = tmp_path / "runs"
    run = make_run(runs, "cells", n=40)
    manifest = json.loads((run / "manifest.json").read_text())
    features = manifest["stages"]["features"]  # the nested layout the engine writes
    features["preprocessing"] = {"input_size": 64, "pad_to_square": True,
                                 "preprocess": "canvas", "canvas_side": 208}
    features["preprocess"] = choose_preprocess(SIDES, "auto")
    (run / "manifest.json").write_text(json.dumps(manifest))
    data = tmp_path / "data" / "disks"
    data.mkdir(parents=True)
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(tmp_path / "data")])
    started = []
    monkeypatch.setattr(app_jobs, "start_run",
                        lambda target, data, settings, cleanup=None: started.append(settings))

    app = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
    at = AppTest.from_file(app, default_timeout=60).run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Images prepared by canvas: every image pasted on one 208 px canvas" in captions
    assert "Chosen by auto: crop sizes vary widely" in captions
    assert at.selectbox(key="data.preprocess").value == "auto"
    at.selectbox(key="data.preprocess").set_value("canvas").run()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(data)).run()
    at.button(key="data.start").click().run()
    assert not at.exception, at.exception
    assert started and started[0]["features"]["preprocess"] == "canvas"
