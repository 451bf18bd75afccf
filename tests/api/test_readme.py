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


REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def _clean_env():
    """The environment without fastbp's own switches, as a new user's shell would have it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_")}


def test_a_source_tree_without_the_kernel_says_so(tmp_path):
    """From the root of a checkout, `python -c "import fastbp"` imports the source tree, which has no
    compiled kernel: the warning must name that cause and the way out, not a build failure."""
    tree = tmp_path / "checkout"
    (tree / "fastbp").mkdir(parents=True)
    for source in (REPO / "fastbp").iterdir():  # the checkout's sources (an installed copy has no .pyx)
        if source.suffix in (".py", ".pyx", ".pyi", ".h"):
            shutil.copy(source, tree / "fastbp" / source.name)
    result = subprocess.run([sys.executable, "-c", "import fastbp; print(fastbp.BACKEND)"], cwd=tree,
                            env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"
    assert "running from a source tree without the compiled kernel" in result.stderr, result.stderr
    assert "`fastbp` command" in result.stderr and "FASTBP_BACKEND" not in result.stderr, result.stderr


def _blocks(language):
    """The README's fenced code blocks of one language, in order: (line number, text)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, inside, start, body = [], None, 0, []
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and inside is None:
            inside, start, body = fence.group(1), number, []
        elif line.strip() == "```" and inside is not None:
            if inside == language:
                blocks.append((start, "\n".join(body) + "\n"))
            inside = None
        elif inside is not None:
            body.append(line)
    return blocks


# Optional packages a block may need; a block that needs one that is not installed is skipped, not failed.
OPTIONAL = {"sklearn", "torch", "dask", "distributed", "joblib", "matplotlib", "tqdm", "threadpoolctl"}
PYTHON_BLOCKS = _blocks("python")


def test_the_readme_has_python_blocks_and_the_two_commands():
    assert len(PYTHON_BLOCKS) >= 4
    shell = [text.strip() for _, text in _blocks("bash")]
    assert shell[:2] == ['pip install ".[demo]" && fastbp demo',
                         "pip install -r requirements-test.txt && pip install torch==2.13.0 && pytest"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for command in shell[:2]:
        assert f"\n{command}" in ci, f".ci/run does not run the README's command as written: {command}"
    assert "examples/" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("line,code", PYTHON_BLOCKS, ids=[f"line-{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs_as_pasted(line, code, tmp_path):
    """Each block alone, as a script in a fresh interpreter (the Dask block starts worker processes,
    which need the script to be a file with a __main__ guard)."""
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code, encoding="utf-8")
    env = _clean_env()
    env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", result.stderr)
    if result.returncode != 0 and missing and missing.group(1).split(".")[0] in OPTIONAL:
        pytest.skip(f"README block at line {line} needs {missing.group(1)}, not installed here")
    assert result.returncode == 0, f"README block at line {line} failed:\n{result.stderr[-3000:]}"
