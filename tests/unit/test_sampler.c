/* test_sampler.c - the sampler chain: each stage on hand-made logits, the fast paths
 * against a full-sort reference, statistics of the draw, determinism, errors, and
 * allocation failures. */
#include "test.h"

#include "gen/sampler.h"

#include <stdint.h>

/* ---- helpers ---------------------------------------------------------------------------- */

/* Parameters with every stage off (temperature 1, plain sampling). */
static mc_sampler_params plain_params(void) {
    mc_sampler_params p = mc_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    return p;
}

static mc_sampler *make(const mc_sampler_params *p, int32_t v) {
    mc_sampler *s = NULL;
    CHECK_OK(mc_sampler_create(p, v, &s));
    return s;
}

/* The final distribution as a dense array: probs[id], or -1 for tokens not kept. */
static size_t dense_dist(mc_sampler *s, const float *logits, int32_t v, double *dense) {
    int32_t *ids = malloc((size_t)v * sizeof *ids);
    float *probs = malloc((size_t)v * sizeof *probs);
    size_t n = 0, j;
    int32_t i;
    for (i = 0; i < v; i++) dense[i] = -1;
    CHECK_OK(mc_sampler_dist(s, logits, ids, probs, &n));
    for (j = 0; j < n; j++) dense[ids[j]] = probs[j];
    free(ids);
    free(probs);
    return n;
}

/* Splitmix-style generator for test data (independent of the library's RNG). */
static uint64_t t_state = 12345;
static double t_uniform(void) {
    uint64_t z = (t_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}
static float t_normal(void) {
    double u1 = t_uniform(), u2 = t_uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- the reference: the chain by its definition, with a full sort ------------------------ */

typedef struct ref_cand {
    float x;
    int32_t id;
} ref_cand;

static int ref_cmp(const void *pa, const void *pb) {
    const ref_cand *a = pa, *b = pb;
    if (a->x != b->x) return a->x > b->x ? -1 : 1;
    return a->id < b->id ? -1 : (a->id > b->id ? 1 : 0);
}

/* dense[id] = probability of id, -1 when not kept. hist = every accepted token (prompt
 * and generated, in order); gen = the generated ones. */
static void ref_dist(const mc_sampler_params *p, const int32_t *hist, size_t n_hist,
                     const int32_t *gen, size_t n_gen, const float *logits, int32_t v,
                     double *dense) {
    float *w = malloc((size_t)v * sizeof *w);
    int *seen = calloc((size_t)v, sizeof *seen);
    int *count = calloc((size_t)v, sizeof *count);
    ref_cand *c = malloc((size_t)v * sizeof *c);
    size_t i, n = 0, keep, from;
    float m = -INFINITY;
    int32_t imax = 0, id;
    double z = 0, acc;
    memcpy(w, logits, (size_t)v * sizeof *w);
    for (i = 0; i < (size_t)v; i++) dense[i] = -1;
    for (i = 0; i < p->n_logit_bias; i++) w[p->logit_bias[i].token] += p->logit_bias[i].bias;
    if (p->repetition_penalty != 1.0f) {
        from = (p->repetition_last_n > 0 && n_hist > (size_t)p->repetition_last_n)
                   ? n_hist - (size_t)p->repetition_last_n
                   : 0;
        for (i = from; i < n_hist; i++) {
            id = hist[i];
            if (seen[id]) continue;
            seen[id] = 1;
            w[id] = w[id] > 0 ? w[id] / p->repetition_penalty : w[id] * p->repetition_penalty;
        }
    }
    for (i = 0; i < n_gen; i++) count[gen[i]]++;
    for (id = 0; id < v; id++)
        if (count[id] > 0 && (p->presence_penalty != 0 || p->frequency_penalty != 0))
            w[id] -= (float)count[id] * p->frequency_penalty + p->presence_penalty;
    for (id = 0; id < v; id++)
        if (w[id] > m) {
            m = w[id];
            imax = id;
        }
    if (p->temperature == 0) {
        dense[imax] = 1;
        goto done;
    }
    for (id = 0; id < v; id++) {
        float x = (w[id] - m) / p->temperature;
        if (x > -INFINITY) {
            c[n].x = x;
            c[n].id = id;
            n++;
        }
    }
    qsort(c, n, sizeof *c, ref_cmp);
    keep = n;
    if (p->top_k > 0 && (size_t)p->top_k < keep) keep = (size_t)p->top_k;
    if (p->top_p < 1) {
        for (i = 0; i < keep; i++) z += (double)expf(c[i].x);
        acc = 0;
        for (i = 0; i < keep; i++) {
            acc += (double)expf(c[i].x);
            if (acc >= (double)p->top_p * z) break;
        }
        if (i < keep) keep = i + 1;
    }
    if (p->min_p > 0)
        for (i = 1; i < keep; i++)
            if (expf(c[i].x) < p->min_p) {
                keep = i;
                break;
            }
    z = 0;
    for (i = 0; i < keep; i++) z += (double)expf(c[i].x);
    for (i = 0; i < keep; i++) dense[c[i].id] = (double)expf(c[i].x) / z;
done:
    free(w);
    free(seen);
    free(count);
    free(c);
}

/* Compares two dense distributions: same kept set, probabilities within tol. Returns 1
 * when equal; prints the first difference otherwise. */
static int same_dist(const double *a, const double *b, int32_t v, double tol, const char *what) {
    int32_t i;
    for (i = 0; i < v; i++) {
        if ((a[i] < 0) != (b[i] < 0) || fabs(a[i] - b[i]) > tol) {
            fprintf(stderr, "%s: token %d: fast %.9g vs reference %.9g\n", what, (int)i, a[i],
                    b[i]);
            return 0;
        }
    }
    return 1;
}

/* ---- defaults and validation -------------------------------------------------------------- */

static void test_defaults(void) {
    mc_sampler_params p = mc_sampler_default_params();
    mc_sampler *s = NULL;
    CHECK_NEAR(p.temperature, 0.8f, 0);
    CHECK_INT(p.top_k, 40);
    CHECK_NEAR(p.top_p, 0.95f, 0);
    CHECK_NEAR(p.min_p, 0.05f, 0);
    CHECK_NEAR(p.repetition_penalty, 1.0, 0);
    CHECK_INT(p.repetition_last_n, 0);
    CHECK_NEAR(p.presence_penalty, 0.0, 0);
    CHECK_NEAR(p.frequency_penalty, 0.0, 0);
    CHECK(p.logit_bias == NULL);
    CHECK_INT(p.n_logit_bias, 0);
    CHECK_INT(p.seed, 0);
    CHECK_OK(mc_sampler_create(NULL, 10, &s)); /* NULL params = defaults */
    CHECK(s != NULL);
    mc_sampler_free(s);
    mc_sampler_free(NULL);
    mc_sampler_reset(NULL);
}

/* Expects create to fail with MC_ERR_INVALID_ARG and a message containing msg. */
static void expect_invalid(const mc_sampler_params *p, int32_t v, const char *msg) {
    static char sentinel;
    mc_sampler *s = (mc_sampler *)(void *)&sentinel; /* create must set it to NULL */
    CHECK_STATUS(mc_sampler_create(p, v, &s), MC_ERR_INVALID_ARG);
    CHECK(s == NULL);
    CHECK_MSG(msg);
}

static void test_invalid_params(void) {
    mc_sampler_params p;
    mc_logit_bias lb[2] = {{1, 1.0f}, {10, 1.0f}};
#define BAD(field, value, msg)           \
    do {                                 \
        p = mc_sampler_default_params(); \
        p.field = value;                 \
        expect_invalid(&p, 10, msg);     \
    } while (0)
    BAD(temperature, -0.1f, "temperature = -0.1");
    BAD(temperature, NAN, "temperature = nan");
    BAD(temperature, INFINITY, "temperature = inf");
    BAD(top_k, -1, "top_k = -1");
    BAD(top_p, 0.0f, "top_p = 0 ");
    BAD(top_p, 1.5f, "top_p = 1.5");
    BAD(top_p, -0.5f, "top_p = -0.5");
    BAD(top_p, NAN, "top_p = nan");
    BAD(min_p, -0.01f, "min_p = -0.01");
    BAD(min_p, 1.01f, "min_p = 1.01");
    BAD(min_p, NAN, "min_p = nan");
    BAD(repetition_penalty, 0.0f, "repetition_penalty = 0 ");
    BAD(repetition_penalty, -1.0f, "repetition_penalty = -1");
    BAD(repetition_penalty, INFINITY, "repetition_penalty = inf");
    BAD(repetition_penalty, NAN, "repetition_penalty = nan");
    BAD(repetition_last_n, -2, "repetition_last_n = -2");
    BAD(presence_penalty, NAN, "presence_penalty = nan");
    BAD(presence_penalty, -INFINITY, "presence_penalty = -inf");
    BAD(frequency_penalty, INFINITY, "frequency_penalty = inf");
    BAD(n_logit_bias, 2, "logit_bias is NULL");
#undef BAD
    p = mc_sampler_default_params();
    p.logit_bias = lb;
    p.n_logit_bias = 2;
    expect_invalid(&p, 10, "logit_bias[1]: token 10 is outside the vocabulary [0, 10)");
    lb[1].token = -1;
    expect_invalid(&p, 10, "logit_bias[1]: token -1");
    lb[1].token = 2;
    lb[1].bias = NAN;
    expect_invalid(&p, 10, "logit_bias[1]: bias nan");
    lb[1].bias = INFINITY;
    expect_invalid(&p, 10, "logit_bias[1]: bias inf");
    p.n_logit_bias = 0;
    expect_invalid(&p, 0, "vocab_size = 0");
    expect_invalid(&p, -5, "vocab_size = -5");
    CHECK_STATUS(mc_sampler_create(&p, 10, NULL), MC_ERR_INVALID_ARG);
    /* the boundary values are valid */
    p = mc_sampler_default_params();
    p.temperature = 0;
    p.top_p = 1;
    p.min_p = 1;
    p.top_k = 0;
    lb[1].bias = -INFINITY;
    p.logit_bias = lb;
    p.n_logit_bias = 2;
    {
        mc_sampler *s = make(&p, 10);
        mc_sampler_free(s);
    }
    p.min_p = 0;
    {
        mc_sampler *s = make(&p, 10);
        mc_sampler_free(s);
    }
}

static void test_null_and_range_args(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    float logits[4] = {0, 1, 2, 3};
    int32_t tok, ids[4];
    size_t n;
    uint64_t zero[4] = {0, 0, 0, 0};
    p.repetition_penalty = 1.5f;
    s = make(&p, 4);
    CHECK_STATUS(mc_sampler_sample(NULL, logits, &tok, NULL), MC_ERR_INVALID_ARG);
    CHECK_MSG("sampler is NULL");
    CHECK_STATUS(mc_sampler_sample(s, NULL, &tok, NULL), MC_ERR_INVALID_ARG);
    CHECK_MSG("logits is NULL");
    CHECK_STATUS(mc_sampler_sample(s, logits, NULL, NULL), MC_ERR_INVALID_ARG);
    CHECK_MSG("token_out is NULL");
    CHECK_STATUS(mc_sampler_dist(s, logits, ids, NULL, &n), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_sampler_accept(NULL, 1), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_sampler_accept(s, 4), MC_ERR_TOKEN_ID);
    CHECK_MSG("token 4 is outside the vocabulary [0, 4)");
    CHECK_STATUS(mc_sampler_accept(s, -1), MC_ERR_TOKEN_ID);
    CHECK_STATUS(mc_sampler_accept_prompt(NULL, ids, 1), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_sampler_accept_prompt(s, NULL, 1), MC_ERR_INVALID_ARG);
    CHECK_MSG("ids is NULL");
    CHECK_OK(mc_sampler_accept_prompt(s, NULL, 0));
    ids[0] = 1;
    ids[1] = 7;
    CHECK_STATUS(mc_sampler_accept_prompt(s, ids, 2), MC_ERR_TOKEN_ID);
    CHECK_MSG("prompt token 1 has id 7");
    CHECK_INT(mc_sampler_history_len(s), 0); /* nothing recorded on error */
    CHECK_STATUS(mc_sampler_set_rng_state(s, zero), MC_ERR_INVALID_ARG);
    CHECK_MSG("all-zero");
    CHECK_STATUS(mc_sampler_set_rng_state(s, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_sampler_set_rng_state(NULL, zero), MC_ERR_INVALID_ARG);
    mc_sampler_free(s);
}

/* ---- greedy ------------------------------------------------------------------------------- */

static void test_greedy(void) {
    mc_sampler_params p = mc_sampler_default_params();
    mc_sampler *s;
    float logits[6] = {0.5f, 3.0f, -INFINITY, 3.0f, 2.9f, -1.0f};
    int32_t tok = -1;
    uint64_t before[4], after[4];
    float lp = 0;
    p.temperature = 0;
    s = make(&p, 6);
    mc_sampler_get_rng_state(s, before);
    CHECK_OK(mc_sampler_sample(s, logits, &tok, &lp));
    CHECK_INT(tok, 1); /* tie between 1 and 3 -> lowest id */
    mc_sampler_get_rng_state(s, after);
    CHECK(memcmp(before, after, sizeof before) == 0); /* greedy draws nothing */
    {
        double z = exp(0.5) + 2 * exp(3.0) + exp(2.9) + exp(-1.0);
        CHECK_NEAR(lp, 3.0 - log(z), 1e-6);
    }
    logits[1] = -INFINITY;
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(tok, 3);
    logits[0] = 10;
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(tok, 0);
    mc_sampler_free(s);
}

/* ---- temperature ---------------------------------------------------------------------------- */

/* Draws n tokens and checks each frequency against p within 5 standard deviations. */
static void check_frequencies(mc_sampler *s, const float *logits, int32_t v, const double *p,
                              int n) {
    int *count = calloc((size_t)v, sizeof *count);
    int i;
    int32_t tok;
    for (i = 0; i < n; i++) {
        CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
        if (tok >= 0 && tok < v) count[tok]++;
    }
    for (i = 0; i < v; i++) {
        double f = (double)count[i] / n, sd = sqrt(p[i] * (1 - p[i]) / n);
        if (p[i] == 0) {
            CHECK_INT(count[i], 0);
        } else if (fabs(f - p[i]) > 5 * sd) {
            fprintf(stderr, "token %d: frequency %.5f, expected %.5f (sd %.5f)\n", i, f, p[i], sd);
            CHECK(fabs(f - p[i]) <= 5 * sd);
        }
    }
    free(count);
}

static void test_temperature(void) {
    const float logits[4] = {1.0f, 0.5f, 0.0f, -1.0f};
    const float temps[3] = {0.5f, 1.0f, 2.5f};
    int t;
    for (t = 0; t < 3; t++) {
        mc_sampler_params p = plain_params();
        mc_sampler *s;
        double expect[4], z = 0, dense[4];
        int i;
        p.temperature = temps[t];
        p.seed = 1000 + (uint64_t)t;
        s = make(&p, 4);
        for (i = 0; i < 4; i++) z += exp((double)logits[i] / temps[t]);
        for (i = 0; i < 4; i++) expect[i] = exp((double)logits[i] / temps[t]) / z;
        CHECK_INT(dense_dist(s, logits, 4, dense), 4);
        for (i = 0; i < 4; i++) CHECK_NEAR(dense[i], expect[i], 1e-6);
        check_frequencies(s, logits, 4, expect, 200000);
        mc_sampler_free(s);
    }
}

/* ---- truncation --------------------------------------------------------------------------- */

static void test_top_k(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    float logits[8] = {0.1f, 2.0f, 1.0f, 1.0f, 1.0f, -INFINITY, 3.0f, -2.0f};
    double dense[8], expect[8] = {0};
    double z;
    int i;
    p.top_k = 3;
    s = make(&p, 8);
    CHECK_INT(dense_dist(s, logits, 8, dense), 3);
    /* keeps 6 (3.0), 1 (2.0) and, of the three tied at 1.0, the lowest id 2 */
    CHECK(dense[6] > 0 && dense[1] > 0 && dense[2] > 0);
    CHECK(dense[3] < 0 && dense[4] < 0 && dense[0] < 0);
    z = exp(3.0) + exp(2.0) + exp(1.0);
    CHECK_NEAR(dense[6], exp(3.0) / z, 1e-6);
    expect[6] = exp(3.0) / z;
    expect[1] = exp(2.0) / z;
    expect[2] = exp(1.0) / z;
    check_frequencies(s, logits, 8, expect, 50000);
    mc_sampler_free(s);
    /* k = 1 is greedy with a draw; k >= the live tokens keeps them all */
    for (i = 0; i < 3; i++) {
        int32_t ks[3] = {1, 7, 100};
        size_t want[3] = {1, 7, 7};
        p.top_k = ks[i];
        s = make(&p, 8);
        CHECK_INT(dense_dist(s, logits, 8, dense), want[i]);
        CHECK(dense[5] < 0);
        mc_sampler_free(s);
    }
}

static void test_top_p(void) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 */
    const float logits[4] = {logf(0.3f), logf(0.05f), logf(0.5f), logf(0.15f)};
    const float ps[4] = {0.45f, 0.75f, 0.85f, 0.99f};
    const size_t want[4] = {1, 2, 3, 4};
    int i;
    for (i = 0; i < 4; i++) {
        mc_sampler_params p = plain_params();
        mc_sampler *s;
        double dense[4];
        p.top_p = ps[i];
        s = make(&p, 4);
        CHECK_INT(dense_dist(s, logits, 4, dense), want[i]);
        CHECK(dense[2] > 0);
        if (want[i] == 2) {
            CHECK_NEAR(dense[2], 0.5 / 0.8, 1e-6);
            CHECK_NEAR(dense[0], 0.3 / 0.8, 1e-6);
        }
        mc_sampler_free(s);
    }
}

/* Top-p without top-k where most of the mass sits far below the top token (many tokens at
 * e^-17 of the top hold more than 1 - top_p of it): the kept set is large. */
static void test_top_p_wide(void) {
    const int32_t v = 151936;
    float *logits = malloc((size_t)v * sizeof *logits);
    double *fast = malloc((size_t)v * sizeof *fast), *ref = malloc((size_t)v * sizeof *ref);
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    int32_t i;
    size_t n;
    for (i = 0; i < v; i++) logits[i] = -17.0f - (float)(i % 7) * 0.01f;
    logits[5] = 0.0f;
    p.top_p = 0.999f;
    s = make(&p, v);
    n = dense_dist(s, logits, v, fast);
    ref_dist(&p, NULL, 0, NULL, 0, logits, v, ref);
    CHECK(n > 1000);
    CHECK(same_dist(fast, ref, v, 1e-6, "wide top-p"));
    mc_sampler_free(s);
    /* and one where a few tokens hold it all */
    p.top_p = 0.5f;
    s = make(&p, v);
    CHECK_INT(dense_dist(s, logits, v, fast), 1);
    CHECK_NEAR(fast[5], 1.0, 0);
    mc_sampler_free(s);
    free(logits);
    free(fast);
    free(ref);
}

static void test_min_p(void) {
    /* probabilities 0.5, 0.3, 0.15, 0.05: min_p 0.2 keeps p >= 0.1 */
    const float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    const float mps[4] = {0.2f, 0.35f, 0.65f, 1.0f};
    const size_t want[4] = {3, 2, 1, 1};
    int i;
    for (i = 0; i < 4; i++) {
        int with_top_p;
        for (with_top_p = 0; with_top_p < 2; with_top_p++) {
            mc_sampler_params p = plain_params();
            mc_sampler *s;
            double dense[4];
            p.min_p = mps[i];
            if (with_top_p) p.top_p = 0.999f;
            s = make(&p, 4);
            CHECK_INT(dense_dist(s, logits, 4, dense), want[i]);
            CHECK(dense[0] > 0);
            if (want[i] == 3) CHECK_NEAR(dense[2], 0.15 / 0.95, 1e-6);
            mc_sampler_free(s);
        }
    }
}

/* ---- bias and penalties ------------------------------------------------------------------- */

/* The processed logits, recovered from the plain distribution: l_i - l_ref = log(p_i/p_ref). */
static void check_logit_diffs(mc_sampler *s, const float *logits, int32_t v, const float *want) {
    double dense[16];
    int32_t i;
    CHECK_INT(dense_dist(s, logits, v, dense), v);
    for (i = 1; i < v; i++)
        CHECK_NEAR(log(dense[i] / dense[0]), (double)want[i] - (double)want[0], 1e-5);
}

static void test_logit_bias(void) {
    mc_sampler_params p = mc_sampler_default_params();
    mc_logit_bias lb[4] = {{3, 5.0f}, {0, -INFINITY}, {2, 1.0f}, {2, 0.5f}};
    const float logits[4] = {9.0f, 1.0f, 0.0f, 0.0f};
    mc_sampler *s;
    int32_t tok;
    p.temperature = 0;
    p.logit_bias = lb;
    p.n_logit_bias = 1;
    s = make(&p, 4);
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(tok, 0); /* 9 > 0 + 5 */
    mc_sampler_free(s);
    p.n_logit_bias = 2; /* ban token 0 */
    s = make(&p, 4);
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(tok, 3);
    mc_sampler_free(s);
    /* the bias array is copied: changing it after create has no effect */
    lb[0].bias = -100.0f;
    s = make(&p, 4);
    lb[0].bias = 5.0f;
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(tok, 1);
    mc_sampler_free(s);
    /* exact values; entries for the same id add up */
    p = plain_params();
    p.logit_bias = lb + 2;
    p.n_logit_bias = 2;
    s = make(&p, 4);
    {
        const float want[4] = {9.0f, 1.0f, 1.5f, 0.0f};
        check_logit_diffs(s, logits, 4, want);
    }
    mc_sampler_free(s);
}

static void test_repetition_penalty(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    const float logits[6] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f, -0.25f};
    const int32_t prompt[4] = {1, 1, 3, 4};
    p.repetition_penalty = 2.0f;
    s = make(&p, 6);
    CHECK_OK(mc_sampler_accept_prompt(s, prompt, 4));
    CHECK_OK(mc_sampler_accept(s, 5));
    {
        /* 1: -2 * 2 (once, though it occurs twice); 3: 0.5 / 2; 4: 0 stays 0;
         * 5: -0.25 * 2; 0 and 2 untouched */
        const float want[6] = {2.0f, -4.0f, 1.0f, 0.25f, 0.0f, -0.5f};
        check_logit_diffs(s, logits, 6, want);
    }
    CHECK_INT(mc_sampler_history_len(s), 5);
    mc_sampler_reset(s);
    CHECK_INT(mc_sampler_history_len(s), 0);
    check_logit_diffs(s, logits, 6, logits);
    mc_sampler_free(s);
    /* a penalty below 1 encourages repeats */
    p.repetition_penalty = 0.5f;
    s = make(&p, 6);
    CHECK_OK(mc_sampler_accept(s, 0));
    CHECK_OK(mc_sampler_accept(s, 1));
    {
        const float want[6] = {4.0f, -1.0f, 1.0f, 0.5f, 0.0f, -0.25f};
        check_logit_diffs(s, logits, 6, want);
    }
    mc_sampler_free(s);
}

static void test_repetition_window(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    const float logits[6] = {2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f};
    int32_t i;
    p.repetition_penalty = 2.0f;
    p.repetition_last_n = 3;
    s = make(&p, 6);
    /* history 0 1 2 3 4 0 1 ... : the window holds the last 3 */
    for (i = 0; i < 20; i++) {
        CHECK_OK(mc_sampler_accept(s, i % 5));
        CHECK(mc_sampler_history_len(s) <= 6); /* bounded by 2 * last_n */
    }
    /* last three accepted: 17 % 5 = 2, 3, 4 */
    {
        const float want[6] = {2.0f, 2.0f, 1.0f, 1.0f, 1.0f, 2.0f};
        check_logit_diffs(s, logits, 6, want);
    }
    mc_sampler_free(s);
    /* a prompt longer than the window */
    s = make(&p, 6);
    {
        const int32_t prompt[8] = {5, 5, 5, 5, 0, 1, 0, 0};
        const float want[6] = {1.0f, 1.0f, 2.0f, 2.0f, 2.0f, 2.0f};
        CHECK_OK(mc_sampler_accept_prompt(s, prompt, 8));
        check_logit_diffs(s, logits, 6, want);
    }
    mc_sampler_free(s);
}

static void test_presence_frequency(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    const float logits[5] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    const int32_t prompt[3] = {0, 0, 1};
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = make(&p, 5);
    CHECK_OK(mc_sampler_accept_prompt(s, prompt, 3)); /* prompt tokens do not count */
    CHECK_OK(mc_sampler_accept(s, 2));
    CHECK_OK(mc_sampler_accept(s, 2));
    CHECK_OK(mc_sampler_accept(s, 3));
    CHECK_OK(mc_sampler_accept(s, 1));
    {
        /* 2: 1 - (0.5 + 2 * 0.25) = 0; 3 and 1: 1 - 0.75 = 0.25 */
        const float want[5] = {1.0f, 0.25f, 0.0f, 0.25f, 1.0f};
        check_logit_diffs(s, logits, 5, want);
    }
    CHECK_INT(mc_sampler_history_len(s), 0); /* no repetition penalty: no history */
    mc_sampler_reset(s);
    check_logit_diffs(s, logits, 5, logits);
    mc_sampler_free(s);
    /* negative values encourage repeats; sampled tokens count like accepted ones */
    p.presence_penalty = -1.0f;
    p.frequency_penalty = 0.0f;
    p.temperature = 0;
    s = make(&p, 5);
    {
        const float l2[5] = {1.0f, 1.5f, 1.0f, 1.0f, 1.0f};
        int32_t tok;
        CHECK_OK(mc_sampler_sample(s, l2, &tok, NULL));
        CHECK_INT(tok, 1);
        CHECK_OK(mc_sampler_accept(s, 4));
        CHECK_OK(mc_sampler_sample(s, l2, &tok, NULL)); /* 1: 2.5, 4: 2.0 */
        CHECK_INT(tok, 1);
    }
    mc_sampler_free(s);
}

/* The documented order, stage against stage. */
static void test_chain_order(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    mc_logit_bias lb = {1, 1.0f};
    /* bias before repetition: (1 + 1) / 2 = 1, not 1/2 + 1 = 1.5.
     * repetition before presence/frequency: 3 / 2 - 0.5 = 1, not (3 - 0.5) / 2 = 1.25. */
    const float logits[4] = {0.0f, 1.0f, 3.0f, 0.0f};
    p.logit_bias = &lb;
    p.n_logit_bias = 1;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    s = make(&p, 4);
    CHECK_OK(mc_sampler_accept_prompt(s, (const int32_t[]){1}, 1));
    CHECK_OK(mc_sampler_accept(s, 2));
    {
        const float want[4] = {0.0f, 1.0f, 1.0f, 0.0f};
        check_logit_diffs(s, logits, 4, want);
    }
    mc_sampler_free(s);
    /* top-k before top-p: probabilities 0.4 0.3 0.2 0.1, k = 2 renormalizes to 4/7, 3/7,
     * so top_p 0.5 keeps one token (on the full distribution it would keep two) */
    {
        const float l2[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
        double dense[4];
        p = plain_params();
        p.top_k = 2;
        p.top_p = 0.5f;
        s = make(&p, 4);
        CHECK_INT(dense_dist(s, l2, 4, dense), 1);
        mc_sampler_free(s);
        p.top_k = 0;
        s = make(&p, 4);
        CHECK_INT(dense_dist(s, l2, 4, dense), 2);
        mc_sampler_free(s);
        /* temperature before top-p: at T = 0.25 the top token holds 0.4^4 / sum = 0.72 */
        p.temperature = 0.25f;
        p.top_p = 0.7f;
        s = make(&p, 4);
        CHECK_INT(dense_dist(s, l2, 4, dense), 1);
        mc_sampler_free(s);
        /* top-p before min-p is invisible (min-p is relative); min-p after temperature: at
         * T = 2 the ratios are sqrt(p_i / p_max): 1, 0.87, 0.71, 0.5 */
        p.temperature = 2.0f;
        p.top_p = 1.0f;
        p.min_p = 0.6f;
        s = make(&p, 4);
        CHECK_INT(dense_dist(s, l2, 4, dense), 3);
        mc_sampler_free(s);
    }
}

/* ---- infinities and NaN ------------------------------------------------------------------- */

static void test_infinities(void) {
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    float logits[5] = {-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY};
    double expect[5] = {0, 0.5, 0, 0.5, 0};
    int32_t tok;
    float lp;
    int pass;
    for (pass = 0; pass < 3; pass++) { /* plain, top-p path, top-k path */
        p = plain_params();
        if (pass == 1) p.top_p = 0.9999f;
        if (pass == 2) p.top_k = 4;
        s = make(&p, 5);
        check_frequencies(s, logits, 5, expect, 20000);
        CHECK_OK(mc_sampler_sample(s, logits, &tok, &lp));
        CHECK_NEAR(lp, log(0.5), 1e-6);
        mc_sampler_free(s);
    }
    p = plain_params();
    s = make(&p, 5);
    logits[1] = logits[3] = -INFINITY;
    CHECK_STATUS(mc_sampler_sample(s, logits, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("every logit is -inf");
    logits[1] = NAN;
    CHECK_STATUS(mc_sampler_sample(s, logits, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("token 1 is NaN");
    logits[1] = INFINITY;
    CHECK_STATUS(mc_sampler_sample(s, logits, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("token 1 is +inf");
    {
        int32_t ids[5];
        float probs[5];
        size_t n;
        CHECK_STATUS(mc_sampler_dist(s, logits, ids, probs, &n), MC_ERR_NUMERIC);
    }
    mc_sampler_free(s);
    /* a bias of -inf on the only finite token bans everything */
    {
        mc_logit_bias lb = {2, -INFINITY};
        const float l2[3] = {-INFINITY, -INFINITY, 4.0f};
        p.logit_bias = &lb;
        p.n_logit_bias = 1;
        s = make(&p, 3);
        CHECK_STATUS(mc_sampler_sample(s, l2, &tok, NULL), MC_ERR_NUMERIC);
        mc_sampler_free(s);
    }
    /* a tiny temperature sends lower logits to exp(x) = 0 or x = -inf: never chosen */
    p = plain_params();
    p.temperature = 1e-30f;
    s = make(&p, 5);
    {
        const float l3[5] = {1.0f, 0.0f, 1.0f, 0.5f, -3e38f};
        double e3[5] = {0.5, 0, 0.5, 0, 0};
        check_frequencies(s, l3, 5, e3, 2000);
    }
    mc_sampler_free(s);
}

/* Greedy over a vocabulary of many scan blocks and a tail past the last 16 (151,941
 * ids): the maximum in the first, a middle and the last block and in the tail, ties
 * across and within blocks (the lowest id wins), a block of -inf, NaN and +inf named
 * wherever they are. */
static void test_greedy_blocks(void) {
    const int32_t v = 151941;
    mc_sampler_params p = mc_sampler_default_params();
    mc_sampler *s;
    float *l = malloc((size_t)v * sizeof *l);
    int32_t tok = -1, i;
    const struct {
        int32_t at[2]; /* ids given the maximum (the second: a tie, or -1) */
        int32_t want;
    } cases[] = {{{5, -1}, 5},         {{70001, -1}, 70001}, {{151930, -1}, 151930},
                 {{151940, -1}, 151940}, {{90000, 3000}, 3000}, {{2050, 2049}, 2049},
                 {{151939, 151938}, 151938}, {{4096, 151937}, 4096}};
    if (!l) exit(2);
    p.temperature = 0.0f;
    s = make(&p, v);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        for (i = 0; i < v; i++) l[i] = (float)((uint32_t)i * 2654435761u % 1000003u) / 1000003.0f;
        for (i = 0; i < 2048; i++) l[i] = -INFINITY; /* the first block holds no candidate */
        l[cases[c].at[0]] = 7.5f;
        if (cases[c].at[1] >= 0) l[cases[c].at[1]] = 7.5f;
        CHECK_OK(mc_sampler_sample(s, l, &tok, NULL));
        CHECK_INT(tok, cases[c].want);
    }
    for (i = 0; i < v; i++) l[i] = -INFINITY;
    l[v - 1] = -3.0f; /* the only finite logit, in the tail */
    CHECK_OK(mc_sampler_sample(s, l, &tok, NULL));
    CHECK_INT(tok, v - 1);
    l[v - 1] = -INFINITY;
    CHECK_STATUS(mc_sampler_sample(s, l, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("every logit is -inf");
    l[77777] = NAN;
    CHECK_STATUS(mc_sampler_sample(s, l, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("token 77777 is NaN");
    l[77777] = 0.0f;
    l[151939] = INFINITY;
    CHECK_STATUS(mc_sampler_sample(s, l, &tok, NULL), MC_ERR_NUMERIC);
    CHECK_MSG("token 151939 is +inf");
    mc_sampler_free(s);
    free(l);
}

/* ---- the fast paths against the reference -------------------------------------------------- */

static void test_against_reference(void) {
    const int32_t v = 1000;
    float *logits = malloc((size_t)v * sizeof *logits);
    double *fast = malloc((size_t)v * sizeof *fast), *ref = malloc((size_t)v * sizeof *ref);
    const float temps[4] = {0.0f, 0.3f, 1.0f, 2.5f};
    const int32_t ks[5] = {0, 1, 5, 50, 2000};
    const float tps[4] = {1.0f, 0.9f, 0.5f, 0.05f};
    const float mps[3] = {0.0f, 0.01f, 0.2f};
    const int32_t hist[6] = {3, 17, 3, 999, 500, 17};
    mc_logit_bias lb[2] = {{10, 2.0f}, {11, -INFINITY}};
    int it, ti, ki, pi, mi, checked = 0, failed = 0;
    for (it = 0; it < 3; it++) {
        int32_t i;
        for (i = 0; i < v; i++) logits[i] = 3.0f * t_normal();
        if (it == 1) /* ties and infinities */
            for (i = 0; i < v; i += 7) logits[i] = i % 2 ? -INFINITY : 2.0f;
        for (ti = 0; ti < 4; ti++)
            for (ki = 0; ki < 5; ki++)
                for (pi = 0; pi < 4; pi++)
                    for (mi = 0; mi < 3; mi++) {
                        mc_sampler_params p = plain_params();
                        mc_sampler *s;
                        p.temperature = temps[ti];
                        p.top_k = ks[ki];
                        p.top_p = tps[pi];
                        p.min_p = mps[mi];
                        if (it == 2) {
                            p.repetition_penalty = 1.3f;
                            p.repetition_last_n = 4;
                            p.presence_penalty = 0.4f;
                            p.frequency_penalty = 0.2f;
                            p.logit_bias = lb;
                            p.n_logit_bias = 2;
                        }
                        s = make(&p, v);
                        CHECK_OK(mc_sampler_accept_prompt(s, hist, 3));
                        for (i = 3; i < 6; i++) CHECK_OK(mc_sampler_accept(s, hist[i]));
                        dense_dist(s, logits, v, fast);
                        ref_dist(&p, hist, 6, hist + 3, 3, logits, v, ref);
                        checked++;
                        if (!same_dist(fast, ref, v, 1e-6, "against reference")) {
                            failed++;
                            fprintf(stderr, "  T %g k %d top_p %g min_p %g pass %d\n",
                                    (double)p.temperature, (int)p.top_k, (double)p.top_p,
                                    (double)p.min_p, it);
                        }
                        mc_sampler_free(s);
                    }
    }
    CHECK_INT(failed, 0);
    CHECK_INT(checked, 3 * 4 * 5 * 4 * 3);
    free(logits);
    free(fast);
    free(ref);
}

/* More candidates than the selection's histogram threshold, large k, many ties, a flat
 * distribution and all-equal logits, against the reference. */
static void test_against_reference_large(void) {
    const int32_t v = 5000;
    float *logits = malloc((size_t)v * sizeof *logits);
    double *fast = malloc((size_t)v * sizeof *fast), *ref = malloc((size_t)v * sizeof *ref);
    const float temps[2] = {0.7f, 1.5f};
    const int32_t ks[5] = {0, 100, 300, 1000, 4999};
    const float tps[3] = {1.0f, 0.9f, 0.3f};
    const float mps[2] = {0.0f, 0.05f};
    int kind, ti, ki, pi, mi, failed = 0;
    for (kind = 0; kind < 5; kind++) {
        int32_t i;
        for (i = 0; i < v; i++) {
            float g = t_normal();
            logits[i] = kind == 0   ? 3.0f * g         /* spread */
                        : kind == 1 ? roundf(2.0f * g) /* many ties */
                        : kind == 2 ? 0.1f * g         /* nearly flat */
                        : kind == 3 ? 1.0f             /* all equal */
                                    : 1e-4f * g;       /* a tight cluster ... */
        }
        if (kind == 4) logits[7] = -50.0f; /* ... and one outlier: one histogram slice */
        for (ti = 0; ti < 2; ti++)
            for (ki = 0; ki < 5; ki++)
                for (pi = 0; pi < 3; pi++)
                    for (mi = 0; mi < 2; mi++) {
                        mc_sampler_params p = plain_params();
                        mc_sampler *s;
                        size_t n;
                        p.temperature = temps[ti];
                        p.top_k = ks[ki];
                        p.top_p = tps[pi];
                        p.min_p = mps[mi];
                        s = make(&p, v);
                        n = dense_dist(s, logits, v, fast);
                        ref_dist(&p, NULL, 0, NULL, 0, logits, v, ref);
                        if (!same_dist(fast, ref, v, 1e-6, "against reference (large)")) {
                            failed++;
                            fprintf(stderr, "  kind %d T %g k %d top_p %g min_p %g: %zu kept\n",
                                    kind, (double)p.temperature, (int)p.top_k, (double)p.top_p,
                                    (double)p.min_p, n);
                        }
                        if (kind == 3 && p.min_p == 0) { /* all equal: exact counts */
                            double live = p.top_k ? (double)p.top_k : (double)v;
                            CHECK_INT(n, (size_t)ceil((double)p.top_p * live));
                        }
                        mc_sampler_free(s);
                    }
    }
    CHECK_INT(failed, 0);
    free(logits);
    free(fast);
    free(ref);
}

/* ---- determinism, reset and resume --------------------------------------------------------- */

static void test_determinism(void) {
    const int32_t v = 300;
    const int steps = 500;
    float *logits = malloc((size_t)v * sizeof *logits);
    int32_t *a = malloc((size_t)steps * sizeof *a), *b = malloc((size_t)steps * sizeof *b);
    mc_sampler_params p = mc_sampler_default_params();
    mc_sampler *s1, *s2, *s3;
    uint64_t saved[4];
    int i, differ = 0;
    int32_t j, tok;
    p.seed = 77;
    p.top_k = 0;
    p.temperature = 1.5f;
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.1f;
    for (j = 0; j < v; j++) logits[j] = t_normal();
    s1 = make(&p, v);
    s2 = make(&p, v);
    for (i = 0; i < steps; i++) {
        CHECK_OK(mc_sampler_sample(s1, logits, &a[i], NULL));
        CHECK_OK(mc_sampler_sample(s2, logits, &b[i], NULL));
    }
    CHECK(memcmp(a, b, (size_t)steps * sizeof *a) == 0);
    /* reset replays the same sequence */
    mc_sampler_reset(s1);
    for (i = 0; i < steps; i++) {
        CHECK_OK(mc_sampler_sample(s1, logits, &tok, NULL));
        if (tok != a[i]) differ++;
    }
    CHECK_INT(differ, 0);
    /* another seed gives another sequence */
    p.seed = 78;
    s3 = make(&p, v);
    differ = 0;
    for (i = 0; i < steps; i++) {
        CHECK_OK(mc_sampler_sample(s3, logits, &tok, NULL));
        if (tok != a[i]) differ++;
    }
    CHECK(differ > steps / 2);
    mc_sampler_free(s3);
    /* resume: a fresh sampler given the history and the RNG state continues identically */
    p.seed = 77;
    mc_sampler_reset(s1);
    for (i = 0; i < steps / 2; i++) CHECK_OK(mc_sampler_sample(s1, logits, &tok, NULL));
    mc_sampler_get_rng_state(s1, saved);
    s3 = make(&p, v);
    for (i = 0; i < steps / 2; i++) CHECK_OK(mc_sampler_accept(s3, a[i]));
    CHECK_OK(mc_sampler_set_rng_state(s3, saved));
    differ = 0;
    for (i = steps / 2; i < steps; i++) {
        CHECK_OK(mc_sampler_sample(s3, logits, &tok, NULL));
        if (tok != a[i]) differ++;
    }
    CHECK_INT(differ, 0);
    mc_sampler_free(s1);
    mc_sampler_free(s2);
    mc_sampler_free(s3);
    free(logits);
    free(a);
    free(b);
}

/* A fixed seed gives a fixed sequence on every machine: a few known draws. */
static void test_known_sequence(void) {
    const float logits[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mc_sampler_params p = plain_params();
    mc_sampler *s;
    mc_rng r;
    int i;
    int32_t tok;
    p.seed = 42;
    s = make(&p, 4);
    mc_rng_seed(&r, 42);
    for (i = 0; i < 50; i++) {
        /* uniform over 4 equal tokens: the token is floor(4u) of the same draw */
        int32_t want = (int32_t)(mc_rng_uniform(&r) * 4.0);
        CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
        CHECK_INT(tok, want);
    }
    mc_sampler_free(s);
}

/* ---- logprob --------------------------------------------------------------------------------- */

static void test_logprob(void) {
    const float logits[5] = {1.0f, 2.0f, 0.5f, -INFINITY, 3.0f};
    mc_sampler_params p = plain_params();
    mc_logit_bias lb = {4, -10.0f};
    mc_sampler *s;
    double z = exp(1.0) + exp(2.0) + exp(0.5) + exp(3.0);
    int i;
    p.temperature = 0.5f;
    p.top_k = 2;
    p.repetition_penalty = 3.0f;
    p.logit_bias = &lb;
    p.n_logit_bias = 1;
    s = make(&p, 5);
    for (i = 0; i < 20; i++) {
        int32_t tok;
        float lp = 1;
        CHECK_OK(mc_sampler_sample(s, logits, &tok, &lp));
        /* the raw model distribution, whatever the chain did */
        CHECK_NEAR(lp, (double)logits[tok] - log(z), 1e-6);
        CHECK(tok != 3 && tok != 4);
    }
    mc_sampler_free(s);
}

/* The normaliser over a real-sized vocabulary (vectorised exp, blocked sums) against a
 * double-precision sum, with logits spread over [-10, 10], far below the maximum and -inf. */
static void test_logprob_large(void) {
    const int32_t v = 151936;
    float *logits = malloc((size_t)v * sizeof *logits);
    mc_sampler_params p = mc_sampler_default_params();
    mc_sampler *s;
    double z = 0, m = -INFINITY, worst = 0;
    uint64_t st = 12345;
    int32_t i;
    CHECK(logits != NULL);
    if (!logits) return;
    for (i = 0; i < v; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        logits[i] = (float)((double)(st >> 11) / 9007199254740992.0 * 20.0 - 10.0);
        if (i % 1000 == 7) logits[i] = -100.0f - (float)(i % 50);
        if (i % 5000 == 11) logits[i] = -INFINITY;
        if (logits[i] > m) m = logits[i];
    }
    for (i = 0; i < v; i++) z += exp((double)logits[i] - m);
    s = make(&p, v);
    for (i = 0; i < 50; i++) {
        int32_t tok;
        float lp = 1;
        CHECK_OK(mc_sampler_sample(s, logits, &tok, &lp));
        double ref = (double)logits[tok] - m - log(z), d = fabs((double)lp - ref);
        if (d > worst) worst = d;
    }
    printf("  logprob over %d logits: max |error| %.2e (tol 5e-6)\n", (int)v, worst);
    CHECK(worst <= 5e-6);
    mc_sampler_free(s);
    free(logits);
}

/* ---- the real vocabulary size ---------------------------------------------------------------- */

static void test_large_vocab(void) {
    const int32_t v = 151936;
    float *logits = malloc((size_t)v * sizeof *logits);
    double *fast = malloc((size_t)v * sizeof *fast), *ref = malloc((size_t)v * sizeof *ref);
    const int32_t prompt[5] = {100, 200, 300, 100, 151935};
    mc_sampler_params configs[4];
    int c, i;
    int32_t j, tok;
    configs[0] = mc_sampler_default_params();
    configs[1] = plain_params();
    configs[1].top_p = 0.9f;
    configs[2] = plain_params();
    configs[2].min_p = 0.1f;
    configs[2].repetition_penalty = 1.2f;
    configs[3] = plain_params();
    configs[3].temperature = 0.7f;
    configs[3].top_k = 20;
    configs[3].top_p = 0.8f;
    configs[3].repetition_penalty = 1.05f;
    for (j = 0; j < v; j++) logits[j] = 2.5f * t_normal();
    for (c = 0; c < 4; c++) {
        mc_sampler *s = make(&configs[c], v);
        double t0, dt;
        CHECK_OK(mc_sampler_accept_prompt(s, prompt, 5));
        dense_dist(s, logits, v, fast);
        ref_dist(&configs[c], prompt, 5, NULL, 0, logits, v, ref);
        CHECK(same_dist(fast, ref, v, 1e-6, "large vocabulary"));
        t0 = mc_time_now();
        for (i = 0; i < 50; i++) CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
        dt = (mc_time_now() - t0) / 50;
        printf("vocab %d, config %d: %.1f us per sample\n", (int)v, c, dt * 1e6);
        mc_sampler_free(s);
    }
    free(logits);
    free(fast);
    free(ref);
}

/* ---- allocation failures --------------------------------------------------------------------- */

static void test_alloc_failures(void) {
    mc_sampler_params p = mc_sampler_default_params();
    mc_logit_bias lb = {1, 1.0f};
    mc_sampler *s = NULL;
    size_t n, failures = 0;
    mc_status st;
    const float logits[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int32_t big[300], tok;
    int i;
    p.repetition_penalty = 1.1f;
    p.presence_penalty = 0.1f;
    p.logit_bias = &lb;
    p.n_logit_bias = 1;
    for (n = 1; n < 100; n++) {
        mc_debug_fail_alloc_after(n);
        st = mc_sampler_create(&p, 8, &s);
        mc_debug_fail_alloc_after(0);
        if (st == MC_OK) break;
        CHECK_STATUS(st, MC_ERR_OOM);
        CHECK(s == NULL);
        CHECK_MSG("out of memory");
        failures++;
    }
    CHECK_INT(failures, 7); /* sampler, bias, work, cand, stamp, counts, ids */
    /* the history grows on demand; a failed growth records nothing */
    for (i = 0; i < 300; i++) big[i] = i % 8;
    mc_debug_fail_alloc_after(1);
    CHECK_STATUS(mc_sampler_accept_prompt(s, big, 300), MC_ERR_OOM);
    mc_debug_fail_alloc_after(0);
    CHECK_INT(mc_sampler_history_len(s), 0);
    CHECK_OK(mc_sampler_accept_prompt(s, big, 256)); /* fills the first 256 entries */
    mc_debug_fail_alloc_after(1);
    CHECK_STATUS(mc_sampler_accept(s, 1), MC_ERR_OOM);
    mc_debug_fail_alloc_after(1);
    CHECK_STATUS(mc_sampler_sample(s, logits, &tok, NULL), MC_ERR_OOM);
    mc_debug_fail_alloc_after(0);
    CHECK_INT(mc_sampler_history_len(s), 256);
    CHECK_OK(mc_sampler_sample(s, logits, &tok, NULL));
    CHECK_INT(mc_sampler_history_len(s), 257);
    mc_sampler_free(s);
}

int main(void) {
    RUN(test_defaults);
    RUN(test_invalid_params);
    RUN(test_null_and_range_args);
    RUN(test_greedy);
    RUN(test_temperature);
    RUN(test_top_k);
    RUN(test_top_p);
    RUN(test_top_p_wide);
    RUN(test_min_p);
    RUN(test_logit_bias);
    RUN(test_repetition_penalty);
    RUN(test_repetition_window);
    RUN(test_presence_frequency);
    RUN(test_chain_order);
    RUN(test_infinities);
    RUN(test_greedy_blocks);
    RUN(test_against_reference);
    RUN(test_against_reference_large);
    RUN(test_determinism);
    RUN(test_known_sequence);
    RUN(test_logprob);
    RUN(test_logprob_large);
    RUN(test_large_vocab);
    RUN(test_alloc_failures);
    return t_summary();
}
