"""mypy passes on the package and on an annotated user script, and it really sees fastbp's types.

One mypy run (about 2 s cold) checks ``fastbp/``, ``examples/typed_user_script.py`` and a deliberately wrong
script: the first two must be clean, and the wrong one must fail exactly where it misuses fastbp (a method
``Network`` does not have; a wrong argument type to the compiled kernel's ``Workspace``, typed only by
``fastbp/_core.pyi``), which shows that the types reach a user's code rather than everything being ``Any``.
The configuration is ``[tool.mypy]`` in ``pyproject.toml``. Skipped when mypy is not installed
(``pip install "fastbp[typecheck]"``) or when the source checkout is not beside the tests.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy", reason='mypy is not installed (pip install "fastbp[typecheck]")')

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fastbp"
USER_SCRIPT = ROOT / "examples" / "typed_user_script.py"
CONFIG = ROOT / "pyproject.toml"

WRONG = textwrap.dedent(
    """
    import numpy as np
    import fastbp
    from fastbp import _core

    net = fastbp.Network([2, 1], "identity")
    net.no_such_method()
    workspace = _core.Workspace([2, 1], [0], 0, np.float64, "ten")
    """
)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory):
    for path in (PACKAGE / "__init__.py", PACKAGE / "py.typed", PACKAGE / "_core.pyi", USER_SCRIPT, CONFIG):
        if not path.exists():
            pytest.skip(f"needs the source checkout: {path} is missing")
    work = tmp_path_factory.mktemp("mypy")
    wrong = work / "wrong_usage.py"
    wrong.write_text(WRONG)
    command = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(work / "cache"),
               "--no-error-summary", "--show-error-codes", "--hide-error-context", "--no-pretty",
               str(PACKAGE), str(USER_SCRIPT), str(wrong)]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), f"mypy crashed ({result.returncode}):\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _errors(output, name):
    return [line for line in output.splitlines() if ": error:" in line and name in line]


def test_package_and_user_script_typecheck(mypy_output):
    errors = [line for line in mypy_output.splitlines()
              if ": error:" in line and "wrong_usage.py" not in line]
    assert not errors, "mypy errors in fastbp or examples/typed_user_script.py:\n" + "\n".join(errors)


def test_mypy_sees_fastbp_types(mypy_output):
    errors = _errors(mypy_output, "wrong_usage.py")
    text = "\n".join(errors)
    assert any(re.search(r'"Network" has no attribute "no_such_method"', e) for e in errors), mypy_output
    assert any("Workspace" in e and "[arg-type]" in e for e in errors), mypy_output
    assert len(errors) == 2, text
