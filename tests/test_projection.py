"""PCA / UMAP projectors, trustworthiness and the projection cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from drlcore.errors import DrlError
from drlcore.analysis.projection import PCAProjector, UMAPProjector, fit_cached, trustworthiness


def low_rank(rng, n=400, spreads=(5.0, 2.0), noise=0.0, dims=6):
    """n points on a random plane in ``dims`` dimensions, with known spread along each axis."""
    basis, _ = np.linalg.qr(rng.normal(size=(dims, len(spreads))))
    latent = rng.normal(size=(n, len(spreads))) * np.asarray(spreads)
    return latent @ basis.T + noise * rng.normal(size=(n, dims)), latent


def test_pca_recovers_variance_ordering_on_low_rank_data(rng):
    # Unequal per-dimension scales would be undone by standardising, so give every input
    # dimension the same spread: a rotation of a 3-D latent with decreasing variances.
    latent = rng.normal(size=(2000, 3)) * np.array([6.0, 3.0, 1.0])
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    X = latent @ rotation.T
    X = X / X.std(axis=0)   # standardising then is a no-op, so the truth is known
    pca = PCAProjector(n_components=3).fit(X)
    ratio = pca.explained_variance_ratio_
    assert ratio[0] > ratio[1] > ratio[2]
    assert ratio.sum() == pytest.approx(1.0)
    coords = pca.transform(X)
    # Each component is one latent axis (up to sign), in order of variance.
    for j in range(3):
        assert abs(np.corrcoef(coords[:, j], latent[:, j])[0, 1]) > 0.95


def test_pca_map_of_2d_data_is_trustworthy_and_noise_map_is_not(rng):
    X, _ = low_rank(rng)
    coords = PCAProjector().fit_transform(X)
    assert trustworthiness(X, coords) > 0.99
    noise = rng.normal(size=(400, 6))
    assert trustworthiness(noise, PCAProjector().fit_transform(noise)) < 0.9


def test_pca_standardises_with_statistics_learned_at_fit(rng):
    X = rng.normal(size=(100, 4)) * np.array([1.0, 100.0, 1.0, 0.0]) + 7.0  # a constant column
    pca = PCAProjector().fit(X)
    np.testing.assert_allclose(pca.mean_, X.mean(axis=0))
    assert pca.scale_[3] == 1.0 and np.isfinite(pca.transform(X)).all()
    shifted = pca.transform(X[:5] + np.array([0.0, 100.0, 0.0, 0.0]))
    # Moving 100 units along input dim 1 moves the map by 100 / scale_1 along that loading.
    expected = np.tile(pca.components_[:, 1] * 100.0 / pca.scale_[1], (5, 1))
    np.testing.assert_allclose(shifted - pca.transform(X[:5]), expected)
    with pytest.raises(DrlError, match="fitted on 4"):
        pca.transform(np.zeros((2, 3)))
    with pytest.raises(DrlError, match="not fitted"):
        PCAProjector().transform(X)


def test_trustworthiness_subsamples_deterministically(rng):
    X, _ = low_rank(rng, n=1200, noise=0.5)
    coords = X[:, :2]
    a = trustworthiness(X, coords, max_points=500)
    assert a == trustworthiness(X, coords, max_points=500)
    assert a == pytest.approx(trustworthiness(X, coords), abs=0.05)
    assert np.isnan(trustworthiness(X[:2], coords[:2]))


def test_pca_cache_hit_returns_identical_coordinates_without_pickle(rng, tmp_path):
    X, _ = low_rank(rng, noise=0.1)
    first = fit_cached(PCAProjector(), X, tmp_path)
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]  # each with its checksum record
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["embedding.npy", "meta.json",
                                                           "state.npz"]
    restored = PCAProjector()
    second = fit_cached(restored, X, tmp_path)
    np.testing.assert_array_equal(first, second)
    # The restored projector is complete: it maps new data like a fresh fit.
    new = rng.normal(size=(5, X.shape[1]))
    np.testing.assert_allclose(restored.transform(new), PCAProjector().fit(X).transform(new))
    # Different data or parameters: a different entry.
    fit_cached(PCAProjector(), X[:-1], tmp_path)
    fit_cached(PCAProjector(n_components=3), X, tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_damaged_cache_entry_is_refitted(rng, tmp_path):
    X, _ = low_rank(rng)
    first = fit_cached(PCAProjector(), X, tmp_path)
    entry = next(p for p in tmp_path.iterdir() if p.is_dir())
    (entry / "state.npz").write_bytes(b"garbage")
    np.testing.assert_allclose(fit_cached(PCAProjector(), X, tmp_path), first)
    (entry / "meta.json").write_text("{")
    np.testing.assert_allclose(fit_cached(PCAProjector(), X, tmp_path), first)
    assert json.loads((entry / "meta.json").read_text())["kind"] == "PCAProjector"
    # One flipped bit in the coordinates, same size, still a loadable array: the checksum
    # catches it, so the damaged map is never returned.
    data = bytearray((entry / "embedding.npy").read_bytes())
    data[-3] ^= 0x10
    (entry / "embedding.npy").write_bytes(bytes(data))
    np.testing.assert_array_equal(fit_cached(PCAProjector(), X, tmp_path), first)


@pytest.fixture(scope="module")
def clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6.0, size=(3, 5))
    X = np.concatenate([rng.normal(size=(80, 5)) + c for c in centres])
    return X, np.repeat(np.arange(3), 80)


@pytest.mark.slow
def test_umap_transform_places_copies_on_the_reference_map(clusters, tmp_path):
    X, labels = clusters
    projector = UMAPProjector(n_neighbors=15, random_state=0)
    reference = fit_cached(projector, X, tmp_path)
    assert reference.shape == (len(X), 2)
    probes = np.arange(0, len(X), 20)
    # Exact copies take their reference point's place; new points near them land among their class.
    np.testing.assert_array_equal(projector.transform(X[probes]), reference[probes])
    nearby = X[probes] + np.random.default_rng(2).normal(scale=0.1, size=X[probes].shape)
    placed = projector.transform(nearby)
    assert not np.allclose(placed, reference[probes])  # really placed by UMAP's transform
    for row, point in zip(probes, placed):
        nearest = np.argsort(np.linalg.norm(reference - point, axis=1))[:5]
        assert (labels[nearest] == labels[row]).all()
    assert trustworthiness(X, reference) > 0.9

    # Cache hit: the same map, with no model; the first transform refits on the reference.
    restored = UMAPProjector(n_neighbors=15, random_state=0)
    again = fit_cached(restored, X, tmp_path)
    np.testing.assert_array_equal(again, reference)
    assert restored.reducer_ is None
    replaced = restored.transform(nearby)
    assert restored.note_ is None   # the refit reproduced the cached map
    np.testing.assert_allclose(replaced, placed, atol=1e-3)
    assert list(next(p for p in tmp_path.iterdir() if p.is_dir()).glob("*.npz")) == []   # nothing pickled for UMAP


def test_umap_rejects_too_few_points():
    with pytest.raises(DrlError, match="at least"):
        UMAPProjector().fit(np.zeros((3, 4)))


@pytest.mark.slow
def test_umap_fitted_on_a_sample_places_the_rest_with_transform(clusters, tmp_path):
    """map_from_sample: the sample keeps its fitted map (the one a later transform refits), the
    other rows land among their own class, and the whole map comes back from the cache."""
    from drlcore.analysis.projection import map_from_sample

    X, labels = clusters
    rows = np.arange(0, len(X), 3)  # a third of the points fit the map
    projector = UMAPProjector(n_neighbors=15, random_state=0)
    coords = map_from_sample(projector, X, rows, tmp_path, chunk_size=50)
    assert coords.shape == (len(X), 2) and np.isfinite(coords).all()
    np.testing.assert_array_equal(coords[rows], fit_cached(UMAPProjector(n_neighbors=15,
                                                                         random_state=0),
                                                           X[rows], tmp_path))
    rest = np.setdiff1d(np.arange(len(X)), rows)
    for i in rest:
        nearest = rows[np.argsort(np.linalg.norm(coords[rows] - coords[i], axis=1))[:5]]
        assert (labels[nearest] == labels[i]).all()
    assert trustworthiness(X, coords) > 0.9
    # Cached whole: the same map again, without fitting anything.
    restored = UMAPProjector(n_neighbors=15, random_state=0)
    np.testing.assert_array_equal(map_from_sample(restored, X, rows, tmp_path, chunk_size=50),
                                  coords)
    assert not hasattr(restored, "embedding_")
    with pytest.raises(DrlError, match="row indices"):
        map_from_sample(restored, X, [len(X)], tmp_path)


def test_pca_from_a_sample_equals_pca_fitted_on_the_sample(rng, tmp_path):
    from drlcore.analysis.projection import map_from_sample

    X, _ = low_rank(rng, n=300, noise=0.1)
    rows = np.arange(0, 300, 4)
    coords = map_from_sample(PCAProjector(), X, rows, tmp_path, chunk_size=7)
    np.testing.assert_allclose(coords, PCAProjector().fit(X[rows]).transform(X), atol=1e-10)


_UMAP_IN_A_FRESH_PROCESS = """
import json, numpy as np
from drlcore.analysis.projection import UMAPProjector
coords = UMAPProjector().fit_transform(np.random.default_rng(0).normal(size=(30, 5)))
import umap.umap_ as u
stats = u.smooth_knn_dist.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "coords": coords.tolist()}))
"""


@pytest.mark.slow
def test_a_fresh_process_loads_umaps_compiled_code_from_the_cache():
    """umap-learn's numba functions are cached on disk (where numba keeps them for this
    install): once this process has mapped, a fresh one compiles nothing (its first map used to
    take ~10 s of compilation in every process) and draws the same map."""
    X = np.random.default_rng(0).normal(size=(30, 5))
    here = UMAPProjector().fit_transform(X)  # compiles and writes the cache, unless done before
    out = subprocess.run([sys.executable, "-c", _UMAP_IN_A_FRESH_PROCESS], capture_output=True,
                         text=True, check=True, timeout=300, env=os.environ.copy())
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["misses"] == 0 and fresh["hits"] >= 1, fresh
    np.testing.assert_array_equal(np.asarray(fresh["coords"]), here)
