"""How fastbp's training time grows with the number of examples and with layer width.

Times one epoch of ``Network.fit`` (compiled backend, plain SGD, no shuffling, median of several epochs)
on synthetic data, and prints two tables:

* time per epoch against the number of examples n (fixed network): the cost per example should stay
  constant, i.e. the epoch time grows linearly in n;
* time per example against the hidden width h of an ``n_in``-h-10 network: the cost should grow like the
  number of multiply-adds, about (n_in + 10) h per example, once h is large enough to hide fixed costs.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/scaling.py [--batch 32] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastbp  # noqa: E402


def epoch_seconds(sizes, n, batch, dtype, epochs=5):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(n, sizes[0])).astype(dtype)
    Y = rng.uniform(-1, 1, size=(n, sizes[-1])).astype(dtype)
    activations = ["relu"] * (len(sizes) - 2) + ["identity"]
    net = fastbp.Network(sizes, activations, loss="mse", dtype=dtype, seed=0)
    opt = fastbp.SGD(net, 0.01)
    net.fit(X, Y, epochs=1, batch_size=batch, optimizer=opt, shuffle=False)  # warm-up
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        net.fit(X, Y, epochs=1, batch_size=batch, optimizer=opt, shuffle=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--inputs", type=int, default=64, help="n_in of the networks (default 64)")
    args = parser.parse_args(argv)
    print(f"fastbp {fastbp.__version__}, backend {fastbp.BACKEND}, batch {args.batch}, {args.dtype}")

    sizes = [args.inputs, 128, 10]
    print(f"\nEpoch time against the number of examples ({'-'.join(map(str, sizes))}, relu/identity, mse)")
    print("| examples | epoch (ms) | per example (us) | epoch time / previous |")
    print("| --- | --- | --- | --- |")
    previous = None
    for n in (12_500, 25_000, 50_000, 100_000, 200_000):
        seconds = epoch_seconds(sizes, n, args.batch, args.dtype)
        ratio = f"{seconds / previous:.2f}x" if previous else "-"
        print(f"| {n:,} | {seconds * 1e3:.1f} | {seconds / n * 1e6:.3f} | {ratio} |")
        previous = seconds

    print(f"\nTime per example against the hidden width ({args.inputs}-h-10, 50,000 examples)")
    print("| h | multiply-adds per example | per example (us) | ns per 1,000 multiply-adds |")
    print("| --- | --- | --- | --- |")
    for width in (16, 32, 64, 128, 256, 512, 1024):
        sizes = [args.inputs, width, 10]
        macs = args.inputs * width + width * 10
        seconds = epoch_seconds(sizes, 50_000, args.batch, args.dtype, epochs=3)
        per_example = seconds / 50_000
        print(f"| {width} | {macs:,} | {per_example * 1e6:.3f} | {per_example / macs * 1e12:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
