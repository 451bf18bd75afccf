"""Optimizers: each holds its hyper-parameters and state buffers (laid out like ``net.params``) and updates
a network's parameters in place, with exactly the semantics of its ``torch.optim`` namesake.

Every optimizer but :class:`LBFGS` is an update rule of the kernel (``fastbp/_spec.py`` ``RULES``): the
object owns the three arrays the kernel reads, a float64 hyper-parameter array (slots ``_spec.HYPER_*``),
the state array of shape ``(n_state_rows, n_params)`` and the step counter, and the backend's
``train_epoch`` / ``optimizer_step`` apply the rule without Python per step. The hyper-parameters are
checked properties that write into the array; the state is only ever copied into, never replaced.
"""

from __future__ import annotations

import math
import time

import numpy as np

from fastbp import _spec, _training
from fastbp._results import Gradients, History
from fastbp._validation import SparseRows, _as_real_array, _check_bool, _check_int, _check_real, _describe


def _check_network(net):
    # Duck-typed so that this module does not import fastbp.network (which imports it): a Network is what
    # has a flat parameter buffer and the busy lock the optimizers take.
    if not (isinstance(getattr(net, "params", None), np.ndarray) and callable(getattr(net, "_exclusive", None))):
        raise TypeError(f"net must be a fastbp.Network; got {_describe(net)}")


# ---------------------------------------------------------------------------------------------------
# Checked hyper-parameters: one descriptor per slot of the hyper array


def _unit_interval(value, name):
    """A float in [0, 1)."""
    value = _check_real(value, name)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return value


class _Hyper:
    """A hyper-parameter stored in slot ``slot`` of ``optimizer._hyper``, checked on every assignment.

    ``check(value, name)`` converts or raises; ``relation(optimizer, value)`` (optional) checks it against
    the other hyper-parameters. Flags are stored as 0.0 / 1.0 and read back as bool.
    """

    def __init__(self, slot, check, doc, *, flag=False, relation=None):
        self.slot, self.check, self.flag, self.relation = slot, check, flag, relation
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, optimizer, owner=None):
        if optimizer is None:
            return self
        value = float(optimizer._hyper[self.slot])
        return value != 0 if self.flag else value

    def __set__(self, optimizer, value):
        value = self.check(value, self.name)
        if self.relation is not None:
            self.relation(optimizer, value)
        optimizer._hyper[self.slot] = float(value)


def _positive(value, name):
    return _check_real(value, name, positive=True)


def _non_negative(value, name):
    return _check_real(value, name, non_negative=True)


class _StateRow:
    """Row ``index`` of the optimizer's state array (a view; assignment copies into it, checked)."""

    def __init__(self, index, doc):
        self.index = index
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, optimizer, owner=None):
        if optimizer is None:
            return self
        return optimizer._state[self.index]

    def __set__(self, optimizer, values):
        # Copied into the existing buffer, checked: the kernel trusts its size and dtype (see Network.params).
        row = optimizer._state[self.index]
        array = _as_real_array(values, self.name, optimizer.net.dtype)
        if array.shape != row.shape:
            raise ValueError(f"{self.name} must have shape {row.shape}; got {array.shape}")
        optimizer._check_row_values(self.index, array, self.name)
        with optimizer.net._exclusive(f"setting {type(optimizer).__name__}.{self.name}"):
            np.copyto(row, array)


# ---------------------------------------------------------------------------------------------------
# The base class


class Optimizer:
    """An update rule of the kernel bound to one network: hyper-parameters, state and step count.

    Subclasses (:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop`, :class:`Rprop`) set the
    rule and its hyper-parameters; this class holds the arrays the backend reads and the training entry
    points. Pass one to ``Network.fit(optimizer=...)`` or call :meth:`train_step` / :meth:`step`.

    Attributes
    ----------
    net : Network
        The network it updates (read-only).
    state : numpy.ndarray
        Shape ``(n_state_rows, net.n_params)``, the network's dtype; rows named by ``state_names``.
    steps : int
        Updates made so far (Adam's bias correction counts them).
    """

    _RULE = "sgd"   # each subclass names its rule (fastbp/_spec.py RULES)
    # State rows that must stay >= 0 (square roots are taken of them, or they are step lengths).
    _non_negative_rows: tuple = ()
    lr = _Hyper(_spec.HYPER_LR, _positive, "The learning rate (settable; finite positive).")

    def __init__(self, net):
        _check_network(net)
        self._net = net
        self._rule_code = _spec.RULE_CODES[self._RULE]
        self._hyper = np.zeros(_spec.N_HYPER, dtype=np.float64)

    def _allocate(self):
        # Called by the subclasses once every hyper-parameter has passed its check.
        net = self._net
        shape = (len(_spec.STATE_ROWS[self._RULE]), net.params.size)
        self._state = np.zeros(shape, dtype=net.params.dtype)
        self._steps = np.zeros(1, dtype=np.int64)
        self._ws = None
        self._grad = np.empty_like(net.params)
        self._backup = np.empty_like(net.params)
        self._state_backup = np.empty_like(self._state)

    # -- read-only identity and state ------------------------------------------------------------------

    @property
    def net(self):
        """The network this optimizer updates (fixed at construction: its state is sized for it)."""
        return self._net

    @property
    def rule(self):
        """The kernel's update rule this optimizer runs (``"sgd"``, ``"adam"``, ...; read-only)."""
        return self._RULE

    @property
    def state_names(self):
        """The names of the rows of :attr:`state`, in order."""
        return _spec.STATE_ROWS[self._RULE]

    @property
    def state(self):
        """The state array, shape ``(len(state_names), net.n_params)`` (a live view: do not resize)."""
        return self._state

    @property
    def steps(self):
        """The number of updates made so far."""
        return int(self._steps[0])

    def _hyper_names(self):
        """The names of this optimizer's hyper-parameter descriptors, in class order."""
        names = []
        for klass in reversed(type(self).__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, _Hyper) and name not in names:
                    names.append(name)
        return names

    def hyperparameters(self):
        """The hyper-parameters as a dict of plain numbers and flags."""
        return {name: getattr(self, name) for name in self._hyper_names()}

    def __repr__(self):
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments})"

    def _check_row_values(self, index, array, name):
        if index in self._non_negative_rows and (array < 0).any():
            raise ValueError(f"{name} must be >= 0 everywhere")

    def _check_door(self):
        """Before the kernel runs: the state must still fit the network exactly (it reads raw pointers)."""
        params = self._net.params
        expected = (len(_spec.STATE_ROWS[self._RULE]), params.size)
        if (self._state.shape != expected or self._state.dtype != params.dtype
                or not self._state.flags.c_contiguous or self._steps.shape != (1,)
                or self._steps.dtype != np.int64 or self._hyper.shape != (_spec.N_HYPER,)
                or self._hyper.dtype != np.float64):
            raise RuntimeError(f"{type(self).__name__}: its state no longer matches the network's parameters "
                               f"(state {self._state.shape} {self._state.dtype}, params {params.shape} "
                               f"{params.dtype}); create a new optimizer")

    def _updates_state(self):
        """Whether an update writes the state (plain SGD does not: the backends leave it alone)."""
        return True

    def _kernel_arguments(self):
        """What the backend's ``train_epoch`` takes after the batch size: ``rule, hyper, state, steps``."""
        self._check_door()
        return self._rule_code, self._hyper, self._state, self._steps

    def _state_finite(self):
        """Whether every state value is finite (Adam's moments can overflow before the parameters do)."""
        return not self._updates_state() or self._net._module.all_finite(self._state)

    def _snapshot(self, into=None):
        """A copy of what training updates besides the parameters: ``(state, steps)`` (into ``into``)."""
        if into is None:
            return (self._state.copy(), self._steps.copy())
        np.copyto(into[0], self._state)
        np.copyto(into[1], self._steps)
        return into

    def _restore(self, snapshot):
        """Put back a state taken by :meth:`_snapshot`."""
        np.copyto(self._state, snapshot[0])
        np.copyto(self._steps, snapshot[1])

    def zero_state(self):
        """Forget the state: every state row to zero and the step count to 0 (as a fresh optimizer)."""
        with self._net._exclusive(f"{type(self).__name__}.zero_state"):
            self._state[...] = 0
            self._steps[0] = 0

    # -- state_dict ------------------------------------------------------------------------------------

    def state_dict(self):
        """The optimizer's state as plain arrays and numbers (fresh copies; storable in an ``.npz``).

        Returns
        -------
        dict
            ``rule`` (str), ``hyper`` (float64 array of ``_spec.N_HYPER`` slots), ``state`` (array of
            shape ``(len(state_names), n_params)``) and ``steps`` (int).
        """
        return {"rule": self._RULE, "hyper": self._hyper.copy(), "state": self._state.copy(),
                "steps": int(self._steps[0])}

    def load_state_dict(self, state_dict):
        """Restore what :meth:`state_dict` returned (checked first; nothing changes if a check fails).

        Raises
        ------
        TypeError, ValueError
            For a missing key, another rule, wrong shapes or dtype, non-finite values or bad
            hyper-parameters.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict; got {_describe(state_dict)}")
        missing = {"rule", "hyper", "state", "steps"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        rule = state_dict["rule"]
        rule = rule.item() if isinstance(rule, np.ndarray) and rule.shape == () else rule
        if rule != self._RULE:
            raise ValueError(f"state_dict is for rule {rule!r}; this optimizer is {self._RULE!r}")
        hyper = _as_real_array(state_dict["hyper"], "state_dict['hyper']", np.float64)
        if hyper.shape != (_spec.N_HYPER,):
            raise ValueError(f"state_dict['hyper'] must have shape ({_spec.N_HYPER},); got {hyper.shape}")
        state = state_dict["state"]
        if not isinstance(state, np.ndarray) or state.dtype != self._state.dtype:
            raise TypeError(f"state_dict['state'] must be an array of dtype {self._state.dtype}; got "
                            f"{_describe(state)}")
        state = _as_real_array(state, "state_dict['state']", self._state.dtype)
        if state.shape != self._state.shape:
            raise ValueError(f"state_dict['state'] must have shape {self._state.shape}; got {state.shape}")
        for index, name in enumerate(self.state_names):
            self._check_row_values(index, state[index], f"state_dict['state'][{index}] ({name})")
        steps = state_dict["steps"]
        steps = steps.item() if isinstance(steps, np.ndarray) and steps.shape == () else steps
        steps = _check_int(steps, "state_dict['steps']", 0)
        with self._net._exclusive(f"{type(self).__name__}.load_state_dict"):
            old = self._hyper.copy()
            try:
                # All slots first, then each through its checked setter: a relation between two values
                # (nesterov and momentum, step_min <= step_max) is checked against the new ones.
                np.copyto(self._hyper, hyper)
                for name in self._hyper_names():
                    descriptor = getattr(type(self), name)
                    value = float(hyper[descriptor.slot])
                    if descriptor.flag:
                        if value not in (0.0, 1.0):
                            raise ValueError(f"state_dict['hyper'][{descriptor.slot}] ({name}) must be 0 or 1; "
                                             f"got {value}")
                        value = value == 1.0
                    setattr(self, name, value)
                self._check_private_slots(hyper)
            except (TypeError, ValueError):
                np.copyto(self._hyper, old)
                raise
            np.copyto(self._state, state)
            self._steps[0] = steps

    # -- scikit-learn's terms (private to fastbp.sklearn) ---------------------------------------------

    def _set_sklearn_terms(self, *, l2=0.0, sklearn_eps=False):
        """Private to ``fastbp.sklearn``: scikit-learn's L2 on the weights (``_spec.HYPER_L2``, applied by
        the backend's ``train_epoch``, so by ``fit`` and ``train_step`` but not by ``step``) and, for Adam,
        scikit-learn's epsilon convention (``_spec.HYPER_ADAM_SKLEARN_EPS``). The public optimizers keep
        torch's semantics: both stay 0 unless this is called."""
        l2 = _check_real(l2, "l2", non_negative=True)
        if sklearn_eps and self._RULE != "adam":
            raise ValueError(f"scikit-learn's epsilon convention is Adam's; this optimizer is {self._RULE!r}")
        self._sklearn = True
        self._hyper[_spec.HYPER_L2] = l2
        self._hyper[_spec.HYPER_ADAM_SKLEARN_EPS] = 1.0 if sklearn_eps else 0.0

    def _check_private_slots(self, hyper):
        """The slots of ``_set_sklearn_terms`` in a state_dict: 0 for a public optimizer."""
        l2, flag = float(hyper[_spec.HYPER_L2]), float(hyper[_spec.HYPER_ADAM_SKLEARN_EPS])
        if not getattr(self, "_sklearn", False):
            if l2 != 0 or flag != 0:
                raise ValueError(f"state_dict['hyper'][{_spec.HYPER_ADAM_SKLEARN_EPS}] and "
                                 f"[{_spec.HYPER_L2}] are private to fastbp.sklearn and must be 0; got "
                                 f"{flag} and {l2}")
            return
        if not l2 >= 0 or flag not in (0.0, 1.0) or (flag and self._RULE != "adam"):
            raise ValueError(f"state_dict['hyper'] has a bad L2 ({l2}) or epsilon flag ({flag})")

    # -- training --------------------------------------------------------------------------------------

    def _workspace(self, max_batch):
        ws = self._ws
        if ws is None or ws.max_batch < max_batch:
            self._ws = self._net._new_workspace(max_batch)
        return self._ws

    def step(self, grads):
        """Apply one update from a :class:`Gradients` (for example ``net.gradients(X, Y)``).

        Raises
        ------
        FloatingPointError
            When an updated parameter or state value is not finite; parameters, state and step count
            are left unchanged.
        """
        if not isinstance(grads, Gradients):
            raise TypeError(f"grads must be a fastbp.Gradients; got {_describe(grads)}")
        net = self._net
        new_weights, new_biases = net._check_params(grads.weights, grads.biases)
        for (W, b), value_W, value_b in zip(_spec.layer_views(net.layer_sizes, self._grad),
                                            new_weights, new_biases):
            W[...] = value_W
            b[...] = value_b
        name = f"{type(self).__name__}.step"
        with net._exclusive(name):
            self._check_door()
            module = net._module
            np.copyto(self._backup, net.params)
            np.copyto(self._state_backup, self._state)
            steps_before = int(self._steps[0])
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                module.optimizer_step(net.params, self._grad, self._rule_code, self._hyper, self._state,
                                      self._steps)
            if not (module.all_finite(net.params) and module.all_finite(self._state)):
                np.copyto(net.params, self._backup)
                np.copyto(self._state, self._state_backup)
                self._steps[0] = steps_before
                error = FloatingPointError(f"{name} diverged: a parameter became NaN or infinite (lr="
                                           f"{self.lr}); the parameters are left unchanged")
                error.epoch, error.batch = 0, 0
                raise error

    def train_step(self, X, Y, sample_weight=None):
        """Forward, backward and update on one batch in one backend call.

        Parameters
        ----------
        X, Y : array_like
            One batch, as for :meth:`Network.loss`.
        sample_weight : array_like of shape (n,) or None
            Per-example factors (finite, >= 0, not all zero): the step minimises
            ``sum_i w_i l_i / sum_i w_i``.

        Returns
        -------
        float
            The batch loss before the update.

        Raises
        ------
        FloatingPointError
            When the loss or an updated parameter is not finite; parameters, state and step count are
            left unchanged.
        """
        net = self._net
        X2, Y2, single = net._prepare(X, Y)
        n = X2.shape[0]
        weights = net._prepare_sample_weight(sample_weight, n, single)
        params, state = net.params, self._state
        with net._exclusive(f"{type(self).__name__}.train_step"):
            self._check_door()
            ws = self._workspace(n)
            np.copyto(self._backup, params)
            uses_state = self._updates_state()
            if uses_state:
                np.copyto(self._state_backup, state)
            steps_before = int(self._steps[0])
            loss_sum, weight_sum, done, status = _training.run_epoch(net, ws, self, X2, Y2, weights, n, -1)
            if status == _spec.STATUS_INTERRUPTED:
                raise KeyboardInterrupt
            if status == _spec.STATUS_NONFINITE or not (net._module.all_finite(params) and self._state_finite()):
                np.copyto(params, self._backup)
                if uses_state:
                    np.copyto(state, self._state_backup)
                self._steps[0] = steps_before
                what = "the loss" if status == _spec.STATUS_NONFINITE else "a parameter"
                error = FloatingPointError(f"train_step diverged: {what} became NaN or infinite (lr="
                                           f"{self.lr}); the parameters are left unchanged")
                error.epoch, error.batch = 0, 0
                raise error
        return loss_sum / weight_sum


# ---------------------------------------------------------------------------------------------------
# The rules


def _sgd_momentum_relation(optimizer, value):
    if value <= 0 and optimizer.nesterov:
        raise ValueError(f"momentum must stay > 0 while nesterov=True; got {value}")


def _sgd_nesterov_relation(optimizer, value):
    if value and optimizer.momentum <= 0:
        raise ValueError(f"nesterov=True requires momentum > 0 (as torch.optim.SGD); got momentum="
                         f"{optimizer.momentum}")


class SGD(Optimizer):
    """Stochastic gradient descent exactly as ``torch.optim.SGD`` (dampening 0).

    Parameters
    ----------
    net : Network
    lr : float
        Finite, positive.
    momentum : float
        >= 0; the velocity buffer starts at zero (so the first step uses ``v = g``, as torch).
    weight_decay : float
        >= 0; adds ``weight_decay * theta`` to the gradient.
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0``.

    Notes
    -----
    Per update: ``g += weight_decay * theta``; ``v = momentum * v + g``; ``g = g + momentum * v`` with
    Nesterov, else ``g = v`` (when momentum is nonzero); ``theta -= lr * g``.
    """

    _RULE = "sgd"
    weight_decay = _Hyper(_spec.HYPER_WEIGHT_DECAY, _non_negative, "L2 coefficient added to the gradient (>= 0).")
    momentum = _Hyper(_spec.HYPER_SGD_MOMENTUM, _non_negative, "Momentum factor (>= 0).",
                      relation=_sgd_momentum_relation)
    nesterov = _Hyper(_spec.HYPER_SGD_NESTEROV, _check_bool, "Nesterov momentum (needs momentum > 0).",
                      flag=True, relation=_sgd_nesterov_relation)
    velocity = _StateRow(0, "The momentum buffer, laid out like ``net.params`` (zero until a step with "
                            "momentum).")

    def __init__(self, net, lr, *, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(net)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self._allocate()

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _updates_state(self):
        return self.momentum != 0


class _AdamBase(Optimizer):
    _non_negative_rows = (1, 2)
    beta1 = _Hyper(_spec.HYPER_ADAM_BETA1, _unit_interval, "Decay of the first moment, in [0, 1).")
    beta2 = _Hyper(_spec.HYPER_ADAM_BETA2, _unit_interval, "Decay of the second moment, in [0, 1).")
    eps = _Hyper(_spec.HYPER_ADAM_EPS, _positive, "Added to the denominator (> 0).")
    weight_decay = _Hyper(_spec.HYPER_WEIGHT_DECAY, _non_negative, "Weight decay (>= 0).")
    amsgrad = _Hyper(_spec.HYPER_ADAM_AMSGRAD, _check_bool, "Use the running maximum of the second moment.",
                     flag=True)
    exp_avg = _StateRow(0, "First moment estimate, laid out like ``net.params``.")
    exp_avg_sq = _StateRow(1, "Second moment estimate, laid out like ``net.params``.")
    max_exp_avg_sq = _StateRow(2, "Running maximum of the second moment (used with ``amsgrad``).")

    def __init__(self, net, lr, betas, eps, weight_decay, amsgrad):
        super().__init__(net)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self._allocate()

    @property
    def betas(self):
        """``(beta1, beta2)``, each in [0, 1)."""
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2); got {_describe(value)}")
        beta1 = _unit_interval(value[0], "betas[0]")
        beta2 = _unit_interval(value[1], "betas[1]")
        self.beta1, self.beta2 = beta1, beta2

    def hyperparameters(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad}


class Adam(_AdamBase):
    """Adam exactly as ``torch.optim.Adam`` (L2 weight decay added to the gradient).

    Parameters
    ----------
    net : Network
    lr : float
        Finite, positive.
    betas : (float, float)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float
        > 0, added to the denominator.
    weight_decay : float
        >= 0; adds ``weight_decay * theta`` to the gradient.
    amsgrad : bool
        Divide by the running maximum of the second moment (the AMSGrad variant).

    Notes
    -----
    Per update ``t``: ``m = beta1 m + (1 - beta1) g``; ``s = beta2 s + (1 - beta2) g^2``;
    ``theta -= lr / (1 - beta1^t) * m / (sqrt(s) / sqrt(1 - beta2^t) + eps)``.
    """

    _RULE = "adam"

    def __init__(self, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(net, lr, betas, eps, weight_decay, amsgrad)


class AdamW(_AdamBase):
    """AdamW exactly as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Parameters are those of :class:`Adam`; ``weight_decay`` (default 0.01) multiplies the parameters by
    ``1 - lr * weight_decay`` before each update instead of entering the gradient.
    """

    _RULE = "adamw"

    def __init__(self, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(net, lr, betas, eps, weight_decay, amsgrad)


def _alpha(value, name):
    value = _check_real(value, name)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return value


class RMSprop(Optimizer):
    """RMSprop exactly as ``torch.optim.RMSprop``.

    Parameters
    ----------
    net : Network
    lr : float
        Finite, positive.
    alpha : float
        Smoothing constant of the squared-gradient average, in [0, 1].
    eps : float
        > 0, added to the denominator.
    weight_decay : float
        >= 0; adds ``weight_decay * theta`` to the gradient.
    momentum : float
        >= 0; with momentum the scaled gradient goes through a momentum buffer.
    centered : bool
        Divide by the estimated standard deviation of the gradient instead of its root mean square.
    """

    _RULE = "rmsprop"
    _non_negative_rows = (0,)
    alpha = _Hyper(_spec.HYPER_RMSPROP_ALPHA, _alpha, "Smoothing constant, in [0, 1].")
    eps = _Hyper(_spec.HYPER_RMSPROP_EPS, _positive, "Added to the denominator (> 0).")
    weight_decay = _Hyper(_spec.HYPER_WEIGHT_DECAY, _non_negative, "L2 coefficient added to the gradient (>= 0).")
    momentum = _Hyper(_spec.HYPER_RMSPROP_MOMENTUM, _non_negative, "Momentum factor (>= 0).")
    centered = _Hyper(_spec.HYPER_RMSPROP_CENTERED, _check_bool, "Centered RMSprop.", flag=True)
    square_avg = _StateRow(0, "Running average of the squared gradient.")
    momentum_buffer = _StateRow(1, "Momentum buffer (used when ``momentum > 0``).")
    grad_avg = _StateRow(2, "Running average of the gradient (used when ``centered``).")

    def __init__(self, net, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(net)
        self.lr = lr
        self.alpha = alpha
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.centered = centered
        self._allocate()


class Rprop(Optimizer):
    """Resilient backpropagation exactly as ``torch.optim.Rprop``.

    Parameters
    ----------
    net : Network
    lr : float
        Finite, positive: every parameter's initial step size.
    etas : (float, float)
        ``(eta_minus, eta_plus)`` with ``0 < eta_minus < 1 < eta_plus``: the factors that shrink a step
        size after the gradient changed sign and grow it while the sign stays.
    step_sizes : (float, float)
        ``(step_min, step_max)`` with ``0 <= step_min <= step_max``: the bounds of every step size.

    Notes
    -----
    Full-batch training (``batch_size`` equal to the number of examples) is what Rprop is designed for:
    it uses only the sign of the gradient.
    """

    _RULE = "rprop"
    _non_negative_rows = (1,)
    eta_minus = _Hyper(_spec.HYPER_RPROP_ETA_MINUS, _positive, "Step shrink factor, in (0, 1).")
    eta_plus = _Hyper(_spec.HYPER_RPROP_ETA_PLUS, _positive, "Step growth factor, > 1.")
    step_min = _Hyper(_spec.HYPER_RPROP_STEP_MIN, _non_negative, "Smallest step size (>= 0).")
    step_max = _Hyper(_spec.HYPER_RPROP_STEP_MAX, _non_negative, "Largest step size.")
    prev = _StateRow(0, "The gradient used at the previous step (zero after a sign change).")
    step_size = _StateRow(1, "Each parameter's current step size (filled with lr at the first step).")

    def __init__(self, net, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
        super().__init__(net)
        self.lr = lr
        self.etas = etas
        self.step_sizes = step_sizes
        self._allocate()

    @staticmethod
    def _pair(value, name):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise TypeError(f"{name} must be a pair of numbers; got {_describe(value)}")
        return _check_real(value[0], f"{name}[0]"), _check_real(value[1], f"{name}[1]")

    @property
    def etas(self):
        """``(eta_minus, eta_plus)`` with ``0 < eta_minus < 1 < eta_plus``."""
        return (self.eta_minus, self.eta_plus)

    @etas.setter
    def etas(self, value):
        eta_minus, eta_plus = self._pair(value, "etas")
        if not 0 < eta_minus < 1 < eta_plus:
            raise ValueError(f"etas must satisfy 0 < eta_minus < 1 < eta_plus; got {(eta_minus, eta_plus)}")
        self._hyper[_spec.HYPER_RPROP_ETA_MINUS] = eta_minus
        self._hyper[_spec.HYPER_RPROP_ETA_PLUS] = eta_plus

    @property
    def step_sizes(self):
        """``(step_min, step_max)`` with ``0 <= step_min <= step_max``."""
        return (self.step_min, self.step_max)

    @step_sizes.setter
    def step_sizes(self, value):
        step_min, step_max = self._pair(value, "step_sizes")
        if not 0 <= step_min <= step_max:
            raise ValueError(f"step_sizes must satisfy 0 <= step_min <= step_max; got {(step_min, step_max)}")
        self._hyper[_spec.HYPER_RPROP_STEP_MIN] = step_min
        self._hyper[_spec.HYPER_RPROP_STEP_MAX] = step_max

    def __setattr__(self, name, value):
        # eta_minus/eta_plus and step_min/step_max only make sense as pairs: set them through etas and
        # step_sizes, which check the pair's order.
        if name in ("eta_minus", "eta_plus"):
            etas = list(self.etas)
            etas[name == "eta_plus"] = value
            name, value = "etas", tuple(etas)
        elif name in ("step_min", "step_max"):
            sizes = list(self.step_sizes)
            sizes[name == "step_max"] = value
            name, value = "step_sizes", tuple(sizes)
        super().__setattr__(name, value)

    def hyperparameters(self):
        return {"lr": self.lr, "etas": self.etas, "step_sizes": self.step_sizes}


# ---------------------------------------------------------------------------------------------------
# L-BFGS: full batch, driven by scipy


class LBFGS:
    """Full-batch L-BFGS through ``scipy.optimize.minimize(method="L-BFGS-B")``.

    The loss and its gradient over the whole training set come from the backend's compiled
    ``loss_and_gradient``, in workspace-sized chunks weighted by their rows (no Python per example).
    Use it as ``net.fit(X, Y, optimizer=fastbp.LBFGS(net))`` (``epochs``, ``batch_size``, ``shuffle`` and
    ``lr`` do not apply) or call :meth:`minimize`.

    Parameters
    ----------
    net : Network
    max_iter : int
        Most iterations (scikit-learn's ``max_iter``; scipy's ``maxiter``).
    max_fun : int
        Most loss evaluations (scikit-learn's ``max_fun``; scipy's ``maxfun``).
    tol : float
        Stop when the largest gradient component falls below it (scipy's ``gtol``, as scikit-learn).

    Attributes
    ----------
    result_ : scipy.optimize.OptimizeResult or None
        What scipy returned after the last run.
    """

    _CHUNK = 4096

    # scipy's L-BFGS-B counts iterations and evaluations in a C int.
    _MAX_COUNT = 2**31 - 1

    def __init__(self, net, *, max_iter=200, max_fun=15000, tol=1e-4):
        _check_network(net)
        self.max_iter = max_iter
        self.max_fun = max_fun
        self.tol = tol
        self._net = net
        self.result_ = None

    @property
    def max_iter(self):
        """Most iterations (an int in [1, 2**31 - 1]; checked on assignment)."""
        return self._max_iter

    @max_iter.setter
    def max_iter(self, value):
        self._max_iter = self._check_count(value, "max_iter")

    @property
    def max_fun(self):
        """Most loss evaluations (an int in [1, 2**31 - 1]; checked on assignment)."""
        return self._max_fun

    @max_fun.setter
    def max_fun(self, value):
        self._max_fun = self._check_count(value, "max_fun")

    @property
    def tol(self):
        """The gradient tolerance (a finite number >= 0; checked on assignment)."""
        return self._tol

    @tol.setter
    def tol(self, value):
        self._tol = _check_real(value, "tol", non_negative=True)

    @classmethod
    def _check_count(cls, value, name):
        value = _check_int(value, name, 1)
        if value > cls._MAX_COUNT:
            raise ValueError(f"{name} must be <= {cls._MAX_COUNT}; got {value}")
        return value

    @property
    def net(self):
        """The network this optimizer trains (fixed at construction)."""
        return self._net

    def __repr__(self):
        return f"LBFGS(max_iter={self.max_iter}, max_fun={self.max_fun}, tol={self.tol})"

    def _objective(self, X, Y, sample_weight=None):
        """Return ``f(x) -> (loss, gradient)`` over all of X, both in float64 as scipy wants."""
        net = self._net
        module, params = net._module, net.params
        n = X.shape[0]
        ws = net._new_workspace(min(n, self._CHUNK), sparse_input=isinstance(X, SparseRows))
        gradient = np.zeros(params.size, dtype=np.float64)
        total_weight = n if sample_weight is None else float(sample_weight.sum(dtype=np.float64))

        def f(x):
            params[...] = x            # float32 networks: rounded to their dtype
            gradient[...] = 0
            total = 0.0
            for start in range(0, n, ws.max_batch):
                stop = start + ws.max_batch
                X_chunk, Y_chunk = X[start:stop], Y[start:stop]
                w_chunk = None if sample_weight is None else sample_weight[start:stop]
                chunk_weight = X_chunk.shape[0] if w_chunk is None else float(w_chunk.sum(dtype=np.float64))
                if chunk_weight == 0:
                    continue
                # every loss is a (weighted) mean over rows: weight each chunk by its share of the total
                weight = chunk_weight / total_weight
                total += _training.loss_and_gradient(net, ws, X_chunk, Y_chunk, w_chunk) * weight
                gradient[...] += ws.grad * weight
            return total, gradient.copy()

        return f

    def minimize(self, X, Y, sample_weight=None):
        """Train on all of ``(X, Y)``; return a :class:`History` with the loss after each iteration.

        ``sample_weight`` (None or shape (n,)) weights each example's loss as in ``Network.fit``.

        Raises
        ------
        FloatingPointError
            When the search ends on non-finite parameters; the starting parameters are restored.
        """
        net = self._net
        X2, Y2, single = net._prepare(X, Y)
        if single:
            raise ValueError(f"LBFGS needs X of shape (n, {net.layer_sizes[0]}); got a single example")
        weights = net._prepare_sample_weight(sample_weight, X2.shape[0])
        with net._exclusive("LBFGS.minimize"):
            return self._run(X2, Y2, weights)

    def _run(self, X, Y, sample_weight=None):
        """The minimisation on prepared arrays; the caller holds the network's lock."""
        from scipy.optimize import minimize  # scipy is a dependency; imported here to keep import light

        net = self._net
        start = net.params.copy()
        objective = self._objective(X, Y, sample_weight)
        history = History()
        last = {"time": time.perf_counter()}

        def record(intermediate_result):
            now = time.perf_counter()
            history.loss.append(float(intermediate_result.fun))
            history.epoch_time.append(now - last["time"])
            history.lr.append(math.nan)
            last["time"] = now

        with np.errstate(over="ignore", invalid="ignore"):
            result = minimize(objective, start.astype(np.float64), method="L-BFGS-B", jac=True,
                              callback=record,
                              options={"maxiter": self.max_iter, "maxfun": self.max_fun, "gtol": self.tol})
        self.result_ = result
        if not (np.isfinite(result.x).all() and math.isfinite(result.fun)):
            net.params[...] = start
            raise FloatingPointError("LBFGS diverged: the loss or a parameter became NaN or infinite; the "
                                     "parameters are restored")
        net.params[...] = result.x
        return history
