/* The inner loops of the fastbp kernel that Cython cannot express: C with a SIMD pragma and runtime
 * dispatch. Included by fastbp/_core.pyx (after Python.h, so Py_ssize_t is defined).
 *
 * - gcc vectorises a floating-point sum only when it may reorder the additions. `#pragma omp simd
 *   reduction(+:s)` (enabled by -fopenmp-simd, no OpenMP runtime) allows exactly that reordering and
 *   nothing else, so results stay deterministic run to run without -ffast-math.
 * - On Linux/x86-64 with gcc, the per-example training loop is compiled three times (AVX-512, AVX2+FMA,
 *   baseline) with `target_clones`; the dynamic loader picks the variant for the CPU it runs on (glibc
 *   ifunc). Elsewhere only the baseline variant is built, which is just as correct.
 */
#ifndef FASTBP_KERNELS_H
#define FASTBP_KERNELS_H

#include <stddef.h>
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && defined(__x86_64__) \
    && !defined(FASTBP_NO_CLONES)
#define FASTBP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTBP_CLONES
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
} fastbp_plan;

enum { FASTBP_IDENTITY = 0, FASTBP_SIGMOID = 1, FASTBP_RELU = 2, FASTBP_TANH = 3 };
enum { FASTBP_HALF_SSE = 0, FASTBP_MSE = 1, FASTBP_CROSS_ENTROPY = 2 };

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
 * sigmoid takes exp(-|z|), softmax exp(z - max z)), so there is no overflow to handle. Cody-Waite
 * reduction x = n ln2 + r with |r| <= ln2/2, a Taylor polynomial for exp(r) accurate to well under an ulp
 * (degree 13 in double, 7 in float), then a scale by 2^n built in the exponent bits. Within 1-2 ulp of
 * libm's exp, and inlined: a call to libm costs more than the arithmetic on tiny networks. NaN and the
 * underflow tail (results that would be subnormal or zero) go to libm. */
static inline double fastbp_exp_nonpositive_f64(double x)
{
    if (!(x >= -708.0))
        return exp(x);
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    const double n = (x * 1.4426950408889634 + shifter) - shifter;
    const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const double p01 = 1.0 + r;
    const double p23 = 1.0 / 2 + r * (1.0 / 6);
    const double p45 = 1.0 / 24 + r * (1.0 / 120);
    const double p67 = 1.0 / 720 + r * (1.0 / 5040);
    const double p89 = 1.0 / 40320 + r * (1.0 / 362880);
    const double p1011 = 1.0 / 3628800 + r * (1.0 / 39916800);
    const double p1213 = 1.0 / 479001600 + r * (1.0 / 6227020800.0);
    const double p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67) + r8 * ((p89 + r2 * p1011) + r4 * p1213);
    union { double d; unsigned long long u; } scale;
    scale.u = (unsigned long long)((long long)n + 1023) << 52;
    return p * scale.d;
}

static inline float fastbp_exp_nonpositive_f32(float x)
{
    if (!(x >= -87.0f))
        return expf(x);
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

/* One body, two precisions: _kernels_rows.h is included once per floating type. */
#define REAL float
#define FN(name) name##_f32
#define EXP fastbp_exp_nonpositive_f32
#define TANH tanhf
#define DOT fastbp_dot_f32
#define DOT4 fastbp_dot4_f32
#include "_kernels_rows.h"
#undef REAL
#undef FN
#undef EXP
#undef TANH
#undef DOT
#undef DOT4

#define REAL double
#define FN(name) name##_f64
#define EXP fastbp_exp_nonpositive_f64
#define TANH tanh
#define DOT fastbp_dot_f64
#define DOT4 fastbp_dot4_f64
#include "_kernels_rows.h"
#undef REAL
#undef FN
#undef EXP
#undef TANH
#undef DOT
#undef DOT4

#endif
