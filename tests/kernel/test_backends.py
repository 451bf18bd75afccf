"""Backend selection: ``fastbp.BACKEND``, ``net.backend``, ``FASTBP_BACKEND`` and ``FASTBP_REQUIRE_COMPILED``."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastbp

# Run children against the same fastbp this process imported (installed or source tree).
FASTBP_PARENT = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)
PROBE = (
    "import json, warnings, fastbp; "
    "net = fastbp.Network([2, 1], 'identity'); "
    "print(json.dumps({'BACKEND': fastbp.BACKEND, 'net': net.backend, 'file': fastbp.__file__}))"
)


def run_probe(tmp_path, **environment):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_")}
    env.update(environment)
    env["PYTHONPATH"] = FASTBP_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def compiled_available():
    try:
        import fastbp._core  # noqa: F401
    except ImportError:
        return False
    return True


def test_environment_forces_numpy_twin(tmp_path):
    result = run_probe(tmp_path, FASTBP_BACKEND="numpy")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["BACKEND"] == "numpy" and seen["net"] == "numpy"
    assert pathlib.Path(seen["file"]).resolve() == pathlib.Path(fastbp.__file__).resolve()


def test_default_is_compiled_when_built(tmp_path):
    if not compiled_available():
        pytest.skip("compiled kernel not built")
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["BACKEND"] == "cython" and seen["net"] == "cython"


def test_require_compiled_imports_when_built(tmp_path):
    result = run_probe(tmp_path, FASTBP_REQUIRE_COMPILED="1")
    if compiled_available():
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["BACKEND"] == "cython"
    else:
        assert result.returncode != 0 and "ImportError" in result.stderr


SMALL_GEMM_PROBE = (
    "import json, warnings; warnings.simplefilter('always'); from fastbp import _core; "
    "print(json.dumps({'in_use': _core._small_gemm_isa(), 'runs': _core._small_gemm_isas()}))"
)


@pytest.mark.parametrize("value", [None, "off", "avx2", "AVX512", "sse2"])
def test_the_environment_caps_the_small_products_build(tmp_path, value):
    if not compiled_available():
        pytest.skip("compiled kernel not built")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_")}
    if value is not None:
        env["FASTBP_SMALL_GEMM"] = value
    env["PYTHONPATH"] = FASTBP_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SMALL_GEMM_PROBE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    best = seen["runs"][0] if seen["runs"] else "off"
    if value in (None, "sse2", "AVX512"):
        # unset, or a name that is not a build (warned about and ignored): the best build this CPU runs
        assert seen["in_use"] == best
        assert ("FASTBP_SMALL_GEMM='sse2' is not one of off, avx2, avx512" in result.stderr) == (value == "sse2")
    elif value == "off":
        assert seen["in_use"] == "off"
    else:
        # a cap: the AVX2 build where the CPU runs it, never one the CPU lacks
        assert seen["in_use"] == ("avx2" if "avx2" in seen["runs"] else "off")


def test_unknown_environment_backend_is_an_error(tmp_path):
    result = run_probe(tmp_path, FASTBP_BACKEND="fortran")
    assert result.returncode != 0
    assert "FASTBP_BACKEND" in result.stderr


def test_backend_attribute(backend):
    assert fastbp.BACKEND in ("cython", "numpy")
    net = fastbp.Network([2, 3, 1], "tanh", seed=0, backend=backend)
    assert net.backend == backend
    default = fastbp.Network([2, 3, 1], "tanh", seed=0)
    assert default.backend == fastbp.BACKEND


def test_backends_agree_on_the_same_net(backend):
    rng = np.random.default_rng(0)
    twin = fastbp.Network([4, 6, 3], ["sigmoid", "identity"], seed=1, backend="numpy")
    net = fastbp.Network([4, 6, 3], ["sigmoid", "identity"], seed=1, backend=backend)
    assert np.array_equal(twin.params, net.params), "the seeded initialisation does not depend on the backend"
    X, Y = rng.normal(size=(10, 4)), rng.normal(size=(10, 3))
    np.testing.assert_allclose(net.predict(X), twin.predict(X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.gradients(X, Y).weights[0], twin.gradients(X, Y).weights[0],
                               rtol=1e-12, atol=1e-14)


# The finiteness test every train_step and input check runs: the compiled one takes a maximum over the bits
# in four interleaved quarters of the array in a vectorised loop (with AVX-512/AVX2 variants), so check it
# against numpy at every position of short arrays, at each quarter's ends and in the tail of long ones, for
# every kind of non-finite value and the finite extremes.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite_agrees_with_numpy(backend, dtype):
    module = fastbp.Network([1, 1], "identity", dtype=dtype, backend=backend)._module
    info = np.finfo(dtype)
    finite_extremes = [info.max, -info.max, info.tiny, info.smallest_subnormal, -info.smallest_subnormal, 0.0,
                       -0.0]
    rng = np.random.default_rng(0)
    for n in [1, 2, 7, 15, 16, 17, 31, 33, 64, 100, 4095, 4097, 70_000]:
        values = rng.normal(size=n).astype(dtype)
        values[rng.integers(0, n, size=min(n, 3))] = rng.choice(finite_extremes, size=min(n, 3))
        assert np.isfinite(values).all() and module.all_finite(values)
        q = n // 4
        positions = range(n) if n <= 130 else {0, q - 1, q, 2 * q - 1, 2 * q, 3 * q - 1, 3 * q, 4 * q - 1, n - 1}
        for position in sorted(positions):
            for bad in [np.nan, np.inf, -np.inf, -np.nan]:
                broken = values.copy()
                broken[position] = bad
                assert not module.all_finite(broken), (n, position, bad)
                assert not module.all_finite(broken.reshape(1, n)), "2-D arrays too"
    assert module.all_finite(np.empty(0, dtype))
