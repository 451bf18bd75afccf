"""Property-based fuzzing of every public entry point.

The invariant, for every call with arbitrary arguments: either a correct result, or ``ValueError`` /
``TypeError`` (``FloatingPointError`` where the API documents divergence), never a crash, a hang, a warning
or any other exception; and after any call that raised, the network's parameters are unchanged byte for
byte. "Correct" is checked against the same call on a canonical copy of the input (C-contiguous, the
network's dtype), so strides, orders, negative strides, lists and other dtypes must not change the answer;
and input that holds NaN or infinity, or is complex, boolean, object or text, must never be accepted.

``FASTBP_FUZZ_EXAMPLES`` sets how many examples each test draws (default 40; the sanitizer run in
``.ci/sanitize`` and a soak use more), ``FASTBP_FUZZ_RANDOM=1`` makes a fresh random search instead of the
fixed (derandomized) one. The number of examples run is printed at the end of the module (see
``docs/ROBUSTNESS.md``).
"""

from __future__ import annotations

import faulthandler
import math
import os
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastbp

EXAMPLES = int(os.environ.get("FASTBP_FUZZ_EXAMPLES", "40"))
HANG_SECONDS = 120  # one example taking longer than this is a hang: dump every stack and exit

RANDOM = os.environ.get("FASTBP_FUZZ_RANDOM") == "1"  # a fresh random search instead of the fixed one
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])

EXPECTED = (ValueError, TypeError)
RAN = Counter()  # test name -> examples run; reported by the module fixture below


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request):
    yield
    total = sum(RAN.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"fastbp fuzz: {total} examples run (FASTBP_FUZZ_EXAMPLES={EXAMPLES} per test and backend)"]
    lines += [f"  {name}: {count}" for name, count in sorted(RAN.items())]
    labels = sorted({label for label, _ in OUTCOMES if label})
    for label in labels:
        parts = [f"{outcome} {count}" for (name, outcome), count in OUTCOMES.most_common()
                 if name == label and count]
        lines.append(f"  outcomes of {label}: " + ", ".join(parts))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    path = os.environ.get("FASTBP_FUZZ_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e300, -1e300, 5e-324, -5e-324, 2.2e-308, 1e-45, 3.4e38, 3.5e38, 1e4, -1e4,
           65504.0, 7e4, np.nan, np.inf, -np.inf, 2.0**63, 2.0**64]
VALUES = st.one_of(st.floats(-3, 3), st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True))
FINITE = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e4, -1e4, 100.0]))

DTYPES = ["float64", "float32", "float16", "longdouble", "int8", "int32", "int64", "uint8", "uint64", "bool",
          "complex128", "object", "str", "bytes", "datetime64[s]"]
LAYOUTS = ["C", "F", "strided", "reversed", "readonly", "list", "tuple", "scalar", "broadcast"]


def _cast(base, dtype):
    """``base`` (float64) as ``dtype``, whatever the warnings; None when NumPy cannot make it."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            if dtype in ("object",):
                return base.astype(object)
            if dtype in ("str", "bytes"):
                return base.astype(dtype)
            if dtype.startswith("datetime"):
                return np.where(np.isfinite(base), base, 0).astype(np.int64).astype(dtype)
            return base.astype(dtype)
        except (ValueError, TypeError, OverflowError):
            return None


def _lay_out(array, layout):
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim >= 1:
        big = np.repeat(array, 2, axis=-1)
        return big[..., ::2]
    if layout == "reversed" and array.ndim >= 1:
        return np.ascontiguousarray(array[::-1])[::-1]
    if layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
        return array
    if layout == "list":
        return array.tolist()
    if layout == "tuple" and array.ndim >= 1:
        return tuple(array.tolist())
    if layout == "scalar" and array.size:
        return array.reshape(-1)[0]
    if layout == "broadcast" and array.ndim >= 1 and array.shape[0]:
        return np.broadcast_to(array[:1], array.shape)
    return array


@st.composite
def arrays(draw, shape, values=VALUES):
    """An array of ``shape`` drawn as float64, then given a random dtype and layout.

    Returns ``(value, base)``: what the API gets, and the float64 values it holds (for the oracle).
    """
    size = int(np.prod(shape)) if shape else 1
    clean = draw(st.booleans())  # half the time: finite values in a real dtype (any layout) that must work
    if clean:
        values = FINITE
    base = np.array(draw(st.lists(values, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    if clean:
        dtype = draw(st.sampled_from(["float64", "float64", "float32", "int64", "int32", "uint8", "float16"]))
    else:
        dtype = draw(st.sampled_from(DTYPES)) if draw(st.booleans()) else "float64"
    value = _cast(base, dtype)
    if value is None:
        value = base
    layout = draw(st.sampled_from(LAYOUTS)) if draw(st.booleans()) else "C"
    return _lay_out(value, layout), base


def shapes_for(n_in, n_out):
    """Shapes for X: right, single example, empty, 0-d, 3-d, wrong width."""
    return st.one_of(
        st.integers(1, 6).map(lambda n: (n, n_in)),
        st.just((n_in,)),
        st.sampled_from([(0, n_in), (), (1, 1, n_in), (2, n_in + 1), (0,), (3, 0)]),
    )


NETWORKS = st.tuples(
    st.lists(st.integers(1, 4), min_size=2, max_size=4),
    st.sampled_from(["identity", "sigmoid", "relu", "tanh"]),
    st.sampled_from(["half_sse", "mse", "cross_entropy"]),
    st.sampled_from(["float64", "float32"]),
    st.integers(0, 2**32),
)


def make_net(spec, backend):
    sizes, activation, loss, dtype, seed = spec
    activations = [activation] * (len(sizes) - 1)
    if loss == "cross_entropy":
        activations[-1] = "identity"
    return fastbp.Network(sizes, activations, loss=loss, dtype=dtype, seed=seed, backend=backend)


@st.composite
def targets(draw, net, n, single):
    """Targets of a right or wrong shape and any dtype, incl. class indices for cross_entropy."""
    n_out = net.layer_sizes[-1]
    if net.loss_name == "cross_entropy" and draw(st.booleans()):
        shape = () if single else (n,)
        if draw(st.integers(0, 4)) == 0:
            shape = draw(st.sampled_from([(n + 1,), (n, 1, 1), (0,)]))
        size = int(np.prod(shape)) if shape else 1
        values = draw(st.lists(st.one_of(st.integers(-2, n_out + 1), st.integers(0, n_out - 1),
                                         st.sampled_from([0.5, np.nan, 1e300, -1e19])),
                               min_size=size, max_size=size))
        base = np.array(values, dtype=np.float64).reshape(shape)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and draw(st.booleans()):
            return np.array(values, dtype=np.int64).reshape(shape), base
        value = _cast(base, draw(st.sampled_from(["float64", "int64", "int8", "uint8", "bool", "float16",
                                                   "object", "complex128"])))
        return (base if value is None else value), base
    shape = (n_out,) if single else (n, n_out)
    if draw(st.integers(0, 4)) == 0:
        shape = draw(st.sampled_from([(n,), (), (n, n_out + 1), (n + 1, n_out), (n, n_out, 1), (0, n_out)]))
    values = VALUES if draw(st.booleans()) else FINITE
    if net.loss_name == "cross_entropy":
        values = st.one_of(st.floats(0, 1), values)
    return draw(arrays(shape, values))


# --------------------------------------------------------------------------------------------------------
# The invariant
# --------------------------------------------------------------------------------------------------------


def _state(net):
    return net.params.tobytes()


OUTCOMES = Counter()  # (entry point, "accepted" / error name) -> count, for the closing report


def guarded(net, call, allowed=EXPECTED, changed_ok=False, label=None):
    """Run ``call()``: returns ``(True, result)`` or ``(False, error)``; fails on anything else.

    Any warning is an error (no RuntimeWarning/ComplexWarning may escape). After an expected exception the
    network's parameters must be unchanged byte for byte (``changed_ok`` for documented FloatingPointError
    handling, checked by the caller).
    """
    before = _state(net) if net is not None else None
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                result = call()
                OUTCOMES[(label, "accepted")] += label is not None
                return True, result
            except allowed as error:
                OUTCOMES[(label, type(error).__name__)] += label is not None
                if net is not None and not changed_ok:
                    assert _state(net) == before, f"{type(error).__name__} raised but the parameters changed"
                assert str(error), "an error without a message"
                return False, error
    finally:
        faulthandler.cancel_dump_traceback_later()


def canonical(value, dtype):
    """The canonical form of an accepted input: a C-contiguous array of ``dtype``."""
    with np.errstate(all="ignore"):
        return np.array(value, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def must_have_refused(value, base):
    """Input that no entry point may accept: non-real dtypes, or NaN/inf before or after conversion."""
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind not in "fiu":
        return True
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return True
    return False


def close(a, b, dtype):
    tolerance = {"float64": 1e-9, "float32": 1e-3}[np.dtype(dtype).name]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    both = np.isfinite(a) & np.isfinite(b)  # where a sum overflows may depend on its order: compare the rest
    np.testing.assert_allclose(a[both], b[both], rtol=tolerance, atol=tolerance)


# --------------------------------------------------------------------------------------------------------
# Constructor
# --------------------------------------------------------------------------------------------------------

NAMES = st.one_of(st.sampled_from(["identity", "sigmoid", "relu", "tanh", "half_sse", "mse", "cross_entropy",
                                   "Sigmoid", "relu ", "", "softmax", "\x00", "tanh\x00", "ReLU"]),
                  st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=4))
SIZES = st.one_of(st.integers(1, 5), st.integers(-3, 0), st.booleans(), st.floats(0, 5),
                  st.sampled_from([np.int64(3), np.uint8(2), np.float64(2.0), "3", None, 2**70, 2**40, -2**63,
                                   np.int32(-1), 1 + 0j]))


@FUZZ
@given(sizes=st.one_of(st.lists(SIZES, max_size=5), st.sampled_from(["3,4", 3, None, np.array([[2, 3]]),
                                                                     np.array([2.0, 1.0]), (2, 3), {2: 3}])),
       activations=st.one_of(NAMES, st.lists(NAMES, max_size=5)),
       loss=NAMES,
       dtype=st.sampled_from(["float64", "float32", np.float32, "float16", "int32", "complex128", None, "f8",
                              "<f4", ">f8", "object", "U3", 3, "xyz", np.dtype("float64"), float]),
       seed=st.one_of(st.none(), st.integers(-5, 2**70), st.floats(), st.just("1"), st.just(True)),
       backend_arg=st.sampled_from([None, "cython", "numpy", "gpu", "", 1, "NUMPY"]),
       valid=NETWORKS,
       fuzzed=st.sampled_from(["none", "sizes", "activations", "loss", "dtype", "seed", "backend", "everything"]))
def test_constructor(backend, sizes, activations, loss, dtype, seed, backend_arg, valid, fuzzed):
    RAN["constructor"] += 1
    # A valid configuration in which only the `fuzzed` field (or none, or every one) gets a random value:
    # so both construction and each kind of error are reached often.
    valid_sizes, valid_activation, valid_loss, valid_dtype, valid_seed = valid
    valid_activations = [valid_activation] * (len(valid_sizes) - 1)
    if valid_loss == "cross_entropy":
        valid_activations[-1] = "identity"
    if fuzzed != "everything":
        sizes = sizes if fuzzed == "sizes" else valid_sizes
        activations = activations if fuzzed == "activations" else valid_activations
        loss = loss if fuzzed == "loss" else valid_loss
        dtype = dtype if fuzzed == "dtype" else valid_dtype
        seed = seed if fuzzed == "seed" else valid_seed
        backend_arg = backend_arg if fuzzed == "backend" else None
    if backend_arg is None:
        backend_arg = backend
    ok, net = guarded(None, lambda: fastbp.Network(sizes, activations, loss=loss, dtype=dtype, seed=seed,
                                                   backend=backend_arg), label="Network")
    if ok:
        assert net.params.dtype in (np.float32, np.float64)
        assert net.params.flags.c_contiguous and np.isfinite(net.params).all()
        assert all(isinstance(size, int) and size >= 1 for size in net.layer_sizes)
        assert net.activations[-1] == "identity" or net.loss_name != "cross_entropy"
        assert net.predict(np.zeros(net.layer_sizes[0])).shape == (net.layer_sizes[-1],)


# --------------------------------------------------------------------------------------------------------
# predict / loss / gradients / trace
# --------------------------------------------------------------------------------------------------------


@FUZZ
@given(spec=NETWORKS, data=st.data())
def test_predict(backend, spec, data):
    RAN["predict"] += 1
    net = make_net(spec, backend)
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape))
    ok, out = guarded(net, lambda: net.predict(X), label="predict")
    if not ok:
        return
    assert not must_have_refused(X, base), f"predict accepted {np.asarray(X).dtype} / non-finite input"
    X_canonical = canonical(X, net.dtype)
    assert out.dtype == net.dtype
    assert out.shape == X_canonical.shape[:-1] + (net.layer_sizes[-1],)
    twin = make_net(spec, "numpy")
    expected = twin.predict(X_canonical) if np.isfinite(X_canonical).all() else None
    if expected is not None:
        close(out, expected, net.dtype)
        if backend == "numpy":
            assert out.tobytes() == expected.tobytes(), "layout changed the result"


def draw_batch(data, net):
    """A fuzzed input X (mostly finite values), its base array, and matching fuzzed targets Y."""
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    return X, base, Y


@FUZZ
@given(spec=NETWORKS, data=st.data(),
       method=st.sampled_from(["loss", "gradients", "trace", "check_gradients", "diagnose"]))
def test_evaluation(backend, spec, data, method):
    RAN[method] += 1
    net = make_net(spec, backend)
    X, base, Y = draw_batch(data, net)
    if method == "check_gradients":
        call = lambda: fastbp.check_gradients(net, X, Y)  # noqa: E731
    elif method == "diagnose":
        call = lambda: str(fastbp.diagnose(net, X, Y))  # noqa: E731
    else:
        call = lambda: getattr(net, method)(X, Y)  # noqa: E731
    ok, result = guarded(net, call, label=method)
    if not ok:
        return
    assert not must_have_refused(X, base), f"{method} accepted {np.asarray(X).dtype} / non-finite X"
    Yarr = np.asarray(Y)
    assert Yarr.dtype.kind in "fiu" and not (Yarr.dtype.kind == "f" and not np.isfinite(Yarr).all()), \
        f"{method} accepted targets of dtype {Yarr.dtype} or non-finite targets"
    if method == "loss":
        twin = make_net(spec, "numpy")
        X_c = canonical(X, net.dtype)
        Y_c = Yarr if Yarr.dtype.kind in "iu" and net.loss_name == "cross_entropy" else canonical(Y, net.dtype)
        assert isinstance(result, float)
        with np.errstate(all="ignore"):
            expected = twin.loss(X_c, Y_c)
        if math.isfinite(expected):
            assert math.isclose(result, expected, rel_tol=1e-3 if net.dtype == np.float32 else 1e-9,
                                abs_tol=1e-6), (result, expected)
    elif method == "gradients":
        assert [W.shape for W in result.weights] == [W.shape for W in net.weights]
        assert all(W.dtype == net.dtype for W in result.weights)


# --------------------------------------------------------------------------------------------------------
# Training: SGD, train_step, step, fit
# --------------------------------------------------------------------------------------------------------

HYPER_HOSTILE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 0.1, 1e-300, 1e300,
                                                                                   True, "0.1", None, 1j,
                                                                                   np.float32(0.5), 10**400]))
HYPER = st.one_of(st.floats(1e-4, 1.0), st.sampled_from([0.0, 0.5, 1, np.float64(0.01)]), HYPER_HOSTILE)


def _valid_or(valid, hostile, weight=3):
    """Mostly valid values (``weight`` to 1), so that training really runs; sometimes hostile ones."""
    return st.integers(0, weight).flatmap(lambda k: hostile if k == 0 else valid)


@FUZZ
@given(spec=NETWORKS, data=st.data(), lr=_valid_or(st.floats(1e-4, 1.0), HYPER),
       momentum=_valid_or(st.sampled_from([0.0, 0.5, 0.9]), HYPER),
       weight_decay=_valid_or(st.sampled_from([0.0, 1e-4, 0.1]), HYPER),
       nesterov=_valid_or(st.just(False), st.sampled_from([True, 0, 1, "yes", None, np.bool_(True)])))
def test_sgd_and_train_step(backend, spec, data, lr, momentum, weight_decay, nesterov):
    RAN["SGD/train_step"] += 1
    net = make_net(spec, backend)
    ok, opt = guarded(net, lambda: fastbp.SGD(net, lr, momentum=momentum, weight_decay=weight_decay,
                                              nesterov=nesterov))
    if not ok:
        return
    for value in (opt.lr, opt.momentum, opt.weight_decay):
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
    X, base, Y = draw_batch(data, net)
    before = net.params.copy()
    ok, result = guarded(net, lambda: opt.train_step(X, Y), allowed=EXPECTED + (FloatingPointError,),
                         label="train_step")
    if not ok:
        return  # FloatingPointError too: train_step leaves the parameters unchanged (checked by guarded)
    assert not must_have_refused(X, base)
    assert isinstance(result, float) and math.isfinite(result)
    assert np.isfinite(net.params).all()
    if opt.momentum == 0 and opt.weight_decay == 0:
        # The update is exactly params - lr * gradient at the old parameters.
        twin = make_net(spec, backend)
        twin.params[...] = before
        grads = twin.gradients(X, Y)
        expected_loss = grads.loss
        assert math.isclose(result, expected_loss, rel_tol=1e-4, abs_tol=1e-6) or not math.isfinite(expected_loss)


@FUZZ
@given(spec=NETWORKS, data=st.data(), lr=HYPER)
def test_step(backend, spec, data, lr):
    RAN["SGD.step"] += 1
    net = make_net(spec, backend)
    assume(isinstance(lr, float) and math.isfinite(lr) and lr > 0)
    opt = fastbp.SGD(net, lr)
    weights = [data.draw(arrays(W.shape if data.draw(st.integers(0, 5)) else (W.shape[0] + 1,)))[0]
               for W in net.weights]
    biases = [data.draw(arrays(b.shape))[0] for b in net.biases]
    kind = data.draw(st.sampled_from(["gradients", "gradients", "short", "not gradients"]))
    if kind == "gradients":
        grads = fastbp.Gradients(0.0, weights, biases)
    elif kind == "short":
        grads = fastbp.Gradients(0.0, weights[:-1], biases)
    else:
        grads = (weights, biases)
    ok, _ = guarded(net, lambda: opt.step(grads), allowed=EXPECTED + (FloatingPointError,))
    if ok:
        assert np.isfinite(net.params).all(), "step left non-finite parameters"
    ok, _ = guarded(net, lambda: net.set_params(weights, biases))
    if ok:
        for W, value in zip(net.weights, weights):
            assert W.tobytes() == canonical(value, net.dtype).tobytes()


FIT_OPTIONS = st.fixed_dictionaries({}, optional={
    "epochs": _valid_or(st.integers(0, 3), st.sampled_from([-1, 1.5, None, True, "2"]), weight=12),
    "batch_size": _valid_or(st.integers(1, 8), st.sampled_from([0, -1, 0.5, None, False, 2**63, 10**30]), weight=12),
    "lr": _valid_or(st.floats(1e-4, 1.0), HYPER_HOSTILE, weight=12),
    "shuffle": _valid_or(st.booleans(), st.sampled_from([1, None, "no"]), weight=12),
    "seed": _valid_or(st.integers(0, 2**63 - 1), st.sampled_from([-2, 2**64, 1.5, "x"]), weight=12),
    "validation_split": _valid_or(st.sampled_from([0.0, 0.25, 0.5]), st.sampled_from([-1, 1.0, 1.5, np.nan]), weight=12),
    "momentum_opt": st.sampled_from([0.0, 0.9]),
    "early_stopping": _valid_or(st.booleans(), st.just("yes"), weight=12),
    "patience": _valid_or(st.integers(1, 3), st.sampled_from([0, -1, None]), weight=12),
    "lr_schedule": _valid_or(st.sampled_from([None, "step", "invscaling"]), st.sampled_from(["cosine", 3]), weight=12),
})


@FUZZ
@given(spec=NETWORKS, data=st.data(), options=FIT_OPTIONS)
def test_fit(backend, spec, data, options):
    RAN["fit"] += 1
    net = make_net(spec, backend)
    shape = data.draw(_valid_or(st.integers(1, 12).map(lambda n: (n, net.layer_sizes[0])),
                                shapes_for(net.layer_sizes[0], net.layer_sizes[-1])))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    options = dict(options)
    validation = data.draw(_valid_or(st.sampled_from(["none", "good"]),
                                     st.sampled_from(["bad X", "bad Y", "not a pair"])))
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    if validation != "none":
        X_val = np.zeros((3, n_in)) if validation != "bad X" else np.full((3, n_in), np.nan)
        Y_val = np.zeros(3, dtype=np.int64) if net.loss_name == "cross_entropy" else np.zeros((3, n_out))
        if validation == "bad Y":
            Y_val = np.zeros((4, n_out + 1)).astype(complex)
        options["validation_data"] = (X_val, Y_val) if validation != "not a pair" else X_val
    momentum = options.pop("momentum_opt", 0.0)
    if momentum:
        options["optimizer"] = fastbp.SGD(net, 0.01, momentum=momentum)
    ok, result = guarded(net, lambda: net.fit(X, Y, **options), allowed=EXPECTED + (FloatingPointError,),
                         changed_ok=True, label="fit")
    if ok:
        assert not must_have_refused(X, base)
        assert isinstance(result, fastbp.History)
        assert all(math.isfinite(value) for value in result.loss)
        assert np.isfinite(net.params).all()
    elif isinstance(result, FloatingPointError):
        assert np.isfinite(net.params).all(), "divergence left non-finite parameters"
        assert "epoch" in str(result) and "batch" in str(result)
        assert isinstance(result.history, fastbp.History)


# --------------------------------------------------------------------------------------------------------
# explain_step, save/load
# --------------------------------------------------------------------------------------------------------


@FUZZ
@given(spec=NETWORKS, data=st.data(), lr=st.one_of(HYPER, st.floats(1e-3, 1)), dry_run=st.booleans())
def test_explain_step(backend, spec, data, lr, dry_run):
    RAN["explain_step"] += 1
    spec = (spec[0][:3],) + spec[1:]
    net = make_net(spec, backend)
    X, base, Y = draw_batch(data, net)
    before = net.params.copy()
    ok, report = guarded(net, lambda: fastbp.explain_step(net, X, Y, lr, dry_run=dry_run),
                         allowed=EXPECTED + (FloatingPointError,), label="explain_step")
    if not ok:
        return
    assert not must_have_refused(X, base), f"explain_step accepted {np.asarray(X).dtype} / non-finite x"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(str(report), str) and isinstance(report.to_markdown(), str)
    if dry_run:
        assert net.params.tobytes() == before.tobytes()
    assert np.isfinite(net.params).all()


PATHS = st.one_of(st.just("ok"), st.sampled_from([None, 3, b"bytes-name", "", ".", "no/such/dir/x", "\x00bad",
                                                  "a" * 300]))


@FUZZ
@given(spec=NETWORKS, path_kind=PATHS)
def test_save_load(backend, spec, path_kind, tmp_path_factory):
    RAN["save/load"] += 1
    net = make_net(spec, backend)
    folder = tmp_path_factory.mktemp("fuzz-io")
    path = folder / "model.npz" if path_kind == "ok" else path_kind
    if isinstance(path, str) and path not in ("", "."):
        path = str(folder / path)
    elif isinstance(path, bytes):  # a bytes path is a file name too: keep it out of the working directory
        path = os.fsencode(folder / os.fsdecode(path))
    allowed = EXPECTED + (OSError,)  # an unwritable/unreadable path is an OSError, as for open()
    ok, _ = guarded(net, lambda: net.save(path), allowed=allowed)
    if not ok:
        return
    ok, loaded = guarded(None, lambda: fastbp.Network.load(path, backend=backend), allowed=allowed)
    assert ok, f"a file just saved did not load: {loaded!r}"
    assert loaded.params.tobytes() == net.params.tobytes()
    assert loaded.params.dtype == net.params.dtype
    assert (loaded.layer_sizes, loaded.activations, loaded.loss_name) == \
        (net.layer_sizes, net.activations, net.loss_name)


@FUZZ
@given(spec=NETWORKS, data=st.data())
def test_load_random_bytes(backend, spec, data, tmp_path_factory):
    """Any corruption of a saved file: refused with ValueError, or loads exactly the saved parameters."""
    RAN["load corrupted"] += 1
    net = make_net(spec, backend)
    folder = tmp_path_factory.mktemp("fuzz-bytes")
    path = folder / "model.npz"
    net.save(path)
    raw = bytearray(path.read_bytes())
    mode = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "garbage"]))
    if mode == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(raw) - 1))
            raw[position] ^= 1 << data.draw(st.integers(0, 7))
    elif mode == "set":
        position = data.draw(st.integers(0, len(raw) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        raw[position:position + len(chunk)] = chunk
    elif mode == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif mode == "insert":
        position = data.draw(st.integers(0, len(raw)))
        raw[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw = bytearray(data.draw(st.binary(max_size=300)))
    path.write_bytes(bytes(raw))
    ok, loaded = guarded(None, lambda: fastbp.Network.load(path, backend=backend), label="load corrupted")
    if ok:
        assert loaded.params.tobytes() == net.params.tobytes(), "a corrupted file loaded changed parameters"
        assert loaded.layer_sizes == net.layer_sizes and loaded.activations == net.activations
        assert loaded.loss_name == net.loss_name and loaded.dtype == net.dtype


# --------------------------------------------------------------------------------------------------------
# The kernel's paths: wide layers (BLAS), per-example rows, shuffled gathers, momentum; against the twin
# --------------------------------------------------------------------------------------------------------

WIDE_NETWORKS = st.tuples(
    st.lists(st.one_of(st.integers(1, 5), st.integers(30, 90)), min_size=2, max_size=4),
    st.sampled_from(["identity", "sigmoid", "relu", "tanh"]),
    st.sampled_from(["half_sse", "mse", "cross_entropy"]),
    st.sampled_from(["float64", "float32"]),
    st.integers(0, 2**32),
)


@settings(FUZZ, max_examples=EXAMPLES)
@given(spec=WIDE_NETWORKS, n=st.integers(1, 70), batch_size=st.one_of(st.integers(1, 40), st.just(1)),
       shuffle=st.booleans(), momentum=st.sampled_from([0.0, 0.0, 0.5]), weight_decay=st.sampled_from([0.0, 0.01]),
       seed=st.integers(0, 2**63 - 1))
def test_kernel_paths_agree_with_the_twin(spec, n, batch_size, shuffle, momentum, weight_decay, seed):
    """Every code path of the compiled kernel (fused small loops, BLAS for wide layers, the per-example
    row loop, shuffled gathers, momentum/weight decay) against the NumPy twin; under .ci/sanitize this is
    where AddressSanitizer and Cython's bounds checks see the kernel's memory accesses."""
    RAN["kernel paths"] += 1
    pytest.importorskip("fastbp._core")
    compiled = make_net(spec, "cython")
    twin = make_net(spec, "numpy")
    rng = np.random.default_rng(seed % 2**32)
    X = rng.normal(size=(n, compiled.layer_sizes[0])).astype(compiled.dtype)
    if compiled.loss_name == "cross_entropy":
        Y = rng.integers(0, compiled.layer_sizes[-1], size=n)
    else:
        Y = rng.normal(size=(n, compiled.layer_sizes[-1])).astype(compiled.dtype)
    tolerance = {"float64": 1e-7, "float32": 2e-2}[compiled.dtype.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(compiled.predict(X), twin.predict(X), rtol=tolerance, atol=tolerance)
        a, b = compiled.gradients(X, Y), twin.gradients(X, Y)
        for ga, gb in zip(a.weights + a.biases, b.weights + b.biases):
            np.testing.assert_allclose(ga, gb, rtol=tolerance, atol=tolerance)
        outcomes = []
        for net in (compiled, twin):
            opt = fastbp.SGD(net, 1e-3, momentum=momentum, weight_decay=weight_decay)
            try:
                history = net.fit(X, Y, epochs=2, batch_size=batch_size, optimizer=opt, shuffle=shuffle,
                                  seed=seed)
                outcomes.append(history.loss)
            except FloatingPointError:
                outcomes.append(None)
        assert (outcomes[0] is None) == (outcomes[1] is None)
        np.testing.assert_allclose(compiled.params, twin.params, rtol=tolerance * 10, atol=tolerance * 10)


# --------------------------------------------------------------------------------------------------------
# Tampering with the objects' attributes: assignments are refused or checked, never trusted blindly
# --------------------------------------------------------------------------------------------------------

TAMPER_VALUES = st.one_of(
    st.sampled_from([None, 3, -1, 2.5, "relu", (), (3, 1000, 2), ("relu",), np.float32, "float32",
                     np.zeros(3), np.zeros(10**4)[::3], np.zeros((2, 2)), [0.0] * 3, np.array(["a"])]),
    st.integers(1, 300).map(np.ones), st.integers(1, 300).map(lambda n: np.ones(n, np.float32)))


@FUZZ
@given(spec=NETWORKS, data=st.data(),
       name=st.sampled_from(["params", "layer_sizes", "activations", "loss_name", "dtype", "backend", "weights",
                             "biases", "velocity", "lr", "momentum_attr"]),
       value=TAMPER_VALUES)
def test_attribute_assignment(backend, spec, data, name, value):
    RAN["attribute assignment"] += 1
    net = make_net(spec, backend)
    opt = fastbp.SGD(net, 0.01, momentum=0.5)
    target = opt if name in ("velocity", "lr") else net
    attribute = "momentum" if name == "momentum_attr" else name
    before = net.params.tobytes()
    if name == "momentum_attr":
        target = opt
        value = 0.5  # a plain attribute of SGD: only its documented range matters (checked at use)
    ok, _ = guarded(None, lambda: setattr(target, attribute, value),
                    allowed=EXPECTED + (AttributeError,), label="attribute assignment")
    if not ok:
        assert net.params.tobytes() == before
    # Whatever happened, every entry point still works on the network's own, consistent buffers.
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    assert len(net.params) == sum(W.size + b.size for W, b in zip(net.weights, net.biases))
    X = np.ones((3, n_in), dtype=net.dtype)
    Y = np.zeros(3, dtype=np.int64) if net.loss_name == "cross_entropy" else np.zeros((3, n_out), net.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert net.predict(X).shape == (3, n_out)
        opt.train_step(X, Y)
        net.fit(X, Y, epochs=1, batch_size=2, optimizer=opt, seed=0)
