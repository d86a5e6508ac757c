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
    anything is read; single entries declared larger than ``max_file_bytes``, or with a deflate
    ratio no image has, are skipped; entries are read in chunks that stop at the smaller of the
    declared size and the cap (so the archive total stays under its cap even when a declared
    size lies). An encrypted zip is refused ("encrypted zip: not supported, unzip it first"). An
    entry name flagged UTF-8 that is not valid UTF-8 is read as cp437, as unzip and 7-Zip do,
    instead of making the whole archive unreadable.

One-file-per-channel layouts (``<object>_<channel>.tif``, Cell Painting style) are grouped into
one multi-channel image per object only on clear evidence (channel names such as DAPI or w1,
single-channel files of one size, read from headers), folder by folder; anything else is one
image per file. The rule is in :func:`_group_channels`; ``Dataset.notes`` says which reading was
chosen and why, and ``ImageRecord.note`` why a file in a grouped folder was left on its own.

Folders and files that cannot be read (no permission) are skipped with the reason; the rest of
the input is read.

Only regular files are read: named pipes, sockets, devices and symbolic links to them (or broken
links) are skipped with a reason, without ever being opened (so a pipe cannot block the run and
``/dev/zero`` cannot fill memory), and so are files larger than ``max_file_bytes``. A file whose
name is not valid UTF-8 is skipped with a reason (its name could not be stored in the tables);
the path shown for it escapes the bad bytes (``\\xe9``). Folders that are drl run folders (they
hold a manifest drl wrote), and the folders given as ``exclude`` (the output folder of the run
being made), are not searched for images: a run written inside its input must not read its own
thumbnails next time.

Records are sorted by their relative path, so every run sees the same order. Hidden files and OS
junk (``__MACOSX``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``._*``) are ignored silently;
other non-image files are listed in ``Dataset.skipped`` ("not an image file extension").

"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import json
import os
import re
import stat
import struct
import threading
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drlcore.errors import DrlError, SkipImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "IngestConfig",
    "ImageRecord",
    "Dataset",
    "discover",
    "open_zip",
    "split_zip_source",
    "read_regular_file",
    "read_zip_member",
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
R_NOT_UTF8 = "file name is not valid UTF-8 (rename it to read it)"
R_RUN_FOLDER = "a drl run folder (output, not input)"
R_ENCRYPTED = "encrypted zip entry"
R_CSV_ROW = "CSV row skipped"
DEFAULT_CHANNEL_PATTERN = r"^(?P<object>.+)_(?P<channel>[^_]+)$"


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestConfig:
    pad_to_square: bool = True
    max_image_pixels: int = 80_000_000
    max_zip_uncompressed_bytes: int = 8 * 2**30
    # Per file, on disk or inflated from a zip: an 80-megapixel 16-bit RGB TIFF is ~0.5 GiB.
    max_file_bytes: int = 2**30
    percentile_low: float = 0.5
    percentile_high: float = 99.5
    # Display colours of fluorescence channels, the ``--channels`` spec (drlcore.data.channels).
    channels: str | None = None
    # One-file-per-channel layouts: the rule that groups ``<object>_<channel>.tif`` files into
    # one multi-channel image (module docstring); None or "" turns grouping off.
    channel_pattern: str | None = DEFAULT_CHANNEL_PATTERN

    def __post_init__(self) -> None:
        from drlcore.data.channels import parse_channels

        parse_channels(self.channels)  # a malformed spec is refused before any image is read
        if self.channel_pattern:
            try:
                groups = re.compile(self.channel_pattern).groupindex
            except re.error as exc:
                raise DrlError(f"channel_pattern {self.channel_pattern!r} is not a valid "
                               f"regular expression: {exc}") from None
            if not {"object", "channel"} <= set(groups):
                raise DrlError(f"channel_pattern {self.channel_pattern!r} needs the named groups "
                               "(?P<object>...) and (?P<channel>...)")
        if int(self.max_image_pixels) <= 0:
            raise DrlError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if int(self.max_file_bytes) <= 0:
            raise DrlError(f"max_file_bytes must be positive, got {self.max_file_bytes}")
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
    # What discovery has to say about this file, e.g. why it was not grouped with the channel
    # files beside it; the features stage puts it in the image's ``note``.
    note: str | None = None


@dataclass
class Dataset:
    root: str
    layout: str  # "class-folders" | "flat" | "csv" | "zip:<inner layout>"
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Set when images are channel groups (one file per channel): the channel names, in order.
    channel_names: list[str] | None = None
    # How files became objects: "per-file", "per-channel" (channel groups) or "mixed"; and the
    # notes saying which reading was chosen and why (the run's notes, the app's preview).
    reading: str = "per-file"
    notes: list[str] = field(default_factory=list)

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


def discover(data: str | os.PathLike, config: IngestConfig = IngestConfig(),
             exclude: tuple[str | os.PathLike, ...] = ()) -> Dataset:
    """Find the images under ``data`` (folder or ``.zip``) and their labels; see module docstring.

    ``exclude``: folders inside ``data`` to leave out (the output folder of this run).
    Raises DrlError when ``data`` does not exist, is not a folder or a regular file, is an
    unreadable, encrypted or oversized zip, or holds no image at all.
    """
    path = Path(data).expanduser().absolute()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DrlError(f"{path} does not exist; give a folder of images or a .zip of one") from None
    except OSError as exc:
        raise DrlError(f"cannot read {path}: {exc.strerror or exc}") from None
    if _display(str(path)) != str(path):
        raise DrlError(f"the path {_display(str(path))} is not valid UTF-8 (\\x.. marks the bad "
                       f"bytes); rename the folder so its name can be stored with the results")
    skipped: list[tuple[str, str]] = []
    if stat.S_ISDIR(st.st_mode):
        excluded = {os.path.realpath(p) for p in exclude}
        entries = _walk_folder(path, skipped, config, excluded)
        reader = _FolderReader(path, config)
    elif not stat.S_ISREG(st.st_mode):
        raise DrlError(f"{path} is a {_kind(st.st_mode)}, not a folder or a .zip; give the "
                       f"folder holding the images (or a .zip of it)")
    elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        entries, prefix = _zip_entries(path, config, skipped)
        reader = _ZipReader(path, prefix, config)
    else:
        raise DrlError(f"{path} is a file, not a folder or a .zip; give the folder holding the "
                       f"images (or a .zip of it)")

    layout, records = _assign_labels(entries, reader, skipped)
    records, channel_names, reading, notes = _group_channels(records, config, skipped)
    if not records and any(reason == R_ENCRYPTED for _, reason in skipped):
        raise DrlError(f"{path}: encrypted zip: not supported, unzip it first (with its "
                       f"password) and give the folder")
    if not records:
        supported = ", ".join(IMAGE_EXTENSIONS)
        seen = [p for p, reason in skipped if reason == R_EXTENSION]
        extra = (f" (found {len(seen)} other file(s), e.g. {seen[0]})" if seen else "")
        if layout == "csv":
            raise DrlError(f"no images found in {path}: none of the files listed in the CSV "
                           f"exist{extra}; filenames must be relative to the folder")
        raise DrlError(f"no images found in {path}{extra}; supported: {supported}")
    if stat.S_ISREG(st.st_mode):
        layout = f"zip:{layout}"
    skipped.sort(key=lambda item: _sort_key(item[0]))
    return Dataset(root=str(path), layout=layout, records=records, skipped=skipped,
                   channel_names=channel_names, reading=reading, notes=notes)


CHANNELS_PREFIX = "channels:"
R_INCOMPLETE_GROUP = "incomplete channel group"
MAX_GROUP_CHANNELS = 8


def channel_group_source(names: list[str], sources: list[str]) -> str:
    """The ``source`` of a channel group: every channel file, by channel name (JSON)."""
    return CHANNELS_PREFIX + json.dumps({"names": list(names), "sources": list(sources)},
                                        ensure_ascii=False, separators=(",", ":"))


def split_channel_source(source: str) -> tuple[list[str], list[str]] | None:
    """(names, sources) of a channel group's ``source``; None for a single file."""
    if not source.startswith(CHANNELS_PREFIX):
        return None
    value = json.loads(source[len(CHANNELS_PREFIX):])
    return list(value["names"]), list(value["sources"])


def _group_channels(records: list[ImageRecord], config: IngestConfig,
                    skipped: list[tuple[str, str]]
                    ) -> tuple[list[ImageRecord], list[str] | None, str, list[str]]:
    """One-file-per-channel layouts (Cell Painting style) become one record per object, but
    only on clear evidence: ordinary names such as ``BA_12345.jpg`` or ``well1_3.jpg`` have
    the same ``<object>_<token>`` shape and must stay one image per file.

    Rule, decided per folder: file stems (names without extension) are matched against
    ``config.channel_pattern`` (default ``^(?P<object>.+)_(?P<channel>[^_]+)$``). With the
    default rule a file is a channel candidate only when its token is a channel name
    (:func:`is_channel_token`: ch1, w2, c0, DAPI, DNA, GFP, BF, Mito, ...); a pattern the
    user gave counts every match. The folder's channels are the tokens present for at least
    half of its objects (2 to 8 of them). The folder is grouped when (default rule only)
    nearly every object has every channel (at most ``max(1, 10 %)`` lacking one) and nearly
    every complete object's files are single-channel (grey) images of one size, checked from
    the file headers alone (:func:`_image_header`). Then:

    - each complete object whose files pass the header check becomes one record, path
      ``<folder>/<object>``, channels ordered by name (:func:`channel_group_source`);
    - an object lacking a channel (or whose files carry different labels) is skipped with
      "incomplete channel group (...)";
    - every other file (colour, another size, a name that is no channel) stays one image, with
      a ``note`` saying why it was not grouped.

    Otherwise every file of the folder is one image. Colour files are never grouped. Returns
    the records, the channel names (of the first grouped folder), the reading (``per-file``,
    ``per-channel`` or ``mixed``) and notes, in words, on which reading was chosen and why.
    """
    if not config.channel_pattern:
        return records, None, "per-file", ["each file read as one image (channel grouping "
                                           "turned off)"]
    pattern = re.compile(config.channel_pattern)
    explicit = config.channel_pattern != DEFAULT_CHANNEL_PATTERN
    folders: dict[str, list[ImageRecord]] = {}
    for r in records:
        folders.setdefault(r.path.rpartition("/")[0], []).append(r)
    out: list[ImageRecord] = []
    names_seen: list[str] | None = None
    grouped: list[tuple[str, list[str], int, int]] = []  # folder, channels, objects, loose files
    refused: list[tuple[str, str]] = []  # folder, why its files stay one image each
    for folder, members in folders.items():
        decision = _group_folder(folder, members, pattern, explicit, config, skipped)
        if decision.channels is None:
            out.extend(members)
            if decision.why:
                refused.append((folder, decision.why))
            continue
        names_seen = names_seen or decision.channels
        out.extend(decision.records)
        n_objects = sum(1 for r in decision.records if r.source.startswith(CHANNELS_PREFIX))
        grouped.append((folder, decision.channels, n_objects,
                        len(decision.records) - n_objects))
    out.sort(key=lambda r: _sort_key(r.path))
    notes = _grouping_notes(grouped, refused, explicit, len(folders))
    if not grouped:
        reading = "per-file"
    elif any(loose for *_, loose in grouped) or len(grouped) < len(folders):
        reading = "mixed"
    else:
        reading = "per-channel"
    return out, names_seen, reading, notes


@dataclass
class _FolderDecision:
    channels: list[str] | None  # None: every file of the folder is one image
    records: list[ImageRecord]
    why: str | None = None  # why the folder was not grouped, when a name looked like it


def _folder_label(folder: str) -> str:
    return f"folder '{folder}'" if folder else "the top folder"


def _group_folder(folder: str, members: list[ImageRecord], pattern: re.Pattern, explicit: bool,
                  config: IngestConfig, skipped: list[tuple[str, str]]) -> _FolderDecision:
    objects: dict[str, dict[str, ImageRecord]] = {}
    loose: dict[str, str] = {}  # record path -> why it stays one image (if the folder groups)
    example = None  # a name that fits the pattern with a token that is no channel name
    for r in members:
        stem = r.path.rpartition("/")[2].rpartition(".")[0]
        m = pattern.match(stem)
        if m is None or not m.group("object") or not m.group("channel"):
            loose[r.path] = "its name is not <object>_<channel>"
            continue
        obj, ch = m.group("object"), m.group("channel")
        if not explicit and not is_channel_token(ch):
            loose[r.path] = f"'{ch}' is not a channel name"
            example = example or (r.path.rpartition("/")[2], ch)
            continue
        if ch in objects.setdefault(obj, {}):
            loose[r.path] = f"a second file for channel {ch} of {obj}"
            continue
        objects[obj][ch] = r
    objects = {o: chans for o, chans in objects.items() if chans}
    if not objects:
        why = None
        if example is not None:
            why = (f"names like '{example[0]}' end in '{example[1]}', which is not a channel "
                   f"name (ch1, w1, c0, DAPI, GFP, BF...)")
        return _FolderDecision(None, members, why)
    n = len(objects)
    counts: dict[str, int] = {}
    for chans in objects.values():
        for ch in chans:
            counts[ch] = counts.get(ch, 0) + 1
    channels = sorted(ch for ch, k in counts.items() if 2 * k >= n)
    if not 2 <= len(channels) <= MAX_GROUP_CHANNELS:
        what = (f"{len(channels)} channel names" if channels else "no channel name")
        return _FolderDecision(None, members, f"{what} shared by at least half of its objects "
                                              f"(2 to {MAX_GROUP_CHANNELS} are needed)")
    complete = {o: chans for o, chans in objects.items() if all(ch in chans for ch in channels)}
    allowed = max(1, n // 10)
    if not explicit and n - len(complete) > allowed:
        return _FolderDecision(None, members, f"only {len(complete)} of its {n} objects have "
                                              f"all of the channels {', '.join(channels)}")
    # The header check: a colour file or channels of different sizes are no channel group.
    failed: dict[str, str] = {}
    for obj, chans in complete.items():
        headers = [_image_header(chans[ch].source, config) for ch in channels]
        if any(h is None for h in headers):
            failed[obj] = "a channel file's header cannot be read"
        elif any(kind != "grey" for kind, _ in headers):
            failed[obj] = "a colour image (colour files are never grouped)"
        elif len({size for _, size in headers}) > 1:
            failed[obj] = "its channel files differ in size"
        if not explicit and len(failed) > allowed:
            reason = Counter(failed.values()).most_common(1)[0][0]
            return _FolderDecision(None, members, f"its channel-named files are not single-"
                                                  f"channel images of one size ({reason})")
    out: list[ImageRecord] = []
    prefix = f"{folder}/" if folder else ""
    for obj, chans in objects.items():
        rel = prefix + obj
        extra = {ch: r for ch, r in chans.items() if ch not in channels}
        for ch, r in extra.items():
            loose[r.path] = f"'{ch}' is not one of this folder's channels"
        if obj in failed:
            for ch in channels:
                loose[chans[ch].path] = failed[obj]
            continue
        missing = [ch for ch in channels if ch not in chans]
        if missing:
            skipped.append((rel, f"{R_INCOMPLETE_GROUP} (missing channel {', '.join(missing)})"))
            continue
        labels = {chans[ch].label for ch in channels}
        if len(labels) > 1:
            skipped.append((rel, f"{R_INCOMPLETE_GROUP} (its channel files have different "
                                 "labels)"))
            continue
        first = chans[channels[0]]
        out.append(ImageRecord(path=rel, label=first.label, split=first.split,
                               source=channel_group_source(channels,
                                                           [chans[ch].source for ch in channels])))
    for r in members:
        if r.path in loose:
            note = (f"not grouped with the channel files of {_folder_label(folder)}: "
                    f"{loose[r.path]}")
            out.append(dataclasses.replace(r, note=note))
    return _FolderDecision(channels, out)


def _grouping_notes(grouped: list[tuple[str, list[str], int, int]],
                    refused: list[tuple[str, str]], explicit: bool, n_folders: int) -> list[str]:
    """The reading discovery chose, and why, in words (the run's notes and the app preview)."""
    notes = []
    rule = "the channel pattern given" if explicit else "channel names"
    for folder, channels, n_objects, n_loose in grouped[:5]:
        text = (f"{_folder_label(folder)}: read as one file per channel, {n_objects:,} "
                f"object(s) with channels {', '.join(channels)} (names end in {rule}; each "
                f"object's files are single-channel images of one size)")
        if n_loose:
            text += f"; {n_loose:,} other file(s) read as one image each (see their notes)"
        notes.append(text)
    if len(grouped) > 5:
        notes.append(f"... and {len(grouped) - 5} more folder(s) read as channel files")
    if refused:
        folder, why = refused[0]
        more = f" and {len(refused) - 1} more folder(s)" if len(refused) > 1 else ""
        notes.append(f"each file read as one image in {_folder_label(folder)}{more}: {why}"
                     + ("" if explicit else "; give a channel pattern (--channel-pattern) to "
                        "group one-file-per-channel names anyway"))
    # Nothing looked like channel files: one image per file goes without saying
    # (``Dataset.reading`` still records it).
    return notes


# Tokens that say "this file is one channel". Numbers alone are not evidence: "well1_3.jpg" and
# "BA_12345.jpg" are how labs number ordinary images.
_CHANNEL_TOKEN = re.compile(r"^(?:ch|c|w|channel|chan|wl|wavelength)[-_ ]?\d{1,2}$"
                            r"|^(?:alexa|af)[-_ ]?\d{3}$", re.IGNORECASE)
KNOWN_CHANNEL_NAMES = frozenset("""
    dapi hoechst dna nuclei nucleus nuc draq5 syto syto14 pi propidium
    gfp egfp rfp yfp cfp bfp mcherry tdtomato fitc tritc cy2 cy3 cy5 cy7 texasred txred
    bf brightfield darkfield df dic phase phasecontrast ssc
    actin factin phalloidin tubulin er mito mitotracker agp rna wga cona golgi lyso lysosome
    membrane cyto cytoplasm
""".split())


def is_channel_token(token: str) -> bool:
    """True for a name that says "one channel": ch1..chN, c0..cN, w1..wN, Alexa488, or a stain
    or modality (DAPI, Hoechst, DNA, GFP, RFP, BF, brightfield, darkfield, actin, tubulin, ER,
    Mito, AGP, RNA, ...; case ignored; CellProfiler's ``OrigDNA`` counts as ``DNA``)."""
    token = token.strip()
    if _CHANNEL_TOKEN.match(token):
        return True
    low = token.lower().replace("-", "").replace(" ", "")
    if low.startswith("orig") and low[4:] in KNOWN_CHANNEL_NAMES:
        return True
    return low in KNOWN_CHANNEL_NAMES


_GREY_PIL_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _image_header(source: str, config: IngestConfig) -> tuple[str, tuple[int, int]] | None:
    """("grey" | "colour", (width, height)) from a file's header alone (Pillow's lazy open,
    tifffile's first page), no pixel decoded; None when it cannot be read. A TIFF is grey when
    its first page holds one sample per pixel (MINISBLACK or MINISWHITE)."""
    import warnings

    import tifffile
    from PIL import Image

    try:
        if source.startswith("zip:"):
            zip_path, entry = split_zip_source(source)
            zf = open_zip(zip_path)
            fh: Any = io.BytesIO(read_zip_member(zf, zf.getinfo(entry), config.max_file_bytes))
        else:
            if not stat.S_ISREG(os.stat(source).st_mode):
                return None
            fh = open(source, "rb")
        with fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a header that warns is judged, not shown
            magic = fh.read(4)
            fh.seek(0)
            if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                with tifffile.TiffFile(fh) as tf:
                    page = tf.pages.first
                    grey = int(page.samplesperpixel) == 1 and int(page.photometric) in (0, 1)
                    return ("grey" if grey else "colour"), (int(page.imagewidth),
                                                            int(page.imagelength))
            with Image.open(fh) as im:
                return ("grey" if im.mode in _GREY_PIL_MODES else "colour"), tuple(im.size)
    except Exception:  # noqa: BLE001 - any unreadable header means "not evidence"; decode reports
        return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def _not_regular(mode: int) -> str:
    return f"not a regular file ({_kind(mode)})"


def _too_large(size: int, limit: int) -> str:
    return f"file too large ({_human_bytes(size)}; limit {_human_bytes(limit)}, max_file_bytes)"


def _display(name: str) -> str:
    """``name`` as UTF-8 text; bytes that are not UTF-8 (kept by the OS as surrogate escapes)
    are shown as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_run_folder(path: str) -> bool:
    from drlcore.data import rundir

    return rundir.is_run_dir(path)


def _walk_folder(root: Path, skipped: list[tuple[str, str]], config: IngestConfig,
                 excluded: set[str] = frozenset()) -> list[_Entry]:
    """All non-junk regular files below ``root``, following folder symlinks once (biologists
    link class folders in from elsewhere) without looping. Nothing is opened here: what is not
    a regular file, or is too large, is skipped from its ``stat``."""
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
            rel = f"{rel_folder}/{_display(child.name)}" if rel_folder else _display(child.name)
            if _is_junk(child.name):
                continue
            try:
                st = child.stat()  # follows symlinks
            except FileNotFoundError:
                skipped.append((rel, "broken symbolic link"))
                continue
            except OSError as exc:
                skipped.append((rel, f"cannot read: {exc.strerror or exc}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if os.path.realpath(child.path) in excluded:
                    continue  # this run's own output folder
                try:
                    is_run = _is_run_folder(child.path)
                except OSError:  # e.g. no permission to look inside: scandir says why
                    is_run = False
                if is_run:
                    skipped.append((rel, R_RUN_FOLDER))
                    continue
                stack.append((Path(child.path), rel))
            elif _display(child.path) != child.path:
                skipped.append((rel, R_NOT_UTF8))
            elif not stat.S_ISREG(st.st_mode):
                skipped.append((rel, _not_regular(st.st_mode)))
            elif st.st_size > config.max_file_bytes:
                skipped.append((rel, _too_large(st.st_size, config.max_file_bytes)))
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
        zf = _open_zipfile(str(path))
        try:
            infos = zf.infolist()
        finally:
            _close_zip(zf)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            struct.error) as exc:
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
            skipped.append((rel, R_ENCRYPTED))
            continue
        if info.file_size > config.max_file_bytes:
            skipped.append((rel, _too_large(info.file_size, config.max_file_bytes)))
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
    def __init__(self, root: Path, config: IngestConfig):
        self.root, self.config = root, config

    def read(self, rel: str) -> bytes:
        return read_regular_file(str(self.root / rel), self.config.max_file_bytes)


class _ZipReader:
    def __init__(self, path: Path, prefix: str, config: IngestConfig):
        self.path, self.prefix, self.config = path, prefix, config

    def read(self, rel: str) -> bytes:
        zf = open_zip(str(self.path))
        return read_zip_member(zf, zf.getinfo(self.prefix + rel), self.config.max_file_bytes)


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
    rows = []
    reader_ = csv.reader(io.StringIO(text), delimiter=delimiter)
    while True:
        try:
            row = next(reader_)
        except StopIteration:
            break
        except csv.Error as exc:
            # e.g. a field over csv.field_size_limit() (128 KiB): that row only, not the table.
            skipped.append((entry.rel, f"{R_CSV_ROW} (line {reader_.line_num}: {exc})"))
            continue
        rows.append(row)
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


def _bad_utf8_flag_offsets(fh) -> list[int]:
    """File offsets of the flag byte holding the "name is UTF-8" bit (general purpose bit 11),
    in the central directory and the local header, of every entry whose name carries that bit
    but is not valid UTF-8. Clearing the bit there makes zipfile read the name as cp437."""
    fh.seek(0, 2)
    size = fh.tell()
    tail_len = min(size, 22 + 0xFFFF + 20)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or i + 22 > len(tail):
        return []
    end = size - tail_len + i
    n_entries, cd_size, cd_offset = struct.unpack("<HII", tail[i + 10:i + 20])
    if 0xFFFFFFFF in (cd_size, cd_offset) or n_entries == 0xFFFF:
        locator = tail[i - 20:i] if i >= 20 else b""
        if locator[:4] == b"PK\x06\x07":
            end = struct.unpack("<Q", locator[8:16])[0]
            fh.seek(end)
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06":
                cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
    concat = end - cd_size - cd_offset  # bytes before the archive (self-extractors)
    fh.seek(cd_offset + concat)
    cd = fh.read(cd_size)
    offsets, p = [], 0
    while p + 46 <= len(cd) and cd[p:p + 4] == b"PK\x01\x02":
        flags = struct.unpack("<H", cd[p + 8:p + 10])[0]
        csize, usize = struct.unpack("<II", cd[p + 20:p + 28])
        n_name, n_extra, n_comment = struct.unpack("<HHH", cd[p + 28:p + 34])
        local = struct.unpack("<I", cd[p + 42:p + 46])[0]
        name = cd[p + 46:p + 46 + n_name]
        if flags & 0x800:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                if local == 0xFFFFFFFF:
                    local = _zip64_local_offset(cd[p + 46 + n_name:p + 46 + n_name + n_extra],
                                                usize == 0xFFFFFFFF, csize == 0xFFFFFFFF)
                offsets.append(cd_offset + concat + p + 9)
                if local is not None:
                    offsets.append(local + concat + 7)
        p += 46 + n_name + n_extra + n_comment
    return sorted(offsets)


def _zip64_local_offset(extra: bytes, has_usize: bool, has_csize: bool) -> int | None:
    q = 0
    while q + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[q:q + 4])
        if tag == 0x0001:
            skip = 8 * (has_usize + has_csize)
            if length >= skip + 8:
                return struct.unpack("<Q", extra[q + 4 + skip:q + 12 + skip])[0]
            return None
        q += 4 + length
    return None


class _Cp437Names:
    """A read-only zip file that reads with the UTF-8 name bit cleared at given offsets."""

    def __init__(self, path: str):
        self.name = path
        self._fh = open(path, "rb")
        try:
            self._offsets = _bad_utf8_flag_offsets(self._fh)
        except BaseException:
            self._fh.close()
            raise
        self._fh.seek(0)

    def read(self, n: int = -1) -> bytes:
        start = self._fh.tell()
        data = self._fh.read(n)
        lo = bisect.bisect_left(self._offsets, start)
        hi = bisect.bisect_left(self._offsets, start + len(data))
        if lo == hi:
            return data
        patched = bytearray(data)
        for offset in self._offsets[lo:hi]:
            patched[offset - start] &= 0xFF ^ 0x08  # bit 11 of the little-endian flags
        return bytes(patched)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._fh.close()


def _open_zipfile(path: str) -> zipfile.ZipFile:
    """``ZipFile(path)``, but an entry name flagged UTF-8 that is not valid UTF-8 is read as
    cp437 (what unzip and 7-Zip do) instead of making the whole archive unreadable."""
    try:
        return zipfile.ZipFile(path)
    except UnicodeDecodeError:
        pass
    fh = _Cp437Names(path)
    try:
        zf = zipfile.ZipFile(fh)
    except BaseException:
        fh.close()
        raise
    zf._drl_file = fh  # closed with the archive by _close_zip
    return zf


def _close_zip(zf: zipfile.ZipFile) -> None:
    zf.close()
    fh = getattr(zf, "_drl_file", None)
    if fh is not None:
        fh.close()


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
        zf = _open_zipfile(zip_path)
        _ZIP_CACHE[key] = zf
        while len(_ZIP_CACHE) > _ZIP_CACHE_SIZE:
            _, old = _ZIP_CACHE.popitem(last=False)
            _close_zip(old)
        return zf


def split_zip_source(source: str) -> tuple[str, str]:
    zip_path, sep, entry = source[len("zip:"):].partition("::")
    if not sep:
        raise ValueError(f"malformed zip source: {source!r}")
    return zip_path, entry


# --------------------------------------------------------------------------------------------
# Reading safely
# --------------------------------------------------------------------------------------------


def read_regular_file(path: str, max_bytes: int, head: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``max_bytes``; only
    the first ``head`` bytes when given.

    Checked with ``stat`` before opening, so a named pipe or device is never opened (opening a
    pipe blocks until a writer comes); opened with ``O_NONBLOCK`` and checked again with
    ``fstat`` in case the file was swapped in between; read with a bound, in case it grew.
    Raises SkipImage with the reason; OSError for other read failures.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SkipImage("file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise SkipImage(_not_regular(st.st_mode))
    if st.st_size > max_bytes:
        raise SkipImage(_too_large(st.st_size, max_bytes))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SkipImage(_not_regular(st.st_mode))
        data = fh.read(max_bytes + 1 if head is None else min(head, max_bytes))
    if len(data) > max_bytes:
        raise SkipImage(_too_large(len(data), max_bytes))
    return data


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """The inflated bytes of one zip entry, streamed in chunks and never more than the smaller
    of its declared size and ``max_bytes``: a declared size that lies cannot inflate past what
    discovery accepted (zipfile itself also stops at the declared size and checks the CRC)."""
    if info.flag_bits & 0x1:
        raise SkipImage(R_ENCRYPTED)
    if info.file_size > max_bytes:
        raise SkipImage(_too_large(info.file_size, max_bytes))
    limit = info.file_size
    chunks, total = [], 0
    with zf.open(info) as fh:
        while chunk := fh.read(min(1 << 20, limit - total + 1)):
            total += len(chunk)
            if total > limit:
                raise SkipImage("zip entry inflates past its declared size")
            chunks.append(chunk)
    return b"".join(chunks)
