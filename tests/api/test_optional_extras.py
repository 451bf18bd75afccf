"""The optional extras at work: ``History.plot`` with matplotlib (``.[plot]``) and the progress bar with tqdm
(``.[progress]``). Skipped where they are not installed; CI installs both with the wheel it tests."""

from __future__ import annotations

import numpy as np
import pytest

import fastbp


def _trained(epochs=5):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 3)), rng.normal(size=(64, 1))
    net = fastbp.Network([3, 4, 1], ["tanh", "identity"], seed=0)
    return net, X, Y, net.fit(X, Y, epochs=epochs, batch_size=8, lr=0.05)


def test_history_plot_draws_the_recorded_losses(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    drawn = []
    original = Axes.plot

    def spy(self, *args, **kwargs):  # what plot() hands to matplotlib: the independent record
        drawn.append(np.asarray(args[1] if len(args) > 1 else args[0], dtype=float))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    _, _, _, history = _trained()
    history.plot(tmp_path / "loss.png")
    assert any(len(y) == len(history.loss) and np.allclose(y, history.loss) for y in drawn), drawn
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_progress_bar_with_tqdm_reaches_every_epoch(capsys):
    pytest.importorskip("tqdm")
    net, X, Y, _ = _trained(epochs=1)
    net.fit(X, Y, epochs=3, batch_size=8, lr=0.05, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err, err
