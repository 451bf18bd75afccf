"""fastbp ``fit`` with the non-packing small products of ``fastbp/_kernels_gemm.h`` against the same fit
with BLAS for every layer, in one process, interleaved, CPU time per epoch (best of ``--repeat``).

CPU time of one thread is the least noisy figure on a shared machine; run it with one BLAS thread so that
both sides use one core::

    OPENBLAS_NUM_THREADS=1 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/small_gemm_ab.py --batches 16,32,48,64 --optimizers sgd,adam

``--max-batch`` sets the upper bound of the small products for the "small" side (the kernel's
``SMALL_GEMM_MAX_BATCH``), to try a batch above the default bound. To see what an AVX2-only CPU would
get from an AVX-512 one, run the AVX2 products against OpenBLAS's AVX2 kernels::

    OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell env -u OPENBLAS_L2_SIZE \\
        python bench/small_gemm_ab.py --isas avx2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="784,128,10", help="layer sizes (default 784,128,10)")
    ap.add_argument("--batches", default="32", help="comma-separated batch sizes")
    ap.add_argument("--optimizers", default="sgd,adam", help="comma-separated: sgd, adam")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--examples", type=int, default=10240)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--isas", default=None,
                    help="comma-separated builds of the products to measure: avx512, avx2 (default: all this CPU runs)")
    args = ap.parse_args()

    from fastbp import _core
    if not _core._small_gemm_available():
        sys.exit("this CPU or build has no small products (AVX-512 or AVX2, gcc on Linux): nothing to compare")
    isas = _core._small_gemm_isas() if args.isas is None else args.isas.split(",")
    default, default_isa = _core._small_gemm_thresholds(), _core._small_gemm_isa()
    small_max = default[1] if args.max_batch is None else args.max_batch
    sizes = [int(s) for s in args.sizes.split(",")]
    activations = ["relu"] * (len(sizes) - 2) + ["identity"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.examples, sizes[0])).astype(args.dtype)
    Y = rng.standard_normal((args.examples, sizes[-1])).astype(args.dtype)
    print(f"sizes {sizes}, {args.dtype}, {args.examples} examples, best of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.2f}")
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            for name in args.optimizers.split(","):
                runs = {}
                modes = ["blas"] + isas
                for mode in modes:
                    net = fastbp.Network(sizes, activations, loss="mse", dtype=args.dtype, seed=0)
                    opt = fastbp.SGD(net, 0.01) if name == "sgd" else fastbp.Adam(net, lr=1e-3)
                    runs[mode] = [net, opt, float("inf")]
                for _ in range(args.repeat):
                    for mode in modes:
                        _core._small_gemm_thresholds(max_batch=0 if mode == "blas" else small_max)
                        _core._small_gemm_isa("off" if mode == "blas" else mode)
                        net, opt, best = runs[mode]
                        start = time.process_time()
                        net.fit(X, Y, epochs=1, batch_size=batch, optimizer=opt, shuffle=False)
                        runs[mode][2] = min(best, time.process_time() - start)
                blas = runs["blas"][2]
                line = f"batch {batch:4d} {name:5s}: BLAS {args.examples / blas / 1e3:7.1f} k/s"
                for isa in isas:
                    small = runs[isa][2]
                    line += f", {isa} {args.examples / small / 1e3:7.1f} k/s: {blas / small:.2f}x"
                print(line)
    finally:
        _core._small_gemm_thresholds(*default)
        _core._small_gemm_isa(default_isa)


if __name__ == "__main__":
    main()
