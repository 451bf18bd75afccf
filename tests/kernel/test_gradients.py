"""Backprop's gradients against central differences of ``net.loss``, in float64.

Every activation x loss on random networks of depth 1 to 4 and batch sizes 1 to 64. The full grid
(4 x 3 x 4 depths x 64 batch sizes) is too slow to run on every commit, so each (activation, loss) pair
runs a fixed spread of (depth, batch size) pairs that together cover every depth and both batch-size
extremes.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import ACTIVATIONS, LOSSES, layer_activations, random_net, random_targets

SHAPES = [(1, 1), (2, 64), (3, 5), (4, 17)]  # (depth, batch size)
EPS = 1e-6


def central_differences(net, X, Y):
    """d loss / d params by central differences, perturbing ``net.params`` in place (restored exactly)."""
    params = net.params
    numeric = np.empty(params.size)
    for i in range(params.size):
        original = params[i]
        params[i] = original + EPS
        plus = net.loss(X, Y)
        params[i] = original - EPS
        minus = net.loss(X, Y)
        params[i] = original
        numeric[i] = (plus - minus) / (2 * EPS)
    return numeric


def flatten_gradients(net, grads):
    """The gradient lists in the layout of ``params`` (weights row-major, then biases, layer by layer)."""
    parts = []
    for w, b in zip(grads.weights, grads.biases):
        parts += [np.asarray(w, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)]
    flat = np.concatenate(parts)
    assert flat.size == net.params.size
    return flat


@pytest.mark.parametrize("depth,batch", SHAPES, ids=[f"depth{d}-batch{b}" for d, b in SHAPES])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_central_differences(activation, loss, depth, batch, backend):
    rng = np.random.default_rng([ACTIVATIONS.index(activation), LOSSES.index(loss), depth, batch])
    sizes = [int(n) for n in rng.integers(2, 6, size=depth + 1)]
    if loss == "cross_entropy":
        sizes[-1] = max(sizes[-1], 3)
    net = random_net(fastbp, rng, sizes, layer_activations(activation, depth, loss), loss, "float64", backend)
    X = rng.normal(size=(batch, sizes[0]))
    # Alternate class indices and probability rows for cross_entropy.
    Y = random_targets(rng, loss, batch, sizes[-1], np.float64, as_indices=(depth % 2 == 1))
    before = net.params.copy()

    grads = net.gradients(X, Y)
    analytic = flatten_gradients(net, grads)
    numeric = central_differences(net, X, Y)

    assert np.array_equal(net.params, before), "computing gradients must not change the parameters"
    assert grads.loss == pytest.approx(net.loss(X, Y), rel=1e-14, abs=1e-15)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    # The check can fail: a wrong gradient (here: half of it) is far outside the tolerance.
    if np.abs(numeric).max() > 1e-4:
        assert not np.allclose(0.5 * analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_trace_gradients_equal_gradients(activation, backend):
    rng = np.random.default_rng(7)
    sizes = [3, 4, 2]
    net = random_net(fastbp, rng, sizes, activation, "mse", "float64", backend)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    trace, grads = net.trace(X, Y), net.gradients(X, Y)
    for layer in range(2):
        np.testing.assert_allclose(trace.grad_weights[layer], grads.weights[layer], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(trace.grad_biases[layer], grads.biases[layer], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(trace.output), net.predict(X), rtol=1e-12, atol=1e-14)
    # The deltas are dL/dz: grad_weights[l] = deltas[l]^T a[l-1], grad_biases[l] = sum over the batch.
    inputs = [X] + [np.asarray(a) for a in trace.activations[:-1]]
    for layer in range(2):
        delta = np.asarray(trace.deltas[layer])
        np.testing.assert_allclose(delta.T @ inputs[layer], grads.weights[layer], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(delta.sum(axis=0), grads.biases[layer], rtol=1e-10, atol=1e-14)


def test_relu_derivative_at_zero_is_zero(backend):
    # A ReLU unit whose pre-activation is exactly 0 passes no gradient (PyTorch's convention).
    net = fastbp.Network([1, 1, 1], ["relu", "identity"], loss="half_sse", backend=backend)
    net.set_params([np.array([[1.0]]), np.array([[1.0]])], [np.array([0.0]), np.array([0.0])])
    grads = net.gradients(np.array([[0.0]]), np.array([[1.0]]))
    assert grads.weights[0][0, 0] == 0.0 and grads.biases[0][0] == 0.0
    assert grads.biases[1][0] == -1.0
