/* config.c - Hugging Face config.json and generation_config.json for the Qwen2, Llama and
 * Qwen3 families. Reads both the older style (top-level rope_theta, torch_dtype) and the
 * transformers 5 style (rope_parameters.rope_theta, dtype). Every key is checked for its
 * JSON type and range; features this library lacks are refused with MC_ERR_UNSUPPORTED. */
#include "io_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>

/* Supported families: model_type, enum value, default architectures[0]. */
typedef struct arch_info {
    const char *model_type;
    mc_arch arch;
    const char *architecture;
} arch_info;

static const arch_info k_archs[] = {
    {"qwen2", MC_ARCH_QWEN2, "Qwen2ForCausalLM"},
    {"llama", MC_ARCH_LLAMA, "LlamaForCausalLM"},
    {"qwen3", MC_ARCH_QWEN3, "Qwen3ForCausalLM"},
};

enum { MAX_EOS = (int)(sizeof(((mc_config *)0)->eos_token_ids) / sizeof(int)) };

static const cJSON *get(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* True when obj[key] is absent or null (an optional key taking its default). */
static bool absent(const cJSON *item) { return !item || cJSON_IsNull(item); }

static mc_status type_error(const char *fname, const char *key, const char *want,
                            const cJSON *item) {
    return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key '%s' must be %s, not %s", fname, key, want,
                   mc_json_type_name(item));
}

/* Reads obj[key] as an integer in [lo, INT_MAX]. When required, absence is
 * MC_ERR_CONFIG_MISSING and null a type error; otherwise absent or null gives dflt. */
static mc_status get_int(const cJSON *obj, const char *key, const char *fname, bool required,
                         int dflt, int lo, int *out) {
    const cJSON *it = get(obj, key);
    int64_t v;
    if (!it && required)
        return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key '%s' is missing", fname, key);
    if (absent(it) && !required) {
        *out = dflt;
        return MC_OK;
    }
    if (!cJSON_IsNumber(it)) return type_error(fname, key, "an integer", it);
    if (!mc_json_int_in(it, lo, INT_MAX, &v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key '%s' = %.17g is not an integer in [%d, %d]",
                       fname, key, it->valuedouble, lo, INT_MAX);
    *out = (int)v;
    return MC_OK;
}

/* Reads it (named label) as a positive finite number into *out; absent or null leaves
 * *out as it is. */
static mc_status get_pos_num(const cJSON *it, const char *label, const char *fname, double *out) {
    if (absent(it)) return MC_OK;
    if (!cJSON_IsNumber(it)) return type_error(fname, label, "a number", it);
    if (!isfinite(it->valuedouble) || !(it->valuedouble > 0))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key '%s' = %.17g must be positive and finite",
                       fname, label, it->valuedouble);
    *out = it->valuedouble;
    return MC_OK;
}

/* Reads obj[key] as a boolean; absent or null gives dflt. */
static mc_status get_bool(const cJSON *obj, const char *key, const char *fname, bool dflt,
                          bool *out) {
    const cJSON *it = get(obj, key);
    if (absent(it)) {
        *out = dflt;
        return MC_OK;
    }
    if (!cJSON_IsBool(it)) return type_error(fname, key, "true or false", it);
    *out = cJSON_IsTrue(it);
    return MC_OK;
}

/* Reads obj[key] as a string (*out NULL when absent or null). */
static mc_status get_str(const cJSON *obj, const char *key, const char *fname, const char **out) {
    const cJSON *it = get(obj, key);
    *out = NULL;
    if (absent(it)) return MC_OK;
    if (!cJSON_IsString(it)) return type_error(fname, key, "a string", it);
    *out = it->valuestring;
    return MC_OK;
}

/* model_type (required, one of k_archs) and architectures[0] (optional). */
static mc_status parse_arch(const cJSON *root, const char *fname, mc_config *c) {
    const cJSON *mt = get(root, "model_type");
    const cJSON *archs = get(root, "architectures");
    const arch_info *info = NULL;
    const char *a;
    size_t i;
    if (!mt) return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key 'model_type' is missing", fname);
    if (!cJSON_IsString(mt)) return type_error(fname, "model_type", "a string", mt);
    for (i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (strcmp(k_archs[i].model_type, mt->valuestring) == 0) info = &k_archs[i];
    if (!info)
        return mc_fail(MC_ERR_UNSUPPORTED,
                       "%s: unsupported architecture '%.40s' (model_type; supported: qwen2, "
                       "llama, qwen3)",
                       fname, mt->valuestring);
    c->arch = info->arch;
    (void)snprintf(c->model_type, sizeof c->model_type, "%s", info->model_type);
    a = info->architecture;
    if (!absent(archs)) {
        if (!cJSON_IsArray(archs)) return type_error(fname, "architectures", "an array", archs);
        if (archs->child) {
            if (!cJSON_IsString(archs->child))
                return type_error(fname, "architectures[0]", "a string", archs->child);
            a = archs->child->valuestring;
        }
    }
    if (strlen(a) >= sizeof c->architecture)
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key 'architectures[0]' is longer than %zu bytes",
                       fname, sizeof c->architecture - 1);
    (void)snprintf(c->architecture, sizeof c->architecture, "%s", a);
    return MC_OK;
}

/* Layer sizes and head counts, with their consistency checks. */
static mc_status parse_sizes(const cJSON *root, const char *fname, mc_config *c) {
    mc_status st;
    int hd_default;
    if ((st = get_int(root, "vocab_size", fname, true, 0, 1, &c->vocab_size)) != MC_OK ||
        (st = get_int(root, "hidden_size", fname, true, 0, 1, &c->hidden_size)) != MC_OK ||
        (st = get_int(root, "intermediate_size", fname, true, 0, 1, &c->intermediate_size)) != MC_OK ||
        (st = get_int(root, "num_hidden_layers", fname, true, 0, 1, &c->num_hidden_layers)) != MC_OK ||
        (st = get_int(root, "num_attention_heads", fname, true, 0, 1, &c->num_attention_heads)) != MC_OK ||
        (st = get_int(root, "num_key_value_heads", fname, false, c->num_attention_heads, 1,
                      &c->num_key_value_heads)) != MC_OK ||
        (st = get_int(root, "max_position_embeddings", fname, false, 32768, 1,
                      &c->max_position_embeddings)) != MC_OK)
        return st;
    if (c->num_attention_heads < 1 || c->num_key_value_heads < 1) /* get_int checked lo = 1 */
        return mc_fail(MC_ERR_INTERNAL, "%s: head counts not validated", fname);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return mc_fail(MC_ERR_CONFIG_TYPE,
                       "%s: key 'num_key_value_heads' = %d does not divide num_attention_heads = %d",
                       fname, c->num_key_value_heads, c->num_attention_heads);
    hd_default = c->hidden_size / c->num_attention_heads;
    if (absent(get(root, "head_dim")) && c->hidden_size % c->num_attention_heads != 0)
        return mc_fail(MC_ERR_CONFIG_TYPE,
                       "%s: key 'hidden_size' = %d is not a multiple of num_attention_heads = %d "
                       "(and head_dim is not given)",
                       fname, c->hidden_size, c->num_attention_heads);
    st = get_int(root, "head_dim", fname, false, hd_default, 1, &c->head_dim);
    if (st != MC_OK) return st;
    if (c->head_dim % 2 != 0)
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key 'head_dim' = %d must be even for RoPE", fname,
                       c->head_dim);
    if (c->head_dim > INT_MAX / c->num_attention_heads)
        return mc_fail(MC_ERR_CONFIG_TYPE,
                       "%s: key 'head_dim' = %d times num_attention_heads = %d overflows", fname,
                       c->head_dim, c->num_attention_heads);
    return MC_OK;
}

/* RoPE: rope_parameters (transformers 5) or top-level rope_theta; scaling refused. */
static mc_status parse_rope(const cJSON *root, const char *fname, mc_config *c) {
    const cJSON *rp = get(root, "rope_parameters");
    const cJSON *rs = get(root, "rope_scaling");
    const char *type = NULL;
    mc_status st;
    c->rope_theta = 10000.0;
    st = get_pos_num(get(root, "rope_theta"), "rope_theta", fname, &c->rope_theta);
    if (st != MC_OK) return st;
    if (!absent(rp)) {
        if (!cJSON_IsObject(rp)) return type_error(fname, "rope_parameters", "an object", rp);
        st = get_str(rp, "rope_type", fname, &type);
        if (st != MC_OK) return st;
        if (type && strcmp(type, "default") != 0)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: rope_parameters.rope_type '%.40s' is not supported (only default "
                           "RoPE)",
                           fname, type);
        st = get_pos_num(get(rp, "rope_theta"), "rope_parameters.rope_theta", fname,
                         &c->rope_theta);
        if (st != MC_OK) return st;
    }
    if (!absent(rs)) {
        if (!cJSON_IsObject(rs)) return type_error(fname, "rope_scaling", "an object or null", rs);
        st = get_str(rs, "rope_type", fname, &type);
        if (st == MC_OK && !type) st = get_str(rs, "type", fname, &type);
        if (st != MC_OK) return st;
        if (!type || strcmp(type, "default") != 0)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: rope_scaling type '%.40s' is not supported (only default RoPE)",
                           fname, type ? type : "(none)");
    }
    return MC_OK;
}

/* layer_types (transformers 5): absent, null, or a list of "full_attention". */
static mc_status check_layer_types(const cJSON *lt, const char *fname) {
    const cJSON *x;
    if (absent(lt)) return MC_OK;
    if (!cJSON_IsArray(lt)) return type_error(fname, "layer_types", "a list of strings", lt);
    for (x = lt->child; x; x = x->next) {
        if (!cJSON_IsString(x)) return type_error(fname, "layer_types[]", "a string", x);
        if (strcmp(x->valuestring, "full_attention") != 0)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: layer type '%.40s' is not supported (only full_attention)", fname,
                           x->valuestring);
    }
    return MC_OK;
}

/* Activation, attention variants, norms, tying and dtype. */
static mc_status parse_features(const cJSON *root, const char *fname, mc_config *c) {
    const char *s = NULL;
    bool sliding = false, bias = false;
    const cJSON *dt;
    const char *dkey;
    mc_status st;
    st = get_str(root, "hidden_act", fname, &s);
    if (st != MC_OK) return st;
    if (s && strcmp(s, "silu") != 0)
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: hidden_act '%.40s' is not supported (only silu)",
                       fname, s);
    st = get_bool(root, "use_sliding_window", fname, false, &sliding);
    if (st != MC_OK) return st;
    if (sliding)
        return mc_fail(MC_ERR_UNSUPPORTED,
                       "%s: sliding-window attention is not supported (use_sliding_window is true)",
                       fname);
    st = get_bool(root, "mlp_bias", fname, false, &bias);
    if (st != MC_OK) return st;
    if (bias) return mc_fail(MC_ERR_UNSUPPORTED, "%s: MLP biases are not supported (mlp_bias is true)", fname);
    st = check_layer_types(get(root, "layer_types"), fname);
    if (st != MC_OK) return st;
    if (!absent(get(root, "quantization_config")))
        return mc_fail(MC_ERR_UNSUPPORTED,
                       "%s: quantized checkpoints are not supported (quantization_config)", fname);
    st = get_bool(root, "tie_word_embeddings", fname, false, &c->tie_word_embeddings);
    if (st != MC_OK) return st;
    st = get_bool(root, "attention_bias", fname, false, &c->qkv_bias);
    if (st != MC_OK) return st;
    if (c->arch == MC_ARCH_QWEN2) c->qkv_bias = true; /* Qwen2 ignores attention_bias */
    c->qk_norm = c->arch == MC_ARCH_QWEN3;
    c->rms_norm_eps = 1e-6;
    st = get_pos_num(get(root, "rms_norm_eps"), "rms_norm_eps", fname, &c->rms_norm_eps);
    if (st != MC_OK) return st;
    dkey = absent(get(root, "dtype")) ? "torch_dtype" : "dtype";
    dt = get(root, dkey);
    if (absent(dt)) return MC_OK;
    if (!cJSON_IsString(dt)) return type_error(fname, dkey, "a string", dt);
    c->has_dtype = true;
    if (strcmp(dt->valuestring, "float32") == 0) {
        c->dtype = MC_F32;
    } else if (strcmp(dt->valuestring, "bfloat16") == 0) {
        c->dtype = MC_BF16;
    } else if (strcmp(dt->valuestring, "float16") == 0) {
        c->dtype = MC_F16;
    } else {
        return mc_fail(MC_ERR_CONFIG_TYPE,
                       "%s: key '%s' = '%.40s' is not float32, bfloat16 or float16", fname, dkey,
                       dt->valuestring);
    }
    return MC_OK;
}

/* Reads a token id (non-negative integer) from it, named key. */
static mc_status token_id(const cJSON *it, const char *key, const char *fname, int *out) {
    int64_t v;
    if (!cJSON_IsNumber(it)) return type_error(fname, key, "a token id (integer)", it);
    if (!mc_json_int_in(it, 0, INT_MAX, &v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: key '%s' = %.17g is not a token id", fname, key,
                       it->valuedouble);
    *out = (int)v;
    return MC_OK;
}

/* Reads bos_token_id / eos_token_id of obj. *has_bos / *has_eos tell whether each was
 * given (not absent, not null); eos is an integer or a list of up to MAX_EOS integers. */
static mc_status parse_token_ids(const cJSON *obj, const char *fname, bool *has_bos, int *bos,
                                 bool *has_eos, int *eos, int *n_eos) {
    const cJSON *b = get(obj, "bos_token_id");
    const cJSON *e = get(obj, "eos_token_id");
    const cJSON *x;
    mc_status st;
    *has_bos = !absent(b);
    *has_eos = !absent(e);
    *n_eos = 0;
    if (*has_bos) {
        st = token_id(b, "bos_token_id", fname, bos);
        if (st != MC_OK) return st;
    }
    if (!*has_eos) return MC_OK;
    if (cJSON_IsNumber(e)) {
        *n_eos = 1;
        return token_id(e, "eos_token_id", fname, &eos[0]);
    }
    if (!cJSON_IsArray(e)) return type_error(fname, "eos_token_id", "an integer or a list", e);
    for (x = e->child; x; x = x->next) {
        if (*n_eos == MAX_EOS)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: key 'eos_token_id' lists more than %d ids",
                           fname, MAX_EOS);
        st = token_id(x, "eos_token_id", fname, &eos[*n_eos]);
        if (st != MC_OK) return st;
        (*n_eos)++;
    }
    return MC_OK;
}

/* Parses text into a JSON object root, checking for repeated keys. */
static mc_status parse_object(const char *json, size_t len, const char *fname, cJSON **root) {
    mc_status st = mc_json_parse(json, len, fname, root);
    if (st != MC_OK) return st;
    if (!cJSON_IsObject(*root))
        return mc_fail(MC_ERR_JSON, "%s: expected a JSON object, found %s", fname,
                       mc_json_type_name(*root));
    return mc_json_check_unique(*root, fname, "key", MC_ERR_DUPLICATE);
}

mc_status mc_config_parse(const char *json, size_t len, const char *fname, mc_config *out) {
    cJSON *root = NULL;
    mc_config c;
    bool has_bos = false, has_eos = false;
    mc_status st;
    fname = mc_io_name(fname);
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_config_parse: out is NULL", fname);
    memset(out, 0, sizeof *out);
    memset(&c, 0, sizeof c);
    c.bos_token_id = -1;
    st = parse_object(json, len, fname, &root);
    if (st == MC_OK) st = parse_arch(root, fname, &c);
    if (st == MC_OK) st = parse_sizes(root, fname, &c);
    if (st == MC_OK) st = parse_rope(root, fname, &c);
    if (st == MC_OK) st = parse_features(root, fname, &c);
    if (st == MC_OK)
        st = parse_token_ids(root, fname, &has_bos, &c.bos_token_id, &has_eos, c.eos_token_ids,
                             &c.n_eos);
    if (st == MC_OK) *out = c;
    cJSON_Delete(root);
    return st;
}

mc_status mc_genconfig_parse(const char *json, size_t len, const char *fname, mc_config *cfg) {
    cJSON *root = NULL;
    bool has_bos = false, has_eos = false;
    int bos = -1, n_eos = 0;
    int eos[MAX_EOS];
    mc_status st;
    fname = mc_io_name(fname);
    if (!cfg) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_genconfig_parse: cfg is NULL", fname);
    st = parse_object(json, len, fname, &root);
    if (st == MC_OK) st = parse_token_ids(root, fname, &has_bos, &bos, &has_eos, eos, &n_eos);
    if (st == MC_OK) {
        if (has_bos) cfg->bos_token_id = bos;
        if (has_eos) {
            memcpy(cfg->eos_token_ids, eos, sizeof eos);
            cfg->n_eos = n_eos;
        }
    }
    cJSON_Delete(root);
    return st;
}

mc_status mc_config_load(const char *dir, mc_config *out) {
    char *cpath = NULL, *gpath = NULL, *text = NULL;
    size_t len = 0;
    mc_status st;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_config_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!dir) return mc_fail(MC_ERR_INVALID_ARG, "mc_config_load: dir is NULL");
    if (!mc_path_exists(dir)) return mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: no such folder", dir);
    if (!mc_path_is_dir(dir)) return mc_fail(MC_ERR_NOT_DIR, "%s: not a folder", dir);
    cpath = mc_path_join(dir, "config.json");
    gpath = mc_path_join(dir, "generation_config.json");
    if (!cpath || !gpath) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", dir);
        goto done;
    }
    st = mc_read_file(cpath, &text, &len);
    if (st != MC_OK) goto done;
    st = mc_config_parse(text, len, cpath, out);
    if (st != MC_OK) goto done;
    mc_free(text);
    text = NULL;
    if (!mc_path_exists(gpath)) goto done;
    st = mc_read_file(gpath, &text, &len);
    if (st != MC_OK) goto done;
    st = mc_genconfig_parse(text, len, gpath, out);
done:
    if (st != MC_OK) memset(out, 0, sizeof *out);
    mc_free(text);
    mc_free(cpath);
    mc_free(gpath);
    return st;
}
