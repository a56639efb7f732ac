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
