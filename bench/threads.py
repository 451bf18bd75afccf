"""Does a second BLAS thread pay? ``fit`` with the process's BLAS threads against ``threads=1``.

Times ``Network.fit`` (compiled backend, one epoch per measurement, median of several) on an issue-3
workload twice, with the BLAS thread limit left alone and with ``threads=1``, interleaved; with ``--busy``
a second process spins on a core for the whole measurement, as another user's job would. Prints examples/s
and the ratio. Needs threadpoolctl (``pip install "fastbp[threads]"``).

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/threads.py [--workload mnist-b32] [--busy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import fastbp  # noqa: E402
import workloads  # noqa: E402


def measure(w, X, Y, weights, biases, threads, epochs):
    net = fastbp.Network(list(w.sizes), list(w.activations), loss=w.loss, dtype=w.dtype)
    net.set_params(weights, biases)
    net.fit(X[:2048], Y[:2048], epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False, threads=threads)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.fit(X, Y, epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False, threads=threads)
        times.append(time.perf_counter() - start)
    return len(X) / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mnist-b32", choices=sorted(workloads.WORKLOADS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="spin a second process on one core meanwhile")
    args = parser.parse_args(argv)
    w = workloads.get(args.workload)
    X, Y = workloads.data(w)
    weights, biases = workloads.initial_params(w)
    spinner = None
    if args.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        print(f"{w.name} ({w.describe()}); BLAS threads at start: {fastbp.get_num_threads()}; "
              f"other core {'busy' if args.busy else 'idle'}")
        for run in range(args.repeat):
            default = measure(w, X, Y, weights, biases, None, args.epochs)
            one = measure(w, X, Y, weights, biases, 1, args.epochs)
            print(f"run {run + 1}: default {default / 1e3:8.1f} k/s   threads=1 {one / 1e3:8.1f} k/s   "
                  f"threads=1 / default {one / default:.2f}")
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


if __name__ == "__main__":
    main()
