"""fastbp against its peers on the workloads of issue 3, in one invocation.

    python bench/compare.py [--quick] [--workloads a,b] [--peers a,b] [--epochs N] [--json PATH]
                            [--python PY] [--python-torch PY] [--python-jax PY] [--python-fann PY]

Every (workload, peer) pair runs in its own subprocess (``bench/peers.py``), one after another, workload
by workload, so that the ratios of one row are measured minutes apart at most. All peers start from the
same weights and data (``bench/workloads.py``) and make the same updates (in order, consecutive mini-batches,
plain SGD, fixed lr); the script shows that their losses agree. Children run with ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` removed from their environment (only theirs), and each reports its BLAS and thread
counts, printed at the end. ``--emulate-avx2`` runs the children with OpenBLAS's AVX2 kernels and fastbp's
AVX2 small products, to show on an AVX-512 CPU what an AVX2-only one runs (``EMULATE_AVX2_ENV``).

Peers: fastbp-fit (compiled ``fit``), fastbp-step (a Python loop of ``SGD.train_step``, compiled),
numpy-twin (fastbp's NumPy backend), torch (eager, 2 threads), jax (jit of a ``lax.scan`` epoch), fann
(fann2, incremental, batch-1 workloads), gemm-only (numpy doing only the 3 products per layer per step,
mini-batch workloads) and gemm-peak (numpy 2048x2048 matmul, float32 and float64). A peer whose package (or
interpreter) is missing is reported "not installed".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import workloads as wl  # noqa: E402

RESULT_MARK = "@@RESULT@@ "
PEER_ORDER = ["fastbp-fit", "fastbp-step", "numpy-twin", "torch", "jax", "fann", "gemm-only"]
PEER_LABEL = {"fastbp-fit": "fit", "fastbp-step": "step-loop", "numpy-twin": "np-twin", "torch": "torch",
              "jax": "jax", "fann": "fann", "gemm-only": "gemm-only"}
STRIPPED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Relative difference of the check losses (same start, data and updates) that still counts as agreement:
# the sums are ordered differently by each peer, and float32 drifts over thousands of steps.
AGREE_RTOL = {"float64": 1e-5, "float32": 2e-3}


# ----------------------------------------------------------------------------------------------------------
# Running the children
# ----------------------------------------------------------------------------------------------------------

# --emulate-avx2: what an AVX2-only CPU would run, as far as an AVX-512 one can show it: OpenBLAS's AVX2
# (Haswell) kernels for numpy, scipy and the gemm peers, and fastbp's AVX2 small products. fastbp's cloned
# loops (per-example training, the sweeps) and XLA's matmuls (which ignore --xla_cpu_max_isa; measured)
# still pick their AVX-512 code, so the JAX ratio is not the AVX2 machine's.
EMULATE_AVX2_ENV = {"OPENBLAS_CORETYPE": "Haswell", "FASTBP_SMALL_GEMM": "avx2"}
EXTRA_ENV = {}


def child_env():
    env = os.environ.copy()
    for key in STRIPPED_ENV:
        env.pop(key, None)
    env.update(EXTRA_ENV)
    return env


def run_child(python, args, timeout):
    cmd = [python, os.path.join(HERE, "peers.py")] + args
    if not os.path.exists(python):
        return {"status": "not installed", "why": f"no interpreter at {python}"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "why": f"no result after {timeout} s: {' '.join(cmd)}"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["child_wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout or "")[-1500:]
    return {"status": "error", "why": f"child exited {proc.returncode} without a result", "stderr_tail": tail}


# ----------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------

def fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_ratio(x):
    return "-" if x is None else (f"{x:.2f}x" if x < 100 else f"{x:.0f}x")


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    out = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
           "| " + " | ".join("-" * w for w in widths) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def short_status(res):
    st = res.get("status", "?")
    return {"not installed": "not inst.", "n/a": "n/a", "error": "ERROR", "timeout": "TIMEOUT"}.get(st, st)


def blas_summary(env):
    pools = env.get("threadpools")
    if not isinstance(pools, list):
        return str(pools)
    parts = []
    for p in pools:
        parts.append(f"{p.get('internal_api')} {p.get('version') or ''} {p.get('architecture') or ''} "
                     f"{p.get('num_threads')} thr".replace("  ", " "))
    return "; ".join(parts) or "no BLAS/OpenMP pool loaded"


# ----------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------

# Which clock the rates and ratios use (--clock): "wall" (examples per second of wall time) or "cpu"
# (examples per second of the child's CPU time, every thread counted: steadier on a shared machine).
RATE_KEY = {"wall": "examples_per_s", "cpu": "examples_per_cpu_s"}
CLOCK = "wall"


def rate_of(results, peer):
    r = results.get(peer)
    return r.get(RATE_KEY[CLOCK]) if r and r.get("status") == "ok" else None


def analyse(w, results, peaks):
    """Ratios, GFLOP/s, peak share, goals and loss agreement of one workload row."""
    ref = ("fastbp-fit" if rate_of(results, "fastbp-fit")
           else ("numpy-twin" if rate_of(results, "numpy-twin") else None))
    ref_rate = rate_of(results, ref) if ref else None
    row = {"reference": ref, "ratios": {}, "gflops": {}, "peak_share": {}}
    peak = peaks.get(w.dtype, {}).get("gflops_best") if peaks.get(w.dtype, {}).get("status") == "ok" else None
    for peer in PEER_ORDER:
        rate = rate_of(results, peer)
        if rate is None:
            continue
        if ref_rate:
            row["ratios"][peer] = ref_rate / rate
        gf = rate * w.flops_per_example / 1e9
        row["gflops"][peer] = gf
        if peak:
            row["peak_share"][peer] = gf / peak
    fit, step = rate_of(results, "fastbp-fit"), rate_of(results, "fastbp-step")
    row["step_over_fit"] = step / fit if fit and step else None

    # Goals of issue 3 (only the compiled fit counts).
    goals = []
    for peer, need in list(w.goals.items()) + [(p, 1.0) for p in wl.ALWAYS_AHEAD_OF]:
        label = PEER_LABEL.get(peer, peer)
        text = f"ahead of {label}" if peer in wl.ALWAYS_AHEAD_OF else f"{need:g}x {label}"
        got = fit / rate_of(results, peer) if fit and rate_of(results, peer) else None
        if not fit:
            verdict = "n/a (compiled fit did not run)"
        elif got is None:
            verdict = f"n/a ({PEER_LABEL.get(peer, peer)} did not run)"
        else:
            verdict = "met" if got >= need else "NOT met"
        goals.append({"goal": text, "need": need, "measured": got, "verdict": verdict})
    if w.peak_share_goal:
        share = row["peak_share"].get("fastbp-fit")
        goals.append({"goal": f"{w.peak_share_goal:.0%} of {w.dtype} GEMM peak", "need": w.peak_share_goal,
                      "measured": share,
                      "verdict": ("n/a" if share is None else ("met" if share >= w.peak_share_goal else "NOT met"))})
    row["goals"] = goals

    # Loss agreement on the check run.
    base = next((p for p in ("fastbp-fit", "numpy-twin", "torch", "jax") if results.get(p, {}).get("check")), None)
    agree = {"base": base, "peers": {}}
    if base:
        b = results[base]["check"]["epoch_losses"]
        agree["base_losses"] = b
        for peer in PEER_ORDER:
            c = (results.get(peer) or {}).get("check")
            if not c or peer == "gemm-only":
                continue
            rel = max(abs(x - y) / max(abs(y), 1e-300) for x, y in zip(c["epoch_losses"], b))
            stand_in = peer == "fann" and "relu" in w.activations
            note = "ReLU stand-in (LINEAR_PIECE): not the same function" if stand_in else ""
            if peer == "fann" and "tanh" in w.activations and not stand_in:
                note = "FANN clips a tanh output to +-0.98 in its derivative: close, not equal"
            agree["peers"][peer] = {"losses": c["epoch_losses"], "max_rel_diff": rel,
                                    "agree": None if stand_in else rel <= AGREE_RTOL[w.dtype], "note": note}
    row["agreement"] = agree
    return row


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------

def report(meta, peaks, rows, all_results, peers):
    lines = []
    p = lines.append
    p(f"# fastbp comparison, {meta['date_utc']}")
    p(f"machine: {meta['cpu']}, {meta['cores']} cores; load average before {meta['load_before']}, "
      f"after {meta['load_after']}; fastbp commit {meta['git']}")
    if float(meta["load_before"].split()[0]) > 0.5 * (meta["cores"] or 1):
        p(f"WARNING: the machine was busy (load {meta['load_before']}): two-thread peers suffer most; "
          "rerun on an idle machine before trusting a ratio")
    p(f"mode: epochs={meta['epochs']} timed epochs (median, after 1 warm-up), ~{meta['target_s']} s per epoch, "
      f"optimizer {meta.get('optimizer', 'sgd')}, torch threads {meta['torch_threads']}, fastbp from {meta['fastbp_from']}, "
      f"best of {meta['repeat']} interleaved run(s) per peer; clock {meta.get('clock', 'wall')}; "
      f"children without {', '.join(STRIPPED_ENV)}"
      + (f"; AVX2 EMULATED: children with {meta['emulate_avx2']} (fastbp's cloned loops and XLA keep AVX-512)"
         if meta.get("emulate_avx2") else ""))
    pk = []
    for dt, r in peaks.items():
        pk.append(f"{dt}: {r['gflops_best']:.1f} GFLOP/s (median {r['gflops_median']:.1f})" if r.get("status") == "ok"
                  else f"{dt}: {r.get('status')} {r.get('why', '')}")
    p("GEMM peak (numpy 2048x2048 matmul, best of runs): " + ("; ".join(pk) or "not run (peer gemm-peak)"))
    p("")

    p(f"## Training examples per {'second' if CLOCK == 'wall' else 'CPU second'} (median epoch)")
    hdr = ["workload"] + [PEER_LABEL[x] for x in peers]
    body = []
    for name, res in all_results.items():
        body.append([name] + [fmt_rate(rate_of(res, x)) if rate_of(res, x) else short_status(res.get(x, {}))
                              for x in peers])
    p(table(hdr, body))
    p("")

    p("## fastbp fit / peer, fastbp's GFLOP/s and share of the GEMM peak in the workload's dtype")
    ratio_peers = [x for x in peers if x != "fastbp-fit"]
    hdr = ["workload", "ref"] + [f"/{PEER_LABEL[x]}" for x in ratio_peers] + ["GFLOP/s", "% peak", "step/fit"]
    body = []
    for name, row in rows.items():
        ref = row["reference"]
        refl = {"fastbp-fit": "fit", "numpy-twin": "np-twin*"}.get(ref, "-")
        body.append([name, refl] + [fmt_ratio(row["ratios"].get(x)) if x != ref else "1x" for x in ratio_peers]
                    + [f"{row['gflops'][ref]:.2f}" if ref else "-",
                       f"{row['peak_share'][ref]:.1%}" if ref and ref in row["peak_share"] else "-",
                       f"{row['step_over_fit']:.2f}" if row["step_over_fit"] else "-"])
    p(table(hdr, body))
    p("/peer: fastbp fit's examples/s over the peer's; step/fit: the train_step loop's examples/s over fit's "
      "(1.00 = the Python loop loses nothing); GFLOP/s counts 6 x MACs per example minus the first layer's "
      "input delta.")
    if any(r["reference"] == "numpy-twin" for r in rows.values()):
        p("* np-twin: the compiled fit did not run; ratios and GFLOP/s of that row are the NumPy twin's.")
    p("")

    p("## Goals of issue 3 (fastbp compiled fit)")
    body = []
    for name, row in rows.items():
        for g in row["goals"]:
            m = g["measured"]
            meas = "-" if m is None else (f"{m:.1%}" if "peak" in g["goal"] else f"{m:.2f}x")
            body.append([name, g["goal"], meas, g["verdict"]])
    p(table(["workload", "goal", "measured", "verdict"], body))
    p("")

    p("## Loss agreement: check run (first n_check examples, 2 epochs from the shared initial weights)")
    body = []
    for name, row in rows.items():
        a = row["agreement"]
        if not a["base"]:
            continue
        for peer, d in a["peers"].items():
            verdict = "-" if d["agree"] is None else ("agree" if d["agree"] else "DIFFER")
            body.append([name, PEER_LABEL[peer], f"{d['losses'][0]:.6g}", f"{d['losses'][1]:.6g}",
                         f"{d['max_rel_diff']:.1e}" if peer != a["base"] else f"(base)", verdict + (
                             f" ({d['note']})" if d["note"] else "")])
    p(table(["workload", "peer", "epoch-1 loss", "epoch-2 loss", "rel. diff to base", "verdict"], body))
    p("")

    p("## Peers' environment (BLAS via threadpoolctl, threads) and notes")
    seen = {}
    for name, res in all_results.items():
        for peer, r in res.items():
            if r.get("env") and peer not in seen:
                seen[peer] = r
    for peer, r in list(seen.items()) + [(f"gemm-peak {dt}", r) for dt, r in peaks.items()]:
        env = r.get("env", {})
        extra = []
        info = r.get("peer_info", {})
        if "torch_num_threads" in info:
            extra.append(f"torch threads {info['torch_num_threads']} (interop {info['torch_num_interop_threads']})")
        if "jax_version" in info:
            extra.append(f"jax {info['jax_version']} {info['jax_devices']}")
        if "net_backend" in info:
            extra.append(f"fastbp backend {info['net_backend']} from {info['fastbp_file']}"
                         + (f", small products {info['small_gemm']}" if "small_gemm" in info else ""))
        if "fann" in info:
            extra.append(info["fann"])
        p(f"- {peer}: python {env.get('python_version')} ({env.get('python')}), numpy {env.get('numpy')}, "
          f"{env.get('cpu_count')} cpus, BLAS: {blas_summary(env)}"
          + (f"; env {env['env']}" if env.get("env") else "") + ("; " + "; ".join(extra) if extra else ""))
    for name, res in all_results.items():
        j = res.get("jax", {})
        if j.get("status") == "ok":
            p(f"- jax compile time, {name}: {', '.join(f'{c:.3f}' for c in j['peer_info']['compile_s'])} s "
              "(check, calibration and timed sizes; not in the epoch times)")
    p("- peak resident memory of each child process, MB (imports and the data generator included: not a "
      "measure of fit alone): " + "; ".join(
        f"{name}: " + ", ".join(f"{PEER_LABEL[x]} {r['env']['maxrss_mb']:.0f}" for x, r in res.items()
                                if r.get("status") == "ok" and "maxrss_mb" in r.get("env", {}))
        for name, res in all_results.items()))
    p("- examples timed per peer (n): " + "; ".join(
        f"{name}: " + ", ".join(f"{PEER_LABEL[x]} {r['n']}" for x, r in res.items() if r.get("status") == "ok")
        for name, res in all_results.items()))
    problems = [(name, peer, r) for name, res in all_results.items() for peer, r in res.items()
                if r.get("status") in ("error", "timeout", "not installed")]
    for name, peer, r in problems:
        p(f"- {name} / {peer}: {r['status']}: {r.get('why', '')}")
        if r.get("status") == "error" and (r.get("traceback") or r.get("stderr_tail")):
            p("    " + (r.get("traceback") or r.get("stderr_tail")).strip().splitlines()[-1])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------

def git_describe():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(wl.WORKLOADS), help="comma-separated names or shell patterns such as 'b1-*' (default: all)")
    ap.add_argument("--peers", default=",".join(PEER_ORDER + ["gemm-peak"]),
                    help="comma-separated subset of: " + ", ".join(PEER_ORDER + ["gemm-peak"]))
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per peer (default 7; 3 with --quick)")
    ap.add_argument("--target-s", type=float, default=None,
                    help="seconds one timed epoch should last (examples per peer are chosen for it, capped at the "
                         "workload's data set; default 0.3; 0.1 with --quick)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every peer of a workload this many times, interleaved, and keep each peer's fastest "
                         "run (robust against other processes on a shared machine; default 1)")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                    help="every peer trains with this optimizer: plain SGD at the workload's lr (default), or "
                         "Adam (torch's defaults, lr 1e-3; JAX through optax; FANN has none)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="rates and ratios by wall time (default) or by each child's CPU time (all its threads; "
                         "steadier on a shared machine, and the fair measure for single-threaded peers)")
    ap.add_argument("--quick", action="store_true", help="3 timed epochs of ~0.1 s, 3 GEMM-peak repeats")
    ap.add_argument("--json", metavar="PATH", help="write every measurement and the analysis as JSON")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the fastbp peers and gemm peers")
    ap.add_argument("--python-torch", default=None, help="interpreter with torch (default: --python)")
    ap.add_argument("--python-jax", default=sys.executable, help="interpreter with jax (default: this one)")
    ap.add_argument("--python-fann", default=sys.executable, help="interpreter with fann2 (default: this one)")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="torch.set_num_threads for the torch peer (default 2, as issue 3 asks)")
    ap.add_argument("--fastbp-from", choices=("source", "installed"), default="source",
                    help="benchmark the fastbp of this checkout (default; its compiled module built in place, "
                         "e.g. by pip install -e .) or the one the interpreter imports")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="children run OpenBLAS's AVX2 kernels and fastbp's AVX2 small products (see EMULATE_AVX2_ENV)")
    ap.add_argument("--child-timeout", type=float, default=600.0, help="seconds before a child is given up")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = args.clock

    names = []
    for pattern in (n.strip() for n in args.workloads.split(",") if n.strip()):
        matched = [n for n in wl.WORKLOADS if fnmatch.fnmatchcase(n, pattern)] or [wl.get(pattern).name]
        names += [n for n in matched if n not in names]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEER_ORDER) - {"gemm-peak"}
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}")
    want_peak = "gemm-peak" in peers
    peers = [p for p in PEER_ORDER if p in peers]
    epochs = args.epochs or (3 if args.quick else 7)
    target_s = args.target_s or (0.1 if args.quick else 0.3)
    repeats = 3 if args.quick else 5
    python = {"fastbp-fit": args.python, "fastbp-step": args.python, "numpy-twin": args.python,
              "gemm-only": args.python, "gemm-peak": args.python, "torch": args.python_torch or args.python,
              "jax": args.python_jax, "fann": args.python_fann}

    meta = {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "git": git_describe(), "epochs": epochs, "target_s": target_s, "repeat": args.repeat, "argv": sys.argv,
            "interpreters": python}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    os.environ["FASTBP_BENCH_TORCH_THREADS"] = str(args.torch_threads)  # read by the torch child
    os.environ["FASTBP_BENCH_FROM"] = args.fastbp_from                   # read by the fastbp children
    os.environ["FASTBP_BENCH_OPTIMIZER"] = args.optimizer               # read by every child
    if args.emulate_avx2:
        # a FASTBP_SMALL_GEMM of the caller's own stands (=off: the AVX2 machine before its small products)
        EXTRA_ENV.update({k: v for k, v in EMULATE_AVX2_ENV.items() if k in STRIPPED_ENV or k not in os.environ})
        meta["emulate_avx2"] = dict(EXTRA_ENV)
    meta.update(clock=args.clock, torch_threads=args.torch_threads, fastbp_from=args.fastbp_from, optimizer=args.optimizer)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {meta['load_before']} on {os.cpu_count()} cores: other processes are "
            "running; two-thread peers (torch, BLAS) suffer most; compare ratios, rerun when the machine is idle")

    peaks = {}
    if want_peak:
        for dt in sorted({wl.get(n).dtype for n in names}):
            log(f"[gemm-peak {dt}] ...")
            peaks[dt] = run_child(python["gemm-peak"], ["--peer", "gemm-peak", "--dtype", dt,
                                                        "--repeats", str(repeats)], args.child_timeout)
    all_results, rows = {}, {}
    for name in names:
        w = wl.get(name)
        res = {}
        for rep in range(args.repeat):
            for peer in peers:
                t0 = time.perf_counter()
                r = run_child(python[peer], ["--peer", peer, "--workload", name, "--epochs", str(epochs),
                                             "--target-s", str(target_s)], args.child_timeout)
                tag = f"[{name} / {peer}" + (f" / run {rep + 1}]" if args.repeat > 1 else "]")
                log(f"{tag} {r.get('status')}: "
                    + (f"{fmt_rate(r['examples_per_s'])} examples/s, {fmt_rate(r.get('examples_per_cpu_s'))} per "
                       f"CPU s, on n={r['n']}" if r.get("status") == "ok"
                       else (r.get("why") or "")[:200]) + f"  ({time.perf_counter() - t0:.1f} s)")
                if r.get("status") != "ok" and peer in res:
                    continue
                if peer in res and res[peer].get("status") == "ok":
                    # keep the fastest run (the one least disturbed by other processes), remember them all
                    key = RATE_KEY[CLOCK]
                    rates = res[peer].get("all_runs_examples_per_s", [res[peer][key]])
                    if r[key] > res[peer][key]:
                        res[peer] = r
                    res[peer]["all_runs_examples_per_s"] = rates + [r[key]]
                else:
                    res[peer] = r
                    if r.get("status") == "ok":
                        r["all_runs_examples_per_s"] = [r[RATE_KEY[CLOCK]]]
        all_results[name] = res
        rows[name] = analyse(w, res, peaks)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

    text = report(meta, peaks, rows, all_results, peers)
    print(text)
    if args.json:
        doc = {"meta": meta, "gemm_peak": peaks,
               "workloads": {n: {"spec": {"sizes": wl.get(n).sizes, "activations": wl.get(n).activations,
                                          "loss": wl.get(n).loss, "batch": wl.get(n).batch,
                                          "dtype": wl.get(n).dtype, "lr": wl.get(n).lr,
                                          "flops_per_example": wl.get(n).flops_per_example},
                                 "results": all_results[n], "analysis": rows[n]} for n in names}}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
