"""Discovery: find the images a biologist points us at, and their labels.

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

"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DrlError, SkipImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "IngestConfig",
    "ImageRecord",
    "Dataset",
    "discover",
    "open_zip",
    "split_zip_source",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin"}
_CSV_FILENAME_COLUMNS = ("filename", "file", "path")
_CSV_LABEL_COLUMNS = ("label", "class")
_CSV_SPLIT_COLUMNS = ("split",)
# Deflate cannot exceed ~1032:1; an image entry near that is a constant blob, i.e. a zip bomb.
_ZIP_MAX_RATIO = 500
_ZIP_RATIO_MIN_BYTES = 8 * 2**20

# Reasons are part of the output (skipped.csv); keep them stable.
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
        from drlcore.config import from_dict

        return from_dict(cls, values, "ingest")

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
        with open_zip(str(self.path)).open(self.prefix + rel) as fh:
            return fh.read()


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
# Opening zips
# --------------------------------------------------------------------------------------------

_ZIP_CACHE: OrderedDict[tuple[str, int, int], zipfile.ZipFile] = OrderedDict()
_ZIP_CACHE_LOCK = threading.Lock()
_ZIP_CACHE_SIZE = 4


def open_zip(zip_path: str) -> zipfile.ZipFile:
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


def split_zip_source(source: str) -> tuple[str, str]:
    zip_path, sep, entry = source[len("zip:"):].partition("::")
    if not sep:
        raise ValueError(f"malformed zip source: {source!r}")
    return zip_path, entry
