"""Multi-channel fluorescence images: decoding 2-8 channel TIFFs without dropping any, the
per-channel dataset-wide ranges, the documented composite, and one-file-per-channel layouts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from drlcore.data import ingest, rundir
from drlcore.data.channels import channel_map, composite, default_colours, parse_channels
from drlcore.errors import DrlError, SkipImage
from test_app import runs_dir, runs_template  # noqa: F401 (fixtures)
from test_pipeline import source_model  # noqa: F401 (fixture)


def _stack(n: int, seed: int = 0, size=(24, 32), gain=None) -> np.ndarray:
    """(n, H, W) uint16; channel k has pixels up to ``gain[k]`` (default 1000 * (k + 1))."""
    rng = np.random.default_rng(seed)
    gain = gain if gain is not None else [1000 * (k + 1) for k in range(n)]
    return np.stack([(rng.random(size) * g).astype(np.uint16) for g in gain])


def _tiff_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("n", [2, 4, 5, 8])
def test_channels_first_stack_keeps_every_channel(n):
    arr = _stack(n)
    data = _tiff_bytes(arr, photometric="minisblack", metadata={"axes": "CYX"})
    ranges = [(0.0, float(1000 * (k + 1))) for k in range(n)]
    image = ingest.decode(data, intensity_range=None, channel_ranges=ranges)
    assert image.channels.shape == (24, 32, n)
    assert image.mode == f"{n}-channel 16-bit"
    assert image.rgb.shape == (24, 32, 3) and image.rgb.dtype == np.uint8
    assert image.note is None  # nothing dropped, dataset-wide ranges used
    for k in range(n):  # channel k is channel k, scaled by its own range
        expected = np.clip(arr[k].astype(np.float32) / (1000 * (k + 1)), 0, 1)
        np.testing.assert_allclose(image.channels[..., k], expected, atol=1e-6)


def test_stack_layouts_without_metadata_and_interleaved_and_ome():
    arr = _stack(4)
    layouts = {
        "pages, no metadata": _tiff_bytes(arr, photometric="minisblack", metadata=None),
        "interleaved samples": _tiff_bytes(np.moveaxis(arr, 0, -1), photometric="minisblack",
                                           planarconfig="contig"),
        "planar samples": _tiff_bytes(arr, photometric="minisblack", planarconfig="separate"),
        "OME-TIFF": _tiff_bytes(arr, photometric="minisblack", ome=True,
                                metadata={"axes": "CYX"}),
    }
    for name, data in layouts.items():
        image = ingest.decode(data)
        assert image.channels is not None and image.channels.shape[2] == 4, name
        # per-image percentiles without a dataset range, and the note says so
        assert "own" in image.note, name
        lo, hi = np.percentile(arr[3], [0.5, 99.5])
        expected = np.clip((arr[3].astype(np.float32) - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(image.channels[..., 3], expected, atol=1e-5, err_msg=name)


def test_z_stack_uses_first_plane_and_says_so():
    arr = np.stack([_stack(3, seed=z) for z in range(2)])  # ZCYX
    data = _tiff_bytes(arr, photometric="minisblack", metadata={"axes": "ZCYX"})
    image = ingest.decode(data)
    assert image.channels.shape[2] == 3
    assert "Z axis: first of 2 planes used" in image.note
    lo, hi = np.percentile(arr[0, 1], [0.5, 99.5])
    np.testing.assert_allclose(image.channels[..., 1],
                               np.clip((arr[0, 1] - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_too_many_channels_is_a_skip_reason():
    data = _tiff_bytes(_stack(9, gain=[100] * 9), photometric="minisblack",
                       metadata={"axes": "CYX"})
    with pytest.raises(SkipImage, match="9 channels"):
        ingest.decode(data)


def test_rgb_tiff_and_png_keep_the_rgb_path():
    rgb = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    image = ingest.decode(_tiff_bytes(rgb, photometric="rgb"))
    assert image.channels is None
    np.testing.assert_array_equal(image.rgb, rgb)


def test_composite_is_what_the_colour_map_says():
    cmap = channel_map(4, spec="DNA=blue,actin=green,mito=magenta,er=grey")
    assert cmap.names == ("DNA", "actin", "mito", "er")
    unit = np.zeros((2, 3, 4), np.float32)
    unit[0, 0] = [1, 0, 0, 0]        # DNA only: pure blue
    unit[0, 1] = [0, 0.5, 0, 0]      # half green
    unit[0, 2] = [0, 0, 0.4, 0]      # magenta: red + blue
    unit[1, 0] = [0.2, 0.3, 0, 0]    # blue + green add up
    unit[1, 1] = [1, 1, 1, 1]        # saturates: clipped to white
    unit[1, 2] = [0, 0, 0, 0.1]      # grey
    rgb = composite(unit, cmap)
    expected = np.array([[[0, 0, 255], [0, 128, 0], [102, 0, 102]],
                         [[0, 77, 51], [255, 255, 255], [26, 26, 26]]], np.uint8)
    np.testing.assert_array_equal(rgb, expected)


def test_default_colours_and_spec_forms():
    assert default_colours(2) == ["green", "magenta"]
    assert default_colours(4) == ["blue", "green", "magenta", "grey"]
    assert channel_map(3, spec="1=red").colours == ("blue", "red", "magenta")
    assert channel_map(3, spec="cyan,yellow").colours == ("cyan", "yellow", "magenta")
    by_name = channel_map(2, names=["DAPI", "GFP"], spec="GFP=#ff8000")
    assert by_name.colours == ("green", "#ff8000")
    assert np.allclose(by_name.rgb[1], [1.0, 128 / 255, 0.0])
    for bad, match in [("DNA=pink", "unknown channel colour"), ("=blue", "no channel name"),
                       ("a=blue,a=green", "named twice")]:
        with pytest.raises(DrlError, match=match):
            parse_channels(bad)
    with pytest.raises(DrlError, match="no channel called 'RFP'"):
        channel_map(2, names=["DAPI", "GFP"], spec="RFP=red")
    with pytest.raises(DrlError, match="channel index 5"):
        channel_map(3, spec="5=red")
    with pytest.raises(DrlError, match="unknown channel colour"):
        ingest.IngestConfig(channels="x=nope")


def test_composite_follows_the_channels_option():
    arr = _stack(2)
    data = _tiff_bytes(arr, photometric="minisblack", metadata={"axes": "CYX"})
    ranges = [(0.0, 1000.0), (0.0, 2000.0)]
    image = ingest.decode(data, ingest.IngestConfig(channels="off,grey"), None, ranges)
    grey = np.clip(arr[1].astype(np.float32) / 2000.0, 0, 1)
    np.testing.assert_array_equal(image.rgb[..., 0], (grey * 255 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(image.rgb[..., 0], image.rgb[..., 2])


def test_per_channel_ranges_are_dataset_wide(tmp_path):
    # Two images: a dim one and a bright one (x4). Channel 1 is always 10x channel 0.
    root = tmp_path / "stacks"
    root.mkdir()
    for name, scale in (("dim", 1), ("bright", 4)):
        arr = _stack(3, seed=scale, gain=[500 * scale, 5000 * scale, 100 * scale])
        tifffile.imwrite(root / f"{name}.tif", arr, photometric="minisblack",
                         metadata={"axes": "CYX"})
    dataset = ingest.discover(root)
    shared, ranges = ingest.intensity_ranges(dataset)
    assert shared is None and len(ranges) == 3
    highs = [hi for _, hi in ranges]
    # One range per channel, pooled over both images: near the bright image's top, per channel.
    assert highs[1] == pytest.approx(10 * highs[0], rel=0.05)
    assert 1500 < highs[0] <= 2000 and 200 < highs[2] <= 400
    dim = ingest.decode((root / "dim.tif").read_bytes(), intensity_range=shared,
                        channel_ranges=ranges)
    bright = ingest.decode((root / "bright.tif").read_bytes(), intensity_range=shared,
                           channel_ranges=ranges)
    # The dim image stays dim: intensity differences between images survive the scaling.
    for k in range(3):
        assert bright.channels[..., k].mean() > 3 * dim.channels[..., k].mean()
    entry = ingest.channels_entry(dataset, ingest.IngestConfig(), ranges)
    assert entry["colours"] == ["blue", "green", "magenta"] and len(entry["ranges"]) == 3


def test_an_image_with_other_channel_count_is_skipped_with_a_reason():
    data = _tiff_bytes(_stack(2), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(SkipImage, match="2 channels where the dataset's images have 4"):
        ingest.decode(data, channel_ranges=[(0.0, 1.0)] * 4)


CELL_PAINTING = ("AGP", "DNA", "ER", "Mito")


def _write_channel_layout(root, n_objects=3, classes=("a", "b"), drop=None, scale=1):
    """``<class>/<object>_<channel>.tif``: channel k of object i is the constant 100*(k+1)*(i+1)
    plus a bright square, so each decoded channel can be recognised."""
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_objects):
            for k, ch in enumerate(CELL_PAINTING):
                if drop == (cls, i, ch):
                    continue
                arr = np.full((20, 20), 100 * (k + 1) * (i + 1) * scale, np.uint16)
                arr[5:15, 5:15] += 3000 * (k + 1)
                tifffile.imwrite(root / cls / f"site{i}_{ch}.tif", arr, photometric="minisblack")


def test_per_channel_files_group_into_one_image(tmp_path):
    root = tmp_path / "cp"
    _write_channel_layout(root, drop=("b", 2, "ER"))
    dataset = ingest.discover(root)
    assert dataset.channel_names == list(CELL_PAINTING)
    assert [r.path for r in dataset.records] == ["a/site0", "a/site1", "a/site2",
                                                 "b/site0", "b/site1"]
    assert dataset.skipped == [("b/site2", "incomplete channel group (missing channel ER)")]
    assert {r.label for r in dataset.records} == {"a", "b"}
    _, ranges = ingest.intensity_ranges(dataset)
    assert len(ranges) == 4
    record = dataset.records[1]
    image = ingest.decode(ingest.read_bytes(record), channel_ranges=ranges)
    assert image.channels.shape == (20, 20, 4)
    assert image.channel_map.names == CELL_PAINTING
    assert image.channel_map.colours == ("blue", "green", "magenta", "grey")
    for k in range(4):  # each channel file landed in its own channel, scaled by its range
        lo, hi = ranges[k]
        background = np.clip((100 * (k + 1) * 2 - lo) / (hi - lo), 0, 1)
        assert image.channels[0, 0, k] == pytest.approx(background, abs=1e-5)
    # the bytes (hence the cache key) cover every channel file
    other = ingest.read_bytes(record)
    tifffile.imwrite(root / "a" / "site1_Mito.tif", np.zeros((20, 20), np.uint16),
                     photometric="minisblack")
    assert ingest.read_bytes(record) != other


def test_channel_names_follow_the_channels_option(tmp_path):
    root = tmp_path / "cp"
    _write_channel_layout(root, classes=("a",))
    dataset = ingest.discover(root)
    config = ingest.IngestConfig(channels="DNA=blue,AGP=red,ER=off,Mito=yellow")
    _, ranges = ingest.intensity_ranges(dataset, config)
    entry = ingest.channels_entry(dataset, config, ranges)
    assert entry["names"] == list(CELL_PAINTING)
    assert entry["colours"] == ["red", "blue", "off", "yellow"]
    with pytest.raises(DrlError, match="no channel called 'GFP'"):
        ingest.channels_entry(dataset, ingest.IngestConfig(channels="GFP=green"), ranges)


def test_a_folder_mixing_channel_files_and_other_images_is_read_as_both(tmp_path):
    # Issue 21: a file that does not fit no longer turns grouping off for its whole folder
    # (that used to give 13 separate images); it is read on its own, with a note saying why.
    root = tmp_path / "mixed"
    _write_channel_layout(root, classes=("a",))
    tifffile.imwrite(root / "a" / "overview.tif", np.zeros((8, 8), np.uint16))
    mixed = ingest.discover(root)
    assert [r.path for r in mixed.records] == ["a/overview.tif", "a/site0", "a/site1",
                                               "a/site2"]
    assert mixed.reading == "mixed" and mixed.skipped == []
    assert "not <object>_<channel>" in mixed.records[0].note
    assert all(r.note is None for r in mixed.records[1:])
    assert "channels AGP, DNA, ER, Mito" in mixed.notes[0]
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    for i in range(6):  # cell_1 ... cell_6: one "object", six numbers: separate images
        tifffile.imwrite(numbered / f"cell_{i}.tif", np.zeros((8, 8), np.uint16))
    assert ingest.discover(numbered).channel_names is None
    off = ingest.discover(tmp_path / "mixed", ingest.IngestConfig(channel_pattern=None))
    assert len(off.records) == 13
    custom = tmp_path / "custom"
    custom.mkdir()
    for obj in ("p1", "p2"):
        for ch in ("w1", "w2"):
            tifffile.imwrite(custom / f"{ch}-{obj}.tif", np.zeros((8, 8), np.uint16))
    grouped = ingest.discover(custom, ingest.IngestConfig(
        channel_pattern=r"^(?P<channel>w\d)-(?P<object>.+)$"))
    assert grouped.channel_names == ["w1", "w2"] and len(grouped.records) == 2
    with pytest.raises(DrlError, match="named groups"):
        ingest.IngestConfig(channel_pattern=r"(?P<object>.+)")


# --------------------------------------------------------------------------- morphology, end to end


def test_morphology_measures_each_channel_over_the_object():
    from drlcore.analysis.morphology import measure

    stored = np.zeros((40, 40, 5), np.uint16)
    stored[..., 4] = 50  # a background-only channel
    stored[10:30, 10:30, :4] = [400, 1000, 3000, 7]
    unit = stored / np.array([4000, 4000, 4000, 10, 100.0])
    rgb = composite(unit, channel_map(5))
    row = measure(rgb, channels=stored, channel_names=["ch0", "DNA", "ch2", "x-y", "ch4"])
    assert row["morph_ok"] and row["morph_area"] == pytest.approx(400, rel=0.1)
    assert row["morph_ch0_mean"] == pytest.approx(400)
    assert row["morph_ch1_DNA_mean"] == pytest.approx(1000)
    assert row["morph_ch2_mean"] == pytest.approx(3000)
    assert row["morph_ch3_x_y_mean"] == pytest.approx(7)
    assert row["morph_ch4_mean"] == pytest.approx(50)


def _fluorescent_cells(n: int, seed: int, big: bool) -> np.ndarray:
    """(4, 48, 48) uint16 channels-first stack: a bright nucleus (ch0) in a cell body (ch1-3)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 5, (4, 48, 48))
    radius = 16 if big else 10
    rr, cc = disk((24, 24), radius, shape=(48, 48))
    arr[1][rr, cc] += 2000 + 200 * n
    arr[2][rr, cc] += 800
    arr[3][rr, cc] += 300 if big else 3000
    rr, cc = disk((24, 24), radius // 2, shape=(48, 48))
    arr[0][rr, cc] += 5000
    return np.clip(arr, 0, 65535).astype(np.uint16)


@pytest.mark.slow
def test_four_channel_stacks_and_channel_files_run_end_to_end(tmp_path, source_model):
    import json

    import pandas as pd

    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline

    stacks = tmp_path / "stacks"
    files = tmp_path / "files"
    for cls, big in (("big", True), ("small", False)):
        (stacks / cls).mkdir(parents=True)
        (files / cls).mkdir(parents=True)
        for i in range(8):
            arr = _fluorescent_cells(i, seed=hash((cls, i)) % 1000, big=big)
            tifffile.imwrite(stacks / cls / f"cell{i}.tif", arr, photometric="minisblack",
                             metadata={"axes": "CYX"})
            for k, ch in enumerate(("DNA", "actin", "ER", "mito")):
                tifffile.imwrite(files / cls / f"cell{i}_{ch}.tif", arr[k],
                                 photometric="minisblack")
    for data, names in ((stacks, None), (files, ["DNA", "ER", "actin", "mito"])):
        features = FeatureConfig(backbone="test-tiny", pretrained=False,
                                 cache_dir=str(tmp_path / "cache"), batch_size=8,
                                 channels=("DNA=blue" if names else
                                           "DNA=blue,actin=green,ER=magenta,mito=grey"))
        run = run_pipeline(data, tmp_path / f"run-{data.name}",
                           PipelineConfig(features=features, source_model=str(source_model),
                                          transfer_epochs=2))
        objects = pd.read_parquet(run / "objects.parquet")
        assert len(objects) == 16
        assert not (run / "skipped.csv").exists() or pd.read_csv(run / "skipped.csv").empty
        entry = json.loads((run / "manifest.json").read_text())["stages"]["features"]
        chan = entry["preprocessing"]["channels"]
        assert len(chan["ranges"]) == 4
        if names is None:
            assert chan["names"] == ["DNA", "actin", "ER", "mito"]
            assert chan["colours"] == ["blue", "green", "magenta", "grey"]
        else:
            assert chan["names"] == names  # channel groups: ordered by name
            assert chan["colours"] == ["blue", "green", "magenta", "grey"]
        k_dna, k_mito = chan["names"].index("DNA"), chan["names"].index("mito")
        dna, mito = f"morph_ch{k_dna}_DNA_mean", f"morph_ch{k_mito}_mito_mean"
        assert objects["morph_ok"].all()
        # Known answers: mito is 10x brighter inside small cells; nuclei are equally bright.
        means = objects.groupby("label")[mito].mean()
        assert means["small"] > 3 * means["big"]
        assert objects[dna].min() > 1000
        assert objects.groupby("label")["morph_area"].median()["big"] > 1.5 * \
            objects.groupby("label")["morph_area"].median()["small"]
        thumb = rundir.read_thumb(run, str(objects["sha256"].iloc[0]))
        assert thumb and thumb[:2] == b"\xff\xd8"  # a JPEG


def test_cli_channel_options_reach_the_feature_config():
    from drlcore.cli import _feature_config, build_parser

    args = build_parser().parse_args(["features", "data", "--out", "o", "--channels",
                                      "DNA=blue,GFP=green", "--channel-pattern", "none"])
    config = _feature_config(args)
    assert config.channels == "DNA=blue,GFP=green" and config.channel_pattern is None
    args = build_parser().parse_args(["features", "data", "--out", "o"])
    assert _feature_config(args).channel_pattern == ingest.IngestConfig().channel_pattern


def test_add_data_page_refuses_a_bad_channel_spec_before_any_job(runs_dir, tmp_path,
                                                                 monkeypatch):
    import sys

    from test_app import _app

    cells = tmp_path / "stacks"
    cells.mkdir()
    tifffile.imwrite(cells / "a.tif", _stack(4), photometric="minisblack",
                     metadata={"axes": "CYX"})
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(tmp_path)])
    before = sorted(p.name for p in runs_dir.iterdir())
    at = _app()
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(cells)).run()
    at.text_input(key="data.channels").input("DNA=pink").run()
    at.button(key="data.start").click().run()
    assert not at.exception
    assert any("unknown channel colour 'pink'" in e.value for e in at.error)
    assert sorted(p.name for p in runs_dir.iterdir()) == before


def test_features_stage_lists_what_it_could_not_use(tmp_path):
    from drlcore.embedding.features import FeatureConfig, extract_features

    root = tmp_path / "data"
    _write_channel_layout(root / "groups", n_objects=3, classes=("a",), drop=("a", 1, "DNA"))
    (root / "stacks").mkdir()
    for i in range(3):
        tifffile.imwrite(root / "stacks" / f"s{i}.tif", _stack(4, seed=i),
                         photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(root / "stacks" / "two.tif", _stack(2), photometric="minisblack",
                     metadata={"axes": "CYX"})
    result = extract_features(root, tmp_path / "out", FeatureConfig(
        backbone="test-tiny", pretrained=False, cache_dir=str(tmp_path / "cache"), batch_size=4))
    assert sorted(result.table["path"]) == ["groups/a/site0", "groups/a/site2", "stacks/s0.tif",
                                            "stacks/s1.tif", "stacks/s2.tif"]
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    assert reasons == {"groups/a/site1": "incomplete channel group (missing channel DNA)",
                       "stacks/two.tif": "2 channels where the dataset's images have 4"}
    assert result.manifest["preprocessing"]["channels"]["names"] == list(CELL_PAINTING)
