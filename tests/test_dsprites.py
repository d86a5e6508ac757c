"""Texture-dSprites: rendering geometry, colours, determinism, config checks and pair sampling."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from drlcore.disentangle.dsprites import (
    DEFAULT_FACTOR_SIZES,
    FACTOR_NAMES,
    SHAPE_RADIUS,
    DSpritesConfig,
    TextureDSprites,
    anchor_index,
    factors_to_frame,
    sample_one_factor_pairs,
    sample_weak_pairs,
    unique_factor_rows,
)
from drlcore.errors import DrlError

SMALL = 64  # image side for tests that only need pixels to differ


@pytest.fixture(scope="module")
def small() -> TextureDSprites:
    return TextureDSprites(DSpritesConfig(image_size=SMALL))


@pytest.fixture(scope="module")
def full() -> TextureDSprites:
    return TextureDSprites(DSpritesConfig())


def _row(ds: TextureDSprites, **values: int) -> np.ndarray:
    row = np.zeros((1, ds.num_factors), dtype=np.int64)
    for name, value in values.items():
        row[0, ds.factor_names.index(name)] = value
    return row


def _foreground(images: np.ndarray) -> np.ndarray:
    return images.max(axis=-1) > 0


# ---- config ----------------------------------------------------------------------------------


def test_default_config_matches_reference_cardinalities(full):
    assert full.factor_names == FACTOR_NAMES
    assert full.factor_sizes.tolist() == [5, 7, 3, 6, 40, 32, 32]
    assert full.num_factors == 7
    assert full.config.image_size == 224


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"factor_sizes": (("hue", 3),)}, "Unknown dSprites factor 'hue'"),
        ({"factor_sizes": (("shape", 0),)}, ">= 1"),
        ({"factor_sizes": (("shape", -2),)}, ">= 1"),
        ({"factor_sizes": (("shape", 2.0),)}, ">= 1"),
        ({"factor_sizes": (("shape", True),)}, ">= 1"),
        ({"factor_sizes": (("shape", 2), ("shape", 3))}, "twice"),
        ({"factor_sizes": (("texture", 6),)}, "at most 5"),
        ({"factor_sizes": (("shape", 4),)}, "at most 3"),
        ({"factor_sizes": ()}, "empty"),
        ({"factor_sizes": (("shape",),)}, "pair"),
        ({"image_size": 8}, "image_size"),
        ({"seed": "zero"}, "seed"),
    ],
)
def test_bad_config_is_a_user_error(kwargs, fragment):
    with pytest.raises(DrlError, match=fragment):
        DSpritesConfig(**kwargs)


def test_from_dict_round_trip_and_rejects_unknown_keys():
    config = DSpritesConfig(factor_sizes=(("shape", 3), ("scale", 2)), image_size=64, seed=5)
    assert DSpritesConfig.from_dict(config.to_dict()) == config
    assert DSpritesConfig.from_dict({"factor_sizes": {"shape": 3, "scale": 2}, "image_size": 64, "seed": 5}) == config
    with pytest.raises(DrlError, match="unknown dSprites config setting"):
        DSpritesConfig.from_dict({"image_size": 64, "colour_space": "rgb"})


def test_factor_order_comes_from_config():
    ds = TextureDSprites(DSpritesConfig(factor_sizes=(("scale", 6), ("shape", 3)), image_size=SMALL))
    assert ds.factor_names == ("scale", "shape")
    frame = factors_to_frame(ds, np.array([[5, 2]]))
    assert frame.loc[0, "shape"] == "heart" and frame.loc[0, "scale"] == pytest.approx(1.0)


def test_too_many_positions_for_the_image_is_refused():
    with pytest.raises(DrlError, match="distinct pixel positions"):
        TextureDSprites(DSpritesConfig(image_size=32))


# ---- rendering -------------------------------------------------------------------------------


def test_render_is_deterministic_and_seed_picks_textures(rng):
    config = DSpritesConfig(image_size=SMALL, seed=3)
    factors = TextureDSprites(config).sample_factors(12, rng)
    first = TextureDSprites(config).render(factors)
    again = TextureDSprites(config).render(factors)
    assert first.dtype == np.uint8 and first.shape == (12, SMALL, SMALL, 3)
    assert first.tobytes() == again.tobytes()
    other_seed = TextureDSprites(DSpritesConfig(image_size=SMALL, seed=4)).render(factors)
    assert not np.array_equal(first, other_seed)
    # Same masks, only textures moved: the silhouettes agree.
    assert np.array_equal(_foreground(first), _foreground(other_seed))


def test_every_factor_value_changes_pixels(small):
    # A heart has no rotational symmetry, so every orientation step must show.
    base = _row(small, texture=0, colour=1, shape=2, scale=3, orientation=0, pos_x=10, pos_y=20)
    base_image = small.render(base)[0]
    for j, name in enumerate(small.factor_names):
        others = np.repeat(base, small.factor_sizes[j] - 1, axis=0)
        others[:, j] = [v for v in range(small.factor_sizes[j]) if v != base[0, j]]
        images = small.render(others)
        same = [int(v) for v, image in zip(others[:, j], images) if np.array_equal(image, base_image)]
        assert not same, f"{name} values {same} render the same image as value {base[0, j]}"


def test_background_is_black_outside_the_shape(full, rng):
    factors = full.sample_factors(40, rng)
    images = full.render(factors)
    scales = factors_to_frame(full, factors)["scale"].to_numpy()
    for image, scale in zip(images, scales):
        rows, cols = np.nonzero(_foreground(image[None])[0])
        assert rows.size > 0
        # The shape fits a circle of radius SHAPE_RADIUS * S * scale; nothing lights up beyond it.
        extent = 2 * SHAPE_RADIUS * full.config.image_size * scale + 2
        assert rows.max() - rows.min() < extent and cols.max() - cols.min() < extent


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_largest_shape_stays_inside_frame_at_extreme_positions(full, shape):
    last = full.factor_sizes - 1
    rows = []
    for pos_x in (0, last[5]):
        for pos_y in (0, last[6]):
            for orientation in (0, 5, 13):
                row = _row(full, shape=shape, scale=last[3], orientation=orientation, pos_x=pos_x, pos_y=pos_y)
                rows.append(row[0])
    centred = [_row(full, shape=shape, scale=last[3], orientation=o, pos_x=16, pos_y=16)[0] for o in (0, 5, 13)]
    images = full.render(np.array(rows))
    reference = _foreground(full.render(np.array(centred))).sum(axis=(1, 2))
    foreground = _foreground(images)
    # A clipped shape would lose pixels against the same shape in the middle of the frame.
    assert np.array_equal(foreground.sum(axis=(1, 2)), np.tile(reference, 4))
    border = np.concatenate(
        [foreground[:, 0, :], foreground[:, -1, :], foreground[:, :, 0], foreground[:, :, -1]], axis=1
    )
    assert not border.any()
    # Extreme positions put the shape's enclosing circle against the edges, not in the middle.
    left_images = foreground[:6]  # pos_x == 0
    assert min(np.nonzero(image)[1].min() for image in left_images) <= 6


def test_white_is_grey_and_hues_are_distinct(small):
    colours = small.factor_sizes[small.factor_names.index("colour")]
    factors = np.repeat(_row(small, shape=0, scale=5, pos_x=16, pos_y=16), colours, axis=0)
    factors[:, small.factor_names.index("colour")] = np.arange(colours)
    images = small.render(factors).astype(np.float64)
    mask = _foreground(images.astype(np.uint8))
    white = images[0][mask[0]]
    assert np.array_equal(white[:, 0], white[:, 1]) and np.array_equal(white[:, 1], white[:, 2])
    hues = []
    for image, m in zip(images[1:], mask[1:]):
        mean_rgb = image[m].mean(axis=0) / 255.0
        hue, saturation, _ = colorsys.rgb_to_hsv(*mean_rgb)
        assert saturation > 0.9
        hues.append(hue * 360.0)
    gaps = np.abs(np.subtract.outer(hues, hues))
    gaps = np.minimum(gaps, 360.0 - gaps) + np.eye(len(hues)) * 360.0
    assert gaps.min() > 0.8 * 360.0 / len(hues)
    assert factors_to_frame(small, factors)["colour"].tolist() == [
        "white", "red", "yellow", "green", "cyan", "blue", "magenta"
    ]


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_grows_with_scale_squared(full, shape):
    sizes = full.factor_sizes[full.factor_names.index("scale")]
    factors = np.repeat(_row(full, shape=shape, pos_x=16, pos_y=16), sizes, axis=0)
    factors[:, full.factor_names.index("scale")] = np.arange(sizes)
    area = _foreground(full.render(factors)).sum(axis=(1, 2)).astype(np.float64)
    assert np.all(np.diff(area) > 0)
    scales = full.factor_values("scale")
    np.testing.assert_allclose(area / area[-1], (scales / scales[-1]) ** 2, atol=0.03)


def test_textures_share_one_brightness_distribution(full):
    # Texture must not be a proxy for brightness: the same white square, five textures.
    # Squares tiled over the frame pool most of each texture (a single window has local trends).
    grid = [(x, y) for x in (0, 10, 21, 31) for y in (0, 10, 21, 31)]
    means, spreads = [], []
    for texture in range(5):
        factors = np.concatenate([_row(full, texture=texture, shape=0, scale=5, pos_x=x, pos_y=y) for x, y in grid])
        images = full.render(factors)
        pixels = images[_foreground(images)][:, 0].astype(np.float64)
        means.append(pixels.mean())
        spreads.append(pixels.std())
    assert max(means) - min(means) < 0.04 * np.mean(means)
    assert min(spreads) > 30  # and each one has visible structure


def test_dropping_position_centres_the_shape():
    sizes = tuple(item for item in DEFAULT_FACTOR_SIZES if not item[0].startswith("pos"))
    ds = TextureDSprites(DSpritesConfig(factor_sizes=sizes, image_size=SMALL))
    assert ds.factor_names == ("texture", "colour", "shape", "scale", "orientation")
    for shape in (0, 1):  # point-symmetric shapes: their centroid is their centre
        factors = _row(ds, shape=shape, scale=2, orientation=7)
        rows, cols = np.nonzero(_foreground(ds.render(factors))[0])
        assert abs(rows.mean() - SMALL / 2) < 1 and abs(cols.mean() - SMALL / 2) < 1


def test_render_rejects_bad_factor_arrays(small):
    with pytest.raises(DrlError, match="shape"):
        small.render(np.zeros((2, 3), dtype=int))
    with pytest.raises(DrlError, match="outside"):
        small.render(_row(small, shape=3))
    with pytest.raises(DrlError, match="integer"):
        small.render(np.zeros((1, 7)) + 0.5)
    assert small.render(np.zeros((0, 7), dtype=int)).shape == (0, SMALL, SMALL, 3)


# ---- sampling --------------------------------------------------------------------------------


def test_sample_factors_covers_every_value(small):
    factors = small.sample_factors(4000, np.random.default_rng(1))
    assert factors.shape == (4000, 7) and factors.dtype == np.int64
    for j, size in enumerate(small.factor_sizes):
        assert set(np.unique(factors[:, j])) == set(range(size))
    assert np.array_equal(factors, small.sample_factors(4000, np.random.default_rng(1)))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_weak_pairs_change_exactly_k_factors(small, k):
    f1, f2, changed = sample_weak_pairs(small, 300, k, 4, np.random.default_rng(k))
    assert f1.shape == f2.shape == changed.shape == (1200, 7) and changed.dtype == bool
    assert np.array_equal(f1 != f2, changed)
    assert np.all(changed.sum(axis=1) == k)
    assert np.all((f2 >= 0) & (f2 < small.factor_sizes))
    # Variants of one anchor share f1; anchors come first in each group.
    anchors = f1[::4]
    assert np.array_equal(f1, anchors[anchor_index(300, 4)])
    if k == 1:
        # Every factor gets changed, to every other value, somewhere.
        assert changed.any(axis=0).all()
        scale = small.factor_names.index("scale")
        assert set(f2[changed[:, scale], scale]) == set(range(6))


def test_weak_pairs_random_k_spans_one_to_k_minus_one(small):
    for k in (None, "rand"):
        _, _, changed = sample_weak_pairs(small, 2000, k, 1, np.random.default_rng(0))
        counts = changed.sum(axis=1)
        assert set(np.unique(counts)) == set(range(1, 7))


def test_weak_pairs_skip_single_valued_factors():
    ds = TextureDSprites(DSpritesConfig(factor_sizes=(("shape", 3), ("colour", 1), ("scale", 6)), image_size=SMALL))
    f1, f2, changed = sample_weak_pairs(ds, 200, None, 2, np.random.default_rng(0))
    assert not changed[:, 1].any() and np.all(f1[:, 1] == 0) and np.all(f2[:, 1] == 0)
    assert np.all(changed.sum(axis=1) == 1)  # two changeable factors -> k drawn from 1..1
    _, _, both = sample_weak_pairs(ds, 50, 2, 1, np.random.default_rng(0))
    assert np.all(both[:, [0, 2]])
    with pytest.raises(DrlError, match="only 2 factor"):
        sample_weak_pairs(ds, 10, 3, 1, np.random.default_rng(0))
    with pytest.raises(DrlError):
        sample_weak_pairs(ds, 10, 0, 1, np.random.default_rng(0))
    with pytest.raises(DrlError, match="k must be"):
        sample_weak_pairs(ds, 10, "two", 1, np.random.default_rng(0))
    constant = TextureDSprites(DSpritesConfig(factor_sizes=(("shape", 1),), image_size=SMALL))
    with pytest.raises(DrlError, match="No dSprites factor"):
        sample_weak_pairs(constant, 10, 1, 1, np.random.default_rng(0))


def test_unique_factor_rows_rebuilds_every_row(small):
    f1, f2, _ = sample_weak_pairs(small, 50, 2, 5, np.random.default_rng(2))
    unique, (index1, index2) = unique_factor_rows(f1, f2)
    assert len(unique) <= 50 + len(f2)
    assert np.array_equal(unique[index1], f1) and np.array_equal(unique[index2], f2)
    assert len(np.unique(index1)) == 50


def test_one_factor_pairs_differ_in_that_factor_only():
    sizes = (("shape", 3), ("colour", 1), ("orientation", 2))
    ds = TextureDSprites(DSpritesConfig(factor_sizes=sizes, image_size=SMALL))
    f1, f2, factor = sample_one_factor_pairs(ds, 30, np.random.default_rng(0))
    assert f1.shape == f2.shape == (60, 3)
    assert np.array_equal(np.bincount(factor, minlength=3), [30, 0, 30])
    differs = f1 != f2
    assert np.all(differs.sum(axis=1) == 1)
    assert np.array_equal(np.argmax(differs, axis=1), factor)


def test_factors_to_frame_is_readable(full):
    factors = _row(full, texture=3, colour=5, shape=1, scale=0, orientation=10, pos_x=31, pos_y=0)
    row = factors_to_frame(full, factors).iloc[0]
    assert (row["texture"], row["colour"], row["shape"]) == ("stripes", "blue", "ellipse")
    assert row["scale"] == pytest.approx(0.5)
    assert row["orientation"] == pytest.approx(90.0)
    assert (row["pos_x"], row["pos_y"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert row["shape_index"] == 1
