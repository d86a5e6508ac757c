"""Reading and decoding: the bytes of one image, as uint8 RGB pixels.

Decoding
--------
PNG, JPEG, BMP and GIF go through Pillow, TIFF through tifffile (16-bit, float and multi-page
files are what microscopes write; Pillow is the fallback for TIFF compressions tifffile cannot read
without imagecodecs). Animated GIFs, and multi-page TIFFs that are not channels, contribute their
first page/frame, and ``note`` says so. Grayscale is replicated to RGB.

Multi-channel (fluorescence) images
-----------------------------------
A MINISBLACK TIFF with 2 to 8 channels is read with every channel kept, as (H, W, C): channels
as samples of one page (interleaved or planar; not marked alpha), or across pages along the
series' ``C`` axis (OME-TIFF, ImageJ and tifffile metadata, e.g. axes ``CYX``, ``ZCYX``,
``TCZYX``), or, without metadata, along a page axis of length 2..8 (channels first, as
microscopes write them). Other axes (Z, T) contribute their first plane, and ``note`` says so;
more than 8 channels is a skip reason. RGB(A) files (photometric RGB, 8-bit PNG/JPEG) keep the
RGB path. A channel group (one file per channel, :mod:`drlcore.data.discover`) arrives as one packed
payload and decodes the same way, one grey file per channel. Each channel is scaled to [0, 1]
with its own dataset-wide range (:func:`intensity_ranges`; 8-bit channels by 0..255), and the
backbone and thumbnails see the colour composite of :mod:`drlcore.data.channels`;
``DecodedImage.channels`` / ``channel_pixels`` keep the scaled and stored channels. Alpha is dropped rather than composited: in
microscopy exports alpha is nearly always fully opaque (dropping it is then exact), and where it is
not, the recorded pixel values are the data, whereas compositing would paint a background that
the network sees as signal; ``note`` records that transparency was present.

Intensity scaling of >8-bit data
--------------------------------
16-bit (and 32-bit or float) images are mapped to 8 bits with ONE range for the whole dataset,
the ``percentile_low``/``percentile_high`` (0.5/99.5) percentiles of pixel values sampled across up
to ``sample`` images (:func:`intensity_range`), shared by all channels. Scaling each image by its
own range would stretch a dim cell and a bright cell to the same brightness and erase exactly the
intensity differences a biologist may care about. When :func:`decode` is given no range it falls
back to the image's own percentiles and says so in ``note``. 8-bit images are never rescaled.

Safety: every decode is fully forced (``Image.load``) so truncated files are caught, never padded
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False), and the pixel count declared in the header
is checked against ``max_image_pixels`` before any pixel is decoded. Problems with one image raise
:class:`SkipImage` with a short, stable reason; problems with the whole input raise
:class:`DrlError`.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from drlcore.data.discover import (
    Dataset,
    ImageRecord,
    IngestConfig,
    open_zip,
    read_regular_file,
    read_zip_member,
    split_channel_source,
    split_zip_source,
)
from drlcore.data.channels import (MAX_CHANNELS, ChannelMap, channel_map, composite,
                                   ome_channel_names)
from drlcore.errors import DrlError, SkipImage

__all__ = ["DecodedImage", "read_bytes", "decode", "longest_side", "intensity_range",
           "intensity_ranges", "channels_entry", "channel_view", "source_stamp"]

_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF")
# Pixels per image pooled for the dataset-wide percentiles: plenty for a 0.5 % tail, bounded memory.
_PIXELS_PER_IMAGE_FOR_RANGE = 50_000

# Reasons are part of the output (skipped.csv); keep them stable.
R_EMPTY = "empty file (0 bytes)"
R_NOT_IMAGE = "not an image"
R_CORRUPT = "corrupt or truncated image"


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # uint8 (height, width, 3); for multi-channel data the composite
    width: int
    height: int
    mode: str  # what the file held, e.g. "RGB 8-bit", "gray 16-bit", "4-channel 16-bit"
    note: str | None
    # Multi-channel (fluorescence) data only: float32 (height, width, C) scaled to [0, 1] with
    # the dataset-wide per-channel ranges, and the channel names and colours of the composite.
    channels: np.ndarray | None = None
    channel_map: ChannelMap | None = None
    channel_pixels: np.ndarray | None = None  # the same channels as stored (native units)


# --------------------------------------------------------------------------------------------
# Reading bytes
# --------------------------------------------------------------------------------------------

def read_bytes(record: ImageRecord, max_bytes: int = IngestConfig.max_file_bytes) -> bytes:
    """The file's bytes, at most ``max_bytes`` (regular files only, zip entries streamed with
    the same cap; see :mod:`drlcore.data.discover`). Raises SkipImage when the file vanished, is not
    a regular file, is too large or cannot be read."""
    source = record.source
    group = split_channel_source(source)
    if group is not None:
        names, sources = group
        parts = [read_bytes(ImageRecord(record.path, record.label, record.split, src), max_bytes)
                 for src in sources]
        return _pack_channels(names, parts)
    try:
        if source.startswith("zip:"):
            zip_path, entry = split_zip_source(source)
            zf = open_zip(zip_path)
            try:
                return read_zip_member(zf, zf.getinfo(entry), max_bytes)
            except KeyError:
                raise SkipImage("file not found in zip") from None
            except zipfile.BadZipFile as exc:
                raise SkipImage(f"corrupt zip entry ({exc})") from None
            except NotImplementedError as exc:
                raise SkipImage(f"unsupported zip compression ({exc})") from None
            except (zlib.error, EOFError):
                raise SkipImage("corrupt zip entry") from None
        return read_regular_file(source, max_bytes)
    except FileNotFoundError:
        raise SkipImage("file not found") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise SkipImage(f"cannot read file ({getattr(exc, 'strerror', None) or exc})") from None


# A channel group's bytes (drlcore.data.discover: one file per channel): this magic, a 4-byte
# little-endian header length, a JSON header {"names", "lengths"}, then each file's bytes in
# channel order. Its hash therefore covers every channel file.
_GROUP_MAGIC = b"DRLCHAN1"


def _pack_channels(names: list[str], parts: list[bytes]) -> bytes:
    header = json.dumps({"names": names, "lengths": [len(p) for p in parts]}).encode()
    return b"".join([_GROUP_MAGIC, struct.pack("<I", len(header)), header, *parts])


def _unpack_channels(data: bytes) -> tuple[list[str], list[bytes]]:
    (size,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12:12 + size])
    parts, at = [], 12 + size
    for length in header["lengths"]:
        parts.append(data[at:at + length])
        at += length
    return list(header["names"]), parts


def _decode_group(data: bytes, config: IngestConfig) -> _Raw:
    names, parts = _unpack_channels(data)
    planes, modes, notes = [], set(), []
    for name, part in zip(names, parts):
        try:
            raw = _decode_raw(part, config)
        except SkipImage as exc:
            raise SkipImage(f"channel {name}: {exc.reason}") from None
        pixels = raw.pixels
        if raw.multichannel or pixels.shape[2] not in (1, 3):
            raise SkipImage(f"channel {name}: not a single-channel image ({raw.mode})")
        if pixels.shape[2] == 3:
            if not (np.array_equal(pixels[..., 0], pixels[..., 1])
                    and np.array_equal(pixels[..., 0], pixels[..., 2])):
                raise SkipImage(f"channel {name}: a colour image, not a single channel")
            pixels = pixels[..., :1]
        planes.append(pixels[..., 0])
        modes.add(pixels.dtype)
        notes += [f"channel {name}: {note}" for note in raw.notes]
    if len({p.shape for p in planes}) > 1:
        raise SkipImage("channel files differ in size: "
                        + ", ".join(f"{n} {p.shape[1]}x{p.shape[0]}" for n, p in zip(names, planes)))
    dtype = np.result_type(*modes)
    arr = np.stack([p.astype(dtype, copy=False) for p in planes], axis=-1)
    return _Raw(arr, _multi_mode(len(planes), arr.dtype), notes, True, names)


def _read_head(record: ImageRecord, n: int) -> bytes:
    group = split_channel_source(record.source)
    if group is not None:  # the first channel file speaks for the group
        return _read_head(ImageRecord(record.path, None, None, group[1][0]), n)
    if record.source.startswith("zip:"):
        zip_path, entry = split_zip_source(record.source)
        zf = open_zip(zip_path)
        if zf.getinfo(entry).flag_bits & 0x1:
            raise SkipImage("encrypted zip entry")
        with zf.open(entry) as fh:
            return fh.read(n)
    return read_regular_file(record.source, IngestConfig.max_file_bytes, head=n)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class _Raw:
    """Pixels as stored: (H, W, C) with C in 1..4 (gray, gray+alpha, RGB, RGBA), native dtype;
    or, when ``multichannel``, C in 2..8 independent fluorescence channels (no alpha)."""

    pixels: np.ndarray
    mode: str
    notes: list[str]
    multichannel: bool = False
    names: list[str] | None = None  # channel names: a channel group's, or the OME-XML's


def _bomb_reason(n_pixels: int) -> str:
    return f"image too large (decompression bomb guard: {n_pixels} pixels)"


def _check_pixels(n_pixels: int, config: IngestConfig) -> None:
    if n_pixels > config.max_image_pixels:
        raise SkipImage(_bomb_reason(n_pixels))


def _mode_name(channels: int, dtype: np.dtype) -> str:
    kind = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}[channels]
    if dtype == np.bool_:
        return "bilevel"
    bits = dtype.itemsize * 8
    suffix = " float" if dtype.kind == "f" else (" signed" if dtype.kind == "i" else "")
    return f"{kind} {bits}-bit{suffix}"


def _decode_raw(data: bytes, config: IngestConfig) -> _Raw:
    if not data:
        raise SkipImage(R_EMPTY)
    if data[:8] == _GROUP_MAGIC:
        return _decode_group(data, config)
    if _is_tiff(data):
        try:
            raw = _decode_tiff(data, config)
        except SkipImage:
            raise
        except Exception:  # noqa: BLE001 - tifffile raises many types; Pillow gets a second try
            raw = None  # e.g. LZW or JPEG compression, which tifffile needs imagecodecs for
        if raw is not None:
            return raw
        try:
            return _decode_pillow(data, config)
        except SkipImage as exc:
            if exc.reason == R_NOT_IMAGE:
                raise SkipImage(R_CORRUPT) from None
            raise
    return _decode_pillow(data, config)


def _decode_tiff(data: bytes, config: IngestConfig) -> _Raw | None:
    """First page of a TIFF, or None when Pillow is better placed (CMYK, YCbCr, Lab)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages.first
        n_pages = len(tf.pages)
        _check_pixels(int(page.imagewidth) * int(page.imagelength) * max(int(page.imagedepth), 1),
                      config)
        photometric = int(page.photometric)
        if photometric not in (0, 1, 2, 3):  # MINISWHITE, MINISBLACK, RGB, PALETTE
            return None
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        if dtype is None or dtype.kind not in "buif":
            raise SkipImage(f"unsupported image mode: {dtype} TIFF")
        if int(page.imagedepth) > 1:
            raise SkipImage("unsupported image mode: volumetric TIFF page")
        if photometric == 1:  # MINISBLACK: fluorescence channels, as samples or as pages
            multi = _tiff_channels(tf, page, config)
            if multi is not None:
                return multi
        if photometric == 2 and int(page.samplesperpixel) > 3:  # RGB + extra samples
            multi = _rgb_extra_channels(tf, page, dtype)
            if multi is not None:
                return multi
        arr = page.asarray()
        axes = page.axes
        bits = int(page.bitspersample)
        colormap = page.colormap if photometric == 3 else None

    if "S" in axes and axes.index("S") < axes.index("Y"):  # planar configuration
        arr = np.moveaxis(arr, axes.index("S"), -1)
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        channels = arr.shape[2] if arr.ndim == 3 else "?"
        raise SkipImage(f"unsupported image mode: {channels} samples per pixel")
    notes = []
    if n_pages > 1:
        notes.append(f"multi-page TIFF: first of {n_pages} pages used")
    if photometric == 0:  # MINISWHITE: 0 is white; flip so that bright means bright everywhere
        arr = arr.copy()
        grey = arr[..., :1] if arr.shape[2] in (1, 2) else arr
        if arr.dtype == np.bool_:
            grey[...] = ~grey
        elif arr.dtype.kind == "f":
            grey[...] = grey.max() - grey
        else:
            grey[...] = min(2**bits - 1, np.iinfo(arr.dtype).max) - grey
    if colormap is not None and arr.shape[2] == 1:
        cmap = np.asarray(colormap)
        scale = 257 if cmap.max() > 255 else 1
        lut = (cmap.T // scale).astype(np.uint8)
        arr = lut[np.clip(arr[..., 0].astype(np.int64), 0, len(lut) - 1)]
        return _Raw(arr, "palette 8-bit", notes)
    mode = _mode_name(arr.shape[2], arr.dtype)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return _Raw(arr, mode, notes)


_ALPHA_EXTRASAMPLES = (1, 2)  # associated, unassociated alpha (TIFF ExtraSamples)
_PAGE_CHANNEL_AXES = "C"  # axes that hold channels by metadata (OME, ImageJ, tifffile 'shaped')
_UNNAMED_PAGE_AXES = "IQ"  # pages with no metadata: channels when there are 2..8 of them


def _multi_mode(n: int, dtype: np.dtype) -> str:
    bits = dtype.itemsize * 8
    suffix = " float" if dtype.kind == "f" else (" signed" if dtype.kind == "i" else "")
    return f"{n}-channel {bits}-bit{suffix}"


def _tiff_channels(tf: tifffile.TiffFile, page, config: IngestConfig) -> _Raw | None:
    """Channels of a MINISBLACK TIFF as (H, W, C), C in 2..8, or None when it holds one channel
    (or a grey+alpha pair), which the single-image path handles.

    Channels are found (1) as samples of one page (``S`` axis, not marked alpha), or (2) across
    pages: the series' ``C`` axis (OME-TIFF, ImageJ, tifffile metadata), else a metadata-less
    page axis (``I``/``Q``) of length 2..8 (longer ones are taken as a stack of images, first
    page used, as before). Every other axis (Z, T, ...) contributes its first plane; ``note``
    says so.
    """
    notes: list[str] = []
    samples = int(page.samplesperpixel)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    if samples > 1:
        if samples == 2 and any(e in _ALPHA_EXTRASAMPLES for e in extras):
            return None  # grey + alpha
        if samples > MAX_CHANNELS:
            raise SkipImage(f"unsupported image mode: {samples} channels (at most "
                            f"{MAX_CHANNELS})")
        if any(e in _ALPHA_EXTRASAMPLES for e in extras):
            notes.append("alpha-marked extra sample read as a channel")
        arr = page.asarray()
        axes = page.axes
        arr = np.moveaxis(arr, axes.index("S"), -1)
        arr = arr.reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1]) if arr.ndim > 3 else arr
        if len(tf.pages) > 1:
            notes.append(f"multi-page TIFF: first of {len(tf.pages)} pages used")
        return _Raw(np.ascontiguousarray(arr), _multi_mode(samples, arr.dtype), notes, True)
    if len(tf.pages) < 2 or not tf.series:
        return None
    series = tf.series[0]
    axes, shape = series.axes, tuple(int(n) for n in series.shape)
    if not axes.endswith("YX") or len(axes) < 3:
        return None
    lead_axes, lead_shape = axes[:-2], shape[:-2]
    chan = None
    for k, ax in enumerate(lead_axes):
        if ax in _PAGE_CHANNEL_AXES and lead_shape[k] > 1:
            chan = k
            break
    if chan is None:
        for k, ax in enumerate(lead_axes):
            if ax in _UNNAMED_PAGE_AXES and 2 <= lead_shape[k] <= MAX_CHANNELS:
                chan = k
                break
    if chan is None:
        return None
    n = lead_shape[chan]
    if n > MAX_CHANNELS:
        raise SkipImage(f"unsupported image mode: {n} channels (at most {MAX_CHANNELS})")
    pages = series.pages
    if len(pages) != int(np.prod(lead_shape)):
        return None  # not one page per plane: leave it to the single-page path
    _check_pixels(int(shape[-1]) * int(shape[-2]) * n, config)
    for k, ax in enumerate(lead_axes):
        if k != chan and lead_shape[k] > 1:
            notes.append(f"{ax} axis: first of {lead_shape[k]} planes used")
    planes = []
    for c in range(n):
        index = [0] * len(lead_shape)
        index[chan] = c
        planes.append(pages[int(np.ravel_multi_index(index, lead_shape))].asarray())
    arr = np.stack(planes, axis=-1)
    if arr.ndim != 3:
        return None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    # OME-XML channel names (BrightField, DAPI...) tell morphology what each channel is.
    names = ome_channel_names(tf.ome_metadata) if tf.is_ome else None
    return _Raw(np.ascontiguousarray(arr), _multi_mode(n, arr.dtype), notes, True,
                names if names is not None and len(names) == n else None)


def _rgb_extra_channels(tf: tifffile.TiffFile, page, dtype: np.dtype) -> _Raw | None:
    """An RGB TIFF with extra samples as (H, W, C) channels, or None when the one extra sample
    is alpha (the RGBA path drops it).

    ExtraSamples 1 (associated, i.e. premultiplied, alpha) is alpha. 0 (unspecified) is data.
    2 (unassociated alpha) is ambiguous: image editors write it for transparency, but tifffile
    writes it by default for ANY 4-sample array (``imwrite(path, a)`` with ``a`` (H, W, 4) or
    (4, H, W)), which is how 4-channel microscopy data is commonly saved from Python. It is read
    as alpha for 8-bit data and as a channel for >8-bit or float data (no editor makes 16-bit
    transparency), with a note either way a reader can check. More than one extra sample is
    never a plain RGBA image: all samples are channels.
    """
    samples = int(page.samplesperpixel)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    high = dtype.itemsize > 1 or dtype.kind == "f"
    if samples == 4 and extras[:1] == (1,):
        return None
    if samples == 4 and extras[:1] == (2,) and not high:
        return None
    if samples > MAX_CHANNELS:
        raise SkipImage(f"unsupported image mode: {samples} channels (at most {MAX_CHANNELS})")
    notes: list[str] = []
    if 2 in extras or 1 in extras:
        notes.append(f"stored as RGB with {samples - 3} extra sample(s) marked alpha "
                     f"(tifffile's default for {samples}-channel arrays): read as {samples} "
                     f"channels, not transparency")
    else:
        notes.append(f"RGB TIFF with {samples - 3} unspecified extra sample(s): read as "
                     f"{samples} channels")
    arr = page.asarray()
    arr = np.moveaxis(arr, page.axes.index("S"), -1)
    arr = arr.reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1]) if arr.ndim > 3 else arr
    if len(tf.pages) > 1:
        notes.append(f"multi-page TIFF: first of {len(tf.pages)} pages used")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return _Raw(np.ascontiguousarray(arr), _multi_mode(samples, arr.dtype), notes, True)


_PIL_MODE_NAMES = {"1": "bilevel", "L": "gray 8-bit", "LA": "gray+alpha 8-bit",
                   "P": "palette 8-bit", "PA": "palette+alpha 8-bit", "RGB": "RGB 8-bit",
                   "RGBA": "RGBA 8-bit", "RGBX": "RGB 8-bit", "CMYK": "CMYK 8-bit",
                   "YCbCr": "YCbCr 8-bit", "La": "gray+alpha 8-bit", "RGBa": "RGBA 8-bit",
                   "I;16": "gray 16-bit", "I;16L": "gray 16-bit", "I;16B": "gray 16-bit",
                   "I;16N": "gray 16-bit", "I": "gray 32-bit signed", "F": "gray 32-bit float"}


def _header_pixels(data: bytes) -> int | None:
    """Pixel count declared by a PNG/GIF/BMP/JPEG header, read without Pillow.

    Lets the per-call limit act before Pillow's module-global guard, which would otherwise warn
    (DecompressionBombWarning) on its own for images our limit is about to refuse anyway.
    """
    size = _header_size(data)
    return None if size is None else size[0] * size[1]


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a PNG/GIF/BMP/JPEG header, read without Pillow."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
        elif data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 core header
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
        elif data[:2] == b"\xff\xd8":
            width = height = None
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                if marker == 0xDA:  # start of scan: no frame header before it
                    return None
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    height, width = struct.unpack(">HH", data[i + 5:i + 9])
                    break
                i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
            if width is None:
                return None
        else:
            return None
    except struct.error:
        return None
    return abs(int(width)), abs(int(height))


def _decode_pillow(data: bytes, config: IngestConfig) -> _Raw:
    declared = _header_pixels(data)
    if declared is not None:
        _check_pixels(declared, config)
    try:
        im = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except UnidentifiedImageError:
        raise SkipImage(R_NOT_IMAGE) from None
    except Image.DecompressionBombError as exc:
        raise SkipImage(_pillow_bomb_reason(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error):
        raise SkipImage(R_CORRUPT) from None
    with im:
        # Our own guard, from the header, before a single pixel is decoded.
        _check_pixels(im.width * im.height, config)
        notes = []
        n_frames = getattr(im, "n_frames", 1) if im.format == "GIF" else 1
        if n_frames > 1:
            notes.append(f"animated GIF: first of {n_frames} frames used")
            im.seek(0)
        elif im.format == "TIFF" and getattr(im, "n_frames", 1) > 1:
            notes.append(f"multi-page TIFF: first of {im.n_frames} pages used")
            im.seek(0)
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise SkipImage(_pillow_bomb_reason(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError):
            raise SkipImage(R_CORRUPT) from None
        mode = im.mode
        if mode not in _PIL_MODE_NAMES:
            raise SkipImage(f"unsupported image mode: {mode}")
        if im.format == "PNG" and data[24] == 16 and data[25] in (2, 6):
            # Pillow keeps only the high byte of 16-bit colour PNGs (a fixed, dataset-wide map).
            notes.append("16-bit colour PNG reduced to 8 bits by its high byte")
        orientation = im.getexif().get(0x0112, 1) if im.format == "JPEG" else 1
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
            notes.append("rotated as its EXIF orientation says")
        if mode.startswith("I;16"):
            arr = np.asarray(im).astype(np.uint16, copy=False)[:, :, None]
        elif mode in ("I", "F"):
            arr = np.asarray(im)[:, :, None]
        elif mode == "1":
            arr = np.asarray(im.convert("L"))[:, :, None]
        elif mode in ("L", "RGB"):
            arr = np.asarray(im)
        elif mode in ("LA", "La", "PA"):
            arr = np.asarray(im.convert("LA"))
        elif mode == "P":
            has_alpha = "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        elif mode in ("RGBA", "RGBa"):
            arr = np.asarray(im.convert("RGBA"))
        else:  # RGBX, CMYK, YCbCr
            if mode == "CMYK":
                notes.append("CMYK converted to RGB (approximate colours)")
            arr = np.asarray(im.convert("RGB"))
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return _Raw(arr, _PIL_MODE_NAMES[mode], notes)


def longest_side(data: bytes) -> int | None:
    """max(width, height) of the image in ``data`` (a file's bytes or a channel group's payload)
    from its header alone, without decoding pixels; None when the header cannot say.

    The canvas preprocessing needs every crop's size before the first one is embedded; the
    features stage calls this on the bytes it already holds for hashing, so no image is decoded
    twice. EXIF rotation swaps width and height, which leaves the longest side as it is.
    """
    if not data:
        return None
    if data[:8] == _GROUP_MAGIC:  # the channel files share one size (checked when decoding)
        try:
            parts = _unpack_channels(data)[1]
        except (ValueError, KeyError, struct.error):
            return None
        return longest_side(parts[0]) if parts else None
    size = _header_size(data)  # PNG/GIF/BMP/JPEG: no Pillow, so no bomb warning either
    if size is None and _is_tiff(data):
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tf:
                page = tf.pages.first
                size = int(page.imagewidth), int(page.imagelength)
        except Exception:  # noqa: BLE001 - only a hint: tifffile raises many types
            size = None
    if size is None:
        try:
            with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as im:
                size = int(im.width), int(im.height)
        except Exception:  # noqa: BLE001 - a file Pillow cannot open is skipped when decoded
            return None
    return max(size) or None


def _pillow_bomb_reason(exc: Exception) -> str:
    """Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) fired first; its message has the size."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return _bomb_reason(int(match.group(1))) if match else _bomb_reason(-1)


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        high = low + 1.0
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    if values.dtype.kind == "f":
        scaled = np.nan_to_num(scaled, nan=0.0)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def decode(data: bytes, config: IngestConfig = IngestConfig(),
           intensity_range: tuple[float, float] | None = None,
           channel_ranges: list[tuple[float, float]] | None = None,
           channel_names: list[str] | None = None) -> DecodedImage:
    """Decode one image file to uint8 RGB. Raises SkipImage(reason) when it cannot be used.

    ``intensity_range`` (from :func:`intensity_range`) maps >8-bit data to 8 bits; without it
    such data is scaled by its own percentiles and ``note`` says so. Multi-channel data is
    scaled channel by channel with ``channel_ranges`` (from :func:`intensity_ranges`) and shown
    as the composite of :mod:`drlcore.data.channels` (colours from ``config.channels``).
    """
    raw = _decode_raw(data, config)
    if raw.multichannel:
        return _decode_multi(raw, config, channel_ranges, channel_names)
    arr, notes = raw.pixels, raw.notes
    channels = arr.shape[2]
    if channels in (2, 4):
        alpha = arr[..., -1]
        opaque = np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1.0
        if alpha.min() < opaque:
            notes.append("transparency dropped (alpha channel ignored)")
        arr = arr[..., :-1]
    if arr.dtype != np.uint8:
        if intensity_range is None:
            low, high = _percentiles(arr, config)
            notes.append(f"{raw.mode} image scaled by its own {config.percentile_low:g}-"
                         f"{config.percentile_high:g} percentile range (no dataset-wide range)")
        else:
            low, high = intensity_range
        arr = _rescale(arr, low, high)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = np.ascontiguousarray(arr)
    height, width = arr.shape[:2]
    return DecodedImage(rgb=arr, width=int(width), height=int(height), mode=raw.mode,
                        note="; ".join(notes) or None)


def _to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        high = low + 1.0
    out = (values.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    if values.dtype.kind == "f":
        out = np.nan_to_num(out, nan=0.0)
    return np.clip(out, 0.0, 1.0)


def _decode_multi(raw: _Raw, config: IngestConfig,
                  channel_ranges: list[tuple[float, float]] | None,
                  channel_names: list[str] | None) -> DecodedImage:
    arr, notes = raw.pixels, list(raw.notes)
    n = arr.shape[2]
    if channel_ranges is not None and len(channel_ranges) != n:
        raise SkipImage(f"{n} channels where the dataset's images have {len(channel_ranges)}")
    ranges = []
    own = False
    for k in range(n):
        if arr.dtype == np.uint8:
            ranges.append((0.0, 255.0))  # 8-bit is never rescaled
        elif channel_ranges is not None and k < len(channel_ranges):
            ranges.append(tuple(channel_ranges[k]))
        else:
            ranges.append(_percentiles(arr[..., k], config))
            own = True
    if own:
        notes.append(f"{raw.mode} image scaled channel by channel by its own "
                     f"{config.percentile_low:g}-{config.percentile_high:g} percentile ranges "
                     "(no dataset-wide range)")
    unit = np.stack([_to_unit(arr[..., k], *ranges[k]) for k in range(n)], axis=-1)
    cmap = channel_map(n, raw.names or channel_names, config.channels)
    rgb = composite(unit, cmap)
    height, width = rgb.shape[:2]
    return DecodedImage(rgb=rgb, width=int(width), height=int(height), mode=raw.mode,
                        note="; ".join(notes) or None, channels=unit, channel_map=cmap,
                        channel_pixels=arr)


def _percentiles(values: np.ndarray, config: IngestConfig) -> tuple[float, float]:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [config.percentile_low, config.percentile_high])
    return float(low), float(high)


def _may_be_high_bit_depth(head: bytes) -> bool:
    """Cheap look at the header: JPEG/GIF/BMP are 8-bit in Pillow; PNG says its bit depth."""
    if _is_tiff(head):
        return True
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 24:
        return head[24] == 16
    return False


def intensity_range(dataset: Dataset, config: IngestConfig = IngestConfig(),
                    sample: int = 256) -> tuple[float, float] | None:
    """Dataset-wide (low, high) percentiles of >8-bit pixel values; None if all data is 8-bit.

    Up to ``sample`` images, evenly spaced over the sorted records (so every class is seen), are
    inspected; alpha channels are left out. Unreadable images are passed over here; decode() will
    report them. Multi-channel images are left out too: see :func:`intensity_ranges`.
    """
    return intensity_ranges(dataset, config, sample)[0]


def intensity_ranges(dataset: Dataset, config: IngestConfig = IngestConfig(), sample: int = 256
                     ) -> tuple[tuple[float, float] | None, list[tuple[float, float]] | None]:
    """(shared range, per-channel ranges) over the same sample of images.

    The shared range is :func:`intensity_range`'s (grey/RGB data). The per-channel ranges are
    one dataset-wide (low, high) percentile pair per channel index of >8-bit multi-channel
    images (None when there are none): channel k of every image is scaled by range k.
    """
    records = dataset.records
    if not records or sample <= 0:
        return None, None
    picks = np.unique(np.linspace(0, len(records) - 1, min(sample, len(records))).round()
                      .astype(int))
    pooled: list[np.ndarray] = []
    per_channel: list[list[np.ndarray]] = []
    n_channels = 0
    for i in picks:
        record = records[int(i)]
        try:
            if (split_channel_source(record.source) is None
                    and not _may_be_high_bit_depth(_read_head(record, 32))):
                continue
            raw = _decode_raw(read_bytes(record), config)
        except (SkipImage, OSError, KeyError, zipfile.BadZipFile):
            continue
        pixels = raw.pixels
        if raw.multichannel:
            n_channels = max(n_channels, pixels.shape[2])
        if pixels.dtype == np.uint8:
            continue
        if raw.multichannel:
            while len(per_channel) < pixels.shape[2]:
                per_channel.append([])
            step = max(1, pixels.shape[0] * pixels.shape[1] // _PIXELS_PER_IMAGE_FOR_RANGE)
            for k in range(pixels.shape[2]):
                per_channel[k].append(pixels[..., k].ravel()[::step].astype(np.float64))
            continue
        if pixels.shape[2] in (2, 4):
            pixels = pixels[..., :-1]
        flat = pixels.ravel()
        step = max(1, flat.size // _PIXELS_PER_IMAGE_FOR_RANGE)
        pooled.append(flat[::step].astype(np.float64))
    shared = _percentiles(np.concatenate(pooled), config) if pooled else None
    ranges = [_percentiles(np.concatenate(p), config) for p in per_channel]
    if n_channels and len(ranges) < n_channels:  # 8-bit channels are never rescaled
        ranges += [(0.0, 255.0)] * (n_channels - len(ranges))
    return shared, (ranges or None)


def channels_entry(dataset: Dataset, config: IngestConfig,
                   channel_ranges: list[tuple[float, float]] | None) -> dict | None:
    """What the features stage records (and keys its cache on) for multi-channel data: the
    per-channel ranges, channel names and composite colours; None for grey/RGB data. Raises
    DrlError when ``config.channels`` does not fit the data."""
    if not channel_ranges:
        return None
    names = getattr(dataset, "channel_names", None) or _file_channel_names(dataset, config,
                                                                           len(channel_ranges))
    cmap = channel_map(len(channel_ranges), names, config.channels)
    return {"ranges": [[float(lo), float(hi)] for lo, hi in channel_ranges], **cmap.to_dict()}


def _file_channel_names(dataset: Dataset, config: IngestConfig, n: int) -> list[str] | None:
    """The channel names the first readable multi-channel file carries (OME-XML), if any."""
    for record in dataset.records[:8]:
        try:
            raw = _decode_raw(read_bytes(record), config)
        except (SkipImage, OSError, KeyError, zipfile.BadZipFile):
            continue
        if raw.multichannel:
            return raw.names if raw.names is not None and len(raw.names) == n else None
    return None


# --------------------------------------------------------------------------------------------
# One channel of one object, for display
# --------------------------------------------------------------------------------------------


def channel_view(data: bytes, recorded: Mapping, channel: int | None = None, tint: bool = False,
                 intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """One object's image for a viewer, decoded as the features stage decoded it.

    ``recorded`` is the features manifest's ``preprocessing.channels`` entry (see
    :func:`channels_entry`: ``ranges``, ``names``, ``colours``). ``channel=None`` gives the
    composite the backbone saw; ``channel=k`` gives channel k alone, scaled to 8 bits with the
    dataset-wide range recorded for it, ``round(255 * clip((v - low) / (high - low), 0, 1))``,
    as grey (H, W, 3) uint8, or, with ``tint``, that grey times the channel's display colour
    (a channel whose colour is ``off`` stays grey). Raises SkipImage when the image cannot be
    decoded or does not have the recorded channels, DrlError for a channel index out of range.
    """
    ranges = [tuple(r) for r in recorded.get("ranges") or []]
    names = list(recorded.get("names") or []) or None
    colours = list(recorded.get("colours") or [])
    spec = ",".join(f"{k}={c}" for k, c in enumerate(colours)) or None
    image = decode(data, IngestConfig(channels=spec), intensity_range, ranges or None, names)
    if channel is None:
        return image.rgb
    if image.channels is None:
        raise SkipImage(f"a {image.mode} image, not the recorded {len(ranges)} channels")
    n = image.channels.shape[2]
    if not 0 <= channel < n:
        raise DrlError(f"channel {channel}: the image has channels 0 to {n - 1}")
    grey = (image.channels[..., channel] * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
    rgb = image.channel_map.rgb[channel]
    if not tint or not rgb.any():
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    tinted = grey[..., None].astype(np.float32) * rgb[None, None, :]
    return (tinted + np.float32(0.5)).astype(np.uint8)


def source_stamp(source: str) -> tuple:
    """(mtime_ns, size) of each file behind a record's ``source`` (a file, a zip entry's zip, a
    channel group's files); (0, 0) for a file that is gone. A cache key part for views decoded
    from the original files."""
    group = split_channel_source(source)
    sources = group[1] if group is not None else [source]
    stamps = []
    for src in sources:
        path = split_zip_source(src)[0] if src.startswith("zip:") else src
        try:
            st_ = os.stat(path)
            stamps.append((st_.st_mtime_ns, st_.st_size))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)
