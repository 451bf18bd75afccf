"""Memory that grows with rows x width: measured with tracemalloc (NumPy reports its buffers to it), never
with timings. Also the parameter lock for assignments during fit."""

import gc
import math
import tracemalloc

import numpy as np
import pytest

import fastbp

MiB = 2**20


def _measure(function):
    """Run ``function``; return (its result, peak traced bytes above the start, bytes still held after)."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = function()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - start, current - start


def test_predict_on_a_wide_network_needs_megabytes_not_gigabytes(backend):
    net = fastbp.Network([1, 200_000, 1], ["relu", "identity"], seed=0, backend=backend)
    X = np.linspace(-1, 1, 4096).reshape(-1, 1)
    out, peak, held = _measure(lambda: net.predict(X))
    assert out.shape == (4096, 1)
    assert peak < 80 * MiB, f"predict peaked at {peak / MiB:.0f} MiB"
    assert held < 48 * MiB, f"predict kept {held / MiB:.0f} MiB"
    # The same numbers as one row at a time.
    np.testing.assert_allclose(out[:5], np.stack([net.predict(row) for row in X[:5]]), rtol=1e-12)


def test_a_large_gradient_does_not_keep_its_workspace(backend):
    net = fastbp.Network([10, 32, 1], ["tanh", "identity"], seed=0, backend=backend)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(60_000, 10)), rng.normal(size=(60_000, 1))
    gradients, peak, held = _measure(lambda: net.gradients(X, Y))
    assert peak > 40 * MiB  # the workspace for 60,000 rows did exist during the call
    assert held < 4 * MiB, f"gradients kept {held / MiB:.0f} MiB after returning"
    assert np.isfinite(gradients.loss)


def test_small_workspaces_stay_cached_per_thread(backend):
    net = fastbp.Network([3, 4, 2], "tanh", seed=0, backend=backend)
    net.predict(np.zeros((10, 3)))
    first = net._local.workspace
    net.predict(np.zeros((10, 3)))
    assert net._local.workspace is first


def test_initialisation_draws_in_chunks_with_the_same_values():
    net, peak, _ = _measure(lambda: fastbp.Network([5000, 700], "identity", seed=3, backend="numpy"))
    params_bytes = net.params.nbytes
    assert peak - params_bytes < 24 * MiB, f"initialisation needed {(peak - params_bytes) / MiB:.0f} MiB extra"
    rng = np.random.default_rng(3)
    bound = 1 / math.sqrt(5000)
    np.testing.assert_array_equal(net.weights[0], rng.uniform(-bound, bound, size=(700, 5000)))
    np.testing.assert_array_equal(net.biases[0], rng.uniform(-bound, bound, size=700))


def test_initialisation_out_of_memory_is_a_value_error_naming_the_size():
    class OutOfMemory(np.random.Generator):
        def uniform(self, *args, **kwargs):
            raise MemoryError

    with pytest.raises(ValueError, match="needs 12 parameters"):
        fastbp.Network([3, 3], "identity", seed=OutOfMemory(np.random.PCG64(0)))


def test_params_assignment_is_refused_while_fit_runs(backend):
    net = fastbp.Network([2, 3, 1], "tanh", seed=0, backend=backend)
    X, Y = np.ones((8, 2)), np.ones((8, 1))
    errors = []

    def assign(epoch, logs):
        try:
            net.params = np.zeros(net.n_params)
        except RuntimeError as error:
            errors.append(error)

    net.fit(X, Y, epochs=2, callbacks=[assign], seed=0)
    assert len(errors) == 2 and "params" in str(errors[0])
    assert np.any(net.params != 0)
    net.params = np.zeros(net.n_params)  # allowed again after fit
    assert not net.params.any()


@pytest.mark.parametrize("n", [1, 3, 784, 100_480, 1_000_003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_zeros_start_on_a_cache_line(n, dtype):
    # Several allocations each: numpy's own alignment (16 bytes) would pass one by chance.
    for _ in range(8):
        array = fastbp._spec.aligned_zeros(n, dtype)
        assert array.ctypes.data % fastbp._spec.ALIGNMENT == 0
        assert array.shape == (n,) and array.dtype == dtype and array.flags.c_contiguous
        assert array.flags.writeable and not array.any()
        array[:] = 1  # the whole length is usable
        assert array.sum() == n


def test_parameters_and_workspace_buffers_start_on_a_cache_line(backend, dtype):
    """The small products read rows of 16 floats: on a cache line only if their buffer starts on one."""
    nets = [fastbp.Network([784, 128, 10], ["relu", "identity"], dtype=dtype, seed=seed, backend=backend)
            for seed in range(8)]
    for net in nets:
        assert net.params.ctypes.data % 64 == 0
        assert net.weights[0].ctypes.data % 64 == 0 and net.weights[0].base is not None
    if backend == "cython":
        from fastbp import _core
        codes = [fastbp._spec.ACTIVATION_CODES[name] for name in ("relu", "identity")]
        for batch in (1, 3, 32):
            ws = _core.Workspace([784, 128, 10], codes, fastbp._spec.LOSS_CODES["mse"], dtype, batch)
            addresses = ws._buffer_addresses()
            assert len(addresses) == 4
            for name, address in addresses.items():
                assert address % 64 == 0, name
