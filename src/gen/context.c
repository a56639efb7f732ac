/* context.c - the public context API: per-run KV caches over the model's forward state. */
#include "gen.h"

mc_context_params mc_context_default_params(void) {
    mc_context_params p;
    memset(&p, 0, sizeof p);
    return p;
}

mc_status mc_context_create(mc_model *model, const mc_context_params *params, mc_context **out) {
    mc_context_params p = params ? *params : mc_context_default_params();
    mc_context *ctx;
    mc_status s;
    if (!model || !out) return mc_fail(MC_ERR_INVALID_ARG, "mc_context_create: NULL argument");
    *out = NULL;
    if (p.n_ctx < 0 || p.n_batch < 0 || p.n_seq < 0)
        return mc_fail(MC_ERR_INVALID_ARG, "context parameters must be >= 0 (n_ctx %d, n_batch %d, "
                       "n_seq %d)", p.n_ctx, p.n_batch, p.n_seq);
    if (p.n_ctx == 0) p.n_ctx = MC_MIN(model->cfg.max_position_embeddings, 4096);
    if (p.n_batch == 0) p.n_batch = 512;
    if (p.n_seq == 0) p.n_seq = 1;
    /* a batched decode step needs one row per sequence */
    p.n_batch = MC_MAX(MC_MIN(p.n_batch, p.n_ctx), p.n_seq);
    ctx = mc_calloc(1, sizeof *ctx);
    if (!ctx) return mc_fail(MC_ERR_OOM, "out of memory for a context");
    ctx->model = model;
    s = mc_fwd_create(model, p.n_seq, p.n_ctx, p.n_batch, &ctx->fwd);
    if (s != MC_OK) {
        mc_free(ctx);
        return s;
    }
    *out = ctx;
    return MC_OK;
}

void mc_context_free(mc_context *ctx) {
    if (!ctx) return;
    mc_fwd_free(ctx->fwd);
    mc_free(ctx);
}

int mc_context_n_ctx(const mc_context *ctx) { return ctx ? ctx->fwd->n_ctx : 0; }

int mc_context_n_past(const mc_context *ctx, int seq) {
    if (!ctx || seq < 0 || seq >= ctx->fwd->n_seq) return 0;
    return ctx->fwd->n_past[seq];
}

mc_status mc_context_set_adapter(mc_context *ctx, const mc_adapter *adapter, float scale) {
    if (!ctx) return mc_fail(MC_ERR_INVALID_ARG, "mc_context_set_adapter: NULL context");
    if (!(scale == scale) || scale < 0)
        return mc_fail(MC_ERR_INVALID_ARG, "adapter scale must be >= 0 (got %g)", (double)scale);
    mc_context_reset(ctx, -1);
    return mc_fwd_set_adapter(ctx->fwd, adapter, scale);
}

void mc_context_reset(mc_context *ctx, int seq) {
    int i;
    if (!ctx) return;
    for (i = 0; i < ctx->fwd->n_seq; i++)
        if (seq < 0 || i == seq) mc_fwd_truncate(ctx->fwd, i, 0);
}

mc_status mc_context_decode(mc_context *ctx, int seq, const int32_t *ids, size_t n, float *logits) {
    mc_fwd *f;
    size_t i, done = 0;
    int V;
    if (!ctx || !ids) return mc_fail(MC_ERR_INVALID_ARG, "mc_context_decode: NULL argument");
    f = ctx->fwd;
    V = f->m->cfg.vocab_size;
    if (n == 0) return mc_fail(MC_ERR_INVALID_ARG, "mc_context_decode: no tokens");
    if (seq < 0 || seq >= f->n_seq)
        return mc_fail(MC_ERR_INVALID_ARG, "sequence %d does not exist (context has %d)", seq,
                       f->n_seq);
    if (n > (size_t)(f->n_ctx - f->n_past[seq]))
        return mc_fail(MC_ERR_CONTEXT_FULL, "%zu tokens do not fit: %d of %d positions are used",
                       n, f->n_past[seq], f->n_ctx);
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return mc_fail(MC_ERR_TOKEN_ID, "token id %d at position %zu is outside the "
                           "vocabulary (size %d)", ids[i], i, V);
    while (done < n) {
        int T = (int)MC_MIN((size_t)f->n_batch, n - done);
        bool last = done + (size_t)T == n;
        mc_status s = mc_fwd_run(f, seq, ids + done, T, last && logits ? MC_LOGITS_LAST :
                                 MC_LOGITS_NONE, last ? logits : NULL);
        if (s != MC_OK) return s;
        done += (size_t)T;
    }
    return MC_OK;
}
