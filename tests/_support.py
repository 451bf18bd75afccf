"""Helpers shared by the test modules (not fixtures: plain functions)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data"
WORKED_EXAMPLES = sorted((DATA / "worked-examples").glob("*.json"))
# Agreement expected between two computations of the same quantity in one dtype (summation order differs).
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}
ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
LOSSES = ("half_sse", "mse", "cross_entropy", "binary_cross_entropy", "poisson")


def load_example(path):
    with open(path) as handle:
        return json.load(handle)


def example_ids():
    return [path.stem for path in WORKED_EXAMPLES]


def flat(value):
    """Any nested list / array / scalar as a 1-D float64 array (shape-agnostic comparison)."""
    return np.asarray(value, dtype=np.float64).reshape(-1)


def assert_flat_close(actual, expected, rtol, atol, what=""):
    actual, expected = flat(actual), flat(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} values, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def random_net(fastbp, rng, sizes, activations, loss, dtype, backend):
    """A network with the given architecture and random parameters (drawn here, not by fastbp)."""
    net = fastbp.Network(sizes, activations, loss=loss, dtype=dtype, backend=backend)
    weights = [rng.uniform(-1, 1, size=(n_out, n_in)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    biases = [rng.uniform(-0.5, 0.5, size=n_out) for n_out in sizes[1:]]
    net.set_params([w.astype(dtype) for w in weights], [b.astype(dtype) for b in biases])
    return net


def random_targets(rng, loss, n, n_out, dtype, as_indices=True):
    """Targets for ``loss``: class indices or probability rows for cross_entropy, floats otherwise."""
    if loss == "cross_entropy":
        if as_indices:
            return rng.integers(0, n_out, size=n)
        probabilities = rng.uniform(0.05, 1.0, size=(n, n_out))
        return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(dtype)
    if loss == "binary_cross_entropy":
        return rng.uniform(0, 1, size=(n, n_out)).astype(dtype)
    if loss == "poisson":
        return rng.poisson(1.5, size=(n, n_out)).astype(dtype)
    return rng.normal(size=(n, n_out)).astype(dtype)


def layer_activations(activation, depth, loss):
    """One activation for every layer; the logit losses need identity on the last layer."""
    names = [activation] * depth
    if loss in ("cross_entropy", "binary_cross_entropy", "poisson"):
        names[-1] = "identity"
    return names


def example_net(spec, backend, dtype="float64"):
    """A Network with a worked example's architecture and starting parameters."""
    import fastbp

    net = fastbp.Network(
        spec["layer_sizes"], spec["activations"], loss=spec["loss"], dtype=dtype, backend=backend
    )
    net.set_params(
        [np.array(w, dtype=dtype) for w in spec["weights"]],
        [np.array(b, dtype=dtype) for b in spec["biases"]],
    )
    return net
