"""Synthetic cells: a procedural single-object source whose factors are what biologists measure.

Texture-dSprites varies shape, colour, texture and position; a microscopist asks about size,
elongation, boundary irregularity, the nucleus, the stain and the texture of the cytoplasm. This
renderer draws one centred object per image from exactly those factors, each known and discretised,
so a source model can learn axes with those meanings (issue 8) and weak pairs are sampled as for
Texture-dSprites (the pair samplers of :mod:`drlcore.disentangle.dsprites` only use the interface both renderers
share: ``factor_names``, ``factor_sizes``, ``num_factors``, ``changeable_factors``,
``sample_factors``, ``check_factors``, ``factor_values``, ``render``).

The object is drawn on a ``canvas_size`` grid (default 128 px, like the small crops of real data)
and resized to ``image_size`` (the backbone input). Three appearances cover the reference data:

- ``smear``: a stained cell on a pale, slightly pink background (blood smears, May-Grunwald-Giemsa);
  light through the object obeys Beer-Lambert: ``pixel = background * T_cyto**(a*d_c) * T_nuc**(a*d_n)``
  with stain transmittances ``T`` of the stain hue, stain intensity ``a`` and densities ``d``;
- ``brightfield``: a grey absorbing object on white (the NDSB plankton crops look like this);
- ``darkfield``: a grey scattering object, bright on black (dark-field plankton imagers).

Factor values (index ``i`` of a factor with ``n`` values; one value = the default in brackets):

- ``appearance``: ``APPEARANCE_NAMES[i]`` (n <= 3) [smear];
- ``size``: object area as a fraction of the canvas, ``linspace(0.03, 0.24, n)`` [0.12];
- ``elongation``: major / minor axis ratio, ``linspace(1, 2.4, n)`` at constant area [1];
- ``orientation``: of the major axis, ``pi*i/n`` counter-clockwise [0];
- ``irregularity``: relative amplitude of a fixed low-order Fourier wobble (harmonics 2-5) of the
  boundary radius, ``linspace(0, 0.24, n)``, at constant area [0];
- ``nucleus_size``: nucleus / cell linear size, ``linspace(0.3, 0.75, n)`` [0.5];
- ``nucleus_offset``: shift of the nucleus along the major axis, as a fraction of the room it has
  inside the cell, ``linspace(0, 0.6, n)`` [0];
- ``hue``: stain hue in degrees, ``linspace(15, -130, n) mod 360`` (orange-red, pink, purple,
  violet, blue for n=5) [300]; grey appearances have no hue, so there it changes nothing;
- ``intensity``: stain (or scattering) strength ``a``, ``linspace(0.35, 0.95, n)`` [0.7];
- ``granularity``: contrast ``g`` of a fixed band-pass granule texture in the object (density
  ``1 + g*tanh(noise)``), ``linspace(0, 0.7, n)`` [0];
- ``background``: level, ``linspace(0, 1, n)`` from the appearance's clean background towards a
  dimmer (smear, brightfield) or brighter (darkfield) one [0];
- ``noise``: std of fixed Gaussian pixel noise, ``linspace(0, 0.05, n)`` [0];
- ``blur``: Gaussian defocus sigma in canvas pixels at 128 px, ``linspace(0, 2, n)`` [0].

Rendering is a pure function of ``(factors, config)``; ``seed`` picks only the fixed noise fields
(granules, pixel noise) and the phases of the boundary wobble, so every image of a dataset shares
them and a pair that changes one factor changes nothing else.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from drlcore.disentangle.dsprites import (
    anchor_index,
    factors_to_frame,
    sample_one_factor_pairs,
    sample_weak_pairs,
    unique_factor_rows,
)
from drlcore.disentangle.render import FactorSpace, is_int, normalise_factor_sizes
from drlcore.errors import DrlError

__all__ = [
    "APPEARANCE_NAMES",
    "CellsConfig",
    "DEFAULT_FACTOR_SIZES",
    "FACTOR_NAMES",
    "SyntheticCells",
    "anchor_index",
    "factors_to_frame",
    "sample_one_factor_pairs",
    "sample_weak_pairs",
    "unique_factor_rows",
]

FACTOR_NAMES: tuple[str, ...] = (
    "appearance", "size", "elongation", "orientation", "irregularity", "nucleus_size",
    "nucleus_offset", "hue", "intensity", "granularity", "background", "noise", "blur",
)
DEFAULT_FACTOR_SIZES: tuple[tuple[str, int], ...] = (
    ("appearance", 3),
    ("size", 5),
    ("elongation", 4),
    ("orientation", 6),
    ("irregularity", 4),
    ("nucleus_size", 4),
    ("nucleus_offset", 3),
    ("hue", 5),
    ("intensity", 4),
    ("granularity", 4),
    ("background", 3),
    ("noise", 3),
    ("blur", 3),
)
APPEARANCE_NAMES: tuple[str, ...] = ("smear", "brightfield", "darkfield")
# (low, high, value when the factor has one value or is left out) of each numeric factor.
_RANGES: dict[str, tuple[float, float, float]] = {
    "size": (0.03, 0.24, 0.12),
    "elongation": (1.0, 2.4, 1.0),
    "irregularity": (0.0, 0.24, 0.0),
    "nucleus_size": (0.30, 0.75, 0.5),
    "nucleus_offset": (0.0, 0.6, 0.0),
    "hue": (15.0, -130.0, 300.0),
    "intensity": (0.35, 0.95, 0.7),
    "granularity": (0.0, 0.7, 0.0),
    "background": (0.0, 1.0, 0.0),
    "noise": (0.0, 0.05, 0.0),
    "blur": (0.0, 2.0, 0.0),
}
MAX_VALUES = 8  # per numeric factor: beyond this, neighbouring values barely differ in an image
_LIMITS = {name: len(APPEARANCE_NAMES) if name == "appearance" else MAX_VALUES for name in FACTOR_NAMES}
MIN_CANVAS, MIN_IMAGE_SIZE = 32, 32
_HARMONICS = np.array([2, 3, 4, 5])
_HARMONIC_WEIGHTS = np.array([1.0, 0.8, 0.6, 0.5])
# Smear colours: a pale, slightly pink background; the cytoplasm stain is light and weakly
# saturated, the nucleus stain dark and saturated, both of the stain hue (transmittances at a=1).
_SMEAR_BACKGROUND = np.array([0.97, 0.91, 0.88])
_CYTO_SV = (0.38, 0.93)
_NUC_SV = (0.70, 0.32)
# Background at level 1, as a fraction: smear and brightfield darken by this, darkfield brightens.
_BACKGROUND_SHIFT = 0.16
# Optical density per unit density of (cytoplasm, nucleus) in the grey appearances.
_GREY_DENSITY = (0.9, 1.8)


# --------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class CellsConfig:
    """Which factors vary (in this order) and how many values each takes; canvas and image side;
    the seed of the fixed noise fields."""

    factor_sizes: tuple[tuple[str, int], ...] = DEFAULT_FACTOR_SIZES
    image_size: int = 224
    canvas_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor_sizes", normalise_factor_sizes(
            self.factor_sizes, "cells", FACTOR_NAMES, _LIMITS))
        if not is_int(self.image_size) or self.image_size < MIN_IMAGE_SIZE:
            raise DrlError(f"cells image_size must be an integer >= {MIN_IMAGE_SIZE}, got {self.image_size!r}.")
        if not is_int(self.canvas_size) or self.canvas_size < MIN_CANVAS:
            raise DrlError(f"cells canvas_size must be an integer >= {MIN_CANVAS}, got {self.canvas_size!r}.")
        if not is_int(self.seed):
            raise DrlError(f"cells seed must be an integer, got {self.seed!r}.")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.factor_sizes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellsConfig:
        """Build from JSON-like data; ``factor_sizes`` may be a mapping or a list of [name, size]."""
        from drlcore.config import from_dict

        return from_dict(cls, data, "cells config")

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor_sizes": [[name, size] for name, size in self.factor_sizes],
            "image_size": self.image_size,
            "canvas_size": self.canvas_size,
            "seed": self.seed,
        }


def _numeric_values(name: str, n: int) -> np.ndarray:
    if name == "orientation":
        return np.pi * np.arange(n) / n
    low, high, default = _RANGES[name]
    values = np.linspace(low, high, n) if n > 1 else np.array([default])
    return values % 360.0 if name == "hue" else values


# --------------------------------------------------------------------------------------------------
# Renderer


def _band_pass(rng: np.random.Generator, size: int, fine: float, coarse: float) -> np.ndarray:
    """Zero-mean, unit-std granule texture: white noise between two Gaussian scales (pixels)."""
    from scipy.ndimage import gaussian_filter

    white = rng.standard_normal((size, size))
    field = gaussian_filter(white, fine, mode="wrap") - gaussian_filter(white, coarse, mode="wrap")
    return ((field - field.mean()) / field.std()).astype(np.float64)


class SyntheticCells(FactorSpace):
    """Renderer and factor sampler for one :class:`CellsConfig` (same interface as TextureDSprites)."""

    def __init__(self, config: CellsConfig = CellsConfig()):
        if not isinstance(config, CellsConfig):
            raise DrlError(f"SyntheticCells needs a CellsConfig, got {type(config).__name__}.")
        self.config = config
        size_of = self._init_factors(config.factor_sizes)
        self._appearances = APPEARANCE_NAMES[: size_of.get("appearance", 1)]
        self._numeric = {name: _numeric_values(name, size_of.get(name, 1))
                         for name in FACTOR_NAMES if name != "appearance"}

        c = config.canvas_size
        rng = np.random.default_rng([config.seed, 8])
        # Granules about 2-4 px across at 128 px, scaled with the canvas.
        unit = c / 128.0
        self._granules = _band_pass(rng, c, 0.8 * unit, 2.5 * unit)
        self._noise = rng.standard_normal((c, c, 3))
        self._phases = rng.uniform(0.0, 2.0 * np.pi, size=len(_HARMONICS))
        # Pixel centres relative to the canvas centre, y up.
        coords = np.arange(c, dtype=np.float64) + 0.5 - c / 2.0
        self._x = np.broadcast_to(coords[None, :], (c, c))
        self._y = np.broadcast_to(-coords[:, None], (c, c))

    # ---- factor helpers ------------------------------------------------------------------------

    def factor_values(self, name: str) -> np.ndarray | list[str]:
        """The values behind each index of ``name``: appearance names, numbers otherwise
        (orientation in radians, hue in degrees, the rest in the units of the module docstring)."""
        if name == "appearance":
            return list(self._appearances)
        if name in self._numeric:
            return self._numeric[name].copy()
        raise DrlError(f"Unknown cells factor {name!r}; known factors: {list(FACTOR_NAMES)}.")

    def _value(self, row: np.ndarray, name: str) -> float:
        column = self._column.get(name)
        return float(self._numeric[name][0 if column is None else row[column]])

    def _appearance(self, row: np.ndarray) -> str:
        column = self._column.get("appearance")
        return self._appearances[0 if column is None else row[column]]

    # ---- rendering ------------------------------------------------------------------------------

    def _densities(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell and nucleus coverage in [0, 1] (anti-aliased by signed distance) on the canvas."""
        c = self.config.canvas_size
        radius = math.sqrt(self._value(row, "size") * c * c / math.pi)
        root = math.sqrt(self._value(row, "elongation"))
        a, b = radius * root, radius / root  # semi-axes at constant area pi * radius^2
        angle = self._value(row, "orientation")
        cos, sin = math.cos(angle), math.sin(angle)
        u = cos * self._x + sin * self._y  # coordinates along / across the major axis
        v = -sin * self._x + cos * self._y

        amp = self._value(row, "irregularity")
        p, q = u / a, v / b
        rho = np.hypot(p, q)
        boundary = 1.0
        if amp > 0:
            theta = np.arctan2(q, p)
            wobble = (_HARMONIC_WEIGHTS[:, None, None]
                      * np.cos(_HARMONICS[:, None, None] * theta + self._phases[:, None, None])).sum(0)
            wobble /= math.sqrt((_HARMONIC_WEIGHTS ** 2).sum() / 2.0)  # unit RMS over the angle
            # mean over the angle of (1 + amp w)^2 is 1 + amp^2: dividing keeps the area fixed.
            boundary = (1.0 + amp * wobble) / math.sqrt(1.0 + amp * amp)
        # Pixels per unit of rho along the ray through each pixel: turns (boundary - rho) into pixels.
        scale = np.hypot(u, v) / np.maximum(rho, 1e-9)
        cell = np.clip((boundary - rho) * scale + 0.5, 0.0, 1.0)

        ratio = self._value(row, "nucleus_size")
        quarter = root ** 0.5  # the nucleus is half as elongated as the cell (in log ratio)
        an, bn = ratio * radius * quarter, ratio * radius / quarter
        room = a - an  # > 0: an / a <= max nucleus_size; an irregular rim may clip the nucleus
        un = u - self._value(row, "nucleus_offset") * room
        pn, qn = un / an, v / bn
        rho_n = np.hypot(pn, qn)
        scale_n = np.hypot(un, v) / np.maximum(rho_n, 1e-9)
        nucleus = np.clip((1.0 - rho_n) * scale_n + 0.5, 0.0, 1.0) * cell
        return cell, nucleus

    def render_canvas(self, row: np.ndarray) -> np.ndarray:
        """One image as float RGB in [0, 1] on the canvas (no validation; see :meth:`render`)."""
        from scipy.ndimage import gaussian_filter

        cell, nucleus = self._densities(row)
        # tanh keeps the density between 1 - g and 1 + g: granules never punch holes in the object
        # (which would shrink its segmented area) and the mean density stays ~1 (tanh is odd).
        grain = self._value(row, "granularity") * np.tanh(self._granules)
        d_cyto = cell * (1.0 + grain)
        d_nuc = nucleus * (1.0 + 0.5 * grain)
        strength = self._value(row, "intensity")
        level = self._value(row, "background")
        appearance = self._appearance(row)
        if appearance == "smear":
            hue = self._value(row, "hue") / 360.0
            t_cyto = np.array(colorsys.hsv_to_rgb(hue, *_CYTO_SV))
            t_nuc = np.array(colorsys.hsv_to_rgb(hue, *_NUC_SV))
            background = _SMEAR_BACKGROUND * (1.0 - _BACKGROUND_SHIFT * level)
            density = (strength * d_cyto[..., None] * -np.log(t_cyto)
                       + strength * d_nuc[..., None] * -np.log(t_nuc))
            image = background * np.exp(-density)
        else:
            od = strength * (_GREY_DENSITY[0] * d_cyto + _GREY_DENSITY[1] * d_nuc)
            if appearance == "brightfield":
                grey = (1.0 - _BACKGROUND_SHIFT * level) * np.exp(-od)
            else:  # darkfield: scattered light adds to a dark background
                base = _BACKGROUND_SHIFT * level
                grey = base + (1.0 - base) * (1.0 - np.exp(-od))
            image = np.repeat(grey[..., None], 3, axis=2)
        sigma = self._value(row, "blur") * self.config.canvas_size / 128.0
        if sigma > 0:
            image = gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
        noise = self._value(row, "noise")
        if noise > 0:
            field = self._noise if appearance == "smear" else self._noise[..., :1]
            image = image + noise * field
        return np.clip(image, 0.0, 1.0)

    def render(self, factors: Any) -> np.ndarray:
        """Images for each factor row: uint8 (n, S, S, 3), identical for identical (factors, config)."""
        from PIL import Image

        factors = self.check_factors(factors)
        size, canvas = self.config.image_size, self.config.canvas_size
        images = np.empty((len(factors), size, size, 3), dtype=np.uint8)
        for i, row in enumerate(factors):
            pixels = (self.render_canvas(row) * 255.0 + 0.5).astype(np.uint8)
            if size != canvas:
                pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
            images[i] = pixels
        return images


if __name__ == "__main__":  # rough speed figure: python -m drlcore.disentangle.cells
    import time

    dataset = SyntheticCells()
    batch = dataset.sample_factors(1000, 0)
    start = time.perf_counter()
    dataset.render(batch)
    print(f"{1000 / (time.perf_counter() - start):.0f} images/s at canvas {dataset.config.canvas_size} "
          f"-> {dataset.config.image_size} px (one thread)")
