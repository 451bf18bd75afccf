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


def test_early_stopping_restores_best(small_classification):
    X, y = small_classification
    model = quiet(
        MLPClassifier(early_stopping=True, validation_fraction=0.25, n_iter_no_change=3, max_iter=60,
                      learning_rate_init=0.05, random_state=0).fit, X, y,
    )
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    # Rebuild the same split and check that the restored parameters give the best validation score.
    from sklearn.utils import check_random_state

    rng = check_random_state(0)
    rng.randint(np.iinfo(np.int32).max)  # the draw that seeded the network
    _, X_val, _, y_val = train_test_split(X, y, random_state=rng, test_size=0.25, stratify=y)
    assert model.score(X_val, y_val) == pytest.approx(model.best_validation_score_)


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
    assert incremental.n_iter_ == 2 and len(incremental.loss_curve_) == 2
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
    model = MLPRegressor(hidden_layer_sizes=(), learning_rate_init=0.01, random_state=0)
    for _ in range(30):
        model.partial_fit(X, y)
    assert model.n_iter_ == 30
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
    assert model.network_ is network and model.n_iter_ == 10 and len(model.loss_curve_) == 10
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
    assert regressor.predict(X).dtype == np.float64  # as every scikit-learn regressor


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
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier().fit(X, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="multilabel"):
        MLPClassifier().fit(X, [[0, 1], [1, 0], [1, 1], [0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressor().fit(X, [0.0, np.nan, 1.0, 2.0])


def test_divergence_is_a_value_error(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) * 1e3
    y = rng.normal(size=50) * 1e6
    model = MLPRegressor(learning_rate_init=10.0, max_iter=50, random_state=0, backend=backend)
    with pytest.raises(ValueError, match="non-finite"):
        quiet(model.fit, X, y)
    assert np.all(np.isfinite(model.network_.params))  # the last finite parameters are kept


def test_keyboard_interrupt_keeps_the_model(small_classification, monkeypatch):
    X, y = small_classification
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, warm_start=True)
    quiet(model.fit, X, y)
    params = model.network_.params.copy()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model.network_, "fit", interrupted)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        model.fit(X, y)  # as scikit-learn's MLP: Ctrl-C ends fit and keeps the model usable
    assert model.n_iter_ == 3
    np.testing.assert_array_equal(model.network_.params, params)
    assert model.predict(X).shape == y.shape
