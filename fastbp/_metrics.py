"""Metrics over a network's output and its prepared targets: the loss, accuracy and R².

One home for what ``Network.evaluate`` returns and what ``Network.fit(metrics=...)`` records per epoch.
Targets arrive as ``Network._prepare`` leaves them: a float matrix ``(n, n_out)``, one-hot or probability
rows for the classification loss.
"""

from __future__ import annotations

import difflib

import numpy as np

from fastbp import _spec
from fastbp._validation import _describe

METRICS = ("loss", "accuracy", "r2")
CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")


def suggest(name, choices):
    """`` (did you mean 'x'?)`` for a near miss (case, spaces, a typo), else ``""``."""
    if not isinstance(name, str):
        return ""
    cleaned = name.strip().lower()
    for choice in choices:
        if cleaned == choice.lower():
            return f" (did you mean {choice!r}?)"
    close = difflib.get_close_matches(cleaned, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_metrics(metrics, loss_name, argument="metrics"):
    """Validate a list of metric names for a network with ``loss_name``; return them as a tuple."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"{argument} must be a list of names from {METRICS!r}; got {_describe(metrics)}")
    names = []
    for index, name in enumerate(metrics):
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"{argument}[{index}] must be one of {METRICS!r}; got {name!r}"
                             f"{suggest(name, METRICS)}")
        if name == "accuracy" and loss_name not in CLASSIFICATION_LOSSES:
            raise ValueError(f"{argument}: 'accuracy' needs a classification loss ({CLASSIFICATION_LOSSES!r}); "
                             f"this network's loss is {loss_name!r} (use 'r2' or 'loss')")
        if name == "r2" and loss_name in CLASSIFICATION_LOSSES:
            raise ValueError(f"{argument}: 'r2' is a regression metric; this network's loss is {loss_name!r} "
                             "(use 'accuracy' or 'loss')")
        if name not in names:
            names.append(name)
    return tuple(names)


def default_metrics(loss_name):
    return ("loss", "accuracy") if loss_name in CLASSIFICATION_LOSSES else ("loss", "r2")


def loss(output, Y, loss_name, sample_weight=None):
    """The (weighted) mean loss of ``output`` against ``Y`` (a float; inf when it overflows, silently)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _spec.LOSS_FUNCTIONS[loss_name](output, Y, sample_weight)[0]


def predicted_classes(output, loss_name):
    """Class decisions from logits: the largest output per row (``cross_entropy``), or each output's sign
    (``binary_cross_entropy``: a 0/1 matrix, one column per label)."""
    if loss_name == "binary_cross_entropy":
        return (output > 0).astype(np.int64)
    return np.argmax(output, axis=1).astype(np.int64)


def accuracy(output, Y, loss_name="cross_entropy"):
    """The fraction of rows classified right: the largest output is the target's class (the largest
    target entry); for ``binary_cross_entropy`` every label of the row (target >= 0.5) must be right, as
    ``sklearn.metrics.accuracy_score`` counts multilabel rows."""
    if output.shape[0] == 0:
        return float("nan")
    if loss_name == "binary_cross_entropy":
        return float(np.mean(np.all(predicted_classes(output, loss_name) == (Y >= 0.5), axis=1)))
    return float(np.mean(predicted_classes(output, loss_name) == np.argmax(Y, axis=1)))


def r2(output, Y):
    """The coefficient of determination, averaged over the outputs as ``sklearn.metrics.r2_score``.

    A constant target column scores 1.0 when predicted exactly and 0.0 otherwise (scikit-learn's
    ``force_finite``).
    """
    output = np.asarray(output, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if output.shape[0] < 2:
        return float("nan")
    with np.errstate(over="ignore", invalid="ignore"):
        residual = ((Y - output) ** 2).sum(axis=0)
        total = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
        scores = np.ones(Y.shape[1])
        nonzero_total = total != 0
        scores[nonzero_total] = 1 - residual[nonzero_total] / total[nonzero_total]
        scores[~nonzero_total & (residual != 0)] = 0.0
    return float(np.mean(scores))


def compute(names, output, Y, loss_name, prefix=""):
    """``{prefix + name: value}`` for each metric name."""
    values = {}
    for name in names:
        if name == "loss":
            value = loss(output, Y, loss_name)
        elif name == "accuracy":
            value = accuracy(output, Y, loss_name)
        else:
            value = r2(output, Y)
        values[prefix + name] = float(value)
    return values
