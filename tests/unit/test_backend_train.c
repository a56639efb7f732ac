/* test_backend_train.c - the CPU training ops: every backward of the reference kernels
 * against central finite differences of the forward it differentiates (the reference
 * forward kernels), linear_xent against finite differences of its own loss, every fast
 * kernel (AVX2 and portable variants, several thread counts) against its reference on
 * awkward sizes, with weights in bf16/f16/f32 and the aliasing the contract allows, the
 * scratch fallbacks, AdamW against a double-precision replay of torch's formulas, and the
 * dropout mask's determinism and keep rate. Overwritten outputs are poisoned with NaN first,
 * so an element left unwritten shows up. */
#include "backend_test_util.h"
#include "test.h"

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_train.h"

#include <omp.h>

/* ---- helpers -------------------------------------------------------------------------- */

static float *fdup(const float *x, size_t n) {
    float *p = falloc(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* Checks a[i] == b[i] exactly for i < n (NaN equals NaN); prints the first difference. */
static void check_same(const char *what, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i]) && !(isnan(a[i]) && isnan(b[i]))) {
            fprintf(stderr, "%s: element %zu is %.9g, expected %.9g\n", what, i, (double)a[i],
                    (double)b[i]);
            t_checks_failed++;
            return;
        }
}

/* Counts NaNs in x[0..n) and reports the first (an element the op should have written). */
static void check_no_nan(const char *what, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isnan(x[i])) {
            fprintf(stderr, "%s: element %zu not written (NaN)\n", what, i);
            t_checks_failed++;
            return;
        }
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* ---- finite differences ---------------------------------------------------------------- */

/* A scalar loss of the parameter vector x. */
typedef double (*loss_fn)(const void *ctx, const float *x);

/* g[i] = (L(x + e_i eps) - L(x - e_i eps)) / (actual step), central differences. */
static void fd_grad(loss_fn f, const void *ctx, float *x, size_t n, float eps, float *g) {
    for (size_t i = 0; i < n; i++) {
        float save = x[i], xp = save + eps, xm = save - eps;
        double lp, lm;
        x[i] = xp;
        lp = f(ctx, x);
        x[i] = xm;
        lm = f(ctx, x);
        x[i] = save;
        g[i] = (float)((lp - lm) / ((double)xp - (double)xm));
    }
}

/* Checks an analytic gradient against finite differences: relative L2 below tol. */
#define CHECK_GRAD(ana, num, n) CHECK_REL_L2((ana), (num), (n), 1e-2)

/* ---- setup ----------------------------------------------------------------------------- */

static void test_create(void) {
    create_backends();
    mc_cpu_install_train_ops(g_ref, true);
    for (int i = 0; i < N_FAST; i++) {
        mc_cpu_install_train_ops(g_fast[i], false);
        mc_cpu_install_train_ops(g_fast[i], false); /* idempotent */
    }
    CHECK(g_ref->linear_xent == mc_ref_linear_xent);
    CHECK(g_ref->attention_backward == mc_ref_attention_backward);
    CHECK(g_fast[0]->linear_xent == mc_fast_linear_xent);
    CHECK(g_fast[0]->matmul_dx == mc_fast_matmul_dx);
    CHECK(g_fast[3]->zero == mc_fast_zero);
    printf("fast backend: %d threads, %s kernels\n", g_fast[0]->n_threads,
           mc_cpu_has_avx2() ? "AVX2" : "portable");
}

/* ---- matmul_dx: gradient ----------------------------------------------------------------- */

typedef struct mm_ctx {
    mc_wt w;
    const float *R; /* [M, N] */
    int M, N, K;
} mm_ctx;

static double mm_loss(const void *ctx, const float *x) {
    const mm_ctx *c = ctx;
    mc_wt none = {NULL, MC_F32, false};
    float *y = falloc((size_t)c->M * (size_t)c->N);
    double l;
    g_ref->matmul(g_ref, y, c->N, x, c->w, none, c->M, c->N, c->K);
    l = dot_d(y, c->R, (size_t)c->M * (size_t)c->N);
    free(y);
    return l;
}

static void test_grad_matmul_dx(void) {
    const int M = 5, N = 7, K = 12;
    for (int di = 0; di < 3; di++) {
        float *wv, *x = falloc(M * K), *R = falloc(M * N), *dx = falloc(M * K),
                   *num = falloc(M * K);
        float *base = falloc(M * K);
        void *w = make_weight(k_dtypes[di], (size_t)N * K, 0.5f, &wv);
        mm_ctx c = {{w, k_dtypes[di], false}, R, M, N, K};
        fill_normal(x, M * K, 1.0f);
        fill_normal(R, M * N, 1.0f);
        fd_grad(mm_loss, &c, x, M * K, 1e-2f, num);
        poison(dx, M * K);
        g_ref->matmul_dx(g_ref, dx, R, c.w, M, N, K, false);
        CHECK_GRAD(dx, num, M * K);
        /* accumulate: dx = base + dy W */
        fill_normal(base, M * K, 1.0f);
        memcpy(dx, base, M * K * sizeof(float));
        g_ref->matmul_dx(g_ref, dx, R, c.w, M, N, K, true);
        for (int i = 0; i < M * K; i++) dx[i] -= base[i];
        CHECK_GRAD(dx, num, M * K);
        free(wv);
        free(w);
        free(x);
        free(R);
        free(dx);
        free(num);
        free(base);
    }
}

/* ---- rmsnorm: gradient ------------------------------------------------------------------- */

typedef struct rms_ctx {
    mc_wt w;
    const float *R; /* [T, D] */
    int T, D;
    float eps;
} rms_ctx;

static double rms_loss(const void *ctx, const float *x) {
    const rms_ctx *c = ctx;
    float *y = falloc((size_t)c->T * (size_t)c->D);
    double l;
    g_ref->rmsnorm(g_ref, y, x, c->w, c->T, c->D, c->eps);
    l = dot_d(y, c->R, (size_t)c->T * (size_t)c->D);
    free(y);
    return l;
}

static void test_grad_rmsnorm(void) {
    const int T = 5, D = 12;
    for (int di = 0; di < 3; di++) {
        float *wv, *x = falloc(T * D), *R = falloc(T * D), *dx = falloc(T * D),
                   *num = falloc(T * D);
        float *base = falloc(T * D);
        void *w = make_weight(k_dtypes[di], D, 1.0f, &wv);
        rms_ctx c = {{w, k_dtypes[di], false}, R, T, D, 1e-6f};
        fill_normal(x, T * D, 1.0f);
        fill_normal(R, T * D, 1.0f);
        fill_normal(base, T * D, 1.0f);
        fd_grad(rms_loss, &c, x, T * D, 1e-3f, num);
        memcpy(dx, base, sizeof(float) * T * D);
        g_ref->rmsnorm_backward(g_ref, dx, NULL, R, x, c.w, T, D, c.eps);
        for (int i = 0; i < T * D; i++) dx[i] -= base[i];
        CHECK_GRAD(dx, num, T * D);
        free(wv);
        free(w);
        free(x);
        free(R);
        free(dx);
        free(num);
        free(base);
    }
}

/* ---- rope: gradient ---------------------------------------------------------------------- */

typedef struct rope_ctx {
    const float *R; /* [T, ldx] */
    const int32_t *pos;
    int T, ldx, H, hd;
    float theta;
} rope_ctx;

static double rope_loss(const void *ctx, const float *x) {
    const rope_ctx *c = ctx;
    size_t n = (size_t)c->T * (size_t)c->ldx;
    float *y = fdup(x, n);
    double l = 0;
    g_ref->rope(g_ref, y, c->ldx, c->pos, c->T, c->H, c->hd, c->theta);
    for (int t = 0; t < c->T; t++)
        for (int j = 0; j < c->H * c->hd; j++)
            l += (double)y[t * c->ldx + j] * (double)c->R[t * c->ldx + j];
    free(y);
    return l;
}

static void test_grad_rope(void) {
    const int T = 5, H = 3, hd = 8, ldx = H * hd + 3;
    const size_t n = (size_t)T * ldx;
    int32_t pos[5] = {0, 7, 3, 31, 12};
    float *x = falloc(n), *R = falloc(n), *num = falloc(n), *dx;
    rope_ctx c = {R, pos, T, ldx, H, hd, 10000.0f};
    fill_normal(x, n, 1.0f);
    fill_normal(R, n, 1.0f);
    fd_grad(rope_loss, &c, x, n, 1e-3f, num);
    dx = fdup(R, n);
    for (int t = 0; t < T; t++)
        for (int j = H * hd; j < ldx; j++) dx[t * ldx + j] = NAN; /* gap: must stay */
    g_ref->rope_backward(g_ref, dx, ldx, pos, T, H, hd, c.theta);
    for (int t = 0; t < T; t++)
        for (int j = H * hd; j < ldx; j++) {
            CHECK(isnan(dx[t * ldx + j]));
            dx[t * ldx + j] = 0.0f; /* the gap's true gradient is 0 */
        }
    CHECK_GRAD(dx, num, n);
    free(x);
    free(R);
    free(num);
    free(dx);
}

/* ---- attention: gradient ------------------------------------------------------------------ */

typedef struct att_ctx {
    float *q, *k, *v; /* current inputs; one of them is the FD variable */
    int which;        /* 0: q, 1: k, 2: v */
    const float *R;   /* [T, Hq*hd] */
    int T, Hq, Hkv, hd;
} att_ctx;

static double att_loss(const void *ctx, const float *x) {
    const att_ctx *c = ctx;
    size_t qn = (size_t)c->T * (size_t)c->Hq * (size_t)c->hd;
    float *out = falloc(qn);
    double l;
    g_ref->attention(g_ref, out, c->which == 0 ? x : c->q, c->which == 1 ? x : c->k,
                     c->which == 2 ? x : c->v, c->T, 0, c->Hq, c->Hkv, c->hd);
    l = dot_d(out, c->R, qn);
    free(out);
    return l;
}

static void grad_attention_case(int T, int Hq, int Hkv, int hd) {
    size_t qn = (size_t)T * Hq * hd, kn = (size_t)T * Hkv * hd;
    float *q = falloc(qn), *k = falloc(kn), *v = falloc(kn), *R = falloc(qn);
    float *dq = falloc(qn), *dk = falloc(kn), *dv = falloc(kn), *num = falloc(qn);
    att_ctx c = {q, k, v, 0, R, T, Hq, Hkv, hd};
    fill_normal(q, qn, 1.0f);
    fill_normal(k, kn, 1.0f);
    fill_normal(v, kn, 1.0f);
    fill_normal(R, qn, 1.0f);
    poison(dq, qn);
    poison(dk, kn);
    poison(dv, kn);
    g_ref->attention_backward(g_ref, dq, dk, dv, R, q, k, v, T, Hq, Hkv, hd);
    c.which = 0;
    fd_grad(att_loss, &c, q, qn, 1e-3f, num);
    CHECK_GRAD(dq, num, qn);
    c.which = 1;
    fd_grad(att_loss, &c, k, kn, 1e-3f, num);
    CHECK_GRAD(dk, num, kn);
    c.which = 2;
    fd_grad(att_loss, &c, v, kn, 1e-3f, num);
    CHECK_GRAD(dv, num, kn);
    free(q);
    free(k);
    free(v);
    free(R);
    free(dq);
    free(dk);
    free(dv);
    free(num);
}

static void test_grad_attention(void) {
    grad_attention_case(5, 4, 2, 8); /* GQA ratio 2 */
    grad_attention_case(5, 6, 2, 8); /* GQA ratio 3 */
    grad_attention_case(4, 2, 2, 6); /* MHA, hd not a multiple of 8 */
    grad_attention_case(1, 3, 1, 4); /* one row: dq = dk = 0, dv = dout summed */
}

/* ---- swiglu: gradient --------------------------------------------------------------------- */

typedef struct sw_ctx {
    const float *g, *u; /* one of them replaced by the FD variable */
    int which;          /* 0: gate, 1: up */
    const float *R;
    size_t n;
} sw_ctx;

static double sw_loss(const void *ctx, const float *x) {
    const sw_ctx *c = ctx;
    float *o = falloc(c->n);
    double l;
    g_ref->swiglu(g_ref, o, c->which == 0 ? x : c->g, c->which == 1 ? x : c->u, c->n);
    l = dot_d(o, c->R, c->n);
    free(o);
    return l;
}

static void test_grad_swiglu(void) {
    const size_t n = 37;
    float *g = falloc(n), *u = falloc(n), *R = falloc(n), *dg = falloc(n), *du = falloc(n);
    float *num = falloc(n), *alias;
    sw_ctx c = {g, u, 0, R, n};
    fill_normal(g, n, 2.0f);
    fill_normal(u, n, 1.0f);
    fill_normal(R, n, 1.0f);
    poison(dg, n);
    poison(du, n);
    g_ref->swiglu_backward(g_ref, dg, du, NULL, R, g, u, n);
    c.which = 0;
    fd_grad(sw_loss, &c, g, n, 1e-3f, num);
    CHECK_GRAD(dg, num, n);
    c.which = 1;
    fd_grad(sw_loss, &c, u, n, 1e-3f, num);
    CHECK_GRAD(du, num, n);
    /* dgate may alias dout */
    alias = fdup(R, n);
    g_ref->swiglu_backward(g_ref, alias, du, NULL, alias, g, u, n);
    check_same("swiglu_backward dgate aliasing dout", alias, dg, n);
    free(g);
    free(u);
    free(R);
    free(dg);
    free(du);
    free(num);
    free(alias);
}

/* ---- linear_xent: loss and gradient -------------------------------------------------------- */

typedef struct xent_ctx {
    mc_wt w;
    const int32_t *tg;
    int T, D, V;
} xent_ctx;

static double xent_loss(const void *ctx, const float *h) {
    const xent_ctx *c = ctx;
    double l = 0;
    mc_status s = g_ref->linear_xent(g_ref, NULL, &l, h, c->w, c->tg, c->T, c->D, c->V, 1.0f);
    CHECK_OK(s);
    return l;
}

/* The loss written out: logits through the reference matmul, log-softmax in double. */
static double xent_direct(const float *h, mc_wt w, const int32_t *tg, int T, int D, int V) {
    float *lg = falloc((size_t)T * V);
    mc_wt none = {NULL, MC_F32, false};
    double loss = 0;
    g_ref->matmul(g_ref, lg, V, h, w, none, T, V, D);
    for (int t = 0; t < T; t++) {
        double mx = -INFINITY, s = 0;
        if (tg[t] < 0) continue;
        for (int v = 0; v < V; v++) mx = fmax(mx, (double)lg[t * V + v]);
        for (int v = 0; v < V; v++) s += exp((double)lg[t * V + v] - mx);
        loss += mx + log(s) - (double)lg[t * V + tg[t]];
    }
    free(lg);
    return loss;
}

static void test_grad_linear_xent(void) {
    const int T = 6, D = 12, V = 23;
    const float gs = 0.37f;
    int32_t tg[6] = {3, -1, 0, 22, 7, 7};
    for (int di = 0; di < 3; di++) {
        float *wv, *h = falloc(T * D), *dh = falloc(T * D), *num = falloc(T * D);
        void *w = make_weight(k_dtypes[di], (size_t)V * D, 0.5f, &wv);
        xent_ctx c = {{w, k_dtypes[di], false}, tg, T, D, V};
        double loss = 1.5, want;
        fill_normal(h, T * D, 1.0f);
        want = xent_direct(h, c.w, tg, T, D, V);
        poison(dh, T * D);
        CHECK_OK(g_ref->linear_xent(g_ref, dh, &loss, h, c.w, tg, T, D, V, gs));
        CHECK_NEAR(loss - 1.5, want, 1e-5 * fabs(want)); /* loss_sum accumulates */
        fd_grad(xent_loss, &c, h, T * D, 1e-3f, num);
        for (int i = 0; i < T * D; i++) num[i] *= gs;
        CHECK_GRAD(dh, num, T * D);
        for (int d = 0; d < D; d++) CHECK(dh[1 * D + d] == 0.0f);
        free(wv);
        free(w);
        free(h);
        free(dh);
        free(num);
    }
}

/* ---- gemm_f32 ------------------------------------------------------------------------------ */

/* C = alpha op(A) op(B) + beta C in double, for the fast and reference kernels to meet. */
static void gemm_direct(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int kk = 0; kk < K; kk++)
                s += (double)(ta ? A[kk * lda + i] : A[i * lda + kk]) *
                     (double)(tb ? B[j * ldb + kk] : B[kk * ldb + j]);
            C[i * ldc + j] =
                (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j]));
        }
}

static void gemm_case(bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
    int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = falloc(na), *B = falloc(nb), *C0 = falloc(nc), *want = falloc(nc), *got = falloc(nc);
    char what[96];
    fill_normal(A, na, 1.0f);
    fill_normal(B, nb, 1.0f);
    fill_normal(C0, nc, 1.0f);
    if (beta == 0.0f)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C0[i * ldc + j] = NAN; /* must be ignored */
    memcpy(want, C0, nc * sizeof(float));
    gemm_direct(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, want, ldc);
    for (int bi = -1; bi < N_FAST; bi++) {
        mc_backend *be = bi < 0 ? g_ref : g_fast[bi];
        memcpy(got, C0, nc * sizeof(float));
        be->gemm_f32(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, got, ldc);
        snprintf(what, sizeof what, "gemm_f32 %s ta=%d tb=%d %dx%dx%d beta=%g", be->name, ta, tb, M,
                 N, K, (double)beta);
        /* the gap columns are compared too: they must keep C0's values */
        if (t_check_rel_l2(__FILE__, __LINE__, what, got, want, nc, 1e-5) > 1e-5)
            fprintf(stderr, "  (backend %s)\n", bi < 0 ? "ref" : g_fast_name[bi]);
        check_no_nan(what, got, nc);
    }
    free(A);
    free(B);
    free(C0);
    free(want);
    free(got);
}

static void test_gemm_f32(void) {
    for (int t = 0; t < 4; t++) {
        bool ta = (t & 1) != 0, tb = (t & 2) != 0;
        gemm_case(ta, tb, 1, 1, 1, 1.0f, 0.0f);
        gemm_case(ta, tb, 7, 5, 3, 0.7f, 1.0f);
        gemm_case(ta, tb, 33, 17, 65, -1.3f, 0.0f);
        gemm_case(ta, tb, 300, 16, 512, 0.5f, 1.0f); /* split over M */
        gemm_case(ta, tb, 8, 900, 512, 1.0f, -0.5f); /* split over N */
    }
    gemm_case(false, false, 5, 6, 0, 1.0f, 0.5f); /* K = 0: C = beta C */
    gemm_case(true, true, 5, 6, 0, 1.0f, 0.0f);
    /* nothing to do: C untouched */
    {
        float c = 3.0f;
        for (int bi = 0; bi < N_FAST; bi++) {
            g_fast[bi]->gemm_f32(g_fast[bi], false, false, 0, 1, 1, 1.0f, &c, 1, &c, 1, 0.0f, &c,
                                 1);
            g_fast[bi]->matmul_dx(g_fast[bi], &c, &c, (mc_wt){&c, MC_F32, false}, 1, 1, 0, false);
        }
        CHECK(c == 3.0f);
    }
}

/* ---- matmul_dx: fast against reference ------------------------------------------------------ */

static void matmul_dx_case(int M, int N, int K, mc_dtype dt) {
    size_t nx = (size_t)M * K;
    float *wv, *dy = falloc((size_t)M * N), *base = falloc(nx), *want = falloc(nx),
               *got = falloc(nx);
    void *w = make_weight(dt, (size_t)N * K, 0.5f, &wv);
    mc_wt W = {w, dt, false};
    char what[96];
    fill_normal(dy, (size_t)M * N, 1.0f);
    fill_normal(base, nx, 1.0f);
    for (int acc = 0; acc < 2; acc++) {
        if (acc)
            memcpy(want, base, nx * sizeof(float));
        else
            poison(want, nx);
        g_ref->matmul_dx(g_ref, want, dy, W, M, N, K, acc != 0);
        for (int bi = 0; bi < N_FAST; bi++) {
            if (acc)
                memcpy(got, base, nx * sizeof(float));
            else
                poison(got, nx);
            g_fast[bi]->matmul_dx(g_fast[bi], got, dy, W, M, N, K, acc != 0);
            snprintf(what, sizeof what, "matmul_dx %s %dx%dx%d %s acc=%d", g_fast_name[bi], M, N, K,
                     mc_dtype_name(dt), acc);
            t_check_rel_l2(__FILE__, __LINE__, what, got, want, nx, 1e-5);
        }
    }
    free(wv);
    free(w);
    free(dy);
    free(base);
    free(want);
    free(got);
}

static void test_matmul_dx(void) {
    for (int di = 0; di < 3; di++) {
        matmul_dx_case(1, 1, 1, k_dtypes[di]);
        matmul_dx_case(5, 7, 12, k_dtypes[di]);
        matmul_dx_case(37, 300, 333, k_dtypes[di]);
        matmul_dx_case(300, 96, 520, k_dtypes[di]); /* several row blocks of dy */
        matmul_dx_case(3, 5000, 100, k_dtypes[di]); /* N too long for a full tile in scratch */
    }
    matmul_dx_case(4, 3, 0, MC_BF16); /* K = 0: nothing */
    {                                 /* N = 0: dx = 0, or unchanged when accumulating */
        float dx[6] = {1, 2, 3, 4, 5, 6}, dy = 0;
        mc_wt W = {&dy, MC_F32, false};
        g_fast[0]->matmul_dx(g_fast[0], dx, &dy, W, 2, 0, 3, true);
        CHECK(dx[5] == 6.0f);
        g_fast[0]->matmul_dx(g_fast[0], dx, &dy, W, 2, 0, 3, false);
        for (int i = 0; i < 6; i++) CHECK(dx[i] == 0.0f);
    }
}

/* The backend's shared scratch is taken (as by a concurrent matmul): matmul_dx allocates its
 * own, and with that allocation failing too, converts small tiles on the stack. */
static void test_matmul_dx_fallbacks(void) {
    const int M = 40, N = 300, K = 333;
    float *wv, *dy = falloc((size_t)M * N), *want = falloc((size_t)M * K),
               *got = falloc((size_t)M * K);
    void *w = make_weight(MC_BF16, (size_t)N * K, 0.5f, &wv);
    mc_wt W = {w, MC_BF16, false};
    fill_normal(dy, (size_t)M * N, 1.0f);
    g_ref->matmul_dx(g_ref, want, dy, W, M, N, K, false);
    for (int bi = 0; bi < N_FAST; bi++) {
        mc_cpu *cpu = g_fast[bi]->impl;
        CHECK(!atomic_flag_test_and_set(&cpu->scratch_busy));
        for (int fail = 0; fail < 2; fail++) {
            poison(got, (size_t)M * K);
            (void)mc_debug_fail_alloc_after(fail ? 1 : 0);
            g_fast[bi]->matmul_dx(g_fast[bi], got, dy, W, M, N, K, false);
            (void)mc_debug_fail_alloc_after(0);
            CHECK_REL_L2(got, want, (size_t)M * K, 1e-5);
        }
        atomic_flag_clear(&cpu->scratch_busy);
    }
    free(wv);
    free(w);
    free(dy);
    free(want);
    free(got);
}

/* Four threads call matmul_dx on one backend at once: results stay right. */
static void test_matmul_dx_concurrent(void) {
    const int M = 48, N = 200, K = 300;
    float *wv, *dy = falloc((size_t)M * N), *want = falloc((size_t)M * K), *o[4];
    void *w = make_weight(MC_F16, (size_t)N * K, 0.5f, &wv);
    mc_wt W = {w, MC_F16, false};
    fill_normal(dy, (size_t)M * N, 1.0f);
    g_ref->matmul_dx(g_ref, want, dy, W, M, N, K, false);
    for (int i = 0; i < 4; i++) o[i] = falloc((size_t)M * K);
#pragma omp parallel for num_threads(4)
    for (int i = 0; i < 4; i++) g_fast[0]->matmul_dx(g_fast[0], o[i], dy, W, M, N, K, false);
    for (int i = 0; i < 4; i++) {
        CHECK_REL_L2(o[i], want, (size_t)M * K, 1e-5);
        free(o[i]);
    }
    free(wv);
    free(w);
    free(dy);
    free(want);
}

/* ---- rmsnorm / rope / swiglu: fast against reference --------------------------------------- */

static void test_rmsnorm_backward(void) {
    static const int sizes[][2] = {{1, 1}, {5, 12}, {37, 67}, {3, 896}, {300, 131}};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int di = 0; di < 3; di++) {
            int T = sizes[si][0], D = sizes[si][1];
            size_t n = (size_t)T * D;
            float *wv, *x = falloc(n), *dy = falloc(n), *base = falloc(n), *want, *got;
            float *xn = falloc(n), *fwd = falloc(n);
            void *w = make_weight(k_dtypes[di], (size_t)D, 1.0f, &wv);
            mc_wt W = {w, k_dtypes[di], false};
            fill_normal(x, n, 1.0f);
            fill_normal(dy, n, 1.0f);
            fill_normal(base, n, 1.0f);
            want = fdup(base, n);
            /* xn, when asked for, is the forward's output bit for bit, on every backend */
            g_ref->rmsnorm_backward(g_ref, want, xn, dy, x, W, T, D, 1e-6f);
            g_ref->rmsnorm(g_ref, fwd, x, W, T, D, 1e-6f);
            check_same("rmsnorm_backward xn (reference)", xn, fwd, n);
            for (int bi = 0; bi < N_FAST; bi++) {
                got = fdup(base, n);
                poison(xn, n);
                g_fast[bi]->rmsnorm_backward(g_fast[bi], got, xn, dy, x, W, T, D, 1e-6f);
                CHECK_REL_L2(got, want, n, 1e-5);
                g_fast[bi]->rmsnorm(g_fast[bi], fwd, x, W, T, D, 1e-6f);
                check_same("rmsnorm_backward xn (fast)", xn, fwd, n);
                free(got);
            }
            free(xn);
            free(fwd);
            free(wv);
            free(w);
            free(x);
            free(dy);
            free(base);
            free(want);
        }
}

static void test_rope_backward(void) {
    static const int cases[][4] = {/* T, H, hd, extra columns */
                                   {1, 1, 2, 0},
                                   {5, 3, 8, 3},
                                   {37, 14, 64, 0},
                                   {300, 4, 128, 5},
                                   {2, 1, 1030, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int T = cases[ci][0], H = cases[ci][1], hd = cases[ci][2], ldx = H * hd + cases[ci][3];
        size_t n = (size_t)T * ldx;
        int32_t *pos = malloc((size_t)T * sizeof *pos);
        float *x = falloc(n), *want, *got, *back;
        if (!pos) exit(2);
        for (int t = 0; t < T; t++) pos[t] = (int32_t)(mc_rng_next(&g_rng) % 4096);
        fill_normal(x, n, 1.0f);
        want = fdup(x, n);
        g_ref->rope_backward(g_ref, want, ldx, pos, T, H, hd, 1e6f);
        for (int bi = 0; bi < N_FAST; bi++) {
            got = fdup(x, n);
            g_fast[bi]->rope_backward(g_fast[bi], got, ldx, pos, T, H, hd, 1e6f);
            check_same("rope_backward fast vs ref", got, want, n);
            free(got);
        }
        /* the backward undoes the forward (a rotation and its inverse) */
        back = fdup(want, n);
        g_ref->rope(g_ref, back, ldx, pos, T, H, hd, 1e6f);
        CHECK_REL_L2(back, x, n, 1e-5);
        free(pos);
        free(x);
        free(want);
        free(back);
    }
}

static void test_swiglu_backward(void) {
    static const size_t sizes[] = {1, 7, 1000, 100003};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *g = falloc(n), *u = falloc(n), *go = falloc(n), *wg = falloc(n), *wu = falloc(n);
        float *dg = falloc(n), *du = falloc(n), *h = falloc(n), *hf = falloc(n);
        fill_normal(g, n, 3.0f);
        fill_normal(u, n, 1.0f);
        fill_normal(go, n, 1.0f);
        /* h, when asked for, is the forward's output bit for bit, on every backend */
        g_ref->swiglu_backward(g_ref, wg, wu, h, go, g, u, n);
        g_ref->swiglu(g_ref, hf, g, u, n);
        check_same("swiglu_backward h (reference)", h, hf, n);
        for (int bi = 0; bi < N_FAST; bi++) {
            poison(du, n);
            poison(h, n);
            memcpy(dg, go, n * sizeof(float)); /* dgate aliases dout */
            g_fast[bi]->swiglu_backward(g_fast[bi], dg, du, h, dg, g, u, n);
            CHECK_REL_L2(dg, wg, n, 1e-5);
            CHECK_REL_L2(du, wu, n, 1e-5);
            g_fast[bi]->swiglu(g_fast[bi], hf, g, u, n);
            check_same("swiglu_backward h (fast)", h, hf, n);
        }
        free(h);
        free(hf);
        free(g);
        free(u);
        free(go);
        free(wg);
        free(wu);
        free(dg);
        free(du);
    }
}

/* ---- attention_backward: fast against reference ---------------------------------------------- */

static void attention_case(int T, int Hq, int Hkv, int hd, float qscale) {
    size_t qn = (size_t)T * Hq * hd, kn = (size_t)T * Hkv * hd;
    float *q = falloc(qn), *k = falloc(kn), *v = falloc(kn), *go = falloc(qn);
    float *wq = falloc(qn), *wk = falloc(kn), *wv = falloc(kn);
    float *dq = falloc(qn), *dk = falloc(kn), *dv = falloc(kn);
    char what[96];
    fill_normal(q, qn, qscale);
    fill_normal(k, kn, 1.0f);
    fill_normal(v, kn, 1.0f);
    fill_normal(go, qn, 1.0f);
    g_ref->attention_backward(g_ref, wq, wk, wv, go, q, k, v, T, Hq, Hkv, hd);
    for (int bi = 0; bi < N_FAST; bi++) {
        poison(dq, qn);
        poison(dk, kn);
        poison(dv, kn);
        g_fast[bi]->attention_backward(g_fast[bi], dq, dk, dv, go, q, k, v, T, Hq, Hkv, hd);
        snprintf(what, sizeof what, "attention_backward %s T=%d Hq=%d Hkv=%d hd=%d",
                 g_fast_name[bi], T, Hq, Hkv, hd);
        t_check_rel_l2(__FILE__, __LINE__, what, dq, wq, qn, 1e-5);
        t_check_rel_l2(__FILE__, __LINE__, what, dk, wk, kn, 1e-5);
        t_check_rel_l2(__FILE__, __LINE__, what, dv, wv, kn, 1e-5);
    }
    free(q);
    free(k);
    free(v);
    free(go);
    free(wq);
    free(wk);
    free(wv);
    free(dq);
    free(dk);
    free(dv);
}

static void test_attention_backward(void) {
    attention_case(1, 2, 1, 8, 1.0f);
    attention_case(5, 4, 2, 8, 1.0f);
    attention_case(70, 6, 2, 16, 2.0f);   /* two blocks of rows and keys; peaked softmax */
    attention_case(130, 4, 4, 12, 1.0f);  /* three blocks; hd not a multiple of 8 */
    attention_case(200, 14, 2, 64, 0.5f); /* Qwen2.5-0.5B heads */
}

/* Scratch taken: attention_backward allocates; with allocation failing too, it runs the
 * reference kernel. */
static void test_attention_backward_fallbacks(void) {
    const int T = 70, Hq = 4, Hkv = 2, hd = 16;
    size_t qn = (size_t)T * Hq * hd, kn = (size_t)T * Hkv * hd;
    float *q = falloc(qn), *k = falloc(kn), *v = falloc(kn), *go = falloc(qn);
    float *wq = falloc(qn), *wk = falloc(kn), *wv = falloc(kn);
    float *dq = falloc(qn), *dk = falloc(kn), *dv = falloc(kn);
    mc_cpu *cpu = g_fast[0]->impl;
    fill_normal(q, qn, 1.0f);
    fill_normal(k, kn, 1.0f);
    fill_normal(v, kn, 1.0f);
    fill_normal(go, qn, 1.0f);
    g_ref->attention_backward(g_ref, wq, wk, wv, go, q, k, v, T, Hq, Hkv, hd);
    CHECK(!atomic_flag_test_and_set(&cpu->scratch_busy));
    for (int fail = 0; fail < 2; fail++) {
        poison(dq, qn);
        poison(dk, kn);
        poison(dv, kn);
        (void)mc_debug_fail_alloc_after(fail ? 1 : 0);
        g_fast[0]->attention_backward(g_fast[0], dq, dk, dv, go, q, k, v, T, Hq, Hkv, hd);
        (void)mc_debug_fail_alloc_after(0);
        CHECK_REL_L2(dq, wq, qn, 1e-5);
        CHECK_REL_L2(dk, wk, kn, 1e-5);
        CHECK_REL_L2(dv, wv, kn, 1e-5);
    }
    atomic_flag_clear(&cpu->scratch_busy);
    g_fast[0]->attention_backward(g_fast[0], dq, dk, dv, go, q, k, v, 0, Hq, Hkv, hd); /* T = 0 */
    free(q);
    free(k);
    free(v);
    free(go);
    free(wq);
    free(wk);
    free(wv);
    free(dq);
    free(dk);
    free(dv);
}

/* ---- linear_xent: fast against reference ------------------------------------------------------- */

static void xent_case(int T, int D, int V, mc_dtype dt, int ignore_every, float hscale) {
    size_t nh = (size_t)T * D;
    float *wv, *h = falloc(nh), *want = falloc(nh), *got = falloc(nh);
    int32_t *tg = malloc((size_t)T * sizeof *tg);
    void *w = make_weight(dt, (size_t)V * D, 0.5f, &wv);
    mc_wt W = {w, dt, false};
    double lw = 0, lg, ln;
    char what[128];
    if (!tg) exit(2);
    fill_normal(h, nh, hscale);
    for (int t = 0; t < T; t++)
        tg[t] = ignore_every && t % ignore_every == 1
                    ? -1
                    : (int32_t)(mc_rng_next(&g_rng) % (uint64_t)V);
    poison(want, nh);
    CHECK_OK(g_ref->linear_xent(g_ref, want, &lw, h, W, tg, T, D, V, 0.01f));
    for (int bi = 0; bi < N_FAST; bi++) {
        lg = 0;
        ln = 0;
        poison(got, nh);
        CHECK_OK(g_fast[bi]->linear_xent(g_fast[bi], got, &lg, h, W, tg, T, D, V, 0.01f));
        CHECK_OK(g_fast[bi]->linear_xent(g_fast[bi], NULL, &ln, h, W, tg, T, D, V, 0.01f));
        snprintf(what, sizeof what, "linear_xent %s T=%d D=%d V=%d %s", g_fast_name[bi], T, D, V,
                 mc_dtype_name(dt));
        t_check_rel_l2(__FILE__, __LINE__, what, got, want, nh, 1e-5);
        CHECK_NEAR(lg, lw, 1e-5 * fabs(lw) + 1e-9);
        CHECK(ln == lg); /* the loss does not depend on whether dh is wanted */
    }
    free(wv);
    free(w);
    free(h);
    free(want);
    free(got);
    free(tg);
}

static void test_linear_xent(void) {
    for (int di = 0; di < 3; di++) {
        xent_case(1, 8, 5, k_dtypes[di], 0, 1.0f);
        xent_case(77, 72, 1237, k_dtypes[di], 3, 1.0f); /* several vocabulary tiles */
        xent_case(300, 40, 600, k_dtypes[di], 7, 3.0f); /* several row chunks, peaked */
    }
    xent_case(20, 1000, 3, MC_BF16, 0, 1.0f); /* V below one tile, long rows */
    xent_case(5, 12, 40, MC_F32, 1, 1.0f);    /* every row but the first has no target... */
    {                                         /* ...and no row at all: loss 0, dh 0 */
        int32_t tg[3] = {-1, -1, -1};
        float h[6] = {1, 2, 3, 4, 5, 6}, dh[6], w[4] = {1, 2, 3, 4};
        mc_wt W = {w, MC_F32, false};
        double l = 0.25;
        poison(dh, 6);
        CHECK_OK(g_fast[0]->linear_xent(g_fast[0], dh, &l, h, W, tg, 3, 2, 2, 1.0f));
        CHECK(l == 0.25);
        for (int i = 0; i < 6; i++) CHECK(dh[i] == 0.0f);
        CHECK_OK(g_fast[0]->linear_xent(g_fast[0], dh, &l, h, W, tg, 0, 2, 2, 1.0f));
        CHECK(l == 0.25);
    }
}

/* Scratch taken and allocation failing: MC_ERR_OOM with a message, for both kernels. */
static void test_linear_xent_oom(void) {
    int32_t tg[2] = {1, 0};
    float h[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[12] = {0}, dh[8];
    mc_wt W = {w, MC_F32, false};
    double l = 0;
    mc_cpu *cpu = g_fast[0]->impl;
    CHECK(!atomic_flag_test_and_set(&cpu->scratch_busy));
    (void)mc_debug_fail_alloc_after(1);
    CHECK_STATUS(g_fast[0]->linear_xent(g_fast[0], dh, &l, h, W, tg, 2, 4, 3, 1.0f), MC_ERR_OOM);
    CHECK_MSG("linear_xent");
    (void)mc_debug_fail_alloc_after(1);
    CHECK_STATUS(g_ref->linear_xent(g_ref, dh, &l, h, W, tg, 2, 4, 3, 1.0f), MC_ERR_OOM);
    CHECK_MSG("out of memory");
    (void)mc_debug_fail_alloc_after(0);
    /* scratch taken, allocation fine: same answer as the reference */
    {
        double lr = 0;
        float want[8];
        CHECK_OK(g_fast[0]->linear_xent(g_fast[0], dh, &l, h, W, tg, 2, 4, 3, 1.0f));
        CHECK_OK(g_ref->linear_xent(g_ref, want, &lr, h, W, tg, 2, 4, 3, 1.0f));
        CHECK_NEAR(l, lr, 1e-6);
        CHECK_REL_L2(dh, want, 8, 1e-6);
    }
    atomic_flag_clear(&cpu->scratch_busy);
    CHECK(l > 0);
}

/* ---- dropout ------------------------------------------------------------------------------------- */

static void test_dropout(void) {
    const size_t n = 200003;
    const float p = 0.1f;
    float *x = falloc(n), *a = falloc(n), *b = falloc(n), *c = falloc(n);
    size_t kept = 0, kept_other = 0, same = 0;
    double sd;
    fill_normal(x, n, 1.0f);
    g_ref->dropout(g_ref, a, x, n, p, 42);
    for (size_t i = 0; i < n; i++) {
        if (a[i] != 0.0f) {
            kept++;
            CHECK(a[i] == x[i] * (1.0f / (1.0f - p)));
        }
        CHECK(mc_dropout_keep(42, i, p) == (a[i] != 0.0f));
    }
    /* keep rate: binomial(n, 1 - p), within 5 standard deviations */
    sd = sqrt((double)n * p * (1.0 - p));
    CHECK(fabs((double)kept - (double)n * (1.0 - p)) < 5 * sd);
    for (int bi = 0; bi < N_FAST; bi++) {
        g_fast[bi]->dropout(g_fast[bi], b, x, n, p, 42);
        check_same("dropout fast vs ref", b, a, n);
        memcpy(c, x, n * sizeof(float)); /* in place */
        g_fast[bi]->dropout(g_fast[bi], c, c, n, p, 42);
        check_same("dropout in place", c, a, n);
    }
    /* determinism, and another seed gives another mask */
    g_ref->dropout(g_ref, b, x, n, p, 42);
    check_same("dropout twice", b, a, n);
    g_ref->dropout(g_ref, b, x, n, p, 43);
    for (size_t i = 0; i < n; i++) {
        kept_other += b[i] != 0.0f;
        same += (a[i] != 0.0f) == (b[i] != 0.0f);
    }
    CHECK(fabs((double)kept_other - (double)n * (1.0 - p)) < 5 * sd);
    CHECK(same < n - 1000); /* masks agree only by chance (p^2 + (1-p)^2 = 82%) */
    /* p = 0 copies (also in place); p = 0.5 halves */
    for (int bi = -1; bi < N_FAST; bi++) {
        mc_backend *be = bi < 0 ? g_ref : g_fast[bi];
        be->dropout(be, b, x, n, 0.0f, 7);
        check_same("dropout p=0", b, x, n);
        be->dropout(be, b, b, n, 0.0f, 7);
        check_same("dropout p=0 in place", b, x, n);
    }
    /* the fast kernels' integer form of the test agrees at any p, including 1 (all dropped) */
    {
        static const float ps[] = {1e-7f, 0.3f, 0.9f, 1.0f};
        for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
            g_ref->dropout(g_ref, a, x, 1003, ps[pi], 11 + pi);
            for (int bi = 0; bi < N_FAST; bi++) {
                poison(b, 1003);
                g_fast[bi]->dropout(g_fast[bi], b, x, 1003, ps[pi], 11 + pi);
                check_same("dropout fast vs ref, several p", b, a, 1003);
            }
        }
        for (size_t i = 0; i < 1003; i++) CHECK(a[i] == 0.0f); /* p = 1 */
    }
    g_ref->dropout(g_ref, a, x, n, 0.5f, 9);
    kept = 0;
    for (size_t i = 0; i < n; i++) kept += a[i] != 0.0f;
    CHECK(fabs((double)kept - 0.5 * (double)n) < 5 * sqrt(0.25 * (double)n));
    free(x);
    free(a);
    free(b);
    free(c);
}

/* ---- AdamW --------------------------------------------------------------------------------------- */

/* torch.optim.AdamW's math in double, from the same float hyperparameters. */
static void adamw_double(double *p, double *m, double *v, const float *g, size_t n, double lr,
                         double b1, double b2, double eps, double wd, int step) {
    double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * (double)g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
}

static void test_adamw(void) {
    const size_t n = 100003; /* large enough for the threads */
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    float *p = falloc(n), *m = falloc(n), *v = falloc(n), *g = falloc(n);
    float *pf[N_FAST], *mf[N_FAST], *vf[N_FAST];
    double *pd = malloc(n * sizeof *pd), *md = calloc(n, sizeof *md), *vd = calloc(n, sizeof *vd);
    float *pdf = falloc(n);
    if (!pd || !md || !vd) exit(2);
    fill_normal(p, n, 1.0f);
    memset(m, 0, n * sizeof(float));
    memset(v, 0, n * sizeof(float));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    for (int bi = 0; bi < N_FAST; bi++) {
        pf[bi] = fdup(p, n);
        mf[bi] = fdup(m, n);
        vf[bi] = fdup(v, n);
    }
    for (int step = 1; step <= 5; step++) {
        fill_normal(g, n, step == 3 ? 1e-3f : 1.0f);
        g_ref->adamw(g_ref, p, g, m, v, n, lr, b1, b2, eps, wd, step);
        adamw_double(pd, md, vd, g, n, lr, b1, b2, eps, wd, step);
        for (int bi = 0; bi < N_FAST; bi++) {
            g_fast[bi]->adamw(g_fast[bi], pf[bi], g, mf[bi], vf[bi], n, lr, b1, b2, eps, wd, step);
            check_same("adamw p fast vs ref", pf[bi], p, n);
            check_same("adamw m fast vs ref", mf[bi], m, n);
            check_same("adamw v fast vs ref", vf[bi], v, n);
        }
    }
    /* f32 against double: p carries its own rounding (two per step, half an ulp each), and
     * the update (about lr per step) is good to a few f32 ulps of itself; one ulp more for
     * values that changed binade on the way */
    {
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            double ulp = ldexp(1.0, ilogb(pd[i]) - 23);
            double d = fabs((double)p[i] - pd[i]) / (6 * ulp + 1e-5 * lr);
            worst = d > worst ? d : worst;
            pdf[i] = (float)pd[i];
        }
        if (!(worst <= 1.0)) {
            fprintf(stderr, "adamw: |p - p_double| reaches %g of its bound\n", worst);
            t_checks_failed++;
        }
        CHECK_REL_L2(p, pdf, n, 1e-6);
        for (size_t i = 0; i < n; i++) pdf[i] = (float)md[i];
        CHECK_REL_L2(m, pdf, n, 1e-6);
        for (size_t i = 0; i < n; i++) pdf[i] = (float)vd[i];
        CHECK_REL_L2(v, pdf, n, 1e-6);
    }
    /* the first step of Adam moves every parameter by about lr (sign of g) */
    {
        float p1 = 0.5f, g1 = -2.0f, m1 = 0, v1 = 0;
        g_ref->adamw(g_ref, &p1, &g1, &m1, &v1, 1, lr, b1, b2, eps, 0.0f, 1);
        CHECK_NEAR(p1, 0.5 + 1e-3, 1e-7);
        CHECK_NEAR(m1, -0.2, 1e-7);
        CHECK_NEAR(v1, 4.0 * (1.0 - (double)b2), 1e-10); /* 1 - 0.999f is not 0.001 */
    }
    for (int bi = 0; bi < N_FAST; bi++) {
        free(pf[bi]);
        free(mf[bi]);
        free(vf[bi]);
    }
    free(p);
    free(m);
    free(v);
    free(g);
    free(pd);
    free(md);
    free(vd);
    free(pdf);
}

/* ---- sumsq, scale, zero ----------------------------------------------------------------------------- */

static void test_reductions(void) {
    static const size_t sizes[] = {0, 1, 7, 1001, 300007};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = falloc(n), *y = falloc(n), *z;
        double want = 0;
        fill_normal(x, n, 2.0f);
        for (size_t i = 0; i < n; i++) want += (double)x[i] * (double)x[i];
        CHECK_NEAR(g_ref->sumsq_f32(g_ref, x, n), want, 1e-12 * want);
        for (int bi = 0; bi < N_FAST; bi++) {
            double s1 = g_fast[bi]->sumsq_f32(g_fast[bi], x, n);
            CHECK_NEAR(s1, want, 1e-12 * want);
            CHECK(g_fast[bi]->sumsq_f32(g_fast[bi], x, n) == s1); /* same bits every run */
        }
        for (size_t i = 0; i < n; i++) y[i] = x[i] * -0.3f;
        for (int bi = -1; bi < N_FAST; bi++) {
            mc_backend *be = bi < 0 ? g_ref : g_fast[bi];
            z = fdup(x, n);
            be->scale_f32(be, z, n, -0.3f);
            check_same("scale_f32", z, y, n);
            be->zero(be, z, n * sizeof(float));
            for (size_t i = 0; i < n; i++) CHECK(z[i] == 0.0f);
            be->zero(be, z, 0);
            free(z);
        }
        free(x);
        free(y);
    }
}

/* The fast kernels on a reference-variant context (one thread, no shared scratch): they
 * allocate their scratch and run the portable loops. */
static void test_fast_on_ref_context(void) {
    const int T = 37, D = 40, V = 300, Hq = 4, Hkv = 2, hd = 8;
    float *wv, *h = falloc((size_t)T * D), *want = falloc((size_t)T * D),
               *got = falloc((size_t)T * D);
    float *dy = falloc((size_t)T * V), *q = falloc((size_t)T * Hq * hd),
          *k = falloc((size_t)T * Hkv * hd);
    float *v = falloc((size_t)T * Hkv * hd), *o[6];
    int32_t tg[37];
    void *w = make_weight(MC_BF16, (size_t)V * D, 0.5f, &wv);
    mc_wt W = {w, MC_BF16, false};
    mc_backend *be = NULL;
    double lw = 0, lg = 0;
    CHECK_OK(mc_backend_cpu_create(1, true, &be));
    if (!be) return;
    mc_cpu_install_train_ops(be, false);
    CHECK(be->linear_xent == mc_fast_linear_xent);
    fill_normal(h, (size_t)T * D, 1.0f);
    fill_normal(dy, (size_t)T * V, 1.0f);
    fill_normal(q, (size_t)T * Hq * hd, 1.0f);
    fill_normal(k, (size_t)T * Hkv * hd, 1.0f);
    fill_normal(v, (size_t)T * Hkv * hd, 1.0f);
    for (int t = 0; t < T; t++) tg[t] = (int32_t)((t * 37) % V);
    CHECK_OK(g_ref->linear_xent(g_ref, want, &lw, h, W, tg, T, D, V, 1.0f));
    CHECK_OK(be->linear_xent(be, got, &lg, h, W, tg, T, D, V, 1.0f));
    CHECK_NEAR(lg, lw, 1e-5 * lw);
    CHECK_REL_L2(got, want, (size_t)T * D, 1e-5);
    g_ref->matmul_dx(g_ref, want, dy, W, T, V, D, false);
    be->matmul_dx(be, got, dy, W, T, V, D, false);
    CHECK_REL_L2(got, want, (size_t)T * D, 1e-5);
    for (int i = 0; i < 6; i++) o[i] = falloc((size_t)T * Hq * hd);
    g_ref->attention_backward(g_ref, o[0], o[1], o[2], q, q, k, v, T, Hq, Hkv, hd);
    be->attention_backward(be, o[3], o[4], o[5], q, q, k, v, T, Hq, Hkv, hd);
    CHECK_REL_L2(o[3], o[0], (size_t)T * Hq * hd, 1e-5);
    CHECK_REL_L2(o[4], o[1], (size_t)T * Hkv * hd, 1e-5);
    CHECK_REL_L2(o[5], o[2], (size_t)T * Hkv * hd, 1e-5);
    for (int i = 0; i < 6; i++) free(o[i]);
    mc_backend_free(be);
    free(wv);
    free(w);
    free(h);
    free(want);
    free(got);
    free(dy);
    free(q);
    free(k);
    free(v);
}

int main(void) {
    mc_rng_seed(&g_rng, 20240612);
    RUN(test_create);
    RUN(test_grad_matmul_dx);
    RUN(test_grad_rmsnorm);
    RUN(test_grad_rope);
    RUN(test_grad_attention);
    RUN(test_grad_swiglu);
    RUN(test_grad_linear_xent);
    RUN(test_gemm_f32);
    RUN(test_matmul_dx);
    RUN(test_matmul_dx_fallbacks);
    RUN(test_matmul_dx_concurrent);
    RUN(test_rmsnorm_backward);
    RUN(test_rope_backward);
    RUN(test_swiglu_backward);
    RUN(test_attention_backward);
    RUN(test_attention_backward_fallbacks);
    RUN(test_linear_xent);
    RUN(test_linear_xent_oom);
    RUN(test_dropout);
    RUN(test_adamw);
    RUN(test_reductions);
    RUN(test_fast_on_ref_context);
    mc_backend_free(g_ref);
    for (int i = 0; i < N_FAST; i++) mc_backend_free(g_fast[i]);
    return t_summary();
}
