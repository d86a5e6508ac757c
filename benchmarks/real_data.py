"""Issue #4's real-data figures: ``drl run`` on the shared blood-cell and plankton sets.

For each dataset: wall time of the one-shot pipeline (cold feature cache, then a second run served
from caches), balanced accuracy of MLP and gradient boosting on the latent means and on the raw
backbone features, the best |r| between a latent axis and area and a colour feature, and open-set
AUROC with each class held out in turn.

    .venv/bin/python benchmarks/real_data.py [--data ../shared/data] [--out /tmp/drl-real]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from drlcore.embedding.features import FeatureConfig
from drlcore.runs.pipeline import PipelineConfig, run_pipeline
from drlcore.progress import TqdmReporter

COLOUR_FEATURES = ("morph_mean_r", "morph_mean_g", "morph_mean_b", "morph_hue", "morph_saturation",
                   "morph_value", "morph_intensity_mean")


def best_abs_r(corr: pd.DataFrame, features) -> tuple[float, str, str]:
    rows = corr[(corr["method"] == "pearson") & corr["feature"].isin(features)
                & corr["value"].notna()]
    if rows.empty:
        return float("nan"), "-", "-"
    top = rows.loc[rows["value"].abs().idxmax()]
    return abs(float(top["value"])), str(top["dim_name"]), str(top["feature"])


def report(name: str, run: Path, seconds: float, seconds_cached: float) -> dict:
    analysis = json.loads((run / "analysis.json").read_text())
    corr = pd.read_parquet(run / "correlations.parquet")
    cls = analysis["classification"]
    # The raw features get the MLP only by default (AnalyzeConfig.raw_feature_models).
    ba = {f"{rep}/{model}": scores["balanced_accuracy"]
          for rep in ("latent", "features") for model, scores in cls[rep]["models"].items()}
    area = best_abs_r(corr, ["morph_area"])
    colour = best_abs_r(corr, COLOUR_FEATURES)
    hold = analysis["anomaly"]["holdout_each_class"]
    out = {
        "dataset": name, "n": analysis["n_objects"], "seconds": round(seconds, 1),
        "seconds_second_run": round(seconds_cached, 1), "balanced_accuracy": ba,
        "latent_over_raw_mlp": ba["latent/mlp"] / ba["features/mlp"],
        **({"latent_over_raw_gbt": ba["latent/gbt"] / ba["features/gbt"]}
           if "features/gbt" in ba else {}),
        "best_abs_r_area": area, "best_abs_r_colour": colour,
        "open_set_auroc_mean": hold["mean_auroc"], "open_set_auroc_worst": hold["worst_auroc"],
        "open_set_worst_class": hold["worst_class"],
        "open_set_per_class": {c: v.get("auroc") if isinstance(v, dict) else v
                               for c, v in hold["per_class"].items()},
        "dim_names": analysis["dim_names"], "notes": analysis["notes"],
    }
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="/tmp/drl-real")
    parser.add_argument("--datasets", nargs="*", default=["blood-cells-pbc", "plankton-ndsb"])
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    results = []
    for name in args.datasets:
        config = PipelineConfig(features=FeatureConfig(cache_dir=str(out / "cache")))
        t0 = time.perf_counter()
        run = run_pipeline(Path(args.data) / name, out / name, config, reporter=TqdmReporter())
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_pipeline(Path(args.data) / name, out / f"{name}-again", config, reporter=TqdmReporter())
        seconds_cached = time.perf_counter() - t0
        results.append(report(name, run, seconds, seconds_cached))
    (out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
