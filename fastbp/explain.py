"""Explain one SGD step the way a hand calculation goes: every number, in order, with nothing hidden.

``explain_step(net, x, y, lr)`` runs one plain SGD step (``theta <- theta - lr * grad``) on one example or a
mini-batch and returns a :class:`StepReport`: the setup, the forward pass (``z`` and ``a`` per layer), the
output and the loss, the backward pass (``dL/d(output)``, every delta, every gradient), the update table with
every parameter by name, which parameters did not change and why, and a check (a second forward pass with the
new parameters: did each output move toward its target, and how much did the loss fall).

Naming: layers are numbered from 1 as textbooks do; neurons and inputs from 0, as arrays are indexed.
``W2[j][i]`` is ``net.weights[1][j, i]``, the weight from input ``i`` of layer 2 (``a1[i]``) into neuron ``j``
of layer 2; ``b2[j]`` is ``net.biases[1][j]``. Layer 1's inputs are the network inputs ``x[i]``.

The numbers come from ``net.trace`` (forward and backward: ``z``, ``a``, ``f'(z)``, ``dL/da``, every delta and
gradient, ``dL/d(output)``) and from a real ``fastbp.SGD(net, lr).step`` (the new values), so the report shows
what the library computes, never a re-derivation of it.

Where things are: this module is the door (``explain_step`` checks its arguments, runs the trace and the
step); ``fastbp._explain_data`` lays the numbers out as a :class:`StepReport` of row records;
``fastbp._explain_reasons`` holds the sentences (formulas, why a parameter did not change);
``fastbp._explain_render`` renders one section per function over ``fastbp._text``.
"""

from __future__ import annotations

import functools

import numpy as np

from fastbp._explain_data import (BackwardRow, CheckRow, ForwardRow, GradientRow, OutputGradientRow,
                                  StepReport, StepUpdate, UpdateRow, build_report)
from fastbp._explain_reasons import LAYOUT_NOTE, UnchangedReason  # noqa: F401 (part of this module's vocabulary)
from fastbp._validation import _as_real_array, _is_sparse
from fastbp.optimizers import SGD

__all__ = [
    "explain_step",
    "StepReport",
    "ForwardRow",
    "OutputGradientRow",
    "BackwardRow",
    "GradientRow",
    "UpdateRow",
    "UnchangedReason",
    "CheckRow",
]


def _overflow_shows_as_inf(function):
    """Huge but finite inputs overflow to inf/NaN in the report's numbers, without NumPy warnings."""
    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return function(*args, **kwargs)

    return quiet


@_overflow_shows_as_inf
def explain_step(net, x, y, lr, *, dry_run: bool = False, decimals: int = 4,
                 per_example: bool = False) -> StepReport:
    """Run one SGD step and explain it: every number a hand calculation shows, in that order.

    Parameters
    ----------
    net : fastbp.Network
        The network; updated in place by the step (as ``fastbp.SGD(net, lr).step`` does) unless ``dry_run``.
    x : array_like
        One example of shape ``(n_in,)`` or a mini-batch of shape ``(n, n_in)``.
    y : array_like
        Its target: shape ``(n_out,)`` or ``(n, n_out)``; for ``cross_entropy`` also a class index (one
        example) or class indices of shape ``(n,)``.
    lr : float
        The learning rate of the plain SGD step ``theta <- theta - lr * grad``.
    dry_run : bool, default False
        Explain the step without changing ``net`` (the step is taken on a copy).
    decimals : int, default 4
        Decimals shown by ``str(report)`` and ``report.to_markdown()`` (the data keep full precision).
    per_example : bool, default False
        For a mini-batch, show in each gradient table the per-example terms that the gradient adds up
        (``delta[b, j] * input[b, i]``, one column per example). The terms are always in
        ``report.gradient_rows[k].terms``.

    Returns
    -------
    StepReport
        ``print(report)`` shows it as tables; ``report.to_markdown()`` as Markdown; rows and arrays are
        attributes (``report.update_rows``, ``report.deltas``, ...) and ``report.as_dict()`` gives plain data.

    Examples
    --------
    >>> net = fastbp.Network([2, 2, 1], ["sigmoid", "sigmoid"], loss="half_sse")
    >>> report = fastbp.explain_step(net, [1.0, 0.0], [1.0], lr=0.5)
    >>> print(report)                      # doctest: +SKIP
    >>> report.n_changed, report.n_unchanged  # doctest: +SKIP
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not np.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)) or not 0 <= decimals <= 17:
        raise ValueError(f"decimals must be an int from 0 to 17, got {decimals!r}")
    if not isinstance(per_example, (bool, np.bool_)):
        raise TypeError(f"per_example must be True or False, got {type(per_example).__name__}")

    X, Y_net, targets, classes, single = _batch(net, x, y)
    B = X.shape[0]
    old_weights = [np.array(w, copy=True) for w in net.weights]
    old_biases = [np.array(b, copy=True) for b in net.biases]
    trace = net.trace(X, Y_net)

    # The step itself: a real optimizer step, on the net or (dry run) on a copy.
    stepped = net.copy() if dry_run else net
    gradients = stepped.gradients(X, Y_net)
    if not all(np.isfinite(g).all() for g in [*gradients.weights, *gradients.biases]):
        raise FloatingPointError("explain_step: the gradient overflowed to NaN or infinity (inputs or "
                                 "parameters too large for the network's dtype); the network is unchanged")
    SGD(stepped, lr).step(gradients)
    update = StepUpdate(
        old_weights=old_weights,
        old_biases=old_biases,
        new_weights=[np.array(w, copy=True) for w in stepped.weights],
        new_biases=[np.array(b, copy=True) for b in stepped.biases],
        output_after=np.asarray(stepped.predict(X)).reshape(B, net.layer_sizes[-1]).copy(),
        loss_after=float(stepped.loss(X, Y_net)),
    )
    return build_report(net, X, targets, classes, single, lr, trace, update, dry_run=dry_run,
                        decimals=decimals, per_example=per_example)


def _batch(net, x, y):
    """``(X, Y_for_net, targets, classes, single)``: the input as a batch, the target as the net takes it,
    the targets as a float matrix (one-hot rows for class indices), the class indices or ``None``."""
    dtype = np.dtype(net.dtype)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]

    if _is_sparse(x):
        x = x.toarray()  # a step worked by hand: a small batch, shown in full
    X = _as_real_array(x, "x", dtype)
    if X.ndim not in (1, 2):
        raise ValueError(
            f"x must be one example of shape ({n_in},) or a batch of shape (n, {n_in}); got shape {X.shape}"
        )
    single = X.ndim == 1
    if single:
        X = X.reshape(1, -1)
    if X.shape[1] != n_in:
        raise ValueError(f"x has {X.shape[1]} inputs per example; the network takes {n_in}")
    B = X.shape[0]
    if B == 0:
        raise ValueError("x holds no examples")
    y_array = np.asarray(y)
    classes = None
    if net.loss_name == "cross_entropy" and (
        (single and y_array.ndim == 0)
        or (not single and y_array.ndim == 1 and not (n_out == 1 and y_array.dtype.kind == "f"))
    ):
        with np.errstate(invalid="ignore"):
            if y_array.dtype.kind not in "iu" and not (
                y_array.dtype.kind == "f" and np.all(np.mod(y_array, 1) == 0)
            ):
                raise ValueError("cross-entropy class-index targets must be integers")
        if np.any(y_array < 0) or np.any(y_array >= n_out):  # before the cast: 1e300 has no int64
            raise ValueError(f"class indices must be in [0, {n_out - 1}]")
        classes = y_array.reshape(B).astype(np.int64)
        Y_net = classes
        targets = np.zeros((B, n_out), dtype=dtype)
        targets[np.arange(B), classes] = 1
    else:
        Y_float = _as_real_array(y, "y", dtype)
        if single:
            Y_float = Y_float.reshape(1, -1) if Y_float.ndim <= 1 else Y_float
        elif Y_float.ndim == 1 and n_out == 1:
            Y_float = Y_float.reshape(-1, 1)
        if Y_float.shape != (B, n_out):
            expected = f"({n_out},)" if single else f"({B}, {n_out})"
            raise ValueError(
                f"y must have shape {expected} to match x and the {n_out} outputs; got {np.shape(y)}"
            )
        Y_net = Y_float
        targets = Y_float
    return X, Y_net, np.array(targets, dtype=dtype), classes, single
