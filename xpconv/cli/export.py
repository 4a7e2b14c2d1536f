"""``xpconv export``: a saved model to another format (ONNX)."""
from __future__ import annotations

import numpy as np

from .. import io
from ..models import input_shape
from .errors import guarded
from .paths import check_outputs


def _run_export(args) -> int:
    from .. import onnx

    check_outputs({"--onnx": args.onnx}, inputs={"--model": args.model})
    model = io.load(args.model)
    shape = input_shape(model.arch or {})
    path = onnx.export(model, np.zeros((1, *shape), dtype=model.dtype_name), args.onnx)
    print(f"ONNX model (opset {onnx.OPSET}, input (batch, {', '.join(map(str, shape))})) written to {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a saved model to ONNX",
                              description="Write a model saved by 'xpconv train --save' (.npz or .safetensors) as "
                              "an ONNX graph of its eval-mode forward pass, batch axis dynamic (needs the onnx "
                              "package: pip install \"xpconv[onnx]\").")
    p.add_argument("--model", required=True, metavar="MODEL.npz", help="the saved model (.npz or .safetensors)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.set_defaults(func=guarded(_run_export, "export"))
