"""Conversion between a fastbp ``Network`` and a PyTorch ``torch.nn.Sequential``.

A fastbp network is a stack of fully connected layers, each followed by one activation. Its PyTorch twin is
``nn.Sequential(Linear, activation, Linear, activation, ...)`` where the activation module is ``nn.Sigmoid``,
``nn.ReLU`` or ``nn.Tanh``, and an ``"identity"`` activation has no module at all (the usual way to write
``Linear -> ReLU -> Linear`` in PyTorch). Weights already use PyTorch's layout (``(out, in)``), so the
conversion is a copy of each array, in the network's dtype: float64 predictions agree to rounding.

``state_dict(net)`` gives the keys and shapes of ``to_torch(net).state_dict()`` (``"0.weight"``,
``"0.bias"``, ``"2.weight"``, ...), so a state dict saved from the PyTorch model loads into the fastbp
network and back. PyTorch is imported only when a function here needs it.

The public entry points are the ``Network`` methods ``to_torch``, ``from_torch``, ``state_dict`` and
``load_state_dict``, which delegate here.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fastbp import _io, _reference

# fastbp activation name -> name of the torch.nn module class (None: no module is emitted).
_MODULE_FOR_ACTIVATION = {"identity": None, "sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh"}
# torch.nn module class name -> fastbp activation name. nn.Identity is accepted and skipped.
_ACTIVATION_FOR_MODULE = {"Sigmoid": "sigmoid", "ReLU": "relu", "Tanh": "tanh"}

_TORCH_MISSING = (
    "this function needs PyTorch, which is not installed: install PyTorch for your platform "
    "(https://pytorch.org/get-started/locally/; a CPU-only build is enough, for example "
    "`pip install torch --index-url https://download.pytorch.org/whl/cpu`)"
)


def _import_torch():
    """Import and return ``torch``, or raise an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"fastbp: {_TORCH_MISSING}") from error
    return torch


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_dtype(torch, dtype):
    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def _linear_positions(activations):
    """The index in the ``nn.Sequential`` of each layer's ``nn.Linear`` (identity adds no module)."""
    positions = []
    position = 0
    for name in activations:
        positions.append(position)
        position += 1 if _MODULE_FOR_ACTIVATION[name] is None else 2
    return positions


def _state_dict_keys(net):
    """``[(weight_key, bias_key), ...]`` per layer, as PyTorch names them in ``to_torch(net)``."""
    return [(f"{p}.weight", f"{p}.bias") for p in _linear_positions(net.activations)]


def _layers(net):
    """``[(W, b), ...]`` views of one consistent copy of the parameters (``_io._snapshot``): a state the
    network really had, even while another thread trains it."""
    return _reference.layer_views(net.layer_sizes, _io._snapshot(net))


def to_torch(net):
    """Return a ``torch.nn.Sequential`` that computes what ``net.predict`` computes.

    Parameters
    ----------
    net : fastbp.Network

    Returns
    -------
    torch.nn.Sequential
        ``Linear`` modules (with copies of ``net.weights[l]`` and ``net.biases[l]``, in the network's
        dtype), each followed by ``nn.Sigmoid``, ``nn.ReLU`` or ``nn.Tanh``, or by nothing for an
        ``"identity"`` activation. The loss is not part of the module: ``"mse"`` corresponds to
        ``nn.MSELoss()`` and ``"cross_entropy"`` to ``nn.CrossEntropyLoss()`` on the output (the logits).
    """
    torch = _import_torch()
    nn = torch.nn
    dtype = _torch_dtype(torch, net.dtype)
    modules = []
    layers = _layers(net)
    for layer, name in enumerate(net.activations):
        n_in, n_out = net.layer_sizes[layer], net.layer_sizes[layer + 1]
        linear = nn.Linear(n_in, n_out, bias=True, dtype=dtype)
        W, b = layers[layer]
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(W, dtype=net.dtype, copy=True)))
            linear.bias.copy_(torch.from_numpy(np.array(b, dtype=net.dtype, copy=True)))
        modules.append(linear)
        module_name = _MODULE_FOR_ACTIVATION[name]
        if module_name is not None:
            modules.append(getattr(nn, module_name)())
    return nn.Sequential(*modules)


# Nested Sequentials deeper than this are refused: no real model nests so deep, and a cycle (a Sequential
# that contains itself) would otherwise never end.
_MAX_NESTING = 100


def _flatten(module, prefix=""):
    """``[(position, module), ...]`` for the leaves of a (possibly nested) ``nn.Sequential``.

    Walked with an explicit stack, not recursion, so that depth is refused with a ValueError (naming where)
    instead of a RecursionError.
    """
    torch = _import_torch()
    leaves = []
    stack = [(iter(module.named_children()), prefix)]
    while stack:
        children, where = stack[-1]
        step = next(children, None)
        if step is None:
            stack.pop()
            continue
        name, child = step
        position = f"{where}{name}"
        if isinstance(child, torch.nn.Sequential):
            if len(stack) >= _MAX_NESTING:
                raise ValueError(f"from_torch: Sequential modules nested more than {_MAX_NESTING} deep (at "
                                 f"{position[:120]}{'...' if len(position) > 120 else ''}); flatten the model")
            stack.append((iter(child.named_children()), position + "."))
        else:
            leaves.append((position, child))
    return leaves


def _check_tensor(torch, tensor, what):
    """Refuse a tensor that cannot become real float numbers: complex (TypeError: converting would drop the
    imaginary part), meta (no data), not floating point, or sparse/quantized layouts (ValueError)."""
    if tensor.is_complex():
        raise TypeError(f"{what} is a complex tensor ({tensor.dtype}); fastbp networks are real-valued and "
                        "converting would drop the imaginary parts")
    if getattr(tensor, "is_meta", False) or tensor.device.type == "meta":
        raise ValueError(f"{what} is a meta tensor (a shape without data): materialise it first "
                         "(for example module.to_empty(device='cpu') and initialise it)")
    if tensor.layout != torch.strided or getattr(tensor, "is_quantized", False):
        raise ValueError(f"{what} has layout {tensor.layout}; a dense (strided) tensor is required")
    if not tensor.is_floating_point():
        raise ValueError(f"{what} has dtype {tensor.dtype}; a floating-point tensor is required")


def _to_dtype(array, dtype, what):
    """``array`` converted to ``dtype``: a ValueError, never an overflow warning, when a value is not finite
    or does not fit (1e300 into float32, a longdouble 1e400 into float64)."""
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinity")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(array, dtype=dtype)
    if not np.all(np.isfinite(converted)):
        raise ValueError(f"{what} holds values beyond the range of {np.dtype(dtype).name}")
    return converted


def from_torch(module, *, dtype=None, loss="mse"):
    """Read the layers and parameters of a PyTorch ``nn.Sequential`` as plain data.

    ``fastbp.Network.from_torch`` builds the network from what this returns.

    Parameters
    ----------
    module : torch.nn.Sequential or torch.nn.Linear
        (A single module is read as a Sequential of one.)
        ``Linear`` layers, each followed by at most one of ``nn.Sigmoid``, ``nn.ReLU``, ``nn.Tanh``
        (no activation module means ``"identity"``). ``nn.Identity`` is ignored anywhere; nested
        ``Sequential`` modules are flattened. A ``Linear`` without bias gets zero biases.
    dtype : {"float32", "float64"} or numpy dtype, optional
        The network's dtype. Default: the dtype of the first ``Linear``'s weight (float32 or float64).
    loss : str, default "mse"
        Put in the configuration (the module itself holds no loss).

    Returns
    -------
    config : dict
        ``layer_sizes``, ``activations``, ``loss``, ``dtype``.
    params : ndarray
        The flat parameter buffer in the network's layout (per layer ``W`` row-major, then ``b``).

    Raises
    ------
    TypeError
        If ``module`` is not a ``torch.nn.Module``, or is a container other than ``Sequential`` (the order
        of its ``forward`` cannot be known).
    ValueError
        Naming the first module (its class and its position in the Sequential) that cannot be converted,
        or an inconsistency (no ``Linear`` at all, an activation before the first ``Linear``, two
        activations in a row, mismatched layer sizes, an unsupported parameter dtype).
    """
    torch = _import_torch()
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"from_torch expects a torch.nn.Sequential of Linear and activation modules, "
            f"got {type(module).__module__}.{type(module).__qualname__}"
        )
    if isinstance(module, nn.Sequential):
        leaves = _flatten(module)
    elif not list(module.children()):
        # A single leaf module (nn.Linear, or something unsupported that is then named below).
        leaves = [("0", module)]
    else:
        raise TypeError(
            f"from_torch expects a torch.nn.Sequential of Linear and activation modules, got a "
            f"{type(module).__qualname__}: the order of a custom module's forward() cannot be read; "
            f"rewrite it as nn.Sequential(nn.Linear(...), nn.ReLU(), ...)"
        )

    def unsupported(position, child, why):
        return ValueError(
            f"from_torch cannot convert module {position} ({type(child).__qualname__}: {child!r}) of the "
            f"Sequential: {why}"
        )

    linears = []  # (position, nn.Linear)
    activations = []
    for position, child in leaves:
        class_name = type(child).__name__
        if isinstance(child, nn.Identity):
            continue
        if type(child) is nn.Linear:
            if linears and child.in_features != linears[-1][1].out_features:
                raise unsupported(
                    position,
                    child,
                    f"in_features={child.in_features} but the previous Linear "
                    f"({linears[-1][0]}) has out_features={linears[-1][1].out_features}",
                )
            linears.append((position, child))
            activations.append("identity")
        elif type(child).__module__.startswith("torch.nn") and class_name in _ACTIVATION_FOR_MODULE:
            if not linears:
                raise unsupported(position, child, "an activation must follow a Linear layer")
            if activations[-1] != "identity":
                raise unsupported(
                    position, child, "two activations in a row; fastbp allows one activation per Linear layer"
                )
            activations[-1] = _ACTIVATION_FOR_MODULE[class_name]
        else:
            hint = ""
            if class_name in ("Softmax", "LogSoftmax"):
                hint = (
                    "; end the network with a Linear layer (logits) and use loss='cross_entropy', "
                    "which applies the softmax inside the loss as nn.CrossEntropyLoss does"
                )
            raise unsupported(
                position,
                child,
                "only Linear, Sigmoid, ReLU, Tanh and Identity are supported" + hint,
            )
    if not linears:
        raise ValueError("from_torch: the Sequential has no Linear layer")

    for position, linear in linears:
        for kind in ("weight", "bias"):
            tensor = getattr(linear, kind)
            if tensor is not None:
                _check_tensor(torch, tensor, f"from_torch: module {position} ({type(linear).__qualname__}) {kind}")

    if dtype is None:
        weight_dtype = linears[0][1].weight.dtype
        if weight_dtype == torch.float64:
            dtype = np.float64
        elif weight_dtype == torch.float32:
            dtype = np.float32
        else:
            raise ValueError(
                f"from_torch: the parameters are {weight_dtype}; fastbp supports float32 and float64 "
                f"(pass dtype='float32' or dtype='float64' to convert)"
            )
    dtype = np.dtype(dtype)

    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"from_torch: dtype must be float32 or float64; got {dtype}")

    def as_array(tensor, what):
        return _to_dtype(tensor.detach().cpu().to(torch.float64).numpy(), dtype, what)

    weights = [as_array(linear.weight, f"from_torch: module {position} weight") for position, linear in linears]
    biases = [
        as_array(linear.bias, f"from_torch: module {position} bias") if linear.bias is not None
        else np.zeros(linear.out_features, dtype=dtype)
        for position, linear in linears
    ]
    layer_sizes = [linears[0][1].in_features] + [linear.out_features for _, linear in linears]
    for layer, (W, b) in enumerate(zip(weights, biases)):
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ValueError(f"from_torch: the parameters of Linear layer {layer} contain NaN or infinity "
                             f"(in {dtype.name})")
    params = np.concatenate([part for W, b in zip(weights, biases) for part in (W.ravel(), b)])
    config = {"layer_sizes": layer_sizes, "activations": list(activations), "loss": loss, "dtype": dtype.name}
    return config, params


def state_dict(net):
    """The parameters under the names and shapes of ``to_torch(net).state_dict()``.

    Parameters
    ----------
    net : fastbp.Network

    Returns
    -------
    collections.OrderedDict
        ``{"0.weight": (out, in), "0.bias": (out,), "2.weight": ..., ...}``: ``torch.Tensor`` copies in the
        network's dtype when PyTorch is installed, NumPy array copies otherwise.
    """
    use_torch = _torch_available()
    if use_torch:
        import torch
    result = OrderedDict()
    layers = _layers(net)
    for layer, (weight_key, bias_key) in enumerate(_state_dict_keys(net)):
        for key, array in ((weight_key, layers[layer][0]), (bias_key, layers[layer][1])):
            copied = np.array(array, dtype=net.dtype, copy=True)
            result[key] = torch.from_numpy(copied) if use_torch else copied
    return result


def _as_numpy(key, value):
    """A state dict entry (tensor, array or nested list) as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        torch = _import_torch()
        if isinstance(value, torch.Tensor):
            _check_tensor(torch, value, f"load_state_dict: {key!r}")
        try:
            value = value.detach().cpu()
            if str(value.dtype) in ("torch.bfloat16",):
                value = value.float()
            value = value.numpy()
        except (RuntimeError, TypeError, NotImplementedError) as error:
            raise ValueError(f"load_state_dict: {key!r} cannot be read as an array ({error})") from None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"load_state_dict: {key!r} is not an array ({type(value).__name__})") from error
    if array.dtype.kind == "c":
        raise TypeError(f"load_state_dict: {key!r} is complex ({array.dtype}); fastbp networks are "
                        "real-valued and converting would drop the imaginary parts")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"load_state_dict: {key!r} has dtype {array.dtype}; a real number array is required")
    return array


def load_state_dict(net, state):
    """Copy a PyTorch-style state dict into ``net`` (keys and shapes as ``state_dict(net)`` gives them).

    Parameters
    ----------
    net : fastbp.Network
    state : mapping
        ``{"0.weight": ..., "0.bias": ..., ...}`` of ``torch.Tensor`` or array-like values, for example
        ``to_torch(net).state_dict()`` after training in PyTorch. Values are converted to the network's
        dtype.

    Raises
    ------
    TypeError
        If ``state`` is not a mapping.
    ValueError
        Naming the key: a missing key, an unexpected key, a shape that differs from the network's, a value
        that is not a finite real array. The network is unchanged when an error is raised.
    """
    if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
        raise TypeError(f"load_state_dict expects a mapping of names to tensors, got {type(state).__name__}")
    keys = _state_dict_keys(net)
    expected = [key for pair in keys for key in pair]
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"load_state_dict: missing key(s) {missing}; expected keys {expected}")
    unexpected = [key for key in state.keys() if key not in expected]
    if unexpected:
        raise ValueError(f"load_state_dict: unexpected key(s) {unexpected}; expected keys {expected}")
    weights, biases = [], []
    for layer, (weight_key, bias_key) in enumerate(keys):
        pairs = ((weight_key, net.weights[layer], weights), (bias_key, net.biases[layer], biases))
        for key, target, out in pairs:
            array = _as_numpy(key, state[key])
            if array.shape != target.shape:
                raise ValueError(
                    f"load_state_dict: {key!r} has shape {tuple(array.shape)}, the network expects "
                    f"{tuple(target.shape)}"
                )
            out.append(_to_dtype(array, net.dtype, f"load_state_dict: {key!r}"))
    net.set_params(weights, biases)
