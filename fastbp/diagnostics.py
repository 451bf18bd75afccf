"""Check backprop against finite differences, and diagnose a network that trains badly.

``check_gradients(net, X, Y, eps=1e-6)`` compares the network's own gradients (``net.gradients``, in its
dtype, from its backend) with central differences of the loss computed on a float64 copy of the network,
whatever the network's dtype, and reports the relative error per layer and overall.

``diagnose(net, X, Y)`` looks at one pass over a data set and reports, per layer, the dead ReLU units (never
active on any example), the saturated sigmoid/tanh units, the norms of the weights and of the gradients, and
a verdict on vanishing or exploding gradients from the ratio of the first layer's gradient norm to the last
layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from fastbp._spec import DERIVATIVES_FROM_OUTPUT

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

# check_gradients: the relative error a correct implementation stays under, by the network's dtype. In
# float64 both sides agree to ~1e-9 on well-scaled problems, but the rounding of the loss differences
# (~1e-16 / eps per parameter) reaches ~1e-6 relative on a layer whose gradient has nearly vanished; a
# float32 network's own gradient carries float32 rounding, compared here with a float64 reference.
DEFAULT_TOLERANCE = {np.dtype(np.float64): 1e-5, np.dtype(np.float32): 1e-3}

# diagnose: the verdict on ||dL/dW_first|| / ||dL/dW_last||.
VANISHING_RATIO = 1e-2  # below: the first layer learns at under 1/100 the rate of the last
EXPLODING_RATIO = 1e2  # above: the first layer's gradient is over 100 times the last layer's

# diagnose: a sigmoid/tanh unit is saturated when its derivative is under this fraction of the derivative's
# maximum (sigmoid 0.25, tanh 1) on at least SATURATED_EXAMPLE_FRACTION of the examples. For sigmoid that
# means a < 0.0127 or a > 0.9873; for tanh |a| > 0.9747.
SATURATION_DERIVATIVE_FRACTION = 0.05
SATURATED_EXAMPLE_FRACTION = 0.95

_DERIVATIVE_MAXIMUM = {"sigmoid": 0.25, "tanh": 1.0}


def _float64_copy(net):
    """A float64 Network with the same architecture, backend and parameters."""
    import fastbp

    kwargs = {"loss": net.loss_name, "dtype": "float64"}
    backend = getattr(net, "backend", None)
    if isinstance(backend, str):
        kwargs["backend"] = backend
    copy = fastbp.Network(list(net.layer_sizes), list(_activation_names(net)), **kwargs)
    copy.set_params(
        [np.asarray(w, dtype=np.float64) for w in net.weights],
        [np.asarray(b, dtype=np.float64) for b in net.biases],
    )
    return copy


def _activation_names(net) -> List[str]:
    activations = net.activations
    if isinstance(activations, str):
        return [activations] * (len(net.layer_sizes) - 1)
    return [str(a) for a in activations]


def _targets_for(net, Y):
    """``Y`` as the float64 copy takes it: class indices stay integers, anything else becomes float64."""
    Y = np.asarray(Y)
    if Y.dtype.kind in "iub":
        return Y
    return Y.astype(np.float64)


def _norm(values) -> float:
    """Euclidean/Frobenius norm without overflow: scaled by the largest magnitude (inf only if it is)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        largest = float(np.max(np.abs(values)))
        if largest == 0.0 or not np.isfinite(largest):
            return largest
        return largest * float(np.linalg.norm(values / largest))


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / (||a|| + ||b||)``, 0 when both are 0: scale-free, in [0, 1]."""
    denominator = _norm(a) + _norm(b)
    if denominator == 0.0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return float(_norm(a - b) / denominator)


# --------------------------------------------------------------------------------------------------------
# check_gradients
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerGradientCheck:
    """One layer's comparison (layer numbered from 1).

    ``relative_error`` is ``||backprop - numeric|| / (||backprop|| + ||numeric||)`` over the layer's weights
    and biases together; ``max_absolute_error`` the largest ``|backprop - numeric|`` of one parameter, and
    ``worst_parameter`` its name (``W2[j][i]`` or ``b2[j]``).
    """

    layer: int
    relative_error: float
    max_absolute_error: float
    worst_parameter: str
    backprop_weights: np.ndarray
    numeric_weights: np.ndarray
    backprop_biases: np.ndarray
    numeric_biases: np.ndarray


@dataclass
class GradientCheck:
    """The result of :func:`check_gradients`; ``print()`` renders it."""

    per_layer: List[LayerGradientCheck]
    eps: float
    dtype: str
    loss: float

    @property
    def max_relative_error(self) -> float:
        """The largest per-layer relative error."""
        return max((layer.relative_error for layer in self.per_layer), default=0.0)

    @property
    def max_absolute_error(self) -> float:
        return max((layer.max_absolute_error for layer in self.per_layer), default=0.0)

    @property
    def default_tolerance(self) -> float:
        return DEFAULT_TOLERANCE.get(np.dtype(self.dtype), 1e-6)

    def passed(self, tol: Optional[float] = None) -> bool:
        """Whether every layer's relative error is at most ``tol`` (default: 1e-5 for float64 networks,
        1e-3 for float32)."""
        tol = self.default_tolerance if tol is None else float(tol)
        return bool(self.max_relative_error <= tol)

    def __bool__(self) -> bool:
        return self.passed()

    def __str__(self) -> str:
        tol = self.default_tolerance
        lines = [
            "Gradient check: backprop against central differences",
            f"  relative error per layer = ||backprop - numeric|| / (||backprop|| + ||numeric||);",
            f"  numeric gradients by central differences (eps = {self.eps:g}) on a float64 copy; "
            f"the network is {self.dtype}; loss = {self.loss:.6g}",
            "",
        ]
        headers = ["layer", "relative error", "max |difference|", "at parameter"]
        rows = [
            [
                str(layer.layer),
                f"{layer.relative_error:.3e}",
                f"{layer.max_absolute_error:.3e}",
                layer.worst_parameter,
            ]
            for layer in self.per_layer
        ]
        lines += _table(headers, rows, [True, True, True, False])
        verdict = "PASSED" if self.passed() else "FAILED"
        lines += [
            "",
            f"max relative error {self.max_relative_error:.3e}: {verdict} (tolerance {tol:g} for {self.dtype})",
        ]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {
            "max_relative_error": self.max_relative_error,
            "max_absolute_error": self.max_absolute_error,
            "passed": self.passed(),
            "tolerance": self.default_tolerance,
            "eps": self.eps,
            "dtype": self.dtype,
            "loss": self.loss,
            "per_layer": [
                {
                    "layer": layer.layer,
                    "relative_error": layer.relative_error,
                    "max_absolute_error": layer.max_absolute_error,
                    "worst_parameter": layer.worst_parameter,
                }
                for layer in self.per_layer
            ],
        }


def check_gradients(net, X, Y, eps: float = 1e-6) -> GradientCheck:
    """Compare backprop's gradients with central differences computed in float64.

    Parameters
    ----------
    net : fastbp.Network
        Left unchanged. Its gradient comes from ``net.gradients(X, Y)`` (its own dtype and backend); the
        numeric one from ``(L(theta + eps) - L(theta - eps)) / (2 eps)`` per parameter, on a float64 copy.
    X, Y : array_like
        A batch (or one example) and its targets, as ``net.loss`` takes them.
    eps : float, default 1e-6
        The finite-difference step.

    Returns
    -------
    GradientCheck
        ``.max_relative_error``, ``.per_layer`` (:class:`LayerGradientCheck` per layer), ``.passed(tol)``;
        ``print()`` renders a table.

    Notes
    -----
    Costs two loss evaluations per parameter: meant for small networks and batches.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a positive number, got {type(eps).__name__}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number, got {eps}")
    eps = float(eps)

    backprop = net.gradients(X, Y)
    reference = _float64_copy(net)
    X64 = np.asarray(X, dtype=np.float64)
    Y64 = _targets_for(net, Y)
    loss = float(reference.loss(X64, Y64))

    params = reference.params
    numeric = np.empty_like(params)
    for k in range(params.size):
        original = params[k]
        params[k] = original + eps
        loss_plus = reference.loss(X64, Y64)
        params[k] = original - eps
        loss_minus = reference.loss(X64, Y64)
        params[k] = original
        numeric[k] = (loss_plus - loss_minus) / (2.0 * eps)

    sizes = list(net.layer_sizes)
    per_layer = []
    position = 0
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        numeric_w = numeric[position : position + n_in * n_out].reshape(n_out, n_in).copy()
        position += n_in * n_out
        numeric_b = numeric[position : position + n_out].copy()
        position += n_out
        backprop_w = np.asarray(backprop.weights[l], dtype=np.float64).reshape(n_out, n_in)
        backprop_b = np.asarray(backprop.biases[l], dtype=np.float64).reshape(n_out)
        both_backprop = np.concatenate([backprop_w.ravel(), backprop_b])
        both_numeric = np.concatenate([numeric_w.ravel(), numeric_b])
        differences = np.abs(both_backprop - both_numeric)
        worst = int(np.argmax(differences)) if differences.size else 0
        if worst < n_in * n_out:
            worst_name = f"W{l + 1}[{worst // n_in}][{worst % n_in}]"
        else:
            worst_name = f"b{l + 1}[{worst - n_in * n_out}]"
        per_layer.append(
            LayerGradientCheck(
                layer=l + 1,
                relative_error=_relative_error(both_backprop, both_numeric),
                max_absolute_error=float(differences.max()) if differences.size else 0.0,
                worst_parameter=worst_name,
                backprop_weights=backprop_w,
                numeric_weights=numeric_w,
                backprop_biases=backprop_b,
                numeric_biases=numeric_b,
            )
        )
    return GradientCheck(per_layer=per_layer, eps=eps, dtype=str(np.dtype(net.dtype)), loss=loss)


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
    trace = net.trace(X, Y)
    sizes = list(net.layer_sizes)
    names = _activation_names(net)
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
            derivative = DERIVATIVES_FROM_OUTPUT[activation](a)
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


def _table(headers, rows, numeric, indent="  ") -> List[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells):
        return (
            indent + "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric))
        ).rstrip()

    return [line(headers), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
