/* train.h - internal pieces of LoRA training: token batches, the forward/backward step
 * over the ops table, the optimizer, learning-rate schedules and the data loader. */
#ifndef MC_TRAIN_H
#define MC_TRAIN_H

#include "../lora/lora.h"

/* A micro-batch flattened to N = rows x len token rows. Row b holds one example, or
 * several packed ones; each example is a segment with positions restarting at 0 and
 * attention kept inside it. Padding rows form segments whose targets are all -1. */
typedef struct mc_batch {
    int N;              /* token rows */
    int32_t *ids;       /* [N] input ids */
    int32_t *targets;   /* [N] next-token target, -1 = no loss */
    int32_t *pos;       /* [N] position inside its segment */
    int n_seg;
    int *seg_start;     /* [n_seg] first row of each segment */
    int *seg_len;       /* [n_seg] rows of each segment */
    int n_targets;      /* rows with targets >= 0 */
    int cap_rows, cap_seg; /* allocated capacity */
} mc_batch;

mc_status mc_batch_reserve(mc_batch *b, int rows, int segs);
void mc_batch_free(mc_batch *b);
void mc_batch_clear(mc_batch *b);
/* Appends one segment: ids[0..n) with targets tg[0..n) (-1 = masked). */
mc_status mc_batch_add(mc_batch *b, const int32_t *ids, const int32_t *tg, int n);

/* Activations one layer keeps for its backward pass. */
typedef struct mc_layer_acts {
    void *x_in;   /* [N, D] layer input (residual stream) */
    void *xn1;    /* [N, D] rmsnorm(x_in) */
    void *q;      /* [N, q_dim] after rope */
    void *k, *v;  /* [N, kv_dim] (k after rope) */
    void *qn, *kn; /* [N, q_dim], [N, kv_dim] q/k before their per-head norm (qwen3) */
    void *att;    /* [N, q_dim] attention output */
    void *x_mid;  /* [N, D] after the attention residual */
    void *xn2;    /* [N, D] rmsnorm(x_mid) */
    void *gate;   /* [N, F] gate projection (before silu) */
    void *up;     /* [N, F] */
    void *h;      /* [N, F] silu(gate) * up */
} mc_layer_acts;

/* Training state for one model + adapter: activations, gradients and scratch. */
typedef struct mc_trainer_core {
    mc_model *m;
    mc_adapter *a;
    int max_rows;          /* N capacity */
    bool checkpointing;    /* keep only layer inputs; recompute in backward */
    mc_layer_acts *acts;   /* [L] saved for the backward (checkpointing: only x_in) */
    mc_layer_acts work;    /* xn1, xn2 and h of the layer at hand (recomputed in the
                            * backward), plus the rest when checkpointing */
    void *x_final;         /* [N, D] output of the last layer */
    void *h_final;         /* [N, D] rmsnorm(x_final) */
    void *dx, *dtmp;       /* [N, D] */
    void *dq, *dk, *dv;    /* [N, q_dim], [N, kv_dim] x2 */
    void *dF1, *dF2;       /* [N, F]: the MLP's gradients alone, from one layer's backward to
                            * the next (a backend may hold them in a compact form) */
    void *datt;            /* [N, q_dim] the attention output's gradient; then the q/k norms'
                            * scratch */
    float *grads;          /* [n_params] like a->params */
    float *lora_tmp2;      /* [N, n r] s dy B of the n <= 3 adapted projections of a
                            * group (mc_lora_group) */
    float *lora_xa;        /* [n adapted projections, N, r] dropout(x) A^T of each adapted
                            * projection, kept from its forward for its backward; a group's
                            * projections share one [N, n r] block */
    int *xa_slot;          /* [L * MC_LM_COUNT] index into lora_xa, -1 when not adapted */
    void *drop_buf;        /* [N, max(F, q_dim, D)] dropout(x) for the LoRA input */
    int32_t *ids_dev, *tg_dev, *pos_dev; /* [N] */
    uint64_t dropout_seed; /* per step, set by the caller */
} mc_trainer_core;

mc_status mc_trainer_core_create(mc_model *m, mc_adapter *a, int max_rows, bool checkpointing,
                                 mc_trainer_core **out);
void mc_trainer_core_free(mc_trainer_core *c);

/* Forward and backward of one micro-batch. Adds grad_scale * d(loss_sum)/d(params) into
 * c->grads (so pass 1 / total targets of the optimizer step) and adds the summed
 * cross-entropy of its targets to *loss_sum. want_grad false = loss only (evaluation). */
mc_status mc_train_microbatch(mc_trainer_core *c, const mc_batch *b, float grad_scale,
                              bool want_grad, double *loss_sum);

#endif /* MC_TRAIN_H */
