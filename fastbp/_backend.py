"""Backend selection: the compiled kernel ``fastbp._core`` or its NumPy twin ``fastbp._reference``.

Both modules export the same functions (``docs/DESIGN.md``, "Backend interface"). The default is the
compiled one when it imports; the environment variable ``FASTBP_BACKEND`` (``"cython"`` or ``"numpy"``)
overrides it, and ``FASTBP_REQUIRE_COMPILED=1`` turns a missing compiled module into an import error
(CI sets it, so that a broken build can never pass as green on the fallback).
"""

from __future__ import annotations

import importlib
import os
import warnings

BACKENDS = ("cython", "numpy")

# The backend contract: the names both fastbp._core and fastbp._reference export (their ``__all__``), with
# the semantics of docs/DESIGN.md, "Backend interface". tests/test_conformance.py checks both modules
# against it, entry by entry. network.py and optimizers.py reach a backend through these names only.
INTERFACE = ("Workspace", "predict", "loss_and_gradient", "train_epoch", "optimizer_step", "all_finite")
_MODULES = {"cython": "fastbp._core", "numpy": "fastbp._reference"}


def _import_compiled():
    """Return ``(module, None)`` or ``(None, the ImportError)``."""
    try:
        return importlib.import_module("fastbp._core"), None
    except ImportError as error:
        return None, error


def check_name(name, argument="backend"):
    """Validate a backend name; return it."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS!r}; got {name!r}")
    return name


def load_backend(name):
    """Return the backend module for ``name`` (``"cython"`` or ``"numpy"``).

    Raises
    ------
    ValueError
        For an unknown name.
    ImportError
        For ``"cython"`` when the compiled extension is not built (chained to the real import error).
    """
    check_name(name)
    if name == "numpy":
        return importlib.import_module("fastbp._reference")
    module, error = _import_compiled()
    if module is None:
        raise ImportError(
            "backend='cython' was requested but the compiled extension fastbp._core is not built or does "
            "not import; reinstall fastbp with a C compiler available (pip install .), or use "
            "backend='numpy'") from error
    return module


get_backend = load_backend  # the name docs/DESIGN.md uses


def default_backend():
    """The backend name to use when none is given, following the environment (see the module docstring).

    Warns (``RuntimeWarning``) when it falls back to NumPy because the compiled extension is missing.
    """
    required = os.environ.get("FASTBP_REQUIRE_COMPILED", "").strip()
    requested = os.environ.get("FASTBP_BACKEND", "").strip()
    if required not in ("", "0"):
        module, error = _import_compiled()
        if module is None:
            raise ImportError(
                "FASTBP_REQUIRE_COMPILED is set but the compiled extension fastbp._core does not import "
                f"({error}); the build is broken") from error
    if requested:
        return check_name(requested.lower(), "FASTBP_BACKEND")
    module, error = _import_compiled()
    if module is not None:
        return "cython"
    warnings.warn(
        f"fastbp: the compiled extension fastbp._core is not built ({error}); using the pure-NumPy "
        "fallback, which is much slower. Set FASTBP_BACKEND=numpy to silence this warning.",
        RuntimeWarning, stacklevel=3)
    return "numpy"
