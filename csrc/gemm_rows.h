/* out (M x N, row-major) = a (M x K) @ b (K x N) with the rows of out split over an OpenMP team,
 * each thread one call of a CBLAS gemm (the one numpy's BLAS exports; see gemm_rows in
 * _compiled.pyx) on its block of rows. a and b are row-major (trans 111) or the transposes of
 * row-major arrays (112), with leading dimensions lda and ldb in elements. Thread t takes rows
 * M*t/n .. M*(t+1)/n: the same blocks, so the same values, whatever runs them. Exactly one of
 * sgemm (float32) and dgemm (float64) is non-NULL. */
#ifndef NS_GEMM_ROWS_H
#define NS_GEMM_ROWS_H

#include <stdint.h>
#include "team.h"   /* ns_team_done */

typedef void (*_sgemm_t)(int order, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc);
typedef void (*_dgemm_t)(int order, int ta, int tb, int64_t M, int64_t N, int64_t K, double alpha,
                         const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
                         double *C, int64_t ldc);

#define NS_CBLAS_ROW_MAJOR 101
#define NS_CBLAS_NO_TRANS 111

static void ns_gemm_rows(_sgemm_t sgemm, _dgemm_t dgemm, int ta, int tb, int64_t M, int64_t N, int64_t K,
                         const char *a, int64_t lda, const char *b, int64_t ldb, char *out, int nthreads) {
    const size_t item = sgemm ? sizeof(float) : sizeof(double);
    int done = 0;
    #pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
#endif
        const int64_t r0 = M * t / nt, r1 = M * (t + 1) / nt;
        if (r1 > r0) {
            /* row r0 of a: r0 rows down a row-major a, r0 columns along the array a transposes */
            const char *ar = a + (size_t)r0 * (size_t)(ta == NS_CBLAS_NO_TRANS ? lda : 1) * item;
            char *o = out + (size_t)r0 * (size_t)N * item;
            if (sgemm)
                sgemm(NS_CBLAS_ROW_MAJOR, ta, tb, r1 - r0, N, K, 1.0f, (const float *)ar, lda,
                      (const float *)b, ldb, 0.0f, (float *)o, N);
            else
                dgemm(NS_CBLAS_ROW_MAJOR, ta, tb, r1 - r0, N, K, 1.0, (const double *)ar, lda,
                      (const double *)b, ldb, 0.0, (double *)o, N);
        }
        ns_team_done(&done);
    }
}

#endif
