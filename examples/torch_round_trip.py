"""fastbp -> PyTorch -> fastbp: the same network, the same predictions, the same SGD step.

1. ``net.to_torch()`` gives a ``torch.nn.Sequential`` (``Linear``, ``Tanh``, ``Linear``) with the same
   parameters: its predictions equal fastbp's to rounding in float64.
2. One training step in PyTorch (``CrossEntropyLoss``, ``torch.optim.SGD`` with momentum) and the same step
   in fastbp (``fastbp.SGD(...).train_step``) on a copy of the network.
3. ``fastbp.Network.from_torch(module)`` brings PyTorch's updated parameters back; they equal fastbp's own
   updated parameters to rounding, and so do ``state_dict`` keys and shapes::

    python examples/torch_round_trip.py [--quick] [--steps N]

Needs PyTorch, which you install yourself (a CPU build is enough): fastbp has no ``torch`` extra because an
unpinned ``torch`` requirement pulls a multi-GB CUDA build on Linux.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastbp


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one step (the default is 5), for tests")
    parser.add_argument("--steps", type=int, default=None, help="training steps on each side")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the initialisation")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Round-trip and compare; print the largest differences. Returns 0 when all agree to 1e-12."""
    args = _parse(argv)
    steps = args.steps if args.steps is not None else (1 if args.quick else 5)
    try:
        import torch
    except ImportError:
        print("this example needs PyTorch: install it for your platform (pytorch.org)", file=sys.stderr)
        return 1

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(32, 4))                  # a batch of 32 examples, 4 features
    y = rng.integers(0, 3, size=32)               # 3 classes, as class indices
    net = fastbp.Network([4, 8, 3], ["tanh", "identity"], loss="cross_entropy", dtype="float64",
                         seed=args.seed)
    lr, momentum = 0.1, 0.9

    # 1. fastbp -> PyTorch: same parameters, same predictions.
    module = net.to_torch()
    print(f"to_torch: {module}".replace("\n", "\n  "))
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    with torch.no_grad():
        torch_out = module(X_t).numpy()
    predict_diff = float(np.max(np.abs(torch_out - net.predict(X))))
    print(f"predictions: max |fastbp - torch| = {predict_diff:.1e}")

    # 2. The same training steps on both sides, from the same starting point.
    torch_opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)
    criterion = torch.nn.CrossEntropyLoss()
    fast_net = net.copy()
    fast_opt = fastbp.SGD(fast_net, lr, momentum=momentum)
    for step in range(steps):
        torch_opt.zero_grad()
        loss = criterion(module(X_t), y_t)
        loss.backward()
        torch_opt.step()
        fast_loss = fast_opt.train_step(X, y)
        print(f"step {step + 1}: loss before the step: torch {loss.item():.12f}, fastbp {fast_loss:.12f}")

    # 3. PyTorch -> fastbp: bring the trained parameters back and compare.
    back = fastbp.Network.from_torch(module, loss="cross_entropy")
    print(f"from_torch: {back.layer_sizes} {back.activations}, dtype {back.dtype}")
    param_diff = float(np.max(np.abs(back.params - fast_net.params)))
    print(f"parameters after {steps} step(s): max |from_torch(module) - fastbp| = {param_diff:.1e}")
    after_diff = float(np.max(np.abs(back.predict(X) - fast_net.predict(X))))
    print(f"predictions after training: max difference {after_diff:.1e}")

    # state_dict: PyTorch's key names and shapes, loadable in both directions.
    ours, theirs = fast_net.state_dict(), module.state_dict()
    same_keys = list(ours) == list(theirs) and all(
        tuple(np.shape(ours[k])) == tuple(theirs[k].shape) for k in ours)
    print(f"state_dict keys {list(ours)}: same keys and shapes as torch: {'yes' if same_keys else 'NO'}")
    restored = fastbp.Network([4, 8, 3], ["tanh", "identity"], loss="cross_entropy", dtype="float64")
    restored.load_state_dict(theirs)
    state_diff = float(np.max(np.abs(restored.params - back.params)))
    print(f"load_state_dict(module.state_dict()): max difference {state_diff:.1e}")

    worst = max(predict_diff, param_diff, after_diff, state_diff)
    agrees = worst < 1e-12 and same_keys
    print(f"round trip agrees to 1e-12: {'yes' if agrees else 'NO'} (largest difference {worst:.1e})")
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
