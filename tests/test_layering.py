"""The layering rules of docs/architecture.md, checked on the source: they hold by test, not by habit."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xpconv"
SOURCES = sorted(PACKAGE.rglob("*.py"))
LIBRARIES = ("numpy", "cupy", "torch", "array_api_strict")
# Which internal modules each part may import (the op layer is the door to the engine).
ENGINE = {"xpconv._engine", "xpconv._columns", "xpconv._winograd", "xpconv._direct", "xpconv._fft", "xpconv._kn2row"}
MAY_IMPORT_ENGINE = {"xpconv._ops", *ENGINE}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(module imported from, names) for every ``from ... import ...`` of xpconv's own modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module.startswith("xpconv"):
                yield module, [alias.name for alias in node.names]


def test_sources_found():
    assert len(SOURCES) > 20
    assert {"xpconv.backends", "xpconv._ops", "xpconv._engine"} <= {_module_name(p) for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module_name(p))
def test_no_module_imports_an_underscore_name_of_another(path):
    private = [(module, name) for module, names in _imports(path) for name in names
               if name.startswith("_") and name != "__version__"]
    assert private == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module_name(p))
def test_only_the_op_layer_reaches_the_engine(path):
    me = _module_name(path)
    reached = {module for module, _ in _imports(path) if module in ENGINE}
    assert not reached or me in MAY_IMPORT_ENGINE, f"{me} imports {reached}: go through xpconv._ops"


@pytest.mark.parametrize("path", [p for p in SOURCES if _module_name(p) != "xpconv.backends"
                                  and not _module_name(p).startswith("xpconv.bench")],
                         ids=lambda p: _module_name(p))
def test_no_library_name_is_compared_or_sniffed_outside_backends(path):
    """No ``== "cupy"``, ``name != "numpy"``, ``"cuda" in str(device)`` or ``__module__`` tests: ask the Backend."""
    text = path.read_text(encoding="utf-8")
    names = "|".join((*LIBRARIES, "cuda"))
    compared = re.findall(rf"""(?:==|!=|\bin)\s*\(?\s*["'](?:{names})\b""", text)
    compared += re.findall(rf"""["'](?:{names})["']\s*(?:==|!=|(?:not\s+)?in\b)""", text)
    assert compared == []
    assert "__module__" not in text
