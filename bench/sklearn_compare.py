"""fastbp.sklearn's MLP estimators against scikit-learn's, at default settings, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sklearn_compare.py
        [--datasets digits,breast_cancer,wine,diabetes,synthetic_classification,synthetic_regression]
        [--splits 5] [--synthetic-rows 50000] [--threads N] [--blas-threads N] [--json PATH]

For each data set and each of ``--splits`` random 75/25 splits (stratified for classification), both
estimators are fitted with their default parameters (only ``random_state`` set, to the split's index) inside
the same pipeline: ``StandardScaler`` on X, and for regression a standardised target
(``TransformedTargetRegressor``). Printed per data set: the mean test accuracy (classification) or R^2
(regression) of each, their difference in points, the mean ``fit`` time of each and the time ratio
scikit-learn / fastbp (above 1: fastbp is faster), and the same ratio of CPU time (``time.process_time``,
steadier than wall-clock on a shared machine; equal to it on one thread). The two estimators draw the same initial weights,
shuffles and validation splits from ``random_state``, so their scores should agree to rounding; the ratio is
then the cost of the same training.

Fits of one split run one after another (scikit-learn first, then fastbp), so that a ratio is measured
seconds apart. Timings are taken around ``fit`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DATASETS = ("digits", "breast_cancer", "wine", "diabetes", "synthetic_classification", "synthetic_regression")


def load(name, synthetic_rows):
    """``(X, y, task)`` for a data set name; task is "classification" or "regression"."""
    from sklearn import datasets

    if name == "digits":
        return (*datasets.load_digits(return_X_y=True), "classification")
    if name == "breast_cancer":
        return (*datasets.load_breast_cancer(return_X_y=True), "classification")
    if name == "wine":
        return (*datasets.load_wine(return_X_y=True), "classification")
    if name == "diabetes":
        return (*datasets.load_diabetes(return_X_y=True), "regression")
    if name == "synthetic_classification":
        X, y = datasets.make_classification(n_samples=synthetic_rows, n_features=100, n_informative=40,
                                            n_redundant=20, n_classes=4, class_sep=1.5, random_state=0)
        return X, y, "classification"
    if name == "synthetic_regression":
        X, y = datasets.make_regression(n_samples=synthetic_rows, n_features=100, n_informative=40,
                                        noise=10.0, random_state=0)
        return X, np.tanh(y / np.std(y)) * 3.0, "regression"  # a nonlinear target
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


def model(library, task, seed, threads):
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if library == "sklearn":
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        options = {}
    else:
        from fastbp.sklearn import MLPClassifier, MLPRegressor
        options = {} if threads is None else {"threads": threads}
    if task == "classification":
        return make_pipeline(StandardScaler(), MLPClassifier(random_state=seed, **options))
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), MLPRegressor(random_state=seed, **options)),
                                      transformer=StandardScaler())


def run(names, splits, synthetic_rows, threads):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    rows = []
    for name in names:
        X, y, task = load(name, synthetic_rows)
        scores = {"sklearn": [], "fastbp": []}
        times = {"sklearn": [], "fastbp": []}
        cpu_times = {"sklearn": [], "fastbp": []}
        for seed in range(splits):
            X_train, X_test, y_train, y_test = train_test_split(
                X, y, test_size=0.25, random_state=seed, stratify=y if task == "classification" else None)
            for library in ("sklearn", "fastbp"):
                estimator = model(library, task, seed, threads)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    estimator.fit(X_train, y_train)
                    times[library].append(time.perf_counter() - started)
                    cpu_times[library].append(time.process_time() - cpu_started)
                scores[library].append(estimator.score(X_test, y_test))
        row = {
            "dataset": name, "task": task, "rows": int(X.shape[0]), "features": int(X.shape[1]),
            "metric": "accuracy" if task == "classification" else "R^2",
            "sklearn_score": float(np.mean(scores["sklearn"])), "fastbp_score": float(np.mean(scores["fastbp"])),
            "sklearn_fit_s": float(np.mean(times["sklearn"])), "fastbp_fit_s": float(np.mean(times["fastbp"])),
            "sklearn_fit_times": times["sklearn"], "fastbp_fit_times": times["fastbp"],
            "sklearn_fit_cpu_s": float(np.mean(cpu_times["sklearn"])),
            "fastbp_fit_cpu_s": float(np.mean(cpu_times["fastbp"])),
        }
        row["ratio"] = row["sklearn_fit_s"] / row["fastbp_fit_s"]
        row["cpu_ratio"] = row["sklearn_fit_cpu_s"] / row["fastbp_fit_cpu_s"]
        rows.append(row)
        print_row(row, flush=True)
    return rows


HEADER = (f"{'data set':<26} {'rows x cols':>12} {'metric':>8} {'sklearn':>8} {'fastbp':>8} {'diff pts':>8} "
          f"{'sklearn s':>10} {'fastbp s':>10} {'ratio':>7} {'cpu ratio':>9}")


def print_row(row, flush=False):
    shape = f"{row['rows']}x{row['features']}"
    diff = 100 * (row["fastbp_score"] - row["sklearn_score"])
    print(f"{row['dataset']:<26} {shape:>12} {row['metric']:>8} {row['sklearn_score']:8.4f} "
          f"{row['fastbp_score']:8.4f} {diff:+8.2f} {row['sklearn_fit_s']:10.3f} {row['fastbp_fit_s']:10.3f} "
          f"{row['ratio']:6.2f}x {row['cpu_ratio']:8.2f}x", flush=flush)


def blas_info():
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS fastbp's kernel calls)

    return "; ".join(f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')} "
                     f"{info.get('num_threads')} threads ({os.path.basename(info.get('filepath', ''))})"
                     for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--synthetic-rows", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=None, help="fastbp's threads= (default: untouched)")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit every BLAS (numpy's and fastbp's) to this many threads for the whole run "
                             "(threadpoolctl), for both estimators alike: on a busy machine one thread avoids "
                             "threads waiting for each other")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]

    import fastbp
    import sklearn

    print(f"fastbp {fastbp.__version__} (backend {fastbp.BACKEND}), scikit-learn {sklearn.__version__}, "
          f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"BLAS: {blas_info()}")
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if key in os.environ:
            print(f"note: {key}={os.environ[key]} is set")
    print(f"default settings, {args.splits} splits (75/25), mean test score and mean fit time per data set")
    print(HEADER, flush=True)
    if args.blas_threads is None:
        rows = run(names, args.splits, args.synthetic_rows, args.threads)
    else:
        import scipy.linalg.cython_blas  # noqa: F401  (load fastbp's BLAS before limiting)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            print(f"BLAS limited to {args.blas_threads} thread(s): {blas_info()}", flush=True)
            rows = run(names, args.splits, args.synthetic_rows, args.threads)
    print()
    print(HEADER)
    for row in rows:
        print_row(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
