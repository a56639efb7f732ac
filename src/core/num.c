/* num.c - f16 conversion, bulk dtype conversion, RNG, clocks and memory statistics. */
#include "core.h"

#include <math.h>
#include <sys/resource.h>
#include <time.h>

float mc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    float f;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: value = man * 2^-24 */
            f = (float)man * 5.9604644775390625e-8f;
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t mc_f32_to_f16(float f) {
    uint32_t u;
    uint32_t sign;
    uint32_t a;
    memcpy(&u, &f, sizeof u);
    sign = (u >> 16) & 0x8000u;
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (a < 0x38800000u) {                                   /* subnormal or zero */
        float af;
        memcpy(&af, &a, sizeof af);
        /* round to nearest even at 2^-24 granularity */
        return (uint16_t)(sign | (uint32_t)lrintf(af * 16777216.0f));
    }
    {
        uint32_t r = a + 0xfffu + ((a >> 13) & 1u); /* round to nearest even */
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
}

void mc_convert_to_f32(float *dst, const void *src, mc_dtype t, size_t n) {
    size_t i;
    switch (t) {
    case MC_F32: memcpy(dst, src, n * sizeof(float)); break;
    case MC_BF16:
        for (i = 0; i < n; i++) dst[i] = mc_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MC_F16:
        for (i = 0; i < n; i++) dst[i] = mc_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    }
}

void mc_convert_from_f32(void *dst, const float *src, mc_dtype t, size_t n) {
    size_t i;
    switch (t) {
    case MC_F32: memcpy(dst, src, n * sizeof(float)); break;
    case MC_BF16:
        for (i = 0; i < n; i++) ((uint16_t *)dst)[i] = mc_f32_to_bf16(src[i]);
        break;
    case MC_F16:
        for (i = 0; i < n; i++) ((uint16_t *)dst)[i] = mc_f32_to_f16(src[i]);
        break;
    }
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void mc_rng_seed(mc_rng *r, uint64_t seed) {
    int i;
    for (i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mc_rng_next(mc_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mc_rng_uniform(mc_rng *r) { return (double)(mc_rng_next(r) >> 11) * 0x1.0p-53; }

float mc_rng_normal(mc_rng *r) {
    double u1 = mc_rng_uniform(r);
    double u2 = mc_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

mc_status mc_argmax_fail(int row, int bad, int is_nan, int n) {
    if (bad < 0)
        return mc_fail(MC_ERR_NUMERIC, "logits row %d: every logit is -inf (%d tokens)", row, n);
    return mc_fail(MC_ERR_NUMERIC, "logits row %d: the logit of token %d is %s", row, bad,
                   is_nan ? "NaN" : "+inf");
}

mc_status mc_argmax_row(const float *x, int n, int row, int32_t *idx) {
    float m = -INFINITY;
    int32_t best = -1;
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        if (!(v < INFINITY)) return mc_argmax_fail(row, i, isnan(v), n);
        if (v > m) {
            m = v;
            best = i;
        }
    }
    if (best < 0) return mc_argmax_fail(row, -1, 0, n);
    *idx = best;
    return MC_OK;
}

double mc_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t mc_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u;
}
