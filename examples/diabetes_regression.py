"""Regression on scikit-learn's bundled diabetes data (442 patients, 10 features, disease progression).

A 10-32-1 tanh network with mean squared error, trained on standardised features and target with SGD,
momentum and an inverse-scaling learning-rate schedule; 20% of the training rows are held out for early
stopping. Prints R^2 on a held-out test set, next to that of a linear least-squares fit on the same split
(this data is close to linear: expect both between about 0.3 and 0.5, depending on the split)::

    python examples/diabetes_regression.py             # full settings
    python examples/diabetes_regression.py --quick     # small settings, as the tests run it

Needs scikit-learn (only for the data set and the split): ``pip install "fastbp[sklearn]"``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastbp


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (fewer epochs), for tests")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 300, quick 60)")
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffle")
    parser.add_argument("--backend", choices=["cython", "numpy"], default=None,
                        help="fastbp backend (default: fastbp.BACKEND)")
    return parser.parse_args(argv)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The coefficient of determination, 1 - SS_res / SS_tot."""
    residual = float(np.sum((y_true - y_pred) ** 2))
    total = float(np.sum((y_true - np.mean(y_true)) ** 2))
    return 1.0 - residual / total


def main(argv=None) -> int:
    """Train and evaluate; print the test R^2. Returns the exit status (0 on success)."""
    args = _parse(argv)
    epochs = args.epochs if args.epochs is not None else (60 if args.quick else 300)
    try:
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("this example needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 1

    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=args.seed)
    # Standardise with the training statistics only (the test set stays unseen).
    x_mean, x_std = X_train.mean(axis=0), X_train.std(axis=0)
    y_mean, y_std = y_train.mean(), y_train.std()
    Xs_train, Xs_test = (X_train - x_mean) / x_std, (X_test - x_mean) / x_std
    ys_train = ((y_train - y_mean) / y_std).reshape(-1, 1)  # targets as an (n, 1) matrix
    print(f"diabetes: {len(X_train)} training rows (20% of them for validation), {len(X_test)} test rows, "
          f"{X.shape[1]} features")

    net = fastbp.Network([10, 32, 1], ["tanh", "identity"], loss="mse", dtype="float64", seed=args.seed,
                         backend=args.backend)
    history = net.fit(
        Xs_train, ys_train, epochs=epochs, batch_size=16,
        optimizer=fastbp.SGD(net, args.lr, momentum=0.9, weight_decay=1e-3),
        lr_schedule="invscaling",              # lr / sqrt(epoch + 1)
        shuffle=True, seed=args.seed,
        validation_split=0.2, early_stopping=True, patience=20, restore_best_weights=True,
    )
    stopped = (f"early stopping after epoch {history.stopped_epoch + 1}"
               if history.stopped_epoch is not None else "no early stop")
    best = int(np.argmin(history.val_loss))
    print(f"{history.epochs} epochs ({stopped}); best validation MSE {history.val_loss[best]:.4f} "
          f"(standardised units) at epoch {best + 1}, learning rate then {history.lr[best]:.4g}")

    predicted = net.predict(Xs_test)[:, 0] * y_std + y_mean  # back to the original units
    rmse = float(np.sqrt(np.mean((predicted - y_test) ** 2)))
    print(f"test RMSE: {rmse:.2f} (target range {y.min():.0f}..{y.max():.0f})")
    design = np.column_stack([Xs_train, np.ones(len(Xs_train))])
    coef = np.linalg.lstsq(design, y_train, rcond=None)[0]
    linear = np.column_stack([Xs_test, np.ones(len(Xs_test))]) @ coef
    print(f"linear least squares on the same split: test R^2 {r2_score(y_test, linear):.4f}")
    print(f"test R^2: {r2_score(y_test, predicted):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
