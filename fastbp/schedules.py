"""Learning-rate schedules for ``Network.fit(lr_schedule=...)``: callables ``epoch -> lr``."""

from __future__ import annotations

from fastbp._validation import _check_int, _check_real, _describe


class StepDecay:
    """``lr(epoch) = initial_lr * factor ** (epoch // every)``."""

    def __init__(self, initial_lr, factor=0.5, every=10):
        self.initial_lr = _check_real(initial_lr, "initial_lr", positive=True)
        self.factor = _check_real(factor, "factor", positive=True)
        self.every = _check_int(every, "every", 1)

    def __call__(self, epoch):
        return self.initial_lr * self.factor ** (epoch // self.every)


class InverseScaling:
    """``lr(epoch) = initial_lr / (epoch + 1) ** power_t`` (scikit-learn's ``"invscaling"``, per epoch)."""

    def __init__(self, initial_lr, power_t=0.5):
        self.initial_lr = _check_real(initial_lr, "initial_lr", positive=True)
        self.power_t = _check_real(power_t, "power_t", non_negative=True)

    def __call__(self, epoch):
        return self.initial_lr / (epoch + 1) ** self.power_t


def make_schedule(lr_schedule, lr):
    if lr_schedule is None or callable(lr_schedule):
        return lr_schedule
    if lr_schedule == "step":
        return StepDecay(lr)
    if lr_schedule in ("invscaling", "inverse_scaling"):
        return InverseScaling(lr)
    raise ValueError(f"lr_schedule must be None, a callable epoch -> lr, 'step' or 'invscaling'; got "
                     f"{_describe(lr_schedule)}")
