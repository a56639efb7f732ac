/* cuda_gemm_f32.cu - gemm_f32, the f32 GEMMs of the LoRA paths. Training-sized products
 * (CU_LORA_LT_ROWS or more token rows) run on the tensor cores through cu_gemm_lt, in bf16
 * when the wide token operand has a bf16 shadow, else in TF32;
 * smaller LoRA shapes (one side of rank r <= 32) take the skinny f32 kernels below, the
 * rest cuBLAS SGEMM. */
#include "cuda_internal.h"

/* ---- skinny f32 GEMMs (the LoRA shapes) ----
 * Each kernel streams its one large operand once, in 16-byte loads (8-byte at rank 32)
 * with the next loads in flight during the FMAs, and keeps the rank-r side in shared
 * memory or registers. Grids are sized to one wave of two 256-thread blocks per SM. A
 * reduction split over blocks leaves partial sums in part[], which cu_sum_parts
 * adds in split order, so every result is the same from run to run. */

struct SkinnyArgs {
    float *C;          /* [M, ldc] */
    const float *A, *B;
    float *part;       /* [splits, M, N] partial sums when the reduction is split */
    int M, N, K, lda, ldb, ldc;
    int tb;            /* op(B) = B^T */
    int tc;            /* split-K: A holds op(B) and B op(A) (C is [rank, wide]) */
    int vec, bvec;     /* rows of the streamed operand (A; C for lowrank) / of B take
                        * vector loads: aligned, leading dimension a multiple of 4 (2
                        * for 8-byte loads) */
    int krows;         /* rows of the reduction per split */
    int mrows;         /* rows of C per block (rows, lowrank) */
    float alpha, beta;
};

enum {
    SK_THREADS = 256,
    SK_SMEM = 12288 /* floats of shared memory a kernel may use (the 48 KB static limit) */
};

/* Rows of K whose op(B) rows skinny_rows_kernel stages at once, for N <= nt. */
static __host__ __device__ constexpr int rows_kspan(int nt) { return 8192 / nt; }

/* v[0..W) = p[0..W), zero from column `valid` on; W / 4 16-byte loads (W / 2 8-byte ones
 * for W = 2) when vec and all W columns are valid. */
template <int W>
static __device__ __forceinline__ void load_cols(float (&v)[W], const float *p, int valid,
                                                 bool vec) {
    if (vec && valid >= W) {
        if constexpr (W % 4 == 0) {
#pragma unroll
            for (int c = 0; c < W; c += 4) {
                const float4 x = *reinterpret_cast<const float4 *>(p + c);
                v[c] = x.x;
                v[c + 1] = x.y;
                v[c + 2] = x.z;
                v[c + 3] = x.w;
            }
        } else {
#pragma unroll
            for (int c = 0; c < W; c += 2) {
                const float2 x = *reinterpret_cast<const float2 *>(p + c);
                v[c] = x.x;
                v[c + 1] = x.y;
            }
        }
    } else {
#pragma unroll
        for (int c = 0; c < W; c++) v[c] = c < valid ? p[c] : 0.0f;
    }
}

/* p[0..valid) = v[0..valid) (W at most), the vector counterpart of load_cols. */
template <int W>
static __device__ __forceinline__ void store_cols(float *p, const float (&v)[W], int valid,
                                                  bool vec) {
    if (vec && valid >= W) {
        if constexpr (W % 4 == 0) {
#pragma unroll
            for (int c = 0; c < W; c += 4)
                *reinterpret_cast<float4 *>(p + c) = make_float4(v[c], v[c + 1], v[c + 2], v[c + 3]);
        } else {
#pragma unroll
            for (int c = 0; c < W; c += 2)
                *reinterpret_cast<float2 *>(p + c) = make_float2(v[c], v[c + 1]);
        }
    } else {
#pragma unroll
        for (int c = 0; c < W; c++)
            if (c < valid) p[c] = v[c];
    }
}

/* x[u][0..W) = src[(r + u) * ld .. + W) for u < U, zero from row `end` or column `valid`
 * on. */
template <int U, int W>
static __device__ __forceinline__ void load_rows(float (&x)[U][W], const float *src, int ld,
                                                 int r, int end, int valid, bool vec) {
#pragma unroll
    for (int u = 0; u < U; u++)
        load_cols<W>(x[u], src + (size_t)(r + u) * ld, r + u < end ? valid : 0, vec);
}

/* dst[i * RT + j] = src[(r0 + i) * ld + j] for i < rows, j < RT, zero from row `valid`
 * or column `cols` on: a block's rows of the rank-r operand, staged in shared memory. */
template <int RT>
static __device__ __forceinline__ void stage_rank_rows(float *dst, const float *src, int ld,
                                                       int r0, int rows, int valid, int cols) {
    for (int i = threadIdx.x; i < rows * RT; i += SK_THREADS) {
        const int r = i / RT, j = i % RT;
        dst[i] = r < valid && j < cols ? src[(size_t)(r0 + r) * ld + j] : 0.0f;
    }
}

/* One step of warp_sum_scatter: of v[0..2H) a lane keeps the half its bit `off` selects
 * and adds the partner's copy of it, in v[0..H). */
template <int V, int H>
static __device__ __forceinline__ void sum_scatter_step(float (&v)[V], int lane, int off) {
    const bool hi = lane & off;
#pragma unroll
    for (int i = 0; i < H; i++) {
        const float send = hi ? v[i] : v[i + H];
        const float keep = hi ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
}

/* Sums v[0..V) (V = 32 or 64) over the warp, leaving lane l the totals of v[l * V / 32
 * + i] in v[i], i < V / 32: five halving steps, each trading half of the values still
 * held with the lane `off` away (62 or 31 shuffles where V warp sums would take 5 V). */
template <int V>
static __device__ __forceinline__ void warp_sum_scatter(float (&v)[V], int lane) {
    constexpr int S = V / 32;
    sum_scatter_step<V, 16 * S>(v, lane, 16);
    sum_scatter_step<V, 8 * S>(v, lane, 8);
    sum_scatter_step<V, 4 * S>(v, lane, 4);
    sum_scatter_step<V, 2 * S>(v, lane, 2);
    sum_scatter_step<V, S>(v, lane, 1);
}

/* C[M, N] = alpha A[M, K] op(B) + beta C for N <= NT (8, 16 or 32), op(B) [K, N] stored
 * [K, ldb] or, tb, [N, ldb]. A block owns mrows rows of C and the split blockIdx.y of K
 * (krows long), whose op(B) rows it stages in shared memory as [n][k]; each warp takes
 * RW rows at a time and every lane 4 consecutive k of each 128-wide chunk (the next
 * chunk's loads go out before the FMAs of this one). The lanes' sums meet in
 * warp_sum_scatter, which leaves each lane RW * NT / 32 finished outputs. With several
 * splits the sums go to part[split], else straight to C. */
template <int NT>
static __global__ void __launch_bounds__(SK_THREADS, 2) skinny_rows_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int KC = 128, RW = NT == 32 ? 2 : 4, V = RW * NT, LD = rows_kspan(NT) + 4;
    __shared__ __align__(16) float Bs[NT * LD]; /* the pad of 4 halves the bank conflicts
                                                 * of the !tb staging */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kb = blockIdx.y * a.krows, nk = min(a.K - kb, a.krows);
    const int nkc = (nk + KC - 1) / KC * KC;
    const int me = min(a.M, (int)blockIdx.x * a.mrows + a.mrows);
    const bool vec = a.vec;
    int m = blockIdx.x * a.mrows + warp * RW;
    float x[RW][4];
    load_rows<RW, 4>(x, a.A + kb + 4 * lane, a.lda, m, me, nk - 4 * lane, vec);
    if (a.tb) { /* B[n][k]: 16-byte loads along k */
        for (int i = threadIdx.x; i < NT * (nkc / 4); i += SK_THREADS) {
            const int n = i / (nkc / 4), kk = 4 * (i % (nkc / 4));
            float v[4];
            load_cols<4>(v, a.B + (size_t)n * a.ldb + kb + kk, n < a.N ? nk - kk : 0, a.bvec);
            *reinterpret_cast<float4 *>(&Bs[n * LD + kk]) = make_float4(v[0], v[1], v[2], v[3]);
        }
    } else {    /* B[k][n]: 16-byte loads along n, stored transposed */
        for (int i = threadIdx.x; i < nkc * (NT / 4); i += SK_THREADS) {
            const int kk = i / (NT / 4), n = 4 * (i % (NT / 4));
            float v[4];
            load_cols<4>(v, a.B + (size_t)(kb + kk) * a.ldb + n, kk < nk ? a.N - n : 0, a.bvec);
#pragma unroll
            for (int j = 0; j < 4; j++) Bs[(n + j) * LD + kk] = v[j];
        }
    }
    __syncthreads();
    const int nch = nkc / KC;
    const bool split = gridDim.y > 1;
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; i++) acc[i] = 0.0f;
    for (; m < me; m += 8 * RW) {
        for (int ch = 0; ch < nch; ch++) {
            /* the next chunk of these rows, or the first of the warp's next rows */
            const bool last = ch + 1 == nch;
            const int kn = last ? 4 * lane : (ch + 1) * KC + 4 * lane;
            float xn[RW][4];
            load_rows<RW, 4>(xn, a.A + kb + kn, a.lda, last ? m + 8 * RW : m, me, nk - kn, vec);
            const float *bs = Bs + ch * KC + 4 * lane;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float4 b = *reinterpret_cast<const float4 *>(bs + n * LD);
#pragma unroll
                for (int r = 0; r < RW; r++) {
                    float t = acc[r * NT + n];
                    t = fmaf(x[r][0], b.x, t);
                    t = fmaf(x[r][1], b.y, t);
                    t = fmaf(x[r][2], b.z, t);
                    t = fmaf(x[r][3], b.w, t);
                    acc[r * NT + n] = t;
                }
            }
#pragma unroll
            for (int r = 0; r < RW; r++)
#pragma unroll
                for (int j = 0; j < 4; j++) x[r][j] = xn[r][j];
        }
        warp_sum_scatter<V>(acc, lane);
#pragma unroll
        for (int i = 0; i < V / 32; i++) {
            const int e = lane * (V / 32) + i, mr = m + e / NT, n = e % NT;
            if (mr < me && n < a.N) {
                if (split) {
                    a.part[((size_t)blockIdx.y * a.M + mr) * a.N + n] = acc[i];
                } else {
                    float *cp = a.C + (size_t)mr * a.ldc + n;
                    *cp = a.beta == 0.0f ? a.alpha * acc[i] : a.alpha * acc[i] + a.beta * *cp;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < V; i++) acc[i] = 0.0f;
    }
}

/* Split-K sums for ta, !tb, where one operand is wide (W columns, streamed) and the other
 * has R <= RT (8, 16 or 32) columns, the LoRA rank: A holds the wide one and B the rank
 * one, and C is [W, R] or, tc, [R, W]. A block owns 32 * CW wide columns and the split
 * blockIdx.y of K (krows rows, a multiple of 8 U): the rank operand's rows sit in shared
 * memory, each lane streams its CW columns U rows at a time (the next rows' loads go out
 * before the FMAs of these) into CW x RT sums, and the eight warps' sums are added in
 * shared memory in a fixed order. With several splits the sums go to part[split] (laid
 * out like C), else straight to C. */
template <int RT>
static __global__ void __launch_bounds__(SK_THREADS, 2) skinny_splitk_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int CW = 64 / RT, U = 16 / CW, V = CW * RT;
    __shared__ __align__(16) float sm[SK_SMEM]; /* the rank rows, then the warps' sums */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int W = a.tc ? a.N : a.M, R = a.tc ? a.M : a.N;
    const int w0 = (blockIdx.x * 32 + lane) * CW, wv = W - w0;
    const int kb = blockIdx.y * a.krows, ke = min(a.K, kb + a.krows);
    const bool vec = a.vec;
    int k = kb + warp * U;
    float x[U][CW];
    load_rows<U, CW>(x, a.A + w0, a.lda, k, ke, wv, vec);
    stage_rank_rows<RT>(sm, a.B, a.ldb, kb, a.krows, ke - kb, R);
    __syncthreads();
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; i++) acc[i] = 0.0f;
    for (; k < ke; k += 8 * U) {
        float xn[U][CW];
        load_rows<U, CW>(xn, a.A + w0, a.lda, k + 8 * U, ke, wv, vec);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float *s = sm + (k + u - kb) * RT;
#pragma unroll
            for (int jq = 0; jq < RT; jq += 4) {
                const float4 s4 = *reinterpret_cast<const float4 *>(s + jq);
#pragma unroll
                for (int c = 0; c < CW; c++) {
                    float *t = acc + c * RT + jq;
                    t[0] = fmaf(x[u][c], s4.x, t[0]);
                    t[1] = fmaf(x[u][c], s4.y, t[1]);
                    t[2] = fmaf(x[u][c], s4.z, t[2]);
                    t[3] = fmaf(x[u][c], s4.w, t[3]);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int c = 0; c < CW; c++) x[u][c] = xn[u][c];
    }
    /* warps h..2h-1 hand their sums to warps 0..h-1, h = 4, 2, 1 */
    for (int h = 4; h >= 1; h >>= 1) {
        __syncthreads(); /* sm is free: the rank rows or the last sums are consumed */
        if (warp >= h && warp < 2 * h) {
#pragma unroll
            for (int i = 0; i < V; i++) sm[((warp - h) * V + i) * 32 + lane] = acc[i];
        }
        __syncthreads();
        if (warp < h) {
#pragma unroll
            for (int i = 0; i < V; i++) acc[i] += sm[(warp * V + i) * 32 + lane];
        }
    }
    if (warp != 0) return;
    const bool split = gridDim.y > 1;
#pragma unroll
    for (int c = 0; c < CW; c++) {
#pragma unroll
        for (int j = 0; j < RT; j++) {
            if (c >= wv || j >= R) continue;
            const int mi = a.tc ? j : w0 + c, ni = a.tc ? w0 + c : j;
            const float s = acc[c * RT + j];
            if (split) {
                a.part[((size_t)blockIdx.y * a.M + mi) * a.N + ni] = s;
            } else {
                float *cp = a.C + (size_t)mi * a.ldc + ni;
                *cp = a.beta == 0.0f ? a.alpha * s : a.alpha * s + a.beta * *cp;
            }
        }
    }
}

struct PartsArgs {
    float *C;          /* [M, ldc] */
    const float *part; /* [parts, M, N] */
    int M, N, ldc, parts;
    float alpha, beta;
};

/* C[m, n] = alpha sum_p part[p, m, n] + beta C[m, n], the parts added in order. */
static __global__ void parts_sum_kernel(const PartsArgs a) {
    cu_dep_wait();
    const size_t total = (size_t)a.M * a.N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
#pragma unroll 8
        for (int p = 0; p < a.parts; p++) s += a.part[(size_t)p * total + i];
        float *cp = a.C + (i / a.N) * a.ldc + i % a.N;
        *cp = a.beta == 0.0f ? a.alpha * s : a.alpha * s + a.beta * *cp;
    }
}

void cu_sum_parts(mc_cuda *c, float *C, int ldc, const float *part, int M, int N, int parts,
                  float alpha, float beta, const char *name) {
    PartsArgs a;
    memset(&a, 0, sizeof a);
    a.C = C;
    a.part = part;
    a.M = M;
    a.N = N;
    a.ldc = ldc;
    a.parts = parts;
    a.alpha = alpha;
    a.beta = beta;
    cu_launch(c, parts_sum_kernel, dim3(cu_blocks((size_t)M * N, 256, (unsigned)c->n_sm * 8)),
              dim3(256), 0, a, name);
}

/* C[M, N] = alpha T[M, K] op(B) + beta C for a small K <= KT (8, 16 or 32, the LoRA
 * rank) and a wide C: a block owns mrows rows of a slab of 32 * CW columns. The slab of
 * op(B) is staged in shared memory (coalesced) and each lane keeps its K x CW part in
 * registers; T's rows sit in shared memory, and each lane streams its CW columns of C U
 * rows at a time (the next rows' loads go out before the FMAs of these), so C is read
 * and written once. */
template <int KT>
static __global__ void __launch_bounds__(SK_THREADS, 2) lowrank_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int CW = 64 / KT, U = 8 / CW, SW = 32 * CW + 4, SLAB = KT * SW;
    /* T's rows from the start, the op(B) slab [KT][SW] at the end (its pad of 4 cuts the
     * bank conflicts of the tb staging to two-way) */
    __shared__ __align__(16) float sm[SK_SMEM];
    float *const slab = sm + SK_SMEM - SLAB;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = blockIdx.x * 32 * CW, n0 = nb + lane * CW, nv = a.N - n0;
    const int m0 = blockIdx.y * a.mrows, me = min(a.M, m0 + a.mrows);
    const bool vec = a.vec, rd = a.beta != 0.0f;
    float *const Cn = a.C + n0;
    int m = m0 + warp * U;
    float cv[U][CW];
    load_rows<U, CW>(cv, Cn, a.ldc, m, rd ? me : m, nv, vec);
    for (int i = threadIdx.x; i < KT * 32 * CW; i += SK_THREADS) {
        int k, nn;
        if (a.tb) { /* B[n][k]: consecutive threads read consecutive k */
            nn = i / KT;
            k = i % KT;
        } else {    /* B[k][n] */
            k = i / (32 * CW);
            nn = i % (32 * CW);
        }
        const int n = nb + nn;
        slab[k * SW + nn] = k < a.K && n < a.N
                                ? a.B[a.tb ? (size_t)n * a.ldb + k : (size_t)k * a.ldb + n]
                                : 0.0f;
    }
    float b[KT][CW];
    const auto load_b = [&] {
#pragma unroll
        for (int k = 0; k < KT; k++) load_cols<CW>(b[k], slab + k * SW + lane * CW, CW, true);
    };
    /* T's rows reach into the slab: take it into registers first */
    const bool overlap = a.mrows * KT > SK_SMEM - SLAB;
    if (overlap) {
        __syncthreads();
        load_b();
        __syncthreads();
    }
    stage_rank_rows<KT>(sm, a.A, a.lda, m0, me - m0, me - m0, a.K);
    __syncthreads();
    if (!overlap) load_b();
    if (nv <= 0) return;
    for (; m < me; m += 8 * U) {
        float cn[U][CW];
        load_rows<U, CW>(cn, Cn, a.ldc, m + 8 * U, rd ? me : m, nv, vec);
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (m + u >= me) break;
            const float *t = sm + (m + u - m0) * KT;
            float acc[CW];
#pragma unroll
            for (int c = 0; c < CW; c++) acc[c] = 0.0f;
#pragma unroll
            for (int kq = 0; kq < KT; kq += 4) {
                const float4 t4 = *reinterpret_cast<const float4 *>(t + kq);
#pragma unroll
                for (int c = 0; c < CW; c++) {
                    acc[c] = fmaf(t4.x, b[kq][c], acc[c]);
                    acc[c] = fmaf(t4.y, b[kq + 1][c], acc[c]);
                    acc[c] = fmaf(t4.z, b[kq + 2][c], acc[c]);
                    acc[c] = fmaf(t4.w, b[kq + 3][c], acc[c]);
                }
            }
#pragma unroll
            for (int c = 0; c < CW; c++)
                acc[c] = rd ? a.alpha * acc[c] + a.beta * cv[u][c] : a.alpha * acc[c];
            store_cols<CW>(Cn + (size_t)(m + u) * a.ldc, acc, nv, vec);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int c = 0; c < CW; c++) cv[u][c] = cn[u][c];
    }
}

/* Whether p is aligned for the vector loads of `cols` floats (16 bytes, 8 for 2). */
static bool vec_ok(const void *p, int ld, int cols) {
    const int w = cols >= 4 ? 4 : 2;
    return ld % w == 0 && ((uintptr_t)p & (uintptr_t)(w * sizeof(float) - 1)) == 0;
}

/* Token rows from which a LoRA product runs in TF32 through cuBLASLt. */
enum { CU_LORA_LT_ROWS = 256 };

/* Runs the skinny kernels when the shape is one of the LoRA ones; false otherwise. */
static bool gemm_f32_skinny(mc_cuda *c, bool ta, bool tb, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *B, int ldb, float beta, float *C,
                            int ldc) {
    const int wave = 2 * c->n_sm; /* blocks resident at once */
    SkinnyArgs a;
    memset(&a, 0, sizeof a);
    a.C = C;
    a.A = A;
    a.B = B;
    a.M = M;
    a.N = N;
    a.K = K;
    a.lda = lda;
    a.ldb = ldb;
    a.ldc = ldc;
    a.tb = tb ? 1 : 0;
    a.alpha = alpha;
    a.beta = beta;
    if (!ta && N <= 32 && M >= 64) {
        /* K split so each split's op(B) rows fit in shared memory; rows shared out so the
         * splits make about one wave */
        const int nt = N <= 8 ? 8 : N <= 16 ? 16 : 32, rw = nt == 32 ? 2 : 4;
        int splits = (K + rows_kspan(nt) - 1) / rows_kspan(nt);
        a.krows = ((K + splits - 1) / splits + 127) / 128 * 128;
        splits = (K + a.krows - 1) / a.krows;
        const int groups = (M + rw - 1) / rw, tiles = wave / splits > 1 ? wave / splits : 1;
        a.mrows = ((groups + tiles - 1) / tiles + 7) / 8 * 8 * rw;
        a.vec = vec_ok(A, lda, 4);
        a.bvec = vec_ok(B, ldb, 4);
        if (splits > 1) {
            a.part = (float *)cu_scratch(c, CU_S_GEMM, (size_t)splits * M * N * sizeof(float), false);
            if (!a.part) return true; /* the failure is recorded */
        }
        const dim3 grid((unsigned)((M + a.mrows - 1) / a.mrows), (unsigned)splits);
        if (nt == 8) cu_launch(c, skinny_rows_kernel<8>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 rows");
        else if (nt == 16) cu_launch(c, skinny_rows_kernel<16>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 rows");
        else cu_launch(c, skinny_rows_kernel<32>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 rows");
    } else if (!ta && K <= 32 && N >= 64 && M >= 16) {
        /* column slabs, each split in row tiles so the grid makes about one wave */
        const int kt = K <= 8 ? 8 : K <= 16 ? 16 : 32, cw = 64 / kt, step = 8 * (8 / cw);
        const int slabs = (N + 32 * cw - 1) / (32 * cw), tiles = wave / slabs > 1 ? wave / slabs : 1;
        a.mrows = ((M + tiles - 1) / tiles + step - 1) / step * step;
        if (a.mrows > SK_SMEM / kt) a.mrows = SK_SMEM / kt;
        a.vec = vec_ok(C, ldc, cw);
        const dim3 grid((unsigned)slabs, (unsigned)((M + a.mrows - 1) / a.mrows));
        if (kt == 8) cu_launch(c, lowrank_kernel<8>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 lowrank");
        else if (kt == 16) cu_launch(c, lowrank_kernel<16>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 lowrank");
        else cu_launch(c, lowrank_kernel<32>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 lowrank");
    } else if (ta && !tb && (M <= 32 || N <= 32) && K >= 256) {
        /* the wide operand goes in A; column slabs, K split so the grid makes about one
         * wave with each split's rank rows in shared memory */
        a.tc = M <= 32;
        a.A = a.tc ? B : A;
        a.lda = a.tc ? ldb : lda;
        a.B = a.tc ? A : B;
        a.ldb = a.tc ? lda : ldb;
        const int W = a.tc ? N : M, R = a.tc ? M : N;
        const int rt = R <= 8 ? 8 : R <= 16 ? 16 : 32, cw = 64 / rt, step = 8 * (16 / cw);
        const int slabs = (W + 32 * cw - 1) / (32 * cw);
        int splits = wave / slabs > 32 ? 32 : wave / slabs > 1 ? wave / slabs : 1;
        a.krows = ((K + splits - 1) / splits + step - 1) / step * step;
        if (a.krows > SK_SMEM / rt) a.krows = SK_SMEM / rt;
        splits = (K + a.krows - 1) / a.krows;
        a.vec = vec_ok(a.A, a.lda, cw);
        if (splits > 1) {
            a.part = (float *)cu_scratch(c, CU_S_GEMM, (size_t)splits * M * N * sizeof(float), false);
            if (!a.part) return true; /* the failure is recorded */
        }
        const dim3 grid((unsigned)slabs, (unsigned)splits);
        if (rt == 8) cu_launch(c, skinny_splitk_kernel<8>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 splitk");
        else if (rt == 16) cu_launch(c, skinny_splitk_kernel<16>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 splitk");
        else cu_launch(c, skinny_splitk_kernel<32>, grid, dim3(SK_THREADS), 0, a, "gemm_f32 splitk");
    } else {
        return false;
    }
    if (a.part)
        cu_sum_parts(c, C, ldc, a.part, M, N, (K + a.krows - 1) / a.krows, alpha, beta,
                     "gemm_f32 reduce");
    return true;
}

/* Bytes spanned by a row-major [rows, cols] matrix with leading dimension ld. */
static size_t span_bytes(int rows, int cols, int ld) {
    if (rows <= 0 || cols <= 0) return 0;
    return ((size_t)(rows - 1) * (size_t)ld + (size_t)cols) * sizeof(float);
}

/* bf16 operands for a training-sized LoRA product whose wide token operand (A, or for a
 * sum over rows the wider of A and B) already has a bf16 shadow (its producer wrote one,
 * or a frozen GEMM converted it): the other operand through cu_small_as. PEFT multiplies
 * these in bf16 too; reading half the bytes of the wide operand is what pays. false when
 * the wide one has no shadow (TF32 on the f32 operands then) or no memory. na and nb are
 * the elements A and B span. */
static bool lora_bf16_ops(mc_cuda *c, bool ta, int M, int N, size_t na, size_t nb,
                          const float *A, const float *B, const void **a16, const void **b16) {
    if (!ta || M >= N) {
        *a16 = cu_shadow_find(c, A, na);
        *b16 = *a16 ? cu_small_as(c, B, nb) : NULL;
    } else {
        *b16 = cu_shadow_find(c, B, nb);
        *a16 = *b16 ? cu_small_as(c, A, na) : NULL;
    }
    return *a16 && *b16;
}

/* The rank-r update u of an [M, N] output on the tensor cores (TF32), as gemm_f32 runs it. */
static void lowrank_lt(mc_cuda *c, const cu_lora_upd &u, int M, int N) {
    const cu_lt_shape s = {u.tb != 0, false, true, N, M, u.K, u.ldb, u.lda, N, CUDA_R_32F, true,
                           false, false};
    cu_break(c);
    (void)cu_gemm_lt(c, s, u.alpha, u.B, u.A, u.C, "lt gemm_f32 lowrank");
}

/* The rank-r update u of a packed [M, N] output (u.C16) in bf16 on the tensor cores: A and
 * op(B) converted to bf16 (cu_small_as), f32 sums, C read and written in bf16. */
void cu_lowrank16(mc_cuda *c, const cu_lora_upd &u, int M, int N) {
    size_t na, nb;
    cu_lora_spans(u, M, N, &na, &nb);
    const void *a16 = cu_small_as(c, u.A, na), *b16 = a16 ? cu_small_as(c, u.B, nb) : NULL;
    if (!b16) {
        cu_set_error(c, MC_ERR_OOM, "gemm_f32: out of device memory for a bf16 copy of a "
                     "rank-%d update's operands", u.K);
        return;
    }
    const cu_lt_shape s = {u.tb != 0, false, true, N, M, u.K, u.ldb, u.lda, N, CUDA_R_16BF, false,
                           true, false};
    cu_break(c);
    (void)cu_gemm_lt(c, s, u.alpha, b16, a16, u.C16, "lt gemm_f32 lowrank bf16");
}

void cu_flush_lora(mc_cuda *c, const cu_pending *p) {
    for (int i = 0; i < p->n_lu; i++) {
        if (p->lu[i].C16) cu_lowrank16(c, p->lu[i], p->lu_M, p->lu[i].N);
        else lowrank_lt(c, p->lu[i], p->lu_M, p->lu[i].N);
    }
}

/* A and B (sa and sb bytes) in f32 for a product that reads them so. */
static void unpack_ops(mc_cuda *c, const float *A, size_t sa, const float *B, size_t sb) {
    cu_unpack(c, A, sa);
    cu_unpack(c, B, sb);
}

/* Whether [a, a + an) and [b, b + bn) (bytes) overlap. */
static bool spans_meet(const void *a, size_t an, const void *b, size_t bn) {
    return (uintptr_t)a < (uintptr_t)b + bn && (uintptr_t)b < (uintptr_t)a + an;
}

/* Whether held update f ([M, f.N]) and update u ([M, N]) are independent: neither writes
 * what the other reads or writes. */
static bool upd_apart(const cu_lora_upd &f, const cu_lora_upd &u, int M) {
    const size_t fc = (size_t)M * (size_t)f.N * sizeof(float);
    const size_t uc = (size_t)M * (size_t)u.N * sizeof(float);
    size_t fa, fb, ua, ub; /* floats */
    cu_lora_spans(f, M, f.N, &fa, &fb);
    cu_lora_spans(u, M, u.N, &ua, &ub);
    return !spans_meet(f.C, fc, u.C, uc) && !spans_meet(f.C, fc, u.A, ua * sizeof(float)) &&
           !spans_meet(f.C, fc, u.B, ub * sizeof(float)) &&
           !spans_meet(u.C, uc, f.A, fa * sizeof(float)) &&
           !spans_meet(u.C, uc, f.B, fb * sizeof(float));
}

/* Holds C += alpha A op(B), a rank-r update (K <= 32) of a training-sized output with no gap
 * between rows, for the op that may read C next: the SwiGLU or its backward (c->lsw_fwd,
 * lsw_bwd) or the RoPE of q and k (c->qkvupd_on). Up to three independent ones over the same
 * rows join (gate and up; q, k and v); anything else launches them (cu_pending_flush).
 * false when the product is not such an update. */
static bool lora_hold(mc_cuda *c, bool ta, bool tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      __nv_bfloat16 *c16, int ldc, size_t sa, size_t sb) {
    cu_pending &p = c->pend;
    if (!(c->lsw_fwd || c->lsw_bwd || c->qkvupd_on) || !c->lora_lt || ta || beta != 1.0f ||
        K < 1 || K > 32 || M < CU_LORA_LT_ROWS || ldc != N || N % 4 != 0 || !cu_aligned16(C))
        return false;
    unpack_ops(c, A, sa, B, sb); /* the SwiGLU or RoPE that folds the update reads them in f32 */
    const cu_lora_upd u = {C, c16, A, B, lda, ldb, tb ? 1 : 0, K, alpha, N};
    if (p.kind == CU_PEND_LORA && p.n_lu < CU_LORA_HELD && p.lu_M == M) {
        bool apart = true;
        for (int i = 0; i < p.n_lu && apart; i++) apart = upd_apart(p.lu[i], u, M);
        if (apart) {
            p.lu[p.n_lu++] = u;
            if (p.lu_N != N) p.lu_N = 0; /* of different widths */
            return true;
        }
    }
    cu_pending_flush(c);
    p.kind = CU_PEND_LORA;
    p.lu[0] = u;
    p.n_lu = 1;
    p.lu_M = M;
    p.lu_N = N;
    return true;
}

/* gemm_f32 on context c (cu_gemm_f32; cu_flush_dual runs a held product through it). */
void cu_gemm_f32_c(mc_cuda *c, bool ta, bool tb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C,
                   int ldc) {
    size_t sa = ta ? span_bytes(K, M, lda) : span_bytes(M, K, lda);
    size_t sb = tb ? span_bytes(N, K, ldb) : span_bytes(K, N, ldb);
    size_t sc = span_bytes(M, N, ldc);
    if (M <= 0 || N <= 0) return;
    if ((sa && !cu_is_device(c, A, sa)) || (sb && !cu_is_device(c, B, sb)) ||
        !cu_is_device(c, C, sc)) {
        cu_set_error(c, MC_ERR_BACKEND, "gemm_f32: an operand (A %p, B %p, C %p) is not device "
                     "memory of this backend (scratch must come from be->alloc)", (const void *)A,
                     (const void *)B, (void *)C);
        return;
    }
    /* gB += s dy^T xa of a dy read in bf16 is held for the t = s dy B that follows (one
     * pass over dy) */
    if (c->pend.kind == CU_PEND_DUAL && !ta && !tb && beta == 0.0f &&
        cu_dual_take(c, M, N, K, alpha, A, lda, B, ldb, C, ldc))
        return;
    if (ta && !tb && beta == 1.0f && c->lora16 && !c->dual_busy &&
        cu_dual_hold(c, M, N, K, alpha, A, lda, B, ldb, C, ldc))
        return;
    /* a rank-r update of a packed output stays in bf16 (held for the SwiGLU that reads it) */
    __nv_bfloat16 *c16 =
        beta == 1.0f && ldc == N ? cu_packed_find(c, C, (size_t)M * (size_t)N) : NULL;
    if (c16 && !ta && K > 0) {
        /* the update of a held gate or up GEMM's output: that GEMM computes it */
        if (cu_mm_take(c, C, M, N, K, alpha, A, lda, B, ldb, tb)) return;
        cu_note_write_keep(c, C, sc);
        if (lora_hold(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, c16, ldc, sa, sb))
            return;
        const cu_lora_upd u = {C, c16, A, B, lda, ldb, tb ? 1 : 0, K, alpha, N};
        cu_lowrank16(c, u, M, N);
        return;
    }
    if (beta != 0.0f) cu_unpack(c, C, sc);
    cu_note_write(c, C, sc);
    if (lora_hold(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, NULL, ldc, sa, sb)) return;
    /* an A gradient's sum over rows of an x read in bf16: a kernel of its own */
    if (ta && !tb && beta == 1.0f && c->lora16 &&
        cu_ga_run(c, M, N, K, alpha, A, lda, B, ldb, C, ldc))
        return;
    if (c->lora_lt && K > 0 && (ta ? K : M) >= CU_LORA_LT_ROWS && (beta == 0.0f || beta == 1.0f)) {
        /* The token rows are M (x A^T, dy B, the rank-r updates) or K (the gradients'
         * sums over rows, op(A) = A^T). The tensor cores take the FMAs that bind the skinny
         * kernels from a width of 32 on (several projections' ranks side by side): in bf16
         * when the wide operand has a bf16 shadow (lora_bf16_ops), else in TF32 (10
         * mantissa bits, f32 sums). The rank-r updates stay TF32: their cost is C's f32
         * read and write. Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T. */
        static const char *const names[5] = {"lt gemm_f32 rows", "lt gemm_f32 splitk",
                                             "lt gemm_f32 lowrank", "lt gemm_f32 rows bf16",
                                             "lt gemm_f32 splitk bf16"};
        const void *a16 = NULL, *b16 = NULL;
        /* what is pending goes first: it may convert operands of its own into the slots
         * the bf16 copies below take */
        cu_pending_flush(c);
        const bool lo16 = c->lora16 && (ta || K > 64) &&
                          lora_bf16_ops(c, ta, M, N, sa / sizeof(float), sb / sizeof(float),
                                        A, B, &a16, &b16);
        if (lo16) cu_note_write(c, C, sc); /* a copy just made of an allocation holding C */
        else unpack_ops(c, A, sa, B, sb);
        const cu_lt_shape s = {tb, ta, beta != 0.0f, N, M, K, ldb, lda, ldc,
                               lo16 ? CUDA_R_16BF : CUDA_R_32F, !lo16, false, false};
        cu_break(c);
        (void)cu_gemm_lt(c, s, alpha, lo16 ? b16 : B, lo16 ? a16 : A, C,
                         names[(ta ? 1 : K <= 64 ? 2 : 0) + (lo16 ? 3 : 0)]);
        return;
    }
    unpack_ops(c, A, sa, B, sb);
    if (K > 0 && gemm_f32_skinny(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
    cu_break(c);
    static const char *const names[4] = {"cublas gemm_f32 NN", "cublas gemm_f32 NT",
                                         "cublas gemm_f32 TN", "cublas gemm_f32 TT"};
    int ps = cu_prof_begin(c, names[(ta ? 2 : 0) + (tb ? 1 : 0)]);
    /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T */
    (void)cu_check_blas(c, cublasSgemm(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                                       lda, &beta, C, ldc),
                        "gemm_f32");
    cu_prof_end(c, ps);
}

void cu_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    cu_gemm_f32_c(cu_ctx(be), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
