/* init.c - random-weight checkpoints with the exact Qwen2.5-Coder configs, written as
 * Hugging Face folders (config.json, generation_config.json, model.safetensors). */
#include <cjson/cJSON.h>
#include <stdio.h>

#include "model.h"

typedef struct preset {
    const char *name;
    int vocab, hidden, inter, layers, heads, kv_heads, max_pos;
    bool tied;
} preset;

/* The published Qwen2.5-Coder configurations (plus a tiny one for tests and demos). */
static const preset k_presets[] = {
    {"tiny", 151936, 64, 160, 2, 4, 2, 32768, true},
    {"qwen2.5-coder-0.5b", 151936, 896, 4864, 24, 14, 2, 32768, true},
    {"qwen2.5-coder-1.5b", 151936, 1536, 8960, 28, 12, 2, 32768, true},
    {"qwen2.5-coder-3b", 151936, 2048, 11008, 36, 16, 2, 32768, true},
    {"qwen2.5-coder-7b", 152064, 3584, 18944, 28, 28, 4, 32768, false},
};

static void config_from_preset(const preset *p, mc_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = MC_ARCH_QWEN2;
    snprintf(c->architecture, sizeof c->architecture, "Qwen2ForCausalLM");
    snprintf(c->model_type, sizeof c->model_type, "qwen2");
    c->vocab_size = p->vocab;
    c->hidden_size = p->hidden;
    c->intermediate_size = p->inter;
    c->num_hidden_layers = p->layers;
    c->num_attention_heads = p->heads;
    c->num_key_value_heads = p->kv_heads;
    c->head_dim = p->hidden / p->heads;
    c->max_position_embeddings = p->max_pos;
    c->rope_theta = 1000000.0;
    c->rms_norm_eps = 1e-6;
    c->tie_word_embeddings = p->tied;
    c->qkv_bias = true;
    c->bos_token_id = 151643;
    c->n_eos = 1;
    c->eos_token_ids[0] = 151643;
}

static const char *dtype_torch_name(mc_dtype t) {
    switch (t) {
    case MC_F32: return "float32";
    case MC_F16: return "float16";
    case MC_BF16: return "bfloat16";
    }
    return "float32";
}

/* Adds item under key (to an array when key is NULL); false, with item freed, when the
 * item could not be created or added (out of memory). */
static bool add_item(cJSON *obj, const char *key, cJSON *item) {
    bool ok;
    if (!item) return false;
    ok = key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item);
    if (!ok) cJSON_Delete(item);
    return ok;
}

/* Fills the config.json object j and the generation_config.json object g for c; false
 * when out of memory. */
static bool build_configs(const mc_config *c, mc_dtype dtype, cJSON *j, cJSON *g) {
    const char *arch = c->architecture[0] ? c->architecture : "Qwen2ForCausalLM";
    cJSON *eos = NULL;
    bool ok = add_item(j, "architectures", cJSON_CreateStringArray(&arch, 1));
    int i;
    ok = ok && add_item(j, "model_type", cJSON_CreateString(c->model_type));
    ok = ok && add_item(j, "hidden_act", cJSON_CreateString("silu"));
    ok = ok && add_item(j, "vocab_size", cJSON_CreateNumber(c->vocab_size));
    ok = ok && add_item(j, "hidden_size", cJSON_CreateNumber(c->hidden_size));
    ok = ok && add_item(j, "intermediate_size", cJSON_CreateNumber(c->intermediate_size));
    ok = ok && add_item(j, "num_hidden_layers", cJSON_CreateNumber(c->num_hidden_layers));
    ok = ok && add_item(j, "num_attention_heads", cJSON_CreateNumber(c->num_attention_heads));
    ok = ok && add_item(j, "num_key_value_heads", cJSON_CreateNumber(c->num_key_value_heads));
    /* qwen3 always names head_dim; others only when it is not hidden_size / heads */
    if (c->arch == MC_ARCH_QWEN3 || c->head_dim * c->num_attention_heads != c->hidden_size)
        ok = ok && add_item(j, "head_dim", cJSON_CreateNumber(c->head_dim));
    if (c->arch != MC_ARCH_QWEN2)
        ok = ok && add_item(j, "attention_bias", cJSON_CreateBool(c->qkv_bias));
    ok = ok &&
         add_item(j, "max_position_embeddings", cJSON_CreateNumber(c->max_position_embeddings));
    ok = ok && add_item(j, "rope_theta", cJSON_CreateNumber(c->rope_theta));
    ok = ok && add_item(j, "rms_norm_eps", cJSON_CreateNumber(c->rms_norm_eps));
    ok = ok && add_item(j, "tie_word_embeddings", cJSON_CreateBool(c->tie_word_embeddings));
    ok = ok && add_item(j, "use_sliding_window", cJSON_CreateFalse());
    ok = ok && add_item(j, "torch_dtype", cJSON_CreateString(dtype_torch_name(dtype)));
    if (c->bos_token_id >= 0) {
        ok = ok && add_item(j, "bos_token_id", cJSON_CreateNumber(c->bos_token_id));
        ok = ok && add_item(g, "bos_token_id", cJSON_CreateNumber(c->bos_token_id));
    }
    if (c->n_eos > 0)
        ok = ok && add_item(j, "eos_token_id", cJSON_CreateNumber(c->eos_token_ids[0]));
    if (ok) {
        eos = cJSON_CreateArray();
        ok = add_item(g, "eos_token_id", eos);
    }
    for (i = 0; ok && i < c->n_eos; i++)
        ok = add_item(eos, NULL, cJSON_CreateNumber(c->eos_token_ids[i]));
    return ok;
}

/* Writes config.json and generation_config.json for c. */
static mc_status write_configs(const mc_config *c, mc_dtype dtype, const char *dir) {
    cJSON *j = cJSON_CreateObject(), *g = cJSON_CreateObject();
    char *text = NULL, *gtext = NULL, *path = NULL, *gpath = NULL;
    mc_status s = MC_OK;
    if (!j || !g || !build_configs(c, dtype, j, g)) {
        s = mc_fail(MC_ERR_OOM, "out of memory writing config.json");
        goto done;
    }
    text = cJSON_Print(j);
    gtext = cJSON_Print(g);
    path = mc_path_join(dir, "config.json");
    gpath = mc_path_join(dir, "generation_config.json");
    if (!text || !gtext || !path || !gpath) {
        s = mc_fail(MC_ERR_OOM, "out of memory writing config.json");
        goto done;
    }
    s = mc_write_file_atomic(path, text, strlen(text));
    if (s == MC_OK) s = mc_write_file_atomic(gpath, gtext, strlen(gtext));
done:
    cJSON_Delete(j);
    cJSON_Delete(g);
    cJSON_free(text);
    cJSON_free(gtext);
    mc_free(path);
    mc_free(gpath);
    return s;
}

/* A tensor to create: name, shape and how to fill it. */
typedef enum fill_kind { FILL_RANDOM, FILL_ONES, FILL_ZEROS } fill_kind;

/* Fills n elements of dtype t: uniform with standard deviation std, ones or zeros. */
static void fill(void *dst, mc_dtype t, size_t n, fill_kind k, float std, mc_rng *rng) {
    const float a = std * 1.7320508f; /* uniform(-a, a) has standard deviation std */
    float chunk[1024];
    size_t i, j;
    for (i = 0; i < n; i += 1024) {
        size_t m = MC_MIN((size_t)1024, n - i);
        for (j = 0; j < m; j++) {
            if (k == FILL_RANDOM)
                chunk[j] = (float)(mc_rng_uniform(rng) * 2.0 - 1.0) * a;
            else
                chunk[j] = k == FILL_ONES ? 1.0f : 0.0f;
        }
        mc_convert_from_f32((char *)dst + i * mc_dtype_size(t), chunk, t, m);
    }
}

/* Collects the tensor list of config c (names in HF order). */
typedef struct tensor_spec {
    char name[96];
    int64_t rows, cols; /* cols == 0: vector */
    fill_kind kind;
} tensor_spec;

static size_t spec_list(const mc_config *c, tensor_spec *ts) {
    size_t n = 0;
    int l;
    int q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
#define ADD(nm, r, cc, k)                                                                   \
    do {                                                                                    \
        if (ts) {                                                                           \
            snprintf(ts[n].name, sizeof ts[n].name, "%s", nm);                              \
            ts[n].rows = (r);                                                               \
            ts[n].cols = (cc);                                                              \
            ts[n].kind = (k);                                                               \
        }                                                                                   \
        n++;                                                                                \
    } while (0)
#define ADDL(suffix, r, cc, k)                                                              \
    do {                                                                                    \
        char nm_[96];                                                                       \
        snprintf(nm_, sizeof nm_, "model.layers.%d.%s", l, suffix);                        \
        ADD(nm_, r, cc, k);                                                                 \
    } while (0)
    ADD("model.embed_tokens.weight", c->vocab_size, c->hidden_size, FILL_RANDOM);
    for (l = 0; l < c->num_hidden_layers; l++) {
        ADDL("input_layernorm.weight", c->hidden_size, 0, FILL_ONES);
        ADDL("self_attn.q_proj.weight", q, c->hidden_size, FILL_RANDOM);
        ADDL("self_attn.k_proj.weight", kv, c->hidden_size, FILL_RANDOM);
        ADDL("self_attn.v_proj.weight", kv, c->hidden_size, FILL_RANDOM);
        ADDL("self_attn.o_proj.weight", c->hidden_size, q, FILL_RANDOM);
        if (c->qkv_bias) {
            ADDL("self_attn.q_proj.bias", q, 0, FILL_ZEROS);
            ADDL("self_attn.k_proj.bias", kv, 0, FILL_ZEROS);
            ADDL("self_attn.v_proj.bias", kv, 0, FILL_ZEROS);
            if (c->arch == MC_ARCH_LLAMA) ADDL("self_attn.o_proj.bias", c->hidden_size, 0, FILL_ZEROS);
        }
        if (c->qk_norm) {
            ADDL("self_attn.q_norm.weight", c->head_dim, 0, FILL_ONES);
            ADDL("self_attn.k_norm.weight", c->head_dim, 0, FILL_ONES);
        }
        ADDL("post_attention_layernorm.weight", c->hidden_size, 0, FILL_ONES);
        ADDL("mlp.gate_proj.weight", c->intermediate_size, c->hidden_size, FILL_RANDOM);
        ADDL("mlp.up_proj.weight", c->intermediate_size, c->hidden_size, FILL_RANDOM);
        ADDL("mlp.down_proj.weight", c->hidden_size, c->intermediate_size, FILL_RANDOM);
    }
    ADD("model.norm.weight", c->hidden_size, 0, FILL_ONES);
    if (!c->tie_word_embeddings) ADD("lm_head.weight", c->vocab_size, c->hidden_size, FILL_RANDOM);
#undef ADDL
#undef ADD
    return n;
}

/* Writes model.safetensors with random weights for c. */
static mc_status write_weights(const mc_config *c, mc_dtype dtype, uint64_t seed, float std,
                               const char *dir) {
    size_t n = spec_list(c, NULL), i, total = 0;
    tensor_spec *ts = mc_calloc(n, sizeof *ts);
    mc_st_out *outs = mc_calloc(n, sizeof *outs);
    char *data = NULL, *path = mc_path_join(dir, "model.safetensors");
    mc_st_dtype sd = dtype == MC_F32 ? MC_ST_F32 : dtype == MC_F16 ? MC_ST_F16 : MC_ST_BF16;
    mc_rng rng;
    mc_status s = MC_OK;
    if (!ts || !outs || !path) {
        s = mc_fail(MC_ERR_OOM, "out of memory preparing weights");
        goto done;
    }
    (void)spec_list(c, ts);
    for (i = 0; i < n; i++) total += (size_t)ts[i].rows * (size_t)(ts[i].cols ? ts[i].cols : 1);
    data = mc_malloc(total * mc_dtype_size(dtype));
    if (!data) {
        s = mc_fail(MC_ERR_OOM, "out of memory: %zu bytes of weights", total * mc_dtype_size(dtype));
        goto done;
    }
    mc_rng_seed(&rng, seed);
    total = 0;
    for (i = 0; i < n; i++) {
        size_t numel = (size_t)ts[i].rows * (size_t)(ts[i].cols ? ts[i].cols : 1);
        outs[i].name = ts[i].name;
        outs[i].st_dtype = sd;
        outs[i].ndim = ts[i].cols ? 2 : 1;
        outs[i].shape[0] = ts[i].rows;
        outs[i].shape[1] = ts[i].cols;
        outs[i].data = data + total * mc_dtype_size(dtype);
        fill(data + total * mc_dtype_size(dtype), dtype, numel, ts[i].kind, std, &rng);
        total += numel;
    }
    s = mc_st_write(path, outs, n, NULL, 0);
done:
    mc_free(data);
    mc_free(ts);
    mc_free(outs);
    mc_free(path);
    return s;
}

mc_status mc_checkpoint_init(const char *preset_name, const char *config_path, mc_dtype dtype,
                             uint64_t seed, const char *out_dir) {
    return mc_checkpoint_init_std(preset_name, config_path, dtype, seed, 0.02f, out_dir);
}

mc_status mc_checkpoint_init_std(const char *preset_name, const char *config_path, mc_dtype dtype,
                                 uint64_t seed, float init_std, const char *out_dir) {
    mc_config c;
    mc_status s;
    if (!(init_std > 0.0f && init_std <= 10.0f))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_checkpoint_init: init_std must be in (0, 10] (got %g)",
                       (double)init_std);
    if (!out_dir || (!preset_name == !config_path))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_checkpoint_init: give an output folder and exactly "
                       "one of a preset or a config file");
    if (dtype != MC_F32 && dtype != MC_F16 && dtype != MC_BF16)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_checkpoint_init: unknown dtype %d", (int)dtype);
    if (preset_name) {
        size_t i;
        for (i = 0; i < sizeof k_presets / sizeof *k_presets; i++)
            if (!strcmp(preset_name, k_presets[i].name)) break;
        if (i == sizeof k_presets / sizeof *k_presets)
            return mc_fail(MC_ERR_INVALID_ARG, "unknown preset '%s' (known: tiny, "
                           "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, qwen2.5-coder-3b, "
                           "qwen2.5-coder-7b)", preset_name);
        config_from_preset(&k_presets[i], &c);
    } else {
        char *text = NULL;
        size_t len = 0;
        s = mc_read_file(config_path, &text, &len);
        if (s != MC_OK) return s;
        s = mc_config_parse(text, len, config_path, &c);
        mc_free(text);
        if (s != MC_OK) return s;
    }
    s = mc_mkdir_p(out_dir);
    if (s != MC_OK) return s;
    s = write_configs(&c, dtype, out_dir);
    if (s == MC_OK) s = write_weights(&c, dtype, seed, init_std, out_dir);
    return s;
}
