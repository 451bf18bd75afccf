"""Progress within an epoch: the backends' ``train_epoch`` progress hook, and the line ``fit`` draws from it.

The hook is called at most every ``PROGRESS_INTERVAL`` seconds; the tests set the interval to 0 (both
modules read it at each call) so that every signal check (compiled kernel) or batch (twin) reports, which
makes the tests independent of the machine's speed.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _reference, _spec


def _module(backend):
    if backend == "numpy":
        return _reference
    return pytest.importorskip("fastbp._core")


@pytest.fixture
def report_every_check(monkeypatch):
    """Report at every opportunity instead of every 0.2 s."""
    monkeypatch.setattr(_reference, "PROGRESS_INTERVAL", 0.0)
    try:
        from fastbp import _core
    except ImportError:  # pragma: no cover - depends on the build
        return
    monkeypatch.setattr(_core, "PROGRESS_INTERVAL", 0.0)


def test_both_backends_report_at_the_same_interval():
    core = pytest.importorskip("fastbp._core")
    assert core.PROGRESS_INTERVAL == _reference.PROGRESS_INTERVAL == 0.2


def _problem(dtype=np.float64, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [32, 64, 64, 4]
    codes = [_spec.ACTIVATION_CODES[a] for a in ("tanh", "relu", "identity")]
    _, total = _spec.param_offsets(sizes)
    params = rng.uniform(-0.3, 0.3, size=total).astype(dtype)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = rng.normal(size=(n, sizes[-1])).astype(dtype)
    return sizes, codes, params, X, Y


def _sgd_arguments(params, lr=1e-3, momentum=0.0):
    hyper = np.zeros(_spec.N_HYPER)
    hyper[_spec.HYPER_LR] = lr
    hyper[_spec.HYPER_SGD_MOMENTUM] = momentum
    state = np.zeros((len(_spec.STATE_ROWS["sgd"]), params.size), dtype=params.dtype)
    return _spec.RULE_CODES["sgd"], hyper, state, np.zeros(1, dtype=np.int64)


@pytest.mark.parametrize("batch_size,momentum", [(32, 0.0), (32, 0.9), (1, 0.0), (500, 0.0)])
def test_the_hook_reports_consistent_monotone_counts_and_changes_no_number(backend, report_every_check,
                                                                           batch_size, momentum):
    module = _module(backend)
    sizes, codes, params, X, Y = _problem()
    n = X.shape[0]
    results = {}
    for with_hook in (False, True):
        p = params.copy()
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], p.dtype, min(batch_size, n))
        rule, hyper, state, steps = _sgd_arguments(p, momentum=momentum)
        calls = []
        hook = (lambda done, loss_sum, weight_sum: calls.append((done, loss_sum, weight_sum))) if with_hook else None
        returned = module.train_epoch(ws, p, X, Y, None, batch_size, rule, hyper, state, steps,
                                      _spec.epoch_key(3, 0), progress=hook)
        results[with_hook] = (returned, p.tobytes(), state.tobytes(), steps.tobytes())
        if with_hook:
            assert len(calls) >= 2, f"{len(calls)} reports in an epoch of {n} rows"
            previous = (0, 0.0, 0.0)
            for done, loss_sum, weight_sum in calls:
                assert isinstance(done, int) and 0 <= done < n
                assert done % batch_size == 0           # whole batches only
                assert weight_sum == done                 # unweighted: the weight of a row is 1
                assert loss_sum >= 0 and np.isfinite(loss_sum)
                assert (done, loss_sum, weight_sum) >= previous and loss_sum >= previous[1]  # monotone
                previous = (done, loss_sum, weight_sum)
            assert previous[0] <= returned[2] and previous[1] <= returned[0]
    assert results[True] == results[False]


def test_the_hook_s_counts_match_the_running_sums_of_a_shorter_epoch(backend, report_every_check):
    """Each report is exactly what the same epoch cut at that many rows returns."""
    module = _module(backend)
    sizes, codes, params, X, Y = _problem(n=8000)
    calls = []
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, 50)
    p = params.copy()
    module.train_epoch(ws, p, X, Y, None, 50, *_sgd_arguments(p), -1,
                       progress=lambda *counts: calls.append(counts))
    assert calls
    done, loss_sum, weight_sum = calls[len(calls) // 2]
    q = params.copy()
    cut = module.train_epoch(ws, q, X[:done], Y[:done], None, 50, *_sgd_arguments(q), -1)
    assert cut[:3] == (loss_sum, weight_sum, done)


class _Stop(Exception):
    pass


def test_an_exception_in_the_hook_stops_after_a_completed_update(backend, report_every_check):
    module = _module(backend)
    sizes, codes, params, X, Y = _problem(n=8000)
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, 50)
    p = params.copy()
    arguments = _sgd_arguments(p, momentum=0.9)
    seen = []

    def hook(done, loss_sum, weight_sum):
        seen.append(done)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        module.train_epoch(ws, p, X, Y, None, 50, *arguments, -1, progress=hook)
    done = seen[-1]
    q = params.copy()
    replay = _sgd_arguments(q, momentum=0.9)
    module.train_epoch(ws, q, X[:done], Y[:done], None, 50, *replay, -1)
    assert p.tobytes() == q.tobytes()
    assert arguments[2].tobytes() == replay[2].tobytes() and arguments[3][0] == replay[3][0] == done // 50


def test_ctrl_c_in_the_hook_is_an_interruption(backend, report_every_check):
    module = _module(backend)
    sizes, codes, params, X, Y = _problem(n=8000)
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, 50)
    p = params.copy()

    def hook(done, loss_sum, weight_sum):
        raise KeyboardInterrupt

    loss_sum, weight_sum, done, status = module.train_epoch(ws, p, X, Y, None, 50, *_sgd_arguments(p), -1,
                                                            progress=hook)
    assert status == _spec.STATUS_INTERRUPTED and 0 < done < X.shape[0] and weight_sum == done


def test_a_hook_that_is_not_callable_is_refused(backend):
    module = _module(backend)
    sizes, codes, params, X, Y = _problem(n=10)
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, 5)
    p = params.copy()
    with pytest.raises(TypeError, match="progress"):
        module.train_epoch(ws, p, X, Y, None, 5, *_sgd_arguments(p), -1, progress=3)
    assert p.tobytes() == params.tobytes()


# ---- what fit shows ---------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit(backend, stream, monkeypatch, progress=True, epochs=2):
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the built-in line
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8000, 32)), rng.normal(size=(8000, 4))
    net = fastbp.Network([32, 64, 64, 4], ["tanh", "relu", "identity"], seed=0, backend=backend)
    history = net.fit(X, Y, epochs=epochs, batch_size=32, lr=1e-3, progress=progress, seed=0)
    return net, history


def test_a_long_epoch_on_a_terminal_shows_progress_within_the_epoch(backend, report_every_check, monkeypatch):
    stream = _Terminal()
    _fit(backend, stream, monkeypatch)
    frames = [frame for frame in stream.getvalue().replace("\n", "\r").split("\r") if frame.strip()]
    within = [frame for frame in frames if "%" in frame.split()[2]]
    assert len(within) >= 2, frames
    assert len(frames) == len(within) + 2  # and one frame at the end of each epoch
    for frame in frames:
        assert len(frame) <= 80
        assert frame.startswith(("epoch 1/2", "epoch 2/2"))
    for epoch in ("epoch 1/2", "epoch 2/2"):
        shown = [int(frame.split()[2].rstrip("%")) for frame in within if frame.startswith(epoch)]
        assert shown == sorted(shown) and all(0 <= pct < 100 for pct in shown)
        assert all("loss=" in frame for frame in within if frame.startswith(epoch) and not frame.split()[2] == "0%")


def test_a_stream_that_is_not_a_terminal_still_gets_one_line_per_epoch(backend, report_every_check,
                                                                        monkeypatch):
    stream = io.StringIO()
    _fit(backend, stream, monkeypatch, epochs=3)
    text = stream.getvalue()
    assert "\r" not in text and "%" not in text
    assert [line.split()[:2] for line in text.splitlines() if line.startswith("epoch ")] == \
        [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]


def test_progress_changes_no_number(backend, report_every_check, monkeypatch):
    shown, shown_history = _fit(backend, _Terminal(), monkeypatch)
    silent, silent_history = _fit(backend, io.StringIO(), monkeypatch, progress=False)
    assert shown.params.tobytes() == silent.params.tobytes()
    assert shown_history.loss == silent_history.loss
