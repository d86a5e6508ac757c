"""numba's on-disk cache for libraries that compile without it (umap-learn, pynndescent).

umap-learn and pynndescent compile hundreds of numba functions, most without ``cache=True``, so
every fresh process paid the compilation again: ~10 s before umap-learn's first map, ~28 s
before pynndescent's first neighbour graph (the approximate kNN score of large runs, and UMAP
on more than 4,096 objects). :func:`cache_compiled_functions` switches the cache on for each
such function of the named modules, before anything is compiled; a later process loads the
machine code instead (umap: 10 -> 0.1 s; pynndescent: 28 -> 11 s: its functions that take the
distance function as an argument are keyed by that function object, which numba cannot find
again in another process, and two hold dynamic globals; those compile as before).

The cache lives where numba puts it (``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the
library when writable, else the user's cache folder); numba keys it by signature and CPU and
drops it when the library's source changes. Where no folder is writable, the functions simply
compile as before.
"""

from __future__ import annotations

import functools
import importlib
import warnings

__all__ = ["cache_compiled_functions", "import_pynndescent", "UMAP_MODULES", "PYNNDESCENT_MODULES"]

UMAP_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse",
                "umap.spectral")
PYNNDESCENT_MODULES = ("pynndescent.pynndescent_", "pynndescent.distances", "pynndescent.utils",
                       "pynndescent.rp_trees", "pynndescent.sparse",
                       "pynndescent.sparse_nndescent", "pynndescent.graph_utils")


def cache_compiled_functions(module_names) -> int:
    """Switch numba's on-disk cache on for every uncached compiled function of these modules
    (those that import); returns how many were switched on."""
    from numba.core.dispatcher import Dispatcher
    from numba.core.errors import NumbaWarning

    # A function holding dynamic globals (pynndescent's nn_descent) cannot be cached: numba
    # says so once, compiles it as before, and that is all the user needs to know.
    warnings.filterwarnings("ignore", message="Cannot cache compiled function",
                            category=NumbaWarning)
    switched = 0
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for function in list(vars(module).values()):
            if isinstance(function, Dispatcher) and type(function._cache).__name__ == "NullCache":
                try:
                    function.enable_caching()
                except Exception:  # noqa: BLE001 - no writable cache folder: compile as before
                    return switched
                switched += 1
    return switched


@functools.lru_cache(maxsize=1)
def import_pynndescent():
    """pynndescent, with numba's on-disk cache switched on for its compiled functions."""
    import pynndescent  # heavy import (numba)

    cache_compiled_functions(PYNNDESCENT_MODULES)
    return pynndescent
