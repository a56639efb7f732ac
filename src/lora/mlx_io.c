/* mlx_io.c - LoRA adapters in the mlx-lm format: adapter_config.json and tensor names.
 *
 * mlx-lm folder (what `mlx_lm.lora` writes): adapter_config.json holding the training
 * arguments, of which these matter here:
 *   "fine_tune_type": "lora" (the default; "dora" and "full" are other methods),
 *   "num_layers": N     the last N decoder layers carry adapters (N <= 0: all of them,
 *                       as mlx-lm slices layers[-max(N, 0):]),
 *   "lora_parameters": {"rank": r, "scale": s, "dropout": p,
 *                       "keys": ["self_attn.q_proj", ...]  (optional)},
 * and adapters.safetensors with, per adapted projection,
 *   model.layers.<l>.<self_attn|mlp>.<proj>.lora_a  [in, r]   (PEFT's A transposed)
 *   model.layers.<l>.<self_attn|mlp>.<proj>.lora_b  [r, out]  (PEFT's B transposed)
 * and the forward y = x W^T + s * (x lora_a) lora_b: s is absolute, not alpha / r. It is
 * kept as the adapter's scale, and alpha = s * r is what a PEFT save records.
 * Without "keys", mlx-lm adapts a default set that changed between releases (q_proj and
 * v_proj for Qwen2 and Llama before late 2025, every linear layer of a decoder layer
 * since), so the projections present in the tensor file decide. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>

#include "lora_io.h"

static const char k_mlx_prefix[] = "model.layers.";

bool mc_mlx_tensor_id(const char *name, int *layer, mc_lora_module *m, bool *is_b) {
    const char *p;
    if (strncmp(name, k_mlx_prefix, sizeof k_mlx_prefix - 1) != 0) return false;
    p = mc_lora_parse_module_path(name + sizeof k_mlx_prefix - 1, layer, m);
    if (!p) return false;
    if (!strcmp(p, ".lora_a")) {
        *is_b = false;
        return true;
    }
    if (!strcmp(p, ".lora_b")) {
        *is_b = true;
        return true;
    }
    return false;
}

void mc_mlx_tensor_name(char *buf, size_t cap, int layer, mc_lora_module m, bool is_b) {
    snprintf(buf, cap, "%s%d.%s.%s.lora_%c", k_mlx_prefix, layer, mc_lora_module_parent(m),
             mc_lora_module_name(m), is_b ? 'b' : 'a');
}

/* Projection bits for lora_parameters.keys (layer-relative module paths). */
static mc_status read_keys(const cJSON *keys, const char *fname, unsigned *targets) {
    const cJSON *it;
    *targets = 0;
    if (!cJSON_IsArray(keys))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_parameters.keys' must be a list of module "
                       "names (got %s)", fname, mc_lora_json_type(keys));
    cJSON_ArrayForEach(it, keys) {
        int k;
        if (!cJSON_IsString(it))
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_parameters.keys' must hold strings (got "
                           "%s)", fname, mc_lora_json_type(it));
        for (k = 0; k < MC_LM_COUNT; k++) {
            const char *parent = mc_lora_module_parent((mc_lora_module)k);
            size_t pl = strlen(parent);
            if (!strncmp(it->valuestring, parent, pl) && it->valuestring[pl] == '.' &&
                !strcmp(it->valuestring + pl + 1, mc_lora_module_name((mc_lora_module)k)))
                break;
        }
        if (k == MC_LM_COUNT)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: LoRA key '%.80s' is not one of "
                           "self_attn.{q,k,v,o}_proj or mlp.{gate,up,down}_proj", fname,
                           it->valuestring);
        *targets |= 1u << k;
    }
    if (!*targets)
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_parameters.keys' is empty: the adapter "
                       "adapts nothing", fname);
    return MC_OK;
}

mc_status mc_mlx_config_parse(const cJSON *root, const char *fname, int n_layers,
                              mc_adapter_config *c) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "fine_tune_type"), *lp, *keys;
    bool dora = false;
    int num_layers = 0;
    mc_status s;
    c->format = MC_ADAPTER_MLX;
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v))
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'fine_tune_type' must be a string (got %s)",
                           fname, mc_lora_json_type(v));
        if (!strcmp(v->valuestring, "dora"))
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: fine_tune_type is 'dora' (DoRA), which is not "
                           "supported", fname);
        if (!strcmp(v->valuestring, "full"))
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: fine_tune_type is 'full': the folder holds "
                           "fully fine-tuned weights, not a LoRA adapter", fname);
        if (strcmp(v->valuestring, "lora") != 0)
            return mc_fail(MC_ERR_CONFIG_TYPE, "%s: unknown fine_tune_type '%.40s' (mlx-lm knows "
                           "lora, dora and full)", fname, v->valuestring);
    }
    s = mc_lora_json_bool(root, "use_dora", fname, &dora); /* older mlx-lm releases */
    if (s != MC_OK) return s;
    if (dora)
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: 'use_dora' is true (DoRA), which is not supported",
                       fname);
    s = mc_lora_json_int(root, "num_layers", -1000000, 1000000, true, 0, fname, &num_layers);
    if (s != MC_OK) return s;
    if (num_layers > n_layers)
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: num_layers is %d but the model has %d layers (the "
                       "adapter does not fit the model)", fname, num_layers, n_layers);
    c->first_layer = num_layers <= 0 ? 0 : n_layers - num_layers;
    lp = cJSON_GetObjectItemCaseSensitive(root, "lora_parameters");
    if (!lp || cJSON_IsNull(lp))
        return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key 'lora_parameters' is missing", fname);
    if (!cJSON_IsObject(lp))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_parameters' must be an object (got %s)", fname,
                       mc_lora_json_type(lp));
    s = mc_lora_json_unique(lp, fname, "lora_parameters");
    if (s == MC_OK) s = mc_lora_json_int(lp, "rank", 1, 4096, true, 0, fname, &c->rank);
    if (s == MC_OK) s = mc_lora_json_dropout(lp, "dropout", fname, &c->dropout);
    if (s != MC_OK) return s;
    v = cJSON_GetObjectItemCaseSensitive(lp, "scale");
    if (!v || cJSON_IsNull(v))
        return mc_fail(MC_ERR_CONFIG_MISSING, "%s: required key 'lora_parameters.scale' is missing",
                       fname);
    c->scale = cJSON_IsNumber(v) ? (float)v->valuedouble : NAN;
    c->alpha = c->scale * (float)c->rank;
    if (!(isfinite(c->alpha) && c->scale > 0))
        return mc_fail(MC_ERR_CONFIG_TYPE, "%s: 'lora_parameters.scale' must be a positive number "
                       "(got %s)", fname, cJSON_IsNumber(v) ? "a value outside it" : mc_lora_json_type(v));
    keys = cJSON_GetObjectItemCaseSensitive(lp, "keys");
    if (keys && !cJSON_IsNull(keys)) {
        s = read_keys(keys, fname, &c->targets);
        if (s != MC_OK) return s;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsString(v)) {
        c->base_model = mc_strdup(v->valuestring);
        if (!c->base_model) return mc_fail(MC_ERR_OOM, "out of memory reading %s", fname);
    }
    return MC_OK;
}
