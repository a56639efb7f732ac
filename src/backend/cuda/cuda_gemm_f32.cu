/* cuda_gemm_f32.cu - gemm_f32, the f32 GEMMs of the LoRA paths: skinny kernels for the
 * LoRA shapes (one side of rank r <= 32), cuBLAS SGEMM otherwise. */
#include "cuda_internal.h"

/* ---- skinny f32 GEMMs (the LoRA shapes) ---- */

struct SkinnyArgs {
    float *C;          /* [M, ldc] */
    const float *A, *B;
    float *part;       /* [splits, M, N] (split-K kernel) */
    int M, N, K, lda, ldb, ldc, tb, krows;
    float alpha, beta;
};

/* C[M, N] = alpha A[M, K] op(B) + beta C for N <= 32 (A row-major, op(B) [K, N] stored
 * [K, ldb] or, tb, [N, ldb]): a block of 128 threads owns 32 rows and all N columns and
 * walks K in chunks of 64 through shared memory; each thread sums 8 outputs. */
static __global__ void __launch_bounds__(128) skinny_rows_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int TM = 32, KC = 64;
    __shared__ float As[TM][KC + 1], Bs[KC][33];
    const int t = threadIdx.x, m0 = blockIdx.x * TM;
    const int mi = t >> 2, cj = t & 3;
    float acc[8];
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
    for (int k0 = 0; k0 < a.K; k0 += KC) {
        for (int i = t; i < TM * KC; i += 128) {
            int r = i / KC, kk = i % KC, m = m0 + r, k = k0 + kk;
            As[r][kk] = (m < a.M && k < a.K) ? a.A[(size_t)m * a.lda + k] : 0.0f;
        }
        for (int i = t; i < KC * 32; i += 128) {
            int kk, n;
            if (a.tb) { /* B[n, k]: consecutive threads read consecutive k */
                n = i / KC;
                kk = i % KC;
            } else {    /* B[k, n] */
                kk = i / 32;
                n = i % 32;
            }
            int k = k0 + kk;
            float v = 0.0f;
            if (n < a.N && k < a.K) v = a.tb ? a.B[(size_t)n * a.ldb + k] : a.B[(size_t)k * a.ldb + n];
            Bs[kk][n] = v;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < KC; kk++) {
            const float av = As[mi][kk];
#pragma unroll
            for (int j = 0; j < 8; j++) acc[j] = fmaf(av, Bs[kk][cj + 4 * j], acc[j]);
        }
        __syncthreads();
    }
    const int m = m0 + mi;
    if (m >= a.M) return;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int n = cj + 4 * j;
        if (n >= a.N) continue;
        float *cp = a.C + (size_t)m * a.ldc + n;
        *cp = a.beta == 0.0f ? a.alpha * acc[j] : a.alpha * acc[j] + a.beta * *cp;
    }
}

/* Partial sums over rows [blockIdx.y * krows, +krows) of P[m, n] = sum_k A[k, m] B[k, n]
 * (A stored [K, lda], B stored [K, ldb]) for a 32 x 64 (SMALL_M) or 64 x 32 output tile;
 * 256 threads, 8 outputs each; written to part[blockIdx.y]. */
template <bool SMALL_M>
static __global__ void __launch_bounds__(256) skinny_splitk_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int TMt = SMALL_M ? 32 : 64, TNt = SMALL_M ? 64 : 32, KC = 32;
    __shared__ float As[KC][TMt + 1], Bs[KC][TNt + 1];
    const int t = threadIdx.x;
    const int tiles_n = (a.N + TNt - 1) / TNt;
    const int m0 = (blockIdx.x / tiles_n) * TMt, n0 = (blockIdx.x % tiles_n) * TNt;
    const int kb = blockIdx.y * a.krows, ke = min(a.K, kb + a.krows);
    /* SMALL_M: thread owns row i = t / 8 and columns t % 8 + 8 q; else the transpose */
    const int fixed = t >> 3, lane8 = t & 7;
    float acc[8];
    for (int q = 0; q < 8; q++) acc[q] = 0.0f;
    for (int k0 = kb; k0 < ke; k0 += KC) {
        for (int i = t; i < KC * TMt; i += 256) {
            int kk = i / TMt, mm = i % TMt, k = k0 + kk, m = m0 + mm;
            As[kk][mm] = (k < ke && m < a.M) ? a.A[(size_t)k * a.lda + m] : 0.0f;
        }
        for (int i = t; i < KC * TNt; i += 256) {
            int kk = i / TNt, nn = i % TNt, k = k0 + kk, n = n0 + nn;
            Bs[kk][nn] = (k < ke && n < a.N) ? a.B[(size_t)k * a.ldb + n] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < KC; kk++) {
            if (SMALL_M) {
                const float av = As[kk][fixed];
#pragma unroll
                for (int q = 0; q < 8; q++) acc[q] = fmaf(av, Bs[kk][lane8 + 8 * q], acc[q]);
            } else {
                const float bv = Bs[kk][fixed];
#pragma unroll
                for (int q = 0; q < 8; q++) acc[q] = fmaf(As[kk][lane8 + 8 * q], bv, acc[q]);
            }
        }
        __syncthreads();
    }
    float *P = a.part + (size_t)blockIdx.y * a.M * a.N;
#pragma unroll
    for (int q = 0; q < 8; q++) {
        const int m = m0 + (SMALL_M ? fixed : lane8 + 8 * q);
        const int n = n0 + (SMALL_M ? lane8 + 8 * q : fixed);
        if (m < a.M && n < a.N) P[(size_t)m * a.N + n] = acc[q];
    }
}

/* C[m, n] = alpha sum_s part[s, m, n] + beta C[m, n], splits added in order. */
static __global__ void skinny_reduce_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    const size_t total = (size_t)a.M * a.N;
    const int splits = (a.K + a.krows - 1) / a.krows;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int p = 0; p < splits; p++) s += a.part[(size_t)p * total + i];
        float *cp = a.C + (i / a.N) * a.ldc + i % a.N;
        *cp = a.beta == 0.0f ? a.alpha * s : a.alpha * s + a.beta * *cp;
    }
}

/* C[M, N] = alpha A[M, K] op(B) + beta C for N <= NT (8, 16 or 32), A rows 16-byte
 * aligned: each warp owns 64 / NT rows and every lane 4 consecutive k of each 128-wide
 * chunk (float4 loads, all rows in flight at once); op(B)'s chunk is staged in shared
 * memory as [n][k]. blockIdx.y selects a split of K (krows each): with several splits the
 * sums go to part[split] for skinny_reduce_kernel, else straight to C. */
template <int NT>
static __global__ void __launch_bounds__(128) skinny_rows4_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int KC = 128, RW = 64 / NT;
    __shared__ __align__(16) float Bs[NT][KC];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m0 = (blockIdx.x * 4 + warp) * RW;
    const int kb = blockIdx.y * a.krows, ke = min(a.K, kb + a.krows);
    const bool split = gridDim.y > 1;
    float acc[RW][NT];
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[r][n] = 0.0f;
    for (int k0 = kb; k0 < ke; k0 += KC) {
        __syncthreads(); /* the previous chunk of Bs is consumed */
        for (int i = threadIdx.x; i < NT * KC; i += 128) {
            int n, kk;
            if (a.tb) { /* B[n, k]: consecutive threads read consecutive k */
                n = i / KC;
                kk = i % KC;
            } else {    /* B[k, n] */
                kk = i / NT;
                n = i % NT;
            }
            const int k = k0 + kk;
            float v = 0.0f;
            if (n < a.N && k < ke) v = a.tb ? a.B[(size_t)n * a.ldb + k] : a.B[(size_t)k * a.ldb + n];
            Bs[n][kk] = v;
        }
        __syncthreads();
        const int k = k0 + lane * 4;
        float4 xv[RW];
#pragma unroll
        for (int r = 0; r < RW; r++) {
            const int m = m0 + r;
            if (m < a.M && k + 3 < ke) {
                xv[r] = __ldg(reinterpret_cast<const float4 *>(a.A + (size_t)m * a.lda + k));
            } else {
                xv[r] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (m < a.M) {
                    if (k < ke) xv[r].x = a.A[(size_t)m * a.lda + k];
                    if (k + 1 < ke) xv[r].y = a.A[(size_t)m * a.lda + k + 1];
                    if (k + 2 < ke) xv[r].z = a.A[(size_t)m * a.lda + k + 2];
                }
            }
        }
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const float4 b = *reinterpret_cast<const float4 *>(&Bs[n][lane * 4]);
#pragma unroll
            for (int r = 0; r < RW; r++) {
                float t = acc[r][n];
                t = fmaf(xv[r].x, b.x, t);
                t = fmaf(xv[r].y, b.y, t);
                t = fmaf(xv[r].z, b.z, t);
                t = fmaf(xv[r].w, b.w, t);
                acc[r][n] = t;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[r][n] = cu_warp_sum(acc[r][n]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < RW; r++) {
            const int m = m0 + r;
            if (m >= a.M) continue;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                if (n >= a.N) continue;
                if (split) {
                    a.part[((size_t)blockIdx.y * a.M + m) * a.N + n] = acc[r][n];
                } else {
                    float *cp = a.C + (size_t)m * a.ldc + n;
                    *cp = a.beta == 0.0f ? a.alpha * acc[r][n] : a.alpha * acc[r][n] + a.beta * *cp;
                }
            }
        }
    }
}

/* C[M, N] = alpha T[M, K] op(B) + beta C for a small K (<= 32, the LoRA rank) and a wide
 * C: a block of 256 threads owns a 32 x 128 tile of C; T's and op(B)'s slices sit in
 * shared memory and each thread sums 16 rows of one column, so C is read and written
 * once, coalesced. */
static __global__ void __launch_bounds__(256) lowrank_kernel(const SkinnyArgs a) {
    cu_dep_wait();
    constexpr int TMr = 32, TNc = 128, KMAX = 32;
    __shared__ float Ts[TMr][KMAX + 1], Bs[KMAX][TNc + 1];
    const int tiles_n = (a.N + TNc - 1) / TNc;
    const int m0 = (blockIdx.x / tiles_n) * TMr, n0 = (blockIdx.x % tiles_n) * TNc;
    const int t = threadIdx.x, col = t % TNc, rg = (t / TNc) * 16;
    for (int i = t; i < TMr * a.K; i += 256) {
        const int r = i / a.K, k = i % a.K, m = m0 + r;
        Ts[r][k] = m < a.M ? a.A[(size_t)m * a.lda + k] : 0.0f;
    }
    for (int i = t; i < TNc * a.K; i += 256) {
        int k, nn;
        if (a.tb) { /* B[n, k] */
            nn = i / a.K;
            k = i % a.K;
        } else {    /* B[k, n] */
            k = i / TNc;
            nn = i % TNc;
        }
        const int n = n0 + nn;
        Bs[k][nn] = n < a.N ? (a.tb ? a.B[(size_t)n * a.ldb + k] : a.B[(size_t)k * a.ldb + n]) : 0.0f;
    }
    __syncthreads();
    const int n = n0 + col;
    if (n >= a.N) return;
    float acc[16];
#pragma unroll
    for (int r = 0; r < 16; r++) acc[r] = 0.0f;
    for (int k = 0; k < a.K; k++) {
        const float b = Bs[k][col];
#pragma unroll
        for (int r = 0; r < 16; r++) acc[r] = fmaf(Ts[rg + r][k], b, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < 16; r++) {
        const int m = m0 + rg + r;
        if (m >= a.M) break;
        float *cp = a.C + (size_t)m * a.ldc + n;
        *cp = a.beta == 0.0f ? a.alpha * acc[r] : a.alpha * acc[r] + a.beta * *cp;
    }
}

/* Runs the skinny kernels when the shape is one of the LoRA ones; false otherwise. */
static bool gemm_f32_skinny(mc_cuda *c, bool ta, bool tb, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *B, int ldb, float beta, float *C,
                            int ldc) {
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
    if (!ta && N <= 32 && M >= 64 && K >= 1 && lda % 4 == 0 && cu_aligned16(A)) {
        /* one memory pass over A; K split in up to 4 when long, so enough blocks run */
        const int nt = N <= 8 ? 8 : N <= 16 ? 16 : 32, rows_per_block = 4 * (64 / nt);
        int splits = K >= 2048 ? (K + 1023) / 1024 : 1;
        if (splits > 4) splits = 4;
        a.krows = ((K + splits - 1) / splits + 127) / 128 * 128;
        splits = (K + a.krows - 1) / a.krows;
        if (splits > 1) {
            a.part = (float *)cu_scratch(c, CU_S_GEMM, (size_t)splits * M * N * sizeof(float), false);
            if (!a.part) return true; /* the failure is recorded */
        }
        dim3 grid((unsigned)((M + rows_per_block - 1) / rows_per_block), (unsigned)splits);
        if (nt == 8) cu_launch(c, skinny_rows4_kernel<8>, grid, dim3(128), 0, a, "gemm_f32 rows");
        else if (nt == 16) cu_launch(c, skinny_rows4_kernel<16>, grid, dim3(128), 0, a, "gemm_f32 rows");
        else cu_launch(c, skinny_rows4_kernel<32>, grid, dim3(128), 0, a, "gemm_f32 rows");
        if (splits > 1)
            cu_launch(c, skinny_reduce_kernel,
                      dim3(cu_blocks((size_t)M * N, 256, (unsigned)c->n_sm * 8)), dim3(256), 0, a,
                      "gemm_f32 reduce");
        return true;
    }
    if (!ta && N <= 32 && M >= 64 && K >= 1) {
        cu_launch(c, skinny_rows_kernel, dim3((unsigned)((M + 31) / 32)), dim3(128), 0, a,
                  "gemm_f32 rows");
        return true;
    }
    if (!ta && K <= 32 && N >= 64 && M >= 16) {
        const int tiles = ((M + 31) / 32) * ((N + 127) / 128);
        cu_launch(c, lowrank_kernel, dim3((unsigned)tiles), dim3(256), 0, a, "gemm_f32 lowrank");
        return true;
    }
    if (ta && !tb && (M <= 32 || N <= 32) && K >= 256) {
        const bool small_m = M <= 32;
        const int tm = small_m ? 32 : 64, tn = small_m ? 64 : 32;
        const int tiles = ((M + tm - 1) / tm) * ((N + tn - 1) / tn);
        int splits = (K + 255) / 256;
        if (splits > 64) splits = 64;
        a.krows = (K + splits - 1) / splits;
        splits = (K + a.krows - 1) / a.krows;
        a.part = (float *)cu_scratch(c, CU_S_GEMM, (size_t)splits * M * N * sizeof(float), false);
        if (!a.part) return true; /* the failure is recorded */
        if (small_m)
            cu_launch(c, skinny_splitk_kernel<true>, dim3((unsigned)tiles, (unsigned)splits),
                      dim3(256), 0, a, "gemm_f32 splitk");
        else
            cu_launch(c, skinny_splitk_kernel<false>, dim3((unsigned)tiles, (unsigned)splits),
                      dim3(256), 0, a, "gemm_f32 splitk");
        cu_launch(c, skinny_reduce_kernel, dim3(cu_blocks((size_t)M * N, 256, (unsigned)c->n_sm * 8)),
                  dim3(256), 0, a, "gemm_f32 reduce");
        return true;
    }
    return false;
}

/* Bytes spanned by a row-major [rows, cols] matrix with leading dimension ld. */
static size_t span_bytes(int rows, int cols, int ld) {
    if (rows <= 0 || cols <= 0) return 0;
    return ((size_t)(rows - 1) * (size_t)ld + (size_t)cols) * sizeof(float);
}

void cu_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    mc_cuda *c = cu_ctx(be);
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
    cu_note_write(c, C, sc);
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
