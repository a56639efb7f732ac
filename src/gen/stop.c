/* stop.c - stop strings matched on streamed text, holding back partial matches and
 * unfinished UTF-8 characters (contract in stop.h). */
#include "stop.h"

static const char k_empty[] = "";

mc_status mc_stopper_init(mc_stopper *st, const char *const *stops, size_t n) {
    size_t i, chars = 0, bytes, head;
    char *p;
    memset(st, 0, sizeof *st);
    st->stop_index = -1;
    if (n > 0 && !stops)
        return mc_fail(MC_ERR_INVALID_ARG, "stop strings: the list is NULL but n = %zu", n);
    for (i = 0; i < n; i++) {
        if (!stops[i] || !stops[i][0])
            return mc_fail(MC_ERR_INVALID_ARG, "stop string %zu is %s", i,
                           stops[i] ? "empty" : "NULL");
        if (!mc_add_ok(chars, strlen(stops[i]) + 1, &chars))
            return mc_fail(MC_ERR_INVALID_ARG, "stop strings are too long");
    }
    if (n == 0) return MC_OK;
    /* layout: char *[n], size_t [n], then the NUL-terminated bytes */
    if (!mc_mul_ok(n, sizeof(char *) + sizeof(size_t), &head) || !mc_add_ok(head, chars, &bytes))
        return mc_fail(MC_ERR_INVALID_ARG, "stop strings are too many");
    st->mem = mc_malloc(bytes);
    if (!st->mem) return mc_fail(MC_ERR_OOM, "stop strings: out of memory (%zu bytes)", bytes);
    st->stops = st->mem;
    st->stop_lens = (size_t *)(st->stops + n);
    p = (char *)(st->stop_lens + n);
    for (i = 0; i < n; i++) {
        size_t len = strlen(stops[i]);
        memcpy(p, stops[i], len + 1);
        st->stops[i] = p;
        st->stop_lens[i] = len;
        p += len + 1;
    }
    st->n_stops = n;
    return MC_OK;
}

void mc_stopper_free(mc_stopper *st) {
    mc_free(st->mem);
    mc_free(st->buf);
    memset(st, 0, sizeof *st);
    st->stop_index = -1;
}

void mc_stopper_reset(mc_stopper *st) {
    st->len = 0;
    st->emitted = 0;
    st->stopped = 0;
    st->stop_index = -1;
}

/* Length of an unfinished UTF-8 sequence at the end of b[0..n): a lead byte in the last 3
 * bytes followed by fewer continuation bytes than it announces. 0 when the end is complete
 * or cannot become valid by appending (no lead byte, or an invalid one). */
static size_t utf8_unfinished(const char *b, size_t n) {
    size_t k;
    for (k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)b[n - k];
        size_t need;
        if ((c & 0xC0u) == 0x80u) continue; /* continuation: look further back */
        if ((c & 0xE0u) == 0xC0u && c >= 0xC2u)
            need = 2;
        else if ((c & 0xF0u) == 0xE0u)
            need = 3;
        else if ((c & 0xF8u) == 0xF0u && c <= 0xF4u)
            need = 4;
        else
            need = 1; /* ASCII or a byte that never starts a character */
        return need > k ? k : 0;
    }
    return 0;
}

static int utf8_is_cont(char c) { return ((unsigned char)c & 0xC0u) == 0x80u; }

/* The text ends at buf[len]: replaces an unfinished trailing UTF-8 sequence of
 * buf[0..len) by U+FFFD (EF BF BD). The buffer has room for 2 more bytes than len (the
 * push keeps it so). */
static void utf8_finish(mc_stopper *st) {
    size_t k = utf8_unfinished(st->buf, st->len);
    if (k == 0) return;
    st->len -= k;
    memcpy(st->buf + st->len, "\xEF\xBF\xBD", 3);
    st->len += 3;
}

/* Finds the stop string that completes first in buf[0..len): the smallest end position,
 * and of those ending there the longest. Returns its index and its start in *pos, or -1. */
static int find_stop(const mc_stopper *st, size_t *pos) {
    size_t end, i;
    for (end = 1; end <= st->len; end++) {
        int best = -1;
        size_t best_len = 0;
        for (i = 0; i < st->n_stops; i++) {
            size_t l = st->stop_lens[i];
            if (l <= end && l > best_len && !memcmp(st->buf + end - l, st->stops[i], l)) {
                best = (int)i;
                best_len = l;
            }
        }
        if (best >= 0) {
            *pos = end - best_len;
            return best;
        }
    }
    return -1;
}

/* Length of the longest suffix of buf[0..len) that is a proper prefix of a stop string. */
static size_t stop_prefix_hold(const mc_stopper *st) {
    size_t k, i, longest = 0;
    for (i = 0; i < st->n_stops; i++) {
        size_t l = st->stop_lens[i];
        for (k = MC_MIN(st->len, l - 1); k > longest; k--)
            if (!memcmp(st->buf + st->len - k, st->stops[i], k)) {
                longest = k;
                break;
            }
    }
    return longest;
}

/* Drops the bytes handed out by the previous call from the front of the buffer. */
static void drop_emitted(mc_stopper *st) {
    if (st->emitted == 0) return;
    memmove(st->buf, st->buf + st->emitted, st->len - st->emitted);
    st->len -= st->emitted;
    st->emitted = 0;
}

/* Fills *out with nothing to show and the stop state. */
static void out_empty(const mc_stopper *st, mc_stop_out *out) {
    out->text = k_empty;
    out->len = 0;
    out->stopped = st->stopped;
    out->stop_index = st->stop_index;
}

mc_status mc_stopper_push(mc_stopper *st, const char *piece, size_t len, mc_stop_out *out) {
    size_t need, pos, hold;
    int idx;
    out_empty(st, out);
    if (st->stopped) return MC_OK;
    drop_emitted(st);
    if (!mc_add_ok(st->len, len, &need) || !mc_add_ok(need, 2, &need))
        return mc_fail(MC_ERR_OOM, "stop strings: text too long");
    if (need > st->cap) {
        size_t cap = MC_MAX(need, MC_MAX(st->cap * 2, (size_t)64));
        char *b = mc_realloc(st->buf, cap);
        if (!b) return mc_fail(MC_ERR_OOM, "stop strings: out of memory (%zu bytes)", cap);
        st->buf = b;
        st->cap = cap;
    }
    if (len > 0) memcpy(st->buf + st->len, piece, len);
    st->len += len;
    idx = find_stop(st, &pos);
    if (idx >= 0) {
        /* a character cut by a stop string that continues it ends the text unfinished;
         * one that a stop string does not continue was invalid already: left as it is */
        int cut_inside = utf8_is_cont(st->buf[pos]);
        st->len = pos;
        if (cut_inside) utf8_finish(st);
        st->stopped = 1;
        st->stop_index = idx;
        hold = 0;
    } else {
        size_t back;
        hold = MC_MAX(stop_prefix_hold(st), utf8_unfinished(st->buf, st->len));
        /* never split a character between what is shown and what is held */
        for (back = 0;
             back < 3 && hold > 0 && hold < st->len && utf8_is_cont(st->buf[st->len - hold]);
             back++)
            hold++;
    }
    out->text = st->buf;
    out->len = st->len - hold;
    out->stopped = st->stopped;
    out->stop_index = st->stop_index;
    st->emitted = out->len;
    return MC_OK;
}

void mc_stopper_flush(mc_stopper *st, mc_stop_out *out) {
    out_empty(st, out);
    if (st->stopped) return;
    drop_emitted(st);
    if (st->len == 0) return;
    utf8_finish(st);
    out->text = st->buf;
    out->len = st->len;
    st->emitted = st->len;
}
