"""Model directories on disk: ``config.json`` + ``model.safetensors`` + ``metrics.json``.

``config.json`` holds everything needed to rebuild the model and to know whether it fits a given
set of features: the architecture (``VAEConfig``), the backbone that produced its training features
(name, timm name, weights hash, feature dimension), what each latent dimension encodes, how it was
trained, and where it came from (a transferred model records its parent's hash). The weights,
including the feature standardisation buffers, are in ``model.safetensors``; the config records the
file's sha256, which is also the model's identity (``model_hash``) in run manifests.

The loader rebuilds the model from the config, then loads the weights strictly. It refuses, with a
``DrlError`` that says what to do, anything it cannot trust: missing files, a schema version it does
not know, damaged files, a config entry that is missing, null or of the wrong type (every reader
goes through :func:`read_model_config`, which checks them all), weights holding NaN or infinite
values (a diverged training run: every latent would be NaN), or a backbone that does not match
the features it is about to encode. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from drlcore import __version__

from drlcore.data import rundir
from drlcore.errors import DrlError
from drlcore.io import atomic_write_bytes, atomic_write_json, sha256_bytes
from drlcore.disentangle.vae import FeatureVAE, VAEConfig

__all__ = [
    "SCHEMA_VERSION",
    "KNOWN_SCHEMA_VERSIONS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "METRICS_FILE",
    "save_model",
    "load_model",
    "read_model_config",
    "read_metrics",
    "model_hash",
]

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
CONFIG_FILE = rundir.MODEL_CONFIG
WEIGHTS_FILE = rundir.MODEL_WEIGHTS
METRICS_FILE = rundir.MODEL_METRICS

_BACKBONE_KEYS = ("name", "timm_name", "weights_hash", "feature_dim")


def save_model(model_dir: str | Path, model: FeatureVAE, meta: dict[str, Any]) -> str:
    """Write a model directory; returns the model hash (sha256 of ``model.safetensors``).

    ``meta`` keys: ``backbone`` (dict with name, timm_name, weights_hash, feature_dim; required),
    ``dim_names``, ``dim_factor``, ``inactive_dims``, ``training`` (dict), ``parent_model_hash``
    (transfers), ``metrics`` (dict written to ``metrics.json``), and any further JSON-able
    ``extra`` entries, which are stored under ``config["extra"]``.
    """
    model_dir = Path(model_dir)
    unknown = sorted(set(meta) - {"backbone", "dim_names", "dim_factor", "inactive_dims",
                                  "training", "parent_model_hash", "metrics", "extra"})
    if unknown:
        raise ValueError(f"save_model: unknown meta keys {unknown}")
    backbone = dict(meta.get("backbone") or {})
    missing = [k for k in _BACKBONE_KEYS if k not in backbone]
    if missing:
        raise ValueError(f"save_model: meta['backbone'] lacks {missing}")
    if int(backbone["feature_dim"]) != model.config.input_dim:
        raise ValueError(f"save_model: backbone feature_dim {backbone['feature_dim']} != model "
                         f"input_dim {model.config.input_dim}")
    if not bool(model.standardisation_fitted):
        raise ValueError("save_model: the model's feature standardisation was never fitted")
    latent_dim = model.config.latent_dim
    dim_names = list(meta.get("dim_names") or [f"z{j}" for j in range(latent_dim)])
    dim_factor = list(meta.get("dim_factor") or [None] * latent_dim)
    if len(dim_names) != latent_dim or len(dim_factor) != latent_dim:
        raise ValueError(f"save_model: need {latent_dim} dim_names and dim_factor entries")

    # Serialise in memory, then write atomically: safetensors' save_file writes in place.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata entry only: safetensors writes the metadata map in hash order, so several keys
    # would make the bytes (and so the model hash) differ between identical models.
    weights = _st_save(state, metadata={"format": "pt"})
    digest = sha256_bytes(weights)

    config = {
        "schema_version": SCHEMA_VERSION,
        "architecture": model.config.to_dict(),
        "backbone": backbone,
        "feature_standardisation": "per-feature mean/std fitted on the training features; stored "
                                   "in model.safetensors as feature_mean / feature_std",
        "dim_names": dim_names,
        "dim_factor": dim_factor,
        "inactive_dims": sorted(int(j) for j in meta.get("inactive_dims") or []),
        "training": dict(meta.get("training") or {}),
        "weights_sha256": digest,
        "provenance": {
            "drlcore": __version__,
            "torch": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parent_model_hash": meta.get("parent_model_hash"),
        },
    }
    if meta.get("extra"):
        config["extra"] = dict(meta["extra"])

    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_dir / WEIGHTS_FILE, weights)
    atomic_write_json(model_dir / METRICS_FILE, dict(meta.get("metrics") or {}))
    # config.json last: a directory with a config is a complete one.
    atomic_write_json(model_dir / CONFIG_FILE, config)
    return digest


def _read_json_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DrlError(f"{path.parent} is not a complete model directory: {path.name} is missing "
                       f"({what}). Point to a folder made by `drl train-source` or `drl transfer`.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DrlError(f"{path} is damaged and cannot be read as JSON ({exc}). Re-create the model "
                       "or copy the folder again.") from None


def read_metrics(model_dir: str | Path) -> dict:
    """The model's ``metrics.json`` (empty dict when absent)."""
    path = Path(model_dir) / METRICS_FILE
    return _read_json_file(path, "training metrics") if path.exists() else {}


def model_hash(model_dir: str | Path) -> str:
    """The model's identity: the recorded sha256 of its weights file."""
    return _read_json_file(Path(model_dir) / CONFIG_FILE, "model description")["weights_sha256"]


def load_model(model_dir: str | Path, expected_backbone: str | None = None,
               expected_weights_hash: str | None = None,
               expected_feature_dim: int | None = None) -> tuple[FeatureVAE, dict]:
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` strictly.

    Returns ``(model, meta)`` with the model in eval mode; ``meta`` is the config dict plus
    ``model_hash`` and ``metrics``. The ``expected_*`` arguments describe the features the model is
    about to be applied to; a mismatch is refused, since latents of another backbone's features
    are meaningless.
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    try:
        vae_config = VAEConfig.from_dict(config["architecture"])
        backbone = config["backbone"]
        recorded_hash = config["weights_sha256"]
        for key in _BACKBONE_KEYS:
            backbone[key]
    except (KeyError, TypeError) as exc:
        raise DrlError(f"{model_dir / CONFIG_FILE} lacks a required entry ({exc}); the file is "
                       "incomplete or was not written by drlcore") from None
    except DrlError as exc:
        raise DrlError(f"{model_dir / CONFIG_FILE}: {exc}") from None

    _check_backbone(model_dir, backbone, vae_config, expected_backbone, expected_weights_hash,
                    expected_feature_dim)

    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise DrlError(f"{model_dir} is not a complete model directory: {WEIGHTS_FILE} is missing")
    data = weights_path.read_bytes()
    digest = sha256_bytes(data)
    if digest != recorded_hash:
        raise DrlError(f"{weights_path} is damaged or was replaced: its sha256 {digest[:12]}... does "
                       f"not match the {recorded_hash[:12]}... recorded in {CONFIG_FILE}. Copy the "
                       "model folder again or re-train.")
    try:
        state = _st_load(data)
    except Exception as exc:  # safetensors raises its own error types for truncated headers etc.
        raise DrlError(f"{weights_path} is damaged and cannot be read ({exc})") from None
    not_finite = sorted(name for name, tensor in state.items()
                        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if not_finite:
        shown = ", ".join(not_finite[:3]) + (", ..." if len(not_finite) > 3 else "")
        raise DrlError(f"{weights_path} holds NaN or infinite weights ({shown}): the model is "
                       f"broken (its training diverged) and would give NaN for every image. "
                       f"Re-train it, or use another model")

    model = FeatureVAE(vae_config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DrlError(f"{weights_path} does not fit the architecture in {CONFIG_FILE}: "
                       f"{str(exc).splitlines()[0]}") from None
    model.eval()

    meta = dict(config)
    meta["model_hash"] = digest
    meta["metrics"] = read_metrics(model_dir)
    return model, meta


def _check_backbone(model_dir: Path, backbone: dict, vae_config: VAEConfig,
                    expected_backbone: str | None, expected_weights_hash: str | None,
                    expected_feature_dim: int | None) -> None:
    trained_on = f"{backbone['name']} (weights {str(backbone['weights_hash'])[:12]})"
    advice = ("Re-extract the features with the model's backbone "
              f"(`--backbone {backbone['name']}`), or use a model trained on this backbone.")
    if expected_backbone is not None and expected_backbone != backbone["name"]:
        raise DrlError(f"the model in {model_dir} was trained on features of {trained_on}, but "
                       f"these features come from {expected_backbone!r}. {advice}")
    if expected_weights_hash is not None and expected_weights_hash != backbone["weights_hash"]:
        raise DrlError(f"the model in {model_dir} was trained on features of {trained_on}, but "
                       f"these features come from the same backbone with other weights "
                       f"({expected_weights_hash[:12]}). {advice}")
    if int(backbone["feature_dim"]) != vae_config.input_dim:
        raise DrlError(f"{model_dir / CONFIG_FILE} is inconsistent: backbone feature_dim "
                       f"{backbone['feature_dim']} but model input_dim {vae_config.input_dim}")
    if expected_feature_dim is not None and int(expected_feature_dim) != vae_config.input_dim:
        raise DrlError(f"the model in {model_dir} expects {vae_config.input_dim}-d features "
                       f"({trained_on}), but these are {expected_feature_dim}-d. {advice}")


def read_model_config(model_dir: str | Path) -> dict:
    """A model directory's ``config.json`` (no weights loaded), schema version checked."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DrlError(f"model directory {model_dir} does not exist")
    config = _read_json_file(model_dir / CONFIG_FILE, "model description")
    if not isinstance(config, dict) or config.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
        version = config.get("schema_version") if isinstance(config, dict) else None
        raise DrlError(f"{model_dir / CONFIG_FILE} has schema_version {version!r}, but this drlcore "
                       f"({__version__}) knows only {list(KNOWN_SCHEMA_VERSIONS)}. The model was "
                       "written by a different drlcore version; upgrade drlcore or re-train.")
    _check_config(model_dir / CONFIG_FILE, config)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Entry -> (what it must be, test). Anything else in config.json is free-form.
_REQUIRED = {
    "weights_sha256": ("a sha256 hex string", lambda v: isinstance(v, str) and len(v) == 64),
    "backbone": ("an object with name, timm_name, weights_hash and feature_dim",
                 lambda v: isinstance(v, dict)),
    "architecture": ("an object (the VAE settings)", lambda v: isinstance(v, dict)),
}
_BACKBONE_TYPES = {
    "name": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
    "timm_name": ("a string", lambda v: isinstance(v, str)),
    "weights_hash": ("a string", lambda v: isinstance(v, str)),
    "feature_dim": ("a positive integer", lambda v: _is_int(v) and v > 0),
}
_OPTIONAL_LISTS = ("dim_names", "dim_factor", "inactive_dims")


def _check_config(path: Path, config: dict) -> None:
    """Every entry a reader relies on is present and of the right type: a hand-edited or
    damaged config.json gets one clear message here, never a KeyError or TypeError later."""
    advice = "the file is incomplete or was edited; re-create the model or copy the folder again"
    for key, (kind, ok) in _REQUIRED.items():
        if config.get(key) is None:
            raise DrlError(f"{path}: {key!r} is missing or null (it must be {kind}); {advice}")
        if not ok(config[key]):
            raise DrlError(f"{path}: {key!r} must be {kind}, not {config[key]!r}; {advice}")
    for key, (kind, ok) in _BACKBONE_TYPES.items():
        value = config["backbone"].get(key)
        if not ok(value):
            state = "missing or null" if value is None else f"{value!r}"
            raise DrlError(f"{path}: backbone {key!r} must be {kind}, not {state}; {advice}")
    try:
        vae_config = VAEConfig.from_dict(config["architecture"])
    except DrlError as exc:
        raise DrlError(f"{path}: architecture: {exc}; {advice}") from None
    for key in _OPTIONAL_LISTS:
        if config.get(key) is not None and not isinstance(config[key], list):
            raise DrlError(f"{path}: {key!r} must be a list, not {config[key]!r}; {advice}")
    names = config.get("dim_names")
    if names is not None and len(names) != vae_config.latent_dim:
        raise DrlError(f"{path}: {len(names)} dim_names for a {vae_config.latent_dim}-d model; "
                       f"{advice}")
