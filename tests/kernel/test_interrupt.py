"""Ctrl-C inside one large batch: the compiled kernel looks for signals between the layers of a batch, not
only between batches, and an interrupted step leaves parameters and optimizer state as before it.

Each case runs in a child process (a signal in this process would stop pytest itself when a check is
missing). The child times one whole single-batch epoch in CPU seconds, then repeats it from the same start
with a CPU-time alarm (``setitimer(ITIMER_PROF)``, whose handler raises KeyboardInterrupt as the default
SIGINT handler does) set to a fraction of that time: into the forward pass, and into the backward pass.
The epoch is a single batch, so a check made only between batches would never fire: the step would finish,
the interruption would land after it and the parameters would have moved. No wall-clock bound is asserted:
on a loaded machine the alarm still fires after the same CPU work.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import pytest

import fastbp

FASTBP_ROOT = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)

CHILD_FIT = textwrap.dedent("""
    import json, signal, sys, time
    import numpy as np
    import fastbp

    backend, rule, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    n = 4096
    X = rng.normal(size=(n, 64)).astype(dtype)
    Y = rng.normal(size=(n, 10)).astype(dtype)
    start = fastbp.Network([64, 512, 512, 512, 10], ["relu", "relu", "relu", "identity"], seed=0,
                           backend=backend, dtype=dtype)

    def optimizer_for(net):
        if rule == "sgd":       # plain SGD: updated in place inside the backward pass
            return fastbp.SGD(net, 1e-3)
        if rule == "momentum":  # the gradient, then the update
            return fastbp.SGD(net, 1e-3, momentum=0.9)
        return fastbp.Adam(net, 1e-4)

    class Seen(fastbp.Callback):
        pass

    def one_epoch(net, optimizer, callbacks=()):
        return net.fit(X, Y, epochs=1, batch_size=n, optimizer=optimizer, shuffle=False,
                       callbacks=list(callbacks))

    # the reference: one uninterrupted epoch from the start, and its CPU time (the shorter of two)
    cpu = []
    for _ in range(2):
        reference = start.copy()
        began = time.process_time()
        one_epoch(reference, optimizer_for(reference))
        cpu.append(time.process_time() - began)
    step_cpu = min(cpu)

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGPROF, raise_interrupt)
    results = []
    for fraction in (0.05, 0.5):
        net = start.copy()
        optimizer = optimizer_for(net)
        params_before = net.params.tobytes()
        state_before, steps_before = (a.copy() for a in optimizer._snapshot())
        seen = Seen()
        signal.setitimer(signal.ITIMER_PROF, step_cpu * fraction)
        try:
            one_epoch(net, optimizer, [seen])
            outcome = "finished"
        except KeyboardInterrupt:
            outcome = "interrupted"
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        state_after, steps_after = optimizer._snapshot()
        entry = {"fraction": fraction, "outcome": outcome,
                 "params_unchanged": net.params.tobytes() == params_before,
                 "state_unchanged": state_after.tobytes() == state_before.tobytes(),
                 "steps_unchanged": steps_after.tobytes() == steps_before.tobytes(),
                 "history_empty": seen.history is not None and seen.history.loss == []}
        # the interrupted attempt left no trace: the same epoch run again is the reference bit for bit
        one_epoch(net, optimizer)
        entry["rerun_equals_reference"] = net.params.tobytes() == reference.params.tobytes()
        results.append(entry)
    print(json.dumps({"step_cpu": step_cpu, "results": results}), flush=True)
""")

CHILD_KERNEL = textwrap.dedent("""
    import json, signal, sys, time
    import numpy as np
    from fastbp import _core, _spec

    entry = sys.argv[1]
    rng = np.random.default_rng(1)
    n = 8192
    sizes = [64, 512, 512, 512, 10]
    codes = [_spec.ACTIVATION_CODES[a] for a in ("relu", "relu", "relu", "identity")]
    _, total = _spec.param_offsets(sizes)
    params = rng.uniform(-0.1, 0.1, size=total)
    X = rng.normal(size=(n, sizes[0]))
    Y = rng.normal(size=(n, sizes[-1]))
    ws = _core.Workspace(sizes, codes, _spec.LOSS_CODES["mse"], np.float64, n)  # one chunk of n rows
    out = np.empty((n, sizes[-1]))

    def call():
        if entry == "predict":
            _core.predict(ws, params, X, out)
        else:
            _core.loss_and_gradient(ws, params, X, Y)

    began = time.process_time()
    call()
    step_cpu = time.process_time() - began

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGPROF, raise_interrupt)
    out[...] = np.nan
    ws.grad[...] = np.nan
    signal.setitimer(signal.ITIMER_PROF, step_cpu * 0.3)
    try:
        call()
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    # The output is written after each chunk's forward pass, and the first layer's gradient last: an
    # interruption inside the single chunk leaves them unwritten.
    first_layer_grad = ws.grad[:sizes[0] * sizes[1]]
    print(json.dumps({"outcome": outcome, "step_cpu": step_cpu,
                      "unwritten": bool(np.isnan(out).all() if entry == "predict"
                                        else np.isnan(first_layer_grad).all())}), flush=True)
""")


def _run_child(source, *args):
    env = dict(os.environ, PYTHONPATH=FASTBP_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # one BLAS thread: the CPU-time alarm then measures the thread that runs the kernel; cwd outside the
    # repository so that `python -c` cannot pick up an unbuilt source tree
    done = subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("rule,dtype", [("sgd", "float64"), ("sgd", "float32"), ("momentum", "float64"),
                                        ("adam", "float64")])
def test_ctrl_c_inside_a_single_batch_epoch_leaves_the_state_before_the_step(backend, rule, dtype):
    if backend == "numpy" and (rule, dtype) != ("sgd", "float64"):
        pytest.skip("the twin is Python, interrupted by Python: one case shows it keeps the same promise")
    report = _run_child(CHILD_FIT, backend, rule, dtype)
    for entry in report["results"]:
        where = f"{backend}, {rule}, {dtype}, alarm at {entry['fraction']} of {report['step_cpu']:.3f} s CPU"
        assert entry["outcome"] == "interrupted", f"the step ran to its end ({where})"
        assert entry["params_unchanged"], f"an interrupted step changed the parameters ({where})"
        assert entry["state_unchanged"] and entry["steps_unchanged"], f"optimizer state changed ({where})"
        assert entry["history_empty"], f"the interrupted epoch was recorded ({where})"
        assert entry["rerun_equals_reference"], f"training after the interruption differs ({where})"


@pytest.mark.parametrize("entry", ["predict", "loss_and_gradient"])
def test_ctrl_c_inside_one_large_chunk_of_predict_and_loss_and_gradient(entry):
    pytest.importorskip("fastbp._core")
    report = _run_child(CHILD_KERNEL, entry)
    assert report["outcome"] == "interrupted", report
    assert report["unwritten"], f"{entry} ran to the end of its only chunk before stopping: {report}"
