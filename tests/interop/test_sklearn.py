"""fastbp.sklearn: scikit-learn's estimator contract, the tools built on it, and learning on real data."""

from __future__ import annotations

import io
import pickle
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.compose import TransformedTargetRegressor  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp import _training  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Every check of scikit-learn's estimator contract passes with the default parameters (float64): no check is
# marked as an expected failure there. (The pandas checks skip when pandas is not installed; the array-API
# check skips unless SCIPY_ARRAY_API is set.) The float32 variants run the same checks too.
ESTIMATORS = [MLPRegressor(), MLPClassifier(), MLPRegressor(dtype="float32"), MLPClassifier(dtype="float32")]


def _expected_failed_checks(estimator):
    if estimator.dtype == "float32":
        return {
            # The check compares predictions on a batch and on its subsets with rtol=1e-7, below float32's
            # rounding (eps = 1.2e-7): BLAS blocks the rows of a matrix product differently for different
            # batch sizes, so float32 predictions may differ in the last bit or two (measured: 2.5e-7
            # relative with the NumPy backend). float64 passes.
            "check_methods_subset_invariance": "float32 rounding is coarser than the check's rtol=1e-7",
            # Weighted and repeated rows sum the same terms in another order: float32 results differ by a
            # few ulps (measured 2.4e-7 absolute), beyond the check's rtol=1e-7. float64 passes.
            "check_sample_weight_equivalence_on_dense_data": "float32 rounding vs the check's rtol=1e-7",
            "check_sample_weight_equivalence_on_sparse_data": "float32 rounding vs the check's rtol=1e-7",
        }
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(clone(estimator).set_params(backend=backend))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def small_classification():
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    return StandardScaler().fit_transform(X), y


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return function(*args, **kwargs)


# ------------------------------------------------------------------------------------------- real data
def test_digits_pipeline_accuracy(digits, backend):
    X_train, X_test, y_train, y_test = digits
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), learning_rate_init=0.01, max_iter=40, random_state=0,
                      backend=backend),
    )
    quiet(model.fit, X_train, y_train)
    assert model.score(X_test, y_test) > 0.93
    probabilities = model.predict_proba(X_test)
    assert probabilities.shape == (len(X_test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    classifier = model[-1]
    np.testing.assert_array_equal(classifier.classes_, np.arange(10))
    assert classifier.network_.layer_sizes[0] == 64 and classifier.network_.layer_sizes[-1] == 10
    assert classifier.network_.loss_name == "cross_entropy"


def test_diabetes_regression_cross_val_score(backend):
    X, y = load_diabetes(return_X_y=True)
    model = TransformedTargetRegressor(
        make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=50, random_state=0,
                         backend=backend),
        ),
        transformer=StandardScaler(),
    )
    scores = quiet(cross_val_score, model, X, y, cv=5)
    assert scores.shape == (5,)
    assert scores.mean() > 0.4  # a ridge regression scores about 0.48 here


def test_grid_search(small_classification, backend):
    X, y = small_classification
    search = GridSearchCV(
        MLPClassifier(max_iter=30, random_state=0, backend=backend),
        {"hidden_layer_sizes": [(4,), (16,)], "learning_rate_init": [1e-4, 0.05]},
        cv=3,
    )
    quiet(search.fit, X, y)
    # A learning rate of 1e-4 barely moves the weights in 30 epochs.
    assert search.best_params_["learning_rate_init"] == 0.05
    assert search.best_score_ > 0.5  # chance is 1/3
    assert search.best_estimator_.n_features_in_ == X.shape[1]


def test_regressor_multioutput(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.column_stack([X @ [1.0, -2.0, 0.5], X[:, 0] - X[:, 2]])
    model = quiet(
        MLPRegressor(hidden_layer_sizes=(), learning_rate_init=0.05, max_iter=100, random_state=0,
                     backend=backend).fit, X, Y,
    )
    assert model.predict(X).shape == (200, 2)
    assert model.n_outputs_ == 2
    assert model.score(X, Y) > 0.99


# ---------------------------------------------------------------------------------------- the contract
def test_not_fitted_errors():
    for model in (MLPRegressor(), MLPClassifier()):
        with pytest.raises(NotFittedError):
            model.predict(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        MLPClassifier().predict_proba(np.zeros((2, 3)))


def test_fitted_attributes(small_classification, backend):
    X, y = small_classification
    model = MLPClassifier(hidden_layer_sizes=(5, 4), max_iter=7, random_state=0, backend=backend)
    quiet(model.fit, X, y)
    assert model.n_iter_ == 7
    assert len(model.loss_curve_) == 7
    assert model.n_features_in_ == 6
    assert model.t_ == 7 * len(X)
    assert not hasattr(model, "feature_names_in_")
    assert model.network_.layer_sizes == (6, 5, 4, 3) or list(model.network_.layer_sizes) == [6, 5, 4, 3]
    assert list(model.network_.activations) == ["relu", "relu", "identity"]
    assert model.network_.backend == backend


def test_feature_names_in():
    pandas = pytest.importorskip("pandas")
    X = pandas.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    model = quiet(MLPRegressor(hidden_layer_sizes=(2,), max_iter=2).fit, X, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b"])


def test_convergence_warning_and_tol_stopping(small_classification):
    X, y = small_classification
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # With a huge tol only the first epoch counts as an improvement (on an infinite best loss); as in
        # scikit-learn, training stops once more than n_iter_no_change epochs in a row did not improve.
        model = MLPClassifier(max_iter=100, tol=1e6, n_iter_no_change=3, random_state=0).fit(X, y)
    assert model.n_iter_ == 5


def test_reproducible_with_random_state(small_classification, backend):
    X, y = small_classification
    first = quiet(MLPClassifier(max_iter=5, random_state=3, backend=backend).fit, X, y)
    second = quiet(MLPClassifier(max_iter=5, random_state=3, backend=backend).fit, X, y)
    np.testing.assert_array_equal(first.network_.params, second.network_.params)
    third = quiet(MLPClassifier(max_iter=5, random_state=4, backend=backend).fit, X, y)
    assert not np.array_equal(first.network_.params, third.network_.params)


def test_partial_fit_keeps_momentum(small_classification, backend):
    """Two partial_fit calls make exactly the updates of a two-epoch fit: the velocity carries over."""
    X, y = small_classification
    settings = dict(hidden_layer_sizes=(8,), shuffle=False, random_state=0, learning_rate_init=0.01,
                    backend=backend)
    incremental = MLPClassifier(**settings)
    incremental.partial_fit(X, y, classes=np.unique(y))
    incremental.partial_fit(X, y)
    # As scikit-learn: n_iter_ counts the epochs of the last call, t_ and loss_curve_ every epoch.
    assert incremental.n_iter_ == 1 and len(incremental.loss_curve_) == 2 and incremental.t_ == 2 * len(X)
    full = quiet(MLPClassifier(max_iter=2, **settings).fit, X, y)
    np.testing.assert_allclose(incremental.network_.params, full.network_.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(incremental.loss_curve_, full.loss_curve_, rtol=1e-12)


def test_partial_fit_errors(small_classification):
    X, y = small_classification
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(X, y)
    model = MLPClassifier(hidden_layer_sizes=(3,)).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes not in"):
        model.partial_fit(X, np.full(len(y), 7))
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :4], y)


def test_partial_fit_regressor_learns():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4))
    y = X @ [1.0, 2.0, -1.0, 0.5]
    model = MLPRegressor(hidden_layer_sizes=(), solver="sgd", learning_rate_init=0.01, random_state=0)
    for _ in range(30):
        model.partial_fit(X, y)
    assert model.n_iter_ == 1 and len(model.loss_curve_) == 30
    assert model.loss_curve_[-1] < 0.01 * model.loss_curve_[0]
    assert model.score(X, y) > 0.99


def test_warm_start(small_classification, backend):
    X, y = small_classification
    model = MLPClassifier(max_iter=5, random_state=0, backend=backend)
    quiet(model.fit, X, y)
    network = model.network_
    start = network.params.copy()
    model.set_params(warm_start=True)
    quiet(model.fit, X, y)
    # As scikit-learn: n_iter_ counts this call's epochs; the loss curve goes on.
    assert model.network_ is network and model.n_iter_ == 5 and len(model.loss_curve_) == 10
    assert not np.array_equal(network.params, start)
    with pytest.raises(ValueError, match="warm_start can only be used"):
        model.fit(X[y != 2], y[y != 2])
    model.set_params(warm_start=False)
    quiet(model.fit, X, y)
    assert model.network_ is not network and model.n_iter_ == 5


def test_pickle_round_trip_continues_exactly(small_classification, backend):
    X, y = small_classification
    model = MLPClassifier(hidden_layer_sizes=(6,), shuffle=False, random_state=0, backend=backend)
    model.partial_fit(X, y, classes=[0, 1, 2])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    model.partial_fit(X, y)
    restored.partial_fit(X, y)
    np.testing.assert_allclose(restored.network_.params, model.network_.params, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype(small_classification, dtype, backend):
    X, y = small_classification
    model = quiet(MLPClassifier(max_iter=3, random_state=0, dtype=dtype, backend=backend).fit, X, y)
    assert model.network_.dtype == np.dtype(dtype)
    assert model.predict(X).shape == y.shape
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1.0, rtol=1e-6)
    regressor = quiet(MLPRegressor(max_iter=3, random_state=0, dtype=dtype, backend=backend).fit, X, y)
    assert regressor.network_.dtype == np.dtype(dtype)
    # As scikit-learn's MLP: predictions in the wider of the parameters' and the input's dtype.
    assert regressor.predict(X).dtype == np.float64
    assert regressor.predict(X.astype(np.float32)).dtype == np.dtype(dtype)
    assert all(coef.dtype == np.dtype(dtype) for coef in regressor.coefs_)


def test_dtype_follows_the_input_by_default(small_classification, backend):
    X, y = small_classification
    model = quiet(MLPRegressor(max_iter=3, random_state=0, backend=backend).fit, X.astype(np.float32), y)
    assert model.network_.dtype == np.float32 and model.predict(X.astype(np.float32)).dtype == np.float32
    model = quiet(MLPRegressor(max_iter=3, random_state=0, backend=backend).fit, X.astype(int), y)
    assert model.network_.dtype == np.float64


def test_binary_and_string_labels(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    model = MLPClassifier(learning_rate_init=0.05, max_iter=50, random_state=0, backend=backend)
    quiet(model.fit, X, y)
    np.testing.assert_array_equal(model.classes_, ["no", "yes"])
    assert model.predict_proba(X).shape == (100, 2)
    assert model.score(X, y) > 0.9
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), model.predict_proba(X), rtol=1e-12)


def test_verbose_prints_losses(small_classification):
    X, y = small_classification
    out = io.StringIO()
    with redirect_stdout(out):
        quiet(MLPClassifier(max_iter=2, verbose=True, random_state=0).fit, X, y)
    assert "Iteration 1, loss = " in out.getvalue() and "Iteration 2, loss = " in out.getvalue()


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"hidden_layer_sizes": (0,)}, ValueError, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": "big"}, TypeError, "hidden_layer_sizes"),
        ({"activation": "softplus"}, ValueError, "activation"),
        ({"learning_rate_init": 0.0}, ValueError, "learning_rate_init"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": "big"}, TypeError, "batch_size"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"momentum": 1.5}, ValueError, "momentum"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
        ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"solver": "rprop"}, ValueError, "solver"),
        ({"learning_rate": "cosine"}, ValueError, "learning_rate"),
        ({"power_t": -0.5}, ValueError, "power_t"),
        ({"beta_1": 1.0}, ValueError, "beta_1"),
        ({"beta_2": -0.1}, ValueError, "beta_2"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"n_iter_no_change": 2.5}, TypeError, "n_iter_no_change"),
        ({"max_fun": 0}, ValueError, "max_fun"),
        ({"threads": 0}, ValueError, "threads"),
        ({"momentum": 10**400}, ValueError, "momentum"),
    ],
)
def test_invalid_parameters(small_classification, params, error, match):
    X, y = small_classification
    model = MLPClassifier(**params)  # scikit-learn validates in fit, never in __init__/set_params
    with pytest.raises(error, match=match):
        model.fit(X, y)
    assert not hasattr(model, "network_")


def test_bad_targets():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressor().fit(X, [0.0, np.nan, 1.0, 2.0])


def test_divergence_is_a_value_error(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) * 1e3
    y = rng.normal(size=50) * 1e6
    model = MLPRegressor(solver="sgd", learning_rate_init=10.0, max_iter=50, random_state=0, backend=backend)
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        quiet(model.fit, X, y)
    assert np.all(np.isfinite(model.network_.params))  # the last finite parameters are kept


def test_keyboard_interrupt_keeps_the_model(small_classification, monkeypatch):
    X, y = small_classification
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, warm_start=True)
    quiet(model.fit, X, y)
    params = model.network_.params.copy()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # the epoch runs in the kernel (run_epoch) or batch by batch (gradients): Ctrl-C in either
    monkeypatch.setattr(model.network_, "gradients", interrupted)
    monkeypatch.setattr(_training, "run_epoch", interrupted)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        model.fit(X, y)  # as scikit-learn's MLP: Ctrl-C ends fit and keeps the model usable
    assert model.n_iter_ == 0 and len(model.loss_curve_) == 3
    np.testing.assert_array_equal(model.network_.params, params)
    assert model.predict(X).shape == y.shape


# ------------------------------------------------------------------------ the same numbers as scikit-learn
from sklearn import neural_network as sk_nn  # noqa: E402


def _classification(n_classes):
    X, y = make_classification(n_samples=90, n_features=5, n_informative=4, n_redundant=0, n_classes=n_classes,
                               random_state=1)
    return StandardScaler().fit_transform(X), y


def _regression(n_outputs):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 5))
    Y = np.tanh(X @ rng.normal(size=(5, n_outputs))) + 0.1 * rng.normal(size=(90, n_outputs))
    return X, (Y.ravel() if n_outputs == 1 else Y)


def assert_same_model(ours, theirs, atol=1e-10, rtol_loss=1e-10):
    """Same weights (to ``atol``), same iteration counts and the same reported losses as scikit-learn."""
    assert len(ours.coefs_) == len(theirs.coefs_)
    for mine, reference in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert mine.shape == reference.shape and mine.dtype == reference.dtype
        np.testing.assert_allclose(mine, reference, rtol=0, atol=atol)
    for name in ("n_iter_", "n_layers_", "n_outputs_", "out_activation_", "t_"):
        if hasattr(theirs, name):
            assert getattr(ours, name) == getattr(theirs, name), name
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol_loss)
    if hasattr(theirs, "loss_curve_"):
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol_loss)
    if getattr(theirs, "validation_scores_", None) is not None:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-12)
    assert hasattr(ours, "best_loss_") == hasattr(theirs, "best_loss_")  # as scikit-learn: not with lbfgs
    if hasattr(theirs, "best_loss_"):
        assert (ours.best_loss_ is None) == (theirs.best_loss_ is None)


def fit_both(estimator, params, X, y, backend, **fit_params):
    ours_class = MLPClassifier if estimator == "classifier" else MLPRegressor
    theirs_class = sk_nn.MLPClassifier if estimator == "classifier" else sk_nn.MLPRegressor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = theirs_class(**params).fit(X, y, **fit_params)
        ours = ours_class(**params, backend=backend).fit(X, y, **fit_params)
    return ours, theirs


STOCHASTIC_CASES = {
    "sgd-nesterov-l2": dict(solver="sgd", learning_rate_init=0.05, alpha=1e-3, batch_size=16),
    "sgd-momentum": dict(solver="sgd", learning_rate_init=0.05, nesterovs_momentum=False, momentum=0.5),
    "sgd-plain": dict(solver="sgd", learning_rate_init=0.1, momentum=0.0, alpha=0.0, batch_size=10),
    "sgd-plain-no-shuffle": dict(solver="sgd", learning_rate_init=0.1, momentum=0.0, alpha=0.0, shuffle=False),
    "sgd-invscaling": dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.3,
                           batch_size=20),
    "sgd-adaptive": dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=0.05,
                         n_iter_no_change=1, batch_size=30, max_iter=12),
    # alpha=0 and no sample weights: whole epochs inside the compiled kernel (Network.fit), with the velocity
    # rescaled when the learning rate changes.
    "sgd-kernel-invscaling": dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.3,
                                  alpha=0.0, batch_size=20),
    "sgd-kernel-adaptive": dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=0.05,
                                n_iter_no_change=1, batch_size=30, max_iter=12, alpha=0.0),
    "adam": dict(solver="adam", learning_rate_init=0.01, batch_size=25),
    "adam-betas": dict(solver="adam", learning_rate_init=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                       alpha=0.01, activation="tanh"),
    "adam-early-stopping": dict(solver="adam", learning_rate_init=0.01, early_stopping=True,
                                validation_fraction=0.2, n_iter_no_change=3, tol=1e-3, max_iter=30),
    "sgd-logistic-two-layers": dict(solver="sgd", learning_rate_init=0.2, hidden_layer_sizes=(6, 4),
                                    activation="logistic", batch_size=32),
}


@pytest.mark.parametrize("case", sorted(STOCHASTIC_CASES))
@pytest.mark.parametrize("target", ["multiclass", "binary", "regression", "multioutput"])
def test_same_weights_as_sklearn(case, target, backend):
    """Given a random_state, fit makes scikit-learn's updates: its initial weights, shuffles, validation
    split, learning-rate schedule and stopping rule, to 1e-10 in float64 after several epochs."""
    params = dict(hidden_layer_sizes=(7,), max_iter=8, random_state=0)
    params.update(STOCHASTIC_CASES[case])
    if target in ("multiclass", "binary"):
        X, y = _classification(3 if target == "multiclass" else 2)
        ours, theirs = fit_both("classifier", params, X, y, backend)
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9)
    else:
        X, y = _regression(1 if target == "regression" else 3)
        ours, theirs = fit_both("regressor", params, X, y, backend)
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9, atol=1e-12)
    assert_same_model(ours, theirs)


def test_same_weights_from_given_initial_weights(backend):
    """The issue's set-up: the same coefs_/intercepts_ set on both, warm_start, shuffle=False."""
    X, y = _regression(2)
    rng = np.random.default_rng(5)
    coefs = [rng.normal(size=(5, 6)) * 0.3, rng.normal(size=(6, 2)) * 0.3]
    intercepts = [rng.normal(size=6) * 0.1, rng.normal(size=2) * 0.1]
    for solver in ("sgd", "adam"):
        params = dict(hidden_layer_sizes=(6,), solver=solver, warm_start=True, shuffle=False, max_iter=10,
                      learning_rate_init=0.01, batch_size=17, random_state=0)
        ours, theirs = fit_both("regressor", dict(params, max_iter=1), X, y, backend)
        for model in (ours, theirs):
            model.coefs_ = [c.copy() for c in coefs]
            model.intercepts_ = [b.copy() for b in intercepts]
            model.set_params(max_iter=10)
            quiet(model.fit, X, y)
        assert_same_model(ours, theirs)


def test_partial_fit_same_as_sklearn(backend):
    X, y = _classification(3)
    params = dict(hidden_layer_sizes=(5,), random_state=0, learning_rate_init=0.05)
    for solver in ("sgd", "adam"):
        ours = MLPClassifier(solver=solver, backend=backend, **params)
        theirs = sk_nn.MLPClassifier(solver=solver, **params)
        for _ in range(3):
            ours.partial_fit(X[:60], y[:60], classes=[0, 1, 2])
            theirs.partial_fit(X[:60], y[:60], classes=[0, 1, 2])
        ours.partial_fit(X[60:], y[60:])
        theirs.partial_fit(X[60:], y[60:])
        assert_same_model(ours, theirs)


@pytest.mark.parametrize("estimator", ["classifier", "regressor"])
def test_lbfgs_same_as_sklearn(estimator, backend):
    params = dict(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=60, random_state=0, alpha=1e-3)
    if estimator == "classifier":
        X, y = _classification(3)
    else:
        X, y = _regression(1)
    ours, theirs = fit_both(estimator, params, X, y, backend)
    # The same objective and gradient (to rounding) through the same scipy call: the iterates agree to far
    # below L-BFGS's tolerance.
    assert_same_model(ours, theirs, atol=1e-7, rtol_loss=1e-9)


def test_float32_same_as_sklearn(backend):
    X, y = _classification(3)
    params = dict(hidden_layer_sizes=(7,), max_iter=5, random_state=0, learning_rate_init=0.01)
    ours, theirs = fit_both("classifier", params, X.astype(np.float32), y, backend)
    for mine, reference in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert mine.dtype == reference.dtype == np.float32
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
@pytest.mark.parametrize("form", ["csr", "csc"])
def test_sparse_input_same_as_dense(form, solver, backend):
    import scipy.sparse

    X, y = _classification(3)
    X[np.abs(X) < 0.7] = 0.0
    sparse = getattr(scipy.sparse, f"{form}_matrix")(X)
    params = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=6, random_state=0, backend=backend)
    dense_model = quiet(MLPClassifier(**params).fit, X, y)
    sparse_model = quiet(MLPClassifier(**params).fit, sparse, y)
    for mine, reference in zip(sparse_model.coefs_, dense_model.coefs_):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse_model.predict_proba(sparse), dense_model.predict_proba(X), rtol=1e-12)


def test_diverging_model_with_early_stopping_restores_best(backend):
    """A diverging regressor under early stopping records a NaN validation score and keeps its best
    parameters, instead of failing inside sklearn.metrics."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    model = MLPRegressor(hidden_layer_sizes=100, activation="identity", solver="sgd", learning_rate_init=1.0,
                         max_iter=20, early_stopping=True, random_state=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    assert np.isnan(model.validation_scores_[-1]) and isinstance(model.validation_scores_[-1], float)
    assert all(np.isfinite(c).all() for c in model.coefs_ + model.intercepts_)
    assert np.isfinite(model.predict(X)).all()


def test_coefs_are_views_and_assignment_is_honoured(small_classification, backend):
    X, y = small_classification
    model = quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, backend=backend).fit, X, y)
    assert model.coefs_[0].shape == (6, 4) and model.coefs_[1].shape == (4, 3)
    np.testing.assert_array_equal(model.coefs_[0], model.network_.weights[0].T)
    model.coefs_[1][...] = 0.0  # in place: the network sees it
    model.intercepts_[1][...] = [0.0, 5.0, 0.0]
    assert (model.predict(X) == 1).all()
    model.coefs_ = [np.zeros((6, 4)), np.zeros((4, 3))]  # assigned: the network is rebuilt from it
    model.intercepts_ = [np.zeros(4), np.array([0.0, 0.0, 3.0])]
    assert (model.predict(X) == 2).all()
    assert model.network_.weights[1].shape == (3, 4)


def test_single_class_training_set(backend):
    X = np.arange(8.0).reshape(4, 2)
    model = quiet(MLPClassifier(hidden_layer_sizes=(3,), max_iter=5, random_state=0, backend=backend).fit,
                  X, ["a"] * 4)
    np.testing.assert_array_equal(model.predict(X), ["a"] * 4)


def test_partial_fit_refuses_early_stopping(small_classification):
    X, y = small_classification
    model = MLPClassifier(early_stopping=True)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        model.partial_fit(X, y, classes=[0, 1, 2])
    assert not hasattr(model, "coefs_")
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")


def test_n_iter_no_change_inf_runs_max_iter(small_classification):
    X, y = small_classification
    model = quiet(MLPClassifier(hidden_layer_sizes=(3,), solver="sgd", tol=1e9, n_iter_no_change=np.inf,
                                max_iter=7, random_state=0).fit, X, y)
    assert model.n_iter_ == 7 and model._no_improvement_count == 6


def test_threads_option_gives_the_same_model(small_classification, backend):
    pytest.importorskip("threadpoolctl")
    X, y = small_classification
    params = dict(hidden_layer_sizes=(6,), max_iter=4, random_state=0, backend=backend)
    one = quiet(MLPClassifier(threads=1, **params).fit, X, y)
    default = quiet(MLPClassifier(**params).fit, X, y)
    for mine, reference in zip(one.coefs_, default.coefs_):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_pickle_round_trip_continues_exactly_for_each_solver(small_classification, solver, backend):
    X, y = small_classification
    model = MLPClassifier(hidden_layer_sizes=(6,), solver=solver, shuffle=False, random_state=0,
                          learning_rate_init=0.01, backend=backend)
    model.partial_fit(X, y, classes=[0, 1, 2])
    model.partial_fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    model.partial_fit(X, y)
    restored.partial_fit(X, y)
    for mine, reference in zip(restored.coefs_ + restored.intercepts_, model.coefs_ + model.intercepts_):
        np.testing.assert_array_equal(mine, reference)
    assert restored._optimizer.learning_rate == model._optimizer.learning_rate


# ------------------------------------------------------------------- sample weights, multilabel, Poisson
def _weights(n, seed=3):
    return np.random.default_rng(seed).uniform(0.2, 3.0, size=n)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("target", ["multiclass", "binary", "regression"])
def test_sample_weight_same_as_sklearn(solver, target, backend):
    params = dict(hidden_layer_sizes=(6,), solver=solver, max_iter=8, random_state=0, learning_rate_init=0.02,
                  batch_size=16, alpha=1e-3)
    if target == "regression":
        X, y = _regression(1)
        estimator = "regressor"
    else:
        X, y = _classification(3 if target == "multiclass" else 2)
        estimator = "classifier"
    ours, theirs = fit_both(estimator, params, X, y, backend, sample_weight=_weights(len(X)))
    assert_same_model(ours, theirs, atol=1e-10 if solver != "lbfgs" else 1e-7, rtol_loss=1e-9)


def test_sample_weight_with_early_stopping_same_as_sklearn(backend):
    X, y = _regression(1)
    params = dict(hidden_layer_sizes=(6,), early_stopping=True, validation_fraction=0.2, max_iter=12,
                  random_state=0, learning_rate_init=0.01, batch_size=10)
    ours, theirs = fit_both("regressor", params, X, y, backend, sample_weight=_weights(len(X)))
    assert_same_model(ours, theirs)


def test_partial_fit_sample_weight_same_as_sklearn(backend):
    X, y = _classification(3)
    weights = _weights(len(X))
    ours = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, backend=backend)
    theirs = sk_nn.MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    for _ in range(3):
        ours.partial_fit(X, y, weights, classes=[0, 1, 2])
        theirs.partial_fit(X, y, weights, classes=[0, 1, 2])
    assert_same_model(ours, theirs)


def test_integer_sample_weight_equals_repeated_rows_with_lbfgs(backend):
    """Full-batch L-BFGS sees the same objective when a row of weight k is repeated k times."""
    X, y = _classification(3)
    counts = np.random.default_rng(4).integers(0, 3, size=len(X))
    params = dict(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=40, random_state=0, backend=backend)
    weighted = quiet(MLPClassifier(**params).fit, X, y, sample_weight=counts)
    repeated = quiet(MLPClassifier(**params).fit, np.repeat(X, counts, axis=0), np.repeat(y, counts))
    for mine, reference in zip(weighted.coefs_ + weighted.intercepts_, repeated.coefs_ + repeated.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (-np.ones(90), ValueError, "Negative values in data passed to sample_weight"),
        (np.ones(89), ValueError, "sample_weight.shape"),
        (np.full(90, np.nan), ValueError, "sample_weight must be finite"),
        (np.zeros(90), ValueError, "sample_weight must not be all zero"),
        (np.ones((90, 1)), ValueError, "1D array or scalar"),
        (["a"] * 90, TypeError, "sample_weight must be an array of numbers"),
    ],
)
def test_bad_sample_weight_leaves_the_estimator_unchanged(weights, error, match):
    X, y = _classification(3)
    model = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2)
    with pytest.raises(error, match=match):
        model.fit(X, y, sample_weight=weights)
    assert not hasattr(model, "coefs_") and not hasattr(model, "classes_")


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_multilabel_same_as_sklearn(solver, backend):
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=80, n_features=6, n_classes=4, random_state=0)
    params = dict(hidden_layer_sizes=(7,), solver=solver, max_iter=10, random_state=0, learning_rate_init=0.05,
                  alpha=1e-3, batch_size=20)
    ours, theirs = fit_both("classifier", params, X, Y, backend)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 4
    assert_same_model(ours, theirs, atol=1e-10 if solver != "lbfgs" else 1e-7, rtol_loss=1e-9)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_poisson_same_as_sklearn(solver, backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    y = rng.poisson(np.exp(0.3 * X[:, 0] - 0.2 * X[:, 1] + 0.5)).astype(float)
    params = dict(loss="poisson", hidden_layer_sizes=(5,), solver=solver, max_iter=10, random_state=0,
                  learning_rate_init=0.01, batch_size=20)
    ours, theirs = fit_both("regressor", params, X, y, backend)
    assert ours.out_activation_ == "exp"
    assert_same_model(ours, theirs, atol=1e-10 if solver != "lbfgs" else 1e-7, rtol_loss=1e-9)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9)


def test_a_batch_of_zero_weight_makes_no_update(backend):
    X, y = _regression(1)
    weights = np.r_[np.zeros(20), np.ones(70)]
    params = dict(hidden_layer_sizes=(4,), solver="sgd", batch_size=20, shuffle=False, max_iter=3,
                  random_state=0, backend=backend)
    weighted = quiet(MLPRegressor(**params).fit, X, y, sample_weight=weights)
    without = quiet(MLPRegressor(**params).fit, X[20:], y[20:])
    for mine, reference in zip(weighted.coefs_ + weighted.intercepts_, without.coefs_ + without.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-13)
    assert all(np.isfinite(c).all() for c in weighted.coefs_)
