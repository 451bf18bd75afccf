"""The ``fastbp`` command (also ``python -m fastbp``).

Subcommands::

    fastbp explain SPEC.json [--markdown] [--steps N] [--decimals D] [--per-example] [--backend NAME]
    fastbp diagnose SPEC.json [--backend NAME]
    fastbp check-gradients SPEC.json [--eps EPS] [--tol TOL] [--backend NAME]
    fastbp demo [demo options]

SPEC.json holds the fields of the shared worked examples: ``layer_sizes``, ``activations``, ``loss``, ``lr``
(explain only), ``weights`` (per layer, shape ``(out, in)``), ``biases``, ``x`` (one example or a list of
examples) and ``y``; optionally ``dtype`` (``"float64"`` or ``"float32"``). Other fields (``name``, ``about``,
``expected``, ...) are ignored. A bad spec gets a message naming the field and what is wrong, and exit
status 2 (as for bad command-line arguments).

Exit status: 0 success; 1 ``check-gradients`` failed (or the demo failed); 2 bad arguments or spec.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
from typing import Any, List, Optional

import numpy as np

from fastbp._spec import ACTIVATIONS, LOGIT_LOSSES, LOSSES
from fastbp._text import Table, percent

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# A spec holds a small network's parameters as JSON text: far below this. The limit is checked on the opened
# file before reading, and reads stop there, so /dev/zero or a huge file cannot take the machine's memory.
MAX_SPEC_BYTES = 64 * 2**20
MAX_LAYER_SIZE = 2**31 - 1  # a spec lists every weight, so far less fits in MAX_SPEC_BYTES anyway


class SpecError(ValueError):
    """A problem with one field of a spec file."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------------------------------------
# Reading and checking a spec
# --------------------------------------------------------------------------------------------------------


class SpecFileError(ValueError):
    """The spec file cannot be read as a spec (not a regular file, too large)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """``math.isfinite`` that says False for an int beyond float's range instead of raising OverflowError."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value, limit: int = 60) -> str:
    text = str(value) if isinstance(value, int) and value.bit_length() < 200 else repr(value)
    if isinstance(value, int) and value.bit_length() >= 200:
        text = f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return _short(value)


def _numbers(value, field: str, shape: tuple, shape_words: str) -> np.ndarray:
    """Check that ``value`` is nested lists of finite numbers of exactly ``shape``; return it as float64."""

    def walk(item, depth, where):
        if depth == len(shape):
            if not _is_number(item):
                raise SpecError(where, f"must be a number; got {_describe(item)}")
            if not _is_finite(item):
                raise SpecError(where, f"must be finite (and within float range); got {_short(item)}")
            return
        if not isinstance(item, list):
            raise SpecError(where, f"must be a list of {shape[depth]} ({shape_words}); got {_describe(item)}")
        if len(item) != shape[depth]:
            raise SpecError(where, f"must have {shape[depth]} entries ({shape_words}); got {len(item)}")
        for index, sub in enumerate(item):
            walk(sub, depth + 1, f"{where}[{index}]")

    walk(value, 0, field)
    return np.array(value, dtype=np.float64).reshape(shape)


def _depth(value) -> int:
    depth = 0
    while isinstance(value, list) and value:
        value = value[0]
        depth += 1
    return depth


def read_spec_text(path: str) -> str:
    """The spec file's text, read through the same guard as ``Network.load``.

    The file is opened without blocking (a FIFO would block for ever), the opened descriptor must be a
    regular file (not ``/dev/zero``, a FIFO or a directory) of at most ``MAX_SPEC_BYTES``, and at most that
    many bytes are read. Raises ``SpecFileError``, ``OSError`` or ``UnicodeDecodeError``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except IsADirectoryError:
        raise SpecFileError("is a directory, not a spec file") from None
    except ValueError as error:  # an embedded NUL character
        raise SpecFileError(f"is not a valid file name ({error})") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise SpecFileError("is not a regular file (a device, FIFO, socket or directory), so not a spec file")
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecFileError(f"is {info.st_size} bytes, larger than a spec may be ({MAX_SPEC_BYTES})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        data = handle.read(MAX_SPEC_BYTES + 1)  # the file may grow after the check
    if len(data) > MAX_SPEC_BYTES:
        raise SpecFileError(f"is larger than a spec may be ({MAX_SPEC_BYTES} bytes)")
    return data.decode("utf-8")


def load_spec(path: str, *, need_lr: bool) -> dict:
    """Read and check a spec file; return a dict of checked values.

    Raises ``SpecError``, ``SpecFileError``, ``OSError`` or ``UnicodeDecodeError``.
    """
    text = read_spec_text(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(
            "(file)", f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise SpecError("(file)", "nests lists or objects too deeply to be a spec") from None
    except ValueError as error:  # an integer of more digits than int() converts (sys.get_int_max_str_digits)
        raise SpecError("(file)", f"is not a valid spec: {error}") from None
    if not isinstance(raw, dict):
        raise SpecError("(file)", f"must hold a JSON object with the spec fields; got {_describe(raw)}")

    def required(name):
        if name not in raw:
            raise SpecError(name, "is missing")
        return raw[name]

    sizes = required("layer_sizes")
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise SpecError(
            "layer_sizes",
            f"must be a list of at least two positive integers such as [2, 2, 1]; got {_describe(sizes)}",
        )
    for index, size in enumerate(sizes):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpecError(f"layer_sizes[{index}]", f"must be a positive integer; got {_describe(size)}")
        if size > MAX_LAYER_SIZE:
            raise SpecError(f"layer_sizes[{index}]", f"must be at most {MAX_LAYER_SIZE}; got {_describe(size)}")
    n_layers = len(sizes) - 1

    activations = required("activations")
    if isinstance(activations, str):
        activations = [activations] * n_layers
    if not isinstance(activations, list):
        raise SpecError(
            "activations", f"must be a name or a list of {n_layers} names; got {_describe(activations)}"
        )
    if len(activations) != n_layers:
        raise SpecError(
            "activations",
            f"must have one name per layer: {n_layers} for layer_sizes {sizes}; got {len(activations)}",
        )
    for index, name in enumerate(activations):
        if name not in ACTIVATIONS:
            raise SpecError(
                f"activations[{index}]", f"must be one of {', '.join(ACTIVATIONS)}; got {_describe(name)}"
            )

    loss = required("loss")
    if loss not in LOSSES:
        raise SpecError("loss", f"must be one of {', '.join(LOSSES)}; got {_describe(loss)}")
    if loss in LOGIT_LOSSES and activations[-1] != "identity":
        raise SpecError(
            "activations",
            f"must end with identity for loss {loss} (the outputs are logits); got {activations[-1]!r}",
        )

    dtype = raw.get("dtype", "float64")
    if dtype not in ("float64", "float32"):
        raise SpecError("dtype", f"must be float64 or float32; got {_describe(dtype)}")

    lr: Any = raw.get("lr")
    if need_lr or "lr" in raw:
        if "lr" not in raw:
            raise SpecError("lr", "is missing (the learning rate of the step)")
        if not _is_number(lr) or not _is_finite(lr) or lr <= 0:
            raise SpecError("lr", f"must be a finite positive number; got {_describe(lr)}")
        lr = float(lr)

    weights_raw = required("weights")
    if not isinstance(weights_raw, list) or len(weights_raw) != n_layers:
        raise SpecError(
            "weights",
            f"must be a list of {n_layers} matrices, one per layer; got {_describe(weights_raw)}",
        )
    weights = [
        _numbers(
            weights_raw[l],
            f"weights[{l}]",
            (sizes[l + 1], sizes[l]),
            f"layer {l + 1}: {sizes[l + 1]} row{'s' if sizes[l + 1] != 1 else ''} of {sizes[l]}, layout (out, in)",
        )
        for l in range(n_layers)
    ]
    biases_raw = required("biases")
    if not isinstance(biases_raw, list) or len(biases_raw) != n_layers:
        raise SpecError(
            "biases", f"must be a list of {n_layers} vectors, one per layer; got {_describe(biases_raw)}"
        )
    biases = [
        _numbers(biases_raw[l], f"biases[{l}]", (sizes[l + 1],), f"one per neuron of layer {l + 1}")
        for l in range(n_layers)
    ]

    x_raw = required("x")
    batch = isinstance(x_raw, list) and len(x_raw) > 0 and isinstance(x_raw[0], list)
    if batch:
        x = _numbers(x_raw, "x", (len(x_raw), sizes[0]), f"examples of {sizes[0]} inputs")
    else:
        x = _numbers(x_raw, "x", (sizes[0],), f"one per input; layer_sizes[0] = {sizes[0]}")
    n_examples = x.shape[0] if batch else 1

    y_raw = required("y")
    classes = loss == "cross_entropy" and (
        (not batch and isinstance(y_raw, int) and not isinstance(y_raw, bool))
        or (
            batch
            and isinstance(y_raw, list)
            and _depth(y_raw) == 1
            and all(isinstance(v, int) and not isinstance(v, bool) for v in y_raw)
        )
    )
    if classes:
        indices = y_raw if batch else [y_raw]
        if len(indices) != n_examples:
            raise SpecError("y", f"must hold one class index per example ({n_examples}); got {len(indices)}")
        for index, value in enumerate(indices):
            if not 0 <= value < sizes[-1]:  # checked as Python ints: a 400-digit index must not overflow
                where = f"y[{index}]" if batch else "y"
                raise SpecError(where, f"class indices must be in 0 .. {sizes[-1] - 1}; got {_short(value)}")
        y = np.array(y_raw, dtype=np.int64)
    elif batch:
        y = _numbers(y_raw, "y", (n_examples, sizes[-1]), f"one row of {sizes[-1]} targets per example of x")
    else:
        y = _numbers(y_raw, "y", (sizes[-1],), f"one per output; layer_sizes[-1] = {sizes[-1]}")

    return {
        "name": raw.get("name") if isinstance(raw.get("name"), str) else os.path.basename(path),
        "layer_sizes": sizes,
        "activations": activations,
        "loss": loss,
        "dtype": dtype,
        "lr": lr,
        "weights": weights,
        "biases": biases,
        "x": x,
        "y": y,
    }


def build_network(spec: dict, backend: Optional[str] = None):
    """A Network with the spec's architecture and parameters."""
    import fastbp

    kwargs = {"loss": spec["loss"], "dtype": spec["dtype"]}
    if backend is not None:
        kwargs["backend"] = backend
    net = fastbp.Network(spec["layer_sizes"], spec["activations"], **kwargs)
    net.set_params(spec["weights"], spec["biases"])
    return net


# --------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------


def _loss_text(value: float, decimals: int) -> str:
    # Significant digits, not fixed decimals: the loss falls by orders of magnitude over the steps.
    return f"{value:.{max(decimals, 1)}g}"


def _run_explain(args) -> int:
    import fastbp

    spec = load_spec(args.spec, need_lr=True)
    net = build_network(spec, args.backend)
    report = fastbp.explain_step(net, spec["x"], spec["y"], spec["lr"], decimals=args.decimals,
                                 per_example=args.per_example)
    print(report.to_markdown() if args.markdown else report.render(), end="")
    if args.steps > 1:
        rows = [(1, report.loss_before, report.loss_after)]
        optimizer = fastbp.SGD(net, spec["lr"])
        for step in range(2, args.steps + 1):
            gradients = net.gradients(spec["x"], spec["y"])
            optimizer.step(gradients)
            rows.append((step, gradients.loss, net.loss(spec["x"], spec["y"])))
        first, last = rows[0][1], rows[-1][2]
        change = None if first == 0 else 100.0 * (last - first) / first
        title = f"Repeating the step: {args.steps} steps"
        headers = ["step", "loss before", "loss after"]
        body = [
            [str(step), _loss_text(before, args.decimals), _loss_text(after, args.decimals)]
            for step, before, after in rows
        ]
        summary = f"loss {_loss_text(first, args.decimals)} -> {_loss_text(last, args.decimals)} ({percent(change)})"
        table = Table(headers, body, [True, True, True])
        if args.markdown:
            lines = ["", f"### {title}", ""] + table.markdown() + ["", summary]
        else:
            lines = ["", title, "-" * len(title)] + table.text() + ["", summary]
        print("\n".join(lines))
    return EXIT_OK


def _run_diagnose(args) -> int:
    import fastbp

    spec = load_spec(args.spec, need_lr=False)
    net = build_network(spec, args.backend)
    print(fastbp.diagnose(net, spec["x"], spec["y"]), end="")
    return EXIT_OK


def _run_check_gradients(args) -> int:
    import fastbp

    spec = load_spec(args.spec, need_lr=False)
    net = build_network(spec, args.backend)
    result = fastbp.check_gradients(net, spec["x"], spec["y"], eps=args.eps)
    print(result, end="")
    if args.tol is not None:
        passed = result.passed(args.tol)
        print(f"with --tol {args.tol:g}: {'PASSED' if passed else 'FAILED'}")
    else:
        passed = result.passed()
    return EXIT_OK if passed else EXIT_FAILED


def _run_demo(argv: List[str]) -> int:
    from fastbp import demo  # written separately; imported only when asked for

    status = demo.main(argv)
    return EXIT_OK if status is None else int(status)


# --------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------


MAX_STEPS = 100_000  # --steps prints one table row per step


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text[:40]!r}") from None
    if not 1 <= value <= MAX_STEPS:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_STEPS}; got {shown}")
    return value


def _decimals(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 17; got {text[:40]!r}") from None
    if not 0 <= value <= 17:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 17; got {text[:40]}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text[:40]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number; got {text[:40]}")
    return value


def _parser() -> argparse.ArgumentParser:
    from fastbp._version import __version__

    parser = argparse.ArgumentParser(
        prog="fastbp",
        description="Explain, diagnose and check small multilayer perceptrons described by a JSON spec.",
        epilog="SPEC.json fields: layer_sizes, activations, loss, lr (explain), weights, biases, x, y "
        "(as in the shared worked examples); optional dtype.",
    )
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def add(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("spec", metavar="SPEC.json", help="the network, parameters, example and target")
        sub.add_argument(
            "--backend",
            choices=["cython", "numpy"],
            default=None,
            help="backend (default: fastbp.BACKEND, set by FASTBP_BACKEND)",
        )
        return sub

    explain = add("explain", "print one SGD step with every number: forward, backward, update, check")
    explain.add_argument(
        "--markdown", action="store_true", help="print Markdown tables instead of plain text"
    )
    explain.add_argument(
        "--steps",
        type=_positive_int,
        default=1,
        metavar="N",
        help="repeat the step N times and show the loss falling (default 1)",
    )
    explain.add_argument(
        "--decimals", type=_decimals, default=4, metavar="D", help="decimals shown (default 4)"
    )
    explain.add_argument(
        "--per-example",
        action="store_true",
        help="for a mini-batch, show each example's term of every gradient sum",
    )

    add("diagnose", "dead and saturated units, weight and gradient norms, vanishing/exploding verdict")

    check = add("check-gradients", "compare backprop's gradients with central differences (float64)")
    check.add_argument(
        "--eps", type=_positive_float, default=1e-6, help="finite-difference step (default 1e-6)"
    )
    check.add_argument(
        "--tol",
        type=_positive_float,
        default=None,
        help="largest relative error that passes (default 1e-5 for float64, 1e-3 for float32)",
    )

    commands.add_parser(
        "demo",
        help="train on the bundled digits and replay a worked example (fastbp demo --help)",
        add_help=False,
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``fastbp`` command; return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when ``check-gradients`` fails, 2 for bad arguments or a bad spec.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return _run_demo(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits 2 on bad arguments, 0 for --help/--version
        return int(exit_request.code or 0) if not isinstance(exit_request.code, str) else EXIT_USAGE
    handlers = {"explain": _run_explain, "diagnose": _run_diagnose, "check-gradients": _run_check_gradients}
    try:
        return handlers[args.command](args)
    except SpecFileError as error:
        print(f"fastbp {args.command}: cannot read {args.spec}: it {error}", file=sys.stderr)
        return EXIT_USAGE
    except SpecError as error:
        print(f"fastbp {args.command}: {args.spec}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if isinstance(error, BrokenPipeError):
            _silence_stdout()
            return EXIT_OK
        print(f"fastbp {args.command}: cannot read {args.spec}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError as error:
        print(f"fastbp {args.command}: {args.spec}: not a UTF-8 text file ({error.reason})", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as error:
        # The spec passed the checks here but the library refused it: the spec's fault, still no traceback.
        print(f"fastbp {args.command}: {args.spec}: invalid spec: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OverflowError, RecursionError, MemoryError) as error:
        # Whatever the checks above missed in a hostile spec: a message, never a traceback.
        print(f"fastbp {args.command}: {args.spec}: invalid spec ({type(error).__name__}: {error})",
              file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as error:
        print(f"fastbp {args.command}: {args.spec}: the computation overflowed: {error}", file=sys.stderr)
        return EXIT_FAILED


def _silence_stdout() -> None:
    # After a closed pipe (`fastbp explain spec.json | head`), keep Python's exit flush from failing again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
