/* lora.h - LoRA adapters in memory: per-layer, per-projection A and B matrices (f32,
 * device memory, one allocation), their scale, and the forward hook the model calls after
 * each base projection.
 *
 * PEFT layout and math: A is [r, in], B is [out, r];
 *   y = x W^T + b + s * (dropout(x) A^T) B^T,   s = alpha / r  (alpha / sqrt(r) with rsLoRA)
 * mlx-lm files store A^T ([in, r], "lora_a") and B^T ([r, out], "lora_b") and an absolute
 * scale; they are converted to this layout on load. */
#ifndef MC_LORA_H
#define MC_LORA_H

#include "../model/model.h"

/* Projections an adapter can target, in this order everywhere. */
typedef enum mc_lora_module {
    MC_LM_Q = 0, MC_LM_K, MC_LM_V, MC_LM_O, MC_LM_GATE, MC_LM_UP, MC_LM_DOWN, MC_LM_COUNT
} mc_lora_module;

/* "q_proj", ... "down_proj" and the HF path prefix "self_attn" / "mlp". */
const char *mc_lora_module_name(mc_lora_module m);
const char *mc_lora_module_parent(mc_lora_module m);
/* in/out features of module m for model dims d. */
void mc_lora_module_dims(const mc_dims *d, mc_lora_module m, int *in, int *out);

/* The group of projections that read the same input as m: modules [*first, *end) (q, k
 * and v; o; gate and up; down). An adapter keeps the A matrices of a group's adapted
 * projections next to each other, so one product x [A_q; A_k; A_v]^T serves them all. */
static inline void mc_lora_group(mc_lora_module m, int *first, int *end) {
    static const signed char k_first[MC_LM_COUNT] = {0, 0, 0, 3, 4, 4, 6};
    static const signed char k_end[MC_LM_COUNT] = {3, 3, 3, 4, 6, 6, 7};
    *first = (unsigned)m < MC_LM_COUNT ? k_first[m] : 0;
    *end = (unsigned)m < MC_LM_COUNT ? k_end[m] : 0;
}

/* One adapted projection. */
typedef struct mc_lora_mod {
    float *A; /* [r, in] device; NULL when this projection has no adapter */
    float *B; /* [out, r] device */
    int in, out;
} mc_lora_mod;

struct mc_adapter {
    const mc_model *model;
    int rank;
    float alpha;
    float dropout;
    bool rslora;
    float scale;            /* s used in the forward pass (alpha/r, alpha/sqrt(r) or mlx's) */
    unsigned targets;       /* bit (1u << mc_lora_module) per adapted projection */
    int first_layer;        /* layers [first_layer, L) carry adapters */
    mc_lora_mod *mods;      /* [L * MC_LM_COUNT], index l * MC_LM_COUNT + m */
    float *params;          /* [n_params] device: layer by layer, for each group of
                             * projections that read the same input (mc_lora_group), the
                             * A matrices of its adapted projections, then their B */
    size_t n_params;
    char *base_model;       /* base_model_name_or_path to record (may be NULL) */
};

/* Creates an adapter with the given shape and the PEFT initialisation: A uniform in
 * (-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a = sqrt(5)), B zero, from seed. */
mc_status mc_adapter_alloc(const mc_model *m, int rank, float alpha, bool rslora, float dropout,
                           unsigned targets, int first_layer, mc_adapter **out);
mc_status mc_adapter_init_peft(mc_adapter *a, uint64_t seed);

/* Module (l, m), or NULL when not adapted. */
static inline const mc_lora_mod *mc_adapter_mod(const mc_adapter *a, int l, mc_lora_module m) {
    const mc_lora_mod *mod;
    if (!a || l < a->first_layer) return NULL;
    mod = &a->mods[(size_t)l * MC_LM_COUNT + (size_t)m];
    return mod->A ? mod : NULL;
}

/* Adds the LoRA path to a base projection's output:
 *   y[t, :] += scale * (x[t, :] A^T) B^T  for T rows; y rows have stride ldy.
 * tmp is scratch of T * r floats. */
void mc_lora_apply(mc_backend *be, const mc_lora_mod *mod, int r, float scale, void *y, int ldy,
                   const void *x, int T, float *tmp);

#endif /* MC_LORA_H */
