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
#include "roofline.h"

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

static uint64_t *g_buf; /* [g_buf_n]: 1 GiB, far beyond the caches */
static size_t g_buf_n;

/* Reads n words of the buffer from word i0 on nt threads (each its contiguous share);
 * returns bytes per second. */
static double read_range(int nt, size_t i0, size_t n) { return roofline_read(nt, g_buf + i0, n); }

/* Reads the whole buffer once on nt threads; returns bytes per second. */
static double bandwidth_once(int nt) { return read_range(nt, 0, g_buf_n); }

/* Reads `bytes` from the next position of the buffer (wrapping), so that successive calls
 * read from DRAM: the plain-read ceiling for a kernel that streams the same bytes. */
static double bandwidth_like(int nt, size_t bytes) {
    static size_t next;
    size_t n = bytes / sizeof(uint64_t);
    if (next + n > g_buf_n) next = 0;
    next += n;
    return read_range(nt, next - n, n);
}

/* Keeps every thread busy for ~0.2 s so that the measurement starts on running cores. */
static void warm_up(int nt) {
    double t0 = mc_time_now();
    while (mc_time_now() - t0 < 0.2) (void)bandwidth_once(nt);
}

static double bench_bandwidth(int nt) {
    double best = 0;
    g_buf_n = ((size_t)1 << 30) / sizeof(uint64_t);
    g_buf = mc_aligned_alloc(g_buf_n * sizeof(uint64_t));
    if (!g_buf) exit(1);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < g_buf_n; i++) g_buf[i] = i; /* first touch on the reading threads */
    for (int r = 0; r < 10; r++) best = MC_MAX(best, bandwidth_once(nt));
    printf("memory read bandwidth (1 GiB, %d threads): %.1f GB/s\n", nt, best / 1e9);
    return best;
}

/* ---- matmul through the backend --------------------------------------------------------- */

/* Copies of one bf16 weight matrix W[N, K], made before any timing: generating weights is
 * single-threaded, and an idle second thread (on a virtual machine, an idle vCPU) takes
 * milliseconds to come back, which would pollute the next measurement. */
typedef struct wset {
    int N, K, n;
    uint16_t **w; /* [n] copies of [N, K] */
} wset;

static wset make_wset(int N, int K, int copies) {
    wset s;
    s.N = N;
    s.K = K;
    s.n = copies;
    s.w = malloc((size_t)copies * sizeof *s.w);
    if (!s.w) exit(1);
    s.w[0] = make_bf16((size_t)N * K);
    for (int c = 1; c < copies; c++) {
        s.w[c] = mc_aligned_alloc((size_t)N * K * sizeof(uint16_t));
        if (!s.w[c]) exit(1);
        memcpy(s.w[c], s.w[0], (size_t)N * K * sizeof(uint16_t));
    }
    return s;
}

static void free_wset(wset *s) {
    for (int c = 0; c < s->n; c++) mc_aligned_free(s->w[c]);
    free(s->w);
}

/* Paired comparison with a plain read: *best_bw gets the best plain-read rate and *ratio
 * the median over rounds of (matmul rate / plain-read rate of the round): the available
 * DRAM bandwidth of a shared machine drifts, and a ratio of neighbours cancels the drift. */
typedef struct bw_pair {
    double best_bw, ratio;
} bw_pair;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Best seconds of one matmul of x[M, K] by W (bf16), cycling through the copies of W so
 * that with many copies the weights come from DRAM rather than cache. With pair != NULL a
 * plain read of as many bytes as W runs before each call (see bw_pair). */
static double time_matmul(mc_backend *be, int M, const wset *ws, int reps, bw_pair *pair) {
    int N = ws->N, K = ws->K;
    size_t wbytes = (size_t)N * K * sizeof(uint16_t);
    float *x = alloc_f32((size_t)M * K), *o = alloc_f32((size_t)M * N);
    double *ratios = malloc((size_t)(reps + 1) * sizeof(double));
    double best = 1e30;
    if (!ratios) exit(1);
    fill(x, (size_t)M * K);
    warm_up(be->n_threads);
    if (pair) pair->best_bw = 0;
    for (int r = 0; r < reps + 1; r++) {
        mc_wt W = {ws->w[r % ws->n], MC_BF16, false}, B = {NULL, MC_F32, false};
        double t, bw = pair ? bandwidth_like(be->n_threads, wbytes) : 0;
        t = mc_time_now();
        be->matmul(be, o, N, x, W, B, M, N, K);
        t = mc_time_now() - t;
        if (pair) {
            pair->best_bw = MC_MAX(pair->best_bw, bw);
            ratios[r] = (double)wbytes / t / bw;
        }
        if (r > 0 && t < best) best = t; /* the first call warms up threads and pages */
    }
    if (pair) {
        qsort(ratios + 1, (size_t)reps, sizeof(double), cmp_double);
        pair->ratio = ratios[1 + reps / 2];
    }
    free(ratios);
    mc_aligned_free(x);
    mc_aligned_free(o);
    return best;
}

static void bench_gemv(mc_backend *be, const wset *up, const wset *down, const wset *head) {
    const wset *sets[3] = {up, down, head};
    printf("decode matmul, M=1, bf16 weights read from DRAM (copies of W far beyond the caches):\n"
           "best GB/s | best GB/s of a plain parallel read of as many bytes, interleaved |\n"
           "median of the paired ratios (matmul / plain read, round by round):\n");
    for (int s = 0; s < 3; s++) {
        int N = sets[s]->N, K = sets[s]->K;
        double bytes = 2.0 * N * K;
        bw_pair pair;
        double cold = time_matmul(be, 1, sets[s], sets[s]->n > 1 ? 2 * sets[s]->n : 30, &pair);
        printf("  W[%6d, %4d] %6.1f MB: %5.1f GB/s | %5.1f GB/s | %3.0f%%", N, K, bytes / 1e6,
               bytes / cold / 1e9, pair.best_bw / 1e9, 100.0 * pair.ratio);
        if (sets[s]->n > 1) {
            wset hot = *sets[s];
            hot.n = 1;
            printf("; cache-hot %5.1f GB/s", bytes / time_matmul(be, 1, &hot, 200, NULL) / 1e9);
        }
        printf("\n");
    }
}

/* Both matmul paths over M, on W[4864, 896]: where the GEMV/GEMM crossover lies. */
static void bench_crossover(mc_backend *be, const wset *up) {
    static const int Ms[8] = {1, 2, 4, 8, 12, 16, 32, 64};
    mc_cpu *cpu = be->impl;
    int saved = cpu->gemv_max_m;
    printf("matmul over M, W[4864, 896] bf16 from DRAM (GFLOP/s): GEMV path | GEMM path\n");
    for (int i = 0; i < 8; i++) {
        int M = Ms[i];
        double fl = 2.0 * M * up->N * up->K, tv, tg;
        cpu->gemv_max_m = 1 << 30;
        tv = time_matmul(be, M, up, up->n, NULL);
        cpu->gemv_max_m = 0;
        tg = time_matmul(be, M, up, up->n, NULL);
        printf("  M=%2d: %6.1f | %6.1f%s\n", M, fl / tv / 1e9, fl / tg / 1e9,
               M <= saved ? "   (GEMV taken)" : "   (GEMM taken)");
    }
    cpu->gemv_max_m = saved;
}

/* Prefill at M = 512: the backend on bf16 weights against OpenBLAS sgemm on the same
 * weights already in f32 (its own threads), timed alternately round by round; best of each
 * and the median of the paired ratios (see bw_pair). */
static void bench_prefill(mc_backend *be, int nt, const wset *up, const wset *down) {
    enum { M = 512, ROUNDS = 9 };
    wset extra = make_wset(8192, 896, 1);
    const wset *sets[3] = {up, down, &extra};
    printf("prefill matmul, M=%d, bf16 weights, against OpenBLAS sgemm on the weights in f32\n"
           "(%d threads, alternated): best GFLOP/s backend | best sgemm | median paired ratio:\n",
           M, nt);
    for (int s = 0; s < 3; s++) {
        int N = sets[s]->N, K = sets[s]->K;
        float *x = alloc_f32((size_t)M * K), *wf = alloc_f32((size_t)N * K);
        float *o = alloc_f32((size_t)M * N);
        double fl = 2.0 * M * N * K, bb = 0, bs = 0, ratio[ROUNDS];
        mc_wt W = {sets[s]->w[0], MC_BF16, false}, B = {NULL, MC_F32, false};
        fill(x, (size_t)M * K);
        mc_convert_to_f32(wf, sets[s]->w[0], MC_BF16, (size_t)N * K);
        warm_up(nt);
        for (int r = 0; r < ROUNDS + 1; r++) {
            double tb = mc_time_now(), ts;
            be->matmul(be, o, N, x, W, B, M, N, K);
            tb = mc_time_now() - tb;
            openblas_set_num_threads(nt);
            ts = mc_time_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, wf, K, 0.0f,
                        o, N);
            ts = mc_time_now() - ts;
            if (r == 0) continue; /* warm-up round */
            bb = MC_MAX(bb, fl / tb);
            bs = MC_MAX(bs, fl / ts);
            ratio[r - 1] = ts / tb;
        }
        qsort(ratio, ROUNDS, sizeof(double), cmp_double);
        printf("  M=%d N=%4d K=%4d: %6.1f | %6.1f | %3.0f%%\n", M, N, K, bb / 1e9, bs / 1e9,
               100.0 * ratio[ROUNDS / 2]);
        mc_aligned_free(x);
        mc_aligned_free(wf);
        mc_aligned_free(o);
    }
    free_wset(&extra);
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
        warm_up(be->n_threads);
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
    mc_wt W = {w, MC_BF16, false};
    double t0, tr = 1e30, ts = 1e30, tp = 1e30, ta = 1e30;
    if (!pos) exit(1);
    fill(a, n);
    fill(b, n);
    for (int t = 0; t < T; t++) pos[t] = t;
    warm_up(be->n_threads);
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
    {
        /* ~1 GB of copies per shape, as much as a whole 0.5B model: far beyond any cache */
        wset up = make_wset(4864, 896, 120), down = make_wset(896, 4864, 120);
        wset head = make_wset(151936, 896, 4);
        bench_gemv(be, &up, &down, &head);
        bench_crossover(be, &up);
        bench_prefill(be, nt, &up, &down);
        free_wset(&up);
        free_wset(&down);
        free_wset(&head);
    }
    bench_attention(be);
    bench_elementwise(be);
    mc_backend_free(be);
    mc_aligned_free(g_buf);
    return 0;
}
