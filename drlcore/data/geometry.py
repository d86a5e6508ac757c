"""Geometry: make a decoded image square for a backbone, and small for a thumbnail.

Preprocessing modes (``FeatureConfig.preprocess``)
--------------------------------------------------
- ``pad``: each crop keeps its aspect ratio, is padded to a square with its own border colour and
  resized to the backbone's input size (:func:`to_square`). Every crop then fills the input: a
  30 px and a 400 px organism of the same shape look the same, absolute size is gone.
- ``canvas``: every crop is pasted, centred, on ONE dataset-wide square canvas whose side is a
  high percentile (``canvas_percentile``, 95th by default) of the crops' longest sides, and the
  canvas is resized to the input size (:func:`to_canvas`). All crops share one scale, so a larger
  object covers more of the input. Crops longer than the canvas shrink to fit (aspect kept); how
  many did is recorded.
- ``stretch``: each crop is resized to the square, aspect ratio lost (the old ``--no-pad``).
- ``auto``: ``canvas`` when crop sizes vary widely, ``pad`` otherwise (:func:`choose_preprocess`).
  The rule: the 90th percentile of the crops' longest sides is at least ``AUTO_SPREAD`` (2) times
  the 10th. Tight crops of very different sizes (plankton, 30-400 px: crop size is object size)
  pass it; framed images of one size (blood smears, ~360 px) do not, and there padding loses
  nothing, while a canvas would only shrink the few larger images. The 10th/90th percentiles,
  not min/max, so a handful of outliers cannot flip the choice.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import numpy as np
from PIL import Image

__all__ = ["to_square", "to_canvas", "prepare", "shrinks", "choose_preprocess", "thumbnail",
           "as_image",
           "PREPROCESS_MODES", "AUTO_SPREAD", "DEFAULT_CANVAS_PERCENTILE"]

PREPROCESS_MODES = ("auto", "pad", "canvas", "stretch")
# auto picks canvas when p90 / p10 of the crops' longest sides reaches this (module docstring).
AUTO_SPREAD = 2.0
AUTO_PERCENTILES = (10.0, 90.0)
DEFAULT_CANVAS_PERCENTILE = 95.0
# Thumbnails: box-reduce by an integer factor while the image stays this many times the target.
THUMB_REDUCING_GAP = 1.1

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3 and rgb.shape[0] > 0 and rgb.shape[1] > 0):
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {dtype} {shape}")


def as_image(rgb: np.ndarray | Image.Image) -> Image.Image:
    """A PIL RGB image of a uint8 (H, W, 3) array (one copy), or the RGB image itself.

    The features stage converts each decoded image once and hands the same PIL image to
    :func:`prepare` and :func:`thumbnail`: each conversion copies the pixels (~0.3 ms for a
    360 px image), as much as a fifth of decoding it.
    """
    if isinstance(rgb, Image.Image):
        if rgb.mode != "RGB" or rgb.width == 0 or rgb.height == 0:
            raise ValueError(f"expected a non-empty RGB image, got mode {rgb.mode} {rgb.size}")
        return rgb
    _check_rgb(rgb)
    return Image.fromarray(np.ascontiguousarray(rgb))


def _median_border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median colour of the one-pixel frame (each border pixel once), read from four strips
    rather than the whole image."""
    width, height = image.size
    strips = [image.crop((0, 0, width, 1))]
    if height > 1:
        strips.append(image.crop((0, height - 1, width, height)))
    if height > 2:
        strips += [image.crop((0, 1, 1, height - 1)), image.crop((width - 1, 1, width, height - 1))]
    border = np.concatenate([np.asarray(strip).reshape(-1, 3) for strip in strips])
    return tuple(int(v) for v in np.median(border, axis=0).round())


def to_square(rgb: np.ndarray | Image.Image, size: int, pad_to_square: bool,
              interpolation: str = "bicubic") -> np.ndarray:
    """uint8 (size, size, 3) of a uint8 (H, W, 3) array or an RGB image. With ``pad_to_square``
    the image keeps its aspect ratio and the short side is padded with the median border colour
    (the image's own background), so a round cell stays round; otherwise it is stretched."""
    image = as_image(rgb)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    resample = _resample(interpolation)
    width, height = image.size
    if height == width == size:
        return np.array(image)
    if not pad_to_square or height == width:
        return np.asarray(image.resize((size, size), resample))
    # Resize first, then paste onto the canvas: fewer pixels to interpolate than pad-then-resize.
    scale = size / max(height, width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    canvas = Image.new("RGB", (size, size), _median_border_colour(image))
    canvas.paste(image.resize((new_w, new_h), resample), ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def _resample(interpolation: str):
    try:
        return _RESAMPLING[interpolation.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; "
                         f"known: {', '.join(_RESAMPLING)}") from None


def to_canvas(rgb: np.ndarray | Image.Image, size: int, canvas_side: int,
              interpolation: str = "bicubic") -> np.ndarray:
    """uint8 (size, size, 3): ``rgb`` pasted, centred, on a ``canvas_side`` square, which is then
    resized to ``size``. One canvas side for a whole dataset gives every crop the same scale
    (``size / canvas_side`` input pixels per image pixel); a crop longer than the canvas is shrunk
    to fit it, aspect ratio kept (:func:`shrinks` says which).

    Implemented as one resize of the crop by that scale and a paste onto a ``size`` square, which
    equals paste-then-resize up to interpolation at the crop's edge and touches fewer pixels.

    The fill is the crop's own median border colour, the same as ``pad`` mode uses. On a canvas
    most of the input is fill for a small crop, so the fill matters more than when padding: a
    dataset-wide constant would draw a visible rectangle around every crop whose background
    differs from it (camera backgrounds drift from crop to crop), and the network would answer
    that edge, whose size is the crop's and not the object's. The crop's own border colour
    continues its background, so only the object stands out, and pad and canvas features differ
    by scale alone.
    """
    original = as_image(rgb)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not (isinstance(canvas_side, (int, np.integer)) and canvas_side > 0):
        raise ValueError(f"canvas side must be a positive integer, got {canvas_side!r}")
    resample = _resample(interpolation)
    width, height = original.size
    factor = size / max(int(canvas_side), height, width)
    new_w = min(size, max(1, round(width * factor)))
    new_h = min(size, max(1, round(height * factor)))
    image = original
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    if new_w == new_h == size:
        return np.array(image)
    canvas = Image.new("RGB", (size, size), _median_border_colour(original))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def shrinks(width: int, height: int, canvas_side: int) -> bool:
    """Whether a ``width`` x ``height`` crop is shrunk to fit a ``canvas_side`` canvas."""
    return max(int(width), int(height)) > int(canvas_side)


def prepare(rgb: np.ndarray | Image.Image, size: int, mode: str, canvas_side: int | None = None,
            interpolation: str = "bicubic") -> np.ndarray:
    """The backbone's input for one decoded crop in a resolved mode (pad, canvas, stretch)."""
    if mode == "pad":
        return to_square(rgb, size, True, interpolation)
    if mode == "stretch":
        return to_square(rgb, size, False, interpolation)
    if mode == "canvas":
        if canvas_side is None:
            raise ValueError("canvas mode needs the dataset's canvas side")
        return to_canvas(rgb, size, canvas_side, interpolation)
    raise ValueError(f"unknown preprocessing mode {mode!r}; resolved modes: pad, canvas, stretch"
                     + (" (resolve 'auto' with choose_preprocess first)" if mode == "auto" else ""))


def choose_preprocess(longest_sides: Iterable[int | None], requested: str = "auto",
                      canvas_percentile: float = DEFAULT_CANVAS_PERCENTILE) -> dict:
    """The preprocessing a dataset gets, with the numbers behind it (a JSON-ready dict).

    ``longest_sides``: max(width, height) of each image (None where unknown; those are left
    out). Keys: ``requested``, ``mode`` (pad, canvas or stretch), ``reason``, ``n_sized``,
    ``longest_side`` (min, p10, median, p90, max), ``rule`` (the auto rule's statistic, its value
    and threshold, whether it fired), and in canvas mode ``canvas_side``, ``canvas_percentile``
    and ``shrunk`` (how many of the given sizes exceed the canvas; the features stage recounts it
    over the images it kept).
    """
    if requested not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing mode {requested!r}; "
                         f"known: {', '.join(PREPROCESS_MODES)}")
    if not 0 < canvas_percentile <= 100:
        raise ValueError(f"canvas percentile must be in (0, 100], got {canvas_percentile!r}")
    sides = np.asarray([int(s) for s in longest_sides if s is not None and s > 0], dtype=float)
    record: dict = {"requested": requested, "n_sized": int(sides.size)}
    spread = None
    if sides.size:
        low, median, high = np.percentile(sides, [AUTO_PERCENTILES[0], 50.0, AUTO_PERCENTILES[1]])
        record["longest_side"] = {"min": int(sides.min()), "p10": float(low),
                                  "median": float(median), "p90": float(high),
                                  "max": int(sides.max())}
        spread = float(high / low)
    record["rule"] = {"statistic": "p90 / p10 of the longest side", "value": spread,
                      "threshold": AUTO_SPREAD,
                      "fired": bool(spread is not None and spread >= AUTO_SPREAD)}
    if requested == "auto":
        if spread is None:
            mode, reason = "pad", "auto: no image size could be read, so padded"
        elif spread >= AUTO_SPREAD:
            mode = "canvas"
            reason = (f"auto: crop sizes vary widely (p90/p10 of the longest side "
                      f"{spread:.2f} >= {AUTO_SPREAD:g}), so one canvas keeps absolute size")
        else:
            mode = "pad"
            reason = (f"auto: crop sizes are similar (p90/p10 of the longest side "
                      f"{spread:.2f} < {AUTO_SPREAD:g}), so each crop is padded to a square")
    else:
        mode, reason = requested, f"{requested}: requested"
    if mode == "canvas" and not sides.size:
        mode, reason = "pad", "canvas requested but no image size could be read, so padded"
    if mode == "canvas":
        side = max(1, int(math.ceil(float(np.percentile(sides, canvas_percentile)) - 1e-9)))
        record.update(canvas_side=side, canvas_percentile=float(canvas_percentile),
                      shrunk=int((sides > side).sum()))
    record.update(mode=mode, reason=reason)
    return record


def thumbnail(rgb: np.ndarray | Image.Image, max_side: int = 160) -> bytes:
    """JPEG bytes (quality 85) of the image shrunk so its longer side is at most ``max_side``
    (a given PIL image is left as it is).

    Shrinking first halves (or quarters...) the image by box averaging while it stays at least
    ``THUMB_REDUCING_GAP`` times the target, then resamples bicubically: a 360 px cell to
    160 px costs 0.6 instead of 1.1 ms, and at thumbnail size the two are hard to tell apart.
    """
    image = as_image(rgb)
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=THUMB_REDUCING_GAP)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
