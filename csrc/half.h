/* Rounding float32 values to float16 precision, in place: the float16 model's rule
 * "every layer's output is a float16 value" without leaving float32 arrays.
 *
 * The conversion is C's _Float16 (IEEE binary16, round to nearest even, overflow to
 * infinity, NaN kept), exactly what numpy's astype(float16) does. Built with F16C (the
 * AVX2 variant) it compiles to vcvtps2ph/vcvtph2ps, eight values per instruction;
 * without it the compiler's software conversion gives the same values, more slowly.
 *
 * _Float16 needs GCC 12+ or clang 15+. setup.py tests the compiler for it on its own
 * and defines NETSPEC_NO_FLOAT16 when it is missing: then ns_round_half does nothing
 * and returns 0, and the module rounds with the numpy reference instead; every other
 * kernel is built as usual.
 */
#ifndef NETSPEC_HALF_H
#define NETSPEC_HALF_H

#include <stddef.h>

#ifdef NETSPEC_NO_FLOAT16
#define NS_HAS_FLOAT16 0
static int ns_round_half(float *x, ptrdiff_t n, int nthreads) {
    (void)x; (void)n; (void)nthreads;
    return 0;
}
#else
#define NS_HAS_FLOAT16 1
/* Returns 1: x[0..n) rounded in place. */
static int ns_round_half(float *x, ptrdiff_t n, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (n > 65536)
    for (ptrdiff_t i = 0; i < n; i++) x[i] = (float)(_Float16)x[i];
    return 1;
}
#endif

#endif
