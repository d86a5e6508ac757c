"""Handcrafted morphology, colour and texture features of the object in each image (scikit-image).

``measure(rgb, mask=None)`` segments the object (or takes the mask given), then measures it as
``skimage.measure.regionprops`` and a grey-level co-occurrence matrix (``graycomatrix`` /
``graycoprops``) define the measures; the hot ones are computed here, equal to the library's
values (tests hold them so), because the library calls' overhead dominates on small crops. Every
key starts with
``morph_``. When no plausible object is found the numeric features are NaN, ``morph_ok`` is False
and ``morph_note`` says why: a failed segmentation must never look like a small round object.

Automatic segmentation, chosen for the backgrounds we meet (pale smear with stained cells, white
field with dark plankton, either polarity on synthetic data):

1. Work on a copy downscaled so the longer side is at most ``SEGMENT_MAX_SIDE`` (speed); lengths
   and areas are converted back to pixels of the original image.
2. Candidate channels: R, G, B and, for colour images, HSV saturation. For each, Otsu's threshold;
   the object is the side the frame border is *not* on (the border is background in these images).
   The channel kept is the one whose two classes are best separated while its border stays on one
   side: on blood smears that is saturation (the stain), which leaves out the pale red cells that
   a brightness threshold merges with the white cell.
3. Clean-up: opening removes speckle, closing joins a grainy stain, holes are filled.
4. Among the connected components at least a quarter as large as the largest, the one whose centroid
   is closest to the image centre (datasets centre the object of interest; red cells or debris at
   the edge can be as large).
5. Fallback: when steps 2-4 give no plausible object, the whole foreground at a lower threshold
   (:func:`_fallback_foreground`: every component that differs from the border background by
   more than the border varies and by a tenth of the strongest contrast, closed but not opened)
   is measured instead, and ``morph_note`` says so. Only when that is implausible too is the
   image left unmeasured (``morph_ok`` False, never measured as a dot).

What this finds on the reference data (checked on overlays): on blood smears (PBC), the stained
part of the centred white cell, i.e. the nucleus plus any strongly stained cytoplasm; pale
cytoplasm (neutrophils, lymphocytes) is left out. On plankton (NDSB), the dark organism on the
white field; steps 2-4 give no plausible object on 33 of 2,250 images, mostly faint
one-pixel-wide diatom chains that 4-connectivity splits into single pixels and acantharia whose
dark core is below ``MIN_OBJECT_PIXELS`` with spines fainter than the threshold. The fallback
measures 31 of them (chain or spines and core); the two left hold a dark speck of debris that
lifts the fallback's contrast floor above the organism.

Units: area, perimeter, axes and diameter in pixels of the original image; orientation in radians
(skimage convention, angle between the row axis and the major axis); colour means R/G/B and
intensity on the 0-255 scale; saturation and value in [0, 1]; hue in degrees [0, 360) as a
*circular* mean (reds straddle 0/360), NaN for achromatic objects (grey images) where hue means
nothing. GLCM contrast/homogeneity: grey image of the object's bounding box at full resolution,
quantised to ``GLCM_LEVELS`` levels, distance 1, averaged over four angles, counting only pixel
pairs that both lie on the object (so the outline does not pose as texture).

RGB and grey images add two columns only (the heatmap stays readable): ``morph_intensity_integrated``,
the object's summed grey-level contrast to the frame (|grey - background| in the object's polarity,
0-255 units: stain content of a blood cell, opacity of a plankton organism; size times contrast),
and ``morph_intensity_background``, the border median grey it is measured against.

Multi-channel (fluorescence, imaging flow cytometry) images
-----------------------------------------------------------
Measured per channel and compartment on the pixels as stored (file units, e.g. 16-bit counts),
never on the 8-bit composite, after CellProfiler's MeasureObjectIntensity / SizeShape / Texture:

- Channel roles come from the channel names (OME-XML, per-channel file tokens, ``--channels``;
  :func:`drlcore.data.channels.channel_role`).
- Background of each channel: the median of the frame border, subtracted from every intensity
  measure and recorded as ``morph_<channel>_background``.
- Object mask: from ONE channel, ``mask_channel`` (name or index) if given, else the bright-field
  channel, else the non-DNA channel whose object stands out best. Pixels that differ from the
  channel's background either way (a bright-field cell is darker inside and brighter at its
  halo) above Otsu's threshold of the smoothed deviation, cleaned, the central component kept.
  If that mask is implausible (too small, the whole frame) the other channels are tried in turn,
  then a central disc of a quarter of the frame; ``morph_note`` says which was used, and the cell
  is measured, not dropped.
- Nucleus: the DNA channel above its background (Otsu), the component overlapping the object most.
  The cell is object plus nucleus (a bright-field outline that clips the nucleus would cut DNA
  content); a user's mask is kept as drawn. Cytoplasm: cell minus nucleus.
- Per channel and compartment (cell, nucleus, cytoplasm; the last two only with a DNA channel):
  ``morph_<channel>_<compartment>_<measure>`` for integrated, mean, std, min, q25, median, q75,
  max, mad (median absolute deviation) and mass_displacement (pixels between the compartment's
  centroid and its intensity-weighted centroid), as ``regionprops`` gives them for the
  multi-channel, background-subtracted intensity image. ``<channel>`` is the channel's name,
  letters and digits kept (:func:`channel_key`). Integrated DNA over the cell is DNA content.
- Texture per channel over the cell: ``morph_<channel>_cell_glcm_contrast`` / ``_homogeneity``,
  the channel's range over the cell quantised to ``GLCM_LEVELS`` levels.
- Size and shape per mask: the cell's are the object-level columns above; the nucleus' area,
  equivalent diameter, eccentricity and share of the cell area, the cytoplasm's area.
- The object-level columns keep their meaning on the cell mask (colour ones read the composite),
  and ``morph_ch<k>_<name>_mean`` (raw channel mean over the cell, earlier versions) stays.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from skimage import morphology as skmorph
from skimage.transform import downscale_local_mean

from drlcore.errors import DrlError
from drlcore.progress import NullReporter, Reporter

__all__ = [
    "FEATURE_NAMES",
    "measure",
    "measure_dataset",
    "channel_feature_names",
    "channel_key",
    "channel_columns",
    "COMPARTMENTS",
    "INTENSITY_MEASURES",
    "TEXTURE_MEASURES",
    "circular_mean_degrees",
    "load_mask_folder",
    "read_mask",
    "SEGMENT_MAX_SIDE",
    "MIN_OBJECT_PIXELS",
    "MAX_AREA_FRACTION",
]

SEGMENT_MAX_SIDE = 192
# Objects smaller than this (pixels at the segmentation scale) are noise, not a cell.
MIN_OBJECT_PIXELS = 16
# An "object" covering more of the frame than this is the background misread as foreground.
MAX_AREA_FRACTION = 0.9
GLCM_LEVELS = 32
# Below this mean saturation the hue of the object is noise (grey images have none).
ACHROMATIC_SATURATION = 0.03
# The fallback mask of grey/RGB images keeps pixels whose contrast to the frame is at least this
# share of the image's strongest (see _fallback_foreground).
FALLBACK_CONTRAST = 0.1

FEATURE_NAMES: tuple[str, ...] = (
    "morph_area",
    "morph_area_fraction",
    "morph_equivalent_diameter",
    "morph_perimeter",
    "morph_circularity",
    "morph_eccentricity",
    "morph_solidity",
    "morph_extent",
    "morph_major_axis",
    "morph_minor_axis",
    "morph_orientation",
    "morph_mean_r",
    "morph_mean_g",
    "morph_mean_b",
    "morph_hue",
    "morph_saturation",
    "morph_value",
    "morph_intensity_mean",
    "morph_intensity_std",
    "morph_glcm_contrast",
    "morph_glcm_homogeneity",
)

_MASK_SUFFIXES = (".png", ".tif", ".tiff")


def _failed(note: str) -> dict:
    row: dict = {name: math.nan for name in FEATURE_NAMES}
    row["morph_ok"] = False
    row["morph_note"] = note
    return row


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise DrlError(f"morphology expects uint8 images, got {rgb.dtype}; decode images with "
                       "drlcore.data.ingest.decode first")
    if rgb.ndim == 2:
        return np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DrlError(f"morphology expects an HxWx3 RGB image, got shape {rgb.shape}")
    return rgb


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of float pixels (channels on the last axis, any range)."""
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)


def _border(channel: np.ndarray) -> np.ndarray:
    return np.concatenate([channel[0], channel[-1], channel[1:-1, 0], channel[1:-1, -1]])


def _column_medians(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=0)`` (NaN for a column holding NaN) from one sort: np.median's
    partition and checks cost five times the sort of a frame border."""
    ordered = np.sort(values, axis=0)  # NaN sorts last
    middle = len(ordered) // 2
    medians = (ordered[middle] if len(ordered) % 2
               else (ordered[middle - 1] + ordered[middle]) / 2.0)
    return np.where(np.isnan(ordered[-1]), np.nan, medians)


def _foreground(image: np.ndarray
                ) -> tuple[np.ndarray | None, str | None, tuple[np.ndarray, bool] | None]:
    """Threshold the channel that best separates object from border (``image``: float, 0-255).
    Returns the mask (None and why when no channel separates anything) and the channel it came
    from with its polarity (whether the background is the brighter side), which the fallback
    mask reads."""
    channels = [image[..., 0], image[..., 1], image[..., 2]]
    is_grey = float(np.abs(image - image[..., :1]).max()) < 1.0
    if is_grey:
        channels = [image[..., 0]]
    else:
        channels.append(_saturation(image) * 255.0)

    best_score, best_mask, best = -1.0, None, None
    for channel in channels:
        spread = float(channel.std())
        if spread < 1.0:  # flat channel: nothing to threshold
            continue
        try:
            threshold = _otsu(channel)
        except ValueError:
            continue
        border_above = _border(channel) > threshold
        # The border is background: the object is whichever side most border pixels are not on.
        background_is_above = border_above.mean() >= 0.5
        mask = channel <= threshold if background_is_above else channel > threshold
        border_purity = border_above.mean() if background_is_above else 1.0 - border_above.mean()
        if not mask.any() or mask.all():
            continue
        separation = abs(channel[mask].mean() - channel[~mask].mean()) / spread
        score = separation * border_purity**2
        if score > best_score:
            best_score, best_mask, best = score, mask, (channel, bool(background_is_above))
    if best_mask is None:
        return None, "image is (nearly) uniform: no object to segment", None
    return best_mask, None, best


def _fallback_foreground(channel: np.ndarray, background_is_above: bool) -> np.ndarray:
    """The fallback mask of grey and RGB images whose main segmentation gave no plausible
    object: the whole foreground at a lower threshold.

    Pixels that differ from the frame's background (the border median), on the object's side,
    by more than the border itself does (its 99th-percentile difference: the border is
    background in these datasets) and by more than ``FALLBACK_CONTRAST`` of the strongest such
    difference in the image (on a clean, JPEG-white field the border does not vary at all, and
    compression noise around the object would count). Closed with the 3x3 cross and holes
    filled, but not opened, and every component kept: what the main path loses is thin, faint
    structure (one-pixel-wide diatom chains that 4-connectivity splits into single pixels,
    acantharian spines fainter than the Otsu threshold around a small dark core); an opening
    would erase it and a single component would keep a fragment of it.
    """
    border = _border(channel)
    background = float(np.median(border))
    sign = -1.0 if background_is_above else 1.0
    contrast = sign * (channel - background)
    level = max(float(np.percentile(sign * (border - background), 99)),
                FALLBACK_CONTRAST * float(contrast.max()))
    return _fill_holes(_close_cross(contrast > level))


def _otsu(image: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu(image)`` of a float image, step for step: numpy's 256-bin
    histogram over the image's range (its bin search and edge corrections), then Otsu's
    between-class variance on float32 counts. Written out because the two library calls spend
    more on input checks than on the threshold on a 40-px cell, and a segmentation asks for two
    to five thresholds per image; tests hold it equal to ``threshold_otsu``."""
    values = image.reshape(-1)
    low, high = values.min(), values.max()
    if low == high:
        return values[0]  # what threshold_otsu answers for a constant image
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"range of [{low}, {high}] is not finite")  # as np.histogram says
    # np.linspace(low, high, 257) and np.histogram's uniform-bin search, as numpy computes them.
    edges = _BIN_STEPS * ((high - low) / 256) + low
    edges[-1] = high
    indices = ((values - low) / (high - low) * 256).astype(np.intp)
    indices[indices == 256] = 255
    indices[values < edges[indices]] -= 1
    indices[(values >= edges[indices + 1]) & (indices != 255)] += 1
    # The minimum and the maximum land in the first and the last bin: no empty end to trim.
    counts = np.bincount(indices, minlength=256).astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    weighted = counts * centres
    mean1 = np.cumsum(weighted) / weight1
    mean2 = (np.cumsum(weighted[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centres[int(np.argmax(variance12))]


_BIN_STEPS = np.arange(257, dtype=np.float64)


# _clean's closing on large masks, built once (skimage builds a disk on every call); disk(1) is
# the 3x3 cross of _close_cross.
_DISK2 = skmorph.disk(2)
# ndi.label's default (4-connected) structure, built once (ndi.label builds it on every call).
_CROSS = ndi.generate_binary_structure(2, 1)


def _clean(mask: np.ndarray) -> np.ndarray:
    # Radii follow the segmentation scale (<= SEGMENT_MAX_SIDE px): small enough not to erase
    # thin plankton appendages, large enough to join a grainy nucleus stain.
    if min(mask.shape) < 64:
        mask = _close_cross(mask)
    else:
        mask = ndi.binary_opening(mask, structure=np.ones((2, 2), bool))
        mask = ndi.binary_closing(mask, structure=_DISK2, border_value=0)
    return _fill_holes(mask)


def _close_cross(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_closing(mask, structure=disk(1), border_value=0)``, written as shifts of a
    zero-padded copy: the scipy call's overhead is most of its cost on a 40-px crop."""
    padded = _padded(mask)
    padded[1:-1, 1:-1] = _cross(padded, np.logical_or)
    return _cross(padded, np.logical_and)


def _padded(mask: np.ndarray, dtype=bool) -> np.ndarray:
    """``mask`` with a one-pixel frame of zeros."""
    out = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype)
    out[1:-1, 1:-1] = mask
    return out


def _cross(padded: np.ndarray, combine) -> np.ndarray:
    """Each inner pixel of ``padded`` combined (or: dilation, and: erosion) with its four
    neighbours: the 3x3 cross, ``disk(1)``."""
    out = combine(padded[1:-1, 1:-1], padded[:-2, 1:-1])
    combine(out, padded[2:, 1:-1], out=out)
    combine(out, padded[1:-1, :-2], out=out)
    return combine(out, padded[1:-1, 2:], out=out)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``: background that does not reach the frame's edge through
    4-connected background is a hole. One labelling, where scipy dilates from the edge until
    nothing changes."""
    labels, n = ndi.label(~mask, _CROSS)
    keep = np.ones(n + 1, bool)  # label 0 is the object
    keep[_border(labels)] = False
    keep[0] = True
    return keep[labels]


def _pick_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask, _CROSS)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    large = np.flatnonzero(sizes >= 0.25 * sizes.max()) + 1
    if len(large) == 1:
        return labels == large[0]
    centres = ndi.center_of_mass(mask, labels, large)
    middle = (np.asarray(mask.shape) - 1) / 2.0
    distances = [np.hypot(*(np.asarray(c) - middle)) for c in centres]
    return labels == large[int(np.argmin(distances))]


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of (n, 3) float pixels."""
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    delta = np.maximum(high - low, 1e-12)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    sextant = np.where(high == r, ((g - b) / delta) % 6.0,
                       np.where(high == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0))
    return sextant * 60.0


def circular_mean_degrees(angles_deg: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean direction of angles in degrees, in [0, 360): 350 and 10 average to 0, not 180."""
    radians = np.deg2rad(angles_deg)
    weights = np.ones_like(radians) if weights is None else weights
    mean = math.atan2(float((np.sin(radians) * weights).sum()),
                      float((np.cos(radians) * weights).sum()))
    degrees = math.degrees(mean) % 360.0
    return 0.0 if degrees >= 360.0 else degrees  # -1e-15 % 360 rounds to 360.0


# graycomatrix's angles 0, pi/4, pi/2 and 3pi/4 at distance 1, as (row, column) offsets.
_GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))
# graycoprops' homogeneity weight by level difference.
_HOMOGENEITY = 1.0 / (1.0 + np.arange(GLCM_LEVELS, dtype=np.float64) ** 2)


def _pair_textures(levels: np.ndarray, crop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GLCM contrast and homogeneity of each quantised image in ``levels`` (h x w x K, levels
    0..GLCM_LEVELS-1) over pixel pairs that both lie on ``crop_mask``.

    What graycomatrix (symmetric, distance 1, four angles) and graycoprops give once the
    background's row and column are dropped: per angle, contrast is the mean squared level
    difference of the pairs and homogeneity the mean of 1 / (1 + difference^2) (the symmetric
    matrix counts each pair twice, which cancels); averaged over the angles that have a pair (a
    one-pixel-wide line has none along it), NaN without any. Counting the pairs straight from the
    pixels serves every image and angle in one pass, where graycomatrix fills a 33 x 33 matrix per
    image and angle.
    """
    h, w = crop_mask.shape
    # One background column either side and a row below: every offset of an object pixel stays
    # inside the flattened frame and lands on background there.
    stride = w + 2
    frame = np.zeros((h + 1, stride), bool)
    frame[:h, 1:-1] = crop_mask
    flat = frame.reshape(-1)
    first = np.flatnonzero(flat)
    second = first[:, None] + _glcm_steps(stride)  # (pairs, angles)
    paired = flat[second]
    padded_levels = np.zeros((h + 1, stride, levels.shape[2]), np.int16)
    padded_levels[:h, 1:-1] = levels
    padded_levels = padded_levels.reshape(-1, levels.shape[2])
    gaps = np.abs(padded_levels[first][:, None, :] - padded_levels[second])  # (n, angles, K)
    gaps[~paired] = 0
    counts = paired.sum(axis=0).astype(np.float64)  # pairs per angle
    valid = counts > 0
    contrast = (gaps * gaps).sum(axis=0)
    homogeneity = (_HOMOGENEITY[gaps] * paired[:, :, None]).sum(axis=0)
    safe = np.where(valid, counts, 1.0)[:, None]
    n_valid = valid.sum()
    with np.errstate(invalid="ignore"):  # no angle with a pair: NaN
        return ((contrast / safe).sum(axis=0) / n_valid,
                (np.where(valid[:, None], homogeneity / safe, 0.0)).sum(axis=0) / n_valid)


@functools.lru_cache(maxsize=256)
def _glcm_steps(stride: int) -> np.ndarray:
    return np.array([dr * stride + dc for dr, dc in _GLCM_OFFSETS])


def _grey_levels(grey_crop: np.ndarray) -> np.ndarray:
    """0-255 grey quantised to GLCM_LEVELS levels (0-based)."""
    return np.clip(grey_crop.astype(np.int32) * GLCM_LEVELS // 256, 0, GLCM_LEVELS - 1)


# skimage.measure.perimeter's weights by the code of a border pixel's 3x3 neighbourhood.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def _perimeter(crop: np.ndarray) -> float:
    """``skimage.measure.perimeter(crop, 4)`` (regionprops' perimeter): the object's pixels that a
    4-connected erosion removes, each weighted by the pattern of its border neighbours. The
    erosion and the 3x3 convolution as shifts of a zero-padded copy."""
    padded = _padded(crop)
    border = padded[1:-1, 1:-1] & ~_cross(padded, np.logical_and)
    b = _padded(border, np.uint8)
    code = (b[1:-1, 1:-1] + 2 * (b[:-2, 1:-1] + b[2:, 1:-1] + b[1:-1, :-2] + b[1:-1, 2:])
            + 10 * (b[:-2, :-2] + b[:-2, 2:] + b[2:, :-2] + b[2:, 2:]))
    return float(np.bincount(code.reshape(-1), minlength=50) @ _PERIMETER_WEIGHTS)


def _convex_area(crop: np.ndarray) -> int:
    """Pixels of ``skimage.morphology.convex_hull_image(crop)`` (regionprops' area_convex).

    The same hull: of the midpoints of every object pixel's four edges. Only each row's first and
    last pixel can reach it, so the points are, for every row, the outer edge midpoint of both
    and, at every half-row line, the outermost top/bottom midpoint of the rows either side (no
    point twice, which Qhull can trip on). The hull's pixels are then counted row by row between
    its edges (grid points on an edge count, as in convex_hull_image), where skimage tests every
    pixel of the box against the polygon.
    """
    h, w = crop.shape
    filled = crop.any(axis=1)
    first = np.where(filled, crop.argmax(axis=1), np.inf)
    last = np.where(filled, w - 1 - crop[:, ::-1].argmax(axis=1), -np.inf)
    # Rows of points at y = -0.5, 0, 0.5, ..., h - 0.5: odd entries are the pixel rows.
    left = np.empty(2 * h + 1)
    right = np.empty(2 * h + 1)
    left[1::2] = first - 0.5
    right[1::2] = last + 0.5
    edge_first = np.concatenate(([np.inf], first, [np.inf]))
    edge_last = np.concatenate(([-np.inf], last, [-np.inf]))
    left[0::2] = np.minimum(edge_first[:-1], edge_first[1:])
    right[0::2] = np.maximum(edge_last[:-1], edge_last[1:])
    y = np.arange(2 * h + 1) * 0.5 - 0.5
    on_left = np.isfinite(left)
    on_right = np.isfinite(right) & (right != left)
    points = np.concatenate((np.stack((y[on_left], left[on_left]), axis=1),
                             np.stack((y[on_right], right[on_right]), axis=1)))
    equations = ConvexHull(points).equations  # normal . (row, col) + offset <= 0 inside
    rows = np.arange(h, dtype=np.float64)
    normal_col = equations[:, 1:2]
    bound = ((-equations[:, 2:3] - equations[:, 0:1] * rows)
             / np.where(normal_col != 0, normal_col, 1.0))  # (edges, rows): the column limit
    high = np.where(normal_col > 1e-12, bound, np.inf).min(axis=0)
    low = np.where(normal_col < -1e-12, bound, -np.inf).max(axis=0)
    # Vertices lie on half pixels: a grid point off an edge is at least ~1e-3 px away from it.
    count = np.floor(high + 1e-9) - np.ceil(low - 1e-9) + 1
    return int(np.clip(count, 0, None).sum())


def _downscale_factor(shape: Sequence[int]) -> int:
    return max(1, math.ceil(max(shape[:2]) / SEGMENT_MAX_SIDE))


def channel_feature_names(names: Sequence[str]) -> list[str]:
    """Per-channel intensity columns: ``morph_ch<k>_mean``, or ``morph_ch<k>_<name>_mean`` when
    channel k has a name of its own (a channel group's or one given with ``--channels``)."""
    out = []
    for k, name in enumerate(names):
        safe = "".join(c if c.isalnum() else "_" for c in str(name)).strip("_")
        out.append(f"morph_ch{k}_mean" if not safe or safe == f"ch{k}"
                   else f"morph_ch{k}_{safe}_mean")
    return out


def measure(rgb: np.ndarray, mask: np.ndarray | None = None,
            channels: np.ndarray | None = None,
            channel_names: Sequence[str] | None = None,
            mask_channel: str | int | None = None) -> dict:
    """Morphology, colour and texture of the object in one image.

    ``rgb``: uint8 HxWx3 (HxW greyscale accepted). ``mask``: optional HxW array, nonzero = object;
    measured as given (all nonzero pixels form the object). Returns ``{morph_*: float, morph_ok:
    bool, morph_note: str | None}``; see the module docstring for units and the failure rules.

    ``channels`` (multi-channel fluorescence images: HxWxC as stored, in the file's own units,
    ``rgb`` being their composite) switches to the per-channel measurement of the module
    docstring: the object is segmented on one stated channel (``mask_channel``, a name or index;
    default bright field, else the best-separated non-DNA channel), never on the composite; a
    nucleus on the DNA channel; every channel is measured per compartment in file units.
    """
    rgb = _as_rgb(rgb)
    height, width = rgb.shape[:2]
    if height < 4 or width < 4:
        return _failed(f"image too small to segment ({height}x{width})")
    factor = _downscale_factor(rgb.shape)
    # Trim to whole blocks: downscale_local_mean pads partial blocks with zeros, which paints a
    # dark line along the bottom/right border and misleads the border-based polarity test.
    height_used, width_used = height - height % factor, width - width % factor
    small = (downscale_local_mean(rgb[:height_used, :width_used], (factor, factor, 1))
             if factor > 1 else rgb.astype(np.float64))
    notes: list[str] = []
    given = None
    if mask is not None:
        given = _given_mask(mask, height, width, factor, height_used, width_used, notes)
        if isinstance(given, str):
            return _failed(given)

    if channels is not None:
        return _measure_channels(rgb, small, factor, given, np.asarray(channels),
                                 channel_names, mask_channel, notes)

    if given is not None:
        object_mask = given
        why = _implausible(object_mask)
        if why is not None:
            return _failed(why)
    else:
        foreground, why, best = _foreground(small)
        if foreground is None:
            return _failed(why)  # nothing differs from anything: no fallback either
        foreground = _clean(foreground)
        object_mask = _pick_component(foreground) if foreground.any() else None
        why = ("segmentation found no object" if object_mask is None
               else _implausible(object_mask))
        if why is not None:
            # Measured on a fallback mask rather than dropped (as multi-channel cells are),
            # and the note says so.
            object_mask = _fallback_foreground(*best)
            why_not = _implausible(object_mask) if object_mask.any() else "no foreground"
            if why_not is not None:
                return _failed(f"{why}; fallback mask (the whole foreground at a lower "
                               f"threshold): {why_not}")
            notes.append(f"segmentation failed ({why}): measured on the fallback mask, the "
                         "whole foreground at a lower threshold")
    result, _ = _object_columns(rgb, small, object_mask, factor, notes)
    result.update(_grey_columns(small, object_mask, factor))
    return result


def _given_mask(mask, height, width, factor, height_used, width_used, notes) -> np.ndarray | str:
    """A user's mask at the segmentation scale, or the reason it cannot be used."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        return f"mask shape {mask.shape} does not match image {height}x{width}"
    object_mask = mask != 0
    if factor > 1:
        # Block majority, not striding: striding can drop thin structures entirely.
        object_mask = downscale_local_mean(object_mask[:height_used, :width_used],
                                           (factor, factor)) >= 0.5
    if not object_mask.any():
        return "mask is empty"
    n_components = ndi.label(object_mask)[1]
    if n_components > 1:
        notes.append(f"mask has {n_components} components; measured as one object")
    return object_mask


def _implausible(object_mask: np.ndarray) -> str | None:
    """Why a mask (segmentation scale) is not an object, or None when it is plausible."""
    pixels = int(object_mask.sum())
    frame = object_mask.size
    if pixels < MIN_OBJECT_PIXELS:
        return (f"object too small ({pixels} px at segmentation scale, "
                f"minimum {MIN_OBJECT_PIXELS})")
    if pixels / frame > MAX_AREA_FRACTION:
        return f"object covers {pixels / frame:.0%} of the frame: background, not an object"
    if (object_mask[0].any() and object_mask[-1].any() and object_mask[:, 0].any()
            and object_mask[:, -1].any()):
        return "object touches all four edges of the frame: background, not an object"
    return None


def _object_columns(rgb: np.ndarray, small: np.ndarray, object_mask: np.ndarray, factor: int,
                    notes: list[str], channels: np.ndarray | None = None
                    ) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """The object-level columns of :data:`FEATURE_NAMES` for a plausible mask.

    ``channels`` (multi-channel images: HxWxC at full resolution, background subtracted): their
    GLCM contrast and homogeneity over the object are computed in the composite's pass and
    returned beside the columns (see :func:`_channel_levels`); else ``None`` is.
    """
    height, width = rgb.shape[:2]
    height_used, width_used = height - height % factor, width - width % factor
    rows, cols = np.nonzero(object_mask)
    pixels = len(rows)
    frame = object_mask.size
    top, bottom = int(rows[0]), int(rows[-1])  # raster order
    left, right = int(cols.min()), int(cols.max())
    touches = (top == 0, bottom == object_mask.shape[0] - 1,
               left == 0, right == object_mask.shape[1] - 1)
    if any(touches):
        notes.append("object touches the image edge; shape features may be truncated")

    # Lengths scale with the downscale factor, areas with its square (the < factor px trimmed
    # off the bottom/right edge are not measured).
    scale_y = height_used / object_mask.shape[0]
    scale_x = width_used / object_mask.shape[1]
    linear = math.sqrt(scale_y * scale_x)
    # regionprops' area, perimeter, extent and solidity, on the object's bounding box as it
    # takes them (a regionprops object costs more than these measures on a 40-px cell).
    box = object_mask[top:bottom + 1, left:right + 1]
    eccentricity, major, minor, orientation = _inertia_of(rows, cols)
    area = pixels * scale_y * scale_x
    perimeter = _perimeter(box) * linear

    inside = small[rows, cols]  # (n, 3) float, 0-255
    saturation = _saturation(inside)
    value = inside.max(axis=1) / 255.0
    grey_inside = inside @ _GREY
    grey_mean = grey_inside.sum() / pixels
    grey_deviations = grey_inside - grey_mean
    # Sums over counts and np.std's arithmetic on 1-D arrays: .mean() and .std() to the bit,
    # without their wrappers.
    mean_saturation = float(saturation.sum() / pixels)
    if mean_saturation < ACHROMATIC_SATURATION:
        hue = math.nan
    else:
        # Weighting by saturation keeps near-grey pixels (whose hue is noise) from pulling it.
        hue = circular_mean_degrees(_hue_degrees(inside), weights=saturation)

    r0 = int(math.floor(top * scale_y))
    r1 = int(min(height_used, math.ceil((bottom + 1) * scale_y)))
    c0 = int(math.floor(left * scale_x))
    c1 = int(min(width_used, math.ceil((right + 1) * scale_x)))
    crop = rgb[r0:r1, c0:c1].astype(np.float64) @ _GREY
    # The object mask at full resolution over the crop (each small pixel is a factor^2 block).
    crop_mask = box if factor == 1 else _full_resolution(object_mask, factor)[r0:r1, c0:c1]
    levels = _grey_levels(np.clip(crop, 0, 255))[:, :, None]
    flat = None
    if channels is not None:
        channel_levels, flat = _channel_levels(channels[r0:r1, c0:c1], crop_mask)
        levels = np.concatenate((levels, channel_levels), axis=2)
    contrasts, homogeneities = _pair_textures(levels, crop_mask)
    textures = None
    if channels is not None:
        # A flat channel has no contrast and full homogeneity, pairs or not.
        textures = (np.where(flat, 0.0, contrasts[1:]), np.where(flat, 1.0, homogeneities[1:]))

    return {
        "morph_area": float(area),
        "morph_area_fraction": float(pixels / frame),
        "morph_equivalent_diameter": float(2.0 * math.sqrt(area / math.pi)),
        "morph_perimeter": float(perimeter),
        "morph_circularity": (float(4.0 * math.pi * area / perimeter**2) if perimeter > 0
                              else math.nan),
        "morph_eccentricity": eccentricity,
        "morph_solidity": pixels / _convex_area(box),
        "morph_extent": pixels / box.size,
        "morph_major_axis": float(major * linear),
        "morph_minor_axis": float(minor * linear),
        "morph_orientation": orientation,
        "morph_mean_r": float(inside[:, 0].mean()),
        "morph_mean_g": float(inside[:, 1].mean()),
        "morph_mean_b": float(inside[:, 2].mean()),
        "morph_hue": float(hue),
        "morph_saturation": mean_saturation,
        "morph_value": float(value.sum() / pixels),
        "morph_intensity_mean": float(grey_mean),
        "morph_intensity_std": float(np.sqrt((grey_deviations * grey_deviations).sum() / pixels)),
        "morph_glcm_contrast": float(contrasts[0]),
        "morph_glcm_homogeneity": float(homogeneities[0]),
        "morph_ok": True,
        "morph_note": "; ".join(notes) if notes else None,
    }, textures


def _channel_levels(crop: np.ndarray, crop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel of ``crop`` (h x w x C) quantised to GLCM_LEVELS levels over its range on the
    object, so the texture reads the pattern of the stain, not its brightness; and which
    channels are flat there."""
    values = crop[crop_mask]  # (n, C)
    low, high = values.min(axis=0), values.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    levels = np.clip(((crop - low) * (GLCM_LEVELS / span)).astype(np.int32), 0, GLCM_LEVELS - 1)
    return levels, ~(high > low)


_GREY = np.array([0.2125, 0.7154, 0.0721])


def _inertia(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Eccentricity, major and minor axis length and orientation of a binary mask, as
    ``regionprops`` defines them (see :func:`_inertia_of`)."""
    return _inertia_of(*np.nonzero(mask))


def _inertia_of(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float, float]:
    """:func:`_inertia` of the pixels at ``rows``, ``cols``: the inertia tensor of the second
    central moments, its eigenvalues clipped at 0, as ``regionprops`` defines them. From the
    pixel coordinates: regionprops gets there through third-order moments set up with
    ``einsum``, which cost more than the rest of a 40-px cell's shape."""
    count = len(rows)
    # Integer coordinates: their sums are exact, so sum / count is rows.mean() to the bit.
    d_rows = rows - rows.sum() / count
    d_cols = cols - cols.sum() / count
    mu11 = float(d_rows @ d_cols)
    tensor = np.array([[float(d_cols @ d_cols), -mu11],
                       [-mu11, float(d_rows @ d_rows)]]) / count
    eigvals = np.clip(np.linalg.eigvalsh(tensor), 0, None)
    l1, l2 = float(eigvals[1]), float(eigvals[0])
    eccentricity = 0.0 if l1 == 0 else math.sqrt(1 - l2 / l1)
    a, b, c = tensor[0, 0], tensor[0, 1], tensor[1, 1]
    if a - c == 0:
        orientation = math.pi / 4.0 if b < 0 else -math.pi / 4.0
    else:
        orientation = 0.5 * math.atan2(-2 * b, c - a)
    return eccentricity, 4 * math.sqrt(l1), 4 * math.sqrt(l2), float(orientation)


def _full_resolution(mask: np.ndarray, factor: int, shape: tuple[int, int] | None = None
                     ) -> np.ndarray:
    """A segmentation-scale mask at full resolution (each pixel a factor x factor block), padded
    with background to ``shape`` (the rows/columns trimmed before downscaling)."""
    full = (np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1) if factor > 1 else mask)
    if shape is not None and full.shape != tuple(shape):
        padded = np.zeros(shape, bool)
        padded[:full.shape[0], :full.shape[1]] = full
        full = padded
    return full


def _grey_columns(small: np.ndarray, object_mask: np.ndarray, factor: int) -> dict:
    """RGB and grey images: the object's integrated grey-level contrast to its background.

    ``morph_intensity_integrated`` = sum over the object's pixels of |grey - background| in the
    polarity of the object (darker objects on a pale field count what they absorb, brighter ones
    what they emit), grey on 0-255, background = median of the frame border. It is the one
    per-cell "amount" a single RGB image holds (stain content of a blood cell, opacity of a
    plankton organism): size times contrast. The background is recorded beside it. Summed at the
    segmentation scale (``small``: block means) times the block area, which is the full-resolution
    sum over the object's blocks.
    """
    grey = small @ _GREY
    background = float(_column_medians(_border(grey)))
    values = grey[object_mask] - background
    sign = -1.0 if values.mean() < 0 else 1.0
    return {"morph_intensity_integrated": float(sign * values.sum() * factor * factor),
            "morph_intensity_background": background}


# --------------------------------------------------------------------------- multi-channel

COMPARTMENTS: tuple[str, ...] = ("cell", "nucleus", "cytoplasm")
INTENSITY_MEASURES: tuple[str, ...] = ("integrated", "mean", "std", "min", "q25", "median",
                                       "q75", "max", "mad", "mass_displacement")
TEXTURE_MEASURES: tuple[str, ...] = ("glcm_contrast", "glcm_homogeneity")
# Size and shape of the nucleus and cytoplasm masks (the cell's are FEATURE_NAMES').
NUCLEUS_SHAPE: tuple[str, ...] = ("morph_nucleus_area", "morph_nucleus_equivalent_diameter",
                                  "morph_nucleus_eccentricity", "morph_nucleus_fraction")
CYTOPLASM_SHAPE: tuple[str, ...] = ("morph_cytoplasm_area",)
# Nuclei smaller than this (pixels at segmentation scale) are a speck of stain, not a nucleus.
MIN_NUCLEUS_PIXELS = 4


def channel_key(names: Sequence[str]) -> list[str]:
    """The ``<channel>`` part of per-channel column names: the channel's name with anything but
    letters and digits made ``_`` (``ch<k>`` when nothing is left; ``<name>_<k>`` when two
    channels would read the same)."""
    keys = []
    for k, name in enumerate(names):
        safe = re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_") or f"ch{k}"
        keys.append(safe)
    seen = {key for key in keys if keys.count(key) > 1}
    return [f"{key}_{k}" if key in seen else key for k, key in enumerate(keys)]


def channel_columns(names: Sequence[str], dna: bool = True) -> list[str]:
    """Every per-channel column :func:`measure` writes for channels called ``names`` (with a
    nucleus and cytoplasm when ``dna``)."""
    compartments = COMPARTMENTS if dna else ("cell",)
    columns = []
    for key in channel_key(names):
        columns.append(f"morph_{key}_background")
        columns += [f"morph_{key}_{c}_{m}" for c in compartments for m in INTENSITY_MEASURES]
        columns += [f"morph_{key}_cell_{m}" for m in TEXTURE_MEASURES]
    if dna:
        columns += [*NUCLEUS_SHAPE, *CYTOPLASM_SHAPE]
    return columns


def _profile(mask: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """INTENSITY_MEASURES (rows) of every channel (columns) of ``channels`` (HxWxC) over the
    pixels of ``mask`` (HxW bool); see :func:`_profiles`."""
    rows, cols = np.nonzero(mask)
    return _profiles(np.ascontiguousarray(channels[rows, cols].T), rows, cols,
                     np.ones((1, len(rows)), bool))[0]


def _profiles(channels: np.ndarray, rows: np.ndarray, cols: np.ndarray, parts: np.ndarray
              ) -> np.ndarray:
    """INTENSITY_MEASURES x channels (S x 10 x C) of each of S compartments, given as rows of
    ``parts`` (S x n bool, none empty) over the pixels ``channels`` (C x n, pixels in raster
    order, C-contiguous) at ``rows``, ``cols``.

    The intensity image is background-subtracted (file units). Mass displacement: distance
    (pixels) between the region's centroid and its centroid weighted by the positive part of the
    channel (0 where the channel has no signal above background there). Coordinates relative to
    the compartment's bounding box, as ``regionprops``' region image gives them.

    Every compartment and channel in one pass: each compartment sees all n pixels, the others'
    set to 0 for sums and to +inf for sorting (they sort last, past the compartment's own). A
    ``regionprops`` region per compartment, or a pass each, costs more in calls than the
    arithmetic on a 40-px cell. Sums run in numpy's pairwise order along the pixels: exact for
    the integer counts (minus a half-integer median background) of microscopy files, within
    rounding of ``regionprops``' figures otherwise.
    """
    counts = parts.sum(axis=1)
    per = counts[:, None]
    member = parts[:, None, :]  # (S, 1, n)
    # Pixels on the last axis: every reduction and sort below runs along contiguous memory
    # (reducing the pixel axis of n x C data is a strided loop, several times slower).
    filled = np.where(member, channels, 0.0)  # (S, C, n)
    total = filled.sum(axis=2)
    mean = total / per
    # np.std's arithmetic (its wrapper costs as much as the arithmetic here).
    deviations = np.where(member, channels - mean[:, :, None], 0.0)
    std = np.sqrt((deviations * deviations).sum(axis=2) / per)
    ordered = np.sort(np.where(member, channels, np.inf), axis=2)
    low, q25, median, q75, high = _quantiles(ordered, counts, _PROFILE_QUANTILES)
    mad = _quantiles(np.sort(np.where(member, np.abs(channels - median[:, :, None]), np.inf),
                             axis=2), counts, (0.5,))[0]
    weights = np.clip(filled, 0.0, None)
    mass = weights.sum(axis=2)
    safe = np.where(mass > 0, mass, 1.0)
    # The bounding box's top is the first pixel's row (raster order), its left the least column.
    top = rows[np.argmax(parts, axis=1)]
    left = np.where(parts, cols, np.iinfo(cols.dtype).max).min(axis=1)
    local_rows = (rows - top[:, None]) * parts  # (S, n), 0 off the compartment
    local_cols = (cols - left[:, None]) * parts
    shift_rows = (np.matmul(weights, local_rows[:, :, None].astype(np.float64))[:, :, 0] / safe
                  - (local_rows.sum(axis=1) / counts)[:, None])
    shift_cols = (np.matmul(weights, local_cols[:, :, None].astype(np.float64))[:, :, 0] / safe
                  - (local_cols.sum(axis=1) / counts)[:, None])
    displacement = np.where(mass > 0, np.hypot(shift_rows, shift_cols), 0.0)
    return np.stack([total, mean, std, low, q25, median, q75, high, mad, displacement], axis=1)


_PROFILE_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _quantiles(ordered: np.ndarray, counts: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles (Q x S x C) of each compartment and channel of ``ordered`` (S x C x n, sorted
    along the last axis, compartment s's ``counts[s]`` values first), numpy's default ("linear")
    interpolation; sorting once serves every quantile (np.percentile partitions per call)."""
    last = counts - 1
    positions = np.multiply.outer(np.asarray(qs, dtype=np.float64), last)  # (Q, S)
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, last)
    fraction = (positions - below)[:, :, None]
    compartment = np.arange(len(counts))[None, :, None]
    channel = np.arange(ordered.shape[1])[None, None, :]
    low = ordered[compartment, channel, below[:, :, None]]  # (Q, S, C)
    return low + (ordered[compartment, channel, above[:, :, None]] - low) * fraction


def _deviation_mask(channel: np.ndarray, smoothed: np.ndarray, background: float
                    ) -> tuple[np.ndarray | None, str | None]:
    """Pixels that differ from the channel's border background (either way, so a bright-field
    cell's dark body and bright halo both count), Otsu-thresholded, cleaned, the central
    component kept. ``smoothed``: the channel after a Gaussian of sigma 1."""
    deviation = np.abs(smoothed - background)
    if float(deviation.max() - deviation.min()) <= 0:
        return None, "channel is flat"
    try:
        threshold = _otsu(deviation)
    except ValueError:
        return None, "channel is flat"
    # The threshold comes from the smoothed channel (noise would pull Otsu), the outline from the
    # pixels themselves (smoothing would grow it by a pixel all round); _clean joins what noise
    # splits.
    foreground = _clean(np.abs(channel - background) > threshold)
    if not foreground.any():
        return None, "no object"
    return _pick_component(foreground), None


def _separation(channel: np.ndarray, background: float) -> float:
    """How clearly an object stands out of a channel's background: the Otsu classes' mean
    deviation gap in units of the deviation's spread (the score that ranks mask channels)."""
    deviation = np.abs(channel - background)
    spread = float(deviation.std())
    if spread <= 0:
        return 0.0
    try:
        threshold = _otsu(deviation)
    except ValueError:
        return 0.0
    above = deviation > threshold
    if above.all() or not above.any():
        return 0.0
    return float(deviation[above].mean() - deviation[~above].mean()) / spread


def _nucleus(dna: np.ndarray, smoothed: np.ndarray, background: float, cell: np.ndarray
             ) -> np.ndarray | None:
    """The DNA stain above its background (Otsu), holes filled; the component overlapping the
    object most (else the most central). None when there is no stain to speak of.
    ``smoothed``: the DNA channel after a Gaussian of sigma 1."""
    signal = smoothed - background
    if float(signal.max()) <= 0:
        return None
    try:
        threshold = _otsu(signal)
    except ValueError:
        return None
    # As in _deviation_mask: threshold from the smoothed stain, outline from the pixels.
    stained = _clean((dna - background) > max(threshold, 0.0))
    labels, n = ndi.label(stained, _CROSS)
    if n == 0:
        return None
    overlap = np.bincount(labels[cell], minlength=n + 1)[1:]
    if overlap.max() > 0:
        nucleus = labels == int(np.argmax(overlap)) + 1
    else:
        nucleus = _pick_component(stained)
    return nucleus if int(nucleus.sum()) >= MIN_NUCLEUS_PIXELS else None


def _measure_channels(rgb: np.ndarray, small_rgb: np.ndarray, factor: int,
                      given: np.ndarray | None, stored: np.ndarray,
                      channel_names: Sequence[str] | None, mask_channel: str | int | None,
                      notes: list[str]) -> dict:
    """Per-channel, per-compartment measurement of a multi-channel image (module docstring)."""
    height, width = rgb.shape[:2]
    if stored.ndim != 3 or stored.shape[:2] != (height, width):
        return _failed(f"channels of shape {stored.shape} do not match the {height}x{width} "
                       "composite")
    n = stored.shape[2]
    names = list(channel_names) if channel_names is not None else [f"ch{k}" for k in range(n)]
    if len(names) != n:
        return _failed(f"{len(names)} channel names for {n} channels")
    height_used, width_used = height - height % factor, width - width % factor
    pixels = stored.astype(np.float64)
    background = _column_medians(_border(pixels))
    small = (downscale_local_mean(pixels[:height_used, :width_used], (factor, factor, 1))
             if factor > 1 else pixels)
    roles, _, legacy_names, columns = _layout(tuple(names))
    dna = roles.index("dna") if "dna" in roles else None
    # Every channel smoothed in one call (sigma 0 along the channel axis leaves it alone): the
    # mask channel's and the DNA channel's thresholds read it.
    smoothed = ndi.gaussian_filter(small, (1.0, 1.0, 0.0))

    if given is not None:
        object_mask, source = given, "the given mask"
    else:
        chosen = _mask_channel(tuple(names), mask_channel)

        def candidates():
            if chosen is not None:
                yield chosen
            # Then structural channels (cytoplasmic stains, dark field) by how clearly they
            # separate an object: the DNA stain outlines the nucleus, not the cell, so it comes
            # last.
            scores = {k: _separation(small[..., k], background[k]) for k in range(n)}
            yield from sorted((k for k in range(n) if k != chosen),
                              key=lambda k: (roles[k] == "dna", -scores[k]))

        object_mask, source, failures = None, None, []
        for k in candidates():
            candidate, why = _deviation_mask(small[..., k], smoothed[..., k], background[k])
            why = why or _implausible(candidate)
            if why is None:
                object_mask, source = candidate, f"channel {names[k]}"
                break
            failures.append(f"{names[k]}: {why}")
        if object_mask is None:
            # Datasets of single-object crops centre the object: a disc of a quarter of the
            # frame's area is measured rather than dropping the cell, and the note says so.
            rr, cc = np.ogrid[:small.shape[0], :small.shape[1]]
            centre = (np.asarray(small.shape[:2]) - 1) / 2.0
            radius = math.sqrt(small.shape[0] * small.shape[1] / (4 * math.pi))
            object_mask = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2
            source = "the central disc"
            notes.append("no channel gave a plausible object (" + "; ".join(failures)
                         + "): measured on a central disc")
        elif failures:
            notes.append("object mask from " + source + " (" + "; ".join(failures) + ")")

    nucleus = None
    if dna is not None:
        nucleus = _nucleus(small[..., dna], smoothed[..., dna], background[dna], object_mask)
        if nucleus is None:
            notes.append(f"no nucleus found on the DNA channel {names[dna]}")
    if nucleus is not None and not (nucleus & object_mask).any():
        notes.append(f"the stain on the DNA channel {names[dna]} lies outside the object: "
                     "no nucleus")
        nucleus = None
    cell = object_mask
    if nucleus is not None:
        # The cell holds its nucleus: a bright-field outline that clips the nucleus would cut DNA
        # content; a user's mask is respected as drawn.
        if given is None:
            cell = object_mask | nucleus
        else:
            nucleus = nucleus & object_mask
            if int(nucleus.sum()) < MIN_NUCLEUS_PIXELS:
                nucleus = None

    shape = (height, width)
    cell_full = _full_resolution(cell, factor, shape)
    result, (contrasts, homogeneities) = _object_columns(rgb, small_rgb, cell, factor, notes,
                                                         pixels - background)
    rows, cols = np.nonzero(cell_full)
    # Channel-major (C x n): sums and sorts over a channel's pixels run along contiguous memory.
    raw = np.ascontiguousarray(pixels[rows, cols].T)
    # The per-channel means of earlier versions (file units, no background subtracted).
    result.update(zip(legacy_names, (raw.sum(axis=1) / len(rows)).tolist()))

    # Compartment profiles from the cell's pixels: the nucleus (within the cell) and the
    # cytoplasm (the rest) are a split of them, in the same raster order.
    values = raw - background[:, None]
    sizes = {"cell": len(rows)}
    parts = [np.ones(len(rows), bool)]
    names_of_parts = ["cell"]
    in_nucleus = None
    if nucleus is not None:
        nucleus_full = nucleus if factor == 1 else _full_resolution(nucleus, factor, shape)
        in_nucleus = nucleus_full[rows, cols]
        sizes["nucleus"] = int(in_nucleus.sum())
        sizes["cytoplasm"] = len(rows) - sizes["nucleus"]
        for compartment, part in (("nucleus", in_nucleus), ("cytoplasm", ~in_nucleus)):
            if sizes[compartment]:
                parts.append(part)
                names_of_parts.append(compartment)
    measured = dict(zip(names_of_parts, _profiles(values, rows, cols, np.stack(parts))))
    for k, (background_col, by_compartment, texture_cols) in enumerate(columns):
        result[background_col] = float(background[k])
        for compartment, names_m in by_compartment:
            values_k = measured.get(compartment)
            if values_k is None:
                result.update(dict.fromkeys(names_m, math.nan))
            else:
                result.update(zip(names_m, values_k[:, k].tolist()))
        result[texture_cols[0]] = float(contrasts[k])
        result[texture_cols[1]] = float(homogeneities[k])
    if dna is not None:
        has_nucleus = sizes.get("nucleus", 0) > 0
        nucleus_area = float(sizes["nucleus"]) if has_nucleus else math.nan
        result.update({
            "morph_nucleus_area": nucleus_area,
            # regionprops' equivalent_diameter_area for 2-D.
            "morph_nucleus_equivalent_diameter": (4 * nucleus_area / math.pi) ** 0.5,
            "morph_nucleus_eccentricity": (_inertia_of(rows[in_nucleus], cols[in_nucleus])[0]
                                           if has_nucleus else math.nan),
            "morph_nucleus_fraction": nucleus_area / float(sizes["cell"]),
            # No nucleus: no cytoplasm either; a nucleus filling the cell: none left.
            "morph_cytoplasm_area": (float(sizes["cytoplasm"]) if has_nucleus else math.nan),
        })
    result["morph_note"] = "; ".join(notes) if notes else None
    return result


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def _mask_channel(names: tuple[str, ...], choice: str | int | None) -> int | None:
    """:func:`drlcore.data.channels.mask_channel_index`, once per channel-name list (it parses
    every name's role each call)."""
    from drlcore.data.channels import mask_channel_index

    return mask_channel_index(names, choice)


@functools.lru_cache(maxsize=64)
def _layout(names: tuple[str, ...]):
    """Per channel-name list, worked out once (a dataset repeats the same names): roles, column
    keys, the older per-channel mean columns, and every per-channel column name by channel:
    (background, ((compartment, measure columns), ...), (contrast, homogeneity))."""
    from drlcore.data.channels import channel_roles

    roles = tuple(channel_roles(names))
    keys = channel_key(names)
    compartments = COMPARTMENTS if "dna" in roles else ("cell",)
    columns = tuple(
        (f"morph_{key}_background",
         tuple((c, tuple(f"morph_{key}_{c}_{m}" for m in INTENSITY_MEASURES))
               for c in compartments),
         tuple(f"morph_{key}_cell_{m}" for m in TEXTURE_MEASURES))
        for key in keys)
    return roles, keys, tuple(channel_feature_names(names)), columns


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image (PNG or TIFF); nonzero pixels (in any channel) are the object."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to the user
        raise DrlError(f"cannot read mask {path}: {exc}") from exc
    array = np.squeeze(array)
    if array.ndim == 3:
        array = array.any(axis=2) if array.shape[2] <= 4 else array.any(axis=0)
    return array != 0


def load_mask_folder(folder: str | os.PathLike, paths: Sequence[str]) -> list[Path | None]:
    """Match each image id in ``paths`` (e.g. ``"basophil/BA_1.jpg"``) to a mask file in ``folder``.

    A mask matches when it sits at the same relative path with a mask suffix (``.png``,
    ``.tif``, ``.tiff``), or, failing that, when its file stem equals the image's stem (optionally
    followed by ``_mask``) anywhere under ``folder``. Returns one ``Path`` or ``None`` per image
    (``None``: no mask; ``measure_dataset`` then segments automatically and says so). Raises
    ``DrlError`` if the folder is missing, holds no mask file, or a stem matches several files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DrlError(f"mask folder {folder} does not exist")
    by_relative: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.suffix.lower() not in _MASK_SUFFIXES:
            continue
        relative = file.relative_to(folder).with_suffix("").as_posix()
        by_relative.setdefault(relative, file)
        stem = file.stem[:-5] if file.stem.endswith("_mask") else file.stem
        by_stem.setdefault(stem, []).append(file)
        if relative.endswith("_mask"):
            by_relative.setdefault(relative[:-5], file)
    if not by_stem:
        raise DrlError(f"no mask files (.png, .tif, .tiff) found in {folder}")
    found: list[Path | None] = []
    for image_path in paths:
        relative = Path(image_path).with_suffix("").as_posix()
        if relative in by_relative:
            found.append(by_relative[relative])
            continue
        candidates = by_stem.get(Path(image_path).stem, [])
        if len(candidates) > 1:
            shown = ", ".join(str(c.relative_to(folder)) for c in candidates[:3])
            raise DrlError(f"mask for {image_path} is ambiguous: {shown}; arrange masks in the "
                           "same sub-folders as the images")
        found.append(candidates[0] if candidates else None)
    return found


def _measure_item(rgb: np.ndarray, mask, masks_expected: bool, mask_channel=None,
                  channels=None, channel_names=None) -> dict:
    note = None
    if isinstance(mask, (str, os.PathLike)):
        try:
            mask = read_mask(mask)
        except DrlError as exc:
            mask, note = None, f"{exc}; segmented automatically"
    elif mask is None and masks_expected:
        note = "no mask found; segmented automatically"
    row = measure(rgb, mask, channels, channel_names, mask_channel)
    if note:
        row["morph_note"] = note if row["morph_note"] is None else f"{note}; {row['morph_note']}"
    return row


def measure_rows(images: Iterable[tuple[np.ndarray, np.ndarray | str | os.PathLike | None]],
                 masks_expected: bool = False, mask_channel: str | int | None = None,
                 on_row=None) -> list[dict]:
    """One ``measure`` row per item of ``images`` (see :func:`measure_dataset`), in input order;
    ``on_row()`` after each (a progress bar). :func:`rows_to_frame` makes them a table, which
    is how rows measured in several processes are joined."""
    rows: list[dict] = []
    for rgb, mask, *extra in images:
        rows.append(_measure_item(rgb, mask, masks_expected, mask_channel, *extra))
        if on_row is not None:
            on_row()
    return rows


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    """The morphology table of ``measure`` rows: the common columns, then the per-channel ones
    in the order they first appear, then ``morph_ok`` and ``morph_note``."""
    extra_columns = list(dict.fromkeys(key for row in rows for key in row
                                       if key not in FEATURE_NAMES
                                       and key not in ("morph_ok", "morph_note")))
    columns = [*FEATURE_NAMES, *extra_columns, "morph_ok", "morph_note"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["morph_ok"] = frame["morph_ok"].astype(bool)
    # None, not NaN, for "no note": the column stays a clean nullable string in Parquet.
    frame["morph_note"] = pd.Series([row["morph_note"] for row in rows], dtype=object)
    return frame


def measure_dataset(images: Iterable[tuple[np.ndarray, np.ndarray | str | os.PathLike | None]],
                    reporter: Reporter | None = None, masks_expected: bool = False,
                    mask_channel: str | int | None = None) -> pd.DataFrame:
    """One row of ``measure`` per ``(rgb, mask)`` pair, in input order.

    An item may be ``(rgb, mask, channels, channel_names)`` (multi-channel images): its
    per-channel columns are added (NaN for images without them, or whose segmentation failed).

    ``mask`` may be an array, a path to a mask file (read lazily, e.g. from ``load_mask_folder``)
    or ``None``. With ``masks_expected=True`` a ``None`` mask is noted in ``morph_note`` (the user
    gave a mask folder but this image has no mask). ``mask_channel`` (multi-channel images): the
    channel the object is segmented on, by name or index (see :func:`measure`). In several
    processes: ``drlcore.analysis.analyze`` hands each worker a share for :func:`measure_rows`.
    """
    reporter = reporter or NullReporter()
    total = len(images) if hasattr(images, "__len__") else None
    with reporter.stage("morphology", total=total, unit="img") as bar:
        rows = measure_rows(images, masks_expected, mask_channel, on_row=lambda: bar.update(1))
    return rows_to_frame(rows)
