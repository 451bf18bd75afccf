"""The logit losses binary_cross_entropy and poisson against PyTorch in float64, their gradients against
finite differences, extreme logits, target validation, and predict_proba."""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import random_net

torch = pytest.importorskip("torch")

TORCH_TOLERANCE = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
                   np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6}}


def _targets(rng, loss, n, K, multilabel=False):
    if loss == "binary_cross_entropy":
        if multilabel:
            return rng.integers(0, 2, size=(n, K)).astype(np.float64)
        return rng.uniform(0, 1, size=(n, K))
    return rng.poisson(2.0, size=(n, K)).astype(np.float64)


def _torch_reference(net, X, Y, loss):
    """The loss and the gradients of every weight and bias, from torch in float64."""
    model = net.to_torch().double()
    x = torch.from_numpy(np.asarray(X, dtype=np.float64))
    y = torch.from_numpy(np.asarray(Y, dtype=np.float64))
    if loss == "binary_cross_entropy":
        criterion = torch.nn.BCEWithLogitsLoss()
    else:
        criterion = torch.nn.PoissonNLLLoss(log_input=True, full=False)
    value = criterion(model(x), y)
    value.backward()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return (float(value.detach()), [m.weight.grad.numpy() for m in linears], [m.bias.grad.numpy() for m in linears])


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
@pytest.mark.parametrize("hidden", ["sigmoid", "relu", "tanh", "identity"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_loss_and_gradient_match_torch(backend, dtype, loss, hidden, multilabel):
    if multilabel and loss == "poisson":
        pytest.skip("multilabel targets are a binary_cross_entropy case")
    rng = np.random.default_rng(11)
    net = random_net(fastbp, rng, [4, 5, 3], [hidden, "identity"], loss, dtype, backend)
    X = rng.normal(size=(7, 4)).astype(dtype)
    Y = _targets(rng, loss, 7, 3, multilabel).astype(dtype)
    value, weight_grads, bias_grads = _torch_reference(net, X, Y, loss)
    tol = TORCH_TOLERANCE[np.dtype(dtype)]
    g = net.gradients(X, Y)
    np.testing.assert_allclose(g.loss, value, **tol)
    np.testing.assert_allclose(net.loss(X, Y), value, **tol)
    for ours, theirs in zip(g.weights + g.biases, weight_grads + bias_grads):
        np.testing.assert_allclose(ours, theirs, **tol)


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_check_gradients_passes(backend, loss):
    rng = np.random.default_rng(3)
    net = random_net(fastbp, rng, [3, 4, 2], ["tanh", "identity"], loss, "float64", backend)
    X = rng.normal(size=(5, 3))
    Y = _targets(rng, loss, 5, 2)
    check = fastbp.check_gradients(net, X, Y)
    assert check.passed(1e-6), check.max_relative_error


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_training_agrees_between_backends(loss, dtype):
    """Per-example (the fused C loop) and mini-batch training: the compiled kernel matches the twin."""
    pytest.importorskip("fastbp._core")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 3)).astype(dtype)
    Y = _targets(rng, loss, 20, 2).astype(dtype)
    for batch_size in (1, 4, 20):
        nets = [random_net(fastbp, np.random.default_rng(1), [3, 6, 2], ["relu", "identity"], loss, dtype, b)
                for b in ("numpy", "cython")]
        histories = [net.fit(X, Y, epochs=3, batch_size=batch_size, lr=0.05, seed=2) for net in nets]
        tol = {"rtol": 1e-9, "atol": 1e-12} if np.dtype(dtype) == np.float64 else {"rtol": 2e-4, "atol": 1e-5}
        np.testing.assert_allclose(nets[1].params, nets[0].params, **tol)
        np.testing.assert_allclose(histories[1].loss, histories[0].loss, **tol)


@pytest.mark.parametrize("dtype_name,big,wrong", [("float64", 1e308, 1e300), ("float32", 3e38, 1e30)])
def test_extreme_logits_stay_finite(backend, dtype_name, big, wrong):
    """Logits near the float's limit: right targets give loss 0 and gradient 0, wrong ones a finite loss
    of about |z| (the mean of max(z, 0) - z y + log1p(exp(-|z|))) and gradient (sigmoid(z) - y) / K per row."""
    net = fastbp.Network([1, 2], "identity", loss="binary_cross_entropy", dtype=dtype_name, backend=backend)
    X = np.zeros((3, 1))
    for logit, Y, expected_loss, expected_bias in (
            (big, np.array([[1.0, 0.0]] * 3), 0.0, [0.0, 0.0]),
            (wrong, np.array([[0.0, 1.0]] * 3), wrong, [0.5, -0.5])):
        net.set_params([np.zeros((2, 1), dtype=dtype_name)], [np.array([logit, -logit], dtype=dtype_name)])
        g = net.gradients(X, Y)
        np.testing.assert_allclose(g.loss, expected_loss, rtol=1e-6)
        np.testing.assert_allclose(net.loss(X, Y), expected_loss, rtol=1e-6)
        np.testing.assert_allclose(g.biases[0], expected_bias, atol=1e-12)
        np.testing.assert_array_equal(g.weights[0], 0.0)


def test_cross_entropy_with_huge_logits_agrees_with_loss(backend):
    """0 * -inf must not turn a zero-target term into NaN: gradients().loss equals loss() and the twin."""
    net = fastbp.Network([1, 2], "identity", loss="cross_entropy", backend=backend)
    net.set_params([np.zeros((2, 1))], [np.array([1e308, -1e308])])
    X, Y = np.zeros((2, 1)), np.array([0, 0])
    g = net.gradients(X, Y)
    assert g.loss == 0.0 and net.loss(X, Y) == 0.0
    assert all(np.isfinite(a).all() for a in g.weights + g.biases)
    history = net.fit(X, Y, epochs=1, batch_size=1, lr=0.1, shuffle=False)
    assert history.loss == [0.0]


@pytest.mark.parametrize("loss,bad,message", [
    ("binary_cross_entropy", 1.5, r"Y for binary_cross_entropy must lie in \[0, 1\]"),
    ("binary_cross_entropy", -0.1, r"Y for binary_cross_entropy must lie in \[0, 1\]"),
    ("poisson", -1.0, "Y for poisson must be non-negative"),
])
def test_targets_out_of_range_are_refused(backend, loss, bad, message):
    net = fastbp.Network([2, 2], "identity", loss=loss, backend=backend, seed=0)
    before = net.params.copy()
    X, Y = np.zeros((3, 2)), np.full((3, 2), 0.5)
    Y[1, 1] = bad
    for call in (lambda: net.loss(X, Y), lambda: net.gradients(X, Y), lambda: net.fit(X, Y)):
        with pytest.raises(ValueError, match=message):
            call()
    np.testing.assert_array_equal(net.params, before)


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_logit_losses_need_an_identity_last_layer(loss):
    with pytest.raises(ValueError, match="last activation must be 'identity'"):
        fastbp.Network([2, 3, 1], ["relu", "sigmoid"], loss=loss)


def test_predict_proba(backend, dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3)).astype(dtype)
    ce = random_net(fastbp, rng, [3, 4, 3], ["tanh", "identity"], "cross_entropy", dtype, backend)
    logits = torch.from_numpy(ce.predict(X).astype(np.float64))
    np.testing.assert_allclose(ce.predict_proba(X), torch.softmax(logits, dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ce.predict_proba(X[0]), ce.predict_proba(X)[0], rtol=1e-6)
    bce = random_net(fastbp, rng, [3, 4, 3], ["tanh", "identity"], "binary_cross_entropy", dtype, backend)
    logits = torch.from_numpy(bce.predict(X).astype(np.float64))
    np.testing.assert_allclose(bce.predict_proba(X), torch.sigmoid(logits).numpy(), rtol=1e-6)
    for loss in ("mse", "half_sse", "poisson"):
        net = fastbp.Network([3, 2], "identity", loss=loss, backend=backend)
        with pytest.raises(ValueError, match=f"loss is '{loss}'"):
            net.predict_proba(X)
