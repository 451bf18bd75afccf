"""The fused optimizers (SGD, Adam, AdamW, RMSprop, Rprop) against torch.optim, the two backends against
each other, their state handling (state_dict, divergence restore, checked hyper-parameters), and L-BFGS
against scipy's own answer and scikit-learn's lbfgs.

Parity tolerances as tests/test_torch_parity.py: float64 within 1e-10, float32 within a relative 1e-5.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import fastbp
from fastbp import _reference, _spec
from _support import random_net, random_targets

PARITY = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-10},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}

# (fastbp class name, keyword arguments); the torch class has the same name and takes the same keywords.
CONFIGS = {
    "sgd-momentum-nesterov-wd": ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    "adam": ("Adam", {"lr": 0.01}),
    "adam-wd": ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    "adam-amsgrad": ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    "adamw": ("AdamW", {"lr": 0.01}),
    "adamw-amsgrad": ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.3, 0.6)}),
    "rmsprop": ("RMSprop", {"lr": 0.005}),
    "rmsprop-momentum-wd": ("RMSprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01}),
    "rmsprop-centered": ("RMSprop", {"lr": 0.005, "centered": True}),
    "rmsprop-centered-momentum": ("RMSprop", {"lr": 0.002, "centered": True, "momentum": 0.9, "eps": 1e-4}),
    "rprop": ("Rprop", {"lr": 0.01}),
    "rprop-bounds": ("Rprop", {"lr": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}),
}

ARCHITECTURES = {
    "mse": ([4, 7, 5, 3], ["tanh", "sigmoid", "identity"], "mse"),
    "cross_entropy": ([5, 6, 4], ["relu", "identity"], "cross_entropy"),
}


def make_problem(arch, dtype, backend, seed, n=23):
    sizes, activations, loss = ARCHITECTURES[arch]
    rng = np.random.default_rng(seed)
    net = random_net(fastbp, rng, sizes, activations, loss, dtype, backend)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = random_targets(rng, loss, n, sizes[-1], dtype, as_indices=False)
    return net, X, Y


def make_optimizer(net, config):
    name, kwargs = CONFIGS[config]
    kwargs = dict(kwargs)
    if name == "SGD":
        return fastbp.SGD(net, kwargs.pop("lr"), **kwargs)
    return getattr(fastbp, name)(net, **kwargs)


# ---------------------------------------------------------------------------------------------------
# torch


def torch_setup(net, config):
    torch = pytest.importorskip("torch")
    dtype = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(net.dtype)]
    activations = {"identity": torch.nn.Identity, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU,
                   "tanh": torch.nn.Tanh}
    layers = []
    for layer, (n_in, n_out) in enumerate(zip(net.layer_sizes[:-1], net.layer_sizes[1:])):
        linear = torch.nn.Linear(n_in, n_out, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(net.weights[layer])))
            linear.bias.copy_(torch.from_numpy(np.array(net.biases[layer])))
        layers += [linear, activations[net.activations[layer]]()]
    model = torch.nn.Sequential(*layers)
    name, kwargs = CONFIGS[config]
    optimizer = getattr(torch.optim, name)(model.parameters(), foreach=False, **kwargs)
    if net.loss_name == "mse":
        criterion = torch.nn.MSELoss()
    else:
        criterion = torch.nn.CrossEntropyLoss()

    def step(X, Y):
        optimizer.zero_grad()
        loss = criterion(model(torch.from_numpy(X)), torch.from_numpy(Y))
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, step


def torch_flat(model):
    import torch
    parts = []
    for module in model:
        if isinstance(module, torch.nn.Linear):
            parts += [module.weight.detach().numpy().ravel(), module.bias.detach().numpy().ravel()]
    return np.concatenate(parts)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_train_step_matches_torch_over_20_steps(config, arch, dtype, backend):
    net, X, Y = make_problem(arch, dtype, backend, seed=3)
    model, torch_step = torch_setup(net, config)
    opt = make_optimizer(net, config)
    tol = PARITY[np.dtype(dtype)]
    rng = np.random.default_rng(4)
    for step in range(20):
        start = int(rng.integers(0, 15))
        stop = start + int(rng.integers(1, 9))
        expected_loss = torch_step(X[start:stop], Y[start:stop])
        loss = opt.train_step(X[start:stop], Y[start:stop])
        assert loss == pytest.approx(expected_loss, rel=tol["rtol"], abs=tol["atol"]), f"step {step}"
        np.testing.assert_allclose(net.params, torch_flat(model), **tol, err_msg=f"after step {step}")
    assert opt.steps == 20


@pytest.mark.parametrize("batch_size", [1, 3, 23])
@pytest.mark.parametrize("config", ["adam", "adamw-amsgrad", "rmsprop-centered-momentum", "rprop",
                                    "sgd-momentum-nesterov-wd", "adam-wd"])
def test_fit_matches_torch_over_epochs(config, batch_size, dtype, backend):
    net, X, Y = make_problem("mse", dtype, backend, seed=5)
    model, torch_step = torch_setup(net, config)
    opt = make_optimizer(net, config)
    epochs = 3
    history = net.fit(X, Y, epochs=epochs, batch_size=batch_size, optimizer=opt, shuffle=False)
    for epoch in range(epochs):
        total = 0.0
        for start in range(0, X.shape[0], batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            total += torch_step(xb, yb) * xb.shape[0]
        tol = PARITY[np.dtype(dtype)]
        assert history.loss[epoch] == pytest.approx(total / X.shape[0], rel=tol["rtol"], abs=tol["atol"])
    np.testing.assert_allclose(net.params, torch_flat(model), **PARITY[np.dtype(dtype)])
    assert opt.steps == epochs * -(-X.shape[0] // batch_size)


def test_step_from_gradients_matches_torch(dtype, backend):
    net, X, Y = make_problem("cross_entropy", dtype, backend, seed=8)
    model, torch_step = torch_setup(net, "adam-amsgrad")
    opt = make_optimizer(net, "adam-amsgrad")
    for _ in range(5):
        torch_step(X, Y)
        opt.step(net.gradients(X, Y))
    np.testing.assert_allclose(net.params, torch_flat(model), **PARITY[np.dtype(dtype)])


# ---------------------------------------------------------------------------------------------------
# The two backends, and the codes


def test_rule_and_slot_codes_agree_between_spec_and_kernel():
    core = pytest.importorskip("fastbp._core")
    codes = core._enum_codes()
    assert codes["RULES"] == tuple(range(len(_spec.RULES)))
    assert codes["N_RULES"] == len(_spec.RULES)
    assert codes["N_HYPER"] == _spec.N_HYPER
    for name, value in codes.items():
        if name.startswith("HYPER_"):
            assert getattr(_spec, name) == value, name
    python_slots = {name for name in dir(_spec) if name.startswith("HYPER_")}
    assert python_slots == {name for name in codes if name.startswith("HYPER_")}


def _hyper_for(rule, rng):
    hyper = np.zeros(_spec.N_HYPER)
    hyper[_spec.HYPER_LR] = rng.uniform(0.001, 0.1)
    hyper[_spec.HYPER_WEIGHT_DECAY] = 0.0 if rule == "rprop" else rng.choice([0.0, 0.03])
    if rule == "sgd":
        hyper[_spec.HYPER_SGD_MOMENTUM] = 0.9
        hyper[_spec.HYPER_SGD_NESTEROV] = rng.integers(0, 2)
    elif rule in ("adam", "adamw"):
        hyper[[2, 3, 4]] = 0.9, 0.999, 1e-8
        hyper[_spec.HYPER_ADAM_AMSGRAD] = rng.integers(0, 2)
    elif rule == "rmsprop":
        hyper[[2, 3, 4]] = 0.99, 1e-8, rng.choice([0.0, 0.5])
        hyper[_spec.HYPER_RMSPROP_CENTERED] = rng.integers(0, 2)
    else:
        hyper[[2, 3, 4, 5]] = 0.5, 1.2, 1e-6, 50
    return hyper


@pytest.mark.parametrize("rule", _spec.RULES)
def test_compiled_and_twin_optimizer_step_agree(rule, dtype):
    core = pytest.importorskip("fastbp._core")
    rng = np.random.default_rng(_spec.RULE_CODES[rule])
    n = 257
    hyper = _hyper_for(rule, rng)
    rows = len(_spec.STATE_ROWS[rule])
    params = rng.normal(size=n).astype(dtype)
    state = np.abs(rng.normal(size=(rows, n))).astype(dtype) * (rule != "rprop")
    steps = np.array([0], dtype=np.int64)
    twin = (params.copy(), state.copy(), steps.copy())
    tol = PARITY[np.dtype(dtype)]
    for _ in range(6):
        grad = rng.normal(size=n).astype(dtype)
        grad[:5] = 0  # zero gradients: the sign branches of Rprop
        core.optimizer_step(params, grad, _spec.RULE_CODES[rule], hyper, state, steps)
        _reference.optimizer_step(twin[0], grad, _spec.RULE_CODES[rule], hyper, twin[1], twin[2])
        np.testing.assert_allclose(params, twin[0], **tol)
        np.testing.assert_allclose(state, twin[1], **tol)
        assert steps[0] == twin[2][0]
    assert steps[0] == 6


# ---------------------------------------------------------------------------------------------------
# State: state_dict, divergence, checks


@pytest.mark.parametrize("config", ["adam-amsgrad", "rmsprop-centered-momentum", "rprop", "sgd-momentum-nesterov-wd"])
def test_state_dict_round_trip_through_npz_continues_bit_for_bit(config, backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=9)
    opt = make_optimizer(net, config)
    net.fit(X, Y, epochs=2, batch_size=5, optimizer=opt, seed=1)
    buffer = io.BytesIO()
    np.savez(buffer, params=net.params, **opt.state_dict())
    buffer.seek(0)
    stored = dict(np.load(buffer, allow_pickle=False))
    clone = fastbp.Network(net.layer_sizes, net.activations, loss=net.loss_name, backend=backend)
    clone.params = stored.pop("params")
    restored = make_optimizer(clone, config)
    restored.load_state_dict(stored)
    assert restored.steps == opt.steps and restored.hyperparameters() == opt.hyperparameters()
    net.fit(X, Y, epochs=2, batch_size=5, optimizer=opt, seed=2)
    clone.fit(X, Y, epochs=2, batch_size=5, optimizer=restored, seed=2)
    assert net.params.tobytes() == clone.params.tobytes()
    assert opt.state.tobytes() == restored.state.tobytes() and opt.steps == restored.steps


def test_load_state_dict_checks_everything_and_changes_nothing_on_failure(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=10)
    opt = fastbp.Adam(net, lr=0.01)
    opt.train_step(X, Y)
    good = opt.state_dict()
    before = opt.state_dict()
    bad_cases = [
        {**good, "rule": "rmsprop"},
        {**good, "state": good["state"][:2]},
        {**good, "state": good["state"].astype(np.float32)},
        {**good, "state": np.where(np.arange(good["state"].size).reshape(good["state"].shape) == 3, np.nan,
                                   good["state"])},
        {**good, "state": -np.abs(good["state"]) - 1},   # a negative second moment
        {**good, "steps": -1},
        {**good, "hyper": np.where(np.arange(8) == _spec.HYPER_ADAM_BETA1, 1.5, good["hyper"])},
        {**good, "hyper": np.where(np.arange(8) == _spec.HYPER_ADAM_AMSGRAD, 0.5, good["hyper"])},
        {**good, "hyper": good["hyper"][:7]},
        {key: value for key, value in good.items() if key != "steps"},
    ]
    for case in bad_cases:
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(case)
        after = opt.state_dict()
        assert after["steps"] == before["steps"]
        assert after["hyper"].tobytes() == before["hyper"].tobytes()
        assert after["state"].tobytes() == before["state"].tobytes()


@pytest.mark.parametrize("config", ["adam", "rmsprop-momentum-wd", "rprop"])
def test_train_step_divergence_restores_params_state_and_steps(config, backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=11)
    opt = make_optimizer(net, config)
    for _ in range(3):
        opt.train_step(X[:6], Y[:6])
    if config == "rprop":
        # steps of 1e308: this update leaves huge parameters, and the next batch's loss overflows
        opt.step_sizes = (1e-6, 1e308)
        opt.step_size = np.full(net.n_params, 1e308)
        opt.train_step(X[:6], Y[:6])
    else:
        opt.lr = 1.7e308   # lr / (1 - beta1) or the step itself overflows to infinity
    params, state, steps = net.params.copy(), opt.state.copy(), opt.steps
    with pytest.raises(FloatingPointError):
        opt.train_step(X[6:12], Y[6:12])
    assert net.params.tobytes() == params.tobytes()
    assert opt.state.tobytes() == state.tobytes()
    assert opt.steps == steps


def test_fit_divergence_leaves_params_state_and_steps_as_before_the_bad_batch(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=12)
    replay = net.copy()
    opt = fastbp.Adam(net, lr=1e300)
    with pytest.raises(FloatingPointError) as caught:
        net.fit(X, Y, epochs=3, batch_size=4, optimizer=opt, shuffle=False)
    bad = caught.value.batch + caught.value.epoch * -(-X.shape[0] // 4)
    # the same updates, one batch at a time, stopping before the bad one
    replay_opt = fastbp.Adam(replay, lr=1e300)
    batches = [(start, start + 4) for _ in range(3) for start in range(0, X.shape[0], 4)]
    for start, stop in batches[:bad]:
        replay_opt.train_step(X[start:stop], Y[start:stop])
    assert net.params.tobytes() == replay.params.tobytes()
    assert opt.state.tobytes() == replay_opt.state.tobytes()
    assert opt.steps == replay_opt.steps == bad


BAD_HYPERPARAMETERS = [
    ("Adam", {"lr": -0.1}, "lr"),
    ("Adam", {"betas": (1.0, 0.9)}, "betas"),
    ("Adam", {"betas": (0.9, -0.1)}, "betas"),
    ("Adam", {"eps": 0.0}, "eps"),
    ("Adam", {"weight_decay": -1.0}, "weight_decay"),
    ("AdamW", {"lr": float("nan")}, "lr"),
    ("RMSprop", {"alpha": 1.5}, "alpha"),
    ("RMSprop", {"eps": -1e-8}, "eps"),
    ("RMSprop", {"momentum": -0.5}, "momentum"),
    ("Rprop", {"etas": (1.2, 0.5)}, "etas"),
    ("Rprop", {"etas": (0.0, 1.2)}, "etas"),
    ("Rprop", {"step_sizes": (1.0, 0.5)}, "step_sizes"),
    ("Rprop", {"lr": 10**400}, "lr"),
]


@pytest.mark.parametrize("name,kwargs,argument", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_naming_the_argument(name, kwargs, argument, backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=13)
    params = net.params.copy()
    with pytest.raises(ValueError, match=argument):
        getattr(fastbp, name)(net, **kwargs)
    assert net.params.tobytes() == params.tobytes()


@pytest.mark.parametrize("name,attribute,value", [
    ("SGD", "momentum", -0.5), ("SGD", "momentum", 10**400), ("SGD", "lr", 0.0), ("Adam", "eps", 0),
    ("Adam", "betas", (0.9, 1.0)), ("Adam", "amsgrad", 1), ("RMSprop", "alpha", -1), ("RMSprop", "centered", "yes"),
    ("Rprop", "etas", (0.5, 0.9)), ("Rprop", "eta_plus", 0.9), ("Rprop", "step_min", 100.0),
])
def test_setting_a_bad_hyperparameter_raises_and_changes_nothing(name, attribute, value, backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=14)
    opt = fastbp.SGD(net, 0.1, momentum=0.5) if name == "SGD" else getattr(fastbp, name)(net)
    before = opt.state_dict()
    with pytest.raises((TypeError, ValueError)):
        setattr(opt, attribute, value)
    assert opt.state_dict()["hyper"].tobytes() == before["hyper"].tobytes()


def test_net_is_read_only_and_the_state_is_checked_at_the_door(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=15)
    big = fastbp.Network([4, 50, 3], ["tanh", "identity"], loss="mse", backend=backend)
    opt = fastbp.Adam(net)
    with pytest.raises(AttributeError):
        opt.net = big
    with pytest.raises(ValueError, match="another network"):
        big.fit(np.zeros((3, 4)), np.zeros((3, 3)), optimizer=opt)
    opt._state = np.zeros((3, 2))  # a private buffer swapped behind the optimizer's back
    with pytest.raises(RuntimeError, match="no longer matches"):
        opt.train_step(X, Y)
    with pytest.raises(RuntimeError, match="no longer matches"):
        net.fit(X, Y, optimizer=opt)


def test_assigning_a_state_row_copies_checked(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=16)
    opt = fastbp.Adam(net)
    row = opt.exp_avg_sq
    opt.exp_avg_sq = np.full(net.n_params, 2.0)
    assert row is opt.exp_avg_sq or np.shares_memory(row, opt.state)
    assert (opt.state[1] == 2).all()
    for bad in (np.zeros(3), np.full(net.n_params, np.inf), np.full(net.n_params, -1.0)):
        with pytest.raises(ValueError):
            opt.exp_avg_sq = bad
    assert (opt.state[1] == 2).all()


def test_zero_state_forgets_moments_and_steps(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=17)
    opt = fastbp.Rprop(net)
    opt.train_step(X, Y)
    assert opt.steps == 1 and (opt.step_size > 0).all()
    opt.zero_state()
    assert opt.steps == 0 and not opt.state.any()


# ---------------------------------------------------------------------------------------------------
# L-BFGS


def _numpy_objective(net, X, Y):
    """Loss and gradient over all of X by the NumPy twin, in float64: an independent route to scipy."""
    ws = _reference.Workspace(net.layer_sizes, net._activation_codes, net._loss_code, np.float64, X.shape[0])

    def f(x):
        loss = _reference.loss_and_gradient(ws, x, X, Y)
        return loss, ws.grad.copy()

    return f


def test_lbfgs_reaches_scipys_own_answer(backend):
    from scipy.optimize import minimize
    net, X, Y = make_problem("mse", "float64", backend, seed=18, n=40)
    start = net.params.copy()
    LBFGS = fastbp.LBFGS
    LBFGS._CHUNK = 7  # several chunks, weighted by their rows
    try:
        history = net.fit(X, Y, optimizer=LBFGS(net, max_iter=30, tol=1e-8))
    finally:
        LBFGS._CHUNK = 4096
    expected = minimize(_numpy_objective(net, X, Y), start, method="L-BFGS-B", jac=True,
                        options={"maxiter": 30, "maxfun": 15000, "gtol": 1e-8})
    np.testing.assert_allclose(net.params, expected.x, rtol=1e-6, atol=1e-8)
    assert net.loss(X, Y) == pytest.approx(expected.fun, rel=1e-9)
    assert len(history.loss) == expected.nit


def test_lbfgs_lowers_the_loss_like_scikit_learns_lbfgs(backend):
    sklearn_network = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(19)
    X = rng.normal(size=(200, 3))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    reference = sklearn_network.MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", solver="lbfgs", alpha=0.0,
                                             max_iter=300, random_state=0, tol=1e-6)
    reference.fit(X, y)
    sklearn_mse = float(np.mean((reference.predict(X) - y) ** 2))
    net = fastbp.Network([3, 16, 1], ["tanh", "identity"], loss="mse", seed=0, backend=backend)
    initial = net.loss(X, y)
    net.fit(X, y, optimizer=fastbp.LBFGS(net, max_iter=300, tol=1e-6))
    final = net.loss(X, y)
    assert final < initial / 20
    assert final < 3 * sklearn_mse + 1e-3


def test_lbfgs_checks_its_arguments(backend):
    net, X, Y = make_problem("mse", "float64", backend, seed=20)
    for kwargs in ({"max_iter": 0}, {"max_fun": -1}, {"tol": -1.0}, {"max_iter": 2.5}):
        with pytest.raises((TypeError, ValueError)):
            fastbp.LBFGS(net, **kwargs)
    with pytest.raises(AttributeError):
        fastbp.LBFGS(net).net = net
