"""The backend contract: fastbp._core and its twin fastbp._reference export exactly
``fastbp._backend.INTERFACE`` and agree entry by entry on random networks (every activation, loss and dtype,
with and without sample weights), and the kernel's codes are ``fastbp._spec``'s.

Modelled on bottleneck's ``bn.slow`` mirror: the same call goes to both modules with the same arrays, and
the results (return values and every buffer written) are compared.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fastbp import _backend, _reference, _spec

core = pytest.importorskip("fastbp._core")

MODULES = {"numpy": _reference, "cython": core}
TOL = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 2e-4, "atol": 1e-5}}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_both_modules_export_exactly_the_interface(name):
    module = MODULES[name]
    assert tuple(module.__all__) == _backend.INTERFACE
    for entry in _backend.INTERFACE:
        assert callable(getattr(module, entry)), entry


def test_the_stub_lists_the_interface():
    import pathlib
    import re

    import fastbp

    stub = (pathlib.Path(fastbp.__file__).parent / "_core.pyi").read_text()
    declared = set(re.findall(r"^(?:def|class) (\w+)", stub, flags=re.M))
    assert set(_backend.INTERFACE) <= declared
    exported = re.search(r"^__all__ = \[(.*?)\]", stub, flags=re.M | re.S).group(1)
    assert tuple(re.findall(r'"(\w+)"', exported)) == _backend.INTERFACE


def test_the_kernel_codes_are_the_specs():
    assert core.ACTIVATION_CODES == _spec.ACTIVATION_CODES
    assert core.LOSS_CODES == _spec.LOSS_CODES
    assert core.STATUS_CODES == {"STATUS_OK": _spec.STATUS_OK, "STATUS_NONFINITE": _spec.STATUS_NONFINITE,
                                 "STATUS_INTERRUPTED": _spec.STATUS_INTERRUPTED,
                                 "STATUS_BAD_INPUT": _spec.STATUS_BAD_INPUT}


def _case(rng, hidden, last, loss, dtype, n, K=3):
    sizes = [4, 5, 3, K]
    names = [hidden, hidden, last]
    codes = [_spec.ACTIVATION_CODES[a] for a in names]
    _, total = _spec.param_offsets(sizes)
    params = rng.uniform(-0.8, 0.8, size=total).astype(dtype)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        Y = np.eye(K, dtype=dtype)[rng.integers(0, K, size=n)]
    elif loss == "binary_cross_entropy":
        Y = rng.uniform(0, 1, size=(n, K)).astype(dtype)
    elif loss == "poisson":
        Y = rng.poisson(1.0, size=(n, K)).astype(dtype)
    else:
        Y = rng.normal(size=(n, K)).astype(dtype)
    return sizes, codes, params, X, Y


def _cases():
    for hidden, loss in itertools.product(_spec.ACTIVATIONS, _spec.LOSSES):
        lasts = ["identity"] if loss in _spec.LOGIT_LOSSES else list(_spec.ACTIVATIONS)
        for last in lasts:
            yield hidden, last, loss


CASES = list(_cases())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden,last,loss", CASES)
def test_predict_and_loss_and_gradient_agree(hidden, last, loss, dtype, weighted):
    rng = np.random.default_rng([CASES.index((hidden, last, loss)), weighted])
    n = 7
    sizes, codes, params, X, Y = _case(rng, hidden, last, loss, dtype, n)
    weights = rng.uniform(0, 2, size=n).astype(dtype) if weighted else None
    results = {}
    for name, module in MODULES.items():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, n)
        out = np.empty((n, sizes[-1]), dtype=dtype)
        module.predict(ws, params, X, out)
        loss_value = module.loss_and_gradient(ws, params, X, Y, weights)
        results[name] = (out, loss_value, ws.grad.copy())
    tol = TOL[np.dtype(dtype)]
    for a, b in zip(results["cython"], results["numpy"]):
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("beyond", [False, True])
def test_a_softmax_past_the_fast_exps_range_agrees(beyond, dtype, weighted):
    """The mini-batch softmax takes its exponentials in one sweep over the batch; logits that differ by
    more than the fast exp's range (87 in float, 708 in double) send the batch through the per-value exp,
    which must give the same loss and gradient (probabilities that underflow to 0 included)."""
    rng = np.random.default_rng([beyond, weighted])
    fast_range = 87 if dtype == np.float32 else 708
    spread = fast_range * 0.4 if beyond else 2.0
    n, sizes = 9, [4, 6, 5]
    codes = [_spec.ACTIVATION_CODES["tanh"], _spec.ACTIVATION_CODES["identity"]]
    _, total = _spec.param_offsets(sizes)
    params = rng.uniform(-1, 1, size=total).astype(dtype)
    w_off = _spec.param_offsets(sizes)[0][1][0]
    params[w_off:w_off + 30] *= spread      # the output layer's weights: logits apart by about `spread`
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], size=n)]
    weights = rng.uniform(0.5, 2, size=n).astype(dtype) if weighted else None
    logits = np.empty((n, sizes[-1]), dtype=dtype)
    _reference.predict(_reference.Workspace(sizes, codes, _spec.LOSS_CODES["cross_entropy"], dtype, n), params,
                       X, logits)
    assert (np.ptp(logits, axis=1).max() > fast_range) == beyond
    results = {}
    for name, module in MODULES.items():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["cross_entropy"], dtype, n)
        loss_value = module.loss_and_gradient(ws, params, X, Y, weights)
        results[name] = (loss_value, ws.grad.copy())
    assert np.isfinite(results["cython"][0])
    tol = TOL[np.dtype(dtype)]
    for a, b in zip(results["cython"], results["numpy"]):
        np.testing.assert_allclose(a, b, **tol)


def _optimizer_arguments(rule, params, **hyper_values):
    """``rule, hyper, state, steps`` for the backends' train_epoch: a fresh state for ``rule``."""
    hyper = np.zeros(_spec.N_HYPER)
    for name, value in hyper_values.items():
        hyper[getattr(_spec, "HYPER_" + name.upper())] = value
    state = np.zeros((len(_spec.STATE_ROWS[rule]), params.size), dtype=params.dtype)
    return _spec.RULE_CODES[rule], hyper, state, np.zeros(1, dtype=np.int64)


RULE_SETTINGS = {
    "sgd": dict(lr=0.05, sgd_momentum=0.5, sgd_nesterov=1, weight_decay=0.01),
    "adam": dict(lr=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, adam_amsgrad=1),
    "adamw": dict(lr=0.01, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6, weight_decay=0.1),
    "rmsprop": dict(lr=0.01, rmsprop_alpha=0.9, rmsprop_eps=1e-8, rmsprop_momentum=0.5, rmsprop_centered=1),
    "rprop": dict(lr=0.01, rprop_eta_minus=0.5, rprop_eta_plus=1.2, rprop_step_min=1e-6, rprop_step_max=50),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("rule", list(RULE_SETTINGS))
def test_train_epoch_agrees_for_every_rule(rule, batch_size, dtype):
    rng = np.random.default_rng([_spec.RULE_CODES[rule], batch_size])
    n = 11
    sizes, codes, params0, X, Y = _case(rng, "tanh", "identity", "mse", dtype, n)
    results = {}
    for name, module in MODULES.items():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch_size)
        params = params0.copy()
        arguments = _optimizer_arguments(rule, params, **RULE_SETTINGS[rule])
        returned = module.train_epoch(ws, params, X, Y, None, batch_size, *arguments, _spec.epoch_key(5, 0))
        results[name] = (returned, params, arguments[2], arguments[3])
    (ret_c, params_c, state_c, steps_c), (ret_n, params_n, state_n, steps_n) = results["cython"], results["numpy"]
    tol = TOL[np.dtype(dtype)]
    assert ret_c[2:] == ret_n[2:]
    assert steps_c[0] == steps_n[0] == -(-n // batch_size)
    np.testing.assert_allclose(ret_c[:2], ret_n[:2], **tol)
    np.testing.assert_allclose(params_c, params_n, **tol)
    np.testing.assert_allclose(state_c, state_n, **tol)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size,momentum,shuffle", [(1, 0.0, True), (1, 0.9, False), (4, 0.0, True),
                                                         (4, 0.5, True), (11, 0.0, False)])
@pytest.mark.parametrize("hidden,last,loss", [c for c in CASES if c[0] == c[1] or c[1] == "identity"])
def test_train_epoch_agrees(hidden, last, loss, batch_size, momentum, shuffle, dtype, weighted):
    rng = np.random.default_rng([CASES.index((hidden, last, loss)), batch_size, weighted])
    n = 11
    sizes, codes, params0, X, Y = _case(rng, hidden, last, loss, dtype, n)
    weights = rng.uniform(0, 2, size=n).astype(dtype) if weighted else None
    if weighted:
        weights[:2] = 0
    key = _spec.epoch_key(3, 0) if shuffle else -1
    results = {}
    for name, module in MODULES.items():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, batch_size)
        params = params0.copy()
        arguments = _optimizer_arguments("sgd", params, lr=0.05, sgd_momentum=momentum)
        returned = module.train_epoch(ws, params, X, Y, weights, batch_size, *arguments, key)
        results[name] = (returned, params, arguments[2][0])
    (ret_c, params_c, vel_c), (ret_n, params_n, vel_n) = results["cython"], results["numpy"]
    tol = TOL[np.dtype(dtype)]
    assert ret_c[2:] == ret_n[2:]  # examples_done, status
    np.testing.assert_allclose(ret_c[:2], ret_n[:2], **tol)
    np.testing.assert_allclose(params_c, params_n, **tol)
    np.testing.assert_allclose(vel_c, vel_n, **tol)


@pytest.mark.parametrize("rule", ["sgd", "adam", "adamw", "adam-short-memory"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,loss", [([3, 4, 2], "mse"), ([3, 4, 2], "half_sse"),   # the tiny-network loop
                                        ([6, 7, 3], "mse"), ([4, 5, 3], "cross_entropy"),
                                        ([4, 5, 3], "binary_cross_entropy"), ([4, 5, 3], "poisson"),
                                        ([9, 12, 5, 3], "mse")])
def test_train_rows_is_the_per_example_path(sizes, loss, dtype, rule):
    """The twin's train_rows, written as the fused per-example loops, equals train_epoch at batch size 1
    on both backends (which takes fastbp_train_rows, fastbp_train_rows_small or, for Adam and AdamW,
    fastbp_train_rows_adam in the kernel)."""
    rng = np.random.default_rng(sizes)
    codes = [_spec.ACTIVATION_CODES["tanh"]] * (len(sizes) - 2)
    codes.append(_spec.ACTIVATION_CODES["identity" if loss in _spec.LOGIT_LOSSES else "sigmoid"])
    _, total = _spec.param_offsets(sizes)
    params0 = rng.uniform(-0.8, 0.8, size=total).astype(dtype)
    n = 9
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = (np.eye(sizes[-1])[rng.integers(0, sizes[-1], size=n)] if loss == "cross_entropy"
         else rng.uniform(0, 1, size=(n, sizes[-1]))).astype(dtype)
    key = _spec.epoch_key(1, 0)
    # two epochs: the second starts from a non-zero state and step count. With betas (0.3, 0.6) both
    # bias corrections reach exactly 1 within the 12 epochs (108 steps), after which the kernel stops
    # recomputing them.
    settings = {"sgd": dict(lr=0.1), "adam": RULE_SETTINGS["adam"], "adamw": RULE_SETTINGS["adamw"],
                "adam-short-memory": dict(lr=0.01, adam_beta1=0.3, adam_beta2=0.6, adam_eps=1e-8,
                                          weight_decay=0.01)}[rule]
    epochs = 12 if rule == "adam-short-memory" else 2
    rule = rule.split("-")[0]
    ws = _reference.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, 1)
    params_rows = params0.copy()
    arguments_rows = _optimizer_arguments(rule, params_rows, **settings)
    for _ in range(epochs):
        loss_sum, done, status = _reference.train_rows(
            ws, params_rows, X, Y, dtype(settings["lr"]), _spec.permutation(n, key),
            adam=None if rule == "sgd" else arguments_rows)
        assert (done, status) == (n, 0)
    tol = TOL[np.dtype(dtype)]
    for module in MODULES.values():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, 1)
        params = params0.copy()
        arguments = _optimizer_arguments(rule, params, **settings)
        for _ in range(epochs):
            returned = module.train_epoch(ws, params, X, Y, None, 1, *arguments, key)
        np.testing.assert_allclose(params, params_rows, **tol)
        np.testing.assert_allclose(returned[0], loss_sum, **tol)
        np.testing.assert_allclose(arguments[2], arguments_rows[2], **tol)   # the state
        if rule != "sgd":   # (plain SGD's train_rows keeps no state)
            assert arguments[3][0] == arguments_rows[3][0] == epochs * n


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_finite_agrees(dtype):
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 70_000):
        values = rng.normal(size=size).astype(dtype)
        cases = [values]
        if size:
            for bad in (np.nan, np.inf, -np.inf):
                spoiled = values.copy()
                spoiled[rng.integers(size)] = bad
                cases.append(spoiled)
        for case in cases:
            assert core.all_finite(case) == _reference.all_finite(case) == bool(np.isfinite(case).all())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("batch_size,rule", [(1, "sgd"), (16, "sgd"), (16, "adam"), (2000, "sgd")])
def test_the_progress_hook_reports_the_same_running_sums(batch_size, rule, weighted, monkeypatch):
    """Both backends' train_epoch progress hooks report the counts of the batches completed so far: every
    report of the kernel (made at its signal checks) is one of the twin's (made after each batch), to the
    tolerance of the sums. The report interval is set to 0 so that every opportunity reports."""
    monkeypatch.setattr(core, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(_reference, "PROGRESS_INTERVAL", 0.0)
    rng = np.random.default_rng([batch_size, weighted])
    n = 6000
    sizes = [32, 64, 64, 4]
    codes = [_spec.ACTIVATION_CODES[a] for a in ("tanh", "relu", "identity")]
    _, total = _spec.param_offsets(sizes)
    params0 = rng.uniform(-0.3, 0.3, size=total)
    X, Y = rng.normal(size=(n, sizes[0])), rng.normal(size=(n, sizes[-1]))
    weights = rng.uniform(0, 2, size=n) if weighted else None
    reports = {}
    for name, module in MODULES.items():
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, batch_size)
        params = params0.copy()
        calls = []
        module.train_epoch(ws, params, X, Y, weights, batch_size,
                           *_optimizer_arguments(rule, params, lr=1e-3, adam_beta1=0.9, adam_beta2=0.999,
                                                 adam_eps=1e-8),
                           _spec.epoch_key(2, 0), progress=lambda *counts: calls.append(counts))
        reports[name] = calls
    twin = {done: (loss_sum, weight_sum) for done, loss_sum, weight_sum in reports["numpy"]}
    checked = 0
    for done, loss_sum, weight_sum in reports["cython"]:
        if done == 0:  # a check inside the first batch: nothing completed yet
            assert (loss_sum, weight_sum) == (0.0, 0.0)
            continue
        assert done in twin, (done, sorted(twin)[:5])
        np.testing.assert_allclose((loss_sum, weight_sum), twin[done], **TOL[np.dtype(np.float64)])
        checked += 1
    assert checked >= 1


def _sparse_case(rng, X, density=0.4):
    """X with about ``1 - density`` of its entries zeroed (an empty row and a full row included), as the
    CSR arrays the *_sparse functions take, and the dense matrix they describe."""
    import scipy.sparse

    X = X * (rng.uniform(size=X.shape) < density)
    X[0] = 0
    if X.shape[0] > 1:
        X[1] = rng.normal(size=X.shape[1])     # every column
    csr = scipy.sparse.csr_matrix(X)
    csr.sort_indices()
    return (csr.data, csr.indices.astype(np.intp), csr.indptr.astype(np.intp)), np.ascontiguousarray(X)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden,last,loss", CASES[::3])
def test_sparse_predict_and_loss_and_gradient_agree(hidden, last, loss, dtype, weighted):
    rng = np.random.default_rng([CASES.index((hidden, last, loss)), weighted, 7])
    n = 7
    sizes, codes, params, X, Y = _case(rng, hidden, last, loss, dtype, n)
    csr, dense = _sparse_case(rng, X)
    weights = rng.uniform(0, 2, size=n).astype(dtype) if weighted else None
    results = {}
    for name, module in MODULES.items():
        for sparse_input in (False, True):
            ws = module.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, n, sparse_input=sparse_input)
            out = np.empty((n, sizes[-1]), dtype=dtype)
            module.predict_sparse(ws, params, *csr, out)
            loss_value = module.loss_and_gradient_sparse(ws, params, *csr, Y, weights)
            results[name, sparse_input] = (out, loss_value, ws.grad.copy())
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES[loss], dtype, n)
        out = np.empty((n, sizes[-1]), dtype=dtype)
        module.predict(ws, params, dense, out)
        results[name, "dense"] = (out, module.loss_and_gradient(ws, params, dense, Y, weights), ws.grad.copy())
    tol = TOL[np.dtype(dtype)]
    for key, result in results.items():
        for a, b in zip(result, results["numpy", "dense"]):
            np.testing.assert_allclose(a, b, **tol, err_msg=str(key))


def _mse_epoch(module, form, sizes, codes, params0, rows, Y, weights, batch_size, rule, settings, key):
    """One train_epoch (``form`` "dense": ``rows`` a matrix) or train_epoch_sparse (``rows`` the CSR arrays)
    of an MSE network from ``params0`` with ``rule`` ("plain-sgd" or a RULE_SETTINGS name); returns
    ``(returned, params, state, steps)``."""
    dtype = params0.dtype
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch_size, sparse_input=form == "sparse")
    params = params0.copy()
    arguments = _optimizer_arguments(rule.replace("plain-", ""), params, **settings)
    if form == "sparse":
        returned = module.train_epoch_sparse(ws, params, *rows, Y, weights, batch_size, *arguments, key)
    else:
        returned = module.train_epoch(ws, params, rows, Y, weights, batch_size, *arguments, key)
    return returned, params, arguments[2], arguments[3]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size,shuffle", [(1, True), (4, True), (4, False), (11, False)])
@pytest.mark.parametrize("rule", list(RULE_SETTINGS) + ["plain-sgd"])
def test_sparse_train_epoch_agrees_with_dense(rule, batch_size, shuffle, dtype, weighted):
    rng = np.random.default_rng([len(rule), batch_size, shuffle, weighted])
    n = 11
    sizes, codes, params0, X, Y = _case(rng, "tanh", "identity", "mse", dtype, n)
    csr, dense = _sparse_case(rng, X)
    weights = rng.uniform(0, 2, size=n).astype(dtype) if weighted else None
    if weighted:
        weights[2:4] = 0
    key = _spec.epoch_key(3, 0) if shuffle else -1
    settings = dict(lr=0.05) if rule == "plain-sgd" else RULE_SETTINGS[rule]
    results = {}
    for name, module in MODULES.items():
        for form in ("sparse", "dense"):
            results[name, form] = _mse_epoch(module, form, sizes, codes, params0, csr if form == "sparse" else dense,
                                             Y, weights, batch_size, rule, settings, key)
    tol = TOL[np.dtype(dtype)]
    reference = results["numpy", "dense"]
    for key_, (returned, params, state, steps) in results.items():
        assert returned[2:] == reference[0][2:], key_
        assert steps[0] == reference[3][0], key_
        np.testing.assert_allclose(returned[:2], reference[0][:2], **tol, err_msg=str(key_))
        np.testing.assert_allclose(params, reference[1], **tol, err_msg=str(key_))
        np.testing.assert_allclose(state, reference[2], **tol, err_msg=str(key_))


def test_the_dense_train_epoch_refuses_a_sparse_workspace():
    ws = core.Workspace([4, 3, 2], [2, 0], _spec.LOSS_CODES["mse"], np.float64, 4, sparse_input=True)
    params = np.zeros(_spec.param_offsets([4, 3, 2])[1])
    arguments = _optimizer_arguments("sgd", params, lr=0.1)
    with pytest.raises(ValueError, match="sparse_input"):
        core.train_epoch(ws, params, np.zeros((4, 4)), np.zeros((4, 2)), None, 4, *arguments, 0)


@pytest.mark.parametrize("form", ["dense", "sparse"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size,rule", [(1, "plain-sgd"), (1, "adam"), (4, "adam"), (4, "plain-sgd"),
                                             (11, "sgd")])
def test_an_explicit_row_order_is_the_epoch_on_those_rows(form, dtype, batch_size, rule):
    """train_epoch with the order itself as shuffle_key (how the estimators pass scikit-learn's shuffle):
    the same as the epoch in order on the rows gathered in that order, on both backends; sample weights
    go with their rows."""
    rng = np.random.default_rng([batch_size, len(rule), form == "sparse"])
    n = 11
    sizes, codes, params0, X, Y = _case(rng, "relu", "identity", "mse", dtype, n)
    csr, dense = _sparse_case(rng, X)
    weights = rng.uniform(0.5, 2, size=n).astype(dtype) if batch_size == 11 else None
    order = rng.permutation(n).astype(np.intp)
    order[3] = order[5]   # an order need not be a permutation: a row may come twice
    settings = dict(lr=0.05) if rule == "plain-sgd" else RULE_SETTINGS[rule]
    tol = TOL[np.dtype(dtype)]

    def run(module, rows_X, Y_, w, key):
        return _mse_epoch(module, form, sizes, codes, params0, rows_X, Y_, w, batch_size, rule, settings, key)[:2]

    def gathered_csr(rows):
        import scipy.sparse
        matrix = scipy.sparse.csr_matrix((csr[0], csr[1], csr[2]), shape=dense.shape)[rows]
        return (matrix.data.astype(dtype), matrix.indices.astype(np.intp), matrix.indptr.astype(np.intp))

    expected = run(_reference, gathered_csr(order) if form == "sparse" else dense[order], Y[order],
                   None if weights is None else weights[order], -1)
    for name, module in MODULES.items():
        returned, params = run(module, csr if form == "sparse" else dense, Y, weights, order)
        assert returned[2:] == expected[0][2:], name
        np.testing.assert_allclose(returned[:2], expected[0][:2], **tol, err_msg=name)
        np.testing.assert_allclose(params, expected[1], **tol, err_msg=name)


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("order, message", [(np.arange(5, dtype=np.int32), "np.intp"),
                                            (np.arange(4, dtype=np.intp), "5 row indices"),
                                            (np.arange(10, dtype=np.intp).reshape(2, 5), "1-D"),
                                            (np.array([0, 1, 5, 2, 3], dtype=np.intp), r"\[0, 5\); got 5"),
                                            (np.array([0, -1, 4, 2, 3], dtype=np.intp), r"got -1 at position 1")])
def test_a_bad_explicit_row_order_is_refused(name, order, message):
    module = MODULES[name]
    sizes = [4, 3, 2]
    ws = module.Workspace(sizes, [2, 0], _spec.LOSS_CODES["mse"], np.float64, 2)
    params = np.zeros(_spec.param_offsets(sizes)[1])
    arguments = _optimizer_arguments("sgd", params, lr=0.1)
    with pytest.raises(ValueError, match=message):
        module.train_epoch(ws, params, np.zeros((5, 4)), np.zeros((5, 2)), None, 2, *arguments, order)
    assert not params.any()


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("threads", [0, -2])
def test_train_epoch_refuses_a_bad_thread_count(name, threads):
    # threads= (the kernel's team for its own products): an int of at least 1 on both backends
    module = MODULES[name]
    sizes, batch = [300, 21, 5], 19
    codes = [_spec.ACTIVATION_CODES["relu"], _spec.ACTIVATION_CODES["identity"]]
    _, total = _spec.param_offsets(sizes)
    rng = np.random.default_rng(1)
    params, X, Y = rng.normal(size=total), rng.normal(size=(batch, sizes[0])), rng.normal(size=(batch, sizes[-1]))
    ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, batch)
    with pytest.raises(ValueError, match="threads"):
        module.train_epoch(ws, params, X, Y, None, batch, _spec.RULE_CODES["sgd"], np.zeros(_spec.N_HYPER),
                           np.zeros((0, params.size)), np.zeros(1, dtype=np.int64), -1, threads=threads)
    with pytest.raises(TypeError):
        module.train_epoch(ws, params, X, Y, None, batch, _spec.RULE_CODES["sgd"], np.zeros(_spec.N_HYPER),
                           np.zeros((0, params.size)), np.zeros(1, dtype=np.int64), -1, threads="2")
