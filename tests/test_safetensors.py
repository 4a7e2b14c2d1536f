"""Models saved as ``.safetensors``: round trips on every backend, files the safetensors library reads itself,
clear errors for missing, truncated and corrupt files, and the ``xpconv train --save`` / ``evaluate`` path."""
from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
from conftest import HAS_TORCH, as_numpy
from xpconv.cli import main
from xpconv.models import resnet20, small_cnn

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")


def _predict(model, x):
    model.eval()
    return as_numpy(model(model.backend.asarray(x, dtype="float32")))


def test_round_trip_on_every_backend_and_the_library_reads_the_file(backend, tmp_path, rng):
    src = small_cnn(seed=3, backend=backend)
    path = xpconv.save(src, tmp_path / "m.safetensors", metadata={"note": "hi"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]           # atomic: no temporary file left
    state = src.state_dict()
    read = safetensors_numpy.load_file(str(path))                              # the library's own NumPy loader
    assert read.keys() == state.keys()
    for key, value in state.items():
        assert read[key].dtype == value.dtype and read[key].shape == value.shape
        np.testing.assert_array_equal(read[key], value)
    loaded = xpconv.load(path, backend=backend)                                 # the architecture from the header
    x = rng.standard_normal((3, 1, 8, 8))
    np.testing.assert_array_equal(_predict(loaded, x), _predict(src, x))
    meta = xpconv.io.read_metadata(path)
    assert meta["arch"] == src.arch and meta["extra"] == {"note": "hi"}
    with open(path, "rb") as f:                                                 # the metadata as the spec puts it
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert json.loads(header["__metadata__"]["__xpconv_meta__"]) == meta


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_the_torch_loader_reads_the_file_with_its_dtypes(tmp_path):
    import safetensors.torch

    model = resnet20(seed=0, dtype="float64")
    path = xpconv.save(model, tmp_path / "r.safetensors")
    tensors = safetensors.torch.load_file(str(path))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(tensors[key].numpy(), value)
    assert str(tensors["bn1.num_batches_tracked"].dtype) == "torch.int64"
    assert tuple(tensors["bn1.num_batches_tracked"].shape) == ()
    assert str(tensors["conv1.weight"].dtype) == "torch.float64"


def test_npz_and_safetensors_hold_the_same_state(tmp_path):
    model = resnet20(seed=2)
    a = xpconv.load(xpconv.save(model, tmp_path / "m.npz"))
    b = xpconv.load(xpconv.save(model, tmp_path / "m.safetensors"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)


def test_foreign_missing_and_library_less_files(tmp_path, monkeypatch):
    model = small_cnn(seed=0)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors: no such file"):
        xpconv.load(tmp_path / "nope.safetensors", model)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(safetensors_numpy.save({"w": np.zeros(3, dtype=np.float32)}))
    with pytest.raises(ValueError, match=r"plain\.safetensors: not an xpconv model file"):
        xpconv.load(plain, model)
    npz = xpconv.save(model, tmp_path / "m.npz")
    renamed = tmp_path / "npz.safetensors"
    renamed.write_bytes(npz.read_bytes())
    with pytest.raises(ValueError, match=r"npz\.safetensors: not a readable \.safetensors file"):
        xpconv.load(renamed, model)
    monkeypatch.setitem(sys.modules, "safetensors", None)          # as if the package were not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    for call in (lambda: xpconv.save(model, tmp_path / "x.safetensors"), lambda: xpconv.load(plain),
                 lambda: xpconv.io.check_format("x.safetensors")):
        with pytest.raises(ImportError, match=r"pip install safetensors"):
            call()
    assert not (tmp_path / "x.safetensors").exists()
    xpconv.io.check_format("x.npz")                                  # .npz needs nothing more


def _decode(raw: bytes):
    """(arrays, __metadata__) of a safetensors file, or None where it is not one (independent: struct + json)."""
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    if len(raw) < 8:
        return None
    size = struct.unpack("<Q", raw[:8])[0]
    if 8 + size > len(raw):
        return None
    try:
        header = json.loads(raw[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", {})
    data = raw[8 + size:]
    arrays = {}
    for key, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in dtypes:
            return None
        begin, end = entry["data_offsets"]
        dtype = np.dtype(dtypes[entry["dtype"]])
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            return None
        arrays[key] = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).reshape(entry["shape"])
    return arrays, meta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_files_give_a_value_error_naming_the_file_or_exactly_what_their_bytes_say(tmp_path, data):
    """A truncation or changed bytes: a ValueError naming the file, or the model holds exactly what an independent
    decoder reads from the bytes (a changed weight byte is undetectable: safetensors has no checksum)."""
    model = small_cnn(seed=0, channels=(2, 2), image_size=4, num_classes=2)
    path = xpconv.save(model, tmp_path / "m.safetensors", metadata={"note": "x"})
    blob = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="changes")):
            blob[data.draw(st.integers(0, len(blob) - 1), label="offset")] = data.draw(st.integers(0, 255))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(blob))
    target = small_cnn(seed=1, channels=(2, 2), image_size=4, num_classes=2)
    before = target.state_dict()
    try:
        xpconv.load(bad, target)
    except ValueError as exc:
        message = str(exc)
    else:
        message = None
    if message is not None:
        assert str(bad) in message
        for key, value in target.state_dict().items():            # a refused file changes nothing
            np.testing.assert_array_equal(value, before[key])
        return
    decoded = _decode(bytes(blob))
    assert decoded is not None, "loaded a file an independent decoder cannot read"
    arrays, meta = decoded
    assert json.loads(meta["__xpconv_meta__"])["format"] == "xpconv-model"
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, arrays[key].astype(value.dtype))


def test_train_saves_safetensors_and_evaluate_reads_it(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    argv = ["train", "--limit", "100", "--batch-size", "50", "--seed", "1", "--epochs", "1", "--save", str(path)]
    assert main(argv) == 0
    assert set(safetensors_numpy.load_file(str(path))) == set(small_cnn().state_dict())
    assert xpconv.io.read_metadata(path)["extra"]["dataset"] == "digits"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path), "--limit", "100"]) == 0
    assert "accuracy" in capsys.readouterr().out
