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

#include "_kernels_pool.h"

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
#define FASTBP_GEMM_BLOCK(REAL, h, K, DK, DSTRIDE, XK, CROW, I0, I, ALPHA, ACC)                       \
    {                                                                                                 \
        FASTBP_GEMM_VEC(REAL)                                                                         \
        enum { L = sizeof(vec) / sizeof(REAL) };                                                      \
        vec zero;                                                                                     \
        memset(&zero, 0, sizeof zero);                                                                \
        Py_ssize_t i0 = (I0);                                                                         \
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
        int act, REAL *FASTBP_RESTRICT C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, Py_ssize_t j0,    \
        Py_ssize_t j1)                                                                                \
    {                                                                                                 \
        Py_ssize_t r = 0;                                                                             \
        for (; r + 4 <= B; r += 4) {                                                                  \
            const REAL *a0 = A + r * I, *a1 = a0 + I, *a2 = a1 + I, *a3 = a2 + I;                     \
            REAL *c = C + r * O;                                                                      \
            Py_ssize_t j = j0;                                                                        \
            for (; j + 4 <= j1; j += 4) {                                                             \
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
            for (; j < j1; j++) {                                                                     \
                const REAL *w0 = W + j * I;                                                           \
                REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                  \
                _Pragma("omp simd reduction(+:s0,s1,s2,s3)")                                          \
                for (Py_ssize_t i = 0; i < I; i++) {                                                  \
                    const REAL y = w0[i];                                                             \
                    s0 += a0[i] * y; s1 += a1[i] * y; s2 += a2[i] * y; s3 += a3[i] * y;               \
                }                                                                                     \
                c[j] = s0; c[O + j] = s1; c[2 * O + j] = s2; c[3 * O + j] = s3;                       \
            }                                                                                         \
            for (int q = 0; q < 4; q++)                                                               \
                fastbp_gemm_epilogue_##SUFFIX(c + q * O + j0, bias + j0, j1 - j0, act);               \
        }                                                                                             \
        for (; r < B; r++) {                                                                          \
            const REAL *a0 = A + r * I;                                                               \
            for (Py_ssize_t j = j0; j < j1; j++) {                                                    \
                const REAL *w0 = W + j * I;                                                           \
                REAL s0 = 0;                                                                          \
                _Pragma("omp simd reduction(+:s0)")                                                   \
                for (Py_ssize_t i = 0; i < I; i++) s0 += a0[i] * w0[i];                               \
                C[r * O + j] = s0;                                                                    \
            }                                                                                         \
            fastbp_gemm_epilogue_##SUFFIX(C + r * O + j0, bias + j0, j1 - j0, act);                   \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* C (B x I) = D (B x O) W, columns [i_begin, i_end) of C: FASTBP_GEMM_ROWS rows of C x FASTBP_GEMM_VECS   \
     * vectors in registers. */                                                                       \
    FASTBP_GEMM_TARGET static void fastbp_gemm_nn_##SUFFIX(                                                \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT W, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, Py_ssize_t i_begin, Py_ssize_t i_end)               \
    {                                                                                                 \
        for (Py_ssize_t r = 0; r < B; r += FASTBP_GEMM_ROWS) {                                        \
            const int h = B - r < FASTBP_GEMM_ROWS ? (int)(B - r) : FASTBP_GEMM_ROWS;                 \
            /* row q of the block: C row r + q, its D row at stride O, its W row at stride I */       \
            FASTBP_GEMM_BLOCK(REAL, h, O, D + r * O + k, O, W + k * I, C + (r + q) * I, i_begin, i_end,  \
                              1, 0)                                                                   \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* C (O x I) = alpha D^T A (+ C when accumulating), rows [j0, j1) of C (j0 a multiple of           \
     * FASTBP_GEMM_ROWS): the same block over rows of C = columns of D. */                            \
    FASTBP_GEMM_TARGET static void fastbp_gemm_tn_##SUFFIX(                                                \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT A, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, REAL alpha, int accumulate, Py_ssize_t j0,          \
        Py_ssize_t j1)                                                                                \
    {                                                                                                 \
        for (Py_ssize_t j = j0; j < j1; j += FASTBP_GEMM_ROWS) {                                      \
            const int h = j1 - j < FASTBP_GEMM_ROWS ? (int)(j1 - j) : FASTBP_GEMM_ROWS;               \
            FASTBP_GEMM_BLOCK(REAL, h, B, D + k * O + j, 1, A + k * I, C + (j + q) * I, 0, I, alpha,  \
                              accumulate)                                                             \
        }                                                                                             \
    }

/* The products on a team of threads (_kernels_pool.h): each part computes a slice of the output cut at
 * the edges of the serial loop's register blocks (4 outputs for nt, FASTBP_GEMM_VECS vectors of columns
 * for nn, FASTBP_GEMM_ROWS rows for tn), so the bits do not depend on the number of parts. Products below
 * FASTBP_SPLIT_MIN_WORK multiply-adds run on the calling thread alone (a fork-join costs about a
 * microsecond). */
#define FASTBP_SPLIT_MIN_WORK 65536.0
enum { FASTBP_GEMM_NT = 0, FASTBP_GEMM_NN = 1, FASTBP_GEMM_TN = 2 };
typedef struct {
    int kind, act, accumulate;
    const void *a, *w, *bias;
    void *c;
    Py_ssize_t B, I, O;
    double alpha;
} fastbp_gemm_job;

#define FASTBP_DEFINE_GEMM_TEAM(REAL, SUFFIX)                                                         \
    static void fastbp_gemm_part_##SUFFIX(void *ctx, int part, int parts)                             \
    {                                                                                                 \
        const fastbp_gemm_job *job = (const fastbp_gemm_job *)ctx;                                    \
        const REAL *a = (const REAL *)job->a, *w = (const REAL *)job->w;                              \
        REAL *c = (REAL *)job->c;                                                                     \
        Py_ssize_t b, e;                                                                              \
        if (job->kind == FASTBP_GEMM_NT) {                                                            \
            fastbp_pool_slice(job->O, 4, part, parts, &b, &e);                                        \
            if (b < e)                                                                                \
                fastbp_gemm_nt_##SUFFIX(a, w, (const REAL *)job->bias, job->act, c, job->B, job->I,   \
                                        job->O, b, e);                                                \
        } else if (job->kind == FASTBP_GEMM_NN) {                                                     \
            fastbp_pool_slice(job->I, FASTBP_GEMM_VECS * (64 / (Py_ssize_t)sizeof(REAL)), part, parts, \
                              &b, &e);                                                                \
            if (b < e) fastbp_gemm_nn_##SUFFIX(a, w, c, job->B, job->I, job->O, b, e);                \
        } else {                                                                                      \
            fastbp_pool_slice(job->O, FASTBP_GEMM_ROWS, part, parts, &b, &e);                         \
            if (b < e)                                                                                \
                fastbp_gemm_tn_##SUFFIX(a, w, c, job->B, job->I, job->O, (REAL)job->alpha,            \
                                        job->accumulate, b, e);                                       \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void fastbp_gemm_run_##SUFFIX(fastbp_pool *pool, fastbp_gemm_job *job)                     \
    {                                                                                                 \
        if (pool == NULL || (double)job->B * (double)job->I * (double)job->O < FASTBP_SPLIT_MIN_WORK) \
            fastbp_gemm_part_##SUFFIX(job, 0, 1);                                                     \
        else                                                                                          \
            fastbp_pool_run(pool, fastbp_gemm_part_##SUFFIX, job);                                    \
    }                                                                                                 \
                                                                                                      \
    /* C (B x O) = f(A W^T + bias) */                                                                 \
    static void fastbp_gemm_nt_team_##SUFFIX(fastbp_pool *pool, const REAL *A, const REAL *W,         \
        const REAL *bias, int act, REAL *C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)                 \
    {                                                                                                 \
        fastbp_gemm_job job = {FASTBP_GEMM_NT, act, 0, A, W, bias, C, B, I, O, 0.0};                  \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }                                                                                                 \
    /* C (B x I) = D (B x O) W */                                                                     \
    static void fastbp_gemm_nn_team_##SUFFIX(fastbp_pool *pool, const REAL *D, const REAL *W, REAL *C, \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)                                                     \
    {                                                                                                 \
        fastbp_gemm_job job = {FASTBP_GEMM_NN, 0, 0, D, W, NULL, C, B, I, O, 0.0};                    \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }                                                                                                 \
    /* C (O x I) = alpha D^T A (+ C when accumulating) */                                             \
    static void fastbp_gemm_tn_team_##SUFFIX(fastbp_pool *pool, const REAL *D, const REAL *A, REAL *C, \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, REAL alpha, int accumulate)                         \
    {                                                                                                 \
        fastbp_gemm_job job = {FASTBP_GEMM_TN, 0, accumulate, D, A, NULL, C, B, I, O, (double)alpha}; \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }

FASTBP_DEFINE_GEMM(float, f32)
FASTBP_DEFINE_GEMM(double, f64)
#undef FASTBP_DEFINE_GEMM
FASTBP_DEFINE_GEMM_TEAM(float, f32)
FASTBP_DEFINE_GEMM_TEAM(double, f64)
#undef FASTBP_DEFINE_GEMM_TEAM

#endif
