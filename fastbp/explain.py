"""Explain one SGD step the way a hand calculation goes: every number, in order, with nothing hidden.

``explain_step(net, x, y, lr)`` runs one plain SGD step (``theta <- theta - lr * grad``) on one example or a
mini-batch and returns a :class:`StepReport`: the setup, the forward pass (``z`` and ``a`` per layer), the
output and the loss, the backward pass (``dL/d(output)``, every delta, every gradient), the update table with
every parameter by name, which parameters did not change and why, and a check (a second forward pass with the
new parameters: did each output move toward its target, and how much did the loss fall).

Naming: layers are numbered from 1 as textbooks do; neurons and inputs from 0, as arrays are indexed.
``W2[j][i]`` is ``net.weights[1][j, i]``, the weight from input ``i`` of layer 2 (``a1[i]``) into neuron ``j``
of layer 2; ``b2[j]`` is ``net.biases[1][j]``. Layer 1's inputs are the network inputs ``x[i]``.

The numbers come from ``net.trace`` (forward and backward: ``z``, ``a``, ``f'(z)``, ``dL/da``, every delta and
gradient, ``dL/d(output)``) and from a real ``fastbp.SGD(net, lr).step`` (the new values), so the report shows
what the library computes, never a re-derivation of it.
"""

from __future__ import annotations

import dataclasses
import functools
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np

from fastbp._spec import LOGIT_LOSSES, PROBABILITY_MAPS
from fastbp._validation import _as_real_array
from fastbp.optimizers import SGD

__all__ = [
    "explain_step",
    "StepReport",
    "ForwardRow",
    "OutputGradientRow",
    "BackwardRow",
    "GradientRow",
    "UpdateRow",
    "UnchangedReason",
    "CheckRow",
]

LAYOUT_NOTE = (
    "W<l>[j][i] is the weight from input i of layer l into neuron j of layer l "
    "(net.weights[l-1][j, i], PyTorch's (out, in) layout); b<l>[j] is neuron j's bias "
    "(net.biases[l-1][j]). Layers are numbered from 1, neurons and inputs from 0; "
    "layer 1's inputs are x[i], layer l's are a<l-1>[i]."
)

_ACTIVATION_FORMULAS = {
    "identity": ("identity(z) = z", "f'(z) = 1"),
    "sigmoid": ("sigmoid(z) = 1 / (1 + exp(-z))", "f'(z) = a (1 - a)"),
    "relu": ("relu(z) = max(0, z)", "f'(z) = 1 if z > 0 else 0"),
    "tanh": ("tanh(z)", "f'(z) = 1 - a^2"),
}

_LOSS_FORMULAS = {
    "half_sse": (
        "L = (1/B) sum_b 1/2 sum_k (y_bk - yhat_bk)^2   (one example, one output: 1/2 (y - yhat)^2)",
        "dL/d(yhat) = (yhat - y) / B",
    ),
    "mse": (
        "L = (1/(B K)) sum_b sum_k (y_bk - yhat_bk)^2   (torch.nn.MSELoss)",
        "dL/d(yhat) = 2 (yhat - y) / (B K)",
    ),
    "cross_entropy": (
        "L = (1/B) sum_b -sum_k y_bk log softmax(yhat_b)_k   (torch.nn.CrossEntropyLoss; yhat are logits)",
        "dL/d(yhat) = (softmax(yhat) - y) / B   (the gradient with respect to the logits)",
    ),
    "binary_cross_entropy": (
        "L = (1/(B K)) sum_b sum_k max(yhat, 0) - yhat y + log(1 + exp(-|yhat|))   "
        "(torch.nn.BCEWithLogitsLoss; yhat are logits)",
        "dL/d(yhat) = (sigmoid(yhat) - y) / (B K)   (the gradient with respect to the logits)",
    ),
    "poisson": (
        "L = (1/(B K)) sum_b sum_k exp(yhat) - y yhat   (torch.nn.PoissonNLLLoss(log_input=True); yhat = log rate)",
        "dL/d(yhat) = (exp(yhat) - y) / (B K)   (the gradient with respect to the log rate)",
    ),
}


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
class UnchangedReason:
    """Why one parameter kept its value: ``code`` is one of ``"zero_input"``, ``"dead_relu"``,
    ``"relu_kink"``, ``"zero_upstream_delta"``, ``"zero_derivative"``, ``"zero_terms"`` (every example's
    term is 0, each for its own reason, given per example), ``"cancelled"`` (nonzero terms summing to 0),
    ``"update_too_small"``, ``"zero_learning_rate"``; ``text`` says it in words."""

    code: str
    text: str


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
# Formatting helpers and a small table model rendered both as aligned plain text and as Markdown.
# --------------------------------------------------------------------------------------------------------


def _fmt(value, decimals: int) -> str:
    """A number with a fixed number of decimals; a value that rounds to zero prints without a minus sign."""
    if value is None:
        return ""
    value = float(value)
    if not np.isfinite(value):
        return str(value)
    text = f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def _fmt_vector(values, decimals: int) -> str:
    return "[" + ", ".join(_fmt(v, decimals) for v in values) + "]"


def _fmt_small(value, decimals: int) -> str:
    """Fixed decimals, or scientific notation for a nonzero value too small to show that way (losses)."""
    value = float(value)
    if value != 0.0 and np.isfinite(value) and abs(value) < 0.5 * 10.0 ** (-decimals):
        return f"{value:.{max(decimals - 1, 1)}e}"
    return _fmt(value, decimals)


def _fmt_percent(value) -> str:
    if value is None:
        return "n/a (the loss before was 0)"
    return f"{value:+.2f}%"


def _fmt_lr(lr: float) -> str:
    return repr(float(lr))


@dataclass
class _Table:
    headers: List[str]
    rows: List[List[str]]
    numeric: List[bool]  # right-align these columns

    def text(self, indent: str = "  ") -> List[str]:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

        def line(cells):
            parts = [
                cell.rjust(width) if numeric else cell.ljust(width)
                for cell, width, numeric in zip(cells, widths, self.numeric)
            ]
            return (indent + "  ".join(parts)).rstrip()

        out = [line(self.headers), indent + "  ".join("-" * w for w in widths)]
        out.extend(line(row) for row in self.rows)
        return out

    def markdown(self) -> List[str]:
        def escape(cell):
            return cell.replace("|", "\\|")

        out = ["| " + " | ".join(escape(h) for h in self.headers) + " |"]
        out.append("| " + " | ".join("---:" if n else "---" for n in self.numeric) + " |")
        out.extend("| " + " | ".join(escape(c) for c in row) + " |" for row in self.rows)
        return out


@dataclass
class _Pairs:
    """Key-value lines (``key   value``)."""

    items: List[tuple]

    def text(self, indent: str = "") -> List[str]:
        width = max(len(k) for k, _ in self.items)
        return [(indent + k.ljust(width) + "  " + v).rstrip() for k, v in self.items]

    def markdown(self) -> List[str]:
        return [f"- **{k}**: {_md_code(v)}" for k, v in self.items]


@dataclass
class _Line:
    """A sentence, optionally followed by a formula (``text: formula``); long lines wrap in plain text."""

    text_value: str
    formula: str = ""

    def text(self) -> List[str]:
        if self.text_value and self.formula:
            whole = f"{self.text_value}: {self.formula}"
        else:
            whole = self.text_value or self.formula
        if len(whole) <= _WRAP:
            return [whole]
        return textwrap.wrap(
            whole, _WRAP, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
        )

    def markdown(self) -> List[str]:
        parts = []
        if self.text_value:
            parts.append(_md_escape(self.text_value))
        if self.formula:
            parts.append("`" + self.formula.replace("`", "'") + "`")
        return [": ".join(parts)] if parts else []


_Block = Union[_Table, _Pairs, _Line]  # what a report section is made of

_WRAP = 110


def _md_escape(text: str) -> str:
    for ch in "\\*_<>[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def _md_code(value: str) -> str:
    """Formulas and vectors in Markdown read best (and survive ``*``, ``_``) as inline code."""
    if any(ch in value for ch in "[]*_=^"):
        return "`" + value.replace("`", "'") + "`"
    return value


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
    ``deltas``, ``grad_weights``, ``grad_biases``, ``old_weights``, ``old_biases``, ``new_weights``,
    ``new_biases`` (each a list over layers; per-example arrays have shape ``(B, n)``), and ``output``,
    ``output_after`` (``(B, n_out)``). ``as_dict()`` gives all of it as plain Python values.
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

    # ---- rendering -------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.render()

    def render(self, decimals: Optional[int] = None) -> str:
        """Aligned plain-text tables (``decimals`` defaults to the report's, 4 unless set)."""
        title = "One SGD step, explained"
        lines = [title, "=" * len(title)]
        for heading, blocks in self._sections(self.decimals if decimals is None else decimals):
            lines += ["", heading, "-" * len(heading)]
            for block in blocks:
                if isinstance(block, _Table):
                    lines += block.text()
                    lines.append("")
                elif isinstance(block, _Pairs):
                    lines += block.text()
                    lines.append("")
                else:
                    lines += block.text()
            while lines and lines[-1] == "":
                lines.pop()
        return "\n".join(lines) + "\n"

    def to_markdown(self, decimals: Optional[int] = None) -> str:
        """The same report as Markdown: a heading per section, pipe tables, formulas as inline code."""
        lines = ["## One SGD step, explained"]
        for heading, blocks in self._sections(self.decimals if decimals is None else decimals):
            lines += ["", "### " + heading, ""]
            for block in blocks:
                lines += block.markdown()
                lines.append("")
            while lines and lines[-1] == "":
                lines.pop()
        collapsed = [line for k, line in enumerate(lines) if line or (k and lines[k - 1])]
        return "\n".join(collapsed) + "\n"

    # The sections as (heading, blocks); both renderers walk this, so text and Markdown say the same.
    def _sections(self, d: int):
        single = self.single_example
        sizes = self.layer_sizes
        n_layers = len(sizes) - 1

        def example_cells(row_example):
            return [] if single else [str(row_example)]

        example_header = [] if single else ["example"]
        example_numeric = [] if single else [True]

        # 1. Setup
        layer_words = [f"{sizes[0]} inputs"]
        for l in range(n_layers):
            role = " (output)" if l == n_layers - 1 else ""
            noun = "neuron" if sizes[l + 1] == 1 else "neurons"
            layer_words.append(f"layer {l + 1}: {sizes[l + 1]} {self.activation_names[l]} {noun}{role}")
        loss_formula, _ = _LOSS_FORMULAS[self.loss_name]
        pairs = [
            ("network", "-".join(str(s) for s in sizes) + ": " + ", ".join(layer_words)),
            ("loss", f"{self.loss_name}: {loss_formula}"),
            ("learning rate", _fmt_lr(self.lr)),
            ("dtype", self.dtype),
        ]
        pairs.append(("examples", f"B = {self.batch_size}"))
        setup: List[_Block] = [_Pairs(pairs), _Line("layout: " + LAYOUT_NOTE), _Line("")]
        if single:
            target_note = ""
            if self.target_classes is not None:
                target_note = f"  (class {int(self.target_classes[0])}, one-hot)"
            setup.append(
                _Pairs(
                    [
                        ("input x", _fmt_vector(self.inputs[0], d)),
                        ("target y", _fmt_vector(self.targets[0], d) + target_note),
                    ]
                )
            )
        else:
            headers = (
                ["example"] + [f"x[{i}]" for i in range(sizes[0])] + [f"y[{k}]" for k in range(sizes[-1])]
            )
            rows = [
                [str(b)] + [_fmt(v, d) for v in self.inputs[b]] + [_fmt(v, d) for v in self.targets[b]]
                for b in range(self.batch_size)
            ]
            setup.append(_Line("inputs x and targets y:"))
            setup.append(_Table(headers, rows, [True] * len(headers)))
        for l in range(n_layers):
            n = l + 1
            setup.append(
                _Line(f"layer {n} starting parameters (row j: the weights into neuron j, then its bias):")
            )
            headers = ["neuron"] + [f"W{n}[j][{i}]" for i in range(sizes[l])] + [f"b{n}[j]"]
            rows = [
                [str(j)] + [_fmt(v, d) for v in self.old_weights[l][j]] + [_fmt(self.old_biases[l][j], d)]
                for j in range(sizes[l + 1])
            ]
            setup.append(_Table(headers, rows, [True] * len(headers)))
        yield "1. Setup", setup

        # 2. Forward pass
        forward: List[_Block] = []
        rows_by_layer: Dict[int, List[ForwardRow]] = {}
        for row in self.forward_rows:
            rows_by_layer.setdefault(row.layer, []).append(row)
        for l in range(n_layers):
            n = l + 1
            source = "x" if l == 0 else f"a{l}"
            activation = self.activation_names[l]
            forward.append(
                _Line(f"layer {n} ({activation})", f"z{n} = W{n} {source} + b{n};  a{n} = {activation}(z{n})")
            )
            headers = example_header + ["neuron", f"z{n}", f"a{n}"]
            rows = [
                example_cells(r.example) + [str(r.neuron), _fmt(r.z, d), _fmt(r.a, d)]
                for r in rows_by_layer[n]
            ]
            forward.append(_Table(headers, rows, example_numeric + [True, True, True]))
        if single:
            forward.append(
                _Pairs(
                    [("output yhat", _fmt_vector(self.output[0], d)), ("loss L", _fmt(self.loss_before, d))]
                )
            )
        else:
            forward.append(_Pairs([("loss L (batch)", _fmt(self.loss_before, d))]))
        yield "2. Forward pass", forward

        # 3. Backward pass
        backward: List[_Block] = []
        _, gradient_formula = _LOSS_FORMULAS[self.loss_name]
        backward.append(_Line("output error", gradient_formula))
        headers = example_header + ["output", "yhat", "y", "dL/d(yhat)"]
        rows = [
            example_cells(r.example)
            + [str(r.output), _fmt(r.prediction, d), _fmt(r.target, d), _fmt(r.gradient, d)]
            for r in self.output_gradient_rows
        ]
        backward.append(_Table(headers, rows, example_numeric + [True] * 4))
        back_by_layer: Dict[int, List[BackwardRow]] = {}
        for back_row in self.backward_rows:
            back_by_layer.setdefault(back_row.layer, []).append(back_row)
        grads_by_layer: Dict[int, List[GradientRow]] = {}
        for grad_row in self.gradient_rows:
            grads_by_layer.setdefault(grad_row.layer, []).append(grad_row)
        for l in reversed(range(n_layers)):
            n = l + 1
            activation = self.activation_names[l]
            _, derivative_formula = _ACTIVATION_FORMULAS[activation]
            if l == n_layers - 1:
                if self.loss_name in LOGIT_LOSSES:
                    upstream = f"dL/da{n} = dL/d(yhat) (gradient wrt the logits)"
                else:
                    upstream = f"dL/da{n} = dL/d(yhat)"
            else:
                upstream = f"dL/da{n} = W{n + 1}^T delta{n + 1}"
            backward.append(
                _Line(
                    f"layer {n} ({activation})",
                    f"{upstream};  delta{n} = dL/dz{n} = dL/da{n} * f'(z{n}), {derivative_formula}",
                )
            )
            headers = example_header + ["neuron", f"dL/da{n}", f"f'(z{n})", f"delta{n}"]
            rows = [
                example_cells(r.example)
                + [str(r.neuron), _fmt(r.upstream, d), _fmt(r.derivative, d), _fmt(r.delta, d)]
                for r in back_by_layer[n]
            ]
            backward.append(_Table(headers, rows, example_numeric + [True] * 4))
            source = "x" if l == 0 else f"a{l}"
            if single:
                backward.append(
                    _Line(
                        f"layer {n} gradients",
                        f"dL/dW{n}[j][i] = delta{n}[j] * {source}[i];  dL/db{n}[j] = delta{n}[j]",
                    )
                )
                headers = ["parameter", f"delta{n}[j]", f"{source}[i]", "gradient"]
                rows = [
                    [
                        r.name,
                        _fmt(r.delta, d),
                        _fmt(r.input_value, d) if r.kind == "weight" else "",
                        _fmt(r.gradient, d),
                    ]
                    for r in grads_by_layer[n]
                ]
                backward.append(_Table(headers, rows, [False, True, True, True]))
            else:
                backward.append(
                    _Line(
                        f"layer {n} gradients (sums over the examples)",
                        f"dL/dW{n}[j][i] = sum_b delta{n}[b, j] * {source}[b, i];  dL/db{n}[j] = sum_b delta{n}[b, j]",
                    )
                )
                if self.per_example:
                    backward.append(
                        _Line(
                            "the terms, one per example",
                            f"delta{n}[b, j] * {source}[b, i] (weights), delta{n}[b, j] (biases); "
                            "the gradient is their sum",
                        )
                    )
                    headers = ["parameter"] + [f"b={b}" for b in range(self.batch_size)] + ["gradient (sum)"]
                    rows = [
                        [r.name] + [_fmt(t, d) for t in r.terms] + [_fmt(r.gradient, d)]
                        for r in grads_by_layer[n]
                    ]
                    backward.append(_Table(headers, rows, [False] + [True] * (len(headers) - 1)))
                else:
                    rows = [[r.name, _fmt(r.gradient, d)] for r in grads_by_layer[n]]
                    backward.append(_Table(["parameter", "gradient"], rows, [False, True]))
        yield "3. Backward pass", backward

        # 4. Update
        update: List[_Block] = [
            _Line("every parameter", f"new = old - lr * gradient, lr = {_fmt_lr(self.lr)}")
        ]
        headers = ["parameter", "old", "gradient", "lr * gradient", "new", "changed"]
        rows = [
            [
                r.name,
                _fmt(r.old, d),
                _fmt(r.gradient, d),
                _fmt(r.step, d),
                _fmt(r.new, d),
                "yes" if r.changed else "no",
            ]
            for r in self.update_rows
        ]
        update.append(_Table(headers, rows, [False, True, True, True, True, False]))
        if self.dry_run:
            update.append(_Line("(dry run: the network itself was left unchanged)"))
        yield "4. Update", update

        # 5. Summary
        summary: List[_Block] = [
            _Line(
                f"{self.n_changed} of {self.n_parameters} parameters changed; "
                f"{self.n_unchanged} did not{':' if self.n_unchanged else '.'}"
            )
        ]
        if self.n_unchanged:
            rows = [[r.name, r.reason or ""] for r in self.unchanged_rows]  # never None: unchanged rows
            summary.append(_Table(["parameter", "why it did not change"], rows, [False, False]))
        dead = ", ".join(self.dead_neurons) if self.dead_neurons else "none"
        summary.append(_Line(f"dead ReLU neurons (z <= 0 on every example): {dead}"))
        yield "5. Summary", summary

        # 6. Check
        if self.loss_name in _COMPARED:
            what = f"{_COMPARED[self.loss_name][0]} against the target (what the loss compares)"
        else:
            what = "each output against its target"
        check: List[_Block] = [_Line(f"a second forward pass with the new parameters: {what}")]
        headers = example_header + [
            "output",
            "target",
            "before",
            "after",
            "|error| before",
            "|error| after",
            "moved toward target",
        ]
        words = {"toward": "yes", "away": "no (moved away)", "unchanged": "no (unchanged)"}
        rows = [
            example_cells(r.example)
            + [
                str(r.output),
                _fmt(r.target, d),
                _fmt(r.before, d),
                _fmt(r.after, d),
                _fmt(r.error_before, d),
                _fmt(r.error_after, d),
                words[r.direction],
            ]
            for r in self.check_rows
        ]
        check.append(_Table(headers, rows, example_numeric + [True] * 6 + [False]))
        check.append(
            _Pairs(
                [
                    ("loss before", _fmt_small(self.loss_before, d)),
                    ("loss after", _fmt_small(self.loss_after, d)),
                    (
                        "change",
                        f"{_fmt_small(self.loss_change, d)} ({_fmt_percent(self.loss_change_percent)})",
                    ),
                ]
            )
        )
        yield "6. Check", check


# --------------------------------------------------------------------------------------------------------
# The computation
# --------------------------------------------------------------------------------------------------------


def _batch(net, x, y):
    """``(X, Y_for_net, targets, classes, single)``: the input as a batch, the target as the net takes it,
    the targets as a float matrix (one-hot rows for class indices), the class indices or ``None``."""
    dtype = np.dtype(net.dtype)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]

    X = _as_real_array(x, "x", dtype)
    if X.ndim not in (1, 2):
        raise ValueError(
            f"x must be one example of shape ({n_in},) or a batch of shape (n, {n_in}); got shape {X.shape}"
        )
    single = X.ndim == 1
    if single:
        X = X.reshape(1, -1)
    if X.shape[1] != n_in:
        raise ValueError(f"x has {X.shape[1]} inputs per example; the network takes {n_in}")
    B = X.shape[0]
    if B == 0:
        raise ValueError("x holds no examples")
    y_array = np.asarray(y)
    classes = None
    if net.loss_name == "cross_entropy" and (
        (single and y_array.ndim == 0)
        or (not single and y_array.ndim == 1 and not (n_out == 1 and y_array.dtype.kind == "f"))
    ):
        with np.errstate(invalid="ignore"):
            if y_array.dtype.kind not in "iu" and not (
                y_array.dtype.kind == "f" and np.all(np.mod(y_array, 1) == 0)
            ):
                raise ValueError("cross-entropy class-index targets must be integers")
        if np.any(y_array < 0) or np.any(y_array >= n_out):  # before the cast: 1e300 has no int64
            raise ValueError(f"class indices must be in [0, {n_out - 1}]")
        classes = y_array.reshape(B).astype(np.int64)
        Y_net = classes
        targets = np.zeros((B, n_out), dtype=dtype)
        targets[np.arange(B), classes] = 1
    else:
        Y_float = _as_real_array(y, "y", dtype)
        if single:
            Y_float = Y_float.reshape(1, -1) if Y_float.ndim <= 1 else Y_float
        elif Y_float.ndim == 1 and n_out == 1:
            Y_float = Y_float.reshape(-1, 1)
        if Y_float.shape != (B, n_out):
            expected = f"({n_out},)" if single else f"({B}, {n_out})"
            raise ValueError(
                f"y must have shape {expected} to match x and the {n_out} outputs; got {np.shape(y)}"
            )
        Y_net = Y_float
        targets = Y_float
    return X, Y_net, np.array(targets, dtype=dtype), classes, single


def _through(link):
    def mapped(values: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # overflowed (inf) logits give NaN, not warnings
            return link(values)

    return mapped


# What the check compares with the target, for losses that read the outputs through a link: the loss's own
# probability map (the one predict_proba uses), or the Poisson loss's log link undone.
_COMPARED = {
    "cross_entropy": ("the probabilities softmax(yhat)", _through(PROBABILITY_MAPS["cross_entropy"])),
    "binary_cross_entropy": (
        "the probabilities sigmoid(yhat)",
        _through(PROBABILITY_MAPS["binary_cross_entropy"]),
    ),
    "poisson": ("the rates exp(yhat)", _through(np.exp)),
}


def _per_example(values, B: int, n: int) -> np.ndarray:
    return np.array(values, copy=True).reshape(B, n)


def _delta_zero_reasons(l, j, activations, z, upstream, derivative, n_layers) -> List[UnchangedReason]:
    """Why neuron ``j`` of layer index ``l`` has delta 0 on every example."""
    n = l + 1
    if activations[l] == "relu" and np.all(z[l][:, j] <= 0):
        at_kink = np.flatnonzero(z[l][:, j] == 0)
        if at_kink.size == z[l].shape[0]:
            return [
                UnchangedReason(
                    "relu_kink",
                    f"ReLU at its kink: z{n}[{j}] = 0 exactly, where relu has no derivative; fastbp uses "
                    f"relu'(0) = 0, as PyTorch does, so delta{n}[{j}] = 0",
                )
            ]
        kink_note = ""
        if at_kink.size:
            which = ", ".join(str(int(b)) for b in at_kink)
            kink_note = (f" (on example{'s' if at_kink.size > 1 else ''} {which} z{n}[{j}] = 0 exactly: the "
                         f"kink, where relu'(0) = 0 is used)")
        return [
            UnchangedReason(
                "dead_relu",
                f"dead ReLU neuron: z{n}[{j}] <= 0, so relu'(z{n}[{j}]) = 0 and delta{n}[{j}] = 0{kink_note}",
            )
        ]
    if np.all(upstream[l][:, j] == 0):
        if l == n_layers - 1:
            return [
                UnchangedReason(
                    "zero_upstream_delta",
                    f"zero upstream delta: dL/d(yhat[{j}]) = 0 (the output equals its target), so delta{n}[{j}] = 0",
                )
            ]
        return [
            UnchangedReason(
                "zero_upstream_delta",
                f"zero upstream delta: dL/da{n}[{j}] = sum_k W{n + 1}[k][{j}] delta{n + 1}[k] = 0, so delta{n}[{j}] = 0",
            )
        ]
    if np.all(derivative[l][:, j] == 0):
        return [
            UnchangedReason(
                "zero_derivative",
                f"zero derivative: f'(z{n}[{j}]) = 0 (the unit is saturated), so delta{n}[{j}] = 0",
            )
        ]
    return [
        UnchangedReason(
            "zero_upstream_delta",
            f"zero delta: dL/da{n}[{j}] * f'(z{n}[{j}]) is 0 on every example, so delta{n}[{j}] = 0",
        )
    ]


def _input_zero_reason(l, i, activations, z) -> UnchangedReason:
    """Why input ``i`` of layer index ``l`` is 0 on every example."""
    if l == 0:
        return UnchangedReason("zero_input", f"zero input: x[{i}] = 0, so the gradient delta * x[{i}] is 0")
    if activations[l - 1] == "relu" and np.all(z[l - 1][:, i] <= 0):
        return UnchangedReason(
            "dead_relu",
            f"dead ReLU neuron: its input a{l}[{i}] comes from a dead ReLU neuron (z{l}[{i}] <= 0), "
            f"so a{l}[{i}] = 0 and the gradient delta * a{l}[{i}] is 0",
        )
    return UnchangedReason("zero_input", f"zero input: a{l}[{i}] = 0, so the gradient delta * a{l}[{i}] is 0")


def _overflow_shows_as_inf(function):
    """Huge but finite inputs overflow to inf/NaN in the report's numbers, without NumPy warnings."""
    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return function(*args, **kwargs)

    return quiet


@_overflow_shows_as_inf
def explain_step(net, x, y, lr, *, dry_run: bool = False, decimals: int = 4,
                 per_example: bool = False) -> StepReport:
    """Run one SGD step and explain it: every number a hand calculation shows, in that order.

    Parameters
    ----------
    net : fastbp.Network
        The network; updated in place by the step (as ``fastbp.SGD(net, lr).step`` does) unless ``dry_run``.
    x : array_like
        One example of shape ``(n_in,)`` or a mini-batch of shape ``(n, n_in)``.
    y : array_like
        Its target: shape ``(n_out,)`` or ``(n, n_out)``; for ``cross_entropy`` also a class index (one
        example) or class indices of shape ``(n,)``.
    lr : float
        The learning rate of the plain SGD step ``theta <- theta - lr * grad``.
    dry_run : bool, default False
        Explain the step without changing ``net`` (the step is taken on a copy).
    decimals : int, default 4
        Decimals shown by ``str(report)`` and ``report.to_markdown()`` (the data keep full precision).
    per_example : bool, default False
        For a mini-batch, show in each gradient table the per-example terms that the gradient adds up
        (``delta[b, j] * input[b, i]``, one column per example). The terms are always in
        ``report.gradient_rows[k].terms``.

    Returns
    -------
    StepReport
        ``print(report)`` shows it as tables; ``report.to_markdown()`` as Markdown; rows and arrays are
        attributes (``report.update_rows``, ``report.deltas``, ...) and ``report.as_dict()`` gives plain data.

    Examples
    --------
    >>> net = fastbp.Network([2, 2, 1], ["sigmoid", "sigmoid"], loss="half_sse")
    >>> report = fastbp.explain_step(net, [1.0, 0.0], [1.0], lr=0.5)
    >>> print(report)                      # doctest: +SKIP
    >>> report.n_changed, report.n_unchanged  # doctest: +SKIP
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not np.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)) or not 0 <= decimals <= 17:
        raise ValueError(f"decimals must be an int from 0 to 17, got {decimals!r}")
    if not isinstance(per_example, (bool, np.bool_)):
        raise TypeError(f"per_example must be True or False, got {type(per_example).__name__}")

    sizes = [int(s) for s in net.layer_sizes]
    n_layers = len(sizes) - 1
    activations = list(net.activations)
    dtype = np.dtype(net.dtype)
    X, Y_net, targets, classes, single = _batch(net, x, y)
    B = X.shape[0]

    old_weights = [np.array(w, copy=True) for w in net.weights]
    old_biases = [np.array(b, copy=True) for b in net.biases]

    trace = net.trace(X, Y_net)
    z = [_per_example(trace.pre_activations[l], B, sizes[l + 1]) for l in range(n_layers)]
    a = [_per_example(trace.activations[l], B, sizes[l + 1]) for l in range(n_layers)]
    deltas = [_per_example(trace.deltas[l], B, sizes[l + 1]) for l in range(n_layers)]
    grad_weights = [
        np.array(trace.grad_weights[l], copy=True).reshape(sizes[l + 1], sizes[l]) for l in range(n_layers)
    ]
    grad_biases = [np.array(trace.grad_biases[l], copy=True).reshape(sizes[l + 1]) for l in range(n_layers)]
    output = _per_example(trace.output, B, sizes[-1])
    loss_before = float(trace.loss)

    output_gradient = _per_example(trace.output_gradient, B, sizes[-1])
    derivatives = [_per_example(trace.derivatives[l], B, sizes[l + 1]) for l in range(n_layers)]
    upstream = [_per_example(trace.upstream_gradients[l], B, sizes[l + 1]) for l in range(n_layers)]

    # The step itself: a real optimizer step, on the net or (dry run) on a copy.
    stepped = net.copy() if dry_run else net
    gradients = stepped.gradients(X, Y_net)
    if not all(np.isfinite(g).all() for g in [*gradients.weights, *gradients.biases]):
        raise FloatingPointError("explain_step: the gradient overflowed to NaN or infinity (inputs or "
                                 "parameters too large for the network's dtype); the network is unchanged")
    SGD(stepped, lr).step(gradients)
    new_weights = [np.array(w, copy=True) for w in stepped.weights]
    new_biases = [np.array(b, copy=True) for b in stepped.biases]
    output_after = np.asarray(stepped.predict(X)).reshape(B, sizes[-1]).copy()
    loss_after = float(stepped.loss(X, Y_net))

    inputs_of = [X] + a[:-1]

    forward_rows = [
        ForwardRow(l + 1, b, j, float(z[l][b, j]), float(a[l][b, j]))
        for l in range(n_layers)
        for b in range(B)
        for j in range(sizes[l + 1])
    ]
    output_gradient_rows = [
        OutputGradientRow(b, k, float(output[b, k]), float(targets[b, k]), float(output_gradient[b, k]))
        for b in range(B)
        for k in range(sizes[-1])
    ]
    backward_rows = [
        BackwardRow(
            l + 1, b, j, float(upstream[l][b, j]), float(derivatives[l][b, j]), float(deltas[l][b, j])
        )
        for l in reversed(range(n_layers))
        for b in range(B)
        for j in range(sizes[l + 1])
    ]

    gradient_rows: List[GradientRow] = []
    update_rows: List[UpdateRow] = []
    lr_typed = dtype.type(lr)
    for l in range(n_layers):
        n = l + 1
        for j in range(sizes[l + 1]):
            for i in range(sizes[l]):
                name = f"W{n}[{j}][{i}]"
                g = grad_weights[l][j, i]
                terms = deltas[l][:, j] * inputs_of[l][:, i]  # what sum_b adds up, from the trace's values
                gradient_rows.append(
                    GradientRow(
                        name,
                        n,
                        "weight",
                        j,
                        i,
                        float(deltas[l][0, j]) if single else None,
                        float(inputs_of[l][0, i]) if single else None,
                        float(g),
                        tuple(float(t) for t in terms),
                    )
                )
                old, new = old_weights[l][j, i], new_weights[l][j, i]
                changed = bool(new != old)
                reasons: List[UnchangedReason] = []
                if not changed:
                    reasons = _weight_reasons(
                        l,
                        j,
                        i,
                        g,
                        lr,
                        dtype,
                        inputs_of,
                        deltas,
                        activations,
                        z,
                        upstream,
                        derivatives,
                        n_layers,
                    )
                update_rows.append(
                    UpdateRow(
                        name,
                        n,
                        "weight",
                        j,
                        i,
                        float(old),
                        float(g),
                        float(lr_typed * g),
                        float(new),
                        changed,
                        tuple(reasons),
                    )
                )
        for j in range(sizes[l + 1]):
            name = f"b{n}[{j}]"
            g = grad_biases[l][j]
            gradient_rows.append(
                GradientRow(
                    name,
                    n,
                    "bias",
                    j,
                    None,
                    float(deltas[l][0, j]) if single else None,
                    None,
                    float(g),
                    tuple(float(t) for t in deltas[l][:, j]),
                )
            )
            old, new = old_biases[l][j], new_biases[l][j]
            changed = bool(new != old)
            reasons = []
            if not changed:
                reasons = _bias_reasons(
                    l, j, g, lr, dtype, deltas, activations, z, upstream, derivatives, n_layers
                )
            update_rows.append(
                UpdateRow(
                    name,
                    n,
                    "bias",
                    j,
                    None,
                    float(old),
                    float(g),
                    float(lr_typed * g),
                    float(new),
                    changed,
                    tuple(reasons),
                )
            )

    dead_neurons = [
        f"layer {l + 1} neuron {j} (a{l + 1}[{j}])"
        for l in range(n_layers)
        if activations[l] == "relu"
        for j in range(sizes[l + 1])
        if np.all(z[l][:, j] <= 0)
    ]

    if net.loss_name in _COMPARED:
        link = _COMPARED[net.loss_name][1]
        compared_before, compared_after = link(output.astype(np.float64)), link(output_after.astype(np.float64))
    else:
        compared_before, compared_after = output, output_after
    check_rows = []
    for b in range(B):
        for k in range(sizes[-1]):
            target = float(targets[b, k])
            before, after = float(compared_before[b, k]), float(compared_after[b, k])
            error_before, error_after = abs(before - target), abs(after - target)
            if error_after < error_before:
                direction = "toward"
            elif error_after > error_before:
                direction = "away"
            else:
                direction = "unchanged"
            check_rows.append(CheckRow(b, k, target, before, after, error_before, error_after, direction))

    backend = getattr(net, "backend", None)
    return StepReport(
        layer_sizes=sizes,
        activation_names=activations,
        loss_name=net.loss_name,
        lr=float(lr),
        dtype=str(dtype),
        backend=backend if isinstance(backend, str) else None,
        single_example=single,
        inputs=X.copy(),
        targets=targets,
        target_classes=classes,
        old_weights=old_weights,
        old_biases=old_biases,
        pre_activations=z,
        activations=a,
        output=output,
        loss_before=loss_before,
        output_gradient=output_gradient,
        upstream=upstream,
        derivatives=derivatives,
        deltas=deltas,
        grad_weights=grad_weights,
        grad_biases=grad_biases,
        new_weights=new_weights,
        new_biases=new_biases,
        output_after=output_after,
        loss_after=loss_after,
        forward_rows=forward_rows,
        output_gradient_rows=output_gradient_rows,
        backward_rows=backward_rows,
        gradient_rows=gradient_rows,
        update_rows=update_rows,
        check_rows=check_rows,
        dead_neurons=dead_neurons,
        dry_run=bool(dry_run),
        decimals=int(decimals),
        per_example=bool(per_example),
    )


def _nonzero_gradient_reasons(g, lr, dtype) -> List[UnchangedReason]:
    if lr == 0:
        return [UnchangedReason("zero_learning_rate", "the learning rate is 0")]
    return [
        UnchangedReason(
            "update_too_small",
            f"the update lr * gradient = {float(dtype.type(lr) * g):.3g} is too small to change the value in {dtype}",
        )
    ]


def _weight_reasons(
    l, j, i, g, lr, dtype, inputs_of, deltas, activations, z, upstream, derivatives, n_layers
):
    if g != 0:
        return _nonzero_gradient_reasons(g, lr, dtype)
    reasons = []
    if np.all(inputs_of[l][:, i] == 0):
        reasons.append(_input_zero_reason(l, i, activations, z))
    if np.all(deltas[l][:, j] == 0):
        reasons += _delta_zero_reasons(l, j, activations, z, upstream, derivatives, n_layers)
    if not reasons:
        terms = deltas[l][:, j] * inputs_of[l][:, i]
        if np.all(terms == 0):
            reasons.append(_zero_terms_reason(l, j, i, inputs_of, deltas, activations, z, upstream, derivatives))
        else:
            reasons.append(
                UnchangedReason(
                    "cancelled",
                    "the examples' contributions cancel: the terms delta * input are not all 0, but their "
                    "sum over the batch is 0",
                )
            )
    return reasons


def _zero_terms_reason(l, j, i, inputs_of, deltas, activations, z, upstream, derivatives) -> UnchangedReason:
    """Every example's term ``delta[b, j] * input[b, i]`` is 0, though neither factor is 0 on every example:
    say, example by example, which factor is 0 and why."""
    n = l + 1
    source = "x" if l == 0 else f"a{l}"
    parts = []
    for b in range(deltas[l].shape[0]):
        if inputs_of[l][b, i] == 0:
            why = f"{source}[{i}] = 0"
            if l > 0 and activations[l - 1] == "relu":
                why += f" ({_relu_side(l - 1, i, z[l - 1][b, i])})"
            parts.append(f"example {b}: {why}")
        elif deltas[l][b, j] == 0:
            parts.append(f"example {b}: delta{n}[{j}] = 0 because "
                         + _delta_zero_on(l, j, b, activations, z, upstream, derivatives))
        else:
            parts.append(f"example {b}: delta{n}[{j}] * {source}[{i}] underflows to 0")
    return UnchangedReason(
        "zero_terms",
        f"every example's term delta{n}[{j}] * {source}[{i}] is 0, nothing cancels: {'; '.join(parts)}",
    )


def _relu_side(l, j, z_value) -> str:
    """Why a ReLU unit's output or derivative is 0 on one example: switched off, or exactly at its kink."""
    n = l + 1
    if z_value == 0:
        return f"z{n}[{j}] = 0 is exactly the ReLU kink, where relu'(0) = 0 (as in PyTorch)"
    return f"z{n}[{j}] = {float(z_value):.4g} < 0, the ReLU is off"


def _delta_zero_on(l, j, b, activations, z, upstream, derivatives) -> str:
    """Why ``delta[b, j]`` of layer index ``l`` is 0 on example ``b``, in words."""
    n = l + 1
    if activations[l] == "relu" and z[l][b, j] <= 0:
        return _relu_side(l, j, z[l][b, j])
    if upstream[l][b, j] == 0:
        return f"dL/da{n}[{j}] = 0"
    if derivatives[l][b, j] == 0:
        return f"f'(z{n}[{j}]) = 0 (saturated)"
    return f"dL/da{n}[{j}] * f'(z{n}[{j}]) underflows to 0"


def _bias_reasons(l, j, g, lr, dtype, deltas, activations, z, upstream, derivatives, n_layers):
    if g != 0:
        return _nonzero_gradient_reasons(g, lr, dtype)
    if np.all(deltas[l][:, j] == 0):
        return _delta_zero_reasons(l, j, activations, z, upstream, derivatives, n_layers)
    return [UnchangedReason("cancelled", "the examples' deltas cancel: their sum over the batch is 0")]
