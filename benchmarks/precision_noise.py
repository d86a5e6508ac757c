"""Is bf16 within the features' own noise? Every engine and precision against torch fp32,
judged by :func:`drlcore.embedding.precision.agreement` with the JPEG-q95 noise floor.

For each image set, a sample of its images goes through the features stage once (torch fp32, so
the backbone's exact inputs are captured: decoded, squared, resized); then those same inputs go
through every engine and precision, and through torch fp32 once more after a quality-95 JPEG
re-save (:func:`drlcore.embedding.precision.jpeg_resave`), the noise floor. For each reduced
setting: lowest/median cosine to torch fp32, kNN@10 overlap against the floor's, and MLP
balanced accuracy against its cross-validation noise.

    .venv/bin/python benchmarks/precision_noise.py [--every 3 4 1] [--out results.json]

The verdict for auto is recorded per backbone in ``drlcore.embedding.backbones.BACKBONES``
(``bf16_agrees``, ``bf16_figures``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETTINGS = [("torch", "bf16"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def subset(data: Path, every: int, work: Path) -> Path:
    """A folder of symlinks to every ``every``-th file of each class folder (sorted names)."""
    out = work / f"{data.name}-every{every}"
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())[::every]
        (out / cls.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = out / cls.name / f.name
            if not link.exists():
                os.symlink(f, link)
    return out


def inputs_and_reference(folder: Path, backbone_name: str, cache_dir: str):
    """The backbone's uint8 inputs for every image (captured from the features stage), the
    torch fp32 features and the labels."""
    from drlcore.embedding.backbones import load_backbone
    from drlcore.embedding.features import FeatureConfig, extract_features

    backbone = load_backbone(backbone_name, dtype="fp32", engine="torch")
    captured: list[np.ndarray] = []
    embed = backbone.embed

    def capture(images):
        captured.append(np.array(images))
        return embed(images)

    backbone.embed = capture
    config = FeatureConfig(backbone=backbone_name, precision="fp32", engine="torch",
                           cache_dir=cache_dir)
    with tempfile.TemporaryDirectory() as run:
        result = extract_features(folder, run, config, backbone=backbone)
    images = np.concatenate(captured)
    if len(images) != len(result.features):
        raise SystemExit(f"{folder}: duplicate images; captured {len(images)} inputs for "
                         f"{len(result.features)} rows")
    return backbone, images, result.features, result.table["label"].to_numpy()


def check(folder: Path, backbone_name: str, cache_dir: str) -> dict:
    from drlcore.embedding.backbones import load_backbone
    from drlcore.embedding.engines import lowest_cosine
    from drlcore.embedding.precision import agreement, jpeg_resave

    torch32, images, reference, labels = inputs_and_reference(folder, backbone_name, cache_dir)
    perturbed = torch32.embed(jpeg_resave(images))
    out = {"data": folder.name, "n": int(len(images)), "settings": {}}
    for engine, precision in SETTINGS:
        backbone = load_backbone(backbone_name, dtype=precision, engine=engine,
                                 cache_dir=cache_dir)
        start = time.perf_counter()
        features = backbone.embed(images)
        seconds = time.perf_counter() - start
        # The class read-out is the slow part (MLP, k-fold): only reduced precision needs it.
        verdict = agreement(reference, features, perturbed=perturbed,
                            labels=labels if precision != "fp32" else None)
        verdict["lowest_cosine"] = lowest_cosine(reference, features)
        verdict["engine_used"] = backbone.engine
        verdict["images_per_s_loaded_machine"] = round(len(images) / seconds, 1)
        out["settings"][f"{engine}-{precision}"] = verdict
        ba = verdict.get("balanced_accuracy")
        accuracy = (f"; MLP bal.acc {ba['reference']:.4f} -> {ba['reduced']:.4f} (noise "
                    f"{ba['noise']:.4f})" if ba else "")
        print(f"{folder.name} n={len(images)} {engine}/{precision} (ran {backbone.engine}): "
              f"cos min {verdict['cosine_min']:.5f}, kNN@10 {verdict['knn_overlap']:.3f} vs "
              f"floor {verdict['noise_floor']['knn_overlap']:.3f}{accuracy}; "
              f"passed {verdict['passed']}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path,
                        default=[DATA / "blood-cells-pbc", DATA / "plankton-ndsb",
                                 DATA / "ifc-cellcycle"])
    parser.add_argument("--every", nargs="+", type=int, default=[4, 6, 2],
                        help="take every n-th image of each class folder, per data set")
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "drl-noise")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cache_dir = str(args.work / "cache")
    results = []
    for data, every in zip(args.data, args.every):
        results.append(check(subset(data, every, args.work), args.backbone, cache_dir))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
