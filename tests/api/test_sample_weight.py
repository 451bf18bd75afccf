"""sample_weight in loss, gradients, fit and SGD.train_step: against PyTorch per-example losses, against a
hand computation, and against repeating examples with integer weights."""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import LOSSES, layer_activations, random_net, random_targets

torch = pytest.importorskip("torch")

TOL = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6}}


def _per_example_torch(loss, output, Y):
    """Each example's loss l_i under the loss's own convention, from torch's unreduced losses."""
    nn = torch.nn
    if loss == "half_sse":
        return 0.5 * ((output - Y) ** 2).sum(dim=1)
    if loss == "mse":
        return nn.MSELoss(reduction="none")(output, Y).mean(dim=1)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(reduction="none")(output, Y)
    if loss == "binary_cross_entropy":
        return nn.BCEWithLogitsLoss(reduction="none")(output, Y).mean(dim=1)
    return nn.PoissonNLLLoss(log_input=True, full=False, reduction="none")(output, Y).mean(dim=1)


@pytest.mark.parametrize("loss", LOSSES)
def test_weighted_loss_and_gradient_match_torch(backend, dtype, loss):
    rng = np.random.default_rng(LOSSES.index(loss))
    sizes = [3, 4, 3]
    net = random_net(fastbp, rng, sizes, layer_activations("tanh", 2, loss), loss, dtype, backend)
    X = rng.normal(size=(6, 3)).astype(dtype)
    Y = random_targets(rng, loss, 6, 3, dtype, as_indices=False)
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.25], dtype=dtype)

    model = net.to_torch().double()
    output = model(torch.from_numpy(X.astype(np.float64)))
    weights = torch.from_numpy(w.astype(np.float64))
    expected = (weights * _per_example_torch(loss, output, torch.from_numpy(Y.astype(np.float64)))).sum() / weights.sum()
    expected.backward()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    g = net.gradients(X, Y, sample_weight=w)
    np.testing.assert_allclose(g.loss, float(expected.detach()), **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(net.loss(X, Y, sample_weight=w), float(expected.detach()), **TOL[np.dtype(dtype)])
    for ours, layer in zip(g.weights, linears):
        np.testing.assert_allclose(ours, layer.weight.grad.numpy(), **TOL[np.dtype(dtype)])
    for ours, layer in zip(g.biases, linears):
        np.testing.assert_allclose(ours, layer.bias.grad.numpy(), **TOL[np.dtype(dtype)])


def test_hand_computation(backend):
    """mse, one linear unit: L = sum_i w_i (w.x_i + b - y_i)^2 / sum_i w_i, dL/db = 2 sum_i w_i r_i / sum w."""
    net = fastbp.Network([2, 1], "identity", loss="mse", backend=backend)
    net.set_params([np.array([[1.0, -1.0]])], [np.array([0.5])])
    X = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    Y = np.array([0.0, 1.0, 2.0])
    w = np.array([1.0, 3.0, 0.0])
    residuals = np.array([-0.5 - 0.0, -0.5 - 1.0, 3.5 - 2.0])      # yhat - y
    loss = (1 * 0.25 + 3 * 2.25 + 0 * 2.25) / 4                      # = 1.75
    g = net.gradients(X, Y, sample_weight=w)
    assert g.loss == pytest.approx(loss, rel=1e-15) and loss == 1.75
    assert net.loss(X, Y, sample_weight=w) == pytest.approx(1.75, rel=1e-15)
    np.testing.assert_allclose(g.biases[0], [2 * (w * residuals).sum() / 4], rtol=1e-15)
    np.testing.assert_allclose(g.weights[0], [2 * (w * residuals) @ X / 4], rtol=1e-15)


@pytest.mark.parametrize("loss", LOSSES)
def test_integer_weights_equal_repeated_examples(backend, loss):
    """fit with shuffle=False and the full batch on weights (0, 1, 2, 3 ...) equals fit on the data with
    each example repeated that many times; so do loss, gradients and train_step."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(7, 3))
    Y = random_targets(rng, loss, 7, 2, np.float64, as_indices=False)
    w = np.array([1, 0, 2, 3, 1, 1, 2])
    X_rep, Y_rep = np.repeat(X, w, axis=0), np.repeat(Y, w, axis=0)
    sizes, names = [3, 5, 2], layer_activations("sigmoid", 2, loss)
    weighted = random_net(fastbp, np.random.default_rng(0), sizes, names, loss, "float64", backend)
    repeated = random_net(fastbp, np.random.default_rng(0), sizes, names, loss, "float64", backend)

    assert weighted.loss(X, Y, sample_weight=w) == pytest.approx(repeated.loss(X_rep, Y_rep), rel=1e-12)
    g_w, g_r = weighted.gradients(X, Y, sample_weight=w), repeated.gradients(X_rep, Y_rep)
    for a, b in zip(g_w.weights + g_w.biases, g_r.weights + g_r.biases):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)

    h_w = weighted.fit(X, Y, epochs=5, batch_size=len(X), lr=0.1, shuffle=False, sample_weight=w)
    h_r = repeated.fit(X_rep, Y_rep, epochs=5, batch_size=len(X_rep), lr=0.1, shuffle=False)
    np.testing.assert_allclose(weighted.params, repeated.params, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(h_w.loss, h_r.loss, rtol=1e-11)

    step_w = fastbp.SGD(weighted, 0.1, momentum=0.9).train_step(X, Y, sample_weight=w)
    step_r = fastbp.SGD(repeated, 0.1, momentum=0.9).train_step(X_rep, Y_rep)
    assert step_w == pytest.approx(step_r, rel=1e-11)
    np.testing.assert_allclose(weighted.params, repeated.params, rtol=1e-11, atol=1e-13)


def test_unit_weights_change_nothing(backend):
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2))
    a = random_net(fastbp, np.random.default_rng(1), [3, 4, 2], "tanh", "mse", "float64", backend)
    b = random_net(fastbp, np.random.default_rng(1), [3, 4, 2], "tanh", "mse", "float64", backend)
    for batch_size in (1, 4):
        ha = a.fit(X, Y, epochs=2, batch_size=batch_size, lr=0.05, seed=3, sample_weight=np.ones(9))
        hb = b.fit(X, Y, epochs=2, batch_size=batch_size, lr=0.05, seed=3)
        np.testing.assert_allclose(a.params, b.params, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ha.loss, hb.loss, rtol=1e-12)


def test_a_batch_of_zero_weights_makes_no_update(backend):
    rng = np.random.default_rng(8)
    X, Y = rng.normal(size=(4, 2)), rng.normal(size=(4, 1))
    a = random_net(fastbp, np.random.default_rng(1), [2, 3, 1], "relu", "half_sse", "float64", backend)
    b = random_net(fastbp, np.random.default_rng(1), [2, 3, 1], "relu", "half_sse", "float64", backend)
    loss_before = b.loss(X[2:], Y[2:])
    history = a.fit(X, Y, epochs=1, batch_size=2, lr=0.1, shuffle=False, sample_weight=[0, 0, 1, 1])
    b.fit(X[2:], Y[2:], epochs=1, batch_size=2, lr=0.1, shuffle=False)
    np.testing.assert_array_equal(a.params, b.params)
    assert history.loss[0] == pytest.approx(loss_before, rel=1e-14)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("batch_size,momentum", [(1, 0.0), (1, 0.9), (3, 0.0), (3, 0.9), (20, 0.0)])
def test_weighted_training_agrees_between_backends(dtype, loss, batch_size, momentum):
    pytest.importorskip("fastbp._core")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(20, 3)).astype(dtype)
    Y = random_targets(rng, loss, 20, 2, dtype)
    w = rng.uniform(0, 2, size=20)
    w[:3] = 0
    nets = [random_net(fastbp, np.random.default_rng(1), [3, 4, 2], layer_activations("sigmoid", 2, loss),
                       loss, dtype, b) for b in ("numpy", "cython")]
    histories = [net.fit(X, Y, epochs=3, batch_size=batch_size, seed=5, sample_weight=w,
                         optimizer=fastbp.SGD(net, 0.05, momentum=momentum)) for net in nets]
    tol = {"rtol": 1e-9, "atol": 1e-12} if np.dtype(dtype) == np.float64 else {"rtol": 2e-4, "atol": 1e-5}
    np.testing.assert_allclose(nets[1].params, nets[0].params, **tol)
    np.testing.assert_allclose(histories[1].loss, histories[0].loss, **tol)


@pytest.mark.parametrize("bad,message", [
    ([1.0, -1.0, 1.0], "sample_weight must be non-negative"),
    ([1.0, np.nan, 1.0], "sample_weight must be finite"),
    ([1.0, np.inf, 1.0], "sample_weight must be finite"),
    ([1.0, 1.0], r"sample_weight must have shape \(3,\)"),
    ([[1.0, 1.0, 1.0]], r"sample_weight must have shape \(3,\)"),
    ([0.0, 0.0, 0.0], "sample_weight must not be all zero"),
    (["a", "b", "c"], "sample_weight must hold real numbers"),
])
def test_bad_sample_weights_are_refused(backend, bad, message):
    net = fastbp.Network([2, 1], "identity", backend=backend, seed=0)
    before = net.params.copy()
    X, Y = np.zeros((3, 2)), np.zeros(3)
    opt = fastbp.SGD(net, 0.1)
    calls = (lambda: net.loss(X, Y, sample_weight=bad), lambda: net.gradients(X, Y, sample_weight=bad),
             lambda: net.fit(X, Y, sample_weight=bad), lambda: opt.train_step(X, Y, sample_weight=bad))
    for call in calls:
        with pytest.raises((ValueError, TypeError), match=message):
            call()
    np.testing.assert_array_equal(net.params, before)


def test_lbfgs_with_integer_weights_equals_lbfgs_on_repeated_examples(backend):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(7, 3))
    Y = rng.normal(size=(7, 2))
    counts = np.array([1, 3, 0, 2, 1, 1, 4])
    nets = [fastbp.Network([3, 4, 2], ["tanh", "identity"], seed=2, backend=backend) for _ in range(2)]
    nets[0].fit(X, Y, optimizer=fastbp.LBFGS(nets[0], max_iter=30), sample_weight=counts.astype(float))
    nets[1].fit(np.repeat(X, counts, axis=0), np.repeat(Y, counts, axis=0), optimizer=fastbp.LBFGS(nets[1], max_iter=30))
    unweighted = fastbp.Network([3, 4, 2], ["tanh", "identity"], seed=2, backend=backend)
    unweighted.fit(X, Y, optimizer=fastbp.LBFGS(unweighted, max_iter=30))
    np.testing.assert_allclose(nets[0].params, nets[1].params, rtol=1e-7, atol=1e-9)
    assert not np.allclose(nets[0].params, unweighted.params, rtol=1e-3)
