"""fit checks a dense X for NaN and infinity in its first epoch, batch by batch, instead of in a pass of its own.

Whatever the path through the kernel (per-example loops, mini-batches in order or shuffled, weighted batches
that make no update, several threads), a bad row must raise the same ValueError as the up-front check did,
name the first bad row, and leave the network, the optimizer's state and its lr exactly as before ``fit``.
On finite data the check must not change a bit of training.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from fastbp import _spec


def _data(n, n_in, n_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    Y = rng.standard_normal((n, n_out)).astype(dtype)
    return X, Y


# (sizes, activations): the tiny per-example kernel's size, a per-example loop past it, and a net whose
# 784-wide rows take the mini-batch products
NETS = {
    "tiny": ([3, 4, 2], ["sigmoid", "identity"]),
    "rows": ([20, 16, 3], ["relu", "identity"]),
    "wide": ([784, 32, 10], ["relu", "identity"]),
}


def _state(net, optimizer):
    return net.params.copy(), optimizer._state.copy(), optimizer._steps.copy(), optimizer.lr


def _assert_unchanged(net, optimizer, before):
    params, state, steps, lr = before
    assert np.array_equal(net.params, params), "fit changed the parameters before raising"
    assert np.array_equal(optimizer._state, state) and np.array_equal(optimizer._steps, steps), \
        "fit changed the optimizer's state before raising"
    assert optimizer.lr == lr


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_row_anywhere_raises_and_changes_nothing(backend, net_name, batch_size, shuffle, bad):
    sizes, activations = NETS[net_name]
    for dtype in ("float64", "float32"):
        net = fastbp.Network(sizes, activations, loss="mse", seed=1, dtype=dtype, backend=backend)
        X, Y = _data(90, sizes[0], sizes[-1], dtype)
        for row in (0, 45, 89):   # the first batch, the middle, the last (short) batch
            Xb = X.copy()
            Xb[row, row % sizes[0]] = bad
            for optimizer in (fastbp.SGD(net, 0.01), fastbp.Adam(net, lr=1e-3)):
                # warm the optimizer's state first, so that putting it back is observable
                net.fit(X, Y, epochs=1, batch_size=batch_size, optimizer=optimizer, shuffle=shuffle, seed=3)
                before = _state(net, optimizer)
                with pytest.raises(ValueError, match=rf"^X must be finite; row {row} contains NaN or infinity"):
                    net.fit(Xb, Y, epochs=3, batch_size=batch_size, optimizer=optimizer, shuffle=shuffle,
                            seed=4)
                _assert_unchanged(net, optimizer, before)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_bad_row_in_a_batch_of_zero_weight_still_raises(backend, batch_size):
    net = fastbp.Network([5, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = _data(40, 5, 2, "float64")
    weights = np.ones(40)
    weights[16:24] = 0.0      # a whole batch of 8 that makes no update
    X[19, 2] = np.nan
    before = net.params.copy()
    with pytest.raises(ValueError, match="row 19 contains NaN"):
        net.fit(X, Y, epochs=2, batch_size=batch_size, sample_weight=weights, shuffle=False)
    assert np.array_equal(net.params, before)


@pytest.mark.parametrize("threads", [1, 2])
def test_on_several_threads(backend, threads):
    # 784-128-10 at batch 32 on float32: the size at which the kernel runs its products on a team
    net = fastbp.Network([784, 128, 10], ["relu", "identity"], loss="mse", seed=0, dtype="float32",
                         backend=backend)
    X, Y = _data(32 * 12, 784, 10, "float32")
    X[32 * 9 + 5, 700] = np.inf
    before = net.params.copy()
    for shuffle in (False, True):
        with pytest.raises(ValueError, match=f"row {32 * 9 + 5} contains"):
            net.fit(X, Y, epochs=1, batch_size=32, shuffle=shuffle, threads=threads)
        assert np.array_equal(net.params, before)


def test_a_schedules_lr_is_put_back(backend):
    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = _data(30, 3, 2, "float64")
    X[29, 0] = np.nan
    optimizer = fastbp.SGD(net, 0.5)
    with pytest.raises(ValueError, match="row 29"):
        net.fit(X, Y, epochs=4, batch_size=4, optimizer=optimizer, lr_schedule=lambda epoch: 0.125)
    assert optimizer.lr == 0.5


def test_callbacks_see_the_start_but_not_the_end(backend):
    events = []

    class Recorder(fastbp.Callback):
        def on_train_begin(self, logs):
            events.append("begin")

        def on_epoch_end(self, epoch, logs):
            events.append(epoch)

        def on_train_end(self, logs):
            events.append("end")

    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = _data(30, 3, 2, "float64")
    X[12, 1] = -np.inf
    with pytest.raises(ValueError, match="row 12"):
        net.fit(X, Y, epochs=2, batch_size=5, callbacks=[Recorder()])
    assert events == ["begin"]


def test_where_no_epoch_runs_through_the_kernel_x_is_checked_first(backend):
    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = _data(30, 3, 2, "float64")
    X[7, 1] = np.nan
    before = net.params.copy()
    calls = []
    with pytest.raises(ValueError, match="X must be finite"):
        net.fit(X, Y, epochs=0, callbacks=[lambda epoch, logs: calls.append(epoch)])
    with pytest.raises(ValueError, match="X must be finite"):
        net.fit(X, Y, epochs=2, optimizer=fastbp.LBFGS(net))
    assert np.array_equal(net.params, before) and calls == []


def test_validation_split_rows_are_checked_before_training(backend):
    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    X, Y = _data(40, 3, 2, "float64")
    X[37, 2] = np.nan        # among the last 8 rows, which validation_split=0.2 holds out
    before = net.params.copy()
    begun = []

    class Recorder(fastbp.Callback):
        def on_train_begin(self, logs):
            begun.append(True)

    with pytest.raises(ValueError, match="row 37 contains"):
        net.fit(X, Y, epochs=2, validation_split=0.2, callbacks=[Recorder()])
    assert np.array_equal(net.params, before) and begun == []


def test_converted_input_still_names_an_overflow(backend):
    # float64 values beyond float32's range become infinities in the conversion: said up front, as before
    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, dtype="float32", backend=backend)
    X, Y = _data(10, 3, 2, "float64")
    X[4, 0] = 1e300
    with pytest.raises(ValueError, match="after conversion to float32"):
        net.fit(X, Y, epochs=1)


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_check_changes_no_bit_of_training(backend, net_name, batch_size, weighted):
    sizes, activations = NETS[net_name]
    X, Y = _data(64, sizes[0], sizes[-1], "float32")
    weights = np.random.default_rng(5).random(64).astype(np.float32) if weighted else None
    results = []
    for check in (False, True):
        net = fastbp.Network(sizes, activations, loss="mse", seed=2, dtype="float32", backend=backend)
        optimizer = fastbp.SGD(net, 0.01)
        ws = net._new_workspace(batch_size)
        out = net._module.train_epoch(ws, net.params, X, Y, weights, batch_size,
                                      *optimizer._kernel_arguments(), _spec.epoch_key(9, 0), check_inputs=check)
        results.append((out, net.params.copy()))
    (out_off, params_off), (out_on, params_on) = results
    assert out_on == out_off and out_on[3] == _spec.STATUS_OK
    assert np.array_equal(params_on, params_off)


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("batch_size", [1, 16])
def test_the_kernel_stops_before_any_update_uses_the_row(backend, net_name, batch_size):
    """train_epoch(check_inputs=True) on a bad row: status STATUS_BAD_INPUT, and the parameters are those
    of training on exactly the `done` rows before it stopped (so none of them came from the bad row)."""
    sizes, activations = NETS[net_name]
    X, Y = _data(96, sizes[0], sizes[-1], "float64")
    bad_row = 70
    X_bad = X.copy()
    X_bad[bad_row, 0] = np.nan
    net = fastbp.Network(sizes, activations, loss="mse", seed=2, backend=backend)
    start = net.params.copy()
    optimizer = fastbp.SGD(net, 0.01)
    ws = net._new_workspace(batch_size)
    _, _, done, status = net._module.train_epoch(ws, net.params, X_bad, Y, None, batch_size,
                                                 *optimizer._kernel_arguments(), -1, check_inputs=True)
    assert status == _spec.STATUS_BAD_INPUT
    assert done <= bad_row and done % batch_size == 0
    assert np.isfinite(net.params).all()
    stopped = net.params.copy()
    net.params[...] = start
    if done:
        net._module.train_epoch(ws, net.params, X[:done], Y[:done], None, batch_size,
                                *optimizer._kernel_arguments(), -1)
    assert np.array_equal(stopped, net.params)
