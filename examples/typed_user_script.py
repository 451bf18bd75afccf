"""A fully annotated user script: ``mypy`` checks it against fastbp's types (``py.typed``, ``_core.pyi``).

It trains a 2-4-1 network on XOR and reports the predictions; what it demonstrates is that code written
against fastbp's public API type-checks::

    pip install "fastbp[typecheck]"
    mypy examples/typed_user_script.py      # or just `mypy` in a checkout: [tool.mypy] in pyproject.toml
    python examples/typed_user_script.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import numpy.typing as npt

import fastbp
from fastbp import SGD, History, Network

FloatArray = npt.NDArray[np.float64]
Logs = Dict[str, float]


def xor_data() -> tuple[FloatArray, FloatArray]:
    X: FloatArray = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y: FloatArray = np.array([[0.0], [1.0], [1.0], [0.0]])
    return X, Y


def build(hidden: int, seed: int) -> Network:
    return fastbp.Network([2, hidden, 1], ["tanh", "sigmoid"], loss="mse", dtype="float64", seed=seed)


def stop_when_below(threshold: float) -> Callable[[int, Logs], bool]:
    """A callback for ``fit``: returning True stops training."""

    def callback(epoch: int, logs: Logs) -> bool:
        return logs["loss"] < threshold

    return callback


def train(net: Network, X: FloatArray, Y: FloatArray, epochs: int) -> History:
    optimizer: SGD = fastbp.SGD(net, 0.5, momentum=0.9)
    history: History = net.fit(X, Y, epochs=epochs, batch_size=4, optimizer=optimizer, shuffle=False,
                               callbacks=[stop_when_below(1e-3)])
    return history


def accuracy(net: Network, X: FloatArray, Y: FloatArray) -> float:
    predicted: FloatArray = net.predict(X)
    return float(np.mean((predicted > 0.5) == (Y > 0.5)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train XOR with fully annotated code.")
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    args = parser.parse_args(argv)
    epochs: int = 500 if args.quick else 2000

    X, Y = xor_data()
    net = build(hidden=4, seed=0)
    history = train(net, X, Y, epochs)
    losses: List[float] = list(history.loss)
    print(f"backend {net.backend}: {history.epochs} epochs, loss {losses[0]:.4f} -> {losses[-1]:.6f}")
    for x, yhat in zip(X, net.predict(X)):
        print(f"  xor{tuple(int(v) for v in x)} -> {float(yhat[0]):.3f}")
    score = accuracy(net, X, Y)
    print(f"XOR accuracy: {score:.2f}")
    return 0 if score == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
