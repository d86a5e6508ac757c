"""Runs at the same time, and runs killed midway (issue 11, item 5).

Real ``drl`` processes (the tiny random-init backbone, generated images): two of them sharing one
cache folder finish with exactly what each gives alone, and a run killed with SIGKILL while it
embeds leaves no half-written file under a final name and resumes from its cached shards to a
bit-identical result.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drlcore.data import rundir
from drlcore.disentangle.artifacts import save_model
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]

# The CLI with the tiny backbone (no pretrained weights exist for it); DRL_TEST_EMBED_DELAY slows
# each batch so that a test can kill the process while it embeds.
DRIVER = """
import os, sys, time
from drlcore.embedding import backbones
from drlcore import cli
from drlcore.embedding.features import FeatureConfig

cli._feature_config = lambda args, **kw: FeatureConfig(
    backbone="test-tiny", pretrained=False, cache_dir=args.cache_dir, batch_size=4)
delay = float(os.environ.get("DRL_TEST_EMBED_DELAY", "0"))
if delay:
    embed = backbones.Backbone.embed
    def slow(self, *a, **k):
        time.sleep(delay)
        return embed(self, *a, **k)
    backbones.Backbone.embed = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def _images(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = ("a", "b")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 256, (40 + i % 7, 48, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / label / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "drl_tiny.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def source_model(tmp_path_factory) -> Path:
    from drlcore.embedding.backbones import load_backbone

    backbone = load_backbone("test-tiny", pretrained=False)
    torch.manual_seed(0)
    model = FeatureVAE(VAEConfig(input_dim=64, latent_dim=4, hidden_dims=(32,)))
    model.fit_standardisation(np.random.default_rng(0).normal(size=(64, 64)))
    path = tmp_path_factory.mktemp("source") / "model"
    save_model(path, model, {"backbone": {"name": "test-tiny", "timm_name": "test_vit",
                                          "weights_hash": backbone.weights_hash,
                                          "feature_dim": 64}})
    return path


def _start(driver: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(driver), *map(str, args)], cwd=PROJECT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, out
    return out


def _features_cmd(data, out, cache):
    return ("features", data, "--out", out, "--cache-dir", cache)


def _run_cmd(data, out, cache, source_model):
    return ("run", data, "--out", out, "--cache-dir", cache, "--source-model", source_model,
            "--epochs", "2")


def _same_features(run: Path, solo: Path) -> None:
    np.testing.assert_array_equal(np.load(run / "features.npy"), np.load(solo / "features.npy"))
    pd.testing.assert_frame_equal(pd.read_parquet(run / "images.parquet"),
                                  pd.read_parquet(solo / "images.parquet"))


def _latents(run: Path) -> pd.DataFrame:
    objects = pd.read_parquet(run / "objects.parquet")
    columns = ["path", *[c for c in objects.columns if c.startswith("z_mean_")]]
    return objects[columns]


def test_two_processes_sharing_one_cache_match_solo_runs(tmp_path, driver, source_model):
    data_a = _images(tmp_path / "A", 16, seed=1)
    data_b = _images(tmp_path / "B", 16, seed=2)
    # Alone, each with its own cache.
    for name, data in (("solo-a", data_a), ("solo-b", data_b)):
        _finish(_start(driver, *_features_cmd(data, tmp_path / name, tmp_path / f"c-{name}")))
    _finish(_start(driver, *_run_cmd(data_a, tmp_path / "solo-run", tmp_path / "c-solo-run",
                                     source_model)))

    shared = tmp_path / "shared-cache"
    # Different data at the same time, then the same data into two folders at the same time.
    pair = [_start(driver, *_features_cmd(data_a, tmp_path / "a1", shared)),
            _start(driver, *_features_cmd(data_b, tmp_path / "b1", shared))]
    for proc in pair:
        _finish(proc)
    _same_features(tmp_path / "a1", tmp_path / "solo-a")
    _same_features(tmp_path / "b1", tmp_path / "solo-b")

    shared_run = tmp_path / "shared-run-cache"
    pair = [_start(driver, *_run_cmd(data_a, tmp_path / f"run{i}", shared_run, source_model))
            for i in (1, 2)]
    for proc in pair:
        _finish(proc)
    for i in (1, 2):
        _same_features(tmp_path / f"run{i}", tmp_path / "solo-run")
        pd.testing.assert_frame_equal(_latents(tmp_path / f"run{i}"),
                                      _latents(tmp_path / "solo-run"))


def _shards(cache: Path) -> list[Path]:
    """Committed cache shards: a shard counts once its .json key list exists (written last)."""
    return sorted(cache.glob("features/*/shard-*.json"))


def _final_files_are_whole(out: Path, cache: Path) -> None:
    """Everything under a final (non-hidden) name reads back completely."""
    for index in _shards(cache):
        json.loads(index.read_text())
        np.load(index.with_suffix(".npy"))
    # A kill between a shard's two atomic writes leaves its vectors without their key list: a
    # whole file the cache does not count (and the resumed run embeds that batch again).
    for vectors in cache.glob("features/*/shard-*.npy"):
        np.load(vectors)
    for thumb in (out / "thumbs").glob("*.jpg"):
        with Image.open(thumb) as im:
            im.load()
    store = rundir.open_thumbs(out)  # every indexed thumbnail lies whole in a final shard
    for sha in store.index["sha256"].astype(str):
        with Image.open(io.BytesIO(store.get(sha))) as im:
            im.load()
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())
    for name in ("features.npy", "images.parquet", "objects.parquet"):
        assert not (out / name).exists(), f"{name} written before embedding finished"


def test_run_killed_mid_embedding_resumes_to_a_bit_identical_result(tmp_path, driver,
                                                                    source_model):
    data = _images(tmp_path / "data", 48, seed=3)
    _finish(_start(driver, *_run_cmd(data, tmp_path / "solo", tmp_path / "c-solo", source_model)))

    out, cache = tmp_path / "killed", tmp_path / "cache"
    proc = _start(driver, *_run_cmd(data, out, cache, source_model),
                  env={"DRL_TEST_EMBED_DELAY": "0.3"})
    deadline = time.monotonic() + 240
    while len(_shards(cache)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    n_cached = len(_shards(cache))
    assert 3 <= n_cached < 12  # 48 images in batches of 4: killed midway
    _final_files_are_whole(out, cache)

    log = _finish(_start(driver, *_run_cmd(data, out, cache, source_model)))
    assert f"features: {4 * n_cached} of 48 images cached" in log, log  # resumed, not redone
    _same_features(out, tmp_path / "solo")
    pd.testing.assert_frame_equal(_latents(out), _latents(tmp_path / "solo"))
