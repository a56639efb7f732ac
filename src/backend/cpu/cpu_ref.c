/* cpu_ref.c - reference kernels of the "cpu-ref" backend: plain loops, one thread, no
 * intrinsics. They are the specification that the fast kernels and the CUDA backend are
 * tested against, and they follow Hugging Face Qwen2 in f32.
 *
 * Precision: per-element math is f32 exactly as Hugging Face orders it (RMSNorm multiplies
 * x by the reciprocal RMS and then by the weight; RoPE products and cos/sin in f32; SiLU as
 * g / (1 + exp(-g))). Long sums - the matmul dot products, the RMSNorm sum of squares, the
 * attention dot products, softmax denominators and weighted sums of values - accumulate
 * in double: that is strictly more exact than any f32 summation order, so the reference
 * sits closest to the exact value and every f32 reordering is compared against it. */
#include "cpu.h"

#include <math.h>

void mc_ref_embedding(mc_backend *be, void *out /* [T, D] */, const int32_t *ids /* [T] */,
                      mc_wt table /* [V, D] */, int T, int D) {
    float *o = out;
    size_t d_ = (size_t)D;
    (void)be;
    for (size_t t = 0; t < (size_t)T; t++) {
        size_t row = (size_t)ids[t];
        for (size_t d = 0; d < d_; d++)
            o[t * d_ + d] = mc_load_f32(table.data, table.dtype, row * d_ + d);
    }
}

void mc_ref_rmsnorm(mc_backend *be, void *out /* [T, D] */, const void *x /* [T, D] */,
                    mc_wt w /* [D] */, int T, int D, float eps) {
    float *o = out;
    const float *xs = x;
    size_t d_ = (size_t)D;
    (void)be;
    for (size_t t = 0; t < (size_t)T; t++) {
        const float *xr = xs + t * d_; /* [D] */
        float *orow = o + t * d_;      /* [D] */
        double ss = 0;
        for (size_t d = 0; d < d_; d++) ss += (double)xr[d] * (double)xr[d];
        float var = (float)(ss / (double)D);
        float r = 1.0f / sqrtf(var + eps);
        for (size_t d = 0; d < d_; d++) {
            float xn = xr[d] * r;
            orow[d] = xn * mc_load_f32(w.data, w.dtype, d);
        }
    }
}

void mc_ref_matmul(mc_backend *be, void *out /* [M, ldo] */, int ldo, const void *x /* [M, K] */,
                   mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, int M, int N, int K) {
    float *o = out;
    const float *xs = x;
    size_t k_ = (size_t)K;
    (void)be;
    for (size_t m = 0; m < (size_t)M; m++) {
        const float *xr = xs + m * k_; /* [K] */
        for (size_t n = 0; n < (size_t)N; n++) {
            double acc = bias.data ? (double)mc_load_f32(bias.data, bias.dtype, n) : 0.0;
            for (size_t kk = 0; kk < k_; kk++)
                acc += (double)xr[kk] * (double)mc_load_f32(w.data, w.dtype, n * k_ + kk);
            o[m * (size_t)ldo + n] = (float)acc;
        }
    }
}

float mc_rope_inv_freq(float theta, int i, int hd) {
    float e = (float)(2 * i) / (float)hd;
    return 1.0f / powf(theta, e);
}

void mc_ref_rope_dir(void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */, int T, int H,
                     int hd, float theta, float dir) {
    float *xs = x;
    int half = hd / 2;
    for (int t = 0; t < T; t++) {
        float p = (float)pos[t];
        for (int h = 0; h < H; h++) {
            float *xh = xs + (size_t)t * (size_t)ldx + (size_t)h * (size_t)hd; /* [hd] */
            for (int i = 0; i < half; i++) {
                float ang = p * mc_rope_inv_freq(theta, i, hd);
                float c = cosf(ang), s = sinf(ang);
                float x1 = xh[i], x2 = xh[i + half];
                /* separate statements: no fused multiply-add, as in PyTorch; dir * b is exact */
                float a = x1 * c, b = x2 * s, e = x2 * c, f = x1 * s;
                xh[i] = a - dir * b;
                xh[i + half] = e + dir * f;
            }
        }
    }
}

void mc_ref_rope(mc_backend *be, void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */,
                 int T, int H, int hd, float theta) {
    (void)be;
    mc_ref_rope_dir(x, ldx, pos, T, H, hd, theta, 1.0f);
}

enum { REF_DCHUNK = 64 };

/* Score of query row qr against key row kr: (q . k in double, rounded) * scale in f32. */
static float ref_score(const float *qr /* [hd] */, const float *kr /* [hd] */, int hd,
                       float scale) {
    double dot = 0;
    for (int d = 0; d < hd; d++) dot += (double)qr[d] * (double)kr[d];
    return (float)dot * scale;
}

void mc_ref_attention(mc_backend *be, void *out /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                      const void *k /* [>= pos0+T, Hkv*hd] */, const void *v /* same */, int T,
                      int pos0, int Hq, int Hkv, int hd) {
    float *o = out;
    const float *qs = q, *ks = k, *vs = v;
    size_t qdim = (size_t)Hq * (size_t)hd, kvdim = (size_t)Hkv * (size_t)hd;
    int group = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    (void)be;
    for (int t = 0; t < T; t++) {
        int nk = pos0 + t + 1; /* keys 0..pos0+t */
        for (int h = 0; h < Hq; h++) {
            const float *qr = qs + (size_t)t * qdim + (size_t)h * (size_t)hd; /* [hd] */
            size_t koff = (size_t)(h / group) * (size_t)hd;
            float *orow = o + (size_t)t * qdim + (size_t)h * (size_t)hd; /* [hd] */
            float mx = -INFINITY;
            double sum = 0;
            /* pass 1: max score; pass 2: softmax denominator; pass 3: weighted values.
             * Scores are recomputed rather than stored, so the reference needs no buffer. */
            for (int j = 0; j < nk; j++) {
                float s = ref_score(qr, ks + (size_t)j * kvdim + koff, hd, scale);
                if (s > mx) mx = s;
            }
            for (int j = 0; j < nk; j++)
                sum += (double)expf(ref_score(qr, ks + (size_t)j * kvdim + koff, hd, scale) - mx);
            /* values in chunks of REF_DCHUNK dims, so the double accumulators fit the stack */
            for (int d0 = 0; d0 < hd; d0 += REF_DCHUNK) {
                int nd = MC_MIN(REF_DCHUNK, hd - d0);
                double acc[REF_DCHUNK] = {0};
                for (int j = 0; j < nk; j++) {
                    const float *vr = vs + (size_t)j * kvdim + koff + (size_t)d0; /* [nd] */
                    float pj = expf(ref_score(qr, ks + (size_t)j * kvdim + koff, hd, scale) - mx) /
                               (float)sum;
                    for (int d = 0; d < nd; d++) acc[d] += (double)pj * (double)vr[d];
                }
                for (int d = 0; d < nd; d++) orow[d0 + d] = (float)acc[d];
            }
        }
    }
}

void mc_ref_swiglu(mc_backend *be, void *out /* [n] */, const void *gate /* [n] */,
                   const void *up /* [n] */, size_t n) {
    float *o = out;
    const float *g = gate, *u = up;
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float silu = gi / (1.0f + expf(-gi));
        o[i] = silu * u[i];
    }
}

void mc_ref_add(mc_backend *be, void *y /* [n] */, const void *x /* [n] */, size_t n) {
    float *ys = y;
    const float *xs = x;
    (void)be;
    for (size_t i = 0; i < n; i++) ys[i] += xs[i];
}
