"""``xpconv bench --model``: a whole training step per backend at a tiny size; torch-ref runs the same network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HAS_TORCH
from xpconv.bench.model_step import torch_mirror
from xpconv.cli import main
from xpconv.models import MODELS, lenet5, resnet20


def test_bench_model_table_and_json(tmp_path, capsys):
    out = tmp_path / "model.json"
    rc = main(["bench", "--model", "resnet20", "--batch-size", "2", "--steps", "1", "--warmup", "0",
               "--backends", "numpy,torch-ref", "--threads", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("environment: ") and "| model | backend |" in stdout
    data = json.loads(out.read_text())
    assert data["config"]["model"] == "resnet20" and data["config"]["batch_size"] == 2
    assert data["environment"]["threads"] == 1
    expected = ["numpy", "torch-ref"] if HAS_TORCH else ["numpy"]
    assert [r["backend"] for r in data["results"]] == expected
    assert set(data["skipped"]) == ({"torch-ref"} - set(expected))
    for r in data["results"]:
        assert r["step_s"] > 0 and len(r["step_times"]) == 1
        assert r["images_per_s"] == pytest.approx(2 / r["step_s"])
        assert f"| resnet20 | {r['backend']} |" in stdout
        assert (r["ref_ratio"] is None) != HAS_TORCH


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("build, shape", [(resnet20, (2, 3, 8, 8)), (lenet5, (2, 1, 28, 28))])
def test_torch_reference_is_the_same_network(rng, build, shape):
    """The mirror gives the xpconv model's logits (train and eval mode) from the same state dict."""
    import torch

    model = build(dtype="float64", seed=1)
    mirror = torch_mirror(model)
    assert list(mirror.state_dict()) == list(model.state_dict())
    x = rng.standard_normal(shape)
    for mode in (True, False):
        model.train(mode)
        mirror.train(mode)
        np.testing.assert_allclose(mirror(torch.from_numpy(x)).detach().numpy(), model(x), rtol=1e-10, atol=1e-12)


def test_bench_model_rejects_unknown_models(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "resnet18"])
    assert exc.value.code == 2
    assert "invalid choice: 'resnet18'" in capsys.readouterr().err
    assert "resnet20" in MODELS
