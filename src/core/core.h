/* core.h - internal foundation: error reporting, logging, checked arithmetic, allocation
 * with fault injection, 16-bit float conversion, and a small seeded RNG. */
#ifndef MC_CORE_H
#define MC_CORE_H

#include "mcandle.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define MC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MC_PRINTF(f, a)
#endif

/* Records msg as this thread's last error and returns s. Use at the point of detection:
 *   return mc_fail(MC_ERR_JSON, "%s: expected an object", path); */
mc_status mc_fail(mc_status s, const char *fmt, ...) MC_PRINTF(2, 3);

/* Prepends "prefix: " to the current error message (adds context on the way up). */
void mc_error_prefix(const char *fmt, ...) MC_PRINTF(1, 2);

/* Clears this thread's last error. */
void mc_error_clear(void);

/* Sends a formatted message to the installed log callback (nothing if none). */
void mc_log(mc_log_level level, const char *fmt, ...) MC_PRINTF(2, 3);

/* Allocation. All library allocations go through these so tests can inject failures.
 * mc_malloc/mc_calloc return NULL on failure (and on fault injection); callers turn that
 * into MC_ERR_OOM with mc_fail. mc_aligned_alloc returns 64-byte-aligned memory. */
void *mc_malloc(size_t n);
void *mc_calloc(size_t count, size_t size);
void *mc_realloc(void *p, size_t n);
void *mc_aligned_alloc(size_t n);
void mc_free(void *p);
void mc_aligned_free(void *p);
char *mc_strdup(const char *s);

/* Test hook: the n-th allocation from now (1 = next) fails; 0 disables. Returns how many
 * allocations have happened since the last call (for sweeping n). */
MC_API size_t mc_debug_fail_alloc_after(size_t n);

/* Checked arithmetic on sizes derived from file contents: return false on overflow. */
static inline bool mc_mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}
static inline bool mc_add_ok(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return false;
    *out = a + b;
    return true;
}

/* 16-bit floats. bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even (NaN kept). */
static inline float mc_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t mc_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float mc_f16_to_f32(uint16_t h);
uint16_t mc_f32_to_f16(float f);

/* Reads element i of a dtype-typed array as f32. */
static inline float mc_load_f32(const void *p, mc_dtype t, size_t i) {
    switch (t) {
    case MC_BF16: return mc_bf16_to_f32(((const uint16_t *)p)[i]);
    case MC_F16: return mc_f16_to_f32(((const uint16_t *)p)[i]);
    case MC_F32:
    default: return ((const float *)p)[i];
    }
}
/* Converts n elements of dtype t at src into f32 at dst. */
void mc_convert_to_f32(float *dst, const void *src, mc_dtype t, size_t n);
/* Converts n f32 values into dtype t at dst (round to nearest even). */
void mc_convert_from_f32(void *dst, const float *src, mc_dtype t, size_t n);

/* Seeded RNG (xoshiro256**), state is plain data so it can be checkpointed. */
typedef struct mc_rng {
    uint64_t s[4];
} mc_rng;
void mc_rng_seed(mc_rng *r, uint64_t seed);
uint64_t mc_rng_next(mc_rng *r);
double mc_rng_uniform(mc_rng *r); /* [0, 1) with 53 random bits */
float mc_rng_normal(mc_rng *r);   /* standard normal (Box-Muller) */

/* *idx = the index of the largest of x[0..n) (the first one on ties): MC_OK, or
 * MC_ERR_NUMERIC with a message naming `row` and the token when a value is NaN or +inf (the
 * first such) or every value is -inf. The greedy choice over one row of logits. */
mc_status mc_argmax_row(const float *x, int n, int row, int32_t *idx);
/* The message of a failed argmax of row `row`: bad >= 0 is the first token whose logit is
 * NaN (is_nan) or +inf; bad < 0 means every logit is -inf. Returns MC_ERR_NUMERIC. */
mc_status mc_argmax_fail(int row, int bad, int is_nan, int n);

/* Wall-clock seconds (monotonic) and the process's peak resident set in bytes. */
double mc_time_now(void);
uint64_t mc_peak_rss_bytes(void);

#ifndef __CPPCHECK__
#define MC_MIN(a, b) ((a) < (b) ? (a) : (b))
#else
/* Seen only by cppcheck (scripts/test.sh defines __CPPCHECK__): cppcheck 2.10 judges
 * MC_MIN(TILE, n - i) inside a loop over i < n to be always below 1 and reports the tile
 * loop's condition as always false. An opaque call hides just this ternary from it. */
#define MC_MIN(a, b) mc_cppcheck_min_((a), (b))
#endif
#define MC_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif /* MC_CORE_H */
