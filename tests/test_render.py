"""The factor interface shared by the rendered sources (drlcore.disentangle.render).

The shipped source models in assets/ were trained on these renders, so sharing the code must not
change a pixel: the digests below were taken from the renderers before the factor code moved into
render.py (fixed configs, fixed seeds) and must stay as they are.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from drlcore.disentangle.cells import CellsConfig, SyntheticCells
from drlcore.disentangle.dsprites import DSpritesConfig, TextureDSprites
from drlcore.disentangle.render import FactorSpace, normalise_factor_sizes
from drlcore.errors import DrlError

# name: (sha256[:16] of sample_factors(24, seed 7), of render(those factors))
BEFORE = {
    "cells-64": ("bcc47a21868c1213", "c84f6747a26dfcd1"),
    "cells-224": ("bcc47a21868c1213", "865c9731202c97a4"),
    "dsprites-64": ("748f0e7fb030f201", "107752fc5d0a053c"),
    "dsprites-224": ("748f0e7fb030f201", "5268a53e50d541f0"),
}
SOURCES = {
    "cells-64": lambda: SyntheticCells(CellsConfig(image_size=64)),
    "cells-224": lambda: SyntheticCells(),
    "dsprites-64": lambda: TextureDSprites(DSpritesConfig(image_size=64)),
    "dsprites-224": lambda: TextureDSprites(),
}


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(SOURCES))
def test_renders_are_bit_for_bit_what_they_were(name):
    source = SOURCES[name]()
    assert isinstance(source, FactorSpace)
    factors = source.sample_factors(24, 7)
    images = source.render(factors)
    assert images.dtype == np.uint8 and images.shape[0] == 24
    assert (_digest(factors), _digest(images)) == BEFORE[name]


def test_both_sources_share_the_factor_checks():
    for source in (SyntheticCells(CellsConfig(image_size=32, canvas_size=32)),
                   TextureDSprites(DSpritesConfig(image_size=64))):
        sizes = source.factor_sizes
        assert not sizes.flags.writeable and source.num_factors == len(source.factor_names)
        np.testing.assert_array_equal(source.changeable_factors, np.flatnonzero(sizes > 1))
        with pytest.raises(DrlError, match="outside"):
            source.check_factors(np.array([sizes]))
        with pytest.raises(DrlError, match="shape"):
            source.check_factors(np.zeros((2, source.num_factors + 1), int))
        with pytest.raises(DrlError, match="non-negative"):
            source.sample_factors(-1)


def test_factor_sizes_are_checked_with_the_sources_name():
    known = ("a", "b")
    assert normalise_factor_sizes({"b": 2, "a": 1}, "toy", known, {}) == (("b", 2), ("a", 1))
    for raw, words in (([], "empty"), ([("c", 2)], "Unknown toy factor 'c'"),
                       ([("a", 2), ("a", 3)], "twice"), ([("a", True)], "integer size"),
                       ([("b", 4)], "at most 3"), (5, "pairs")):
        with pytest.raises(DrlError, match=words):
            normalise_factor_sizes(raw, "toy", known, {"b": 3})
    with pytest.raises(DrlError, match="cells factor 'appearance' has at most 3"):
        CellsConfig(factor_sizes=(("appearance", 4),))
    with pytest.raises(DrlError, match="dSprites factor 'shape' has at most 3"):
        DSpritesConfig(factor_sizes=(("shape", 4),))
