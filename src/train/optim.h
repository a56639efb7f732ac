/* optim.h - learning-rate schedules, gradient clipping and optimizers over device f32
 * parameter buffers. */
#ifndef MC_TRAIN_OPTIM_H
#define MC_TRAIN_OPTIM_H

#include "../backend/backend.h"

typedef enum mc_lr_kind { MC_LR_CONSTANT, MC_LR_LINEAR, MC_LR_COSINE } mc_lr_kind;

/* "constant" (also NULL), "linear" or "cosine"; else MC_ERR_INVALID_ARG. */
mc_status mc_lr_schedule_parse(const char *name, mc_lr_kind *out);

/* Learning rate of optimizer step `step` (1-based) of `total`, as Hugging Face's
 * get_{constant,linear,cosine}_schedule_with_warmup compute it from c = step - 1: linear
 * warmup lr * c / warmup while c < warmup (so the first step of a warmup uses 0), then
 * constant lr, or a linear ((total - c) / (total - warmup)) or cosine
 * (0.5 (1 + cos(pi (c - warmup) / (total - warmup)))) decay factor applied between min_lr
 * and lr. */
double mc_lr_at(mc_lr_kind kind, double lr, double min_lr, int warmup, int total, int step);

/* Global L2 norm of g[0..n); when max_norm > 0, scales g by min(1, max_norm / (norm +
 * 1e-6)) as torch.nn.utils.clip_grad_norm_. Returns the norm before clipping. */
double mc_clip_grads(mc_backend *be, float *g, size_t n, double max_norm);

typedef enum mc_optim_kind { MC_OPT_ADAMW, MC_OPT_SGD } mc_optim_kind;

typedef struct mc_optim_hparams {
    double lr, beta1, beta2, eps, weight_decay, momentum;
} mc_optim_hparams;

/* Optimizer state: moments on the device (m = AdamW first moment or SGD momentum buffer,
 * v = AdamW second moment), and the step count. */
typedef struct mc_optim {
    mc_backend *be;
    mc_optim_kind kind;
    size_t n;
    float *m, *v; /* [n] */
    int step;
} mc_optim;

mc_status mc_optim_init(mc_optim *o, mc_backend *be, mc_optim_kind kind, size_t n);
void mc_optim_free(mc_optim *o);
/* One update of p[0..n) with gradient g (step count advances first). */
mc_status mc_optim_step(mc_optim *o, float *p, const float *g, const mc_optim_hparams *h);

#endif /* MC_TRAIN_OPTIM_H */
