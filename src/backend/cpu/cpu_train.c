/* cpu_train.c - fast training kernels of the "cpu" backend, behind the signatures of the
 * reference kernels (cpu_train_ref.c), and the function that installs either set.
 *
 * Matrix work goes through single-threaded OpenBLAS sgemm calls, one per OpenMP thread, on
 * f32 tiles of the weights converted on the fly (OpenBLAS's own threads are switched off
 * meanwhile, as in the forward matmul). Element-wise work runs on OpenMP threads when large
 * enough, with AVX2 inner loops when the backend's variant allows.
 *
 * Determinism: every kernel gives the same bits on every run with the same thread count.
 * Work split by thread writes disjoint outputs; partial results (loss and softmax state of
 * linear_xent, sum of squares) are combined in a fixed order. Dropout and AdamW match the
 * reference bit for bit.
 *
 * Scratch: matmul_dx, attention_backward and linear_xent use the backend's per-thread
 * scratch (mc_cpu.scratch) when it is free and large enough, else allocate their own for the
 * call. When that allocation fails, matmul_dx falls back to small tiles on the stack,
 * attention_backward to the reference kernel, and linear_xent returns MC_ERR_OOM. */
#include "cpu_train.h"

#include "cpu_convert.h"
#include "cpu_simd.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>

/* Element-wise work below this many elements runs on the calling thread. */
#define TR_PAR_MIN ((size_t)1 << 15)
/* Most threads a kernel splits its work over (bounds the per-thread arrays on the stack). */
#define TR_MAX_TEAM 256

static int par_threads(const mc_backend *be, size_t work) {
    const mc_cpu *cpu = be->impl;
    return work >= TR_PAR_MIN ? MC_MIN(cpu->n_threads, TR_MAX_TEAM) : 1;
}

static int team_threads(const mc_backend *be) {
    const mc_cpu *cpu = be->impl;
    return MC_MIN(cpu->n_threads, TR_MAX_TEAM);
}

static bool use_avx2(const mc_backend *be) {
    const mc_cpu *cpu = be->impl;
    return MC_CPU_X86 && cpu->variant == MC_CPU_AVX2;
}

/* Range [*i0, *i1) of n elements for the calling thread of the current team: near-equal
 * contiguous parts in whole cache lines. */
static void thread_range(size_t n, size_t *i0, size_t *i1) {
    size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
    size_t per = ((n + nt - 1) / nt + 15) & ~(size_t)15;
    *i0 = MC_MIN(n, t * per);
    *i1 = MC_MIN(n, *i0 + per);
}

/* ---- scratch and BLAS threads ------------------------------------------------------- */

typedef struct tr_scratch {
    float *p;    /* [floats] */
    bool shared; /* p is mc_cpu.scratch (held through scratch_busy) */
} tr_scratch;

/* Gets `floats` floats of 64-byte-aligned scratch: the backend's shared scratch when it is
 * free and large enough, else a new allocation. False (s->p NULL) when neither. */
static bool scratch_get(mc_cpu *cpu, size_t floats, tr_scratch *s) {
    size_t bytes;
    s->p = NULL;
    s->shared = false;
    if (cpu->scratch && floats <= (size_t)cpu->n_threads * MC_CPU_SCRATCH_FLOATS &&
        !atomic_flag_test_and_set(&cpu->scratch_busy)) {
        s->p = cpu->scratch;
        s->shared = true;
        return true;
    }
    if (!mc_mul_ok(floats, sizeof(float), &bytes)) return false;
    s->p = mc_aligned_alloc(bytes);
    return s->p != NULL;
}

static void scratch_put(mc_cpu *cpu, tr_scratch *s) {
    if (s->shared)
        atomic_flag_clear(&cpu->scratch_busy);
    else
        mc_aligned_free(s->p);
    s->p = NULL;
    s->shared = false;
}

/* OpenBLAS runs single-threaded inside our OpenMP threads; returns the previous setting. */
static int blas_single(void) {
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return prev;
}

static void blas_restore(int prev) { openblas_set_num_threads(prev); }

/* ---- GEMM on the calling thread ------------------------------------------------------- */

/* Longest inner dimension of one sgemm call. OpenBLAS (Cooperlake kernels on this machine's
 * Zen 4) measured ~100 GFLOP/s per core with inner dimensions up to ~1024 and about half
 * that beyond, so longer sums are cut into calls that accumulate (beta = 1). */
#define GEMM_KMAX 1024

/* C = alpha op(A) op(B) + beta C, row-major, on the calling thread's single-threaded
 * OpenBLAS, with the inner dimension cut into pieces of at most GEMM_KMAX. K > 0. */
static void sgemm_rm(bool ta, bool tb, size_t M, size_t N, size_t K, float alpha,
                     const float *A /* op(A) [M, K] */, size_t lda,
                     const float *B /* op(B) [K, N] */, size_t ldb, float beta,
                     float *C /* [M, ldc] */, size_t ldc) {
    for (size_t k0 = 0; k0 < K; k0 += GEMM_KMAX) {
        size_t kk = MC_MIN((size_t)GEMM_KMAX, K - k0);
        const float *a = ta ? A + k0 * lda : A + k0; /* columns k0.. of op(A) */
        const float *b = tb ? B + k0 : B + k0 * ldb; /* rows k0.. of op(B) */
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (blasint)M, (blasint)N, (blasint)kk, alpha, a, (blasint)lda, b, (blasint)ldb,
                    k0 == 0 ? beta : 1.0f, C, (blasint)ldc);
    }
}

/* ---- gemm_f32 ------------------------------------------------------------------------ */

/* Below this many multiply-adds a GEMM runs on the calling thread. */
#define GEMM_PAR_MIN ((size_t)1 << 21)

void mc_fast_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                      const float *A /* [M, lda] or [K, lda] when ta */, int lda,
                      const float *B /* [K, ldb] or [N, ldb] when tb */, int ldb, float beta,
                      float *C /* [M, ldc] */, int ldc) {
    size_t m_ = (size_t)MC_MAX(M, 0), n_ = (size_t)MC_MAX(N, 0), k_ = (size_t)MC_MAX(K, 0);
    size_t la = (size_t)lda, lb = (size_t)ldb, lc = (size_t)ldc;
    int nt = m_ * n_ * k_ >= GEMM_PAR_MIN ? team_threads(be) : 1;
    bool split_m = m_ >= n_;
    int prev;
    if (m_ == 0 || n_ == 0) return;
    if (k_ == 0) { /* empty sum: C = beta C (beta == 0 ignores the old C) */
        for (size_t i = 0; i < m_; i++)
            for (size_t j = 0; j < n_; j++) {
                float *c = C + i * lc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
    prev = blas_single();
    (void)nt; /* read by the omp clause below, which the analyzers do not see */
#pragma omp parallel num_threads(nt)
    {
        /* the longer of M and N is cut into near-equal parts of whole 16s */
        size_t i0, i1;
        thread_range(split_m ? m_ : n_, &i0, &i1);
        if (i0 < i1 && split_m)
            sgemm_rm(ta, tb, i1 - i0, n_, k_, alpha, ta ? A + i0 : A + i0 * la, la, B, lb, beta,
                     C + i0 * lc, lc);
        else if (i0 < i1)
            sgemm_rm(ta, tb, m_, i1 - i0, k_, alpha, A, la, tb ? B + i0 * lb : B + i0, lb, beta,
                     C + i0, lc);
    }
    blas_restore(prev);
}

/* ---- matmul_dx ----------------------------------------------------------------------- */
/* dx[:, k0:k0+kb] = dy W[:, k0:k0+kb]: tiles of kb columns of W go to the threads, so every
 * thread writes its own columns of dx. A tile is converted to f32 in blocks of nb rows of W
 * (the inner dimension), each used by sgemm calls of at most DX_MB rows of dy that add into
 * the tile's columns of dx (OpenBLAS measured fastest here with output blocks below ~700 KB
 * and inner dimensions below ~1024). */

#define DX_KB 256                       /* columns per tile, at most */
#define DX_NB 512                       /* rows of W per converted block */
#define DX_MB 256                       /* rows of dy per sgemm call */
#define DX_STACK_FLOATS ((size_t)16384) /* block on the stack when no scratch is had */

/* One tile of columns [k0, k0+kb), with buf [cap] for converted weights (cap >= kb). */
static void dx_tile(bool avx2, float *buf /* [cap] */, size_t cap, float *dx /* [M, K] */,
                    const float *dy /* [M, N] */, mc_wt w /* [N, K] */, size_t M, size_t N,
                    size_t K, size_t k0, size_t kb, bool accumulate) {
    size_t nb = w.dtype == MC_F32 ? (size_t)DX_NB : MC_MIN((size_t)DX_NB, cap / kb);
    for (size_t n0 = 0; n0 < N; n0 += nb) {
        size_t nn = MC_MIN(nb, N - n0), ldb = kb;
        float beta = accumulate || n0 > 0 ? 1.0f : 0.0f;
        const float *b = buf; /* [nn, ldb] */
        if (w.dtype == MC_F32) {
            b = (const float *)w.data + n0 * K + k0;
            ldb = K;
        } else {
            mc_cpu_convert_block(avx2, buf, w.data, w.dtype, K, n0, k0, nn, kb);
        }
        for (size_t m0 = 0; m0 < M; m0 += DX_MB)
            sgemm_rm(false, false, MC_MIN((size_t)DX_MB, M - m0), kb, nn, 1.0f, dy + m0 * N + n0, N,
                     b, ldb, beta, dx + m0 * K + k0, K);
    }
}

/* forward (mc_fast_matmul): out = x W^T (+ b).  backward: dx (+)= dy W. */
void mc_fast_matmul_dx(mc_backend *be, void *dx /* [M, K] */, const void *dy /* [M, N] */,
                       mc_wt w /* [N, K] */, int M, int N, int K, bool accumulate) {
    mc_cpu *cpu = be->impl;
    size_t m_ = (size_t)M, n_ = (size_t)N, k_ = (size_t)K;
    size_t nt = (size_t)team_threads(be), ntiles, kb, cap;
    bool avx2 = use_avx2(be);
    tr_scratch s = {NULL, false};
    int prev;
    if (M <= 0 || K <= 0) return;
    if (N <= 0) {
        if (!accumulate) memset(dx, 0, m_ * k_ * sizeof(float));
        return;
    }
    /* near-equal tiles of whole 8s, a multiple of the thread count when there are enough
     * columns */
    ntiles = (k_ + DX_KB - 1) / DX_KB;
    if (k_ >= nt * 8) ntiles = (ntiles + nt - 1) / nt * nt;
    kb = (k_ + ntiles - 1) / ntiles;
    kb = MC_MIN(k_, (kb + 7) & ~(size_t)7);
    ntiles = (k_ + kb - 1) / kb;
    cap = MC_MIN(n_, (size_t)DX_NB) * kb;
    if (w.dtype != MC_F32) (void)scratch_get(cpu, nt * cap, &s);
    if (m_ * n_ * k_ < GEMM_PAR_MIN) nt = 1;
    prev = blas_single();
    (void)nt; /* read by the omp clause below, which the analyzers do not see */
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, 1)
    for (size_t i = 0; i < ntiles; i++) {
        float local[DX_STACK_FLOATS]; /* [DX_STACK_FLOATS] when s.p is NULL */
        size_t k0 = i * kb;
        float *buf = s.p ? s.p + (size_t)omp_get_thread_num() * cap : local;
        dx_tile(avx2, buf, s.p ? cap : DX_STACK_FLOATS, dx, dy, w, m_, n_, k_, k0,
                MC_MIN(kb, k_ - k0), accumulate);
    }
    blas_restore(prev);
    if (s.p) scratch_put(cpu, &s);
}

/* ---- RMSNorm backward ------------------------------------------------------------------ */

/* Row sums for one row: *ss = sum x^2, *dot = sum dy w x (f32, 8 partial sums). */
static void rms_sums_portable(const float *x /* [n] */, const float *gy /* [n] */, mc_wt w,
                              size_t n, float *ss, float *dot) {
    float a[8] = {0}, b[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) {
            a[j] += x[i + j] * x[i + j];
            b[j] += gy[i + j] * mc_load_f32(w.data, w.dtype, i + j) * x[i + j];
        }
    for (; i < n; i++) {
        a[0] += x[i] * x[i];
        b[0] += gy[i] * mc_load_f32(w.data, w.dtype, i) * x[i];
    }
    *ss = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    *dot = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

/* dx += r w dy - x c for one row. */
static void rms_update_portable(float *gx /* [n] */, const float *x /* [n] */,
                                const float *gy /* [n] */, mc_wt w, size_t n, float r, float c) {
    for (size_t i = 0; i < n; i++) gx[i] += r * mc_load_f32(w.data, w.dtype, i) * gy[i] - x[i] * c;
}

#if MC_CPU_X86
MC_AVX2_INLINE void rms_row_avx2_impl(float *gx /* [n] */, const float *x /* [n] */,
                                      const float *gy /* [n] */, const void *w /* [n] */,
                                      mc_dtype dt, size_t n, float eps) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps(), rv, cv;
    size_t i = 0;
    float ss, dot, r, c;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        a = _mm256_fmadd_ps(xv, xv, a);
        b = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(gy + i), mc_ld8(w, dt, i)), xv, b);
    }
    ss = mc_hsum8(a);
    dot = mc_hsum8(b);
    for (size_t j = i; j < n; j++) {
        ss += x[j] * x[j];
        dot += gy[j] * mc_load_f32(w, dt, j) * x[j];
    }
    r = 1.0f / sqrtf(ss / (float)n + eps);
    c = r * r * r * (dot / (float)n);
    rv = _mm256_set1_ps(r);
    cv = _mm256_set1_ps(c);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 t = _mm256_mul_ps(_mm256_mul_ps(rv, mc_ld8(w, dt, i)), _mm256_loadu_ps(gy + i));
        t = _mm256_fnmadd_ps(_mm256_loadu_ps(x + i), cv, t);
        _mm256_storeu_ps(gx + i, _mm256_add_ps(_mm256_loadu_ps(gx + i), t));
    }
    for (; i < n; i++) gx[i] += r * mc_load_f32(w, dt, i) * gy[i] - x[i] * c;
}

static MC_AVX2 void rms_row_avx2(float *gx /* [n] */, const float *x /* [n] */,
                                 const float *gy /* [n] */, mc_wt w /* [n] */, size_t n,
                                 float eps) {
    switch (w.dtype) {
    case MC_BF16: rms_row_avx2_impl(gx, x, gy, w.data, MC_BF16, n, eps); break;
    case MC_F16: rms_row_avx2_impl(gx, x, gy, w.data, MC_F16, n, eps); break;
    case MC_F32: rms_row_avx2_impl(gx, x, gy, w.data, MC_F32, n, eps); break;
    }
}
#endif

/* forward (mc_fast_rmsnorm): r = 1.0f / sqrtf(ss / (float)D + eps); orow = (xr * r) * w.
 * backward: dx += r w dy - x r^3 mean(dy w x). */
void mc_fast_rmsnorm_backward(mc_backend *be, void *dx /* [T, D] += */, void *xn /* or NULL */,
                              const void *dy /* [T, D] */, const void *x /* [T, D] */,
                              mc_wt w /* [D] */, int T, int D, float eps) {
    float *gx = dx;
    const float *gy = dy, *xs = x;
    size_t d_ = (size_t)D;
    bool avx2 = use_avx2(be);
    (void)avx2;
    if (xn) mc_fast_rmsnorm(be, xn, x, w, T, D, eps); /* the forward itself: the same bits */
#pragma omp parallel for num_threads(par_threads(be, (size_t)T *d_)) schedule(static)
    for (int t = 0; t < T; t++) {
        size_t off = (size_t)t * d_;
        float ss, dot, r, c;
#if MC_CPU_X86
        if (avx2) {
            rms_row_avx2(gx + off, xs + off, gy + off, w, d_, eps);
            continue;
        }
#endif
        rms_sums_portable(xs + off, gy + off, w, d_, &ss, &dot);
        r = 1.0f / sqrtf(ss / (float)D + eps);
        c = r * r * r * (dot / (float)D);
        rms_update_portable(gx + off, xs + off, gy + off, w, d_, r, c);
    }
}

/* ---- RoPE backward --------------------------------------------------------------------- */

/* Largest head_dim with tables on the stack; larger heads use the reference kernel. */
/* forward (mc_fast_rope): y1 = x1 cos - x2 sin; y2 = x2 cos + x1 sin.
 * backward (rotation by -angle): dx1 = dy1 cos + dy2 sin; dx2 = dy2 cos - dy1 sin: the
 * forward kernel with the direction reversed, so the two agree with the reference bit for
 * bit. */
void mc_fast_rope_backward(mc_backend *be, void *dx /* [T, ldx] */, int ldx,
                           const int32_t *pos /* [T] */, int T, int H, int hd, float theta) {
    mc_fast_rope_dir(be, dx, ldx, pos, T, H, hd, theta, -1.0f);
}

/* ---- exp over arrays ------------------------------------------------------------------ */

/* y[i] = exp(x[i] - sub) for i < n; returns the sum of the y[i]. In place allowed. */
static float exp_sub_sum_portable(float *y /* [n] */, const float *x /* [n] */, size_t n,
                                  float sub) {
    float s = 0;
    for (size_t i = 0; i < n; i++) {
        y[i] = expf(x[i] - sub);
        s += y[i];
    }
    return s;
}

/* Largest of x[0..n), -INFINITY when n == 0. */
static float max_portable(const float *x /* [n] */, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

#if MC_CPU_X86
static MC_AVX2 float exp_sub_sum_avx2(float *y /* [n] */, const float *x /* [n] */, size_t n,
                                      float sub) {
    __m256 sv = _mm256_setzero_ps(), bv = _mm256_set1_ps(sub);
    size_t i = 0;
    float s;
    for (; i + 8 <= n; i += 8) {
        __m256 e = mc_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), bv));
        _mm256_storeu_ps(y + i, e);
        sv = _mm256_add_ps(sv, e);
    }
    s = mc_hsum8(sv);
    for (; i < n; i++) {
        y[i] = expf(x[i] - sub);
        s += y[i];
    }
    return s;
}

static MC_AVX2 float max_avx2(const float *x /* [n] */, size_t n) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    float m;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    m = mc_hmax8(mv);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* y[i] = exp(x[i] - sub[i]) for i < n (in place allowed). */
static MC_AVX2 void exp_subv_avx2(float *y /* [n] */, const float *x /* [n] */,
                                  const float *sub /* [n] */, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         mc_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(sub + i))));
    for (; i < n; i++) y[i] = expf(x[i] - sub[i]);
}
#endif

static float exp_sub_sum(bool avx2, float *y, const float *x, size_t n, float sub) {
#if MC_CPU_X86
    if (avx2) return exp_sub_sum_avx2(y, x, n, sub);
#endif
    (void)avx2;
    return exp_sub_sum_portable(y, x, n, sub);
}

static float row_max(bool avx2, const float *x, size_t n) {
#if MC_CPU_X86
    if (avx2) return max_avx2(x, n);
#endif
    (void)avx2;
    return max_portable(x, n);
}

static void exp_subv(bool avx2, float *y, const float *x, const float *sub, size_t n) {
#if MC_CPU_X86
    if (avx2) {
        exp_subv_avx2(y, x, sub, n);
        return;
    }
#endif
    (void)avx2;
    for (size_t i = 0; i < n; i++) y[i] = expf(x[i] - sub[i]);
}

/* ---- attention backward ----------------------------------------------------------------- */
/* Two phases over blocks of AB rows, every product an sgemm on [AB, T] score tiles:
 *  1. items (query head h, block of query rows): S = scale Q K^T, P = softmax (causal),
 *     dP = dO V^T, D_i = sum_j P_ij dP_ij, dS = P (dP - D), dQ = scale dS K. Keeps the
 *     row statistics lse_i and D_i.
 *  2. items (kv head g, block of keys): for each query head of the group and the rows at
 *     or after the block, P^T = exp(scale K Q^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
 *     dV = sum P^T dO, dK = scale sum dS^T Q.
 * Each item writes only its own rows of dq, or of dk and dv, so there are no races and
 * the result does not depend on which thread runs which item. */

#define AB 64 /* rows (phase 1) or keys (phase 2) per item */

typedef struct attb_args {
    float *dq, *dk, *dv;           /* [T, qdim], [T, kvdim] x2 */
    const float *dout, *q, *k, *v; /* [T, qdim], [T, qdim], [T, kvdim] x2 */
    float *lse, *dd;               /* [Hq, T] each: log-sum-exp and D of each row */
    int T, Hq, Hkv, hd, group;
    size_t qdim, kvdim;
    float scale;
    bool avx2;
} attb_args;

/* Phase 1 for query head h, rows [i0, i0 + nr); s, dp: [AB, T] scratch. */
static void attb_rows(const attb_args *a, int h, int i0, int nr, float *s, float *dp) {
    size_t T = (size_t)a->T, hd = (size_t)a->hd;
    int nk = i0 + nr;                                                  /* keys 0..i0+nr-1 */
    const float *qh = a->q + (size_t)i0 * a->qdim + (size_t)h * hd;    /* [nr, qdim] */
    const float *gh = a->dout + (size_t)i0 * a->qdim + (size_t)h * hd; /* [nr, qdim] */
    const float *kg = a->k + (size_t)(h / a->group) * hd;              /* [nk, kvdim] */
    const float *vg = a->v + (size_t)(h / a->group) * hd;              /* [nk, kvdim] */
    sgemm_rm(false, true, (size_t)nr, (size_t)nk, hd, a->scale, qh, a->qdim, kg, a->kvdim, 0.0f, s,
             T);
    sgemm_rm(false, true, (size_t)nr, (size_t)nk, hd, 1.0f, gh, a->qdim, vg, a->kvdim, 0.0f, dp, T);
    for (int r = 0; r < nr; r++) {
        size_t nv = (size_t)i0 + (size_t)r + 1; /* causal: keys 0..i0+r */
        float *sr = s + (size_t)r * T, *dr = dp + (size_t)r * T;
        float mx = row_max(a->avx2, sr, nv), inv, dsum = 0;
        float sum = exp_sub_sum(a->avx2, sr, sr, nv, mx);
        inv = 1.0f / sum;
        for (size_t j = 0; j < nv; j++) {
            sr[j] *= inv;
            dsum += sr[j] * dr[j];
        }
        for (size_t j = 0; j < nv; j++) dr[j] = sr[j] * (dr[j] - dsum);
        for (size_t j = nv; j < (size_t)nk; j++) dr[j] = 0.0f;
        a->lse[(size_t)h * T + (size_t)(i0 + r)] = mx + logf(sum);
        a->dd[(size_t)h * T + (size_t)(i0 + r)] = dsum;
    }
    sgemm_rm(false, false, (size_t)nr, hd, (size_t)nk, a->scale, dp, T, kg, a->kvdim, 0.0f,
             a->dq + (size_t)i0 * a->qdim + (size_t)h * hd, a->qdim);
}

/* Phase 2 for kv head g, keys [j0, j0 + nc); s, dp: [AB, T] scratch. */
static void attb_keys(const attb_args *a, int g, int j0, int nc, float *s, float *dp) {
    size_t T = (size_t)a->T, hd = (size_t)a->hd;
    int ni = a->T - j0; /* query rows j0..T-1 see these keys */
    const float *kb = a->k + (size_t)j0 * a->kvdim + (size_t)g * hd; /* [nc, kvdim] */
    const float *vb = a->v + (size_t)j0 * a->kvdim + (size_t)g * hd; /* [nc, kvdim] */
    float *dkb = a->dk + (size_t)j0 * a->kvdim + (size_t)g * hd;     /* [nc, kvdim] */
    float *dvb = a->dv + (size_t)j0 * a->kvdim + (size_t)g * hd;     /* [nc, kvdim] */
    for (int hh = 0; hh < a->group; hh++) {
        int h = g * a->group + hh;
        const float *qh = a->q + (size_t)j0 * a->qdim + (size_t)h * hd;    /* [ni, qdim] */
        const float *gh = a->dout + (size_t)j0 * a->qdim + (size_t)h * hd; /* [ni, qdim] */
        const float *lse = a->lse + (size_t)h * T + (size_t)j0;            /* [ni] */
        const float *dd = a->dd + (size_t)h * T + (size_t)j0;              /* [ni] */
        float beta = hh > 0 ? 1.0f : 0.0f;
        sgemm_rm(false, true, (size_t)nc, (size_t)ni, hd, a->scale, kb, a->kvdim, qh, a->qdim, 0.0f,
                 s, T);
        sgemm_rm(false, true, (size_t)nc, (size_t)ni, hd, 1.0f, vb, a->kvdim, gh, a->qdim, 0.0f, dp,
                 T);
        for (int c = 0; c < nc; c++) {
            float *sr = s + (size_t)c * T, *dr = dp + (size_t)c * T;
            /* key j0 + c is seen by rows i >= j0 + c, i.e. columns r >= c */
            for (int r = 0; r < c; r++) sr[r] = dr[r] = 0.0f;
            exp_subv(a->avx2, sr + c, sr + c, lse + c, (size_t)(ni - c));
            for (int r = c; r < ni; r++) dr[r] = sr[r] * (dr[r] - dd[r]);
        }
        sgemm_rm(false, false, (size_t)nc, hd, (size_t)ni, 1.0f, s, T, gh, a->qdim, beta, dvb,
                 a->kvdim);
        sgemm_rm(false, false, (size_t)nc, hd, (size_t)ni, a->scale, dp, T, qh, a->qdim, beta, dkb,
                 a->kvdim);
    }
}

/* forward (mc_fast_attention, pos0 = 0): out_i = sum_j softmax_j<=i(scale q_i . k_j) v_j.
 * backward: dv_j = sum_i p_ij dout_i; ds_ij = p_ij (dout_i . v_j - D_i);
 * dq_i = scale sum_j ds_ij k_j; dk_j = scale sum_i ds_ij q_i (overwrite). */
void mc_fast_attention_backward(mc_backend *be, void *dq /* [T, Hq*hd] */,
                                void *dk /* [T, Hkv*hd] */, void *dv /* [T, Hkv*hd] */,
                                const void *dout /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                                const void *k /* [T, Hkv*hd] */, const void *v /* [T, Hkv*hd] */,
                                int T, int Hq, int Hkv, int hd) {
    mc_cpu *cpu = be->impl;
    size_t T_ = (size_t)T, nstat = (size_t)Hq * T_, per = 2 * (size_t)AB * T_;
    int nt = team_threads(be), nrb = (T + AB - 1) / AB;
    size_t work = T_ * T_ * (size_t)Hq * (size_t)hd;
    tr_scratch s;
    attb_args a;
    int prev;
    if (T <= 0) return;
    if (!scratch_get(cpu, 2 * nstat + (size_t)nt * per, &s)) { /* no memory: plain loops */
        mc_ref_attention_backward(be, dq, dk, dv, dout, q, k, v, T, Hq, Hkv, hd);
        return;
    }
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    a.dout = dout;
    a.q = q;
    a.k = k;
    a.v = v;
    a.lse = s.p;
    a.dd = s.p + nstat;
    a.T = T;
    a.Hq = Hq;
    a.Hkv = Hkv;
    a.hd = hd;
    a.group = Hq / Hkv;
    a.qdim = (size_t)Hq * (size_t)hd;
    a.kvdim = (size_t)Hkv * (size_t)hd;
    a.scale = 1.0f / sqrtf((float)hd);
    a.avx2 = use_avx2(be);
    if (work < TR_PAR_MIN * 8) nt = 1;
    prev = blas_single();
    (void)nt; /* read by the omp clause below, which the analyzers do not see */
#pragma omp parallel num_threads(nt)
    {
        float *s1 = s.p + 2 * nstat + (size_t)omp_get_thread_num() * per; /* [AB, T] */
        float *s2 = s1 + (size_t)AB * T_;                                 /* [AB, T] */
        /* the last row blocks see the most keys: hand them out first */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < Hq * nrb; i++) {
            int rb = nrb - 1 - i / Hq, h = i % Hq;
            attb_rows(&a, h, rb * AB, MC_MIN(AB, T - rb * AB), s1, s2);
        }
        /* implicit barrier: lse and D are complete */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < Hkv * nrb; i++) {
            int cb = i / Hkv, g = i % Hkv;
            attb_keys(&a, g, cb * AB, MC_MIN(AB, T - cb * AB), s1, s2);
        }
    }
    blas_restore(prev);
    scratch_put(cpu, &s);
}

/* ---- SwiGLU backward ------------------------------------------------------------------- */

/* forward: out = silu(g) * u, silu(g) = g / (1 + exp(-g)).
 * backward: dgate = dout * u * s (1 + g (1 - s)), dup = dout * silu(g), s = sigmoid(g). */
static void swiglu_bwd_portable(float *dg /* [n] */, float *du /* [n] */,
                                float *h /* [n] or NULL */, const float *go /* [n] */,
                                const float *g /* [n] */, const float *u /* [n] */, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], o = go[i];
        float e = 1.0f + expf(-gi);
        float s = 1.0f / e, silu = gi / e;
        float gs = gi * (1.0f - s);
        float dsilu = s * (1.0f + gs);
        if (h) h[i] = silu * u[i];
        du[i] = o * silu;
        dg[i] = o * u[i] * dsilu;
    }
}

#if MC_CPU_X86
static MC_AVX2 void swiglu_bwd_avx2(float *dg /* [n] */, float *du /* [n] */,
                                    float *h /* [n] or NULL */, const float *go /* [n] */,
                                    const float *g /* [n] */, const float *u /* [n] */, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), ov = _mm256_loadu_ps(go + i);
        __m256 e = _mm256_add_ps(one, mc_exp8(_mm256_xor_ps(gv, sign)));
        __m256 s = _mm256_div_ps(one, e), silu = _mm256_div_ps(gv, e);
        __m256 ds = _mm256_mul_ps(s, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one));
        __m256 uv = _mm256_loadu_ps(u + i);
        if (h) _mm256_storeu_ps(h + i, _mm256_mul_ps(silu, uv));
        _mm256_storeu_ps(du + i, _mm256_mul_ps(ov, silu));
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(ov, uv), ds));
    }
    swiglu_bwd_portable(dg + i, du + i, h ? h + i : NULL, go + i, g + i, u + i, n - i);
}
#endif

void mc_fast_swiglu_backward(mc_backend *be, void *dgate /* [n] */, void *dup /* [n] */,
                             void *h /* [n] or NULL */, const void *dout /* [n] */,
                             const void *gate /* [n] */, const void *up /* [n] */, size_t n) {
    float *dg = dgate, *du = dup, *hs = h;
    const float *go = dout, *g = gate, *u = up;
    bool avx2 = use_avx2(be);
    (void)avx2;
#pragma omp parallel num_threads(par_threads(be, n))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
#if MC_CPU_X86
        float *h0 = hs ? hs + i0 : NULL;
        if (avx2)
            swiglu_bwd_avx2(dg + i0, du + i0, h0, go + i0, g + i0, u + i0, i1 - i0);
        else
            swiglu_bwd_portable(dg + i0, du + i0, h0, go + i0, g + i0, u + i0, i1 - i0);
#else
        swiglu_bwd_portable(dg + i0, du + i0, hs ? hs + i0 : NULL, go + i0, g + i0, u + i0,
                            i1 - i0);
#endif
    }
}

/* ---- fused linear cross-entropy --------------------------------------------------------- */
/* Rows with a target are gathered XR at a time into a chunk. For a chunk, the vocabulary is
 * cut into tiles of vb rows of W, handed out to the threads in contiguous ranges. A thread
 * converts its tile to f32 once and uses it twice: logits = hc tile^T (sgemm), folded into a
 * running softmax state per row (max m, sum l of exp(logit - m)), then dhp += exp(logits - m)
 * tile (sgemm), with dhp rescaled whenever m grows. At the end the threads' states are merged
 * per row: lse = log sum_t l_t e^(m_t - M) + M, dh = grad_scale (sum_t e^(m_t - M) dhp_t / L
 * - W[target]). Only [XR, vb] logits exist per thread. */

#define XR 128              /* rows per chunk */
#define XV_FLOATS (1 << 17) /* target size of a converted W tile, in floats (512 KB) */

typedef struct xent_args {
    const float *hc;                  /* [rc, D] rows of the chunk */
    const int32_t *tg;                /* [rc] their targets */
    float *tl;                        /* [rc] their target logits */
    mc_wt w;                          /* [V, D] */
    size_t rc, D, V, vb, ntiles, per; /* per: floats of scratch per thread */
    float *scr;                       /* [team, per] */
    bool grad, avx2;
} xent_args;

/* Per-thread state inside its scratch block. */
typedef struct xent_state {
    float *wt;  /* [vb, D] converted tile (unused when W is f32) */
    float *lg;  /* [rc, vb] logits, then exp(logits - m) */
    float *dhp; /* [rc, D] unnormalised gradient rows (when grad) */
    float *m;   /* [rc] running max */
    float *l;   /* [rc] running sum of exp(logit - m) */
} xent_state;

static xent_state xent_state_at(const xent_args *a, int t) {
    xent_state st;
    float *p = a->scr + (size_t)t * a->per;
    st.wt = p;
    p += a->w.dtype == MC_F32 ? 0 : a->vb * a->D;
    st.lg = p;
    p += XR * a->vb;
    st.dhp = p;
    p += a->grad ? XR * a->D : 0;
    st.m = p;
    st.l = p + XR;
    return st;
}

/* Floats of scratch per thread for tiles of vb rows. */
static size_t xent_per_thread(mc_dtype t, size_t vb, size_t D, bool grad) {
    return (t == MC_F32 ? 0 : vb * D) + XR * vb + (grad ? XR * D : 0) + 2 * XR + 16;
}

/* Folds a tile's logits lg [rc, nv] (row stride vb; vocabulary rows v0..v0+nv) into the
 * running state, replacing them by exp(logit - m). */
static void xent_fold(const xent_args *a, const xent_state *st, size_t v0, size_t nv) {
    for (size_t r = 0; r < a->rc; r++) {
        float *lr = st->lg + r * a->vb; /* [nv] */
        float bm = row_max(a->avx2, lr, nv);
        int64_t tg = a->tg[r];
        if (tg >= (int64_t)v0 && tg < (int64_t)(v0 + nv)) a->tl[r] = lr[(size_t)tg - v0];
        if (bm > st->m[r]) {
            if (st->m[r] > -INFINITY) { /* rescale what earlier tiles added */
                float corr = expf(st->m[r] - bm);
                st->l[r] *= corr;
                if (a->grad) {
                    float *dr = st->dhp + r * a->D; /* [D] */
                    for (size_t d = 0; d < a->D; d++) dr[d] *= corr;
                }
            }
            st->m[r] = bm;
        }
        st->l[r] += exp_sub_sum(a->avx2, lr, lr, nv, st->m[r]);
    }
}

/* The tiles [t0, t1) of one thread. */
static void xent_tiles(const xent_args *a, const xent_state *st, size_t t0, size_t t1) {
    size_t D = a->D;
    for (size_t r = 0; r < a->rc; r++) {
        st->m[r] = -INFINITY;
        st->l[r] = 0.0f;
    }
    if (a->grad) memset(st->dhp, 0, a->rc * D * sizeof(float));
    for (size_t ti = t0; ti < t1; ti++) {
        size_t v0 = ti * a->vb, nv = MC_MIN(a->vb, a->V - v0);
        const float *wt = (const float *)a->w.data + v0 * D; /* [nv, D] */
        if (a->w.dtype != MC_F32) {
            mc_cpu_convert_block(a->avx2, st->wt, a->w.data, a->w.dtype, D, v0, 0, nv, D);
            wt = st->wt;
        }
        sgemm_rm(false, true, a->rc, nv, D, 1.0f, a->hc, D, wt, D, 0.0f, st->lg, a->vb);
        xent_fold(a, st, v0, nv);
        if (a->grad)
            sgemm_rm(false, false, a->rc, D, nv, 1.0f, st->lg, a->vb, wt, D, 1.0f, st->dhp, D);
    }
}

/* Merges the team's states for rows [r0, r1) of the chunk: loss terms into rloss, gradient
 * rows into dh (rows listed in idx). */
static void xent_merge(const xent_args *a, int team, size_t r0, size_t r1, double *rloss /* [rc] */,
                       float *dh /* [T, D] or NULL */, const int *idx /* [rc] */,
                       float grad_scale) {
    float coef[TR_MAX_TEAM];
    for (size_t r = r0; r < r1; r++) {
        float mx = -INFINITY;
        double sum = 0, lse;
        for (int t = 0; t < team; t++) {
            xent_state st = xent_state_at(a, t);
            mx = st.m[r] > mx ? st.m[r] : mx;
        }
        for (int t = 0; t < team; t++) {
            xent_state st = xent_state_at(a, t);
            if (st.m[r] > -INFINITY) sum += (double)st.l[r] * exp((double)st.m[r] - (double)mx);
        }
        /* sum >= 1 (the largest logit adds e^0 in the state of its thread), or NaN */
        /* cppcheck-suppress invalidFunctionArg */
        lse = (double)mx + log(sum);
        rloss[r] = lse - (double)a->tl[r];
        if (!dh) continue;
        for (int t = 0; t < team; t++) {
            xent_state st = xent_state_at(a, t);
            coef[t] = st.m[r] > -INFINITY ? (float)(exp((double)st.m[r] - lse)) : 0.0f;
        }
        {
            float *out = dh + (size_t)idx[r] * a->D; /* [D] */
            size_t tgt = (size_t)a->tg[r];
            for (size_t d = 0; d < a->D; d++) out[d] = 0.0f;
            for (int t = 0; t < team; t++) {
                xent_state st = xent_state_at(a, t);
                const float *src = st.dhp + r * a->D;
                float c = coef[t];
                if (c != 0.0f)
                    for (size_t d = 0; d < a->D; d++) out[d] += c * src[d];
            }
            for (size_t d = 0; d < a->D; d++)
                out[d] = grad_scale * (out[d] - mc_load_f32(a->w.data, a->w.dtype, tgt * a->D + d));
        }
    }
}

/* One chunk of rc rows (already gathered into a->hc); adds the chunk's loss to *loss. */
static void xent_chunk(xent_args *a, int nt, float *dh, const int *idx, float grad_scale,
                       double *loss) {
    double rloss[XR];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        xent_state st = xent_state_at(a, t);
        size_t t0 = a->ntiles * (size_t)t / (size_t)team;
        size_t t1 = a->ntiles * (size_t)(t + 1) / (size_t)team;
        size_t r0 = a->rc * (size_t)t / (size_t)team, r1 = a->rc * (size_t)(t + 1) / (size_t)team;
        xent_tiles(a, &st, t0, t1);
#pragma omp barrier
        xent_merge(a, team, r0, r1, rloss, dh, idx, grad_scale);
    }
    for (size_t r = 0; r < a->rc; r++) *loss += rloss[r];
}

mc_status mc_fast_linear_xent(mc_backend *be, void *dh /* [T, D] or NULL */, double *loss_sum,
                              const void *h /* [T, D] */, mc_wt w /* [V, D] */,
                              const int32_t *targets /* [T] */, int T, int D, int V,
                              float grad_scale) {
    mc_cpu *cpu = be->impl;
    const float *hs = h;
    float *g = dh;
    size_t d_ = (size_t)D, v_ = (size_t)V, vb, per, total, nvalid = 0, nchunks, per_chunk;
    int nt = team_threads(be), idx[XR], prev;
    int32_t tg[XR];
    double loss = 0;
    tr_scratch s;
    xent_args a;
    int t = 0;
    if (T <= 0) return MC_OK;
    vb = MC_MAX((size_t)16,
                MC_MIN((size_t)512, ((size_t)XV_FLOATS / MC_MAX(d_, (size_t)1)) & ~(size_t)15));
    vb = MC_MIN(vb, v_);
    per = xent_per_thread(w.dtype, vb, d_, g != NULL);
    /* [XR, D] chunk rows, [XR] target logits, then per-thread blocks */
    total = XR * d_ + XR + (size_t)nt * per;
    if (!scratch_get(cpu, total, &s))
        return mc_fail(MC_ERR_OOM, "linear_xent: out of memory for %zu floats of scratch", total);
    a.hc = s.p;
    a.tl = s.p + XR * d_;
    a.scr = s.p + XR * d_ + XR;
    a.tg = tg;
    a.w = w;
    a.D = d_;
    a.V = v_;
    a.vb = vb;
    a.ntiles = (v_ + vb - 1) / vb;
    a.per = per;
    a.grad = g != NULL;
    a.avx2 = use_avx2(be);
    /* chunks of near-equal size: the rows with a target, in as few chunks of XR as fit */
    for (int i = 0; i < T; i++) nvalid += targets[i] >= 0;
    nchunks = (nvalid + XR - 1) / XR;
    per_chunk = nchunks ? (nvalid + nchunks - 1) / nchunks : XR;
    prev = blas_single();
    while (t < T) {
        size_t rc = 0;
        /* gather the next rows with a target; rows without one get dh = 0 */
        for (; t < T && rc < per_chunk; t++) {
            if (targets[t] < 0) {
                if (g) memset(g + (size_t)t * d_, 0, d_ * sizeof(float));
                continue;
            }
            assert(targets[t] < V);
            memcpy(s.p + rc * d_, hs + (size_t)t * d_, d_ * sizeof(float));
            idx[rc] = t;
            tg[rc] = targets[t];
            rc++;
        }
        if (rc == 0) break;
        a.rc = rc;
        xent_chunk(&a, nt, g, idx, grad_scale, &loss);
    }
    blas_restore(prev);
    scratch_put(cpu, &s);
    *loss_sum += loss;
    return MC_OK;
}

/* ---- dropout, AdamW, reductions ---------------------------------------------------------- */

/* Dropout over [i0, i1): the reference's mask as an integer test, (hash >> 11) >= thr with
 * thr = ceil(p 2^53), which is exact (hash >> 11 is below 2^53 and p 2^53 is a double). */
static void dropout_portable(float *o /* [n] */, const float *x /* [n] */, size_t i0, size_t i1,
                             uint64_t thr, float scale, uint64_t seed) {
    for (size_t i = i0; i < i1; i++)
        o[i] = (mc_dropout_hash(seed, i) >> 11) >= thr ? x[i] * scale : 0.0f;
}

#if MC_CPU_X86
/* Low 64 bits of a * c per 64-bit lane, from 32-bit products (AVX2 has no 64-bit mullo). */
MC_AVX2_INLINE __m256i mul64_avx2(__m256i a, uint64_t c) {
    __m256i clo = _mm256_set1_epi64x((long long)(c & 0xffffffffu));
    __m256i chi = _mm256_set1_epi64x((long long)(c >> 32));
    __m256i lo = _mm256_mul_epu32(a, clo);
    __m256i cross =
        _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), clo), _mm256_mul_epu32(a, chi));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

/* Keep mask of the 4 elements whose counters (element index + 1) are in ctr: all ones
 * where mc_dropout_hash(seed, index) >> 11 >= thr (thrm1 = thr - 1). */
MC_AVX2_INLINE __m256i keep4_avx2(__m256i ctr, __m256i seedv, __m256i thrm1) {
    __m256i z = _mm256_add_epi64(seedv, mul64_avx2(ctr, 0x9e3779b97f4a7c15ull));
    z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xbf58476d1ce4e5b9ull);
    z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94d049bb133111ebull);
    z = _mm256_srli_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 31)), 11);
    return _mm256_cmpgt_epi64(z, thrm1); /* z >= thr, both below 2^63 */
}

static MC_AVX2 void dropout_avx2(float *o /* [n] */, const float *x /* [n] */, size_t i0, size_t i1,
                                 uint64_t thr, float scale, uint64_t seed) {
    const __m256i seedv = _mm256_set1_epi64x((long long)seed);
    const __m256i thrm1 = _mm256_set1_epi64x((long long)thr - 1);
    const __m256i four = _mm256_set1_epi64x(4), eight = _mm256_set1_epi64x(8);
    const __m256 sv = _mm256_set1_ps(scale);
    size_t i = i0;
    /* counters are i + 1 (mc_dropout_hash) */
    __m256i c0 =
        _mm256_add_epi64(_mm256_set1_epi64x((long long)i0 + 1), _mm256_set_epi64x(3, 2, 1, 0));
    for (; i + 8 <= i1; i += 8) {
        __m256i k0 = keep4_avx2(c0, seedv, thrm1);
        __m256i k1 = keep4_avx2(_mm256_add_epi64(c0, four), seedv, thrm1);
        /* the low 32 bits of each 64-bit mask, in element order */
        __m256 m = _mm256_shuffle_ps(_mm256_castsi256_ps(k0), _mm256_castsi256_ps(k1),
                                     _MM_SHUFFLE(2, 0, 2, 0));
        m = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), _MM_SHUFFLE(3, 1, 2, 0)));
        _mm256_storeu_ps(o + i, _mm256_and_ps(m, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv)));
        c0 = _mm256_add_epi64(c0, eight);
    }
    dropout_portable(o, x, i, i1, thr, scale, seed);
}
#endif

/* Same mask and arithmetic as mc_ref_dropout (bit for bit). */
void mc_fast_dropout(mc_backend *be, void *out /* [n] */, const void *x /* [n] */, size_t n,
                     float p, uint64_t seed) {
    float *o = out;
    const float *xs = x;
    float scale = 1.0f / (1.0f - p);
    uint64_t thr = (uint64_t)ceil((double)p * 0x1.0p53);
    bool avx2 = use_avx2(be);
    (void)avx2;
    if (p <= 0.0f) {
        if (o != xs) memmove(o, xs, n * sizeof(float));
        return;
    }
#pragma omp parallel num_threads(par_threads(be, n / 4))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
#if MC_CPU_X86
        if (avx2)
            dropout_avx2(o, xs, i0, i1, thr, scale, seed);
        else
            dropout_portable(o, xs, i0, i1, thr, scale, seed);
#else
        dropout_portable(o, xs, i0, i1, thr, scale, seed);
#endif
    }
}

#if MC_CPU_X86
/* The same operations 8 at a time (IEEE mul/add/div/sqrt round the same way; no FMA). */
static MC_AVX2 void adamw_avx2(float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                               float *v /* [n] */, size_t i0, size_t i1, const float *k /* [7] */) {
    const __m256 decay = _mm256_set1_ps(k[0]), c1 = _mm256_set1_ps(k[1]), b2 = _mm256_set1_ps(k[2]);
    const __m256 c2 = _mm256_set1_ps(k[3]), bc2s = _mm256_set1_ps(k[4]), eps = _mm256_set1_ps(k[5]);
    const __m256 neg_step = _mm256_set1_ps(k[6]);
    size_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 gi = _mm256_loadu_ps(g + i), mo = _mm256_loadu_ps(m + i);
        __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
        __m256 mi = _mm256_add_ps(mo, _mm256_mul_ps(c1, _mm256_sub_ps(gi, mo)));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), b2),
                                  _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2s), eps);
        __m256 upd = _mm256_div_ps(_mm256_mul_ps(neg_step, mi), denom);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, _mm256_add_ps(pi, upd));
    }
    mc_adamw_range(p, g, m, v, i, i1, k);
}
#endif

/* Same arithmetic as mc_ref_adamw (bit for bit). */
void mc_fast_adamw(mc_backend *be, float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                   float *v /* [n] */, size_t n, float lr, float b1, float b2, float eps, float wd,
                   int step) {
    float k[7]; /* decay, 1 - b1, b2, 1 - b2, sqrt(bc2), eps, -lr / bc1 */
    bool avx2 = use_avx2(be);
    (void)avx2;
    mc_adamw_constants(k, lr, b1, b2, eps, wd, step);
#pragma omp parallel num_threads(par_threads(be, n / 2))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
#if MC_CPU_X86
        if (avx2)
            adamw_avx2(p, g, m, v, i0, i1, k);
        else
            mc_adamw_range(p, g, m, v, i0, i1, k);
#else
        mc_adamw_range(p, g, m, v, i0, i1, k);
#endif
    }
}

static double sumsq_portable(const float *x /* [n] */, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (size_t j = 0; j < 4; j++) s[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < n; i++) s[0] += (double)x[i] * (double)x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

#if MC_CPU_X86
static MC_AVX2 double sumsq_avx2(const float *x /* [n] */, size_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    __m128d h;
    size_t i = 0;
    double s;
    for (; i + 8 <= n; i += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        __m256d hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    a0 = _mm256_add_pd(a0, a1);
    h = _mm_add_pd(_mm256_castpd256_pd128(a0), _mm256_extractf128_pd(a0, 1));
    s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}
#endif

/* Partial sums per thread, added in thread order (the same result on every run). */
double mc_fast_sumsq_f32(mc_backend *be, const float *x /* [n] */, size_t n) {
    double part[TR_MAX_TEAM], s = 0;
    int used = 1;
    bool avx2 = use_avx2(be);
    (void)avx2;
#pragma omp parallel num_threads(par_threads(be, n))
    {
        size_t i0, i1;
        double ps;
        thread_range(n, &i0, &i1);
#if MC_CPU_X86
        ps = avx2 ? sumsq_avx2(x + i0, i1 - i0) : sumsq_portable(x + i0, i1 - i0);
#else
        ps = sumsq_portable(x + i0, i1 - i0);
#endif
        part[omp_get_thread_num()] = ps;
#pragma omp single
        used = omp_get_num_threads();
    }
    for (int t = 0; t < used; t++) s += part[t];
    return s;
}

void mc_fast_scale_f32(mc_backend *be, float *x /* [n] */, size_t n, float alpha) {
#pragma omp parallel num_threads(par_threads(be, n))
    {
        size_t i0, i1;
        thread_range(n, &i0, &i1);
        for (size_t i = i0; i < i1; i++) x[i] *= alpha;
    }
}

void mc_fast_zero(mc_backend *be, void *p /* [bytes] */, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

/* ---- installation ------------------------------------------------------------------------- */

void mc_cpu_install_train_ops(mc_backend *be, bool reference) {
    if (reference) {
        be->gemm_f32 = mc_ref_gemm_f32;
        be->matmul_dx = mc_ref_matmul_dx;
        be->rmsnorm_backward = mc_ref_rmsnorm_backward;
        be->rope_backward = mc_ref_rope_backward;
        be->attention_backward = mc_ref_attention_backward;
        be->swiglu_backward = mc_ref_swiglu_backward;
        be->linear_xent = mc_ref_linear_xent;
        be->dropout = mc_ref_dropout;
        be->adamw = mc_ref_adamw;
        be->sumsq_f32 = mc_ref_sumsq_f32;
        be->scale_f32 = mc_ref_scale_f32;
        be->zero = mc_ref_zero;
        return;
    }
    be->gemm_f32 = mc_fast_gemm_f32;
    be->matmul_dx = mc_fast_matmul_dx;
    be->rmsnorm_backward = mc_fast_rmsnorm_backward;
    be->rope_backward = mc_fast_rope_backward;
    be->attention_backward = mc_fast_attention_backward;
    be->swiglu_backward = mc_fast_swiglu_backward;
    be->linear_xent = mc_fast_linear_xent;
    be->dropout = mc_fast_dropout;
    be->adamw = mc_fast_adamw;
    be->sumsq_f32 = mc_fast_sumsq_f32;
    be->scale_f32 = mc_fast_scale_f32;
    be->zero = mc_fast_zero;
}
