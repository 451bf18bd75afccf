"""fastbp: fast, transparent backpropagation for small multilayer perceptrons.

``fastbp.BACKEND`` names the live backend: ``"cython"`` (the compiled kernel) or ``"numpy"`` (its pure-NumPy
twin). ``FASTBP_BACKEND`` selects it; ``FASTBP_REQUIRE_COMPILED=1`` makes a missing compiled kernel an
import error.
"""

from fastbp._version import __version__
from fastbp import _backend

BACKEND = _backend.default_backend()

from fastbp.network import Network  # noqa: E402
from fastbp.optimizers import SGD, Adam, AdamW, LBFGS, Optimizer, RMSprop, Rprop  # noqa: E402
from fastbp._results import Gradients, History, Trace  # noqa: E402
from fastbp.schedules import InverseScaling, StepDecay  # noqa: E402
from fastbp._threads import get_num_threads, num_threads, set_num_threads  # noqa: E402

_LAZY = {
    "explain_step": "fastbp.explain",
    "diagnose": "fastbp.diagnostics",
    "check_gradients": "fastbp.diagnostics",
}

__all__ = ["Network", "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Rprop", "LBFGS", "Gradients", "Trace", "History", "StepDecay", "InverseScaling", "BACKEND", "__version__",
           "explain_step", "diagnose", "check_gradients", "set_num_threads", "get_num_threads", "num_threads"]


def __getattr__(name):
    # Imported on first use: those modules build on this one and may import it back.
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
