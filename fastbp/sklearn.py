"""scikit-learn estimators backed by fastbp: ``MLPRegressor`` and ``MLPClassifier``.

They take the parameters of ``sklearn.neural_network.MLPRegressor``/``MLPClassifier`` that make sense for
mini-batch SGD (the only solver fastbp has) and train a :class:`fastbp.Network` with :class:`fastbp.SGD`, one
compiled epoch per call so that the ``tol``/``n_iter_no_change`` and early-stopping rules of scikit-learn can
run between epochs. They work wherever a scikit-learn estimator does (``Pipeline``, ``GridSearchCV``,
``cross_val_score``, joblib's dask backend) and pass ``sklearn.utils.estimator_checks.check_estimator``.

Differences from scikit-learn's own MLP, by design:

- ``solver`` is always SGD with ``torch.optim.SGD`` semantics (``momentum``, ``nesterovs_momentum``); the
  learning rate is constant (``learning_rate_init``).
- ``alpha`` is the SGD ``weight_decay``: each step adds ``alpha * theta`` to the gradient of every parameter,
  biases included, as ``torch.optim.SGD(weight_decay=alpha)`` does (scikit-learn scales its L2 term by the
  batch size and leaves biases out).
- The regressor minimises ``"mse"`` (``torch.nn.MSELoss``), the classifier ``"cross_entropy"`` on one logit
  per class (also for two classes); ``loss_curve_`` holds these mean training losses, without the L2 term.
- ``dtype`` chooses float32 or float64 for the parameters and the computation; ``backend`` chooses the
  compiled kernel or the NumPy twin (default: fastbp's default).

Requires scikit-learn >= 1.6 (``pip install 'fastbp[sklearn]'``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from fastbp import _spec

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastbp.sklearn needs scikit-learn >= 1.6: pip install 'fastbp[sklearn]' "
        f"(or pip install 'scikit-learn>=1.6'); importing it failed with: {error}"
    ) from error

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names, and fastbp's own, to fastbp's.
_ACTIVATIONS = {
    "identity": "identity",
    "logistic": "sigmoid",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
}
_DTYPES = ("float32", "float64")
_SEED_BOUND = np.iinfo(np.int32).max


def _check_number(name, value, *, low, high=None, low_inclusive=True, high_inclusive=True, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a real number"
        raise TypeError(f"The '{name}' parameter must be {expected}, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high or not np.isfinite(value):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        bounds = f"{left}{low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"The '{name}' parameter must be in the range {bounds}, got {value!r}")


class _BaseMLP(BaseEstimator):
    """Shared parameters, validation and the training loop of the two estimators."""

    _loss: str | None = None  # "mse" or "cross_entropy", set by the subclasses

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        learning_rate_init=0.001,
        batch_size="auto",
        max_iter=200,
        momentum=0.9,
        nesterovs_momentum=True,
        alpha=0.0001,
        shuffle=True,
        random_state=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        dtype="float64",
        backend=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.alpha = alpha
        self.shuffle = shuffle
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.backend = backend

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
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"The 'activation' parameter must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        _check_number("learning_rate_init", self.learning_rate_init, low=0, low_inclusive=False)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("momentum", self.momentum, low=0, high=1)
        _check_number("alpha", self.alpha, low=0)
        _check_number("validation_fraction", self.validation_fraction, low=0, high=1, low_inclusive=False,
                      high_inclusive=False)
        _check_number("n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        _check_number("tol", self.tol, low=0)
        for name in ("nesterovs_momentum", "shuffle", "early_stopping", "warm_start"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"The '{name}' parameter must be a bool, got {getattr(self, name)!r}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.name not in _DTYPES:
            raise ValueError(f"The 'dtype' parameter must be 'float32' or 'float64', got {self.dtype!r}")
        return [int(size) for size in sizes], dtype

    # ----------------------------------------------------------------------------------------- hooks (sub)
    def _validate_input(self, X, y, *, reset, incremental, classes=None):
        raise NotImplementedError

    def _targets(self, y):
        """The float target matrix the network trains on (one-hot rows for the classifier)."""
        raise NotImplementedError

    def _validation_score(self, X, y):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- training
    def _new_network(self, n_features, n_outputs, dtype, hidden):
        from .network import Network

        activations = [_ACTIVATIONS[self.activation]] * len(hidden) + ["identity"]
        seed = int(self._random_state.randint(_SEED_BOUND))
        return Network(
            [n_features, *hidden, n_outputs], activations, loss=self._loss, dtype=dtype, seed=seed,
            backend=self.backend,
        )

    def _new_optimizer(self):
        from .network import SGD

        momentum = float(self.momentum)
        return SGD(
            self.network_,
            float(self.learning_rate_init),
            momentum=momentum,
            weight_decay=float(self.alpha),
            nesterov=bool(self.nesterovs_momentum) and momentum > 0,
        )

    def _batch_size(self, n_samples):
        if isinstance(self.batch_size, str):
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` larger than sample size. It is going to be clipped", stacklevel=3)
        return int(np.clip(self.batch_size, 1, n_samples))

    def _fit(self, X, y, *, incremental, classes=None):
        hidden, dtype = self._validate_params()
        fitted = hasattr(self, "network_")
        continuing = fitted and (incremental or self.warm_start)
        X, y = self._validate_input(X, y, reset=not continuing, incremental=incremental, classes=classes)
        if X.shape[0] == 0:
            raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
        X = np.ascontiguousarray(X, dtype=dtype)

        if not continuing:
            self._random_state = check_random_state(self.random_state)
            self.network_ = self._new_network(X.shape[1], self._n_network_outputs(y), dtype, hidden)
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self._no_improvement_count = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self._optimizer = None
        elif not hasattr(self, "_random_state"):  # unpickled estimator
            self._random_state = check_random_state(self.random_state)
        if dtype != self.network_.dtype:
            raise ValueError(
                f"dtype={dtype.name} differs from the fitted network's {self.network_.dtype.name}; "
                f"set warm_start=False (or call fit) to start again"
            )
        if self._optimizer is None or not incremental:
            # A new fit (warm or not) starts a fresh optimizer, as scikit-learn does; partial_fit keeps the
            # optimizer so that the momentum buffer carries over from one call to the next.
            self._optimizer = self._new_optimizer()

        early_stopping = self.early_stopping and not incremental
        if early_stopping:
            stratify = y if isinstance(self, ClassifierMixin) else None
            X, X_val, y, y_val = train_test_split(
                X, y, random_state=self._random_state, test_size=self.validation_fraction, stratify=stratify
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the size of your "
                    "dataset."
                )
            X = np.ascontiguousarray(X)
            if self.validation_scores_ is None:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
            best_params = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None

        Y = self._targets(y)
        batch_size = self._batch_size(X.shape[0])
        epochs = 1 if incremental else self.max_iter
        stopped = False
        for _ in range(epochs):
            seed = int(self._random_state.randint(_SEED_BOUND))
            try:
                history = self.network_.fit(
                    X, Y, epochs=1, batch_size=batch_size, optimizer=self._optimizer,
                    shuffle=bool(self.shuffle), seed=seed,
                )
            except KeyboardInterrupt:
                # As scikit-learn's MLP: Ctrl-C ends training and keeps the model (as after the last
                # completed update, which fastbp guarantees).
                warnings.warn("Training interrupted by user.", stacklevel=3)
                stopped = True
                break
            except FloatingPointError as error:
                raise ValueError(
                    "Solver produced non-finite parameter weights or loss. The input data may contain large "
                    f"values and need to be preprocessed, or learning_rate_init may be too large ({error})"
                ) from error
            loss = float(history.loss[-1])
            self.n_iter_ += 1
            self.t_ += X.shape[0]
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")

            if early_stopping:
                score = self._validation_score(X_val, y_val)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if score < self.best_validation_score_ + self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_params = self.network_.params.copy()
            else:
                if loss > self.best_loss_ - self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if loss < self.best_loss_:
                    self.best_loss_ = loss

            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early_stopping else "Training loss"
                if self.verbose:
                    print(
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                stopped = True
                break

        if not incremental and not stopped:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                "hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if early_stopping and best_params is not None:
            self._restore_params(best_params)
        if not incremental:
            self._no_improvement_count = 0
        return self

    def _restore_params(self, params):
        offsets, _ = _spec.param_offsets(self.network_.layer_sizes)
        weights, biases = [], []
        for (w_offset, b_offset), n_in, n_out in zip(
            offsets, self.network_.layer_sizes[:-1], self.network_.layer_sizes[1:]
        ):
            weights.append(params[w_offset:w_offset + n_in * n_out].reshape(n_out, n_in))
            biases.append(params[b_offset:b_offset + n_out])
        self.network_.set_params(weights, biases)

    def _forward(self, X):
        check_is_fitted(self, "network_")
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self.network_.predict(np.ascontiguousarray(X, dtype=self.network_.dtype))

    # ------------------------------------------------------------------------------------------ pickling
    def __getstate__(self):
        # The optimizer holds backend workspaces, and the network names the backend it was built on; pickle
        # the plain arrays instead and rebuild both with this estimator's ``backend`` when unpickling, so a
        # model fitted with the compiled kernel loads where only the NumPy twin is available. The momentum
        # buffer is kept so that partial_fit continues exactly.
        state = dict(super().__getstate__())
        network = state.pop("network_", None)
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:
            state["_velocity"] = np.array(optimizer.velocity, copy=True)
        if network is not None:
            state["_network_state"] = {
                "layer_sizes": list(network.layer_sizes),
                "activations": list(network.activations),
                "loss": network.loss_name,
                "dtype": np.dtype(network.dtype).name,
                "params": np.array(network.params, copy=True),
            }
        return state

    def __setstate__(self, state):
        state = dict(state)
        network_state = state.pop("_network_state", None)
        velocity = state.pop("_velocity", None)
        super().__setstate__(state)
        self._optimizer = None
        if network_state is not None:
            from .network import Network

            self.network_ = Network(
                network_state["layer_sizes"], network_state["activations"], loss=network_state["loss"],
                dtype=network_state["dtype"], seed=0, backend=self.backend,
            )
            self._restore_params(np.asarray(network_state["params"], dtype=network_state["dtype"]))
            if velocity is not None:
                self._optimizer = self._new_optimizer()
                self._optimizer.velocity[...] = velocity


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by fastbp (mini-batch SGD with momentum, MSE loss).

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default=(100,)
        The sizes of the hidden layers; ``()`` gives a linear model.
    activation : {"relu", "tanh", "logistic", "sigmoid", "identity"}, default="relu"
        The hidden layers' activation ("logistic" is scikit-learn's name for "sigmoid"). The output layer
        is linear.
    learning_rate_init : float, default=0.001
        The SGD learning rate (constant).
    batch_size : int or "auto", default="auto"
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    max_iter : int, default=200
        The most epochs one ``fit`` runs.
    momentum : float, default=0.9
        SGD momentum in [0, 1].
    nesterovs_momentum : bool, default=True
        Nesterov momentum (when ``momentum > 0``).
    alpha : float, default=0.0001
        L2 penalty, applied as SGD weight decay (see the module notes).
    shuffle : bool, default=True
        Shuffle the examples every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffles and the validation split.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop when its R^2 stops improving by ``tol`` for
        ``n_iter_no_change`` epochs; the best parameters seen are restored.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
        Without early stopping, training stops when the training loss has not improved by ``tol`` for
        ``n_iter_no_change`` consecutive epochs; otherwise a ``ConvergenceWarning`` is issued at ``max_iter``.
    verbose : bool, default=False
        Print the loss of every epoch.
    warm_start : bool, default=False
        ``fit`` continues from the fitted network instead of starting again.
    dtype : {"float64", "float32"}, default="float64"
        The network's dtype.
    backend : {"cython", "numpy"} or None, default=None
        The fastbp backend (None: fastbp's default).

    Attributes
    ----------
    network_ : fastbp.Network
        The trained network (``network_.to_torch()`` gives the PyTorch module).
    loss_curve_ : list of float
        The mean training loss of each epoch.
    n_iter_ : int
        Epochs run.
    t_ : int
        Training examples seen.
    best_loss_ : float or None
    validation_scores_ : list of float or None
        With early stopping, the validation R^2 after each epoch.
    best_validation_score_ : float or None
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X had string column names (a pandas DataFrame).
    n_outputs_ : int
    """

    _loss = "mse"

    def _validate_input(self, X, y, *, reset, incremental, classes=None):
        X, y = validate_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32), reset=reset
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self.n_outputs_ = n_outputs
        elif n_outputs != self.n_outputs_:
            raise ValueError(
                f"y has {n_outputs} output(s), but {type(self).__name__} was fitted with {self.n_outputs_}"
            )
        return X, y

    def _n_network_outputs(self, y):
        return 1 if y.ndim == 1 else y.shape[1]

    def _targets(self, y):
        return np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=self.network_.dtype)

    def _validation_score(self, X, y):
        return r2_score(y, self._predict_array(X))

    def _predict_array(self, X):
        prediction = self.network_.predict(np.ascontiguousarray(X, dtype=self.network_.dtype))
        return prediction.ravel() if self.n_outputs_ == 1 else prediction

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and ``y`` (n_samples,) or (n_samples, n_outputs).

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch of SGD over ``X, y`` (starting a new network on the first call).

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted targets: shape (n_samples,) or (n_samples, n_outputs), float64 whatever ``dtype``."""
        # scikit-learn's regressors predict float64; a float32 network computes in float32 and widens.
        prediction = self._forward(X).astype(np.float64, copy=False)
        return prediction.ravel() if self.n_outputs_ == 1 else prediction

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by fastbp (softmax cross-entropy, mini-batch SGD).

    The network has one output (logit) per class, an identity last layer and the ``"cross_entropy"`` loss
    (``torch.nn.CrossEntropyLoss``); ``predict_proba`` is the softmax of the logits. Targets may be any
    labels (ints, strings); at least two classes are needed. Multilabel targets are not supported.

    Parameters
    ----------
    Those of :class:`MLPRegressor`; with early stopping the validation score is the accuracy.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    network_, loss_curve_, n_iter_, t_, best_loss_, validation_scores_, best_validation_score_,
    n_features_in_, feature_names_in_
        As for :class:`MLPRegressor`.
    """

    _loss = "cross_entropy"

    def _validate_input(self, X, y, *, reset, incremental, classes=None):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] > 1:
            raise ValueError(
                f"{type(self).__name__} supports binary and multiclass targets, not {type_of_target(y)}"
            )
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if reset:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            labels = unique_labels(y) if classes is None else unique_labels(np.asarray(classes))
            if len(labels) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in the data, but the data "
                    f"contains only one class: {labels[0]!r}"
                )
            if classes is not None and len(np.setdiff1d(unique_labels(y), labels)):
                raise ValueError(f"`y` has classes not in `classes`={labels}.")
            self.classes_ = labels
        else:
            labels = unique_labels(y)
            if classes is not None and not np.array_equal(unique_labels(np.asarray(classes)), self.classes_):
                raise ValueError(
                    f"`classes={classes!r}` is not the same as on the first call to partial_fit, "
                    f"which was {self.classes_}"
                )
            if self.warm_start and not incremental:
                if set(labels) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the previous call "
                        f"to fit. Previously got {self.classes_}, `y` has {labels}"
                    )
            elif len(np.setdiff1d(labels, self.classes_)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                    f"'y' has {labels}."
                )
        return X, y

    def _n_network_outputs(self, y):
        return len(self.classes_)

    def _targets(self, y):
        indices = np.searchsorted(self.classes_, y)
        targets = np.zeros((y.shape[0], len(self.classes_)), dtype=self.network_.dtype)
        targets[np.arange(y.shape[0]), indices] = 1
        return targets

    def _validation_score(self, X, y):
        logits = self.network_.predict(np.ascontiguousarray(X, dtype=self.network_.dtype))
        return accuracy_score(y, self.classes_[np.argmax(logits, axis=1)])

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y`` (n_samples,).

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch of SGD over ``X, y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            Every class label; required on the first call, as in scikit-learn.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=True, classes=classes)

    def predict(self, X):
        """The most probable class of each row: shape (n_samples,)."""
        logits = self._forward(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits): shape (n_samples, n_classes), ``classes_`` order."""
        return _spec.softmax(self._forward(X).astype(np.float64))

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba`` (computed stably from the logits)."""
        return _spec.log_softmax(self._forward(X).astype(np.float64))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        return tags
