"""scikit-learn's L2 term and Adam in the kernel: the private hyper slots ``_spec.HYPER_L2`` and
``_spec.HYPER_ADAM_SKLEARN_EPS``, checked against scikit-learn itself (its estimators and its
``AdamOptimizer``) and between the compiled kernel and its NumPy twin; and the estimators' whole-epoch kernel
path, which must make scikit-learn's updates to 1e-10 in float64."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import sklearn.neural_network as sk_nn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer  # noqa: E402

import fastbp  # noqa: E402
from fastbp import _reference, _spec  # noqa: E402
from fastbp.network import Network  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

try:
    from fastbp import _core
except ImportError:  # pragma: no cover - the twin-only CI job
    _core = None


def _hyper(rule, l2, sklearn_eps=0.0, lr=0.01):
    hyper = np.zeros(_spec.N_HYPER)
    hyper[_spec.HYPER_LR] = lr
    if rule == "sgd":
        hyper[_spec.HYPER_SGD_MOMENTUM] = 0.9
        hyper[_spec.HYPER_SGD_NESTEROV] = 1.0
    else:
        hyper[_spec.HYPER_ADAM_BETA1] = 0.9
        hyper[_spec.HYPER_ADAM_BETA2] = 0.999
        hyper[_spec.HYPER_ADAM_EPS] = 1e-3  # large, so that where eps goes matters
        hyper[_spec.HYPER_ADAM_SKLEARN_EPS] = sklearn_eps
    hyper[_spec.HYPER_L2] = l2
    return hyper


# ------------------------------------------------------------------------- the kernel and its twin
@pytest.mark.skipif(_core is None, reason="needs the compiled kernel")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rule, sklearn_eps", [("sgd", 0.0), ("adam", 1.0), ("adam", 0.0)])
@pytest.mark.parametrize("batch_size, weighted, shuffle", [(4, False, False), (1, False, True), (5, True, True),
                                                           (1, True, False)])
def test_kernel_and_twin_agree_with_l2_and_sklearn_adam(dtype, rule, sklearn_eps, batch_size, weighted, shuffle):
    rng = np.random.default_rng(7)
    sizes = (5, 7, 3)
    codes = [_spec.ACTIVATION_CODES["tanh"], _spec.ACTIVATION_CODES["identity"]]
    n = 23
    X = rng.normal(size=(n, 5)).astype(dtype)
    Y = rng.normal(size=(n, 3)).astype(dtype)
    weights = rng.uniform(0.2, 2.0, size=n).astype(dtype) if weighted else None
    _, total = _spec.param_offsets(sizes)
    start = (rng.normal(size=total) * 0.5).astype(dtype)
    hyper = _hyper(rule, l2=0.3, sklearn_eps=sklearn_eps)
    results = []
    for module in (_core, _reference):
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["half_sse"], dtype, batch_size)
        params = start.copy()
        state = np.zeros((len(_spec.STATE_ROWS[rule]), total), dtype=dtype)
        steps = np.zeros(1, dtype=np.int64)
        key = _spec.epoch_key(3, 0) if shuffle else -1
        outcome = [module.train_epoch(ws, params, X, Y, weights, batch_size, _spec.RULE_CODES[rule], hyper,
                                      state, steps, key) for _ in range(2)]
        results.append((outcome, params, state, steps))
    (ours, params, state, steps), (twin, twin_params, twin_state, twin_steps) = results
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    for (loss, weight, done, status), (t_loss, t_weight, t_done, t_status) in zip(ours, twin):
        assert (weight, done, status) == (t_weight, t_done, t_status)
        assert loss == pytest.approx(t_loss, rel=tolerance)
    np.testing.assert_allclose(params, twin_params, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(state, twin_state, rtol=tolerance, atol=tolerance)
    assert steps[0] == twin_steps[0]


@pytest.mark.parametrize("module", [m for m in (_core, _reference) if m is not None],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_l2_term_is_sklearn_on_the_weights_only(module):
    """One full-batch plain-SGD step with the L2 slot: the gradient is scikit-learn's ``_backprop``
    gradient (its loss too), read back from the step; the biases get no penalty."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(12, 4))
    y = rng.normal(size=12)
    theirs = sk_nn.MLPRegressor(hidden_layer_sizes=(5,), activation="tanh", alpha=0.7, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs.set_params(max_iter=1).fit(X, y)
    coefs, intercepts = theirs.coefs_, theirs.intercepts_
    Y = y.reshape(-1, 1)
    activations = [X] + [None] * 2
    deltas = [None] * 2
    coef_grads = [np.empty_like(c) for c in coefs]
    intercept_grads = [np.empty_like(b) for b in intercepts]
    loss, coef_grads, intercept_grads = theirs._backprop(X, Y, None, activations, deltas, coef_grads,
                                                         intercept_grads)

    sizes = (4, 5, 1)
    ws = module.Workspace(sizes, [_spec.ACTIVATION_CODES["tanh"], 0], _spec.LOSS_CODES["half_sse"], np.float64, 12)
    params = np.zeros(_spec.param_offsets(sizes)[1])
    for (W, b), c, i in zip(_spec.layer_views(sizes, params), coefs, intercepts):
        W[...] = c.T
        b[...] = i
    before = params.copy()
    hyper = np.zeros(_spec.N_HYPER)
    hyper[_spec.HYPER_LR] = 1.0
    hyper[_spec.HYPER_L2] = 0.7
    loss_sum, weight_sum, _, status = module.train_epoch(ws, params, X, Y, None, 12, _spec.RULE_CODES["sgd"],
                                                         hyper, np.zeros((1, params.size)),
                                                         np.zeros(1, dtype=np.int64), -1)
    assert status == 0
    # half_sse with one output is scikit-learn's squared loss: the losses agree, the L2 term included
    assert loss_sum / weight_sum == pytest.approx(loss, rel=1e-12)
    gradient = before - params  # lr 1
    for (gW, gb), cg, ig in zip(_spec.layer_views(sizes, gradient), coef_grads, intercept_grads):
        np.testing.assert_allclose(gW, cg.T, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gb, ig, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("module", [m for m in (_core, _reference) if m is not None],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sklearn_eps_flag_is_sklearns_adam_optimizer(module, dtype):
    rng = np.random.default_rng(2)
    n = 301
    params = rng.normal(size=n).astype(dtype)
    theirs = [params.astype(np.float64)]
    reference = AdamOptimizer(theirs, learning_rate_init=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-3)
    hyper = _hyper("adam", l2=0.0, sklearn_eps=1.0, lr=0.01)
    hyper[[_spec.HYPER_ADAM_BETA1, _spec.HYPER_ADAM_BETA2]] = 0.8, 0.99
    state = np.zeros((3, n), dtype=dtype)
    steps = np.zeros(1, dtype=np.int64)
    for _ in range(6):
        grad = (rng.normal(size=n) * rng.choice([1e-4, 1.0], size=n)).astype(dtype)
        reference.update_params(theirs, [grad.astype(np.float64)])
        module.optimizer_step(params, grad, _spec.RULE_CODES["adam"], hyper, state, steps)
    tolerance = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(params, theirs[0], rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(state[0], reference.ms[0], rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(state[1], reference.vs[0], rtol=tolerance, atol=tolerance)


def test_public_optimizers_refuse_the_private_slots_in_a_state_dict(backend):
    net = Network([3, 4, 2], ["tanh", "identity"], backend=backend)
    for optimizer in (fastbp.Adam(net), fastbp.SGD(net, lr=0.1)):
        for slot in (_spec.HYPER_ADAM_SKLEARN_EPS, _spec.HYPER_L2):
            state = optimizer.state_dict()
            state["hyper"][slot] = 1.0
            before = optimizer.state_dict()
            with pytest.raises(ValueError, match="private to fastbp.sklearn"):
                optimizer.load_state_dict(state)
            assert optimizer.state_dict()["hyper"].tobytes() == before["hyper"].tobytes()


# ------------------------------------------------------------------------- the estimators' kernel path
def _assert_same(ours, theirs):
    for mine, reference in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_


def _no_python_batches(monkeypatch):
    # The kernel path never asks the network for a batch gradient: make that an error.
    def refused(*args, **kwargs):
        raise AssertionError("a batch was trained from Python, not in the kernel")

    monkeypatch.setattr(Network, "gradients", refused)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("target", ["multiclass", "binary", "regression", "multilabel"])
def test_alpha_in_the_kernel_same_as_sklearn(solver, shuffle, target, backend, monkeypatch):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(70, 5))
    if target == "regression":
        y = np.tanh(X @ rng.normal(size=5)) + 0.1 * rng.normal(size=70)
        classes = (MLPRegressor, sk_nn.MLPRegressor)
        n_out = 1
    elif target == "multilabel":
        y = (X[:, :3] + 0.3 * rng.normal(size=(70, 3)) > 0).astype(int)
        classes = (MLPClassifier, sk_nn.MLPClassifier)
        n_out = 3
    else:
        k = 3 if target == "multiclass" else 2
        y = np.argmax(X[:, :k] + 0.3 * rng.normal(size=(70, k)), axis=1)
        classes = (MLPClassifier, sk_nn.MLPClassifier)
        n_out = k if k > 2 else 1
    coefs = [rng.normal(size=(5, 6)) * 0.4, rng.normal(size=(6, n_out)) * 0.4]
    intercepts = [rng.normal(size=6) * 0.1, rng.normal(size=n_out) * 0.1]
    params = dict(hidden_layer_sizes=(6,), solver=solver, alpha=0.5, shuffle=shuffle, random_state=0,
                  learning_rate_init=0.02, batch_size=16, epsilon=1e-4)
    _no_python_batches(monkeypatch)
    ours, theirs = _fit_pair(classes, params, backend, coefs, intercepts, X, y)
    _assert_same(ours, theirs)


def _fit_pair(classes, params, backend, coefs, intercepts, X, y, sample_weight=None):
    ours_class, theirs_class = classes
    models = []
    for cls, extra in ((ours_class, {"backend": backend}), (theirs_class, {})):
        model = cls(**params, **extra, warm_start=True, max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
            model.coefs_ = [c.copy() for c in coefs]
            model.intercepts_ = [b.copy() for b in intercepts]
            model.set_params(max_iter=12)
            model.fit(X, y, sample_weight=sample_weight)
        models.append(model)
    return models


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_sample_weight_and_alpha_in_the_kernel_same_as_sklearn(solver, backend, monkeypatch):
    rng = np.random.default_rng(12)
    X = rng.normal(size=(70, 5))
    y = np.argmax(X[:, :3] + 0.3 * rng.normal(size=(70, 3)), axis=1)
    weights = rng.uniform(0.1, 3.0, size=70)
    coefs = [rng.normal(size=(5, 6)) * 0.4, rng.normal(size=(6, 3)) * 0.4]
    intercepts = [rng.normal(size=6) * 0.1, rng.normal(size=3) * 0.1]
    params = dict(hidden_layer_sizes=(6,), solver=solver, alpha=0.5, shuffle=False, random_state=0,
                  learning_rate_init=0.02, batch_size=16)
    _no_python_batches(monkeypatch)
    ours, theirs = _fit_pair((MLPClassifier, sk_nn.MLPClassifier), params, backend, coefs, intercepts, X, y,
                             sample_weight=weights)
    _assert_same(ours, theirs)


def test_adaptive_and_invscaling_with_alpha_in_the_kernel(backend, monkeypatch):
    """The per-epoch learning-rate schedules of scikit-learn's SGD, with the L2 term in the kernel."""
    rng = np.random.default_rng(13)
    X = rng.normal(size=(60, 4))
    y = np.tanh(X @ rng.normal(size=4))
    coefs = [rng.normal(size=(4, 5)) * 0.4, rng.normal(size=(5, 1)) * 0.4]
    intercepts = [rng.normal(size=5) * 0.1, rng.normal(size=1) * 0.1]
    _no_python_batches(monkeypatch)
    for schedule in (dict(learning_rate="adaptive", tol=0.05, n_iter_no_change=1),
                     dict(learning_rate="invscaling", learning_rate_init=0.3, power_t=0.4)):
        params = dict(dict(hidden_layer_sizes=(5,), solver="sgd", alpha=0.2, batch_size=10, random_state=0,
                           learning_rate_init=0.05), **schedule)
        ours, theirs = _fit_pair((MLPRegressor, sk_nn.MLPRegressor), params, backend, coefs, intercepts, X, y)
        _assert_same(ours, theirs)
        assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_shuffled_epoch_read_through_sklearns_order_same_as_sklearn(solver, backend, monkeypatch):
    """A shuffled epoch is one kernel call that reads the rows through scikit-learn's order (an explicit
    row order for train_epoch): the same batches, the same updates as scikit-learn's, a last partial batch
    included."""
    _no_python_batches(monkeypatch)
    rng = np.random.default_rng(14)
    X = rng.normal(size=(75, 5))
    y = np.argmax(X[:, :3] + 0.3 * rng.normal(size=(75, 3)), axis=1)
    coefs = [rng.normal(size=(5, 6)) * 0.4, rng.normal(size=(6, 3)) * 0.4]
    intercepts = [rng.normal(size=6) * 0.1, rng.normal(size=3) * 0.1]
    params = dict(hidden_layer_sizes=(6,), solver=solver, alpha=0.01, shuffle=True, random_state=0,
                  learning_rate_init=0.02, batch_size=16)
    ours, theirs = _fit_pair((MLPClassifier, sk_nn.MLPClassifier), params, backend, coefs, intercepts, X, y)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("what, x_scale, y_scale, lr", [("the loss", 1e3, 1e6, 10.0),
                                                          ("a parameter", 1.0, 1e12, 1e300)])
def test_divergence_in_a_kernel_epoch_keeps_the_last_finite_parameters(what, x_scale, y_scale, lr, backend):
    """A loss that overflows (the kernel stops before updating with it), or an update that overflows a
    parameter (the epoch is replayed batch by batch from its start): the last finite parameters are kept."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * x_scale
    y = rng.normal(size=60) * y_scale
    model = MLPRegressor(solver="sgd", learning_rate_init=lr, momentum=0.0, max_iter=50, batch_size=10,
                         random_state=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(ValueError, match=f"Solver produced non-finite parameter weights.*{what}"):
            model.fit(X, y)
    assert np.all(np.isfinite(model.network_.params))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("estimator", ["classifier", "regressor"])
def test_sparse_input_trains_whole_epochs_in_the_kernel_same_as_sklearn(solver, shuffle, estimator, backend,
                                                                        monkeypatch):
    """Sparse X takes the kernel epoch (layer 0 from the non-zeros) and gives scikit-learn's numbers on the
    same sparse matrix; no batch runs from Python."""
    import scipy.sparse

    rng = np.random.default_rng(5)
    dense = rng.normal(size=(60, 12)) * (rng.uniform(size=(60, 12)) < 0.3)
    dense[0] = 0.0                                   # an empty row
    X = scipy.sparse.csr_matrix(dense)
    if estimator == "regressor":
        y = np.tanh(dense @ rng.normal(size=12))
        classes, n_out = (MLPRegressor, sk_nn.MLPRegressor), 1
    else:
        y = np.argmax(dense[:, :3] + 0.3 * rng.normal(size=(60, 3)), axis=1)
        classes, n_out = (MLPClassifier, sk_nn.MLPClassifier), 3
    coefs = [rng.normal(size=(12, 7)) * 0.4, rng.normal(size=(7, n_out)) * 0.4]
    intercepts = [rng.normal(size=7) * 0.1, rng.normal(size=n_out) * 0.1]
    params = dict(hidden_layer_sizes=(7,), solver=solver, alpha=0.3, shuffle=shuffle, random_state=0,
                  learning_rate_init=0.02, batch_size=8)
    _no_python_batches(monkeypatch)
    ours, theirs = _fit_pair(classes, params, backend, coefs, intercepts, X, y)
    _assert_same(ours, theirs)
