"""Learning-rate schedules for ``Network.fit(lr_schedule=...)``: callables ``epoch -> lr``."""

from __future__ import annotations

import math

from fastbp._validation import _check_int, _check_real, _describe


def _checked(name, check, **options):
    """A property whose setter checks the value as the constructor does: a schedule's attributes stay
    valid after construction (``every = 0`` divided by zero, ``factor = 10**400`` overflowed)."""
    private = "_" + name

    def get(self):
        return getattr(self, private)

    def set(self, value):
        setattr(self, private, check(value, name, **options))

    return property(get, set, doc=f"``{name}``, checked on assignment as in the constructor.")


class StepDecay:
    """``lr(epoch) = initial_lr * factor ** (epoch // every)``."""

    initial_lr = _checked("initial_lr", _check_real, positive=True)
    factor = _checked("factor", _check_real, positive=True)
    every = _checked("every", _check_int, minimum=1)

    def __init__(self, initial_lr, factor=0.5, every=10):
        self.initial_lr = initial_lr
        self.factor = factor
        self.every = every

    def __call__(self, epoch):
        try:
            return self.initial_lr * self.factor ** (epoch // self.every)
        except OverflowError:  # factor**k beyond float's range (fit then refuses the learning rate)
            return math.inf


class InverseScaling:
    """``lr(epoch) = initial_lr / (epoch + 1) ** power_t`` (scikit-learn's ``"invscaling"``, per epoch)."""

    initial_lr = _checked("initial_lr", _check_real, positive=True)
    power_t = _checked("power_t", _check_real, non_negative=True)

    def __init__(self, initial_lr, power_t=0.5):
        self.initial_lr = initial_lr
        self.power_t = power_t

    def __call__(self, epoch):
        try:
            return self.initial_lr / (epoch + 1) ** self.power_t
        except OverflowError:  # (epoch + 1)**power_t beyond float's range: the rate has decayed to zero
            return 0.0


def make_schedule(lr_schedule, lr):
    if lr_schedule is None or callable(lr_schedule):
        return lr_schedule
    if lr_schedule == "step":
        return StepDecay(lr)
    if lr_schedule in ("invscaling", "inverse_scaling"):
        return InverseScaling(lr)
    raise ValueError(f"lr_schedule must be None, a callable epoch -> lr, 'step' or 'invscaling'; got "
                     f"{_describe(lr_schedule)}")
