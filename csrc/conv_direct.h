/* Direct float32 convolution for netspec: forward, and backward for the weights.
 *
 * Design. im2col + one big GEMM is the wrong tool for the book's thin layers
 * (16-64 channels): the column matrix is 9x the input, and a GEMM with 16 rows
 * reaches a fraction of the machine's peak. Here every thread owns whole
 * samples; a sample is first copied into a zero-padded buffer, so the inner
 * loops never test bounds. Output channels sit in SIMD lanes: a block of 16
 * filters is two 8-float vectors, and a row of T output pixels keeps 2*T
 * vector accumulators in registers while the loop walks over (c, i, j),
 * multiplying one broadcast input value by one weight vector per pixel.
 * Weights arrive re-laid out as wt[C][kh][kw][Fp] (Fp = F rounded up to 16,
 * zero-filled), so the 16 weights a step needs are contiguous.
 *
 * The backward pass for the input of a stride-1 convolution is itself a
 * forward convolution (of dout, padded by k-1-pad, with the weights rotated
 * 180 degrees and in/out channels swapped), so it reuses ns_conv_forward.
 * The weight gradient dW[f][c][i][j] = sum over n, oh, ow of
 * dout[n][f][oh][ow] * xpad[n][c][oh*s+i][ow*s+j] is computed with dout
 * transposed per sample to [oh][ow][Fp] (filters in lanes again); each thread
 * accumulates its own partial dW, and the partials are summed once at the end.
 *
 * GCC/clang vector extensions keep this portable: the same source becomes
 * SSE2 in the baseline build and AVX2+FMA in the AVX2 build. With GCC,
 * contraction to FMA is allowed in this file only (the pragma below; the rest of
 * the module keeps products and sums separately rounded, as the numpy reference
 * does). Other compilers build these loops without contraction: separate
 * multiplies and adds, the same results within the float tolerance, slower.
 */
#ifndef NETSPEC_CONV_DIRECT_H
#define NETSPEC_CONV_DIRECT_H

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#endif

typedef float ns_v8 __attribute__((vector_size(32)));
typedef float ns_v8u __attribute__((vector_size(32), aligned(4)));   /* unaligned access */

#define NS_LANES 16    /* filters per block: two ns_v8 */
#define NS_TILE_MAX 6  /* output pixels per register tile: 12 accumulators (7 measured slower: spills) */

static inline ns_v8 ns_load(const float *p) { return *(const ns_v8u *)p; }
static inline ns_v8 ns_splat(float v) { ns_v8 r = {v, v, v, v, v, v, v, v}; return r; }

static int ns_threads(int requested, long work_items) {
    int t = requested < 1 ? 1 : requested;
    return work_items < t ? (int)(work_items > 0 ? work_items : 1) : t;
}

/* Copy one (C, H, W) sample into a zero-padded (C, H + 2*ph, W + 2*pw) buffer. */
static void ns_pad_sample(const float *x, float *xp, int C, int H, int W, int ph, int pw) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    memset(xp, 0, sizeof(float) * (size_t)C * Hp * Wp);
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++)
            memcpy(xp + ((size_t)c * Hp + h + ph) * Wp + pw, x + ((size_t)c * H + h) * W, sizeof(float) * W);
}

/* The tile width (4..6 output pixels) with the best expected throughput on a row of OW
 * pixels: lanes used (OW / covered) times the measured relative speed of a full tile of
 * that width (narrower tiles load a weight for fewer FMAs). 28, 24, 16 -> 6; 14, 10 -> 5; 8 -> 4. */
static int ns_tile_for(int OW) {
    static const float speed[3] = {0.85f, 0.95f, 1.0f};   /* widths 4, 5, 6 */
    int best = 6;
    float best_score = 0.0f;
    for (int t = 4; t <= NS_TILE_MAX; t++) {
        const int covered = (OW + t - 1) / t * t;
        const float score = speed[t - 4] * (float)OW / (float)covered;
        if (score >= best_score) { best = t; best_score = score; }
    }
    return best;
}

/* One row of output pixels (oh, ow0 .. ow0+count-1) for the 16 filters of block fb, with T
 * pixels per tile; T is a constant after inlining, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void
ns_forward_tile(const float *xp, const float *wt, const float *bias16, float *out_n,
                int C, int Hp, int Wp, int kh, int kw, int s, int Fp, int F,
                int OH, int OW, int fb, int oh, int ow0, int count, const int T) {
    ns_v8 acc[NS_TILE_MAX][2];
    for (int t = 0; t < T; t++) { acc[t][0] = ns_load(bias16); acc[t][1] = ns_load(bias16 + 8); }
    for (int c = 0; c < C; c++) {
        for (int i = 0; i < kh; i++) {
            const float *row = xp + ((size_t)c * Hp + (size_t)oh * s + i) * Wp + (size_t)ow0 * s;
            const float *w = wt + ((size_t)(c * kh + i) * kw) * Fp + (size_t)fb * NS_LANES;
            for (int j = 0; j < kw; j++, w += Fp) {
                const ns_v8 w0 = ns_load(w), w1 = ns_load(w + 8);
                for (int t = 0; t < T; t++) {
                    const ns_v8 xv = ns_splat(row[t * s + j]);
                    acc[t][0] += xv * w0;
                    acc[t][1] += xv * w1;
                }
            }
        }
    }
    float tmp[NS_TILE_MAX][NS_LANES];
    memcpy(tmp, acc, sizeof(float) * NS_LANES * T);
    const int f0 = fb * NS_LANES;
    const int nf = F - f0 < NS_LANES ? F - f0 : NS_LANES;
    for (int l = 0; l < nf; l++) {
        float *o = out_n + ((size_t)(f0 + l) * OH + oh) * OW + ow0;
        for (int t = 0; t < count; t++) o[t] = tmp[t][l];
    }
}

/* out (N, F, OH, OW) = conv(x (N, C, H, W), weights wt [C][kh][kw][Fp]) + bias (Fp floats, may be
 * all zeros); padding ph, pw; stride s. Threads own whole samples. Returns 0, or -1 if out of memory. */
static int ns_conv_forward(const float *x, const float *wt, const float *bias, float *out,
                           int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                           int s, int ph, int pw, int OH, int OW, int nthreads) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    /* slack after the last row: a partial tile reads (but never uses) up to NS_TILE_MAX*s + kw values past it */
    const size_t xp_len = (size_t)C * Hp * Wp + (size_t)NS_TILE_MAX * s + kw + 16;
    const int T = ns_tile_for(OW);
    int failed = 0;
    #pragma omp parallel num_threads(ns_threads(nthreads, N)) reduction(|:failed)
    {
        float *xp = (float *)malloc(sizeof(float) * xp_len);
        if (!xp) failed = 1;
        else memset(xp + (size_t)C * Hp * Wp, 0, sizeof(float) * (xp_len - (size_t)C * Hp * Wp));
        #pragma omp for schedule(static)   /* every thread reaches it, even one whose malloc failed */
        for (int n = 0; n < N; n++) {
            if (!xp) continue;
            ns_pad_sample(x + (size_t)n * C * H * W, xp, C, H, W, ph, pw);
            float *out_n = out + (size_t)n * F * OH * OW;
            for (int fb = 0; fb < Fp / NS_LANES; fb++)
                for (int oh = 0; oh < OH; oh++)
                    for (int ow0 = 0; ow0 < OW; ow0 += T) {
                        const int count = OW - ow0 < T ? OW - ow0 : T;
                        const float *b16 = bias + (size_t)fb * NS_LANES;
                        switch (T) {  /* one specialised copy per tile width */
                            case 4: ns_forward_tile(xp, wt, b16, out_n, C, Hp, Wp, kh, kw, s, Fp, F, OH, OW, fb, oh, ow0, count, 4); break;
                            case 5: ns_forward_tile(xp, wt, b16, out_n, C, Hp, Wp, kh, kw, s, Fp, F, OH, OW, fb, oh, ow0, count, 5); break;
                            default: ns_forward_tile(xp, wt, b16, out_n, C, Hp, Wp, kh, kw, s, Fp, F, OH, OW, fb, oh, ow0, count, 6); break;
                        }
                    }
        }
        free(xp);
    }
    return failed ? -1 : 0;
}

/* Partial dW of one sample, added into part [C][kh][kw][Fp]: for each (c, i) and filter block,
 * KW accumulator pairs (one per kernel column) walk over every output pixel. */
static inline void ns_dw_rows(const float *xp, const float *dt, float *part, int C, int Hp, int Wp,
                              int kh, const int KW, int s, int Fp, int OH, int OW) {
    for (int c = 0; c < C; c++)
        for (int i = 0; i < kh; i++)
            for (int fb = 0; fb < Fp / NS_LANES; fb++) {
                ns_v8 acc[8][2];
                for (int j = 0; j < KW; j++) { acc[j][0] = ns_splat(0.0f); acc[j][1] = ns_splat(0.0f); }
                for (int oh = 0; oh < OH; oh++) {
                    const float *row = xp + ((size_t)c * Hp + (size_t)oh * s + i) * Wp;
                    const float *d = dt + (size_t)oh * OW * Fp + (size_t)fb * NS_LANES;
                    for (int ow = 0; ow < OW; ow++, d += Fp) {
                        const ns_v8 d0 = ns_load(d), d1 = ns_load(d + 8);
                        const float *xr = row + (size_t)ow * s;
                        for (int j = 0; j < KW; j++) {
                            const ns_v8 xv = ns_splat(xr[j]);
                            acc[j][0] += xv * d0;
                            acc[j][1] += xv * d1;
                        }
                    }
                }
                float *p = part + ((size_t)(c * kh + i) * KW) * Fp + (size_t)fb * NS_LANES;
                for (int j = 0; j < KW; j++, p += Fp) {
                    *(ns_v8u *)p = ns_load(p) + acc[j][0];
                    *(ns_v8u *)(p + 8) = ns_load(p + 8) + acc[j][1];
                }
            }
}

/* dW [C][kh][kw][Fp] (zeroed by the caller) = sum over samples of dout (N, F, OH, OW) times
 * the padded input windows. kw <= 8. Returns 0, or -1 if out of memory. */
static int ns_conv_backward_weights(const float *x, const float *dout, float *dw,
                                    int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                                    int s, int ph, int pw, int OH, int OW, int nthreads) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t wlen = (size_t)C * kh * kw * Fp;
    const int nt = ns_threads(nthreads, N);
    float *parts = (float *)calloc((size_t)nt * wlen, sizeof(float));
    if (!parts) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(nt) reduction(|:failed)
    {
#ifdef _OPENMP
        float *part = parts + (size_t)omp_get_thread_num() * wlen;
#else
        float *part = parts;
#endif
        float *xp = (float *)malloc(sizeof(float) * ((size_t)C * Hp * Wp + 16));
        float *dt = (float *)malloc(sizeof(float) * ((size_t)OH * OW * Fp + 16));
        if (!xp || !dt) failed = 1;
        #pragma omp for schedule(static)   /* every thread reaches it, even one whose malloc failed */
        for (int n = 0; n < N; n++) {
            if (!xp || !dt) continue;
            {
                ns_pad_sample(x + (size_t)n * C * H * W, xp, C, H, W, ph, pw);
                const float *d = dout + (size_t)n * F * OH * OW;
                memset(dt, 0, sizeof(float) * (size_t)OH * OW * Fp);
                for (int f = 0; f < F; f++)
                    for (int p = 0; p < OH * OW; p++) dt[(size_t)p * Fp + f] = d[(size_t)f * OH * OW + p];
                switch (kw) {  /* a constant KW lets the compiler keep the accumulators in registers */
                    case 1: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, 1, s, Fp, OH, OW); break;
                    case 2: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, 2, s, Fp, OH, OW); break;
                    case 3: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, 3, s, Fp, OH, OW); break;
                    case 4: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, 4, s, Fp, OH, OW); break;
                    case 5: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, 5, s, Fp, OH, OW); break;
                    default: ns_dw_rows(xp, dt, part, C, Hp, Wp, kh, kw, s, Fp, OH, OW); break;
                }
            }
        }
        free(xp);
        free(dt);
    }
    if (!failed)
        for (int t = 0; t < nt; t++)
            for (size_t k = 0; k < wlen; k++) dw[k] += parts[(size_t)t * wlen + k];
    free(parts);
    return failed ? -1 : 0;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
