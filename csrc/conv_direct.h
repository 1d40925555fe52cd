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
 * SSE2 in the baseline build and AVX2+FMA in the AVX2 build. The AVX-512 build
 * (where __AVX512F__ is defined) replaces both kernels with the 512-bit versions
 * of the section further down, whose tiles are sized for 32 registers; its header
 * comment gives the tile shapes and the measurements behind them. With GCC,
 * contraction to FMA is allowed in this file only (the pragma below; the rest of
 * the module keeps products and sums separately rounded, as the numpy reference
 * does). Other compilers build these loops without contraction: separate
 * multiplies and adds, the same results within the float tolerance, slower.
 */
#ifndef NETSPEC_CONV_DIRECT_H
#define NETSPEC_CONV_DIRECT_H

#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#include "team.h"   /* ns_team_done */

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

/* This thread's slice of len floats in base (one slice per thread of the team). */
static inline float *ns_thread_slice(float *base, size_t len) {
#ifdef _OPENMP
    return base + (size_t)omp_get_thread_num() * len;
#else
    (void)len;
    return base;
#endif
}

/* n floats starting on a 64-byte boundary (a cache line: 16-float vector loads of them never
 * straddle two lines), zeroed if zero; free() releases them. NULL if out of memory. */
static float *ns_alloc64(size_t n, int zero) {
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = (float *)aligned_alloc(64, bytes > 0 ? bytes : 64);
    if (p && zero) memset(p, 0, bytes);
    return p;
}

static int ns_threads(int requested, long work_items) {
    int t = requested < 1 ? 1 : requested;
    return work_items < t ? (int)(work_items > 0 ? work_items : 1) : t;
}

/* The end of a fused node, on one sample's output while it is still in cache: the residual
 * added (r may be NULL), then the ReLU (0 where the value is <= 0; NaN stays NaN), the same
 * operations in the same order as the add and ReLU kernels they replace. */
static void ns_epilogue(float *o, const float *r, size_t n, int relu) {
    if (r)
        for (size_t k = 0; k < n; k++) o[k] = o[k] + r[k];
    if (relu)
        for (size_t k = 0; k < n; k++) o[k] = o[k] <= 0.0f ? 0.0f : o[k];
}

/* o (planes, H/2, W/2) = the 2x2, stride-2 max pool of y (planes, H, W) (a ragged last row or
 * column dropped), then with relu the ReLU (<= 0 -> 0, NaN stays NaN: the same bits as the ReLU
 * before the pool, the ReLU being monotonic): the pool kernel's own arithmetic, the largest of the
 * four values taken by the same chain of selects, or (v0 + v1) + (v2 + v3) when one is NaN. For a
 * conv whose output is pooled (a pass fused the pool into it), on each sample's output while it
 * is in cache. The AVX-512 build does 16 outputs at a time (the even and odd columns of two rows
 * gathered by permutes); the plain loop measured 10% of simple_convnet's predict. */
static inline float ns_pool4(float v0, float v1, float v2, float v3, int relu) {
    const int nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3);
    float best = v0 > v1 ? v0 : v1;
    best = v2 > best ? v2 : best;
    best = v3 > best ? v3 : best;
    best = nan ? (v0 + v1) + (v2 + v3) : best;
    return relu && best <= 0.0f ? 0.0f : best;
}

#ifdef __AVX512F__
/* ns_pool4 on 16 windows at once: v0, v1 the top row's values, v2, v3 the bottom row's. */
static inline __m512 ns512_pool4(__m512 v0, __m512 v1, __m512 v2, __m512 v3, int relu) {
    const __mmask16 nan = _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q)
                        | _mm512_cmp_ps_mask(v2, v2, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v3, v3, _CMP_UNORD_Q);
    __m512 best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v0, v1, _CMP_GT_OQ), v1, v0);
    best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v2, best, _CMP_GT_OQ), best, v2);
    best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v3, best, _CMP_GT_OQ), best, v3);
    best = _mm512_mask_blend_ps(nan, best, _mm512_add_ps(_mm512_add_ps(v0, v1), _mm512_add_ps(v2, v3)));
    if (relu) best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(best, _mm512_setzero_ps(), _CMP_LE_OQ), best,
                                          _mm512_setzero_ps());
    return best;
}
#endif

static void ns_maxpool2x2(const float *y, float *o, int planes, int H, int W, int relu) {
    const int PH = H / 2, PW = W / 2;
#ifdef __AVX512F__
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
#endif
    for (int c = 0; c < planes; c++)
        for (int ph = 0; ph < PH; ph++) {
            const float *r0 = y + ((size_t)c * H + 2 * ph) * W, *r1 = r0 + W;
            float *out = o + ((size_t)c * PH + ph) * PW;
            int pw = 0;
#ifdef __AVX512F__
            for (; pw < PW; pw += 16) {
                const int n = PW - pw < 16 ? PW - pw : 16;     /* outputs; 2n inputs of each row */
                const __mmask16 m_out = (__mmask16)((1u << n) - 1);
                const __mmask16 m_lo = (__mmask16)(2 * n >= 16 ? 0xFFFF : (1u << (2 * n)) - 1);
                const __mmask16 m_hi = (__mmask16)(2 * n <= 16 ? 0 : (1u << (2 * n - 16)) - 1);
                const __m512 a0 = _mm512_maskz_loadu_ps(m_lo, r0 + 2 * pw), a1 = _mm512_maskz_loadu_ps(m_hi, r0 + 2 * pw + 16);
                const __m512 b0 = _mm512_maskz_loadu_ps(m_lo, r1 + 2 * pw), b1 = _mm512_maskz_loadu_ps(m_hi, r1 + 2 * pw + 16);
                const __m512 v0 = _mm512_permutex2var_ps(a0, even, a1), v1 = _mm512_permutex2var_ps(a0, odd, a1);
                const __m512 v2 = _mm512_permutex2var_ps(b0, even, b1), v3 = _mm512_permutex2var_ps(b0, odd, b1);
                _mm512_mask_storeu_ps(out + pw, m_out, ns512_pool4(v0, v1, v2, v3, relu));
            }
#endif
            for (; pw < PW; pw++)
                out[pw] = ns_pool4(r0[2 * pw], r0[2 * pw + 1], r1[2 * pw], r1[2 * pw + 1], relu);
        }
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

/* ---- AVX-512 (compiled only where __AVX512F__ is defined: the _avx512 variant) ----------
 *
 * The same design with 512-bit registers: 16 filters per register and 32 registers, so a
 * register tile holds up to NS512_ACC_MAX = 28 accumulators, leaving room for the weight
 * vectors of a step (the broadcast input value is an FMA memory operand). A forward tile is
 * V registers of filters (V = 4, 2 or 1: 64, 32 or 16 filters, the widest the remaining
 * filters fill) x R output rows x T output pixels, R*T*V <= 28. Measured on Zen 4 (one
 * core, batch 100, the options of a layer timed in turn in one process, min of 11 runs on
 * a busy shared machine; the best reach 90-104 GFLOP/s, the core's FMA peak as numpy's
 * sgemm measures it, 97-102):
 *   - 64 filters on 7x7: V=4 x 7 pixels 104 GFLOP/s, V=2 x 7 96, V=2 x 2 rows x 7 89 (its
 *     fourth row pair is half empty); on 4x4, V=4 x 4 93, V=2 x 2x4 90, V=2 x 4 76;
 *   - 16 filters on 28 wide: one tile of 28 pixels 90, two of 14 93 (equal within noise);
 *     32 filters on 14x14: V=2 x 14 96, V=1 x 2x14 93, V=2 x 7 91;
 *   - 7 pixels x V=1 (7 accumulators) 76 against 4 rows x 7 88: a tile needs at least
 *     about 12 accumulators to hide the FMA latency.
 * So ns512_plan scores each tile shape of a menu by the share of its computed pixels that
 * are real (a partial last tile computes garbage it does not store) times min(1, acc/12),
 * and prefers the larger tile on a tie. The AVX2 path above stores a tile one float at a
 * time; here each group of 16 pixels is transposed in registers (64 shuffles) and written
 * with one masked store per filter and row: with 1 input channel (a first layer) the scalar
 * stores cost more than the FMAs (1->16 channels on 28x28: 0.78 ms -> 0.34 ms).
 *
 * The weight gradient keeps a tile of KI kernel rows x KW kernel columns x V filter
 * registers in registers while it walks over every output pixel: V is the widest whose
 * tile holds all kernel rows (3x3: V=2, 18 accumulators; 5x5: V=1, 25; 1x1: V=4, 4). The
 * 3x3 options (V=1 x 3 rows, V=2 x 3 rows, V=4 x 2 rows) measured within 8% of each other
 * at 77-98 GFLOP/s; fewer rows per tile is slower (16->16 on 28x28: 3 rows 91, 1 row 60).
 * dout is transposed to [pixel][filter] 16x16 in registers too (the scalar transpose
 * was most of a first layer's dW: 1->16 on 28x28, 1.26 ms -> 0.36 ms).
 *
 * GCC's predictive commoning (-O3) keeps the input values one kernel column reuses from
 * the last in rotating temporaries, which with 28 accumulators spill to the stack: 55
 * instead of 92 GFLOP/s. It is turned off for this section.
 */
#ifdef __AVX512F__
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-predictive-commoning")
#endif

typedef float ns_v16 __attribute__((vector_size(64)));
typedef float ns_v16u __attribute__((vector_size(64), aligned(4)));   /* unaligned access */

#define NS512_ACC_MAX 28   /* accumulators of a tile; with the weights, at most 32 zmm registers */
#define NS512_R_MAX 4      /* output rows of a forward tile */
#define NS512_T_MAX 28     /* output pixels of a forward tile row */

static inline ns_v16 ns512_load(const float *p) { return *(const ns_v16u *)p; }

/* Transpose 16 vectors of 16 floats in registers: m[i][j] becomes m[j][i]. */
static inline __attribute__((always_inline)) void ns512_transpose16(__m512 m[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {   /* t[2i], t[2i+1]: rows 2i and 2i+1 interleaved */
        t[2 * i] = _mm512_unpacklo_ps(m[2 * i], m[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(m[2 * i], m[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {   /* m[4g+k], 128-bit lane q: column 4q+k of rows 4g .. 4g+3 */
        m[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        m[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        m[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        m[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {   /* gather lane q of m[k], m[4+k], m[8+k], m[12+k]: column 4q+k */
        const __m512 a0 = _mm512_shuffle_f32x4(m[k], m[4 + k], 0x88), a1 = _mm512_shuffle_f32x4(m[k], m[4 + k], 0xDD);
        const __m512 b0 = _mm512_shuffle_f32x4(m[8 + k], m[12 + k], 0x88), b1 = _mm512_shuffle_f32x4(m[8 + k], m[12 + k], 0xDD);
        t[k] = _mm512_shuffle_f32x4(a0, b0, 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(a1, b1, 0x88);
        t[8 + k] = _mm512_shuffle_f32x4(a0, b0, 0xDD);
        t[12 + k] = _mm512_shuffle_f32x4(a1, b1, 0xDD);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) m[i] = t[i];
}

/* Store a forward tile: acc[(r*T + t)*V + v] holds filters f0+16v .. f0+16v+15 (lanes) of pixel
 * (oh0 + r, ow0 + t). Each group of 16 pixels is transposed so that a register holds one filter's
 * pixels, then written with masked stores: only rows < rows, pixels < count and filters < F. */
static inline __attribute__((always_inline)) void
ns512_store_tile(const ns_v16 *acc, float *out_n, int F, int OH, int OW, int f0, int oh0, int ow0,
                 int rows, int count, const int V, const int R, const int T) {
    const size_t plane = (size_t)OH * OW;
#pragma GCC unroll 2
    for (int g = 0; g < (R * T + 15) / 16; g++)        /* pixels 16g .. 16g+15 of the tile */
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) {
            const int nf = F - f0 - 16 * v < 16 ? F - f0 - 16 * v : 16;
            if (nf <= 0) break;
            __m512 m[16];
#pragma GCC unroll 16
            for (int l = 0; l < 16; l++)
                m[l] = 16 * g + l < R * T ? (__m512)acc[(16 * g + l) * V + v] : _mm512_setzero_ps();
            ns512_transpose16(m);                       /* m[l]: filter f0+16v+l, lanes = pixels */
            for (int r = 16 * g / T; r < R && r * T < 16 * g + 16 && r < rows; r++) {
                const int lo = r * T > 16 * g ? r * T - 16 * g : 0;   /* lanes of row r: [lo, hi) */
                const int hi = r * T + count - 16 * g < 16 ? r * T + count - 16 * g : 16;
                if (hi <= lo) continue;
                const __mmask16 mask = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
                /* lane l is pixel t = 16g + l - rT of row r; T <= OW keeps this inside the plane */
                float *o = out_n + (size_t)(f0 + 16 * v) * plane + (size_t)(oh0 + r) * OW + ow0 + 16 * g - r * T;
                for (int l = 0; l < nf; l++) _mm512_mask_storeu_ps(o + (size_t)l * plane, mask, m[l]);
            }
        }
}

/* Forward: one tile of R output rows x T output pixels for the 16*V filters from f0 (bias
 * included). V, R, T and the stride S are constants after inlining, so the R*T*V accumulators
 * stay in registers. rows <= R and count <= T are how many of them are real. */
static inline __attribute__((always_inline)) void
ns512_forward_tile(const float *xp, const float *wt, const float *bias, float *out_n,
                   int C, int Hp, int Wp, int kh, int kw, int Fp, int F, int OH, int OW,
                   int f0, int oh0, int ow0, int rows, int count,
                   const int V, const int R, const int T, const int S, const int POOL, int relu) {
    ns_v16 acc[NS512_ACC_MAX];
#pragma GCC unroll 28
    for (int a = 0; a < R * T * V; a++) acc[a] = ns512_load(bias + f0 + 16 * (a % V));
    const size_t rstep = (size_t)S * Wp;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < kh; i++) {
            const float *row = xp + ((size_t)c * Hp + (size_t)oh0 * S + i) * Wp + (size_t)ow0 * S;
            const float *w = wt + ((size_t)(c * kh + i) * kw) * Fp + f0;
            for (int j = 0; j < kw; j++, w += Fp, row++) {
                ns_v16 wv[4];
#pragma GCC unroll 4
                for (int v = 0; v < V; v++) wv[v] = ns512_load(w + 16 * v);
#pragma GCC unroll 28
                for (int p = 0; p < R * T; p++) {
                    const float xs = row[(size_t)(p / T) * rstep + (size_t)(p % T) * S];  /* broadcast */
#pragma GCC unroll 4
                    for (int v = 0; v < V; v++) acc[p * V + v] += xs * wv[v];
                }
            }
        }
    if (POOL) {   /* see ns512_pooled_sample */
#pragma GCC unroll 14
        for (int q = 0; q < (R / 2) * (T / 2); q++)
#pragma GCC unroll 2
            for (int v = 0; v < V; v++) {
                const int a = (2 * (q / (T / 2)) * T + 2 * (q % (T / 2))) * V + v;
                const __m512 v0 = (__m512)acc[a], v1 = (__m512)acc[a + V];
                const __m512 v2 = (__m512)acc[a + T * V], v3 = (__m512)acc[a + T * V + V];
                acc[q * V + v] = (ns_v16)ns512_pool4(v0, v1, v2, v3, relu);
            }
        ns512_store_tile(acc, out_n, F, OH / 2, OW / 2, f0, oh0 / 2, ow0 / 2, rows / 2, count / 2, V, R / 2, T / 2);
    } else {
        ns512_store_tile(acc, out_n, F, OH, OW, f0, oh0, ow0, rows, count, V, R, T);
    }
}

/* The forward tile shapes compiled, X(V, R, T) (each for strides 1 and 2); ns512_plan picks
 * among them. T >= 4: rows under 4 pixels wide get a partly empty one-row tile. */
#define NS512_FWD_TILES(X, S) \
    X(1, 1, 4, S) X(1, 1, 5, S) X(1, 1, 6, S) X(1, 1, 7, S) X(1, 1, 8, S) X(1, 1, 10, S) \
    X(1, 1, 12, S) X(1, 1, 14, S) X(1, 1, 16, S) X(1, 1, 20, S) X(1, 1, 24, S) X(1, 1, 28, S) \
    X(1, 2, 4, S) X(1, 2, 5, S) X(1, 2, 6, S) X(1, 2, 7, S) X(1, 2, 8, S) X(1, 2, 10, S) \
    X(1, 2, 12, S) X(1, 2, 14, S) X(1, 4, 4, S) X(1, 4, 5, S) X(1, 4, 6, S) X(1, 4, 7, S) \
    X(2, 1, 4, S) X(2, 1, 5, S) X(2, 1, 6, S) X(2, 1, 7, S) X(2, 1, 8, S) X(2, 1, 10, S) \
    X(2, 1, 12, S) X(2, 1, 14, S) X(2, 2, 4, S) X(2, 2, 5, S) X(2, 2, 6, S) X(2, 2, 7, S) \
    X(4, 1, 4, S) X(4, 1, 5, S) X(4, 1, 6, S) X(4, 1, 7, S)
#define NS512_KEY(V, A, B) (((V) * 32 + (A)) * 32 + (B))

/* The tile (R rows x T pixels) for a block of 16*V filters over an OH x OW output: the largest
 * share of real pixels times min(1, accumulators / 12), the larger tile on a tie (see above).
 * Several rows only when T <= OW, so that a row of the tile lies within its output row. */
static void ns512_plan(int V, int OH, int OW, int *R, int *T) {
#define NS512_PLAN_OPTION(v, r, t, S) if (v == V) consider(r, t);
    float best = -1.0f;
    *R = 1; *T = 4;
#define consider(r, t) do { \
        const int rr = (r) > OH ? OH : (r);   /* more rows than the image has: never better */ \
        const float real = (float)OH * OW / ((float)((OH + rr - 1) / rr) * rr * ((OW + (t) - 1) / (t)) * (t)); \
        const float acc = (float)(rr * (t) * V), score = real * (acc >= 12.0f ? 1.0f : acc / 12.0f); \
        if (rr == (r) && (rr == 1 || (t) <= OW) && (score > best + 1e-6f || (score > best - 1e-6f && rr * (t) > *R * *T))) { \
            best = score; *R = rr; *T = (t); } \
    } while (0)
    NS512_FWD_TILES(NS512_PLAN_OPTION, 1)
#undef consider
#undef NS512_PLAN_OPTION
}

/* One tile, through the compiled shape (V, R, T) for stride s (1 or 2). */
static void ns512_forward_dispatch(const float *xp, const float *wt, const float *bias, float *out_n,
                                   int C, int Hp, int Wp, int kh, int kw, int Fp, int F, int OH, int OW,
                                   int f0, int oh0, int ow0, int rows, int count, int V, int R, int T, int s) {
#define NS512_FWD_CASE(v, r, t, S) case NS512_KEY(v, r, t): \
    ns512_forward_tile(xp, wt, bias, out_n, C, Hp, Wp, kh, kw, Fp, F, OH, OW, f0, oh0, ow0, rows, count, v, r, t, S, 0, 0); break;
    if (s == 1) { switch (NS512_KEY(V, R, T)) { NS512_FWD_TILES(NS512_FWD_CASE, 1) default: break; } }
    else { switch (NS512_KEY(V, R, T)) { NS512_FWD_TILES(NS512_FWD_CASE, 2) default: break; } }
#undef NS512_FWD_CASE
}

/* A stride-1 conv whose output a 2x2 stride-2 max pool reads (fused) pools inside its register
 * tiles: a tile of an even number of rows and pixels, starting at an even row and pixel, holds
 * whole pool windows, so each window's four accumulators (filters in lanes) become one by the
 * pool's select chain (NaN: the sum of the four), the ReLU follows (the same bits as before the
 * pool: it is monotonic), and only the pooled pixels are transposed and stored. No unpooled value
 * reaches memory. The tile shapes (V, R, T) with R and T even; at most 32 filters a block (V <= 2:
 * 64 filters would need 32 accumulators). */
#define NS512_POOL_TILES(X) \
    X(1, 2, 4) X(1, 2, 6) X(1, 2, 8) X(1, 2, 10) X(1, 2, 12) X(1, 2, 14) X(1, 4, 4) X(1, 4, 6) \
    X(2, 2, 4) X(2, 2, 6)

/* ns512_plan's choice among the pooled tiles (real share of pooled pixels times min(1, acc/12)). */
static void ns512_pool_plan(int V, int OH, int OW, int *R, int *T) {
    const int PH = OH / 2, PW = OW / 2;
    float best = -1.0f;
    *R = 2; *T = 4;
#define NS512_POOL_OPTION(v, r, t) \
    if (v == V && (t) / 2 <= PW && (r) / 2 <= PH) { \
        const int r2 = (r) / 2, t2 = (t) / 2; \
        const float real = (float)PH * PW / ((float)((PH + r2 - 1) / r2) * r2 * ((PW + t2 - 1) / t2) * t2); \
        const float acc = (float)((r) * (t) * V), score = real * (acc >= 12.0f ? 1.0f : acc / 12.0f); \
        if (score > best + 1e-6f || (score > best - 1e-6f && (r) * (t) > *R * *T)) { best = score; *R = (r); *T = (t); } \
    }
    NS512_POOL_TILES(NS512_POOL_OPTION)
#undef NS512_POOL_OPTION
}

static void ns512_pool_dispatch(const float *xp, const float *wt, const float *bias, float *out_n,
                                int C, int Hp, int Wp, int kh, int kw, int Fp, int F, int OH, int OW,
                                int f0, int oh0, int ow0, int rows, int count, int V, int R, int T, int relu) {
#define NS512_POOL_CASE(v, r, t) case NS512_KEY(v, r, t): \
    ns512_forward_tile(xp, wt, bias, out_n, C, Hp, Wp, kh, kw, Fp, F, OH, OW, f0, oh0, ow0, rows, count, v, r, t, 1, 1, relu); break;
    switch (NS512_KEY(V, R, T)) { NS512_POOL_TILES(NS512_POOL_CASE) default: break; }
#undef NS512_POOL_CASE
}

/* One sample of a stride-1 conv with its pool (and ReLU) in the tiles: out_n is (F, OH/2, OW/2). */
static void ns512_pooled_sample(const float *xp, const float *wt, const float *bias, float *out_n, int C, int Hp,
                                int Wp, int kh, int kw, int Fp, int F, int OH, int OW, const int plan[2][2], int relu) {
    const int PH2 = OH / 2 * 2, PW2 = OW / 2 * 2;   /* the rows and columns the pool reads */
    for (int f0 = 0; f0 < Fp;) {
        const int k = Fp - f0 >= 32 ? 1 : 0, V = 1 << k, R = plan[k][0], T = plan[k][1];
        for (int oh0 = 0; oh0 < PH2; oh0 += R)
            for (int ow0 = 0; ow0 < PW2; ow0 += T)
                ns512_pool_dispatch(xp, wt, bias, out_n, C, Hp, Wp, kh, kw, Fp, F, OH, OW, f0, oh0, ow0,
                                    PH2 - oh0 < R ? PH2 - oh0 : R, PW2 - ow0 < T ? PW2 - ow0 : T, V, R, T, relu);
        f0 += 16 * V;
    }
}

/* ns_conv_forward for strides 1 and 2 (same arguments and result). */
static int ns512_conv_forward(const float *x, const float *wt, const float *bias, float *out,
                              int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                              int s, int ph, int pw, int OH, int OW, int nthreads,
                              const float *residual, int relu, float *pool) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t full = (size_t)F * OH * OW, out_len = pool ? (size_t)F * (OH / 2) * (OW / 2) : full;
    /* slack after the last row: a tile may read up to R-1 rows past the last output row, and a
     * partial (or wider than the row) tile up to T*s + kw values past the row's end */
    const size_t xp_len = (size_t)C * Hp * Wp + (size_t)NS512_R_MAX * s * Wp + (size_t)NS512_T_MAX * s + kw + 16;
    int plan[3][2];   /* (R, T) for V = 1, 2, 4 */
    for (int k = 0; k < 3; k++) ns512_plan(1 << k, OH, OW, &plan[k][0], &plan[k][1]);
    /* a pool after a stride-1 conv (no residual) runs in the tiles (ns512_pooled_sample) */
    const int in_tiles = pool && s == 1 && !residual && OH >= 2 && OW >= 2;
    int pool_plan[2][2];
    for (int k = 0; k < 2 && in_tiles; k++) ns512_pool_plan(1 << k, OH, OW, &pool_plan[k][0], &pool_plan[k][1]);
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(ns_threads(nthreads, N)) reduction(|:failed)
    {
        float *xp = (float *)malloc(sizeof(float) * xp_len);
        if (!xp) failed = 1;
        else memset(xp + (size_t)C * Hp * Wp, 0, sizeof(float) * (xp_len - (size_t)C * Hp * Wp));
        #pragma omp for schedule(dynamic, 1) nowait   /* every thread reaches it, even one whose malloc failed; samples are handed out one at a time, so a thread slowed by another process takes fewer */
        for (int n = 0; n < N; n++) {
            if (!xp) continue;
            ns_pad_sample(x + (size_t)n * C * H * W, xp, C, H, W, ph, pw);
            /* pooled: the conv output goes to the thread's slice of pool, the pool to out */
            if (in_tiles) {
                ns512_pooled_sample(xp, wt, bias, out + (size_t)n * out_len, C, Hp, Wp, kh, kw, Fp, F, OH, OW,
                                    (const int (*)[2])pool_plan, relu);
                continue;
            }
            float *out_n = pool ? ns_thread_slice(pool, full) : out + (size_t)n * out_len;
            for (int f0 = 0; f0 < Fp;) {
                const int k = Fp - f0 >= 64 ? 2 : Fp - f0 >= 32 ? 1 : 0, V = 1 << k;
                const int R = plan[k][0], T = plan[k][1];
                for (int oh0 = 0; oh0 < OH; oh0 += R)
                    for (int ow0 = 0; ow0 < OW; ow0 += T)
                        ns512_forward_dispatch(xp, wt, bias, out_n, C, Hp, Wp, kh, kw, Fp, F, OH, OW, f0, oh0, ow0,
                                               OH - oh0 < R ? OH - oh0 : R, OW - ow0 < T ? OW - ow0 : T, V, R, T, s);
                f0 += 16 * V;
            }
            /* pooled: the ReLU after the pool, on a quarter of the values (the same bits) */
            if (residual || (relu && !pool))
                ns_epilogue(out_n, residual ? residual + (size_t)n * F * OH * OW : NULL, (size_t)F * OH * OW,
                            relu && !pool);
            if (pool)
                ns_maxpool2x2(out_n, out + (size_t)n * out_len, F, OH, OW, relu);
        }
        free(xp);
        ns_team_done(&done);
    }
    return failed ? -1 : 0;
}

/* m[l] = column p0 + l of d (rows x P), over rows r0 .. r0+15 (0 past the last row or column):
 * a 16x16 block loaded (masked at the last columns) and transposed in registers. Returns how many
 * of the 16 columns exist. */
static inline int ns512_load_transposed(const float *d, int rows, int P, int r0, int p0, __m512 m[16]) {
    const int np = P - p0 < 16 ? P - p0 : 16;
    const __mmask16 mask = (__mmask16)((1u << np) - 1);
    for (int l = 0; l < 16; l++)
        m[l] = r0 + l < rows ? _mm512_maskz_loadu_ps(mask, d + (size_t)(r0 + l) * P + p0) : _mm512_setzero_ps();
    ns512_transpose16(m);
    return np;
}

/* dt [P][Fp] = one sample's d (F, P) transposed, filters F .. Fp-1 zero: blocks of 16 filters x
 * 16 pixels are transposed in registers (masked loads at the last pixels). */
static void ns512_transpose_dout(const float *d, float *dt, int F, int Fp, int P) {
    for (int f0 = 0; f0 < Fp; f0 += 16)
        for (int p0 = 0; p0 < P; p0 += 16) {
            __m512 m[16];
            const int np = ns512_load_transposed(d, F, P, f0, p0, m);
            for (int l = 0; l < np; l++) _mm512_storeu_ps(dt + (size_t)(p0 + l) * Fp + f0, m[l]);
        }
}

/* dW of channel c, kernel rows i0 .. i0+KI-1 (all KW columns), filters f0 .. f0+16V-1, from one
 * sample, added into part [C][kh][KW][Fp]: KI*KW*V accumulators walk over every output pixel. */
static inline __attribute__((always_inline)) void
ns512_dw_tile(const float *xp, const float *dt, float *part, int c, int i0, int f0, int Hp, int Wp,
              int kh, int s, int Fp, int OH, int OW, const int V, const int KI, const int KW) {
    ns_v16 acc[NS512_ACC_MAX];
#pragma GCC unroll 28
    for (int a = 0; a < KI * KW * V; a++) acc[a] = (ns_v16){0};
    for (int oh = 0; oh < OH; oh++) {
        const float *xr = xp + ((size_t)c * Hp + (size_t)oh * s + i0) * Wp;
        const float *d = dt + (size_t)oh * OW * Fp + f0;
        for (int ow = 0; ow < OW; ow++, d += Fp, xr += s) {
            ns_v16 dv[4];
#pragma GCC unroll 4
            for (int v = 0; v < V; v++) dv[v] = ns512_load(d + 16 * v);
#pragma GCC unroll 28
            for (int q = 0; q < KI * KW; q++) {
                const float xs = xr[(size_t)(q / KW) * Wp + q % KW];   /* broadcast */
#pragma GCC unroll 4
                for (int v = 0; v < V; v++) acc[q * V + v] += xs * dv[v];
            }
        }
    }
#pragma GCC unroll 28
    for (int a = 0; a < KI * KW * V; a++) {
        float *p = part + ((size_t)(c * kh + i0 + a / V / KW) * KW + a / V % KW) * Fp + f0 + 16 * (a % V);
        *(ns_v16u *)p = ns512_load(p) + acc[a];
    }
}

/* The dW tile shapes compiled, X(V, KI, KW): for each kernel width, up to 5 kernel rows and
 * KI*KW*V <= 28 accumulators. */
#define NS512_DW_KI5(X, V, KW) X(V, 1, KW) X(V, 2, KW) X(V, 3, KW) X(V, 4, KW) X(V, 5, KW)
#define NS512_DW_TILES(X) \
    NS512_DW_KI5(X, 1, 1) NS512_DW_KI5(X, 1, 2) NS512_DW_KI5(X, 1, 3) NS512_DW_KI5(X, 1, 4) \
    NS512_DW_KI5(X, 1, 5) X(1, 1, 6) X(1, 2, 6) X(1, 3, 6) X(1, 4, 6) X(1, 1, 7) X(1, 2, 7) \
    X(1, 3, 7) X(1, 4, 7) X(1, 1, 8) X(1, 2, 8) X(1, 3, 8) \
    NS512_DW_KI5(X, 2, 1) NS512_DW_KI5(X, 2, 2) X(2, 1, 3) X(2, 2, 3) X(2, 3, 3) X(2, 4, 3) \
    X(2, 1, 4) X(2, 2, 4) X(2, 3, 4) X(2, 1, 5) X(2, 2, 5) X(2, 1, 6) X(2, 2, 6) X(2, 1, 7) \
    X(2, 2, 7) X(2, 1, 8) \
    NS512_DW_KI5(X, 4, 1) X(4, 1, 2) X(4, 2, 2) X(4, 3, 2) X(4, 1, 3) X(4, 2, 3) X(4, 1, 4) \
    X(4, 1, 5) X(4, 1, 6) X(4, 1, 7)

static void ns512_dw_dispatch(const float *xp, const float *dt, float *part, int c, int i0, int f0, int Hp, int Wp,
                              int kh, int s, int Fp, int OH, int OW, int V, int KI, int KW) {
#define NS512_DW_CASE(v, ki, kw_) case NS512_KEY(v, ki, kw_): \
    ns512_dw_tile(xp, dt, part, c, i0, f0, Hp, Wp, kh, s, Fp, OH, OW, v, ki, kw_); break;
    switch (NS512_KEY(V, KI, KW)) { NS512_DW_TILES(NS512_DW_CASE) default: break; }
#undef NS512_DW_CASE
}

/* ns_conv_backward_weights for kw <= 8 (same arguments and result). */
static int ns512_conv_backward_weights(const float *x, const float *dout, float *dw,
                                       int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                                       int s, int ph, int pw, int OH, int OW, int nthreads) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t wlen = (size_t)C * kh * kw * Fp;
    const int nt = ns_threads(nthreads, N);
    /* kernel rows per tile: at most 5, and KI*kw*V <= NS512_ACC_MAX (V = 1 always fits: kw <= 8) */
    int ki[3];
    for (int k = 0; k < 3; k++) {
        ki[k] = NS512_ACC_MAX / (kw << k);
        if (ki[k] > 5) ki[k] = 5;
        if (ki[k] > kh) ki[k] = kh;
    }
    float *parts = ns_alloc64((size_t)nt * wlen, 1);
    if (!parts) return -1;
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(nt) reduction(|:failed)
    {
        float *part = ns_thread_slice(parts, wlen);
        float *xp = (float *)malloc(sizeof(float) * ((size_t)C * Hp * Wp + 16));
        float *dt = ns_alloc64((size_t)OH * OW * Fp + 16, 0);
        if (!xp || !dt) failed = 1;
        #pragma omp for schedule(static) nowait   /* every thread reaches it, even one whose malloc failed; static, not
                                              dynamic: which samples a thread sums into its partial dW must not vary
                                              from run to run, or float32 sums (and so training) would not repeat */
        for (int n = 0; n < N; n++) {
            if (!xp || !dt) continue;
            ns_pad_sample(x + (size_t)n * C * H * W, xp, C, H, W, ph, pw);
            ns512_transpose_dout(dout + (size_t)n * F * OH * OW, dt, F, Fp, OH * OW);
            for (int f0 = 0; f0 < Fp;) {
                /* the widest filter block whose tile still covers as many kernel rows as V = 1 */
                int k = Fp - f0 >= 64 ? 2 : Fp - f0 >= 32 ? 1 : 0;
                while (k > 0 && ki[k] < ki[0]) k--;
                const int V = 1 << k;
                for (int c = 0; c < C; c++)
                    for (int i0 = 0; i0 < kh; i0 += ki[k]) {
                        const int KI = kh - i0 < ki[k] ? kh - i0 : ki[k];
                        ns512_dw_dispatch(xp, dt, part, c, i0, f0, Hp, Wp, kh, s, Fp, OH, OW, V, KI, kw);
                    }
                f0 += 16 * V;
            }
        }
        free(xp);
        free(dt);
        ns_team_done(&done);
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
#endif  /* __AVX512F__ */

/* out (N, F, OH, OW) = conv(x (N, C, H, W), weights wt [C][kh][kw][Fp]) + bias (Fp floats, may be
 * all zeros); padding ph, pw; stride s. Threads own whole samples. Then, per sample (ns_epilogue),
 * residual (N, F, OH, OW; may be NULL, may be out itself) is added and, if relu, the ReLU applied.
 * With pool (NULL: none; else F*OH*OW floats for each of nthreads threads), out is (N, F, OH/2,
 * OW/2): each sample's output, computed in the thread's slice of pool, goes through the 2x2
 * stride-2 max pool (ns_maxpool2x2) into out; residual must then not be out. Returns 0, or -1 if
 * out of memory. */
static int ns_conv_forward(const float *x, const float *wt, const float *bias, float *out,
                           int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                           int s, int ph, int pw, int OH, int OW, int nthreads,
                           const float *residual, int relu, float *pool) {
#ifdef __AVX512F__
    if (s <= 2) return ns512_conv_forward(x, wt, bias, out, N, C, H, W, F, Fp, kh, kw, s, ph, pw, OH, OW, nthreads,
                                          residual, relu, pool);
#endif
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t full = (size_t)F * OH * OW, out_len = pool ? (size_t)F * (OH / 2) * (OW / 2) : full;
    /* slack after the last row: a partial tile reads (but never uses) up to NS_TILE_MAX*s + kw values past it */
    const size_t xp_len = (size_t)C * Hp * Wp + (size_t)NS_TILE_MAX * s + kw + 16;
    const int T = ns_tile_for(OW);
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(ns_threads(nthreads, N)) reduction(|:failed)
    {
        float *xp = (float *)malloc(sizeof(float) * xp_len);
        if (!xp) failed = 1;
        else memset(xp + (size_t)C * Hp * Wp, 0, sizeof(float) * (xp_len - (size_t)C * Hp * Wp));
        #pragma omp for schedule(dynamic, 1) nowait   /* every thread reaches it, even one whose malloc failed; samples are handed out one at a time, so a thread slowed by another process takes fewer */
        for (int n = 0; n < N; n++) {
            if (!xp) continue;
            ns_pad_sample(x + (size_t)n * C * H * W, xp, C, H, W, ph, pw);
            /* pooled: the conv output goes to the thread's slice of pool, the pool to out */
            float *out_n = pool ? ns_thread_slice(pool, full) : out + (size_t)n * out_len;
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
            /* pooled: the ReLU after the pool, on a quarter of the values (the same bits) */
            if (residual || (relu && !pool))
                ns_epilogue(out_n, residual ? residual + (size_t)n * F * OH * OW : NULL, (size_t)F * OH * OW,
                            relu && !pool);
            if (pool)
                ns_maxpool2x2(out_n, out + (size_t)n * out_len, F, OH, OW, relu);
        }
        free(xp);
        ns_team_done(&done);
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
#ifdef __AVX512F__
    if (kw <= 8) return ns512_conv_backward_weights(x, dout, dw, N, C, H, W, F, Fp, kh, kw, s, ph, pw, OH, OW, nthreads);
#endif
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t wlen = (size_t)C * kh * kw * Fp;
    const int nt = ns_threads(nthreads, N);
    float *parts = ns_alloc64((size_t)nt * wlen, 1);
    if (!parts) return -1;
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(nt) reduction(|:failed)
    {
        float *part = ns_thread_slice(parts, wlen);
        float *xp = (float *)malloc(sizeof(float) * ((size_t)C * Hp * Wp + 16));
        float *dt = ns_alloc64((size_t)OH * OW * Fp + 16, 0);
        if (!xp || !dt) failed = 1;
        #pragma omp for schedule(static) nowait   /* every thread reaches it, even one whose malloc failed; static, not
                                              dynamic: which samples a thread sums into its partial dW must not vary
                                              from run to run, or float32 sums (and so training) would not repeat */
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
        ns_team_done(&done);
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
