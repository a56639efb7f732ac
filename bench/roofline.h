/* roofline.h - the machine's two ceilings, measured in the same run as a benchmark:
 * memory read bandwidth (a 1 GiB buffer summed on all threads) and the f32 GEMM rate
 * (OpenBLAS sgemm, one single-threaded call per thread on its share of the columns).
 * Header-only, shared by the benchmark programs in bench/. */
#ifndef MC_BENCH_ROOFLINE_H
#define MC_BENCH_ROOFLINE_H

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_simd.h"
#include "core/core.h"

void openblas_set_num_threads(int num_threads);

/* Sum of p[0..n) with independent accumulators, so it runs at load speed. */
static inline uint64_t roofline_sum_portable(const uint64_t *p, size_t n) {
    uint64_t s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) s[j] += p[i + j];
    for (; i < n; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

#if MC_CPU_X86
static inline MC_AVX2 uint64_t roofline_sum_avx2(const uint64_t *p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    uint64_t t[4];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(const void *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 12)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    memcpy(t, &s0, sizeof t);
    return t[0] + t[1] + t[2] + t[3] + roofline_sum_portable(p + i, n - i);
}
#endif

/* Sum of p[0..n) at load speed (AVX2 where the CPU has it). */
static inline uint64_t roofline_sum(const uint64_t *p, size_t n) {
#if MC_CPU_X86
    if (mc_cpu_has_avx2()) return roofline_sum_avx2(p, n);
#endif
    return roofline_sum_portable(p, n);
}

static volatile uint64_t roofline_sink;

/* Reads buf[0..n) once on nt threads (each its contiguous share); returns bytes/s. */
static inline double roofline_read(int nt, const uint64_t *buf, size_t n) {
    double t = mc_time_now();
    uint64_t total = 0;
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
        size_t T = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        total += roofline_sum(buf + n * id / T, n * (id + 1) / T - n * id / T);
    }
    t = mc_time_now() - t;
    roofline_sink += total;
    return (double)n * sizeof(uint64_t) / t;
}

/* Best read bandwidth in bytes/s over `rounds` passes of a 1 GiB buffer on nt threads. */
static inline double roofline_bandwidth(int nt, int rounds) {
    size_t n = ((size_t)1 << 30) / sizeof(uint64_t);
    uint64_t *buf = mc_aligned_alloc(n * sizeof(uint64_t));
    double best = 0;
    if (!buf) return 0;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i; /* first touch on the reading threads */
    for (int r = 0; r < rounds; r++) best = MC_MAX(best, roofline_read(nt, buf, n));
    mc_aligned_free(buf);
    return best;
}

/* Best FLOP/s of out[M, N] = x[M, K] W[N, K]^T with OpenBLAS sgemm on nt threads: the
 * columns are split across nt OpenMP threads, each running a single-threaded sgemm on its
 * share (OpenBLAS's own threading reaches less on this kind of machine). One untimed
 * round first warms the threads and caches. */
static inline double roofline_sgemm(int M, int N, int K, int nt, int rounds) {
    float *x = mc_aligned_alloc((size_t)M * (size_t)K * sizeof(float));
    float *w = mc_aligned_alloc((size_t)N * (size_t)K * sizeof(float));
    float *o = mc_aligned_alloc((size_t)M * (size_t)N * sizeof(float));
    double best = 0;
    mc_rng rng;
    if (!x || !w || !o) goto done;
    mc_rng_seed(&rng, 1);
    for (size_t i = 0; i < (size_t)M * (size_t)K; i++) x[i] = (float)mc_rng_uniform(&rng) - 0.5f;
    for (size_t i = 0; i < (size_t)N * (size_t)K; i++) w[i] = (float)mc_rng_uniform(&rng) - 0.5f;
    openblas_set_num_threads(1);
    for (int r = 0; r <= rounds; r++) {
        double t = mc_time_now();
#pragma omp parallel num_threads(nt)
        {
            int T = omp_get_num_threads(), id = omp_get_thread_num();
            int n0 = (int)((long)N * id / T), n1 = (int)((long)N * (id + 1) / T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n1 - n0, K, 1.0f, x, K,
                        w + (size_t)n0 * (size_t)K, K, 0.0f, o + n0, N);
        }
        t = mc_time_now() - t;
        if (r > 0 && 2.0 * M * N * K / t > best) best = 2.0 * M * N * K / t;
    }
done:
    mc_aligned_free(x);
    mc_aligned_free(w);
    mc_aligned_free(o);
    return best;
}

#endif /* MC_BENCH_ROOFLINE_H */
