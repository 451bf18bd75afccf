"""Hostile use, second round: model files (compressed members, torn checkpoints, hostile headers, races,
file modes), the command line reading any file, the PyTorch interop, and every public attribute assigned
hostile values between calls.

Each test here failed on the code before its fix (checked by running it against that code).
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile

import numpy as np
import pytest
from _support import DATA

import fastbp
from fastbp import _io

REPO = pathlib.Path(fastbp.__file__).resolve().parent.parent
needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")


def _rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _small_net(backend=None, seed=1):
    return fastbp.Network([3, 4, 2], ["sigmoid", "identity"], loss="mse", seed=seed,
                          backend=backend or fastbp.BACKEND)


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


# --------------------------------------------------------------------------------------------------------
# Compressed members (zip bombs)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_load_refuses_compressed_members_even_of_a_valid_model(tmp_path, method):
    """A valid model re-zipped with compression used to load; fastbp never writes one, so it is refused."""
    net = _small_net()
    path = tmp_path / "model.npz"
    net.save(path)
    _rewrite(path, _members(path), compression=method)
    with pytest.raises(ValueError, match="is compressed") as info:
        fastbp.Network.load(path)
    assert str(path) in str(info.value) and ".npy'" in str(info.value), str(info.value)


def _patch_sizes(raw, name, declared):
    """Set the uncompressed size of member ``name`` to ``declared`` in its local header and the central
    directory (what a zip bomb lies about)."""
    raw = bytearray(raw)
    encoded = name.encode()
    position = 0
    while True:
        position = raw.find(b"PK\x03\x04", position)
        if position < 0:
            break
        length = int.from_bytes(raw[position + 26:position + 28], "little")
        if raw[position + 30:position + 30 + length] == encoded:
            raw[position + 22:position + 26] = declared.to_bytes(4, "little")
        position += 4
    position = 0
    while True:
        position = raw.find(b"PK\x01\x02", position)
        if position < 0:
            break
        length = int.from_bytes(raw[position + 28:position + 30], "little")
        if raw[position + 46:position + 46 + length] == encoded:
            raw[position + 24:position + 28] = declared.to_bytes(4, "little")
        position += 4
    return bytes(raw)


def _peak_rss_reset():
    """Reset the process's peak resident size (Linux: /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


@needs_proc
@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_small_compressed_member_that_lies_about_its_size_is_not_inflated(tmp_path, method):
    """256 MiB of zeros in a few hundred bytes (bzip2) or 40 KiB (LZMA), declaring the 26 floats the
    network needs: zipfile decompresses bzip2/LZMA input chunks without an output limit."""
    net = _small_net()
    path = tmp_path / "bomb.npz"
    net.save(path)
    members = _members(path)
    header = members["params.npy"][:128]
    members["params.npy"] = header + bytes(256 * 2**20)
    _rewrite(path, members, compression=method)
    del members
    path.write_bytes(_patch_sizes(path.read_bytes(), "params.npy", len(header) + 8 * net.n_params))
    assert path.stat().st_size < 2**20
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak resident size here")
    before = _rss_mib()
    with pytest.raises(ValueError, match="is compressed"):
        fastbp.Network.load(path)
    assert _peak_rss_mib() - before < 64, f"peak +{_peak_rss_mib() - before:.0f} MiB"


def test_a_corrupt_lzma_member_raises_value_error_not_lzma_error(tmp_path):
    net = _small_net()
    path = tmp_path / "model.npz"
    net.save(path)
    _rewrite(path, _members(path), compression=zipfile.ZIP_LZMA)
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x03\x04") + 30 + len("format_version.npy")
    raw[start + 9:start + 40] = b"\xff" * 31  # inside the first member's LZMA stream
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        fastbp.Network.load(path)


# --------------------------------------------------------------------------------------------------------
# Torn checkpoints
# --------------------------------------------------------------------------------------------------------


def test_save_while_another_thread_fits_writes_only_states_training_had(tmp_path, backend):
    rng = np.random.default_rng(0)
    net = fastbp.Network([2, 3, 1], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = rng.normal(size=(300, 2)), rng.normal(size=(300, 1))
    states = {net.params.tobytes()}
    done = threading.Event()
    errors = []

    def train():
        try:
            for _ in range(60):
                net.fit(X, Y, epochs=1, batch_size=1, lr=1e-3, shuffle=False)
                states.add(net.params.tobytes())  # the state between two fits: what a save may see
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    paths = []
    while not done.is_set() or len(paths) < 5:
        path = tmp_path / f"checkpoint-{len(paths)}.npz"
        net.save(path)
        paths.append(path)
    trainer.join()
    assert not errors, errors
    for path in paths:
        loaded = fastbp.Network.load(path)  # passes its checksum
        assert loaded.params.tobytes() in states, f"{path.name}: a state training never had"
        again = tmp_path / "again.npz"
        loaded.save(again)
        assert fastbp.Network.load(again).params.tobytes() == loaded.params.tobytes()


def test_save_from_a_fit_callback_saves_the_epoch_end_state(tmp_path, backend):
    rng = np.random.default_rng(1)
    net = fastbp.Network([2, 3, 1], ["tanh", "identity"], seed=0, backend=backend)
    X, Y = rng.normal(size=(40, 2)), rng.normal(size=(40, 1))
    seen = []

    def checkpoint(epoch, logs):
        net.save(tmp_path / f"epoch-{epoch}.npz")
        seen.append(net.params.tobytes())

    net.fit(X, Y, epochs=3, batch_size=8, lr=0.01, callbacks=[checkpoint], shuffle=False)
    for epoch in range(3):
        assert fastbp.Network.load(tmp_path / f"epoch-{epoch}.npz").params.tobytes() == seen[epoch]


# --------------------------------------------------------------------------------------------------------
# save refuses what load refuses; file modes; paths
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_save_refuses_non_finite_parameters_and_writes_nothing(tmp_path, bad):
    net = _small_net()
    net.weights[1][0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.save(tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_more_layers_than_load_accepts(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "_MAX_LAYERS", 3)
    net = fastbp.Network([2, 2, 2, 1], ["tanh", "tanh", "identity"], seed=0)
    with pytest.raises(ValueError, match="layer"):
        net.save(tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_creates_files_with_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        _small_net().save(tmp_path / "model.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "model.npz").st_mode) == 0o666 & ~umask


def test_resaving_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "model.npz"
    _small_net().save(path)
    os.chmod(path, 0o640)
    _small_net(seed=2).save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.chmod(path, 0o604)
    _small_net(seed=3).save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604


def test_bytes_paths_save_and_load(tmp_path):
    net = _small_net()
    path = os.fsencode(tmp_path / "model.npz")
    net.save(path)
    assert fastbp.Network.load(path).params.tobytes() == net.params.tobytes()
    with pytest.raises(TypeError):
        fastbp.Network.load(12)
    with pytest.raises((TypeError, ValueError)):
        fastbp.Network.load("model\0.npz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_load_of_a_path_that_becomes_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The check on the name says 'regular file'; the open then finds a FIFO: refused, not blocked."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    monkeypatch.setattr(os.path, "isfile", lambda name: True)  # what a swap after the check looks like
    outcome = []

    def attempt():
        try:
            fastbp.Network.load(fifo)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the stuck open before failing
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        worker.join(10)
        pytest.fail("load blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    assert "regular file" in str(outcome[0])


# --------------------------------------------------------------------------------------------------------
# Hostile .npy headers
# --------------------------------------------------------------------------------------------------------


def _npy(header_text, payload=b"", version=b"\x01\x00"):
    header = header_text.encode("latin1")
    header = header + b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header + payload


HOSTILE_HEADERS = {
    "code": "{'descr': '<f8', 'fortran_order': False, 'shape': (26,), 'x': __import__('os').system('true')}",
    "not a dict": "[1, 2, 3]",
    "unknown descr": "{'descr': 'xyzzy', 'fortran_order': False, 'shape': (26,), }",
    "negative shape": "{'descr': '<f8', 'fortran_order': False, 'shape': (-26,), }",
    "shape not a tuple": "{'descr': '<f8', 'fortran_order': False, 'shape': 26, }",
    "missing keys": "{'descr': '<f8'}",
    "deep nesting": "{'descr': " + "[" * 3000 + "]" * 3000 + ", 'fortran_order': False, 'shape': (26,), }",
    "fortran order not bool": "{'descr': '<f8', 'fortran_order': 'yes', 'shape': (26,), }",
    "structured dtype": "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (26,), }",
    "unterminated": "{'descr': '<f8', 'fortran_order': False, 'shape': (26,",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_npy_headers_are_refused_naming_file_member_and_problem(tmp_path, case):
    net = _small_net()
    path = tmp_path / "model.npz"
    net.save(path)
    members = _members(path)
    members["params.npy"] = _npy(HOSTILE_HEADERS[case], bytes(26 * 8))
    _rewrite(path, members)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as info:
            fastbp.Network.load(path)
    message = str(info.value)
    assert str(path) in message and "params.npy" in message, message
    assert any(word in message for word in ("header", "dtype", "shape")), message


def test_a_huge_header_length_or_bad_version_is_refused_naming_the_member(tmp_path):
    net = _small_net()
    path = tmp_path / "model.npz"
    net.save(path)
    members = _members(path)
    for hostile in (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200,
                    b"\x93NUMPY\x09\x00" + bytes(64),
                    b"\x93NUMPX\x01\x00" + bytes(64),
                    b"\x93NU"):
        members["layer_sizes.npy"] = hostile
        _rewrite(path, members)
        with pytest.raises(ValueError) as info:
            fastbp.Network.load(path)
        assert str(path) in str(info.value) and "layer_sizes.npy" in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------


SCALAR = DATA / "worked-examples" / "scalar-1-1-1.json"


def _limit_memory():  # pragma: no cover - runs in the child
    import resource
    # Not under AddressSanitizer (.ci/sanitize): its shadow memory needs terabytes of address space.
    if not os.environ.get("FASTBP_SANITIZE_RUN"):
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def _run_cli(*args, timeout=60):
    """``python -m fastbp ARGS`` with 4 GiB of address space; returns (status, stdout, stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        result = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True,
                                text=True, env=env, timeout=timeout, cwd=tempfile.gettempdir(),
                                preexec_fn=_limit_memory if sys.platform.startswith("linux") else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fastbp {' '.join(map(str, args))} did not finish in {timeout} s (blocked?)")
    return result.returncode, result.stdout, result.stderr


def _assert_usage_error(status, out, err, *words):
    assert "Traceback" not in out + err, err
    assert status == 2, (status, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(word in lines[-1] for word in words), err


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
def test_cli_refuses_special_files_with_exit_2(tmp_path, special):
    if special == "/dev/zero":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        path = "/dev/zero"
    elif special == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("needs os.mkfifo")
        path = tmp_path / "spec.json"
        os.mkfifo(path)
    else:
        path = tmp_path
    for command in ("explain", "diagnose"):
        status, out, err = _run_cli(command, path)
        _assert_usage_error(status, out, err, str(path))


def test_cli_refuses_a_spec_larger_than_the_limit_without_reading_it(tmp_path, monkeypatch, capsys):
    from fastbp import cli
    path = tmp_path / "big.json"
    path.write_text(SCALAR.read_text())
    monkeypatch.setattr(cli, "MAX_SPEC_BYTES", 100)
    assert cli.main(["diagnose", str(path)]) == 2
    err = capsys.readouterr().err
    assert "larger than a spec may be" in err and "Traceback" not in err


def _spec_with(tmp_path, name, **changes):
    import json
    spec = json.loads(SCALAR.read_text())
    spec.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


HUGE = 10**400


@pytest.mark.parametrize("field", ["lr", "weight", "x", "y", "class index", "layer size", "deep", "digits"])
def test_cli_hostile_specs_exit_2_with_a_message(tmp_path, capsys, field):
    from fastbp import cli
    if field == "lr":
        path = _spec_with(tmp_path, field, lr=HUGE)
    elif field == "weight":
        path = _spec_with(tmp_path, field, weights=[[[HUGE]], [[1.0]]])
    elif field == "x":
        path = _spec_with(tmp_path, field, x=[-HUGE])
    elif field == "y":
        path = _spec_with(tmp_path, field, y=[HUGE])
    elif field == "class index":
        path = _spec_with(tmp_path, field, loss="cross_entropy", layer_sizes=[1, 1, 2],
                          weights=[[[0.5]], [[1.0], [1.0]]], biases=[[0.0], [0.0, 0.0]], x=[[1.0]], y=[HUGE])
    elif field == "layer size":
        path = _spec_with(tmp_path, field, layer_sizes=[1, HUGE, 1])
    elif field == "deep":
        path = tmp_path / "deep.json"
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path = tmp_path / "digits.json"
        path.write_text('{"lr": ' + "9" * 5000 + "}")
    for command in ("explain", "diagnose", "check-gradients"):
        status = cli.main([command, str(path)])
        err = capsys.readouterr().err
        assert status == 2, (command, err)
        assert err.count("\n") == 1 and str(path) in err, err
        assert len(err) < 400, err  # the 400-digit number is not echoed


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--epochs", "-3"], ["--batch-size", "0"],
                                    ["--lr", "nan"], ["--lr", "-1"], ["--lr", "inf"], ["--seed", "-1"],
                                    ["--seed", str(10**400)], ["--epochs", str(10**400)]])
def test_demo_refuses_out_of_range_options_with_exit_2(option):
    status, out, err = _run_cli("demo", *option)
    _assert_usage_error(status, out, err, option[0])


# --------------------------------------------------------------------------------------------------------
# PyTorch interop
# --------------------------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def test_meta_tensors_are_refused_with_value_error():
    torch = _torch()
    net = fastbp.Network([2, 3], "identity", seed=0)
    state = net.state_dict()
    state["0.weight"] = torch.empty(3, 2, device="meta", dtype=torch.float64)
    before = net.params.tobytes()
    with pytest.raises(ValueError, match="meta"):
        net.load_state_dict(state)
    assert net.params.tobytes() == before
    with pytest.raises(ValueError, match="meta"):
        fastbp.Network.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 3, device="meta")))
    with pytest.raises(ValueError, match="meta"):
        fastbp.Network.from_torch(torch.nn.Linear(2, 3, device="meta"), dtype="float64")


def test_deeply_nested_and_cyclic_sequentials_are_refused_with_value_error():
    torch = _torch()
    module = torch.nn.Sequential(torch.nn.Linear(2, 1))
    for _ in range(3000):
        module = torch.nn.Sequential(module)
    with pytest.raises(ValueError, match="nested"):
        fastbp.Network.from_torch(module)
    cyclic = torch.nn.Sequential(torch.nn.Linear(2, 2))
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="nested"):
        fastbp.Network.from_torch(cyclic)
    shallow = torch.nn.Linear(2, 1)
    for _ in range(50):  # a nesting real code might have still converts
        shallow = torch.nn.Sequential(shallow)
    assert fastbp.Network.from_torch(shallow).layer_sizes == (2, 1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_values_beyond_the_networks_range_are_refused_without_a_warning(dtype):
    net = fastbp.Network([2, 3], "identity", seed=0, dtype=dtype)
    state = {key: np.asarray(value) for key, value in net.state_dict().items()}
    before = net.params.tobytes()
    huge_value = np.longdouble("1e400")
    huge = np.full((3, 2), huge_value) if np.isfinite(huge_value) else None
    cases = [np.full((3, 2), 1e300)] if dtype == "float32" else []
    cases += [huge] if huge is not None else []
    if not cases:
        pytest.skip("longdouble is float64 here")
    for value in cases:
        state["0.weight"] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="range"):
                net.load_state_dict(state)
        assert net.params.tobytes() == before


def test_from_torch_refuses_values_beyond_float32_without_a_warning():
    torch = _torch()
    linear = torch.nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.fill_(1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="range"):
            fastbp.Network.from_torch(linear, dtype="float32")


@pytest.mark.parametrize("dtype", [None, "float64", "float32"])
def test_complex_modules_and_tensors_are_refused_with_type_error(dtype):
    torch = _torch()
    linear = torch.nn.Linear(2, 1, dtype=torch.complex128)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1 + 2j, 3 - 1j]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="complex"):
            fastbp.Network.from_torch(torch.nn.Sequential(linear), dtype=dtype)
        net = fastbp.Network([2, 1], "identity", seed=0, dtype=dtype or "float64")
        before = net.params.tobytes()
        for value in (linear.weight.detach(), linear.weight.detach().numpy()):
            with pytest.raises(TypeError, match="complex"):
                net.load_state_dict({"0.weight": value, "0.bias": np.zeros(1)})
        assert net.params.tobytes() == before


# --------------------------------------------------------------------------------------------------------
# Every public attribute of every public object, assigned hostile values between calls
# --------------------------------------------------------------------------------------------------------


def _hostile_values():
    big = fastbp.Network([5, 7, 2], ["relu", "identity"], seed=3)
    return [None, True, 0, -1, 2**63, 10**400, -10**400, 0.5, -0.5, float("nan"), float("inf"), -float("inf"),
            1e308, 1j, "x", b"x", "", [], [1, 2], (3,), {}, object(), np.nan, np.float32(2.0),
            np.array([np.nan]), np.zeros(3), np.zeros((2, 2)), np.zeros(10**4), np.array(["a"]),
            np.zeros(1, dtype=complex), np.ones(13), np.ones(13, dtype=np.float32), big, big.params,
            lambda *args: 1e300, lambda *args: -1.0, lambda *args: float("nan"), fastbp.StepDecay(0.1)]


ASSIGN_ERRORS = (ValueError, TypeError, AttributeError)
CALL_ERRORS = (ValueError, TypeError, FloatingPointError)

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Rprop")


def _public_data_attributes(obj):
    names = []
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # pragma: no cover - a property that needs state
            continue
        if callable(value) and not isinstance(value, (np.ndarray, fastbp.Network)):
            if not isinstance(getattr(type(obj), name, None), property):
                continue
        names.append(name)
    return names


def _problem(backend):
    rng = np.random.default_rng(0)
    net = fastbp.Network([2, 3, 1], ["tanh", "identity"], seed=0, backend=backend)
    return net, rng.normal(size=(8, 2)), rng.normal(size=(8, 1))


def _calls(kind, obj, context, tmp_path):
    """The calls that use ``obj`` after its attribute was assigned: (name, thunk)."""
    net, X, Y = context["net"], context["X"], context["Y"]
    if kind == "Network":
        return [("predict", lambda: obj.predict(X)), ("loss", lambda: obj.loss(X, Y)),
                ("gradients", lambda: obj.gradients(X, Y)), ("trace", lambda: obj.trace(X[:2], Y[:2])),
                ("fit", lambda: obj.fit(X, Y, epochs=2, batch_size=3)),
                ("train_step", lambda: fastbp.SGD(obj, 0.01, momentum=0.9).train_step(X, Y)),
                ("save/load", lambda: fastbp.Network.load(obj.save(tmp_path / "m.npz") or tmp_path / "m.npz")),
                ("copy", lambda: obj.copy().predict(X)), ("repr", lambda: repr(obj)),
                ("diagnose", lambda: str(fastbp.diagnose(obj, X, Y))),
                ("state_dict", lambda: obj.state_dict())]
    if kind in OPTIMIZERS:
        return [("train_step", lambda: obj.train_step(X, Y)), ("step", lambda: obj.step(net.gradients(X, Y))),
                ("fit", lambda: net.fit(X, Y, epochs=2, batch_size=3, optimizer=obj)),
                ("repr", lambda: repr(obj))]
    if kind == "LBFGS":
        return [("fit", lambda: net.fit(X, Y, optimizer=obj)), ("minimize", lambda: obj.minimize(X, Y)),
                ("repr", lambda: repr(obj))]
    if kind in ("StepDecay", "InverseScaling"):
        return [("call", lambda: obj(3)), ("fit", lambda: net.fit(X, Y, epochs=3, batch_size=4, lr_schedule=obj))]
    if kind == "Gradients":
        return [("step", lambda: fastbp.SGD(net, 0.1).step(obj)), ("repr", lambda: repr(obj))]
    if kind in ("History", "Trace"):
        return [("repr", lambda: repr(obj)), ("epochs", lambda: getattr(obj, "epochs", None))]
    raise AssertionError(kind)


def _fresh(kind, context):
    net, X, Y = context["net"], context["X"], context["Y"]
    return {"Network": lambda: net.copy(), "SGD": lambda: fastbp.SGD(net, 0.01, momentum=0.5),
            "Adam": lambda: fastbp.Adam(net, amsgrad=True), "AdamW": lambda: fastbp.AdamW(net),
            "RMSprop": lambda: fastbp.RMSprop(net, momentum=0.5, centered=True),
            "Rprop": lambda: fastbp.Rprop(net), "LBFGS": lambda: fastbp.LBFGS(net, max_iter=5),
            "StepDecay": lambda: fastbp.StepDecay(0.05, 0.5, 2),
            "InverseScaling": lambda: fastbp.InverseScaling(0.05, 0.5),
            "Gradients": lambda: net.gradients(X, Y), "Trace": lambda: net.trace(X[:2], Y[:2]),
            "History": lambda: net.copy().fit(X, Y, epochs=1)}[kind]()


@pytest.mark.parametrize("kind", ["Network", *OPTIMIZERS, "LBFGS", "StepDecay", "InverseScaling",
                                  "Gradients", "Trace", "History"])
def test_assigning_every_public_attribute_hostile_values_never_crashes(backend, kind, tmp_path):
    net, X, Y = _problem(backend)
    context = {"net": net, "X": X, "Y": Y}
    names = _public_data_attributes(_fresh(kind, context))
    assert names, kind
    values = _hostile_values()
    failures = []
    for name in names:
        for value in values:
            obj = _fresh(kind, context)
            net_before = net.params.tobytes()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    setattr(obj, name, value)
                except ASSIGN_ERRORS:
                    continue
                except Exception as error:
                    failures.append(f"{kind}.{name} = {value!r:.40}: {type(error).__name__}: {error}")
                    continue
                for call, thunk in _calls(kind, obj, context, tmp_path):
                    params_before = net.params.tobytes()
                    try:
                        thunk()
                    except CALL_ERRORS as error:
                        if not isinstance(error, FloatingPointError):
                            touched = net.params.tobytes() != params_before and call not in ("fit", "step")
                            if touched:
                                failures.append(f"{kind}.{name} = {value!r:.40}; {call}: changed the "
                                                "parameters and raised")
                    except Exception as error:
                        failures.append(f"{kind}.{name} = {value!r:.40}; {call}: "
                                        f"{type(error).__name__}: {str(error)[:120]}")
            if kind not in (*OPTIMIZERS, "LBFGS", "StepDecay", "InverseScaling", "Gradients"):
                assert net.params.tobytes() == net_before or kind == "History"
            np.copyto(net.params, np.frombuffer(net_before, dtype=net.params.dtype))
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} in all)"


@pytest.mark.parametrize("count", [10**400, 2**63, 2**40])
def test_thread_counts_beyond_a_c_int_are_value_errors(count):
    pytest.importorskip("threadpoolctl")
    with pytest.raises(ValueError, match="at most"):
        fastbp.set_num_threads(count)
    with pytest.raises(ValueError, match="at most"):
        with fastbp.num_threads(count):
            pass
    net, X, Y = _problem(fastbp.BACKEND)
    before = net.params.tobytes()
    with pytest.raises(ValueError, match="threads"):
        net.fit(X, Y, threads=count)
    assert net.params.tobytes() == before


def test_state_dict_while_another_thread_fits_gives_states_training_had(backend):
    """The sibling readers of save: state_dict (and to_torch) copy the parameters once, consistently."""
    rng = np.random.default_rng(2)
    net = fastbp.Network([2, 3, 1], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 1))
    net.state_dict()  # imports torch (when installed) before the race, not during it
    states = {net.params.tobytes()}
    done = threading.Event()

    def train():
        try:
            for _ in range(20):
                net.fit(X, Y, epochs=1, batch_size=1, lr=1e-3, shuffle=False)
                states.add(net.params.tobytes())
        finally:
            done.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    snapshots = []
    while not done.is_set() or len(snapshots) < 5:
        state = net.state_dict()
        snapshots.append(np.concatenate([np.asarray(state[key]).ravel() for key in ("0.weight", "0.bias",
                                                                                  "2.weight", "2.bias")]))
    trainer.join()
    for snapshot in snapshots:
        assert snapshot.tobytes() in states


@pytest.mark.parametrize("option", [["--steps", str(10**400)], ["--steps", "0"], ["--decimals", str(10**400)],
                                    ["--eps", "1e400"]])
def test_cli_out_of_range_options_exit_2_without_echoing_huge_numbers(option, capsys):
    from fastbp import cli
    command = "check-gradients" if option[0] == "--eps" else "explain"
    assert cli.main([command, str(SCALAR), *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and len(err.splitlines()[-1]) < 300, err
