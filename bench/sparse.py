"""Sparse input: fastbp's kernel path against densifying each mini-batch and against scikit-learn.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparse.py
        [--rows 20000] [--cols 100000] [--per-row 100] [--hidden 100] [--batch-size 200] [--epochs 1]
        [--repeat 3] [--dtype float64] [--skip densify,sklearn] [--json PATH]

The data: a TF-IDF-like CSR matrix (``--per-row`` distinct columns per row, Zipf-skewed, rows of unit L2
norm; the default is 20,000 x 100,000 at density 0.1%) and 4 classes. Every contender trains the same network
(``--hidden`` relu units, softmax output, Adam lr 1e-3, ``--batch-size`` rows per step) for ``--epochs``
epochs from the same initial weights:

- ``fastbp sparse``: ``Network.fit`` on the CSR matrix (layer 0 from the non-zeros in the kernel);
- ``fastbp densify``: what fastbp.sklearn did before: each mini-batch densified (``X[rows].toarray()``)
  and trained by ``Adam.train_step`` (the dense kernel);
- ``fastbp.sklearn``: ``fastbp.sklearn.MLPClassifier(solver="adam")`` on the CSR matrix;
- ``scikit-learn``: ``sklearn.neural_network.MLPClassifier(solver="adam")`` on the CSR matrix.

Each contender runs ``--repeat`` times, interleaved with the others, and the best time is kept (the machine
may be shared). Printed: wall seconds and CPU seconds (``time.process_time``, all threads) per epoch, the
ratio of each to ``fastbp sparse``, the peak of tracemalloc-visible memory on the first repeat, and the load
average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def tfidf_like(n, n_cols, per_row, n_classes, seed=0):
    """``(X, y)``: CSR rows of ``per_row`` distinct columns each (half Zipf-skewed, half uniform), positive
    values scaled to unit L2 norm per row, and class labels that depend on a few frequent columns."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    frequent = np.minimum(rng.zipf(1.3, size=(n, per_row)) - 1, n_cols - 1)
    uniform = rng.integers(0, n_cols, size=(n, per_row))
    columns = np.concatenate([frequent[:, :per_row // 2], uniform], axis=1)
    rows = np.repeat(np.arange(n), columns.shape[1])
    values = rng.uniform(0.5, 3.0, size=rows.shape[0])
    X = scipy.sparse.csr_matrix((values, (rows, columns.ravel())), shape=(n, n_cols))
    X.sum_duplicates()
    # keep at most per_row entries a row (duplicates merged above): trim each row's tail
    lengths = np.minimum(np.diff(X.indptr), per_row)
    keep = np.concatenate([np.arange(start, start + length) for start, length in zip(X.indptr[:-1], lengths)])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    X = scipy.sparse.csr_matrix((X.data[keep], X.indices[keep], indptr), shape=(n, n_cols))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1))).ravel()
    X = scipy.sparse.csr_matrix(scipy.sparse.diags(1 / norms) @ X)
    score = np.asarray(X[:, :8] @ rng.normal(size=(8, n_classes))) + 0.1 * rng.normal(size=(n, n_classes))
    return X, score.argmax(axis=1)


def contenders(X, y, args):
    """name -> a function that trains a fresh model for ``args.epochs`` epochs."""
    import fastbp

    n_classes = int(y.max()) + 1
    sizes = [X.shape[1], args.hidden, n_classes]

    def fresh():
        return fastbp.Network(sizes, ["relu", "identity"], loss="cross_entropy", dtype=args.dtype, seed=0)

    def fastbp_sparse():
        net = fresh()
        net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=fastbp.Adam(net, lr=1e-3),
                seed=1)

    def fastbp_densify():
        net = fresh()
        optimizer = fastbp.Adam(net, lr=1e-3)
        rng = np.random.default_rng(1)
        for _ in range(args.epochs):
            order = rng.permutation(X.shape[0])
            for start in range(0, X.shape[0], args.batch_size):
                rows = order[start:start + args.batch_size]
                optimizer.train_step(X[rows].toarray(), y[rows])

    def fastbp_sklearn():
        from fastbp.sklearn import MLPClassifier

        MLPClassifier(hidden_layer_sizes=(args.hidden,), solver="adam", batch_size=args.batch_size,
                      max_iter=args.epochs, n_iter_no_change=10**6, tol=0, random_state=0,
                      dtype=args.dtype).fit(X, y)

    def sklearn_mlp():
        from sklearn.neural_network import MLPClassifier

        MLPClassifier(hidden_layer_sizes=(args.hidden,), solver="adam", batch_size=args.batch_size,
                      max_iter=args.epochs, n_iter_no_change=10**6, tol=0, random_state=0).fit(X, y)

    everything = {"fastbp sparse": fastbp_sparse, "fastbp densify": fastbp_densify,
                  "fastbp.sklearn": fastbp_sklearn, "scikit-learn": sklearn_mlp}
    skip = {"densify": "fastbp densify", "sklearn": "scikit-learn", "fastbp.sklearn": "fastbp.sklearn"}
    return {name: f for name, f in everything.items()
            if name not in {skip.get(s, s) for s in args.skip.split(",") if s}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--cols", type=int, default=100000)
    parser.add_argument("--per-row", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--skip", default="", help="comma-separated: densify, sklearn, fastbp.sklearn")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    X, y = tfidf_like(args.rows, args.cols, args.per_row, args.classes)
    print(f"data: {X.shape[0]} x {X.shape[1]} CSR, {X.nnz} non-zeros (density {X.nnz / np.prod(X.shape):.4%}); "
          f"dense float64 form {np.prod(X.shape) * 8 / 2**30:.1f} GiB")
    print(f"network: {args.cols}-{args.hidden}-{args.classes} relu, Adam, batch {args.batch_size}, "
          f"{args.epochs} epoch(s), {args.dtype}; best of {args.repeat}")
    runs = contenders(X, y, args)
    best = {name: (np.inf, np.inf) for name in runs}
    peak = {}
    for repeat in range(args.repeat):
        for name, run in runs.items():
            if repeat == 0:
                tracemalloc.start()
            wall, cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # convergence warnings after a fixed number of epochs
                run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if repeat == 0:
                peak[name] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            best[name] = (min(best[name][0], wall / args.epochs), min(best[name][1], cpu / args.epochs))
    base_wall, base_cpu = best["fastbp sparse"]
    print(f"{'contender':16s} {'wall s/epoch':>13s} {'cpu s/epoch':>12s} {'wall x':>8s} {'cpu x':>8s} "
          f"{'peak MiB':>9s}")
    for name, (wall, cpu) in best.items():
        print(f"{name:16s} {wall:13.3f} {cpu:12.3f} {wall / base_wall:8.2f} {cpu / base_cpu:8.2f} "
              f"{peak[name] / 2**20:9.1f}")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "best_wall_cpu": best, "peak_bytes": peak}, handle, indent=2)


if __name__ == "__main__":
    main()
