/* cpu_matmul.c - the fast CPU matmul: out[M, N] (row stride ldo) = x[M, K] W[N, K]^T + b.
 *
 * Two regimes, one entry point:
 *  - decode (M <= mc_cpu.gemv_max_m): memory-bound. Weights are read once, straight from
 *    their stored dtype (bf16/f16 converted in registers); rows of W are split across
 *    OpenMP threads in contiguous ranges; 8-wide FMAs into several accumulators. With one
 *    input, a thread cuts its range into GEMV_STREAMS equal parts and walks them in
 *    lockstep, one row of each per pass: each load of x feeds GEMV_STREAMS rows, and every
 *    part is still one long linear stream for the prefetcher; the weights are prefetched a
 *    little ahead with the non-temporal hint, so that they leave L1 before x does. On long
 *    rows (the MLP down projection, K = 4864: 19 KB of f32 x) x did not stay in L1 beside
 *    one weight stream and was re-read from L2 row after row: the kernel ran at ~65% of a
 *    plain read, now at ~85% of the speed of the short-row shapes. (Interleaving adjacent
 *    rows instead measured 30-50% slower on Zen 4 with rows of ~2 KB: many short streams,
 *    which the hardware prefetcher loses.) Up to 4 inputs per pass otherwise, one row
 *    after another.
 *  - prefill (larger M): compute-bound. Each thread converts a tile of up to 256 W rows
 *    to f32 in its own scratch (at most MC_CPU_SCRATCH_FLOATS) and runs a single-threaded
 *    OpenBLAS sgemm on it; a multiple of n_threads tiles of near-equal size go to the
 *    threads. OpenBLAS's own threads are switched off meanwhile (openblas_set_num_threads
 *    is process-wide: saved and restored around the call) so the two thread pools never
 *    compete for cores. Measured: 85-98% of OpenBLAS sgemm on pre-converted f32 weights.
 * Weights are never expanded to f32 as a whole. */
#include "cpu.h"
#include "cpu_convert.h"

#include "cpu_simd.h"

#include <cblas.h>
#include <omp.h>

/* Rows of W per prefill tile, at most (fewer when K is large: a tile fits the scratch). */
#define MC_GEMM_TILE_ROWS 256

/* ---- portable GEMV ------------------------------------------------------------------ */

enum { PORT_KCHUNK = 256 };

/* out rows [n0, n1): scalar loops over W converted in chunks of PORT_KCHUNK elements. */
static void gemv_portable(float *out /* [M, ldo] */, size_t ldo, const float *x /* [M, K] */,
                          mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, size_t M, size_t K,
                          size_t n0, size_t n1) {
    float wc[PORT_KCHUNK];
    for (size_t n = n0; n < n1; n++) {
        for (size_t m = 0; m < M; m++) out[m * ldo + n] = 0;
        for (size_t k0 = 0; k0 < K; k0 += PORT_KCHUNK) {
            size_t nk = MC_MIN((size_t)PORT_KCHUNK, K - k0);
            const void *src = (const char *)w.data + (n * K + k0) * mc_dtype_size(w.dtype);
            mc_convert_to_f32(wc, src, w.dtype, nk);
            for (size_t m = 0; m < M; m++) {
                const float *xr = x + m * K + k0; /* [nk] */
                float s[8] = {0};
                size_t nk8 = nk & ~(size_t)7;
                for (size_t k = 0; k < nk8; k += 8)
                    for (size_t j = 0; j < 8; j++) s[j] += xr[k + j] * wc[k + j];
                for (size_t k = nk8; k < nk; k++) s[0] += xr[k] * wc[k];
                out[m * ldo + n] +=
                    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            }
        }
        if (bias.data)
            for (size_t m = 0; m < M; m++)
                out[m * ldo + n] += mc_load_f32(bias.data, bias.dtype, n);
    }
}

/* ---- AVX2 GEMV ---------------------------------------------------------------------- */
#if MC_CPU_X86

/* res[m] = x[m, :] . W[n, :] for m < MR, with U accumulators per input row. MR, U and dt
 * are compile-time constants after inlining, so acc[][] lives in registers. One W row at a
 * time keeps each thread's reads a single linear stream, which the hardware prefetcher
 * follows at full memory bandwidth (interleaving 4 rows of ~2 KB measured 30-50% slower). */
MC_AVX2_INLINE void gemv_row(float *res /* [MR] */, const float *x /* [MR, K] */,
                             const void *w /* [N, K] */, mc_dtype dt, size_t n, size_t K, int MR,
                             int U) {
    __m256 acc[4][4];
    size_t k = 0, row = n * K;
    for (int m = 0; m < MR; m++)
        for (int u = 0; u < U; u++) acc[m][u] = _mm256_setzero_ps();
    for (; k + 8 * (size_t)U <= K; k += 8 * (size_t)U)
        for (int u = 0; u < U; u++) {
            __m256 wv = mc_ld8(w, dt, row + k + 8 * (size_t)u);
            for (int m = 0; m < MR; m++)
                acc[m][u] = _mm256_fmadd_ps(
                    wv, _mm256_loadu_ps(x + (size_t)m * K + k + 8 * (size_t)u), acc[m][u]);
        }
    for (; k + 8 <= K; k += 8) {
        __m256 wv = mc_ld8(w, dt, row + k);
        for (int m = 0; m < MR; m++)
            acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)m * K + k), acc[m][0]);
    }
    for (int m = 0; m < MR; m++) {
        __m256 s = acc[m][0];
        for (int u = 1; u < U; u++) s = _mm256_add_ps(s, acc[m][u]);
        res[m] = mc_hsum8(s);
    }
    for (; k < K; k++) {
        float wk = mc_load_f32(w, dt, row + k);
        for (int m = 0; m < MR; m++) res[m] += x[(size_t)m * K + k] * wk;
    }
}

/* Row parts a thread walks in lockstep in the one-input GEMV (see the top of the file). */
#define GEMV_STREAMS 4

/* Bytes ahead of the reads at which each weight stream of the one-input GEMV is prefetched
 * with the non-temporal hint. Lines fetched that way are the first to leave L1, so x stays
 * there. Measured in decode (Qwen2.5-0.5B, bf16) against no prefetch: the down projection
 * [896, 4864] -4 to -9% time per call; and against 192 bytes ahead, at ~50 GB/s of read
 * bandwidth: down -9%, [4864, 896] -4%, the lm_head -3% (256 bytes: like 192; 512: like
 * 384; 768: slower than 192). */
#define GEMV_PREFETCH 384

/* Prefetches, non-temporal, the line at byte offset off of p. The last rows look past the
 * end of W, so the address is formed in integers (x86 drops a prefetch of any address; C
 * does not allow a pointer beyond the array). */
MC_AVX2_INLINE void gemv_prefetch(const void *p, size_t off) {
    _mm_prefetch((const char *)((uintptr_t)p + off), _MM_HINT_NTA);
}

/* res[r] = x . W[rows[r], :] for r < R (R <= GEMV_STREAMS, a constant after inlining), two
 * accumulators per row. Each row's sum is formed the same way whatever R is, so a row's
 * result does not depend on how the rows were grouped (or on the thread count). */
MC_AVX2_INLINE void gemv_rows1(float *res /* [R] */, const float *x /* [K] */,
                               const void *w /* [N, K] */, mc_dtype dt,
                               const size_t *rows /* [R] */, size_t K, int R) {
    __m256 acc[GEMV_STREAMS][2];
    size_t k = 0, off[GEMV_STREAMS], es = mc_dtype_size(dt);
    for (int r = 0; r < R; r++) {
        off[r] = rows[r] * K;
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    }
    for (; k + 32 <= K; k += 32) {
        for (int r = 0; r < R; r++)
            for (size_t b = 0; b < 32 * es; b += 64)
                gemv_prefetch(w, (off[r] + k) * es + b + GEMV_PREFETCH);
        for (size_t h = k; h < k + 32; h += 16) {
            __m256 x0 = _mm256_loadu_ps(x + h), x1 = _mm256_loadu_ps(x + h + 8);
            for (int r = 0; r < R; r++) {
                acc[r][0] = _mm256_fmadd_ps(mc_ld8(w, dt, off[r] + h), x0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(mc_ld8(w, dt, off[r] + h + 8), x1, acc[r][1]);
            }
        }
    }
    for (; k + 16 <= K; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < R; r++) {
            acc[r][0] = _mm256_fmadd_ps(mc_ld8(w, dt, off[r] + k), x0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(mc_ld8(w, dt, off[r] + k + 8), x1, acc[r][1]);
        }
    }
    if (k + 8 <= K) {
        __m256 x0 = _mm256_loadu_ps(x + k);
        for (int r = 0; r < R; r++)
            acc[r][0] = _mm256_fmadd_ps(mc_ld8(w, dt, off[r] + k), x0, acc[r][0]);
        k += 8;
    }
    for (int r = 0; r < R; r++) {
        res[r] = mc_hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (size_t kk = k; kk < K; kk++) res[r] += x[kk] * mc_load_f32(w, dt, off[r] + kk);
    }
}

/* Rows [n0, n1) of out = x W^T + b for one input: GEMV_STREAMS parts of the range in
 * lockstep, then the rows left over one at a time. */
MC_AVX2_INLINE void gemv_avx2_one(float *out /* [N] */, const float *x /* [K] */,
                                  const void *w /* [N, K] */, mc_dtype dt, mc_wt bias, size_t K,
                                  size_t n0, size_t n1) {
    size_t span = (n1 - n0) / GEMV_STREAMS, rows[GEMV_STREAMS];
    float res[GEMV_STREAMS];
    for (size_t i = 0; i < span; i++) {
        for (int r = 0; r < GEMV_STREAMS; r++) rows[r] = n0 + (size_t)r * span + i;
        gemv_rows1(res, x, w, dt, rows, K, GEMV_STREAMS);
        for (int r = 0; r < GEMV_STREAMS; r++)
            out[rows[r]] = res[r] + (bias.data ? mc_load_f32(bias.data, bias.dtype, rows[r]) : 0);
    }
    for (size_t n = n0 + GEMV_STREAMS * span; n < n1; n++) {
        gemv_rows1(res, x, w, dt, &n, K, 1);
        out[n] = res[0] + (bias.data ? mc_load_f32(bias.data, bias.dtype, n) : 0);
    }
}

/* Rows [n0, n1) of out for all M inputs, W of dtype dt (a constant after inlining). One
 * input takes gemv_avx2_one; more go 4 at a time, the W row staying in L1 between the
 * passes. */
MC_AVX2_INLINE void gemv_avx2_impl(float *out /* [M, ldo] */, size_t ldo,
                                   const float *x /* [M, K] */, const void *w /* [N, K] */,
                                   mc_dtype dt, mc_wt bias, size_t M, size_t K, size_t n0,
                                   size_t n1) {
    float res[4];
    if (M == 1) {
        gemv_avx2_one(out, x, w, dt, bias, K, n0, n1);
        return;
    }
    for (size_t n = n0; n < n1; n++) {
        float b = bias.data ? mc_load_f32(bias.data, bias.dtype, n) : 0.0f;
        for (size_t m = 0; m < M; m += 4) {
            size_t mr = MC_MIN((size_t)4, M - m);
            const float *xm = x + m * K; /* [mr, K] */
            switch (mr) {
            case 1: gemv_row(res, xm, w, dt, n, K, 1, 4); break;
            case 2: gemv_row(res, xm, w, dt, n, K, 2, 4); break;
            case 3: gemv_row(res, xm, w, dt, n, K, 3, 2); break;
            default: gemv_row(res, xm, w, dt, n, K, 4, 2); break;
            }
            for (size_t i = 0; i < mr; i++) out[(m + i) * ldo + n] = res[i] + b;
        }
    }
}

static MC_AVX2 void gemv_avx2_bf16(float *out, size_t ldo, const float *x, const void *w,
                                   mc_wt bias, size_t M, size_t K, size_t n0, size_t n1) {
    gemv_avx2_impl(out, ldo, x, w, MC_BF16, bias, M, K, n0, n1);
}
static MC_AVX2 void gemv_avx2_f16(float *out, size_t ldo, const float *x, const void *w, mc_wt bias,
                                  size_t M, size_t K, size_t n0, size_t n1) {
    gemv_avx2_impl(out, ldo, x, w, MC_F16, bias, M, K, n0, n1);
}
static MC_AVX2 void gemv_avx2_f32(float *out, size_t ldo, const float *x, const void *w, mc_wt bias,
                                  size_t M, size_t K, size_t n0, size_t n1) {
    gemv_avx2_impl(out, ldo, x, w, MC_F32, bias, M, K, n0, n1);
}

#endif /* MC_CPU_X86 */

/* Rows [n0, n1) of the GEMV with the best kernel of this backend. */
static void gemv_rows(const mc_cpu *cpu, float *out /* [M, ldo] */, size_t ldo,
                      const float *x /* [M, K] */, mc_wt w /* [N, K] */, mc_wt bias, size_t M,
                      size_t K, size_t n0, size_t n1) {
#if MC_CPU_X86
    if (cpu->variant == MC_CPU_AVX2) {
        switch (w.dtype) {
        case MC_BF16: gemv_avx2_bf16(out, ldo, x, w.data, bias, M, K, n0, n1); return;
        case MC_F16: gemv_avx2_f16(out, ldo, x, w.data, bias, M, K, n0, n1); return;
        case MC_F32: gemv_avx2_f32(out, ldo, x, w.data, bias, M, K, n0, n1); return;
        }
    }
#else
    (void)cpu;
#endif
    gemv_portable(out, ldo, x, w, bias, M, K, n0, n1);
}

/* Thread t of T's share [*n0, *n1) of N rows in the decode path: contiguous ranges of a
 * multiple of 4 rows. */
static void thread_rows(size_t N, size_t t, size_t T, size_t *n0, size_t *n1) {
    size_t per = ((N + T - 1) / T + 3) & ~(size_t)3;
    *n0 = MC_MIN(N, t * per);
    *n1 = MC_MIN(N, *n0 + per);
}

/* Decode path: W rows split in nt contiguous ranges (multiples of 4 rows). */
static void gemv(const mc_cpu *cpu, float *out /* [M, ldo] */, size_t ldo,
                 const float *x /* [M, K] */, mc_wt w /* [N, K] */, mc_wt bias, size_t M, size_t N,
                 size_t K) {
    int nt = cpu->n_threads;
    /* below ~64K weights a parallel region costs more than it saves */
    if (nt > 1 && N * K >= ((size_t)1 << 16)) {
#pragma omp parallel num_threads(nt)
        {
            size_t n0, n1;
            thread_rows(N, (size_t)omp_get_thread_num(), (size_t)omp_get_num_threads(), &n0, &n1);
            if (n0 < n1) gemv_rows(cpu, out, ldo, x, w, bias, M, K, n0, n1);
        }
    } else {
        gemv_rows(cpu, out, ldo, x, w, bias, M, K, 0, N);
    }
}

/* ---- prefill: f32 tiles of W through OpenBLAS ------------------------------------- */

/* Converts rows [n0, n0+nb) of W to f32 into tile (or points at them when W is f32). */
static const float *gemm_tile(const mc_cpu *cpu, float *tile /* [nb, K] */, mc_wt w /* [N, K] */,
                              size_t n0, size_t nb, size_t K) {
    const void *src = (const char *)w.data + n0 * K * mc_dtype_size(w.dtype);
    if (w.dtype == MC_F32) return src;
#if MC_CPU_X86
    if (cpu->variant == MC_CPU_AVX2) {
        mc_cpu_convert_avx2(tile, src, w.dtype, nb * K);
        return tile;
    }
#else
    (void)cpu;
#endif
    mc_convert_to_f32(tile, src, w.dtype, nb * K);
    return tile;
}

/* out[:, n0:n0+nb] = x tile^T (+ bias) on the calling thread. */
static void gemm_one(const mc_cpu *cpu, float *tile /* scratch [nb, K] */,
                     float *out /* [M, ldo] */, size_t ldo, const float *x /* [M, K] */, mc_wt w,
                     mc_wt bias, size_t M, size_t K, size_t n0, size_t nb) {
    const float *wt = gemm_tile(cpu, tile, w, n0, nb, K); /* [nb, K] */
    float beta = 0.0f;
    if (bias.data) {
        for (size_t j = 0; j < nb; j++)
            tile[nb * K + j] = mc_load_f32(bias.data, bias.dtype, n0 + j);
        for (size_t m = 0; m < M; m++)
            memcpy(out + m * ldo + n0, tile + nb * K, nb * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)M, (blasint)nb, (blasint)K, 1.0f,
                x, (blasint)K, wt, (blasint)K, beta, out + n0, (blasint)ldo);
}

/* Prefill path. Returns false (nothing done) when a tile row of K does not fit scratch. */
static bool gemm(mc_cpu *cpu, float *out /* [M, ldo] */, size_t ldo, const float *x /* [M, K] */,
                 mc_wt w /* [N, K] */, mc_wt bias, size_t M, size_t N, size_t K) {
    size_t nt = (size_t)cpu->n_threads;
    /* a tile is nb rows of K plus nb bias values */
    size_t nb_max, ntiles, nb;
    int prev_blas_threads;
    if (K + 1 > MC_CPU_SCRATCH_FLOATS / 8) return false;
    nb_max = MC_MIN((size_t)MC_GEMM_TILE_ROWS, MC_CPU_SCRATCH_FLOATS / (K + 1));
    /* a multiple of nt tiles of near-equal size keeps the threads equally busy */
    ntiles = (N + nb_max - 1) / nb_max;
    ntiles = (ntiles + nt - 1) / nt * nt;
    nb = (N + ntiles - 1) / ntiles;
    if (((nb + 7) & ~(size_t)7) <= nb_max) nb = (nb + 7) & ~(size_t)7;
    ntiles = (N + nb - 1) / nb;
    prev_blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(cpu->n_threads) schedule(dynamic, 1)
    for (size_t i = 0; i < ntiles; i++) {
        float *tile = cpu->scratch + (size_t)omp_get_thread_num() * MC_CPU_SCRATCH_FLOATS;
        size_t n0 = i * nb;
        gemm_one(cpu, tile, out, ldo, x, w, bias, M, K, n0, MC_MIN(nb, N - n0));
    }
    openblas_set_num_threads(prev_blas_threads);
    return true;
}

void mc_fast_matmul(mc_backend *be, void *out /* [M, ldo] */, int ldo, const void *x /* [M, K] */,
                    mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, int M, int N, int K) {
    mc_cpu *cpu = be->impl;
    size_t m_ = (size_t)M, n_ = (size_t)N, k_ = (size_t)K, ld = (size_t)ldo;
    if (M <= 0 || N <= 0) return;
    if (K == 0) { /* empty sum: out = bias */
        for (size_t m = 0; m < m_; m++)
            for (size_t n = 0; n < n_; n++)
                ((float *)out)[m * ld + n] =
                    bias.data ? mc_load_f32(bias.data, bias.dtype, n) : 0.0f;
        return;
    }
    /* the scratch is shared: a concurrent caller (another thread using this backend) takes
     * the GEMV path instead of waiting */
    if (M > cpu->gemv_max_m && !atomic_flag_test_and_set(&cpu->scratch_busy)) {
        bool done = gemm(cpu, out, ld, x, w, bias, m_, n_, k_);
        atomic_flag_clear(&cpu->scratch_busy);
        if (done) return;
    }
    gemv(cpu, out, ld, x, w, bias, m_, n_, k_);
}

void mc_fast_matmul_multi(mc_backend *be, int n, const mc_matmul_out *outs,
                          const void *x /* [M, K] */, int M, int K) {
    const mc_cpu *cpu = be->impl;
    const size_t m_ = (size_t)M, k_ = (size_t)K;
    size_t weights = 0;
    int i, nt = cpu->n_threads;
    bool one_pass = M > 0 && K > 0 && M <= cpu->gemv_max_m && nt > 1;
    for (i = 0; i < n; i++) {
        if (outs[i].N <= 0) one_pass = false;
        else weights += (size_t)outs[i].N * k_;
    }
    /* below ~64K weights a parallel region costs more than it saves */
    if (!one_pass || weights < ((size_t)1 << 16)) {
        for (i = 0; i < n; i++)
            mc_fast_matmul(be, outs[i].out, outs[i].ldo, x, outs[i].w, outs[i].bias, M, outs[i].N,
                           K);
        return;
    }
    /* each output split between the threads as gemv splits it (a row's sum does not depend
     * on the split), all in one parallel region */
#pragma omp parallel num_threads(nt)
    {
        size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads(), n0, n1;
        int e;
        for (e = 0; e < n; e++) {
            thread_rows((size_t)outs[e].N, t, T, &n0, &n1);
            if (n0 < n1)
                gemv_rows(cpu, outs[e].out, (size_t)outs[e].ldo, x, outs[e].w, outs[e].bias, m_,
                          k_, n0, n1);
        }
    }
}
