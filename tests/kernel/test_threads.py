"""BLAS thread limits: ``fastbp.set_num_threads``, ``get_num_threads``, ``num_threads`` and ``fit(threads=)``.

Checked against threadpoolctl's own report of the BLAS libraries in the process (the independent truth),
never by timing.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp import _threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    """threadpoolctl's view: the thread count of every BLAS library loaded in the process."""
    import scipy.linalg.cython_blas  # noqa: F401  (the compiled kernel's BLAS)
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


@pytest.fixture(autouse=True)
def restore_limits():
    before = blas_threads()
    yield
    fastbp.set_num_threads(None)
    assert blas_threads() == before, "a test left the BLAS thread limits changed"


def test_set_and_restore():
    original = blas_threads()
    assert fastbp.get_num_threads() == max(original)
    fastbp.set_num_threads(1)
    assert blas_threads() == [1] * len(original)
    assert fastbp.get_num_threads() == 1
    fastbp.set_num_threads(2)
    assert 1 <= fastbp.get_num_threads() <= 2  # a BLAS may cap a limit at its own maximum
    fastbp.set_num_threads(None)
    assert blas_threads() == original


def test_context_manager_restores_even_on_error():
    original = blas_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with fastbp.num_threads(1):
            assert blas_threads() == [1] * len(original)
            raise RuntimeError("inside the block")
    assert blas_threads() == original


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_fit_threads_limits_blas_during_training_only(backend):
    if backend == "cython":
        pytest.importorskip("fastbp._core")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(256, 64)), rng.normal(size=(256, 8))
    seen = []
    nets = []
    original = max(blas_threads())
    for threads in (None, 1):
        net = fastbp.Network([64, 48, 8], "relu", seed=3, backend=backend)
        net.fit(X, Y, epochs=2, batch_size=64, lr=0.01, seed=1, threads=threads,
                callbacks=[lambda epoch, logs: seen.append((threads, max(blas_threads())))])
        nets.append(net)
    assert seen == [(None, 1)] * 2 + [(1, 1)] * 2  # 64 rows x 64 units is small: one thread when None
    assert max(blas_threads()) == original          # and the limit ends with the call
    # the same arithmetic whatever the thread count (BLAS splits the work, not the sums, at these sizes
    # for the compiled kernel; the tolerance covers a BLAS that does split the sums)
    np.testing.assert_allclose(nets[0].params, nets[1].params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError), (np.float64(2), TypeError)])
def test_bad_thread_counts(bad, error):
    with pytest.raises(error, match="positive int"):
        fastbp.set_num_threads(bad)
    with pytest.raises(error, match="positive int"):
        with fastbp.num_threads(bad):
            pass
    net = fastbp.Network([2, 2, 1], "sigmoid", seed=0)
    before = net.params.copy()
    with pytest.raises(error, match="threads must be a positive int"):
        net.fit(np.zeros((4, 2)), np.zeros((4, 1)), threads=bad)
    assert np.array_equal(net.params, before)


def test_numpy_integer_thread_count_is_accepted():
    fastbp.set_num_threads(np.int64(1))
    assert fastbp.get_num_threads() == 1


def test_without_threadpoolctl_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # makes `import threadpoolctl` fail
    monkeypatch.setattr("fastbp._threads._controller", None)
    with pytest.raises(ImportError, match=r"fastbp\[threads\]"):
        fastbp.set_num_threads(1)
    with pytest.raises(ImportError, match="threadpoolctl"):
        fastbp.get_num_threads()
    net = fastbp.Network([2, 2, 1], "sigmoid", seed=0)
    with pytest.raises(ImportError, match="threadpoolctl"):
        net.fit(np.zeros((4, 2)), np.zeros((4, 1)), threads=1)
    net.fit(np.zeros((4, 2)), np.zeros((4, 1)))  # without threads= nothing needs it


# The thread count fit picks when none is given: checked against what the machine is made to do (processes
# that spin on every core) and against the documented size rule, never by timing.

def test_small_products_get_one_thread():
    assert _threads.threads_for_call(1, [784, 128, 10]) == 1
    assert _threads.threads_for_call(32, [64, 32, 10]) == 1
    assert _threads.threads_for_call(200, [64, 100, 10]) == 1          # scikit-learn's digits, batch "auto"
    assert 200 * 64 * 100 < _threads.SMALL_WORK <= 200 * 100 * 100     # ... but 100-100 layers are not "small"
    assert _threads.SMALL_WORK <= 512 * 2048 * 2048  # a wide batch is never "small"


def test_cores_taken_by_other_processes_give_one_thread():
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/loadavg is Linux's")
    cores = _threads._usable_cores()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        # the spinners are runnable from their start: wait until the kernel counts all of them
        for _ in range(500):
            if _threads.busy_cores() >= cores:
                break
            time.sleep(0.01)
        assert _threads.busy_cores() >= cores
        assert _threads.threads_for_call(512, [1024, 2048, 2048, 10]) == 1
        with _threads.limit_for_call(None, 512, [1024, 2048, 2048, 10]):
            assert max(blas_threads()) == 1  # restored after the block: the autouse fixture checks
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_an_explicit_or_process_wide_choice_stands():
    fastbp.set_num_threads(1)
    assert _threads.threads_for_call(512, [1024, 2048, 2048, 10]) is None  # the user's limit stays
    fastbp.set_num_threads(None)
    with _threads.limit_for_call(1, 512, [1024, 2048]):
        assert max(blas_threads()) == 1
    for bad, error in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="threads"):
            _threads.limit_for_call(bad, 32, [4, 2])
