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

/* A SwiGLU's operands are f32, or all bf16 (packed ranges, cu_packed): S is their type. */
template <typename S>
struct SwigluArgs {
    S *out;             /* [n] forward out, or dgate */
    S *dup;             /* [n] backward */
    S *h;               /* [n] backward: the forward's out again, or NULL */
    const S *dout;      /* [n] backward (may be dgate) */
    const S *gate, *up;
    __nv_bfloat16 *sh0, *sh1; /* bf16 copies of out / dgate and dup, or NULL (f32 only) */
    size_t n;
    size_t n4;          /* leading groups of 4 taken as vectors (0: none) */
};

/* Element i of a group of four. */
static __device__ __forceinline__ float &f4_at(float4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* sh[4 i .. 4 i + 4) = v as bf16, one 8-byte store. */
static __device__ __forceinline__ void store_bf16x4(__nv_bfloat16 *sh, size_t i, float4 v) {
    reinterpret_cast<uint2 *>(sh)[i] = make_uint2(cu_pack_bf16(v.x, v.y), cu_pack_bf16(v.z, v.w));
}

/* Four bf16 (one 8-byte word) as floats. */
static __device__ __forceinline__ float4 bf16x4_f(uint2 u) {
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

/* Group q of four elements (streamed: read once, not kept in cache). */
static __device__ __forceinline__ float4 ld4(const float *p, size_t q) {
    return reinterpret_cast<const float4 *>(p)[q];
}
static __device__ __forceinline__ float4 ld4(const __nv_bfloat16 *p, size_t q) {
    return bf16x4_f(reinterpret_cast<const uint2 *>(p)[q]);
}
static __device__ __forceinline__ float4 ld4cs(const float *p, size_t q) {
    return __ldcs(reinterpret_cast<const float4 *>(p) + q);
}
static __device__ __forceinline__ float4 ld4cs(const __nv_bfloat16 *p, size_t q) {
    return bf16x4_f(__ldcs(reinterpret_cast<const uint2 *>(p) + q));
}
static __device__ __forceinline__ void st4(float *p, size_t q, float4 v) {
    reinterpret_cast<float4 *>(p)[q] = v;
}
static __device__ __forceinline__ void st4(__nv_bfloat16 *p, size_t q, float4 v) {
    store_bf16x4(p, q, v);
}
static __device__ __forceinline__ float ld1(const float *p, size_t i) { return p[i]; }
static __device__ __forceinline__ float ld1(const __nv_bfloat16 *p, size_t i) {
    return __bfloat162float(p[i]);
}
static __device__ __forceinline__ void st1(float *p, size_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void st1(__nv_bfloat16 *p, size_t i, float v) {
    p[i] = __float2bfloat16(v);
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

/* The backward of the group of four at q from gate g, up u and dout d: dgate, dup and h
 * (when a.h) stored, with the bf16 copies a asks for. */
template <typename A>
static __device__ __forceinline__ void swiglu_bwd_store4(const A &a, size_t q, float4 g,
                                                         float4 u, float4 d) {
    float4 dg, du, h;
#pragma unroll
    for (int j = 0; j < 4; j++)
        swiglu_bwd(f4_at(g, j), f4_at(u, j), f4_at(d, j), f4_at(dg, j), f4_at(du, j),
                   f4_at(h, j));
    if (a.h) st4(a.h, q, h);
    st4(a.dup, q, du);
    st4(a.out, q, dg);
    if (a.sh0) store_bf16x4(a.sh0, q, dg);
    if (a.sh1) store_bf16x4(a.sh1, q, du);
}

/* Groups of four elements take vector loads and stores (16 bytes in f32, 8 in bf16; 8-byte
 * bf16 copies); the tail after them goes one element at a time. */
template <typename S>
static __global__ void swiglu_kernel(const SwigluArgs<S> a) {
    cu_dep_wait();
    for (size_t i = gtid(); i < a.n4; i += gstride()) {
        const float4 g = ld4cs(a.gate, i), u = ld4cs(a.up, i);
        const float4 o = make_float4(swiglu_fwd(g.x, u.x), swiglu_fwd(g.y, u.y),
                                     swiglu_fwd(g.z, u.z), swiglu_fwd(g.w, u.w));
        st4(a.out, i, o);
        if (a.sh0) store_bf16x4(a.sh0, i, o);
    }
    for (size_t i = 4 * a.n4 + gtid(); i < a.n; i += gstride()) {
        const float o = swiglu_fwd(ld1(a.gate, i), ld1(a.up, i));
        st1(a.out, i, o);
        if (a.sh0) a.sh0[i] = __float2bfloat16(o);
    }
}

template <typename S>
static __global__ void swiglu_bwd_kernel(const SwigluArgs<S> a) {
    cu_dep_wait();
    for (size_t i = gtid(); i < a.n4; i += gstride())
        swiglu_bwd_store4(a, i, ld4cs(a.gate, i), ld4cs(a.up, i), ld4(a.dout, i));
    for (size_t i = 4 * a.n4 + gtid(); i < a.n; i += gstride()) {
        float dg, du, h;
        swiglu_bwd(ld1(a.gate, i), ld1(a.up, i), ld1(a.dout, i), dg, du, h);
        if (a.h) st1(a.h, i, h);
        st1(a.dup, i, du);
        st1(a.out, i, dg);
        if (a.sh0) a.sh0[i] = __float2bfloat16(dg);
        if (a.sh1) a.sh1[i] = __float2bfloat16(du);
    }
}

/* Groups of four of a SwiGLU whose operands all sit on vector boundaries (four of S;
 * shadows on 8-byte ones), else 0. */
template <typename S>
static size_t swiglu_n4(const SwigluArgs<S> &a) {
    const void *p[8] = {a.out, a.dup, a.h, a.dout, a.gate, a.up, a.sh0, a.sh1};
    for (int i = 0; i < 8; i++)
        if ((uintptr_t)p[i] & (i < 6 ? 4 * sizeof(S) - 1 : 7u)) return 0;
    return a.n / 4;
}

/* ---- SwiGLU with the rank-r LoRA updates of its inputs (cu_pending lora) ----
 * A block takes 32 SUB rows x LS_TN columns; warp w the 4 rows 4w..4w+3 of each 32 (SUB
 * groups: the forward's two updates stage twice the columns of B, which then serve twice
 * the rows), each lane 4 columns of them. The updates' A rows (as[k][row]: one 16-byte
 * load gives a warp's 4 rows) and op(B) columns of the tile are staged in shared memory;
 * each element adds alpha * (its row of A . its column of op(B)), summed in f32 over k,
 * then the SwiGLU (or its backward) runs on the updated values. */
enum { LS_TN = 128 }; /* ranks up to 32 (lora_hold); KM (16 or 32) sizes the staging */

template <typename S>
struct LoraSwArgs {
    S *gate, *up;       /* forward: updated in place; backward: read */
    S *out;             /* forward: h; backward: dgate (may be dout) */
    S *dup, *h;         /* backward (h may be NULL) */
    const S *dout;      /* backward: updated on the fly (not stored) */
    __nv_bfloat16 *sh0, *sh1;
    cu_lora_upd u[2];   /* forward: gate's, up's; backward: dout's */
    int M, N;
};

/* Stages update u's A rows [m0, m0 + TM) as as[k][row] and its op(B) columns [n0, n0 +
 * LS_TN) as bs[k][col] (zeros past the ends). */
template <int TM>
static __device__ __forceinline__ void ls_stage(const cu_lora_upd &u, int M, int N, int m0,
                                                int n0, float (*as)[TM], float (*bs)[LS_TN]) {
    for (int i = threadIdx.x; i < TM * u.K; i += blockDim.x) {
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
template <int TM>
static __device__ __forceinline__ void ls_dot(float4 (&acc)[4], const float (*as)[TM],
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

template <bool BWD, typename S, int SUB, int KM>
static __global__ void __launch_bounds__(256) lora_swiglu_kernel(const LoraSwArgs<S> a) {
    constexpr int NU = BWD ? 1 : 2, TM = 32 * SUB; /* updates, rows */
    __shared__ __align__(16) float as[NU][KM][TM];
    __shared__ __align__(16) float bs[NU][KM][LS_TN];
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * LS_TN;
    const int lane = threadIdx.x & 31, c0 = lane * 4;
    float4 acc[NU][4];
    cu_dep_wait();
    for (int e = 0; e < NU; e++) ls_stage<TM>(a.u[e], a.M, a.N, m0, n0, as[e], bs[e]);
    __syncthreads();
    const int n = n0 + c0;
    if (n >= a.N) return; /* N % 4 == 0: a group of four is all in or all out */
    for (int sub = 0; sub < SUB; sub++) {
        const int r0 = 32 * sub + (threadIdx.x >> 5) * 4;
#pragma unroll
        for (int e = 0; e < NU; e++) ls_dot<TM>(acc[e], as[e], bs[e], r0, c0, a.u[e].K);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int m = m0 + r0 + i;
            if (m >= a.M) break;
            const size_t q = ((size_t)m * a.N + n) / 4;
            float4 g = ld4cs(a.gate, q);
            float4 u = ld4cs(a.up, q);
            if constexpr (!BWD) {
                ls_axpy(g, a.u[0].alpha, acc[0][i]);
                ls_axpy(u, a.u[1].alpha, acc[1][i]);
                st4(a.gate, q, g);
                st4(a.up, q, u);
                const float4 h = make_float4(swiglu_fwd(g.x, u.x), swiglu_fwd(g.y, u.y),
                                             swiglu_fwd(g.z, u.z), swiglu_fwd(g.w, u.w));
                st4(a.out, q, h);
                if (a.sh0) store_bf16x4(a.sh0, q, h);
            } else {
                float4 d = ld4(a.dout, q);
                ls_axpy(d, a.u[0].alpha, acc[0][i]);
                swiglu_bwd_store4(a, q, g, u, d);
            }
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
 * aligned, no output of the SwiGLU is read by an update (other blocks still stage the
 * updates' operands while a block writes) and the updates' outputs are packed exactly when
 * the SwiGLU's operands are (p16); else false (nothing changed). */
static bool lora_take(mc_cuda *c, LoraSwArgs<float> &a, bool bwd, size_t n, bool p16) {
    const cu_pending &p = c->pend;
    if (p.kind != CU_PEND_LORA || p.n_lu != (bwd ? 1 : 2) || (size_t)p.lu_M * p.lu_N != n)
        return false;
    const void *ptr[6] = {a.gate, a.up, a.out, a.dup, a.h, a.dout};
    for (int i = 0; i < 6; i++)
        if (!cu_aligned16(ptr[i])) return false;
    /* what the kernel writes: out, dup and h; the forward also gate and up */
    const float *wr[5] = {a.out, a.dup, a.h, bwd ? NULL : a.gate, bwd ? NULL : a.up};
    for (int e = 0; e < p.n_lu; e++) {
        if ((p.lu[e].C16 != NULL) != p16) return false;
        for (int i = 0; i < 5; i++)
            if (upd_reads(p.lu[e], p.lu_M, p.lu_N, wr[i], n)) return false;
    }
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

/* a's six operand pointers as the bf16 views of the packed ranges that start at the same
 * addresses, in b (everything else zero). */
template <typename B, typename A>
static void io16(B &b, const A &a) {
    memset(&b, 0, sizeof b);
    b.out = (__nv_bfloat16 *)a.out;
    b.dup = (__nv_bfloat16 *)a.dup;
    b.h = (__nv_bfloat16 *)a.h;
    b.dout = (const __nv_bfloat16 *)a.dout;
    b.gate = (decltype(b.gate))a.gate;
    b.up = (decltype(b.up))a.up;
}

/* The same arguments over the packed ranges that start at the same addresses. */
static LoraSwArgs<__nv_bfloat16> lsw16(const LoraSwArgs<float> &a) {
    LoraSwArgs<__nv_bfloat16> b;
    io16(b, a);
    b.u[0] = a.u[0];
    b.u[1] = a.u[1];
    b.M = a.M;
    b.N = a.N;
    return b;
}

static SwigluArgs<__nv_bfloat16> sw16(const SwigluArgs<float> &a) {
    SwigluArgs<__nv_bfloat16> b;
    io16(b, a);
    b.n = a.n;
    b.n4 = swiglu_n4(b);
    return b;
}

/* The folded SwiGLU of staging for ranks up to KM: the forward in blocks of 64 rows. */
template <typename S, int KM>
static void lora_swiglu_km(mc_cuda *c, const LoraSwArgs<S> &a, bool bwd) {
    const bool b16 = sizeof(S) == 2;
    const unsigned gx = (unsigned)((a.N + LS_TN - 1) / LS_TN);
    if (bwd)
        cu_launch(c, lora_swiglu_kernel<true, S, 1, KM>, dim3(gx, (unsigned)((a.M + 31) / 32)),
                  dim3(256), 0, a, b16 ? "swiglu_backward+lora bf16" : "swiglu_backward+lora");
    else
        cu_launch(c, lora_swiglu_kernel<false, S, 2, KM>, dim3(gx, (unsigned)((a.M + 63) / 64)),
                  dim3(256), 0, a, b16 ? "swiglu+lora bf16" : "swiglu+lora");
}

template <typename S>
static void lora_swiglu_launch(mc_cuda *c, const LoraSwArgs<S> &a, bool bwd) {
    const int km = bwd || a.u[1].K < a.u[0].K ? a.u[0].K : a.u[1].K;
    if (km <= 16) lora_swiglu_km<S, 16>(c, a, bwd);
    else lora_swiglu_km<S, 32>(c, a, bwd);
}

/* A forward (bwd false) or backward SwiGLU of a's operands, in f32 or on packed ones. */
static void swiglu_go(mc_cuda *c, SwigluArgs<float> &a, bool bwd, bool p16) {
    if (p16) {
        const SwigluArgs<__nv_bfloat16> b = sw16(a);
        if (bwd)
            cu_launch(c, swiglu_bwd_kernel<__nv_bfloat16>, grid_for(c, a.n - 3 * b.n4), dim3(256),
                      0, b, "swiglu_backward bf16");
        else
            cu_launch(c, swiglu_kernel<__nv_bfloat16>, grid_for(c, a.n - 3 * b.n4), dim3(256), 0,
                      b, "swiglu bf16");
        return;
    }
    a.n4 = swiglu_n4(a);
    if (bwd)
        cu_launch(c, swiglu_bwd_kernel<float>, grid_for(c, a.n - 3 * a.n4), dim3(256), 0, a,
                  "swiglu_backward");
    else
        cu_launch(c, swiglu_kernel<float>, grid_for(c, a.n - 3 * a.n4), dim3(256), 0, a, "swiglu");
}

/* The forward SwiGLU on its own: on packed operands (p16), or in f32 with out's bf16 copy. */
static void swiglu_launch(mc_cuda *c, float *out, const float *gate, const float *up, size_t n,
                          bool p16) {
    SwigluArgs<float> a;
    memset(&a, 0, sizeof a);
    a.out = out;
    a.gate = gate;
    a.up = up;
    a.n = n;
    if (!p16) a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, out, n, shadow_rows(n));
    swiglu_go(c, a, false, p16);
}

void cu_flush_swiglu(mc_cuda *c, const cu_pending *p) {
    swiglu_launch(c, p->s_out, p->gate, p->up, p->n, false);
}

/* Whether output o of n values is free to be written by an element-wise kernel reading x:
 * o is x, or they do not meet. */
static bool same_or_apart(const float *o, const float *x, size_t n) {
    return !o || o == x || !cu_f32_overlap(o, n, x, n);
}

/* Notes the SwiGLU's writes of n values to outs (NULL: none), and with p16 registers them as
 * packed (the caller checked the table has room). */
static void swiglu_outs(mc_cuda *c, float *const (&outs)[3], size_t n, bool p16) {
    for (int i = 0; i < 3; i++)
        if (outs[i]) cu_note_write(c, outs[i], n * sizeof(float));
    for (int i = 0; i < 3 && p16; i++)
        if (outs[i]) (void)cu_pack_claim(c, outs[i], n);
}

/* Launches the SwiGLU (bwd: its backward) with the updates lora_take gave it: its outputs
 * noted and, with p16, packed; else with the bf16 copies of out (and dup) the GEMMs read. */
static void lsw_go(mc_cuda *c, LoraSwArgs<float> &a, bool bwd, bool p16,
                   float *const (&outs)[3], size_t n) {
    swiglu_outs(c, outs, n, p16);
    if (p16) {
        lora_swiglu_launch(c, lsw16(a), bwd);
        return;
    }
    a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, a.out, n, shadow_rows(n));
    if (bwd) a.sh1 = (__nv_bfloat16 *)cu_shadow_for(c, a.dup, n, shadow_rows(n));
    lora_swiglu_launch(c, a, bwd);
}

void cu_swiglu(mc_backend *be, void *out, const void *gate, const void *up, size_t n) {
    mc_cuda *c = cu_ctx(be);
    float *o = (float *)out;
    const float *g = (const float *)gate, *u = (const float *)up;
    float *const outs[3] = {o, NULL, NULL};
    if (!n) return;
    /* packed gate and up give a packed h (the table has room for it) */
    const bool p16 = cu_packed_whole(c, g, n) && cu_packed_whole(c, u, n) &&
                     same_or_apart(o, g, n) && same_or_apart(o, u, n) &&
                     c->n_packed < CU_N_PACKED;
    if (!p16) {
        cu_unpack(c, g, n * sizeof(float));
        cu_unpack(c, u, n * sizeof(float));
    }
    if (c->pend.kind == CU_PEND_LORA && c->lsw_fwd && !cu_f32_overlap(o, n, g, n) &&
        !cu_f32_overlap(o, n, u, n)) {
        LoraSwArgs<float> a;
        memset(&a, 0, sizeof a);
        a.gate = (float *)gate; /* the updates' outputs: written back */
        a.up = (float *)up;
        a.out = o;
        if (lora_take(c, a, false, n, p16)) {
            lsw_go(c, a, false, p16, outs, n);
            return;
        }
    }
    if (p16) {
        swiglu_outs(c, outs, n, true);
        swiglu_launch(c, o, g, u, n, true);
        return;
    }
    cu_note_write(c, out, n * sizeof(float));
    if (c->fuse_on && shadow_rows(n) == 1) { /* decode-sized: a GEMV computes it */
        if (cu_gemv_take_swiglu(c, o, g, u, n)) return;
        cu_pending_flush(c);
        c->pend.kind = CU_PEND_SWIGLU;
        c->pend.s_out = o;
        c->pend.gate = g;
        c->pend.up = u;
        c->pend.n = n;
        return;
    }
    swiglu_launch(c, o, g, u, n, false);
}

void cu_swiglu_backward(mc_backend *be, void *dgate, void *dup, void *h, const void *dout,
                        const void *gate, const void *up, size_t n) {
    mc_cuda *c = cu_ctx(be);
    SwigluArgs<float> a;
    if (!n) return;
    memset(&a, 0, sizeof a);
    a.out = (float *)dgate;
    a.dup = (float *)dup;
    a.h = (float *)h;
    a.dout = (const float *)dout;
    a.gate = (const float *)gate;
    a.up = (const float *)up;
    a.n = n;
    /* packed dout, gate and up give packed outputs (the table has room for them) */
    bool p16 = cu_packed_whole(c, a.dout, n) && cu_packed_whole(c, a.gate, n) &&
               cu_packed_whole(c, a.up, n) && c->n_packed + 3 <= CU_N_PACKED;
    float *const outs[3] = {a.out, a.dup, a.h};
    for (int i = 0; i < 3 && p16; i++)
        p16 = same_or_apart(outs[i], a.dout, n) && (i == 0 || !outs[i] || outs[i] != a.dout) &&
              same_or_apart(outs[i], a.gate, n) && outs[i] != a.gate &&
              same_or_apart(outs[i], a.up, n) && outs[i] != a.up;
    if (!p16) {
        cu_unpack(c, dout, n * sizeof(float));
        cu_unpack(c, gate, n * sizeof(float));
        cu_unpack(c, up, n * sizeof(float));
    }
    if (c->pend.kind == CU_PEND_LORA && c->lsw_bwd) {
        LoraSwArgs<float> l;
        memset(&l, 0, sizeof l);
        l.gate = (float *)gate;
        l.up = (float *)up;
        l.out = (float *)dgate;
        l.dup = (float *)dup;
        l.h = (float *)h;
        l.dout = (const float *)dout;
        if (lora_take(c, l, true, n, p16)) {
            lsw_go(c, l, true, p16, outs, n);
            return;
        }
    }
    swiglu_outs(c, outs, n, p16);
    if (!p16) {
        a.sh0 = (__nv_bfloat16 *)cu_shadow_for(c, dgate, n, shadow_rows(n));
        a.sh1 = (__nv_bfloat16 *)cu_shadow_for(c, dup, n, shadow_rows(n));
    }
    swiglu_go(c, a, true, p16);
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
    cu_unpack(c, y, n * sizeof(float));
    cu_unpack(c, x, n * sizeof(float));
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
    cu_unpack(c, x, n * sizeof(float));
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
