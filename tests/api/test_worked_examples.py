"""The shared worked examples: every intermediate of one SGD step against the exact values and the textbook.

The JSON files are copies of ``../shared/worked-examples`` (tests must not reach outside the repository).
Their ``expected`` values are exact float64 results computed independently of fastbp; their
``printed_in_textbook`` values are the rounded numbers the source printed, checked within its tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import TOLERANCES, WORKED_EXAMPLES, assert_flat_close, example_ids, flat, load_example

EXACT = TOLERANCES[np.dtype(np.float64)]  # 1e-12: the bound for float64
FLOAT32 = TOLERANCES[np.dtype(np.float32)]


def run_example(spec, backend, dtype="float64"):
    """Build the example's network, trace it, take one SGD step; every observed quantity in a dict."""
    net = fastbp.Network(spec["layer_sizes"], spec["activations"], loss=spec["loss"], dtype=dtype,
                         backend=backend)
    net.set_params([np.array(w, dtype=dtype) for w in spec["weights"]],
                   [np.array(b, dtype=dtype) for b in spec["biases"]])
    X = np.array([spec["x"]], dtype=dtype)
    Y = np.array([spec["y"]], dtype=dtype)
    trace = net.trace(X, Y)
    grads = net.gradients(X, Y)
    observed = {
        "pre_activations": [flat(z) for z in trace.pre_activations],
        "activations": [flat(a) for a in trace.activations],
        "deltas": [flat(d) for d in trace.deltas],
        "grad_weights": [np.asarray(g, dtype=np.float64) for g in trace.grad_weights],
        "grad_biases": [flat(g) for g in trace.grad_biases],
        "output": flat(trace.output),
        "loss": float(trace.loss),
        "gradients.weights": [np.asarray(g, dtype=np.float64) for g in grads.weights],
        "gradients.biases": [flat(g) for g in grads.biases],
        "gradients.loss": float(grads.loss),
        "predict": flat(net.predict(X)),
        "predict_single": flat(net.predict(X[0])),
        "net.loss": float(net.loss(X, Y)),
    }
    observed["train_step_loss"] = float(fastbp.SGD(net, spec["lr"]).train_step(X, Y))
    observed["new_weights"] = [np.array(w, dtype=np.float64) for w in net.weights]
    observed["new_biases"] = [flat(b) for b in net.biases]
    observed["output_after"] = flat(net.predict(X))
    observed["loss_after"] = float(net.loss(X, Y))
    return net, observed


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_every_intermediate_matches_exact_values(path, backend):
    spec = load_example(path)
    expected = spec["expected"]
    _, got = run_example(spec, backend)
    n_layers = len(spec["layer_sizes"]) - 1
    for key in ("pre_activations", "activations", "deltas", "grad_weights", "grad_biases",
                "new_weights", "new_biases"):
        assert len(got[key]) == n_layers, f"{key}: {len(got[key])} layers, expected {n_layers}"
        for layer in range(n_layers):
            want = np.asarray(expected[key][layer], dtype=np.float64)
            if key in ("grad_weights", "new_weights"):
                assert got[key][layer].shape == want.shape, f"{key}[{layer}] shape"
            assert_flat_close(got[key][layer], want, what=f"{key}[{layer}]", **EXACT)
    for layer in range(n_layers):
        assert_flat_close(got["gradients.weights"][layer], expected["grad_weights"][layer],
                          what=f"gradients.weights[{layer}]", **EXACT)
        assert_flat_close(got["gradients.biases"][layer], expected["grad_biases"][layer],
                          what=f"gradients.biases[{layer}]", **EXACT)
    for key in ("output", "predict", "predict_single"):
        assert_flat_close(got[key], expected["output"], what=key, **EXACT)
    for key in ("loss", "gradients.loss", "net.loss", "train_step_loss"):
        assert got[key] == pytest.approx(expected["loss"], rel=1e-12, abs=1e-12), key
    assert_flat_close(got["output_after"], expected["output_after"], what="output_after", **EXACT)
    assert got["loss_after"] == pytest.approx(expected["loss_after"], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_float32_follows_exact_values(path, backend):
    spec = load_example(path)
    expected = spec["expected"]
    net, got = run_example(spec, backend, dtype="float32")
    assert net.dtype == np.float32 and net.params.dtype == np.float32
    for key in ("pre_activations", "activations", "deltas", "grad_weights", "grad_biases",
                "new_weights", "new_biases"):
        for layer, want in enumerate(expected[key]):
            assert_flat_close(got[key][layer], want, what=f"{key}[{layer}]", **FLOAT32)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
    assert got["loss_after"] == pytest.approx(expected["loss_after"], rel=1e-5, abs=1e-6)


# Each file prints different quantities under different names: map every key explicitly, so that a key
# added to a file without a mapping here fails the test instead of being silently ignored.
TEXTBOOK_KEYS = {
    "scalar-1-1-1": {
        "hidden_activation": lambda g: g["activations"][0],
        "output": lambda g: g["output"],
        "loss": lambda g: g["loss"],
        "grad_w1": lambda g: g["grad_weights"][0],
        "grad_b1": lambda g: g["grad_biases"][0],
        "grad_w2": lambda g: g["grad_weights"][1],
        "grad_b2": lambda g: g["grad_biases"][1],
        "new_w1": lambda g: g["new_weights"][0],
        "new_b1": lambda g: g["new_biases"][0],
        "new_w2": lambda g: g["new_weights"][1],
        "new_b2": lambda g: g["new_biases"][1],
        "output_after": lambda g: g["output_after"],
        "loss_after": lambda g: g["loss_after"],
    },
    "sigmoid-2-2-1": {
        "z1": lambda g: g["pre_activations"][0],
        "a1": lambda g: g["activations"][0],
        "z2": lambda g: g["pre_activations"][1],
        "output": lambda g: g["output"],
        "loss": lambda g: g["loss"],
        "delta2": lambda g: g["deltas"][1],
        "delta1": lambda g: g["deltas"][0],
        "grad_W2": lambda g: g["grad_weights"][1],
        "grad_b2": lambda g: g["grad_biases"][1],
        "grad_W1": lambda g: g["grad_weights"][0],
        "new_W1": lambda g: g["new_weights"][0],
        "new_b1": lambda g: g["new_biases"][0],
        "new_W2": lambda g: g["new_weights"][1],
        "new_b2": lambda g: g["new_biases"][1],
        "output_after": lambda g: g["output_after"],
        "loss_after": lambda g: g["loss_after"],
    },
    "house-2-2-1": {
        "hidden_activations": lambda g: g["activations"][0],
        "output": lambda g: g["output"],
        "new_W1": lambda g: g["new_weights"][0],
        "new_b1": lambda g: g["new_biases"][0],
        "new_W2": lambda g: g["new_weights"][1],
        "new_b2": lambda g: g["new_biases"][1],
    },
}
NOT_VALUES = {"tolerance", "note"}


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_printed_textbook_values(path, backend):
    spec = load_example(path)
    printed = spec["printed_in_textbook"]
    tolerance = printed["tolerance"]
    mapping = TEXTBOOK_KEYS[spec["name"]]
    assert set(printed) - NOT_VALUES == set(mapping), "map every printed key explicitly"
    _, got = run_example(spec, backend)
    for key, pick in mapping.items():
        assert_flat_close(pick(got), printed[key], rtol=0, atol=tolerance, what=f"textbook {key}")


def test_scalar_example_repeated_steps_drive_loss_to_zero(backend):
    spec = load_example(next(p for p in WORKED_EXAMPLES if p.stem == "scalar-1-1-1"))
    claim = spec["iterate"]
    net = fastbp.Network(spec["layer_sizes"], spec["activations"], loss=spec["loss"], backend=backend)
    net.set_params([np.array(w) for w in spec["weights"]], [np.array(b) for b in spec["biases"]])
    X, Y = np.array([spec["x"]]), np.array([spec["y"]])
    opt = fastbp.SGD(net, spec["lr"])
    losses = [opt.train_step(X, Y) for _ in range(claim["steps"])]
    assert losses[0] == pytest.approx(spec["expected"]["loss"], rel=1e-12)
    assert losses[1] == pytest.approx(spec["expected"]["loss_after"], rel=1e-12)
    assert net.loss(X, Y) < claim["loss_after_50_steps_below"]
    # Independent check of the claim: the output now equals the target.
    assert abs(float(flat(net.predict(X))[0]) - spec["y"][0]) < np.sqrt(2 * claim["loss_after_50_steps_below"])
