"""The Dask path of the features stage: a 2-worker LocalCluster on generated images with the tiny
random backbone. Same features, table, thumbnails and cache as the single-process path; a batch
whose task fails, or whose worker dies, is run again; an interrupted run resumes; without Dask the
flags give one clear message."""

from __future__ import annotations

import builtins
import os
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drlcore.embedding import distributed
from drlcore.data.cache import FeatureCache
from drlcore.cli import main
from drlcore.embedding.distributed import ClusterConfig, plan_batches
from drlcore.errors import DrlError
from drlcore.embedding.features import FeatureConfig, extract_features
from drlcore.progress import CallbackReporter

dask_distributed = pytest.importorskip("dask.distributed", reason="needs the extra [dask]")

N_GOOD = 10
BATCH = 3


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


def _config(cache_dir) -> FeatureConfig:
    return FeatureConfig(backbone="test-tiny", pretrained=False, batch_size=BATCH,
                         cache_dir=str(cache_dir))


@pytest.fixture(scope="module", autouse=True)
def resource_tracker():
    """Starting worker processes (multiprocessing spawn) starts multiprocessing's resource
    tracker, which otherwise lives until pytest exits; the session-end check wants it gone."""
    yield
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


@pytest.fixture(scope="module")
def cluster(resource_tracker):
    """Two single-threaded worker processes, shared by the tests here; closed at module end."""
    with dask_distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                       silence_logs=40) as local:
        yield local


@pytest.fixture
def on_cluster(cluster):
    return ClusterConfig(scheduler=cluster.scheduler_address)


@pytest.fixture
def reference(dataset, tmp_path):
    return extract_features(dataset, tmp_path / "single", _config(tmp_path / "cache-single"))


def _same_outputs(result, reference, run_dir, reference_dir):
    assert result.features.dtype == np.float32 == reference.features.dtype
    np.testing.assert_array_equal(result.features, reference.features)
    np.testing.assert_array_equal(np.load(run_dir / "features.npy"),
                                  np.load(reference_dir / "features.npy"))
    pd.testing.assert_frame_equal(result.table, reference.table)
    pd.testing.assert_frame_equal(result.skipped, reference.skipped)
    assert result.manifest["cache"]["key"] == reference.manifest["cache"]["key"]
    # The same thumbnail bytes for every image. How they split into shards may differ: a
    # resumed run keeps the shard its first attempt committed and adds another.
    from drlcore.data.rundir import open_thumbs

    ours, theirs = open_thumbs(run_dir), open_thumbs(reference_dir)
    hashes = reference.table["sha256"].tolist()
    assert hashes and all(theirs.get(h) is not None for h in hashes)
    for h in hashes:
        assert ours.get(h) == theirs.get(h)


def test_cluster_features_equal_the_single_process_path(dataset, tmp_path, reference,
                                                        on_cluster, cluster):
    messages = []
    reporter = CallbackReporter(lambda *a: None, on_message=messages.append)
    result = extract_features(dataset, tmp_path / "dask", _config(tmp_path / "cache-dask"),
                              reporter=reporter, cluster=on_cluster)
    _same_outputs(result, reference, tmp_path / "dask", tmp_path / "single")
    assert any("2 workers" in m for m in messages)
    # Every vector went through the cache: 4 shards of at most 3 images (the broken file none).
    cache = FeatureCache(tmp_path / "cache-dask" / "features", result.manifest["cache"]["key"])
    assert len(cache) == N_GOOD
    assert len(list(cache.folder.glob("shard-*.json"))) == 4

    # A second cluster run into a new folder: the workers keep their loaded backbone.
    again = extract_features(dataset, tmp_path / "dask2", _config(tmp_path / "cache-dask2"),
                             cluster=on_cluster)
    np.testing.assert_array_equal(again.features, reference.features)
    with dask_distributed.Client(cluster) as client:
        loaded = client.run(lambda: len(__import__("drlcore.embedding.distributed").embedding.distributed._LOADED))
    assert sorted(loaded.values()) == [1, 1]

    # Fully cached: no cluster is contacted at all (an unreachable address is never dialled).
    # The corrupt file goes first: it is never cached, so it would be decoded again.
    (dataset / "spiky" / "broken.png").unlink()
    cached = extract_features(dataset, tmp_path / "dask", _config(tmp_path / "cache-dask"),
                              cluster=ClusterConfig(scheduler="tcp://127.0.0.1:9"))
    np.testing.assert_array_equal(cached.features, reference.features)


def _flaky_task(settings, prepare, items, *, log_dir):
    """embed_task, but the batch holding c04 fails on its first attempt."""
    from drlcore.embedding import distributed as d

    if any(record.path.endswith("c04.png") for record, *_ in items):
        log = os.path.join(log_dir, "attempts")
        with open(log, "a") as fh:
            fh.write("x")
        if os.path.getsize(log) == 1:
            raise RuntimeError("injected failure of one batch")
    return d.run_batch(d._worker_backbone(settings), prepare, items)


@pytest.fixture
def by_value():
    """Ship this module's helpers to the worker processes by value (they cannot import it)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_failed_batch_is_retried(dataset, tmp_path, reference, on_cluster, monkeypatch,
                                   by_value):
    import functools

    monkeypatch.setattr(distributed, "embed_task",
                        functools.partial(_flaky_task, log_dir=str(tmp_path)))
    result = extract_features(dataset, tmp_path / "dask", _config(tmp_path / "cache-dask"),
                              cluster=on_cluster)
    assert (tmp_path / "attempts").read_text() == "xx"  # failed once, then ran again
    _same_outputs(result, reference, tmp_path / "dask", tmp_path / "single")

    # Without retries the failure reaches the caller, and what finished stays cached.
    (tmp_path / "attempts").unlink()
    no_retry = ClusterConfig(scheduler=on_cluster.scheduler, retries=0)
    with pytest.raises(RuntimeError, match="injected"):
        extract_features(dataset, tmp_path / "dask3", _config(tmp_path / "cache-dask3"),
                         cluster=no_retry)
    assert not (tmp_path / "dask3" / "features.npy").exists()


class _KillFirstEmbed(dask_distributed.WorkerPlugin):
    """Kills the worker process that starts the first embedding task (a lost worker)."""

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("drl-embed-"):
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


def test_a_lost_workers_batch_runs_elsewhere(dataset, tmp_path, reference, cluster, on_cluster,
                                             by_value):
    marker = tmp_path / "killed"
    with dask_distributed.Client(cluster) as client:
        client.register_plugin(_KillFirstEmbed(str(marker)), name="kill-first-embed")
        try:
            result = extract_features(dataset, tmp_path / "dask", _config(tmp_path / "cache-dask"),
                                      cluster=on_cluster)
        finally:
            client.unregister_worker_plugin("kill-first-embed")
        client.wait_for_workers(2, timeout=120)  # the nanny restarts the killed one
    assert marker.exists()
    _same_outputs(result, reference, tmp_path / "dask", tmp_path / "single")


def test_an_interrupted_cluster_run_resumes(dataset, tmp_path, reference, on_cluster):
    def stop_after_first_batch(stage, done, total, postfix):
        if stage == "embedding" and done >= 1:
            raise KeyboardInterrupt

    config = _config(tmp_path / "cache-dask")
    with pytest.raises(KeyboardInterrupt):
        extract_features(dataset, tmp_path / "dask", config, cluster=on_cluster,
                         reporter=CallbackReporter(stop_after_first_batch, min_interval=0))
    assert not (tmp_path / "dask" / "features.npy").exists()
    key = reference.manifest["cache"]["key"]
    kept = len(FeatureCache(tmp_path / "cache-dask" / "features", key))
    assert 1 <= kept < N_GOOD

    messages = []
    result = extract_features(dataset, tmp_path / "dask", config, cluster=on_cluster,
                              reporter=CallbackReporter(lambda *a: None,
                                                        on_message=messages.append))
    assert any(f"{kept} of {N_GOOD + 1} images cached" in m for m in messages)
    _same_outputs(result, reference, tmp_path / "dask", tmp_path / "single")


def _children() -> set[int]:
    """This process's descendants, multiprocessing's resource tracker aside (see above)."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


def test_cluster_local_starts_and_stops_its_workers(dataset, tmp_path, reference):
    before = _children()
    result = extract_features(dataset, tmp_path / "dask", _config(tmp_path / "cache-dask"),
                              cluster=ClusterConfig(cluster="local", n_workers=2))
    _same_outputs(result, reference, tmp_path / "dask", tmp_path / "single")
    assert _children() <= before  # every worker process it started has ended


def test_cli_features_on_a_running_scheduler(dataset, tmp_path, reference, on_cluster,
                                             monkeypatch, capsys):
    from drlcore import cli

    # test-tiny has no pretrained weights; the CLI always asks for them.
    real = cli._feature_config
    monkeypatch.setattr(cli, "_feature_config",
                        lambda args, **kw: real(args, pretrained=False, **kw))
    out = tmp_path / "cli"
    code = main(["features", str(dataset), "--out", str(out), "--backbone", "test-tiny",
                 "--batch-size", str(BATCH), "--cache-dir", str(tmp_path / "cache-cli"),
                 "--scheduler", on_cluster.scheduler])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "features.npy"), reference.features)
    with pytest.raises(SystemExit):  # one or the other
        main(["features", str(dataset), "--out", str(out), "--cluster", "local",
              "--scheduler", on_cluster.scheduler])
    assert main(["features", str(dataset), "--out", str(out), "--workers", "2"]) == 2
    assert "--cluster local" in capsys.readouterr().err


def test_without_dask_the_flag_says_how_to_install_it(dataset, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name == "dask" or name.startswith("dask."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    for mod in [m for m in sys.modules if m == "dask" or m.startswith("dask.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(DrlError, match=r'pip install -e "\.\[dask\]"'):
        distributed.require_dask()

    for argv in (["features", str(dataset)], ["run", str(dataset)]):
        out = tmp_path / f"out-{argv[0]}"
        code = main([*argv, "--out", str(out), "--cluster", "local"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("error:") == 1 and 'pip install -e ".[dask]"' in err
        assert not out.exists()  # refused before anything was written


def test_cluster_config_is_checked():
    assert ClusterConfig(cluster="local").describe() == "a local Dask cluster"
    with pytest.raises(DrlError, match="either"):
        ClusterConfig()
    with pytest.raises(DrlError, match="either"):
        ClusterConfig(cluster="local", scheduler="tcp://h:1")
    with pytest.raises(DrlError, match="unknown cluster"):
        ClusterConfig(cluster="slurm")
    with pytest.raises(DrlError, match="local only"):
        ClusterConfig(scheduler="tcp://h:1", n_workers=4)
    with pytest.raises(DrlError, match="positive"):
        ClusterConfig(cluster="local", n_workers=0)
    with pytest.raises(DrlError, match="retries"):
        ClusterConfig(cluster="local", retries=-1)


def test_an_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(DrlError, match="cannot reach the Dask scheduler"):
        with distributed.connect(ClusterConfig(scheduler="tcp://127.0.0.1:9",
                                               connect_timeout=2)):
            pass


def test_plan_batches_counts_only_images_to_embed():
    items = [("a", True), ("b", False), ("c", True), ("d", True), ("e", False), ("f", True)]
    batches = [[name for name, _ in b] for b in plan_batches(items, 2)]
    assert batches == [["a", "b", "c"], ["d", "e", "f"]]
    assert list(plan_batches([], 2)) == []
    assert [len(b) for b in plan_batches([("x", False)] * 5, 2)] == [5]


def test_a_worker_with_other_weights_fails_loudly(tmp_path):
    from drlcore.embedding.backbones import load_backbone

    tiny = load_backbone("test-tiny", pretrained=False)
    settings = distributed.BackboneSettings.of(tiny, None, False)
    wrong = distributed.BackboneSettings(**{**settings.__dict__, "weights_hash": "0" * 16})
    result = distributed.embed_task(wrong, lambda *a: None, [])
    assert "same drlcore" in result["error"]
    ok = distributed.embed_task(settings, lambda *a: None, [])
    assert ok["digests"] == [] and ok["vectors"].shape == (0, 64)


def test_cluster_features_equal_the_single_process_path_for_an_exported_engine(
        dataset, tmp_path, on_cluster):
    """--engine onnx: the workers load the driver's exported graph (same cache folder) and give
    the single-process onnx features under the same cache key; a worker cannot quietly fall
    back to torch."""
    pytest.importorskip("onnxruntime")
    import dataclasses

    config = dataclasses.replace(_config(tmp_path / "cache-onnx"), engine="onnx",
                                 precision="fp32")
    single = extract_features(dataset, tmp_path / "onnx-single", config)
    assert single.manifest["engine"]["used"] == "onnx"
    clustered = extract_features(
        dataset, tmp_path / "onnx-dask",
        dataclasses.replace(config, cache_dir=str(tmp_path / "cache-onnx-dask")),
        cluster=on_cluster)
    assert clustered.manifest["engine"]["used"] == "onnx"
    assert clustered.manifest["cache"]["key"] == single.manifest["cache"]["key"]
    pd.testing.assert_frame_equal(clustered.table, single.table)
    # ONNX Runtime's sums depend on its thread count (1 per worker here, 2 in the driver)
    # at float32 rounding level, as torch's do between machines.
    np.testing.assert_allclose(clustered.features, single.features, rtol=1e-5, atol=1e-5)


def test_a_worker_that_cannot_run_the_engine_fails_loudly(monkeypatch):
    import dataclasses

    from drlcore.embedding import engines
    from drlcore.embedding.backbones import load_backbone

    tiny = load_backbone("test-tiny", pretrained=False, engine="torch")
    settings = dataclasses.replace(distributed.BackboneSettings.of(tiny, None, False),
                                   engine="onnx")
    monkeypatch.setattr(engines, "export_onnx",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("no exporter here")))
    distributed._LOADED.pop(settings, None)
    result = distributed.embed_task(settings, lambda *a: None, [])
    assert "could not run engine onnx" in result["error"]
