"""Auto-tuning of algorithm="auto" (xpconv.tuning): the switch, the cache key, the candidates, the choice."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

import xpconv
from conftest import as_numpy
from xpconv import nn
from xpconv._ops import AUTO_FLOAT32_BOUND, REGISTRY
from xpconv.tuning import TIMED_REPEATS, tuned_choice


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Every test starts and ends with auto-tuning unset, the variable absent and an empty cache."""
    monkeypatch.delenv("XPCONV_AUTOTUNE", raising=False)
    xpconv.set_autotune(None)
    xpconv.clear_autotune_cache()
    yield
    xpconv.set_autotune(None)
    xpconv.clear_autotune_cache()


def _record(monkeypatch, delays=None):
    """Wrap every registered algorithm's forward: returns the list of names as they run; ``delays`` (name ->
    seconds) makes some slower."""
    calls: list[str] = []
    for name, algorithm in REGISTRY.items():
        def forward(*args, _name=name, _inner=algorithm.forward):
            calls.append(_name)
            time.sleep((delays or {}).get(_name, 0.0))
            return _inner(*args)
        monkeypatch.setitem(REGISTRY, name, replace(algorithm, forward=forward))
    return calls


def test_the_switch(monkeypatch):
    assert not xpconv.autotune_enabled()
    monkeypatch.setenv("XPCONV_AUTOTUNE", "1")
    assert xpconv.autotune_enabled()
    monkeypatch.setenv("XPCONV_AUTOTUNE", "off")
    assert not xpconv.autotune_enabled()
    monkeypatch.setenv("XPCONV_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="XPCONV_AUTOTUNE must be one of"):
        xpconv.autotune_enabled()
    xpconv.set_autotune(True)                                   # the call wins over the variable
    assert xpconv.autotune_enabled()
    with xpconv.autotune(False):
        assert not xpconv.autotune_enabled()
    assert xpconv.autotune_enabled()
    xpconv.set_autotune(None)
    monkeypatch.delenv("XPCONV_AUTOTUNE")
    with xpconv.autotune():
        assert xpconv.autotune_enabled()
    assert not xpconv.autotune_enabled()
    with pytest.raises(TypeError, match="True, False or None"):
        xpconv.set_autotune("yes")


def test_off_auto_is_the_rule_and_nothing_is_timed(monkeypatch, rng):
    calls = _record(monkeypatch)
    xpconv.conv2d(rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), padding=1)
    assert calls == ["im2col"] and xpconv.autotune_choices() == {}          # the rule: too small a call for kn2row


def test_only_eligible_algorithms_are_timed_and_the_choice_is_cached_per_key(monkeypatch, rng):
    """3x3 stride 1: im2col, kn2row and winograd are timed (winograd4x4's float32 bound is looser than auto's); a second
    call of the same key times nothing; another shape, dtype or geometry is a new key."""
    calls = _record(monkeypatch)
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    with xpconv.autotune():
        xpconv.conv2d(x, w, padding=1)
        eligible = [n for n, a in REGISTRY.items() if a.float32_bound <= AUTO_FLOAT32_BOUND]
        assert "winograd4x4" not in eligible and REGISTRY["winograd4x4"].float32_bound > AUTO_FLOAT32_BOUND
        timed = calls[:-1]
        assert sorted(set(timed)) == ["im2col", "kn2row", "winograd"]
        assert all(timed.count(name) == TIMED_REPEATS + 1 for name in set(timed))
        assert len(xpconv.autotune_choices()) == 1
        calls.clear()
        xpconv.conv2d(x, w, padding=1)
        assert len(calls) == 1 and len(xpconv.autotune_choices()) == 1
        xpconv.conv2d(x[:1], w, padding=1)                                          # another batch size
        xpconv.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)        # another dtype
        calls.clear()
        xpconv.conv2d(x, w, stride=2)                                               # only im2col can: not timed
        assert calls == ["im2col"]
    choices = xpconv.autotune_choices()
    assert len(choices) == 4
    assert list(choices.values())[-1] == "im2col"
    key = next(iter(choices))
    assert key[:5] == ("numpy", "cpu", "float64", (2, 3, 8, 8), (4, 3, 3, 3))


@pytest.mark.parametrize("expected", ["im2col", "kn2row", "winograd"])
def test_the_fastest_candidate_wins(monkeypatch, rng, expected):
    _record(monkeypatch, delays={name: 0.05 for name in ("im2col", "kn2row", "winograd") if name != expected})
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    with xpconv.autotune():
        xpconv.conv2d(x, w, padding=1)
    assert list(xpconv.autotune_choices().values()) == [expected]


def test_results_are_the_chosen_algorithms(backend, rng):
    """Under auto-tuning, forward and backward give exactly the chosen algorithm's results (float64)."""
    x = backend.asarray(rng.standard_normal((2, 4, 9, 7)), dtype="float64")
    w = backend.asarray(rng.standard_normal((6, 2, 3, 3)), dtype="float64")
    dy = backend.asarray(rng.standard_normal((2, 6, 9, 7)), dtype="float64")
    kw = dict(padding=1, groups=2)
    with xpconv.autotune():
        tuned = [xpconv.conv2d(x, w, **kw), *xpconv.conv2d_backward(dy, x, w, **kw)]
    (chosen,) = xpconv.autotune_choices().values()
    assert chosen in ("im2col", "kn2row", "winograd")
    direct = [xpconv.conv2d(x, w, algorithm=chosen, **kw), *xpconv.conv2d_backward(dy, x, w, algorithm=chosen, **kw)]
    for a, b in zip(tuned, direct, strict=True):
        np.testing.assert_array_equal(as_numpy(a), as_numpy(b))


def test_the_layer_uses_the_tuned_algorithm(rng, monkeypatch):
    _record(monkeypatch, delays={"im2col": 0.05, "kn2row": 0.05})
    layer = nn.Conv2d(3, 4, 3, padding=1, dtype="float64", seed=0)
    x = rng.standard_normal((2, 3, 8, 8))
    with xpconv.autotune():
        y = layer(x)
    assert layer._ctx.algorithm == "winograd"
    np.testing.assert_allclose(y, xpconv.conv2d(x, layer.weight.data, layer.bias.data, padding=1), rtol=1e-12)


class _Clock:
    """A backend stand-in whose clock reads the seconds each candidate's step reports."""

    def times(self, fn, repeats, warmup):
        return [fn() for _ in range(repeats)]


def test_a_candidate_that_cannot_run_is_left_out():
    def step(name):
        if name == "fast-but-capped":
            raise ValueError("max_workspace_bytes is too small")
        return {"slow": 2.0, "quick": 1.0}[name]

    assert tuned_choice("k", ["fast-but-capped", "slow", "quick"], step, _Clock()) == "quick"
    assert xpconv.autotune_choices() == {"k": "quick"}
    assert tuned_choice("k", ["slow"], step, _Clock()) == "quick"                  # cached: not timed again
    assert tuned_choice("none", ["fast-but-capped"], step, _Clock()) == "fast-but-capped"
    assert tuned_choice("none-left", ["fast-but-capped", "fast-but-capped"], step, _Clock()) == "fast-but-capped"
    assert "none-left" not in xpconv.autotune_choices()
