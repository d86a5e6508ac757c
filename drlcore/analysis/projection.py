"""2-D maps of latent codes: PCA and UMAP reducers, their trustworthiness, and a content cache.

Both projectors standardise each input dimension with the mean and standard deviation learned at
``fit`` (latent axes with very different spreads would otherwise let one axis shape the map), and
follow scikit-learn's ``fit`` / ``transform`` / ``fit_transform`` with learned state ending in
``_``. ``UMAPProjector.transform`` places new objects on the existing map (umap-learn's
``transform``), so the explorer can show where a new image lands among the reference ones.

Caching (``fit_cached``), keyed by the data's bytes, the parameters and library versions:

- PCA is stored without pickle: the standardisation and the components in ``state.npz`` plus
  ``meta.json``; a cache hit restores a fully working projector.
- UMAP's fitted model (a k-NN graph plus numba search structures) cannot be saved without pickle,
  which this project never uses. We store the embedding of the reference set only: a hit returns
  the map instantly, and the model is refitted (same data, same seed) only the first time new data
  must be ``transform``-ed. The trade-off: the first transform after a hit pays one full fit. The
  refit is checked against the cached embedding; should it differ (another numba/umap build), the
  refitted map is adopted and ``note_`` says so, so new points are never placed on a map other
  than the one returned.

Large runs (``map_from_sample``): the projector is fitted on a stated sample of the rows (through
``fit_cached``, so the fit is the one ``transform`` later places new objects on), and every other
row is placed on that map with ``transform``, a chunk at a time (bounded memory). New points
never pull on each other, but umap-learn draws its negative samples from one seeded stream per
call, so the coordinates depend on the chunking: the whole map is cached under a key of all the
rows, the sample and the chunk size.

UMAP's first fit in a process also pays numba's JIT compilation (several seconds, measured in
the project report), on top of the fit itself; later fits in the same process do not.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from drlcore.errors import DrlError
from drlcore.validation import as_finite_matrix
from drlcore.io import (
    atomic_open,
    atomic_save_npy,
    atomic_write_json,
    fingerprint,
    read_json,
    sha256_bytes,
)

__all__ = [
    "PCAProjector",
    "UMAPProjector",
    "trustworthiness",
    "fit_cached",
    "map_from_sample",
    "PROJECTION_CACHE_VERSION",
]

PROJECTION_CACHE_VERSION = 1
# sklearn's trustworthiness is O(n^2) in memory and time; above this many points a fixed
# subsample estimates it well.
TRUSTWORTHINESS_MAX_POINTS = 3000


class _Standardising:
    """Shared standardisation: learned at fit, applied in transform."""

    def _learn_scaling(self, X: np.ndarray) -> np.ndarray:
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        # A constant dimension carries no information; scale 1 keeps it at 0 instead of NaN.
        self.scale_ = np.where(scale > 0, scale, 1.0)
        return (X - self.mean_) / self.scale_

    def _scale(self, X) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise DrlError(f"{type(self).__name__} is not fitted; call fit() first")
        X = as_finite_matrix(X, n_features=self.n_features_in_)
        return (X - self.mean_) / self.scale_

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)


class PCAProjector(_Standardising):
    """Principal components of the standardised inputs."""

    def __init__(self, n_components: int = 2):
        self.n_components = n_components

    def get_params(self) -> dict:
        return {"n_components": self.n_components}

    def fit(self, X) -> PCAProjector:
        from sklearn.decomposition import PCA

        X = as_finite_matrix(X)
        if X.shape[0] < 2:
            raise DrlError("a PCA map needs at least 2 objects")
        if self.n_components > min(X.shape):
            raise DrlError(f"cannot take {self.n_components} components from data of shape "
                           f"{X.shape}")
        pca = PCA(n_components=self.n_components, svd_solver="full").fit(self._learn_scaling(X))
        self.components_ = pca.components_
        self.center_ = pca.mean_  # ~0 after standardising; kept for exactness
        self.explained_variance_ = pca.explained_variance_
        self.explained_variance_ratio_ = pca.explained_variance_ratio_
        return self

    def transform(self, X) -> np.ndarray:
        return (self._scale(X) - self.center_) @ self.components_.T

    def _state(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in
                ("mean_", "scale_", "components_", "center_", "explained_variance_",
                 "explained_variance_ratio_")}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.n_features_in_ = self.mean_.shape[0]


# Standardised units: identical images encode a few ulps apart (batched float maths).
SAME_POINT_TOLERANCE = 1e-5

# Set once this process has fitted a UMAP map: umap-learn's numba code is compiled here from then
# on (about 8 s the first time in every process), so a later map costs seconds in this process
# and is not worth handing to a fresh worker process, which would compile it again.
_umap_compiled_here = False


def umap_compiled_here() -> bool:
    """Whether this process has already fitted a UMAP map (its numba code is compiled)."""
    return _umap_compiled_here


@functools.lru_cache(maxsize=1)
def import_umap():
    """umap-learn, with numba's on-disk cache switched on for its compiled functions and those
    of pynndescent, which it uses for neighbours above 4,096 objects
    (:mod:`drlcore.analysis.numba_cache`: a fresh process's first map ~10 s -> 0.1 s)."""
    import umap  # heavy import (numba); only when a UMAP map is wanted

    from drlcore.analysis.numba_cache import (UMAP_MODULES, cache_compiled_functions,
                                              import_pynndescent)

    import_pynndescent()
    cache_compiled_functions(UMAP_MODULES)
    return umap


class UMAPProjector(_Standardising):
    """UMAP map of the standardised inputs; ``transform`` places new data on the same map.

    ``n_neighbors`` is capped at ``n_objects - 1`` for small sets. Single-threaded (a fixed
    ``random_state`` makes umap-learn deterministic only then).
    """

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, random_state: int = 0,
                 n_components: int = 2, metric: str = "euclidean"):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state
        self.n_components = n_components
        self.metric = metric

    def get_params(self) -> dict:
        return {"n_neighbors": self.n_neighbors, "min_dist": self.min_dist,
                "random_state": self.random_state, "n_components": self.n_components,
                "metric": self.metric}

    def _make_reducer(self, n_samples: int):
        umap = import_umap()
        return umap.UMAP(n_neighbors=min(self.n_neighbors, n_samples - 1),
                         min_dist=self.min_dist, n_components=self.n_components,
                         metric=self.metric, random_state=self.random_state, n_jobs=1)

    def fit(self, X) -> UMAPProjector:
        X = as_finite_matrix(X)
        if X.shape[0] < max(4, self.n_components + 2):
            raise DrlError(f"a UMAP map needs at least {max(4, self.n_components + 2)} objects, "
                           f"got {X.shape[0]}")
        global _umap_compiled_here
        scaled = self._learn_scaling(X)
        self.reducer_ = self._make_reducer(X.shape[0]).fit(scaled)
        _umap_compiled_here = True
        self.embedding_ = np.asarray(self.reducer_.embedding_, dtype=np.float64)
        self.note_ = None
        self._reference = None
        return self

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).embedding_.copy()

    def transform(self, X) -> np.ndarray:
        scaled = self._scale(X)
        if getattr(self, "reducer_", None) is None:
            self._refit_from_reference()
        coords = np.asarray(self.reducer_.transform(scaled), dtype=np.float64)
        # umap-learn's transform re-optimises every new point, so an object that is already on
        # the map (the same image encoded again) can land beside itself, even off the map on a
        # small one. Such points take their reference point's place, so a map reads the same.
        from sklearn.neighbors import NearestNeighbors

        reference = np.asarray(self.reducer_._raw_data, dtype=np.float64)
        distance, index = NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(scaled)
        same = distance[:, 0] <= SAME_POINT_TOLERANCE
        coords[same] = self.embedding_[index[same, 0]]
        return coords

    def _refit_from_reference(self) -> None:
        """After a cache hit only the embedding is known: refit on the reference data."""
        if self._reference is None:
            raise DrlError("this UMAP map was restored from the cache without its reference "
                           "data; fit it again before transforming new data")
        reference = (self._reference - self.mean_) / self.scale_
        self.reducer_ = self._make_reducer(reference.shape[0]).fit(reference)
        refitted = np.asarray(self.reducer_.embedding_, dtype=np.float64)
        if not np.allclose(refitted, self.embedding_, atol=1e-4):
            self.note_ = ("the cached UMAP map could not be reproduced exactly (different "
                          "umap/numba build?); the refitted map is used from here on")
            self.embedding_ = refitted


def trustworthiness(X_high, X_low, n_neighbors: int = 10,
                    max_points: int = TRUSTWORTHINESS_MAX_POINTS, seed: int = 0) -> float:
    """How well the map keeps each point's high-dimensional neighbours (1 = perfectly).

    sklearn's ``trustworthiness`` penalises points that are neighbours on the map but not in the
    original space. Above ``max_points`` a fixed (``seed``) subsample is used, for speed. NaN when
    there are too few points for ``n_neighbors`` (``n_neighbors`` must be < n / 2).
    """
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    X_high = as_finite_matrix(X_high, "X_high")
    X_low = as_finite_matrix(X_low, "X_low")
    if X_high.shape[0] != X_low.shape[0]:
        raise DrlError(f"{X_high.shape[0]} high-dimensional points but {X_low.shape[0]} mapped")
    n = X_high.shape[0]
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        X_high, X_low, n = X_high[rows], X_low[rows], max_points
    k = min(n_neighbors, (n - 1) // 2)
    if k < 1:
        return float("nan")
    return float(sk_trustworthiness(X_high, X_low, n_neighbors=k))


def _versions() -> dict:
    import sklearn

    versions = {"sklearn": sklearn.__version__}
    try:
        from importlib.metadata import version

        versions["umap"] = version("umap-learn")
        versions["numba"] = version("numba")
    except Exception:  # noqa: BLE001 - umap absent only matters for UMAP, which then fails loudly
        pass
    return versions


def _cache_key(projector, X: np.ndarray) -> str:
    data = np.ascontiguousarray(X, dtype=np.float64)
    return fingerprint(["projection", PROJECTION_CACHE_VERSION, type(projector).__name__,
                        projector.get_params(), list(data.shape), sha256_bytes(data.tobytes()),
                        _versions()])


def fit_cached(projector: PCAProjector | UMAPProjector, X,
               cache_dir: str | os.PathLike) -> np.ndarray:
    """Fit ``projector`` on ``X`` (in place) and return the map of ``X``, reusing a cached fit.

    The cache is a :class:`drlcore.data.cache.ContentStore` in ``cache_dir``: one entry per key, which
    appears complete or not at all. A damaged entry is dropped and rewritten. See the module
    docstring for what is stored for each projector.
    """
    from drlcore.data.cache import ContentStore

    X = as_finite_matrix(X)
    store = ContentStore(cache_dir)
    key = _cache_key(projector, X)
    entry = store.get(key)
    if entry is not None:
        coords = _load_entry(projector, X, entry)
        if coords is not None:
            return coords
        store.discard(key)  # damaged or from another layout: costs one refit
    coords = projector.fit_transform(X)
    try:
        store.put(key, lambda folder: _store_entry(projector, coords, folder))
    except OSError:  # a read-only cache only costs a refit next time
        pass
    return coords


def _load_entry(projector, X: np.ndarray, entry: Path) -> np.ndarray | None:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        if meta.get("version") != PROJECTION_CACHE_VERSION or meta.get("kind") != type(
                projector).__name__:
            return None
        coords = np.load(entry / "embedding.npy", allow_pickle=False)
        if coords.shape != (X.shape[0], projector.n_components):
            return None
        if isinstance(projector, PCAProjector):
            with np.load(entry / "state.npz", allow_pickle=False) as state:
                projector._load_state({name: state[name] for name in state.files})
        else:
            projector.n_features_in_ = X.shape[1]
            projector.mean_ = np.asarray(meta["mean"], dtype=np.float64)
            projector.scale_ = np.asarray(meta["scale"], dtype=np.float64)
            projector.embedding_ = coords.astype(np.float64)
            projector.reducer_ = None
            projector.note_ = None
            projector._reference = X
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged entry costs one refit
    return coords.astype(np.float64)


def _store_entry(projector, coords: np.ndarray, entry: Path) -> None:
    atomic_save_npy(entry / "embedding.npy", coords)
    meta: dict = {"version": PROJECTION_CACHE_VERSION, "kind": type(projector).__name__,
                  "params": projector.get_params(), "versions": _versions()}
    if isinstance(projector, PCAProjector):
        with atomic_open(entry / "state.npz", "wb") as fh:
            np.savez(fh, **projector._state())
    else:
        meta["mean"] = projector.mean_.tolist()
        meta["scale"] = projector.scale_.tolist()
    atomic_write_json(entry / "meta.json", meta)


def _sampled_key(projector, X: np.ndarray, rows: np.ndarray, chunk_size: int) -> str:
    from drlcore.analysis.scale import sha256_array

    return fingerprint(["projection-sampled", PROJECTION_CACHE_VERSION, type(projector).__name__,
                        projector.get_params(), list(X.shape), sha256_array(X),
                        sha256_array(rows.astype(np.int64)), int(chunk_size), _versions()])


def map_from_sample(projector: PCAProjector | UMAPProjector, X, fit_rows,
                    cache_dir: str | os.PathLike, chunk_size: int = 50_000) -> np.ndarray:
    """The map of every row of ``X``, with ``projector`` fitted on ``X[fit_rows]`` only.

    The sample rows get their fitted coordinates (:func:`fit_cached`, so a later
    ``project_onto`` refits exactly this map); the other rows are placed with ``transform``, in
    chunks of ``chunk_size`` rows. The result is cached whole (one ContentStore entry keyed by
    ``X``, the sample and the chunk size): a rerun reads it back without fitting anything, and
    leaves ``projector`` unfitted.
    """
    from drlcore.data.cache import ContentStore

    X = as_finite_matrix(X)
    rows = np.unique(np.asarray(fit_rows, dtype=np.int64))
    if rows.size == 0 or rows[0] < 0 or rows[-1] >= X.shape[0]:
        raise DrlError(f"fit_rows must be row indices of X (0..{X.shape[0] - 1})")
    if chunk_size < 1:
        raise DrlError(f"chunk_size must be at least 1, got {chunk_size}")
    store = ContentStore(cache_dir)
    key = _sampled_key(projector, X, rows, chunk_size)
    entry = store.get(key)
    if entry is not None:
        try:
            coords = np.load(entry / "embedding.npy", allow_pickle=False)
            if coords.shape == (X.shape[0], projector.n_components):
                return coords.astype(np.float64)
        except (OSError, ValueError):
            pass
        store.discard(key)  # damaged: costs one fit and transform
    coords = np.empty((X.shape[0], projector.n_components), dtype=np.float64)
    coords[rows] = fit_cached(projector, X[rows], cache_dir)
    rest = np.setdiff1d(np.arange(X.shape[0]), rows, assume_unique=True)
    for start in range(0, rest.size, chunk_size):
        chunk = rest[start:start + chunk_size]
        coords[chunk] = projector.transform(X[chunk])
    if getattr(projector, "note_", None):
        # The fit could not reproduce the cached sample map: the sample rows take the map the
        # other rows were placed on.
        coords[rows] = projector.embedding_
    try:
        store.put(key, lambda folder: atomic_save_npy(folder / "embedding.npy", coords))
    except OSError:  # a read-only cache only costs a refit next time
        pass
    return coords
