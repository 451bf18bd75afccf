"""The reasons of ``explain_step``: the sentences that say why each number is what it is.

Two kinds, both words only (every number they quote comes from the step's data, nothing is computed here
but comparisons):

- the formulas a hand calculation writes beside each table (``LAYOUT_NOTE``, ``ACTIVATION_FORMULAS``,
  ``LOSS_FORMULAS``, ``COMPARED_WORDS``);
- why a parameter kept its value (:class:`UnchangedReason`, from :func:`weight_reasons` and
  :func:`bias_reasons`): a zero input, a dead ReLU or one at its kink, a zero upstream gradient, a
  saturated unit, terms that cancel, or an update too small for the dtype.

The functions read an :class:`Evidence`: the per-layer arrays of the step, as ``net.trace`` computed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple

import numpy as np

LAYOUT_NOTE = (
    "W<l>[j][i] is the weight from input i of layer l into neuron j of layer l "
    "(net.weights[l-1][j, i], PyTorch's (out, in) layout); b<l>[j] is neuron j's bias "
    "(net.biases[l-1][j]). Layers are numbered from 1, neurons and inputs from 0; "
    "layer 1's inputs are x[i], layer l's are a<l-1>[i]."
)

# Per activation: the function and its derivative, as the report writes them (the math is _spec's).
ACTIVATION_FORMULAS = {
    "identity": ("identity(z) = z", "f'(z) = 1"),
    "sigmoid": ("sigmoid(z) = 1 / (1 + exp(-z))", "f'(z) = a (1 - a)"),
    "relu": ("relu(z) = max(0, z)", "f'(z) = 1 if z > 0 else 0"),
    "tanh": ("tanh(z)", "f'(z) = 1 - a^2"),
}

# Per loss: the loss and its gradient with respect to the output, as the report writes them.
LOSS_FORMULAS = {
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

# What the check compares with the target, for losses that read the outputs through a link.
COMPARED_WORDS = {
    "cross_entropy": "the probabilities softmax(yhat)",
    "binary_cross_entropy": "the probabilities sigmoid(yhat)",
    "poisson": "the rates exp(yhat)",
}


@dataclass(frozen=True)
class UnchangedReason:
    """Why one parameter kept its value: ``code`` is one of ``"zero_input"``, ``"dead_relu"``,
    ``"relu_kink"``, ``"zero_upstream_delta"``, ``"zero_derivative"``, ``"zero_terms"`` (every example's
    term is 0, each for its own reason, given per example), ``"cancelled"`` (nonzero terms summing to 0),
    ``"update_too_small"``, ``"zero_learning_rate"``; ``text`` says it in words."""

    code: str
    text: str


class Evidence(NamedTuple):
    """What the reasons look at, per layer index ``l`` (arrays of shape ``(B, width)``)."""

    activations: List[str]  # the activation names
    pre_activations: list  # z
    inputs: list  # the layer's inputs: x for l = 0, else the activations of layer l - 1
    upstream: list  # dL/da
    derivatives: list  # f'(z)
    deltas: list  # dL/dz

    @property
    def n_layers(self) -> int:
        return len(self.activations)


def weight_reasons(evidence: Evidence, l, j, i, gradient, lr, dtype) -> List[UnchangedReason]:
    """Why weight ``W[j][i]`` of layer index ``l`` did not change."""
    if gradient != 0:
        return _nonzero_gradient_reasons(gradient, lr, dtype)
    reasons = []
    if np.all(evidence.inputs[l][:, i] == 0):
        reasons.append(_input_zero_reason(evidence, l, i))
    if np.all(evidence.deltas[l][:, j] == 0):
        reasons += _delta_zero_reasons(evidence, l, j)
    if not reasons:
        terms = evidence.deltas[l][:, j] * evidence.inputs[l][:, i]
        if np.all(terms == 0):
            reasons.append(_zero_terms_reason(evidence, l, j, i))
        else:
            reasons.append(
                UnchangedReason(
                    "cancelled",
                    "the examples' contributions cancel: the terms delta * input are not all 0, but their "
                    "sum over the batch is 0",
                )
            )
    return reasons


def bias_reasons(evidence: Evidence, l, j, gradient, lr, dtype) -> List[UnchangedReason]:
    """Why bias ``b[j]`` of layer index ``l`` did not change."""
    if gradient != 0:
        return _nonzero_gradient_reasons(gradient, lr, dtype)
    if np.all(evidence.deltas[l][:, j] == 0):
        return _delta_zero_reasons(evidence, l, j)
    return [UnchangedReason("cancelled", "the examples' deltas cancel: their sum over the batch is 0")]


def dead_neuron_names(evidence: Evidence) -> List[str]:
    """The ReLU neurons with ``z <= 0`` on every example, by name."""
    return [
        f"layer {l + 1} neuron {j} (a{l + 1}[{j}])"
        for l in range(evidence.n_layers)
        if evidence.activations[l] == "relu"
        for j in range(evidence.pre_activations[l].shape[1])
        if np.all(evidence.pre_activations[l][:, j] <= 0)
    ]


def _nonzero_gradient_reasons(gradient, lr, dtype) -> List[UnchangedReason]:
    if lr == 0:
        return [UnchangedReason("zero_learning_rate", "the learning rate is 0")]
    step = float(dtype.type(lr) * gradient)
    return [
        UnchangedReason(
            "update_too_small",
            f"the update lr * gradient = {step:.3g} is too small to change the value in {dtype}",
        )
    ]


def _zero_terms_reason(evidence: Evidence, l, j, i) -> UnchangedReason:
    """Every example's term ``delta[b, j] * input[b, i]`` is 0, though neither factor is 0 on every example:
    say, example by example, which factor is 0 and why."""
    n = l + 1
    source = "x" if l == 0 else f"a{l}"
    inputs, deltas = evidence.inputs[l], evidence.deltas[l]
    parts = []
    for b in range(deltas.shape[0]):
        if inputs[b, i] == 0:
            why = f"{source}[{i}] = 0"
            if l > 0 and evidence.activations[l - 1] == "relu":
                why += f" ({_relu_side(l - 1, i, evidence.pre_activations[l - 1][b, i])})"
            parts.append(f"example {b}: {why}")
        elif deltas[b, j] == 0:
            parts.append(f"example {b}: delta{n}[{j}] = 0 because " + _delta_zero_on(evidence, l, j, b))
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


def _delta_zero_on(evidence: Evidence, l, j, b) -> str:
    """Why ``delta[b, j]`` of layer index ``l`` is 0 on example ``b``, in words."""
    n = l + 1
    z = evidence.pre_activations[l]
    if evidence.activations[l] == "relu" and z[b, j] <= 0:
        return _relu_side(l, j, z[b, j])
    if evidence.upstream[l][b, j] == 0:
        return f"dL/da{n}[{j}] = 0"
    if evidence.derivatives[l][b, j] == 0:
        return f"f'(z{n}[{j}]) = 0 (saturated)"
    return f"dL/da{n}[{j}] * f'(z{n}[{j}]) underflows to 0"


def _delta_zero_reasons(evidence: Evidence, l, j) -> List[UnchangedReason]:
    """Why neuron ``j`` of layer index ``l`` has delta 0 on every example."""
    n = l + 1
    z = evidence.pre_activations[l]
    if evidence.activations[l] == "relu" and np.all(z[:, j] <= 0):
        at_kink = np.flatnonzero(z[:, j] == 0)
        if at_kink.size == z.shape[0]:
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
    if np.all(evidence.upstream[l][:, j] == 0):
        if l == evidence.n_layers - 1:
            return [
                UnchangedReason(
                    "zero_upstream_delta",
                    f"zero upstream delta: dL/d(yhat[{j}]) = 0 (the output equals its target), so delta{n}[{j}] = 0",
                )
            ]
        return [
            UnchangedReason(
                "zero_upstream_delta",
                f"zero upstream delta: dL/da{n}[{j}] = sum_k W{n + 1}[k][{j}] delta{n + 1}[k] = 0, "
                f"so delta{n}[{j}] = 0",
            )
        ]
    if np.all(evidence.derivatives[l][:, j] == 0):
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


def _input_zero_reason(evidence: Evidence, l, i) -> UnchangedReason:
    """Why input ``i`` of layer index ``l`` is 0 on every example."""
    if l == 0:
        return UnchangedReason("zero_input", f"zero input: x[{i}] = 0, so the gradient delta * x[{i}] is 0")
    if evidence.activations[l - 1] == "relu" and np.all(evidence.pre_activations[l - 1][:, i] <= 0):
        return UnchangedReason(
            "dead_relu",
            f"dead ReLU neuron: its input a{l}[{i}] comes from a dead ReLU neuron (z{l}[{i}] <= 0), "
            f"so a{l}[{i}] = 0 and the gradient delta * a{l}[{i}] is 0",
        )
    return UnchangedReason("zero_input", f"zero input: a{l}[{i}] = 0, so the gradient delta * a{l}[{i}] is 0")
