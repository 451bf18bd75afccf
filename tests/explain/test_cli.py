"""The ``fastbp`` command through a subprocess (``python -m fastbp``): every subcommand on every shared worked
example, and bad specs and arguments (a message naming the field, exit status 2, never a traceback)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

import fastbp
from _support import DATA, WORKED_EXAMPLES, example_ids, load_example
from fastbp import cli

REPO = pathlib.Path(fastbp.__file__).resolve().parent.parent
SIGMOID = DATA / "worked-examples" / "sigmoid-2-2-1.json"
SCALAR = DATA / "worked-examples" / "scalar-1-1-1.json"


def run_fastbp(backend, *args, timeout=120):
    env = dict(os.environ)
    env["FASTBP_BACKEND"] = backend
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "fastbp", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        # not the repository root: `-m` puts the working directory first on sys.path, and the source tree
        # (no compiled kernel in a fresh clone) would hide the installed package
        cwd=tempfile.gettempdir(),
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_explain_every_worked_example(path, backend):
    spec = load_example(path)
    result = run_fastbp(backend, "explain", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("1. Setup", "2. Forward pass", "3. Backward pass", "4. Update", "5. Summary", "6. Check"):
        assert f"\n{heading}\n" in out
    # every new parameter value, as printed with 4 decimals, is in the update table
    update = out.split("\n4. Update\n")[1].split("\n5. Summary\n")[0]
    expected = spec["expected"]
    for l, W in enumerate(expected["new_weights"]):
        for j, row in enumerate(W):
            for i, value in enumerate(row):
                line = next(
                    line for line in update.splitlines() if line.strip().startswith(f"W{l + 1}[{j}][{i}] ")
                )
                assert line.split()[4] == cli_fmt(value), line
    assert f"loss after   {cli_fmt(expected['loss_after'])}" in out


def cli_fmt(value):
    text = f"{value:.4f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def test_explain_sigmoid_counts_and_reasons(backend):
    out = run_fastbp(backend, "explain", SIGMOID).stdout
    assert "7 of 9 parameters changed; 2 did not:" in out
    assert "W1[0][1]   zero input: x[1] = 0" in out
    assert "W1[1][1]   zero input: x[1] = 0" in out


def test_explain_markdown_and_decimals(backend):
    result = run_fastbp(backend, "explain", SIGMOID, "--markdown", "--decimals", "6")
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("## One SGD step, explained")
    assert "| W1[0][0] | 0.500000 | -0.017235 | -0.008617 | 0.508617 | yes |" in out


def test_explain_steps_shows_the_loss_falling(backend):
    spec = load_example(SCALAR)
    steps = spec["iterate"]["steps"]
    result = run_fastbp(backend, "explain", SCALAR, "--steps", steps)
    assert result.returncode == 0
    table = result.stdout.split(f"Repeating the step: {steps} steps")[1]
    rows = [line.split() for line in table.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [int(row[0]) for row in rows] == list(range(1, steps + 1))
    before = [float(row[1]) for row in rows]
    after = [float(row[2]) for row in rows]
    assert all(b >= a for b, a in zip(before, after))  # at ~1e-32 the float64 loss stops moving
    assert all(b > a for b, a in zip(before[:40], after[:40]))
    assert before[1:] == after[:-1]
    assert after[-1] < spec["iterate"]["loss_after_50_steps_below"]

    markdown = run_fastbp(backend, "explain", SCALAR, "--steps", "3", "--markdown").stdout
    assert "### Repeating the step: 3 steps" in markdown
    assert "| step | loss before | loss after |" in markdown


@pytest.mark.parametrize("path", WORKED_EXAMPLES, ids=example_ids())
def test_diagnose_and_check_gradients_every_worked_example(path, backend):
    result = run_fastbp(backend, "diagnose", path)
    assert result.returncode == 0, result.stderr
    assert "verdict: " in result.stdout and "||dL/dW||" in result.stdout
    result = run_fastbp(backend, "check-gradients", path)
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout


def test_check_gradients_exit_status_follows_the_tolerance(backend):
    # An absurdly tight tolerance fails: the exit status says so.
    result = run_fastbp(backend, "check-gradients", SIGMOID, "--tol", "1e-300")
    assert result.returncode == 1
    assert "FAILED" in result.stdout


KINK_SPEC = {
    # relu hidden layer; on example 1, z1[0] = 1 * 1 + 1 * 0 - 1 = 0 exactly (the kink), and example 0 has
    # x[0] = 0: W1[0][0]'s two terms are both 0, and b1[0]'s central difference straddles the kink.
    "layer_sizes": [2, 2, 1],
    "activations": ["relu", "identity"],
    "loss": "half_sse",
    "lr": 0.1,
    "weights": [[[1.0, 1.0], [0.5, 0.25]], [[0.5, -0.5]]],
    "biases": [[-1.0, 0.0], [0.0]],
    "x": [[0.0, 2.0], [1.0, 0.0]],
    "y": [[1.0], [2.0]],
}


def test_check_gradients_at_a_relu_kink_passes_and_says_why(backend, tmp_path):
    path = tmp_path / "kink.json"
    path.write_text(json.dumps(KINK_SPEC))
    result = run_fastbp(backend, "check-gradients", path)
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "PASSED" in out and "FAILED" not in out
    # W1[0][0] and b1[0] move z1[0] of example 1 off the kink; W1[0][1] does not (x[1] = 0 there).
    assert "2 parameters are at a ReLU kink" in out and "relu has no derivative at z = 0" in out
    kink_table = out.split("parameter  backprop")[1]
    assert "W1[0][0]" in kink_table and "b1[0]" in kink_table and "W1[0][1]" not in kink_table
    assert "z1[0] of example 1" in kink_table


def test_explain_per_example_and_kink_reasons(backend, tmp_path):
    path = tmp_path / "kink.json"
    path.write_text(json.dumps(KINK_SPEC))
    result = run_fastbp(backend, "explain", path, "--per-example")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "b=0" in out and "b=1" in out and "gradient (sum)" in out
    assert "contributions cancel" not in out
    assert "is exactly the ReLU kink" in out
    assert "b=0" not in run_fastbp(backend, "explain", path).stdout


def test_batch_spec(backend, tmp_path):
    spec = load_example(SIGMOID)
    spec["x"] = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    spec["y"] = [[1.0], [0.0], [0.5]]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(spec))
    result = run_fastbp(backend, "explain", path)
    assert result.returncode == 0, result.stderr
    assert "examples       B = 3" in result.stdout


# --------------------------------------------------------------------------------------------------------
# Bad specs: each names the field
# --------------------------------------------------------------------------------------------------------


def mutate(**changes):
    def apply(spec):
        for key, value in changes.items():
            if value is DELETE:
                del spec[key]
            else:
                spec[key] = value
        return spec

    return apply


DELETE = object()

BAD_SPECS = {
    "missing layer_sizes": (mutate(layer_sizes=DELETE), "layer_sizes", "is missing"),
    "layer_sizes not a list": (mutate(layer_sizes="2-2-1"), "layer_sizes", "list of at least two"),
    "layer size zero": (mutate(layer_sizes=[2, 0, 1]), "layer_sizes[1]", "positive integer"),
    "layer size float": (mutate(layer_sizes=[2, 2.5, 1]), "layer_sizes[1]", "positive integer"),
    "activations too few": (mutate(activations=["sigmoid"]), "activations", "one name per layer"),
    "unknown activation": (mutate(activations=["sigmoid", "softmax"]), "activations[1]", "must be one of"),
    "unknown loss": (mutate(loss="hinge"), "loss", "must be one of"),
    "cross_entropy on sigmoid": (mutate(loss="cross_entropy"), "activations", "must end with identity"),
    "missing lr": (mutate(lr=DELETE), "lr", "is missing"),
    "negative lr": (mutate(lr=-0.5), "lr", "finite positive"),
    "lr as text": (mutate(lr="0.5"), "lr", "finite positive"),
    "weights one layer": (mutate(weights=[[[0.5, -0.3], [0.2, 0.8]]]), "weights", "2 matrices"),
    "weights wrong shape": (
        mutate(weights=[[[0.5, -0.3], [0.2, 0.8]], [[0.7, -0.5, 0.1]]]),
        "weights[1][0]",
        "2 entries",
    ),
    "weights transposed": (
        mutate(weights=[[[0.5, -0.3], [0.2, 0.8]], [[0.7], [-0.5]]]),
        "weights[1]",
        "1 entries",
    ),
    "weight is text": (
        mutate(weights=[[[0.5, "x"], [0.2, 0.8]], [[0.7, -0.5]]]),
        "weights[0][0][1]",
        "must be a number",
    ),
    "weight is null": (
        mutate(weights=[[[0.5, None], [0.2, 0.8]], [[0.7, -0.5]]]),
        "weights[0][0][1]",
        "null",
    ),
    "biases wrong length": (mutate(biases=[[0.1], [0.05]]), "biases[0]", "2 entries"),
    "missing biases": (mutate(biases=DELETE), "biases", "is missing"),
    "x wrong length": (mutate(x=[1.0, 0.0, 3.0]), "x", "2 entries"),
    "x not finite": (mutate(x=[float("nan"), 0.0]), "x[0]", "finite"),
    "y wrong length": (mutate(y=[1.0, 0.0]), "y", "1 entries"),
    "y missing": (mutate(y=DELETE), "y", "is missing"),
    "dtype unknown": (mutate(dtype="float16"), "dtype", "float64 or float32"),
    "batch y rows": (mutate(x=[[1.0, 0.0], [0.0, 1.0]], y=[1.0, 0.0]), "y[0]", "must be a list"),
}


# Spec checks run before any network exists, so they do not depend on the backend: the subprocess runs on
# the NumPy twin, and the other two subcommands run in process (a subprocess each would only cost time).
@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_bad_spec_names_the_field_and_exits_2(name, tmp_path, capsys):
    change, field, problem = BAD_SPECS[name]
    spec = change(load_example(SIGMOID))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))  # json.dumps writes NaN as NaN, which json.loads reads back
    result = run_fastbp("numpy", "explain", path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"field '{field}' " in result.stderr, result.stderr
    assert problem in result.stderr, result.stderr
    assert result.stdout == ""
    for command in ("diagnose", "check-gradients"):
        if name == "missing lr":
            continue  # only explain needs a learning rate
        assert cli.main([command, str(path), "--backend", "numpy"]) == 2
        captured = capsys.readouterr()
        assert f"field '{field}' " in captured.err and problem in captured.err
        assert captured.out == ""


def test_diagnose_does_not_need_lr(backend, tmp_path):
    spec = load_example(SIGMOID)
    del spec["lr"]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert run_fastbp(backend, "diagnose", path).returncode == 0
    assert run_fastbp(backend, "check-gradients", path).returncode == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{ not json", "is not valid JSON"),
        ("[1, 2, 3]", "must hold a JSON object"),
        ("", "is not valid JSON"),
    ],
)
def test_unreadable_spec_files(content, message, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(content)
    result = run_fastbp("numpy", "explain", path)
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_file_and_binary_file(tmp_path):
    backend = "numpy"
    result = run_fastbp(backend, "explain", tmp_path / "nowhere.json")
    assert result.returncode == 2 and "cannot read" in result.stderr
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    result = run_fastbp(backend, "explain", binary)
    assert result.returncode == 2 and "UTF-8" in result.stderr
    result = run_fastbp(backend, "explain", tmp_path)  # a directory
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate", str(SIGMOID)],
        ["explain"],
        ["explain", str(SIGMOID), "--steps", "0"],
        ["explain", str(SIGMOID), "--steps", "many"],
        ["explain", str(SIGMOID), "--decimals", "-1"],
        ["explain", str(SIGMOID), "--unknown"],
        ["check-gradients", str(SIGMOID), "--eps", "0"],
        ["diagnose", str(SIGMOID), "--backend", "fortran"],
    ],
)
def test_bad_arguments_exit_2(args):
    result = run_fastbp("numpy", *args)
    assert result.returncode == 2
    assert "usage: fastbp" in result.stderr


def test_help_and_version(backend):
    result = run_fastbp(backend, "--help")
    assert result.returncode == 0
    for command in ("explain", "diagnose", "check-gradients", "demo"):
        assert command in result.stdout
    result = run_fastbp(backend, "--version")
    assert result.returncode == 0 and result.stdout.startswith("fastbp ")


# --------------------------------------------------------------------------------------------------------
# In process: main() returns the status; demo forwards its arguments
# --------------------------------------------------------------------------------------------------------


def test_main_in_process(capsys):
    assert cli.main(["explain", str(SIGMOID)]) == 0
    assert "7 of 9 parameters changed" in capsys.readouterr().out
    assert cli.main(["explain"]) == 2
    assert cli.main(["--help"]) == 0
    capsys.readouterr()


def test_demo_is_forwarded(monkeypatch):
    import fastbp.demo

    seen = []
    monkeypatch.setattr(fastbp.demo, "main", lambda argv=None: seen.append(argv) or 0)
    assert cli.main(["demo", "--epochs", "1", "--help"]) == 0
    assert seen == [["--epochs", "1", "--help"]]
    monkeypatch.setattr(fastbp.demo, "main", lambda argv=None: 1)
    assert cli.main(["demo"]) == 1


def test_console_script_when_installed(backend):
    """``pip install`` puts a ``fastbp`` script beside the interpreter (pyproject: fastbp = fastbp.cli:main)."""
    script = pathlib.Path(sys.executable).parent / "fastbp"
    if not script.exists():
        pytest.skip("fastbp is not installed as a console script in this environment")
    env = dict(os.environ, FASTBP_BACKEND=backend)
    result = subprocess.run(
        [str(script), "explain", str(SIGMOID)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "7 of 9 parameters changed" in result.stdout
