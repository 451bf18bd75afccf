"""Check backprop against finite differences: ``check_gradients(net, X, Y, eps=1e-6)``.

It compares the network's own gradients (``net.gradients``, in its dtype, from its backend) with central
differences of the loss computed on a float64 copy of the network (``net.copy(dtype="float64")``), whatever
the network's dtype, and reports the relative error per layer and overall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from fastbp._text import table as _table

__all__ = ["check_gradients", "GradientCheck", "LayerGradientCheck", "DEFAULT_TOLERANCE"]

# check_gradients: the relative error a correct implementation stays under, by the network's dtype. In
# float64 both sides agree to ~1e-9 on well-scaled problems, but the rounding of the loss differences
# (~1e-16 / eps per parameter) reaches ~1e-6 relative on a layer whose gradient has nearly vanished; a
# float32 network's own gradient carries float32 rounding, compared here with a float64 reference.
DEFAULT_TOLERANCE = {np.dtype(np.float64): 1e-5, np.dtype(np.float32): 1e-3}


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
    reference = net.copy(dtype="float64")
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
