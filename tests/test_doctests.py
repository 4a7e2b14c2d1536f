"""The Examples in the public docstrings are doctests: they run, on the NumPy backend, and print what they show."""
from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest

import xpconv
import xpconv.functional
import xpconv.nn

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Modules whose public API must carry examples; every other module of xpconv.nn is run too (0 examples is fine).
WITH_EXAMPLES = {"xpconv.functional"} | {f"xpconv.nn.{m}" for m in (
    "activation", "normalization", "container", "conv", "conv_transpose", "linear", "loss", "pooling", "dropout",
    "shape")} | {
    f"xpconv.models{m}" for m in ("", ".small_cnn", ".lenet", ".resnet")}
WITH_EXAMPLES |= {"xpconv.nn.utils", "xpconv.optim.optimizer", "xpconv.optim.lr_scheduler"}
MODULES = sorted(WITH_EXAMPLES | {"xpconv.nn"} | {m.name for m in pkgutil.iter_modules(xpconv.nn.__path__,
                                                                                       "xpconv.nn.")})


@pytest.fixture
def numpy_default_backend():
    """Layers built without ``backend=`` use NumPy, whatever ``$XPCONV_BACKEND`` says."""
    xpconv.set_default_backend("numpy")
    yield
    xpconv.set_default_backend(None)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass_on_numpy(name, numpy_default_backend):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    for test in doctest.DocTestFinder(exclude_empty=True).find(module):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    if name in WITH_EXAMPLES:
        assert runner.tries > 0, f"{name} has no docstring examples"


PUBLIC = [getattr(xpconv.functional, n) for n in xpconv.functional.__all__] + [
    getattr(xpconv.nn, n) for n in xpconv.nn.__all__ if n not in ("Module", "Parameter")]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_public_docstrings_have_numpydoc_sections(obj):
    doc = obj.__doc__ or ""
    sections = ["Examples"] + (["Parameters", "Raises"] if obj is not xpconv.nn.CrossEntropyLoss else [])
    for section in sections:
        assert f"\n    {section}\n    {'-' * len(section)}\n" in doc, f"{obj.__name__} lacks a {section} section"
