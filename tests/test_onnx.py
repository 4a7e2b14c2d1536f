"""ONNX export: onnxruntime (CPU) gives xpconv's eval-mode outputs to 1e-5 in float32, at two batch sizes, for the
ready-made models and for models that use every exportable layer; a layer without an ONNX form is named."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import xpconv
from xpconv import nn
from xpconv.cli import main
from xpconv.models import ZeroPadShortcut, lenet5, resnet20, small_cnn

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
import xpconv.onnx  # noqa: E402 - after the skips: the module needs onnx to export

CL = dict(seed=0)


def _all_2d():
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding="same", dilation=2, **CL), bn=nn.BatchNorm2d(8), leaky=nn.LeakyReLU(0.2),
        grouped=nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2), groups=4, bias=False, seed=1), gn=nn.GroupNorm(2, 8),
        elu=nn.ELU(0.7),
        block=nn.Residual(nn.Conv2d(8, 8, 3, padding=1, seed=2), nn.SyncBatchNorm(8), nn.GELU(),
                          nn.Conv2d(8, 8, 1, seed=3), activation=nn.SiLU()),
        down=nn.Residual(nn.Conv2d(8, 8, 3, stride=2, padding=1, seed=4),
                         shortcut=nn.Sequential(nn.Conv2d(8, 8, 1, stride=2, seed=5), nn.Dropout2d(0.3))),
        up=nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2, seed=6), tanh=nn.Tanh(),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        upsample=nn.Upsample(scale_factor=2),
        avgpool=nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
        avgpool2=nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        conv2=nn.Conv2d(6, 4, 3, padding=1, seed=7), sig=nn.Sigmoid(),
        adaptive=nn.AdaptiveAvgPool2d((3, 5)), amax=nn.AdaptiveMaxPool2d((3, 1)),
        flatten=nn.Flatten(), drop=nn.Dropout(0.5), fc=nn.Linear(12, 7, seed=8), relu=nn.ReLU(),
        ident=nn.Identity()))


def _all_1d():
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=2, seed=0), nn.BatchNorm1d(4), nn.ReLU(),
        nn.ConvTranspose1d(4, 4, 4, stride=3, padding=1, output_padding=2, dilation=2, seed=1),
        nn.MaxPool1d(3, stride=2, ceil_mode=True), nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True,
                                                               count_include_pad=False),
        nn.AdaptiveAvgPool1d(5), nn.LayerNorm(5), nn.Linear(5, 3, seed=2),       # Linear on (N, C, L): MatMul
        nn.Flatten(), nn.Linear(12, 4, bias=False, seed=3), nn.BatchNorm1d(4, affine=False))


def _all_3d():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1, seed=0), nn.BatchNorm3d(4), nn.ReLU(),
        nn.ConvTranspose3d(4, 2, 2, stride=2, seed=1), nn.MaxPool3d(2), nn.AvgPool3d(3, stride=2, padding=1,
                                                                                     divisor_override=5),
        nn.GroupNorm(2, 2, affine=False), nn.AdaptiveAvgPool3d((2, 2, None)), nn.Flatten(start_dim=2),
        nn.LayerNorm(8, bias=False), nn.Flatten())


def _channels_last():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, channels_last=True, seed=0), nn.ReLU(),
                         nn.Conv2d(4, 2, 3, stride=2, groups=2, channels_last=True, seed=1), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 2, seed=2), nn.Softmax(dim=1))


MODELS = {"small_cnn": (lambda: small_cnn(seed=0), (1, 8, 8)), "lenet5": (lambda: lenet5(seed=0), (1, 28, 28)),
          "resnet20": (lambda: resnet20(seed=0), (3, 32, 32)), "all_2d": (_all_2d, (3, 20, 18)),
          "all_1d": (_all_1d, (2, 23)), "all_3d": (_all_3d, (1, 6, 6, 4)),
          "channels_last": (_channels_last, (7, 7, 3))}


def _randomize_statistics(model, rng):
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean = m.backend.asarray(rng.standard_normal(m.num_features), dtype=m.dtype)
            m.running_var = m.backend.asarray(rng.uniform(0.5, 2.0, m.num_features), dtype=m.dtype)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_gives_the_eval_outputs_at_two_batch_sizes(name, tmp_path, rng):
    build, shape = MODELS[name]
    _check(build(), shape, tmp_path / "m.onnx", rng)


X2, X1, X3 = (2, 8, 9, 10), (2, 8, 23), (2, 8, 5, 6, 7)
LAYERS = [  # (layer, input shape): each exported alone, so that no later layer can hide an error
    (lambda: nn.Conv2d(8, 6, 3, padding="same", dilation=2, seed=0), X2),
    (lambda: nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2), groups=4, bias=False, seed=0), X2),
    (lambda: nn.Conv2d(8, 4, 3, padding=1, channels_last=True, seed=0), (2, 9, 10, 8)),
    (lambda: nn.Conv1d(8, 4, 5, stride=2, padding=2, seed=0), X1),
    (lambda: nn.Conv3d(8, 4, 3, padding=1, dilation=(1, 2, 1), seed=0), X3),
    (lambda: nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2, seed=0), X2),
    (lambda: nn.ConvTranspose1d(8, 4, 4, stride=3, padding=1, output_padding=2, dilation=2, seed=0), X1),
    (lambda: nn.ConvTranspose3d(8, 2, 2, stride=2, bias=False, seed=0), X3),
    (lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True), X2),
    (lambda: nn.MaxPool1d(3, stride=2, ceil_mode=True), X1),
    (lambda: nn.MaxPool3d(2), X3),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True), X2),
    (lambda: nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False), X2),
    (lambda: nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), X1),
    (lambda: nn.AvgPool3d(3, stride=2, padding=1, divisor_override=5), X3),
    (lambda: nn.AdaptiveAvgPool2d(1), X2), (lambda: nn.AdaptiveAvgPool2d((3, 5)), X2),
    (lambda: nn.AdaptiveAvgPool2d((4, None)), X2), (lambda: nn.AdaptiveAvgPool1d(5), X1),
    (lambda: nn.AdaptiveAvgPool3d((2, 2, None)), X3),
    (lambda: nn.AdaptiveMaxPool2d(1), X2), (lambda: nn.AdaptiveMaxPool2d((3, 5)), X2),
    (lambda: nn.BatchNorm1d(8), (2, 8)), (lambda: nn.BatchNorm1d(8), X1), (lambda: nn.BatchNorm2d(8), X2),
    (lambda: nn.BatchNorm3d(8), X3), (lambda: nn.BatchNorm2d(8, affine=False), X2), (lambda: nn.SyncBatchNorm(8), X2),
    (lambda: nn.LayerNorm((9, 10)), X2), (lambda: nn.LayerNorm(10, bias=False), X2),
    (lambda: nn.LayerNorm(10, elementwise_affine=False), X2),
    (lambda: nn.GroupNorm(2, 8), X2), (lambda: nn.GroupNorm(4, 8, affine=False), X1),
    (lambda: nn.ReLU(), X2), (lambda: nn.LeakyReLU(0.2), X2), (lambda: nn.ELU(0.7), X2), (lambda: nn.GELU(), X2),
    (lambda: nn.GELU("tanh"), X2), (lambda: nn.Sigmoid(), X2), (lambda: nn.SiLU(), X2), (lambda: nn.Tanh(), X2),
    (lambda: nn.Softmax(dim=1), X2), (lambda: nn.Softmax(dim=-1), X2), (lambda: nn.Identity(), X2),
    (lambda: nn.Dropout(0.5), X2), (lambda: nn.Dropout2d(0.3), X2),
    (lambda: nn.Linear(10, 3, seed=0), (2, 10)), (lambda: nn.Linear(10, 3, bias=False, seed=0), X2),
    (lambda: nn.Flatten(), X2), (lambda: nn.Flatten(start_dim=2), X3),
    (lambda: nn.Upsample(scale_factor=2), X2), (lambda: nn.Upsample(size=(18, 30)), X2),
    (lambda: ZeroPadShortcut(8, 16, stride=2), X2), (lambda: ZeroPadShortcut(8, 11, stride=1), X2),
    (lambda: nn.Residual(nn.Conv2d(8, 8, 3, padding=1, seed=0), nn.BatchNorm2d(8), activation=nn.ReLU()), X2),
    (lambda: nn.Residual(nn.Conv2d(8, 4, 3, stride=2, padding=1, seed=0),
                         shortcut=nn.Conv2d(8, 4, 1, stride=2, seed=1)), X2),
]


def _check(model, shape, path, rng):
    """Export ``model`` (BatchNorm statistics randomized), run it in onnxruntime at batch sizes 1 and 5, compare."""
    _randomize_statistics(model, rng)
    model.train()
    xpconv.onnx.export(model, rng.standard_normal((2, *shape)).astype(np.float32), path)
    assert all(m.training for m in model.modules())                           # its mode is restored
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for n in (1, 5):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        expected = np.asarray(model(x))
        got = session.run(None, {"input": x})[0]
        assert got.shape == expected.shape and got.dtype == np.float32
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("build, shape", LAYERS,
                         ids=[f"{i}-{type(build()).__name__}" for i, (build, _) in enumerate(LAYERS)])
def test_each_layer_alone_gives_its_eval_output(build, shape, tmp_path, rng):
    _check(nn.Sequential(build()), shape[1:], tmp_path / "layer.onnx", rng)


def test_every_exportable_layer_is_in_a_tested_model():
    used = {type(m) for build, _ in MODELS.values() for m in build().modules()}
    alone = {type(build()) for build, _ in LAYERS}
    exportable = {getattr(nn, n) for n in nn.__all__} - {nn.Module, nn.Parameter, nn.CrossEntropyLoss, nn.MSELoss,
                                                         nn.BCEWithLogitsLoss}
    assert exportable - used == set() and exportable - alone == {nn.Sequential}   # every layer wraps in one


def test_the_graph_uses_the_standard_operators(tmp_path):
    path = xpconv.onnx.export(resnet20(seed=0), np.zeros((1, 3, 32, 32), np.float32), tmp_path / "r.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "Add", "Slice", "Pad", "GlobalAveragePool", "Flatten",
            "Gemm"} <= ops


@pytest.mark.parametrize("layer, shape, match", [
    (nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 4, 4), "without running statistics"),
    (nn.AdaptiveMaxPool2d((3, 3)), (2, 3, 5, 5), r"uneven bins"),
    (nn.Flatten(0, -1), (2, 3, 5, 5), r"Flatten \(at Sequential.0\) cannot be exported to ONNX: it merges the batch"),
])
def test_a_layer_without_an_onnx_form_is_named(layer, shape, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        xpconv.onnx.export(nn.Sequential(layer), np.zeros(shape, np.float32), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_user_layer_is_named_with_its_place(tmp_path):
    with pytest.raises(TypeError, match=r"model must be an xpconv\.nn\.Module, got CrossEntropyLoss"):
        xpconv.onnx.export(nn.CrossEntropyLoss(), np.zeros((2, 3), np.float32), tmp_path / "x.onnx")

    class Mine(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1, seed=0), mine=Mine()))
    with pytest.raises(ValueError, match=r"Mine \(at Sequential.mine\) cannot be exported to ONNX"):
        xpconv.onnx.export(model, np.zeros((1, 1, 2, 2), np.float32), tmp_path / "x.onnx")


def test_export_command_writes_a_model_onnxruntime_runs(tmp_path, capsys, rng):
    saved = xpconv.save(lenet5(seed=0), tmp_path / "m.safetensors"
                        if _has_safetensors() else tmp_path / "m.npz")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(saved), "--onnx", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, np.asarray(xpconv.load(saved).eval()(x)), rtol=1e-5, atol=1e-5)
    assert main(["export", "--model", str(tmp_path / "none.npz"), "--onnx", str(out)]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err


def _has_safetensors() -> bool:
    import importlib.util

    return importlib.util.find_spec("safetensors") is not None


def test_an_unbatched_example_and_a_missing_onnx_package_are_clear_errors(tmp_path, monkeypatch):
    import sys

    model = nn.Sequential(nn.Linear(3, 2, seed=0))
    with pytest.raises(ValueError, match=r"example_input must be batched"):
        xpconv.onnx.export(model, np.zeros(3, np.float32), tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install onnx"):
        xpconv.onnx.export(model, np.zeros((1, 3), np.float32), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
