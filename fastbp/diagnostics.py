"""Diagnose a network that trains badly: ``diagnose(net, X, Y)``.

(``check_gradients`` lives in ``fastbp.gradcheck``; its names are re-exported here for old imports.)

``diagnose(net, X, Y)`` looks at one pass over a data set and reports, per layer, the dead ReLU units (never
active on any example), the saturated sigmoid/tanh units, the norms of the weights and of the gradients, and
a verdict on vanishing or exploding gradients from the ratio of the first layer's gradient norm to the last
layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from fastbp._text import table as _table
from fastbp._validation import _is_sparse
from fastbp.gradcheck import (DEFAULT_TOLERANCE, GradientCheck, LayerGradientCheck, _norm,  # noqa: F401
                              check_gradients)

__all__ = [
    "check_gradients",
    "GradientCheck",
    "LayerGradientCheck",
    "diagnose",
    "Diagnosis",
    "LayerDiagnosis",
    "VANISHING_RATIO",
    "EXPLODING_RATIO",
    "SATURATION_DERIVATIVE_FRACTION",
    "SATURATED_EXAMPLE_FRACTION",
    "DEFAULT_TOLERANCE",
]


# diagnose: the verdict on ||dL/dW_first|| / ||dL/dW_last||.
VANISHING_RATIO = 1e-2  # below: the first layer learns at under 1/100 the rate of the last
EXPLODING_RATIO = 1e2  # above: the first layer's gradient is over 100 times the last layer's

# diagnose: a sigmoid/tanh unit is saturated when its derivative is under this fraction of the derivative's
# maximum (sigmoid 0.25, tanh 1) on at least SATURATED_EXAMPLE_FRACTION of the examples. For sigmoid that
# means a < 0.0127 or a > 0.9873; for tanh |a| > 0.9747.
SATURATION_DERIVATIVE_FRACTION = 0.05
SATURATED_EXAMPLE_FRACTION = 0.95

_DERIVATIVE_MAXIMUM = {"sigmoid": 0.25, "tanh": 1.0}


# --------------------------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDiagnosis:
    """One layer (numbered from 1) over the data set."""

    layer: int
    activation: str
    units: int
    dead_units: Tuple[int, ...]  # ReLU units with z <= 0 on every example
    saturated_units: Tuple[int, ...]  # sigmoid/tanh units saturated on most examples
    weight_norm: float  # Frobenius norm of W
    bias_norm: float
    gradient_norm: float  # Frobenius norm of dL/dW
    bias_gradient_norm: float
    mean_activation: float

    @property
    def dead_fraction(self) -> float:
        return len(self.dead_units) / self.units

    @property
    def saturated_fraction(self) -> float:
        return len(self.saturated_units) / self.units


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`; ``print()`` renders it."""

    layers: List[LayerDiagnosis]
    loss: float
    examples: int
    gradient_ratio: Optional[float]  # ||dL/dW_1|| / ||dL/dW_L||; None with one layer or no gradient at all
    verdict: str  # "healthy", "vanishing", "exploding", "no gradient", "single layer"
    explanation: str
    warnings: List[str] = field(default_factory=list)

    @property
    def per_layer(self) -> List[LayerDiagnosis]:
        return self.layers

    @property
    def vanishing(self) -> bool:
        return self.verdict == "vanishing"

    @property
    def exploding(self) -> bool:
        return self.verdict == "exploding"

    @property
    def dead_units(self) -> dict:
        """``{layer: (unit, ...)}`` for the layers that have dead ReLU units."""
        return {layer.layer: layer.dead_units for layer in self.layers if layer.dead_units}

    @property
    def saturated_units(self) -> dict:
        return {layer.layer: layer.saturated_units for layer in self.layers if layer.saturated_units}

    def __str__(self) -> str:
        lines = [
            f"Diagnosis over {self.examples} example{'s' if self.examples != 1 else ''}: loss {self.loss:.6g}",
            "",
        ]
        headers = [
            "layer",
            "activation",
            "units",
            "dead",
            "saturated",
            "mean a",
            "||W||",
            "||b||",
            "||dL/dW||",
            "||dL/db||",
        ]
        rows = []
        for layer in self.layers:
            dead = f"{len(layer.dead_units)}" if layer.activation == "relu" else "-"
            saturated = f"{len(layer.saturated_units)}" if layer.activation in _DERIVATIVE_MAXIMUM else "-"
            rows.append(
                [
                    str(layer.layer),
                    layer.activation,
                    str(layer.units),
                    dead,
                    saturated,
                    f"{layer.mean_activation:.4f}",
                    f"{layer.weight_norm:.4g}",
                    f"{layer.bias_norm:.4g}",
                    f"{layer.gradient_norm:.4g}",
                    f"{layer.bias_gradient_norm:.4g}",
                ]
            )
        lines += _table(headers, rows, [True, False, True, True, True, True, True, True, True, True])
        lines.append("")
        for layer in self.layers:
            if layer.dead_units:
                lines.append(
                    f"layer {layer.layer}: dead ReLU units (never active on any example): {_units(layer.dead_units)}"
                )
            if layer.saturated_units:
                lines.append(
                    f"layer {layer.layer}: saturated {layer.activation} units: {_units(layer.saturated_units)}"
                )
        lines.append(
            f"saturated: f'(z) below {SATURATION_DERIVATIVE_FRACTION:g} of its maximum on at least "
            f"{SATURATED_EXAMPLE_FRACTION:.0%} of the examples; dead: z <= 0 on every example"
        )
        lines.append("")
        ratio = "n/a" if self.gradient_ratio is None else f"{self.gradient_ratio:.3g}"
        lines.append(f"gradient norm ratio ||dL/dW_1|| / ||dL/dW_last|| = {ratio}")
        lines.append(f"thresholds: below {VANISHING_RATIO:g} vanishing, above {EXPLODING_RATIO:g} exploding")
        lines.append(f"verdict: {self.verdict.upper()}: {self.explanation}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {
            "loss": self.loss,
            "examples": self.examples,
            "gradient_ratio": self.gradient_ratio,
            "verdict": self.verdict,
            "explanation": self.explanation,
            "warnings": list(self.warnings),
            "thresholds": {"vanishing_ratio": VANISHING_RATIO, "exploding_ratio": EXPLODING_RATIO},
            "layers": [
                {
                    "layer": layer.layer,
                    "activation": layer.activation,
                    "units": layer.units,
                    "dead_units": list(layer.dead_units),
                    "saturated_units": list(layer.saturated_units),
                    "weight_norm": layer.weight_norm,
                    "bias_norm": layer.bias_norm,
                    "gradient_norm": layer.gradient_norm,
                    "bias_gradient_norm": layer.bias_gradient_norm,
                    "mean_activation": layer.mean_activation,
                }
                for layer in self.layers
            ],
        }


def _units(units) -> str:
    shown = ", ".join(str(u) for u in units[:20])
    return shown + (f", ... ({len(units)} in all)" if len(units) > 20 else "")


def diagnose(net, X, Y) -> Diagnosis:
    """Per-layer health of a network on a data set: dead and saturated units, norms, a gradient verdict.

    Parameters
    ----------
    net : fastbp.Network
        Left unchanged.
    X, Y : array_like
        The data set (or a representative batch) and its targets, as ``net.trace`` takes them. The gradient
        is the gradient of the loss over all of it.

    Returns
    -------
    Diagnosis
        ``.layers`` (:class:`LayerDiagnosis` per layer), ``.gradient_ratio``, ``.verdict`` (``"healthy"``,
        ``"vanishing"``, ``"exploding"``, ``"no gradient"`` or ``"single layer"``); ``print()`` renders it.

    Notes
    -----
    - dead: a ReLU unit whose pre-activation ``z <= 0`` on every example (it passes no gradient at all);
    - saturated: a sigmoid/tanh unit whose derivative is below ``SATURATION_DERIVATIVE_FRACTION`` (5%) of
      its maximum on at least ``SATURATED_EXAMPLE_FRACTION`` (95%) of the examples;
    - verdict: ``ratio = ||dL/dW_1|| / ||dL/dW_L||`` (Frobenius norms, first over last layer); below
      ``VANISHING_RATIO`` (1e-2) the gradient vanishes on its way back, above ``EXPLODING_RATIO`` (1e2) it
      explodes.
    """
    if _is_sparse(X):
        X = X.toarray()  # a diagnosis reads one small batch
    trace = net.trace(X, Y)
    sizes = list(net.layer_sizes)
    names = list(net.activations)
    n_layers = len(sizes) - 1
    X2 = np.asarray(X)
    examples = 1 if X2.ndim == 1 else int(X2.shape[0])

    layers = []
    warnings = []
    for l in range(n_layers):
        width = sizes[l + 1]
        z = np.asarray(trace.pre_activations[l], dtype=np.float64).reshape(-1, width)
        a = np.asarray(trace.activations[l], dtype=np.float64).reshape(-1, width)
        activation = names[l]
        dead: Tuple[int, ...] = ()
        saturated: Tuple[int, ...] = ()
        if activation == "relu":
            dead = tuple(int(j) for j in np.flatnonzero(np.all(z <= 0, axis=0)))
        elif activation in _DERIVATIVE_MAXIMUM:
            derivative = np.asarray(trace.derivatives[l], dtype=np.float64).reshape(-1, width)
            low = derivative < SATURATION_DERIVATIVE_FRACTION * _DERIVATIVE_MAXIMUM[activation]
            saturated = tuple(int(j) for j in np.flatnonzero(low.mean(axis=0) >= SATURATED_EXAMPLE_FRACTION))
        grad_w = np.asarray(trace.grad_weights[l], dtype=np.float64)
        grad_b = np.asarray(trace.grad_biases[l], dtype=np.float64)
        layer = LayerDiagnosis(
            layer=l + 1,
            activation=activation,
            units=width,
            dead_units=dead,
            saturated_units=saturated,
            weight_norm=_norm(net.weights[l]),
            bias_norm=_norm(net.biases[l]),
            gradient_norm=_norm(grad_w),
            bias_gradient_norm=_norm(grad_b),
            mean_activation=float(a.mean()) if a.size else 0.0,
        )
        layers.append(layer)
        if dead and len(dead) == width:
            warnings.append(f"layer {l + 1}: every ReLU unit is dead; nothing before it can learn")
        elif dead and len(dead) * 2 >= width:
            warnings.append(f"layer {l + 1}: {len(dead)} of {width} ReLU units are dead")
        if saturated and len(saturated) * 2 >= width:
            warnings.append(f"layer {l + 1}: {len(saturated)} of {width} {activation} units are saturated")
        if not (np.isfinite(layer.gradient_norm) and np.isfinite(layer.weight_norm)):
            warnings.append(f"layer {l + 1}: non-finite weights or gradients")

    first, last = layers[0].gradient_norm, layers[-1].gradient_norm
    if n_layers == 1:
        ratio, verdict = None, "single layer"
        explanation = (
            "one layer only: no gradient flows back through other layers, so there is no ratio to judge"
        )
    elif first == 0.0 and last == 0.0:
        ratio, verdict = None, "no gradient"
        explanation = "the first and last layers' gradients are both zero (a minimum, or every path blocked)"
    elif last == 0.0:
        ratio, verdict = float("inf"), "exploding"
        explanation = "the last layer's gradient is zero while the first layer's is not"
    else:
        ratio = first / last
        if not np.isfinite(ratio):
            verdict = "exploding"
            explanation = "the gradient norms are not finite"
        elif ratio < VANISHING_RATIO:
            verdict = "vanishing"
            explanation = (
                f"the first layer's gradient is {ratio:.3g} times the last layer's (below {VANISHING_RATIO:g}): "
                "the early layers barely learn"
            )
        elif ratio > EXPLODING_RATIO:
            verdict = "exploding"
            explanation = (
                f"the first layer's gradient is {ratio:.3g} times the last layer's (above {EXPLODING_RATIO:g}): "
                "the early layers' updates are too large"
            )
        else:
            verdict = "healthy"
            explanation = (
                f"the first layer's gradient is {ratio:.3g} times the last layer's "
                f"(within {VANISHING_RATIO:g} .. {EXPLODING_RATIO:g})"
            )
    return Diagnosis(
        layers=layers,
        loss=float(trace.loss),
        examples=examples,
        gradient_ratio=ratio,
        verdict=verdict,
        explanation=explanation,
        warnings=warnings,
    )
