/* forward.c - the decoder forward pass over the backend ops table, with a KV cache.
 *
 * Per layer (HF Qwen2 order):
 *   xn = rmsnorm(x); q = xn Wq^T + bq; k,v = (written straight into the cache slice);
 *   [qwen3: q,k = rmsnorm per head]; rope(q), rope(k); att = attention(q, K, V);
 *   x += att Wo^T; xn = rmsnorm(x); x += (silu(xn Wg^T) * (xn Wu^T)) Wd^T
 * then logits = rmsnorm(x) W_lm^T. */
#include "model.h"

/* Sizes of every buffer of a forward state, in bytes; returns false on overflow. */
typedef struct fwd_sizes {
    size_t kv, x, q, ff, logits, ids;
} fwd_sizes;

static bool fwd_sizes_get(const mc_model *m, int n_ctx, int n_batch, fwd_sizes *z) {
    mc_dims d = mc_model_dims(m);
    size_t a = mc_dtype_size(m->be->act_dtype);
    size_t B = (size_t)n_batch;
    bool ok = mc_mul_ok((size_t)d.L * (size_t)n_ctx, (size_t)d.kv_dim * a, &z->kv);
    ok = ok && mc_mul_ok(B, (size_t)d.D * a, &z->x);
    ok = ok && mc_mul_ok(B, (size_t)d.q_dim * a, &z->q);
    ok = ok && mc_mul_ok(B, (size_t)d.F * a, &z->ff);
    ok = ok && mc_mul_ok(B, (size_t)d.V * a, &z->logits);
    z->ids = B * sizeof(int32_t);
    return ok;
}

uint64_t mc_fwd_bytes(const mc_model *m, int n_ctx, int n_batch) {
    fwd_sizes z;
    if (!fwd_sizes_get(m, n_ctx, n_batch, &z)) return UINT64_MAX;
    return (uint64_t)(2 * z.kv + 2 * z.x + 2 * z.q + 2 * z.ff + z.logits + 2 * z.ids);
}

mc_status mc_fwd_create(const mc_model *m, int n_ctx, int n_batch, mc_fwd **out) {
    mc_backend *be = m->be;
    fwd_sizes z;
    mc_fwd *f;
    *out = NULL;
    if (n_ctx <= 0 || n_batch <= 0 || n_batch > n_ctx)
        return mc_fail(MC_ERR_INVALID_ARG, "context of %d positions with batch %d is invalid", n_ctx,
                       n_batch);
    if (!fwd_sizes_get(m, n_ctx, n_batch, &z))
        return mc_fail(MC_ERR_INVALID_ARG, "context of %d positions is too large", n_ctx);
    f = mc_calloc(1, sizeof *f);
    if (!f) return mc_fail(MC_ERR_OOM, "out of memory for a forward state");
    f->m = m;
    f->n_ctx = n_ctx;
    f->n_batch = n_batch;
    f->k_cache = be->alloc(be, z.kv);
    f->v_cache = be->alloc(be, z.kv);
    f->x = be->alloc(be, z.x);
    f->xn = be->alloc(be, z.x);
    f->q = be->alloc(be, z.q);
    f->att = be->alloc(be, z.q);
    f->gate = be->alloc(be, z.ff);
    f->up = be->alloc(be, z.ff);
    f->logits = be->alloc(be, z.logits);
    f->ids_dev = be->alloc(be, z.ids);
    f->pos_dev = be->alloc(be, z.ids);
    f->pos_host = mc_malloc(z.ids);
    if (!f->k_cache || !f->v_cache || !f->x || !f->xn || !f->q || !f->att || !f->gate || !f->up ||
        !f->logits || !f->ids_dev || !f->pos_dev || !f->pos_host) {
        mc_fwd_free(f);
        return mc_fail(MC_ERR_OOM, "out of memory: a context of %d positions (batch %d) needs %llu "
                       "bytes", n_ctx, n_batch, (unsigned long long)mc_fwd_bytes(m, n_ctx, n_batch));
    }
    *out = f;
    return MC_OK;
}

void mc_fwd_free(mc_fwd *f) {
    mc_backend *be;
    if (!f) return;
    be = f->m->be;
    be->free(be, f->k_cache);
    be->free(be, f->v_cache);
    be->free(be, f->x);
    be->free(be, f->xn);
    be->free(be, f->q);
    be->free(be, f->att);
    be->free(be, f->gate);
    be->free(be, f->up);
    be->free(be, f->logits);
    be->free(be, f->ids_dev);
    be->free(be, f->pos_dev);
    mc_free(f->pos_host);
    mc_free(f);
}

/* One decoder layer over T tokens whose keys/values go to cache rows n_past.. . */
static void layer_forward(mc_fwd *f, int l, int T) {
    const mc_model *m = f->m;
    mc_backend *be = m->be;
    const mc_layer_w *w = &m->layers[l];
    mc_dims d = mc_model_dims(m);
    float eps = (float)m->cfg.rms_norm_eps;
    float theta = (float)m->cfg.rope_theta;
    size_t layer_off = (size_t)l * (size_t)f->n_ctx * (size_t)d.kv_dim;
    size_t row_off = layer_off + (size_t)f->n_past * (size_t)d.kv_dim;
    void *k_layer = mc_act_at(be, f->k_cache, layer_off); /* [n_ctx, kv_dim] */
    void *v_layer = mc_act_at(be, f->v_cache, layer_off);
    void *k_new = mc_act_at(be, f->k_cache, row_off);     /* [T, kv_dim] */
    void *v_new = mc_act_at(be, f->v_cache, row_off);
    mc_wt none = {NULL, MC_F32};

    /* attention block */
    be->rmsnorm(be, f->xn, f->x, w->attn_norm, T, d.D, eps);
    be->matmul(be, f->q, d.q_dim, f->xn, w->q_w, w->q_b, T, d.q_dim, d.D);
    be->matmul(be, k_new, d.kv_dim, f->xn, w->k_w, w->k_b, T, d.kv_dim, d.D);
    be->matmul(be, v_new, d.kv_dim, f->xn, w->v_w, w->v_b, T, d.kv_dim, d.D);
    if (w->q_norm.data) { /* qwen3: RMSNorm over each head's hd values */
        be->rmsnorm(be, f->q, f->q, w->q_norm, T * d.Hq, d.hd, eps);
        be->rmsnorm(be, k_new, k_new, w->k_norm, T * d.Hkv, d.hd, eps);
    }
    be->rope(be, f->q, d.q_dim, f->pos_dev, T, d.Hq, d.hd, theta);
    be->rope(be, k_new, d.kv_dim, f->pos_dev, T, d.Hkv, d.hd, theta);
    be->attention(be, f->att, f->q, k_layer, v_layer, T, f->n_past, d.Hq, d.Hkv, d.hd);
    be->matmul(be, f->xn, d.D, f->att, w->o_w, w->o_b, T, d.D, d.q_dim);
    be->add(be, f->x, f->xn, (size_t)T * (size_t)d.D);

    /* MLP block */
    be->rmsnorm(be, f->xn, f->x, w->mlp_norm, T, d.D, eps);
    be->matmul(be, f->gate, d.F, f->xn, w->gate_w, none, T, d.F, d.D);
    be->matmul(be, f->up, d.F, f->xn, w->up_w, none, T, d.F, d.D);
    be->swiglu(be, f->gate, f->gate, f->up, (size_t)T * (size_t)d.F);
    be->matmul(be, f->xn, d.D, f->gate, w->down_w, none, T, d.D, d.F);
    be->add(be, f->x, f->xn, (size_t)T * (size_t)d.D);
}

mc_status mc_fwd_run(mc_fwd *f, const int32_t *ids, int T, mc_logits_mode mode, float *logits_host) {
    const mc_model *m = f->m;
    mc_backend *be = m->be;
    mc_dims d = mc_model_dims(m);
    mc_wt none = {NULL, MC_F32};
    mc_status s;
    int t, l;
    if (T <= 0 || T > f->n_batch)
        return mc_fail(MC_ERR_INVALID_ARG, "forward of %d tokens (batch capacity %d)", T, f->n_batch);
    if (f->n_past + T > f->n_ctx)
        return mc_fail(MC_ERR_CONTEXT_FULL, "context full: %d cached + %d new > %d positions",
                       f->n_past, T, f->n_ctx);
    for (t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= d.V)
            return mc_fail(MC_ERR_TOKEN_ID, "token id %d is outside the vocabulary (size %d)",
                           ids[t], d.V);
        f->pos_host[t] = f->n_past + t;
    }
    s = be->to_device(be, f->ids_dev, ids, (size_t)T * sizeof(int32_t));
    if (s == MC_OK) s = be->to_device(be, f->pos_dev, f->pos_host, (size_t)T * sizeof(int32_t));
    if (s != MC_OK) return s;

    be->embedding(be, f->x, f->ids_dev, m->embed, T, d.D);
    for (l = 0; l < d.L; l++) layer_forward(f, l, T);
    f->n_past += T;

    if (mode == MC_LOGITS_NONE) return be->sync ? be->sync(be) : MC_OK;
    {
        int first = mode == MC_LOGITS_LAST ? T - 1 : 0;
        int rows = T - first;
        const void *xr = mc_act_at(be, f->x, (size_t)first * (size_t)d.D);
        be->rmsnorm(be, f->xn, xr, m->final_norm, rows, d.D, (float)m->cfg.rms_norm_eps);
        be->matmul(be, f->logits, d.V, f->xn, m->lm_head, none, rows, d.V, d.D);
        if (!logits_host) return be->sync ? be->sync(be) : MC_OK;
        return be->to_host_f32(be, logits_host, f->logits, (size_t)rows * (size_t)d.V);
    }
}
