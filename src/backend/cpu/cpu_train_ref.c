/* cpu_train_ref.c - reference training kernels of the CPU backends: plain loops, one
 * thread, no intrinsics. They are the specification the fast kernels (cpu_train.c) and
 * other backends are tested against, and each backward is checked against finite
 * differences of the forward kernel it differentiates (cpu_ref.c).
 *
 * Precision: element-wise math in f32 in the order the forward uses; long sums (GEMM and
 * matmul dot products, RMSNorm row sums, attention dot products and softmax sums, the
 * cross-entropy logits, log-sum-exp and gradient rows, the sum of squares) in double. The
 * attention gradients dq/dk/dv are accumulated in their f32 outputs. */
#include "cpu_train.h"

#include <assert.h>
#include <math.h>

void mc_ref_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                     const float *A /* [M, lda] or [K, lda] when ta */, int lda,
                     const float *B /* [K, ldb] or [N, ldb] when tb */, int ldb, float beta,
                     float *C /* [M, ldc] */, int ldc) {
    (void)be;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            float *c = C + (size_t)i * (size_t)ldc + (size_t)j;
            for (int kk = 0; kk < K; kk++) {
                float a = ta ? A[(size_t)kk * (size_t)lda + (size_t)i]
                             : A[(size_t)i * (size_t)lda + (size_t)kk];
                float b = tb ? B[(size_t)j * (size_t)ldb + (size_t)kk]
                             : B[(size_t)kk * (size_t)ldb + (size_t)j];
                acc += (double)a * (double)b;
            }
            /* beta == 0: the old C is not read at all (it may hold NaN) */
            *c = beta == 0.0f ? (float)((double)alpha * acc)
                              : (float)((double)alpha * acc + (double)beta * (double)*c);
        }
}

/* forward (mc_ref_matmul): out[m, n] = sum_k x[m, k] W[n, k] (+ b[n]).
 * backward: dx[m, k] (+)= sum_n dy[m, n] W[n, k]. */
void mc_ref_matmul_dx(mc_backend *be, void *dx /* [M, K] */, const void *dy /* [M, N] */,
                      mc_wt w /* [N, K] */, int M, int N, int K, bool accumulate) {
    float *o = dx;
    const float *g = dy;
    size_t n_ = (size_t)N, k_ = (size_t)K;
    (void)be;
    for (size_t m = 0; m < (size_t)M; m++)
        for (size_t kk = 0; kk < k_; kk++) {
            double acc = accumulate ? (double)o[m * k_ + kk] : 0.0;
            for (size_t n = 0; n < n_; n++)
                acc += (double)g[m * n_ + n] * (double)mc_load_f32(w.data, w.dtype, n * k_ + kk);
            o[m * k_ + kk] = (float)acc;
        }
}

/* forward (mc_ref_rmsnorm), per row:
 *   float var = (float)(ss / (double)D); float r = 1.0f / sqrtf(var + eps);
 *   orow[d] = (xr[d] * r) * w[d];
 * backward, with r a function of every x[j] (dr/dx[j] = -r^3 x[j] / D):
 *   dx[j] += r w[j] dy[j] - x[j] r^3 mean_d(dy[d] w[d] x[d]). */
void mc_ref_rmsnorm_backward(mc_backend *be, void *dx /* [T, D] += */, void *xn /* or NULL */,
                             const void *dy /* [T, D] */, const void *x /* [T, D] */,
                             mc_wt w /* [D] */, int T, int D, float eps) {
    float *gx = dx;
    const float *gy = dy, *xs = x;
    size_t d_ = (size_t)D;
    if (xn) mc_ref_rmsnorm(be, xn, x, w, T, D, eps); /* the forward itself: the same bits */
    for (size_t t = 0; t < (size_t)T; t++) {
        const float *xr = xs + t * d_, *gr = gy + t * d_; /* [D] */
        float *dr = gx + t * d_;                          /* [D] */
        double ss = 0, dot = 0, r, r3m;
        for (size_t d = 0; d < d_; d++) ss += (double)xr[d] * (double)xr[d];
        {
            float var = (float)(ss / (double)D);
            r = (double)(1.0f / sqrtf(var + eps)); /* the forward's r, exactly */
        }
        for (size_t d = 0; d < d_; d++)
            dot += (double)gr[d] * (double)mc_load_f32(w.data, w.dtype, d) * (double)xr[d];
        r3m = r * r * r * (dot / (double)D);
        for (size_t d = 0; d < d_; d++) {
            double wd = (double)mc_load_f32(w.data, w.dtype, d);
            dr[d] = (float)((double)dr[d] + r * wd * (double)gr[d] - (double)xr[d] * r3m);
        }
    }
}

/* forward (mc_ref_rope), pairs (i, i + hd/2) of each head, ang = pos * inv_freq(i):
 *   y1 = x1 cos - x2 sin;  y2 = x2 cos + x1 sin.
 * backward (the transpose of a rotation is the rotation by -ang), in place:
 *   dx1 = dy1 cos + dy2 sin;  dx2 = dy2 cos - dy1 sin. */
void mc_ref_rope_backward(mc_backend *be, void *dx /* [T, ldx] */, int ldx,
                          const int32_t *pos /* [T] */, int T, int H, int hd, float theta) {
    (void)be;
    mc_ref_rope_dir(dx, ldx, pos, T, H, hd, theta, -1.0f);
}

/* Score of query row qr against key row kr as the forward computes it. */
static float ref_score(const float *qr /* [hd] */, const float *kr /* [hd] */, int hd,
                       float scale) {
    double dot = 0;
    for (int d = 0; d < hd; d++) dot += (double)qr[d] * (double)kr[d];
    return (float)dot * scale;
}

static double ref_dot(const float *a /* [hd] */, const float *b /* [hd] */, int hd) {
    double dot = 0;
    for (int d = 0; d < hd; d++) dot += (double)a[d] * (double)b[d];
    return dot;
}

/* forward (mc_ref_attention, pos0 = 0), per query head h and row i:
 *   s_ij = (q_i . k_j) * scale;  p_ij = softmax_j<=i(s_ij);  out_i = sum_j p_ij v_j.
 * backward, with dp_ij = dout_i . v_j:
 *   dv_j += p_ij dout_i;  ds_ij = p_ij (dp_ij - sum_k p_ik dp_ik);
 *   dq_i = scale sum_j ds_ij k_j;  dk_j += scale ds_ij q_i.
 * Probabilities are recomputed per pass (no buffer), as the forward reference does. */
void mc_ref_attention_backward(mc_backend *be, void *dq /* [T, Hq*hd] */,
                               void *dk /* [T, Hkv*hd] */, void *dv /* [T, Hkv*hd] */,
                               const void *dout /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                               const void *k /* [T, Hkv*hd] */, const void *v /* [T, Hkv*hd] */,
                               int T, int Hq, int Hkv, int hd) {
    float *gq = dq, *gk = dk, *gv = dv;
    const float *go = dout, *qs = q, *ks = k, *vs = v;
    size_t qdim = (size_t)Hq * (size_t)hd, kvdim = (size_t)Hkv * (size_t)hd;
    int group = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    (void)be;
    memset(gq, 0, (size_t)T * qdim * sizeof(float));
    memset(gk, 0, (size_t)T * kvdim * sizeof(float));
    memset(gv, 0, (size_t)T * kvdim * sizeof(float));
    for (int h = 0; h < Hq; h++) {
        size_t qoff = (size_t)h * (size_t)hd, koff = (size_t)(h / group) * (size_t)hd;
        for (int i = 0; i < T; i++) {
            const float *qi = qs + (size_t)i * qdim + qoff; /* [hd] */
            const float *gi = go + (size_t)i * qdim + qoff; /* [hd] */
            float *dqi = gq + (size_t)i * qdim + qoff;      /* [hd] */
            float mx = -INFINITY;
            double sum = 0, pdp = 0;
            for (int j = 0; j <= i; j++) {
                float s = ref_score(qi, ks + (size_t)j * kvdim + koff, hd, scale);
                if (s > mx) mx = s;
            }
            for (int j = 0; j <= i; j++)
                sum += (double)expf(ref_score(qi, ks + (size_t)j * kvdim + koff, hd, scale) - mx);
            /* sum_k p_ik dp_ik */
            for (int j = 0; j <= i; j++) {
                float p =
                    expf(ref_score(qi, ks + (size_t)j * kvdim + koff, hd, scale) - mx) / (float)sum;
                pdp += (double)p * ref_dot(gi, vs + (size_t)j * kvdim + koff, hd);
            }
            for (int j = 0; j <= i; j++) {
                const float *kj = ks + (size_t)j * kvdim + koff,
                            *vj = vs + (size_t)j * kvdim + koff;
                float *dkj = gk + (size_t)j * kvdim + koff, *dvj = gv + (size_t)j * kvdim + koff;
                float p = expf(ref_score(qi, kj, hd, scale) - mx) / (float)sum;
                double ds = (double)p * (ref_dot(gi, vj, hd) - pdp);
                for (int d = 0; d < hd; d++) {
                    dvj[d] += (float)((double)p * (double)gi[d]);
                    dqi[d] += (float)((double)scale * ds * (double)kj[d]);
                    dkj[d] += (float)((double)scale * ds * (double)qi[d]);
                }
            }
        }
    }
}

/* forward (mc_ref_swiglu): out = silu(g) * u with silu(g) = g / (1 + expf(-g)).
 * backward, with s = sigmoid(g) and silu'(g) = s (1 + g (1 - s)):
 *   dgate = dout * u * silu'(g);  dup = dout * silu(g).  dgate may alias dout. h: the
 *   forward's out, the same expression. */
void mc_ref_swiglu_backward(mc_backend *be, void *dgate /* [n] */, void *dup /* [n] */,
                            void *h /* [n] or NULL */, const void *dout /* [n] */,
                            const void *gate /* [n] */, const void *up /* [n] */, size_t n) {
    float *dg = dgate, *du = dup, *hs = h;
    const float *go = dout, *g = gate, *u = up;
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], o = go[i];
        float e = 1.0f + expf(-gi);
        float s = 1.0f / e, silu = gi / e;
        float gs = gi * (1.0f - s); /* separate statements: no fused multiply-add */
        float dsilu = s * (1.0f + gs);
        if (hs) hs[i] = silu * u[i];
        du[i] = o * silu;
        dg[i] = o * u[i] * dsilu;
    }
}

/* Per row t with targets[t] >= 0, logits l = W h_t (double): loss_sum += logsumexp(l) -
 * l[target]; dh_t = grad_scale (softmax(l) - onehot(target)) W. Rows with a negative
 * target get dh_t = 0. Scratch: V + D doubles (MC_ERR_OOM when they cannot be had). */
mc_status mc_ref_linear_xent(mc_backend *be, void *dh /* [T, D] or NULL */, double *loss_sum,
                             const void *h /* [T, D] */, mc_wt w /* [V, D] */,
                             const int32_t *targets /* [T] */, int T, int D, int V,
                             float grad_scale) {
    float *g = dh;
    const float *hs = h;
    size_t d_ = (size_t)D, v_ = (size_t)V;
    double *logit = mc_malloc((v_ + d_ + 1) * sizeof(double)); /* [V] then [D] */
    double *acc, loss = 0;
    (void)be;
    if (!logit) return mc_fail(MC_ERR_OOM, "linear_xent: out of memory for %d logits", V);
    acc = logit + v_;
    for (size_t t = 0; t < (size_t)T; t++) {
        const float *hr = hs + t * d_; /* [D] */
        int32_t tg = targets[t];
        double mx = -INFINITY, sum = 0, lse;
        if (tg < 0) {
            if (g) memset(g + t * d_, 0, d_ * sizeof(float));
            continue;
        }
        assert(tg < V);
        for (size_t v = 0; v < v_; v++) {
            double z = 0;
            for (size_t d = 0; d < d_; d++)
                z += (double)hr[d] * (double)mc_load_f32(w.data, w.dtype, v * d_ + d);
            logit[v] = z;
            if (z > mx) mx = z;
        }
        for (size_t v = 0; v < v_; v++) sum += exp(logit[v] - mx);
        lse = mx + log(sum);
        loss += lse - logit[tg];
        if (!g) continue;
        for (size_t d = 0; d < d_; d++) acc[d] = 0;
        for (size_t v = 0; v < v_; v++) {
            double pv = exp(logit[v] - lse) - (v == (size_t)tg ? 1.0 : 0.0);
            for (size_t d = 0; d < d_; d++)
                acc[d] += pv * (double)mc_load_f32(w.data, w.dtype, v * d_ + d);
        }
        for (size_t d = 0; d < d_; d++) g[t * d_ + d] = (float)((double)grad_scale * acc[d]);
    }
    *loss_sum += loss;
    mc_free(logit);
    return MC_OK;
}

/* out[i] = keep(i) ? x[i] * (1 / (1 - p)) : 0, keep = mc_dropout_keep(seed, i, p). The
 * backward is this same call on dy (same seed). */
void mc_ref_dropout(mc_backend *be, void *out /* [n] */, const void *x /* [n] */, size_t n, float p,
                    uint64_t seed) {
    float *o = out;
    const float *xs = x;
    float scale = 1.0f / (1.0f - p);
    (void)be;
    if (p <= 0.0f) {
        if (o != xs) memmove(o, xs, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        o[i] = mc_dropout_keep(seed, i, (double)p) ? xs[i] * scale : 0.0f;
}

/* torch.optim.AdamW (single-tensor path, decoupled weight decay), statement by statement:
 *   param.mul_(1 - lr * wd)                       p = p * (float)(1 - lr wd)
 *   exp_avg.lerp_(grad, 1 - b1)                   m = m + (float)(1 - b1) * (g - m)
 *   exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)    v = v * b2 + ((float)(1 - b2) * g) * g
 *   bc1 = 1 - b1^step; bc2 = 1 - b2^step          (double)
 *   denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps)
 *   param.addcdiv_(exp_avg, denom, value=-lr/bc1) p = p + ((float)(-lr / bc1) * m) / denom
 * Scalars are computed in double from the float arguments and rounded to f32 once, as torch
 * does with Python floats; tensor math is f32 with one rounding per operation (no fused
 * multiply-add). */
void mc_adamw_range(float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                    float *v /* [n] */, size_t i0, size_t i1, const float *k /* [7] */) {
    float decay = k[0], c1 = k[1], b2 = k[2], c2 = k[3], bc2s = k[4], eps = k[5], neg_step = k[6];
    for (size_t i = i0; i < i1; i++) {
        /* one operation per statement: a compiler may not fuse a multiply and an add */
        float gi = g[i], pi = p[i] * decay;
        float dm = gi - m[i];
        float lm = c1 * dm;
        float mi = m[i] + lm;
        float vb = v[i] * b2;
        float gg = c2 * gi;
        float g2 = gg * gi;
        float vi = vb + g2;
        float sq = sqrtf(vi) / bc2s;
        float denom = sq + eps;
        float num = neg_step * mi;
        float upd = num / denom;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + upd;
    }
}

void mc_adamw_constants(float k[7], float lr, float b1, float b2, float eps, float wd, int step) {
    double bc1 = 1.0 - pow((double)b1, (double)step), bc2 = 1.0 - pow((double)b2, (double)step);
    k[0] = (float)(1.0 - (double)lr * (double)wd);
    k[1] = (float)(1.0 - (double)b1);
    k[2] = b2;
    k[3] = (float)(1.0 - (double)b2);
    k[4] = (float)sqrt(bc2);
    k[5] = eps;
    k[6] = (float)(-(double)lr / bc1);
}

void mc_ref_adamw(mc_backend *be, float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                  float *v /* [n] */, size_t n, float lr, float b1, float b2, float eps, float wd,
                  int step) {
    float k[7];
    (void)be;
    mc_adamw_constants(k, lr, b1, b2, eps, wd, step);
    mc_adamw_range(p, g, m, v, 0, n, k);
}

double mc_ref_sumsq_f32(mc_backend *be, const float *x /* [n] */, size_t n) {
    double s = 0;
    (void)be;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

void mc_ref_scale_f32(mc_backend *be, float *x /* [n] */, size_t n, float alpha) {
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

void mc_ref_zero(mc_backend *be, void *p /* [bytes] */, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}
