"""The textbook example ``scalar-1-1-1``, by hand and by fastbp, side by side.

One input, one sigmoid hidden unit, one linear output, loss ``1/2 (y - yhat)^2``, one example ``x = 1``,
``y = 0.5``, weights ``w1 = 0.5``, ``w2 = 1``, biases 0, plain SGD with learning rate 1:

1. the step computed by hand with nothing but ``math`` (every line a student would write);
2. the same quantities from ``net.trace``, in a table next to the hand values;
3. ``fastbp.explain_step``: the whole step as tables (forward, backward, update, check);
4. (not with ``--quick``) the same step repeated until the loss is essentially zero.

    python examples/worked_example_by_hand.py [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import fastbp

X_VALUE, Y_VALUE, LR = 1.0, 0.5, 1.0
W1, B1, W2, B2 = 0.5, 0.0, 1.0, 0.0


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the repeated steps (part 4)")
    parser.add_argument("--markdown", action="store_true", help="print the explain_step report as Markdown")
    return parser.parse_args(argv)


def by_hand() -> dict:
    """One SGD step with pencil-and-paper arithmetic: the chain rule, one line at a time."""
    z1 = W1 * X_VALUE + B1                    # hidden pre-activation
    a1 = 1.0 / (1.0 + math.exp(-z1))          # sigmoid
    z2 = W2 * a1 + B2                         # output pre-activation
    yhat = z2                                 # identity output
    loss = 0.5 * (Y_VALUE - yhat) ** 2
    delta2 = yhat - Y_VALUE                   # dL/dz2 = dL/dyhat * 1
    delta1 = W2 * delta2 * a1 * (1.0 - a1)    # dL/dz1 = dL/da1 * sigmoid'(z1)
    grads = {"w1": delta1 * X_VALUE, "b1": delta1, "w2": delta2 * a1, "b2": delta2}
    new = {"w1": W1 - LR * grads["w1"], "b1": B1 - LR * grads["b1"],
           "w2": W2 - LR * grads["w2"], "b2": B2 - LR * grads["b2"]}
    a1_after = 1.0 / (1.0 + math.exp(-(new["w1"] * X_VALUE + new["b1"])))
    yhat_after = new["w2"] * a1_after + new["b2"]
    return {"z1": z1, "a1": a1, "z2": z2, "yhat": yhat, "loss": loss, "delta1": delta1, "delta2": delta2,
            **{"dL/d" + k: v for k, v in grads.items()}, **{"new " + k: v for k, v in new.items()},
            "loss after": 0.5 * (Y_VALUE - yhat_after) ** 2}


def make_network() -> fastbp.Network:
    net = fastbp.Network([1, 1, 1], ["sigmoid", "identity"], loss="half_sse", dtype="float64")
    net.set_params(weights=[np.array([[W1]]), np.array([[W2]])], biases=[np.array([B1]), np.array([B2])])
    return net


def by_fastbp() -> dict:
    """The same numbers from ``net.trace`` (before the step) and from the network after one SGD step."""
    net = make_network()
    X, Y = np.array([[X_VALUE]]), np.array([[Y_VALUE]])
    t = net.trace(X, Y)
    values = {"z1": t.pre_activations[0][0, 0], "a1": t.activations[0][0, 0],
              "z2": t.pre_activations[1][0, 0], "yhat": t.output[0, 0], "loss": t.loss,
              "delta1": t.deltas[0][0, 0], "delta2": t.deltas[1][0, 0],
              "dL/dw1": t.grad_weights[0][0, 0], "dL/db1": t.grad_biases[0][0],
              "dL/dw2": t.grad_weights[1][0, 0], "dL/db2": t.grad_biases[1][0]}
    fastbp.SGD(net, LR).train_step(X, Y)
    values.update({"new w1": net.weights[0][0, 0], "new b1": net.biases[0][0],
                   "new w2": net.weights[1][0, 0], "new b2": net.biases[1][0], "loss after": net.loss(X, Y)})
    return {k: float(v) for k, v in values.items()}


def main(argv=None) -> int:
    """Print the hand calculation, fastbp's values and the explain_step tables; 0 when they agree."""
    args = _parse(argv)
    print(f"scalar-1-1-1: x = {X_VALUE}, y = {Y_VALUE}, w1 = {W1}, b1 = {B1}, w2 = {W2}, b2 = {B2}, "
          f"sigmoid hidden unit, linear output, loss 1/2 (y - yhat)^2, lr = {LR}")
    print()
    print("Parts 1 and 2: the step by hand and by fastbp (net.trace, then SGD.train_step)")
    hand, lib = by_hand(), by_fastbp()
    print(f"  {'quantity':<12}{'by hand':>18}{'fastbp':>18}{'|difference|':>15}")
    print(f"  {'-' * 10:<12}{'-' * 16:>18}{'-' * 16:>18}{'-' * 13:>15}")
    worst = 0.0
    for name, value in hand.items():
        difference = abs(value - lib[name])
        worst = max(worst, difference)
        print(f"  {name:<12}{value:>18.12f}{lib[name]:>18.12f}{difference:>15.1e}")
    agrees = worst < 1e-12
    print(f"largest difference {worst:.1e}: hand calculation and fastbp agree: {'yes' if agrees else 'NO'}")

    print()
    print("Part 3: fastbp.explain_step(net, x, y, lr)")
    print()
    report = fastbp.explain_step(make_network(), np.array([X_VALUE]), np.array([Y_VALUE]), LR, decimals=10)
    print(report.to_markdown() if args.markdown else report)

    if not args.quick:
        print()
        print("Part 4: the same step, repeated")
        net = make_network()
        opt = fastbp.SGD(net, LR)
        X, Y = np.array([[X_VALUE]]), np.array([[Y_VALUE]])
        for step in range(1, 51):
            loss = opt.train_step(X, Y)
            if step in (1, 2, 5, 10, 20, 50):
                print(f"  step {step:>2}: loss before the step {loss:.3e}")
        print(f"  after 50 steps: loss {net.loss(X, Y):.3e}, output {float(net.predict(X)[0, 0]):.12f}")

    print()
    print(f"loss before the step: {hand['loss']:.10f}; after: {hand['loss after']:.10f}")
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
