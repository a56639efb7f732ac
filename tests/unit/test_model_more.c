/* test_model_more.c - the edges of the forward state, contexts, adapters and generation:
 * argument and capacity errors, cache truncation, chunked prefill, LoRA adapters applied
 * unmerged (no effect when fresh, the same logits through eval and a context, rejected on
 * another model), generation text details (padded-vocabulary ids, text held back for a
 * stop string, tokens longer than the stack buffer), and allocation failures. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gen/gen.h"
#include "io/io.h"
#include "lora/lora.h"
#include "test.h"
#include "train/dataset.h"

enum { V = 512 }; /* tiny_tied_f32: 2 layers, D 64, 4 heads of 16, 2 kv heads, F 128 */

static mc_model *load_tiny(void) {
    mc_model *m = NULL;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    return m;
}

/* The synthetic byte-level tokenizer (472 ids: the tiny model's 40 last ids are padding). */
static mc_tokenizer *load_tokenizer(void) {
    mc_tokenizer *tok = NULL;
    CHECK_OK(mc_tokenizer_load(t_src("tests/fixtures/tokenizer/synthetic/gpt2_like.json"), &tok));
    return tok;
}

static void fill_ids(int32_t *ids, int n, int mul) {
    int i;
    for (i = 0; i < n; i++) ids[i] = (i * mul + 3) % V;
}

/* ---- forward state ---- */

static void test_fwd_errors(void) {
    mc_model *m = load_tiny();
    mc_fwd *f = NULL;
    int32_t ids[8], bad = -1;
    int seqs[3] = {0, 1, 2};
    float logits[2 * V];
    if (!m) return;
    fill_ids(ids, 8, 7);
    CHECK_STATUS(mc_fwd_create(m, 0, 8, 1, &f), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_create(m, 1, 0, 1, &f), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_create(m, 1, 8, 0, &f), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_create(m, 1, 8, 9, &f), MC_ERR_INVALID_ARG); /* batch beyond context */
    CHECK_STATUS(mc_fwd_create(m, INT_MAX, INT_MAX, 1, &f), MC_ERR_INVALID_ARG);
    CHECK_MSG("too large");
    CHECK(f == NULL);
    CHECK(mc_fwd_bytes(m, INT_MAX, INT_MAX, 1) == UINT64_MAX);
    CHECK_OK(mc_fwd_create(m, 2, 4, 2, &f));
    if (!f) {
        mc_model_free(m);
        return;
    }
    CHECK_STATUS(mc_fwd_run(f, 0, ids, 0, MC_LOGITS_LAST, logits), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_run(f, 0, ids, 3, MC_LOGITS_LAST, logits), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_run(f, -1, ids, 1, MC_LOGITS_LAST, logits), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_run(f, 0, &bad, 1, MC_LOGITS_LAST, logits), MC_ERR_TOKEN_ID);
    CHECK_INT(f->n_past[0], 0); /* nothing appended */
    CHECK_OK(mc_fwd_run(f, 0, ids, 2, MC_LOGITS_NONE, NULL));
    CHECK_OK(mc_fwd_run(f, 0, ids + 2, 2, MC_LOGITS_LAST, NULL)); /* computed, not copied */
    CHECK_STATUS(mc_fwd_run(f, 0, ids, 1, MC_LOGITS_LAST, logits), MC_ERR_CONTEXT_FULL);
    CHECK_MSG("context full");
    CHECK_STATUS(mc_fwd_step(f, seqs, ids, 0, logits), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_step(f, seqs, ids, 3, logits), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fwd_step(f, seqs, ids, 2, logits), MC_ERR_CONTEXT_FULL); /* seq 0 is full */
    seqs[0] = 1;
    CHECK_STATUS(mc_fwd_step(f, seqs, &bad, 1, logits), MC_ERR_TOKEN_ID);
    CHECK_INT(f->n_past[1], 0);
    mc_fwd_free(f);
    mc_model_free(m);
}

/* A backend's alloc_host / free_host, counting the live buffers. */
static int host_live;
static void *count_alloc_host(mc_backend *be, size_t bytes) {
    (void)be;
    host_live++;
    return mc_malloc(bytes);
}
static void count_free_host(mc_backend *be, void *p) {
    (void)be;
    host_live--;
    mc_free(p);
}

/* Logits left readable by calls with logits_host == NULL (mc_fwd_logits): those of the
 * last call, the same as copied ones, in plain host memory or (pass 1) in the backend's
 * alloc_host memory; none after a call without logits or with more than
 * MC_FWD_VIEW_ROWS rows. */
static void test_fwd_logits_view(void) {
    mc_model *m = load_tiny();
    mc_fwd *f = NULL, *g = NULL;
    int32_t ids[12];
    int seqs[2] = {1, 0};
    float want[2 * V];
    if (!m) return;
    fill_ids(ids, 12, 5);
    for (int pass = 0; pass < 2; pass++) {
        m->be->alloc_host = pass ? count_alloc_host : NULL;
        m->be->free_host = pass ? count_free_host : NULL;
        CHECK_OK(mc_fwd_create(m, 2, 16, 12, &f));
        CHECK_OK(mc_fwd_create(m, 2, 16, 12, &g));
        if (!f || !g) break;
        CHECK_INT(host_live, 2 * pass);
        CHECK(mc_fwd_logits(f) == NULL);
        CHECK_OK(mc_fwd_run(f, 0, ids, 10, MC_LOGITS_ALL, NULL)); /* 10 rows: none kept */
        CHECK(mc_fwd_logits(f) == NULL);
        CHECK_OK(mc_fwd_run(g, 0, ids, 10, MC_LOGITS_NONE, NULL));
        CHECK_OK(mc_fwd_run(f, 1, ids, 1, MC_LOGITS_LAST, NULL));
        CHECK_OK(mc_fwd_run(g, 1, ids, 1, MC_LOGITS_LAST, want));
        CHECK(mc_fwd_logits(f) != NULL && memcmp(mc_fwd_logits(f), want, V * sizeof(float)) == 0);
        CHECK_OK(mc_fwd_step(f, seqs, ids + 10, 2, NULL));
        CHECK_OK(mc_fwd_step(g, seqs, ids + 10, 2, want));
        CHECK(mc_fwd_logits(f) != NULL &&
              memcmp(mc_fwd_logits(f), want, 2 * V * sizeof(float)) == 0);
        CHECK_OK(mc_fwd_run(f, 0, ids, 1, MC_LOGITS_NONE, NULL));
        CHECK(mc_fwd_logits(f) == NULL);
        mc_fwd_free(f);
        mc_fwd_free(g);
        f = g = NULL;
        CHECK_INT(host_live, 0);
    }
    mc_fwd_free(f);
    mc_fwd_free(g);
    m->be->alloc_host = NULL;
    m->be->free_host = NULL;
    mc_model_free(m);
}

/* Truncating a sequence's cache and running again gives the logits of a fresh run. */
static void test_truncate(void) {
    mc_model *m = load_tiny();
    mc_fwd *f = NULL;
    int32_t ids[12], other[4] = {100, 200, 300, 400};
    float fresh[V], again[V];
    if (!m) return;
    fill_ids(ids, 12, 11);
    CHECK_OK(mc_fwd_create(m, 1, 16, 16, &f));
    if (!f) {
        mc_model_free(m);
        return;
    }
    CHECK_OK(mc_fwd_run(f, 0, ids, 12, MC_LOGITS_LAST, fresh));
    mc_fwd_truncate(f, 0, 8);
    CHECK_INT(f->n_past[0], 8);
    CHECK_OK(mc_fwd_run(f, 0, other, 4, MC_LOGITS_LAST, again)); /* overwrites 8..11 */
    mc_fwd_truncate(f, 0, 8);
    CHECK_OK(mc_fwd_run(f, 0, ids + 8, 4, MC_LOGITS_LAST, again));
    CHECK_REL_L2(again, fresh, V, 1e-6);
    /* out-of-range requests are ignored */
    mc_fwd_truncate(f, 0, 13);
    mc_fwd_truncate(f, 0, -1);
    mc_fwd_truncate(f, 3, 0);
    CHECK_INT(f->n_past[0], 12);
    mc_fwd_free(f);
    mc_model_free(m);
}

static void test_eval_edges(void) {
    mc_model *m = load_tiny();
    int32_t ids[3] = {1, 2, 3};
    float lg[3] = {0.0f, 1.0f, 2.0f};
    double loss = -1;
    if (!m) return;
    /* refused before any id is read */
    CHECK_STATUS(mc_model_eval(m, ids, (size_t)INT32_MAX, NULL, &loss), MC_ERR_INVALID_ARG);
    CHECK_MSG("too long");
    CHECK_STATUS(mc_model_eval(m, NULL, 3, NULL, &loss), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_model_eval(m, ids, 3, NULL, NULL)); /* no loss wanted */
    /* -log softmax([0, 1, 2])[1] = log(1 + e + e^2) - 1 */
    CHECK_NEAR(mc_row_nll(lg, 3, 1), log(1.0 + exp(1.0) + exp(2.0)) - 1.0, 1e-12);
    CHECK_INT(mc_model_context_bytes(NULL, 16, 1), 0);
    CHECK_INT(mc_model_context_bytes(m, 16, 0), 0);
    CHECK_INT(mc_model_context_bytes(m, 16, 4), mc_fwd_bytes(m, 1, 16, 4));
    mc_model_free(m);
}

/* ---- contexts ---- */

/* n_batch is capped by n_ctx and raised to n_seq; decoding more than n_batch tokens runs
 * in chunks and gives the logits of one pass. */
static void test_context_chunks(void) {
    mc_model *m = load_tiny();
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t ids[37];
    float *full = NULL, last[V];
    if (!m) return;
    fill_ids(ids, 37, 5);
    cp.n_ctx = 40;
    cp.n_batch = 5;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    if (!ctx) {
        mc_model_free(m);
        return;
    }
    CHECK_INT(ctx->fwd->n_batch, 5);
    full = mc_malloc(37 * V * sizeof *full);
    CHECK_OK(mc_model_eval(m, ids, 37, full, NULL));
    CHECK_OK(mc_context_decode(ctx, 0, ids, 37, last));
    CHECK_REL_L2(last, full + 36 * V, V, 1e-5);
    CHECK_INT(mc_context_n_past(ctx, 0), 37);
    CHECK_INT(mc_context_n_past(ctx, -1), 0);
    CHECK_INT(mc_context_n_past(NULL, 0), 0);
    CHECK_INT(mc_context_n_ctx(NULL), 0);
    CHECK_STATUS(mc_context_decode(NULL, 0, ids, 1, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_decode(ctx, 0, NULL, 1, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_decode(ctx, -1, ids, 1, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_decode(ctx, 0, ids, 4, NULL), MC_ERR_CONTEXT_FULL);
    CHECK_INT(mc_context_n_past(ctx, 0), 37); /* nothing appended */
    mc_context_reset(ctx, 0);
    mc_context_reset(NULL, 0);
    CHECK_INT(mc_context_n_past(ctx, 0), 0);
    mc_context_free(ctx);
    ctx = NULL;
    /* more sequences than rows per batch: the batch grows to one row per sequence */
    cp.n_ctx = 8;
    cp.n_batch = 2;
    cp.n_seq = 5;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    if (ctx) CHECK_INT(ctx->fwd->n_batch, 5);
    mc_context_free(ctx);
    /* defaults: min(max_position_embeddings, 4096) positions, batch 512 capped by it */
    ctx = NULL;
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    if (ctx) {
        CHECK_INT(mc_context_n_ctx(ctx), 256);
        CHECK_INT(ctx->fwd->n_batch, 256);
        CHECK_INT(ctx->fwd->n_seq, 1);
    }
    mc_context_free(ctx);
    cp = mc_context_default_params();
    cp.n_seq = -1;
    CHECK_STATUS(mc_context_create(m, &cp, &ctx), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_create(m, NULL, NULL), MC_ERR_INVALID_ARG);
    mc_free(full);
    mc_model_free(m);
}

/* ---- adapters ---- */

static void test_adapter_params(void) {
    mc_model *m = load_tiny();
    mc_lora_params p = mc_lora_default_params();
    mc_adapter *a = NULL;
    mc_dims d;
    int in = -1, out = -1;
    if (!m) return;
    CHECK_INT(p.rank, 8);
    CHECK_NEAR(p.alpha, 16.0, 0);
    CHECK_INT(p.targets, MC_LORA_ALL);
#define BAD(field, value, msg)                                           \
    do {                                                                 \
        mc_lora_params q_ = p;                                           \
        q_.field = value;                                                \
        CHECK_STATUS(mc_adapter_create(m, &q_, &a), MC_ERR_INVALID_ARG); \
        CHECK_MSG(msg);                                                  \
        CHECK(a == NULL);                                                \
    } while (0)
    BAD(rank, 0, "rank");
    BAD(rank, 4097, "rank");
    BAD(alpha, 0.0f, "alpha");
    BAD(alpha, NAN, "alpha");
    BAD(alpha, INFINITY, "alpha");
    BAD(dropout, 1.0f, "dropout");
    BAD(dropout, -0.1f, "dropout");
    BAD(dropout, NAN, "dropout");
    BAD(targets, 0u, "target");
    BAD(targets, 0x80u, "target");
    BAD(num_layers, -2, "num_layers");
    BAD(num_layers, 3, "num_layers");
#undef BAD
    CHECK_STATUS(mc_adapter_create(NULL, &p, &a), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_adapter_create(m, &p, NULL), MC_ERR_INVALID_ARG);
    CHECK_INT(mc_adapter_n_params(NULL), 0);
    /* the last layer's q and down only: r (D + q) + r (F + D) with r = 4 */
    p.rank = 4;
    p.targets = MC_LORA_Q | MC_LORA_DOWN;
    p.num_layers = 1;
    p.rslora = 1;
    CHECK_OK(mc_adapter_create(m, &p, &a));
    if (a) {
        CHECK_INT(mc_adapter_n_params(a), 4 * (64 + 64) + 4 * (128 + 64));
        CHECK_INT(a->first_layer, 1);
        CHECK_NEAR(a->scale, 16.0 / 2.0, 1e-6); /* alpha / sqrt(r) */
        CHECK(mc_adapter_mod(a, 0, MC_LM_Q) == NULL);
        CHECK(mc_adapter_mod(a, 1, MC_LM_K) == NULL);
        CHECK(mc_adapter_mod(a, 1, MC_LM_DOWN) != NULL);
    }
    mc_adapter_free(a);
    mc_adapter_free(NULL);
    /* the internal constructor checks the first adapted layer itself */
    a = NULL;
    CHECK_STATUS(mc_adapter_alloc(m, 4, 8.0f, false, 0.0f, MC_LORA_ALL, 2, &a), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_adapter_alloc(m, 4, 8.0f, false, 0.0f, MC_LORA_ALL, -1, &a),
                 MC_ERR_INVALID_ARG);
    CHECK(a == NULL);
    d = mc_model_dims(m);
    mc_lora_module_dims(&d, MC_LM_O, &in, &out);
    CHECK(in == 64 && out == 64);
    mc_lora_module_dims(&d, MC_LM_DOWN, &in, &out);
    CHECK(in == 128 && out == 64);
    mc_lora_module_dims(&d, MC_LM_COUNT, &in, &out);
    CHECK(in == 0 && out == 0);
    CHECK(strcmp(mc_lora_module_name(MC_LM_GATE), "gate_proj") == 0);
    CHECK(strcmp(mc_lora_module_name(MC_LM_COUNT), "?") == 0);
    CHECK(strcmp(mc_lora_module_parent(MC_LM_O), "self_attn") == 0);
    CHECK(strcmp(mc_lora_module_parent(MC_LM_UP), "mlp") == 0);
    mc_model_free(m);
}

/* Sets every B of a to value, so the adapter changes the model's outputs. */
static void set_b(mc_adapter *a, float value) {
    mc_backend *be = a->model->be;
    size_t k;
    int l, j;
    for (l = 0; l < a->model->cfg.num_hidden_layers; l++)
        for (j = 0; j < MC_LM_COUNT; j++) {
            const mc_lora_mod *mod = mc_adapter_mod(a, l, (mc_lora_module)j);
            size_t n;
            float *host;
            if (!mod) continue;
            n = (size_t)mod->out * (size_t)a->rank;
            host = mc_malloc(n * sizeof *host);
            if (!host) continue;
            for (k = 0; k < n; k++) host[k] = value * (float)((k % 7) + 1);
            CHECK_OK(be->to_device(be, mod->B, host, n * sizeof *host));
            mc_free(host);
        }
}

/* A fresh adapter (B = 0) changes nothing; a trained one does, through eval and through a
 * context alike; scale 0 is the base model; an adapter of another model is refused. */
static void test_adapter_forward(void) {
    mc_model *m = load_tiny(), *other = load_tiny();
    mc_adapter *a = NULL, *b = NULL;
    mc_context *ctx = NULL;
    mc_lora_params p = mc_lora_default_params();
    int32_t ids[9];
    float *base = mc_malloc(9 * V * sizeof *base), *ad = mc_malloc(9 * V * sizeof *ad);
    float last[V];
    double loss_base = 0, loss_ad = 0;
    if (!m || !other || !base || !ad) goto done;
    fill_ids(ids, 9, 13);
    p.seed = 5;
    p.dropout = 0.1f; /* training only: no effect on inference */
    CHECK_OK(mc_adapter_create(m, &p, &a));
    CHECK_OK(mc_adapter_create(other, &p, &b));
    if (!a || !b) goto done;
    CHECK_OK(mc_model_eval(m, ids, 9, base, &loss_base));
    CHECK_OK(mc_model_eval_adapter(m, a, 1.0f, ids, 9, ad, &loss_ad));
    CHECK_REL_L2(ad, base, 9 * V, 1e-6);
    set_b(a, 0.01f);
    CHECK_OK(mc_model_eval_adapter(m, a, 1.0f, ids, 9, ad, &loss_ad));
    CHECK(fabs(loss_ad - loss_base) > 1e-4);
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    if (!ctx) goto done;
    CHECK_OK(mc_context_set_adapter(ctx, a, 1.0f));
    CHECK_OK(mc_context_decode(ctx, 0, ids, 9, last));
    CHECK_REL_L2(last, ad + 8 * V, V, 1e-5);
    /* scale 0 is the base model */
    CHECK_OK(mc_context_set_adapter(ctx, a, 0.0f));
    CHECK_INT(mc_context_n_past(ctx, 0), 0); /* caches reset */
    CHECK_OK(mc_context_decode(ctx, 0, ids, 9, last));
    CHECK_REL_L2(last, base + 8 * V, V, 1e-5);
    CHECK_STATUS(mc_context_set_adapter(ctx, a, NAN), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_set_adapter(NULL, a, 1.0f), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_context_set_adapter(ctx, b, 1.0f), MC_ERR_INVALID_ARG);
    CHECK_MSG("another model");
    CHECK_STATUS(mc_model_eval_adapter(m, b, 1.0f, ids, 9, NULL, NULL), MC_ERR_INVALID_ARG);
    /* detached: the base model again */
    CHECK_OK(mc_context_set_adapter(ctx, NULL, 1.0f));
    CHECK_OK(mc_context_decode(ctx, 0, ids, 9, last));
    CHECK_REL_L2(last, base + 8 * V, V, 1e-5);
done:
    mc_context_free(ctx);
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_free(base);
    mc_free(ad);
    mc_model_free(m);
    mc_model_free(other);
}

/* Sweeps allocation failures over fn until it succeeds; every failure is MC_ERR_OOM. */
typedef mc_status (*alloc_fn)(mc_model *m, void *arg);
static void sweep(const char *what, mc_model *m, alloc_fn fn, void *arg) {
    size_t nth;
    mc_status s = MC_OK;
    for (nth = 1; nth < 5000; nth++) {
        mc_debug_fail_alloc_after(nth);
        s = fn(m, arg);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) break;
        if (s != MC_ERR_OOM) {
            fprintf(stderr, "%s, allocation %zu: %s (%s)\n", what, nth, mc_status_name(s),
                    mc_last_error());
            CHECK_INT(s, MC_ERR_OOM);
            return;
        }
    }
    CHECK_OK(s);
}

static mc_status adapter_and_eval(mc_model *m, void *arg) {
    mc_adapter *a = NULL;
    mc_lora_params p = mc_lora_default_params();
    int32_t ids[5] = {1, 2, 3, 4, 5};
    double loss;
    mc_status s = mc_adapter_create(m, &p, &a);
    (void)arg;
    if (s == MC_OK) s = mc_model_eval_adapter(m, a, 1.0f, ids, 5, NULL, &loss);
    mc_adapter_free(a);
    return s;
}

static mc_status context_and_decode(mc_model *m, void *arg) {
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    int32_t ids[5] = {1, 2, 3, 4, 5};
    float *logits = arg;
    mc_status s;
    cp.n_ctx = 16;
    cp.n_seq = 2;
    s = mc_context_create(m, &cp, &ctx);
    if (s == MC_OK) s = mc_context_decode(ctx, 1, ids, 5, logits);
    mc_context_free(ctx);
    return s;
}

static void test_alloc_failures(void) {
    mc_model *m = load_tiny();
    float logits[V];
    if (!m) return;
    sweep("adapter", m, adapter_and_eval, NULL);
    sweep("context", m, context_and_decode, logits);
    mc_model_free(m);
}

/* ---- training ---- */

/* Loss of one micro-batch (sum over its targets), no gradients. */
static double batch_loss(mc_trainer_core *c, const mc_batch *b) {
    double loss = 0;
    CHECK_OK(mc_train_microbatch(c, b, 1.0f, false, &loss));
    return loss;
}

/* Index in a->params of element k of module (l, m)'s A (or B with b). */
static size_t param_index(const mc_adapter *a, int l, mc_lora_module m, bool b, size_t k) {
    const mc_lora_mod *mod = mc_adapter_mod(a, l, m);
    CHECK(mod != NULL);
    if (!mod) return 0;
    return (size_t)((b ? mod->B : mod->A) - a->params) + k;
}

/* LoRA gradients through qwen3's per-head q/k RMSNorm against central finite differences,
 * with and without activation checkpointing. */
static void test_qk_norm_gradients(void) {
    mc_model *m = NULL;
    mc_adapter *a = NULL;
    mc_trainer_core *c = NULL, *ck = NULL;
    mc_lora_params lp = mc_lora_default_params();
    mc_batch b;
    int32_t ids[12], tg[12];
    float *g = NULL, *gk = NULL, *params = NULL;
    double loss = 0;
    size_t n = 0, picks[6];
    int i, k;
    memset(&b, 0, sizeof b);
    CHECK_OK(mc_model_load(t_src("tests/fixtures/qwen3_bf16"), NULL, &m));
    if (!m) return;
    lp.rank = 2;
    lp.targets = MC_LORA_Q | MC_LORA_K;
    lp.seed = 3;
    CHECK_OK(mc_adapter_create(m, &lp, &a));
    if (!a) goto done;
    set_b(a, 0.05f);
    for (i = 0; i < 12; i++) ids[i] = (i * 37 + 11) % 300;
    for (i = 0; i < 12; i++) tg[i] = i % 6 == 5 ? -1 : ids[i + 1]; /* two segments of 6 */
    CHECK_OK(mc_batch_add(&b, ids, tg, 6));
    CHECK_OK(mc_batch_add(&b, ids + 6, tg + 6, 6));
    CHECK_OK(mc_trainer_core_create(m, a, 12, false, &c));
    CHECK_OK(mc_trainer_core_create(m, a, 12, true, &ck));
    if (!c || !ck) goto done;
    n = a->n_params;
    g = mc_malloc(n * sizeof *g);
    gk = mc_malloc(n * sizeof *gk);
    params = mc_malloc(n * sizeof *params);
    if (!g || !gk || !params) goto done;
    CHECK_OK(mc_train_microbatch(c, &b, 1.0f, true, &loss));
    CHECK_OK(mc_train_microbatch(ck, &b, 1.0f, true, &loss));
    CHECK_OK(m->be->to_host(m->be, g, c->grads, n * sizeof *g));
    CHECK_OK(m->be->to_host(m->be, gk, ck->grads, n * sizeof *gk));
    CHECK_REL_L2(gk, g, n, 1e-5);
    CHECK_OK(m->be->to_host(m->be, params, a->params, n * sizeof *params));
    /* A and B of q in layer 0, of k in layer 1 */
    picks[0] = param_index(a, 0, MC_LM_Q, false, 5);
    picks[1] = param_index(a, 0, MC_LM_Q, true, 7);
    picks[2] = param_index(a, 1, MC_LM_K, false, 1);
    picks[3] = param_index(a, 1, MC_LM_K, true, 3);
    picks[4] = param_index(a, 0, MC_LM_K, true, 0);
    picks[5] = param_index(a, 1, MC_LM_Q, false, 60);
    for (k = 0; k < 6; k++) {
        const float h = 1e-2f;
        float keep = params[picks[k]];
        double up, down, fd;
        params[picks[k]] = keep + h;
        CHECK_OK(m->be->to_device(m->be, a->params, params, n * sizeof *params));
        up = batch_loss(c, &b);
        params[picks[k]] = keep - h;
        CHECK_OK(m->be->to_device(m->be, a->params, params, n * sizeof *params));
        down = batch_loss(c, &b);
        params[picks[k]] = keep;
        fd = (up - down) / (2.0 * h);
        CHECK_NEAR(g[picks[k]], fd, 1e-3 + 1e-2 * fabs(fd));
    }
    CHECK_OK(m->be->to_device(m->be, a->params, params, n * sizeof *params));
    /* a micro-batch that is empty or larger than the state was made for */
    {
        mc_batch none;
        memset(&none, 0, sizeof none);
        CHECK_STATUS(mc_train_microbatch(c, &none, 1.0f, true, &loss), MC_ERR_INVALID_ARG);
        CHECK_OK(mc_batch_add(&b, ids, tg, 1));
        CHECK_STATUS(mc_train_microbatch(c, &b, 1.0f, true, &loss), MC_ERR_INVALID_ARG);
    }
done:
    mc_free(g);
    mc_free(gk);
    mc_free(params);
    mc_batch_free(&b);
    mc_trainer_core_free(c);
    mc_trainer_core_free(ck);
    mc_adapter_free(a);
    mc_model_free(m);
}

/* Chat lines whose rendering is longer than the first 256-byte buffer, with the prompt
 * masked; a tokenizer without a chat template; allocation failures. */
static mc_status parse_long_chat(mc_model *m, void *arg) {
    const mc_tokenizer *tok = arg;
    mc_dataset ds;
    mc_dataset_opts o;
    char line[1024];
    int k;
    mc_status s;
    (void)m;
    memset(&ds, 0, sizeof ds);
    memset(&o, 0, sizeof o);
    o.tok = tok;
    o.max_seq_length = 4096;
    o.mask_prompt = true;
    o.vocab_size = 151936;
    k = snprintf(line, sizeof line, "{\"prompt\": \"");
    memset(line + k, 'p', 300);
    k += 300;
    k += snprintf(line + k, sizeof line - (size_t)k, "\", \"completion\": \"");
    memset(line + k, 'c', 200);
    k += 200;
    k += snprintf(line + k, sizeof line - (size_t)k, "\"}\n");
    s = mc_dataset_parse(line, (size_t)k, "long.jsonl", &o, &ds);
    if (s == MC_OK) {
        size_t i, first = 0;
        CHECK_INT(ds.n, 1);
        for (i = 0; ds.n == 1 && i < (size_t)ds.ex[0].n; i++)
            if (ds.ex[0].target[i]) {
                first = i;
                break;
            }
        CHECK(first > 100);                /* the 300-byte prompt is not a target */
        CHECK(ds.n_targets >= 200 / 4);    /* the completion is */
        CHECK(ds.n_targets < ds.n_tokens); /* ... and less than everything */
    }
    mc_dataset_free(&ds);
    return s;
}

/* The Qwen tokenizer ($MC_TOKENIZER_DIR, as scripts/test.sh sets it), with its chat
 * template; NULL (a failure unless MC_ALLOW_NO_TOKENIZER is set) when absent. */
static mc_tokenizer *load_qwen_tokenizer(void) {
    const char *dir = getenv("MC_TOKENIZER_DIR");
    char path[1024];
    mc_tokenizer *tok = NULL;
    if (!dir || !*dir) {
        snprintf(path, sizeof path, "%s/.cache/metal-candle/tokenizer-qwen3-3.7.2",
                 getenv("HOME") ? getenv("HOME") : "");
        dir = path;
    }
    if (mc_tokenizer_load(dir, &tok) != MC_OK && !getenv("MC_ALLOW_NO_TOKENIZER")) {
        fprintf(stderr, "no tokenizer at %s (run scripts/fetch_tokenizer.sh)\n", dir);
        CHECK(!"tokenizer missing");
    }
    return tok;
}

static void test_dataset_chats(void) {
    mc_tokenizer *tok = load_qwen_tokenizer(), *plain = load_tokenizer();
    if (tok) {
        CHECK_OK(parse_long_chat(NULL, tok));
        sweep("dataset", NULL, parse_long_chat, tok);
    }
    if (plain) CHECK_STATUS(parse_long_chat(NULL, plain), MC_ERR_UNSUPPORTED); /* no template */
    mc_tokenizer_free(tok);
    mc_tokenizer_free(plain);
}

/* ---- generation ---- */

static void test_generate_params(void) {
    mc_model *m = load_tiny();
    mc_tokenizer *tok = load_tokenizer();
    mc_context *ctx = NULL;
    mc_generate_params p = mc_generate_default_params();
    int32_t prompt[3] = {1, 2, 3}, eos = 2;
    const int32_t *prompts[2] = {prompt, NULL};
    size_t lens[2] = {3, 3};
    const char *stops[2] = {"ab", ""};
    mc_generation g[2];
    if (!m || !tok) goto done;
    CHECK_INT(p.max_tokens, 256);
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_EOS), "eos") == 0);
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_MAX_TOKENS), "max_tokens") == 0);
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_CONTEXT_FULL), "context_full") == 0);
    CHECK(strcmp(mc_stop_reason_name(MC_STOP_CALLBACK), "callback") == 0);
    CHECK(strcmp(mc_stop_reason_name((mc_stop_reason)99), "none") == 0);
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    if (!ctx) goto done;
    CHECK_STATUS(mc_generate(NULL, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_generate_batch(ctx, NULL, lens, 1, &p, g), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_generate_batch(ctx, prompts, NULL, 1, &p, g), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_generate_batch(ctx, prompts, lens, 0, &p, g), MC_ERR_INVALID_ARG);
    p.n_stop = -1;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    p.n_stop = 1; /* stop NULL */
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    p.n_stop = 0;
    p.n_eos = -1;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    p.n_eos = 1; /* eos_ids NULL */
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    CHECK_MSG("disagree");
    p.eos_ids = &eos;
    p.tokenizer = tok;
    p.stop = stops;
    p.n_stop = 2;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    CHECK_MSG("stop string 1 is empty");
    stops[1] = NULL;
    CHECK_STATUS(mc_generate(ctx, prompt, 3, &p, g), MC_ERR_INVALID_ARG);
    /* a NULL prompt in a batch (the context has one sequence: make it two) */
    mc_context_free(ctx);
    ctx = NULL;
    {
        mc_context_params cp = mc_context_default_params();
        cp.n_seq = 2;
        CHECK_OK(mc_context_create(m, &cp, &ctx));
    }
    p.n_stop = 0;
    if (ctx) CHECK_STATUS(mc_generate_batch(ctx, prompts, lens, 2, &p, g), MC_ERR_INVALID_ARG);
done:
    mc_context_free(ctx);
    mc_tokenizer_free(tok);
    mc_model_free(m);
}

typedef struct seen {
    char text[4096];
    size_t len;
    int calls, flushes;
} seen;

static int collect(int seq, const char *text, size_t len, int32_t token, float lp, void *user) {
    seen *s = user;
    (void)seq;
    (void)lp;
    if (token < 0)
        s->flushes++;
    else
        s->calls++;
    if (s->len + len < sizeof s->text) {
        memcpy(s->text + s->len, text, len);
        s->len += len;
    }
    return 0;
}

/* Greedy generation forced onto token id by a logit bias. */
static mc_generate_params forced(mc_logit_bias *bias, int32_t id, int max_tokens) {
    mc_generate_params p = mc_generate_default_params();
    bias->token = id;
    bias->bias = 1000.0f;
    p.sampler.temperature = 0.0f;
    p.sampler.logit_bias = bias;
    p.sampler.n_logit_bias = 1;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

/* Padded ids have no text; text held back as a possible stop string is delivered at the
 * end (callback token -1); the result text equals what the callback saw. */
static void test_generate_text(void) {
    mc_model *m = load_tiny();
    mc_tokenizer *tok = load_tokenizer();
    mc_context *ctx = NULL;
    mc_logit_bias bias;
    mc_generate_params p;
    mc_generation g;
    int32_t prompt[3] = {40, 41, 42};
    const char *stops[1] = {"AAZ"};
    seen s;
    if (!m || !tok) goto done;
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    if (!ctx) goto done;
    p = forced(&bias, 500, 3); /* beyond the tokenizer's 472 ids */
    p.tokenizer = tok;
    CHECK_OK(mc_generate(ctx, prompt, 3, &p, &g));
    CHECK_INT(g.n_tokens, 3);
    CHECK(g.tokens && g.tokens[0] == 500 && g.tokens[2] == 500);
    CHECK_INT(g.text_len, 0);
    mc_generation_clear(&g);
    /* "A" (id 65) x 4: the last "AA" could begin "AAZ", so it waits until the end */
    p = forced(&bias, 65, 4);
    p.tokenizer = tok;
    p.stop = stops;
    p.n_stop = 1;
    p.on_token = collect;
    p.user = &s;
    memset(&s, 0, sizeof s);
    CHECK_OK(mc_generate(ctx, prompt, 3, &p, &g));
    CHECK_INT(g.stop_reason, MC_STOP_MAX_TOKENS);
    CHECK_INT(g.text_len, 4);
    CHECK(g.text && strcmp(g.text, "AAAA") == 0);
    CHECK_INT(s.calls, 4);
    CHECK_INT(s.flushes, 1);
    CHECK(s.len == 4 && memcmp(s.text, "AAAA", 4) == 0);
    mc_generation_clear(&g);
done:
    mc_context_free(ctx);
    mc_tokenizer_free(tok);
    mc_model_free(m);
}

/* A token whose text is longer than generation's 256-byte stack buffer (an added token of
 * 300 bytes here) still decodes. */
static void test_long_token(void) {
    const char *tmp = t_tmpdir("model_more_long_token");
    char path[4200], *text = NULL, *edited = NULL, *at;
    static const char key[] = "\"added_tokens\":[";
    size_t len = 0, pos;
    mc_model *m = NULL;
    mc_tokenizer *tok = NULL;
    mc_context *ctx = NULL;
    mc_logit_bias bias;
    mc_generate_params p;
    mc_generation g;
    int32_t prompt[2] = {40, 41};
    char entry[512];
    int k;
    CHECK_OK(mc_read_file(t_src("tests/fixtures/tokenizer/synthetic/gpt2_like.json"), &text, &len));
    at = text ? strstr(text, key) : NULL;
    CHECK(at != NULL);
    if (!at) goto done;
    pos = (size_t)(at - text) + sizeof key - 1;
    k = snprintf(entry, sizeof entry, "{\"id\": 472, \"content\": \"");
    memset(entry + k, 'z', 300);
    k += 300;
    k += snprintf(entry + k, sizeof entry - (size_t)k,
                  "\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                  "\"normalized\": false, \"special\": false},");
    edited = mc_malloc(len + (size_t)k + 1);
    if (!edited) goto done;
    memcpy(edited, text, pos);
    memcpy(edited + pos, entry, (size_t)k);
    memcpy(edited + pos + k, text + pos, len - pos + 1);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    CHECK_OK(mc_write_file_atomic(path, edited, len + (size_t)k));
    CHECK_OK(mc_tokenizer_load(path, &tok));
    m = load_tiny();
    if (!tok || !m) goto done;
    CHECK_OK(mc_context_create(m, NULL, &ctx));
    if (!ctx) goto done;
    p = forced(&bias, 472, 2);
    p.tokenizer = tok;
    CHECK_OK(mc_generate(ctx, prompt, 2, &p, &g));
    CHECK_INT(g.n_tokens, 2);
    CHECK_INT(g.text_len, 600);
    CHECK(g.text && g.text[0] == 'z' && g.text[599] == 'z');
    mc_generation_clear(&g);
done:
    mc_context_free(ctx);
    mc_model_free(m);
    mc_tokenizer_free(tok);
    mc_free(text);
    mc_free(edited);
}

/* Every allocation failure in batch generation (samplers, stop state, logits, tokens,
 * text) is MC_ERR_OOM with the results left empty. */
typedef struct gen_arg {
    mc_context *ctx;
    mc_tokenizer *tok;
} gen_arg;

static mc_status generate_batch(mc_model *m, void *arg) {
    const gen_arg *ga = arg;
    int32_t a[3] = {40, 41, 42}, b[2] = {50, 51};
    const int32_t *prompts[2] = {a, b};
    size_t lens[2] = {3, 2};
    const char *stops[1] = {"never"};
    mc_generate_params p = mc_generate_default_params();
    mc_generation res[2];
    mc_status s;
    int i;
    (void)m;
    p.max_tokens = 70; /* the token array grows past its first 64 */
    p.ignore_eos = 1;
    p.tokenizer = ga->tok;
    p.stop = stops;
    p.n_stop = 1;
    memset(res, 0xff, sizeof res);
    s = mc_generate_batch(ga->ctx, prompts, lens, 2, &p, res);
    for (i = 0; i < 2; i++) {
        if (s != MC_OK)
            CHECK(res[i].tokens == NULL && res[i].text == NULL && res[i].n_tokens == 0);
        else
            CHECK_INT(res[i].n_tokens, 70);
        mc_generation_clear(&res[i]);
    }
    return s;
}

static void test_generate_alloc_failures(void) {
    mc_model *m = load_tiny();
    mc_context_params cp = mc_context_default_params();
    gen_arg ga = {NULL, NULL};
    if (!m) return;
    ga.tok = load_tokenizer();
    cp.n_seq = 2;
    cp.n_ctx = 96;
    CHECK_OK(mc_context_create(m, &cp, &ga.ctx));
    if (ga.ctx && ga.tok) sweep("generate", m, generate_batch, &ga);
    mc_context_free(ga.ctx);
    mc_tokenizer_free(ga.tok);
    mc_model_free(m);
}

int main(void) {
    RUN(test_fwd_errors);
    RUN(test_fwd_logits_view);
    RUN(test_truncate);
    RUN(test_eval_edges);
    RUN(test_context_chunks);
    RUN(test_adapter_params);
    RUN(test_adapter_forward);
    RUN(test_alloc_failures);
    RUN(test_qk_norm_gradients);
    RUN(test_dataset_chats);
    RUN(test_generate_params);
    RUN(test_generate_text);
    RUN(test_long_token);
    RUN(test_generate_alloc_failures);
    return t_summary();
}
