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
    targets = np.repeat(np.median(z, axis=0, keepdims=True), n_steps, axis=0)
    targets[:, dim] = np.quantile(z[:, dim], np.linspace(quantiles[0], quantiles[1], n_steps))
    # (n_steps, n) squared distances; n_steps is small, so this stays cheap for 100k objects.
    d2 = ((z[None, :, :] - targets[:, None, :]) ** 2).sum(axis=2) if len(z) * n_steps <= 4_000_000 \
        else np.stack([((z - t) ** 2).sum(axis=1) for t in targets])
    unique_possible = len(z) >= n_steps
    chosen: list[int] = []
    taken: set[int] = set()
    for step in range(n_steps):
        order = np.argsort(d2[step], kind="stable")
        pick = int(order[0])
        if unique_possible:
            pick = next(int(i) for i in order if int(i) not in taken)
        chosen.append(pick)
        taken.add(pick)
    return chosen


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
    targets = np.repeat(np.median(z, axis=0, keepdims=True), n_steps, axis=0)
    targets[:, dim] = np.quantile(z[:, dim], np.linspace(quantiles[0], quantiles[1], n_steps))
    unique_possible = len(z) >= n_steps * n_rows
    grid = np.empty((n_rows, n_steps), dtype=np.int64)
    taken: set[int] = set()
    # Row by row, so the first row is the best strip and later rows are the runners-up.
    orders = [np.argsort(((z - t) ** 2).sum(axis=1), kind="stable") for t in targets]
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
