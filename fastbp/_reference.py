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

# --------------------------------------------------------------------------------------------------------
# Activations: the function, and its derivative written in terms of the function's OUTPUT a = f(z).
# Computing f' from a is what makes backprop cheap: the forward pass already stored a.
# --------------------------------------------------------------------------------------------------------


def sigmoid(z):
    """Logistic function without overflow: exp is only ever called on a non-positive number."""
    # z >= 0: 1 / (1 + exp(-z)), where exp(-z) <= 1.   z < 0: e / (1 + e) with e = exp(z) <= 1.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


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
# activation is applied by the caller; cross_entropy works on the logits directly (last activation identity).
# --------------------------------------------------------------------------------------------------------


def log_softmax(z):
    """Row-wise log-softmax, stable: the largest logit of each row is subtracted first."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def half_sse(output, Y):
    """``L = sum((yhat - y)^2) / (2B)`` and ``dL/dyhat = (yhat - y) / B``."""
    batch = output.shape[0]
    difference = output - Y
    return float(np.sum(difference * difference)) / (2 * batch), difference / batch


def mse(output, Y):
    """``L = sum((yhat - y)^2) / (B K)`` and ``dL/dyhat = 2 (yhat - y) / (B K)``, as ``torch.nn.MSELoss``."""
    count = output.shape[0] * output.shape[1]
    difference = output - Y
    return float(np.sum(difference * difference)) / count, 2 * difference / count


def cross_entropy(logits, Y):
    """``L = -sum(y * log_softmax(z)) / B`` and ``dL/dz = (softmax(z) * sum_k y - y) / B``.

    ``Y`` holds one-hot or probability rows; the gradient is torch's formula, also right for soft targets.
    """
    batch = logits.shape[0]
    log_probabilities = log_softmax(logits)
    # Where a target is 0 its term is 0 even if the log-probability underflowed to -inf (0 * -inf is NaN).
    loss = 0.0 - float(np.sum(np.where(Y != 0, Y * log_probabilities, 0))) / batch  # 0.0 - : never -0.0
    softmax = np.exp(log_probabilities)
    return loss, (softmax * Y.sum(axis=1, keepdims=True) - Y) / batch


LOSS_FUNCTIONS = {"half_sse": half_sse, "mse": mse, "cross_entropy": cross_entropy}


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


def output_delta(ws, zs, activations, Y):
    """The batch loss and ``dL/dz`` of the last layer (chain rule through its activation)."""
    if ws.loss_name == "cross_entropy":      # last activation is identity: the logits are z_L
        return cross_entropy(zs[-1], Y)
    loss, d_output = LOSS_FUNCTIONS[ws.loss_name](activations[-1], Y)
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


def loss_and_gradient(ws, params, X, Y):
    """Return the loss of one batch (``n <= ws.max_batch`` rows) and leave its gradient in ``ws.grad``."""
    # A diverging run overflows to inf/NaN here; that is reported through the returned loss (and the
    # caller's finiteness checks), not through NumPy warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        zs, activations = dense_forward(ws, params, X)
        loss, last_delta = output_delta(ws, zs, activations, Y)
        dense_backward(ws, params, X, activations, last_delta, ws.grad)
    return loss


def _lerp(start, end, weight):
    """``start + weight * (end - start)``, computed from the nearer end as ``torch.lerp`` does."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def optimizer_step(params, grad, rule, hyper, state, steps):
    """One update of the flat buffer ``params`` from ``grad`` by update rule ``rule``, in place.

    ``hyper`` holds the hyper-parameters in the slots ``_layout.HYPER_*`` name; ``state`` the rule's rows
    (``_layout.STATE_ROWS``), each laid out like ``params``; ``steps[0]`` counts the updates done so far
    and is incremented. Every rule is ``torch.optim``'s single-tensor step, formula for formula, written
    here in NumPy; ``grad`` is not modified.
    """
    name = _layout.RULES[rule]
    dtype = params.dtype.type
    lr = dtype(hyper[_layout.HYPER_LR])
    weight_decay = dtype(hyper[_layout.HYPER_WEIGHT_DECAY])
    t = int(steps[0]) + 1
    g = grad
    if name == "sgd":
        # g += wd * theta;   v = mu * v + g;   g = g + mu * v (Nesterov) or v;   theta -= lr * g
        momentum = dtype(hyper[_layout.HYPER_SGD_MOMENTUM])
        nesterov = hyper[_layout.HYPER_SGD_NESTEROV] != 0
        velocity = state[0]
        if weight_decay != 0:
            g = g + weight_decay * params
        if momentum != 0:
            velocity *= momentum             # torch sets v = g on the first step: the same, as v starts at 0
            velocity += g
            g = g + momentum * velocity if nesterov else velocity
        params -= lr * g
    elif name in ("adam", "adamw"):
        beta1, beta2 = hyper[_layout.HYPER_ADAM_BETA1], hyper[_layout.HYPER_ADAM_BETA2]
        eps = dtype(hyper[_layout.HYPER_ADAM_EPS])
        exp_avg, exp_avg_sq, max_exp_avg_sq = state[0], state[1], state[2]
        if weight_decay != 0:
            if name == "adamw":              # decoupled: shrink the parameters, leave the gradient alone
                params *= dtype(1 - hyper[_layout.HYPER_LR] * hyper[_layout.HYPER_WEIGHT_DECAY])
            else:                            # coupled L2, as SGD
                g = g + weight_decay * params
        exp_avg[...] = _lerp(exp_avg, g, dtype(1 - beta1))                    # m = b1 m + (1 - b1) g
        exp_avg_sq[...] = exp_avg_sq * dtype(beta2) + dtype(1 - beta2) * g * g  # s = b2 s + (1 - b2) g^2
        second = exp_avg_sq
        if hyper[_layout.HYPER_ADAM_AMSGRAD] != 0:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        # bias corrections, in double as torch's Python floats
        step_size = dtype(-(hyper[_layout.HYPER_LR] / (1 - beta1 ** t)))
        bias2_sqrt = dtype(math.sqrt(1 - beta2 ** t))
        denominator = np.sqrt(second) / bias2_sqrt + eps
        params += step_size * exp_avg / denominator
    elif name == "rmsprop":
        alpha = hyper[_layout.HYPER_RMSPROP_ALPHA]
        eps = dtype(hyper[_layout.HYPER_RMSPROP_EPS])
        momentum = dtype(hyper[_layout.HYPER_RMSPROP_MOMENTUM])
        square_avg, momentum_buffer, grad_avg = state[0], state[1], state[2]
        if weight_decay != 0:
            g = g + weight_decay * params
        square_avg[...] = square_avg * dtype(alpha) + dtype(1 - alpha) * g * g
        if hyper[_layout.HYPER_RMSPROP_CENTERED] != 0:
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
        eta_minus = dtype(hyper[_layout.HYPER_RPROP_ETA_MINUS])
        eta_plus = dtype(hyper[_layout.HYPER_RPROP_ETA_PLUS])
        step_min = dtype(hyper[_layout.HYPER_RPROP_STEP_MIN])
        step_max = dtype(hyper[_layout.HYPER_RPROP_STEP_MAX])
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


def train_epoch(ws, params, X, Y, batch_size, rule, hyper, state, steps, shuffle_key):
    """One epoch of mini-batch training; return ``(loss_sum, examples_done, status)``.

    The rows are visited in order (``shuffle_key < 0``) or in ``_layout.permutation(n, shuffle_key)``;
    each consecutive run of ``batch_size`` rows (the last one shorter) makes one ``optimizer_step`` with
    the gradient of its batch loss. ``loss_sum`` adds up each batch loss (before its update) times its row
    count. Status 0: finished. Status 1: a batch loss was not finite; stopped before updating with it.
    Status 2: interrupted (Ctrl-C); the parameters, state and steps are as after the last completed update.
    """
    n = X.shape[0]
    order = None if shuffle_key < 0 else _layout.permutation(n, shuffle_key)
    loss_sum, examples_done = 0.0, 0
    snapshot = None
    try:
        for start in range(0, n, batch_size):
            if order is None:
                X_batch, Y_batch = X[start:start + batch_size], Y[start:start + batch_size]
            else:
                rows = order[start:start + batch_size]
                X_batch, Y_batch = X[rows], Y[rows]
            loss = loss_and_gradient(ws, params, X_batch, Y_batch)
            if not math.isfinite(loss):
                return loss_sum, examples_done, 1
            # Keep the pre-update state so that a Ctrl-C landing inside the update cannot half-apply it
            # (the compiled kernel gets this for free: it checks for signals only between updates).
            snapshot = (params.copy(), state.copy(), steps.copy())
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                optimizer_step(params, ws.grad, rule, hyper, state, steps)
            snapshot = None
            loss_sum += loss * X_batch.shape[0]
            examples_done += X_batch.shape[0]
    except KeyboardInterrupt:
        if snapshot is not None:
            params[...] = snapshot[0]
            state[...] = snapshot[1]
            steps[...] = snapshot[2]
        return loss_sum, examples_done, 2
    return loss_sum, examples_done, 0


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
