"""The distributed recipe: GridSearchCV over fastbp estimators, fanned out by joblib's dask backend.

The test starts a ``dask.distributed.LocalCluster`` of two worker processes bound to the loopback interface
only, runs a small grid search on it, and checks it finds what the same search finds in-process. Pointing the
same code at a real cluster only changes the ``Client`` line (see the README, "Ecosystem").
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
distributed = pytest.importorskip("dask.distributed")
joblib = pytest.importorskip("joblib")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fastbp.sklearn import MLPClassifier  # noqa: E402

GRID = {
    "mlpclassifier__hidden_layer_sizes": [(8,), (32,)],
    "mlpclassifier__learning_rate_init": [1e-4, 0.02],
}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",  # scheduler and workers listen on loopback only
        dashboard_address=None,  # no HTTP dashboard
        silence_logs=logging.ERROR,
    ) as local_cluster:
        yield local_cluster


def _search(backend, n_jobs):
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    model = make_pipeline(StandardScaler(), MLPClassifier(max_iter=15, random_state=0, backend=backend))
    search = GridSearchCV(model, GRID, cv=3, n_jobs=n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return search.fit(X, y)


def test_grid_search_on_a_dask_cluster(cluster, backend):
    for address in [cluster.scheduler_address, *(w.worker_address for w in cluster.workers.values())]:
        assert address.startswith("tcp://127.0.0.1:"), address

    with distributed.Client(cluster) as client:
        with joblib.parallel_backend("dask"):
            distributed_search = _search(backend, n_jobs=-1)  # -1: every dask worker
        # the fits ran on the workers: each worker process has imported fastbp
        imported = client.run(lambda: __import__("sys").modules.get("fastbp.sklearn") is not None)
        assert len(imported) == 2 and all(imported.values())

    local_search = _search(backend, n_jobs=1)  # the same search, in this process
    assert distributed_search.best_params_ == local_search.best_params_
    assert distributed_search.best_params_["mlpclassifier__learning_rate_init"] == 0.02
    # Each fit is deterministic given random_state, so the scores agree wherever they were computed.
    np.testing.assert_allclose(
        distributed_search.cv_results_["mean_test_score"], local_search.cv_results_["mean_test_score"],
        rtol=1e-12,
    )
    assert distributed_search.best_score_ > 0.6  # chance is 0.1
