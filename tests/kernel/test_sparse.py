"""Sparse input: scipy.sparse matrices go through the kernel's ``*_sparse`` functions (layer 0 from the
non-zeros) and give the numbers of the dense path on the same data, on both backends, in both dtypes, for
every optimizer, with sample weights and shuffling; bad sparse input raises and changes nothing; and a
100k-column TF-IDF-like matrix trains in memory that follows its non-zeros.

The truth is the dense path on ``X.toarray()`` (itself checked against PyTorch and the worked examples
elsewhere). Tolerance: the two paths add the same products in a different order (BLAS blocks against one
sparse dot per output unit), so they agree to rounding: rtol 1e-10 in float64 and 2e-4 in float32 after
several epochs (each step's rounding differences feed the next).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp._validation import SparseRows, _as_sparse_rows

scipy_sparse = pytest.importorskip("scipy.sparse")

TOL = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 2e-4, "atol": 2e-5}}


def _data(rng, n=60, n_in=40, density=0.1, n_classes=3):
    """A sparse matrix with an empty row and a row with every column, and class targets."""
    X = scipy_sparse.random(n, n_in, density=density, format="csr", random_state=rng, dtype=np.float64)
    X = X.tolil()
    X[3, :] = 0
    X[5, :] = rng.uniform(0.1, 1.0, size=n_in)
    X = X.tocsr()
    X.eliminate_zeros()
    assert X[3].nnz == 0 and X[5].nnz == n_in
    y = rng.integers(0, n_classes, size=n)
    return X, y


def _pair(backend, dtype, sizes=(40, 12, 3), activations=("tanh", "identity"), loss="cross_entropy"):
    net = fastbp.Network(list(sizes), list(activations), loss=loss, dtype=dtype, seed=4, backend=backend)
    return net, net.copy()


def _close(a, b, dtype, what=""):
    np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)], err_msg=what)


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("form", ["csr_matrix", "csc_matrix", "coo_matrix", "csr_array", "csc_array"])
def test_predict_loss_gradients_equal_dense(backend, dtype, form):
    rng = np.random.default_rng(1)
    X, y = _data(rng)
    sparse = getattr(scipy_sparse, form)(X)
    dense = X.toarray()
    net, _ = _pair(backend, dtype)
    w = rng.uniform(0, 2, size=X.shape[0])
    _close(net.predict(sparse), net.predict(dense), dtype, "predict")
    _close(net.predict_proba(sparse), net.predict_proba(dense), dtype, "predict_proba")
    np.testing.assert_array_equal(net.predict_classes(sparse), net.predict_classes(dense))
    _close(net.loss(sparse, y), net.loss(dense, y), dtype, "loss")
    _close(net.loss(sparse, y, sample_weight=w), net.loss(dense, y, sample_weight=w), dtype, "weighted loss")
    for weights in (None, w):
        g_sparse = net.gradients(sparse, y, sample_weight=weights)
        g_dense = net.gradients(dense, y, sample_weight=weights)
        _close(g_sparse.loss, g_dense.loss, dtype)
        for a, b in zip(g_sparse.weights + g_sparse.biases, g_dense.weights + g_dense.biases):
            _close(a, b, dtype, "gradient")
    assert net.evaluate(sparse, y).keys() == net.evaluate(dense, y).keys()


def test_int64_and_int32_indices_and_integer_data(backend):
    rng = np.random.default_rng(2)
    X, y = _data(rng)
    net, _ = _pair(backend, "float64")
    expected = net.predict(X.toarray())
    wide = X.copy()
    wide.indices = wide.indices.astype(np.int64)
    wide.indptr = wide.indptr.astype(np.int64)
    narrow = X.copy()
    narrow.indices = narrow.indices.astype(np.int32)
    narrow.indptr = narrow.indptr.astype(np.int32)
    for matrix in (wide, narrow):
        _close(net.predict(matrix), expected, np.float64)
    counts = scipy_sparse.csr_matrix((rng.integers(1, 5, size=X.nnz), X.indices, X.indptr), shape=X.shape)
    _close(net.predict(counts), net.predict(counts.toarray().astype(np.float64)), np.float64)


def test_empty_rows_empty_matrix_and_all_columns(backend, dtype):
    net, _ = _pair(backend, dtype)
    zeros = scipy_sparse.csr_matrix((5, 40), dtype=np.float64)
    _close(net.predict(zeros), net.predict(np.zeros((5, 40))), dtype, "no non-zeros")
    assert net.predict(scipy_sparse.csr_matrix((0, 40))).shape == (0, 3)
    full = scipy_sparse.csr_matrix(np.arange(1, 81, dtype=np.float64).reshape(2, 40) / 80)
    _close(net.predict(full), net.predict(full.toarray()), dtype, "every column")
    g_sparse, g_dense = net.gradients(zeros, [0, 1, 2, 0, 1]), net.gradients(np.zeros((5, 40)), [0, 1, 2, 0, 1])
    for a, b in zip(g_sparse.weights, g_dense.weights):
        _close(a, b, dtype)
    assert not g_sparse.weights[0].any()   # no input, no first-layer weight gradient


# ------------------------------------------------------------------------------------------------ training


OPTIMIZERS = {
    "sgd": lambda net: None,                                   # plain SGD: updated in place in the kernel
    "sgd-momentum": lambda net: fastbp.SGD(net, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda net: fastbp.Adam(net, lr=0.01, amsgrad=True),
    "adamw": lambda net: fastbp.AdamW(net, lr=0.01, weight_decay=0.05),
    "rmsprop": lambda net: fastbp.RMSprop(net, lr=0.005, momentum=0.5, centered=True),
    "rprop": lambda net: fastbp.Rprop(net, lr=0.01),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("batch_size", [1, 7])
def test_fit_equals_dense(backend, dtype, optimizer, batch_size):
    rng = np.random.default_rng(3)
    X, y = _data(rng)
    a, b = _pair(backend, dtype)
    options = dict(epochs=3, batch_size=batch_size, seed=11, shuffle=True)
    if optimizer == "sgd":
        options["lr"] = 0.05
    h_sparse = a.fit(X, y, optimizer=OPTIMIZERS[optimizer](a), **options)
    h_dense = b.fit(X.toarray(), y, optimizer=OPTIMIZERS[optimizer](b), **options)
    _close(a.params, b.params, dtype, "parameters")
    _close(h_sparse.loss, h_dense.loss, dtype, "epoch losses")
    assert not np.allclose(a.params, fastbp.Network([40, 12, 3], ["tanh", "identity"], loss="cross_entropy",
                                                    dtype=dtype, seed=4).params)   # it did train


def test_fit_with_weights_validation_and_gradient_norms_equals_dense(backend, dtype):
    rng = np.random.default_rng(4)
    X, y = _data(rng)
    w = rng.uniform(0, 2, size=X.shape[0])
    w[:8] = 0                                   # a whole zero-weight batch: no update, on both paths
    a, b = _pair(backend, dtype)
    options = dict(epochs=3, batch_size=8, seed=5, sample_weight=w, validation_split=0.2, record_gradients=True,
                   metrics=["accuracy"])
    h_sparse = a.fit(X.tocsc(), y, optimizer=fastbp.Adam(a, lr=0.01), **options)
    h_dense = b.fit(X.toarray(), y, optimizer=fastbp.Adam(b, lr=0.01), **options)
    _close(a.params, b.params, dtype)
    _close(h_sparse.loss, h_dense.loss, dtype)
    _close(h_sparse.val_loss, h_dense.val_loss, dtype)
    _close(np.array(h_sparse.gradient_norms), np.array(h_dense.gradient_norms), dtype)
    assert h_sparse.metrics["accuracy"] == h_dense.metrics["accuracy"]


def test_unshuffled_regression_and_deeper_net_equal_dense(backend, dtype):
    rng = np.random.default_rng(5)
    X, _ = _data(rng)
    Y = rng.normal(size=(X.shape[0], 2))
    a, b = _pair(backend, dtype, sizes=(40, 9, 6, 2), activations=("relu", "sigmoid", "identity"), loss="mse")
    a.fit(X, Y, epochs=2, batch_size=5, shuffle=False, lr=0.05)
    b.fit(X.toarray(), Y, epochs=2, batch_size=5, shuffle=False, lr=0.05)
    _close(a.params, b.params, dtype)


def test_lbfgs_and_train_step_equal_dense(backend):
    rng = np.random.default_rng(6)
    X, y = _data(rng)
    a, b = _pair(backend, "float64")
    a.fit(X, y, optimizer=fastbp.LBFGS(a, max_iter=15))
    b.fit(X.toarray(), y, optimizer=fastbp.LBFGS(b, max_iter=15))
    _close(a.params, b.params, np.float64)
    opt_a, opt_b = fastbp.Adam(a, lr=0.01), fastbp.Adam(b, lr=0.01)
    loss_a = opt_a.train_step(X[:10], y[:10])
    loss_b = opt_b.train_step(X[:10].toarray(), y[:10])
    _close(loss_a, loss_b, np.float64)
    _close(a.params, b.params, np.float64)


def test_divergence_is_unwound_as_dense(backend):
    rng = np.random.default_rng(7)
    X, _ = _data(rng)
    X = X * 1e3
    Y = rng.normal(size=(X.shape[0], 3)) * 1e3
    a, b = _pair(backend, "float64", activations=("relu", "identity"), loss="mse")
    errors = []
    for net, data in ((a, X), (b, X.toarray())):
        with pytest.raises(FloatingPointError) as caught:
            net.fit(data, Y, epochs=5, batch_size=4, lr=10.0, seed=2)
        errors.append((caught.value.epoch, caught.value.batch))
    assert errors[0] == errors[1]
    _close(a.params, b.params, np.float64)     # the last finite parameters, to rounding
    assert np.isfinite(a.params).all()


# ------------------------------------------------------------------------------------------------ bad input


def _csr_with(indices=None, data=None, indptr=None, shape=(3, 40)):
    """A CSR matrix whose arrays are replaced after construction (scipy checks little on the way in)."""
    matrix = scipy_sparse.csr_matrix(
        (np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 5, 2, 7]), np.array([0, 2, 2, 4])), shape=shape)
    if indices is not None:
        matrix.indices = np.asarray(indices, dtype=matrix.indices.dtype)
    if data is not None:
        matrix.data = np.asarray(data)
    if indptr is not None:
        matrix.indptr = np.asarray(indptr, dtype=matrix.indptr.dtype)
    return matrix


@pytest.mark.parametrize("matrix,error,match", [
    (_csr_with(data=[1.0, np.nan, 3.0, 4.0]), ValueError, "finite"),
    (_csr_with(data=[1.0, np.inf, 3.0, 4.0]), ValueError, "finite"),
    (_csr_with(indices=[1, 40, 2, 7]), ValueError, "out of range"),
    (_csr_with(indices=[1, -1, 2, 7]), ValueError, "out of range"),
    (_csr_with(indptr=[0, 3, 2, 4]), ValueError, "indptr"),
    (_csr_with(indptr=[1, 2, 2, 4]), ValueError, "indptr"),
    (_csr_with(indptr=[0, 2, 2, 5]), ValueError, "indptr"),
    (_csr_with(shape=(3, 41)), ValueError, r"\(n, 40\)"),
    (scipy_sparse.csr_matrix(np.ones((2, 40), dtype=bool)), TypeError, "booleans"),
    (scipy_sparse.csr_matrix(np.ones((2, 40), dtype=complex)), TypeError, "real numbers"),
])
def test_bad_sparse_input_raises_and_changes_nothing(backend, matrix, error, match):
    net, _ = _pair(backend, "float64")
    before = net.params.copy()
    y = np.zeros(matrix.shape[0], dtype=int)
    with pytest.raises(error, match=match):
        net.predict(matrix)
    with pytest.raises(error, match=match):
        net.fit(matrix, y, epochs=1)
    with pytest.raises(error, match=match):
        net.gradients(matrix, y)
    np.testing.assert_array_equal(net.params, before)


def test_float32_overflow_is_refused():
    net, _ = _pair("numpy", "float32")
    with pytest.raises(ValueError, match="too large"):
        net.predict(_csr_with(data=[1.0, 1e300, 3.0, 4.0]))


def test_unsorted_and_duplicate_indices_mean_what_scipy_says(backend, dtype):
    """A CSR matrix with unsorted or repeated column indices is the matrix scipy reads (duplicates summed);
    the caller's matrix is left as it was."""
    net, _ = _pair(backend, dtype)
    messy = _csr_with(indices=[5, 1, 7, 7])          # row 0 unsorted, row 2 a duplicate
    kept = (messy.indices.copy(), messy.data.copy(), messy.indptr.copy())
    expected = messy.toarray()
    assert expected[2, 7] == 7.0
    _close(net.predict(messy), net.predict(expected), dtype)
    y = [0, 1, 2]
    for a, b in zip(net.gradients(messy, y).weights, net.gradients(expected, y).weights):
        _close(a, b, dtype)
    for array, saved in zip((messy.indices, messy.data, messy.indptr), kept):
        np.testing.assert_array_equal(array, saved)


def test_sparse_rows_take_rows_as_scipy_does():
    rng = np.random.default_rng(8)
    X, _ = _data(rng)
    rows = _as_sparse_rows(X, "X", np.float64, X.shape[1])
    assert isinstance(rows, SparseRows) and rows.shape == X.shape and rows.nnz == X.nnz
    np.testing.assert_array_equal(rows.toarray(), X.toarray())
    for key in (slice(4, 17), slice(-9, None), slice(30, 10), slice(0, 60, 3), np.array([5, 3, 59, 0, 5])):
        np.testing.assert_array_equal(rows[key].toarray(), X[key].toarray(), err_msg=str(key))
        assert rows[key].indices.dtype == np.intp and rows[key].indptr[0] == 0


# ------------------------------------------------------------------------------------------------ memory


def _tfidf_like(n, n_cols, per_row, seed):
    """TF-IDF-like rows: ``per_row`` distinct columns each (Zipf-skewed), positive values, unit L2 norm."""
    rng = np.random.default_rng(seed)
    indptr = np.arange(0, (n + 1) * per_row, per_row)
    indices = np.empty(n * per_row, dtype=np.int64)
    for i in range(n):
        draw = np.unique(np.minimum(rng.zipf(1.3, size=3 * per_row) - 1, n_cols - 1))
        extra = rng.choice(n_cols, size=per_row, replace=False)
        columns = np.unique(np.concatenate([draw[:per_row // 2], extra]))[:per_row]
        while columns.size < per_row:
            columns = np.unique(np.concatenate([columns, rng.choice(n_cols, size=per_row)]))[:per_row]
        indices[i * per_row:(i + 1) * per_row] = np.sort(columns)
    data = rng.uniform(0.5, 3.0, size=n * per_row)
    X = scipy_sparse.csr_matrix((data, indices, indptr), shape=(n, n_cols))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1))).ravel()
    return scipy_sparse.csr_matrix(scipy_sparse.diags(1 / norms) @ X), rng.integers(0, 2, size=n)


def _peak_bytes(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _budget(X, net):
    """A small multiple of the non-zeros (float32 values, intp indices and indptr, and their copies) plus
    of the parameters (the optimizer's state rows, the gradient, the start-of-epoch copies fit keeps to
    unwind a divergence, the twin's temporaries), plus a constant: nothing of size rows x columns."""
    sparse_bytes = X.nnz * (4 + 8) + (X.shape[0] + 1) * 8
    return 4 * sparse_bytes + 24 * net.params.nbytes + 8 * 2**20


def test_tfidf_100k_columns_trains_in_memory_that_follows_the_non_zeros(backend):
    """2,000 x 100,000 at density 0.1%: the dense float32 form is 800 MB; fit, predict and gradients peak
    within the budget above (tracemalloc sees NumPy's buffers), which is far below it."""
    X, y = _tfidf_like(2000, 100_000, 100, seed=9)
    net = fastbp.Network([100_000, 4, 2], ["relu", "identity"], loss="cross_entropy", dtype="float32", seed=1,
                         backend=backend)
    budget = _budget(X, net)
    assert budget < X.shape[0] * X.shape[1] * 4 / 10
    for what, call in [
        ("fit", lambda: net.fit(X, y, epochs=1, batch_size=64, optimizer=fastbp.Adam(net, lr=1e-3), seed=0)),
        ("predict", lambda: net.predict(X)),
        ("gradients", lambda: net.gradients(X[:500], y[:500])),
    ]:
        peak = _peak_bytes(call)
        assert peak < budget, f"{what}: peak {peak / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB"
    assert np.isfinite(net.params).all()


def test_the_sklearn_estimator_does_not_densify():
    pytest.importorskip("sklearn")
    import warnings

    from fastbp.sklearn import MLPClassifier

    X, y = _tfidf_like(2000, 100_000, 50, seed=10)
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, batch_size=500, dtype="float32", random_state=0)

    def fit_and_predict():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # two epochs do not converge
            model.fit(X, y)
        model.predict(X)

    # densifying a batch of 500 rows (200 MB), or prediction chunks, would exceed the budget
    peak = _peak_bytes(fit_and_predict)
    budget = _budget(X, model.network_)
    assert budget < X.shape[0] * X.shape[1] * 4 / 10
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB"
    np.testing.assert_allclose(model.predict_proba(X[:50]), model.predict_proba(X[:50].toarray()), rtol=1e-4,
                               atol=1e-6)


def test_the_bench_row_runs(capsys):
    """bench/sparse.py on a tiny set (it prints a row per contender; no timing is checked)."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "sparse.py"
    if not path.exists():
        pytest.skip("bench/ is not shipped with the installed package")
    spec = importlib.util.spec_from_file_location("bench_sparse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rows", "60", "--cols", "300", "--per-row", "6", "--hidden", "5", "--batch-size", "20",
                 "--repeat", "1"])
    printed = capsys.readouterr().out
    for name in ("fastbp sparse", "fastbp densify", "fastbp.sklearn", "scikit-learn"):
        assert name in printed
