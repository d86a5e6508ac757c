"""The built-in demo run: rendered Texture-dSprites with known factors, through the shipped
source model.

It is the explorer's default so that a first launch shows something true: every latent axis can
be checked against the factor that really varies (shape, scale, orientation, colour, texture,
position). The rendered images are written as ordinary PNG files in one folder per shape and go
through the same ``drl run`` pipeline as a user's data (without transfer: this *is* the source
domain), so the demo exercises exactly the code a user's data goes through.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from drlcore.data import rundir
from drlcore.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet, read_json
from drlcore.progress import NullReporter, Reporter
from drlcore.data.rundir import default_runs_dir  # noqa: F401 - the one rule, importable from here

__all__ = ["DEMO_NAME", "DEMO_VERSION", "build_demo", "default_runs_dir", "demo_run_dir"]

DEMO_NAME = "demo-texture-dsprites"
DEMO_VERSION = 2  # 2: pinned to the dSprites source model (the run default became cells)
DEMO_IMAGES = 600


def demo_run_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / DEMO_NAME


def _is_complete(run_dir: Path) -> bool:
    marker = run_dir / rundir.DEMO_MARKER
    return (marker.is_file() and (run_dir / rundir.ANALYSIS).is_file()
            and read_json(marker).get("version") == DEMO_VERSION)


def build_demo(runs_dir: str | Path, reporter: Reporter | None = None,
               n_images: int = DEMO_IMAGES, seed: int = 0, cache_dir: str | None = None) -> Path:
    """Build the demo run once; later calls return at once."""
    from PIL import Image

    from drlcore.disentangle.dsprites import DSpritesConfig, TextureDSprites, factors_to_frame
    from drlcore.embedding.features import FeatureConfig
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline, shipped_source_model

    reporter = reporter or NullReporter()
    run_dir = demo_run_dir(runs_dir)
    if _is_complete(run_dir):
        return run_dir

    source = shipped_source_model("effnet-lite0", "dsprites")  # the demo is rendered dSprites
    source_cfg = read_json(source / rundir.MODEL_CONFIG)
    dsprites_cfg = source_cfg.get("training", {}).get("dsprites")
    ds = TextureDSprites(DSpritesConfig.from_dict(dsprites_cfg) if dsprites_cfg
                         else DSpritesConfig())

    demo_root = Path(runs_dir) / ".demo-data"
    data_dir = demo_root / "images"  # the factor table sits beside it, not among the images
    rng = np.random.default_rng(seed)
    factors = ds.sample_factors(n_images, rng)
    table = factors_to_frame(ds, factors)
    shape_col = "shape" if "shape" in table.columns else table.columns[0]
    paths = []
    with reporter.stage("rendering demo images", total=n_images, unit="img") as bar:
        for start in range(0, n_images, 64):
            images = ds.render(factors[start:start + 64])
            for offset, image in enumerate(images):
                i = start + offset
                rel = f"{table[shape_col].iloc[i]}/sprite_{i:04d}.png"
                target = data_dir / rel
                if not target.is_file():
                    buf = io.BytesIO()
                    Image.fromarray(image).save(buf, format="PNG")
                    atomic_write_bytes(target, buf.getvalue())
                paths.append(rel)
            bar.update(len(images))
    extra = table.add_prefix("factor_")
    extra.insert(0, "path", paths)
    atomic_write_parquet(demo_root / "factors.parquet", extra)

    config = PipelineConfig(features=FeatureConfig(cache_dir=cache_dir), transfer=False,
                            source_model=str(source),  # not the run default (cells)
                            extra_columns=str(demo_root / "factors.parquet"))
    run_pipeline(data_dir, run_dir, config, reporter=reporter)
    atomic_write_json(run_dir / rundir.DEMO_MARKER, {"version": DEMO_VERSION, "n_images": n_images,
                                                     "seed": seed, "source_model": str(source)})
    return run_dir
