/* test_generate.c - contexts and generation: decode logits equal full-recompute logits,
 * batched generation equals single runs, stop conditions, parameter errors, and stop
 * strings on decoded text (with the real tokenizer). */
#include <stdio.h>

#include "gen_test_util.h"
#include "model/model.h"
#include "test.h"

static mc_model *load(const char *name) {
    mc_model *m = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", name);
    CHECK_OK(mc_model_load(t_src(dir), NULL, &m));
    return m;
}

/* Greedy continuation of prompt through decode steps: the logits of every step equal
 * those of evaluating the whole sequence again. */
static void test_decode_equals_eval(void) {
    mc_model *m = load("tiny_tied_f32");
    mc_context *ctx = NULL;
    int32_t seq[40];
    float logits[512], *full = NULL;
    int i, n = 10, V = 512;
    if (!m) return;
    for (i = 0; i < n; i++) seq[i] = (i * 53 + 7) % V;
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    full = mc_malloc(40 * 512 * sizeof *full);
    CHECK_OK(mc_context_decode(ctx, 0, seq, (size_t)n, logits));
    for (; n < 40; n++) {
        int best = 0, k;
        CHECK_OK(mc_model_eval(m, seq, (size_t)n, full, NULL));
        CHECK_REL_L2(logits, full + (size_t)(n - 1) * V, (size_t)V, 1e-5);
        for (k = 1; k < V; k++)
            if (logits[k] > logits[best]) best = k;
        seq[n] = best;
        CHECK_OK(mc_context_decode(ctx, 0, &seq[n], 1, logits));
    }
    CHECK_INT(mc_context_n_past(ctx, 0), 40);
    mc_free(full);
    mc_context_free(ctx);
    mc_model_free(m);
}

/* The batched step (several sequences, one pass) gives each sequence the logits it gets
 * alone. */
static void test_batched_step(void) {
    mc_model *m = load("qwen2_bf16_sharded");
    mc_fwd *f = NULL;
    int32_t p0[5] = {1, 2, 3, 4, 5}, p1[9] = {9, 8, 7, 6, 5, 4, 3, 2, 1}, step[2] = {11, 12};
    int seqs[2] = {1, 0};
    float *lb, *l0, *l1, *full;
    int32_t cat[10];
    if (!m) return;
    lb = mc_malloc(2 * 1000 * sizeof *lb);
    full = mc_malloc(10 * 1000 * sizeof *full);
    CHECK_OK(mc_fwd_create(m, 2, 32, 16, &f));
    CHECK_OK(mc_fwd_run(f, 0, p0, 5, MC_LOGITS_NONE, NULL));
    CHECK_OK(mc_fwd_run(f, 1, p1, 9, MC_LOGITS_NONE, NULL));
    /* row 0 is sequence 1 (token 11), row 1 is sequence 0 (token 12) */
    CHECK_OK(mc_fwd_step(f, seqs, step, 2, lb));
    l1 = lb;
    l0 = lb + 1000;
    memcpy(cat, p0, sizeof p0);
    cat[5] = 12;
    CHECK_OK(mc_model_eval(m, cat, 6, full, NULL));
    CHECK_REL_L2(l0, full + 5 * 1000, 1000, 1e-5);
    memcpy(cat, p1, sizeof p1);
    cat[9] = 11;
    CHECK_OK(mc_model_eval(m, cat, 10, full, NULL));
    CHECK_REL_L2(l1, full + 9 * 1000, 1000, 1e-5);
    {   /* the same step without the backend's attention_rows (a copy and a call a row):
         * the same logits, bit for bit */
        void (*ar)(mc_backend *, void *, const void *, const void *, const void *,
                   const mc_att_row *, int, int, int, int) = m->be->attention_rows;
        float *lb2 = mc_malloc(2 * 1000 * sizeof *lb2);
        CHECK(ar != NULL && lb2 != NULL);
        f->n_past[0]--;
        f->n_past[1]--;
        m->be->attention_rows = NULL;
        CHECK_OK(mc_fwd_step(f, seqs, step, 2, lb2));
        m->be->attention_rows = ar;
        CHECK(lb2 && memcmp(lb, lb2, 2 * 1000 * sizeof *lb) == 0);
        mc_free(lb2);
    }
    /* a sequence twice, an unknown sequence, a full context */
    seqs[1] = 1;
    CHECK_STATUS(mc_fwd_step(f, seqs, step, 2, lb), MC_ERR_INVALID_ARG);
    seqs[0] = 5;
    CHECK_STATUS(mc_fwd_step(f, seqs, step, 1, lb), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_run(f, 7, p0, 1, MC_LOGITS_NONE, NULL), MC_ERR_INVALID_ARG);
    mc_fwd_free(f);
    mc_free(lb);
    mc_free(full);
    mc_model_free(m);
}

static mc_generate_params greedy(int max_tokens) {
    mc_generate_params p = mc_generate_default_params();
    p.sampler.temperature = 0.0f;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

/* Batch generation with greedy sampling equals running each prompt alone. */
static void test_batch_equals_single(void) {
    mc_model *m = load("qwen2_bf16_sharded");
    mc_context *ctx = NULL, *one = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t a[3] = {5, 6, 7}, b[8] = {1, 2, 3, 4, 5, 6, 7, 8}, c[1] = {42};
    const int32_t *prompts[3] = {a, b, c};
    size_t lens[3] = {3, 8, 1};
    mc_generation res[3], alone;
    mc_generate_params p = greedy(12);
    int i;
    if (!m) return;
    cp.n_seq = 3;
    cp.n_ctx = 64;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    CHECK_OK(mc_context_create(m, NULL, &one));
    CHECK_OK(mc_generate_batch(ctx, prompts, lens, 3, &p, res));
    for (i = 0; i < 3; i++) {
        CHECK_OK(mc_generate(one, prompts[i], lens[i], &p, &alone));
        CHECK_INT(res[i].n_tokens, 12);
        CHECK_INT(alone.n_tokens, res[i].n_tokens);
        CHECK(res[i].tokens && alone.tokens &&
              memcmp(res[i].tokens, alone.tokens, 12 * sizeof(int32_t)) == 0);
        CHECK_INT(res[i].stop_reason, MC_STOP_MAX_TOKENS);
        CHECK_INT(res[i].prompt_tokens, lens[i]);
        mc_generation_clear(&alone);
        mc_generation_clear(&res[i]);
    }
    CHECK_STATUS(mc_generate_batch(ctx, prompts, lens, 4, &p, res), MC_ERR_INVALID_ARG);
    mc_context_free(ctx);
    mc_context_free(one);
    mc_model_free(m);
}

/* Greedy generation with the backend's argmax (the default for plain greedy) gives the
 * same tokens as the sampler reading every step's logits (forced by a token callback),
 * alone and for a batch of more sequences than a step keeps logits rows for. */
static void test_greedy_paths(void) {
    enum { NS = 10, NT = 9 };
    mc_model *m = load("qwen2_bf16_sharded");
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t prompts_buf[NS][3];
    const int32_t *prompts[NS];
    size_t lens[NS];
    mc_generation dev[NS], host[NS];
    mc_generate_params p = greedy(NT);
    int i;
    if (!m) return;
    CHECK(m->be->argmax_rows != NULL);
    for (i = 0; i < NS; i++) {
        prompts_buf[i][0] = 3 + i;
        prompts_buf[i][1] = 40 + 7 * i;
        prompts_buf[i][2] = 11 * i + 1;
        prompts[i] = prompts_buf[i];
        lens[i] = 3;
    }
    cp.n_seq = NS;
    cp.n_ctx = 32;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    CHECK_INT(t_generate_both(ctx, prompts, lens, NS, p, dev, host), NS * NT);
    for (i = 0; i < NS; i++) {
        CHECK_INT(dev[i].n_tokens, NT);
        CHECK_INT(host[i].n_tokens, NT);
        CHECK(dev[i].tokens && host[i].tokens &&
              memcmp(dev[i].tokens, host[i].tokens, NT * sizeof(int32_t)) == 0);
        CHECK_INT(dev[i].decode_steps, host[i].decode_steps);
        mc_generation_clear(&dev[i]);
        mc_generation_clear(&host[i]);
    }
    {   /* one step's argmax equals the argmax of the same step's logits; no op: refused */
        mc_status (*am)(mc_backend *, int32_t *, const void *, int, int) = m->be->argmax_rows;
        const int V = m->cfg.vocab_size, seq0 = 0;
        mc_fwd *f = NULL, *g = NULL;
        int32_t id = 5, nx = -1, want = -2;
        float *logits = malloc((size_t)V * sizeof(float));
        CHECK_OK(mc_fwd_create(m, 1, 8, 4, &f));
        CHECK_OK(mc_fwd_create(m, 1, 8, 4, &g));
        CHECK_OK(mc_fwd_step_argmax(f, &seq0, &id, 1, &nx));
        CHECK(logits != NULL);
        if (logits) {
            CHECK_OK(mc_fwd_step(g, &seq0, &id, 1, logits));
            CHECK_OK(mc_argmax_row(logits, V, 0, &want));
        }
        CHECK_INT(nx, want);
        m->be->argmax_rows = NULL;
        CHECK_STATUS(mc_fwd_step_argmax(f, &seq0, &id, 1, &nx), MC_ERR_UNSUPPORTED);
        CHECK_MSG("argmax_rows");
        /* plain greedy without the op: the sampler's path */
        CHECK_OK(mc_generate(ctx, prompts[0], lens[0], &p, &dev[0]));
        CHECK_INT(dev[0].n_tokens, NT);
        mc_generation_clear(&dev[0]);
        m->be->argmax_rows = am;
        mc_fwd_free(f);
        mc_fwd_free(g);
        free(logits);
    }
    mc_context_free(ctx);
    mc_model_free(m);
}

static int stop_after_3(int seq, const char *text, size_t len, int32_t token, float lp, void *u) {
    int *count = u;
    (void)seq;
    (void)text;
    (void)len;
    (void)lp;
    if (token >= 0) ++*count;
    CHECK(lp <= 0.0f);
    return *count >= 3;
}

static void test_stop_conditions(void) {
    mc_model *m = load("tiny_tied_f32");
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t prompt[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, eos;
    mc_generate_params p = greedy(100);
    mc_generation g;
    int count = 0;
    if (!m) return;
    cp.n_ctx = 16;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    /* the context fills: 16 - 10 + 1 tokens (the last needs no position) */
    CHECK_OK(mc_generate(ctx, prompt, 10, &p, &g));
    CHECK_INT(g.stop_reason, MC_STOP_CONTEXT_FULL);
    CHECK_INT(g.n_tokens, 7);
    CHECK(g.text == NULL);
    eos = g.tokens[0];
    mc_generation_clear(&g);
    /* EOS: the first greedy token is made the end of sequence */
    p.ignore_eos = 0;
    p.eos_ids = &eos;
    p.n_eos = 1;
    CHECK_OK(mc_generate(ctx, prompt, 10, &p, &g));
    CHECK_INT(g.stop_reason, MC_STOP_EOS);
    CHECK_INT(g.n_tokens, 0);
    mc_generation_clear(&g);
    /* ignore_eos: exactly max_tokens */
    p.ignore_eos = 1;
    p.max_tokens = 4;
    CHECK_OK(mc_generate(ctx, prompt, 10, &p, &g));
    CHECK_INT(g.stop_reason, MC_STOP_MAX_TOKENS);
    CHECK_INT(g.n_tokens, 4);
    CHECK_INT(g.decode_steps, 3);
    mc_generation_clear(&g);
    /* the callback stops */
    p.max_tokens = 5;
    p.on_token = stop_after_3;
    p.user = &count;
    CHECK_OK(mc_generate(ctx, prompt, 10, &p, &g));
    CHECK_INT(g.stop_reason, MC_STOP_CALLBACK);
    CHECK_INT(g.n_tokens, 3);
    mc_generation_clear(&g);
    mc_generation_clear(NULL);
    mc_context_free(ctx);
    mc_model_free(m);
}

static void test_errors(void) {
    mc_model *m = load("tiny_tied_f32");
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t prompt[20] = {0}, bad[2] = {1, 9999};
    mc_generate_params p = greedy(4);
    const char *stop = "x";
    mc_generation g;
    if (!m) return;
    cp.n_ctx = 20;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    CHECK_INT(mc_context_n_ctx(ctx), 20);
    CHECK_STATUS(mc_generate(ctx, prompt, 20, &p, &g), MC_ERR_CONTEXT_FULL);
    CHECK_STATUS(mc_generate(ctx, prompt, 0, &p, &g), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_generate(ctx, bad, 2, &p, &g), MC_ERR_TOKEN_ID);
    p.max_tokens = 0;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, &g), MC_ERR_INVALID_ARG);
    p.max_tokens = 4;
    p.stop = &stop;
    p.n_stop = 1;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, &g), MC_ERR_INVALID_ARG);
    p.n_stop = 0;
    p.sampler.temperature = -1.0f;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, &g), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_decode(ctx, 0, prompt, 21, NULL), MC_ERR_CONTEXT_FULL);
    CHECK_STATUS(mc_context_decode(ctx, 3, prompt, 1, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_decode(ctx, 0, bad, 2, NULL), MC_ERR_TOKEN_ID);
    CHECK_STATUS(mc_context_decode(ctx, 0, prompt, 0, NULL), MC_ERR_INVALID_ARG);
    cp.n_ctx = -1;
    {
        mc_context *c2 = NULL;
        CHECK_STATUS(mc_context_create(m, &cp, &c2), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_context_create(NULL, NULL, &c2), MC_ERR_INVALID_ARG);
    }
    CHECK_STATUS(mc_context_set_adapter(ctx, NULL, -1.0f), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_context_set_adapter(ctx, NULL, 1.0f));
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_STRING), "stop_string") == 0);
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_NONE), "none") == 0);
    mc_context_reset(ctx, -1);
    CHECK_INT(mc_context_n_past(ctx, 0), 0);
    CHECK_INT(mc_context_n_past(ctx, 9), 0);
    mc_context_free(ctx);
    mc_context_free(NULL);
    mc_model_free(m);
}

/* Same seed, same tokens; sampled tokens are valid ids. */
static void test_seeded_sampling(void) {
    mc_model *m = load("tiny_tied_f32");
    mc_context *ctx = NULL;
    int32_t prompt[3] = {3, 4, 5};
    mc_generate_params p = mc_generate_default_params();
    mc_generation a, b;
    size_t i;
    if (!m) return;
    p.max_tokens = 16;
    p.ignore_eos = 1;
    p.sampler.temperature = 1.0f;
    p.sampler.seed = 7;
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    CHECK_OK(mc_generate(ctx, prompt, 3, &p, &a));
    CHECK_OK(mc_generate(ctx, prompt, 3, &p, &b));
    CHECK_INT(a.n_tokens, 16);
    CHECK(b.n_tokens == a.n_tokens && memcmp(a.tokens, b.tokens, 16 * sizeof(int32_t)) == 0);
    for (i = 0; i < a.n_tokens; i++) CHECK(a.tokens[i] >= 0 && a.tokens[i] < 512);
    mc_generation_clear(&a);
    mc_generation_clear(&b);
    mc_context_free(ctx);
    mc_model_free(m);
}

/* Stop strings on decoded text, with the real tokenizer over the tiny model's ids. */
static void test_stop_string(void) {
    const char *dir = getenv("MC_TOKENIZER_DIR");
    char path[1024];
    mc_model *m;
    mc_tokenizer *tok = NULL;
    mc_context *ctx = NULL;
    int32_t prompt[4] = {40, 41, 42, 43};
    mc_generate_params p = greedy(40);
    mc_generation g, h;
    const char *stops[1];
    char stop[8];
    if (!dir || !*dir) {
        snprintf(path, sizeof path, "%s/.cache/metal-candle/tokenizer-qwen3-3.7.2", getenv("HOME"));
        dir = path;
    }
    if (mc_tokenizer_load(dir, &tok) != MC_OK) {
        if (getenv("MC_ALLOW_NO_TOKENIZER")) return;
        fprintf(stderr, "no tokenizer at %s (run scripts/fetch_tokenizer.sh)\n", dir);
        CHECK(!"tokenizer missing");
        return;
    }
    m = load("tiny_tied_f32");
    if (!m) {
        mc_tokenizer_free(tok);
        return;
    }
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    p.tokenizer = tok;
    CHECK_OK(mc_generate(ctx, prompt, 4, &p, &g));
    CHECK(g.text != NULL && g.text_len > 12);
    if (g.text && g.text_len > 12) {
        /* stop at a 3-byte ASCII string from the second half of the text */
        size_t at = g.text_len / 2;
        while (at + 3 < g.text_len && ((unsigned char)g.text[at - 1] >= 0x80 ||
               (unsigned char)g.text[at] >= 0x80 || (unsigned char)g.text[at + 1] >= 0x80 ||
               (unsigned char)g.text[at + 2] >= 0x80))
            at++;
        CHECK(at + 3 < g.text_len);
        memcpy(stop, g.text + at, 3);
        stop[3] = '\0';
        stops[0] = stop;
        p.stop = stops;
        p.n_stop = 1;
        CHECK_OK(mc_generate(ctx, prompt, 4, &p, &h));
        CHECK_INT(h.stop_reason, MC_STOP_STRING);
        CHECK(h.text_len <= at && strncmp(g.text, h.text ? h.text : "", h.text_len) == 0);
        CHECK(strstr(h.text ? h.text : "", stop) == NULL);
        mc_generation_clear(&h);
    }
    mc_generation_clear(&g);
    mc_context_free(ctx);
    mc_model_free(m);
    mc_tokenizer_free(tok);
}

/* Greedy generation a step ahead (argmax_queue) stops, counts and leaves n_past as the
 * loop one step at a time; the ops' and the forward's refusals. */
static void test_step_ahead(void) {
    mc_model *m = load("tiny_tied_f32");
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    /* its greedy tokens: 136 136 136 408 ..., so EOS 408 drops a step queued ahead */
    const int32_t prompt[10] = {5, 17, 200, 3, 99, 42, 7, 1, 60, 8};
    if (!m) return;
    cp.n_ctx = 16;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    CHECK_INT(t_ahead_stops(ctx, prompt, 10), 6);
    {   /* the CPU computes each op before returning: greedy generation runs a step at a time
         * there (no step for a token that ends it) */
        mc_generate_params p = greedy(4);
        mc_generation g;
        CHECK(!m->be->async);
        CHECK_OK(mc_generate(ctx, prompt, 10, &p, &g));
        CHECK_INT((int)g.n_tokens, 4);
        CHECK_INT(g.decode_steps, 3);
        mc_generation_clear(&g);
    }
    {   /* the ops: results in queue order, failures at the wait, refusals */
        mc_backend *be = m->be;
        float x[2 * 5] = {1, 3, 3, 0, -1, 0, 0, 0, 0, 7}, bad[5] = {1, NAN, 2, INFINITY, 0};
        int32_t ids[9] = {-1, -1}, out[2] = {-1, -1}, pos[3], want;
        char msg[256];
        CHECK_STATUS(be->argmax_queue(be, ids, x, 0, 5), MC_ERR_INVALID_ARG);
        CHECK_STATUS(be->argmax_queue(be, ids, x, MC_ARGMAX_QUEUE_ROWS + 1, 5), MC_ERR_INVALID_ARG);
        CHECK_MSG("1 to 8 rows");
        CHECK_STATUS(be->argmax_wait(be, out, 1), MC_ERR_INVALID_ARG);
        CHECK_MSG("no argmax is queued");
        CHECK_OK(be->argmax_queue(be, ids, x, 2, 5));
        CHECK_INT(ids[0], 1);
        CHECK_INT(ids[1], 4);
        CHECK_OK(be->argmax_queue(be, ids, bad, 1, 5));
        CHECK_INT(ids[0], 0);
        CHECK_STATUS(be->argmax_queue(be, ids, x, 1, 5), MC_ERR_INVALID_ARG);
        CHECK_MSG("two argmaxes queued");
        CHECK_OK(be->argmax_wait(be, out, 2));
        CHECK_INT(out[0], 1);
        CHECK_INT(out[1], 4);
        CHECK_STATUS(mc_argmax_row(bad, 5, 0, &want), MC_ERR_NUMERIC);
        snprintf(msg, sizeof msg, "%s", mc_last_error());
        CHECK_STATUS(be->argmax_wait(be, out, 1), MC_ERR_NUMERIC);
        CHECK(strcmp(msg, mc_last_error()) == 0);
        CHECK_OK(be->argmax_queue(be, ids, x, 1, 5));
        CHECK_STATUS(be->argmax_wait(be, out, 2), MC_ERR_INVALID_ARG);
        CHECK_MSG("2 rows asked, 1 queued");
        be->fill_positions(be, pos, 7, 3);
        CHECK(pos[0] == 7 && pos[1] == 8 && pos[2] == 9);
    }
    {   /* the forward's steps: refusals, and a step queued from a host token then one from
         * the device's argmax */
        mc_fwd *f = ctx->fwd;
        mc_backend *be = m->be;
        mc_status (*q)(mc_backend *, int32_t *, const void *, int, int) = be->argmax_queue;
        const int32_t id = 5;
        int32_t a = -1, b = -1;
        mc_context_reset(ctx, 0);
        CHECK_STATUS(mc_fwd_step_queue(f, 1, &id), MC_ERR_INVALID_ARG);
        CHECK_OK(mc_fwd_step_queue(f, 0, &id));
        CHECK_OK(mc_fwd_step_queue(f, 0, NULL));
        CHECK_INT(f->n_past[0], 2);
        CHECK_OK(mc_fwd_step_wait(f, &a));
        CHECK_OK(mc_fwd_step_wait(f, &b));
        mc_fwd_step_drop(f, 0);
        mc_fwd_step_drop(f, 5);
        CHECK_INT(f->n_past[0], 1);
        {   /* the same two steps one at a time */
            int32_t a1 = -1, b1 = -1;
            const int seq0 = 0;
            mc_context_reset(ctx, 0);
            CHECK_OK(mc_fwd_step_argmax(f, &seq0, &id, 1, &a1));
            CHECK_OK(mc_fwd_step_argmax(f, &seq0, &a1, 1, &b1));
            CHECK_INT(a, a1);
            CHECK_INT(b, b1);
        }
        f->n_past[0] = f->n_ctx;
        CHECK_STATUS(mc_fwd_step_queue(f, 0, &id), MC_ERR_CONTEXT_FULL);
        mc_context_reset(ctx, 0);
        be->argmax_queue = NULL;
        CHECK_STATUS(mc_fwd_step_queue(f, 0, &id), MC_ERR_UNSUPPORTED);
        CHECK_MSG("argmax_queue");
        be->argmax_queue = q;
        {
            mc_status (*w)(mc_backend *, int32_t *, int) = be->argmax_wait;
            be->argmax_wait = NULL;
            CHECK_STATUS(mc_fwd_step_wait(f, &a), MC_ERR_UNSUPPORTED);
            be->argmax_wait = w;
        }
    }
    mc_context_free(ctx);
    mc_model_free(m);
}

int main(void) {
    RUN(test_decode_equals_eval);
    RUN(test_batched_step);
    RUN(test_batch_equals_single);
    RUN(test_greedy_paths);
    RUN(test_stop_conditions);
    RUN(test_errors);
    RUN(test_seeded_sampling);
    RUN(test_stop_string);
    RUN(test_step_ahead);
    return t_summary();
}
