"""``fit`` against ``train_step``, the shuffle specification, and ``save``/``load`` round trips."""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import random_net, random_targets

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


# The permutation spec of docs/DESIGN.md, written again here from the text (not imported from fastbp), so
# that both backends are checked against the specification rather than against each other.
def _mix64(z):
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def spec_permutation(n, seed, epoch):
    key = _mix64((seed + GAMMA * (epoch + 1)) & MASK64)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        h = _mix64((key + GAMMA * (i + 1)) & MASK64)
        j = ((h >> 32) * (i + 1)) >> 32
        perm[i], perm[j] = perm[j], perm[i]
    return np.array(perm)


def test_spec_permutation_is_a_permutation():
    for n in (1, 2, 10, 1000):
        perm = spec_permutation(n, seed=3, epoch=0)
        assert sorted(perm.tolist()) == list(range(n))
    assert not np.array_equal(spec_permutation(100, 3, 0), spec_permutation(100, 3, 1))


def make_problem(backend, dtype="float64", loss="mse", seed=0, n=37):
    rng = np.random.default_rng(seed)
    sizes = [5, 7, 4]
    net = random_net(fastbp, rng, sizes, ["tanh", "identity"], loss, dtype, backend)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = random_targets(rng, loss, n, sizes[-1], dtype)
    return net, X, Y


def clone(net, backend=None):
    copy = fastbp.Network(net.layer_sizes, net.activations, loss=net.loss_name, dtype=net.dtype,
                          backend=backend or net.backend)
    copy.set_params(net.weights, net.biases)
    assert np.array_equal(copy.params, net.params)
    return copy


OPTIMIZERS = [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("options", OPTIMIZERS, ids=["plain", "momentum-nesterov-wd"])
def test_fit_without_shuffle_is_the_same_train_steps(options, loss, backend, dtype):
    net, X, Y = make_problem(backend, dtype, loss)
    stepped = clone(net)
    batch_size, epochs, lr = 8, 3, 0.05  # 37 examples: the last batch of each epoch has 5
    history = net.fit(X, Y, epochs=epochs, batch_size=batch_size, shuffle=False,
                      optimizer=fastbp.SGD(net, lr, **options))
    opt = fastbp.SGD(stepped, lr, **options)
    epoch_losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch_size):
            total += opt.train_step(X[start:start + batch_size], Y[start:start + batch_size]) * len(
                X[start:start + batch_size])
        epoch_losses.append(total / len(X))
    # Same backend, same order of operations: bit for bit.
    assert np.array_equal(net.params, stepped.params)
    np.testing.assert_allclose(history.loss, epoch_losses, rtol=1e-12 if dtype == np.float64 else 1e-5)
    assert len(history.loss) == epochs


def test_fit_with_lr_argument_is_plain_sgd(backend):
    net, X, Y = make_problem(backend)
    stepped = clone(net)
    net.fit(X, Y, epochs=2, batch_size=10, lr=0.03, shuffle=False)
    opt = fastbp.SGD(stepped, 0.03)
    for _ in range(2):
        for start in range(0, len(X), 10):
            opt.train_step(X[start:start + 10], Y[start:start + 10])
    assert np.array_equal(net.params, stepped.params)


def test_fit_without_shuffle_agrees_across_backends(backend):
    net, X, Y = make_problem("numpy")
    other = clone(net, backend)
    for model in (net, other):
        model.fit(X, Y, epochs=4, batch_size=6, shuffle=False,
                  optimizer=fastbp.SGD(model, 0.05, momentum=0.5))
    np.testing.assert_allclose(other.params, net.params, rtol=1e-12, atol=1e-12)


def test_fit_with_shuffle_follows_the_permutation_spec(backend):
    net, X, Y = make_problem(backend)
    stepped = clone(net)
    seed, batch_size, epochs = 1234, 8, 2
    net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=0.05, shuffle=True, seed=seed)
    opt = fastbp.SGD(stepped, 0.05)
    for epoch in range(epochs):
        order = spec_permutation(len(X), seed, epoch)
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            opt.train_step(X[rows], Y[rows])
    np.testing.assert_allclose(net.params, stepped.params, rtol=1e-12, atol=1e-12)


def test_fit_with_shuffle_is_reproducible_and_seed_dependent(backend, dtype):
    net, X, Y = make_problem(backend, dtype)
    start = net.params.copy()
    runs = {}
    for seed in (1, 1, 2):
        net.params[:] = start
        net.fit(X, Y, epochs=3, batch_size=4, lr=0.05, shuffle=True, seed=seed)
        runs.setdefault(seed, []).append(net.params.copy())
    assert np.array_equal(runs[1][0], runs[1][1]), "same seed, same run: bit for bit"
    assert not np.allclose(runs[1][0], runs[2][0]), "a different seed gives a different order"
    net.params[:] = start
    net.fit(X, Y, epochs=3, batch_size=4, lr=0.05, shuffle=False)
    assert not np.allclose(net.params, runs[1][0]), "shuffling changes the order"


def test_fit_with_shuffle_agrees_across_backends(backend):
    net, X, Y = make_problem("numpy")
    other = clone(net, backend)
    for model in (net, other):
        model.fit(X, Y, epochs=3, batch_size=5, lr=0.05, shuffle=True, seed=99)
    np.testing.assert_allclose(other.params, net.params, rtol=1e-12, atol=1e-12)


def test_fit_loss_decreases_on_a_learnable_problem(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.sin(X @ np.array([[1.0], [-0.5], [0.25]]))
    net = fastbp.Network([3, 16, 1], ["tanh", "identity"], seed=0, backend=backend)
    history = net.fit(X, Y, epochs=30, batch_size=16, lr=0.1, seed=0)
    assert history.loss[-1] < 0.2 * history.loss[0]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("activations", [["relu", "identity"], ["sigmoid", "identity"]])
def test_save_load_round_trip_is_bit_for_bit(activations, loss, backend, dtype, tmp_path):
    net = fastbp.Network([6, 5, 3], activations, loss=loss, dtype=dtype, seed=4, backend=backend)
    rng = np.random.default_rng(1)
    # Values that do not round-trip through a decimal text format, and a negative zero.
    net.params[:] = rng.normal(size=net.params.size).astype(dtype) / 3
    net.params[0] = -0.0
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = fastbp.Network.load(path)
    assert loaded.params.dtype == net.params.dtype == np.dtype(dtype)
    assert np.array_equal(loaded.params, net.params)
    assert loaded.params.tobytes() == net.params.tobytes()
    assert list(loaded.layer_sizes) == [6, 5, 3]
    assert list(loaded.activations) == activations
    assert loaded.loss_name == loss
    assert np.dtype(loaded.dtype) == np.dtype(dtype)
    for layer in range(2):
        assert np.array_equal(loaded.weights[layer], net.weights[layer])
        assert np.array_equal(loaded.biases[layer], net.biases[layer])
    X = rng.normal(size=(4, 6)).astype(dtype)
    # load() takes the default backend unless told; on the same backend the predictions are identical.
    same = fastbp.Network.load(path, backend=backend)
    assert same.backend == backend
    assert same.params.tobytes() == net.params.tobytes()
    assert np.array_equal(same.predict(X), net.predict(X))
    # Saving with a str path works too.
    net.save(str(tmp_path / "again.npz"))
    assert fastbp.Network.load(str(tmp_path / "again.npz")).params.tobytes() == net.params.tobytes()


def test_params_are_one_buffer_with_views(backend):
    net = fastbp.Network([3, 4, 2], "tanh", seed=0, backend=backend)
    assert net.params.ndim == 1 and net.params.flags.c_contiguous
    assert net.params.size == 3 * 4 + 4 + 4 * 2 + 2
    assert [w.shape for w in net.weights] == [(4, 3), (2, 4)]
    assert [b.shape for b in net.biases] == [(4,), (2,)]
    net.weights[1][1, 2] = 7.5
    net.biases[0][3] = -2.5
    # Layout: W0 row-major, b0, W1 row-major, b1.
    assert net.params[12 + 4 + 1 * 4 + 2] == 7.5
    assert net.params[12 + 3] == -2.5
    net.params[0] = 1.25
    assert net.weights[0][0, 0] == 1.25


def test_fit_does_not_copy_ready_data(backend):
    """Issue 3's memory rule: X and Y already C-contiguous in the network's dtype are used in place.

    tracemalloc sees NumPy's allocations; a copy of X (16 MB here) would show in the peak.
    """
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 100))
    Y = rng.normal(size=(20_000, 2))
    net = fastbp.Network([100, 8, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    net.fit(X[:64], Y[:64], epochs=1, batch_size=32)  # first-call allocations out of the way
    tracemalloc.start()
    try:
        net.fit(X, Y, epochs=2, batch_size=32, shuffle=True, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, f"fit allocated {peak / 1e6:.1f} MB for {X.nbytes / 1e6:.1f} MB of data"


# The per-example loop for one hidden layer of at most 4 units (fastbp_train_rows_small) regroups the
# arithmetic for latency; the general per-example loop handles everything else. Both against the twin, over
# every activation pair, both squared-error losses, shuffled and not, 3 epochs of per-example SGD.
TINY_SIZES = [(1, 1, 1), (2, 2, 1), (4, 3, 4), (3, 4, 2), (4, 4, 4), (1, 4, 1), (5, 3, 2), (4, 5, 1)]
# Layers of 8 (float64) or 16 (float32) outputs and more: the general loop works on transposed weights there
# (a layer after a transposed one, a padded last vector, a second hidden layer of the same width).
WIDE_SIZES = [(8, 16, 1), (3, 20, 10, 2), (17, 33, 5), (12, 16, 16, 2)]
ACTIVATIONS = ["identity", "sigmoid", "relu", "tanh"]


@pytest.mark.parametrize("sizes", TINY_SIZES + WIDE_SIZES,
                         ids=["-".join(map(str, s)) for s in TINY_SIZES + WIDE_SIZES])
@pytest.mark.parametrize("loss", ["half_sse", "mse"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_per_example_fit_matches_the_twin(sizes, loss, dtype):
    pytest.importorskip("fastbp._core")
    rng = np.random.default_rng(sum(sizes) * 7 + len(loss))
    tolerance = {"float64": 1e-10, "float32": 2e-4}[dtype]
    moved = 0
    for hidden in ACTIVATIONS:
        for output in ACTIVATIONS:
            acts = [hidden] * (len(sizes) - 2) + [output]
            compiled = random_net(fastbp, rng, list(sizes), acts, loss, dtype, "cython")
            twin = clone(compiled, "numpy")
            initial = compiled.params.copy()
            X = rng.uniform(-2, 2, size=(53, sizes[0])).astype(dtype)
            Y = rng.uniform(-1, 1, size=(53, sizes[-1])).astype(dtype)
            if output == "sigmoid":
                Y = (Y + 1) / 2
            lr = 1.0 if sizes in TINY_SIZES else 0.05  # wider nets diverge at the tiny nets' rates
            for net in (compiled, twin):
                net.fit(X, Y, epochs=2, batch_size=1, lr=0.05 * lr, shuffle=False)
                net.fit(X, Y, epochs=1, batch_size=1, lr=0.02 * lr, shuffle=True, seed=5)
            moved += np.abs(compiled.params - initial).max() > 1e-3
            np.testing.assert_allclose(compiled.params, twin.params, rtol=tolerance, atol=tolerance,
                                       err_msg=f"{sizes} {hidden}/{output} {loss} {dtype}")
            losses = [net.loss(X, Y) for net in (compiled, twin)]
            np.testing.assert_allclose(losses[0], losses[1], rtol=tolerance * 10)
    assert moved >= 12, f"only {moved} of 16 networks trained: the comparison would be vacuous"
