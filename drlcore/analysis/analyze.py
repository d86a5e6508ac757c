"""``drl analyze``: everything the explorer shows about an encoded run, computed once.

Adds to ``objects.parquet``: handcrafted morphology (``morph_*``), 2-D maps (``pca_*``,
``umap_*``), open-set anomaly scores (``anomaly_*``) and per-axis robust z-scores
(``z_score_*``); writes ``correlations.parquet`` (latent axes x handcrafted features) and
``analysis.json`` (classification, open-set AUROCs, map trustworthiness, notes).

Degenerate runs (one class, one image, constant images, non-finite features, segmentation that
failed everywhere) are not errors: the part that cannot be computed is left out and
``analysis.json["notes"]`` says why, in words a biologist can act on. Nothing is written until
everything is computed, and each file is replaced atomically, so an interrupted analysis leaves the
previous one intact.

Idempotent and cached: the analysis key covers the encoded latents, the raw features, the
configuration and ``ANALYSIS_VERSION``; rerunning with the same key returns at once. Morphology, the
slowest part, is also cached per image content hash, so re-analysing with other settings (say,
other known classes) does not measure the images again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drlcore.data import rundir

from drlcore.analysis import scale
from drlcore.data.cache import ContentStore, cache_root, cache_write_note
from drlcore.errors import DrlError
from drlcore.io import fingerprint, sha256_bytes
from drlcore.progress import NullReporter, Reporter
from drlcore.workers import SideTasks, WorkerPool, available_cores

__all__ = ["AnalyzeConfig", "analyze_run", "project_onto", "ANALYSIS_VERSION",
           "MIN_OBJECTS_FOR_MAPS", "measure_morphology", "measure_anchor_values"]

ANALYSIS_VERSION = 5  # 2: data-derived axis names (drlcore.analysis.naming); 3: names need |rho| >= 0.5
# 4: the axis card (drlcore.analysis.axis_card) and anchored axes named by their anchor;
# 5: MI intervals from a multinomial bootstrap of the joint table (same distribution, faster)
# 3: one ContentStore entry per measured batch; 4: multi-channel images segmented on one stated
# channel and measured per channel and compartment in file units (issue 19); grey integrated;
# 5: grey/RGB images whose segmentation fails are measured on a fallback mask (issue 19)
MORPHOLOGY_CACHE_VERSION = 5
MORPHOLOGY_CHUNK = 50_000  # images measured (and cached) per batch
# Below this many images starting the worker processes (~2-3 s) costs about what they save
# (1,000 images: 2-15 s of measuring on one core, from 40 px flow-cytometry cells to 360 px smears).
PARALLEL_MORPHOLOGY_MIN = 1000
# From this many objects the UMAP map and the raw features' classifiers (about 10 s and 20 s on
# one core for 1,300 objects) run in a spare process beside the rest of the analysis.
PARALLEL_ANALYSIS_MIN = 500
_MORPHOLOGY_TASK = 32  # images per task handed to a worker process
MIN_OBJECTS_FOR_MAPS = 5
# umap-learn needs a handful of neighbours; below this a map says nothing anyway.
MIN_OBJECTS_FOR_UMAP = 16
CORRELATION_COLUMNS = ["dim", "dim_name", "feature", "method", "value", "ci_low", "ci_high",
                       "p_value", "q_value", "n"]


@dataclass(frozen=True)
class AnalyzeConfig:
    known_classes: tuple[str, ...] | None = None  # None: every object is "known"
    umap: bool = True
    cache_dir: str | None = None
    seed: int = 0
    n_boot: int = 200
    knn_k: int = 10
    classify: bool = True
    mask_dir: str | None = None  # optional folder of object masks (matched by file stem)
    # Processes that decode and measure morphology: None picks every available core once there
    # are at least PARALLEL_MORPHOLOGY_MIN images to measure (starting workers costs ~2 s).
    n_jobs: int | None = None
    # Classifiers of the raw backbone features, the reference for how much class information
    # the latents keep. The MLP only by default: it is the stronger reader of these features
    # (1,300 blood cells: balanced accuracy 0.82 vs 0.72 for gradient boosting on their 128
    # principal components), and the boosted trees cost ~17 s there, more than the rest of
    # the analysis. ("mlp", "gbt") adds them back. The latents get both models.
    raw_feature_models: tuple[str, ...] = ("mlp",)
    # Multi-channel images: the channel the object mask is cut from, a name or a 0-based index
    # (None: bright field where a channel is named so, else the best-separated non-DNA channel).
    mask_channel: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> AnalyzeConfig:
        from drlcore.config import from_dict

        return from_dict(cls, d, "analysis")


# --------------------------------------------------------------------------- morphology


def _morphology(objects: pd.DataFrame, run_dir: Path, config: AnalyzeConfig,
                reporter: Reporter, notes: list[str]) -> pd.DataFrame:
    """Morphology per object, served per image from a content-addressed cache when possible."""
    from drlcore.analysis import morphology

    root = cache_root(config.cache_dir) / "morphology" / f"v{MORPHOLOGY_CACHE_VERSION}"
    if config.mask_channel is not None:  # another mask channel, other answers for the same image
        root = root / f"mask-{sha256_bytes(str(config.mask_channel).encode())[:16]}"
    store = ContentStore(root)
    if config.mask_channel is not None:
        # Checked once, before any image is measured: a misspelt channel fails here, by name.
        from drlcore.data.channels import mask_channel_index

        info = rundir.features_info(run_dir)
        recorded = ((info.preprocessing.get("channels") if info is not None else None) or {})
        if recorded.get("names"):
            mask_channel_index(recorded["names"], config.mask_channel)
        else:
            notes.append(f"mask channel {config.mask_channel!r} ignored: the images are not "
                         "multi-channel")
    use_cache = config.mask_dir is None  # masks change the answer for the same image
    cached = _read_morph_cache(store) if use_cache else pd.DataFrame()
    write_failed: list[str] = []
    hashes = objects["sha256"].astype(str)
    todo = [i for i, h in enumerate(hashes) if h not in cached.index]

    # Measured a chunk at a time, each chunk cached as it finishes: a run of 10^6 images that is
    # interrupted resumes from the last finished chunk, and memory holds one chunk of images.
    parts = []
    for start in range(0, len(todo), MORPHOLOGY_CHUNK):
        chunk = todo[start:start + MORPHOLOGY_CHUNK]
        masks = None
        if config.mask_dir:
            masks = morphology.load_mask_folder(config.mask_dir,
                                                [objects["path"].iloc[i] for i in chunk])
        measured = _measure(objects, chunk, run_dir, masks, config, reporter, notes)
        measured.index = hashes.iloc[chunk].to_numpy()
        if use_cache and not write_failed:
            _write_morph_cache(store, measured, config, write_failed)
        parts.append(measured[~measured.index.duplicated()])
    if parts:
        cached = pd.concat([cached, *parts])
        cached = cached[~cached.index.duplicated(keep="last")]
    notes.extend(n for n in write_failed if n not in notes)  # once, and not twice per run
    result = cached.loc[hashes.to_numpy()].reset_index(drop=True)
    n_failed = int((~result["morph_ok"].astype(bool)).sum())
    if n_failed == len(result):
        notes.append("segmentation failed on every image, so no morphology or latent-morphology "
                     "correlation is available; check that objects stand out from a plain "
                     "background, or supply masks (mask folder)")
    elif n_failed:
        notes.append(f"segmentation failed or was implausible on {n_failed} of {len(result)} "
                     f"images; their morphology is left empty (see morph_note)")
    return result


def _measure(objects, rows, run_dir, masks, config, reporter, notes) -> pd.DataFrame:
    """Morphology of ``rows`` of ``objects``, in order: here, or decoded and measured in worker
    processes (the images never cross between processes, only their file names)."""
    from drlcore.analysis import morphology

    decoding = _decoding(run_dir)
    records = [_record(objects.iloc[i]) for i in rows]
    n_jobs = config.n_jobs
    if n_jobs is None:
        n_jobs = available_cores() if len(rows) >= PARALLEL_MORPHOLOGY_MIN else 1
    n_jobs = max(1, min(int(n_jobs), -(-len(rows) // _MORPHOLOGY_TASK)))
    if n_jobs == 1:
        return morphology.measure_dataset(
            _images_for(records, masks, decoding, notes), reporter=reporter,
            masks_expected=masks is not None, mask_channel=config.mask_channel)
    tasks = [(records[s:s + _MORPHOLOGY_TASK],
              masks[s:s + _MORPHOLOGY_TASK] if masks is not None else None,
              decoding, masks is not None, config.mask_channel)
             for s in range(0, len(records), _MORPHOLOGY_TASK)]
    rows: list[dict] = []
    with (reporter.stage("morphology", total=len(records), unit="img") as bar,
          WorkerPool(n_jobs) as pool):
        for task_rows, task_notes in pool.map(_measure_task, tasks):
            rows.extend(task_rows)
            notes.extend(task_notes)
            bar.update(len(task_rows))
    return morphology.rows_to_frame(rows)


def _measure_task(task) -> tuple[list[dict], list[str]]:
    """One worker's share: decode and measure a few images (see :func:`_measure`)."""
    from drlcore.analysis import morphology

    records, masks, decoding, masks_expected, mask_channel = task
    notes: list[str] = []
    rows = morphology.measure_rows(_images_for(records, masks, decoding, notes),
                                   masks_expected, mask_channel)
    return rows, notes


def _decoding(run_dir: Path) -> dict:
    """How the features stage decoded the run's images (so morphology sees the same pixels)."""
    info = rundir.features_info(run_dir)
    # Multi-channel data: the same per-channel ranges and composite colours (drlcore.data.channels).
    chan = (info.preprocessing.get("channels") if info is not None else None) or {}
    return {"intensity_range": info.intensity_range if info is not None else None,
            "channel_ranges": chan.get("ranges"), "channel_names": chan.get("names"),
            "channels": ",".join(f"{k}={c}" for k, c in enumerate(chan.get("colours") or []))
            or None}


def _record(row) -> dict:
    return {"path": row["path"], "label": row.get("label"), "split": row.get("split"),
            "source": row["source"]}


def _images_for(records: list[dict], masks, decoding: dict, notes: list[str]):
    """(rgb, mask, channels, channel names) per record, decoded exactly as the features stage
    did; lazily, one image in memory at a time."""
    from drlcore.data import ingest

    cfg = ingest.IngestConfig(channels=decoding["channels"])

    class _Images:
        def __len__(self):
            return len(records)

        def __iter__(self):
            for n, fields in enumerate(records):
                record = ingest.ImageRecord(**fields)
                stored = names = None
                try:
                    image = ingest.decode(ingest.read_bytes(record), cfg,
                                          decoding["intensity_range"],
                                          decoding["channel_ranges"], decoding["channel_names"])
                    rgb, stored = image.rgb, image.channel_pixels
                    names = image.channel_map.names if stored is not None else None
                except Exception as err:  # the image changed or vanished since encoding
                    notes.append(f"{fields['path']}: could not be re-read for morphology ({err})")
                    rgb = np.zeros((8, 8, 3), np.uint8)  # measures as "no object", flagged
                yield rgb, (masks[n] if masks is not None else None), stored, names

    return _Images()


_MORPH_TABLE = "morphology.parquet"


def _read_morph_cache(store: ContentStore) -> pd.DataFrame:
    frames = []
    for key in store.keys():
        entry = store.get(key)  # checked against its checksums: a damaged one is a miss
        if entry is None:
            continue
        try:
            frames.append(pd.read_parquet(entry / _MORPH_TABLE).set_index("sha256"))
        except Exception:  # an old-format entry only costs a re-measure
            continue
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames)
    return table[~table.index.duplicated(keep="last")]


def _write_morph_cache(store: ContentStore, measured: pd.DataFrame, config: AnalyzeConfig,
                       failed: list[str]) -> None:
    key = sha256_bytes("".join(measured.index).encode())[:16]
    if store.get(key) is not None:
        return
    # The image hash goes in a column: tables are written without their index.
    table = measured.reset_index(names="sha256")
    try:
        store.put(key, lambda folder: table.to_parquet(folder / _MORPH_TABLE, index=False))
    except OSError as err:  # a full or read-only cache only costs a re-measure next time
        failed.append(cache_write_note(cache_root(config.cache_dir), err))


# --------------------------------------------------------------------------- analysis parts


def _finite_rows(Z: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.isfinite(Z).all(axis=1) & np.isfinite(X).all(axis=1)


def _correlations(Z, morph: pd.DataFrame, extra: pd.DataFrame, dim_names, config, notes):
    from drlcore.analysis.correlation import latent_feature_correlation

    features = pd.concat([morph, extra], axis=1)
    numeric = [c for c in features.columns
               if pd.api.types.is_numeric_dtype(features[c]) and features[c].dtype != bool]
    usable = [c for c in numeric if features[c].notna().sum() >= 4]
    if len(Z) < 4 or not usable:
        if len(Z) < 4:
            notes.append("fewer than 4 images: no latent-morphology correlations")
        return pd.DataFrame(columns=CORRELATION_COLUMNS)
    return latent_feature_correlation(Z, features[usable], dim_names=dim_names,
                                      n_boot=config.n_boot, seed=config.seed)


def _classification(Z, X, labels, split, finite, config, notes, side=None) -> dict:
    if labels is None:
        notes.append("the images have no class labels: no classification")
        return {}
    y = labels[finite]
    if pd.Series(y).nunique() < 2:
        notes.append("only one class: classification needs at least two")
        return {}
    s = split[finite] if split is not None else None
    out = {"latent": classify_cached(Z[finite], y, s, config.seed, config.cache_dir)}
    if side is not None:
        side.wait(RAW_CLASSIFICATION)  # it fills the cache read below
    out["features"] = classify_cached(X[finite], y, s, config.seed, config.cache_dir,
                                      config.raw_feature_models)
    return out


CLASSIFICATION_CACHE_VERSION = 1
RAW_CLASSIFICATION = "classification of the raw features"
_UMAP = "umap map"


def classify_cached(X, y, split, seed: int, cache_dir: str | None,
                    models: tuple[str, ...] | None = None) -> dict:
    """:func:`drlcore.analysis.classify.evaluate_classifiers` of ``X``, served from a content-keyed
    cache when the same rows, labels, split and seed were classified before (the raw features of
    a run are classified again by every analysis of it, and ahead of it by the pipeline)."""
    import sklearn

    from drlcore.analysis.classify import MODELS, evaluate_classifiers
    from drlcore.io import read_json, atomic_write_json

    models = tuple(models or MODELS)
    X = np.asarray(X, np.float64)
    key = fingerprint(["classification", CLASSIFICATION_CACHE_VERSION, sklearn.__version__,
                       list(X.shape), scale.sha256_array(X),
                       sha256_bytes("\n".join(map(str, y)).encode()),
                       None if split is None else sha256_bytes("\n".join(map(str, split)).encode()),
                       int(seed), list(models)])
    store = ContentStore(cache_root(cache_dir) / "classification")
    entry = store.get(key)
    if entry is not None:
        try:
            return read_json(entry / "result.json")
        except (OSError, ValueError):
            store.discard(key)
    result = evaluate_classifiers(X, y, split=split, seed=seed, models=models)
    try:
        store.put(key, lambda folder: atomic_write_json(folder / "result.json", result))
    except OSError:  # a read-only cache only costs the fits next time
        pass
    return result


def classify_features_ahead(features_dir: str | Path, config: AnalyzeConfig) -> None:
    """Classify a features folder's raw features into the cache, as the analysis of a run made
    from it will (same rows, labels and split), so that part is ready when the analysis
    starts. Run by the pipeline in a spare process while the transfer trains."""
    from drlcore.data.rundir import load_features_dir

    X, images, _ = load_features_dir(features_dir)
    X = np.asarray(X, np.float64)
    images = images.reset_index(drop=True)
    labels = _labels(images)
    if labels is None:
        return
    finite = np.isfinite(X).all(axis=1)
    _, rows = _samples(finite, labels, config, [])
    use = rows["classification"]
    if pd.Series(labels[use]).nunique() < 2:
        return
    split = _split(images)
    classify_cached(X[use], labels[use], split[use] if split is not None else None,
                    config.seed, config.cache_dir, config.raw_feature_models)


def warm_up_umap(seed: int = 0) -> None:
    """Compile umap-learn's numba functions in this process by mapping a small random sample
    (about 8 s on one core; a process that maps later finds them ready)."""
    X = np.random.default_rng(seed).normal(size=(64, 4))
    _make_projector("umap", seed).fit(X)


def _umap_ahead(Z: np.ndarray, seed: int, cache_dir: str | None) -> None:
    from drlcore.analysis import projection

    projection.fit_cached(_make_projector("umap", seed), Z, cache_root(cache_dir) / "projections")


def _anomalies(Z, objects, labels, finite, config, notes, holdout_rows=None):
    """Anomaly columns for every object, and their summary. The hold-one-class-out evaluation
    uses ``holdout_rows`` (a mask; the classification sample above the threshold)."""
    from drlcore.analysis import anomaly

    cols: dict[str, np.ndarray] = {}
    summary: dict = {}
    if labels is not None and config.known_classes:
        missing = sorted(set(config.known_classes) - set(pd.unique(labels)))
        if missing:
            notes.append(f"known classes not found in the data: {missing}")
        known = np.isin(labels, list(config.known_classes)) & finite
    else:
        known = finite.copy()
    if known.sum() < 3:
        notes.append("fewer than 3 known objects: no anomaly scores")
        return cols, summary

    method = anomaly.knn_method(int(known.sum()))
    cols.update(anomaly.score_against_known(
        Z, known, labels=labels,
        recon_error=objects["recon_error"].to_numpy(float) if "recon_error" in objects else None,
        k=config.knn_k, knn=method, seed=config.seed))
    summary["known_classes"] = (list(config.known_classes) if config.known_classes else None)
    summary["n_known"] = int(known.sum())
    summary["knn"] = {"k": int(config.knn_k), "method": method,
                      "index": "pynndescent" if method == "approximate" else "scikit-learn"}
    if method == "approximate":
        notes.append(f"{int(known.sum())} known objects: the kNN anomaly score uses approximate "
                     f"nearest neighbours (pynndescent, seed {config.seed}); exact up to "
                     f"{scale.KNN_EXACT_MAX}")
    if labels is not None and (finite & ~known).any():
        is_unknown = ~known[finite]
        summary["known_vs_rest"] = {
            name: anomaly.open_set_evaluation(cols[name][finite], is_unknown)
            for name in ("anomaly_knn", "anomaly_mahalanobis", "anomaly_score")}
    held = finite if holdout_rows is None else (np.asarray(holdout_rows, bool) & finite)
    if labels is not None and pd.Series(labels[held]).nunique() >= 3:
        summary["holdout_each_class"] = anomaly.holdout_each_class(
            Z[held], labels[held], seed=config.seed)
    elif labels is not None:
        notes.append("fewer than 3 classes: no hold-one-class-out open-set evaluation")
    return cols, summary


def _make_projector(name: str, seed: int):
    from drlcore.analysis import projection

    if name == "pca":
        return projection.PCAProjector()
    if name == "umap":
        return projection.UMAPProjector(random_state=seed)
    raise DrlError(f"unknown map {name!r}: use 'pca' or 'umap'")


def project_onto(reference_dir: str | Path, other_dir: str | Path, name: str = "umap") -> np.ndarray:
    """Coordinates of ``other_dir``'s objects on ``reference_dir``'s ``name`` map (n_other, 2).

    The reference map is refitted from the cache exactly as ``drl analyze`` fitted it, then new
    objects are placed with ``transform``, so they land among the reference objects they resemble.
    Only meaningful when both runs were encoded by the same model (same latent axes); anything
    else is refused with what to do instead. Rows with non-finite codes get NaN.
    """
    reference_dir, other_dir = Path(reference_dir), Path(other_dir)
    hashes = [rundir.model_hash(run) for run in (reference_dir, other_dir)]
    if not hashes[0] or hashes[0] != hashes[1]:
        raise DrlError(
            f"{other_dir.name} was encoded by another model than {reference_dir.name} "
            f"({str(hashes[1])[:12]} vs {str(hashes[0])[:12]}), so its latent axes are different "
            f"axes and it cannot be placed on this map. Encode the new images with the reference "
            f"model: drl encode {reference_dir / rundir.MODEL} NEW_IMAGES --out NEW_RUN")
    analysis = rundir.read_analysis(reference_dir)
    if not analysis:
        raise DrlError(f"{reference_dir.name} has not been analysed, so it has no map to place "
                       f"objects on: run `drl analyze {reference_dir}` first")
    config = AnalyzeConfig.from_dict(analysis.get("config", {}))
    ref = rundir.read_table(reference_dir, rundir.OBJECTS)
    other = rundir.read_table(other_dir, rundir.OBJECTS)
    Z_ref = ref[rundir.latent_columns(ref.columns)].to_numpy(np.float64)
    Z_other = other[rundir.latent_columns(other.columns)].to_numpy(np.float64)
    X_ref = rundir.load_features(reference_dir)
    finite_ref = _finite_rows(Z_ref, X_ref)
    # A large reference's UMAP map was fitted on a sample: refit exactly that one.
    _, rows = _samples(finite_ref, _labels(ref), config, [])
    sample = _fit_sample(finite_ref, rows["umap_fit"]) if name == "umap" else None
    Z_ref = Z_ref[finite_ref]
    if sample is not None:
        Z_ref = Z_ref[sample]
    from drlcore.analysis import projection

    projector = _make_projector(name, config.seed)
    projection.fit_cached(projector, Z_ref, cache_root(config.cache_dir) / "projections")
    finite = np.isfinite(Z_other).all(axis=1)
    coords = np.full((len(Z_other), 2), np.nan)
    if finite.any():
        coords[finite] = projector.transform(Z_other[finite])
    return coords


def spare_process_pays(n_objects: int) -> bool:
    """Whether a spare process for parts of the analysis is worth starting at all: a run of
    some size, on a machine with a second core."""
    return n_objects >= PARALLEL_ANALYSIS_MIN and available_cores() >= 2


def _side_process_pays(config: AnalyzeConfig, n_objects: int) -> bool:
    """Whether an analysis of its own should start a spare process: where one pays at all, and
    the UMAP map would otherwise be compiled here (its compilation, ~8 s, is what the spare
    process mainly takes off the main one)."""
    from drlcore.analysis.projection import umap_compiled_here

    return spare_process_pays(n_objects) and config.umap and not umap_compiled_here()


def _start_side_parts(side, Z, X, labels, split, finite, rows, config) -> None:
    """Hand the spare process the parts it can do alone: the UMAP map first (the main process
    reaches it last; not where this process has its code compiled already), then the raw
    features' classifiers, unless the pipeline started them."""
    from drlcore.analysis.projection import umap_compiled_here

    if config.umap and not umap_compiled_here() and _fit_sample(finite, rows["umap_fit"]) is None \
            and finite.sum() >= max(MIN_OBJECTS_FOR_UMAP, MIN_OBJECTS_FOR_MAPS):
        side.start(_UMAP, _umap_ahead, Z[finite], config.seed, config.cache_dir)
    use = rows["classification"]
    if config.classify and labels is not None and X.shape[1] and pd.Series(labels[use]).nunique() > 1:
        side.start(RAW_CLASSIFICATION, classify_cached, X[use], labels[use],
                   split[use] if split is not None else None, config.seed, config.cache_dir,
                   config.raw_feature_models)


def _projections(Z, finite, config, notes, fit_rows=None, side=None) -> tuple[dict, dict]:
    """PCA and UMAP maps of the finite rows. ``fit_rows`` (a boolean mask inside ``finite``):
    when it leaves rows out, UMAP is fitted on those rows only and the others are placed with
    ``transform`` (:func:`drlcore.analysis.projection.map_from_sample`); PCA always uses every row."""
    from drlcore.analysis import projection

    n = len(Z)
    cols: dict[str, np.ndarray] = {}
    summary: dict = {}
    Zf = Z[finite]
    if len(Zf) < MIN_OBJECTS_FOR_MAPS:
        notes.append(f"fewer than {MIN_OBJECTS_FOR_MAPS} usable objects: no 2-D maps")
        return cols, summary
    # Identical images can encode a few ulps apart (batched float maths); standardising that
    # noise would draw a map of nothing, so "constant" allows for it.
    if np.ptp(Zf, axis=0).max() <= 1e-6 * max(1.0, float(np.abs(Zf).max())):
        notes.append("all objects have the same latent code (constant images?): no 2-D maps")
        return cols, summary
    cache = cache_root(config.cache_dir) / "projections"
    names = ["pca"]
    if config.umap:
        if len(Zf) >= MIN_OBJECTS_FOR_UMAP:
            names.append("umap")
        else:
            notes.append(f"fewer than {MIN_OBJECTS_FOR_UMAP} objects: PCA map only, no UMAP")
    sample = _fit_sample(finite, fit_rows)
    for name in names:
        projector = _make_projector(name, config.seed)
        try:
            if name == "umap" and sample is not None:
                coords = projection.map_from_sample(projector, Zf, sample, cache,
                                                    chunk_size=scale.MAP_TRANSFORM_CHUNK)
            else:
                if name == "umap" and side is not None:
                    side.wait(_UMAP)  # it fills the cache read below
                coords = projection.fit_cached(projector, Zf, cache)
        except Exception as err:  # a map that cannot be made must not sink the analysis
            notes.append(f"{name.upper()} map could not be computed: {err}")
            continue
        full = np.full((n, 2), np.nan)
        full[finite] = coords
        cols[f"{name}_x"], cols[f"{name}_y"] = full[:, 0], full[:, 1]
        summary[name] = {"trustworthiness": float(projection.trustworthiness(Zf, coords))}
        if name == "umap" and sample is not None:
            summary[name]["fitted_on"] = int(len(sample))
    return cols, summary


def _fit_sample(finite: np.ndarray, fit_rows) -> np.ndarray | None:
    """Positions among the finite rows that the UMAP map is fitted on; None for all of them."""
    if fit_rows is None:
        return None
    inside = np.asarray(fit_rows, bool)[finite]
    return None if inside.all() else np.flatnonzero(inside)


# --------------------------------------------------------------------------- the stage


SAMPLED_PARTS = ("correlations", "classification", "umap_fit")


def _samples(finite, labels, config, notes) -> tuple[dict, dict[str, np.ndarray]]:
    """Rows each sampled part uses (boolean masks by part, :data:`SAMPLED_PARTS`): all finite
    rows up to ``scale.ANALYZE_FULL_MAX`` objects, a stated, seeded, stratified sample above it
    (the open-set hold-out evaluation uses the classification sample)."""
    n = len(finite)
    if n <= scale.ANALYZE_FULL_MAX:
        return {}, {part: finite for part in SAMPLED_PARTS}
    fidx = np.flatnonzero(finite)
    strata = labels[fidx] if labels is not None else None
    masks = {}
    for part, size in zip(SAMPLED_PARTS, (scale.CORRELATION_SAMPLE, scale.CLASSIFICATION_SAMPLE,
                                          scale.UMAP_FIT_SAMPLE)):
        mask = np.zeros(n, bool)
        mask[fidx[scale.stratified_sample(len(fidx), size, strata, seed=config.seed)]] = True
        masks[part] = mask
    samples = {"n_objects": int(n), **{part: int(m.sum()) for part, m in masks.items()}}
    how = "stratified by label" if labels is not None else "uniform"
    notes.append(f"{n} objects: latent-morphology correlations use a {how} sample of "
                 f"{samples['correlations']}, classification and the open-set hold-out one of "
                 f"{samples['classification']}, and the UMAP map is fitted on one of "
                 f"{samples['umap_fit']} with every other object placed on it (transform) "
                 f"(seed {config.seed}); the PCA map and the anomaly scores cover every object")
    return samples, masks


def _split(table: pd.DataFrame) -> np.ndarray | None:
    """The dataset's own train/test split when every object has one, else None."""
    if "split" in table and table["split"].notna().all():
        return table["split"].to_numpy(object)
    return None


def _labels(table: pd.DataFrame) -> np.ndarray | None:
    """The class labels when every object has one, else None (analysed as unlabelled)."""
    if "label" in table and table["label"].notna().all():
        return table["label"].to_numpy(object)
    return None


def _analysis_key(run_dir: Path, objects: pd.DataFrame, Z: np.ndarray, X: np.ndarray,
                  config: AnalyzeConfig, extra_notes: list[str]) -> str:
    meta = objects[[c for c in ("path", "label", "split", "sha256") if c in objects]]
    # Hashed in chunks (same value as hashing the whole buffer): X may be memory-mapped.
    return fingerprint(["analysis", ANALYSIS_VERSION, scale.sha256_array(Z),
                        scale.sha256_array(X),
                        pd.util.hash_pandas_object(meta, index=False).sum().item(),
                        dataclasses.asdict(config), extra_notes])


def analyze_run(run_dir: str | Path, config: AnalyzeConfig | None = None,
                reporter: Reporter | None = None, side=None) -> dict:
    """Analyse an encoded run in place; returns the ``summary`` part of ``analysis.json``.

    Notes left by earlier stages in the manifest's ``pipeline`` entry (e.g. "too few images to
    fine-tune") are carried into the analysis notes.

    ``side`` (:class:`drlcore.workers.SideTasks`): a spare process that computes the UMAP map and
    the raw features' classifiers into the caches while this process does the rest (the
    pipeline passes the one that started on them during the transfer). Without one, a run of at
    least ``PARALLEL_ANALYSIS_MIN`` objects on a machine with a second core gets its own. The
    answers are the same either way.
    """
    run_dir = Path(run_dir)
    config = config or AnalyzeConfig()
    reporter = reporter or NullReporter()
    objects_path = run_dir / rundir.OBJECTS
    if not objects_path.is_file():
        raise DrlError(f"{run_dir} has no {rundir.OBJECTS}: encode the data first "
                       f"(`drl encode MODEL_DIR DATA --out {run_dir}` or `drl run`)")
    manifest = rundir.read_manifest(run_dir)
    objects = rundir.read_table(run_dir, rundir.OBJECTS, manifest)
    # Columns from a previous analysis are recomputed, never mixed with the new ones.
    base = objects[[c for c in objects.columns if not c.startswith(
        ("morph_", "pca_", "umap_", "anomaly_", "z_score_"))]].copy()
    zcols = rundir.latent_columns(base.columns)
    if not zcols:
        raise DrlError(f"{objects_path} has no latent columns (z_mean_*): re-encode the run")
    Z = base[zcols].to_numpy(np.float64)
    features_path = run_dir / rundir.FEATURES
    X = (rundir.load_features(run_dir, manifest) if features_path.is_file()
         else np.zeros((len(base), 0)))
    if len(X) != len(base):
        raise DrlError(f"{rundir.FEATURES} has {len(X)} rows but {rundir.OBJECTS} has {len(base)}: "
                       f"the run folder is inconsistent; rerun `drl run`")

    extra_notes = rundir.pipeline_notes(run_dir)
    key = _analysis_key(run_dir, base, Z, X, config, extra_notes)
    stage = {"key": key, "version": ANALYSIS_VERSION}
    try:
        old = rundir.read_analysis(run_dir)
    except DrlError:
        old = {}  # a damaged analysis is simply recomputed
    # Up to date only when the table still holds the analysis: `drl encode` (and so a cached
    # rerun of `drl run`) rewrites objects.parquet without the analysis columns, which a
    # matching key alone took for "nothing to do" (52 -> 16 columns after a rerun, in the app
    # no maps or morphology). Damaged analysis files fail their check when read.
    analysed = len(objects.columns) > len(base.columns) and (run_dir / rundir.CORRELATIONS).is_file()
    if old.get("key") == key and analysed:
        rundir.verify_file(run_dir, rundir.CORRELATIONS, manifest)
        reporter.message("analysis: up to date")
        # Recorded even so: a rerun whose earlier stages rewrote the manifest keeps it.
        if rundir.stage_entry(run_dir, "analyze") != stage:
            rundir.record_stage(run_dir, "analyze", stage)
        return old.get("summary", {})

    with contextlib.ExitStack() as stack:
        if side is None and _side_process_pays(config, len(base)):
            side = SideTasks(stack.enter_context(WorkerPool(1, finish_on_exit=False)))
        return _analyze(run_dir, config, reporter, side, base, Z, X, key, stage, extra_notes)


def _analyze(run_dir, config, reporter, side, base, Z, X, key, stage, extra_notes) -> dict:
    t0 = time.perf_counter()
    notes: list[str] = list(extra_notes)
    finite = _finite_rows(Z, X)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} object(s) have non-finite (NaN/inf) features or "
                     f"latents and were left out of maps, scores and models")
    labels = _labels(base)
    if "label" in base and labels is None and base["label"].notna().any():
        notes.append("some images have no label: analysing as unlabelled")
    split = _split(base)
    dim_names = rundir.dim_names(run_dir, Z.shape[1])
    if len(base) < 2:
        notes.append("only one image: nothing to compare it with, so no correlations, maps, "
                     "classification or anomaly scores")

    samples, rows = _samples(finite, labels, config, notes)
    corr_rows, class_rows = rows["correlations"], rows["classification"]
    if side is not None:
        _start_side_parts(side, Z, X, labels, split, finite, rows, config)

    with reporter.stage("analysis", total=5, unit="part") as bar:
        morph = _morphology(base, run_dir, config, reporter, notes)
        bar.update(1)
        extra = base[[c for c in base.columns if c.startswith("factor_")]]
        corr = _correlations(Z[corr_rows], morph[corr_rows].reset_index(drop=True),
                             extra[corr_rows].reset_index(drop=True), dim_names, config, notes)
        bar.update(1)
        classification = (_classification(Z, X, labels, split, class_rows, config, notes, side)
                          if config.classify else {})
        bar.update(1)
        anomaly_cols, anomaly_summary = _anomalies(Z, base, labels, finite, config, notes,
                                                   holdout_rows=class_rows)
        bar.update(1)
        proj_cols, proj_summary = _projections(Z, finite, config, notes,
                                               fit_rows=rows["umap_fit"], side=side)
        bar.update(1)

    source_dim_names = dim_names
    axes, dim_names = _name_axes(run_dir, corr, source_dim_names)
    if len(corr):
        corr["dim_name"] = [dim_names[int(d)] for d in corr["dim"]]
    card = _axis_card(run_dir, Z, X, morph, axes, finite, notes)
    new_cols = pd.concat([morph, pd.DataFrame({**proj_cols, **anomaly_cols},
                                              index=morph.index)], axis=1)
    result = pd.concat([base.reset_index(drop=True), new_cols], axis=1)
    summary = _summary(classification, anomaly_summary, proj_summary, corr, axes, notes)
    analysis = {
        "schema_version": 1,
        "key": key,
        "config": dataclasses.asdict(config),
        "n_objects": len(base),
        "dim_names": dim_names,
        "source_dim_names": source_dim_names,
        "axes": axes,
        "axis_card": card,
        "classification": classification,
        "anomaly": anomaly_summary,
        "projections": proj_summary,
        "notes": notes,
        **({"samples": samples} if samples else {}),
        "summary": summary,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    rundir.write_analysis(run_dir, corr, result, analysis)
    rundir.record_stage(run_dir, "analyze", stage)
    rundir.record_files(run_dir, "analyze", [rundir.CORRELATIONS, rundir.OBJECTS, rundir.ANALYSIS])
    return summary


def _name_axes(run_dir: Path, corr: pd.DataFrame, source_names: list[str]):
    """Per-axis naming records and display names from the run's own correlations
    (:mod:`drlcore.analysis.naming`); the model's source names stay as provenance."""
    from drlcore.analysis.naming import name_axes

    model = rundir.model_config(run_dir)
    factors = model.get("dim_factor")
    axes = name_axes(corr, source_names, inactive=model.get("inactive_dims") or [],
                     source_factors=factors if isinstance(factors, list) else None)
    return axes, [a["name"] for a in axes]


def _axis_card(run_dir: Path, Z, X, morph: pd.DataFrame, axes: list[dict], finite: np.ndarray,
                notes: list[str]) -> dict:
    """Every axis against the best PCA axis and the ridge ceiling for its measure
    (:func:`drlcore.analysis.axis_card.axis_card`), on the images the transfer held out where it
    held some out, else on all images; plus the pipeline's choice of anchors and free axes."""
    from drlcore.analysis import axis_card

    t0 = time.perf_counter()
    metrics = rundir.model_metrics(run_dir)
    model = rundir.model_config(run_dir)
    anchored = (model.get("extra") or {}).get("anchored") or []
    anchors = [str(f).removeprefix("anchor:") for f in (model.get("dim_factor") or [])
               if str(f).startswith("anchor:")]
    anchors = [a if a.startswith("morph_") else f"morph_{a}" for a in anchors]
    if len(anchors) != sum(bool(a) for a in anchored):
        anchors = []
    held = (metrics.get("anchor_heldout") or {}).get("rows")
    idx = np.flatnonzero(finite)
    if held and len(held) >= 4 and max(held) < len(Z):
        rows = np.intersect1d(np.asarray(held, int), idx)
        label = f"{len(rows)} images held out of fine-tuning"
    else:
        rows = idx
        label = "all images (the transfer held none out)"
    Xf = np.asarray(X, np.float64)
    if Xf.shape[1] == 0 or len(idx) < 10 or "morph_ok" not in morph:
        return {"rows": label, "axes": [], "choice": rundir.stage_entry(run_dir, "pipeline")
                .get("axes"), "seconds": 0.0}
    # Fitted on the finite rows only, then mapped back to run row numbers.
    pos = np.full(len(Z), -1)
    pos[idx] = np.arange(len(idx))
    try:
        card = axis_card.axis_card(Z[idx], Xf[idx], morph.iloc[idx].reset_index(drop=True), axes,
                                   anchors=anchors, rows=pos[rows], rows_label=label)
    except (np.linalg.LinAlgError, ValueError) as err:
        notes.append(f"the axis card could not be computed ({err})")
        card = []
    return {"rows": label, "axes": card,
            "choice": rundir.stage_entry(run_dir, "pipeline").get("axes"),
            "statistic": "spearman",
            "baselines": ("best single axis of the first J principal components of the "
                          "standardised raw features (J = number of latent axes); ceiling: "
                          "5-fold ridge read-out of the raw features (out-of-fold)"),
            "seconds": round(time.perf_counter() - t0, 2)}


def _summary(classification, anomaly_summary, proj_summary, corr, axes, notes) -> dict:
    """The few numbers a person reads first, as printed by the CLI."""
    lines = []
    for rep, what in (("latent", "latent means"), ("features", "raw features")):
        result = classification.get(rep, {})
        for model, res in result.get("models", {}).items():
            if isinstance(res, dict) and "balanced_accuracy" in res:
                lines.append(f"classification, {model.upper()} on {what}: balanced accuracy "
                             f"{res['balanced_accuracy']:.3f} (chance "
                             f"{result['chance']['balanced_accuracy']:.3f})")
    hold = anomaly_summary.get("holdout_each_class")
    if hold and "mean_auroc" in hold:
        lines.append(f"open-set AUROC, each class held out: mean {hold['mean_auroc']:.3f}, "
                     f"worst {hold['worst_auroc']:.3f} ({hold.get('worst_class')})")
    from drlcore.analysis.naming import best_family_axes

    named = [a["name"] for a in axes if a["status"] == "named"]
    if axes:
        # A 36-axis run lists its named axes, not 32 "(unnamed)" ones after them.
        others: dict[str, int] = {}
        for axis in axes:
            if axis["status"] != "named":
                others[axis["status"]] = others.get(axis["status"], 0) + 1
        listed = "; ".join(filter(None, [", ".join(named)] + [f"{n} {status}" for status, n
                                                               in others.items()]))
        lines.append(f"axes named from this data: {len(named)} of {len(axes)} ({listed})")
    best = best_family_axes(corr, axes, families=("size", "colour", "intensity"))
    for family, top in best.items():
        ci = (f" [{top['ci_low']:.2f}, {top['ci_high']:.2f}]"
              if top["ci_low"] is not None and top["ci_high"] is not None else "")
        lines.append(f"best {family} axis: {top['name']}, {top['feature'][6:].replace('_', ' ')} "
                     f"Spearman r={top['r']:.2f}{ci}")
    for name, res in proj_summary.items():
        lines.append(f"{name.upper()} map trustworthiness: {res['trustworthiness']:.3f}")
    return {"headline": lines, "best_correlations": best, "notes": notes}


# Morphology of a features folder before any model exists: the pipeline measures it to choose and
# feed the anchored axes (disentangle/ sits below analysis/, so it is handed arrays, never this).
def measure_morphology(features_dir: str | Path, cache_dir: str | None = None,
                       reporter: Reporter | None = None, mask_channel: str | None = None):
    """The whole morphology table of a features folder's images (row order of the features),
    through the analysis stage's per-image cache, so the analysis later reuses it."""
    from drlcore.data.rundir import load_features_dir

    _, images, _ = load_features_dir(features_dir)
    return _morphology(images.reset_index(drop=True), Path(features_dir),
                       AnalyzeConfig(cache_dir=cache_dir, mask_channel=mask_channel), reporter or NullReporter(), [])


def measure_anchor_values(features_dir: str | Path, anchors: tuple[str, ...],
                          cache_dir: str | None = None, reporter: Reporter | None = None,
                          mask_channel: str | None = None) -> dict[str, np.ndarray]:
    """Morphology of every image of a features folder (decoded exactly as the features stage did,
    through the analysis stage's per-image morphology cache, so analyze later reuses it); NaN
    where segmentation failed."""
    from drlcore.analysis.axis_card import measured_values

    morph = measure_morphology(features_dir, cache_dir, reporter, mask_channel)
    return {name: measured_values(morph, name) for name in anchors}
