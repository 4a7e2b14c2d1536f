"""``xpconv bench``'s jax-ref peer: JAX's convolution and its vjp equal the float64 loop reference, the runner's
timed calls return the same values in float32, and the bench table carries a jax-ref row."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from reference import conv_backward_reference, conv_reference
from xpconv.bench.runners import jax_conv, layer_inputs, make_runner
from xpconv.bench.suite import Layer
from xpconv.cli import main

jax = pytest.importorskip("jax", reason="jax-ref needs jax: pip install 'xpconv[jax]'")

# (x shape, weight shape, stride, (lo, hi) padding, dilation, groups): every geometry the suite has, and dilation
GEOMETRIES = [
    ((2, 3, 9), (4, 3, 3), (2,), ((1, 1),), (2,), 1),
    ((2, 4, 7, 6), (6, 2, 3, 3), (1, 2), ((1, 1), (0, 2)), (1, 1), 2),
    ((2, 3, 8, 8), (3, 1, 3, 3), (1, 1), ((1, 1), (1, 1)), (2, 1), 3),
    ((1, 2, 5, 4, 6), (4, 2, 3, 2, 3), (1, 1, 2), ((1, 1), (0, 0), (2, 2)), (1, 1, 1), 1),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", GEOMETRIES)
def test_jax_conv_and_its_vjp_equal_the_float64_reference(rng, x_shape, w_shape, stride, padding, dilation, groups):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    hyper = (stride, padding, dilation, groups)
    y_ref = conv_reference(x, w, b, *hyper)
    dy = rng.standard_normal(y_ref.shape)
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda *a: jax_conv(*a, *hyper), *(jax.numpy.asarray(a) for a in (x, w, b)))
        grads = vjp(jax.numpy.asarray(dy))
        assert y.dtype == jax.numpy.float64
    for got, want in zip((y, *grads), (y_ref, *conv_backward_reference(dy, x, w, *hyper)), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("layer", [Layer("dw", 2, 4, (6, 6), 4, 3, 1, 1, groups=4),
                                   Layer("1d-s2", 2, 3, (11,), 4, 5, 2, 2),
                                   Layer("3d", 1, 2, (4, 5, 4), 3, 3, 1, 1)])
def test_the_runner_times_the_right_computation(layer):
    """The bench's forward, backward and forward+backward calls (float32) give the float64 reference's values."""
    runner = make_runner("jax-ref")
    case = runner.case(layer, np.random.default_rng(5), None)
    x, w, b, dy = (np.asarray(a, dtype=np.float64) for a in layer_inputs(layer, np.random.default_rng(5)))
    hyper = ((layer.stride,) * layer.nd, ((layer.pad, layer.pad),) * layer.nd, (1,) * layer.nd, layer.groups)
    y_ref = conv_reference(x, w, b, *hyper)
    grads_ref = conv_backward_reference(dy, x, w, *hyper)
    y_step, grads_step = case.step()
    for got, want in [(case.forward(), y_ref), (y_step, y_ref), *zip(case.backward(), grads_ref, strict=True),
                      *zip(grads_step, grads_ref, strict=True)]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_bench_has_a_jax_ref_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--backends", "numpy,jax-ref", "--layers", "2,3,6x6,4,3,1,1", "--repeats", "2",
               "--threads", "2", "--json", str(out), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| jax-ref |" in stdout and "XLA CPU threads" in stdout.splitlines()[0]
    data = json.loads(out.read_text())
    assert data["environment"]["versions"]["jax"] == jax.__version__
    row = next(r for r in data["results"] if r["backend"] == "jax-ref")
    assert row["step_s"] > 0 and row["gemm_gflops"] > 0 and row["peak_workspace_bytes"] is None


def test_the_jax_training_step_is_xpconvs(rng):
    """One ResNet-20 step in JAX (float64) gives xpconv's loss, updated weights and running statistics."""
    from xpconv import nn
    from xpconv.bench.jax_step import jax_mirror, jax_train_step
    from xpconv.models import resnet20
    from xpconv.optim import SGD

    model = resnet20(num_classes=10, dtype="float64", seed=1)
    x, labels = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)
    with jax.enable_x64(True):
        params, state, apply = jax_mirror(model)
        zeros = jax.tree.map(jax.numpy.zeros_like, params)
        params, _, state, loss = jax_train_step(apply, 0.1, 0.9)(params, zeros, state, jax.numpy.asarray(x),
                                                                 jax.numpy.asarray(labels))
    optimizer, loss_fn = SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss()
    expected_loss = float(loss_fn(model(x), labels))
    model.backward(loss_fn.backward())
    optimizer.step()
    assert abs(float(loss) - expected_loss) <= 1e-10 * abs(expected_loss)
    after = model.state_dict()
    assert set(after) == set(params) | set(state)
    for name, value in after.items():
        got = np.asarray(params[name] if name in params else state[name])
        np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-10, err_msg=name)


def test_bench_model_has_a_jax_ref_row(capsys):
    rc = main(["bench", "--model", "resnet20", "--backends", "numpy,jax-ref", "--batch-size", "2", "--steps", "1",
               "--warmup", "1", "--threads", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert "XLA CPU threads all" in lines[0] and "(JAX was imported before XLA_FLAGS could be set)" in lines[0]
    row = next(line for line in lines if "| jax-ref |" in line)
    assert float(row.split("|")[6]) > 0                                              # images/s


def test_xla_threads_are_set_before_jax_is_imported(monkeypatch):
    """One thread: XLA's single-thread flags appended to the user's, only while JAX is not imported yet."""
    import sys

    from xpconv.bench.environment import set_xla_threads

    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    assert set_xla_threads(1, 2).endswith("(JAX was imported before XLA_FLAGS could be set)")
    assert set_xla_threads(2, 2) == "all 2 CPUs" and set_xla_threads(3, 4).endswith("no setting for 3 threads)")
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/nowhere"
    monkeypatch.delitem(sys.modules, "jax")
    assert set_xla_threads(1, 2) == "1"
    assert os.environ["XLA_FLAGS"] == ("--xla_dump_to=/nowhere --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")
