"""Every script in ``examples/`` runs, as a script, with its small settings, and prints a sensible result.

Each runs in a subprocess (``python examples/NAME.py --quick``) from an empty folder, with the ``fastbp`` that
this test session imported first on the path, under the same ``FASTBP_BACKEND``. An example that needs
scikit-learn or PyTorch is skipped when that is not installed. The whole file takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import fastbp

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
FASTBP_PARENT = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)


def _run(cwd, name, *args):
    script = EXAMPLES / name
    if not script.exists():
        pytest.skip(f"needs the source checkout: {script} is missing")
    env = dict(os.environ)
    env["PYTHONPATH"] = FASTBP_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _needs(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"this example needs {module}, which is not installed")


def _value(pattern, out):
    match = re.search(pattern, out)
    assert match, f"no line matching {pattern!r} in:\n{out}"
    return float(match.group(1))


def test_digits_classification(tmp_path):
    _needs("sklearn")
    out = _run(tmp_path, "digits_classification.py", "--quick")
    assert _value(r"test accuracy: ([0-9.]+)", out) > 0.9
    assert "best validation loss" in out


def test_diabetes_regression(tmp_path):
    _needs("sklearn")
    out = _run(tmp_path, "diabetes_regression.py", "--quick")
    r2 = _value(r"test R\^2: (-?[0-9.]+)", out)
    linear = _value(r"linear least squares on the same split: test R\^2 (-?[0-9.]+)", out)
    assert r2 > 0.2, out                     # a real fit, not a constant (R^2 = 0) or worse
    assert r2 > linear - 0.1, out            # and about as good as least squares on this near-linear data


def test_worked_example_by_hand(tmp_path):
    out = _run(tmp_path, "worked_example_by_hand.py", "--quick")
    assert "hand calculation and fastbp agree: yes" in out
    assert "0.0074981439" in out and "0.0018016670" in out   # the textbook's loss before and after
    for section in ("1. Setup", "2. Forward pass", "3. Backward pass", "4. Update", "6. Check"):
        assert section in out                                   # explain_step's tables were printed


def test_sklearn_pipeline(tmp_path):
    _needs("sklearn")
    out = _run(tmp_path, "sklearn_pipeline.py", "--quick")
    assert "4 candidates x 3 folds" in out
    assert _value(r"test accuracy: ([0-9.]+)", out) > 0.9


def test_torch_round_trip(tmp_path):
    _needs("torch")
    out = _run(tmp_path, "torch_round_trip.py", "--quick")
    assert "round trip agrees to 1e-12: yes" in out
    difference = _value(r"max \|from_torch\(module\) - fastbp\| = ([0-9.e+-]+)", out)
    assert difference < 1e-12, out


def test_typed_user_script_runs(tmp_path):
    out = _run(tmp_path, "typed_user_script.py", "--quick")
    assert "XOR accuracy: 1.00" in out
