"""The one home of every code and formula: shared by both backends and the Python API.

Everything here is pure Python/NumPy and small (scikit-learn's ``neural_network/_base.py`` is the model):

- the codes: ``ACTIVATIONS`` and ``LOSSES`` (code = index; the C enums in ``_kernels.h`` carry the same
  values, which ``tests/test_conformance.py`` checks) and the status codes of ``train_epoch``;
- the math tables: ``ACTIVATION_FUNCTIONS[name](z)``, ``DERIVATIVES_FROM_OUTPUT[name](a)``,
  ``LOSS_FUNCTIONS[name](output, Y, sample_weight) -> (loss, dL/d(output))`` (for the logit losses the
  output is the last pre-activation, so that is dL/dz), ``softmax``, ``log_softmax``, ``sigmoid``, and
  ``PROBABILITY_MAPS[loss]`` for ``predict_proba``;
- the layout: ``param_offsets`` and ``layer_views`` of the flat ``params`` buffer;
- the specification of the shuffle permutation that both backends compute identically (``epoch_key``,
  ``permutation``; see ``docs/DESIGN.md``).
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
LOSSES = ("half_sse", "mse", "cross_entropy", "binary_cross_entropy", "poisson")
# Losses computed from the logits: the last activation must be identity, the output delta is dL/dz directly.
LOGIT_LOSSES = ("cross_entropy", "binary_cross_entropy", "poisson")

# What train_epoch returns as its status.
STATUS_OK = 0            # the epoch finished
STATUS_NONFINITE = 1     # a batch loss was NaN or infinite: stopped before updating with it
STATUS_INTERRUPTED = 2   # Ctrl-C: stopped after a completed update
STATUS_BAD_INPUT = 3     # (check_inputs) a row of X held NaN or infinity: stopped before any update used it

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
LOSS_CODES = {name: code for code, name in enumerate(LOSSES)}

# The fused optimizers' update rules (code = index; the same enum in _kernels.h) and, for each, how many
# rows of the state array ``(n_state_rows, n_params)`` it keeps, in order.
RULES = ("sgd", "adam", "adamw", "rmsprop", "rprop")
RULE_CODES = {name: code for code, name in enumerate(RULES)}
STATE_ROWS = {
    "sgd": ("velocity",),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
    "rprop": ("prev", "step_size"),
}

# Slots of the float64 hyper-parameter array that goes with a rule (the same enum in _kernels.h).
# Flags (nesterov, amsgrad, centered) are stored as 0.0 / 1.0.
N_HYPER = 8
HYPER_LR = 0
HYPER_WEIGHT_DECAY = 1          # coupled L2 (added to the gradient) except for adamw (decoupled)
HYPER_SGD_MOMENTUM = 2
HYPER_SGD_NESTEROV = 3
HYPER_ADAM_BETA1 = 2            # adam and adamw
HYPER_ADAM_BETA2 = 3
HYPER_ADAM_EPS = 4
HYPER_ADAM_AMSGRAD = 5
HYPER_RMSPROP_ALPHA = 2
HYPER_RMSPROP_EPS = 3
HYPER_RMSPROP_MOMENTUM = 4
HYPER_RMSPROP_CENTERED = 5
HYPER_RPROP_ETA_MINUS = 2
HYPER_RPROP_ETA_PLUS = 3
HYPER_RPROP_STEP_MIN = 4
HYPER_RPROP_STEP_MAX = 5
# Private to fastbp.sklearn (the public optimizers keep torch's semantics and leave both at 0):
# scikit-learn's Adam (flag 0.0 / 1.0): eps is added to sqrt(v) before the bias correction,
# p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).
HYPER_ADAM_SKLEARN_EPS = 6
# scikit-learn's alpha: an L2 penalty on the weights only (never the biases), divided by the batch's
# weight sum B. train_epoch adds l2 W / B to each weight matrix's gradient and 0.5 l2 sum(W^2) / B to the
# batch loss (weights before the update); optimizer_step takes its gradient as given and ignores it.
HYPER_L2 = 7



def sigmoid(z):
    """Logistic function without overflow: exp is only ever called on a non-positive number."""
    # z >= 0: 1 / (1 + exp(-z)), where exp(-z) <= 1.   z < 0: e / (1 + e) with e = exp(z) <= 1.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def log_softmax(z):
    """Row-wise log-softmax, stable: the largest logit of each row is subtracted first."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z):
    """Row-wise softmax, stable (the largest logit of each row is subtracted first)."""
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# Activations: the function, and its derivative written in terms of the function's OUTPUT a = f(z).
# Computing f' from a is what makes backprop cheap: the forward pass already stored a.
# --------------------------------------------------------------------------------------------------------


def relu(z):
    """max(z, 0)."""
    return np.maximum(z, 0)


ACTIVATION_FUNCTIONS = {
    "identity": lambda z: z.copy(),
    "sigmoid": sigmoid,
    "relu": relu,
    "tanh": np.tanh,
}

DERIVATIVES_FROM_OUTPUT = {
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


# What predict_proba applies to the logits, per loss (losses absent here have no probabilities).
PROBABILITY_MAPS = {"cross_entropy": softmax, "binary_cross_entropy": sigmoid}


def layer_views(layer_sizes, flat):
    """``[(W_0, b_0), (W_1, b_1), ...]``: views into a flat buffer laid out like ``params``."""
    offsets, _ = param_offsets(layer_sizes)
    views = []
    for (w_offset, b_offset), n_in, n_out in zip(offsets, layer_sizes[:-1], layer_sizes[1:]):
        views.append((flat[w_offset:b_offset].reshape(n_out, n_in), flat[b_offset:b_offset + n_out]))
    return views


# Buffers the compiled kernel streams through vector loads (the parameters, the workspace) start on a cache
# line: numpy's allocator guarantees 16 bytes, and a 64-byte load from an address 16 or 48 past a line
# touches two lines. Rows whose length is a multiple of 16 floats (784 inputs, say) then stay aligned
# throughout (784-128-10 at batch 32: about 5% faster fit, docs/BENCHMARKS.md).
ALIGNMENT = 64


def aligned_zeros(n, dtype, alignment=ALIGNMENT):
    """``n`` zeros of ``dtype``, a 1-D C-contiguous array whose data starts on an ``alignment``-byte
    boundary (n > 0; an empty array has no data to align): a view into a byte buffer ``alignment`` bytes
    longer (its ``base``)."""
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    buffer = np.zeros(nbytes + alignment, dtype=np.uint8)
    start = -buffer.ctypes.data % alignment
    return buffer[start:start + nbytes].view(dtype)


_MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def param_offsets(layer_sizes):
    """Return ``(offsets, total)`` for the flat parameter buffer.

    ``offsets[l] = (w_offset, b_offset)``: layer ``l``'s weights, shape ``(n_out, n_in)`` row-major, start
    at ``w_offset``, and its biases, shape ``(n_out,)``, at ``b_offset``. ``total`` is the buffer length.
    """
    offsets = []
    position = 0
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        offsets.append((position, position + n_in * n_out))
        position += n_in * n_out + n_out
    return offsets, position


def mix64(z: int) -> int:
    """The splitmix64 finaliser on a Python int, modulo 2**64."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def epoch_key(seed: int, epoch: int) -> int:
    """The shuffle key of one epoch: a 64-bit value derived from the fit seed and the epoch number."""
    return mix64((seed + GOLDEN_GAMMA * (epoch + 1)) & _MASK64)


def mix64_array(z: np.ndarray) -> np.ndarray:
    """``mix64`` over a uint64 array (wrapping arithmetic, as in C)."""
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def shuffle_draws(n: int, key: int) -> np.ndarray:
    """The Fisher-Yates swap partners: ``draws[i]`` is uniform in ``[0, i]`` for ``i = 1 .. n-1``.

    ``draws[0]`` is 0 and unused. Computed vectorised; the swaps themselves are sequential.
    """
    if n < 2:
        return np.zeros(max(n, 0), dtype=np.int64)
    i_plus_1 = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix64_array(np.uint64(key) + np.uint64(GOLDEN_GAMMA) * i_plus_1)
        draws = ((h >> np.uint64(32)) * i_plus_1) >> np.uint64(32)
    return draws.astype(np.int64)


def permutation(n: int, key: int) -> np.ndarray:
    """The order in which one shuffled epoch visits the ``n`` examples (the spec the kernel follows)."""
    perm = np.arange(n, dtype=np.intp)
    draws = shuffle_draws(n, key).tolist()
    order = perm.tolist()
    for i in range(n - 1, 0, -1):
        j = draws[i]
        order[i], order[j] = order[j], order[i]
    perm[:] = order
    return perm


_FINITE_CHUNK = 1 << 16


def all_finite_chunked(values) -> bool:
    """Whether an array holds no NaN and no infinity, tested in chunks of 65,536 elements.

    ``np.isfinite(values).all()`` allocates a boolean array as large as ``values``: for a training set that
    is megabytes of fresh pages per check. Chunks keep the temporary small and stop at the first bad one.
    """
    flat = values.reshape(-1)
    for start in range(0, flat.shape[0], _FINITE_CHUNK):
        if not np.isfinite(flat[start:start + _FINITE_CHUNK]).all():
            return False
    return True


def first_nonfinite_row(X) -> int:
    """The index of the first row of the 2-D array ``X`` that holds NaN or infinity, or -1 (in chunks, as
    :func:`all_finite_chunked`)."""
    rows = max(1, _FINITE_CHUNK // max(1, X.shape[1]))
    for start in range(0, X.shape[0], rows):
        bad = ~np.isfinite(X[start:start + rows]).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return -1
