"""Per-channel, per-compartment morphology (issue 19): known answers on drawn cells, channel roles,
fallback masks, families of the new columns, and DNA content on the real cell-cycle set."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy.stats import spearmanr
from skimage.draw import disk

from drlcore.analysis.morphology import (FEATURE_NAMES, INTENSITY_MEASURES, channel_columns,
                                         channel_key, measure, measure_dataset)
from drlcore.analysis.naming import FAMILIES, feature_channel, feature_family
from drlcore.data.channels import (channel_map, channel_role, composite, is_dna_channel,
                                   mask_channel_index, ome_channel_names, parse_channels)
from drlcore.errors import DrlError

NAMES = ["BrightField", "DNA", "actin"]
SIDE = 64


def draw_cell(cell_r=20, nucleus_r=8, offset=(0, 0), dna=1000.0, backgrounds=(600, 50, 100),
              noise=0.0, seed=0, bf_flat=False):
    """(rgb composite, stored HxWx3 float channels, cell mask, nucleus mask).

    Bright field: the cell 200 counts darker than its background. DNA: ``dna`` counts above
    background over the nucleus. actin: 300 above background over the cytoplasm only."""
    rng = np.random.default_rng(seed)
    centre = (SIDE // 2, SIDE // 2)
    cell = np.zeros((SIDE, SIDE), bool)
    cell[disk(centre, cell_r, shape=cell.shape)] = True
    nucleus = np.zeros_like(cell)
    nucleus[disk((centre[0] + offset[0], centre[1] + offset[1]), nucleus_r,
                  shape=cell.shape)] = True
    stored = np.empty((SIDE, SIDE, 3))
    stored[...] = backgrounds
    if not bf_flat:
        stored[cell, 0] -= 200
    stored[nucleus, 1] += dna
    stored[cell & ~nucleus, 2] += 300
    if noise:
        stored += rng.normal(0, noise, stored.shape)
    stored = np.clip(stored, 0, 65535).round()
    unit = stored / stored.max(axis=(0, 1))
    rgb = composite(unit, channel_map(3, NAMES))
    return rgb, stored.astype(np.uint16), cell, nucleus


# --------------------------------------------------------------------------- known answers


def test_nucleus_of_known_integrated_intensity_and_area():
    rgb, stored, cell, nucleus = draw_cell(offset=(0, 6))
    row = measure(rgb, channels=stored, channel_names=NAMES)
    assert row["morph_ok"], row["morph_note"]
    n_cell, n_nuc = int(cell.sum()), int(nucleus.sum())
    # Size per mask, in pixels.
    assert row["morph_area"] == pytest.approx(n_cell)
    assert row["morph_nucleus_area"] == pytest.approx(n_nuc)
    assert row["morph_cytoplasm_area"] == pytest.approx(n_cell - n_nuc)
    assert row["morph_nucleus_fraction"] == pytest.approx(n_nuc / n_cell)
    # Backgrounds: border medians, recorded.
    assert row["morph_BrightField_background"] == 600
    assert row["morph_DNA_background"] == 50
    assert row["morph_actin_background"] == 100
    # DNA content: integrated over the cell and over the nucleus, background subtracted.
    assert row["morph_DNA_cell_integrated"] == pytest.approx(1000 * n_nuc)
    assert row["morph_DNA_nucleus_integrated"] == pytest.approx(1000 * n_nuc)
    assert row["morph_DNA_cytoplasm_integrated"] == pytest.approx(0)
    assert row["morph_DNA_nucleus_mean"] == pytest.approx(1000)
    assert row["morph_DNA_nucleus_std"] == pytest.approx(0)
    assert row["morph_DNA_cell_min"] == 0 and row["morph_DNA_cell_max"] == 1000
    assert row["morph_DNA_cell_mean"] == pytest.approx(1000 * n_nuc / n_cell)
    # Every channel, every compartment.
    assert row["morph_actin_cytoplasm_mean"] == pytest.approx(300)
    assert row["morph_actin_nucleus_mean"] == pytest.approx(0)
    assert row["morph_actin_cell_integrated"] == pytest.approx(300 * (n_cell - n_nuc))
    assert row["morph_BrightField_cell_mean"] == pytest.approx(-200)
    assert row["morph_BrightField_cell_median"] == pytest.approx(-200)
    assert row["morph_BrightField_cell_mad"] == pytest.approx(0)
    # The stain sits 6 px off the cell's centre; the bright field is uniform over the cell.
    assert row["morph_DNA_cell_mass_displacement"] == pytest.approx(6, abs=1e-6)
    assert row["morph_BrightField_cell_mass_displacement"] == pytest.approx(0)
    # Quartiles of a two-valued channel: the nucleus is under a quarter of the cell.
    assert row["morph_DNA_cell_q25"] == 0 and row["morph_DNA_cell_median"] == 0
    # Texture: the flat nucleus has no contrast; the cell's DNA (stain next to none) has some.
    assert row["morph_DNA_cell_glcm_contrast"] > 0
    # Legacy object-level columns are still there and mean what they meant.
    assert all(name in row for name in FEATURE_NAMES)
    assert row["morph_eccentricity"] == pytest.approx(0, abs=0.05)
    assert row["morph_ch1_DNA_mean"] == pytest.approx(50 + 1000 * n_nuc / n_cell)


def test_background_is_subtracted_per_channel():
    rgb, stored, *_ = draw_cell(backgrounds=(600, 50, 100))
    low = measure(rgb, channels=stored, channel_names=NAMES)
    rgb, stored, *_ = draw_cell(backgrounds=(900, 700, 2000))
    high = measure(rgb, channels=stored, channel_names=NAMES)
    for col in ("morph_DNA_cell_integrated", "morph_DNA_nucleus_mean",
                "morph_actin_cytoplasm_integrated", "morph_BrightField_cell_mean"):
        assert high[col] == pytest.approx(low[col]), col
    assert high["morph_DNA_background"] == 700 and low["morph_DNA_background"] == 50


def test_noisy_cell_is_measured_close_to_its_truth():
    rgb, stored, cell, nucleus = draw_cell(noise=15, seed=3)
    row = measure(rgb, channels=stored, channel_names=NAMES)
    assert row["morph_ok"]
    assert row["morph_area"] == pytest.approx(cell.sum(), rel=0.08)
    assert row["morph_nucleus_area"] == pytest.approx(nucleus.sum(), rel=0.1)
    assert row["morph_DNA_cell_integrated"] == pytest.approx(1000 * nucleus.sum(), rel=0.05)


def test_columns_are_the_documented_ones():
    rgb, stored, *_ = draw_cell()
    row = measure(rgb, channels=stored, channel_names=NAMES)
    expected = set(channel_columns(NAMES))
    assert expected <= set(row)
    assert len(expected) == 3 * (1 + 3 * len(INTENSITY_MEASURES) + 2) + 5
    # Without a DNA channel there is no nucleus: one compartment, the cell.
    no_dna = ["BrightField", "GFP", "actin"]
    row = measure(rgb, channels=stored, channel_names=no_dna)
    assert set(channel_columns(no_dna, dna=False)) <= set(row)
    assert "morph_nucleus_area" not in row and "morph_GFP_nucleus_mean" not in row


def test_channel_keys_are_safe_and_distinct():
    assert channel_key(["DAPI 405", "x-y", "", "a b", "a_b"]) == [
        "DAPI_405", "x_y", "ch2", "a_b_3", "a_b_4"]


# --------------------------------------------------------------------------- mask channel, fallback


def test_mask_channel_is_stated_not_the_composite():
    rgb, stored, cell, _ = draw_cell()
    # The actin channel holds only the cytoplasm: a mask cut from it is the same cell (holes are
    # filled), chosen by name or by index.
    by_name = measure(rgb, channels=stored, channel_names=NAMES, mask_channel="actin")
    by_index = measure(rgb, channels=stored, channel_names=NAMES, mask_channel=2)
    assert by_name["morph_area"] == by_index["morph_area"] == pytest.approx(cell.sum())
    with pytest.raises(DrlError, match="no such channel"):
        measure(rgb, channels=stored, channel_names=NAMES, mask_channel="mito")
    with pytest.raises(DrlError, match="channels 0 to 2"):
        measure(rgb, channels=stored, channel_names=NAMES, mask_channel=7)


def test_failed_mask_falls_back_with_a_note():
    # Bright field shows nothing: the cell comes from the next structural channel (actin).
    rgb, stored, cell, _ = draw_cell(bf_flat=True)
    row = measure(rgb, channels=stored, channel_names=NAMES)
    assert row["morph_ok"] and "object mask from channel actin" in row["morph_note"]
    assert row["morph_area"] == pytest.approx(cell.sum())
    # Nothing anywhere: a central disc is measured, not a dropped cell.
    flat = np.full((SIDE, SIDE, 3), 100, np.uint16)
    row = measure(np.zeros((SIDE, SIDE, 3), np.uint8), channels=flat, channel_names=NAMES)
    assert row["morph_ok"] and "central disc" in row["morph_note"]
    assert row["morph_area"] == pytest.approx(SIDE * SIDE / 4, rel=0.05)
    assert row["morph_DNA_cell_integrated"] == 0


def test_dataset_rows_with_and_without_a_mask_channel():
    items = [(*draw_cell(cell_r=r)[:2], NAMES) for r in (12, 16, 20)]
    table = measure_dataset([(rgb, None, stored, names) for rgb, stored, names in items],
                            mask_channel="BrightField")
    assert table["morph_ok"].all()
    assert np.all(np.diff(table["morph_area"].to_numpy()) > 0)
    assert {"morph_DNA_cell_integrated", "morph_nucleus_area"} <= set(table.columns)


# --------------------------------------------------------------------------- held-out DNA content


def test_integrated_dna_follows_dna_content_on_held_out_cells():
    """Cells drawn with a random DNA content (1x..2x, as G1..G2), nuclei whose size and
    brightness vary independently of it, cell sizes, positions and noise: the DNA column must
    rank them by content, whatever their other traits."""
    rng = np.random.default_rng(11)
    content, rows = [], []
    for i in range(60):
        amount = rng.uniform(1.0, 2.0)
        nucleus_r = int(rng.integers(6, 11))
        area = np.pi * nucleus_r**2
        rgb, stored, *_ = draw_cell(cell_r=int(rng.integers(nucleus_r + 6, 24)),
                                    nucleus_r=nucleus_r, dna=300_000 * amount / area,
                                    offset=tuple(rng.integers(-3, 4, 2)), noise=20, seed=i,
                                    backgrounds=(rng.uniform(400, 800), rng.uniform(30, 300),
                                                 rng.uniform(50, 200)))
        rows.append(measure(rgb, channels=stored, channel_names=NAMES))
        content.append(amount)
    measured = [r["morph_DNA_cell_integrated"] for r in rows]
    assert all(r["morph_ok"] for r in rows)
    assert spearmanr(measured, content)[0] >= 0.9
    # The mean intensity, by contrast, is confounded by nucleus size.
    assert abs(spearmanr([r["morph_DNA_nucleus_mean"] for r in rows], content)[0]) < 0.9


# --------------------------------------------------------------------------- channel roles


@pytest.mark.parametrize("name", ["DAPI", "dapi", "Hoechst 33342", "hoechst", "DRAQ5", "DNA",
                                  "PI", "Propidium iodide", "nuclear", "Nuclei", "SYTOX Green",
                                  "TO-PRO-3", "7-AAD", "SiR-DNA", "w1DAPI", "DNA stain",
                                  "Ch2_DAPI", "nucleus"])
def test_dna_stains_are_recognised(name):
    assert is_dna_channel(name) and channel_role(name) == "dna"


@pytest.mark.parametrize("name", ["actin", "Phalloidin", "pixel", "spindle", "GFP", "mito",
                                  "ch1", "BrightField", "", None, "Tubulin", "ER"])
def test_other_channels_are_not_dna(name):
    assert not is_dna_channel(name)


def test_channel_roles():
    assert [channel_role(n) for n in ("BrightField", "Ch01_BF", "phase", "DarkField", "SSC",
                                      "GFP")] == ["brightfield", "brightfield", "brightfield",
                                                  "darkfield", "darkfield", "fluorescence"]
    assert channel_map(3, NAMES).roles == ("brightfield", "dna", "fluorescence")
    assert mask_channel_index(NAMES) == 0
    assert mask_channel_index(["DAPI", "GFP"]) is None  # no bright field: chosen per image
    assert mask_channel_index(NAMES, "dna") == 1 and mask_channel_index(NAMES, "2") == 2


def test_channels_spec_takes_bare_names():
    assert parse_channels("BrightField,DNA,DarkField") == [
        ("BrightField", None), ("DNA", None), ("DarkField", None)]
    assert parse_channels("blue,DNA=green") == [(None, "blue"), ("DNA", "green")]
    # A stack: names in order, default colours kept.
    cmap = channel_map(3, None, "BrightField,DAPI,GFP")
    assert cmap.names == ("BrightField", "DAPI", "GFP")
    assert cmap.colours == ("blue", "green", "magenta")
    assert cmap.roles == ("brightfield", "dna", "fluorescence")
    # Mixed with colours; the old forms keep working.
    assert channel_map(3, None, "BF=grey,DAPI,GFP").colours == ("grey", "green", "magenta")
    assert channel_map(3, None, "0=grey").names == ("ch0", "ch1", "ch2")
    # Named channels (OME, channel groups): bare names matching keep them; others rename in order.
    assert channel_map(2, ["w1", "w2"], "w2").names == ("w1", "w2")
    assert channel_map(2, ["w1", "w2"], "Hoechst,actin").names == ("Hoechst", "actin")
    with pytest.raises(DrlError, match="names 3 channels"):
        channel_map(2, ["w1", "w2"], "a,b,c")
    with pytest.raises(DrlError, match="unknown channel colour"):
        parse_channels("DNA=pink")
    with pytest.raises(DrlError, match="unknown channel colour"):
        parse_channels("#12")


def test_ome_channel_names_are_read(tmp_path):
    from drlcore.data import decode

    stack = np.stack([draw_cell()[1][..., k] for k in range(3)])
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, stack, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["BF", "Hoechst", "GFP"]}})
    image = decode.decode(path.read_bytes())
    assert image.channel_map.names == ("BF", "Hoechst", "GFP")
    assert image.channel_map.roles == ("brightfield", "dna", "fluorescence")
    assert image.channel_pixels.dtype == np.uint16  # measured in file units
    assert ome_channel_names(tifffile.TiffFile(path).ome_metadata) == ["BF", "Hoechst", "GFP"]
    assert ome_channel_names("<OME") is None and ome_channel_names(None) is None
    row = measure(image.rgb, channels=image.channel_pixels,
                  channel_names=image.channel_map.names)
    assert feature_family("morph_Hoechst_cell_integrated") == "dna"
    assert row["morph_Hoechst_cell_integrated"] > 0


# --------------------------------------------------------------------------- families


def test_every_new_column_has_a_family():
    for column in channel_columns(NAMES):
        family = feature_family(column)
        if column.endswith("_background"):
            assert family is None  # the frame's level, not the object's
        else:
            assert family in FAMILIES, column
    assert feature_family("morph_DNA_cell_integrated") == "dna"
    assert feature_family("morph_DNA_nucleus_integrated") == "dna"
    assert feature_family("morph_DNA_cytoplasm_integrated") == "intensity"
    assert feature_family("morph_DNA_cell_mean") == "intensity"
    assert feature_family("morph_actin_cell_integrated") == "intensity"
    assert feature_family("morph_actin_cell_glcm_contrast") == "texture"
    assert feature_family("morph_nucleus_area") == "size"
    assert feature_family("morph_cytoplasm_area") == "size"
    assert feature_family("morph_nucleus_eccentricity") == "shape"
    assert feature_family("morph_intensity_integrated") == "intensity"
    assert feature_family("morph_intensity_background") is None
    assert feature_family("morph_area") == "size"  # object-level columns unchanged
    assert feature_channel("morph_Hoechst_33342_nucleus_mean") == "Hoechst_33342"
    assert feature_channel("morph_area") is None


def test_heatmap_groups_new_columns_by_family():
    import pandas as pd

    from explorer.figures import heatmap_order

    columns = ["morph_area", "morph_DNA_cell_integrated", "morph_DNA_cell_mean",
               "morph_actin_cell_glcm_contrast", "morph_nucleus_area", "morph_DNA_background"]
    grid = pd.DataFrame(np.random.default_rng(0).uniform(-1, 1, (3, len(columns))),
                        columns=columns)
    _, order, spans = heatmap_order(grid)
    assert [s[0] for s in spans] == ["size", "intensity", "dna", "texture", "other"]
    assert order[-1] == "morph_DNA_background"


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_ifc_dna_content_orders_the_cell_cycle(shared_data):
    """Integrated DNA orders G1 < S < G2 with G2/G1 in [1.6, 2.2] (a doubled genome after
    background), and every cell is measured (issue 19)."""
    import pandas as pd

    from drlcore.data import decode

    folder = shared_data / "ifc-cellcycle"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    rows = []
    for path in sorted(folder.glob("*/*.tif")):
        image = decode.decode(path.read_bytes())
        assert image.channel_map.names == ("BrightField", "DNA", "DarkField")
        row = measure(image.rgb, channels=image.channel_pixels,
                      channel_names=image.channel_map.names)
        row["label"] = path.parent.name
        rows.append(row)
    table = pd.DataFrame(rows)
    assert len(table) == 600
    assert (~table["morph_ok"]).mean() <= 0.01
    median = table.groupby("label")["morph_DNA_cell_integrated"].median()
    assert median["G1"] < median["S_phase"] < median["G2"]
    assert 1.6 <= median["G2"] / median["G1"] <= 2.2
    phases = table[table["label"] != "Prophase"]
    order = phases["label"].map({"G1": 0, "S_phase": 1, "G2": 2})
    assert spearmanr(phases["morph_DNA_cell_integrated"], order)[0] >= 0.8


def test_heatmap_shows_a_compact_set_by_default():
    from explorer.figures import heatmap_features

    columns = [*FEATURE_NAMES, *channel_columns(NAMES), "morph_ch1_DNA_mean"]
    shown = heatmap_features(columns)
    assert heatmap_features(columns, every=True) == columns
    assert set(FEATURE_NAMES) <= set(shown)
    assert {"morph_DNA_cell_integrated", "morph_DNA_nucleus_integrated", "morph_actin_cell_mean",
            "morph_actin_cell_glcm_contrast", "morph_nucleus_area"} <= set(shown)
    assert not {"morph_DNA_background", "morph_DNA_cell_q25", "morph_actin_nucleus_integrated",
                "morph_ch1_DNA_mean"} & set(shown)
    assert len(shown) <= 40


def test_a_cell_without_stain_has_no_nucleus_and_says_so():
    rgb, stored, cell, _ = draw_cell(dna=0.0)
    row = measure(rgb, channels=stored, channel_names=NAMES)
    assert row["morph_ok"] and "no nucleus" in row["morph_note"]
    assert row["morph_area"] == pytest.approx(cell.sum())
    assert np.isnan(row["morph_nucleus_area"]) and np.isnan(row["morph_cytoplasm_area"])
    assert np.isnan(row["morph_DNA_nucleus_integrated"])
    assert row["morph_DNA_cell_integrated"] == pytest.approx(0)
