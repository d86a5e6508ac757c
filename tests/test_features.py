"""The features stage and its cache, end to end on generated images with the tiny backbone."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drlcore.data import ingest, rundir
from drlcore.embedding.backbones import load_backbone
from drlcore.data.cache import FeatureCache, cache_key, default_cache_dir
from drlcore.errors import DrlError
from drlcore.embedding.features import (TABLE_COLUMNS, FeatureConfig, embed_arrays, extract_features)
from drlcore.progress import CallbackReporter

MANIFEST_KEYS = {"backbone", "timm_name", "weights_hash", "dtype", "preprocessing",
                 "data", "counts", "versions", "created"}
N_GOOD = 10  # images per generated dataset that decode


@pytest.fixture
def dataset(tmp_path, rng):
    """Two class folders of PNG/JPEG images of varied sizes, plus one corrupt file."""
    root = tmp_path / "cells"
    for label in ("round", "spiky"):
        (root / label).mkdir(parents=True)
    for i in range(N_GOOD):
        label = ("round", "spiky")[i % 2]
        image = rng.integers(0, 256, (30 + 3 * i, 40 + i, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / label / f"c{i:02d}.{'png' if i % 3 else 'jpg'}")
    (root / "spiky" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.fixture
def tiny():
    return load_backbone("test-tiny", pretrained=False)


def _config(tmp_path, **kw):
    return FeatureConfig(backbone="test-tiny", pretrained=False, batch_size=3,
                         cache_dir=str(tmp_path / "cache"), **kw)


def test_outputs(dataset, tmp_path, tiny):
    out = tmp_path / "run"
    result = extract_features(dataset, out, _config(tmp_path), backbone=tiny)

    features = np.load(out / "features.npy")
    assert features.shape == (N_GOOD, 64) and features.dtype == np.float32
    np.testing.assert_array_equal(features, result.features)

    table = pd.read_parquet(out / "images.parquet")
    assert list(table.columns) == TABLE_COLUMNS
    assert table["row"].tolist() == list(range(N_GOOD))
    assert sorted(table["label"].unique()) == ["round", "spiky"]
    assert table["path"].str.startswith(("round/", "spiky/")).all()
    first = table.set_index("path").loc["round/c00.jpg"]
    assert (first["width"], first["height"]) == (40, 30)
    # Row order ties features to images: each row equals that image embedded on its own.
    rgb = ingest.decode((dataset / "round" / "c00.jpg").read_bytes(), ingest.IngestConfig()).rgb
    alone = tiny.embed(ingest.to_square(rgb, 64, True)[None])[0]
    row = int(first["row"])
    np.testing.assert_allclose(features[row], alone, rtol=0.02, atol=0.02)

    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped.columns) == ["path", "reason"]
    assert skipped["path"].tolist() == ["spiky/broken.png"]
    assert skipped["reason"].iloc[0]

    manifest = result.manifest
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["backbone"] == "test-tiny"
    assert manifest["weights_hash"] == tiny.weights_hash and manifest["dtype"] == tiny.dtype
    assert manifest["counts"] == {"accepted": N_GOOD, "skipped": 1, "labels": 2}
    assert manifest["data"]["layout"] == "class-folders"
    assert set(manifest["preprocessing"]) >= {"input_size", "mean", "std", "interpolation",
                                              "pad_to_square"}
    assert {"drlcore", "torch", "timm", "python"} <= set(manifest["versions"])

    # One thumbnail per image, in the shard layout (no file per image), each a readable JPEG.
    assert list((out / "thumbs").glob("*.jpg")) == []
    store = rundir.open_thumbs(out)
    assert len(store) == N_GOOD and store.contains(table["sha256"]).all()
    for sha in table["sha256"]:
        with Image.open(io.BytesIO(store.get(sha))) as im:
            assert im.format == "JPEG" and max(im.size) <= 160


def test_second_run_uses_the_cache(dataset, tmp_path, tiny, monkeypatch):
    first = extract_features(dataset, tmp_path / "a", _config(tmp_path), backbone=tiny)
    calls = tiny.forward_calls
    assert calls == 4  # 10 images in batches of 3

    # New output folder: no forward pass, only decodes for thumbnails/metadata.
    second = extract_features(dataset, tmp_path / "b", _config(tmp_path), backbone=tiny)
    assert tiny.forward_calls == calls
    np.testing.assert_array_equal(first.features, second.features)
    pd.testing.assert_frame_equal(first.table, second.table)

    # Same output folder again: not even a decode.
    decodes = []
    real_decode = ingest.decode
    monkeypatch.setattr(ingest, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    third = extract_features(dataset, tmp_path / "b", _config(tmp_path), backbone=tiny)
    assert tiny.forward_calls == calls
    assert len(decodes) == 1  # only the corrupt file, which is never cached
    np.testing.assert_array_equal(first.features, third.features)


def test_interrupted_run_resumes_to_identical_features(dataset, tmp_path):
    reference = extract_features(dataset, tmp_path / "ref", FeatureConfig(
        backbone="test-tiny", pretrained=False, batch_size=3, cache_dir=str(tmp_path / "c1")))

    def stop_after_first_batch(stage, done, total, postfix):
        if stage == "embedding" and done >= 3:
            raise KeyboardInterrupt

    config = _config(tmp_path)
    interrupted = load_backbone("test-tiny", pretrained=False)
    with pytest.raises(KeyboardInterrupt):
        extract_features(dataset, tmp_path / "run", config,
                         reporter=CallbackReporter(stop_after_first_batch, min_interval=0),
                         backbone=interrupted)
    assert interrupted.forward_calls == 1
    assert not (tmp_path / "run" / "features.npy").exists()

    resumed = load_backbone("test-tiny", pretrained=False)
    result = extract_features(dataset, tmp_path / "run", config, backbone=resumed)
    assert resumed.forward_calls == 3  # the remaining 7 images
    np.testing.assert_array_equal(result.features, reference.features)
    pd.testing.assert_frame_equal(result.table, reference.table)


def test_no_readable_image_is_a_clear_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_bytes(b"not a png at all")
    (root / "b.jpg").write_bytes(b"")
    with pytest.raises(DrlError, match="no readable image"):
        extract_features(root, tmp_path / "out", _config(tmp_path))


def test_feature_config_rejects_unknown_keys():
    assert FeatureConfig.from_dict({"batch_size": 8}).batch_size == 8
    with pytest.raises(DrlError, match="batchsize"):
        FeatureConfig.from_dict({"batchsize": 8})
    with pytest.raises(DrlError, match="batch size"):
        FeatureConfig(batch_size=0)


def test_embed_arrays_caches_by_array_content(tmp_path, tiny, rng):
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    images[3] = images[1]  # a duplicate is embedded once
    cache = FeatureCache(tmp_path / "cache", "k")
    before = tiny.forward_calls
    out = embed_arrays(tiny, images, cache)
    assert out.shape == (5, 64)
    np.testing.assert_array_equal(out[3], out[1])
    np.testing.assert_allclose(out, tiny.embed(images), rtol=1e-5, atol=1e-5)
    after = tiny.forward_calls
    again = embed_arrays(tiny, images, FeatureCache(tmp_path / "cache", "k"))
    assert tiny.forward_calls == after
    np.testing.assert_array_equal(out, again)
    assert after - before >= 1 and len(cache) == 4


def test_cache_shards_round_trip_and_ignore_torn_writes(tmp_path, rng):
    cache = FeatureCache(tmp_path, "key1", info={"what": "test"})
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    cache.put(["h1", "h2", "h3"], a, [{"width": 1}, {"width": 2}, {"width": 3}])
    cache.put(["h4", "h5"], b)
    # A vectors file without its key list (killed between the two writes) is not a shard.
    np.save(tmp_path / "key1" / "shard-9-9-9.npy", np.ones((1, 4), np.float32))

    fresh = FeatureCache(tmp_path, "key1")
    got = fresh.get(["h1", "h5", "missing"])
    assert set(got) == {"h1", "h5"}
    np.testing.assert_array_equal(got["h1"], a[0])
    np.testing.assert_array_equal(got["h5"], b[1])
    assert fresh.metadata(["h2", "h4"]) == {"h2": {"width": 2}}
    assert len(fresh) == 5
    assert len(list((tmp_path / "key1").glob("shard-*.json"))) == 2
    assert FeatureCache(tmp_path, "other").get(["h1"]) == {}
    with pytest.raises(ValueError):
        cache.put(["x"], np.zeros((2, 4)))


def test_cache_key_depends_on_every_part():
    prep = {"input_size": 224, "pad_to_square": True}
    base = cache_key("effnet-lite0", "abc", "fp32", prep)
    assert base == cache_key("effnet-lite0", "abc", "fp32", dict(prep))
    assert base != cache_key("dino-vitb16", "abc", "fp32", prep)
    assert base != cache_key("effnet-lite0", "abd", "fp32", prep)
    assert base != cache_key("effnet-lite0", "abc", "bf16", prep)
    assert base != cache_key("effnet-lite0", "abc", "fp32", {**prep, "pad_to_square": False})


def test_default_cache_dir_reads_env_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("DRL_CACHE_DIR")
    assert default_cache_dir().name == "features" and "drl" in default_cache_dir().parts


@pytest.mark.slow
@pytest.mark.realdata
def test_plankton_with_effnet(shared_data, tmp_path):
    result = extract_features(shared_data / "plankton-ndsb", tmp_path / "run",
                              FeatureConfig(cache_dir=str(tmp_path / "cache")))
    assert result.features.shape == (2250, 1280)
    assert result.table["label"].nunique() == 15
    assert len(result.skipped) == 0
    assert np.isfinite(result.features).all()


def test_prefetch_keeps_input_order_and_skips_only_the_broken_image(dataset, tmp_path, tiny,
                                                                   monkeypatch):
    """Decoding runs ahead of the model in a thread pool; images that decode slowly (here the
    first ones, so later ones finish first) still land in discovery order, and the corrupt
    file in the middle costs only its own row."""
    import time

    from drlcore.embedding import features as features_module

    decode = ingest.decode
    calls = []

    def slow_first(data, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 3:
            time.sleep(0.05)
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(ingest, "decode", slow_first)
    monkeypatch.setattr(features_module, "DECODE_WORKERS", 4)
    result = extract_features(dataset, tmp_path / "run", _config(tmp_path), backbone=tiny)
    table = result.table
    assert table["path"].tolist() == sorted(table["path"].tolist())  # discovery order
    assert result.skipped["path"].tolist() == ["spiky/broken.png"]
    assert len(table) == N_GOOD
    for row in (0, len(table) // 2, len(table) - 1):
        rgb = decode((dataset / table["path"].iloc[row]).read_bytes(), ingest.IngestConfig()).rgb
        alone = tiny.embed(ingest.to_square(rgb, 64, True)[None])[0]
        np.testing.assert_allclose(result.features[row], alone, rtol=0.02, atol=0.02)
