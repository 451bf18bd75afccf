"""pytest-benchmark suite: ``fit`` of fastbp's scikit-learn estimators against scikit-learn's own.

    pytest bench/test_bench_sklearn.py
    pytest bench/test_bench_sklearn.py --benchmark-json=out.json

Each group is one data set (scikit-learn's bundled digits and diabetes, standardised) at the estimators'
default settings, with a fixed amount of work: ``max_iter`` epochs and ``tol=0`` with a large
``n_iter_no_change``, so that both libraries run every epoch. Before timing, each benchmark checks that the
two estimators, from the same ``random_state``, end with the same weights (to 1e-9): the time compares the
same training. ``bench/sklearn_compare.py`` is the full comparison (five data sets, default convergence,
scores and ratios printed in one run).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
fastbp_sklearn = pytest.importorskip("fastbp.sklearn")

from sklearn import datasets, neural_network  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

EPOCHS = 20
CASES = {
    "digits": (lambda: datasets.load_digits(return_X_y=True), "MLPClassifier"),
    "diabetes": (lambda: datasets.load_diabetes(return_X_y=True), "MLPRegressor"),
}


def _data(name):
    X, y = CASES[name][0]()
    X = StandardScaler().fit_transform(X)
    if CASES[name][1] == "MLPRegressor":
        y = (y - y.mean()) / y.std()
    return X, y


def _estimator(library, name):
    module = fastbp_sklearn if library == "fastbp" else neural_network
    return getattr(module, CASES[name][1])(random_state=0, max_iter=EPOCHS, tol=0.0, n_iter_no_change=10**6)


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        return estimator.fit(X, y)


@pytest.mark.parametrize("library", ["fastbp", "sklearn"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_estimator_fit(benchmark, name, library):
    X, y = _data(name)
    ours, theirs = _fit(_estimator("fastbp", name), X, y), _fit(_estimator("sklearn", name), X, y)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    benchmark.group = f"sklearn-{name}"
    benchmark.extra_info.update(library=library, dataset=name, epochs=EPOCHS, rows=int(X.shape[0]))
    fitted = benchmark.pedantic(lambda: _fit(_estimator(library, name), X, y), rounds=3, warmup_rounds=1,
                                iterations=1)
    assert fitted.n_iter_ == EPOCHS
