"""The namespace lookup by array type (xpconv._namespace) and the plans the engine keeps per shape."""
from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import xpconv._engine as engine
from xpconv._geometry import make_geometry
from xpconv._namespace import namespace


def test_the_namespace_is_array_namespaces_on_every_backend(backend, rng):
    x = backend.asarray(rng.standard_normal((2, 3)))
    assert namespace(x) is array_namespace(x)
    assert namespace(None, x, x, None) is array_namespace(x)          # remembered, None skipped


def test_arrays_of_two_libraries_or_non_arrays_raise_as_array_namespace_does(backend):
    x = backend.asarray(np.ones(3))
    other = np.ones(3) if backend.name != "numpy" else pytest.importorskip("array_api_strict").ones(3)
    namespace(x)                                                        # the type is remembered ...
    with pytest.raises(TypeError):                                      # ... and still not mixed with another
        namespace(x, other)
    with pytest.raises(TypeError):
        namespace([1.0, 2.0])


def test_a_planned_pass_still_checks_the_memory_limit_on_every_call(rng):
    geom = make_geometry((3, 3), 1, 1, 1, 1)
    x, w = rng.standard_normal((4, 2, 8, 8)), rng.standard_normal((3, 2, 3, 3))
    engine.conv_forward(x, w, None, geom)                               # planned, with no memory limit
    with pytest.raises(MemoryError, match="more than the"):
        engine.conv_forward(x, w, None, geom, memory_limit=100)         # the same plan, a smaller device
