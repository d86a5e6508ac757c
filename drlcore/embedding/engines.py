"""Inference engines for a backbone's forward pass: torch, ONNX Runtime, OpenVINO.

The same timm module is exported once with ``torch.onnx.export`` and run by ONNX Runtime or
OpenVINO, which on a CPU reach two to four times torch's speed on EfficientNet-Lite0 (fused
convolutions, and OpenVINO's bf16 through its inference precision hint on AMX / AVX-512 bf16)
and hold up far better when other processes load the cores. No kernel is written here.

::

    runner, decision = build_runner(backbone, "auto", "fp32", threads=2)
    features = runner(images_uint8_nhwc)   # (B, D) float32; the runner normalises

Safety: the exported graph is kept in the content cache (``<cache>/engines/<key>/``, key = the
weights hash, timm name, input size, the versions of torch / timm / onnx runtime / openvino and
the CPU model, :func:`engine_key`) and is used only after a probe batch (the bundled check photos
plus seeded noise) gives features whose lowest cosine to torch fp32 is at least
:data:`PROBE_MIN_COSINE` with the engine at fp32. A failed probe, export or import falls back to
torch with a note that says why. Each engine's probe verdict is stored beside the store
(``<cache>/engine-probes/<key>-<engine>.json``), so the probe runs once per machine, backbone,
engine and version set.

``auto`` on a CPU takes OpenVINO, then ONNX Runtime, then torch: the first that is installed and
passes the probe. The order is the measured one (benchmarks/bench_features.py, EfficientNet-Lite0
on 2 cores, images/s: torch fp32 60, ONNX Runtime fp32 127, OpenVINO f32 112, OpenVINO bf16 255;
under load torch 16, ONNX Runtime 59, OpenVINO 125): OpenVINO is the only engine that runs both
fp32 and bf16 well, and the probe costs a second, while timing engines at load time would make
the choice (and so the cache key) depend on the machine's load. ONNX Runtime has no fast CPU
bf16, so ``onnx`` runs fp32 only. On a GPU ``auto`` keeps torch (CUDA).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drlcore.errors import DrlError

__all__ = ["ENGINES", "PROBE_MIN_COSINE", "ENGINE_VERSION", "engine_key", "cached_graph",
           "probe_batch", "lowest_cosine", "auto_order", "build_runner", "engine_available",
           "export_onnx"]

ENGINES = ("auto", "torch", "onnx", "openvino")
# fp32 engines compute the same function in another order of operations; 1e-5 cosine is far
# below anything a feature user sees, and a wrong graph (a BatchNorm left in training mode, a
# padding rule lost in export) lands near 0.1-0.9.
PROBE_MIN_COSINE = 0.99999
# Bump when the export wrapper or the runners change what they compute (2: runners take the
# uint8 pixels and normalise them themselves, so earlier probe verdicts are about other runners).
ENGINE_VERSION = 2
ONNX_OPSET = 17

Runner = Callable[[np.ndarray], np.ndarray]


def engine_available(engine: str) -> bool:
    """Whether the engine's package imports here (torch always does)."""
    import importlib.util

    module = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}[engine]
    return importlib.util.find_spec(module) is not None


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "timm", "onnxruntime", "openvino", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def engine_key(backbone, weights_hash: str | None = None) -> str:
    """Content key of the exported graph and the engines' probe verdicts for this backbone on
    this machine (the CPU model is in it: a verdict is about the kernels this CPU runs).
    ``backbone`` may be a bare ``BackboneSpec`` with ``weights_hash`` given."""
    from drlcore.io import fingerprint

    spec = getattr(backbone, "spec", backbone)
    weights_hash = weights_hash or backbone.weights_hash
    return fingerprint(["engine", ENGINE_VERSION, ONNX_OPSET, spec.timm_name,
                        spec.input_size, weights_hash, _versions(),
                        platform.machine(), _cpu_model()])


def cached_graph(engine: str, weights_hash: str, spec, cache_dir=None) -> Path | None:
    """The cached exported graph of these weights whose stored probe passed for ``engine``,
    or None (nothing is exported or probed here)."""
    from drlcore.data.cache import ContentStore, cache_root

    key = engine_key(spec, weights_hash)
    folder = ContentStore(cache_root(cache_dir) / "engines").get(key)
    if folder is None or not (folder / "model.onnx").is_file():
        return None
    return folder / "model.onnx" if _read_verdict(cache_dir, key, engine).get("passed") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def probe_batch(size: int, n_noise: int = 4, seed: int = 0) -> np.ndarray:
    """uint8 (4 + n_noise, size, size, 3): the bundled check photos plus seeded noise images
    (photos exercise the trained path, noise the extremes of every activation)."""
    from drlcore.embedding.backbones import check_images

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n_noise, size, size, 3), dtype=np.uint8)
    return np.concatenate([check_images(size), noise])


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero rows agree; one zero row against a non-zero one does not.
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0),
                   np.where((np.linalg.norm(a, axis=1) + np.linalg.norm(b, axis=1)) == 0, 1, 0))
    return float(cos.min())


def auto_order(device: str) -> list[str]:
    """Engines ``auto`` tries, best first: torch alone on a GPU; OpenVINO, ONNX Runtime, torch
    on a CPU (those installed)."""
    import torch

    if torch.device(device).type != "cpu":
        return ["torch"]
    return [e for e in ("openvino", "onnx") if engine_available(e)] + ["torch"]


class _Pooled:
    """The module exported: normalised NCHW float32 -> pooled features (what
    ``Backbone.features_from_tensor`` computes)."""

    @staticmethod
    def wrap(model):
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner.forward_head(self.inner.forward_features(x), pre_logits=True)

        # eval() matters: torch.onnx.export restores the wrapper's mode when it is done, and a
        # fresh Module is in training mode, which would leave the backbone's BatchNorms training.
        return Pooled(model).eval()


def export_onnx(backbone, folder: Path) -> Path:
    """Export the backbone's pooled-feature module to ``folder/model.onnx`` (dynamic batch)."""
    import io
    import warnings

    import torch

    size = backbone.spec.input_size
    model = backbone.model
    was_training = model.training
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(_Pooled.wrap(model).cpu(), (example,), buffer,
                              input_names=["x"], output_names=["features"],
                              dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
    finally:
        model.train(was_training)
    path = Path(folder) / "model.onnx"
    path.write_bytes(buffer.getvalue())
    return path


def _normaliser(mean, std) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (B, S, S, 3) -> float32 (B, 3, S, S), contiguous: (x / 255 - mean) / std in the
    order ``Backbone.preprocess`` computes it, so the values are the same to the bit."""
    mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)

    def normalise(images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
        x /= np.float32(255.0)
        x -= mean
        x /= std
        return x

    return normalise


def _onnx_runner(path: Path, threads: int, mean, std) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    normalise = _normaliser(mean, std)

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": normalise(images)})[0]

    return run


def _openvino_runner(path: Path, precision: str, threads: int, mean, std) -> Runner:
    """OpenVINO takes the uint8 NHWC pixels: its preprocessing steps (type, layout, scale,
    mean, scale) become part of the compiled graph, where they run in f32 ahead of the first
    convolution. On EfficientNet-Lite0 bf16 that is ~1.2 ms of CPU per image less than
    normalising a float copy in torch first, with the same features (lowest cosine 1 - 2e-16)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    core = ov.Core()
    model = core.read_model(str(path))
    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0) \
        .mean([float(m) for m in mean]).scale([float(v) for v in std])
    model = steps.build()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": int(threads),
              # one stream: a batch uses every thread (the features stage sends one at a time)
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(images, np.uint8)})
        return np.asarray(next(iter(out.values())), np.float32).copy()

    return run


def _make_runner(engine: str, path: Path, precision: str, threads: int, spec) -> Runner:
    """A runner of uint8 (B, S, S, 3) batches (normalised as ``spec`` says) -> (B, D) float32."""
    if engine == "onnx":
        return _onnx_runner(path, threads, spec.mean, spec.std)
    return _openvino_runner(path, precision, threads, spec.mean, spec.std)


def _verdict_file(cache_dir, key: str, engine: str) -> Path:
    """Where an engine's probe verdict on the graph ``key`` is kept: beside the content store,
    not inside its entry, whose files must stay exactly those checksummed when it was stored
    (a verdict written into the entry made every later read find it altered and discard it,
    so each load exported and probed the graph again)."""
    from drlcore.data.cache import cache_root

    return cache_root(cache_dir) / "engine-probes" / f"{key}-{engine}.json"


def _read_verdict(cache_dir, key: str, engine: str) -> dict:
    try:
        return json.loads(_verdict_file(cache_dir, key, engine).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _graph(backbone, engine: str, cache_dir) -> tuple[Path, dict, str]:
    """The exported graph for ``engine`` (exported now if the cache lacks it), its stored
    probe verdict ({} when none yet) and its key."""
    from drlcore.data.cache import ContentStore, cache_root

    store = ContentStore(cache_root(cache_dir) / "engines")
    key = engine_key(backbone)
    folder = store.get(key)
    if folder is None or not (folder / "model.onnx").is_file():
        if folder is not None:
            store.discard(key)
        folder = store.put(key, lambda tmp: export_onnx(backbone, tmp))
    return folder / "model.onnx", _read_verdict(cache_dir, key, engine), key


def _store_verdict(cache_dir, key: str, engine: str, verdict: dict) -> None:
    from drlcore.io import atomic_write_json

    path = _verdict_file(cache_dir, key, engine)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, verdict)
    except OSError:
        pass  # a read-only shared cache: the probe simply runs again next time


def _torch_reference(backbone, images: np.ndarray) -> np.ndarray:
    """Torch fp32 features of ``images``, whatever precision the backbone runs."""
    import torch

    x = backbone.preprocess(images)
    with torch.inference_mode():
        out = backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)
    return out.float().cpu().numpy()


def _try_engine(backbone, engine: str, precision: str, threads: int,
                cache_dir) -> tuple[Runner | None, dict]:
    """(runner, facts) when ``engine`` exports, loads and passes the probe; (None, facts with
    the reason) otherwise."""
    facts: dict = {"engine": engine}
    try:
        path, verdict, key = _graph(backbone, engine, cache_dir)
        if not verdict:
            probe = probe_batch(backbone.spec.input_size)
            fp32 = _make_runner(engine, path, "fp32", threads, backbone.spec)
            cosine = lowest_cosine(fp32(probe), _torch_reference(backbone, probe))
            verdict = {"probe_cosine_min": cosine, "passed": cosine >= PROBE_MIN_COSINE,
                       "probe_images": int(len(probe))}
            _store_verdict(cache_dir, key, engine, verdict)
        facts["probe_cosine_min"] = verdict.get("probe_cosine_min")
        if not verdict.get("passed"):
            facts["reason"] = (f"{engine} failed the probe check (lowest cosine vs torch fp32 "
                               f"{verdict.get('probe_cosine_min')} < {PROBE_MIN_COSINE})")
            return None, facts
        runner = _make_runner(engine, path, precision, threads, backbone.spec)
    except DrlError:
        raise
    except Exception as exc:  # noqa: BLE001 - any export/import failure means: use torch
        facts["reason"] = f"{engine} could not be used ({type(exc).__name__}: {exc})"
        return None, facts
    return runner, facts


def build_runner(backbone, engine: str, precision: str, threads: int,
                 cache_dir=None) -> tuple[Runner | None, dict]:
    """The runner for ``engine`` ("auto", "torch", "onnx", "openvino") at ``precision`` (the
    resolved one: "fp32" or "bf16"): ``(None, decision)`` means torch runs the forward pass.

    ``decision``: ``requested``, ``used``, ``reason`` (in words, notes on any fallback) and,
    for an exported engine, ``probe_cosine_min``.
    """
    if engine not in ENGINES:
        raise DrlError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    device = backbone.device
    import torch

    on_cpu = torch.device(device).type == "cpu"
    if engine != "auto" and engine != "torch":
        if not on_cpu:
            raise DrlError(f"engine {engine} runs on the CPU here; this backbone is on {device} "
                           f"(use --engine torch or auto on a GPU)")
        if engine == "onnx" and precision == "bf16":
            raise DrlError("ONNX Runtime has no fast bf16 on the CPU: use --engine openvino or "
                           "torch for bf16, or --precision fp32 with onnx")
        if not engine_available(engine):
            package = "onnxruntime" if engine == "onnx" else "openvino"
            raise DrlError(f"engine {engine} needs the package {package!r} (pip install "
                           f"{package}), or choose --engine torch")
    if engine == "torch":
        return None, {"requested": "torch", "used": "torch", "reason": "requested torch"}
    candidates = [engine] if engine != "auto" else auto_order(device)
    if precision == "bf16":
        candidates = [c for c in candidates if c != "onnx"]
    notes = []
    for candidate in candidates:
        if candidate == "torch":
            break
        runner, facts = _try_engine(backbone, candidate, precision, threads, cache_dir)
        if runner is not None:
            why = ("requested" if engine != "auto"
                   else f"auto: the first of {', '.join(candidates)} that passed the probe")
            reason = (f"{why}; probe lowest cosine vs torch fp32 "
                      f"{facts['probe_cosine_min']:.6f} >= {PROBE_MIN_COSINE}")
            if notes:
                reason += "; " + "; ".join(notes)
            return runner, {"requested": engine, "used": candidate, "reason": reason,
                            "probe_cosine_min": facts["probe_cosine_min"]}
        notes.append(facts["reason"])
    if engine == "auto" and not on_cpu:
        reason = f"auto: torch on {device}"
    elif notes:
        reason = "fell back to torch: " + "; ".join(notes)
    else:
        reason = "auto: torch (no other engine installed)"
    return None, {"requested": engine, "used": "torch", "reason": reason}
