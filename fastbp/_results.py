"""What the API returns: ``Gradients``, ``Trace`` and ``History`` (plain data, no behaviour beyond display)."""

from __future__ import annotations

import os
import stat
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

    ``Network.trace`` computes all of it once (the formulas are those of ``fastbp._spec``); reports such as
    ``explain_step`` and ``diagnose`` read it and derive nothing again. Per-example arrays have shape
    ``(n, width)``, or ``(width,)`` for one example.

    Attributes
    ----------
    pre_activations, activations : list of ndarray
        ``z = a_prev W^T + b`` and ``a = f(z)`` per layer.
    derivatives : list of ndarray
        ``f'(z)`` per layer, computed from the output ``a`` (``_spec.DERIVATIVES_FROM_OUTPUT``); 1 for the
        identity output layer of a logit loss, whose delta is the loss gradient itself.
    upstream_gradients : list of ndarray
        ``dL/da`` per layer: ``output_gradient`` for the last layer, ``deltas[l + 1] @ W_{l+1}`` below it.
    deltas : list of ndarray
        ``dL/dz = upstream_gradients[l] * derivatives[l]`` per layer (the error signal).
    grad_weights, grad_biases : list of ndarray
        The gradient of the loss per layer, shaped like the parameters.
    output : ndarray
        The network's output (the last activation; the logits for a logit loss).
    loss : float
        The loss.
    output_gradient : ndarray
        ``dL/d(output)``, shaped like ``output`` (for a logit loss, the gradient with respect to the logits).
    """

    pre_activations: list
    activations: list
    deltas: list
    grad_weights: list
    grad_biases: list
    output: np.ndarray
    loss: float
    derivatives: list
    upstream_gradients: list
    output_gradient: np.ndarray


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
        The epoch (0-based) after which a callback or early stopping ended training, if one did.
    metrics : dict of str to list
        Per-epoch values of ``fit(metrics=...)`` (``"accuracy"``, ``"r2"``, and ``"val_accuracy"``...
        with validation data) and of any entry a callback added to ``logs``.
    best_epoch : int or None
        With early stopping: the epoch (0-based) of the best monitored loss.
    restored_best_weights : bool
        Whether early stopping copied the best epoch's parameters back at the end.
    loss_name : str or None
        The network's loss (the plot's axis label).
    """

    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    gradient_norms: list = field(default_factory=list)
    stopped_epoch: int | None = None
    metrics: dict = field(default_factory=dict)
    best_epoch: int | None = None
    restored_best_weights: bool = False
    loss_name: str | None = None

    @property
    def epochs(self):
        """Number of completed epochs."""
        return len(self.loss)

    def plot(self, path=None, *, title=None):
        """The loss curve as a matplotlib Figure (saved to ``path`` when given).

        Training loss (and validation loss when recorded) per epoch; a log axis only when the curve spans
        more than a decade (and is positive), the loss's name on the y axis, and the best epoch marked
        (early stopping's when it ran, else the lowest validation or training loss).

        Parameters
        ----------
        path : str or os.PathLike or None
            Where to write the image (the format follows the extension, e.g. ``.png``, ``.svg``).
        title : str or None
            None gives "Training loss (<loss name>)".

        Returns
        -------
        matplotlib.figure.Figure

        Raises
        ------
        TypeError
            When ``path`` is not a str, bytes, os.PathLike or None.
        ValueError
            When ``path`` names something other than a regular file (a directory, a FIFO, a device: a FIFO
            would block the write forever), or has an extension matplotlib cannot write.
        ImportError
            When matplotlib is not installed.
        """
        target = None if path is None else _plot_path(path)
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from error
        # A Figure without pyplot: no global backend is switched and nothing stays open.
        figure = Figure(figsize=(6, 4))
        axes = figure.subplots()
        epochs = np.arange(1, len(self.loss) + 1)
        axes.plot(epochs, self.loss, label="training loss")
        if self.val_loss:
            axes.plot(np.arange(1, len(self.val_loss) + 1), self.val_loss, label="validation loss")
        values = np.asarray(self.loss + self.val_loss, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 10:
            axes.set_yscale("log")
        curve = self.val_loss if self.val_loss else self.loss
        best = self.best_epoch
        if best is None and curve:
            best = int(np.nanargmin(np.asarray(curve, dtype=np.float64))) if np.isfinite(curve).any() else None
        if best is not None and best < len(curve):
            axes.axvline(best + 1, color="0.6", linestyle="--", linewidth=1)
            axes.plot([best + 1], [curve[best]], "o", color="black",
                      label=f"best epoch {best + 1}" + (" (restored)" if self.restored_best_weights else ""))
        loss_name = self.loss_name or "loss"
        axes.set_title(title if title is not None else f"Training loss ({loss_name})")
        axes.set_xlabel("epoch")
        axes.set_ylabel(loss_name if self.loss_name else "loss")
        if len(epochs) and len(epochs) <= 20:
            axes.set_xticks(epochs)
        axes.legend()
        figure.tight_layout()
        if target is not None:
            _save_figure(figure, target)
        return figure


def _plot_path(path):
    """``path`` as a file name, refused unless it is a new name or an existing regular file."""
    try:
        name = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str, bytes, os.PathLike or None; got {type(path).__name__}") from None
    try:
        info = os.stat(name)
    except FileNotFoundError:
        return name
    except (OSError, ValueError) as error:
        raise ValueError(f"path {os.fsdecode(name)!r} cannot be written: {error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"path {os.fsdecode(name)!r} is not a regular file (a directory, FIFO, device or "
                         "socket); the plot is written only to a regular file")
    return name


def _save_figure(figure, name):
    """Write ``figure`` to ``name`` through a descriptor checked to be a regular file.

    The name was checked before the figure was drawn; opening without blocking and checking the opened
    descriptor keeps a FIFO put there meanwhile from blocking the write.
    """
    shown = os.fsdecode(name)
    extension = os.path.splitext(shown)[1][1:].lower()
    supported = figure.canvas.get_supported_filetypes()
    if extension and extension not in supported:
        raise ValueError(f"path {shown!r}: matplotlib cannot write {extension!r} files; use one of "
                         f"{', '.join(sorted(supported))}")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(name, flags, 0o666)
    except OSError as error:  # a directory; a FIFO without a reader (ENXIO)
        raise ValueError(f"path {shown!r} cannot be written as a file: {error.strerror or error}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ValueError(f"path {shown!r} is not a regular file; the plot is written only to a regular file")
        os.ftruncate(descriptor, 0)
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        handle = os.fdopen(descriptor, "wb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        figure.savefig(handle, format=extension or None)
