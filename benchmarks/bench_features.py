"""How close does ``drl features`` come to the bare network, and what does the cache save?

For each backbone, on the same N images (blood cells from ../shared/data if present, else
generated), times

  (a) ``extract_features`` end to end with a cold cache (hash, decode, square, embed, write),
  (b) the bare timm forward pass of the same model, batch size and dtype on ready-made tensors,
  (c) decoding + squaring alone, single-threaded (is the input pipeline the bottleneck?),
  (d) a second ``extract_features`` with a warm cache (same output folder, and a fresh one),
  (e) with ``--dask-workers K`` (default 2; 0 skips it): ``extract_features`` with a cold cache on
      a Dask LocalCluster of K single-threaded worker processes (drlcore.embedding.distributed), interleaved
      with (a) and (b); the cluster is started once and its workers hold the model, so this is the
      steady-state rate; the one-off start of ``--cluster local`` (processes + model load) is
      timed on its own,
  (f) with ``--reduced bf16`` (the default; ``none`` skips it): the bare forward in fp32 and in
      bf16 autocast, and ``extract_features`` cold in bf16 (``precision="bf16"``), interleaved,
      as paired ratios against the bare fp32 forward (goal: >= 2x; whether bf16 may be used is
      decided by ``benchmarks/precision_check.py``, not here),

  (g) with ``--engines all`` (the default; ``none`` skips it): every engine and precision side
      by side in one run (torch fp32/bf16, ONNX Runtime fp32, OpenVINO fp32/bf16,
      drlcore.embedding.engines), interleaved ``--repeat`` times: the bare engine's forward on
      ready-made input and ``extract_features`` cold, images/s, the share of the machine's bf16
      matmul peak the bare forward reaches (model FLOPs x images/s over the FLOP/s of a large
      bf16 matmul measured in the same run), and agreement with torch fp32 on the command's
      features (lowest cosine, kNN@10 overlap). ``--only-engines`` runs (g) alone,

and prints throughput (a)/(b) (goal >= 0.9), (e)/(b), and first/cached time (goal >= 100x).

    .venv/bin/python benchmarks/bench_features.py [--n 256] [--backbones effnet-lite0 dino-vitb16]
        [--data ../shared/data/plankton-ndsb] [--dask-workers 2] [--reduced bf16]

effnet-lite0 runs with its packaged pretrained weights (offline, and its dtype choice depends on
them); DINO runs random-init (timing only; no weights needed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOOD = ROOT.parent / "shared" / "data" / "blood-cells-pbc"


def make_dataset(folder: Path, n: int, source: Path | None = None) -> str:
    """A class-folder dataset of n images: symlinks to a real class-folder set (``source``,
    default the blood cells), or generated JPEGs."""
    source = source or BLOOD
    if source.is_dir():
        classes = sorted(p for p in source.iterdir() if p.is_dir())
        per_class = -(-n // len(classes))
        picked = [(c.name, f) for c in classes for f in sorted(c.glob("*.jpg"))[:per_class]][:n]
        for label, file in picked:
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / file.name).symlink_to(file)
        return f"{len(picked)} real JPEGs ({source})"
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (360, 363, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"c{i % 4}" / f"{i}.jpg", quality=90)
    return f"{n} generated 360x363 JPEGs (real data not found)"


def bare_forward(backbone, n: int, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds for n images through the bare timm model on pre-made tensors.

    The tensors are channels-last, the layout ``Backbone.preprocess`` hands the model (oneDNN
    convolutions run ~30% faster on it than on NCHW), so both paths run the same kernels.
    """
    import torch

    size = backbone.spec.input_size
    batches = [torch.randn(min(batch_size, n - i), 3, size, size)
               .contiguous(memory_format=torch.channels_last) for i in range(0, n, batch_size)]
    model = backbone.model
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if backbone.dtype == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        # Warm-up at full batch size: oneDNN builds its kernels per input shape.
        model.forward_head(model.forward_features(batches[0]), pre_logits=True)
        cpu, start = process_cpu(), time.perf_counter()
        for x in batches:
            model.forward_head(model.forward_features(x), pre_logits=True).float()
        return time.perf_counter() - start, process_cpu() - cpu


def process_cpu() -> float:
    """CPU seconds (user + system) used by this process and its threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_only(data: Path, size: int) -> tuple[int, float]:
    from drlcore.data import ingest

    config = ingest.IngestConfig()
    dataset = ingest.discover(data, config)
    start = time.perf_counter()
    for record in dataset.records:
        image = ingest.decode(ingest.read_bytes(record), config)
        ingest.to_square(image.rgb, size, True)
    return len(dataset.records), time.perf_counter() - start


def warm_workers(client, backbone, batch_size: int) -> None:
    """Load the backbone on every worker and run one full batch (oneDNN builds its kernels per
    shape), as ``bare_forward`` warms up before it is timed."""
    from drlcore.embedding import distributed

    settings = distributed.BackboneSettings.of(backbone, None, backbone.weights_source
                                               != "random-init")
    size = backbone.spec.input_size

    def warm(settings):
        distributed._worker_backbone(settings).embed(np.zeros((batch_size, size, size, 3),
                                                              np.uint8))

    client.run(warm, settings)


def cluster_start_time(n_workers: int, backbone, batch_size: int) -> float:
    """Seconds for what ``--cluster local`` pays once per command: start the worker processes,
    load the model in each, warm it."""
    from drlcore.embedding.distributed import ClusterConfig, connect

    start = time.perf_counter()
    with connect(ClusterConfig(cluster="local", n_workers=n_workers)) as client:
        warm_workers(client, backbone, batch_size)
        return time.perf_counter() - start


def reduced_precision_pair(name: str, pretrained: bool, data: Path, tmp: Path, args) -> None:
    """(f): fp32 and bf16 forward and bf16 end to end, interleaved, ratios to bare fp32."""
    from drlcore.embedding.backbones import _native_bf16, load_backbone
    from drlcore.embedding.features import FeatureConfig, extract_features

    pair = {p: load_backbone(name, pretrained=pretrained, dtype=p, batch_size=args.batch_size,
                             engine="torch")
            for p in ("fp32", "bf16")}
    for backbone in pair.values():
        bare_forward(backbone, min(args.n, 2 * args.batch_size), args.batch_size)  # warm-up
    t32, t16, tfull, c32, c16 = [], [], [], [], []
    for rep in range(args.repeat):
        for times, cpus, p in ((t32, c32, "fp32"), (t16, c16, "bf16")):
            wall, cpu = bare_forward(pair[p], args.n, args.batch_size)
            times.append(wall), cpus.append(cpu)
        config = FeatureConfig(backbone=name, batch_size=args.batch_size, precision="bf16",
                               cache_dir=str(tmp / f"cache-bf16-{name}-{rep}"),
                               pretrained=pretrained)
        start = time.perf_counter()
        result = extract_features(data, tmp / f"bf16-{name}-{rep}", config,
                                  backbone=pair["bf16"])
        tfull.append(time.perf_counter() - start)
    n = len(result.table)
    bare = [b / a for a, b in zip(t16, t32)]
    full = [(n / f) / (args.n / b) for f, b in zip(tfull, t32)]
    print(f"  reduced precision (native bf16: {_native_bf16()}); {args.repeat} interleaved runs")
    print(f"    bare forward fp32          : {args.n / min(t32):7.1f} img/s best   "
          f"(runs: {', '.join(f'{args.n / t:.1f}' for t in t32)})")
    print(f"    bare forward bf16 autocast : {args.n / min(t16):7.1f} img/s best   "
          f"(runs: {', '.join(f'{args.n / t:.1f}' for t in t16)})")
    print(f"    ratio bf16/fp32 bare, paired: {float(np.median(bare)):6.2f} median   "
          f"(runs: {', '.join(f'{r:.2f}' for r in bare)}; goal >= 2)")
    # CPU seconds are less inflated than wall time by other people's processes on a shared box.
    print(f"    ratio by CPU seconds per img: {min(c32) / min(c16):6.2f}   (fp32 "
          f"{min(c32) / args.n * 1e3:.0f} ms, bf16 {min(c16) / args.n * 1e3:.0f} ms CPU per image)")
    print(f"    extract_features bf16, cold: {n / min(tfull):7.1f} img/s best; ratio to bare "
          f"fp32, paired {float(np.median(full)):.2f} median "
          f"(runs: {', '.join(f'{r:.2f}' for r in full)})", flush=True)


ENGINE_SETTINGS = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("openvino", "fp32"),
                   ("openvino", "bf16")]


def bf16_matmul_peak(size: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a large bf16 matmul (torch, every thread): the CPU's practical bf16 peak."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    torch.mm(a, b)  # warm-up (oneDNN picks its kernel)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2.0 * size ** 3 * count / (time.perf_counter() - start)


def model_flops(backbone) -> float:
    """FLOPs of one image's forward pass (torch's FLOP counter: matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.spec.input_size
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)
    return float(counter.get_total_flops())


def engine_forward(backbone, n: int, batch_size: int) -> float:
    """Seconds for n images through the engine alone, on the input it takes made beforehand:
    a normalised tensor for torch, the uint8 pixels for an exported engine (which normalises
    inside its own graph)."""
    size = backbone.spec.input_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    if backbone.engine == "torch":
        x = backbone.preprocess(images)
        forward = lambda k: backbone.features_from_tensor(x[:k])  # noqa: E731
    else:
        forward = lambda k: backbone.forward_batch(images[:k])  # noqa: E731
    forward(batch_size)  # warm-up at full batch size
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        forward(min(batch_size, n - i))
    return time.perf_counter() - start


def engines_side_by_side(data: Path, tmp: Path, args) -> None:
    """(g): every engine and precision in one run (see the module docstring)."""
    from drlcore.embedding.backbones import load_backbone
    from drlcore.embedding.engines import lowest_cosine
    from drlcore.embedding.features import FeatureConfig, extract_features
    from drlcore.embedding.precision import knn_overlap

    name = "effnet-lite0"
    loaded = {}
    for engine, precision in ENGINE_SETTINGS:
        backbone = load_backbone(name, dtype=precision, engine=engine,
                                 batch_size=args.batch_size, cache_dir=str(tmp / "engines"))
        if backbone.engine != engine:
            print(f"  {engine}/{precision}: not available ({backbone.engine_decision['reason']})")
            continue
        loaded[(engine, precision)] = backbone
    flops = model_flops(next(iter(loaded.values())))
    peak = bf16_matmul_peak()
    bare = {k: [] for k in loaded}
    full = {k: [] for k in loaded}
    features = {}
    for rep in range(args.repeat):
        for key, backbone in loaded.items():
            bare[key].append(args.n / engine_forward(backbone, args.n, args.batch_size))
            config = FeatureConfig(backbone=name, batch_size=args.batch_size, precision=key[1],
                                   engine=key[0], cache_dir=str(tmp / f"cache-{rep}"))
            start = time.perf_counter()
            result = extract_features(data, tmp / f"run-{key[0]}-{key[1]}-{rep}", config,
                                      backbone=backbone)
            full[key].append(len(result.table) / (time.perf_counter() - start))
            features[key] = result.features
    reference = features[("torch", "fp32")]
    print(f"\n(g) engines side by side, {name}, {args.n} images, batch {args.batch_size}, "
          f"{args.repeat} interleaved runs (best; all runs in brackets); model "
          f"{flops / 1e9:.2f} GFLOP/image; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"  {'engine':<10}{'precision':<10}{'bare img/s':>11}{'cmd img/s':>10}"
          f"{'cmd/bare':>9}{'% peak':>8}{'low cos':>10}{'kNN@10':>8}")
    for key in loaded:
        b, f = max(bare[key]), max(full[key])
        cos = lowest_cosine(reference, features[key])
        knn = knn_overlap(reference, features[key])
        print(f"  {key[0]:<10}{key[1]:<10}{b:11.1f}{f:10.1f}{f / b:9.2f}"
              f"{100 * b * flops / peak:7.1f}%{cos:10.5f}{knn:8.3f}   "
              f"(bare {', '.join(f'{v:.0f}' for v in bare[key])}; "
              f"cmd {', '.join(f'{v:.0f}' for v in full[key])})", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbones", nargs="+", default=["effnet-lite0", "dino-vitb16"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--random-init", action="store_true",
                        help="random-init effnet-lite0 too (timing only)")
    parser.add_argument("--data", type=Path, default=None,
                        help="class-folder image set to sample --n JPEGs from (default: the "
                             "blood cells, else generated)")
    parser.add_argument("--dask-workers", type=int, default=2,
                        help="workers of the Dask LocalCluster path (0: skip it)")
    parser.add_argument("--reduced", choices=["bf16", "none"], default="bf16",
                        help="(f) the bf16 path against the bare fp32 forward ('none': skip)")
    parser.add_argument("--engines", choices=["all", "none"], default="all",
                        help="(g) every engine and precision side by side ('none': skip)")
    parser.add_argument("--only-engines", action="store_true", help="run (g) alone")
    args = parser.parse_args(argv)

    import torch

    from drlcore.embedding.backbones import load_backbone
    from drlcore.embedding.features import FeatureConfig, extract_features

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        data = tmp / "data"
        print(f"data: {make_dataset(data, args.n, args.data)}; batch size {args.batch_size}; "
              f"torch threads {torch.get_num_threads()}", flush=True)
        if args.engines == "all":
            engines_side_by_side(data, tmp, args)
        if args.only_engines:
            return
        client = None
        if args.dask_workers:
            from dask.distributed import Client, LocalCluster

            cluster = stack.enter_context(LocalCluster(
                n_workers=args.dask_workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=40))
            client = stack.enter_context(Client(cluster))
        for name in args.backbones:
            pretrained = name == "effnet-lite0" and not args.random_init
            # (a)-(f) time the torch path (bare_forward runs the timm module); (g) the others.
            backbone = load_backbone(name, pretrained=pretrained, dtype=args.dtype,
                                     batch_size=args.batch_size, engine="torch")
            if client is not None:
                from drlcore.embedding.distributed import ClusterConfig

                warm_workers(client, backbone, args.batch_size)
                on_cluster = ClusterConfig(scheduler=cluster.scheduler_address)
            t_dask, dask_diff = [], 0.0
            n_dec, t_dec = decode_only(data, backbone.spec.input_size)
            # The machine is shared and its load comes in bursts: interleave (a) and (b), and
            # compare each pair (same moment, same load); also count CPU seconds, which
            # other people's processes do not inflate.
            t_bare, t_full, cpu_bare, cpu_full = [], [], [], []
            bare_forward(backbone, min(args.n, 2 * args.batch_size), args.batch_size)  # warm-up
            for rep in range(args.repeat):
                wall, cpu = bare_forward(backbone, args.n, args.batch_size)
                t_bare.append(wall), cpu_bare.append(cpu)
                config = FeatureConfig(backbone=name, batch_size=args.batch_size,
                                       cache_dir=str(tmp / f"cache-{name}-{rep}"),
                                       pretrained=pretrained)
                cpu, start = process_cpu(), time.perf_counter()
                result = extract_features(data, tmp / f"out-{name}-{rep}", config,
                                          backbone=backbone)
                t_full.append(time.perf_counter() - start)
                cpu_full.append(process_cpu() - cpu)
                if client is not None:
                    start = time.perf_counter()
                    dask_config = dataclasses.replace(
                        config, cache_dir=str(tmp / f"cache-dask-{name}-{rep}"))
                    on_dask = extract_features(data, tmp / f"dask-{name}-{rep}", dask_config,
                                               backbone=backbone, cluster=on_cluster)
                    t_dask.append(time.perf_counter() - start)
                    assert on_dask.features.dtype == result.features.dtype
                    dask_diff = max(dask_diff, float(np.abs(on_dask.features
                                                            - result.features).max()))
            n = len(result.table)
            calls = backbone.forward_calls
            t_same = float("inf")
            for _ in range(3):  # best of 3: a cached run is short enough for load spikes to rule
                start = time.perf_counter()
                extract_features(data, tmp / f"out-{name}-{rep}", config, backbone=backbone)
                t_same = min(t_same, time.perf_counter() - start)
            start = time.perf_counter()
            extract_features(data, tmp / f"fresh-{name}", config, backbone=backbone)
            t_fresh = time.perf_counter() - start
            assert backbone.forward_calls == calls, "cached runs must not run the model"
            ratios = [(n / f) / (args.n / b) for f, b in zip(t_full, t_bare)]
            cpu_ratio = (min(cpu_bare) / args.n) / (min(cpu_full) / n)
            print(f"\n{name} ({'pretrained' if pretrained else 'random-init'}, {backbone.dtype}); "
                  f"{args.repeat} interleaved runs")
            print(f"  decode+square only, 1 thread : {n_dec / t_dec:7.1f} img/s")
            print(f"  bare forward pass            : {args.n / min(t_bare):7.1f} img/s best   "
                  f"(runs: {', '.join(f'{args.n / t:.1f}' for t in t_bare)})")
            print(f"  extract_features, cold cache : {n / min(t_full):7.1f} img/s best   "
                  f"(runs: {', '.join(f'{n / t:.1f}' for t in t_full)})")
            print(f"  ratio full/bare, paired      : {float(np.median(ratios)):7.2f} median   "
                  f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.9)")
            print(f"  ratio by CPU seconds per img : {cpu_ratio:7.2f}   "
                  f"(bare {min(cpu_bare) / args.n * 1e3:.0f} ms, "
                  f"full {min(cpu_full) / n * 1e3:.0f} ms CPU per image)")
            if t_dask:
                dask_ratios = [(n / d) / (args.n / b) for d, b in zip(t_dask, t_bare)]
                start_s = cluster_start_time(args.dask_workers, backbone, args.batch_size)
                print(f"  Dask LocalCluster, {args.dask_workers} workers x 1 thread, cold cache: "
                      f"{n / min(t_dask):7.1f} img/s best   "
                      f"(runs: {', '.join(f'{n / t:.1f}' for t in t_dask)})")
                print(f"  ratio dask/bare, paired      : {float(np.median(dask_ratios)):7.2f} "
                      f"median   (runs: {', '.join(f'{r:.2f}' for r in dask_ratios)})")
                print(f"  dask vs single-process       : max |diff| {dask_diff:.2e} "
                      f"(0 = identical; torch thread count differs: 1 per worker vs "
                      f"{torch.get_num_threads()})")
                print(f"  --cluster local start        : {start_s:7.1f} s once per command "
                      f"({args.dask_workers} processes, model loaded and warmed in each)")
            print(f"  cached re-run, same out dir  : {t_same:7.2f} s  "
                  f"-> {min(t_full) / t_same:6.0f}x faster than the best cold run "
                  f"(goal >= 100x)")
            print(f"  cached re-run, new out dir   : {t_fresh:7.2f} s  "
                  f"-> {min(t_full) / t_fresh:6.0f}x faster (decodes for thumbnails)",
                  flush=True)
            if args.reduced == "bf16":
                reduced_precision_pair(name, pretrained, data, tmp, args)

if __name__ == "__main__":
    sys.exit(main())
