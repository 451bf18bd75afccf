"""The renderers of ``explain_step``: one function per section of the report, over ``fastbp._text``.

Each function reads a :class:`fastbp.explain.StepReport` (its rows and arrays; nothing is computed here) and
returns the blocks of its section; :func:`sections` puts them in the printed order, and both the plain text
(``render_text``) and the Markdown (``render_markdown``) walk the same blocks, so the two forms say the same.

Sections: setup; forward pass (per layer ``z`` and ``a``) and the loss; backward pass (the output error,
the output layer's delta, each hidden layer's delta, each layer's gradients); update; summary; check.
"""

from __future__ import annotations

from typing import Dict, List

from fastbp import _text
from fastbp._explain_reasons import ACTIVATION_FORMULAS, COMPARED_WORDS, LAYOUT_NOTE, LOSS_FORMULAS
from fastbp._spec import LOGIT_LOSSES
from fastbp._text import Line, Pairs, Table

TITLE = "One SGD step, explained"


def render_text(report, decimals: int) -> str:
    """The report as aligned plain-text tables."""
    return _text.render_text(TITLE, sections(report, decimals))


def render_markdown(report, decimals: int) -> str:
    """The report as Markdown: a heading per section, pipe tables, formulas as inline code."""
    return _text.render_markdown(TITLE, sections(report, decimals))


def sections(report, d: int):
    """``(heading, blocks)`` per section, in the printed order; ``d`` is the number of decimals."""
    n_layers = len(report.layer_sizes) - 1
    backward = _output_error(report, d) + _output_delta(report, d) + _gradients(report, n_layers - 1, d)
    for l in reversed(range(n_layers - 1)):
        backward += _hidden_delta(report, l, d) + _gradients(report, l, d)
    yield "1. Setup", _setup(report, d)
    yield "2. Forward pass", _forward(report, d) + _loss(report, d)
    yield "3. Backward pass", backward
    yield "4. Update", _update(report, d)
    yield "5. Summary", _summary(report)
    yield "6. Check", _check(report, d)


# --------------------------------------------------------------------------------------------------------
# Helpers: the example column appears only for a mini-batch; rows grouped by layer.
# --------------------------------------------------------------------------------------------------------


def _example_cells(report, example) -> List[str]:
    return [] if report.single_example else [str(example)]


def _example_header(report) -> List[str]:
    return [] if report.single_example else ["example"]


def _example_numeric(report) -> List[bool]:
    return [] if report.single_example else [True]


def _by_layer(rows) -> Dict[int, list]:
    grouped: Dict[int, list] = {}
    for row in rows:
        grouped.setdefault(row.layer, []).append(row)
    return grouped


def _source(l: int) -> str:
    """The name of layer index ``l``'s input."""
    return "x" if l == 0 else f"a{l}"


# --------------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------------


def _setup(report, d) -> List[_text.Block]:
    """The network, loss, learning rate and dtype; the inputs and targets; every starting parameter."""
    sizes = report.layer_sizes
    n_layers = len(sizes) - 1
    layer_words = [f"{sizes[0]} inputs"]
    for l in range(n_layers):
        role = " (output)" if l == n_layers - 1 else ""
        noun = "neuron" if sizes[l + 1] == 1 else "neurons"
        layer_words.append(f"layer {l + 1}: {sizes[l + 1]} {report.activation_names[l]} {noun}{role}")
    loss_formula, _ = LOSS_FORMULAS[report.loss_name]
    pairs = [
        ("network", "-".join(str(s) for s in sizes) + ": " + ", ".join(layer_words)),
        ("loss", f"{report.loss_name}: {loss_formula}"),
        ("learning rate", repr(float(report.lr))),
        ("dtype", report.dtype),
        ("examples", f"B = {report.batch_size}"),
    ]
    blocks: List[_text.Block] = [Pairs(pairs), Line("layout: " + LAYOUT_NOTE), Line("")]
    if report.single_example:
        target_note = ""
        if report.target_classes is not None:
            target_note = f"  (class {int(report.target_classes[0])}, one-hot)"
        blocks.append(Pairs([("input x", _text.vector(report.inputs[0], d)),
                             ("target y", _text.vector(report.targets[0], d) + target_note)]))
    else:
        headers = ["example"] + [f"x[{i}]" for i in range(sizes[0])] + [f"y[{k}]" for k in range(sizes[-1])]
        rows = [
            [str(b)] + [_text.number(v, d) for v in report.inputs[b]]
            + [_text.number(v, d) for v in report.targets[b]]
            for b in range(report.batch_size)
        ]
        blocks.append(Line("inputs x and targets y:"))
        blocks.append(Table(headers, rows, [True] * len(headers)))
    for l in range(n_layers):
        n = l + 1
        blocks.append(Line(f"layer {n} starting parameters (row j: the weights into neuron j, then its bias):"))
        headers = ["neuron"] + [f"W{n}[j][{i}]" for i in range(sizes[l])] + [f"b{n}[j]"]
        rows = [
            [str(j)] + [_text.number(v, d) for v in report.old_weights[l][j]]
            + [_text.number(report.old_biases[l][j], d)]
            for j in range(sizes[l + 1])
        ]
        blocks.append(Table(headers, rows, [True] * len(headers)))
    return blocks


def _forward(report, d) -> List[_text.Block]:
    """Per layer: ``z = W a_prev + b`` and ``a = f(z)`` for every neuron (and example)."""
    blocks: List[_text.Block] = []
    rows_by_layer = _by_layer(report.forward_rows)
    for l in range(len(report.layer_sizes) - 1):
        n = l + 1
        activation = report.activation_names[l]
        blocks.append(Line(f"layer {n} ({activation})",
                           f"z{n} = W{n} {_source(l)} + b{n};  a{n} = {activation}(z{n})"))
        headers = _example_header(report) + ["neuron", f"z{n}", f"a{n}"]
        rows = [
            _example_cells(report, r.example) + [str(r.neuron), _text.number(r.z, d), _text.number(r.a, d)]
            for r in rows_by_layer[n]
        ]
        blocks.append(Table(headers, rows, _example_numeric(report) + [True, True, True]))
    return blocks


def _loss(report, d) -> List[_text.Block]:
    """The output (one example) and the loss."""
    if report.single_example:
        return [Pairs([("output yhat", _text.vector(report.output[0], d)),
                       ("loss L", _text.number(report.loss_before, d))])]
    return [Pairs([("loss L (batch)", _text.number(report.loss_before, d))])]


def _output_error(report, d) -> List[_text.Block]:
    """``dL/d(yhat)`` for every output (and example), with the loss's gradient formula."""
    _, gradient_formula = LOSS_FORMULAS[report.loss_name]
    headers = _example_header(report) + ["output", "yhat", "y", "dL/d(yhat)"]
    rows = [
        _example_cells(report, r.example)
        + [str(r.output), _text.number(r.prediction, d), _text.number(r.target, d), _text.number(r.gradient, d)]
        for r in report.output_gradient_rows
    ]
    return [Line("output error", gradient_formula), Table(headers, rows, _example_numeric(report) + [True] * 4)]


def _output_delta(report, d) -> List[_text.Block]:
    """The output layer's delta: ``dL/da`` is the output error (with respect to the logits for a logit loss)."""
    n = len(report.layer_sizes) - 1
    if report.loss_name in LOGIT_LOSSES:
        upstream = f"dL/da{n} = dL/d(yhat) (gradient wrt the logits)"
    else:
        upstream = f"dL/da{n} = dL/d(yhat)"
    return _delta_table(report, n - 1, upstream, d)


def _hidden_delta(report, l, d) -> List[_text.Block]:
    """A hidden layer's delta: ``dL/da`` comes back through the next layer's weights."""
    n = l + 1
    return _delta_table(report, l, f"dL/da{n} = W{n + 1}^T delta{n + 1}", d)


def _delta_table(report, l, upstream, d) -> List[_text.Block]:
    """``delta = dL/da * f'(z)`` per neuron (and example) of layer index ``l``."""
    n = l + 1
    activation = report.activation_names[l]
    _, derivative_formula = ACTIVATION_FORMULAS[activation]
    line = Line(f"layer {n} ({activation})",
                f"{upstream};  delta{n} = dL/dz{n} = dL/da{n} * f'(z{n}), {derivative_formula}")
    headers = _example_header(report) + ["neuron", f"dL/da{n}", f"f'(z{n})", f"delta{n}"]
    rows = [
        _example_cells(report, r.example)
        + [str(r.neuron), _text.number(r.upstream, d), _text.number(r.derivative, d), _text.number(r.delta, d)]
        for r in _by_layer(report.backward_rows)[n]
    ]
    return [line, Table(headers, rows, _example_numeric(report) + [True] * 4)]


def _gradients(report, l, d) -> List[_text.Block]:
    """Layer index ``l``'s gradients: ``delta * input`` for one example; sums (and, asked for, the
    per-example terms) for a mini-batch."""
    n = l + 1
    source = _source(l)
    rows_of_layer = _by_layer(report.gradient_rows)[n]
    if report.single_example:
        line = Line(f"layer {n} gradients",
                    f"dL/dW{n}[j][i] = delta{n}[j] * {source}[i];  dL/db{n}[j] = delta{n}[j]")
        headers = ["parameter", f"delta{n}[j]", f"{source}[i]", "gradient"]
        rows = [
            [r.name, _text.number(r.delta, d), _text.number(r.input_value, d) if r.kind == "weight" else "",
             _text.number(r.gradient, d)]
            for r in rows_of_layer
        ]
        return [line, Table(headers, rows, [False, True, True, True])]
    blocks: List[_text.Block] = [
        Line(f"layer {n} gradients (sums over the examples)",
             f"dL/dW{n}[j][i] = sum_b delta{n}[b, j] * {source}[b, i];  dL/db{n}[j] = sum_b delta{n}[b, j]")
    ]
    if report.per_example:
        blocks.append(Line("the terms, one per example",
                           f"delta{n}[b, j] * {source}[b, i] (weights), delta{n}[b, j] (biases); "
                           "the gradient is their sum"))
        headers = ["parameter"] + [f"b={b}" for b in range(report.batch_size)] + ["gradient (sum)"]
        rows = [[r.name] + [_text.number(t, d) for t in r.terms] + [_text.number(r.gradient, d)]
                for r in rows_of_layer]
        blocks.append(Table(headers, rows, [False] + [True] * (len(headers) - 1)))
    else:
        rows = [[r.name, _text.number(r.gradient, d)] for r in rows_of_layer]
        blocks.append(Table(["parameter", "gradient"], rows, [False, True]))
    return blocks


def _update(report, d) -> List[_text.Block]:
    """Every parameter: ``new = old - lr * gradient``, and whether it changed."""
    headers = ["parameter", "old", "gradient", "lr * gradient", "new", "changed"]
    rows = [
        [r.name, _text.number(r.old, d), _text.number(r.gradient, d), _text.number(r.step, d),
         _text.number(r.new, d), "yes" if r.changed else "no"]
        for r in report.update_rows
    ]
    blocks: List[_text.Block] = [
        Line("every parameter", f"new = old - lr * gradient, lr = {float(report.lr)!r}"),
        Table(headers, rows, [False, True, True, True, True, False]),
    ]
    if report.dry_run:
        blocks.append(Line("(dry run: the network itself was left unchanged)"))
    return blocks


def _summary(report) -> List[_text.Block]:
    """How many parameters changed, why each unchanged one did not, and the dead ReLU neurons."""
    blocks: List[_text.Block] = [
        Line(f"{report.n_changed} of {report.n_parameters} parameters changed; "
             f"{report.n_unchanged} did not{':' if report.n_unchanged else '.'}")
    ]
    if report.n_unchanged:
        rows = [[r.name, r.reason or ""] for r in report.unchanged_rows]  # never None: unchanged rows
        blocks.append(Table(["parameter", "why it did not change"], rows, [False, False]))
    dead = ", ".join(report.dead_neurons) if report.dead_neurons else "none"
    blocks.append(Line(f"dead ReLU neurons (z <= 0 on every example): {dead}"))
    return blocks


def _check(report, d) -> List[_text.Block]:
    """A second forward pass: did each output (or what the loss compares) move toward its target?"""
    if report.loss_name in COMPARED_WORDS:
        what = f"{COMPARED_WORDS[report.loss_name]} against the target (what the loss compares)"
    else:
        what = "each output against its target"
    headers = _example_header(report) + ["output", "target", "before", "after", "|error| before",
                                         "|error| after", "moved toward target"]
    words = {"toward": "yes", "away": "no (moved away)", "unchanged": "no (unchanged)"}
    rows = [
        _example_cells(report, r.example)
        + [str(r.output), _text.number(r.target, d), _text.number(r.before, d), _text.number(r.after, d),
           _text.number(r.error_before, d), _text.number(r.error_after, d), words[r.direction]]
        for r in report.check_rows
    ]
    change = f"{_text.small_number(report.loss_change, d)} ({_text.percent(report.loss_change_percent)})"
    return [
        Line(f"a second forward pass with the new parameters: {what}"),
        Table(headers, rows, _example_numeric(report) + [True] * 6 + [False]),
        Pairs([("loss before", _text.small_number(report.loss_before, d)),
               ("loss after", _text.small_number(report.loss_after, d)),
               ("change", change)]),
    ]
