"""The data of ``explain_step``: one step's values as plain records, built from a Trace and the update.

:func:`build_report` takes what the library computed (``net.trace``: ``z``, ``a``, ``f'(z)``, ``dL/da``,
``dL/d(output)``, every delta and gradient; and the parameters and outputs after a real optimizer step) and
lays it out as a :class:`StepReport`: the per-layer arrays, and one row record per number in the order the
report prints them. Nothing is derived here but products a table shows (each example's gradient term,
``lr * gradient``), comparisons, and the check's link (the probabilities or rates the loss compares).
The sentences come from ``fastbp._explain_reasons``, the text from ``fastbp._explain_render``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from fastbp import _explain_render
from fastbp._explain_reasons import LAYOUT_NOTE, Evidence, bias_reasons, dead_neuron_names, weight_reasons
from fastbp._spec import PROBABILITY_MAPS

# --------------------------------------------------------------------------------------------------------
# Rows: every table of the report is also a list of these, in the order printed.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardRow:
    """One neuron on one example in the forward pass: ``z = W a_prev + b`` and ``a = f(z)``."""

    layer: int  # numbered from 1
    example: int
    neuron: int
    z: float
    a: float


@dataclass(frozen=True)
class OutputGradientRow:
    """``dL/d(output)`` for one output of one example."""

    example: int
    output: int
    prediction: float
    target: float
    gradient: float


@dataclass(frozen=True)
class BackwardRow:
    """One neuron on one example in the backward pass: ``delta = dL/da * f'(z)`` (``dL/dz``)."""

    layer: int
    example: int
    neuron: int
    upstream: float  # dL/da for this neuron
    derivative: float  # f'(z)
    delta: float  # dL/dz


@dataclass(frozen=True)
class GradientRow:
    """One parameter's gradient.

    ``dL/dW[j][i] = sum_b delta[b, j] * input[b, i]`` and ``dL/db[j] = sum_b delta[b, j]``.

    ``delta`` and ``input_value`` are given for a single example (``None`` for a batch, where the gradient is
    a sum over examples); ``input_value`` is ``None`` for a bias. ``terms`` are the per-example terms the
    gradient adds up: ``delta[b, j] * input[b, i]`` (weight) or ``delta[b, j]`` (bias), one per example, from
    the trace's deltas and activations (their sum equals ``gradient`` up to rounding).
    """

    name: str
    layer: int
    kind: str  # "weight" or "bias"
    neuron: int
    input: Optional[int]
    delta: Optional[float]
    input_value: Optional[float]
    gradient: float
    terms: tuple = ()


@dataclass(frozen=True)
class UpdateRow:
    """One line of the update table: ``new = old - lr * gradient``."""

    name: str
    layer: int
    kind: str  # "weight" or "bias"
    neuron: int
    input: Optional[int]  # None for a bias
    old: float
    gradient: float
    step: float  # lr * gradient
    new: float
    changed: bool
    reasons: tuple = ()  # UnchangedReason items, empty when the parameter changed

    @property
    def reason(self) -> Optional[str]:
        """The reasons in words, joined; ``None`` when the parameter changed."""
        if self.changed:
            return None
        return "; ".join(reason.text for reason in self.reasons)

    @property
    def reason_codes(self) -> tuple:
        return tuple(reason.code for reason in self.reasons)


@dataclass(frozen=True)
class CheckRow:
    """One output of one example, before and after the step, against its target.

    Where the loss reads the outputs through a link, the compared values are what the loss compares with the
    target: the probabilities ``softmax(output)`` for ``cross_entropy`` and ``sigmoid(output)`` for
    ``binary_cross_entropy`` (the outputs are logits), the rates ``exp(output)`` for ``poisson`` (the outputs
    are log rates); otherwise the outputs themselves.
    """

    example: int
    output: int
    target: float
    before: float
    after: float
    error_before: float  # |before - target|
    error_after: float
    direction: str  # "toward", "away" or "unchanged"

    @property
    def moved_toward(self) -> bool:
        return self.direction == "toward"


# --------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class StepReport:
    """Everything about one explained SGD step; ``print(report)`` renders it, ``to_markdown()`` too.

    Setup: ``layer_sizes``, ``activation_names``, ``loss_name``, ``lr``, ``dtype``, ``inputs``
    (``(B, n_in)``), ``targets`` (``(B, n_out)``). Rows (in the order printed): ``forward_rows``,
    ``output_gradient_rows``, ``backward_rows``, ``gradient_rows``, ``update_rows``, ``check_rows`` (lists of
    dataclasses),
    ``dead_neurons`` (names of ReLU neurons with ``z <= 0`` on every example), ``loss_before``,
    ``loss_after``, ``loss_change_percent``; the per-layer arrays ``pre_activations``, ``activations``,
    ``derivatives`` (f'(z)), ``upstream`` (dL/da), ``deltas``, ``grad_weights``, ``grad_biases``,
    ``old_weights``, ``old_biases``, ``new_weights``, ``new_biases`` (each a list over layers; per-example
    arrays have shape ``(B, n)``), and ``output``, ``output_gradient`` (dL/d(output)), ``output_after``
    (``(B, n_out)``); the numbers of the forward and backward pass are ``net.trace``'s, reshaped.
    ``as_dict()`` gives all of it as plain Python values.
    ``per_example``: whether a mini-batch's gradient tables show each example's term (the rows always hold
    them, in ``GradientRow.terms``).
    """

    layer_sizes: List[int]
    activation_names: List[str]
    loss_name: str
    lr: float
    dtype: str
    backend: Optional[str]
    single_example: bool
    inputs: np.ndarray  # (B, n_in)
    targets: np.ndarray  # (B, n_out), one-hot rows for class-index targets
    target_classes: Optional[np.ndarray]  # (B,) when cross-entropy targets were class indices
    old_weights: List[np.ndarray]
    old_biases: List[np.ndarray]
    pre_activations: List[np.ndarray]
    activations: List[np.ndarray]
    output: np.ndarray
    loss_before: float
    output_gradient: np.ndarray
    upstream: List[np.ndarray]
    derivatives: List[np.ndarray]
    deltas: List[np.ndarray]
    grad_weights: List[np.ndarray]
    grad_biases: List[np.ndarray]
    new_weights: List[np.ndarray]
    new_biases: List[np.ndarray]
    output_after: np.ndarray
    loss_after: float
    forward_rows: List[ForwardRow]
    output_gradient_rows: List[OutputGradientRow]
    backward_rows: List[BackwardRow]
    gradient_rows: List[GradientRow]
    update_rows: List[UpdateRow]
    check_rows: List[CheckRow]
    dead_neurons: List[str]
    dry_run: bool = False
    decimals: int = 4
    per_example: bool = False

    # ---- derived numbers -------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def n_parameters(self) -> int:
        return len(self.update_rows)

    @property
    def changed_rows(self) -> List[UpdateRow]:
        return [row for row in self.update_rows if row.changed]

    @property
    def unchanged_rows(self) -> List[UpdateRow]:
        return [row for row in self.update_rows if not row.changed]

    @property
    def n_changed(self) -> int:
        return len(self.changed_rows)

    @property
    def n_unchanged(self) -> int:
        return len(self.unchanged_rows)

    @property
    def loss_change(self) -> float:
        return self.loss_after - self.loss_before

    @property
    def loss_change_percent(self) -> Optional[float]:
        if self.loss_before == 0.0:
            return None
        return 100.0 * (self.loss_after - self.loss_before) / self.loss_before

    @property
    def unchanged_reasons(self) -> dict:
        """``{parameter name: reason in words}`` for every parameter that kept its value."""
        return {row.name: row.reason for row in self.unchanged_rows}

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in self.layer_sizes)
        return (
            f"<StepReport {sizes} {self.loss_name}, lr={self.lr!r}, B={self.batch_size}: loss "
            f"{self.loss_before:.6g} -> {self.loss_after:.6g}, {self.n_changed} of {self.n_parameters} "
            f"parameters changed>"
        )

    # ---- plain data ------------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        """The whole report as JSON-serialisable Python values (lists, floats, strings)."""

        def plain(value):
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, (np.floating, np.integer, np.bool_)):
                return value.item()
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if dataclasses.is_dataclass(value):
                out = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
                if isinstance(value, UpdateRow):
                    out["reason"] = value.reason
                    out["reasons"] = [dataclasses.asdict(r) for r in value.reasons]
                if isinstance(value, CheckRow):
                    out["moved_toward"] = value.moved_toward
                return out
            return value

        return {
            "setup": {
                "layer_sizes": list(self.layer_sizes),
                "activations": list(self.activation_names),
                "loss": self.loss_name,
                "lr": float(self.lr),
                "dtype": self.dtype,
                "backend": self.backend,
                "layout": LAYOUT_NOTE,
                "x": plain(self.inputs),
                "y": plain(self.targets),
                "weights": plain(self.old_weights),
                "biases": plain(self.old_biases),
            },
            "forward": {
                "pre_activations": plain(self.pre_activations),
                "activations": plain(self.activations),
                "output": plain(self.output),
                "loss": float(self.loss_before),
                "rows": plain(self.forward_rows),
            },
            "backward": {
                "output_gradient": plain(self.output_gradient),
                "output_gradient_rows": plain(self.output_gradient_rows),
                "deltas": plain(self.deltas),
                "rows": plain(self.backward_rows),
                "grad_weights": plain(self.grad_weights),
                "grad_biases": plain(self.grad_biases),
                "gradient_rows": plain(self.gradient_rows),
            },
            "update": {
                "rows": plain(self.update_rows),
                "new_weights": plain(self.new_weights),
                "new_biases": plain(self.new_biases),
            },
            "summary": {
                "parameters": self.n_parameters,
                "changed": self.n_changed,
                "unchanged": self.n_unchanged,
                "unchanged_reasons": self.unchanged_reasons,
                "dead_neurons": list(self.dead_neurons),
            },
            "check": {
                "rows": plain(self.check_rows),
                "output_after": plain(self.output_after),
                "loss_before": float(self.loss_before),
                "loss_after": float(self.loss_after),
                "loss_change_percent": self.loss_change_percent,
            },
            "dry_run": self.dry_run,
        }

    # ---- rendering (fastbp._explain_render, one function per section) -------------------------------
    def __str__(self) -> str:
        return self.render()

    def render(self, decimals: Optional[int] = None) -> str:
        """Aligned plain-text tables (``decimals`` defaults to the report's, 4 unless set)."""
        return _explain_render.render_text(self, self.decimals if decimals is None else decimals)

    def to_markdown(self, decimals: Optional[int] = None) -> str:
        """The same report as Markdown: a heading per section, pipe tables, formulas as inline code."""
        return _explain_render.render_markdown(self, self.decimals if decimals is None else decimals)


# --------------------------------------------------------------------------------------------------------
# Building the report
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepUpdate:
    """What the optimizer's step did: the parameters before and after it, and a forward pass with the new
    ones (``output_after`` of shape ``(B, n_out)``, ``loss_after``)."""

    old_weights: List[np.ndarray]
    old_biases: List[np.ndarray]
    new_weights: List[np.ndarray]
    new_biases: List[np.ndarray]
    output_after: np.ndarray
    loss_after: float


def _through(link):
    def mapped(values: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # overflowed (inf) logits give NaN, not warnings
            return link(values)

    return mapped


# What the check compares with the target, for losses that read the outputs through a link: the loss's own
# probability map (the one predict_proba uses), or the Poisson loss's log link undone.
_LINKS = {
    "cross_entropy": _through(PROBABILITY_MAPS["cross_entropy"]),
    "binary_cross_entropy": _through(PROBABILITY_MAPS["binary_cross_entropy"]),
    "poisson": _through(np.exp),
}


def _per_example(values, B: int, n: int) -> np.ndarray:
    return np.array(values, copy=True).reshape(B, n)


def build_report(net, X, targets, classes, single, lr, trace, update: StepUpdate, *, dry_run: bool,
                 decimals: int, per_example: bool) -> StepReport:
    """Lay out one step as a :class:`StepReport`.

    Parameters
    ----------
    net : fastbp.Network
        Read for its configuration only (sizes, activations, loss, dtype, backend).
    X : ndarray, shape (B, n_in)
        The inputs, as a batch.
    targets : ndarray, shape (B, n_out)
        The targets as a float matrix (one-hot rows for class indices); ``classes`` the indices or None.
    single : bool
        Whether one example of shape ``(n_in,)`` was given.
    lr : float
        The learning rate of the plain SGD step.
    trace : fastbp.Trace
        ``net.trace(X, Y)`` before the step: every number of the forward and backward pass.
    update : StepUpdate
        The parameters before and after the step, and the forward pass after it.
    """
    sizes = [int(s) for s in net.layer_sizes]
    n_layers = len(sizes) - 1
    activations = list(net.activations)
    dtype = np.dtype(net.dtype)
    B = X.shape[0]

    def layers(name):
        return [_per_example(getattr(trace, name)[l], B, sizes[l + 1]) for l in range(n_layers)]

    z, a, deltas = layers("pre_activations"), layers("activations"), layers("deltas")
    derivatives, upstream = layers("derivatives"), layers("upstream_gradients")
    grad_weights = [np.array(trace.grad_weights[l], copy=True).reshape(sizes[l + 1], sizes[l])
                    for l in range(n_layers)]
    grad_biases = [np.array(trace.grad_biases[l], copy=True).reshape(sizes[l + 1]) for l in range(n_layers)]
    output = _per_example(trace.output, B, sizes[-1])
    output_gradient = _per_example(trace.output_gradient, B, sizes[-1])
    evidence = Evidence(activations, z, [X] + a[:-1], upstream, derivatives, deltas)

    forward_rows = [
        ForwardRow(l + 1, b, j, float(z[l][b, j]), float(a[l][b, j]))
        for l in range(n_layers) for b in range(B) for j in range(sizes[l + 1])
    ]
    output_gradient_rows = [
        OutputGradientRow(b, k, float(output[b, k]), float(targets[b, k]), float(output_gradient[b, k]))
        for b in range(B) for k in range(sizes[-1])
    ]
    backward_rows = [
        BackwardRow(l + 1, b, j, float(upstream[l][b, j]), float(derivatives[l][b, j]), float(deltas[l][b, j]))
        for l in reversed(range(n_layers)) for b in range(B) for j in range(sizes[l + 1])
    ]
    gradient_rows, update_rows = _parameter_rows(evidence, grad_weights, grad_biases, update, lr, dtype, single)

    return StepReport(
        layer_sizes=sizes,
        activation_names=activations,
        loss_name=net.loss_name,
        lr=float(lr),
        dtype=str(dtype),
        backend=net.backend if isinstance(getattr(net, "backend", None), str) else None,
        single_example=single,
        inputs=X.copy(),
        targets=targets,
        target_classes=classes,
        old_weights=update.old_weights,
        old_biases=update.old_biases,
        pre_activations=z,
        activations=a,
        output=output,
        loss_before=float(trace.loss),
        output_gradient=output_gradient,
        upstream=upstream,
        derivatives=derivatives,
        deltas=deltas,
        grad_weights=grad_weights,
        grad_biases=grad_biases,
        new_weights=update.new_weights,
        new_biases=update.new_biases,
        output_after=update.output_after,
        loss_after=float(update.loss_after),
        forward_rows=forward_rows,
        output_gradient_rows=output_gradient_rows,
        backward_rows=backward_rows,
        gradient_rows=gradient_rows,
        update_rows=update_rows,
        check_rows=_check_rows(net.loss_name, targets, output, update.output_after),
        dead_neurons=dead_neuron_names(evidence),
        dry_run=bool(dry_run),
        decimals=int(decimals),
        per_example=bool(per_example),
    )


def _parameter_rows(evidence: Evidence, grad_weights, grad_biases, update: StepUpdate, lr, dtype, single):
    """The gradient row and the update row of every parameter, layer by layer, weights before biases."""
    gradient_rows: List[GradientRow] = []
    update_rows: List[UpdateRow] = []
    lr_typed = dtype.type(lr)
    deltas, inputs = evidence.deltas, evidence.inputs
    for l in range(evidence.n_layers):
        n = l + 1
        n_out, n_in = grad_weights[l].shape
        for j in range(n_out):
            for i in range(n_in):
                name, g = f"W{n}[{j}][{i}]", grad_weights[l][j, i]
                terms = deltas[l][:, j] * inputs[l][:, i]  # what sum_b adds up, from the trace's values
                gradient_rows.append(GradientRow(
                    name, n, "weight", j, i, float(deltas[l][0, j]) if single else None,
                    float(inputs[l][0, i]) if single else None, float(g), tuple(float(t) for t in terms)))
                old, new = update.old_weights[l][j, i], update.new_weights[l][j, i]
                changed = bool(new != old)
                reasons = () if changed else tuple(weight_reasons(evidence, l, j, i, g, lr, dtype))
                update_rows.append(UpdateRow(name, n, "weight", j, i, float(old), float(g), float(lr_typed * g),
                                             float(new), changed, reasons))
        for j in range(n_out):
            name, g = f"b{n}[{j}]", grad_biases[l][j]
            gradient_rows.append(GradientRow(
                name, n, "bias", j, None, float(deltas[l][0, j]) if single else None, None, float(g),
                tuple(float(t) for t in deltas[l][:, j])))
            old, new = update.old_biases[l][j], update.new_biases[l][j]
            changed = bool(new != old)
            reasons = () if changed else tuple(bias_reasons(evidence, l, j, g, lr, dtype))
            update_rows.append(UpdateRow(name, n, "bias", j, None, float(old), float(g), float(lr_typed * g),
                                         float(new), changed, reasons))
    return gradient_rows, update_rows


def _check_rows(loss_name, targets, output, output_after) -> List[CheckRow]:
    """Each output before and after the step (through the loss's link), against its target."""
    if loss_name in _LINKS:
        link = _LINKS[loss_name]
        compared_before, compared_after = link(output.astype(np.float64)), link(output_after.astype(np.float64))
    else:
        compared_before, compared_after = output, output_after
    rows = []
    B, n_out = targets.shape
    for b in range(B):
        for k in range(n_out):
            target = float(targets[b, k])
            before, after = float(compared_before[b, k]), float(compared_after[b, k])
            error_before, error_after = abs(before - target), abs(after - target)
            if error_after < error_before:
                direction = "toward"
            elif error_after > error_before:
                direction = "away"
            else:
                direction = "unchanged"
            rows.append(CheckRow(b, k, target, before, after, error_before, error_after, direction))
    return rows
