"""``fastbp demo``: train a network on scikit-learn's bundled handwritten digits, then replay a worked example.

The digits (1,797 8x8 images, shipped inside scikit-learn: nothing is downloaded) are scaled to [0, 1],
split into training and test sets, and a 64-64-10 ReLU network with a softmax cross-entropy loss is trained
with mini-batch SGD and momentum, showing per-epoch progress and the final test accuracy. Then the textbook
example ``scalar-1-1-1`` (one input, one sigmoid hidden unit, one linear output) takes its one SGD step, and
the demo prints the loss before and after, the numbers a hand calculation gives.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

import fastbp

# The shared worked example scalar-1-1-1 (tests/data/worked-examples/scalar-1-1-1.json), inlined so that the
# installed package needs no data file.
SCALAR_EXAMPLE = {
    "name": "scalar-1-1-1",
    "layer_sizes": [1, 1, 1],
    "activations": ["sigmoid", "identity"],
    "loss": "half_sse",
    "lr": 1.0,
    "weights": [[[0.5]], [[1.0]]],
    "biases": [[0.0], [0.0]],
    "x": [1.0],
    "y": [0.5],
    "expected_loss": 0.007498143899202759,
    "expected_loss_after": 0.0018016669943016477,
}


def _int_in(low, high, what):
    """An argparse type: an integer from ``low`` to ``high`` (argparse then exits 2 with the message)."""

    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text[:40]!r}") from None
        if not low <= value <= high:
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise argparse.ArgumentTypeError(f"must be {what} ({low} to {high}); got {shown}")
        return value

    return convert


def _learning_rate(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text[:40]!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1e6):
        raise argparse.ArgumentTypeError(f"must be a finite number in (0, 1e6]; got {text[:40]}")
    return value


def _parse(argv):
    parser = argparse.ArgumentParser(prog="fastbp demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_int_in(1, 100_000, "a positive number of epochs"), default=30,
                        help="training epochs, 1 to 100000 (default 30)")
    parser.add_argument("--batch-size", type=_int_in(1, 2**31 - 1, "a positive batch size"), default=32,
                        help="mini-batch size (default 32)")
    parser.add_argument("--lr", type=_learning_rate, default=0.05, help="learning rate (default 0.05)")
    # scikit-learn's train_test_split takes seeds below 2**32
    parser.add_argument("--seed", type=_int_in(0, 2**32 - 1, "a seed"), default=0,
                        help="seed for the split, init and shuffle (0 to 2**32 - 1)")
    parser.add_argument("--backend", choices=["cython", "numpy"], default=None,
                        help="backend (default: fastbp.BACKEND)")
    return parser.parse_args(argv)


def train_digits(args, fastbp):
    """Train on the digits; return the test accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
    y = digits.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=args.seed, stratify=y)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels, 10 classes")

    net = fastbp.Network([64, 64, 10], ["relu", "identity"], loss="cross_entropy", dtype="float32",
                         seed=args.seed, backend=args.backend)
    print(f"network: {net.layer_sizes} {net.activations}, loss {net.loss_name}, dtype float32, "
          f"backend {net.backend}")
    optimizer = fastbp.SGD(net, args.lr, momentum=0.9)
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=optimizer, shuffle=True, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    print(f"trained {args.epochs} epochs in {seconds:.2f} s; training loss {history.loss[0]:.4f} -> "
          f"{history.loss[-1]:.4f}")

    predicted = np.argmax(net.predict(X_test), axis=1)
    accuracy = float(np.mean(predicted == y_test))
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


def replay_worked_example(fastbp):
    """One SGD step of the scalar-1-1-1 textbook example; print the loss before and after."""
    spec = SCALAR_EXAMPLE
    net = fastbp.Network(spec["layer_sizes"], spec["activations"], loss=spec["loss"], dtype="float64")
    net.set_params([np.array(w) for w in spec["weights"]], [np.array(b) for b in spec["biases"]])
    X, Y = np.array([spec["x"]]), np.array([spec["y"]])
    print()
    print(f"worked example {spec['name']}: x = {spec['x'][0]}, y = {spec['y'][0]}, "
          f"w1 = 0.5, b1 = 0, w2 = 1, b2 = 0, sigmoid hidden unit, linear output, lr = {spec['lr']}")
    output_before = float(net.predict(X)[0, 0])
    loss_before = fastbp.SGD(net, spec["lr"]).train_step(X, Y)
    output_after = float(net.predict(X)[0, 0])
    loss_after = net.loss(X, Y)
    print(f"  before the step: output {output_before:.10f}, loss 1/2 (y - yhat)^2 = {loss_before:.10f}")
    print(f"  after the step:  output {output_after:.10f}, loss = {loss_after:.10f}")
    new_weights = ", ".join(f"{float(w.ravel()[0]):.10f}" for w in net.weights)
    new_biases = ", ".join(f"{float(b.ravel()[0]):.10f}" for b in net.biases)
    print(f"  new weights w1, w2 = {new_weights}; new biases b1, b2 = {new_biases}")
    agrees = (abs(loss_before - spec["expected_loss"]) < 1e-12
              and abs(loss_after - spec["expected_loss_after"]) < 1e-12)
    print(f"  matches the textbook's exact values: {'yes' if agrees else 'NO'}")
    return agrees


def main(argv=None) -> int:
    """Run the demo; return the process exit status (0 on success)."""
    args = _parse(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print('fastbp demo needs scikit-learn for its bundled digits data set: pip install "fastbp[demo]" '
              '(or, from a source checkout, pip install ".[demo]")', file=sys.stderr)
        return 1
    print(f"fastbp {fastbp.__version__}, backend {fastbp.BACKEND}")
    try:
        accuracy = train_digits(args, fastbp)
    except FloatingPointError as error:  # a learning rate so large that training diverges
        print(f"fastbp demo: training diverged with --lr {args.lr:g}: {error}", file=sys.stderr)
        return 1
    agrees = replay_worked_example(fastbp)
    return 0 if agrees and accuracy > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
