"""pytest-benchmark suite: one epoch of ``Network.fit`` per backend x workload x dtype x optimizer.

    pytest bench/                                    # quick: small epochs, 3 rounds
    FASTBP_BENCH_FULL=1 pytest bench/                # longer epochs, 10 rounds
    FASTBP_BACKEND=numpy pytest bench/               # the NumPy twin only
    pytest bench/ -k "cython and mnist"              # a subset
    pytest bench/ -k adam                            # the Adam rows only (-k sgd: the SGD rows)
    pytest bench/ -k threads                         # mnist-b32 and -b256 on one and two threads
    pytest bench/ --benchmark-json=out.json          # machine-readable (extra_info has examples/s)

Every benchmark first checks that what it is about to time is a real training run (from the shared
initial weights: the loss is finite and falls over three epochs, the parameters changed and are finite,
and the compiled backend's losses match the NumPy twin's), then times ``fit(X, Y, epochs=1,
shuffle=False, optimizer=...)`` with ``benchmark.pedantic``; ``setup`` resets the parameters to the
initial weights (and the optimizer's state to a fresh one) before each round, so every round makes the same
updates. The optimizer is plain SGD at the workload's lr (``sgd``) or ``fastbp.Adam`` with torch's
defaults and lr ``peers.ADAM_LR`` (``adam``), the same settings as ``bench/compare.py --optimizer``.
Groups are the workloads; ``extra_info`` carries the backend, dtype, optimizer, examples per epoch,
examples/s (median round) and the correctness flag.
The cross-library comparison (PyTorch, JAX, FANN, GEMM-only, GEMM peak) is ``bench/compare.py``.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import workloads as wl
from peers import ADAM_LR

fastbp = pytest.importorskip("fastbp")

FULL = os.environ.get("FASTBP_BENCH_FULL") == "1"
ROUNDS = 10 if FULL else 3

# Examples per timed epoch: the same for every backend and dtype of a workload, so that the times within a
# pytest-benchmark group (a workload) compare directly. Quick: the twin's epoch takes ~0.1 s (the compiled
# backend's far less); FULL: the full data set where the twin can afford it.
EXAMPLES = {
    False: {"seed-1-1-1": 4_000, "seed-2-2-1": 4_000, "seed-4-3-4": 4_000, "small-b1": 4_000,
            "mnist-b32": 2_560, "mnist-b64": 2_560, "mnist-b128": 2_560, "mnist-b256": 2_560,
            "wide-b512": 1_024},
    True: {"seed-1-1-1": 50_000, "seed-2-2-1": 50_000, "seed-4-3-4": 50_000, "small-b1": 50_000,
           "mnist-b32": 20_480, "mnist-b64": 20_480, "mnist-b128": 20_480, "mnist-b256": 20_480,
           "wide-b512": 2_048},
}
# The batch-1 rows past the tiny sizes: the twin's per-example loop costs ~50 us an example on them.
for _w in wl.WORKLOADS.values():
    if _w.name.startswith("b1-"):
        EXAMPLES[False][_w.name] = 2_000
        EXAMPLES[True][_w.name] = 20_000
# Compiled vs twin loss agreement after a few epochs of the check run (summation order differs).
TWIN_RTOL = {"float64": 1e-9, "float32": 1e-3}
OPTIMIZERS = ("sgd", "adam")


def _compiled_available():
    try:
        importlib.import_module("fastbp._core")
        return True
    except ImportError:
        return False


def _backends():
    if os.environ.get("FASTBP_BACKEND", "").strip().lower() == "numpy":
        return ["numpy"]
    marks = [] if _compiled_available() else [pytest.mark.skip(reason="fastbp._core (compiled backend) not built")]
    return ["numpy", pytest.param("cython", marks=marks)]


def _cases():
    cases = []
    for w in wl.WORKLOADS.values():
        other = "float64" if w.dtype == "float32" else "float32"
        cases.append(pytest.param(w.name, w.dtype, id=f"{w.name}-{w.dtype}"))
        if w.name != "wide-b512":  # float64 of the widest net only doubles a long epoch: not informative
            cases.append(pytest.param(w.name, other, id=f"{w.name}-{other}"))
    return cases


def _network(w, dtype, backend):
    net = fastbp.Network(list(w.sizes), list(w.activations), loss=w.loss, dtype=dtype, seed=0, backend=backend)
    weights, biases = wl.initial_params(w, dtype)
    net.set_params(weights, biases)
    return net, weights, biases


def _optimizer(net, w, optimizer):
    """A fresh optimizer on ``net``: plain SGD at the workload's lr, or Adam (torch's defaults, ADAM_LR)."""
    if optimizer == "adam":
        return fastbp.Adam(net, lr=ADAM_LR)
    return fastbp.SGD(net, lr=w.lr)


def _check_run(w, dtype, backend, optimizer):
    """Three epochs on a short prefix from the shared initial weights; returns (ok, details)."""
    n = 300 if w.batch == 1 else min(4 * w.batch, w.n_full)
    X, Y = wl.data(w, n, dtype)
    net, _, _ = _network(w, dtype, backend)
    p0 = net.params.copy()
    losses = list(net.fit(X, Y, epochs=3, batch_size=w.batch, optimizer=_optimizer(net, w, optimizer),
                          shuffle=False).loss)
    details = {"check_losses": [float(x) for x in losses]}
    problems = []
    if not np.all(np.isfinite(losses)):
        problems.append("non-finite loss")
    if not losses[-1] < losses[0]:
        problems.append(f"loss did not fall: {losses}")
    if not np.all(np.isfinite(net.params)):
        problems.append("non-finite parameter")
    if np.array_equal(net.params, p0):
        problems.append("parameters unchanged")
    if backend == "cython":
        twin, _, _ = _network(w, dtype, "numpy")
        twin_losses = list(twin.fit(X, Y, epochs=3, batch_size=w.batch,
                                    optimizer=_optimizer(twin, w, optimizer), shuffle=False).loss)
        details["twin_losses"] = [float(x) for x in twin_losses]
        if not np.allclose(losses, twin_losses, rtol=TWIN_RTOL[dtype], atol=0):
            problems.append(f"compiled losses {losses} differ from the twin's {twin_losses}")
    details["problems"] = problems
    return not problems, details


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name, dtype", _cases())
def test_fit_epoch(benchmark, backend, name, dtype, optimizer):
    _time_fit(benchmark, backend, name, dtype, optimizer, None)


# The compiled kernel's team of threads (issue 15): the batch-32 row with its products on one thread and on
# two (threads= of fit, which the kernel's team follows, with the same bits), and batch 256 (BLAS's threads).
@pytest.mark.skipif(not _compiled_available(), reason="fastbp._core (compiled backend) not built")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", ["mnist-b32", "mnist-b256"])
def test_fit_epoch_threads(benchmark, name, optimizer, threads):
    _time_fit(benchmark, "cython", name, wl.get(name).dtype, optimizer, threads, group=f"{name} threads")


def _small_gemm_builds():
    if not _compiled_available():
        return []
    from fastbp import _core
    return _core._small_gemm_isas() + ["off"]


# Each build of the small products this CPU runs (AVX-512, AVX2) and none ("off": BLAS for every layer), on
# the batch-32 row, with the kernel's choice of threads. On an AVX-512 CPU the avx2 row shows what an AVX2-
# only CPU's products do (with this CPU's BLAS: bench/compare.py --emulate-avx2 also switches OpenBLAS).
@pytest.mark.skipif(not _compiled_available(), reason="fastbp._core (compiled backend) not built")
@pytest.mark.parametrize("build", _small_gemm_builds())
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fit_epoch_small_gemm_build(benchmark, optimizer, build):
    from fastbp import _core
    default = _core._small_gemm_isa()
    _core._small_gemm_isa(build)
    try:
        benchmark.extra_info["small_gemm"] = build
        _time_fit(benchmark, "cython", "mnist-b32", "float32", optimizer, None,
                  group="mnist-b32 small-product builds")
    finally:
        _core._small_gemm_isa(default)


def _time_fit(benchmark, backend, name, dtype, optimizer, threads, group=None):
    w = wl.get(name)
    ok, details = _check_run(w, dtype, backend, optimizer)
    benchmark.group = group or name  # before the timing: pytest-benchmark reads it when the stats are made
    benchmark.extra_info.update(backend=backend, workload=name, dtype=dtype, batch=w.batch,
                                optimizer=optimizer, threads=threads, correct=ok, **details)
    assert ok, f"{name} {dtype} {optimizer} on {backend} is not a real training run: {details['problems']}"

    n = wl.round_examples(w, EXAMPLES[FULL][name])
    X, Y = wl.data(w, n, dtype)
    net, weights, biases = _network(w, dtype, backend)
    opt = _optimizer(net, w, optimizer)

    def reset():
        net.set_params(weights, biases)
        opt.zero_state()   # Adam's moments and step count as a fresh optimizer's (SGD has none in use)

    history = benchmark.pedantic(net.fit, args=(X, Y),
                                 kwargs=dict(epochs=1, batch_size=w.batch, optimizer=opt, shuffle=False,
                                             threads=threads),
                                 setup=reset, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert np.isfinite(history.loss[0])
    benchmark.extra_info["examples"] = n
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        median = stats.stats.median
        benchmark.extra_info["examples_per_s"] = n / median
        benchmark.extra_info["gflops"] = n * w.flops_per_example / median / 1e9
