"""The NumPy twin of the compiled kernel: the readable specification of every kernel function.

``fastbp._core`` (compiled) and this module export the same names with the same semantics (see
``docs/DESIGN.md``, "Backend interface"). This one is written to be read: the forward pass of a layer and
its backward pass sit side by side, activations and losses are small tables, and every formula is the one
a hand calculation uses. The compiled kernel is checked against it.

Notation, for a batch of ``B`` rows and a layer ``l`` with weights ``W`` of shape ``(n_out, n_in)``:

    forward:   z = a_prev @ W.T + b          a = f(z)
    backward:  delta = dL/dz = (delta_next @ W_next) * f'(a)        (f' computed from the output a)
               grad_W = delta.T @ a_prev      grad_b = delta.sum(axis=0)

Every array is computed in the dtype of the parameters (float32 stays float32). The caller
(``fastbp.network``) has validated every argument: C-contiguous arrays of the right dtype and shape, finite
values, targets as a float matrix ``Y`` of shape ``(n, n_out)`` (class indices already one-hot).
"""

from __future__ import annotations

import math

import numpy as np

from fastbp import _layout
from fastbp._layout import log_softmax, sigmoid  # noqa: F401 (part of the twin's vocabulary)

# --------------------------------------------------------------------------------------------------------
# Activations: the function, and its derivative written in terms of the function's OUTPUT a = f(z).
# Computing f' from a is what makes backprop cheap: the forward pass already stored a.
# --------------------------------------------------------------------------------------------------------


def relu(z):
    return np.maximum(z, 0)


ACTIVATION_FUNCTIONS = {
    "identity": lambda z: z.copy(),
    "sigmoid": sigmoid,
    "relu": relu,
    "tanh": np.tanh,
}

ACTIVATION_DERIVATIVES_FROM_OUTPUT = {
    "identity": lambda a: np.ones_like(a),
    "sigmoid": lambda a: a * (1 - a),
    "relu": lambda a: (a > 0).astype(a.dtype),  # derivative 0 at exactly 0, as in PyTorch
    "tanh": lambda a: 1 - a * a,
}


# --------------------------------------------------------------------------------------------------------
# Losses over a batch of B rows and K outputs: the value, and dL/d(output pre-activation z_L).
# For half_sse and mse the derivative wrt the output a_L is returned and the chain rule through the last
# activation is applied by the caller; the other losses work on the logits directly (last activation
# identity). Each takes an optional ``sample_weight`` of shape (B,): the batch mean is then weighted.
# --------------------------------------------------------------------------------------------------------


def _weighted(per_example, gradient, sample_weight):
    """The weighted batch mean ``sum_i w_i l_i / sum_i w_i`` and its gradient.

    ``per_example`` holds each example's loss ``l_i`` and ``gradient`` each row's ``dl_i/dz`` (no batch
    mean yet): both are scaled by ``w_i / sum_i w_i``.
    """
    total = float(np.sum(sample_weight, dtype=np.float64))
    factor = (sample_weight / total).astype(gradient.dtype)
    return float(np.dot(sample_weight.astype(np.float64), per_example.astype(np.float64))) / total, \
        gradient * factor[:, None]


def half_sse(output, Y, sample_weight=None):
    """``L = sum((yhat - y)^2) / (2B)`` and ``dL/dyhat = (yhat - y) / B``.

    Per example ``l_i = sum_k (yhat_ik - y_ik)^2 / 2``; with ``sample_weight`` the batch mean is weighted.
    """
    batch = output.shape[0]
    difference = output - Y
    if sample_weight is not None:
        return _weighted(0.5 * np.sum(difference * difference, axis=1), difference, sample_weight)
    return float(np.sum(difference * difference)) / (2 * batch), difference / batch


def mse(output, Y, sample_weight=None):
    """``L = sum((yhat - y)^2) / (B K)`` and ``dL/dyhat = 2 (yhat - y) / (B K)``, as ``torch.nn.MSELoss``.

    Per example ``l_i = sum_k (yhat_ik - y_ik)^2 / K``.
    """
    count = output.shape[0] * output.shape[1]
    difference = output - Y
    if sample_weight is not None:
        K = output.shape[1]
        return _weighted(np.sum(difference * difference, axis=1) / K, 2 * difference / K, sample_weight)
    return float(np.sum(difference * difference)) / count, 2 * difference / count


def cross_entropy(logits, Y, sample_weight=None):
    """``L = -sum(y * log_softmax(z)) / B`` and ``dL/dz = (softmax(z) * sum_k y - y) / B``.

    ``Y`` holds one-hot or probability rows; the gradient is torch's formula, also right for soft targets.
    Per example ``l_i = -sum_k y_ik log softmax(z_i)_k``.
    """
    batch = logits.shape[0]
    log_probabilities = log_softmax(logits)
    # Where a target is 0 its term is 0 even if the log-probability underflowed to -inf (0 * -inf is NaN).
    terms = np.where(Y != 0, Y * log_probabilities, 0)
    softmax = np.exp(log_probabilities)
    gradient = softmax * Y.sum(axis=1, keepdims=True) - Y
    if sample_weight is not None:
        return _weighted(0.0 - np.sum(terms, axis=1), gradient, sample_weight)
    loss = 0.0 - float(np.sum(terms)) / batch  # 0.0 - : never -0.0
    return loss, gradient / batch


def binary_cross_entropy(logits, Y, sample_weight=None):
    """``torch.nn.BCEWithLogitsLoss``: the mean over all ``B K`` elements of
    ``max(z, 0) - z y + log(1 + exp(-|z|))`` (stable for any logit), and ``dL/dz = (sigmoid(z) - y) / (B K)``.

    Per example ``l_i`` is the mean over its ``K`` outputs (so multilabel targets work).
    """
    count = logits.shape[0] * logits.shape[1]
    elements = np.maximum(logits, 0) - logits * Y + np.log1p(np.exp(-np.abs(logits)))
    gradient = sigmoid(logits) - Y
    if sample_weight is not None:
        K = logits.shape[1]
        return _weighted(np.sum(elements, axis=1) / K, gradient / K, sample_weight)
    return float(np.sum(elements)) / count, gradient / count


def poisson(logits, Y, sample_weight=None):
    """``torch.nn.PoissonNLLLoss(log_input=True, full=False)``: the mean of ``exp(z) - y z`` over all
    ``B K`` elements, and ``dL/dz = (exp(z) - y) / (B K)``. ``z`` is the log of the predicted rate.
    """
    count = logits.shape[0] * logits.shape[1]
    rate = np.exp(logits)
    elements = rate - Y * logits
    gradient = rate - Y
    if sample_weight is not None:
        K = logits.shape[1]
        return _weighted(np.sum(elements, axis=1) / K, gradient / K, sample_weight)
    return float(np.sum(elements)) / count, gradient / count


LOSS_FUNCTIONS = {"half_sse": half_sse, "mse": mse, "cross_entropy": cross_entropy,
                  "binary_cross_entropy": binary_cross_entropy, "poisson": poisson}


# --------------------------------------------------------------------------------------------------------
# Workspace
# --------------------------------------------------------------------------------------------------------


class Workspace:
    """Buffers for one network layout and up to ``max_batch`` rows per call.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, ..., n_out]``.
    activation_codes : sequence of int
        One code per layer (``_layout.ACTIVATIONS`` index).
    loss_code : int
        ``_layout.LOSSES`` index.
    dtype : numpy dtype
        float32 or float64.
    max_batch : int
        The most rows one ``loss_and_gradient`` call (or one mini-batch) may have.

    Notes
    -----
    The compiled kernel preallocates its per-layer buffers here so that the per-step path allocates nothing.
    The twin favours legibility and lets NumPy allocate temporaries; it keeps only the gradient buffer
    ``grad`` (layout of ``params``), which is part of the interface.
    """

    def __init__(self, layer_sizes, activation_codes, loss_code, dtype, max_batch):
        self.layer_sizes = tuple(int(size) for size in layer_sizes)
        self.activation_codes = tuple(int(code) for code in activation_codes)
        self.loss_code = int(loss_code)
        self.dtype = np.dtype(dtype)
        self.max_batch = int(max_batch)
        self.activations = tuple(_layout.ACTIVATIONS[code] for code in self.activation_codes)
        self.loss_name = _layout.LOSSES[self.loss_code]
        self.offsets, self.n_params = _layout.param_offsets(self.layer_sizes)
        self.grad = np.zeros(self.n_params, dtype=self.dtype)

    def __repr__(self):
        return (f"Workspace(layer_sizes={list(self.layer_sizes)}, activations={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype={self.dtype.name}, max_batch={self.max_batch})")


def all_finite(values):
    """Whether every element of ``values`` is finite (no NaN, no infinity)."""
    return _layout.all_finite_chunked(np.asarray(values))


def layer_views(layer_sizes, flat):
    """``[(W_0, b_0), (W_1, b_1), ...]``: views into a flat buffer laid out like ``params``."""
    offsets, _ = _layout.param_offsets(layer_sizes)
    views = []
    for (w_offset, b_offset), n_in, n_out in zip(offsets, layer_sizes[:-1], layer_sizes[1:]):
        views.append((flat[w_offset:b_offset].reshape(n_out, n_in), flat[b_offset:b_offset + n_out]))
    return views


# --------------------------------------------------------------------------------------------------------
# Forward and backward, side by side
# --------------------------------------------------------------------------------------------------------


def dense_forward(ws, params, X):
    """Return ``(zs, activations)``: the pre-activations and activations of every layer for rows ``X``."""
    zs, activations = [], []
    a = X
    for (W, b), name in zip(layer_views(ws.layer_sizes, params), ws.activations):
        z = a @ W.T + b                      # (B, n_in) @ (n_in, n_out) + (n_out,)
        a = ACTIVATION_FUNCTIONS[name](z)
        zs.append(z)
        activations.append(a)
    return zs, activations


def dense_backward(ws, params, X, activations, last_delta, grad):
    """Backpropagate ``last_delta = dL/dz_L``; write every gradient into ``grad``; return the deltas."""
    layers = layer_views(ws.layer_sizes, params)
    grads = layer_views(ws.layer_sizes, grad)
    deltas = [None] * len(layers)
    delta = last_delta
    for l in range(len(layers) - 1, -1, -1):
        deltas[l] = delta
        a_prev = activations[l - 1] if l > 0 else X
        grad_W, grad_b = grads[l]
        grad_W[...] = delta.T @ a_prev       # sum over the batch of outer(delta_b, a_prev_b)
        grad_b[...] = delta.sum(axis=0)
        if l > 0:
            W = layers[l][0]
            delta = (delta @ W) * ACTIVATION_DERIVATIVES_FROM_OUTPUT[ws.activations[l - 1]](a_prev)
    return deltas


def output_delta(ws, zs, activations, Y, sample_weight=None):
    """The batch loss and ``dL/dz`` of the last layer (chain rule through its activation)."""
    loss, d_output = LOSS_FUNCTIONS[ws.loss_name](activations[-1], Y, sample_weight)
    if ws.loss_name in _layout.LOGIT_LOSSES:  # last activation identity: the gradient is wrt the logits z_L
        return loss, d_output
    return loss, d_output * ACTIVATION_DERIVATIVES_FROM_OUTPUT[ws.activations[-1]](activations[-1])


# --------------------------------------------------------------------------------------------------------
# The backend interface
# --------------------------------------------------------------------------------------------------------


def predict(ws, params, X, out):
    """Write the network's output for the rows of ``X`` into ``out`` (shape ``(n, n_out)``).

    Rows are processed in chunks of ``ws.max_batch``, so any ``n`` works.
    """
    step = max(ws.max_batch, 1)
    for start in range(0, X.shape[0], step):
        with np.errstate(over="ignore", invalid="ignore"):  # as the compiled kernel: inf/NaN, no warning
            _, activations = dense_forward(ws, params, X[start:start + step])
        out[start:start + step] = activations[-1]


def loss_and_gradient(ws, params, X, Y, sample_weight=None):
    """Return the loss of one batch (``n <= ws.max_batch`` rows) and leave its gradient in ``ws.grad``.

    ``sample_weight``: None (the plain mean over the rows) or shape ``(n,)`` with a positive sum (the
    weighted mean ``sum_i w_i l_i / sum_i w_i``).
    """
    # A diverging run overflows to inf/NaN here; that is reported through the returned loss (and the
    # caller's finiteness checks), not through NumPy warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        zs, activations = dense_forward(ws, params, X)
        loss, last_delta = output_delta(ws, zs, activations, Y, sample_weight)
        dense_backward(ws, params, X, activations, last_delta, ws.grad)
    return loss


def sgd_update(params, grad, lr, momentum, weight_decay, nesterov, velocity):
    """One ``torch.optim.SGD`` step (dampening 0) over the whole flat buffer; ``grad`` is not modified."""
    g = grad
    if weight_decay != 0:
        g = g + weight_decay * params
    if momentum != 0:
        velocity *= momentum                 # v = momentum * v + g   (torch: v = g on the first step;
        velocity += g                        # the same, since v starts at zero)
        g = g + momentum * velocity if nesterov else velocity
    params -= lr * g


def train_epoch(ws, params, X, Y, sample_weight, batch_size, lr, momentum, weight_decay, nesterov, velocity,
                shuffle_key):
    """One epoch of mini-batch SGD; return ``(loss_sum, weight_sum, examples_done, status)``.

    The rows are visited in order (``shuffle_key < 0``) or in ``_layout.permutation(n, shuffle_key)``
    (``sample_weight``, None or shape ``(n,)``, goes with its rows); each consecutive run of ``batch_size``
    rows (the last one shorter) makes one update with the gradient of its batch loss. ``loss_sum`` adds
    up each batch loss (before its update) times the batch's weight sum (its row count when unweighted),
    and ``weight_sum`` those weights, so that ``loss_sum / weight_sum`` is the epoch's loss. A batch
    whose weights sum to 0 makes no update.
    Status 0: finished. Status 1: a batch loss was not finite; stopped before updating with it.
    Status 2: interrupted (Ctrl-C); the parameters are as after the last completed update.
    """
    n = X.shape[0]
    order = None if shuffle_key < 0 else _layout.permutation(n, shuffle_key)
    loss_sum, weight_sum, examples_done = 0.0, 0.0, 0
    snapshot = None
    try:
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            X_batch, Y_batch = X[rows], Y[rows]
            w_batch = None if sample_weight is None else sample_weight[rows]
            batch_weight = float(X_batch.shape[0]) if w_batch is None else float(np.sum(w_batch, dtype=np.float64))
            if batch_weight == 0:
                examples_done += X_batch.shape[0]   # nothing to learn from: no update
                continue
            loss = loss_and_gradient(ws, params, X_batch, Y_batch, w_batch)
            if not math.isfinite(loss):
                return loss_sum, weight_sum, examples_done, 1
            # Keep the pre-update state so that a Ctrl-C landing inside the update cannot half-apply it
            # (the compiled kernel gets this for free: it checks for signals only between updates).
            snapshot = (params.copy(), velocity.copy())
            with np.errstate(over="ignore", invalid="ignore"):
                sgd_update(params, ws.grad, lr, momentum, weight_decay, nesterov, velocity)
            snapshot = None
            loss_sum += loss * batch_weight
            weight_sum += batch_weight
            examples_done += X_batch.shape[0]
    except KeyboardInterrupt:
        if snapshot is not None:
            params[...] = snapshot[0]
            velocity[...] = snapshot[1]
        return loss_sum, weight_sum, examples_done, 2
    return loss_sum, weight_sum, examples_done, 0


def train_rows(ws, params, X, Y, lr, order=None):
    """Per-example plain SGD (batch size 1, no momentum, no decay, unweighted), one update per row.

    The twin of the compiled kernel's fused per-example loops (``fastbp_train_rows`` and, for networks of
    one hidden layer with at most 4 units per layer and a squared-error loss, ``fastbp_train_rows_small``
    in ``_kernels_rows.h``): the same arithmetic as ``train_epoch`` with ``batch_size=1``, written as the
    loop those functions fuse. Returns ``(loss_sum, rows_done, status)`` like ``train_epoch``.
    """
    n = X.shape[0]
    order = range(n) if order is None else order
    loss_sum, done = 0.0, 0
    for row in order:
        x, y = X[row:row + 1], Y[row:row + 1]
        with np.errstate(over="ignore", invalid="ignore"):
            zs, activations = dense_forward(ws, params, x)          # forward, one example
            loss, last_delta = output_delta(ws, zs, activations, y)  # its loss and dL/dz
            if not math.isfinite(loss):
                return loss_sum, done, 1
            dense_backward(ws, params, x, activations, last_delta, ws.grad)
            params -= lr * ws.grad                                   # the update, with the old deltas
        loss_sum += loss
        done += 1
    return loss_sum, done, 0


def trace(ws, params, X, Y):
    """Every quantity of a hand calculation for one batch, as a dict of lists of fresh arrays.

    Keys: ``pre_activations``, ``activations``, ``deltas``, ``grad_weights``, ``grad_biases`` (one array
    per layer), ``output`` and ``loss``. ``ws.grad`` is left holding the gradient.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as inf/NaN values, not warnings
        zs, activations = dense_forward(ws, params, X)
        loss, last_delta = output_delta(ws, zs, activations, Y)
        deltas = dense_backward(ws, params, X, activations, last_delta, ws.grad)
    grads = layer_views(ws.layer_sizes, ws.grad)
    return {
        "pre_activations": [z.copy() for z in zs],
        "activations": [a.copy() for a in activations],
        "deltas": [d.copy() for d in deltas],
        "grad_weights": [gW.copy() for gW, _ in grads],
        "grad_biases": [gb.copy() for _, gb in grads],
        "output": activations[-1].copy(),
        "loss": loss,
    }
