/* json.c - JSON helpers over cJSON: length-bounded parsing that reports the file and byte
 * offset of a syntax error (and tells allocation failures apart), integer checks on
 * JSON numbers, duplicate-key detection, and a string builder for writing JSON. */
#include "io_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* cJSON allocates through these once hooks are installed, so fault injection reaches
 * it; g_json_oom records that an allocation failed during the current parse. */
static _Thread_local bool g_json_oom;

static void *json_malloc(size_t n) {
    void *p = mc_malloc(n);
    if (!p) g_json_oom = true;
    return p;
}

static void json_free(void *p) { mc_free(p); }

static pthread_once_t g_hooks_once = PTHREAD_ONCE_INIT;

static void install_hooks(void) {
    cJSON_Hooks h;
    h.malloc_fn = json_malloc;
    h.free_fn = json_free;
    cJSON_InitHooks(&h);
}

/* True for the four characters JSON counts as whitespace. */
static bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Reports a syntax error at byte off of text[0..len). */
static mc_status syntax_error(const char *text, size_t len, size_t off, const char *fname,
                              const char *what) {
    size_t line = 1, i;
    for (i = 0; i < off && i < len; i++)
        if (text[i] == '\n') line++;
    return mc_fail(MC_ERR_JSON, "%s: %s at byte %zu (line %zu)", fname, what, off, line);
}

mc_status mc_json_parse(const char *text, size_t len, const char *fname, cJSON **out) {
    char *copy = NULL;
    cJSON *root = NULL;
    const char *end = NULL;
    size_t cap, off;
    mc_status st = MC_OK;
    fname = mc_io_name(fname);
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_json_parse: out is NULL", fname);
    *out = NULL;
    if (!text && len) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_json_parse: text is NULL", fname);
    (void)pthread_once(&g_hooks_once, install_hooks);
    /* cJSON gets a NUL-terminated copy, so even a scan that overshoots the length stops. */
    if (!mc_add_ok(len, 1, &cap)) return mc_fail(MC_ERR_OOM, "%s: JSON text too large", fname);
    copy = mc_malloc(cap);
    if (!copy) return mc_fail(MC_ERR_OOM, "%s: out of memory for %zu bytes of JSON", fname, len);
    if (len) memcpy(copy, text, len);
    copy[len] = '\0';
    g_json_oom = false;
    root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
    if (!root) {
        if (g_json_oom) {
            st = mc_fail(MC_ERR_OOM, "%s: out of memory parsing JSON", fname);
        } else {
            off = (end && end >= copy && end <= copy + len) ? (size_t)(end - copy) : len;
            st = syntax_error(copy, len, off, fname, len ? "malformed JSON" : "empty JSON text");
        }
        goto done;
    }
    off = (end && end >= copy && end <= copy + len) ? (size_t)(end - copy) : len;
    while (off < len && is_json_space(copy[off])) off++;
    if (off < len) {
        st = syntax_error(copy, len, off, fname, "unexpected data after the JSON value");
        goto done;
    }
    *out = root;
    root = NULL;
done:
    cJSON_Delete(root);
    mc_free(copy);
    return st;
}

bool mc_json_int_in(const cJSON *item, double lo, double hi, int64_t *out) {
    double d;
    if (!cJSON_IsNumber(item)) return false;
    d = item->valuedouble;
    if (!isfinite(d) || d < lo || d > hi || d > MC_JSON_MAX_EXACT || d < -MC_JSON_MAX_EXACT)
        return false;
    if (floor(d) != d) return false;
    *out = (int64_t)d;
    return true;
}

const char *mc_json_type_name(const cJSON *item) {
    if (!item) return "nothing";
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "an invalid value";
}

static int cmp_str_ptr(const void *a, const void *b) {
    const char *const *x = a;
    const char *const *y = b;
    return strcmp(*x, *y);
}

mc_status mc_json_check_unique(const cJSON *obj, const char *fname, const char *what,
                               mc_status code) {
    const cJSON *c;
    const char **keys = NULL;
    size_t n = 0, i, bytes;
    mc_status st = MC_OK;
    for (c = obj ? obj->child : NULL; c; c = c->next) n++;
    if (n < 2) return MC_OK;
    if (!mc_mul_ok(n, sizeof *keys, &bytes)) return mc_fail(MC_ERR_OOM, "%s: too many keys", fname);
    keys = mc_malloc(bytes);
    if (!keys) return mc_fail(MC_ERR_OOM, "%s: out of memory checking %zu keys", fname, n);
    i = 0;
    for (c = obj->child; c; c = c->next) keys[i++] = c->string ? c->string : "";
    qsort(keys, n, sizeof *keys, cmp_str_ptr);
    for (i = 1; i < n; i++) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            st = mc_fail(code, "%s: %s '%.200s' occurs twice", fname, what, keys[i]);
            break;
        }
    }
    mc_free(keys);
    return st;
}

/* ---- string builder ------------------------------------------------------------------ */

/* Makes room for n more bytes plus a NUL; false (and oom set) when that fails. */
static bool sb_reserve(mc_sb *b, size_t n) {
    size_t need, cap;
    char *p;
    if (b->oom) return false;
    if (!mc_add_ok(b->len, n, &need) || !mc_add_ok(need, 1, &need)) {
        b->oom = true;
        return false;
    }
    if (need <= b->cap) return true;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (!mc_mul_ok(cap, 2, &cap)) {
            cap = need;
            break;
        }
    }
    p = mc_realloc(b->buf, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->buf = p;
    b->cap = cap;
    return true;
}

void mc_sb_put(mc_sb *b, const char *s, size_t n) {
    if (!sb_reserve(b, n)) return;
    if (n) memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

void mc_sb_puts(mc_sb *b, const char *s) { mc_sb_put(b, s, strlen(s)); }

void mc_sb_printf(mc_sb *b, const char *fmt, ...) {
    char tmp[256];
    int n;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) { /* only short numeric pieces are printed */
        b->oom = true;
        return;
    }
    mc_sb_put(b, tmp, (size_t)n);
}

void mc_sb_json_str(mc_sb *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    mc_sb_put(b, "\"", 1);
    for (; *p; p++) {
        char esc[6];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            mc_sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            mc_sb_put(b, esc, 6);
        } else {
            mc_sb_put(b, (const char *)p, 1);
        }
    }
    mc_sb_put(b, "\"", 1);
}

void mc_sb_free(mc_sb *b) {
    mc_free(b->buf);
    b->buf = NULL;
    b->len = 0;
    b->cap = 0;
    b->oom = false;
}
