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
from fastbp._training import Callback, EarlyStopping  # noqa: E402
from fastbp.schedules import InverseScaling, StepDecay  # noqa: E402
from fastbp._threads import get_num_threads, num_threads, set_num_threads  # noqa: E402
from fastbp.explain import explain_step  # noqa: E402
from fastbp.diagnostics import diagnose  # noqa: E402
from fastbp.gradcheck import check_gradients  # noqa: E402

__all__ = ["Network", "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Rprop", "LBFGS", "Gradients", "Trace",
           "History", "Callback", "EarlyStopping", "StepDecay", "InverseScaling", "BACKEND", "__version__",
           "explain_step", "diagnose", "check_gradients", "set_num_threads", "get_num_threads", "num_threads"]
