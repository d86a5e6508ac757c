"""Geometry: make a decoded image square for a backbone, and small for a thumbnail."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["to_square", "thumbnail"]

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


def _median_border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return tuple(int(v) for v in np.median(border, axis=0).round())


def to_square(rgb: np.ndarray, size: int, pad_to_square: bool,
              interpolation: str = "bicubic") -> np.ndarray:
    """uint8 (size, size, 3). With ``pad_to_square`` the image keeps its aspect ratio and the
    short side is padded with the median border colour (the image's own background), so a round
    cell stays round; otherwise it is stretched."""
    _check_rgb(rgb)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    try:
        resample = _RESAMPLING[interpolation.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; "
                         f"known: {', '.join(_RESAMPLING)}") from None
    height, width = rgb.shape[:2]
    if height == width == size:
        return rgb.copy()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if not pad_to_square or height == width:
        return np.asarray(image.resize((size, size), resample))
    # Resize first, then paste onto the canvas: fewer pixels to interpolate than pad-then-resize.
    scale = size / max(height, width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    canvas = Image.new("RGB", (size, size), _median_border_colour(rgb))
    canvas.paste(image.resize((new_w, new_h), resample), ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def thumbnail(rgb: np.ndarray, max_side: int = 160) -> bytes:
    """JPEG bytes (quality 85) of the image shrunk so its longer side is at most ``max_side``."""
    _check_rgb(rgb)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
