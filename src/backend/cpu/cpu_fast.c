/* cpu_fast.c - fast CPU kernels except matmul (cpu_matmul.c): embedding, RMSNorm, RoPE,
 * causal GQA attention, SwiGLU and add. OpenMP threads where the work is large enough to
 * pay for a parallel region; AVX2/FMA inner loops when the backend's variant allows,
 * scalar loops otherwise. Same results as cpu_ref.c up to f32 summation order (embedding
 * and RoPE match it bit for bit). */
#include "cpu.h"

#include "cpu_simd.h"

#include <math.h>
#include <omp.h>

/* Elementwise work below this many elements runs on the calling thread. */
#define MC_PAR_MIN ((size_t)1 << 15)

/* Threads for an op of `work` elements: 1 when too small to split. */
static int par_threads(const mc_backend *be, size_t work) {
    const mc_cpu *cpu = be->impl;
    return work >= MC_PAR_MIN ? cpu->n_threads : 1;
}

static bool use_avx2(const mc_backend *be) {
    const mc_cpu *cpu = be->impl;
    return MC_CPU_X86 && cpu->variant == MC_CPU_AVX2;
}

/* ---- embedding ---------------------------------------------------------------------- */

void mc_fast_embedding(mc_backend *be, void *out /* [T, D] */, const int32_t *ids /* [T] */,
                       mc_wt table /* [V, D] */, int T, int D) {
    float *o = out;
    size_t d_ = (size_t)D, es = mc_dtype_size(table.dtype);
#pragma omp parallel for num_threads(par_threads(be, (size_t)T *d_)) schedule(static)
    for (int t = 0; t < T; t++) {
        const void *row = (const char *)table.data + (size_t)ids[t] * d_ * es; /* [D] */
        mc_convert_to_f32(o + (size_t)t * d_, row, table.dtype, d_);
    }
}

/* ---- RMSNorm ------------------------------------------------------------------------ */

/* Sum of squares of x[0..n) in f32 with 8 partial sums. */
static float sumsq_portable(const float *x /* [n] */, size_t n) {
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) s[j] += x[i + j] * x[i + j];
    for (; i < n; i++) s[0] += x[i] * x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* out = (x * r) * w over one row (the Hugging Face order). */
static void scale_row_portable(float *o /* [n] */, const float *x /* [n] */, float r, mc_wt w,
                               size_t n) {
    for (size_t i = 0; i < n; i++) {
        float xn = x[i] * r;
        o[i] = xn * mc_load_f32(w.data, w.dtype, i);
    }
}

#if MC_CPU_X86
static MC_AVX2 float sumsq_avx2(const float *x /* [n] */, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    float s;
    for (; i + 32 <= n; i += 32) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
        a2 = _mm256_fmadd_ps(v2, v2, a2);
        a3 = _mm256_fmadd_ps(v3, v3, a3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(v, v, a0);
    }
    s = mc_hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}

MC_AVX2_INLINE void scale_row_avx2_impl(float *o /* [n] */, const float *x /* [n] */, float r,
                                        const void *w /* [n] */, mc_dtype dt, size_t n) {
    __m256 rv = _mm256_set1_ps(r);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(
            o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv), mc_ld8(w, dt, i)));
    for (; i < n; i++) {
        float xn = x[i] * r;
        o[i] = xn * mc_load_f32(w, dt, i);
    }
}

static MC_AVX2 void scale_row_avx2(float *o /* [n] */, const float *x /* [n] */, float r,
                                   mc_wt w /* [n] */, size_t n) {
    switch (w.dtype) {
    case MC_BF16: scale_row_avx2_impl(o, x, r, w.data, MC_BF16, n); break;
    case MC_F16: scale_row_avx2_impl(o, x, r, w.data, MC_F16, n); break;
    case MC_F32: scale_row_avx2_impl(o, x, r, w.data, MC_F32, n); break;
    }
}
#endif

void mc_fast_rmsnorm(mc_backend *be, void *out /* [T, D] */, const void *x /* [T, D] */,
                     mc_wt w /* [D] */, int T, int D, float eps) {
    float *o = out;
    const float *xs = x;
    size_t d_ = (size_t)D;
    bool avx2 = use_avx2(be);
#pragma omp parallel for num_threads(par_threads(be, (size_t)T *d_)) schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xr = xs + (size_t)t * d_; /* [D] */
        float *orow = o + (size_t)t * d_;      /* [D] */
        float ss, r;
#if MC_CPU_X86
        ss = avx2 ? sumsq_avx2(xr, d_) : sumsq_portable(xr, d_);
#else
        ss = sumsq_portable(xr, d_);
#endif
        r = 1.0f / sqrtf(ss / (float)D + eps);
#if MC_CPU_X86
        if (avx2) {
            scale_row_avx2(orow, xr, r, w, d_);
            continue;
        }
#endif
        scale_row_portable(orow, xr, r, w, d_);
    }
    (void)avx2;
}

/* ---- RoPE --------------------------------------------------------------------------- */

/* Largest head_dim with tables on the stack; larger heads use the reference kernel. */
#define MC_ROPE_MAX_HD 1024

void mc_fast_rope_dir(mc_backend *be, void *x /* [T, ldx] */, int ldx,
                      const int32_t *pos /* [T] */, int T, int H, int hd, float theta, float dir) {
    float *xs = x;
    int half = hd / 2;
    float inv[MC_ROPE_MAX_HD / 2]; /* [half] */
    if (hd > MC_ROPE_MAX_HD) {
        mc_ref_rope_dir(x, ldx, pos, T, H, hd, theta, dir);
        return;
    }
    for (int i = 0; i < half; i++) inv[i] = mc_rope_inv_freq(theta, i, hd);
#pragma omp parallel for num_threads(par_threads(be, (size_t)T *(size_t)H *(size_t)hd * 8)) \
    schedule(static)
    for (int t = 0; t < T; t++) {
        float cs[MC_ROPE_MAX_HD / 2], sn[MC_ROPE_MAX_HD / 2]; /* [half] */
        float p = (float)pos[t];
        for (int i = 0; i < half; i++) {
            float ang = p * inv[i];
            cs[i] = cosf(ang);
            sn[i] = sinf(ang);
        }
        for (int h = 0; h < H; h++) {
            float *xh = xs + (size_t)t * (size_t)ldx + (size_t)h * (size_t)hd; /* [hd] */
            for (int i = 0; i < half; i++) {
                float x1 = xh[i], x2 = xh[i + half];
                float a = x1 * cs[i], b = x2 * sn[i], e = x2 * cs[i], f = x1 * sn[i];
                xh[i] = a - dir * b; /* dir = +1 forward, -1 backward: exact */
                xh[i + half] = e + dir * f;
            }
        }
    }
}

void mc_fast_rope(mc_backend *be, void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */,
                  int T, int H, int hd, float theta) {
    mc_fast_rope_dir(be, x, ldx, pos, T, H, hd, theta, 1.0f);
}

/* ---- attention ---------------------------------------------------------------------- */
/* Work is split into items: one kv head g, up to ATT_ROWS query rows made of nh query
 * heads of its group times ntr consecutive tokens. An item streams the keys and values of
 * g once, in blocks of ATT_BK, with an online (running max) softmax per query row, so it
 * needs no buffer that grows with the context. Items go to OpenMP threads dynamically,
 * those with the most keys (the last tokens) first.
 *
 * The AVX2 kernel puts query rows along the vector lanes: the rows' queries are transposed
 * once per item, a block's scores are FMAs of those columns with broadcast key elements
 * (no transposed copy of K), the softmax of a block runs 8 rows at a time, and each pair of
 * rows accumulates its weighted values with 8-wide FMAs along head_dim. Measured on one
 * Zen 4 core: ~65 GFLOP/s at 2048 tokens (OpenBLAS sgemm: ~100). */

#define ATT_BK 64      /* keys per block */
#define ATT_ROWS 32    /* query rows per item (4 vectors of 8 lanes) */
#define ATT_MAX_HD 256 /* largest head_dim of the AVX2 kernel */
#define ATT_PACK 8192  /* floats of a packed key (value) block: ATT_BK keys of hd <= 128 */

typedef struct att_args {
    float *out;             /* [T, Hq*hd] */
    const float *q, *k, *v; /* [T, Hq*hd], [>= pos0+T, Hkv*hd] x2 */
    int T, pos0, Hq, Hkv, hd;
    size_t qdim, kvdim; /* Hq*hd, Hkv*hd */
    float scale;        /* 1/sqrt(hd) */
} att_args;

/* Folds a block of scores s[0..n) of one row into its running state (max m, denominator l,
 * unnormalised output o[hd]): the scalar version. vblk points at value row j0 of kv head g. */
static void att_fold_portable(const att_args *a, float *o /* [hd] */, float *m, float *l,
                              float *s /* [n] */, int n, const float *vblk /* [n, kvdim] */) {
    float bm = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) bm = s[j] > bm ? s[j] : bm;
    if (bm > *m) {
        float corr = expf(*m - bm);
        *m = bm;
        for (int d = 0; d < a->hd; d++) o[d] *= corr;
        *l *= corr;
    }
    for (int j = 0; j < n; j++) {
        float pj = expf(s[j] - *m);
        const float *vr = vblk + (size_t)j * a->kvdim; /* [hd] */
        sum += pj;
        for (int d = 0; d < a->hd; d++) o[d] += pj * vr[d];
    }
    *l += sum;
}

/* One item, scalar loops: each row on its own. */
static void att_item_portable(const att_args *a, int g, int h0, int nh, int t0, int ntr) {
    float s[ATT_BK];
    for (int hh = h0; hh < h0 + nh; hh++)
        for (int t = t0; t < t0 + ntr; t++) {
            const float *qr = a->q + (size_t)t * a->qdim + (size_t)hh * (size_t)a->hd; /* [hd] */
            float *o = a->out + (size_t)t * a->qdim + (size_t)hh * (size_t)a->hd;      /* [hd] */
            const float *kg = a->k + (size_t)g * (size_t)a->hd; /* row stride kvdim */
            const float *vg = a->v + (size_t)g * (size_t)a->hd;
            int nk = a->pos0 + t + 1;
            float m = -INFINITY, l = 0;
            for (int d = 0; d < a->hd; d++) o[d] = 0;
            for (int j0 = 0; j0 < nk; j0 += ATT_BK) {
                int n = MC_MIN(ATT_BK, nk - j0);
                for (int j = 0; j < n; j++) {
                    const float *kr = kg + (size_t)(j0 + j) * a->kvdim; /* [hd] */
                    float dot = 0;
                    for (int d = 0; d < a->hd; d++) dot += qr[d] * kr[d];
                    s[j] = dot * a->scale;
                }
                att_fold_portable(a, o, &m, &l, s, n, vg + (size_t)j0 * a->kvdim);
            }
            for (int d = 0; d < a->hd; d++) o[d] /= l;
        }
}

#if MC_CPU_X86
/* Scores of one key block for all rows of an item, rows along the vector lanes:
 * st[j, r] = (q_r . k_j) * scale for j < n, r < 8 * RV, from the transposed queries qt.
 * Each step takes KS keys (8 / RV of them) so that KS * RV = 8 accumulators stay in
 * registers; keys past n repeat key n-1 (never read past the cache) and are not stored. */
MC_AVX2_INLINE void att_scores_avx2(float *st /* [ATT_BK, 8*RV] */,
                                    const float *qt /* [hd, 8*RV] */,
                                    const float *kb /* key j0 of head g; row stride kvdim */,
                                    size_t kvdim, int n, int hd, float scale, int RV) {
    const int KS = RV == 1 ? 8 : (RV == 2 ? 4 : 2), W = 8 * RV;
    for (int j = 0; j < n; j += KS) {
        const float *kr[8];
        __m256 acc[8][4];
        for (int s = 0; s < KS; s++) {
            kr[s] = kb + (size_t)MC_MIN(j + s, n - 1) * kvdim;
            for (int v = 0; v < RV; v++) acc[s][v] = _mm256_setzero_ps();
        }
        for (int d = 0; d < hd; d++) {
            __m256 qv[4];
            for (int v = 0; v < RV; v++) {
                qv[v] = _mm256_loadu_ps(qt + (size_t)d * (size_t)W + 8 * v);
                /* keep it in a register: folded into each FMA it would be loaded KS times */
                __asm__("" : "+x"(qv[v]));
            }
            for (int s = 0; s < KS; s++) {
                __m256 kv = _mm256_broadcast_ss(kr[s] + d);
                for (int v = 0; v < RV; v++) acc[s][v] = _mm256_fmadd_ps(qv[v], kv, acc[s][v]);
            }
        }
        for (int s = 0; s < KS && j + s < n; s++)
            for (int v = 0; v < RV; v++)
                _mm256_storeu_ps(st + (size_t)(j + s) * (size_t)W + 8 * v,
                                 _mm256_mul_ps(acc[s][v], _mm256_set1_ps(scale)));
    }
}

static MC_AVX2 void att_scores_any(float *st, const float *qt, const float *kb, size_t kvdim, int n,
                                   int hd, float scale, int RV) {
    switch (RV) {
    case 1: att_scores_avx2(st, qt, kb, kvdim, n, hd, scale, 1); break;
    case 2: att_scores_avx2(st, qt, kb, kvdim, n, hd, scale, 2); break;
    case 3: att_scores_avx2(st, qt, kb, kvdim, n, hd, scale, 3); break;
    default: att_scores_avx2(st, qt, kb, kvdim, n, hd, scale, 4); break;
    }
}

/* o[0..hd) = o * corr + sum_j p[j * ps] * v[j, :] for j < n (hd a multiple of 8). */
static MC_AVX2 void att_pv_avx2(float *o /* [hd] */, float corr, const float *p /* [n] stride ps */,
                                size_t ps, int n, const float *vblk /* [n, kvdim] */, size_t kvdim,
                                int hd) {
    __m256 cv = _mm256_set1_ps(corr);
    int d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) { /* 8 accumulators in registers */
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = _mm256_mul_ps(_mm256_loadu_ps(o + d0 + 8 * c), cv);
        for (int j = 0; j < n; j++) {
            __m256 pj = _mm256_broadcast_ss(p + (size_t)j * ps);
            const float *vr = vblk + (size_t)j * kvdim + d0;
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * c), acc[c]);
        }
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(o + d0 + 8 * c, acc[c]);
    }
    for (; d0 < hd; d0 += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(o + d0), cv);
        for (int j = 0; j < n; j++)
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + (size_t)j * ps),
                                  _mm256_loadu_ps(vblk + (size_t)j * kvdim + d0), acc);
        _mm256_storeu_ps(o + d0, acc);
    }
}

/* Two rows at once: o_i = o_i * c_i + sum_j p_i[j * ps] * v[j, :] for i = 0, 1 and j < n;
 * each load of v feeds both rows (hd a multiple of 8, 32 dims per register pass). */
static MC_AVX2 void att_pv2_avx2(float *o0 /* [hd] */, float *o1 /* [hd] */, float c0, float c1,
                                 const float *p0 /* [n] stride ps */, const float *p1, size_t ps,
                                 int n, const float *vblk /* [n, ld] */, size_t ld, int hd) {
    __m256 cv0 = _mm256_set1_ps(c0), cv1 = _mm256_set1_ps(c1);
    int d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) {
        __m256 a0[4], a1[4];
        for (int c = 0; c < 4; c++) {
            a0[c] = _mm256_mul_ps(_mm256_loadu_ps(o0 + d0 + 8 * c), cv0);
            a1[c] = _mm256_mul_ps(_mm256_loadu_ps(o1 + d0 + 8 * c), cv1);
        }
        for (int j = 0; j < n; j++) {
            __m256 q0 = _mm256_broadcast_ss(p0 + (size_t)j * ps);
            __m256 q1 = _mm256_broadcast_ss(p1 + (size_t)j * ps);
            const float *vr = vblk + (size_t)j * ld + d0;
            for (int c = 0; c < 4; c++) {
                __m256 vv = _mm256_loadu_ps(vr + 8 * c);
                __asm__("" : "+x"(vv)); /* one load for both rows, not one folded into each */
                a0[c] = _mm256_fmadd_ps(q0, vv, a0[c]);
                a1[c] = _mm256_fmadd_ps(q1, vv, a1[c]);
            }
        }
        for (int c = 0; c < 4; c++) {
            _mm256_storeu_ps(o0 + d0 + 8 * c, a0[c]);
            _mm256_storeu_ps(o1 + d0 + 8 * c, a1[c]);
        }
    }
    for (; d0 < hd; d0 += 8) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(o0 + d0), cv0);
        __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(o1 + d0), cv1);
        for (int j = 0; j < n; j++) {
            __m256 vv = _mm256_loadu_ps(vblk + (size_t)j * ld + d0);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + (size_t)j * ps), vv, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + (size_t)j * ps), vv, a1);
        }
        _mm256_storeu_ps(o0 + d0, a0);
        _mm256_storeu_ps(o1 + d0, a1);
    }
}

/* Online softmax over one block of scores for 8 rows (one lane each): updates the running
 * max m and denominator l, turns st[j] into probabilities exp(st - m) and returns the
 * factor exp(m_old - m_new) that rescales the earlier output. */
static MC_AVX2 __m256 att_softmax8(float *st /* [n] stride W */, size_t W, int n,
                                   float *m /* [8] */, float *l /* [8] */) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf, mold = _mm256_loadu_ps(m), mnew, corr, sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j++) mx = _mm256_max_ps(mx, _mm256_loadu_ps(st + (size_t)j * W));
    mnew = _mm256_max_ps(mold, mx);
    /* a row with no key yet (all masked) keeps m = -inf; subtract 0 there, not -inf */
    mnew = _mm256_blendv_ps(mnew, _mm256_setzero_ps(), _mm256_cmp_ps(mnew, ninf, _CMP_EQ_OQ));
    corr = mc_exp8(_mm256_sub_ps(mold, mnew));
    for (int j = 0; j < n; j++) {
        __m256 p = mc_exp8(_mm256_sub_ps(_mm256_loadu_ps(st + (size_t)j * W), mnew));
        _mm256_storeu_ps(st + (size_t)j * W, p);
        sum = _mm256_add_ps(sum, p);
    }
    _mm256_storeu_ps(m, _mm256_max_ps(mold, mx));
    _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), corr, sum));
    return corr;
}

/* Prefetches keys and values [j0, j1) of one kv head (kg, vg: key 0 of the head; row stride
 * kvdim). The item calls it one block ahead of its reads: a decode step finds the cache in
 * DRAM (the weights streamed since the last step evicted it), and the hardware prefetcher
 * alone leaves much of the latency of these strided rows exposed (24 layers of a 0.5B
 * model at 512 positions: ~1.3 ms -> ~0.9 ms per step). */
static MC_AVX2 void att_prefetch_kv(const att_args *a, const float *kg, const float *vg, int j0,
                                    int j1) {
    for (int j = j0; j < j1; j++)
        for (int d = 0; d < a->hd; d += 16) { /* 16 floats: one cache line */
            _mm_prefetch((const char *)(kg + (size_t)j * a->kvdim + (size_t)d), _MM_HINT_T2);
            _mm_prefetch((const char *)(vg + (size_t)j * a->kvdim + (size_t)d), _MM_HINT_T2);
        }
}

/* One item with AVX2. Its rows (nh heads x ntr tokens, padded to a multiple of 8 lanes)
 * are transposed once into qt; each key block then costs one pass over the keys for the
 * scores, a vectorised softmax across rows, and one pass over the values per row. */
static MC_AVX2 void att_item_avx2(const att_args *a, int g, int h0, int nh, int t0, int ntr) {
    float qt[ATT_MAX_HD * ATT_ROWS];  /* [hd, W] */
    float st[ATT_BK * ATT_ROWS];      /* [bk, W] */
    float o[ATT_ROWS * ATT_MAX_HD];   /* [rows, hd] */
    float kp[ATT_PACK], vp[ATT_PACK]; /* [bk, hd]: the block's keys and values, packed */
    float m[ATT_ROWS], l[ATT_ROWS], corr[ATT_ROWS];
    int hd = a->hd, rows = nh * ntr, RV = (rows + 7) / 8, W = 8 * RV;
    int bk = MC_MIN(ATT_BK, ATT_PACK / hd); /* keys per block */
    int nk = a->pos0 + t0 + ntr;            /* keys seen by the last row */
    const float *kg = a->k + (size_t)g * (size_t)hd, *vg = a->v + (size_t)g * (size_t)hd;
    for (int r = 0; r < W; r++) { /* rows past `rows` are zero padding */
        int hh = h0 + r / ntr, t = t0 + r % ntr;
        if (r < rows) {
            const float *qr = a->q + (size_t)t * a->qdim + (size_t)hh * (size_t)hd; /* [hd] */
            for (int d = 0; d < hd; d++) qt[(size_t)d * (size_t)W + (size_t)r] = qr[d];
        } else {
            for (int d = 0; d < hd; d++) qt[(size_t)d * (size_t)W + (size_t)r] = 0.0f;
        }
        m[r] = -INFINITY;
        l[r] = 0;
    }
    memset(o, 0, (size_t)rows * (size_t)hd * sizeof(float));
    for (int j0 = 0; j0 < nk; j0 += bk) {
        int n = MC_MIN(bk, nk - j0);
        /* Cache rows hold all kv heads, so a block's rows lie kvdim apart and crowd a few
         * L1 sets; packed, they are contiguous. Worth it when many rows reuse the block. */
        const float *kb = kg + (size_t)j0 * a->kvdim, *vb = vg + (size_t)j0 * a->kvdim;
        size_t ld = a->kvdim;
        if (rows > 8) {
            for (int j = 0; j < n; j++) {
                memcpy(kp + (size_t)j * (size_t)hd, kb + (size_t)j * ld,
                       (size_t)hd * sizeof(float));
                memcpy(vp + (size_t)j * (size_t)hd, vb + (size_t)j * ld,
                       (size_t)hd * sizeof(float));
            }
            kb = kp;
            vb = vp;
            ld = (size_t)hd;
        }
        att_prefetch_kv(a, kg, vg, j0 == 0 ? 0 : j0 + bk, MC_MIN(nk, j0 + 2 * bk));
        att_scores_any(st, qt, kb, ld, n, hd, a->scale, RV);
        for (int r = 0; r < rows; r++) /* causal mask: row r sees keys <= pos0 + t */
            for (int j = MC_MAX(0, a->pos0 + t0 + r % ntr + 1 - j0); j < n; j++)
                st[(size_t)j * (size_t)W + (size_t)r] = -INFINITY;
        for (int v = 0; v < RV; v++)
            _mm256_storeu_ps(corr + 8 * v,
                             att_softmax8(st + 8 * v, (size_t)W, n, m + 8 * v, l + 8 * v));
        /* rows in pairs; masked probabilities are exactly 0, so both run to the block end */
        for (int r = 0; r + 1 < rows; r += 2)
            att_pv2_avx2(o + (size_t)r * (size_t)hd, o + (size_t)(r + 1) * (size_t)hd, corr[r],
                         corr[r + 1], st + r, st + r + 1, (size_t)W, n, vb, ld, hd);
        if (rows % 2) {
            int r = rows - 1, nv = MC_MIN(n, a->pos0 + t0 + r % ntr + 1 - j0);
            att_pv_avx2(o + (size_t)r * (size_t)hd, corr[r], st + r, (size_t)W, MC_MAX(nv, 0), vb,
                        ld, hd);
        }
    }
    for (int r = 0; r < rows; r++) {
        int hh = h0 + r / ntr, t = t0 + r % ntr;
        float *dst = a->out + (size_t)t * a->qdim + (size_t)hh * (size_t)hd; /* [hd] */
        __m256 inv = _mm256_set1_ps(1.0f / l[r]);
        for (int d = 0; d < hd; d += 8)
            _mm256_storeu_ps(dst + d,
                             _mm256_mul_ps(_mm256_loadu_ps(o + (size_t)r * (size_t)hd + d), inv));
    }
}
#endif

void mc_fast_attention(mc_backend *be, void *out /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                       const void *k /* [>= pos0+T, Hkv*hd] */, const void *v /* same */, int T,
                       int pos0, int Hq, int Hkv, int hd) {
    att_args a;
    int group = Hq / Hkv;
    int hpi = MC_MIN(group, ATT_ROWS);   /* query heads per item */
    int nhc = (group + hpi - 1) / hpi;   /* head chunks per group */
    int tpi = MC_MAX(1, ATT_ROWS / hpi); /* tokens per item */
    int nqb = (T + tpi - 1) / tpi;       /* token blocks */
    long items = (long)Hkv * nhc * nqb;
    bool avx2 = use_avx2(be) && hd % 8 == 0 && hd <= ATT_MAX_HD;
    a.out = out;
    a.q = q;
    a.k = k;
    a.v = v;
    a.T = T;
    a.pos0 = pos0;
    a.Hq = Hq;
    a.Hkv = Hkv;
    a.hd = hd;
    a.qdim = (size_t)Hq * (size_t)hd;
    a.kvdim = (size_t)Hkv * (size_t)hd;
    a.scale = 1.0f / sqrtf((float)hd);
    (void)avx2;
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(par_threads(be, (size_t)T *(size_t)(pos0 + T) * (size_t)Hq * (size_t)hd))
    for (long i = 0; i < items; i++) {
        /* the last token blocks see the most keys: hand them out first */
        int qb = nqb - 1 - (int)(i / ((long)Hkv * nhc));
        int rest = (int)(i % ((long)Hkv * nhc));
        int g = rest / nhc, hc = rest % nhc;
        int h0 = g * group + hc * hpi, nh = MC_MIN(hpi, group - hc * hpi);
        int t0 = qb * tpi, ntr = MC_MIN(tpi, T - t0);
#if MC_CPU_X86
        if (avx2) {
            att_item_avx2(&a, g, h0, nh, t0, ntr);
            continue;
        }
#endif
        att_item_portable(&a, g, h0, nh, t0, ntr);
    }
}

/* ---- SwiGLU and add ----------------------------------------------------------------- */

#if MC_CPU_X86
static MC_AVX2 void swiglu_avx2(float *o /* [n] */, const float *g /* [n] */,
                                const float *u /* [n] */, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = mc_exp8(_mm256_xor_ps(gv, sign));
        __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        float silu = g[i] / (1.0f + expf(-g[i]));
        o[i] = silu * u[i];
    }
}
#endif

static void swiglu_portable(float *o /* [n] */, const float *g /* [n] */, const float *u /* [n] */,
                            size_t n) {
    for (size_t i = 0; i < n; i++) {
        float silu = g[i] / (1.0f + expf(-g[i]));
        o[i] = silu * u[i];
    }
}

/* Range [*i0, *i1) of n elements for the calling thread of the current team: near-equal
 * contiguous parts in whole cache lines. */
static void thread_range(size_t n, size_t *i0, size_t *i1) {
    size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
    size_t per = ((n + nt - 1) / nt + 15) & ~(size_t)15;
    *i0 = MC_MIN(n, t * per);
    *i1 = MC_MIN(n, *i0 + per);
}

void mc_fast_swiglu(mc_backend *be, void *out /* [n] */, const void *gate /* [n] */,
                    const void *up /* [n] */, size_t n) {
    float *o = out;
    const float *g = gate, *u = up;
    bool avx2 = use_avx2(be);
    (void)avx2;
#pragma omp parallel num_threads(par_threads(be, n))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
#if MC_CPU_X86
        if (avx2)
            swiglu_avx2(o + i0, g + i0, u + i0, i1 - i0);
        else
            swiglu_portable(o + i0, g + i0, u + i0, i1 - i0);
#else
        swiglu_portable(o + i0, g + i0, u + i0, i1 - i0);
#endif
    }
}

void mc_fast_add(mc_backend *be, void *y /* [n] */, const void *x /* [n] */, size_t n) {
    float *ys = y;
    const float *xs = x;
#pragma omp parallel num_threads(par_threads(be, n))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
        for (size_t i = i0; i < i1; i++) ys[i] += xs[i];
    }
}
