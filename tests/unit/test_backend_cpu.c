/* test_backend_cpu.c - the CPU backends: every op of the fast kernels (AVX2 and portable
 * variants, several thread counts) against the reference kernels, and the reference
 * against direct double-precision formulas written here; memory functions; allocation
 * failure. Outputs are poisoned with NaN before each call, so an element left unwritten
 * shows up, and the gaps of strided outputs must stay untouched. */
#include "backend_test_util.h"
#include "test.h"

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_simd.h"

#include <omp.h>

/* ---- helpers -------------------------------------------------------------------------- */

/* Counts NaNs among rows x cols of a [rows, ld] matrix, and non-NaNs in the gap columns
 * cols..ld (which the op must not touch). Reports the first offender. */
static int check_written(const char *what, const float *o, size_t rows, size_t cols, size_t ld) {
    int bad = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < ld; c++) {
            float v = o[r * ld + c];
            bool wrong = c < cols ? isnan(v) : !isnan(v);
            if (wrong && bad++ == 0)
                fprintf(stderr, "%s: element [%zu, %zu] %s (%g)\n", what, r, c,
                        c < cols ? "not written" : "written past the row", (double)v);
        }
    if (bad) t_checks_failed++;
    return bad;
}

/* Checks a[i] == b[i] exactly (as values) for i < n; prints the first difference. */
static void check_same(const char *what, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i])) {
            fprintf(stderr, "%s: element %zu is %.9g, expected %.9g\n", what, i, (double)a[i],
                    (double)b[i]);
            t_checks_failed++;
            return;
        }
}

/* Copies the [rows, cols] part of a strided matrix to a dense one. */
static void pack(float *dst, const float *src, size_t rows, size_t cols, size_t ld) {
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * cols, src + r * ld, cols * sizeof(float));
}

/* ---- setup and memory ------------------------------------------------------------------ */

static void test_create(void) {
    mc_backend *be = NULL;
    void *p;
    const void *dev = NULL;
    float h[5] = {1, 2, 3, 4, 5}, back[5] = {0};
    create_backends();
    CHECK(strcmp(g_ref->name, "cpu-ref") == 0);
    CHECK(strcmp(g_fast[0]->name, "cpu") == 0);
    CHECK_INT(g_ref->act_dtype, MC_F32);
    CHECK_INT(g_ref->n_threads, 1);
    CHECK_INT(g_fast[0]->n_threads, omp_get_max_threads());
    CHECK_INT(g_fast[2]->n_threads, 3);
    printf("fast backend: %d threads, %s kernels\n", g_fast[0]->n_threads,
           mc_cpu_has_avx2() ? "AVX2" : "portable");
    CHECK_STATUS(mc_backend_cpu_create(-1, false, &be), MC_ERR_INVALID_ARG);
    CHECK(be == NULL);

    be = g_fast[0];
    p = be->alloc(be, 100);
    CHECK(p != NULL && ((uintptr_t)p & 63) == 0);
    CHECK_OK(be->to_device(be, p, h, sizeof h));
    CHECK_OK(be->copy(be, (float *)p + 5, p, sizeof h));
    CHECK_OK(be->to_host(be, back, (float *)p + 5, sizeof h));
    check_same("to_host", back, h, 5);
    memset(back, 0, sizeof back);
    CHECK_OK(be->to_host_f32(be, back, p, 5));
    check_same("to_host_f32", back, h, 5);
    CHECK_OK(be->weights(be, h, sizeof h, &dev));
    CHECK(dev == (const void *)h);
    be->release_weights(be, dev);
    CHECK_OK(be->sync(be));
    CHECK(mc_act_at(be, p, 3) == (void *)((float *)p + 3));
    be->free(be, p);
    be->free(be, NULL);
    mc_backend_free(NULL);
}

/* Every allocation of mc_backend_cpu_create fails in turn: MC_ERR_OOM, nothing returned,
 * nothing leaked (the sanitizer build checks leaks). */
static void test_alloc_failure(void) {
    for (int ref = 0; ref < 2; ref++) {
        size_t n;
        int failures = 0;
        for (n = 1; n < 20; n++) {
            mc_backend *be = (mc_backend *)&n; /* must be reset to NULL */
            mc_status s;
            (void)mc_debug_fail_alloc_after(n);
            s = mc_backend_cpu_create(2, ref != 0, &be);
            (void)mc_debug_fail_alloc_after(0);
            if (s == MC_OK) {
                mc_backend_free(be);
                break;
            }
            CHECK_INT(s, MC_ERR_OOM);
            CHECK(be == NULL);
            CHECK_MSG("out of memory");
            failures++;
        }
        CHECK(failures >= 2);
        CHECK(n < 20);
    }
    {
        mc_backend *be = g_fast[0];
        (void)mc_debug_fail_alloc_after(1);
        CHECK(be->alloc(be, 64) == NULL);
        (void)mc_debug_fail_alloc_after(0);
    }
}

/* ---- embedding --------------------------------------------------------------------------- */

static void test_embedding(void) {
    const int V = 50, D = 67, T = 9;
    int32_t ids[9];
    float *o = falloc((size_t)T * D), *want = falloc((size_t)T * D);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(mc_rng_next(&g_rng) % (uint64_t)V);
    ids[0] = V - 1;
    for (int di = 0; di < 3; di++) {
        float *vals;
        void *table = make_weight(k_dtypes[di], (size_t)V * D, 1.0f, &vals);
        mc_wt wt = {table, k_dtypes[di], false};
        for (int t = 0; t < T; t++)
            memcpy(want + (size_t)t * D, vals + (size_t)ids[t] * D, (size_t)D * sizeof(float));
        for (int b = -1; b < N_FAST; b++) {
            mc_backend *be = b < 0 ? g_ref : g_fast[b];
            poison(o, (size_t)T * D);
            be->embedding(be, o, ids, wt, T, D);
            check_written("embedding", o, (size_t)T, (size_t)D, (size_t)D);
            check_same("embedding", o, want, (size_t)T * D);
        }
        free(vals);
        free(table);
    }
    free(o);
    free(want);
}

/* ---- RMSNorm ---------------------------------------------------------------------------- */

/* out = x * (1 / sqrt(mean(x^2) + eps)) * w, the mean in double. */
static void rmsnorm_direct(float *o, const float *x, const float *w, int T, int D, float eps) {
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[t * D + d] * x[t * D + d];
        for (int d = 0; d < D; d++)
            o[t * D + d] = (float)((double)x[t * D + d] / sqrt(ss / D + (double)eps) * w[d]);
    }
}

static void test_rmsnorm(void) {
    static const int Ts[3] = {1, 5, 64}, Ds[3] = {67, 896, 8};
    for (int ti = 0; ti < 3; ti++)
        for (int dj = 0; dj < 3; dj++)
            for (int di = 0; di < 3; di++) {
                int T = Ts[ti], D = Ds[dj];
                size_t n = (size_t)T * D;
                float eps = 1e-6f;
                float *x = falloc(n), *o = falloc(n), *ref = falloc(n), *want = falloc(n), *wv;
                void *w = make_weight(k_dtypes[di], (size_t)D, 1.0f, &wv);
                mc_wt wt = {w, k_dtypes[di], false};
                fill_normal(x, n, 3.0f);
                rmsnorm_direct(want, x, wv, T, D, eps);
                poison(ref, n);
                g_ref->rmsnorm(g_ref, ref, x, wt, T, D, eps);
                check_written("rmsnorm ref", ref, (size_t)T, (size_t)D, (size_t)D);
                CHECK_REL_L2(ref, want, n, 1e-6);
                for (int b = 0; b < N_FAST; b++) {
                    mc_backend *be = g_fast[b];
                    poison(o, n);
                    be->rmsnorm(be, o, x, wt, T, D, eps);
                    check_written("rmsnorm", o, (size_t)T, (size_t)D, (size_t)D);
                    if (CHECK_REL_L2(o, ref, n, 1e-6) > 1e-6)
                        fprintf(stderr, "  %s T=%d D=%d %s\n", g_fast_name[b], T, D,
                                mc_dtype_name(k_dtypes[di]));
                    /* in place */
                    memcpy(o, x, n * sizeof(float));
                    be->rmsnorm(be, o, o, wt, T, D, eps);
                    CHECK_REL_L2(o, ref, n, 1e-6);
                }
                free(x);
                free(o);
                free(ref);
                free(want);
                free(wv);
                free(w);
            }
}

/* ---- matmul ----------------------------------------------------------------------------- */

/* One matmul case: every backend against the reference; the reference against a double
 * dot product written here. bias_t < 0 means no bias. */
static void matmul_case(int M, int N, int K, int ldo, mc_dtype wt_t, int bias_t) {
    size_t on = (size_t)M * (size_t)ldo;
    float *x = falloc((size_t)M * K), *o = falloc(on), *ref = falloc(on);
    float *dense = falloc((size_t)M * N), *refd = falloc((size_t)M * N),
          *want = falloc((size_t)M * N);
    float *wv, *bv = NULL;
    void *w = make_weight(wt_t, (size_t)N * K, 0.5f, &wv);
    void *b = bias_t >= 0 ? make_weight((mc_dtype)bias_t, (size_t)N, 1.0f, &bv) : NULL;
    mc_wt W = {w, wt_t, false}, B = {b, bias_t >= 0 ? (mc_dtype)bias_t : MC_F32, false};
    fill_normal(x, (size_t)M * K, 1.0f);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = bv ? bv[n] : 0.0;
            for (int k = 0; k < K; k++) acc += (double)x[(size_t)m * K + k] * wv[(size_t)n * K + k];
            want[(size_t)m * N + n] = (float)acc;
        }
    poison(ref, on);
    g_ref->matmul(g_ref, ref, ldo, x, W, B, M, N, K);
    check_written("matmul ref", ref, (size_t)M, (size_t)N, (size_t)ldo);
    pack(refd, ref, (size_t)M, (size_t)N, (size_t)ldo);
    CHECK_REL_L2(refd, want, (size_t)M * N, 1e-7);
    for (int bi = 0; bi < N_FAST; bi++) {
        mc_backend *be = g_fast[bi];
        poison(o, on);
        be->matmul(be, o, ldo, x, W, B, M, N, K);
        if (check_written("matmul", o, (size_t)M, (size_t)N, (size_t)ldo) ||
            (pack(dense, o, (size_t)M, (size_t)N, (size_t)ldo),
             CHECK_REL_L2(dense, refd, (size_t)M * N, 1e-5) > 1e-5))
            fprintf(stderr, "  %s M=%d N=%d K=%d ldo=%d W %s bias %s\n", g_fast_name[bi], M, N, K,
                    ldo, mc_dtype_name(wt_t),
                    bias_t >= 0 ? mc_dtype_name((mc_dtype)bias_t) : "none");
    }
    free(x);
    free(o);
    free(ref);
    free(dense);
    free(refd);
    free(want);
    free(wv);
    free(w);
    free(bv);
    free(b);
}

static void test_matmul_small(void) {
    static const int Ms[6] = {1, 3, 8, 9, 17, 64};
    for (int di = 0; di < 3; di++)
        for (int mi = 0; mi < 6; mi++)
            for (int bias = -1; bias < 3; bias++) {
                int bt = bias < 0 ? -1 : (int)k_dtypes[bias];
                matmul_case(Ms[mi], 131, 67, 131, k_dtypes[di], bt);
                matmul_case(Ms[mi], 131, 67, 140, k_dtypes[di], bt);
            }
}

/* Sizes that split into several GEMV row ranges and several GEMM tiles, K a multiple of 8
 * and not, N not a multiple of 4. */
static void test_matmul_large(void) {
    for (int di = 0; di < 3; di++) {
        matmul_case(1, 1203, 256, 1203, k_dtypes[di], (int)MC_BF16);
        /* one input, long rows: row parts in lockstep, rows and K elements left over */
        matmul_case(1, 903, 2061, 903, k_dtypes[di], (int)MC_F16);
        matmul_case(1, 6, 4867, 6, k_dtypes[di], -1);
        matmul_case(2, 517, 300, 520, k_dtypes[di], -1);
        matmul_case(5, 333, 1000, 333, k_dtypes[di], (int)MC_F32);
        matmul_case(40, 601, 300, 605, k_dtypes[di], (int)k_dtypes[di]);
        matmul_case(100, 96, 4099, 96, k_dtypes[di], -1);
    }
    matmul_case(3, 7, 1, 7, MC_BF16, (int)MC_F16); /* K = 1 */
    matmul_case(20, 5, 3, 6, MC_F16, -1);
}

/* matmul_multi: the same values as one matmul per output, bit for bit, on every fast
 * variant; one input (one parallel region), several inputs, and outputs too small to split
 * (both take the per-output path), with strided outputs into one buffer and mixed dtypes. */
static void multi_case(int M, int K, const int *Ns, int n) {
    enum { MAXN = 3 };
    const mc_dtype wt[MAXN] = {MC_BF16, MC_F16, MC_F32};
    size_t ld = 0, off[MAXN], total;
    void *w[MAXN], *b[MAXN];
    float *wv[MAXN], *bv[MAXN];
    mc_matmul_out o[MAXN];
    float *x = falloc((size_t)M * K), *got, *want;
    for (int i = 0; i < n; i++) ld += (size_t)Ns[i] + 3; /* gaps between the outputs */
    total = (size_t)M * ld;
    got = falloc(total);
    want = falloc(total);
    fill_normal(x, (size_t)M * K, 1.0f);
    for (int i = 0, c = 0; i < n; c += Ns[i] + 3, i++) {
        off[i] = (size_t)c;
        w[i] = make_weight(wt[i], (size_t)Ns[i] * K, 0.5f, &wv[i]);
        b[i] = i == 1 ? NULL : make_weight(MC_BF16, (size_t)Ns[i], 1.0f, &bv[i]);
        if (i == 1) bv[i] = NULL;
    }
    for (int bi = 0; bi < N_FAST; bi++) {
        mc_backend *be = g_fast[bi];
        CHECK(be->matmul_multi != NULL);
        if (!be->matmul_multi) continue;
        poison(got, total);
        poison(want, total);
        for (int i = 0; i < n; i++) {
            mc_wt W = {w[i], wt[i], false}, B = {b[i], MC_BF16, false};
            o[i].out = got + off[i];
            o[i].ldo = (int)ld;
            o[i].N = Ns[i];
            o[i].w = W;
            o[i].bias = B;
            be->matmul(be, want + off[i], (int)ld, x, W, B, M, Ns[i], K);
        }
        be->matmul_multi(be, n, o, x, M, K);
        for (size_t j = 0; j < total; j++)
            if (!(got[j] == want[j] || (isnan(got[j]) && isnan(want[j])))) {
                fprintf(stderr, "matmul_multi %s M=%d K=%d: element %zu is %.9g, matmul gives %.9g\n",
                        g_fast_name[bi], M, K, j, (double)got[j], (double)want[j]);
                t_checks_failed++;
                break;
            }
    }
    CHECK(g_ref->matmul_multi == NULL); /* the reference keeps one matmul per output */
    for (int i = 0; i < n; i++) {
        free(w[i]);
        free(wv[i]);
        free(b[i]);
        free(bv[i]);
    }
    free(x);
    free(got);
    free(want);
}

static void test_matmul_multi(void) {
    const int qkv[3] = {896, 128, 128}, gu[2] = {1203, 1203}, small[3] = {5, 7, 9};
    multi_case(1, 896, qkv, 3);
    multi_case(1, 256, gu, 2);
    multi_case(3, 200, qkv, 3);
    multi_case(40, 64, gu, 2); /* above the GEMV's row limit: one matmul each */
    multi_case(1, 16, small, 3); /* too few weights for a parallel region */
}

/* Two threads call matmul on the same backend at once: results stay right (one of them
 * finds the scratch busy and takes the GEMV path). */
static void test_matmul_concurrent(void) {
    const int M = 48, N = 300, K = 200;
    float *x = falloc((size_t)M * K), *ref = falloc((size_t)M * N), *o[4], *wv;
    void *w = make_weight(MC_BF16, (size_t)N * K, 0.5f, &wv);
    mc_wt W = {w, MC_BF16, false}, B = {NULL, MC_F32, false};
    fill_normal(x, (size_t)M * K, 1.0f);
    g_ref->matmul(g_ref, ref, N, x, W, B, M, N, K);
    for (int i = 0; i < 4; i++) {
        o[i] = falloc((size_t)M * N);
        poison(o[i], (size_t)M * N);
    }
#pragma omp parallel for num_threads(4)
    for (int i = 0; i < 4; i++) g_fast[0]->matmul(g_fast[0], o[i], N, x, W, B, M, N, K);
    for (int i = 0; i < 4; i++) {
        CHECK_REL_L2(o[i], ref, (size_t)M * N, 1e-5);
        free(o[i]);
    }
    free(x);
    free(ref);
    free(wv);
    free(w);
}

/* ---- RoPE ------------------------------------------------------------------------------- */

/* Hugging Face's formula written out: inv_freq = 1 / theta^(float(2i)/hd) in f32, angle =
 * float(pos) * inv_freq in f32, cos/sin of that angle (here in double, then rounded). */
static void rope_direct(float *x, int ldx, const int32_t *pos, int T, int H, int hd, float theta) {
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            float *xh = x + (size_t)t * ldx + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float e = (float)(2 * i) / (float)hd;
                float inv = 1.0f / (float)pow((double)theta, (double)e);
                float ang = (float)pos[t] * inv;
                double c = (float)cos((double)ang), s = (float)sin((double)ang);
                double x1 = xh[i], x2 = xh[i + half];
                xh[i] = (float)(x1 * c - x2 * s);
                xh[i + half] = (float)(x2 * c + x1 * s);
            }
        }
}

static void test_rope(void) {
    static const int hds[3] = {64, 6, 128};
    static const float thetas[2] = {1000000.0f, 10000.0f};
    for (int hi = 0; hi < 3; hi++)
        for (int th = 0; th < 2; th++)
            for (int big = 0; big < 2; big++) {
                int T = big ? 300 : 7, H = 3, hd = hds[hi], ldx = H * hd + 4;
                size_t n = (size_t)T * ldx, hw = (size_t)H * (size_t)hd;
                int32_t *pos = malloc((size_t)T * sizeof(int32_t));
                float *x = falloc(n), *ref = falloc(n), *o = falloc(n), *want = falloc(n);
                for (int t = 0; t < T; t++) pos[t] = (int32_t)(mc_rng_next(&g_rng) % 2048u);
                pos[0] = 0;
                fill_normal(x, n, 1.0f);
                for (int t = 0; t < T; t++) /* the gap after the heads must stay untouched */
                    for (int j = H * hd; j < ldx; j++) x[(size_t)t * ldx + j] = NAN;
                memcpy(want, x, n * sizeof(float));
                rope_direct(want, ldx, pos, T, H, hd, thetas[th]);
                memcpy(ref, x, n * sizeof(float));
                g_ref->rope(g_ref, ref, ldx, pos, T, H, hd, thetas[th]);
                check_written("rope ref", ref, (size_t)T, hw, (size_t)ldx);
                {
                    float *a = falloc((size_t)T * hw), *b = falloc((size_t)T * hw);
                    pack(a, ref, (size_t)T, hw, (size_t)ldx);
                    pack(b, want, (size_t)T, hw, (size_t)ldx);
                    CHECK_REL_L2(a, b, (size_t)T * hw, 1e-6);
                    for (int bi = 0; bi < N_FAST; bi++) {
                        memcpy(o, x, n * sizeof(float));
                        g_fast[bi]->rope(g_fast[bi], o, ldx, pos, T, H, hd, thetas[th]);
                        check_written("rope", o, (size_t)T, hw, (size_t)ldx);
                        pack(b, o, (size_t)T, hw, (size_t)ldx);
                        check_same("rope fast vs ref", b, a, (size_t)T * hw);
                    }
                    free(a);
                    free(b);
                }
                free(pos);
                free(x);
                free(ref);
                free(o);
                free(want);
            }
}

/* ---- attention -------------------------------------------------------------------------- */

/* Causal GQA attention in double: the textbook formula. */
static void attention_direct(float *out, const float *q, const float *k, const float *v, int T,
                             int pos0, int Hq, int Hkv, int hd) {
    size_t qd = (size_t)Hq * hd, kd = (size_t)Hkv * hd;
    int nmax = pos0 + T;
    double *s = malloc((size_t)nmax * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hq; h++) {
            int g = h / (Hq / Hkv), nk = pos0 + t + 1;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < nk; j++) {
                double dot = 0;
                for (int d = 0; d < hd; d++)
                    dot += (double)q[t * qd + (size_t)h * hd + d] * k[j * kd + (size_t)g * hd + d];
                s[j] = dot / sqrt((double)hd);
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < nk; j++) sum += (s[j] = exp(s[j] - mx));
            for (int d = 0; d < hd; d++) {
                double acc = 0;
                for (int j = 0; j < nk; j++) acc += s[j] / sum * v[j * kd + (size_t)g * hd + d];
                out[t * qd + (size_t)h * hd + d] = (float)acc;
            }
        }
    free(s);
}

static void attention_case(int T, int pos0, int Hq, int Hkv, int hd, float qscale) {
    int L = pos0 + T + 3; /* cache rows beyond pos0+T exist and must be ignored */
    size_t qn = (size_t)T * Hq * hd, kn = (size_t)L * Hkv * hd;
    float *q = falloc(qn), *k = falloc(kn), *v = falloc(kn);
    float *o = falloc(qn), *ref = falloc(qn), *want = falloc(qn);
    fill_normal(q, qn, qscale);
    fill_normal(k, kn, 1.0f);
    fill_normal(v, kn, 1.0f);
    for (size_t i = (size_t)(pos0 + T) * Hkv * hd; i < kn; i++) k[i] = v[i] = NAN;
    attention_direct(want, q, k, v, T, pos0, Hq, Hkv, hd);
    poison(ref, qn);
    g_ref->attention(g_ref, ref, q, k, v, T, pos0, Hq, Hkv, hd);
    check_written("attention ref", ref, (size_t)T, (size_t)Hq * hd, (size_t)Hq * hd);
    if (CHECK_REL_L2(ref, want, qn, 1e-6) > 1e-6)
        fprintf(stderr, "  ref T=%d pos0=%d Hq=%d Hkv=%d hd=%d\n", T, pos0, Hq, Hkv, hd);
    for (int b = 0; b < N_FAST; b++) {
        poison(o, qn);
        g_fast[b]->attention(g_fast[b], o, q, k, v, T, pos0, Hq, Hkv, hd);
        if (check_written("attention", o, (size_t)T, (size_t)Hq * hd, (size_t)Hq * hd) ||
            CHECK_REL_L2(o, want, qn, 1e-5) > 1e-5)
            fprintf(stderr, "  %s T=%d pos0=%d Hq=%d Hkv=%d hd=%d\n", g_fast_name[b], T, pos0, Hq,
                    Hkv, hd);
    }
    free(q);
    free(k);
    free(v);
    free(o);
    free(ref);
    free(want);
}

static void test_attention(void) {
    /* GQA ratios 1 and 3, decode and prefill, blocks of keys crossing the diagonal */
    attention_case(1, 0, 3, 3, 64, 1.0f);
    attention_case(1, 100, 6, 2, 64, 1.0f);
    attention_case(17, 0, 6, 2, 64, 1.0f);
    attention_case(33, 50, 3, 3, 64, 1.0f);
    attention_case(70, 0, 6, 2, 16, 1.0f);
    attention_case(130, 3, 14, 2, 64, 1.0f); /* Qwen2.5-0.5B shape: group of 7 */
    attention_case(9, 60, 4, 2, 128, 1.0f);
    attention_case(5, 7, 6, 2, 32, 1.0f);    /* 15 rows per item */
    attention_case(3, 0, 8, 2, 64, 1.0f);    /* 12 rows per item */
    attention_case(5, 7, 40, 1, 8, 1.0f);    /* a group larger than one work item */
    attention_case(11, 20, 6, 2, 12, 1.0f);  /* hd not a multiple of 8: scalar path */
    attention_case(40, 80, 6, 2, 64, 4.0f);  /* sharp softmax */
    attention_case(3, 200, 2, 1, 264, 1.0f); /* hd above the AVX2 kernel's limit */
}

/* ---- vector exp ---------------------------------------------------------------------- */

#if MC_CPU_X86
static MC_AVX2 void exp8_array(float *y, const float *x, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, mc_exp8(_mm256_loadu_ps(x + i)));
}
#endif

/* mc_exp8 within 2 ulp of exp over the whole range, 0 below the normal range, inf above. */
static void test_exp8(void) {
#if MC_CPU_X86
    enum { NX = 200008 };
    float *x = falloc(NX), *y = falloc(NX);
    double worst = 0;
    size_t iw = 0;
    if (!mc_cpu_has_avx2()) goto done;
    for (size_t i = 0; i < NX - 8; i++) x[i] = -90.0f + 180.0f * (float)i / (float)(NX - 8);
    x[NX - 8] = -INFINITY;
    x[NX - 7] = INFINITY;
    x[NX - 6] = NAN;
    x[NX - 5] = 0.0f;
    x[NX - 4] = -87.34f;
    x[NX - 3] = 88.73f;
    x[NX - 2] = 88.72f;
    x[NX - 1] = -87.33f;
    exp8_array(y, x, NX);
    for (size_t i = 0; i < NX; i++) {
        double e = exp((double)x[i]);
        if (isnan(x[i])) {
            CHECK(isnan(y[i]));
        } else if (x[i] < -87.3365479f) {
            CHECK(y[i] == 0.0f);
        } else if (x[i] > 88.7228317f) {
            CHECK(isinf(y[i]) && y[i] > 0);
        } else {
            double rel = fabs((double)y[i] - e) / e;
            if (rel > worst) {
                worst = rel;
                iw = i;
            }
        }
    }
    if (!(worst < 2.5e-7))
        fprintf(stderr, "exp8: rel error %.3g at x = %.9g (%.9g vs %.9g)\n", worst, (double)x[iw],
                (double)y[iw], exp((double)x[iw]));
    CHECK(worst < 2.5e-7);
done:
    free(x);
    free(y);
#endif
}

/* ---- SwiGLU, add ------------------------------------------------------------------------ */

static void test_swiglu(void) {
    static const size_t ns[3] = {1, 37, 70001};
    for (int i = 0; i < 3; i++) {
        size_t n = ns[i];
        float *g = falloc(n), *u = falloc(n), *o = falloc(n), *ref = falloc(n), *want = falloc(n);
        fill_normal(g, n, 4.0f);
        fill_normal(u, n, 1.0f);
        if (n > 10) {
            g[3] = 100.0f;
            g[4] = -100.0f;
            g[5] = -88.0f;
            g[6] = 88.5f;
        }
        for (size_t j = 0; j < n; j++)
            want[j] = (float)((double)g[j] / (1.0 + exp(-(double)g[j])) * u[j]);
        poison(ref, n);
        g_ref->swiglu(g_ref, ref, g, u, n);
        check_written("swiglu ref", ref, 1, n, n);
        CHECK_REL_L2(ref, want, n, 1e-6);
        for (int b = 0; b < N_FAST; b++) {
            poison(o, n);
            g_fast[b]->swiglu(g_fast[b], o, g, u, n);
            check_written("swiglu", o, 1, n, n);
            CHECK_REL_L2(o, ref, n, 1e-6);
            memcpy(o, g, n * sizeof(float)); /* out == gate */
            g_fast[b]->swiglu(g_fast[b], o, o, u, n);
            CHECK_REL_L2(o, ref, n, 1e-6);
            memcpy(o, u, n * sizeof(float)); /* out == up */
            g_fast[b]->swiglu(g_fast[b], o, g, o, n);
            CHECK_REL_L2(o, ref, n, 1e-6);
        }
        free(g);
        free(u);
        free(o);
        free(ref);
        free(want);
    }
}

static void test_add(void) {
    static const size_t ns[3] = {1, 37, 100003};
    for (int i = 0; i < 3; i++) {
        size_t n = ns[i];
        float *x = falloc(n), *y = falloc(n), *o = falloc(n), *want = falloc(n);
        fill_normal(x, n, 1.0f);
        fill_normal(y, n, 1.0f);
        for (size_t j = 0; j < n; j++) want[j] = y[j] + x[j];
        for (int b = -1; b < N_FAST; b++) {
            mc_backend *be = b < 0 ? g_ref : g_fast[b];
            memcpy(o, y, n * sizeof(float));
            be->add(be, o, x, n);
            check_same("add", o, want, n);
        }
        free(x);
        free(y);
        free(o);
        free(want);
    }
}

int main(void) {
    mc_rng_seed(&g_rng, 20240611);
    RUN(test_create);
    RUN(test_alloc_failure);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_matmul_small);
    RUN(test_matmul_large);
    RUN(test_matmul_concurrent);
    RUN(test_matmul_multi);
    RUN(test_rope);
    RUN(test_attention);
    RUN(test_exp8);
    RUN(test_swiglu);
    RUN(test_add);
    mc_backend_free(g_ref);
    for (int i = 0; i < N_FAST; i++) mc_backend_free(g_fast[i]);
    return t_summary();
}
