"""Tables and layout rules shared by both backends and the Python API.

Everything here is pure Python/NumPy and small: the name-to-code tables for activations and losses, the
offsets of each layer's weights and biases inside the flat ``params`` buffer, and the specification of the
shuffle permutation that both backends compute identically (see ``docs/DESIGN.md``).
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
LOSSES = ("half_sse", "mse", "cross_entropy")

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
HYPER_RESERVED_L2 = 7           # reserved: an L2 penalty on the weights only; always 0 for now

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
