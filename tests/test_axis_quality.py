"""Smoke test of benchmarks/axis_quality.py's core on a tiny generated set (no backbone, no
transfer): every column of the tables is filled with finite numbers, and known answers hold."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "axis_quality.py"
_spec = importlib.util.spec_from_file_location("axis_quality", _PATH)
aq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aq)


def _tiny_set(n_per_class: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(["a", "b", "c"]), n_per_class)
    n = len(y)
    area = rng.uniform(100, 1000, n) + 300 * (y == "b")
    ecc = rng.uniform(0, 1, n)
    sat = rng.uniform(0.1, 0.6, n)
    inten = rng.uniform(0.2, 0.8, n)
    morph = pd.DataFrame({"morph_area": area, "morph_eccentricity": ecc,
                          "morph_saturation": sat, "morph_hue": rng.uniform(200, 300, n),
                          "morph_intensity_mean": inten, "morph_ok": np.ones(n, bool)})
    centres = rng.normal(0, 3, (3, 40))
    codes = np.searchsorted(["a", "b", "c"], y)
    X = centres[codes] + rng.normal(0, 1, (n, 40))
    X[:, 0] += area / 100  # the raw features hold area linearly
    Z = rng.normal(0, 1, (n, 10))
    Z[:, 3] = np.log(area) + rng.normal(0, 0.05, n)  # one axis follows area monotonically
    Z[:, :3] += centres[codes, :3]
    meta = {"dim_names": [f"z{j}: f{j}" for j in range(10)], "dim_factor": [None] * 10,
            "inactive_dims": []}
    return X, Z, y, morph, meta


def test_best_axis_and_correlations_known_answers():
    x = np.arange(20, dtype=float)
    Z = np.stack([np.sin(x), -x ** 3, np.full(20, 1.0)], axis=1)
    best = aq.best_axis(Z, x)
    assert best["rho_axis"] == 1 and best["rho"] == pytest.approx(1.0)
    assert best["r_axis"] == 1 and best["r"] < 1.0  # cubic: rank-perfect, not linear
    r, rho, n = aq.correlations(np.full(5, 2.0), np.arange(5.0))
    assert math.isnan(r) and math.isnan(rho) and n == 5


def test_core_fills_every_column_with_finite_values():
    X, Z, y, morph, meta = _tiny_set()
    ref = aq.raw_reference(X, y, morph)
    heldout = np.arange(0, len(y), 3)
    rows = []
    for mode, held in (("discovered", None), ("anchored", heldout)):
        m = aq.score_codes(Z, meta, y, morph, ref, held)
        rows.append({"dataset": "tiny", "source": "cells", "preprocess": "pad", "mode": mode,
                     "transfer": {"best_epoch": 1, "epochs_run": 2}, "metrics": m,
                     "goals": aq.goals(m), "seconds": 0.0})
    disc = rows[0]["metrics"]
    for value in (disc["classification"]["ratio_mlp"], disc["classification"]["ratio_logreg"],
                  disc["open_set"]["latent"]["mean_auroc"], disc["open_set"]["raw"]["mean_auroc"]):
        assert np.isfinite(value)
    for target in aq.TARGETS:
        entry = disc["correlations"][target]
        for part in ("latent", "pca10", "ceiling"):
            assert np.isfinite(entry[part]["rho"]) and np.isfinite(entry[part]["r"]), (target, part)
    area = disc["correlations"]["area"]
    assert area["latent"]["rho_axis"] == 3 and area["latent"]["rho"] > 0.95
    assert rows[1]["metrics"]["n_correlation_rows"] == len(heldout)
    assert disc["names"]["dim_names"][3] == "z3: size"
    assert rows[0]["goals"]["area"]["pass"] is True

    table = aq.render_tables(rows, ["canvas: skipped"])
    for header in ("BA MLP lat / raw (ratio)", "BA logreg lat / raw (ratio)",
                   "open-set AUROC lat / raw", "named axes supported", "| area |",
                   "eccentricity", "colour (saturation)", "intensity (mean)", "| class |",
                   "| open set |", "## Not run"):
        assert header in table, header
    body = [line for line in table.splitlines() if line.startswith("| tiny ")]
    assert len(body) == 2 * 5  # two rows in each of the five per-combination tables
    assert not any("n/a" in line for line in body)
    assert "PASS: area" in table
