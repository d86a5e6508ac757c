"""``drl export``: the h5ad file opens with anndata and holds exactly what the run holds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drlcore.data import rundir
from drlcore.cli import main
from drlcore.errors import DrlError
from drlcore.runs.export import export_run, run_to_anndata
from drlcore.runs.pipeline import run_pipeline
from test_pipeline import _config, make_dataset, source_model  # noqa: F401 (fixture)

anndata = pytest.importorskip("anndata")


@pytest.fixture(scope="module")
def run(tmp_path_factory, source_model):  # noqa: F811
    root = tmp_path_factory.mktemp("export")
    make_dataset(root / "cells")
    return run_pipeline(root / "cells", root / "run", _config(root, source_model))


def test_h5ad_round_trip_matches_the_run(run, tmp_path):
    out = export_run(run, tmp_path / "cells.h5ad")
    adata = anndata.read_h5ad(out)
    objects = pd.read_parquet(run / rundir.OBJECTS)
    analysis = json.loads((run / rundir.ANALYSIS).read_text())
    zcols = rundir.latent_columns(objects)

    assert adata.shape == (len(objects), len(zcols))
    np.testing.assert_allclose(adata.X, objects[zcols].to_numpy(np.float32))
    assert list(adata.var_names) == list(analysis["dim_names"])
    assert list(adata.obs["label"].astype(str)) == list(objects["label"])
    assert list(adata.obs_names) == list(objects["path"])
    morph = [c for c in objects.columns if c.startswith("morph_")]
    assert morph and all(c in adata.obs for c in morph)
    np.testing.assert_allclose(adata.obs["morph_area"].to_numpy(float),
                               objects["morph_area"].to_numpy(float), equal_nan=True)
    for name, cols in (("X_pca", ["pca_x", "pca_y"]), ("X_umap", ["umap_x", "umap_y"])):
        np.testing.assert_allclose(adata.obsm[name], objects[cols].to_numpy(float))
    corr = pd.read_parquet(run / rundir.CORRELATIONS)
    stored = adata.uns["latent_morphology_correlations"]
    assert len(stored) == len(corr)
    np.testing.assert_allclose(stored["value"].to_numpy(float), corr["value"].to_numpy(float),
                               equal_nan=True)
    manifest = adata.uns["drl"]["manifest"]
    assert manifest["stages"]["model"]["model_hash"] == \
        rundir.read_manifest(run)["stages"]["model"]["model_hash"]
    assert "X_backbone" not in adata.obsm


def test_h5ad_with_backbone_features(run, tmp_path):
    adata = run_to_anndata(run, with_features=True)
    np.testing.assert_allclose(adata.obsm["X_backbone"], np.load(run / rundir.FEATURES))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables(run, tmp_path, fmt):
    out = export_run(run, tmp_path / f"objects.{fmt}")
    table = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    objects = pd.read_parquet(run / rundir.OBJECTS)
    assert list(table.columns) == list(objects.columns) and len(table) == len(objects)


def test_cli_export_and_refusals(run, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "r.h5ad")]) == 0
    assert (tmp_path / "r.h5ad").is_file()
    assert main(["export", str(run), "--out", str(tmp_path / "r.txt")]) == 2
    assert "unknown export format" in capsys.readouterr().err
    with pytest.raises(DrlError, match="no objects.parquet"):
        export_run(tmp_path, tmp_path / "x.h5ad")
    assert not list(tmp_path.glob(".*.tmp"))


def test_slide_set_is_stamped(run, tmp_path):
    from PIL import Image

    from drlcore.runs.slides import SlideConfig, figure_stamp, write_slide_set

    stamp = figure_stamp(run)
    manifest = rundir.read_manifest(run)["stages"]
    assert stamp["model_hash"] == manifest["model"]["model_hash"][:12] != "no model"
    assert stamp["backbone"] == "test-tiny"
    written = write_slide_set(run, tmp_path / "slides", SlideConfig(dpi=40, n_steps=5, n_rows=2))
    names = {p.name for p in written}
    n_axes = len(rundir.latent_columns(pd.read_parquet(run / rundir.OBJECTS)))
    assert sum(n.startswith("axis-") for n in names) == 2 * n_axes
    assert {"correlations.svg", "class-map.png", "anomaly-map.svg", "axes-card.png"} <= names
    for path in written:
        if path.suffix == ".svg":
            text = path.read_text()
            assert stamp["caption"] in text or stamp["caption"].replace("·", "&#183;") in text
            assert stamp["model_hash"] in text.split("<metadata>")[1].split("</metadata>")[0]
        else:
            with Image.open(path) as img:
                assert stamp["model_hash"] in img.text["Description"]
                assert img.size == (round(13.33 * 40), round(7.5 * 40))


def test_figures_cli_and_class_filter(run, tmp_path, capsys):
    assert main(["figures", str(run), "--out", str(tmp_path / "f"), "--dpi", "40",
                 "--format", "png", "--label", "round", "--rows", "1", "--steps", "4"]) == 0
    assert len(list((tmp_path / "f").glob("axis-*.png"))) >= 1
    assert main(["figures", str(run), "--out", str(tmp_path / "g"), "--label", "nosuch"]) == 2
    assert "no objects of class" in capsys.readouterr().err
