/* cuda_rmsnorm.cu - RMSNorm forward and backward. A row is handled by a group of G
 * threads (a warp for short rows such as Qwen3's per-head norm, a block for hidden-size
 * rows); per-element math rounds each product separately, as the reference does. */
#include "cuda_internal.h"

struct RmsArgs {
    float *out;           /* [T, D] (forward; NULL: packed, in sh only) or dx [T, D] += */
    float *x;             /* [T, D] (forward with delta: updated to x + delta first) */
    const float *delta;   /* [T, D] residual to add to x first, or NULL (forward) */
    const float *src;     /* [T, D] with delta: x = src + delta instead of x += delta */
    const float *dy;      /* [T, D] (backward) */
    float *xn;            /* [T, D] backward: the forward's out again, or NULL */
    __nv_bfloat16 *xn16;  /* backward: that out packed (cu_packed) instead, or NULL */
    const void *w;        /* [D] */
    __nv_bfloat16 *sh;    /* bf16 copy of the result, or NULL */
    int T, D, wdt;
    int wpre; /* w is frozen (cu_is_frozen): the forward may read it before cu_dep_wait() */
    float eps;
};

/* Sum of v over the G threads of a row group (G = 32, or the whole block). */
template <int G>
static __device__ __forceinline__ float group_sum(float v, float *red) {
    v = cu_warp_sum(v);
    if (G == 32) return v;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < G / 32; i++) s += red[i];
    return s;
}

/* The forward's reciprocal RMS: 1 / sqrt(ss / D + eps) in f32. */
static __device__ __forceinline__ float rms_recip(float ss, int D, float eps) {
    float var = __fdiv_rn(ss, (float)D);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/* The thread's E weights (elements l, l + G, ...; zero past D). */
template <int G, int E>
static __device__ __forceinline__ void rms_load_w(float (&wv)[E > 0 ? E : 1], const RmsArgs &a, int l) {
#pragma unroll
    for (int i = 0; i < E; i++) {
        const int d = l + i * G;
        wv[i] = d < a.D ? cu_load_w(a.w, a.wdt, (size_t)d) : 0.0f;
    }
}

/* SRC: x = src + delta (a copy and an add taken over) instead of x += delta.
 * E > 0: a row has at most G * E elements, held in registers between the two passes, and
 * every load is issued before any is used (decode rows are latency-bound), the weights
 * before cu_dep_wait() when frozen; E == 0: any D, the second pass reads x again. The sums
 * run in the same order either way. */
/* PK: the result goes only to sh (a packed output, a.out NULL): a variant of its own, so
 * the decode-sized kernels keep their code. */
template <int G, int E, bool SRC, bool PK>
static __global__ void rmsnorm_kernel(const RmsArgs a) {
    const int rows = blockDim.x / G, g = threadIdx.x / G, l = threadIdx.x % G;
    float wv[E > 0 ? E : 1];
    if (E > 0 && a.wpre) rms_load_w<G, E>(wv, a, l);
    cu_dep_wait();
    __shared__ float red[G / 32 > 0 ? G / 32 : 1];
    const int t = blockIdx.x * rows + g;
    if (t >= a.T) return; /* only when G == 32: no barriers below */
    float *xr = a.x + (size_t)t * a.D;
    const float *xin = SRC ? a.src + (size_t)t * a.D : xr; /* the row before the add */
    float *orow = PK ? NULL : a.out + (size_t)t * a.D;
    float ss = 0.0f;
    if (E > 0) {
        if (!a.wpre) rms_load_w<G, E>(wv, a, l); /* issued with the row's loads */
        float v[E > 0 ? E : 1];
#pragma unroll
        for (int i = 0; i < E; i++) {
            const int d = l + i * G;
            v[i] = d < a.D ? xin[d] : 0.0f;
        }
        if (a.delta) {
            const float *dr = a.delta + (size_t)t * a.D;
            float dv[E > 0 ? E : 1];
#pragma unroll
            for (int i = 0; i < E; i++) {
                const int d = l + i * G;
                dv[i] = d < a.D ? dr[d] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < E; i++) {
                const int d = l + i * G;
                if (d < a.D) {
                    v[i] = v[i] + dv[i];
                    xr[d] = v[i];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < E; i++)
            if (l + i * G < a.D) ss = fmaf(v[i], v[i], ss);
        ss = group_sum<G>(ss, red);
        const float r = rms_recip(ss, a.D, a.eps);
#pragma unroll
        for (int i = 0; i < E; i++) {
            const int d = l + i * G;
            if (d < a.D) {
                float o = __fmul_rn(__fmul_rn(v[i], r), wv[i]);
                if (!PK) orow[d] = o;
                if (a.sh) a.sh[(size_t)t * a.D + d] = __float2bfloat16(o);
            }
        }
        return;
    }
    if (a.delta) { /* x += delta (the residual add), then normalise the sum */
        const float *dr = a.delta + (size_t)t * a.D;
        for (int d = l; d < a.D; d += G) {
            float v = xin[d] + dr[d];
            xr[d] = v;
            ss = fmaf(v, v, ss);
        }
    } else {
        for (int d = l; d < a.D; d += G) {
            float v = xr[d];
            ss = fmaf(v, v, ss);
        }
    }
    ss = group_sum<G>(ss, red);
    const float r = rms_recip(ss, a.D, a.eps);
    for (int d = l; d < a.D; d += G) {
        float o = __fmul_rn(__fmul_rn(xr[d], r), cu_load_w(a.w, a.wdt, (size_t)d));
        if (!PK) orow[d] = o;
        if (a.sh) a.sh[(size_t)t * a.D + d] = __float2bfloat16(o);
    }
}

/* The backward's second pass for element d of row t: dx += r w dy - x r3m, and the
 * forward's out again when asked. */
static __device__ __forceinline__ void rms_bwd_out(const RmsArgs &a, size_t t, int d, float x,
                                                   float dy, float w, float dx0, float r,
                                                   float r3m) {
    const float o = dx0 + r * w * dy - x * r3m;
    const float xo = __fmul_rn(__fmul_rn(x, r), w); /* the forward's out */
    const size_t i = t * (size_t)a.D + (size_t)d;
    if (a.xn) a.xn[i] = xo;
    if (a.xn16) a.xn16[i] = __float2bfloat16(xo);
    a.out[i] = o;
    if (a.sh) a.sh[i] = __float2bfloat16(o);
}

/* The backward's r (the forward's reciprocal RMS) and r^3 mean(dy w x) of a row from its
 * threads' sums ss = sum x^2 and dot = sum dy w x. */
template <int G>
static __device__ __forceinline__ void rms_bwd_scales(float ss, float dot, float *red, int D,
                                                      float eps, float &r, float &r3m) {
    ss = group_sum<G>(ss, red);
    dot = group_sum<G>(dot, red);
    r = rms_recip(ss, D, eps);
    r3m = r * r * r * (dot / (float)D);
}

/* dx[j] += r w[j] dy[j] - x[j] r^3 mean_d(dy[d] w[d] x[d]). E > 0: a row has at most G * E
 * elements, held in registers between the two passes, every load issued before any is used
 * (the second pass read x and dy again); E == 0: any D. The same sums either way. */
template <int G, int E>
static __global__ void rmsnorm_bwd_kernel(const RmsArgs a) {
    cu_dep_wait();
    __shared__ float red[G / 32 > 0 ? G / 32 : 1];
    const int rows = blockDim.x / G, g = threadIdx.x / G, l = threadIdx.x % G;
    const int t = blockIdx.x * rows + g;
    if (t >= a.T) return;
    const float *xr = a.x + (size_t)t * a.D, *gr = a.dy + (size_t)t * a.D; /* x not written */
    const float *dr = a.out + (size_t)t * a.D;
    float ss = 0.0f, dot = 0.0f;
    if constexpr (E > 0) {
        float xv[E], gv[E], wv[E], dv[E];
#pragma unroll
        for (int i = 0; i < E; i++) {
            const int d = l + i * G;
            const bool in = d < a.D;
            xv[i] = in ? xr[d] : 0.0f;
            gv[i] = in ? gr[d] : 0.0f;
            dv[i] = in ? dr[d] : 0.0f;
            wv[i] = in ? cu_load_w(a.w, a.wdt, (size_t)d) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < E; i++) {
            if (l + i * G >= a.D) continue;
            ss = fmaf(xv[i], xv[i], ss);
            dot = fmaf(gv[i] * wv[i], xv[i], dot);
        }
        float r, r3m;
        rms_bwd_scales<G>(ss, dot, red, a.D, a.eps, r, r3m);
#pragma unroll
        for (int i = 0; i < E; i++) {
            const int d = l + i * G;
            if (d < a.D) rms_bwd_out(a, (size_t)t, d, xv[i], gv[i], wv[i], dv[i], r, r3m);
        }
    } else {
        for (int d = l; d < a.D; d += G) {
            float v = xr[d];
            ss = fmaf(v, v, ss);
            dot = fmaf(gr[d] * cu_load_w(a.w, a.wdt, (size_t)d), v, dot);
        }
        float r, r3m;
        rms_bwd_scales<G>(ss, dot, red, a.D, a.eps, r, r3m);
        for (int d = l; d < a.D; d += G)
            rms_bwd_out(a, (size_t)t, d, xr[d], gr[d], cu_load_w(a.w, a.wdt, (size_t)d), dr[d],
                        r, r3m);
    }
}

/* The forward for rows of D elements, with a.src (SRC) or without, packed (PK) or not. */
template <int G, bool SRC, bool PK>
static void launch_pk(mc_cuda *c, const RmsArgs &a, dim3 grid, dim3 block) {
    if (a.D <= G * 8) cu_launch(c, rmsnorm_kernel<G, 8, SRC, PK>, grid, block, 0, a, "rmsnorm");
    else if (a.D <= G * 16)
        cu_launch(c, rmsnorm_kernel<G, 16, SRC, PK>, grid, block, 0, a, "rmsnorm");
    else cu_launch(c, rmsnorm_kernel<G, 0, SRC, PK>, grid, block, 0, a, "rmsnorm");
}

template <int G, bool SRC>
static void launch_src(mc_cuda *c, const RmsArgs &a, dim3 grid, dim3 block) {
    if (a.out) launch_pk<G, SRC, false>(c, a, grid, block);
    else launch_pk<G, SRC, true>(c, a, grid, block);
}

template <int G>
static void launch_g(mc_cuda *c, const RmsArgs &a, bool backward) {
    const int rows = G == 32 ? 8 : 1;
    dim3 grid((unsigned)((a.T + rows - 1) / rows)), block((unsigned)(G == 32 ? 256 : G));
    if (backward && a.D <= G * 8)
        cu_launch(c, rmsnorm_bwd_kernel<G, 8>, grid, block, 0, a, "rmsnorm_backward");
    else if (backward)
        cu_launch(c, rmsnorm_bwd_kernel<G, 0>, grid, block, 0, a, "rmsnorm_backward");
    else if (a.src) launch_src<G, true>(c, a, grid, block);
    else launch_src<G, false>(c, a, grid, block);
}

static void launch(mc_cuda *c, const RmsArgs &a, bool backward) {
    if (a.D <= 256) launch_g<32>(c, a, backward);
    else if (a.D <= 1024) launch_g<128>(c, a, backward);
    else launch_g<256>(c, a, backward);
}

/* Whether an RMSNorm output of T rows of D is packed (cu_packed): training-sized rows of a
 * hidden size (512 or more: not a per-head norm, whose output RoPE rotates in f32), read by
 * GEMMs of bf16 weights. */
static bool pack_norm(const mc_cuda *c, const float *out, int T, int D) {
    return out && cu_pack_rows(c, T) && D >= 512 && c->shadow_hint == MC_BF16;
}

void cu_rmsnorm(mc_backend *be, void *out, const void *x, mc_wt w, int T, int D, float eps) {
    mc_cuda *c = cu_ctx(be);
    RmsArgs a;
    size_t n = (size_t)T * (size_t)D;
    if (T <= 0) return;
    cu_unpack(c, x, n * sizeof(float));
    memset(&a, 0, sizeof a);
    /* a pending y += d with y == x fuses: x += d and out = rmsnorm(x) in one pass (out may
     * be d itself: each element of d is read before the same thread writes out there) */
    if (c->pend.kind == CU_PEND_ADD && c->pend.y == x && c->pend.n == n &&
        (c->pend.x == (const float *)out || !cu_f32_overlap(c->pend.x, n, (const float *)out, n)) &&
        !cu_f32_overlap(c->pend.x, n, (const float *)x, n) &&
        (!c->pend.src || !cu_f32_overlap(c->pend.src, n, (const float *)out, n))) {
        a.delta = c->pend.x;
        a.src = c->pend.src;
        c->pend.kind = CU_PEND_NONE;
    }
    cu_note_write(c, out, n * sizeof(float));
    a.out = (float *)out;
    a.x = (float *)x;
    a.w = w.data;
    a.wdt = (int)w.dtype;
    a.wpre = cu_is_frozen(c, w.data, (size_t)D * mc_dtype_size(w.dtype)) ? 1 : 0;
    if (pack_norm(c, (const float *)out, T, D) && !cu_f32_overlap(a.out, n, a.x, n) &&
        (!a.delta || !cu_f32_overlap(a.out, n, a.delta, n)) &&
        (!a.src || !cu_f32_overlap(a.out, n, a.src, n)) && cu_pack_claim(c, a.out, n)) {
        a.sh = (__nv_bfloat16 *)out; /* packed: bf16 only */
        a.out = NULL;
    } else {
        a.sh = (__nv_bfloat16 *)cu_shadow_for(c, out, n, T);
    }
    a.T = T;
    a.D = D;
    a.eps = eps;
    launch(c, a, false);
}

void cu_rmsnorm_backward(mc_backend *be, void *dx, void *xn, const void *dy, const void *x,
                         mc_wt w, int T, int D, float eps) {
    mc_cuda *c = cu_ctx(be);
    RmsArgs a;
    size_t n = (size_t)T * (size_t)D;
    if (T <= 0) return;
    cu_unpack(c, dx, n * sizeof(float)); /* dx += */
    cu_unpack(c, dy, n * sizeof(float));
    cu_unpack(c, x, n * sizeof(float));
    cu_note_write(c, dx, n * sizeof(float));
    if (xn) cu_note_write(c, xn, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.out = (float *)dx;
    a.xn = (float *)xn;
    if (xn && pack_norm(c, (const float *)xn, T, D) && !cu_f32_overlap(a.xn, n, a.out, n) &&
        !cu_f32_overlap(a.xn, n, (const float *)dy, n) &&
        !cu_f32_overlap(a.xn, n, (const float *)x, n) && cu_pack_claim(c, a.xn, n)) {
        a.xn16 = (__nv_bfloat16 *)xn; /* packed */
        a.xn = NULL;
    }
    a.x = (float *)x; /* read only */
    a.dy = (const float *)dy;
    a.w = w.data;
    a.wdt = (int)w.dtype;
    a.sh = (__nv_bfloat16 *)cu_shadow_for(c, dx, n, T);
    a.T = T;
    a.D = D;
    a.eps = eps;
    launch(c, a, true);
}
