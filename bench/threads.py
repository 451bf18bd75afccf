"""Does fastbp pick the right BLAS thread count? Default ``fit`` (automatic threads) against every fixed count.

Times ``Network.fit`` (compiled backend, one epoch per measurement) on issue-3 workloads: with no
``threads`` argument ("auto": the count ``fit`` picks per call, ``fastbp._threads.threads_for_call``) and
with ``threads=k`` for each k from 1 to the usable cores, interleaved run by run; each figure is the best of
``--repeat`` rounds of the median of ``--epochs`` epochs (the shared machine's noise only ever slows a run
down). One run measures two phases: "idle" (nothing started by this script; the load average is printed,
since other users' work is not idle) and "busy" (processes spinning on all cores but one for the whole
phase, as another user's job would). Then it prints, per workload, whether the goals of issue 13 hold:

- idle: auto within 5% of the best fixed count;
- busy: auto within 20% of ``threads=1``.

Needs threadpoolctl (``pip install "fastbp[threads]"``). Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/threads.py \\
        [--workloads small-b1,mnist-b32,mnist-b256] [--phases idle,busy] [--epochs 5] [--repeat 3]

``--busy`` is kept as a short form of ``--phases busy``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import fastbp  # noqa: E402
from fastbp import _threads  # noqa: E402
import workloads  # noqa: E402

AUTO = "auto"
GOALS = {"idle": 0.95, "busy": 0.80}   # auto / best fixed count (idle), auto / threads=1 (busy)


def measure(net, X, Y, w, threads, epochs):
    """Examples per second of ``fit`` (one epoch a call, median of ``epochs``); ``threads`` AUTO: none given."""
    extra = {} if threads == AUTO else {"threads": threads}
    net.fit(X[:2048], Y[:2048], epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False, **extra)  # warm-up
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.fit(X, Y, epochs=1, batch_size=w.batch, lr=w.lr, shuffle=False, **extra)
        times.append(time.perf_counter() - start)
    return len(X) / statistics.median(times)


def run_phase(phase, names, counts, epochs, repeat):
    """``{workload: {threads: best examples/s}}`` for one phase, printing each round as it goes."""
    cores = _threads._usable_cores()
    spinners = []
    if phase == "busy":
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, cores - 1))]
        time.sleep(0.5)
    results = {}
    try:
        print(f"\n== {phase}: {len(spinners)} spinning process(es); load average {os.getloadavg()[0]:.2f}; "
              f"busy cores now: {_threads.busy_cores()}")
        for name in names:
            w = workloads.get(name)
            X, Y = workloads.data(w)
            weights, biases = workloads.initial_params(w)
            chosen = _threads.threads_for_call(w.batch, w.sizes)
            print(f"{w.name} ({w.describe()}); auto picks now: {chosen or 'the BLAS default'}")
            best = {}
            for round_ in range(repeat):
                rate = {}
                for threads in counts:
                    net = fastbp.Network(list(w.sizes), list(w.activations), loss=w.loss, dtype=w.dtype)
                    net.set_params(weights, biases)
                    rate[threads] = measure(net, X, Y, w, threads, epochs)
                    best[threads] = max(best.get(threads, 0.0), rate[threads])
                cells = "  ".join(f"{t}: {r / 1e3:7.1f} k/s" for t, r in rate.items())
                print(f"  round {round_ + 1}: {cells}")
            results[name] = best
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return results


def verdicts(phase, results):
    """One line per workload: the ratio the goal is about and whether it holds."""
    lines = []
    for name, best in results.items():
        fixed = {t: r for t, r in best.items() if t != AUTO}
        if phase == "idle":
            top = max(fixed, key=fixed.get)
            ratio, against = best[AUTO] / fixed[top], f"best fixed count ({top} threads)"
        else:
            ratio, against = best[AUTO] / fixed[1], "threads=1"
        goal = GOALS[phase]
        ok = "yes" if ratio >= goal else "NO"
        if workloads.get(name).batch == 1:  # the per-example loop calls no BLAS: every count runs the same code
            ok += " (batch 1 uses no BLAS: the counts differ by noise only)"
        lines.append(f"  {phase:4s} {name:12s} auto {best[AUTO] / 1e3:8.1f} k/s = {ratio:.3f} x {against}: "
                     f"within {100 * (1 - goal):.0f}%: {ok}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="small-b1,mnist-b32,mnist-b256")
    parser.add_argument("--phases", default="idle,busy", help="idle, busy or both (comma-separated)")
    parser.add_argument("--busy", action="store_true", help="the busy phase only (--phases busy)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    phases = ["busy"] if args.busy else [p.strip() for p in args.phases.split(",") if p.strip()]
    for phase in phases:
        if phase not in GOALS:
            parser.error(f"--phases: unknown phase {phase!r} (idle, busy)")
    cores = _threads._usable_cores()
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    counts = [AUTO] + list(range(1, cores + 1))
    print(f"fastbp {fastbp.__version__}; BLAS threads at start: {fastbp.get_num_threads()}; usable cores: {cores}; "
          f"{args.epochs} epochs a measurement, best of {args.repeat} rounds")
    summary = []
    for phase in phases:
        summary.extend(verdicts(phase, run_phase(phase, names, counts, args.epochs, args.repeat)))
    print("\nGoals (issue 13): idle, auto within 5% of the best fixed count; busy, within 20% of threads=1")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
