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

void cu_flush_rope(mc_cuda *c, const cu_pending *p) { rope_launch(c, rope_args1(p)); }

static void rope_any(mc_backend *be, void *x, int ldx, const int32_t *pos, int T, int H, int hd,
                     float theta, bool backward) {
    mc_cuda *c = cu_ctx(be);
    cu_pending p;
    size_t span = (size_t)T * (size_t)ldx;
    if (T <= 0 || H <= 0 || hd < 2) return;
    const float *inv = rope_table(c, theta, hd);
    if (!inv) return;
    cu_note_write(c, x, span * sizeof(float));
    if (!backward && cu_gemv_take_rope(c, (float *)x, ldx, pos, T, H, hd, inv)) return;
    memset(&p, 0, sizeof p);
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
        !((const float *)x < q->rx + (size_t)T * q->ldx && q->rx < (const float *)x + span)) {
        RopeArgs a = rope_args1(q);
        c->pend.kind = CU_PEND_NONE;
        a.nt = 2;
        a.x[1] = p.rx;
        a.sh[1] = p.rsh;
        a.ldx[1] = ldx;
        a.H[1] = H;
        rope_launch(c, a);
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
