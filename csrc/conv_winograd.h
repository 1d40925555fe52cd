/* Winograd F(2x2, 3x3) float32 convolution for netspec (AVX-512 build only).
 *
 * Why. A stride-1 3x3 convolution computes each 2x2 block of output pixels from a 4x4
 * block of input with 36 multiplies per (input channel, filter) pair the direct way.
 * Winograd's minimal filtering algorithm does it with 16: the 4x4 input tile d and the 3x3
 * filter g are each transformed into 4x4 "Winograd space",
 *     V = B^T d B,  U = G g G^T,
 * the 16 positions are multiplied element by element and summed over input channels,
 *     M[xi] = sum_c U[xi][c] * V[xi][c]          (xi = 0..15: 16 independent GEMMs)
 * and the sum is transformed back to the 2x2 output, Y = A^T M A, with
 *     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *     G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *     A^T = [1 1 1 0; 0 1 -1 -1].
 * (In one dimension: y0 = m0+m1+m2, y1 = m1-m2-m3 with m0 = (d0-d2) g0,
 * m1 = (d1+d2)(g0+g1+g2)/2, m2 = (d2-d1)(g0-g1+g2)/2, m3 = (d1-d3) g2, which expands to
 * y0 = d0 g0 + d1 g1 + d2 g2 and y1 = d1 g0 + d2 g1 + d3 g2: the cross-correlation a
 * convolution layer computes.) The multiplies drop by 36/16 = 2.25x; an output whose side
 * is odd computes a partly unused last tile (7x7 outputs: 4x4 tiles = 8x8 pixels, 1.72x).
 * The transforms add and subtract only (and halve, for the filters), so the error stays
 * within a few units of float32 rounding of the sum of |terms|, as the tests check.
 *
 * Layout, per sample and thread (threads own whole samples, as in the direct kernels):
 *   xt [Hp][Wp][Cp]  the sample zero-padded, channels last (Cp = C rounded up to 16), so a
 *                    4x4 tile of 16 channels is 16 vector loads;
 *   vt [16][Pp][Cp]  V of every tile (P tiles, Pp rounded up to whole GEMM tiles, the rest 0);
 *   u  [16][C][Fp]   U, filters in lanes (made once per call, or once for a fixed model);
 *   m  [16][T][16V]  one GEMM tile's M, transformed back while it is in L1;
 *   yt [OH*OW][Fp]   the sample's output, channels last, transposed to NCHW with the bias.
 * The GEMM tile is the direct kernels': T tiles x V registers of 16 filters, T*V <= 28
 * accumulators, the V weight vectors loaded once per channel and each tile's V value a
 * broadcast; (V, T) are chosen as there, by the share of real tiles times
 * min(1, accumulators / 12).
 */
#ifndef NETSPEC_CONV_WINOGRAD_H
#define NETSPEC_CONV_WINOGRAD_H

#include "conv_direct.h"

#ifdef __AVX512F__
#define NS_HAS_WINOGRAD 1

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast", "no-predictive-commoning")
#endif

#define NSW_ACC_MAX 28

/* U [16][C][Fp] from filters g (F, C, 3, 3), lanes F .. Fp-1 zero: U = G g G^T per (f, c),
 * 16 filters at a time (their 9 taps gathered into vectors, then transformed in registers). */
static void nsw_filter_transform(const float *g, float *u, int F, int C, int Fp) {
    for (int c = 0; c < C; c++)
        for (int f0 = 0; f0 < Fp; f0 += 16) {
            float taps[9][16] __attribute__((aligned(64)));
            for (int l = 0; l < 16; l++) {
                const float *k = g + ((size_t)(f0 + l) * C + c) * 9;
                for (int q = 0; q < 9; q++) taps[q][l] = f0 + l < F ? k[q] : 0.0f;
            }
            ns_v16 k[3][3], t[4][3];
            for (int q = 0; q < 9; q++) k[q / 3][q % 3] = *(const ns_v16 *)taps[q];
            for (int j = 0; j < 3; j++) {   /* G g: rows of the filter combined */
                t[0][j] = k[0][j];
                t[1][j] = 0.5f * (k[0][j] + k[1][j] + k[2][j]);
                t[2][j] = 0.5f * (k[0][j] - k[1][j] + k[2][j]);
                t[3][j] = k[2][j];
            }
            for (int i = 0; i < 4; i++) {   /* (G g) G^T: columns combined */
                const ns_v16 r[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                     0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (int j = 0; j < 4; j++) *(ns_v16u *)(u + ((size_t)(i * 4 + j) * C + c) * Fp + f0) = r[j];
            }
        }
}

/* One sample x (C, H, W) into xt [Hp][Wp][Cp] at row and column offset pad: blocks of 16
 * channels x 16 pixels transposed in registers. Positions not written keep what the caller
 * zeroed (the border and channels C .. Cp-1). */
static void nsw_to_hwc(const float *x, float *xt, int C, int H, int W, int Wp, int Cp, int pad) {
    const int P = H * W;
    for (int c0 = 0; c0 < Cp; c0 += 16)
        for (int p0 = 0; p0 < P; p0 += 16) {
            __m512 m[16];
            const int np = ns512_load_transposed(x, C, P, c0, p0, m);
            int h = p0 / W, w = p0 % W;   /* pixel p0 + l, stepped along: no division per pixel */
            for (int l = 0; l < np; l++) {
                _mm512_storeu_ps(xt + ((size_t)(h + pad) * Wp + w + pad) * Cp + c0, m[l]);
                if (++w == W) {
                    w = 0;
                    h++;
                }
            }
        }
}

/* vt [16][Pp][Cp] = B^T d B of every 4x4 tile d of xt (tile (ty, tx) starts at row 2ty,
 * column 2tx), 16 channels at a time. */
static void nsw_input_transform(const float *xt, float *vt, int TH, int TW, int Wp, int Cp, int Pp) {
    const size_t xi_stride = (size_t)Pp * Cp;
    for (int ty = 0; ty < TH; ty++)
        for (int tx = 0; tx < TW; tx++) {
            const int p = ty * TW + tx;
            for (int c0 = 0; c0 < Cp; c0 += 16) {
                ns_v16 d[4][4], t[4][4];
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++)
                        d[i][j] = ns512_load(xt + ((size_t)(2 * ty + i) * Wp + 2 * tx + j) * Cp + c0);
                for (int j = 0; j < 4; j++) {   /* B^T d: rows */
                    t[0][j] = d[0][j] - d[2][j];
                    t[1][j] = d[1][j] + d[2][j];
                    t[2][j] = d[2][j] - d[1][j];
                    t[3][j] = d[1][j] - d[3][j];
                }
                float *o = vt + (size_t)p * Cp + c0;
                for (int i = 0; i < 4; i++) {   /* (B^T d) B: columns */
                    *(ns_v16u *)(o + (size_t)(4 * i + 0) * xi_stride) = t[i][0] - t[i][2];
                    *(ns_v16u *)(o + (size_t)(4 * i + 1) * xi_stride) = t[i][1] + t[i][2];
                    *(ns_v16u *)(o + (size_t)(4 * i + 2) * xi_stride) = t[i][2] - t[i][1];
                    *(ns_v16u *)(o + (size_t)(4 * i + 3) * xi_stride) = t[i][1] - t[i][3];
                }
            }
        }
}

/* One register tile of the Winograd products: for r < R and v < V,
 *     out[r][16v .. 16v+15] (+)= sum over k < K of a[r*sa + k*sk] * b[k*ldb + 16v .. 16v+15],
 * out's rows ldo apart, overwritten (add = 0) or added to (add = 1). R broadcasts and V vector
 * loads per k feed R*V accumulators; V and R are constants after inlining. The forward runs it
 * with r over tiles and k over channels (M = V U), the weight gradient with r over channels and
 * k over tiles (M += V^T Z). */
static inline __attribute__((always_inline)) void
nsw_outer_tile(const float *a, size_t sa, size_t sk, const float *b, size_t ldb, int K,
               float *out, size_t ldo, int add, const int V, const int R) {
    ns_v16 acc[NSW_ACC_MAX];
#pragma GCC unroll 28
    for (int i = 0; i < R * V; i++) acc[i] = (ns_v16){0};
    for (int k = 0; k < K; k++) {
        ns_v16 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) bv[v] = ns512_load(b + (size_t)k * ldb + 16 * v);
#pragma GCC unroll 28
        for (int r = 0; r < R; r++) {
            const float xs = a[(size_t)r * sa + (size_t)k * sk];
#pragma GCC unroll 4
            for (int v = 0; v < V; v++) acc[r * V + v] += xs * bv[v];
        }
    }
#pragma GCC unroll 28
    for (int i = 0; i < R * V; i++) {
        float *q = out + (size_t)(i / V) * ldo + 16 * (i % V);
        *(ns_v16u *)q = add ? ns512_load(q) + acc[i] : acc[i];
    }
}

/* The GEMM tile shapes compiled, X(V, T), T*V <= 28. */
#define NSW_TILES(X) \
    X(1, 4) X(1, 6) X(1, 8) X(1, 9) X(1, 12) X(1, 14) X(1, 16) X(1, 20) X(1, 24) X(1, 28) \
    X(2, 4) X(2, 5) X(2, 6) X(2, 7) X(2, 8) X(2, 9) X(2, 10) X(2, 12) X(2, 14) \
    X(4, 2) X(4, 3) X(4, 4) X(4, 5) X(4, 6) X(4, 7)

static void nsw_gemm_dispatch(const float *vt, const float *u, float *m, int C, int Cp, int Fp, int V, int T) {
#define NSW_CASE(v, t) case (v) * 32 + (t): nsw_outer_tile(vt, Cp, 1, u, Fp, C, m, Fp, 0, v, t); break;
    switch (V * 32 + T) { NSW_TILES(NSW_CASE) default: break; }
#undef NSW_CASE
}

/* T (tiles per GEMM tile) for V registers of filters over P tiles: the best share of real
 * tiles times min(1, accumulators / 12), the larger on a tie. */
static int nsw_plan(int V, int P) {
    int best_t = 4;
    float best = -1.0f;
#define NSW_CONSIDER(v, t) if ((v) == V) { \
        const float real = (float)P / (float)(((P + (t) - 1) / (t)) * (t)); \
        const float acc = (float)((t) * V), score = real * (acc >= 12.0f ? 1.0f : acc / 12.0f); \
        if (score > best + 1e-6f || (score > best - 1e-6f && (t) > best_t)) { best = score; best_t = (t); } }
    NSW_TILES(NSW_CONSIDER)
#undef NSW_CONSIDER
    return best_t;
}

/* yt [OH*OW][Fp] = A^T M A of the P tiles of one sample, whose M is m [16][Pp][Fp] from
 * row p0; only pixels inside the OH x OW output are written. */
static void nsw_output_transform(const float *m, float *yt, int p0, int P, int Pp, int TW, int OH, int OW, int Fp) {
    const size_t xi_stride = (size_t)Pp * Fp;
    for (int p = 0; p < P; p++) {
        const int ty = p / TW, tx = p % TW;
        for (int f0 = 0; f0 < Fp; f0 += 16) {
            const float *q = m + (size_t)(p0 + p) * Fp + f0;
            ns_v16 s[4][4], r[2][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) s[i][j] = ns512_load(q + (size_t)(4 * i + j) * xi_stride);
            for (int j = 0; j < 4; j++) {   /* A^T M: rows */
                r[0][j] = s[0][j] + s[1][j] + s[2][j];
                r[1][j] = s[1][j] - s[2][j] - s[3][j];
            }
            for (int a = 0; a < 2; a++) {   /* (A^T M) A: columns */
                const int oh = 2 * ty + a;
                if (oh >= OH) break;
                const ns_v16 y0 = r[a][0] + r[a][1] + r[a][2], y1 = r[a][1] - r[a][2] - r[a][3];
                float *o = yt + ((size_t)oh * OW + 2 * tx) * Fp + f0;
                *(ns_v16u *)o = y0;
                if (2 * tx + 1 < OW) *(ns_v16u *)(o + Fp) = y1;
            }
        }
    }
}

/* For a conv whose output a 2x2 stride-2 max pool reads (fused into it): yt [PH*PW][Fp] = the pool
 * of the sample's output, each tile being one pool window (tiles start at even pixels; those of a
 * ragged last row or column are dropped, as the pool drops them). Each of the four pixels gets the
 * bias, then the pool's max and with relu the ReLU (ns512_pool4: the bits of the unfused conv,
 * ReLU and pool, but for the sign of a NaN). */
static void nsw_output_transform_pool(const float *m, float *yt, int p0, int Pp, int TW, int PH, int PW, int Fp,
                                      const float *bias, int relu) {
    const size_t xi_stride = (size_t)Pp * Fp;
    for (int ty = 0; ty < PH; ty++)
        for (int tx = 0; tx < PW; tx++)
            for (int f0 = 0; f0 < Fp; f0 += 16) {
                const float *q = m + (size_t)(p0 + ty * TW + tx) * Fp + f0;
                const __m512 b = _mm512_loadu_ps(bias + f0);
                ns_v16 s[4][4], r[2][4];
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++) s[i][j] = ns512_load(q + (size_t)(4 * i + j) * xi_stride);
                for (int j = 0; j < 4; j++) {
                    r[0][j] = s[0][j] + s[1][j] + s[2][j];
                    r[1][j] = s[1][j] - s[2][j] - s[3][j];
                }
                __m512 y[4];
                for (int a = 0; a < 2; a++) {
                    y[2 * a] = _mm512_add_ps((__m512)(r[a][0] + r[a][1] + r[a][2]), b);
                    y[2 * a + 1] = _mm512_add_ps((__m512)(r[a][1] - r[a][2] - r[a][3]), b);
                }
                _mm512_storeu_ps(yt + ((size_t)ty * PW + tx) * Fp + f0, ns512_pool4(y[0], y[1], y[2], y[3], relu));
            }
}

/* out_n [F][P] = yt [P][Fp] transposed, plus bias[f] (Fp floats; NULL: none), then plus res_n
 * [F][P] (NULL: none) and with relu the ReLU: ns_epilogue's operations, in registers. */
static void nsw_from_hwc(const float *yt, const float *bias, float *out_n, int F, int Fp, int P,
                         const float *res_n, int relu) {
    const __m512 zero = _mm512_setzero_ps();
    for (int f0 = 0; f0 < F; f0 += 16)
        for (int p0 = 0; p0 < P; p0 += 16) {
            const int np = P - p0 < 16 ? P - p0 : 16;
            const __mmask16 mask = (__mmask16)((1u << np) - 1);
            __m512 m[16];
            for (int l = 0; l < 16; l++)
                m[l] = l < np ? _mm512_loadu_ps(yt + (size_t)(p0 + l) * Fp + f0) : _mm512_setzero_ps();
            ns512_transpose16(m);
            const int nf = F - f0 < 16 ? F - f0 : 16;
            for (int l = 0; l < nf; l++) {
                const size_t at = (size_t)(f0 + l) * P + p0;
                __m512 v = bias ? _mm512_add_ps(m[l], _mm512_set1_ps(bias[f0 + l])) : m[l];
                if (res_n) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res_n + at));
                if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LE_OQ), v, zero);
                _mm512_mask_storeu_ps(out_n + at, mask, v);
            }
        }
}

/* A thread transforms NSW_GROUP_TILES tiles or more at a time (whole samples, see nsw_geometry):
 * each weight vector a GEMM tile loads then serves more tiles, and U is read once per group
 * instead of once per sample (resnet_fashion's 128-filter layer has 4 tiles a sample, and its
 * U is 1 MB). */
#define NSW_GROUP_TILES 32

typedef struct {
    int OH, OW, TH, TW, P, Hp, Wp, Cp;
    int threads, groups, S, Pp;   /* groups of at most S samples: group k is samples k*N/groups .. */
    int T[3];   /* GEMM tile widths for V = 1, 2, 4 */
    size_t xt_len, vt_len, m_len, yt_len;
} nsw_geometry_t;

/* The buffers and tiles of a C -> F convolution of N H x W inputs with padding pad on up to
 * nthreads threads: groups of about NSW_GROUP_TILES tiles, as many for each thread. */
static nsw_geometry_t nsw_geometry(int C, int H, int W, int F, int pad, int N, int nthreads) {
    nsw_geometry_t g;
    g.OH = H + 2 * pad - 2; g.OW = W + 2 * pad - 2;
    g.TH = (g.OH + 1) / 2; g.TW = (g.OW + 1) / 2; g.P = g.TH * g.TW;
    g.Hp = 2 * g.TH + 2; g.Wp = 2 * g.TW + 2; g.Cp = (C + 15) / 16 * 16;
    const int Fp = (F + 15) / 16 * 16;
    g.threads = ns_threads(nthreads, N);
    const int want = (NSW_GROUP_TILES + g.P - 1) / g.P;          /* samples a group should have */
    const int per_thread = (N + g.threads - 1) / g.threads;
    g.groups = g.threads * ((per_thread + want - 1) / want);
    if (g.groups > N) g.groups = N > 0 ? N : 1;
    g.S = (N + g.groups - 1) / g.groups;
    if (g.S < 1) g.S = 1;
    int Tmax = 0;
    for (int k = 0; k < 3; k++) { g.T[k] = nsw_plan(1 << k, g.S * g.P); if (g.T[k] > Tmax) Tmax = g.T[k]; }
    g.Pp = (g.S * g.P + Tmax - 1) / Tmax * Tmax;   /* every planned T's last GEMM tile stays inside */
    g.xt_len = (size_t)g.Hp * g.Wp * g.Cp;
    g.vt_len = 16 * (size_t)g.Pp * g.Cp;
    g.m_len = 16 * (size_t)g.Pp * Fp;
    g.yt_len = (size_t)g.OH * g.OW * Fp;
    return g;
}

/* Floats of all threads' buffers (xt, vt, m, yt) for N samples on up to nthreads threads; the
 * memory plan counts the same. */
static size_t nsw_workspace_floats(int C, int H, int W, int F, int pad, int N, int nthreads) {
    const nsw_geometry_t g = nsw_geometry(C, H, W, F, pad, N, nthreads);
    return (size_t)g.threads * (g.xt_len + g.vt_len + g.m_len + g.yt_len);
}

/* out (N, F, OH, OW) = the stride-1 3x3 convolution of x (N, C, H, W), padding pad on every
 * side, with U [16][C][Fp] (nsw_filter_transform) and bias (Fp floats), then per sample the
 * residual (may be NULL) and the ReLU, as ns_conv_forward; with pool (and no residual), out is
 * (N, F, OH/2, OW/2): the 2x2 stride-2 max pool of that (nsw_output_transform_pool). work: nsw_workspace_floats floats
 * (64-byte aligned) for the threads' buffers, or NULL to allocate them here. Returns 0, or -1
 * if out of memory. */
static int nsw_conv_forward(const float *x, const float *u, const float *bias, float *out,
                            int N, int C, int H, int W, int F, int Fp, int pad, int nthreads,
                            const float *residual, int relu, int pool, float *work) {
    const nsw_geometry_t g = nsw_geometry(C, H, W, F, pad, N, nthreads);
    const int PH = g.OH / 2, PW = g.OW / 2;
    const size_t per_thread = g.xt_len + g.vt_len + g.m_len + g.yt_len;   /* a multiple of 16 */
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(g.threads) reduction(|:failed)
    {
        float *buf = work ? ns_thread_slice(work, per_thread) : ns_alloc64(per_thread, 0);
        float *xt = buf, *vt = buf + g.xt_len, *m = vt + g.vt_len, *yt = m + g.m_len;
        if (!buf) failed = 1;
        else {   /* tiles past the samples: 0, never garbage; xt's border and channels C .. Cp-1 are
                  * never written (nsw_to_hwc), so they stay 0 for every sample after this */
            memset(vt, 0, sizeof(float) * g.vt_len);
            memset(xt, 0, sizeof(float) * g.xt_len);
        }
        #pragma omp for schedule(dynamic, 1) nowait   /* every thread reaches it, even one whose allocation failed */
        for (int grp = 0; grp < g.groups; grp++) {
            if (!buf) continue;
            const int n0 = (int)((long)grp * N / g.groups), ns = (int)((long)(grp + 1) * N / g.groups) - n0;
            for (int s = 0; s < ns; s++) {
                nsw_to_hwc(x + (size_t)(n0 + s) * C * H * W, xt, C, H, W, g.Wp, g.Cp, pad);
                nsw_input_transform(xt, vt + (size_t)s * g.P * g.Cp, g.TH, g.TW, g.Wp, g.Cp, g.Pp);
            }
            const int tiles = ns * g.P;
            for (int xi = 0; xi < 16; xi++)   /* U[xi] stays in cache over the group's tiles */
                for (int f0 = 0; f0 < Fp;) {
                    const int k = Fp - f0 >= 64 ? 2 : Fp - f0 >= 32 ? 1 : 0, V = 1 << k, T = g.T[k];
                    for (int p0 = 0; p0 < tiles; p0 += T)
                        nsw_gemm_dispatch(vt + ((size_t)xi * g.Pp + p0) * g.Cp, u + (size_t)xi * C * Fp + f0,
                                          m + ((size_t)xi * g.Pp + p0) * Fp + f0, C, g.Cp, Fp, V, T);
                    f0 += 16 * V;
                }
            for (int s = 0; s < ns && pool; s++) {
                nsw_output_transform_pool(m, yt, s * g.P, g.Pp, g.TW, PH, PW, Fp, bias, relu);
                nsw_from_hwc(yt, NULL, out + (size_t)(n0 + s) * F * PH * PW, F, Fp, PH * PW, NULL, 0);
            }
            for (int s = 0; s < ns && !pool; s++) {
                float *out_n = out + (size_t)(n0 + s) * F * g.OH * g.OW;
                nsw_output_transform(m, yt, s * g.P, g.P, g.Pp, g.TW, g.OH, g.OW, Fp);
                nsw_from_hwc(yt, bias, out_n, F, Fp, g.OH * g.OW,
                             residual ? residual + (size_t)(n0 + s) * F * g.OH * g.OW : NULL, relu);
            }
        }
        if (!work) free(buf);
        ns_team_done(&done);
    }
    return failed ? -1 : 0;
}

/* ---- the weight gradient: F(3x3, 2x2) in the same Winograd space ----------------------
 *
 * The forward is y = A^T [(G g G^T) . (B^T d B)] A, linear in g; its transpose gives the
 * gradient of the filter: dg = G^T [(B^T d B) . (A dy A^T)] G, where dy is the 2x2 block of
 * d/d(output) the tile produced (0 past the output's edge). Summed over every tile of every
 * sample, in Winograd space first:
 *     M[xi][c][f] = sum_tiles V[xi][tile][c] * Z[xi][tile][f],   Z = A dy A^T,
 *     dW[f][c] = G^T M[.][c][f] G                                  (once, at the end).
 * In one dimension, A dy = (dy0, dy0 + dy1, dy0 - dy1, -dy1) and G^T = [1 1/2 1/2 0;
 * 0 1/2 -1/2 0; 0 1/2 1/2 1]. The products: a register tile of R channels x V registers of
 * 16 filters walks over a group's tiles (one broadcast of V and V loads of Z per tile), then
 * adds into the thread's partial M; the partials are summed in thread order at the end, and a
 * thread's groups are fixed (static schedule), so the result repeats from run to run. */

#define NSW_DW_GROUP_TILES 96

/* The dW tile shapes compiled, X(V, R): R channels (a divisor of 16, or 16 itself) x V registers
 * of filters (nsw_outer_tile with r over channels, k over a group's tiles). */
#define NSW_DW_TILES(X) X(1, 16) X(2, 8) X(4, 4)

static void nsw_dw_dispatch(const float *vt, const float *zt, float *part, int K, int Cp, int Fp, int V) {
#define NSW_DW_CASE(v, r) case v: for (int c0 = 0; c0 < Cp; c0 += r) \
        nsw_outer_tile(vt + c0, 1, Cp, zt, Fp, K, part + (size_t)c0 * Fp, Fp, 1, v, r); break;
    switch (V) { NSW_DW_TILES(NSW_DW_CASE) default: break; }
#undef NSW_DW_CASE
}

/* zt [16][Pp][Fp] rows from p0: Z = A dy A^T of each 2x2 block of dyt [2TH][2TW][Fp] (a sample's
 * d/d(output), channels last, 0 past the output's edge). */
static void nsw_dout_transform(const float *dyt, float *zt, int p0, int TH, int TW, int Fp, int Pp) {
    const size_t xi_stride = (size_t)Pp * Fp;
    for (int ty = 0; ty < TH; ty++)
        for (int tx = 0; tx < TW; tx++) {
            float *o = zt + (size_t)(p0 + ty * TW + tx) * Fp;
            const float *d = dyt + ((size_t)(2 * ty) * 2 * TW + 2 * tx) * Fp;
            for (int f0 = 0; f0 < Fp; f0 += 16) {
                const ns_v16 d00 = ns512_load(d + f0), d01 = ns512_load(d + Fp + f0);
                const ns_v16 d10 = ns512_load(d + (size_t)2 * TW * Fp + f0), d11 = ns512_load(d + (size_t)(2 * TW + 1) * Fp + f0);
                const ns_v16 r[4][2] = {{d00, d01}, {d00 + d10, d01 + d11}, {d00 - d10, d01 - d11}, {-d10, -d11}};
                for (int i = 0; i < 4; i++) {
                    *(ns_v16u *)(o + (size_t)(4 * i + 0) * xi_stride + f0) = r[i][0];
                    *(ns_v16u *)(o + (size_t)(4 * i + 1) * xi_stride + f0) = r[i][0] + r[i][1];
                    *(ns_v16u *)(o + (size_t)(4 * i + 2) * xi_stride + f0) = r[i][0] - r[i][1];
                    *(ns_v16u *)(o + (size_t)(4 * i + 3) * xi_stride + f0) = -r[i][1];
                }
            }
        }
}

/* dw [C][3][3][Fp] (zeroed by the caller) = the weight gradient of the stride-1 3x3 convolution
 * of x (N, C, H, W), padding pad, from dout (N, F, OH, OW). Returns 0, or -1 if out of memory. */
static int nsw_conv_backward_weights(const float *x, const float *dout, float *dw,
                                     int N, int C, int H, int W, int F, int Fp, int pad, int nthreads) {
    const int OH = H + 2 * pad - 2, OW = W + 2 * pad - 2;
    const int TH = (OH + 1) / 2, TW = (OW + 1) / 2, P = TH * TW;
    const int Hp = 2 * TH + 2, Wp = 2 * TW + 2, Cp = (C + 15) / 16 * 16;
    const int S = (NSW_DW_GROUP_TILES + P - 1) / P, groups = (N + S - 1) / S;
    const int nt = ns_threads(nthreads, groups);
    const int V = Fp % 64 == 0 ? 4 : Fp % 32 == 0 ? 2 : 1;
    const size_t Pp = (size_t)S * P;
    const size_t xt_len = (size_t)Hp * Wp * Cp, vt_len = 16 * Pp * Cp, dy_len = (size_t)4 * TH * TW * Fp;
    const size_t zt_len = 16 * Pp * Fp, m_len = 16 * (size_t)Cp * Fp;
    float *parts = ns_alloc64((size_t)nt * m_len, 1);
    if (!parts) return -1;
    int failed = 0, done = 0;
    #pragma omp parallel num_threads(nt) reduction(|:failed)
    {
        float *part = ns_thread_slice(parts, m_len);
        float *buf = ns_alloc64(xt_len + vt_len + dy_len + zt_len, 0);
        float *xt = buf, *vt = buf + xt_len, *dyt = vt + vt_len, *zt = dyt + dy_len;
        if (!buf) failed = 1;
        else {   /* the borders nsw_to_hwc never writes: 0 for every sample */
            memset(xt, 0, sizeof(float) * xt_len);
            memset(dyt, 0, sizeof(float) * dy_len);
        }
        #pragma omp for schedule(static) nowait   /* fixed groups per thread: the float32 sums repeat */
        for (int grp = 0; grp < groups; grp++) {
            if (!buf) continue;
            const int n0 = grp * S, ns = N - n0 < S ? N - n0 : S;
            for (int s = 0; s < ns; s++) {
                nsw_to_hwc(x + (size_t)(n0 + s) * C * H * W, xt, C, H, W, Wp, Cp, pad);
                nsw_input_transform(xt, vt + (size_t)s * P * Cp, TH, TW, Wp, Cp, (int)Pp);
                nsw_to_hwc(dout + (size_t)(n0 + s) * F * OH * OW, dyt, F, OH, OW, 2 * TW, Fp, 0);
                nsw_dout_transform(dyt, zt, s * P, TH, TW, Fp, (int)Pp);
            }
            for (int xi = 0; xi < 16; xi++)
                for (int f0 = 0; f0 < Fp; f0 += 16 * V)
                    nsw_dw_dispatch(vt + (size_t)xi * Pp * Cp, zt + (size_t)xi * Pp * Fp + f0,
                                    part + (size_t)xi * Cp * Fp + f0, ns * P, Cp, Fp, V);
        }
        free(buf);
        ns_team_done(&done);
    }
    if (!failed) {
        for (int t = 1; t < nt; t++)
            for (size_t k = 0; k < m_len; k++) parts[k] += parts[(size_t)t * m_len + k];
        for (int c = 0; c < C; c++)   /* dW = G^T M G, 16 filters at a time */
            for (int f0 = 0; f0 < Fp; f0 += 16) {
                ns_v16 m[4][4], t[3][4];
                for (int q = 0; q < 16; q++) m[q / 4][q % 4] = ns512_load(parts + ((size_t)q * Cp + c) * Fp + f0);
                for (int j = 0; j < 4; j++) {
                    t[0][j] = m[0][j] + 0.5f * (m[1][j] + m[2][j]);
                    t[1][j] = 0.5f * (m[1][j] - m[2][j]);
                    t[2][j] = 0.5f * (m[1][j] + m[2][j]) + m[3][j];
                }
                for (int i = 0; i < 3; i++) {
                    float *o = dw + ((size_t)c * 9 + 3 * i) * Fp + f0;
                    *(ns_v16u *)o = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
                    *(ns_v16u *)(o + Fp) = 0.5f * (t[i][1] - t[i][2]);
                    *(ns_v16u *)(o + 2 * Fp) = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
                }
            }
    }
    free(parts);
    return failed ? -1 : 0;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#else   /* no AVX-512: the direct kernels serve every convolution */
#define NS_HAS_WINOGRAD 0
static void nsw_filter_transform(const float *g, float *u, int F, int C, int Fp) { (void)g; (void)u; (void)F; (void)C; (void)Fp; }
static size_t nsw_workspace_floats(int C, int H, int W, int F, int pad, int N, int nthreads) {
    (void)C; (void)H; (void)W; (void)F; (void)pad; (void)N; (void)nthreads; return 0;
}
static int nsw_conv_forward(const float *x, const float *u, const float *bias, float *out,
                            int N, int C, int H, int W, int F, int Fp, int pad, int nthreads,
                            const float *residual, int relu, int pool, float *work) {
    (void)x; (void)u; (void)bias; (void)out; (void)N; (void)C; (void)H; (void)W; (void)F; (void)Fp;
    (void)pad; (void)nthreads; (void)residual; (void)relu; (void)pool; (void)work;
    return -2;
}
static int nsw_conv_backward_weights(const float *x, const float *dout, float *dw,
                                     int N, int C, int H, int W, int F, int Fp, int pad, int nthreads) {
    (void)x; (void)dout; (void)dw; (void)N; (void)C; (void)H; (void)W; (void)F; (void)Fp; (void)pad; (void)nthreads;
    return -2;
}
#endif  /* __AVX512F__ */

#endif
