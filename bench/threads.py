"""Does fastbp pick the right BLAS thread count? ``fit`` with the automatic choice against fixed counts.

Times ``Network.fit`` (compiled backend, one epoch per measurement, median of several) on issue-3
workloads with: the process's BLAS threads left alone ("blas default"), the count ``fit`` picks when none is
given ("auto": ``fastbp._threads.threads_for_call``, evaluated at the start of each call as ``fit`` does),
and each count from 1 to the usable cores, interleaved run by run. With ``--busy`` other processes spin on
all cores but one for the whole measurement, as another user's job would. Prints examples/s, auto against
``threads=1`` (busy: goal within 20%) and against the best fixed count (idle: goal within 5%). Needs
threadpoolctl (``pip install "fastbp[threads]"``).

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/threads.py [--workloads mnist-b32,mnist-b256]
                                                                         [--busy] [--epochs 5] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import fastbp  # noqa: E402
from fastbp import _threads  # noqa: E402
import workloads  # noqa: E402

AUTO = "auto"


def _limit(threads, w):
    """The limit one measurement runs under: None (BLAS default), AUTO (what fit picks) or a count."""
    if threads is None:
        return contextlib.nullcontext()
    return _threads.limit_for_call(None if threads == AUTO else threads, w.batch, w.sizes)


def measure(w, X, Y, weights, biases, threads, epochs):
    net = fastbp.Network(list(w.sizes), list(w.activations), loss=w.loss, dtype=w.dtype)
    net.set_params(weights, biases)
    with _limit(threads, w):
        net.fit(X[:2048], Y[:2048], epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        with _limit(threads, w):  # inside the timing: the choice itself is part of the cost
            net.fit(X, Y, epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False)
        times.append(time.perf_counter() - start)
    return len(X) / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="small-b1,mnist-b32,mnist-b256")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="spin processes on all cores but one meanwhile")
    args = parser.parse_args(argv)
    cores = _threads._usable_cores()
    spinners = []
    if args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, cores - 1))]
        time.sleep(0.5)
    try:
        print(f"BLAS threads at start: {fastbp.get_num_threads()}; usable cores: {cores}; "
              f"{len(spinners)} spinning process(es); busy cores now: {_threads.busy_cores()}")
        counts = [None, AUTO] + list(range(1, cores + 1))
        for name in args.workloads.split(","):
            w = workloads.get(name)
            X, Y = workloads.data(w)
            weights, biases = workloads.initial_params(w)
            print(f"\n{w.name} ({w.describe()}); auto picks now: "
                  f"{_threads.threads_for_call(w.batch, w.sizes) or 'blas default'}")
            for run in range(args.repeat):
                rate = {t: measure(w, X, Y, weights, biases, t, args.epochs) for t in counts}
                fixed = {t: r for t, r in rate.items() if isinstance(t, int)}
                best = max(fixed, key=fixed.get)
                cells = "  ".join(f"{'blas default' if t is None else t}: {r / 1e3:7.1f} k/s" for t, r in rate.items())
                print(f"run {run + 1}: {cells}   auto/threads=1 {rate[AUTO] / rate[1]:.2f}   "
                      f"auto/best ({best}) {rate[AUTO] / fixed[best]:.2f}")
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


if __name__ == "__main__":
    main()
