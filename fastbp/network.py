"""``Network``: the model. Its parameters, its configuration, evaluation, and the door to training.

The backends (``fastbp._core`` and its twin ``fastbp._reference``) trust their inputs; this module checks and
converts every argument first (with ``fastbp._validation``), so that a call either works or raises
``ValueError``/``TypeError`` naming the argument, and leaves the network unchanged when it raised. The
training loop itself lives in ``fastbp._training``; saving and PyTorch conversion in ``fastbp._io`` and
``fastbp._torch_interop``, which hand back plain data that :meth:`Network._from_parts` builds from.
"""

from __future__ import annotations

import math
import secrets
import sys
import threading

import numpy as np

from fastbp import _backend, _io, _metrics, _spec, _threads, _torch_interop, _training
from fastbp import _reference
from fastbp._results import Gradients, Trace
from fastbp._validation import (SparseRows, _as_real_array, _as_sparse_rows, _check_bool, _check_int, _check_real,
                                _describe, _is_sparse, nonfinite_rows_error)
from fastbp.optimizers import LBFGS, SGD, Adam, AdamW, Optimizer, RMSprop, Rprop
from fastbp.schedules import make_schedule

_PREDICT_CHUNK = 4096  # most rows per chunk in predict/loss
_CHUNK_BYTES = 32 * 2**20  # and at most this many bytes of per-row workspace buffers, for wide networks
_INIT_CHUNK_BYTES = 16 * 2**20  # the float64 random draws of the initialisation, per chunk


class Network:
    """A multilayer perceptron whose parameters live in one contiguous buffer.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, n_hidden_1, ..., n_out]``: at least two positive integers.
    activations : str or sequence of str
        One name for every layer, or one per layer: ``"identity"``, ``"sigmoid"``, ``"relu"``, ``"tanh"``.
    loss : {"half_sse", "mse", "cross_entropy", "binary_cross_entropy", "poisson"}
        ``cross_entropy`` (softmax, as ``torch.nn.CrossEntropyLoss``), ``binary_cross_entropy``
        (``torch.nn.BCEWithLogitsLoss``: targets in [0, 1], multilabel allowed) and ``poisson``
        (``torch.nn.PoissonNLLLoss(log_input=True)``: targets >= 0, the output is the log rate) take
        logits: the last activation must be ``"identity"``.
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
            if not isinstance(name, str) or name not in _spec.ACTIVATION_CODES:
                if isinstance(name, str) and name.strip().lower() == "softmax":
                    hint = (" (for a softmax output use loss='cross_entropy' with an 'identity' last layer: "
                            "the loss applies the softmax to the logits)")
                else:
                    hint = _metrics.suggest(name, _spec.ACTIVATIONS)
                raise ValueError(f"activations[{index}] must be one of {_spec.ACTIVATIONS!r}; got "
                                 f"{name!r}{hint}")
        names = tuple(str(name) for name in names)

        if not isinstance(loss, str) or loss not in _spec.LOSS_CODES:
            raise ValueError(f"loss must be one of {_spec.LOSSES!r}; got {loss!r}"
                             f"{_metrics.suggest(loss, _spec.LOSSES)}")
        if loss in _spec.LOGIT_LOSSES and names[-1] != "identity":
            raise ValueError(f"loss={loss!r} takes logits (it applies its own link), so the last activation "
                             f"must be 'identity'; got activations[{n_layers - 1}] = {names[-1]!r}")

        try:
            resolved = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64; got {_describe(dtype)}") from None
        if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64; got {resolved}")

        if backend is None:
            # fastbp.BACKEND read at call time (the package sets it on import; a user may reassign it).
            backend = getattr(sys.modules.get("fastbp"), "BACKEND", None) or _backend.default_backend()
        _backend.check_name(backend)
        module = _backend.load_backend(backend)

        self._layer_sizes = sizes
        self._activations = names
        self._loss_name = loss
        self._dtype = resolved
        self._backend = backend
        self._module = module
        self._activation_codes = tuple(_spec.ACTIVATION_CODES[name] for name in names)
        self._loss_code = _spec.LOSS_CODES[loss]
        self._busy = threading.Lock()
        self._busy_owner = None  # the thread holding _busy (a callback of its own fit may read params)
        self._writes = 0  # entries into and exits from _busy: odd while held (save's consistency check)
        self._local = threading.local()

    def _allocate(self):
        offsets, total = _spec.param_offsets(self.layer_sizes)
        try:
            self._params = _spec.aligned_zeros(total, self.dtype)
        except (MemoryError, ValueError) as error:
            raise ValueError(f"layer_sizes {list(self.layer_sizes)} needs {total} parameters, which could "
                             f"not be allocated ({error})") from None
        views = _spec.layer_views(self.layer_sizes, self.params)
        self._weights = tuple(W for W, _ in views)
        self._biases = tuple(b for _, b in views)

    def _initialise(self, seed):
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            if seed is not None:
                seed = _check_int(seed, "seed", 0)
            rng = np.random.default_rng(seed)
        try:
            for W, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(W.shape[1])
                # Row chunks: a float64 draw as large as a layer may not fit where the layer does. Drawing
                # the same count in pieces gives the same stream, so the values do not depend on the chunks.
                rows = max(1, _INIT_CHUNK_BYTES // (8 * W.shape[1]))
                for start in range(0, W.shape[0], rows):
                    block = W[start:start + rows]
                    block[...] = rng.uniform(-bound, bound, size=block.shape)
                b[...] = rng.uniform(-bound, bound, size=b.shape)
        except MemoryError:
            raise ValueError(f"layer_sizes {list(self.layer_sizes)} needs {self.n_params} parameters; their "
                             "initialisation ran out of memory") from None

    # -- copying, pickling ------------------------------------------------------------------------------

    def __getstate__(self):
        # One consistent copy, as save takes it: never half of a step another thread's fit is making.
        return {"layer_sizes": self.layer_sizes, "activations": self.activations, "loss": self.loss_name,
                "dtype": self.dtype.name, "backend": self.backend, "params": _io._snapshot(self)}

    def __setstate__(self, state):
        self._configure(state["layer_sizes"], list(state["activations"]), state["loss"], state["dtype"],
                        state["backend"])
        self._allocate()
        self.params[...] = state["params"]

    def copy(self, dtype=None):
        """An independent network with the same configuration and parameters.

        Parameters
        ----------
        dtype : {"float64", "float32"}, numpy dtype or None
            The copy's dtype; None keeps this network's. Parameters are converted (rounded to nearest when
            narrowing).

        Notes
        -----
        The parameters are read once, consistently, as :meth:`save` reads them: while another thread trains
        this network, the copy holds a state training really had (between two updates).
        """
        config = self._config()
        if dtype is not None:
            config["dtype"] = dtype
        return type(self)._from_parts(config, _io._snapshot(self), self.backend, check=False)

    def _config(self):
        """The configuration as plain data: what :meth:`_from_parts` takes."""
        return {"layer_sizes": list(self.layer_sizes), "activations": list(self.activations),
                "loss": self.loss_name, "dtype": self.dtype.name}

    @classmethod
    def _from_parts(cls, config, params, backend=None, *, check=True):
        """A network from a configuration dict and a flat parameter buffer (converted and copied).

        The one constructor used by :meth:`load`, :meth:`from_torch` and :meth:`copy`: those modules return
        plain data and never build a Network themselves. ``check=False`` (a copy of a live network) copies
        the values as they are, non-finite ones included, as ``net.params[...] = ...`` would.
        """
        net = cls.__new__(cls)
        net._configure(config["layer_sizes"], list(config["activations"]), config["loss"], config["dtype"],
                       backend)
        net._allocate()
        if check:
            net.params = params
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(net._params, np.asarray(params).reshape(net._params.shape), casting="unsafe")
        return net

    def __repr__(self):
        return (f"Network(layer_sizes={list(self.layer_sizes)}, activations={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype={self.dtype.name!r}, backend={self.backend!r})")

    # -- parameters -------------------------------------------------------------------------------------

    # The configuration is read-only: the kernel's workspaces are built from it and trust that it describes
    # the parameter buffer (an assigned layer_sizes would let the kernel read and write out of bounds), and
    # the Python side (targets, explain_step, diagnose) reads the same names the kernel was given as codes.
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
        # would be read out of bounds, and the weights/biases views would go stale. Refused while fit runs,
        # as set_params is.
        array = _as_real_array(values, "params", self.dtype)
        if array.shape != self._params.shape:
            raise ValueError(f"params must have shape {self._params.shape}; got {array.shape}")
        with self._exclusive("params assignment"):
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

    def _prepare_X(self, X, name="X", check_finite=True):
        """Return ``(X2d, single)``: a C-contiguous ``(n, n_in)`` array and whether one example was given.

        A scipy.sparse matrix or array becomes :class:`~fastbp._validation.SparseRows` (checked CSR rows
        of the net's dtype), which the backend's ``*_sparse`` functions take; it is never densified.
        ``check_finite=False``: a ready dense array is not checked for NaN and infinity (``fit`` has its
        first epoch check it).
        """
        n_in = self.layer_sizes[0]
        if _is_sparse(X):
            return _as_sparse_rows(X, name, self.dtype, n_in, self._module.all_finite), False
        X = _as_real_array(X, name, self.dtype, self._module.all_finite if check_finite else None)
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
            Y = Y.reshape(1, n_out)
            self._check_target_range(Y, name)
            return Y
        if Y.ndim <= 1 and n_out == 1:
            Y = Y.reshape(-1, 1)  # a column of targets given flat, as scikit-learn users write it
        if Y.ndim != 2 or Y.shape[1] != n_out:
            raise ValueError(f"{name} must have shape (n, {n_out}) (layer_sizes[-1] = {n_out}); got shape "
                             f"{Y.shape}")
        if Y.shape[0] != n:
            raise ValueError(f"{name} must have one row per example of X ({n}); got {Y.shape[0]} rows")
        self._check_target_range(Y, name)
        return Y

    def _check_target_range(self, Y, name):
        """binary_cross_entropy takes targets in [0, 1], poisson counts (or rates) >= 0."""
        if Y.size == 0:
            return
        if self.loss_name == "binary_cross_entropy" and (Y.min() < 0 or Y.max() > 1):
            raise ValueError(f"{name} for binary_cross_entropy must lie in [0, 1]; got values from {Y.min()} "
                             f"to {Y.max()}")
        if self.loss_name == "poisson" and Y.min() < 0:
            raise ValueError(f"{name} for poisson must be non-negative; got a minimum of {Y.min()}")

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

    def _prepare_sample_weight(self, sample_weight, n, single=False):
        """None, or a C-contiguous ``(n,)`` array of the net's dtype: finite, >= 0, with a positive sum."""
        if sample_weight is None:
            return None
        weights = _as_real_array(sample_weight, "sample_weight", self.dtype, self._module.all_finite)
        if single and weights.ndim == 0:
            weights = weights.reshape(1)
        if weights.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), one weight per example of X; got shape "
                             f"{weights.shape}")
        if n and weights.min() < 0:
            raise ValueError(f"sample_weight must be non-negative; got a minimum of {weights.min()}")
        if n and not weights.sum(dtype=np.float64) > 0:
            raise ValueError("sample_weight must not be all zero (the weighted mean would be 0/0)")
        return weights

    def _prepare(self, X, Y, allow_empty=False, check_X=True):
        X2, single = self._prepare_X(X, check_finite=check_X)
        Y2 = self._prepare_Y(Y, X2.shape[0], single)
        if X2.shape[0] == 0 and not allow_empty:
            raise ValueError("X must hold at least one example; got 0 rows")
        return X2, Y2, single

    # -- workspaces -------------------------------------------------------------------------------------

    def _workspace(self, max_batch, sparse_input=False):
        """A workspace of this layout for up to ``max_batch`` rows, cached per thread while it is small
        (one for dense input and one, with ``sparse_input``, for the ``*_sparse`` functions).

        One whose per-row buffers exceed ``_CHUNK_BYTES`` (a gradient over many rows) serves the call that
        asked for it and is then freed, so that one large call does not keep its buffers for the life of
        the thread; forward passes are chunked to stay within that bound.
        """
        slot = "sparse_workspace" if sparse_input else "workspace"
        cached = getattr(self._local, slot, None)
        if cached is not None and cached.max_batch >= max_batch:
            return cached
        workspace = self._new_workspace(max_batch, sparse_input)
        if max_batch * self._row_bytes(sparse_input) <= _CHUNK_BYTES:
            setattr(self._local, slot, workspace)
        return workspace

    def _row_bytes(self, sparse_input=False):
        """Workspace bytes per row: each layer's output, two delta rows of the widest layer, the input and
        target rows (the backends' Workspace layout); with ``sparse_input`` neither the input row nor
        deltas as wide as the input."""
        sizes = self.layer_sizes
        if sparse_input:
            return self.dtype.itemsize * (sum(sizes[1:]) + 2 * max(sizes[1:]) + sizes[-1])
        return self.dtype.itemsize * (sum(sizes[1:]) + 2 * max(sizes) + sizes[0] + sizes[-1])

    def _chunk_rows(self, n, sparse_input=False):
        """Rows per chunk for a forward pass over ``n`` rows: at most ``_PREDICT_CHUNK`` rows and
        ``_CHUNK_BYTES`` of workspace."""
        return max(1, min(n, _PREDICT_CHUNK, _CHUNK_BYTES // self._row_bytes(sparse_input)))

    def _new_workspace(self, max_batch, sparse_input=False):
        if sparse_input:
            return self._module.Workspace(self.layer_sizes, self._activation_codes, self._loss_code,
                                          self.dtype, max_batch, sparse_input=True)
        return self._module.Workspace(self.layer_sizes, self._activation_codes, self._loss_code, self.dtype,
                                      max_batch)

    # -- evaluation -------------------------------------------------------------------------------------

    def predict(self, X):
        """The network's output.

        Parameters
        ----------
        X : array_like, shape (n, n_in) or (n_in,), or scipy.sparse matrix or array of shape (n, n_in)
            Sparse input (any format; CSR used as it is, others converted once) is never densified: the
            first layer is computed from the non-zeros.

        Returns
        -------
        ndarray of shape (n, n_out), or (n_out,) for a single example
            For ``cross_entropy`` these are the logits.
        """
        X2, single = self._prepare_X(X)
        out = self._output(X2)
        return out[0] if single else out

    def _output(self, X2):
        """The output for prepared rows, in chunks (see :meth:`_chunk_rows`)."""
        n = X2.shape[0]
        out = np.empty((n, self.layer_sizes[-1]), dtype=self.dtype)
        if n and isinstance(X2, SparseRows):
            self._module.predict_sparse(self._workspace(self._chunk_rows(n, True), True), self.params, X2.data,
                                        X2.indices, X2.indptr, out)
        elif n:
            self._module.predict(self._workspace(self._chunk_rows(n)), self.params, X2, out)
        return out

    def _loss_prepared(self, X2, Y2, sample_weight=None):
        return _metrics.loss(self._output(X2), Y2, self.loss_name, sample_weight)

    def predict_proba(self, X):
        """Probabilities from the output logits: softmax rows for ``cross_entropy``, the elementwise sigmoid
        for ``binary_cross_entropy``.

        Parameters
        ----------
        X : array_like, shape (n, n_in) or (n_in,), or scipy.sparse matrix or array of shape (n, n_in)
            Sparse input (any format; CSR used as it is, others converted once) is never densified: the
            first layer is computed from the non-zeros.

        Returns
        -------
        ndarray of shape (n, n_out), or (n_out,) for a single example
            Softmax rows sum to 1.

        Raises
        ------
        ValueError
            When the network's loss does not define probabilities (it names the loss).
        """
        probability = _spec.PROBABILITY_MAPS.get(self.loss_name)
        if probability is None:
            raise ValueError(f"predict_proba needs loss='cross_entropy' or 'binary_cross_entropy'; this network's "
                             f"loss is {self.loss_name!r}, whose outputs are not probabilities (use predict)")
        X2, single = self._prepare_X(X)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            probabilities = probability(self._output(X2))
        return probabilities[0] if single else probabilities

    def predict_classes(self, X):
        """The predicted class of each example: the index of its largest logit (``cross_entropy``), or
        each label's 0/1 decision, logit > 0 (``binary_cross_entropy``).

        Returns
        -------
        ndarray of int64, shape (n,) (``(n, n_out)`` for binary_cross_entropy), or one example's value
        """
        if self.loss_name not in _metrics.CLASSIFICATION_LOSSES:
            raise ValueError(f"predict_classes needs a classification loss "
                             f"({_metrics.CLASSIFICATION_LOSSES!r}); this network's loss is {self.loss_name!r} "
                             "(use predict)")
        X2, single = self._prepare_X(X)
        classes = _metrics.predicted_classes(self._output(X2), self.loss_name)
        if single:
            return int(classes[0]) if classes.ndim == 1 else classes[0]
        return classes

    def evaluate(self, X, Y, metrics=None):
        """Metrics of the network on a data set.

        Parameters
        ----------
        X, Y : array_like
            As for :meth:`loss`.
        metrics : list of {"loss", "accuracy", "r2"} or None
            None: ``["loss", "accuracy"]`` for ``cross_entropy``, ``["loss", "r2"]`` otherwise. Accuracy
            compares the largest output with the target class; R² is averaged over the outputs as
            ``sklearn.metrics.r2_score``.

        Returns
        -------
        dict of str to float
            ``"loss"`` first (always), then the named metrics.
        """
        names = (_metrics.default_metrics(self.loss_name) if metrics is None
                 else _metrics.check_metrics(metrics, self.loss_name))
        names = ("loss",) + tuple(name for name in names if name != "loss")
        X2, Y2, _ = self._prepare(X, Y)
        return _metrics.compute(names, self._output(X2), Y2, self.loss_name)

    def loss(self, X, Y, sample_weight=None):
        """The loss (a float) over the batch ``X``, ``Y`` (a single example is a batch of one).

        Parameters
        ----------
        X : array_like, shape (n, n_in) or (n_in,), or scipy.sparse matrix or array of shape (n, n_in)
            Sparse input (any format; CSR used as it is, others converted once) is never densified: the
            first layer is computed from the non-zeros.
        Y : array_like
            Targets of shape (n, n_out) (or (n,) when n_out is 1); for ``cross_entropy`` class indices of
            shape (n,) or probability rows (n, n_out).
        sample_weight : array_like of shape (n,) or None
            Per-example factors (finite, >= 0, not all zero): the batch mean becomes
            ``sum_i w_i l_i / sum_i w_i``, as in scikit-learn. None weighs every example 1.
        """
        X2, Y2, single = self._prepare(X, Y)
        weights = self._prepare_sample_weight(sample_weight, X2.shape[0], single)
        return float(self._loss_prepared(X2, Y2, weights))

    def gradients(self, X, Y, sample_weight=None):
        """The gradient of the batch loss (weighted by ``sample_weight`` as in :meth:`loss`).

        Returns
        -------
        Gradients
            ``.loss`` and ``.weights``/``.biases`` lists shaped like the parameters (fresh copies).
        """
        X2, Y2, single = self._prepare(X, Y)
        weights = self._prepare_sample_weight(sample_weight, X2.shape[0], single)
        ws = self._workspace(X2.shape[0], isinstance(X2, SparseRows))
        loss = _training.loss_and_gradient(self, ws, X2, Y2, weights)
        flat = ws.grad.copy()
        views = _spec.layer_views(self.layer_sizes, flat)
        return Gradients(loss, [W for W, _ in views], [b for _, b in views])

    def trace(self, X, Y):
        """Every intermediate of one forward and backward pass (what a hand calculation shows).

        Computed once here, by the readable twin on either backend and the formulas of ``fastbp._spec``, so
        that reports (``explain_step``, ``diagnose``) read these values and never derive them again.

        Returns
        -------
        Trace
            Per layer ``l``: ``pre_activations`` (z), ``activations`` (a = f(z)), ``derivatives`` (f'(z),
            from a by ``_spec.DERIVATIVES_FROM_OUTPUT``), ``upstream_gradients`` (dL/da), ``deltas``
            (dL/dz = dL/da * f'(z)), ``grad_weights`` and ``grad_biases``; and ``output``,
            ``output_gradient`` (dL/d(output), the gradient half of ``_spec.LOSS_FUNCTIONS``) and ``loss``.
            Per-example arrays are 1-D when a single example ``x`` of shape ``(n_in,)`` is given.
        """
        X2, Y2, single = self._prepare(X, Y)
        if isinstance(X2, SparseRows):
            X2 = X2.toarray()   # a hand calculation's batch: small
        ws = _reference.Workspace(self.layer_sizes, self._activation_codes, self._loss_code, self.dtype,
                                  X2.shape[0])
        result = _reference.trace(ws, self.params, X2, Y2)
        result.update(_chain_rule_terms(self._activations, self._loss_name, self.weights, result, Y2))
        if single:
            for key in ("pre_activations", "activations", "derivatives", "upstream_gradients", "deltas"):
                result[key] = [array[0] for array in result[key]]
            for key in ("output", "output_gradient"):
                result[key] = result[key][0]
        return Trace(**result)

    # -- training ---------------------------------------------------------------------------------------

    def fit(self, X, Y, *, epochs=1, batch_size=32, lr=None, optimizer=None, shuffle=True, seed=None,
            progress=False, record_gradients=False, verbose=0, validation_data=None, validation_split=0.0,
            callbacks=None, early_stopping=False, patience=5, min_delta=0.0, restore_best_weights=True,
            lr_schedule=None, threads=None, metrics=None, sample_weight=None):
        """Train by mini-batch SGD; the loop over mini-batches of an epoch runs inside the backend.

        Parameters
        ----------
        X, Y : array_like
            Training data, as for :meth:`loss` (at least one example); ``X`` may be a scipy.sparse matrix,
            trained from its non-zeros (the same numbers as its dense form, to rounding).
        epochs : int
            Passes over the data (0 trains nothing).
        batch_size : int
            Rows per update; the last batch of an epoch is smaller when it does not divide ``n``.
        lr : float or None
            Learning rate of the plain SGD used when ``optimizer`` is None; None means 0.01. Giving both
            ``lr`` and ``optimizer`` is an error (the optimizer carries its own ``lr``).
        optimizer : Optimizer, LBFGS or None
            An optimizer on this network (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Rprop``), which keeps
            its state across calls; or ``LBFGS``, which trains on the whole data set at once (``epochs``,
            ``batch_size`` and ``shuffle`` do not apply to it).
        shuffle : bool
            Visit the examples in a fresh permutation each epoch (drawn from ``seed``), else in order.
        seed : int or None
            Makes the shuffling reproducible; None draws a random seed.
        progress : bool
            Show progress on stderr: on a terminal one line updated in place (tqdm's bar if installed), at
            most 80 columns, moving within each epoch too (every 0.2 s: the share of the epoch done, the
            running loss and the speed); otherwise one plain line per epoch.
        record_gradients : bool
            Record, after each epoch, the norm of each layer's weight gradient over the whole training set
            in ``History.gradient_norms``.
        verbose : int
            0 silent, 1 like ``progress=True``, 2 one line per epoch.
        validation_data : (X_val, Y_val) or None
            Evaluated after each epoch into ``History.val_loss``.
        validation_split : float
            Fraction in [0, 1) of the rows (the last ones, before shuffling) held out for validation.
        callbacks : callable, Callback, or a list of them, or None
            Each is called ``cb(epoch, logs)`` (or ``cb.on_epoch_end(epoch, logs)``; see
            :class:`fastbp.Callback` for the other hooks) after every epoch; ``logs`` has ``loss``,
            ``val_loss`` (when available), ``lr``, ``epoch_time`` and the metrics. All callbacks share the
            one ``logs`` dict, and entries they add are recorded in ``History.metrics``. Returning True
            stops training.
        early_stopping : bool
            Stop when the monitored loss (validation loss if any, else training loss) has not improved by
            more than ``min_delta`` for ``patience`` epochs; with ``restore_best_weights`` the parameters of
            the best epoch are restored (``History.best_epoch``, ``History.restored_best_weights``, and a
            line on stderr when ``verbose``). The same as passing :class:`fastbp.EarlyStopping`.
        lr_schedule : callable, "step", "invscaling" or None
            ``lr_schedule(epoch) -> lr`` before each epoch; the strings use :class:`StepDecay` /
            :class:`InverseScaling` starting from the optimizer's learning rate.
        threads : int or None
            At most this many BLAS threads during this call (``fastbp.num_threads``; needs threadpoolctl).
            None lets fastbp choose per call: one thread when the products are too small to pay for
            synchronisation, or as many as the other processes leave free (see ``fastbp._threads``); the
            process's own setting when ``set_num_threads`` was called. Batch size 1 uses no BLAS.
        metrics : list of {"loss", "accuracy", "r2"} or None
            Computed after each epoch on the training data (and, with validation data, as ``val_<name>``)
            into ``History.metrics`` and the progress line; ``"loss"`` is always recorded.
        sample_weight : array_like of shape (n,) or None
            Per-example factors (finite, >= 0, not all zero), shuffled with their rows: each mini-batch
            minimises ``sum_i w_i l_i / sum_i w_i`` and the epoch loss in the History is the weighted mean
            over the epoch's batches. A batch whose weights are all zero makes no update. With
            ``validation_split`` the held-out rows' weights are dropped (the validation loss is unweighted).

        Returns
        -------
        History

        Raises
        ------
        ValueError, TypeError
            For a bad argument, before training starts; except that a row of X holding NaN or infinity is
            found by the first epoch as it reaches that row's batch (no separate pass over X): the
            ValueError names the row, and the parameters, the optimizer's state and its lr are then as
            before the call (callbacks have had ``on_train_begin``).
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
            lr = 0.01 if lr is None else _check_real(lr, "lr", positive=True)
        elif not isinstance(optimizer, (Optimizer, LBFGS)):
            raise TypeError(f"optimizer must be a fastbp optimizer (SGD, Adam, AdamW, RMSprop, Rprop, LBFGS) "
                            f"or None; got {_describe(optimizer)}")
        elif lr is not None:
            raise ValueError(f"give either lr (for plain SGD) or optimizer, not both: the optimizer's lr is "
                             f"{getattr(optimizer, 'lr', '?')}; got lr={_describe(lr)}")
        elif optimizer.net is not self:
            raise ValueError(f"optimizer was built for another network; create {type(optimizer).__name__}"
                             "(net, ...) for this one")
        limit_threads = _threads.limit_for_call(threads, batch_size, self.layer_sizes)
        callbacks = _training.check_callbacks(callbacks)
        metrics = () if metrics is None else _metrics.check_metrics(metrics, self.loss_name)

        # A dense X is checked for NaN and infinity by the first epoch, batch by batch as it is used (a
        # separate pass would read all of X from memory once more: 4-8% of an epoch of 784-128-10 at batch
        # 32); by itself only where no epoch runs through the kernel.
        check_later = epochs > 0 and not isinstance(optimizer, LBFGS)
        X2, Y2, single = self._prepare(X, Y, check_X=not check_later)
        if single:
            raise ValueError(f"fit needs X of shape (n, {self.layer_sizes[0]}); got a single example of "
                             f"shape {X2.shape[1:]}")
        check_later = check_later and not isinstance(X2, SparseRows)
        weights = self._prepare_sample_weight(sample_weight, X2.shape[0])
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
            if check_later and not self._module.all_finite(validation[0]):   # (not trained on: check now)
                raise nonfinite_rows_error("X", validation[0], X2.shape[0] - n_val)
            X2, Y2 = X2[:-n_val], Y2[:-n_val]
            if weights is not None:
                weights = weights[:-n_val]
                if not weights.sum(dtype=np.float64) > 0:
                    raise ValueError("sample_weight is all zero on the rows validation_split leaves for "
                                     "training")

        if isinstance(optimizer, LBFGS):
            with self._exclusive("fit"), limit_threads:
                return optimizer._run(X2, Y2, weights)
        optimizer = SGD(self, lr) if optimizer is None else optimizer
        if early_stopping:
            callbacks.append(_training.EarlyStopping(patience, min_delta, restore_best_weights,
                                                     verbose=bool(verbose or progress)))
        plan = _training.FitPlan(
            X=X2, Y=Y2, epochs=epochs, batch_size=batch_size, optimizer=optimizer, shuffle=shuffle, seed=seed,
            record_gradients=record_gradients, validation=validation,
            schedule=make_schedule(lr_schedule, optimizer.lr), metrics=metrics, progress=progress,
            verbose=verbose, callbacks=callbacks, sample_weight=weights, check_X=check_later)
        with self._exclusive("fit"), limit_threads:
            return _training.fit_loop(self, plan)

    # -- persistence and interop ------------------------------------------------------------------------

    def save(self, path, *, optimizer=None):
        """Write the network to ``path`` as ``.npz`` (no pickle), atomically; see :meth:`load`.

        Parameters
        ----------
        path : str, bytes or os.PathLike
            The file name, used as given (no extension is added).
        optimizer : SGD, Adam, AdamW, RMSprop or Rprop, optional
            An optimizer bound to this network: its hyper-parameters, state rows and step count are stored
            in the same file (stored members, checksummed, copied in the same consistent snapshot as the
            parameters), so that ``Network.load(path, with_optimizer=True)`` resumes training exactly.
        """
        class_name = None if optimizer is None else self._saved_optimizer_class(optimizer)
        _io.save(self, path, optimizer=optimizer, optimizer_class=class_name)

    # The optimizers whose state a model file can hold, by the class name stored in it.
    _SAVED_OPTIMIZERS = {klass.__name__: klass for klass in (SGD, Adam, AdamW, RMSprop, Rprop)}

    def _saved_optimizer_class(self, optimizer):
        """The public class name stored for ``optimizer``, after checking that it has state and is ours."""
        if isinstance(optimizer, LBFGS):
            raise TypeError("optimizer: LBFGS keeps no state between calls (each fit starts scipy afresh); "
                            "save the network alone")
        names = ", ".join(self._SAVED_OPTIMIZERS)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastbp optimizer ({names}) or None; got {_describe(optimizer)}")
        if optimizer.net is not self:
            raise ValueError("optimizer is bound to another network (optimizer.net is not this network); its "
                             "state belongs to that network's parameters")
        for klass in type(optimizer).__mro__:
            if self._SAVED_OPTIMIZERS.get(klass.__name__) is klass:
                return klass.__name__
        raise TypeError(f"optimizer must be a fastbp optimizer ({names}); got {_describe(optimizer)}")

    @classmethod
    def load(cls, path, *, backend=None, with_optimizer=False):
        """Read a network written by :meth:`save`; every parameter is restored bit for bit.

        Parameters
        ----------
        path : str, bytes or os.PathLike
        backend : {"cython", "numpy"} or None
            The network's backend (default: ``fastbp.BACKEND``).
        with_optimizer : bool, default False
            Also rebuild the optimizer saved with ``save(path, optimizer=opt)``: the same class, bound to the
            loaded network, with its hyper-parameters, state and step count. Training then continues bit
            for bit as if the file had never been written.

        Returns
        -------
        Network, or ``(Network, optimizer)`` with ``with_optimizer=True``

        Raises
        ------
        ValueError
            For a file that is not a valid model file (see ``fastbp._io.load``), or, with
            ``with_optimizer=True``, a file saved without an optimizer.
        """
        if not isinstance(with_optimizer, (bool, np.bool_)):
            raise TypeError(f"with_optimizer must be True or False; got {type(with_optimizer).__name__}")
        if not with_optimizer:
            config, params = _io.load(path)
            return cls._build_loaded(path, config, params, backend)
        config, params, saved = _io.load(path, with_optimizer=True)
        if saved is None:
            raise ValueError(f"{path}: holds no optimizer state (it was saved without optimizer=...); "
                             "load it with with_optimizer=False and create a new optimizer")
        net = cls._build_loaded(path, config, params, backend)
        optimizer_class = cls._SAVED_OPTIMIZERS.get(saved["class"])
        state_dict = saved["state_dict"]
        if optimizer_class is None or optimizer_class._RULE != state_dict["rule"]:
            raise ValueError(f"{path}: optimizer_class {saved['class']!r} with rule {state_dict['rule']!r} is "
                             f"not one of {', '.join(cls._SAVED_OPTIMIZERS)} with its rule")
        try:
            optimizer = optimizer_class(net, lr=float(state_dict["hyper"][_spec.HYPER_LR]))
            optimizer.load_state_dict(state_dict)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: invalid optimizer state: {error}") from None
        return net, optimizer

    @classmethod
    def _build_loaded(cls, path, config, params, backend):
        try:
            return cls._from_parts(config, params, backend)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: invalid model description: {error}") from None

    def to_torch(self):
        """A ``torch.nn.Sequential`` with the same parameters."""
        return _torch_interop.to_torch(self)

    @classmethod
    def from_torch(cls, module, *, dtype=None, backend=None, **options):
        """A Network from a ``torch.nn.Sequential`` of ``Linear`` layers and supported activations.

        Extra keyword ``options`` (such as ``loss``) are passed on to ``fastbp._torch_interop.from_torch``.
        """
        config, params = _torch_interop.from_torch(module, dtype=dtype, **options)
        return cls._from_parts(config, params, backend)

    def state_dict(self):
        """The parameters under PyTorch's key names (``"0.weight"``, ``"0.bias"``, ...)."""
        return _torch_interop.state_dict(self)

    def load_state_dict(self, state_dict):
        """Copy parameters from a PyTorch-style state dict."""
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


def _chain_rule_terms(activations, loss_name, weights, result, Y):
    """The factors of each delta that the twin's backward pass multiplies but does not keep.

    ``derivatives[l] = f'(z_l)`` from the layer's output, ``output_gradient = dL/d(output)``, and
    ``upstream_gradients[l] = dL/da_l``: the output gradient for the last layer, ``delta_{l+1} @ W_{l+1}``
    below it; so that ``deltas[l] == upstream_gradients[l] * derivatives[l]`` as the twin computed them (for
    the logit losses the last activation is the identity and its derivative 1). Batch arrays ``(n, width)``.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as inf/NaN values, not warnings
        derivatives = [_spec.DERIVATIVES_FROM_OUTPUT[name](a) for name, a in zip(activations,
                                                                                 result["activations"])]
        output_gradient = _spec.LOSS_FUNCTIONS[loss_name](result["output"], Y)[1]
        deltas = result["deltas"]
        upstream = [deltas[l + 1] @ weights[l + 1] for l in range(len(deltas) - 1)] + [output_gradient.copy()]
    return {"derivatives": derivatives, "upstream_gradients": upstream, "output_gradient": output_gradient}
