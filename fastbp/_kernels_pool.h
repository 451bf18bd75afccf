/* A team of threads for the kernel's own mini-batch products (_kernels_gemm.h), alive for one training
 * call. Included by fastbp/_core.pyx after _kernels.h.
 *
 * The calling thread is part 0; parts 1 .. parts-1 are helper threads that wait, spinning and then
 * yielding, for the next job. A job is a function called once per part as fn(ctx, part, parts), each
 * part writing its own slice of the output; fastbp_pool_run returns once every part has finished (one
 * fork-join per product, about a microsecond against the tens of microseconds of a product worth
 * splitting). The products split their output at the edges of the register blocks that the serial loop
 * uses, so every element is computed by the same instructions in the same order: the results are the
 * same bits whatever the number of parts, on an idle or a busy machine.
 *
 * Built with pthreads on Linux and macOS with gcc or clang; elsewhere fastbp_pool_create returns NULL and
 * every product runs on the calling thread. */
#ifndef FASTBP_KERNELS_POOL_H
#define FASTBP_KERNELS_POOL_H

#include <stdlib.h>

#define FASTBP_POOL_MAX 8

/* Jobs run on more than one thread since the module was loaded (for the tests: that a team really ran). */
static unsigned long long fastbp_pool_jobs = 0;

typedef void (*fastbp_pool_fn)(void *ctx, int part, int parts);

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__linux__) || defined(__APPLE__))
#include <pthread.h>
#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#define FASTBP_POOL_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FASTBP_POOL_PAUSE() __asm__ __volatile__("yield")
#else
#define FASTBP_POOL_PAUSE() ((void)0)
#endif

/* Spins before each wait starts yielding the core (a few tens of microseconds): between two products of
 * one step the helpers wait microseconds, but on a busy machine, or while the caller runs a long serial
 * stretch, a waiting thread must let others run. */
#define FASTBP_POOL_SPINS 200

struct fastbp_pool;
typedef struct { struct fastbp_pool *pool; int part; } fastbp_pool_helper_arg;

typedef struct fastbp_pool {
    int parts;
    int started;                     /* helper threads created */
    pthread_t threads[FASTBP_POOL_MAX];
    unsigned generation;             /* the job number; helpers run each new one (atomic) */
    int remaining;                   /* helpers that have not finished the current job (atomic) */
    int quit;                        /* set with a new generation: the helpers exit (atomic) */
    fastbp_pool_fn fn;
    void *ctx;
    fastbp_pool_helper_arg helpers[FASTBP_POOL_MAX];
} fastbp_pool;

/* Wait while CONDITION (which reads an atomic) holds: FASTBP_POOL_SPINS pauses, then yielding the core. */
#define FASTBP_POOL_WAIT_WHILE(CONDITION)                                                             \
    {                                                                                                 \
        long spins_ = 0;                                                                              \
        while (CONDITION) {                                                                           \
            if (++spins_ < FASTBP_POOL_SPINS) FASTBP_POOL_PAUSE(); else sched_yield();                \
        }                                                                                             \
    }

static void *fastbp_pool_helper(void *arg)
{
    fastbp_pool *pool = ((fastbp_pool_helper_arg *)arg)->pool;
    const int part = ((fastbp_pool_helper_arg *)arg)->part;
    unsigned seen = 0;
    for (;;) {
        FASTBP_POOL_WAIT_WHILE(__atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen)
        seen = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&pool->quit, __ATOMIC_ACQUIRE)) return NULL;
        pool->fn(pool->ctx, part, pool->parts);
        __atomic_sub_fetch(&pool->remaining, 1, __ATOMIC_ACQ_REL);
    }
}

static void fastbp_pool_destroy(fastbp_pool *pool);

/* A team of `parts` threads (the caller included), or NULL: parts < 2, or the threads could not be made
 * (the caller then runs every product itself). */
static fastbp_pool *fastbp_pool_create(int parts)
{
    fastbp_pool *pool;
    if (parts < 2) return NULL;
    if (parts > FASTBP_POOL_MAX) parts = FASTBP_POOL_MAX;
    pool = (fastbp_pool *)calloc(1, sizeof *pool);
    if (pool == NULL) return NULL;
    pool->parts = parts;
    for (int i = 1; i < parts; i++) {
        pool->helpers[i].pool = pool;
        pool->helpers[i].part = i;
        if (pthread_create(&pool->threads[i], NULL, fastbp_pool_helper, &pool->helpers[i]) != 0) break;
        pool->started = i;
    }
    if (pool->started != parts - 1) {
        fastbp_pool_destroy(pool);
        return NULL;
    }
    return pool;
}

/* fn(ctx, part, parts) for every part, part 0 on the calling thread; returns when all have finished. */
static void fastbp_pool_run(fastbp_pool *pool, fastbp_pool_fn fn, void *ctx)
{
    if (pool == NULL) {
        fn(ctx, 0, 1);
        return;
    }
    __atomic_add_fetch(&fastbp_pool_jobs, 1, __ATOMIC_RELAXED);
    pool->fn = fn;
    pool->ctx = ctx;
    __atomic_store_n(&pool->remaining, pool->parts - 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&pool->generation, 1, __ATOMIC_RELEASE);
    fn(ctx, 0, pool->parts);
    FASTBP_POOL_WAIT_WHILE(__atomic_load_n(&pool->remaining, __ATOMIC_ACQUIRE) != 0)
}

static void fastbp_pool_destroy(fastbp_pool *pool)
{
    if (pool == NULL) return;
    if (pool->started > 0) {
        __atomic_store_n(&pool->quit, 1, __ATOMIC_RELEASE);
        __atomic_add_fetch(&pool->generation, 1, __ATOMIC_RELEASE);
        for (int i = 1; i <= pool->started; i++) pthread_join(pool->threads[i], NULL);
    }
    free(pool);
}

#else
typedef struct fastbp_pool { int parts; } fastbp_pool;
static fastbp_pool *fastbp_pool_create(int parts) { (void)parts; return NULL; }
static void fastbp_pool_run(fastbp_pool *pool, fastbp_pool_fn fn, void *ctx) { (void)pool; fn(ctx, 0, 1); }
static void fastbp_pool_destroy(fastbp_pool *pool) { (void)pool; }
#endif

/* The part-th of `parts` slices of [0, extent) cut at multiples of `unit` (the last slice takes the
 * rest): *begin, *end. Slices may be empty when there are fewer units than parts. */
static inline void fastbp_pool_slice(Py_ssize_t extent, Py_ssize_t unit, int part, int parts,
                                     Py_ssize_t *begin, Py_ssize_t *end)
{
    const Py_ssize_t units = (extent + unit - 1) / unit;
    Py_ssize_t b = units * part / parts * unit, e = units * (part + 1) / parts * unit;
    *begin = b < extent ? b : extent;
    *end = e < extent ? e : extent;
}

#endif
