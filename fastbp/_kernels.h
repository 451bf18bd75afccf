/* Small inner loops of the fastbp kernel that Cython cannot express well.
 *
 * gcc vectorises a floating-point sum only when it may reorder the additions. `#pragma omp simd
 * reduction(+:s)` (enabled by -fopenmp-simd, no OpenMP runtime needed) allows exactly that reordering and
 * nothing else, so results stay deterministic run to run without -ffast-math.
 */
#ifndef FASTBP_KERNELS_H
#define FASTBP_KERNELS_H

#include <stddef.h>

static inline float fastbp_dot_f32(const float *a, const float *b, ptrdiff_t n)
{
    float s = 0.0f;
#pragma omp simd reduction(+:s)
    for (ptrdiff_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static inline double fastbp_dot_f64(const double *a, const double *b, ptrdiff_t n)
{
    double s = 0.0;
#pragma omp simd reduction(+:s)
    for (ptrdiff_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#endif
