"""xpconv.save / xpconv.load: round trips across backends, and clear errors that leave the model unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

import xpconv
from conftest import as_numpy
from xpconv import nn


def _model(seed, backend="numpy", out=3):
    on = dict(backend=backend)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, seed=seed, **on), nn.ReLU(**on), nn.Flatten(**on),
                         nn.Linear(2 * 4 * 4, out, seed=seed + 1, **on))


def _predict(model, x):
    model.eval()
    return as_numpy(model(model.backend.asarray(x, dtype="float32")))


def _state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_round_trip_across_backends(backend, tmp_path, rng):
    x = rng.standard_normal((5, 1, 4, 4))
    src = _model(seed=1, backend=backend)
    path = xpconv.save(src, tmp_path / "m.npz", metadata={"note": "hi"})
    dst = _model(seed=7)                                   # different weights, NumPy backend
    assert not np.allclose(_predict(dst, x), _predict(src, x))
    assert xpconv.load(path, dst) is dst
    np.testing.assert_allclose(_predict(dst, x), _predict(src, x), rtol=1e-5, atol=1e-6)
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value)   # bit-exact float32 copy
    assert xpconv.io.read_metadata(path)["extra"] == {"note": "hi"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]          # no temporary file left behind


def test_load_rebuilds_recorded_architecture(backend, tmp_path, rng):
    from xpconv.models import small_cnn

    src = small_cnn(seed=3, backend=backend)
    xpconv.save(src, tmp_path / "m.npz")
    x = rng.standard_normal((4, 1, 8, 8))
    loaded = xpconv.load(tmp_path / "m.npz")                          # NumPy by default
    assert loaded.backend.name == "numpy"
    np.testing.assert_allclose(_predict(loaded, x), _predict(src, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        xpconv.load(tmp_path / "m.npz", src, backend="numpy")


def test_missing_truncated_and_foreign_files(tmp_path):
    model = _model(seed=1)
    before = _state(model)
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        xpconv.load(tmp_path / "nope.npz", model)
    path = xpconv.save(model, tmp_path / "m.npz")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            xpconv.load(path, model)
    np.savez(tmp_path / "other.npz", w=np.zeros(3))
    with pytest.raises(ValueError, match="not an xpconv model file"):
        xpconv.load(tmp_path / "other.npz", model)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        xpconv.load(tmp_path / "text.npz", model)
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_version_and_arch_checks(tmp_path):
    model = _model(seed=1)
    path = xpconv.save(model, tmp_path / "m.npz")
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["__xpconv_meta__"]))
    arrays["__xpconv_meta__"] = np.array(json.dumps({**meta, "version": 99}))
    np.savez(tmp_path / "v99.npz", **arrays)
    with pytest.raises(ValueError, match="version 99"):
        xpconv.load(tmp_path / "v99.npz", model)
    with pytest.raises(ValueError, match="records no architecture"):
        xpconv.load(path)


def test_mismatched_model_is_left_unchanged(tmp_path):
    path = xpconv.save(_model(seed=1, out=3), tmp_path / "m.npz")
    other = _model(seed=5, out=4)                     # Linear 32 -> 4 instead of 32 -> 3
    before = _state(other)
    with pytest.raises(ValueError, match=r"3.bias.*shape \(3,\).*\(4,\)|3.weight.*shape"):
        xpconv.load(path, other)
    deeper = nn.Sequential(*_model(seed=5), nn.ReLU())
    with pytest.raises(ValueError, match=r"missing keys|unexpected keys"):
        xpconv.load(path, nn.Sequential(nn.Linear(2, 2)))
    for key, value in before.items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    xpconv.load(path, deeper)                         # same parameters, one more parameter-free layer: fits


def test_load_state_dict_copies_and_validates():
    model = _model(seed=1)
    state = _model(seed=2).state_dict()
    model.load_state_dict(state)
    kept = model.state_dict()["0.weight"].copy()
    state["0.weight"][...] = 0.0                       # the caller's arrays are not aliased
    np.testing.assert_array_equal(model.state_dict()["0.weight"], kept)
    before = _state(model)
    bad = dict(state, **{"3.bias": np.array(["a", "b", "c"])})
    with pytest.raises(ValueError, match="non-numeric"):
        model.load_state_dict(bad)
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


@pytest.mark.parametrize("name", ["allow_pickle", "file"])
def test_save_refuses_state_keys_that_np_savez_would_take_as_its_own_arguments(tmp_path, name):
    model = nn.Sequential(nn.Linear(2, 2, seed=0))
    model.register_buffer(name, np.zeros(1))
    with pytest.raises(ValueError, match=rf"\['{name}'\] are reserved"):
        xpconv.save(model, tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []
