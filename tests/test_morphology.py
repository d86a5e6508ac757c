"""Morphology on known geometry: drawn disks, ellipses and stars with exact areas and shapes."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import draw

from drlcore.errors import DrlError
from drlcore.analysis.morphology import (
    FEATURE_NAMES,
    MIN_OBJECT_PIXELS,
    circular_mean_degrees,
    load_mask_folder,
    measure,
    measure_dataset,
)

DARK = (20, 20, 30)
LIGHT = (245, 240, 235)
PURPLE = (120, 40, 160)


def canvas(size=(160, 160), background=LIGHT) -> np.ndarray:
    image = np.empty((*size, 3), np.uint8)
    image[:] = background
    return image


def disk_image(radius=30, background=LIGHT, colour=PURPLE, size=(160, 160)):
    image = canvas(size, background)
    rr, cc = draw.disk((size[0] // 2, size[1] // 2), radius, shape=size)
    image[rr, cc] = colour
    return image


def ellipse_image(a=50, b=25, background=DARK, colour=(230, 200, 60), rotation=0.0):
    image = canvas((200, 200), background)
    rr, cc = draw.ellipse(100, 100, b, a, shape=image.shape[:2], rotation=rotation)
    image[rr, cc] = colour
    return image


@pytest.mark.parametrize("background,colour", [(LIGHT, PURPLE), (DARK, (230, 200, 60)),
                                               (LIGHT, (40, 40, 40)), (DARK, (200, 30, 30))])
def test_disk_area_eccentricity_solidity_and_colour(background, colour):
    radius = 30
    row = measure(disk_image(radius, background, colour))
    assert row["morph_ok"], row["morph_note"]
    assert row["morph_area"] == pytest.approx(math.pi * radius**2, rel=0.02)
    assert row["morph_equivalent_diameter"] == pytest.approx(2 * radius, rel=0.02)
    assert row["morph_eccentricity"] < 0.1
    assert row["morph_solidity"] > 0.97
    assert row["morph_circularity"] > 0.85
    assert row["morph_area_fraction"] == pytest.approx(math.pi * radius**2 / 160**2, rel=0.02)
    assert (row["morph_mean_r"], row["morph_mean_g"], row["morph_mean_b"]) == pytest.approx(
        colour, abs=0.5)
    assert row["morph_intensity_std"] == pytest.approx(0.0, abs=1e-6)
    # A flat object has no texture; the outline against the background must not count as one.
    assert row["morph_glcm_contrast"] == 0.0
    assert row["morph_glcm_homogeneity"] == 1.0


@pytest.mark.parametrize("size", [(600, 640), (601, 643)])
def test_area_reported_in_original_pixels_for_large_images(size):
    # 601 x 643 is not a whole number of downscaling blocks: the partial blocks must not
    # darken the border and flip the object/background decision.
    radius = 180
    row = measure(disk_image(radius, size=size))
    assert row["morph_ok"] and row["morph_note"] is None
    assert row["morph_area"] == pytest.approx(math.pi * radius**2, rel=0.02)
    assert row["morph_major_axis"] == pytest.approx(2 * radius, rel=0.03)
    assert row["morph_perimeter"] == pytest.approx(2 * math.pi * radius, rel=0.05)


@pytest.mark.parametrize("background", [LIGHT, DARK])
def test_ellipse_area_axes_eccentricity(background):
    a, b = 50, 25
    colour = (40, 120, 200)
    row = measure(ellipse_image(a, b, background, colour))
    assert row["morph_ok"], row["morph_note"]
    assert row["morph_area"] == pytest.approx(math.pi * a * b, rel=0.02)
    assert row["morph_eccentricity"] == pytest.approx(math.sqrt(1 - b**2 / a**2), abs=0.02)
    assert row["morph_major_axis"] == pytest.approx(2 * a, rel=0.03)
    assert row["morph_minor_axis"] == pytest.approx(2 * b, rel=0.03)
    # Major axis along the columns: skimage measures orientation from the row axis, so +-pi/2.
    assert abs(row["morph_orientation"]) == pytest.approx(math.pi / 2, abs=0.05)


def test_star_and_crescent_are_less_solid_than_disk():
    star = canvas()
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radii = np.where(np.arange(10) % 2 == 0, 60, 22)
    rr, cc = draw.polygon(80 + radii * np.sin(angles), 80 + radii * np.cos(angles), star.shape[:2])
    star[rr, cc] = PURPLE
    crescent = disk_image(40)
    rr, cc = draw.disk((80, 100), 36, shape=crescent.shape[:2])
    crescent[rr, cc] = LIGHT
    disk = measure(disk_image(40))
    for image in (star, crescent):
        row = measure(image)
        assert row["morph_ok"], row["morph_note"]
        assert row["morph_solidity"] < 0.75 < disk["morph_solidity"]
        assert row["morph_circularity"] < disk["morph_circularity"]


def test_glcm_contrast_sees_texture():
    flat = disk_image(40, colour=(100, 100, 100))
    textured = flat.copy()
    rr, cc = draw.disk((80, 80), 40)
    textured[rr, cc] = np.where(((rr // 3 + cc // 3) % 2 == 0)[:, None], 60, 140)  # 3-px checks
    smooth, rough = measure(flat), measure(textured)
    assert rough["morph_ok"] and smooth["morph_ok"]
    assert smooth["morph_glcm_contrast"] == 0.0
    assert rough["morph_glcm_contrast"] > 1.0   # 80 grey levels apart = 10 GLCM levels
    assert rough["morph_glcm_homogeneity"] < smooth["morph_glcm_homogeneity"]
    assert rough["morph_intensity_std"] > 30


def test_hue_is_a_circular_mean_for_reds_around_zero():
    image = canvas(background=(250, 250, 250))
    rr, cc = draw.rectangle((40, 40), (119, 79))
    image[rr, cc] = (220, 0, 30)   # hue ~352
    rr, cc = draw.rectangle((40, 80), (119, 119))
    image[rr, cc] = (220, 30, 0)   # hue ~8
    row = measure(image)
    assert row["morph_ok"]
    hue = row["morph_hue"]
    assert min(hue, 360 - hue) < 1.0, hue   # the arithmetic mean would give ~180
    assert circular_mean_degrees(np.array([350.0, 10.0])) == pytest.approx(0.0, abs=1e-9)
    assert circular_mean_degrees(np.array([80.0, 100.0])) == pytest.approx(90.0)


def test_grey_object_has_nan_hue_but_is_measured():
    row = measure(disk_image(30, LIGHT, (60, 60, 60)))
    assert row["morph_ok"]
    assert math.isnan(row["morph_hue"])
    assert row["morph_saturation"] == pytest.approx(0.0)


@pytest.mark.parametrize("image,reason", [
    (np.zeros((64, 64, 3), np.uint8), "uniform"),
    (np.full((64, 64, 3), 200, np.uint8), "uniform"),
])
def test_constant_image_fails_with_nans_and_note(image, reason):
    row = measure(image)
    assert row["morph_ok"] is False
    assert reason in row["morph_note"]
    assert all(math.isnan(row[name]) for name in FEATURE_NAMES)


def test_tiny_object_is_rejected():
    image = canvas((100, 100))
    image[50:52, 50:52] = PURPLE
    row = measure(image)
    assert row["morph_ok"] is False and "too small" in row["morph_note"]
    assert math.isnan(row["morph_area"])


def test_faint_object_with_a_tiny_dark_core_is_measured_on_the_fallback_mask():
    # A white field, a faint 6 x 6 square (contrast 55) around a 2 x 2 black core: Otsu splits
    # the core from everything else, 4 px, too small; the fallback (the whole foreground at a
    # tenth of the strongest contrast, 25.5) measures the square.
    image = np.full((40, 40), 255, np.uint8)
    image[17:23, 17:23] = 200
    image[19:21, 19:21] = 0
    row = measure(image)
    assert row["morph_ok"] is True
    assert "too small (4 px" in row["morph_note"] and "fallback mask" in row["morph_note"]
    assert row["morph_area"] == 36.0
    assert row["morph_solidity"] == 1.0 and row["morph_eccentricity"] == 0.0
    # The same on an RGB image, on the channel the main segmentation chose.
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    rgb[17:23, 17:23] = (180, 200, 220)
    rgb[19:21, 19:21] = (10, 0, 20)
    row = measure(rgb)
    assert row["morph_ok"] is True and row["morph_area"] == 36.0
    # A fallback mask holds several pieces: a faint chain of separate dots is one object.
    chain = np.full((40, 40), 255, np.uint8)
    chain[19, 19:21] = 0
    for col in range(4, 37, 4):
        chain[30:32, col:col + 2] = 220
    row = measure(chain)
    assert row["morph_ok"] is True and row["morph_area"] == 2 + 9 * 4


def test_fallback_mask_that_is_implausible_too_leaves_the_image_unmeasured():
    image = np.full((40, 40), 255, np.uint8)
    image[19:21, 19:21] = 0
    image[5:7, 30] = 240   # too faint for the fallback (a tenth of 255)
    row = measure(image)
    assert row["morph_ok"] is False
    assert row["morph_note"].startswith("object too small (4 px")
    assert "fallback mask" in row["morph_note"] and math.isnan(row["morph_area"])


def test_object_filling_the_frame_is_flagged():
    image = canvas((100, 100), LIGHT)
    image[:, :] = PURPLE
    image[40:60, 40:60] = LIGHT   # a hole: Otsu has two classes, but the "object" is the frame
    mask = np.ones((100, 100), bool)
    row = measure(image, mask=mask)
    assert row["morph_ok"] is False and "frame" in row["morph_note"]
    # A mask touching all four edges (a cross through the frame) is background, not an object.
    cross = np.zeros((100, 100), bool)
    cross[45:55, :] = True
    cross[:, 45:55] = True
    row = measure(canvas((100, 100)), mask=cross)
    assert row["morph_ok"] is False and "four edges" in row["morph_note"]


def test_supplied_mask_is_measured_as_given():
    image = canvas((120, 120), (128, 128, 128))   # nothing to segment in the image itself
    mask = np.zeros((120, 120), np.uint8)
    rr, cc = draw.disk((60, 60), 25)
    mask[rr, cc] = 255
    row = measure(image, mask=mask)
    assert row["morph_ok"]
    assert row["morph_area"] == pytest.approx(mask.astype(bool).sum())
    assert measure(image, mask=np.zeros((120, 120)))["morph_note"] == "mask is empty"
    assert "does not match" in measure(image, mask=np.ones((10, 10)))["morph_note"]


def test_rejects_non_uint8_input():
    with pytest.raises(DrlError, match="uint8"):
        measure(np.zeros((10, 10, 3), np.float32))


def test_mask_folder_matching_and_dataset(tmp_path: Path):
    image = disk_image(30)
    mask = np.zeros(image.shape[:2], np.uint8)
    rr, cc = draw.disk((80, 80), 20)
    mask[rr, cc] = 1
    (tmp_path / "a").mkdir()
    Image.fromarray(mask * 255).save(tmp_path / "a" / "cell1.png")
    Image.fromarray(mask * 255).save(tmp_path / "cell2_mask.png")
    paths = ["a/cell1.jpg", "b/cell2.jpg", "b/cell3.jpg"]
    found = load_mask_folder(tmp_path, paths)
    assert found == [tmp_path / "a" / "cell1.png", tmp_path / "cell2_mask.png", None]
    table = measure_dataset([(image, m) for m in found], masks_expected=True)
    assert list(table["morph_ok"]) == [True, True, True]
    assert table["morph_area"].iloc[0] == pytest.approx(mask.sum())
    assert table["morph_area"].iloc[2] == pytest.approx(math.pi * 30**2, rel=0.02)
    assert "no mask found" in table["morph_note"].iloc[2]
    assert table["morph_note"].iloc[0] is None
    with pytest.raises(DrlError, match="does not exist"):
        load_mask_folder(tmp_path / "nope", paths)


def test_measure_dataset_keeps_order_and_columns():
    images = [(disk_image(r), None) for r in (10, 20, 30)] + [(canvas(), None)]
    table = measure_dataset(images)
    # RGB / grey images add the object's integrated grey contrast and the frame's background.
    assert list(table.columns) == [*FEATURE_NAMES, "morph_intensity_integrated",
                                   "morph_intensity_background", "morph_ok", "morph_note"]
    assert list(table["morph_ok"]) == [True, True, True, False]
    assert np.all(np.diff(table["morph_area"].iloc[:3].to_numpy()) > 0)


@pytest.mark.realdata
def test_real_images_mostly_segment(shared_data: Path):
    files = sorted((shared_data / "blood-cells-pbc").glob("*/*.jpg"))
    files += sorted((shared_data / "plankton-ndsb").glob("*/*.jpg"))
    picks = random.Random(0).sample(files[:1600], 10) + random.Random(0).sample(files[1600:], 10)
    images = [(np.asarray(Image.open(f).convert("RGB")), None) for f in picks]
    table = measure_dataset(images)
    assert table["morph_ok"].mean() >= 0.9, table.loc[~table["morph_ok"], "morph_note"].tolist()
    ok = table[table["morph_ok"]]
    # Blood-cell objects are stained (purple hue), not the pale background.
    blood = ok.iloc[: int(table["morph_ok"].iloc[:10].sum())]
    assert blood["morph_hue"].between(240, 330).all()
    assert (ok["morph_area_fraction"] < 0.9).all()


@pytest.mark.realdata
@pytest.mark.slow
def test_faint_plankton_are_measured_on_the_fallback_mask(shared_data: Path):
    """Acantharia (a few-pixel dark core, faint spines) and one-pixel-wide diatom chains are the
    plankton the main segmentation drops (30 of these 300 before the fallback mask, issue 19);
    the fallback measures all but at most a few, and says so."""
    files = sorted((shared_data / "plankton-ndsb" / "acantharia_protist").glob("*.jpg"))
    files += sorted((shared_data / "plankton-ndsb" / "diatom_chain_string").glob("*.jpg"))
    if len(files) < 100:
        pytest.skip("plankton-ndsb acantharia / diatom chains not found")
    table = measure_dataset([(np.asarray(Image.open(f).convert("L")), None) for f in files])
    assert (~table["morph_ok"]).sum() <= 3, table.loc[~table["morph_ok"], "morph_note"].tolist()
    rescued = table["morph_note"].fillna("").str.contains("measured on the fallback mask")
    assert rescued.sum() >= 25
    assert (table.loc[rescued, "morph_area"] >= MIN_OBJECT_PIXELS).all()


# --------------------------------------------------------------------------- skimage equivalents
# The fast paths must give what the skimage calls they replace give (the cached morphology of
# earlier runs stays valid only if the values do not move).

def _blobs(seed: int, n: int = 25):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    for _ in range(n):
        mask = ndi.binary_closing(rng.random((40, 40)) > 0.55, iterations=2)
        labels, count = ndi.label(mask)
        if count:
            yield labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def test_inertia_matches_regionprops():
    from skimage import measure as skmeasure

    from drlcore.analysis.morphology import _inertia

    masks = [*_blobs(0), np.pad(np.ones((5, 5), bool), 3), np.pad(np.ones((1, 7), bool), 3)]
    for mask in masks:
        props = skmeasure.regionprops(mask.astype(np.uint8))[0]
        got = _inertia(mask)
        want = (props.eccentricity, props.axis_major_length, props.axis_minor_length,
                props.orientation)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_otsu_matches_threshold_otsu():
    from skimage import filters

    from drlcore.analysis.morphology import _otsu

    rng = np.random.default_rng(1)
    images = [rng.normal(100, 30, (40, 40)), rng.gamma(2.0, 50.0, (30, 50)),
              np.full((10, 10), 7.5)]
    for image in images:
        assert _otsu(image) == filters.threshold_otsu(image)


def test_profile_matches_regionprops_intensity():
    from skimage import measure as skmeasure

    from drlcore.analysis.morphology import _profile

    rng = np.random.default_rng(2)
    for mask in _blobs(3, 10):
        channels = rng.normal(0.0, 100.0, (*mask.shape, 3))
        region = skmeasure.regionprops(mask.astype(np.uint8), intensity_image=channels)[0]
        got = _profile(mask, channels)
        np.testing.assert_allclose(got[0], channels[mask].sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got[1], region.intensity_mean, rtol=1e-12)
        np.testing.assert_allclose(got[3], region.intensity_min, rtol=1e-12)
        np.testing.assert_allclose(got[5], np.median(channels[mask], axis=0), rtol=1e-12)
        np.testing.assert_allclose(got[7], region.intensity_max, rtol=1e-12)
        weights = np.clip(channels, 0, None)
        for k in range(3):
            centre = np.asarray(region.centroid)
            weighted = np.asarray(skmeasure.regionprops(
                mask.astype(np.uint8), intensity_image=weights[..., k])[0].centroid_weighted)
            assert got[9, k] == pytest.approx(np.hypot(*(weighted - centre)), rel=1e-9, abs=1e-12)


def _shapes(seed: int, n: int = 60):
    """Random masks of many shapes: blobs, holes, several components, lines, single pixels."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(3, 50, 2))
        mask = ndi.binary_closing(rng.random((h, w)) > rng.uniform(0.3, 0.8),
                                  iterations=int(rng.integers(0, 3)))
        if mask.any():
            yield mask
    yield from (np.ones((1, 1), bool), np.ones((1, 6), bool), np.ones((6, 1), bool),
                np.eye(7, dtype=bool), np.eye(7, dtype=bool)[::-1])


def test_perimeter_and_convex_area_match_regionprops():
    from skimage import measure as skmeasure

    from drlcore.analysis.morphology import _convex_area, _perimeter

    for mask in _shapes(4):
        props = skmeasure.regionprops(mask.astype(np.uint8))[0]
        box = props.image
        assert _perimeter(box) == props.perimeter
        assert int(box.sum()) / _convex_area(box) == props.solidity


def test_clean_and_fill_holes_match_scipy():
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    from drlcore.analysis.morphology import _clean, _fill_holes

    rng = np.random.default_rng(5)
    for _ in range(40):
        mask = rng.random((int(rng.integers(4, 60)), int(rng.integers(4, 60)))) > 0.6
        want = ndi.binary_fill_holes(ndi.binary_closing(mask, structure=disk(1), border_value=0))
        np.testing.assert_array_equal(_clean(mask), want)
        np.testing.assert_array_equal(_fill_holes(mask), ndi.binary_fill_holes(mask))


def test_pair_textures_match_graycomatrix():
    from skimage.feature import graycomatrix, graycoprops

    from drlcore.analysis.morphology import _pair_textures

    rng = np.random.default_rng(6)
    for mask in _shapes(7, 30):
        levels = rng.integers(0, 32, (*mask.shape, 2))
        got_contrast, got_homogeneity = _pair_textures(levels, mask)
        for k in range(2):
            image = np.where(mask, levels[..., k] + 1, 0).astype(np.uint8)
            counts = graycomatrix(image, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                                  levels=33, symmetric=True)[1:, 1:].astype(np.float64)
            totals = counts.sum(axis=(0, 1))[0]
            if not (totals > 0).any():
                assert math.isnan(got_contrast[k]) and math.isnan(got_homogeneity[k])
                continue
            counts = counts[:, :, :, totals > 0] / totals[totals > 0]
            for prop, got in (("contrast", got_contrast), ("homogeneity", got_homogeneity)):
                assert got[k] == pytest.approx(graycoprops(counts, prop).mean(), rel=1e-12)


def test_stacked_gaussian_matches_per_channel():
    # _measure_channels smooths every channel in one call; the thresholds read it as they read
    # the per-channel gaussian_filter before.
    from scipy import ndimage as ndi

    stack = np.random.default_rng(8).normal(500.0, 80.0, (37, 41, 3))
    smoothed = ndi.gaussian_filter(stack, (1.0, 1.0, 0.0))
    for k in range(3):
        np.testing.assert_array_equal(smoothed[..., k], ndi.gaussian_filter(stack[..., k], 1.0))


def test_column_medians_match_np_median():
    from drlcore.analysis.morphology import _column_medians

    rng = np.random.default_rng(9)
    for n in (1, 2, 7, 156):
        values = np.round(rng.normal(300.0, 50.0, (n, 3)))
        np.testing.assert_array_equal(_column_medians(values), np.median(values, axis=0))
    values[5, 1] = np.nan
    np.testing.assert_array_equal(_column_medians(values), np.median(values, axis=0))
