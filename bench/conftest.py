"""pytest setup of the benchmark suite (``pytest bench/``; the default ``pytest`` run collects tests/ only).

Before numpy is imported here, ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed from this process's
environment (they may be set on these machines and slow OpenBLAS down); the BLAS actually loaded and its
thread count are added to pytest-benchmark's machine_info and to the report header.
"""

from __future__ import annotations

import os
import sys

_PRELOADED_NUMPY = "numpy" in sys.modules
_STRIPPED = {key: os.environ.pop(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if key in os.environ}

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    import numpy  # noqa: F401  (loads the BLAS)
    return [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()]


def _fastbp_info():
    try:
        import fastbp
    except ImportError as exc:
        return f"not importable ({exc})"
    try:
        import fastbp._core  # noqa: F401
        compiled = "compiled backend importable"
    except ImportError as exc:
        compiled = f"compiled backend NOT importable ({exc})"
    return f"from {os.path.dirname(fastbp.__file__)}, {compiled}"


def pytest_report_header(config):
    lines = [f"bench: removed {sorted(_STRIPPED) or 'nothing'} from the environment"
             + (" (numpy was already imported: too late for its BLAS)" if _PRELOADED_NUMPY and _STRIPPED else ""),
             f"bench: BLAS {_blas_info()}",
             f"bench: fastbp {_fastbp_info()}",
             "bench: " + ("FULL run (FASTBP_BENCH_FULL=1)" if os.environ.get("FASTBP_BENCH_FULL") == "1"
                          else "quick run (set FASTBP_BENCH_FULL=1 for larger epochs and more rounds)")]
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["blas"] = _blas_info()
    machine_info["stripped_env"] = sorted(_STRIPPED)
    machine_info["loadavg"] = os.getloadavg()
