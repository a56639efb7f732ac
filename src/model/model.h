/* model.h - internal model representation: config, bound weights, and the forward state
 * (KV cache + activation scratch) that the generator and trainer drive.
 *
 * A model is immutable after load: weights are views into the mmapped safetensors files
 * (made usable by the backend through be->weights). Per-run state lives in mc_fwd. */
#ifndef MC_MODEL_H
#define MC_MODEL_H

#include "../backend/backend.h"
#include "../io/io.h"

/* Weights of one decoder layer. Absent optional tensors have data == NULL. */
typedef struct mc_layer_w {
    mc_wt attn_norm;          /* [D] */
    mc_wt q_w, q_b;           /* [Hq*hd, D], [Hq*hd] */
    mc_wt k_w, k_b;           /* [Hkv*hd, D], [Hkv*hd] */
    mc_wt v_w, v_b;           /* [Hkv*hd, D], [Hkv*hd] */
    mc_wt o_w, o_b;           /* [D, Hq*hd], [D] (o_b: llama with attention_bias) */
    mc_wt q_norm, k_norm;     /* [hd] (qwen3) */
    mc_wt mlp_norm;           /* [D] */
    mc_wt gate_w, up_w;       /* [F, D] */
    mc_wt down_w;             /* [D, F] */
} mc_layer_w;

struct mc_model {
    mc_config cfg;
    mc_st_set st;             /* mapped files; weights point into them */
    mc_backend *be;
    mc_wt embed;              /* [V, D] */
    mc_wt final_norm;         /* [D] */
    mc_wt lm_head;            /* [V, D] (== embed when tied) */
    mc_layer_w *layers;       /* [L] */
    const void **dev_weights; /* [n_dev] device copies to release (backends that upload) */
    size_t n_dev;
    uint64_t n_params;
    uint64_t weight_bytes;
    mc_dtype dtype;           /* dtype of the embedding as stored */
};

/* Dimensions derived from the config, used everywhere in the forward pass. */
typedef struct mc_dims {
    int D, F, V, L, Hq, Hkv, hd, q_dim, kv_dim;
} mc_dims;

mc_dims mc_model_dims(const mc_model *m);

/* Forward state: KV caches for n_seq sequences of n_ctx positions each, and scratch for
 * up to n_batch rows per call. */
typedef struct mc_fwd {
    const mc_model *m;
    int n_seq, n_ctx, n_batch;
    int *n_past;              /* [n_seq] positions already cached per sequence */
    void *k_cache, *v_cache;  /* [L, n_seq, n_ctx, kv_dim] each */
    void *x;                  /* [n_batch, D] residual stream */
    void *xn;                 /* [n_batch, D] normed input */
    void *q;                  /* [n_batch, q_dim] */
    void *att;                /* [n_batch, q_dim] attention output */
    void *k_tmp, *v_tmp;      /* [n_batch, kv_dim] new keys/values of a multi-sequence step */
    void *gate, *up;          /* [n_batch, F] */
    void *logits;             /* [n_batch, V] */
    float *logits_view;       /* [view_rows, V] host copy of a step's logits (be->alloc_host's) */
    int view_rows;            /* logits rows a step keeps readable through mc_fwd_logits */
    bool view_valid;          /* logits_view holds the last call's logits */
    int32_t *ids_dev;         /* [n_batch] */
    int32_t *pos_dev;         /* [n_batch] */
    int32_t *pos_host;        /* [n_batch] */
    mc_att_row *att_rows;     /* [n_batch] a multi-sequence step's rows (attention_rows) */
    const struct mc_adapter *adapter; /* LoRA applied unmerged, or NULL */
    float lora_scale;         /* adapter scale x user multiplier */
    float *lora_tmp;          /* [n_batch, rank] scratch of the LoRA path */
} mc_fwd;

/* Attaches an adapter (NULL detaches); allocates the LoRA scratch. */
mc_status mc_fwd_set_adapter(mc_fwd *f, const struct mc_adapter *a, float scale_mul);

/* Allocates a forward state. MC_ERR_OOM names the bytes wanted. */
mc_status mc_fwd_create(const mc_model *m, int n_seq, int n_ctx, int n_batch, mc_fwd **out);
void mc_fwd_free(mc_fwd *f);
/* Bytes mc_fwd_create would allocate. */
uint64_t mc_fwd_bytes(const mc_model *m, int n_seq, int n_ctx, int n_batch);

typedef enum mc_logits_mode { MC_LOGITS_NONE = 0, MC_LOGITS_LAST = 1, MC_LOGITS_ALL = 2 } mc_logits_mode;

/* Runs ids[0..T) (T <= n_batch) of sequence seq at its positions n_past..n_past+T-1,
 * appends their keys and values to its cache and advances its n_past. MC_LOGITS_ALL:
 * logits_host receives [T, V]; MC_LOGITS_LAST: only the last row [V]; MC_LOGITS_NONE:
 * none computed. With logits_host NULL, up to MC_FWD_VIEW_ROWS rows stay readable through
 * mc_fwd_logits (more are computed and dropped). MC_ERR_CONTEXT_FULL if the tokens do not
 * fit. */
mc_status mc_fwd_run(mc_fwd *f, int seq, const int32_t *ids, int T, mc_logits_mode mode,
                     float *logits_host);

/* One token for each of B distinct sequences (B <= n_batch) in one batched pass: row b is
 * ids[b] of sequence seqs[b] at its next position. logits_host receives [B, V] (NULL:
 * see mc_fwd_logits). */
mc_status mc_fwd_step(mc_fwd *f, const int *seqs, const int32_t *ids, int B, float *logits_host);

/* mc_fwd_step for greedy decoding: next[b] receives the argmax of row b's logits (the first
 * index on ties), which never leave the device (be->argmax_rows; MC_ERR_UNSUPPORTED when
 * the backend has none, MC_ERR_NUMERIC for a NaN or +inf logit or a row of -inf). */
mc_status mc_fwd_step_argmax(mc_fwd *f, const int *seqs, const int32_t *ids, int B, int32_t *next);
/* Greedy decoding a step ahead (backends with argmax_queue): queues one decode step of
 * sequence seq, whose token is *id (host) or, with id NULL, the argmax the step queued
 * before it left on the device, advances its n_past and queues the step's own argmax;
 * returns without waiting. At most two steps are queued and not yet waited for. */
mc_status mc_fwd_step_queue(mc_fwd *f, int seq, const int32_t *id);
/* Waits for the oldest queued step: *next = its argmax (or argmax_rows' failure). */
mc_status mc_fwd_step_wait(mc_fwd *f, int32_t *next);
/* Gives back sequence seq's newest position: the step queued ahead there is not kept (its
 * key and value rows lie past n_past, where the next step writes its own). */
void mc_fwd_step_drop(mc_fwd *f, int seq);

/* Rows of logits a call with logits_host == NULL keeps readable on the host. */
enum { MC_FWD_VIEW_ROWS = 8 };

/* The logits of the last mc_fwd_run / mc_fwd_step, when it was called with logits_host
 * NULL and at most MC_FWD_VIEW_ROWS rows: [rows, V] floats owned by f, readable until the
 * next call on f (on CUDA: copied by DMA into page-locked memory, read with no further
 * copy). NULL otherwise. */
const float *mc_fwd_logits(const mc_fwd *f);

/* Forgets cached positions of seq from n onwards (n <= n_past). */
void mc_fwd_truncate(mc_fwd *f, int seq, int n);

/* Mean next-token cross-entropy helper: -log softmax(logits)[target] for one row, in
 * double; logits [V]. */
double mc_row_nll(const float *logits, int V, int target);

#endif /* MC_MODEL_H */
