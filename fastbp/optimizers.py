"""Optimizers: each holds its hyper-parameters and state buffers (laid out like ``net.params``) and updates
a network's parameters in place, with exactly the semantics of its ``torch.optim`` namesake."""

from __future__ import annotations

import numpy as np

from fastbp import _spec, _reference
from fastbp._results import Gradients
from fastbp._validation import _as_real_array, _check_bool, _check_real, _describe


def _check_network(net):
    # Duck-typed so that this module does not import fastbp.network (which imports it): a Network is what
    # has a flat parameter buffer and the busy lock the optimizers take.
    if not (isinstance(getattr(net, "params", None), np.ndarray) and callable(getattr(net, "_exclusive", None))):
        raise TypeError(f"net must be a fastbp.Network; got {_describe(net)}")


class SGD:
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

    def __init__(self, net, lr, *, momentum=0.0, weight_decay=0.0, nesterov=False):
        _check_network(net)
        self.net = net
        self._lr = _check_real(lr, "lr", positive=True)
        self.momentum = _check_real(momentum, "momentum", non_negative=True)
        self.weight_decay = _check_real(weight_decay, "weight_decay", non_negative=True)
        self.nesterov = _check_bool(nesterov, "nesterov")
        if self.nesterov and self.momentum <= 0:
            raise ValueError(f"nesterov=True requires momentum > 0 (as torch.optim.SGD); got momentum="
                             f"{self.momentum}")
        self._velocity = np.zeros_like(net.params)
        self._ws = None
        self._grad = np.empty_like(net.params)
        self._backup = np.empty_like(net.params)
        self._velocity_backup = np.empty_like(net.params)

    @property
    def velocity(self):
        """The momentum buffer, laid out like ``net.params`` (zero until a step with momentum)."""
        return self._velocity

    @velocity.setter
    def velocity(self, values):
        # Copied into the existing buffer, checked: the kernel trusts its size and dtype (see Network.params).
        array = _as_real_array(values, "velocity", self.net.dtype)
        if array.shape != self._velocity.shape:
            raise ValueError(f"velocity must have shape {self._velocity.shape}; got {array.shape}")
        np.copyto(self._velocity, array)

    @property
    def lr(self):
        """The learning rate (settable; finite positive)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_real(value, "lr", positive=True)

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov})")

    def _workspace(self, max_batch):
        net = self.net
        ws = self._ws
        if ws is None or ws.max_batch < max_batch:
            self._ws = net._new_workspace(max_batch)
        return self._ws

    def step(self, grads):
        """Apply one update from a :class:`Gradients` (for example ``net.gradients(X, Y)``)."""
        if not isinstance(grads, Gradients):
            raise TypeError(f"grads must be a fastbp.Gradients; got {_describe(grads)}")
        net = self.net
        new_weights, new_biases = net._check_params(grads.weights, grads.biases)
        for (W, b), value_W, value_b in zip(_spec.layer_views(net.layer_sizes, self._grad),
                                            new_weights, new_biases):
            W[...] = value_W
            b[...] = value_b
        with net._exclusive("SGD.step"):
            np.copyto(self._backup, net.params)
            np.copyto(self._velocity_backup, self.velocity)
            with np.errstate(over="ignore", invalid="ignore"):
                _reference.sgd_update(net.params, self._grad, self.lr, self.momentum, self.weight_decay,
                                      self.nesterov, self.velocity)
            if not (np.isfinite(net.params).all() and np.isfinite(self.velocity).all()):
                np.copyto(net.params, self._backup)
                np.copyto(self.velocity, self._velocity_backup)
                error = FloatingPointError(f"SGD.step diverged: a parameter became NaN or infinite (lr="
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
            When the loss or an updated parameter is not finite; the parameters are left unchanged.
        """
        net = self.net
        X2, Y2, single = net._prepare(X, Y)
        n = X2.shape[0]
        weights = net._prepare_sample_weight(sample_weight, n, single)
        params, velocity = net.params, self.velocity
        with net._exclusive("SGD.train_step"):
            ws = self._workspace(n)
            np.copyto(self._backup, params)
            uses_velocity = self.momentum != 0  # the backends leave the velocity alone without momentum
            if uses_velocity:
                np.copyto(self._velocity_backup, velocity)
            loss_sum, weight_sum, done, status = net._module.train_epoch(
                ws, params, X2, Y2, weights, n, self.lr, self.momentum, self.weight_decay, self.nesterov,
                velocity, -1)
            if status == _spec.STATUS_INTERRUPTED:
                raise KeyboardInterrupt
            if status == _spec.STATUS_NONFINITE or not net._module.all_finite(params):
                np.copyto(params, self._backup)
                if uses_velocity:
                    np.copyto(velocity, self._velocity_backup)
                what = "the loss" if status == _spec.STATUS_NONFINITE else "a parameter"
                error = FloatingPointError(f"train_step diverged: {what} became NaN or infinite (lr="
                                           f"{self.lr}); the parameters are left unchanged")
                error.epoch, error.batch = 0, 0
                raise error
        return loss_sum / weight_sum
