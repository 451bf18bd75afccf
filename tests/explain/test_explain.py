"""fastbp.explain_step: every row of the report against the worked examples' exact values, the changed and
unchanged parameters with their reasons, dry runs, batches, Markdown and data output, and a golden text file.

The golden file is regenerated with ``FASTBP_UPDATE_GOLDEN=1 pytest tests/test_explain.py``; read the diff
before committing it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest

import fastbp
from _support import DATA, WORKED_EXAMPLES, example_ids, example_net, load_example

EXACT = {"rtol": 1e-12, "atol": 1e-12}
GOLDEN = DATA / "golden" / "sigmoid-2-2-1.txt"


def close(actual, expected, what):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), err_msg=what, **EXACT
    )


@pytest.fixture(params=WORKED_EXAMPLES, ids=example_ids())
def spec(request):
    return load_example(request.param)


def test_worked_examples_are_present():
    assert {path.stem for path in WORKED_EXAMPLES} >= {"sigmoid-2-2-1", "scalar-1-1-1", "house-2-2-1"}


# --------------------------------------------------------------------------------------------------------
# Every row against the exact values
# --------------------------------------------------------------------------------------------------------


def test_every_row_matches_the_worked_example(spec, backend):
    expected = spec["expected"]
    sizes = spec["layer_sizes"]
    n_layers = len(sizes) - 1
    net = example_net(spec, backend)
    report = fastbp.explain_step(net, spec["x"], spec["y"], spec["lr"])

    # setup
    assert report.layer_sizes == sizes
    assert report.activation_names == spec["activations"]
    assert report.loss_name == spec["loss"]
    assert report.lr == spec["lr"]
    assert report.single_example and report.batch_size == 1
    close(report.inputs[0], spec["x"], "x")
    close(report.targets[0], spec["y"], "y")
    for l in range(n_layers):
        close(report.old_weights[l], spec["weights"][l], f"old W{l + 1}")
        close(report.old_biases[l], spec["biases"][l], f"old b{l + 1}")

    # forward pass: one row per neuron, layer by layer
    assert [(r.layer, r.neuron) for r in report.forward_rows] == [
        (l + 1, j) for l in range(n_layers) for j in range(sizes[l + 1])
    ]
    for row in report.forward_rows:
        close(row.z, expected["pre_activations"][row.layer - 1][row.neuron], f"z{row.layer}[{row.neuron}]")
        close(row.a, expected["activations"][row.layer - 1][row.neuron], f"a{row.layer}[{row.neuron}]")
        assert row.example == 0
    close(report.output[0], expected["output"], "output")
    close(report.loss_before, expected["loss"], "loss")

    # backward pass: dL/d(output) (half_sse, one example: yhat - y), deltas last layer first, gradients
    for row in report.output_gradient_rows:
        close(row.gradient, expected["output"][row.output] - spec["y"][row.output], "dL/d(yhat)")
        close(row.prediction, expected["output"][row.output], "yhat")
        close(row.target, spec["y"][row.output], "y")
    assert [(r.layer, r.neuron) for r in report.backward_rows] == [
        (l + 1, j) for l in reversed(range(n_layers)) for j in range(sizes[l + 1])
    ]
    for row in report.backward_rows:
        close(row.delta, expected["deltas"][row.layer - 1][row.neuron], f"delta{row.layer}[{row.neuron}]")
        close(row.upstream * row.derivative, row.delta, "delta = dL/da * f'(z)")
    assert len(report.gradient_rows) == sum(o * i + o for i, o in zip(sizes[:-1], sizes[1:]))
    for row in report.gradient_rows:
        if row.kind == "weight":
            close(row.gradient, expected["grad_weights"][row.layer - 1][row.neuron][row.input], row.name)
            close(row.delta * row.input_value, row.gradient, f"{row.name} = delta * input")
        else:
            close(row.gradient, expected["grad_biases"][row.layer - 1][row.neuron], row.name)
            close(row.delta, row.gradient, f"{row.name} = delta")

    # update table: every parameter, in params order, with old, gradient, lr * gradient, new
    names = [r.name for r in report.update_rows]
    assert names == [
        name
        for l in range(n_layers)
        for name in [f"W{l + 1}[{j}][{i}]" for j in range(sizes[l + 1]) for i in range(sizes[l])]
        + [f"b{l + 1}[{j}]" for j in range(sizes[l + 1])]
    ]
    for row in report.update_rows:
        l = row.layer - 1
        if row.kind == "weight":
            old = spec["weights"][l][row.neuron][row.input]
            gradient = expected["grad_weights"][l][row.neuron][row.input]
            new = expected["new_weights"][l][row.neuron][row.input]
        else:
            old = spec["biases"][l][row.neuron]
            gradient = expected["grad_biases"][l][row.neuron]
            new = expected["new_biases"][l][row.neuron]
        close(row.old, old, f"{row.name} old")
        close(row.gradient, gradient, f"{row.name} gradient")
        close(row.step, spec["lr"] * gradient, f"{row.name} lr * gradient")
        close(row.new, new, f"{row.name} new")
        assert row.changed == (new != old), row.name

    # the check: a second forward pass
    for row in report.check_rows:
        close(row.before, expected["output"][row.output], "output before")
        close(row.after, expected["output_after"][row.output], "output after")
        assert row.target == spec["y"][row.output]
        assert row.moved_toward, "one SGD step on one example moves the output toward its target here"
    close(report.loss_after, expected["loss_after"], "loss after")
    close(
        report.loss_change_percent, 100 * (expected["loss_after"] - expected["loss"]) / expected["loss"], "%"
    )
    assert report.loss_after < report.loss_before

    # the network itself took the step
    for l in range(n_layers):
        close(net.weights[l], expected["new_weights"][l], f"net W{l + 1}")
        close(net.biases[l], expected["new_biases"][l], f"net b{l + 1}")


def test_changed_and_unchanged_counts(spec, backend):
    report = fastbp.explain_step(example_net(spec, backend), spec["x"], spec["y"], spec["lr"])
    expected = spec["expected"]
    unchanged = set()
    for l, (W, W_new) in enumerate(zip(spec["weights"], expected["new_weights"])):
        for j, (row, row_new) in enumerate(zip(W, W_new)):
            unchanged |= {
                f"W{l + 1}[{j}][{i}]" for i, (v, v_new) in enumerate(zip(row, row_new)) if v == v_new
            }
        unchanged |= {
            f"b{l + 1}[{j}]"
            for j, (v, v_new) in enumerate(zip(spec["biases"][l], expected["new_biases"][l]))
            if v == v_new
        }
    assert {r.name for r in report.unchanged_rows} == unchanged
    assert report.n_changed + report.n_unchanged == report.n_parameters
    assert f"{report.n_changed} of {report.n_parameters} parameters changed" in str(report)
    for row in report.unchanged_rows:
        assert row.reason, f"{row.name} kept its value with no reason given"


def test_sigmoid_2_2_1_seven_of_nine_change_and_the_report_says_why(backend):
    spec = load_example(DATA / "worked-examples" / "sigmoid-2-2-1.json")
    report = fastbp.explain_step(example_net(spec, backend), spec["x"], spec["y"], spec["lr"])
    assert report.n_parameters == 9
    assert report.n_changed == 7
    assert report.n_unchanged == 2
    assert [r.name for r in report.unchanged_rows] == ["W1[0][1]", "W1[1][1]"]
    for row in report.unchanged_rows:
        assert row.reason_codes == ("zero_input",)
        assert "x[1] = 0" in row.reason
        assert row.gradient == 0 and row.new == row.old
    text = str(report)
    assert "7 of 9 parameters changed; 2 did not:" in text
    assert "W1[0][1]   zero input: x[1] = 0" in text
    assert report.dead_neurons == []


# --------------------------------------------------------------------------------------------------------
# Reasons on a hand-built ReLU network
# --------------------------------------------------------------------------------------------------------


def relu_net(backend, dtype="float64"):
    """2-3-1, ReLU hidden, identity output, x = (1, 0), y = 2.

    z1 = (1.1, -0.8, 0.5): neuron 1 is dead. Neuron 2 is alive but its outgoing weight W2[0][2] is 0, so its
    delta is 0 (zero upstream delta). Input x[1] is 0.
    """
    net = fastbp.Network([2, 3, 1], ["relu", "identity"], loss="half_sse", dtype=dtype, backend=backend)
    net.set_params(
        [np.array([[1.0, 0.5], [-1.0, 0.3], [0.5, -0.2]]), np.array([[0.4, 0.7, 0.0]])],
        [np.array([0.1, 0.2, 0.0]), np.array([0.1])],
    )
    return net


def test_dead_relu_zero_input_and_zero_upstream_delta_reasons(backend):
    report = fastbp.explain_step(relu_net(backend), [1.0, 0.0], [2.0], 0.1)
    reasons = {row.name: row.reason_codes for row in report.unchanged_rows}
    assert reasons == {
        "W1[0][1]": ("zero_input",),
        "W1[1][0]": ("dead_relu",),
        "W1[1][1]": ("zero_input", "dead_relu"),
        "b1[1]": ("dead_relu",),
        "W1[2][0]": ("zero_upstream_delta",),
        "W1[2][1]": ("zero_input", "zero_upstream_delta"),
        "b1[2]": ("zero_upstream_delta",),
        "W2[0][1]": ("dead_relu",),  # its input a1[1] comes from the dead neuron
    }
    assert {row.name for row in report.changed_rows} == {"W1[0][0]", "b1[0]", "W2[0][0]", "W2[0][2]", "b2[0]"}
    assert report.n_parameters == 13 and report.n_changed == 5 and report.n_unchanged == 8
    assert report.dead_neurons == ["layer 1 neuron 1 (a1[1])"]
    by_name = {row.name: row for row in report.update_rows}
    assert "z1[1] <= 0" in by_name["b1[1]"].reason
    assert "a1[1]" in by_name["W2[0][1]"].reason and "dead ReLU" in by_name["W2[0][1]"].reason
    assert "W2[k][2]" in by_name["b1[2]"].reason
    text = str(report)
    assert "dead ReLU neurons (z <= 0 on every example): layer 1 neuron 1 (a1[1])" in text
    # the dead neuron's row in the backward table shows relu'(z) = 0
    dead_row = [r for r in report.backward_rows if r.layer == 1 and r.neuron == 1][0]
    assert dead_row.derivative == 0 and dead_row.delta == 0


def test_output_equal_to_target_changes_nothing(backend):
    net = relu_net(backend)
    target = net.predict(np.array([1.0, 0.0]))
    report = fastbp.explain_step(net, [1.0, 0.0], target, 0.1)
    assert report.n_changed == 0
    assert report.loss_before == 0 and report.loss_change_percent is None
    assert "dL/d(yhat[0]) = 0" in report.update_rows[-1].reason
    assert all(row.direction == "unchanged" for row in report.check_rows)
    assert "n/a (the loss before was 0)" in str(report)


def test_batch_contributions_that_cancel(backend):
    # x[1] is +1 on one example and -1 on the other with the same delta: W1[j][1]'s gradient sums to 0.
    net = fastbp.Network([2, 1], ["identity"], loss="half_sse", backend=backend)
    net.set_params([np.array([[0.5, 0.0]])], [np.array([0.0])])
    report = fastbp.explain_step(net, [[1.0, 1.0], [1.0, -1.0]], [[0.0], [0.0]], 0.1)
    assert report.unchanged_reasons.keys() == {"W1[0][1]"}
    assert report.unchanged_rows[0].reason_codes == ("cancelled",)


def kink_batch_net(backend):
    """2-2-1, relu hidden, identity output, half_sse, on two examples chosen so that W1[0][0]'s two terms
    are both 0 for different reasons: example 0 has x[0] = 0 (neuron 0 active, z1[0] = 1); example 1 has
    z1[0] = 1 * 1 + 1 * 0 - 1 = 0 exactly, the ReLU kink (relu'(0) = 0, so delta1[0] = 0)."""
    net = fastbp.Network([2, 2, 1], ["relu", "identity"], loss="half_sse", backend=backend)
    net.set_params([np.array([[1.0, 1.0], [0.5, 0.25]]), np.array([[0.5, -0.5]])],
                   [np.array([-1.0, 0.0]), np.array([0.0])])
    return net, np.array([[0.0, 2.0], [1.0, 0.0]]), np.array([[1.0], [2.0]])


def test_terms_zero_by_a_kink_and_a_zero_input_are_not_called_a_cancellation(backend):
    net, X, Y = kink_batch_net(backend)
    report = fastbp.explain_step(net, X, Y, 0.1)
    by_name = {row.name: row for row in report.update_rows}
    row = by_name["W1[0][0]"]
    assert not row.changed and row.reason_codes == ("zero_terms",)
    assert "cancel" not in row.reason.replace("nothing cancels", "")
    assert "example 0: x[0] = 0" in row.reason
    assert "example 1: delta1[0] = 0 because z1[0] = 0 is exactly the ReLU kink" in row.reason
    # By hand: example 0's delta1[0] = (yhat - y) * W2[0][0] * relu'(1) with yhat = 0.5 * 1 - 0.5 * 0.5
    yhat0 = 0.5 * 1.0 - 0.5 * (0.5 * 0.0 + 0.25 * 2.0)
    delta0 = (yhat0 - 1.0) / 2 * 0.5  # half_sse's mean over B = 2
    assert report.deltas[0][0, 0] == pytest.approx(delta0, rel=1e-12) and report.deltas[0][1, 0] == 0
    # The bias of the same neuron is not zero (example 0's delta) and changed; the kink is not hidden there.
    assert by_name["b1[0]"].changed
    assert "cancel" not in str(report).replace("nothing cancels", "")


def test_relu_exactly_at_its_kink_on_one_example_says_so(backend):
    net, X, Y = kink_batch_net(backend)
    report = fastbp.explain_step(net, X[1], Y[1], 0.1)
    by_name = {row.name: row for row in report.update_rows}
    assert by_name["b1[0]"].reason_codes == ("relu_kink",)
    assert "z1[0] = 0 exactly" in by_name["b1[0]"].reason and "relu'(0) = 0" in by_name["b1[0]"].reason


def test_cancelling_terms_still_say_cancel(backend):
    net = fastbp.Network([2, 1], ["identity"], loss="half_sse", backend=backend)
    net.set_params([np.array([[0.5, 0.0]])], [np.array([0.0])])
    report = fastbp.explain_step(net, [[1.0, 1.0], [1.0, -1.0]], [[0.0], [0.0]], 0.1)
    row = report.unchanged_rows[0]
    assert row.reason_codes == ("cancelled",) and "not all 0" in row.reason
    terms = {r.name: r.terms for r in report.gradient_rows}["W1[0][1]"]
    assert terms[0] == -terms[1] != 0


def test_per_example_terms_are_what_the_gradient_adds_up(backend):
    rng = np.random.default_rng(7)
    net = fastbp.Network([3, 4, 2], ["relu", "identity"], loss="mse", seed=3, backend=backend)
    X, Y = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    trace = net.trace(X, Y)
    report = fastbp.explain_step(net, X, Y, 0.1, per_example=True, dry_run=True)
    rows = {row.name: row for row in report.gradient_rows}
    # Independent truth: the gradient by PyTorch-free finite differences, and the terms by hand from the
    # trace's deltas and activations.
    for l, (n_in, n_out) in enumerate([(3, 4), (4, 2)]):
        inputs = X if l == 0 else trace.activations[l - 1]
        for j in range(n_out):
            for i in range(n_in):
                row = rows[f"W{l + 1}[{j}][{i}]"]
                expected = [trace.deltas[l][b, j] * inputs[b, i] for b in range(3)]
                np.testing.assert_allclose(row.terms, expected, rtol=1e-14, atol=0)
                assert sum(row.terms) == pytest.approx(row.gradient, rel=1e-12, abs=1e-15)
            bias = rows[f"b{l + 1}[{j}]"]
            np.testing.assert_allclose(bias.terms, trace.deltas[l][:, j], rtol=0, atol=0)
    gradients = fastbp.check_gradients(net, X, Y)
    np.testing.assert_allclose([sum(rows[f"W1[{j}][{i}]"].terms) for j in range(4) for i in range(3)],
                               gradients.per_layer[0].numeric_weights.ravel(), rtol=1e-6, atol=1e-9)
    text = str(report)
    assert "the terms, one per example" in text and "b=0" in text and "gradient (sum)" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("W2[1][3] "))
    cells = line.split()
    assert cells[1:4] == [f"{t:.4f}".replace("-0.0000", "0.0000") for t in rows["W2[1][3]"].terms]
    assert "| b=0 |" in report.to_markdown()
    # Without the option the table shows the sums only; the data hold the terms either way.
    plain = fastbp.explain_step(net, X, Y, 0.1, dry_run=True)
    assert "b=0" not in str(plain) and plain.gradient_rows[0].terms == report.gradient_rows[0].terms
    with pytest.raises(TypeError, match="per_example"):
        fastbp.explain_step(net, X, Y, 0.1, per_example="yes")


@pytest.mark.parametrize("loss, link, lr", [
    ("binary_cross_entropy", lambda z: 1 / (1 + np.exp(-z)), 0.5),
    ("poisson", np.exp, 0.1),
])
def test_check_compares_what_the_loss_compares(loss, link, lr, backend):
    # One weight, identity output: for BCE the logit 2 moves up toward target 1 (the probability moves
    # toward 1 while the raw logit moves away from 1); for Poisson the log rate 0 moves down toward the
    # target rate 0.5 (the rate exp(z) moves toward 0.5 while the raw log rate moves away from it).
    net = fastbp.Network([1, 1], ["identity"], loss=loss, backend=backend)
    target = 1.0 if loss == "binary_cross_entropy" else 0.5
    net.set_params([np.array([[2.0 if loss == "binary_cross_entropy" else 0.0]])], [np.array([0.0])])
    report = fastbp.explain_step(net, [1.0], [target], lr)
    (row,) = report.check_rows
    z_before, z_after = float(report.output[0, 0]), float(report.output_after[0, 0])
    assert row.before == pytest.approx(link(z_before), rel=1e-12)
    assert row.after == pytest.approx(link(z_after), rel=1e-12)
    assert abs(z_after - target) > abs(z_before - target)  # the raw output moved away...
    assert row.direction == "toward" and report.loss_after < report.loss_before  # ...what the loss sees did not
    word = "probabilities sigmoid(yhat)" if loss == "binary_cross_entropy" else "rates exp(yhat)"
    assert word in str(report)


# --------------------------------------------------------------------------------------------------------
# Modes and formats
# --------------------------------------------------------------------------------------------------------


def test_dry_run_leaves_the_network_alone(spec, backend):
    net = example_net(spec, backend)
    before = net.params.copy()
    report = fastbp.explain_step(net, spec["x"], spec["y"], spec["lr"], dry_run=True)
    np.testing.assert_array_equal(net.params, before)
    close(report.new_weights[0], spec["expected"]["new_weights"][0], "new W1")
    close(report.loss_after, spec["expected"]["loss_after"], "loss after")
    assert "dry run" in str(report)


def test_mini_batch_is_one_step_on_the_batch_gradient(backend):
    rng = np.random.default_rng(4)
    net = fastbp.Network([3, 4, 2], ["tanh", "sigmoid"], loss="mse", seed=1, backend=backend)
    X, Y = rng.normal(size=(5, 3)), rng.uniform(size=(5, 2))
    reference = net.copy()
    gradients = reference.gradients(X, Y)
    fastbp.SGD(reference, 0.3).step(gradients)
    report = fastbp.explain_step(net, X, Y, 0.3)
    assert not report.single_example and report.batch_size == 5
    np.testing.assert_array_equal(net.params, reference.params)
    for l in range(2):
        close(report.grad_weights[l], gradients.weights[l], "batch gradient")
        assert report.pre_activations[l].shape == (5, net.layer_sizes[l + 1])
    assert len(report.forward_rows) == 5 * (4 + 2)
    assert len(report.check_rows) == 5 * 2
    assert all(row.delta is None for row in report.gradient_rows)  # a sum over examples, not one product
    close(report.loss_before, gradients.loss, "loss before")
    close(report.loss_after, reference.loss(X, Y), "loss after")
    assert re.search(r"^ +example +neuron +z1 +a1$", str(report), re.MULTILINE)


def test_cross_entropy_with_class_indices(backend):
    net = fastbp.Network([2, 3, 3], ["relu", "identity"], loss="cross_entropy", seed=3, backend=backend)
    X = np.array([[0.5, -1.0], [1.0, 2.0]])
    report = fastbp.explain_step(net, X, np.array([2, 0]), 0.5)
    np.testing.assert_array_equal(report.targets, [[0, 0, 1], [1, 0, 0]])
    probabilities = [r.before for r in report.check_rows]
    np.testing.assert_allclose(np.reshape(probabilities, (2, 3)).sum(axis=1), 1.0)
    assert report.loss_after < report.loss_before
    single = fastbp.explain_step(net, X[0], 2, 0.5, dry_run=True)
    assert single.target_classes.tolist() == [2]
    assert "(class 2, one-hot)" in str(single)


def test_float32_network(backend):
    spec = load_example(WORKED_EXAMPLES[0])
    net = example_net(spec, backend, dtype="float32")
    report = fastbp.explain_step(net, spec["x"], spec["y"], spec["lr"])
    assert report.dtype == "float32"
    for row, value in zip(report.update_rows, net.params):
        assert row.new == float(value)
    np.testing.assert_allclose(report.loss_after, spec["expected"]["loss_after"], rtol=1e-5)


def test_decimals_markdown_and_data(backend):
    spec = load_example(DATA / "worked-examples" / "sigmoid-2-2-1.json")
    report = fastbp.explain_step(example_net(spec, backend), spec["x"], spec["y"], spec["lr"], decimals=6)
    text = str(report)
    assert "0.645656" in text and "0.6457 " not in text
    assert "0.6457" in report.render(decimals=4)

    markdown = report.to_markdown()
    assert markdown.startswith("## One SGD step, explained\n")
    for number, heading in enumerate(
        ("Setup", "Forward pass", "Backward pass", "Update", "Summary", "Check"), 1
    ):
        assert f"\n### {number}. {heading}\n" in markdown
    assert "| parameter | old | gradient | lr * gradient | new | changed |" in markdown
    assert "| W1[0][0] | 0.500000 | -0.017235 | -0.008617 | 0.508617 | yes |" in markdown
    assert "| W1[0][1] | -0.300000 | 0.000000 | 0.000000 | -0.300000 | no |" in markdown
    assert "Traceback" not in markdown

    data = report.as_dict()
    json.dumps(data)  # plain values only
    assert data["summary"]["changed"] == 7 and data["summary"]["unchanged"] == 2
    assert data["summary"]["unchanged_reasons"]["W1[0][1]"].startswith("zero input")
    rows = data["update"]["rows"]
    assert rows[0]["name"] == "W1[0][0]" and rows[0]["changed"] is True
    assert rows[1]["reasons"][0]["code"] == "zero_input"
    assert data["check"]["rows"][0]["moved_toward"] is True
    close(data["check"]["loss_after"], spec["expected"]["loss_after"], "loss after")


def test_bad_arguments_leave_the_network_unchanged(backend):
    net = relu_net(backend)
    before = net.params.copy()
    with pytest.raises(ValueError, match="x has 3 inputs"):
        fastbp.explain_step(net, [1.0, 0.0, 2.0], [1.0], 0.1)
    with pytest.raises(ValueError, match="y must have shape"):
        fastbp.explain_step(net, [1.0, 0.0], [1.0, 2.0], 0.1)
    with pytest.raises(TypeError, match="lr"):
        fastbp.explain_step(net, [1.0, 0.0], [1.0], "0.1")
    with pytest.raises(ValueError):
        fastbp.explain_step(net, [1.0, 0.0], [1.0], -0.1)
    with pytest.raises(ValueError, match="decimals"):
        fastbp.explain_step(net, [1.0, 0.0], [1.0], 0.1, decimals=-1)
    np.testing.assert_array_equal(net.params, before)


def test_golden_text(backend):
    spec = load_example(DATA / "worked-examples" / "sigmoid-2-2-1.json")
    text = str(fastbp.explain_step(example_net(spec, backend), spec["x"], spec["y"], spec["lr"]))
    if os.environ.get("FASTBP_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_documented_output_is_what_the_command_prints():
    """docs/EXPLAIN.md shows the golden text verbatim."""
    readme = pathlib.Path(__file__).resolve().parents[2] / "docs" / "EXPLAIN.md"
    command = "$ fastbp explain tests/data/worked-examples/sigmoid-2-2-1.json\n"
    text = readme.read_text(encoding="utf-8")
    assert command in text, "docs/EXPLAIN.md no longer shows the explain example"
    shown = text.split(command, 1)[1].split("```", 1)[0]
    assert shown == GOLDEN.read_text(encoding="utf-8"), "docs/EXPLAIN.md is out of date with the golden file"


def test_overflowing_gradient_is_a_floating_point_error(backend):
    """A gradient that overflows is divergence, not bad input: FloatingPointError, the network unchanged."""
    net = fastbp.Network([2, 1], "identity", loss="half_sse", dtype="float32", seed=0, backend=backend)
    net.set_params([np.array([[3e38, 3e38]], dtype=np.float32)], [np.zeros(1, dtype=np.float32)])
    before = net.params.tobytes()
    with pytest.raises(FloatingPointError, match="gradient overflowed"):
        fastbp.explain_step(net, [1e30, 1e30], [0.0], 0.5)
    assert net.params.tobytes() == before


@pytest.mark.parametrize("loss", ["half_sse", "mse", "cross_entropy", "binary_cross_entropy", "poisson"])
def test_trace_carries_every_chain_rule_term_as_pytorch_computes_it(backend, loss):
    """``net.trace`` holds f'(z), dL/da, dL/d(output) and the deltas that reports read: PyTorch's autograd
    in float64 is the independent truth (dL/da and dL/dz of every layer, retained by ``retain_grad``)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    last = "sigmoid" if loss in ("half_sse", "mse") else "identity"
    net = fastbp.Network([3, 5, 4, 2], ["tanh", "relu", last], loss=loss, seed=5, backend=backend)
    X = rng.normal(size=(4, 3))
    if loss == "cross_entropy":
        Y = np.eye(2)[rng.integers(0, 2, size=4)]
    elif loss == "poisson":
        Y = rng.poisson(1.5, size=(4, 2)).astype(float)
    else:
        Y = rng.uniform(size=(4, 2))
    trace = net.trace(X, Y)

    a = torch.tensor(X)
    zs, activations = [], []
    functions = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda z: z}
    for W, b, name in zip(net.weights, net.biases, net.activations):
        z = a @ torch.tensor(W, requires_grad=True).T + torch.tensor(b, requires_grad=True)
        a = functions[name](z)
        z.retain_grad()
        a.retain_grad()
        zs.append(z)
        activations.append(a)
    target = torch.tensor(Y)
    out = activations[-1]
    value = {
        "half_sse": lambda: 0.5 * ((out - target) ** 2).sum() / out.shape[0],
        "mse": lambda: torch.nn.functional.mse_loss(out, target),
        "cross_entropy": lambda: torch.nn.functional.cross_entropy(out, target),
        "binary_cross_entropy": lambda: torch.nn.functional.binary_cross_entropy_with_logits(out, target),
        "poisson": lambda: torch.nn.functional.poisson_nll_loss(out, target, log_input=True),
    }[loss]()
    value.backward()

    close = {"rtol": 1e-10, "atol": 1e-12}
    assert trace.loss == pytest.approx(value.item(), rel=1e-12)
    np.testing.assert_allclose(trace.output_gradient, out.grad.numpy(), **close)
    for l in range(3):
        np.testing.assert_allclose(trace.upstream_gradients[l], activations[l].grad.numpy(), **close)
        np.testing.assert_allclose(trace.deltas[l], zs[l].grad.numpy(), **close)
        # f'(z) = dL/dz / dL/da wherever dL/da is not 0 (torch's relu'(0) = 0 too)
        nonzero = activations[l].grad.numpy() != 0
        np.testing.assert_allclose(trace.derivatives[l][nonzero],
                                   (zs[l].grad.numpy() / activations[l].grad.numpy())[nonzero], rtol=1e-9)
        np.testing.assert_array_equal(trace.deltas[l], trace.upstream_gradients[l] * trace.derivatives[l])

    single = net.trace(X[0], Y[0])
    assert single.derivatives[0].shape == single.upstream_gradients[0].shape == (5,)
    assert single.output_gradient.shape == (2,)


def test_the_report_shows_the_trace_numbers_bit_for_bit(backend):
    """explain_step reads f'(z), dL/da, the deltas and dL/d(output) from net.trace; it derives none again."""
    rng = np.random.default_rng(3)
    net = fastbp.Network([3, 4, 3], ["sigmoid", "identity"], loss="cross_entropy", seed=2, backend=backend,
                         dtype="float32")
    X, classes = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)
    trace = net.trace(X, classes)
    report = fastbp.explain_step(net, X, classes, 0.2, dry_run=True)
    for name, shown in (("derivatives", report.derivatives), ("upstream_gradients", report.upstream),
                        ("deltas", report.deltas), ("activations", report.activations)):
        for l in range(2):
            np.testing.assert_array_equal(shown[l], getattr(trace, name)[l], err_msg=f"{name}[{l}]")
            assert shown[l].dtype == np.float32
    np.testing.assert_array_equal(report.output_gradient, trace.output_gradient)
    rows = {(row.layer, row.example, row.neuron): row for row in report.backward_rows}
    assert rows[(1, 4, 2)].derivative == float(trace.derivatives[0][4, 2])
    assert rows[(1, 4, 2)].upstream == float(trace.upstream_gradients[0][4, 2])
