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


# --------------------------------------------------------------------------- warnings


def _tiny_source_model(path: Path) -> Path:
    import torch

    from drlcore.disentangle.artifacts import save_model
    from drlcore.disentangle.vae import FeatureVAE, VAEConfig
    from drlcore.embedding.backbones import load_backbone

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=backbone.spec.feature_dim, latent_dim=4,
                                 hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, 64)))
    save_model(path, model, {
        "backbone": {"name": "test-tiny", "timm_name": backbone.spec.timm_name,
                     "weights_hash": backbone.weights_hash, "feature_dim": 64},
        "dim_names": [f"z{j}: f{j}" for j in range(4)]})
    return path


def test_drl_run_on_constant_images_prints_no_raw_warning(tmp_path, monkeypatch, capfd):
    import warnings

    from drlcore import cli
    from drlcore.embedding.features import FeatureConfig

    monkeypatch.setattr(cli, "_feature_config", lambda args, **kw: FeatureConfig(
        backbone="test-tiny", pretrained=False, cache_dir=args.cache_dir, batch_size=8))
    root = tmp_path / "blank"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(root / cls / f"b_{i}.png")
    model = _tiny_source_model(tmp_path / "model")
    # The tiny backbone and model raise no warning of their own on these images, so each stage
    # gets a real library warning: scikit-learn's PCA on constant data (what a constant dataset
    # gave with the default backbone in issue 21), raised in the decode threads and in the
    # analysis, and a log record as tifffile writes them.
    import logging

    from sklearn.decomposition import PCA

    from drlcore.analysis import analyze
    from drlcore.data import ingest as ingest_module

    def constant_pca() -> None:
        PCA(2).fit(np.ones((5, 3)))

    real_decode, real_analyze = ingest_module.decode, analyze.analyze_run

    def decode(*args, **kwargs):
        constant_pca()
        logging.getLogger("tifffile").warning("TiffPage 0: odd tag")
        return real_decode(*args, **kwargs)

    def analyze_run(*args, **kwargs):
        constant_pca()
        return real_analyze(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "decode", decode)
    monkeypatch.setattr(analyze, "analyze_run", analyze_run)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as on a user's console: shown once per place
        code = cli.main(["run", str(root), "--out", str(tmp_path / "run"), "--source-model",
                         str(model), "--cache-dir", str(tmp_path / "cache"), "--epochs", "2"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "Warning" not in out + err and "warnings.warn" not in out + err
    captured = rundir.stage_entry(tmp_path / "run", "pipeline")["warnings"]
    assert captured and all(w["count"] >= 1 for w in captured)
    counts = {(w["category"], w["where"]): w["count"] for w in captured}
    # One per decode (the 12 identical files are one cache entry) and one in the analysis:
    # every occurrence is counted, not once per place as the "default" filter would show it.
    pca = counts[("RuntimeWarning", "sklearn/decomposition/_pca.py")]
    assert pca == 1 + counts[("log warning", "tifffile")]
    total = sum(w["count"] for w in captured)
    assert f"note: {total} message(s)" in err


def test_capture_counts_every_occurrence_and_keeps_ignore_filters():
    import logging
    import threading
    import warnings

    from drlcore.progress import capture_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", message="hidden")
        with capture_warnings() as log:
            for _ in range(3):
                warnings.warn("same place", RuntimeWarning)
            warnings.warn("hidden", UserWarning)
            t = threading.Thread(target=lambda: warnings.warn("from a thread", UserWarning))
            t.start()
            t.join()
            logging.getLogger("tifffile").warning("odd tag")
    summary = {(w["category"], w["message"]): w["count"] for w in log.summary()}
    assert summary == {("RuntimeWarning", "same place"): 3, ("UserWarning", "from a thread"): 1,
                       ("log warning", "odd tag"): 1}


# --------------------------------------------------------------------------- unreadable folders

NOBODY = 65534


def _can_drop_to_nobody() -> str | None:
    if not hasattr(os, "geteuid"):
        return "no POSIX users here"
    if os.geteuid() != 0:
        return "not root: cannot run a child as another user (and chmod 000 binds only others)"
    if shutil.which("setpriv") is None:
        return "setpriv not available"
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", sys.executable, "-c", "import drlcore"],
                           cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode != 0:
        return f"the unprivileged user cannot run this Python ({probe.stderr.strip()[-200:]})"
    return None


def test_unreadable_class_folder_is_skipped_and_the_run_goes_on(tmp_path):
    """As an ordinary user (nobody, via setpriv): a chmod-000 class folder is listed in
    skipped.csv with its reason and the other classes are embedded."""
    why = _can_drop_to_nobody()
    if why:
        pytest.skip(why)
    import tempfile

    # pytest's tmp_path lies below a folder only root may enter; nobody needs a way in.
    base = Path(tempfile.mkdtemp(prefix="drl-nobody-", dir="/tmp"))
    try:
        _run_as_nobody_with_a_locked_class(base)
    finally:
        for path in base.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def _run_as_nobody_with_a_locked_class(base: Path) -> None:
    base.chmod(0o777)
    data = base / "data"
    for cls in ("basophil", "lymphocyte", "monocyte"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            _rgb(data / cls / f"{cls[:2].upper()}_{1000 + i}.jpg", i)
    (data / "monocyte" / "MO_1001.jpg").chmod(0o000)  # one unreadable file too
    for path in [data, *data.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    (data / "lymphocyte").chmod(0o000)
    script = textwrap.dedent(f"""
        from drlcore.embedding.features import FeatureConfig, extract_features
        r = extract_features({str(data)!r}, {str(base / 'run')!r}, FeatureConfig(
            backbone="test-tiny", pretrained=False, cache_dir={str(base / 'cache')!r},
            batch_size=4))
        print(len(r.table))
    """)
    try:
        proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", sys.executable, "-c", script],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO),
                                   "HOME": str(base), "XDG_CACHE_HOME": str(base / "xdg")})
    finally:
        (data / "lymphocyte").chmod(0o755)  # so pytest can clean up
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "5"
    skipped = pd.read_csv(base / "run" / "skipped.csv")
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert reasons["lymphocyte"] == "cannot read folder: Permission denied"
    assert reasons["monocyte/MO_1001.jpg"].startswith("cannot read")
    assert "Permission denied" in reasons["monocyte/MO_1001.jpg"]
    images = pd.read_parquet(base / "run" / "images.parquet")
    assert sorted(images["label"].unique()) == ["basophil", "monocyte"]


# --------------------------------------------------------------------------- TIFF extra samples


def _tiff_bytes(arr: np.ndarray, **kwargs) -> bytes:
    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile on planar RGB defaults
        tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["interleaved", "planar"])
def test_four_sample_16bit_tiff_with_tifffile_defaults_is_four_channels(layout):
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 60000, (4, 16, 16), dtype=np.uint16)
    arr = planes if layout == "planar" else np.moveaxis(planes, 0, -1)
    data = _tiff_bytes(arr)
    with tifffile.TiffFile(__import__("io").BytesIO(data)) as tf:  # what tifffile wrote
        assert int(tf.pages.first.photometric) == 2 and tuple(tf.pages.first.extrasamples) == (2,)
    image = ingest.decode(data)
    assert image.mode == "4-channel 16-bit" and image.channel_pixels.shape == (16, 16, 4)
    np.testing.assert_array_equal(np.moveaxis(image.channel_pixels, -1, 0), planes)
    assert "read as 4 channels, not transparency" in image.note


def test_extra_samples_alpha_or_channel():
    rng = np.random.default_rng(2)
    rgba8 = rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)
    rgba8[..., 3] = 255
    image = ingest.decode(_tiff_bytes(rgba8))  # 8-bit RGB + alpha: the RGBA path, as before
    assert image.channels is None and image.mode == "RGBA 8-bit"
    assoc = ingest.decode(_tiff_bytes(rgba8.astype(np.uint16), extrasamples=["assocalpha"]))
    assert assoc.channels is None  # premultiplied alpha is alpha at any depth
    unspecified = ingest.decode(_tiff_bytes(rgba8, extrasamples=["unspecified"]))
    assert unspecified.channels is not None and unspecified.channels.shape[2] == 4
    assert "unspecified extra sample" in unspecified.note
    five = ingest.decode(_tiff_bytes(rng.integers(0, 900, (8, 8, 5), dtype=np.uint16),
                                     photometric="rgb", extrasamples=["unspecified"] * 2))
    assert five.mode == "5-channel 16-bit"


# --------------------------------------------------------------------------- the app's preview


def test_add_data_preview_shows_the_reading_before_the_run(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(Path(__file__).parent))
    from app_fixtures import make_run

    runs = tmp_path / "runs"
    runs.mkdir()
    make_run(runs, "cells", n=30)  # a run to open, so the app does not build the demo
    data = tmp_path / "data"
    _ifc_like(data / "ifc", n=3, classes=("G1", "G2"))
    _blood_like(data / "blood")
    monkeypatch.setenv("DRL_RUNS_DIR", str(runs))
    monkeypatch.setattr(sys, "argv", ["app.py", "--data-root", str(data)])
    at = AppTest.from_file(str(REPO / "explorer" / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.radio(key="data.source").set_value("Folder on the server").run()
    at.text_input(key="data.folder").input(str(data / "ifc")).run()
    assert not at.exception, at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "**Preview:** 6 objects, 2 classes" in shown
    assert "one object per set of channel files (BF, DF, DNA)" in shown
    at.text_input(key="data.folder").input(str(data / "blood")).run()
    shown = " ".join(m.value for m in at.markdown)
    assert "**Preview:** 16 objects, 3 classes" in shown and "one image per file" in shown
    assert any("not a channel name" in c.value for c in at.caption)
    assert sorted(p.name for p in runs.iterdir()) == ["cells"]  # a preview starts nothing
