/* cuda_lora_dual.cu - the two LoRA products of a projection's backward that read its
 * output gradient, in one pass over it.
 *
 * For an adapted projection the trainer computes gB += s dy^T (x A^T) (a sum over the token
 * rows) and then t = s dy B (the rank-r product the A gradient and the input gradient use),
 * both reading dy [tokens, out] in bf16: for the MLP's wide projections a packed tensor of
 * 4,864 columns (40 MB at 4,096 tokens), for the others the bf16 copy their producer left
 * (RoPE's backward, the RMSNorm backward, the frozen input-gradient GEMM's conversion),
 * read twice by two cuBLASLt calls. Here the first product is held (CU_PEND_DUAL) and, when
 * the second follows on the same dy (and out is a multiple of 128), one kernel
 * reads each 128 x 128 tile of dy (and the tile's rows of B) once into shared memory, two
 * tiles in flight, and feeds both on the tensor cores
 * (mma.sync m16n8k16, bf16 operands, f32 sums, as the bf16 LoRA products elsewhere): a
 * block owns 128 token rows and a stride of column tiles, keeps its rows of t in registers
 * across its tiles and adds each tile's 128 rows of gB with vector atomics; its t rows go
 * out the same way into t cleared just before. Atomic sums make the last bits of gB and t
 * depend on the order blocks finish (as the attention backward's do). The pairs of up to
 * CU_DUAL_MAX projections that follow one another (the trainer issues a group's frozen
 * input-gradient GEMMs first: q, k and v; gate and up) stay held and go out as one launch,
 * the grid's blocks shared out in proportion to each dy's column tiles, so that k's and
 * v's small products run beside q's instead of after it. */
#include <string.h>

#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

enum {
    DU_BM = 128,              /* token rows a block */
    DU_BN = 128,              /* columns of dy a tile */
    DU_LD = DU_BN + 8,        /* shared-memory row of a dy tile (bf16) */
    DU_LX = DU_BM + 8,        /* shared-memory row of xa^T and B^T (bf16) */
    DU_R = 16,                /* ranks up to 16 */
    DU_THREADS = 256,
    DU_LB = 20,               /* shared-memory row of a tile's B rows (f32; 16 + 4 spreads the
                               * fragment loads over the banks) */
    DU_SMEM = (2 * DU_BM * DU_LD + DU_R * DU_LX) * 2 + 2 * DU_BN * DU_LB * 4
};

/* One projection's pair of products in a launch. */
struct DualEnt {
    const bf16 *dy;   /* [M, ldy] */
    const float *xa;  /* [M, ldx]: x A^T, r columns */
    const float *B;   /* [N, ldb]: the adapter's B, r columns */
    float *gB;        /* [N, ldg] += alpha_b dy^T xa */
    float *t;         /* [M, ldt] = alpha_t dy B (cleared before the launch) */
    int N, r, ldy, ldx, ldb, ldg, ldt;
    int chunks;       /* blocks along dy's column tiles */
    float alpha_b, alpha_t;
};

struct DualArgs {
    DualEnt e[CU_DUAL_MAX]; /* blocks [0, e[0].chunks) take entry 0, the next e[1].chunks 1 */
    int n, M;
};

/* Starts the copies of dy's column tile `tile` (rows m0 .., zeros past M) into dst and of
 * the tile's rows of B (f32, r <= 16 columns; zeros from column r on) into bs. */
static __device__ __forceinline__ void du_load(const DualEnt &a, int M, bf16 *dst, float *bs,
                                               int m0, int tile) {
    constexpr int C = DU_BN / 8; /* 16-byte chunks a row */
    const int n0 = tile * DU_BN;
#pragma unroll
    for (int j = 0; j < DU_BM * C / DU_THREADS; j++) {
        const int i = (int)threadIdx.x + j * DU_THREADS, r = i / C, c = i - r * C;
        const bool ok = m0 + r < M;
        cu_cp_async16(dst + r * DU_LD + c * 8,
                      ok ? a.dy + (size_t)(m0 + r) * a.ldy + n0 + c * 8 : a.dy, ok ? 16 : 0);
    }
    for (int i = (int)threadIdx.x; i < DU_BN * 4; i += DU_THREADS) {
        const int n = i >> 2, q = i & 3, ok = q * 4 < a.r;
        cu_cp_async16(bs + n * DU_LB + q * 4, ok ? a.B + (size_t)(n0 + n) * a.ldb + q * 4 : a.B,
                      ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

static __global__ void __launch_bounds__(DU_THREADS) dual_kernel(const DualArgs d) {
    extern __shared__ __align__(16) unsigned char du_smem[];
    /* this block's entry (constant indices: the arguments stay in the parameter space) */
    int first = (int)blockIdx.x;
    DualEnt a = d.e[0];
    if (d.n > 1 && first >= d.e[0].chunks) {
        first -= d.e[0].chunks;
        a = d.e[1];
        if (d.n > 2 && first >= d.e[1].chunks) {
            first -= d.e[1].chunks;
            a = d.e[2];
        }
    }
    const int M = d.M, tiles = a.N / DU_BN;
    bf16 *dyS = reinterpret_cast<bf16 *>(du_smem);    /* [2][DU_BM][DU_LD] */
    bf16 *xtS = dyS + 2 * DU_BM * DU_LD;               /* [DU_R][DU_LX]: xa^T */
    float *bS = reinterpret_cast<float *>(xtS + DU_R * DU_LX); /* [2][DU_BN][DU_LB]: B rows */
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g = lane >> 2, cq = lane & 3, mat = lane >> 3, rr = lane & 7;
    const int m0 = (int)blockIdx.y * DU_BM;
    cu_dep_wait();
    if (first < tiles) du_load(a, M, dyS, bS, m0, first);
    /* xa^T of the block's rows, zeros past r and M */
    for (int i = (int)threadIdx.x; i < DU_R * DU_BM; i += DU_THREADS) {
        const int j = i / DU_BM, m = i - j * DU_BM;
        const float v = j < a.r && m0 + m < M ? a.xa[(size_t)(m0 + m) * a.ldx + j] : 0.0f;
        xtS[j * DU_LX + m] = __float2bfloat16(v);
    }
    float tacc[2][4];
#pragma unroll
    for (int i = 0; i < 2; i++) tacc[i][0] = tacc[i][1] = tacc[i][2] = tacc[i][3] = 0.0f;
    int buf = 0;
    for (int tile = first; tile < tiles; tile += a.chunks, buf ^= 1) {
        const int n0 = tile * DU_BN;
        const bf16 *cur = dyS + buf * DU_BM * DU_LD;
        const float *bs = bS + buf * DU_BN * DU_LB;
        if (tile + a.chunks < tiles) {
            du_load(a, M, dyS + (buf ^ 1) * DU_BM * DU_LD, bS + (buf ^ 1) * DU_BN * DU_LB, m0,
                    tile + a.chunks);
            asm volatile("cp.async.wait_group 1;\n" ::: "memory");
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        }
        __syncthreads();
        /* t rows warp*16 .. += dy (rows) B (this tile's rows of B) */
#pragma unroll
        for (int kk = 0; kk < DU_BN / 16; kk++) {
            uint32_t af[4];
            cu_ldsm_x4(af, cur + (warp * 16 + (mat & 1) * 8 + rr) * DU_LD + kk * 16 +
                               (mat >> 1) * 8);
            const float *b0 = bs + (kk * 16 + 2 * cq) * DU_LB + g;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const float *bp = b0 + nt * 8;
                cu_mma16816(tacc[nt], af, cu_pack_bf16(bp[0], bp[DU_LB]),
                       cu_pack_bf16(bp[8 * DU_LB], bp[9 * DU_LB]));
            }
        }
        /* gB rows n0 + warp*16 .. += dy^T (this tile's columns) xa */
        float bacc[2][4];
#pragma unroll
        for (int i = 0; i < 2; i++) bacc[i][0] = bacc[i][1] = bacc[i][2] = bacc[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DU_BM / 16; kk++) {
            uint32_t af[4], bf[4];
            cu_ldsm_x4_t(af, cur + (kk * 16 + (mat >> 1) * 8 + rr) * DU_LD + warp * 16 +
                                 (mat & 1) * 8);
            cu_ldsm_x4(bf, xtS + ((mat >> 1) * 8 + rr) * DU_LX + kk * 16 + (mat & 1) * 8);
            cu_mma16816(bacc[0], af, bf[0], bf[1]);
            cu_mma16816(bacc[1], af, bf[2], bf[3]);
        }
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            const int j = nt * 8 + 2 * cq, n = n0 + warp * 16 + g;
            if (j < a.r) { /* r is a multiple of 4 */
                atomicAdd(reinterpret_cast<float2 *>(a.gB + (size_t)n * a.ldg + j),
                          make_float2(a.alpha_b * bacc[nt][0], a.alpha_b * bacc[nt][1]));
                atomicAdd(reinterpret_cast<float2 *>(a.gB + (size_t)(n + 8) * a.ldg + j),
                          make_float2(a.alpha_b * bacc[nt][2], a.alpha_b * bacc[nt][3]));
            }
        }
        __syncthreads(); /* the next tile's loads go into this one's buffers */
    }
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        const int j = nt * 8 + 2 * cq, m = m0 + warp * 16 + g;
        if (j >= a.r) continue;
        if (m < M)
            atomicAdd(reinterpret_cast<float2 *>(a.t + (size_t)m * a.ldt + j),
                      make_float2(a.alpha_t * tacc[nt][0], a.alpha_t * tacc[nt][1]));
        if (m + 8 < M)
            atomicAdd(reinterpret_cast<float2 *>(a.t + (size_t)(m + 8) * a.ldt + j),
                      make_float2(a.alpha_t * tacc[nt][2], a.alpha_t * tacc[nt][3]));
    }
}

/* dy [M, ldy] in bf16: its packed range or its bf16 shadow (no conversion), or NULL. */
static const bf16 *dual_dy16(mc_cuda *c, const float *dy, int M, int ldy) {
    const size_t n = (size_t)M * (size_t)ldy;
    const bf16 *d = (const bf16 *)cu_packed_find(c, dy, n);
    return d ? d : (const bf16 *)cu_shadow_find(c, dy, n);
}

void cu_dual_init(mc_cuda *c) {
    cu_smem_limit(c, (const void *)dual_kernel, DU_SMEM, "dual setup");
}

/* The floats an entry's operands span over M token rows. */
static size_t du_span_dy(const cu_dual_ent &e, int M) { return (size_t)M * (size_t)e.ldy; }
static size_t du_span_xa(const cu_dual_ent &e, int M) {
    return (size_t)(M - 1) * (size_t)e.ldx + (size_t)e.r;
}
static size_t du_span_gB(const cu_dual_ent &e) {
    return (size_t)(e.N - 1) * (size_t)e.ldg + (size_t)e.r;
}
static size_t du_span_B(const cu_dual_ent &e) {
    return (size_t)(e.N - 1) * (size_t)e.ldb + (size_t)e.r;
}
static size_t du_span_t(const cu_dual_ent &e, int M) {
    return (size_t)(M - 1) * (size_t)e.ldt + (size_t)e.r;
}

/* Whether t [M, ldt] (r columns) meets held entry e's t: exactly for column blocks of rows
 * of one leading dimension (a group's t side by side), else by their spans. */
static bool du_t_meets(const cu_dual_ent &e, int M, const float *t, int ldt, int r) {
    const ptrdiff_t d = t - e.t; /* t's first column from e's */
    if (ldt == e.ldt && (d >= 0 ? d + r <= ldt : e.r - d <= ldt)) /* both within one row */
        return d >= 0 ? d < e.r : -d < r;
    return cu_f32_overlap(t, (size_t)(M - 1) * (size_t)ldt + (size_t)r, e.t, du_span_t(e, M));
}

/* Whether [p, p + n) (floats) meets what held entry e reads or writes, its t aside (its B
 * once taken). */
static bool du_meets_but_t(const cu_dual_ent &e, int M, const float *p, size_t n) {
    return cu_f32_overlap(p, n, e.dy, du_span_dy(e, M)) ||
           cu_f32_overlap(p, n, e.xa, du_span_xa(e, M)) ||
           cu_f32_overlap(p, n, e.gB, du_span_gB(e)) ||
           (e.taken && cu_f32_overlap(p, n, e.B, du_span_B(e)));
}

/* The same with its t (once taken). */
static bool du_meets(const cu_dual_ent &e, int M, const float *p, size_t n) {
    return du_meets_but_t(e, M, p, n) ||
           (e.taken && cu_f32_overlap(p, n, e.t, du_span_t(e, M)));
}

/* Whether b's t is the column block right after a's in the same rows. */
static bool du_follows(const cu_dual_ent &a, const cu_dual_ent &b) {
    return b.ldt == a.ldt && b.t == a.t + a.r;
}

bool cu_dual_hold(mc_cuda *c, int N, int r, int M, float alpha, const float *dy, int ldy,
                  const float *xa, int ldx, float *gB, int ldg) {
    if (!c->dual_on || r < 4 || r > DU_R || r % 4 || N % DU_BN || ldy % 8 || ldg % 2 ||
        M < 256)
        return false;
    const bf16 *d16 = dual_dy16(c, dy, M, ldy);
    cu_dual_ent e;
    memset(&e, 0, sizeof e);
    e.dy = dy;
    e.dy16 = d16;
    e.xa = xa;
    e.gB = gB;
    e.ldy = ldy;
    e.ldx = ldx;
    e.ldg = ldg;
    e.N = N;
    e.r = r;
    e.alpha_b = alpha;
    if (!d16 || !cu_aligned16(d16) || ((uintptr_t)gB & 7u) ||
        cu_packed_find(c, xa, du_span_xa(e, M)) ||
        cu_f32_overlap(gB, du_span_gB(e), xa, du_span_xa(e, M)))
        return false;
    cu_pending &p = c->pend;
    /* joins the held pairs when they are all complete and apart from it: none writes what
     * it reads, it writes nothing they read or write */
    bool join = p.kind == CU_PEND_DUAL && p.n_du < CU_DUAL_MAX && p.du_M == M &&
                p.du[p.n_du - 1].taken;
    for (int i = 0; i < p.n_du && join; i++) {
        const cu_dual_ent &h = p.du[i];
        join = !du_meets(h, M, gB, du_span_gB(e)) &&
               !cu_f32_overlap(h.gB, du_span_gB(h), dy, du_span_dy(e, M)) &&
               !cu_f32_overlap(h.gB, du_span_gB(h), xa, du_span_xa(e, M)) &&
               !cu_f32_overlap(h.t, du_span_t(h, M), dy, du_span_dy(e, M)) &&
               !cu_f32_overlap(h.t, du_span_t(h, M), xa, du_span_xa(e, M));
    }
    if (!join) {
        cu_pending_flush(c);
        p.kind = CU_PEND_DUAL;
        p.n_du = 0;
        p.du_M = M;
    }
    p.du[p.n_du++] = e;
    return true;
}

bool cu_dual_take(mc_cuda *c, int M, int r, int N, float alpha, const float *dy, int ldy,
                  const float *B, int ldb, float *t, int ldt) {
    cu_pending &p = c->pend;
    if (p.kind != CU_PEND_DUAL || p.du_M != M || p.n_du < 1) return false;
    cu_dual_ent &e = p.du[p.n_du - 1];
    if (e.taken || e.dy != dy || e.ldy != ldy || e.N != N || e.r != r || ldt % 2 ||
        ((uintptr_t)t & 7u) || ldb % 4 || !cu_aligned16(B))
        return false;
    cu_dual_ent f = e;
    f.B = B;
    f.ldb = ldb;
    f.t = t;
    f.ldt = ldt;
    f.alpha_t = alpha;
    const size_t nt = du_span_t(f, M), nb = du_span_B(f), ng = du_span_gB(f);
    /* t is written while the others are read: it must meet none of them, nor anything
     * the other held pairs read or write; B must not be written by them */
    if (cu_packed_find(c, B, nb) || cu_f32_overlap(t, nt, B, nb) ||
        cu_f32_overlap(t, nt, f.gB, ng) || cu_f32_overlap(t, nt, f.xa, du_span_xa(f, M)) ||
        cu_f32_overlap(f.gB, ng, B, nb) || cu_f32_overlap(t, nt, dy, du_span_dy(f, M)) ||
        cu_f32_overlap(f.gB, ng, dy, du_span_dy(f, M)))
        return false;
    for (int i = 0; i + 1 < p.n_du; i++) {
        const cu_dual_ent &h = p.du[i];
        if (du_meets_but_t(h, M, t, nt) || du_t_meets(h, M, t, ldt, r) ||
            cu_f32_overlap(h.gB, du_span_gB(h), B, nb) ||
            cu_f32_overlap(h.t, du_span_t(h, M), B, nb))
            return false;
    }
    f.taken = true;
    e = f;
    cu_note_write(c, t, nt * sizeof(float));
    cu_note_write(c, f.gB, ng * sizeof(float));
    return true; /* launched with the group (cu_flush_dual) */
}

/* One launch of the first n held pairs of p (all taken): their t cleared (one 2-D clear for
 * neighbouring column blocks of one t), the grid's blocks shared out by column tiles. */
static void dual_launch(mc_cuda *c, const cu_pending &p, int n) {
    const int M = p.du_M, rows = (M + DU_BM - 1) / DU_BM, wave = 2 * c->n_sm;
    DualArgs a;
    memset(&a, 0, sizeof a);
    a.n = n;
    a.M = M;
    int all = 0, blocks = 0;
    for (int i = 0; i < n; i++) all += p.du[i].N / DU_BN;
    cu_break(c);
    for (int i = 0; i < n; i++) {
        const cu_dual_ent &h = p.du[i];
        DualEnt &d = a.e[i];
        const int tiles = h.N / DU_BN;
        /* one wave of two blocks an SM (a second, part-full wave would double the time) */
        int ch = (int)((2L * wave * tiles + (long)rows * all) / (2L * rows * all));
        d.chunks = ch < 1 ? 1 : ch > tiles ? tiles : ch;
        blocks += d.chunks;
        d.dy = (const bf16 *)h.dy16;
        d.xa = h.xa;
        d.B = h.B;
        d.gB = h.gB;
        d.t = h.t;
        d.N = h.N;
        d.r = h.r;
        d.ldy = h.ldy;
        d.ldx = h.ldx;
        d.ldb = h.ldb;
        d.ldg = h.ldg;
        d.ldt = h.ldt;
        d.alpha_b = h.alpha_b;
        d.alpha_t = h.alpha_t;
        /* the clear of t, merged with the next pairs' where their columns follow on */
        if (i > 0 && du_follows(p.du[i - 1], h)) continue;
        int width = h.r;
        for (int j = i; j + 1 < n && du_follows(p.du[j], p.du[j + 1]); j++) width += p.du[j + 1].r;
        if (!cu_check(c, cudaMemset2DAsync(h.t, (size_t)h.ldt * sizeof(float), 0,
                                           (size_t)width * sizeof(float), (size_t)M, c->stream),
                      "dual clear"))
            return;
    }
    cu_launch(c, dual_kernel, dim3((unsigned)blocks, (unsigned)rows), dim3(DU_THREADS),
              (unsigned)DU_SMEM, a, "gemm_f32 dual bf16");
    c->n_dual += n;
}

void cu_flush_dual(mc_cuda *c, const cu_pending *p) {
    int n = p->n_du;
    if (n > 0 && !p->du[n - 1].taken) n--;
    if (n > 0) dual_launch(c, *p, n);
    if (n == p->n_du) return;
    /* the last B-gradient product, whose t never came: on its own */
    const cu_dual_ent &h = p->du[n];
    c->dual_busy = true;
    cu_gemm_f32_c(c, true, false, h.N, h.r, p->du_M, h.alpha_b, h.dy, h.ldy, h.xa, h.ldx,
                  1.0f, h.gB, h.ldg);
    c->dual_busy = false;
}

/* ---- the A gradients' sums over the token rows ----
 * gA += alpha T^T x for a group of projections (T = [t_1 .. t_n], [tokens, R] f32, R <= 48;
 * x [tokens, N] read in bf16 from its packed range or shadow, as the cuBLASLt product it
 * replaces reads it, or else in f32 and rounded to bf16 on the way, as the other LoRA
 * products' bf16 operands are). cuBLASLt runs this [R x tokens] x [tokens x N] shape as a
 * split-K GEMM of a few dozen blocks. Here block (j, s) takes columns 128 j .. of x over
 * its share of the rows, 32 rows a step, the next steps' tiles in flight (cp.async; two
 * ahead for bf16 x, one for f32) while the tensor cores (m16n8k16, bf16 operands, f32 sums)
 * work on the current one; warp w owns columns 32 w .. of the tile for all R ranks, and the
 * block's [R, 128] sums go into gA with vector atomics (the last bits depend on the order
 * blocks finish, as the B gradients' do). */
enum {
    GA_BN = 128,           /* columns of x a block */
    GA_BK = 32,            /* token rows a step */
    GA_RT = 3,             /* ranks in tiles of 16: up to 48 */
    GA_THREADS = 128,
    GA_LX = GA_BN + 8,     /* shared-memory row of a bf16 x tile */
    GA_LXF = GA_BN + 4,    /* shared-memory row of an f32 x tile */
    GA_LT = 16 * GA_RT + 4 /* shared-memory row of a T tile (f32) */
};

/* Steps' tiles in shared memory for x of element type X, and their bytes. */
template <typename X> struct GaTile {
    static constexpr int ST = sizeof(X) == 2 ? 3 : 2;
    static constexpr int LX = sizeof(X) == 2 ? GA_LX : GA_LXF;
    static constexpr int XB = GA_BK * LX * (int)sizeof(X), TB = GA_BK * GA_LT * 4;
    static constexpr int SMEM = ST * (XB + TB);
};

struct GaArgs {
    const float *T;  /* [M, ldt]: R columns */
    const void *x;   /* [M, ldx]: bf16 or f32 (the kernel's X) */
    float *gA;       /* [R, ldg] += alpha T^T x */
    int M, N, R, ldt, ldx, ldg;
    int rows;        /* token rows a block: a multiple of GA_BK */
    float alpha;
};

/* Starts the copies of the x tile (rows m0 .. m0 + GA_BK, zeros from m1 on; columns n0 ..)
 * and of the same rows of T (R columns) into xs and ts; the caller commits. */
template <typename X>
static __device__ __forceinline__ void ga_load(const GaArgs &a, X *xs, float *ts, int m0,
                                               int m1, int n0) {
    constexpr int E = 16 / (int)sizeof(X), C = GA_BN / E; /* 16-byte chunks of an x row */
    const X *xg = static_cast<const X *>(a.x);
#pragma unroll
    for (int j = 0; j < GA_BK * C / GA_THREADS; j++) {
        const int i = (int)threadIdx.x + j * GA_THREADS, r = i / C, c = i - r * C;
        const bool ok = m0 + r < m1;
        cu_cp_async16(xs + r * GaTile<X>::LX + c * E,
                      ok ? xg + (size_t)(m0 + r) * a.ldx + n0 + c * E : xg, ok ? 16 : 0);
    }
    const int c4 = a.R / 4; /* 16-byte chunks of a T row */
    for (int i = (int)threadIdx.x; i < GA_BK * c4; i += GA_THREADS) {
        const int r = i / c4, c = i - r * c4;
        const bool ok = m0 + r < m1;
        cu_cp_async16(ts + r * GA_LT + c * 4, ok ? a.T + (size_t)(m0 + r) * a.ldt + c * 4 : a.T,
                      ok ? 16 : 0);
    }
}

/* B fragments (k = token rows kk*16 .., n = this warp's four 8-column tiles) of an x tile:
 * by ldmatrix from bf16, by pairs of f32 loads rounded to bf16 from f32. */
static __device__ __forceinline__ void ga_bfrag(uint32_t (&b)[2][4], const bf16 *xs, int kk,
                                                int warp, int lane) {
    const int mat = lane >> 3, rr = lane & 7;
#pragma unroll
    for (int h = 0; h < 2; h++)
        cu_ldsm_x4_t(b[h], xs + (kk * 16 + (mat & 1) * 8 + rr) * GA_LX + warp * 32 + h * 16 +
                               (mat >> 1) * 8);
}

static __device__ __forceinline__ void ga_bfrag(uint32_t (&b)[2][4], const float *xs, int kk,
                                                int warp, int lane) {
    const int g = lane >> 2, cq = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        const float *p = xs + (kk * 16 + 2 * cq) * GA_LXF + warp * 32 + nt * 8 + g;
        b[nt >> 1][(nt & 1) * 2] = cu_pack_bf16(p[0], p[GA_LXF]);
        b[nt >> 1][(nt & 1) * 2 + 1] = cu_pack_bf16(p[8 * GA_LXF], p[9 * GA_LXF]);
    }
}

template <int RT, typename X>
static __global__ void __launch_bounds__(GA_THREADS) ga_kernel(const GaArgs a) {
    typedef GaTile<X> G;
    __shared__ __align__(16) unsigned char ga_smem[G::SMEM];
    X *xs0 = reinterpret_cast<X *>(ga_smem);
    float *ts0 = reinterpret_cast<float *>(ga_smem + G::ST * G::XB);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g = lane >> 2, cq = lane & 3;
    const int n0 = (int)blockIdx.x * GA_BN, m0 = (int)blockIdx.y * a.rows;
    const int m1 = min(m0 + a.rows, a.M), steps = (m1 - m0 + GA_BK - 1) / GA_BK;
    float acc[RT][4][4];
#pragma unroll
    for (int i = 0; i < RT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
    cu_dep_wait();
    /* a commit group a step (empty past the last), so step s is in when at most ST - 1
     * groups are pending */
    for (int i = 0; i < G::ST - 1; i++) {
        if (i < steps)
            ga_load(a, xs0 + i * GA_BK * G::LX, ts0 + i * GA_BK * GA_LT, m0 + i * GA_BK, m1, n0);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    for (int s = 0; s < steps; s++) {
        const int buf = s % G::ST;
        if (s + G::ST - 1 < steps) {
            const int nb = (s + G::ST - 1) % G::ST;
            ga_load(a, xs0 + nb * GA_BK * G::LX, ts0 + nb * GA_BK * GA_LT,
                    m0 + (s + G::ST - 1) * GA_BK, m1, n0);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group %0;\n" ::"n"(G::ST - 1) : "memory");
        __syncthreads();
        const X *xt = xs0 + buf * GA_BK * G::LX;
        const float *tt = ts0 + buf * GA_BK * GA_LT;
#pragma unroll
        for (int kk = 0; kk < GA_BK / 16; kk++) {
            uint32_t b[2][4];
            ga_bfrag(b, xt, kk, warp, lane);
            const float *t0 = tt + (kk * 16 + 2 * cq) * GA_LT + g;
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                /* T^T's rows rt*16 + (g, g + 8), token rows 2cq, 2cq + 1 (+ 8); ranks from R
                 * on (never copied in) read as zeros */
                const float *p = t0 + rt * 16;
                const bool lo = rt * 16 + g < a.R, hi = rt * 16 + g + 8 < a.R;
                const auto v = [&](bool ok, int i) { return ok ? p[i] : 0.0f; };
                uint32_t af[4];
                af[0] = cu_pack_bf16(v(lo, 0), v(lo, GA_LT));
                af[1] = cu_pack_bf16(v(hi, 8), v(hi, GA_LT + 8));
                af[2] = cu_pack_bf16(v(lo, 8 * GA_LT), v(lo, 9 * GA_LT));
                af[3] = cu_pack_bf16(v(hi, 8 * GA_LT + 8), v(hi, 9 * GA_LT + 8));
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    cu_mma16816(acc[rt][2 * h], af, b[h][0], b[h][1]);
                    cu_mma16816(acc[rt][2 * h + 1], af, b[h][2], b[h][3]);
                }
            }
        }
        __syncthreads(); /* a later step's copies go into this step's buffers */
    }
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int col = n0 + warp * 32 + nt * 8 + 2 * cq, k0 = rt * 16 + g;
            if (k0 < a.R)
                atomicAdd(reinterpret_cast<float2 *>(a.gA + (size_t)k0 * a.ldg + col),
                          make_float2(a.alpha * acc[rt][nt][0], a.alpha * acc[rt][nt][1]));
            if (k0 + 8 < a.R)
                atomicAdd(reinterpret_cast<float2 *>(a.gA + (size_t)(k0 + 8) * a.ldg + col),
                          make_float2(a.alpha * acc[rt][nt][2], a.alpha * acc[rt][nt][3]));
        }
}

/* Launches ga_kernel for R ranks over x of element type X. */
template <typename X>
static void ga_launch(mc_cuda *c, const GaArgs &a, dim3 grid) {
    static const char *name = "gemm_f32 A gradient";
    if (a.R <= 16) cu_launch(c, ga_kernel<1, X>, grid, dim3(GA_THREADS), 0, a, name);
    else if (a.R <= 32) cu_launch(c, ga_kernel<2, X>, grid, dim3(GA_THREADS), 0, a, name);
    else cu_launch(c, ga_kernel<3, X>, grid, dim3(GA_THREADS), 0, a, name);
}

bool cu_ga_run(mc_cuda *c, int R, int N, int M, float alpha, const float *T, int ldt,
               const float *x, int ldx, float *gA, int ldg) {
    if (!c->ga_on || M < 256 || R < 4 || R > 16 * GA_RT || R % 4 || N % GA_BN || ldt % 4 ||
        ldx % 8 || ldg % 2 || !cu_aligned16(T) || ((uintptr_t)gA & 7u))
        return false;
    const size_t nx = (size_t)(M - 1) * (size_t)ldx + (size_t)N;
    const size_t nt = (size_t)(M - 1) * (size_t)ldt + (size_t)R;
    const size_t ng = (size_t)(R - 1) * (size_t)ldg + (size_t)N;
    const bf16 *x16 = dual_dy16(c, x, M, ldx);
    /* T (and an x without a bf16 view) are read in f32: not packed ranges; gA is written
     * while T and x are read */
    if ((x16 ? !cu_aligned16(x16) : !cu_aligned16(x) || cu_packed_find(c, x, nx)) ||
        cu_packed_find(c, T, nt) || cu_f32_overlap(gA, ng, T, nt) ||
        cu_f32_overlap(gA, ng, x, nx))
        return false;
    /* splits of the rows so that the grid fills about two blocks an SM */
    const int tiles = N / GA_BN, steps = (M + GA_BK - 1) / GA_BK;
    int splits = (2 * c->n_sm + tiles - 1) / tiles;
    if (splits > steps) splits = steps;
    if (splits < 1) splits = 1;
    const int rows = (steps + splits - 1) / splits * GA_BK;
    const dim3 grid((unsigned)tiles, (unsigned)((M + rows - 1) / rows));
    GaArgs a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.x = x16 ? (const void *)x16 : (const void *)x;
    a.gA = gA;
    a.M = M;
    a.N = N;
    a.R = R;
    a.ldt = ldt;
    a.ldx = ldx;
    a.ldg = ldg;
    a.rows = rows;
    a.alpha = alpha;
    cu_note_write(c, gA, ng * sizeof(float));
    if (x16) ga_launch<bf16>(c, a, grid);
    else ga_launch<float>(c, a, grid);
    c->n_ga++;
    return true;
}
