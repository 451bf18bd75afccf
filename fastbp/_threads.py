"""How many threads the BLAS under fastbp may use: ``set_num_threads``, ``get_num_threads``, ``num_threads``.

fastbp's threads are those of the BLAS it calls for mini-batch products (SciPy's OpenBLAS for the compiled
kernel, NumPy's for the twin), and, during one training call, the compiled kernel's own team for its
non-packing products (batches of 16-128 rows on AVX-512 and AVX2 CPUs; docs/DESIGN.md). On an idle machine
those threads pay from a batch of about 32 rows of a few hundred units. On a machine whose other cores are
busy they do not: OpenBLAS threads that wait for each other can make training many times slower (see
docs/BENCHMARKS.md and bench/threads.py), and one thread is then the faster choice.

``fit`` picks the thread count per call when none is given (``threads_for_call``): one thread where the
products are too small to pay for the threads' synchronisation, or where other processes keep the other
cores busy; otherwise the BLAS's own setting. The kernel's team follows the same count
(``kernel_threads``); its results are the same bits on any count.

The BLAS libraries are reached through threadpoolctl (``pip install "fastbp[threads]"``), the same
mechanism scikit-learn uses; without it these functions raise ImportError saying so. The limits apply to
every BLAS library loaded in the process, as ``threadpoolctl.threadpool_limits(user_api="blas")`` does.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Any, ContextManager, Iterator, Optional, Sequence

_INSTALL_HINT = ('fastbp\'s thread control needs threadpoolctl: pip install "fastbp[threads]" '
                 '(or pip install threadpoolctl)')

# Below this many multiply-adds in the largest product of a step (batch rows x inputs x outputs of the widest
# layer), a second BLAS thread does not pay inside fit: the products are tens of microseconds, and the
# step's single-threaded work between them lets the BLAS's workers go idle. Measured on the development
# machine (2-core Xeon, OpenBLAS 0.3.30, float64; bench/sklearn_compare.py, 2026-12-02): scikit-learn's
# digits (batch 200, 64-100-10: 1.28 M) fitted in 0.22 s on one thread and 0.28-0.30 s on two; the
# 100-100 layers of its 50k x 100 sets (2.0 M) fitted about 5% faster on two threads than on one. Above
# the line the idle machine keeps the BLAS's own count.
SMALL_WORK = 1_600_000

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


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _own_running() -> int:
    """This process's threads that are running now (its BLAS workers may still be spinning)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover - no /proc
        return 1
    running = 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                running += stat.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(running, 1)


def busy_cores() -> Optional[float]:
    """How many cores other processes keep busy now, or None where the OS does not say.

    Linux: the runnable tasks of the whole machine now (``/proc/loadavg``, fourth field) less this
    process's own running threads. Elsewhere: the one-minute load average (``os.getloadavg``) less one,
    for this process.
    """
    try:
        with open("/proc/loadavg") as loadavg:
            running = int(loadavg.read().split()[3].split("/")[0])
        return float(max(0, running - _own_running()))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def threads_for_call(batch_size: int, layer_sizes: Sequence[int]) -> Optional[int]:
    """The BLAS thread count for one training call when the caller chose none; None: leave the BLAS alone.

    Parameters
    ----------
    batch_size : int
        Rows per mini-batch of the call.
    layer_sizes : sequence of int
        The network's layer sizes, inputs first.

    Returns
    -------
    int or None
        1 when the largest product of a step, ``batch_size`` times the largest ``n_in * n_out`` of a layer,
        is below ``SMALL_WORK`` multiply-adds (the products are too small to pay for synchronising threads);
        the cores left free by other processes (at least 1) when others are
        busy; None when the machine is idle, when ``set_num_threads`` has set a process-wide limit (the
        user's choice stands), or without threadpoolctl.
    """
    if _original is not None:
        return None
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return None
    widest = max((n_in * n_out for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:])), default=0)
    if batch_size * widest < SMALL_WORK:
        return 1
    cores = _usable_cores()
    busy = busy_cores()
    if busy is None or cores <= 1:
        return None
    free = int(cores - busy + 0.5)
    return None if free >= cores else max(1, free)


def limit_for_call(threads: Optional[int], batch_size: int, layer_sizes: Sequence[int]) -> ContextManager[Any]:
    """The thread limit for one training call: ``threads`` when given (checked), else ``threads_for_call``.
    Inside it, ``kernel_threads()`` is the count for the compiled kernel's own products.

    ``with _threads.limit_for_call(threads, batch_size, net.layer_sizes): ...``
    """
    if threads is not None:
        count = _check_threads(threads, "threads")
        return _kernel_team(count, num_threads(count))
    chosen = threads_for_call(batch_size, layer_sizes)
    if chosen is not None:
        return _kernel_team(chosen, _at_most(chosen))
    # the machine is idle (or the user's set_num_threads limit stands, or threadpoolctl is missing)
    team = get_num_threads() if _original is not None else _usable_cores()
    return _kernel_team(team, contextlib.nullcontext())


# The thread count for the compiled kernel's own mini-batch products (the non-packing products of
# _kernels_gemm.h, split over a team of threads that lives for one backend call; the same bits on any count):
# 1 outside a training call, the BLAS limit of the call inside ``limit_for_call``. Process-wide, like the
# BLAS limit it follows.
_kernel_threads = 1


def kernel_threads() -> int:
    """The thread count for the compiled kernel's own products in the current training call (1 outside)."""
    return _kernel_threads


@contextlib.contextmanager
def _kernel_team(n: int, blas_limit: ContextManager[Any]) -> Iterator[None]:
    global _kernel_threads
    before = _kernel_threads
    with blas_limit:
        _kernel_threads = n
        try:
            yield
        finally:
            _kernel_threads = before


@contextlib.contextmanager
def _at_most(n: int) -> Iterator[None]:
    """``num_threads(n)`` for every call of ``fit``: straight to each BLAS library's get/set functions, a few
    microseconds, where building a threadpoolctl limiter costs about 100 times that."""
    changed = []
    for library in _blas().lib_controllers:
        before = library.get_num_threads()
        if before is not None and before > n:
            library.set_num_threads(n)
            changed.append((library, before))
    try:
        yield
    finally:
        for library, before in changed:
            library.set_num_threads(before)
