/* bench_kernels.c - speed of the fast CPU kernels against this machine's rooflines.
 *
 * Prints: the memory read bandwidth (sum over a large buffer, all threads); the OpenBLAS
 * sgemm rate on Qwen2.5-0.5B MLP shapes; the decode matmul (GEMV, bf16 weights) in GB/s of
 * weights read, cache-hot and from DRAM; the M sweep across the GEMV/GEMM crossover; the
 * prefill matmul (M = 512, bf16 weights) against sgemm; attention and the elementwise ops.
 *
 * Usage: bench_kernels [n_threads]   (default: all cores) */
#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_simd.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static mc_rng g_rng;

static float *alloc_f32(size_t n) {
    float *p = mc_aligned_alloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory (%zu floats)\n", n);
        exit(1);
    }
    return p;
}

static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = mc_rng_normal(&g_rng);
}

/* n bf16 weights of N(0, 0.05), 64-byte aligned. */
static uint16_t *make_bf16(size_t n) {
    uint16_t *w = mc_aligned_alloc(n * sizeof(uint16_t));
    if (!w) {
        fprintf(stderr, "bench_kernels: out of memory (%zu weights)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) w[i] = mc_f32_to_bf16(0.05f * mc_rng_normal(&g_rng));
    return w;
}

/* ---- memory bandwidth ------------------------------------------------------------------- */
/* The machine is measured in the same rounds as the kernels (bandwidth, then the kernel,
 * repeated; best of each), so that a busy neighbour or a frequency change affects both. */

static uint64_t *g_buf; /* [g_buf_n]: 512 MiB, far beyond the caches */
static size_t g_buf_n;

/* Sum of p[0..n) with independent accumulators, so it runs at load speed. */
static uint64_t sum_portable(const uint64_t *p, size_t n) {
    uint64_t s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) s[j] += p[i + j];
    for (; i < n; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

#if MC_CPU_X86
static MC_AVX2 uint64_t sum_avx2(const uint64_t *p, size_t n) {
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
    return t[0] + t[1] + t[2] + t[3] + sum_portable(p + i, n - i);
}
#endif

/* Reads the whole buffer once on nt threads; returns bytes per second. */
static volatile uint64_t g_sink;
static double bandwidth_once(int nt) {
    double t = mc_time_now();
    uint64_t total = 0;
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
        size_t T = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        size_t i0 = g_buf_n * id / T, i1 = g_buf_n * (id + 1) / T;
#if MC_CPU_X86
        total +=
            mc_cpu_has_avx2() ? sum_avx2(g_buf + i0, i1 - i0) : sum_portable(g_buf + i0, i1 - i0);
#else
        total += sum_portable(g_buf + i0, i1 - i0);
#endif
    }
    t = mc_time_now() - t;
    g_sink += total;
    return (double)g_buf_n * sizeof(uint64_t) / t;
}

static double bench_bandwidth(int nt) {
    double best = 0;
    g_buf_n = ((size_t)512 << 20) / sizeof(uint64_t);
    g_buf = mc_aligned_alloc(g_buf_n * sizeof(uint64_t));
    if (!g_buf) exit(1);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < g_buf_n; i++) g_buf[i] = i; /* first touch on the reading threads */
    for (int r = 0; r < 10; r++) best = MC_MAX(best, bandwidth_once(nt));
    printf("memory read bandwidth (512 MiB, %d threads): %.1f GB/s\n", nt, best / 1e9);
    return best;
}

/* ---- sgemm ------------------------------------------------------------------------------ */

/* Best GFLOP/s of out[M, N] = x[M, K] W[N, K]^T with OpenBLAS on its own threads. */
static double bench_sgemm(int M, int N, int K, int nt) {
    float *x = alloc_f32((size_t)M * K), *w = alloc_f32((size_t)N * K),
          *o = alloc_f32((size_t)M * N);
    double best = 0;
    fill(x, (size_t)M * K);
    fill(w, (size_t)N * K);
    openblas_set_num_threads(nt);
    for (int r = 0; r < 6; r++) {
        double t = mc_time_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, o, N);
        t = mc_time_now() - t;
        if (2.0 * M * N * K / t > best) best = 2.0 * M * N * K / t;
    }
    printf("  sgemm M=%d N=%d K=%d: %.1f GFLOP/s\n", M, N, K, best / 1e9);
    mc_aligned_free(x);
    mc_aligned_free(w);
    mc_aligned_free(o);
    return best;
}

/* ---- matmul through the backend --------------------------------------------------------- */

/* Best seconds of one matmul of x[M, K] by W[N, K] (bf16). With ncopies > 1 each call uses
 * the next of ncopies copies of W, so the weights come from DRAM rather than cache. With
 * bw != NULL a memory-bandwidth read runs before each call and *bw gets the best. */
static double time_matmul(mc_backend *be, int M, int N, int K, int ncopies, int reps, double *bw) {
    size_t wn = (size_t)N * K;
    uint16_t **w = malloc((size_t)ncopies * sizeof *w);
    float *x = alloc_f32((size_t)M * K), *o = alloc_f32((size_t)M * N);
    double best = 1e30;
    if (!w) exit(1);
    fill(x, (size_t)M * K);
    for (int c = 0; c < ncopies; c++) w[c] = make_bf16(wn);
    for (int r = 0; r < reps + 1; r++) {
        mc_wt W = {w[r % ncopies], MC_BF16}, B = {NULL, MC_F32};
        double t;
        if (bw) *bw = MC_MAX(*bw, bandwidth_once(be->n_threads));
        t = mc_time_now();
        be->matmul(be, o, N, x, W, B, M, N, K);
        t = mc_time_now() - t;
        if (r > 0 && t < best) best = t; /* the first call warms up threads and pages */
    }
    for (int c = 0; c < ncopies; c++) mc_aligned_free(w[c]);
    free(w);
    mc_aligned_free(x);
    mc_aligned_free(o);
    return best;
}

static void bench_gemv(mc_backend *be) {
    static const int shapes[3][2] = {{4864, 896}, {896, 4864}, {151936, 896}};
    printf("decode matmul, M=1, bf16 weights: GB/s of weights read; %% of the memory read\n"
           "bandwidth measured in the same rounds:\n");
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], K = shapes[s][1];
        double bytes = 2.0 * N * K, bw = 0;
        /* enough copies to spill the caches several times over */
        int copies = bytes > 256e6 ? 1 : (int)(256e6 / bytes) + 1;
        double cold = time_matmul(be, 1, N, K, copies, bytes > 256e6 ? 20 : 3 * copies, &bw);
        printf("  W[%6d, %4d] %6.1f MB: from DRAM %5.1f GB/s = %3.0f%% of %.1f GB/s", N, K,
               bytes / 1e6, bytes / cold / 1e9, 100.0 * bytes / cold / bw, bw / 1e9);
        if (bytes < 16e6)
            printf("; cache-hot %5.1f GB/s", bytes / time_matmul(be, 1, N, K, 1, 200, NULL) / 1e9);
        printf("\n");
    }
}

/* Both matmul paths over M, on W[4864, 896]: where the GEMV/GEMM crossover lies. */
static void bench_crossover(mc_backend *be) {
    static const int Ms[7] = {1, 2, 4, 8, 12, 16, 32};
    mc_cpu *cpu = be->impl;
    int saved = cpu->gemv_max_m;
    printf("matmul over M, W[4864, 896] bf16 from DRAM (GFLOP/s): GEMV path | GEMM path\n");
    for (int i = 0; i < 7; i++) {
        int M = Ms[i];
        double fl = 2.0 * M * 4864 * 896, tv, tg;
        cpu->gemv_max_m = 1 << 30;
        tv = time_matmul(be, M, 4864, 896, 30, 60, NULL);
        cpu->gemv_max_m = 0;
        tg = time_matmul(be, M, 4864, 896, 30, 60, NULL);
        printf("  M=%2d: %6.1f | %6.1f%s\n", M, fl / tv / 1e9, fl / tg / 1e9,
               M <= saved ? "   (GEMV taken)" : "   (GEMM taken)");
    }
    cpu->gemv_max_m = saved;
}

static void bench_prefill(mc_backend *be, int nt) {
    static const int shapes[3][2] = {{4864, 896}, {896, 4864}, {8192, 896}};
    const int M = 512;
    printf("prefill matmul, M=%d, bf16 weights, vs OpenBLAS sgemm on f32 weights (%d threads):\n",
           M, nt);
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], K = shapes[s][1];
        double sg = bench_sgemm(M, N, K, nt);
        double t = time_matmul(be, M, N, K, 1, 8, NULL);
        double fl = 2.0 * M * N * K / t;
        printf("  backend M=%d N=%d K=%d: %.1f GFLOP/s = %.0f%% of sgemm\n", M, N, K, fl / 1e9,
               100.0 * fl / sg);
    }
}

/* ---- attention and elementwise ops ------------------------------------------------------ */

static void bench_attention(mc_backend *be) {
    const int Hq = 14, Hkv = 2, hd = 64;
    static const int cases[4][2] = {{512, 0}, {2048, 0}, {1, 511}, {1, 2047}}; /* T, pos0 */
    printf("attention, Hq=%d Hkv=%d hd=%d:\n", Hq, Hkv, hd);
    for (int c = 0; c < 4; c++) {
        int T = cases[c][0], pos0 = cases[c][1], L = pos0 + T;
        float *q = alloc_f32((size_t)T * Hq * hd), *o = alloc_f32((size_t)T * Hq * hd);
        float *k = alloc_f32((size_t)L * Hkv * hd), *v = alloc_f32((size_t)L * Hkv * hd);
        double best = 1e30, pairs = 0;
        fill(q, (size_t)T * Hq * hd);
        fill(k, (size_t)L * Hkv * hd);
        fill(v, (size_t)L * Hkv * hd);
        for (int t = 0; t < T; t++) pairs += pos0 + t + 1;
        for (int r = 0; r < (T > 1 ? 3 : 50); r++) {
            double t = mc_time_now();
            be->attention(be, o, q, k, v, T, pos0, Hq, Hkv, hd);
            t = mc_time_now() - t;
            if (t < best) best = t;
        }
        printf("  T=%4d pos0=%4d: %8.3f ms, %6.1f GFLOP/s (4 flops per query-key-dim)\n", T, pos0,
               best * 1e3, 4.0 * pairs * Hq * hd / best / 1e9);
        mc_aligned_free(q);
        mc_aligned_free(o);
        mc_aligned_free(k);
        mc_aligned_free(v);
    }
}

static void bench_elementwise(mc_backend *be) {
    const int T = 512, D = 896, F = 4864;
    size_t n = (size_t)T * F;
    float *a = alloc_f32(n), *b = alloc_f32(n), *o = alloc_f32(n);
    uint16_t *w = make_bf16((size_t)D);
    int32_t *pos = malloc((size_t)T * sizeof(int32_t));
    mc_wt W = {w, MC_BF16};
    double t0, tr = 1e30, ts = 1e30, tp = 1e30, ta = 1e30;
    if (!pos) exit(1);
    fill(a, n);
    fill(b, n);
    for (int t = 0; t < T; t++) pos[t] = t;
    for (int r = 0; r < 5; r++) {
        t0 = mc_time_now();
        be->rmsnorm(be, o, a, W, T, D, 1e-6f);
        tr = MC_MIN(tr, mc_time_now() - t0);
        t0 = mc_time_now();
        be->swiglu(be, o, a, b, n);
        ts = MC_MIN(ts, mc_time_now() - t0);
        t0 = mc_time_now();
        be->rope(be, o, 14 * 64, pos, T, 14, 64, 1e6f);
        tp = MC_MIN(tp, mc_time_now() - t0);
        t0 = mc_time_now();
        be->add(be, o, a, n);
        ta = MC_MIN(ta, mc_time_now() - t0);
    }
    printf("elementwise, T=%d: rmsnorm D=%d %.3f ms; swiglu n=%zu %.3f ms (%.1f GB/s); "
           "rope 14x64 %.3f ms; add n=%zu %.3f ms (%.1f GB/s)\n",
           T, D, tr * 1e3, n, ts * 1e3, 12.0 * (double)n / ts / 1e9, tp * 1e3, n, ta * 1e3,
           12.0 * (double)n / ta / 1e9);
    mc_aligned_free(a);
    mc_aligned_free(b);
    mc_aligned_free(o);
    mc_aligned_free(w);
    free(pos);
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 0;
    mc_backend *be = NULL;
    mc_rng_seed(&g_rng, 7);
    if (mc_backend_cpu_create(nt, false, &be) != MC_OK) {
        fprintf(stderr, "bench_kernels: %s\n", mc_last_error());
        return 1;
    }
    nt = be->n_threads;
    printf("cpu backend: %d threads, %s kernels; OpenBLAS %s (%s)\n", nt,
           mc_cpu_has_avx2() ? "AVX2" : "portable", openblas_get_config(), openblas_get_corename());
    (void)bench_bandwidth(nt);
    bench_gemv(be);
    bench_crossover(be);
    bench_prefill(be, nt);
    bench_attention(be);
    bench_elementwise(be);
    mc_backend_free(be);
    mc_aligned_free(g_buf);
    return 0;
}
