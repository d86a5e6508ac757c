"""Synthetic cells: each factor changes what it names and nothing else; determinism; weak pairs."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from skimage.measure import label, regionprops

from drlcore.disentangle.cells import (
    APPEARANCE_NAMES,
    DEFAULT_FACTOR_SIZES,
    FACTOR_NAMES,
    CellsConfig,
    SyntheticCells,
    factors_to_frame,
    sample_one_factor_pairs,
    sample_weak_pairs,
    unique_factor_rows,
)
from drlcore.errors import DrlError

SIDE = 96  # canvas = image side: no resize, so pixel measures are exact


@pytest.fixture(scope="module")
def cells() -> SyntheticCells:
    return SyntheticCells(CellsConfig(image_size=SIDE, canvas_size=SIDE))


def _base(ds: SyntheticCells, **values: int) -> np.ndarray:
    """A clean reference row (no noise, blur, background shift, granules), then ``values``."""
    row = np.zeros(ds.num_factors, dtype=np.int64)
    defaults = {"size": 2, "elongation": 0, "intensity": 2, "nucleus_size": 1, "hue": 2}
    for name, value in {**defaults, **values}.items():
        row[ds.factor_names.index(name)] = value
    return row


def _sweep(ds: SyntheticCells, name: str, **fixed: int) -> np.ndarray:
    """Render every value of ``name`` with the other factors at ``_base(**fixed)``: float (n, S, S, 3)."""
    j = ds.factor_names.index(name)
    rows = np.repeat(_base(ds, **fixed)[None], ds.factor_sizes[j], axis=0)
    rows[:, j] = np.arange(ds.factor_sizes[j])
    return ds.render(rows).astype(np.float64) / 255.0


def _background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border, axis=0)


def _object_mask(image: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    return np.abs(image - _background(image)).max(axis=-1) > threshold


def _solid_mask(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pixels above half the cytoplasm's contrast in ``reference`` (a sharp render): the half-way
    contour of a blurred or resampled edge stays where the sharp edge was."""
    contrast = np.abs(reference - _background(reference)).max(axis=-1)
    cytoplasm = _object_mask(reference) & ~_dark_core(reference)
    threshold = 0.5 * np.median(contrast[cytoplasm])
    return np.abs(image - _background(image)).max(axis=-1) > threshold


def _region(mask: np.ndarray):
    regions = regionprops(label(mask))
    assert regions, "no object segmented"
    return max(regions, key=lambda r: r.area)


def _relative_spread(values) -> float:
    values = np.asarray(values, dtype=float)
    return float((values.max() - values.min()) / values.mean())


def _mean_hue(image: np.ndarray, mask: np.ndarray) -> float:
    """Circular mean hue (degrees) of the masked pixels."""
    hues = np.array([colorsys.rgb_to_hsv(*px)[0] for px in image[mask]]) * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(hues).mean(), np.cos(hues).mean())) % 360)


# ---- config --------------------------------------------------------------------------------------


def test_default_factors_are_small_and_finite():
    ds = SyntheticCells()
    assert ds.factor_names == FACTOR_NAMES
    assert dict(DEFAULT_FACTOR_SIZES)["appearance"] == len(APPEARANCE_NAMES)
    assert all(3 <= size <= 6 for size in ds.factor_sizes)
    assert ds.config.image_size == 224 and ds.config.canvas_size == 128


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"factor_sizes": (("shape", 3),)}, "Unknown cells factor 'shape'"),
        ({"factor_sizes": (("size", 0),)}, ">= 1"),
        ({"factor_sizes": (("size", 2.0),)}, ">= 1"),
        ({"factor_sizes": (("size", 2), ("size", 3))}, "twice"),
        ({"factor_sizes": (("appearance", 4),)}, "at most 3"),
        ({"factor_sizes": (("hue", 9),)}, "at most 8"),
        ({"factor_sizes": ()}, "empty"),
        ({"image_size": 8}, "image_size"),
        ({"canvas_size": 16}, "canvas_size"),
        ({"seed": "zero"}, "seed"),
    ],
)
def test_bad_config_is_a_user_error(kwargs, fragment):
    with pytest.raises(DrlError, match=fragment):
        CellsConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    cfg = CellsConfig(factor_sizes={"size": 3, "hue": 4}, image_size=64, canvas_size=48, seed=3)
    assert CellsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DrlError, match="unknown cells config setting"):
        CellsConfig.from_dict({"image_sise": 64})


def test_bad_factor_rows_are_user_errors(cells):
    with pytest.raises(DrlError, match="shape"):
        cells.render(np.zeros((1, 3), dtype=np.int64))
    row = _base(cells)[None].copy()
    row[0, 1] = 99
    with pytest.raises(DrlError, match="'size' index 99"):
        cells.render(row)
    with pytest.raises(DrlError, match="integer"):
        cells.render(row.astype(float))


# ---- each factor does what it says and nothing else ---------------------------------------------


def test_size_increases_area_and_keeps_the_centre(cells):
    images = _sweep(cells, "size")
    regions = [_region(_object_mask(img)) for img in images]
    areas = [r.area for r in regions]
    assert np.all(np.diff(areas) > 0)
    fills = cells.factor_values("size")
    # the segmented area is the requested fill fraction of the canvas (give or take the soft rim)
    np.testing.assert_allclose(np.array(areas) / SIDE**2, fills, rtol=0.05, atol=0.004)
    centres = np.array([r.centroid for r in regions])
    np.testing.assert_allclose(centres, SIDE / 2 - 0.5, atol=1.0)


def test_elongation_raises_eccentricity_at_constant_area(cells):
    regions = [_region(_object_mask(img)) for img in _sweep(cells, "elongation")]
    axis_ratio = [r.axis_major_length / r.axis_minor_length for r in regions]
    assert np.all(np.diff(axis_ratio) > 0)
    np.testing.assert_allclose(axis_ratio, cells.factor_values("elongation"), rtol=0.08)
    assert _relative_spread([r.area for r in regions]) < 0.04


def test_orientation_rotates_the_major_axis(cells):
    regions = [_region(_object_mask(img)) for img in _sweep(cells, "orientation", elongation=3)]
    # skimage: orientation is the angle between the row axis and the major axis; in image x-right,
    # y-up terms the major axis angle is orientation - 90 degrees (mod 180).
    measured = (np.degrees([r.orientation for r in regions]) - 90.0) % 180.0
    expected = np.degrees(cells.factor_values("orientation"))
    error = (measured - expected + 90.0) % 180.0 - 90.0
    assert np.abs(error).max() < 3.0
    assert _relative_spread([r.area for r in regions]) < 0.04


def test_irregularity_lowers_solidity_at_constant_area(cells):
    regions = [_region(_object_mask(img)) for img in _sweep(cells, "irregularity")]
    solidity = [r.solidity for r in regions]
    assert np.all(np.diff(solidity) < 0)
    assert solidity[0] > 0.97 and solidity[-1] < 0.93
    assert _relative_spread([r.area for r in regions]) < 0.05


def _dark_core(image: np.ndarray) -> np.ndarray:
    """The nucleus of a smear cell: clearly darker than the cytoplasm."""
    return image.mean(axis=-1) < 0.45


def test_nucleus_size_grows_the_nucleus_not_the_cell(cells):
    images = _sweep(cells, "nucleus_size")
    nucleus = [_dark_core(img).sum() for img in images]
    assert np.all(np.diff(nucleus) > 0)
    assert _relative_spread([_region(_object_mask(img)).area for img in images]) < 0.03


def test_nucleus_offset_moves_the_nucleus_inside_a_fixed_cell(cells):
    images = _sweep(cells, "nucleus_offset", elongation=3, nucleus_size=0)
    cell = [_region(_object_mask(img)) for img in images]
    nucleus = [_region(_dark_core(img)) for img in images]
    shift = [np.hypot(*np.subtract(n.centroid, c.centroid)) for n, c in zip(nucleus, cell, strict=True)]
    assert shift[0] < 1.0 and np.all(np.diff(shift) > 2.0)
    assert _relative_spread([c.area for c in cell]) < 0.03
    assert _relative_spread([n.area for n in nucleus]) < 0.1


def test_hue_changes_mean_hue_not_area(cells):
    images = _sweep(cells, "hue")
    masks = [_object_mask(img) for img in images]
    hues = [_mean_hue(img, m & ~_dark_core(img)) for img, m in zip(images, masks, strict=True)]
    expected = cells.factor_values("hue")
    error = (np.array(hues) - expected + 180.0) % 360.0 - 180.0
    assert np.abs(error).max() < 20.0
    assert _relative_spread([m.sum() for m in masks]) < 0.03


def test_hue_changes_nothing_in_grey_appearances(cells):
    for appearance in (1, 2):
        images = _sweep(cells, "hue", appearance=appearance)
        assert np.array_equal(images[0], images[-1])
        assert np.array_equal(images[0][..., 0], images[0][..., 2])  # grey


def test_intensity_darkens_the_object_at_constant_area(cells):
    images = _sweep(cells, "intensity")
    masks = [_object_mask(img, threshold=0.015) for img in images]
    contrast = [np.abs(img[m] - _background(img)).mean() for img, m in zip(images, masks, strict=True)]
    assert np.all(np.diff(contrast) > 0)
    assert _relative_spread([m.sum() for m in masks]) < 0.05


def test_granularity_adds_texture_but_keeps_the_mean(cells):
    images = _sweep(cells, "granularity", nucleus_size=0)
    mask = _object_mask(images[0]) & ~_dark_core(images[0])
    spread = [img[mask].mean(axis=-1).std() for img in images]
    mean = [img[mask].mean() for img in images]
    assert np.all(np.diff(spread) > 0)
    assert _relative_spread(mean) < 0.05
    assert _relative_spread([_object_mask(img).sum() for img in images]) < 0.05


def test_background_level_moves_the_background_only(cells):
    for appearance, direction in ((0, -1), (1, -1), (2, 1)):
        images = _sweep(cells, "background", appearance=appearance)
        level = [_background(img).mean() for img in images]
        assert np.all(direction * np.diff(level) > 0.03)
        assert _relative_spread([_object_mask(img).sum() for img in images]) < 0.05


def test_noise_raises_background_variance_not_its_mean(cells):
    images = _sweep(cells, "noise", background=1)
    corner = [img[:12, :12] for img in images]
    std = [c.std(axis=(0, 1)).max() for c in corner]
    assert std[0] < 1e-3 and np.all(np.diff(std) > 0.005)
    assert _relative_spread([c.mean() for c in corner]) < 0.02


def test_blur_removes_fine_detail_at_constant_area(cells):
    images = _sweep(cells, "blur", granularity=3)
    grey = images.mean(axis=-1)
    detail = [np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean() for g in grey]
    assert np.all(np.diff(detail) < 0)
    plain = _sweep(cells, "blur")
    assert _relative_spread([_solid_mask(img, plain[0]).sum() for img in plain]) < 0.04


def test_appearance_flips_the_background_and_greys_the_plankton(cells):
    smear, bright, dark = _sweep(cells, "appearance")
    assert _background(smear).mean() > 0.85 and _background(bright).mean() > 0.95
    assert _background(dark).mean() < 0.05
    # smear background is pink-white, plankton appearances are grey; the object is darker than a
    # bright background and brighter than a dark one
    assert _background(smear)[0] > _background(smear)[2]
    for image in (bright, dark):
        assert np.array_equal(image[..., 0], image[..., 1])
    mask = _object_mask(bright)
    assert bright[mask].mean() < _background(bright).mean()
    assert dark[_object_mask(dark)].mean() > _background(dark).mean()
    assert _relative_spread([_object_mask(img).sum() for img in (smear, bright, dark)]) < 0.08


# ---- determinism, resize, tables ----------------------------------------------------------------


def test_rendering_is_deterministic_and_seeded():
    rows = SyntheticCells().sample_factors(12, 5)
    small = CellsConfig(image_size=64, canvas_size=64)
    a = SyntheticCells(small).render(rows)
    b = SyntheticCells(small).render(rows)
    assert a.dtype == np.uint8 and a.shape == (12, 64, 64, 3)
    assert np.array_equal(a, b)
    other = SyntheticCells(CellsConfig(image_size=64, canvas_size=64, seed=1)).render(rows)
    noisy = rows[:, FACTOR_NAMES.index("noise")] > 0
    assert noisy.any()
    assert not np.array_equal(a[noisy], other[noisy])
    np.testing.assert_array_equal(SyntheticCells(small).sample_factors(7, 3),
                                  SyntheticCells(small).sample_factors(7, 3))


def test_canvas_is_resized_to_the_image_size():
    ds = SyntheticCells(CellsConfig(image_size=112, canvas_size=56))
    image = ds.render(_base(ds)[None])[0].astype(float) / 255
    assert image.shape == (112, 112, 3)
    fill = _solid_mask(image, image).mean()
    assert fill == pytest.approx(ds.factor_values("size")[2], rel=0.1)


def test_a_factor_left_out_is_fixed_at_its_default():
    ds = SyntheticCells(CellsConfig(factor_sizes={"size": 3, "hue": 2}, image_size=64, canvas_size=64))
    assert ds.factor_names == ("size", "hue")
    assert ds.factor_values("appearance") == ["smear"]
    image = ds.render(np.array([[2, 0]]))[0]
    assert _background(image.astype(float) / 255).mean() > 0.85


def test_factor_table_reads_values(cells):
    rows = cells.sample_factors(5, 0)
    table = factors_to_frame(cells, rows)
    assert list(table["appearance"]) == [APPEARANCE_NAMES[i] for i in rows[:, 0]]
    np.testing.assert_allclose(table["size"], cells.factor_values("size")[rows[:, 1]])
    np.testing.assert_allclose(table["orientation"], np.degrees(cells.factor_values("orientation")[rows[:, 3]]))


# ---- weak pairs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, None])
def test_weak_pairs_differ_in_exactly_the_chosen_factors(cells, k):
    f1, f2, changed = sample_weak_pairs(cells, 50, k, variants_per_anchor=2, rng=0)
    assert f1.shape == f2.shape == changed.shape == (100, cells.num_factors)
    np.testing.assert_array_equal(f1 != f2, changed)
    counts = changed.sum(axis=1)
    if k is None:
        assert counts.min() >= 1 and counts.max() <= cells.num_factors - 1
    else:
        assert np.all(counts == k)
    cells.check_factors(f2)


def test_a_one_factor_pair_changes_the_image(cells):
    # Every factor changes pixels whatever the rest is, except two, as in dSprites (a rotated
    # square): hue on grey plankton, and orientation of a round, regular cell with a centred nucleus.
    f1, f2, factor = sample_one_factor_pairs(cells, 12, rng=1)
    col = {name: cells.factor_names.index(name) for name in cells.factor_names}
    inert_hue = (factor == col["hue"]) & (f1[:, col["appearance"]] > 0)
    round_cell = (f1[:, col["elongation"]] == 0) & (f1[:, col["irregularity"]] == 0) & (
        f1[:, col["nucleus_offset"]] == 0)
    keep = ~inert_hue & ~((factor == col["orientation"]) & round_cell)
    a, b = cells.render(f1[keep]), cells.render(f2[keep])
    differs = np.abs(a.astype(int) - b.astype(int)).reshape(len(a), -1).max(axis=1) > 0
    assert differs.all()
    unique, (i1, i2) = unique_factor_rows(f1, f2)
    np.testing.assert_array_equal(unique[i1], f1)


# ---- as a training source -----------------------------------------------------------------------


def test_source_config_names_the_source():
    from drlcore.disentangle.source import SourceTrainConfig

    assert SourceTrainConfig().source == "dsprites"  # the default source is not this module's call
    cfg = SourceTrainConfig(source="cells", cells={"factor_sizes": {"size": 3}})
    assert SourceTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DrlError, match="unknown source 'cell'"):
        SourceTrainConfig(source="cell")
    with pytest.raises(DrlError, match="dsprites settings given"):
        SourceTrainConfig(source="cells", dsprites={"image_size": 64})


@pytest.mark.slow
def test_train_source_on_cells_with_the_tiny_backbone(tmp_path):
    from drlcore.disentangle.artifacts import load_model, read_metrics
    from drlcore.embedding.backbones import load_backbone
    from drlcore.data.cache import FeatureCache
    from drlcore.disentangle.source import SourceTrainConfig, train_source

    backbone = load_backbone("test-tiny", pretrained=False)
    sizes = {"appearance": 3, "size": 4, "hue": 3, "elongation": 3}
    cfg = SourceTrainConfig(source="cells", cells={"factor_sizes": sizes, "canvas_size": 48},
                            steps=40, batch_size=32, n_anchors=40, variants_per_anchor=2,
                            n_eval=100, n_omes_pairs_per_factor=5, latent_dim=4, hidden_dims=(32,))
    metrics = train_source(tmp_path / "m", backbone, cfg, cache=FeatureCache(tmp_path / "c", "k"),
                           compare_baseline=True)
    _, meta = load_model(tmp_path / "m", expected_backbone="test-tiny")
    assert meta["training"]["source"] == "cells" and "dsprites" not in meta["training"]
    rebuilt = CellsConfig.from_dict(meta["training"]["cells"])
    assert rebuilt.image_size == backbone.spec.input_size and rebuilt.canvas_size == 48
    saved = read_metrics(tmp_path / "m")
    assert saved["data"]["factor_names"] == list(sizes)
    assert saved["evaluation"]["n_omes_pairs"] == 5 * len(sizes)
    assert set(saved["comparison"]) == {"ada-gvae", "beta-vae"}
    assert metrics["source"] == "cells"
    assert all(n.split(": ")[1] in (*sizes, "unassigned", "inactive") or "+" in n
               for n in meta["dim_names"])


def test_source_model_shorthand_resolves_to_the_shipped_folders(tmp_path):
    from drlcore.runs.pipeline import ASSETS_DIR, resolve_source_model, shipped_source_model

    # The default (decided by benchmarks/axis_quality.py) is cells where it ships, else dsprites.
    assert resolve_source_model(None, "effnet-lite0") == ASSETS_DIR / "source-cells-effnet-lite0"
    assert shipped_source_model("effnet-lite0") == ASSETS_DIR / "source-cells-effnet-lite0"
    with pytest.raises(DrlError, match="no shipped dsprites source model for backbone 'dino-vitb16'"):
        resolve_source_model(None, "dino-vitb16")  # neither ships: the message names the fallback
    assert resolve_source_model("dsprites", "effnet-lite0") == ASSETS_DIR / "source-effnet-lite0"
    cells_dir = resolve_source_model("cells", "effnet-lite0")
    assert cells_dir == ASSETS_DIR / "source-cells-effnet-lite0"
    assert (cells_dir / "config.json").is_file()
    assert resolve_source_model(str(tmp_path), "effnet-lite0") == tmp_path
    with pytest.raises(DrlError, match="no shipped cells source model for backbone 'test-tiny'"):
        resolve_source_model("cells", "test-tiny")
