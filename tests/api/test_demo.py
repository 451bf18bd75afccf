"""The demo (`python -m fastbp demo`) runs end to end: trains on the bundled digits, replays a worked step."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import fastbp

pytest.importorskip("sklearn")

FASTBP_PARENT = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)


def test_demo_trains_digits_and_replays_worked_example(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = FASTBP_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", "import sys, fastbp.demo as d; sys.exit(d.main(['--epochs', '15']))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    accuracy = re.search(r"test accuracy:\s*([0-9.]+)", out)
    assert accuracy, out
    assert float(accuracy.group(1)) > 0.9
    assert "epoch" in out.lower()
    # The replayed step reports the worked example's loss before and after (values from the JSON file).
    assert "0.0074981" in out and "0.0018016" in out
