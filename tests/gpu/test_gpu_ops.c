/* test_gpu_ops.c - every op of the CUDA backend against the CPU reference kernels on
 * random inputs of awkward sizes, outputs poisoned with NaN first so an unwritten element
 * shows up; decode-like layers replayed as CUDA graphs with fused ops and programmatic
 * dependent launches against plain launches (bit for bit) and the CPU; and the error paths
 * (no such device, device OOM, host pointers given to gemm_f32).
 *
 * Tolerances (relative L2 unless stated):
 *   f32 element-wise math (rmsnorm, rope, swiglu, add, GEMV with f32 activations, f32
 *   GEMMs, decode attention in f32): 1e-5 (1e-4 for the plain attention backward);
 *   anything that rounds activations to bf16 for tensor cores (GEMMs with M > 8 on bf16
 *   weights, flash attention forward and backward, linear cross-entropy gradients): 1e-2,
 *   and 2e-3 on the cross-entropy loss; f16 weights: 1e-2;
 *   embedding, dropout, scale, zero: exact; AdamW: exact (bit for bit), checked at 1e-7.
 * MC_GPU_TEST_QUICK=1 skips the largest cases (for compute-sanitizer runs). */
#include <stdint.h>

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_train.h"
#include "backend/cuda/cuda_backend.h"
#include "test.h"

static mc_backend *g_cu, *g_ref;
static mc_rng g_rng;
static int g_quick;

/* ---- helpers ---- */

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    return p;
}

/* x[i] = scale * N(0, 1). */
static float *frand(size_t n, float scale) {
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = mc_rng_normal(&g_rng) * scale;
    return x;
}

static float *fnan(size_t n) {
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static float *fdup(const float *x, size_t n) {
    float *p = falloc(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* Device copy of host bytes on backend be. */
static void *dput_be(mc_backend *be, const void *host, size_t bytes) {
    void *p = be->alloc(be, bytes ? bytes : 4);
    if (!p) {
        fprintf(stderr, "device allocation of %zu bytes failed\n", bytes);
        exit(2);
    }
    CHECK_OK(be->to_device(be, p, host, bytes));
    return p;
}

static void *dput(const void *host, size_t bytes) { return dput_be(g_cu, host, bytes); }

static void *dput_on(mc_backend *be, const float *host, size_t n) {
    return dput_be(be, host, n * sizeof(float));
}

static void *dputf(const float *host, size_t n) { return dput(host, n * sizeof(float)); }

static void dget(float *host, const void *dev, size_t n) {
    CHECK_OK(g_cu->to_host(g_cu, host, dev, n * sizeof(float)));
}

static void dset(void *dev, const float *host, size_t n) {
    CHECK_OK(g_cu->to_device(g_cu, dev, host, n * sizeof(float)));
}

static void dfree(void *p) { g_cu->free(g_cu, p); }

/* A second CUDA backend, made while environment variable var is val (NULL on failure). */
static mc_backend *cuda_with(const char *var, const char *val) {
    mc_backend *be = NULL;
    setenv(var, val, 1);
    CHECK_OK(mc_backend_cuda_create(0, &be));
    unsetenv(var);
    return be;
}

/* A weight of n values stored as dtype t, on the host (cpu) and uploaded (gpu). */
typedef struct wpair {
    mc_wt cpu, gpu;
} wpair;

static wpair make_w(mc_dtype t, size_t n, float scale) {
    wpair w;
    float *f = frand(n, scale);
    void *h = malloc(n * mc_dtype_size(t) + 16);
    const void *dev = NULL;
    if (!h) exit(2);
    mc_convert_from_f32(h, f, t, n);
    free(f);
    CHECK_OK(g_cu->weights(g_cu, h, n * mc_dtype_size(t), &dev));
    w.cpu.data = h;
    w.cpu.dtype = t;
    w.gpu.data = dev;
    w.gpu.dtype = t;
    w.cpu.mlp = w.gpu.mlp = false;
    return w;
}

static void free_w(wpair *w) {
    if (w->gpu.data) g_cu->release_weights(g_cu, w->gpu.data);
    free((void *)(uintptr_t)w->cpu.data);
    w->cpu.data = w->gpu.data = NULL;
}

static const char *dt_name(mc_dtype t) { return mc_dtype_name(t); }

/* Relative L2 of got vs want with a label; counts a failure above tol. */
static double cmp(const char *what, const float *got, const float *want, size_t n, double tol) {
    double e = t_check_rel_l2(__FILE__, __LINE__, what, got, want, n, tol);
    printf("  %-58s rel L2 %.2e (tol %.0e)%s\n", what, e, tol, e <= tol ? "" : "  FAIL");
    return e;
}

/* Exact equality (NaN == NaN). */
static void same(const char *what, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == want[i]) && !(isnan(got[i]) && isnan(want[i]))) {
            fprintf(stderr, "%s: element %zu is %.9g, expected %.9g\n", what, i, (double)got[i],
                    (double)want[i]);
            printf("  %-58s FAIL (not identical)\n", what);
            t_checks_failed++;
            return;
        }
    printf("  %-58s identical\n", what);
}

/* ---- forward ops ---- */

static void test_embedding(void) {
    const int V = 1000, D = 96, T = 37;
    int32_t ids[37];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(mc_rng_next(&g_rng) % (uint64_t)V);
    for (int di = 0; di < 3; di++) {
        mc_dtype dt = (mc_dtype[]){MC_BF16, MC_F16, MC_F32}[di];
        wpair w = make_w(dt, (size_t)V * D, 1.0f);
        float *want = falloc((size_t)T * D), *got = fnan((size_t)T * D);
        int32_t *dids = dput(ids, sizeof ids);
        float *dout = dputf(got, (size_t)T * D);
        char what[96];
        g_ref->embedding(g_ref, want, ids, w.cpu, T, D);
        g_cu->embedding(g_cu, dout, dids, w.gpu, T, D);
        dget(got, dout, (size_t)T * D);
        snprintf(what, sizeof what, "embedding %s", dt_name(dt));
        same(what, got, want, (size_t)T * D);
        dfree(dids);
        dfree(dout);
        free(want);
        free(got);
        free_w(&w);
    }
}

static void test_rmsnorm(void) {
    const int cases[4][2] = {{37, 896}, {5, 64}, {300, 2048}, {1, 1500}};
    for (int ci = 0; ci < 4; ci++) {
        int T = cases[ci][0], D = cases[ci][1];
        size_t n = (size_t)T * D;
        wpair w = make_w(MC_BF16, (size_t)D, 1.0f);
        float *x = frand(n, 2.0f), *want = falloc(n), *got = fnan(n);
        float *dx = dputf(x, n), *dout = dputf(got, n);
        char what[96];
        g_ref->rmsnorm(g_ref, want, x, w.cpu, T, D, 1e-6f);
        g_cu->rmsnorm(g_cu, dout, dx, w.gpu, T, D, 1e-6f);
        dget(got, dout, n);
        snprintf(what, sizeof what, "rmsnorm T=%d D=%d", T, D);
        cmp(what, got, want, n, 1e-5);
        /* in place */
        g_cu->rmsnorm(g_cu, dx, dx, w.gpu, T, D, 1e-6f);
        dget(got, dx, n);
        snprintf(what, sizeof what, "rmsnorm in place T=%d D=%d", T, D);
        cmp(what, got, want, n, 1e-5);
        /* backward: dx += ... */
        {
            float *gy = frand(n, 1.0f), *acc = frand(n, 0.5f), *want_b = fdup(acc, n);
            float *dgy = dputf(gy, n), *dacc = dputf(acc, n), *dxx = dputf(x, n);
            float *xn = fnan(n), *dxn = dputf(xn, n);
            g_ref->rmsnorm_backward(g_ref, want_b, NULL, gy, x, w.cpu, T, D, 1e-6f);
            g_cu->rmsnorm_backward(g_cu, dacc, dxn, dgy, dxx, w.gpu, T, D, 1e-6f);
            dget(got, dacc, n);
            snprintf(what, sizeof what, "rmsnorm_backward T=%d D=%d", T, D);
            cmp(what, got, want_b, n, 1e-5);
            /* xn: the forward's output bit for bit */
            g_cu->rmsnorm(g_cu, dout, dxx, w.gpu, T, D, 1e-6f);
            dget(got, dout, n);
            dget(xn, dxn, n);
            CHECK(memcmp(xn, got, n * sizeof(float)) == 0);
            snprintf(what, sizeof what, "rmsnorm_backward T=%d D=%d xn vs rmsnorm's output", T, D);
            printf("  %-58s %s\n", what, memcmp(xn, got, n * sizeof(float)) == 0 ? "identical"
                                                                                : "DIFFERENT");
            dfree(dxn);
            free(xn);
            dfree(dgy);
            dfree(dacc);
            dfree(dxx);
            free(gy);
            free(acc);
            free(want_b);
        }
        dfree(dx);
        dfree(dout);
        free(x);
        free(want);
        free(got);
        free_w(&w);
    }
}

static void test_matmul(void) {
    const int Ms[6] = {1, 3, 8, 9, 64, 133};
    /* {1001, 2056}: one-row products staged in shared memory, the last block short */
    const int NK[5][2] = {{896, 896}, {130, 200}, {77, 100}, {300, 4864}, {1001, 2056}};
    const mc_dtype dts[3] = {MC_BF16, MC_F16, MC_F32};
    for (int di = 0; di < 3; di++)
        for (int nk = 0; nk < 5; nk++)
            for (int mi = 0; mi < 6; mi++) {
                int M = Ms[mi], N = NK[nk][0], K = NK[nk][1], ldo = N + (mi % 2 ? 5 : 0);
                bool with_bias = (mi + nk) % 2 == 0;
                wpair w = make_w(dts[di], (size_t)N * K, 0.05f);
                wpair b = make_w(dts[di], (size_t)N, 0.5f);
                mc_wt nob = {NULL, MC_F32, false};
                size_t no = (size_t)M * ldo;
                float *x = frand((size_t)M * K, 1.0f), *want = fnan(no), *got = fnan(no);
                float *dx = dputf(x, (size_t)M * K), *dout = dputf(got, no);
                double tol = (M <= 8 || dts[di] == MC_F32) ? 1e-5 : 1e-2;
                char what[96];
                g_ref->matmul(g_ref, want, ldo, x, w.cpu, with_bias ? b.cpu : nob, M, N, K);
                /* many rows: cublasGemmEx in the pass that first sees a shape, cuBLASLt's
                 * chosen algorithm after a synchronisation (compared) */
                for (int rep = M > 8 ? 0 : 1; rep < 2; rep++) {
                    if (rep == 1) CHECK_OK(g_cu->sync(g_cu));
                    g_cu->matmul(g_cu, dout, ldo, dx, w.gpu, with_bias ? b.gpu : nob, M, N, K);
                }
                dget(got, dout, no);
                snprintf(what, sizeof what, "matmul %s M=%d N=%d K=%d ldo=%d%s", dt_name(dts[di]), M,
                         N, K, ldo, with_bias ? " +bias" : "");
                /* compares the gaps too: both stay NaN */
                {
                    size_t nv = 0;
                    float *gv = falloc((size_t)M * N), *wv = falloc((size_t)M * N);
                    bool gaps_ok = true;
                    for (int m = 0; m < M; m++)
                        for (int j = 0; j < ldo; j++) {
                            float g = got[(size_t)m * ldo + j];
                            if (j < N) {
                                gv[nv] = g;
                                wv[nv++] = want[(size_t)m * ldo + j];
                            } else if (!isnan(g)) {
                                gaps_ok = false;
                            }
                        }
                    cmp(what, gv, wv, nv, tol);
                    CHECK(gaps_ok);
                    free(gv);
                    free(wv);
                }
                dfree(dx);
                dfree(dout);
                free(x);
                free(want);
                free(got);
                free_w(&w);
                free_w(&b);
            }
}

static void test_matmul_dx(void) {
    const int Ms[3] = {1, 9, 64};
    const int NK[2][2] = {{896, 128}, {100, 64}};
    const mc_dtype dts[2] = {MC_BF16, MC_F32};
    for (int di = 0; di < 2; di++)
        for (int nk = 0; nk < 2; nk++)
            for (int mi = 0; mi < 3; mi++)
                for (int acc = 0; acc < 2; acc++) {
                    int M = Ms[mi], N = NK[nk][0], K = NK[nk][1];
                    wpair w = make_w(dts[di], (size_t)N * K, 0.05f);
                    float *dy = frand((size_t)M * N, 1.0f);
                    float *base = acc ? frand((size_t)M * K, 1.0f) : fnan((size_t)M * K);
                    float *want = fdup(base, (size_t)M * K), *got = falloc((size_t)M * K);
                    float *ddy = dputf(dy, (size_t)M * N), *ddx = dputf(base, (size_t)M * K);
                    char what[96];
                    g_ref->matmul_dx(g_ref, want, dy, w.cpu, M, N, K, acc != 0);
                    /* as test_matmul: the call after a synchronisation is compared */
                    for (int rep = M > 8 ? 0 : 1; rep < 2; rep++) {
                        if (rep == 1) {
                            CHECK_OK(g_cu->sync(g_cu));
                            dset(ddx, base, (size_t)M * K);
                        }
                        g_cu->matmul_dx(g_cu, ddx, ddy, w.gpu, M, N, K, acc != 0);
                    }
                    dget(got, ddx, (size_t)M * K);
                    snprintf(what, sizeof what, "matmul_dx %s M=%d N=%d K=%d%s", dt_name(dts[di]), M,
                             N, K, acc ? " +=" : "");
                    cmp(what, got, want, (size_t)M * K, dts[di] == MC_F32 ? 1e-5 : 1e-2);
                    dfree(ddy);
                    dfree(ddx);
                    free(dy);
                    free(base);
                    free(want);
                    free(got);
                    free_w(&w);
                }
}

/* gemm_f32 against the CPU. From 256 token rows (M, or K for op(A) = A^T) a product runs
 * in TF32 through cuBLASLt (tolerance 2e-3: inputs rounded to 10 mantissa bits), unless
 * the backend was made with MC_CUDA_LORA=f32 (f32): then, as below 256 rows, the skinny f32
 * kernels or cuBLAS SGEMM run it (1e-5). */
static void gemm_f32_cases(bool f32) {
    /* M, N, K, leading-dimension padding: a generic shape, then the LoRA shapes that take
     * the skinny kernels (few output columns over many rows, aligned or not, with K split
     * or not; a small output summed over many rows; a rank-16 update of a wide output;
     * then shapes whose leading dimensions let those kernels take their vector loads;
     * last the widths of 33-64 that a group of projections sharing an input gives) */
    const int shapes[17][4] = {{37, 16, 70, 3},   {300, 16, 200, 4},   {1030, 8, 96, 3},
                               {16, 200, 1100, 4}, {200, 16, 1100, 4},  {300, 16, 2500, 4},
                               {300, 200, 16, 4}, {70, 130, 8, 3},     {1000, 32, 300, 4},
                               {200, 14, 1102, 2}, {16, 198, 1100, 4}, {300, 199, 16, 4},
                               {300, 48, 900, 4},  {1000, 64, 300, 3}, {300, 200, 48, 4},
                               {48, 200, 1100, 4}, {48, 40, 1100, 3}};
    for (int si = 0; si < 17; si++)
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 2; bi++) {
                const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], pad = shapes[si][3];
                int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + 2, ldc = N + 1;
                size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
                size_t nc = (size_t)M * ldc;
                float beta = bi ? 1.0f : 0.0f;
                float *A = frand(na, 1.0f), *B = frand(nb, 1.0f);
                float *C = bi ? frand(nc, 1.0f) : fnan(nc), *want = fdup(C, nc), *got = falloc(nc);
                float *dA = dputf(A, na), *dB = dputf(B, nb), *dC = dputf(C, nc);
                char what[96];
                g_ref->gemm_f32(g_ref, ta, tb, M, N, K, 0.7f, A, lda, B, ldb, beta, want, ldc);
                g_cu->gemm_f32(g_cu, ta, tb, M, N, K, 0.7f, dA, lda, dB, ldb, beta, dC, ldc);
                dget(got, dC, nc);
                snprintf(what, sizeof what, "gemm_f32 M=%d N=%d K=%d ta=%d tb=%d beta=%g", M, N, K,
                         ta, tb, (double)beta);
                /* the [M, N] part; the gap column must keep its old value */
                {
                    float *gv = falloc((size_t)M * N), *wv = falloc((size_t)M * N);
                    bool gap_ok = true;
                    for (int m = 0; m < M; m++) {
                        for (int j = 0; j < N; j++) {
                            gv[(size_t)m * N + j] = got[(size_t)m * ldc + j];
                            wv[(size_t)m * N + j] = want[(size_t)m * ldc + j];
                        }
                        float g = got[(size_t)m * ldc + N], o = C[(size_t)m * ldc + N];
                        if (!(g == o) && !(isnan(g) && isnan(o))) gap_ok = false;
                    }
                    cmp(what, gv, wv, (size_t)M * N,
                        !f32 && (ta ? K : M) >= 256 ? 2e-3 : 1e-5);
                    CHECK(gap_ok);
                    free(gv);
                    free(wv);
                }
                dfree(dA);
                dfree(dB);
                dfree(dC);
                free(A);
                free(B);
                free(C);
                free(want);
                free(got);
            }
}

/* x rounded to bf16 (a host copy). */
static float *bf16_round(const float *x, size_t n) {
    float *r = falloc(n);
    for (size_t i = 0; i < n; i++) r[i] = mc_bf16_to_f32(mc_f32_to_bf16(x[i]));
    return r;
}

/* One product C = 0.7 op(A) op(B) on the GPU against the CPU's on inputs rounded to bf16
 * (tol: the bf16 operands took it; only the order of the f32 sums differs) or on the f32
 * inputs (tol 2e-3: TF32, when the wide operand has no shadow). */
static void gemm16_case(const char *what, bool ta, bool tb, int M, int N, int K, const float *A,
                        int lda, const void *dA, const float *B, int ldb, const void *dB,
                        double tol, bool rounded) {
    /* the spans (the last row needs only its own columns) */
    const size_t na = (size_t)((ta ? K : M) - 1) * (size_t)lda + (size_t)(ta ? M : K);
    const size_t nb = (size_t)((tb ? N : K) - 1) * (size_t)ldb + (size_t)(tb ? K : N);
    const size_t nc = (size_t)M * (size_t)N;
    float *a = rounded ? bf16_round(A, na) : fdup(A, na);
    float *b = rounded ? bf16_round(B, nb) : fdup(B, nb);
    float *want = fnan(nc), *got = falloc(nc), *dC = dputf(want, nc);
    g_ref->gemm_f32(g_ref, ta, tb, M, N, K, 0.7f, a, lda, b, ldb, 0.0f, want, N);
    g_cu->gemm_f32(g_cu, ta, tb, M, N, K, 0.7f, (const float *)dA, lda, (const float *)dB, ldb,
                   0.0f, dC, N);
    dget(got, dC, nc);
    cmp(what, got, want, nc, tol);
    dfree(dC);
    free(a);
    free(b);
    free(want);
    free(got);
}

/* The LoRA products of training size whose wide token operand has a bf16 shadow (here the
 * one a bf16 GEMM made of its input) read it in bf16, the other operand converted whole (it
 * lives in a small allocation: columns at offsets 16 and 32 of [K, 48] share one copy): the
 * results match the CPU on bf16-rounded inputs to 1e-5, which TF32 (10 mantissa bits
 * against bf16's 7) would not. Writing either operand drops its copy: the next product
 * sees the new values, in bf16 again after a GEMM converts the wide one anew, in TF32
 * before. */
static void test_gemm_f32_bf16(void) {
    const int T = 512, W = 192, R = 48;
    float *X = frand((size_t)T * W, 1.0f), *Y = frand((size_t)T * R, 1.0f);
    float *Yc = frand((size_t)T * R, 1.0f), *P = frand((size_t)16 * W, 1.0f);
    float *o = fnan((size_t)T * 8);
    void *dX = dputf(X, (size_t)T * W), *dY = dputf(Y, (size_t)T * R);
    void *dP = dputf(P, (size_t)16 * W), *dO = dputf(o, (size_t)T * 8);
    wpair w = make_w(MC_BF16, (size_t)8 * W, 0.1f);
    /* a bf16 GEMM on X leaves X's bf16 copy */
    g_cu->matmul(g_cu, dO, 8, dX, w.gpu, (mc_wt){NULL, MC_F32, false}, T, 8, W);
    gemm16_case("bf16 x A^T (rows: X [512,192] by P^T)", false, true, T, 16, W, X, W, dX, P, W,
                dP, 1e-5, true);
    for (int k = 0; k < 2; k++) {
        const int off = 16 + 16 * k;
        char what[96];
        snprintf(what, sizeof what, "bf16 dy^T xa (sum over rows, xa columns %d..%d of 48)", off,
                 off + 15);
        gemm16_case(what, true, false, W, 16, T, X, W, dX, Y + off, R, (const float *)dY + off,
                    1e-5, true);
        snprintf(what, sizeof what, "bf16 t^T x (wide B; t columns %d..%d of 48)", off, off + 15);
        gemm16_case(what, true, false, 16, W, T, Y + off, R, (const float *)dY + off, X, W, dX,
                    1e-5, true);
    }
    /* new values in the small operand: its copy is dropped and made again */
    dset(dY, Yc, (size_t)T * R);
    gemm16_case("  after a write to xa", true, false, W, 16, T, X, W, dX, Yc, R, dY, 1e-5, true);
    /* new values in the wide operand: no copy until a GEMM converts it */
    dset(dX, Y, (size_t)T * R); /* X's first rows change */
    memcpy(X, Y, (size_t)T * R * sizeof(float));
    gemm16_case("  after a write to x: TF32", true, false, W, 16, T, X, W, dX, Yc, R, dY, 2e-3,
                false);
    g_cu->matmul(g_cu, dO, 8, dX, w.gpu, (mc_wt){NULL, MC_F32, false}, T, 8, W);
    gemm16_case("  x converted again: bf16", true, false, W, 16, T, X, W, dX, Yc, R, dY, 1e-5,
                true);
    CHECK_OK(g_cu->sync(g_cu));
    free_w(&w);
    dfree(dX);
    dfree(dY);
    dfree(dP);
    dfree(dO);
    free(X);
    free(Y);
    free(Yc);
    free(P);
    free(o);
}

/* Rank-r LoRA updates of training-sized outputs right before the SwiGLU that reads them,
 * folded into it: forward (up's update of rank 32 first, then gate's of rank 16; both
 * written back), backward (dout's, with dgate over dout as the trainer calls it), against
 * the CPU. Folded, the updates sum in f32 (1e-5); TF32 would not meet that. Not folded, in
 * TF32 (2e-3): a forward with only up's update, a backward whose dgate is not dout (dout
 * must still receive its update), and an update held until a copy to the host reads it
 * (both layouts of B). */
static void test_lora_swiglu(void) {
    const int M = 300, F = 200, rg = 16, ru = 32, W = rg + ru;
    const size_t n = (size_t)M * F;
    const float s = 2.0f;
    float *xa = frand((size_t)M * W, 1.0f), *Bg = frand((size_t)F * rg, 0.1f);
    float *Bu = frand((size_t)F * ru, 0.1f), *Ad = frand((size_t)rg * F, 0.1f);
    float *g0 = frand(n, 1.0f), *u0 = frand(n, 1.0f), *o0 = frand(n, 1.0f);
    float *g = fdup(g0, n), *u = fdup(u0, n), *h = fnan(n), *du = fnan(n), *got = falloc(n);
    void *d_xa = dputf(xa, (size_t)M * W), *d_Bg = dputf(Bg, (size_t)F * rg);
    void *d_Bu = dputf(Bu, (size_t)F * ru), *d_Ad = dputf(Ad, (size_t)rg * F);
    void *d_g = dputf(g0, n), *d_u = dputf(u0, n), *d_h = dputf(h, n), *d_o = dputf(o0, n);
    void *d_du = dputf(du, n), *d_dg = dputf(h, n);
    for (int only_up = 0; only_up < 2; only_up++) {
        memcpy(g, g0, n * sizeof(float));
        memcpy(u, u0, n * sizeof(float));
        dset(d_g, g0, n);
        dset(d_u, u0, n);
        g_ref->gemm_f32(g_ref, false, true, M, F, ru, s, xa + rg, W, Bu, ru, 1.0f, u, F);
        g_cu->gemm_f32(g_cu, false, true, M, F, ru, s, (const float *)d_xa + rg, W, d_Bu, ru,
                       1.0f, d_u, F);
        if (!only_up) {
            g_ref->gemm_f32(g_ref, false, true, M, F, rg, s, xa, W, Bg, rg, 1.0f, g, F);
            g_cu->gemm_f32(g_cu, false, true, M, F, rg, s, d_xa, W, d_Bg, rg, 1.0f, d_g, F);
        }
        g_ref->swiglu(g_ref, h, g, u, n);
        g_cu->swiglu(g_cu, d_h, d_g, d_u, n);
        dget(got, d_h, n);
        cmp(only_up ? "swiglu after up's update alone (TF32)" : "swiglu with both updates folded",
            got, h, n, only_up ? 2e-3 : 1e-5);
        dget(got, d_u, n);
        cmp("  up, updated", got, u, n, only_up ? 2e-3 : 1e-5);
        dget(got, d_g, n);
        cmp("  gate", got, g, n, 1e-5);
    }
    /* backward: dout += t A (t: xa's first 16 columns), then the SwiGLU backward, with
     * dgate over dout (folded), then into a buffer of its own (not folded) */
    for (int own = 0; own < 2; own++) {
        float *o = fdup(o0, n), *dg = fnan(n);
        const double tol = own ? 2e-3 : 1e-5;
        void *d_out = own ? d_dg : d_o;
        dset(d_g, g, n); /* the same inputs on both sides */
        dset(d_u, u, n);
        dset(d_o, o0, n);
        g_ref->gemm_f32(g_ref, false, false, M, F, rg, 1.0f, xa, W, Ad, F, 1.0f, o, F);
        g_ref->swiglu_backward(g_ref, own ? dg : o, du, h, o, g, u, n);
        g_cu->gemm_f32(g_cu, false, false, M, F, rg, 1.0f, d_xa, W, d_Ad, F, 1.0f, d_o, F);
        g_cu->swiglu_backward(g_cu, d_out, d_du, d_h, d_o, d_g, d_u, n);
        dget(got, d_out, n);
        cmp(own ? "swiglu_backward, dgate not over dout (TF32): dgate"
                : "swiglu_backward with dout's update folded: dgate",
            got, own ? dg : o, n, tol);
        dget(got, d_du, n);
        cmp("  dup", got, du, n, tol);
        dget(got, d_h, n);
        cmp("  h", got, h, n, tol);
        if (own) {
            dget(got, d_o, n);
            cmp("  dout, updated", got, o, n, tol);
        }
        free(o);
        free(dg);
    }
    /* an update held, then read by a copy to the host: it runs first */
    for (int tb = 0; tb < 2; tb++) {
        float *o = fdup(o0, n);
        dset(d_o, o0, n);
        if (tb) {
            g_ref->gemm_f32(g_ref, false, true, M, F, rg, s, xa, W, Bg, rg, 1.0f, o, F);
            g_cu->gemm_f32(g_cu, false, true, M, F, rg, s, d_xa, W, d_Bg, rg, 1.0f, d_o, F);
        } else {
            g_ref->gemm_f32(g_ref, false, false, M, F, rg, s, xa, W, Ad, F, 1.0f, o, F);
            g_cu->gemm_f32(g_cu, false, false, M, F, rg, s, d_xa, W, d_Ad, F, 1.0f, d_o, F);
        }
        dget(got, d_o, n);
        cmp(tb ? "an update held, then copied to the host (B^T)"
               : "an update held, then copied to the host (B)",
            got, o, n, 2e-3);
        free(o);
    }
    CHECK_OK(g_cu->sync(g_cu));
    void *dev[10] = {d_xa, d_Bg, d_Bu, d_Ad, d_g, d_u, d_h, d_o, d_du, d_dg};
    for (int i = 0; i < 10; i++) dfree(dev[i]);
    float *host[11] = {xa, Bg, Bu, Ad, g0, u0, o0, g, u, h, du};
    for (int i = 0; i < 11; i++) free(host[i]);
    free(got);
}

/* Packed activations: a training-sized MLP (rows >= 256, an expanding projection) keeps
 * gate, up, h and the gradients of the down projection and the SwiGLU in bf16 in their own
 * buffers. Forward and backward as the trainer calls them (gate/up GEMMs, their rank-16
 * updates folded into the SwiGLU, the down GEMM and LoRA products reading h, the down
 * projection's input gradient with its update folded into the SwiGLU backward, the gate
 * GEMM's input gradient and B gradient reading dgate) against the CPU in f32: within bf16
 * rounding (1e-2), with no packed range expanded on the way; then a read of each output by
 * a host copy, a partial write and an update whose SwiGLU does not take it expand them. */
static void test_packed(void) {
    const int M = 320, D = 64, F = 192, r = 16, W = 2 * r;
    const size_t nF = (size_t)M * F, nD = (size_t)M * D;
    const float s = 2.0f;
    const mc_wt nob = {NULL, MC_F32, false};
    wpair wg = make_w(MC_BF16, (size_t)F * D, 0.1f), wu = make_w(MC_BF16, (size_t)F * D, 0.1f);
    wpair wd = make_w(MC_BF16, (size_t)D * F, 0.1f);
    wg.gpu.mlp = wu.gpu.mlp = wd.gpu.mlp = true; /* MLP projections: their products pack */
    float *x = frand(nD, 1.0f), *xa = frand((size_t)M * W, 1.0f), *dy = frand(nD, 1.0f);
    float *Bg = frand((size_t)F * r, 0.1f), *Bu = frand((size_t)F * r, 0.1f);
    float *t = frand((size_t)M * r, 1.0f), *Ad = frand((size_t)r * F, 0.1f);
    float *g = falloc(nF), *u = falloc(nF), *h = falloc(nF), *y = falloc(nD), *dh = falloc(nF);
    float *du = falloc(nF), *h2 = falloc(nF), *dx = falloc(nD), *gB = falloc((size_t)F * r);
    float *got = falloc(nF);
    void *d_x = dputf(x, nD), *d_xa = dputf(xa, (size_t)M * W), *d_dy = dputf(dy, nD);
    void *d_Bg = dputf(Bg, (size_t)F * r), *d_Bu = dputf(Bu, (size_t)F * r);
    void *d_t = dputf(t, (size_t)M * r), *d_Ad = dputf(Ad, (size_t)r * F);
    void *d_g = dputf(got, nF), *d_u = dputf(got, nF), *d_h = dputf(got, nF);
    void *d_y = dputf(got, nD), *d_dh = dputf(got, nF), *d_du = dputf(got, nF);
    void *d_h2 = dputf(got, nF), *d_dx = dputf(got, nD), *d_gB = dputf(got, (size_t)F * r);
    int live = 0;
    long un0;
    memset(gB, 0, (size_t)F * r * sizeof(float));
    dset(d_gB, gB, (size_t)F * r);
    CHECK_OK(g_cu->sync(g_cu));
    un0 = mc_cuda_packed_stats(g_cu, NULL);
    for (int pass = 0; pass < 2; pass++) { /* the second with cuBLASLt's chosen algorithms */
        mc_backend *b[2] = {g_ref, g_cu};
        for (int i = 0; i < 2; i++) {
            mc_backend *e = b[i];
            const bool cu = i == 1;
            if (!cu && pass) continue;
            e->matmul(e, cu ? d_g : g, F, cu ? d_x : x, cu ? wg.gpu : wg.cpu, nob, M, F, D);
            e->matmul(e, cu ? d_u : u, F, cu ? d_x : x, cu ? wu.gpu : wu.cpu, nob, M, F, D);
            e->gemm_f32(e, false, true, M, F, r, s, cu ? (float *)d_xa : xa, W, cu ? d_Bg : Bg,
                        r, 1.0f, cu ? d_g : g, F);
            e->gemm_f32(e, false, true, M, F, r, s, (cu ? (float *)d_xa : xa) + r, W,
                        cu ? d_Bu : Bu, r, 1.0f, cu ? d_u : u, F);
            e->swiglu(e, cu ? d_h : h, cu ? d_g : g, cu ? d_u : u, nF);
            e->matmul(e, cu ? d_y : y, D, cu ? d_h : h, cu ? wd.gpu : wd.cpu, nob, M, D, F);
            e->matmul_dx(e, cu ? d_dh : dh, cu ? d_dy : dy, cu ? wd.gpu : wd.cpu, M, D, F,
                         false);
            e->gemm_f32(e, false, false, M, F, r, 1.0f, cu ? d_t : t, r, cu ? d_Ad : Ad, F, 1.0f,
                        cu ? d_dh : dh, F);
            e->swiglu_backward(e, cu ? d_dh : dh, cu ? d_du : du, cu ? d_h2 : h2,
                               cu ? d_dh : dh, cu ? d_g : g, cu ? d_u : u, nF);
            e->matmul_dx(e, cu ? d_dx : dx, cu ? d_dh : dh, cu ? wg.gpu : wg.cpu, M, F, D, false);
            e->gemm_f32(e, true, false, F, r, M, s, cu ? d_dh : dh, F, cu ? (float *)d_xa : xa,
                        W, 1.0f, cu ? d_gB : gB, r);
        }
        if (pass == 0) CHECK_OK(g_cu->sync(g_cu));
    }
    (void)mc_cuda_packed_stats(g_cu, &live);
    printf("  %d ranges packed, %ld expanded on the way\n", live,
           mc_cuda_packed_stats(g_cu, NULL) - un0);
    CHECK(live >= 6); /* gate, up, h, dgate (over dh), dup, h again */
    CHECK_INT((int)(mc_cuda_packed_stats(g_cu, NULL) - un0), 0);
    /* gB summed twice on the device (two passes): compare half of it */
    dget(got, d_gB, (size_t)F * r);
    for (size_t i = 0; i < (size_t)F * r; i++) got[i] *= 0.5f;
    cmp("packed: B gradient dgate^T xa (read in place)", got, gB, (size_t)F * r, 1e-2);
    dget(got, d_dx, nD);
    cmp("packed: dx = dgate Wg (read in place)", got, dx, nD, 1e-2);
    dget(got, d_y, nD);
    cmp("packed: y = h Wd^T (read in place)", got, y, nD, 1e-2);
    {
        const float *want[6] = {g, u, h, dh, du, h2};
        void *dev[6] = {d_g, d_u, d_h, d_dh, d_du, d_h2};
        const char *names[6] = {"gate (with its update)", "up (with its update)", "h",
                                "dgate (over dh, with its update)", "dup", "h from the backward"};
        for (int i = 0; i < 6; i++) {
            char what[96];
            snprintf(what, sizeof what, "packed: %s, copied to the host", names[i]);
            dget(got, dev[i], nF);
            cmp(what, got, want[i], nF, 1e-2);
        }
    }
    CHECK_INT((int)(mc_cuda_packed_stats(g_cu, NULL) - un0), 6);
    /* a partial write of a packed range keeps the rest: zero rows 0..9 of a packed gate */
    g_cu->matmul(g_cu, d_g, F, d_x, wg.gpu, nob, M, F, D);
    g_ref->matmul(g_ref, g, F, x, wg.cpu, nob, M, F, D);
    g_cu->zero(g_cu, d_g, (size_t)10 * F * sizeof(float));
    memset(g, 0, (size_t)10 * F * sizeof(float));
    dget(got, d_g, nF);
    cmp("packed: gate after a write of its first 10 rows", got, g, nF, 1e-2);
    /* an update of a packed up whose SwiGLU is not the next op: it runs in bf16 alone */
    g_cu->matmul(g_cu, d_u, F, d_x, wu.gpu, nob, M, F, D);
    g_ref->matmul(g_ref, u, F, x, wu.cpu, nob, M, F, D);
    g_cu->gemm_f32(g_cu, false, true, M, F, r, s, (float *)d_xa + r, W, d_Bu, r, 1.0f, d_u, F);
    g_ref->gemm_f32(g_ref, false, true, M, F, r, s, xa + r, W, Bu, r, 1.0f, u, F);
    g_cu->add(g_cu, d_dx, d_y, nD); /* any other op */
    dget(got, d_u, nF);
    cmp("packed: up after an update launched on its own (bf16)", got, u, nF, 1e-2);
    {
        /* a rank-48 update of a packed output (not held: ranks over 32) runs in bf16 too,
         * with nothing expanded; a widening product of a weight that is not an MLP
         * projection (a vocabulary's logits) is not packed */
        int live0 = 0, live1 = 0;
        g_cu->matmul(g_cu, d_u, F, d_x, wu.gpu, nob, M, F, D);
        g_ref->matmul(g_ref, u, F, x, wu.cpu, nob, M, F, D);
        const int R3 = 3 * r;
        float *x3 = frand((size_t)M * R3, 1.0f), *B3 = frand((size_t)F * R3, 0.1f);
        void *d_x3 = dputf(x3, (size_t)M * R3), *d_B3 = dputf(B3, (size_t)F * R3);
        const long un1 = mc_cuda_packed_stats(g_cu, &live0);
        g_cu->gemm_f32(g_cu, false, true, M, F, R3, s, d_x3, R3, d_B3, R3, 1.0f, d_u, F);
        g_ref->gemm_f32(g_ref, false, true, M, F, R3, s, x3, R3, B3, R3, 1.0f, u, F);
        CHECK_INT((int)(mc_cuda_packed_stats(g_cu, &live1) - un1), 0);
        CHECK_INT(live1, live0);
        dget(got, d_u, nF);
        cmp("packed: up after a rank-48 update (bf16)", got, u, nF, 1e-2);
        dfree(d_x3);
        dfree(d_B3);
        free(x3);
        free(B3);
        wpair wv = make_w(MC_BF16, (size_t)F * D, 0.1f); /* mlp false */
        (void)mc_cuda_packed_stats(g_cu, &live0);
        g_cu->matmul(g_cu, d_h, F, d_x, wv.gpu, nob, M, F, D);
        g_ref->matmul(g_ref, h, F, x, wv.cpu, nob, M, F, D);
        (void)mc_cuda_packed_stats(g_cu, &live1);
        CHECK_INT(live1, live0); /* none made */
        dget(got, d_h, nF);
        cmp("  a widening product of a non-MLP weight (f32)", got, h, nF, 1e-2);
        free_w(&wv);
    }
    {
        /* RMSNorm outputs of hidden-size rows (512 or more) are packed too: the forward's,
         * read by a GEMM, and the xn the backward gives, read by a LoRA A gradient's sum
         * over rows */
        const int Dn = 512;
        const size_t nn = (size_t)M * Dn;
        const float eps = 1e-6f;
        wpair wn = make_w(MC_BF16, (size_t)Dn, 1.0f), wp = make_w(MC_BF16, (size_t)D * Dn, 0.1f);
        float *xs = frand(nn, 1.0f), *dys = frand(nn, 1.0f), *dxs = frand(nn, 1.0f);
        float *o = falloc(nn), *xn = falloc(nn), *pr = falloc(nD), *gA = falloc((size_t)r * Dn);
        float *dx0 = fdup(dxs, nn), *gotn = falloc(nn);
        void *d_xs = dputf(xs, nn), *d_dys = dputf(dys, nn), *d_dxs = dputf(dxs, nn);
        void *d_o = dputf(gotn, nn), *d_xn = dputf(gotn, nn), *d_pr = dputf(gotn, nD);
        void *d_gA = dputf(gotn, (size_t)r * Dn);
        int live0 = 0, live1 = 0;
        long un1 = mc_cuda_packed_stats(g_cu, &live0);
        g_ref->rmsnorm(g_ref, o, xs, wn.cpu, M, Dn, eps);
        g_ref->matmul(g_ref, pr, D, o, wp.cpu, nob, M, D, Dn);
        g_ref->rmsnorm_backward(g_ref, dxs, xn, dys, xs, wn.cpu, M, Dn, eps);
        g_ref->gemm_f32(g_ref, true, false, r, Dn, M, 1.0f, t, r, xn, Dn, 0.0f, gA, Dn);
        g_cu->rmsnorm(g_cu, d_o, d_xs, wn.gpu, M, Dn, eps);
        g_cu->matmul(g_cu, d_pr, D, d_o, wp.gpu, nob, M, D, Dn);
        g_cu->rmsnorm_backward(g_cu, d_dxs, d_xn, d_dys, d_xs, wn.gpu, M, Dn, eps);
        g_cu->gemm_f32(g_cu, true, false, r, Dn, M, 1.0f, d_t, r, d_xn, Dn, 0.0f, d_gA, Dn);
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_packed_stats(g_cu, &live1) - un1), 0);
        CHECK_INT(live1, live0 + 2);
        dget(gotn, d_pr, nD);
        cmp("packed: rmsnorm out read by a GEMM", gotn, pr, nD, 1e-2);
        dget(gotn, d_gA, (size_t)r * Dn);
        cmp("packed: rmsnorm_backward xn read by t^T xn", gotn, gA, (size_t)r * Dn, 1e-2);
        dget(gotn, d_o, nn);
        cmp("packed: rmsnorm out, copied to the host", gotn, o, nn, 1e-2);
        dget(gotn, d_xn, nn);
        cmp("packed: rmsnorm_backward xn, copied to the host", gotn, xn, nn, 1e-2);
        dget(gotn, d_dxs, nn);
        cmp("  rmsnorm_backward dx (f32)", gotn, dxs, nn, 1e-5);
        void *dv[7] = {d_xs, d_dys, d_dxs, d_o, d_xn, d_pr, d_gA};
        for (int i = 0; i < 7; i++) dfree(dv[i]);
        float *hv[9] = {xs, dys, dxs, o, xn, pr, gA, dx0, gotn};
        for (int i = 0; i < 9; i++) free(hv[i]);
        free_w(&wn);
        free_w(&wp);
    }
    CHECK_OK(g_cu->sync(g_cu));
    free_w(&wg);
    free_w(&wu);
    free_w(&wd);
    void *dev[15] = {d_x, d_xa, d_dy, d_Bg, d_Bu, d_t, d_Ad, d_g, d_u, d_h, d_y, d_dh, d_du,
                     d_h2, d_dx};
    for (int i = 0; i < 15; i++) dfree(dev[i]);
    dfree(d_gB);
    float *host[17] = {x, xa, dy, Bg, Bu, t, Ad, g, u, h, y, dh, du, h2, dx, gB, got};
    for (int i = 0; i < 17; i++) free(host[i]);
}

/* One forward of gate and up as the trainer calls it (both GEMMs, then each rank-r update,
 * then the SwiGLU), on be (weights wg, wu uploaded to it) or the CPU (host weights): rank
 * 0 leaves a projection without its update; tb picks B's layout ([F, r] or [r, F]). */
typedef struct kc_io {
    float *x, *xa, *Bg, *Bu, *g, *u, *h;
} kc_io;

static void kcat_fwd(mc_backend *be, const kc_io *io, mc_wt wg, mc_wt wu, int M, int D, int F,
                     int rg, int ru, bool tb) {
    const mc_wt nob = {NULL, MC_F32, false};
    const int W = 64; /* xa: gate's columns first, up's from 32 */
    be->matmul(be, io->g, F, io->x, wg, nob, M, F, D);
    be->matmul(be, io->u, F, io->x, wu, nob, M, F, D);
    if (rg)
        be->gemm_f32(be, false, tb, M, F, rg, 2.0f, io->xa, W, io->Bg, tb ? rg : F, 1.0f, io->g,
                     F);
    if (ru)
        be->gemm_f32(be, false, tb, M, F, ru, 0.5f, io->xa + 32, W, io->Bu, tb ? ru : F, 1.0f,
                     io->u, F);
    be->swiglu(be, io->h, io->g, io->u, (size_t)M * F);
}

/* The rank-r updates of gate and up computed by their GEMMs over widened operands (K
 * concatenation) on backend be: ranks 16 and 16 as the trainer has them, 8 and 24 (both
 * padded to 24 columns), up's update alone, and B stored [r, F]; each against the CPU
 * within bf16 rounding (1e-2), twice (the second time with cuBLASLt's chosen algorithms
 * and, unless be makes them on every call, the widened weights kept), counting the updates
 * the GEMMs took. */
static void kcat_cases(mc_backend *be, const char *tag) {
    const int M = 320, D = 64, F = 192;
    const size_t nF = (size_t)M * F, nD = (size_t)M * D, nw = (size_t)F * D;
    static const int cases[4][3] = {{16, 16, 1}, {8, 24, 1}, {0, 16, 1}, {16, 16, 0}};
    float *wgf = frand(nw, 0.1f), *wuf = frand(nw, 0.1f);
    void *wgh = malloc(nw * 2), *wuh = malloc(nw * 2);
    const void *wgd = NULL, *wud = NULL;
    kc_io hio, dio;
    float *got = falloc(nF);
    if (!wgh || !wuh) exit(2);
    mc_convert_from_f32(wgh, wgf, MC_BF16, nw);
    mc_convert_from_f32(wuh, wuf, MC_BF16, nw);
    CHECK_OK(be->weights(be, wgh, nw * 2, &wgd));
    CHECK_OK(be->weights(be, wuh, nw * 2, &wud));
    const mc_wt cg = {wgh, MC_BF16, true}, cu_ = {wuh, MC_BF16, true};
    const mc_wt gg = {wgd, MC_BF16, true}, gu = {wud, MC_BF16, true};
    hio.x = frand(nD, 1.0f);
    hio.xa = frand((size_t)M * 64, 1.0f);
    hio.Bg = frand((size_t)F * 32, 0.1f);
    hio.Bu = frand((size_t)F * 32, 0.1f);
    hio.g = falloc(nF);
    hio.u = falloc(nF);
    hio.h = falloc(nF);
    dio.x = (float *)dput_on(be, hio.x, nD);
    dio.xa = (float *)dput_on(be, hio.xa, (size_t)M * 64);
    dio.Bg = (float *)dput_on(be, hio.Bg, (size_t)F * 32);
    dio.Bu = (float *)dput_on(be, hio.Bu, (size_t)F * 32);
    dio.g = (float *)dput_on(be, got, nF);
    dio.u = (float *)dput_on(be, got, nF);
    dio.h = (float *)dput_on(be, got, nF);
    for (int k = 0; k < 4; k++) {
        const int rg = cases[k][0], ru = cases[k][1];
        const bool tb = cases[k][2] != 0;
        kcat_fwd(g_ref, &hio, cg, cu_, M, D, F, rg, ru, tb);
        for (int pass = 0; pass < 2; pass++) {
            const long n0 = mc_cuda_kcat_stats(be);
            char what[96];
            kcat_fwd(be, &dio, gg, gu, M, D, F, rg, ru, tb);
            CHECK_OK(be->sync(be));
            CHECK_INT((int)(mc_cuda_kcat_stats(be) - n0), (rg > 0) + (ru > 0));
            snprintf(what, sizeof what, "%s ranks %d/%d%s%s: h", tag, rg, ru,
                     tb ? "" : ", B [r, F]", pass ? ", again" : "");
            CHECK_OK(be->to_host_f32(be, got, dio.h, nF));
            cmp(what, got, hio.h, nF, 1e-2);
            CHECK_OK(be->to_host_f32(be, got, dio.g, nF));
            cmp("  gate (with its update)", got, hio.g, nF, 1e-2);
            CHECK_OK(be->to_host_f32(be, got, dio.u, nF));
            cmp("  up (with its update)", got, hio.u, nF, 1e-2);
        }
    }
    float *dev[7] = {dio.x, dio.xa, dio.Bg, dio.Bu, dio.g, dio.u, dio.h};
    for (int i = 0; i < 7; i++) be->free(be, dev[i]);
    be->release_weights(be, wgd);
    be->release_weights(be, wud);
    float *host[9] = {hio.x, hio.xa, hio.Bg, hio.Bu, hio.g, hio.u, hio.h, wgf, wuf};
    for (int i = 0; i < 9; i++) free(host[i]);
    free(wgh);
    free(wuh);
    free(got);
}

/* A group's A-gradient sum over token rows, gA += s T^T x with x read through its bf16
 * shadow, by the kernel of its own: against the CPU within bf16 rounding (1e-2) for 48, 32,
 * 16 and 8 ranks, token rows not a multiple of the kernel's 32-row steps, sums accumulated
 * over two passes, counting the products the kernel took; then an f32 x with no bf16 view. */
static void test_agrad(void) {
    const int M = 320, N = 384, D = 64, W = 48;
    const float s = 0.5f;
    wpair w = make_w(MC_BF16, (size_t)D * N, 0.1f);
    float *x = frand((size_t)M * N, 1.0f), *T = frand((size_t)M * W, 1.0f);
    float *gA = falloc((size_t)W * N), *got = falloc((size_t)W * N);
    void *d_x = dputf(x, (size_t)M * N), *d_T = dputf(T, (size_t)M * W);
    void *d_gA = dputf(gA, (size_t)W * N), *d_y = dputf(got, (size_t)M * D);
    static const int ranks[4] = {48, 32, 16, 8};
    /* x W^T converts x: the bf16 shadow the A gradient reads */
    g_cu->matmul(g_cu, d_y, D, d_x, w.gpu, (mc_wt){NULL, MC_F32, false}, M, D, N);
    for (int i = 0; i < 4; i++) {
        const int r = ranks[i];
        const long n0 = mc_cuda_ga_stats(g_cu);
        char what[96];
        memset(gA, 0, (size_t)W * N * sizeof(float));
        dset(d_gA, gA, (size_t)W * N);
        for (int pass = 0; pass < 2; pass++) {
            g_cu->gemm_f32(g_cu, true, false, r, N, M, s, d_T, W, d_x, N, 1.0f, d_gA, N);
            g_ref->gemm_f32(g_ref, true, false, r, N, M, s, T, W, x, N, 1.0f, gA, N);
        }
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_ga_stats(g_cu) - n0), 2);
        snprintf(what, sizeof what, "A gradient, %d ranks, over two passes", r);
        dget(got, d_gA, (size_t)W * N);
        cmp(what, got, gA, (size_t)r * N, 1e-2);
    }
    {
        /* an x without a bf16 view: read in f32 and rounded on the way */
        void *d_x2 = dputf(x, (size_t)M * N);
        const long n0 = mc_cuda_ga_stats(g_cu);
        memset(gA, 0, (size_t)W * N * sizeof(float));
        dset(d_gA, gA, (size_t)W * N);
        g_cu->gemm_f32(g_cu, true, false, 16, N, M, s, d_T, W, d_x2, N, 1.0f, d_gA, N);
        g_ref->gemm_f32(g_ref, true, false, 16, N, M, s, T, W, x, N, 1.0f, gA, N);
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_ga_stats(g_cu) - n0), 1);
        dget(got, d_gA, (size_t)W * N);
        cmp("A gradient of an f32 x, 16 ranks", got, gA, (size_t)16 * N, 1e-2);
        dfree(d_x2);
    }
    void *dev[4] = {d_x, d_T, d_gA, d_y};
    for (int i = 0; i < 4; i++) dfree(dev[i]);
    float *host[4] = {x, T, gA, got};
    for (int i = 0; i < 4; i++) free(host[i]);
    free_w(&w);
}

/* A projection's two LoRA products of its packed output gradient dy (the B gradient's sum
 * over rows, then t = s dy B) in one pass: against the CPU within bf16 rounding (1e-2), for
 * ranks 16 and 8, token rows not a multiple of the kernel's 128, B gradients accumulated over
 * two passes, counting the pairs the kernel took; a B gradient product followed by anything
 * else runs on its own. */
static void test_dual(void) {
    const int M = 320, D = 64, F = 384, W = 48;
    const size_t nF = (size_t)M * F, nD = (size_t)M * D;
    const float s = 2.0f;
    wpair wd = make_w(MC_BF16, (size_t)D * F, 0.1f);
    wd.gpu.mlp = wd.cpu.mlp = true; /* the down projection: its input gradient is packed */
    float *dy = frand(nD, 1.0f), *xa = frand((size_t)M * W, 1.0f);
    float *B = frand((size_t)F * W, 0.1f);
    float *dh = falloc(nF), *gB = falloc((size_t)F * W), *t = falloc((size_t)M * W);
    float *got = falloc(nF);
    void *d_dy = dputf(dy, nD), *d_xa = dputf(xa, (size_t)M * W), *d_B = dputf(B, (size_t)F * W);
    void *d_dh = dputf(got, nF), *d_gB = dputf(got, (size_t)F * W);
    void *d_t = dputf(got, (size_t)M * W);
    g_ref->matmul_dx(g_ref, dh, dy, wd.cpu, M, D, F, false);
    for (int r = 16; r >= 8; r -= 8) {
        const long n0 = mc_cuda_dual_stats(g_cu);
        char what[96];
        memset(gB, 0, (size_t)F * W * sizeof(float));
        memset(t, 0, (size_t)M * W * sizeof(float));
        dset(d_gB, gB, (size_t)F * W);
        dset(d_t, t, (size_t)M * W);
        for (int pass = 0; pass < 2; pass++) {
            g_cu->matmul_dx(g_cu, d_dh, d_dy, wd.gpu, M, D, F, false); /* packed dh */
            g_cu->gemm_f32(g_cu, true, false, F, r, M, s, d_dh, F, d_xa, W, 1.0f, d_gB, W);
            g_cu->gemm_f32(g_cu, false, false, M, r, F, s, d_dh, F, d_B, W, 0.0f, d_t, W);
            g_ref->gemm_f32(g_ref, true, false, F, r, M, s, dh, F, xa, W, 1.0f, gB, W);
            g_ref->gemm_f32(g_ref, false, false, M, r, F, s, dh, F, B, W, 0.0f, t, W);
            CHECK_OK(g_cu->sync(g_cu));
        }
        CHECK_INT((int)(mc_cuda_dual_stats(g_cu) - n0), 2);
        snprintf(what, sizeof what, "dual rank %d: B gradient over two passes", r);
        dget(got, d_gB, (size_t)F * W);
        cmp(what, got, gB, (size_t)F * W, 1e-2);
        dget(got, d_t, (size_t)M * W);
        cmp("  t = s dy B", got, t, (size_t)M * W, 1e-2);
    }
    {
        /* an f32 dy with the bf16 copy a frozen GEMM's input gradient made of it (q, o, down
         * and k and v read theirs so) */
        const int Nq = 256;
        wpair wq = make_w(MC_BF16, (size_t)Nq * D, 0.1f);
        float *dq = frand((size_t)M * Nq, 1.0f), *dx = falloc(nD);
        void *d_dq = dputf(dq, (size_t)M * Nq), *d_dx = dputf(got, nD);
        const long n0 = mc_cuda_dual_stats(g_cu);
        memset(gB, 0, (size_t)F * W * sizeof(float));
        dset(d_gB, gB, (size_t)F * W);
        g_cu->matmul_dx(g_cu, d_dx, d_dq, wq.gpu, M, Nq, D, false); /* converts dq */
        g_cu->gemm_f32(g_cu, true, false, Nq, 16, M, s, d_dq, Nq, d_xa, W, 1.0f, d_gB, W);
        g_cu->gemm_f32(g_cu, false, false, M, 16, Nq, s, d_dq, Nq, d_B, W, 0.0f, d_t, W);
        g_ref->gemm_f32(g_ref, true, false, Nq, 16, M, s, dq, Nq, xa, W, 1.0f, gB, W);
        g_ref->gemm_f32(g_ref, false, false, M, 16, Nq, s, dq, Nq, B, W, 0.0f, t, W);
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_dual_stats(g_cu) - n0), 1);
        dget(got, d_gB, (size_t)Nq * W);
        cmp("dual on dy's bf16 copy: B gradient", got, gB, (size_t)Nq * W, 1e-2);
        dget(got, d_t, (size_t)M * W);
        for (int m = 0; m < M; m++) /* columns 16.. of t are not written by rank 16 */
            for (int j = 16; j < W; j++) got[(size_t)m * W + j] = t[(size_t)m * W + j];
        cmp("  t = s dy B", got, t, (size_t)M * W, 1e-2);
        dfree(d_dq);
        dfree(d_dx);
        free(dq);
        free(dx);
        free_w(&wq);
    }
    {
        /* three projections of one input (q, k and v): their frozen GEMMs' input gradients
         * first, then their three pairs, which go out as one launch; their x A^T and t in
         * neighbouring columns of one buffer each (t cleared as one block) */
        const int Nq[3] = {256, 128, 128};
        wpair wq[3];
        float *dq[3], *gq[3];
        void *d_dq[3], *d_gq[3];
        float *dx = falloc(nD);
        void *d_dx = dputf(got, nD);
        const long n0 = mc_cuda_dual_stats(g_cu);
        memset(t, 0, (size_t)M * W * sizeof(float));
        for (int i = 0; i < 3; i++) {
            wq[i] = make_w(MC_BF16, (size_t)Nq[i] * D, 0.1f);
            dq[i] = frand((size_t)M * Nq[i], 1.0f);
            gq[i] = falloc((size_t)Nq[i] * 16);
            memset(gq[i], 0, (size_t)Nq[i] * 16 * sizeof(float));
            d_dq[i] = dputf(dq[i], (size_t)M * Nq[i]);
            d_gq[i] = dputf(gq[i], (size_t)Nq[i] * 16);
            g_cu->matmul_dx(g_cu, d_dx, d_dq[i], wq[i].gpu, M, Nq[i], D, i > 0);
        }
        for (int i = 0; i < 3; i++) {
            const float *xai = (const float *)d_xa + 16 * i;
            float *ti = (float *)d_t + 16 * i;
            g_cu->gemm_f32(g_cu, true, false, Nq[i], 16, M, s, d_dq[i], Nq[i], xai, W, 1.0f,
                           d_gq[i], 16);
            g_cu->gemm_f32(g_cu, false, false, M, 16, Nq[i], s, d_dq[i], Nq[i], d_B, W, 0.0f, ti,
                           W);
            g_ref->gemm_f32(g_ref, true, false, Nq[i], 16, M, s, dq[i], Nq[i], xa + 16 * i, W,
                            1.0f, gq[i], 16);
            g_ref->gemm_f32(g_ref, false, false, M, 16, Nq[i], s, dq[i], Nq[i], B, W, 0.0f,
                            t + 16 * i, W);
        }
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_dual_stats(g_cu) - n0), 3);
        for (int i = 0; i < 3; i++) {
            char what[96];
            snprintf(what, sizeof what, "dual, three in one launch: B gradient %d", i);
            dget(got, d_gq[i], (size_t)Nq[i] * 16);
            cmp(what, got, gq[i], (size_t)Nq[i] * 16, 1e-2);
            dfree(d_dq[i]);
            dfree(d_gq[i]);
            free(dq[i]);
            free(gq[i]);
            free_w(&wq[i]);
        }
        dget(got, d_t, (size_t)M * W);
        cmp("  their t = s dy B", got, t, (size_t)M * W, 1e-2);
        dfree(d_dx);
        free(dx);
    }
    {
        /* the B gradient product followed by another op: it runs on its own */
        const long n0 = mc_cuda_dual_stats(g_cu);
        g_cu->matmul_dx(g_cu, d_dh, d_dy, wd.gpu, M, D, F, false);
        g_cu->gemm_f32(g_cu, true, false, F, 16, M, s, d_dh, F, d_xa, W, 1.0f, d_gB, W);
        g_ref->gemm_f32(g_ref, true, false, F, 16, M, s, dh, F, xa, W, 1.0f, gB, W);
        g_cu->zero(g_cu, d_t, sizeof(float));
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_dual_stats(g_cu) - n0), 0);
        dget(got, d_gB, (size_t)F * W);
        cmp("dual: B gradient product on its own", got, gB, (size_t)F * W, 1e-2);
    }
    void *dev[6] = {d_dy, d_xa, d_B, d_dh, d_gB, d_t};
    for (int i = 0; i < 6; i++) dfree(dev[i]);
    float *host[7] = {dy, xa, B, dh, gB, t, got};
    for (int i = 0; i < 7; i++) free(host[i]);
    free_w(&wd);
}

static void test_kcat(void) {
    mc_backend *again = cuda_with("MC_CUDA_NOFUSE", "kkeep");
    kcat_cases(g_cu, "kcat");
    kcat_cases(again, "kcat, weights made each call");
    mc_backend_free(again);
}

/* gemm_f32 on both paths, and a training-sized product's three passes: cublasGemmEx in
 * TF32 on the first, cuBLASLt's chosen algorithm after a synchronisation, the same bits on
 * the third (each dget synchronises). */
static void test_gemm_f32(void) {
    const int M = 1024, N = 48, K = 896;
    const size_t na = (size_t)M * K, nb = (size_t)N * K, nc = (size_t)M * N;
    float *A = frand(na, 1.0f), *B = frand(nb, 1.0f), *want = fnan(nc), *r[3];
    float *dA = dputf(A, na), *dB = dputf(B, nb), *dC = dputf(want, nc);
    mc_backend *keep = g_cu, *f32;
    gemm_f32_cases(false);
    g_ref->gemm_f32(g_ref, false, true, M, N, K, 1.0f, A, K, B, K, 0.0f, want, N);
    for (int i = 0; i < 3; i++) {
        r[i] = falloc(nc);
        g_cu->gemm_f32(g_cu, false, true, M, N, K, 1.0f, dA, K, dB, K, 0.0f, dC, N);
        dget(r[i], dC, nc);
    }
    cmp("gemm_f32 M=1024 N=48 K=896: 1st pass (cublasGemmEx)", r[0], want, nc, 2e-3);
    cmp("  3rd pass (cuBLASLt, the chosen algorithm)", r[2], want, nc, 2e-3);
    CHECK(memcmp(r[1], r[2], nc * sizeof(float)) == 0);
    printf("  %-58s %s\n", "  2nd pass vs 3rd",
           memcmp(r[1], r[2], nc * sizeof(float)) == 0 ? "identical" : "DIFFERENT");
    for (int i = 0; i < 3; i++) free(r[i]);
    dfree(dA);
    dfree(dB);
    dfree(dC);
    free(A);
    free(B);
    free(want);
    f32 = cuda_with("MC_CUDA_LORA", "f32");
    if (!f32) return;
    printf("  with MC_CUDA_LORA=f32:\n");
    g_cu = f32;
    gemm_f32_cases(true);
    CHECK_OK(g_cu->sync(g_cu));
    g_cu = keep;
    mc_backend_free(f32);
}

static void test_rope(void) {
    /* T, H, hd, row padding: four pairs a thread, or one where rows or halves do not
     * split into 16-byte quads (the last two) */
    const int cases[5][4] = {{17, 3, 64, 8}, {5, 2, 128, 0}, {40, 4, 16, 0}, {9, 2, 64, 2},
                             {6, 2, 12, 0}};
    for (int ci = 0; ci < 5; ci++) {
        int T = cases[ci][0], H = cases[ci][1], hd = cases[ci][2], ldx = H * hd + cases[ci][3];
        size_t n = (size_t)T * ldx;
        int32_t pos[64];
        float *x = frand(n, 1.0f), *want = fdup(x, n), *got = falloc(n);
        char what[96];
        for (int t = 0; t < T; t++) pos[t] = (int32_t)(mc_rng_next(&g_rng) % 5000);
        int32_t *dpos = dput(pos, (size_t)T * sizeof(int32_t));
        float *dxx = dputf(x, n);
        g_ref->rope(g_ref, want, ldx, pos, T, H, hd, 1e6f);
        g_cu->rope(g_cu, dxx, ldx, dpos, T, H, hd, 1e6f);
        dget(got, dxx, n);
        snprintf(what, sizeof what, "rope T=%d H=%d hd=%d ldx=%d", T, H, hd, ldx);
        cmp(what, got, want, n, 1e-5);
        g_ref->rope_backward(g_ref, want, ldx, pos, T, H, hd, 1e6f);
        g_cu->rope_backward(g_cu, dxx, ldx, dpos, T, H, hd, 1e6f);
        dget(got, dxx, n);
        snprintf(what, sizeof what, "rope_backward after rope (identity) T=%d hd=%d", T, hd);
        cmp(what, got, want, n, 1e-5);
        cmp("  ... and equal to the input", got, x, n, 1e-5);
        dfree(dpos);
        dfree(dxx);
        free(x);
        free(want);
        free(got);
    }
}

/* The q, k and v projections' rank-r updates held for the RoPE of q and k: one launch adds
 * them (TF32 products, as the cuBLASLt updates it replaces), rotates q and k and leaves the
 * bf16 copies of k and v that the attention reads (checked through the attention's output);
 * with only q's RoPE following, the updates of k and v still land. Ranks 16, 8 and 32, heads
 * of 64 and 128, a row count that is not a multiple of the kernel's 16. */
static void test_lora_rope(void) {
    /* rank, head size, query heads, rows, both RoPEs */
    const int cases[3][5] = {{16, 64, 6, 320, 1}, {8, 64, 6, 300, 0}, {32, 128, 4, 264, 1}};
    const float s = 2.0f;
    const int Hkv = 2;
    int32_t pos[320];
    for (int t = 0; t < 320; t++) pos[t] = t;
    int32_t *dpos = dput(pos, sizeof pos);
    for (int ci = 0; ci < 3; ci++) {
        const int r = cases[ci][0], hd = cases[ci][1], Hq = cases[ci][2], M = cases[ci][3];
        const int both = cases[ci][4], W = 3 * r, nq = Hq * hd, nk = Hkv * hd;
        const size_t sq = (size_t)M * nq, sk = (size_t)M * nk;
        float *xa = frand((size_t)M * W, 1.0f), *bq = frand((size_t)nq * r, 0.1f);
        float *bk = frand((size_t)nk * r, 0.1f), *bv = frand((size_t)nk * r, 0.1f);
        float *q = frand(sq, 1.0f), *k = frand(sk, 1.0f), *v = frand(sk, 1.0f);
        float *att = falloc(sq), *got = falloc(sq);
        void *d_xa = dputf(xa, (size_t)M * W), *d_bq = dputf(bq, (size_t)nq * r);
        void *d_bk = dputf(bk, (size_t)nk * r), *d_bv = dputf(bv, (size_t)nk * r);
        float *d_q = dputf(q, sq), *d_k = dputf(k, sk), *d_v = dputf(v, sk);
        float *d_att = dputf(att, sq);
        const long n0 = mc_cuda_lrope_stats(g_cu);
        char what[96];
        g_cu->gemm_f32(g_cu, false, true, M, nq, r, s, d_xa, W, d_bq, r, 1.0f, d_q, nq);
        g_cu->gemm_f32(g_cu, false, true, M, nk, r, s, (float *)d_xa + r, W, d_bk, r, 1.0f, d_k,
                       nk);
        g_cu->gemm_f32(g_cu, false, true, M, nk, r, s, (float *)d_xa + 2 * r, W, d_bv, r, 1.0f,
                       d_v, nk);
        g_cu->rope(g_cu, d_q, nq, dpos, M, Hq, hd, 1e6f);
        if (both) g_cu->rope(g_cu, d_k, nk, dpos, M, Hkv, hd, 1e6f);
        g_ref->gemm_f32(g_ref, false, true, M, nq, r, s, xa, W, bq, r, 1.0f, q, nq);
        g_ref->gemm_f32(g_ref, false, true, M, nk, r, s, xa + r, W, bk, r, 1.0f, k, nk);
        g_ref->gemm_f32(g_ref, false, true, M, nk, r, s, xa + 2 * r, W, bv, r, 1.0f, v, nk);
        g_ref->rope(g_ref, q, nq, pos, M, Hq, hd, 1e6f);
        if (both) {
            g_ref->rope(g_ref, k, nk, pos, M, Hkv, hd, 1e6f);
            g_cu->attention(g_cu, d_att, d_q, d_k, d_v, M, 0, Hq, Hkv, hd);
            g_ref->attention(g_ref, att, q, k, v, M, 0, Hq, Hkv, hd);
        }
        CHECK_OK(g_cu->sync(g_cu));
        CHECK_INT((int)(mc_cuda_lrope_stats(g_cu) - n0), 1);
        snprintf(what, sizeof what, "rope taking q/k/v updates, rank %d, hd %d, %d rows%s: q", r,
                 hd, M, both ? "" : " (q's rope only)");
        dget(got, d_q, sq);
        cmp(what, got, q, sq, 1e-3);
        dget(got, d_k, sk);
        cmp("  k", got, k, sk, 1e-3);
        dget(got, d_v, sk);
        cmp("  v", got, v, sk, 1e-3);
        if (both) {
            dget(got, d_att, sq);
            cmp("  attention over their bf16 copies", got, att, sq, 1e-2);
        }
        void *dev[8] = {d_xa, d_bq, d_bk, d_bv, d_q, d_k, d_v, d_att};
        for (int i = 0; i < 8; i++) dfree(dev[i]);
        float *host[9] = {xa, bq, bk, bv, q, k, v, att, got};
        for (int i = 0; i < 9; i++) free(host[i]);
    }
    dfree(dpos);
}

static void test_attention(void) {
    /* hd, Hq, Hkv, T, pos0 */
    const int cases[][5] = {
        {64, 14, 2, 1, 0},   {64, 14, 2, 1, 511}, {64, 14, 2, 1, 3000}, {64, 14, 2, 5, 300},
        {64, 14, 2, 8, 0},   {64, 14, 2, 64, 0},  {64, 14, 2, 100, 37}, {64, 14, 2, 257, 0},
        {128, 4, 2, 130, 20}, {128, 4, 2, 1, 200}, {32, 4, 2, 70, 0},   {16, 4, 4, 33, 5},
        {48, 4, 2, 40, 3},   {48, 4, 2, 1, 100},  {256, 2, 1, 2, 70},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int hd = cases[ci][0], Hq = cases[ci][1], Hkv = cases[ci][2], T = cases[ci][3];
        int pos0 = cases[ci][4], nk = pos0 + T;
        size_t nq = (size_t)T * Hq * hd, nkv = (size_t)nk * Hkv * hd;
        bool flash = T > 8 && (hd == 16 || hd == 32 || hd == 64 || hd == 128);
        bool cluster = T <= 8 && (hd == 64 || hd == 128);
        if (g_quick && (T > 100 || pos0 > 1000)) continue;
        float *q = frand(nq, 1.0f), *k = frand(nkv, 1.0f), *v = frand(nkv, 1.0f);
        float *want = falloc(nq), *got = fnan(nq);
        float *dq = dputf(q, nq), *dk = dputf(k, nkv), *dv = dputf(v, nkv), *dout = dputf(got, nq);
        char what[96];
        g_ref->attention(g_ref, want, q, k, v, T, pos0, Hq, Hkv, hd);
        g_cu->attention(g_cu, dout, dq, dk, dv, T, pos0, Hq, Hkv, hd);
        dget(got, dout, nq);
        snprintf(what, sizeof what, "attention %s hd=%d Hq=%d Hkv=%d T=%d pos0=%d",
                 flash ? "flash" : cluster ? "decode" : "row", hd, Hq, Hkv, T, pos0);
        cmp(what, got, want, nq, flash ? 1e-2 : 1e-5);
        if (cluster && pos0 > 0) { /* older rows complete at a synchronisation, the new rows
                                    * written after it: the kernel reads the older ones early */
            const size_t old = (size_t)pos0 * Hkv * hd, nnew = (size_t)T * Hkv * hd;
            float *nan = fnan(nq);
            CHECK_OK(g_cu->sync(g_cu));
            CHECK_OK(g_cu->to_device(g_cu, dk + old, k + old, nnew * sizeof(float)));
            CHECK_OK(g_cu->to_device(g_cu, dv + old, v + old, nnew * sizeof(float)));
            CHECK_OK(g_cu->to_device(g_cu, dout, nan, nq * sizeof(float)));
            g_cu->attention(g_cu, dout, dq, dk, dv, T, pos0, Hq, Hkv, hd);
            dget(got, dout, nq);
            snprintf(what, sizeof what, "attention decode hd=%d Hq=%d T=%d pos0=%d, early reads",
                     hd, Hq, T, pos0);
            cmp(what, got, want, nq, 1e-5);
            free(nan);
        }
        dfree(dq);
        dfree(dk);
        dfree(dv);
        dfree(dout);
        free(q);
        free(k);
        free(v);
        free(want);
        free(got);
    }
}

/* The flash backward after a forward over the same q, k, v (it reuses the forward's
 * log-sum-exp and output: dq as wq, the CPU's), then after q is written between the
 * forward and the backward (it must run the forward again: dq of the new q). */
static void attention_backward_kept(const float *k, const float *v, const float *go, float *dq,
                                    float *dk, float *dv, float *dgo, int T, int Hq, int Hkv, int hd,
                                    const float *wq) {
    const size_t nq = (size_t)T * Hq * hd, nkv = (size_t)T * Hkv * hd;
    float *o = dputf(go, nq), *ddq = dputf(go, nq), *ddk = dputf(k, nkv), *ddv = dputf(v, nkv);
    float *gq = falloc(nq), *q2 = frand(nq, 1.0f), *wq2 = falloc(nq), *wk2 = falloc(nkv),
          *wv2 = falloc(nkv);
    const long hits0 = mc_cuda_attention_reuse(g_cu);
    char what[96];
    g_cu->attention(g_cu, o, dq, dk, dv, T, 0, Hq, Hkv, hd);
    g_cu->attention_backward(g_cu, ddq, ddk, ddv, dgo, dq, dk, dv, T, Hq, Hkv, hd);
    dget(gq, ddq, nq);
    snprintf(what, sizeof what, "  ... after its forward (statistics kept) hd=%d T=%d dq", hd, T);
    cmp(what, gq, wq, nq, 1e-2);
    CHECK(mc_cuda_attention_reuse(g_cu) == hits0 + 1);
    /* the same forward, then q rewritten: the kept statistics must not be used */
    g_cu->attention(g_cu, o, dq, dk, dv, T, 0, Hq, Hkv, hd);
    CHECK_OK(g_cu->to_device(g_cu, dq, q2, nq * sizeof(float)));
    g_cu->attention_backward(g_cu, ddq, ddk, ddv, dgo, dq, dk, dv, T, Hq, Hkv, hd);
    dget(gq, ddq, nq);
    g_ref->attention_backward(g_ref, wq2, wk2, wv2, go, q2, k, v, T, Hq, Hkv, hd);
    snprintf(what, sizeof what, "  ... q written after the forward hd=%d T=%d dq", hd, T);
    cmp(what, gq, wq2, nq, 1e-2);
    CHECK(mc_cuda_attention_reuse(g_cu) == hits0 + 1);
    dfree(o);
    dfree(ddq);
    dfree(ddk);
    dfree(ddv);
    free(gq);
    free(q2);
    free(wq2);
    free(wk2);
    free(wv2);
}

static void test_attention_backward(void) {
    /* hd, Hq, Hkv, T */
    const int cases[][4] = {{64, 14, 2, 1},  {64, 14, 2, 7},  {64, 14, 2, 64}, {64, 14, 2, 200},
                            {128, 4, 2, 100}, {32, 4, 2, 65}, {16, 4, 4, 40},  {24, 4, 2, 30},
                            {64, 2, 2, 129}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int hd = cases[ci][0], Hq = cases[ci][1], Hkv = cases[ci][2], T = cases[ci][3];
        size_t nq = (size_t)T * Hq * hd, nkv = (size_t)T * Hkv * hd;
        bool flash = hd == 16 || hd == 32 || hd == 64 || hd == 128;
        if (g_quick && T > 100) continue;
        float *q = frand(nq, 1.0f), *k = frand(nkv, 1.0f), *v = frand(nkv, 1.0f);
        float *go = frand(nq, 1.0f);
        float *wq = falloc(nq), *wk = falloc(nkv), *wv = falloc(nkv);
        float *gq = fnan(nq), *gk = fnan(nkv), *gv = fnan(nkv);
        float *dq = dputf(q, nq), *dk = dputf(k, nkv), *dv = dputf(v, nkv), *dgo = dputf(go, nq);
        float *ddq = dputf(gq, nq), *ddk = dputf(gk, nkv), *ddv = dputf(gv, nkv);
        double tol = flash ? 1e-2 : 1e-4;
        char what[96];
        g_ref->attention_backward(g_ref, wq, wk, wv, go, q, k, v, T, Hq, Hkv, hd);
        g_cu->attention_backward(g_cu, ddq, ddk, ddv, dgo, dq, dk, dv, T, Hq, Hkv, hd);
        dget(gq, ddq, nq);
        dget(gk, ddk, nkv);
        dget(gv, ddv, nkv);
        snprintf(what, sizeof what, "attention_backward %s hd=%d Hq=%d Hkv=%d T=%d dq",
                 flash ? "flash" : "row", hd, Hq, Hkv, T);
        cmp(what, gq, wq, nq, tol);
        what[strlen(what) - 2] = 'd';
        what[strlen(what) - 1] = 'k';
        cmp(what, gk, wk, nkv, tol);
        what[strlen(what) - 1] = 'v';
        cmp(what, gv, wv, nkv, tol);
        if (flash && T > 8) /* after a forward of the same attention: its kept statistics */
            attention_backward_kept(k, v, go, dq, dk, dv, dgo, T, Hq, Hkv, hd, wq);
        dfree(dq);
        dfree(dk);
        dfree(dv);
        dfree(dgo);
        dfree(ddq);
        dfree(ddk);
        dfree(ddv);
        free(q);
        free(k);
        free(v);
        free(go);
        free(wq);
        free(wk);
        free(wv);
        free(gq);
        free(gk);
        free(gv);
    }
}

/* The trainer's pattern: forwards over consecutive segments of one batch (positions
 * restarting in each), then their backwards; each goes out as one launch (the backwards
 * on the forwards' kept statistics). Outputs and dq, dk, dv of each segment against the
 * CPU; then the same on a backend with MC_CUDA_NOFUSE=attb (one launch per segment). */
static void test_attention_segments(void) {
    const int hd = 64, Hq = 14, Hkv = 2, seg[4] = {70, 130, 64, 9}, nseg = 4;
    int N = 0, r0[4];
    for (int s = 0; s < nseg; s++) {
        r0[s] = N;
        N += seg[s];
    }
    const size_t qd = (size_t)Hq * hd, kd = (size_t)Hkv * hd;
    const size_t nq = (size_t)N * qd, nkv = (size_t)N * kd;
    float *q = frand(nq, 1.0f), *k = frand(nkv, 1.0f), *v = frand(nkv, 1.0f);
    float *go = frand(nq, 1.0f), *wq = falloc(nq), *wk = falloc(nkv), *wv = falloc(nkv);
    float *gq = fnan(nq), *gk = fnan(nkv), *gv = fnan(nkv), *first = falloc(nq);
    float *wo = falloc(nq), *go2 = fnan(nq);
    mc_backend *keep = g_cu, *plain = NULL;
    for (int s = 0; s < nseg; s++)
        g_ref->attention(g_ref, wo + r0[s] * qd, q + r0[s] * qd, k + r0[s] * kd, v + r0[s] * kd,
                         seg[s], 0, Hq, Hkv, hd);
    for (int s = 0; s < nseg; s++)
        g_ref->attention_backward(g_ref, wq + r0[s] * qd, wk + r0[s] * kd, wv + r0[s] * kd,
                                  go + r0[s] * qd, q + r0[s] * qd, k + r0[s] * kd,
                                  v + r0[s] * kd, seg[s], Hq, Hkv, hd);
    plain = cuda_with("MC_CUDA_NOFUSE", "attb");
    for (int pass = 0; pass < 2 && (pass == 0 || plain); pass++) {
        g_cu = pass ? plain : keep; /* the device buffers below belong to this backend */
        float *dq = dputf(q, nq), *dk = dputf(k, nkv), *dv = dputf(v, nkv);
        float *dgo = dputf(go, nq), *dout = dputf(gq, nq);
        float *ddq = dputf(gq, nq), *ddk = dputf(gk, nkv), *ddv = dputf(gv, nkv);
        const long hits = mc_cuda_attention_reuse(g_cu);
        for (int s = 0; s < nseg; s++)
            g_cu->attention(g_cu, dout + r0[s] * qd, dq + r0[s] * qd, dk + r0[s] * kd,
                            dv + r0[s] * kd, seg[s], 0, Hq, Hkv, hd);
        for (int s = 0; s < nseg; s++)
            g_cu->attention_backward(g_cu, ddq + r0[s] * qd, ddk + r0[s] * kd, ddv + r0[s] * kd,
                                     dgo + r0[s] * qd, dq + r0[s] * qd, dk + r0[s] * kd,
                                     dv + r0[s] * kd, seg[s], Hq, Hkv, hd);
        dget(gq, ddq, nq);
        dget(gk, ddk, nkv);
        dget(gv, ddv, nkv);
        dget(go2, dout, nq);
        CHECK_INT(mc_cuda_attention_reuse(g_cu) - hits, nseg);
        printf("  %s\n", pass ? "with MC_CUDA_NOFUSE=attb (a launch per segment):"
                              : "4 segments (70, 130, 64, 9 rows), each pass in one launch:");
        cmp("    attention segments out", go2, wo, nq, 1e-2);
        cmp("    attention_backward segments dq", gq, wq, nq, 1e-2);
        cmp("    attention_backward segments dk", gk, wk, nkv, 1e-2);
        cmp("    attention_backward segments dv", gv, wv, nkv, 1e-2);
        if (pass == 0) memcpy(first, gq, nq * sizeof(float));
        else cmp("    dq: one launch vs a launch per segment", gq, first, nq, 1e-5);
        float *dev[8] = {dq, dk, dv, dgo, dout, ddq, ddk, ddv};
        for (int i = 0; i < 8; i++) dfree(dev[i]);
    }
    g_cu = keep;
    if (plain) mc_backend_free(plain);
    float *host[13] = {q, k, v, go, wq, wk, wv, gq, gk, gv, first, wo, go2};
    for (int i = 0; i < 13; i++) free(host[i]);
}

/* ---- element-wise and training ops ---- */

static void test_elementwise(void) {
    const size_t n = 10007;
    float *g = frand(n, 3.0f), *u = frand(n, 1.0f), *go = frand(n, 1.0f);
    float *want = falloc(n), *want2 = falloc(n), *got = fnan(n), *got2 = fnan(n);
    float *dg = dputf(g, n), *du = dputf(u, n), *dgo = dputf(go, n), *d1 = dputf(got, n);
    float *d2 = dputf(got2, n);
    /* swiglu */
    g_ref->swiglu(g_ref, want, g, u, n);
    g_cu->swiglu(g_cu, d1, dg, du, n);
    dget(got, d1, n);
    cmp("swiglu n=10007", got, want, n, 1e-6);
    /* swiglu_backward with dgate aliasing dout, and h: the forward's output bit for bit */
    {
        float *ref_dg = fdup(go, n), *hc = fnan(n), *dh = dputf(hc, n);
        g_ref->swiglu_backward(g_ref, ref_dg, want2, NULL, ref_dg, g, u, n);
        g_cu->swiglu_backward(g_cu, dgo, d2, dh, dgo, dg, du, n);
        dget(got, dgo, n);
        dget(got2, d2, n);
        cmp("swiglu_backward dgate (aliasing dout)", got, ref_dg, n, 1e-6);
        cmp("swiglu_backward dup", got2, want2, n, 1e-6);
        g_cu->swiglu(g_cu, d1, dg, du, n);
        dget(got, d1, n);
        dget(hc, dh, n);
        CHECK(memcmp(hc, got, n * sizeof(float)) == 0);
        printf("  %-58s %s\n", "swiglu_backward h vs swiglu's output",
               memcmp(hc, got, n * sizeof(float)) == 0 ? "identical" : "DIFFERENT");
        dfree(dh);
        free(hc);
        free(ref_dg);
    }
    /* add */
    {
        float *y = frand(n, 1.0f), *x = frand(n, 1.0f);
        float *dy = dputf(y, n), *dxx = dputf(x, n);
        g_ref->add(g_ref, y, x, n);
        g_cu->add(g_cu, dy, dxx, n);
        dget(got, dy, n);
        same("add n=10007", got, y, n);
        /* an odd offset exercises the unaligned path */
        g_ref->add(g_ref, y + 1, x, n - 1);
        g_cu->add(g_cu, dy + 1, dxx, n - 1);
        dget(got, dy, n);
        same("add at an unaligned offset", got, y, n);
        dfree(dy);
        dfree(dxx);
        free(y);
        free(x);
    }
    /* dropout: same mask bits as the CPU */
    {
        g_ref->dropout(g_ref, want, u, n, 0.1f, 1234567ull);
        g_cu->dropout(g_cu, d1, du, n, 0.1f, 1234567ull);
        dget(got, d1, n);
        same("dropout p=0.1", got, want, n);
        g_cu->dropout(g_cu, d1, du, n, 0.0f, 99ull);
        dget(got, d1, n);
        same("dropout p=0 copies", got, u, n);
        g_ref->dropout(g_ref, want, u, n, 0.5f, 7ull);
        g_cu->dropout(g_cu, du, du, n, 0.5f, 7ull);
        dget(got, du, n);
        same("dropout p=0.5 in place", got, want, n);
    }
    /* scale, zero */
    {
        float *x = frand(n, 1.0f), *dxx = dputf(x, n);
        g_ref->scale_f32(g_ref, x, n, 0.37f);
        g_cu->scale_f32(g_cu, dxx, n, 0.37f);
        dget(got, dxx, n);
        same("scale_f32", got, x, n);
        g_cu->zero(g_cu, dxx, 4 * 1001 + 2); /* not a multiple of 16 bytes */
        dget(got, dxx, n);
        for (size_t i = 0; i < 1001; i++) x[i] = 0.0f;
        {
            uint16_t *hx = (uint16_t *)(void *)(x + 1001);
            hx[0] = 0; /* the low half of element 1001 (little endian) */
        }
        same("zero 4006 bytes", got, x, n);
        dfree(dxx);
        free(x);
    }
    dfree(dg);
    dfree(du);
    dfree(dgo);
    dfree(d1);
    dfree(d2);
    free(g);
    free(u);
    free(go);
    free(want);
    free(want2);
    free(got);
    free(got2);
}

static void test_adamw_sumsq(void) {
    const size_t n = 10007;
    float *p = frand(n, 0.1f), *m = falloc(n), *v = falloc(n);
    float *dp, *dm, *dv, *dg;
    float *got = falloc(n);
    for (size_t i = 0; i < n; i++) m[i] = v[i] = 0.0f;
    dp = dputf(p, n);
    dm = dputf(m, n);
    dv = dputf(v, n);
    for (int step = 1; step <= 3; step++) {
        float *g = frand(n, 0.01f);
        dg = dputf(g, n);
        g_ref->adamw(g_ref, p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        g_cu->adamw(g_cu, dp, dg, dm, dv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        dfree(dg);
        free(g);
    }
    dget(got, dp, n);
    cmp("adamw 3 steps: parameters", got, p, n, 1e-7);
    same("adamw 3 steps: parameters bit for bit", got, p, n);
    dget(got, dm, n);
    cmp("adamw 3 steps: first moment", got, m, n, 1e-7);
    dget(got, dv, n);
    cmp("adamw 3 steps: second moment", got, v, n, 1e-7);
    {
        size_t big = g_quick ? 100003 : 3000017;
        float *x = frand(big, 1.0f), *dxx = dputf(x, big);
        double want = g_ref->sumsq_f32(g_ref, x, big), gotd = g_cu->sumsq_f32(g_cu, dxx, big);
        double again = g_cu->sumsq_f32(g_cu, dxx, big);
        printf("  %-58s %.12g vs %.12g\n", "sumsq_f32 n=3000017", gotd, want);
        CHECK_NEAR(gotd / want, 1.0, 1e-12);
        CHECK(gotd == again); /* deterministic */
        dfree(dxx);
        free(x);
    }
    dfree(dp);
    dfree(dm);
    dfree(dv);
    free(p);
    free(m);
    free(v);
    free(got);
}

/* linear_xent against the CPU's: bf16 weights give bf16 logits (as transformers' bf16
 * lm_head does; f32 under MC_CUDA_GEMM=default, which test_gemm_choice runs this again
 * with), f32 weights f32 ones. */
static void test_linear_xent(void) {
    /* T, D, V, dtype */
    const int cases[3][3] = {{37, 64, 1000}, {20, 64, 512}, {300, 32, 151936}};
    const mc_dtype dts[3] = {MC_BF16, MC_F32, MC_BF16};
    for (int ci = 0; ci < 3; ci++) {
        int T = cases[ci][0], D = cases[ci][1], V = cases[ci][2];
        size_t nh = (size_t)T * D;
        if (g_quick && V > 10000) continue;
        wpair w = make_w(dts[ci], (size_t)V * D, 0.5f);
        float *h = frand(nh, 1.0f), *want = fnan(nh), *got = fnan(nh);
        int32_t *tg = malloc((size_t)T * sizeof *tg);
        double lw = 0, lg = 0, lg2 = 0;
        float scale = 1.0f / (float)T;
        char what[96];
        bool f32 = dts[ci] == MC_F32;
        if (!tg) exit(2);
        for (int t = 0; t < T; t++) tg[t] = t % 7 == 3 ? -1 : (int32_t)(mc_rng_next(&g_rng) % (uint64_t)V);
        float *dh = dputf(h, nh), *ddh = dputf(got, nh);
        int32_t *dtg = dput(tg, (size_t)T * sizeof *tg);
        CHECK_OK(g_ref->linear_xent(g_ref, want, &lw, h, w.cpu, tg, T, D, V, scale));
        /* the pass that first sees its GEMM shapes, then one after a synchronisation
         * (compared) */
        CHECK_OK(g_cu->linear_xent(g_cu, ddh, &lg, dh, w.gpu, dtg, T, D, V, scale));
        CHECK_OK(g_cu->sync(g_cu));
        lg = 0;
        CHECK_OK(g_cu->linear_xent(g_cu, ddh, &lg, dh, w.gpu, dtg, T, D, V, scale));
        CHECK_OK(g_cu->linear_xent(g_cu, NULL, &lg2, dh, w.gpu, dtg, T, D, V, scale));
        dget(got, ddh, nh);
        printf("  %-58s %.9g vs %.9g (rel %.2e)\n", "linear_xent loss", lg, lw, fabs(lg / lw - 1));
        CHECK_NEAR(lg / lw, 1.0, f32 ? 1e-6 : 2e-3);
        CHECK(lg == lg2);
        snprintf(what, sizeof what, "linear_xent dh %s T=%d D=%d V=%d", dt_name(dts[ci]), T, D, V);
        cmp(what, got, want, nh, f32 ? 1e-5 : 1e-2);
        dfree(dh);
        dfree(ddh);
        dfree(dtg);
        free(h);
        free(want);
        free(got);
        free(tg);
        free_w(&w);
    }
}

/* linear_xent with bf16 logits read once (a cluster of blocks holding each row, V a
 * multiple of 32) against the CPU and against the two-pass kernel (MC_CUDA_NOFUSE=xq): the
 * same losses to 1e-6 and gradients to 1e-3 (only the order of the softmax sums differs),
 * rows with target -1 included. */
static void test_linear_xent_rows(void) {
    const int T = 300, D = 64, V = 4096;
    const size_t nh = (size_t)T * D;
    mc_backend *two = cuda_with("MC_CUDA_NOFUSE", "xq");
    wpair w = make_w(MC_BF16, (size_t)V * D, 0.5f);
    const void *w2 = NULL;
    float *h = frand(nh, 1.0f), *want = fnan(nh), *got = fnan(nh), *got2 = fnan(nh);
    int32_t *tg = malloc((size_t)T * sizeof *tg);
    double lw = 0, lg = 0, l2 = 0;
    if (!tg) exit(2);
    for (int t = 0; t < T; t++)
        tg[t] = t % 7 == 3 ? -1 : (int32_t)(mc_rng_next(&g_rng) % (uint64_t)V);
    CHECK_OK(two->weights(two, w.cpu.data, (size_t)V * D * 2, &w2));
    const mc_wt wt2 = {w2, MC_BF16, false};
    float *dh = dputf(h, nh), *ddh = dputf(got, nh);
    int32_t *dtg = dput(tg, (size_t)T * sizeof *tg);
    float *dh2 = (float *)two->alloc(two, nh * sizeof(float));
    float *ddh2 = (float *)two->alloc(two, nh * sizeof(float));
    int32_t *dtg2 = (int32_t *)two->alloc(two, (size_t)T * sizeof *tg);
    CHECK_OK(two->to_device(two, dh2, h, nh * sizeof(float)));
    CHECK_OK(two->to_device(two, dtg2, tg, (size_t)T * sizeof *tg));
    CHECK_OK(g_ref->linear_xent(g_ref, want, &lw, h, w.cpu, tg, T, D, V, 1.0f / T));
    CHECK_OK(g_cu->linear_xent(g_cu, ddh, &lg, dh, w.gpu, dtg, T, D, V, 1.0f / T));
    CHECK_OK(two->linear_xent(two, ddh2, &l2, dh2, wt2, dtg2, T, D, V, 1.0f / T));
    dget(got, ddh, nh);
    CHECK_OK(two->to_host(two, got2, ddh2, nh * sizeof(float)));
    printf("  %-58s %.9g vs %.9g (CPU) and %.9g (two passes)\n", "linear_xent loss, rows read once",
           lg, lw, l2);
    CHECK_NEAR(lg / lw, 1.0, 2e-3);
    CHECK_NEAR(lg / l2, 1.0, 1e-6);
    cmp("linear_xent dh, rows read once, vs CPU", got, want, nh, 1e-2);
    cmp("linear_xent dh, rows read once, vs two passes", got, got2, nh, 1e-3);
    void *on_two[3] = {dh2, ddh2, dtg2}, *on_cu[3] = {dh, ddh, dtg};
    void *host[5] = {h, want, got, got2, tg};
    for (int i = 0; i < 3; i++) {
        two->free(two, on_two[i]);
        dfree(on_cu[i]);
    }
    for (int i = 0; i < 5; i++) free(host[i]);
    two->release_weights(two, w2);
    mc_backend_free(two);
    free_w(&w);
}

/* The GEMMs of many rows: a shape runs through cublasGemmEx until it comes back after a
 * synchronisation (each dget here is one), then through the cuBLASLt algorithm chosen on
 * that call, which later calls reuse with the same bits; with
 * MC_CUDA_GEMM=default (cublasGemmEx only, the cross-entropy gradient over vocabulary
 * slices) the GEMM tests run again on a second backend. */
static void test_gemm_choice(void) {
    const int M = 133, N = 896, K = 896;
    const size_t no = (size_t)M * N;
    mc_backend *keep = g_cu, *plain = NULL;
    wpair w = make_w(MC_BF16, (size_t)N * K, 0.05f);
    mc_wt nob = {NULL, MC_F32, false};
    float *x = frand((size_t)M * K, 1.0f), *r[3];
    float *dx = dputf(x, (size_t)M * K), *dout = dputf(x, no);
    for (int i = 0; i < 3; i++) {
        r[i] = falloc(no);
        g_cu->matmul(g_cu, dout, N, dx, w.gpu, nob, M, N, K);
        dget(r[i], dout, no);
    }
    cmp("matmul M=133: cublasGemmEx (1st pass) vs cuBLASLt (2nd)", r[0], r[1], no, 1e-5);
    CHECK(memcmp(r[1], r[2], no * sizeof(float)) == 0);
    printf("  %-58s %s\n", "matmul M=133: 2nd pass vs 3rd (the chosen algorithm)",
           memcmp(r[1], r[2], no * sizeof(float)) == 0 ? "identical" : "DIFFERENT");
    dfree(dx);
    dfree(dout);
    free(x);
    for (int i = 0; i < 3; i++) free(r[i]);
    free_w(&w);
    plain = cuda_with("MC_CUDA_GEMM", "default");
    if (!plain) return;
    printf("  with MC_CUDA_GEMM=default:\n");
    g_cu = plain;
    test_matmul_dx();
    test_linear_xent();
    CHECK_OK(g_cu->sync(g_cu));
    g_cu = keep;
    mc_backend_free(plain);
}

/* ---- decode-like layers: graphs, PDL and op fusion vs plain launches vs the CPU ---- */

/* LSTEPS steps from position 0, then LTAIL steps after a cache filled up to LCTX - LTAIL
 * (several key batches per warp in the decode attention) */
enum { LD = 256, LHQ = 4, LHKV = 2, LHD = 64, LF = 2048, LSTEPS = 70, LCTX = 3000, LTAIL = 10 };

/* One decoder layer's weights and buffers on one backend. */
typedef struct layer_bufs {
    float *x, *xn, *q, *att, *g, *u, *kc, *vc;
    int32_t *pos;
    mc_wt wn1, wn2, wq, bq, wk, bk, wv, bv, wo, wg, wu, wd;
    const void *dev[12];
} layer_bufs;

/* x += attention block; x += MLP block, for the token at position pos (HF Qwen2 order). */
static void layer_step(mc_backend *be, layer_bufs *b, int pos, float *x_host) {
    const int kv = LHKV * LHD, qd = LHQ * LHD;
    mc_wt none = {NULL, MC_F32, false};
    int32_t p = pos;
    CHECK_OK(be->to_device(be, b->pos, &p, sizeof p));
    be->rmsnorm(be, b->xn, b->x, b->wn1, 1, LD, 1e-6f);
    be->matmul(be, b->q, qd, b->xn, b->wq, b->bq, 1, qd, LD);
    be->matmul(be, b->kc + (size_t)pos * kv, kv, b->xn, b->wk, b->bk, 1, kv, LD);
    be->matmul(be, b->vc + (size_t)pos * kv, kv, b->xn, b->wv, b->bv, 1, kv, LD);
    be->rope(be, b->q, qd, b->pos, 1, LHQ, LHD, 1e4f);
    be->rope(be, b->kc + (size_t)pos * kv, kv, b->pos, 1, LHKV, LHD, 1e4f);
    be->attention(be, b->att, b->q, b->kc, b->vc, 1, pos, LHQ, LHKV, LHD);
    be->matmul(be, b->xn, LD, b->att, b->wo, none, 1, LD, qd);
    be->add(be, b->x, b->xn, LD);
    be->rmsnorm(be, b->xn, b->x, b->wn2, 1, LD, 1e-6f);
    be->matmul(be, b->g, LF, b->xn, b->wg, none, 1, LF, LD);
    be->matmul(be, b->u, LF, b->xn, b->wu, none, 1, LF, LD);
    be->swiglu(be, b->g, b->g, b->u, LF);
    be->matmul(be, b->xn, LD, b->g, b->wd, none, 1, LD, LF);
    be->add(be, b->x, b->xn, LD);
    CHECK_OK(be->to_host(be, x_host, b->x, LD * sizeof(float)));
}

static void layer_setup(mc_backend *be, layer_bufs *b, uint16_t *const *w16, const size_t *cnt,
                        const float *x0) {
    mc_wt *ws[12] = {&b->wn1, &b->wn2, &b->wq, &b->bq, &b->wk, &b->bk,
                     &b->wv,  &b->bv,  &b->wo, &b->wg, &b->wu, &b->wd};
    for (int i = 0; i < 12; i++) {
        CHECK_OK(be->weights(be, w16[i], cnt[i] * 2, &b->dev[i]));
        ws[i]->data = b->dev[i];
        ws[i]->dtype = MC_BF16;
    }
    b->x = be->alloc(be, LD * 4);
    b->xn = be->alloc(be, LD * 4);
    b->q = be->alloc(be, (size_t)LHQ * LHD * 4);
    b->att = be->alloc(be, (size_t)LHQ * LHD * 4);
    b->g = be->alloc(be, LF * 4);
    b->u = be->alloc(be, LF * 4);
    b->kc = be->alloc(be, (size_t)LCTX * LHKV * LHD * 4);
    b->vc = be->alloc(be, (size_t)LCTX * LHKV * LHD * 4);
    b->pos = be->alloc(be, 4);
    CHECK_OK(be->to_device(be, b->x, x0, LD * 4));
}

static void layer_free(mc_backend *be, layer_bufs *b) {
    void *bufs[9] = {b->x, b->xn, b->q, b->att, b->g, b->u, b->kc, b->vc, b->pos};
    for (int i = 0; i < 9; i++) be->free(be, bufs[i]);
    for (int i = 0; i < 12; i++) be->release_weights(be, b->dev[i]);
}

static void test_decode_layers(void) {
    const int qd = LHQ * LHD, kv = LHKV * LHD;
    const size_t cnt[12] = {LD, LD, (size_t)qd * LD, (size_t)qd, (size_t)kv * LD, (size_t)kv,
                            (size_t)kv * LD, (size_t)kv, (size_t)LD * qd, (size_t)LF * LD,
                            (size_t)LF * LD, (size_t)LD * LF};
    const float scale[12] = {1, 1, 0.05f, 0.5f, 0.05f, 0.5f, 0.05f, 0.5f, 0.05f, 0.05f, 0.05f, 0.05f};
    uint16_t *w16[12];
    mc_backend *plain = NULL;
    layer_bufs bf, bp, br;
    float *x0 = frand(LD, 1.0f), *hf = falloc(LD), *hp = falloc(LD), *hr = falloc(LD);
    double worst = 0;
    bool identical = true;
    long gl0, gb0, kl0, gl1, gb1, kl1;
    setenv("MC_CUDA_GRAPHS", "0", 1);
    setenv("MC_CUDA_PDL", "0", 1);
    setenv("MC_CUDA_FUSE", "0", 1);
    CHECK_OK(mc_backend_cuda_create(0, &plain));
    unsetenv("MC_CUDA_GRAPHS");
    unsetenv("MC_CUDA_PDL");
    unsetenv("MC_CUDA_FUSE");
    if (!plain) return;
    for (int i = 0; i < 12; i++) {
        float *f = frand(cnt[i], scale[i]);
        w16[i] = malloc(cnt[i] * 2);
        if (!w16[i]) exit(2);
        if (i < 2)
            for (size_t j = 0; j < cnt[i]; j++) f[j] = 1.0f + 0.1f * f[j];
        mc_convert_from_f32(w16[i], f, MC_BF16, cnt[i]);
        free(f);
    }
    layer_setup(g_cu, &bf, w16, cnt, x0);
    layer_setup(plain, &bp, w16, cnt, x0);
    layer_setup(g_ref, &br, w16, cnt, x0);
    mc_cuda_stats(g_cu, &gl0, &gb0, &kl0);
    for (int step = 0; step < LSTEPS + LTAIL; step++) {
        int pos = step < LSTEPS ? step : LCTX - LTAIL + (step - LSTEPS);
        if (step == LSTEPS) { /* the same older keys and values on all three backends */
            const size_t off = (size_t)LSTEPS * kv, n = (size_t)(LCTX - LTAIL - LSTEPS) * kv;
            float *fk = frand(n, 1.0f), *fv = frand(n, 1.0f);
            layer_bufs *all[3] = {&bf, &bp, &br};
            mc_backend *bes[3] = {g_cu, plain, g_ref};
            mc_cuda_stats(g_cu, &gl1, &gb1, &kl1);
            for (int i = 0; i < 3; i++) {
                CHECK_OK(bes[i]->to_device(bes[i], all[i]->kc + off, fk, n * 4));
                CHECK_OK(bes[i]->to_device(bes[i], all[i]->vc + off, fv, n * 4));
            }
            free(fk);
            free(fv);
        }
        layer_step(g_cu, &bf, pos, hf);
        layer_step(plain, &bp, pos, hp);
        layer_step(g_ref, &br, pos, hr);
        for (int i = 0; i < LD; i++)
            if (!(hf[i] == hp[i])) identical = false;
        {
            double num = 0, den = 0;
            for (int i = 0; i < LD; i++) {
                num += ((double)hf[i] - hr[i]) * ((double)hf[i] - hr[i]);
                den += (double)hr[i] * hr[i];
            }
            if (sqrt(num / den) > worst) worst = sqrt(num / den);
        }
    }
    printf("  %-58s %s\n", "80 decode layers: graphs + PDL + fusion vs plain launches",
           identical ? "identical" : "DIFFER");
    printf("  %-58s %ld graph launches, %ld builds, %ld direct launches\n", "  ... graphs:",
           gl1 - gl0, gb1 - gb0, kl1 - kl0);
    CHECK(identical);
    CHECK(gl1 - gl0 >= LSTEPS - 3);
    printf("  %-58s rel L2 %.2e at worst (tol 1e-5)\n", "  ... vs the CPU reference", worst);
    CHECK(worst <= 1e-5);
    layer_free(g_cu, &bf);
    layer_free(plain, &bp);
    layer_free(g_ref, &br);
    for (int i = 0; i < 12; i++) free(w16[i]);
    mc_backend_free(plain);
    free(x0);
    free(hf);
    free(hp);
    free(hr);
}

/* ---- greedy choice ---- */

/* argmax_rows against mc_argmax_row: random rows, ties (the first index wins), and the
 * failures (the first NaN or +inf, a row of -inf). */
static void test_argmax(void) {
    const int lens[3] = {151936, 1000, 37};
    for (int li = 0; li < 3; li++) {
        const int n = lens[li], rows = 3;
        float *x = frand((size_t)rows * n, 1.0f);
        int32_t got[3] = {-1, -1, -1}, want[3] = {-2, -2, -2};
        float *dx;
        char what[96];
        x[(size_t)n + n / 2] = 100.0f; /* row 1: a tie, the first index wins */
        x[(size_t)n + n - 1] = 100.0f;
        for (int i = 0; i < n; i++) x[(size_t)2 * n + i] = i % 3 == 0 ? -INFINITY : 5.0f;
        dx = dputf(x, (size_t)rows * n);
        for (int r = 0; r < rows; r++) CHECK_OK(mc_argmax_row(x + (size_t)r * n, n, r, &want[r]));
        CHECK_OK(g_cu->argmax_rows(g_cu, got, dx, rows, n));
        snprintf(what, sizeof what, "argmax_rows n=%d", n);
        printf("  %-58s %d %d %d (want %d %d %d)\n", what, got[0], got[1], got[2], want[0], want[1],
               want[2]);
        for (int r = 0; r < rows; r++) CHECK_INT(got[r], want[r]);
        /* row 1: +inf at n - 2, NaN at 2 (the first bad one is named) */
        x[(size_t)n + n - 2] = INFINITY;
        x[(size_t)n + 2] = NAN;
        CHECK_OK(g_cu->to_device(g_cu, dx, x, (size_t)rows * n * sizeof(float)));
        CHECK_STATUS(g_cu->argmax_rows(g_cu, got, dx, rows, n), MC_ERR_NUMERIC);
        CHECK_MSG("row 1: the logit of token 2 is NaN");
        for (int i = 0; i < n; i++) x[(size_t)n + i] = i == n - 1 ? INFINITY : 1.0f;
        CHECK_OK(g_cu->to_device(g_cu, dx, x, (size_t)rows * n * sizeof(float)));
        CHECK_STATUS(g_cu->argmax_rows(g_cu, got, dx, rows, n), MC_ERR_NUMERIC);
        snprintf(what, sizeof what, "token %d is +inf", n - 1);
        CHECK_MSG(what);
        for (int i = 0; i < n; i++) x[(size_t)n + i] = -INFINITY;
        CHECK_OK(g_cu->to_device(g_cu, dx, x, (size_t)rows * n * sizeof(float)));
        CHECK_STATUS(g_cu->argmax_rows(g_cu, got, dx, rows, n), MC_ERR_NUMERIC);
        CHECK_MSG("row 1: every logit is -inf");
        dfree(dx);
        free(x);
    }
}

/* ---- errors ---- */

static void test_errors(void) {
    mc_backend *be = (mc_backend *)1;
    float host[16] = {0};
    float *dA, *dC;
    void *huge;
    uint64_t now = 0, peak = 0;
    CHECK_STATUS(mc_backend_cuda_create(-1, &be), MC_ERR_BACKEND);
    CHECK_MSG("does not exist");
    CHECK(be == NULL);
    CHECK_STATUS(mc_backend_cuda_create(4096, &be), MC_ERR_BACKEND);
    CHECK_MSG("4096");
    printf("  %-58s %s\n", "no such device:", mc_last_error());
    /* an impossible allocation fails cleanly and the backend goes on (not under
     * compute-sanitizer, which reports the failing cudaMalloc itself) */
    huge = g_quick ? NULL : g_cu->alloc(g_cu, (size_t)1 << 50);
    CHECK(huge == NULL);
    CHECK_OK(g_cu->sync(g_cu));
    /* host memory handed to gemm_f32: reported at the next sync, nothing launched */
    dA = g_cu->alloc(g_cu, 64 * sizeof(float));
    dC = g_cu->alloc(g_cu, 64 * sizeof(float));
    g_cu->gemm_f32(g_cu, false, false, 4, 4, 4, 1.0f, dA, 4, dA, 4, 0.0f, host, 4);
    CHECK_STATUS(g_cu->sync(g_cu), MC_ERR_BACKEND);
    CHECK_MSG("not device memory");
    printf("  %-58s %s\n", "host pointer to gemm_f32:", mc_last_error());
    CHECK_OK(g_cu->sync(g_cu)); /* reported once */
    g_cu->zero(g_cu, dA, 64 * sizeof(float));
    g_cu->gemm_f32(g_cu, false, false, 4, 4, 4, 1.0f, dA, 4, dA, 4, 0.0f, dC, 4);
    CHECK_OK(g_cu->to_host(g_cu, host, dC, sizeof host));
    CHECK(host[0] == 0.0f && host[15] == 0.0f);
    mc_cuda_memory(g_cu, &now, &peak);
    printf("  %-58s %llu bytes now, %llu peak\n", "device memory held by the test backend:",
           (unsigned long long)now, (unsigned long long)peak);
    CHECK(now >= 128 * sizeof(float) && peak >= now);
    g_cu->free(g_cu, dA);
    g_cu->free(g_cu, dC);
}

/* bf16 bytes of value(i), i < n (malloc'd). */
static void *bf16_of(int n, float (*value)(int i)) {
    float *f = falloc((size_t)n);
    void *h = malloc((size_t)n * 2);
    if (!h) exit(2);
    for (int i = 0; i < n; i++) f[i] = value(i);
    mc_convert_from_f32(h, f, MC_BF16, (size_t)n);
    free(f);
    return h;
}

/* g_cu's copy of n bf16 weights. */
static mc_wt bf16_up(const void *h, size_t n) {
    mc_wt w;
    const void *dev = NULL;
    CHECK_OK(g_cu->weights(g_cu, h, n * 2, &dev));
    w.data = dev;
    w.dtype = MC_BF16;
    w.mlp = false;
    return w;
}

static float bias_random(int i) { return (float)((i * 7919) % 1000) * 1e-3f; }
/* 2^30: every logit near it rounds to it, so these indices tie */
static float bias_tie(int i) { return i == 2 || i % 5 == 3 ? 1073741824.0f : 0.0f; }
static float bias_bad(int i) { return i == 7 ? NAN : i % 9 == 4 ? INFINITY : 0.0f; }
static float bias_neg_inf(int i) {
    (void)i;
    return -INFINITY;
}
static float weight_random(int i) {
    (void)i;
    return mc_rng_normal(&g_rng) * 0.1f;
}

/* argmax_rows right after a GEMV of up to 8 rows is taken over by the GEMV's epilogue: the
 * tokens must be mc_argmax_row's over the logits the GEMV wrote (ties among the rows whose
 * bias is largest: the first index wins), the failures the same (the first NaN or +inf is
 * named; a row of -inf), and as the argmax kernel's on a backend without the fusion
 * (MC_CUDA_NOFUSE=argmax); with graphs off one kernel runs where two did. Shapes cover the
 * two-rows-a-warp GEMV (N >= 8192), one row a warp, and long rows split over a block's
 * warps (K >= 2048; for one row, instead of the staged GEMV, which the backend without the
 * fusion runs: its sums differ, so its logits are compared only there). */
/* attention_rows: rows of different sequences, each with its cache and position, against
 * the CPU's op (each row's new key and value copied into its cache, then attention); the
 * caches' new rows; the CUDA op without its one launch (a copy and a call a row) gives the
 * same bits. Sequences share one cache buffer [S, n_ctx, kv_dim] as a context's do. */
static void test_attention_rows(void) {
    /* hd, Hq, Hkv, T (rows), n_ctx */
    const int cases[][5] = {{64, 14, 2, 3, 600}, {64, 14, 2, 8, 300}, {128, 4, 2, 5, 200},
                            {64, 14, 2, 11, 100}, {32, 4, 2, 4, 80}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int hd = cases[ci][0], Hq = cases[ci][1], Hkv = cases[ci][2], T = cases[ci][3];
        const int n_ctx = cases[ci][4], S = T + 1; /* one sequence not stepped */
        const size_t kvd = (size_t)Hkv * hd, nq = (size_t)T * Hq * hd;
        const size_t ncache = (size_t)S * n_ctx * kvd;
        float *q = frand(nq, 1.0f), *kn = frand((size_t)T * kvd, 1.0f);
        float *vn = frand((size_t)T * kvd, 1.0f), *kc = frand(ncache, 1.0f);
        float *vc = frand(ncache, 1.0f), *want = falloc(nq), *got = falloc(nq);
        float *got2 = falloc(nq), *kc_got = falloc(ncache), *vc_got = falloc(ncache);
        mc_att_row hr[16], dr[16];
        float *dq = dputf(q, nq), *dkn = dputf(kn, (size_t)T * kvd);
        float *dvn = dputf(vn, (size_t)T * kvd);
        float *dkc = dputf(kc, ncache), *dvc = dputf(vc, ncache), *dout = dputf(got, nq);
        char what[96];
        for (int t = 0; t < T; t++) { /* row t: sequence S - 1 - t, positions spread out */
            const int sq = S - 1 - t, pos = t == 0 ? 0 : (int)((t * 97L) % n_ctx);
            hr[t].k = kc + (size_t)sq * n_ctx * kvd;
            hr[t].v = vc + (size_t)sq * n_ctx * kvd;
            dr[t].k = dkc + (size_t)sq * n_ctx * kvd;
            dr[t].v = dvc + (size_t)sq * n_ctx * kvd;
            hr[t].pos = dr[t].pos = pos;
        }
        CHECK_OK(g_cu->sync(g_cu));
        g_ref->attention_rows(g_ref, want, q, kn, vn, hr, T, Hq, Hkv, hd);
        g_cu->attention_rows(g_cu, dout, dq, dkn, dvn, dr, T, Hq, Hkv, hd);
        dget(got, dout, nq);
        dget(kc_got, dkc, ncache);
        dget(vc_got, dvc, ncache);
        snprintf(what, sizeof what, "attention_rows hd=%d Hq=%d T=%d", hd, Hq, T);
        cmp(what, got, want, nq, 1e-5);
        same("    key caches after it", kc_got, kc, ncache);
        same("    value caches after it", vc_got, vc, ncache);
        {
            void (*ar)(mc_backend *, void *, const void *, const void *, const void *,
                       const mc_att_row *, int, int, int, int) = g_cu->attention_rows;
            float *nan = fnan(nq);
            CHECK_OK(g_cu->to_device(g_cu, dout, nan, nq * sizeof(float)));
            g_cu->attention_rows = NULL; /* the model's loop: a copy and a call a row */
            for (int t = 0; t < T; t++) {
                const size_t at = (size_t)dr[t].pos * kvd;
                CHECK_OK(g_cu->copy(g_cu, (float *)dr[t].k + at, dkn + t * kvd, kvd * 4));
                CHECK_OK(g_cu->copy(g_cu, (float *)dr[t].v + at, dvn + t * kvd, kvd * 4));
                g_cu->attention(g_cu, dout + t * (size_t)Hq * hd, dq + t * (size_t)Hq * hd,
                                dr[t].k, dr[t].v, 1, dr[t].pos, Hq, Hkv, hd);
            }
            g_cu->attention_rows = ar;
            dget(got2, dout, nq);
            same("    vs a copy and a call a row", got2, got, nq);
            free(nan);
        }
        dfree(dq);
        dfree(dkn);
        dfree(dvn);
        dfree(dkc);
        dfree(dvc);
        dfree(dout);
        free(q);
        free(kn);
        free(vn);
        free(kc);
        free(vc);
        free(want);
        free(got);
        free(got2);
        free(kc_got);
        free(vc_got);
    }
}

static void test_argmax_gemv(void) {
    const int cs[5][3] = {{1, 20000, 64}, {3, 1000, 96}, {8, 300, 2048}, {2, 9000, 128},
                          {1, 500, 2048}};
    float (*const bias_fn[4])(int) = {bias_random, bias_tie, bias_bad, bias_neg_inf};
    static const char *const pass_name[3] = {"graphs on", "graphs off", "no fusion"};
    mc_backend *keep = g_cu, *be[3];
    be[0] = g_cu;
    be[1] = cuda_with("MC_CUDA_GRAPHS", "0");
    be[2] = cuda_with("MC_CUDA_NOFUSE", "argmax");
    for (int ci = 0; ci < 5; ci++) {
        const int M = cs[ci][0], N = cs[ci][1], K = cs[ci][2];
        float *x = frand((size_t)M * K, 1.0f), *logits = falloc((size_t)M * N);
        float *first = falloc((size_t)4 * M * N);
        void *wh = bf16_of(N * K, weight_random), *bh[4];
        for (int bi = 0; bi < 4; bi++) bh[bi] = bf16_of(N, bias_fn[bi]);
        for (int pass = 0; pass < 3; pass++) {
            if (!be[pass]) continue;
            g_cu = be[pass];
            float *dx = dputf(x, (size_t)M * K), *dl = dputf(logits, (size_t)M * N);
            int32_t *dids = (int32_t *)g_cu->alloc(g_cu, 8 * sizeof(int32_t));
            mc_wt w = bf16_up(wh, (size_t)N * K);
            char what[96];
            for (int bi = 0; bi < 4; bi++) {
                mc_wt b = bf16_up(bh[bi], (size_t)N);
                int32_t got[8], want[8];
                char gmsg[160];
                mc_status sw = MC_OK, sg;
                long l0, l1;
                mc_cuda_stats(g_cu, NULL, NULL, &l0);
                g_cu->matmul(g_cu, dl, N, dx, w, b, M, N, K);
                sg = g_cu->argmax_rows(g_cu, got, dl, M, N);
                mc_cuda_stats(g_cu, NULL, NULL, &l1);
                snprintf(gmsg, sizeof gmsg, "%s", sg == MC_OK ? "" : mc_last_error());
                dget(logits, dl, (size_t)M * N);
                for (int r = 0; r < M && sw == MC_OK; r++)
                    sw = mc_argmax_row(logits + (size_t)r * N, N, r, &want[r]);
                snprintf(what, sizeof what, "%s: argmax after a GEMV M=%d N=%d K=%d, bias %d",
                         pass_name[pass], M, N, K, bi);
                CHECK_INT((int)sg, (int)sw);
                if (sw == MC_OK) {
                    for (int r = 0; r < M; r++) CHECK_INT(got[r], want[r]);
                    printf("  %-62s %d .. %d (want %d .. %d)\n", what, got[0], got[M - 1],
                           want[0], want[M - 1]);
                } else {
                    CHECK(strcmp(gmsg, mc_last_error()) == 0);
                    printf("  %-62s \"%s\"\n", what, gmsg);
                }
                if (pass == 1) CHECK_INT((int)(l1 - l0), 1); /* the GEMV alone */
                /* argmax_queue: the same rows, left on the device and read after the wait;
                 * after the GEMV (taken over unless "no fusion") and alone (its own kernel) */
                for (int alone = 0; alone < 2; alone++) {
                    int32_t qgot[8], ids[8];
                    if (!alone) g_cu->matmul(g_cu, dl, N, dx, w, b, M, N, K);
                    CHECK_OK(g_cu->argmax_queue(g_cu, dids, dl, M, N));
                    const mc_status sq = g_cu->argmax_wait(g_cu, qgot, M);
                    CHECK_INT((int)sq, (int)sw);
                    if (sq != MC_OK) CHECK(strcmp(gmsg, mc_last_error()) == 0);
                    CHECK_OK(g_cu->to_host(g_cu, ids, dids, (size_t)M * sizeof *ids));
                    for (int r = 0; r < M; r++) {
                        if (sw == MC_OK) CHECK_INT(qgot[r], want[r]);
                        if (sw == MC_OK) CHECK_INT(ids[r], want[r]);
                        CHECK(ids[r] >= 0 && ids[r] < N);
                    }
                }
                float *f0 = first + (size_t)bi * M * N;
                if (pass == 0) memcpy(f0, logits, (size_t)M * N * sizeof(float));
                else if (pass == 1 || M > 1 || K < 2048)
                    same("    logits vs graphs on", logits, f0, (size_t)M * N);
                g_cu->release_weights(g_cu, b.data);
            }
            g_cu->release_weights(g_cu, w.data);
            dfree(dx);
            dfree(dl);
            g_cu->free(g_cu, dids);
        }
        g_cu = keep;
        for (int bi = 0; bi < 4; bi++) free(bh[bi]);
        free(wh);
        free(x);
        free(logits);
        free(first);
    }
    for (int pass = 1; pass < 3; pass++)
        if (be[pass]) mc_backend_free(be[pass]);
    {   /* refusals: rows, a third queued argmax, a wait with none queued or other rows;
         * positions filled on the device */
        const float v[10] = {1, 3, 3, 0, -1, 0, 0, 0, 0, 7};
        float *dl = dputf(v, 10);
        int32_t *dids = (int32_t *)g_cu->alloc(g_cu, 8 * sizeof(int32_t)), out[2], pos[3];
        CHECK_STATUS(g_cu->argmax_queue(g_cu, dids, dl, 9, 5), MC_ERR_INVALID_ARG);
        CHECK_STATUS(g_cu->argmax_wait(g_cu, out, 1), MC_ERR_INVALID_ARG);
        CHECK_OK(g_cu->argmax_queue(g_cu, dids, dl, 2, 5));
        CHECK_OK(g_cu->argmax_queue(g_cu, dids, dl + 5, 1, 5));
        CHECK_STATUS(g_cu->argmax_queue(g_cu, dids, dl, 1, 5), MC_ERR_INVALID_ARG);
        CHECK_OK(g_cu->argmax_wait(g_cu, out, 2));
        CHECK(out[0] == 1 && out[1] == 4);
        CHECK_STATUS(g_cu->argmax_wait(g_cu, out, 2), MC_ERR_INVALID_ARG);
        g_cu->fill_positions(g_cu, dids + 4, 7, 3);
        CHECK_OK(g_cu->to_host(g_cu, pos, dids + 4, sizeof pos));
        CHECK(pos[0] == 7 && pos[1] == 8 && pos[2] == 9);
        CHECK_OK(g_cu->to_host(g_cu, out, dids, sizeof(int32_t)));
        CHECK_INT(out[0], 4);
        dfree(dl);
        g_cu->free(g_cu, dids);
    }
}

int main(void) {
    const char *q = getenv("MC_GPU_TEST_QUICK");
    g_quick = q && q[0] == '1';
    mc_rng_seed(&g_rng, 20251125);
    if (mc_backend_cuda_create(0, &g_cu) != MC_OK) {
        fprintf(stderr, "no CUDA backend: %s\n", mc_last_error());
        return 1;
    }
    CHECK_OK(mc_backend_cpu_create(1, true, &g_ref));
    printf("device: %s\n", mc_cuda_device_name(g_cu));
    RUN(test_errors);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_matmul);
    RUN(test_matmul_dx);
    RUN(test_gemm_f32);
    RUN(test_gemm_f32_bf16);
    RUN(test_lora_swiglu);
    RUN(test_packed);
    RUN(test_kcat);
    RUN(test_dual);
    RUN(test_agrad);
    RUN(test_rope);
    RUN(test_lora_rope);
    RUN(test_attention);
    RUN(test_attention_backward);
    RUN(test_attention_segments);
    RUN(test_elementwise);
    RUN(test_adamw_sumsq);
    RUN(test_linear_xent);
    RUN(test_linear_xent_rows);
    RUN(test_gemm_choice);
    RUN(test_argmax);
    RUN(test_argmax_gemv);
    RUN(test_attention_rows);
    RUN(test_decode_layers);
    CHECK_OK(g_cu->sync(g_cu));
    mc_backend_free(g_ref);
    mc_backend_free(g_cu);
    return t_summary();
}
