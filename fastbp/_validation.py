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


def nonfinite_rows_error(name, X, offset=0):
    """The ValueError for a 2-D ``X`` found to hold NaN or infinity after all (``fit`` checks a ready X as
    its first epoch reads it), naming its first such row, ``offset`` added."""
    row = _spec.first_nonfinite_row(X)
    where = f"row {row + offset}" if row >= 0 else "it"
    return ValueError(f"{name} must be finite; {where} contains NaN or infinity")


def _as_real_array(value, name, dtype, all_finite=_reference.all_finite):
    """Convert to a C-contiguous array of ``dtype``; reject non-real dtypes and non-finite values.

    No copy when ``value`` already is a C-contiguous array of ``dtype``. ``all_finite=None``: no finiteness
    check of such an array (the caller checks it as it reads it: ``fit``'s first epoch); a converted
    array is always checked (the conversion costs more, and its own overflow gets its own message).
    """
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
        # The fast path (per-step calls with ready arrays): no conversion, only the finiteness check.
        if all_finite is not None and not all_finite(value):
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


# ---------------------------------------------------------------------------------------------------------
# Sparse input
# ---------------------------------------------------------------------------------------------------------


def _is_sparse(value):
    """Whether ``value`` is a scipy.sparse matrix or array (without importing scipy.sparse)."""
    return type(value).__module__.startswith("scipy.sparse") and hasattr(value, "tocsr")


class SparseRows:
    """Checked CSR rows, what the backends' ``*_sparse`` functions take.

    ``data`` is C-contiguous in the network's dtype and finite; ``indices`` and ``indptr`` are C-contiguous
    ``np.intp``; ``indptr`` has ``n + 1`` entries from 0; each row's column indices are sorted, distinct and
    in ``[0, n_cols)``. Rows are taken with ``rows[start:stop]`` (views of the non-zeros) or
    ``rows[index_array]`` (a copy of theirs), as the training loop takes rows of a dense matrix.
    """

    __slots__ = ("data", "indices", "indptr", "shape")

    def __init__(self, data, indices, indptr, n_cols):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (indptr.shape[0] - 1, int(n_cols))

    @property
    def nnz(self):
        """The number of stored non-zeros."""
        return self.data.shape[0]

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"SparseRows(shape={self.shape}, nnz={self.nnz}, dtype={self.data.dtype.name})"

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step == 1:
                stop = max(start, stop)
                lo, hi = self.indptr[start], self.indptr[stop]
                return SparseRows(self.data[lo:hi], self.indices[lo:hi], self.indptr[start:stop + 1] - lo,
                                  self.shape[1])
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows, dtype=np.intp).reshape(-1)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.intp)
        np.cumsum(lengths, out=indptr[1:])
        # position of each kept non-zero in the source: its row's start, plus its rank within the row
        source = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.intp)
        return SparseRows(self.data[source], self.indices[source], indptr, self.shape[1])

    def toarray(self):
        """The dense matrix (for small batches: a hand calculation, a trace)."""
        dense = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        dense[rows, self.indices] = self.data
        return dense


def _as_sparse_rows(value, name, dtype, n_cols, all_finite=_reference.all_finite):
    """A scipy.sparse matrix or array of shape ``(n, n_cols)`` as :class:`SparseRows` of ``dtype``.

    CSR input is used as it is (its arrays are converted only where their dtypes differ); other formats
    are converted to CSR once; unsorted or duplicate column indices are put in canonical form (duplicates
    summed, as scipy reads them) in a copy. The caller's matrix is never modified.
    """
    import scipy.sparse  # a dependency; imported here so that `import fastbp` stays light

    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} as a sparse matrix must be 2-D with shape (n, {n_cols}); got shape {shape}")
    if shape[1] != n_cols:
        raise ValueError(f"{name} must have shape (n, {n_cols}) (layer_sizes[0] = {n_cols}); got shape "
                         f"{tuple(shape)}")
    kind = value.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} must hold real numbers; got booleans (dtype bool): convert explicitly if that "
                        "is meant")
    if kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (a float or integer dtype); got dtype {value.dtype}")
    csr = value if value.format == "csr" else value.tocsr()
    n = shape[0]
    indptr, indices = np.asarray(csr.indptr), np.asarray(csr.indices)
    if indptr.ndim != 1 or indptr.shape[0] != n + 1 or indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ValueError(f"{name} is not a valid CSR matrix: indptr must hold {n + 1} integers; got "
                         f"{_describe(indptr)}")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] > min(indices.shape[0], csr.data.shape[0]):
        raise ValueError(f"{name} is not a valid CSR matrix: indptr must rise from 0 to at most the number of "
                         f"stored values ({csr.data.shape[0]}); got values from {indptr.min()} to {indptr.max()}")
    nnz = int(indptr[-1])
    indices = indices[:nnz]
    if nnz and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"{name} has column indices out of range: they must lie in [0, {n_cols - 1}]; got "
                         f"values from {indices.min()} to {indices.max()}")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(csr.data[:nnz], dtype=dtype)
    if not all_finite(data):
        where = ""
        if kind != "f" or np.isfinite(csr.data[:nnz]).all():
            where = f" after conversion to {np.dtype(dtype).name} (values too large for it)"
        raise ValueError(f"{name} must be finite; its stored values contain NaN or infinity{where}")
    indices = np.ascontiguousarray(indices, dtype=np.intp)
    indptr = np.ascontiguousarray(indptr, dtype=np.intp)
    # canonical form: strictly increasing column indices within each row
    rising = np.diff(indices) > 0
    boundaries = indptr[1:-1]
    rising[boundaries[(boundaries > 0) & (boundaries < nnz)] - 1] = True    # a new row may start anywhere
    if not rising.all():
        canonical = scipy.sparse.csr_matrix((data.copy(), indices.copy(), indptr.copy()), shape=(n, n_cols))
        canonical.sum_duplicates()
        data = np.ascontiguousarray(canonical.data, dtype=dtype)
        indices = np.ascontiguousarray(canonical.indices, dtype=np.intp)
        indptr = np.ascontiguousarray(canonical.indptr, dtype=np.intp)
        if not all_finite(data):
            raise ValueError(f"{name} must be finite; summing its duplicate entries overflows "
                             f"{np.dtype(dtype).name}")
    return SparseRows(data, indices, indptr, n_cols)
