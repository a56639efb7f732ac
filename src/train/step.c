/* step.c - forward and backward of one training micro-batch over the ops table.
 *
 * The decoder layer is a fixed sequence of ops; the forward keeps what the backward needs
 * (or, with activation checkpointing, only each layer's input, recomputing the rest layer
 * by layer in the backward pass). Base weights are frozen: only LoRA A/B get gradients,
 * so the backward stops at the lowest adapted layer. Gradients accumulate (+=) into
 * c->grads, scaled by grad_scale through the loss gradient. */
#include "train.h"

/* ---- buffers ---- */

static void *act_alloc(mc_trainer_core *c, size_t rows, int width, bool *ok) {
    size_t bytes;
    void *p;
    if (!mc_mul_ok(rows * (size_t)width, mc_dtype_size(c->m->be->act_dtype), &bytes)) {
        *ok = false;
        return NULL;
    }
    p = c->m->be->alloc(c->m->be, bytes);
    if (!p) *ok = false;
    return p;
}

/* The activations the backward reads from the forward (full: a layer's own set). The
 * RMSNorm outputs and the SwiGLU product are not among them: every layer writes them into
 * the shared transient set (c->work) and the backward recomputes them from x_in, x_mid,
 * gate and up, which saves a third of the activation memory for two norms and one
 * elementwise product per layer. */
static void acts_alloc(mc_trainer_core *c, mc_layer_acts *a, bool full, bool *ok) {
    mc_dims d = mc_model_dims(c->m);
    size_t N = (size_t)c->max_rows;
    if (!full) return;
    a->q = act_alloc(c, N, d.q_dim, ok);
    a->k = act_alloc(c, N, d.kv_dim, ok);
    a->v = act_alloc(c, N, d.kv_dim, ok);
    if (c->m->cfg.qk_norm) {
        a->qn = act_alloc(c, N, d.q_dim, ok);
        a->kn = act_alloc(c, N, d.kv_dim, ok);
    }
    a->att = act_alloc(c, N, d.q_dim, ok);
    a->x_mid = act_alloc(c, N, d.D, ok);
    a->gate = act_alloc(c, N, d.F, ok);
    a->up = act_alloc(c, N, d.F, ok);
}

/* The transient set: rmsnorm(x_in), rmsnorm(x_mid) and silu(gate) * up of one layer. */
static void transient_alloc(mc_trainer_core *c, mc_layer_acts *a, bool *ok) {
    mc_dims d = mc_model_dims(c->m);
    size_t N = (size_t)c->max_rows;
    a->xn1 = act_alloc(c, N, d.D, ok);
    a->xn2 = act_alloc(c, N, d.D, ok);
    a->h = act_alloc(c, N, d.F, ok);
}

static void acts_free(mc_backend *be, mc_layer_acts *a) {
    void *p[13];
    size_t i;
    p[0] = a->x_in; p[1] = a->xn1; p[2] = a->q; p[3] = a->k; p[4] = a->v; p[5] = a->qn;
    p[6] = a->kn; p[7] = a->att; p[8] = a->x_mid; p[9] = a->xn2; p[10] = a->gate; p[11] = a->up;
    p[12] = a->h;
    for (i = 0; i < 13; i++)
        if (p[i]) be->free(be, p[i]);
}

mc_status mc_trainer_core_create(mc_model *m, mc_adapter *a, int max_rows, bool checkpointing,
                                 mc_trainer_core **out) {
    mc_dims d = mc_model_dims(m);
    mc_backend *be = m->be;
    mc_trainer_core *c;
    size_t N = (size_t)max_rows, widest;
    bool ok = true;
    int l;
    *out = NULL;
    if (max_rows <= 0) return mc_fail(MC_ERR_INVALID_ARG, "training batch of %d rows", max_rows);
    if (a->model != m) return mc_fail(MC_ERR_INVALID_ARG, "the adapter belongs to another model");
    c = mc_calloc(1, sizeof *c);
    if (!c) return mc_fail(MC_ERR_OOM, "out of memory for training state");
    c->m = m;
    c->a = a;
    c->max_rows = max_rows;
    c->checkpointing = checkpointing;
    c->acts = mc_calloc((size_t)d.L, sizeof *c->acts);
    if (!c->acts) ok = false;
    for (l = 0; ok && l < d.L; l++) {
        c->acts[l].x_in = act_alloc(c, N, d.D, &ok);
        acts_alloc(c, &c->acts[l], !checkpointing, &ok);
    }
    acts_alloc(c, &c->work, checkpointing, &ok);
    transient_alloc(c, &c->work, &ok);
    widest = (size_t)MC_MAX(MC_MAX(d.F, d.q_dim), d.D);
    c->x_final = act_alloc(c, N, d.D, &ok);
    c->h_final = act_alloc(c, N, d.D, &ok);
    c->dx = act_alloc(c, N, d.D, &ok);
    c->dtmp = act_alloc(c, N, d.D, &ok);
    c->dq = act_alloc(c, N, d.q_dim, &ok);
    c->dk = act_alloc(c, N, d.kv_dim, &ok);
    c->dv = act_alloc(c, N, d.kv_dim, &ok);
    c->dF1 = act_alloc(c, N, (int)widest, &ok);
    c->dF2 = act_alloc(c, N, (int)widest, &ok);
    c->datt = act_alloc(c, N, d.q_dim, &ok);
    c->drop_buf = act_alloc(c, N, (int)widest, &ok);
    c->grads = be->alloc(be, MC_MAX(a->n_params, (size_t)1) * sizeof(float));
    c->lora_tmp2 = be->alloc(be, N * 3 * (size_t)a->rank * sizeof(float)); /* q, k and v */
    c->xa_slot = mc_malloc((size_t)d.L * MC_LM_COUNT * sizeof *c->xa_slot);
    if (c->xa_slot) {
        size_t n_xa = 0, bytes = 0;
        for (l = 0; l < d.L; l++)
            for (int k = 0; k < MC_LM_COUNT; k++)
                c->xa_slot[l * MC_LM_COUNT + k] =
                    mc_adapter_mod(a, l, (mc_lora_module)k) ? (int)n_xa++ : -1;
        if (mc_mul_ok(n_xa * N, (size_t)a->rank * sizeof(float), &bytes))
            c->lora_xa = be->alloc(be, MC_MAX(bytes, sizeof(float)));
    }
    c->ids_dev = be->alloc(be, N * sizeof(int32_t));
    c->tg_dev = be->alloc(be, N * sizeof(int32_t));
    c->pos_dev = be->alloc(be, N * sizeof(int32_t));
    if (!ok || !c->grads || !c->lora_tmp2 || !c->lora_xa || !c->ids_dev ||
        !c->tg_dev || !c->pos_dev) {
        mc_trainer_core_free(c);
        return mc_fail(MC_ERR_OOM, "out of memory for training activations (%d rows%s)", max_rows,
                       checkpointing ? "" : "; try activation checkpointing");
    }
    be->zero(be, c->grads, a->n_params * sizeof(float));
    *out = c;
    return MC_OK;
}

void mc_trainer_core_free(mc_trainer_core *c) {
    mc_backend *be;
    void *p[14];
    size_t i;
    if (!c) return;
    be = c->m->be;
    if (c->acts) {
        int l;
        for (l = 0; l < c->m->cfg.num_hidden_layers; l++) acts_free(be, &c->acts[l]);
    }
    acts_free(be, &c->work);
    p[0] = c->x_final; p[1] = c->h_final; p[2] = c->dx; p[3] = c->dtmp; p[4] = c->dq;
    p[5] = c->dk; p[6] = c->dv; p[7] = c->dF1; p[8] = c->dF2; p[9] = c->drop_buf;
    p[10] = c->ids_dev; p[11] = c->tg_dev; p[12] = c->pos_dev; p[13] = c->datt;
    for (i = 0; i < 14; i++)
        if (p[i]) be->free(be, p[i]);
    if (c->grads) be->free(be, c->grads);
    if (c->lora_tmp2) be->free(be, c->lora_tmp2);
    if (c->lora_xa) be->free(be, c->lora_xa);
    mc_free(c->xa_slot);
    mc_free(c->acts);
    mc_free(c);
}

/* ---- LoRA pieces ---- */

/* Dropout seed of projection (l, k) in this step. */
static uint64_t drop_seed(const mc_trainer_core *c, int l, int k) {
    uint64_t z = c->dropout_seed ^ ((uint64_t)(l + 1) << 32) ^ (uint64_t)(k + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    return z ^ (z >> 27);
}

/* The LoRA input: dropout(x) in drop_buf while training with dropout, else x. */
static const float *lora_input(mc_trainer_core *c, int l, int k, const void *x, int N, int in) {
    mc_backend *be = c->m->be;
    if (c->a->dropout <= 0) return (const float *)x;
    be->dropout(be, c->drop_buf, x, (size_t)N * (size_t)in, c->a->dropout, drop_seed(c, l, k));
    return (const float *)c->drop_buf;
}

/* The first adapted projection of layer l in k's group (mc_lora_group), NULL when none
 * is: its module in *first and the number adapted in *n (their A matrices follow one
 * another from its A). */
static const mc_lora_mod *group_first(const mc_trainer_core *c, int l, mc_lora_module k,
                                      mc_lora_module *first, int *n) {
    const mc_lora_mod *found = NULL;
    int g0, g1, j;
    mc_lora_group(k, &g0, &g1);
    *first = k;
    *n = 0;
    for (j = g0; j < g1; j++) {
        const mc_lora_mod *mod = mc_adapter_mod(c->a, l, (mc_lora_module)j);
        if (!mod) continue;
        if (!found) {
            found = mod;
            *first = (mc_lora_module)j;
        }
        ++*n;
    }
    return found;
}

/* Without dropout (when the projections of k's group read one input), the group's first
 * adapted projection, its module in *first (its A starts the group's A matrices); NULL
 * with dropout or when none is adapted. */
static const mc_lora_mod *group_head(const mc_trainer_core *c, int l, mc_lora_module k,
                                     mc_lora_module *first) {
    int n;
    return c->a->dropout > 0 ? NULL : group_first(c, l, k, first, &n);
}

/* Projection k's columns of an [N, n r] block of rank-r products shared by the n adapted
 * projections of its group, in their order (*ld = n r). With per_slot the blocks of all
 * groups follow one another in base (the block starts at the first one's xa_slot). */
static float *group_cols(const mc_trainer_core *c, float *base, int l, mc_lora_module k, int *ld,
                         bool per_slot) {
    const int r = c->a->rank;
    mc_lora_module first;
    int n, slot, slot0;
    (void)group_first(c, l, k, &first, &n);
    slot = c->xa_slot[l * MC_LM_COUNT + (int)k];
    slot0 = c->xa_slot[l * MC_LM_COUNT + (int)first];
    *ld = n * r;
    if (per_slot) base += (size_t)slot0 * (size_t)c->max_rows * (size_t)r;
    return base + (size_t)(slot - slot0) * (size_t)r;
}

/* Where projection k of layer l keeps dropout(x) A^T from its forward. */
static float *lora_xa(const mc_trainer_core *c, int l, mc_lora_module k, int *ld) {
    return group_cols(c, c->lora_xa, l, k, ld, true);
}

/* Projection k's columns s dy B of the scratch c->lora_tmp2. */
static float *lora_dyb(const mc_trainer_core *c, int l, mc_lora_module k, int *ld) {
    return group_cols(c, c->lora_tmp2, l, k, ld, false);
}

/* Without dropout the projections of a group read the same LoRA input x, so one product
 * x [A_1; ...; A_n]^T [N, n r] gives each its x A^T (called before their proj_fwd). */
static void group_fwd(mc_trainer_core *c, int l, mc_lora_module k, const void *x, int N, int in) {
    mc_backend *be = c->m->be;
    mc_lora_module first;
    const mc_lora_mod *mod = group_head(c, l, k, &first);
    float *xa;
    int ld;
    if (!mod) return;
    xa = lora_xa(c, l, first, &ld);
    be->gemm_f32(be, false, true, N, ld, in, 1.0f, (const float *)x, in, mod->A, in, 0.0f, xa,
                 ld);
}

/* y += s * (dropout(x) A^T) B^T for projection k of layer l over N rows, when adapted. */
static void proj_lora_fwd(mc_trainer_core *c, int l, mc_lora_module k, void *y, const void *x,
                          int N, int out, int in) {
    mc_backend *be = c->m->be;
    const mc_lora_mod *mod = mc_adapter_mod(c->a, l, k);
    const int r = c->a->rank;
    int ld;
    float *xa;
    if (!mod) return;
    xa = lora_xa(c, l, k, &ld);
    if (c->a->dropout > 0) { /* else group_fwd made it */
        const float *xd = lora_input(c, l, (int)k, x, N, in);
        be->gemm_f32(be, false, true, N, r, in, 1.0f, xd, in, mod->A, in, 0.0f, xa, ld);
    }
    be->gemm_f32(be, false, true, N, out, r, c->a->scale, xa, ld, mod->B, r, 1.0f, (float *)y,
                 out);
}

/* y = x W^T + b (+ s * (dropout(x) A^T) B^T) for projection k of layer l over N rows. */
static void proj_fwd(mc_trainer_core *c, int l, mc_lora_module k, void *y, const void *x, mc_wt w,
                     mc_wt b, int N, int out, int in) {
    mc_backend *be = c->m->be;
    be->matmul(be, y, out, x, w, b, N, out, in);
    proj_lora_fwd(c, l, k, y, x, N, out, in);
}

/* When projection k of layer l is adapted, given dy [N, out]: gB += s dy^T (xd A^T) (xd A^T
 * as the forward kept it) and t = s dy B (k's columns of c->lora_tmp2). */
static void proj_lora_bwd(mc_trainer_core *c, int l, mc_lora_module k, const void *dy, int N,
                          int out) {
    mc_backend *be = c->m->be;
    const mc_lora_mod *mod = mc_adapter_mod(c->a, l, k);
    const mc_adapter *a = c->a;
    const int r = a->rank;
    const float s = a->scale;
    int ldx, ldt;
    float *xa, *t;
    if (!mod) return;
    xa = lora_xa(c, l, k, &ldx);
    t = lora_dyb(c, l, k, &ldt);
    be->gemm_f32(be, true, false, out, r, N, s, (const float *)dy, out, xa, ldx, 1.0f,
                 c->grads + (mod->B - a->params), r);
    be->gemm_f32(be, false, false, N, r, out, s, (const float *)dy, out, mod->B, r, 0.0f, t, ldt);
}

/* Backward of proj_fwd given dy [N, out]: dx_acc (+)= dy W (accumulate selects), and when
 * adapted proj_lora_bwd; with dropout also gA += t^T xd and dx_acc += dropout'(t A), which
 * group_bwd otherwise does for the whole group. */
static void proj_bwd(mc_trainer_core *c, int l, mc_lora_module k, void *dx_acc, bool accumulate,
                     const void *dy, const void *x, mc_wt w, int N, int out, int in) {
    mc_backend *be = c->m->be;
    const mc_lora_mod *mod = mc_adapter_mod(c->a, l, k);
    const mc_adapter *a = c->a;
    const int r = a->rank;
    int ldt;
    float *t;
    size_t n;
    be->matmul_dx(be, dx_acc, dy, w, N, out, in, accumulate);
    proj_lora_bwd(c, l, k, dy, N, out);
    if (!mod || a->dropout <= 0) return;
    t = lora_dyb(c, l, k, &ldt);
    n = (size_t)N * (size_t)in;
    be->gemm_f32(be, true, false, r, in, N, 1.0f, t, ldt, lora_input(c, l, (int)k, x, N, in), in,
                 1.0f, c->grads + (mod->A - a->params), in);
    be->gemm_f32(be, false, false, N, in, r, 1.0f, t, ldt, mod->A, in, 0.0f,
                 (float *)c->drop_buf, in);
    be->dropout(be, c->drop_buf, c->drop_buf, n, a->dropout, drop_seed(c, l, (int)k));
    be->add(be, dx_acc, c->drop_buf, n);
}

/* proj_bwd of the n projections ks[i] of one input x [N, in] into dx_acc (overwritten by
 * the first): without dropout their frozen input-gradient GEMMs first, then their LoRA
 * products (a backend may run the products of consecutive projections together). */
static void projs_bwd(mc_trainer_core *c, int l, int n, const mc_lora_module *ks, void *dx_acc,
                      const void *const *dys, const void *x, const mc_wt *ws, const int *outs,
                      int N, int in) {
    mc_backend *be = c->m->be;
    int i;
    if (c->a->dropout > 0) {
        for (i = 0; i < n; i++)
            proj_bwd(c, l, ks[i], dx_acc, i > 0, dys[i], x, ws[i], N, outs[i], in);
        return;
    }
    for (i = 0; i < n; i++) be->matmul_dx(be, dx_acc, dys[i], ws[i], N, outs[i], in, i > 0);
    for (i = 0; i < n; i++) proj_lora_bwd(c, l, ks[i], dys[i], N, outs[i]);
}

/* Without dropout, the rest of the backward of k's group after proj_bwd of its members:
 * with T = [t_1, ..., t_n] [N, n r] and A = [A_1; ...; A_n] one product each,
 * dx_acc += T A (when dx_acc is not NULL) and [gA_1; ...; gA_n] += T^T x (when x is not
 * NULL). */
static void group_bwd(mc_trainer_core *c, int l, mc_lora_module k, void *dx_acc, const void *x,
                      int N, int in) {
    mc_backend *be = c->m->be;
    mc_lora_module first;
    const mc_lora_mod *mod = group_head(c, l, k, &first);
    float *t;
    int ld;
    if (!mod) return;
    t = lora_dyb(c, l, first, &ld);
    if (dx_acc)
        be->gemm_f32(be, false, false, N, in, ld, 1.0f, t, ld, mod->A, in, 1.0f, (float *)dx_acc,
                     in);
    if (x)
        be->gemm_f32(be, true, false, ld, in, N, 1.0f, t, ld, (const float *)x, in, 1.0f,
                     c->grads + (mod->A - c->a->params), in);
}

/* ---- layers ---- */

/* Attention over every segment of the batch (positions restart in each). */
static void attention_segments(mc_trainer_core *c, const mc_batch *b, void *att, const void *q,
                               const void *k, const void *v) {
    mc_backend *be = c->m->be;
    mc_dims d = mc_model_dims(c->m);
    int s;
    for (s = 0; s < b->n_seg; s++) {
        size_t r0 = (size_t)b->seg_start[s];
        be->attention(be, mc_act_at(be, att, r0 * (size_t)d.q_dim),
                      mc_act_at_c(be, q, r0 * (size_t)d.q_dim),
                      mc_act_at_c(be, k, r0 * (size_t)d.kv_dim),
                      mc_act_at_c(be, v, r0 * (size_t)d.kv_dim), b->seg_len[s], 0, d.Hq, d.Hkv,
                      d.hd);
    }
}

/* Forward of layer l from x_in into the saved acts a (all but x_in), the transient set
 * c->work (xn1, xn2, h) and x_out. */
static void layer_fwd(mc_trainer_core *c, const mc_batch *b, int l, const void *x_in,
                      mc_layer_acts *a, void *x_out) {
    const mc_model *m = c->m;
    mc_backend *be = m->be;
    const mc_layer_w *w = &m->layers[l];
    mc_dims d = mc_model_dims(m);
    int N = b->N;
    size_t nd = (size_t)N * (size_t)d.D;
    float eps = (float)m->cfg.rms_norm_eps, theta = (float)m->cfg.rope_theta;
    mc_wt none = {NULL, MC_F32, false};
    mc_layer_acts *t = &c->work;
    void *qo = m->cfg.qk_norm ? a->qn : a->q, *ko = m->cfg.qk_norm ? a->kn : a->k;

    be->rmsnorm(be, t->xn1, x_in, w->attn_norm, N, d.D, eps);
    group_fwd(c, l, MC_LM_Q, t->xn1, N, d.D);
    /* the three frozen GEMMs first: the LoRA updates then come right before the RoPE that
     * reads their outputs (a backend may fold them into it) */
    be->matmul(be, qo, d.q_dim, t->xn1, w->q_w, w->q_b, N, d.q_dim, d.D);
    be->matmul(be, ko, d.kv_dim, t->xn1, w->k_w, w->k_b, N, d.kv_dim, d.D);
    be->matmul(be, a->v, d.kv_dim, t->xn1, w->v_w, w->v_b, N, d.kv_dim, d.D);
    proj_lora_fwd(c, l, MC_LM_Q, qo, t->xn1, N, d.q_dim, d.D);
    proj_lora_fwd(c, l, MC_LM_K, ko, t->xn1, N, d.kv_dim, d.D);
    proj_lora_fwd(c, l, MC_LM_V, a->v, t->xn1, N, d.kv_dim, d.D);
    if (m->cfg.qk_norm) {
        be->rmsnorm(be, a->q, a->qn, w->q_norm, N * d.Hq, d.hd, eps);
        be->rmsnorm(be, a->k, a->kn, w->k_norm, N * d.Hkv, d.hd, eps);
    }
    be->rope(be, a->q, d.q_dim, c->pos_dev, N, d.Hq, d.hd, theta);
    be->rope(be, a->k, d.kv_dim, c->pos_dev, N, d.Hkv, d.hd, theta);
    attention_segments(c, b, a->att, a->q, a->k, a->v);
    group_fwd(c, l, MC_LM_O, a->att, N, d.q_dim);
    proj_fwd(c, l, MC_LM_O, c->dtmp, a->att, w->o_w, w->o_b, N, d.D, d.q_dim);
    (void)be->copy(be, a->x_mid, x_in, nd * mc_dtype_size(be->act_dtype));
    be->add(be, a->x_mid, c->dtmp, nd);

    be->rmsnorm(be, t->xn2, a->x_mid, w->mlp_norm, N, d.D, eps);
    group_fwd(c, l, MC_LM_GATE, t->xn2, N, d.D);
    /* both frozen GEMMs first: the two LoRA updates then come right before the SwiGLU that
     * reads their outputs (a backend may fold them into it) */
    be->matmul(be, a->gate, d.F, t->xn2, w->gate_w, none, N, d.F, d.D);
    be->matmul(be, a->up, d.F, t->xn2, w->up_w, none, N, d.F, d.D);
    proj_lora_fwd(c, l, MC_LM_GATE, a->gate, t->xn2, N, d.F, d.D);
    proj_lora_fwd(c, l, MC_LM_UP, a->up, t->xn2, N, d.F, d.D);
    be->swiglu(be, t->h, a->gate, a->up, (size_t)N * (size_t)d.F);
    group_fwd(c, l, MC_LM_DOWN, t->h, N, d.F);
    proj_fwd(c, l, MC_LM_DOWN, c->dtmp, t->h, w->down_w, none, N, d.D, d.F);
    (void)be->copy(be, x_out, a->x_mid, nd * mc_dtype_size(be->act_dtype));
    be->add(be, x_out, c->dtmp, nd);
}

/* Backward of layer l: c->dx holds dL/dx_out on entry and dL/dx_in on return. With
 * checkpointing the transient set c->work still holds this layer's xn1, xn2 and h (the
 * layer's forward just ran again). Otherwise they are needed only as the LoRA inputs of
 * the projections that read them: with dropout they are recomputed first; without, the
 * A gradients that read them wait for the backward op that gives them on its way
 * (rmsnorm_backward gives xn1 and xn2, swiglu_backward h). */
static void layer_bwd(mc_trainer_core *c, const mc_batch *b, int l, const void *x_in,
                      const mc_layer_acts *a) {
    const mc_model *m = c->m;
    mc_backend *be = m->be;
    const mc_layer_w *w = &m->layers[l];
    mc_dims d = mc_model_dims(m);
    int N = b->N, s;
    float eps = (float)m->cfg.rms_norm_eps, theta = (float)m->cfg.rope_theta;
    void *dh = c->dF1, *dup = c->dF2, *datt = c->datt;
    const mc_layer_acts *t = &c->work;
    const mc_adapter *ad = c->a;
    const bool late = !c->checkpointing && ad->dropout <= 0;
    const bool need_xn1 = mc_adapter_mod(ad, l, MC_LM_Q) || mc_adapter_mod(ad, l, MC_LM_K) ||
                          mc_adapter_mod(ad, l, MC_LM_V);
    const bool need_xn2 = mc_adapter_mod(ad, l, MC_LM_GATE) || mc_adapter_mod(ad, l, MC_LM_UP);
    const bool need_h = mc_adapter_mod(ad, l, MC_LM_DOWN) != NULL;

    if (!c->checkpointing && !late) {
        if (need_xn1) be->rmsnorm(be, t->xn1, x_in, w->attn_norm, N, d.D, eps);
        if (need_xn2) be->rmsnorm(be, t->xn2, a->x_mid, w->mlp_norm, N, d.D, eps);
        if (need_h) be->swiglu(be, t->h, a->gate, a->up, (size_t)N * (size_t)d.F);
    }

    /* MLP: x_out = x_mid + down(h); h = silu(gate) * up; gate, up = proj(xn2) */
    proj_bwd(c, l, MC_LM_DOWN, dh, false, c->dx, t->h, w->down_w, N, d.D, d.F);
    group_bwd(c, l, MC_LM_DOWN, dh, NULL, N, d.F);
    be->swiglu_backward(be, dh, dup, late && need_h ? t->h : NULL, dh, a->gate, a->up,
                        (size_t)N * (size_t)d.F);
    group_bwd(c, l, MC_LM_DOWN, NULL, t->h, N, d.F);
    {
        const mc_lora_module ks[2] = {MC_LM_GATE, MC_LM_UP};
        const void *dys[2] = {dh, dup};
        const mc_wt ws[2] = {w->gate_w, w->up_w};
        const int outs[2] = {d.F, d.F};
        projs_bwd(c, l, 2, ks, c->dtmp, dys, t->xn2, ws, outs, N, d.D);
    }
    group_bwd(c, l, MC_LM_GATE, c->dtmp, NULL, N, d.D);
    /* xn2 = rmsnorm(x_mid): dx_mid = dx_out + rmsnorm'(dxn2) */
    be->rmsnorm_backward(be, c->dx, late && need_xn2 ? t->xn2 : NULL, c->dtmp, a->x_mid,
                         w->mlp_norm, N, d.D, eps);
    group_bwd(c, l, MC_LM_GATE, NULL, t->xn2, N, d.D);

    /* attention: x_mid = x_in + o(att) */
    proj_bwd(c, l, MC_LM_O, datt, false, c->dx, a->att, w->o_w, N, d.D, d.q_dim);
    group_bwd(c, l, MC_LM_O, datt, a->att, N, d.q_dim);
    for (s = 0; s < b->n_seg; s++) {
        size_t r0 = (size_t)b->seg_start[s];
        be->attention_backward(be, mc_act_at(be, c->dq, r0 * (size_t)d.q_dim),
                               mc_act_at(be, c->dk, r0 * (size_t)d.kv_dim),
                               mc_act_at(be, c->dv, r0 * (size_t)d.kv_dim),
                               mc_act_at_c(be, datt, r0 * (size_t)d.q_dim),
                               mc_act_at_c(be, a->q, r0 * (size_t)d.q_dim),
                               mc_act_at_c(be, a->k, r0 * (size_t)d.kv_dim),
                               mc_act_at_c(be, a->v, r0 * (size_t)d.kv_dim), b->seg_len[s], d.Hq,
                               d.Hkv, d.hd);
    }
    be->rope_backward(be, c->dq, d.q_dim, c->pos_dev, N, d.Hq, d.hd, theta);
    be->rope_backward(be, c->dk, d.kv_dim, c->pos_dev, N, d.Hkv, d.hd, theta);
    if (m->cfg.qk_norm) { /* q = rmsnorm_head(qn): dqn = rmsnorm'(dq), via zeroed scratch */
        size_t qb = (size_t)N * (size_t)d.q_dim * mc_dtype_size(be->act_dtype);
        size_t kb = (size_t)N * (size_t)d.kv_dim * mc_dtype_size(be->act_dtype);
        be->zero(be, datt, qb);
        be->rmsnorm_backward(be, datt, NULL, c->dq, a->qn, w->q_norm, N * d.Hq, d.hd, eps);
        (void)be->copy(be, c->dq, datt, qb);
        be->zero(be, datt, kb);
        be->rmsnorm_backward(be, datt, NULL, c->dk, a->kn, w->k_norm, N * d.Hkv, d.hd, eps);
        (void)be->copy(be, c->dk, datt, kb);
    }
    {
        const mc_lora_module ks[3] = {MC_LM_Q, MC_LM_K, MC_LM_V};
        const void *dys[3] = {c->dq, c->dk, c->dv};
        const mc_wt ws[3] = {w->q_w, w->k_w, w->v_w};
        const int outs[3] = {d.q_dim, d.kv_dim, d.kv_dim};
        projs_bwd(c, l, 3, ks, c->dtmp, dys, t->xn1, ws, outs, N, d.D);
    }
    group_bwd(c, l, MC_LM_Q, c->dtmp, NULL, N, d.D);
    /* xn1 = rmsnorm(x_in): dx_in = dx_mid + rmsnorm'(dxn1) */
    be->rmsnorm_backward(be, c->dx, late && need_xn1 ? t->xn1 : NULL, c->dtmp, x_in,
                         w->attn_norm, N, d.D, eps);
    group_bwd(c, l, MC_LM_Q, NULL, t->xn1, N, d.D);
}

/* ---- the step ---- */

mc_status mc_train_microbatch(mc_trainer_core *c, const mc_batch *b, float grad_scale,
                              bool want_grad, double *loss_sum) {
    mc_model *m = c->m;
    mc_backend *be = m->be;
    mc_dims d = mc_model_dims(m);
    int N = b->N, l;
    double loss = 0;
    size_t ids_bytes = (size_t)N * sizeof(int32_t);
    mc_status s;
    if (N <= 0 || N > c->max_rows)
        return mc_fail(MC_ERR_INVALID_ARG, "micro-batch of %d rows (capacity %d)", N, c->max_rows);
    s = be->to_device(be, c->ids_dev, b->ids, ids_bytes);
    if (s == MC_OK) s = be->to_device(be, c->tg_dev, b->targets, ids_bytes);
    if (s == MC_OK) s = be->to_device(be, c->pos_dev, b->pos, ids_bytes);
    if (s != MC_OK) return s;

    be->embedding(be, c->acts[0].x_in, c->ids_dev, m->embed, N, d.D);
    for (l = 0; l < d.L; l++) {
        mc_layer_acts *a = c->checkpointing ? &c->work : &c->acts[l];
        void *x_out = l + 1 < d.L ? c->acts[l + 1].x_in : c->x_final;
        layer_fwd(c, b, l, c->acts[l].x_in, a, x_out);
    }
    be->rmsnorm(be, c->h_final, c->x_final, m->final_norm, N, d.D, (float)m->cfg.rms_norm_eps);
    s = be->linear_xent(be, want_grad ? c->dtmp : NULL, &loss, c->h_final, m->lm_head, c->tg_dev,
                        N, d.D, d.V, grad_scale);
    if (s != MC_OK) return s;
    if (!(loss == loss) || loss > 1e300)
        return mc_fail(MC_ERR_NUMERIC, "the loss is %g (not finite)", loss);
    *loss_sum += loss;
    if (!want_grad) return be->sync ? be->sync(be) : MC_OK;

    be->zero(be, c->dx, (size_t)N * (size_t)d.D * mc_dtype_size(be->act_dtype));
    be->rmsnorm_backward(be, c->dx, NULL, c->dtmp, c->x_final, m->final_norm, N, d.D,
                         (float)m->cfg.rms_norm_eps);
    for (l = d.L - 1; l >= c->a->first_layer; l--) {
        mc_layer_acts *a = &c->acts[l];
        if (c->checkpointing) {
            /* recompute this layer's activations; its output goes to scratch */
            layer_fwd(c, b, l, c->acts[l].x_in, &c->work, c->h_final);
            a = &c->work;
        }
        layer_bwd(c, b, l, c->acts[l].x_in, a);
    }
    return be->sync ? be->sync(be) : MC_OK;
}

/* ---- batches ---- */

mc_status mc_batch_reserve(mc_batch *b, int rows, int segs) {
    if (rows > b->cap_rows) {
        int32_t *ids = mc_realloc(b->ids, (size_t)rows * sizeof *ids);
        int32_t *tg, *pos;
        if (!ids) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
        b->ids = ids;
        tg = mc_realloc(b->targets, (size_t)rows * sizeof *tg);
        if (!tg) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
        b->targets = tg;
        pos = mc_realloc(b->pos, (size_t)rows * sizeof *pos);
        if (!pos) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
        b->pos = pos;
        b->cap_rows = rows;
    }
    if (segs > b->cap_seg) {
        int *st = mc_realloc(b->seg_start, (size_t)segs * sizeof *st);
        int *ln;
        if (!st) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
        b->seg_start = st;
        ln = mc_realloc(b->seg_len, (size_t)segs * sizeof *ln);
        if (!ln) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
        b->seg_len = ln;
        b->cap_seg = segs;
    }
    return MC_OK;
}

void mc_batch_clear(mc_batch *b) {
    b->N = 0;
    b->n_seg = 0;
    b->n_targets = 0;
}

void mc_batch_free(mc_batch *b) {
    mc_free(b->ids);
    mc_free(b->targets);
    mc_free(b->pos);
    mc_free(b->seg_start);
    mc_free(b->seg_len);
    memset(b, 0, sizeof *b);
}

mc_status mc_batch_add(mc_batch *b, const int32_t *ids, const int32_t *tg, int n) {
    int i;
    mc_status s;
    if (n <= 0) return MC_OK;
    /* grow geometrically, and only when full (a refilled batch keeps its capacity) */
    s = mc_batch_reserve(b, b->N + n > b->cap_rows ? MC_MAX(b->N + n, 2 * b->cap_rows) : 0,
                         b->n_seg + 1 > b->cap_seg ? MC_MAX(b->n_seg + 1, 2 * b->cap_seg) : 0);
    if (s != MC_OK) return s;
    b->seg_start[b->n_seg] = b->N;
    b->seg_len[b->n_seg] = n;
    b->n_seg++;
    for (i = 0; i < n; i++) {
        b->ids[b->N + i] = ids[i];
        b->targets[b->N + i] = tg[i];
        b->pos[b->N + i] = i;
        if (tg[i] >= 0) b->n_targets++;
    }
    b->N += n;
    return MC_OK;
}
