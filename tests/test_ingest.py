"""Image ingestion: layouts, formats, intensity scaling, geometry and a corpus of bad input.

Everything is generated in tmp_path from small skimage sample images or numpy drawings.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile
from skimage import data as skdata
from skimage.draw import disk

from drlcore.errors import DrlError, SkipImage
from drlcore.data.ingest import (
    Dataset,
    ImageRecord,
    IngestConfig,
    decode,
    discover,
    intensity_range,
    prepare,
    read_bytes,
    thumbnail,
    to_square,
)

# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------


def _rgb() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[::8, ::8])  # 64x64x3


def _gray() -> np.ndarray:
    return np.ascontiguousarray(skdata.coins()[::8, ::8])  # 38x48


def _cat() -> np.ndarray:
    return np.ascontiguousarray(skdata.chelsea()[::6, ::6])  # 50x76x3


def _encode(arr: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr, **kwargs)
    return buffer.getvalue()


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _zip_folder(folder: Path, zip_path: Path, top: str | None = None, junk: bool = True) -> Path:
    """Zip ``folder`` the way Finder/Explorer do (directory entries, optional __MACOSX junk)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        prefix = f"{top}/" if top else ""
        if top:
            zf.writestr(prefix, b"")
        for path in sorted(folder.rglob("*")):
            arcname = prefix + path.relative_to(folder).as_posix()
            if path.is_dir():
                zf.writestr(arcname + "/", b"")
            else:
                zf.write(path, arcname)
                if junk:
                    zf.writestr(f"__MACOSX/{prefix}._{path.name}", b"\x00\x05\x16\x07")
    return zip_path


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (with a correct CRC) claims width x height pixels."""
    png = bytearray(_encode(np.zeros((1, 1), np.uint8), "PNG"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height pixels."""
    jpeg = bytearray(_encode(np.zeros((8, 8), np.uint8), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _make_class_folders(root: Path) -> None:
    _write(root / "basophil" / "b2.png", _encode(_rgb(), "PNG"))
    _write(root / "basophil" / "b1.jpg", _encode(_cat(), "JPEG"))
    _write(root / "eosinophil" / "deeper" / "e1.bmp", _encode(_rgb(), "BMP"))
    _write(root / "eosinophil" / "e0.tif", _tiff(_gray()))
    _write(root / "stray.png", _encode(_gray(), "PNG"))
    _write(root / "notes.txt", b"stained 2024-01-05")
    # OS junk, ignored silently
    _write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(root / "basophil" / "Thumbs.db", b"\xd0\xcf\x11\xe0")
    _write(root / "eosinophil" / "desktop.ini", b"[.ShellClassInfo]")
    _write(root / "basophil" / "._b2.png", b"\x00\x05\x16\x07")
    _write(root / "__MACOSX" / "basophil" / "._b1.jpg", b"\x00\x05\x16\x07")
    _write(root / ".hidden" / "x.png", _encode(_rgb(), "PNG"))


def _make_csv_layout(root: Path) -> None:
    _write(root / "img" / "a.png", _encode(_rgb(), "PNG"))
    _write(root / "img" / "b.png", _encode(_gray(), "PNG"))
    _write(root / "c.jpg", _encode(_cat(), "JPEG"))
    _write(root / "unlisted.png", _encode(_gray(), "PNG"))
    # Header in another case, a Windows separator, a blank label, a missing file.
    _write(root / "labels.csv",
           b"Filename, Label ,split\r\n"
           b"img\\a.png,healthy,train\r\n"
           b"img/b.png,sick,test\r\n"
           b"c.jpg,,train\r\n"
           b"gone.png,sick,train\r\n")


def _summary(ds: Dataset) -> tuple:
    return [(r.path, r.label, r.split) for r in ds.records], sorted(ds.skipped)


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def test_class_folders_layout(tmp_path):
    _make_class_folders(tmp_path)
    ds = discover(tmp_path)
    assert ds.layout == "class-folders"
    assert ds.root == str(tmp_path)
    records, skipped = _summary(ds)
    assert records == [
        ("basophil/b1.jpg", "basophil", None),
        ("basophil/b2.png", "basophil", None),
        ("eosinophil/deeper/e1.bmp", "eosinophil", None),  # deeper folders count for the class
        ("eosinophil/e0.tif", "eosinophil", None),
        ("stray.png", None, None),  # beside class folders: kept, unlabelled
    ]
    assert skipped == [("notes.txt", "not an image file extension")]  # junk is silent
    assert ds.labels == ["basophil", "eosinophil"]
    assert ds.records[0].source == str(tmp_path / "basophil" / "b1.jpg")
    assert read_bytes(ds.records[0]) == (tmp_path / "basophil" / "b1.jpg").read_bytes()


def test_class_folder_names_are_stripped_and_order_is_deterministic(tmp_path):
    for name in ["Zeta ", " alpha", "mid"]:
        for i in (10, 2, 1):
            _write(tmp_path / name / f"img{i}.png", _encode(_gray(), "PNG"))
    first, second = discover(tmp_path), discover(tmp_path)
    assert first == second
    assert first.labels == ["Zeta", "alpha", "mid"]
    paths = [r.path for r in first.records]
    assert paths == sorted(paths, key=lambda p: tuple(p.split("/")))


def test_flat_layout(tmp_path):
    _write(tmp_path / "b.png", _encode(_gray(), "PNG"))
    _write(tmp_path / "A.JPG", _encode(_cat(), "JPEG"))  # extension case does not matter
    _write(tmp_path / "readme.md", b"# plate 3")
    ds = discover(tmp_path)
    assert ds.layout == "flat"
    assert _summary(ds) == ([("A.JPG", None, None), ("b.png", None, None)],
                            [("readme.md", "not an image file extension")])


def test_csv_layout_with_split(tmp_path):
    _make_csv_layout(tmp_path)
    ds = discover(tmp_path)
    assert ds.layout == "csv"
    records, skipped = _summary(ds)
    assert records == [("c.jpg", None, "train"), ("img/a.png", "healthy", "train"),
                       ("img/b.png", "sick", "test")]
    assert skipped == [("gone.png", "listed in CSV but missing"),
                       ("unlisted.png", "not listed in CSV")]


def test_csv_with_semicolons_and_file_column(tmp_path):
    _write(tmp_path / "x.png", _encode(_gray(), "PNG"))
    _write(tmp_path / "y.png", _encode(_gray(), "PNG"))
    _write(tmp_path / "meta.csv", "\ufefffile;class\nx.png;A\ny.png;B\n".encode())
    ds = discover(tmp_path)
    assert ds.layout == "csv"
    assert [(r.path, r.label) for r in ds.records] == [("x.png", "A"), ("y.png", "B")]


def test_csv_without_filename_column_is_not_a_label_table(tmp_path):
    _write(tmp_path / "a" / "x.png", _encode(_gray(), "PNG"))
    _write(tmp_path / "measurements.csv", b"cell,area\n1,20\n")
    ds = discover(tmp_path)
    assert ds.layout == "class-folders"
    assert ds.skipped == [("measurements.csv",
                           "not used as label table: no filename/file/path column")]


def test_two_csvs_are_ambiguous(tmp_path):
    _write(tmp_path / "x.png", _encode(_gray(), "PNG"))
    _write(tmp_path / "a.csv", b"filename,label\nx.png,A\n")
    _write(tmp_path / "b.csv", b"filename,label\nx.png,B\n")
    ds = discover(tmp_path)
    assert ds.layout == "flat"
    assert [reason for _, reason in ds.skipped] == [
        "not used as label table: more than one CSV at the root"] * 2


@pytest.mark.parametrize("maker", [_make_class_folders, _make_csv_layout])
@pytest.mark.parametrize("top", [None, "my data"])
def test_zip_reads_the_same_as_the_folder(tmp_path, maker, top):
    folder = tmp_path / "folder"
    maker(folder)
    expected = discover(folder)
    archive = _zip_folder(folder, tmp_path / "data.zip", top=top)
    ds = discover(archive)
    assert ds.layout == f"zip:{expected.layout}"
    assert ds.root == str(archive)
    assert _summary(ds) == _summary(expected)
    for record, folder_record in zip(ds.records, expected.records):
        assert record.source == f"zip:{archive}::{(top + '/') if top else ''}{record.path}"
        assert read_bytes(record) == read_bytes(folder_record)
        assert decode(read_bytes(record)).rgb.shape[2] == 3


def test_zip_flat(tmp_path):
    folder = tmp_path / "f"
    _write(folder / "one.png", _encode(_gray(), "PNG"))
    _write(folder / "two.gif", _encode(_rgb(), "GIF"))
    ds = discover(_zip_folder(folder, tmp_path / "flat.zip", junk=False))
    assert ds.layout == "zip:flat"
    assert [r.path for r in ds.records] == ["one.png", "two.gif"]


def test_zip_single_folder_of_class_folders_descends_once(tmp_path):
    folder = tmp_path / "f"
    _write(folder / "plate1" / "A" / "x.png", _encode(_gray(), "PNG"))
    _write(folder / "plate1" / "B" / "y.png", _encode(_gray(), "PNG"))
    ds = discover(_zip_folder(folder, tmp_path / "z.zip"))
    assert ds.layout == "zip:class-folders"
    assert [(r.path, r.label) for r in ds.records] == [("A/x.png", "A"), ("B/y.png", "B")]


def test_zip_refuses_unsafe_paths(tmp_path):
    archive = tmp_path / "evil.zip"
    png = _encode(_gray(), "PNG")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.png", png)
        zf.writestr("../evil.png", png)
        zf.writestr("/etc/abs.png", png)
        zf.writestr("C:/windows/drive.png", png)
        zf.writestr("sub/../../up.png", png)
        zf.writestr("..\\back.png", png)
    ds = discover(archive)
    assert [r.path for r in ds.records] == ["good.png"]
    assert sorted(ds.skipped) == sorted([
        ("../evil.png", "unsafe path in zip"), ("/etc/abs.png", "unsafe path in zip"),
        ("C:/windows/drive.png", "unsafe path in zip"), ("sub/../../up.png", "unsafe path in zip"),
        ("..\\back.png", "unsafe path in zip")])


def test_zip_over_the_size_cap_is_refused_before_reading(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"img{i}.bmp", _encode(np.zeros((100, 100, 3), np.uint8), "BMP"))
    declared = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    with pytest.raises(DrlError, match="max_zip_uncompressed_bytes"):
        discover(archive, IngestConfig(max_zip_uncompressed_bytes=declared - 1))
    assert len(discover(archive, IngestConfig(max_zip_uncompressed_bytes=declared)).records) == 3


def test_zip_entry_with_bomb_like_ratio_is_skipped(tmp_path):
    archive = tmp_path / "ratio.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("fine.png", _encode(_gray(), "PNG"))
        zf.writestr("blob.bmp", bytes(9 * 2**20))
    ds = discover(archive)
    assert [r.path for r in ds.records] == ["fine.png"]
    [(path, reason)] = ds.skipped
    assert path == "blob.bmp" and reason.startswith("suspicious compression ratio in zip")


def test_corrupt_zip_is_a_user_error(tmp_path):
    folder = tmp_path / "f"
    _write(folder / "x.png", _encode(_gray(), "PNG"))
    good = _zip_folder(folder, tmp_path / "good.zip").read_bytes()
    _write(tmp_path / "cut.zip", good[: len(good) // 2])
    _write(tmp_path / "noise.zip", np.random.default_rng(0).bytes(2000))
    for name in ("cut.zip", "noise.zip"):
        with pytest.raises(DrlError, match="not a readable zip"):
            discover(tmp_path / name)


def test_nothing_usable_is_a_clear_error(tmp_path):
    with pytest.raises(DrlError, match="does not exist"):
        discover(tmp_path / "nope")
    _write(tmp_path / "empty" / ".DS_Store", b"junk")
    with pytest.raises(DrlError, match=r"no images found in .*empty; supported: .*\.png"):
        discover(tmp_path / "empty")
    _write(tmp_path / "docs" / "a.txt", b"x")
    with pytest.raises(DrlError, match=r"found 1 other file\(s\), e\.g\. a\.txt"):
        discover(tmp_path / "docs")
    with pytest.raises(DrlError, match="not a folder or a .zip"):
        discover(tmp_path / "docs" / "a.txt")
    _write(tmp_path / "csvonly" / "labels.csv", b"filename,label\nx.png,A\n")
    with pytest.raises(DrlError, match="none of the files listed in the CSV exist"):
        discover(tmp_path / "csvonly")


def test_read_bytes_of_vanished_file_is_a_skip(tmp_path):
    record = ImageRecord("x.png", None, None, str(tmp_path / "x.png"))
    with pytest.raises(SkipImage, match="file not found"):
        read_bytes(record)


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_lossless_rgb_formats_roundtrip_exactly():
    rgb = _rgb()
    for fmt, mode in [("PNG", "RGB 8-bit"), ("BMP", "RGB 8-bit")]:
        out = decode(_encode(rgb, fmt))
        assert (out.mode, out.width, out.height, out.note) == (mode, 64, 64, None)
        np.testing.assert_array_equal(out.rgb, rgb)
    out = decode(_tiff(rgb, photometric="rgb"))
    assert out.mode == "RGB 8-bit"
    np.testing.assert_array_equal(out.rgb, rgb)


def test_jpeg_and_grayscale_replicated_to_rgb():
    cat = _cat()
    out = decode(_encode(cat, "JPEG", quality=95))
    assert out.rgb.shape == (50, 76, 3) and out.rgb.dtype == np.uint8
    assert (out.width, out.height) == (76, 50)
    assert np.abs(out.rgb.astype(int) - cat).mean() < 4
    gray = _gray()
    for payload in (_encode(gray, "PNG"), _tiff(gray)):
        out = decode(payload)
        assert out.mode == "gray 8-bit"
        for channel in range(3):
            np.testing.assert_array_equal(out.rgb[..., channel], gray)


def test_rgba_png_drops_alpha_and_says_so_only_when_transparent():
    rgb = _rgb()
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    out = decode(_encode(opaque, "PNG"))
    assert (out.mode, out.note) == ("RGBA 8-bit", None)
    np.testing.assert_array_equal(out.rgb, rgb)
    holey = opaque.copy()
    holey[:10, :10, 3] = 0
    out = decode(_encode(holey, "PNG"))
    np.testing.assert_array_equal(out.rgb, rgb)  # recorded pixels kept, not composited
    assert "transparency dropped" in out.note


def test_gif_first_frame_is_used_and_noted():
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (0, 120, 240)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode(buffer.getvalue())
    assert out.rgb.shape == (20, 30, 3)
    assert int(out.rgb.max()) == 0  # first frame, not a later one
    assert out.note == "animated GIF: first of 3 frames used"
    single = decode(_encode(_rgb(), "GIF"))
    assert single.note is None and single.mode == "palette 8-bit"


def test_multipage_tiff_first_page_is_used_and_noted():
    pages = np.stack([np.full((16, 24), v, np.uint8) for v in (10, 20, 30, 40)])
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for page in pages:
            writer.write(page)
    out = decode(buffer.getvalue())
    assert out.note == "multi-page TIFF: first of 4 pages used"
    assert out.rgb.shape == (16, 24, 3) and np.all(out.rgb == 10)


def test_16bit_gray_and_rgb_tiff_use_the_given_range():
    rng = np.random.default_rng(1)
    gray16 = rng.integers(1000, 3000, (20, 30)).astype(np.uint16)
    out = decode(_tiff(gray16), intensity_range=(1000.0, 3000.0))
    assert (out.mode, out.note) == ("gray 16-bit", None)
    expected = np.clip(np.floor((gray16 - 1000.0) * 255.0 / 2000.0 + 0.5), 0, 255)
    np.testing.assert_allclose(out.rgb[..., 0], expected, atol=1)
    assert np.array_equal(out.rgb[..., 0], out.rgb[..., 2])

    rgb16 = rng.integers(0, 65535, (20, 30, 3)).astype(np.uint16)
    out = decode(_tiff(rgb16, photometric="rgb"), intensity_range=(0.0, 65535.0))
    assert out.mode == "RGB 16-bit"
    np.testing.assert_allclose(out.rgb, rgb16 / 257.0, atol=1)
    planar = decode(_tiff(np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate"),
                    intensity_range=(0.0, 65535.0))
    np.testing.assert_array_equal(planar.rgb, out.rgb)


def test_16bit_without_range_falls_back_to_own_percentiles_and_says_so():
    ramp = np.tile(np.arange(0, 4000, 10, dtype=np.uint16), (8, 1))
    out = decode(_tiff(ramp))
    assert "own 0.5-99.5 percentile range" in out.note
    assert out.rgb.min() == 0 and out.rgb.max() == 255
    png16 = decode(_encode(ramp, "PNG"))  # Pillow's 16-bit PNG path
    assert png16.mode == "gray 16-bit"
    np.testing.assert_array_equal(png16.rgb, out.rgb)


def test_lzw_tiff_via_pillow_fallback():
    # tifffile needs imagecodecs for LZW; Pillow reads it.
    buffer = io.BytesIO()
    Image.fromarray(_rgb()).save(buffer, format="TIFF", compression="tiff_lzw")
    np.testing.assert_array_equal(decode(buffer.getvalue()).rgb, _rgb())
    gray16 = (_gray().astype(np.uint16) * 100)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, format="TIFF", compression="tiff_lzw")
    out = decode(buffer.getvalue(), intensity_range=(0.0, 25500.0))
    assert out.mode == "gray 16-bit"
    np.testing.assert_allclose(out.rgb[..., 0], _gray(), atol=1)


def _png16_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit RGB PNG, written by hand (Pillow cannot write one)."""
    big_endian = rgb16.astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in big_endian)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    height, width = rgb16.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_16bit_rgb_png_is_reduced_by_pillow_and_noted():
    rgb16 = np.random.default_rng(2).integers(0, 65535, (6, 7, 3)).astype(np.uint16)
    out = decode(_png16_rgb(rgb16))
    assert out.note == "16-bit colour PNG reduced to 8 bits by its high byte"
    np.testing.assert_array_equal(out.rgb, rgb16 >> 8)


def test_float_and_bilevel_tiff():
    ramp = np.linspace(-1.0, 1.0, 200, dtype=np.float32).reshape(10, 20)
    ramp[0, 0] = np.nan
    out = decode(_tiff(ramp), intensity_range=(-1.0, 1.0))
    assert out.mode == "gray 32-bit float"
    assert out.rgb[0, 0, 0] == 0 and out.rgb[-1, -1, 0] == 255
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    out = decode(_tiff(mask, photometric="minisblack"))
    assert out.mode == "bilevel"
    np.testing.assert_array_equal(out.rgb[..., 1], mask * 255)
    # tifffile's default for bool is MINISWHITE (1 = black); we show it as every viewer does.
    out = decode(_tiff(mask))
    np.testing.assert_array_equal(out.rgb[..., 1], 255 - mask * 255)
    with Image.open(io.BytesIO(_tiff(mask))) as im:
        np.testing.assert_array_equal(out.rgb[..., 0], np.asarray(im.convert("L")))


def test_dataset_wide_scaling_preserves_relative_intensity(tmp_path):
    yy, xx = np.mgrid[:40, :40]
    cell = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2).astype(np.float64)
    dim = (200 + 1800 * cell).astype(np.uint16)  # background 200, dim cell 2000
    bright = (200 + 9800 * cell).astype(np.uint16)  # same background, bright cell 10000
    _write(tmp_path / "dim.tif", _tiff(dim))
    _write(tmp_path / "bright.tif", _tiff(bright))
    _write(tmp_path / "eight_bit.png", _encode(_gray(), "PNG"))  # ignored by the range
    ds = discover(tmp_path)
    low, high = intensity_range(ds)
    assert low == pytest.approx(200) and high == pytest.approx(10000)

    def cell_mean(name, rng):
        rgb = decode((tmp_path / name).read_bytes(), intensity_range=rng).rgb[..., 0]
        return rgb[cell > 0].mean()

    shared = (low, high)
    ratio = cell_mean("bright.tif", shared) / cell_mean("dim.tif", shared)
    assert ratio == pytest.approx(255 / ((2000 - 200) / (10000 - 200) * 255), rel=0.02)
    # Per-image scaling makes the dim cell as bright as the bright one: the difference is gone.
    assert cell_mean("bright.tif", None) == pytest.approx(cell_mean("dim.tif", None), abs=1)


def test_intensity_range_is_none_for_8bit_data(tmp_path):
    _make_class_folders(tmp_path)
    assert intensity_range(discover(tmp_path)) is None


def test_intensity_range_reads_from_zip(tmp_path):
    folder = tmp_path / "f"
    _write(folder / "a.tif", _tiff(np.arange(100, dtype=np.uint16).reshape(10, 10) * 100))
    ds = discover(_zip_folder(folder, tmp_path / "a.zip"))
    low, high = intensity_range(ds, IngestConfig(percentile_low=0, percentile_high=100))
    assert (low, high) == (0.0, 9900.0)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _bad_corpus() -> dict[str, tuple[bytes, str]]:
    jpeg = _encode(skdata.chelsea(), "JPEG", quality=90)
    png = _encode(_rgb(), "PNG")
    return {
        "zero.png": (b"", "empty file (0 bytes)"),
        "text.png": (b"this is not an image, it is a lab note\n", "not an image"),
        "random.jpg": (np.random.default_rng(3).bytes(4096), "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated image"),
        "truncated.png": (png[: len(png) // 2], "corrupt or truncated image"),
        "bomb.png": (_png_declaring(9000, 9000),
                     "image too large (decompression bomb guard: 81000000 pixels)"),
        "huge_bomb.png": (_png_declaring(100_000, 100_000),
                          "image too large (decompression bomb guard: 10000000000 pixels)"),
        "complex.tif": (_tiff(np.ones((8, 8), np.complex64)),
                        "unsupported image mode: complex64 TIFF"),
        # 2-8 channels are fluorescence (tests/test_channels.py); more are refused.
        "nine_channels.tif": (_tiff(np.zeros((8, 8, 9), np.uint8), photometric="minisblack",
                                    planarconfig="contig"),
                              "unsupported image mode: 9 channels (at most 8)"),
    }


def test_bad_input_corpus_gives_stable_reasons(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    corpus = _bad_corpus()
    for name, (payload, _) in corpus.items():
        _write(tmp_path / "bad" / name, payload)
    _write(tmp_path / "bad" / "ok.png", _encode(_rgb(), "PNG"))
    ds = discover(tmp_path)
    assert ds.skipped == []  # they look like images: decode() is the judge
    reasons = {}
    for record in ds.records:
        try:
            decode(read_bytes(record))
        except SkipImage as exc:
            reasons[Path(record.path).name] = exc.reason
    assert reasons == {name: reason for name, (_, reason) in corpus.items()}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_guard_follows_the_config():
    payload = _encode(_rgb(), "PNG")  # 64 x 64 = 4096 pixels
    with pytest.raises(SkipImage, match=r"decompression bomb guard: 4096 pixels"):
        decode(payload, IngestConfig(max_image_pixels=4095))
    with pytest.raises(SkipImage, match=r"decompression bomb guard: 4096 pixels"):
        decode(_tiff(_rgb(), photometric="rgb"), IngestConfig(max_image_pixels=4095))
    assert decode(payload, IngestConfig(max_image_pixels=4096)).width == 64


def test_own_guard_acts_before_pillows_global_warning():
    # 10000 x 10000 lies between Pillow's warning (89 MP) and error (179 MP) thresholds.
    payloads = {"png": _png_declaring(10_000, 10_000), "jpeg": _jpeg_declaring(10_000, 10_000)}
    for kind, payload in payloads.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any DecompressionBombWarning fails the test
            with pytest.raises(SkipImage) as info:
                decode(payload)
        expected = "image too large (decompression bomb guard: 100000000 pixels)"
        assert info.value.reason == expected, kind


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    config = IngestConfig.from_dict({"pad_to_square": False, "percentile_high": 99.0})
    assert config == IngestConfig(pad_to_square=False, percentile_high=99.0)
    assert IngestConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DrlError, match="unknown ingest setting.*pad_to_sqare"):
        IngestConfig.from_dict({"pad_to_sqare": True})
    with pytest.raises(DrlError, match="percentile"):
        IngestConfig(percentile_low=99.0, percentile_high=1.0)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _disk_on_wide_image(background: int = 200) -> np.ndarray:
    image = np.full((60, 120, 3), background, np.uint8)
    rr, cc = disk((30, 60), 20, shape=image.shape[:2])
    image[rr, cc] = (20, 40, 160)
    return image


def _bbox(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_to_square_keeps_aspect_and_pads_with_border_colour():
    image = _disk_on_wide_image()
    out = to_square(image, 64, pad_to_square=True)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    height, width = _bbox(out[..., 0] < 110)  # the blue disk (red 20 vs 200)
    assert abs(height - width) <= 1  # still round
    assert height == pytest.approx(40 * 64 / 120, abs=1.5)
    # Padding above and below is the background colour, not black.
    assert np.all(out[:8] == 200) and np.all(out[-8:] == 200)


def test_plain_resize_stretches():
    out = to_square(_disk_on_wide_image(), 64, pad_to_square=False)
    height, width = _bbox(out[..., 0] < 110)
    assert height / width == pytest.approx(2.0, rel=0.1)


def test_to_square_fill_is_the_median_border_colour():
    image = np.full((20, 40, 3), 90, np.uint8)
    image[0, :5] = 255  # a few bright border pixels do not move the median
    image[5:15, 10:30] = 0
    out = to_square(image, 40, pad_to_square=True, interpolation="bilinear")
    np.testing.assert_array_equal(out[0, 20], [90, 90, 90])
    np.testing.assert_array_equal(out[-1, 0], [90, 90, 90])


def test_to_square_identity_tall_images_and_bad_arguments():
    square = _rgb()
    np.testing.assert_array_equal(to_square(square, 64, True), square)
    tall = np.ascontiguousarray(_disk_on_wide_image().transpose(1, 0, 2))
    out = to_square(tall, 32, pad_to_square=True, interpolation="nearest")
    assert out.shape == (32, 32, 3) and np.all(out[:, :4] == 200)
    with pytest.raises(ValueError, match="interpolation"):
        to_square(square, 32, True, interpolation="sinc")
    with pytest.raises(ValueError, match="uint8"):
        to_square(square.astype(np.float32), 32, True)


def test_thumbnail_is_jpeg_with_aspect_kept():
    payload = thumbnail(np.zeros((300, 600, 3), np.uint8) + 128)
    assert payload[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(payload)) as im:
        assert (im.format, im.size) == ("JPEG", (160, 80))
    with Image.open(io.BytesIO(thumbnail(_cat(), max_side=40))) as im:
        assert im.size == (40, 26)
    with Image.open(io.BytesIO(thumbnail(_rgb(), max_side=160))) as im:
        assert im.size == (64, 64)  # never enlarged


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_plankton_discovery_and_decoding(shared_data):
    ds = discover(shared_data / "plankton-ndsb")
    assert ds.layout == "class-folders"
    assert len(ds.records) == 2250
    assert len(ds.labels) == 15
    assert ds.skipped == []
    for record in ds.records[::450]:
        image = decode(read_bytes(record), intensity_range=intensity_range(ds, sample=8))
        assert image.rgb.dtype == np.uint8 and image.rgb.shape[2] == 3
        assert to_square(image.rgb, 224, True).shape == (224, 224, 3)


@pytest.mark.realdata
def test_blood_cell_discovery_and_decoding(shared_data):
    # Timing lives in benchmarks/, never in a test: CPU time here is shared and noisy.
    ds = discover(shared_data / "blood-cells-pbc")
    assert len(ds.records) == 1600 and len(ds.labels) == 8
    for record in ds.records[::200]:
        image = decode(read_bytes(record))
        assert image.rgb.shape[2] == 3 and min(image.width, image.height) > 300
        assert to_square(image.rgb, 224, True).shape == (224, 224, 3)


def test_border_colour_from_the_strips_equals_the_whole_frame():
    from drlcore.data import geometry

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 7), (7, 1), (2, 2), (2, 9), (3, 3), (37, 50), (64, 21)]:
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        frame = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]]) \
            if shape[0] > 1 else rgb[0]
        expected = tuple(int(v) for v in np.median(frame, axis=0).round())
        assert geometry._median_border_colour(geometry.as_image(rgb)) == expected, shape


def test_a_pil_image_prepares_exactly_as_its_array():
    rng = np.random.default_rng(4)
    for shape in [(90, 60), (60, 90), (64, 64), (40, 40)]:
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        pil = Image.fromarray(rgb)
        for mode, side in [("pad", None), ("stretch", None), ("canvas", 120), ("canvas", 50)]:
            np.testing.assert_array_equal(prepare(pil, 40, mode, side), prepare(rgb, 40, mode, side))
        assert thumbnail(pil, max_side=30) == thumbnail(rgb, max_side=30)
        assert pil.size == (shape[1], shape[0])  # the thumbnail leaves the given image alone
    with pytest.raises(ValueError, match="RGB"):
        prepare(Image.new("L", (8, 8)), 4, "pad")


def test_thumbnail_of_a_large_image_looks_like_a_fair_resampling():
    """The box pre-reduction moves the thumbnail less than its own JPEG encoding does."""
    def jpeg(image):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return np.asarray(Image.open(buffer).convert("RGB"), float)

    rgb = np.asarray(Image.open(io.BytesIO(thumbnail(_cat(), max_side=1000))).convert("RGB"))
    fast = np.asarray(Image.open(io.BytesIO(thumbnail(rgb, max_side=60))).convert("RGB"), float)
    fair = Image.fromarray(rgb).resize(fast.shape[1::-1], Image.Resampling.BICUBIC)
    encoding_error = np.abs(jpeg(fair) - np.asarray(fair, float)).mean()
    assert np.abs(fast - jpeg(fair)).mean() < encoding_error
