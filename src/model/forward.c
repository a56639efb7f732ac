/* forward.c - the decoder forward pass over the backend ops table, with KV caches for
 * one or more sequences.
 *
 * Per layer (HF Qwen2 order):
 *   xn = rmsnorm(x); q = xn Wq^T + bq; k = xn Wk^T + bk; v = xn Wv^T + bv
 *   [qwen3: q, k = rmsnorm per head]; rope(q), rope(k); append k, v to the cache;
 *   att = attention(q, K, V); x += att Wo^T
 *   xn = rmsnorm(x); x += (silu(xn Wg^T) * (xn Wu^T)) Wd^T
 * then logits = rmsnorm(x) W_lm^T.
 * Rows of one call either all belong to one sequence at consecutive positions (prefill:
 * k and v land straight in the cache) or each to its own sequence (batched decode step:
 * k and v go through scratch rows that are copied into each sequence's cache). */
#include "../lora/lora.h"
#include "model.h"

/* Sizes of every buffer of a forward state, in bytes; returns false on overflow. */
typedef struct fwd_sizes {
    size_t kv, x, q, kvt, ff, logits, ids;
} fwd_sizes;

static bool fwd_sizes_get(const mc_model *m, int n_seq, int n_ctx, int n_batch, fwd_sizes *z) {
    mc_dims d = mc_model_dims(m);
    size_t a = mc_dtype_size(m->be->act_dtype);
    size_t B = (size_t)n_batch, rows;
    bool ok = mc_mul_ok((size_t)d.L * (size_t)n_seq, (size_t)n_ctx, &rows);
    ok = ok && mc_mul_ok(rows, (size_t)d.kv_dim * a, &z->kv);
    ok = ok && mc_mul_ok(B, (size_t)d.D * a, &z->x);
    ok = ok && mc_mul_ok(B, (size_t)d.q_dim * a, &z->q);
    ok = ok && mc_mul_ok(B, (size_t)d.kv_dim * a, &z->kvt);
    ok = ok && mc_mul_ok(B, (size_t)d.F * a, &z->ff);
    ok = ok && mc_mul_ok(B, (size_t)d.V * a, &z->logits);
    z->ids = B * sizeof(int32_t);
    return ok;
}

uint64_t mc_fwd_bytes(const mc_model *m, int n_seq, int n_ctx, int n_batch) {
    fwd_sizes z;
    if (!fwd_sizes_get(m, n_seq, n_ctx, n_batch, &z)) return UINT64_MAX;
    return (uint64_t)z.kv * 2 + (uint64_t)z.x * 2 + (uint64_t)z.q * 2 + (uint64_t)z.kvt * 2 +
           (uint64_t)z.ff * 2 + (uint64_t)z.logits + (uint64_t)z.ids * 2;
}

mc_status mc_fwd_create(const mc_model *m, int n_seq, int n_ctx, int n_batch, mc_fwd **out) {
    mc_backend *be = m->be;
    fwd_sizes z;
    mc_fwd *f;
    *out = NULL;
    if (n_seq <= 0 || n_ctx <= 0 || n_batch <= 0 || (n_seq == 1 && n_batch > n_ctx))
        return mc_fail(MC_ERR_INVALID_ARG, "%d sequences of %d positions with batch %d is invalid",
                       n_seq, n_ctx, n_batch);
    if (!fwd_sizes_get(m, n_seq, n_ctx, n_batch, &z))
        return mc_fail(MC_ERR_INVALID_ARG, "context of %d x %d positions is too large", n_seq, n_ctx);
    f = mc_calloc(1, sizeof *f);
    if (!f) return mc_fail(MC_ERR_OOM, "out of memory for a forward state");
    f->m = m;
    f->n_seq = n_seq;
    f->n_ctx = n_ctx;
    f->n_batch = n_batch;
    f->view_rows = n_batch < MC_FWD_VIEW_ROWS ? n_batch : MC_FWD_VIEW_ROWS;
    f->n_past = mc_calloc((size_t)n_seq, sizeof *f->n_past);
    f->k_cache = be->alloc(be, z.kv);
    f->v_cache = be->alloc(be, z.kv);
    f->x = be->alloc(be, z.x);
    f->xn = be->alloc(be, z.x);
    f->q = be->alloc(be, z.q);
    f->att = be->alloc(be, z.q);
    f->k_tmp = be->alloc(be, z.kvt);
    f->v_tmp = be->alloc(be, z.kvt);
    f->gate = be->alloc(be, z.ff);
    f->up = be->alloc(be, z.ff);
    f->logits = be->alloc(be, z.logits);
    f->ids_dev = be->alloc(be, z.ids);
    f->pos_dev = be->alloc(be, z.ids);
    f->pos_host = mc_malloc(z.ids);
    f->att_rows = mc_calloc((size_t)n_batch, sizeof *f->att_rows);
    {   /* the rows mc_fwd_logits reads, in the host memory the backend copies to fastest */
        size_t bytes = (size_t)f->view_rows * (size_t)mc_model_dims(m).V * sizeof(float);
        f->logits_view = be->alloc_host ? be->alloc_host(be, bytes) : mc_malloc(bytes);
    }
    if (!f->n_past || !f->k_cache || !f->v_cache || !f->x || !f->xn || !f->q || !f->att ||
        !f->k_tmp || !f->v_tmp || !f->gate || !f->up || !f->logits || !f->ids_dev || !f->pos_dev ||
        !f->pos_host || !f->att_rows || !f->logits_view) {
        mc_fwd_free(f);
        return mc_fail(MC_ERR_OOM, "out of memory: a context of %d x %d positions (batch %d) "
                       "needs %llu bytes", n_seq, n_ctx, n_batch,
                       (unsigned long long)mc_fwd_bytes(m, n_seq, n_ctx, n_batch));
    }
    *out = f;
    return MC_OK;
}

void mc_fwd_free(mc_fwd *f) {
    mc_backend *be;
    void *bufs[15];
    size_t i;
    if (!f) return;
    be = f->m->be;
    bufs[0] = f->k_cache;
    bufs[1] = f->v_cache;
    bufs[2] = f->x;
    bufs[3] = f->xn;
    bufs[4] = f->q;
    bufs[5] = f->att;
    bufs[6] = f->k_tmp;
    bufs[7] = f->v_tmp;
    bufs[8] = f->gate;
    bufs[9] = f->up;
    bufs[10] = f->logits;
    bufs[11] = f->ids_dev;
    bufs[12] = f->pos_dev;
    for (i = 0; i < 13; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    mc_free(f->pos_host);
    mc_free(f->att_rows);
    if (f->logits_view && be->free_host) be->free_host(be, f->logits_view);
    else mc_free(f->logits_view);
    if (f->lora_tmp) be->free(be, f->lora_tmp);
    mc_free(f->n_past);
    mc_free(f);
}

void mc_fwd_truncate(mc_fwd *f, int seq, int n) {
    if (seq >= 0 && seq < f->n_seq && n >= 0 && n < f->n_past[seq]) f->n_past[seq] = n;
}

/* Element offset of cache row (layer l, sequence s, position p). */
static size_t cache_off(const mc_fwd *f, int l, int s, int p) {
    size_t kv_dim = (size_t)mc_model_dims(f->m).kv_dim;
    return (((size_t)l * (size_t)f->n_seq + (size_t)s) * (size_t)f->n_ctx + (size_t)p) * kv_dim;
}

/* Which rows a call covers: all of sequence `seq` (seqs == NULL), or row r of seqs[r]. */
typedef struct row_plan {
    int T;
    int seq;
    const int *seqs;
} row_plan;

/* y = x W^T + b for one projection of layer l, plus its LoRA path when adapted. */
/* y += the LoRA path of projection `which` of layer l on x, when the adapter has one. */
static void lora_add(mc_fwd *f, int l, mc_lora_module which, void *y, int ldy, const void *x,
                     int T) {
    const mc_lora_mod *mod = mc_adapter_mod(f->adapter, l, which);
    if (mod)
        mc_lora_apply(f->m->be, mod, f->adapter->rank, f->lora_scale, y, ldy, x, T, f->lora_tmp);
}

static void proj(mc_fwd *f, int l, mc_lora_module which, void *y, int ldy, const void *x, mc_wt w,
                 mc_wt b, int T, int N, int K) {
    mc_backend *be = f->m->be;
    be->matmul(be, y, ldy, x, w, b, T, N, K);
    lora_add(f, l, which, y, ldy, x, T);
}

/* The n projections of one input x [T, K] (q/k/v, or gate/up): the backend's matmul_multi
 * when it has one (one pass), else matmul per output; then each output's LoRA path. */
static void proj_multi(mc_fwd *f, int l, int n, const mc_lora_module *which,
                       const mc_matmul_out *o, const void *x, int T, int K) {
    mc_backend *be = f->m->be;
    int i;
    if (be->matmul_multi) {
        be->matmul_multi(be, n, o, x, T, K);
    } else {
        for (i = 0; i < n; i++) be->matmul(be, o[i].out, o[i].ldo, x, o[i].w, o[i].bias, T, o[i].N, K);
    }
    for (i = 0; i < n; i++) lora_add(f, l, which[i], o[i].out, o[i].ldo, x, T);
}

mc_status mc_fwd_set_adapter(mc_fwd *f, const struct mc_adapter *a, float scale_mul) {
    if (f->lora_tmp) f->m->be->free(f->m->be, f->lora_tmp);
    f->lora_tmp = NULL;
    f->adapter = NULL;
    if (!a) return MC_OK;
    if (a->model != f->m)
        return mc_fail(MC_ERR_INVALID_ARG, "the adapter belongs to another model");
    /* device memory: the LoRA path's x A^T lands here */
    f->lora_tmp = f->m->be->alloc(f->m->be, (size_t)f->n_batch * (size_t)a->rank * sizeof(float));
    if (!f->lora_tmp) return mc_fail(MC_ERR_OOM, "out of memory for LoRA scratch");
    f->adapter = a;
    f->lora_scale = a->scale * scale_mul;
    return MC_OK;
}

/* Attention block of layer l: x += attention(rmsnorm(x)) Wo^T. */
static void attention_block(mc_fwd *f, int l, const row_plan *rp) {
    const mc_model *m = f->m;
    mc_backend *be = m->be;
    const mc_layer_w *w = &m->layers[l];
    mc_dims d = mc_model_dims(m);
    float eps = (float)m->cfg.rms_norm_eps;
    int T = rp->T;
    void *k_new, *v_new; /* [T, kv_dim] */
    if (rp->seqs) {
        k_new = f->k_tmp;
        v_new = f->v_tmp;
    } else {
        k_new = mc_act_at(be, f->k_cache, cache_off(f, l, rp->seq, f->n_past[rp->seq]));
        v_new = mc_act_at(be, f->v_cache, cache_off(f, l, rp->seq, f->n_past[rp->seq]));
    }
    be->rmsnorm(be, f->xn, f->x, w->attn_norm, T, d.D, eps);
    {
        const mc_lora_module which[3] = {MC_LM_Q, MC_LM_K, MC_LM_V};
        const mc_matmul_out o[3] = {{f->q, d.q_dim, d.q_dim, w->q_w, w->q_b},
                                    {k_new, d.kv_dim, d.kv_dim, w->k_w, w->k_b},
                                    {v_new, d.kv_dim, d.kv_dim, w->v_w, w->v_b}};
        proj_multi(f, l, 3, which, o, f->xn, T, d.D);
    }
    if (w->q_norm.data) { /* qwen3: RMSNorm over each head's hd values */
        be->rmsnorm(be, f->q, f->q, w->q_norm, T * d.Hq, d.hd, eps);
        be->rmsnorm(be, k_new, k_new, w->k_norm, T * d.Hkv, d.hd, eps);
    }
    be->rope(be, f->q, d.q_dim, f->pos_dev, T, d.Hq, d.hd, (float)m->cfg.rope_theta);
    be->rope(be, k_new, d.kv_dim, f->pos_dev, T, d.Hkv, d.hd, (float)m->cfg.rope_theta);
    if (!rp->seqs) {
        be->attention(be, f->att, f->q, mc_act_at(be, f->k_cache, cache_off(f, l, rp->seq, 0)),
                      mc_act_at(be, f->v_cache, cache_off(f, l, rp->seq, 0)), T,
                      f->n_past[rp->seq], d.Hq, d.Hkv, d.hd);
    } else { /* rows of different sequences: each its own cache and position */
        int r;
        for (r = 0; r < T; r++) {
            int s = rp->seqs[r];
            f->att_rows[r].k = mc_act_at(be, f->k_cache, cache_off(f, l, s, 0));
            f->att_rows[r].v = mc_act_at(be, f->v_cache, cache_off(f, l, s, 0));
            f->att_rows[r].pos = f->n_past[s];
        }
        (be->attention_rows ? be->attention_rows : mc_attention_rows_by_row)(
            be, f->att, f->q, f->k_tmp, f->v_tmp, f->att_rows, T, d.Hq, d.Hkv, d.hd);
    }
    proj(f, l, MC_LM_O, f->xn, d.D, f->att, w->o_w, w->o_b, T, d.D, d.q_dim);
    be->add(be, f->x, f->xn, (size_t)T * (size_t)d.D);
}

/* MLP block of layer l: x += (silu(xn Wg^T) * (xn Wu^T)) Wd^T with xn = rmsnorm(x). */
static void mlp_block(mc_fwd *f, int l, int T) {
    const mc_model *m = f->m;
    mc_backend *be = m->be;
    const mc_layer_w *w = &m->layers[l];
    mc_dims d = mc_model_dims(m);
    mc_wt none = {NULL, MC_F32, false};
    be->rmsnorm(be, f->xn, f->x, w->mlp_norm, T, d.D, (float)m->cfg.rms_norm_eps);
    {
        const mc_lora_module which[2] = {MC_LM_GATE, MC_LM_UP};
        const mc_matmul_out o[2] = {{f->gate, d.F, d.F, w->gate_w, none},
                                    {f->up, d.F, d.F, w->up_w, none}};
        proj_multi(f, l, 2, which, o, f->xn, T, d.D);
    }
    be->swiglu(be, f->gate, f->gate, f->up, (size_t)T * (size_t)d.F);
    proj(f, l, MC_LM_DOWN, f->xn, d.D, f->gate, w->down_w, none, T, d.D, d.F);
    be->add(be, f->x, f->xn, (size_t)T * (size_t)d.D);
}

/* Embeds ids (NULL: the tokens a queued argmax left in ids_dev), runs every layer and
 * computes the requested logits rows (with next != NULL: only each row's argmax, into
 * next; with queue: each row's argmax queued into ids_dev). Positions must already be in
 * pos_host. */
static mc_status run_rows(mc_fwd *f, const row_plan *rp, const int32_t *ids, mc_logits_mode mode,
                          float *logits_host, int32_t *next, bool queue) {
    const mc_model *m = f->m;
    mc_backend *be = m->be;
    mc_dims d = mc_model_dims(m);
    mc_wt none = {NULL, MC_F32, false};
    size_t ids_bytes = (size_t)rp->T * sizeof(int32_t);
    mc_status s = MC_OK;
    int l, r;
    f->view_valid = false;
    for (r = 0; ids && r < rp->T; r++)
        if (ids[r] < 0 || ids[r] >= d.V)
            return mc_fail(MC_ERR_TOKEN_ID, "token id %d is outside the vocabulary (size %d)",
                           ids[r], d.V);
    if (ids) s = be->to_device(be, f->ids_dev, ids, ids_bytes);
    if (s == MC_OK && rp->seqs == NULL && be->fill_positions)
        be->fill_positions(be, f->pos_dev, f->pos_host[0], rp->T); /* consecutive positions */
    else if (s == MC_OK)
        s = be->to_device(be, f->pos_dev, f->pos_host, ids_bytes);
    if (s != MC_OK) return s;
    be->embedding(be, f->x, f->ids_dev, m->embed, rp->T, d.D);
    for (l = 0; l < d.L; l++) {
        attention_block(f, l, rp);
        mlp_block(f, l, rp->T);
    }
    if (rp->seqs) {
        for (r = 0; r < rp->T; r++) f->n_past[rp->seqs[r]]++;
    } else {
        f->n_past[rp->seq] += rp->T;
    }
    if (mode == MC_LOGITS_NONE) return be->sync ? be->sync(be) : MC_OK;
    {
        int first = mode == MC_LOGITS_LAST ? rp->T - 1 : 0;
        int rows = rp->T - first;
        size_t n = (size_t)rows * (size_t)d.V;
        const void *xr = mc_act_at(be, f->x, (size_t)first * (size_t)d.D);
        be->rmsnorm(be, f->xn, xr, m->final_norm, rows, d.D, (float)m->cfg.rms_norm_eps);
        be->matmul(be, f->logits, d.V, f->xn, m->lm_head, none, rows, d.V, d.D);
        if (queue) return be->argmax_queue(be, f->ids_dev, f->logits, rows, d.V);
        if (next) return be->argmax_rows(be, next, f->logits, rows, d.V);
        if (logits_host) return be->to_host_f32(be, logits_host, f->logits, n);
        if (rows > f->view_rows) return be->sync ? be->sync(be) : MC_OK;
        s = be->to_host_f32(be, f->logits_view, f->logits, n);
        f->view_valid = s == MC_OK;
        return s;
    }
}

const float *mc_fwd_logits(const mc_fwd *f) { return f->view_valid ? f->logits_view : NULL; }

mc_status mc_fwd_run(mc_fwd *f, int seq, const int32_t *ids, int T, mc_logits_mode mode,
                     float *logits_host) {
    row_plan rp;
    int t;
    if (seq < 0 || seq >= f->n_seq)
        return mc_fail(MC_ERR_INVALID_ARG, "sequence %d of %d does not exist", seq, f->n_seq);
    if (T <= 0 || T > f->n_batch)
        return mc_fail(MC_ERR_INVALID_ARG, "forward of %d tokens (batch capacity %d)", T, f->n_batch);
    if (f->n_past[seq] + T > f->n_ctx)
        return mc_fail(MC_ERR_CONTEXT_FULL, "context full: %d cached + %d new > %d positions",
                       f->n_past[seq], T, f->n_ctx);
    for (t = 0; t < T; t++) f->pos_host[t] = f->n_past[seq] + t;
    rp.T = T;
    rp.seq = seq;
    rp.seqs = NULL;
    return run_rows(f, &rp, ids, mode, logits_host, NULL, false);
}

/* mc_fwd_step, and with next != NULL the argmax of each row instead of its logits. */
static mc_status step_rows(mc_fwd *f, const int *seqs, const int32_t *ids, int B,
                           float *logits_host, int32_t *next) {
    row_plan rp;
    int b, c;
    if (B <= 0 || B > f->n_batch)
        return mc_fail(MC_ERR_INVALID_ARG, "step of %d sequences (batch capacity %d)", B, f->n_batch);
    for (b = 0; b < B; b++) {
        int s = seqs[b];
        if (s < 0 || s >= f->n_seq)
            return mc_fail(MC_ERR_INVALID_ARG, "sequence %d of %d does not exist", s, f->n_seq);
        for (c = 0; c < b; c++)
            if (seqs[c] == s) return mc_fail(MC_ERR_INVALID_ARG, "sequence %d appears twice", s);
        if (f->n_past[s] + 1 > f->n_ctx)
            return mc_fail(MC_ERR_CONTEXT_FULL, "context full for sequence %d (%d positions)", s,
                           f->n_ctx);
        f->pos_host[b] = f->n_past[s];
    }
    rp.T = B;
    rp.seq = B == 1 ? seqs[0] : -1;
    rp.seqs = B == 1 ? NULL : seqs; /* one sequence: its keys and values go straight to its cache */
    return run_rows(f, &rp, ids, MC_LOGITS_ALL, logits_host, next, false);
}

mc_status mc_fwd_step(mc_fwd *f, const int *seqs, const int32_t *ids, int B, float *logits_host) {
    return step_rows(f, seqs, ids, B, logits_host, NULL);
}

mc_status mc_fwd_step_argmax(mc_fwd *f, const int *seqs, const int32_t *ids, int B, int32_t *next) {
    if (!f->m->be->argmax_rows)
        return mc_fail(MC_ERR_UNSUPPORTED, "backend %s has no argmax_rows", f->m->be->name);
    return step_rows(f, seqs, ids, B, NULL, next);
}

mc_status mc_fwd_step_queue(mc_fwd *f, int seq, const int32_t *id) {
    row_plan rp;
    mc_backend *be = f->m->be;
    if (!be->argmax_queue || !be->argmax_wait)
        return mc_fail(MC_ERR_UNSUPPORTED, "backend %s has no argmax_queue", be->name);
    if (seq < 0 || seq >= f->n_seq)
        return mc_fail(MC_ERR_INVALID_ARG, "sequence %d of %d does not exist", seq, f->n_seq);
    if (f->n_past[seq] + 1 > f->n_ctx)
        return mc_fail(MC_ERR_CONTEXT_FULL, "context full for sequence %d (%d positions)", seq,
                       f->n_ctx);
    f->pos_host[0] = f->n_past[seq];
    rp.T = 1;
    rp.seq = seq;
    rp.seqs = NULL;
    return run_rows(f, &rp, id, MC_LOGITS_ALL, NULL, NULL, true);
}

mc_status mc_fwd_step_wait(mc_fwd *f, int32_t *next) {
    mc_backend *be = f->m->be;
    if (!be->argmax_wait)
        return mc_fail(MC_ERR_UNSUPPORTED, "backend %s has no argmax_wait", be->name);
    return be->argmax_wait(be, next, 1);
}

void mc_fwd_step_drop(mc_fwd *f, int seq) {
    if (seq >= 0 && seq < f->n_seq && f->n_past[seq] > 0) f->n_past[seq]--;
}
