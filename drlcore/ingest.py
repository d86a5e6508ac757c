"""Images in: find the images a biologist points us at, decode them, make them square.

Layouts :func:`discover` understands (the same rules apply inside a ``.zip``)
--------------------------------------------------------------------------------
``csv``
    The folder root holds exactly one ``*.csv`` file whose header has a ``filename``, ``file``
    or ``path`` column (case and surrounding spaces ignored). Optional ``label`` (or ``class``)
    and ``split`` columns; any other column is ignored. Filenames are relative to the folder
    (``/`` or ``\\`` separators). Rows naming files that do not exist are skipped ("listed in CSV
    but missing"); images present in the folder but absent from the CSV are skipped ("not listed
    in CSV") so nothing disappears silently. Several CSVs at the root, or one without a filename
    column, means the CSV is not used as a label table (it is listed in ``skipped`` with why).
``class-folders``
    At least one image lies in a subfolder. The label is the name of the top-level subfolder
    (surrounding whitespace stripped); deeper folders count for their top-level class. Images
    lying directly at the root beside class folders are kept, unlabelled (``label=None``): they
    are still the user's data, and dropping them or inventing a class for them would both surprise.
``flat``
    All images lie at the root: unlabelled.
``zip:<inner layout>``
    A ``.zip`` of any of the above, read in place (nothing is extracted). If every entry sits in a
    single top-level folder, that folder is the root. Entries whose path escapes the root
    (``..``, absolute paths, drive letters) are refused ("unsafe path in zip"). The declared
    uncompressed size of all entries is checked against ``max_zip_uncompressed_bytes`` before
    anything is read, and single entries with a deflate ratio no image has are refused.

Records are sorted by their relative path, so every run sees the same order. Hidden files and OS
junk (``__MACOSX``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``._*``) are ignored silently;
other non-image files are listed in ``Dataset.skipped`` ("not an image file extension").

Decoding
--------
PNG, JPEG, BMP and GIF go through Pillow, TIFF through tifffile (16-bit, float and multi-page
files are what microscopes write; Pillow is the fallback for TIFF compressions tifffile cannot read
without imagecodecs). Multi-page TIFFs and animated GIFs contribute their first page/frame, and
``note`` says so. Grayscale is replicated to RGB. Alpha is dropped rather than composited: in
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

import csv
import dataclasses
import io
import os
import re
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DrlError, SkipImage

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
    "to_square",
    "thumbnail",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin"}
_CSV_FILENAME_COLUMNS = ("filename", "file", "path")
_CSV_LABEL_COLUMNS = ("label", "class")
_CSV_SPLIT_COLUMNS = ("split",)
# Deflate cannot exceed ~1032:1; an image entry near that is a constant blob, i.e. a zip bomb.
_ZIP_MAX_RATIO = 500
_ZIP_RATIO_MIN_BYTES = 8 * 2**20
_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF")
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Pixels per image pooled for the dataset-wide percentiles: plenty for a 0.5 % tail, bounded memory.
_PIXELS_PER_IMAGE_FOR_RANGE = 50_000

# Reasons are part of the output (skipped.csv); keep them stable.
R_EMPTY = "empty file (0 bytes)"
R_NOT_IMAGE = "not an image"
R_CORRUPT = "corrupt or truncated image"
R_EXTENSION = "not an image file extension"
R_CSV_MISSING = "listed in CSV but missing"
R_CSV_UNLISTED = "not listed in CSV"
R_UNSAFE_ZIP = "unsafe path in zip"


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestConfig:
    pad_to_square: bool = True
    max_image_pixels: int = 80_000_000
    max_zip_uncompressed_bytes: int = 8 * 2**30
    percentile_low: float = 0.5
    percentile_high: float = 99.5

    def __post_init__(self) -> None:
        if int(self.max_image_pixels) <= 0:
            raise DrlError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if int(self.max_zip_uncompressed_bytes) <= 0:
            raise DrlError("max_zip_uncompressed_bytes must be positive, "
                           f"got {self.max_zip_uncompressed_bytes}")
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise DrlError("need 0 <= percentile_low < percentile_high <= 100, got "
                           f"{self.percentile_low} and {self.percentile_high}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IngestConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DrlError(f"unknown ingest setting(s): {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative id shown to users, e.g. "basophil/BA_1.jpg"
    label: str | None
    split: str | None
    source: str  # absolute file path, or "zip:/abs/a.zip::entry/name"


@dataclass
class Dataset:
    root: str
    layout: str  # "class-folders" | "flat" | "csv" | "zip:<inner layout>"
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # uint8 (height, width, 3)
    width: int
    height: int
    mode: str  # what the file held, e.g. "RGB 8-bit", "gray 16-bit"
    note: str | None


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    rel: str  # POSIX path relative to the dataset root
    source: str


def _is_junk(rel: str) -> bool:
    for part in rel.split("/"):
        low = part.lower()
        if low in _JUNK_NAMES or part.startswith("."):
            return True
    return False


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _sort_key(rel: str) -> tuple[str, ...]:
    return tuple(rel.split("/"))


def discover(data: str | os.PathLike, config: IngestConfig = IngestConfig()) -> Dataset:
    """Find the images under ``data`` (folder or ``.zip``) and their labels; see module docstring.

    Raises DrlError when ``data`` does not exist, is an unreadable/oversized zip, or holds no
    image at all.
    """
    path = Path(data).expanduser().absolute()
    if not path.exists():
        raise DrlError(f"{path} does not exist; give a folder of images or a .zip of one")
    skipped: list[tuple[str, str]] = []
    if path.is_dir():
        entries = _walk_folder(path, skipped)
        reader = _FolderReader(path)
    elif zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        entries, prefix = _zip_entries(path, config, skipped)
        reader = _ZipReader(path, prefix)
    else:
        raise DrlError(f"{path} is a file, not a folder or a .zip; give the folder holding the "
                       f"images (or a .zip of it)")

    layout, records = _assign_labels(entries, reader, skipped)
    if not records:
        supported = ", ".join(IMAGE_EXTENSIONS)
        seen = [p for p, reason in skipped if reason == R_EXTENSION]
        extra = (f" (found {len(seen)} other file(s), e.g. {seen[0]})" if seen else "")
        if layout == "csv":
            raise DrlError(f"no images found in {path}: none of the files listed in the CSV "
                           f"exist{extra}; filenames must be relative to the folder")
        raise DrlError(f"no images found in {path}{extra}; supported: {supported}")
    if path.is_file():
        layout = f"zip:{layout}"
    skipped.sort(key=lambda item: _sort_key(item[0]))
    return Dataset(root=str(path), layout=layout, records=records, skipped=skipped)


def _walk_folder(root: Path, skipped: list[tuple[str, str]]) -> list[_Entry]:
    """All non-junk files below ``root``, following folder symlinks once (biologists link class
    folders in from elsewhere) without looping."""
    entries: list[_Entry] = []
    seen_dirs: set[tuple[int, int]] = set()
    stack = [(root, "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            children = list(os.scandir(folder))
        except OSError as exc:
            skipped.append((rel_folder or ".", f"cannot read folder: {exc.strerror or exc}"))
            continue
        for child in children:
            rel = f"{rel_folder}/{child.name}" if rel_folder else child.name
            if _is_junk(child.name):
                continue
            try:
                is_dir = child.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                stack.append((Path(child.path), rel))
            else:
                entries.append(_Entry(rel, str(Path(child.path))))
    entries.sort(key=lambda e: _sort_key(e.rel))
    return entries


def _zip_name_is_unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    return any(part == ".." for part in norm.split("/"))


def _zip_entries(path: Path, config: IngestConfig,
                 skipped: list[tuple[str, str]]) -> tuple[list[_Entry], str]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DrlError(f"{path} is not a readable zip file ({exc}); re-create the archive or "
                       f"give the folder instead") from None

    files = [i for i in infos if not i.is_dir()]
    total = sum(i.file_size for i in files)
    if total > config.max_zip_uncompressed_bytes:
        raise DrlError(
            f"{path} would unpack to {_human_bytes(total)}, more than the limit of "
            f"{_human_bytes(config.max_zip_uncompressed_bytes)} (max_zip_uncompressed_bytes); "
            f"unzip it yourself and point drl at the folder, or raise the limit")

    safe: list[tuple[str, zipfile.ZipInfo]] = []
    for info in files:
        name = info.filename
        if _zip_name_is_unsafe(name):
            skipped.append((name, R_UNSAFE_ZIP))
            continue
        rel = "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
        if not rel or _is_junk(rel):
            continue
        safe.append((rel, info))

    # A zip of a folder has that folder as its only top-level entry: descend into it.
    prefix = ""
    tops = {rel.split("/", 1)[0] for rel, _ in safe}
    if len(tops) == 1 and all("/" in rel for rel, _ in safe):
        prefix = next(iter(tops)) + "/"

    entries: list[_Entry] = []
    seen: set[str] = set()
    for rel, info in safe:
        rel = rel[len(prefix):]
        if rel in seen:
            skipped.append((rel, "duplicate entry in zip"))
            continue
        seen.add(rel)
        if info.flag_bits & 0x1:
            skipped.append((rel, "encrypted zip entry"))
            continue
        if (info.file_size > _ZIP_RATIO_MIN_BYTES
                and info.file_size > _ZIP_MAX_RATIO * max(info.compress_size, 1)):
            ratio = info.file_size // max(info.compress_size, 1)
            skipped.append((rel, f"suspicious compression ratio in zip ({ratio}:1)"))
            continue
        entries.append(_Entry(rel, f"zip:{path}::{info.filename}"))
    entries.sort(key=lambda e: _sort_key(e.rel))
    return entries, prefix


class _FolderReader:
    def __init__(self, root: Path):
        self.root = root

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _ZipReader:
    def __init__(self, path: Path, prefix: str):
        self.path, self.prefix = path, prefix

    def read(self, rel: str) -> bytes:
        return read_bytes(ImageRecord(rel, None, None, f"zip:{self.path}::{self.prefix}{rel}"))


def _assign_labels(entries: list[_Entry], reader, skipped: list[tuple[str, str]]
                   ) -> tuple[str, list[ImageRecord]]:
    root_csvs = [e for e in entries if "/" not in e.rel and e.rel.lower().endswith(".csv")]
    table = None
    if len(root_csvs) == 1:
        table = _read_label_csv(root_csvs[0], reader, skipped)
    elif len(root_csvs) > 1:
        for e in root_csvs:
            skipped.append((e.rel, "not used as label table: more than one CSV at the root"))

    csv_names = {e.rel for e in root_csvs}  # already accounted for above
    images: list[_Entry] = []
    for e in entries:
        if _is_image_name(e.rel):
            images.append(e)
        elif e.rel not in csv_names:
            skipped.append((e.rel, R_EXTENSION))

    if table is not None:
        by_rel = {e.rel: e for e in images}
        by_lower: dict[str, _Entry] = {}
        for e in images:
            by_lower.setdefault(e.rel.lower(), e)
        records: list[ImageRecord] = []
        used: set[str] = set()
        for rel, label, split in table:
            # Exact match first; a case-only mismatch is what Windows/macOS users expect to work.
            entry = by_rel.get(rel) or by_lower.get(rel.lower())
            if entry is None:
                skipped.append((rel, R_CSV_MISSING))
            elif entry.rel in used:
                skipped.append((rel, "listed twice in CSV"))
            else:
                used.add(entry.rel)
                records.append(ImageRecord(entry.rel, label, split, entry.source))
        for e in images:
            if e.rel not in used:
                skipped.append((e.rel, R_CSV_UNLISTED))
        records.sort(key=lambda r: _sort_key(r.path))
        return "csv", records

    nested = any("/" in e.rel for e in images)
    records = []
    for e in images:
        label = None
        if "/" in e.rel:
            label = e.rel.split("/", 1)[0].strip() or None
        records.append(ImageRecord(e.rel, label, None, e.source))
    return ("class-folders" if nested else "flat"), records


def _read_label_csv(entry: _Entry, reader, skipped: list[tuple[str, str]]
                    ) -> list[tuple[str, str | None, str | None]] | None:
    """(relative filename, label, split) rows of the root CSV; None if it is no label table."""
    try:
        text = reader.read(entry.rel).decode("utf-8-sig")
    except (OSError, SkipImage, UnicodeDecodeError) as exc:
        skipped.append((entry.rel, f"not used as label table: cannot read it ({exc})"))
        return None
    first_line = text.split("\n", 1)[0]
    try:
        # European spreadsheet exports use ';'
        dialect = csv.Sniffer().sniff(first_line, delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        skipped.append((entry.rel, "not used as label table: empty CSV"))
        return None
    header = [h.strip().lower() for h in rows[0]]

    def column(candidates: tuple[str, ...]) -> int | None:
        for name in candidates:
            if name in header:
                return header.index(name)
        return None

    i_file = column(_CSV_FILENAME_COLUMNS)
    if i_file is None:
        skipped.append((entry.rel, "not used as label table: no filename/file/path column"))
        return None
    i_label, i_split = column(_CSV_LABEL_COLUMNS), column(_CSV_SPLIT_COLUMNS)

    def cell(row: list[str], i: int | None) -> str | None:
        if i is None or i >= len(row):
            return None
        return row[i].strip() or None

    table = []
    for row in rows[1:]:
        name = cell(row, i_file)
        if name is None:
            continue
        norm = name.replace("\\", "/")
        if _zip_name_is_unsafe(norm):
            skipped.append((name, "unsafe path in CSV"))
            continue
        rel = "/".join(p for p in norm.split("/") if p not in ("", "."))
        table.append((rel, cell(row, i_label), cell(row, i_split)))
    return table


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Reading bytes
# --------------------------------------------------------------------------------------------

_ZIP_CACHE: OrderedDict[tuple[str, int, int], zipfile.ZipFile] = OrderedDict()
_ZIP_CACHE_LOCK = threading.Lock()
_ZIP_CACHE_SIZE = 4


def _open_zip(zip_path: str) -> zipfile.ZipFile:
    """Keep a few zips open: parsing the central directory per image would dominate for
    thousands of small entries. ZipFile serialises reads of its shared handle itself."""
    st = os.stat(zip_path)
    key = (zip_path, st.st_mtime_ns, st.st_size)
    with _ZIP_CACHE_LOCK:
        zf = _ZIP_CACHE.get(key)
        if zf is not None:
            _ZIP_CACHE.move_to_end(key)
            return zf
        zf = zipfile.ZipFile(zip_path)
        _ZIP_CACHE[key] = zf
        while len(_ZIP_CACHE) > _ZIP_CACHE_SIZE:
            _, old = _ZIP_CACHE.popitem(last=False)
            old.close()
        return zf


def _split_zip_source(source: str) -> tuple[str, str]:
    zip_path, sep, entry = source[len("zip:"):].partition("::")
    if not sep:
        raise ValueError(f"malformed zip source: {source!r}")
    return zip_path, entry


def read_bytes(record: ImageRecord) -> bytes:
    """The file's bytes. Raises SkipImage when the file vanished or cannot be read."""
    source = record.source
    try:
        if source.startswith("zip:"):
            zip_path, entry = _split_zip_source(source)
            zf = _open_zip(zip_path)
            try:
                info = zf.getinfo(entry)
                # ZipExtFile stops at the declared size, which discover() already capped.
                with zf.open(info) as fh:
                    return fh.read()
            except KeyError:
                raise SkipImage("file not found in zip") from None
            except zipfile.BadZipFile as exc:
                raise SkipImage(f"corrupt zip entry ({exc})") from None
            except NotImplementedError as exc:
                raise SkipImage(f"unsupported zip compression ({exc})") from None
            except (zlib.error, EOFError):
                raise SkipImage("corrupt zip entry") from None
        with open(source, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SkipImage("file not found") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise SkipImage(f"cannot read file ({getattr(exc, 'strerror', None) or exc})") from None


def _read_head(record: ImageRecord, n: int) -> bytes:
    if record.source.startswith("zip:"):
        zip_path, entry = _split_zip_source(record.source)
        with _open_zip(zip_path).open(entry) as fh:
            return fh.read(n)
    with open(record.source, "rb") as fh:
        return fh.read(n)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class _Raw:
    """Pixels as stored: (H, W, C) with C in 1..4 (gray, gray+alpha, RGB, RGBA), native dtype."""

    pixels: np.ndarray
    mode: str
    notes: list[str]


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
    return abs(int(width)) * abs(int(height))


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
           intensity_range: tuple[float, float] | None = None) -> DecodedImage:
    """Decode one image file to uint8 RGB. Raises SkipImage(reason) when it cannot be used.

    ``intensity_range`` (from :func:`intensity_range`) maps >8-bit data to 8 bits; without it
    such data is scaled by its own percentiles and ``note`` says so.
    """
    raw = _decode_raw(data, config)
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
    report them.
    """
    records = dataset.records
    if not records or sample <= 0:
        return None
    picks = np.unique(np.linspace(0, len(records) - 1, min(sample, len(records))).round()
                      .astype(int))
    pooled: list[np.ndarray] = []
    for i in picks:
        record = records[int(i)]
        try:
            if not _may_be_high_bit_depth(_read_head(record, 32)):
                continue
            raw = _decode_raw(read_bytes(record), config)
        except (SkipImage, OSError, KeyError, zipfile.BadZipFile):
            continue
        pixels = raw.pixels
        if pixels.dtype == np.uint8:
            continue
        if pixels.shape[2] in (2, 4):
            pixels = pixels[..., :-1]
        flat = pixels.ravel()
        step = max(1, flat.size // _PIXELS_PER_IMAGE_FOR_RANGE)
        pooled.append(flat[::step].astype(np.float64))
    if not pooled:
        return None
    return _percentiles(np.concatenate(pooled), config)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


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
