/* The inner loops of the fastbp kernel that Cython cannot express: C with a SIMD pragma and runtime
 * dispatch. Included by fastbp/_core.pyx (after Python.h, so Py_ssize_t is defined).
 *
 * - gcc vectorises a floating-point sum only when it may reorder the additions. `#pragma omp simd
 *   reduction(+:s)` (enabled by -fopenmp-simd, no OpenMP runtime) allows exactly that reordering and
 *   nothing else, so results stay deterministic run to run without -ffast-math.
 * - On Linux/x86-64 with gcc, the general per-example training loop is compiled three times (AVX-512,
 *   AVX2+FMA, baseline) and the tiny-network loop twice (AVX2+FMA, baseline) with `target_clones`; the
 *   dynamic loader picks the variant for the CPU it runs on (glibc ifunc). Elsewhere only the baseline
 *   variant is built, which is just as correct.
 */
#ifndef FASTBP_KERNELS_H
#define FASTBP_KERNELS_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && defined(__x86_64__) \
    && !defined(FASTBP_NO_CLONES)
#define FASTBP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* Scalar code (the tiny-network loop) gains from FMA, not from wider vectors: two variants suffice. */
#define FASTBP_CLONES_SCALAR __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTBP_CLONES
#define FASTBP_CLONES_SCALAR
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTBP_RESTRICT __restrict__
#else
#define FASTBP_RESTRICT
#endif

/* Layout of one network, shared with _core.pyx (see docs/DESIGN.md). */
typedef struct {
    int n_layers;
    int loss;
    Py_ssize_t max_batch;
    Py_ssize_t max_width;
    Py_ssize_t n_params;
    Py_ssize_t *sizes;      /* n_layers + 1 */
    int *acts;              /* n_layers */
    Py_ssize_t *w_off;      /* n_layers */
    Py_ssize_t *b_off;      /* n_layers */
    Py_ssize_t *act_off;    /* n_layers: start of layer l's outputs in the activation buffer */
    /* the threads of the mini-batch products during one training call (_kernels_pool.h); NULL: the
     * calling thread alone */
    struct fastbp_pool *pool;
} fastbp_plan;

/* The codes, declared once for C and Cython (_core.pyx brings them in with `cdef extern`); the Python
 * names are the tuples of fastbp/_spec.py, in the same order (tests/test_conformance.py checks). */
enum { FASTBP_IDENTITY = 0, FASTBP_SIGMOID = 1, FASTBP_RELU = 2, FASTBP_TANH = 3 };
enum { FASTBP_HALF_SSE = 0, FASTBP_MSE = 1, FASTBP_CROSS_ENTROPY = 2, FASTBP_BINARY_CROSS_ENTROPY = 3,
       FASTBP_POISSON = 4 };
enum { FASTBP_STATUS_OK = 0, FASTBP_STATUS_NONFINITE = 1, FASTBP_STATUS_INTERRUPTED = 2,
       FASTBP_STATUS_BAD_INPUT = 3 };

/* Each loss's per-example value is l_i = half * S_i / divisor, where S_i is the sum that
 * fastbp_output_delta_row adds up for row i, and its gradient dl_i/dz is numerator / divisor times that
 * function's elementwise derivative: half_sse l_i = 1/2 sum d^2 (gradient d), mse sum d^2 / K (2 d / K),
 * cross_entropy the row's -sum y log softmax, binary cross-entropy and poisson the mean over the K
 * outputs. A batch mean divides once more, by the row count or by the weight sum. */
static inline double fastbp_loss_divisor(int loss, Py_ssize_t K)
{
    return (loss == FASTBP_HALF_SSE || loss == FASTBP_CROSS_ENTROPY) ? 1.0 : (double)K;
}
static inline double fastbp_loss_numerator(int loss) { return loss == FASTBP_MSE ? 2.0 : 1.0; }
static inline double fastbp_loss_half(int loss) { return loss == FASTBP_HALF_SSE ? 0.5 : 1.0; }

/* Update rules of the fused optimizers (fastbp/_spec.py RULES; a test checks that the two agree). */
enum { FASTBP_SGD = 0, FASTBP_ADAM = 1, FASTBP_ADAMW = 2, FASTBP_RMSPROP = 3, FASTBP_RPROP = 4,
       FASTBP_N_RULES = 5 };

/* Slots of the float64 hyper-parameter array (fastbp/_spec.py HYPER_*): lr and weight decay for every
 * rule, then each rule's own, then scikit-learn's Adam epsilon convention (a flag, adam only) and
 * scikit-learn's L2 penalty on the weights only (train_epoch's sweep; see fastbp/_spec.py). */
enum {
    FASTBP_HYPER_LR = 0,
    FASTBP_HYPER_WEIGHT_DECAY = 1,
    FASTBP_HYPER_SGD_MOMENTUM = 2,
    FASTBP_HYPER_SGD_NESTEROV = 3,
    FASTBP_HYPER_ADAM_BETA1 = 2,
    FASTBP_HYPER_ADAM_BETA2 = 3,
    FASTBP_HYPER_ADAM_EPS = 4,
    FASTBP_HYPER_ADAM_AMSGRAD = 5,
    FASTBP_HYPER_RMSPROP_ALPHA = 2,
    FASTBP_HYPER_RMSPROP_EPS = 3,
    FASTBP_HYPER_RMSPROP_MOMENTUM = 4,
    FASTBP_HYPER_RMSPROP_CENTERED = 5,
    FASTBP_HYPER_RPROP_ETA_MINUS = 2,
    FASTBP_HYPER_RPROP_ETA_PLUS = 3,
    FASTBP_HYPER_RPROP_STEP_MIN = 4,
    FASTBP_HYPER_RPROP_STEP_MAX = 5,
    FASTBP_HYPER_ADAM_SKLEARN_EPS = 6,
    FASTBP_HYPER_L2 = 7,
    FASTBP_N_HYPER = 8
};

/* dot(a, b) over n elements; one definition per precision. */
#define FASTBP_DEFINE_DOT(REAL, SUFFIX)                                                               \
    static inline REAL fastbp_dot_##SUFFIX(const REAL *a, const REAL *b, Py_ssize_t n)                \
    {                                                                                                 \
        REAL s = 0;                                                                                   \
        if (n < 8) {                                                                                  \
            /* tiny layers: a plain loop beats the set-up of a vector loop */                         \
            for (Py_ssize_t i = 0; i < n; i++)                                                        \
                s += a[i] * b[i];                                                                     \
            return s;                                                                                 \
        }                                                                                             \
        _Pragma("omp simd reduction(+:s)")                                                            \
        for (Py_ssize_t i = 0; i < n; i++)                                                            \
            s += a[i] * b[i];                                                                         \
        return s;                                                                                     \
    }
FASTBP_DEFINE_DOT(float, f32)
FASTBP_DEFINE_DOT(double, f64)
#undef FASTBP_DEFINE_DOT

/* exp(x) for x <= 0, inline. The kernel only ever exponentiates non-positive numbers (the stable
 * sigmoid takes exp(-|z|), softmax exp(z - max z)), so there is no overflow to handle. Inlined because a
 * call to libm costs more than the arithmetic on tiny networks, and built for latency, because on those
 * networks each example's sigmoids lie on the chain from one update to the next. NaN and the underflow
 * tail (results that would be subnormal or zero) go to libm.
 *
 * Double: x = (64 m + j) ln2/64 + r with |r| <= ln2/128 (Cody-Waite, ln2/64 split in two so that k ln2/64
 * is exact), exp(x) = 2^m * 2^(j/64) * exp(r), with 2^(j/64) from a table of correctly rounded values
 * and exp(r) - 1 as a degree-5 Taylor polynomial (truncation error below 4e-17). Within 1 ulp of the
 * exact value (checked against long double on 2e7 arguments); 35 cycles of latency against 41 for a
 * degree-13 polynomial over |r| <= ln2/2. The table index and the power of two come from the
 * low bits of k + 1.5 * 2^52, so no float-to-integer conversion sits on the chain.
 *
 * Float: x = n ln2 + r with |r| <= ln2/2 and a degree-7 Taylor polynomial; within 1-2 ulp. */
static const double fastbp_exp2_64ths[64] = {
    1.0, 1.0108892860517005, 1.0218971486541166, 1.0330248790212284,
    1.0442737824274138, 1.0556451783605572, 1.0671404006768237, 1.0787607977571199,
    1.0905077326652577, 1.102382583307841, 1.1143867425958924, 1.1265216186082418,
    1.1387886347566916, 1.1511892299529827, 1.1637248587775775, 1.1763969916502812,
    1.189207115002721, 1.202156731452703, 1.215247359980469, 1.22848053610687,
    1.241857812073484, 1.255380757024691, 1.2690509571917332, 1.2828700160787783,
    1.2968395546510096, 1.3109612115247644, 1.3252366431597413, 1.339667524053303,
    1.3542555469368927, 1.3690024229745905, 1.383909881963832, 1.3989796725383112,
    1.4142135623730951, 1.42961333839197, 1.4451808069770467, 1.460917794180647,
    1.4768261459394993, 1.4929077282912648, 1.5091644275934228, 1.5255981507445384,
    1.5422108254079407, 1.559004400237837, 1.5759808451078865, 1.593142151342267,
    1.6104903319492543, 1.6280274218573478, 1.645755478153965, 1.6636765803267364,
    1.681792830507429, 1.7001063537185235, 1.718619298122478, 1.7373338352737062,
    1.7562521603732995, 1.7753764925265212, 1.7947090750031072, 1.8142521755003989,
    1.8340080864093424, 1.8539791250833855, 1.8741676341103, 1.8945759815869656,
    1.9152065613971474, 1.9360617934922943, 1.9571441241754002, 1.978456026387951,
};

/* exp(x), and 1 + exp(x) in *one_plus: the sigmoid's denominator straight from the last step of the exp,
 * one addition sooner than adding 1 to the result. */
static inline __attribute__((always_inline)) double fastbp_exp_core_1p_f64(double x, double *one_plus);
static inline double fastbp_exp_nonpositive_1p_f64(double x, double *one_plus)
{
    if (!(x >= -708.0)) {
        const double e = exp(x);
        *one_plus = 1.0 + e;
        return e;
    }
    return fastbp_exp_core_1p_f64(x, one_plus);
}

/* fastbp_exp_nonpositive_1p_f64 for x in [-708, 0] only: branch-free, so that a loop of it vectorises */
static inline __attribute__((always_inline)) double fastbp_exp_core_1p_f64(double x, double *one_plus)
{
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    const double kf = x * 92.33248261689366 + shifter; /* 64 / ln2 */
    const double k = kf - shifter;
    /* ln2/64 = 0.01083042468962958 (31 significant bits, so k times it is exact) + 6.6e-12 */
    const double r = (x - k * 0.01083042468962958) - k * 6.619564634077006e-12;
    union { double d; unsigned long long u; } kbits, scale;
    kbits.d = kf;
    /* the mantissa of kf holds 2^51 + k */
    const long long ki = (long long)(kbits.u & ((1ULL << 52) - 1)) - (1LL << 51);
    scale.d = fastbp_exp2_64ths[ki & 63];
    scale.u += (unsigned long long)(ki >> 6) << 52; /* x >= -708: the result stays a normal number */
    const double r2 = r * r;
    const double q = (r + r2 * (0.5 + r * (1.0 / 6))) + (r2 * r2) * (1.0 / 24 + r * (1.0 / 120));
    *one_plus = (1.0 + scale.d) + scale.d * q;
    return scale.d + scale.d * q;
}

static inline double fastbp_exp_nonpositive_f64(double x)
{
    double unused;
    return fastbp_exp_nonpositive_1p_f64(x, &unused);
}

static inline __attribute__((always_inline)) float fastbp_exp_core_f32(float x);
static inline float fastbp_exp_nonpositive_f32(float x)
{
    if (!(x >= -87.0f))
        return expf(x);
    return fastbp_exp_core_f32(x);
}

/* fastbp_exp_nonpositive_f32 for x in [-87, 0] only: branch-free, so that a loop of it vectorises */
static inline __attribute__((always_inline)) float fastbp_exp_core_f32(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23 */
    const float n = (x * 1.44269504f + shifter) - shifter;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    const float r2 = r * r, r4 = r2 * r2;
    const float p = (1.0f + r + r2 * (0.5f + r * (1.0f / 6))) +
                    r4 * ((1.0f / 24 + r * (1.0f / 120)) + r2 * (1.0f / 720 + r * (1.0f / 5040)));
    union { float f; unsigned int u; } scale;
    scale.u = (unsigned int)((int)n + 127) << 23;
    return p * scale.f;
}

static inline float fastbp_exp_nonpositive_1p_f32(float x, float *one_plus)
{
    const float e = fastbp_exp_nonpositive_f32(x);
    *one_plus = 1.0f + e;
    return e;
}

/* The softmax's exponentials of a whole mini-batch: e[r, k] = exp(out[r, k] - max_k out[r, k]) (the
 * difference formed in double, as fastbp_output_delta_row does row by row), for `rows` rows of K. When
 * every difference lies in the fast exp's range (the usual case) one branch-free sweep over the batch
 * vectorises (cloned for AVX-512/AVX2); otherwise each value goes through fastbp_exp_nonpositive. */
static inline double fastbp_exp_core_f64(double x)
{
    double unused;
    return fastbp_exp_core_1p_f64(x, &unused);
}
#define FASTBP_DEFINE_SOFTMAX_EXPS(REAL, SUFFIX, LOWEST)                                              \
    FASTBP_CLONES static void fastbp_softmax_exps_##SUFFIX(const REAL *FASTBP_RESTRICT out,           \
                                                           Py_ssize_t rows, Py_ssize_t K,             \
                                                           REAL *FASTBP_RESTRICT e)                   \
    {                                                                                                 \
        int slow = 0;                                                                                 \
        for (Py_ssize_t r = 0; r < rows; r++) {                                                       \
            const REAL *o = out + r * K;                                                              \
            double m = o[0];                                                                          \
            for (Py_ssize_t k = 1; k < K; k++)                                                        \
                if (o[k] > m)                                                                         \
                    m = o[k];                                                                         \
            for (Py_ssize_t k = 0; k < K; k++) {                                                      \
                const REAL v = (REAL)(o[k] - m);                                                      \
                e[r * K + k] = v;                                                                     \
                slow |= !(v >= LOWEST);                                                               \
            }                                                                                         \
        }                                                                                             \
        const Py_ssize_t n = rows * K;                                                                \
        if (slow) {                                                                                   \
            for (Py_ssize_t i = 0; i < n; i++)                                                        \
                e[i] = fastbp_exp_nonpositive_##SUFFIX(e[i]);                                         \
            return;                                                                                   \
        }                                                                                             \
        _Pragma("omp simd")                                                                           \
        for (Py_ssize_t i = 0; i < n; i++)                                                            \
            e[i] = fastbp_exp_core_##SUFFIX(e[i]);                                                    \
    }
FASTBP_DEFINE_SOFTMAX_EXPS(float, f32, -87.0f)
FASTBP_DEFINE_SOFTMAX_EXPS(double, f64, -708.0)
#undef FASTBP_DEFINE_SOFTMAX_EXPS

/* z[j] = dot(W[j], x) for 4 consecutive rows of W at once: x is loaded once for the four rows and the
 * four sums are independent chains, which hides the latency of the additions. */
#define FASTBP_DEFINE_DOT4(REAL, SUFFIX)                                                              \
    static inline void fastbp_dot4_##SUFFIX(const REAL *W, Py_ssize_t n, const REAL *x, REAL *z)      \
    {                                                                                                 \
        const REAL *w0 = W, *w1 = W + n, *w2 = W + 2 * n, *w3 = W + 3 * n;                            \
        REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                          \
        _Pragma("omp simd reduction(+:s0,s1,s2,s3)")                                                  \
        for (Py_ssize_t i = 0; i < n; i++) {                                                          \
            s0 += w0[i] * x[i];                                                                       \
            s1 += w1[i] * x[i];                                                                       \
            s2 += w2[i] * x[i];                                                                       \
            s3 += w3[i] * x[i];                                                                       \
        }                                                                                             \
        z[0] = s0;                                                                                    \
        z[1] = s1;                                                                                    \
        z[2] = s2;                                                                                    \
        z[3] = s3;                                                                                    \
    }
FASTBP_DEFINE_DOT4(float, f32)
FASTBP_DEFINE_DOT4(double, f64)
#undef FASTBP_DEFINE_DOT4

/* dst (count rows of row_bytes, contiguous) = the rows order[0..count) of src: a shuffled mini-batch
 * gathered just before its forward pass. The rows of a large data set lie in L3 or memory at random
 * places, so each row is prefetched FASTBP_GATHER_AHEAD rows ahead and the loads of several rows overlap
 * (a plain memcpy per row waits for each in turn). */
#define FASTBP_GATHER_AHEAD 8
static void fastbp_gather_rows(char *FASTBP_RESTRICT dst, const char *FASTBP_RESTRICT src,
                               const Py_ssize_t *order, Py_ssize_t count, size_t row_bytes)
{
    for (Py_ssize_t r = 0; r < count; r++) {
#if defined(__GNUC__)
        if (r == 0)
            for (Py_ssize_t q = 1; q < count && q <= FASTBP_GATHER_AHEAD; q++)
                for (size_t b = 0; b < row_bytes; b += 64)
                    __builtin_prefetch(src + (size_t)order[q] * row_bytes + b, 0, 3);
        if (r + FASTBP_GATHER_AHEAD < count) {
            const char *ahead = src + (size_t)order[r + FASTBP_GATHER_AHEAD] * row_bytes;
            for (size_t b = 0; b < row_bytes; b += 64)
                __builtin_prefetch(ahead + b, 0, 3);
        }
#endif
        memcpy(dst + (size_t)r * row_bytes, src + (size_t)order[r] * row_bytes, row_bytes);
    }
}

/* Whether none of n values is NaN or infinite: a value is non-finite exactly when its exponent bits are
 * all ones, that is when its bits without the sign, as an unsigned integer, are at least the exponent
 * mask; so the test is one maximum over those integers, and an integer max-reduction vectorises (a
 * floating-point test would not without -ffast-math). Four interleaved quarters keep four independent
 * maxima: 1.75x the rate of one over data in L2 (a batch's rows, which train_epoch checks with
 * check_inputs), measured on Zen 5. Runtime-dispatched to AVX-512/AVX2 where available: it also runs after
 * every train_step over all the parameters. Reads the floats' bits through an integer pointer: Python
 * extensions are built with -fno-strict-aliasing. */
#define FASTBP_DEFINE_ALL_FINITE(REAL, UINT, ABS, EXPONENT, SUFFIX)                                   \
    FASTBP_CLONES static int fastbp_all_finite_##SUFFIX(const REAL *values, Py_ssize_t n)             \
    {                                                                                                 \
        const UINT *b0 = (const UINT *)values;                                                        \
        const Py_ssize_t q = n / 4;                                                                   \
        const UINT *b1 = b0 + q, *b2 = b0 + 2 * q, *b3 = b0 + 3 * q;                                  \
        UINT m0 = 0, m1 = 0, m2 = 0, m3 = 0;                                                          \
        _Pragma("omp simd reduction(max:m0,m1,m2,m3)")                                                \
        for (Py_ssize_t i = 0; i < q; i++) {                                                          \
            const UINT a0 = b0[i] & ABS, a1 = b1[i] & ABS, a2 = b2[i] & ABS, a3 = b3[i] & ABS;        \
            m0 = a0 > m0 ? a0 : m0;                                                                   \
            m1 = a1 > m1 ? a1 : m1;                                                                   \
            m2 = a2 > m2 ? a2 : m2;                                                                   \
            m3 = a3 > m3 ? a3 : m3;                                                                   \
        }                                                                                             \
        for (Py_ssize_t i = 4 * q; i < n; i++) {                                                      \
            const UINT a = b0[i] & ABS;                                                               \
            m0 = a > m0 ? a : m0;                                                                     \
        }                                                                                             \
        m0 = m0 > m1 ? m0 : m1;                                                                       \
        m2 = m2 > m3 ? m2 : m3;                                                                       \
        return (m0 > m2 ? m0 : m2) < EXPONENT;                                                        \
    }
FASTBP_DEFINE_ALL_FINITE(float, unsigned int, 0x7fffffffU, 0x7f800000U, f32)
FASTBP_DEFINE_ALL_FINITE(double, unsigned long long, 0x7fffffffffffffffULL, 0x7ff0000000000000ULL, f64)
#undef FASTBP_DEFINE_ALL_FINITE

/* One Adam or AdamW update over n values: torch.optim.Adam's single-tensor step, with the per-step
 * scalars (bias corrections, decay) computed by the caller in double as torch's Python floats:
 *   p *= param_scale (AdamW: 1 - lr wd; else 1);  g += coupled_decay * p (Adam: wd; else 0)
 *   m = lerp(m, g, 1 - beta1) (from the nearer end, as torch.lerp);  s = s beta2 + (1 - beta2) g^2
 *   s' = max(s_max, s) with amsgrad;  p += step_size * m / (sqrt(s') / bias2_sqrt + eps)   (step_size < 0)
 * scikit-learn's Adam (eps added before the bias correction) is the same sweep with bias2_sqrt = 1 and
 * step_size = -lr sqrt(1 - beta2^t) / (1 - beta1^t): dividing by 1 is exact.
 * Branch-free bodies, one per (lerp end, amsgrad), so that each loop vectorises (restrict pointers, and
 * -fno-math-errno lets sqrt vectorise); runtime-dispatched to AVX-512/AVX2 where available. */
#define FASTBP_ADAM_BODY(LERP, AMSGRAD, SCALE_SQRT)                                                   \
    for (Py_ssize_t i = 0; i < n; i++) {                                                              \
        const REAL_ p = params[i] * param_scale;                                                      \
        const REAL_ g = grad[i] + coupled_decay * p;                                                  \
        const REAL_ m = LERP;                                                                         \
        REAL_ s = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;                                    \
        exp_avg[i] = m;                                                                               \
        exp_avg_sq[i] = s;                                                                            \
        if (AMSGRAD) {                                                                                \
            const REAL_ top = max_exp_avg_sq[i];                                                      \
            s = top >= s ? top : s;                                                                   \
            max_exp_avg_sq[i] = s;                                                                    \
        }                                                                                             \
        params[i] = p + step_size * m / (SCALE_SQRT(SQRT_(s)) + eps);                                 \
    }
#define FASTBP_ADAM_AS_IS(x) (x)
#define FASTBP_ADAM_CORRECT(x) ((x) / bias2_sqrt)
#define FASTBP_DEFINE_ADAM(REAL, SUFFIX, SQRT)                                                        \
    FASTBP_CLONES static void fastbp_adam_##SUFFIX(                                                   \
        REAL *FASTBP_RESTRICT params, const REAL *FASTBP_RESTRICT grad, REAL *FASTBP_RESTRICT exp_avg, \
        REAL *FASTBP_RESTRICT exp_avg_sq, REAL *FASTBP_RESTRICT max_exp_avg_sq, Py_ssize_t n,        \
        REAL param_scale, REAL coupled_decay, REAL one_minus_beta1, REAL beta2, REAL one_minus_beta2, \
        REAL eps, REAL step_size, REAL bias2_sqrt, int amsgrad)                                       \
    {                                                                                                 \
        const REAL w = one_minus_beta1;                                                               \
        /* x / 1 is x: a bias correction of 1 (scikit-learn's convention, or torch's once beta2^t has    \
         * underflowed) skips one of the three divider operations per value, with the same bits */     \
        if (bias2_sqrt == 1) {                                                                        \
            if (w < 0.5f) {                                                                           \
                if (amsgrad) { FASTBP_ADAM_BODY(exp_avg[i] + w * (g - exp_avg[i]), 1, FASTBP_ADAM_AS_IS) } \
                else { FASTBP_ADAM_BODY(exp_avg[i] + w * (g - exp_avg[i]), 0, FASTBP_ADAM_AS_IS) }    \
            } else {                                                                                  \
                if (amsgrad) { FASTBP_ADAM_BODY(g - (g - exp_avg[i]) * (1 - w), 1, FASTBP_ADAM_AS_IS) } \
                else { FASTBP_ADAM_BODY(g - (g - exp_avg[i]) * (1 - w), 0, FASTBP_ADAM_AS_IS) }       \
            }                                                                                         \
        } else if (w < 0.5f) {                                                                        \
            if (amsgrad) { FASTBP_ADAM_BODY(exp_avg[i] + w * (g - exp_avg[i]), 1, FASTBP_ADAM_CORRECT) } \
            else { FASTBP_ADAM_BODY(exp_avg[i] + w * (g - exp_avg[i]), 0, FASTBP_ADAM_CORRECT) }      \
        } else {                                                                                      \
            if (amsgrad) { FASTBP_ADAM_BODY(g - (g - exp_avg[i]) * (1 - w), 1, FASTBP_ADAM_CORRECT) } \
            else { FASTBP_ADAM_BODY(g - (g - exp_avg[i]) * (1 - w), 0, FASTBP_ADAM_CORRECT) }         \
        }                                                                                             \
    }
#define REAL_ float
#define SQRT_ sqrtf
FASTBP_DEFINE_ADAM(float, f32, sqrtf)
#undef REAL_
#undef SQRT_
#define REAL_ double
#define SQRT_ sqrt
FASTBP_DEFINE_ADAM(double, f64, sqrt)
#undef REAL_
#undef SQRT_
#undef FASTBP_DEFINE_ADAM
#undef FASTBP_ADAM_BODY
#undef FASTBP_ADAM_AS_IS
#undef FASTBP_ADAM_CORRECT

/* scikit-learn's L2 term over one weight matrix of n values: g += scale * w, and the sum of w^2 (in double)
 * for the loss. One pass, vectorised (the sum may be reordered, as every reduction here). */
#define FASTBP_DEFINE_L2_SWEEP(REAL, SUFFIX)                                                          \
    FASTBP_CLONES static double fastbp_l2_sweep_##SUFFIX(const REAL *FASTBP_RESTRICT w,               \
                                                         REAL *FASTBP_RESTRICT g, Py_ssize_t n,       \
                                                         REAL scale)                                  \
    {                                                                                                 \
        double total = 0;                                                                             \
        _Pragma("omp simd reduction(+:total)")                                                        \
        for (Py_ssize_t i = 0; i < n; i++) {                                                          \
            const REAL v = w[i];                                                                      \
            total += (double)v * (double)v;                                                           \
            g[i] = g[i] + scale * v;                                                                  \
        }                                                                                             \
        return total;                                                                                 \
    }
FASTBP_DEFINE_L2_SWEEP(float, f32)
FASTBP_DEFINE_L2_SWEEP(double, f64)
#undef FASTBP_DEFINE_L2_SWEEP

/* One RMSprop update over n values: torch.optim.RMSprop's single-tensor step, the scalars from the caller:
 *   g += weight_decay * p (0: g unchanged);  s = s alpha + (1 - alpha) g^2
 *   centered: a = lerp(a, g, 1 - alpha) (from the nearer end), d = sqrt(s - a^2) + eps;
 *   else d = sqrt(s) + eps
 *   momentum > 0: v = v momentum + g / d, p -= lr v;  else p -= lr g / d
 * One branch-free body per (centered, lerp end, momentum), each vectorised; runtime-dispatched. */
#define FASTBP_RMSPROP_BODY(CENTERED, LERP, MOMENTUM)                                                 \
    for (Py_ssize_t i = 0; i < n; i++) {                                                              \
        const REAL_ g = grad[i] + weight_decay * params[i];                                           \
        const REAL_ s = square_avg[i] * alpha + one_minus_alpha * g * g;                              \
        REAL_ d;                                                                                      \
        square_avg[i] = s;                                                                            \
        if (CENTERED) {                                                                               \
            const REAL_ m = LERP;                                                                     \
            grad_avg[i] = m;                                                                          \
            d = SQRT_(s + (-1) * m * m) + eps;                                                        \
        } else {                                                                                      \
            d = SQRT_(s) + eps;                                                                       \
        }                                                                                             \
        if (MOMENTUM) {                                                                               \
            const REAL_ v = momentum_buffer[i] * momentum + g / d;                                    \
            momentum_buffer[i] = v;                                                                   \
            params[i] = params[i] + neg_lr * v;                                                       \
        } else {                                                                                      \
            params[i] = params[i] + neg_lr * g / d;                                                   \
        }                                                                                             \
    }
#define FASTBP_DEFINE_RMSPROP(REAL, SUFFIX)                                                           \
    FASTBP_CLONES static void fastbp_rmsprop_##SUFFIX(                                                \
        REAL *FASTBP_RESTRICT params, const REAL *FASTBP_RESTRICT grad, REAL *FASTBP_RESTRICT square_avg, \
        REAL *FASTBP_RESTRICT momentum_buffer, REAL *FASTBP_RESTRICT grad_avg, Py_ssize_t n,          \
        REAL neg_lr, REAL weight_decay, REAL alpha, REAL one_minus_alpha, REAL eps, REAL momentum,    \
        int centered)                                                                                 \
    {                                                                                                 \
        const REAL w = one_minus_alpha;                                                               \
        if (!centered) {                                                                              \
            if (momentum > 0) { FASTBP_RMSPROP_BODY(0, 0, 1) }                                        \
            else { FASTBP_RMSPROP_BODY(0, 0, 0) }                                                     \
        } else if (w < 0.5f) {                                                                        \
            if (momentum > 0) { FASTBP_RMSPROP_BODY(1, grad_avg[i] + w * (g - grad_avg[i]), 1) }      \
            else { FASTBP_RMSPROP_BODY(1, grad_avg[i] + w * (g - grad_avg[i]), 0) }                   \
        } else {                                                                                      \
            if (momentum > 0) { FASTBP_RMSPROP_BODY(1, g - (g - grad_avg[i]) * (1 - w), 1) }          \
            else { FASTBP_RMSPROP_BODY(1, g - (g - grad_avg[i]) * (1 - w), 0) }                       \
        }                                                                                             \
    }

/* One Rprop update over n values: torch.optim.Rprop's single-tensor step (the caller fills the step sizes
 * with lr before the first one):
 *   f = eta_plus where g prev > 0, eta_minus where < 0 (and g := 0 there: no step, forgotten), else 1
 *   step = clamp(step f, step_min, step_max);  p -= sign(g) step;  prev = g
 * Written with selects only, so that the loop vectorises; runtime-dispatched. */
#define FASTBP_DEFINE_RPROP(REAL, SUFFIX)                                                             \
    FASTBP_CLONES static void fastbp_rprop_##SUFFIX(                                                  \
        REAL *FASTBP_RESTRICT params, const REAL *FASTBP_RESTRICT grad, REAL *FASTBP_RESTRICT prev,   \
        REAL *FASTBP_RESTRICT step_size, Py_ssize_t n, REAL eta_minus, REAL eta_plus, REAL step_min,  \
        REAL step_max)                                                                                \
    {                                                                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                                          \
            const REAL product = grad[i] * prev[i];                                                   \
            const REAL f = product > 0 ? eta_plus : (product < 0 ? eta_minus : (REAL)1);              \
            const REAL g = product < 0 ? (REAL)0 : grad[i];                                           \
            REAL d = step_size[i] * f;                                                                \
            d = d < step_min ? step_min : d;                                                          \
            d = d > step_max ? step_max : d;                                                          \
            step_size[i] = d;                                                                         \
            const REAL p = params[i];                                                                 \
            params[i] = g > 0 ? p - d : (g < 0 ? p + d : p);                                          \
            prev[i] = g;                                                                              \
        }                                                                                             \
    }
#define REAL_ float
#define SQRT_ sqrtf
FASTBP_DEFINE_RMSPROP(float, f32)
#undef REAL_
#undef SQRT_
#define REAL_ double
#define SQRT_ sqrt
FASTBP_DEFINE_RMSPROP(double, f64)
#undef REAL_
#undef SQRT_
FASTBP_DEFINE_RPROP(float, f32)
FASTBP_DEFINE_RPROP(double, f64)
#undef FASTBP_DEFINE_RMSPROP
#undef FASTBP_RMSPROP_BODY
#undef FASTBP_DEFINE_RPROP

/* The Adam/AdamW hyper-parameters of the fused per-example loop (fastbp_train_rows_adam), as the float64
 * slots of the hyper array; the loop forms the per-step scalars of each example from them and `step`. */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int adamw, amsgrad;
    long long step;         /* updates made before the first row of the call */
    Py_ssize_t n_params;    /* the length of each state row (exp_avg, exp_avg_sq, max_exp_avg_sq) */
} fastbp_adam_rows;

/* One body, two precisions: _kernels_rows.h is included once per floating type. */
#define REAL float
#define FASTBP_UINT unsigned int /* the integer of the same width */
#define FN(name) name##_f32
#define EXP fastbp_exp_nonpositive_f32
#define EXP1P fastbp_exp_nonpositive_1p_f32
#define TANH tanhf
#define SQRT sqrtf
#define FABS fabsf
#define COPYSIGN copysignf
#define DOT fastbp_dot_f32
#define DOT4 fastbp_dot4_f32
#include "_kernels_rows.h"
#undef REAL
#undef FASTBP_UINT
#undef FN
#undef EXP
#undef EXP1P
#undef TANH
#undef SQRT
#undef FABS
#undef COPYSIGN
#undef DOT
#undef DOT4

#define REAL double
#define FASTBP_UINT unsigned long long
#define FN(name) name##_f64
#define EXP fastbp_exp_nonpositive_f64
#define EXP1P fastbp_exp_nonpositive_1p_f64
#define TANH tanh
#define SQRT sqrt
#define FABS fabs
#define COPYSIGN copysign
#define DOT fastbp_dot_f64
#define DOT4 fastbp_dot4_f64
#include "_kernels_rows.h"
#undef REAL
#undef FASTBP_UINT
#undef FN
#undef EXP
#undef EXP1P
#undef TANH
#undef SQRT
#undef FABS
#undef COPYSIGN
#undef DOT
#undef DOT4

#endif
