"""Latent traversals shown with real images.

A generative traversal decodes points moved along one latent axis; our VAE decodes backbone
features, not pixels, so the explorer instead shows the *real* images nearest to those points.
For dimension ``dim`` we move from a low to a high quantile of that dimension while the other
dimensions stay at their median, and pick the nearest object to each point.
"""

from __future__ import annotations

import numpy as np

from drlcore.errors import DrlError

__all__ = ["traversal_grid", "traversal_indices", "traversal_values"]


def traversal_values(z: np.ndarray, dim: int, n_steps: int = 9,
                     quantiles: tuple[float, float] = (0.02, 0.98)) -> np.ndarray:
    """The ``n_steps`` evenly spaced quantiles of ``z[:, dim]`` the traversal visits."""
    z = _check(z, dim, n_steps, quantiles)
    return np.quantile(z[:, dim], np.linspace(quantiles[0], quantiles[1], n_steps))


def traversal_indices(z: np.ndarray, dim: int, n_steps: int = 9,
                      quantiles: tuple[float, float] = (0.02, 0.98)) -> list[int]:
    """Row indices of the objects nearest to points swept along latent axis ``dim``.

    Returns ``n_steps`` row indices of ``z`` (shape ``(n_objects, n_dims)``), one per step, in
    order of increasing ``dim``. Each row is used once while enough rows exist (with fewer
    rows than steps, the nearest rows repeat), so a strip never shows the same image twice
    when it need not. Distances are plain Euclidean in latent space: the VAE prior already puts
    every axis on the same unit scale, and rescaling inactive axes would amplify their noise.
    """
    z = _check(z, dim, n_steps, quantiles)
    distances = _step_distances(z, dim, _targets(z, dim, n_steps, quantiles))
    unique_possible = len(z) >= n_steps
    chosen: list[int] = []
    taken: set[int] = set()
    for step in range(n_steps):
        # At most n_steps - 1 rows are taken, so the n_steps nearest hold an untaken one.
        order = _nearest_first(distances(step), n_steps)
        pick = int(order[0])
        if unique_possible:
            pick = next(int(i) for i in order if int(i) not in taken)
        chosen.append(pick)
        taken.add(pick)
    return chosen


def _targets(z: np.ndarray, dim: int, n_steps: int, quantiles: tuple[float, float]) -> np.ndarray:
    targets = np.repeat(np.median(z, axis=0, keepdims=True), n_steps, axis=0)
    targets[:, dim] = np.quantile(z[:, dim], np.linspace(quantiles[0], quantiles[1], n_steps))
    return targets


def _step_distances(z: np.ndarray, dim: int, targets: np.ndarray):
    """``step -> squared distances of every row to targets[step]``. The targets differ only in
    ``dim``, so the other dimensions' part is summed once: one pass over the table, not one
    per step (10^6 x 10 latents: 0.06 s instead of 0.55 s for nine steps)."""
    others = np.delete(np.arange(z.shape[1]), dim)
    rest = ((z[:, others] - targets[0, others]) ** 2).sum(axis=1) if len(others) else 0.0
    column = z[:, dim]
    return lambda step: rest + (column - targets[step, dim]) ** 2


def _nearest_first(d2: np.ndarray, k: int) -> np.ndarray:
    """The indices of at least the ``k`` smallest ``d2``, in the order a stable ``argsort``
    gives them (ties by index), without sorting all of ``d2``: every index whose distance is
    at most the ``k``-th smallest, so ties at the boundary are all kept."""
    if len(d2) <= k:
        return np.argsort(d2, kind="stable")
    kth = np.partition(d2, k - 1)[k - 1]
    candidates = np.flatnonzero(d2 <= kth)  # ascending index
    return candidates[np.argsort(d2[candidates], kind="stable")]


def traversal_grid(z: np.ndarray, dim: int, n_steps: int = 9, n_rows: int = 3,
                   quantiles: tuple[float, float] = (0.02, 0.98)) -> np.ndarray:
    """``(n_rows, n_steps)`` row indices: at each step along axis ``dim``, the ``n_rows`` objects
    nearest to that point, nearest first (row 0 is :func:`traversal_indices`' strip).

    A montage of several rows shows whether a strip is one lucky sequence or what the axis does
    to many objects. No object appears twice while enough exist; with too few objects the
    nearest ones repeat. Use ``-1``-free input: rows outside a class filter should be removed from
    ``z`` beforehand (and the indices mapped back by the caller).
    """
    z = _check(z, dim, n_steps, quantiles)
    if n_rows < 1:
        raise DrlError(f"a montage needs at least one row, got n_rows={n_rows}")
    targets = _targets(z, dim, n_steps, quantiles)
    distances = _step_distances(z, dim, targets)
    unique_possible = len(z) >= n_steps * n_rows
    grid = np.empty((n_rows, n_steps), dtype=np.int64)
    taken: set[int] = set()
    # Row by row, so the first row is the best strip and later rows are the runners-up.
    # At most n_steps * n_rows - 1 rows are taken before any pick, so that many nearest suffice.
    orders = [_nearest_first(distances(step), n_steps * n_rows) for step in range(n_steps)]
    for row in range(n_rows):
        for step in range(n_steps):
            order = orders[step]
            if unique_possible:
                pick = next(int(i) for i in order if int(i) not in taken)
            else:
                pick = int(order[min(row, len(order) - 1)])
            grid[row, step] = pick
            taken.add(pick)
    return grid


def _check(z: np.ndarray, dim: int, n_steps: int, quantiles: tuple[float, float]) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise DrlError(f"traversal needs a non-empty (objects x dims) latent table, got shape {z.shape}")
    if not 0 <= dim < z.shape[1]:
        raise DrlError(f"latent dimension {dim} does not exist; the model has {z.shape[1]} (0..{z.shape[1] - 1})")
    if n_steps < 1:
        raise DrlError(f"a traversal needs at least one step, got n_steps={n_steps}")
    low, high = quantiles
    if not 0.0 <= low <= high <= 1.0:
        raise DrlError(f"traversal quantiles must satisfy 0 <= low <= high <= 1, got {quantiles}")
    if not np.isfinite(z).all():
        raise DrlError("latent table contains NaN or infinite values; re-encode the run")
    return z
