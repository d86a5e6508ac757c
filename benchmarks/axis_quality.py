"""Axis quality: the benchmark that decides (issue 8, item 6).

For each dataset x source model x preprocessing x mode, what ``drl run`` gives a user, scored
against what the raw backbone features already hold:

- **class information**: balanced accuracy of the 10 latent means / of the raw features, with the
  engine's MLP (``classify.evaluate_classifiers``) and with a logistic regression, both on the
  same stratified 5-fold CV (seed 0; wide inputs PCA-projected to 128 inside each fold, as the
  engine does);
- **single-axis correlations** with object area, eccentricity, a colour feature (saturation) and
  an intensity feature (intensity mean): the best |Pearson r| and best |Spearman rho| of one
  latent axis (active axes only), next to the best single PCA axis of the raw features (PCA on
  the standardised raw features, fitted on all images, best of the first 10 PCs; the first 20 are
  in the JSON, and the goal text also gives PCA of the centred, unstandardised features, which
  can be the stronger baseline) and next to the ceiling, a 5-fold ``RidgeCV`` read-out of the raw features (r and
  rho of the out-of-fold predictions);
- **names**: the share of named axes (``drlcore.analysis.naming`` on the run's own correlations, exactly
  what ``analysis.json`` ``axes`` holds) whose data supports the name: |rho| >= 0.5 (Spearman,
  the statistic the names are given on; Pearson in the JSON) with a feature of its family;
- **open set**: mean AUROC with each class held out in turn (``anomaly.holdout_each_class``,
  kNN k=10, as ``drl analyze``), for the latents and for the raw features measured the same way.

Modes: ``discovered`` is the unanchored transfer with the source's 10 axes (``drl run --anchor none
--latent-dim 10``); ``anchored`` is ``drl run --anchor area,eccentricity[,saturation],intensity_mean
--latent-dim 10`` (saturation only where the images have colour); ``defaults`` is ``drl run`` as
it is now (issue 19): anchors chosen from the data and a data-chosen number of free axes. For
``defaults`` the JSON also holds the run's axis card (``drlcore.analysis.axis_card``: every axis
vs the best of the first J PCs and the ridge ceiling, on the held-out images), and the tables
give, per anchored axis, its held-out |rho| against its ceiling and the best PCA axis.
In anchored runs every correlation figure (latent, PCA, ceiling) and the name check are computed
on the images held out of the fine-tuning only; classification and open set use all images.

The transfer is the pipeline's own transfer stage (``pipeline._transfer_stage``: default
``TransferConfig``, early stopping, the model cache), and the latents are the encode stage's
posterior means, so the figures are those of ``drl run``. Features come from the content-hash
cache (``--cache-dir`` or ``$DRL_CACHE_DIR``), morphology from the analysis stage's cache.

    DRL_CACHE_DIR=/tmp/drl-cache .venv/bin/python benchmarks/axis_quality.py
    .venv/bin/python benchmarks/axis_quality.py --quick          # demo only, small: a smoke check
    ... --datasets blood-cells-pbc --sources cells --preprocess pad --modes discovered

Writes ``benchmarks/results/axis_quality.md`` (the tables printed) and ``axis_quality.json`` (every
number) atomically; ``--out-dir`` writes them elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import io
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
REAL_DATASETS = ("blood-cells-pbc", "plankton-ndsb", "ifc-cellcycle")
DATASETS = (*REAL_DATASETS, "demo")
SOURCES = ("cells", "dsprites")
PREPROCESS = ("pad", "canvas")
MODES = ("discovered", "anchored", "defaults")

# The four targets of the tables: family label -> morphology column.
TARGETS = {"area": "morph_area", "eccentricity": "morph_eccentricity",
           "colour": "morph_saturation", "intensity": "morph_intensity_mean"}
EXTRA_TARGETS = {"hue": "morph_hue"}  # in the JSON only
PCA_AXES = 10  # the baseline: the best of the first 10 PCs (as many axes as the latents)
PCA_AXES_WIDE = 20
SUPPORT_R = 0.5  # |rho| a named axis needs with its own family (issue 8 goal)
GOAL_BA_RATIO = 0.9
GOAL_AREA_OF_CEILING = 0.9
CV_FOLDS = 5
SEED = 0
DEMO_IMAGES, DEMO_IMAGES_QUICK = 600, 120
RIDGE_ALPHAS = np.logspace(-1, 5, 13)


# --------------------------------------------------------------------------- small pure parts


def _finite_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def correlations(a, b) -> tuple[float, float, int]:
    """(Pearson r, Spearman rho, n) over the rows where both are finite; NaN when either side is
    constant or fewer than 4 rows remain."""
    from scipy import stats

    x, y = _finite_pair(np.asarray(a, float), np.asarray(b, float))
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, len(x)
    return float(np.corrcoef(x, y)[0, 1]), float(stats.spearmanr(x, y).statistic), len(x)


def best_axis(Z: np.ndarray, values: np.ndarray, axes=None) -> dict:
    """Best single column of ``Z`` for ``values``: |r| and |rho| maximised separately."""
    axes = range(Z.shape[1]) if axes is None else axes
    best = {"r": math.nan, "r_axis": None, "rho": math.nan, "rho_axis": None, "n": 0}
    for j in axes:
        r, rho, n = correlations(Z[:, j], values)
        best["n"] = max(best["n"], n)
        for stat, value in (("r", r), ("rho", rho)):
            if np.isfinite(value) and not abs(value) <= np.nan_to_num(best[stat], nan=-1.0):
                best[stat], best[f"{stat}_axis"] = abs(value), int(j)
    return best


def cv_folds(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds ``evaluate_classifiers`` uses (stratified, shuffled, seed 0), so the logistic
    regression sees exactly the MLP's protocol."""
    from sklearn.model_selection import StratifiedKFold

    classes, encoded = np.unique(np.asarray(y).astype(str), return_inverse=True)
    folds = min(CV_FOLDS, int(np.bincount(encoded).min()))
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
                .split(np.zeros(len(y)), encoded))


def logreg_cv_balanced_accuracy(X: np.ndarray, y: np.ndarray, max_dims: int = 128) -> float:
    """Balanced accuracy of out-of-fold logistic-regression predictions (pooled over the folds,
    as ``evaluate_classifiers`` pools its confusion matrix)."""
    import warnings

    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y = np.asarray(y).astype(str)
    predicted = np.empty(len(y), dtype=object)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in cv_folds(y):
            steps = ([PCA(min(max_dims, len(train)), svd_solver="randomized", random_state=SEED)]
                     if X.shape[1] > max_dims else [])
            clf = make_pipeline(*steps, StandardScaler(), LogisticRegression(max_iter=3000))
            clf.fit(X[train], y[train])
            predicted[test] = clf.predict(X[test])
    return float(balanced_accuracy_score(y, predicted.astype(str)))


def class_information(X: np.ndarray, y: np.ndarray) -> dict:
    from drlcore.analysis.classify import evaluate_classifiers

    mlp = evaluate_classifiers(X, y, split=None, seed=SEED, models=("mlp",))
    return {"mlp": float(mlp["models"]["mlp"]["balanced_accuracy"]),
            "logreg": logreg_cv_balanced_accuracy(np.asarray(X, np.float64), y),
            "chance": float(mlp["chance"]["balanced_accuracy"]), "protocol": mlp["protocol"],
            "n_splits": mlp["n_splits"]}


def open_set_auroc(X: np.ndarray, y: np.ndarray) -> dict:
    from drlcore.analysis.anomaly import holdout_each_class

    res = holdout_each_class(np.asarray(X, np.float64), np.asarray(y).astype(str), seed=SEED)
    return {"mean_auroc": res["mean_auroc"], "worst_auroc": res["worst_auroc"],
            "worst_class": res["worst_class"]}


def ridge_ceiling(X: np.ndarray, values: np.ndarray) -> dict:
    """Out-of-fold predictions of a 5-fold ``RidgeCV`` (standardised features) for ``values``;
    NaN where the value is missing. The best any linear read-out of the raw features reaches."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    values = np.asarray(values, float)
    pred = np.full(len(values), np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    alphas = []
    if len(ok) < 2 * CV_FOLDS or np.ptp(values[ok]) == 0:
        return {"pred": pred, "alphas": alphas}
    for train, test in KFold(CV_FOLDS, shuffle=True, random_state=SEED).split(ok):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        model.fit(X[ok[train]], values[ok[train]])
        pred[ok[test]] = model.predict(X[ok[test]])
        alphas.append(float(model[-1].alpha_))
    return {"pred": pred, "alphas": alphas}


def pca_axes(X: np.ndarray, n: int = PCA_AXES_WIDE, standardise: bool = True) -> np.ndarray:
    """Scores on the first ``n`` principal components of the standardised (or only centred)
    raw features."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Xs = StandardScaler(with_std=standardise).fit_transform(np.asarray(X, np.float64))
    return PCA(min(n, *Xs.shape), random_state=SEED).fit_transform(Xs)


def colour_measurable(morph: pd.DataFrame) -> bool:
    """Whether the images have colour at all (grey images stored as RGB do not)."""
    from drlcore.analysis.morphology import ACHROMATIC_SATURATION

    sat = morph[TARGETS["colour"]].to_numpy(float)
    sat = sat[np.isfinite(sat)]
    return len(sat) >= 4 and float(np.median(sat)) >= ACHROMATIC_SATURATION


def morph_values(morph: pd.DataFrame, column: str) -> np.ndarray:
    ok = morph["morph_ok"].astype(bool).to_numpy() if "morph_ok" in morph else True
    return np.where(ok, morph[column].to_numpy(dtype=float), np.nan)


# --------------------------------------------------------------------------- reference and scoring


def raw_reference(X: np.ndarray, y: np.ndarray, morph: pd.DataFrame) -> dict:
    """What the raw features hold, once per dataset x preprocessing: class information, open
    set, PCA scores and the ridge read-out of every target (arrays, scored per row set later)."""
    X = np.asarray(X, np.float64)
    targets = {**TARGETS, **EXTRA_TARGETS}
    return {"classification": class_information(X, y), "open_set": open_set_auroc(X, y),
            "pca": pca_axes(X), "pca_centred": pca_axes(X, PCA_AXES, standardise=False),
            "ridge": {t: ridge_ceiling(X, morph_values(morph, col)) for t, col in targets.items()},
            "colour_measurable": colour_measurable(morph)}


def correlation_block(Z: np.ndarray, active: list[int], ref: dict, morph: pd.DataFrame,
                      rows: np.ndarray) -> dict:
    """Per target, on ``rows``: best latent axis, best PCA axis (first 10 and 20), ceiling."""
    out = {}
    for target, col in {**TARGETS, **EXTRA_TARGETS}.items():
        v = morph_values(morph, col)[rows]
        entry = {"feature": col, "latent": best_axis(Z[rows], v, active),
                 "pca10": best_axis(ref["pca"][rows], v, range(min(PCA_AXES, ref["pca"].shape[1]))),
                 "pca20": best_axis(ref["pca"][rows], v),
                 # PCA of the centred, unstandardised features: a second, sometimes stronger
                 # baseline (standardising lifts near-dead backbone units to unit variance)
                 "pca10_centred": best_axis(ref["pca_centred"][rows], v)}
        r, rho, n = correlations(ref["ridge"][target]["pred"][rows], v)
        entry["ceiling"] = {"r": abs(r) if np.isfinite(r) else math.nan,
                            "rho": abs(rho) if np.isfinite(rho) else math.nan, "n": n,
                            "alphas": ref["ridge"][target]["alphas"]}
        entry["measurable"] = not (target in ("colour", "hue") and not ref["colour_measurable"])
        out[target] = entry
    return out


def name_support(axes: list[dict], corr: pd.DataFrame) -> dict:
    """Each named axis against its own family on the rows of ``corr`` (a correlation table)."""
    from drlcore.analysis.naming import feature_family

    fam = corr.assign(family=corr["feature"].map(feature_family))
    checks = []
    for axis in axes:
        if axis["status"] != "named":
            continue
        mine = fam[(fam["dim"] == axis["dim"]) & (fam["family"] == axis["family"])]
        best = {m: float(mine.loc[mine["method"] == m, "value"].abs().max())
                if (mine["method"] == m).any() else math.nan for m in ("spearman", "pearson")}
        checks.append({"dim": axis["dim"], "name": axis["name"], "family": axis["family"],
                       "named_on": axis["feature"], "named_r": axis["r"],
                       "best_rho": best["spearman"], "best_r": best["pearson"],
                       "supported": bool(np.nan_to_num(best["spearman"]) >= SUPPORT_R),
                       "supported_pearson": bool(np.nan_to_num(best["pearson"]) >= SUPPORT_R)})
    n = len(checks)
    return {"n_axes": len(axes), "n_named": n,
            "n_supported": sum(c["supported"] for c in checks),
            "share": (sum(c["supported"] for c in checks) / n) if n else math.nan,
            "share_pearson": (sum(c["supported_pearson"] for c in checks) / n) if n else math.nan,
            "axes": checks}


def _correlation_table(Z: np.ndarray, morph: pd.DataFrame, dim_names: list[str]) -> pd.DataFrame:
    """The analysis stage's own latent x morphology table (same function, same settings)."""
    from drlcore.analysis.analyze import AnalyzeConfig, _correlations

    notes: list[str] = []
    return _correlations(Z, morph.reset_index(drop=True), pd.DataFrame(index=range(len(Z))),
                         dim_names, AnalyzeConfig(), notes)


def score_codes(Z: np.ndarray, meta: dict, y: np.ndarray, morph: pd.DataFrame, ref: dict,
                heldout: np.ndarray | None = None) -> dict:
    """Every figure of one combination, from its latent means ``Z`` (n, J) and the model's
    ``meta`` (``dim_names``, ``dim_factor``, ``inactive_dims``). ``heldout``: rows held out of an
    anchored fine-tuning; the correlation figures and the name check use only those rows."""
    from drlcore.analysis.naming import name_axes
    from drlcore.disentangle.train import latent_activity

    Z = np.asarray(Z, np.float64)
    n, J = Z.shape
    _, inactive = latent_activity(Z)
    inactive = sorted(set(inactive) | set(meta.get("inactive_dims") or []))
    active = [j for j in range(J) if j not in inactive]
    rows = np.arange(n) if heldout is None else np.asarray(heldout, int)

    source_names = list(meta.get("dim_names") or [f"z{j}" for j in range(J)])
    factors = meta.get("dim_factor")
    corr = _correlation_table(Z, morph, source_names)
    axes = name_axes(corr, source_names, inactive=meta.get("inactive_dims") or [],
                     source_factors=factors if isinstance(factors, list) else None)
    support_corr = corr if heldout is None else _correlation_table(
        Z[rows], morph.iloc[rows], source_names)
    lat_cls = class_information(Z, y)
    raw_cls = ref["classification"]
    lat_open = open_set_auroc(Z, y)
    return {
        "n": n, "n_correlation_rows": int(len(rows)),
        "correlation_rows": "all images" if heldout is None else "held-out images only",
        "latent_dim": J, "active": len(active),
        "classification": {"latent": lat_cls, "raw": raw_cls,
                           "ratio_mlp": lat_cls["mlp"] / raw_cls["mlp"],
                           "ratio_logreg": lat_cls["logreg"] / raw_cls["logreg"]},
        "open_set": {"latent": lat_open, "raw": ref["open_set"]},
        "correlations": correlation_block(Z, active, ref, morph, rows),
        "names": {"dim_names": [a["name"] for a in axes],
                  "support": name_support(axes, support_corr)},
    }


def defaults_card(Z, meta: dict, data: dict, heldout, anchors) -> list[dict]:
    """The engine's axis card for the anchored axes (held-out rows): what ``drl run`` shows."""
    from drlcore.analysis import axis_card

    anchors = [a if a.startswith("morph_") else f"morph_{a}" for a in anchors]
    axes = [{"name": f"z{j}: {a.removeprefix('morph_')}", "status": "named", "feature": a}
            for j, a in enumerate(anchors)]
    return axis_card.axis_card(np.asarray(Z, float)[:, :len(anchors)] if anchors else
                               np.zeros((len(Z), 0)), data["features"], data["morph"], axes,
                               anchors=anchors, rows=heldout,
                               rows_label="held-out images" if heldout is not None else "all")


# --------------------------------------------------------------------------- goals


def goals(m: dict) -> dict:
    """The issue's four goals for one combination: ``{goal: {"pass": bool|None, "text": str}}``."""
    c = m["classification"]
    out = {"class": {"pass": bool(c["ratio_mlp"] >= GOAL_BA_RATIO),
                     "text": f"MLP {c['ratio_mlp']:.2f} of raw (logreg {c['ratio_logreg']:.2f}), "
                             f"goal {GOAL_BA_RATIO}"}}
    a = m["correlations"]["area"]
    lat, pca, ceil = a["latent"]["rho"], a["pca10"]["rho"], a["ceiling"]["rho"]
    frac = lat / ceil if np.isfinite(lat) and np.isfinite(ceil) and ceil > 0 else math.nan
    ok = bool(np.isfinite(frac) and frac >= GOAL_AREA_OF_CEILING and lat > pca)
    out["area"] = {"pass": ok, "fraction_of_ceiling": frac,
                   "text": f"area: best axis rho {lat:.2f} vs ceiling {ceil:.2f} -> {frac:.2f} of "
                           f"ceiling, goal {GOAL_AREA_OF_CEILING}; best PCA {pca:.2f} (of centred, "
                           f"unstandardised features {a['pca10_centred']['rho']:.2f})"}
    s = m["names"]["support"]
    if s["n_named"] == 0:
        out["names"] = {"pass": None, "text": f"no named axis (of {s['n_axes']})"}
    else:
        bad = [f"{x['name']} rho {x['best_rho']:.2f}" for x in s["axes"] if not x["supported"]]
        out["names"] = {"pass": s["n_supported"] == s["n_named"],
                        "text": f"{s['n_supported']}/{s['n_named']} named axes supported"
                                + (f" (not: {', '.join(bad)})" if bad else "")}
    lo, ro = m["open_set"]["latent"]["mean_auroc"], m["open_set"]["raw"]["mean_auroc"]
    out["open_set"] = {"pass": bool(lo > ro),
                       "text": f"AUROC {lo:.2f} vs raw {ro:.2f} ({lo - ro:+.2f})"}
    return out


# --------------------------------------------------------------------------- data and runs


def preprocess_unsupported(preprocess: str) -> str | None:
    """None when ``FeatureConfig`` can do ``preprocess``, else why not."""
    from drlcore.embedding.features import FeatureConfig

    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    if "preprocess" in fields:
        try:
            FeatureConfig(preprocess=preprocess)
        except Exception as err:  # an unknown mode
            return f"FeatureConfig refuses preprocess={preprocess!r}: {err}"
        return None
    if preprocess == "pad":
        return None
    if preprocess == "stretch":
        return None
    return (f"FeatureConfig has no 'preprocess' field yet, so {preprocess!r} cannot be run "
            f"(only pad, and stretch via pad_to_square=False)")


def feature_config(preprocess: str, cache_dir: str | None):
    from drlcore.embedding.features import FeatureConfig

    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    if "preprocess" in fields:
        return FeatureConfig(preprocess=preprocess, cache_dir=cache_dir)
    return FeatureConfig(pad_to_square=preprocess == "pad", cache_dir=cache_dir)


def render_demo_images(folder: Path, n_images: int, seed: int = 0) -> Path:
    """The built-in demo's images (``drlcore.runs.demo.build_demo``: Texture-dSprites from the shipped
    source's own config, one folder per shape), written once as PNG files."""
    from PIL import Image

    from drlcore.disentangle.dsprites import DSpritesConfig, TextureDSprites, factors_to_frame
    from drlcore.io import atomic_write_bytes, read_json
    from drlcore.runs.pipeline import shipped_source_model

    cfg = read_json(shipped_source_model("effnet-lite0") / "config.json")
    ds_cfg = cfg.get("training", {}).get("dsprites")
    ds = TextureDSprites(DSpritesConfig.from_dict(ds_cfg) if ds_cfg else DSpritesConfig())
    factors = ds.sample_factors(n_images, np.random.default_rng(seed))
    table = factors_to_frame(ds, factors)
    shape_col = "shape" if "shape" in table.columns else table.columns[0]
    for start in range(0, n_images, 64):
        for offset, image in enumerate(ds.render(factors[start:start + 64])):
            i = start + offset
            target = folder / f"{table[shape_col].iloc[i]}" / f"sprite_{i:04d}.png"
            if not target.is_file():
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                atomic_write_bytes(target, buf.getvalue())
    return folder


def dataset_source(name: str, workdir: Path, quick: bool) -> Path:
    if name == "demo":
        n = DEMO_IMAGES_QUICK if quick else DEMO_IMAGES
        return render_demo_images(workdir / f"demo-images-{n}", n)
    path = SHARED_DATA / name
    if not path.is_dir():
        raise SystemExit(f"dataset {name!r} not found at {path}")
    return path


def prepare(name: str, preprocess: str, workdir: Path, cache_dir: str | None, quick: bool):
    """Features folder (from the cache where possible), labels and morphology of a dataset."""
    from drlcore.analysis.analyze import AnalyzeConfig, _morphology
    from drlcore.embedding.features import extract_features
    from drlcore.progress import NullReporter
    from drlcore.data.rundir import load_features_dir

    run_dir = workdir / f"{name}{'-quick' if quick and name == 'demo' else ''}-{preprocess}"
    start = time.perf_counter()
    extract_features(dataset_source(name, workdir, quick), run_dir,
                     feature_config(preprocess, cache_dir))
    feats, images, entry = load_features_dir(run_dir)
    feats = np.asarray(feats, dtype=np.float32)
    notes: list[str] = []
    morph = _morphology(images.reset_index(drop=True), run_dir, AnalyzeConfig(cache_dir=cache_dir),
                        NullReporter(), notes)
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        raise SystemExit(f"{name}: {int((~finite).sum())} rows with non-finite features")
    y = images["label"].astype(str).to_numpy()
    return {"run_dir": run_dir, "features": feats, "labels": y, "morph": morph,
            "preprocessing": entry.get("preprocessing"),
            "preprocess_decision": entry.get("preprocess"), "notes": notes,
            "seconds": round(time.perf_counter() - start, 1)}


def anchors_for(morph: pd.DataFrame) -> tuple[str, ...]:
    names = ["area", "eccentricity"]
    if colour_measurable(morph):
        names.append(TARGETS["colour"].removeprefix("morph_"))
    names.append(TARGETS["intensity"].removeprefix("morph_"))
    return tuple(names)


def transfer_codes(data: dict, source: str, anchors: tuple[str, ...], preprocess: str,
                   cache_dir: str | None):
    """The pipeline's transfer stage (model cache included) and the encode stage's latent means."""
    from drlcore.disentangle.artifacts import load_model
    from drlcore.disentangle.encode import encode_features
    from drlcore.runs.pipeline import PipelineConfig, _transfer_stage, resolve_source_model
    from drlcore.progress import NullReporter

    fcfg = feature_config(preprocess, cache_dir)
    if anchors == "auto":  # the defaults of drl run
        config = PipelineConfig(features=fcfg, source_model=source)
    else:  # the pre-issue-19 protocol: the source's 10 axes
        config = PipelineConfig(features=fcfg, source_model=source, anchors=anchors or "none",
                                latent_dim=10)
    src = resolve_source_model(source, fcfg.backbone)
    model_dir = _transfer_stage(src, data["run_dir"], config, NullReporter())
    model, meta = load_model(model_dir)
    Z = encode_features(model, data["features"])["z_mean"]
    tm = meta.get("metrics", {}) or {}
    tinfo = tm.get("transfer", {})
    heldout = None
    if tm.get("anchor_heldout"):
        heldout = np.asarray(tm["anchor_heldout"]["rows"], int)
    anchored = [str(f).removeprefix("anchor:") for f in meta.get("dim_factor") or []
                if str(f).startswith("anchor:")]
    info = {"model_hash": meta["model_hash"], "best_epoch": tinfo.get("best_epoch"),
            "epochs_run": tinfo.get("epochs_run"), "anchors": anchored,
            "latent_dim": int(np.shape(Z)[1]),
            "anchor_report": tm.get("anchors")}
    return Z, meta, heldout, info


# --------------------------------------------------------------------------- tables


def _f(x, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _corr_cell(entry: dict, stat: str) -> str:
    if not entry["measurable"]:
        return "n/a (grey images)"
    lat = entry["latent"]
    axis = lat[f"{stat}_axis"]
    ax = f" z{axis}" if axis is not None else ""
    return (f"{_f(lat[stat])}{ax} / {_f(entry['pca10'][stat])} / {_f(entry['ceiling'][stat])}")


def _mark(g: dict) -> str:
    return {True: "PASS", False: "MISS", None: "n/a"}[g["pass"]] + ": " + g["text"]


def render_tables(rows: list[dict], skipped: list[str]) -> str:
    """The markdown report: class information and open set, correlations (Spearman, Pearson),
    names, goals, the ranking of the discovered combinations, and what was not run."""
    key = ("dataset", "source", "preprocess", "mode")
    head = "| dataset | source | prep | mode |"
    sep = "|---|---|---|---|"
    lines = ["# Axis quality (issue 8): latent axes vs raw backbone features", ""]
    lines.append("Generated by `benchmarks/axis_quality.py`. effnet-lite0 features; transfer at the "
                 "pipeline's defaults. Ratios are latent / raw with the same read-out and 5-fold "
                 "CV. Open set: mean AUROC, each class held out (kNN k=10).")
    lines.append("")
    lines.append("## Class information and open set")
    lines.append("")
    lines.append(head + " n | epochs | BA MLP lat / raw (ratio) | BA logreg lat / raw (ratio) | "
                 "open-set AUROC lat / raw | named axes supported | s |")
    lines.append(sep + "---|---|---|---|---|---|---|")
    for r in rows:
        m, c = r["metrics"], r["metrics"]["classification"]
        s = m["names"]["support"]
        lines.append(
            "| " + " | ".join(str(r[k]) for k in key) + f" | {m['n']} | "
            f"{r['transfer'].get('best_epoch')}/{r['transfer'].get('epochs_run')} | "
            f"{_f(c['latent']['mlp'])} / {_f(c['raw']['mlp'])} ({_f(c['ratio_mlp'])}) | "
            f"{_f(c['latent']['logreg'])} / {_f(c['raw']['logreg'])} ({_f(c['ratio_logreg'])}) | "
            f"{_f(m['open_set']['latent']['mean_auroc'])} / "
            f"{_f(m['open_set']['raw']['mean_auroc'])} | "
            f"{s['n_supported']}/{s['n_named']} ({_f(s['share'])}) | {r['seconds']} |")
    for stat, title in (("rho", "Spearman |rho|"), ("r", "Pearson |r|")):
        lines += ["", f"## Best single axis, {title}: latent (axis) / best of first {PCA_AXES} "
                      f"PCs of the standardised raw features / ceiling (5-fold RidgeCV of raw "
                      f"features)", ""]
        lines.append(head + " rows | area | eccentricity | colour (saturation) | "
                     "intensity (mean) |")
        lines.append(sep + "---|---|---|---|---|")
        for r in rows:
            corr = r["metrics"]["correlations"]
            lines.append("| " + " | ".join(str(r[k]) for k in key) +
                         f" | {r['metrics']['n_correlation_rows']}"
                         f"{' held-out' if r['mode'] != 'discovered' else ''} | " +
                         " | ".join(_corr_cell(corr[t], stat) for t in TARGETS) + " |")
    card_rows = [r for r in rows if r["metrics"].get("axis_card") is not None]
    if card_rows:
        lines += ["", "## Defaults (issue 19): each anchored axis on the held-out images", "",
                  "Anchors chosen by `drl run` from the data (per family, the column a 5-fold "
                  "ridge read-out of the raw features follows best, anchored when |rho| >= 0.5). "
                  "Per anchored axis: its |Spearman rho| with its anchor, the best of the first J "
                  "PCs of the standardised raw features (J = the run's latent axes) and the ridge "
                  "ceiling, all on the images held out of fine-tuning; goal: >= 0.9 of the ceiling "
                  "and above the PCA axis.", ""]
        lines.append(head + " axes | anchored axis: |rho| / PCA / ceiling (of ceiling) |")
        lines.append(sep + "---|---|")
        for r in card_rows:
            cells = []
            for c in r["metrics"]["axis_card"]:
                if c.get("rho") is None:
                    continue
                ok = (c["of_ceiling"] or 0) >= GOAL_AREA_OF_CEILING and c["beats_pca"]
                cells.append(f"{c['feature'].removeprefix('morph_')} {abs(c['rho']):.2f} / "
                             f"{_f(c['pca_rho'])} / {_f(c['ceiling_rho'])} "
                             f"({_f(c['of_ceiling'])}{'' if ok else ' MISS'})")
            lines.append("| " + " | ".join(str(r[k]) for k in key) +
                         f" | {r['transfer'].get('latent_dim')} | " + "; ".join(cells) + " |")
    from drlcore.analysis.naming import NamingConfig

    bar = NamingConfig()
    lines += ["", "## Axis names (from the run's own data) and their support "
                  f"(|rho| >= {SUPPORT_R} with the named family)", "",
              f"Names as `drl analyze` gives them (drlcore.analysis.naming: |{bar.method}| >= "
              f"{bar.min_abs_r:g}, BH q < {bar.alpha:g}, on all images). Support is checked on "
              f"the same images in discovered runs (with a naming bar of {bar.min_abs_r:g} >= "
              f"{SUPPORT_R} it then holds by construction, so the informative figure is how many "
              f"axes earn a name) and on the held-out images only in anchored runs.", ""]
    lines.append(head + " dim_names | not supported |")
    lines.append(sep + "---|---|")
    for r in rows:
        s = r["metrics"]["names"]["support"]
        bad = ", ".join(f"{x['name']} ({x['best_rho']:.2f})" for x in s["axes"]
                        if not x["supported"]) or "-"
        lines.append("| " + " | ".join(str(r[k]) for k in key) + " | " +
                     ", ".join(r["metrics"]["names"]["dim_names"]) + f" | {bad} |")
    lines += ["", "## Goals (issue 8)", "",
              "class: latent BA >= 0.9 of raw (MLP); area: best axis rho >= 0.9 of the ridge "
              "ceiling and above the best PCA axis; names: every named axis supported; open set: "
              "latent AUROC above raw. Goals are about discovered axes; anchored rows are shown "
              "for comparison.", ""]
    lines.append(head + " class | area | names | open set |")
    lines.append(sep + "---|---|---|---|")
    for r in rows:
        g = r["goals"]
        lines.append("| " + " | ".join(str(r[k]) for k in key) + " | " +
                     " | ".join(_mark(g[k]) for k in ("class", "area", "names", "open_set")) + " |")
    ranking = rank_combinations(rows)
    if ranking:
        lines += ["", "## Ranking of source x preprocessing x mode over the datasets run", "",
                  "Goals passed (of 4 per dataset), then mean area fraction of the ceiling, mean "
                  "MLP ratio and mean open-set AUROC margin over raw.", ""]
        lines.append("| source | prep | mode | datasets | goals passed | area / ceiling | "
                     "BA ratio MLP | AUROC - raw | names supported | named axes per run |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for x in ranking:
            lines.append(f"| {x['source']} | {x['preprocess']} | {x['mode']} | "
                         f"{', '.join(x['datasets'])} | {x['passed']}/{x['possible']} | "
                         f"{_f(x['area_fraction'])} | {_f(x['ratio_mlp'])} | "
                         f"{x['auroc_margin']:+.3f} | {_f(x['names_share'])} | "
                         f"{x['named_per_run']:.1f} |")
    decisions = {}
    for r in rows:
        decisions.setdefault((r["dataset"], r["preprocess"]), r.get("preprocess_decision"))
    if any(decisions.values()):
        lines += ["", "## Preprocessing as recorded in the features manifest", ""]
        for (name, prep), d in decisions.items():
            if not d:
                continue
            extra = {k: v for k, v in d.items() if k not in ("longest_side", "rule", "requested")}
            rule = d.get("rule") or {}
            sides = d.get("longest_side") or {}
            lines.append(f"- {name} [{prep}]: {extra}; longest side median {sides.get('median')}, "
                         f"p10 {sides.get('p10')}, p90 {sides.get('p90')}; auto rule "
                         f"{rule.get('statistic')} = {_f(rule.get('value'))} (threshold "
                         f"{rule.get('threshold')}): {'canvas' if rule.get('fired') else 'pad'}")
    notes = row_notes(rows)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if skipped:
        lines += ["", "## Not run", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def row_notes(rows: list[dict]) -> list[str]:
    """Things a reader of the table must know about single rows."""
    out = []
    for r in rows:
        t = r["transfer"]
        where = f"{r['dataset']} {r['source']} {r['preprocess']} {r['mode']}"
        if t.get("best_epoch") == 0:
            if r["mode"] == "anchored":
                out.append(f"{where}: early stopping kept epoch 0 (the validation loss, which has "
                           f"no anchor term, never improved on the source's), so the anchoring "
                           f"was discarded and this row is the source model as is")
            else:
                out.append(f"{where}: early stopping kept epoch 0 (the validation loss never "
                           f"improved on the source's), so this row is the source model as is")
    return out


def rank_combinations(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["preprocess"], r["mode"]), []).append(r)
    out = []
    for (source, prep, mode), rs in groups.items():
        passed = sum(bool(g["pass"]) for r in rs for g in r["goals"].values())
        possible = sum(g["pass"] is not None for r in rs for g in r["goals"].values())
        out.append({
            "source": source, "preprocess": prep, "mode": mode,
            "datasets": [r["dataset"] for r in rs], "passed": passed, "possible": possible,
            "area_fraction": float(np.nanmean([r["goals"]["area"]["fraction_of_ceiling"]
                                               for r in rs])),
            "ratio_mlp": float(np.mean([r["metrics"]["classification"]["ratio_mlp"] for r in rs])),
            "auroc_margin": float(np.mean([r["metrics"]["open_set"]["latent"]["mean_auroc"]
                                           - r["metrics"]["open_set"]["raw"]["mean_auroc"]
                                           for r in rs])),
            "names_share": float(np.nanmean([r["metrics"]["names"]["support"]["share"]
                                             for r in rs]))
            if any(np.isfinite(r["metrics"]["names"]["support"]["share"]) for r in rs)
            else math.nan,
            "named_per_run": float(np.mean([r["metrics"]["names"]["support"]["n_named"]
                                            for r in rs]))})
    out.sort(key=lambda x: (x["mode"] != "discovered", -x["passed"], -x["area_fraction"],
                            -x["ratio_mlp"]))
    return out


# --------------------------------------------------------------------------- main


def _git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "drlcore")
    return {"commit": (git("rev-parse", "HEAD") or "").strip() or None,
            "drlcore_uncommitted": [line[3:] for line in (dirty or "").splitlines() if line]}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {bad}; choose from {', '.join(allowed)}")
    return items


def run(datasets, sources, preprocesses, modes, workdir: Path, cache_dir: str | None,
        quick: bool = False, log=print) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for prep in preprocesses:
        why = preprocess_unsupported(prep)
        if why:
            note = f"preprocess {prep}: skipped for {', '.join(datasets)} ({why})"
            log(f"note: {note}")
            skipped.append(note)
            continue
        for name in datasets:
            data = prepare(name, prep, workdir, cache_dir, quick)
            ref = raw_reference(data["features"], data["labels"], data["morph"])
            log(f"\n{name} [{prep}]: n={len(data['labels'])}, features+morphology "
                f"{data['seconds']} s; raw BA MLP {ref['classification']['mlp']:.3f}, logreg "
                f"{ref['classification']['logreg']:.3f}, open-set AUROC "
                f"{ref['open_set']['mean_auroc']:.3f}")
            for source in sources:
                for mode in modes:
                    start = time.perf_counter()
                    anchors = (anchors_for(data["morph"]) if mode == "anchored"
                               else "auto" if mode == "defaults" else ())
                    try:
                        Z, meta, heldout, tinfo = transfer_codes(data, source, anchors, prep,
                                                                 cache_dir)
                    except Exception as err:  # one failed combination must not sink the grid
                        note = f"{name} {source} {prep} {mode}: failed ({type(err).__name__}: {err})"
                        log(f"  {note}")
                        skipped.append(note)
                        continue
                    metrics = score_codes(Z, meta, data["labels"], data["morph"], ref, heldout)
                    if mode == "defaults":
                        metrics["axis_card"] = defaults_card(Z, meta, data, heldout,
                                                             tinfo["anchors"])
                    row = {"dataset": name, "source": source, "preprocess": prep, "mode": mode,
                           "transfer": tinfo, "metrics": metrics, "goals": goals(metrics),
                           "preprocessing": data["preprocessing"],
                           "preprocess_decision": data["preprocess_decision"],
                           "seconds": round(time.perf_counter() - start, 1)}
                    rows.append(row)
                    c, a = metrics["classification"], metrics["correlations"]["area"]
                    log(f"  {source:8s} {mode:10s} MLP ratio {c['ratio_mlp']:.2f} logreg "
                        f"{c['ratio_logreg']:.2f} | area rho {_f(a['latent']['rho'])} PCA "
                        f"{_f(a['pca10']['rho'])} ceiling {_f(a['ceiling']['rho'])} | open set "
                        f"{metrics['open_set']['latent']['mean_auroc']:.3f} | names "
                        f"{metrics['names']['support']['n_supported']}/"
                        f"{metrics['names']['support']['n_named']} | {row['seconds']} s")
    return rows, skipped


def score_run_folder(run_dir: Path) -> dict:
    """A finished ``drl run`` folder at its defaults, scored as the goals of issue 19 ask: class
    information latents / raw (the run's own MLP figures from analysis.json, and a logistic
    regression on the same folds here), the axis card recomputed with the current engine on the
    images held out of fine-tuning, the anchor choice and the free-axis count."""
    from drlcore.analysis import axis_card
    from drlcore.data import rundir

    objects = pd.read_parquet(run_dir / rundir.OBJECTS)
    Z = objects[rundir.latent_columns(objects.columns)].to_numpy(np.float64)
    X = np.load(run_dir / rundir.FEATURES).astype(np.float64)
    analysis = rundir.read_analysis(run_dir)
    y = objects["label"].astype(str).to_numpy()
    cls = analysis.get("classification", {})
    mlp = {rep: cls.get(rep, {}).get("models", {}).get("mlp", {}).get("balanced_accuracy")
           for rep in ("latent", "features")}
    logreg = {"latent": logreg_cv_balanced_accuracy(Z, y),
              "features": logreg_cv_balanced_accuracy(X, y)}
    metrics = rundir.model_metrics(run_dir)
    held = (metrics.get("anchor_heldout") or {}).get("rows")
    model = rundir.model_config(run_dir)
    anchors = [str(f).removeprefix("anchor:") for f in model.get("dim_factor") or []
               if str(f).startswith("anchor:")]
    anchors = [a if a.startswith("morph_") else f"morph_{a}" for a in anchors]
    t0 = time.perf_counter()
    card = axis_card.axis_card(Z, X, objects, analysis.get("axes") or [], anchors=anchors,
                               rows=np.asarray(held, int) if held else None,
                               rows_label=f"{len(held)} held-out images" if held else "all")
    card_seconds = time.perf_counter() - t0
    choice = rundir.stage_entry(run_dir, "pipeline").get("axes") or {}
    named = [a for a in analysis.get("axes") or [] if a.get("status") == "named"]
    return {"run": str(run_dir), "n": len(objects), "latent_dim": Z.shape[1],
            "anchors": anchors, "choice": choice,
            "best_epoch": (metrics.get("transfer") or {}).get("best_epoch"),
            "epochs_run": (metrics.get("transfer") or {}).get("epochs_run"),
            "epochs_cap": (((model.get("training") or {}).get("config") or {}).get("epochs")),
            "mlp": mlp, "logreg": logreg,
            "ratio_mlp": (mlp["latent"] / mlp["features"]) if mlp["latent"] and mlp["features"]
            else None,
            "ratio_logreg": logreg["latent"] / logreg["features"],
            "card": card, "card_seconds": round(card_seconds, 2),
            "named": len(named),
            "named_supported": sum(abs(a.get("r") or 0) >= SUPPORT_R for a in named)}


def render_runs(scored: list[dict]) -> str:
    lines = ["# Axis quality at the defaults of `drl run` (issue 19)", "",
             "Generated by `benchmarks/axis_quality.py --runs RUN_DIR ...` from finished run "
             "folders. Class information: balanced accuracy latents / raw features, the run's own "
             "MLP (analysis.json, 5-fold) and a logistic regression (same folds as the main "
             "table). Axis card (drlcore.analysis.axis_card), for every anchored axis on the "
             "images held out of fine-tuning: |Spearman rho| with its anchor / best of the first "
             "J PCs of the standardised raw features (J = latent axes) / ridge ceiling (5-fold, "
             "rank-normal targets); goal >= 0.9 of the ceiling and above the PCA axis.", "",
             "| dataset | n | axes (anchored + free) | epochs (best / run / cap) | BA MLP lat / raw "
             "(ratio) | BA logreg lat / raw (ratio) | anchored axes: rho / PCA / ceiling (of "
             "ceiling) | strongest free axes | names supported |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in scored:
        anchored, free = [], []
        for c in r["card"]:
            if c.get("rho") is None:
                continue
            cell = (f"{c['feature'].removeprefix('morph_')} {abs(c['rho']):.2f} / "
                    f"{_f(c['pca_rho'])} / {_f(c['ceiling_rho'])} ({_f(c['of_ceiling'])}"
                    f"{'' if (c['of_ceiling'] or 0) >= GOAL_AREA_OF_CEILING and c['beats_pca'] else ' MISS'})")
            (anchored if c["kind"] == "anchored" else free).append((abs(c["rho"]), c, cell))
        free = sorted(free, key=lambda t: -t[0])[:3]
        free_txt = "; ".join(f"{c['name']} {c['feature'].removeprefix('morph_')} {rho:.2f}"
                             for rho, c, _ in free)
        n_anch = len(r["anchors"])
        m, lg = r["mlp"], r["logreg"]
        lines.append(
            f"| {Path(r['run']).name.removeprefix('run-')} | {r['n']} | {r['latent_dim']} "
            f"({n_anch} + {r['latent_dim'] - n_anch}) | {r['best_epoch']} / {r['epochs_run']} / "
            f"{r['epochs_cap']} | {_f(m['latent'])} / {_f(m['features'])} "
            f"({_f(r['ratio_mlp'])}) | {lg['latent']:.2f} / {lg['features']:.2f} "
            f"({r['ratio_logreg']:.2f}) | " + "; ".join(c for _, _, c in anchored) +
            f" | {free_txt} | {r['named_supported']}/{r['named']} |")
    lines += ["", "Anchor choice per run (family: best-read column, ridge |rho|, anchored or why "
                  "not):", ""]
    for r in scored:
        fams = (r["choice"].get("anchors") or {}).get("families") or {}
        free = r["choice"].get("free") or {}
        lines.append(f"- {Path(r['run']).name.removeprefix('run-')}: " + "; ".join(
            f"{g}: {(f.get('column') or '-').removeprefix('morph_')} "
            f"{_f(f.get('rho'))} ({'anchored' if f.get('anchored') else f.get('why')})"
            for g, f in fams.items()) + f". Free axes: {free.get('n_free')} (participation "
            f"ratio {free.get('participation_ratio')}, cap 32).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=None, metavar="RUN_DIR",
                    help="score finished `drl run` folders (the defaults) instead of the grid; "
                         "writes axis_quality_defaults.md / .json")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--preprocess", default=",".join(PREPROCESS),
                    help="pad, canvas (stretch, auto where FeatureConfig has them)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--quick", action="store_true",
                    help=f"demo only, {DEMO_IMAGES_QUICK} images: a smoke check")
    ap.add_argument("--cache-dir", default=None, help="default: $DRL_CACHE_DIR")
    ap.add_argument("--workdir", default="/tmp/axis-quality",
                    help="features folders and transferred models (not results)")
    ap.add_argument("--out-dir", default=None,
                    help=f"where the .md and .json go (default {RESULTS}; --quick: the workdir)")
    args = ap.parse_args(argv)
    if args.runs:
        from drlcore.io import atomic_write_json, atomic_write_text

        scored = [score_run_folder(Path(r)) for r in args.runs]
        table = render_runs(scored)
        print(table)
        out_dir = Path(args.out_dir) if args.out_dir else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "axis_quality_defaults.md", table)
        atomic_write_json(out_dir / "axis_quality_defaults.json", _jsonable({
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": _git_state(), "runs": scored}))
        return 0

    datasets = ["demo"] if args.quick else _choices(args.datasets, DATASETS, "dataset")
    sources = _choices(args.sources, SOURCES, "source")
    preps = _choices(args.preprocess, (*PREPROCESS, "stretch", "auto"), "preprocessing")
    modes = _choices(args.modes, MODES, "mode")
    cache_dir = args.cache_dir or os.environ.get("DRL_CACHE_DIR")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, skipped = run(datasets, sources, preps, modes, workdir, cache_dir, args.quick)
    not_requested = [f"{what} not requested: {', '.join(sorted(set(full) - set(chosen)))}"
                     for what, full, chosen in (("datasets", DATASETS, datasets),
                                                ("sources", SOURCES, sources),
                                                ("preprocessing", PREPROCESS, preps),
                                                ("modes", MODES, modes))
                     if set(full) - set(chosen)]
    table = render_tables(rows, skipped + not_requested)
    print("\n" + table)
    from drlcore.io import atomic_write_json, atomic_write_text

    out_dir = Path(args.out_dir) if args.out_dir else (workdir if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "axis_quality.md", table)
    atomic_write_json(out_dir / "axis_quality.json", _jsonable({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": _git_state(), "quick": args.quick, "cache_dir": cache_dir,
        "settings": {"pca_axes": PCA_AXES, "pca_axes_wide": PCA_AXES_WIDE,
                     "support_r": SUPPORT_R, "cv_folds": CV_FOLDS, "seed": SEED,
                     "targets": TARGETS, "extra_targets": EXTRA_TARGETS,
                     "ridge_alphas": RIDGE_ALPHAS.tolist()},
        "rows": rows, "ranking": rank_combinations(rows), "not_run": skipped + not_requested,
        "seconds": round(time.perf_counter() - started, 1)}))
    print(f"written: {out_dir / 'axis_quality.md'}, {out_dir / 'axis_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
