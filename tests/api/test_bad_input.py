"""Bad input gets a ValueError or TypeError naming the argument, and leaves the network unchanged.

Good input in other forms (lists, non-contiguous or Fortran-ordered arrays, other float and int dtypes) is
accepted and gives the same results as the canonical form.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbp

BAD = (ValueError, TypeError)


def regression_net(backend):
    return fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)


def classifier_net(backend):
    return fastbp.Network([3, 4, 3], ["relu", "identity"], loss="cross_entropy", seed=0, backend=backend)


GOOD_X = np.arange(15, dtype=np.float64).reshape(5, 3) / 10
GOOD_Y = np.linspace(-1, 1, 10).reshape(5, 2)
GOOD_CLASSES = np.array([0, 1, 2, 1, 0])


# ---- the constructor ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"layer_sizes": [3]}, "layer_sizes"),
    ({"layer_sizes": []}, "layer_sizes"),
    ({"layer_sizes": [3, 0, 2]}, "layer_sizes"),
    ({"layer_sizes": [3, -4, 2]}, "layer_sizes"),
    ({"layer_sizes": [3, 2.5, 2]}, "layer_sizes"),
    ({"layer_sizes": "3,4,2"}, "layer_sizes"),
    ({"activations": ["tanh", "tanh", "identity"]}, "activations"),
    ({"activations": ["tanh"]}, "activations"),
    ({"activations": ["softplus", "identity"]}, "activation"),
    ({"activations": "swish"}, "activation"),
    ({"loss": "hinge"}, "loss"),
    ({"loss": "cross_entropy", "activations": ["relu", "sigmoid"]}, "identity"),
    ({"dtype": "int32"}, "dtype"),
    ({"dtype": "float16"}, "dtype"),
    ({"backend": "gpu"}, "backend"),
])
def test_constructor_rejects(kwargs, match):
    arguments = {"layer_sizes": [3, 4, 2], "activations": ["tanh", "identity"], "loss": "mse"}
    arguments.update(kwargs)
    layer_sizes, activations = arguments.pop("layer_sizes"), arguments.pop("activations")
    with pytest.raises(BAD, match=match):
        fastbp.Network(layer_sizes, activations, **arguments)


# ---- data arguments --------------------------------------------------------------------------------------
def bad_data_cases():
    nan_x = GOOD_X.copy()
    nan_x[1, 1] = np.nan
    inf_x = GOOD_X.copy()
    inf_x[2, 0] = -np.inf
    inf_y = GOOD_Y.copy()
    inf_y[0, 0] = np.inf
    return [
        ("X wrong width", GOOD_X[:, :2], GOOD_Y, r"\bX\b"),
        ("X 3-d", GOOD_X[None], GOOD_Y, r"\bX\b"),
        ("X complex", GOOD_X + 1j, GOOD_Y, r"\bX\b"),
        ("X strings", GOOD_X.astype(str), GOOD_Y, r"\bX\b"),
        ("X objects", np.array([[1, 2, "a"]] * 5, dtype=object), GOOD_Y, r"\bX\b"),
        ("X NaN", nan_x, GOOD_Y, r"\bX\b"),
        ("X inf", inf_x, GOOD_Y, r"\bX\b"),
        ("Y wrong width", GOOD_X, GOOD_Y[:, :1], r"\bY\b"),
        ("Y complex", GOOD_X, GOOD_Y + 0j, r"\bY\b"),
        ("Y inf", GOOD_X, inf_y, r"\bY\b"),
        ("rows mismatch", GOOD_X, GOOD_Y[:4], r"\bX\b|\bY\b"),
        ("empty batch", GOOD_X[:0], GOOD_Y[:0], r"\bX\b|\bY\b"),
    ]


BAD_DATA = bad_data_cases()


def _calls(net, X, Y):
    """Every data-taking entry point, as (name, thunk)."""
    return [
        ("loss", lambda: net.loss(X, Y)),
        ("gradients", lambda: net.gradients(X, Y)),
        ("trace", lambda: net.trace(X, Y)),
        ("train_step", lambda: fastbp.SGD(net, 0.1).train_step(X, Y)),
        ("fit", lambda: net.fit(X, Y, epochs=1, batch_size=2, lr=0.1)),
    ]


@pytest.mark.parametrize("case", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_data_arguments_rejected_and_net_unchanged(case, backend):
    _, X, Y, match = case
    net = regression_net(backend)
    before = net.params.copy()
    for name, call in _calls(net, X, Y):
        with pytest.raises(BAD, match=match):
            call()
        assert np.array_equal(net.params, before), f"{name} changed the parameters before raising"


@pytest.mark.parametrize("case", [c for c in BAD_DATA if c[0].startswith("X") and "NaN" not in c[0]
                                  and "inf" not in c[0]], ids=lambda c: c[0])
def test_predict_rejects_bad_X(case, backend):
    net = regression_net(backend)
    with pytest.raises(BAD, match=r"\bX\b"):
        net.predict(case[1])


def test_predict_rejects_non_finite_X(backend):
    net = regression_net(backend)
    with pytest.raises(BAD, match=r"\bX\b"):
        net.predict(np.full((2, 3), np.nan))


@pytest.mark.parametrize("Y,label", [
    (np.array([0, 1, 3, 1, 0]), "index too large"),
    (np.array([0, -1, 2, 1, 0]), "negative index"),
    (np.array([0.0, 0.5, 2.0, 1.0, 0.0]), "non-integer"),
    (np.array([0, 1, 2, 1]), "wrong count"),
])
def test_class_indices_rejected(Y, label, backend):
    net = classifier_net(backend)
    before = net.params.copy()
    for name, call in _calls(net, GOOD_X, Y):
        with pytest.raises(BAD, match=r"\bY\b"):
            call()
        assert np.array_equal(net.params, before), f"{name} ({label}) changed the parameters"


# ---- optimizer and fit arguments ---------------------------------------------------------------------------
BAD_LR = [0.0, -0.1, np.nan, np.inf, "0.1", None]


@pytest.mark.parametrize("lr", BAD_LR, ids=repr)
def test_learning_rate_rejected(lr, backend):
    net = regression_net(backend)
    before = net.params.copy()
    with pytest.raises(BAD, match="lr"):
        fastbp.SGD(net, lr)
    if lr is not None:  # fit's lr=None means the default 0.01
        with pytest.raises(BAD, match="lr"):
            net.fit(GOOD_X, GOOD_Y, lr=lr)
    with pytest.raises(BAD, match="lr"):  # the optimizer carries its own lr: both is an error
        net.fit(GOOD_X, GOOD_Y, lr=0.1 if lr is None else lr, optimizer=fastbp.SGD(net, 0.1))
    assert np.array_equal(net.params, before)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, "8"], ids=repr)
def test_batch_size_rejected(batch_size, backend):
    net = regression_net(backend)
    before = net.params.copy()
    with pytest.raises(BAD, match="batch_size"):
        net.fit(GOOD_X, GOOD_Y, batch_size=batch_size, lr=0.1)
    assert np.array_equal(net.params, before)


@pytest.mark.parametrize("kwargs,match", [
    ({"momentum": -0.5}, "momentum"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"nesterov": True}, "nesterov"),  # torch: Nesterov needs a momentum
])
def test_optimizer_options_rejected(kwargs, match, backend):
    net = regression_net(backend)
    with pytest.raises(BAD, match=match):
        fastbp.SGD(net, 0.1, **kwargs)


@pytest.mark.parametrize("which", ["weights shape", "biases shape", "layer count"])
def test_set_params_checks_shapes(which, backend):
    net = regression_net(backend)
    before = net.params.copy()
    weights = [np.zeros((4, 3)), np.zeros((2, 4))]
    biases = [np.zeros(4), np.zeros(2)]
    if which == "weights shape":
        weights[1] = np.zeros((4, 2))
        match = "weights"
    elif which == "biases shape":
        biases[0] = np.zeros(3)
        match = "biases"
    else:
        weights, biases = weights[:1], biases[:1]
        match = "weights|biases"
    with pytest.raises(BAD, match=match):
        net.set_params(weights, biases)
    assert np.array_equal(net.params, before)


# ---- accepted forms ---------------------------------------------------------------------------------------
def test_other_forms_accepted_and_equal(backend):
    net = regression_net(backend)
    reference_loss = net.loss(GOOD_X, GOOD_Y)
    reference_grads = net.gradients(GOOD_X, GOOD_Y)
    wide = np.zeros((5, 6))
    wide[:, ::2] = GOOD_X
    forms = {
        "lists": (GOOD_X.tolist(), GOOD_Y.tolist()),
        "non-contiguous": (wide[:, ::2], np.asfortranarray(GOOD_Y)),
        "fortran": (np.asfortranarray(GOOD_X), GOOD_Y),
        "float32": (GOOD_X.astype(np.float32), GOOD_Y.astype(np.float32)),
        "int": ((GOOD_X * 10).astype(np.int64), np.round(GOOD_Y * 4).astype(np.int32)),
    }
    for name, (X, Y) in forms.items():
        X64, Y64 = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
        expected = net.loss(np.ascontiguousarray(X64), np.ascontiguousarray(Y64))
        assert net.loss(X, Y) == pytest.approx(expected, rel=1e-12), name
        np.testing.assert_allclose(net.predict(X), net.predict(np.ascontiguousarray(X64)), rtol=1e-12)
        grads = net.gradients(X, Y)
        assert grads.loss == pytest.approx(expected, rel=1e-12), name
    assert net.loss(GOOD_X.tolist(), GOOD_Y.tolist()) == pytest.approx(reference_loss, rel=1e-15)
    np.testing.assert_allclose(net.gradients(GOOD_X.tolist(), GOOD_Y).weights[0],
                               reference_grads.weights[0], rtol=1e-15)
    # Training on a non-contiguous view trains as on its contiguous copy.
    copy = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    net.fit(wide[:, ::2], GOOD_Y, epochs=2, batch_size=2, lr=0.1, shuffle=False)
    copy.fit(np.ascontiguousarray(GOOD_X), GOOD_Y, epochs=2, batch_size=2, lr=0.1, shuffle=False)
    assert np.array_equal(net.params, copy.params)


def test_float32_network_accepts_float64_data(backend):
    net = fastbp.Network([3, 4, 2], "tanh", dtype="float32", seed=0, backend=backend)
    assert net.predict(GOOD_X).dtype == np.float32
    assert np.isfinite(net.loss(GOOD_X, GOOD_Y))
    fastbp.SGD(net, 0.1).train_step(GOOD_X, GOOD_Y)
    assert net.params.dtype == np.float32


def test_class_indices_as_floats_and_one_hot_accepted(backend):
    net = classifier_net(backend)
    one_hot = np.eye(3)[GOOD_CLASSES]
    expected = net.loss(GOOD_X, GOOD_CLASSES)
    assert net.loss(GOOD_X, GOOD_CLASSES.astype(np.float64)) == pytest.approx(expected, rel=1e-12)
    assert net.loss(GOOD_X, one_hot) == pytest.approx(expected, rel=1e-12)
    assert net.loss(GOOD_X, GOOD_CLASSES.tolist()) == pytest.approx(expected, rel=1e-12)
