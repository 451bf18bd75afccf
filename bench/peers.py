"""One peer on one workload, in its own process: the child side of ``bench/compare.py``.

    python bench/peers.py --peer torch --workload mnist-b32 [--epochs 5] [--target-s 0.3]

prints one line ``@@RESULT@@ {json}`` with the peer's examples/s (median timed epoch after a warm-up
epoch, by wall clock and by the process's CPU time), the losses of its check run, the number of examples it timed on, and its BLAS and thread counts.

Every peer implements the same protocol:

    peer = PEERS[name](workload)        # raises NotInstalled when its package is missing
    peer.load(weights, biases)          # the shared initial parameters (float64 lists; the peer casts)
    peer.prepare(X, Y)                  # the data of the next epochs (untimed: copies, jit compilation)
    loss = peer.epoch()                 # one epoch, in order, consecutive mini-batches, plain SGD;
                                        # returns the mean of the batch losses before each update

The check run: from the shared initial weights, two epochs over the first ``n_check`` examples; every
peer reports both epoch losses, which compare.py sets side by side (same data, same start, same updates:
they must agree up to rounding). The timed run: the number of examples is chosen so that one epoch of this
peer takes about ``--target-s`` seconds (capped at the workload's full data set, whole mini-batches), the
parameters are reset to the initial weights, one warm-up epoch, then ``--epochs`` timed epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import workloads as wl  # noqa: E402

RESULT_MARK = "@@RESULT@@ "
# The optimizer every peer uses (compare.py --optimizer): "sgd" (plain, the workload's lr) or "adam"
# (torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8, with ADAM_LR for every workload).
OPTIMIZER = os.environ.get("FASTBP_BENCH_OPTIMIZER", "sgd")
ADAM_LR = 1e-3


class NotInstalled(Exception):
    """The peer's package (or fastbp's compiled backend) is not available in this interpreter."""


class NotApplicable(Exception):
    """The peer does not run this workload (FANN on mini-batches, the GEMM-only loop on batch 1)."""


def _clock():
    return time.perf_counter()


# --------------------------------------------------------------------------------------------------------
# fastbp
# --------------------------------------------------------------------------------------------------------

def _import_fastbp(require_compiled: bool):
    if os.environ.get("FASTBP_BENCH_FROM", "source") == "source" and REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        import fastbp
    except ImportError as exc:  # the API is not there (yet)
        raise NotInstalled(f"import fastbp failed: {exc}") from exc
    if require_compiled:
        try:
            import fastbp._core  # noqa: F401
        except ImportError as exc:
            raise NotInstalled(f"compiled backend not built: {exc}") from exc
    return fastbp


class FastbpFit:
    """fastbp's ``Network.fit`` (one epoch per call, shuffle=False)."""

    backend = "cython"

    def __init__(self, w):
        self.w = w
        self.fastbp = _import_fastbp(self.backend == "cython")
        self.net = self.fastbp.Network(list(w.sizes), list(w.activations), loss=w.loss, dtype=w.dtype,
                                       seed=0, backend=self.backend)

    def load(self, weights, biases):
        self.net.set_params([W.astype(self.w.dtype) for W in weights], [b.astype(self.w.dtype) for b in biases])
        # A fresh optimizer (zero moments, step 0) for every run from the initial weights.
        self.opt = (self.fastbp.Adam(self.net, lr=ADAM_LR) if OPTIMIZER == "adam"
                    else self.fastbp.SGD(self.net, self.w.lr))

    def prepare(self, X, Y):
        self.X, self.Y = X, Y

    def epoch(self):
        history = self.net.fit(self.X, self.Y, epochs=1, batch_size=self.w.batch, optimizer=self.opt,
                               shuffle=False)
        return float(history.loss[0])

    def info(self):
        fb = self.fastbp
        info = {"fastbp_file": os.path.dirname(fb.__file__), "fastbp_version": getattr(fb, "__version__", None),
                "net_backend": str(getattr(self.net, "backend", None))}
        if info["net_backend"] == "cython":
            from fastbp import _core
            info["small_gemm"] = _core._small_gemm_isa()
        return info


class FastbpTwin(FastbpFit):
    """fastbp's NumPy twin (``backend="numpy"``), through the same ``fit``."""

    backend = "numpy"


class FastbpStepLoop(FastbpFit):
    """A Python loop of the optimizer's ``train_step`` over the mini-batches (compiled backend)."""

    def prepare(self, X, Y):
        B = self.w.batch
        self.batches = [(X[i:i + B], Y[i:i + B]) for i in range(0, len(X), B)]
        self.n = len(X)

    def epoch(self):
        step = self.opt.train_step
        total = 0.0
        for xb, yb in self.batches:
            total += step(xb, yb) * len(xb)
        return total / self.n


# --------------------------------------------------------------------------------------------------------
# PyTorch eager
# --------------------------------------------------------------------------------------------------------

class Torch:
    """``nn.Sequential`` of ``nn.Linear`` + activations, ``optim.SGD``, eager, 2 threads."""

    def __init__(self, w):
        try:
            import torch
        except ImportError as exc:
            raise NotInstalled(f"import torch failed: {exc}") from exc
        self.torch = torch
        torch.set_num_threads(int(os.environ.get("FASTBP_BENCH_TORCH_THREADS", "2")))
        self.w = w
        self.tdtype = getattr(torch, w.dtype)
        acts = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "identity": None}
        layers = []
        for n_in, n_out, act in zip(w.sizes[:-1], w.sizes[1:], w.activations):
            layers.append(torch.nn.Linear(n_in, n_out, dtype=self.tdtype))
            if acts[act] is not None:
                layers.append(acts[act]())
        self.model = torch.nn.Sequential(*layers)
        self.linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        self.opt = None
        if w.loss == "mse":
            self.loss_fn = torch.nn.MSELoss()
        else:  # half_sse: (1/B) sum_b 0.5 sum_k (y - yhat)^2
            self.loss_fn = lambda out, y: ((out - y) ** 2).sum() / (2 * out.shape[0])

    def load(self, weights, biases):
        with self.torch.no_grad():
            for lin, W, b in zip(self.linears, weights, biases):
                lin.weight.copy_(self.torch.from_numpy(np.asarray(W, dtype=self.w.dtype)))
                lin.bias.copy_(self.torch.from_numpy(np.asarray(b, dtype=self.w.dtype)))
        optim = self.torch.optim
        self.opt = (optim.Adam(self.model.parameters(), lr=ADAM_LR) if OPTIMIZER == "adam"
                    else optim.SGD(self.model.parameters(), lr=self.w.lr))

    def prepare(self, X, Y):
        Xt, Yt = self.torch.from_numpy(X), self.torch.from_numpy(Y)
        B = self.w.batch
        self.batches = [(Xt[i:i + B], Yt[i:i + B]) for i in range(0, len(X), B)]
        self.n = len(X)

    def epoch(self):
        model, opt, loss_fn = self.model, self.opt, self.loss_fn
        total = 0.0
        for xb, yb in self.batches:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        return total / self.n

    def info(self):
        t = self.torch
        return {"torch_version": t.__version__, "torch_num_threads": t.get_num_threads(),
                "torch_num_interop_threads": t.get_num_interop_threads(),
                "torch_parallel_info": t.__config__.parallel_info().strip().splitlines()[:8]}


# --------------------------------------------------------------------------------------------------------
# JAX: one jit-compiled epoch, a lax.scan over the mini-batches
# --------------------------------------------------------------------------------------------------------

class Jax:
    """``jax.jit`` of a whole epoch as ``lax.scan`` over the mini-batches; compile time reported apart."""

    def __init__(self, w):
        try:
            import jax
        except ImportError as exc:
            raise NotInstalled(f"import jax failed: {exc}") from exc
        jax.config.update("jax_enable_x64", w.dtype == "float64")
        import jax.numpy as jnp
        self.jax, self.jnp, self.w = jax, jnp, w
        acts = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "identity": lambda z: z}
        fns = [acts[a] for a in w.activations]
        lr = w.lr

        def loss_fn(params, xb, yb):
            a = xb
            for (W, b), f in zip(params, fns):
                a = f(a @ W.T + b)
            d = a - yb
            if w.loss == "mse":
                return jnp.mean(d * d)
            return jnp.sum(d * d) / (2 * xb.shape[0])

        if OPTIMIZER == "adam":
            try:
                import optax
            except ImportError as exc:
                raise NotInstalled(f"import optax failed: {exc}") from exc
            tx = optax.adam(ADAM_LR)
        else:
            tx = None
        self.tx = tx

        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
            if tx is None:
                params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
            else:
                updates, opt_state = tx.update(grads, opt_state, params)
                params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
            return (params, opt_state), loss

        def epoch(carry, Xb, Yb):
            carry, losses = jax.lax.scan(step, carry, (Xb, Yb))
            return carry, jnp.mean(losses)

        self.epoch_fn = jax.jit(epoch, donate_argnums=0)
        self.compile_s = []

    def load(self, weights, biases):
        dt = self.w.dtype
        params = [(self.jnp.asarray(np.asarray(W, dtype=dt)), self.jnp.asarray(np.asarray(b, dtype=dt)))
                  for W, b in zip(weights, biases)]
        self.params = (params, None if self.tx is None else self.tx.init(params))

    def prepare(self, X, Y):
        B = self.w.batch
        nb = len(X) // B
        self.Xb = self.jnp.asarray(X[:nb * B].reshape(nb, B, X.shape[1]))
        self.Yb = self.jnp.asarray(Y[:nb * B].reshape(nb, B, Y.shape[1]))
        t0 = _clock()
        self.compiled = self.epoch_fn.lower(self.params, self.Xb, self.Yb).compile()
        self.compile_s.append(_clock() - t0)

    def epoch(self):
        self.params, loss = self.compiled(self.params, self.Xb, self.Yb)
        return float(loss)  # blocks until the epoch is done

    def info(self):
        return {"jax_version": self.jax.__version__, "jax_devices": [str(d) for d in self.jax.devices()],
                "jax_x64": bool(self.jax.config.jax_enable_x64), "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                "compile_s": [round(c, 4) for c in self.compile_s]}


# --------------------------------------------------------------------------------------------------------
# FANN (fann2, double precision), incremental training
# --------------------------------------------------------------------------------------------------------

class Fann:
    """FANN 2.2 through fann2: ``FANN_TRAIN_INCREMENTAL`` (one update per example), batch-1 workloads only.

    Matching fastbp's updates: FANN's sigmoid is ``1/(1+exp(-2 s z))``, so steepness 0.5 is the logistic;
    linear steepness 1 is the identity; FANN has no ReLU, so a hidden ReLU becomes ``LINEAR_PIECE``
    (``clip(z, 0, 1)``, derivative 1: the same cost, NOT the same function: its losses are not comparable).
    The error function is set to linear (FANN's default, tanh, distorts the error). FANN's update is
    ``w += lr * (y - yhat) * f' * input``, the gradient of ``0.5 * sum_k (y_k - yhat_k)^2``: that is
    fastbp's half_sse at batch 1 (same lr); for mse (``mean_k``, derivative ``2/K``) the lr is scaled by
    ``2/K``. FANN always computes in double, whatever the workload's dtype. It also clips the output of a
    sigmoid to [0.01, 0.99], and of a tanh (SIGMOID_SYMMETRIC) to [-0.98, 0.98], when it computes their
    derivatives (fann_activation_derived): where hidden units saturate its losses drift from the others'.
    """

    def __init__(self, w):
        if OPTIMIZER != "sgd":
            raise NotApplicable("FANN trains with its own rules, not Adam")
        try:
            from fann2 import libfann
        except ImportError as exc:
            raise NotInstalled(f"import fann2 failed: {exc}") from exc
        if w.batch != 1:
            raise NotApplicable("FANN's incremental training is batch 1; mini-batches are not FANN's mode")
        self.lib, self.w = libfann, w
        ann = libfann.neural_net()
        ann.create_standard_array(list(w.sizes))
        ann.set_training_algorithm(libfann.TRAIN_INCREMENTAL)
        ann.set_train_error_function(libfann.ERRORFUNC_LINEAR)
        ann.set_learning_momentum(0.0)
        K = w.sizes[-1]
        self.lr = w.lr if w.loss == "half_sse" else w.lr * 2.0 / K
        ann.set_learning_rate(self.lr)
        self.stand_in = False
        for layer, act in enumerate(w.activations, start=1):
            if act == "sigmoid":
                func, steep = libfann.SIGMOID, 0.5
            elif act == "identity":
                func, steep = libfann.LINEAR, 1.0
            elif act == "relu":
                func, steep = libfann.LINEAR_PIECE, 1.0
                self.stand_in = True
            elif act == "tanh":
                func, steep = libfann.SIGMOID_SYMMETRIC, 1.0
            ann.set_activation_function_layer(func, layer)
            ann.set_activation_steepness_layer(steep, layer)
        self.ann = ann
        self.data = None

    def load(self, weights, biases):
        # Neurons are numbered layer after layer, each layer's bias neuron last.
        starts, pos = [], 0
        for n in self.w.sizes:
            starts.append(pos)
            pos += n + 1
        for layer, (W, b) in enumerate(zip(weights, biases)):
            src, dst = starts[layer], starts[layer + 1]
            n_out, n_in = W.shape
            for j in range(n_out):
                for i in range(n_in):
                    self.ann.set_weight(src + i, dst + j, float(W[j, i]))
                self.ann.set_weight(src + n_in, dst + j, float(b[j]))

    def prepare(self, X, Y):
        if self.data is not None:
            self.data.destroy_train()
        self.data = self.lib.training_data()
        self.data.set_train_data(np.asarray(X, dtype=np.float64).tolist(), np.asarray(Y, dtype=np.float64).tolist())

    def epoch(self):
        mse = self.ann.train_epoch(self.data)  # mean over examples and outputs of (y - yhat)^2, before updates
        K = self.w.sizes[-1]
        return mse if self.w.loss == "mse" else mse * K / 2.0

    def info(self):
        return {"fann": "libdoublefann 2.2 (fann2)", "fann_lr": self.lr, "relu_stand_in": self.stand_in,
                "computes_in": "float64"}


# --------------------------------------------------------------------------------------------------------
# NumPy doing only the matrix products, and the GEMM peak
# --------------------------------------------------------------------------------------------------------

class GemmOnly:
    """Per step only the three matrix products of every layer (forward ``A W^T``, ``dW = D^T A``,
    ``dA = D W``) into preallocated buffers: no bias, activation, loss or update."""

    def __init__(self, w):
        if w.batch == 1:
            raise NotApplicable("GEMM-only loop is for the mini-batch workloads")
        self.w = w
        self.dt = np.dtype(w.dtype)
        B = w.batch
        rng = np.random.default_rng(7)
        self.A = [None] + [np.zeros((B, n), self.dt) for n in w.sizes[1:]]
        self.D = [rng.standard_normal((B, n)).astype(self.dt) for n in w.sizes[1:]]
        self.dA = [np.zeros((B, n), self.dt) for n in w.sizes[:-1]]

    def load(self, weights, biases):
        self.W = [np.ascontiguousarray(W, dtype=self.dt) for W in weights]
        self.dW = [np.zeros_like(W) for W in self.W]

    def prepare(self, X, Y):
        B = self.w.batch
        self.batches = [X[i:i + B] for i in range(0, len(X), B)]

    def epoch(self):
        A, D, dA, W, dW = self.A, self.D, self.dA, self.W, self.dW
        L = len(W)
        mm = np.matmul
        for xb in self.batches:
            A[0] = xb
            for l in range(L):
                mm(A[l], W[l].T, out=A[l + 1])
            for l in range(L - 1, -1, -1):
                mm(D[l].T, A[l], out=dW[l])
                mm(D[l], W[l], out=dA[l])
        return float("nan")


def gemm_peak(dtype: str, n: int = 2048, repeats: int = 5):
    """GFLOP/s of numpy's n x n matrix product (best and median of ``repeats`` after one warm-up)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = _clock()
        np.matmul(a, b, out=c)
        times.append(_clock() - t0)
    flops = 2.0 * n ** 3
    return {"n": n, "gflops_best": flops / min(times) / 1e9, "gflops_median": flops / statistics.median(times) / 1e9,
            "times_s": times}


PEERS = {
    "fastbp-fit": FastbpFit,
    "fastbp-step": FastbpStepLoop,
    "numpy-twin": FastbpTwin,
    "torch": Torch,
    "jax": Jax,
    "fann": Fann,
    "gemm-only": GemmOnly,
}


# --------------------------------------------------------------------------------------------------------
# Environment report
# --------------------------------------------------------------------------------------------------------

def env_info():
    info = {"python": sys.executable, "python_version": platform.python_version(), "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FASTBP_BACKEND",
                                                    "FASTBP_SMALL_GEMM")
                    if os.environ.get(k) is not None}}
    try:
        import resource
        info["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    except (ImportError, OSError):
        pass
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads", "prefix")}
            for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


# --------------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------------

def measure(peer_name, w, epochs, target_s, check=True):
    peer = PEERS[peer_name](w)
    W0, b0 = wl.initial_params(w, np.float64)
    out = {"peer": peer_name, "workload": w.name, "status": "ok", "optimizer": OPTIMIZER}

    # 1. Check run: same start, same data, same updates for every peer.
    n = wl.round_examples(w, w.n_check)
    X, Y = wl.data(w, n)
    peer.load(W0, b0)
    peer.prepare(X, Y)
    t0 = _clock()
    l1 = peer.epoch()
    t1 = _clock()
    l2 = peer.epoch()
    t2 = _clock()
    out["check"] = {"n": n, "epoch_losses": [l1, l2]}
    rate = n / max(t2 - t1, 1e-9)

    # 2. Calibrate the number of examples so that one epoch takes about target_s (the check epoch may be
    #    too short to time: grow the prefix tenfold until an epoch lasts a fifth of the target).
    t = t2 - t1
    while t < 0.2 * target_s and n < w.n_full:
        n = wl.round_examples(w, n * 10)
        X, Y = wl.data(w, n)
        peer.prepare(X, Y)
        peer.epoch()
        t0 = _clock()
        peer.epoch()
        t = _clock() - t0
        rate = n / max(t, 1e-9)
    # At least the check run's size, so that a peer slowed down by a busy machine still times whole epochs
    # of a fair number of mini-batches.
    n = wl.round_examples(w, max(rate * target_s, w.n_check))

    # 3. Timed run from the initial weights: one warm-up epoch, then `epochs` timed ones. If the epochs came
    #    out much shorter than the target (the calibration epoch was slowed down by a busy machine or a cold
    #    start), grow the data and time again, at most twice.
    for attempt in range(3):
        X, Y = wl.data(w, n)
        peer.load(W0, b0)
        peer.prepare(X, Y)
        peer.epoch()
        times, cpu_times, losses = [], [], []
        for _ in range(epochs):
            c0, t0 = time.process_time(), _clock()
            loss = peer.epoch()
            times.append(_clock() - t0)
            cpu_times.append(time.process_time() - c0)
            losses.append(loss)
        med = statistics.median(times)
        grown = wl.round_examples(w, n * target_s / max(med, 1e-9))
        if med >= 0.3 * target_s or grown <= n or attempt == 2:
            break
        n = grown
    out["timed_attempts"] = attempt + 1
    # CPU time of the whole process (every thread): on a shared machine it counts only this peer's work,
    # where wall time also counts the time other processes held the core. It favours no single-threaded
    # peer over a multi-threaded one: a second thread's work is counted too.
    cpu_med = statistics.median(cpu_times)
    out.update({"n": n, "epoch_times_s": times, "median_epoch_s": med, "examples_per_s": n / med,
                "epoch_cpu_times_s": cpu_times, "median_epoch_cpu_s": cpu_med,
                "examples_per_cpu_s": n / max(cpu_med, 1e-9),
                "timed_losses": losses,
                "finite": None if peer_name == "gemm-only" else bool(np.all(np.isfinite(losses)))})
    out["peer_info"] = peer.info() if hasattr(peer, "info") else {}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, choices=sorted(PEERS) + ["gemm-peak"])
    ap.add_argument("--workload")
    ap.add_argument("--dtype", default="float32", help="gemm-peak only")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=5, help="gemm-peak only")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                    help="the optimizer every peer uses (default: $FASTBP_BENCH_OPTIMIZER, else sgd)")
    args = ap.parse_args(argv)
    global OPTIMIZER
    OPTIMIZER = args.optimizer or OPTIMIZER
    result = {"peer": args.peer, "workload": args.workload, "optimizer": OPTIMIZER}
    try:
        if args.peer == "gemm-peak":
            result.update(status="ok", dtype=args.dtype, **gemm_peak(args.dtype, repeats=args.repeats))
        else:
            result = measure(args.peer, wl.get(args.workload), args.epochs, args.target_s)
    except NotInstalled as exc:
        result.update(status="not installed", why=str(exc))
    except NotApplicable as exc:
        result.update(status="n/a", why=str(exc))
    except Exception as exc:  # report, do not hide: compare.py prints it
        result.update(status="error", why=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    result["env"] = env_info()  # after the run: the BLAS is loaded by then
    print(RESULT_MARK + json.dumps(result, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
