/* pretok.c - pre-tokenization: regex compilation (tokenizer.json patterns are written for
 * Oniguruma; they run here on PCRE2 with UTF, UCP and JIT after a small rewrite of the
 * escapes whose meaning differs), the five Split behaviours of Hugging Face `tokenizers`,
 * and the ByteLevel pre-tokenizer. Pieces flow through the steps depth-first, so no list
 * of pieces is ever materialised: each step hands its sub-pieces to the next, and the last
 * hands them to the BPE model. */
#include "tok_internal.h"

#include <stdio.h>

const char mc_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Unicode White_Space, as a class body (what Oniguruma's and Rust's \s match). PCRE2's
 * \s with UCP lacks U+0085, so \s and \S are spelled out. */
static const char k_space_body[] =
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";
/* Oniguruma's Unicode \w: letters, marks, decimal digits, connector punctuation. */
static const char k_word_body[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
/* Oniguruma's \h: a hexadecimal digit (PCRE2's \h is horizontal space). */
static const char k_hex_body[] = "0-9a-fA-F";

/* PCRE2 allocates through the library allocator, so fault injection reaches it. */
static void *re_malloc(PCRE2_SIZE n, void *user) {
    (void)user;
    return mc_malloc(n);
}
static void re_free(void *p, void *user) {
    (void)user;
    mc_free(p);
}

pcre2_general_context *mc_regex_context(void) {
    return pcre2_general_context_create(re_malloc, re_free, NULL);
}

/* Appends the class body for escape c (s, S, w, W, h, H) to b: bracketed when outside a
 * class, bare inside one. A negated escape inside a class cannot be expressed. */
static mc_status put_class(mc_buf *b, char c, bool in_class, const char *what) {
    const char *body = (c == 's' || c == 'S')   ? k_space_body
                       : (c == 'w' || c == 'W') ? k_word_body
                                                : k_hex_body;
    bool neg = c == 'S' || c == 'W' || c == 'H';
    mc_status s;
    if (in_class) {
        if (neg)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: \\%c inside a character class is not supported",
                           what, c);
        return mc_buf_append(b, body, strlen(body));
    }
    s = mc_buf_append(b, neg ? "[^" : "[", neg ? 2 : 1);
    if (s == MC_OK) s = mc_buf_append(b, body, strlen(body));
    if (s == MC_OK) s = mc_buf_append(b, "]", 1);
    return s;
}

/* Rewrites an Oniguruma pattern for PCRE2 into b (NUL-terminated). */
static mc_status translate(const char *pat, size_t len, const char *what, mc_buf *b) {
    size_t i = 0;
    bool in_class = false;
    mc_status s = MC_OK;
    while (i < len && s == MC_OK) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char d = pat[i + 1];
            if (d == 's' || d == 'S' || d == 'w' || d == 'W' || d == 'h' || d == 'H') {
                s = put_class(b, d, in_class, what);
                i += 2;
            } else if (d == 'u' && i + 6 <= len) {
                char hex[16];
                (void)snprintf(hex, sizeof hex, "\\x{%.4s}", pat + i + 2);
                s = mc_buf_append(b, hex, strlen(hex));
                i += 6;
            } else {
                s = mc_buf_append(b, pat + i, 2);
                i += 2;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            s = mc_buf_append(b, "[", 1);
            i++;
            /* A leading ^ and a ']' right after it are part of the class. */
            if (i < len && pat[i] == '^' && s == MC_OK) s = mc_buf_append(b, pat + i++, 1);
            if (i < len && pat[i] == ']' && s == MC_OK) s = mc_buf_append(b, pat + i++, 1);
            continue;
        }
        if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') {
            const char *end = strstr(pat + i, ":]");
            size_t n = end && (size_t)(end - pat) < len ? (size_t)(end - pat) - i + 2 : 1;
            s = mc_buf_append(b, pat + i, n);
            i += n;
            continue;
        }
        if (in_class && c == ']') in_class = false;
        s = mc_buf_append(b, &c, 1);
        i++;
    }
    if (s == MC_OK) s = mc_buf_append(b, "", 1);
    return s;
}

mc_status mc_regex_compile(const char *pattern, size_t len, bool literal, const char *what,
                           pcre2_code **out) {
    mc_buf b = {0};
    pcre2_general_context *gc = NULL;
    pcre2_compile_context *cc = NULL;
    pcre2_code *re = NULL;
    int err = 0;
    PCRE2_SIZE erroff = 0;
    uint32_t opts = PCRE2_UTF;
    mc_status s = MC_OK;
    *out = NULL;
    gc = pcre2_general_context_create(re_malloc, re_free, NULL);
    cc = gc ? pcre2_compile_context_create(gc) : NULL;
    if (!cc) {
        s = mc_fail(MC_ERR_OOM, "%s: out of memory compiling a regex", what);
        goto done;
    }
    if (literal) {
        opts |= PCRE2_LITERAL;
        s = mc_buf_append(&b, pattern, len);
        if (s == MC_OK) s = mc_buf_append(&b, "", 1);
    } else {
        opts |= PCRE2_UCP;
        s = translate(pattern, len, what, &b);
    }
    if (s != MC_OK) goto done;
    re = pcre2_compile((PCRE2_SPTR)b.p, b.n - 1, opts, &err, &erroff, cc);
    if (!re) {
        PCRE2_UCHAR msg[160];
        if (err == PCRE2_ERROR_HEAP_FAILED || err == PCRE2_ERROR_HEAPLIMIT ||
            err == PCRE2_ERROR_NOMEMORY) {
            s = mc_fail(MC_ERR_OOM, "%s: out of memory compiling a regex", what);
            goto done;
        }
        (void)pcre2_get_error_message(err, msg, sizeof msg);
        s = mc_fail(MC_ERR_UNSUPPORTED, "%s: regex not supported (%s at offset %zu): %.*s", what,
                    (const char *)msg, (size_t)erroff, (int)MC_MIN(len, 200), pattern);
        goto done;
    }
    /* Without JIT (unsupported CPU, or no memory) the interpreter gives the same matches. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
done:
    pcre2_compile_context_free(cc);
    pcre2_general_context_free(gc);
    mc_buf_free(&b);
    return s;
}

/* ---- splitting ------------------------------------------------------------------------ */

/* Hugging Face's split behaviours as a streaming state machine over the sequence of
 * (range, is_match) items that the pattern produces; pieces go to step `next`. */
typedef struct splitter {
    mc_enc *e;
    int next;
    const uint8_t *p;
    mc_split_behavior beh;
    bool have;       /* a piece is held back */
    size_t ps, pe;   /* its range */
    bool pmatch;     /* it is a match (MergedWithNext) */
    bool prev_match; /* the previous item was a match */
} splitter;

static mc_status emit_piece(splitter *sp, size_t s, size_t e) {
    if (e <= s) return MC_OK; /* empty pieces are dropped */
    return mc_pretok_run(sp->e, sp->next, sp->p + s, e - s);
}

static mc_status flush(splitter *sp) {
    mc_status st = MC_OK;
    if (sp->have) st = emit_piece(sp, sp->ps, sp->pe);
    sp->have = false;
    return st;
}

/* Holds [s, e) back as the current piece, emitting the one held before. */
static mc_status hold(splitter *sp, size_t s, size_t e, bool is_match) {
    mc_status st = flush(sp);
    sp->have = true;
    sp->ps = s;
    sp->pe = e;
    sp->pmatch = is_match;
    return st;
}

static mc_status item(splitter *sp, size_t s, size_t e, bool is_match) {
    mc_status st = MC_OK;
    switch (sp->beh) {
    case MC_SPLIT_ISOLATED: st = emit_piece(sp, s, e); break;
    case MC_SPLIT_REMOVED:
        if (!is_match) st = emit_piece(sp, s, e);
        break;
    case MC_SPLIT_MERGED_PREV:
        /* A match joins the piece before it (unless that was a match too). */
        if (is_match && !sp->prev_match && sp->have)
            sp->pe = e;
        else
            st = hold(sp, s, e, is_match);
        break;
    case MC_SPLIT_CONTIGUOUS:
        /* Runs of items of the same kind form one piece. */
        if (is_match == sp->prev_match && sp->have)
            sp->pe = e;
        else
            st = hold(sp, s, e, is_match);
        break;
    case MC_SPLIT_MERGED_NEXT:
        /* A match joins the piece after it when that one is not a match. */
        if (sp->have && sp->pmatch && !is_match) {
            sp->pe = e;
            sp->pmatch = false;
            st = flush(sp);
        } else if (is_match) {
            st = hold(sp, s, e, true);
        } else {
            st = flush(sp);
            if (st == MC_OK) st = emit_piece(sp, s, e);
        }
        break;
    default: st = mc_fail(MC_ERR_INTERNAL, "unknown split behaviour");
    }
    sp->prev_match = is_match;
    return st;
}

/* Finds the next match of re in p[0..len) at or after start. Returns 1 with [*ms, *me),
 * 0 when there is none, or a negative PCRE2 error. */
static int find(mc_enc *e, const pcre2_code *re, const uint8_t *p, size_t len, size_t start,
                size_t *ms, size_t *me) {
    int rc = pcre2_jit_match(re, p, len, start, PCRE2_NO_UTF_CHECK, e->md, NULL);
    /* Not JIT-compiled, or the JIT's stack ran out: the interpreter keeps its
     * backtracking state on the heap. */
    if (rc == PCRE2_ERROR_JIT_BADOPTION || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, p, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, e->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return rc;
    {
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        *ms = ov[0];
        *me = ov[1];
    }
    return 1;
}

/* Splits p[0..len) with re (Oniguruma's find_iter semantics: an empty match right where
 * the previous match ended is skipped) and runs the pieces through step `next`. */
static mc_status split(mc_enc *e, int next, const pcre2_code *re, mc_split_behavior beh,
                       bool invert, const uint8_t *p, size_t len) {
    splitter sp;
    size_t prev = 0, pos = 0, last_end = (size_t)-1;
    mc_status st = MC_OK;
    memset(&sp, 0, sizeof sp);
    sp.e = e;
    sp.next = next;
    sp.p = p;
    sp.beh = beh;
    while (pos <= len && st == MC_OK) {
        size_t ms, me;
        int rc = find(e, re, p, len, pos, &ms, &me);
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            (void)pcre2_get_error_message(rc, msg, sizeof msg);
            return mc_fail(rc == PCRE2_ERROR_NOMEMORY ? MC_ERR_OOM : MC_ERR_UNSUPPORTED,
                           "pre-tokenizer regex failed near byte %zu of a %zu-byte piece: %s", pos,
                           len, (const char *)msg);
        }
        if (rc == 0) break;
        if (ms == me && me == last_end) {
            uint32_t cp;
            if (me >= len) break;
            pos = me + mc_utf8_next(p + me, len - me, &cp);
            continue;
        }
        if (prev != ms) st = item(&sp, prev, ms, invert);
        if (st == MC_OK) st = item(&sp, ms, me, !invert);
        prev = me;
        last_end = me;
        pos = me;
    }
    if (st == MC_OK && prev != len) st = item(&sp, prev, len, invert);
    if (st == MC_OK) st = flush(&sp);
    return st;
}

mc_status mc_pretok_run(mc_enc *e, int i, const uint8_t *p, size_t len) {
    const mc_tokenizer *tok = e->tok;
    const mc_pretok_step *st;
    if (len == 0) return MC_OK;
    if (i >= tok->n_steps) return mc_bpe_word(e, p, len);
    st = &tok->steps[i];
    if (st->kind == MC_PT_SPLIT) return split(e, i + 1, st->re, st->behavior, st->invert, p, len);
    /* ByteLevel: an optional prefix space, an optional GPT-2 split. The byte-to-character
     * mapping itself is implicit: pieces stay raw bytes (tok->byte_level). */
    if (st->add_prefix_space && p[0] != ' ') {
        mc_buf *b = &e->scratch[i];
        mc_status s;
        b->n = 0;
        s = mc_buf_append(b, " ", 1);
        if (s == MC_OK) s = mc_buf_append(b, p, len);
        if (s != MC_OK) return s;
        p = b->p;
        len = b->n;
    }
    if (st->re) return split(e, i + 1, st->re, MC_SPLIT_ISOLATED, false, p, len);
    return mc_pretok_run(e, i + 1, p, len);
}
