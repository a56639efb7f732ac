/* lora_io.h - adapter files: adapter_config.json for the PEFT and mlx-lm formats, the
 * tensor names of both, and the merge (fuse) into a base checkpoint. Shared by peft_io.c,
 * mlx_io.c, fuse.c and the tests; the public entry points are in mcandle.h.
 *
 * Both formats describe the same thing once resolved against a model of n_layers layers:
 * a rank, a scale, a set of projections and a tail of layers [first_layer, n_layers) that
 * carry them. An adapter that adapts different projections in different layers, or a
 * set of layers that is not such a tail, cannot be represented (MC_ERR_UNSUPPORTED). */
#ifndef MC_LORA_IO_H
#define MC_LORA_IO_H

#include "lora.h"

struct cJSON;

typedef enum mc_adapter_format { MC_ADAPTER_PEFT = 0, MC_ADAPTER_MLX = 1 } mc_adapter_format;

/* adapter_config.json resolved against a model's layer count. */
typedef struct mc_adapter_config {
    mc_adapter_format format;
    int rank;         /* r, 1..4096 */
    float alpha;      /* PEFT lora_alpha; mlx-lm: scale * rank */
    float scale;      /* the forward scale: alpha / r, alpha / sqrt(r) (rsLoRA), mlx-lm's */
    float dropout;    /* [0, 1) */
    bool rslora;
    unsigned targets; /* bit (1u << mc_lora_module) per projection; 0 only for mlx-lm
                       * without "keys", whose default changed between releases: then
                       * the tensors in the file decide */
    int first_layer;  /* adapted layers are [first_layer, n_layers) */
    char *base_model; /* base_model_name_or_path (PEFT) or "model" (mlx-lm); owned, may be NULL */
} mc_adapter_config;

/* Parses adapter_config.json text[0..len) (fname names it in messages) for a model of
 * n_layers layers. The format is PEFT when "peft_type" is present, mlx-lm when
 * "lora_parameters" or "fine_tune_type" is. Errors: MC_ERR_JSON (malformed, not an
 * object), MC_ERR_DUPLICATE (a key twice), MC_ERR_CONFIG_MISSING (a required key),
 * MC_ERR_CONFIG_TYPE (a wrong JSON type or an impossible value, including layer indices
 * outside the model and targets that match no projection), MC_ERR_UNSUPPORTED (a valid
 * option this library does not implement, named). On failure *out is zeroed. */
mc_status mc_adapter_config_parse(const char *text, size_t len, const char *fname, int n_layers,
                                  mc_adapter_config *out);
/* Frees what a config owns and zeroes it; safe on a zeroed struct. */
void mc_adapter_config_clear(mc_adapter_config *c);

/* The mlx-lm half of mc_adapter_config_parse: root is the parsed object. */
mc_status mc_mlx_config_parse(const struct cJSON *root, const char *fname, int n_layers,
                              mc_adapter_config *out);

/* JSON member helpers for both formats; messages name fname and the key. */
/* Checks that no two members of the object obj share a key (MC_ERR_DUPLICATE naming it;
 * what says which object, e.g. "adapter_config.json"). */
mc_status mc_lora_json_unique(const struct cJSON *obj, const char *fname, const char *what);
/* An integer member in [lo, hi] (MC_ERR_CONFIG_TYPE otherwise). Absent or null:
 * MC_ERR_CONFIG_MISSING when required, else *out = def. */
mc_status mc_lora_json_int(const struct cJSON *obj, const char *key, int lo, int hi, bool required,
                           int def, const char *fname, int *out);
/* A number in [0, 1); absent or null = 0. */
mc_status mc_lora_json_dropout(const struct cJSON *obj, const char *key, const char *fname,
                               float *out);
/* true/false; absent or null = false. */
mc_status mc_lora_json_bool(const struct cJSON *obj, const char *key, const char *fname, bool *out);
/* "a string", "null", ... for messages. */
const char *mc_lora_json_type(const struct cJSON *v);

/* ---- tensor names --------------------------------------------------------------------- */

/* Parses "<layer>.<parent>.<proj>" at p (e.g. "3.self_attn.q_proj"): layer a decimal
 * number of at most 9 digits, parent the projection's own ("self_attn" or "mlp").
 * Returns the character after the projection name, or NULL when p does not start so. */
const char *mc_lora_parse_module_path(const char *p, int *layer, mc_lora_module *m);

/* PEFT: "base_model.model.model.layers.<l>.<parent>.<proj>.lora_<A|B>[.default].weight".
 * mlx-lm: "model.layers.<l>.<parent>.<proj>.lora_<a|b>". True when name is one of them. */
bool mc_peft_tensor_id(const char *name, int *layer, mc_lora_module *m, bool *is_b);
bool mc_mlx_tensor_id(const char *name, int *layer, mc_lora_module *m, bool *is_b);

/* Writes the canonical name of a tensor into buf (size cap; 128 is always enough). */
void mc_peft_tensor_name(char *buf, size_t cap, int layer, mc_lora_module m, bool is_b);
void mc_mlx_tensor_name(char *buf, size_t cap, int layer, mc_lora_module m, bool is_b);

/* ---- folders and the merge ------------------------------------------------------------- */

/* mc_adapter_fuse with the adapter's scale multiplied by scale_mul. */
mc_status mc_lora_fuse(const mc_model *model, const mc_adapter *adapter, float scale_mul,
                       const char *model_dir, const char *out_dir);

#endif /* MC_LORA_IO_H */
