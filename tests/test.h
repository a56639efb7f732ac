/* test.h - a minimal test harness: CHECK macros that report file:line and the first
 * differing values, and a main() helper that prints "N passed, N failed". */
#ifndef MC_TEST_H
#define MC_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcandle.h"

static int t_checks_failed;
static int t_cases_passed, t_cases_failed;

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

#define CHECK_INT(a, b)                                                                     \
    do {                                                                                    \
        long long t_a_ = (long long)(a), t_b_ = (long long)(b);                             \
        if (t_a_ != t_b_) {                                                                 \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, \
                    #a, t_a_, #b, t_b_);                                                    \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

/* Checks a call's status; on mismatch prints both names and the library's message. */
#define CHECK_STATUS(expr, expected)                                                        \
    do {                                                                                    \
        mc_status t_s_ = (expr);                                                            \
        if (t_s_ != (expected)) {                                                           \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__, \
                    #expr, mc_status_name(t_s_), mc_status_name(expected), mc_last_error()); \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, MC_OK)

/* Checks that the last error message contains a substring. */
#define CHECK_MSG(sub)                                                                      \
    do {                                                                                    \
        if (!strstr(mc_last_error(), (sub))) {                                              \
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__,    \
                    mc_last_error(), (sub));                                                \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

/* Relative L2 error ||a - b|| / ||b||; prints the first differing element and the largest
 * absolute difference when above tol. Returns the error. */
static inline double t_check_rel_l2(const char *file, int line, const char *what, const float *a,
                                    const float *b, size_t n, double tol) {
    double num = 0, den = 0, maxd = 0;
    size_t imax = 0, first = n;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
        if (fabs(d) > maxd || d != d) {
            maxd = fabs(d);
            imax = i;
        }
        if (first == n && fabs(d) > tol * (fabs((double)b[i]) + 1e-6)) first = i;
    }
    {
        double err = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(err <= tol)) {
            fprintf(stderr, "%s:%d: %s: rel L2 %.3g > %.3g; max |diff| %.3g at %zu (%g vs %g)",
                    file, line, what, err, tol, maxd, imax, (double)a[imax], (double)b[imax]);
            if (first < n)
                fprintf(stderr, "; first diff at %zu (%g vs %g)", first, (double)a[first],
                        (double)b[first]);
            fprintf(stderr, "\n");
            t_checks_failed++;
        }
        return err;
    }
}
#define CHECK_REL_L2(a, b, n, tol) t_check_rel_l2(__FILE__, __LINE__, #a, (a), (b), (n), (tol))

#define CHECK_NEAR(a, b, tol)                                                               \
    do {                                                                                    \
        double t_a_ = (double)(a), t_b_ = (double)(b);                                      \
        if (!(fabs(t_a_ - t_b_) <= (tol))) {                                                \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__,   \
                    __LINE__, #a, t_a_, #b, t_b_, (double)(tol));                           \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

/* Runs one test case function and records whether it added failures. */
#define RUN(fn)                                                                             \
    do {                                                                                    \
        int t_before_ = t_checks_failed;                                                    \
        fn();                                                                               \
        if (t_checks_failed == t_before_) {                                                 \
            t_cases_passed++;                                                               \
        } else {                                                                            \
            t_cases_failed++;                                                               \
            fprintf(stderr, "FAILED: %s\n", #fn);                                           \
        }                                                                                   \
    } while (0)

/* Prints the summary line and returns the process exit code. */
static inline int t_summary(void) {
    printf("%d passed, %d failed\n", t_cases_passed, t_cases_failed);
    return t_cases_failed ? 1 : 0;
}

/* Path under the source tree (static buffer, one at a time). */
static inline const char *t_src(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", MC_SOURCE_DIR, rel);
    return buf;
}

/* A fresh scratch folder under the build tree: MC_BINARY_DIR/tmp/<name> (emptied). */
static inline const char *t_tmpdir(const char *name) {
    static char buf[4096];
    char cmd[2 * sizeof buf + 64];
    snprintf(buf, sizeof buf, "%s/tmp/%s", MC_BINARY_DIR, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    if (system(cmd) != 0) fprintf(stderr, "cannot create %s\n", buf);
    return buf;
}

/* A token callback of mc_generate that counts the tokens (user: an int) and never stops:
 * setting it makes generation read every step's logits on the host. */
static inline int t_count_tokens(int seq, const char *text, size_t len, int32_t token, float lp,
                                 void *user) {
    (void)seq;
    (void)text;
    (void)len;
    (void)lp;
    if (token >= 0) ++*(int *)user;
    return 0;
}

/* Greedy generation of n prompts twice: into dev with p as given (the backend's argmax when
 * p allows it), then into host with t_count_tokens as token callback (the sampler reading
 * every step's logits). Returns the callback's count. */
static inline int t_generate_both(mc_context *ctx, const int32_t *const *prompts,
                                  const size_t *lens, int n, mc_generate_params p,
                                  mc_generation *dev, mc_generation *host) {
    int calls = 0;
    CHECK_OK(mc_generate_batch(ctx, prompts, lens, n, &p, dev));
    p.on_token = t_count_tokens;
    p.user = &calls;
    CHECK_OK(mc_generate_batch(ctx, prompts, lens, n, &p, host));
    return calls;
}

#endif /* MC_TEST_H */
