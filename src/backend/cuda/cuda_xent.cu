/* cuda_xent.cu - fused linear cross-entropy: lm_head GEMM, softmax, loss and the
 * gradient with respect to the hidden states, over chunks of rows so that at most a
 * [chunk, V] block of logits (f32) and of gradients (the weight dtype) exists at a time
 * (about 256 MiB for Qwen's 151,936-token vocabulary). Per-row losses are summed on the
 * host in row order, so the result does not depend on scheduling. */
#include <math.h>

#include "cuda_internal.h"

enum { XENT_THREADS = 512 };
static const size_t XENT_CHUNK_BYTES = (size_t)256 << 20;

struct XentArgs {
    const float *logits;    /* [rows, V] */
    void *grad;             /* [rows, V] softmax - onehot in dtype gdt, or NULL */
    const int32_t *targets; /* [rows] */
    double *loss;           /* [rows] */
    int V, gdt;
};

static __device__ float xent_reduce(float v, float *red, bool is_max) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < XENT_THREADS / 32; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

static __device__ __forceinline__ void store_g(void *g, int dt, size_t i, float v) {
    if (dt == MC_BF16) ((__nv_bfloat16 *)g)[i] = __float2bfloat16(v);
    else if (dt == MC_F16) ((__half *)g)[i] = __float2half(v);
    else ((float *)g)[i] = v;
}

/* One block per row: loss = logsumexp(l) - l[target]; grad = softmax(l) - onehot(target)
 * (zero for rows with a negative target). */
static __global__ void __launch_bounds__(XENT_THREADS) xent_kernel(const XentArgs a) {
    cu_dep_wait();
    __shared__ float red[XENT_THREADS / 32];
    const int r = blockIdx.x;
    const int tg = a.targets[r];
    const float *row = a.logits + (size_t)r * a.V;
    const size_t base = (size_t)r * a.V;
    if (tg < 0) {
        if (threadIdx.x == 0) a.loss[r] = 0.0;
        if (a.grad)
            for (int v = threadIdx.x; v < a.V; v += XENT_THREADS) store_g(a.grad, a.gdt, base + v, 0.0f);
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < a.V; v += XENT_THREADS) mx = fmaxf(mx, row[v]);
    mx = xent_reduce(mx, red, true);
    float s = 0.0f;
    for (int v = threadIdx.x; v < a.V; v += XENT_THREADS) s += expf(row[v] - mx);
    s = xent_reduce(s, red, false);
    const float lse = mx + logf(s);
    if (threadIdx.x == 0) a.loss[r] = (double)lse - (double)row[tg];
    if (a.grad)
        for (int v = threadIdx.x; v < a.V; v += XENT_THREADS)
            store_g(a.grad, a.gdt, base + v, expf(row[v] - lse) - (v == tg ? 1.0f : 0.0f));
}

static cudaDataType_t xent_type(mc_dtype t) {
    switch (t) {
    case MC_BF16: return CUDA_R_16BF;
    case MC_F16: return CUDA_R_16F;
    case MC_F32: return CUDA_R_32F;
    }
    return CUDA_R_32F;
}

mc_status cu_linear_xent(mc_backend *be, void *dh, double *loss_sum, const void *h, mc_wt w,
                         const int32_t *targets, int T, int D, int V, float grad_scale) {
    mc_cuda *c = cu_ctx(be);
    const size_t esz = mc_dtype_size(w.dtype);
    const float one = 1.0f, zero = 0.0f;
    double *host = NULL, total = 0;
    size_t R;
    int r0;
    if (T <= 0) return cu_take_error(c);
    c->shadow_hint = w.dtype;
    R = XENT_CHUNK_BYTES / ((size_t)V * (sizeof(float) + esz));
    if (R >= 16) R -= R % 16;
    if (R < 1) R = 1;
    if (R > (size_t)T) R = (size_t)T;
    const void *hc = cu_act_as(c, (const float *)h, (size_t)T * (size_t)D, w.dtype);
    float *logits = (float *)cu_scratch(c, CU_S_XENT_LOGITS, R * (size_t)V * sizeof(float), false);
    void *grad = dh ? cu_scratch(c, CU_S_XENT_GRAD, R * (size_t)V * esz, false) : NULL;
    double *loss = (double *)cu_scratch(c, CU_S_XENT_LOSS, (size_t)T * sizeof(double), false);
    host = (double *)mc_malloc((size_t)T * sizeof(double));
    if (!host) cu_set_error(c, MC_ERR_OOM, "linear_xent: out of host memory for %d losses", T);
    if (!hc || !logits || (dh && !grad) || !loss || !host) goto done;
    if (dh) cu_note_write(c, dh, (size_t)T * (size_t)D * sizeof(float));
    for (r0 = 0; r0 < T; r0 += (int)R) {
        const int rows = (int)MC_MIN(R, (size_t)(T - r0));
        XentArgs a;
        cu_break(c);
        int ps = cu_prof_begin(c, "cublas xent logits");
        /* logits [rows, V] = h W^T (column-major: [V, rows] = W [V, D]-as-(D x V)^T h^T) */
        if (!cu_check_blas(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, V, rows, D, &one,
                                           w.data, xent_type(w.dtype), D,
                                           (const char *)hc + (size_t)r0 * D * esz,
                                           xent_type(w.dtype), D, &zero, logits, CUDA_R_32F, V,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                           "linear_xent logits"))
            break;
        cu_prof_end(c, ps);
        memset(&a, 0, sizeof a);
        a.logits = logits;
        a.grad = grad;
        a.targets = targets + r0;
        a.loss = loss + r0;
        a.V = V;
        a.gdt = (int)w.dtype;
        cu_launch(c, xent_kernel, dim3((unsigned)rows), dim3(XENT_THREADS), 0, a, "linear_xent");
        if (dh) {
            cu_break(c);
            ps = cu_prof_begin(c, "cublas xent dh");
            /* dh [rows, D] = grad_scale (softmax - onehot) W (column-major: [D, rows]) */
            if (!cu_check_blas(c, cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, V,
                                               &grad_scale, w.data, xent_type(w.dtype), D, grad,
                                               xent_type(w.dtype), V, &zero,
                                               (float *)dh + (size_t)r0 * D, CUDA_R_32F, D,
                                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                               "linear_xent dh"))
                break;
            cu_prof_end(c, ps);
        }
    }
    cu_end_segment(c);
    if (c->err == MC_OK &&
        cu_check(c, cudaMemcpyAsync(host, loss, (size_t)T * sizeof(double), cudaMemcpyDeviceToHost,
                                    c->stream),
                 "linear_xent losses") &&
        cu_check(c, cudaStreamSynchronize(c->stream), "linear_xent")) {
        for (r0 = 0; r0 < T; r0++) total += host[r0];
        *loss_sum += total;
    }
done:
    mc_free(host);
    (void)zero;
    return cu_take_error(c);
}
