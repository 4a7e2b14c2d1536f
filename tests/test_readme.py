"""The README's Python examples run as written (the walk-through's printed shapes included)."""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    assert "(3, 3, 16) (16, 3, 3, 3) (5, 5, 3) (16,)" in out.getvalue()


INTEROP = README.parent / "docs" / "interop.md"


def _run_interop_blocks(count: int) -> str:
    """Run docs/interop.md's first ``count`` examples in order, in one namespace; returns what they printed."""
    for module in ("safetensors", "onnx", "onnxruntime"):          # in the test extra
        pytest.importorskip(module, reason=f"docs/interop.md's examples need {module}")
    blocks = re.findall(r"```python\n(.*?)```", INTEROP.read_text(), flags=re.S)
    assert len(blocks) == 5                                          # DLPack (2), safetensors, ONNX, torch
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for block in blocks[:count]:
            exec(compile(block, str(INTEROP), "exec"), namespace)
    return out.getvalue()


def test_interop_examples_run():
    """DLPack, safetensors and ONNX: everything but the PyTorch example."""
    assert "['Conv', 'BatchNormalization', 'Relu', 'Conv']" in _run_interop_blocks(4)


def test_interop_torch_example_runs():
    pytest.importorskip("torch", reason="the PyTorch example needs torch")
    _run_interop_blocks(5)
