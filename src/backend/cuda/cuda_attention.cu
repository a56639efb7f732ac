/* cuda_attention.cu - causal grouped-query attention, forward and backward.
 *
 * Forward, two kernels:
 *  - flash (T > 8 rows, head_dim 16/32/64/128): a block owns 64 query rows of one head;
 *    key/value tiles of 64 rows come from bf16 copies of k and v made once per call,
 *    loaded with cp.async one tile ahead (or, without the copies, are converted from f32
 *    into shared memory); S = Q K^T and O += P V run on tensor cores (mma.sync m16n8k16,
 *    f32 accumulation) with an online softmax in the log2 domain. It can also emit the
 *    per-row log-sum-exp and D = rowsum(dO * O) that the backward needs (the op table
 *    passes no forward state: a training forward keeps its log-sum-exp for the backward
 *    of the same attention, which otherwise recomputes them).
 *  - decode (T <= 8, head_dim 64 or 128): a cluster of 8 blocks owns one query row of one
 *    head, a block one eighth of the keys and each of its warps batches of keys whose key
 *    and value rows it loads together (one memory latency per batch); the blocks' (max,
 *    sum, output) triples meet in the first block's shared memory through the cluster
 *    (distributed shared memory), so there are no atomics and a decode step is one launch.
 *  - row (decode with any other head_dim <= 256): a block owns one query row of one head
 *    and one of 32 splits of the keys, in f32; the last block of a row to finish merges
 *    the splits' (max, sum, output) triples.
 * Backward: FlashAttention-2 style: a block owns 64 keys and one query head and walks the
 * query tiles at or after its keys, accumulating dK and dV in registers (added atomically
 * into the kv head the group shares) and adding dQ with atomics. The query and output
 * gradient tiles come from bf16 copies (made by the kernel that computes D) with cp.async,
 * the next tile's copies in flight while the block works on the current one; a plain
 * per-row kernel covers other head sizes. */
#include <cooperative_groups.h>
#include <math.h>

#include "cuda_internal.h"

namespace cg = cooperative_groups;

typedef __nv_bfloat16 bf16;

enum {
    ROW_THREADS = 128,
    ROW_CHUNK = 256,
    ROW_MAX_SPLIT = 32,
    SMALL_T = 8,
    DEC_ROWS = SMALL_T, /* rows of different sequences in one decode attention launch */
    DEC_SPLIT = 8,
    DEC_THREADS = 256
};

static const float LOG2E = 1.4426950408889634f;

/* ---- tensor-core helpers ---- */

/* x rounded to bf16 and back. */
static __device__ __forceinline__ float bf16_round(float x) {
    return __bfloat162float(__float2bfloat16(x));
}

/* The m16n8k16 A fragment of two adjacent 8-column accumulator tiles (P or dS), as bf16. */
static __device__ __forceinline__ void pack_a(uint32_t (&a)[4], const float (&t0)[4],
                                              const float (&t1)[4]) {
    a[0] = cu_pack_bf16(t0[0], t0[1]);
    a[1] = cu_pack_bf16(t0[2], t0[3]);
    a[2] = cu_pack_bf16(t1[0], t1[1]);
    a[3] = cu_pack_bf16(t1[2], t1[3]);
}

static __device__ __forceinline__ uint32_t lds32(const bf16 *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

/* Rows row0..row0+ROWS-1 of an f32 matrix (row stride ld, HD columns from src) as bf16
 * into dst[ROWS][HD + 8]; rows >= nvalid are zero. 128 threads. The loads go out in
 * batches of up to 16 float4 a thread before any is converted, so a tile costs one or two
 * memory latencies instead of one per loop step. */
template <int HD, int ROWS>
static __device__ __forceinline__ void load_tile(bf16 *dst, const float *src, int ld, int row0,
                                                 int nvalid) {
    constexpr int V4 = HD / 4, LD = HD + 8, N = ROWS * V4 / 128, NB = N < 16 ? N : 16;
    static_assert(N * 128 == ROWS * V4 && N % NB == 0, "tile does not split over 128 threads");
#pragma unroll
    for (int b0 = 0; b0 < N; b0 += NB) {
        float4 v[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const int i = threadIdx.x + (b0 + j) * 128, r = i / V4, c4 = i - r * V4;
            v[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (row0 + r < nvalid)
                v[j] = __ldg(reinterpret_cast<const float4 *>(src + (size_t)(row0 + r) * ld) + c4);
        }
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const int i = threadIdx.x + (b0 + j) * 128, r = i / V4, c4 = i - r * V4;
            uint2 u;
            u.x = cu_pack_bf16(v[j].x, v[j].y);
            u.y = cu_pack_bf16(v[j].z, v[j].w);
            *reinterpret_cast<uint2 *>(dst + r * LD + c4 * 4) = u;
        }
    }
}

/* ---- flash forward ---- */

struct FlashArgs {
    float *out;         /* [T, Hq*HD] or NULL (statistics only) */
    bf16 *sh;           /* bf16 copy of out, or NULL */
    const float *q;     /* [T, Hq*HD] */
    const float *k, *v; /* [pos0 + T, Hkv*HD] */
    const bf16 *kb, *vb; /* bf16 copies of k and v (flash_fwd_kernel<HD, true>), or NULL */
    const float *dout;  /* [T, Hq*HD] for dsum, or NULL */
    float *lse;         /* [Hq, T] log2-domain log-sum-exp of the scaled scores, or NULL */
    float *dsum;        /* [Hq, T] rowsum(bf16(dout) * out), or NULL: with dout rounded as
                         * the backward's dP = dO V^T rounds it, so the two cancel exactly
                         * where they should (e.g. a row with one key gets dS = 0) */
    int T, pos0, Hq, Hkv;
    float scale_log2;
};

template <int HD> constexpr int flash_smem() { return 3 * 64 * (HD + 8) * 2; }
/* With bf16 K/V copies: the Q tile and two buffers each of K and V tiles. */
template <int HD> constexpr int flash_smem_kb() { return 5 * 64 * (HD + 8) * 2; }

/* Rows row0..row0+ROWS-1 of a bf16 matrix (row stride ld, HD columns from src) into
 * dst[ROWS][HD + 8] with cp.async (16 bytes each, no registers held); rows >= nvalid are
 * zero-filled. 128 threads; the caller commits and waits. */
template <int HD, int ROWS = 64>
static __device__ __forceinline__ void cp_tile(bf16 *dst, const bf16 *src, int ld, int row0,
                                               int nvalid) {
    constexpr int C = HD / 8, LD = HD + 8, N = ROWS * C / 128;
    static_assert(N * 128 == ROWS * C, "tile does not split over 128 threads");
#pragma unroll
    for (int j = 0; j < N; j++) {
        const int i = (int)threadIdx.x + j * 128, r = i / C, c = i - r * C;
        const bool ok = row0 + r < nvalid;
        const bf16 *g = ok ? src + (size_t)(row0 + r) * ld + c * 8 : src;
        const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst + r * LD + c * 8);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(g),
                     "r"(ok ? 16 : 0)
                     : "memory");
    }
}

/* One K/V tile of the online softmax for this warp's 16 query rows: scores against the
 * tile's keys (masked past each row's position when need_mask), the running maxima and
 * sums, and o += P V. */
template <int HD>
static __device__ __forceinline__ void flash_step(const FlashArgs &a, const bf16 *Ks, const bf16 *Vs,
                                                  int kt0, bool need_mask, int qpos0, int qpos1,
                                                  const uint32_t (&qf)[HD / 16][4],
                                                  float (&o)[HD / 8][4], float &m0, float &m1,
                                                  float &l0, float &l1) {
    constexpr int BN = 64, LD = HD + 8;
    const int lane = threadIdx.x & 31, cq = lane & 3;
    const int mat = lane >> 3, rr = lane & 7;
    float s[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt += 2) {
            /* the B fragments of key tiles nt and nt + 1 in one ldmatrix */
            uint32_t b[4];
            cu_ldsm_x4(b, Ks + ((nt + (mat >> 1)) * 8 + rr) * LD + kk * 16 + (mat & 1) * 8);
            cu_mma16816(s[nt], qf[kk], b[0], b[1]);
            cu_mma16816(s[nt + 1], qf[kk], b[2], b[3]);
        }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float x = s[nt][e] * a.scale_log2;
            int key = kt0 + nt * 8 + 2 * cq + (e & 1);
            if (need_mask && key > (e < 2 ? qpos0 : qpos1)) x = -INFINITY;
            s[nt][e] = x;
            if (e < 2) mx0 = fmaxf(mx0, x);
            else mx1 = fmaxf(mx1, x);
        }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    /* key 0 is visible to every row, so the maxima are finite from the first tile on */
    const float al0 = exp2f(m0 - mn0), al1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
        s[nt][0] = exp2f(s[nt][0] - mn0);
        s[nt][1] = exp2f(s[nt][1] - mn0);
        s[nt][2] = exp2f(s[nt][2] - mn1);
        s[nt][3] = exp2f(s[nt][3] - mn1);
        rs0 += s[nt][0] + s[nt][1];
        rs1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * al0 + rs0;
    l1 = l1 * al1 + rs1;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        o[dt][0] *= al0;
        o[dt][1] *= al0;
        o[dt][2] *= al1;
        o[dt][3] *= al1;
    }
#pragma unroll
    for (int kq = 0; kq < BN / 16; kq++) {
        uint32_t pa[4];
        pack_a(pa, s[2 * kq], s[2 * kq + 1]);
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt += 2) {
            uint32_t vb[4];
            cu_ldsm_x4_t(vb, Vs + (kq * 16 + (mat & 1) * 8 + rr) * LD + (dt + (mat >> 1)) * 8);
            cu_mma16816(o[dt], pa, vb[0], vb[1]);
            cu_mma16816(o[dt + 1], pa, vb[2], vb[3]);
        }
    }
}

/* Query tile qt0 of head h. KB: k and v come as bf16 copies, loaded with cp.async two tiles
 * deep so the next tile's loads overlap this tile's math; else f32 tiles converted into
 * shared memory. */
template <int HD, bool KB>
static __device__ __forceinline__ void flash_fwd_tile(const FlashArgs &a, const int qt0,
                                                      const int h) {
    constexpr int BM = 64, BN = 64, LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw), *Ks = Qs + BM * LD, *Vs = Ks + BN * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, cq = lane & 3;
    const int hk = h / (a.Hq / a.Hkv);
    const int qdim = a.Hq * HD, kvdim = a.Hkv * HD;
    const int q_last = min(qt0 + BM, a.T) - 1;
    const int nk = a.pos0 + q_last + 1;
    const int r0 = warp * 16 + g; /* this thread's rows r0 and r0 + 8 of the tile */
    const int qpos0 = a.pos0 + qt0 + r0, qpos1 = qpos0 + 8;
    const int warp_last_pos = a.pos0 + qt0 + warp * 16 + 15;

    if (KB) { /* the first K/V tile goes out before the Q tile's loads */
        cp_tile<HD>(Ks, a.kb + hk * HD, kvdim, 0, nk);
        cp_tile<HD>(Vs, a.vb + hk * HD, kvdim, 0, nk);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    load_tile<HD, BM>(Qs, a.q + h * HD, qdim, qt0, a.T);
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        qf[kk][0] = lds32(Qs + r0 * LD + kk * 16 + 2 * cq);
        qf[kk][1] = lds32(Qs + (r0 + 8) * LD + kk * 16 + 2 * cq);
        qf[kk][2] = lds32(Qs + r0 * LD + kk * 16 + 8 + 2 * cq);
        qf[kk][3] = lds32(Qs + (r0 + 8) * LD + kk * 16 + 8 + 2 * cq);
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int kt0 = 0, t = 0; kt0 < nk; kt0 += BN, t++) {
        const bf16 *kt = Ks, *vt = Vs;
        if (KB) { /* tile t in buffer t % 2; tile t + 1 into the other one */
            bf16 *nxt = Ks + ((t + 1) & 1) * 2 * BN * LD;
            if (kt0 + BN < nk) {
                cp_tile<HD>(nxt, a.kb + hk * HD, kvdim, kt0 + BN, nk);
                cp_tile<HD>(nxt + BN * LD, a.vb + hk * HD, kvdim, kt0 + BN, nk);
            }
            asm volatile("cp.async.commit_group;\n" ::: "memory");
            asm volatile("cp.async.wait_group 1;\n" ::: "memory");
            __syncthreads();
            kt = Ks + (t & 1) * 2 * BN * LD;
            vt = kt + BN * LD;
        } else {
            __syncthreads(); /* every warp is done with the previous K/V tile */
            load_tile<HD, BN>(Ks, a.k + hk * HD, kvdim, kt0, nk);
            load_tile<HD, BN>(Vs, a.v + hk * HD, kvdim, kt0, nk);
            __syncthreads();
        }
        /* tiles wholly in this warp's future are skipped */
        if (warp_last_pos >= kt0)
            flash_step<HD>(a, kt, vt, kt0, kt0 + BN - 1 > a.pos0 + qt0 + warp * 16, qpos0, qpos1,
                           qf, o, m0, m1, l0, l1);
        if (KB) __syncthreads(); /* the buffer is refilled two tiles on */
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    const int row0 = qt0 + r0, row1 = row0 + 8;
    float dp0 = 0.0f, dp1 = 0.0f;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        const int d = h * HD + dt * 8 + 2 * cq;
        const float y0 = o[dt][0] * inv0, y1 = o[dt][1] * inv0;
        const float y2 = o[dt][2] * inv1, y3 = o[dt][3] * inv1;
        if (row0 < a.T) {
            const size_t off = (size_t)row0 * qdim + d;
            if (a.out) *reinterpret_cast<float2 *>(a.out + off) = make_float2(y0, y1);
            if (a.sh) *reinterpret_cast<uint32_t *>(a.sh + off) = cu_pack_bf16(y0, y1);
            if (a.dsum) {
                float2 go = *reinterpret_cast<const float2 *>(a.dout + off);
                dp0 += bf16_round(go.x) * y0 + bf16_round(go.y) * y1;
            }
        }
        if (row1 < a.T) {
            const size_t off = (size_t)row1 * qdim + d;
            if (a.out) *reinterpret_cast<float2 *>(a.out + off) = make_float2(y2, y3);
            if (a.sh) *reinterpret_cast<uint32_t *>(a.sh + off) = cu_pack_bf16(y2, y3);
            if (a.dsum) {
                float2 go = *reinterpret_cast<const float2 *>(a.dout + off);
                dp1 += bf16_round(go.x) * y2 + bf16_round(go.y) * y3;
            }
        }
    }
    if (a.dsum) {
        dp0 += __shfl_xor_sync(0xffffffffu, dp0, 1);
        dp0 += __shfl_xor_sync(0xffffffffu, dp0, 2);
        dp1 += __shfl_xor_sync(0xffffffffu, dp1, 1);
        dp1 += __shfl_xor_sync(0xffffffffu, dp1, 2);
    }
    if (cq == 0) {
        if (row0 < a.T) {
            if (a.lse) a.lse[(size_t)h * a.T + row0] = m0 + log2f(l0);
            if (a.dsum) a.dsum[(size_t)h * a.T + row0] = dp0;
        }
        if (row1 < a.T) {
            if (a.lse) a.lse[(size_t)h * a.T + row1] = m1 + log2f(l1);
            if (a.dsum) a.dsum[(size_t)h * a.T + row1] = dp1;
        }
    }
}

template <int HD, bool KB>
static __global__ void __launch_bounds__(128) flash_fwd_kernel(const FlashArgs a) {
    cu_dep_wait();
    flash_fwd_tile<HD, KB>(a, blockIdx.x * 64, blockIdx.y);
}

/* Forwards of a batch of segments (positions from 0 in each): segment s's buffers start
 * r0 rows past the first one's; each keeps its log-sum-exp rows. */
struct FlashBatchArgs {
    float *out;
    bf16 *sh;
    const float *q, *k, *v;
    const bf16 *kb, *vb;
    int Hq, Hkv, n;
    float scale_log2;
    cu_att_seg seg[CU_ATT_BATCH];
};

/* This block's segment (blockIdx.x / Hq), head h (blockIdx.x % Hq) and tile (rows from
 * t0 = 64 i), false past the segment's rows. Tiles go out longest first, so the causal
 * tiles with the most work do not start last: i = blockIdx.y in the backward (key tile i
 * meets the query tiles from i on), the last tile first in the forward (rev). qo and ko:
 * element offsets of the segment's first row in buffers of Hq and Hkv heads. */
template <int HD>
static __device__ __forceinline__ bool seg_tile(const cu_att_seg *seg, int Hq, int Hkv, bool rev,
                                                cu_att_seg &sg, int &t0, int &h, size_t &qo,
                                                size_t &ko) {
    sg = seg[blockIdx.x / Hq];
    h = (int)(blockIdx.x % Hq);
    t0 = (int)(rev ? gridDim.y - 1 - blockIdx.y : blockIdx.y) * 64;
    qo = (size_t)sg.r0 * Hq * HD;
    ko = (size_t)sg.r0 * Hkv * HD;
    return t0 < sg.T;
}

/* Grid (Hq x segments, query tiles of the longest segment): see seg_tile. */
template <int HD, bool KB>
static __global__ void __launch_bounds__(128) flash_fwd_batch_kernel(const FlashBatchArgs b) {
    cu_dep_wait();
    cu_att_seg sg;
    int qt0, h;
    size_t qo, ko;
    if (!seg_tile<HD>(b.seg, b.Hq, b.Hkv, true, sg, qt0, h, qo, ko)) return;
    FlashArgs a;
    a.out = b.out + qo;
    a.sh = b.sh ? b.sh + qo : nullptr;
    a.q = b.q + qo;
    a.k = b.k + ko;
    a.v = b.v + ko;
    a.kb = b.kb ? b.kb + ko : nullptr;
    a.vb = b.vb ? b.vb + ko : nullptr;
    a.dout = nullptr;
    a.lse = sg.lse;
    a.dsum = nullptr;
    a.T = sg.T;
    a.pos0 = 0;
    a.Hq = b.Hq;
    a.Hkv = b.Hkv;
    a.scale_log2 = b.scale_log2;
    flash_fwd_tile<HD, KB>(a, qt0, h);
}

/* ---- row (decode) forward ---- */

struct RowArgs {
    float *out;         /* [T, Hq*hd] */
    const float *q;     /* [T, Hq*hd] */
    const float *k, *v; /* [pos0 + T, Hkv*hd] */
    float *part;        /* [T, Hq, nsplit, hd + 2] split partials (nsplit > 1) */
    int *cnt;           /* [T, Hq] finished splits, zero between launches */
    int T, pos0, Hq, Hkv, hd, nsplit;
    int pre_rows; /* rows < pre_rows (<= pos0) of k and v are complete (cu_unwritten): the
                   * decode attention reads them before its wait (0: none) */
    float scale;
    /* rows of different sequences (attention_rows; knew NULL: one sequence): row t's cache
     * starts roff[t] floats past k and v, its query is at position rpos[t], its rows
     * < rpre[t] may be read before the wait, and its new key and value, rows t of knew and
     * vnew, are read from there and stored in the cache by the cluster of head 0 */
    const float *knew, *vnew;
    long long roff[DEC_ROWS];
    int rpos[DEC_ROWS], rpre[DEC_ROWS];
};

/* Block-wide reduction over 128 threads (sum or max); every thread gets the result. */
static __device__ __forceinline__ float row_reduce(float v, float *red, bool is_max) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < ROW_THREADS / 32; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

/* HD > 0: head_dim fixed at compile time, so the score and value loops unroll and issue
 * all their loads before using any; HD == 0: any head_dim. */
template <int HD>
static __global__ void __launch_bounds__(ROW_THREADS) row_fwd_kernel(const RowArgs a) {
    extern __shared__ float rsm[];
    const int hd = HD > 0 ? HD : a.hd, tid = threadIdx.x;
    float *qs = rsm, *ps = qs + hd, *ored = ps + ROW_CHUNK, *red = ored + 2 * ROW_THREADS;
    __shared__ int last;
    const int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    const int hk = h / (a.Hq / a.Hkv);
    const int qdim = a.Hq * hd, kvdim = a.Hkv * hd;
    const int nk = a.pos0 + t + 1;
    const int per = (nk + a.nsplit - 1) / a.nsplit;
    const int j0 = sp * per, j1 = min(nk, j0 + per);
    const float *kb = a.k + hk * hd, *vb = a.v + hk * hd;
    if ((hd & 3) == 0 && cu_aligned16(a.k) && cu_aligned16(a.v)) {
        /* the split's first key and value rows, into L2 while the previous kernel ends */
        const int j = j0 + (tid >> 1);
        if (j < min(j1, j0 + ROW_THREADS / 2))
            cu_prefetch_l2((tid & 1 ? vb : kb) + (size_t)j * kvdim, (unsigned)hd * sizeof(float));
    }
    cu_dep_wait();
    /* value-phase roles: G groups of hd threads (hd <= 128), or one group with two dims
     * per thread (hd <= 256) */
    const int G = hd <= ROW_THREADS ? ROW_THREADS / hd : 1;
    const int grp = hd <= ROW_THREADS ? tid / hd : 0, d = hd <= ROW_THREADS ? tid % hd : tid;
    const bool vec = (hd & 3) == 0 && cu_aligned16(a.k) && cu_aligned16(a.q);

    for (int i = tid; i < hd; i += ROW_THREADS) qs[i] = a.q[(size_t)t * qdim + (size_t)h * hd + i];
    __syncthreads();
    float m_run = -INFINITY, l_run = 0.0f, o0 = 0.0f, o1 = 0.0f;
    for (int c0 = j0; c0 < j1; c0 += ROW_CHUNK) {
        const int cn = min(ROW_CHUNK, j1 - c0);
        float cmax = -INFINITY;
        for (int jj = tid; jj < cn; jj += ROW_THREADS) {
            const float *kr = kb + (size_t)(c0 + jj) * kvdim;
            float dot = 0.0f;
            if (vec) {
#pragma unroll
                for (int e = 0; e < hd; e += 4) {
                    float4 kv4 = __ldg(reinterpret_cast<const float4 *>(kr + e));
                    dot = fmaf(qs[e], kv4.x, dot);
                    dot = fmaf(qs[e + 1], kv4.y, dot);
                    dot = fmaf(qs[e + 2], kv4.z, dot);
                    dot = fmaf(qs[e + 3], kv4.w, dot);
                }
            } else {
                for (int e = 0; e < hd; e++) dot = fmaf(qs[e], kr[e], dot);
            }
            float sc = dot * a.scale;
            ps[jj] = sc;
            cmax = fmaxf(cmax, sc);
        }
        cmax = row_reduce(cmax, red, true);
        const float mn = fmaxf(m_run, cmax), alpha = expf(m_run - mn);
        float lsum = 0.0f;
        for (int jj = tid; jj < cn; jj += ROW_THREADS) {
            float p = expf(ps[jj] - mn);
            ps[jj] = p;
            lsum += p;
        }
        lsum = row_reduce(lsum, red, false); /* its barriers also publish ps */
        l_run = l_run * alpha + lsum;
        m_run = mn;
        o0 *= alpha;
        o1 *= alpha;
        if (grp < G) {
#pragma unroll 8
            for (int jj = grp; jj < cn; jj += G) {
                const float *vr = vb + (size_t)(c0 + jj) * kvdim;
                o0 = fmaf(ps[jj], vr[d], o0);
                if (hd > ROW_THREADS && d + ROW_THREADS < hd) o1 = fmaf(ps[jj], vr[d + ROW_THREADS], o1);
            }
        }
        __syncthreads(); /* ps is rewritten by the next chunk */
    }
    /* sum the groups' partial outputs */
    ored[tid] = o0;
    ored[ROW_THREADS + tid] = o1;
    __syncthreads();
    float *dst;
    const bool owner = hd <= ROW_THREADS ? tid < hd : true;
    float oa = 0.0f, ob = 0.0f;
    if (owner) {
        if (hd <= ROW_THREADS) {
            for (int gi = 0; gi < G; gi++) oa += ored[gi * hd + tid];
        } else {
            oa = o0;
            ob = o1;
        }
    }
    if (a.nsplit == 1) {
        dst = a.out + (size_t)t * qdim + (size_t)h * hd;
        if (owner) {
            dst[d] = oa / l_run;
            if (hd > ROW_THREADS && d + ROW_THREADS < hd) dst[d + ROW_THREADS] = ob / l_run;
        }
        return;
    }
    float *pp = a.part + (((size_t)t * a.Hq + h) * a.nsplit + sp) * (hd + 2);
    if (tid == 0) {
        pp[0] = m_run;
        pp[1] = l_run;
    }
    if (owner) {
        pp[2 + d] = oa;
        if (hd > ROW_THREADS && d + ROW_THREADS < hd) pp[2 + d + ROW_THREADS] = ob;
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int ticket = atomicAdd(a.cnt + (size_t)t * a.Hq + h, 1);
        last = ticket == a.nsplit - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    /* merge the splits: warp 0 turns the (max, sum) pairs into weights, then every
     * output element sums its ROW_MAX_SPLIT partials with all loads in flight at once */
    const float *p0 = a.part + ((size_t)t * a.Hq + h) * a.nsplit * (hd + 2);
    float *wsm = ps; /* [ROW_MAX_SPLIT] weights (the score buffer is free by now) */
    if (tid < 32) {
        float ms = -INFINITY, ls = 0.0f;
        if (tid < a.nsplit) {
            ms = __ldcg(p0 + (size_t)tid * (hd + 2));
            ls = __ldcg(p0 + (size_t)tid * (hd + 2) + 1);
        }
        const float M = cu_warp_max(ms);
        const float wgt = tid < a.nsplit ? expf(ms - M) : 0.0f;
        const float L = cu_warp_sum(ls * wgt);
        wsm[tid] = wgt / L;
    }
    __syncthreads();
    dst = a.out + (size_t)t * qdim + (size_t)h * hd;
    for (int e = tid; e < hd; e += ROW_THREADS) {
        float acc = 0.0f;
#pragma unroll
        for (int s = 0; s < ROW_MAX_SPLIT; s++)
            if (s < a.nsplit) acc += __ldcg(p0 + (size_t)s * (hd + 2) + 2 + e) * wsm[s];
        dst[e] = acc;
    }
    if (tid == 0) a.cnt[(size_t)t * a.Hq + h] = 0;
}

/* ---- decode forward: a cluster per query row and head ---- */

/* Lane l holds elements [l * PL, (l + 1) * PL) of a head's row, PL = HD / 32 (2 or 4:
 * one 8- or 16-byte load). */
template <int HD> struct DecVec {
    static constexpr int PL = HD / 32;
    static_assert(PL == 2 || PL == 4, "head_dim 64 or 128");
    float v[PL];
    __device__ __forceinline__ void load(const float *p) {
        if constexpr (PL == 2) {
            const float2 x = __ldg(reinterpret_cast<const float2 *>(p));
            v[0] = x.x;
            v[1] = x.y;
        } else {
            const float4 x = __ldg(reinterpret_cast<const float4 *>(p));
            v[0] = x.x;
            v[1] = x.y;
            v[2] = x.z;
            v[3] = x.w;
        }
    }
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < PL; i++) v[i] = 0.0f;
    }
    __device__ __forceinline__ float dot(const DecVec &o) const {
        float d = v[0] * o.v[0];
#pragma unroll
        for (int i = 1; i < PL; i++) d = fmaf(v[i], o.v[i], d);
        return d;
    }
    __device__ __forceinline__ void axpy(float p, const DecVec &x) {
#pragma unroll
        for (int i = 0; i < PL; i++) v[i] = fmaf(p, x.v[i], v[i]);
    }
    __device__ __forceinline__ void scale(float s) {
#pragma unroll
        for (int i = 0; i < PL; i++) v[i] *= s;
    }
};

/* Grid (Hq, T, DEC_SPLIT), clusters of DEC_SPLIT blocks along z: block z of a cluster
 * takes the z-th eighth of the row's keys; warp w of a block takes batches of KB
 * consecutive keys (w, w + 8, ... batches in), loading all KB key and value rows before
 * using any, with an online softmax in f32 (up to 64 * KB keys, 1,024 for head_dim 64, are
 * one batch per warp). The 8 warps of the 8 blocks leave 64 (max, sum, output) triples in
 * the cluster's first block's shared memory, which weighs them and writes the row. Needs
 * 16-byte aligned q/k/v rows (DecVec loads). With pre_rows (the host saw no write to the
 * rows before pre_rows that is not known complete) a warp's first batch of those rows is
 * loaded before the dependency wait, so their latency overlaps the q/k/v GEMV. */
template <int HD>
static __global__ void __cluster_dims__(1, 1, DEC_SPLIT) __launch_bounds__(DEC_THREADS)
    dec_fwd_kernel(const RowArgs a) {
    constexpr int PL = HD / 32, KB = HD == 64 ? 16 : 8, NW = DEC_THREADS / 32, NP = NW * DEC_SPLIT;
    static_assert(NP == 64, "the merge gives each lane of warp 0 two (block, warp) partials");
    __shared__ float so[NP][HD], sm[NP], sl[NP], wsm[NP]; /* the first block's: every partial */
    cg::cluster_group cluster = cg::this_cluster();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.x, t = blockIdx.y, sp = (int)cluster.block_rank();
    const int hk = h / (a.Hq / a.Hkv), kvdim = a.Hkv * HD;
    const bool rows = a.knew != nullptr;
    const int pos = rows ? a.rpos[t] : a.pos0 + t, pre_rows = rows ? a.rpre[t] : a.pre_rows;
    const int nk = pos + 1, per = (nk + DEC_SPLIT - 1) / DEC_SPLIT;
    const int j0 = sp * per, j1 = min(nk, j0 + per);
    const long long off = rows ? a.roff[t] : 0;
    const float *kb = a.k + off + hk * HD + lane * PL, *vb = a.v + off + hk * HD + lane * PL;
    /* the newest key and value: row pos of the cache, or row t of knew / vnew */
    const float *kn = rows ? a.knew + (size_t)t * kvdim + hk * HD + lane * PL
                           : kb + (size_t)pos * kvdim;
    const float *vn = rows ? a.vnew + (size_t)t * kvdim + hk * HD + lane * PL
                           : vb + (size_t)pos * kvdim;
    const int jfirst = j0 + warp * KB;
    DecVec<HD> kr[KB], vr[KB];
    /* pre_rows: the warp's first batch of older keys and values straight into registers;
     * the rest of the warp's rows into L2, while the previous kernel ends */
    if (pre_rows > 0 && jfirst < j1) {
#pragma unroll
        for (int i = 0; i < KB; i++) {
            const int j = min(jfirst + i, j1 - 1);
            if (j < pre_rows) {
                kr[i].load(kb + (size_t)j * kvdim);
                vr[i].load(vb + (size_t)j * kvdim);
            }
        }
    }
    /* key r: row r % KB of batch r / KB */
    for (int r = (pre_rows > 0 ? KB : 0) + (lane >> 1);; r += 16) {
        const int j = jfirst + (r / KB) * NW * KB + r % KB;
        if (j >= j1) break;
        cu_prefetch_l2((lane & 1 ? a.v : a.k) + off + (size_t)j * kvdim + (size_t)hk * HD,
                       (unsigned)(HD * sizeof(float)));
    }
    cu_dep_wait();
    if (rows && h == 0 && sp == 0) /* the new key and value into the row's cache */
        for (int i = threadIdx.x; i < 2 * kvdim; i += DEC_THREADS) {
            const bool isv = i >= kvdim;
            const int e = isv ? i - kvdim : i;
            float *cache = const_cast<float *>(isv ? a.v : a.k) + off + (size_t)pos * kvdim;
            cache[e] = (isv ? a.vnew : a.knew)[(size_t)t * kvdim + e];
        }
    DecVec<HD> q, o;
    q.load(a.q + ((size_t)t * a.Hq + h) * HD + lane * PL);
    o.zero();
    float m = -INFINITY, l = 0.0f;
    for (int jb = jfirst; jb < j1; jb += NW * KB) {
        const bool pre = pre_rows > 0 && jb == jfirst; /* rows < pre_rows already loaded */
#pragma unroll
        for (int i = 0; i < KB; i++) { /* past the end: the last key again, weighed 0 below */
            const int j = min(jb + i, j1 - 1);
            if (!pre || j >= pre_rows) {
                kr[i].load(j == pos ? kn : kb + (size_t)j * kvdim);
                vr[i].load(j == pos ? vn : vb + (size_t)j * kvdim);
            }
        }
        /* the KB warp sums interleaved and without branches, so their shuffles overlap */
        float sc[KB], bm = -INFINITY;
#pragma unroll
        for (int i = 0; i < KB; i++) sc[i] = q.dot(kr[i]);
#pragma unroll
        for (int s = 16; s > 0; s >>= 1)
#pragma unroll
            for (int i = 0; i < KB; i++) sc[i] += __shfl_xor_sync(0xffffffffu, sc[i], s);
#pragma unroll
        for (int i = 0; i < KB; i++) {
            sc[i] = jb + i < j1 ? sc[i] * a.scale : -INFINITY;
            bm = fmaxf(bm, sc[i]);
        }
        const float mn = fmaxf(m, bm), alpha = expf(m - mn); /* bm is finite: key jb exists */
        l *= alpha;
        o.scale(alpha);
#pragma unroll
        for (int i = 0; i < KB; i++) {
            const float p = expf(sc[i] - mn);
            l += p;
            o.axpy(p, vr[i]);
        }
        m = mn;
    }
    /* partial p = (block sp, warp): stored straight into the first block's shared memory,
     * so the other blocks are done at the barrier */
    const int p = sp * NW + warp;
    float *ro = cluster.map_shared_rank(&so[0][0], 0), *rm = cluster.map_shared_rank(sm, 0);
    float *rl = cluster.map_shared_rank(sl, 0);
#pragma unroll
    for (int i = 0; i < PL; i++) ro[p * HD + lane * PL + i] = o.v[i];
    if (lane == 0) {
        rm[p] = m;
        rl[p] = l;
    }
    cluster.sync(); /* every partial is in the first block */
    if (sp != 0) return;
    if (warp == 0) { /* lane p weighs partials p and p + 32 */
        const float m0 = sm[lane], m1 = sm[lane + 32];
        const float M = cu_warp_max(fmaxf(m0, m1));
        const float w0 = m0 == -INFINITY ? 0.0f : expf(m0 - M);
        const float w1 = m1 == -INFINITY ? 0.0f : expf(m1 - M);
        const float L = cu_warp_sum(fmaf(sl[lane], w0, sl[lane + 32] * w1));
        wsm[lane] = w0 / L;
        wsm[lane + 32] = w1 / L;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < HD; d += DEC_THREADS) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < NP; i++) acc = fmaf(so[i][d], wsm[i], acc);
        a.out[((size_t)t * a.Hq + h) * HD + d] = acc;
    }
}

/* ---- flash backward ---- */

struct BwdArgs {
    float *dq;              /* [T, Hq*HD], zeroed (dQ is added atomically) */
    float *dk, *dv;         /* [T, Hkv*HD], zeroed (the query heads of a group add to them) */
    const float *k, *v;     /* as the forward */
    const bf16 *qb, *dob;   /* bf16 copies of q and dout [T, Hq*HD] */
    const float *lse;       /* [Hq, T] */
    const float *dsum;      /* [Hq, ldd] */
    int T, Hq, Hkv, ldd;
    float scale, scale_log2;
};

/* A batch of segments for flash_bwd_batch_kernel: segment s's buffers start r0 rows past
 * the first one's, its D at dsum + r0 (rows of ldd, all segments' rows). */
struct BwdBatchArgs {
    float *dq, *dk, *dv;
    const float *k, *v, *dsum;
    const bf16 *qb, *dob;
    int Hq, Hkv, ldd, n;
    float scale, scale_log2;
    cu_att_seg seg[CU_ATT_BATCH];
};

/* K and V tiles, two buffers each of the Q and dO tiles, dS^T, and the rows' LSE and D. */
template <int HD, int BMQ> constexpr int bwd_smem() {
    return (2 * 64 * (HD + 8) + 4 * BMQ * (HD + 8) + 64 * (BMQ + 8)) * 2 + 2 * BMQ * 4;
}

/* Blocks of the backward an SM keeps resident: at head size 64 its registers are capped so
 * that three fit (with their shared memory); larger heads take what they need. */
template <int HD> constexpr int bwd_min_blocks() { return HD <= 64 ? 3 : 1; }

/* Starts the copies of query tile i0's Q and dO rows of head h into buffer pair (qs, ds). */
template <int HD, int BMQ>
static __device__ __forceinline__ void bwd_fetch(const BwdArgs &a, bf16 *qs, bf16 *ds, int h,
                                                 int i0) {
    const int qdim = a.Hq * HD;
    cp_tile<HD, BMQ>(qs, a.qb + h * HD, qdim, i0, a.T);
    cp_tile<HD, BMQ>(ds, a.dob + h * HD, qdim, i0, a.T);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* The backward of key/value tile n0 of head h: dK and dV of its 64 keys, and their share
 * of dQ added atomically. */
template <int HD, int BMQ>
static __device__ __forceinline__ void flash_bwd_tile(const BwdArgs &a, const int n0,
                                                      const int h) {
    constexpr int BN = 64, LD = HD + 8, LDS = BMQ + 8;
    constexpr int RB = BMQ / 16, CW = 4 / RB, NCOL = HD / CW;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem_raw), *Vs = Ks + BN * LD, *Qb = Vs + BN * LD;
    bf16 *dOb = Qb + 2 * BMQ * LD, *dSs = dOb + 2 * BMQ * LD;
    float *lse_s = reinterpret_cast<float *>(dSs + BN * LDS), *D_s = lse_s + BMQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, cq = lane & 3;
    const int mat = lane >> 3, rr = lane & 7;
    const int hk = h / (a.Hq / a.Hkv);
    const int qdim = a.Hq * HD, kvdim = a.Hkv * HD;
    const int kr0 = warp * 16 + g; /* this thread's key rows kr0 and kr0 + 8 of the tile */
    const int key0 = n0 + kr0, key1 = key0 + 8;
    const int rb = warp % RB, cb = warp / RB;

    const int i_first = (n0 / BMQ) * BMQ;
    bwd_fetch<HD, BMQ>(a, Qb, dOb, h, i_first);
    load_tile<HD, BN>(Ks, a.k + hk * HD, kvdim, n0, a.T);
    load_tile<HD, BN>(Vs, a.v + hk * HD, kvdim, n0, a.T);
    float dK[HD / 8][4], dV[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[i][e] = dV[i][e] = 0.0f;

    {
        for (int i0 = i_first, it = 0; i0 < a.T; i0 += BMQ, it++) {
            /* every warp is past the last tile: its buffers, dS^T, LSE and D are free */
            __syncthreads();
            const bf16 *Qs = Qb + (it & 1) * BMQ * LD, *dOs = dOb + (it & 1) * BMQ * LD;
            const bool more = i0 + BMQ < a.T;
            if (more) {
                const int nb = ((it + 1) & 1) * BMQ * LD;
                bwd_fetch<HD, BMQ>(a, Qb + nb, dOb + nb, h, i0 + BMQ);
            }
            for (int i = threadIdx.x; i < BMQ; i += 128) {
                const int row = i0 + i;
                lse_s[i] = row < a.T ? a.lse[(size_t)h * a.T + row] : INFINITY;
                D_s[i] = row < a.T ? a.dsum[(size_t)h * a.ldd + row] : 0.0f;
            }
            /* this tile's copies landed (the next tile's may still be in flight) */
            if (more) asm volatile("cp.async.wait_group 1;\n" ::: "memory");
            else asm volatile("cp.async.wait_group 0;\n" ::: "memory");
            __syncthreads();
            /* S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys */
            float st[BMQ / 8][4], dpt[BMQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BMQ / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                /* A fragments of this warp's 16 keys (rows; k halves in matrices 2, 3) */
                uint32_t ka[4], va[4];
                const int ao = (warp * 16 + (mat & 1) * 8 + rr) * LD + kk * 16 + (mat >> 1) * 8;
                cu_ldsm_x4(ka, Ks + ao);
                cu_ldsm_x4(va, Vs + ao);
#pragma unroll
                for (int nt = 0; nt < BMQ / 8; nt += 2) {
                    /* B fragments of query tiles nt and nt + 1 */
                    const int bo = ((nt + (mat >> 1)) * 8 + rr) * LD + kk * 16 + (mat & 1) * 8;
                    uint32_t qb4[4], ob4[4];
                    cu_ldsm_x4(qb4, Qs + bo);
                    cu_ldsm_x4(ob4, dOs + bo);
                    cu_mma16816(st[nt], ka, qb4[0], qb4[1]);
                    cu_mma16816(st[nt + 1], ka, qb4[2], qb4[3]);
                    cu_mma16816(dpt[nt], va, ob4[0], ob4[1]);
                    cu_mma16816(dpt[nt + 1], va, ob4[2], ob4[3]);
                }
            }
            /* P^T = exp2(S^T scale log2e - lse) on the causal part; dS^T = P^T (dP^T - D) */
#pragma unroll
            for (int nt = 0; nt < BMQ / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int ql = nt * 8 + 2 * cq + (e & 1);
                    const int key = e < 2 ? key0 : key1;
                    float p = key <= i0 + ql ? exp2f(st[nt][e] * a.scale_log2 - lse_s[ql]) : 0.0f;
                    st[nt][e] = p;
                    dpt[nt][e] = p * (dpt[nt][e] - D_s[ql]);
                }
            /* dV += P^T dO; dK += dS^T Q (scaled at the end) */
#pragma unroll
            for (int kq = 0; kq < BMQ / 16; kq++) {
                uint32_t pa[4], da[4];
                pack_a(pa, st[2 * kq], st[2 * kq + 1]);
                pack_a(da, dpt[2 * kq], dpt[2 * kq + 1]);
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt += 2) {
                    uint32_t b[4];
                    const int row = kq * 16 + (mat & 1) * 8 + rr, col = (dt + (mat >> 1)) * 8;
                    cu_ldsm_x4_t(b, dOs + row * LD + col);
                    cu_mma16816(dV[dt], pa, b[0], b[1]);
                    cu_mma16816(dV[dt + 1], pa, b[2], b[3]);
                    cu_ldsm_x4_t(b, Qs + row * LD + col);
                    cu_mma16816(dK[dt], da, b[0], b[1]);
                    cu_mma16816(dK[dt + 1], da, b[2], b[3]);
                }
            }
            /* dS^T to shared memory for dQ */
#pragma unroll
            for (int nt = 0; nt < BMQ / 8; nt++) {
                *reinterpret_cast<uint32_t *>(dSs + kr0 * LDS + nt * 8 + 2 * cq) =
                    cu_pack_bf16(dpt[nt][0], dpt[nt][1]);
                *reinterpret_cast<uint32_t *>(dSs + (kr0 + 8) * LDS + nt * 8 + 2 * cq) =
                    cu_pack_bf16(dpt[nt][2], dpt[nt][3]);
            }
            __syncthreads();
            /* dQ[rows rb*16.., cols cb*NCOL..] = dS K, added atomically */
            float dqa[NCOL / 8][4];
#pragma unroll
            for (int i = 0; i < NCOL / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t af[4];
                cu_ldsm_x4_t(af, dSs + (kk * 16 + (mat >> 1) * 8 + rr) * LDS + rb * 16 +
                                     (mat & 1) * 8);
#pragma unroll
                for (int dt = 0; dt < NCOL / 8; dt += 2) {
                    uint32_t b[4];
                    cu_ldsm_x4_t(b, Ks + (kk * 16 + (mat & 1) * 8 + rr) * LD + cb * NCOL +
                                     (dt + (mat >> 1)) * 8);
                    cu_mma16816(dqa[dt], af, b[0], b[1]);
                    cu_mma16816(dqa[dt + 1], af, b[2], b[3]);
                }
            }
            const int qr0 = i0 + rb * 16 + g, qr1 = qr0 + 8;
#pragma unroll
            for (int dt = 0; dt < NCOL / 8; dt++) {
                const int col = h * HD + cb * NCOL + dt * 8 + 2 * cq;
                if (qr0 < a.T)
                    atomicAdd(reinterpret_cast<float2 *>(a.dq + (size_t)qr0 * qdim + col),
                              make_float2(dqa[dt][0] * a.scale, dqa[dt][1] * a.scale));
                if (qr1 < a.T)
                    atomicAdd(reinterpret_cast<float2 *>(a.dq + (size_t)qr1 * qdim + col),
                              make_float2(dqa[dt][2] * a.scale, dqa[dt][3] * a.scale));
            }
        }
    }
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        const int col = hk * HD + dt * 8 + 2 * cq;
        if (key0 < a.T) {
            const size_t off = (size_t)key0 * kvdim + col;
            atomicAdd(reinterpret_cast<float2 *>(a.dk + off),
                      make_float2(dK[dt][0] * a.scale, dK[dt][1] * a.scale));
            atomicAdd(reinterpret_cast<float2 *>(a.dv + off), make_float2(dV[dt][0], dV[dt][1]));
        }
        if (key1 < a.T) {
            const size_t off = (size_t)key1 * kvdim + col;
            atomicAdd(reinterpret_cast<float2 *>(a.dk + off),
                      make_float2(dK[dt][2] * a.scale, dK[dt][3] * a.scale));
            atomicAdd(reinterpret_cast<float2 *>(a.dv + off), make_float2(dV[dt][2], dV[dt][3]));
        }
    }
}

template <int HD, int BMQ>
static __global__ void __launch_bounds__(128, bwd_min_blocks<HD>())
    flash_bwd_kernel(const BwdArgs a) {
    cu_dep_wait();
    flash_bwd_tile<HD, BMQ>(a, blockIdx.x * 64, blockIdx.y);
}

/* Grid (Hq x segments, key tiles of the longest segment): see seg_tile. */
template <int HD, int BMQ>
static __global__ void __launch_bounds__(128, bwd_min_blocks<HD>())
    flash_bwd_batch_kernel(const BwdBatchArgs b) {
    cu_dep_wait();
    cu_att_seg sg;
    int n0, h;
    size_t qo, ko;
    if (!seg_tile<HD>(b.seg, b.Hq, b.Hkv, false, sg, n0, h, qo, ko)) return;
    BwdArgs a;
    a.dq = b.dq + qo;
    a.dk = b.dk + ko;
    a.dv = b.dv + ko;
    a.k = b.k + ko;
    a.v = b.v + ko;
    a.qb = b.qb + qo;
    a.dob = b.dob + qo;
    a.lse = sg.lse;
    a.dsum = b.dsum + sg.r0;
    a.T = sg.T;
    a.Hq = b.Hq;
    a.Hkv = b.Hkv;
    a.ldd = b.ldd;
    a.scale = b.scale;
    a.scale_log2 = b.scale_log2;
    flash_bwd_tile<HD, BMQ>(a, n0, h);
}

/* ---- plain backward for other head sizes ---- */

struct RowBwdArgs {
    float *dq;              /* [T, Hq*hd] (written) */
    float *dk, *dv;         /* [T, Hkv*hd] (zeroed; added atomically) */
    const float *q, *k, *v, *dout;
    int T, Hq, Hkv, hd;
    float scale;
};

/* One block per (query row i, head h): p_j, dp_j = dout_i . v_j and ds_j in shared memory
 * ([2 * (i + 1)] floats), then dq_i, and dk_j, dv_j by atomics. */
static __global__ void __launch_bounds__(ROW_THREADS) row_bwd_kernel(const RowBwdArgs a) {
    cu_dep_wait();
    extern __shared__ float bsm[];
    const int i = blockIdx.x, h = blockIdx.y, hd = a.hd, tid = threadIdx.x;
    const int hk = h / (a.Hq / a.Hkv), nk = i + 1;
    const int qdim = a.Hq * hd, kvdim = a.Hkv * hd;
    float *qs = bsm, *gs = qs + hd, *ps = gs + hd, *dps = ps + nk, *red = dps + nk;
    const float *qi = a.q + (size_t)i * qdim + (size_t)h * hd;
    const float *gi = a.dout + (size_t)i * qdim + (size_t)h * hd;
    for (int e = tid; e < hd; e += ROW_THREADS) {
        qs[e] = qi[e];
        gs[e] = gi[e];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < nk; j += ROW_THREADS) {
        const float *kr = a.k + (size_t)j * kvdim + (size_t)hk * hd;
        const float *vr = a.v + (size_t)j * kvdim + (size_t)hk * hd;
        float s = 0.0f, dp = 0.0f;
        for (int e = 0; e < hd; e++) {
            s = fmaf(qs[e], kr[e], s);
            dp = fmaf(gs[e], vr[e], dp);
        }
        s *= a.scale;
        ps[j] = s;
        dps[j] = dp;
        mx = fmaxf(mx, s);
    }
    mx = row_reduce(mx, red, true);
    float sum = 0.0f;
    for (int j = tid; j < nk; j += ROW_THREADS) {
        float p = expf(ps[j] - mx);
        ps[j] = p;
        sum += p;
    }
    sum = row_reduce(sum, red, false);
    float pdp = 0.0f;
    for (int j = tid; j < nk; j += ROW_THREADS) {
        float p = ps[j] / sum;
        ps[j] = p;
        pdp += p * dps[j];
    }
    pdp = row_reduce(pdp, red, false);
    for (int j = tid; j < nk; j += ROW_THREADS) dps[j] = ps[j] * (dps[j] - pdp); /* ds_j */
    __syncthreads();
    for (int e = tid; e < hd; e += ROW_THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < nk; j++) acc = fmaf(dps[j], a.k[(size_t)j * kvdim + (size_t)hk * hd + e], acc);
        a.dq[(size_t)i * qdim + (size_t)h * hd + e] = acc * a.scale;
    }
    for (size_t idx = tid; idx < (size_t)nk * hd; idx += ROW_THREADS) {
        const int j = (int)(idx / hd), e = (int)(idx % hd);
        const size_t off = (size_t)j * kvdim + (size_t)hk * hd + e;
        atomicAdd(a.dk + off, a.scale * dps[j] * qs[e]);
        atomicAdd(a.dv + off, ps[j] * gs[e]);
    }
}

/* ---- dispatch ---- */

static bool flash_ok(int hd, int Hq, int Hkv, const void *p0, const void *p1, const void *p2,
                     const void *p3) {
    return (hd == 16 || hd == 32 || hd == 64 || hd == 128) && Hkv > 0 && Hq % Hkv == 0 &&
           cu_aligned16(p0) && cu_aligned16(p1) && cu_aligned16(p2) && cu_aligned16(p3);
}

template <int HD>
static void flash_fwd_launch(mc_cuda *c, const FlashArgs &a) {
    dim3 grid((unsigned)((a.T + 63) / 64), (unsigned)a.Hq);
    if (a.kb && a.vb)
        cu_launch(c, flash_fwd_kernel<HD, true>, grid, dim3(128), (unsigned)flash_smem_kb<HD>(), a,
                  "attention");
    else
        cu_launch(c, flash_fwd_kernel<HD, false>, grid, dim3(128), (unsigned)flash_smem<HD>(), a,
                  "attention");
}

static void flash_fwd(mc_cuda *c, int hd, const FlashArgs &a) {
    switch (hd) {
    case 16: flash_fwd_launch<16>(c, a); break;
    case 32: flash_fwd_launch<32>(c, a); break;
    case 64: flash_fwd_launch<64>(c, a); break;
    default: flash_fwd_launch<128>(c, a); break;
    }
}

/* ---- log-sum-exp rows kept from the forward for the backward ---- */

static bool span_hits(const void *p, size_t bytes, uintptr_t a, uintptr_t b) {
    const uintptr_t lo = (uintptr_t)p;
    return lo < b && a < lo + bytes;
}

static void lse_drop(mc_cuda *c, cu_lse_slot *s) {
    if (!s->valid) return;
    s->valid = false;
    c->n_lse_valid--;
}

void cu_lse_drop_range(mc_cuda *c, uintptr_t a, uintptr_t b) {
    for (int i = 0; i < CU_N_LSE; i++) {
        cu_lse_slot *s = &c->lse[i];
        if (!s->valid) continue;
        const size_t nq = (size_t)s->T * s->Hq * s->hd * sizeof(float);
        const size_t nkv = (size_t)s->T * s->Hkv * s->hd * sizeof(float);
        if (span_hits(s->q, nq, a, b) || span_hits(s->out, nq, a, b) || span_hits(s->k, nkv, a, b) ||
            span_hits(s->v, nkv, a, b))
            lse_drop(c, s);
    }
}

void cu_lse_drop_all(mc_cuda *c) {
    for (int i = 0; i < CU_N_LSE; i++) c->lse[i].valid = false;
    c->n_lse_valid = 0;
}

/* The kept entry of an attention over q, k, v of this shape, or NULL. */
static cu_lse_slot *lse_find(mc_cuda *c, const void *q, const void *k, const void *v, int T, int Hq,
                             int Hkv, int hd) {
    if (!c->n_lse_valid) return NULL;
    for (int i = 0; i < CU_N_LSE; i++) {
        cu_lse_slot *s = &c->lse[i];
        if (s->valid && s->q == q && s->k == k && s->v == v && s->T == T && s->Hq == Hq &&
            s->Hkv == Hkv && s->hd == hd)
            return s;
    }
    return NULL;
}

/* A buffer for the log-sum-exp rows of the forward writing out, entered as kept (the
 * caller has already noted the write of out); NULL when there is no memory for it (the
 * backward then runs the forward again). */
static float *lse_keep(mc_cuda *c, const void *out, const void *q, const void *k, const void *v,
                       int T, int Hq, int Hkv, int hd) {
    cu_lse_slot *s = lse_find(c, q, k, v, T, Hq, Hkv, hd);
    const size_t n = (size_t)Hq * (size_t)T;
    if (!s) { /* a free slot, one large enough first; else the least recently kept */
        cu_lse_slot *free_any = NULL;
        for (int i = 0; i < CU_N_LSE && !(s && !s->valid); i++) {
            cu_lse_slot *t = &c->lse[i];
            if (!t->valid && t->cap >= n) s = t;
            else if (!t->valid && !free_any) free_any = t;
            else if (t->valid && (!s || (s->valid && t->stamp < s->stamp))) s = t;
        }
        if (free_any && (!s || s->valid)) s = free_any;
        lse_drop(c, s);
    }
    if (s->cap < n) { /* grown with room to spare: a reallocation waits for the device */
        const size_t cap = MC_MAX(n + n / 4, (size_t)CU_LSE_MIN);
        lse_drop(c, s);
        if (s->lse) cu_free(c, s->lse);
        s->cap = 0;
        s->lse = (float *)cu_malloc(c, cap * sizeof(float), NULL);
        if (!s->lse) return NULL; /* an optimisation: go on without it */
        s->cap = cap;
    }
    s->q = q;
    s->k = k;
    s->v = v;
    s->out = out;
    s->T = T;
    s->Hq = Hq;
    s->Hkv = Hkv;
    s->hd = hd;
    s->stamp = ++c->lse_clock;
    if (!s->valid) {
        s->valid = true;
        c->n_lse_valid++;
    }
    return s->lse;
}

struct DsumArgs {
    const float *dout, *out, *q; /* [T, Hq*hd] */
    bf16 *dob, *qb;              /* bf16 copies of dout and q for the backward's tiles */
    float *dsum;                 /* [Hq, T] */
    float4 *dq, *dk, *dv;    /* zeroed: [nq4], [nkv4], [nkv4] */
    size_t nq4, nkv4;
    int T, Hq, hd;
};

/* dq, dk and dv zeroed (float4 stores over the grid), which the backward kernel adds into. */
static __device__ __forceinline__ void dsum_zero(const DsumArgs &a) {
    const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t nthr = (size_t)gridDim.x * blockDim.x;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (size_t i = tid; i < a.nq4; i += nthr) a.dq[i] = z;
    for (size_t i = tid; i < a.nkv4; i += nthr) {
        a.dk[i] = z;
        a.dv[i] = z;
    }
}

/* dsum[h, t] = rowsum(bf16(dout) * out) over head h of row t (a warp each), the D of the
 * backward, from the forward's kept output; also zeroes dq, dk and dv, which the backward
 * kernel adds into, and writes the bf16 copies of dout and q that it reads. */
static __global__ void dsum_kernel(const DsumArgs a) {
    cu_dep_wait();
    dsum_zero(a);
    const int lane = (int)(threadIdx.x & 31), rows = a.T * a.Hq;
    const int step = (int)((gridDim.x * blockDim.x) >> 5);
    for (int w = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5); w < rows; w += step) {
        const int t = w / a.Hq, h = w - t * a.Hq;
        const size_t off = ((size_t)t * a.Hq + h) * a.hd;
        float sum = 0.0f;
        for (int d = lane; d < a.hd; d += 32) {
            const bf16 g = __float2bfloat16(a.dout[off + d]);
            a.dob[off + d] = g;
            a.qb[off + d] = __float2bfloat16(a.q[off + d]);
            sum = fmaf(__bfloat162float(g), a.out[off + d], sum);
        }
        sum = cu_warp_sum(sum);
        if (lane == 0) a.dsum[(size_t)h * a.T + t] = sum;
    }
}

/* dsum_kernel with 16-byte loads: a thread dots four elements, the hd / 4 threads of a row
 * (consecutive lanes: hd is 16, 32, 64 or 128) sum them by shuffles, so a warp's loads are
 * 512 contiguous bytes of each tensor and no lane walks a row alone. The same zeroing and
 * copies. */
static __global__ void dsum4_kernel(const DsumArgs a) {
    cu_dep_wait();
    dsum_zero(a);
    const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t nthr = (size_t)gridDim.x * blockDim.x;
    const int lane = (int)(threadIdx.x & 31), sub = a.hd / 4;
    const float4 *g4 = reinterpret_cast<const float4 *>(a.dout);
    const float4 *o4 = reinterpret_cast<const float4 *>(a.out);
    const float4 *q4 = reinterpret_cast<const float4 *>(a.q);
    for (size_t base = tid - (size_t)lane; base < a.nq4; base += nthr) {
        const size_t i = base + (size_t)lane;
        float sum = 0.0f;
        if (i < a.nq4) {
            const float4 g = g4[i], o = o4[i], qv = q4[i];
            reinterpret_cast<uint2 *>(a.dob)[i] =
                make_uint2(cu_pack_bf16(g.x, g.y), cu_pack_bf16(g.z, g.w));
            reinterpret_cast<uint2 *>(a.qb)[i] =
                make_uint2(cu_pack_bf16(qv.x, qv.y), cu_pack_bf16(qv.z, qv.w));
            sum = fmaf(bf16_round(g.x), o.x, sum);
            sum = fmaf(bf16_round(g.y), o.y, sum);
            sum = fmaf(bf16_round(g.z), o.z, sum);
            sum = fmaf(bf16_round(g.w), o.w, sum);
        }
        for (int m = sub / 2; m > 0; m >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, m);
        if (i < a.nq4 && lane % sub == 0) {
            const size_t row = i / (size_t)sub;
            const int t = (int)(row / (size_t)a.Hq), h = (int)(row % (size_t)a.Hq);
            a.dsum[(size_t)h * a.T + t] = sum;
        }
    }
}

/* Appends a segment of T rows (its kept statistics in lse) to the batch c->attb of `kind`
 * (CU_PEND_ATTFWD or ATTBWD), which is pending from now on. */
static void att_batch_push(mc_cuda *c, int kind, float *lse, int T) {
    cu_att_batch *b = &c->attb;
    b->seg[b->n].r0 = b->rows;
    b->seg[b->n].T = T;
    b->seg[b->n].lse = lse;
    b->n++;
    b->rows += T;
    c->pend.kind = kind;
}

/* The grid of a batch kernel: heads of each segment, 64-row tiles of the longest (seg_tile). */
static dim3 att_batch_grid(const cu_att_seg *seg, int n, int Hq) {
    int rows = 0;
    for (int i = 0; i < n; i++) rows = seg[i].T > rows ? seg[i].T : rows;
    return dim3((unsigned)(Hq * n), (unsigned)((rows + 63) / 64));
}

/* Adds a forward from position 0 that keeps its statistics in lse to the pending batch, or
 * starts a new batch (launching the pending one) when it does not continue it. */
static void attfwd_add(mc_cuda *c, float *out, const float *q, const float *k, const float *v,
                       float *lse, int T, int Hq, int Hkv, int hd) {
    cu_att_batch *b = &c->attb;
    const size_t qd = (size_t)Hq * hd, kd = (size_t)Hkv * hd, r = (size_t)b->rows;
    const bool extends = c->pend.kind == CU_PEND_ATTFWD && b->n < CU_ATT_BATCH &&
                         b->Hq == Hq && b->Hkv == Hkv && b->hd == hd && q == b->q + r * qd &&
                         k == b->k + r * kd && v == b->v + r * kd && out == b->o + r * qd;
    if (!extends) {
        cu_pending_flush(c);
        memset(b, 0, sizeof *b);
        b->o = out;
        b->q = q;
        b->k = k;
        b->v = v;
        b->Hq = Hq;
        b->Hkv = Hkv;
        b->hd = hd;
    }
    att_batch_push(c, CU_PEND_ATTFWD, lse, T);
}

template <int HD> static void attfwd_launch(mc_cuda *c, const FlashBatchArgs &a) {
    const dim3 grid = att_batch_grid(a.seg, a.n, a.Hq);
    if (a.kb && a.vb)
        cu_launch(c, flash_fwd_batch_kernel<HD, true>, grid, dim3(128),
                  (unsigned)flash_smem_kb<HD>(), a, "attention");
    else
        cu_launch(c, flash_fwd_batch_kernel<HD, false>, grid, dim3(128),
                  (unsigned)flash_smem<HD>(), a, "attention");
}

void cu_flush_attfwd(mc_cuda *c) {
    const cu_att_batch &b = c->attb;
    const size_t nq = (size_t)b.rows * b.Hq * b.hd, nkv = (size_t)b.rows * b.Hkv * b.hd;
    FlashBatchArgs a;
    memset(&a, 0, sizeof a);
    a.out = b.o;
    a.sh = (bf16 *)cu_shadow_for(c, b.o, nq, b.rows); /* one bf16 copy of all the rows */
    a.q = b.q;
    a.k = b.k;
    a.v = b.v;
    if (c->kv16_on) { /* bf16 keys and values of all the segments, converted once */
        a.kb = (const bf16 *)cu_act_as_opt(c, b.k, nkv, MC_BF16);
        a.vb = a.kb ? (const bf16 *)cu_act_as_opt(c, b.v, nkv, MC_BF16) : NULL;
        if (!a.vb) a.kb = NULL;
    }
    a.Hq = b.Hq;
    a.Hkv = b.Hkv;
    a.n = b.n;
    a.scale_log2 = (1.0f / sqrtf((float)b.hd)) * LOG2E;
    for (int i = 0; i < b.n; i++) a.seg[i] = b.seg[i];
    switch (b.hd) {
    case 16: attfwd_launch<16>(c, a); break;
    case 32: attfwd_launch<32>(c, a); break;
    case 64: attfwd_launch<64>(c, a); break;
    default: attfwd_launch<128>(c, a); break;
    }
}

/* The arguments of the row (decode) attention kernels shared by attention and
 * attention_rows. */
static RowArgs row_args(void *out, const void *q, const void *k, const void *v, int T, int Hq,
                        int Hkv, int hd) {
    RowArgs a;
    memset(&a, 0, sizeof a);
    a.out = (float *)out;
    a.q = (const float *)q;
    a.k = (const float *)k;
    a.v = (const float *)v;
    a.T = T;
    a.Hq = Hq;
    a.Hkv = Hkv;
    a.hd = hd;
    a.scale = 1.0f / sqrtf((float)hd);
    return a;
}

/* The decode attention's early loads: the rows of k and v (rows of `row` bytes) below pos,
 * or below pos - 1 (the newest written by a step still running), that no queued work
 * writes; 0 when neither. */
static int pre_rows_of(const mc_cuda *c, const void *k, const void *v, int pos, size_t row) {
    for (int pre = pos; c->kv_pre_on && pre > 0 && pre >= pos - 1; pre--)
        if (cu_unwritten(c, k, (size_t)pre * row) && cu_unwritten(c, v, (size_t)pre * row))
            return pre;
    return 0;
}

void cu_attention(mc_backend *be, void *out, const void *q, const void *k, const void *v, int T,
                  int pos0, int Hq, int Hkv, int hd) {
    mc_cuda *c = cu_ctx(be);
    const size_t nout = (size_t)T * (size_t)Hq * (size_t)hd;
    if (T <= 0) return;
    cu_unpack(c, q, nout * sizeof(float));
    cu_unpack(c, k, (size_t)(pos0 + T) * (size_t)Hkv * (size_t)hd * sizeof(float));
    cu_unpack(c, v, (size_t)(pos0 + T) * (size_t)Hkv * (size_t)hd * sizeof(float));
    if (hd > 256 || Hkv <= 0 || Hq % Hkv != 0) {
        cu_set_error(c, MC_ERR_UNSUPPORTED, "attention: head_dim %d with %d/%d heads is not "
                     "supported (head_dim <= 256, query heads a multiple of kv heads)", hd, Hq, Hkv);
        return;
    }
    cu_note_write(c, out, nout * sizeof(float));
    if (T > SMALL_T && flash_ok(hd, Hq, Hkv, out, q, k, v)) {
        /* a training forward: its backward may take the log-sum-exp from here (not when
         * the output overwrites an input) */
        const float *of = (const float *)out;
        const size_t nkv = (size_t)T * Hkv * hd;
        float *lse = NULL;
        if (c->lse_on && pos0 == 0 && !cu_f32_overlap((const float *)q, nout, of, nout) &&
            !cu_f32_overlap((const float *)k, nkv, of, nout) &&
            !cu_f32_overlap((const float *)v, nkv, of, nout))
            lse = lse_keep(c, out, q, k, v, T, Hq, Hkv, hd);
        if (lse && c->attb_on) {
            attfwd_add(c, (float *)out, (const float *)q, (const float *)k, (const float *)v,
                       lse, T, Hq, Hkv, hd);
            return;
        }
        FlashArgs a;
        memset(&a, 0, sizeof a);
        a.out = (float *)out;
        a.sh = (bf16 *)cu_shadow_for(c, out, nout, T);
        a.q = (const float *)q;
        a.k = (const float *)k;
        a.v = (const float *)v;
        a.T = T;
        a.pos0 = pos0;
        a.Hq = Hq;
        a.Hkv = Hkv;
        a.scale_log2 = (1.0f / sqrtf((float)hd)) * LOG2E;
        /* bf16 copies of the keys and values (a producer's shadow, or converted once here,
         * not by every query tile): the kernel streams them with cp.async */
        if (c->kv16_on) {
            const size_t nkv_all = ((size_t)pos0 + (size_t)T) * (size_t)Hkv * (size_t)hd;
            a.kb = (const bf16 *)cu_act_as_opt(c, (const float *)k, nkv_all, MC_BF16);
            a.vb = a.kb ? (const bf16 *)cu_act_as_opt(c, (const float *)v, nkv_all, MC_BF16) : NULL;
            if (!a.vb) a.kb = NULL; /* an optimisation: without memory, the f32 tiles */
        }
        a.lse = lse;
        flash_fwd(c, hd, a);
        return;
    }
    RowArgs a = row_args(out, q, k, v, T, Hq, Hkv, hd);
    a.pos0 = pos0;
    /* Decode launches keep their shape whatever the context length (DEC_SPLIT or
     * ROW_MAX_SPLIT splits of the keys), so a decode step's graph is reused. */
    if (T <= SMALL_T && (hd == 64 || hd == 128) && cu_aligned16(q) && cu_aligned16(k) &&
        cu_aligned16(v) && c->dec_cluster) {
        a.nsplit = DEC_SPLIT;
        a.pre_rows = pre_rows_of(c, k, v, pos0, (size_t)Hkv * (size_t)hd * sizeof(float));
        const dim3 grid((unsigned)Hq, (unsigned)T, DEC_SPLIT);
        if (hd == 64)
            cu_launch(c, dec_fwd_kernel<64>, grid, dim3(DEC_THREADS), 0, a, "attention_decode");
        else
            cu_launch(c, dec_fwd_kernel<128>, grid, dim3(DEC_THREADS), 0, a, "attention_decode");
        return;
    }
    const int nsplit = T <= SMALL_T ? ROW_MAX_SPLIT : 1;
    if (nsplit > 1) {
        a.part = (float *)cu_scratch(c, CU_S_ATT_PART,
                                     (size_t)T * Hq * ROW_MAX_SPLIT * (size_t)(hd + 2) * sizeof(float),
                                     false);
        a.cnt = (int *)cu_scratch(c, CU_S_ATT_CNT, (size_t)SMALL_T * Hq * sizeof(int), true);
        if (!a.part || !a.cnt) return;
    }
    a.nsplit = nsplit;
    unsigned smem = (unsigned)((hd + ROW_CHUNK + 2 * ROW_THREADS + ROW_THREADS / 32) * sizeof(float));
    const dim3 grid((unsigned)Hq, (unsigned)T, (unsigned)nsplit);
    if (hd == 64) cu_launch(c, row_fwd_kernel<64>, grid, dim3(ROW_THREADS), smem, a, "attention_row");
    else if (hd == 128) cu_launch(c, row_fwd_kernel<128>, grid, dim3(ROW_THREADS), smem, a, "attention_row");
    else cu_launch(c, row_fwd_kernel<0>, grid, dim3(ROW_THREADS), smem, a, "attention_row");
}

void cu_attention_rows(mc_backend *be, void *out, const void *q, const void *k_new,
                       const void *v_new, const mc_att_row *rows, int T, int Hq, int Hkv, int hd) {
    mc_cuda *c = cu_ctx(be);
    const size_t qd = (size_t)Hq * (size_t)hd, kvd = (size_t)Hkv * (size_t)hd;
    const size_t row = kvd * sizeof(float);
    if (T <= 0) return;
    cu_unpack(c, q, (size_t)T * qd * sizeof(float));
    cu_unpack(c, k_new, (size_t)T * row);
    cu_unpack(c, v_new, (size_t)T * row);
    for (int t = 0; t < T && c->n_packed; t++) {
        cu_unpack(c, rows[t].k, (size_t)(rows[t].pos + 1) * row);
        cu_unpack(c, rows[t].v, (size_t)(rows[t].pos + 1) * row);
    }
    bool one = (hd == 64 || hd == 128) && Hkv > 0 && Hq % Hkv == 0 && c->dec_cluster &&
               cu_aligned16(q) && cu_aligned16(k_new) && cu_aligned16(v_new);
    for (int t = 0; one && t < T; t++) /* both caches at one offset from row 0's */
        one = cu_aligned16(rows[t].k) && cu_aligned16(rows[t].v) &&
              (const char *)rows[t].k - (const char *)rows[0].k ==
                  (const char *)rows[t].v - (const char *)rows[0].v;
    if (!one) { /* a copy of each new row, then attention per row */
        mc_attention_rows_by_row(be, out, q, k_new, v_new, rows, T, Hq, Hkv, hd);
        return;
    }
    for (int t0 = 0; t0 < T; t0 += DEC_ROWS) {
        const int n = T - t0 < DEC_ROWS ? T - t0 : DEC_ROWS;
        RowArgs a = row_args((float *)out + t0 * qd, (const float *)q + t0 * qd, rows[t0].k,
                             rows[t0].v, n, Hq, Hkv, hd);
        a.knew = (const float *)k_new + t0 * kvd;
        a.vnew = (const float *)v_new + t0 * kvd;
        a.nsplit = DEC_SPLIT;
        cu_note_write(c, a.out, (size_t)n * qd * sizeof(float));
        for (int t = 0; t < n; t++) {
            const mc_att_row &r = rows[t0 + t];
            a.roff[t] = ((const float *)r.k - a.k);
            a.rpos[t] = r.pos;
            a.rpre[t] = pre_rows_of(c, r.k, r.v, r.pos, row);
            cu_note_write(c, (float *)r.k + (size_t)r.pos * kvd, row);
            cu_note_write(c, (float *)r.v + (size_t)r.pos * kvd, row);
        }
        const dim3 grid((unsigned)Hq, (unsigned)n, DEC_SPLIT);
        if (hd == 64)
            cu_launch(c, dec_fwd_kernel<64>, grid, dim3(DEC_THREADS), 0, a, "attention_rows");
        else
            cu_launch(c, dec_fwd_kernel<128>, grid, dim3(DEC_THREADS), 0, a, "attention_rows");
    }
}

/* The bf16 copies of q and dout ([2, T, Hq*hd]: q's, then dout's) the backward's tiles read,
 * in scratch; NULL on failure (recorded). */
static bf16 *bwd_copies(mc_cuda *c, int T, int Hq, int hd) {
    const size_t nq = (size_t)T * (size_t)Hq * (size_t)hd;
    return (bf16 *)cu_scratch(c, CU_S_ATT_BF16, 2 * nq * sizeof(bf16), false);
}

/* D of T rows (from the kept output) into dsum [Hq, T], dq, dk, dv zeroed, and the bf16
 * copies of q and dout into qb ([2, T, Hq*hd], bwd_copies). */
static void dsum_launch(mc_cuda *c, float *dq, float *dk, float *dv, const float *dout,
                        const float *out, const float *q, bf16 *qb, float *dsum, int T, int Hq,
                        int Hkv, int hd) {
    DsumArgs d;
    memset(&d, 0, sizeof d);
    d.dq = (float4 *)dq; /* flash_ok: 16-byte aligned, hd a multiple of 16 */
    d.dk = (float4 *)dk;
    d.dv = (float4 *)dv;
    d.nq4 = (size_t)T * Hq * hd / 4;
    d.nkv4 = (size_t)T * Hkv * hd / 4;
    d.dout = dout;
    d.out = out;
    d.q = q;
    d.qb = qb;
    d.dob = qb + (size_t)T * Hq * hd;
    d.dsum = dsum;
    d.T = T;
    d.Hq = Hq;
    d.hd = hd;
    if (cu_aligned16(dout) && cu_aligned16(out) && c->dsum4_on)
        cu_launch(c, dsum4_kernel, dim3(cu_blocks(d.nq4, 256, (unsigned)c->n_sm * 8)), dim3(256),
                  0, d, "attention_backward dsum");
    else
        cu_launch(c, dsum_kernel,
                  dim3(cu_blocks((size_t)T * Hq * 32, 256, (unsigned)c->n_sm * 8)), dim3(256), 0,
                  d, "attention_backward dsum");
}

/* Adds a segment whose forward kept its statistics to the pending batch, or starts a new
 * batch (launching the pending one) when it does not continue it. */
static void attbwd_add(mc_cuda *c, float *dq, float *dk, float *dv, const float *dout,
                       const float *q, const float *k, const float *v, const cu_lse_slot *kept,
                       int T, int Hq, int Hkv, int hd) {
    cu_att_batch *b = &c->attb;
    const size_t qd = (size_t)Hq * hd, kd = (size_t)Hkv * hd, r = (size_t)b->rows;
    const bool extends = c->pend.kind == CU_PEND_ATTBWD && b->n < CU_ATT_BATCH &&
                         b->Hq == Hq && b->Hkv == Hkv && b->hd == hd && q == b->q + r * qd &&
                         k == b->k + r * kd && v == b->v + r * kd && dq == b->dq + r * qd &&
                         dk == b->dk + r * kd && dv == b->dv + r * kd &&
                         dout == b->dout + r * qd && kept->out == b->out + r * qd;
    if (!extends) {
        cu_pending_flush(c);
        memset(b, 0, sizeof *b);
        b->dq = dq;
        b->dk = dk;
        b->dv = dv;
        b->q = q;
        b->k = k;
        b->v = v;
        b->dout = dout;
        b->out = (const float *)kept->out;
        b->Hq = Hq;
        b->Hkv = Hkv;
        b->hd = hd;
    }
    c->n_lse_hit++;
    att_batch_push(c, CU_PEND_ATTBWD, kept->lse, T);
}

template <int HD, int BMQ> static void attbwd_launch(mc_cuda *c, const BwdBatchArgs &a) {
    const dim3 grid = att_batch_grid(a.seg, a.n, a.Hq);
    cu_launch(c, flash_bwd_batch_kernel<HD, BMQ>, grid, dim3(128), (unsigned)bwd_smem<HD, BMQ>(),
              a, "attention_backward");
}

void cu_flush_attbwd(mc_cuda *c) {
    const cu_att_batch &b = c->attb;
    const size_t nd = (size_t)b.Hq * (size_t)b.rows;
    float *dsum = (float *)cu_scratch(c, CU_S_ATT_STATS, nd * sizeof(float), false);
    bf16 *qb = bwd_copies(c, b.rows, b.Hq, b.hd);
    if (!dsum || !qb) return;
    dsum_launch(c, b.dq, b.dk, b.dv, b.dout, b.out, b.q, qb, dsum, b.rows, b.Hq, b.Hkv, b.hd);
    BwdBatchArgs a;
    memset(&a, 0, sizeof a);
    a.dq = b.dq;
    a.dk = b.dk;
    a.dv = b.dv;
    a.k = b.k;
    a.v = b.v;
    a.qb = qb;
    a.dob = qb + nd * (size_t)b.hd;
    a.dsum = dsum;
    a.Hq = b.Hq;
    a.Hkv = b.Hkv;
    a.ldd = b.rows;
    a.n = b.n;
    a.scale = 1.0f / sqrtf((float)b.hd);
    a.scale_log2 = a.scale * LOG2E;
    for (int i = 0; i < b.n; i++) a.seg[i] = b.seg[i];
    switch (b.hd) {
    case 16: attbwd_launch<16, 64>(c, a); break;
    case 32: attbwd_launch<32, 64>(c, a); break;
    case 64: attbwd_launch<64, 64>(c, a); break;
    default: attbwd_launch<128, 32>(c, a); break;
    }
}

template <int HD, int BMQ>
static void flash_bwd_launch(mc_cuda *c, const BwdArgs &a) {
    dim3 grid((unsigned)((a.T + 63) / 64), (unsigned)a.Hq);
    cu_launch(c, flash_bwd_kernel<HD, BMQ>, grid, dim3(128), (unsigned)bwd_smem<HD, BMQ>(), a,
              "attention_backward");
}

void cu_attention_backward(mc_backend *be, void *dq, void *dk, void *dv, const void *dout,
                           const void *q, const void *k, const void *v, int T, int Hq, int Hkv,
                           int hd) {
    mc_cuda *c = cu_ctx(be);
    const size_t nq = (size_t)T * Hq * hd, nkv = (size_t)T * Hkv * hd;
    if (T <= 0) return;
    cu_unpack(c, dout, nq * sizeof(float));
    cu_unpack(c, q, nq * sizeof(float));
    cu_unpack(c, k, nkv * sizeof(float));
    cu_unpack(c, v, nkv * sizeof(float));
    if (hd > 256 || Hkv <= 0 || Hq % Hkv != 0) {
        cu_set_error(c, MC_ERR_UNSUPPORTED, "attention_backward: head_dim %d with %d/%d heads is "
                     "not supported", hd, Hq, Hkv);
        return;
    }
    cu_note_write(c, dq, nq * sizeof(float));
    cu_note_write(c, dk, nkv * sizeof(float));
    cu_note_write(c, dv, nkv * sizeof(float));
    if (flash_ok(hd, Hq, Hkv, dq, q, k, v) && cu_aligned16(dout) && cu_aligned16(dk) &&
        cu_aligned16(dv)) {
        const cu_lse_slot *kept = lse_find(c, q, k, v, T, Hq, Hkv, hd);
        if (kept && c->attb_on) {
            attbwd_add(c, (float *)dq, (float *)dk, (float *)dv, (const float *)dout,
                       (const float *)q, (const float *)k, (const float *)v, kept, T, Hq, Hkv,
                       hd);
            return;
        }
        float *stats = (float *)cu_scratch(c, CU_S_ATT_STATS, 2 * (size_t)Hq * T * sizeof(float), false);
        if (!stats) return;
        if (!kept) {
            cu_zero(be, dq, nq * sizeof(float));
            cu_zero(be, dk, nkv * sizeof(float));
            cu_zero(be, dv, nkv * sizeof(float));
        }
        FlashArgs f;
        memset(&f, 0, sizeof f);
        f.q = (const float *)q;
        f.k = (const float *)k;
        f.v = (const float *)v;
        f.dout = (const float *)dout;
        f.lse = stats;
        f.dsum = stats + (size_t)Hq * T;
        f.T = T;
        f.Hq = Hq;
        f.Hkv = Hkv;
        f.scale_log2 = (1.0f / sqrtf((float)hd)) * LOG2E;
        const bf16 *qb, *dob;
        if (kept) { /* the forward's statistics: only D is left to compute */
            bf16 *cp = bwd_copies(c, T, Hq, hd);
            if (!cp) return;
            dsum_launch(c, (float *)dq, (float *)dk, (float *)dv, f.dout,
                        (const float *)kept->out, f.q, cp, f.dsum, T, Hq, Hkv, hd);
            qb = cp;
            dob = cp + nq;
            f.lse = kept->lse;
            c->n_lse_hit++;
        } else {
            flash_fwd(c, hd, f);
            qb = (const bf16 *)cu_act_as(c, f.q, nq, MC_BF16);
            dob = (const bf16 *)cu_act_as(c, f.dout, nq, MC_BF16);
            if (!qb || !dob) return;
        }
        BwdArgs b;
        memset(&b, 0, sizeof b);
        b.dq = (float *)dq;
        b.dk = (float *)dk;
        b.dv = (float *)dv;
        b.k = f.k;
        b.v = f.v;
        b.qb = qb;
        b.dob = dob;
        b.lse = f.lse;
        b.dsum = f.dsum;
        b.T = T;
        b.Hq = Hq;
        b.Hkv = Hkv;
        b.ldd = T;
        b.scale = 1.0f / sqrtf((float)hd);
        b.scale_log2 = f.scale_log2;
        switch (hd) {
        case 16: flash_bwd_launch<16, 64>(c, b); break;
        case 32: flash_bwd_launch<32, 64>(c, b); break;
        case 64: flash_bwd_launch<64, 64>(c, b); break;
        default: flash_bwd_launch<128, 32>(c, b); break;
        }
        return;
    }
    const size_t smem = (2 * (size_t)hd + 2 * (size_t)T + ROW_THREADS / 32) * sizeof(float);
    if (smem > c->prop.sharedMemPerBlockOptin) {
        cu_set_error(c, MC_ERR_UNSUPPORTED, "attention_backward: %d rows of head_dim %d need the "
                     "tensor-core kernel (head_dim 16, 32, 64 or 128)", T, hd);
        return;
    }
    cu_zero(be, dk, nkv * sizeof(float));
    cu_zero(be, dv, nkv * sizeof(float));
    RowBwdArgs r;
    memset(&r, 0, sizeof r);
    r.dq = (float *)dq;
    r.dk = (float *)dk;
    r.dv = (float *)dv;
    r.q = (const float *)q;
    r.k = (const float *)k;
    r.v = (const float *)v;
    r.dout = (const float *)dout;
    r.T = T;
    r.Hq = Hq;
    r.Hkv = Hkv;
    r.hd = hd;
    r.scale = 1.0f / sqrtf((float)hd);
    cu_launch(c, row_bwd_kernel, dim3((unsigned)T, (unsigned)Hq), dim3(ROW_THREADS), (unsigned)smem,
              r, "attention_backward_row");
}

/* Raises the dynamic shared-memory limits of the kernels that need more than 48 KB. */
void cu_attention_init(mc_cuda *c) {
    const int row_smem = (int)((256 + ROW_CHUNK + 2 * ROW_THREADS + 8) * sizeof(float));
    const auto lim = [c](const void *func, int bytes) {
        cu_smem_limit(c, func, bytes, "attention setup");
    };
    lim((const void *)flash_fwd_kernel<128, false>, flash_smem<128>());
    lim((const void *)flash_fwd_kernel<128, true>, flash_smem_kb<128>());
    lim((const void *)flash_fwd_kernel<64, true>, flash_smem_kb<64>());
    lim((const void *)flash_bwd_kernel<128, 32>, bwd_smem<128, 32>());
    lim((const void *)flash_bwd_kernel<64, 64>, bwd_smem<64, 64>());
    lim((const void *)flash_fwd_batch_kernel<128, false>, flash_smem<128>());
    lim((const void *)flash_fwd_batch_kernel<128, true>, flash_smem_kb<128>());
    lim((const void *)flash_fwd_batch_kernel<64, true>, flash_smem_kb<64>());
    lim((const void *)flash_bwd_batch_kernel<128, 32>, bwd_smem<128, 32>());
    lim((const void *)flash_bwd_batch_kernel<64, 64>, bwd_smem<64, 64>());
    lim((const void *)row_bwd_kernel, (int)c->prop.sharedMemPerBlockOptin);
    lim((const void *)row_fwd_kernel<0>, row_smem);
    lim((const void *)row_fwd_kernel<64>, row_smem);
    lim((const void *)row_fwd_kernel<128>, row_smem);
}
