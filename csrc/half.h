/* Rounding float32 values to float16 precision, in place: the float16 model's rule
 * "every layer's output is a float16 value" without leaving float32 arrays.
 *
 * The conversion is C's _Float16 (IEEE binary16, round to nearest even, overflow to
 * infinity, NaN kept), exactly what numpy's astype(float16) does. Built with F16C (the
 * AVX2 and AVX-512 variants) the loop uses vcvtps2ph/vcvtph2ps on eight values per
 * instruction; without it the compiler's software conversion gives the same values,
 * more slowly.
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
#ifdef __F16C__
#include <immintrin.h>
#endif
/* Returns 1: x[0..n) rounded in place. */
static int ns_round_half(float *x, ptrdiff_t n, int nthreads) {
    ptrdiff_t done = 0;
#ifdef __F16C__
    /* GCC 12 does not vectorize the _Float16 loop below: one vcvtps2ph per value (and the
     * AVX-512 build ran that same scalar loop 1.7x slower than the AVX2 build, cause not
     * found). With F16C the conversion is written out, eight values per instruction, with
     * the same rounding (to nearest even). */
    done = n / 8 * 8;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (n > 65536)
    for (ptrdiff_t i = 0; i < done; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (n - done > 65536)
    for (ptrdiff_t i = done; i < n; i++) x[i] = (float)(_Float16)x[i];
    return 1;
}
#endif

#endif
