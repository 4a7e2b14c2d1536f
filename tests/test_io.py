"""xpconv.save / xpconv.load: round trips across backends, and clear errors that leave the model unchanged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

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
    for name, text in (("text.npz", "hello"), ("meta.json", '{"format": "xpconv-model"}'), ("empty.npz", "")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name}: not an \.npz archive"):
            xpconv.load(tmp_path / name, model)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single\.npy: not an \.npz archive"):
        xpconv.load(tmp_path / "single.npy", model)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        xpconv.load(tmp_path, model)
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


def _with_meta(tmp_path, name, **changes):
    """A copy of a valid model file whose metadata has ``changes`` (a value None deletes the key)."""
    path = xpconv.save(_model(seed=1), tmp_path / "ok.npz")
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["__xpconv_meta__"]))
    if "whole" in changes:
        meta = changes["whole"]
    else:
        for key, value in changes.items():
            meta.pop(key) if value is None else meta.__setitem__(key, value)
    arrays["__xpconv_meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("changes, match", [
    (dict(whole=[1, 2]), "metadata is a JSON list"),
    (dict(whole=3), "metadata is a JSON int"),
    (dict(whole="xpconv-model"), "metadata is a JSON str"),
    (dict(extra=None), "'extra' must be an object"),
    (dict(extra="hello"), "'extra' must be an object"),
    (dict(arch=[1]), "'arch' must be null or"),
    (dict(arch={"name": 3}), "'arch' must be null or"),
    (dict(arch={"name": "small_cnn", "kwargs": [1]}), "'arch' must be null or"),
])
def test_metadata_of_the_wrong_shape_is_a_value_error_naming_the_file(tmp_path, changes, match):
    path = _with_meta(tmp_path, "bad.npz", **changes)
    for read in (xpconv.io.read_metadata, xpconv.load, lambda p: xpconv.load(p, _model(seed=1))):
        with pytest.raises(ValueError, match=rf"bad\.npz: .*{match}"):
            read(path)


@pytest.mark.parametrize("kwargs", [
    {"channels": [32]}, {"channels": [32, 64, 128]}, {"channels": "ab"}, {"channels": 5},
    {"in_channels": "1"}, {"in_channels": 1.5}, {"num_classes": True}, {"image_size": 2}, {"image_size": 1e300},
    {"dtype": "int8"}, {"no_such_argument": 1}, {"backend": "numpy"},
])
def test_architecture_records_that_cannot_be_built_are_value_errors_naming_the_file(tmp_path, kwargs):
    from xpconv.models import small_cnn

    path = xpconv.save(small_cnn(seed=0), tmp_path / "m.npz")
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["__xpconv_meta__"]))
    meta["arch"]["kwargs"].update(kwargs)
    arrays["__xpconv_meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad\.npz: the recorded architecture cannot be built"):
        xpconv.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("name, kwargs", [
    ("small_cnn", {"channels": [100_000, 100_000]}),    # about 90 G values: 335 GiB in float32
    ("resnet20", {"num_classes": 100_000}),
    ("lenet5", {"in_channels": 100_000}),
])
def test_an_architecture_larger_than_the_stored_arrays_is_refused_before_it_is_allocated(tmp_path, name, kwargs):
    """The record asks for far more values than the file stores: a ValueError naming the file, with the
    memory used while trying bounded by the file's size, not by the record (measured with tracemalloc)."""
    import tracemalloc

    from xpconv.models import MODELS

    path = xpconv.save(MODELS[name](), tmp_path / "m.npz")
    arrays = dict(np.load(path))
    stored = sum(a.nbytes for k, a in arrays.items() if k != "__xpconv_meta__")
    meta = json.loads(str(arrays["__xpconv_meta__"]))
    meta["arch"]["kwargs"].update(kwargs)
    arrays["__xpconv_meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "big.npz", **arrays)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"big\.npz: the recorded architecture cannot be built .*parameter and "
                                             r"buffer values allowed"):
            xpconv.load(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * stored + 2**20          # the file read, its arrays, and a model no larger than them


def test_a_budget_the_model_fits_changes_nothing():
    from xpconv.models import build_model, resnet20

    arch = resnet20().arch
    plain = build_model(arch).state_dict()
    exact = sum(v.size for v in plain.values())
    budgeted = build_model(arch, max_elements=exact).state_dict()
    assert budgeted.keys() == plain.keys()
    for key, value in plain.items():
        np.testing.assert_array_equal(budgeted[key], value)
    with pytest.raises(ValueError, match=f"more than the {exact - 1:,} parameter"):
        build_model(arch, max_elements=exact - 1)


def test_an_unreadable_file_is_a_permission_error(tmp_path):
    path = xpconv.save(_model(seed=1), tmp_path / "m.npz")
    path.chmod(0)
    code = f"import xpconv; xpconv.io.read_npz({str(path)!r})"
    # root reads any file: drop the capability that lets it (setpriv, util-linux) where we run as root
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if prefix and subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("running as root without setpriv: file permissions cannot be tested")
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"PermissionError: {path}: permission denied (cannot read the file)"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_permissions_of_an_ordinary_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = xpconv.save(_model(seed=1), tmp_path / "m.npz")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask == (tmp_path / "plain").stat().st_mode & 0o777
    path.chmod(0o640)                                   # overwriting keeps the file's mode, as open(..., "w") does
    xpconv.save(_model(seed=2), path)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    target = xpconv.io.atomic_write(tmp_path / "f.bin", b"old")

    def failing(f):
        f.write(b"new, partial")
        raise error("stop")

    with pytest.raises(error, match="stop"):
        xpconv.io.atomic_write(target, failing)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and target.read_bytes() == b"old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL          # the previous handler is back


def test_write_errors_name_the_target_not_the_temporary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-dir.*m\.npz: directory .*no-dir does not exist"):
        xpconv.save(_model(seed=1), tmp_path / "no-dir" / "m.npz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        xpconv.save(_model(seed=1), tmp_path)
    assert list(tmp_path.iterdir()) == []


SLOW_SAVE = """
import sys, time
import numpy as np
import xpconv
from xpconv import nn

def slow_savez(f, **arrays):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

np.savez = slow_savez
xpconv.save(nn.Sequential(nn.Linear(2, 2, seed=0)), sys.argv[1])
"""


def test_sigterm_during_a_save_removes_the_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "m.npz"
    xpconv.save(_model(seed=1), target)
    before = target.read_bytes()
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_SAVE), str(target)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout.readline() == "writing\n"
            assert len(list(tmp_path.iterdir())) == 2              # the temporary file exists mid-write
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGTERM, stderr  # ended as SIGTERM ends a process
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"] and target.read_bytes() == before


def test_a_changed_npy_header_byte_fails_the_crc_check(tmp_path):
    """'<f4' -> '>f4' in a member's .npy header is valid to np.load, which never reads to the member's CRC."""
    path = xpconv.save(_model(seed=1), tmp_path / "m.npz")
    blob = bytearray(path.read_bytes())
    at = blob.index(b"'descr': '<") + len(b"'descr': '")
    blob[at] = ord(">")
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"m\.npz: not a readable \.npz file.*Bad CRC-32 for file '0\.weight\.npy'"):
        xpconv.load(path, _model(seed=1))
