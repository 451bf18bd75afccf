/* Small mini-batch products without packing, for the row counts (batch 2-64) where BLAS spends more time
 * packing operands and synchronising threads than multiplying. Included by fastbp/_core.pyx after
 * _kernels.h (FASTBP_RESTRICT, fastbp_activate, Py_ssize_t). Used only where fastbp_small_gemm_available()
 * (gcc, Linux, x86-64 with AVX-512); everywhere else the layers keep BLAS. Row-major operands throughout,
 * the shapes of one dense layer: a batch of B rows, I inputs, O outputs, W stored (O, I).
 *
 * - fastbp_gemm_nt: C (B x O) = f(A (B x I) W^T + bias), the forward product: every entry is a dot
 *   product along contiguous rows of A and W, 4 rows x 4 outputs at a time (16 vector accumulators, each
 *   summed as a tree at the end), the bias and activation applied to each block of 4 rows while it is
 *   in L1.
 * - fastbp_gemm_nn: C (B x I) = D (B x O) W, the delta of the layer below: rows of W scaled and summed,
 *   a block of FASTBP_GEMM_ROWS rows x FASTBP_GEMM_VECS vectors of C kept in registers across the sum.
 * - fastbp_gemm_tn: C (O x I) = alpha D^T A + beta C (beta 0 or 1): the weight gradient (or, with
 *   alpha = -lr and beta = 1, the plain-SGD update in place), the same register blocking over O.
 * The sums over O (nn) and over the batch (tn) run in index order; the dot products (nt) in 64-byte lanes
 * summed as a tree: every result is the same bits run to run. */
#ifndef FASTBP_KERNELS_GEMM_H
#define FASTBP_KERNELS_GEMM_H

#include <string.h>

/* The register block of nn/tn: FASTBP_GEMM_ROWS rows of C x FASTBP_GEMM_VECS vectors of 64 bytes (GCC
 * vector extensions: 16 of the 32 AVX-512 registers). */
#define FASTBP_GEMM_VECS 2
#define FASTBP_GEMM_ROWS 8
#if defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && defined(__x86_64__) \
    && !defined(FASTBP_NO_CLONES)
/* Built for AVX-512 only (x86-64-v4: 32 vector registers hold the blocks below) and used only where the
 * CPU has it: on AVX2, 64-byte vectors split into pairs that spill (measured 3-40x slower than BLAS), so
 * there the layers keep BLAS. */
#define FASTBP_GEMM_TARGET __attribute__((target("arch=x86-64-v4")))
static int fastbp_small_gemm_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
           && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
           && __builtin_cpu_supports("avx512cd");
}
#define FASTBP_GEMM_VEC(REAL) typedef REAL vec __attribute__((vector_size(64)));
/* OUT = the lanes of the 64-byte vector V summed as a tree (halves added: 64 -> 32 -> 16 bytes, then the
 * last lanes in order), a few instructions instead of one scalar add per lane. */
#define FASTBP_GEMM_HSUM(REAL, V, OUT)                                                                \
    {                                                                                                 \
        typedef REAL half_ __attribute__((vector_size(32)));                                          \
        typedef REAL quarter_ __attribute__((vector_size(16)));                                       \
        half_ h0_, h1_;                                                                               \
        quarter_ q0_, q1_;                                                                            \
        REAL t_[16 / sizeof(REAL)];                                                                   \
        memcpy(&h0_, (const char *)&(V), 32);                                                         \
        memcpy(&h1_, (const char *)&(V) + 32, 32);                                                    \
        h0_ = h0_ + h1_;                                                                              \
        memcpy(&q0_, (const char *)&h0_, 16);                                                         \
        memcpy(&q1_, (const char *)&h0_ + 16, 16);                                                    \
        q0_ = q0_ + q1_;                                                                              \
        memcpy(t_, &q0_, 16);                                                                         \
        OUT = t_[0];                                                                                  \
        for (unsigned k_ = 1; k_ < 16 / sizeof(REAL); k_++) OUT += t_[k_];                            \
    }
#else
/* Elsewhere the layers keep BLAS; the functions are still built (scalar: a "vector" is one value) so
 * that the module links, and stay correct if called. */
#define FASTBP_GEMM_TARGET
static int fastbp_small_gemm_available(void) { return 0; }
#define FASTBP_GEMM_VEC(REAL) typedef REAL vec;
#define FASTBP_GEMM_HSUM(REAL, V, OUT) OUT = (V);
#endif

/* One block of nn/tn: for the h (<= FASTBP_GEMM_ROWS) rows q of C starting at CROW (an expression in q),
 * over every column i of I: C[q][i] = alpha * sum_{k < K} DK[q * DSTRIDE] * XK[i] (+ C[q][i] when ACC),
 * where DK and XK are expressions in k. Every element's sum runs in k order, whichever strip (NV vectors
 * wide, one vector wide, or the scalar columns at the end) computes it. */
#define FASTBP_GEMM_STRIP(REAL, NV, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)                       \
        for (; i0 + (NV) * L <= (I); i0 += (NV) * L) {                                                \
            vec acc[FASTBP_GEMM_ROWS][NV];                                                            \
            for (int q = 0; q < FASTBP_GEMM_ROWS; q++)                                                \
                for (int u = 0; u < (NV); u++) acc[q][u] = zero;                                  \
            if (h == FASTBP_GEMM_ROWS) {                                                              \
                for (Py_ssize_t k = 0; k < (K); k++) {                                                \
                    const REAL *dk = (DK);                                                            \
                    const REAL *x = (XK) + i0;                                                        \
                    vec v[NV];                                                                        \
                    for (int u = 0; u < (NV); u++) memcpy(&v[u], x + u * L, sizeof(vec));   \
                    for (int q = 0; q < FASTBP_GEMM_ROWS; q++) {                                      \
                        const REAL dq = dk[q * (DSTRIDE)];                                            \
                        for (int u = 0; u < (NV); u++) acc[q][u] += dq * v[u];                        \
                    }                                                                                 \
                }                                                                                     \
            } else {                                                                                  \
                for (Py_ssize_t k = 0; k < (K); k++) {                                                \
                    const REAL *dk = (DK);                                                            \
                    const REAL *x = (XK) + i0;                                                        \
                    vec v[NV];                                                                        \
                    for (int u = 0; u < (NV); u++) memcpy(&v[u], x + u * L, sizeof(vec));   \
                    for (int q = 0; q < h; q++) {                                                     \
                        const REAL dq = dk[q * (DSTRIDE)];                                            \
                        for (int u = 0; u < (NV); u++) acc[q][u] += dq * v[u];                        \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
            for (int q = 0; q < h; q++) {                                                             \
                REAL *c = (CROW) + i0;                                                                \
                for (int u = 0; u < (NV); u++) {                                                      \
                    vec out = (ALPHA) * acc[q][u];                                                    \
                    if (ACC) {                                                                        \
                        vec old;                                                                      \
                        memcpy(&old, c + u * L, sizeof old);                                \
                        out = old + out;                                                              \
                    }                                                                                 \
                    memcpy(c + u * L, &out, sizeof out);                                    \
                }                                                                                     \
            }                                                                                         \
        }
#define FASTBP_GEMM_BLOCK(REAL, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)                           \
    {                                                                                                 \
        FASTBP_GEMM_VEC(REAL)                                                                         \
        enum { L = sizeof(vec) / sizeof(REAL) };                                                      \
        vec zero;                                                                                     \
        memset(&zero, 0, sizeof zero);                                                                \
        Py_ssize_t i0 = 0;                                                                            \
        FASTBP_GEMM_STRIP(REAL, FASTBP_GEMM_VECS, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)         \
        FASTBP_GEMM_STRIP(REAL, 1, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)                        \
        for (int q = 0; q < h; q++) {                                                                 \
            REAL *c = (CROW);                                                                         \
            for (Py_ssize_t i = i0; i < (I); i++) {                                                   \
                REAL s = 0;                                                                           \
                for (Py_ssize_t k = 0; k < (K); k++) s += (DK)[q * (DSTRIDE)] * (XK)[i];              \
                c[i] = (ACC) ? c[i] + (ALPHA) * s : (ALPHA) * s;                                      \
            }                                                                                         \
        }                                                                                             \
    }

#define FASTBP_DEFINE_GEMM(REAL, SUFFIX)                                                              \
    /* C = f(A W^T + bias), row by row: the bias and activation applied to each block of 4 rows while \
     * it is in L1 (the same per-element formula as _core.pyx's bias_activate). */                     \
    static inline void fastbp_gemm_epilogue_##SUFFIX(REAL *FASTBP_RESTRICT c,                          \
        const REAL *FASTBP_RESTRICT bias, Py_ssize_t n, int act)                                       \
    {                                                                                                 \
        if (act == FASTBP_RELU) {                                                                     \
            for (Py_ssize_t j = 0; j < n; j++) { const REAL v = c[j] + bias[j]; c[j] = v < 0 ? 0 : v; } \
        } else if (act == FASTBP_IDENTITY) {                                                          \
            for (Py_ssize_t j = 0; j < n; j++) c[j] = c[j] + bias[j];                                 \
        } else {                                                                                      \
            for (Py_ssize_t j = 0; j < n; j++) c[j] = fastbp_activate_##SUFFIX(c[j] + bias[j], act);  \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    FASTBP_GEMM_TARGET static void fastbp_gemm_nt_##SUFFIX(                                                \
        const REAL *FASTBP_RESTRICT A, const REAL *FASTBP_RESTRICT W, const REAL *FASTBP_RESTRICT bias, \
        int act, REAL *FASTBP_RESTRICT C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)                   \
    {                                                                                                 \
        Py_ssize_t r = 0;                                                                             \
        for (; r + 4 <= B; r += 4) {                                                                  \
            const REAL *a0 = A + r * I, *a1 = a0 + I, *a2 = a1 + I, *a3 = a2 + I;                     \
            REAL *c = C + r * O;                                                                      \
            Py_ssize_t j = 0;                                                                         \
            for (; j + 4 <= O; j += 4) {                                                              \
                const REAL *w[4] = {W + j * I, W + (j + 1) * I, W + (j + 2) * I, W + (j + 3) * I};    \
                const REAL *a[4] = {a0, a1, a2, a3};                                                  \
                FASTBP_GEMM_VEC(REAL)                                                                 \
                enum { L = sizeof(vec) / sizeof(REAL) };                                              \
                vec acc[4][4];                                                                        \
                memset(acc, 0, sizeof acc);                                                           \
                Py_ssize_t i = 0;                                                                     \
                for (; i + L <= I; i += L) {                                                          \
                    vec x[4], y[4];                                                                   \
                    for (int q = 0; q < 4; q++) {                                                     \
                        memcpy(&x[q], a[q] + i, sizeof(vec));                                         \
                        memcpy(&y[q], w[q] + i, sizeof(vec));                                         \
                    }                                                                                 \
                    for (int q = 0; q < 4; q++)                                                       \
                        for (int u = 0; u < 4; u++) acc[q][u] += x[q] * y[u];                         \
                }                                                                                     \
                for (int q = 0; q < 4; q++) {                                                         \
                    for (int u = 0; u < 4; u++) {                                                     \
                        REAL s;                                                                       \
                        FASTBP_GEMM_HSUM(REAL, acc[q][u], s)                                          \
                        for (Py_ssize_t t = i; t < I; t++) s += a[q][t] * w[u][t];                    \
                        c[q * O + j + u] = s;                                                         \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
            for (; j < O; j++) {                                                                      \
                const REAL *w0 = W + j * I;                                                           \
                REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                  \
                _Pragma("omp simd reduction(+:s0,s1,s2,s3)")                                          \
                for (Py_ssize_t i = 0; i < I; i++) {                                                  \
                    const REAL y = w0[i];                                                             \
                    s0 += a0[i] * y; s1 += a1[i] * y; s2 += a2[i] * y; s3 += a3[i] * y;               \
                }                                                                                     \
                c[j] = s0; c[O + j] = s1; c[2 * O + j] = s2; c[3 * O + j] = s3;                       \
            }                                                                                         \
            fastbp_gemm_epilogue_##SUFFIX(c, bias, O, act);                                           \
            fastbp_gemm_epilogue_##SUFFIX(c + O, bias, O, act);                                       \
            fastbp_gemm_epilogue_##SUFFIX(c + 2 * O, bias, O, act);                                   \
            fastbp_gemm_epilogue_##SUFFIX(c + 3 * O, bias, O, act);                                   \
        }                                                                                             \
        for (; r < B; r++) {                                                                          \
            const REAL *a0 = A + r * I;                                                               \
            for (Py_ssize_t j = 0; j < O; j++) {                                                      \
                const REAL *w0 = W + j * I;                                                           \
                REAL s0 = 0;                                                                          \
                _Pragma("omp simd reduction(+:s0)")                                                   \
                for (Py_ssize_t i = 0; i < I; i++) s0 += a0[i] * w0[i];                               \
                C[r * O + j] = s0;                                                                    \
            }                                                                                         \
            fastbp_gemm_epilogue_##SUFFIX(C + r * O, bias, O, act);                                   \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* C (B x I) = D (B x O) W: FASTBP_GEMM_ROWS rows of C x FASTBP_GEMM_VECS vectors in registers. */ \
    FASTBP_GEMM_TARGET static void fastbp_gemm_nn_##SUFFIX(                                                \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT W, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)                                                     \
    {                                                                                                 \
        for (Py_ssize_t r = 0; r < B; r += FASTBP_GEMM_ROWS) {                                        \
            const int h = B - r < FASTBP_GEMM_ROWS ? (int)(B - r) : FASTBP_GEMM_ROWS;                 \
            /* row q of the block: C row r + q, its D row at stride O, its W row at stride I */       \
            FASTBP_GEMM_BLOCK(REAL, h, O, D + r * O + k, O, W + k * I, C + (r + q) * I, I, 1, 0)      \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* C (O x I) = alpha D^T A (+ C when accumulating): the same block over rows of C = columns of D. */ \
    FASTBP_GEMM_TARGET static void fastbp_gemm_tn_##SUFFIX(                                                \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT A, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, REAL alpha, int accumulate)                         \
    {                                                                                                 \
        for (Py_ssize_t j = 0; j < O; j += FASTBP_GEMM_ROWS) {                                        \
            const int h = O - j < FASTBP_GEMM_ROWS ? (int)(O - j) : FASTBP_GEMM_ROWS;                 \
            FASTBP_GEMM_BLOCK(REAL, h, B, D + k * O + j, 1, A + k * I, C + (j + q) * I, I, alpha,     \
                              accumulate)                                                             \
        }                                                                                             \
    }

FASTBP_DEFINE_GEMM(float, f32)
FASTBP_DEFINE_GEMM(double, f64)
#undef FASTBP_DEFINE_GEMM

#endif
