/* backend_test_util.h - shared by the CPU backend tests: the backends under test (the
 * reference and four fast variants), a seeded RNG, and helpers to make inputs and weights. */
#ifndef MC_BACKEND_TEST_UTIL_H
#define MC_BACKEND_TEST_UTIL_H

#include "backend/cpu/cpu.h"
#include "test.h"

/* Backends under test: the reference, then fast variants. */
enum { N_FAST = 4 };
static mc_backend *g_ref;
static mc_backend *g_fast[N_FAST];
static const char *g_fast_name[N_FAST] = {"avx2 x all", "avx2 x 1", "avx2 x 3", "portable x all"};
static mc_rng g_rng;

static const mc_dtype k_dtypes[3] = {MC_F32, MC_BF16, MC_F16};

/* Creates g_ref and g_fast[] (exits when that fails: nothing else can run). */
static void create_backends(void) {
    CHECK_OK(mc_backend_cpu_create(1, true, &g_ref));
    CHECK_OK(mc_backend_cpu_create(0, false, &g_fast[0]));
    CHECK_OK(mc_cpu_create(1, MC_CPU_AVX2, &g_fast[1]));
    CHECK_OK(mc_cpu_create(3, MC_CPU_AVX2, &g_fast[2]));
    CHECK_OK(mc_cpu_create(0, MC_CPU_PORTABLE, &g_fast[3]));
    if (!g_ref || !g_fast[0] || !g_fast[1] || !g_fast[2] || !g_fast[3]) exit(1);
}

/* x[i] = scale * N(0, 1), never exactly zero. */
static void fill_normal(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) {
        float v = mc_rng_normal(&g_rng) * scale;
        x[i] = v != 0.0f ? v : scale * 0.5f;
    }
}

static void poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* A weight tensor of n random values stored as dtype t; *vals receives the values it holds
 * (after rounding to t) as f32. Free both with free(). */
static void *make_weight(mc_dtype t, size_t n, float scale, float **vals) {
    float *f = falloc(n);
    void *w = malloc(n * mc_dtype_size(t) + 1);
    if (!w) exit(2);
    fill_normal(f, n, scale);
    mc_convert_from_f32(w, f, t, n);
    mc_convert_to_f32(f, w, t, n);
    *vals = f;
    return w;
}

#endif /* MC_BACKEND_TEST_UTIL_H */
