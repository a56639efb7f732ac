/* alloc.c - the library's allocation functions, with fault injection for tests. */
#include "core.h"

#include <stdlib.h>

static _Thread_local size_t g_fail_countdown; /* 0 = off; 1 = the next allocation fails */
static _Thread_local size_t g_alloc_count;

size_t mc_debug_fail_alloc_after(size_t n) {
    size_t c = g_alloc_count;
    g_fail_countdown = n;
    g_alloc_count = 0;
    return c;
}

/* Returns true when this allocation must fail (fault injection). */
static bool inject_failure(void) {
    g_alloc_count++;
    if (g_fail_countdown == 0) return false;
    if (--g_fail_countdown == 0) return true;
    return false;
}

void *mc_malloc(size_t n) {
    if (inject_failure()) return NULL;
    return malloc(n ? n : 1);
}

void *mc_calloc(size_t count, size_t size) {
    if (inject_failure()) return NULL;
    if (count == 0 || size == 0) return calloc(1, 1);
    return calloc(count, size);
}

void *mc_realloc(void *p, size_t n) {
    if (inject_failure()) return NULL;
    return realloc(p, n ? n : 1);
}

void *mc_aligned_alloc(size_t n) {
    size_t rounded;
    if (inject_failure()) return NULL;
    if (!mc_add_ok(n ? n : 1, 63, &rounded)) return NULL;
    rounded &= ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void mc_free(void *p) { free(p); }
void mc_aligned_free(void *p) { free(p); }

char *mc_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mc_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
