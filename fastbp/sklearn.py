"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, trained by fastbp.

The two classes take every parameter of ``sklearn.neural_network.MLPClassifier``/``MLPRegressor`` with the
same name, default and meaning, expose the same fitted attributes (``coefs_`` in scikit-learn's
``(n_in, n_out)`` layout, ``intercepts_``, ``loss_``, ``loss_curve_``, ``n_iter_``, ``t_``, ...) and make the
same updates: given the same ``random_state`` they draw the same initial weights (Glorot uniform), the same
shuffles and the same validation split as scikit-learn, so ``solver="sgd"`` and ``"adam"`` reproduce
scikit-learn's weights to rounding, and ``"lbfgs"`` minimises the same objective with the same
``scipy.optimize.minimize`` call. The forward and backward passes run in fastbp's compiled kernel
(``fastbp.Network``), the updates in fastbp's optimizers (``fastbp.SGD``, ``fastbp.Adam``).

What scikit-learn's MLP does, and so what these classes do:

- Output layer and loss: the regressor has an identity output and the half squared error (``loss_`` is
  ``0.5 * mean((y - y_pred)**2)``) or, with ``loss="poisson"``, an exponential output and the half Poisson
  deviance; the classifier has a softmax output and the cross-entropy for more than two classes, and one
  logistic output per label (binary cross-entropy summed over the labels) for two classes and for
  multilabel targets.
- ``alpha`` is an L2 penalty on the weights only (not the intercepts), divided by the batch's size (or its
  sample-weight sum): each update adds ``alpha * W / batch_size`` to the weights' gradient and
  ``0.5 * alpha * sum(W**2) / batch_size`` to the batch loss.
- ``sample_weight`` (``fit``, ``partial_fit``) makes each batch's loss the weighted mean of its examples'
  losses; the validation split of early stopping splits the weights too and scores with them.
- ``solver="adam"`` is scikit-learn's Adam, whose ``epsilon`` is added to ``sqrt(v)`` before the bias
  correction (``torch.optim.Adam`` adds it after); ``"sgd"`` with ``momentum``/``nesterovs_momentum`` and the
  ``learning_rate`` schedules ``"constant"``, ``"invscaling"`` (per epoch, ``learning_rate_init / (t_ + 1) **
  power_t``) and ``"adaptive"`` (divided by 5 after ``n_iter_no_change`` epochs without improvement).

fastbp's own parameters:

- ``dtype``: None (default) trains in the input's floating dtype, as scikit-learn does (float32 input gives
  float32 parameters); ``"float32"``/``"float64"`` choose it.
- ``backend``: the compiled kernel (``"cython"``) or its NumPy twin (``"numpy"``); None is fastbp's default.
- ``threads``: at most this many BLAS threads while fitting (``fastbp.num_threads``); None picks them per
  fit as ``Network.fit`` does (one thread for small products, or the cores other processes leave free).
- ``network_``: the trained :class:`fastbp.Network`; its output layer gives the logits (or log-rates) and
  its ``weights`` are the transposes of ``coefs_`` (``coefs_[i]`` is a view of ``network_.weights[i].T``).

Differences from scikit-learn, by design:

- A loss or parameter that becomes NaN or infinite stops training at once with the last finite parameters
  kept: without early stopping ``fit`` raises scikit-learn's "Solver produced non-finite parameter weights"
  ``ValueError``; with early stopping the epoch's validation score is recorded as NaN, training stops and
  the best parameters are restored (scikit-learn runs the remaining epochs on NaN weights first).
- Sample weights must be finite and >= 0; a mini-batch whose weights are all 0 makes no update (scikit-learn
  divides by zero there).
- Sparse input (CSR/CSC) is never densified: the first layer's product and its weight gradient are computed
  from the non-zeros in the compiled kernel (``Network`` takes scipy.sparse matrices), so memory and time
  follow the non-zeros, not ``n_samples x n_features``.

How the training runs: on dense input, whole epochs inside the compiled kernel (the backend's
``train_epoch``, called once per cache-sized chunk of whole mini-batches gathered in scikit-learn's shuffled
order), the L2 term, scikit-learn's Adam and its momentum included; with sample weights, one kernel call per
mini-batch (``Optimizer.train_step``), because scikit-learn's epoch loss weighs the batches by their row
counts; on sparse input, and for a multi-output squared error with ``alpha > 0`` (whose reported loss is not
the one its gradient descends), one compiled ``Network.gradients`` call and one compiled optimizer step per
mini-batch, with the L2 term and the per-output factor applied in between. The updates are scikit-learn's
either way.

Requires scikit-learn >= 1.6 (``pip install 'fastbp[sklearn]'``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    import scipy.optimize
    import scipy.sparse
    from scipy.special import xlogy
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastbp.sklearn needs scikit-learn >= 1.6: pip install 'fastbp[sklearn]' "
        f"(or pip install 'scikit-learn>=1.6'); importing it failed with: {error}"
    ) from error

from fastbp import _spec
from fastbp import _threads
from fastbp import _training
from fastbp import _validation
from fastbp.network import Network
from fastbp.optimizers import SGD, Adam

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's hidden-layer activation names to fastbp's.
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_DTYPES = ("float32", "float64")
_SOLVERS = ("lbfgs", "sgd", "adam")
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
# The output activation (scikit-learn's name in ``out_activation_``) to the fastbp loss on the network's
# linear output whose gradient with respect to that output is scikit-learn's ``activation - y`` (up to the
# per-output factor handled in ``_Objective``).
_OUTPUT_LOSSES = {
    "identity": "half_sse",
    "exp": "poisson",
    "softmax": "cross_entropy",
    "logistic": "binary_cross_entropy",
}
# Rows per gradient call when lbfgs runs over sparse input (the first layer from the non-zeros, chunk by chunk).
_SPARSE_CHUNK_ROWS = 2048


def _check_number(name, value, *, low, high=None, low_inclusive=True, high_inclusive=True, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        expected = "an int" if integer else "a real number"
        raise TypeError(f"The '{name}' parameter must be {expected}, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high or not np.isfinite(value):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        bounds = f"{left}{low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"The '{name}' parameter must be in the range {bounds}, got {value!r}")


def _dense_rows(X, rows):
    """``X[rows]``: a C-contiguous dense array, or CSR rows for sparse ``X`` (``Network`` takes them as they
    are and computes the first layer from the non-zeros)."""
    part = X[rows]
    if scipy.sparse.issparse(part):
        return part
    return np.ascontiguousarray(part)


class _Objective:
    """scikit-learn's batch loss and gradient, computed by ``Network.gradients``.

    fastbp's losses are means over the batch (``cross_entropy``, ``half_sse``) or over all n*K outputs
    (``binary_cross_entropy``, ``poisson``), where scikit-learn's output deltas are ``activation - y`` divided
    by the batch size for every loss: ``grad_factor`` is K for the latter. ``loss_factor`` and ``constant``
    turn fastbp's loss into the value scikit-learn reports (``0.5 * mean`` of the squared error over n*K; the
    Poisson deviance's ``xlogy(y, y) - y`` term). The L2 term on the weights is added here.
    """

    def __init__(self, net, alpha, out_activation, n_outputs):
        self.net = net
        self.alpha = float(alpha)
        self.out_activation = out_activation
        K = n_outputs
        if out_activation == "identity":
            self.loss_factor, self.grad_factor = 1.0 / K, 1.0
        elif out_activation == "softmax":
            self.loss_factor, self.grad_factor = 1.0, 1.0
        else:  # logistic (BCE over n*K) and exp (Poisson over n*K)
            self.loss_factor, self.grad_factor = float(K), float(K)

    def row_constants(self, Y):
        """Per-row term scikit-learn's Poisson deviance adds to fastbp's Poisson loss (None otherwise)."""
        if self.out_activation != "exp":
            return None
        return np.sum(xlogy(Y, Y) - Y, axis=1, dtype=np.float64)

    def l2(self):
        """``0.5 * sum(W**2)`` over every weight matrix (not the intercepts)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging model's penalty is inf, silently
            return 0.5 * sum(float(np.vdot(W, W)) for W in self.net.weights)

    def batch(self, X, Y, sample_weight, constants, l2=True):
        """scikit-learn's loss and gradient (a ``Gradients``, modified in place) of one batch; ``l2=False``
        leaves the L2 term out. The gradient is None for a batch whose weights are all 0."""
        net = self.net
        if sample_weight is None:
            grads = net.gradients(X, Y)
            sw_sum = X.shape[0]
            constant = 0.0 if constants is None else float(np.mean(constants))
        else:
            sw_sum = float(np.sum(sample_weight, dtype=np.float64))
            if not sw_sum > 0:
                return 0.0, None  # a batch of zero weight makes no update (scikit-learn divides by 0)
            grads = net.gradients(X, Y, sample_weight=sample_weight)
            constant = 0.0 if constants is None else float(np.average(constants, weights=sample_weight))
        loss = grads.loss * self.loss_factor + constant
        if self.grad_factor != 1.0:
            for W in grads.weights:
                W *= self.grad_factor
            for b in grads.biases:
                b *= self.grad_factor
        if self.alpha and l2:
            loss += self.alpha * self.l2() / sw_sum
            scale = self.alpha / sw_sum
            for G, W in zip(grads.weights, net.weights):
                G += scale * W
        return loss, grads


class _Solver:
    """The stochastic solver's state between epochs (scikit-learn's ``_optimizer``): the fastbp optimizer,
    the current ``learning_rate`` and the schedule rules of scikit-learn's ``SGDOptimizer`` and
    ``AdamOptimizer``.

    The optimizer works in the kernel's units: scikit-learn's gradient is ``scale`` (the objective's
    ``grad_factor``) times the gradient of fastbp's loss plus ``alpha W / B``, so the optimizer gets the
    L2 coefficient ``alpha / scale`` (the kernel's ``HYPER_L2`` sweep), SGD the learning rate
    ``learning_rate * scale`` and Adam the epsilon ``epsilon / scale`` with scikit-learn's epsilon
    convention (``HYPER_ADAM_SKLEARN_EPS``): the same updates, and the same state whether an epoch runs in
    the kernel (``kernel_epoch``, ``kernel_batch``) or batch by batch from Python (``step``).
    """

    def __init__(self, estimator, net, grad_factor):
        self.solver = estimator.solver
        self.learning_rate_init = float(estimator.learning_rate_init)
        self.learning_rate = self.learning_rate_init
        self.lr_schedule = estimator.learning_rate
        self.power_t = float(estimator.power_t)
        self.scale = float(grad_factor)
        self.alpha = float(estimator.alpha)
        self.net = net
        self._ws = None
        self._ws_sparse = None
        self._params_start = self._optimizer_start = None
        if self.solver == "sgd":
            self.momentum = float(estimator.momentum)
            self.nesterov = bool(estimator.nesterovs_momentum) and self.momentum > 0
            self.optimizer = SGD(net, self.learning_rate * self.scale, momentum=self.momentum,
                                 nesterov=self.nesterov)
        else:
            self.beta_1, self.beta_2 = float(estimator.beta_1), float(estimator.beta_2)
            self.epsilon = float(estimator.epsilon)
            self.optimizer = Adam(net, self.learning_rate, betas=(self.beta_1, self.beta_2),
                                  eps=self.epsilon / self.scale)
        self._set_terms()

    def _set_terms(self):
        self.optimizer._set_sklearn_terms(l2=self.alpha / self.scale, sklearn_eps=self.solver == "adam")

    @property
    def t(self):
        """Adam's step count (scikit-learn's ``AdamOptimizer.t``)."""
        return self.optimizer.steps

    def _after_updates(self):
        if self.solver == "adam" and self.t > 0:
            # scikit-learn's AdamOptimizer.learning_rate after step t
            self.learning_rate = (self.learning_rate_init * np.sqrt(1 - self.beta_2 ** self.t)
                                  / (1 - self.beta_1 ** self.t))

    # ---------------------------------------------------------------------------------------- updates
    def step(self, grads):
        """One update from scikit-learn's gradient of a batch (``_Objective.batch``, L2 included)."""
        if self.scale != 1.0:
            for G in (*grads.weights, *grads.biases):
                G /= self.scale
        self.optimizer.step(grads)
        self._after_updates()

    def kernel_epoch(self, X, Y, order, batch_size):
        """One unweighted epoch over the rows ``order`` of ``X, Y`` (C-contiguous, the network's dtype,
        finite; ``order`` None: in order) in one call of the compiled kernel, the L2 term included; returns
        the sum over the batches of the batch loss times its row count, in the kernel's units
        (scikit-learn's divided by ``scale``, or without its ``loss_factor`` when alpha is 0).

        The kernel reads the rows through ``order`` itself (an explicit row order for ``train_epoch``):
        each batch is gathered into the workspace just before its forward pass, and sparse rows are read
        where they lie. What ``Network.fit(epochs=1)`` does, without its per-call checks and thread choice
        (the estimator has checked the data and chosen the threads for the whole fit): on a loss or
        parameter that is not finite, the parameters and state go back to their values at the epoch's
        start and FloatingPointError is raised.
        """
        net, optimizer = self.net, self.optimizer
        params = net.params
        sparse = isinstance(X, _validation.SparseRows)
        key = -1 if order is None else np.ascontiguousarray(order, dtype=np.intp)
        with net._exclusive("MLP fit"):
            ws = self._ws_sparse if sparse else self._ws
            if ws is None or ws.max_batch < batch_size:
                ws = net._new_workspace(batch_size, sparse_input=sparse)
                if sparse:
                    self._ws_sparse = ws
                else:
                    self._ws = ws
            if self._params_start is None:
                self._params_start = np.empty_like(params)
                self._optimizer_start = optimizer._snapshot()
            np.copyto(self._params_start, params)
            optimizer._snapshot(into=self._optimizer_start)
            try:
                loss_sum, _, done, status = _training.run_epoch(net, ws, optimizer, X, Y, None, batch_size, key)
                if status == _spec.STATUS_INTERRUPTED:
                    raise KeyboardInterrupt
                if status == _spec.STATUS_NONFINITE or not (net._module.all_finite(params)
                                                            and optimizer._state_finite()):
                    # Replayed batch by batch from the epoch's start, on the epoch's rows in order.
                    X_epoch, Y_epoch = (X, Y) if order is None else (X[key], Y[key])
                    batch, what = _training._unwind(net, ws, optimizer, X_epoch, Y_epoch, None, batch_size, -1,
                                                    self._params_start, self._optimizer_start, status, done)
                    raise FloatingPointError(f"{what} became NaN or infinite at batch {batch + 1}")
            finally:
                self._after_updates()
        return loss_sum

    def kernel_batch(self, X, Y, sample_weight):
        """One update from one weighted batch in the compiled kernel (``train_step``, L2 included); returns
        the batch loss in the kernel's units."""
        loss = self.optimizer.train_step(X, Y, sample_weight=sample_weight)
        self._after_updates()
        return loss

    # ---------------------------------------------------------------------------------------- schedules
    def _set_sgd_lr(self, lr):
        # scikit-learn's velocity is u = momentum * u - lr * g (p += u); fastbp's (torch's) is v with
        # p -= lr * v, so u = -lr * v: keep u when lr changes by rescaling v.
        old = self.learning_rate
        self.learning_rate = lr
        self.optimizer.lr = lr * self.scale
        if self.momentum and old != lr:
            self.optimizer.velocity *= old / lr

    def iteration_ends(self, time_step):
        if self.solver == "sgd" and self.lr_schedule == "invscaling":
            self._set_sgd_lr(self.learning_rate_init / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, msg, verbose):
        if self.solver != "sgd" or self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_sgd_lr(self.learning_rate / 5.0)
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False

    # ---------------------------------------------------------------------------------------- pickling
    def state(self):
        if self.solver == "sgd":
            return {"learning_rate": self.learning_rate, "velocity": np.array(self.optimizer.velocity)}
        return {"learning_rate": self.learning_rate, "optimizer": self.optimizer.state_dict()}

    def load(self, state):
        self.learning_rate = float(state["learning_rate"])
        if self.solver == "sgd":
            self.optimizer.lr = self.learning_rate * self.scale
            self.optimizer.velocity = state["velocity"]
            return
        self.optimizer.load_state_dict(state["optimizer"])
        # The estimator's own hyper-parameters, whatever the pickle held.
        self.optimizer.lr = self.learning_rate_init
        self.optimizer.eps = self.epsilon / self.scale
        self._set_terms()


class _BaseMLP(BaseEstimator):
    """Shared parameters, validation and the training loops of the two estimators."""

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype=None,
        backend=None,
        threads=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.backend = backend
        self.threads = threads

    # ----------------------------------------------------------------------------------------------- checks
    def _validate_params(self):
        """Check every parameter (scikit-learn validates in ``fit``, never in ``__init__``/``set_params``)."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(
                f"The 'hidden_layer_sizes' parameter must be an int or a sequence of ints, got {sizes!r}"
            ) from None
        for size in sizes:
            _check_number("hidden_layer_sizes", size, low=1, integer=True)
        for name, options in (("activation", _ACTIVATIONS), ("solver", _SOLVERS),
                              ("learning_rate", _LEARNING_RATES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in options:
                raise ValueError(f"The '{name}' parameter must be one of {sorted(options)}, got {value!r}")
        _check_number("alpha", self.alpha, low=0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("learning_rate_init", self.learning_rate_init, low=0, low_inclusive=False)
        _check_number("power_t", self.power_t, low=0)
        _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("tol", self.tol, low=0)
        _check_number("momentum", self.momentum, low=0, high=1)
        _check_number("validation_fraction", self.validation_fraction, low=0, high=1, high_inclusive=False)
        _check_number("beta_1", self.beta_1, low=0, high=1, high_inclusive=False)
        _check_number("beta_2", self.beta_2, low=0, high=1, high_inclusive=False)
        _check_number("epsilon", self.epsilon, low=0, low_inclusive=False)
        if not (isinstance(self.n_iter_no_change, numbers.Real) and self.n_iter_no_change == np.inf):
            _check_number("n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        _check_number("max_fun", self.max_fun, low=1, integer=True)
        for name in ("nesterovs_momentum", "shuffle", "early_stopping", "warm_start"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"The '{name}' parameter must be a bool, got {getattr(self, name)!r}")
        if self.dtype is None:
            dtype = None
        else:
            try:
                dtype = np.dtype(self.dtype)
            except TypeError:
                dtype = None
            if dtype is None or dtype.name not in _DTYPES:
                raise ValueError(
                    f"The 'dtype' parameter must be None, 'float32' or 'float64', got {self.dtype!r}"
                )
        if self.threads is not None:
            _check_number("threads", self.threads, low=1, integer=True)
        self._check_loss()
        return [int(size) for size in sizes], dtype

    def _check_loss(self):
        pass

    # ----------------------------------------------------------------------------------------- hooks (sub)
    def _validate_input(self, X, y, incremental, reset):
        raise NotImplementedError

    def _score_validation(self, X, y, sample_weight):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ the network
    def _network_loss(self):
        return _OUTPUT_LOSSES[self.out_activation_]

    def _build_network(self, layer_units, dtype):
        """A network for ``layer_units`` with this estimator's activations and output loss."""
        loss = self._network_loss()
        activations = [_ACTIVATIONS[self.activation]] * (len(layer_units) - 2) + ["identity"]
        return Network(layer_units, activations, loss=loss, dtype=dtype, seed=0, backend=self.backend)

    def _objective(self, net):
        return _Objective(net, self.alpha, self.out_activation_, self.n_outputs_)

    def _set_network_params(self, net, coefs, intercepts):
        """Copy ``coefs`` ((n_in, n_out) each) and ``intercepts`` into ``net``."""
        weights = [np.asarray(c).T for c in coefs]
        biases = [np.asarray(b).reshape(-1) for b in intercepts]
        net.set_params(weights, biases)

    def _attach(self, net):
        """Make ``net`` the estimator's network: ``coefs_``/``intercepts_`` become views of its parameters."""
        self.network_ = net
        self.coefs_ = [W.T for W in net.weights]
        self.intercepts_ = list(net.biases)
        self._param_views = (list(self.coefs_), list(self.intercepts_))
        self.n_layers_ = len(net.layer_sizes)

    def _network_in_sync(self):
        views = getattr(self, "_param_views", None)
        if getattr(self, "network_", None) is None or views is None:
            return False
        coefs, intercepts = self.coefs_, self.intercepts_
        return (len(coefs) == len(views[0]) and len(intercepts) == len(views[1])
                and all(a is b for a, b in zip(coefs, views[0]))
                and all(a is b for a, b in zip(intercepts, views[1])))

    def _sync_network(self):
        """The network holding ``coefs_``/``intercepts_``; rebuilt when they were assigned from outside."""
        if self._network_in_sync():
            return self.network_
        coefs = [np.asarray(c) for c in self.coefs_]
        dtype = coefs[0].dtype if coefs[0].dtype in (np.float32, np.float64) else np.dtype(np.float64)
        layer_units = [coefs[0].shape[0]] + [c.shape[1] for c in coefs]
        net = self._build_network(layer_units, dtype)
        self._set_network_params(net, coefs, self.intercepts_)
        self._attach(net)
        return net

    # ------------------------------------------------------------------------------------------- training
    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        # scikit-learn's Glorot-uniform initialisation, drawn from the same random state in the same order
        # (float64 draws cast to the training dtype), so a random_state gives scikit-learn's initial weights.
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(self._random_state.uniform(-bound, bound, fan_out))
        net = self._build_network(layer_units, dtype)
        self._set_network_params(net, coefs, intercepts)
        self._attach(net)
        self._best_params = net.params.copy()
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden, dtype = self._validate_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        if sample_weight is not None:
            # Checked before the input (whose check records classes_ and the feature names) so that bad
            # weights leave the estimator as it was.
            n_rows = getattr(X, "shape", None)
            try:
                n_rows = n_rows[0] if n_rows is not None else len(X)
            except TypeError:
                n_rows = None  # validate_data says what is wrong with X
            if n_rows is not None:
                sample_weight = self._check_sample_weight(sample_weight, n_rows)
                if not sample_weight.sum() > 0:
                    raise ValueError("sample_weight must not be all zero")
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = self._check_sample_weight(sample_weight, X.shape[0])
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        if dtype is None:
            dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        if first_pass:
            layer_units = [X.shape[1], *hidden, y.shape[1]]
        else:
            net = self._sync_network()
            layer_units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            if layer_units[0] != X.shape[1] or layer_units[-1] != y.shape[1]:
                raise ValueError(
                    f"The fitted network has {layer_units[0]} input(s) and {layer_units[-1]} output(s); "
                    f"X has {X.shape[1]} feature(s) and y {y.shape[1]} output(s)"
                )
            dtype = net.dtype
        self.n_outputs_ = y.shape[1]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        if not scipy.sparse.issparse(X):
            X = np.ascontiguousarray(X, dtype=dtype)
        else:
            # Mini-batches are sets of rows: CSR gives them without a scan of every column (a copy of the
            # non-zeros, once, for CSC input).
            X = X.tocsr().astype(dtype, copy=False)
        # The targets keep their dtype (bool for the classifier) until after the validation split, whose
        # stratification and error messages see them as scikit-learn does.
        Y = y
        if sample_weight is not None:
            sample_weight = np.ascontiguousarray(sample_weight, dtype=dtype)

        # The BLAS thread count as Network.fit picks it for one call (threads= when given; else one thread for
        # small products, or the cores other processes leave free).
        n_rows = X.shape[0]
        if self.solver == "lbfgs":
            rows_per_product = n_rows if not scipy.sparse.issparse(X) else min(n_rows, _SPARSE_CHUNK_ROWS)
        elif self.batch_size == "auto":
            rows_per_product = min(200, n_rows)
        else:
            rows_per_product = int(np.clip(self.batch_size, 1, n_rows))
        with _threads.limit_for_call(self.threads, rows_per_product, self.network_.layer_sizes):
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, Y, sample_weight, incremental)
            else:
                self._fit_lbfgs(X, Y, sample_weight)
        return self

    @staticmethod
    def _check_sample_weight(sample_weight, n):
        """``sample_weight`` as a float64 array of shape (n,): finite and >= 0 (a number is every row's
        weight)."""
        if isinstance(sample_weight, numbers.Number):
            sample_weight = np.full(n, sample_weight, dtype=np.float64)
        try:
            weights = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"sample_weight must be an array of numbers; got {type(sample_weight).__name__}") \
                from None
        if weights.ndim != 1:
            raise ValueError(f"Sample weights must be 1D array or scalar, got shape {weights.shape}")
        if weights.shape != (n,):
            raise ValueError(f"sample_weight.shape == {weights.shape}, expected ({n},)!")
        if not np.isfinite(weights).all():
            raise ValueError("sample_weight must be finite (no NaN or infinity)")
        if (weights < 0).any():
            raise ValueError("Negative values in data passed to sample_weight: fastbp's MLP estimators need "
                             "sample weights >= 0")
        return weights

    @staticmethod
    def _non_finite_error(error=None):
        message = ("Solver produced non-finite parameter weights. The input data may contain large values "
                   "and need to be preprocessed.")
        if error is not None:
            message += f" ({error})"
        return ValueError(message)

    def _solver_state(self, net, objective, incremental):
        solver = getattr(self, "_optimizer", None)
        if (incremental and solver is not None and getattr(self, "_optimizer_net", None) is net
                and solver.solver == self.solver):
            solver.alpha = float(self.alpha)  # set_params between partial_fit calls
            solver._set_terms()
            return solver
        solver = _Solver(self, net, objective.grad_factor)
        self._optimizer = solver
        self._optimizer_net = net
        return solver

    def _fit_stochastic(self, X, Y, sample_weight, incremental):
        net = self.network_
        objective = self._objective(net)
        solver = self._solver_state(net, objective, incremental)
        early_stopping = self.early_stopping
        if early_stopping:
            # As scikit-learn: stratified only for single-output classification; the labels binarized.
            stratify = Y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
            parts = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, Y_train, Y_val = parts[:4]
            sw_train, sw_val = (parts[4], parts[5]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the size of your "
                    "dataset."
                )
            y_val = self._decode_validation_targets(Y_val)
        else:
            X_train, Y_train, sw_train = X, Y, sample_weight
            X_val = y_val = sw_val = None

        Y_train = np.ascontiguousarray(Y_train, dtype=net.dtype)
        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                    stacklevel=3,
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        constants = objective.row_constants(Y_train)
        dense = not scipy.sparse.issparse(X_train)
        # The kernel's batch loss, times loss_factor, is scikit-learn's when its L2 term scales as the data
        # term does (every loss but a multi-output squared error, whose reported loss is a mean over the
        # outputs while its gradient is not) or there is none.
        use_kernel = objective.alpha == 0 or objective.loss_factor == objective.grad_factor
        loss_factor = objective.loss_factor
        if use_kernel and dense:
            X_train = np.ascontiguousarray(X_train, dtype=net.dtype)
        elif use_kernel and sw_train is None:
            # sparse rows, checked once: each epoch's rows in scikit-learn's order are a copy of the
            # non-zeros, and the kernel computes the first layer from them
            X_train = _validation._as_sparse_rows(X_train, "X", net.dtype, net.layer_sizes[0],
                                                  net._module.all_finite)
        else:
            use_kernel = False   # sparse and weighted: batch by batch

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # sklearn.utils.shuffle(sample_idx, random_state=...)'s draw, without its per-call
                    # parameter validation (a millisecond per epoch).
                    order = np.arange(n_samples)
                    self._random_state.shuffle(order)
                    sample_idx = sample_idx[order]
                try:
                    if use_kernel and sw_train is None:
                        # The whole epoch in one kernel call, on the rows in scikit-learn's order.
                        accumulated_loss = solver.kernel_epoch(X_train, Y_train,
                                                               sample_idx if self.shuffle else None,
                                                               batch_size) * loss_factor
                        if constants is not None:
                            accumulated_loss += float(np.sum(constants))
                    else:
                        accumulated_loss = 0.0
                        # sklearn.utils.gen_batches(n_samples, batch_size)'s slices, without its per-call
                        # parameter validation.
                        for start in range(0, n_samples, batch_size):
                            batch_slice = slice(start, min(start + batch_size, n_samples))
                            rows = sample_idx[batch_slice] if self.shuffle else batch_slice
                            batch_constants = None if constants is None else constants[rows]
                            batch_weights = None if sw_train is None else sw_train[rows]
                            if use_kernel:
                                # Weighted: scikit-learn's epoch loss weighs each batch by its row count,
                                # not its weight sum, so one kernel call per batch.
                                batch_loss = 0.0
                                if np.sum(batch_weights, dtype=np.float64) > 0:
                                    batch_loss = solver.kernel_batch(
                                        X_train[rows], Y_train[rows], batch_weights) * loss_factor
                                    if batch_constants is not None:
                                        batch_loss += float(np.average(batch_constants, weights=batch_weights))
                            else:
                                batch_loss, grads = objective.batch(_dense_rows(X_train, rows), Y_train[rows],
                                                                    batch_weights, batch_constants)
                                if not np.isfinite(batch_loss):
                                    raise FloatingPointError("the batch loss is not finite")
                                if grads is not None:
                                    solver.step(grads)
                            accumulated_loss += batch_loss * (batch_slice.stop - batch_slice.start)
                except FloatingPointError as error:
                    if not early_stopping:
                        raise self._non_finite_error(error) from error
                    # As scikit-learn records it: the diverged epoch's validation score is NaN; the best
                    # parameters are restored below.
                    self.n_iter_ += 1
                    self.t_ += n_samples
                    self.loss_ = np.nan
                    self.loss_curve_.append(np.nan)
                    self.validation_scores_.append(np.nan)
                    warnings.warn(
                        f"Training diverged at epoch {self.n_iter_} ({error}); the parameters with the best "
                        "validation score are restored.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
                    break
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                solver.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    if solver.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        "Stochastic Optimizer: Maximum iterations (%d) reached and the optimization hasn't "
                        "converged yet." % self.max_iter,
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if early_stopping and self._best_params.shape == net.params.shape:
            np.copyto(net.params, self._best_params)

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score_validation(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self.network_.params.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _fit_lbfgs(self, X, Y, sample_weight):
        net = self.network_
        objective = self._objective(net)
        Y = np.ascontiguousarray(Y, dtype=net.dtype)
        constants = objective.row_constants(Y)
        n = X.shape[0]
        chunk = n if not scipy.sparse.issparse(X) else _SPARSE_CHUNK_ROWS
        flat_grad = np.empty(net.params.shape, dtype=np.float64)
        grad_views = _spec.layer_views(net.layer_sizes, flat_grad)
        total_weight = n if sample_weight is None else float(np.sum(sample_weight))

        def loss_and_gradient(packed):
            net.params[...] = packed
            loss = 0.0
            flat_grad.fill(0.0)
            for start in range(0, n, chunk):
                rows = slice(start, min(start + chunk, n))
                weights = None if sample_weight is None else sample_weight[rows]
                share = ((rows.stop - rows.start) if weights is None else float(np.sum(weights))) / total_weight
                if share == 0:
                    continue
                # The L2 term over the whole batch is added once below, not per chunk.
                part_loss, grads = objective.batch(_dense_rows(X, rows), Y[rows], weights,
                                                   None if constants is None else constants[rows], l2=False)
                loss += part_loss * share
                for (GW, Gb), W, b in zip(grad_views, grads.weights, grads.biases):
                    GW += share * W
                    Gb += share * b
            if objective.alpha:
                loss += objective.alpha * objective.l2() / total_weight
                scale = objective.alpha / total_weight
                for (GW, _), W in zip(grad_views, net.weights):
                    GW += scale * W
            return loss, flat_grad.copy()

        with np.errstate(over="ignore", invalid="ignore"):
            result = scipy.optimize.minimize(
                loss_and_gradient,
                net.params.astype(np.float64),
                method="L-BFGS-B",
                jac=True,
                options={"maxfun": int(self.max_fun), "maxiter": int(self.max_iter), "gtol": float(self.tol)},
            )
        if result.status != 0:
            warnings.warn(
                "lbfgs failed to converge after %d iteration(s) (status=%d):\n%s.\n\nIncrease the number of "
                "iterations (max_iter) or scale the data as shown in:\n"
                "    https://scikit-learn.org/stable/modules/preprocessing.html"
                % (result.nit, result.status, result.message),
                ConvergenceWarning,
                stacklevel=3,
            )
        self.n_iter_ = min(int(result.nit), int(self.max_iter))
        self.loss_ = float(result.fun)
        net.params[...] = result.x
        if not np.isfinite(net.params).all():
            raise self._non_finite_error()

    # ---------------------------------------------------------------------------------------- prediction
    def _forward(self, X, check_input=True):
        """The network's linear output (logits, log-rates or values) for ``X``."""
        check_is_fitted(self, "coefs_")
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        net = self._sync_network()
        # As scikit-learn's products of X with coefs_: the output has the wider of the two dtypes.
        out_dtype = np.result_type(X.dtype, net.dtype) if X.dtype.kind == "f" else np.dtype(np.float64)
        if scipy.sparse.issparse(X):
            out = net.predict(X)      # converted to CSR of the net's dtype once; never densified
        else:
            X = np.asarray(X)
            if X.dtype != net.dtype:
                X = X.astype(net.dtype)
            out = net.predict(np.ascontiguousarray(X))
        return out.astype(out_dtype, copy=False)

    def _output(self, X, check_input=True):
        """scikit-learn's ``_forward_pass_fast``: the output activation applied (probabilities, rates)."""
        z = self._forward(X, check_input=check_input)
        out = self.out_activation_
        if out == "identity":
            return z
        if out == "exp":
            with np.errstate(over="ignore"):  # an overflowing rate is inf, as in scikit-learn
                return np.exp(z)
        if out == "logistic":
            return _spec.sigmoid(z)
        return _spec.softmax(z)

    # ------------------------------------------------------------------------------------------ pickling
    def __getstate__(self):
        # The network and the optimizers hold backend workspaces: pickle plain arrays (coefs_, intercepts_
        # and the solver's state) and rebuild them with this estimator's ``backend`` when unpickling, so a
        # model fitted with the compiled kernel loads where only the NumPy twin is available.
        state = dict(super().__getstate__())
        for key in ("network_", "_param_views", "_optimizer", "_optimizer_net"):
            state.pop(key, None)
        if "coefs_" in state:
            state["coefs_"] = [np.array(c) for c in self.coefs_]
            state["intercepts_"] = [np.array(b) for b in self.intercepts_]
        solver = getattr(self, "_optimizer", None)
        if solver is not None and getattr(self, "_optimizer_net", None) is getattr(self, "network_", None):
            state["_solver_state"] = (solver.solver, solver.state())
        return state

    def __setstate__(self, state):
        state = dict(state)
        solver_state = state.pop("_solver_state", None)
        super().__setstate__(state)
        if hasattr(self, "coefs_"):
            self._sync_network()
            if solver_state is not None:
                name, values = solver_state
                objective = self._objective(self.network_)
                solver = _Solver(self, self.network_, objective.grad_factor)
                if solver.solver == name:
                    solver.load(values)
                    self._optimizer = solver
                    self._optimizer_net = self.network_


def _score_or_nan(function, y, y_pred, sample_weight):
    # As scikit-learn: a diverged model's validation score is NaN, not an error inside sklearn.metrics.
    if np.issubdtype(np.asarray(y_pred).dtype, np.floating) and not np.isfinite(y_pred).all():
        return np.nan
    return float(function(y, y_pred, sample_weight=sample_weight))


def _check_stochastic(estimator):
    if estimator.solver not in _STOCHASTIC_SOLVERS:
        raise AttributeError(
            f"partial_fit is only available for stochastic optimizers. {estimator.solver} is not stochastic."
        )
    return True


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's ``MLPRegressor``, trained by fastbp.

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default="squared_error"
        The half squared error with an identity output, or the half Poisson deviance with an exponential
        output (log link; ``y >= 0``).
    hidden_layer_sizes : int or tuple of int, default=(100,)
        The sizes of the hidden layers.
    activation : {"relu", "tanh", "logistic", "identity"}, default="relu"
        The hidden layers' activation.
    solver : {"adam", "sgd", "lbfgs"}, default="adam"
        scikit-learn's Adam, SGD with momentum, or full-batch L-BFGS (``scipy.optimize.minimize``).
    alpha : float, default=0.0001
        L2 penalty on the weights, divided by the batch size (the sample-weight sum with weights).
    batch_size : int or "auto", default="auto"
        Mini-batch size of the stochastic solvers; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        The schedule of ``solver="sgd"``.
    learning_rate_init : float, default=0.001
        The initial learning rate (sgd, adam).
    power_t : float, default=0.5
        The exponent of "invscaling".
    max_iter : int, default=200
        Epochs (stochastic solvers) or iterations (lbfgs).
    shuffle : bool, default=True
        Shuffle the examples every epoch (stochastic solvers).
    random_state : int, RandomState instance or None, default=None
        The initial weights, the shuffles and the validation split, drawn as scikit-learn draws them.
    tol : float, default=1e-4
        Stop when the loss (or validation score) has not improved by ``tol`` for ``n_iter_no_change``
        epochs; for lbfgs the gradient tolerance.
    verbose : bool, default=False
    warm_start : bool, default=False
        ``fit`` continues from ``coefs_``/``intercepts_``.
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop when its score stops improving; the best
        parameters are restored.
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's parameters (scikit-learn's epsilon convention).
    n_iter_no_change : int or np.inf, default=10
    max_fun : int, default=15000
        The most loss evaluations of lbfgs.
    dtype : None, "float32" or "float64", default=None
        The parameters' dtype; None follows the training data (float32 stays float32).
    backend : {"cython", "numpy"} or None, default=None
        The fastbp backend (None: fastbp's default).
    threads : int or None, default=None
        At most this many BLAS threads while fitting; None picks them as ``fastbp.Network.fit`` does.

    Attributes
    ----------
    loss_ : float
    best_loss_ : float or None
    loss_curve_ : list of float
    validation_scores_ : list of float or None
    best_validation_score_ : float or None
    t_ : int
    coefs_ : list of ndarray of shape (n_in, n_out)
    intercepts_ : list of ndarray of shape (n_out,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    n_iter_ : int
    n_layers_ : int
    n_outputs_ : int
    out_activation_ : str
        "identity", or "exp" with ``loss="poisson"``.
    network_ : fastbp.Network
        The trained network (``network_.to_torch()`` gives the PyTorch module).
    """

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype=None,
        backend=None,
        threads=None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
            beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
            backend=backend, threads=threads,
        )
        self.loss = loss

    def _check_loss(self):
        if not isinstance(self.loss, str) or self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"The 'loss' parameter must be 'squared_error' or 'poisson', got {self.loss!r}")

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("MLPRegressor(loss='poisson') needs targets y >= 0")
        return X, y

    def _decode_validation_targets(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _score_validation(self, X, y, sample_weight):
        return _score_or_nan(r2_score, y, self._predict(X, check_input=False), sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` (n_samples, n_features; dense or CSR/CSC) and ``y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights: each batch's loss is the weighted mean of its examples' losses and the L2
            term is divided by the batch's weight sum, as in scikit-learn.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_check_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch of the stochastic solver over ``X, y`` (starting a network on the first call).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._output(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predicted targets: shape (n_samples,) or (n_samples, n_outputs), in the parameters' dtype."""
        check_is_fitted(self, "coefs_")
        return self._predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's ``MLPClassifier``, trained by fastbp.

    A softmax output and the cross-entropy for more than two classes; one logistic output (binary
    cross-entropy) for two classes, and one per label for multilabel targets. ``predict_proba`` gives the
    probabilities, in ``classes_`` order.

    Parameters
    ----------
    Those of :class:`MLPRegressor` except ``loss``; with early stopping the validation score is the
    accuracy.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_, t_, coefs_, intercepts_,
    n_features_in_, feature_names_in_, n_iter_, n_layers_, n_outputs_, network_
        As for :class:`MLPRegressor`.
    out_activation_ : str
        "softmax", or "logistic" for binary and multilabel targets.
    """

    def _out_activation(self):
        if self._label_binarizer.y_type_ == "multiclass":
            return "softmax"
        return "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            binarizer = LabelBinarizer()
            binarizer.fit(y)
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the previous call "
                        f"to fit. Previously got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                    f"'y' has {classes}."
                )
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def _decode_validation_targets(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def _score_validation(self, X, y, sample_weight):
        return _score_or_nan(accuracy_score, y, self._predict(X, check_input=False), sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` (n_samples, n_features; dense or CSR/CSC) and labels ``y`` (n_samples,),
        or a label-indicator matrix (n_samples, n_labels) for multilabel classification.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights, as for :meth:`MLPRegressor.fit`.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_check_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch of the stochastic solver over ``X, y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default=None
        classes : array-like, optional
            Every class label; required on the first call, as in scikit-learn.

        Returns
        -------
        self
        """
        first_call = self._check_partial_fit_first_call(classes)
        if first_call:
            binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                binarizer.fit(y)
            else:
                binarizer.fit(classes)
            self._label_binarizer = binarizer
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _check_partial_fit_first_call(self, classes):
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            classes = unique_labels(classes)
            if getattr(self, "classes_", None) is not None:
                if not np.array_equal(self.classes_, classes):
                    raise ValueError(
                        f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                        f"{self.classes_!r}"
                    )
            else:
                self.classes_ = classes
                return True
        return False

    def _predict(self, X, check_input=True):
        y_pred = self._output(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """The predicted classes: shape (n_samples,), or (n_samples, n_labels) for multilabel targets."""
        check_is_fitted(self, "coefs_")
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities: shape (n_samples, n_classes), in ``classes_`` order."""
        check_is_fitted(self, "coefs_")
        y_pred = self._output(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba``."""
        y_prob = self.predict_proba(X)
        with np.errstate(divide="ignore"):  # a probability that rounds to 0 has log -inf
            return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags
