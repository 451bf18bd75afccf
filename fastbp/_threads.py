"""How many threads the BLAS under fastbp may use: ``set_num_threads``, ``get_num_threads``, ``num_threads``.

fastbp's own loops run on the calling thread; its only other threads are those of the BLAS it calls for
mini-batch products (SciPy's OpenBLAS for the compiled kernel, NumPy's for the twin). On an idle machine
those threads pay from a batch of about 32 rows of a few hundred units. On a machine whose other cores are
busy they do not: OpenBLAS threads that wait for each other can make training many times slower (see the
README's Performance section), and one thread is then the faster choice.

The BLAS libraries are reached through threadpoolctl (``pip install "fastbp[threads]"``), the same
mechanism scikit-learn uses; without it these functions raise ImportError saying so. The limits apply to
every BLAS library loaded in the process, as ``threadpoolctl.threadpool_limits(user_api="blas")`` does.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator, Optional

_INSTALL_HINT = ('fastbp\'s thread control needs threadpoolctl: pip install "fastbp[threads]" '
                 '(or pip install threadpoolctl)')

_controller: Any = None
_original: Any = None   # the limiter of the first set_num_threads call: restores the original limits


def _blas():
    """The BLAS libraries loaded in this process, as a threadpoolctl controller selection."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    # The compiled kernel calls SciPy's BLAS: make sure it is loaded before threadpoolctl looks.
    import scipy.linalg.cython_blas  # noqa: F401
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.select(user_api="blas")


_MAX_THREADS = 2**15


def _check_threads(n: Any, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int (threads for BLAS); got {type(n).__name__} {n!r}")
    count = int(n)
    if not 1 <= count <= _MAX_THREADS:  # the BLAS takes a C int: 10**400 raised ctypes' ArgumentError
        shown = count if abs(count).bit_length() < 64 else f"an integer of {len(str(abs(count)))} digits"
        raise ValueError(f"{name} must be a positive int of at most {_MAX_THREADS} (threads for BLAS); "
                         f"got {shown}")
    return count


def get_num_threads() -> int:
    """The number of threads the BLAS under fastbp may use now (the largest over the loaded libraries)."""
    infos = _blas().info()
    if not infos:
        raise RuntimeError("threadpoolctl found no BLAS library in this process")
    return max(int(info["num_threads"]) for info in infos)


def set_num_threads(n: Optional[int]) -> None:
    """Let the BLAS under fastbp use at most ``n`` threads from now on; ``None`` restores the limits the
    process started with. Like ``torch.set_num_threads``: a process-wide setting."""
    global _original
    if n is None:
        if _original is not None:
            _original.restore_original_limits()
            _original = None
        return
    n = _check_threads(n)
    limiter = _blas().limit(limits=n)
    if _original is None:
        _original = limiter


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``with fastbp.num_threads(1): ...`` limits the BLAS to ``n`` threads inside the block only."""
    n = _check_threads(n)
    limiter = _blas().limit(limits=n)
    try:
        yield
    finally:
        limiter.restore_original_limits()
