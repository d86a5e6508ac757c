"""Does bf16 change what a user sees? The sampler behind :func:`drlcore.embedding.precision.agreement`.

For each real image set, the same images go through the features stage twice, in fp32 and in bf16
(``FeatureConfig.precision``, same preprocessing, same cache folder: each precision has its own
cache key). Then the rest of ``drl run`` runs on each feature set as the pipeline does (transfer
from the shipped source model, same seed and settings, then encode), and three comparisons are
made:

(A) the verdict: the model transferred on the fp32 features encodes both feature sets, and
    ``agreement(fp32, bf16, labels, encode)`` checks latent r per axis >= 0.999, kNN@10 overlap in
    feature space >= 0.95 and MLP balanced accuracy within its cross-validation noise. This
    isolates the arithmetic: one model, two feature sets.
(B) end to end, reported beside it: each run's own transferred model (fp32 model on fp32
    features, bf16 model on bf16 features), latent r per axis between the two runs' codes. This
    adds the training's own sensitivity to a tiny change of its input, which a second fp32 run
    with another seed would show too; it is not the precision's verdict.

    .venv/bin/python benchmarks/precision_check.py --cache-dir /tmp/drl-cache \\
        [--data ../shared/data/blood-cells-pbc ../shared/data/plankton-ndsb] \\
        [--backbone effnet-lite0] [--out results.json]

Prints one block per data set and writes the numbers as JSON (``--out``). The forward-pass
speed of the two precisions is measured by ``benchmarks/bench_features.py`` (same run, ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def features_for(data: Path, run_dir: Path, backbone: str, precision: str, cache_dir: str,
                 batch_size: int):
    from drlcore.embedding.features import FeatureConfig, extract_features

    config = FeatureConfig(backbone=backbone, precision=precision, cache_dir=cache_dir,
                           batch_size=batch_size)
    start = time.perf_counter()
    result = extract_features(data, run_dir, config)
    return config, result, time.perf_counter() - start


def transfer_and_encode(run_dir: Path, feature_config, reporter) -> Path:
    """Stages 2 and 3 of ``run_pipeline`` on a features folder (the analysis is not needed)."""
    from drlcore.runs import pipeline
    from drlcore.disentangle.encode import encode_run

    config = pipeline.PipelineConfig(features=feature_config)
    source = pipeline.resolve_source_model(config.source_model, feature_config.backbone)
    model_dir = pipeline._transfer_stage(source, run_dir, config, reporter)
    encode_run(model_dir, run_dir, run_dir, reporter=reporter)
    return model_dir


def check(data: Path, work: Path, backbone: str, cache_dir: str, batch_size: int) -> dict:
    import pandas as pd

    from drlcore.data import rundir
    from drlcore.disentangle.artifacts import load_model
    from drlcore.disentangle.encode import encode_features
    from drlcore.embedding.precision import agreement, axis_correlations
    from drlcore.progress import NullReporter

    reporter = NullReporter()
    runs, out = {}, {"data": str(data), "backbone": backbone}
    for precision in ("fp32", "bf16"):
        run_dir = work / f"{data.name}-{backbone}-{precision}"
        config, result, seconds = features_for(data, run_dir, backbone, precision, cache_dir,
                                               batch_size)
        entry = result.manifest
        assert entry["dtype"] == precision and entry["precision"]["used"] == precision
        out[f"features_{precision}"] = {"seconds": round(seconds, 1),
                                        "cache_key": entry["cache"]["key"],
                                        "preprocess": entry["preprocess"]["mode"]}
        start = time.perf_counter()
        model_dir = transfer_and_encode(run_dir, config, reporter)
        out[f"transfer_encode_{precision}_seconds"] = round(time.perf_counter() - start, 1)
        runs[precision] = (run_dir, model_dir, result)
    assert out["features_fp32"]["cache_key"] != out["features_bf16"]["cache_key"]

    (dir32, model32, res32), (dir16, _, res16) = runs["fp32"], runs["bf16"]
    pd.testing.assert_frame_equal(res32.table.drop(columns=["row"]),
                                  res16.table.drop(columns=["row"]))  # same images, same order
    f32, f16 = res32.features, res16.features
    model, _ = load_model(model32)

    def encode(features):
        return encode_features(model, features)["z_mean"]

    verdict = agreement(f32, f16, labels=res32.table["label"].to_numpy(), encode=encode)
    diff = np.abs(f32 - f16)
    verdict["feature_abs_diff"] = {"max": float(diff.max()), "mean": float(diff.mean()),
                                   "feature_std_mean": float(f32.std(0).mean())}
    out["A_fp32_model_on_both"] = verdict

    codes = [pd.read_parquet(d / rundir.OBJECTS) for d in (dir32, dir16)]
    cols = rundir.latent_columns(codes[0].columns)
    r = axis_correlations(codes[0][cols].to_numpy(), codes[1][cols].to_numpy())
    out["B_each_run_its_own_model"] = {
        "latent_r": [None if not np.isfinite(v) else float(v) for v in r],
        "latent_r_min": float(np.nanmin(r))}
    return out


def show(result: dict) -> None:
    a = result["A_fp32_model_on_both"]
    ba = a["balanced_accuracy"]
    print(f"\n{Path(result['data']).name} ({a['n']} images), {result['backbone']}, "
          f"preprocess {result['features_fp32']['preprocess']}")
    print(f"  features: fp32 {result['features_fp32']['seconds']} s, bf16 "
          f"{result['features_bf16']['seconds']} s (cache hits are fast); cosine min "
          f"{a['cosine_min']:.5f}, median {a['cosine_median']:.6f}")
    print(f"  (A) fp32-trained model encodes both: latent r per axis min {a['latent_r_min']:.5f} "
          f"(goal >= 0.999): {', '.join(f'{v:.5f}' if v is not None else 'nan' for v in a['latent_r'])}")
    print(f"      kNN@10 overlap, features {a['knn_overlap']:.4f} (goal >= 0.95); latent "
          f"{a['latent_knn_overlap']:.4f} (reported)")
    print(f"      MLP balanced accuracy fp32 {ba['reference']:.4f}, bf16 {ba['reduced']:.4f}, "
          f"difference {ba['difference']:+.4f}, CV noise {ba['noise']:.4f} "
          f"({ba['folds']} folds; binomial SE {ba['binomial_se']:.4f})")
    print(f"      checks {a['checks']} -> passed {a['passed']}")
    b = result["B_each_run_its_own_model"]
    print(f"  (B) each run its own transferred model: latent r min {b['latent_r_min']:.5f}: "
          f"{', '.join(f'{v:.4f}' if v is not None else 'nan' for v in b['latent_r'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path,
                        default=[DATA / "blood-cells-pbc", DATA / "plankton-ndsb"])
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/drl-precision-check"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)

    import datetime as dt

    import torch

    from drlcore.embedding.backbones import _native_bf16

    header = {"date": dt.date.today().isoformat(), "torch": torch.__version__,
              "native_bf16": _native_bf16(), "threads": torch.get_num_threads()}
    print(json.dumps(header))
    results = []
    for data in args.data:
        results.append(check(data, args.work, args.backbone, args.cache_dir, args.batch_size))
        show(results[-1])
        if args.out:
            args.out.write_text(json.dumps({**header, "results": results}, indent=1))
    return 0 if all(r["A_fp32_model_on_both"]["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
