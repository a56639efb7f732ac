/* test_core.c - the core layer: status names, the last-error message and its prefixes, the
 * log callback, allocation with fault injection, checked arithmetic, 16-bit floats, dtype
 * conversion and the seeded RNG. */
#include "test.h"

#include "core/core.h"

static void test_status_names(void) {
    int s;
    CHECK(strcmp(mc_status_name(MC_OK), "MC_OK") == 0);
    CHECK(strcmp(mc_status_name(MC_ERR_JSON), "MC_ERR_JSON") == 0);
    CHECK(strcmp(mc_status_name(MC_ERR_INTERNAL), "MC_ERR_INTERNAL") == 0);
    /* every code has its own name starting with MC_ */
    for (s = MC_OK; s <= MC_ERR_INTERNAL; s++) {
        int t;
        const char *name = mc_status_name((mc_status)s);
        CHECK(strncmp(name, "MC_", 3) == 0);
        CHECK(strcmp(name, "MC_ERR_UNKNOWN") != 0);
        for (t = MC_OK; t < s; t++) CHECK(strcmp(name, mc_status_name((mc_status)t)) != 0);
    }
    CHECK(strcmp(mc_status_name((mc_status)999), "MC_ERR_UNKNOWN") == 0);
}

static void test_last_error(void) {
    char long_msg[3000];
    mc_error_clear();
    CHECK(strcmp(mc_last_error(), "") == 0);
    CHECK_STATUS(mc_fail(MC_ERR_SHAPE, "%s: tensor %s", "a.safetensors", "w"), MC_ERR_SHAPE);
    CHECK(strcmp(mc_last_error(), "a.safetensors: tensor w") == 0);
    mc_error_prefix("loading %s", "dir");
    CHECK(strcmp(mc_last_error(), "loading dir: a.safetensors: tensor w") == 0);
    /* an over-long message is cut, never overflows, and keeps its start */
    memset(long_msg, 'x', sizeof long_msg - 1);
    long_msg[sizeof long_msg - 1] = '\0';
    (void)mc_fail(MC_ERR_IO, "%s", long_msg);
    CHECK(strlen(mc_last_error()) < sizeof long_msg - 1);
    mc_error_prefix("ctx");
    CHECK(strncmp(mc_last_error(), "ctx: xxx", 8) == 0);
    mc_error_clear();
    CHECK(strcmp(mc_last_error(), "") == 0);
}

static int g_log_calls;
static mc_log_level g_log_level;
static char g_log_msg[128];

static void capture_log(mc_log_level level, const char *msg, void *user) {
    g_log_calls += *(const int *)user;
    g_log_level = level;
    snprintf(g_log_msg, sizeof g_log_msg, "%s", msg);
}

static void test_log(void) {
    int one = 1;
    g_log_calls = 0;
    mc_log(MC_LOG_INFO, "nobody listens"); /* no callback: nothing happens */
    mc_set_log(capture_log, &one);
    mc_log(MC_LOG_WARN, "value %d", 7);
    CHECK_INT(g_log_calls, 1);
    CHECK_INT(g_log_level, MC_LOG_WARN);
    CHECK(strcmp(g_log_msg, "value 7") == 0);
    mc_set_log(NULL, NULL);
    mc_log(MC_LOG_ERROR, "silenced");
    CHECK_INT(g_log_calls, 1);
}

static void test_dtypes(void) {
    CHECK(strcmp(mc_dtype_name(MC_F32), "F32") == 0);
    CHECK(strcmp(mc_dtype_name(MC_F16), "F16") == 0);
    CHECK(strcmp(mc_dtype_name(MC_BF16), "BF16") == 0);
    CHECK(strcmp(mc_dtype_name((mc_dtype)42), "?") == 0);
    CHECK_INT(mc_dtype_size(MC_F32), 4);
    CHECK_INT(mc_dtype_size(MC_F16), 2);
    CHECK_INT(mc_dtype_size(MC_BF16), 2);
}

static void test_alloc(void) {
    char *p, *q;
    void *a;
    size_t n;
    p = mc_malloc(0); /* zero bytes still gives a pointer to free */
    CHECK(p != NULL);
    q = mc_realloc(p, 100);
    CHECK(q != NULL);
    mc_free(q);
    p = mc_calloc(0, 8);
    CHECK(p != NULL);
    mc_free(p);
    p = mc_calloc(4, 8);
    CHECK(p != NULL && p[0] == 0 && p[31] == 0);
    mc_free(p);
    p = mc_strdup("weights");
    CHECK(p && strcmp(p, "weights") == 0);
    mc_free(p);
    a = mc_aligned_alloc(100);
    CHECK(a != NULL && ((uintptr_t)a & 63) == 0);
    mc_aligned_free(a);
    CHECK(mc_aligned_alloc(SIZE_MAX) == NULL); /* size rounding overflows */
    mc_free(NULL);
    mc_aligned_free(NULL);

    /* fault injection: the 2nd allocation from now fails, then allocation works again */
    (void)mc_debug_fail_alloc_after(2);
    p = mc_malloc(8);
    CHECK(p != NULL);
    CHECK(mc_calloc(1, 8) == NULL);
    q = mc_malloc(8);
    CHECK(q != NULL);
    mc_free(p);
    mc_free(q);
    n = mc_debug_fail_alloc_after(1);
    CHECK_INT(n, 3); /* the three allocations above */
    CHECK(mc_realloc(NULL, 8) == NULL);
    (void)mc_debug_fail_alloc_after(1);
    CHECK(mc_aligned_alloc(8) == NULL);
    (void)mc_debug_fail_alloc_after(1);
    CHECK(mc_strdup("x") == NULL);
    (void)mc_debug_fail_alloc_after(0);
    p = mc_malloc(1);
    q = mc_malloc(1);
    n = mc_debug_fail_alloc_after(0);
    CHECK_INT(n, 2); /* allocations counted since the last call */
    mc_free(p);
    mc_free(q);
}

static void test_checked_arithmetic(void) {
    size_t r = 0;
    CHECK(mc_mul_ok(3, 4, &r) && r == 12);
    CHECK(mc_mul_ok(0, SIZE_MAX, &r) && r == 0);
    CHECK(!mc_mul_ok(SIZE_MAX / 2 + 1, 2, &r));
    CHECK(mc_add_ok(SIZE_MAX - 1, 1, &r) && r == SIZE_MAX);
    CHECK(!mc_add_ok(SIZE_MAX, 1, &r));
    CHECK_INT(MC_MIN(3, 5), 3);
    CHECK_INT(MC_MAX(3, 5), 5);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_f16(void) {
    static const struct {
        float f;
        uint16_t h;
    } exact[] = {
        {0.0f, 0x0000},       {1.0f, 0x3c00},      {-2.0f, 0xc000},  {0.5f, 0x3800},
        {65504.0f, 0x7bff},   {5.9604644775390625e-8f, 0x0001}, /* smallest subnormal */
        {6.103515625e-5f, 0x0400},                  /* smallest normal */
        {-0.333251953125f, 0xb555},
    };
    size_t i;
    for (i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        CHECK_INT(mc_f32_to_f16(exact[i].f), exact[i].h);
        CHECK_NEAR(mc_f16_to_f32(exact[i].h), exact[i].f, 0);
    }
    CHECK_INT(f32_bits(mc_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    CHECK_INT(mc_f16_to_f32(0x8001) < 0, 1); /* negative subnormal */
    /* round to nearest even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
    CHECK_INT(mc_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    CHECK_INT(mc_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    CHECK_INT(mc_f32_to_f16(65520.0f), 0x7c00); /* rounds up to infinity */
    CHECK_INT(mc_f32_to_f16(1e9f), 0x7c00);
    CHECK_INT(mc_f32_to_f16(-1e9f), 0xfc00);
    CHECK_INT(mc_f32_to_f16(1e-10f), 0x0000); /* underflow to zero */
    CHECK_INT(mc_f32_to_f16(bits_f32(0x7fc00000u)), 0x7e00); /* NaN stays NaN */
    CHECK(isinf(mc_f16_to_f32(0x7c00)) && mc_f16_to_f32(0x7c00) > 0);
    CHECK(isnan(mc_f16_to_f32(0x7e00)));
    /* every finite half survives f16 -> f32 -> f16 */
    for (i = 0; i < 0x10000; i++) {
        uint16_t h = (uint16_t)i;
        if ((h & 0x7c00u) == 0x7c00u) continue;
        if (mc_f32_to_f16(mc_f16_to_f32(h)) != h) {
            CHECK_INT(mc_f32_to_f16(mc_f16_to_f32(h)), h);
            break;
        }
    }
}

static void test_bf16(void) {
    CHECK_INT(mc_f32_to_bf16(1.0f), 0x3f80);
    CHECK_INT(mc_f32_to_bf16(-2.0f), 0xc000);
    CHECK_INT(mc_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* halfway: to even */
    CHECK_INT(mc_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    CHECK(isnan(mc_bf16_to_f32(mc_f32_to_bf16(bits_f32(0x7f800001u))))); /* NaN kept quiet */
    CHECK_NEAR(mc_bf16_to_f32(0x4049), 3.140625, 0);
}

static void test_convert(void) {
    const float src[5] = {0.0f, 1.0f, -2.5f, 0.1f, 1000.0f};
    float back[5], f32[5];
    uint16_t h[5];
    size_t i;
    mc_convert_from_f32(h, src, MC_F16, 5);
    mc_convert_to_f32(back, h, MC_F16, 5);
    CHECK_REL_L2(back, src, 5, 1e-3);
    for (i = 0; i < 5; i++) CHECK_NEAR(mc_load_f32(h, MC_F16, i), back[i], 0);
    mc_convert_from_f32(h, src, MC_BF16, 5);
    mc_convert_to_f32(back, h, MC_BF16, 5);
    CHECK_REL_L2(back, src, 5, 1e-2);
    for (i = 0; i < 5; i++) CHECK_NEAR(mc_load_f32(h, MC_BF16, i), back[i], 0);
    mc_convert_from_f32(f32, src, MC_F32, 5);
    mc_convert_to_f32(back, f32, MC_F32, 5);
    CHECK_REL_L2(back, src, 5, 0);
    CHECK_NEAR(mc_load_f32(f32, MC_F32, 2), -2.5, 0);
}

static void test_rng(void) {
    mc_rng a, b;
    double sum = 0, sum2 = 0;
    int i, same = 1;
    const int n = 20000;
    mc_rng_seed(&a, 42);
    mc_rng_seed(&b, 42);
    for (i = 0; i < 100; i++) same &= mc_rng_next(&a) == mc_rng_next(&b);
    CHECK(same);
    mc_rng_seed(&b, 43);
    CHECK(mc_rng_next(&a) != mc_rng_next(&b));
    for (i = 0; i < n; i++) {
        double u = mc_rng_uniform(&a);
        CHECK(u >= 0.0 && u < 1.0);
        sum += u;
    }
    CHECK_NEAR(sum / n, 0.5, 0.02);
    sum = 0;
    for (i = 0; i < n; i++) {
        double z = mc_rng_normal(&a);
        sum += z;
        sum2 += z * z;
    }
    CHECK_NEAR(sum / n, 0.0, 0.05);
    CHECK_NEAR(sum2 / n, 1.0, 0.05);
}

/* The greedy choice: first index of the largest value; NaN, +inf and all -inf fail. */
static void test_argmax(void) {
    const float tie[6] = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f, 3.0f};
    float row[5] = {-INFINITY, -INFINITY, -1.0f, -INFINITY, -3.0f};
    int32_t idx = -7;
    CHECK_OK(mc_argmax_row(tie, 6, 0, &idx));
    CHECK_INT(idx, 1);
    CHECK_OK(mc_argmax_row(row, 5, 0, &idx));
    CHECK_INT(idx, 2);
    row[2] = -INFINITY;
    row[4] = -INFINITY;
    idx = -7;
    CHECK_STATUS(mc_argmax_row(row, 5, 3, &idx), MC_ERR_NUMERIC);
    CHECK_MSG("row 3: every logit is -inf");
    CHECK_INT(idx, -7);
    row[1] = NAN;
    row[3] = INFINITY;
    CHECK_STATUS(mc_argmax_row(row, 5, 0, &idx), MC_ERR_NUMERIC);
    CHECK_MSG("token 1 is NaN");
    row[1] = 0.0f;
    CHECK_STATUS(mc_argmax_row(row, 5, 0, &idx), MC_ERR_NUMERIC);
    CHECK_MSG("token 3 is +inf");
}

static void test_clock_and_memory(void) {
    double t0 = mc_time_now(), t1 = mc_time_now();
    CHECK(t0 > 0 && t1 >= t0);
    CHECK(mc_peak_rss_bytes() > 0);
}

int main(void) {
    RUN(test_status_names);
    RUN(test_last_error);
    RUN(test_log);
    RUN(test_dtypes);
    RUN(test_alloc);
    RUN(test_checked_arithmetic);
    RUN(test_argmax);
    RUN(test_f16);
    RUN(test_bf16);
    RUN(test_convert);
    RUN(test_rng);
    RUN(test_clock_and_memory);
    return t_summary();
}
