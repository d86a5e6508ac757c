"""Texture-dSprites: a rendered stand-in for the source dataset, and weak-supervision pairs.

The method (arXiv 2506.20649) trains the VAE on backbone features of *Texture-dSprites*: dSprites
shapes (square, ellipse, heart) at several scales, orientations and positions, coloured and filled
with a texture, on a black background. The dSprites archive and the Brodatz textures are not
available offline, so everything is rendered here:

- textures: scikit-image's bundled CC0 photographs (brick, grass, gravel) plus two procedural
  patterns (stripes, checker). Each is histogram-equalised to the same brightness distribution, so
  the texture factor carries structure only, never overall brightness;
- colours: white plus evenly spaced fully saturated hues;
- shapes: implicit curves, supersampled at the edge for anti-aliasing, rotated by inverse-rotating a
  coordinate grid that covers the shape's bounding box only.

A pixel is ``mask * texture * colour``. Rendering is a pure function of ``(factors, config)``; the
config's ``seed`` only picks the texture crops and phases, so a dataset is reproducible byte for byte.

Factor values (index ``i`` of a factor with ``n`` values):

- ``texture``: ``TEXTURE_NAMES[i]`` (n <= 5), ``shape``: ``SHAPE_NAMES[i]`` (n <= 3);
- ``colour``: 0 is white, then ``n - 1`` hues evenly spaced from red;
- ``scale``: ``linspace(0.5, 1, n)``; ``orientation``: ``2*pi*i/n`` (counter-clockwise; unlike the
  dSprites file there is no duplicate 2*pi == 0 value, so distinct indices are distinct angles);
- ``pos_x`` / ``pos_y``: ``linspace(0, 1, n)`` mapped onto the central region of the frame that keeps
  the largest shape inside it at any rotation (``pos_y = 0`` is the top).

A factor left out of the config is fixed at its default: brick texture, white, square, scale 1,
orientation 0, centred.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from drlcore.disentangle.render import FactorSpace, is_int, normalise_factor_sizes
from drlcore.errors import DrlError

FACTOR_NAMES: tuple[str, ...] = ("texture", "colour", "shape", "scale", "orientation", "pos_x", "pos_y")
DEFAULT_FACTOR_SIZES: tuple[tuple[str, int], ...] = (
    ("texture", 5),
    ("colour", 7),
    ("shape", 3),
    ("scale", 6),
    ("orientation", 40),
    ("pos_x", 32),
    ("pos_y", 32),
)
TEXTURE_NAMES: tuple[str, ...] = ("brick", "grass", "gravel", "stripes", "checker")
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
# Names for the hues that land on the six primary/secondary colours (the default 7-colour config).
_HUE_NAMES = {0: "red", 60: "yellow", 120: "green", 180: "cyan", 240: "blue", 300: "magenta"}
_MAX_SIZES = {"texture": len(TEXTURE_NAMES), "shape": len(SHAPE_NAMES)}

MIN_SCALE, MAX_SCALE = 0.5, 1.0
# Radius of the circle that encloses every shape at scale 1, as a fraction of the image side.
SHAPE_RADIUS = 0.2
# Equalised textures span this brightness range; the floor keeps a textured shape visibly brighter
# than the black background everywhere, so the mask (hence shape, scale, position) stays readable.
TEXTURE_RANGE = (0.25, 1.0)
SUPERSAMPLE = 4  # per axis, for edge anti-aliasing of the masks
MIN_IMAGE_SIZE = 32
_PHOTO_CROP = {"brick": 480, "grass": 320, "gravel": 320}


# --------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DSpritesConfig:
    """Which factors vary (in this order) and how many values each takes; image side; texture seed."""

    factor_sizes: tuple[tuple[str, int], ...] = DEFAULT_FACTOR_SIZES
    image_size: int = 224
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = normalise_factor_sizes(self.factor_sizes, "dSprites", FACTOR_NAMES, _MAX_SIZES)
        object.__setattr__(self, "factor_sizes", sizes)
        if not is_int(self.image_size) or self.image_size < MIN_IMAGE_SIZE:
            raise DrlError(f"dSprites image_size must be an integer >= {MIN_IMAGE_SIZE}, got {self.image_size!r}.")
        if not is_int(self.seed):
            raise DrlError(f"dSprites seed must be an integer, got {self.seed!r}.")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.factor_sizes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DSpritesConfig:
        """Build from JSON-like data; ``factor_sizes`` may be a mapping or a list of [name, size]."""
        from drlcore.config import from_dict

        return from_dict(cls, data, "dSprites config")

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor_sizes": [[name, size] for name, size in self.factor_sizes],
            "image_size": self.image_size,
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------------------
# Factor values


def _colour_values(n: int) -> tuple[np.ndarray, list[str]]:
    rgb = [(1.0, 1.0, 1.0)]
    names = ["white"]
    for i in range(n - 1):
        hue = i / (n - 1)
        rgb.append(colorsys.hsv_to_rgb(hue, 1.0, 1.0))
        degrees = hue * 360.0
        named = _HUE_NAMES.get(round(degrees)) if abs(degrees - round(degrees)) < 1e-9 else None
        names.append(named or f"hue {degrees:.0f}")
    return np.asarray(rgb, dtype=np.float32), names


def _numeric_values(name: str, n: int) -> np.ndarray:
    if name == "scale":
        return np.linspace(MIN_SCALE, MAX_SCALE, n) if n > 1 else np.array([MAX_SCALE])
    if name == "orientation":
        return 2.0 * np.pi * np.arange(n) / n
    if name in ("pos_x", "pos_y"):
        return np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
    raise KeyError(name)


# --------------------------------------------------------------------------------------------------
# Shapes: unit-disc implicit tests, in y-up coordinates


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points lie in ``shape``; every shape fits the unit disc at any rotation."""
    if shape == "square":
        half = 1.0 / math.sqrt(2.0)
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "ellipse":
        return x * x + (y / 0.55) ** 2 <= 1.0
    if shape == "heart":
        # The classic heart curve (x^2 + y^2 - 1)^3 = x^2 y^3, tip at (0, -1). Its smallest
        # enclosing circle is centred at (0, 0.25) with radius 1.25 (tip and lobes both touch it),
        # measured on a 3001^2 grid; the map below puts that circle on the unit disc.
        hx = 1.25 * x
        hy = 1.25 * y + 0.25
        r2 = hx * hx + hy * hy - 1.0
        return r2 * r2 * r2 - hx * hx * hy * hy * hy <= 0.0
    raise KeyError(shape)


def _render_mask(shape: str, radius_px: float, angle: float, half: int) -> np.ndarray:
    """Coverage in [0, 1] of a ``2*half`` square patch whose centre is the shape's centre."""
    side = 2 * half
    # Sample positions relative to the patch centre (a pixel corner), SUPERSAMPLE per pixel axis.
    offsets = (np.arange(side * SUPERSAMPLE, dtype=np.float64) + 0.5) / SUPERSAMPLE - half
    x = offsets[None, :] / radius_px
    y_up = -offsets[:, None] / radius_px
    # Inverse-rotate the sample grid so the shape appears rotated counter-clockwise by `angle`.
    c, s = math.cos(angle), math.sin(angle)
    u = c * x + s * y_up
    v = -s * x + c * y_up
    hits = _inside(shape, u, v)
    coverage = hits.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))
    return coverage.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Textures


def _equalise(image: np.ndarray) -> np.ndarray:
    """Map to TEXTURE_RANGE with a uniform brightness histogram (ties share their mean rank)."""
    from scipy.stats import rankdata

    ranks = rankdata(image.ravel(), method="average").reshape(image.shape)
    unit = (ranks - 1.0) / max(image.size - 1, 1)
    low, high = TEXTURE_RANGE
    return (low + (high - low) * unit).astype(np.float32)


def _make_texture(name: str, size: int, seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    if name in ("brick", "grass", "gravel"):
        import skimage.data
        from skimage.transform import resize

        photo = getattr(skimage.data, name)().astype(np.float64)
        # Crops of the 512-pixel photographs sized so that several bricks / pebbles / blades fall
        # inside the smallest shape once resized to the frame; the seed picks where.
        crop = min(_PHOTO_CROP[name], photo.shape[0], photo.shape[1])
        top = int(rng.integers(0, photo.shape[0] - crop + 1))
        left = int(rng.integers(0, photo.shape[1] - crop + 1))
        patch = photo[top : top + crop, left : left + crop]
        image = resize(patch, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    else:
        coords = np.arange(size, dtype=np.float64)
        period = size / 14.0
        phase_x, phase_y = rng.uniform(0.0, 2.0 * np.pi, size=2)
        xx, yy = coords[None, :], coords[:, None]
        if name == "stripes":
            image = np.sin(2.0 * np.pi * (xx + yy) / (math.sqrt(2.0) * period) + phase_x)
            image = np.broadcast_to(image, (size, size))
        elif name == "checker":
            image = np.sin(2.0 * np.pi * xx / (1.5 * period) + phase_x) * np.sin(
                2.0 * np.pi * yy / (1.5 * period) + phase_y
            )
        else:
            raise KeyError(name)
    return _equalise(np.asarray(image))


# --------------------------------------------------------------------------------------------------
# Dataset


class TextureDSprites(FactorSpace):
    """Renderer and factor sampler for one :class:`DSpritesConfig`.

    ``render`` caches one anti-aliased mask per (shape, scale, orientation) so that a batch costs
    little more than one multiply per shape pixel; the cache is bounded (LRU).
    """

    MASK_CACHE_SIZE = 4096

    def __init__(self, config: DSpritesConfig = DSpritesConfig()):
        if not isinstance(config, DSpritesConfig):
            raise DrlError(f"TextureDSprites needs a DSpritesConfig, got {type(config).__name__}.")
        self.config = config
        size_of = self._init_factors(config.factor_sizes)

        def count(name: str) -> int:
            return size_of.get(name, 1)

        self._texture_names = TEXTURE_NAMES[: count("texture")]
        self._colours, self._colour_names = _colour_values(count("colour"))
        self._shape_names = SHAPE_NAMES[: count("shape")]
        self._numeric = {
            name: _numeric_values(name, count(name)) for name in ("scale", "orientation", "pos_x", "pos_y")
        }

        image_size = config.image_size
        self._radius_px = SHAPE_RADIUS * image_size
        # Positions are laid out for the largest scale so the mapping does not depend on scale
        # (as in dSprites); every patch then lies fully inside the frame and needs no clipping.
        self._max_half = self._half(MAX_SCALE)
        span = image_size - 2 * self._max_half
        self._centres = {
            name: np.rint(self._max_half + self._numeric[name] * span).astype(np.int64)
            for name in ("pos_x", "pos_y")
        }
        for name, centres in self._centres.items():
            # Two indices on one pixel would make a "changed" position render identically.
            if len(np.unique(centres)) < len(centres):
                raise DrlError(
                    f"dSprites factor {name!r} has {len(centres)} values but image_size {image_size} leaves "
                    f"only {span + 1} distinct pixel positions; use fewer positions or a larger image."
                )
        self._textures: dict[int, np.ndarray] = {}
        self._mask = functools.lru_cache(maxsize=self.MASK_CACHE_SIZE)(self._compute_mask)

    # ---- factor helpers ------------------------------------------------------------------------

    def factor_values(self, name: str) -> np.ndarray | list[str]:
        """The values behind each index of ``name``: names for categorical factors, numbers otherwise
        (scale; orientation in radians; position in [0, 1])."""
        if name == "texture":
            return list(self._texture_names)
        if name == "colour":
            return list(self._colour_names)
        if name == "shape":
            return list(self._shape_names)
        if name in self._numeric:
            return self._numeric[name].copy()
        raise DrlError(f"Unknown dSprites factor {name!r}; known factors: {list(FACTOR_NAMES)}.")

    def _indices(self, factors: np.ndarray, name: str) -> np.ndarray:
        column = self._column.get(name)
        if column is None:
            return np.zeros(len(factors), dtype=np.int64)
        return factors[:, column]

    # ---- rendering ------------------------------------------------------------------------------

    def _half(self, scale: float) -> int:
        # Half the patch side: the enclosing circle plus one pixel of margin for the soft edge.
        return int(math.ceil(self._radius_px * scale)) + 1

    def _compute_mask(self, shape_index: int, scale_index: int, orientation_index: int) -> np.ndarray:
        scale = float(self._numeric["scale"][scale_index])
        angle = float(self._numeric["orientation"][orientation_index])
        mask = _render_mask(self._shape_names[shape_index], self._radius_px * scale, angle, self._half(scale))
        mask.setflags(write=False)
        return mask

    def _texture(self, index: int) -> np.ndarray:
        texture = self._textures.get(index)
        if texture is None:
            texture = _make_texture(self._texture_names[index], self.config.image_size, self.config.seed, index)
            texture.setflags(write=False)
            self._textures[index] = texture
        return texture

    def render(self, factors: Any) -> np.ndarray:
        """Images for each factor row: uint8 (n, S, S, 3), identical for identical (factors, config).

        All n images are returned at once (150 kB each at 224 px): render large sets in batches.
        """
        factors = self.check_factors(factors)
        size = self.config.image_size
        images = np.zeros((len(factors), size, size, 3), dtype=np.uint8)
        texture_idx = self._indices(factors, "texture")
        colour_idx = self._indices(factors, "colour")
        shape_idx = self._indices(factors, "shape")
        scale_idx = self._indices(factors, "scale")
        orientation_idx = self._indices(factors, "orientation")
        centre_x = self._centres["pos_x"][self._indices(factors, "pos_x")]
        centre_y = self._centres["pos_y"][self._indices(factors, "pos_y")]
        colours255 = self._colours * np.float32(255.0)
        for i in range(len(factors)):
            mask = self._mask(int(shape_idx[i]), int(scale_idx[i]), int(orientation_idx[i]))
            side = mask.shape[0]
            top = int(centre_y[i]) - side // 2
            left = int(centre_x[i]) - side // 2
            window = (slice(top, top + side), slice(left, left + side))
            shaded = mask * self._texture(int(texture_idx[i]))[window]
            # Values stay <= 255 (mask, texture, colour all <= 1); +0.5 then truncation rounds.
            images[i][window] = (shaded[..., None] * colours255[colour_idx[i]] + 0.5).astype(np.uint8)
        return images


# --------------------------------------------------------------------------------------------------
# Weak supervision


def _changeable_or_error(ds: TextureDSprites) -> np.ndarray:
    changeable = ds.changeable_factors
    if changeable.size == 0:
        raise DrlError("No dSprites factor has more than one value, so no pair can differ; enlarge factor_sizes.")
    return changeable


def _change_values(
    ds: TextureDSprites, factors: np.ndarray, changed: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Copy of ``factors`` with every ``changed`` entry moved to a uniformly drawn *different* value."""
    sizes = ds.factor_sizes[None, :]
    # An offset in 1..size-1 (mod size) is uniform over the other values and never 0. Columns of
    # size 1 get offset 0 from the formula below, and they are never in `changed` anyway.
    offsets = 1 + np.floor(rng.random(factors.shape) * (sizes - 1)).astype(np.int64)
    return np.where(changed, (factors + offsets) % sizes, factors)


def sample_weak_pairs(
    ds: TextureDSprites,
    n_anchors: int,
    k: int | str | None,
    variants_per_anchor: int = 1,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weakly supervised pairs (Locatello et al. 2020): each pair shares all but ``k`` factors.

    For each of ``n_anchors`` anchors, ``variants_per_anchor`` variants are drawn; each changes
    exactly ``k`` factors, chosen among the factors with more than one value, each to a value that
    differs from the anchor's. ``k=None`` or ``"rand"`` draws ``k`` per pair uniformly from
    ``1..C-1`` (``C`` = number of changeable factors; ``1`` when ``C == 1``), so at least one
    informative factor is always shared, as in the paper's Ada-GVAE setting.

    Returns ``(f1, f2, changed_mask)``: int64 (n, K), int64 (n, K), bool (n, K) with
    ``n = n_anchors * variants_per_anchor``. Rows are grouped by anchor: ``f1[i]`` is anchor
    ``i // variants_per_anchor``, so the anchors are ``f1[::variants_per_anchor]``.

    Why variants share an anchor: on CPU, rendering and above all the backbone embedding dominate
    the cost of building a training set, not the VAE. With ``v`` variants per anchor, ``n`` pairs
    need ``n / v + n`` embeddings instead of ``2 n``; render and embed the anchors once (see
    :func:`anchor_index`) and index the embeddings with it.
    """
    if not is_int(n_anchors) or n_anchors < 0:
        raise DrlError(f"n_anchors must be a non-negative integer, got {n_anchors!r}.")
    if not is_int(variants_per_anchor) or variants_per_anchor < 1:
        raise DrlError(f"variants_per_anchor must be an integer >= 1, got {variants_per_anchor!r}.")
    changeable = _changeable_or_error(ds)
    n_changeable = changeable.size
    rng = np.random.default_rng(rng)
    n = int(n_anchors) * int(variants_per_anchor)

    if k is None or (isinstance(k, str) and k == "rand"):
        k_per_pair = rng.integers(1, max(n_changeable - 1, 1), size=n, endpoint=True)
    elif is_int(k):
        if not 1 <= k <= n_changeable:
            names = [ds.factor_names[j] for j in changeable]
            raise DrlError(f"k={k} factors cannot change: only {n_changeable} factor(s) vary ({names}).")
        k_per_pair = np.full(n, int(k), dtype=np.int64)
    else:
        raise DrlError(f"k must be an integer, None or 'rand', got {k!r}.")

    anchors = ds.sample_factors(n_anchors, rng)
    f1 = np.repeat(anchors, variants_per_anchor, axis=0)
    # Rank of a random key per changeable factor gives a uniform random order of the factors in
    # each row; the first k_i of that order are the ones changed.
    order_rank = rng.random((n, n_changeable)).argsort(axis=1).argsort(axis=1)
    changed = np.zeros((n, ds.num_factors), dtype=bool)
    changed[:, changeable] = order_rank < k_per_pair[:, None]
    f2 = _change_values(ds, f1, changed, rng)
    return f1, f2, changed


def anchor_index(n_anchors: int, variants_per_anchor: int) -> np.ndarray:
    """Row -> anchor for :func:`sample_weak_pairs` output: ``f1 == f1[::v][anchor_index(...)]``."""
    return np.repeat(np.arange(n_anchors, dtype=np.int64), variants_per_anchor)


def unique_factor_rows(*factor_arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct rows over all arrays, and for each array the index of each row among them.

    Render/embed ``unique`` once, then ``embeddings[index]`` recovers each array's rows; this also
    catches a variant that happens to equal another pair's anchor.
    """
    if not factor_arrays:
        raise DrlError("unique_factor_rows needs at least one factor array.")
    stacked = np.concatenate([np.asarray(a) for a in factor_arrays], axis=0)
    unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    bounds = np.cumsum([0] + [len(a) for a in factor_arrays])
    return unique, [inverse[bounds[i] : bounds[i + 1]] for i in range(len(factor_arrays))]


def sample_one_factor_pairs(
    ds: TextureDSprites, n_per_factor: int, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs that differ in exactly one factor (for OMES): ``n_per_factor`` per changeable factor.

    Returns ``(f1, f2, factor_index)``; ``factor_index`` (int64, n) is the column (in
    ``ds.factor_names``) that differs, and rows come grouped by factor in column order. Factors with
    a single value have no pairs.
    """
    if not is_int(n_per_factor) or n_per_factor < 0:
        raise DrlError(f"n_per_factor must be a non-negative integer, got {n_per_factor!r}.")
    changeable = _changeable_or_error(ds)
    rng = np.random.default_rng(rng)
    factor_index = np.repeat(changeable, n_per_factor).astype(np.int64)
    f1 = ds.sample_factors(len(factor_index), rng)
    changed = np.zeros(f1.shape, dtype=bool)
    changed[np.arange(len(factor_index)), factor_index] = True
    f2 = _change_values(ds, f1, changed, rng)
    return f1, f2, factor_index


# --------------------------------------------------------------------------------------------------
# Labels


def factors_to_frame(ds: TextureDSprites, factors: Any) -> pd.DataFrame:
    """Readable factor table, one row per factor row.

    Columns, for each factor of the config in order: ``<name>`` holds the value (texture / colour /
    shape names; scale; ``orientation`` in degrees; positions in [0, 1]) and ``<name>_index`` the
    integer index.
    """
    factors = ds.check_factors(factors)
    columns: dict[str, Any] = {}
    for j, name in enumerate(ds.factor_names):
        idx = factors[:, j]
        values = ds.factor_values(name)
        if isinstance(values, list):
            columns[name] = pd.Series(np.asarray(values, dtype=object)[idx], dtype="string")
        elif name == "orientation":
            columns[name] = np.degrees(values[idx])
        else:
            columns[name] = values[idx]
        columns[f"{name}_index"] = idx
    return pd.DataFrame(columns)


if __name__ == "__main__":  # rough speed figure: python -m drlcore.disentangle.dsprites
    import time

    dataset = TextureDSprites()
    warm = dataset.sample_factors(2000, 1)
    start = time.perf_counter()
    dataset.render(warm)
    cold = time.perf_counter() - start
    batch = dataset.sample_factors(5000, 2)
    start = time.perf_counter()
    dataset.render(batch)
    hot = time.perf_counter() - start
    print(f"first 2000 (filling the mask cache): {2000 / cold:.0f} images/s")
    print(f"next 5000 at {dataset.config.image_size}px: {5000 / hot:.0f} images/s (one thread)")
