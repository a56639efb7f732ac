/* tok_test_util.h - helpers for the tokenizer tests: reading JSON-lines fixtures (string
 * fields decoded with their exact bytes, NUL included), id arrays, comparing id lists with
 * a readable report, and locating the real Qwen tokenizer (MC_TOKENIZER_DIR, else the
 * cache folder that scripts/fetch_tokenizer.sh fills). */
#ifndef MC_TOK_TEST_UTIL_H
#define MC_TOK_TEST_UTIL_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test.h"
#include "tok/tok_internal.h"

/* Reads a whole file into a NUL-terminated heap buffer (free()); NULL on failure. */
static inline char *tt_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        if (buf) {
            buf[n] = '\0';
            if (len) *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

/* Splits buf into lines in place (each NUL-terminated); returns the count, *lines is a
 * heap array (free()). */
static inline size_t tt_lines(char *buf, char ***lines) {
    size_t n = 0, cap = 64;
    char *p = buf;
    *lines = malloc(cap * sizeof **lines);
    while (*lines && p && *p) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = '\0';
        if (*p) {
            if (n == cap) {
                cap *= 2;
                *lines = realloc(*lines, cap * sizeof **lines);
                if (!*lines) return 0;
            }
            (*lines)[n++] = p;
        }
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

/* The string value of top-level key in a JSON line, with its exact bytes (NUL allowed),
 * in a heap buffer (free()); NULL when absent. */
static inline char *tt_field(const char *line, const char *key, size_t *len) {
    char pat[64];
    const char *p;
    mc_buf b = {0};
    size_t used;
    char *out;
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    p = strstr(line, pat);
    if (!p) return NULL;
    p += strlen(pat) - 1;
    used = mc_json_string_decode(p, strlen(p), &b);
    if (!used) {
        mc_buf_free(&b);
        return NULL;
    }
    out = malloc(b.n + 1);
    if (out) {
        if (b.n) memcpy(out, b.p, b.n);
        out[b.n] = '\0';
    }
    *len = b.n;
    mc_buf_free(&b);
    return out;
}

/* Copies a JSON array of integers into a heap array (free()). */
static inline int32_t *tt_ids(const cJSON *arr, size_t *n) {
    size_t k = (size_t)cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = malloc((k ? k : 1) * sizeof *ids);
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) ids[i++] = (int32_t)it->valuedouble;
    *n = k;
    return ids;
}

/* Encodes text and returns a heap array of ids (free()); NULL on error (printed). */
static inline int32_t *tt_encode(const mc_tokenizer *tok, const char *text, size_t len,
                                 int add_special, size_t *n) {
    size_t cap = len + 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    mc_status s = mc_tokenizer_encode(tok, text, len, add_special, ids, cap, n);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        cap = *n;
        ids = realloc(ids, (cap ? cap : 1) * sizeof *ids);
        s = mc_tokenizer_encode(tok, text, len, add_special, ids, cap, n);
    }
    if (s != MC_OK) {
        fprintf(stderr, "encode failed: %s (%s)\n", mc_status_name(s), mc_last_error());
        free(ids);
        return NULL;
    }
    return ids;
}

/* Decodes ids into a heap string (free()); NULL on error (printed). */
static inline char *tt_decode(const mc_tokenizer *tok, const int32_t *ids, size_t n, int skip,
                              size_t *len) {
    size_t cap = 0;
    char *buf;
    mc_status s = mc_tokenizer_decode(tok, ids, n, skip, NULL, 0, len);
    if (s != MC_ERR_BUFFER_TOO_SMALL && s != MC_OK) {
        fprintf(stderr, "decode failed: %s (%s)\n", mc_status_name(s), mc_last_error());
        return NULL;
    }
    cap = *len + 1;
    buf = malloc(cap);
    s = mc_tokenizer_decode(tok, ids, n, skip, buf, cap, len);
    if (s != MC_OK) {
        fprintf(stderr, "decode failed: %s (%s)\n", mc_status_name(s), mc_last_error());
        free(buf);
        return NULL;
    }
    return buf;
}

/* Prints a text escaped on one line (at most 160 bytes). */
static inline void tt_print_text(const char *label, const char *s, size_t n) {
    size_t i;
    fprintf(stderr, "  %s (%zu bytes): \"", label, n);
    for (i = 0; i < n && i < 160; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(stderr, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fprintf(stderr, "%s\"\n", n > 160 ? "..." : "");
}

/* Compares id lists; on a difference prints the first differing position with some
 * context. Returns 1 when equal. */
static inline int tt_same_ids(const char *what, const char *text, size_t text_len,
                              const int32_t *got, size_t n_got, const int32_t *want,
                              size_t n_want) {
    size_t i = 0, k;
    while (i < n_got && i < n_want && got[i] == want[i]) i++;
    if (i == n_got && i == n_want) return 1;
    fprintf(stderr, "%s: ids differ at position %zu (got %zu ids, expected %zu)\n", what, i, n_got,
            n_want);
    tt_print_text("text", text, text_len);
    fprintf(stderr, "  got     :");
    for (k = i > 3 ? i - 3 : 0; k < n_got && k < i + 6; k++) fprintf(stderr, " %d", got[k]);
    fprintf(stderr, "\n  expected:");
    for (k = i > 3 ? i - 3 : 0; k < n_want && k < i + 6; k++) fprintf(stderr, " %d", want[k]);
    fprintf(stderr, "\n");
    return 0;
}

/* Folder of the real tokenizer, or NULL when it is not there. */
static inline const char *tt_tokenizer_dir(void) {
    static char buf[4096];
    const char *env = getenv("MC_TOKENIZER_DIR");
    const char *home = getenv("HOME");
    const char *cache = getenv("MC_CACHE_DIR");
    struct stat st;
    if (env && *env)
        snprintf(buf, sizeof buf, "%s", env);
    else if (cache && *cache)
        snprintf(buf, sizeof buf, "%s/tokenizer-qwen3-3.7.2", cache);
    else
        snprintf(buf, sizeof buf, "%s/.cache/metal-candle/tokenizer-qwen3-3.7.2", home ? home : "");
    {
        char tj[4200];
        snprintf(tj, sizeof tj, "%s/tokenizer.json", buf);
        if (stat(tj, &st) != 0) return NULL;
    }
    return buf;
}

#endif /* MC_TOK_TEST_UTIL_H */
