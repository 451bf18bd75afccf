"""scikit-learn's own MLP test file, run against fastbp.sklearn with only the import changed.

The installed scikit-learn's ``sklearn/neural_network/tests/test_mlp.py`` (the wheel ships it, so the suite
follows the scikit-learn version) is copied to a temporary directory with its import of
``MLPClassifier``/``MLPRegressor`` rewritten to fastbp's, and run by pytest in a subprocess. The cases that
reach into scikit-learn's private functions are skipped, each with the reason; every other case must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

import fastbp  # noqa: E402

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
REPLACEMENT = "from fastbp.sklearn import MLPClassifier, MLPRegressor"

# Cases that call scikit-learn's private functions (not a behaviour of the estimator): skipped.
PRIVATE = {
    "test_gradient": "calls scikit-learn's private MLP._loss_grad_lbfgs with scikit-learn's internal buffers "
                     "(fastbp's gradient is checked against scikit-learn's in tests/test_sklearn.py)",
}



# scikit-learn's conftest provides the global_random_seed fixture (42 unless SKLEARN_TESTS_GLOBAL_RANDOM_SEED
# says otherwise); the copied file runs outside scikit-learn's tree, so this one stands in for it.
CONFTEST = '''
import os
import pytest

SKIP = {skip!r}


@pytest.fixture
def global_random_seed():
    return int(os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED", "42").split("-")[0])


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = SKIP.get(item.originalname)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
'''


def _source():
    from sklearn.neural_network import tests as mlp_tests

    path = Path(mlp_tests.__file__).parent / "test_mlp.py"
    if not path.exists():  # pragma: no cover - a scikit-learn build without its tests
        pytest.skip(f"scikit-learn's test_mlp.py is not installed ({path})")
    return path.read_text()


def test_rewritten_file_imports_fastbp():
    source = _source()
    assert source.count(IMPORT) == 1, "scikit-learn's test_mlp.py no longer imports the estimators in one line"
    rewritten = source.replace(IMPORT, REPLACEMENT)
    assert "sklearn.neural_network import MLP" not in rewritten


def test_sklearn_test_mlp_passes_against_fastbp(tmp_path):
    (tmp_path / "test_mlp_fastbp.py").write_text(_source().replace(IMPORT, REPLACEMENT))
    (tmp_path / "conftest.py").write_text(CONFTEST.format(skip=PRIVATE))
    root = str(Path(fastbp.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The file's networks and batches are tiny: BLAS threads only hand work to each other there, and on a
    # busy machine they make the run many times slower (results do not depend on the thread count).
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-W",
         "ignore::DeprecationWarning", "--rootdir", str(tmp_path), str(tmp_path / "test_mlp_fastbp.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert result.returncode == 0, f"scikit-learn's test_mlp.py failed against fastbp: {summary}\n{output[-6000:]}"
    # The run really used fastbp's classes, and skipped only what is listed above (and the cases that need
    # pandas when it is not installed).
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 50, summary
    skipped = re.findall(r"^SKIPPED \[\d+\] (.*)$", output, flags=re.MULTILINE)
    for line in skipped:
        assert "pandas" in line or any(reason in line for reason in PRIVATE.values()), line
