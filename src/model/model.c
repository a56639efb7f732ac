/* model.c - loading a checkpoint folder: config, safetensors, weight binding with
 * presence and shape checks, the backend, and the public model API. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef MC_HAVE_CUDA
#include "../backend/cuda/cuda_backend.h"
#endif

mc_model_params mc_model_default_params(void) {
    mc_model_params p;
    memset(&p, 0, sizeof p);
    p.device = "cpu";
    return p;
}

mc_dims mc_model_dims(const mc_model *m) {
    mc_dims d;
    d.D = m->cfg.hidden_size;
    d.F = m->cfg.intermediate_size;
    d.V = m->cfg.vocab_size;
    d.L = m->cfg.num_hidden_layers;
    d.Hq = m->cfg.num_attention_heads;
    d.Hkv = m->cfg.num_key_value_heads;
    d.hd = m->cfg.head_dim;
    d.q_dim = d.Hq * d.hd;
    d.kv_dim = d.Hkv * d.hd;
    return d;
}

/* Formats a shape as "[a, b]" into buf. */
static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t off = 0;
    int i;
    off += (size_t)snprintf(buf, cap, "[");
    for (i = 0; i < ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < cap) (void)snprintf(buf + off, cap - off, "]");
}

/* Binds tensor `name` with the expected shape (rows, cols; cols == 0 for a vector).
 * optional: absence is fine (out->data = NULL). Checks dtype and exact shape. */
static mc_status bind(mc_model *m, const char *name, int64_t rows, int64_t cols, bool optional,
                      mc_wt *out) {
    const mc_st_tensor *t = mc_st_find(&m->st, name);
    int ndim = cols ? 2 : 1;
    int64_t want[2];
    mc_dtype dt;
    want[0] = rows;
    want[1] = cols;
    out->data = NULL;
    out->dtype = MC_F32;
    out->mlp = false;
    if (!t) {
        if (optional) return MC_OK;
        return mc_fail(MC_ERR_MISSING_TENSOR, "tensor '%s' is missing from the checkpoint", name);
    }
    if (!mc_st_dtype_compute(t->st_dtype, &dt))
        return mc_fail(MC_ERR_DTYPE, "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16",
                       t->file, name, mc_st_dtype_name(t->st_dtype));
    if (t->ndim != ndim || t->shape[0] != want[0] || (ndim == 2 && t->shape[1] != want[1])) {
        char got[128], exp[128];
        shape_str(got, sizeof got, t->ndim, t->shape);
        shape_str(exp, sizeof exp, ndim, want);
        return mc_fail(MC_ERR_SHAPE, "%s: tensor '%s' has shape %s; the config implies %s", t->file,
                       name, got, exp);
    }
    out->dtype = dt;
    if (m->be->weights) {
        mc_status s = m->be->weights(m->be, t->data, t->nbytes, &out->data);
        if (s != MC_OK) return s;
        m->dev_weights[m->n_dev++] = out->data;
    } else {
        out->data = t->data;
    }
    m->n_params += (uint64_t)rows * (uint64_t)(cols ? cols : 1);
    m->weight_bytes += t->nbytes;
    return MC_OK;
}

/* Binds one layer's tensors under "model.layers.<i>.". */
static mc_status bind_layer(mc_model *m, int i, mc_layer_w *w) {
    mc_dims d = mc_model_dims(m);
    const mc_config *c = &m->cfg;
    char name[160];
    mc_status s = MC_OK;
#define BIND(suffix, rows, cols, opt, dst)                                                  \
    do {                                                                                    \
        (void)snprintf(name, sizeof name, "model.layers.%d.%s", i, suffix);                 \
        s = bind(m, name, rows, cols, opt, dst);                                            \
        if (s != MC_OK) return s;                                                           \
    } while (0)
    BIND("input_layernorm.weight", d.D, 0, false, &w->attn_norm);
    BIND("self_attn.q_proj.weight", d.q_dim, d.D, false, &w->q_w);
    BIND("self_attn.k_proj.weight", d.kv_dim, d.D, false, &w->k_w);
    BIND("self_attn.v_proj.weight", d.kv_dim, d.D, false, &w->v_w);
    BIND("self_attn.o_proj.weight", d.D, d.q_dim, false, &w->o_w);
    if (c->qkv_bias) {
        BIND("self_attn.q_proj.bias", d.q_dim, 0, false, &w->q_b);
        BIND("self_attn.k_proj.bias", d.kv_dim, 0, false, &w->k_b);
        BIND("self_attn.v_proj.bias", d.kv_dim, 0, false, &w->v_b);
        if (c->arch == MC_ARCH_LLAMA) BIND("self_attn.o_proj.bias", d.D, 0, false, &w->o_b);
    }
    if (c->qk_norm) {
        BIND("self_attn.q_norm.weight", d.hd, 0, false, &w->q_norm);
        BIND("self_attn.k_norm.weight", d.hd, 0, false, &w->k_norm);
    }
    BIND("post_attention_layernorm.weight", d.D, 0, false, &w->mlp_norm);
    BIND("mlp.gate_proj.weight", d.F, d.D, false, &w->gate_w);
    BIND("mlp.up_proj.weight", d.F, d.D, false, &w->up_w);
    BIND("mlp.down_proj.weight", d.D, d.F, false, &w->down_w);
#undef BIND
    w->gate_w.mlp = w->up_w.mlp = w->down_w.mlp = true;
    return s;
}

/* Binds every tensor the config implies. */
static mc_status bind_all(mc_model *m) {
    mc_dims d = mc_model_dims(m);
    mc_status s;
    int i;
    size_t max_dev = (size_t)d.L * 20 + 4;
    m->dev_weights = mc_calloc(max_dev, sizeof *m->dev_weights);
    m->layers = mc_calloc((size_t)d.L, sizeof *m->layers);
    if (!m->dev_weights || !m->layers) return mc_fail(MC_ERR_OOM, "out of memory binding weights");
    s = bind(m, "model.embed_tokens.weight", d.V, d.D, false, &m->embed);
    if (s != MC_OK) return s;
    m->dtype = m->embed.dtype;
    for (i = 0; i < d.L; i++) {
        s = bind_layer(m, i, &m->layers[i]);
        if (s != MC_OK) return s;
    }
    s = bind(m, "model.norm.weight", d.D, 0, false, &m->final_norm);
    if (s != MC_OK) return s;
    if (m->cfg.tie_word_embeddings) {
        m->lm_head = m->embed;
        return MC_OK;
    }
    return bind(m, "lm_head.weight", d.V, d.D, false, &m->lm_head);
}

/* "cpu" or, in CUDA builds, "cuda" / "cuda:N" (device N). */
static mc_status create_backend(const mc_model_params *p, mc_backend **be) {
    const char *dev = p->device ? p->device : "cpu";
    if (strcmp(dev, "cpu") == 0) return mc_backend_cpu_create(p->n_threads, p->reference != 0, be);
#ifdef MC_HAVE_CUDA
    if (strcmp(dev, "cuda") == 0) return mc_backend_cuda_create(0, be);
    if (strncmp(dev, "cuda:", 5) == 0) {
        char *end = NULL;
        long n = strtol(dev + 5, &end, 10);
        if (end == dev + 5 || *end != '\0' || n < 0 || n > 1024)
            return mc_fail(MC_ERR_INVALID_ARG, "device '%s': expected cuda:N with N a device number",
                           dev);
        return mc_backend_cuda_create((int)n, be);
    }
    return mc_fail(MC_ERR_UNSUPPORTED, "device '%s' is not available in this build (have: cpu, "
                   "cuda, cuda:N)", dev);
#else
    return mc_fail(MC_ERR_UNSUPPORTED, "device '%s' is not available in this build (have: cpu)", dev);
#endif
}

mc_status mc_model_load(const char *dir, const mc_model_params *params, mc_model **out) {
    mc_model_params defaults = mc_model_default_params();
    mc_model *m = NULL;
    mc_status s;
    if (!dir || !out) return mc_fail(MC_ERR_INVALID_ARG, "mc_model_load: dir and out are required");
    *out = NULL;
    if (!params) params = &defaults;
    if (params->n_threads < 0)
        return mc_fail(MC_ERR_INVALID_ARG, "n_threads must be >= 0 (got %d)", params->n_threads);
    if (!mc_path_is_dir(dir)) {
        if (!mc_path_exists(dir)) return mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: no such folder", dir);
        return mc_fail(MC_ERR_NOT_DIR, "%s: not a folder (expected a checkpoint folder)", dir);
    }
    m = mc_calloc(1, sizeof *m);
    if (!m) return mc_fail(MC_ERR_OOM, "out of memory loading %s", dir);
    s = mc_config_load(dir, &m->cfg);
    if (s != MC_OK) goto fail;
    s = mc_st_open_dir(dir, &m->st);
    if (s != MC_OK) goto fail;
    s = create_backend(params, &m->be);
    if (s != MC_OK) goto fail;
    s = bind_all(m);
    if (s != MC_OK) {
        mc_error_prefix("%s", dir);
        goto fail;
    }
    mc_log(MC_LOG_INFO, "loaded %s: %s, %d layers, %llu parameters", dir, m->cfg.model_type,
           m->cfg.num_hidden_layers, (unsigned long long)m->n_params);
    *out = m;
    return MC_OK;
fail:
    mc_model_free(m);
    return s;
}

void mc_model_free(mc_model *m) {
    if (!m) return;
    if (m->be) {
        if (m->be->release_weights) {
            size_t i;
            for (i = 0; i < m->n_dev; i++) m->be->release_weights(m->be, m->dev_weights[i]);
        }
        mc_backend_free(m->be);
    }
    mc_free(m->dev_weights);
    mc_free(m->layers);
    mc_st_close(&m->st);
    mc_free(m);
}

mc_status mc_model_get_info(const mc_model *m, mc_model_info *info) {
    const mc_config *c;
    int i;
    if (!m || !info) return mc_fail(MC_ERR_INVALID_ARG, "mc_model_get_info: NULL argument");
    c = &m->cfg;
    memset(info, 0, sizeof *info);
    info->architecture = c->architecture;
    info->model_type = c->model_type;
    info->n_layers = c->num_hidden_layers;
    info->hidden_size = c->hidden_size;
    info->intermediate_size = c->intermediate_size;
    info->n_heads = c->num_attention_heads;
    info->n_kv_heads = c->num_key_value_heads;
    info->head_dim = c->head_dim;
    info->vocab_size = c->vocab_size;
    info->max_position_embeddings = c->max_position_embeddings;
    info->tie_word_embeddings = c->tie_word_embeddings;
    info->has_qkv_bias = c->qkv_bias;
    info->rope_theta = (float)c->rope_theta;
    info->rms_norm_eps = (float)c->rms_norm_eps;
    info->bos_token_id = c->bos_token_id;
    info->n_eos_token_ids = c->n_eos;
    for (i = 0; i < c->n_eos && i < 8; i++) info->eos_token_ids[i] = c->eos_token_ids[i];
    info->dtype = m->dtype;
    info->n_params = m->n_params;
    info->weight_bytes = m->weight_bytes;
    return MC_OK;
}

uint64_t mc_model_context_bytes(const mc_model *m, int n_ctx, int n_batch) {
    if (!m || n_ctx <= 0 || n_batch <= 0) return 0;
    return mc_fwd_bytes(m, 1, n_ctx, n_batch);
}

double mc_row_nll(const float *logits, int V, int target) {
    double mx = -INFINITY, sum = 0;
    int i;
    for (i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    for (i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    /* sum >= 1 (the largest logit adds exp(0)); cppcheck assumes the loop may not run. */
    /* cppcheck-suppress invalidFunctionArg */
    return log(sum) + mx - (double)logits[target];
}

/* Rows of logits computed per forward chunk in mc_model_eval. */
enum { EVAL_CHUNK = 256 };

mc_status mc_model_eval(mc_model *m, const int32_t *ids, size_t n, float *logits, double *loss) {
    return mc_model_eval_adapter(m, NULL, 1.0f, ids, n, logits, loss);
}

mc_status mc_model_eval_adapter(mc_model *m, const mc_adapter *adapter, float scale,
                                const int32_t *ids, size_t n, float *logits, double *loss) {
    mc_dims d;
    mc_fwd *f = NULL;
    float *chunk_logits = NULL;
    double nll = 0;
    size_t t0, i;
    mc_status s;
    if (!m || !ids) return mc_fail(MC_ERR_INVALID_ARG, "mc_model_eval: NULL argument");
    if (n == 0) return mc_fail(MC_ERR_INVALID_ARG, "mc_model_eval: empty token sequence");
    d = mc_model_dims(m);
    if (n > (size_t)INT32_MAX / 2)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_model_eval: sequence of %zu tokens is too long", n);
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= d.V)
            return mc_fail(MC_ERR_TOKEN_ID, "token id %d at position %zu is outside the vocabulary "
                           "(size %d)", ids[i], i, d.V);
    s = mc_fwd_create(m, 1, (int)n, (int)MC_MIN(n, (size_t)EVAL_CHUNK), &f);
    if (s != MC_OK) return s;
    s = mc_fwd_set_adapter(f, adapter, scale);
    if (s != MC_OK) {
        mc_fwd_free(f);
        return s;
    }
    if (!logits) {
        chunk_logits = mc_malloc((size_t)EVAL_CHUNK * (size_t)d.V * sizeof(float));
        if (!chunk_logits) {
            mc_fwd_free(f);
            return mc_fail(MC_ERR_OOM, "out of memory for %d x %d logits", EVAL_CHUNK, d.V);
        }
    }
    for (t0 = 0; t0 < n; t0 += EVAL_CHUNK) {
        int T = (int)MC_MIN((size_t)EVAL_CHUNK, n - t0);
        float *out = logits ? logits + t0 * (size_t)d.V : chunk_logits;
        int t;
        s = mc_fwd_run(f, 0, ids + t0, T, MC_LOGITS_ALL, out);
        if (s != MC_OK) break;
        for (t = 0; t < T; t++)
            if (t0 + (size_t)t + 1 < n) nll += mc_row_nll(out + (size_t)t * d.V, d.V, ids[t0 + t + 1]);
    }
    mc_free(chunk_logits);
    mc_fwd_free(f);
    if (s == MC_OK && loss) *loss = n > 1 ? nll / (double)(n - 1) : 0.0;
    return s;
}
