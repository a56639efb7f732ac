/* cuda_embed_rope.cu - token embedding lookup and rotary position embedding (forward and
 * backward). RoPE uses the CPU's inverse frequencies (mc_rope_inv_freq, computed on the
 * host and uploaded once per (theta, head_dim)) and rounds every product separately, as
 * the reference does, so both backends rotate by the same f32 angles. */
#include "cuda_internal.h"

#include <limits.h>

extern "C" float mc_rope_inv_freq(float theta, int i, int hd);

struct EmbArgs {
    float *out;         /* [T, D] */
    const int32_t *ids; /* [T] */
    const void *table;  /* [V, D] */
    int T, D, dt;
    /* the deferred writes taken over (cu_deferred_flush): the ids from argmax keys (NULL:
     * ids as they are), written back to ids_w; positions pos[t] = pos_start + t, t < pos_T */
    const unsigned long long *keys;
    unsigned long long *host, seq; /* each row's cu_am_word to mapped host memory */
    int32_t *ids_w;
    int32_t *pos;
    int pos_start, pos_T;
};

/* out[t, :] = table[ids[t], :] as f32; one block per row. */
static __global__ void embedding_kernel(const EmbArgs a) {
    cu_dep_wait();
    const int t = blockIdx.x;
    size_t row;
    if (a.keys) { /* the argmax's token (0 when the row had no finite value) */
        if (threadIdx.x == 0) cu_dfr_row(a.keys, a.ids_w, a.host, a.seq, t);
        row = (size_t)cu_am_token(a.keys[t]);
    } else {
        row = (size_t)a.ids[t];
    }
    if (a.pos && t == 0)
        for (int i = threadIdx.x; i < a.pos_T; i += blockDim.x) a.pos[i] = a.pos_start + i;
    float *o = a.out + (size_t)t * a.D;
    for (int d = threadIdx.x; d < a.D; d += blockDim.x) o[d] = cu_load_w(a.table, a.dt, row * a.D + d);
}

void cu_embedding(mc_backend *be, void *out, const int32_t *ids, mc_wt table, int T, int D) {
    mc_cuda *c = cu_ctx(be);
    EmbArgs a;
    if (T <= 0) return;
    cu_note_write(c, out, (size_t)T * (size_t)D * sizeof(float));
    memset(&a, 0, sizeof a);
    a.out = (float *)out;
    a.ids = ids;
    a.table = table.data;
    a.T = T;
    a.D = D;
    a.dt = (int)table.dtype;
    if (c->dfr_ids && c->dfr_ids == ids && c->dfr_rows == T) {
        a.keys = c->dfr_keys;
        a.host = c->dfr_host;
        a.seq = c->dfr_seq;
        a.ids_w = c->dfr_ids;
        c->dfr_ids = NULL;
    }
    if (c->dfr_pos) {
        a.pos = c->dfr_pos;
        a.pos_start = c->dfr_start;
        a.pos_T = c->dfr_T;
        c->dfr_pos = NULL;
    }
    cu_launch(c, embedding_kernel, dim3((unsigned)T), dim3(D >= 256 ? 256 : 128), 0, a, "embedding");
}

/* Device table of hd/2 inverse frequencies for (theta, hd); NULL on failure (recorded). */
static const float *rope_table(mc_cuda *c, float theta, int hd) {
    int half = hd / 2, i;
    float *host, *dev;
    if (c->scratch[CU_S_ROPE] && c->rope_theta == theta && c->rope_hd == hd)
        return (const float *)c->scratch[CU_S_ROPE];
    dev = (float *)cu_scratch(c, CU_S_ROPE, (size_t)(half > 0 ? half : 1) * sizeof(float), false);
    if (!dev) return NULL;
    host = (float *)mc_malloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    if (!host) {
        cu_set_error(c, MC_ERR_OOM, "rope: out of host memory");
        return NULL;
    }
    for (i = 0; i < half; i++) host[i] = mc_rope_inv_freq(theta, i, hd);
    cu_break(c);
    /* pageable source: the call returns once the bytes are staged, so host may be freed */
    bool ok = cu_check(c, cudaMemcpyAsync(dev, host, (size_t)half * sizeof(float),
                                          cudaMemcpyHostToDevice, c->stream),
                       "rope table upload");
    mc_free(host);
    if (!ok) return NULL;
    c->rope_theta = theta;
    c->rope_hd = hd;
    return dev;
}

struct RopeArgs {
    float *x[2];          /* [T, ldx[i]] tensors rotated in place (one or two: q and k) */
    __nv_bfloat16 *sh[2]; /* [T, ldx[i]] bf16 shadows of the results, or NULL */
    int ldx[2], H[2];
    const int32_t *pos;   /* [T] */
    const float *inv;     /* [hd/2] */
    int nt, T, hd;
    int backward;         /* rotate by -angle */
};

/* One thread per pair (i, i + hd/2) of one head of one row of one tensor. */
static __global__ void rope_kernel(const RopeArgs a) {
    cu_dep_wait();
    const int half = a.hd / 2;
    const size_t n0 = (size_t)a.T * a.H[0] * half;
    const size_t total = n0 + (a.nt > 1 ? (size_t)a.T * a.H[1] * half : 0);
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int ti = idx < n0 ? 0 : 1;
        const size_t j = ti ? idx - n0 : idx;
        const int H = a.H[ti];
        int i = (int)(j % half);
        size_t th = j / half;
        int h = (int)(th % H), t = (int)(th / H);
        size_t off = (size_t)t * a.ldx[ti] + (size_t)h * a.hd;
        float *xh = a.x[ti] + off;
        float y1, y2;
        cu_rope_rotate(xh[i], xh[i + half], a.pos[t], a.inv[i], a.backward != 0, y1, y2);
        xh[i] = y1;
        xh[i + half] = y2;
        if (a.sh[ti]) {
            a.sh[ti][off + i] = __float2bfloat16(y1);
            a.sh[ti][off + i + half] = __float2bfloat16(y2);
        }
    }
}

/* rope_kernel for four consecutive pairs a thread (16-byte loads and stores, 32-bit index
 * arithmetic): hd / 2 a multiple of 4, 16-byte aligned rows, fewer than 2^31 quads. Each
 * thread takes ROPE_U quads a grid stride apart, all their loads issued before any
 * rotation (one quad at a time left the loads of a thread in series with its arithmetic:
 * about half the copy rate). The same rotation of each pair, so the same bits. */
enum { ROPE_U = 4 };

static __global__ void rope4_kernel(const RopeArgs a) {
    cu_dep_wait();
    const int half = a.hd / 2, q4 = half / 4;
    const int n0 = a.T * a.H[0] * q4, total = n0 + (a.nt > 1 ? a.T * a.H[1] * q4 : 0);
    const int stride = (int)(gridDim.x * blockDim.x);
    const bool bw = a.backward != 0;
    for (int base = (int)(blockIdx.x * blockDim.x + threadIdx.x); base < total;
         base += ROPE_U * stride) {
        float4 x1[ROPE_U], x2[ROPE_U], inv[ROPE_U];
        int32_t p[ROPE_U];
        size_t off[ROPE_U];
        int ti[ROPE_U];
#pragma unroll
        for (int u = 0; u < ROPE_U; u++) {
            const int idx = base + u * stride;
            ti[u] = -1;
            if (idx >= total) continue;
            ti[u] = idx < n0 ? 0 : 1;
            const int j = ti[u] ? idx - n0 : idx, H = a.H[ti[u]];
            const int i = (j % q4) * 4, th = j / q4, h = th % H, t = th / H;
            off[u] = (size_t)t * a.ldx[ti[u]] + (size_t)h * a.hd + i;
            const float *x1p = a.x[ti[u]] + off[u];
            x1[u] = *reinterpret_cast<const float4 *>(x1p);
            x2[u] = *reinterpret_cast<const float4 *>(x1p + half);
            inv[u] = *reinterpret_cast<const float4 *>(a.inv + i);
            p[u] = a.pos[t];
        }
#pragma unroll
        for (int u = 0; u < ROPE_U; u++) {
            if (ti[u] < 0) continue;
            float4 y1, y2;
            cu_rope_rotate(x1[u].x, x2[u].x, p[u], inv[u].x, bw, y1.x, y2.x);
            cu_rope_rotate(x1[u].y, x2[u].y, p[u], inv[u].y, bw, y1.y, y2.y);
            cu_rope_rotate(x1[u].z, x2[u].z, p[u], inv[u].z, bw, y1.z, y2.z);
            cu_rope_rotate(x1[u].w, x2[u].w, p[u], inv[u].w, bw, y1.w, y2.w);
            float *x1p = a.x[ti[u]] + off[u];
            *reinterpret_cast<float4 *>(x1p) = y1;
            *reinterpret_cast<float4 *>(x1p + half) = y2;
            __nv_bfloat16 *sh = a.sh[ti[u]];
            if (sh) {
                uint2 u1, u2;
                u1.x = cu_pack_bf16(y1.x, y1.y);
                u1.y = cu_pack_bf16(y1.z, y1.w);
                u2.x = cu_pack_bf16(y2.x, y2.y);
                u2.y = cu_pack_bf16(y2.z, y2.w);
                *reinterpret_cast<uint2 *>(sh + off[u]) = u1;
                *reinterpret_cast<uint2 *>(sh + off[u] + half) = u2;
            }
        }
    }
}

static void rope_launch(mc_cuda *c, const RopeArgs &a) {
    const int half = a.hd / 2;
    size_t total = (size_t)a.T * (size_t)(a.H[0] + (a.nt > 1 ? a.H[1] : 0)) * (size_t)half;
    const unsigned blocks4 =
        cu_blocks((total / 4 + ROPE_U - 1) / ROPE_U, 256, (unsigned)c->n_sm * 8);
    /* the loop index, an int, stays below INT_MAX with its last stride added */
    bool quad = half % 4 == 0 &&
                total / 4 + (size_t)blocks4 * 256 * ROPE_U < (size_t)INT_MAX && cu_aligned16(a.inv);
    for (int i = 0; i < a.nt; i++)
        quad = quad && a.ldx[i] % 4 == 0 && cu_aligned16(a.x[i]) &&
               (!a.sh[i] || ((uintptr_t)a.sh[i] & 7) == 0);
    const char *name = a.backward ? "rope_backward" : "rope";
    if (quad)
        cu_launch(c, rope4_kernel, dim3(blocks4), dim3(256), 0, a, name);
    else
        cu_launch(c, rope_kernel, dim3(cu_blocks(total, 256, (unsigned)c->n_sm * 16)), dim3(256),
                  0, a, name);
}

/* ---- RoPE that first adds the held rank-r LoRA updates of its inputs ----
 * The trainer issues the q, k and v projections' frozen GEMMs, then their updates C +=
 * alpha A B^T (A [T, K]: the group's x A^T columns, B [N, K]), then the RoPE of q and k.
 * lora_hold keeps the updates; the RoPE takes them, and one launch adds each update, rotates
 * q and k and leaves bf16 copies of k and v for the attention: three updates' reads and
 * writes of their outputs and two conversions fewer (heads of 64 or 128). A warp takes 16
 * rows of one head: the update's [16, hd] tile comes from m16n8k8 TF32 tensor-core products
 * (the precision of the cuBLASLt updates it replaces) whose accumulator layout pairs column
 * i of the head with column i + hd/2 in the same thread, so the rotation follows in
 * registers. */
enum { LR_MAX = CU_LORA_HELD, LR_WARPS = 4, LR_KMAX = 32 };

struct LoraRopeArgs {
    float *x[LR_MAX];          /* [T, (hs[i + 1] - hs[i]) hd], rows without gaps */
    __nv_bfloat16 *sh[LR_MAX]; /* bf16 copies of the results, or NULL */
    const float *A[LR_MAX];    /* [T, lda[i]] (NULL: no update) */
    const float *B[LR_MAX];    /* [N, ldb[i]] */
    int lda[LR_MAX], ldb[LR_MAX], K[LR_MAX], rot[LR_MAX];
    float alpha[LR_MAX];
    int hs[LR_MAX + 1]; /* tensor i's heads: [hs[i], hs[i + 1]) of the launch's */
    const int32_t *pos; /* [T] */
    const float *inv;   /* [hd/2] */
    int nt, T, hd;
};

/* x rounded to TF32 (to nearest), as the tensor cores read it. */
static __device__ __forceinline__ uint32_t lr_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

/* d += a b, m16n8k8, TF32 operands, f32 sums. */
static __device__ __forceinline__ void lr_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Block (h0, r0): warp w takes head h0 * LR_WARPS + w over rows r0 * 16 .. + 16. In the
 * accumulator layout a thread holds rows g, g + 8 (g = lane / 4) and columns 2q, 2q + 1 (q =
 * lane % 4) of each 8-column tile; tile j and tile j + hd/16 hold a rotation's pairs. */
template <int HD>
static __global__ void __launch_bounds__(LR_WARPS * 32) lora_rope_kernel(const LoraRopeArgs a) {
    cu_dep_wait();
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int gh = (int)blockIdx.x * LR_WARPS + (int)(threadIdx.x >> 5);
    int ti = -1;
    for (int e = 0; e < a.nt; e++)
        if (gh >= a.hs[e] && gh < a.hs[e + 1]) ti = e;
    if (ti < 0) return;
    constexpr int half = HD / 2;
    const int ld = (a.hs[ti + 1] - a.hs[ti]) * HD;
    const int c0 = (gh - a.hs[ti]) * HD; /* the head's first column */
    const int r0 = (int)blockIdx.y * 16, ra = r0 + g, rb = ra + 8;
    const bool va = ra < a.T, vb = rb < a.T;
    const float *A = a.A[ti], *B = a.B[ti];
    const int nks = A ? a.K[ti] / 8 : 0, ldb = a.ldb[ti];
    const float al = a.alpha[ti];
    /* the rows' x A^T fragments: k-step s holds columns 8s + q and 8s + q + 4 */
    uint32_t af[LR_KMAX / 8][4];
#pragma unroll
    for (int s = 0; s < LR_KMAX / 8; s++) {
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (s < nks) {
            const float *pa = A + (size_t)ra * a.lda[ti] + 8 * s + q;
            const float *pb = A + (size_t)rb * a.lda[ti] + 8 * s + q;
            if (va) v[0] = pa[0], v[2] = pa[4];
            if (vb) v[1] = pb[0], v[3] = pb[4];
        }
        for (int i = 0; i < 4; i++) af[s][i] = lr_tf32(v[i]);
    }
    float *x = a.x[ti];
    __nv_bfloat16 *sh = a.sh[ti];
    const bool rot = a.rot[ti] != 0;
    const int32_t pa_ = va ? a.pos[ra] : 0, pb_ = vb ? a.pos[rb] : 0;
#pragma unroll
    for (int j = 0; j < half / 8; j++) {
        const int cl = c0 + 8 * j + 2 * q, ch = cl + half; /* a thread's columns, both halves */
        float2 xl[2] = {}, xh[2] = {};
        if (va) {
            xl[0] = *reinterpret_cast<const float2 *>(x + (size_t)ra * ld + cl);
            xh[0] = *reinterpret_cast<const float2 *>(x + (size_t)ra * ld + ch);
        }
        if (vb) {
            xl[1] = *reinterpret_cast<const float2 *>(x + (size_t)rb * ld + cl);
            xh[1] = *reinterpret_cast<const float2 *>(x + (size_t)rb * ld + ch);
        }
        float ul[4] = {0.0f, 0.0f, 0.0f, 0.0f}, uh[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int s = 0; s < LR_KMAX / 8; s++) {
            if (s >= nks) break;
            /* B^T's 8 x 8 tiles: row k = 8s + q (+ 4), column n = the tile's g-th */
            const float *bl = B + (size_t)(c0 + 8 * j + g) * ldb + 8 * s + q;
            const float *bh = bl + (size_t)half * ldb;
            lr_mma(ul, af[s], lr_tf32(bl[0]), lr_tf32(bl[4]));
            lr_mma(uh, af[s], lr_tf32(bh[0]), lr_tf32(bh[4]));
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = r ? rb : ra;
            if (!(r ? vb : va)) continue;
            float y[4] = {fmaf(al, ul[2 * r], xl[r].x), fmaf(al, ul[2 * r + 1], xl[r].y),
                          fmaf(al, uh[2 * r], xh[r].x), fmaf(al, uh[2 * r + 1], xh[r].y)};
            if (rot) {
                const int32_t p = r ? pb_ : pa_;
                const int i = 8 * j + 2 * q;
                cu_rope_rotate(y[0], y[2], p, a.inv[i], false, y[0], y[2]);
                cu_rope_rotate(y[1], y[3], p, a.inv[i + 1], false, y[1], y[3]);
            }
            const size_t o = (size_t)row * ld;
            *reinterpret_cast<float2 *>(x + o + cl) = make_float2(y[0], y[1]);
            *reinterpret_cast<float2 *>(x + o + ch) = make_float2(y[2], y[3]);
            if (sh) {
                *reinterpret_cast<uint32_t *>(sh + o + cl) = cu_pack_bf16(y[0], y[1]);
                *reinterpret_cast<uint32_t *>(sh + o + ch) = cu_pack_bf16(y[2], y[3]);
            }
        }
    }
}

/* Whether held update u of pending p fits lora_rope_kernel over heads of hd columns: an f32
 * output of whole heads over the rope's T rows, B stored [N, K] (tb), K a multiple of the
 * products' 8 (lora_hold holds only 16-byte aligned outputs without gaps between rows). */
static bool lr_fits(const cu_pending &p, const cu_lora_upd &u, int T, int hd) {
    return p.lu_M == T && !u.C16 && u.tb && u.K >= 8 && u.K <= LR_KMAX && u.K % 8 == 0 &&
           u.N % hd == 0;
}

/* Rotates r's tensors (forward) after adding the held updates of pending p (p.n_lu > 0, each
 * lr_fits) in one launch: an update of a rotated tensor first, the others' on their own; every
 * tensor but the first (q) leaves a bf16 copy for the attention. */
static void lora_rope_launch(mc_cuda *c, const cu_pending &p, const RopeArgs &r) {
    LoraRopeArgs a;
    memset(&a, 0, sizeof a);
    a.pos = r.pos;
    a.inv = r.inv;
    a.T = r.T;
    a.hd = r.hd;
    bool used[LR_MAX] = {};
    auto add = [&](float *x, int H, int rot, const cu_lora_upd *u) {
        const int e = a.nt++;
        a.x[e] = x;
        a.rot[e] = rot;
        a.hs[e + 1] = a.hs[e] + H;
        if (u) {
            a.A[e] = u->A;
            a.B[e] = u->B;
            a.lda[e] = u->lda;
            a.ldb[e] = u->ldb;
            a.K[e] = u->K;
            a.alpha[e] = u->alpha;
        }
        if (e > 0)
            a.sh[e] = (__nv_bfloat16 *)cu_shadow_for(c, x, (size_t)r.T * (size_t)H * r.hd, r.T);
    };
    for (int i = 0; i < r.nt; i++) {
        const cu_lora_upd *u = NULL;
        for (int e = 0; e < p.n_lu; e++)
            if (!used[e] && p.lu[e].C == r.x[i]) {
                u = &p.lu[e];
                used[e] = true;
            }
        add(r.x[i], r.H[i], 1, u);
    }
    for (int e = 0; e < p.n_lu; e++)
        if (!used[e]) add(p.lu[e].C, p.lu[e].N / r.hd, 0, &p.lu[e]);
    const dim3 grid((unsigned)((a.hs[a.nt] + LR_WARPS - 1) / LR_WARPS),
                    (unsigned)((r.T + 15) / 16));
    c->n_lrope++;
    if (r.hd == 64)
        cu_launch(c, lora_rope_kernel<64>, grid, dim3(LR_WARPS * 32), 0, a, "rope lora");
    else
        cu_launch(c, lora_rope_kernel<128>, grid, dim3(LR_WARPS * 32), 0, a, "rope lora");
}

/* Whether x [T, ldx] may be rotated in the launch that adds the updates held in p: it is one
 * update's whole output, or apart from what every update reads and writes. */
static bool lr_apart(const cu_pending &p, const float *x, int ldx, int T) {
    const size_t nx = (size_t)T * (size_t)ldx;
    bool hit = false;
    for (int e = 0; e < p.n_lu; e++) {
        hit = hit || p.lu[e].C == x;
        const cu_lora_upd &u = p.lu[e];
        size_t na, nb;
        cu_lora_spans(u, p.lu_M, u.N, &na, &nb);
        if (u.C == x ? u.N != ldx
                     : cu_f32_overlap(x, nx, u.C, (size_t)p.lu_M * (size_t)u.N) ||
                           cu_f32_overlap(x, nx, u.A, na) || cu_f32_overlap(x, nx, u.B, nb))
            return false;
    }
    return hit || p.n_lu < LR_MAX; /* a tensor of its own: LR_MAX in a launch */
}

/* Whether the forward RoPE of x [T, ldx] (H heads of hd) takes the updates held in c->pend
 * into *q (a pending RoPE of x carrying them): one of them writes x and all fit the kernel
 * (at most LR_MAX tensors: the held updates, one of them x's). */
static bool lr_take(mc_cuda *c, cu_pending *q, const float *x, int ldx, int T, int H, int hd) {
    const cu_pending &p = c->pend;
    bool hit = false;
    if (!c->qkvupd_on || p.kind != CU_PEND_LORA || ldx != H * hd || (hd != 64 && hd != 128) ||
        !cu_aligned16(x))
        return false;
    for (int e = 0; e < p.n_lu; e++) {
        if (!lr_fits(p, p.lu[e], T, hd)) return false;
        hit = hit || p.lu[e].C == x;
    }
    if (!hit || !lr_apart(p, x, ldx, T)) return false;
    for (int e = 0; e < p.n_lu; e++) q->lu[e] = p.lu[e];
    q->n_lu = p.n_lu;
    q->lu_M = p.lu_M;
    q->lu_N = p.lu_N;
    c->pend.kind = CU_PEND_NONE; /* carried by q now */
    return true;
}

/* The pending rotation of one tensor as kernel arguments. */
static RopeArgs rope_args1(const cu_pending *p) {
    RopeArgs a;
    memset(&a, 0, sizeof a);
    a.x[0] = p->rx;
    a.sh[0] = p->rsh;
    a.ldx[0] = p->ldx;
    a.H[0] = p->H;
    a.pos = p->pos;
    a.inv = p->inv;
    a.nt = 1;
    a.T = p->T;
    a.hd = p->hd;
    a.backward = p->backward;
    return a;
}

void cu_flush_rope(mc_cuda *c, const cu_pending *p) {
    if (p->n_lu > 0) lora_rope_launch(c, *p, rope_args1(p));
    else rope_launch(c, rope_args1(p));
}

static void rope_any(mc_backend *be, void *x, int ldx, const int32_t *pos, int T, int H, int hd,
                     float theta, bool backward) {
    mc_cuda *c = cu_ctx(be);
    cu_pending p;
    size_t span = (size_t)T * (size_t)ldx;
    if (T <= 0 || H <= 0 || hd < 2) return;
    memset(&p, 0, sizeof p);
    /* the held updates of q, k and v, added by this RoPE's launch (taken before the table's
     * upload, which launches what is pending) */
    const bool took = !backward && c->fuse_on && lr_take(c, &p, (const float *)x, ldx, T, H, hd);
    const float *inv = rope_table(c, theta, hd);
    if (!inv) {
        if (took) cu_flush_lora(c, &p);
        return;
    }
    cu_note_write(c, x, span * sizeof(float));
    if (!backward && cu_gemv_take_rope(c, (float *)x, ldx, pos, T, H, hd, inv)) return;
    p.kind = CU_PEND_ROPE;
    p.rx = (float *)x;
    p.ldx = ldx;
    p.T = T;
    p.H = H;
    p.hd = hd;
    p.backward = backward ? 1 : 0;
    p.pos = pos;
    p.inv = inv;
    /* the backward's result feeds matmul_dx: keep its bf16 copy when it covers whole rows */
    if (backward && H * hd == ldx) p.rsh = (__nv_bfloat16 *)cu_shadow_for(c, x, span, T);
    /* q then k at the same positions: one launch for both */
    const cu_pending *q = &c->pend;
    if (q->kind == CU_PEND_ROPE && q->pos == pos && q->T == T && q->hd == hd && q->inv == inv &&
        q->backward == p.backward &&
        !((const float *)x < q->rx + (size_t)T * q->ldx && q->rx < (const float *)x + span) &&
        (q->n_lu == 0 ||
         (ldx == H * hd && cu_aligned16(x) && lr_apart(*q, (const float *)x, ldx, T)))) {
        const cu_pending held = *q;
        RopeArgs a = rope_args1(q);
        c->pend.kind = CU_PEND_NONE;
        a.nt = 2;
        a.x[1] = p.rx;
        a.sh[1] = p.rsh;
        a.ldx[1] = ldx;
        a.H[1] = H;
        if (held.n_lu > 0) lora_rope_launch(c, held, a);
        else rope_launch(c, a);
        return;
    }
    if (c->fuse_on) {
        cu_pending_flush(c);
        c->pend = p;
        return;
    }
    rope_launch(c, rope_args1(&p));
}

/* The f32 values of x [T, ldx] (H heads of hd a row) for RoPE in place. */
static void rope_unpack(mc_backend *be, const void *x, int ldx, int T, int H, int hd) {
    if (T > 0)
        cu_unpack(cu_ctx(be), x, ((size_t)(T - 1) * (size_t)ldx + (size_t)H * hd) * sizeof(float));
}

void cu_rope(mc_backend *be, void *x, int ldx, const int32_t *pos, int T, int H, int hd,
             float theta) {
    rope_unpack(be, x, ldx, T, H, hd);
    rope_any(be, x, ldx, pos, T, H, hd, theta, false);
}

void cu_rope_backward(mc_backend *be, void *dx, int ldx, const int32_t *pos, int T, int H, int hd,
                      float theta) {
    rope_unpack(be, dx, ldx, T, H, hd);
    rope_any(be, dx, ldx, pos, T, H, hd, theta, true);
}
