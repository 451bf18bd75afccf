"""The training loop behind ``Network.fit``: epochs of backend calls, divergence unwinding, and callbacks.

``fit`` validates its arguments into a :class:`FitPlan` and calls :func:`fit_loop`. Every training call into
the backend goes through :func:`run_epoch` (the optimizer's hyper-parameters are passed there and nowhere
else); every copy of the optimizer's state goes through ``optimizer._snapshot`` / ``optimizer._restore``.
Validation, progress and early stopping are callbacks inside the loop (Keras-like hooks
``on_train_begin(logs)``, ``on_epoch_end(epoch, logs) -> stop?``, ``on_train_end(logs)``), and every
callback sees the same ``logs`` dict, so entries a callback adds land in ``History.metrics``.

This module reads a network through its attributes and never imports ``fastbp.network``.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fastbp import _metrics, _spec, _threads
from fastbp._results import History
from fastbp._validation import (SparseRows, _check_bool, _check_int, _check_real, _describe,
                                nonfinite_rows_error)

_STANDARD_LOGS = ("loss", "lr", "epoch_time", "val_loss")
_MAX_COLUMNS = 80


# ---------------------------------------------------------------------------------------------------------
# The one door to the backend's training call
# ---------------------------------------------------------------------------------------------------------


def run_epoch(net, ws, optimizer, X, Y, sample_weight, batch_size, key, progress=None, check_inputs=False):
    """One epoch (or, with ``len(X) <= batch_size`` and ``key = -1``, one step) in one backend call.

    ``progress``: None, or ``progress(examples_done, loss_sum, weight_sum)``, which the backend calls during
    the epoch at most every 0.2 s. Returns the backend's ``(loss_sum, weight_sum, examples_done, status)``.
    ``X`` is a dense matrix or :class:`~fastbp._validation.SparseRows` (then ``ws`` may be a
    ``sparse_input`` workspace). ``check_inputs`` (dense X): the backend checks X's rows for NaN and
    infinity as it uses them (status ``STATUS_BAD_INPUT``); SparseRows are checked when made.
    """
    threads = _threads.kernel_threads()
    if isinstance(X, SparseRows):
        return net._module.train_epoch_sparse(ws, net.params, X.data, X.indices, X.indptr, Y, sample_weight,
                                              batch_size, *optimizer._kernel_arguments(), key, progress,
                                              threads=threads)
    return net._module.train_epoch(ws, net.params, X, Y, sample_weight, batch_size,
                                   *optimizer._kernel_arguments(), key, progress, threads=threads,
                                   check_inputs=check_inputs)


def loss_and_gradient(net, ws, X, Y, sample_weight=None):
    """The backend's ``loss_and_gradient`` for one batch of dense rows or :class:`SparseRows`."""
    if isinstance(X, SparseRows):
        return net._module.loss_and_gradient_sparse(ws, net.params, X.data, X.indices, X.indptr, Y,
                                                    sample_weight)
    return net._module.loss_and_gradient(ws, net.params, X, Y, sample_weight)


# ---------------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------------


class Callback:
    """Base class of ``fit`` callbacks: override the hooks you need.

    ``network`` and ``history`` are set before ``on_train_begin``. ``logs`` is the one dict of the epoch
    (``loss``, ``lr``, ``epoch_time``, ``val_loss`` and metrics when computed): entries a callback adds are
    recorded in ``History.metrics``.
    """

    network = None
    history = None

    def set_context(self, network, history):
        self.network, self.history = network, history

    def on_train_begin(self, logs):
        """Before the first epoch."""

    def on_epoch_end(self, epoch, logs):
        """After each epoch (0-based ``epoch``); return True to stop training."""
        return None

    def on_train_end(self, logs):
        """After the last epoch, when training ended normally (not by an exception)."""


class _FunctionCallback(Callback):
    """A plain callable ``fn(epoch, logs)``, or an object with some of the hooks."""

    def __init__(self, target):
        self.target = target

    def set_context(self, network, history):
        super().set_context(network, history)
        hook = getattr(self.target, "set_context", None)
        if callable(hook):
            hook(network, history)

    def on_train_begin(self, logs):
        hook = getattr(self.target, "on_train_begin", None)
        if callable(hook):
            hook(logs)

    def on_epoch_end(self, epoch, logs):
        hook = getattr(self.target, "on_epoch_end", None)
        return hook(epoch, logs) if callable(hook) else self.target(epoch, logs)

    def on_train_end(self, logs):
        hook = getattr(self.target, "on_train_end", None)
        if callable(hook):
            hook(logs)


def check_callbacks(callbacks):
    """``callbacks`` (None, one callable or callback, or a list of them) as a list of :class:`Callback`."""
    if callbacks is None:
        return []
    if callable(callbacks) or isinstance(callbacks, Callback) or callable(getattr(callbacks, "on_epoch_end", None)):
        callbacks = [callbacks]
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a callable, a Callback or a list of them; got {_describe(callbacks)}")
    checked = []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, Callback):
            checked.append(callback)
        elif callable(callback) or callable(getattr(callback, "on_epoch_end", None)):
            checked.append(_FunctionCallback(callback))
        else:
            raise TypeError(f"callbacks[{index}] must be callable or have on_epoch_end; got "
                            f"{_describe(callback)}")
    return checked


class EarlyStopping(Callback):
    """Stop when the monitored loss has not improved for ``patience`` epochs.

    Parameters
    ----------
    patience : int
        Epochs without an improvement of more than ``min_delta`` before training stops (>= 1).
    min_delta : float
        The improvement that counts (>= 0).
    restore_best_weights : bool
        At the end of training, copy back the parameters of the best epoch (and say so: ``History.best_epoch``
        and, with ``verbose``, a line on stderr).
    monitor : str or None
        A ``logs`` entry to minimise; None monitors ``val_loss`` when validation data is given, else ``loss``.
    verbose : bool
        Print a line when the best weights are restored.
    """

    def __init__(self, patience=5, min_delta=0.0, restore_best_weights=True, monitor=None, verbose=False):
        self.patience = _check_int(patience, "patience", 1)
        self.min_delta = _check_real(min_delta, "min_delta", non_negative=True)
        self.restore_best_weights = _check_bool(restore_best_weights, "restore_best_weights")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logs entry or None; got {_describe(monitor)}")
        self.monitor = monitor
        self.verbose = _check_bool(verbose, "verbose")

    def on_train_begin(self, logs):
        self.best, self.best_epoch, self.best_params, self.waited = math.inf, None, None, 0
        self.monitored = self.monitor

    def on_epoch_end(self, epoch, logs):
        name = self.monitor if self.monitor is not None else ("val_loss" if "val_loss" in logs else "loss")
        self.monitored = name
        if name not in logs:
            raise ValueError(f"EarlyStopping monitors {name!r}, which is not in the epoch's logs "
                             f"({sorted(logs)})")
        monitored = logs[name]
        if monitored < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = monitored, epoch, 0
            if self.restore_best_weights:
                if self.best_params is None:
                    self.best_params = self.network.params.copy()
                else:
                    np.copyto(self.best_params, self.network.params)
            return None
        self.waited += 1
        return self.waited >= self.patience

    def on_train_end(self, logs):
        if self.history is not None:
            self.history.best_epoch = self.best_epoch
        if not (self.restore_best_weights and self.best_params is not None):
            return
        np.copyto(self.network.params, self.best_params)
        if self.history is not None:
            self.history.restored_best_weights = True
        if self.verbose:
            print(f"early stopping: restored the weights of epoch {self.best_epoch + 1} "
                  f"(best {self.monitored} {self.best:.6g})", file=sys.stderr, flush=True)


class _Evaluation(Callback):
    """Validation loss and metrics after each epoch, into ``logs``."""

    def __init__(self, train, validation, metrics, loss_name):
        self.train, self.validation, self.metrics, self.loss_name = train, validation, metrics, loss_name

    def on_epoch_end(self, epoch, logs):
        net = self.network
        train_metrics = [name for name in self.metrics if name != "loss"]
        if train_metrics:
            logs.update(_metrics.compute(train_metrics, net._output(self.train[0]), self.train[1],
                                         self.loss_name))
        if self.validation is not None:
            X, Y = self.validation
            output = net._output(X)
            logs["val_loss"] = float(_metrics.loss(output, Y, self.loss_name))
            logs.update(_metrics.compute(train_metrics, output, Y, self.loss_name, prefix="val_"))


def _fit_fields(fields, width):
    """Join whole fields with two spaces into lines of at most ``width`` columns (never cutting one)."""
    lines, current = [], ""
    for text in fields:
        candidate = text if not current else current + "  " + text
        if current and len(candidate) > width:
            lines.append(current)
            current = "    " + text
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _format_value(value):
    return f"{value:.6g}" if isinstance(value, (float, int, np.floating, np.integer)) else str(value)


def _format_rate(rate):
    """Examples per second in at most 10 columns: ``950 ex/s``, ``12.3k ex/s``, ``4.09M ex/s``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale and math.isfinite(rate):
            return f"{rate / scale:.3g}{suffix} ex/s"
    return f"{rate:.0f} ex/s" if math.isfinite(rate) else "- ex/s"


class _Progress(Callback):
    """Progress on stderr, within each epoch and after it.

    On a terminal, one line rewritten in place (tqdm's bar when installed), at most 80 columns: whole fields
    that do not fit are left out, never cut. During an epoch the backend reports the examples done and the
    running loss (``within_epoch``), so a long epoch moves the line every 0.2 s. Anywhere else (a file, a
    pipe, a notebook's captured stream), one plain line per epoch, wrapped at 80 columns between fields,
    and no report during the epoch.
    """

    def __init__(self, epochs, n, bar, stream=None):
        self.epochs, self.n = epochs, n
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(bar) and callable(isatty) and bool(isatty())
        self.width = min(_MAX_COLUMNS, shutil.get_terminal_size((_MAX_COLUMNS, 24)).columns) - 1
        self.bar = None
        self.written = False
        self.epoch_started = time.perf_counter()
        if self.live:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                # the bar's head is written by _bar_format: the epoch under way, not tqdm's count (which
                # is fractional within an epoch)
                self.bar = tqdm(total=epochs, file=self.stream, ncols=self.width,
                                bar_format=self._bar_format(0))

    def _bar_format(self, epochs_shown):
        return f"epoch {epochs_shown}/{self.epochs} |{{bar}}| {{desc}}"

    def within_epoch(self, epoch):
        """The backend's progress hook for ``epoch`` (0-based), or None when nothing is shown within epochs
        (not a terminal): then the backend never reads the clock for it."""
        self.epoch_started = time.perf_counter()
        if not self.live:
            return None

        def report(done, loss_sum, weight_sum):
            self.on_batch(epoch, done, loss_sum, weight_sum)

        return report

    def on_batch(self, epoch, done, loss_sum, weight_sum):
        """Show ``done`` of ``n`` examples of ``epoch`` trained, with the running loss of the epoch so far."""
        fraction = min(max(done / self.n, 0.0), 1.0) if self.n else 0.0
        elapsed = time.perf_counter() - self.epoch_started
        fields = [f"{int(100 * fraction)}%"]  # floored: 100% only once the epoch is done
        if weight_sum > 0:
            fields.append(f"loss={_format_value(loss_sum / weight_sum)}")
        fields.append(_format_rate(done / elapsed if elapsed > 0 else math.inf))
        if self.bar is not None:
            fixed = len(f"epoch {self.epochs}/{self.epochs} || ") + 10
            self.bar.bar_format = self._bar_format(epoch + 1)
            self.bar.n = epoch + fraction
            self.bar.set_description_str(self._fit_one_line(fields, self.width - fixed), refresh=True)
        else:
            head = f"epoch {epoch + 1}/{self.epochs}"
            line = self._fit_one_line([head] + fields, self.width)
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.written = True

    def _fields(self, logs):
        fields = [f"{key}={_format_value(value)}" for key, value in logs.items()
                  if key not in ("lr", "epoch_time")]
        elapsed = logs.get("epoch_time", 0.0)
        rate = self.n / elapsed if elapsed > 0 else math.inf
        fields.append(_format_rate(rate))
        return fields

    def on_epoch_end(self, epoch, logs):
        fields = self._fields(logs)
        head = f"epoch {epoch + 1}/{self.epochs}"
        if self.bar is not None:
            # The bar needs the fixed text plus at least 10 columns; the postfix gets the rest.
            fixed = len(f"epoch {self.epochs}/{self.epochs} || ") + 10
            self.bar.bar_format = self._bar_format(epoch + 1)
            self.bar.set_description_str(self._fit_one_line(fields, self.width - fixed), refresh=False)
            self.bar.n = epoch  # back to whole epochs after the fractional reports of this one
            self.bar.update(1)
        elif self.live:
            line = self._fit_one_line([head] + fields, self.width)
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.written = True
        else:
            for line in _fit_fields([head] + fields, self.width):
                print(line, file=self.stream)
            self.stream.flush()
        return None

    @staticmethod
    def _fit_one_line(fields, width):
        line = ""
        for text in fields:
            candidate = text if not line else line + "  " + text
            if len(candidate) > width:
                break
            line = candidate
        return line

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.written:
            self.stream.write("\n")
            self.stream.flush()
            self.written = False

    def on_train_end(self, logs):
        self.close()


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FitPlan:
    """Everything ``fit`` validated, ready for :func:`fit_loop`."""

    X: np.ndarray
    Y: np.ndarray
    epochs: int
    batch_size: int
    optimizer: object
    shuffle: bool
    seed: int
    record_gradients: bool = False
    validation: tuple | None = None
    schedule: object = None
    metrics: tuple = ()
    progress: bool = False
    verbose: int = 0
    callbacks: list = field(default_factory=list)
    sample_weight: np.ndarray | None = None
    # X not yet checked for NaN and infinity: the first epoch checks each batch's rows as it uses them (a
    # separate pass over a large X would cost a few percent of an epoch: it reads X from memory once more).
    check_X: bool = False


def fit_loop(net, plan):
    """Train ``net`` as ``plan`` says; return the :class:`History`.

    Raises ``FloatingPointError`` (parameters restored to their last finite state, ``history`` attached)
    on divergence, ``KeyboardInterrupt`` on Ctrl-C (parameters as after the last completed update), and,
    with ``plan.check_X``, ``ValueError`` for a row of X with NaN or infinity (found during the first epoch,
    before any update used it; the parameters, the optimizer's state and its lr put back as before ``fit``).
    """
    X, Y, weights, optimizer = plan.X, plan.Y, plan.sample_weight, plan.optimizer
    n = X.shape[0]
    batch_size = min(plan.batch_size, n)  # the same batches; and a huge int would overflow the kernel's size_t
    ws = net._new_workspace(batch_size, sparse_input=isinstance(X, SparseRows))
    params = net.params
    params_start = np.empty_like(params)
    optimizer_start = optimizer._snapshot()
    history = History(loss_name=net.loss_name)
    progress = None
    if plan.progress or plan.verbose >= 1:
        progress = _Progress(plan.epochs, n, (plan.progress or plan.verbose == 1) and plan.verbose != 2)
    callbacks = []
    if plan.validation is not None or any(name != "loss" for name in plan.metrics):
        callbacks.append(_Evaluation((X, Y), plan.validation, plan.metrics, net.loss_name))
    if progress is not None:
        callbacks.append(progress)
    callbacks.extend(plan.callbacks)
    for callback in callbacks:
        callback.set_context(net, history)
    logs = {}
    lr_before = optimizer.lr
    try:
        for callback in callbacks:
            callback.on_train_begin(logs)
        for epoch in range(plan.epochs):
            if plan.schedule is not None:
                optimizer.lr = plan.schedule(epoch)
            lr = optimizer.lr
            # The start-of-epoch state: the fallback when divergence must be unwound.
            np.copyto(params_start, params)
            optimizer._snapshot(into=optimizer_start)
            key = _spec.epoch_key(plan.seed, epoch) if plan.shuffle else -1
            report = None if progress is None else progress.within_epoch(epoch)
            started = time.perf_counter()
            loss_sum, weight_sum, done, status = run_epoch(net, ws, optimizer, X, Y, weights, batch_size, key,
                                                           report, check_inputs=plan.check_X and epoch == 0)
            elapsed = time.perf_counter() - started
            if status == _spec.STATUS_INTERRUPTED:
                raise KeyboardInterrupt
            if status == _spec.STATUS_BAD_INPUT:   # epoch 0: its starting state is fit's
                np.copyto(params, params_start)
                optimizer._restore(optimizer_start)
                optimizer.lr = lr_before
                raise nonfinite_rows_error("X", X)
            if status == _spec.STATUS_NONFINITE or not (net._module.all_finite(params)
                                                        and optimizer._state_finite()):
                batch, what = _unwind(net, ws, optimizer, X, Y, weights, batch_size, key, params_start,
                                      optimizer_start, status, done)
                error = FloatingPointError(
                    f"training diverged: {what} became NaN or infinite at epoch {epoch + 1} of {plan.epochs}, "
                    f"batch {batch + 1} of {-(-n // batch_size)} (lr={lr}); the parameters are restored "
                    "to their last finite values")
                error.epoch, error.batch, error.history = epoch, batch, history
                raise error
            history.loss.append(loss_sum / weight_sum if weight_sum > 0 else math.nan)
            history.epoch_time.append(elapsed)
            history.lr.append(lr)
            logs = {"loss": history.loss[-1], "lr": lr, "epoch_time": elapsed}
            if plan.record_gradients:
                history.gradient_norms.append(gradient_norms(net, ws, X, Y, weights))
            stop = False
            for callback in callbacks:
                stop = (callback.on_epoch_end(epoch, logs) is True) or stop
            _record(history, logs)
            if stop:
                history.stopped_epoch = epoch
                break
        for callback in callbacks:
            callback.on_train_end(logs)
    finally:
        if progress is not None:
            progress.close()
    return history


def _record(history, logs):
    if "val_loss" in logs:
        history.val_loss.append(float(logs["val_loss"]))
    for key, value in logs.items():
        if key not in _STANDARD_LOGS:
            history.metrics.setdefault(key, []).append(value)


def _unwind(net, ws, optimizer, X, Y, weights, batch_size, key, params_start, optimizer_start, status, done):
    """After divergence: find the first bad batch and leave the parameters as just before it.

    Replays the epoch from its starting state one batch at a time (the backend is deterministic, so
    the replay makes the same updates). Returns ``(batch index, what diverged)``.
    """
    params = net.params
    if status == _spec.STATUS_NONFINITE and np.isfinite(params).all() and optimizer._state_finite():
        return done // batch_size, "the loss"      # stopped before updating: already the last finite state
    np.copyto(params, params_start)
    optimizer._restore(optimizer_start)
    n = X.shape[0]
    order = _spec.permutation(n, key) if key >= 0 else np.arange(n)
    before = np.empty_like(params)
    optimizer_before = optimizer._snapshot()
    for batch, start in enumerate(range(0, n, batch_size)):
        rows = order[start:start + batch_size]
        X_batch = X[rows] if isinstance(X, SparseRows) else np.ascontiguousarray(X[rows])
        Y_batch = np.ascontiguousarray(Y[rows])
        w_batch = None if weights is None else np.ascontiguousarray(weights[rows])
        np.copyto(before, params)
        optimizer._snapshot(into=optimizer_before)
        _, _, _, replay_status = run_epoch(net, ws, optimizer, X_batch, Y_batch, w_batch, batch_size, -1)
        if replay_status == _spec.STATUS_NONFINITE:
            return batch, "the loss"
        if not (np.isfinite(params).all() and optimizer._state_finite()):
            np.copyto(params, before)
            optimizer._restore(optimizer_before)
            return batch, "a parameter"
    return done // batch_size, "the loss"  # not reproduced: the start-of-epoch state is kept


def gradient_norms(net, ws, X, Y, weights=None):
    """Per-layer norm of the weight gradient of the loss over all of ``X``, chunked by the workspace."""
    n = X.shape[0]
    total = np.zeros(ws.grad.shape, dtype=np.float64)
    weight_total = n if weights is None else float(weights.sum(dtype=np.float64))
    for start in range(0, n, ws.max_batch):
        X_chunk, Y_chunk = X[start:start + ws.max_batch], Y[start:start + ws.max_batch]
        w_chunk = None if weights is None else weights[start:start + ws.max_batch]
        chunk_weight = X_chunk.shape[0] if w_chunk is None else float(w_chunk.sum(dtype=np.float64))
        if chunk_weight == 0:
            continue
        loss_and_gradient(net, ws, X_chunk, Y_chunk, w_chunk)
        # the batch losses are (weighted) means: weight each by its share of the total
        total += ws.grad * (chunk_weight / weight_total)
    return [float(np.linalg.norm(W)) for W, _ in _spec.layer_views(net.layer_sizes, total)]
