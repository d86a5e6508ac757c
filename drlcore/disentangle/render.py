"""What the two rendered sources share: a space of discrete factors and its checks.

:class:`~drlcore.disentangle.dsprites.TextureDSprites` and
:class:`~drlcore.disentangle.cells.SyntheticCells` draw different pictures from the same kind of
input: a row of integer indices, one per varying factor, each factor taking ``size`` values. The
config's ``factor_sizes`` (which factors vary, in which order), its validation, the sampler and the
factor check are that interface (the pair samplers of :mod:`drlcore.disentangle.dsprites` use only
it), so they live here once. Each source keeps only what it draws.

Nothing here touches pixels or random streams beyond ``sample_factors``' one
``rng.integers`` call, so the shipped models' training renders are unchanged by this split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from drlcore.errors import DrlError

__all__ = ["is_int", "normalise_factor_sizes", "FactorSpace"]


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON configs must not smuggle ``true`` in as 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def normalise_factor_sizes(raw: Any, source: str, known: tuple[str, ...],
                           limits: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """``factor_sizes`` of a ``source`` config (a list of (name, size) pairs or a mapping) as a
    tuple of pairs; names from ``known``, each once, sizes 1..``limits[name]`` (no limit when
    absent). Anything else is a DrlError naming the entry."""
    items = list(raw.items()) if isinstance(raw, Mapping) else raw
    try:
        pairs = [tuple(item) for item in items]
    except TypeError:
        raise DrlError(
            f"{source} factor_sizes must be a list of (name, size) pairs or a mapping name -> size."
        ) from None
    if not pairs:
        raise DrlError(f"{source} factor_sizes is empty; name at least one of {list(known)}.")
    seen: set[str] = set()
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise DrlError(f"{source} factor_sizes entry {pair!r} is not a (name, size) pair.")
        name, size = pair
        if name not in known:
            raise DrlError(f"Unknown {source} factor {name!r}; known factors: {list(known)}.")
        if name in seen:
            raise DrlError(f"{source} factor {name!r} is listed twice.")
        seen.add(name)
        if not is_int(size) or size < 1:
            raise DrlError(f"{source} factor {name!r} needs an integer size >= 1, got {size!r}.")
        limit = limits.get(name)
        if limit is not None and size > limit:
            raise DrlError(f"{source} factor {name!r} has at most {limit} values, got {size}.")
        out.append((str(name), int(size)))
    return tuple(out)


class FactorSpace:
    """The factor interface of a rendered source, set up from its config's ``factor_sizes``:
    ``factor_names``, ``factor_sizes`` (read-only int64), ``num_factors``,
    ``changeable_factors``, ``sample_factors`` and ``check_factors``. A subclass calls
    :meth:`_init_factors` first in its ``__init__`` and adds ``factor_values`` and ``render``."""

    factor_names: tuple[str, ...]
    factor_sizes: np.ndarray
    num_factors: int

    def _init_factors(self, factor_sizes: tuple[tuple[str, int], ...]) -> dict[str, int]:
        """Set the factor attributes; returns name -> size of the factors that vary."""
        self.factor_names = tuple(name for name, _ in factor_sizes)
        sizes = np.array([size for _, size in factor_sizes], dtype=np.int64)
        sizes.setflags(write=False)
        self.factor_sizes = sizes
        self.num_factors = len(self.factor_names)
        self._column = {name: i for i, name in enumerate(self.factor_names)}
        return dict(factor_sizes)

    @property
    def changeable_factors(self) -> np.ndarray:
        """Indices of factors with more than one value (the only ones a pair can change)."""
        return np.flatnonzero(self.factor_sizes > 1)

    def sample_factors(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` factor rows, each factor uniform over its values; int64 (n, K)."""
        if not is_int(n) or n < 0:
            raise DrlError(f"Number of samples must be a non-negative integer, got {n!r}.")
        rng = np.random.default_rng(rng)
        return rng.integers(0, self.factor_sizes, size=(int(n), self.num_factors), dtype=np.int64)

    def check_factors(self, factors: Any) -> np.ndarray:
        """Validate an (n, K) integer factor array and return it as int64."""
        array = np.asarray(factors)
        if array.ndim != 2 or array.shape[1] != self.num_factors:
            raise DrlError(
                f"Factors must have shape (n, {self.num_factors}) for factors {list(self.factor_names)}, "
                f"got {array.shape}."
            )
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise DrlError(f"Factors must be integer indices, got dtype {array.dtype}.")
        array = array.astype(np.int64, copy=False)
        bad = (array < 0) | (array >= self.factor_sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DrlError(
                f"Factor {self.factor_names[col]!r} index {array[row, col]} (row {row}) is outside "
                f"0..{self.factor_sizes[col] - 1}."
            )
        return array
