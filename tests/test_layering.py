"""The package's rooms: which module may import which, no import circle, no hidden function-level imports.

Read from the source with ``ast`` (nothing is imported), so a violation is reported with file and line.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fastbp"

# Optional heavy dependencies that a function may import lazily on purpose.
LAZY_ALLOWED = {"torch", "matplotlib", "tqdm", "sklearn", "threadpoolctl", "scipy"}

# Modules that must not import these (the arrow points the other way).
FORBIDDEN = {
    "_training": {"network"},
    "_io": {"network"},
    "_torch_interop": {"network"},
    "optimizers": {"network"},
    "_results": {"network", "_training"},
    "_validation": {"network", "_training"},
    "_metrics": {"network", "_training"},
    "gradcheck": {"diagnostics", "explain"},
    # The reports read what Network.trace computed; they never reach for a backend or the model.
    "explain": {"network", "_reference", "_backend", "_training"},
    "_explain_data": {"network", "_reference", "_backend", "_training", "optimizers", "explain"},
    "_explain_reasons": {"network", "_reference", "_backend", "_training", "optimizers", "explain",
                         "_explain_data", "_explain_render"},
    "_explain_render": {"network", "_reference", "_backend", "_training", "optimizers", "explain",
                        "_explain_data"},
    "diagnostics": {"network", "_reference", "_backend", "_training", "explain"},
    "_text": {"network", "_reference", "_backend", "_training", "_spec", "_results"},
}

# Function-level imports of the package's own modules that remain in files other branches own
# (cli.py: the command imports the package only for the subcommand that needs it, so that `fastbp --help`
# and argument errors stay quick); each entry is (file, imported module).
KNOWN_LOCAL_IMPORTS = {
    ("cli.py", "fastbp"), ("cli.py", "fastbp.demo"), ("cli.py", "fastbp._version"),
}


def _own_module(node, path):
    """The fastbp module names an import statement brings in (absolute or relative)."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names if alias.name.split(".")[0] == "fastbp"]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = "fastbp" + ("." + node.module if node.module else "")
        elif node.module and node.module.split(".")[0] == "fastbp":
            base = node.module
        else:
            return []
        if base == "fastbp":
            names = ["fastbp." + alias.name for alias in node.names]
            names = [name if (PACKAGE / (name.split(".")[1] + ".py")).exists() else "fastbp" for name in names]
        else:
            names = [base]
    return names


def _imports():
    top, local = {}, []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = path.stem
        top[module] = set()
        for node in tree.body:
            for name in _own_module(node, path):
                top[module].add(name.split(".")[1] if "." in name else "__init__")
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    for name in _own_module(node, path):
                        local.append((path.name, name, node.lineno))
    return top, local


def test_no_function_level_import_of_the_package_itself():
    _, local = _imports()
    found = [(file, name, line) for file, name, line in local if (file, name) not in KNOWN_LOCAL_IMPORTS]
    assert not found, f"function-level imports of fastbp's own modules: {found}"


def test_no_import_circle():
    top, _ = _imports()
    top.pop("__init__", None)
    graph = {module: {target for target in targets if target in top} for module, targets in top.items()}
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_rooms_import_only_downwards(module):
    top, local = _imports()
    imported = top[module] | {name.split(".")[1] for file, name, _ in local if file == module + ".py" and "." in name}
    assert not (imported & FORBIDDEN[module]), f"{module} imports {sorted(imported & FORBIDDEN[module])}"


# The report modules (explain and its parts, diagnostics, the text tables) hold no math of their own: every
# activation, derivative, loss gradient and delta they show comes from Network.trace (fastbp._results.Trace),
# whose one home for formulas is fastbp._spec.
REPORT_MODULES = ("explain", "_explain_data", "_explain_reasons", "_explain_render", "diagnostics", "_text")
# What a report may take from _spec: codes, and the probability maps (the check compares the probabilities
# that predict_proba gives). Not the formula tables (ACTIVATION_FUNCTIONS, DERIVATIVES_FROM_OUTPUT,
# LOSS_FUNCTIONS, softmax, sigmoid, ...).
SPEC_NAMES_FOR_REPORTS = {"ACTIVATIONS", "LOSSES", "LOGIT_LOSSES", "PROBABILITY_MAPS"}
# Elementwise math that an activation, its derivative or a loss is made of.
FORMULA_FUNCTIONS = {"exp", "expm1", "log", "log1p", "tanh", "maximum", "minimum", "clip", "where", "sign"}
# (module, function) pairs allowed anyway, each with its reason.
FORMULA_ALLOWED = {
    ("_explain_data", "exp"),  # the check compares the Poisson rate exp(output) with the target
}


def _spec_names_used(tree):
    """Names a module takes from fastbp._spec: ``from fastbp._spec import X`` and ``_spec.X``."""
    names, aliases = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "fastbp._spec":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "fastbp":
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "_spec"}
        elif isinstance(node, ast.Import):
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "fastbp._spec"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            names.add(node.attr)
    return names


def _derivative_shapes(tree):
    """Lines that write an activation derivative from the output: ``a * (1 - a)``, ``1 - a * a``,
    ``(a > 0)`` turned into numbers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for one, other in ((node.left, node.right), (node.right, node.left)):
                if (isinstance(other, ast.BinOp) and isinstance(other.op, ast.Sub)
                        and isinstance(other.left, ast.Constant) and other.left.value == 1
                        and ast.dump(other.right) == ast.dump(one)):
                    found.append(node.lineno)
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and isinstance(node.left, ast.Constant)
                and node.left.value == 1 and isinstance(node.right, ast.BinOp)
                and isinstance(node.right.op, ast.Mult) and ast.dump(node.right.left) == ast.dump(node.right.right)):
            found.append(node.lineno)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "astype"
                and isinstance(node.func.value, ast.Compare)):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_reports_read_the_trace_and_hold_no_formula(module):
    path = PACKAGE / (module + ".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    spec_names = _spec_names_used(tree)
    assert spec_names <= SPEC_NAMES_FOR_REPORTS, (
        f"{module} takes {sorted(spec_names - SPEC_NAMES_FOR_REPORTS)} from _spec: read it from the Trace")
    references = sorted({(node.lineno, node.attr) for node in ast.walk(tree)
                         if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                         and node.value.id in ("np", "numpy") and node.attr in FORMULA_FUNCTIONS
                         and (module, node.attr) not in FORMULA_ALLOWED})
    assert not references, f"{module} computes elementwise math (line, function): {references}"
    assert not _derivative_shapes(tree), f"{module} writes a derivative at lines {_derivative_shapes(tree)}"


def test_the_formula_check_can_fail():
    source = "import numpy as np\nfrom fastbp._spec import DERIVATIVES_FROM_OUTPUT\nd = a * (1 - a)\ne = 1 - a * a\n"
    tree = ast.parse(source)
    assert _spec_names_used(tree) == {"DERIVATIVES_FROM_OUTPUT"}
    assert _derivative_shapes(tree) == [3, 4]
    assert _derivative_shapes(ast.parse("r = (a > 0).astype(a.dtype)")) == [1]
    assert _spec_names_used(ast.parse("from fastbp import _spec\ny = _spec.softmax(z)")) == {"softmax"}


def test_init_has_no_lazy_attribute_table():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)
    import fastbp
    from fastbp import diagnostics, gradcheck
    assert fastbp.check_gradients is gradcheck.check_gradients is diagnostics.check_gradients
    assert fastbp.diagnose is diagnostics.diagnose


def test_io_hands_back_plain_data(tmp_path):
    import numpy as np

    import fastbp
    from fastbp import _io
    net = fastbp.Network([3, 4, 2], ["relu", "identity"], loss="cross_entropy", dtype="float32", seed=0)
    net.save(tmp_path / "m.npz")
    config, params = _io.load(tmp_path / "m.npz")
    assert config == {"layer_sizes": [3, 4, 2], "activations": ["relu", "identity"], "loss": "cross_entropy",
                      "dtype": "float32"}
    assert type(params) is np.ndarray and params.dtype == np.float32
    np.testing.assert_array_equal(params, net.params)


def test_copy_converts_the_dtype_and_is_independent():
    import numpy as np

    import fastbp
    net = fastbp.Network([3, 4, 2], "tanh", seed=0, backend="numpy")
    same, narrow = net.copy(), net.copy(dtype="float32")
    assert same.backend == narrow.backend == "numpy" and narrow.dtype == np.float32
    np.testing.assert_array_equal(same.params, net.params)
    np.testing.assert_array_equal(narrow.params, net.params.astype(np.float32))
    same.params[0] += 1
    assert same.params[0] != net.params[0]
    with pytest.raises(ValueError, match="dtype"):
        net.copy(dtype="float16")
