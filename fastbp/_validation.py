"""Argument checks shared by every public entry point: each returns the converted value or raises
``TypeError``/``ValueError`` naming the argument and what was expected. The kernel trusts what passes here."""

from __future__ import annotations

import math
import numbers

import numpy as np

from fastbp import _spec
from fastbp import _reference


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(value, name, minimum=None):
    """An int (Python or NumPy, never bool) at least ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _check_real(value, name, *, positive=False, non_negative=False, maximum=None):
    """A finite real number (never bool) as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range, such as 10**400
        raise ValueError(f"{name} must be a finite number; got {_describe(value)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be a finite positive number; got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return value


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {_describe(value)}")
    return bool(value)


def _as_real_array(value, name, dtype, all_finite=_reference.all_finite):
    """Convert to a C-contiguous array of ``dtype``; reject non-real dtypes and non-finite values.

    No copy when ``value`` already is a C-contiguous array of ``dtype``.
    """
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
        # The fast path (per-step calls with ready arrays): no conversion, only the finiteness check.
        if not all_finite(value):
            raise ValueError(f"{name} must be finite; it contains NaN or infinity")
        return value
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{name} must be a rectangular array of numbers; got {_describe(value)} "
                             f"({error})") from None
    kind = value.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} must hold real numbers; got booleans (dtype bool): convert explicitly "
                        "if that is meant")
    if kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (a float or integer dtype); got dtype "
                        f"{value.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(value, dtype=dtype).reshape(value.shape)  # 0-d stays 0-d
    if not _spec.all_finite_chunked(converted):
        where = ""
        if kind != "f" or np.isfinite(value).all():
            where = f" after conversion to {np.dtype(dtype).name} (values too large for it)"
        raise ValueError(f"{name} must be finite; it contains NaN or infinity{where}")
    return converted
