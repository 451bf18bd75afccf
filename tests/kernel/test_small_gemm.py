"""The non-packing mini-batch products of fastbp/_kernels_gemm.h (forward with the bias and activation
fused, the delta of the layer below, the weight gradient and the plain-SGD update in place) against the
NumPy twin, on shapes that take them: batch rows between the kernel's bounds, layers wide enough, and
sizes that are not multiples of the register blocks (rows of 4 and 8, vectors of 8 and 16, the scalar
columns at the end), so that every remainder path runs. Also: the same results with the products
switched off (BLAS), and the same bits run to run.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastbp import _reference, _spec

core = pytest.importorskip("fastbp._core")
if not core._small_gemm_available():
    pytest.skip("this CPU or build has no small products (AVX-512, gcc on Linux): BLAS serves every layer",
                allow_module_level=True)

TOL = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 2e-4, "atol": 2e-5}}

# (sizes, hidden activation, batch): the first layer of each takes the small products at this batch.
SHAPES = [
    ([300, 21, 5], "relu", 19),         # 300 = 9 x 32 + 12 columns; 21 outputs = 5 blocks of 4 + 1; 19 rows
    ([257, 40, 33, 3], "tanh", 16),     # 257: one scalar column; 40 x 33 takes the hand loops or BLAS
    ([264, 256, 17, 2], "sigmoid", 48),  # 264 = 8 x 32 + 8 (one 8-wide double vector); both first layers
    ([784, 128, 10], "relu", 32),       # mnist-b32
]


def _bounds():
    low, high, min_in, min_out = core._small_gemm_thresholds()
    return low, high, min_in, min_out


def _case(sizes, hidden, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    codes = [_spec.ACTIVATION_CODES[hidden]] * (len(sizes) - 2) + [_spec.ACTIVATION_CODES["identity"]]
    _, total = _spec.param_offsets(sizes)
    params = (rng.uniform(-1, 1, size=total) / np.sqrt(max(sizes))).astype(dtype)
    X = rng.normal(size=(batch, sizes[0])).astype(dtype)
    Y = rng.normal(size=(batch, sizes[-1])).astype(dtype)
    return codes, params, X, Y


def test_the_shapes_take_the_small_products():
    low, high, min_in, min_out = _bounds()
    for sizes, _, batch in SHAPES:
        assert low <= batch <= high and sizes[0] >= min_in and sizes[1] >= min_out, (sizes, batch)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,hidden,batch", SHAPES)
def test_predict_and_gradient_agree_with_the_twin(sizes, hidden, batch, dtype):
    codes, params, X, Y = _case(sizes, hidden, batch, dtype, sum(sizes) + batch)
    weights = np.random.default_rng(batch).uniform(0.1, 2, size=batch).astype(dtype)
    results = {}
    for name, module in (("cython", core), ("numpy", _reference)):
        ws = module.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch)
        out = np.empty((batch, sizes[-1]), dtype=dtype)
        module.predict(ws, params, X, out)
        loss = module.loss_and_gradient(ws, params, X, Y, weights)
        results[name] = (out, loss, ws.grad.copy())
    for a, b in zip(results["cython"], results["numpy"]):
        np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)])


def _train(sizes, hidden, batch, dtype, rule, small):
    codes, params, X, Y = _case(sizes, hidden, 5 * batch + 3, dtype, 7)
    bounds = core._small_gemm_thresholds()
    try:
        if not small:
            core._small_gemm_thresholds(max_batch=0)
        hyper = np.zeros(_spec.N_HYPER)
        hyper[_spec.HYPER_LR] = 0.01
        if rule == "adam":
            hyper[_spec.HYPER_ADAM_BETA1], hyper[_spec.HYPER_ADAM_BETA2] = 0.9, 0.999
            hyper[_spec.HYPER_ADAM_EPS] = 1e-8
        state = np.zeros((len(_spec.STATE_ROWS[rule]), params.size), dtype=dtype)
        steps = np.zeros(1, dtype=np.int64)
        ws = core.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch)
        returned = core.train_epoch(ws, params, X, Y, None, batch, _spec.RULE_CODES[rule], hyper, state, steps,
                                    _spec.epoch_key(3, 0))
    finally:
        core._small_gemm_thresholds(*bounds)
    return returned, params


@pytest.mark.parametrize("rule", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,hidden,batch", SHAPES[:3])
def test_training_agrees_with_blas_and_repeats_bit_for_bit(sizes, hidden, batch, dtype, rule):
    # plain SGD updates the weights inside the weight-gradient product (alpha -lr, accumulate)
    small, params_small = _train(sizes, hidden, batch, dtype, rule, small=True)
    blas, params_blas = _train(sizes, hidden, batch, dtype, rule, small=False)
    again, params_again = _train(sizes, hidden, batch, dtype, rule, small=True)
    tol = TOL[np.dtype(dtype)]
    assert small[2:] == blas[2:]
    np.testing.assert_allclose(small[:2], blas[:2], **tol)
    np.testing.assert_allclose(params_small, params_blas, **tol)
    assert small == again
    assert params_small.tobytes() == params_again.tobytes()
