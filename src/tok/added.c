/* added.c - added tokens: finding them in text before pre-tokenization, as Hugging Face
 * `tokenizers` does (AddedVocabulary::find_matches): leftmost-longest matches, skipped
 * when single_word is set and a word character touches either side, widened over the
 * whitespace before (lstrip) or after (rstrip). Matching scans for the first bytes of the
 * tokens (memchr when they all share one, as "<|...|>" tokens do). */
#include "tok_internal.h"

#include <stdlib.h>

/* qsort context: tokens are ordered by first byte, then longest first. */
static const mc_tokenizer *g_sort_tok;

static int cmp_added(const void *a, const void *b) {
    const mc_added_tok *x = &g_sort_tok->added[*(const uint32_t *)a];
    const mc_added_tok *y = &g_sort_tok->added[*(const uint32_t *)b];
    uint8_t fx = (uint8_t)g_sort_tok->strs[x->off], fy = (uint8_t)g_sort_tok->strs[y->off];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static pthread_mutex_t g_sort_mu = PTHREAD_MUTEX_INITIALIZER;

mc_status mc_added_set_build(mc_tokenizer *tok, mc_added_set *set, bool normalized) {
    size_t i, n = 0;
    int b;
    memset(set, 0, sizeof *set);
    for (i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized && tok->added[i].len > 0) n++;
    if (n == 0) return MC_OK;
    set->order = mc_malloc(n * sizeof *set->order);
    if (!set->order) return mc_fail(MC_ERR_OOM, "out of memory for added tokens");
    for (i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized && tok->added[i].len > 0)
            set->order[set->n++] = (uint32_t)i;
    (void)pthread_mutex_lock(&g_sort_mu);
    g_sort_tok = tok;
    qsort(set->order, n, sizeof *set->order, cmp_added);
    g_sort_tok = NULL;
    (void)pthread_mutex_unlock(&g_sort_mu);
    /* first[b] = index of the first token starting with byte b (or later). */
    i = 0;
    for (b = 0; b < 256; b++) {
        size_t start = i;
        set->first[b] = (uint32_t)i;
        while (i < n && (uint8_t)tok->strs[tok->added[set->order[i]].off] == b) i++;
        if (i > start) {
            set->n_first++;
            set->only_byte = (uint8_t)b;
        }
    }
    set->first[256] = (uint32_t)n;
    return MC_OK;
}

void mc_added_set_free(mc_added_set *set) {
    mc_free(set->order);
    set->order = NULL;
    set->n = 0;
}

/* Finds the leftmost-longest token occurrence in s[pos..len). Returns its index in
 * tok->added and its start in *at, or -1. */
static long find_token(const mc_tokenizer *tok, const mc_added_set *set, const uint8_t *s,
                       size_t len, size_t pos, size_t *at) {
    size_t i = pos;
    while (i < len) {
        uint32_t k, end;
        if (set->n_first == 1) {
            const uint8_t *q = memchr(s + i, set->only_byte, len - i);
            if (!q) return -1;
            i = (size_t)(q - s);
        }
        end = set->first[s[i] + 1];
        for (k = set->first[s[i]]; k < end; k++) {
            const mc_added_tok *t = &tok->added[set->order[k]];
            if (t->len <= len - i && memcmp(s + i, tok->strs + t->off, t->len) == 0) {
                *at = i;
                return (long)set->order[k];
            }
        }
        i++;
    }
    return -1;
}

/* Start of the run of White_Space that ends s[0..end). */
static size_t trailing_space_start(const uint8_t *s, size_t end) {
    while (end > 0) {
        uint32_t cp;
        size_t k = mc_utf8_prev(s, end, &cp);
        if (!mc_uc_is_space(cp)) break;
        end -= k;
    }
    return end;
}

/* Length of the run of White_Space that starts s[0..len). */
static size_t leading_space_len(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t k = mc_utf8_next(s + i, len - i, &cp);
        if (!mc_uc_is_space(cp)) break;
        i += k;
    }
    return i;
}

mc_status mc_added_split(mc_enc *e, const mc_added_set *set, const uint8_t *s, size_t len,
                         mc_segment_fn fn) {
    const mc_tokenizer *tok = e->tok;
    size_t start_offset = 0, pos = 0;
    mc_status st = MC_OK;
    if (len == 0) return MC_OK;
    if (set->n == 0) return fn(e, s, len);
    while (pos < len && st == MC_OK) {
        size_t start, stop;
        long k = find_token(tok, set, s, len, pos, &start);
        const mc_added_tok *t;
        if (k < 0) break;
        t = &tok->added[k];
        stop = start + t->len;
        pos = stop; /* the search goes on after the match, whatever is done with it */
        if (t->single_word) {
            uint32_t cp;
            bool word_before = start > 0 && (mc_utf8_prev(s, start, &cp), mc_uc_is_word(cp));
            bool word_after =
                stop < len && (mc_utf8_next(s + stop, len - stop, &cp), mc_uc_is_word(cp));
            if (word_before || word_after) continue;
        }
        if (t->lstrip) start = MC_MAX(trailing_space_start(s, start), start_offset);
        if (t->rstrip) stop += leading_space_len(s + stop, len - stop);
        if (start_offset < start) st = fn(e, s + start_offset, start - start_offset);
        mc_enc_emit(e, t->id);
        start_offset = stop;
    }
    if (st == MC_OK && start_offset < len) st = fn(e, s + start_offset, len - start_offset);
    return st;
}
