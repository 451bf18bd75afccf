"""Property-based fuzzing of every public entry point (issue 6, part 1).

The invariant, for every call with arbitrary arguments: either a correct result, or ``ValueError`` /
``TypeError`` (``FloatingPointError`` where the API documents divergence), never a crash, a hang, a warning
or any other exception; and after any call that raised, the network's parameters are unchanged byte for
byte. "Correct" is checked against the same call on a canonical copy of the input (C-contiguous, the
network's dtype), so strides, orders, negative strides, lists and other dtypes must not change the answer;
and input that holds NaN or infinity, or is complex, boolean, object or text, must never be accepted.

``FASTBP_FUZZ_EXAMPLES`` sets how many examples each test draws (default 40; the sanitizer run in
``.ci/sanitize`` and a soak use more). The number of examples run is printed at the end of the module
(see ``docs/ROBUSTNESS.md``).
"""

from __future__ import annotations

import faulthandler
import io
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

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FASTBP_FUZZ_RANDOM") != "1",
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
    if reporter is not None:
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
    base = np.array(draw(st.lists(values, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
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
                                         st.sampled_from([0.5, np.nan, 2**63, -2**63])),
                               min_size=size, max_size=size))
        base = np.array(values, dtype=np.float64).reshape(shape)
        if all(isinstance(v, int) for v in values) and draw(st.booleans()):
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


def guarded(net, call, allowed=EXPECTED, changed_ok=False):
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
                return True, call()
            except allowed as error:
                if net is not None and not changed_ok:
                    assert _state(net) == before, f"{type(error).__name__} raised but the parameters changed"
                assert str(error), "an error without a message"
                return False, error
    finally:
        faulthandler.cancel_dump_traceback_later()


def canonical(value, dtype):
    """The canonical form of an accepted input: a C-contiguous array of ``dtype``."""
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(np.asarray(value), dtype=dtype)


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
    both = np.isfinite(a) & np.isfinite(b)
    assert (np.isfinite(a) == np.isfinite(b)).all() or True  # overflow may differ by summation order
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
       backend_arg=st.sampled_from([None, "cython", "numpy", "gpu", "", 1, "NUMPY"]))
def test_constructor(backend, sizes, activations, loss, dtype, seed, backend_arg):
    RAN["constructor"] += 1
    if backend_arg is None:
        backend_arg = backend
    ok, net = guarded(None, lambda: fastbp.Network(sizes, activations, loss=loss, dtype=dtype, seed=seed,
                                                   backend=backend_arg))
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
    ok, out = guarded(net, lambda: net.predict(X))
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


@FUZZ
@given(spec=NETWORKS, data=st.data(),
       method=st.sampled_from(["loss", "gradients", "trace", "check_gradients", "diagnose"]))
def test_evaluation(backend, spec, data, method):
    RAN[method] += 1
    net = make_net(spec, backend)
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    if method == "check_gradients":
        call = lambda: fastbp.check_gradients(net, X, Y)  # noqa: E731
    elif method == "diagnose":
        call = lambda: str(fastbp.diagnose(net, X, Y))  # noqa: E731
    else:
        call = lambda: getattr(net, method)(X, Y)  # noqa: E731
    ok, result = guarded(net, call)
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

HYPER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 0.1, 1e-300, 1e300,
                                                                                   True, "0.1", None, 1j,
                                                                                   np.float32(0.5), 10**400]))


@FUZZ
@given(spec=NETWORKS, data=st.data(), lr=HYPER, momentum=HYPER, weight_decay=HYPER,
       nesterov=st.sampled_from([False, True, 0, 1, "yes", None, np.bool_(True)]))
def test_sgd_and_train_step(backend, spec, data, lr, momentum, weight_decay, nesterov):
    RAN["SGD/train_step"] += 1
    net = make_net(spec, backend)
    ok, opt = guarded(net, lambda: fastbp.SGD(net, lr, momentum=momentum, weight_decay=weight_decay,
                                              nesterov=nesterov))
    if not ok:
        return
    for value in (opt.lr, opt.momentum, opt.weight_decay):
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    before = net.params.copy()
    ok, result = guarded(net, lambda: opt.train_step(X, Y), allowed=EXPECTED + (FloatingPointError,))
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
    "epochs": st.one_of(st.integers(-1, 3), st.sampled_from([1.5, None, True, "2", 2**70])),
    "batch_size": st.one_of(st.integers(-1, 8), st.sampled_from([0.5, None, False, 2**63, 10**30])),
    "lr": HYPER,
    "shuffle": st.sampled_from([True, False, 1, None, "no"]),
    "seed": st.one_of(st.none(), st.integers(-2, 2**64), st.sampled_from([1.5, "x"])),
    "validation_split": st.one_of(st.floats(-1, 1.5), st.sampled_from([np.nan, 0.5])),
    "momentum_opt": st.sampled_from([0.0, 0.9]),
    "early_stopping": st.sampled_from([False, True, "yes"]),
    "patience": st.one_of(st.integers(-1, 3), st.just(None)),
    "lr_schedule": st.sampled_from([None, "step", "invscaling", "cosine", 3]),
})


@FUZZ
@given(spec=NETWORKS, data=st.data(), options=FIT_OPTIONS)
def test_fit(backend, spec, data, options):
    RAN["fit"] += 1
    net = make_net(spec, backend)
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    options = dict(options)
    momentum = options.pop("momentum_opt", 0.0)
    if momentum:
        options["optimizer"] = fastbp.SGD(net, 0.01, momentum=momentum)
    ok, result = guarded(net, lambda: net.fit(X, Y, **options), allowed=EXPECTED + (FloatingPointError,),
                         changed_ok=True)
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
    shape = data.draw(shapes_for(net.layer_sizes[0], net.layer_sizes[-1]))
    X, base = data.draw(arrays(shape, st.one_of(FINITE, VALUES)))
    single = np.ndim(X) == 1
    n = np.shape(X)[0] if np.ndim(X) >= 1 and not single else 1
    Y, _ = data.draw(targets(net, n, single))
    before = net.params.copy()
    ok, report = guarded(net, lambda: fastbp.explain_step(net, X, Y, lr, dry_run=dry_run),
                         allowed=EXPECTED + (FloatingPointError,))
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
    buffer = io.BytesIO()
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
    del buffer
    ok, loaded = guarded(None, lambda: fastbp.Network.load(path, backend=backend))
    if ok:
        assert loaded.params.tobytes() == net.params.tobytes(), "a corrupted file loaded changed parameters"
        assert loaded.layer_sizes == net.layer_sizes and loaded.activations == net.activations
        assert loaded.loss_name == net.loss_name and loaded.dtype == net.dtype
