"""Images in: find the images a biologist points us at, decode them, make them square.

The work is done in three modules, one per step; this one gathers their public names so that
``from drlcore import ingest`` keeps reading as the pipeline's first stage:

- :mod:`drlcore.data.discover`: folder walk, label layouts (class folders, flat, CSV), zip listing
  and safety, :class:`IngestConfig`, :class:`ImageRecord`, :class:`Dataset`.
- :mod:`drlcore.data.decode`: reading a record's bytes, decoding to uint8 RGB, the dataset-wide
  intensity range of >8-bit data.
- :mod:`drlcore.data.geometry`: :func:`to_square`, :func:`to_canvas` (the preprocessing modes,
  :func:`choose_preprocess`) and :func:`thumbnail`.
"""

from __future__ import annotations

from drlcore.data.decode import (
    R_CORRUPT,
    R_EMPTY,
    R_NOT_IMAGE,
    DecodedImage,
    channels_entry,
    decode,
    intensity_range,
    intensity_ranges,
    longest_side,
    read_bytes,
)
from drlcore.data.discover import (
    IMAGE_EXTENSIONS,
    R_CSV_MISSING,
    R_CSV_UNLISTED,
    R_EXTENSION,
    R_UNSAFE_ZIP,
    Dataset,
    ImageRecord,
    IngestConfig,
    discover,
)
from drlcore.data.geometry import (as_image, choose_preprocess, prepare, thumbnail, to_canvas,
                                   to_square)

__all__ = [
    "IMAGE_EXTENSIONS",
    "IngestConfig",
    "ImageRecord",
    "Dataset",
    "DecodedImage",
    "discover",
    "read_bytes",
    "decode",
    "intensity_range",
    "intensity_ranges",
    "channels_entry",
    "longest_side",
    "to_square",
    "to_canvas",
    "prepare",
    "choose_preprocess",
    "thumbnail",
    "as_image",
    "R_EMPTY",
    "R_NOT_IMAGE",
    "R_CORRUPT",
    "R_EXTENSION",
    "R_CSV_MISSING",
    "R_CSV_UNLISTED",
    "R_UNSAFE_ZIP",
]
