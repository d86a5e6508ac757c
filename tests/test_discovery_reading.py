"""Issue 21: discovery never misreads ordinary folders, skips what it cannot read, and keeps
library warnings out of the console.

- Ordinary names that look like ``<object>_<channel>`` (``BA_12345.jpg``, ``well1_3.jpg``) stay
  one image per file, classes intact; real one-file-per-channel sets are still grouped.
- A folder the user may not read is skipped with a reason; the run goes on.
- ``drl run`` prints no raw warning; the run's notes count them.
- A 4-sample 16-bit TIFF (tifffile's default: RGB + "unassociated alpha") is 4 channels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from drlcore.data import ingest, rundir
from drlcore.data.discover import is_channel_token

DATA = Path("/work/shared/data")
BLOOD = DATA / "blood-cells-pbc"
IFC = DATA / "ifc-cellcycle"
REPO = Path(__file__).resolve().parents[1]


def _rgb(path: Path, seed: int, size=(24, 24)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- naming cases


def _blood_like(root: Path, sources: dict[str, list[Path]] | None = None) -> dict[str, int]:
    """Class folders of files renamed ``<PREFIX>_<number>.jpg`` plus one stray ``x_y.png`` in
    the first class (issue 21's first case). ``sources``: real images to copy per class."""
    counts = {}
    classes = sorted(sources) if sources else ["basophil", "eosinophil", "lymphocyte"]
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        files = sources[cls] if sources else [None] * 5
        for i, src in enumerate(files):
            name = f"{cls[:2].upper()}_{12345 + 7 * i}.jpg"
            if src is None:
                _rgb(root / cls / name, 100 * c + i)
            else:
                shutil.copyfile(src, root / cls / name)
        counts[cls] = len(files)
    first = classes[0]
    _rgb(root / first / "x_y.png", 999)
    counts[first] += 1
    return counts


def _wells(root: Path, sources: dict[str, list[Path]] | None = None) -> dict[str, int]:
    """A plain RGB set named ``well1_1.jpg ... well2_4.jpg`` in class folders (second case)."""
    counts = {}
    classes = sorted(sources) if sources else ["control", "treated"]
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        k = 0
        for well in (1, 2):
            for field in (1, 2, 3, 4):
                name = f"well{well}_{field}.jpg"
                if sources:
                    shutil.copyfile(sources[cls][k], root / cls / name)
                else:
                    _rgb(root / cls / name, 50 * c + k)
                k += 1
        counts[cls] = k
    return counts


def _check_every_file_is_an_object(root: Path, counts: dict[str, int]) -> None:
    dataset = ingest.discover(root)
    assert dataset.reading == "per-file" and dataset.channel_names is None
    assert dataset.skipped == []
    assert len(dataset.records) == sum(counts.values())
    assert all(r.source == str(root / r.path) for r in dataset.records)
    got = pd.Series([r.label for r in dataset.records]).value_counts().to_dict()
    assert got == counts


def test_numbered_names_in_class_folders_stay_one_image_each(tmp_path):
    counts = _blood_like(tmp_path / "blood")
    _check_every_file_is_an_object(tmp_path / "blood", counts)
    notes = ingest.discover(tmp_path / "blood").notes
    assert len(notes) == 1 and "not a channel name" in notes[0]


def test_plain_rgb_wells_in_class_folders_stay_one_image_each(tmp_path):
    counts = _wells(tmp_path / "wells")
    _check_every_file_is_an_object(tmp_path / "wells", counts)


def test_the_features_stage_reads_every_numbered_image(tmp_path):
    from drlcore.embedding.features import FeatureConfig, extract_features

    counts = _wells(tmp_path / "wells")
    result = extract_features(tmp_path / "wells", tmp_path / "run", FeatureConfig(
        backbone="test-tiny", pretrained=False, cache_dir=str(tmp_path / "cache"), batch_size=8))
    assert len(result.table) == sum(counts.values()) and len(result.skipped) == 0
    assert result.table["label"].value_counts().to_dict() == counts
    assert result.manifest["data"]["reading"] == "per-file"


def _pick(root: Path, per_class: int) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.jpg"))[:per_class]
            for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.mark.realdata
@pytest.mark.slow
def test_real_blood_cells_renamed_stay_one_image_each(tmp_path):
    if not BLOOD.is_dir():
        pytest.skip("blood-cells-pbc not present")
    counts = _blood_like(tmp_path / "blood", _pick(BLOOD, 6))
    assert len(counts) == 8
    _check_every_file_is_an_object(tmp_path / "blood", counts)
    wells = _wells(tmp_path / "wells", dict(list(_pick(BLOOD, 8).items())[:3]))
    _check_every_file_is_an_object(tmp_path / "wells", wells)


# --------------------------------------------------------------------------- real channel sets


def _ifc_like(root: Path, n: int = 4, classes=("G1", "S_phase")) -> None:
    """One 16-bit grey file per channel, ``<cell>_BF.tif``, ``<cell>_DNA.tif``, ``<cell>_DF.tif``."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            for ch in ("BF", "DNA", "DF"):
                tifffile.imwrite(root / cls / f"cell{i:03d}_{ch}.tif",
                                 rng.integers(0, 4000, (32, 32), dtype=np.uint16),
                                 photometric="minisblack")


def _check_grouped_per_cell(root: Path, n_cells: int, n_classes: int) -> None:
    dataset = ingest.discover(root)
    assert dataset.reading == "per-channel" and dataset.channel_names == ["BF", "DF", "DNA"]
    assert len(dataset.records) == n_cells and dataset.skipped == []
    assert len(dataset.labels) == n_classes
    assert all(r.source.startswith("channels:") for r in dataset.records)
    image = ingest.decode(ingest.read_bytes(dataset.records[0]))
    assert image.channels is not None and image.channels.shape[2] == 3


def test_channel_files_with_channel_names_are_still_grouped(tmp_path):
    _ifc_like(tmp_path / "ifc")
    _check_grouped_per_cell(tmp_path / "ifc", 8, 2)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_ifc_written_one_file_per_channel_is_grouped_per_cell(tmp_path):
    if not IFC.is_dir():
        pytest.skip("ifc-cellcycle not present")
    root, n = tmp_path / "ifc", 0
    for cls in sorted(d for d in IFC.iterdir() if d.is_dir()):
        (root / cls.name).mkdir(parents=True)
        for path in sorted(cls.glob("*.tif*"))[:5]:
            stack = tifffile.imread(path)
            assert stack.ndim == 3 and stack.shape[0] == 3, stack.shape
            cell = path.name.split(".")[0]
            for k, ch in enumerate(("BF", "DNA", "DF")):
                tifffile.imwrite(root / cls.name / f"{cell}_{ch}.tif", stack[k],
                                 photometric="minisblack")
            n += 1
    _check_grouped_per_cell(root, n, len(list(root.iterdir())))


def test_channel_token_rule():
    for token in ("ch1", "C0", "w2", "DAPI", "hoechst", "DNA", "GFP", "BF", "brightfield",
                  "Mito", "AGP", "RNA", "ER", "actin", "OrigDNA", "Alexa488"):
        assert is_channel_token(token), token
    for token in ("1", "12345", "y", "001", "left", "well1", "crop"):
        assert not is_channel_token(token), token


def test_colour_or_mismatched_channel_files_are_not_grouped(tmp_path):
    colour = tmp_path / "colour"
    colour.mkdir()
    for i in range(3):
        for ch in ("DAPI", "GFP"):
            _rgb(colour / f"cell{i}_{ch}.png", i)
    dataset = ingest.discover(colour)
    assert dataset.reading == "per-file" and len(dataset.records) == 6
    assert "not single-channel images of one size (a colour image" in dataset.notes[0]
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    for i in range(3):
        for k, ch in enumerate(("DAPI", "GFP")):
            Image.fromarray(np.zeros((10 + 5 * k, 10), np.uint8)).save(sizes / f"c{i}_{ch}.png")
    assert len(ingest.discover(sizes).records) == 6
    # A pattern the user gives groups even without channel names; colour still never.
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    for i in range(2):
        for ch in ("1", "2"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(numbered / f"p{i}_{ch}.png")
    custom = ingest.IngestConfig(channel_pattern=r"^(?P<object>p\d)_(?P<channel>\d)$")
    grouped = ingest.discover(numbered, custom)
    assert grouped.channel_names == ["1", "2"] and len(grouped.records) == 2
    assert len(ingest.discover(colour, ingest.IngestConfig(
        channel_pattern=r"^(?P<object>cell\d)_(?P<channel>\w+)$")).records) == 6


def test_header_check_reads_headers_only(tmp_path, monkeypatch):
    """Deciding a folder must not decode pixels: Pillow's load is never called."""
    _ifc_like(tmp_path / "ifc", n=2, classes=("a",))
    (tmp_path / "ifc" / "b").mkdir()
    for i in range(2):
        for ch in ("DAPI", "GFP"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ifc" / "b" / f"p{i}_{ch}.png")
    calls = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: calls.append(1) or real_load(self))
    real_asarray = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray",
                        lambda self, *a, **k: calls.append(2) or real_asarray(self, *a, **k))
    dataset = ingest.discover(tmp_path / "ifc")
    assert calls == []
    assert [r.path for r in dataset.records] == ["a/cell000", "a/cell001", "b/p0", "b/p1"]
