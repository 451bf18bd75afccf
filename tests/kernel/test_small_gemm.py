"""The non-packing mini-batch products of fastbp/_kernels_gemm.h (forward with the bias and activation
fused, the delta of the layer below, the weight gradient and the plain-SGD update in place) against the
NumPy twin, on shapes that take them: batch rows between the kernel's bounds, layers wide enough, and
sizes that are not multiples of the register blocks (rows of 4 and 8, outputs of 3 and 4, vectors of 4,
8 and 16, the scalar columns at the end), so that every remainder path runs. Also: the same results with
the products switched off (BLAS), and the same bits run to run and on any number of threads (the
products split over a team of threads, _kernels_pool.h).

Every test runs once for each build of the products this CPU runs (AVX-512, AVX2: on an AVX-512 CPU both).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastbp import _reference, _spec

core = pytest.importorskip("fastbp._core")
if not core._small_gemm_available():
    pytest.skip("this CPU or build has no small products (AVX-512 or AVX2, gcc on Linux): BLAS serves every "
                "layer", allow_module_level=True)


@pytest.fixture(autouse=True, params=core._small_gemm_isas())
def isa(request):
    """Each test on each build of the products (``_small_gemm_isa``), the default put back afterwards; with
    the L2 size that decides layers above 48 rows pinned at 1 MiB, so that the same layers take the
    products on every machine."""
    default, l2 = core._small_gemm_isa(), core._small_gemm_l2_bytes()
    core._small_gemm_isa(request.param)
    core._small_gemm_l2_bytes(1 << 20)
    yield request.param
    core._small_gemm_isa(default)
    core._small_gemm_l2_bytes(l2)


TOL = {np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 2e-4, "atol": 2e-5}}

# (sizes, hidden activation, batch): the first layer of each takes the small products at this batch.
SHAPES = [
    ([300, 21, 5], "relu", 19),         # 300 = 9 x 32 + 12 columns; 21 outputs = 5 blocks of 4 + 1; 19 rows
    ([257, 40, 33, 3], "tanh", 16),     # 257: one scalar column; 40 x 33 takes the hand loops or BLAS
    ([264, 256, 17, 2], "sigmoid", 48),  # 264 = 8 x 32 + 8 (one 8-wide double vector); both first layers
    ([784, 128, 10], "relu", 32),       # mnist-b32
    ([300, 22, 4], "relu", 44),         # 44 rows = 11 blocks of 4; 22 outputs = 5 blocks of 4 + 2 left
    ([784, 9, 3], "relu", 101),          # 9 outputs (2 blocks of 4 + 1); 101 rows = 25 blocks of 4 + 1
    ([512, 130, 10], "tanh", 128),       # the largest batch (130 -> 10 keeps BLAS: under 256 inputs)
    ([512, 240, 10], "relu", 128),       # 240 -> 10 (under 256 inputs) forced onto the products too
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


def _small_layers(sizes, batch, dtype=np.float32):
    codes = [_spec.ACTIVATION_CODES["relu"]] * (len(sizes) - 2) + [_spec.ACTIVATION_CODES["identity"]]
    return core.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch)._small_layers(batch)


def test_which_layers_take_the_small_products():
    # 16-48 rows: every layer of at least 256 inputs and 8 outputs
    assert _small_layers([784, 128, 10], 16) == (True, False)
    assert _small_layers([784, 128, 10], 15) == (False, False)
    assert _small_layers([1024, 2048, 2048, 10], 48) == (True, True, True)
    # 49-128 rows: only layers whose weights fit in L2 (1 MiB here; 2048 x 2048 float32 is 16 MiB)
    assert _small_layers([784, 128, 10], 128) == (True, False)
    assert _small_layers([784, 128, 10], 129) == (False, False)
    assert _small_layers([1024, 2048, 2048, 10], 64) == (False, False, True)
    # a layer outside the bounds whose BLAS product would start BLAS threads follows the others when it
    # is small beside them (240 -> 10 at 128 rows: 307,200 multiply-adds), not when it is large
    assert _small_layers([784, 240, 10], 128) == (True, True)
    assert _small_layers([784, 240, 10], 100) == (True, False)  # 240,000: no BLAS threads
    assert _small_layers([784, 240, 10], 128, np.float64) == (False, False)  # 784 x 240 doubles: 1.4 MiB
    assert _small_layers([100, 512, 512, 10], 32) == (False, True, True)
    assert _small_layers([100, 512, 512, 10], 32, np.float64) == (False, True, True)


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


def _train(sizes, hidden, batch, dtype, rule, small, threads=1):
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
        elif rule == "rmsprop":
            hyper[_spec.HYPER_RMSPROP_ALPHA], hyper[_spec.HYPER_RMSPROP_EPS] = 0.99, 1e-8
            hyper[_spec.HYPER_RMSPROP_MOMENTUM], hyper[_spec.HYPER_RMSPROP_CENTERED] = 0.5, 1
        elif rule == "rprop":
            hyper[_spec.HYPER_RPROP_ETA_MINUS], hyper[_spec.HYPER_RPROP_ETA_PLUS] = 0.5, 1.2
            hyper[_spec.HYPER_RPROP_STEP_MIN], hyper[_spec.HYPER_RPROP_STEP_MAX] = 1e-6, 50
        elif rule == "momentum":
            rule = "sgd"
            hyper[_spec.HYPER_SGD_MOMENTUM], hyper[_spec.HYPER_SGD_NESTEROV] = 0.9, 1
        state = np.zeros((len(_spec.STATE_ROWS[rule]), params.size), dtype=dtype)
        steps = np.zeros(1, dtype=np.int64)
        ws = core.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], dtype, batch)
        returned = core.train_epoch(ws, params, X, Y, None, batch, _spec.RULE_CODES[rule], hyper, state, steps,
                                    _spec.epoch_key(3, 0), threads=threads)
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


@pytest.mark.parametrize("rule", ["sgd", "adam", "momentum", "rmsprop", "rprop"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,hidden,batch", SHAPES)
def test_training_on_a_team_of_threads_gives_the_same_bits(sizes, hidden, batch, dtype, rule):
    # each thread computes a slice of every product's output cut at the serial loop's register blocks: 2
    # threads halve the outputs, 3 cut them unevenly, 8 leave some threads without a block on narrow layers;
    # the update rules (all but plain SGD, which updates inside the product) split each large layer's sweep
    alone, params_alone = _train(sizes, hidden, batch, dtype, rule, small=True, threads=1)
    for threads in (2, 3, 8):
        jobs = core._team_jobs()
        team, params_team = _train(sizes, hidden, batch, dtype, rule, small=True, threads=threads)
        assert core._team_jobs() > jobs, "the products did not run on a team"
        assert team == alone
        assert params_team.tobytes() == params_alone.tobytes()


def test_one_thread_and_unsplittable_calls_start_no_team():
    sizes, hidden, batch = SHAPES[3]
    jobs = core._team_jobs()
    _train(sizes, hidden, batch, np.float32, "sgd", small=True, threads=1)
    _train(sizes, hidden, batch, np.float32, "sgd", small=False, threads=2)   # BLAS serves every layer
    assert core._team_jobs() == jobs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_gives_the_same_bits_on_one_and_two_threads(dtype):
    from fastbp import Network

    sizes = [300, 64, 10]
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, sizes[0])).astype(dtype)
    Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], 200)]
    fitted = {}
    for threads in (1, 2):
        net = Network(sizes, ["relu", "identity"], loss="cross_entropy", dtype=dtype, seed=3)
        jobs = core._team_jobs()
        net.fit(X, Y, epochs=2, batch_size=32, lr=0.05, threads=threads, seed=4)
        assert (core._team_jobs() > jobs) == (threads > 1)
        fitted[threads] = net.params.tobytes()
    assert fitted[1] == fitted[2]


def test_each_build_is_really_the_one_used(isa):
    # the dot products of the forward product sum lanes of 16 floats (AVX-512) or 8 (AVX2) as a tree, so the
    # two builds round differently: agreeing within the tolerance but not in every bit shows that switching
    # the build switches the code that runs (and is not the same build tested twice)
    isas = core._small_gemm_isas()
    if len(isas) < 2:
        pytest.skip(f"this CPU runs one build of the products ({isas[0]})")
    sizes, hidden, batch = SHAPES[3]
    codes, params, X, _ = _case(sizes, hidden, batch, np.float32, 11)
    outputs = {}
    for name in isas:
        core._small_gemm_isa(name)
        ws = core.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float32, batch)
        outputs[name] = np.empty((batch, sizes[-1]), dtype=np.float32)
        core.predict(ws, params, X, outputs[name])
    np.testing.assert_allclose(outputs["avx512"], outputs["avx2"], **TOL[np.dtype(np.float32)])
    assert outputs["avx512"].tobytes() != outputs["avx2"].tobytes()
    assert core._small_gemm_isa() == isas[-1]


def test_a_build_is_chosen_by_name_only_where_the_cpu_runs_it(isa):
    assert core._small_gemm_isa() == isa
    with pytest.raises(ValueError, match="one of off, avx2, avx512; got 'sse2'"):
        core._small_gemm_isa("sse2")
    for name in ("avx512", "avx2"):
        if name not in core._small_gemm_isas():
            with pytest.raises(ValueError, match=f"cannot run the {name} products"):
                core._small_gemm_isa(name)
    assert core._small_gemm_isa() == isa
    # "off": BLAS serves every layer, so a call that would split its products over a team starts none
    sizes, hidden, batch = SHAPES[3]
    jobs = core._team_jobs()
    _train(sizes, hidden, batch, np.float32, "sgd", small=True, threads=2)
    assert core._team_jobs() > jobs
    assert core._small_gemm_isa("off") == "off"
    jobs = core._team_jobs()
    _train(sizes, hidden, batch, np.float32, "sgd", small=True, threads=2)
    assert core._team_jobs() == jobs


def _at_offset(array, offset):
    """A C-contiguous copy of ``array`` whose data starts ``offset`` bytes past a 64-byte line."""
    buffer = np.empty(array.nbytes + 128, dtype=np.uint8)
    start = (-buffer.ctypes.data % 64) + offset
    copy = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    assert copy.ctypes.data % 64 == offset
    return copy


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype,n_in", [("float32", 784), ("float32", 300), ("float64", 300), ("float64", 264)])
def test_unshuffled_rows_give_the_same_bits_wherever_x_lies(dtype, n_in, threads):
    """Unshuffled batches are read in place; rows off the vector width (numpy aligns to 16 bytes) are
    copied to an aligned buffer 4 at a time inside the forward product (the next 4 prefetched). The copy
    must change nothing: the same bits as with X on a cache line, and the NumPy twin within tolerance.
    38 rows: two batches of 19, each 4 blocks of 4 rows (the last with a partial next) and 3 rows left over."""
    from fastbp import Network

    sizes = [n_in, 24, 3]
    rng = np.random.default_rng(11)
    X = rng.normal(size=(38, n_in)).astype(dtype)
    Y = rng.normal(size=(38, 3)).astype(dtype)
    fitted = {}
    for offset in (0, 8, 16, 48):
        net = Network(sizes, ["tanh", "identity"], dtype=dtype, seed=2)
        net.fit(_at_offset(X, offset), Y, epochs=2, batch_size=19, lr=0.05, shuffle=False, threads=threads)
        fitted[offset] = net.params.copy()
    for offset in (8, 16, 48):
        assert fitted[offset].tobytes() == fitted[0].tobytes(), offset
    twin = Network(sizes, ["tanh", "identity"], dtype=dtype, seed=2, backend="numpy")
    twin.fit(X, Y, epochs=2, batch_size=19, lr=0.05, shuffle=False)
    np.testing.assert_allclose(fitted[0], twin.params, **TOL[np.dtype(dtype)])
