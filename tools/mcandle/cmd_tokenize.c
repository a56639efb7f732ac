/* cmd_tokenize.c - `mcandle tokenize` (text -> token ids) and `mcandle detokenize`
 * (token ids -> text), one-shot or as a JSON-lines filter on stdin. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char k_tok_usage[] =
    "usage: mcandle tokenize --tokenizer PATH (--text S | --file F | --jsonl) [--no-special]\n"
    "\n"
    "Encodes text into token ids exactly as Hugging Face tokenizers does.\n"
    "  --tokenizer PATH  tokenizer.json, or a model folder holding it\n"
    "  --text S          encode S; prints one JSON array of ids\n"
    "  --file F          encode the bytes of file F; prints one JSON array of ids\n"
    "  --jsonl           read one JSON string per line on stdin, write one JSON array of ids\n"
    "                    per line, in order (an invalid line stops with an error naming it)\n"
    "  --no-special      do not add the post-processor's special tokens (e.g. a BOS)\n";

static const char k_detok_usage[] =
    "usage: mcandle detokenize --tokenizer PATH (--ids 1,2,3 | --jsonl) [--skip-special]\n"
    "\n"
    "Decodes token ids into text (invalid UTF-8 from split characters becomes U+FFFD).\n"
    "  --tokenizer PATH  tokenizer.json, or a model folder holding it\n"
    "  --ids LIST        comma-separated ids; prints the text as is (no newline added)\n"
    "  --jsonl           read one JSON array of ids per line on stdin, write one JSON string\n"
    "                    per line, in order\n"
    "  --skip-special    leave special tokens (<|im_start|>, <|endoftext|>, ...) out\n";

/* ---- JSON reading and writing ------------------------------------------------------------ */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(const char *s, unsigned *v) {
    int i;
    *v = 0;
    for (i = 0; i < 4; i++) {
        int d = hexval((unsigned char)s[i]);
        if (d < 0) return -1;
        *v = (*v << 4) | (unsigned)d;
    }
    return 0;
}

static size_t put_utf8(unsigned cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    return p;
}

/* Decodes a line holding exactly one JSON string into out (malloc'd, may hold NULs).
 * Returns 0, or -1 with *why set. */
static int parse_json_string(const char *line, char **out, size_t *len, const char **why) {
    const char *p = skip_ws(line);
    size_t cap = strlen(line) + 1, n = 0;
    char *buf;
    *why = "expected a JSON string";
    if (*p != '"') return -1;
    buf = malloc(cap);
    if (!buf) {
        *why = "out of memory";
        return -1;
    }
    p++;
    for (;;) {
        unsigned char c = (unsigned char)*p;
        if (c == '\0') goto bad;
        if (c == '"') break;
        if (c < 0x20) {
            *why = "control character inside a JSON string";
            goto bad;
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            p++;
            continue;
        }
        c = (unsigned char)p[1];
        p += 2;
        switch (c) {
        case '"':
        case '\\':
        case '/': buf[n++] = (char)c; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (read_hex4(p, &cp) != 0) goto bad_escape;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) goto bad_escape;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p[0] != '\\' || p[1] != 'u' || read_hex4(p + 2, &lo) != 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    goto bad_escape;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            n += put_utf8(cp, buf + n);
            break;
        }
        default: goto bad_escape;
        }
    }
    p = skip_ws(p + 1);
    if (*p != '\0') {
        *why = "unexpected text after the JSON string";
        goto bad;
    }
    *out = buf;
    *len = n;
    return 0;
bad_escape:
    *why = "invalid escape in a JSON string";
bad:
    free(buf);
    return -1;
}

/* Parses a line holding one JSON array of non-negative integers. */
static int parse_json_ids(const char *line, int32_t **ids, size_t *n, const char **why) {
    const char *p = skip_ws(line);
    size_t cap = 16, k = 0;
    int32_t *a;
    *why = "expected a JSON array of token ids";
    if (*p != '[') return -1;
    a = malloc(cap * sizeof *a);
    if (!a) return -1;
    p = skip_ws(p + 1);
    if (*p == ']') goto close;
    for (;;) {
        char *end = NULL;
        long v;
        errno = 0;
        if (*p < '0' || *p > '9') goto bad;
        v = strtol(p, &end, 10);
        if (errno || v > INT32_MAX || *end == '.' || *end == 'e' || *end == 'E') goto bad;
        if (k == cap) {
            int32_t *b = realloc(a, 2 * cap * sizeof *a);
            if (!b) goto bad;
            a = b;
            cap *= 2;
        }
        a[k++] = (int32_t)v;
        p = skip_ws(end);
        if (*p == ',') {
            p = skip_ws(p + 1);
            continue;
        }
        if (*p == ']') break;
        goto bad;
    }
close:
    p = skip_ws(p + 1);
    if (*p != '\0') goto bad;
    *ids = a;
    *n = k;
    return 0;
bad:
    free(a);
    return -1;
}

static void print_ids(const int32_t *ids, size_t n) {
    size_t i;
    putchar('[');
    for (i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    fputs("]\n", stdout);
}

static void print_json_string(const char *s, size_t n) {
    size_t i;
    putchar('"');
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    fputs("\"\n", stdout);
}

/* ---- library calls with growing buffers ----------------------------------------------- */

static mc_status encode(const mc_tokenizer *tok, const char *text, size_t len, int special,
                        int32_t **ids, size_t *cap, size_t *n) {
    mc_status s = mc_tokenizer_encode(tok, text, len, special, *ids, *cap, n);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        int32_t *b = realloc(*ids, *n * sizeof **ids);
        if (!b) return MC_ERR_OOM;
        *ids = b;
        *cap = *n;
        s = mc_tokenizer_encode(tok, text, len, special, *ids, *cap, n);
    }
    return s;
}

static mc_status decode(const mc_tokenizer *tok, const int32_t *ids, size_t n, int skip, char **buf,
                        size_t *cap, size_t *len) {
    mc_status s = mc_tokenizer_decode(tok, ids, n, skip, *buf, *cap, len);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        char *b = realloc(*buf, *len + 1);
        if (!b) return MC_ERR_OOM;
        *buf = b;
        *cap = *len + 1;
        s = mc_tokenizer_decode(tok, ids, n, skip, *buf, *cap, len);
    }
    return s;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) return NULL;
    for (;;) {
        size_t got;
        if (n == cap) {
            char *b = realloc(buf, cap ? cap * 2 : 65536);
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
            cap = cap ? cap * 2 : 65536;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* ---- commands ---------------------------------------------------------------------------- */

typedef struct tok_args {
    const char *tokenizer, *text, *file, *ids;
    int jsonl, no_special, skip_special;
} tok_args;

/* Parses the options shared by both commands; returns -1 on a usage error (printed),
 * 1 after --help, 0 to go on. */
static int parse_args(const char *cmd, int argc, char **argv, tok_args *a, int rc[1]) {
    int i, missing = 0;
    memset(a, 0, sizeof *a);
    for (i = 1; i < argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(!strcmp(cmd, "tokenize") ? k_tok_usage : k_detok_usage, stdout);
            rc[0] = 0;
            return 1;
        }
        if (cli_opt(argc, argv, &i, "--tokenizer", &v, &missing))
            a->tokenizer = v;
        else if (!strcmp(cmd, "tokenize") && cli_opt(argc, argv, &i, "--text", &v, &missing))
            a->text = v;
        else if (!strcmp(cmd, "tokenize") && cli_opt(argc, argv, &i, "--file", &v, &missing))
            a->file = v;
        else if (!strcmp(cmd, "detokenize") && cli_opt(argc, argv, &i, "--ids", &v, &missing))
            a->ids = v;
        else if (!strcmp(argv[i], "--jsonl"))
            a->jsonl = 1;
        else if (!strcmp(cmd, "tokenize") && !strcmp(argv[i], "--no-special"))
            a->no_special = 1;
        else if (!strcmp(cmd, "detokenize") && !strcmp(argv[i], "--skip-special"))
            a->skip_special = 1;
        else {
            rc[0] = cli_usage_error(cmd, "unknown option '%s'", argv[i]);
            return -1;
        }
        if (missing) {
            rc[0] = cli_usage_error(cmd, "%s needs a value", argv[i]);
            return -1;
        }
    }
    if (!a->tokenizer) {
        rc[0] = cli_usage_error(cmd, "--tokenizer is required");
        return -1;
    }
    if ((a->text != NULL) + (a->file != NULL) + (a->ids != NULL) + a->jsonl != 1) {
        rc[0] = cli_usage_error(cmd, "give exactly one input: %s",
                                !strcmp(cmd, "tokenize") ? "--text, --file or --jsonl"
                                                         : "--ids or --jsonl");
        return -1;
    }
    return 0;
}

static int tokenize_jsonl(const mc_tokenizer *tok, int special) {
    char *line = NULL;
    size_t line_cap = 0, lineno = 0, cap = 256, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    int rc = 0;
    if (!ids) return cli_fail("tokenize", MC_OK, "out of memory");
    while (getline(&line, &line_cap, stdin) >= 0) {
        char *text = NULL;
        size_t len = 0;
        const char *why = NULL;
        mc_status s;
        lineno++;
        if (parse_json_string(line, &text, &len, &why) != 0) {
            rc = cli_fail("tokenize", MC_OK, "stdin line %zu: %s", lineno, why);
            break;
        }
        s = encode(tok, text, len, special, &ids, &cap, &n);
        free(text);
        if (s != MC_OK) {
            rc = cli_fail("tokenize", s, "stdin line %zu", lineno);
            break;
        }
        print_ids(ids, n);
    }
    free(line);
    free(ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    tok_args a;
    mc_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t cap = 256, n = 0;
    int rc = 0;
    mc_status s;
    if (parse_args("tokenize", argc, argv, &a, &rc) != 0) return rc;
    s = mc_tokenizer_load(a.tokenizer, &tok);
    if (s != MC_OK) return cli_fail("tokenize", s, "cannot load the tokenizer");
    if (a.jsonl) {
        rc = tokenize_jsonl(tok, !a.no_special);
    } else {
        size_t len = 0;
        char *data = a.file ? read_file(a.file, &len) : NULL;
        ids = malloc(cap * sizeof *ids);
        if (!ids) {
            rc = cli_fail("tokenize", MC_OK, "out of memory");
        } else if (a.file && !data) {
            rc = cli_fail("tokenize", MC_OK, "cannot read %s", a.file);
        } else {
            const char *text = a.file ? data : a.text;
            s = encode(tok, text, a.file ? len : strlen(text), !a.no_special, &ids, &cap, &n);
            if (s != MC_OK)
                rc = cli_fail("tokenize", s, "%s", a.file ? a.file : "--text");
            else
                print_ids(ids, n);
        }
        free(data);
    }
    free(ids);
    mc_tokenizer_free(tok);
    if (fflush(stdout) != 0 && rc == 0) rc = cli_fail("tokenize", MC_OK, "cannot write output");
    return rc;
}

static int detokenize_jsonl(const mc_tokenizer *tok, int skip) {
    char *line = NULL;
    size_t line_cap = 0, lineno = 0, cap = 1024, len = 0;
    char *text = malloc(cap);
    int rc = 0;
    if (!text) return cli_fail("detokenize", MC_OK, "out of memory");
    while (getline(&line, &line_cap, stdin) >= 0) {
        int32_t *ids = NULL;
        size_t n = 0;
        const char *why = NULL;
        mc_status s;
        lineno++;
        if (parse_json_ids(line, &ids, &n, &why) != 0) {
            rc = cli_fail("detokenize", MC_OK, "stdin line %zu: %s", lineno, why);
            break;
        }
        s = decode(tok, ids, n, skip, &text, &cap, &len);
        free(ids);
        if (s != MC_OK) {
            rc = cli_fail("detokenize", s, "stdin line %zu", lineno);
            break;
        }
        print_json_string(text, len);
    }
    free(line);
    free(text);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    tok_args a;
    mc_tokenizer *tok = NULL;
    int rc = 0;
    mc_status s;
    if (parse_args("detokenize", argc, argv, &a, &rc) != 0) return rc;
    s = mc_tokenizer_load(a.tokenizer, &tok);
    if (s != MC_OK) return cli_fail("detokenize", s, "cannot load the tokenizer");
    if (a.jsonl) {
        rc = detokenize_jsonl(tok, a.skip_special);
    } else {
        int32_t *ids = NULL;
        size_t n = 0, cap = 1024, len = 0;
        char *text = malloc(cap);
        if (!text) {
            rc = cli_fail("detokenize", MC_OK, "out of memory");
        } else if (cli_parse_ids(a.ids, &ids, &n) != 0) {
            rc = cli_usage_error("detokenize", "--ids must be comma-separated ids, e.g. 1,2,3");
        } else {
            s = decode(tok, ids, n, a.skip_special, &text, &cap, &len);
            if (s != MC_OK)
                rc = cli_fail("detokenize", s, "--ids");
            else
                fwrite(text, 1, len, stdout);
        }
        free(ids);
        free(text);
    }
    mc_tokenizer_free(tok);
    if (fflush(stdout) != 0 && rc == 0) rc = cli_fail("detokenize", MC_OK, "cannot write output");
    return rc;
}
