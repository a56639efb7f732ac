/* backend.h - the ops table: the seam between model/trainer/generator code and devices.
 *
 * A backend is a struct of function pointers plus a private context. Model code allocates
 * device buffers through it, moves bytes with to_device/to_host, and calls ops; it never
 * dereferences a device pointer. Activation buffers are `void *` holding elements of
 * be->act_dtype (MC_F32 on the CPU backends); pointer arithmetic on them goes through
 * mc_act_at(). Weights are mc_wt views: device pointer + stored dtype (bf16/f16/f32).
 *
 * Shapes are row-major; comments give them as [rows, cols]. All ops are synchronous from
 * the caller's view on CPU; a device backend may queue work and complete it at sync or
 * to_host. Ops validate nothing: the model checks shapes once at load.
 *
 * Backends here: "cpu-ref" (plain loops: the specification) and "cpu" (AVX2/F16C kernels,
 * OpenBLAS GEMM on tiles converted on the fly, OpenMP threads). Tests compare the two. */
#ifndef MC_BACKEND_H
#define MC_BACKEND_H

#include "../core/core.h"

/* A weight tensor on the device: data in its stored dtype. data == NULL means "absent"
 * (e.g. no bias). mlp marks an MLP projection (gate, up or down): a device backend may hold
 * the wide activations of its products (the gate and up outputs, the down projection's
 * input gradient) at bf16 precision; other products (q/k/v/o, the vocabulary's logits)
 * keep the activation dtype's. */
typedef struct mc_wt {
    const void *data;
    mc_dtype dtype;
    bool mlp;
} mc_wt;

typedef struct mc_backend mc_backend;

/* One row of attention_rows: the key and value caches of the row's sequence ([>= pos + 1,
 * kv_dim] each, device memory) and the row's position. */
typedef struct mc_att_row {
    void *k, *v;
    int pos;
} mc_att_row;

/* The most rows one argmax_queue takes. */
#define MC_ARGMAX_QUEUE_ROWS 8

/* One output of matmul_multi: out = x W^T (+ b), N columns, row stride ldo. */
typedef struct mc_matmul_out {
    void *out;
    int ldo, N;
    mc_wt w, bias;
} mc_matmul_out;

struct mc_backend {
    const char *name;  /* "cpu", "cpu-ref", ... */
    mc_dtype act_dtype; /* element type of activation buffers */
    int n_threads;
    void *impl;        /* backend-private state */
    /* Ops queue work on a device and return before it is done (CUDA): greedy generation
     * then runs a step ahead where argmax_queue exists. A backend that computes each op
     * before returning (the CPU) gains nothing from that and would compute a step more
     * when the generation ends on EOS or a stop string. */
    bool async;

    /* ---- memory ---- */
    /* Device buffer of `bytes` bytes (64-byte aligned on CPU); NULL on failure. */
    void *(*alloc)(mc_backend *be, size_t bytes);
    void (*free)(mc_backend *be, void *p);
    /* Optional (NULL: plain host memory serves): host memory that to_host fills fastest,
     * for buffers copied into every step, such as a decode step's logits (CUDA: page-locked
     * memory the copy engine writes directly). NULL on failure; freed with free_host. */
    void *(*alloc_host)(mc_backend *be, size_t bytes);
    void (*free_host)(mc_backend *be, void *p);
    /* Copies host -> device / device -> host / device -> device. */
    mc_status (*to_device)(mc_backend *be, void *dst, const void *host_src, size_t bytes);
    mc_status (*to_host)(mc_backend *be, void *host_dst, const void *src, size_t bytes);
    mc_status (*copy)(mc_backend *be, void *dst, const void *src, size_t bytes);
    /* Makes host weight bytes (e.g. an mmapped tensor) usable by ops. CPU: *dev = host,
     * nothing copied. A device backend uploads and frees the copy in release_weights.
     * Optional: NULL means "use the host pointer". */
    mc_status (*weights)(mc_backend *be, const void *host, size_t bytes, const void **dev);
    void (*release_weights)(mc_backend *be, const void *dev);
    /* Waits for queued work; reports asynchronous failures. Optional (NULL = no-op). */
    mc_status (*sync)(mc_backend *be);
    /* Frees the backend itself. */
    void (*destroy)(mc_backend *be);

    /* ---- forward ops ---- */
    /* out[t,:] = table[ids[t],:] as activations. ids are device int32 [T]. */
    void (*embedding)(mc_backend *be, void *out /* [T, D] */, const int32_t *ids /* [T] */,
                      mc_wt table /* [V, D] */, int T, int D);
    /* out = x / sqrt(mean(x^2) + eps) * w, per row. out may equal x. */
    void (*rmsnorm)(mc_backend *be, void *out /* [T, D] */, const void *x /* [T, D] */,
                    mc_wt w /* [D] */, int T, int D, float eps);
    /* out = x W^T (+ b). Rows of out may have a stride: out row m starts at
     * out + m * ldo elements (ldo >= N), so results can land in a KV cache slice. */
    void (*matmul)(mc_backend *be, void *out /* [M, ldo] */, int ldo, const void *x /* [M, K] */,
                   mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, int M, int N, int K);
    /* Optional (NULL: callers use matmul once per output): the n products of one input,
     * each exactly as matmul computes it, in one pass (decode: q/k/v or gate/up in one
     * parallel region). No output overlaps x or another output. */
    void (*matmul_multi)(mc_backend *be, int n, const mc_matmul_out *outs, const void *x /* [M, K] */,
                         int M, int K);
    /* Rotary embedding in place, rotate-half convention (HF): for each head, pairs
     * (i, i + hd/2) rotated by angle pos * theta^(-2i/hd). Row t of x starts at
     * x + t * ldx elements and holds H heads of hd. */
    void (*rope)(mc_backend *be, void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */,
                 int T, int H, int hd, float theta);
    /* Causal grouped-query attention over a cache. Query row t (absolute position
     * pos0 + t) attends keys 0..pos0+t. k/v rows have kv_dim = Hkv*hd elements; query head
     * h uses kv head h / (Hq/Hkv). Scale 1/sqrt(hd). */
    void (*attention)(mc_backend *be, void *out /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                      const void *k /* [>= pos0+T, Hkv*hd] */, const void *v /* same */,
                      int T, int pos0, int Hq, int Hkv, int hd);
    /* Optional (NULL: callers copy each row's new key and value into its cache and call
     * attention once per row): a decode step of T rows of different sequences. Row t's new
     * key and value (rows t of k_new and v_new) are stored in its own cache at rows[t].pos,
     * then query row t attends that cache's keys 0..rows[t].pos, exactly as attention with
     * T = 1 and pos0 = rows[t].pos. rows is host memory; no two rows share a cache. */
    void (*attention_rows)(mc_backend *be, void *out /* [T, Hq*hd] */,
                           const void *q /* [T, Hq*hd] */, const void *k_new /* [T, Hkv*hd] */,
                           const void *v_new /* same */, const mc_att_row *rows /* [T] */, int T,
                           int Hq, int Hkv, int hd);
    /* out = silu(gate) * up, elementwise. out may equal gate or up. */
    void (*swiglu)(mc_backend *be, void *out /* [n] */, const void *gate, const void *up,
                   size_t n);
    /* y += x, elementwise. */
    void (*add)(mc_backend *be, void *y /* [n] */, const void *x /* [n] */, size_t n);
    /* Converts n activations to host f32. */
    mc_status (*to_host_f32)(mc_backend *be, float *host_dst, const void *src, size_t n);
    /* Optional (NULL: callers read the logits and scan them): out[r] = the index of the
     * largest of x[r, 0..n) for r < rows, the first one on ties, on the host (waits for
     * the device), exactly as mc_argmax_row computes it, including its MC_ERR_NUMERIC
     * failures. A greedy decode step then moves rows ints instead of rows x n floats. */
    mc_status (*argmax_rows)(mc_backend *be, int32_t *out /* [rows], host */,
                             const void *x /* [rows, n] */, int rows, int n);
    /* Optional, both or neither (NULL: callers use argmax_rows): greedy decoding a step
     * ahead. argmax_queue queues, without waiting, ids[r] = the argmax of row r of x (as
     * argmax_rows computes it) into device memory, where the next step's embedding reads
     * it; argmax_wait waits for the oldest queued argmax not yet waited for and gives its
     * rows on the host, with argmax_rows' failures (a failed row's id on the device is then
     * some valid token). At most two argmaxes are queued and not yet waited for, each of
     * at most MC_ARGMAX_QUEUE_ROWS rows. */
    mc_status (*argmax_queue)(mc_backend *be, int32_t *ids /* [rows], device */,
                              const void *x /* [rows, n] */, int rows, int n);
    mc_status (*argmax_wait)(mc_backend *be, int32_t *out /* [rows], host */, int rows);
    /* Optional (NULL: callers copy positions with to_device): pos[t] = start + t for t < T,
     * in device memory, queued like an op. */
    void (*fill_positions)(mc_backend *be, int32_t *pos /* [T], device */, int start, int T);

    /* ---- training ops ----
     * Base weights are frozen: their backward gives input gradients only. Gradient outputs
     * named "+=" accumulate (so residual branches and micro-batches add up); the others
     * overwrite. Each backward quotes the forward it differentiates. LoRA parameters,
     * their gradients and optimizer moments are f32 buffers (device memory). */

    /* C = alpha * op(A) op(B) + beta * C on f32 buffers, row-major with leading dims.
     * op(A) is [M, K] (A stored [K, M] when ta), op(B) is [K, N] (B stored [N, K] when tb).
     * beta == 0 ignores C's old contents (even NaN). Used for the LoRA paths. */
    void (*gemm_f32)(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc);
    /* forward: y = x W^T + b.  backward: dx (+)= dy W (accumulate selects += vs =). */
    void (*matmul_dx)(mc_backend *be, void *dx /* [M, K] */, const void *dy /* [M, N] */,
                      mc_wt w /* [N, K] */, int M, int N, int K, bool accumulate);
    /* forward: y = x * rsqrt(mean(x^2) + eps) * w.  backward: dx += dL/dx given dy, and
     * when xn is not NULL the forward's y again, bit for bit as rmsnorm gives it (xn
     * overlaps no other buffer), so a backward that needs it computes it on its way. */
    void (*rmsnorm_backward)(mc_backend *be, void *dx /* [T, D] += */,
                             void *xn /* [T, D] or NULL */, const void *dy /* [T, D] */,
                             const void *x /* [T, D] forward input */, mc_wt w /* [D] */, int T,
                             int D, float eps);
    /* forward: rope(x) rotates pairs by +angle.  backward: rotates dy by -angle, in place
     * (same layout arguments as rope). */
    void (*rope_backward)(mc_backend *be, void *dx /* [T, ldx] */, int ldx,
                          const int32_t *pos /* [T] */, int T, int H, int hd, float theta);
    /* forward: out = attention(q, k, v) for T rows at positions 0..T-1 (causal, GQA).
     * backward: dq = ..., dk = ..., dv = ... (overwrite; dk/dv sum over the query heads
     * that share a kv head). Rows of q/dq have q_dim = Hq*hd, rows of k/v/dk/dv kv_dim. */
    void (*attention_backward)(mc_backend *be, void *dq /* [T, q_dim] */, void *dk /* [T, kv_dim] */,
                               void *dv /* [T, kv_dim] */, const void *dout /* [T, q_dim] */,
                               const void *q, const void *k, const void *v, int T, int Hq,
                               int Hkv, int hd);
    /* forward: out = silu(gate) * up.  backward: dgate = dout * up * silu'(gate),
     * dup = dout * silu(gate) (overwrite; dgate may alias dout), and when h is not NULL the
     * forward's out again, bit for bit as swiglu gives it (h overlaps no other buffer), so
     * a backward that needs it computes it on its way. */
    void (*swiglu_backward)(mc_backend *be, void *dgate /* [n] */, void *dup /* [n] */,
                            void *h /* [n] or NULL */, const void *dout /* [n] */,
                            const void *gate, const void *up, size_t n);
    /* Fused lm_head + softmax + cross-entropy over T rows, never holding more than a chunk
     * of the [T, V] logits: logits = h W^T; for each row with targets[t] >= 0,
     * loss_sum += logsumexp(logits[t]) - logits[t][targets[t]] (double) and, when dh is
     * not NULL, dh[t] = grad_scale * (softmax(logits[t]) - onehot(targets[t])) W
     * (rows with target -1 get dh = 0). targets are device int32 [T]. */
    mc_status (*linear_xent)(mc_backend *be, void *dh /* [T, D] or NULL */, double *loss_sum,
                             const void *h /* [T, D] */, mc_wt w /* [V, D] */,
                             const int32_t *targets /* [T] */, int T, int D, int V,
                             float grad_scale);
    /* Inverted dropout with a counter-based mask: out[i] = keep(i) ? x[i] / (1 - p) : 0,
     * keep(i) a pure function of (seed, i), so the backward regenerates the same mask by
     * calling it again on dy. p == 0 copies. out may equal x. */
    void (*dropout)(mc_backend *be, void *out /* [n] */, const void *x /* [n] */, size_t n,
                    float p, uint64_t seed);
    /* One AdamW step exactly as torch.optim.AdamW (decoupled weight decay):
     *   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     *   p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). step >= 1. */
    void (*adamw)(mc_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
                  float b1, float b2, float eps, float wd, int step);
    /* Sum of squares of n f32 values, in double (for the global gradient norm). */
    double (*sumsq_f32)(mc_backend *be, const float *x, size_t n);
    /* x *= alpha on n f32 values. */
    void (*scale_f32)(mc_backend *be, float *x, size_t n, float alpha);
    /* Sets bytes of device memory to zero. */
    void (*zero)(mc_backend *be, void *p, size_t bytes);
};

/* attention_rows by its definition, a row at a time: each row's new key and value copied
 * into its cache, then attention with T = 1. What callers do without the op, and what a
 * backend can point the op to (or fall back to). */
void mc_attention_rows_by_row(mc_backend *be, void *out, const void *q, const void *k_new,
                              const void *v_new, const mc_att_row *rows, int T, int Hq, int Hkv,
                              int hd);

/* Element i of an activation buffer (pointer arithmetic only; never dereferenced). */
static inline void *mc_act_at(const mc_backend *be, void *p, size_t i) {
    return (char *)p + i * mc_dtype_size(be->act_dtype);
}
static inline const void *mc_act_at_c(const mc_backend *be, const void *p, size_t i) {
    return (const char *)p + i * mc_dtype_size(be->act_dtype);
}

/* Creates a CPU backend: reference kernels (plain loops, one thread) or fast kernels
 * (n_threads; 0 = all cores). */
mc_status mc_backend_cpu_create(int n_threads, bool reference, mc_backend **out);

/* Frees a backend (NULL is a no-op). */
void mc_backend_free(mc_backend *be);

#endif /* MC_BACKEND_H */
