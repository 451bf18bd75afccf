"""``Network``, ``SGD``, ``Gradients``, ``Trace`` and ``History``: the public API, and all input validation.

The backends (``fastbp._core`` and its twin ``fastbp._reference``) trust their inputs; this module checks and
converts every argument first, so that a call either works or raises ``ValueError``/``TypeError`` naming the
argument, and leaves the network unchanged when it raised.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import threading
import time

import numpy as np

from fastbp import _backend, _layout, _threads
from fastbp import _reference
from fastbp._results import Gradients, History, Trace
from fastbp._validation import _as_real_array, _check_bool, _check_int, _check_real, _describe
from fastbp.optimizers import SGD
from fastbp.schedules import make_schedule

_PREDICT_CHUNK = 4096  # rows per chunk in predict/loss: bounds the activation buffers of big inputs


class Network:
    """A multilayer perceptron whose parameters live in one contiguous buffer.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, n_hidden_1, ..., n_out]``: at least two positive integers.
    activations : str or sequence of str
        One name for every layer, or one per layer: ``"identity"``, ``"sigmoid"``, ``"relu"``, ``"tanh"``.
    loss : {"half_sse", "mse", "cross_entropy"}
        ``cross_entropy`` takes logits: the last activation must be ``"identity"``.
    dtype : {"float64", "float32"} or numpy dtype
    seed : int, numpy Generator or None
        Seeds PyTorch's default ``nn.Linear`` initialisation: weights and biases from
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)), layer by layer, weights before biases.
    backend : {"cython", "numpy"} or None
        None takes ``fastbp.BACKEND`` (set by ``FASTBP_BACKEND``, else the compiled kernel when built).

    Attributes
    ----------
    params : ndarray
        Every parameter in one C-contiguous 1-D array: per layer, ``W`` row-major then ``b``.
    weights, biases : tuple of ndarray
        Writable views into ``params``; ``weights[l]`` has shape ``(out, in)`` (PyTorch's layout).
    layer_sizes, activations, loss_name, dtype, backend
        The configuration (``backend`` is the name).
    """

    def __init__(self, layer_sizes, activations, *, loss="mse", dtype="float64", seed=None,
                 backend=None):
        self._configure(layer_sizes, activations, loss, dtype, backend)
        self._allocate()
        self._initialise(seed)

    # -- construction -----------------------------------------------------------------------------------

    def _configure(self, layer_sizes, activations, loss, dtype, backend):
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError(f"layer_sizes must be a sequence of integers such as [2, 3, 1]; got "
                            f"{_describe(layer_sizes)}")
        if isinstance(layer_sizes, np.ndarray) and layer_sizes.ndim != 1:
            raise ValueError(f"layer_sizes must be one-dimensional; got {_describe(layer_sizes)}")
        sizes = list(layer_sizes)
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least two entries [n_in, ..., n_out]; got {sizes!r}")
        sizes = tuple(_check_int(size, f"layer_sizes[{index}]", 1) for index, size in enumerate(sizes))
        n_layers = len(sizes) - 1

        if isinstance(activations, str):
            names = (activations,) * n_layers
        elif isinstance(activations, (list, tuple)) or (isinstance(activations, np.ndarray)
                                                        and activations.ndim == 1):
            names = tuple(activations)
            if len(names) != n_layers:
                raise ValueError(f"activations must have one name per layer (len(layer_sizes) - 1 = "
                                 f"{n_layers}); got {len(names)}: {list(names)!r}")
        else:
            raise TypeError(f"activations must be a name or a list of names; got {_describe(activations)}")
        for index, name in enumerate(names):
            if not isinstance(name, str) or name not in _layout.ACTIVATION_CODES:
                raise ValueError(f"activations[{index}] must be one of {_layout.ACTIVATIONS!r}; got "
                                 f"{name!r}")
        names = tuple(str(name) for name in names)

        if not isinstance(loss, str) or loss not in _layout.LOSS_CODES:
            raise ValueError(f"loss must be one of {_layout.LOSSES!r}; got {loss!r}")
        if loss == "cross_entropy" and names[-1] != "identity":
            raise ValueError(f"loss='cross_entropy' applies the softmax itself, so the last activation must "
                             f"be 'identity' (logits); got activations[{n_layers - 1}] = {names[-1]!r}")

        try:
            resolved = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64; got {_describe(dtype)}") from None
        if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64; got {resolved}")

        if backend is None:
            import fastbp
            backend = fastbp.BACKEND
        _backend.check_name(backend)
        module = _backend.load_backend(backend)

        self._layer_sizes = sizes
        self._activations = names
        self._loss_name = loss
        self._dtype = resolved
        self._backend = backend
        self._module = module
        self._activation_codes = tuple(_layout.ACTIVATION_CODES[name] for name in names)
        self._loss_code = _layout.LOSS_CODES[loss]
        self._busy = threading.Lock()
        self._busy_owner = None  # the thread holding _busy (a callback of its own fit may read params)
        self._writes = 0  # entries into and exits from _busy: odd while held (save's consistency check)
        self._local = threading.local()

    def _allocate(self):
        offsets, total = _layout.param_offsets(self.layer_sizes)
        try:
            self._params = np.zeros(total, dtype=self.dtype)
        except (MemoryError, ValueError) as error:
            raise ValueError(f"layer_sizes {list(self.layer_sizes)} needs {total} parameters, which could "
                             f"not be allocated ({error})") from None
        views = _reference.layer_views(self.layer_sizes, self.params)
        self._weights = tuple(W for W, _ in views)
        self._biases = tuple(b for _, b in views)

    def _initialise(self, seed):
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            if seed is not None:
                seed = _check_int(seed, "seed", 0)
            rng = np.random.default_rng(seed)
        for W, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(W.shape[1])
            W[...] = rng.uniform(-bound, bound, size=W.shape)
            b[...] = rng.uniform(-bound, bound, size=b.shape)

    # -- copying, pickling ------------------------------------------------------------------------------

    def __getstate__(self):
        return {"layer_sizes": self.layer_sizes, "activations": self.activations, "loss": self.loss_name,
                "dtype": self.dtype.name, "backend": self.backend, "params": self.params.copy()}

    def __setstate__(self, state):
        self._configure(state["layer_sizes"], list(state["activations"]), state["loss"], state["dtype"],
                        state["backend"])
        self._allocate()
        self.params[...] = state["params"]

    def copy(self):
        """An independent network with the same configuration and parameters."""
        clone = Network.__new__(Network)
        clone.__setstate__(self.__getstate__())
        return clone

    def __repr__(self):
        return (f"Network(layer_sizes={list(self.layer_sizes)}, activations={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype={self.dtype.name!r}, backend={self.backend!r})")

    # -- parameters -------------------------------------------------------------------------------------

    # The configuration is read-only: the kernel's workspaces are built from it and trust that it describes
    # the parameter buffer (an assigned layer_sizes made the kernel read and write out of bounds), and the
    # Python side (targets, explain_step, diagnose) reads the same names the kernel was given as codes.
    @property
    def layer_sizes(self):
        """``(n_in, n_hidden_1, ..., n_out)``, fixed at construction."""
        return self._layer_sizes

    @property
    def activations(self):
        """One activation name per layer, fixed at construction."""
        return self._activations

    @property
    def loss_name(self):
        """The loss, fixed at construction."""
        return self._loss_name

    @property
    def dtype(self):
        """The parameters' dtype (float32 or float64), fixed at construction."""
        return self._dtype

    @property
    def backend(self):
        """``"cython"`` or ``"numpy"``, fixed at construction."""
        return self._backend

    @property
    def weights(self):
        """``weights[l]`` of shape ``(out, in)``: writable views into ``params``."""
        return self._weights

    @property
    def biases(self):
        """``biases[l]`` of shape ``(out,)``: writable views into ``params``."""
        return self._biases

    @property
    def params(self):
        """Every parameter in one C-contiguous 1-D array; ``weights`` and ``biases`` are views into it."""
        return self._params

    @params.setter
    def params(self, values):
        # Assignment copies into the existing buffer (checked first), as ``net.params[...] = values`` does:
        # the kernel reads it through raw pointers, so an array of another size or dtype put in its place
        # would be read out of bounds (found by tests/test_robustness.py), and the weights/biases views
        # would go stale.
        array = _as_real_array(values, "params", self.dtype)
        if array.shape != self._params.shape:
            raise ValueError(f"params must have shape {self._params.shape}; got {array.shape}")
        np.copyto(self._params, array)

    @property
    def n_params(self):
        """Total number of parameters."""
        return self.params.size

    def _check_params(self, weights, biases):
        """Validate and convert parameter lists; return converted arrays (nothing is written)."""
        n_layers = len(self.layer_sizes) - 1
        converted = []
        for name, values, shapes in (
                ("weights", weights, [W.shape for W in self.weights]),
                ("biases", biases, [b.shape for b in self.biases])):
            if isinstance(values, (str, bytes, np.ndarray)) or not hasattr(values, "__len__"):
                raise TypeError(f"{name} must be a list with one array per layer; got {_describe(values)}")
            if len(values) != n_layers:
                raise ValueError(f"{name} must have one array per layer ({n_layers}); got {len(values)}")
            arrays = []
            for index, (value, shape) in enumerate(zip(values, shapes)):
                array = _as_real_array(value, f"{name}[{index}]", self.dtype)
                if array.shape != shape:
                    raise ValueError(f"{name}[{index}] must have shape {shape}; got {array.shape}")
                arrays.append(array)
            converted.append(arrays)
        return converted

    def set_params(self, weights, biases):
        """Copy lists of weight and bias arrays into the parameters (shapes and values checked first).

        Parameters
        ----------
        weights : list of array_like
            ``weights[l]`` of shape ``(layer_sizes[l+1], layer_sizes[l])``.
        biases : list of array_like
            ``biases[l]`` of shape ``(layer_sizes[l+1],)``.
        """
        new_weights, new_biases = self._check_params(weights, biases)
        with self._exclusive("set_params"):
            for W, value in zip(self.weights, new_weights):
                W[...] = value
            for b, value in zip(self.biases, new_biases):
                b[...] = value

    def _exclusive(self, what):
        return _Exclusive(self, what)

    # -- input conversion -------------------------------------------------------------------------------

    def _prepare_X(self, X, name="X"):
        """Return ``(X2d, single)``: a C-contiguous ``(n, n_in)`` array and whether one example was given."""
        X = _as_real_array(X, name, self.dtype, self._module.all_finite)
        n_in = self.layer_sizes[0]
        if X.ndim == 1:
            if X.shape[0] != n_in:
                raise ValueError(f"{name} as a single example must have shape ({n_in},) (layer_sizes[0] = "
                                 f"{n_in}); got shape {X.shape}")
            return X.reshape(1, n_in), True
        if X.ndim != 2:
            raise ValueError(f"{name} must have shape (n, {n_in}) or ({n_in},); got shape {X.shape}")
        if X.shape[1] != n_in:
            raise ValueError(f"{name} must have shape (n, {n_in}) (layer_sizes[0] = {n_in}); got shape "
                             f"{X.shape}")
        return X, False

    def _prepare_Y(self, Y, n, single, name="Y"):
        """Return a C-contiguous float ``(n, n_out)`` target matrix (class indices turned one-hot)."""
        n_out = self.layer_sizes[-1]
        if self.loss_name == "cross_entropy":
            return self._prepare_classes(Y, n, single, name)
        Y = _as_real_array(Y, name, self.dtype, self._module.all_finite)
        if single:
            if Y.shape not in ((n_out,),) and not (n_out == 1 and Y.ndim == 0):
                raise ValueError(f"{name} for a single example must have shape ({n_out},) (layer_sizes[-1] "
                                 f"= {n_out}); got shape {Y.shape}")
            return Y.reshape(1, n_out)
        if Y.ndim <= 1 and n_out == 1:
            Y = Y.reshape(-1, 1)  # a column of targets given flat, as scikit-learn users write it
        if Y.ndim != 2 or Y.shape[1] != n_out:
            raise ValueError(f"{name} must have shape (n, {n_out}) (layer_sizes[-1] = {n_out}); got shape "
                             f"{Y.shape}")
        if Y.shape[0] != n:
            raise ValueError(f"{name} must have one row per example of X ({n}); got {Y.shape[0]} rows")
        return Y

    def _prepare_classes(self, Y, n, single, name):
        n_classes = self.layer_sizes[-1]
        if not isinstance(Y, np.ndarray):
            try:
                Y = np.asarray(Y)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{name} must be class indices or probability rows; got "
                                 f"{_describe(Y)} ({error})") from None
        index_shape = () if single else (n,)
        if Y.ndim == len(index_shape):
            if Y.dtype.kind == "b" or Y.dtype.kind not in "fiu":
                raise TypeError(f"{name} as class indices must be integers; got dtype {Y.dtype}")
            if Y.shape != index_shape:
                raise ValueError(f"{name} must have one class index per example of X ({n}); got shape "
                                 f"{Y.shape}")
            with np.errstate(invalid="ignore"):
                integral = np.isfinite(Y).all() and (Y == np.round(Y)).all() if Y.dtype.kind == "f" else True
            if not integral:
                raise ValueError(f"{name} as class indices must hold whole numbers; got non-integer values")
            if Y.size and (Y.min() < 0 or Y.max() >= n_classes):
                raise ValueError(f"{name} class indices must lie in [0, {n_classes - 1}] (layer_sizes[-1] = "
                                 f"{n_classes} classes); got values from {Y.min()} to {Y.max()}")
            one_hot = np.zeros((n, n_classes), dtype=self.dtype)
            one_hot[np.arange(n), Y.reshape(n).astype(np.intp)] = 1
            return one_hot
        rows = _as_real_array(Y, name, self.dtype)
        expected = (n_classes,) if single else (n, n_classes)
        if rows.shape != expected:
            raise ValueError(f"{name} for cross_entropy must be class indices of shape {index_shape} or "
                             f"probability rows of shape {expected}; got shape {rows.shape}")
        if (rows < 0).any():
            raise ValueError(f"{name} probability rows must be non-negative; got a minimum of {rows.min()}")
        return rows.reshape(n, n_classes)

    def _prepare(self, X, Y, allow_empty=False):
        X2, single = self._prepare_X(X)
        Y2 = self._prepare_Y(Y, X2.shape[0], single)
        if X2.shape[0] == 0 and not allow_empty:
            raise ValueError("X must hold at least one example; got 0 rows")
        return X2, Y2, single

    # -- workspaces -------------------------------------------------------------------------------------

    def _workspace(self, max_batch):
        """A workspace of this layout for up to ``max_batch`` rows, cached per thread."""
        cached = getattr(self._local, "workspace", None)
        if cached is None or cached.max_batch < max_batch:
            cached = self._module.Workspace(self.layer_sizes, self._activation_codes, self._loss_code,
                                            self.dtype, max_batch)
            self._local.workspace = cached
        return cached

    def _new_workspace(self, max_batch):
        return self._module.Workspace(self.layer_sizes, self._activation_codes, self._loss_code, self.dtype,
                                      max_batch)

    # -- evaluation -------------------------------------------------------------------------------------

    def predict(self, X):
        """The network's output.

        Parameters
        ----------
        X : array_like, shape (n, n_in) or (n_in,)

        Returns
        -------
        ndarray of shape (n, n_out), or (n_out,) for a single example
            For ``cross_entropy`` these are the logits.
        """
        X2, single = self._prepare_X(X)
        n = X2.shape[0]
        out = np.empty((n, self.layer_sizes[-1]), dtype=self.dtype)
        if n:
            ws = self._workspace(min(n, _PREDICT_CHUNK))
            self._module.predict(ws, self.params, X2, out)
        return out[0] if single else out

    def _loss_prepared(self, X2, Y2):
        out = np.empty((X2.shape[0], self.layer_sizes[-1]), dtype=self.dtype)
        self._module.predict(self._workspace(min(X2.shape[0], _PREDICT_CHUNK)), self.params, X2, out)
        with np.errstate(over="ignore", invalid="ignore"):  # a loss beyond float's range is inf, silently
            if self.loss_name == "cross_entropy":
                return _reference.cross_entropy(out, Y2)[0]
            return _reference.LOSS_FUNCTIONS[self.loss_name](out, Y2)[0]

    def loss(self, X, Y):
        """The loss (a float) over the batch ``X``, ``Y`` (a single example is a batch of one).

        Parameters
        ----------
        X : array_like, shape (n, n_in) or (n_in,)
        Y : array_like
            Targets of shape (n, n_out) (or (n,) when n_out is 1); for ``cross_entropy`` class indices of
            shape (n,) or probability rows (n, n_out).
        """
        X2, Y2, _ = self._prepare(X, Y)
        return float(self._loss_prepared(X2, Y2))

    def gradients(self, X, Y):
        """The gradient of the batch loss.

        Returns
        -------
        Gradients
            ``.loss`` and ``.weights``/``.biases`` lists shaped like the parameters (fresh copies).
        """
        X2, Y2, _ = self._prepare(X, Y)
        ws = self._workspace(X2.shape[0])
        loss = self._module.loss_and_gradient(ws, self.params, X2, Y2)
        flat = ws.grad.copy()
        views = _reference.layer_views(self.layer_sizes, flat)
        return Gradients(loss, [W for W, _ in views], [b for _, b in views])

    def trace(self, X, Y):
        """Every intermediate of one forward and backward pass (what a hand calculation shows).

        Returns
        -------
        Trace
            Per-layer arrays are 1-D when a single example ``x`` of shape ``(n_in,)`` is given.
        """
        X2, Y2, single = self._prepare(X, Y)
        # Computed by the readable twin on either backend: it exposes every intermediate.
        ws = _reference.Workspace(self.layer_sizes, self._activation_codes, self._loss_code, self.dtype,
                                  X2.shape[0])
        result = _reference.trace(ws, self.params, X2, Y2)
        if single:
            for key in ("pre_activations", "activations", "deltas"):
                result[key] = [array[0] for array in result[key]]
            result["output"] = result["output"][0]
        return Trace(**result)

    # -- training ---------------------------------------------------------------------------------------

    def fit(self, X, Y, *, epochs=1, batch_size=32, lr=0.01, optimizer=None, shuffle=True, seed=None,
            progress=False, record_gradients=False, verbose=0, validation_data=None, validation_split=0.0,
            callbacks=None, early_stopping=False, patience=5, min_delta=0.0, restore_best_weights=True,
            lr_schedule=None, threads=None):
        """Train by mini-batch SGD; the loop over mini-batches of an epoch runs inside the backend.

        Parameters
        ----------
        X, Y : array_like
            Training data, as for :meth:`loss` (at least one example).
        epochs : int
            Passes over the data (0 trains nothing).
        batch_size : int
            Rows per update; the last batch of an epoch is smaller when it does not divide ``n``.
        lr : float
            Learning rate of the plain SGD used when ``optimizer`` is None (ignored otherwise).
        optimizer : SGD or None
            An ``SGD`` on this network, to train with momentum, weight decay or Nesterov and to keep its
            velocity across calls.
        shuffle : bool
            Visit the examples in a fresh permutation each epoch (drawn from ``seed``), else in order.
        seed : int or None
            Makes the shuffling reproducible; None draws a random seed.
        progress : bool
            Show a progress bar (tqdm if installed, else one line per epoch on stderr).
        record_gradients : bool
            Record, after each epoch, the norm of each layer's weight gradient over the whole training set
            in ``History.gradient_norms``.
        verbose : int
            0 silent, 1 like ``progress=True``, 2 one line per epoch.
        validation_data : (X_val, Y_val) or None
            Evaluated after each epoch into ``History.val_loss``.
        validation_split : float
            Fraction in [0, 1) of the rows (the last ones, before shuffling) held out for validation.
        callbacks : list of callables or None
            Each is called ``cb(epoch, logs)`` (or ``cb.on_epoch_end(epoch, logs)``) after every epoch;
            ``logs`` has ``loss``, ``val_loss`` (when available), ``lr``, ``epoch_time``. Returning True
            stops training.
        early_stopping : bool
            Stop when the monitored loss (validation loss if any, else training loss) has not improved by
            more than ``min_delta`` for ``patience`` epochs; with ``restore_best_weights`` the parameters of
            the best epoch are restored.
        lr_schedule : callable, "step", "invscaling" or None
            ``lr_schedule(epoch) -> lr`` before each epoch; the strings use :class:`StepDecay` /
            :class:`InverseScaling` starting from the optimizer's learning rate.
        threads : int or None
            At most this many BLAS threads during this call (``fastbp.num_threads``; needs threadpoolctl);
            None leaves the process's setting. ``threads=1`` is faster on a machine whose other cores are
            busy. Batch size 1 uses no BLAS.

        Returns
        -------
        History

        Raises
        ------
        FloatingPointError
            When the loss or a parameter becomes NaN or infinite; names the epoch and batch (attributes
            ``epoch``, ``batch``, 0-based), restores the parameters to their last finite state and carries
            the History so far as ``history``.
        KeyboardInterrupt
            On Ctrl-C, with the parameters as after the last completed update.
        """
        # ---- validate everything before touching the network ----
        epochs = _check_int(epochs, "epochs", 0)
        batch_size = _check_int(batch_size, "batch_size", 1)
        shuffle = _check_bool(shuffle, "shuffle")
        progress = _check_bool(progress, "progress")
        record_gradients = _check_bool(record_gradients, "record_gradients")
        verbose = _check_int(verbose, "verbose", 0)
        early_stopping = _check_bool(early_stopping, "early_stopping")
        patience = _check_int(patience, "patience", 1)
        min_delta = _check_real(min_delta, "min_delta", non_negative=True)
        restore_best_weights = _check_bool(restore_best_weights, "restore_best_weights")
        validation_split = _check_real(validation_split, "validation_split", non_negative=True)
        if validation_split >= 1:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
        if seed is None:
            seed = secrets.randbits(63)
        else:
            seed = _check_int(seed, "seed", 0)
        if optimizer is None:
            lr = _check_real(lr, "lr", positive=True)
        elif not isinstance(optimizer, SGD):
            raise TypeError(f"optimizer must be a fastbp.SGD or None; got {_describe(optimizer)}")
        elif optimizer.net is not self:
            raise ValueError("optimizer was built for another network; create SGD(net, ...) for this one")
        limit_threads = (contextlib.nullcontext() if threads is None
                         else _threads.num_threads(_threads._check_threads(threads, "threads")))
        callbacks = [] if callbacks is None else list(callbacks)
        for index, callback in enumerate(callbacks):
            if not (callable(callback) or callable(getattr(callback, "on_epoch_end", None))):
                raise TypeError(f"callbacks[{index}] must be callable or have on_epoch_end; got "
                                f"{_describe(callback)}")

        X2, Y2, single = self._prepare(X, Y)
        if single:
            raise ValueError(f"fit needs X of shape (n, {self.layer_sizes[0]}); got a single example of "
                             f"shape {X2.shape[1:]}")
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError(f"validation_data must be a pair (X_val, Y_val); got "
                                f"{_describe(validation_data)}")
            Xv, Yv, _ = self._prepare(*validation_data)
            validation = (Xv, Yv)
        elif validation_split > 0:
            n_val = int(round(X2.shape[0] * validation_split))
            if n_val < 1 or n_val >= X2.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves {n_val} validation rows out of "
                                 f"{X2.shape[0]}; need at least one for each side")
            validation = (X2[-n_val:], Y2[-n_val:])
            X2, Y2 = X2[:-n_val], Y2[:-n_val]

        optimizer = SGD(self, lr) if optimizer is None else optimizer
        schedule = make_schedule(lr_schedule, optimizer.lr)
        with self._exclusive("fit"), limit_threads:
            return self._fit_loop(X2, Y2, epochs, batch_size, optimizer, shuffle, seed, progress, verbose,
                                  record_gradients, validation, callbacks, early_stopping, patience,
                                  min_delta, restore_best_weights, schedule)

    def _fit_loop(self, X, Y, epochs, batch_size, optimizer, shuffle, seed, progress, verbose,
                  record_gradients, validation, callbacks, early_stopping, patience, min_delta,
                  restore_best_weights, schedule):
        n = X.shape[0]
        batch_size = min(batch_size, n)  # the same batches; and a huge int would overflow the kernel's size_t
        module = self._module
        ws = self._new_workspace(batch_size)
        params, velocity = self.params, optimizer.velocity
        params_start, velocity_start = np.empty_like(params), np.empty_like(velocity)
        history = History()
        reporter = _Reporter(epochs, n, progress or verbose == 1, verbose)
        best_loss, best_params, epochs_without_improvement = math.inf, None, 0
        try:
            for epoch in range(epochs):
                if schedule is not None:
                    optimizer.lr = schedule(epoch)
                lr = optimizer.lr
                # The start-of-epoch state: the fallback when divergence must be unwound.
                np.copyto(params_start, params)
                np.copyto(velocity_start, velocity)
                key = _layout.epoch_key(seed, epoch) if shuffle else -1
                started = time.perf_counter()
                loss_sum, done, status = module.train_epoch(
                    ws, params, X, Y, batch_size, lr, optimizer.momentum, optimizer.weight_decay,
                    optimizer.nesterov, velocity, key)
                elapsed = time.perf_counter() - started
                if status == 2:
                    raise KeyboardInterrupt
                if status == 1 or not module.all_finite(params):
                    batch, what = self._unwind(ws, optimizer, X, Y, batch_size, lr, key, params_start,
                                               velocity_start, status, done)
                    error = FloatingPointError(
                        f"training diverged: {what} became NaN or infinite at epoch {epoch + 1} of {epochs}, "
                        f"batch {batch + 1} of {-(-n // batch_size)} (lr={lr}); the parameters are restored "
                        "to their last finite values")
                    error.epoch, error.batch, error.history = epoch, batch, history
                    raise error
                history.loss.append(loss_sum / n)
                history.epoch_time.append(elapsed)
                history.lr.append(lr)
                logs = {"loss": history.loss[-1], "lr": lr, "epoch_time": elapsed}
                if record_gradients:
                    history.gradient_norms.append(self._gradient_norms(ws, X, Y))
                if validation is not None:
                    history.val_loss.append(float(self._loss_prepared(*validation)))
                    logs["val_loss"] = history.val_loss[-1]
                reporter.epoch(epoch, logs, n / elapsed if elapsed > 0 else math.inf)
                stop = False
                for callback in callbacks:
                    hook = getattr(callback, "on_epoch_end", None)
                    result = hook(epoch, dict(logs)) if callable(hook) else callback(epoch, dict(logs))
                    stop = stop or result is True
                if early_stopping:
                    monitored = logs.get("val_loss", logs["loss"])
                    if monitored < best_loss - min_delta:
                        best_loss, epochs_without_improvement = monitored, 0
                        if restore_best_weights:
                            best_params = params.copy()
                    else:
                        epochs_without_improvement += 1
                        if epochs_without_improvement >= patience:
                            stop = True
                if stop:
                    history.stopped_epoch = epoch
                    break
            if early_stopping and restore_best_weights and best_params is not None:
                np.copyto(params, best_params)
        finally:
            reporter.close()
        return history

    def _unwind(self, ws, optimizer, X, Y, batch_size, lr, key, params_start, velocity_start, status, done):
        """After divergence: find the first bad batch and leave the parameters as just before it.

        Replays the epoch from its starting state one batch at a time (the backend is deterministic, so
        the replay makes the same updates). Returns ``(batch index, what diverged)``.
        """
        module, params, velocity = self._module, self.params, optimizer.velocity
        if status == 1 and np.isfinite(params).all():
            return done // batch_size, "the loss"      # stopped before updating: already the last finite state
        np.copyto(params, params_start)
        np.copyto(velocity, velocity_start)
        n = X.shape[0]
        order = _layout.permutation(n, key) if key >= 0 else np.arange(n)
        before, velocity_before = np.empty_like(params), np.empty_like(velocity)
        for batch, start in enumerate(range(0, n, batch_size)):
            rows = order[start:start + batch_size]
            X_batch, Y_batch = np.ascontiguousarray(X[rows]), np.ascontiguousarray(Y[rows])
            np.copyto(before, params)
            np.copyto(velocity_before, velocity)
            _, _, replay_status = module.train_epoch(
                ws, params, X_batch, Y_batch, batch_size, lr, optimizer.momentum, optimizer.weight_decay,
                optimizer.nesterov, velocity, -1)
            if replay_status == 1:
                return batch, "the loss"
            if not np.isfinite(params).all():
                np.copyto(params, before)
                np.copyto(velocity, velocity_before)
                return batch, "a parameter"
        return done // batch_size, "the loss"  # not reproduced: the start-of-epoch state is kept

    def _gradient_norms(self, ws, X, Y):
        """Per-layer norm of the weight gradient of the loss over all of ``X``, chunked by the workspace."""
        n = X.shape[0]
        total = np.zeros(ws.grad.shape, dtype=np.float64)
        for start in range(0, n, ws.max_batch):
            X_chunk, Y_chunk = X[start:start + ws.max_batch], Y[start:start + ws.max_batch]
            self._module.loss_and_gradient(ws, self.params, X_chunk, Y_chunk)
            total += ws.grad * (X_chunk.shape[0] / n)  # the batch losses are means: weight by rows
        return [float(np.linalg.norm(W)) for W, _ in _reference.layer_views(self.layer_sizes, total)]

    # -- persistence and interop ------------------------------------------------------------------------

    def save(self, path):
        """Write the network to ``path`` as ``.npz`` (no pickle), atomically; see :meth:`load`."""
        from fastbp import _io
        _io.save(self, path)

    @classmethod
    def load(cls, path, *, backend=None):
        """Read a network written by :meth:`save`; every parameter is restored bit for bit."""
        from fastbp import _io
        return _io.load(path, backend=backend)

    def to_torch(self):
        """A ``torch.nn.Sequential`` with the same parameters."""
        from fastbp import _torch_interop
        return _torch_interop.to_torch(self)

    @classmethod
    def from_torch(cls, module, *, dtype=None, backend=None, **options):
        """A Network from a ``torch.nn.Sequential`` of ``Linear`` layers and supported activations.

        Extra keyword ``options`` (such as ``loss``) are passed on to ``fastbp._torch_interop.from_torch``.
        """
        from fastbp import _torch_interop
        return _torch_interop.from_torch(module, dtype=dtype, backend=backend, **options)

    def state_dict(self):
        """The parameters under PyTorch's key names (``"0.weight"``, ``"0.bias"``, ...)."""
        from fastbp import _torch_interop
        return _torch_interop.state_dict(self)

    def load_state_dict(self, state_dict):
        """Copy parameters from a PyTorch-style state dict."""
        from fastbp import _torch_interop
        return _torch_interop.load_state_dict(self, state_dict)


class _Exclusive:
    """Non-blocking hold of a network's busy lock: a second writer gets a clear error, not a race."""

    def __init__(self, net, what):
        self.net, self.what = net, what

    def __enter__(self):
        if not self.net._busy.acquire(blocking=False):
            raise RuntimeError(f"{self.what}: this network is being trained or modified by another call "
                               "(fit or train_step in another thread, or from a callback); wait for it "
                               "to finish or train a copy (net.copy())")
        self.net._writes += 1
        self.net._busy_owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self.net._busy_owner = None
        self.net._writes += 1
        self.net._busy.release()
        return False


class _Reporter:
    """Per-epoch progress: tqdm when installed, else one line per epoch on stderr."""

    def __init__(self, epochs, n, bar, verbose):
        self.epochs, self.bar, self.lines = epochs, None, (bar or verbose >= 2)
        if bar and verbose != 2:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr)
                self.lines = False
            except ImportError:
                pass

    def epoch(self, epoch, logs, rate):
        text = f"loss={logs['loss']:.6g}"
        if "val_loss" in logs:
            text += f" val_loss={logs['val_loss']:.6g}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} {rate:,.0f} ex/s")
            self.bar.update(1)
        elif self.lines:
            print(f"epoch {epoch + 1}/{self.epochs}  {text}  {rate:,.0f} examples/s", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
