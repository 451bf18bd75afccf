"""Backend selection: the compiled kernel ``fastbp._core`` or its NumPy twin ``fastbp._reference``.

Both modules export the same functions (``docs/DESIGN.md``, "Backend interface"). The default is the
compiled one when it imports; the environment variable ``FASTBP_BACKEND`` (``"cython"`` or ``"numpy"``)
overrides it, and ``FASTBP_REQUIRE_COMPILED=1`` turns a missing compiled module into an import error
(CI sets it, so that a broken build can never pass as green on the fallback).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings

BACKENDS = ("cython", "numpy")

# The backend contract: the names both fastbp._core and fastbp._reference export (their ``__all__``), with
# the semantics of docs/DESIGN.md, "Backend interface". tests/test_conformance.py checks both modules
# against it, entry by entry. network.py and optimizers.py reach a backend through these names only.
INTERFACE = ("Workspace", "predict", "loss_and_gradient", "train_epoch", "optimizer_step", "all_finite",
             "predict_sparse", "loss_and_gradient_sparse", "train_epoch_sparse")
_MODULES = {"cython": "fastbp._core", "numpy": "fastbp._reference"}


def _import_compiled():
    """Return ``(module, None)`` or ``(None, the ImportError)``."""
    try:
        return importlib.import_module("fastbp._core"), None
    except ImportError as error:
        return None, error


def _missing_kernel_reason(error):
    """Say why ``fastbp._core`` is missing and what to do, for the warning and the import error.

    The usual cause is not a failed build but the wrong copy of fastbp: ``python -m ...`` and
    ``python -c ...`` put the current folder first on ``sys.path``, so from the root of a checkout the
    source tree (which has no compiled kernel) shadows the installed package.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    built = [name for name in os.listdir(here) if name.startswith("_core.") and name.endswith((".so", ".pyd"))]
    if built or not os.path.exists(os.path.join(here, "_core.pyx")):
        return (f"the compiled extension fastbp._core does not import ({error}); rebuild it with a C "
                "compiler available (pip install ., or python setup.py build_ext --inplace in a checkout)")
    installed = None
    try:
        located = os.path.abspath(str(importlib.metadata.distribution("fastbp").locate_file("fastbp")))
        if located != here and os.path.exists(os.path.join(located, "__init__.py")):
            installed = located
    except importlib.metadata.PackageNotFoundError:
        pass
    where = f"running from a source tree without the compiled kernel ({here})"
    if installed is not None:
        return (f"{where}, which hides the installed fastbp in {installed}; run from outside the source tree "
                "or use the `fastbp` command (`fastbp demo`), which imports the installed package")
    return (f"{where}; install it (pip install .) and run from outside the source tree or use the `fastbp` "
            "command, or build the kernel in place (python setup.py build_ext --inplace)")


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
            f"backend='cython' was requested, but {_missing_kernel_reason(error)}") from error
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
                f"FASTBP_REQUIRE_COMPILED is set, but {_missing_kernel_reason(error)}") from error
    if requested:
        return check_name(requested.lower(), "FASTBP_BACKEND")
    module, error = _import_compiled()
    if module is not None:
        return "cython"
    warnings.warn(
        f"fastbp: {_missing_kernel_reason(error)}. Using the pure-NumPy fallback meanwhile, which is "
        "much slower.",
        RuntimeWarning, stacklevel=3)
    return "numpy"
