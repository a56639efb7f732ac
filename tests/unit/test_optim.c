/* test_optim.c - learning-rate schedules (exact values at chosen steps), gradient clipping
 * with torch.nn.utils.clip_grad_norm_ semantics, SGD (momentum, weight decay) against
 * hand-computed values, and the backends' AdamW step against a double-precision
 * torch.optim.AdamW reference over 5 steps. */
#include <math.h>
#include <stdio.h>

#include "test.h"
#include "train/optim.h"

static const double PI = 3.14159265358979323846;

static void test_schedule_parse(void) {
    mc_lr_kind k = MC_LR_LINEAR;
    CHECK_OK(mc_lr_schedule_parse(NULL, &k));
    CHECK_INT(k, MC_LR_CONSTANT);
    CHECK_OK(mc_lr_schedule_parse("constant", &k));
    CHECK_INT(k, MC_LR_CONSTANT);
    CHECK_OK(mc_lr_schedule_parse("linear", &k));
    CHECK_INT(k, MC_LR_LINEAR);
    CHECK_OK(mc_lr_schedule_parse("cosine", &k));
    CHECK_INT(k, MC_LR_COSINE);
    CHECK_STATUS(mc_lr_schedule_parse("step", &k), MC_ERR_INVALID_ARG);
    CHECK_MSG("step");
    CHECK_STATUS(mc_lr_schedule_parse("", &k), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_lr_schedule_parse("Cosine", &k), MC_ERR_INVALID_ARG);
}

/* Schedules follow Hugging Face's get_*_schedule_with_warmup with c = step - 1 (the
 * optimizer steps taken before this one): warmup lr * c / warmup while c < warmup, then
 * constant, or decay factor (total - c) / (total - warmup) (linear) or
 * 0.5 (1 + cos(pi (c - warmup) / (total - warmup))) (cosine), applied between min_lr and lr. */
static void test_constant(void) {
    CHECK(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 0, 100, 1) == 1e-3);
    CHECK(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 0, 100, 100) == 1e-3);
    CHECK(mc_lr_at(MC_LR_CONSTANT, 1e-3, 5e-4, 0, 100, 1000) == 1e-3); /* min_lr unused */
    CHECK(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 10, 100, 1) == 0);        /* first warmup step */
    CHECK_NEAR(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 10, 100, 5), 4e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 10, 100, 10), 9e-4, 1e-18);
    CHECK(mc_lr_at(MC_LR_CONSTANT, 1e-3, 0, 10, 100, 11) == 1e-3);
    CHECK(mc_lr_at(MC_LR_CONSTANT, 0, 0, 10, 100, 3) == 0);
}

static void test_linear(void) {
    /* lr 1 -> 0.1 over 10 steps, no warmup: 0.1 + 0.9 (10 - c) / 10 */
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.1, 0, 10, 1), 1.0, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.1, 0, 10, 5), 0.64, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.1, 0, 10, 10), 0.19, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.1, 0, 10, 25), 0.1, 1e-15); /* held after total */
    /* warmup 4 of 12: 0, 0.25, 0.5, 0.75, then 1 decaying over 8 steps */
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 1), 0, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 3), 1e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 4), 1.5e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 5), 2e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 7), 2e-4 * 0.75, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 9), 1e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 2e-4, 0, 4, 12, 12), 2.5e-5, 1e-18);
    /* total <= warmup: after the warmup the schedule sits at min_lr */
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.2, 5, 5, 5), 0.8, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_LINEAR, 1, 0.2, 5, 5, 6), 0.2, 1e-15);
}

static void test_cosine(void) {
    /* lr 1 -> 0 after a warmup of 2 in 12 steps: 0.5 (1 + cos(pi (c - 2) / 10)) */
    int s;
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 1), 0.0, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 2), 0.5, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 3), 1.0, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 8), 0.5, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 12), 0.5 * (1 + cos(PI * 0.9)), 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 40), 0.0, 1e-15);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, 4), 0.5 * (1 + cos(PI * 0.1)), 1e-15);
    /* with min_lr: min + (lr - min) / 2 (1 + cos(pi p)) */
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1e-3, 1e-4, 0, 8, 3), 1e-4 + 0.5 * 9e-4 * (1 + cos(PI * 0.25)),
               1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1e-3, 1e-4, 0, 8, 5), 5.5e-4, 1e-18);
    CHECK_NEAR(mc_lr_at(MC_LR_COSINE, 1e-3, 1e-4, 0, 8, 9), 1e-4, 1e-18);
    /* monotone after the warmup */
    for (s = 4; s <= 12; s++)
        CHECK(mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, s) <= mc_lr_at(MC_LR_COSINE, 1, 0, 2, 12, s - 1));
}

/* ---- backends ---- */

static mc_backend *g_be[2]; /* reference, fast */
static const char *const g_be_name[2] = {"cpu-ref", "cpu"};

static void test_backends(void) {
    int k;
    for (k = 0; k < 2; k++) {
        CHECK_OK(mc_backend_cpu_create(k == 0 ? 1 : 2, k == 0, &g_be[k]));
        if (!g_be[k]) continue;
        if (!g_be[k]->adamw || !g_be[k]->sumsq_f32 || !g_be[k]->scale_f32 || !g_be[k]->zero) {
            fprintf(stderr, "backend %s lacks the optimizer ops (adamw, sumsq_f32, scale_f32, "
                    "zero)\n", g_be_name[k]);
            t_checks_failed++;
            mc_backend_free(g_be[k]);
            g_be[k] = NULL;
        }
    }
}

static float *dev_copy(mc_backend *be, const float *host, size_t n) {
    float *d = be->alloc(be, n * sizeof *d);
    CHECK(d != NULL);
    if (d) CHECK_OK(be->to_device(be, d, host, n * sizeof *d));
    return d;
}

static void get_host(mc_backend *be, float *host, const float *dev, size_t n) {
    CHECK_OK(be->to_host(be, host, dev, n * sizeof *host));
}

/* torch.nn.utils.clip_grad_norm_(max_norm): total = ||g||; coef = max_norm / (total +
 * 1e-6); g *= min(coef, 1); returns total. */
static void clip_case(mc_backend *be, const float *g0, size_t n, double max_norm) {
    float g[64], got[64];
    double total = 0, coef;
    size_t i;
    float *d;
    for (i = 0; i < n; i++) total += (double)g0[i] * g0[i];
    total = sqrt(total);
    coef = max_norm > 0 ? fmin(max_norm / (total + 1e-6), 1.0) : 1.0;
    for (i = 0; i < n; i++) g[i] = coef < 1 ? (float)(g0[i] * (float)coef) : g0[i];
    d = dev_copy(be, g0, n);
    if (!d) return;
    CHECK_NEAR(mc_clip_grads(be, d, n, max_norm), total, 1e-6 * (1 + total));
    get_host(be, got, d, n);
    for (i = 0; i < n; i++) {
        if (fabsf(got[i] - g[i]) > 1e-7f * fabsf(g[i])) {
            fprintf(stderr, "  %s clip(max %g): g[%zu] = %.9g, expected %.9g\n", be->name,
                    max_norm, i, got[i], g[i]);
            t_checks_failed++;
            break;
        }
    }
    be->free(be, d);
}

static void test_clip(void) {
    static const float g34[2] = {3, 4};
    float big[37];
    int k;
    size_t i;
    for (i = 0; i < 37; i++) big[i] = (float)((int)(i * 7 % 11) - 5) * 0.37f;
    for (k = 0; k < 2; k++) {
        mc_backend *be = g_be[k];
        if (!be) continue;
        clip_case(be, g34, 2, 0);     /* off */
        clip_case(be, g34, 2, 10);    /* below: unchanged */
        clip_case(be, g34, 2, 1);     /* 0.6, 0.8 (times 5 / 5.000001) */
        clip_case(be, g34, 2, 5);     /* exactly at the norm: torch still scales by 5/(5+1e-6) */
        clip_case(be, g34, 2, 2.5);
        clip_case(be, big, 37, 0.5);
        clip_case(be, big, 37, 1e3);
        {
            float z[3] = {0, 0, 0};
            clip_case(be, z, 3, 1); /* zero gradient: norm 0, stays 0 */
        }
        /* a hand value: [3, 4] clipped to 1 is [0.6, 0.8] up to the 1e-6 term */
        {
            float *d = dev_copy(be, g34, 2), got[2];
            if (d) {
                CHECK_NEAR(mc_clip_grads(be, d, 2, 1), 5.0, 1e-12);
                get_host(be, got, d, 2);
                CHECK_NEAR(got[0], 0.6, 1e-6);
                CHECK_NEAR(got[1], 0.8, 1e-6);
                be->free(be, d);
            }
        }
        /* NaN is reported, not hidden */
        {
            float nanv[2] = {NAN, 1};
            float *d = dev_copy(be, nanv, 2);
            if (d) {
                CHECK(isnan(mc_clip_grads(be, d, 2, 1)));
                be->free(be, d);
            }
        }
    }
}

/* torch.optim.SGD(lr, momentum, weight_decay), dampening 0, no Nesterov, in double:
 *   d = g + wd p;  buf = d (first step) or momentum buf + d;  p -= lr (momentum ? buf : d) */
static void sgd_reference(double *p, double *buf, const float *g, size_t n, double lr,
                          double momentum, double wd, int step) {
    size_t i;
    for (i = 0; i < n; i++) {
        double d = g[i] + wd * p[i];
        if (momentum != 0) {
            buf[i] = step == 1 ? d : momentum * buf[i] + d;
            d = buf[i];
        }
        p[i] -= lr * d;
    }
}

static void sgd_case(mc_backend *be, double momentum, double wd) {
    enum { N = 5, STEPS = 4 };
    static const float p0[N] = {1.0f, -2.0f, 0.5f, 0.0f, 3.25f};
    float grads[STEPS][N], got[N];
    double p[N], buf[N] = {0};
    mc_optim o;
    mc_optim_hparams h;
    float *dp, *dg;
    int s;
    size_t i;
    memset(&h, 0, sizeof h);
    h.lr = 0.1;
    h.momentum = momentum;
    h.weight_decay = wd;
    for (s = 0; s < STEPS; s++)
        for (i = 0; i < N; i++) grads[s][i] = (float)(0.1 * (double)((int)(i + 3 * s) % 4 - 1.5));
    for (i = 0; i < N; i++) p[i] = p0[i];
    CHECK_OK(mc_optim_init(&o, be, MC_OPT_SGD, N));
    CHECK(o.v == NULL);
    dp = dev_copy(be, p0, N);
    dg = be->alloc(be, N * sizeof *dg);
    if (!dp || !dg) return;
    for (s = 0; s < STEPS; s++) {
        CHECK_OK(be->to_device(be, dg, grads[s], sizeof grads[s]));
        CHECK_OK(mc_optim_step(&o, dp, dg, &h));
        sgd_reference(p, buf, grads[s], N, h.lr, momentum, wd, s + 1);
        get_host(be, got, dp, N);
        for (i = 0; i < N; i++)
            if (fabs(got[i] - p[i]) > 1e-6) {
                fprintf(stderr, "  %s SGD(momentum %g, wd %g) step %d: p[%zu] = %.9g, expected "
                        "%.9g\n", be->name, momentum, wd, s + 1, i, got[i], p[i]);
                t_checks_failed++;
                break;
            }
    }
    CHECK_INT(o.step, STEPS);
    be->free(be, dp);
    be->free(be, dg);
    mc_optim_free(&o);
    mc_optim_free(&o); /* idempotent */
}

static void test_sgd(void) {
    int k;
    for (k = 0; k < 2; k++) {
        mc_backend *be = g_be[k];
        if (!be) continue;
        sgd_case(be, 0, 0);
        sgd_case(be, 0, 0.01);
        sgd_case(be, 0.9, 0);
        sgd_case(be, 0.9, 0.05);
    }
    /* a hand-computed step: p = 1, g = 0.5, lr 0.1, wd 0.1 -> 1 - 0.1 (0.5 + 0.1) = 0.94;
     * then momentum 0.9: buf = 0.6 -> 0.9 * 0.6 + (0.5 + 0.094) = 1.134 -> 0.94 - 0.1134 */
    if (g_be[0]) {
        mc_backend *be = g_be[0];
        mc_optim o;
        mc_optim_hparams h = {0.1, 0.9, 0.999, 1e-8, 0.1, 0.9};
        float one = 1.0f, half = 0.5f, got = 0;
        float *dp = dev_copy(be, &one, 1), *dg = dev_copy(be, &half, 1);
        CHECK_OK(mc_optim_init(&o, be, MC_OPT_SGD, 1));
        if (dp && dg) {
            CHECK_OK(mc_optim_step(&o, dp, dg, &h));
            get_host(be, &got, dp, 1);
            CHECK_NEAR(got, 0.94, 1e-7);
            CHECK_OK(mc_optim_step(&o, dp, dg, &h));
            get_host(be, &got, dp, 1);
            CHECK_NEAR(got, 0.94 - 0.1134, 1e-7);
        }
        be->free(be, dp);
        be->free(be, dg);
        mc_optim_free(&o);
    }
}

/* torch.optim.AdamW in double:
 *   p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
static void adamw_reference(double *p, double *m, double *v, const float *g, size_t n,
                            const mc_optim_hparams *h, int t) {
    double bc1 = 1 - pow(h->beta1, t), bc2 = 1 - pow(h->beta2, t);
    size_t i;
    for (i = 0; i < n; i++) {
        p[i] *= 1 - h->lr * h->weight_decay;
        m[i] = h->beta1 * m[i] + (1 - h->beta1) * g[i];
        v[i] = h->beta2 * v[i] + (1 - h->beta2) * (double)g[i] * g[i];
        p[i] -= h->lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + h->eps);
    }
}

static void adamw_case(mc_backend *be, size_t n, double wd) {
    enum { STEPS = 5 };
    float *hp = malloc(n * sizeof *hp), *hg = malloc(n * sizeof *hg), *got = malloc(n * sizeof *got);
    float *gm = malloc(n * sizeof *gm), *gv = malloc(n * sizeof *gv);
    double *p = malloc(n * sizeof *p), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    double *mabs = calloc(n, sizeof *mabs);
    float *dp = NULL, *dg = NULL;
    mc_optim o;
    mc_optim_hparams h = {1e-2, 0.9, 0.999, 1e-8, wd, 0};
    double worst = 0;
    size_t i, iw = 0;
    int s;
    memset(&o, 0, sizeof o);
    if (!hp || !hg || !got || !gm || !gv || !p || !m || !v || !mabs) goto done;
    for (i = 0; i < n; i++) {
        hp[i] = (float)sin((double)i * 0.37) * 0.5f;
        p[i] = hp[i];
    }
    CHECK_OK(mc_optim_init(&o, be, MC_OPT_ADAMW, n));
    dp = dev_copy(be, hp, n);
    dg = be->alloc(be, n * sizeof *dg);
    if (!dp || !dg || !o.m || !o.v) goto done;
    for (s = 1; s <= STEPS; s++) {
        for (i = 0; i < n; i++) /* gradients of both signs and very different sizes */
            hg[i] = (float)(cos((double)(i * 13 + (size_t)s * 7) * 0.11) *
                            pow(10.0, (double)((int)(i % 7) - 4)));
        if (n > 3) hg[3] = 0; /* a zero gradient (v stays 0 at this index) */
        CHECK_OK(be->to_device(be, dg, hg, n * sizeof *hg));
        CHECK_OK(mc_optim_step(&o, dp, dg, &h));
        adamw_reference(p, m, v, hg, n, &h, s);
        for (i = 0; i < n; i++) mabs[i] = h.beta1 * mabs[i] + (1 - h.beta1) * fabs(hg[i]);
    }
    CHECK_INT(o.step, STEPS);
    get_host(be, got, dp, n);
    get_host(be, gm, o.m, n);
    get_host(be, gv, o.v, n);
    for (i = 0; i < n; i++) {
        double d = fabs(got[i] - p[i]);
        if (d > worst || d != d) {
            worst = d;
            iw = i;
        }
        /* m's tolerance is relative to the sum of |contributions| (gradients of both signs
         * cancel); v's allows 1 - b2 formed from the f32 beta2 the op receives (0.999f is
         * 0.99900001, so 1 - b2 is 1.3e-5 small), which the bias correction cancels in p */
        if (fabs(gm[i] - m[i]) > 1e-6 * mabs[i] + 1e-12 ||
            fabs(gv[i] - v[i]) > 3e-5 * (fabs(v[i]) + 1e-20) + 1e-20) {
            fprintf(stderr, "  %s AdamW moments at %zu: m %.9g vs %.9g, v %.9g vs %.9g\n",
                    be->name, i, gm[i], m[i], gv[i], v[i]);
            t_checks_failed++;
            break;
        }
    }
    if (!(worst <= 2e-6)) {
        fprintf(stderr, "  %s AdamW (n %zu, wd %g) after %d steps: max |p - ref| %.3g at %zu "
                "(%.9g vs %.9g)\n", be->name, n, wd, STEPS, worst, iw, got[iw], p[iw]);
        t_checks_failed++;
    }
done:
    if (dp) be->free(be, dp);
    if (dg) be->free(be, dg);
    if (o.be) mc_optim_free(&o);
    free(hp);
    free(hg);
    free(got);
    free(gm);
    free(gv);
    free(p);
    free(m);
    free(v);
    free(mabs);
}

static void test_adamw(void) {
    int k;
    for (k = 0; k < 2; k++) {
        mc_backend *be = g_be[k];
        if (!be) continue;
        adamw_case(be, 1, 0);
        adamw_case(be, 7, 0.01);
        adamw_case(be, 1000, 0.01); /* vector loops with a tail */
        adamw_case(be, 33, 0.5);
    }
    /* a hand value: the first AdamW step moves each parameter by lr * sign(g) (up to eps)
     * after the decoupled decay: p = 1, g = -3, lr 0.1, wd 0.1 -> 0.99 + 0.1 */
    if (g_be[0]) {
        mc_backend *be = g_be[0];
        mc_optim o;
        mc_optim_hparams h = {0.1, 0.9, 0.999, 1e-8, 0.1, 0};
        float one = 1.0f, g = -3.0f, got = 0;
        float *dp = dev_copy(be, &one, 1), *dg = dev_copy(be, &g, 1);
        CHECK_OK(mc_optim_init(&o, be, MC_OPT_ADAMW, 1));
        if (dp && dg) {
            CHECK_OK(mc_optim_step(&o, dp, dg, &h));
            get_host(be, &got, dp, 1);
            CHECK_NEAR(got, 1.09, 1e-6);
        }
        be->free(be, dp);
        be->free(be, dg);
        mc_optim_free(&o);
    }
}

/* The reference and fast AdamW agree closely on a larger random-looking vector. */
static void test_adamw_ref_vs_fast(void) {
    enum { N = 4099 };
    float *p0, *g, *a, *b;
    float *dpa, *dpb, *dg;
    mc_optim oa, ob;
    mc_optim_hparams h = {3e-3, 0.9, 0.95, 1e-6, 0.1, 0};
    int s;
    size_t i;
    if (!g_be[0] || !g_be[1]) return;
    p0 = malloc(N * sizeof *p0);
    g = malloc(N * sizeof *g);
    a = malloc(N * sizeof *a);
    b = malloc(N * sizeof *b);
    if (!p0 || !g || !a || !b) goto done;
    for (i = 0; i < N; i++) p0[i] = (float)cos((double)i * 1.7);
    CHECK_OK(mc_optim_init(&oa, g_be[0], MC_OPT_ADAMW, N));
    CHECK_OK(mc_optim_init(&ob, g_be[1], MC_OPT_ADAMW, N));
    dpa = dev_copy(g_be[0], p0, N);
    dpb = dev_copy(g_be[1], p0, N);
    dg = g_be[0]->alloc(g_be[0], N * sizeof *dg);
    if (dpa && dpb && dg) {
        for (s = 0; s < 3; s++) {
            for (i = 0; i < N; i++) g[i] = (float)sin((double)(i + 1) * (0.3 + s));
            CHECK_OK(g_be[0]->to_device(g_be[0], dg, g, N * sizeof *g));
            CHECK_OK(mc_optim_step(&oa, dpa, dg, &h));
            CHECK_OK(mc_optim_step(&ob, dpb, dg, &h)); /* CPU backends share host memory */
        }
        get_host(g_be[0], a, dpa, N);
        get_host(g_be[1], b, dpb, N);
        CHECK_REL_L2(b, a, N, 1e-6);
    }
    if (dpa) g_be[0]->free(g_be[0], dpa);
    if (dpb) g_be[1]->free(g_be[1], dpb);
    if (dg) g_be[0]->free(g_be[0], dg);
    mc_optim_free(&oa);
    mc_optim_free(&ob);
done:
    free(p0);
    free(g);
    free(a);
    free(b);
}

static void test_optim_oom(void) {
    size_t n;
    int ok = 0;
    if (!g_be[0]) return;
    for (n = 1; n < 10 && !ok; n++) {
        mc_optim o;
        mc_status s;
        mc_debug_fail_alloc_after(n);
        s = mc_optim_init(&o, g_be[0], MC_OPT_ADAMW, 100);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) {
            ok = 1;
            mc_optim_free(&o);
        } else {
            CHECK_INT(s, MC_ERR_OOM);
            CHECK(o.m == NULL && o.v == NULL);
        }
    }
    CHECK(ok);
    /* an SGD step needs host copies: their failure is MC_ERR_OOM too */
    for (ok = 0, n = 1; n < 10 && !ok; n++) {
        mc_optim o;
        mc_optim_hparams h = {0.1, 0.9, 0.999, 1e-8, 0, 0.9};
        float p[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1};
        float *dp = dev_copy(g_be[0], p, 4), *dg = dev_copy(g_be[0], g, 4);
        mc_status s;
        CHECK_OK(mc_optim_init(&o, g_be[0], MC_OPT_SGD, 4));
        mc_debug_fail_alloc_after(n);
        s = mc_optim_step(&o, dp, dg, &h);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) ok = 1;
        else CHECK_INT(s, MC_ERR_OOM);
        g_be[0]->free(g_be[0], dp);
        g_be[0]->free(g_be[0], dg);
        mc_optim_free(&o);
    }
    CHECK(ok);
}

int main(void) {
    RUN(test_schedule_parse);
    RUN(test_constant);
    RUN(test_linear);
    RUN(test_cosine);
    RUN(test_backends);
    RUN(test_clip);
    RUN(test_sgd);
    RUN(test_adamw);
    RUN(test_adamw_ref_vs_fast);
    RUN(test_optim_oom);
    mc_backend_free(g_be[0]);
    mc_backend_free(g_be[1]);
    return t_summary();
}
