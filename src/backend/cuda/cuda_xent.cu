/* cuda_xent.cu - fused linear cross-entropy: lm_head GEMM, softmax, loss and the
 * gradient with respect to the hidden states, over chunks of rows so that at most a
 * [chunk, V] block of logits and of gradients (the weight dtype) exists at a time (at most
 * 512 MiB: 768 rows of Qwen's 151,936-token vocabulary). With bf16 weights the logits are
 * bf16, as the bf16 lm_head of transformers gives them (sums in f32, rounded once): half
 * the bytes to write and read, and two thirds as many chunks, each re-reading the weight,
 * as f32 logits (MC_CUDA_XENT=f32: f32 logits). Per-row losses are summed on the host in
 * row order, so the result does not depend on scheduling. The gradient GEMM reduces over
 * the vocabulary with only a [rows, D] output: it runs as a batch over slices of the
 * vocabulary whose partial sums (in the logits buffer, free by then) are added in slice
 * order. */
#include <math.h>

#include <cooperative_groups.h>

#include "cuda_internal.h"

namespace cg = cooperative_groups;

enum { XENT_THREADS = 512, XENT_MIN_SLICE = 4096, XENT_MAX_SLICES = 8 };
/* the most shared memory of a block's share of a row (its limit is raised once, at setup) */
static const size_t CU_XQ_SMEM_MAX = (size_t)200 << 10;
static const size_t XENT_CHUNK_BYTES = (size_t)512 << 20;

struct XentArgs {
    const void *logits;     /* [rows, V] of LT (xent_kernel's) */
    void *grad;             /* [rows, V] softmax - onehot in dtype gdt, or NULL */
    const int32_t *targets; /* [rows] */
    double *loss;           /* [rows] */
    int V, gdt;
};

/* (m, s) = (m, s) (+) (m2, s2): running maximum m and sum s of exp(l - m); m = -inf
 * (with s = 0) stands for no elements. */
static __device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
        return;
    }
    const float mx = fmaxf(m, m2);
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

/* Adds x[0..4) to the running (m, s): rescales s once per new maximum of the four. */
static __device__ __forceinline__ void lse_add4(float &m, float &s, float4 x) {
    const float m4 = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));
    if (m4 > m) {
        s *= expf(m - m4);
        m = m4;
    }
    s += expf(x.x - m) + expf(x.y - m) + expf(x.z - m) + expf(x.w - m);
}

/* g[i..i+4) = v[0..4) in dtype dt; i a multiple of 4 and g 8-byte (f32: 16-byte) aligned. */
static __device__ __forceinline__ void store_g4(void *g, int dt, size_t i, float4 v) {
    if (dt == MC_BF16) {
        *reinterpret_cast<uint2 *>((__nv_bfloat16 *)g + i) =
            make_uint2(cu_pack_bf16(v.x, v.y), cu_pack_bf16(v.z, v.w));
    } else if (dt == MC_F16) {
        const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
        *reinterpret_cast<uint2 *>((__half *)g + i) =
            make_uint2(*reinterpret_cast<const uint32_t *>(&lo), *reinterpret_cast<const uint32_t *>(&hi));
    } else {
        *reinterpret_cast<float4 *>((float *)g + i) = v;
    }
}

static __device__ __forceinline__ void store_g(void *g, int dt, size_t i, float v) {
    if (dt == MC_BF16) ((__nv_bfloat16 *)g)[i] = __float2bfloat16(v);
    else if (dt == MC_F16) ((__half *)g)[i] = __float2half(v);
    else ((float *)g)[i] = v;
}

/* Logits four at a time (element 4 v on; rows of a multiple of 4 elements) and one at a
 * time, as f32; `last`: the row's last use (streamed past the caches). */
static __device__ __forceinline__ float4 logit4(const float *row, int v, bool last) {
    const float4 *p = reinterpret_cast<const float4 *>(row) + v;
    return last ? __ldcs(p) : *p;
}
static __device__ __forceinline__ float4 logit4(const __nv_bfloat16 *row, int v, bool last) {
    const uint2 *p = reinterpret_cast<const uint2 *>(row) + v;
    const uint2 u = last ? __ldcs(p) : *p;
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
static __device__ __forceinline__ float logit1(const float *row, int v) { return row[v]; }
static __device__ __forceinline__ float logit1(const __nv_bfloat16 *row, int v) {
    return __bfloat162float(row[v]);
}

/* The first half of a block's merge of its threads' (m, s): across each warp, the warps'
 * pairs left in red_m, red_s (XENT_THREADS / 32 each) for lse_red. */
static __device__ __forceinline__ void lse_warps(float m, float s, float *red_m, float *red_s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if ((threadIdx.x & 31) == 0) {
        red_m[threadIdx.x >> 5] = m;
        red_s[threadIdx.x >> 5] = s;
    }
    __syncthreads();
}

/* The second half: the warps' pairs merged in warp order, so the result does not change
 * from run to run. */
static __device__ __forceinline__ void lse_red(float &m, float &s, const float *red_m,
                                               const float *red_s) {
    m = red_m[0];
    s = red_s[0];
    for (int i = 1; i < XENT_THREADS / 32; i++) lse_merge(m, s, red_m[i], red_s[i]);
}

/* One block per row of logits of type LT: loss = logsumexp(l) - l[target]; grad =
 * softmax(l) - onehot(target) (zero for rows with a negative target). The row is read
 * twice: once for its maximum and sum of exponentials together (a running maximum that
 * rescales the sum), once for the gradient; with V a multiple of 4 both four elements a
 * load. Every thread's (m, s) is merged in a fixed order, so the result does not change
 * from run to run. */
template <typename LT>
static __global__ void __launch_bounds__(XENT_THREADS) xent_kernel(const XentArgs a) {
    cu_dep_wait();
    __shared__ float red_m[XENT_THREADS / 32], red_s[XENT_THREADS / 32];
    const int r = blockIdx.x;
    const int tg = a.targets[r];
    const LT *row = static_cast<const LT *>(a.logits) + (size_t)r * a.V;
    const size_t base = (size_t)r * a.V;
    const int v4 = a.V % 4 == 0 ? a.V / 4 : 0; /* rows then start 4-element aligned */
    if (tg < 0) {
        if (threadIdx.x == 0) a.loss[r] = 0.0;
        if (a.grad) {
            for (int v = threadIdx.x; v < v4; v += XENT_THREADS)
                store_g4(a.grad, a.gdt, base + 4 * (size_t)v, make_float4(0.0f, 0.0f, 0.0f, 0.0f));
            for (int v = 4 * v4 + threadIdx.x; v < a.V; v += XENT_THREADS) store_g(a.grad, a.gdt, base + v, 0.0f);
        }
        return;
    }
    float m = -INFINITY, s = 0.0f;
    for (int v = threadIdx.x; v < v4; v += XENT_THREADS) lse_add4(m, s, logit4(row, v, false));
    for (int v = 4 * v4 + threadIdx.x; v < a.V; v += XENT_THREADS)
        lse_merge(m, s, logit1(row, v), 1.0f);
    lse_warps(m, s, red_m, red_s);
    lse_red(m, s, red_m, red_s);
    const float lse = m + logf(s);
    if (threadIdx.x == 0) a.loss[r] = (double)lse - (double)logit1(row, tg);
    if (!a.grad) return;
    for (int v = threadIdx.x; v < v4; v += XENT_THREADS) {
        const float4 x = logit4(row, v, true);
        const int k = 4 * v;
        const float4 g = make_float4(expf(x.x - lse) - (k == tg ? 1.0f : 0.0f),
                                     expf(x.y - lse) - (k + 1 == tg ? 1.0f : 0.0f),
                                     expf(x.z - lse) - (k + 2 == tg ? 1.0f : 0.0f),
                                     expf(x.w - lse) - (k + 3 == tg ? 1.0f : 0.0f));
        store_g4(a.grad, a.gdt, base + k, g);
    }
    for (int v = 4 * v4 + threadIdx.x; v < a.V; v += XENT_THREADS)
        store_g(a.grad, a.gdt, base + v, expf(logit1(row, v) - lse) - (v == tg ? 1.0f : 0.0f));
}

/* bf16 logits in one pass: a cluster of XQ blocks per row, each keeping its XQ-th of the
 * row (V / XQ elements, 16-byte pieces) in shared memory between the sums and the
 * gradient, so the row is read from memory once instead of twice (a chunk's rows, hundreds
 * of 300 KB, do not stay in L2 between two passes). Each block merges its threads' (m, s)
 * in a fixed order, then every block merges the cluster's XQ pairs in block order: the
 * result does not change from run to run. Needs V a multiple of 8 XQ. */
enum { XQ = 4 };

/* Eight bf16 (one 16-byte piece) as floats. */
static __device__ __forceinline__ void bf16x8_f(uint4 u, float (&x)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        x[2 * j] = __uint_as_float(w[j] << 16);
        x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}

static __global__ void __cluster_dims__(XQ, 1, 1) __launch_bounds__(XENT_THREADS)
    xent_row_kernel(const XentArgs a) {
    extern __shared__ __align__(16) unsigned char xq_dyn[];
    uint4 *part = reinterpret_cast<uint4 *>(xq_dyn); /* this block's V / XQ logits */
    __shared__ float red_m[XENT_THREADS / 32], red_s[XENT_THREADS / 32], ms[2];
    cg::cluster_group cluster = cg::this_cluster();
    const int q = (int)cluster.block_rank(), r = blockIdx.x / XQ, n8 = a.V / (8 * XQ);
    const __nv_bfloat16 *row = static_cast<const __nv_bfloat16 *>(a.logits) + (size_t)r * a.V;
    const uint4 *src = reinterpret_cast<const uint4 *>(row) + (size_t)q * n8;
    cu_dep_wait();
    const int tg = a.targets[r];
    float m = -INFINITY, s = 0.0f;
    if (tg >= 0) {
#pragma unroll 4
        for (int i = threadIdx.x; i < n8; i += XENT_THREADS) {
            const uint4 u = __ldcs(src + i);
            float x[8];
            part[i] = u;
            bf16x8_f(u, x);
            lse_add4(m, s, make_float4(x[0], x[1], x[2], x[3]));
            lse_add4(m, s, make_float4(x[4], x[5], x[6], x[7]));
        }
    }
    lse_warps(m, s, red_m, red_s);
    if (threadIdx.x == 0) { /* one thread merges: all of them doing it cost 5% */
        lse_red(m, s, red_m, red_s);
        ms[0] = m;
        ms[1] = s;
    }
    cluster.sync();
    m = -INFINITY;
    s = 0.0f;
    for (int p = 0; p < XQ; p++) {
        const float *o = cluster.map_shared_rank(ms, p);
        lse_merge(m, s, o[0], o[1]);
    }
    const float lse = m + logf(s);
    if (q == 0 && threadIdx.x == 0)
        a.loss[r] = tg < 0 ? 0.0 : (double)lse - (double)logit1(row, tg);
    if (a.grad) {
        __nv_bfloat16 *grow = static_cast<__nv_bfloat16 *>(a.grad) + (size_t)r * a.V;
        uint4 *dst = reinterpret_cast<uint4 *>(grow) + (size_t)q * n8;
        const int k0 = q * n8 * 8;
        for (int i = threadIdx.x; i < n8; i += XENT_THREADS) {
            uint4 g = make_uint4(0u, 0u, 0u, 0u);
            if (tg >= 0) {
                float x[8];
                bf16x8_f(part[i], x);
                const int k = k0 + 8 * i;
#pragma unroll
                for (int j = 0; j < 8; j++) x[j] = expf(x[j] - lse) - (k + j == tg ? 1.0f : 0.0f);
                g = make_uint4(cu_pack_bf16(x[0], x[1]), cu_pack_bf16(x[2], x[3]),
                               cu_pack_bf16(x[4], x[5]), cu_pack_bf16(x[6], x[7]));
            }
            dst[i] = g;
        }
    }
    cluster.sync(); /* no block leaves while another reads its (m, s) */
}

void cu_xent_init(mc_cuda *c) {
    cu_smem_limit(c, (const void *)xent_row_kernel, (int)CU_XQ_SMEM_MAX, "linear_xent setup");
}

/* Vocabulary slices of the gradient GEMM: the most (a power of two up to XENT_MAX_SLICES)
 * that split V into equal multiples of 8 at least XENT_MIN_SLICE long, their partial sums
 * fitting in the logits buffer (S D <= V); 1 when none do. A tail GEMM for a remainder
 * would cost more than the slices save. */
static int xent_slices(int D, int V) {
    int s = XENT_MAX_SLICES;
    while (s > 1 && (V % (8 * s) != 0 || V / s < XENT_MIN_SLICE || s * D > V)) s /= 2;
    return s;
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
    const float zero = 0.0f;
    double *host = NULL, total = 0;
    size_t R;
    int r0;
    if (T <= 0) return cu_take_error(c);
    c->shadow_hint = w.dtype; /* h is read through cu_act_as (packed or f32) */
    /* bf16 logits: rows of a multiple of 4 (8-byte aligned for the four-at-a-time loads),
     * and the cuBLASLt gradient GEMM (the sliced one keeps f32 partial sums in this buffer) */
    const bool l16 = w.dtype == MC_BF16 && c->lt_on && c->xent16 && V % 4 == 0;
    const size_t lsz = l16 ? 2 : sizeof(float);
    /* one pass over each row when a cluster's blocks can hold it (the gradient in bf16) */
    const size_t xq_smem = (size_t)V / XQ * 2;
    const bool xq = l16 && c->xq_on && V % (8 * XQ) == 0 && xq_smem <= CU_XQ_SMEM_MAX;
    R = XENT_CHUNK_BYTES / ((size_t)V * (lsz + esz));
    /* whole tiles of 128 rows for the GEMMs (432-row chunks left a third of their last
     * tile idle) */
    if (R >= 128) R -= R % 128;
    else if (R >= 16) R -= R % 16;
    if (R < 1) R = 1;
    if (R > (size_t)T) R = (size_t)T;
    if (dh) cu_note_write(c, dh, (size_t)T * (size_t)D * sizeof(float)); /* before h's view */
    const void *hc = cu_act_as(c, (const float *)h, (size_t)T * (size_t)D, w.dtype);
    void *logits = cu_scratch(c, CU_S_XENT_LOGITS, R * (size_t)V * lsz, false);
    void *grad = dh ? cu_scratch(c, CU_S_XENT_GRAD, R * (size_t)V * esz, false) : NULL;
    double *loss = (double *)cu_scratch(c, CU_S_XENT_LOSS, (size_t)T * sizeof(double), false);
    host = (double *)mc_malloc((size_t)T * sizeof(double));
    if (!host) cu_set_error(c, MC_ERR_OOM, "linear_xent: out of host memory for %d losses", T);
    if (!hc || !logits || (dh && !grad) || !loss || !host) goto done;
    for (r0 = 0; r0 < T; r0 += (int)R) {
        const int rows = (int)MC_MIN(R, (size_t)(T - r0));
        XentArgs a;
        cu_break(c);
        {
            /* logits [rows, V] = h W^T (column-major: [V, rows] = W [V, D]-as-(D x V)^T h^T) */
            const cu_lt_shape s = {true, false, false, V, rows, D, D, D, V, xent_type(w.dtype),
                                   false, l16, false};
            if (!cu_gemm_lt(c, s, 1.0f, w.data, (const char *)hc + (size_t)r0 * D * esz,
                            logits, "cublas xent logits"))
                break;
        }
        memset(&a, 0, sizeof a);
        a.logits = logits;
        a.grad = grad;
        a.targets = targets + r0;
        a.loss = loss + r0;
        a.V = V;
        a.gdt = (int)w.dtype;
        if (xq)
            cu_launch(c, xent_row_kernel, dim3((unsigned)rows * XQ), dim3(XENT_THREADS),
                      (unsigned)xq_smem, a, "linear_xent");
        else if (l16)
            cu_launch(c, xent_kernel<__nv_bfloat16>, dim3((unsigned)rows), dim3(XENT_THREADS), 0,
                      a, "linear_xent");
        else
            cu_launch(c, xent_kernel<float>, dim3((unsigned)rows), dim3(XENT_THREADS), 0, a,
                      "linear_xent");
        if (dh && c->lt_on) {
            /* dh [rows, D] = grad_scale (softmax - onehot) W (column-major: [D, rows]) */
            const cu_lt_shape s = {false, false, false, D, rows, V, D, V, D, xent_type(w.dtype),
                                   false, false, false};
            cu_break(c);
            if (!cu_gemm_lt(c, s, grad_scale, w.data, grad, (float *)dh + (size_t)r0 * D,
                            "cublas xent dh"))
                break;
        } else if (dh) {
            /* the same over S slices of V / S tokens (cublasGemmEx alone leaves most of the
             * device idle on this shape) */
            const int S = xent_slices(D, V), Vs = V / S;
            const cudaDataType_t dt = xent_type(w.dtype);
            float *out = (float *)dh + (size_t)r0 * D;
            cu_break(c);
            const int ps = cu_prof_begin(c, "cublas xent dh");
            if (!cu_check_blas(c, cublasGemmStridedBatchedEx(
                                      c->blas, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, Vs, &grad_scale,
                                      w.data, dt, D, (long long)Vs * D, grad, dt, V, Vs, &zero,
                                      S > 1 ? (float *)logits : out, CUDA_R_32F, D,
                                      (long long)rows * D, S,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                               "linear_xent dh"))
                break;
            cu_prof_end(c, ps);
            if (S > 1) /* the slices' partial sums, added in slice order */
                cu_sum_parts(c, out, D, (const float *)logits, rows, D, S, 1.0f, 0.0f,
                             "linear_xent dh reduce");
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

/* ---- greedy choice: the argmax of each row of logits ---- */

struct KeysArgs {
    const float *x; /* [rows, n] */
    int n, per;
    unsigned long long *keys, *clear; /* this argmax's slot, and the other one (cleared) */
};

/* The argmax keys of x's rows when no GEMV takes them over: block b of row r folds its
 * share of the row and raises the row's keys, as the GEMV's epilogue does. */
static __global__ void keys_kernel(const KeysArgs a) {
    cu_dep_wait();
    const int r = blockIdx.y;
    if (blockIdx.x == 0 && r == 0 && threadIdx.x < CU_AM_SLOT) a.clear[threadIdx.x] = 0;
    unsigned long long best = 0, bad = 0;
    const int i0 = blockIdx.x * a.per, i1 = min(a.n, i0 + a.per);
    for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x)
        cu_am_fold(best, bad, a.x[(size_t)r * a.n + i], i);
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long b2 = __shfl_xor_sync(0xffffffffu, best, o);
        const unsigned long long d2 = __shfl_xor_sync(0xffffffffu, bad, o);
        if (b2 > best) best = b2;
        if (d2 > bad) bad = d2;
    }
    if ((threadIdx.x & 31) == 0) {
        cu_am_push(a.keys + r, best);
        cu_am_push(a.keys + CU_GEMV_MAX_M + r, bad);
    }
}

unsigned long long *cu_argmax_keys(mc_cuda *c, const float *x, int rows, int n) {
    enum { BLOCKS = 64 };
    KeysArgs a;
    memset(&a, 0, sizeof a);
    a.x = x;
    a.n = n;
    a.per = (n + BLOCKS - 1) / BLOCKS;
    a.keys = c->am_keys + (size_t)c->am_slot * CU_AM_SLOT;
    c->am_slot ^= 1;
    a.clear = c->am_keys + (size_t)c->am_slot * CU_AM_SLOT;
    cu_launch(c, keys_kernel, dim3(BLOCKS, (unsigned)rows), dim3(256), 0, a, "argmax_keys");
    return a.keys;
}

/* out[r] for the rows < rows of n values whose keys a GEMV or keys_kernel left in slot dev
 * (CU_AM_SLOT), or argmax_rows' failure naming row r0 + r. */
static mc_status argmax_from_keys(mc_backend *be, int32_t *out, const unsigned long long *dev,
                                  int r0, int rows, int n) {
    unsigned long long k[CU_AM_SLOT];
    mc_status s = be->to_host(be, k, dev, sizeof k);
    for (int r = 0; s == MC_OK && r < rows; r++) {
        const unsigned long long bad = k[CU_GEMV_MAX_M + r];
        if (bad)
            s = mc_argmax_fail(r0 + r, (int)(0xffffffffu - (unsigned)(bad >> 1)), (int)(bad & 1),
                               n);
        else if (!k[r]) s = mc_argmax_fail(r0 + r, -1, 0, n);
        else out[r] = (int32_t)(0xffffffffu - (unsigned)(k[r] & 0xffffffffu));
    }
    return s;
}

mc_status cu_argmax_rows(mc_backend *be, int32_t *out, const void *x, int rows, int n) {
    mc_cuda *c = cu_ctx(be);
    if (rows <= 0) return cu_take_error(c);
    cu_unpack(c, x, (size_t)rows * (size_t)n * sizeof(float));
    const unsigned long long *keys = cu_gemv_take_argmax(c, (const float *)x, rows, n);
    if (keys) return argmax_from_keys(be, out, keys, 0, rows, n);
    mc_status s = MC_OK;
    for (int r0 = 0; s == MC_OK && r0 < rows; r0 += CU_GEMV_MAX_M) { /* a slot's rows a pass */
        const int m = rows - r0 < CU_GEMV_MAX_M ? rows - r0 : CU_GEMV_MAX_M;
        keys = cu_argmax_keys(c, (const float *)x + (size_t)r0 * n, m, n);
        s = argmax_from_keys(be, out + r0, keys, r0, m, n);
    }
    return s;
}
