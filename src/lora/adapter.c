/* adapter.c - LoRA adapters in memory: allocation, PEFT initialisation, the forward hook. */
#include <assert.h>
#include <math.h>

#include "lora.h"

static const char *const k_mod_names[MC_LM_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

const char *mc_lora_module_name(mc_lora_module m) {
    return (unsigned)m < MC_LM_COUNT ? k_mod_names[m] : "?";
}

const char *mc_lora_module_parent(mc_lora_module m) { return m <= MC_LM_O ? "self_attn" : "mlp"; }

void mc_lora_module_dims(const mc_dims *d, mc_lora_module m, int *in, int *out) {
    switch (m) {
    case MC_LM_Q: *in = d->D; *out = d->q_dim; break;
    case MC_LM_K:
    case MC_LM_V: *in = d->D; *out = d->kv_dim; break;
    case MC_LM_O: *in = d->q_dim; *out = d->D; break;
    case MC_LM_GATE:
    case MC_LM_UP: *in = d->D; *out = d->F; break;
    case MC_LM_DOWN: *in = d->F; *out = d->D; break;
    case MC_LM_COUNT:
    default: *in = 0; *out = 0; break;
    }
}

mc_status mc_adapter_alloc(const mc_model *m, int rank, float alpha, bool rslora, float dropout,
                           unsigned targets, int first_layer, mc_adapter **out) {
    mc_dims d = mc_model_dims(m);
    mc_adapter *a;
    size_t total = 0, off = 0;
    int l, k;
    *out = NULL;
    if (rank <= 0 || rank > 4096)
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA rank must be in 1..4096 (got %d)", rank);
    if (!isfinite(alpha) || alpha <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA alpha must be > 0 (got %g)", (double)alpha);
    if (!(dropout >= 0 && dropout < 1))
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA dropout must be in [0, 1) (got %g)", (double)dropout);
    if (targets == 0 || targets >= (1u << MC_LM_COUNT))
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA needs at least one target projection");
    if (first_layer < 0 || first_layer >= d.L)
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA layers: first layer %d outside 0..%d", first_layer,
                       d.L - 1);
    a = mc_calloc(1, sizeof *a);
    if (!a) return mc_fail(MC_ERR_OOM, "out of memory for an adapter");
    a->model = m;
    a->rank = rank;
    a->alpha = alpha;
    a->rslora = rslora;
    a->dropout = dropout;
    a->scale = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    a->targets = targets;
    a->first_layer = first_layer;
    a->mods = mc_calloc((size_t)d.L * MC_LM_COUNT, sizeof *a->mods);
    if (!a->mods) goto oom;
    for (l = first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT; k++) {
            int in, o;
            if (!(targets & (1u << k))) continue;
            mc_lora_module_dims(&d, (mc_lora_module)k, &in, &o);
            total += (size_t)rank * (size_t)(in + o);
        }
    a->n_params = total;
    a->params = m->be->alloc(m->be, total * sizeof(float));
    if (!a->params) goto oom;
    m->be->zero(m->be, a->params, total * sizeof(float));
    for (l = first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT;) { /* one group a pass: its A matrices, then its B */
            int g0, g1, j;
            mc_lora_group((mc_lora_module)k, &g0, &g1);
            for (j = g0; j < g1; j++) {
                mc_lora_mod *mod = &a->mods[(size_t)l * MC_LM_COUNT + (size_t)j];
                if (!(targets & (1u << j))) continue;
                mc_lora_module_dims(&d, (mc_lora_module)j, &mod->in, &mod->out);
                mod->A = a->params + off;
                off += (size_t)rank * (size_t)mod->in;
            }
            for (j = g0; j < g1; j++) {
                mc_lora_mod *mod = &a->mods[(size_t)l * MC_LM_COUNT + (size_t)j];
                if (!(targets & (1u << j))) continue;
                mod->B = a->params + off;
                off += (size_t)rank * (size_t)mod->out;
            }
            k = g1;
        }
    *out = a;
    return MC_OK;
oom:
    mc_adapter_free(a);
    return mc_fail(MC_ERR_OOM, "out of memory for LoRA parameters (%zu floats)", total);
}

mc_status mc_adapter_init_peft(mc_adapter *a, uint64_t seed) {
    mc_backend *be = a->model->be;
    mc_dims d = mc_model_dims(a->model);
    mc_rng rng;
    mc_status s;
    int l, k;
    size_t i;
    mc_rng_seed(&rng, seed);
    be->zero(be, a->params, a->n_params * sizeof(float));
    for (l = a->first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT; k++) {
            const mc_lora_mod *mod = mc_adapter_mod(a, l, (mc_lora_module)k);
            size_t n;
            float bound, *host;
            if (!mod) continue;
            n = (size_t)a->rank * (size_t)mod->in;
            bound = 1.0f / sqrtf((float)mod->in);
            host = mc_malloc(n * sizeof *host);
            if (!host) return mc_fail(MC_ERR_OOM, "out of memory initialising LoRA weights");
            for (i = 0; i < n; i++) host[i] = (float)(mc_rng_uniform(&rng) * 2.0 - 1.0) * bound;
            s = be->to_device(be, mod->A, host, n * sizeof *host);
            mc_free(host);
            if (s != MC_OK) return s;
        }
    return MC_OK;
}

void mc_adapter_free(mc_adapter *a) {
    if (!a) return;
    if (a->params) a->model->be->free(a->model->be, a->params);
    mc_free(a->mods);
    mc_free(a->base_model);
    mc_free(a);
}

void mc_lora_apply(mc_backend *be, const mc_lora_mod *mod, int r, float scale, void *y, int ldy,
                   const void *x, int T, float *tmp) {
    /* tmp[T, r] = x[T, in] A^T ; y[T, out] += scale * tmp B^T */
    be->gemm_f32(be, false, true, T, r, mod->in, 1.0f, (const float *)x, mod->in, mod->A, mod->in,
                 0.0f, tmp, r);
    be->gemm_f32(be, false, true, T, mod->out, r, scale, tmp, r, mod->B, r, 1.0f, (float *)y, ldy);
}

mc_lora_params mc_lora_default_params(void) {
    mc_lora_params p;
    memset(&p, 0, sizeof p);
    p.rank = 8;
    p.alpha = 16.0f;
    p.targets = MC_LORA_ALL;
    return p;
}

mc_status mc_adapter_create(const mc_model *model, const mc_lora_params *params, mc_adapter **out) {
    mc_lora_params p = params ? *params : mc_lora_default_params();
    int L, first;
    mc_status s;
    if (!model || !out) return mc_fail(MC_ERR_INVALID_ARG, "mc_adapter_create: NULL argument");
    *out = NULL;
    L = model->cfg.num_hidden_layers;
    if (p.num_layers < -1 || p.num_layers > L)
        return mc_fail(MC_ERR_INVALID_ARG, "LoRA num_layers must be -1, 0 or 1..%d (got %d)", L,
                       p.num_layers);
    first = p.num_layers <= 0 ? 0 : L - p.num_layers;
    s = mc_adapter_alloc(model, p.rank, p.alpha, p.rslora != 0, p.dropout, p.targets, first, out);
    if (s != MC_OK) return s;
    assert(*out); /* mc_adapter_alloc returns MC_OK only with an adapter */
    s = mc_adapter_init_peft(*out, p.seed);
    if (s != MC_OK) {
        mc_adapter_free(*out);
        *out = NULL;
    }
    return s;
}

size_t mc_adapter_n_params(const mc_adapter *a) { return a ? a->n_params : 0; }
