"""README.md as a new user meets it: its code blocks run as pasted, and its first command runs the kernel.

Python blocks are extracted and run one by one in a fresh interpreter (cwd: a temporary folder, so that the
installed fastbp is imported, as it would be from a user's own script) with a time limit. Shell blocks are
not run here (.ci/run runs the README's two commands exactly as written); this file checks that they are
the two commands .ci/run runs.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import fastbp

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PACKAGE = pathlib.Path(fastbp.__file__).resolve().parent


def _clean_env():
    """The environment without fastbp's own switches, as a new user's shell would have it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_")}


def test_a_source_tree_without_the_kernel_says_so(tmp_path):
    """From the root of a checkout, `python -c "import fastbp"` imports the source tree, which has no
    compiled kernel: the warning must name that cause and the way out, not a build failure."""
    tree = tmp_path / "checkout"
    (tree / "fastbp").mkdir(parents=True)
    for source in PACKAGE.iterdir():
        if source.suffix in (".py", ".pyx", ".pyi", ".h"):
            shutil.copy(source, tree / "fastbp" / source.name)
    result = subprocess.run([sys.executable, "-c", "import fastbp; print(fastbp.BACKEND)"], cwd=tree,
                            env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"
    assert "running from a source tree without the compiled kernel" in result.stderr, result.stderr
    assert "`fastbp` command" in result.stderr and "FASTBP_BACKEND" not in result.stderr, result.stderr
