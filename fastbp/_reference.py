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
import numbers
import time

import numpy as np

from fastbp import _spec
# The math tables live in fastbp/_spec.py (one home for every formula); the twin reads them from there.
from fastbp._spec import (  # noqa: F401 (the twin's vocabulary, importable from here too)
    ACTIVATION_FUNCTIONS, DERIVATIVES_FROM_OUTPUT, LOSS_FUNCTIONS, binary_cross_entropy, cross_entropy,
    half_sse, layer_views, log_softmax, mse, poisson, relu, sigmoid,
)

# The backend interface (fastbp._backend.INTERFACE); everything else here is the readable specification.
__all__ = ["Workspace", "predict", "loss_and_gradient", "train_epoch", "optimizer_step", "all_finite",
           "predict_sparse", "loss_and_gradient_sparse", "train_epoch_sparse"]

# train_epoch calls its progress hook at most this often (seconds of monotonic wall time); the compiled
# kernel's PROGRESS_INTERVAL is the same.
PROGRESS_INTERVAL = 0.2

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
        One code per layer (``_spec.ACTIVATIONS`` index).
    loss_code : int
        ``_spec.LOSSES`` index.
    dtype : numpy dtype
        float32 or float64.
    max_batch : int
        The most rows one ``loss_and_gradient`` call (or one mini-batch) may have.
    sparse_input : bool
        For the ``*_sparse`` functions only: the compiled kernel then allocates nothing of width
        ``layer_sizes[0]``, and its ``train_epoch`` refuses the workspace.

    Notes
    -----
    The compiled kernel preallocates its per-layer buffers here so that the per-step path allocates nothing.
    The twin favours legibility and lets NumPy allocate temporaries; it keeps only the gradient buffer
    ``grad`` (layout of ``params``), which is part of the interface.
    """

    def __init__(self, layer_sizes, activation_codes, loss_code, dtype, max_batch, sparse_input=False):
        self.sparse_input = bool(sparse_input)
        self.layer_sizes = tuple(int(size) for size in layer_sizes)
        self.activation_codes = tuple(int(code) for code in activation_codes)
        self.loss_code = int(loss_code)
        self.dtype = np.dtype(dtype)
        self.max_batch = int(max_batch)
        self.activations = tuple(_spec.ACTIVATIONS[code] for code in self.activation_codes)
        self.loss_name = _spec.LOSSES[self.loss_code]
        self.offsets, self.n_params = _spec.param_offsets(self.layer_sizes)
        self.grad = np.zeros(self.n_params, dtype=self.dtype)

    def __repr__(self):
        return (f"Workspace(layer_sizes={list(self.layer_sizes)}, activations={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype={self.dtype.name}, max_batch={self.max_batch})")


def all_finite(values):
    """Whether every element of ``values`` is finite (no NaN, no infinity)."""
    return _spec.all_finite_chunked(np.asarray(values))


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
            delta = (delta @ W) * DERIVATIVES_FROM_OUTPUT[ws.activations[l - 1]](a_prev)
    return deltas


def output_delta(ws, zs, activations, Y, sample_weight=None):
    """The batch loss and ``dL/dz`` of the last layer (chain rule through its activation)."""
    loss, d_output = LOSS_FUNCTIONS[ws.loss_name](activations[-1], Y, sample_weight)
    if ws.loss_name in _spec.LOGIT_LOSSES:  # last activation identity: the gradient is wrt the logits z_L
        return loss, d_output
    return loss, d_output * DERIVATIVES_FROM_OUTPUT[ws.activations[-1]](activations[-1])


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


def _lerp(start, end, weight):
    """``start + weight * (end - start)``, computed from the nearer end as ``torch.lerp`` does."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def optimizer_step(params, grad, rule, hyper, state, steps):
    """One update of the flat buffer ``params`` from ``grad`` by update rule ``rule``, in place.

    ``hyper`` holds the hyper-parameters in the slots ``_spec.HYPER_*`` name; ``state`` the rule's rows
    (``_spec.STATE_ROWS``), each laid out like ``params``; ``steps[0]`` counts the updates done so far
    and is incremented. Every rule is ``torch.optim``'s single-tensor step, formula for formula, written
    here in NumPy; ``grad`` is not modified.
    """
    name = _spec.RULES[rule]
    dtype = params.dtype.type
    lr = dtype(hyper[_spec.HYPER_LR])
    weight_decay = dtype(hyper[_spec.HYPER_WEIGHT_DECAY])
    t = int(steps[0]) + 1
    g = grad
    if name == "sgd":
        # g += wd * theta;   v = mu * v + g;   g = g + mu * v (Nesterov) or v;   theta -= lr * g
        momentum = dtype(hyper[_spec.HYPER_SGD_MOMENTUM])
        nesterov = hyper[_spec.HYPER_SGD_NESTEROV] != 0
        velocity = state[0]
        if weight_decay != 0:
            g = g + weight_decay * params
        if momentum != 0:
            velocity *= momentum             # torch sets v = g on the first step: the same, as v starts at 0
            velocity += g
            g = g + momentum * velocity if nesterov else velocity
        params -= lr * g
    elif name in ("adam", "adamw"):
        beta1, beta2 = hyper[_spec.HYPER_ADAM_BETA1], hyper[_spec.HYPER_ADAM_BETA2]
        eps = dtype(hyper[_spec.HYPER_ADAM_EPS])
        exp_avg, exp_avg_sq, max_exp_avg_sq = state[0], state[1], state[2]
        if weight_decay != 0:
            if name == "adamw":              # decoupled: shrink the parameters, leave the gradient alone
                params *= dtype(1 - hyper[_spec.HYPER_LR] * hyper[_spec.HYPER_WEIGHT_DECAY])
            else:                            # coupled L2, as SGD
                g = g + weight_decay * params
        exp_avg[...] = _lerp(exp_avg, g, dtype(1 - beta1))                    # m = b1 m + (1 - b1) g
        exp_avg_sq[...] = exp_avg_sq * dtype(beta2) + dtype(1 - beta2) * g * g  # s = b2 s + (1 - b2) g^2
        second = exp_avg_sq
        if hyper[_spec.HYPER_ADAM_AMSGRAD] != 0:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        # bias corrections, in double as torch's Python floats
        if hyper[_spec.HYPER_ADAM_SKLEARN_EPS] != 0:
            # scikit-learn's Adam: eps is added to sqrt(v) before the bias correction of the second moment
            step_size = dtype(-(hyper[_spec.HYPER_LR] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)))
            denominator = np.sqrt(second) + eps
        else:
            step_size = dtype(-(hyper[_spec.HYPER_LR] / (1 - beta1 ** t)))
            bias2_sqrt = dtype(math.sqrt(1 - beta2 ** t))
            denominator = np.sqrt(second) / bias2_sqrt + eps
        params += step_size * exp_avg / denominator
    elif name == "rmsprop":
        alpha = hyper[_spec.HYPER_RMSPROP_ALPHA]
        eps = dtype(hyper[_spec.HYPER_RMSPROP_EPS])
        momentum = dtype(hyper[_spec.HYPER_RMSPROP_MOMENTUM])
        square_avg, momentum_buffer, grad_avg = state[0], state[1], state[2]
        if weight_decay != 0:
            g = g + weight_decay * params
        square_avg[...] = square_avg * dtype(alpha) + dtype(1 - alpha) * g * g
        if hyper[_spec.HYPER_RMSPROP_CENTERED] != 0:
            # centered: divide by an estimate of the gradient's standard deviation, not its RMS
            grad_avg[...] = _lerp(grad_avg, g, dtype(1 - alpha))
            average = np.sqrt(square_avg + dtype(-1) * grad_avg * grad_avg) + eps
        else:
            average = np.sqrt(square_avg) + eps
        if momentum > 0:
            momentum_buffer[...] = momentum_buffer * momentum + g / average
            params += -lr * momentum_buffer
        else:
            params += -lr * g / average
    elif name == "rprop":
        eta_minus = dtype(hyper[_spec.HYPER_RPROP_ETA_MINUS])
        eta_plus = dtype(hyper[_spec.HYPER_RPROP_ETA_PLUS])
        step_min = dtype(hyper[_spec.HYPER_RPROP_STEP_MIN])
        step_max = dtype(hyper[_spec.HYPER_RPROP_STEP_MAX])
        prev, step_size = state[0], state[1]
        if t == 1:
            step_size[...] = lr               # torch fills the step sizes with lr when the state is made
        product = g * prev
        factor = np.where(product > 0, eta_plus, np.where(product < 0, eta_minus, dtype(1)))
        np.clip(step_size * factor, step_min, step_max, out=step_size)
        g = np.where(product < 0, dtype(0), g)   # after a sign change: no step, and forget the gradient
        params -= np.sign(g) * step_size
        prev[...] = g
    else:
        raise ValueError(f"unknown update rule {rule}")
    steps[0] += 1


def _check_order(order, n):
    """An explicit row order for :func:`train_epoch`: n indices of np.intp in ``[0, n)`` (as the kernel's
    check_order)."""
    if order.dtype != np.intp or order.ndim != 1 or order.shape[0] != n:
        raise ValueError(f"an explicit row order must be a 1-D np.intp array of {n} row indices; got "
                         f"{order.dtype} of shape {order.shape}")
    bad = np.flatnonzero((order < 0) | (order >= n))
    if bad.size:
        raise ValueError(f"an explicit row order must hold indices in [0, {n}); got {order[bad[0]]} at "
                         f"position {bad[0]}")
    return order


def train_epoch(ws, params, X, Y, sample_weight, batch_size, rule, hyper, state, steps, shuffle_key,
                progress=None, *, threads=1, check_inputs=False):
    """One epoch of mini-batch training; return ``(loss_sum, weight_sum, examples_done, status)``.

    The rows are visited in order (``shuffle_key < 0``), in ``_spec.permutation(n, shuffle_key)``, or, with
    ``shuffle_key`` an array (n indices of np.intp in ``[0, n)``), in that order
    (``sample_weight``, None or shape ``(n,)``, goes with its rows); each consecutive run of ``batch_size``
    rows (the last one shorter) makes one ``optimizer_step`` with the gradient of its batch loss.
    ``loss_sum`` adds up each batch loss (before its update) times the batch's weight sum (its row count
    when unweighted), and ``weight_sum`` those weights, so that ``loss_sum / weight_sum`` is the epoch's
    loss. A batch whose weights sum to 0 makes no update. With ``hyper[_spec.HYPER_L2] != 0`` each batch
    loss and gradient carry scikit-learn's L2 term on the weights (``_add_l2``).
    Status 0: finished. Status 1: a batch loss was not finite; stopped before updating with it.
    Status 2: interrupted (Ctrl-C); the parameters, state and steps are as after the last completed update.
    Status 3 (only with ``check_inputs``): a row of X holds NaN or infinity; stopped before any update used
    it, with the parameters as after ``examples_done`` examples (the compiled kernel checks per batch, and
    at batch size 1 per run of rows between its signal checks, so its count may be lower).

    ``progress``: None, or a callable ``progress(examples_done, loss_sum, weight_sum)`` with the counts of
    the completed batches so far, called between batches at most every ``PROGRESS_INTERVAL`` seconds
    (``time.monotonic``; never at the end: the return value says that). A KeyboardInterrupt inside it
    interrupts the epoch (status 2); anything else it raises stops the epoch after its last completed
    update and propagates.

    ``threads``: the compiled kernel's thread count for its own products (the results do not depend on it);
    checked here (an int of at least 1) and otherwise unused: NumPy's products use its BLAS's threads.
    """
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be an int; got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1; got {threads}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable; got {type(progress).__name__}")
    n = X.shape[0]
    if isinstance(shuffle_key, np.ndarray):
        order = _check_order(shuffle_key, n)
    else:
        order = None if shuffle_key < 0 else _spec.permutation(n, shuffle_key)
    loss_sum, weight_sum, examples_done = 0.0, 0.0, 0
    snapshot = None
    last_report = time.monotonic() if progress is not None else 0.0
    try:
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            X_batch, Y_batch = X[rows], Y[rows]
            w_batch = None if sample_weight is None else sample_weight[rows]
            batch_weight = float(X_batch.shape[0]) if w_batch is None else float(np.sum(w_batch, dtype=np.float64))
            if check_inputs and not all_finite(X_batch):
                return loss_sum, weight_sum, examples_done, _spec.STATUS_BAD_INPUT
            if batch_weight == 0:
                examples_done += X_batch.shape[0]   # nothing to learn from: no update
                continue
            loss = loss_and_gradient(ws, params, X_batch, Y_batch, w_batch)
            if hyper[_spec.HYPER_L2] != 0 and math.isfinite(loss):
                loss += _add_l2(ws, params, hyper[_spec.HYPER_L2], batch_weight)
            if not math.isfinite(loss):
                return loss_sum, weight_sum, examples_done, 1
            # Keep the pre-update state so that a Ctrl-C landing inside the update cannot half-apply it
            # (the compiled kernel gets this for free: it checks for signals only between updates).
            snapshot = (params.copy(), state.copy(), steps.copy())
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                optimizer_step(params, ws.grad, rule, hyper, state, steps)
            snapshot = None
            loss_sum += loss * batch_weight
            weight_sum += batch_weight
            examples_done += X_batch.shape[0]
            if progress is not None and examples_done < n:
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL:
                    last_report = now
                    progress(examples_done, loss_sum, weight_sum)
    except KeyboardInterrupt:
        if snapshot is not None:
            params[...] = snapshot[0]
            state[...] = snapshot[1]
            steps[...] = snapshot[2]
        return loss_sum, weight_sum, examples_done, 2
    return loss_sum, weight_sum, examples_done, 0


def _add_l2(ws, params, l2, batch_weight):
    """scikit-learn's L2 penalty on the weights only (the biases are not penalised), for a batch of weight
    sum ``B``: adds ``l2 * W / B`` to each weight matrix's gradient in ``ws.grad`` and returns the loss term
    ``0.5 * l2 * sum(W**2) / B`` (both from the weights before the update)."""
    squares = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        layers, grads = layer_views(ws.layer_sizes, params), layer_views(ws.layer_sizes, ws.grad)
        for (W, _), (grad_W, _) in zip(layers, grads):
            squares += float(np.dot(W.ravel().astype(np.float64), W.ravel().astype(np.float64)))
            grad_W += W.dtype.type(l2 / batch_weight) * W
    return 0.5 * l2 * squares / batch_weight


# --------------------------------------------------------------------------------------------------------
# Sparse input: the same functions on CSR rows
# --------------------------------------------------------------------------------------------------------
#
# ``data``, ``indices``, ``indptr`` are a CSR matrix's arrays (``indptr`` of length n + 1, column indices in
# [0, n_in), sorted within each row, no duplicates; checked by fastbp/_validation.py). The semantics are
# those of the dense functions on the matrix those arrays describe: scipy's ``csr_matrix @ W.T`` is the
# first layer's product, ``delta.T @ csr_matrix`` its weight gradient, and ``X[rows]`` picks the rows of a
# shuffled batch, so the dense code above runs unchanged. No delta is formed for the input layer (nor is
# one in the dense path).


def _csr(ws, data, indices, indptr):
    """The CSR rows as a ``scipy.sparse.csr_matrix`` of ``ws.layer_sizes[0]`` columns (no copy)."""
    import scipy.sparse  # scipy is a dependency; imported here to keep ``import fastbp`` light

    return scipy.sparse.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, ws.layer_sizes[0]),
                                   copy=False)


def predict_sparse(ws, params, data, indices, indptr, out):
    """:func:`predict` for CSR rows."""
    predict(ws, params, _csr(ws, data, indices, indptr), out)


def loss_and_gradient_sparse(ws, params, data, indices, indptr, Y, sample_weight=None):
    """:func:`loss_and_gradient` for one batch of CSR rows."""
    return loss_and_gradient(ws, params, _csr(ws, data, indices, indptr), Y, sample_weight)


def train_epoch_sparse(ws, params, data, indices, indptr, Y, sample_weight, batch_size, rule, hyper, state, steps,
                       shuffle_key, progress=None, *, threads=1):
    """:func:`train_epoch` for CSR rows: the same batches, order, updates and progress reports."""
    return train_epoch(ws, params, _csr(ws, data, indices, indptr), Y, sample_weight, batch_size, rule, hyper,
                       state, steps, shuffle_key, progress, threads=threads)  # (data checked by the caller)


def train_rows(ws, params, X, Y, lr, order=None, adam=None):
    """Per-example training (batch size 1, unweighted), one update per row: plain SGD (no momentum, no
    decay), or with ``adam = (rule, hyper, state, steps)`` Adam or AdamW (``rule`` their code; the other
    three as for ``train_epoch``).

    The twin of the compiled kernel's fused per-example loops (``fastbp_train_rows``,
    ``fastbp_train_rows_adam`` and, for plain SGD on networks of one hidden layer with at most 4 units per
    layer and a squared-error loss, ``fastbp_train_rows_small`` in ``_kernels_rows.h``): the same
    arithmetic as ``train_epoch`` with ``batch_size=1``, written as the loop those functions fuse. Returns ``(loss_sum, rows_done, status)``
    like ``train_epoch``.
    """
    n = X.shape[0]
    order = range(n) if order is None else order
    loss_sum, done = 0.0, 0
    for row in order:
        x, y = X[row:row + 1], Y[row:row + 1]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            zs, activations = dense_forward(ws, params, x)          # forward, one example
            loss, last_delta = output_delta(ws, zs, activations, y)  # its loss and dL/dz
            if not math.isfinite(loss):
                return loss_sum, done, 1
            if adam is None:
                dense_backward(ws, params, x, activations, last_delta, ws.grad)
                params -= lr * ws.grad                               # the update, with the old deltas
            else:
                _adam_backward(ws, params, x, activations, last_delta, *adam)
        loss_sum += loss
        done += 1
    return loss_sum, done, 0


def _adam_backward(ws, params, x, activations, delta, rule, hyper, state, steps):
    """Backward pass of one example with each layer's Adam update made in it, from the top layer down.

    A layer's gradient is the outer product of its delta and its input (the bias: the delta), and its
    delta for the layer below is computed from its weights before the update, so updating layer by layer
    here is the same as one ``optimizer_step`` over the whole buffer after ``dense_backward``: the update
    is elementwise, and every layer sees the same step count (the kernel does the same, row by row, in
    the sweep that propagates the delta).
    """
    layers = layer_views(ws.layer_sizes, params)
    for l in range(len(layers) - 1, -1, -1):
        w_start, b_start = ws.offsets[l]
        b_stop = b_start + ws.layer_sizes[l + 1]
        a_prev = activations[l - 1] if l > 0 else x
        grad = np.concatenate([(delta.T @ a_prev).ravel(), delta[0]])   # outer(delta, a_prev), then delta
        if l > 0:
            W = layers[l][0]
            delta = (delta @ W) * DERIVATIVES_FROM_OUTPUT[ws.activations[l - 1]](a_prev)  # old weights
        optimizer_step(params[w_start:b_stop], grad, rule, hyper, state[:, w_start:b_stop], steps.copy())
    steps[0] += 1


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
