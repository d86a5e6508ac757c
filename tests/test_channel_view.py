"""One channel of one object, scaled for display (drlcore.data.decode.channel_view): the viewer's
per-channel image is the stored plane scaled by the run's recorded dataset-wide range."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from drlcore.data import ingest
from drlcore.data.channels import channel_map
from drlcore.data.decode import channel_view, source_stamp
from drlcore.errors import DrlError, SkipImage

NAMES = ["DNA", "actin", "ER", "mito"]


def _stack(seed: int = 0) -> np.ndarray:
    """(4, 24, 32) uint16; channel k has values up to 1000 * (k + 1)."""
    rng = np.random.default_rng(seed)
    return np.stack([(rng.random((24, 32)) * 1000 * (k + 1)).astype(np.uint16) for k in range(4)])


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack", metadata={"axes": "CYX"})
    return buf.getvalue()


# Recorded ranges deliberately not the planes' own: low > 0 and high below the maximum, so
# both ends clip and a view scaled by the image's own percentiles would differ.
RECORDED = {"ranges": [[100.0, 900.0], [0.0, 1500.0], [200.0, 2500.0], [50.0, 3500.0]],
            "names": NAMES, "colours": ["blue", "green", "off", "orange"]}


def _expected(arr: np.ndarray, k: int) -> np.ndarray:
    lo, hi = RECORDED["ranges"][k]
    unit = np.clip((arr[k].astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.floor(unit * 255.0 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("k", range(4))
def test_channel_k_is_its_plane_scaled_by_the_recorded_range(k):
    arr = _stack()
    view = channel_view(_tiff(arr), RECORDED, k)
    assert view.shape == (24, 32, 3) and view.dtype == np.uint8
    expected = _expected(arr, k)
    for c in range(3):  # grey: the same plane in R, G and B
        np.testing.assert_array_equal(view[..., c], expected)
    assert (view == 0).any() and (view == 255).any()  # both recorded ends clip


def test_tint_uses_the_display_colour_and_off_stays_grey():
    arr = _stack(1)
    data = _tiff(arr)
    green = channel_view(data, RECORDED, 1, tint=True)
    np.testing.assert_array_equal(green[..., 1], _expected(arr, 1))
    assert not green[..., 0].any() and not green[..., 2].any()
    orange = channel_view(data, RECORDED, 3, tint=True)
    np.testing.assert_array_equal(orange[..., 0], _expected(arr, 3))
    np.testing.assert_array_equal(orange[..., 1],
                                  np.floor(_expected(arr, 3) * 0.5 + 0.5).astype(np.uint8))
    off = channel_view(data, RECORDED, 2, tint=True)  # hidden from the composite, still viewable
    np.testing.assert_array_equal(off[..., 0], _expected(arr, 2))
    np.testing.assert_array_equal(off[..., 2], _expected(arr, 2))


def test_composite_is_the_one_the_features_stage_made():
    arr = _stack(2)
    data = _tiff(arr)
    view = channel_view(data, RECORDED, None)
    spec = ",".join(f"{k}={c}" for k, c in enumerate(RECORDED["colours"]))
    made = ingest.decode(data, ingest.IngestConfig(channels=spec), None,
                         [tuple(r) for r in RECORDED["ranges"]], NAMES)
    np.testing.assert_array_equal(view, made.rgb)
    assert made.channel_map == channel_map(4, NAMES, spec)


def test_channel_groups_and_bad_requests(tmp_path):
    arr = _stack(3)
    files = []
    for obj in ("cell", "other"):  # a folder groups only with at least 2 objects
        for k, name in enumerate(NAMES):
            path = tmp_path / f"{obj}_{name}.tif"
            tifffile.imwrite(path, arr[k], photometric="minisblack")
            files.append(path)
    dataset = ingest.discover(tmp_path)
    assert dataset.channel_names == sorted(NAMES)
    record = next(r for r in dataset.records if r.path == "cell")
    recorded = {**RECORDED, "names": dataset.channel_names}
    k = dataset.channel_names.index("mito")
    view = channel_view(ingest.read_bytes(record), recorded, k)
    lo, hi = recorded["ranges"][k]
    expected = np.floor(np.clip((arr[NAMES.index("mito")] - lo) / (hi - lo), 0, 1) * 255 + 0.5)
    np.testing.assert_array_equal(view[..., 0], expected.astype(np.uint8))
    with pytest.raises(DrlError, match="channels 0 to 3"):
        channel_view(ingest.read_bytes(record), recorded, 4)
    with pytest.raises(SkipImage, match="2 channels where the dataset's images have 4"):
        channel_view(_tiff(arr[:2]), RECORDED, 0)
    stamp = source_stamp(record.source)
    assert len(stamp) == 4 and all(s[1] > 0 for s in stamp)
    files[0].unlink()
    assert source_stamp(record.source)[0] == (0, 0)
    with pytest.raises(SkipImage):
        ingest.read_bytes(record)
