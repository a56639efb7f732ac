/* bench_util.h - small helpers shared by the benchmark programs in bench/: option parsing,
 * a median helper, and a progress callback that times the training steps after the first. */
#ifndef MC_BENCH_UTIL_H
#define MC_BENCH_UTIL_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* Value of integer option name (def when absent); -1 when it is not an integer in
 * 1..INT_MAX. */
static inline int arg_int(int argc, char **argv, const char *name, int def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) {
            char *end = NULL;
            long v = strtol(argv[i + 1], &end, 10);
            return end != argv[i + 1] && !*end && v >= 1 && v <= INT_MAX ? (int)v : -1;
        }
    return def;
}

/* Value of option name, or NULL when absent. */
static inline const char *arg_str(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return NULL;
}

/* 1 when flag name is present. */
static inline int has_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name)) return 1;
    return 0;
}

/* qsort comparator for doubles (ascending). */
static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Times training steps warm + 1..N (steps 1..warm warm up, warm >= 1) through the
 * progress callback. */
typedef struct timing {
    int warm;
    double t_first, t_last;
    int steps;
    long long tokens_first, tokens_last;
    double loss_first, loss_last;
} timing;

static inline int timing_progress(const mc_train_progress *p, void *user) {
    timing *t = user;
    if (p->is_eval) return 0;
    if (p->step == t->warm) {
        t->t_first = mc_time_now();
        t->tokens_first = p->tokens;
        t->loss_first = p->loss;
    }
    t->t_last = mc_time_now();
    t->tokens_last = p->tokens;
    t->loss_last = p->loss;
    t->steps = p->step;
    printf("  step %d: loss %.4f, %.0f tokens/s\n", p->step, p->loss, p->tokens_per_s);
    fflush(stdout);
    return 0;
}

#endif /* MC_BENCH_UTIL_H */
