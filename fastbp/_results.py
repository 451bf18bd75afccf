"""What the API returns: ``Gradients``, ``Trace`` and ``History`` (plain data, no behaviour beyond display)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Gradients:
    """The gradient of a batch loss with respect to every parameter.

    Attributes
    ----------
    loss : float
        The batch loss at the parameters the gradient was taken at.
    weights, biases : list of ndarray
        Shaped like ``net.weights`` and ``net.biases``.
    """

    def __init__(self, loss, weights, biases):
        self.loss = float(loss)
        self.weights = list(weights)
        self.biases = list(biases)

    def __repr__(self):
        # repr must not fail on whatever was assigned to the attributes (they are plain data)
        weights = self.weights if isinstance(self.weights, (list, tuple)) else [self.weights]
        shapes = [getattr(w, "shape", type(w).__name__) for w in weights]
        return f"Gradients(loss={self.loss!r}, weight_shapes={shapes})"


@dataclass
class Trace:
    """Every quantity of one forward and backward pass, layer by layer (``l = 0 .. L-1``).

    Attributes
    ----------
    pre_activations, activations, deltas : list of ndarray
        ``z``, ``a = f(z)`` and ``dL/dz`` per layer; shape ``(n, width)``, or ``(width,)`` for one example.
    grad_weights, grad_biases : list of ndarray
        The gradient of the loss per layer, shaped like the parameters.
    output : ndarray
        The network's output (the last activation).
    loss : float
        The loss.
    """

    pre_activations: list
    activations: list
    deltas: list
    grad_weights: list
    grad_biases: list
    output: np.ndarray
    loss: float


@dataclass
class History:
    """What ``Network.fit`` recorded, one entry per completed epoch.

    Attributes
    ----------
    loss : list of float
        Mean training loss of each epoch (the batch losses before each update, weighted by batch size).
    val_loss : list of float
        Validation loss after each epoch (empty without validation data).
    epoch_time : list of float
        Seconds each epoch took.
    lr : list of float
        Learning rate used in each epoch.
    gradient_norms : list of list of float
        With ``record_gradients=True``: per epoch, the norm of each layer's weight gradient over the whole
        training set after the epoch.
    stopped_epoch : int or None
        The epoch after which a callback or early stopping ended training, if one did.
    """

    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    gradient_norms: list = field(default_factory=list)
    stopped_epoch: int | None = None

    @property
    def epochs(self):
        """Number of completed epochs."""
        return len(self.loss)

    def plot(self, path):
        """Write a PNG of the loss curve (and validation loss if recorded) to ``path``.

        Raises
        ------
        ImportError
            When matplotlib is not installed.
        """
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from error
        figure, axes = plt.subplots(figsize=(6, 4))
        epochs = range(1, len(self.loss) + 1)
        axes.plot(epochs, self.loss, label="training loss")
        if self.val_loss:
            axes.plot(range(1, len(self.val_loss) + 1), self.val_loss, label="validation loss")
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        if self.loss and min(self.loss + self.val_loss) > 0:
            axes.set_yscale("log")
        axes.legend()
        figure.tight_layout()
        figure.savefig(path)
        plt.close(figure)
