/* Small mini-batch products without packing, for the row counts (batch 2-64) where BLAS spends more time
 * packing operands and synchronising threads than multiplying. Included by fastbp/_core.pyx after
 * _kernels.h (FASTBP_RESTRICT, fastbp_activate, Py_ssize_t). Used only where fastbp_small_gemm_cpu_level()
 * is above zero (gcc, Linux, x86-64 with AVX-512 or AVX2+FMA); everywhere else the layers keep BLAS.
 * Row-major operands throughout, the shapes of one dense layer: a batch of B rows, I inputs, O outputs,
 * W stored (O, I).
 *
 * - fastbp_gemm_nt: C (B x O) = f(A (B x I) W^T + bias), the forward product: every entry is a dot
 *   product along contiguous rows of A and W, 4 rows x NTU outputs at a time (vector accumulators, each
 *   summed as a tree at the end), the bias and activation applied to each block of 4 rows while it is
 *   in L1.
 * - fastbp_gemm_nn: C (B x I) = D (B x O) W, the delta of the layer below: rows of W scaled and summed,
 *   a block of ROWS rows x VECS vectors of C kept in registers across the sum.
 * - fastbp_gemm_tn: C (O x I) = alpha D^T A + beta C (beta 0 or 1): the weight gradient (or, with
 *   alpha = -lr and beta = 1, the plain-SGD update in place), the same register blocking over O.
 * The sums over O (nn) and over the batch (tn) run in index order; the dot products (nt) in vector lanes
 * summed as a tree: every result is the same bits run to run, and on any number of threads.
 *
 * Each product is built twice, with runtime dispatch between the two (fastbp_gemm_isa):
 * - AVX-512 (x86-64-v4, 32 registers of 64 bytes): nt blocks of 4 rows x 4 outputs, nn/tn 8 rows x 2
 *   vectors (16 accumulators);
 * - AVX2+FMA (x86-64-v3, 16 registers of 32 bytes): nt 4 x 3 (12 accumulators; 4 x 2 measured 10% slower,
 *   4 x 4 30% slower on the AMD EPYC of docs/BENCHMARKS.md), nn/tn 4 x 2 (6 x 2 and 8 x 1 no faster;
 *   blocks of 3 vectors spill on 16 registers and measured 4x slower).
 * The two give results that differ in the last bits (lanes of 16 or 8 floats in the dot products); each
 * is deterministic. */
#ifndef FASTBP_KERNELS_GEMM_H
#define FASTBP_KERNELS_GEMM_H

#include <string.h>

#include "_kernels_pool.h"

/* Instruction sets of the products: what the CPU runs (fastbp_small_gemm_cpu_level) and what the layers
 * use now (fastbp_gemm_isa, set by fastbp_small_gemm_select; NONE: BLAS serves every layer). */
enum { FASTBP_GEMM_ISA_NONE = 0, FASTBP_GEMM_ISA_AVX2 = 1, FASTBP_GEMM_ISA_AVX512 = 2 };
static int fastbp_gemm_isa = FASTBP_GEMM_ISA_NONE;

#if defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && defined(__x86_64__)             \
    && !defined(FASTBP_NO_CLONES)
#define FASTBP_GEMM_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define FASTBP_GEMM_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
static int fastbp_small_gemm_cpu_level(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return FASTBP_GEMM_ISA_AVX512;
    if (__builtin_cpu_supports("x86-64-v3")) return FASTBP_GEMM_ISA_AVX2;
    return FASTBP_GEMM_ISA_NONE;
}
/* `vec`: VB bytes of REAL (GCC vector extensions). */
#define FASTBP_GEMM_VEC(REAL, VB) typedef REAL vec __attribute__((vector_size(VB)));
/* OUT = the lanes of the VB-byte vector V (64 or 32) summed as a tree (halves added: 64 -> 32 -> 16 bytes,
 * then the last lanes in order), a few instructions instead of one scalar add per lane. */
#define FASTBP_GEMM_HSUM(REAL, VB, V, OUT)                                                            \
    {                                                                                                 \
        typedef REAL half_ __attribute__((vector_size(32)));                                          \
        typedef REAL quarter_ __attribute__((vector_size(16)));                                       \
        half_ h0_;                                                                                    \
        quarter_ q0_, q1_;                                                                            \
        REAL t_[16 / sizeof(REAL)];                                                                   \
        memcpy(&h0_, (const char *)&(V), 32);                                                         \
        if ((VB) == 64) {                                                                             \
            half_ h1_;                                                                                \
            memcpy(&h1_, (const char *)&(V) + 32, 32);                                                \
            h0_ = h0_ + h1_;                                                                          \
        }                                                                                             \
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
#define FASTBP_GEMM_TARGET_AVX512
#define FASTBP_GEMM_TARGET_AVX2
static int fastbp_small_gemm_cpu_level(void) { return FASTBP_GEMM_ISA_NONE; }
#define FASTBP_GEMM_VEC(REAL, VB) typedef REAL vec;
#define FASTBP_GEMM_HSUM(REAL, VB, V, OUT) OUT = (V);
#endif

/* The bytes of one core's L2 cache as the C library reports them (glibc: sysconf), or `fallback` where it
 * does not say. The products above 48 rows are used only for layers whose weights fit in it (_core.pyx,
 * small_gemm_pays). */
#include <unistd.h>
static Py_ssize_t fastbp_l2_bytes(Py_ssize_t fallback)
{
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (bytes >= 65536) return (Py_ssize_t)bytes;
#endif
    return fallback;
}

/* Use the products of instruction set `level` (capped at what the CPU runs; FASTBP_GEMM_ISA_NONE turns
 * them off); returns the set now in use. Called at import, and by the tests and benchmarks to run the
 * AVX2 products on an AVX-512 CPU. */
static int fastbp_small_gemm_select(int level)
{
    const int cpu = fastbp_small_gemm_cpu_level();
    fastbp_gemm_isa = level < FASTBP_GEMM_ISA_NONE ? FASTBP_GEMM_ISA_NONE : level > cpu ? cpu : level;
    return fastbp_gemm_isa;
}

/* The forward product's buffer for 4 rows of A (rows of up to 1024 floats or 512 doubles). */
#define FASTBP_GEMM_NT_ABUF_BYTES 16384

/* The register blocks of each set (see the top of the file). NT_OUTS: outputs of an nt block; ROWS x
 * VECS: an nn/tn block; VBYTES: the vector width. The team splits each product at these edges. */
#define FASTBP_GEMM_AVX512_VBYTES 64
#define FASTBP_GEMM_AVX512_NT_OUTS 4
#define FASTBP_GEMM_AVX512_ROWS 8
#define FASTBP_GEMM_AVX512_VECS 2
#define FASTBP_GEMM_AVX2_VBYTES 32
#define FASTBP_GEMM_AVX2_NT_OUTS 3
#define FASTBP_GEMM_AVX2_ROWS 4
#define FASTBP_GEMM_AVX2_VECS 2

/* One block of nn/tn: for the h (<= ROWS) rows q of C starting at CROW (an expression in q),
 * over every column i of I: C[q][i] = alpha * sum_{k < K} DK[q * DSTRIDE] * XK[i] (+ C[q][i] when ACC),
 * where DK and XK are expressions in k. Every element's sum runs in k order, whichever strip (NV vectors
 * wide, one vector wide, or the scalar columns at the end) computes it. */
#define FASTBP_GEMM_STRIP(REAL, ROWS, NV, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)                 \
        for (; i0 + (NV) * L <= (I); i0 += (NV) * L) {                                                \
            vec acc[ROWS][NV];                                                                        \
            for (int q = 0; q < (ROWS); q++)                                                          \
                for (int u = 0; u < (NV); u++) acc[q][u] = zero;                                      \
            if (h == (ROWS)) {                                                                        \
                for (Py_ssize_t k = 0; k < (K); k++) {                                                \
                    const REAL *dk = (DK);                                                            \
                    const REAL *x = (XK) + i0;                                                        \
                    vec v[NV];                                                                        \
                    for (int u = 0; u < (NV); u++) memcpy(&v[u], x + u * L, sizeof(vec));             \
                    for (int q = 0; q < (ROWS); q++) {                                                \
                        const REAL dq = dk[q * (DSTRIDE)];                                            \
                        for (int u = 0; u < (NV); u++) acc[q][u] += dq * v[u];                        \
                    }                                                                                 \
                }                                                                                     \
            } else {                                                                                  \
                for (Py_ssize_t k = 0; k < (K); k++) {                                                \
                    const REAL *dk = (DK);                                                            \
                    const REAL *x = (XK) + i0;                                                        \
                    vec v[NV];                                                                        \
                    for (int u = 0; u < (NV); u++) memcpy(&v[u], x + u * L, sizeof(vec));             \
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
                        memcpy(&old, c + u * L, sizeof old);                                          \
                        out = old + out;                                                              \
                    }                                                                                 \
                    memcpy(c + u * L, &out, sizeof out);                                              \
                }                                                                                     \
            }                                                                                         \
        }
#define FASTBP_GEMM_BLOCK(REAL, VB, ROWS, VECS, h, K, DK, DSTRIDE, XK, CROW, I0, I, ALPHA, ACC)       \
    {                                                                                                 \
        FASTBP_GEMM_VEC(REAL, VB)                                                                     \
        enum { L = sizeof(vec) / sizeof(REAL) };                                                      \
        vec zero;                                                                                     \
        memset(&zero, 0, sizeof zero);                                                                \
        Py_ssize_t i0 = (I0);                                                                         \
        FASTBP_GEMM_STRIP(REAL, ROWS, VECS, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)               \
        FASTBP_GEMM_STRIP(REAL, ROWS, 1, h, K, DK, DSTRIDE, XK, CROW, I, ALPHA, ACC)                  \
        for (int q = 0; q < h; q++) {                                                                 \
            REAL *c = (CROW);                                                                         \
            for (Py_ssize_t i = i0; i < (I); i++) {                                                   \
                REAL s = 0;                                                                           \
                for (Py_ssize_t k = 0; k < (K); k++) s += (DK)[q * (DSTRIDE)] * (XK)[i];              \
                c[i] = (ACC) ? c[i] + (ALPHA) * s : (ALPHA) * s;                                      \
            }                                                                                         \
        }                                                                                             \
    }

#define FASTBP_DEFINE_GEMM_EPILOGUE(REAL, SUFFIX)                                                     \
    /* C = f(A W^T + bias), row by row: the bias and activation applied to each block of 4 rows while \
     * it is in L1 (the same per-element formula as _core.pyx's bias_activate). */                    \
    static inline void fastbp_gemm_epilogue_##SUFFIX(REAL *FASTBP_RESTRICT c,                         \
        const REAL *FASTBP_RESTRICT bias, Py_ssize_t n, int act)                                      \
    {                                                                                                 \
        if (act == FASTBP_RELU) {                                                                     \
            for (Py_ssize_t j = 0; j < n; j++) { const REAL v = c[j] + bias[j]; c[j] = v < 0 ? 0 : v; } \
        } else if (act == FASTBP_IDENTITY) {                                                          \
            for (Py_ssize_t j = 0; j < n; j++) c[j] = c[j] + bias[j];                                 \
        } else {                                                                                      \
            for (Py_ssize_t j = 0; j < n; j++) c[j] = fastbp_activate_##SUFFIX(c[j] + bias[j], act);  \
        }                                                                                             \
    }                                                                                                 \

/* The sums of the lanes of each of the 4 x NTU accumulators ACC of an nt block, into SUMS[4][NTU]: each
 * vector on its own (FASTBP_GEMM_HSUM), or all 16 at once where they are 16 vectors of 16 floats
 * (AVX-512, float32): four rounds of shuffles and adds, each pairing vectors and adding their halves, leave
 * one vector whose lane 4q + u is the sum of ACC[q][u] (45 instructions against about 130). */
#define FASTBP_GEMM_SUMS_EACH(REAL, VB, NTU, ACC, SUMS)                                               \
    for (int q = 0; q < 4; q++)                                                                       \
        for (int u = 0; u < (NTU); u++) FASTBP_GEMM_HSUM(REAL, VB, ACC[q][u], SUMS[q][u])
#if defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && defined(__x86_64__)             \
    && !defined(FASTBP_NO_CLONES)
#define FASTBP_GEMM_SUMS_JOINT16(REAL, VB, NTU, ACC, SUMS)                                            \
    {                                                                                                 \
        typedef int mask_ __attribute__((vector_size(64)));                                           \
        vec v1_[8], v2_[4], v3_[2], v4_;                                                              \
        for (int m = 0; m < 8; m++) /* 16 -> 8: lanes 0-7 from ACC 2m, 8-15 from ACC 2m + 1 */        \
            v1_[m] = __builtin_shuffle(ACC[m / 2][2 * (m % 2)], ACC[m / 2][2 * (m % 2) + 1],          \
                                       (mask_){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}) \
                     + __builtin_shuffle(ACC[m / 2][2 * (m % 2)], ACC[m / 2][2 * (m % 2) + 1],        \
                                         (mask_){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, \
                                                 31});                                                \
        for (int m = 0; m < 4; m++) /* 8 -> 4: groups of 4 lanes */                                   \
            v2_[m] = __builtin_shuffle(v1_[2 * m], v1_[2 * m + 1],                                    \
                                       (mask_){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}) \
                     + __builtin_shuffle(v1_[2 * m], v1_[2 * m + 1],                                  \
                                         (mask_){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, \
                                                 31});                                                \
        for (int m = 0; m < 2; m++) /* 4 -> 2: pairs of lanes */                                      \
            v3_[m] = __builtin_shuffle(v2_[2 * m], v2_[2 * m + 1],                                    \
                                       (mask_){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}) \
                     + __builtin_shuffle(v2_[2 * m], v2_[2 * m + 1],                                  \
                                         (mask_){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, \
                                                 31});                                                \
        /* 2 -> 1: lane k the sum of accumulator k = 4q + u */                                        \
        v4_ = __builtin_shuffle(v3_[0], v3_[1],                                                       \
                                (mask_){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})   \
              + __builtin_shuffle(v3_[0], v3_[1],                                                     \
                                  (mask_){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}); \
        memcpy(SUMS, &v4_, sizeof v4_);                                                               \
    }
#else
#define FASTBP_GEMM_SUMS_JOINT16 FASTBP_GEMM_SUMS_EACH
#endif

/* The three products of one instruction set ISA (avx512, avx2): TARGET its function attribute, VB its vector
 * bytes, NTU the outputs of an nt block, ROWS x VECS the nn/tn block, SUMS the lane sums of an nt block. */
#define FASTBP_DEFINE_GEMM(REAL, SUFFIX, ISA, TARGET, VB, NTU, ROWS, VECS, SUMS)                      \
    TARGET static void fastbp_gemm_nt_##ISA##_##SUFFIX(                                               \
        const REAL *FASTBP_RESTRICT A, const REAL *FASTBP_RESTRICT W, const REAL *FASTBP_RESTRICT bias, \
        int act, REAL *FASTBP_RESTRICT C, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, Py_ssize_t j0,    \
        Py_ssize_t j1)                                                                                \
    {                                                                                                 \
        /* Rows of A off the vector width (X as numpy allocates it, 16 bytes off a line, read in place \
         * when not shuffled) are copied 4 at a time to an aligned buffer, the next 4 prefetched a few \
         * lines per block of outputs meanwhile: loads that straddle two lines made the product 10%    \
         * slower (784-128-10, batch 32), and a copy that waits on memory would cost as much. */       \
        REAL abuf_[FASTBP_GEMM_NT_ABUF_BYTES / sizeof(REAL)] __attribute__((aligned(64)));            \
        const Py_ssize_t lanes_ = (Py_ssize_t)((VB) / sizeof(REAL));                                  \
        const Py_ssize_t ald_ = (I + lanes_ - 1) / lanes_ * lanes_;                                   \
        const int copy_a_ = ((size_t)A % (VB) != 0 || (I * sizeof(REAL)) % (VB) != 0)                \
                            && (size_t)(4 * ald_) * sizeof(REAL) <= sizeof abuf_;                     \
        const Py_ssize_t row_lines_ = (I * (Py_ssize_t)sizeof(REAL) + 63) / 64;                       \
        const Py_ssize_t blocks_ = (j1 - j0 + (NTU) - 1) / (NTU);                                     \
        const Py_ssize_t pf_step_ = blocks_ > 0 ? (4 * row_lines_ + blocks_ - 1) / blocks_ : 0;       \
        Py_ssize_t r = 0;                                                                             \
        for (; r + 4 <= B; r += 4) {                                                                  \
            const REAL *a0 = A + r * I, *a1 = a0 + I, *a2 = a1 + I, *a3 = a2 + I;                     \
            /* the next block's rows (contiguous after these: 4 I values, or fewer at the end) */     \
            const char *next_ = (const char *)(A + (r + 4) * I);                                      \
            const Py_ssize_t next_lines_ = copy_a_ && r + 4 < B                                       \
                ? (((B - r - 4 < 4 ? B - r - 4 : 4) * I * (Py_ssize_t)sizeof(REAL)) + 63) / 64 : 0;   \
            Py_ssize_t pf_ = 0;                                                                       \
            if (copy_a_) {                                                                            \
                memcpy(abuf_, a0, I * sizeof(REAL));                                                  \
                memcpy(abuf_ + ald_, a1, I * sizeof(REAL));                                           \
                memcpy(abuf_ + 2 * ald_, a2, I * sizeof(REAL));                                       \
                memcpy(abuf_ + 3 * ald_, a3, I * sizeof(REAL));                                       \
                a0 = abuf_; a1 = abuf_ + ald_; a2 = abuf_ + 2 * ald_; a3 = abuf_ + 3 * ald_;          \
            }                                                                                         \
            REAL *c = C + r * O;                                                                      \
            Py_ssize_t j = j0;                                                                        \
            for (; j + (NTU) <= j1; j += (NTU)) {                                                     \
                for (Py_ssize_t t_ = 0; t_ < pf_step_ && pf_ < next_lines_; t_++, pf_++)              \
                    __builtin_prefetch(next_ + pf_ * 64);                                             \
                const REAL *w[NTU];                                                                   \
                for (int u = 0; u < (NTU); u++) w[u] = W + (j + u) * I;                               \
                const REAL *a[4] = {a0, a1, a2, a3};                                                  \
                FASTBP_GEMM_VEC(REAL, VB)                                                             \
                enum { L = sizeof(vec) / sizeof(REAL) };                                              \
                vec acc[4][NTU];                                                                      \
                memset(acc, 0, sizeof acc);                                                           \
                Py_ssize_t i = 0;                                                                     \
                for (; i + L <= I; i += L) {                                                          \
                    vec x[4], y[NTU];                                                                 \
                    _Pragma("GCC unroll 4")                                                           \
                    for (int q = 0; q < 4; q++) memcpy(&x[q], a[q] + i, sizeof(vec));                 \
                    _Pragma("GCC unroll 4")                                                           \
                    for (int u = 0; u < (NTU); u++) memcpy(&y[u], w[u] + i, sizeof(vec));             \
                    for (int q = 0; q < 4; q++)                                                       \
                        for (int u = 0; u < (NTU); u++) acc[q][u] += x[q] * y[u];                     \
                }                                                                                     \
                REAL sums[4][NTU];                                                                    \
                SUMS(REAL, VB, NTU, acc, sums)                                                        \
                for (int q = 0; q < 4; q++) {                                                         \
                    for (int u = 0; u < (NTU); u++) {                                                 \
                        REAL s = sums[q][u];                                                          \
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
    /* C (B x I) = D (B x O) W, columns [i_begin, i_end) of C: ROWS rows of C x VECS vectors in        \
     * registers. */                                                                                 \
    TARGET static void fastbp_gemm_nn_##ISA##_##SUFFIX(                                               \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT W, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, Py_ssize_t i_begin, Py_ssize_t i_end)               \
    {                                                                                                 \
        for (Py_ssize_t r = 0; r < B; r += (ROWS)) {                                                  \
            const int h = B - r < (ROWS) ? (int)(B - r) : (ROWS);                                     \
            /* row q of the block: C row r + q, its D row at stride O, its W row at stride I */       \
            FASTBP_GEMM_BLOCK(REAL, VB, ROWS, VECS, h, O, D + r * O + k, O, W + k * I, C + (r + q) * I, \
                              i_begin, i_end, 1, 0)                                                   \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* C (O x I) = alpha D^T A (+ C when accumulating), rows [j0, j1) of C (j0 a multiple of ROWS):   \
     * the same block over rows of C = columns of D. */                                               \
    TARGET static void fastbp_gemm_tn_##ISA##_##SUFFIX(                                               \
        const REAL *FASTBP_RESTRICT D, const REAL *FASTBP_RESTRICT A, REAL *FASTBP_RESTRICT C,        \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, REAL alpha, int accumulate, Py_ssize_t j0,          \
        Py_ssize_t j1)                                                                                \
    {                                                                                                 \
        for (Py_ssize_t j = j0; j < j1; j += (ROWS)) {                                                \
            const int h = j1 - j < (ROWS) ? (int)(j1 - j) : (ROWS);                                   \
            FASTBP_GEMM_BLOCK(REAL, VB, ROWS, VECS, h, B, D + k * O + j, 1, A + k * I, C + (j + q) * I, \
                              0, I, alpha, accumulate)                                                \
        }                                                                                             \
    }

/* The products on a team of threads (_kernels_pool.h): each part computes a slice of the output cut at
 * the edges of the serial loop's register blocks (NT_OUTS outputs for nt, VECS vectors of columns for nn,
 * ROWS rows for tn, of the instruction set in use), so the bits do not depend on the number of parts.
 * Products below FASTBP_SPLIT_MIN_WORK multiply-adds run on the calling thread alone (a fork-join costs
 * about a microsecond). */
#define FASTBP_SPLIT_MIN_WORK 65536.0
enum { FASTBP_GEMM_NT = 0, FASTBP_GEMM_NN = 1, FASTBP_GEMM_TN = 2 };
typedef struct {
    int kind, act, accumulate, isa;
    const void *a, *w, *bias;
    void *c;
    Py_ssize_t B, I, O;
    double alpha;
} fastbp_gemm_job;

/* One part of a job on the instruction set ISA (its block sizes FASTBP_GEMM_<ISA>_*). */
#define FASTBP_GEMM_PART(REAL, SUFFIX, ISA, ISA_UPPER)                                                \
    {                                                                                                 \
        if (job->kind == FASTBP_GEMM_NT) {                                                            \
            fastbp_pool_slice(job->O, FASTBP_GEMM_##ISA_UPPER##_NT_OUTS, part, parts, &b, &e);        \
            if (b < e)                                                                                \
                fastbp_gemm_nt_##ISA##_##SUFFIX(a, w, (const REAL *)job->bias, job->act, c, job->B,   \
                                                job->I, job->O, b, e);                                \
        } else if (job->kind == FASTBP_GEMM_NN) {                                                     \
            fastbp_pool_slice(job->I,                                                                 \
                              FASTBP_GEMM_##ISA_UPPER##_VECS                                          \
                                  * (FASTBP_GEMM_##ISA_UPPER##_VBYTES / (Py_ssize_t)sizeof(REAL)),    \
                              part, parts, &b, &e);                                                   \
            if (b < e) fastbp_gemm_nn_##ISA##_##SUFFIX(a, w, c, job->B, job->I, job->O, b, e);        \
        } else {                                                                                      \
            fastbp_pool_slice(job->O, FASTBP_GEMM_##ISA_UPPER##_ROWS, part, parts, &b, &e);           \
            if (b < e)                                                                                \
                fastbp_gemm_tn_##ISA##_##SUFFIX(a, w, c, job->B, job->I, job->O, (REAL)job->alpha,    \
                                                job->accumulate, b, e);                               \
        }                                                                                             \
    }

#define FASTBP_DEFINE_GEMM_TEAM(REAL, SUFFIX)                                                         \
    static void fastbp_gemm_part_##SUFFIX(void *ctx, int part, int parts)                             \
    {                                                                                                 \
        const fastbp_gemm_job *job = (const fastbp_gemm_job *)ctx;                                    \
        const REAL *a = (const REAL *)job->a, *w = (const REAL *)job->w;                              \
        REAL *c = (REAL *)job->c;                                                                     \
        Py_ssize_t b, e;                                                                              \
        if (job->isa == FASTBP_GEMM_ISA_AVX2)                                                         \
            FASTBP_GEMM_PART(REAL, SUFFIX, avx2, AVX2)                                                \
        else                                                                                          \
            FASTBP_GEMM_PART(REAL, SUFFIX, avx512, AVX512)                                            \
    }                                                                                                 \
                                                                                                      \
    static void fastbp_gemm_run_##SUFFIX(fastbp_pool *pool, fastbp_gemm_job *job)                     \
    {                                                                                                 \
        job->isa = fastbp_gemm_isa;                                                                   \
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
        fastbp_gemm_job job = {FASTBP_GEMM_NT, act, 0, 0, A, W, bias, C, B, I, O, 0.0};               \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }                                                                                                 \
    /* C (B x I) = D (B x O) W */                                                                     \
    static void fastbp_gemm_nn_team_##SUFFIX(fastbp_pool *pool, const REAL *D, const REAL *W, REAL *C, \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O)                                                     \
    {                                                                                                 \
        fastbp_gemm_job job = {FASTBP_GEMM_NN, 0, 0, 0, D, W, NULL, C, B, I, O, 0.0};                 \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }                                                                                                 \
    /* C (O x I) = alpha D^T A (+ C when accumulating) */                                             \
    static void fastbp_gemm_tn_team_##SUFFIX(fastbp_pool *pool, const REAL *D, const REAL *A, REAL *C, \
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, REAL alpha, int accumulate)                         \
    {                                                                                                 \
        fastbp_gemm_job job = {FASTBP_GEMM_TN, 0, accumulate, 0, D, A, NULL, C, B, I, O, (double)alpha}; \
        fastbp_gemm_run_##SUFFIX(pool, &job);                                                         \
    }

#define FASTBP_DEFINE_GEMM_ISAS(REAL, SUFFIX, AVX512_SUMS)                                            \
    FASTBP_DEFINE_GEMM_EPILOGUE(REAL, SUFFIX)                                                         \
    FASTBP_DEFINE_GEMM(REAL, SUFFIX, avx512, FASTBP_GEMM_TARGET_AVX512, FASTBP_GEMM_AVX512_VBYTES,    \
                       FASTBP_GEMM_AVX512_NT_OUTS, FASTBP_GEMM_AVX512_ROWS, FASTBP_GEMM_AVX512_VECS,  \
                       AVX512_SUMS)                                                                   \
    FASTBP_DEFINE_GEMM(REAL, SUFFIX, avx2, FASTBP_GEMM_TARGET_AVX2, FASTBP_GEMM_AVX2_VBYTES,          \
                       FASTBP_GEMM_AVX2_NT_OUTS, FASTBP_GEMM_AVX2_ROWS, FASTBP_GEMM_AVX2_VECS,        \
                       FASTBP_GEMM_SUMS_EACH)                                                         \
    FASTBP_DEFINE_GEMM_TEAM(REAL, SUFFIX)

FASTBP_DEFINE_GEMM_ISAS(float, f32, FASTBP_GEMM_SUMS_JOINT16)
FASTBP_DEFINE_GEMM_ISAS(double, f64, FASTBP_GEMM_SUMS_EACH)
#undef FASTBP_DEFINE_GEMM_ISAS
#undef FASTBP_DEFINE_GEMM_TEAM
#undef FASTBP_DEFINE_GEMM_EPILOGUE
#undef FASTBP_DEFINE_GEMM
#undef FASTBP_GEMM_SUMS_JOINT16
#undef FASTBP_GEMM_SUMS_EACH

#endif
