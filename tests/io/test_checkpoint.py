"""Optimizer state saved with the network: ``net.save(path, optimizer=opt)`` and
``Network.load(path, with_optimizer=True)`` resume training bit for bit (against a run that was never
saved), old files still load, and a damaged, edited or transplanted optimizer block is refused."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _io

OPTIMIZERS = {
    "sgd_momentum": lambda net: fastbp.SGD(net, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda net: fastbp.Adam(net, 1e-2, amsgrad=True),
    "adamw": lambda net: fastbp.AdamW(net, 3e-3),
    "rmsprop": lambda net: fastbp.RMSprop(net, 1e-2, momentum=0.5, centered=True),
    "rprop": lambda net: fastbp.Rprop(net, 1e-2),
}


def problem(backend, dtype="float64"):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    net = fastbp.Network([3, 5, 2], "tanh", loss="mse", seed=1, backend=backend, dtype=dtype)
    return net, X, Y


def train(net, optimizer, X, Y):
    # Unshuffled so that a resumed fit sees the same batches as the uninterrupted one; then single steps.
    net.fit(X, Y, optimizer=optimizer, epochs=2, batch_size=8, shuffle=False)
    for start in range(0, 40, 16):
        optimizer.train_step(X[start:start + 16], Y[start:start + 16])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_resumes_bit_for_bit(name, dtype, backend, tmp_path):
    net, X, Y = problem(backend, dtype)
    optimizer = OPTIMIZERS[name](net)
    train(net, optimizer, X, Y)
    path = tmp_path / "checkpoint.npz"
    net.save(path, optimizer=optimizer)
    train(net, optimizer, X, Y)  # the run that was never interrupted

    loaded, resumed = fastbp.Network.load(path, with_optimizer=True, backend=backend)
    assert type(resumed) is type(optimizer) and resumed.net is loaded
    assert resumed.hyperparameters() == optimizer.hyperparameters()
    train(loaded, resumed, X, Y)
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(resumed.state, optimizer.state)
    assert resumed.steps == optimizer.steps

    # Without the saved state the continuation differs: the comparison above can fail.
    fresh_net = fastbp.Network.load(path, backend=backend)
    train(fresh_net, OPTIMIZERS[name](fresh_net), X, Y)
    assert not np.array_equal(fresh_net.params, net.params)


def test_files_without_optimizer_state_still_load(backend, tmp_path):
    net, X, Y = problem(backend)
    path = tmp_path / "plain.npz"
    net.save(path)
    with zipfile.ZipFile(path) as archive:
        assert not any(name.startswith("optimizer_") for name in archive.namelist())
    np.testing.assert_array_equal(fastbp.Network.load(path).params, net.params)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        fastbp.Network.load(path, with_optimizer=True)
    # A file with optimizer state also loads as a plain network.
    optimizer = fastbp.Adam(net)
    optimizer.train_step(X, Y)
    net.save(tmp_path / "with.npz", optimizer=optimizer)
    plain = fastbp.Network.load(tmp_path / "with.npz")
    assert isinstance(plain, fastbp.Network)
    np.testing.assert_array_equal(plain.params, net.params)


def rewrite(path, replace=None, drop=(), method=zipfile.ZIP_STORED):
    """Rewrite the archive member by member, with ``replace`` {name: array} and without ``drop``."""
    members = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            members[info.filename] = archive.read(info)
    for name, array in (replace or {}).items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        members[name + ".npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            if name[:-4] not in drop:
                archive.writestr(name, data, compress_type=method if name.startswith("optimizer_state")
                                 else zipfile.ZIP_STORED)


def saved(tmp_path, backend, name="a.npz", seed=1):
    net, X, Y = problem(backend)
    if seed != 1:
        net = fastbp.Network([3, 5, 2], "tanh", loss="mse", seed=seed, backend=backend)
    optimizer = fastbp.SGD(net, 0.05, momentum=0.9)
    optimizer.train_step(X, Y)
    path = tmp_path / name
    net.save(path, optimizer=optimizer)
    return path, net, optimizer


def test_edited_or_transplanted_optimizer_state_is_refused(backend, tmp_path):
    path, net, optimizer = saved(tmp_path, backend)
    state = optimizer.state.copy()
    state[0, 0] += 1e-12
    rewrite(path, replace={"optimizer_state": state})
    with pytest.raises(ValueError, match="optimizer checksum mismatch"):
        fastbp.Network.load(path, with_optimizer=True)

    # The optimizer block of one file moved onto another network's file.
    first, _, _ = saved(tmp_path, backend, "first.npz")
    second, _, _ = saved(tmp_path, backend, "second.npz", seed=2)
    with zipfile.ZipFile(first) as archive:
        block = {name[:-4]: np.load(io.BytesIO(archive.read(name)))
                 for name in archive.namelist() if name.startswith("optimizer_")}
    rewrite(second, replace=block)
    with pytest.raises(ValueError, match="optimizer checksum mismatch"):
        fastbp.Network.load(second, with_optimizer=True)

    path, _, _ = saved(tmp_path, backend, "incomplete.npz")
    rewrite(path, drop=("optimizer_steps",))
    with pytest.raises(ValueError, match="incomplete.*optimizer_steps"):
        fastbp.Network.load(path, with_optimizer=True)

    path, _, _ = saved(tmp_path, backend, "compressed.npz")
    rewrite(path, method=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="compressed"):
        fastbp.Network.load(path, with_optimizer=True)

    path, _, _ = saved(tmp_path, backend, "class.npz")
    rewrite(path, replace={"optimizer_class": np.array("Adam")})
    with pytest.raises(ValueError, match="optimizer checksum mismatch"):
        fastbp.Network.load(path, with_optimizer=True)
    # Even with a checksum recomputed to match, a class that does not run the stored rule is refused.
    for class_name in ("Adam", "Optimizer"):
        path, _, optimizer = saved(tmp_path, backend, f"forged-{class_name}.npz")
        with zipfile.ZipFile(path) as archive:
            model_checksum = str(np.load(io.BytesIO(archive.read("checksum.npy"))))
        state_dict = optimizer.state_dict()
        forged = _io._optimizer_checksum(model_checksum, class_name, "sgd", state_dict["hyper"],
                                         state_dict["state"], np.int64(state_dict["steps"]))
        rewrite(path, replace={"optimizer_class": np.array(class_name),
                               "optimizer_checksum": np.array(forged)})
        with pytest.raises(ValueError, match=f"optimizer_class '{class_name}' with rule 'sgd'"):
            fastbp.Network.load(path, with_optimizer=True)


def test_bad_optimizer_arguments_write_nothing(backend, tmp_path):
    net, X, Y = problem(backend)
    other, _, _ = problem(backend)
    path = tmp_path / "never.npz"
    with pytest.raises(ValueError, match="another network"):
        net.save(path, optimizer=fastbp.SGD(other, 0.1, momentum=0.9))
    with pytest.raises(TypeError, match="LBFGS keeps no state"):
        net.save(path, optimizer=fastbp.LBFGS(net))
    with pytest.raises(TypeError, match="optimizer must be"):
        net.save(path, optimizer="adam")
    assert not os.path.exists(path)
    net.save(path)
    with pytest.raises(TypeError, match="with_optimizer"):
        fastbp.Network.load(path, with_optimizer="yes")


# ---- the other readers of the parameters, and History.plot's path -------------------------------------


@pytest.mark.parametrize("reader", ["copy", "copy_float32", "getstate", "deepcopy", "save_with_optimizer"])
def test_copy_and_getstate_while_another_thread_fits_give_states_training_had(reader, backend, tmp_path):
    import copy
    import threading

    rng = np.random.default_rng(2)
    net = fastbp.Network([2, 3, 1], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    optimizer = fastbp.SGD(net, 1e-3, momentum=0.9)
    X, Y = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 1))
    states = {net.params.tobytes() + optimizer.state.tobytes()}
    done = threading.Event()

    def train():
        try:
            for _ in range(15):
                net.fit(X, Y, epochs=1, batch_size=1, optimizer=optimizer, shuffle=False)
                states.add(net.params.tobytes() + optimizer.state.tobytes())
        finally:
            done.set()

    def read():
        if reader == "copy":
            return net.copy().params, None
        if reader == "copy_float32":
            return net.copy(dtype="float32").params, None
        if reader == "getstate":
            return net.__getstate__()["params"], None
        if reader == "deepcopy":
            return copy.deepcopy(net).params, None
        path = tmp_path / "live.npz"
        net.save(path, optimizer=optimizer)
        loaded, resumed = fastbp.Network.load(path, with_optimizer=True)
        return loaded.params, resumed.state

    trainer = threading.Thread(target=train)
    trainer.start()
    snapshots = []
    while not done.is_set() or len(snapshots) < 5:
        snapshots.append(read())
    trainer.join()
    params_states = [np.frombuffer(state[:net.params.nbytes], dtype=net.params.dtype) for state in states]
    for params, optimizer_state in snapshots:
        if reader == "copy_float32":
            assert any(np.array_equal(params, p.astype(np.float32)) for p in params_states)
        elif optimizer_state is None:
            assert any(params.tobytes() == p.tobytes() for p in params_states)
        else:
            assert params.tobytes() + optimizer_state.tobytes() in states


def history():
    return fastbp.History(loss=[1.0, 0.5, 0.4], loss_name="mse")


@pytest.mark.parametrize("path", [12, 1.5, ["a.png"], object()])
def test_plot_path_of_the_wrong_type_is_a_type_error(path):
    with pytest.raises(TypeError, match="path must be a str"):
        history().plot(path)


def test_plot_refuses_a_fifo_or_a_directory_without_blocking(tmp_path):
    import threading

    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    outcome = []

    def attempt(target):
        try:
            history().plot(target)
            outcome.append("written")
        except ValueError as error:
            outcome.append(str(error))

    for target in (fifo, tmp_path):
        worker = threading.Thread(target=attempt, args=(target,), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), f"plot blocked on {target}"
    assert len(outcome) == 2 and all("not a regular file" in text for text in outcome), outcome


def test_plot_writes_a_regular_file_and_refuses_an_unknown_extension(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    path.write_bytes(b"x" * 100000)  # replaced, not appended to
    history().plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 100000
    history().plot(str(tmp_path / "loss.svg"))
    assert (tmp_path / "loss.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="cannot write 'nope'"):
        history().plot(tmp_path / "loss.nope")
    assert not (tmp_path / "loss.nope").exists()
