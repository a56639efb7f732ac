/* cli_util.c - argument parsing and error printing shared by the subcommands. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_fail(const char *cmd, mc_status s, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "mcandle %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (s != MC_OK) fprintf(stderr, ": %s [%s]", mc_last_error(), mc_status_name(s));
    fputc('\n', stderr);
    return 1;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "mcandle %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see mcandle %s --help)\n", cmd);
    return 2;
}

int cli_parse_int(const char *s, long lo, long hi, long *out) {
    char *end = NULL;
    long v;
    errno = 0;
    if (!s || !*s) return -1;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, double *out) {
    char *end = NULL;
    double v;
    errno = 0;
    if (!s || !*s) return -1;
    v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int cli_parse_ids(const char *s, int32_t **ids, size_t *n) {
    size_t cap = 16, count = 0;
    int32_t *a;
    const char *p = s;
    if (!s) return -1;
    a = malloc(cap * sizeof *a);
    if (!a) return -1;
    while (*p) {
        char *end = NULL;
        long v;
        while (*p == ' ') p++;
        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) goto bad;
        if (count == cap) {
            int32_t *b = realloc(a, 2 * cap * sizeof *a);
            if (!b) goto bad;
            a = b;
            cap *= 2;
        }
        a[count++] = (int32_t)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') {
            p++;
            if (!*p) goto bad;
        } else if (*p) {
            goto bad;
        }
    }
    if (count == 0) goto bad;
    *ids = a;
    *n = count;
    return 0;
bad:
    free(a);
    return -1;
}

int cli_opt(int argc, char **argv, int *i, const char *name, const char **val, int *missing) {
    if (strcmp(argv[*i], name) != 0) return 0;
    if (*i + 1 >= argc) {
        *missing = 1;
        return 1;
    }
    *i += 1;
    *val = argv[*i];
    return 1;
}

/* The signature is fixed by mc_log_fn, so user cannot be a pointer to const. */
/* cppcheck-suppress constParameter */
static void log_to_stderr(mc_log_level level, const char *msg, void *user) {
    int verbose = user != NULL;
    static const char *names[] = {"debug", "info", "warning", "error"};
    if (!verbose && level < MC_LOG_WARN) return;
    fprintf(stderr, "mcandle: %s: %s\n", names[level], msg);
}

void cli_install_log(int verbose) {
    static int on = 1;
    mc_set_log(log_to_stderr, verbose ? &on : NULL);
}
