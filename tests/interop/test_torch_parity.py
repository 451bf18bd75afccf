"""Parity with PyTorch: the same network, loss and optimizer in torch give the same numbers.

float64 within 1e-10 (absolute and relative), float32 within a relative 1e-5. Skips when torch is not
installed (CI installs ``torch==2.13.0``).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbp
from _support import random_net, random_targets

torch = pytest.importorskip("torch")

PARITY = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-10},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}
TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
TORCH_ACTIVATIONS = {
    "identity": torch.nn.Identity,
    "sigmoid": torch.nn.Sigmoid,
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
}
ARCHITECTURES = {
    "depth1": ([5, 3], ["identity"]),
    "depth2": ([6, 8, 3], ["tanh", "identity"]),
    "depth3": ([4, 7, 5, 3], ["relu", "sigmoid", "identity"]),
    "depth4": ([5, 6, 6, 4, 3], ["sigmoid", "relu", "tanh", "identity"]),
}
OPTIMIZERS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.8, "nesterov": True},
    "weight_decay": {"weight_decay": 0.01},
    "all": {"momentum": 0.7, "nesterov": True, "weight_decay": 0.05},
}
LOSS_CASES = ["half_sse", "mse", "cross_entropy-indices", "cross_entropy-probabilities"]


def torch_model(net):
    """``nn.Sequential`` of ``Linear`` and activations holding copies of ``net``'s parameters."""
    dtype = TORCH_DTYPES[np.dtype(net.dtype)]
    layers = []
    for layer, (n_in, n_out) in enumerate(zip(net.layer_sizes[:-1], net.layer_sizes[1:])):
        linear = torch.nn.Linear(n_in, n_out, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(net.weights[layer])))
            linear.bias.copy_(torch.from_numpy(np.array(net.biases[layer])))
        layers += [linear, TORCH_ACTIVATIONS[net.activations[layer]]()]
    return torch.nn.Sequential(*layers)


def torch_loss(loss_name, output, target):
    if loss_name == "half_sse":
        return 0.5 * ((output - target) ** 2).sum() / output.shape[0]
    if loss_name == "mse":
        return torch.nn.MSELoss()(output, target)
    return torch.nn.CrossEntropyLoss()(output, target)


def torch_target(Y, dtype):
    if Y.ndim == 1:  # class indices
        return torch.from_numpy(np.asarray(Y, dtype=np.int64))
    return torch.from_numpy(np.asarray(Y, dtype=dtype))


def assert_params_match(net, model, tol, what):
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for layer, linear in enumerate(linears):
        np.testing.assert_allclose(net.weights[layer], linear.weight.detach().numpy(), **tol,
                                   err_msg=f"{what}: weights[{layer}]")
        np.testing.assert_allclose(net.biases[layer], linear.bias.detach().numpy(), **tol,
                                   err_msg=f"{what}: biases[{layer}]")


def make_case(arch, loss_case, dtype, backend, seed):
    loss_name, _, target_kind = loss_case.partition("-")
    sizes, activations = ARCHITECTURES[arch]
    rng = np.random.default_rng(seed)
    net = random_net(fastbp, rng, sizes, activations, loss_name, dtype, backend)
    n = 23
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = random_targets(rng, loss_name, n, sizes[-1], dtype, as_indices=(target_kind != "probabilities"))
    return net, X, Y, loss_name


@pytest.mark.parametrize("loss_case", LOSS_CASES)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_loss_and_gradients_match_torch(arch, loss_case, dtype, backend):
    net, X, Y, loss_name = make_case(arch, loss_case, dtype, backend, seed=11)
    tol = PARITY[dtype]
    model = torch_model(net)
    output = model(torch.from_numpy(X))
    loss = torch_loss(loss_name, output, torch_target(Y, dtype))
    loss.backward()
    np.testing.assert_allclose(net.predict(X), output.detach().numpy(), **tol)
    assert net.loss(X, Y) == pytest.approx(loss.item(), rel=tol["rtol"], abs=tol["atol"])
    grads = net.gradients(X, Y)
    assert grads.loss == pytest.approx(loss.item(), rel=tol["rtol"], abs=tol["atol"])
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for layer, linear in enumerate(linears):
        np.testing.assert_allclose(grads.weights[layer], linear.weight.grad.numpy(), **tol)
        np.testing.assert_allclose(grads.biases[layer], linear.bias.grad.numpy(), **tol)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("loss_case", LOSS_CASES)
@pytest.mark.parametrize("arch", ["depth1", "depth2", "depth3", "depth4"])
def test_train_step_matches_torch_sgd(arch, loss_case, optimizer, dtype, backend):
    net, X, Y, loss_name = make_case(arch, loss_case, dtype, backend, seed=12)
    tol = PARITY[dtype]
    lr = 0.1
    model = torch_model(net)
    torch_opt = torch.optim.SGD(model.parameters(), lr=lr, **OPTIMIZERS[optimizer])
    opt = fastbp.SGD(net, lr, **OPTIMIZERS[optimizer])
    for step, (start, stop) in enumerate([(0, 8), (8, 16), (16, 23), (0, 23), (3, 4)]):
        xb, yb = X[start:stop], Y[start:stop]
        torch_opt.zero_grad()
        loss = torch_loss(loss_name, model(torch.from_numpy(xb)), torch_target(yb, dtype))
        loss.backward()
        torch_opt.step()
        got = opt.train_step(xb, yb)
        assert got == pytest.approx(loss.item(), rel=tol["rtol"], abs=tol["atol"]), f"step {step} loss"
        assert_params_match(net, model, tol, f"after step {step}")


@pytest.mark.parametrize("optimizer", ["plain", "momentum", "all"])
@pytest.mark.parametrize("loss_case", ["mse", "cross_entropy-indices", "cross_entropy-probabilities"])
@pytest.mark.parametrize("arch", ["depth2", "depth3"])
def test_fit_without_shuffle_matches_torch_loop(arch, loss_case, optimizer, dtype, backend):
    net, X, Y, loss_name = make_case(arch, loss_case, dtype, backend, seed=13)
    tol = PARITY[dtype]
    lr, batch_size, epochs = 0.05, 5, 3  # 23 examples: four batches of 5 and a last one of 3
    model = torch_model(net)
    torch_opt = torch.optim.SGD(model.parameters(), lr=lr, **OPTIMIZERS[optimizer])
    torch_epoch_losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            torch_opt.zero_grad()
            loss = torch_loss(loss_name, model(torch.from_numpy(xb)), torch_target(yb, dtype))
            loss.backward()
            torch_opt.step()
            total += loss.item() * len(xb)
        torch_epoch_losses.append(total / len(X))

    history = net.fit(X, Y, epochs=epochs, batch_size=batch_size,
                      optimizer=fastbp.SGD(net, lr, **OPTIMIZERS[optimizer]), shuffle=False)
    np.testing.assert_allclose(history.loss, torch_epoch_losses, **tol)
    assert_params_match(net, model, tol, "after fit")


def test_half_sse_is_half_sum_over_batch(backend, dtype):
    rng = np.random.default_rng(3)
    half = random_net(fastbp, rng, [4, 5, 3], ["tanh", "identity"], "half_sse", dtype, backend)
    X, Y = rng.normal(size=(9, 4)).astype(dtype), rng.normal(size=(9, 3)).astype(dtype)
    residual = half.predict(X).astype(np.float64) - Y
    tol = PARITY[dtype]
    assert half.loss(X, Y) == pytest.approx(0.5 * (residual ** 2).sum() / 9, rel=tol["rtol"])
    mse = fastbp.Network([4, 5, 3], ["tanh", "identity"], loss="mse", dtype=dtype, backend=backend)
    mse.set_params(half.weights, half.biases)
    assert mse.loss(X, Y) == pytest.approx((residual ** 2).mean(), rel=tol["rtol"])
    # Hence half_sse = mse * K / 2, and its gradient likewise.
    g_half, g_mse = half.gradients(X, Y), mse.gradients(X, Y)
    for a, b in zip(g_half.weights, g_mse.weights):
        np.testing.assert_allclose(a, np.asarray(b) * 3 / 2, **tol)


def test_default_initialisation_is_torch_like(backend):
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, reproducible from a seed.
    net = fastbp.Network([400, 300, 10], "relu", seed=5, backend=backend)
    again = fastbp.Network([400, 300, 10], "relu", seed=5, backend=backend)
    other = fastbp.Network([400, 300, 10], "relu", seed=6, backend=backend)
    assert np.array_equal(net.params, again.params)
    assert not np.array_equal(net.params, other.params)
    for layer, fan_in in enumerate([400, 300]):
        bound = 1 / np.sqrt(fan_in)
        for values in (np.asarray(net.weights[layer]), np.asarray(net.biases[layer])):
            assert np.abs(values).max() <= bound
            assert np.abs(values).max() > 0.9 * bound
            assert abs(values.mean()) < 0.1 * bound
        # The variance of U(-a, a) is a^2/3.
        assert np.var(net.weights[layer]) == pytest.approx(bound ** 2 / 3, rel=0.05)
