"""fastbp's scikit-learn estimator in a ``Pipeline``, tuned by ``GridSearchCV``.

Breast-cancer diagnosis (scikit-learn's bundled data: 569 tumours, 30 features on very different scales,
two classes). ``StandardScaler`` inside the pipeline is refitted on each cross-validation fold, so no
statistics leak from the held-out fold; ``GridSearchCV`` tries hidden-layer sizes, learning rates (and L2
penalties) of ``fastbp.sklearn.MLPClassifier`` with 3-fold cross-validation, refits the best on the whole
training set, and the script prints its accuracy on a test set kept aside from the start::

    python examples/sklearn_pipeline.py            # 3 x 3 x 2 grid
    python examples/sklearn_pipeline.py --quick    # 2 x 2 grid, fewer epochs, as the tests run it

Needs scikit-learn: ``pip install "fastbp[sklearn]"``.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid and fewer epochs, for tests")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split and the estimators")
    parser.add_argument("--n-jobs", type=int, default=1, help="GridSearchCV's n_jobs (default 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Search the grid, print the best parameters and the test accuracy. Returns the exit status."""
    args = _parse(argv)
    try:
        from sklearn.datasets import load_breast_cancer
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV, train_test_split
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        from fastbp.sklearn import MLPClassifier
    except ImportError:
        print("this example needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 1

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=args.seed, stratify=y)
    print(f"breast cancer: {len(X_train)} training and {len(X_test)} test rows, {X.shape[1]} features")

    pipeline = Pipeline([
        ("scale", StandardScaler()),
        ("mlp", MLPClassifier(activation="relu", batch_size=32, max_iter=30 if args.quick else 100,
                              random_state=args.seed)),
    ])
    grid = {
        "mlp__hidden_layer_sizes": [(8,), (32,)] if args.quick else [(8,), (32,), (32, 16)],
        "mlp__learning_rate_init": [0.003, 0.03] if args.quick else [0.001, 0.01, 0.03],
    }
    if not args.quick:
        grid["mlp__alpha"] = [1e-4, 1e-2]  # L2 penalty
    # max_iter caps the epochs on purpose (a budget per candidate): the "Maximum iterations reached"
    # warning that every capped fit raises says nothing new here.
    search = GridSearchCV(pipeline, grid, cv=3, scoring="accuracy", n_jobs=args.n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        search.fit(X_train, y_train)

    results = search.cv_results_
    print(f"{len(results['params'])} candidates x 3 folds:")
    for params, mean, std in zip(results["params"], results["mean_test_score"], results["std_test_score"]):
        shown = ", ".join(f"{key.split('__')[1]}={value}" for key, value in params.items())
        print(f"  {shown:<50} cross-validated accuracy {mean:.4f} +/- {std:.4f}")
    best = ", ".join(f"{key.split('__')[1]}={value}" for key, value in search.best_params_.items())
    mlp = search.best_estimator_.named_steps["mlp"]
    print(f"best: {best} (cross-validated accuracy {search.best_score_:.4f}); refitted on the whole "
          f"training set for {mlp.n_iter_} epochs")
    print(f"test accuracy: {search.score(X_test, y_test):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
