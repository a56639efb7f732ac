/* cuda_elementwise.cu - element-wise ops: SwiGLU (forward and backward), residual add,
 * inverted dropout with the CPU's counter-based mask (same hash, same bits kept), and the
 * byte copy / zero kernels that keep decode steps free of memcpy nodes. Per-element math
 * rounds each operation separately, as the reference does. */
#include "cuda_internal.h"

/* Grid of a grid-stride loop over n items. */
static dim3 grid_for(const mc_cuda *c, size_t n) {
    return dim3(cu_blocks(n, 256, (unsigned)c->n_sm * 16));
}

static __device__ __forceinline__ size_t gtid() {
    return blockIdx.x * (size_t)blockDim.x + threadIdx.x;
}
static __device__ __forceinline__ size_t gstride() { return (size_t)gridDim.x * blockDim.x; }

/* Rows are unknown to element-wise ops: outputs of fewer than 64K elements are taken as
 * decode-sized (read by the GEMV path, which needs no bf16 copy). */
static int shadow_rows(size_t n) { return n >= 65536 ? 1 << 30 : 1; }

struct SwigluArgs {
    float *out;          /* [n] forward out, or dgate */
    float *dup;          /* [n] backward */
    float *h;            /* [n] backward: the forward's out again, or NULL */
    const float *dout;   /* [n] backward (may be dgate) */
    const float *gate, *up;
    __nv_bfloat16 *sh0, *sh1; /* bf16 copies of out / dgate and dup, or NULL */
    size_t n;
    size_t n4;           /* leading groups of 4 taken as 16-byte vectors (0: none) */
};

/* Element i of a group of four. */
static __device__ __forceinline__ float &f4_at(float4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* sh[4 i .. 4 i + 4) = v as bf16, one 8-byte store. */
static __device__ __forceinline__ void store_bf16x4(__nv_bfloat16 *sh, size_t i, float4 v) {
    reinterpret_cast<uint2 *>(sh)[i] = make_uint2(cu_pack_bf16(v.x, v.y), cu_pack_bf16(v.z, v.w));
}

static __device__ __forceinline__ float swiglu_fwd(float g, float u) {
    return __fmul_rn(cu_silu(g), u);
}

/* dgate = dout * up * silu'(g), silu'(g) = s (1 + g (1 - s)); dup = dout * silu(g). */
static __device__ __forceinline__ void swiglu_bwd(float gi, float u, float o, float &dg,
                                                  float &du, float &h) {
    float e = __fadd_rn(1.0f, expf(-gi));
    float s = __fdiv_rn(1.0f, e), silu = __fdiv_rn(gi, e); /* silu as cu_silu gives it */
    float gs = __fmul_rn(gi, __fsub_rn(1.0f, s));
    float dsilu = __fmul_rn(s, __fadd_rn(1.0f, gs));
    h = __fmul_rn(silu, u);
    du = __fmul_rn(o, silu);
    dg = __fmul_rn(__fmul_rn(o, u), dsilu);
}

/* Groups of four elements take 16-byte loads and stores (8-byte bf16 copies); the tail
 * after them goes one element at a time. */
static __global__ void swiglu_kernel(const SwigluArgs a) {
    cu_dep_wait();
    const float4 *g4 = reinterpret_cast<const float4 *>(a.gate);
    const float4 *u4 = reinterpret_cast<const float4 *>(a.up);
    for (size_t i = gtid(); i < a.n4; i += gstride()) {
        const float4 g = __ldcs(g4 + i), u = __ldcs(u4 + i);
        const float4 o = make_float4(swiglu_fwd(g.x, u.x), swiglu_fwd(g.y, u.y),
                                     swiglu_fwd(g.z, u.z), swiglu_fwd(g.w, u.w));
        reinterpret_cast<float4 *>(a.out)[i] = o;
        if (a.sh0) store_bf16x4(a.sh0, i, o);
    }
    for (size_t i = 4 * a.n4 + gtid(); i < a.n; i += gstride()) {
        const float o = swiglu_fwd(a.gate[i], a.up[i]);
        a.out[i] = o;
        if (a.sh0) a.sh0[i] = __float2bfloat16(o);
    }
}

static __global__ void swiglu_bwd_kernel(const SwigluArgs a) {
    cu_dep_wait();
    const float4 *g4 = reinterpret_cast<const float4 *>(a.gate);
    const float4 *u4 = reinterpret_cast<const float4 *>(a.up);
    const float4 *o4 = reinterpret_cast<const float4 *>(a.dout);
    for (size_t i = gtid(); i < a.n4; i += gstride()) {
        float4 g = __ldcs(g4 + i), u = __ldcs(u4 + i), o = o4[i], dg, du, h;
#pragma unroll
        for (int j = 0; j < 4; j++)
            swiglu_bwd(f4_at(g, j), f4_at(u, j), f4_at(o, j), f4_at(dg, j), f4_at(du, j),
                       f4_at(h, j));
        if (a.h) reinterpret_cast<float4 *>(a.h)[i] = h;
        reinterpret_cast<float4 *>(a.dup)[i] = du;
        reinterpret_cast<float4 *>(a.out)[i] = dg;
        if (a.sh0) store_bf16x4(a.sh0, i, dg);
        if (a.sh1) store_bf16x4(a.sh1, i, du);
    }
    for (size_t i = 4 * a.n4 + gtid(); i < a.n; i += gstride()) {
        float dg, du, h;
        swiglu_bwd(a.gate[i], a.up[i], a.dout[i], dg, du, h);
        if (a.h) a.h[i] = h;
        a.dup[i] = du;
        a.out[i] = dg;
        if (a.sh0) a.sh0[i] = __float2bfloat16(dg);
        if (a.sh1) a.sh1[i] = __float2bfloat16(du);
    }
}

/* Groups of four of a SwiGLU whose operands all sit on 16-byte boundaries (shadows on
 * 8-byte ones), else 0. */
static size_t swiglu_n4(const SwigluArgs &a) {
    const void *p[8] = {a.out, a.dup, a.h, a.dout, a.gate, a.up, a.sh0, a.sh1};
    for (int i = 0; i < 8; i++)
        if ((uintptr_t)p[i] & (i < 6 ? 15u : 7u)) return 0;
    return a.n / 4;
}

/* ---- SwiGLU with the rank-r LoRA updates of its inputs (cu_pending lora) ----
 * A block takes LS_TM rows x LS_TN columns; warp w the 4 rows 4w..4w+3, each lane 4 columns
 * of them. The updates' A rows (as[k][row]: one 16-byte load gives a warp's 4 rows) and
 * op(B) columns of the tile are staged in shared memory; each element adds alpha * (its
 * row of A . its column of op(B)), summed in f32 over k, then the SwiGLU (or its backward)
 * runs on the updated values. */
enum { LS_TM = 32, LS_TN = 128, LS_KMAX = 32 };

struct LoraSwArgs {
    float *gate, *up;   /* forward: updated in place; backward: read */
    float *out;         /* forward: h; backward: dgate (may be dout) */
    float *dup, *h;     /* backward (h may be NULL) */
    const float *dout;  /* backward: updated on the fly (not stored) */
    __nv_bfloat16 *sh0, *sh1;
    cu_lora_upd u[2];   /* forward: gate's, up's; backward: dout's */
    int M, N;
};

/* Stages update u's A rows [m0, m0 + LS_TM) as as[k][row] and its op(B) columns [n0, n0 +
 * LS_TN) as bs[k][col] (zeros past the ends). */
static __device__ __forceinline__ void ls_stage(const cu_lora_upd &u, int M, int N, int m0,
                                                int n0, float (*as)[LS_TM],
                                                float (*bs)[LS_TN]) {
    for (int i = threadIdx.x; i < LS_TM * u.K; i += blockDim.x) {
        const int r = i / u.K, k = i % u.K, m = m0 + r;
        as[k][r] = m < M ? u.A[(size_t)m * u.lda + k] : 0.0f;
    }
    for (int i = threadIdx.x; i < LS_TN * u.K; i += blockDim.x) {
        int col, k;
        if (u.tb) { /* B [N, K]: consecutive threads along k */
            col = i / u.K;
            k = i % u.K;
        } else { /* B [K, N]: consecutive threads along n */
            k = i / LS_TN;
            col = i % LS_TN;
        }
        const int n = n0 + col;
        bs[k][col] = n >= N ? 0.0f : u.tb ? u.B[(size_t)n * u.ldb + k] : u.B[(size_t)k * u.ldb + n];
    }
}

/* acc[i] = sum_k as[k][r0 + i] bs[k][c0 .. c0 + 4), i < 4. */
static __device__ __forceinline__ void ls_dot(float4 (&acc)[4], const float (*as)[LS_TM],
                                              const float (*bs)[LS_TN], int r0, int c0, int K) {
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int k = 0; k < K; k++) {
        float4 a = *reinterpret_cast<const float4 *>(&as[k][r0]);
        const float4 b = *reinterpret_cast<const float4 *>(&bs[k][c0]);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float ai = f4_at(a, i);
            acc[i].x = fmaf(ai, b.x, acc[i].x);
            acc[i].y = fmaf(ai, b.y, acc[i].y);
            acc[i].z = fmaf(ai, b.z, acc[i].z);
            acc[i].w = fmaf(ai, b.w, acc[i].w);
        }
    }
}

/* v += alpha * acc. */
static __device__ __forceinline__ void ls_axpy(float4 &v, float alpha, const float4 &acc) {
    v.x = fmaf(alpha, acc.x, v.x);
    v.y = fmaf(alpha, acc.y, v.y);
    v.z = fmaf(alpha, acc.z, v.z);
    v.w = fmaf(alpha, acc.w, v.w);
}

template <bool BWD>
static __global__ void __launch_bounds__(256) lora_swiglu_kernel(const LoraSwArgs a) {
    constexpr int NU = BWD ? 1 : 2; /* updates */
    __shared__ __align__(16) float as[NU][LS_KMAX][LS_TM];
    __shared__ __align__(16) float bs[NU][LS_KMAX][LS_TN];
    const int m0 = blockIdx.y * LS_TM, n0 = blockIdx.x * LS_TN;
    const int lane = threadIdx.x & 31, r0 = (threadIdx.x >> 5) * 4, c0 = lane * 4;
    float4 acc[NU][4];
    cu_dep_wait();
    for (int e = 0; e < NU; e++) ls_stage(a.u[e], a.M, a.N, m0, n0, as[e], bs[e]);
    __syncthreads();
    const int n = n0 + c0;
    if (n >= a.N) return; /* N % 4 == 0: a group of four is all in or all out */
#pragma unroll
    for (int e = 0; e < NU; e++) ls_dot(acc[e], as[e], bs[e], r0, c0, a.u[e].K);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int m = m0 + r0 + i;
        if (m >= a.M) break;
        const size_t q = ((size_t)m * a.N + n) / 4;
        float4 g = __ldcs(reinterpret_cast<const float4 *>(a.gate) + q);
        float4 u = __ldcs(reinterpret_cast<const float4 *>(a.up) + q);
        if constexpr (!BWD) {
            ls_axpy(g, a.u[0].alpha, acc[0][i]);
            ls_axpy(u, a.u[1].alpha, acc[1][i]);
            reinterpret_cast<float4 *>(a.gate)[q] = g;
            reinterpret_cast<float4 *>(a.up)[q] = u;
            const float4 h = make_float4(swiglu_fwd(g.x, u.x), swiglu_fwd(g.y, u.y),
                                         swiglu_fwd(g.z, u.z), swiglu_fwd(g.w, u.w));
            reinterpret_cast<float4 *>(a.out)[q] = h;
            if (a.sh0) store_bf16x4(a.sh0, q, h);
        } else {
            float4 d = reinterpret_cast<const float4 *>(a.dout)[q], dg, du, h;
            ls_axpy(d, a.u[0].alpha, acc[0][i]);
#pragma unroll
            for (int j = 0; j < 4; j++)
                swiglu_bwd(f4_at(g, j), f4_at(u, j), f4_at(d, j), f4_at(dg, j), f4_at(du, j),
                           f4_at(h, j));
            if (a.h) reinterpret_cast<float4 *>(a.h)[q] = h;
            reinterpret_cast<float4 *>(a.dup)[q] = du;
            reinterpret_cast<float4 *>(a.out)[q] = dg;
            if (a.sh0) store_bf16x4(a.sh0, q, dg);
            if (a.sh1) store_bf16x4(a.sh1, q, du);
        }
    }
}

/* Whether update u's operands A [M, K] and op(B) [K, N] meet [p, p + n) (floats). */
static bool upd_reads(const cu_lora_upd &u, int M, int N, const float *p, size_t n) {
    size_t na, nb;
    cu_lora_spans(u, M, N, &na, &nb);
    return p && (cu_f32_overlap(u.A, na, p, n) || cu_f32_overlap(u.B, nb, p, n));
}

/* Takes over the held rank-r updates when this SwiGLU (forward: both of gate and up, in
 * either order; backward: the one of dout, with dgate written over dout, since the folded
 * update of dout is never stored) reads their outputs, n = M N, every operand is 16-byte
 * aligned and no output of the SwiGLU is read by an update (other blocks still stage the
 * updates' operands while a block writes); else false (nothing changed). */
static bool lora_take(mc_cuda *c, LoraSwArgs &a, bool bwd, size_t n) {
    const cu_pending &p = c->pend;
    if (p.kind != CU_PEND_LORA || p.n_lu != (bwd ? 1 : 2) || (size_t)p.lu_M * p.lu_N != n)
        return false;
    const void *ptr[6] = {a.gate, a.up, a.out, a.dup, a.h, a.dout};
    for (int i = 0; i < 6; i++)
        if (!cu_aligned16(ptr[i])) return false;
    /* what the kernel writes: out, dup and h; the forward also gate and up */
    const float *wr[5] = {a.out, a.dup, a.h, bwd ? NULL : a.gate, bwd ? NULL : a.up};
    for (int e = 0; e < p.n_lu; e++)
        for (int i = 0; i < 5; i++)
            if (upd_reads(p.lu[e], p.lu_M, p.lu_N, wr[i], n)) return false;
    if (bwd) {
        if (p.lu[0].C != a.dout || a.out != a.dout) return false;
        a.u[0] = p.lu[0];
    } else {
        const int gi = p.lu[0].C == a.gate ? 0 : 1;
        if (p.lu[gi].C != a.gate || p.lu[1 - gi].C != a.up) return false;
        a.u[0] = p.lu[gi];
        a.u[1] = p.lu[1 - gi];
    }
    a.M = p.lu_M;
    a.N = p.lu_N;
    c->pend.kind = CU_PEND_NONE; /* taken: the launch below must not flush it */
    return true;
}

static void lora_swiglu_launch(mc_cuda *c, const LoraSwArgs &a, bool bwd) {
    const dim3 grid((unsigned)((a.N + LS_TN - 1) / LS_TN), (unsigned)((a.M + LS_TM - 1) / LS_TM));
    if (bwd) cu_launch(c, lora_swiglu_kernel<true>, grid, dim3(256), 0, a, "swiglu_backward+lora");
    else cu_launch(c, lora_swiglu_kernel<false>, grid, dim3(256), 0, a, "swiglu+lora");
}

static void swiglu_launch(mc_cuda *c, float *out, const float *gate, const float *up, size_t n) {
    SwigluArgs a;
    memset(&a, 0, sizeof a);
    a.out = out;
    a.gate = gate;
    a.up = up;
    a.n = n;
    a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, out, n, shadow_rows(n));
    a.n4 = swiglu_n4(a);
    cu_launch(c, swiglu_kernel, grid_for(c, n - 3 * a.n4), dim3(256), 0, a, "swiglu");
}

void cu_flush_swiglu(mc_cuda *c, const cu_pending *p) {
    swiglu_launch(c, p->s_out, p->gate, p->up, p->n);
}

void cu_swiglu(mc_backend *be, void *out, const void *gate, const void *up, size_t n) {
    mc_cuda *c = cu_ctx(be);
    if (!n) return;
    cu_note_write(c, out, n * sizeof(float));
    if (c->pend.kind == CU_PEND_LORA && c->lsw_fwd && !cu_f32_overlap((const float *)out, n,
                                                         (const float *)gate, n) &&
        !cu_f32_overlap((const float *)out, n, (const float *)up, n)) {
        LoraSwArgs a;
        memset(&a, 0, sizeof a);
        a.gate = (float *)gate; /* the updates' outputs: written back */
        a.up = (float *)up;
        a.out = (float *)out;
        if (lora_take(c, a, false, n)) {
            a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, out, n, shadow_rows(n));
            lora_swiglu_launch(c, a, false);
            return;
        }
    }
    if (c->fuse_on && shadow_rows(n) == 1) { /* decode-sized: a GEMV computes it */
        if (cu_gemv_take_swiglu(c, (float *)out, (const float *)gate, (const float *)up, n)) return;
        cu_pending_flush(c);
        c->pend.kind = CU_PEND_SWIGLU;
        c->pend.s_out = (float *)out;
        c->pend.gate = (const float *)gate;
        c->pend.up = (const float *)up;
        c->pend.n = n;
        return;
    }
    swiglu_launch(c, (float *)out, (const float *)gate, (const float *)up, n);
}

void cu_swiglu_backward(mc_backend *be, void *dgate, void *dup, void *h, const void *dout,
                        const void *gate, const void *up, size_t n) {
    mc_cuda *c = cu_ctx(be);
    SwigluArgs a;
    if (!n) return;
    cu_note_write(c, dgate, n * sizeof(float));
    cu_note_write(c, dup, n * sizeof(float));
    if (h) cu_note_write(c, h, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.out = (float *)dgate;
    a.dup = (float *)dup;
    a.h = (float *)h;
    a.dout = (const float *)dout;
    a.gate = (const float *)gate;
    a.up = (const float *)up;
    a.n = n;
    if (c->pend.kind == CU_PEND_LORA && c->lsw_bwd) {
        LoraSwArgs l;
        memset(&l, 0, sizeof l);
        l.gate = (float *)gate;
        l.up = (float *)up;
        l.out = (float *)dgate;
        l.dup = (float *)dup;
        l.h = (float *)h;
        l.dout = (const float *)dout;
        if (lora_take(c, l, true, n)) {
            l.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, dgate, n, shadow_rows(n));
            l.sh1 = (__nv_bfloat16 *)cu_shadow_for(c, dup, n, shadow_rows(n));
            lora_swiglu_launch(c, l, true);
            return;
        }
    }
    a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, dgate, n, shadow_rows(n));
    a.sh1 = (__nv_bfloat16 *)cu_shadow_for(c, dup, n, shadow_rows(n));
    a.n4 = swiglu_n4(a);
    cu_launch(c, swiglu_bwd_kernel, grid_for(c, n - 3 * a.n4), dim3(256), 0, a, "swiglu_backward");
}

struct AddArgs {
    float *y;
    const float *x;
    const float *src; /* y = src + x instead of y += x, or NULL */
    size_t n;
};

static __global__ void add_kernel(const AddArgs a) {
    cu_dep_wait();
    const float *s = a.src ? a.src : a.y;
    size_t n4 = (cu_aligned16(a.y) && cu_aligned16(a.x) && cu_aligned16(s)) ? a.n / 4 : 0;
    for (size_t i = gtid(); i < n4; i += gstride()) {
        float4 y = reinterpret_cast<const float4 *>(s)[i];
        float4 x = __ldg(reinterpret_cast<const float4 *>(a.x) + i);
        y.x += x.x;
        y.y += x.y;
        y.z += x.z;
        y.w += x.w;
        reinterpret_cast<float4 *>(a.y)[i] = y;
    }
    for (size_t i = n4 * 4 + gtid(); i < a.n; i += gstride()) a.y[i] = s[i] + a.x[i];
}

static void add_launch(mc_cuda *c, float *y, const float *x, const float *src, size_t n) {
    AddArgs a;
    memset(&a, 0, sizeof a);
    a.y = y;
    a.x = x;
    a.src = src;
    a.n = n;
    cu_launch(c, add_kernel, grid_for(c, n / 4 + 1), dim3(256), 0, a, "add");
}

void cu_flush_add(mc_cuda *c, const cu_pending *p) { add_launch(c, p->y, p->x, p->src, p->n); }

void cu_add(mc_backend *be, void *y, const void *x, size_t n) {
    mc_cuda *c = cu_ctx(be);
    if (!n) return;
    cu_note_write(c, y, n * sizeof(float));
    if (c->pend.kind == CU_PEND_COPY && c->pend.y == y && c->pend.n == n &&
        !cu_f32_overlap(c->pend.x, n, (const float *)x, n) &&
        !cu_f32_overlap((const float *)y, n, (const float *)x, n)) {
        /* y was just copied from src: y = src + x in one pass, still pending */
        c->pend.kind = CU_PEND_ADD;
        c->pend.src = c->pend.x;
        c->pend.x = (const float *)x;
        return;
    }
    if (c->fuse_on) { /* the residual add usually feeds the next RMSNorm */
        cu_pending_flush(c);
        c->pend.kind = CU_PEND_ADD;
        c->pend.y = (float *)y;
        c->pend.x = (const float *)x;
        c->pend.src = NULL;
        c->pend.n = n;
        return;
    }
    add_launch(c, (float *)y, (const float *)x, NULL, n);
}

struct DropArgs {
    float *out;
    const float *x;
    size_t n;
    uint64_t seed;
    double p;
    float scale;
};

/* The CPU's mask (cpu_train.h mc_dropout_keep): splitmix64 of (seed, i) as a uniform
 * double in [0, 1) with 53 bits, kept when >= p. */
static __device__ __forceinline__ bool dropout_keep(uint64_t seed, uint64_t i, double p) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 >= p;
}

static __global__ void dropout_kernel(const DropArgs a) {
    cu_dep_wait();
    for (size_t i = gtid(); i < a.n; i += gstride())
        a.out[i] = dropout_keep(a.seed, (uint64_t)i, a.p) ? __fmul_rn(a.x[i], a.scale) : 0.0f;
}

void cu_dropout(mc_backend *be, void *out, const void *x, size_t n, float p, uint64_t seed) {
    mc_cuda *c = cu_ctx(be);
    DropArgs a;
    if (!n) return;
    if (p <= 0.0f) {
        if (out != x) cu_copy_kernel(c, out, x, n * sizeof(float));
        return;
    }
    cu_note_write(c, out, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.out = (float *)out;
    a.x = (const float *)x;
    a.n = n;
    a.seed = seed;
    a.p = (double)p;
    a.scale = 1.0f / (1.0f - p);
    cu_launch(c, dropout_kernel, grid_for(c, n), dim3(256), 0, a, "dropout");
}

struct CopyArgs {
    void *dst;
    const void *src;
    size_t n16; /* 16-byte words */
    size_t tail; /* bytes after them */
    int zero;
};

static __global__ void copy_kernel(const CopyArgs a) {
    cu_dep_wait();
    uint4 *d = reinterpret_cast<uint4 *>(a.dst);
    const uint4 *s = reinterpret_cast<const uint4 *>(a.src);
    for (size_t i = gtid(); i < a.n16; i += gstride()) {
        if (a.zero) d[i] = make_uint4(0, 0, 0, 0);
        else d[i] = s[i];
    }
    for (size_t i = gtid(); i < a.tail; i += gstride()) {
        unsigned char *db = reinterpret_cast<unsigned char *>(a.dst) + a.n16 * 16;
        db[i] = a.zero ? 0 : reinterpret_cast<const unsigned char *>(a.src)[a.n16 * 16 + i];
    }
}

static void copy_launch(mc_cuda *c, void *dst, const void *src, size_t bytes) {
    CopyArgs a;
    memset(&a, 0, sizeof a);
    a.dst = dst;
    a.src = src;
    if (cu_aligned16(dst) && cu_aligned16(src)) {
        a.n16 = bytes / 16;
        a.tail = bytes % 16;
    } else {
        a.tail = bytes;
    }
    cu_launch(c, copy_kernel, grid_for(c, a.n16 + a.tail), dim3(256), 0, a, "copy");
}

void cu_copy_kernel(mc_cuda *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cu_note_write(c, dst, bytes);
    copy_launch(c, dst, src, bytes);
}

void cu_flush_copy(mc_cuda *c, const cu_pending *p) { /* its write was noted when queued */
    copy_launch(c, p->y, p->x, p->n * sizeof(float));
}

void cu_zero(mc_backend *be, void *p, size_t bytes) {
    mc_cuda *c = cu_ctx(be);
    CopyArgs a;
    if (!bytes) return;
    cu_note_write(c, p, bytes);
    memset(&a, 0, sizeof a);
    a.dst = p;
    a.zero = 1;
    if (cu_aligned16(p)) {
        a.n16 = bytes / 16;
        a.tail = bytes % 16;
    } else {
        a.tail = bytes;
    }
    cu_launch(c, copy_kernel, grid_for(c, a.n16 + a.tail), dim3(256), 0, a, "zero");
}
