"""The benchmark workloads of issue 3, and the data and initial weights every peer shares.

Pure NumPy on purpose: the peers' children (PyTorch, JAX, FANN, fastbp) import this module from their own
interpreters, some of which do not have fastbp installed.

Everything is deterministic: the inputs ``X``, the targets ``Y`` (a fixed random "teacher" network of the
same architecture, so that training really lowers the loss) and the initial weights (PyTorch's
``nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from a seeded generator) are generated in
float64 and cast to the workload's dtype, so a float32 and a float64 run see the same numbers. Every peer
starts from these weights, visits the examples in order (no shuffle) in consecutive mini-batches and makes
plain SGD updates (``theta <- theta - lr * grad``) with the workload's fixed learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DATA_SEED = 20261125
INIT_SEED = 1234
TEACHER_SEED = 4321


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple            # (n_in, n_hidden..., n_out)
    activations: tuple      # one per layer (len(sizes) - 1)
    loss: str               # "half_sse" or "mse"
    batch: int
    dtype: str              # "float32" or "float64"
    lr: float
    n_full: int             # examples in the full data set: one fastbp epoch of it takes ~0.05-0.5 s
    n_check: int            # examples of the short run used to check that the peers' losses agree
    goals: dict = field(default_factory=dict)   # peer -> minimum ratio fastbp-fit / peer (issue 3)
    peak_share_goal: float = 0.0                # minimum share of the measured GEMM peak (issue 3)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one example's forward pass."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops_per_example(self) -> int:
        """FLOPs of one training example: forward 2*MACs, backward 4*MACs (the weight gradient and the
        input delta of every layer), minus the first layer's input delta, which nobody needs. Elementwise
        work (bias, activation, loss, the update) is left out."""
        return 6 * self.macs - 2 * self.sizes[0] * self.sizes[1]

    @property
    def n_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    def describe(self) -> str:
        sizes = "-".join(str(s) for s in self.sizes)
        return f"{sizes} {'/'.join(self.activations)}, {self.loss}, batch {self.batch}, {self.dtype}"


WORKLOADS = {
    w.name: w
    for w in [
        Workload("seed-1-1-1", (1, 1, 1), ("sigmoid", "identity"), "half_sse", 1, "float64", 0.1,
                 n_full=1_000_000, n_check=2_000, goals={"fann": 2.0, "jax": 5.0}),
        Workload("seed-2-2-1", (2, 2, 1), ("sigmoid", "sigmoid"), "half_sse", 1, "float64", 0.5,
                 n_full=1_000_000, n_check=2_000, goals={"fann": 2.0, "jax": 5.0}),
        Workload("seed-4-3-4", (4, 3, 4), ("relu", "identity"), "mse", 1, "float64", 0.02,
                 n_full=1_000_000, n_check=2_000, goals={"fann": 2.0, "jax": 5.0}),
        Workload("small-b1", (64, 32, 10), ("relu", "identity"), "mse", 1, "float32", 0.01,
                 n_full=200_000, n_check=2_000, goals={"jax": 2.0, "fann": 4.0}),
        Workload("mnist-b32", (784, 128, 10), ("relu", "identity"), "mse", 32, "float32", 0.05,
                 n_full=20_480, n_check=640, goals={"jax": 1.3, "gemm-only": 1.0}),
        # batches where the kernel's own products (16-128 rows) used to give way to BLAS's packed ones (above 48)
        Workload("mnist-b64", (784, 128, 10), ("relu", "identity"), "mse", 64, "float32", 0.05,
                 n_full=20_480, n_check=640, goals={"jax": 1.0}),
        Workload("mnist-b128", (784, 128, 10), ("relu", "identity"), "mse", 128, "float32", 0.05,
                 n_full=20_480, n_check=1_280, goals={"jax": 1.0}),
        Workload("mnist-b256", (784, 256, 256, 10), ("relu", "relu", "identity"), "mse", 256, "float32",
                 0.05, n_full=20_480, n_check=2_560, goals={"jax": 1.15}),
        Workload("wide-b512", (1024, 2048, 2048, 10), ("relu", "relu", "identity"), "mse", 512, "float32",
                 0.05, n_full=2_048, n_check=1_024, goals={"jax": 1.0}, peak_share_goal=0.90),
    ]
    # Batch 1 on networks past the tiny-kernel sizes (issue 15): the general per-example loop against
    # FANN's incremental training. float64, the precision FANN computes in; hidden sigmoid, tanh and ReLU
    # (FANN has no ReLU: its stand-in costs the same, so the rate compares, not the loss).
    + [
        Workload(f"b1-{'-'.join(map(str, sizes))}", sizes, acts, loss, 1, "float64", lr,
                 n_full=n_full, n_check=2_000, goals={"fann": 2.0})
        for sizes, acts, loss, lr, n_full in [
            ((8, 16, 1), ("sigmoid", "identity"), "mse", 0.05, 1_000_000),
            ((10, 16, 1), ("tanh", "identity"), "mse", 0.02, 1_000_000),
            ((13, 26, 1), ("sigmoid", "sigmoid"), "half_sse", 0.5, 500_000),
            ((14, 16, 3), ("relu", "identity"), "mse", 0.02, 500_000),
            ((16, 16, 1), ("tanh", "identity"), "half_sse", 0.02, 500_000),
            ((32, 16, 1), ("relu", "identity"), "mse", 0.02, 500_000),
            ((48, 96, 3), ("sigmoid", "identity"), "mse", 0.02, 200_000),
            ((2, 20, 10, 1), ("tanh", "tanh", "identity"), "half_sse", 0.02, 1_000_000),
            ((64, 128, 10), ("relu", "identity"), "mse", 0.01, 100_000),
            ((32, 64, 64, 4), ("tanh", "relu", "identity"), "mse", 0.01, 100_000),
        ]
    ]
}

# fastbp's fit must also be ahead of these in every row (issue 3: "always far ahead").
ALWAYS_AHEAD_OF = ("torch", "numpy-twin")


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None


# ------------------------------------------------------------------------------------------------------
# Data, weights
# ------------------------------------------------------------------------------------------------------

def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


_ACT = {
    "identity": lambda z: z,
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
}


def forward64(sizes, activations, weights, biases, X):
    """Reference forward pass in float64 (used for the targets)."""
    a = np.asarray(X, dtype=np.float64)
    for W, b, act in zip(weights, biases, activations):
        a = _ACT[act](a @ W.T + b)
    return a


def torch_default_init(sizes, seed=INIT_SEED):
    """Weights (out, in) and biases (out,) in float64, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(n_in)
        weights.append(rng.uniform(-bound, bound, size=(n_out, n_in)))
        biases.append(rng.uniform(-bound, bound, size=(n_out,)))
    return weights, biases


def initial_params(w: Workload, dtype=None):
    """The shared initial weights and biases, as C-contiguous arrays of ``dtype`` (default: the workload's)."""
    dtype = np.dtype(dtype or w.dtype)
    weights, biases = torch_default_init(w.sizes)
    return ([np.ascontiguousarray(W, dtype=dtype) for W in weights],
            [np.ascontiguousarray(b, dtype=dtype) for b in biases])


_DATA_CACHE: dict = {}


def data(w: Workload, n: int | None = None, dtype=None):
    """``(X, Y)``: the first ``n`` (default ``w.n_full``) examples of the workload's data set, C-contiguous,
    in ``dtype`` (default: the workload's). The same seed gives the same rows whatever ``n`` is."""
    dtype = np.dtype(dtype or w.dtype)
    n = w.n_full if n is None else int(n)
    if n > w.n_full:
        raise ValueError(f"{w.name}: at most {w.n_full} examples, asked for {n}")
    key = (w.name, dtype.str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # keep one data set in memory at a time
        rng = np.random.default_rng(DATA_SEED + sum(map(ord, w.name)))
        X = rng.uniform(-1.0, 1.0, size=(w.n_full, w.sizes[0]))
        # The teacher: same architecture, weights three times the default scale, so that its function is
        # not the initial network's; the student's loss then falls steadily over the first epochs.
        tw, tb = torch_default_init(w.sizes, seed=TEACHER_SEED)
        tw = [3.0 * W for W in tw]
        Y = forward64(w.sizes, w.activations, tw, tb, X)
        if w.activations[-1] == "identity":
            Y = Y + 0.01 * rng.standard_normal(Y.shape)
        _DATA_CACHE[key] = (np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(Y, dtype=dtype))
    X, Y = _DATA_CACHE[key]
    return X[:n], Y[:n]


def round_examples(w: Workload, n: float) -> int:
    """``n`` clamped to [one batch .. n_full] and rounded down to whole mini-batches."""
    n = int(min(max(n, w.batch), w.n_full))
    return max(w.batch, (n // w.batch) * w.batch)


# ------------------------------------------------------------------------------------------------------
# The reference loss convention, shared by the peers that compute it themselves.
# ------------------------------------------------------------------------------------------------------

def loss_value(loss: str, output, Y) -> float:
    d = np.asarray(output, dtype=np.float64) - np.asarray(Y, dtype=np.float64)
    if loss == "half_sse":
        return float(np.sum(d * d)) / (2 * d.shape[0])
    if loss == "mse":
        return float(np.mean(d * d))
    raise ValueError(loss)
