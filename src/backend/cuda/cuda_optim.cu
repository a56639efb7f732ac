/* cuda_optim.cu - the optimizer's kernels: AdamW in one pass (bit for bit the reference's
 * torch.optim.AdamW arithmetic: scalars from the host in double rounded once, one f32
 * rounding per tensor operation), the deterministic sum of squares for gradient clipping,
 * and in-place scaling. */
#include <math.h>

#include "cuda_internal.h"

struct AdamArgs {
    float *p, *m, *v;
    const float *g;
    size_t n;
    float decay, c1, c2, b2, bc2s, neg_step, eps;
};

static __global__ void adamw_kernel(const AdamArgs a) {
    cu_dep_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < a.n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gi = a.g[i], mo = a.m[i], vo = a.v[i];
        float pi = __fmul_rn(a.p[i], a.decay);
        float mi = __fadd_rn(mo, __fmul_rn(a.c1, __fsub_rn(gi, mo)));
        float vi = __fadd_rn(__fmul_rn(vo, a.b2), __fmul_rn(__fmul_rn(a.c2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.bc2s), a.eps);
        float upd = __fdiv_rn(__fmul_rn(a.neg_step, mi), denom);
        a.m[i] = mi;
        a.v[i] = vi;
        a.p[i] = __fadd_rn(pi, upd);
    }
}

void cu_adamw(mc_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, float wd, int step) {
    mc_cuda *c = cu_ctx(be);
    AdamArgs a;
    double bc1 = 1.0 - pow((double)b1, (double)step), bc2 = 1.0 - pow((double)b2, (double)step);
    if (!n) return;
    cu_unpack(c, p, n * sizeof(float));
    cu_unpack(c, g, n * sizeof(float));
    cu_unpack(c, m, n * sizeof(float));
    cu_unpack(c, v, n * sizeof(float));
    cu_note_write(c, p, n * sizeof(float));
    cu_note_write(c, m, n * sizeof(float));
    cu_note_write(c, v, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.p = p;
    a.m = m;
    a.v = v;
    a.g = g;
    a.n = n;
    a.decay = (float)(1.0 - (double)lr * (double)wd);
    a.c1 = (float)(1.0 - (double)b1);
    a.c2 = (float)(1.0 - (double)b2);
    a.b2 = b2;
    a.bc2s = (float)sqrt(bc2);
    a.neg_step = (float)(-(double)lr / bc1);
    a.eps = eps;
    cu_launch(c, adamw_kernel, dim3(cu_blocks(n, 256, (unsigned)c->n_sm * 16)), dim3(256), 0, a,
              "adamw");
}

enum { SUMSQ_BLOCKS = 512, SUMSQ_THREADS = 256 };

struct SumsqArgs {
    const float *x;
    double *part; /* [SUMSQ_BLOCKS + 1]; the total goes to part[SUMSQ_BLOCKS] */
    size_t n;
};

/* Block sum of v (double) in a fixed order; the result is valid in thread 0. */
static __device__ double block_sum_d(double v) {
    __shared__ double red[SUMSQ_THREADS / 32];
    v = cu_warp_sum_d(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        v = 0;
        for (int i = 0; i < SUMSQ_THREADS / 32; i++) v += red[i];
    }
    return v;
}

/* Pass 1: each block's share of sum x^2 in double. */
static __global__ void sumsq_kernel(const SumsqArgs a) {
    cu_dep_wait();
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < a.n;
         i += (size_t)gridDim.x * blockDim.x) {
        double v = (double)a.x[i];
        s += v * v;
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) a.part[blockIdx.x] = s;
}

/* Pass 2: one block adds the partials in a fixed order. */
static __global__ void sumsq_final_kernel(const SumsqArgs a) {
    cu_dep_wait();
    double s = 0;
    for (int i = threadIdx.x; i < SUMSQ_BLOCKS; i += blockDim.x) s += a.part[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) a.part[SUMSQ_BLOCKS] = s;
}

double cu_sumsq_f32(mc_backend *be, const float *x, size_t n) {
    mc_cuda *c = cu_ctx(be);
    SumsqArgs a;
    double r = 0;
    if (!n) return 0;
    cu_unpack(c, x, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.x = x;
    a.n = n;
    a.part = (double *)cu_scratch(c, CU_S_REDUCE, (SUMSQ_BLOCKS + 1) * sizeof(double), false);
    if (!a.part) return NAN;
    cu_launch(c, sumsq_kernel, dim3(SUMSQ_BLOCKS), dim3(SUMSQ_THREADS), 0, a, "sumsq");
    cu_launch(c, sumsq_final_kernel, dim3(1), dim3(SUMSQ_THREADS), 0, a, "sumsq_final");
    cu_end_segment(c);
    if (cu_check(c, cudaMemcpyAsync(&r, a.part + SUMSQ_BLOCKS, sizeof r, cudaMemcpyDeviceToHost,
                                    c->stream),
                 "sumsq result"))
        (void)cu_check(c, cudaStreamSynchronize(c->stream), "sumsq");
    if (c->err != MC_OK) return NAN; /* reported by the next sync */
    return r;
}

struct ScaleArgs {
    float *x;
    size_t n;
    float alpha;
};

static __global__ void scale_kernel(const ScaleArgs a) {
    cu_dep_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < a.n;
         i += (size_t)gridDim.x * blockDim.x)
        a.x[i] = __fmul_rn(a.x[i], a.alpha);
}

void cu_scale_f32(mc_backend *be, float *x, size_t n, float alpha) {
    mc_cuda *c = cu_ctx(be);
    ScaleArgs a;
    if (!n) return;
    cu_unpack(c, x, n * sizeof(float));
    cu_note_write(c, x, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.x = x;
    a.n = n;
    a.alpha = alpha;
    cu_launch(c, scale_kernel, dim3(cu_blocks(n, 256, (unsigned)c->n_sm * 16)), dim3(256), 0, a,
              "scale");
}
