"""Never crash, never lose work: divergence, overflow, Ctrl-C, threads, leaks, hostile model files.

Every test runs on both backends (the ``backend`` fixture) unless it is about the compiled kernel alone.
Measured figures (interrupt latency, memory growth, thread speed-up) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _io

FASTBP_ROOT = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)


# --------------------------------------------------------------------------------------------------------
# 2. Divergence
# --------------------------------------------------------------------------------------------------------


def _problem(backend, dtype="float64", n=24, seed=0):
    rng = np.random.default_rng(seed)
    net = fastbp.Network([3, 5, 2], ["tanh", "identity"], loss="mse", dtype=dtype, seed=seed, backend=backend)
    X = rng.normal(size=(n, 3)).astype(dtype)
    Y = rng.normal(size=(n, 2)).astype(dtype)
    return net, X, Y


def _replay_until_divergence(net, X, Y, batch_size, lrs, momentum=0.0):
    """train_step over the batches of each epoch (no shuffle); returns (epoch, batch) of the first
    FloatingPointError, with ``net`` left as just before it (train_step leaves it unchanged)."""
    opt = fastbp.SGD(net, lrs[0], momentum=momentum)
    for epoch, lr in enumerate(lrs):
        opt.lr = lr
        for batch, start in enumerate(range(0, X.shape[0], batch_size)):
            try:
                opt.train_step(X[start:start + batch_size], Y[start:start + batch_size])
            except FloatingPointError:
                return epoch, batch
    return None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fit_divergence_names_epoch_and_batch_and_restores_last_finite_state(backend, momentum):
    net, X, Y = _problem(backend)
    start = net.params.copy()
    lrs = [1e-3, 1e-3, 1e150]  # two good epochs, then an lr that overflows within a few batches
    optimizer = fastbp.SGD(net, lrs[0], momentum=momentum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError) as info:
            net.fit(X, Y, epochs=5, batch_size=4, shuffle=False, optimizer=optimizer,
                    lr_schedule=lambda epoch: lrs[min(epoch, 2)])
    error = info.value
    message = str(error)
    assert f"epoch {error.epoch + 1}" in message and f"batch {error.batch + 1}" in message
    assert error.epoch == 2
    assert isinstance(error.history, fastbp.History) and error.history.epochs == 2
    assert all(np.isfinite(error.history.loss))
    assert np.isfinite(net.params).all()
    # The parameters are exactly those before the batch that diverged: replayed with train_step.
    replay = net.copy()
    replay.params[...] = start
    where = _replay_until_divergence(replay, X, Y, 4, lrs, momentum)
    assert where == (error.epoch, error.batch)
    assert replay.params.tobytes() == net.params.tobytes()


def test_fit_divergence_from_data_overflow(backend):
    """A batch whose loss overflows (finite but huge inputs) stops before updating with it."""
    net, X, Y = _problem(backend)
    Y = Y.copy()
    Y[13] = 1e200  # batch 3 of size 4 (rows 12..15): its loss is inf
    replay = net.copy()
    with pytest.raises(FloatingPointError, match=r"epoch 1 of 2, batch 4 of 6") as info:
        net.fit(X, Y, epochs=2, batch_size=4, shuffle=False, lr=0.01)
    assert (info.value.epoch, info.value.batch) == (0, 3)
    assert info.value.history.epochs == 0
    assert _replay_until_divergence(replay, X, Y, 4, [0.01, 0.01]) == (0, 3)
    assert replay.params.tobytes() == net.params.tobytes()


def test_fit_divergence_with_shuffle_keeps_finite_parameters(backend):
    net, X, Y = _problem(backend, n=64)
    with pytest.raises(FloatingPointError) as info:
        net.fit(X, Y, epochs=3, batch_size=8, lr=1e200, seed=1)
    assert np.isfinite(net.params).all()
    assert "epoch" in str(info.value) and "batch" in str(info.value)
    assert 0 <= info.value.batch < 8


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_step_divergence_leaves_parameters_unchanged(backend, dtype):
    for options in ({"lr": 1e300 if dtype == "float64" else 1e38},
                    {"lr": 1e30, "momentum": 0.5, "weight_decay": 1e30}):
        net, X, Y = _problem(backend, dtype)
        opt = fastbp.SGD(net, **options)
        fastbp.SGD(net, 1e-3).train_step(X, Y)
        before, velocity = net.params.tobytes(), opt.velocity.tobytes()
        with pytest.raises(FloatingPointError):
            for _ in range(10):
                opt.train_step(X * 1e3, Y * 1e3)
                before, velocity = net.params.tobytes(), opt.velocity.tobytes()
        assert net.params.tobytes() == before and opt.velocity.tobytes() == velocity
        assert np.isfinite(net.params).all()


def test_step_divergence_leaves_parameters_unchanged(backend):
    """Found by the fuzzer: SGD.step with a huge lr wrote inf into the parameters (and warned)."""
    net, X, Y = _problem(backend, "float32")
    grads = fastbp.Gradients(0.0, [np.full(W.shape, 1e10, np.float32) for W in net.weights],
                             [np.full(b.shape, -1e10, np.float32) for b in net.biases])
    before = net.params.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match="step"):
            fastbp.SGD(net, 3.4e38).step(grads)
    assert net.params.tobytes() == before


# --------------------------------------------------------------------------------------------------------
# No overflow warnings from sigmoid / tanh / softmax at any magnitude
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation,loss", [("sigmoid", "half_sse"), ("tanh", "mse"),
                                             ("identity", "cross_entropy"), ("sigmoid", "cross_entropy")])
def test_no_overflow_warnings_at_large_pre_activations(backend, dtype, activation, loss):
    last = "identity" if loss == "cross_entropy" else activation
    net = fastbp.Network([2, 3, 3], [activation, last], loss=loss, dtype=dtype, backend=backend)
    # z = W x + b reaches +-1e4 in both layers.
    net.set_params([np.array([[1e4, 0], [-1e4, 0], [0, 1e4]]), np.array([[1, -1, 0.5], [-1, 1, 0], [0, 0, -1]]) * 1e4],
                   [np.zeros(3), np.zeros(3)])
    X = np.array([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.25], [1e-3, -1e-3]], dtype=dtype)
    Y = np.array([0, 1, 2, 0]) if loss == "cross_entropy" else np.full((4, 3), 0.5, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):
            out = net.predict(X)
            value = net.loss(X, Y)
            grads = net.gradients(X, Y)
            trace = net.trace(X, Y)
            fastbp.SGD(net.copy(), 1e-9).train_step(X, Y)
            net.copy().fit(X, Y, epochs=2, batch_size=2, lr=1e-9, seed=0)
            fastbp.explain_step(net, X[0], Y[0], 1e-9, dry_run=True)
    assert np.isfinite(out).all() and np.isfinite(value)
    assert all(np.isfinite(W).all() for W in grads.weights)
    assert all(np.isfinite(a).all() for a in trace.activations)
    if activation == "sigmoid":
        assert trace.activations[0].min() >= 0 and trace.activations[0].max() <= 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reference_sigmoid_and_log_softmax_are_stable(dtype):
    from fastbp import _spec
    z = np.array([-1e4, -1e3, -100, -1, 0, 1, 100, 1e3, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):
            s = _spec.sigmoid(z)
            logits = np.array([[1e4, -1e4, 0], [-1e4, -1e4, -1e4]], dtype=dtype)
            log_p = _spec.log_softmax(logits)
            loss, delta = _spec.cross_entropy(logits, np.eye(3, dtype=dtype)[[1, 2]])
    assert s[0] == 0 and s[-1] == 1 and s[4] == 0.5 and np.isfinite(s).all()
    assert np.isfinite(log_p).all() and np.isclose(log_p[0, 0], 0)
    assert np.isclose(loss, (2e4 + np.log(3)) / 2, rtol=1e-6) and np.isfinite(delta).all()


def test_overflowing_loss_is_inf_without_warnings(backend):
    """Found by the fuzzer: loss/trace of finite but huge targets raised 'overflow encountered' warnings."""
    net = fastbp.Network([1, 1], "identity", loss="mse", seed=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert net.loss([[0.0]], [[1e300]]) == np.inf
        assert net.trace([[0.0]], [[1e300]]).loss == np.inf
        result = fastbp.check_gradients(net, [[0.0]], [[1e300]])
        assert result.per_layer
        str(fastbp.diagnose(net, [[0.0]], [[1e300]]))
        small = fastbp.Network([1, 1], "identity", loss="mse", dtype="float32", seed=0, backend=backend)
        before = small.params.tobytes()
        with pytest.raises((ValueError, FloatingPointError)):  # the gradient overflows: no step to explain
            fastbp.explain_step(small, [0.0], [3.4e38], 1e-3)
        assert small.params.tobytes() == before
        report = fastbp.explain_step(small, [0.0], [1e19], 1e-3, dry_run=True)  # huge loss, finite step
        assert str(report) and report.to_markdown()
        classifier = fastbp.Network([2, 2], "identity", loss="cross_entropy", seed=0, backend=backend)
        with pytest.raises(ValueError):
            fastbp.explain_step(classifier, [0.0, 1.0], 1e300, 1e-3)  # a class index no int64 holds


# --------------------------------------------------------------------------------------------------------
# Regressions found by the fuzzer (tests/test_fuzz.py)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros(20_000)[::2], "float32", "2-d", [0.0] * 3, "nan"])
def test_assigning_params_or_velocity_is_checked(backend, bad):
    """Found by probing: ``net.params = np.zeros(3)`` replaced the buffer, and the compiled kernel then read
    past its end (predict returned garbage; a memory error under ASan). Assignment now copies, checked."""
    net = fastbp.Network([50, 50, 5], "relu", seed=0, backend=backend)
    opt = fastbp.SGD(net, 0.1, momentum=0.9)
    n = net.params.size
    values = {"float32": np.zeros(n, np.float32) + 1, "2-d": np.zeros((n, 1)), "nan": np.full(n, np.nan)}.get(
        bad if isinstance(bad, str) else "", bad)
    buffer, before = net.params, net.params.tobytes()
    X, Y = np.ones((10, 50)), np.ones((10, 5))
    if isinstance(bad, str) and bad == "float32":  # the right size in another float dtype: converted exactly, like set_params
        net.params = values
        assert net.params is buffer and (net.params == 1).all() and (net.weights[0] == 1).all()
        opt.velocity = values
        assert (opt.velocity == 1).all()
        return
    with pytest.raises((ValueError, TypeError)):
        net.params = values
    with pytest.raises((ValueError, TypeError)):
        opt.velocity = values
    assert net.params is buffer and net.params.tobytes() == before
    assert net.predict(X).shape == (10, 5)
    opt.train_step(X, Y)
    good = np.linspace(-1, 1, n)
    net.params = good  # a right array is copied in: the weight views see it
    assert net.params is buffer and net.weights[0].reshape(-1)[0] == -1.0


def test_architecture_attributes_are_read_only(backend):
    """Found by probing: assigning net.layer_sizes made new workspaces disagree with the parameter buffer,
    so the compiled kernel read and wrote out of bounds."""
    net = fastbp.Network([3, 2, 1], "tanh", seed=0, backend=backend)
    before = net.params.tobytes()
    with pytest.raises(AttributeError):
        net.layer_sizes = (3, 500, 1)
    with pytest.raises(AttributeError):
        net.dtype = np.dtype(np.float32)
    for name, value in (("activations", ("relu",)), ("loss_name", "cross_entropy"), ("backend", "numpy"),
                        ("weights", [np.zeros((2, 3))]), ("biases", 5)):
        with pytest.raises(AttributeError):
            setattr(net, name, value)
    assert net.layer_sizes == (3, 2, 1) and net.dtype == np.float64
    reader = threading.Thread(target=lambda: net.predict(np.ones((4, 3))))  # a fresh per-thread workspace
    reader.start()
    reader.join()
    assert net.params.tobytes() == before and net.copy().layer_sizes == (3, 2, 1)


def test_hyperparameter_beyond_float_range_is_a_value_error(backend):
    net = fastbp.Network([2, 1], "identity", backend=backend)
    for kwargs in ({"lr": 10**400}, {"lr": 0.1, "momentum": 10**400}, {"lr": 0.1, "weight_decay": -10**400}):
        with pytest.raises(ValueError):
            fastbp.SGD(net, **kwargs)
    with pytest.raises(ValueError):
        net.fit([[1.0, 2.0]], [1.0], lr=10**400)


def test_huge_batch_size_is_one_batch(backend):
    """Found by the fuzzer: fit(batch_size=2**63) raised OverflowError from the compiled kernel."""
    net = fastbp.Network([2, 1], "identity", seed=0, backend=backend)
    other = net.copy()
    X, Y = np.arange(6.0).reshape(3, 2) / 10, np.ones((3, 1))
    net.fit(X, Y, epochs=2, batch_size=2**63, lr=0.1, shuffle=False)
    other.fit(X, Y, epochs=2, batch_size=3, lr=0.1, shuffle=False)
    assert net.params.tobytes() == other.params.tobytes()


@pytest.mark.parametrize("bad", [np.array([[1 + 2j, 0]]), np.array([[0, 0]], dtype="datetime64[s]"),
                                 np.array([[1e300, 0]]).astype(np.longdouble) * 1e300, [["a", "b"]],
                                 np.array([[np.nan, 0]])])
def test_explain_step_refuses_what_the_network_refuses(backend, bad):
    """Found by the fuzzer: explain_step silently dropped imaginary parts and took datetimes as numbers."""
    net = fastbp.Network([2, 1], "sigmoid", loss="half_sse", seed=0, backend=backend)
    before = net.params.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, TypeError)):
            fastbp.explain_step(net, bad, [[1.0]], 0.5)
        with pytest.raises((ValueError, TypeError)):
            fastbp.explain_step(net, [[1.0, 0.0]], np.asarray(bad)[:, :1], 0.5)
    assert net.params.tobytes() == before


def test_zero_dimensional_input_is_treated_alike_in_every_dtype(backend):
    """Found by the fuzzer: a 0-d X was refused as float64 but taken as one example in other dtypes, and
    then crashed diagnose with an IndexError."""
    net = fastbp.Network([1, 1], "identity", loss="mse", seed=0, backend=backend)
    for X in (np.float64(2.0), np.array(2.0), np.array(2.0, dtype=np.float32), np.array(2, dtype=np.int64), 2.0):
        with pytest.raises(ValueError, match=r"\bX\b"):
            net.predict(X)
        with pytest.raises(ValueError):
            fastbp.diagnose(net, X, 1.0)
    # A scalar target for a one-row batch with one output stays accepted, in every dtype.
    assert net.loss([[2.0]], np.array(1.0)) == net.loss([[2.0]], np.array(1.0, dtype=np.float32)) \
        == net.loss([[2.0]], 1.0)


# --------------------------------------------------------------------------------------------------------
# 3. Interrupts: a real SIGINT to a subprocess running fit
# --------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    import fastbp

    # Python installs its KeyboardInterrupt handler only where SIGINT is not ignored at startup, and a
    # process started from a non-interactive shell's background job (`cmd &`, as a CI script may be)
    # inherits SIGINT ignored: the signal would then be dropped and the test would wait for a hang. Ctrl-C
    # in a terminal has the default handler; install it explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def main_thread_cpu():
        # CPU seconds of this main thread (the one that runs fit), read where the parent reads it too
        try:
            with open(f"/proc/self/task/{os.getpid()}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return None

    backend, batch, momentum = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(0)
    n = 20000
    X = rng.normal(size=(n, 32))
    Y = rng.normal(size=(n, 4))
    net = fastbp.Network([32, 64, 64, 4], ["tanh", "relu", "identity"], seed=0, backend=backend)
    optimizer = fastbp.SGD(net, 1e-4, momentum=momentum)
    epoch_starts = [(net.params.copy(), optimizer.velocity.copy())]
    def remember(epoch, logs):
        epoch_starts.append((net.params.copy(), optimizer.velocity.copy()))
    print("started", flush=True)
    try:
        net.fit(X, Y, epochs=100000, batch_size=batch, optimizer=optimizer, shuffle=False, callbacks=[remember])
        result = {"interrupted": False}
    except KeyboardInterrupt:
        caught, caught_cpu = time.time(), main_thread_cpu()
        result = {"interrupted": True, "caught": caught, "caught_cpu": caught_cpu,
                  "finite": bool(np.isfinite(net.params).all()),
                  "epochs": len(epoch_starts) - 1}
        # The parameters must be those after some whole number of updates of the current epoch:
        # replay train_step batch by batch from the epoch's start and look for an exact match.
        replay = net.copy()
        replay.params[...] = epoch_starts[-1][0]
        opt = fastbp.SGD(replay, 1e-4, momentum=momentum)
        opt.velocity[...] = epoch_starts[-1][1]
        target = net.params.tobytes()
        matched = 0 if replay.params.tobytes() == target else None
        for k, start in enumerate(range(0, n, batch)):
            if matched is not None:
                break
            opt.train_step(X[start:start + batch], Y[start:start + batch])
            if replay.params.tobytes() == target:
                matched = k + 1
        result["updates_in_epoch"] = matched
        net.fit(X[:64], Y[:64], epochs=1, lr=1e-4)  # the busy flag was released: the net trains again
        result["usable_after"] = True
    print(json.dumps(result), flush=True)
""")


def _main_thread_cpu(pid):
    """CPU seconds used so far by the main thread of process ``pid`` (None where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("batch_size,momentum", [(32, 0.0), (1, 0.0), (32, 0.9)])
def test_ctrl_c_stops_fit_quickly_and_keeps_a_consistent_state(backend, batch_size, momentum):
    """batch_size 1 takes the compiled kernel's fused per-example loop, 32 the mini-batch loop (updating in
    place during backpropagation), momentum the separate optimizer step after it.

    "Quickly" is measured in CPU time of the child's main thread between the signal and the handler, not in
    wall time: on a busy machine the child gets a fraction of a core, and the wall time says more about the
    other processes than about how often the kernel looks for signals. The BLAS runs one thread in the
    child for the same reason (the interrupt path does not depend on it; its thread choice is tested in
    test_threads.py)."""
    env = dict(os.environ, PYTHONPATH=FASTBP_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # cwd outside the repository: `python -c` puts the working directory first on sys.path, and the source
    # tree (no compiled kernel in a fresh clone) would hide the installed package
    child = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(batch_size), str(momentum)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())
    try:
        line = child.stdout.readline()
        assert line.strip() == "started", (line, child.stderr.read() if child.poll() is not None else "")
        # Inside fit, a few epochs in: wait until the child has spent 0.5 s of CPU training (any wall time).
        cpu_started = _main_thread_cpu(child.pid)
        if cpu_started is None:
            time.sleep(1.0)
        else:
            while child.poll() is None and _main_thread_cpu(child.pid) < cpu_started + 0.5:
                time.sleep(0.01)
        sent, sent_cpu = time.time(), _main_thread_cpu(child.pid)
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=600)  # a hang, not a slow machine
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"], (out, err)
    latency = result["caught"] - sent
    cpu = None if sent_cpu is None or result["caught_cpu"] is None else result["caught_cpu"] - sent_cpu
    print(f"\n[{backend}, batch_size {batch_size}, momentum {momentum}] Ctrl-C latency: {latency * 1000:.1f} ms "
          f"wall, {'?' if cpu is None else f'{cpu * 1000:.0f}'} ms CPU (goal 200 ms); stopped after "
          f"{result['epochs']} epochs + {result['updates_in_epoch']} updates")
    if cpu is not None:
        # /proc counts in clock ticks (10 ms): the bound is well above the goal and far below an epoch
        assert cpu < 1.0, f"KeyboardInterrupt took {cpu:.3f} s of CPU time after the signal"
    else:
        assert latency < 30.0, f"KeyboardInterrupt took {latency:.3f} s"
    assert result["finite"]
    assert result["updates_in_epoch"] is not None, "the parameters match no whole number of updates"
    assert result["usable_after"]


# --------------------------------------------------------------------------------------------------------
# 4. Threads
# --------------------------------------------------------------------------------------------------------


def _thread_problem(backend, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    net = fastbp.Network([16, 32, 1], ["tanh", "identity"], seed=seed, backend=backend)
    return net, rng.normal(size=(n, 16)), rng.normal(size=(n, 1))


def test_fit_releases_the_gil():
    """While one thread runs a long epoch in the compiled kernel, another Python thread keeps running."""
    pytest.importorskip("fastbp._core")
    net, X, Y = _thread_problem("cython", n=200_000)
    done = threading.Event()
    errors = []

    def train():
        try:
            # four epochs: the vectorised per-example loop runs one of these in tens of milliseconds
            net.fit(X, Y, epochs=4, batch_size=1, lr=1e-4, shuffle=False)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=train)
    started = time.perf_counter()
    thread.start()
    last, worst, ticks = time.perf_counter(), 0.0, 0
    while not done.is_set():
        now = time.perf_counter()
        worst, last, ticks = max(worst, now - last), now, ticks + 1
    elapsed = time.perf_counter() - started
    thread.join()
    assert not errors
    print(f"\nfit epoch {elapsed * 1000:.0f} ms; the other thread ran {ticks} iterations, longest stall "
          f"{worst * 1000:.1f} ms")
    assert elapsed > 0.1, "the epoch was too short to tell"
    assert worst < max(0.5 * elapsed, 0.05), "the other thread was blocked: fit held the GIL"


def test_two_threads_train_two_networks_at_the_same_time(backend):
    """Both fits run at once (their epochs interleave) and give exactly the sequential results.

    The speed-up is printed, not asserted (it depends on what else the machine runs); on an idle 2-core
    machine the compiled kernel gives about 1.8x (docs/ROBUSTNESS.md). That the kernel really releases the
    GIL is asserted by test_fit_releases_the_gil.
    """
    epochs = 5 if backend == "cython" else 3
    problems = [_thread_problem(backend, n=20000 if backend == "cython" else 2000, seed=s) for s in (1, 2)]
    intervals, epoch_ends = {}, {0: [], 1: []}

    def train(index):
        net, X, Y = problems[index]
        t0 = time.perf_counter()
        net.fit(X, Y, epochs=epochs, batch_size=8, lr=1e-3, seed=index + 1,
                callbacks=[lambda epoch, logs: epoch_ends[index].append(time.perf_counter())])
        intervals[index] = (t0, time.perf_counter())

    expected, sequential = [], 0.0
    for index, (net, X, Y) in enumerate(problems):  # the sequential run (after a warm-up)
        net.copy().fit(X[:100], Y[:100], epochs=1, batch_size=8, lr=1e-3)
        copy = net.copy()
        t0 = time.perf_counter()
        copy.fit(X, Y, epochs=epochs, batch_size=8, lr=1e-3, seed=index + 1)
        sequential += time.perf_counter() - t0
        expected.append(copy.params.copy())
    threads = [threading.Thread(target=train, args=(i,)) for i in (0, 1)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    for index, (net, _, _) in enumerate(problems):
        assert net.params.tobytes() == expected[index].tobytes(), "a threaded fit gave other parameters"
    (a0, a1), (b0, b1) = intervals[0], intervals[1]
    overlap = min(a1, b1) - max(a0, b0)
    print(f"\n[{backend}] two fits: sequential {sequential * 1000:.0f} ms, in two threads {wall * 1000:.0f} ms "
          f"(speed-up {sequential / wall:.2f}x on {os.cpu_count()} cores), overlap {overlap * 1000:.0f} ms")
    assert overlap > 0, "the two fits did not run at the same time"
    # Progress on both sides while both run: each thread finished an epoch inside the common window (on the
    # compiled kernel, which releases the GIL; the twin's short epochs may just alternate).
    window = (max(a0, b0), min(a1, b1))
    for index in (0, 1) if backend == "cython" else ():
        assert any(window[0] <= t <= window[1] for t in epoch_ends[index][:-1]) or epochs == 1, \
            f"thread {index} made no progress while the other ran"


def test_concurrent_predict_on_a_shared_network(backend):
    net, X, _ = _thread_problem(backend, n=600)
    chunks = [X[i::4] for i in range(4)]
    expected = [net.predict(chunk) for chunk in chunks]
    expected_single = [net.predict(chunk[0]) for chunk in chunks]  # one row may round unlike a batch
    failures = []

    def worker(index):
        for _ in range(50):
            if not np.array_equal(net.predict(chunks[index]), expected[index]):
                failures.append(index)
                return
            single = net.predict(chunks[index][0])
            if not np.array_equal(single, expected_single[index]):
                failures.append(index)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_predict_and_loss_of_many_rows_are_chunked_correctly(backend, dtype):
    """More rows than one workspace holds (4096): the chunked paths agree with one row at a time."""
    net, X, Y = _thread_problem(backend, n=9000)
    net = fastbp.Network(net.layer_sizes, net.activations, dtype=dtype, seed=0, backend=backend)
    X, Y = X.astype(dtype), Y.astype(dtype)
    out = net.predict(X)
    picks = [0, 4095, 4096, 4097, 8191, 8192, 8999]
    expected = np.array([net.predict(X[i:i + 1])[0] for i in picks])
    tolerance = {"float64": 1e-12, "float32": 1e-5}[dtype]
    np.testing.assert_allclose(out[picks], expected, rtol=tolerance, atol=tolerance)
    twin = net.copy() if backend == "numpy" else fastbp.Network(net.layer_sizes, net.activations, dtype=dtype,
                                                                backend="numpy")
    twin.params[...] = net.params
    np.testing.assert_allclose(net.loss(X, Y), twin.loss(X, Y), rtol=tolerance * 10)
    net.fit(X, Y, epochs=1, batch_size=5000, lr=1e-3, seed=0)  # one batch larger than a predict chunk
    assert np.isfinite(net.params).all()


def test_predict_from_other_threads_while_fitting_is_safe(backend):
    """Reading while another thread trains: no error, no crash (values may mix two updates' parameters)."""
    net, X, Y = _thread_problem(backend, n=3000)
    stop = threading.Event()
    failures = []

    def reader():
        while not stop.is_set():
            try:
                out = net.predict(X[:50])
                assert out.shape == (50, 1) and np.isfinite(out).all()
                net.loss(X[:20], Y[:20])
            except BaseException as error:  # noqa: BLE001
                failures.append(error)
                return

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        net.fit(X, Y, epochs=3, batch_size=4, lr=1e-3, seed=0)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not failures, failures[0]


def test_fit_while_another_thread_fits_the_same_network_is_refused(backend):
    net, X, Y = _thread_problem(backend, n=2000)
    inside = threading.Event()
    release = threading.Event()
    result = {}

    def slow_callback(epoch, logs):
        inside.set()
        release.wait(30)

    def train():
        try:
            result["history"] = net.fit(X, Y, epochs=2, batch_size=16, lr=1e-3, callbacks=[slow_callback])
        except BaseException as error:  # noqa: BLE001
            result["error"] = error

    thread = threading.Thread(target=train)
    thread.start()
    try:
        assert inside.wait(60)
        before = net.params.tobytes()
        with pytest.raises(RuntimeError, match="another"):
            net.fit(X, Y, epochs=1)
        with pytest.raises(RuntimeError, match="another"):
            fastbp.SGD(net, 0.1).train_step(X[:4], Y[:4])
        with pytest.raises(RuntimeError, match="another"):
            net.set_params(net.weights, net.biases)
        assert net.params.tobytes() == before
        assert net.predict(X[:3]).shape == (3, 1)  # reading is allowed
    finally:
        release.set()
        thread.join()
    assert "error" not in result, result.get("error")
    assert result["history"].epochs == 2 and np.isfinite(net.params).all()


# --------------------------------------------------------------------------------------------------------
# 5. Memory
# --------------------------------------------------------------------------------------------------------


def _rss_mib():
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")


@needs_proc
def test_no_leak_over_100k_train_steps(backend):
    net = fastbp.Network([4, 8, 2], ["relu", "identity"], seed=0, backend=backend)
    opt = fastbp.SGD(net, 1e-3, momentum=0.5)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(4, 4)), rng.normal(size=(4, 2))
    for _ in range(5000):
        opt.train_step(X, Y)
    gc.collect()
    before = _rss_mib()
    t0 = time.perf_counter()
    for _ in range(100_000):
        opt.train_step(X, Y)
    gc.collect()
    growth = _rss_mib() - before
    print(f"\n[{backend}] 100,000 train_step calls in {time.perf_counter() - t0:.1f} s: resident memory "
          f"grew {growth:+.2f} MiB")
    assert growth < 4.0


@needs_proc
def test_no_leak_over_1000_construct_fit_predict_save_load_cycles(backend, tmp_path):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
    path = tmp_path / "model.npz"

    def cycle(seed):
        net = fastbp.Network([4, 6, 3], ["tanh", "identity"], loss="cross_entropy", seed=seed, backend=backend)
        net.fit(X, Y, epochs=1, batch_size=8, lr=0.01, seed=seed)
        net.predict(X)
        net.save(path)
        loaded = fastbp.Network.load(path, backend=backend)
        assert loaded.params.tobytes() == net.params.tobytes()

    for seed in range(50):
        cycle(seed)
    gc.collect()
    before = _rss_mib()
    t0 = time.perf_counter()
    for seed in range(1000):
        cycle(seed)
    gc.collect()
    growth = _rss_mib() - before
    print(f"\n[{backend}] 1,000 construct/fit/predict/save/load cycles in {time.perf_counter() - t0:.1f} s: "
          f"resident memory grew {growth:+.2f} MiB")
    assert growth < 4.0


# --------------------------------------------------------------------------------------------------------
# 6. Model files
# --------------------------------------------------------------------------------------------------------


def _saved(tmp_path, backend, name="model.npz"):
    net = fastbp.Network([3, 4, 2], ["sigmoid", "identity"], loss="mse", seed=1, backend=backend)
    path = tmp_path / name
    net.save(path)
    return net, path


@pytest.mark.parametrize("failure", ["savez", "fsync", "replace"])
def test_save_is_atomic(backend, tmp_path, monkeypatch, failure):
    old, path = _saved(tmp_path, backend)
    original = path.read_bytes()
    new = fastbp.Network([3, 4, 2], ["sigmoid", "identity"], loss="mse", seed=2, backend=backend)

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise OSError("disk full (injected)")

    def broken(*args, **kwargs):
        raise OSError(f"{failure} failed (injected)")

    if failure == "savez":
        monkeypatch.setattr(_io.np, "savez", broken_savez)
    elif failure == "fsync":
        monkeypatch.setattr(_io.os, "fsync", broken)
    else:
        monkeypatch.setattr(_io.os, "replace", broken)
    with pytest.raises(OSError, match="injected"):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"], "a temporary file was left behind"
    assert fastbp.Network.load(path).params.tobytes() == old.params.tobytes()


def test_save_interrupted_by_keyboard_interrupt_is_atomic(backend, tmp_path, monkeypatch):
    old, path = _saved(tmp_path, backend)

    def interrupted(handle, **arrays):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        old.copy().save(path)
    monkeypatch.undo()
    assert fastbp.Network.load(path).params.tobytes() == old.params.tobytes()
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_save_does_not_replace_a_special_file(tmp_path):
    """Found by probing: the atomic rename replaced whatever node had the name (as root, even /dev/null)."""
    import stat
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    net = fastbp.Network([2, 1], "identity", seed=0)
    with pytest.raises(ValueError, match="regular file"):
        net.save(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def _write_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _valid_arrays(net):
    params = np.ascontiguousarray(net.params)
    return {
        "format_version": np.array(_io.FORMAT_VERSION, dtype=np.int64),
        "fastbp_version": np.array(fastbp.__version__),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activations": np.array(net.activations),
        "loss": np.array(net.loss_name),
        "dtype": np.array(net.dtype.name),
        "params": params,
        "checksum": np.array(_io._checksum(net.layer_sizes, net.activations, net.loss_name, net.dtype.name,
                                           params)),
    }


def _hostile_files(net):
    """(name, arrays or raw bytes) of files that load must refuse."""
    good = _valid_arrays(net)
    cases = []

    def variant(name, **changes):
        arrays = dict(good)
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value
        cases.append((name, arrays))

    nan_params = good["params"].copy()
    nan_params[0] = np.nan
    nan_checksum = np.array(_io._checksum(net.layer_sizes, net.activations, net.loss_name, "float64", nan_params))
    variant("non-finite params", params=nan_params, checksum=nan_checksum)
    variant("object params", params=np.array([1.0] * good["params"].size, dtype=object))
    variant("object layer sizes", layer_sizes=np.array([3, 4, 2], dtype=object))
    variant("wrong version", format_version=np.array(2, dtype=np.int64))
    variant("version as text", format_version=np.array("1"))
    variant("mismatched params length", params=good["params"][:-1])
    variant("params 2-d", params=good["params"].reshape(1, -1))
    variant("layer sizes changed", layer_sizes=np.array([3, 4, 3], dtype=np.int64))
    variant("absurd layer sizes", layer_sizes=np.array([10**9, 10**9, 2], dtype=np.int64))
    variant("zero layer size", layer_sizes=np.array([3, 0, 2], dtype=np.int64))
    variant("negative layer size", layer_sizes=np.array([3, -4, 2], dtype=np.int64))
    variant("too many layers", layer_sizes=np.ones(200_000, dtype=np.int64))
    variant("unknown activation", activations=np.array(["sigmoid", "evil"]))
    variant("unknown loss", loss=np.array("hinge"))
    variant("dtype float16", dtype=np.array("float16"), params=good["params"].astype(np.float16))
    variant("dtype says float32, params float64", dtype=np.array("float32"))
    variant("complex params", params=good["params"].astype(np.complex128))
    variant("params edited, checksum kept", params=good["params"] + 1e-12)
    variant("missing params", params=None)
    variant("missing checksum", checksum=None)
    cases.append(("a pickle", b"\x80\x04\x95" + b"cos\nsystem\n(S'echo pwned'\ntR." + b"\x00" * 20))
    cases.append(("empty file", b""))
    cases.append(("text", b"layer_sizes = [3, 4, 2]\n"))
    return cases


def _pickled_member_file(path, net):
    """An archive whose params.npy is a pickled object array (numpy writes those with allow_pickle)."""
    arrays = _valid_arrays(net)
    arrays["params"] = np.array([{"__reduce__": "os.system"}], dtype=object)
    _write_npz(path, **arrays)


def _huge_header_file(path, net):
    """params.npy whose header claims 10**12 elements: must be refused before any allocation."""
    arrays = _valid_arrays(net)
    _write_npz(path, **arrays)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header = header + b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    members["params.npy"] = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 64
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_load_refuses_hostile_files(backend, tmp_path):
    net = fastbp.Network([3, 4, 2], ["sigmoid", "identity"], loss="mse", seed=1, backend=backend)
    refused = []
    for index, (name, content) in enumerate(_hostile_files(net)):
        path = tmp_path / f"hostile-{index}.npz"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _write_npz(path, **content)
        with pytest.raises(ValueError) as info:
            fastbp.Network.load(path, backend=backend)
        refused.append((name, str(info.value)[:80]))
    for maker in (_pickled_member_file, _huge_header_file):
        path = tmp_path / f"{maker.__name__}.npz"
        maker(path, net)
        with pytest.raises(ValueError):
            fastbp.Network.load(path, backend=backend)
    truncated = tmp_path / "truncated.npz"
    net.save(truncated)
    raw = truncated.read_bytes()
    for cut in range(0, len(raw), max(1, len(raw) // 97)):
        truncated.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            fastbp.Network.load(truncated, backend=backend)
    assert len(refused) >= 20


@needs_proc
def test_load_refuses_a_zip_bomb_without_inflating_it(tmp_path):
    """A deflated params member of 256 MiB zeros (about 256 KiB on disk) for a net that needs that many."""
    from fastbp import _spec
    sizes = [4096, 8191, 1]
    count = _spec.param_offsets(sizes)[1]  # 33,566,719 parameters: 256 MiB of float64
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d,), }" % count
    header = header + " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    path = tmp_path / "bomb.npz"
    small = {"format_version": np.array(_io.FORMAT_VERSION, dtype=np.int64),
             "layer_sizes": np.array(sizes, dtype=np.int64), "activations": np.array(["relu", "identity"]),
             "loss": np.array("mse"), "dtype": np.array("float64"), "checksum": np.array("0" * 64)}
    _write_npz(path, **small)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("params.npy", "w", force_zip64=True) as member:
            member.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
            zeros, left = bytes(2**20), count * 8
            while left:
                member.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
    assert path.stat().st_size < 2**20
    before = _rss_mib()
    with pytest.raises(ValueError, match="compressed"):
        fastbp.Network.load(path)
    assert _rss_mib() - before < 64


def test_load_of_a_directory_device_fifo_or_missing_file(tmp_path):
    """Found by probing: load('/dev/zero') read forever and a FIFO blocked; now refused unopened."""
    with pytest.raises(FileNotFoundError):
        fastbp.Network.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError):
        fastbp.Network.load(tmp_path)
    for device in ("/dev/zero", "/dev/urandom", "/dev/null"):
        if os.path.exists(device):
            with pytest.raises(ValueError):
                fastbp.Network.load(device)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "model.fifo"
        os.mkfifo(fifo)
        with pytest.raises(ValueError):
            fastbp.Network.load(fifo)  # no writer: opening it would block for ever


def test_every_single_byte_corruption_is_refused_or_harmless(tmp_path):
    """Each byte of a saved file, inverted in turn: load refuses it, or loads exactly the saved network.

    (Reading does not depend on the backend: one is enough.)"""
    backend = fastbp.BACKEND
    net, path = _saved(tmp_path, backend)
    raw = path.read_bytes()
    accepted = refused = 0
    for position in range(len(raw)):
        corrupted = bytearray(raw)
        corrupted[position] ^= 0xFF
        path.write_bytes(bytes(corrupted))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                loaded = fastbp.Network.load(path, backend=backend)
            except ValueError:
                refused += 1
                continue
        accepted += 1
        assert loaded.params.tobytes() == net.params.tobytes(), f"byte {position}: changed parameters loaded"
        assert (loaded.layer_sizes, loaded.activations, loaded.loss_name, loaded.dtype) == \
            (net.layer_sizes, net.activations, net.loss_name, net.dtype), f"byte {position}"
    print(f"\n[{backend}] {len(raw)} single-byte corruptions: {refused} refused, {accepted} harmless")
    assert refused > len(raw) // 2
