/* peft_io.c - LoRA adapter folders: adapter_config.json in the PEFT format (and the
 * dispatch to mlx-lm's, mlx_io.c), loading either format into an mc_adapter, and writing
 * the PEFT format that PeftModel.from_pretrained reads.
 *
 * PEFT folder: adapter_config.json + adapter_model.safetensors holding, per adapted
 * projection,
 *   base_model.model.model.layers.<l>.<self_attn|mlp>.<proj>.lora_A.weight  [r, in]
 *   base_model.model.model.layers.<l>.<self_attn|mlp>.<proj>.lora_B.weight  [out, r]
 * (".lora_A.default.weight" is accepted too), scale s = lora_alpha / r, or
 * lora_alpha / sqrt(r) with use_rslora.
 *
 * Which modules carry an adapter follows PEFT's rules, applied to the module names
 * "model.layers.<l>.<parent>.<proj>": target_modules as a list matches a name exactly or
 * as a suffix after a '.'; as a string it is a regular expression that must match the
 * whole name, except "all-linear" (any case), which selects every projection;
 * exclude_modules removes modules by the same rules; layers_to_transform (an index or a
 * list; null or [] = all) keeps only those layers. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>

#include "lora_io.h"

/* ---- small JSON helpers ----------------------------------------------------------------- */

/* Member key of obj (case-sensitive), or NULL. */
static const cJSON *get(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Absent or null. */
static bool is_unset(const cJSON *v) { return !v || cJSON_IsNull(v); }

const char *mc_lora_json_type(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "a list";
    return "an object";
}

mc_status mc_lora_json_unique(const cJSON *obj, const char *fname, const char *what) {
    const cJSON *a, *b;
    for (a = obj->child; a; a = a->next)
        for (b = a->next; b; b = b->next)
            if (a->string && b->string && !strcmp(a->string, b->string))
                return mc_fail(MC_ERR_DUPLICATE, "%s: key '%s' occurs twice in %s", fname,
                               a->string, what);
    return MC_OK;
}

mc_status mc_lora_json_int(const cJSON *obj, const char *key, int lo, int hi, bool required,
                           int def, const char *fname, int *out) {
    const cJSON *v = get(obj, key);
    double x;
    if (is_unset(v)) {
        if (required) return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key '%s' is missing", fname, key);
        *out = def;
        return MC_OK;
    }
    x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(x >= lo && x <= hi) || floor(x) != x) {
        if (cJSON_IsNumber(v))
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must be an integer in %d..%d (got %g)",
                           fname, key, lo, hi, x);
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must be an integer in %d..%d (got %s)", fname,
                       key, lo, hi, mc_lora_json_type(v));
    }
    *out = (int)x;
    return MC_OK;
}

mc_status mc_lora_json_dropout(const cJSON *obj, const char *key, const char *fname, float *out) {
    const cJSON *v = get(obj, key);
    *out = 0.0f;
    if (is_unset(v)) return MC_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must be a number in [0, 1) (got %s)", fname,
                       key, cJSON_IsNumber(v) ? "a value outside it" : mc_lora_json_type(v));
    *out = (float)v->valuedouble;
    return MC_OK;
}

mc_status mc_lora_json_bool(const cJSON *obj, const char *key, const char *fname, bool *out) {
    const cJSON *v = get(obj, key);
    *out = false;
    if (is_unset(v)) return MC_OK;
    if (!cJSON_IsBool(v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must be true or false (got %s)", fname, key,
                       mc_lora_json_type(v));
    *out = cJSON_IsTrue(v) != 0;
    return MC_OK;
}

/* ---- module names and target matching ---------------------------------------------------- */

const char *mc_lora_parse_module_path(const char *p, int *layer, mc_lora_module *m) {
    long v = 0;
    int nd = 0, k;
    while (p[nd] >= '0' && p[nd] <= '9') {
        if (nd == 9) return NULL;
        v = v * 10 + (p[nd] - '0');
        nd++;
    }
    if (nd == 0 || (nd > 1 && p[0] == '0') || p[nd] != '.') return NULL;
    p += nd + 1;
    for (k = 0; k < MC_LM_COUNT; k++) {
        const char *parent = mc_lora_module_parent((mc_lora_module)k);
        const char *name = mc_lora_module_name((mc_lora_module)k);
        size_t pl = strlen(parent), nl = strlen(name);
        if (!strncmp(p, parent, pl) && p[pl] == '.' && !strncmp(p + pl + 1, name, nl)) {
            *layer = (int)v;
            *m = (mc_lora_module)k;
            return p + pl + 1 + nl;
        }
    }
    return NULL;
}

static const char k_peft_prefix[] = "base_model.model.model.layers.";

bool mc_peft_tensor_id(const char *name, int *layer, mc_lora_module *m, bool *is_b) {
    static const char *const tails[4] = {".lora_A.weight", ".lora_B.weight",
                                         ".lora_A.default.weight", ".lora_B.default.weight"};
    const char *p;
    int i;
    if (strncmp(name, k_peft_prefix, sizeof k_peft_prefix - 1) != 0) return false;
    p = mc_lora_parse_module_path(name + sizeof k_peft_prefix - 1, layer, m);
    if (!p) return false;
    for (i = 0; i < 4; i++)
        if (!strcmp(p, tails[i])) {
            *is_b = (i & 1) != 0;
            return true;
        }
    return false;
}

void mc_peft_tensor_name(char *buf, size_t cap, int layer, mc_lora_module m, bool is_b) {
    snprintf(buf, cap, "%s%d.%s.%s.lora_%c.weight", k_peft_prefix, layer, mc_lora_module_parent(m),
             mc_lora_module_name(m), is_b ? 'B' : 'A');
}

/* "q_proj,v_proj" for a set of module bits (buf of at least 80 bytes). */
static void format_targets(char *buf, size_t cap, unsigned targets) {
    size_t len = 0;
    int k;
    buf[0] = '\0';
    for (k = 0; k < MC_LM_COUNT; k++)
        if (targets & (1u << k)) {
            int w = snprintf(buf + len, cap - len, "%s%s", len ? "," : "",
                             mc_lora_module_name((mc_lora_module)k));
            if (w < 0 || (size_t)w >= cap - len) break;
            len += (size_t)w;
        }
}

/* Regular expressions of target_modules / exclude_modules (PCRE2, allocating through
 * mc_malloc so that fault injection reaches it). */
typedef struct re_env {
    pcre2_general_context *gctx;
    pcre2_compile_context *cctx;
    pcre2_match_context *mctx;
    pcre2_match_data *md;
} re_env;

/* PCRE2's allocator hooks: mc_malloc / mc_free. */
static void *re_malloc(size_t n, void *user) {
    (void)user;
    return mc_malloc(n);
}
static void re_free(void *p, void *user) {
    (void)user;
    mc_free(p);
}

/* Frees what re_env_init made; safe on a zeroed or half-made env. */
static void re_env_free(re_env *e) {
    pcre2_match_data_free(e->md);
    pcre2_match_context_free(e->mctx);
    pcre2_compile_context_free(e->cctx);
    pcre2_general_context_free(e->gctx);
    memset(e, 0, sizeof *e);
}

/* Creates the contexts and match data, with limits that bound the time one match may
 * take (exceeding them is reported by spec_match). MC_ERR_OOM on allocation failure. */
static mc_status re_env_init(re_env *e) {
    memset(e, 0, sizeof *e);
    e->gctx = pcre2_general_context_create(re_malloc, re_free, NULL);
    if (e->gctx) e->cctx = pcre2_compile_context_create(e->gctx);
    if (e->cctx) e->mctx = pcre2_match_context_create(e->gctx);
    if (e->mctx) e->md = pcre2_match_data_create(1, e->gctx);
    if (!e->md) {
        re_env_free(e);
        return mc_fail(MC_ERR_OOM, "out of memory for a regular expression");
    }
    /* Module names are short; a pattern that needs more than this is pathological. */
    pcre2_set_match_limit(e->mctx, 100000);
    pcre2_set_depth_limit(e->mctx, 10000);
    pcre2_set_heap_limit(e->mctx, 4096);
    return MC_OK;
}

/* A target_modules or exclude_modules value. */
typedef struct module_spec {
    const char *key;     /* "target_modules" / "exclude_modules" */
    const cJSON *list;   /* array of strings, or NULL */
    pcre2_code *re;      /* a string other than "all-linear", compiled, or NULL */
    const char *pattern; /* its text */
    bool all_linear;
} module_spec;

/* Reads spec->key from root: absent/null (nothing set), a list of strings or a string. */
static mc_status spec_read(const cJSON *root, const char *fname, re_env *env, module_spec *spec) {
    const cJSON *v = get(root, spec->key);
    if (is_unset(v)) return MC_OK;
    if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it))
                return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must hold strings (got %s)", fname,
                               spec->key, mc_lora_json_type(it));
        }
        spec->list = v;
        return MC_OK;
    }
    if (!cJSON_IsString(v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: '%s' must be a list of names or a string (got %s)",
                       fname, spec->key, mc_lora_json_type(v));
    spec->pattern = v->valuestring;
    if (!strcasecmp(v->valuestring, "all-linear")) {
        spec->all_linear = true;
        return MC_OK;
    }
    if (!env->gctx) {
        mc_status s = re_env_init(env);
        if (s != MC_OK) return s;
    }
    {
        int err = 0;
        PCRE2_SIZE off = 0;
        spec->re = pcre2_compile((PCRE2_SPTR)v->valuestring, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err,
                                 &off, env->cctx);
        if (!spec->re) {
            PCRE2_UCHAR msg[160];
            if (err == PCRE2_ERROR_HEAP_FAILED)
                return mc_fail(MC_ERR_OOM, "out of memory compiling '%s' of %s", spec->key, fname);
            if (pcre2_get_error_message(err, msg, sizeof msg) < 0) msg[0] = '\0';
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: '%s' is the regular expression '%.100s', which this library cannot "
                           "compile: %s (at offset %zu)", fname, spec->key, v->valuestring,
                           (const char *)msg, (size_t)off);
        }
    }
    return MC_OK;
}

/* *hit = whether spec selects the module named key (projection: whether it is one of the
 * seven projections, which "all-linear" selects). */
static mc_status spec_match(const module_spec *spec, re_env *env, const char *key, bool projection,
                            const char *fname, bool *hit) {
    const cJSON *it;
    *hit = false;
    if (spec->all_linear) {
        *hit = projection;
        return MC_OK;
    }
    if (spec->re) {
        int rc = pcre2_match(spec->re, (PCRE2_SPTR)key, strlen(key), 0,
                             PCRE2_ANCHORED | PCRE2_ENDANCHORED, env->md, env->mctx);
        if (rc >= 0) {
            *hit = true;
            return MC_OK;
        }
        if (rc == PCRE2_ERROR_NOMATCH) return MC_OK;
        if (rc == PCRE2_ERROR_NOMEMORY)
            return mc_fail(MC_ERR_OOM, "out of memory matching '%s' of %s", spec->key, fname);
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: the regular expression '%.100s' of '%s' is too "
                       "costly to match (PCRE2 error %d)", fname, spec->pattern, spec->key, rc);
    }
    if (spec->list) {
        size_t kl = strlen(key);
        cJSON_ArrayForEach(it, spec->list) {
            const char *t = it->valuestring;
            size_t tl = strlen(t);
            if (!strcmp(key, t) || (tl < kl && key[kl - tl - 1] == '.' && !strcmp(key + kl - tl, t))) {
                *hit = true;
                break;
            }
        }
    }
    return MC_OK;
}

/* Layers kept by layers_to_transform: keep[l] for l < L. */
static mc_status read_layers(const cJSON *root, const char *fname, int L, bool string_targets,
                             bool *keep) {
    const cJSON *v = get(root, "layers_to_transform"), *it;
    int l;
    for (l = 0; l < L; l++) keep[l] = true;
    if (is_unset(v) || (cJSON_IsArray(v) && !v->child)) return MC_OK;
    if (string_targets)
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'layers_to_transform' cannot be used with a "
                       "string 'target_modules' (PEFT rejects this too)", fname);
    if (!cJSON_IsArray(v) && !cJSON_IsNumber(v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'layers_to_transform' must be null, a layer index "
                       "or a list of them (got %s)", fname, mc_lora_json_type(v));
    for (l = 0; l < L; l++) keep[l] = false;
    for (it = cJSON_IsArray(v) ? v->child : v; it; it = cJSON_IsArray(v) ? it->next : NULL) {
        double x = cJSON_IsNumber(it) ? it->valuedouble : NAN;
        if (!(x >= 0 && x <= 1e9) || floor(x) != x)
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'layers_to_transform' must hold layer indices "
                           "(got %s)", fname, cJSON_IsNumber(it) ? "a negative or fractional number"
                                                                 : mc_lora_json_type(it));
        if (x >= L)
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'layers_to_transform' names layer %.0f but the "
                           "model has %d layers (the adapter does not fit the model)", fname, x, L);
        keep[(int)x] = true;
    }
    return MC_OK;
}

/* Checks layers_pattern: only the decoder's own "layers" (or nothing) is meaningful. */
static mc_status check_layers_pattern(const cJSON *root, const char *fname) {
    const cJSON *v = get(root, "layers_pattern");
    if (is_unset(v) || (cJSON_IsString(v) && (!v->valuestring[0] || !strcmp(v->valuestring, "layers"))))
        return MC_OK;
    if (cJSON_IsArray(v)) {
        const cJSON *it;
        bool ok = true;
        cJSON_ArrayForEach(it, v) ok = ok && cJSON_IsString(it) && !strcmp(it->valuestring, "layers");
        if (ok) return MC_OK;
    }
    return mc_fail(MC_ERR_UNSUPPORTED, "%s: 'layers_pattern' must be null or \"layers\" for this "
                   "model's decoder layers", fname);
}

/* Resolves target_modules, exclude_modules and layers_to_transform into one set of
 * projections on a tail of layers. */
static mc_status resolve_targets(const cJSON *root, const char *fname, int L, unsigned *targets,
                                 int *first_layer) {
    static const char *const k_other[2] = {"lm_head", "model.embed_tokens"};
    module_spec tgt, exc;
    re_env env;
    bool *keep = NULL;
    unsigned *sets = NULL, want = 0;
    char key[128];
    mc_status s;
    int l, k, first = -1;
    memset(&env, 0, sizeof env);
    memset(&tgt, 0, sizeof tgt);
    memset(&exc, 0, sizeof exc);
    tgt.key = "target_modules";
    exc.key = "exclude_modules";
    if (is_unset(get(root, "target_modules"))) {
        s = mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key 'target_modules' is missing", fname);
        goto done;
    }
    s = spec_read(root, fname, &env, &tgt);
    if (s == MC_OK) s = spec_read(root, fname, &env, &exc);
    if (s != MC_OK) goto done;
    keep = mc_calloc((size_t)L, sizeof *keep);
    sets = mc_calloc((size_t)L, sizeof *sets);
    if (!keep || !sets) {
        s = mc_fail(MC_ERR_OOM, "out of memory reading %s", fname);
        goto done;
    }
    s = read_layers(root, fname, L, tgt.pattern != NULL, keep);
    if (s != MC_OK) goto done;
    for (k = 0; k < 2; k++) { /* LoRA on the embedding or the output layer */
        bool hit = false, ex = false;
        s = spec_match(&tgt, &env, k_other[k], false, fname, &hit);
        if (s == MC_OK && hit) s = spec_match(&exc, &env, k_other[k], false, fname, &ex);
        if (s != MC_OK) goto done;
        if (hit && !ex) {
            s = mc_fail(MC_ERR_UNSUPPORTED, "%s: 'target_modules' selects %s; LoRA is supported on "
                        "the q/k/v/o/gate/up/down projections only", fname, k_other[k]);
            goto done;
        }
    }
    for (l = 0; l < L; l++)
        for (k = 0; k < MC_LM_COUNT && keep[l]; k++) {
            bool hit = false, ex = false;
            snprintf(key, sizeof key, "model.layers.%d.%s.%s", l,
                     mc_lora_module_parent((mc_lora_module)k), mc_lora_module_name((mc_lora_module)k));
            s = spec_match(&tgt, &env, key, true, fname, &hit);
            if (s == MC_OK && hit) s = spec_match(&exc, &env, key, true, fname, &ex);
            if (s != MC_OK) goto done;
            if (hit && !ex) sets[l] |= 1u << k;
        }
    for (l = 0; l < L; l++) {
        if (first < 0 && sets[l]) {
            first = l;
            want = sets[l];
        } else if (first >= 0 && sets[l] != want) {
            char a[96], b[96];
            format_targets(a, sizeof a, want);
            format_targets(b, sizeof b, sets[l]);
            s = mc_fail(MC_ERR_UNSUPPORTED, "%s: the adapter covers {%s} in layer %d but {%s} in "
                        "layer %d; only the same projections on every layer from one layer to the "
                        "last are supported", fname, a, first, b, l);
            goto done;
        }
    }
    if (first < 0) {
        s = mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'target_modules' selects no q/k/v/o/gate/up/down "
                    "projection of this %d-layer model (a string is a regular expression over whole "
                    "names such as model.layers.0.self_attn.q_proj; the adapter does not fit the "
                    "model)", fname, L);
        goto done;
    }
    *targets = want;
    *first_layer = first;
done:
    pcre2_code_free(tgt.re);
    pcre2_code_free(exc.re);
    re_env_free(&env);
    mc_free(keep);
    mc_free(sets);
    return s;
}

/* ---- adapter_config.json ------------------------------------------------------------------ */

/* PEFT options that change what the adapter computes; each must be false or absent. */
static const struct {
    const char *key, *what;
} k_false_keys[] = {
    {"use_dora", "DoRA"},
    {"fan_in_fan_out", "base weights stored transposed"},
    {"lora_bias", "a bias on lora_B"},
    {"use_qalora", "QALoRA"},
};

/* PEFT options that must be null, absent or empty. */
static const struct {
    const char *key, *what;
} k_empty_keys[] = {
    {"rank_pattern", "per-module ranks"},
    {"alpha_pattern", "per-module alphas"},
    {"modules_to_save", "fully trained extra modules"},
    {"layer_replication", "replicated layers"},
    {"target_parameters", "LoRA on parameters"},
    {"trainable_token_indices", "trainable token embeddings"},
    {"alora_invocation_tokens", "activated LoRA"},
    {"arrow_config", "Arrow routing"},
    {"kasa_config", "KaSA"},
    {"monteclora_config", "MonteCLoRA"},
    {"use_bdlora", "block-diagonal LoRA"},
};

/* The PEFT half of mc_adapter_config_parse: checks every option (unsupported ones named),
 * reads r, lora_alpha, lora_dropout, use_rslora and resolves the targets for L layers. */
static mc_status peft_config(const cJSON *root, const char *fname, int L, mc_adapter_config *c) {
    const cJSON *v = get(root, "peft_type");
    mc_status s;
    size_t i;
    c->format = MC_ADAPTER_PEFT;
    if (!cJSON_IsString(v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'peft_type' must be a string (got %s)", fname,
                       mc_lora_json_type(v));
    if (strcmp(v->valuestring, "LORA") != 0)
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: peft_type is '%.40s'; only LORA adapters are "
                       "supported", fname, v->valuestring);
    for (i = 0; i < sizeof k_false_keys / sizeof *k_false_keys; i++) {
        bool on = false;
        s = mc_lora_json_bool(root, k_false_keys[i].key, fname, &on);
        if (s != MC_OK) return s;
        if (on)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: '%s' is true (%s), which is not supported",
                           fname, k_false_keys[i].key, k_false_keys[i].what);
    }
    for (i = 0; i < sizeof k_empty_keys / sizeof *k_empty_keys; i++) {
        v = get(root, k_empty_keys[i].key);
        if (is_unset(v) || cJSON_IsFalse(v) ||
            ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child))
            continue;
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: '%s' is set (%s), which is not supported", fname,
                       k_empty_keys[i].key, k_empty_keys[i].what);
    }
    v = get(root, "bias");
    if (!is_unset(v) && !cJSON_IsString(v))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'bias' must be a string (got %s)", fname, mc_lora_json_type(v));
    if (!is_unset(v) && strcmp(v->valuestring, "none") != 0)
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: 'bias' is '%.40s'; trained biases are not supported "
                       "(only \"none\")", fname, v->valuestring);
    s = mc_lora_json_int(root, "r", 1, 4096, true, 0, fname, &c->rank);
    if (s != MC_OK) return s;
    v = get(root, "lora_alpha");
    if (is_unset(v))
        return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key 'lora_alpha' is missing", fname);
    c->alpha = cJSON_IsNumber(v) ? (float)v->valuedouble : NAN;
    if (!(isfinite(c->alpha) && c->alpha > 0))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_alpha' must be a positive number (got %s)",
                       fname, cJSON_IsNumber(v) ? "a value outside it" : mc_lora_json_type(v));
    s = mc_lora_json_dropout(root, "lora_dropout", fname, &c->dropout);
    if (s == MC_OK) s = mc_lora_json_bool(root, "use_rslora", fname, &c->rslora);
    if (s == MC_OK) s = check_layers_pattern(root, fname);
    if (s != MC_OK) return s;
    v = get(root, "base_model_name_or_path");
    if (cJSON_IsString(v)) {
        c->base_model = mc_strdup(v->valuestring);
        if (!c->base_model) return mc_fail(MC_ERR_OOM, "out of memory reading %s", fname);
    }
    c->scale = c->rslora ? c->alpha / sqrtf((float)c->rank) : c->alpha / (float)c->rank;
    return resolve_targets(root, fname, L, &c->targets, &c->first_layer);
}

mc_status mc_adapter_config_parse(const char *text, size_t len, const char *fname, int n_layers,
                                  mc_adapter_config *out) {
    cJSON *root = NULL;
    mc_status s;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_adapter_config_parse: out is NULL");
    memset(out, 0, sizeof *out);
    if (!fname) fname = "adapter_config.json";
    if (n_layers <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_adapter_config_parse: %d layers", n_layers);
    s = mc_json_parse(text, len, fname, &root);
    if (s != MC_OK) return s;
    if (!cJSON_IsObject(root))
        s = mc_fail(MC_ERR_JSON, "%s: expected a JSON object", fname);
    else
        s = mc_lora_json_unique(root, fname, "adapter_config.json");
    if (s == MC_OK) {
        if (get(root, "peft_type"))
            s = peft_config(root, fname, n_layers, out);
        else if (get(root, "lora_parameters") || get(root, "fine_tune_type"))
            s = mc_mlx_config_parse(root, fname, n_layers, out);
        else
            s = mc_fail(MC_ERR_CONFIG_MISSING, "%s: neither 'peft_type' (PEFT) nor "
                        "'lora_parameters' (mlx-lm): not a LoRA adapter configuration", fname);
    }
    cJSON_Delete(root);
    if (s != MC_OK) mc_adapter_config_clear(out);
    return s;
}

void mc_adapter_config_clear(mc_adapter_config *c) {
    if (!c) return;
    mc_free(c->base_model);
    memset(c, 0, sizeof *c);
}

/* ---- loading ------------------------------------------------------------------------------- */

/* "[4, 64]" for a tensor's shape. */
static void format_shape(char *buf, size_t cap, const mc_st_tensor *t) {
    size_t len = 0;
    int i;
    len += (size_t)snprintf(buf, cap, "[");
    for (i = 0; i < t->ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* Scratch for converting one matrix. */
typedef struct load_scratch {
    void *raw;  /* [max_n * 4] bytes: the stored bytes, aligned */
    float *f32; /* [max_n] */
    float *tr;  /* [max_n] transposed (mlx-lm) */
} load_scratch;

/* Checks tensor t against the expected stored shape [rows, cols], converts it to f32
 * (transposed for mlx-lm) and copies it to dst on the device. */
static mc_status load_matrix(mc_backend *be, const mc_st_tensor *t, const char *path, bool transpose,
                             int rows, int cols, float *dst, const load_scratch *ws) {
    size_t n = (size_t)rows * (size_t)cols, i;
    const float *src;
    mc_dtype dt;
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char got[96];
        format_shape(got, sizeof got, t);
        return mc_fail(MC_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected [%d, %d] (the "
                       "adapter does not fit the model)", path, t->name, got, rows, cols);
    }
    if (!mc_st_dtype_compute(t->st_dtype, &dt))
        return mc_fail(MC_ERR_DTYPE, "%s: tensor '%s' has dtype %s; LoRA weights must be F32, F16 "
                       "or BF16", path, t->name, mc_st_dtype_name(t->st_dtype));
    if (n) memcpy(dt == MC_F32 ? (void *)ws->f32 : ws->raw, t->data, t->nbytes);
    if (dt != MC_F32) mc_convert_to_f32(ws->f32, ws->raw, dt, n);
    for (i = 0; i < n; i++)
        if (!isfinite(ws->f32[i]))
            return mc_fail(MC_ERR_NUMERIC, "%s: tensor '%s' holds a NaN or infinite value at "
                           "element %zu", path, t->name, i);
    src = ws->f32;
    if (transpose) { /* stored [rows, cols] -> [cols, rows] */
        size_t r, c;
        for (r = 0; r < (size_t)rows; r++)
            for (c = 0; c < (size_t)cols; c++) ws->tr[c * (size_t)rows + r] = ws->f32[r * (size_t)cols + c];
        src = ws->tr;
    }
    return be->to_device(be, dst, src, n * sizeof(float));
}

/* The error for a tensor whose name is not an A or B matrix of a projection. */
static mc_status unexpected_tensor(const char *path, const char *name) {
    size_t n = strlen(name);
    if (strstr(name, "lora_magnitude_vector") || (n > 2 && !strcmp(name + n - 2, ".m")))
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: tensor '%s' is a DoRA magnitude, which is not "
                       "supported", path, name);
    if (strstr(name, "lora_embedding_"))
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: tensor '%s' is LoRA on an embedding, which is not "
                       "supported", path, name);
    return mc_fail(MC_ERR_CONFIG_TYPE, "%s: unexpected tensor '%s': not the LoRA A or B matrix of "
                   "a q/k/v/o/gate/up/down projection of a decoder layer (the adapter does not fit "
                   "the model)", path, name);
}

/* Finds every tensor's slot (layer, module, A/B) in slot[] (tensor index + 1), checking
 * that it belongs to the model and the config; fills cfg->targets when the tensors
 * decide them. */
static mc_status index_tensors(const mc_st_set *set, const char *path, mc_adapter_config *cfg, int L,
                               size_t *slot) {
    bool mlx = cfg->format == MC_ADAPTER_MLX;
    unsigned found = 0;
    size_t i;
    for (i = 0; i < set->n; i++) {
        const mc_st_tensor *t = &set->tensors[i];
        int l = 0;
        mc_lora_module m = MC_LM_Q;
        bool is_b = false;
        size_t k;
        if (!(mlx ? mc_mlx_tensor_id(t->name, &l, &m, &is_b) : mc_peft_tensor_id(t->name, &l, &m, &is_b)))
            return unexpected_tensor(path, t->name);
        if (l >= L)
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: tensor '%s' is for layer %d but the model has "
                           "%d layers (the adapter does not fit the model)", path, t->name, l, L);
        if (l < cfg->first_layer || (cfg->targets && !(cfg->targets & (1u << m)))) {
            char tg[96];
            format_targets(tg, sizeof tg, cfg->targets);
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: tensor '%s' is for a projection that "
                           "adapter_config.json does not adapt (it adapts {%s} on layers %d..%d; the "
                           "adapter does not fit the model)", path, t->name,
                           cfg->targets ? tg : "per the tensors", cfg->first_layer, L - 1);
        }
        k = ((size_t)l * MC_LM_COUNT + (size_t)m) * 2 + (is_b ? 1 : 0);
        if (slot[k])
            return mc_fail(MC_ERR_DUPLICATE, "%s: tensors '%s' and '%s' are the same LoRA matrix",
                           path, set->tensors[slot[k] - 1].name, t->name);
        slot[k] = i + 1;
        found |= 1u << m;
    }
    if (!cfg->targets) {
        if (!found)
            return mc_fail(MC_ERR_MISSING_TENSOR, "%s: no LoRA tensors in the file", path);
        cfg->targets = found;
    }
    return MC_OK;
}

/* Loads every expected matrix of the folder's tensor file into a new adapter. */
static mc_status load_tensors(const mc_model *model, mc_adapter_config *cfg, const mc_st_set *set,
                              const char *path, mc_adapter **out) {
    mc_dims d = mc_model_dims(model);
    bool mlx = cfg->format == MC_ADAPTER_MLX;
    size_t *slot = NULL, max_n = 0;
    load_scratch ws;
    mc_adapter *a = NULL;
    mc_status s;
    int l, k, ab;
    memset(&ws, 0, sizeof ws);
    slot = mc_calloc((size_t)d.L * MC_LM_COUNT * 2, sizeof *slot);
    if (!slot) return mc_fail(MC_ERR_OOM, "out of memory loading %s", path);
    s = index_tensors(set, path, cfg, d.L, slot);
    if (s == MC_OK)
        s = mc_adapter_alloc(model, cfg->rank, cfg->alpha, cfg->rslora, cfg->dropout, cfg->targets,
                             cfg->first_layer, &a);
    if (s != MC_OK) goto done;
    a->scale = cfg->scale;
    a->base_model = cfg->base_model;
    cfg->base_model = NULL;
    for (k = 0; k < MC_LM_COUNT; k++) {
        int in, o;
        mc_lora_module_dims(&d, (mc_lora_module)k, &in, &o);
        max_n = MC_MAX(max_n, (size_t)cfg->rank * (size_t)MC_MAX(in, o));
    }
    ws.raw = mc_malloc(max_n * sizeof(float));
    ws.f32 = mc_malloc(max_n * sizeof(float));
    ws.tr = mlx ? mc_malloc(max_n * sizeof(float)) : NULL;
    if (!ws.raw || !ws.f32 || (mlx && !ws.tr)) {
        s = mc_fail(MC_ERR_OOM, "out of memory loading %s", path);
        goto done;
    }
    for (l = a->first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT; k++) {
            const mc_lora_mod *mod = mc_adapter_mod(a, l, (mc_lora_module)k);
            if (!mod) continue;
            for (ab = 0; ab < 2; ab++) {
                size_t idx = slot[((size_t)l * MC_LM_COUNT + (size_t)k) * 2 + (size_t)ab];
                int r = a->rank, n_other = ab ? mod->out : mod->in;
                /* PEFT stores A [r, in] and B [out, r]; mlx-lm their transposes. */
                int rows = (ab == 0) != mlx ? r : n_other, cols = (ab == 0) != mlx ? n_other : r;
                if (!idx) {
                    char name[128];
                    if (mlx)
                        mc_mlx_tensor_name(name, sizeof name, l, (mc_lora_module)k, ab != 0);
                    else
                        mc_peft_tensor_name(name, sizeof name, l, (mc_lora_module)k, ab != 0);
                    s = mc_fail(MC_ERR_MISSING_TENSOR, "%s: tensor '%s' is missing (the config "
                                "adapts layers %d..%d)", path, name, a->first_layer, d.L - 1);
                    goto done;
                }
                s = load_matrix(model->be, &set->tensors[idx - 1], path, mlx, rows, cols,
                                ab ? mod->B : mod->A, &ws);
                if (s != MC_OK) goto done;
            }
        }
    *out = a;
    a = NULL;
done:
    mc_free(slot);
    mc_free(ws.raw);
    mc_free(ws.f32);
    mc_free(ws.tr);
    mc_adapter_free(a);
    return s;
}

mc_status mc_adapter_load(const mc_model *model, const char *dir, mc_adapter **out) {
    mc_adapter_config cfg;
    mc_st_set set;
    char *cfg_path = NULL, *st_path = NULL, *bin_path = NULL, *text = NULL;
    size_t len = 0;
    mc_status s;
    memset(&cfg, 0, sizeof cfg);
    memset(&set, 0, sizeof set);
    if (!model || !dir || !out) return mc_fail(MC_ERR_INVALID_ARG, "mc_adapter_load: NULL argument");
    *out = NULL;
    if (!mc_path_exists(dir)) return mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: adapter folder not found", dir);
    if (!mc_path_is_dir(dir))
        return mc_fail(MC_ERR_NOT_DIR, "%s: not a folder (an adapter is a folder holding "
                       "adapter_config.json)", dir);
    cfg_path = mc_path_join(dir, "adapter_config.json");
    if (!cfg_path) return mc_fail(MC_ERR_OOM, "out of memory loading %s", dir);
    if (!mc_path_exists(cfg_path)) {
        s = mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: no adapter_config.json: not a PEFT or mlx-lm "
                    "adapter folder", dir);
        goto done;
    }
    s = mc_read_file(cfg_path, &text, &len);
    if (s == MC_OK)
        s = mc_adapter_config_parse(text, len, cfg_path, model->cfg.num_hidden_layers, &cfg);
    if (s != MC_OK) goto done;
    st_path = mc_path_join(dir, cfg.format == MC_ADAPTER_MLX ? "adapters.safetensors"
                                                              : "adapter_model.safetensors");
    bin_path = mc_path_join(dir, "adapter_model.bin");
    if (!st_path || !bin_path) {
        s = mc_fail(MC_ERR_OOM, "out of memory loading %s", dir);
        goto done;
    }
    if (!mc_path_exists(st_path)) {
        if (cfg.format == MC_ADAPTER_PEFT && mc_path_exists(bin_path))
            s = mc_fail(MC_ERR_UNSUPPORTED, "%s: a pickled PyTorch file, which this library does "
                        "not read; save the adapter as safetensors (PEFT's save_pretrained does by "
                        "default)", bin_path);
        else
            s = mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: file not found (adapter_config.json is in the "
                        "%s format)", st_path, cfg.format == MC_ADAPTER_MLX ? "mlx-lm" : "PEFT");
        goto done;
    }
    s = mc_st_open_file(st_path, &set);
    if (s == MC_OK) s = load_tensors(model, &cfg, &set, st_path, out);
done:
    mc_st_close(&set);
    mc_adapter_config_clear(&cfg);
    mc_free(text);
    mc_free(cfg_path);
    mc_free(st_path);
    mc_free(bin_path);
    return s;
}

/* ---- saving -------------------------------------------------------------------------------- */

/* The shortest decimal that reads back as f, as a double (so "0.1" rather than
 * "0.10000000149011612" in the JSON). */
static double short_decimal(float f) {
    char buf[32];
    int prec;
    for (prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

/* Adds item to obj under key; false (item freed) when item is NULL or adding fails. */
static bool put(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return false;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

/* ["q_proj", ...] for a set of module bits; NULL when out of memory. */
static cJSON *name_list(unsigned targets) {
    cJSON *arr = cJSON_CreateArray();
    int k;
    for (k = 0; arr && k < MC_LM_COUNT; k++) {
        cJSON *it;
        if (!(targets & (1u << k))) continue;
        it = cJSON_CreateString(mc_lora_module_name((mc_lora_module)k));
        if (!it) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, it);
    }
    return arr;
}

/* null when first is 0 (every layer), else [first, ..., L - 1]; NULL when out of memory. */
static cJSON *layer_list(int first, int L) {
    cJSON *arr;
    int l;
    if (first == 0) return cJSON_CreateNull();
    arr = cJSON_CreateArray();
    for (l = first; arr && l < L; l++) {
        cJSON *it = cJSON_CreateNumber(l);
        if (!it) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, it);
    }
    return arr;
}

/* adapter_config.json text for a (cJSON_free). NULL when out of memory. */
static char *peft_config_text(const mc_adapter *a) {
    cJSON *j = cJSON_CreateObject();
    char *text = NULL;
    bool ok = j != NULL;
    int L = a->model->cfg.num_hidden_layers;
    /* Keys in the order PEFT writes them (sorted). */
    ok = ok && put(j, "alpha_pattern", cJSON_CreateObject());
    ok = ok && put(j, "base_model_name_or_path", cJSON_CreateString(a->base_model ? a->base_model : ""));
    ok = ok && put(j, "bias", cJSON_CreateString("none"));
    ok = ok && put(j, "exclude_modules", cJSON_CreateNull());
    ok = ok && put(j, "fan_in_fan_out", cJSON_CreateFalse());
    ok = ok && put(j, "inference_mode", cJSON_CreateTrue());
    ok = ok && put(j, "init_lora_weights", cJSON_CreateTrue());
    ok = ok && put(j, "layers_pattern", cJSON_CreateNull());
    ok = ok && put(j, "layers_to_transform", layer_list(a->first_layer, L));
    ok = ok && put(j, "lora_alpha", cJSON_CreateNumber(short_decimal(a->alpha)));
    ok = ok && put(j, "lora_bias", cJSON_CreateFalse());
    ok = ok && put(j, "lora_dropout", cJSON_CreateNumber(short_decimal(a->dropout)));
    ok = ok && put(j, "modules_to_save", cJSON_CreateNull());
    ok = ok && put(j, "peft_type", cJSON_CreateString("LORA"));
    ok = ok && put(j, "r", cJSON_CreateNumber(a->rank));
    ok = ok && put(j, "rank_pattern", cJSON_CreateObject());
    ok = ok && put(j, "revision", cJSON_CreateNull());
    ok = ok && put(j, "target_modules", name_list(a->targets));
    ok = ok && put(j, "task_type", cJSON_CreateString("CAUSAL_LM"));
    ok = ok && put(j, "use_dora", cJSON_CreateFalse());
    ok = ok && put(j, "use_rslora", cJSON_CreateBool(a->rslora));
    if (ok) text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

/* Capacity of one tensor name (layer numbers have at most 9 digits). */
enum { NAME_CAP = 96 };

mc_status mc_adapter_save(const mc_adapter *a, const char *dir) {
    static const char *const meta[2] = {"format", "pt"};
    mc_backend *be;
    mc_dims d;
    float *host = NULL;
    mc_st_out *ts = NULL;
    char *names = NULL, *st_path = NULL, *cfg_path = NULL, *text = NULL;
    size_t n = 0, j = 0;
    mc_status s;
    int l, k;
    if (!a || !dir) return mc_fail(MC_ERR_INVALID_ARG, "mc_adapter_save: NULL argument");
    be = a->model->be;
    d = mc_model_dims(a->model);
    s = mc_mkdir_p(dir);
    if (s != MC_OK) return s;
    for (l = a->first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT; k++) n += mc_adapter_mod(a, l, (mc_lora_module)k) ? 2 : 0;
    host = mc_malloc(a->n_params * sizeof *host);
    ts = mc_calloc(n, sizeof *ts);
    names = mc_malloc(n * NAME_CAP);
    st_path = mc_path_join(dir, "adapter_model.safetensors");
    cfg_path = mc_path_join(dir, "adapter_config.json");
    text = host && ts && names && st_path && cfg_path ? peft_config_text(a) : NULL;
    if (!text) {
        s = mc_fail(MC_ERR_OOM, "out of memory saving an adapter to %s", dir);
        goto done;
    }
    s = be->to_host(be, host, a->params, a->n_params * sizeof *host);
    if (s != MC_OK) goto done;
    for (l = a->first_layer; l < d.L; l++)
        for (k = 0; k < MC_LM_COUNT; k++) {
            const mc_lora_mod *mod = mc_adapter_mod(a, l, (mc_lora_module)k);
            int ab;
            if (!mod) continue;
            for (ab = 0; ab < 2; ab++, j++) {
                char *name = names + j * NAME_CAP;
                const float *dev = ab ? mod->B : mod->A;
                mc_peft_tensor_name(name, NAME_CAP, l, (mc_lora_module)k, ab != 0);
                ts[j].name = name;
                ts[j].st_dtype = MC_ST_F32;
                ts[j].ndim = 2;
                ts[j].shape[0] = ab ? mod->out : a->rank;
                ts[j].shape[1] = ab ? a->rank : mod->in;
                ts[j].data = host + (dev - a->params);
            }
        }
    s = mc_st_write(st_path, ts, n, meta, 1);
    if (s == MC_OK) s = mc_write_file_atomic(cfg_path, text, strlen(text));
done:
    cJSON_free(text);
    mc_free(host);
    mc_free(ts);
    mc_free(names);
    mc_free(st_path);
    mc_free(cfg_path);
    return s;
}
