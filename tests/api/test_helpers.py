"""Everyday helpers: predict_proba, predict_classes, evaluate, fit(metrics=...), callbacks, progress, plot.

Truth comes from scikit-learn's metrics, SciPy's softmax and hand-written expectations.
"""

import io
import sys

import numpy as np
import pytest
from scipy.special import softmax

import fastbp

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _classifier(backend, dtype="float64", seed=0):
    return fastbp.Network([4, 6, 3], ["tanh", "identity"], loss="cross_entropy", dtype=dtype, seed=seed,
                          backend=backend)


def _regressor(backend, n_out=2, seed=0):
    return fastbp.Network([4, 5, n_out], ["sigmoid", "identity"], loss="mse", seed=seed, backend=backend)


def _data(n=40, seed=1, n_out=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, rng.integers(0, n_out, size=n), rng.normal(size=(n, n_out))


def test_predict_proba_is_softmax_of_the_logits(backend, dtype):
    net = _classifier(backend, dtype)
    X, _, _ = _data()
    probabilities = net.predict_proba(X)
    expected = softmax(net.predict(X).astype(np.float64), axis=1)
    tolerance = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(probabilities, expected, rtol=tolerance, atol=tolerance)
    assert probabilities.dtype == net.dtype
    np.testing.assert_allclose(net.predict_proba(X[0]), expected[0], rtol=tolerance, atol=tolerance)


def test_predict_proba_survives_huge_logits(backend):
    net = fastbp.Network([1, 2], "identity", loss="cross_entropy", backend=backend)
    net.set_params([[[1e300], [-1e300]]], [[0.0, 0.0]])
    np.testing.assert_array_equal(net.predict_proba([[1.0]]), [[1.0, 0.0]])


def test_predict_classes_is_the_largest_logit(backend):
    net = _classifier(backend)
    X, _, _ = _data()
    np.testing.assert_array_equal(net.predict_classes(X), np.argmax(net.predict(X), axis=1))
    assert net.predict_classes(X[3]) == int(np.argmax(net.predict(X[3])))


@pytest.mark.parametrize("method", ["predict_proba", "predict_classes"])
def test_probability_helpers_name_the_loss_of_a_regressor(method, backend):
    net = _regressor(backend)
    with pytest.raises(ValueError, match="'mse'"):
        getattr(net, method)(np.zeros((2, 4)))


def test_evaluate_classifier_matches_sklearn(backend):
    net = _classifier(backend)
    X, y, _ = _data()
    result = net.evaluate(X, y)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == net.loss(X, y)
    assert result["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, net.predict_classes(X)), abs=0)
    assert result["loss"] == pytest.approx(sklearn_metrics.log_loss(y, net.predict_proba(X), labels=[0, 1, 2]),
                                           rel=1e-12)


def test_evaluate_regressor_r2_matches_sklearn(backend):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    result = net.evaluate(X, Y, metrics=["r2", "loss"])
    assert list(result) == ["loss", "r2"]  # the loss always, first
    assert result["r2"] == pytest.approx(sklearn_metrics.r2_score(Y, net.predict(X)), rel=1e-12, abs=1e-12)
    assert result["loss"] == net.loss(X, Y)


def test_r2_of_a_constant_target_follows_sklearn(backend):
    net = fastbp.Network([1, 1], "identity", backend=backend)
    net.set_params([[[0.0]]], [[2.0]])
    X = np.arange(5.0).reshape(-1, 1)
    assert net.evaluate(X, np.full(5, 2.0), metrics=["r2"])["r2"] == sklearn_metrics.r2_score(np.full(5, 2.0),
                                                                                              net.predict(X))
    assert net.evaluate(X, np.full(5, 3.0), metrics=["r2"])["r2"] == sklearn_metrics.r2_score(np.full(5, 3.0),
                                                                                              net.predict(X))


@pytest.mark.parametrize("metrics, match", [(["accurcy"], "did you mean 'accuracy'"), (["r2"], "regression"),
                                            ("f1", "one of"), (3, "list")])
def test_evaluate_rejects_bad_metrics(metrics, match, backend):
    net = _classifier(backend)
    X, y, _ = _data()
    with pytest.raises((ValueError, TypeError), match=match):
        net.evaluate(X, y, metrics=metrics)
    with pytest.raises((ValueError, TypeError), match=match):
        net.fit(X, y, metrics=metrics)


def test_fit_records_metrics_per_epoch(backend):
    net = _classifier(backend)
    X, y, _ = _data(60)
    reference = net.copy()
    history = net.fit(X[:40], y[:40], epochs=3, batch_size=8, seed=3, metrics=["accuracy"],
                      validation_data=(X[40:], y[40:]))
    assert len(history.metrics["accuracy"]) == len(history.metrics["val_accuracy"]) == 3
    assert history.metrics["accuracy"][-1] == net.evaluate(X[:40], y[:40], metrics=["accuracy"])["accuracy"]
    assert history.metrics["val_accuracy"][-1] == net.evaluate(X[40:], y[40:])["accuracy"]
    assert history.val_loss[-1] == net.loss(X[40:], y[40:])
    # Metrics only observe: the same training without them reaches the same parameters.
    reference.fit(X[:40], y[:40], epochs=3, batch_size=8, seed=3, validation_data=(X[40:], y[40:]))
    np.testing.assert_array_equal(net.params, reference.params)


def test_callbacks_share_logs_and_their_entries_land_in_history(backend):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    seen = []

    def add(epoch, logs):
        logs["double_loss"] = 2 * logs["loss"]

    def read(epoch, logs):
        seen.append(logs["double_loss"])

    history = net.fit(X, Y, epochs=2, callbacks=[add, read], seed=0)
    assert history.metrics["double_loss"] == [2 * loss for loss in history.loss] == seen


def test_a_single_callable_is_accepted_as_callbacks(backend):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    epochs = []
    net.fit(X, Y, epochs=3, callbacks=lambda epoch, logs: epochs.append(epoch), seed=0)
    assert epochs == [0, 1, 2]
    with pytest.raises(TypeError, match="callbacks"):
        net.fit(X, Y, callbacks=42)


def test_callback_hooks_run_in_order(backend):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    calls = []

    class Recorder(fastbp.Callback):
        def on_train_begin(self, logs):
            calls.append(("begin", self.network is net))

        def on_epoch_end(self, epoch, logs):
            calls.append(("epoch", epoch))
            return epoch == 1

        def on_train_end(self, logs):
            calls.append(("end", self.history.stopped_epoch))

    history = net.fit(X, Y, epochs=5, callbacks=[Recorder()], seed=0)
    assert calls == [("begin", True), ("epoch", 0), ("epoch", 1), ("end", 1)]
    assert history.epochs == 2


def test_lr_together_with_optimizer_is_refused(backend):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    before = net.params.copy()
    with pytest.raises(ValueError, match="lr.*optimizer|optimizer.*lr"):
        net.fit(X, Y, lr=0.5, optimizer=fastbp.SGD(net, 0.1))
    np.testing.assert_array_equal(net.params, before)
    default = net.copy()
    net.fit(X, Y, epochs=1, seed=4)
    default.fit(X, Y, epochs=1, seed=4, lr=0.01)
    np.testing.assert_array_equal(net.params, default.params)


@pytest.mark.parametrize("name, hint", [("relu ", "did you mean 'relu'"), ("Relu", "did you mean 'relu'"),
                                        ("sigmod", "did you mean 'sigmoid'"),
                                        ("softmax", "cross_entropy.*identity")])
def test_near_miss_activation_names_get_a_hint(name, hint):
    with pytest.raises(ValueError, match=hint):
        fastbp.Network([2, 2], [name])


def test_near_miss_loss_gets_a_hint():
    with pytest.raises(ValueError, match="did you mean 'cross_entropy'"):
        fastbp.Network([2, 2], "identity", loss="crossentropy")


def test_early_stopping_says_it_restored_the_best_weights(backend, capsys):
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    snapshots = []
    history = net.fit(X, Y, epochs=40, lr=5.0, batch_size=4, early_stopping=True, patience=2, seed=0,
                      validation_data=(X[:10], Y[:10]), verbose=2,
                      callbacks=[lambda epoch, logs: snapshots.append(net.params.copy())])
    best = int(np.argmin(history.val_loss))
    assert history.best_epoch == best and history.restored_best_weights
    np.testing.assert_array_equal(net.params, snapshots[best])
    assert f"restored the weights of epoch {best + 1}" in capsys.readouterr().err


def test_public_early_stopping_callback_matches_the_flag(backend):
    X, _, Y = _data(n_out=2)
    a, b = _regressor(backend), _regressor(backend)
    ha = a.fit(X, Y, epochs=30, lr=5.0, batch_size=4, early_stopping=True, patience=2, seed=0)
    hb = b.fit(X, Y, epochs=30, lr=5.0, batch_size=4, seed=0, callbacks=[fastbp.EarlyStopping(patience=2)])
    assert ha.loss == hb.loss and ha.stopped_epoch == hb.stopped_epoch and ha.best_epoch == hb.best_epoch
    np.testing.assert_array_equal(a.params, b.params)


# ---- progress ------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_to_a_file_is_one_plain_line_per_epoch(backend, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    net = _classifier(backend)
    X, y, _ = _data()
    net.fit(X, y, epochs=4, progress=True, seed=0, metrics=["accuracy"], validation_data=(X, y))
    text = stream.getvalue()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4 and all("accuracy=" in line for line in lines)
    assert all(len(line) <= 80 for line in text.splitlines())


def test_progress_on_a_terminal_fits_80_columns_without_cut_numbers(backend, monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the built-in line (tqdm, if installed, is tried below)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    net = _classifier(backend)
    X, y, _ = _data()
    net.fit(X, y, epochs=3, progress=True, seed=0, metrics=["accuracy"], validation_data=(X, y))
    frames = [frame for frame in stream.getvalue().replace("\n", "\r").split("\r") if frame]
    assert len(frames) == 3
    for frame in frames:
        assert len(frame) <= 80
        for field in frame.split():
            if "=" in field:  # every number shown is whole: it parses
                float(field.split("=", 1)[1])


def test_progress_with_tqdm_on_a_terminal_fits_80_columns(backend, monkeypatch):
    pytest.importorskip("tqdm")
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    net = _classifier(backend)
    X, y, _ = _data()
    net.fit(X, y, epochs=3, progress=True, seed=0, metrics=["accuracy"], validation_data=(X, y))
    for frame in stream.getvalue().replace("\n", "\r").split("\r"):
        assert len(frame) <= 80


# ---- History.plot -----------------------------------------------------------------------------------------


def _axes(figure):
    (axes,) = figure.axes
    return axes


def test_plot_returns_a_figure_with_title_loss_name_and_best_epoch(tmp_path, backend):
    pytest.importorskip("matplotlib")
    net = _regressor(backend)
    X, _, Y = _data(n_out=2)
    history = net.fit(X, Y, epochs=6, seed=0, validation_data=(X[:10], Y[:10]))
    path = tmp_path / "loss.png"
    figure = history.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = _axes(figure)
    assert axes.get_title() and "mse" in axes.get_ylabel()
    assert axes.get_yscale() == "linear"  # within one decade
    best = int(np.argmin(history.val_loss)) + 1
    assert any(best in np.atleast_1d(line.get_xdata()) and "best" in str(line.get_label())
               for line in axes.get_lines())
    assert history.plot() is not None  # no path: the figure only


def test_plot_uses_a_log_axis_only_beyond_a_decade():
    pytest.importorskip("matplotlib")
    wide = fastbp.History(loss=[100.0, 10.0, 1.0, 0.5], loss_name="half_sse")
    assert _axes(wide.plot()).get_yscale() == "log"
    narrow = fastbp.History(loss=[2.0, 1.5, 1.0], loss_name="half_sse")
    assert _axes(narrow.plot()).get_yscale() == "linear"
    with_zero = fastbp.History(loss=[100.0, 0.0])
    assert _axes(with_zero.plot()).get_yscale() == "linear"
