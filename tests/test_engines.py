"""Inference engines (drlcore.embedding.engines): ONNX Runtime and OpenVINO compute torch's
features, auto picks an exported engine on a CPU and torch on a GPU, a failed probe or export
falls back to torch with a note, and features of two engines never share a cache key."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image

from drlcore.data.cache import cache_key
from drlcore.embedding import engines
from drlcore.embedding.backbones import load_backbone
from drlcore.embedding.engines import auto_order, build_runner, lowest_cosine
from drlcore.embedding.features import FeatureConfig, extract_features
from drlcore.errors import DrlError

pytest.importorskip("onnxruntime")


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)


def test_onnx_fp32_equals_torch_on_a_tiny_random_model(images, tmp_path, monkeypatch):
    torch32 = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch")
    onnx = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="onnx",
                         cache_dir=tmp_path)
    assert onnx.engine == "onnx" and torch32.engine == "torch"
    assert onnx.engine_decision["probe_cosine_min"] >= engines.PROBE_MIN_COSINE
    assert lowest_cosine(torch32.embed(images), onnx.embed(images)) >= 0.9999
    # The graph is cached: a second load exports nothing and reuses the probe's verdict.
    # (each entry's checksum record, <key>.sums.json, sits beside its folder; the verdicts in
    # their own folder, so the entry stays exactly as checksummed)
    folders = [p for p in (tmp_path / "engines").iterdir() if p.is_dir()]
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["model.onnx"]
    assert (tmp_path / "engine-probes" / f"{folders[0].name}-onnx.json").is_file()
    monkeypatch.setattr(engines, "export_onnx", lambda *a: pytest.fail("exported again"))
    monkeypatch.setattr(engines, "_torch_reference", lambda *a: pytest.fail("probed again"))
    again = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="onnx",
                          cache_dir=tmp_path)
    assert again.engine == "onnx"
    np.testing.assert_allclose(again.embed(images), onnx.embed(images), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_exported_engines_equal_torch_on_the_real_effnet_lite0(engine, tmp_path):
    pytest.importorskip(engine if engine == "openvino" else "onnxruntime")
    from drlcore.embedding.backbones import check_images

    photos = check_images(224)
    torch32 = load_backbone("effnet-lite0", dtype="fp32", engine="torch")
    other = load_backbone("effnet-lite0", dtype="fp32", engine=engine, cache_dir=tmp_path)
    assert other.engine == engine
    assert lowest_cosine(torch32.embed(photos), other.embed(photos)) >= 0.9999
    # The export left the shared torch module in eval mode (a training-mode BatchNorm would
    # change torch's own features).
    assert not other.model.training


def test_auto_keeps_torch_on_a_gpu_and_prefers_exported_engines_on_a_cpu(monkeypatch):
    assert auto_order("cuda") == ["torch"]
    monkeypatch.setattr(engines, "engine_available", lambda e: True)
    assert auto_order("cpu") == ["openvino", "onnx", "torch"]
    monkeypatch.setattr(engines, "engine_available", lambda e: e == "onnx")
    assert auto_order("cpu") == ["onnx", "torch"]
    # A backbone on a GPU: auto never tries to export.
    monkeypatch.setattr(engines, "_try_engine",
                        lambda *a, **k: pytest.fail("auto exported on a GPU"))
    fake = types.SimpleNamespace(device="cuda")
    runner, decision = build_runner(fake, "auto", "fp32", 2)
    assert runner is None and decision["used"] == "torch" and "cuda" in decision["reason"]


def test_auto_on_cpu_with_cuda_available_selects_torch_cuda(monkeypatch):
    """The device is chosen before the engine: where torch sees a GPU, the default device is
    cuda and auto keeps torch there."""
    import torch

    from drlcore.embedding import backbones

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backbones.default_device() == "cuda"
    fake = types.SimpleNamespace(device=backbones.default_device())
    assert build_runner(fake, "auto", "fp32", 2)[1]["used"] == "torch"


def test_auto_on_a_cpu_uses_the_first_engine_that_passes(monkeypatch, tmp_path, images):
    monkeypatch.setattr(engines, "auto_order", lambda device: ["onnx", "torch"])
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch")
    runner, decision = build_runner(backbone, "auto", "fp32", 1, tmp_path)
    assert runner is not None and decision["used"] == "onnx"
    assert "auto" in decision["reason"]


def test_a_failed_probe_falls_back_to_torch_with_a_note(monkeypatch, tmp_path, images):
    monkeypatch.setattr(engines, "PROBE_MIN_COSINE", 1.5)  # nothing can pass
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="onnx",
                             cache_dir=tmp_path)
    assert backbone.engine == "torch"
    assert "failed the probe" in backbone.engine_decision["reason"]
    assert backbone.engine_decision["requested"] == "onnx"
    reference = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch")
    np.testing.assert_array_equal(backbone.embed(images), reference.embed(images))


def test_a_failed_export_falls_back_to_torch_with_a_note(monkeypatch, tmp_path):
    def broken(backbone, folder):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(engines, "export_onnx", broken)
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="onnx",
                             cache_dir=tmp_path)
    assert backbone.engine == "torch"
    assert "unsupported operator" in backbone.engine_decision["reason"]
    # Nothing half-written is left as a graph.
    assert not [p for p in (tmp_path / "engines").glob("*") if not p.name.startswith(".")]


def test_onnx_refuses_bf16_and_unknown_engines():
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch")
    with pytest.raises(DrlError, match="bf16"):
        build_runner(backbone, "onnx", "bf16", 1)
    with pytest.raises(DrlError, match="unknown engine"):
        build_runner(backbone, "tensorrt", "fp32", 1)
    with pytest.raises(DrlError, match="unknown engine"):
        FeatureConfig(engine="tensorrt")


def test_cache_keys_differ_by_engine_and_precision():
    prep = {"input_size": 224}
    keys = {cache_key("effnet-lite0", "abc", dtype, prep, engine)
            for dtype in ("fp32", "bf16") for engine in ("torch", "onnx", "openvino")}
    assert len(keys) == 6
    # torch keeps the key it had before engines existed (same features, cache still valid)
    assert cache_key("effnet-lite0", "abc", "fp32", prep) == cache_key(
        "effnet-lite0", "abc", "fp32", prep, "torch")


def test_features_of_two_engines_never_share_a_cache_entry(tmp_path, rng):
    root = tmp_path / "cells" / "a"
    root.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    runs = {}
    for engine in ("torch", "onnx"):
        config = FeatureConfig(backbone="test-tiny", pretrained=False, engine=engine,
                               precision="fp32", cache_dir=str(tmp_path / "cache"))
        runs[engine] = extract_features(tmp_path / "cells", tmp_path / f"run-{engine}", config)
    torch_run, onnx_run = runs["torch"], runs["onnx"]
    assert onnx_run.manifest["engine"]["used"] == "onnx"
    assert torch_run.manifest["engine"]["used"] == "torch"
    assert onnx_run.manifest["cache"]["key"] != torch_run.manifest["cache"]["key"]
    assert lowest_cosine(torch_run.features, onnx_run.features) >= 0.9999


def test_datasets_page_names_engine_and_precision():
    from explorer.data import backbone_summary

    run = types.SimpleNamespace(
        model_config={},
        features_manifest={"backbone": "effnet-lite0", "weights_source": "pkg", "dtype": "bf16",
                           "engine": {"requested": "auto", "used": "openvino", "reason": "r"},
                           "precision": {"requested": "auto", "used": "bf16",
                                         "reason": "auto: bf16, because it passed"}})
    name, reason = backbone_summary(run)
    assert name == "effnet-lite0"
    assert "engine openvino" in reason and "precision bf16 (auto: bf16" in reason


def test_the_onnx_runners_normalisation_equals_torchs_to_the_bit(rng):
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch")
    size = backbone.spec.input_size
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    ours = engines._normaliser(backbone.spec.mean, backbone.spec.std)(images)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous and ours.shape == (3, 3, size, size)
    np.testing.assert_array_equal(ours, backbone.preprocess(images).contiguous().numpy())


def test_a_later_process_runs_a_recorded_exported_engine_without_importing_torch(tmp_path,
                                                                                   images):
    """The second load of the same weights on the same machine builds the runner from the
    cached graph and its passed probe: neither torch nor timm is imported (~3.7 s of a
    400-image command), the features are the first load's, and the torch module is still
    there, built on first use."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"
    model = load_backbone("test-tiny", pretrained=False, dtype="fp32", engine="torch").model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    first = load_backbone("test-tiny", weights=weights, dtype="fp32", engine="onnx",
                          cache_dir=tmp_path / "cache")
    assert first.engine == "onnx"
    np.save(tmp_path / "images.npy", images)
    script = f"""
import sys, numpy as np
from drlcore.embedding.backbones import load_backbone
b = load_backbone("test-tiny", weights={str(weights)!r}, dtype="fp32", engine="onnx",
                  cache_dir={str(tmp_path / "cache")!r})
assert b.engine == "onnx", b.engine_decision
np.save({str(tmp_path / "again.npy")!r}, b.embed(np.load({str(tmp_path / "images.npy")!r})))
print("torch" in sys.modules, "timm" in sys.modules)
b.model  # built on demand, weights re-checked
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]
    np.testing.assert_allclose(np.load(tmp_path / "again.npy"), first.embed(images),
                               rtol=1e-6, atol=1e-6)
