"""The ``drl features`` stage: image source -> backbone features, with a content-hash cache.

::

    result = extract_features("blood-cells/", "run/", FeatureConfig(), TqdmReporter())

Steps: discover the images; read and sha256-hash every file (reading each image's size from its
header on the way, when the preprocessing needs the dataset's sizes: ``canvas`` and ``auto``,
:mod:`drlcore.data.geometry`); choose the preprocessing; look the hashes up in the feature cache;
decode, square and embed only the misses, batch by batch, writing a cache shard per batch
(so an interrupted run resumes where it stopped and a second run does no forward pass at all);
write ``features.npy``, ``images.parquet``, ``skipped.csv`` and the manifest's ``features`` entry
(:mod:`drlcore.data.rundir`) atomically at the end, plus a thumbnail per image in the run's thumbnail
shards (:class:`drlcore.data.rundir.ThumbWriter`, written by this process in discovery order, so the
shards are byte-identical however the embedding was spread).

Decoding runs in a small thread pool a few batches ahead of the model (PIL and the JPEG decoder
release the GIL), so the CPU decodes the next batch while the network runs on this one.
Batches are formed from the misses in discovery order, so a resumed run sees exactly the batches
an uninterrupted run would and writes bit-identical features.

With ``cluster`` (``--cluster local`` / ``--scheduler ADDRESS``) the embedding of the misses runs
on Dask workers instead (:mod:`drlcore.embedding.distributed`), through the same per-image function and the
same cache; everything else stays here.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import platform
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drlcore.embedding.backbones import DEFAULT_BACKBONE, PRECISIONS, Backbone, load_backbone
from drlcore.data.cache import CACHE_VERSION, FeatureCache, cache_key, feature_cache_dir
from drlcore.data.discover import DEFAULT_CHANNEL_PATTERN
from drlcore.errors import DrlError, SkipImage
from drlcore.data.geometry import DEFAULT_CANVAS_PERCENTILE, PREPROCESS_MODES
from drlcore.io import fingerprint, sha256_bytes
from drlcore.progress import NullReporter, Reporter
from drlcore.data import rundir

__all__ = ["FeatureConfig", "FeatureResult", "extract_features", "embed_arrays",
           "preprocessing_of", "describe_preprocess", "TABLE_COLUMNS", "PREPROCESS_MODES"]

TABLE_COLUMNS = ["row", "path", "label", "split", "sha256", "width", "height", "mode", "note",
                 "source"]
# Threads that read/decode ahead of the model (None: chosen from the core count).
DECODE_WORKERS: int | None = None


@dataclass(frozen=True)
class FeatureConfig:
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    batch_size: int = 32
    # pad | canvas | stretch | auto (drlcore.data.geometry): auto = canvas when crop sizes vary widely
    preprocess: str = "auto"
    # Older spelling, kept so old settings and run folders load: True = "pad", False = "stretch".
    # Folded into ``preprocess`` on construction (and then None), so both spellings compare equal.
    pad_to_square: bool | None = None
    # canvas side = this percentile of the crops' longest sides (larger crops shrink to fit)
    canvas_percentile: float = DEFAULT_CANVAS_PERCENTILE
    cache_dir: str | None = None
    pretrained: bool = True
    channels: str | None = None  # fluorescence channel colours, ``--channels`` (drlcore.data.channels)
    # one-file-per-channel grouping rule (drlcore.data.discover); None or "" turns grouping off
    channel_pattern: str | None = DEFAULT_CHANNEL_PATTERN
    # auto | fp32 | bf16 (``--precision``): the backbone forward's arithmetic; auto = bf16 only
    # where the registry records that bf16 agrees downstream and the hardware has native bf16
    # (drlcore.embedding.backbones.precision_decision). Features are stored as float32 either way.
    precision: str = "auto"
    # auto | torch | onnx | openvino (``--engine``): what runs the forward pass
    # (drlcore.embedding.engines); auto = OpenVINO, then ONNX Runtime, then torch on a CPU, the
    # first that passes the probe check; torch on a GPU. Part of the feature-cache key.
    engine: str = "auto"

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DrlError(f"batch size must be a positive integer, not {self.batch_size!r}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise DrlError(f"unknown precision {self.precision!r}; choose one of "
                           f"{', '.join(PRECISIONS)}")
        from drlcore.embedding.engines import ENGINES

        if not isinstance(self.engine, str) or self.engine not in ENGINES:
            raise DrlError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.preprocess not in PREPROCESS_MODES:
            raise DrlError(f"unknown preprocessing {self.preprocess!r}; "
                           f"choose one of {', '.join(PREPROCESS_MODES)}")
        if self.pad_to_square is not None:
            implied = "pad" if self.pad_to_square else "stretch"
            # An old config says only pad_to_square (preprocess keeps its default): honour it, so
            # an old run's settings reproduce its features. Old configs never said canvas.
            if self.preprocess not in ("auto", implied):
                raise DrlError(f"pad_to_square={self.pad_to_square} contradicts "
                               f"preprocess={self.preprocess!r}; give preprocess only")
            object.__setattr__(self, "preprocess", implied)
            object.__setattr__(self, "pad_to_square", None)
        if (isinstance(self.canvas_percentile, bool)
                or not isinstance(self.canvas_percentile, (int, float))
                or not 50 <= self.canvas_percentile <= 100):
            raise DrlError(f"canvas percentile must be a number from 50 to 100, not "
                           f"{self.canvas_percentile!r}")
        from drlcore.data.discover import IngestConfig

        # A bad channel spec or grouping rule is refused here, before any job starts.
        IngestConfig(channels=self.channels, channel_pattern=self.channel_pattern)

    @classmethod
    def from_dict(cls, values: dict) -> FeatureConfig:
        from drlcore.config import from_dict

        return from_dict(cls, values, "feature")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FeatureResult:
    features: np.ndarray   # float32 (N, D), row i <-> table row i
    table: pd.DataFrame    # TABLE_COLUMNS
    skipped: pd.DataFrame  # path, reason
    manifest: dict


def preprocessing_of(backbone: Backbone, pad_to_square: bool,
                     intensity_range: tuple[float, float] | None,
                     channels: dict | None = None, canvas_side: int | None = None) -> dict:
    """What decides the pixels the backbone sees; the feature cache key is made from it.

    ``channels`` (multi-channel data only, so other data keeps its cache key): per-channel
    ranges, names and composite colours (drlcore.data.channels). ``canvas_side`` (canvas mode only):
    adds ``preprocess: "canvas"`` and the side, so canvas features never share a key with pad
    features, nor with a canvas of another side. Pad and stretch keep the keys they had before
    the canvas mode existed (their pixels did not change), so their caches stay valid. The rest
    of the decision (the auto rule's numbers, how many crops shrank) is in the manifest's
    ``preprocess`` entry: it does not change a pixel beyond what the side already says.
    """
    spec = backbone.spec
    out = {"input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
           "interpolation": spec.interpolation, "pad_to_square": bool(pad_to_square),
           "intensity_range": list(intensity_range) if intensity_range is not None else None}
    if channels is not None:
        out["channels"] = channels
    if canvas_side is not None:
        out["preprocess"] = "canvas"
        out["canvas_side"] = int(canvas_side)
    return out


def describe_preprocess(features_entry: dict) -> str | None:
    """One line, in words, on how a run's images were prepared for the backbone, from its
    features manifest entry (runs from before the canvas mode say pad or stretch); None when
    the entry records no preprocessing at all."""
    record = features_entry.get("preprocess") or {}
    prep = features_entry.get("preprocessing") or {}
    if not record and not prep:
        return None
    mode = record.get("mode") or prep.get("preprocess") or (
        "pad" if prep.get("pad_to_square", True) else "stretch")
    size = prep.get("input_size")
    at = f" {size}x{size}" if size else ""
    if mode == "canvas":
        side = record.get("canvas_side", prep.get("canvas_side"))
        text = (f"canvas: every image pasted on one {side} px canvas, resized to{at} (one scale "
                f"for all, so size stays visible)")
        shrunk = record.get("shrunk")
        if shrunk:
            text += f"; {shrunk} image(s) larger than the canvas shrunk to fit"
    elif mode == "pad":
        text = f"pad: each image padded to a square and resized to{at} (absolute size not kept)"
    else:
        text = f"stretch: each image stretched to{at} (aspect ratio and absolute size not kept)"
    reason = record.get("reason")
    if reason and record.get("requested") == "auto":
        text += f". Chosen by {reason}"
    return text


def _open_cache(backbone: Backbone, preprocessing: dict, cache_dir: str | None) -> FeatureCache:
    root = feature_cache_dir(cache_dir)
    key = cache_key(backbone.spec.name, backbone.weights_hash, backbone.dtype, preprocessing,
                    backbone.engine)
    info = {"backbone": backbone.spec.name, "timm_name": backbone.spec.timm_name,
            "weights_hash": backbone.weights_hash, "dtype": backbone.dtype,
            "engine": backbone.engine,
            "preprocessing": preprocessing, "cache_version": CACHE_VERSION}
    return FeatureCache(root, key, info=info)


def _bounded_map(pool: ThreadPoolExecutor, fn, items, ahead: int) -> Iterator[Future]:
    """Like ``pool.map`` in order, but keeps at most ``ahead`` items in flight (bounded memory)."""
    pending: collections.deque[Future] = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def extract_features(data, out_dir, config: FeatureConfig = FeatureConfig(),
                     reporter: Reporter | None = None,
                     backbone: Backbone | None = None, cluster=None) -> FeatureResult:
    """Embed every readable image of ``data`` into ``out_dir`` (see module docstring).

    ``cluster``: a :class:`drlcore.embedding.distributed.ClusterConfig` to embed on Dask (started only
    when something needs embedding, closed before this returns)."""
    from drlcore.data import ingest

    reporter = reporter or NullReporter()
    out_dir = Path(out_dir)
    ingest_config = ingest.IngestConfig(pad_to_square=config.preprocess != "stretch",
                                        channels=config.channels,
                                        channel_pattern=config.channel_pattern)
    # A run written inside its input folder must not read its own files as images.
    dataset = ingest.discover(data, ingest_config, exclude=(out_dir,))
    for note in dataset.notes:
        reporter.message(f"discovery: {note}")
    if backbone is None:
        backbone = load_backbone(config.backbone, config.weights, config.pretrained,
                                 dtype=config.precision, batch_size=config.batch_size,
                                 engine=config.engine, cache_dir=config.cache_dir)
    elif config.precision != "auto" and backbone.dtype != config.precision:
        raise DrlError(f"the backbone passed in runs {backbone.dtype}, but the feature settings "
                       f"ask for precision {config.precision}")
    elif config.engine not in ("auto", backbone.engine):
        raise DrlError(f"the backbone passed in runs on {backbone.engine}, but the feature "
                       f"settings ask for engine {config.engine}")
    spec = backbone.spec
    irange, cranges = ingest.intensity_ranges(dataset, ingest_config)
    # The model is the bottleneck (decode + square + thumbnail of a 360 px JPEG: ~4 ms of CPU,
    # EfficientNet-Lite0: ~30 ms). Decode threads also wait on file I/O, so even on 2 cores two
    # of them keep the model fed better than one (full/bare throughput 0.91 vs 0.85, measured);
    # more than half the cores would only take them from the network.
    workers = DECODE_WORKERS or max(2, min(8, _torch_threads() // 2))
    skipped: list[tuple[str, str]] = list(dataset.skipped)

    # 1. Hash every file: the cache is keyed by content, not by name. Canvas and auto need the
    #    dataset's crop sizes before the first embedding: read from each header while the bytes
    #    are in hand (microseconds; every mode records the spread), so no image is read or
    #    decoded an extra time for it.
    records = dataset.records
    digests, sides = _hash_records(records, ingest.read_bytes, workers, reporter, skipped,
                                   measure=ingest.longest_side)
    first = {d: i for i, d in reversed(list(enumerate(digests))) if d is not None}
    decision = ingest.choose_preprocess([sides[i] for i in first.values()],
                                        config.preprocess, config.canvas_percentile)
    mode, canvas_side = decision["mode"], decision.get("canvas_side")
    if config.preprocess == "auto" or mode == "canvas":
        reporter.message(f"features: preprocessing {mode}"
                         + (f" on a {canvas_side} px canvas" if canvas_side else "")
                         + f" ({decision['reason']})")
    preprocessing = preprocessing_of(backbone, mode != "stretch", irange,
                                     ingest.channels_entry(dataset, ingest_config, cranges),
                                     canvas_side=canvas_side)
    cache = _open_cache(backbone, preprocessing, config.cache_dir)
    reporter.message(f"features: engine {backbone.engine} "
                     f"({backbone.engine_decision['reason']}); precision {backbone.dtype} "
                     f"({backbone.precision_reason})")

    # 2. Decode what the cache cannot answer: misses (to embed) and hits that lack their
    #    metadata or thumbnail here (decode only).
    unique = list(dict.fromkeys(d for d in digests if d is not None))
    vectors = cache.get(unique)
    meta = cache.metadata(unique)
    for note in cache.notes():  # damaged shards: their images are embedded again below
        reporter.message(f"note: {note}")
    thumbs = rundir.ThumbWriter(out_dir)
    no_thumb = set(np.asarray(unique, dtype=object)[thumbs.missing(unique)]) if unique else set()
    todo: list[int] = []
    seen: set[str] = set()
    for i, digest in enumerate(digests):
        if digest is None or digest in seen:
            continue
        seen.add(digest)
        if digest not in vectors or digest not in meta or digest in no_thumb:
            todo.append(i)
    decode_failed: dict[str, str] = {}
    n_misses = sum(1 for i in todo if digests[i] not in vectors)
    if n_misses:
        reporter.message(f"features: {len(unique) - n_misses} of {len(unique)} images cached; "
                         f"{n_misses} new to embed with {spec.name} ({backbone.dtype})")
    else:
        reporter.message(f"features: all {len(unique)} images served from the cache "
                         f"({spec.name}); no forward pass")

    # One image in, (square to embed or None, metadata, skip reason, thumbnail JPEG or None)
    # out. It closes over small settings only (no table, no cache, no run folder), so
    # drlcore.embedding.distributed can ship it to Dask workers; thumbnails come back to be written here.
    def prepare_one(record, digest: str, need_thumb: bool, need_vector: bool):
        try:
            image = ingest.decode(ingest.read_bytes(record), ingest_config, irange, cranges)
        except SkipImage as exc:
            return None, None, exc.reason, None
        except OSError as exc:
            return None, None, f"cannot read: {exc}", None
        # One PIL copy of the pixels serves the thumbnail and the square (each copy ~0.3 ms).
        pil = ingest.as_image(image.rgb)
        thumb = ingest.thumbnail(pil) if need_thumb else None
        info = {"width": int(image.width), "height": int(image.height), "mode": image.mode,
                "note": image.note}
        square = None
        if need_vector:
            square = ingest.prepare(pil, spec.input_size, mode, canvas_side, spec.interpolation)
        return square, info, None, thumb

    def prepare(i: int):
        digest = digests[i]
        return i, *prepare_one(records[i], digest, digest in no_thumb, digest not in vectors)

    batch_digests: list[str] = []
    batch_images: list[np.ndarray] = []
    batch_meta: list[dict] = []

    def flush(bar) -> None:
        if not batch_digests:
            return
        embedded = backbone.embed(np.stack(batch_images))
        cache.put(batch_digests, embedded, batch_meta)
        vectors.update(zip(batch_digests, embedded))
        bar.update(len(batch_digests))
        batch_digests.clear(), batch_images.clear(), batch_meta.clear()

    # Dask batches finish in any order; their thumbnails are written in batch order (as the
    # local loop writes them), so the shards do not depend on which worker was quicker.
    waiting: dict[int, list[tuple[str, bytes]]] = {}
    written = [0]

    def take(batch: list[tuple], result: dict) -> None:
        """A batch finished on a Dask worker: record it as the local loop would."""
        ready = []
        for (i, _, digest, _, _), info, reason, thumb in zip(
                batch, result["infos"], result["reasons"], result["thumbs"]):
            if reason is not None:
                decode_failed[digest] = reason
            else:
                meta[digest] = info
                if thumb is not None:
                    ready.append((digest, thumb))
        waiting[batch_number[batch[0][0]]] = ready
        while written[0] in waiting:
            for digest, thumb in waiting.pop(written[0]):
                thumbs.add(digest, thumb)
            written[0] += 1
        if result["digests"]:
            cache.put(result["digests"], result["vectors"], [meta[d] for d in result["digests"]])
            vectors.update(zip(result["digests"], result["vectors"]))
        bar.update(len(batch))

    if cluster is not None and todo:
        from drlcore.embedding import distributed

        settings = distributed.BackboneSettings.of(backbone, config.weights, config.pretrained,
                                                   config.cache_dir)
        items = [(i, records[i], digests[i], digests[i] in no_thumb, digests[i] not in vectors)
                 for i in todo]
        batches = list(distributed.plan_batches(items, config.batch_size))
        batch_number = {batch[0][0]: n for n, batch in enumerate(batches)}
        with thumbs, reporter.stage("embedding", total=len(todo), unit="img") as bar, \
                distributed.connect(cluster, reporter) as client:
            distributed.embed_on_cluster(client, settings, prepare_one, batches, take,
                                         retries=cluster.retries)
    else:
        with thumbs, reporter.stage("embedding", total=len(todo), unit="img") as bar, \
                ThreadPoolExecutor(workers) as pool:
            try:
                ahead = 2 * config.batch_size + workers
                for future in _bounded_map(pool, prepare, todo, ahead=ahead):
                    i, square, info, reason, thumb = future.result()
                    digest = digests[i]
                    if reason is not None:
                        decode_failed[digest] = reason
                        bar.update(1)
                        continue
                    meta[digest] = info
                    if thumb is not None:
                        thumbs.add(digest, thumb)
                    if square is None:
                        bar.update(1)  # cached vector, decoded only for metadata/thumbnail
                        continue
                    batch_digests.append(digest), batch_images.append(square)
                    batch_meta.append(info)
                    if len(batch_digests) == config.batch_size:
                        flush(bar)
                flush(bar)
            except BaseException:
                # Interrupted (Ctrl-C, error): drop queued decodes; finished batches stay cached.
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    # 3. Assemble in discovery order.
    rows, keep = [], []
    for i, (record, digest) in enumerate(zip(records, digests)):
        if digest is None:
            continue
        if digest in decode_failed:
            skipped.append((record.path, decode_failed[digest]))
            continue
        info = meta[digest]
        # Discovery's note (e.g. why a file was not grouped with channel files) is about this
        # record, the cached one about the decoded pixels: the row shows both.
        note = "; ".join(n for n in (record.note, info["note"]) if n) or None
        rows.append({"row": len(rows), "path": record.path, "label": record.label,
                     "split": record.split, "sha256": digest, "width": info["width"],
                     "height": info["height"], "mode": info["mode"], "note": note,
                     "source": record.source})
        keep.append(digest)
    if not rows:
        examples = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DrlError(f"no readable image in {data} ({len(skipped)} candidate file(s) skipped"
                       + (f", e.g. {examples}" if examples else "") + ")")

    features = np.stack([vectors[d] for d in keep]).astype(np.float32, copy=False)
    table = _table(rows)
    skipped_df = pd.DataFrame(skipped, columns=["path", "reason"]).astype(
        {"path": "string", "reason": "string"})
    if canvas_side is not None:  # recounted over the images kept (sizes as decoded)
        decision["shrunk"] = int((np.maximum(table["width"], table["height"]) > canvas_side).sum())
    manifest = _manifest(dataset, backbone, preprocessing, table, skipped_df, cache)
    manifest["preprocess"] = decision
    # What the cache met (damaged shards re-embedded, a cache folder that could not be written);
    # `drl run` carries these into the run's notes.
    manifest["notes"] = cache.notes()
    if cache.note:
        reporter.message(f"note: {cache.note}")
    rundir.write_features(out_dir, features, table, skipped_df)
    # Only this stage's entry: a rerun into a run folder keeps what the later stages recorded.
    rundir.record_stage(out_dir, "features", manifest)
    rundir.record_files(out_dir, "features", [rundir.FEATURES, rundir.IMAGES, rundir.SKIPPED,
                                              *rundir.thumb_files(out_dir)],
                        replace=f"{rundir.THUMBS}/")
    return FeatureResult(features=features, table=table, skipped=skipped_df, manifest=manifest)


def _hash_records(records, read_bytes, workers: int, reporter: Reporter,
                  skipped: list[tuple[str, str]], measure=None
                  ) -> tuple[list[str | None], list[int | None]]:
    """sha256 of each record's file bytes (None where unreadable, with the reason in skipped),
    and, with ``measure`` (bytes -> longest side or None), each image's longest side."""
    def hash_one(i: int) -> tuple[str | None, str | None, int | None]:
        try:
            data = read_bytes(records[i])
        except SkipImage as exc:
            return None, exc.reason, None
        except OSError as exc:
            return None, f"cannot read: {exc}", None
        return sha256_bytes(data), None, (measure(data) if measure is not None else None)

    digests: list[str | None] = []
    sides: list[int | None] = []
    with reporter.stage("hashing", total=len(records), unit="img") as bar, \
            ThreadPoolExecutor(workers) as pool:
        for i, future in enumerate(_bounded_map(pool, hash_one, range(len(records)),
                                                ahead=4 * workers)):
            digest, reason, side = future.result()
            digests.append(digest)
            sides.append(side)
            if reason is not None:
                skipped.append((records[i].path, reason))
            bar.update(1)
    return digests, sides


def _torch_threads() -> int:
    """torch's thread count where torch is loaded; else the usable cores (a backbone on a cached
    exported graph never imports torch, and torch would default to the same count)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    from drlcore.embedding.backbones import _usable_threads

    return _usable_threads()


def _table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.astype({"row": "int64", "path": "string", "label": "string", "split": "string",
                         "sha256": "string", "width": "int64", "height": "int64",
                         "mode": "string", "note": "string", "source": "string"})


def _manifest(dataset, backbone: Backbone, preprocessing: dict, table: pd.DataFrame,
              skipped: pd.DataFrame, cache: FeatureCache) -> dict:
    from importlib.metadata import version

    import drlcore

    return {
        "backbone": backbone.spec.name,
        "timm_name": backbone.spec.timm_name,
        "weights_hash": backbone.weights_hash,
        "weights_source": backbone.weights_source,
        "dtype": backbone.dtype,
        # What was asked, what ran (= dtype, the cache key's part) and why; stored float32.
        "precision": {"requested": backbone.precision, "used": backbone.dtype,
                      "reason": backbone.precision_reason,
                      **_precision_figures(backbone)},
        # What ran the forward pass (drlcore.embedding.engines), asked and used, and why;
        # part of the cache key, so features of two engines are never mixed.
        "engine": dict(backbone.engine_decision),
        "feature_dim": int(backbone.spec.feature_dim),
        "pooling": backbone.spec.pooling,
        "preprocessing": preprocessing,
        "data": {"root": str(dataset.root), "layout": dataset.layout,
                 "fingerprint": fingerprint(table["sha256"].tolist()),
                 # how files became objects (one per file, or one per set of channel files)
                 "reading": getattr(dataset, "reading", "per-file"),
                 "notes": list(getattr(dataset, "notes", []))},
        "counts": {"accepted": int(len(table)), "skipped": int(len(skipped)),
                   "labels": int(table["label"].nunique(dropna=True))},
        "cache": {"root": str(cache.root), "key": cache.key, "version": CACHE_VERSION},
        "versions": {"drlcore": drlcore.__version__, "torch": version("torch"),
                     "timm": version("timm"), "python": platform.python_version()},
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _precision_figures(backbone: Backbone) -> dict:
    """The registry's measured noise-floor figures for bf16 of this backbone, when bf16 ran."""
    if backbone.dtype != "bf16":
        return {}
    figures = backbone.spec.bf16_figures
    return {"figures": [dict(f) for f in figures]} if figures else {}


def embed_arrays(backbone: Backbone, images: np.ndarray, cache: FeatureCache | None = None,
                 reporter: Reporter | None = None, batch_size: int | None = None) -> np.ndarray:
    """Embed in-memory uint8 images (N, S, S, 3) already at the backbone's input size.

    With a cache, each image is keyed by the sha256 of its array bytes (shape included), so
    re-rendering the same images costs no forward pass.
    """
    reporter = reporter or NullReporter()
    images = np.asarray(images)
    size = backbone.spec.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"expected uint8 images (N, {size}, {size}, 3), got "
                         f"{images.dtype} {images.shape}")
    batch_size = batch_size or backbone.batch_size
    digests = [sha256_bytes(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes())
               for img in images]
    found = cache.get(digests) if cache is not None else {}
    first_index = {d: i for i, d in reversed(list(enumerate(digests)))}
    missing = [first_index[d] for d in dict.fromkeys(digests) if d not in found]
    with reporter.stage("embedding", total=len(missing), unit="img") as bar:
        for start in range(0, len(missing), batch_size):
            idx = missing[start:start + batch_size]
            out = backbone.embed(images[idx])
            batch = [digests[i] for i in idx]
            if cache is not None:
                cache.put(batch, out)
            found.update(zip(batch, out))
            bar.update(len(idx))
    if not len(images):
        return np.zeros((0, backbone.spec.feature_dim), np.float32)
    return np.stack([found[d] for d in digests]).astype(np.float32, copy=False)
