/* optim.c - learning-rate schedules, gradient clipping and the optimizers (AdamW as
 * torch.optim.AdamW, SGD with momentum as torch.optim.SGD). */
#include <math.h>

#include "optim.h"

mc_status mc_lr_schedule_parse(const char *name, mc_lr_kind *out) {
    if (!name || !strcmp(name, "constant")) *out = MC_LR_CONSTANT;
    else if (!strcmp(name, "linear")) *out = MC_LR_LINEAR;
    else if (!strcmp(name, "cosine")) *out = MC_LR_COSINE;
    else
        return mc_fail(MC_ERR_INVALID_ARG, "unknown learning-rate schedule '%s' (constant, linear, "
                       "cosine)", name);
    return MC_OK;
}

double mc_lr_at(mc_lr_kind kind, double lr, double min_lr, int warmup, int total, int step) {
    int c = step - 1; /* optimizer steps already taken, as Hugging Face's schedulers count */
    double progress, factor;
    if (c < warmup) return lr * (double)c / (double)warmup;
    if (kind == MC_LR_CONSTANT) return lr;
    progress = (double)(c - warmup) / (double)MC_MAX(1, total - warmup);
    if (progress > 1) progress = 1;
    if (kind == MC_LR_LINEAR)
        factor = MC_MAX(0.0, (double)(total - c) / (double)MC_MAX(1, total - warmup));
    else
        factor = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return min_lr + (lr - min_lr) * factor;
}

double mc_clip_grads(mc_backend *be, float *g, size_t n, double max_norm) {
    double norm = sqrt(be->sumsq_f32(be, g, n));
    if (max_norm > 0) {
        /* torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), at most 1
         * (so a norm just below max_norm, within the 1e-6, is scaled too) */
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) be->scale_f32(be, g, n, (float)coef);
    }
    return norm;
}

mc_status mc_optim_init(mc_optim *o, mc_backend *be, mc_optim_kind kind, size_t n) {
    size_t bytes = MC_MAX(n, (size_t)1) * sizeof(float);
    memset(o, 0, sizeof *o);
    o->be = be;
    o->kind = kind;
    o->n = n;
    o->m = be->alloc(be, bytes);
    if (kind == MC_OPT_ADAMW) o->v = be->alloc(be, bytes);
    if (!o->m || (kind == MC_OPT_ADAMW && !o->v)) {
        mc_optim_free(o);
        return mc_fail(MC_ERR_OOM, "out of memory for optimizer state (%zu parameters)", n);
    }
    be->zero(be, o->m, bytes);
    if (o->v) be->zero(be, o->v, bytes);
    return MC_OK;
}

void mc_optim_free(mc_optim *o) {
    if (o->m) o->be->free(o->be, o->m);
    if (o->v) o->be->free(o->be, o->v);
    o->m = o->v = NULL;
}

/* torch.optim.SGD on host copies: d = g + wd p; buf = momentum buf + d (buf = d at the
 * first step); p -= lr * (momentum ? buf : d). */
static mc_status sgd_step(mc_optim *o, float *p, const float *g, const mc_optim_hparams *h) {
    mc_backend *be = o->be;
    size_t n = o->n, i, bytes = n * sizeof(float);
    float *hp = mc_malloc(bytes), *hg = mc_malloc(bytes), *hb = mc_malloc(bytes);
    mc_status s = MC_OK;
    if (!hp || !hg || !hb) {
        s = mc_fail(MC_ERR_OOM, "out of memory for the SGD step");
        goto done;
    }
    s = be->to_host(be, hp, p, bytes);
    if (s == MC_OK) s = be->to_host(be, hg, g, bytes);
    if (s == MC_OK) s = be->to_host(be, hb, o->m, bytes);
    if (s != MC_OK) goto done;
    for (i = 0; i < n; i++) {
        float d = hg[i] + (float)h->weight_decay * hp[i];
        if (h->momentum != 0) {
            hb[i] = o->step == 1 ? d : (float)h->momentum * hb[i] + d;
            d = hb[i];
        }
        hp[i] -= (float)h->lr * d;
    }
    s = be->to_device(be, p, hp, bytes);
    if (s == MC_OK) s = be->to_device(be, o->m, hb, bytes);
done:
    mc_free(hp);
    mc_free(hg);
    mc_free(hb);
    return s;
}

mc_status mc_optim_step(mc_optim *o, float *p, const float *g, const mc_optim_hparams *h) {
    o->step++;
    if (o->kind == MC_OPT_SGD) return sgd_step(o, p, g, h);
    o->be->adamw(o->be, p, g, o->m, o->v, o->n, (float)h->lr, (float)h->beta1, (float)h->beta2,
                 (float)h->eps, (float)h->weight_decay, o->step);
    return MC_OK;
}
