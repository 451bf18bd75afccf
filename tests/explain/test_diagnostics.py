"""fastbp.check_gradients (it passes on correct gradients and, crucially, fails on wrong ones) and
fastbp.diagnose (dead and saturated units, norms, the vanishing/exploding verdict) on networks built so that
the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import WORKED_EXAMPLES, example_ids, example_net, load_example
from fastbp import diagnostics


def random_problem(backend, activations, loss, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    sizes = [3, 5, 4, 3]
    net = fastbp.Network(sizes, activations, loss=loss, dtype=dtype, seed=seed, backend=backend)
    X = rng.normal(size=(6, 3))
    if loss == "cross_entropy":
        Y = rng.integers(0, 3, size=6)
    else:
        Y = rng.uniform(-1, 1, size=(6, 3))
    return net, X, Y


# --------------------------------------------------------------------------------------------------------
# check_gradients
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_check_gradients_passes_on_the_worked_examples(path, backend):
    spec = load_example(path)
    net = example_net(spec, backend)
    before = net.params.copy()
    result = fastbp.check_gradients(net, spec["x"], spec["y"])
    assert result.passed()
    assert result.passed(1e-7)
    assert result.max_relative_error < 1e-7
    assert [layer.layer for layer in result.per_layer] == list(range(1, len(spec["layer_sizes"])))
    np.testing.assert_array_equal(net.params, before)  # the check leaves the network alone
    assert "PASSED" in str(result)


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("loss", ["half_sse", "mse", "cross_entropy"])
def test_check_gradients_passes_for_every_activation_and_loss(activation, loss, backend):
    activations = [activation, activation, "identity"] if loss == "cross_entropy" else activation
    net, X, Y = random_problem(backend, activations, loss)
    result = fastbp.check_gradients(net, X, Y)
    assert result.passed(), str(result)


def test_check_gradients_on_a_float32_network_uses_a_float64_reference(backend):
    net, X, Y = random_problem(backend, "tanh", "mse", dtype="float32")
    result = fastbp.check_gradients(net, X, Y)
    assert result.dtype == "float32"
    assert result.default_tolerance == 1e-3
    assert result.passed(), str(result)
    # The numeric side is float64: tighter than float32's own rounding of the loss could give.
    assert result.per_layer[0].numeric_weights.dtype == np.float64
    assert result.max_relative_error < 1e-4


@pytest.mark.parametrize(
    "corruption", ["scale_one_weight", "sign_of_a_bias", "swap_layers_biases", "tiny_offset"]
)
def test_check_gradients_fails_on_a_corrupted_gradient(corruption, backend, monkeypatch):
    net, X, Y = random_problem(backend, "sigmoid", "half_sse")
    assert fastbp.check_gradients(net, X, Y).passed()
    honest = net.gradients

    def corrupted(X_, Y_):
        grads = honest(X_, Y_)
        weights = [np.array(w, copy=True) for w in grads.weights]
        biases = [np.array(b, copy=True) for b in grads.biases]
        if corruption == "scale_one_weight":
            weights[1][2, 1] *= 1.5
        elif corruption == "sign_of_a_bias":
            biases[2][0] = -biases[2][0]
        elif corruption == "swap_layers_biases":
            biases[0][:4], biases[1][:4] = biases[1][:4].copy(), biases[0][:4].copy()
        else:
            weights[0][0, 0] += 1e-4 * np.abs(weights[0]).max()
        return fastbp.Gradients(grads.loss, weights, biases)

    monkeypatch.setattr(net, "gradients", corrupted)
    result = fastbp.check_gradients(net, X, Y)
    assert not result.passed()
    assert not result
    assert "FAILED" in str(result)
    corrupted_layer = {"scale_one_weight": 2, "sign_of_a_bias": 3, "swap_layers_biases": 1, "tiny_offset": 1}[
        corruption
    ]
    worst = max(result.per_layer, key=lambda layer: layer.relative_error)
    assert worst.layer == corrupted_layer
    if corruption == "scale_one_weight":
        assert worst.worst_parameter == "W2[2][1]"
    if corruption == "sign_of_a_bias":
        assert worst.worst_parameter == "b3[0]"
    # layers that were not touched still agree
    for layer in result.per_layer:
        if layer.layer != corrupted_layer and corruption != "swap_layers_biases":
            assert layer.relative_error < 1e-7


def test_check_gradients_rejects_a_bad_eps(backend):
    net, X, Y = random_problem(backend, "tanh", "mse")
    for eps in (0, -1e-6, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            fastbp.check_gradients(net, X, Y, eps=eps)
    with pytest.raises(TypeError, match="eps"):
        fastbp.check_gradients(net, X, Y, eps="small")


def kink_network(backend, z_hidden=0.0, dtype="float64"):
    """2-2-1, relu hidden, identity output, half_sse, on x = [1, 1], y = 1: hidden unit 0 has the
    pre-activation ``z_hidden`` (0 puts it exactly on the kink), unit 1 has 0.8.

    By hand: yhat = 0.7 relu(z1[0]) - 0.3 * 0.8 + 0.2, and dL/dyhat = yhat - 1. At z1[0] = 0 the central
    difference for W1[0][i] (x[i] = 1) and b1[0] sees slope 0 on one side and 0.7 (yhat - 1) on the other:
    it gives their average, 0.5 * 0.7 * (yhat - 1), where backprop gives relu'(0) = 0.
    """
    net = fastbp.Network([2, 2, 1], ["relu", "identity"], loss="half_sse", backend=backend, dtype=dtype)
    net.set_params([np.array([[1.0, -1.0], [0.5, 0.2]]), np.array([[0.7, -0.3]])],
                   [np.array([z_hidden, 0.1]), np.array([0.2])])
    return net, np.array([1.0, 1.0]), np.array([1.0])


def test_check_gradients_names_a_relu_kink_and_judges_the_rest(backend):
    net, x, y = kink_network(backend)
    result = fastbp.check_gradients(net, x, y)
    assert [kink.name for kink in result.kinks] == ["W1[0][0]", "W1[0][1]", "b1[0]"]
    yhat = 0.7 * 0.0 - 0.3 * 0.8 + 0.2
    for kink in result.kinks:
        assert (kink.layer, kink.neuron, kink.example, kink.z) == (1, 0, 0, 0.0)
        assert kink.backprop == 0.0
        assert kink.numeric == pytest.approx(0.5 * 0.7 * (yhat - 1.0), rel=1e-6)
    # Judged on the other six, which agree: PASSED, and the report says why three were left out.
    assert result.n_checked == 6
    assert result.passed() and result.max_relative_error < 1e-7
    text = str(result)
    assert "PASSED" in text and "FAILED" not in text
    assert "3 parameters are at a ReLU kink" in text and "relu has no derivative at z = 0" in text
    assert "z1[0] of example 0" in text
    assert [entry["parameter"] for entry in result.as_dict()["kinks"]] == ["W1[0][0]", "W1[0][1]", "b1[0]"]


def test_check_gradients_kinks_do_not_hide_a_wrong_gradient(backend, monkeypatch):
    net, x, y = kink_network(backend)
    honest = net.gradients

    def corrupted(X_, Y_):
        grads = honest(X_, Y_)
        weights = [np.array(w, copy=True) for w in grads.weights]
        weights[0][1, 0] *= 1.01  # a parameter away from the kink
        return fastbp.Gradients(grads.loss, weights, [np.array(b, copy=True) for b in grads.biases])

    monkeypatch.setattr(net, "gradients", corrupted)
    result = fastbp.check_gradients(net, x, y)
    assert len(result.kinks) == 3
    assert not result.passed()
    assert result.per_layer[0].worst_parameter == "W1[1][0]"
    assert "FAILED" in str(result)


@pytest.mark.parametrize("z_hidden, eps, expected", [(3e-7, 1e-6, 3), (-3e-7, 1e-6, 3), (1e-3, 1e-6, 0),
                                                     (1e-3, 1e-2, 3)])
def test_check_gradients_kink_means_within_the_step(z_hidden, eps, expected, backend):
    # A pre-activation closer to 0 than the step moves it makes a kink; one farther away does not.
    net, x, y = kink_network(backend, z_hidden)
    result = fastbp.check_gradients(net, x, y, eps=eps)
    assert len(result.kinks) == expected
    if expected == 0:
        assert "kink" not in str(result)
        assert result.passed()
    assert result.passed(1e-3)


def test_check_gradients_without_relu_reports_no_kink(backend):
    net, X, Y = random_problem(backend, "tanh", "mse")
    result = fastbp.check_gradients(net, X, Y)
    assert result.kinks == [] and "kink" not in str(result)
    assert result.n_checked == net.params.size


def test_check_gradients_tolerance_is_checked(backend):
    net, X, Y = random_problem(backend, "tanh", "mse")
    result = fastbp.check_gradients(net, X, Y)
    assert result.passed(float("inf")) and result.passed(np.float32(1e-3)) and result.passed(1)
    for tol in (10**400, -1e-3, float("nan"), -(10**400)):
        with pytest.raises(ValueError, match="tol"):
            result.passed(tol)
    for tol in ("1e-3", None.__class__, True):
        with pytest.raises(TypeError, match="tol"):
            result.passed(tol)


# --------------------------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------------------------


def test_diagnose_finds_exactly_the_dead_relu_units(backend):
    rng = np.random.default_rng(1)
    net = fastbp.Network([3, 6, 2], ["relu", "identity"], seed=0, backend=backend)
    net.biases[0][[0, 2, 3]] = 10.0  # always active: |W x| <= sqrt(3) / sqrt(3) here
    net.biases[0][[1, 4]] = -10.0  # never active
    net.weights[0][5] = 0.0
    net.biases[0][5] = 0.0  # z = 0 exactly: ReLU's derivative at 0 is 0, so it counts as dead too
    X, Y = rng.uniform(-1, 1, size=(40, 3)), rng.normal(size=(40, 2))
    result = fastbp.diagnose(net, X, Y)
    assert result.layers[0].dead_units == (1, 4, 5)
    assert result.dead_units == {1: (1, 4, 5)}
    assert result.layers[1].dead_units == ()
    assert "layer 1: dead ReLU units (never active on any example): 1, 4, 5" in str(result)
    assert "3 of 6 ReLU units are dead" in " ".join(result.warnings)


def test_diagnose_finds_saturated_sigmoid_and_tanh_units(backend):
    net = fastbp.Network([1, 3, 2, 1], ["sigmoid", "tanh", "identity"], backend=backend)
    net.set_params(
        [
            np.array([[50.0], [0.1], [-40.0]]),
            np.array([[0.1, 0.1, 0.1], [20.0, 20.0, 20.0]]),
            np.array([[1.0, 1.0]]),
        ],
        [np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0]), np.array([0.0])],
    )
    X = np.linspace(0.5, 2.0, 10).reshape(-1, 1)
    result = fastbp.diagnose(net, X, np.zeros((10, 1)))
    assert result.layers[0].saturated_units == (0, 2)  # a ~ 1 and a ~ 0; unit 1 stays near 0.5
    assert result.layers[1].saturated_units == (1,)  # |tanh| ~ 1
    assert result.layers[2].saturated_units == ()


def test_diagnose_norms(backend):
    spec = load_example(WORKED_EXAMPLES[0])
    net = example_net(spec, backend)
    result = fastbp.diagnose(net, spec["x"], spec["y"])
    gradients = net.gradients(spec["x"], spec["y"])
    for l, layer in enumerate(result.layers):
        assert layer.weight_norm == pytest.approx(np.linalg.norm(net.weights[l]), rel=1e-12)
        assert layer.bias_norm == pytest.approx(np.linalg.norm(net.biases[l]), rel=1e-12)
        assert layer.gradient_norm == pytest.approx(np.linalg.norm(gradients.weights[l]), rel=1e-12)
        assert layer.bias_gradient_norm == pytest.approx(np.linalg.norm(gradients.biases[l]), rel=1e-12)
    assert result.gradient_ratio == pytest.approx(
        result.layers[0].gradient_norm / result.layers[-1].gradient_norm
    )
    assert result.examples == 1


def two_layer(backend, x_scale, hidden_value):
    """1-1-1, ReLU then identity, with W1 = 0 so the hidden activation is the bias ``hidden_value``.

    ||dL/dW1|| / ||dL/dW2|| = |delta1 * x| / |delta2 * a1| = |x| / hidden_value, since delta1 = W2 delta2 with
    W2 = 1 and relu' = 1.
    """
    net = fastbp.Network([1, 1, 1], ["relu", "identity"], loss="half_sse", backend=backend)
    net.set_params([np.array([[0.0]]), np.array([[1.0]])], [np.array([hidden_value]), np.array([0.0])])
    return net, np.array([[x_scale]]), np.array([[5.0]])


def test_diagnose_verdicts_at_the_stated_thresholds(backend):
    net, X, Y = two_layer(backend, x_scale=1e-3, hidden_value=1.0)
    result = fastbp.diagnose(net, X, Y)
    assert result.gradient_ratio == pytest.approx(1e-3)
    assert result.verdict == "vanishing" and result.vanishing
    assert (
        f"below {diagnostics.VANISHING_RATIO:g} vanishing, above {diagnostics.EXPLODING_RATIO:g} exploding"
        in str(result)
    )

    net, X, Y = two_layer(backend, x_scale=1.0, hidden_value=1e-3)
    result = fastbp.diagnose(net, X, Y)
    assert result.gradient_ratio == pytest.approx(1e3)
    assert result.verdict == "exploding" and result.exploding

    net, X, Y = two_layer(backend, x_scale=1.0, hidden_value=0.5)
    result = fastbp.diagnose(net, X, Y)
    assert result.gradient_ratio == pytest.approx(2.0)
    assert result.verdict == "healthy"
    assert "verdict: HEALTHY" in str(result)

    # just inside the thresholds is still healthy
    net, X, Y = two_layer(backend, x_scale=1.0, hidden_value=1.0 / (diagnostics.EXPLODING_RATIO * 0.99))
    assert fastbp.diagnose(net, X, Y).verdict == "healthy"
    net, X, Y = two_layer(backend, x_scale=diagnostics.VANISHING_RATIO * 1.01, hidden_value=1.0)
    assert fastbp.diagnose(net, X, Y).verdict == "healthy"


def test_diagnose_deep_sigmoid_network_vanishes(backend):
    rng = np.random.default_rng(0)
    net = fastbp.Network([4] + [16] * 6 + [1], ["sigmoid"] * 6 + ["identity"], seed=2, backend=backend)
    result = fastbp.diagnose(net, rng.normal(size=(32, 4)), rng.normal(size=(32, 1)))
    assert result.verdict == "vanishing"
    norms = [layer.gradient_norm for layer in result.layers]
    assert norms[0] < norms[-1] * diagnostics.VANISHING_RATIO


def test_diagnose_single_layer_and_no_gradient(backend):
    net = fastbp.Network([2, 1], "identity", backend=backend, seed=0)
    assert fastbp.diagnose(net, np.ones((3, 2)), np.ones((3, 1))).verdict == "single layer"
    net = fastbp.Network([2, 2, 1], ["relu", "identity"], backend=backend, seed=0)
    net.biases[0][:] = -100.0
    net.weights[1][:] = 0.0
    X = np.ones((3, 2))
    result = fastbp.diagnose(net, X, net.predict(X))  # output equals target and every unit is dead
    assert result.verdict == "no gradient" and result.gradient_ratio is None
    assert any("every ReLU unit is dead" in warning for warning in result.warnings)


def test_diagnose_leaves_the_network_alone_and_serialises(backend):
    net, X, Y = random_problem(backend, "relu", "mse")
    before = net.params.copy()
    result = fastbp.diagnose(net, X, Y)
    np.testing.assert_array_equal(net.params, before)
    import json

    data = json.loads(json.dumps(result.as_dict()))
    assert data["verdict"] == result.verdict
    assert data["thresholds"] == {"vanishing_ratio": 1e-2, "exploding_ratio": 1e2}
    assert len(data["layers"]) == 3


def test_the_teaching_tools_take_sparse_input_as_its_dense_matrix(backend):
    """check_gradients, diagnose and explain_step read a scipy.sparse batch as the dense matrix it
    describes (they used to fail inside NumPy with an unrelated message)."""
    import scipy.sparse

    rng = np.random.default_rng(3)
    dense = rng.normal(size=(5, 4)) * (rng.uniform(size=(5, 4)) < 0.5)
    Y = rng.normal(size=(5, 2))
    net = fastbp.Network([4, 3, 2], ["tanh", "identity"], loss="mse", dtype="float64", seed=1,
                         backend=backend)
    sparse = scipy.sparse.csr_matrix(dense)
    assert fastbp.check_gradients(net, sparse, Y).passed
    assert str(fastbp.diagnose(net, sparse, Y)) == str(fastbp.diagnose(net, dense, Y))
    assert (str(fastbp.explain_step(net, sparse, Y, lr=0.1, dry_run=True))
            == str(fastbp.explain_step(net, dense, Y, lr=0.1, dry_run=True)))
