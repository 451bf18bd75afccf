"""Shared fixtures: every test runs on each available backend, with a per-dtype tolerance table.

Backends: ``"numpy"`` (the NumPy twin) always; ``"cython"`` (the compiled kernel) when ``fastbp._core``
imports. ``FASTBP_BACKEND=numpy`` restricts the run to the twin. ``FASTBP_REQUIRE_COMPILED=1`` (set by CI)
turns a missing compiled kernel into a failure instead of a skip, so a broken build can never pass as green.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

try:
    import fastbp
except ImportError as error:  # the README's test command run before its install command
    raise pytest.UsageError(
        f"fastbp is not installed in this environment ({error}). The tests run against the installed "
        "package: install it first from the checkout's root (pip install \".[demo]\", the README's first "
        "command), or build it in place for development (python setup.py build_ext --inplace && "
        "python -m pytest).") from error
from _support import TOLERANCES


def _compiled_import_error():
    """``None`` when ``fastbp._core`` imports, else the error text."""
    try:
        importlib.import_module("fastbp._core")
    except ImportError as error:  # pragma: no cover - depends on the build
        return str(error)
    return None


def _requested_backends():
    if os.environ.get("FASTBP_BACKEND", "").strip().lower() == "numpy":
        return ["numpy"]
    return ["numpy", "cython"]


def pytest_report_header(config):
    where = os.path.dirname(fastbp.__file__)
    compiled = _compiled_import_error()
    return [
        f"fastbp {getattr(fastbp, '__version__', '?')} from {where}",
        f"fastbp.BACKEND = {getattr(fastbp, 'BACKEND', '?')}; compiled kernel: "
        + ("importable" if compiled is None else f"NOT importable ({compiled})"),
        f"backends under test: {_requested_backends()}",
    ]


@pytest.fixture(params=_requested_backends())
def backend(request):
    """The name of the backend under test; skips (or fails, under FASTBP_REQUIRE_COMPILED=1) when absent."""
    name = request.param
    if name == "cython":
        error = _compiled_import_error()
        if error is not None:
            if os.environ.get("FASTBP_REQUIRE_COMPILED") == "1":
                pytest.fail(f"FASTBP_REQUIRE_COMPILED=1 but fastbp._core does not import: {error}")
            pytest.skip(f"compiled kernel not built: {error}")
    return name


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def tolerance():
    """``tolerance(dtype)`` gives the ``rtol``/``atol`` keyword arguments for that dtype."""
    return lambda dtype: TOLERANCES[np.dtype(dtype)]
