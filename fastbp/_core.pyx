# cython: language_level=3
"""The compiled kernel of fastbp: forward, backward and the optimizers' updates for dense networks,
without the GIL.

Same functions, same semantics as the NumPy twin ``fastbp/_reference.py`` (the specification; read it
first). See ``docs/DESIGN.md`` for the interface, the parameter layout and the shuffle permutation.

One body serves float32 and float64 through the ``floating`` fused type. Each layer picks one of two
paths per mini-batch: hand-fused loops for small layers (no call overhead per example), or BLAS
``sgemm``/``dgemm`` from ``scipy.linalg.cython_blas`` when the product is large enough to pay for the
call, with the bias, the activation and its derivative applied in one sweep over each product.

The kernel trusts its inputs: ``fastbp/network.py`` has checked dtypes, contiguity, shapes and values.
"""

from cython cimport floating
from libc.math cimport isfinite, sqrt, sqrtf, pow
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint64_t, int64_t
from cpython.exc cimport PyErr_Clear
from cpython.ref cimport PyObject
from scipy.linalg.cython_blas cimport sgemm, dgemm

import os
import time
import warnings

import numpy as np

from fastbp._spec import aligned_zeros


cdef extern from "Python.h":
    # Declared here without Cython's `except -1`: the checks below clear the handler's exception and stop
    # cleanly (status interrupted) rather than unwind through the nogil code.
    int check_signals "PyErr_CheckSignals"() noexcept


cdef extern from "_kernels_pool.h" nogil:
    ctypedef struct fastbp_pool:
        pass
    ctypedef void (*fastbp_pool_fn)(void *ctx, int part, int parts) noexcept nogil
    fastbp_pool *fastbp_pool_create(int parts)
    void fastbp_pool_run(fastbp_pool *pool, fastbp_pool_fn fn, void *ctx)
    void fastbp_pool_slice(Py_ssize_t extent, Py_ssize_t unit, int part, int parts, Py_ssize_t *begin,
                           Py_ssize_t *end)
    unsigned long long fastbp_pool_jobs
    void fastbp_pool_destroy(fastbp_pool *pool)

cdef extern from "_kernels.h" nogil:
    ctypedef struct Plan "fastbp_plan":
        int n_layers
        int loss
        Py_ssize_t max_batch
        Py_ssize_t max_width
        Py_ssize_t n_params
        Py_ssize_t *sizes      # n_layers + 1
        int *acts              # n_layers
        Py_ssize_t *w_off      # n_layers
        Py_ssize_t *b_off      # n_layers
        Py_ssize_t *act_off    # n_layers: start of layer l's outputs in the activation buffer
        fastbp_pool *pool      # the product threads of a training call, or NULL
    float fastbp_dot_f32(const float *a, const float *b, Py_ssize_t n)
    double fastbp_dot_f64(const double *a, const double *b, Py_ssize_t n)
    float fastbp_activate_f32(float z, int act)
    double fastbp_activate_f64(double z, int act)
    int fastbp_all_finite_f32(const float *values, Py_ssize_t n)
    int fastbp_all_finite_f64(const double *values, Py_ssize_t n)
    int fastbp_train_rows_f32(const Plan *p, float *params, const float *X, const float *Y,
                              const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, float lr,
                              float *activations, float *delta_a, float *delta_b,
                              double *loss_sum, Py_ssize_t *done)
    int fastbp_train_rows_f64(const Plan *p, double *params, const double *X, const double *Y,
                              const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, double lr,
                              double *activations, double *delta_a, double *delta_b,
                              double *loss_sum, Py_ssize_t *done)
    ctypedef struct AdamRows "fastbp_adam_rows":
        double lr, beta1, beta2, eps, weight_decay
        int adamw, amsgrad
        long long step
        Py_ssize_t n_params
    int fastbp_train_rows_adam_f32(const Plan *p, float *params, const float *X, const float *Y,
                                   const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count,
                                   const AdamRows *adam, float *state, float *activations, float *delta_a,
                                   float *delta_b, double *loss_sum, Py_ssize_t *done)
    int fastbp_train_rows_adam_f64(const Plan *p, double *params, const double *X, const double *Y,
                                   const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count,
                                   const AdamRows *adam, double *state, double *activations, double *delta_a,
                                   double *delta_b, double *loss_sum, Py_ssize_t *done)
    void fastbp_adam_f32(float *params, const float *grad, float *exp_avg, float *exp_avg_sq,
                         float *max_exp_avg_sq, Py_ssize_t n, float param_scale, float coupled_decay,
                         float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
                         float step_size, float bias2_sqrt, int amsgrad)
    void fastbp_adam_f64(double *params, const double *grad, double *exp_avg, double *exp_avg_sq,
                         double *max_exp_avg_sq, Py_ssize_t n, double param_scale, double coupled_decay,
                         double one_minus_beta1, double beta2, double one_minus_beta2, double eps,
                         double step_size, double bias2_sqrt, int amsgrad)
    double fastbp_l2_sweep_f32(const float *w, float *g, Py_ssize_t n, float scale)
    double fastbp_l2_sweep_f64(const double *w, double *g, Py_ssize_t n, double scale)
    void fastbp_rmsprop_f32(float *params, const float *grad, float *square_avg, float *momentum_buffer,
                            float *grad_avg, Py_ssize_t n, float neg_lr, float weight_decay, float alpha,
                            float one_minus_alpha, float eps, float momentum, int centered)
    void fastbp_rmsprop_f64(double *params, const double *grad, double *square_avg, double *momentum_buffer,
                            double *grad_avg, Py_ssize_t n, double neg_lr, double weight_decay, double alpha,
                            double one_minus_alpha, double eps, double momentum, int centered)
    void fastbp_rprop_f32(float *params, const float *grad, float *prev, float *step_size, Py_ssize_t n,
                          float eta_minus, float eta_plus, float step_min, float step_max)
    void fastbp_rprop_f64(double *params, const double *grad, double *prev, double *step_size, Py_ssize_t n,
                          double eta_minus, double eta_plus, double step_min, double step_max)
    # Update rules and the slots of their hyper-parameter array, declared once in _kernels.h.
    enum:
        FASTBP_SGD
        FASTBP_ADAM
        FASTBP_ADAMW
        FASTBP_RMSPROP
        FASTBP_RPROP
        FASTBP_N_RULES
    enum:
        FASTBP_HYPER_LR
        FASTBP_HYPER_WEIGHT_DECAY
        FASTBP_HYPER_SGD_MOMENTUM
        FASTBP_HYPER_SGD_NESTEROV
        FASTBP_HYPER_ADAM_BETA1
        FASTBP_HYPER_ADAM_BETA2
        FASTBP_HYPER_ADAM_EPS
        FASTBP_HYPER_ADAM_AMSGRAD
        FASTBP_HYPER_RMSPROP_ALPHA
        FASTBP_HYPER_RMSPROP_EPS
        FASTBP_HYPER_RMSPROP_MOMENTUM
        FASTBP_HYPER_RMSPROP_CENTERED
        FASTBP_HYPER_RPROP_ETA_MINUS
        FASTBP_HYPER_RPROP_ETA_PLUS
        FASTBP_HYPER_RPROP_STEP_MIN
        FASTBP_HYPER_RPROP_STEP_MAX
        FASTBP_HYPER_ADAM_SKLEARN_EPS
        FASTBP_HYPER_L2
        FASTBP_N_HYPER
    # The codes, declared once in _kernels.h
    enum:
        ACT_IDENTITY "FASTBP_IDENTITY"
        ACT_SIGMOID "FASTBP_SIGMOID"
        ACT_RELU "FASTBP_RELU"
        ACT_TANH "FASTBP_TANH"
    enum:
        LOSS_HALF_SSE "FASTBP_HALF_SSE"
        LOSS_MSE "FASTBP_MSE"
        LOSS_CROSS_ENTROPY "FASTBP_CROSS_ENTROPY"
        LOSS_BINARY_CROSS_ENTROPY "FASTBP_BINARY_CROSS_ENTROPY"
        LOSS_POISSON "FASTBP_POISSON"
    enum:
        STATUS_OK "FASTBP_STATUS_OK"
        STATUS_NONFINITE "FASTBP_STATUS_NONFINITE"
        STATUS_INTERRUPTED "FASTBP_STATUS_INTERRUPTED"
        STATUS_BAD_INPUT "FASTBP_STATUS_BAD_INPUT"
    double fastbp_loss_divisor(int loss, Py_ssize_t K)
    double fastbp_loss_numerator(int loss)
    double fastbp_loss_half(int loss)
    double fastbp_output_delta_row_f32(const float *out, const float *y, Py_ssize_t K, int loss, int act,
                                       float scale, float *delta, double total)
    double fastbp_output_delta_row_f64(const double *out, const double *y, Py_ssize_t K, int loss, int act,
                                       double scale, double *delta, double total)
    void fastbp_times_derivative_f32(float *delta, const float *a, Py_ssize_t n, int act)
    void fastbp_times_derivative_f64(double *delta, const double *a, Py_ssize_t n, int act)
    void fastbp_bias_relu_rows_f32(float *out, const float *bias, Py_ssize_t rows, Py_ssize_t n, int relu)
    void fastbp_bias_relu_rows_f64(double *out, const double *bias, Py_ssize_t rows, Py_ssize_t n, int relu)
    void fastbp_relu_mask_f32(float *delta, const float *a, Py_ssize_t n)
    void fastbp_relu_mask_f64(double *delta, const double *a, Py_ssize_t n)
    void fastbp_gather_rows(char *dst, const char *src, const Py_ssize_t *order, Py_ssize_t count,
                            size_t row_bytes)
    void fastbp_softmax_exps_f32(const float *out, Py_ssize_t rows, Py_ssize_t K, float *e)
    void fastbp_softmax_exps_f64(const double *out, Py_ssize_t rows, Py_ssize_t K, double *e)
    double fastbp_cross_entropy_row_f32(const float *out, const float *y, Py_ssize_t K, float scale, float *delta,
                                        double total)
    double fastbp_cross_entropy_row_f64(const double *out, const double *y, Py_ssize_t K, double scale,
                                        double *delta, double total)
    void fastbp_column_sums_f32(float *sums, const float *x, Py_ssize_t rows, Py_ssize_t n)
    void fastbp_column_sums_f64(double *sums, const double *x, Py_ssize_t rows, Py_ssize_t n)

cdef extern from "_kernels_gemm.h" nogil:
    int FASTBP_GEMM_ISA_NONE, FASTBP_GEMM_ISA_AVX2, FASTBP_GEMM_ISA_AVX512
    int fastbp_small_gemm_cpu_level()
    int fastbp_small_gemm_select(int level)
    Py_ssize_t fastbp_l2_bytes(Py_ssize_t fallback)
    double FASTBP_SPLIT_MIN_WORK
    # the products on the training call's threads (pool NULL: the calling thread alone)
    void fastbp_gemm_nt_team_f32(fastbp_pool *pool, const float *A, const float *W, const float *bias, int act,
                                 float *C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)
    void fastbp_gemm_nt_team_f64(fastbp_pool *pool, const double *A, const double *W, const double *bias,
                                 int act, double *C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)
    void fastbp_gemm_nn_team_f32(fastbp_pool *pool, const float *D, const float *W, float *C, Py_ssize_t B,
                                 Py_ssize_t I, Py_ssize_t O)
    void fastbp_gemm_nn_team_f64(fastbp_pool *pool, const double *D, const double *W, double *C, Py_ssize_t B,
                                 Py_ssize_t I, Py_ssize_t O)
    void fastbp_gemm_tn_team_f32(fastbp_pool *pool, const float *D, const float *A, float *C, Py_ssize_t B,
                                 Py_ssize_t I, Py_ssize_t O, float alpha, int accumulate)
    void fastbp_gemm_tn_team_f64(fastbp_pool *pool, const double *D, const double *A, double *C, Py_ssize_t B,
                                 Py_ssize_t I, Py_ssize_t O, double alpha, int accumulate)

# The codes as Python sees them (tests/test_conformance.py compares them with fastbp._spec).
ACTIVATION_CODES = {"identity": ACT_IDENTITY, "sigmoid": ACT_SIGMOID, "relu": ACT_RELU, "tanh": ACT_TANH}
LOSS_CODES = {"half_sse": LOSS_HALF_SSE, "mse": LOSS_MSE, "cross_entropy": LOSS_CROSS_ENTROPY,
              "binary_cross_entropy": LOSS_BINARY_CROSS_ENTROPY, "poisson": LOSS_POISSON}
STATUS_CODES = {"STATUS_OK": STATUS_OK, "STATUS_NONFINITE": STATUS_NONFINITE,
                "STATUS_INTERRUPTED": STATUS_INTERRUPTED, "STATUS_BAD_INPUT": STATUS_BAD_INPUT}

# The backend interface (fastbp._backend.INTERFACE), the same names as the twin fastbp._reference.
__all__ = ["Workspace", "predict", "loss_and_gradient", "train_epoch", "optimizer_step", "all_finite",
           "predict_sparse", "loss_and_gradient_sparse", "train_epoch_sparse"]

# A layer uses BLAS for a mini-batch when the batch has at least BLAS_MIN_BATCH rows and the product
# has at least BLAS_MIN_WORK multiply-adds; below that the call overhead costs more than it saves.
# Measured (2-core EPYC, scipy's OpenBLAS 0.3.30): a 16-16-4 net at batch 8 trains 2.2x faster through
# BLAS than through the hand loops, an 8-8-8 net at batch 4 (256 multiply-adds a layer) 1.2x slower,
# a 2-2-1 net at batch 4 3x slower. Batch 1 never gets here (the per-example C loop handles it).
cdef Py_ssize_t BLAS_MIN_BATCH = 2
cdef Py_ssize_t BLAS_MIN_WORK = 512
# OpenBLAS runs a product on more than one thread from this many multiply-adds (m n k > 65536 x
# GEMM_MULTITHREAD_THRESHOLD 4, interface/gemm.c); see product_threads and small_gemm_layer.
cdef double BLAS_THREADED_WORK = 262144.0

# A layer uses the non-packing products of _kernels_gemm.h instead of BLAS when the batch has
# SMALL_GEMM_MIN_BATCH to SMALL_GEMM_MAX_BATCH rows and the layer at least SMALL_GEMM_MIN_INPUTS inputs and
# SMALL_GEMM_MIN_OUTPUTS outputs; above SMALL_GEMM_MAX_BATCH_ANY rows only if its weights also fit in one
# core's L2 cache (SMALL_GEMM_L2_BYTES: the C library's figure, 1 MiB where it gives none). Measured one
# thread per product against scipy's OpenBLAS 0.3.30 (SkylakeX kernels; Xeon with AVX-512,
# docs/BENCHMARKS.md): at 32 x 784 x 128 forward 1.3x, delta 1.8x, weight gradient 1.3x faster; at 16 rows
# 1.4-2.3x. Below 16 rows OpenBLAS's own small-matrix kernels win (8 rows: 0.7x). The upper bound was 48
# rows for every layer (there, on that Xeon, 784-128-10 fit at batch 64 was 0.97x); on a Zen 5 with
# AVX-512 (docs/BENCHMARKS.md, "Batches of 64 and 128"), each configuration in its own process, `fit` at
# batch 64 and 128 is 1.11-1.29x faster on one core and 1.18-1.31x on two threads (the team against
# OpenBLAS's threads: 784-128-10 and 784-256-256-10, whose largest weights take 0.4 and 0.8 MiB), and the
# AVX2 build (emulated there) 0.97-1.10x on one core and 0.99-1.40x on two threads. Layers whose weights
# do not fit lose from 64 rows: the products read all of W once per 4 rows (1024-2048-2048-10, 8-16 MiB of
# weights a layer, at batch 128: 10.5 k -> 7.9 k examples/s on two threads, 6.5 k -> 4.0 k on one core;
# at 64, 8.9 k -> 8.0 k). At 256 rows 784-128-10 gains on one core but its A (the batch's inputs, 0.8
# MiB) no longer stays in L2 next to W: 128 it is. Narrow layers: outputs from 8 on (a 10-class output
# layer) take them too, at no cost measurable at batch 32 (784-128-10: 517 -> 523 k on one core, 902 ->
# 885 k on two threads); see also small_gemm_layer. The bounds were first measured with both modes
# alternating in one process: OpenBLAS's threads, still spinning after their own products, then slowed
# the team down (two threads at batch 64: 412 k against 786-869 k alone).
cdef Py_ssize_t SMALL_GEMM_MIN_BATCH = 16
cdef Py_ssize_t SMALL_GEMM_MAX_BATCH = 128
cdef Py_ssize_t SMALL_GEMM_MAX_BATCH_ANY = 48
cdef Py_ssize_t SMALL_GEMM_L2_BYTES = fastbp_l2_bytes(1 << 20)
cdef Py_ssize_t SMALL_GEMM_MIN_INPUTS = 256
cdef Py_ssize_t SMALL_GEMM_MIN_OUTPUTS = 8
# Which build of them the layers use (_kernels_gemm.h: AVX-512, AVX2+FMA, or none, when BLAS serves every
# layer): the best this CPU runs, chosen at import; the environment variable FASTBP_SMALL_GEMM (avx512,
# avx2 or off) caps it, and _small_gemm_isa() changes it.
SMALL_GEMM_ISA_NAMES = {"off": FASTBP_GEMM_ISA_NONE, "avx2": FASTBP_GEMM_ISA_AVX2,
                        "avx512": FASTBP_GEMM_ISA_AVX512}
cdef int SMALL_GEMM_ISA = fastbp_small_gemm_select(FASTBP_GEMM_ISA_AVX512)


def _small_gemm_env_cap():
    value = os.environ.get("FASTBP_SMALL_GEMM", "").strip().lower()
    if not value:
        return
    if value not in SMALL_GEMM_ISA_NAMES:
        warnings.warn(f"FASTBP_SMALL_GEMM={value!r} is not one of {', '.join(SMALL_GEMM_ISA_NAMES)}; ignored",
                      RuntimeWarning, stacklevel=2)
        return
    global SMALL_GEMM_ISA
    SMALL_GEMM_ISA = fastbp_small_gemm_select(min(SMALL_GEMM_ISA_NAMES[value], SMALL_GEMM_ISA))


_small_gemm_env_cap()

# How many multiply-adds of training pass between two checks for Ctrl-C (each check takes the GIL; at
# 2e7 that is 1-4 ms of one core's work, so the GIL's cost is not measurable and Ctrl-C is seen within a
# few ms). The counting runs through the layers of a batch too (Tick below), so a single large batch
# is checked between its layers' products.
cdef double SIGNAL_CHECK_WORK = 2.0e7

# A single batch of this many multiply-adds or more is checked inside (between its layers' products).
# Below it the step runs unchecked (at most ~50 ms of one busy core, well inside the 0.2 s promise), which
# lets the update rule run layer by layer inside the backward pass (a 784-256-256-10 step at batch 256,
# 2e8, keeps that: Adam 1.17x -> 1.05x of SGD's time, docs/BENCHMARKS.md).
cdef double INNER_CHECK_WORK = 16 * SIGNAL_CHECK_WORK

# Plain SGD on a batch this big or bigger (whose step is worth a check inside it) copies the parameters
# before its backward pass, which updates them in place layer by layer, so that a Ctrl-C seen inside it
# can put them back bit for bit. The copy is n_params values against 3 x batch x n_params multiply-adds
# of the step, but a copied value costs as much time as 10-30 multiply-adds of a GEMM running near its
# peak: measured 2% of a float32 step at 256 rows (784-256-256-10), so the copy is made from 1,024 rows
# (about 0.5%). Below that the in-place backward pass is not checked inside (the forward pass and the
# batches around it still are): the numbers stay those of the in-place update, and such a backward pass
# is long only for networks of millions of weights.
cdef Py_ssize_t SNAPSHOT_MIN_BATCH = 1024

# The progress hook of train_epoch is called at most this often (seconds of monotonic wall time), at
# the points where signals are checked; the twin's PROGRESS_INTERVAL is the same.
PROGRESS_INTERVAL = 0.2

# all_finite releases the GIL from this many elements: below it the release costs more than the test.
cdef Py_ssize_t ALL_FINITE_NOGIL_MIN = 65536

cdef uint64_t GOLDEN_GAMMA = 0x9E3779B97F4A7C15ULL


# ---------------------------------------------------------------------------------------------------
# Checks for Ctrl-C (and progress reports) while the GIL is released


cdef struct Tick:
    double work              # multiply-adds since the last check
    double every             # check when `work` reaches this
    int stopped              # a signal was seen, or the progress hook raised: stop at the next exit point
    PyObject *progress       # borrowed: train_epoch's hook, or NULL
    PyObject *errors         # borrowed: a list that receives what the progress hook raised
    double last_report       # time.monotonic() of the last progress call (or of the start)
    const Py_ssize_t *done   # what the hook is told: the examples and the loss and weight sums of the
    const double *loss_sum   # completed batches
    const double *weight_sum


cdef void tick_init(Tick *t, object progress, list errors) noexcept:
    t.work = 0.0
    t.every = SIGNAL_CHECK_WORK
    t.stopped = 0
    t.progress = NULL if progress is None else <PyObject *>progress
    t.errors = <PyObject *>errors
    t.last_report = time.monotonic() if progress is not None else 0.0
    t.done = NULL
    t.loss_sum = NULL
    t.weight_sum = NULL


cdef bint tick_check(Tick *t) noexcept nogil:
    """Take the GIL, look for a pending signal (and report progress when due); True: stop."""
    cdef double now
    t.work = 0.0
    with gil:
        if check_signals() != 0:
            PyErr_Clear()
            t.stopped = 1
        elif t.progress != NULL and t.done != NULL:
            # the clock is read only here, at a signal check: never more often than the checks
            now = time.monotonic()
            if now - t.last_report >= PROGRESS_INTERVAL:
                t.last_report = now
                try:
                    (<object>t.progress)(t.done[0], t.loss_sum[0], t.weight_sum[0])
                except KeyboardInterrupt:  # Ctrl-C while the hook ran: an interruption like any other
                    t.stopped = 1
                except BaseException as error:  # the caller stops cleanly, then raises it
                    (<list>t.errors).append(error)
                    t.stopped = 1
    return t.stopped != 0


cdef inline bint tick(Tick *t, double work) noexcept nogil:
    """Count `work` multiply-adds; check when enough has passed since the last check. True: stop.
    A NULL tick never stops (the callers that need no checks pass NULL)."""
    if t == NULL:
        return False
    t.work += work
    if t.work < t.every:
        return False
    return tick_check(t)




cdef class Workspace:
    """Buffers for one network layout and up to ``max_batch`` rows, allocated once.

    Holds the per-layer activations, two delta buffers, the gradient (``grad``, laid out like
    ``params``), the gather buffers for shuffled mini-batches and the permutation.
    """

    cdef Plan plan
    cdef bint single           # float32 (True) or float64
    # Built for the *_sparse entry points: no dense input buffer, deltas as wide as the widest layer
    # after the input (the input layer never gets a delta), so memory does not grow with n_in.
    cdef readonly bint sparse_input
    cdef readonly object dtype
    cdef readonly Py_ssize_t max_batch
    cdef readonly tuple layer_sizes
    cdef readonly object grad
    cdef object _activations
    cdef object _deltas
    cdef object _batch_inputs
    cdef object _batch_targets
    cdef object _batch_weights
    cdef object _order
    # Raw pointers into the buffers above (owned by this object, so they never move): taking a typed
    # memoryview of each on every call would cost more than a small training step.
    cdef void *grad_ptr
    cdef void *activations_ptr
    cdef void *deltas_ptr
    cdef void *batch_inputs_ptr
    cdef void *batch_targets_ptr
    cdef void *batch_weights_ptr

    def __cinit__(self, layer_sizes, activation_codes, int loss_code, dtype, Py_ssize_t max_batch,
                  bint sparse_input=False):
        cdef Py_ssize_t n_layers = len(layer_sizes) - 1
        cdef Py_ssize_t l, position = 0, act_position = 0
        self.plan.sizes = NULL
        self.plan.acts = NULL
        self.plan.w_off = NULL
        self.plan.b_off = NULL
        self.plan.act_off = NULL
        self.plan.pool = NULL
        if n_layers < 1 or len(activation_codes) != n_layers or max_batch < 1:
            raise ValueError("Workspace: inconsistent layer_sizes, activation_codes or max_batch")
        self.plan.n_layers = <int>n_layers
        self.plan.loss = loss_code
        self.plan.max_batch = max_batch
        self.plan.sizes = <Py_ssize_t *>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        self.plan.acts = <int *>malloc(n_layers * sizeof(int))
        self.plan.w_off = <Py_ssize_t *>malloc(n_layers * sizeof(Py_ssize_t))
        self.plan.b_off = <Py_ssize_t *>malloc(n_layers * sizeof(Py_ssize_t))
        self.plan.act_off = <Py_ssize_t *>malloc(n_layers * sizeof(Py_ssize_t))
        if (self.plan.sizes == NULL or self.plan.acts == NULL or self.plan.w_off == NULL
                or self.plan.b_off == NULL or self.plan.act_off == NULL):
            raise MemoryError()
        self.plan.max_width = 0
        for l in range(n_layers + 1):
            self.plan.sizes[l] = layer_sizes[l]
            if self.plan.sizes[l] > self.plan.max_width and (l > 0 or not sparse_input):
                self.plan.max_width = self.plan.sizes[l]
        for l in range(n_layers):
            self.plan.acts[l] = activation_codes[l]
            self.plan.w_off[l] = position
            position += self.plan.sizes[l] * self.plan.sizes[l + 1]
            self.plan.b_off[l] = position
            position += self.plan.sizes[l + 1]
            self.plan.act_off[l] = act_position
            act_position += max_batch * self.plan.sizes[l + 1]
        self.plan.n_params = position

        self.dtype = np.dtype(dtype)
        if self.dtype != np.float32 and self.dtype != np.float64:
            raise TypeError(f"Workspace: dtype must be float32 or float64, got {self.dtype}")
        self.single = self.dtype == np.float32
        self.sparse_input = sparse_input
        self.max_batch = max_batch
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        # (on cache lines: the small products' vector loads of a row then stay within one line)
        self.grad = aligned_zeros(position, self.dtype)
        self._activations = aligned_zeros(act_position, self.dtype)
        self._deltas = aligned_zeros(2 * max_batch * self.plan.max_width, self.dtype)
        self._batch_inputs = aligned_zeros(0 if sparse_input else max_batch * self.plan.sizes[0], self.dtype)
        self._batch_targets = np.zeros(max_batch * self.plan.sizes[n_layers], dtype=self.dtype)
        self._batch_weights = np.zeros(max_batch, dtype=self.dtype)
        self._order = np.zeros(0, dtype=np.intp)
        self.grad_ptr = <void *><size_t>self.grad.ctypes.data
        self.activations_ptr = <void *><size_t>self._activations.ctypes.data
        self.deltas_ptr = <void *><size_t>self._deltas.ctypes.data
        self.batch_inputs_ptr = <void *><size_t>self._batch_inputs.ctypes.data
        self.batch_targets_ptr = <void *><size_t>self._batch_targets.ctypes.data
        self.batch_weights_ptr = <void *><size_t>self._batch_weights.ctypes.data

    def _small_layers(self, Py_ssize_t batch):
        """Per layer, whether its products at this batch size are the non-packing ones (small_gemm_layer;
        for the tests)."""
        cdef Py_ssize_t itemsize = 4 if self.single else 8
        cdef Py_ssize_t l
        uses = []
        for l in range(self.plan.n_layers):
            uses.append(bool(small_gemm_layer(&self.plan, batch, l, itemsize)))
        return tuple(uses)

    def _buffer_addresses(self):
        """The data address of each buffer, by name (for the tests: each starts on a cache line)."""
        return {name: buffer.ctypes.data for name, buffer in (
            ("grad", self.grad), ("activations", self._activations), ("deltas", self._deltas),
            ("batch_inputs", self._batch_inputs))}

    def __dealloc__(self):
        free(self.plan.sizes)
        free(self.plan.acts)
        free(self.plan.w_off)
        free(self.plan.b_off)
        free(self.plan.act_off)

    cdef Py_ssize_t[::1] order_buffer(self, Py_ssize_t n):
        # Grows at most once per fit: the number of examples does not change between epochs.
        if self._order.shape[0] < n:
            self._order = np.empty(n, dtype=np.intp)
        return self._order


# ---------------------------------------------------------------------------------------------------
# Elementwise pieces


cdef inline floating activate(floating z, int act) noexcept nogil:
    """f(z), written once in _kernels_rows.h (fastbp_activate); called with a constant code, so the
    compiler folds the switch away."""
    if floating is float:
        return fastbp_activate_f32(z, act)
    else:
        return fastbp_activate_f64(z, act)


cdef inline void bias_activate(floating *row, const floating *bias, Py_ssize_t n, int act) noexcept nogil:
    """row[j] = f(row[j] + bias[j]): the sweep that follows a matrix product."""
    cdef Py_ssize_t j
    cdef floating v
    if act == ACT_RELU:
        for j in range(n):
            v = row[j] + bias[j]
            row[j] = 0 if v < 0 else v
    elif act == ACT_SIGMOID:
        for j in range(n):
            row[j] = activate(row[j] + bias[j], ACT_SIGMOID)
    elif act == ACT_TANH:
        for j in range(n):
            row[j] = activate(row[j] + bias[j], ACT_TANH)
    else:
        for j in range(n):
            row[j] = row[j] + bias[j]


cdef inline void bias_activate_rows(floating *out, const floating *bias, Py_ssize_t rows, Py_ssize_t n,
                                    int act) noexcept nogil:
    """bias_activate on each of `rows` rows of n: ReLU and identity layers as one SIMD sweep (_kernels_rows.h)."""
    cdef Py_ssize_t r
    if act == ACT_RELU or act == ACT_IDENTITY:
        if floating is float:
            fastbp_bias_relu_rows_f32(out, bias, rows, n, act == ACT_RELU)
        else:
            fastbp_bias_relu_rows_f64(out, bias, rows, n, act == ACT_RELU)
    else:
        for r in range(rows):
            bias_activate(out + r * n, bias, n, act)


cdef inline void column_sums(floating *sums, const floating *x, Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """sums[j] = sum over the rows of x[r, j], added in row order (_kernels_rows.h)."""
    if floating is float:
        fastbp_column_sums_f32(sums, x, rows, n)
    else:
        fastbp_column_sums_f64(sums, x, rows, n)


cdef inline void times_derivative(floating *delta, const floating *a, Py_ssize_t n, int act) noexcept nogil:
    """delta *= f'(z), with f' computed from the layer's output a = f(z) (_kernels_rows.h); a ReLU's mask as
    one SIMD sweep."""
    if act == ACT_RELU:
        if floating is float:
            fastbp_relu_mask_f32(delta, a, n)
        else:
            fastbp_relu_mask_f64(delta, a, n)
        return
    if floating is float:
        fastbp_times_derivative_f32(delta, a, n, act)
    else:
        fastbp_times_derivative_f64(delta, a, n, act)


cdef inline floating dot(const floating *a, const floating *b, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fastbp_dot_f32(a, b, n)
    else:
        return fastbp_dot_f64(a, b, n)


cdef inline int train_rows(const Plan *p, floating *params, const floating *X, const floating *Y,
                           const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, floating lr,
                           floating *activations, floating *delta_a, floating *delta_b,
                           double *loss_sum, Py_ssize_t *done) noexcept nogil:
    """Per-example plain SGD over `count` rows, fused in C (fastbp/_kernels_rows.h)."""
    if floating is float:
        return fastbp_train_rows_f32(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                     delta_b, loss_sum, done)
    else:
        return fastbp_train_rows_f64(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                     delta_b, loss_sum, done)


cdef inline void gemm(char *transa, char *transb, int m, int n, int k, floating alpha,
                      const floating *a, int lda, const floating *b, int ldb, floating beta,
                      floating *c, int ldc) noexcept nogil:
    """Column-major BLAS gemm; the callers map row-major operands by swapping and transposing."""
    if floating is float:
        sgemm(transa, transb, &m, &n, &k, &alpha, <float *>a, &lda, <float *>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(transa, transb, &m, &n, &k, &alpha, <double *>a, &lda, <double *>b, &ldb, &beta, c, &ldc)


cdef inline bint blas_pays(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    return batch >= BLAS_MIN_BATCH and batch * n_in * n_out >= BLAS_MIN_WORK


cdef inline bint small_gemm_pays(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                 Py_ssize_t itemsize) noexcept nogil:
    return (SMALL_GEMM_ISA != FASTBP_GEMM_ISA_NONE and SMALL_GEMM_MIN_BATCH <= batch <= SMALL_GEMM_MAX_BATCH
            and n_in >= SMALL_GEMM_MIN_INPUTS
            and n_out >= SMALL_GEMM_MIN_OUTPUTS
            and (batch <= SMALL_GEMM_MAX_BATCH_ANY or n_in * n_out * itemsize <= SMALL_GEMM_L2_BYTES))


cdef bint small_gemm_layer(const Plan *p, Py_ssize_t batch, Py_ssize_t l,
                          Py_ssize_t itemsize) noexcept nogil:
    """Whether layer l's products at this batch size are the non-packing ones: where small_gemm_pays, and
    also where the layer is outside its bounds (too few inputs or outputs) but its BLAS product would be
    large enough for BLAS threads while the layers that take the small products have at least 8 times its
    work. On two threads those layers' products run on the kernel's team, and a BLAS product starting BLAS
    threads would have them spin against the team (product_threads then keeps the team off: with the row
    bound raised to 256 for the measurement, 784-128-10 at batch 256, whose 128 -> 10 layer crosses
    BLAS_THREADED_WORK, ran at 478-503 k examples/s on two threads, and at 804 k with that layer on the
    small products too). Under sparse input layer 0 counts among the others although the sparse loops
    compute it: a heuristic's error, never a wrong result. A layer with a larger share stays on BLAS: the
    small products lose on narrow layers, and the choice must not depend on the thread count (the same bits on
    any count), so one core would pay for it (100-512-512-10 at batch 32, its 100 -> 512 layer forced:
    two threads 110 k -> 168 k, one core 110 k -> 95 k)."""
    cdef Py_ssize_t k
    cdef Py_ssize_t n_in = p.sizes[l], n_out = p.sizes[l + 1]
    cdef double work = <double>batch * n_in * n_out, small_work = 0.0
    if small_gemm_pays(batch, n_in, n_out, itemsize):
        return True
    if work < BLAS_THREADED_WORK:
        return False
    for k in range(p.n_layers):
        if small_gemm_pays(batch, p.sizes[k], p.sizes[k + 1], itemsize):
            small_work += <double>batch * p.sizes[k] * p.sizes[k + 1]
    return small_work >= 8.0 * work


# The non-packing products (_kernels_gemm.h), split over the plan's threads during a training call (p.pool;
# NULL elsewhere): the same bits on any number of threads.
cdef inline void gemm_nt(const Plan *p, const floating *a, const floating *W, const floating *bias, int act,
                         floating *out, Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """out (batch x n_out) = f(a W^T + bias)."""
    if floating is float:
        fastbp_gemm_nt_team_f32(p.pool, a, W, bias, act, out, batch, n_in, n_out)
    else:
        fastbp_gemm_nt_team_f64(p.pool, a, W, bias, act, out, batch, n_in, n_out)


cdef inline void gemm_nn(const Plan *p, const floating *delta, const floating *W, floating *out,
                         Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """out (batch x n_in) = delta (batch x n_out) W (n_out x n_in)."""
    if floating is float:
        fastbp_gemm_nn_team_f32(p.pool, delta, W, out, batch, n_in, n_out)
    else:
        fastbp_gemm_nn_team_f64(p.pool, delta, W, out, batch, n_in, n_out)


cdef inline void gemm_tn(const Plan *p, const floating *delta, const floating *a, floating *out,
                         Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out, floating alpha,
                         bint accumulate) noexcept nogil:
    """out (n_out x n_in) = alpha delta^T a (+ out when accumulating)."""
    if floating is float:
        fastbp_gemm_tn_team_f32(p.pool, delta, a, out, batch, n_in, n_out, alpha, accumulate)
    else:
        fastbp_gemm_tn_team_f64(p.pool, delta, a, out, batch, n_in, n_out, alpha, accumulate)


# ---------------------------------------------------------------------------------------------------
# Forward, loss and backward on one mini-batch


cdef void dense_forward(const Plan *p, const floating *params, const floating *inputs, Py_ssize_t batch,
                        floating *activations, Tick *checks, Py_ssize_t first_layer=0) noexcept nogil:
    """Every layer's output for `batch` rows of `inputs`: z = a_prev W^T + b, a = f(z), fused.

    ``checks`` (NULL: none) counts each layer's work and may stop the pass between layers (``stopped``).
    ``first_layer`` > 0: start there, with ``inputs`` the output of the layer before (the sparse path
    computes layer 0 itself).
    """
    cdef const floating *a_prev = inputs
    cdef const floating *W
    cdef const floating *bias
    cdef floating *out
    cdef floating *row
    cdef Py_ssize_t l, r, j, n_in, n_out
    cdef int act
    for l in range(first_layer, p.n_layers):
        n_in = p.sizes[l]
        n_out = p.sizes[l + 1]
        act = p.acts[l]
        W = params + p.w_off[l]
        bias = params + p.b_off[l]
        out = activations + p.act_off[l]
        if small_gemm_layer(p, batch, l, sizeof(floating)):
            gemm_nt(p, a_prev, W, bias, act, out, batch, n_in, n_out)
        elif blas_pays(batch, n_in, n_out):
            # out (batch x n_out, row-major) = a_prev (batch x n_in) @ W^T
            gemm(b"T", b"N", <int>n_out, <int>batch, <int>n_in, 1, W, <int>n_in, a_prev, <int>n_in,
                 0, out, <int>n_out)
            bias_activate_rows(out, bias, batch, n_out, act)
        else:
            for r in range(batch):
                row = out + r * n_out
                for j in range(n_out):
                    row[j] = dot(W + j * n_in, a_prev + r * n_in, n_in)
                bias_activate(row, bias, n_out, act)
        a_prev = out
        if tick(checks, <double>batch * n_in * n_out):
            return


cdef double output_delta(const Plan *p, const floating *output, const floating *targets,
                         const floating *weights, Py_ssize_t batch, floating *delta) noexcept nogil:
    """The batch loss, and delta = dL/dz of the last layer (the batch mean included).

    ``weights`` NULL: the plain mean over the rows. Otherwise the weighted mean
    sum_i w_i l_i / sum_i w_i (a zero weight sum gives NaN: the callers never pass one).
    The per-row formulas are fastbp_output_delta_row in _kernels_rows.h.
    """
    cdef Py_ssize_t K = p.sizes[p.n_layers]
    cdef int act = p.acts[p.n_layers - 1]
    cdef double divisor = fastbp_loss_divisor(p.loss, K)
    cdef double numerator = fastbp_loss_numerator(p.loss)
    cdef double total = 0.0, weight_sum = 0.0, row
    cdef Py_ssize_t r
    cdef floating scale
    cdef bint softmax = p.loss == LOSS_CROSS_ENTROPY
    if softmax:
        # the exponentials of the whole batch in one sweep; each row's loss and delta from them below
        softmax_exps(output, batch, K, delta)
    if weights == NULL:
        scale = <floating>(numerator / (batch * divisor))
        for r in range(batch):
            if softmax:
                total = cross_entropy_row(output + r * K, targets + r * K, K, scale, delta + r * K, total)
            else:
                total = output_delta_row(output + r * K, targets + r * K, K, p.loss, act, scale, delta + r * K,
                                         total)
        return fastbp_loss_half(p.loss) * total / (batch * divisor)
    for r in range(batch):
        weight_sum += weights[r]
    for r in range(batch):
        scale = <floating>(numerator * weights[r] / (weight_sum * divisor))
        if softmax:
            row = cross_entropy_row(output + r * K, targets + r * K, K, scale, delta + r * K, 0.0)
        else:
            row = output_delta_row(output + r * K, targets + r * K, K, p.loss, act, scale, delta + r * K, 0.0)
        total += weights[r] * row
    return fastbp_loss_half(p.loss) * total / (weight_sum * divisor)


cdef inline void softmax_exps(const floating *out, Py_ssize_t rows, Py_ssize_t K, floating *e) noexcept nogil:
    if floating is float:
        fastbp_softmax_exps_f32(out, rows, K, e)
    else:
        fastbp_softmax_exps_f64(out, rows, K, e)


cdef inline double cross_entropy_row(const floating *out, const floating *y, Py_ssize_t K, floating scale,
                                     floating *delta, double total) noexcept nogil:
    if floating is float:
        return fastbp_cross_entropy_row_f32(out, y, K, scale, delta, total)
    else:
        return fastbp_cross_entropy_row_f64(out, y, K, scale, delta, total)


cdef inline double output_delta_row(const floating *out, const floating *y, Py_ssize_t K, int loss, int act,
                                    floating scale, floating *delta, double total) noexcept nogil:
    if floating is float:
        return fastbp_output_delta_row_f32(out, y, K, loss, act, scale, delta, total)
    else:
        return fastbp_output_delta_row_f64(out, y, K, loss, act, scale, delta, total)


cdef inline void axpy(floating *y, const floating *x, floating alpha, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] += alpha * x[i]


cdef inline int train_rows_adam(const Plan *p, floating *params, const floating *X, const floating *Y,
                                const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count,
                                const AdamRows *adam, floating *state, floating *activations,
                                floating *delta_a, floating *delta_b, double *loss_sum,
                                Py_ssize_t *done) noexcept nogil:
    """Per-example Adam/AdamW over `count` rows, fused in C (fastbp/_kernels_rows.h)."""
    if floating is float:
        return fastbp_train_rows_adam_f32(p, params, X, Y, order, start, count, adam, state, activations,
                                          delta_a, delta_b, loss_sum, done)
    else:
        return fastbp_train_rows_adam_f64(p, params, X, Y, order, start, count, adam, state, activations,
                                          delta_a, delta_b, loss_sum, done)


cdef void dense_backward(const Plan *p, floating *params, const floating *inputs, Py_ssize_t batch,
                         const floating *activations, floating *delta, floating *delta_other,
                         floating *grad, floating lr, bint update_in_place, int rule, const double *hyper,
                         floating *state, int64_t steps_before, Tick *checks,
                         Py_ssize_t stop_layer=0) noexcept nogil:
    """Back-propagate the last layer's delta through every layer (down to ``stop_layer``: the sparse path
    handles layer 0 itself, from the delta this leaves for it).

    With ``update_in_place`` (plain SGD) each layer's weights are updated as soon as its delta for the
    layer below is computed from the old weights: the gradient is never stored. Otherwise the gradient
    of the batch loss is written into ``grad`` (layout of params), and with ``rule`` >= 0 each layer's
    slice of params is then updated by that rule at once (``optimizer_range``), while its gradient is
    still in cache; the caller counts the step. ``rule`` < 0: the gradient only.

    ``checks`` (NULL: none) may stop the pass between two products (a layer's delta and its gradient,
    and between layers); with ``update_in_place`` the caller must then put the parameters back. A rule
    >= 0 writes parameters during the pass, so it is never combined with checks (the caller runs the
    rule after the pass instead).
    """
    cdef Py_ssize_t l, r, j, n_in, n_out
    cdef floating *W
    cdef floating *bias
    cdef floating *gW
    cdef const floating *a_prev
    cdef floating *d_prev
    cdef floating *swap
    cdef floating *sums
    cdef floating d
    cdef bint use_blas, use_small
    for l in range(p.n_layers - 1, stop_layer - 1, -1):
        n_in = p.sizes[l]
        n_out = p.sizes[l + 1]
        W = params + p.w_off[l]
        bias = params + p.b_off[l]
        a_prev = inputs if l == 0 else activations + p.act_off[l - 1]
        use_small = small_gemm_layer(p, batch, l, sizeof(floating))
        use_blas = not use_small and blas_pays(batch, n_in, n_out)

        # 1. the delta of the layer below, from the weights before this step's update
        if l > 0:
            d_prev = delta_other
            if use_small:
                gemm_nn(p, delta, W, d_prev, batch, n_in, n_out)
            elif use_blas:
                # d_prev (batch x n_in) = delta (batch x n_out) @ W (n_out x n_in)
                gemm(b"N", b"N", <int>n_in, <int>batch, <int>n_out, 1, W, <int>n_in, delta, <int>n_out,
                     0, d_prev, <int>n_in)
            else:
                memset(d_prev, 0, batch * n_in * sizeof(floating))
                for r in range(batch):
                    for j in range(n_out):
                        d = delta[r * n_out + j]
                        if d != 0:
                            axpy(d_prev + r * n_in, W + j * n_in, d, n_in)
            times_derivative(d_prev, a_prev, batch * n_in, p.acts[l - 1])
            if tick(checks, <double>batch * n_in * n_out):
                return

        # 2. the gradient of this layer (or the update itself)
        if update_in_place:
            gW = W
        else:
            gW = grad + p.w_off[l]
        if use_small:
            gemm_tn(p, delta, a_prev, gW, batch, n_in, n_out, -lr if update_in_place else 1, update_in_place)
        elif use_blas:
            # gW (n_out x n_in) = delta^T (n_out x batch) @ a_prev (batch x n_in)
            if update_in_place:
                gemm(b"N", b"T", <int>n_in, <int>n_out, <int>batch, -lr, a_prev, <int>n_in, delta,
                     <int>n_out, 1, gW, <int>n_in)
            else:
                gemm(b"N", b"T", <int>n_in, <int>n_out, <int>batch, 1, a_prev, <int>n_in, delta,
                     <int>n_out, 0, gW, <int>n_in)
        else:
            if not update_in_place:
                memset(gW, 0, n_in * n_out * sizeof(floating))
            for j in range(n_out):
                for r in range(batch):
                    d = delta[r * n_out + j]
                    if d != 0:
                        if update_in_place:
                            axpy(gW + j * n_in, a_prev + r * n_in, -lr * d, n_in)
                        else:
                            axpy(gW + j * n_in, a_prev + r * n_in, d, n_in)
        # the bias gradient: column sums of delta, accumulated row by row (contiguous reads) into the
        # gradient buffer's bias slot, which serves as scratch when updating in place
        sums = grad + p.b_off[l]
        column_sums(sums, delta, batch, n_out)
        if update_in_place:
            for j in range(n_out):
                bias[j] = bias[j] - lr * sums[j]
        elif rule >= 0:
            # this layer's weights and bias are one slice of params: [w_off, b_off + n_out)
            optimizer_range_team(p, rule, hyper, params, grad, state, p.n_params, p.w_off[l],
                                 p.b_off[l] + n_out, steps_before)

        if l > 0:
            swap = delta
            delta = delta_other
            delta_other = swap
            if tick(checks, <double>batch * n_in * n_out):
                return


cdef double l2_sweep(const Plan *p, const floating *params, floating *grad, floating scale) noexcept nogil:
    """scikit-learn's L2 term on the weights only: ``grad_W += scale * W`` for every weight matrix (the
    biases untouched); returns ``sum(W**2)`` over them, in double, for the batch loss."""
    cdef Py_ssize_t l
    cdef double total = 0.0
    for l in range(p.n_layers):
        if floating is float:
            total += fastbp_l2_sweep_f32(params + p.w_off[l], grad + p.w_off[l], p.b_off[l] - p.w_off[l], scale)
        else:
            total += fastbp_l2_sweep_f64(params + p.w_off[l], grad + p.w_off[l], p.b_off[l] - p.w_off[l], scale)
    return total


cdef inline floating sqrt_(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating lerp(floating start, floating end, floating weight) noexcept nogil:
    """start + weight (end - start), computed as torch.lerp does (from the nearer end)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


cdef void optimizer_update(int rule, const double *hyper, floating *params, const floating *grad,
                           floating *state, Py_ssize_t n, int64_t *steps) noexcept nogil:
    """One update of the flat buffer from ``grad`` by ``rule``, exactly as torch.optim's single-tensor
    step; ``state`` holds the rule's rows of ``n`` values each (fastbp/_spec.py STATE_ROWS).

    The readable version is fastbp/_reference.py's optimizer_step.
    """
    optimizer_range(rule, hyper, params, grad, state, n, 0, n, steps[0])
    steps[0] += 1


cdef void optimizer_range(int rule, const double *hyper, floating *params, const floating *grad,
                          floating *state, Py_ssize_t n, Py_ssize_t start, Py_ssize_t stop,
                          int64_t steps_before) noexcept nogil:
    """The update of ``optimizer_update`` on the values [start, stop) only; the caller counts the step.

    Every rule is elementwise, so updating the buffer in pieces (one layer at a time, while its gradient
    is still in cache) gives the same bits as one sweep. The per-step scalars (bias corrections) are
    computed in double, like torch's Python floats, from ``steps_before`` (the steps already taken).
    """
    cdef Py_ssize_t k
    cdef floating g, v, f
    cdef floating lr = <floating>hyper[FASTBP_HYPER_LR]
    cdef floating weight_decay = <floating>hyper[FASTBP_HYPER_WEIGHT_DECAY]
    cdef floating momentum, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias2_sqrt, decay
    cdef floating alpha, one_minus_alpha, eta_minus, eta_plus, step_min, step_max
    cdef bint flag
    cdef double t = <double>(steps_before + 1)
    cdef floating *row0 = state
    cdef floating *row1 = state + n
    cdef floating *row2 = state + 2 * n
    if stop <= start:
        return
    if rule == FASTBP_SGD:
        # torch.optim.SGD, dampening 0: g += wd p; v = mu v + g; g = g + mu v (Nesterov) or v; p -= lr g
        momentum = <floating>hyper[FASTBP_HYPER_SGD_MOMENTUM]
        flag = hyper[FASTBP_HYPER_SGD_NESTEROV] != 0
        for k in range(start, stop):
            g = grad[k]
            if weight_decay != 0:
                g = g + weight_decay * params[k]
            if momentum != 0:
                v = momentum * row0[k] + g
                row0[k] = v
                if flag:
                    g = g + momentum * v
                else:
                    g = v
            params[k] = params[k] - lr * g
    elif rule == FASTBP_ADAM or rule == FASTBP_ADAMW:
        # rows: exp_avg m, exp_avg_sq s, max_exp_avg_sq; the sweep is _kernels.h's fastbp_adam
        one_minus_beta1 = <floating>(1 - hyper[FASTBP_HYPER_ADAM_BETA1])
        beta2 = <floating>hyper[FASTBP_HYPER_ADAM_BETA2]
        one_minus_beta2 = <floating>(1 - hyper[FASTBP_HYPER_ADAM_BETA2])
        eps = <floating>hyper[FASTBP_HYPER_ADAM_EPS]
        flag = hyper[FASTBP_HYPER_ADAM_AMSGRAD] != 0
        if hyper[FASTBP_HYPER_ADAM_SKLEARN_EPS] != 0:
            # scikit-learn's Adam: p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(s) + eps)
            step_size = <floating>(-(hyper[FASTBP_HYPER_LR] * sqrt(1 - pow(hyper[FASTBP_HYPER_ADAM_BETA2], t))
                                     / (1 - pow(hyper[FASTBP_HYPER_ADAM_BETA1], t))))
            bias2_sqrt = 1
        else:
            step_size = <floating>(-(hyper[FASTBP_HYPER_LR] / (1 - pow(hyper[FASTBP_HYPER_ADAM_BETA1], t))))
            bias2_sqrt = <floating>sqrt(1 - pow(hyper[FASTBP_HYPER_ADAM_BETA2], t))
        if rule == FASTBP_ADAMW:
            decay = <floating>(1 - hyper[FASTBP_HYPER_LR] * hyper[FASTBP_HYPER_WEIGHT_DECAY])
            f = 0
        else:
            decay = 1
            f = weight_decay
        if floating is float:
            fastbp_adam_f32(params + start, grad + start, row0 + start, row1 + start, row2 + start,
                            stop - start, decay, f, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                            bias2_sqrt, flag)
        else:
            fastbp_adam_f64(params + start, grad + start, row0 + start, row1 + start, row2 + start,
                            stop - start, decay, f, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                            bias2_sqrt, flag)
    elif rule == FASTBP_RMSPROP:
        # rows: square_avg s, momentum_buffer, grad_avg; the sweep is _kernels.h's fastbp_rmsprop
        alpha = <floating>hyper[FASTBP_HYPER_RMSPROP_ALPHA]
        one_minus_alpha = <floating>(1 - hyper[FASTBP_HYPER_RMSPROP_ALPHA])
        eps = <floating>hyper[FASTBP_HYPER_RMSPROP_EPS]
        momentum = <floating>hyper[FASTBP_HYPER_RMSPROP_MOMENTUM]
        flag = hyper[FASTBP_HYPER_RMSPROP_CENTERED] != 0
        if floating is float:
            fastbp_rmsprop_f32(params + start, grad + start, row0 + start, row1 + start, row2 + start,
                               stop - start, -lr, weight_decay, alpha, one_minus_alpha, eps, momentum, flag)
        else:
            fastbp_rmsprop_f64(params + start, grad + start, row0 + start, row1 + start, row2 + start,
                               stop - start, -lr, weight_decay, alpha, one_minus_alpha, eps, momentum, flag)
    elif rule == FASTBP_RPROP:
        # rows: prev (the last gradient used), step_size (filled with lr at the first step, as torch); the
        # sweep is _kernels.h's fastbp_rprop
        eta_minus = <floating>hyper[FASTBP_HYPER_RPROP_ETA_MINUS]
        eta_plus = <floating>hyper[FASTBP_HYPER_RPROP_ETA_PLUS]
        step_min = <floating>hyper[FASTBP_HYPER_RPROP_STEP_MIN]
        step_max = <floating>hyper[FASTBP_HYPER_RPROP_STEP_MAX]
        if steps_before == 0:
            for k in range(start, stop):
                row1[k] = lr
        if floating is float:
            fastbp_rprop_f32(params + start, grad + start, row0 + start, row1 + start, stop - start, eta_minus,
                             eta_plus, step_min, step_max)
        else:
            fastbp_rprop_f64(params + start, grad + start, row0 + start, row1 + start, stop - start, eta_minus,
                             eta_plus, step_min, step_max)


# The update of a layer on the training call's team of threads (p.pool), each thread a slice of the range
# cut at multiples of TEAM_SWEEP_UNIT values; ranges under TEAM_MIN_SWEEP values run on the calling thread.
# The rules are elementwise (the same bits in any pieces, as optimizer_range says).
cdef Py_ssize_t TEAM_SWEEP_UNIT = 64
cdef Py_ssize_t TEAM_MIN_SWEEP = 16384

ctypedef struct RangeJob:
    int rule
    const double *hyper
    void *params
    const void *grad
    void *state
    Py_ssize_t n, start, stop
    int64_t steps_before


cdef inline void optimizer_part(const RangeJob *job, floating *params, int part, int parts) noexcept nogil:
    """The part-th slice of a RangeJob (params: job.params as the job's dtype)."""
    cdef Py_ssize_t b, e
    fastbp_pool_slice(job.stop - job.start, TEAM_SWEEP_UNIT, part, parts, &b, &e)
    optimizer_range(job.rule, job.hyper, params, <const floating *>job.grad, <floating *>job.state, job.n,
                    job.start + b, job.start + e, job.steps_before)


cdef void optimizer_part_f32(void *ctx, int part, int parts) noexcept nogil:
    optimizer_part(<RangeJob *>ctx, <float *>(<RangeJob *>ctx).params, part, parts)


cdef void optimizer_part_f64(void *ctx, int part, int parts) noexcept nogil:
    optimizer_part(<RangeJob *>ctx, <double *>(<RangeJob *>ctx).params, part, parts)


cdef void optimizer_range_team(const Plan *p, int rule, const double *hyper, floating *params,
                               const floating *grad, floating *state, Py_ssize_t n, Py_ssize_t start,
                               Py_ssize_t stop, int64_t steps_before) noexcept nogil:
    """optimizer_range, split over p.pool when there is one and the range is worth it."""
    cdef RangeJob job
    if p.pool == NULL or stop - start < TEAM_MIN_SWEEP:
        optimizer_range(rule, hyper, params, grad, state, n, start, stop, steps_before)
        return
    job = RangeJob(rule=rule, hyper=hyper, params=params, grad=grad, state=state, n=n, start=start, stop=stop,
                   steps_before=steps_before)
    if floating is float:
        fastbp_pool_run(p.pool, optimizer_part_f32, &job)
    else:
        fastbp_pool_run(p.pool, optimizer_part_f64, &job)


# The shuffled batch's rows gathered on the team: each thread copies its slice of the rows, so each core
# reads half of the batch from its own cache in the products that follow.
ctypedef struct GatherJob:
    char *dst
    const char *src
    const Py_ssize_t *order
    Py_ssize_t count
    size_t row_bytes


cdef void gather_part(void *ctx, int part, int parts) noexcept nogil:
    cdef GatherJob *job = <GatherJob *>ctx
    cdef Py_ssize_t b, e
    fastbp_pool_slice(job.count, 1, part, parts, &b, &e)
    fastbp_gather_rows(job.dst + b * job.row_bytes, job.src, job.order + b, e - b, job.row_bytes)


cdef inline void gather_rows_team(const Plan *p, char *dst, const char *src, const Py_ssize_t *order,
                                  Py_ssize_t count, size_t row_bytes) noexcept nogil:
    cdef GatherJob job
    if p.pool == NULL:
        fastbp_gather_rows(dst, src, order, count, row_bytes)
        return
    job = GatherJob(dst=dst, src=src, order=order, count=count, row_bytes=row_bytes)
    fastbp_pool_run(p.pool, gather_part, &job)


# ---------------------------------------------------------------------------------------------------
# The shuffle permutation (specification: fastbp/_spec.py)


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void fill_permutation(Py_ssize_t *order, Py_ssize_t n, uint64_t key) noexcept nogil:
    cdef Py_ssize_t i, j, t
    cdef uint64_t h
    for i in range(n):
        order[i] = i
    for i in range(n - 1, 0, -1):
        h = mix64(key + GOLDEN_GAMMA * <uint64_t>(i + 1))
        j = <Py_ssize_t>(((h >> 32) * <uint64_t>(i + 1)) >> 32)
        t = order[i]
        order[i] = order[j]
        order[j] = t


# ---------------------------------------------------------------------------------------------------
# One batch's passes over dense rows or CSR rows (every entry point below goes through these two)


cdef inline void csr_pointers(const floating[::1] data, const Py_ssize_t[::1] indices,
                              const Py_ssize_t[::1] indptr, const floating **data_ptr,
                              const Py_ssize_t **indices_ptr, const Py_ssize_t **indptr_ptr) noexcept:
    """The raw pointers of CSR arrays for the *_sparse entry points (NULL for empty data: no non-zeros)."""
    data_ptr[0] = &data[0] if data.shape[0] > 0 else NULL
    indices_ptr[0] = &indices[0] if indices.shape[0] > 0 else NULL
    indptr_ptr[0] = &indptr[0]


cdef void forward_rows(const Plan *p, const floating *params, const floating *inputs, const floating *data,
                       const Py_ssize_t *indices, const Py_ssize_t *indptr, const Py_ssize_t *order,
                       Py_ssize_t start, Py_ssize_t batch, floating *activations, Tick *checks) noexcept nogil:
    """Every layer's output for one batch: the dense rows at ``inputs``, or (``indptr`` not NULL) the CSR
    rows ``start ..`` (through ``order`` when not NULL), layer 0 from their non-zeros."""
    if indptr != NULL:
        sparse_forward_first(p, params, data, indices, indptr, order, start, batch, activations)
        dense_forward(p, params, activations + p.act_off[0], batch, activations, checks, 1)
    else:
        dense_forward(p, params, inputs, batch, activations, checks)


cdef void backward_rows(const Plan *p, floating *params, const floating *inputs, const floating *data,
                        const Py_ssize_t *indices, const Py_ssize_t *indptr, const Py_ssize_t *order,
                        Py_ssize_t start, Py_ssize_t batch, const floating *activations, floating *deltas,
                        floating *grad, floating lr, bint update_in_place, int rule, const double *hyper,
                        floating *state, int64_t steps_before, Tick *checks) noexcept nogil:
    """dense_backward for the batch of forward_rows; CSR rows take layer 0 from their non-zeros (no
    per-layer rule there: the caller runs the rule after the pass)."""
    cdef Py_ssize_t half = p.max_batch * p.max_width
    if indptr == NULL:
        dense_backward(p, params, inputs, batch, activations, deltas, deltas + half, grad, lr,
                       update_in_place, rule, hyper, state, steps_before, checks)
        return
    dense_backward(p, params, activations, batch, activations, deltas, deltas + half, grad, lr,
                   update_in_place, -1, NULL, NULL, 0, checks, 1)
    if checks == NULL or not checks.stopped:
        sparse_backward_first(p, params, data, indices, indptr, order, start, batch, first_delta(p, deltas),
                              grad, lr, update_in_place)


# ---------------------------------------------------------------------------------------------------
# Entry points (same names and semantics as fastbp._reference)


cdef object _predict(Workspace ws, floating[::1] params, const floating[:, ::1] X,
                     const floating[::1] csr_data, const Py_ssize_t[::1] csr_indices,
                     const Py_ssize_t[::1] csr_indptr, floating[:, ::1] out):
    """predict and predict_sparse: the rows are X, or, with X None, the CSR arrays."""
    cdef const Plan *p = &ws.plan
    cdef floating *activations = <floating *>ws.activations_ptr
    cdef bint sparse = X is None
    cdef Py_ssize_t n = csr_indptr.shape[0] - 1 if sparse else X.shape[0], start, batch
    cdef Py_ssize_t n_in = p.sizes[0], K = p.sizes[p.n_layers]
    cdef const floating *X_ptr = NULL
    cdef const floating *data_ptr = NULL
    cdef const Py_ssize_t *indices_ptr = NULL
    cdef const Py_ssize_t *indptr_ptr = NULL
    cdef Tick checks
    if n <= 0:
        return None
    if sparse:
        csr_pointers(csr_data, csr_indices, csr_indptr, &data_ptr, &indices_ptr, &indptr_ptr)
    else:
        X_ptr = &X[0, 0]
    tick_init(&checks, None, None)
    with nogil:
        start = 0
        while start < n:
            batch = min(p.max_batch, n - start)
            forward_rows(p, &params[0], X_ptr + start * n_in if not sparse else NULL, data_ptr, indices_ptr,
                         indptr_ptr, NULL, start, batch, activations, &checks)
            if checks.stopped:
                break
            memcpy(&out[0, 0] + start * K, activations + p.act_off[p.n_layers - 1],
                   batch * K * sizeof(floating))
            start += batch
    if checks.stopped:
        raise KeyboardInterrupt


cdef object _loss_and_gradient(Workspace ws, floating[::1] params, const floating[:, ::1] X,
                               const floating[::1] csr_data, const Py_ssize_t[::1] csr_indices,
                               const Py_ssize_t[::1] csr_indptr, const floating[:, ::1] Y, sample_weight):
    """loss_and_gradient and loss_and_gradient_sparse: the rows are X, or, with X None, the CSR arrays."""
    cdef const Plan *p = &ws.plan
    cdef floating *activations = <floating *>ws.activations_ptr
    cdef floating *deltas = <floating *>ws.deltas_ptr
    cdef floating *grad = <floating *>ws.grad_ptr
    cdef bint sparse = X is None
    cdef Py_ssize_t batch = csr_indptr.shape[0] - 1 if sparse else X.shape[0]
    cdef double loss
    cdef const floating[::1] weights_view
    cdef const floating *weights = NULL
    cdef const floating *X_ptr = NULL
    cdef const floating *data_ptr = NULL
    cdef const Py_ssize_t *indices_ptr = NULL
    cdef const Py_ssize_t *indptr_ptr = NULL
    cdef Tick checks
    if batch > p.max_batch:
        raise ValueError(f"batch of {batch} rows exceeds the workspace's {p.max_batch}")
    if sample_weight is not None:
        weights_view = sample_weight
        weights = &weights_view[0]
    if sparse:
        csr_pointers(csr_data, csr_indices, csr_indptr, &data_ptr, &indices_ptr, &indptr_ptr)
    else:
        X_ptr = &X[0, 0]
    tick_init(&checks, None, None)
    with nogil:
        forward_rows(p, &params[0], X_ptr, data_ptr, indices_ptr, indptr_ptr, NULL, 0, batch, activations,
                     &checks)
        if not checks.stopped:
            loss = output_delta(p, activations + p.act_off[p.n_layers - 1], &Y[0, 0], weights, batch,
                                deltas)
            backward_rows(p, &params[0], X_ptr, data_ptr, indices_ptr, indptr_ptr, NULL, 0, batch, activations,
                          deltas, grad, 0, False, -1, NULL, NULL, 0, &checks)
    if checks.stopped:  # ws.grad is then partly written: scratch, as after any call
        raise KeyboardInterrupt
    return loss


cdef const Py_ssize_t[::1] check_order(order, Py_ssize_t n):
    """An explicit row order for train_epoch: n indices of np.intp in [0, n), C-contiguous (the kernel reads
    rows through it unchecked)."""
    cdef const Py_ssize_t[::1] view
    cdef Py_ssize_t i, v
    if order.dtype != np.intp or order.ndim != 1 or order.shape[0] != n:
        raise ValueError(f"an explicit row order must be a 1-D np.intp array of {n} row indices; got "
                         f"{order.dtype} of shape {order.shape}")
    view = np.ascontiguousarray(order)
    for i in range(n):
        v = view[i]
        if v < 0 or v >= n:
            raise ValueError(f"an explicit row order must hold indices in [0, {n}); got {v} at position {i}")
    return view


cdef inline bint values_finite(const floating *values, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fastbp_all_finite_f32(values, n) != 0
    else:
        return fastbp_all_finite_f64(values, n) != 0


cdef bint rows_finite(const floating *X, Py_ssize_t n_in, const Py_ssize_t *order, Py_ssize_t start,
                      Py_ssize_t count) noexcept nogil:
    """Whether the `count` rows from position `start` of the epoch's order (order NULL: in order) are finite."""
    cdef Py_ssize_t r
    if order == NULL:
        return values_finite(X + start * n_in, count * n_in)
    for r in range(count):
        if not values_finite(X + order[start + r] * n_in, n_in):
            return False
    return True


# A training call runs its non-packing products on more than one thread only when a product is worth
# splitting (FASTBP_SPLIT_MIN_WORK multiply-adds, _kernels_gemm.h) and the epoch has at least TEAM_MIN_STEPS
# steps to spread the threads' creation (tens of microseconds) over; and never when another layer's BLAS
# product is large enough for the BLAS to run it on its own threads (BLAS_THREADED_WORK multiply-adds,
# OpenBLAS's threshold), which would then compete with the team's waiting threads for the cores (measured:
# 100-512-512-10 at batch 32, 70 k examples/s with both against 82 k on one thread). Since such a layer
# takes the small products itself whenever another layer does (small_gemm_layer), that now happens only
# where no layer is on the team anyway.
cdef Py_ssize_t TEAM_MIN_STEPS = 4


cdef int product_threads(const Plan *p, int threads, Py_ssize_t batch, Py_ssize_t n, bint sparse,
                         Py_ssize_t itemsize) noexcept:
    """How many threads a training call's products use: ``threads``, or 1 where none of its products runs
    on the non-packing path (_kernels_gemm.h), none is worth splitting, or the BLAS may start threads."""
    cdef Py_ssize_t l
    cdef double work
    cdef bint worth = False
    if threads <= 1 or n < TEAM_MIN_STEPS * batch:
        return 1
    for l in range(1 if sparse else 0, p.n_layers):
        work = <double>batch * p.sizes[l] * p.sizes[l + 1]
        if small_gemm_layer(p, batch, l, itemsize):
            worth = worth or work >= FASTBP_SPLIT_MIN_WORK
        elif blas_pays(batch, p.sizes[l], p.sizes[l + 1]) and work >= BLAS_THREADED_WORK:
            return 1
    return threads if worth else 1


cdef object _train_epoch(Workspace ws, floating[::1] params, const floating[:, ::1] X,
                         const floating[::1] csr_data, const Py_ssize_t[::1] csr_indices,
                         const Py_ssize_t[::1] csr_indptr,
                         const floating[:, ::1] Y, sample_weight, Py_ssize_t batch_size, int rule,
                         const double[::1] hyper, floating[:, ::1] state, int64_t[::1] steps, shuffle_key,
                         progress, int threads, bint check_inputs):
    """train_epoch and train_epoch_sparse: the input rows are X (dense), or, with X None, the CSR arrays
    (layer 0 from the non-zeros by sparse_forward_first / sparse_backward_first, the rest as for X).
    ``threads`` > 1: the non-packing products run on that many threads (``product_threads``).
    ``check_inputs`` (dense X): each batch's rows are checked for NaN and infinity before any update that
    uses them (after the forward pass has brought them into cache); a bad one stops the epoch with status
    STATUS_BAD_INPUT."""
    cdef const Plan *p = &ws.plan
    cdef floating *activations = <floating *>ws.activations_ptr
    cdef floating *deltas = <floating *>ws.deltas_ptr
    cdef floating *grad = <floating *>ws.grad_ptr
    cdef floating *batch_inputs = <floating *>ws.batch_inputs_ptr
    cdef floating *batch_targets = <floating *>ws.batch_targets_ptr
    cdef floating *batch_weights = <floating *>ws.batch_weights_ptr
    cdef const floating[::1] weights_view
    cdef const floating *weights = NULL
    cdef const floating *row_weights = NULL
    cdef double weight_sum = 0.0, batch_weight
    cdef bint sparse = X is None
    cdef Py_ssize_t n = csr_indptr.shape[0] - 1 if sparse else X.shape[0]
    cdef const floating *X_ptr = NULL
    cdef const floating *data_ptr = NULL
    cdef const Py_ssize_t *indices_ptr = NULL
    cdef const Py_ssize_t *indptr_ptr = NULL
    cdef Py_ssize_t n_in = p.sizes[0], K = p.sizes[p.n_layers]
    cdef Py_ssize_t half = p.max_batch * p.max_width
    cdef Py_ssize_t start, batch, r, row, check_every, l
    # shuffle_key: a key in [0, 2**64) from _spec.epoch_key, a negative number / None for no shuffle, or
    # the epoch's row order itself (a C-contiguous np.intp array of n indices in [0, n), checked below)
    cdef bint explicit_order = isinstance(shuffle_key, np.ndarray)
    cdef bint shuffle = explicit_order or (shuffle_key is not None and shuffle_key >= 0)
    cdef uint64_t key = <uint64_t>shuffle_key if shuffle and not explicit_order else 0
    cdef const Py_ssize_t[::1] given_order
    # scikit-learn's L2 on the weights: a sweep over the gradient between the backward pass and the update.
    cdef double l2 = hyper[FASTBP_HYPER_L2]
    # Plain SGD (no momentum, no decay, no L2) updates inside the backward pass and never stores the gradient.
    cdef bint in_place = (rule == FASTBP_SGD and hyper[FASTBP_HYPER_SGD_MOMENTUM] == 0
                          and hyper[FASTBP_HYPER_WEIGHT_DECAY] == 0 and l2 == 0)
    cdef Py_ssize_t[::1] order
    cdef Py_ssize_t *order_ptr = NULL
    cdef const floating *inputs
    cdef const floating *targets
    cdef double loss, loss_sum = 0.0, work = 0.0, step_work
    cdef Py_ssize_t done = 0
    cdef int status = STATUS_OK
    cdef floating lr_ = <floating>hyper[FASTBP_HYPER_LR]
    cdef const double *hyper_ptr = &hyper[0]
    cdef floating *state_ptr = &state[0, 0]
    cdef int64_t *steps_ptr = &steps[0]
    cdef Py_ssize_t done_before
    # Checks for Ctrl-C and progress reports; inside a batch when the batch alone is worth a check.
    cdef Tick checks
    cdef Tick *inner_checks
    cdef Tick *backward_checks
    cdef bint per_layer
    cdef list errors = []
    cdef floating *saved = NULL
    # Adam and AdamW at batch size 1 (unweighted): the update fused into the per-example backward sweep
    # (torch's Adam only: scikit-learn's epsilon convention and the L2 term take the general loop).
    cdef bint fused_adam = ((rule == FASTBP_ADAM or rule == FASTBP_ADAMW) and l2 == 0
                            and hyper[FASTBP_HYPER_ADAM_SKLEARN_EPS] == 0)
    cdef AdamRows adam
    adam.lr = hyper[FASTBP_HYPER_LR]
    adam.beta1 = hyper[FASTBP_HYPER_ADAM_BETA1]
    adam.beta2 = hyper[FASTBP_HYPER_ADAM_BETA2]
    adam.eps = hyper[FASTBP_HYPER_ADAM_EPS]
    adam.weight_decay = hyper[FASTBP_HYPER_WEIGHT_DECAY]
    adam.adamw = rule == FASTBP_ADAMW
    adam.amsgrad = hyper[FASTBP_HYPER_ADAM_AMSGRAD] != 0
    adam.n_params = p.n_params

    if batch_size < 1 or min(batch_size, n) > p.max_batch:
        raise ValueError(f"batch_size {batch_size} does not fit the workspace ({p.max_batch} rows)")
    if threads < 1:
        raise ValueError(f"threads must be at least 1; got {threads}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable; got {type(progress).__name__}")
    if n <= 0:
        return 0.0, 0.0, 0, STATUS_OK
    if sample_weight is not None:
        weights_view = sample_weight
        weights = &weights_view[0]
    if explicit_order:
        given_order = check_order(shuffle_key, n)
        order_ptr = <Py_ssize_t *>&given_order[0]
    elif shuffle:
        order = ws.order_buffer(n)
        order_ptr = &order[0]
    if sparse:
        csr_pointers(csr_data, csr_indices, csr_indptr, &data_ptr, &indices_ptr, &indptr_ptr)
        # layer 0's work follows a row's mean non-zeros; the sweeps over every parameter (gradient and
        # update) that a batch makes unless it updates in place are counted too
        work = 3.0 * (<double>csr_indices.shape[0] / n + 1.0) * p.sizes[1]
        if not in_place:
            work += 2.0 * p.n_params / min(batch_size, n)
    else:
        X_ptr = &X[0, 0]
        work = 3.0 * n_in * p.sizes[1]
    for l in range(1, p.n_layers):
        work += 3.0 * p.sizes[l] * p.sizes[l + 1]
    check_every = max(1, <Py_ssize_t>(SIGNAL_CHECK_WORK / (work * min(batch_size, n))))
    tick_init(&checks, progress, errors)
    checks.done = &done
    checks.loss_sum = &loss_sum
    checks.weight_sum = &weight_sum
    # Plain SGD writes the parameters during its backward pass: a batch checked inside it needs a copy
    # of them to put back (see SNAPSHOT_MIN_BATCH).
    if in_place and min(batch_size, n) >= SNAPSHOT_MIN_BATCH and work * min(batch_size, n) >= INNER_CHECK_WORK:
        saved_buffer = np.empty(p.n_params, dtype=ws.dtype)
        saved = <floating *><size_t>saved_buffer.ctypes.data
    threads = product_threads(p, threads, min(batch_size, n), n, sparse, sizeof(floating))
    # (the nogil block below raises nothing: the pool is always destroyed after it)
    if threads > 1:
        ws.plan.pool = fastbp_pool_create(threads)   # NULL (one thread) if the threads cannot be made

    with nogil:
        if shuffle and not explicit_order:
            fill_permutation(order_ptr, n, key)
        start = 0
        if batch_size == 1 and (in_place or fused_adam) and weights == NULL and not sparse:
            # Per-example SGD or Adam: the fused C loop, entered once per `check_every` examples. It serves
            # the unweighted case only; weighted batches of one take the general loop below.
            while start < n and status == STATUS_OK:
                batch = min(check_every, n - start)
                if check_inputs and not rows_finite(X_ptr, n_in, order_ptr, start, batch):
                    status = STATUS_BAD_INPUT
                    break
                done_before = done
                if in_place:
                    if train_rows(p, &params[0], X_ptr, &Y[0, 0], order_ptr, start, batch, lr_,
                                  activations, deltas, deltas + half, &loss_sum, &done) != 0:
                        status = STATUS_NONFINITE
                else:
                    adam.step = steps_ptr[0]
                    if train_rows_adam(p, &params[0], X_ptr, &Y[0, 0], order_ptr, start, batch, &adam,
                                       state_ptr, activations, deltas, deltas + half, &loss_sum,
                                       &done) != 0:
                        status = STATUS_NONFINITE
                steps_ptr[0] += done - done_before   # one update per example trained
                start += batch
                weight_sum = <double>done
                if status == STATUS_OK and start < n and tick_check(&checks):
                    status = STATUS_INTERRUPTED
        while start < n and status == STATUS_OK:
            batch = min(batch_size, n - start)
            if shuffle:
                # (sparse rows are read through the permutation where they lie: only dense rows are gathered)
                if not sparse:
                    gather_rows_team(p, <char *>batch_inputs, <const char *>X_ptr, order_ptr + start, batch,
                                     n_in * sizeof(floating))
                for r in range(batch):
                    row = order_ptr[start + r]
                    memcpy(batch_targets + r * K, &Y[0, 0] + row * K, K * sizeof(floating))
                    if weights != NULL:
                        batch_weights[r] = weights[row]
                inputs = batch_inputs
                targets = batch_targets
                row_weights = batch_weights if weights != NULL else NULL
            else:
                inputs = X_ptr + start * n_in if not sparse else NULL
                targets = &Y[0, 0] + start * K
                row_weights = weights + start if weights != NULL else NULL
            if row_weights != NULL:
                batch_weight = 0.0
                for r in range(batch):
                    batch_weight += row_weights[r]
                if batch_weight == 0:
                    # nothing to learn from: no update (the mean would be 0/0)
                    if check_inputs and not sparse and not values_finite(inputs, batch * n_in):
                        status = STATUS_BAD_INPUT
                        break
                    done += batch
                    start += batch
                    continue
            else:
                batch_weight = <double>batch
            step_work = work * batch
            # A batch worth a check by itself is checked between its layers: the forward pass and a
            # backward pass that only fills `grad` write no parameter, and plain SGD's in-place backward
            # pass is checked only with a copy of the parameters to put back.
            inner_checks = &checks if step_work >= INNER_CHECK_WORK else NULL
            backward_checks = inner_checks if (not in_place or saved != NULL) else NULL
            forward_rows(p, &params[0], inputs, data_ptr, indices_ptr, indptr_ptr, order_ptr, start, batch,
                         activations, inner_checks)
            if checks.stopped:
                status = STATUS_INTERRUPTED
                break
            if check_inputs and not sparse and not values_finite(inputs, batch * n_in):
                status = STATUS_BAD_INPUT   # (checked here, where the forward pass has left the rows in cache)
                break
            loss = output_delta(p, activations + p.act_off[p.n_layers - 1], targets, row_weights, batch,
                                deltas)
            if not isfinite(loss):
                status = STATUS_NONFINITE
                break
            if in_place and backward_checks != NULL:
                memcpy(saved, &params[0], p.n_params * sizeof(floating))
            # The update rule runs layer by layer inside the backward pass while each layer's gradient
            # is in cache (see dense_backward), except where the step is checked inside (an interrupted
            # step must leave the parameters as they were) or the L2 term must see the whole gradient
            # first: then the rule runs after the pass, with the same bits.
            # (Sparse input: layer 0's gradient is formed after the pass, so the rule runs after it too.)
            per_layer = (not in_place and l2 == 0 and backward_checks == NULL and not sparse)
            backward_rows(p, &params[0], inputs, data_ptr, indices_ptr, indptr_ptr, order_ptr, start, batch,
                          activations, deltas, grad, lr_, in_place, rule if per_layer else -1, hyper_ptr,
                          state_ptr, steps_ptr[0], backward_checks)
            if checks.stopped:
                if in_place:  # the step is undone: the parameters are those before it, bit for bit
                    memcpy(&params[0], saved, p.n_params * sizeof(floating))
                status = STATUS_INTERRUPTED
                break
            if l2 != 0:
                loss += 0.5 * l2 * l2_sweep(p, &params[0], grad, <floating>(l2 / batch_weight)) / batch_weight
                if not isfinite(loss):
                    status = STATUS_NONFINITE
                    break
            if in_place or per_layer:
                steps_ptr[0] += 1
            else:
                optimizer_update(rule, hyper_ptr, &params[0], grad, state_ptr, p.n_params, steps_ptr)
            loss_sum += loss * batch_weight
            weight_sum += batch_weight
            done += batch
            start += batch
            # between batches: the work not yet counted by the checks inside the batch
            if inner_checks == NULL:
                checks.work += step_work
            elif backward_checks == NULL:
                checks.work += step_work * (2.0 / 3.0)
            if checks.work >= checks.every and start < n and tick_check(&checks):
                status = STATUS_INTERRUPTED
                break
    fastbp_pool_destroy(ws.plan.pool)
    ws.plan.pool = NULL
    if errors:
        raise errors[0]
    return loss_sum, weight_sum, done, status


# The public entry points dispatch on the workspace's dtype by hand: a fused-type `def` would match
# every argument's type on each call, which costs more than a whole small training step.

def predict(Workspace ws, params, X, out):
    """Write the network's output for every row of X into out (chunks of ws.max_batch rows)."""
    if ws.single:
        return _predict[float](ws, params, X, None, None, None, out)
    return _predict[double](ws, params, X, None, None, None, out)


def loss_and_gradient(Workspace ws, params, X, Y, sample_weight=None):
    """The loss of one batch (rows <= ws.max_batch), weighted by sample_weight (None or shape (n,), the
    net's dtype, a positive sum); its gradient is left in ws.grad."""
    if ws.single:
        return _loss_and_gradient[float](ws, params, X, None, None, None, Y, sample_weight)
    return _loss_and_gradient[double](ws, params, X, None, None, None, Y, sample_weight)


def train_epoch(Workspace ws, params, X, Y, sample_weight, Py_ssize_t batch_size, int rule, hyper, state,
                steps, shuffle_key, progress=None, *, int threads=1, bint check_inputs=False):
    """One epoch of mini-batch training with update rule ``rule``; returns (loss_sum, weight_sum,
    examples_done, status).

    See docs/DESIGN.md and fastbp._reference.train_epoch. sample_weight: None or shape (n,) of the net's
    dtype, shuffled with the rows. shuffle_key: a key (the rows in _spec.permutation's order), a negative
    number (in order), or the order itself (n indices of np.intp in [0, n)). progress: None or
    ``progress(examples_done, loss_sum, weight_sum)``,
    called with the GIL held at most every PROGRESS_INTERVAL seconds, at the signal checks; what it raises
    stops the epoch after its last completed update and is raised (a KeyboardInterrupt: status
    interrupted). check_inputs: check each row of X for NaN and infinity before any update uses it; a bad
    one stops the epoch (status STATUS_BAD_INPUT) with the parameters as after `examples_done` examples.
    """
    if ws.sparse_input:
        # it has no dense input buffer for the shuffled gather
        raise ValueError("train_epoch needs a Workspace built without sparse_input (use train_epoch_sparse)")
    if ws.single:
        return _train_epoch[float](ws, params, X, None, None, None, Y, sample_weight, batch_size, rule, hyper,
                                   state, steps, shuffle_key, progress, threads, check_inputs)
    return _train_epoch[double](ws, params, X, None, None, None, Y, sample_weight, batch_size, rule, hyper,
                                state, steps, shuffle_key, progress, threads, check_inputs)


cdef object _optimizer_step(floating[::1] params, const floating[::1] grad, int rule,
                            const double[::1] hyper, floating[:, ::1] state, int64_t[::1] steps):
    if params.shape[0] == 0:
        steps[0] += 1
        return None
    with nogil:
        optimizer_update(rule, &hyper[0], &params[0], &grad[0], &state[0, 0], params.shape[0], &steps[0])


def optimizer_step(params, grad, int rule, hyper, state, steps):
    """One update of ``params`` from ``grad`` by ``rule`` (the update train_epoch makes after each batch)."""
    if params.dtype == np.float32:
        return _optimizer_step[float](params, grad, rule, hyper, state, steps)
    return _optimizer_step[double](params, grad, rule, hyper, state, steps)


# ---------------------------------------------------------------------------------------------------
# Sparse input: layer 0 from CSR rows (specification: fastbp/_reference.py, the *_sparse functions)
#
# Layer 0 reads its input as CSR arrays (data, indices, indptr: Py_ssize_t indices, sorted, no
# duplicates, checked by fastbp/_validation.py), so its cost and memory follow the non-zeros, not
# batch x n_in. The rest of the network is the dense path (dense_forward from layer 1, dense_backward
# down to layer 1), and the input layer's delta is never formed.
#
# Layout: params keeps W0 as (n_out, n_in) rows (the interface's layout). Each row W0[j] is walked for
# the whole batch before the next: the batch's non-zeros gather from one row while it sits in cache,
# and W0 is read from memory once per batch. A contiguous axpy per non-zero would need W0^T, a second
# copy of the largest matrix that every update would have to refresh (a full sweep per batch, where
# per-example SGD otherwise touches only the columns present in the batch).


cdef inline Py_ssize_t csr_row(const Py_ssize_t *rows, Py_ssize_t start, Py_ssize_t r) noexcept nogil:
    """Row r of the batch that starts at `start`: through the permutation, or in order (rows NULL)."""
    return rows[start + r] if rows != NULL else start + r


cdef void sparse_forward_first(const Plan *p, const floating *params, const floating *data,
                               const Py_ssize_t *indices, const Py_ssize_t *indptr, const Py_ssize_t *rows,
                               Py_ssize_t start, Py_ssize_t batch, floating *activations) noexcept nogil:
    """Layer 0's output for `batch` CSR rows: a[r, j] = f(sum over the row's non-zeros (k, v) of
    v W0[j, k] + b0[j])."""
    cdef Py_ssize_t n_in = p.sizes[0], n_out = p.sizes[1]
    cdef const floating *W = params + p.w_off[0]
    cdef const floating *W0
    cdef const floating *W1
    cdef const floating *W2
    cdef const floating *W3
    cdef floating *out = activations + p.act_off[0]
    cdef Py_ssize_t j = 0, r, q, row, k
    cdef floating s0, s1, s2, s3, v
    # Four rows of W0 at a time: each non-zero's index and value are loaded once for four independent
    # sums (the gathers' latencies overlap); every sum still adds its terms in the row's order.
    while j + 4 <= n_out:
        W0 = W + j * n_in
        W1 = W0 + n_in
        W2 = W1 + n_in
        W3 = W2 + n_in
        for r in range(batch):
            row = csr_row(rows, start, r)
            s0 = 0
            s1 = 0
            s2 = 0
            s3 = 0
            for q in range(indptr[row], indptr[row + 1]):
                k = indices[q]
                v = data[q]
                s0 = s0 + v * W0[k]
                s1 = s1 + v * W1[k]
                s2 = s2 + v * W2[k]
                s3 = s3 + v * W3[k]
            out[r * n_out + j] = s0
            out[r * n_out + j + 1] = s1
            out[r * n_out + j + 2] = s2
            out[r * n_out + j + 3] = s3
        j += 4
    while j < n_out:
        W0 = W + j * n_in
        for r in range(batch):
            row = csr_row(rows, start, r)
            s0 = 0
            for q in range(indptr[row], indptr[row + 1]):
                s0 = s0 + data[q] * W0[indices[q]]
            out[r * n_out + j] = s0
        j += 1
    bias_activate_rows(out, params + p.b_off[0], batch, n_out, p.acts[0])


cdef void sparse_backward_first(const Plan *p, floating *params, const floating *data,
                                const Py_ssize_t *indices, const Py_ssize_t *indptr, const Py_ssize_t *rows,
                                Py_ssize_t start, Py_ssize_t batch, const floating *delta, floating *grad,
                                floating lr, bint update_in_place) noexcept nogil:
    """Layer 0's gradient from its delta (batch x n_out): gW0[j, k] += delta[r, j] v for each non-zero
    (k, v) of row r (a scatter), gb0 = column sums of delta; or, with ``update_in_place`` (plain SGD), the
    update itself, which then touches only the columns present in the batch."""
    cdef Py_ssize_t n_in = p.sizes[0], n_out = p.sizes[1]
    cdef floating *gW
    cdef floating *gWj
    cdef floating *bias = params + p.b_off[0]
    cdef floating *sums = grad + p.b_off[0]
    cdef Py_ssize_t j, r, q, row
    cdef floating d
    if update_in_place:
        gW = params + p.w_off[0]
    else:
        gW = grad + p.w_off[0]
        memset(gW, 0, n_in * n_out * sizeof(floating))
    for j in range(n_out):
        gWj = gW + j * n_in
        for r in range(batch):
            d = delta[r * n_out + j]
            if d != 0:
                if update_in_place:
                    d = -lr * d
                row = csr_row(rows, start, r)
                for q in range(indptr[row], indptr[row + 1]):
                    gWj[indices[q]] += d * data[q]
    # the bias: as dense_backward does (the gradient buffer's bias slot is scratch when updating in place)
    column_sums(sums, delta, batch, n_out)
    if update_in_place:
        for j in range(n_out):
            bias[j] = bias[j] - lr * sums[j]


cdef inline floating *first_delta(const Plan *p, floating *deltas) noexcept nogil:
    """Where dense_backward(..., stop_layer=1) leaves layer 0's delta: it swaps its two buffers once per
    layer it passes below the top."""
    if (p.n_layers - 1) % 2 == 1:
        return deltas + p.max_batch * p.max_width
    return deltas


def predict_sparse(Workspace ws, params, data, indices, indptr, out):
    """predict for CSR rows (``data`` of the net's dtype, ``indices``/``indptr`` of np.intp, indptr of
    length n + 1, column indices < ws.layer_sizes[0], sorted within each row, no duplicates)."""
    if ws.single:
        return _predict[float](ws, params, None, data, indices, indptr, out)
    return _predict[double](ws, params, None, data, indices, indptr, out)


def loss_and_gradient_sparse(Workspace ws, params, data, indices, indptr, Y, sample_weight=None):
    """loss_and_gradient for one batch of CSR rows (the arrays as for predict_sparse)."""
    if ws.single:
        return _loss_and_gradient[float](ws, params, None, data, indices, indptr, Y, sample_weight)
    return _loss_and_gradient[double](ws, params, None, data, indices, indptr, Y, sample_weight)


def train_epoch_sparse(Workspace ws, params, data, indices, indptr, Y, sample_weight, Py_ssize_t batch_size,
                       int rule, hyper, state, steps, shuffle_key, progress=None, *, int threads=1):
    """train_epoch for CSR rows (the arrays as for predict_sparse): the same semantics, the same order of
    examples for the same shuffle_key."""
    if ws.single:
        return _train_epoch[float](ws, params, None, data, indices, indptr, Y, sample_weight, batch_size,
                                   rule, hyper, state, steps, shuffle_key, progress, threads, False)
    return _train_epoch[double](ws, params, None, data, indices, indptr, Y, sample_weight, batch_size, rule,
                                hyper, state, steps, shuffle_key, progress, threads, False)


def _enum_codes():
    """The rule and hyper-parameter slot codes as _kernels.h declares them (for the test that they agree
    with fastbp/_spec.py)."""
    return {
        "RULES": (FASTBP_SGD, FASTBP_ADAM, FASTBP_ADAMW, FASTBP_RMSPROP, FASTBP_RPROP),
        "N_RULES": FASTBP_N_RULES,
        "N_HYPER": FASTBP_N_HYPER,
        "HYPER_LR": FASTBP_HYPER_LR,
        "HYPER_WEIGHT_DECAY": FASTBP_HYPER_WEIGHT_DECAY,
        "HYPER_SGD_MOMENTUM": FASTBP_HYPER_SGD_MOMENTUM,
        "HYPER_SGD_NESTEROV": FASTBP_HYPER_SGD_NESTEROV,
        "HYPER_ADAM_BETA1": FASTBP_HYPER_ADAM_BETA1,
        "HYPER_ADAM_BETA2": FASTBP_HYPER_ADAM_BETA2,
        "HYPER_ADAM_EPS": FASTBP_HYPER_ADAM_EPS,
        "HYPER_ADAM_AMSGRAD": FASTBP_HYPER_ADAM_AMSGRAD,
        "HYPER_RMSPROP_ALPHA": FASTBP_HYPER_RMSPROP_ALPHA,
        "HYPER_RMSPROP_EPS": FASTBP_HYPER_RMSPROP_EPS,
        "HYPER_RMSPROP_MOMENTUM": FASTBP_HYPER_RMSPROP_MOMENTUM,
        "HYPER_RMSPROP_CENTERED": FASTBP_HYPER_RMSPROP_CENTERED,
        "HYPER_RPROP_ETA_MINUS": FASTBP_HYPER_RPROP_ETA_MINUS,
        "HYPER_RPROP_ETA_PLUS": FASTBP_HYPER_RPROP_ETA_PLUS,
        "HYPER_RPROP_STEP_MIN": FASTBP_HYPER_RPROP_STEP_MIN,
        "HYPER_RPROP_STEP_MAX": FASTBP_HYPER_RPROP_STEP_MAX,
        "HYPER_ADAM_SKLEARN_EPS": FASTBP_HYPER_ADAM_SKLEARN_EPS,
        "HYPER_L2": FASTBP_HYPER_L2,
    }


def all_finite(values):
    """Whether every element of a C-contiguous float32/float64 array is finite (no NaN, no infinity)."""
    cdef const float[::1] v32
    cdef const double[::1] v64
    cdef int ok
    flat = values.reshape(-1)
    if flat.shape[0] == 0:
        return True
    if values.dtype == np.float32:
        v32 = flat
        if v32.shape[0] < ALL_FINITE_NOGIL_MIN:
            return fastbp_all_finite_f32(&v32[0], v32.shape[0]) != 0
        with nogil:  # a training set: let other threads run meanwhile
            ok = fastbp_all_finite_f32(&v32[0], v32.shape[0])
        return ok != 0
    v64 = flat
    if v64.shape[0] < ALL_FINITE_NOGIL_MIN:
        return fastbp_all_finite_f64(&v64[0], v64.shape[0]) != 0
    with nogil:
        ok = fastbp_all_finite_f64(&v64[0], v64.shape[0])
    return ok != 0


def _small_gemm_l2_bytes(value=None):
    """Read (and, for the tests, set) the L2 size below which a layer's weights take the non-packing
    products above SMALL_GEMM_MAX_BATCH_ANY rows (small_gemm_pays). Not part of the public API."""
    global SMALL_GEMM_L2_BYTES
    if value is not None:
        SMALL_GEMM_L2_BYTES = max(0, int(value))
    return SMALL_GEMM_L2_BYTES


def _small_gemm_thresholds(min_batch=None, max_batch=None, min_inputs=None, min_outputs=None):
    """Read (and, for tuning runs, set) when a layer uses the non-packing products of _kernels_gemm.h.

    Returns ``(min_batch, max_batch, min_inputs, min_outputs)`` in force after the call; a max_batch of 0
    turns them off. They are used only where ``_small_gemm_available()``. Not part of the public API.
    """
    global SMALL_GEMM_MIN_BATCH, SMALL_GEMM_MAX_BATCH, SMALL_GEMM_MIN_INPUTS, SMALL_GEMM_MIN_OUTPUTS
    if min_batch is not None:
        SMALL_GEMM_MIN_BATCH = max(1, int(min_batch))
    if max_batch is not None:
        SMALL_GEMM_MAX_BATCH = max(0, int(max_batch))
    if min_inputs is not None:
        SMALL_GEMM_MIN_INPUTS = max(1, int(min_inputs))
    if min_outputs is not None:
        SMALL_GEMM_MIN_OUTPUTS = max(1, int(min_outputs))
    return SMALL_GEMM_MIN_BATCH, SMALL_GEMM_MAX_BATCH, SMALL_GEMM_MIN_INPUTS, SMALL_GEMM_MIN_OUTPUTS


def _team_jobs():
    """How many products have run split over a team of threads since the module was loaded (for the tests).
    Not part of the public API."""
    return fastbp_pool_jobs


def _small_gemm_available():
    """Whether this CPU runs the non-packing products (x86-64 with AVX-512 or AVX2+FMA, a gcc build on
    Linux). Not part of the public API."""
    return fastbp_small_gemm_cpu_level() != FASTBP_GEMM_ISA_NONE


def _small_gemm_isas():
    """The builds of the non-packing products this CPU runs, best first (``"avx512"``, ``"avx2"``), for
    the tests and benchmarks. Not part of the public API."""
    level = fastbp_small_gemm_cpu_level()
    return [name for name, code in sorted(SMALL_GEMM_ISA_NAMES.items(), key=lambda item: -item[1])
            if FASTBP_GEMM_ISA_NONE < code <= level]


def _small_gemm_isa(name=None):
    """Read (and, for the tests and benchmarks, set) which build of the non-packing products the layers
    use: ``"avx512"``, ``"avx2"`` or ``"off"`` (BLAS for every layer). Returns the name in force after
    the call. Not part of the public API.

    Raises ValueError for another name, or for a build this CPU cannot run.
    """
    global SMALL_GEMM_ISA
    if name is not None:
        if name not in SMALL_GEMM_ISA_NAMES:
            raise ValueError(f"small-product build must be one of {', '.join(SMALL_GEMM_ISA_NAMES)}; got {name!r}")
        level = SMALL_GEMM_ISA_NAMES[name]
        if level > fastbp_small_gemm_cpu_level():
            raise ValueError(f"this CPU or build cannot run the {name} products; it runs "
                             f"{', '.join(_small_gemm_isas()) or 'none'}")
        SMALL_GEMM_ISA = fastbp_small_gemm_select(level)
    return {code: key for key, code in SMALL_GEMM_ISA_NAMES.items()}[SMALL_GEMM_ISA]


def _blas_thresholds(min_batch=None, min_work=None):
    """Read (and, for tuning runs, set) when a layer switches from hand loops to BLAS.

    Returns the ``(min_batch, min_work)`` in force after the call. Not part of the public API: the
    defaults are what bench/compare.py measured best on the development machine.
    """
    global BLAS_MIN_BATCH, BLAS_MIN_WORK
    if min_batch is not None:
        BLAS_MIN_BATCH = max(1, int(min_batch))
    if min_work is not None:
        BLAS_MIN_WORK = max(0, int(min_work))
    return BLAS_MIN_BATCH, BLAS_MIN_WORK
