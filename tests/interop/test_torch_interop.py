"""PyTorch interop: to_torch / from_torch / state_dict / load_state_dict round trips and their errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastbp
from fastbp import _torch_interop

torch = pytest.importorskip("torch")
nn = torch.nn

ARCHITECTURES = [
    ([3, 5, 4, 2], ["relu", "tanh", "identity"]),
    ([4, 6, 1], ["sigmoid", "sigmoid"]),
    ([2, 3, 3, 3], ["identity", "relu", "tanh"]),
    ([5, 2], ["identity"]),
]


def _data(n_in, n=11, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n_in))


def _torch_predict(module, X):
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("sizes, activations", ARCHITECTURES)
def test_to_torch_same_predictions(sizes, activations, backend):
    net = fastbp.Network(sizes, activations, seed=1, backend=backend)
    module = net.to_torch()
    assert isinstance(module, nn.Sequential)
    for child, expected in zip(
        [m for m in module if not isinstance(m, nn.Linear)],
        [a for a in activations if a != "identity"],
    ):
        assert type(child) is {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[expected]
    assert sum(isinstance(m, nn.Linear) for m in module) == len(activations)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    X = _data(sizes[0])
    np.testing.assert_allclose(_torch_predict(module, X), net.predict(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes, activations", ARCHITECTURES)
def test_round_trip_through_torch(sizes, activations, backend):
    net = fastbp.Network(sizes, activations, seed=2, backend=backend)
    back = fastbp.Network.from_torch(net.to_torch(), backend=backend)
    assert list(back.layer_sizes) == sizes and list(back.activations) == activations
    assert back.dtype == np.float64 and back.loss_name == "mse"
    np.testing.assert_array_equal(back.params, net.params)  # a copy, bit for bit


@pytest.mark.parametrize("sizes, activations", ARCHITECTURES)
def test_state_dict_matches_torch(sizes, activations):
    net = fastbp.Network(sizes, activations, seed=3)
    ours = net.state_dict()
    theirs = net.to_torch().state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert isinstance(ours[key], torch.Tensor)
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype
        assert torch.equal(ours[key], theirs[key])
    # state_dict is a copy: changing it leaves the network alone
    before = net.params.copy()
    next(iter(ours.values())).add_(1.0)
    np.testing.assert_array_equal(net.params, before)


def test_load_state_dict_from_a_torch_model(backend):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    net = fastbp.Network([4, 7, 3], ["tanh", "identity"], seed=0, backend=backend)
    net.load_state_dict(module.state_dict())
    X = _data(4)
    np.testing.assert_allclose(net.predict(X), _torch_predict(module, X), rtol=1e-12, atol=1e-12)
    # NumPy arrays are accepted as well, and converted to the network's dtype
    net.load_state_dict({key: value.numpy() * 2 for key, value in module.state_dict().items()})
    np.testing.assert_array_equal(net.weights[0], module[0].weight.detach().numpy() * 2)


def test_from_torch_model_trained_in_torch_matches(backend):
    torch.manual_seed(1)
    module = nn.Sequential(
        nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2)
    ).double()
    net = fastbp.Network.from_torch(module, backend=backend)
    assert list(net.activations) == ["relu", "sigmoid", "identity"]
    X = _data(3)
    np.testing.assert_allclose(net.predict(X), _torch_predict(module, X), rtol=1e-12, atol=1e-12)


def test_one_sgd_step_agrees_with_torch(backend):
    """After conversion, a momentum SGD step in fastbp and in torch lands on the same parameters."""
    net = fastbp.Network([3, 4, 2], ["tanh", "identity"], loss="cross_entropy", seed=4, backend=backend)
    module = net.to_torch()
    X = _data(3, n=6)
    targets = np.array([0, 1, 1, 0, 1, 0])
    optimizer = fastbp.SGD(net, 0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    torch_optimizer = torch.optim.SGD(
        module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True
    )
    for _ in range(3):
        optimizer.train_step(X, targets)
        torch_optimizer.zero_grad()
        nn.CrossEntropyLoss()(module(torch.from_numpy(X)), torch.from_numpy(targets)).backward()
        torch_optimizer.step()
    for key, value in module.state_dict().items():
        np.testing.assert_allclose(net.state_dict()[key].numpy(), value.numpy(), rtol=1e-12, atol=1e-12)


def test_float32():
    net = fastbp.Network([3, 4, 1], "tanh", dtype="float32", seed=0)
    module = net.to_torch()
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(v.dtype == torch.float32 for v in net.state_dict().values())
    back = fastbp.Network.from_torch(module)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.params, net.params)
    # torch's default float32 modules give float32 networks unless a dtype is asked for
    assert fastbp.Network.from_torch(nn.Sequential(nn.Linear(2, 2))).dtype == np.float32
    assert fastbp.Network.from_torch(nn.Sequential(nn.Linear(2, 2)), dtype="float64").dtype == np.float64


def test_from_torch_accepts_identity_nesting_and_no_bias():
    torch.manual_seed(2)
    module = nn.Sequential(
        nn.Identity(),
        nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU()),
        nn.Linear(4, 2),
        nn.Identity(),
    ).double()
    net = fastbp.Network.from_torch(module, loss="half_sse")
    assert list(net.layer_sizes) == [3, 4, 2] and list(net.activations) == ["relu", "identity"]
    assert net.loss_name == "half_sse"
    np.testing.assert_array_equal(net.biases[0], 0.0)
    X = _data(3)
    np.testing.assert_allclose(net.predict(X), _torch_predict(module, X), rtol=1e-12, atol=1e-12)
    single = fastbp.Network.from_torch(nn.Linear(3, 1).double())
    assert list(single.layer_sizes) == [3, 1]


@pytest.mark.parametrize(
    "module, match",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Conv1d(1, 1, 1)), r"module 2 \(Conv1d"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1)), r"module 1 \(Softmax.*cross_entropy"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU()), r"module 1 \(LeakyReLU"),
        (nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)), r"module 1 \(Dropout"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 1))),
            r"module 1\.1 \(Conv1d",
        ),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 4)), r"module 0 \(ReLU.*must follow a Linear"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()), r"module 2 \(Tanh.*two activations"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 1)), r"module 1 \(Linear.*in_features=5"),
        (nn.Sequential(), "no Linear"),
        (nn.Sequential(nn.Linear(3, 4).half()), "float16"),
        (nn.Conv1d(1, 1, 1), r"module 0 \(Conv1d"),
    ],
)
def test_from_torch_names_the_unsupported_module(module, match):
    with pytest.raises(ValueError, match=match):
        fastbp.Network.from_torch(module)


def test_from_torch_type_errors():
    with pytest.raises(TypeError, match="torch.nn.Sequential"):
        fastbp.Network.from_torch([nn.Linear(2, 2)])

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def forward(self, x):
            return self.layer(x)

    with pytest.raises(TypeError, match="Custom"):
        fastbp.Network.from_torch(Custom())


def test_load_state_dict_errors_name_the_key():
    net = fastbp.Network([3, 4, 2], ["relu", "identity"], seed=0)
    good = net.state_dict()
    before = net.params.copy()
    with pytest.raises(ValueError, match=r"missing key\(s\) \['2.bias'\]"):
        net.load_state_dict({k: v for k, v in good.items() if k != "2.bias"})
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['4.weight'\]"):
        net.load_state_dict({**good, "4.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"'2.weight' has shape \(4, 2\), the network expects \(2, 4\)"):
        net.load_state_dict({**good, "2.weight": torch.zeros(4, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="'0.bias' contains NaN"):
        net.load_state_dict({**good, "0.bias": torch.full((4,), float("nan"), dtype=torch.float64)})
    with pytest.raises(TypeError):
        net.load_state_dict([1, 2, 3])
    np.testing.assert_array_equal(net.params, before)  # unchanged after every error


def test_missing_torch_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    net = fastbp.Network([2, 1], "identity", seed=0)
    with pytest.raises(ImportError, match="install PyTorch"):
        net.to_torch()
    with pytest.raises(ImportError, match="install PyTorch"):
        fastbp.Network.from_torch(object())
    # state_dict / load_state_dict work without torch, on NumPy arrays
    state = net.state_dict()
    assert isinstance(state["0.weight"], np.ndarray) and state["0.weight"].shape == (1, 2)
    net.load_state_dict({"0.weight": np.ones((1, 2)), "0.bias": np.zeros(1)})
    np.testing.assert_array_equal(net.weights[0], [[1.0, 1.0]])


def test_sklearn_estimator_network_to_torch():
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from fastbp.sklearn import MLPClassifier

    X = _data(4, n=60)
    # Three classes: a softmax output (scikit-learn gives two classes one logistic output instead).
    y = np.digitize(X[:, 0], [-0.3, 0.3])
    model = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    with pytest.warns(Warning):
        model.fit(X, y)
    module = model.network_.to_torch()
    probabilities = torch.softmax(torch.from_numpy(_torch_predict(module, X)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, model.predict_proba(X), rtol=1e-12, atol=1e-12)
