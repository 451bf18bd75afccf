"""Check backprop against finite differences: ``check_gradients(net, X, Y, eps=1e-6)``.

It compares the network's own gradients (``net.gradients``, in its dtype, from its backend) with central
differences of the loss computed on a float64 copy of the network (``net.copy(dtype="float64")``), whatever
the network's dtype, and reports the relative error per layer and overall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from fastbp import _reference, _spec
from fastbp._validation import _is_sparse
from fastbp._text import table as _table

__all__ = ["check_gradients", "GradientCheck", "LayerGradientCheck", "KinkParameter", "DEFAULT_TOLERANCE"]

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


def _tolerance(tol) -> float:
    """``tol`` checked: a real number >= 0 (``inf`` allowed), as a float; never an OverflowError."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol must be a number >= 0, got {type(tol).__name__}")
    try:
        value = float(tol)
    except OverflowError:
        raise ValueError(f"tol must be a number >= 0 that fits a float64, got an integer of "
                         f"{len(str(abs(int(tol))))} digits") from None
    if np.isnan(value) or value < 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    return value


# --------------------------------------------------------------------------------------------------------
# check_gradients
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KinkParameter:
    """A parameter whose central difference crosses a ReLU kink, so that it cannot be checked there.

    Moving the parameter by ``+eps`` or ``-eps`` moves the pre-activation ``z<layer>[neuron]`` of example
    ``example`` (value ``z`` before the move) across 0 (or onto or off 0), where relu has no derivative: the
    central difference mixes the slopes of both sides, while backprop uses one (``relu'(0) = 0``).
    """

    name: str
    layer: int  # the ReLU unit's layer, numbered from 1
    neuron: int
    example: int
    z: float
    backprop: float
    numeric: float

    @property
    def unit(self) -> str:
        return f"z{self.layer}[{self.neuron}]"


@dataclass(frozen=True)
class LayerGradientCheck:
    """One layer's comparison (layer numbered from 1).

    ``relative_error`` is ``||backprop - numeric|| / (||backprop|| + ||numeric||)`` over the layer's weights
    and biases together; ``max_absolute_error`` the largest ``|backprop - numeric|`` of one parameter, and
    ``worst_parameter`` its name (``W2[j][i]`` or ``b2[j]``). Parameters at a ReLU kink (``kinks``, see
    :class:`KinkParameter`) are left out of these three numbers, not out of the arrays.
    """

    layer: int
    relative_error: float
    max_absolute_error: float
    worst_parameter: str
    backprop_weights: np.ndarray
    numeric_weights: np.ndarray
    backprop_biases: np.ndarray
    numeric_biases: np.ndarray
    kinks: Tuple[KinkParameter, ...] = ()


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
    def kinks(self) -> List[KinkParameter]:
        """Every parameter at a ReLU kink (left out of the verdict), layer by layer."""
        return [kink for layer in self.per_layer for kink in layer.kinks]

    @property
    def n_checked(self) -> int:
        """How many parameters the verdict covers (all but those at a kink)."""
        total = sum(layer.backprop_weights.size + layer.backprop_biases.size for layer in self.per_layer)
        return total - len(self.kinks)

    @property
    def default_tolerance(self) -> float:
        return DEFAULT_TOLERANCE.get(np.dtype(self.dtype), 1e-6)

    def passed(self, tol: Optional[float] = None) -> bool:
        """Whether every layer's relative error is at most ``tol`` (default: 1e-5 for float64 networks,
        1e-3 for float32). Parameters at a ReLU kink are not judged.

        Raises
        ------
        TypeError, ValueError
            When ``tol`` is not a number >= 0 (a NaN, a negative number, an integer beyond float64).
        """
        tol = self.default_tolerance if tol is None else _tolerance(tol)
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
        kinks = self.kinks
        headers = ["layer", "relative error", "max |difference|", "at parameter"]
        if kinks:
            headers.append("at a ReLU kink")
        rows = []
        for layer in self.per_layer:
            row = [
                str(layer.layer),
                f"{layer.relative_error:.3e}",
                f"{layer.max_absolute_error:.3e}",
                layer.worst_parameter,
            ]
            if kinks:
                row.append(str(len(layer.kinks)))
            rows.append(row)
        lines += _table(headers, rows, [True, True, True, False, True])
        if kinks:
            noun = "parameter is" if len(kinks) == 1 else "parameters are"
            lines += [
                "",
                f"{len(kinks)} {noun} at a ReLU kink and left out of the verdict:",
                "  relu has no derivative at z = 0. Moving these parameters by +-eps moves a ReLU pre-activation",
                "  across 0 (or onto or off 0), so their central difference mixes the slopes of both sides (at",
                "  z = 0 exactly it is their average), while backprop uses one side (relu'(0) = 0, as PyTorch).",
                "  Neither number is wrong; they cannot be compared there. To check these entries, move the",
                "  example or the parameters off the kink.",
                "",
            ]
            kink_rows = [
                [
                    kink.name,
                    f"{kink.backprop:.6g}",
                    f"{kink.numeric:.6g}",
                    f"{kink.unit} of example {kink.example}",
                    f"{kink.z:.3g}",
                ]
                for kink in kinks
            ]
            lines += _table(
                ["parameter", "backprop", "numeric", "kink at", "z"], kink_rows, [False, True, True, False, True]
            )
        verdict = "PASSED" if self.passed() else "FAILED"
        over = f" over the other {self.n_checked} parameters" if kinks else ""
        lines += [
            "",
            f"max relative error {self.max_relative_error:.3e}{over}: {verdict} "
            f"(tolerance {tol:g} for {self.dtype})",
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
            "kinks": [
                {
                    "parameter": kink.name,
                    "layer": kink.layer,
                    "neuron": kink.neuron,
                    "example": kink.example,
                    "z": kink.z,
                    "backprop": kink.backprop,
                    "numeric": kink.numeric,
                }
                for kink in self.kinks
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
    if _is_sparse(X):
        X = X.toarray()  # a check runs many forward passes over a small batch: dense is simplest

    backprop = net.gradients(X, Y)
    reference = net.copy(dtype="float64")
    X64 = np.asarray(X, dtype=np.float64)
    Y64 = _targets_for(net, Y)
    loss = float(reference.loss(X64, Y64))
    sizes = list(net.layer_sizes)

    # Where a hidden ReLU's pre-activation sits within the step of 0, the central difference straddles the
    # kink: the forward pass at theta +- eps tells which parameters' differences cross one.
    names = list(net.activations)
    relu_layers = [l for l, name in enumerate(names) if name == "relu"]
    forward_ws = None
    X_rows = X64.reshape(1, -1) if X64.ndim == 1 else X64
    if relu_layers:
        codes = [_spec.ACTIVATION_CODES[name] for name in names]
        forward_ws = _reference.Workspace(sizes, codes, _spec.LOSS_CODES[net.loss_name], np.float64,
                                          X_rows.shape[0])

    params = reference.params
    numeric = np.empty_like(params)
    kink_at = {}
    base_z = _pre_activations(forward_ws, params, X_rows)
    base_active = [z > 0 for z in base_z]
    for k in range(params.size):
        original = params[k]
        params[k] = original + eps
        loss_plus = reference.loss(X64, Y64)
        z_plus = _pre_activations(forward_ws, params, X_rows)
        params[k] = original - eps
        loss_minus = reference.loss(X64, Y64)
        z_minus = _pre_activations(forward_ws, params, X_rows)
        params[k] = original
        numeric[k] = (loss_plus - loss_minus) / (2.0 * eps)
        for l in relu_layers:
            moved = (z_plus[l] > 0) != base_active[l]
            moved |= (z_minus[l] > 0) != base_active[l]
            if moved.any():
                b, j = np.argwhere(moved)[0]
                kink_at[k] = (l, int(j), int(b), float(base_z[l][b, j]))
                break

    per_layer = []
    position = 0
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        first = position
        numeric_w = numeric[position : position + n_in * n_out].reshape(n_out, n_in).copy()
        position += n_in * n_out
        numeric_b = numeric[position : position + n_out].copy()
        position += n_out
        backprop_w = np.asarray(backprop.weights[l], dtype=np.float64).reshape(n_out, n_in)
        backprop_b = np.asarray(backprop.biases[l], dtype=np.float64).reshape(n_out)
        both_backprop = np.concatenate([backprop_w.ravel(), backprop_b])
        both_numeric = np.concatenate([numeric_w.ravel(), numeric_b])

        def name_of(index):
            if index < n_in * n_out:
                return f"W{l + 1}[{index // n_in}][{index % n_in}]"
            return f"b{l + 1}[{index - n_in * n_out}]"

        kinks = tuple(
            KinkParameter(name_of(index), kink_at[first + index][0] + 1, kink_at[first + index][1],
                          kink_at[first + index][2], kink_at[first + index][3],
                          float(both_backprop[index]), float(both_numeric[index]))
            for index in range(both_backprop.size)
            if first + index in kink_at
        )
        judged = np.array([first + index not in kink_at for index in range(both_backprop.size)], dtype=bool)
        differences = np.abs(both_backprop - both_numeric)
        judged_indices = np.flatnonzero(judged)
        if judged_indices.size:
            worst = int(judged_indices[np.argmax(differences[judged])])
            worst_name = name_of(worst)
            max_difference = float(differences[worst])
        else:
            worst_name, max_difference = "(all at a kink)", 0.0
        per_layer.append(
            LayerGradientCheck(
                layer=l + 1,
                relative_error=_relative_error(both_backprop[judged], both_numeric[judged]),
                max_absolute_error=max_difference,
                worst_parameter=worst_name,
                backprop_weights=backprop_w,
                numeric_weights=numeric_w,
                backprop_biases=backprop_b,
                numeric_biases=numeric_b,
                kinks=kinks,
            )
        )
    return GradientCheck(per_layer=per_layer, eps=eps, dtype=str(np.dtype(net.dtype)), loss=loss)


def _pre_activations(ws, params, X):
    """Every layer's ``z`` for rows ``X`` (the twin's forward pass), or ``[]`` without a ReLU to watch."""
    if ws is None:
        return []
    with np.errstate(over="ignore", invalid="ignore"):
        return _reference.dense_forward(ws, params, X)[0]
