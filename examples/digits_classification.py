"""Classify scikit-learn's bundled handwritten digits (8x8 pixels, 10 classes) with a fastbp network.

Softmax cross-entropy on a 64-64-10 ReLU network, SGD with momentum, 15% of the training rows held out for
validation, early stopping that restores the best epoch's weights, then the accuracy on a test set never
seen in training::

    python examples/digits_classification.py            # full settings (a few seconds)
    python examples/digits_classification.py --quick    # small settings, as the tests run it

Needs scikit-learn (only for the data set and the split): ``pip install "fastbp[sklearn]"``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastbp


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (fewer epochs), for tests")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 60, quick 15)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffle")
    parser.add_argument("--backend", choices=["cython", "numpy"], default=None,
                        help="fastbp backend (default: fastbp.BACKEND)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Train and evaluate; print the test accuracy. Returns the exit status (0 on success)."""
    args = _parse(argv)
    epochs = args.epochs if args.epochs is not None else (15 if args.quick else 60)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("this example needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 1

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # pixel intensities 0..16 -> 0..1
    y = digits.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=args.seed, stratify=y)
    print(f"digits: {len(X_train)} training images (15% of them for validation), {len(X_test)} test images")

    net = fastbp.Network([64, 64, 10], ["relu", "identity"], loss="cross_entropy", dtype="float32",
                         seed=args.seed, backend=args.backend)
    print(f"network {net.layer_sizes} {net.activations}, loss {net.loss_name}, backend {net.backend}")

    start = time.perf_counter()
    history = net.fit(
        X_train, y_train,                      # class indices (n,): no one-hot encoding needed
        epochs=epochs, batch_size=32,
        optimizer=fastbp.SGD(net, args.lr, momentum=0.9),
        shuffle=True, seed=args.seed,
        validation_split=0.15,                 # the last 15% of the (already shuffled) training rows
        early_stopping=True, patience=5, restore_best_weights=True,
        verbose=2,                             # one line per epoch on stderr
    )
    seconds = time.perf_counter() - start
    stopped = (f"early stopping after epoch {history.stopped_epoch + 1}"
               if history.stopped_epoch is not None else "no early stop")
    print(f"{history.epochs} epochs in {seconds:.2f} s ({stopped}); best validation loss "
          f"{min(history.val_loss):.4f}")

    predicted = np.argmax(net.predict(X_test), axis=1)
    accuracy = float(np.mean(predicted == y_test))
    print(f"test accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
