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
 * depend on the order blocks finish (as the attention backward's do). */
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

struct DualArgs {
    const bf16 *dy;   /* [M, ldy] */
    const float *xa;  /* [M, ldx]: x A^T, r columns */
    const float *B;   /* [N, ldb]: the adapter's B, r columns */
    float *gB;        /* [N, ldg] += alpha_b dy^T xa */
    float *t;         /* [M, ldt] = alpha_t dy B (cleared before the launch) */
    int M, N, r, ldy, ldx, ldb, ldg, ldt;
    float alpha_b, alpha_t;
    int tiles, chunks; /* column tiles of dy; blocks along them */
};

/* Starts the copies of dy's column tile `tile` (rows m0 .., zeros past M) into dst and of
 * the tile's rows of B (f32, r <= 16 columns; zeros from column r on) into bs. */
static __device__ __forceinline__ void du_load(const DualArgs &a, bf16 *dst, float *bs, int m0,
                                               int tile) {
    constexpr int C = DU_BN / 8; /* 16-byte chunks a row */
    const int n0 = tile * DU_BN;
#pragma unroll
    for (int j = 0; j < DU_BM * C / DU_THREADS; j++) {
        const int i = (int)threadIdx.x + j * DU_THREADS, r = i / C, c = i - r * C;
        const bool ok = m0 + r < a.M;
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

static __global__ void __launch_bounds__(DU_THREADS) dual_kernel(const DualArgs a) {
    extern __shared__ __align__(16) unsigned char du_smem[];
    bf16 *dyS = reinterpret_cast<bf16 *>(du_smem);    /* [2][DU_BM][DU_LD] */
    bf16 *xtS = dyS + 2 * DU_BM * DU_LD;               /* [DU_R][DU_LX]: xa^T */
    float *bS = reinterpret_cast<float *>(xtS + DU_R * DU_LX); /* [2][DU_BN][DU_LB]: B rows */
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g = lane >> 2, cq = lane & 3, mat = lane >> 3, rr = lane & 7;
    const int m0 = (int)blockIdx.y * DU_BM, first = (int)blockIdx.x;
    cu_dep_wait();
    if (first < a.tiles) du_load(a, dyS, bS, m0, first);
    /* xa^T of the block's rows, zeros past r and M */
    for (int i = (int)threadIdx.x; i < DU_R * DU_BM; i += DU_THREADS) {
        const int j = i / DU_BM, m = i - j * DU_BM;
        const float v = j < a.r && m0 + m < a.M ? a.xa[(size_t)(m0 + m) * a.ldx + j] : 0.0f;
        xtS[j * DU_LX + m] = __float2bfloat16(v);
    }
    float tacc[2][4];
#pragma unroll
    for (int i = 0; i < 2; i++) tacc[i][0] = tacc[i][1] = tacc[i][2] = tacc[i][3] = 0.0f;
    int buf = 0;
    for (int tile = first; tile < a.tiles; tile += a.chunks, buf ^= 1) {
        const int n0 = tile * DU_BN;
        const bf16 *cur = dyS + buf * DU_BM * DU_LD;
        const float *bs = bS + buf * DU_BN * DU_LB;
        if (tile + a.chunks < a.tiles) {
            du_load(a, dyS + (buf ^ 1) * DU_BM * DU_LD, bS + (buf ^ 1) * DU_BN * DU_LB, m0,
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
        if (m < a.M)
            atomicAdd(reinterpret_cast<float2 *>(a.t + (size_t)m * a.ldt + j),
                      make_float2(a.alpha_t * tacc[nt][0], a.alpha_t * tacc[nt][1]));
        if (m + 8 < a.M)
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

bool cu_dual_hold(mc_cuda *c, int N, int r, int M, float alpha, const float *dy, int ldy,
                  const float *xa, int ldx, float *gB, int ldg) {
    if (!c->dual_on || r < 4 || r > DU_R || r % 4 || N % DU_BN || ldy % 8 || ldg % 2 ||
        M < 256)
        return false;
    const bf16 *d16 = dual_dy16(c, dy, M, ldy);
    if (!d16 || !cu_aligned16(d16) || ((uintptr_t)gB & 7u) ||
        cu_packed_find(c, xa, (size_t)(M - 1) * (size_t)ldx + (size_t)r) ||
        cu_f32_overlap(gB, (size_t)(N - 1) * (size_t)ldg + (size_t)r, xa,
                       (size_t)(M - 1) * (size_t)ldx + (size_t)r))
        return false;
    cu_pending_flush(c);
    cu_pending &p = c->pend;
    p.kind = CU_PEND_DUAL;
    p.du_dy = dy;
    p.du_dy16 = d16;
    p.du_ldy = ldy;
    p.du_xa = xa;
    p.du_ldx = ldx;
    p.du_gB = gB;
    p.du_ldg = ldg;
    p.du_N = N;
    p.du_r = r;
    p.du_M = M;
    p.du_alpha = alpha;
    return true;
}

bool cu_dual_take(mc_cuda *c, int M, int r, int N, float alpha, const float *dy, int ldy,
                  const float *B, int ldb, float *t, int ldt) {
    const cu_pending &p = c->pend;
    if (p.kind != CU_PEND_DUAL || p.du_dy != dy || p.du_ldy != ldy || p.du_M != M ||
        p.du_N != N || p.du_r != r || ldt % 2 || ((uintptr_t)t & 7u) || ldb % 4 ||
        !cu_aligned16(B))
        return false;
    const size_t nt = (size_t)(M - 1) * (size_t)ldt + (size_t)r;
    const size_t nb = (size_t)(N - 1) * (size_t)ldb + (size_t)r;
    const size_t ng = (size_t)(N - 1) * (size_t)p.du_ldg + (size_t)r;
    const size_t nx = (size_t)(M - 1) * (size_t)p.du_ldx + (size_t)r;
    /* t is written while the others are read: it must meet none of them */
    if (cu_packed_find(c, B, nb) || cu_f32_overlap(t, nt, B, nb) ||
        cu_f32_overlap(t, nt, p.du_gB, ng) || cu_f32_overlap(t, nt, p.du_xa, nx) ||
        cu_f32_overlap(p.du_gB, ng, B, nb) || cu_f32_overlap(t, nt, dy, (size_t)M * ldy) ||
        cu_f32_overlap(p.du_gB, ng, dy, (size_t)M * ldy))
        return false;
    DualArgs a;
    memset(&a, 0, sizeof a);
    a.dy = (const bf16 *)p.du_dy16;
    a.xa = p.du_xa;
    a.B = B;
    a.gB = p.du_gB;
    a.t = t;
    a.M = M;
    a.N = N;
    a.r = r;
    a.ldy = ldy;
    a.ldx = p.du_ldx;
    a.ldb = ldb;
    a.ldg = p.du_ldg;
    a.ldt = ldt;
    a.alpha_b = p.du_alpha;
    a.alpha_t = alpha;
    a.tiles = N / DU_BN;
    /* one wave of two blocks an SM (a second, part-full wave would double the time) */
    const int rows = (M + DU_BM - 1) / DU_BM, wave = 2 * c->n_sm;
    a.chunks = wave / rows > 1 ? wave / rows : 1;
    if (a.chunks > a.tiles) a.chunks = a.tiles;
    c->pend.kind = CU_PEND_NONE; /* taken */
    cu_note_write(c, t, nt * sizeof(float));
    cu_note_write(c, a.gB, ng * sizeof(float));
    cu_break(c);
    if (!cu_check(c, cudaMemset2DAsync(t, (size_t)ldt * sizeof(float), 0,
                                       (size_t)r * sizeof(float), (size_t)M, c->stream),
                  "dual clear"))
        return true;
    cu_launch(c, dual_kernel, dim3((unsigned)a.chunks, (unsigned)rows), dim3(DU_THREADS),
              (unsigned)DU_SMEM, a, "gemm_f32 dual bf16");
    c->n_dual++;
    return true;
}

/* ---- the A gradients' sums over the token rows ----
 * gA += alpha T^T x for a group of projections (T = [t_1 .. t_n], [tokens, R] f32, R <= 48;
 * x [tokens, N] read in bf16 from its packed range or shadow, as the cuBLASLt product it
 * replaces reads it). cuBLASLt runs this [R x tokens] x [tokens x N] shape as a split-K
 * GEMM of a few dozen blocks. Here block (j, s) takes columns 128 j .. of x over its share
 * of the rows, 32 rows a step, the next two steps' tiles in flight (cp.async) while the
 * tensor cores (m16n8k16, bf16 operands, f32 sums) work on the current one; warp w owns
 * columns 32 w .. of the tile for all R ranks, and the block's [R, 128] sums go into gA
 * with vector atomics (the last bits depend on the order blocks finish, as the B
 * gradients' do). */
enum {
    GA_BN = 128,         /* columns of x a block */
    GA_BK = 32,          /* token rows a step */
    GA_ST = 3,           /* steps' tiles in shared memory */
    GA_RT = 3,           /* ranks in tiles of 16: up to 48 */
    GA_THREADS = 128,
    GA_LX = GA_BN + 8,   /* shared-memory row of an x tile (bf16) */
    GA_LT = 16 * GA_RT + 4 /* shared-memory row of a T tile (f32) */
};

struct GaArgs {
    const float *T;  /* [M, ldt]: R columns */
    const bf16 *x;   /* [M, ldx] */
    float *gA;       /* [R, ldg] += alpha T^T x */
    int M, N, R, ldt, ldx, ldg;
    int rows;        /* token rows a block: a multiple of GA_BK */
    float alpha;
};

/* Starts the copies of the x tile (rows m0 .. m0 + GA_BK, zeros from m1 on; columns n0 ..)
 * and of the same rows of T (R columns) into xs and ts; the caller commits. */
static __device__ __forceinline__ void ga_load(const GaArgs &a, bf16 *xs, float *ts, int m0,
                                               int m1, int n0) {
    constexpr int C = GA_BN / 8; /* 16-byte chunks of an x row */
#pragma unroll
    for (int j = 0; j < GA_BK * C / GA_THREADS; j++) {
        const int i = (int)threadIdx.x + j * GA_THREADS, r = i / C, c = i - r * C;
        const bool ok = m0 + r < m1;
        cu_cp_async16(xs + r * GA_LX + c * 8,
                      ok ? a.x + (size_t)(m0 + r) * a.ldx + n0 + c * 8 : a.x, ok ? 16 : 0);
    }
    const int c4 = a.R / 4; /* 16-byte chunks of a T row */
    for (int i = (int)threadIdx.x; i < GA_BK * c4; i += GA_THREADS) {
        const int r = i / c4, c = i - r * c4;
        const bool ok = m0 + r < m1;
        cu_cp_async16(ts + r * GA_LT + c * 4, ok ? a.T + (size_t)(m0 + r) * a.ldt + c * 4 : a.T,
                      ok ? 16 : 0);
    }
}

template <int RT>
static __global__ void __launch_bounds__(GA_THREADS) ga_kernel(const GaArgs a) {
    __shared__ __align__(16) bf16 xs[GA_ST][GA_BK * GA_LX];
    __shared__ __align__(16) float ts[GA_ST][GA_BK * GA_LT];
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g = lane >> 2, cq = lane & 3, mat = lane >> 3, rr = lane & 7;
    const int n0 = (int)blockIdx.x * GA_BN, m0 = (int)blockIdx.y * a.rows;
    const int m1 = min(m0 + a.rows, a.M), steps = (m1 - m0 + GA_BK - 1) / GA_BK;
    float acc[RT][4][4];
#pragma unroll
    for (int i = 0; i < RT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    cu_dep_wait();
    /* a commit group a step (empty past the last), so step s is in when at most
     * GA_ST - 1 groups are pending */
    for (int i = 0; i < GA_ST - 1; i++) {
        if (i < steps) ga_load(a, xs[i], ts[i], m0 + i * GA_BK, m1, n0);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    for (int s = 0; s < steps; s++) {
        const int buf = s % GA_ST;
        if (s + GA_ST - 1 < steps) {
            const int nb = (s + GA_ST - 1) % GA_ST;
            ga_load(a, xs[nb], ts[nb], m0 + (s + GA_ST - 1) * GA_BK, m1, n0);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group %0;\n" ::"n"(GA_ST - 1) : "memory");
        __syncthreads();
        const float *tt = ts[buf];
#pragma unroll
        for (int kk = 0; kk < GA_BK / 16; kk++) {
            /* x rows kk*16 .. as the B operand (k = token row, n = column): the fragments of
             * this warp's four 8-column tiles */
            uint32_t b[2][4];
#pragma unroll
            for (int h = 0; h < 2; h++)
                cu_ldsm_x4_t(b[h], xs[buf] + (kk * 16 + (mat & 1) * 8 + rr) * GA_LX + warp * 32 +
                                       h * 16 + (mat >> 1) * 8);
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

bool cu_ga_run(mc_cuda *c, int R, int N, int M, float alpha, const float *T, int ldt,
               const float *x, int ldx, float *gA, int ldg) {
    if (!c->ga_on || M < 256 || R < 4 || R > 16 * GA_RT || R % 4 || N % GA_BN || ldt % 4 ||
        ldx % 8 || ldg % 2 || !cu_aligned16(T) || ((uintptr_t)gA & 7u))
        return false;
    const size_t nx = (size_t)(M - 1) * (size_t)ldx + (size_t)N;
    const size_t nt = (size_t)(M - 1) * (size_t)ldt + (size_t)R;
    const size_t ng = (size_t)(R - 1) * (size_t)ldg + (size_t)N;
    const bf16 *x16 = dual_dy16(c, x, M, ldx);
    /* T is read in f32: not a packed range; gA is written while T and x are read */
    if (!x16 || !cu_aligned16(x16) || cu_packed_find(c, T, nt) || cu_f32_overlap(gA, ng, T, nt) ||
        cu_f32_overlap(gA, ng, x, nx))
        return false;
    GaArgs a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.x = x16;
    a.gA = gA;
    a.M = M;
    a.N = N;
    a.R = R;
    a.ldt = ldt;
    a.ldx = ldx;
    a.ldg = ldg;
    a.alpha = alpha;
    /* splits of the rows so that the grid fills about two blocks an SM */
    const int tiles = N / GA_BN, steps = (M + GA_BK - 1) / GA_BK;
    int splits = (2 * c->n_sm + tiles - 1) / tiles;
    if (splits > steps) splits = steps;
    if (splits < 1) splits = 1;
    a.rows = (steps + splits - 1) / splits * GA_BK;
    splits = (M + a.rows - 1) / a.rows;
    cu_note_write(c, gA, ng * sizeof(float));
    const dim3 grid((unsigned)tiles, (unsigned)splits);
    if (R <= 16) cu_launch(c, ga_kernel<1>, grid, dim3(GA_THREADS), 0, a, "gemm_f32 A gradient");
    else if (R <= 32) cu_launch(c, ga_kernel<2>, grid, dim3(GA_THREADS), 0, a, "gemm_f32 A gradient");
    else cu_launch(c, ga_kernel<3>, grid, dim3(GA_THREADS), 0, a, "gemm_f32 A gradient");
    c->n_ga++;
    return true;
}
