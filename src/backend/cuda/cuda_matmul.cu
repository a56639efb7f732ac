/* cuda_matmul.cu - the GEMM family: matmul (forward), matmul_dx (its input gradient),
 * and the bf16 shadow cache of f32 activations.
 *
 * matmul with M <= CU_GEMV_MAX_M rows (decode) runs a GEMV kernel that streams the
 * weight once in its stored dtype and reads the f32 activations directly; larger M runs
 * cuBLAS with the activations converted to the weight dtype (bf16/f16; f32 weights use
 * f32) and f32 accumulation and output. A converted activation is kept as a "shadow" of
 * its f32 source until something writes that source, so q/k/v (and gate/up) convert
 * their shared input once; producers (rmsnorm, swiglu, attention, ...) may write the
 * shadow directly next to their f32 output. The LoRA products of training read those
 * shadows too (cu_shadow_find), with their small operands (the adapter's weights, the saved
 * x A^T products) converted into slots of their own (cu_small_as), so that a converted
 * adapter, kept until the optimizer writes it, never evicts an activation's shadow.
 *
 * A GEMM of training-sized rows of an MLP projection (mc_wt.mlp) that widens its input (gate
 * and up; in matmul_dx the down projection's input gradient) writes a packed output (cu_packed):
 * bf16 in the first half of its own f32 buffer, which the GEMMs, the LoRA products and the
 * SwiGLU read in place; cu_unpack expands it for any reader of f32. */
#include "cuda_internal.h"

/* GEMV rows of at least CU_GEMV_KSPLIT_MIN elements are split over the 4 warps of a block. */
enum { CU_GEMV_KSPLIT_MIN = 2048 };

/* ---- shadows ---- */

/* ---- packed ranges (cu_packed) ---- */

/* Packed outputs need training-sized row counts (decode outputs feed the GEMV path). */
enum { CU_PACK_MIN_ROWS = 256 };

bool cu_pack_rows(const mc_cuda *c, int M) { return c->pack_on && M >= CU_PACK_MIN_ROWS; }

__nv_bfloat16 *cu_packed_find(const mc_cuda *c, const float *x, size_t n) {
    for (int i = 0; i < c->n_packed; i++) {
        const cu_packed &r = c->packed[i];
        if (x >= r.base && n <= r.n && (size_t)(x - r.base) <= r.n - n)
            return (__nv_bfloat16 *)r.base + (x - r.base);
    }
    return NULL;
}

bool cu_packed_whole(const mc_cuda *c, const float *p, size_t n) {
    for (int i = 0; i < c->n_packed; i++)
        if (c->packed[i].base == p && c->packed[i].n == n) return true;
    return false;
}

bool cu_pack_claim_keep(mc_cuda *c, float *p, size_t n) {
    if (c->n_packed == CU_N_PACKED || !n) return false;
    c->packed[c->n_packed].base = p;
    c->packed[c->n_packed].n = n;
    c->n_packed++;
    return true;
}

bool cu_pack_claim(mc_cuda *c, float *p, size_t n) {
    if (c->n_packed == CU_N_PACKED || !n) return false;
    cu_pending_flush(c); /* pending work reads what the range holds now, and may look it up */
    return cu_pack_claim_keep(c, p, n);
}

struct WidenArgs {
    float *dst;
    const __nv_bfloat16 *src;
    size_t n;
};

static __global__ void widen_kernel(const WidenArgs a) {
    cu_dep_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < a.n;
         i += (size_t)gridDim.x * blockDim.x)
        a.dst[i] = __bfloat162float(a.src[i]);
}

/* Expands packed range r (already out of the table) to f32 through scratch. */
static void unpack_range(mc_cuda *c, const cu_packed &r) {
    const size_t b16 = r.n * sizeof(__nv_bfloat16);
    void *tmp = cu_scratch(c, CU_S_PACK, b16, false);
    WidenArgs a;
    if (!tmp) return; /* the failure is recorded */
    cu_copy_kernel(c, tmp, r.base, b16);
    memset(&a, 0, sizeof a);
    a.dst = r.base;
    a.src = (const __nv_bfloat16 *)tmp;
    a.n = r.n;
    cu_track_write(c, r.base, r.n * sizeof(float));
    cu_launch(c, widen_kernel, dim3(cu_blocks(r.n, 256, (unsigned)c->n_sm * 16)), dim3(256), 0, a,
              "unpack");
    c->n_unpack++;
}

/* Whether packed range r meets [a, b). */
static bool packed_meets(const cu_packed &r, uintptr_t a, uintptr_t b) {
    const uintptr_t ra = (uintptr_t)r.base;
    return a < ra + r.n * sizeof(float) && ra < b;
}

void cu_unpack(mc_cuda *c, const void *p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p, b = a + bytes;
    bool any = false;
    for (int i = 0; i < c->n_packed && !any; i++) any = packed_meets(c->packed[i], a, b);
    if (!any) return;
    cu_pending_flush(c); /* a held update may still write a packed range in bf16 */
    for (int i = 0; i < c->n_packed;) {
        if (!packed_meets(c->packed[i], a, b)) {
            i++;
            continue;
        }
        const cu_packed r = c->packed[i];
        c->packed[i] = c->packed[--c->n_packed];
        unpack_range(c, r);
    }
}

/* cu_note_write without the packed ranges (their owner keeps them). */
static void note_write_keep(mc_cuda *c, const void *p, size_t bytes) {
    uintptr_t a = (uintptr_t)p, b = a + bytes;
    int i;
    cu_track_write(c, p, bytes);
    if (c->n_lse_valid) cu_lse_drop_range(c, a, b);
    for (i = 0; i < CU_N_SHADOW_ALL; i++) {
        cu_shadow *s = &c->shadow[i];
        uintptr_t sa, sb;
        if (!s->valid) continue;
        sa = (uintptr_t)s->src;
        sb = sa + s->n * sizeof(float);
        if (a < sb && sa < b) s->valid = false;
    }
}

void cu_note_write(mc_cuda *c, const void *p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p, b = a + bytes;
    note_write_keep(c, p, bytes);
    for (int i = 0; i < c->n_packed;) {
        const cu_packed &r = c->packed[i];
        const uintptr_t ra = (uintptr_t)r.base, rb = ra + r.n * sizeof(float);
        if (!packed_meets(r, a, b)) {
            i++;
        } else if (a <= ra && rb <= b) { /* written whole: its old values are dead */
            c->packed[i] = c->packed[--c->n_packed];
        } else { /* the values outside the write stay: f32 first */
            cu_unpack(c, r.base, r.n * sizeof(float));
            i = 0;
        }
    }
}

void cu_note_write_keep(mc_cuda *c, const void *p, size_t bytes) { note_write_keep(c, p, bytes); }

/* The least recently used shadow slot of [lo, hi), with a buffer of at least `bytes`; NULL
 * on OOM (recorded as a failure only when `record`). */
static cu_shadow *slot_in(mc_cuda *c, size_t bytes, bool record, int lo, int hi) {
    cu_shadow *v = NULL;
    int i;
    for (i = lo; i < hi; i++) {
        cu_shadow *s = &c->shadow[i];
        if (!s->valid) {
            v = s;
            break;
        }
        if (!v || s->stamp < v->stamp) v = s;
    }
    v->valid = false;
    if (v->cap < bytes) {
        cu_break(c);
        if (v->buf) cu_free(c, v->buf);
        v->cap = 0;
        v->buf = cu_malloc(c, bytes + bytes / 4, record ? "activation conversion scratch" : NULL);
        if (!v->buf) return NULL;
        v->cap = bytes + bytes / 4;
    }
    v->stamp = ++c->shadow_clock;
    return v;
}

/* An activation shadow slot (slot_in over the first CU_N_SHADOW). */
static cu_shadow *shadow_slot(mc_cuda *c, size_t bytes, bool record) {
    return slot_in(c, bytes, record, 0, CU_N_SHADOW);
}

struct ConvArgs {
    void *dst;
    const float *src;
    size_t n;
    int dt;
};

/* dst[i] = (dt) src[i], four at a time when both are 16-byte aligned (n4 > 0). */
static __global__ void convert_kernel(const ConvArgs a) {
    cu_dep_wait();
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    bool vec = cu_aligned16(a.src) && (((uintptr_t)a.dst & 7u) == 0);
    size_t n4 = vec ? a.n / 4 : 0;
    for (size_t j = i; j < n4; j += step) {
        float4 v = __ldg(reinterpret_cast<const float4 *>(a.src) + j);
        if (a.dt == MC_BF16) {
            __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
            uint2 u;
            u.x = *reinterpret_cast<uint32_t *>(&lo);
            u.y = *reinterpret_cast<uint32_t *>(&hi);
            reinterpret_cast<uint2 *>(a.dst)[j] = u;
        } else {
            __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
            uint2 u;
            u.x = *reinterpret_cast<uint32_t *>(&lo);
            u.y = *reinterpret_cast<uint32_t *>(&hi);
            reinterpret_cast<uint2 *>(a.dst)[j] = u;
        }
    }
    for (size_t j = n4 * 4 + i; j < a.n; j += step) {
        if (a.dt == MC_BF16) ((__nv_bfloat16 *)a.dst)[j] = __float2bfloat16(a.src[j]);
        else ((__half *)a.dst)[j] = __float2half(a.src[j]);
    }
}

/* Converts x[0..n) to dt into slot s, which then shadows it. */
static void convert_into(mc_cuda *c, cu_shadow *s, const float *x, size_t n, mc_dtype dt) {
    ConvArgs a;
    cu_unpack(c, x, n * sizeof(float));
    memset(&a, 0, sizeof a);
    a.dst = s->buf;
    a.src = x;
    a.n = n;
    a.dt = (int)dt;
    cu_launch(c, convert_kernel, dim3(cu_blocks(n / 4 + 1, 256, (unsigned)c->n_sm * 16)), dim3(256),
              0, a, "convert");
    s->src = x;
    s->n = n;
    s->dt = dt;
    s->valid = true;
}

/* The dt copy of x[0..n) inside a valid shadow (any part of one), or NULL; no launch. */
static const void *shadow_lookup(mc_cuda *c, const float *x, size_t n, mc_dtype dt) {
    if (c->pend.kind == CU_PEND_ATTFWD) cu_pending_flush(c); /* it leaves a bf16 copy of out */
    if (dt == MC_BF16) {
        const void *p = cu_packed_find(c, x, n);
        if (p) return p;
    }
    for (int i = 0; i < CU_N_SHADOW_ALL; i++) {
        cu_shadow *s = &c->shadow[i];
        const float *src = (const float *)s->src;
        if (s->valid && s->dt == dt && x >= src && n <= s->n && (size_t)(x - src) <= s->n - n) {
            s->stamp = ++c->shadow_clock;
            return (const char *)s->buf + (size_t)(x - src) * 2; /* 2-byte elements */
        }
    }
    return NULL;
}

/* cu_act_as; record: an allocation failure is recorded (else only NULL comes back). */
static const void *act_as(mc_cuda *c, const float *x, size_t n, mc_dtype dt, bool record) {
    cu_shadow *s;
    const void *got;
    if (dt == MC_F32) {
        cu_unpack(c, x, n * sizeof(float));
        return x;
    }
    got = shadow_lookup(c, x, n, dt);
    if (got) return got;
    s = shadow_slot(c, n * 2, record);
    if (!s) return NULL;
    convert_into(c, s, x, n, dt);
    return s->buf;
}

const void *cu_act_as(mc_cuda *c, const float *x, size_t n, mc_dtype dt) {
    return act_as(c, x, n, dt, true);
}

const void *cu_act_as_opt(mc_cuda *c, const float *x, size_t n, mc_dtype dt) {
    return act_as(c, x, n, dt, false);
}

const void *cu_shadow_find(mc_cuda *c, const float *x, size_t n) {
    return shadow_lookup(c, x, n, MC_BF16);
}

const void *cu_small_as(mc_cuda *c, const float *x, size_t n) {
    const void *base = NULL, *got = cu_shadow_find(c, x, n);
    const float *lo = x; /* what is converted: the span, or the whole allocation */
    size_t bytes = 0, cnt = n;
    cu_shadow *s;
    if (got) return got;
    if (cu_alloc_of(c, x, n * sizeof(float), &base, &bytes) && bytes <= CU_SMALL_WHOLE &&
        ((uintptr_t)base & 15u) == 0) {
        lo = (const float *)base;
        cnt = bytes / sizeof(float);
    }
    s = slot_in(c, cnt * 2, false, CU_N_SHADOW, CU_N_SHADOW_ALL);
    if (!s) return NULL;
    convert_into(c, s, lo, cnt, MC_BF16);
    return (const __nv_bfloat16 *)s->buf + (x - lo);
}

void *cu_shadow_for(mc_cuda *c, const void *dst, size_t n, int rows) {
    cu_shadow *s;
    if (rows <= CU_GEMV_MAX_M || c->shadow_hint != MC_BF16) return NULL;
    s = shadow_slot(c, n * 2, false);
    if (!s) return NULL; /* a shadow is an optimisation: go on without it */
    s->src = dst;
    s->n = n;
    s->dt = MC_BF16;
    s->valid = true;
    return s->buf;
}

/* ---- GEMV for small M ---- */

/* One launch computes up to CU_GEMV_MAX_ENT products sharing the input x [M, K]: block b
 * belongs to entry e when bstart[e] <= b < bstart[e + 1]. With up != NULL the input is
 * silu(x) * up (the SwiGLU of a pending swiglu, computed as the swiglu kernel does, into
 * each block's shared memory), and the last block to finish also stores that input to
 * sw_out, which the swiglu op was to write (often over the gate itself, so only once every
 * block has read the gate).
 * Entries flagged rope are rotated in the epilogue: a warp computes the pair of rows
 * (i, i + hd/2) of one head and rotates them as the rope kernel does. */
struct GemvArgs {
    const float *x;  /* [M, K] (the gate when up != NULL) */
    const float *up; /* [M, K] or NULL */
    float *sw_out;   /* [M, K] or NULL; may be the gate itself */
    int *cnt;        /* finished blocks (sw_out), zero between launches */
    float *glu;      /* [M, N] silu(entry 0) * entry 1 (gemv_glu_kernel), or NULL */
    const int32_t *rpos; /* [M] RoPE positions */
    const float *rinv;   /* [rhd / 2] RoPE inverse frequencies */
    cu_gemv_ent ent[CU_GEMV_MAX_ENT];
    int bstart[CU_GEMV_MAX_ENT + 1];
    int nent, M, K, rhd;
    int wpre; /* every entry's weight is frozen (cu_is_frozen): loaded before the wait */
    /* one entry: the argmax keys of its rows (CU_AM_SLOT), raised in the epilogue, and the
     * other slot, cleared by block 0 (NULL: none) */
    unsigned long long *am, *am_clear;
};

/* Eight consecutive weights in their stored type. */
template <typename WT> struct Chunk8;
template <> struct Chunk8<__nv_bfloat16> {
    uint4 u;
    __device__ __forceinline__ void load(const __nv_bfloat16 *p) {
        u = __ldg(reinterpret_cast<const uint4 *>(p));
    }
    __device__ __forceinline__ void zero() { u = make_uint4(0, 0, 0, 0); }
    __device__ __forceinline__ void get(float f[8]) const {
        const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
        for (int i = 0; i < 4; i++) {
            float2 t = __bfloat1622float2(h[i]);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
};
template <> struct Chunk8<__half> {
    uint4 u;
    __device__ __forceinline__ void load(const __half *p) {
        u = __ldg(reinterpret_cast<const uint4 *>(p));
    }
    __device__ __forceinline__ void zero() { u = make_uint4(0, 0, 0, 0); }
    __device__ __forceinline__ void get(float f[8]) const {
        const __half2 *h = reinterpret_cast<const __half2 *>(&u);
        for (int i = 0; i < 4; i++) {
            float2 t = __half22float2(h[i]);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
};
template <> struct Chunk8<float> {
    float4 a, b;
    __device__ __forceinline__ void load(const float *p) {
        a = __ldg(reinterpret_cast<const float4 *>(p));
        b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
    }
    __device__ __forceinline__ void zero() { a = b = make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    __device__ __forceinline__ void get(float f[8]) const {
        f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
        f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
    }
};

/* silu(g) * u exactly as the swiglu kernel computes it. */
static __device__ __forceinline__ float swiglu1(float g, float u) {
    return __fmul_rn(cu_silu(g), u);
}

/* Input elements [8 ch, 8 ch + 8) of row m: from x in global memory, or (SW) from the
 * block's shared copy of silu(x) * up. */
template <bool SW>
static __device__ __forceinline__ void load_x8(const GemvArgs &a, const float *xs, int m, int ch,
                                               float4 &x0, float4 &x1) {
    const size_t off = (size_t)m * a.K + (size_t)ch * 8;
    if (SW) {
        x0 = *reinterpret_cast<const float4 *>(xs + off);
        x1 = *(reinterpret_cast<const float4 *>(xs + off) + 1);
    } else {
        x0 = __ldg(reinterpret_cast<const float4 *>(a.x + off));
        x1 = __ldg(reinterpret_cast<const float4 *>(a.x + off) + 1);
    }
}

/* s + w . (x0, x1) over one chunk of 8, the products added in element order. */
static __device__ __forceinline__ float dot8(const float (&w)[8], float4 x0, float4 x1, float s) {
    s = fmaf(w[0], x0.x, s);
    s = fmaf(w[1], x0.y, s);
    s = fmaf(w[2], x0.z, s);
    s = fmaf(w[3], x0.w, s);
    s = fmaf(w[4], x1.x, s);
    s = fmaf(w[5], x1.y, s);
    s = fmaf(w[6], x1.z, s);
    return fmaf(w[7], x1.w, s);
}

/* acc[r][m] += W[n0 + r, chunk] . x[m, chunk] for one chunk of 8. */
template <typename WT, int MT, int R, bool SW>
static __device__ __forceinline__ void gemv_chunk(float (&acc)[R][MT], const Chunk8<WT> *wc,
                                                  const GemvArgs &a, const float *xs, int ch) {
    float wf[R][8];
    for (int r = 0; r < R; r++) wc[r].get(wf[r]);
#pragma unroll
    for (int m = 0; m < MT; m++) {
        if (m < a.M) {
            float4 x0, x1;
            load_x8<SW>(a, xs, m, ch, x0, x1);
#pragma unroll
            for (int r = 0; r < R; r++) acc[r][m] = dot8(wf[r], x0, x1, acc[r][m]);
        }
    }
}

/* One pass of a warp over R weight rows: lane l holds the chunks base + u * 32 + l
 * (u < S / R) of every row r in c[u * R + r], S chunks in all (zero past the end). */
template <typename WT, int S = 8> struct GemvBatch {
    Chunk8<WT> c[S];
    template <int R>
    __device__ __forceinline__ void load(const WT *const (&rows)[R], int lane, int base, int nch) {
#pragma unroll
        for (int u = 0; u < S / R; u++) {
            const int ch = base + u * 32 + lane;
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (ch < nch) c[u * R + r].load(rows[r] + (size_t)ch * 8);
                else c[u * R + r].zero();
            }
        }
    }
};

/* acc[r][m] = rows[r] . x[m, :] over the chunks [c0, nch) of 8 elements (summed over the
 * warp) for R weight rows; `first` holds the pass at c0, already loaded. */
template <typename WT, int MT, int R, bool SW, int S = 8>
static __device__ __forceinline__ void gemv_acc(float (&acc)[R][MT], const GemvArgs &a,
                                                const float *xs, const WT *const (&rows)[R],
                                                int lane, int c0, int nch,
                                                const GemvBatch<WT, S> &first) {
    constexpr int U = S / R;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
    GemvBatch<WT, S> b = first;
    for (int base = c0; base < nch;) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int ch = base + u * 32 + lane;
            if (ch < nch) gemv_chunk<WT, MT, R, SW>(acc, b.c + u * R, a, xs, ch);
        }
        base += 32 * U;
        if (base < nch) b.template load<R>(rows, lane, base, nch);
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = cu_warp_sum(acc[r][m]);
}

/* The chunks [c0, c1) of 8 elements of a K-long row that warp `warp` of KS reads: all
 * of them when KS == 1, else a KS-th of the row. */
template <int KS>
static __device__ __forceinline__ void gemv_range(int K, int warp, int &c0, int &c1) {
    const int nch = K >> 3, q = (nch + KS - 1) / KS;
    c0 = KS == 1 ? 0 : min(nch, warp * q);
    c1 = KS == 1 ? nch : min(nch, c0 + q);
}

/* The rows n0 .. n0 + R - 1 of entry E (row pointers `rows`, chunks [c0, c1), first pass
 * in `first`), by one warp (KS == 1), or by the block's KS warps each summing a KS-th of
 * the row, added in warp order in shared memory (long rows: more loads in flight). */
template <typename WT, int MT, int R, bool SW, int KS>
static __device__ __forceinline__ void gemv_rows(const GemvArgs &a, const cu_gemv_ent &E,
                                                 const float *xs, int n0, int lane,
                                                 const WT *const (&rows)[R], int c0, int c1,
                                                 const GemvBatch<WT> &first) {
    float acc[R][MT];
    gemv_acc<WT, MT, R, SW>(acc, a, xs, rows, lane, c0, c1, first);
    if (KS > 1) {
        __shared__ float part[KS > 1 ? KS : 1][R][MT];
        const int warp = (int)threadIdx.x >> 5;
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int m = 0; m < MT; m++) part[warp][r][m] = acc[r][m];
        __syncthreads();
        if (warp != 0) return;
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int m = 0; m < MT; m++) {
                float t = part[0][r][m];
                for (int k = 1; k < KS; k++) t += part[k][r][m];
                acc[r][m] = t;
            }
    }
    if (lane == 0) {
        float b[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            b[r] = E.bias && n0 + r < E.N ? cu_load_w(E.bias, E.bias_dt, (size_t)(n0 + r)) : 0.0f;
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m >= a.M) continue;
            unsigned long long best = 0, bad = 0;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int n = n0 + r;
                if (n >= E.N) continue;
                const float v = acc[r][m] + b[r];
                E.out[(size_t)m * E.ldo + n] = v;
                if (a.am) cu_am_fold(best, bad, v, n);
            }
            if (a.am) {
                cu_am_push(a.am + m, best);
                cu_am_push(a.am + CU_GEMV_MAX_M + m, bad);
            }
        }
    }
}

/* Rows (r0, r0 + hd/2) of a head of entry E (pointers `rows`, first pass in `first`), by
 * one warp, rotated by RoPE with inverse frequency index i. */
template <typename WT, int MT, bool SW>
static __device__ __forceinline__ void gemv_rope_pair(const GemvArgs &a, const cu_gemv_ent &E,
                                                      const float *xs, int r0, int i, int lane,
                                                      const WT *const (&rows)[2],
                                                      const GemvBatch<WT> &first) {
    const int r1 = r0 + (a.rhd >> 1);
    float acc[2][MT];
    gemv_acc<WT, MT, 2, SW>(acc, a, xs, rows, lane, 0, a.K >> 3, first);
    if (lane == 0) {
        const float b0 = E.bias ? cu_load_w(E.bias, E.bias_dt, (size_t)r0) : 0.0f;
        const float b1 = E.bias ? cu_load_w(E.bias, E.bias_dt, (size_t)r1) : 0.0f;
        const float inv = a.rinv[i];
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m < a.M) {
                cu_rope_rotate(acc[0][m] + b0, acc[1][m] + b1, a.rpos[m], inv, false,
                               E.out[(size_t)m * E.ldo + r0], E.out[(size_t)m * E.ldo + r1]);
            }
        }
    }
}

/* out[m, n] = x[m, :] . W[n, :] (+ b[n]) for m < M <= MT. A warp owns R rows of W (or a
 * RoPE pair (i, i + hd/2) of a head; KS > 1: a block owns R rows, a warp a KS-th of them)
 * and streams them in 16-byte chunks (K % 8 == 0, 16-byte aligned rows): each lane issues
 * its 8 chunk loads of a pass before using any, so a row of up to 256 / R chunks costs one
 * memory latency. Frozen weights (a.wpre) are loaded before cu_dep_wait(), so their first
 * pass overlaps the previous kernel; other weights are only asked of L2 then. */
template <typename WT, int MT, int R, bool SW, int KS>
static __global__ void __launch_bounds__(128) gemv_kernel(const GemvArgs a) {
    extern __shared__ __align__(16) float xs[]; /* SW: [M, K] silu(x) * up */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int e = 0;
    while (e + 1 < a.nent && (int)blockIdx.x >= a.bstart[e + 1]) e++;
    const cu_gemv_ent &E = a.ent[e];
    const WT *w = reinterpret_cast<const WT *>(E.w);
    const int j = KS > 1 ? (int)blockIdx.x - a.bstart[e] : ((int)blockIdx.x - a.bstart[e]) * 4 + warp;
    const bool rope = E.rope != 0, active = rope ? j < E.N / 2 : j * R < E.N;
    /* rope: the pair (r0, r0 + hd/2), inverse frequency index ri */
    const int half = a.rhd >> 1, ri = rope ? j % half : 0, r0 = rope ? (j / half) * a.rhd + ri : 0;
    const WT *rrows[2] = {w + (size_t)r0 * a.K, w + (size_t)(r0 + half) * a.K};
    const WT *rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = w + (size_t)min(j * R + r, E.N - 1) * a.K;
    int c0, c1;
    gemv_range<KS>(a.K, warp, c0, c1);
    GemvBatch<WT> b; /* the warp's first pass over its rows */
    const auto load_first = [&] {
        if (rope) b.template load<2>(rrows, lane, 0, a.K >> 3);
        else b.template load<R>(rows, lane, c0, c1);
    };
    if (active && a.wpre) {
        load_first();
    } else if (active && lane < (rope ? 2 : R)) {
        cu_prefetch_l2(rope ? rrows[lane] : rows[lane] + (size_t)c0 * 8,
                       (unsigned)((size_t)(rope ? a.K >> 3 : c1 - c0) * 8 * sizeof(WT)));
    }
    cu_dep_wait();
    if (a.am_clear && blockIdx.x == 0 && threadIdx.x < CU_AM_SLOT) a.am_clear[threadIdx.x] = 0;
    if (active && !a.wpre) load_first();
    if (SW) {
        for (int i = threadIdx.x; i < a.M * a.K; i += blockDim.x) xs[i] = swiglu1(a.x[i], a.up[i]);
        __syncthreads();
    }
    if (active) {
        if (rope) gemv_rope_pair<WT, MT, SW>(a, E, xs, r0, ri, lane, rrows, b);
        else gemv_rows<WT, MT, R, SW, KS>(a, E, xs, j * R, lane, rows, c0, c1, b);
    }
    if (SW && a.sw_out) {
        __shared__ int last;
        __syncthreads(); /* this block has read all of its input */
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(a.cnt, 1) == (int)gridDim.x - 1;
        }
        __syncthreads();
        if (last) {
            __threadfence();
            for (int i = threadIdx.x; i < a.M * a.K; i += blockDim.x) a.sw_out[i] = xs[i];
            if (threadIdx.x == 0) *a.cnt = 0;
        }
    }
}

/* The gate and up products of a SwiGLU MLP in one pass, with the SwiGLU as epilogue: warp
 * n reads row n of both weights (entries 0 and 1, same N, K and input x) and its lane 0
 * writes gate[m, n], up[m, n] and then glu[m, n] = silu(gate) * up, exactly as the swiglu
 * kernel computes it (glu may be the gate or up buffer itself: each element is read and
 * written by the same lane only). Frozen weights are loaded before cu_dep_wait(). RW = 2:
 * a warp takes rows n and n + 1 (16 chunks a pass: the same chunks per lane and row as
 * one row, so the same sums), half the warps, so that the grid fits the card at once. */
template <typename WT, int MT, int RW>
static __global__ void __launch_bounds__(128) gemv_glu_kernel(const GemvArgs a) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const cu_gemv_ent &G = a.ent[0], &U = a.ent[1];
    const int n0 = ((int)blockIdx.x * 4 + warp) * RW;
    const WT *rows[2 * RW];
#pragma unroll
    for (int q = 0; q < RW; q++) {
        rows[2 * q] = reinterpret_cast<const WT *>(G.w) + (size_t)min(n0 + q, G.N - 1) * a.K;
        rows[2 * q + 1] = reinterpret_cast<const WT *>(U.w) + (size_t)min(n0 + q, G.N - 1) * a.K;
    }
    GemvBatch<WT, 8 * RW> b;
    if (n0 < G.N && a.wpre) b.template load<2 * RW>(rows, lane, 0, a.K >> 3);
    else if (lane < 2 * RW && n0 < G.N)
        cu_prefetch_l2(rows[lane], (unsigned)((size_t)a.K * sizeof(WT)));
    cu_dep_wait();
    if (n0 >= G.N) return;
    if (!a.wpre) b.template load<2 * RW>(rows, lane, 0, a.K >> 3);
    float acc[2 * RW][MT];
    gemv_acc<WT, MT, 2 * RW, false, 8 * RW>(acc, a, nullptr, rows, lane, 0, a.K >> 3, b);
    if (lane == 0) {
#pragma unroll
        for (int q = 0; q < RW; q++) {
            const int n = n0 + q;
            if (n >= G.N) break;
            const float bg = G.bias ? cu_load_w(G.bias, G.bias_dt, (size_t)n) : 0.0f;
            const float bu = U.bias ? cu_load_w(U.bias, U.bias_dt, (size_t)n) : 0.0f;
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < a.M) {
                    const float g = acc[2 * q][m] + bg, u = acc[2 * q + 1][m] + bu;
                    G.out[(size_t)m * G.ldo + n] = g;
                    U.out[(size_t)m * U.ldo + n] = u;
                    a.glu[(size_t)m * G.N + n] = swiglu1(g, u);
                }
            }
        }
    }
}

struct GemvScalarArgs {
    float *out;       /* [M, ldo] */
    const float *x;   /* [M, K] */
    const void *w;    /* [N, K] */
    const void *bias; /* [N] or NULL */
    int ldo, M, N, K, bias_dt, w_dt;
};

/* The same product for any K and alignment: a warp per row, one weight per lane step. */
template <int MT>
static __global__ void __launch_bounds__(128) gemv_scalar_kernel(const GemvScalarArgs a) {
    cu_dep_wait();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * 4 + warp;
    float acc[MT];
    if (n >= a.N) return;
    for (int m = 0; m < MT; m++) acc[m] = 0.0f;
    for (int k = lane; k < a.K; k += 32) {
        float wv = cu_load_w(a.w, a.w_dt, (size_t)n * a.K + k);
        for (int m = 0; m < MT; m++)
            if (m < a.M) acc[m] = fmaf(wv, a.x[(size_t)m * a.K + k], acc[m]);
    }
    for (int m = 0; m < MT; m++) acc[m] = cu_warp_sum(acc[m]);
    if (lane == 0) {
        float b = a.bias ? cu_load_w(a.bias, a.bias_dt, (size_t)n) : 0.0f;
        for (int m = 0; m < MT; m++)
            if (m < a.M) a.out[(size_t)m * a.ldo + n] = acc[m] + b;
    }
}

/* ---- long-row GEMV staged in shared memory (one input row) ---- */

enum { CU_SMV_MAX_RB = 8, CU_SMV_MAX_BYTES = 112 * 1024, CU_SMV_THREADS = 256 };

struct GemvSmemArgs {
    float *out;       /* [N] */
    const void *w;    /* [N, K], frozen */
    const void *bias; /* [N] or NULL */
    const float *x;   /* [K] */
    int N, K, rb, bias_dt;
};

/* Starts copying [src, src + n) (16-byte aligned, n a multiple of 16) into shared memory
 * at s0, 16 bytes a thread at a time, as one cp.async group; no registers held. */
static __device__ __forceinline__ void smem_copy_async(uint32_t s0, const void *src, size_t n) {
    const unsigned char *g = static_cast<const unsigned char *>(src);
    for (size_t off = (size_t)threadIdx.x * 16; off < n; off += (size_t)blockDim.x * 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s0 + (uint32_t)off),
                     "l"(g + off)
                     : "memory");
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* out[n] = W[n, :] . x (+ b[n]) for one input row and long rows (the down projection): a
 * block owns rb consecutive rows (one contiguous range of the weight) and copies them into
 * shared memory with cp.async before cu_dep_wait(), holding no registers, so a grid of
 * about one block per SM has the whole weight in flight while the previous kernel (the
 * gate/up GEMV) still runs; the input follows after the wait, in one trip through L2.
 * Thread i then sums chunks i, i + 256, ... of 8 elements of every row against the same
 * input chunk; warp sums, then the 8 warps in order. Needs the largest shared-memory split
 * on the SMs it shares with the kernels before it (cu_launch_raw asks for it). */
template <typename WT>
static __global__ void __launch_bounds__(CU_SMV_THREADS) gemv_smem_kernel(const GemvSmemArgs a) {
    extern __shared__ __align__(16) unsigned char wsm[]; /* rb weight rows, then x [K] f32 */
    constexpr int NT = CU_SMV_THREADS, NW = NT / 32;
    const int n0 = (int)blockIdx.x * a.rb, rb = min(a.rb, a.N - n0);
    const size_t bytes = (size_t)rb * (size_t)a.K * sizeof(WT);
    const unsigned char *src =
        static_cast<const unsigned char *>(a.w) + (size_t)n0 * a.K * sizeof(WT);
    const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(wsm);
    smem_copy_async(s0, src, bytes);
    cu_dep_wait();
    /* the input: one trip through L2 for the whole block */
    smem_copy_async(s0 + (uint32_t)((size_t)a.rb * (size_t)a.K * sizeof(WT)), a.x,
                    (size_t)a.K * sizeof(float));
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    float acc[CU_SMV_MAX_RB];
#pragma unroll
    for (int r = 0; r < CU_SMV_MAX_RB; r++) acc[r] = 0.0f;
    const int nch = a.K >> 3;
    const WT *ws = reinterpret_cast<const WT *>(wsm);
    const float4 *xs = reinterpret_cast<const float4 *>(wsm + (size_t)a.rb * a.K * sizeof(WT));
    for (int ch = threadIdx.x; ch < nch; ch += NT) {
        const float4 x0 = xs[2 * ch], x1 = xs[2 * ch + 1];
#pragma unroll
        for (int r = 0; r < CU_SMV_MAX_RB; r++) {
            if (r < rb) {
                Chunk8<WT> w;
                w.u = *reinterpret_cast<const uint4 *>(ws + (size_t)r * a.K + (size_t)ch * 8);
                float f[8];
                w.get(f);
                acc[r] = dot8(f, x0, x1, acc[r]);
            }
        }
    }
    __shared__ float part[NW][CU_SMV_MAX_RB];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < CU_SMV_MAX_RB; r++) {
        const float v = cu_warp_sum(acc[r]);
        if (lane == 0) part[warp][r] = v;
    }
    __syncthreads();
    if ((int)threadIdx.x < rb) {
        const int r = threadIdx.x, n = n0 + r;
        float t = part[0][r];
#pragma unroll
        for (int w = 1; w < NW; w++) t += part[w][r];
        const float b = a.bias ? cu_load_w(a.bias, a.bias_dt, (size_t)n) : 0.0f;
        a.out[n] = t + b;
    }
}

/* Shared memory of gemv_smem_kernel: rb rows of 2-byte weights and the f32 input. */
static size_t gemv_smem_bytes(int rb, int K) { return (size_t)rb * (size_t)K * 2 + (size_t)K * 4; }

/* Rows a block of gemv_smem_kernel takes for an N x K weight of 2-byte elements, or 0 when
 * the kernel does not apply (short rows, or a single row over the shared-memory limit). */
static int gemv_smem_rows(const mc_cuda *c, int N, int K) {
    if (!c->smem_on || K < CU_GEMV_KSPLIT_MIN || K % 8 != 0) return 0;
    int rb = (N + c->n_sm - 1) / c->n_sm;
    if (rb > CU_SMV_MAX_RB) rb = CU_SMV_MAX_RB;
    while (rb > 1 && gemv_smem_bytes(rb, K) > CU_SMV_MAX_BYTES) rb--;
    return gemv_smem_bytes(rb, K) <= CU_SMV_MAX_BYTES ? rb : 0;
}

/* Raises the dynamic shared-memory limit of the staged GEMV. */
void cu_matmul_init(mc_cuda *c) {
    cu_smem_limit(c, (const void *)gemv_smem_kernel<__nv_bfloat16>, CU_SMV_MAX_BYTES,
                  "matmul setup");
    cu_smem_limit(c, (const void *)gemv_smem_kernel<__half>, CU_SMV_MAX_BYTES, "matmul setup");
}

template <typename WT, int MT, bool SW>
static void gemv_launch_r(mc_cuda *c, GemvArgs a) {
    if constexpr (!SW) { /* a SwiGLU taken over by the gate/up GEMV: never a staged input */
        if (a.glu) { /* 2-byte weights, at most 2 input rows: two weight rows a warp */
            c->keep_l1 = MT > 1;
            if (sizeof(WT) == 2 && MT <= 2)
                cu_launch(c, gemv_glu_kernel<WT, MT, 2>, dim3((unsigned)((a.ent[0].N + 7) / 8)),
                          dim3(128), 0, a, "gemv gate/up swiglu");
            else
                cu_launch(c, gemv_glu_kernel<WT, MT, 1>, dim3((unsigned)((a.ent[0].N + 3) / 4)),
                          dim3(128), 0, a, "gemv gate/up swiglu");
            return;
        }
    }
    bool rope = false;
    for (int e = 0; e < a.nent; e++) rope = rope || a.ent[e].rope;
    /* long rows (the down projection) are split over a block's warps */
    const int KS = !rope && a.K >= CU_GEMV_KSPLIT_MIN ? 4 : 1;
    const int R = (KS == 1 && a.nent == 1 && a.ent[0].N >= 8192 && !rope) ? 2 : 1;
    const int per_block = KS == 1 ? 4 * R : R;
    int b = 0;
    for (int e = 0; e < a.nent; e++) {
        a.bstart[e] = b;
        b += a.ent[e].rope ? (a.ent[e].N / 2 + 3) / 4 : (a.ent[e].N + per_block - 1) / per_block;
    }
    for (int e = a.nent; e <= CU_GEMV_MAX_ENT; e++) a.bstart[e] = b;
    const unsigned smem = SW ? (unsigned)((size_t)a.M * a.K * sizeof(float)) : 0u;
    const char *name = a.nent > 1 ? "gemv multi" : SW ? "gemv swiglu" : "gemv";
    c->keep_l1 = MT > 1; /* their inputs are read through L1 once per row of W */
    if (KS == 4) cu_launch(c, gemv_kernel<WT, MT, 1, SW, 4>, dim3((unsigned)b), dim3(128), smem, a, name);
    else if (R == 2) cu_launch(c, gemv_kernel<WT, MT, 2, SW, 1>, dim3((unsigned)b), dim3(128), smem, a, name);
    else cu_launch(c, gemv_kernel<WT, MT, 1, SW, 1>, dim3((unsigned)b), dim3(128), smem, a, name);
}

template <typename WT, bool SW>
static void gemv_launch_m(mc_cuda *c, const GemvArgs &a) {
    if (a.M <= 1) gemv_launch_r<WT, 1, SW>(c, a);
    else if (a.M <= 2) gemv_launch_r<WT, 2, SW>(c, a);
    else if (a.M <= 4) gemv_launch_r<WT, 4, SW>(c, a);
    else gemv_launch_r<WT, 8, SW>(c, a);
}

template <typename WT>
static void gemv_launch_t(mc_cuda *c, const GemvArgs &a) {
    if (a.up) gemv_launch_m<WT, true>(c, a);
    else gemv_launch_m<WT, false>(c, a);
}

/* Launches a vector GEMV (K % 8 == 0, aligned) over a0.nent entries of weight dtype dt. */
static void gemv_launch(mc_cuda *c, const GemvArgs &a0, mc_dtype dt) {
    GemvArgs a = a0;
    a.wpre = 1;
    for (int e = 0; e < a.nent; e++)
        if (!cu_is_frozen(c, a.ent[e].w, (size_t)a.ent[e].N * (size_t)a.K * mc_dtype_size(dt))) a.wpre = 0;
    if (a.M == 1 && a.nent == 1 && a.wpre && !a.up && !a.ent[0].rope && !a.am &&
        (dt == MC_BF16 || dt == MC_F16)) {
        const int rb = gemv_smem_rows(c, a.ent[0].N, a.K);
        if (rb > 0) {
            GemvSmemArgs s;
            memset(&s, 0, sizeof s);
            s.out = a.ent[0].out;
            s.w = a.ent[0].w;
            s.bias = a.ent[0].bias;
            s.bias_dt = a.ent[0].bias_dt;
            s.x = a.x;
            s.N = a.ent[0].N;
            s.K = a.K;
            s.rb = rb;
            const dim3 grid((unsigned)((s.N + rb - 1) / rb));
            const unsigned smem = (unsigned)gemv_smem_bytes(rb, a.K);
            const dim3 block(CU_SMV_THREADS);
            if (dt == MC_BF16)
                cu_launch(c, gemv_smem_kernel<__nv_bfloat16>, grid, block, smem, s, "gemv staged");
            else
                cu_launch(c, gemv_smem_kernel<__half>, grid, block, smem, s, "gemv staged");
            return;
        }
    }
    switch (dt) {
    case MC_BF16: gemv_launch_t<__nv_bfloat16>(c, a); return;
    case MC_F16: gemv_launch_t<__half>(c, a); return;
    case MC_F32: gemv_launch_t<float>(c, a); return;
    }
}

static cu_gemv_ent gemv_ent(float *out, int ldo, mc_wt w, mc_wt bias, int N) {
    cu_gemv_ent e;
    memset(&e, 0, sizeof e);
    e.out = out;
    e.w = w.data;
    e.bias = bias.data;
    e.bias_dt = (int)bias.dtype;
    e.ldo = ldo;
    e.N = N;
    return e;
}

/* True when out[0, n) overlaps nothing the pending GEMV reads (its input) or writes to
 * (its entries). */
static bool gemv_out_free(const cu_pending *p, const float *out, size_t n) {
    if (cu_f32_overlap(out, n, p->gx, (size_t)p->M * (size_t)p->K)) return false;
    for (int e = 0; e < p->nent; e++)
        if (cu_f32_overlap(out, n, p->ent[e].out, (size_t)(p->M - 1) * p->ent[e].ldo + p->ent[e].N))
            return false;
    return true;
}

bool cu_gemv_take_rope(mc_cuda *c, float *x, int ldx, const int32_t *pos, int T, int H, int hd,
                       const float *inv) {
    cu_pending *p = &c->pend;
    if (!c->fuse_rope || p->kind != CU_PEND_GEMV || p->glu_out || p->M != T || hd % 2 != 0) return false;
    if (p->rpos && (p->rpos != pos || p->rinv != inv || p->rhd != hd)) return false;
    for (int e = 0; e < p->nent; e++) {
        cu_gemv_ent *E = &p->ent[e];
        if (E->out == x && E->ldo == ldx && E->N == H * hd && !E->rope) {
            E->rope = 1;
            p->rpos = pos;
            p->rinv = inv;
            p->rhd = hd;
            return true;
        }
    }
    return false;
}

void cu_flush_gemv(mc_cuda *c, const cu_pending *p) {
    GemvArgs a;
    memset(&a, 0, sizeof a);
    a.x = p->gx;
    a.M = p->M;
    a.K = p->K;
    a.nent = p->nent;
    a.glu = p->glu_out;
    for (int e = 0; e < p->nent; e++) a.ent[e] = p->ent[e];
    a.rpos = p->rpos;
    a.rinv = p->rinv;
    a.rhd = p->rhd;
    a.am = p->am;
    a.am_clear = p->am_clear;
    gemv_launch(c, a, p->wdt);
}

unsigned long long *cu_gemv_take_argmax(mc_cuda *c, const float *x, int rows, int n) {
    cu_pending *p = &c->pend;
    if (!c->fuse_am || !c->am_keys || p->kind != CU_PEND_GEMV || p->nent != 1 || p->glu_out ||
        p->M != rows)
        return NULL;
    const cu_gemv_ent &E = p->ent[0];
    if (E.out != x || E.N != n || E.ldo != n || E.rope) return NULL;
    p->am = c->am_keys + (size_t)c->am_slot * CU_AM_SLOT;
    c->am_slot ^= 1;
    p->am_clear = c->am_keys + (size_t)c->am_slot * CU_AM_SLOT;
    unsigned long long *keys = p->am;
    cu_pending_flush(c);
    return keys;
}

bool cu_gemv_take_swiglu(mc_cuda *c, float *out, const float *gate, const float *up, size_t n) {
    cu_pending *p = &c->pend;
    if (!c->fuse_glu || p->kind != CU_PEND_GEMV || p->nent != 2 || p->glu_out) return false;
    const cu_gemv_ent &G = p->ent[0], &U = p->ent[1];
    const size_t nn = (size_t)p->M * (size_t)G.N;
    if (G.out != gate || U.out != up || G.N != U.N || G.ldo != G.N || U.ldo != U.N || n != nn ||
        G.rope || U.rope)
        return false;
    /* out may be gate or up itself, but no other overlap with the outputs or the input */
    if ((out != gate && cu_f32_overlap(out, n, gate, n)) ||
        (out != up && cu_f32_overlap(out, n, up, n)))
        return false;
    if (cu_f32_overlap(out, n, p->gx, (size_t)p->M * (size_t)p->K)) return false;
    p->glu_out = out;
    return true;
}

/* out = x W^T (+ b) for M <= CU_GEMV_MAX_M rows, fused with a pending op when it can be:
 * appended to a pending GEMV on the same input, or reading the pending SwiGLU's result. */
static void gemv(mc_cuda *c, float *out, int ldo, const float *x, mc_wt w, mc_wt bias, int M, int N,
                 int K) {
    const size_t nout = (size_t)(M - 1) * (size_t)ldo + (size_t)N, nx = (size_t)M * (size_t)K;
    cu_pending *p = &c->pend;
    GemvArgs a;
    if (!(K % 8 == 0 && cu_aligned16(x) && cu_aligned16(w.data))) {
        GemvScalarArgs s;
        memset(&s, 0, sizeof s);
        s.out = out;
        s.x = x;
        s.w = w.data;
        s.bias = bias.data;
        s.bias_dt = (int)bias.dtype;
        s.w_dt = (int)w.dtype;
        s.ldo = ldo;
        s.M = M;
        s.N = N;
        s.K = K;
        dim3 grid((unsigned)((N + 3) / 4));
        if (M <= 1) cu_launch(c, gemv_scalar_kernel<1>, grid, dim3(128), 0, s, "gemv_scalar");
        else if (M <= 4) cu_launch(c, gemv_scalar_kernel<4>, grid, dim3(128), 0, s, "gemv_scalar");
        else cu_launch(c, gemv_scalar_kernel<8>, grid, dim3(128), 0, s, "gemv_scalar");
        return;
    }
    memset(&a, 0, sizeof a);
    a.x = x;
    a.M = M;
    a.K = K;
    a.nent = 1;
    a.ent[0] = gemv_ent(out, ldo, w, bias, N);
    /* the SwiGLU input is staged in each block's shared memory: at most 48 KB of it */
    if (c->fuse_on && c->gemv_cnt && p->kind == CU_PEND_SWIGLU && p->s_out == x && p->n == nx &&
        nx * sizeof(float) <= 48 * 1024 &&
        cu_aligned16(p->gate) && cu_aligned16(p->up) &&
        !cu_f32_overlap(out, nout, p->gate, nx) && !cu_f32_overlap(out, nout, p->up, nx) &&
        !cu_f32_overlap(out, nout, p->s_out, nx)) {
        a.x = p->gate;
        a.up = p->up;
        a.sw_out = p->s_out;
        a.cnt = c->gemv_cnt;
        p->kind = CU_PEND_NONE;
        gemv_launch(c, a, w.dtype);
        return;
    }
    if (c->fuse_on && p->kind == CU_PEND_GEMV && p->gx == x && p->M == M && p->K == K &&
        p->wdt == w.dtype && p->nent < CU_GEMV_MAX_ENT && !p->glu_out && gemv_out_free(p, out, nout)) {
        p->ent[p->nent++] = a.ent[0];
        return;
    }
    if (c->fuse_on && !cu_f32_overlap(out, nout, x, nx)) {
        cu_pending_flush(c);
        p->kind = CU_PEND_GEMV;
        p->glu_out = NULL;
        p->rpos = NULL;
        p->am = p->am_clear = NULL;
        p->gx = x;
        p->M = M;
        p->K = K;
        p->wdt = w.dtype;
        p->nent = 1;
        p->ent[0] = a.ent[0];
        return;
    }
    gemv_launch(c, a, w.dtype);
}

/* ---- cuBLAS paths ---- */

static cudaDataType_t blas_type(mc_dtype t) {
    switch (t) {
    case MC_BF16: return CUDA_R_16BF;
    case MC_F16: return CUDA_R_16F;
    case MC_F32: return CUDA_R_32F;
    }
    return CUDA_R_32F;
}

struct BiasArgs {
    float *out;
    const void *bias;
    int ldo, M, N, dt;
};

/* out[m, n] += b[n]. */
static __global__ void bias_kernel(const BiasArgs a) {
    cu_dep_wait();
    size_t total = (size_t)a.M * a.N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t m = i / a.N, n = i % a.N;
        a.out[m * a.ldo + n] += cu_load_w(a.bias, a.dt, n);
    }
}

struct BiasF32Args {
    float *out;
    const void *src;
    int n, dt;
};

static __global__ void bias_f32_kernel(const BiasF32Args a) {
    cu_dep_wait();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += gridDim.x * blockDim.x)
        a.out[i] = cu_load_w(a.src, a.dt, (size_t)i);
}

const float *cu_bias_f32(mc_cuda *c, mc_wt b, int n) {
    const size_t bytes = (size_t)n * mc_dtype_size(b.dtype);
    BiasF32Args a;
    for (int i = 0; i < c->n_bias; i++)
        if (c->bias_tab[i].src == b.data && c->bias_tab[i].n == n) return c->bias_tab[i].f32;
    if (c->n_bias == CU_N_BIAS || !cu_is_frozen(c, b.data, bytes)) return NULL;
    float *f = (float *)cu_malloc(c, (size_t)n * sizeof(float), NULL);
    if (!f) return NULL;
    memset(&a, 0, sizeof a);
    a.out = f;
    a.src = b.data;
    a.n = n;
    a.dt = (int)b.dtype;
    cu_launch(c, bias_f32_kernel, dim3(cu_blocks((size_t)n, 256, 64)), dim3(256), 0, a,
              "bias copy");
    c->bias_tab[c->n_bias].src = b.data;
    c->bias_tab[c->n_bias].f32 = f;
    c->bias_tab[c->n_bias].n = n;
    c->n_bias++;
    return f;
}

void cu_bias_drop(mc_cuda *c, const void *p, size_t bytes) {
    int i = 0;
    while (i < c->n_bias) {
        const uintptr_t s = (uintptr_t)c->bias_tab[i].src;
        if (s >= (uintptr_t)p && s < (uintptr_t)p + bytes) {
            float *f = c->bias_tab[i].f32;
            c->bias_tab[i] = c->bias_tab[--c->n_bias];
            cu_free(c, f);
        } else {
            i++;
        }
    }
}

/* Whether the output of a GEMM of M rows from K to N columns is packed (cu_packed): an MLP
 * projection's (w.mlp) bf16 weights, training-sized rows, and a product wider than its
 * input (the gate and up outputs, the down projection's input gradient). */
static bool wide_out(const mc_cuda *c, mc_wt w, int M, int N, int K) {
    return w.mlp && w.dtype == MC_BF16 && cu_pack_rows(c, M) && N > K;
}

void cu_gemm_packed(mc_cuda *c, float *out, const void *w, int ldw, const void *x, int ldx,
                    int M, int N, int K, const char *name) {
    const cu_lt_shape s = {true, false, false, N, M, K, ldw, ldx, N, CUDA_R_16BF, false, true,
                           false};
    cu_break(c);
    (void)cu_gemm_lt(c, s, 1.0f, w, x, out, name);
}

void cu_matmul(mc_backend *be, void *out, int ldo, const void *x, mc_wt w, mc_wt bias, int M,
               int N, int K) {
    mc_cuda *c = cu_ctx(be);
    const void *xc;
    if (M <= 0 || N <= 0) return;
    c->shadow_hint = w.dtype;
    cu_note_write(c, out, ((size_t)(M - 1) * (size_t)ldo + (size_t)N) * sizeof(float));
    if (M <= CU_GEMV_MAX_M) {
        cu_unpack(c, x, (size_t)M * (size_t)K * sizeof(float));
        gemv(c, (float *)out, ldo, (const float *)x, w, bias, M, N, K);
        return;
    }
    xc = cu_act_as(c, (const float *)x, (size_t)M * (size_t)K, w.dtype);
    if (!xc) return;
    if (wide_out(c, w, M, N, K) && ldo == N && !bias.data) {
        if (cu_mm_hold(c, (float *)out, (const float *)x, xc, w, M, N, K)) return;
        cu_break(c);
        if (cu_pack_claim(c, (float *)out, (size_t)M * (size_t)N)) {
            cu_gemm_packed(c, (float *)out, w.data, K, xc, K, M, N, K, "cublas matmul bf16 out");
            return;
        }
    }
    {
        /* the bias in the GEMM's epilogue, from an f32 copy, once an algorithm is chosen */
        const float *b32 = bias.data && c->bias_epi && c->lt_on ? cu_bias_f32(c, bias, N) : NULL;
        const cu_lt_shape s = {true, false, false, N, M, K, K, K, ldo, blas_type(w.dtype),
                               false, false, b32 != NULL};
        bool added = false;
        cu_break(c);
        (void)cu_gemm_lt(c, s, 1.0f, w.data, xc, (float *)out, "cublas matmul", b32, &added);
        if (added) return;
    }
    if (bias.data) {
        BiasArgs b;
        memset(&b, 0, sizeof b);
        b.out = (float *)out;
        b.bias = bias.data;
        b.ldo = ldo;
        b.M = M;
        b.N = N;
        b.dt = (int)bias.dtype;
        cu_launch(c, bias_kernel, dim3(cu_blocks((size_t)M * N, 256, (unsigned)c->n_sm * 8)),
                  dim3(256), 0, b, "bias");
    }
}

void cu_matmul_dx(mc_backend *be, void *dx, const void *dy, mc_wt w, int M, int N, int K,
                  bool accumulate) {
    mc_cuda *c = cu_ctx(be);
    const void *dyc;
    if (M <= 0 || K <= 0) return;
    c->shadow_hint = w.dtype;
    if (accumulate) cu_unpack(c, dx, (size_t)M * (size_t)K * sizeof(float));
    cu_note_write(c, dx, (size_t)M * (size_t)K * sizeof(float)); /* before dy's view is taken */
    dyc = cu_act_as(c, (const float *)dy, (size_t)M * (size_t)N, w.dtype);
    if (!dyc) return;
    cu_break(c);
    {
        const bool pack = !accumulate && wide_out(c, w, M, K, N) &&
                          cu_pack_claim(c, (float *)dx, (size_t)M * (size_t)K);
        /* column-major: dx^T [K, M] = W^T [K, N] dy^T [N, M] */
        const cu_lt_shape s = {false, false, accumulate, K, M, N, K, N, K, blas_type(w.dtype),
                               false, pack, false};
        (void)cu_gemm_lt(c, s, 1.0f, w.data, dyc, dx,
                         pack ? "cublas matmul_dx bf16 out" : "cublas matmul_dx");
    }
}

