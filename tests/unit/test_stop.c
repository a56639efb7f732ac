/* test_stop.c - stop strings on streamed text: matches across piece boundaries, held-back
 * partial matches, UTF-8 characters split across pieces, and the same total output for
 * every way of splitting a text into pieces. */
#include "test.h"

#include "gen/stop.h"

#include <stdint.h>

/* Everything emitted so far, appended by push_text. */
typedef struct sink {
    char text[4096];
    size_t len;
    int stopped, stop_index;
} sink;

static void sink_add(sink *k, const mc_stop_out *o) {
    CHECK(o->text != NULL);
    if (k->len + o->len < sizeof k->text) {
        memcpy(k->text + k->len, o->text, o->len);
        k->len += o->len;
        k->text[k->len] = '\0';
    }
    k->stopped = o->stopped;
    k->stop_index = o->stop_index;
}

/* Pushes a NUL-terminated piece; returns how many bytes it let through. */
static size_t push_text(mc_stopper *st, sink *k, const char *piece) {
    mc_stop_out o;
    CHECK_OK(mc_stopper_push(st, piece, strlen(piece), &o));
    sink_add(k, &o);
    return o.len;
}

static void flush_to(mc_stopper *st, sink *k) {
    mc_stop_out o;
    mc_stopper_flush(st, &o);
    sink_add(k, &o);
}

#define CHECK_TEXT(k, want)                                                                 \
    do {                                                                                    \
        if (strcmp((k)->text, (want)) != 0) {                                               \
            fprintf(stderr, "%s:%d: emitted \"%s\", expected \"%s\"\n", __FILE__, __LINE__, \
                    (k)->text, (want));                                                     \
            t_checks_failed++;                                                              \
        }                                                                                   \
    } while (0)

static void test_split_over_three_pieces(void) {
    const char *stops[2] = {"<|im_end|>", "\n\n\n"};
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, stops, 2));
    CHECK_INT(push_text(&st, &k, "Hello <|"), 6); /* "<|" may start a stop string */
    CHECK_TEXT(&k, "Hello ");
    CHECK_INT(push_text(&st, &k, "im_e"), 0);
    CHECK(!k.stopped);
    CHECK_INT(push_text(&st, &k, "nd|> and more"), 0);
    CHECK(k.stopped);
    CHECK_INT(k.stop_index, 0);
    CHECK_TEXT(&k, "Hello ");
    /* later pushes and the flush add nothing */
    CHECK_INT(push_text(&st, &k, "ignored"), 0);
    CHECK(k.stopped);
    flush_to(&st, &k);
    CHECK_TEXT(&k, "Hello ");
    CHECK(k.stopped);
    mc_stopper_free(&st);
    mc_stopper_free(&st); /* twice is fine */
}

static void test_false_start(void) {
    const char *stops[1] = {"</s>"};
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, stops, 1));
    CHECK_INT(push_text(&st, &k, "a<"), 1);
    CHECK_INT(push_text(&st, &k, "/"), 0);
    CHECK_INT(push_text(&st, &k, "x"), 3); /* "</x" is not a stop: released at once */
    CHECK_TEXT(&k, "a</x");
    CHECK_INT(push_text(&st, &k, "<</"), 1); /* the first "<" can no longer match */
    flush_to(&st, &k);                       /* the end releases a held partial match */
    CHECK_TEXT(&k, "a</x<</");
    CHECK(!k.stopped);
    CHECK_INT(k.stop_index, -1);
    mc_stopper_free(&st);
}

static void test_overlapping_prefixes(void) {
    const char *abab[1] = {"abab"};
    const char *abac[1] = {"abac"};
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    const char *txt = "ababab";
    char one[2] = {0, 0};
    size_t i;
    /* "ababab" one byte at a time: stops after the fourth byte, nothing emitted */
    CHECK_OK(mc_stopper_init(&st, abab, 1));
    for (i = 0; txt[i]; i++) {
        one[0] = txt[i];
        push_text(&st, &k, one);
        CHECK_INT(k.stopped, i >= 3);
    }
    CHECK_TEXT(&k, "");
    CHECK(k.stopped);
    mc_stopper_free(&st);
    /* "xababab" in one piece */
    memset(&k, 0, sizeof k);
    CHECK_OK(mc_stopper_init(&st, abab, 1));
    push_text(&st, &k, "xababab");
    CHECK_TEXT(&k, "x");
    CHECK(k.stopped);
    mc_stopper_free(&st);
    /* "ab" "ab" "ac" against "abac": the first "ab" is released when "abab" fails */
    memset(&k, 0, sizeof k);
    CHECK_OK(mc_stopper_init(&st, abac, 1));
    CHECK_INT(push_text(&st, &k, "ab"), 0);
    CHECK_INT(push_text(&st, &k, "ab"), 2);
    CHECK_INT(push_text(&st, &k, "ac"), 0);
    CHECK_TEXT(&k, "ab");
    CHECK(k.stopped);
    mc_stopper_free(&st);
}

static void test_first_to_complete(void) {
    const char *s1[2] = {"abcd", "c"};
    const char *s2[2] = {"bc", "abc"};
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    /* "c" completes before "abcd" does */
    CHECK_OK(mc_stopper_init(&st, s1, 2));
    push_text(&st, &k, "xxabcd");
    CHECK_TEXT(&k, "xxab");
    CHECK_INT(k.stop_index, 1);
    mc_stopper_free(&st);
    /* two completing at the same byte: the longer wins */
    memset(&k, 0, sizeof k);
    CHECK_OK(mc_stopper_init(&st, s2, 2));
    push_text(&st, &k, "xa");
    push_text(&st, &k, "bcy");
    CHECK_TEXT(&k, "x");
    CHECK_INT(k.stop_index, 1);
    /* reset: the same stopper serves a new text */
    mc_stopper_reset(&st);
    memset(&k, 0, sizeof k);
    push_text(&st, &k, "zzz");
    flush_to(&st, &k);
    CHECK_TEXT(&k, "zzz");
    CHECK(!k.stopped);
    mc_stopper_free(&st);
}

static void test_utf8_split(void) {
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, NULL, 0));
    /* "é" = C3 A9 split over two pieces */
    CHECK_INT(push_text(&st, &k, "caf\xC3"), 3);
    CHECK_INT(push_text(&st, &k, "\xA9!"), 3);
    CHECK_TEXT(&k, "caf\xC3\xA9!");
    /* U+1F600 = F0 9F 98 80 over three pieces */
    CHECK_INT(push_text(&st, &k, " \xF0"), 1);
    CHECK_INT(push_text(&st, &k, "\x9F"), 0);
    CHECK_INT(push_text(&st, &k, "\x98"), 0);
    CHECK_INT(push_text(&st, &k, "\x80"), 4);
    /* a three-byte character, then a piece that ends it early */
    CHECK_INT(push_text(&st, &k, "\xE4\xB8"), 0);
    CHECK_INT(push_text(&st, &k, "\xAD"), 3);
    CHECK_TEXT(&k, "caf\xC3\xA9! \xF0\x9F\x98\x80\xE4\xB8\xAD");
    /* an unfinished character at the very end becomes U+FFFD */
    CHECK_INT(push_text(&st, &k, "z\xE4\xB8"), 1);
    flush_to(&st, &k);
    CHECK_TEXT(&k, "caf\xC3\xA9! \xF0\x9F\x98\x80\xE4\xB8\xADz\xEF\xBF\xBD");
    /* flush twice and flush of nothing add nothing */
    flush_to(&st, &k);
    CHECK_TEXT(&k, "caf\xC3\xA9! \xF0\x9F\x98\x80\xE4\xB8\xADz\xEF\xBF\xBD");
    mc_stopper_free(&st);
}

static void test_utf8_invalid_passes(void) {
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, NULL, 0));
    flush_to(&st, &k); /* nothing pushed yet */
    CHECK_INT(k.len, 0);
    /* bytes that cannot start or continue a character are not held */
    CHECK_INT(push_text(&st, &k, "\xFF"), 1);
    CHECK_INT(push_text(&st, &k, "\x80"), 1);
    CHECK_INT(push_text(&st, &k, "\xC0"), 1);         /* overlong lead */
    CHECK_INT(push_text(&st, &k, "\xF5"), 1);         /* beyond U+10FFFF */
    CHECK_INT(push_text(&st, &k, "\x80\x80\x80"), 3); /* continuations with no lead */
    CHECK_INT(push_text(&st, &k, "\xE4\x61"), 2);     /* a cut-off character mid-text */
    CHECK_INT(push_text(&st, &k, ""), 0);
    CHECK_INT(k.len, 9);
    mc_stopper_free(&st);
}

static void test_stop_after_unfinished_utf8(void) {
    const char *stops[1] = {"STOP"};
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, stops, 1));
    /* a stop string that does not continue the character: the bytes were invalid */
    CHECK_INT(push_text(&st, &k, "ok\xE4\xB8"), 2);
    push_text(&st, &k, "STOP");
    CHECK(k.stopped);
    CHECK_TEXT(&k, "ok\xE4\xB8");
    mc_stopper_free(&st);
    /* a stop string that starts inside a character ends the text inside it */
    {
        const char *s3[1] = {"\x98\x80!"};
        memset(&k, 0, sizeof k);
        CHECK_OK(mc_stopper_init(&st, s3, 1));
        CHECK_INT(push_text(&st, &k, "ok\xF0\x9F"), 2);
        CHECK_INT(push_text(&st, &k, "\x98\x80"), 0);
        CHECK_INT(push_text(&st, &k, "?"), 5); /* no stop after all: the whole character */
        CHECK_TEXT(&k, "ok\xF0\x9F\x98\x80?");
        push_text(&st, &k, "\xF0\x9F\x98\x80!");
        CHECK(k.stopped);
        CHECK_TEXT(&k, "ok\xF0\x9F\x98\x80?\xEF\xBF\xBD");
        mc_stopper_free(&st);
    }
    /* a held stop prefix never splits a character: "\xAD<" may start inside "中" */
    {
        const char *s4[1] = {"\xAD<"};
        memset(&k, 0, sizeof k);
        CHECK_OK(mc_stopper_init(&st, s4, 1));
        CHECK_INT(push_text(&st, &k, "\xE4\xB8\xAD"), 0);
        CHECK_INT(push_text(&st, &k, "A"), 4);
        CHECK_TEXT(&k, "\xE4\xB8\xAD\x41");
        mc_stopper_free(&st);
    }
    /* a stop string that is itself multi-byte, split inside its characters */
    {
        const char *s2[1] = {"\xE2\x80\x94\x65nd"}; /* "—end" */
        memset(&k, 0, sizeof k);
        CHECK_OK(mc_stopper_init(&st, s2, 1));
        CHECK_INT(push_text(&st, &k, "x \xE2"), 2);
        CHECK_INT(push_text(&st, &k, "\x80"), 0);
        CHECK_INT(push_text(&st, &k, "\x94\x65"), 0);
        CHECK_INT(push_text(&st, &k, "nd"), 0);
        CHECK(k.stopped);
        CHECK_TEXT(&k, "x ");
        mc_stopper_free(&st);
    }
}

static void test_no_stops(void) {
    mc_stopper st;
    sink k = {{0}, 0, 0, -1};
    CHECK_OK(mc_stopper_init(&st, NULL, 0));
    CHECK_INT(push_text(&st, &k, "plain "), 6);
    CHECK_INT(push_text(&st, &k, "text"), 4);
    flush_to(&st, &k);
    CHECK_TEXT(&k, "plain text");
    CHECK(!k.stopped);
    mc_stopper_free(&st);
}

static void test_init_errors(void) {
    mc_stopper st;
    const char *bad1[2] = {"ok", ""};
    const char *bad2[2] = {NULL, "ok"};
    CHECK_STATUS(mc_stopper_init(&st, NULL, 1), MC_ERR_INVALID_ARG);
    CHECK_MSG("NULL");
    CHECK_STATUS(mc_stopper_init(&st, bad1, 2), MC_ERR_INVALID_ARG);
    CHECK_MSG("stop string 1 is empty");
    mc_stopper_free(&st); /* a failed init leaves a struct that free accepts */
    CHECK_STATUS(mc_stopper_init(&st, bad2, 2), MC_ERR_INVALID_ARG);
    CHECK_MSG("stop string 0 is NULL");
    mc_stopper_free(&st);
}

static void test_alloc_failures(void) {
    const char *stops[2] = {"END", "<|endoftext|>"};
    mc_stopper st;
    mc_stop_out o;
    sink k = {{0}, 0, 0, -1};
    mc_debug_fail_alloc_after(1);
    CHECK_STATUS(mc_stopper_init(&st, stops, 2), MC_ERR_OOM);
    mc_debug_fail_alloc_after(0);
    mc_stopper_free(&st);
    CHECK_OK(mc_stopper_init(&st, stops, 2));
    CHECK_INT(push_text(&st, &k, "abc E"), 4);
    /* a failed growth loses nothing: the same piece can be pushed again */
    mc_debug_fail_alloc_after(1);
    {
        char big[200];
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        CHECK_STATUS(mc_stopper_push(&st, big, strlen(big), &o), MC_ERR_OOM);
        mc_debug_fail_alloc_after(0);
        CHECK_INT(o.len, 0);
        push_text(&st, &k, "N");
        push_text(&st, &k, big);
    }
    CHECK_INT(k.len, 4 + 2 + 199);
    push_text(&st, &k, "EN");
    push_text(&st, &k, "D!");
    CHECK(k.stopped);
    CHECK_INT(k.stop_index, 0);
    CHECK_INT(k.len, 4 + 2 + 199);
    mc_stopper_free(&st);
}

/* ---- every split of a text gives the same output ------------------------------------------ */

static uint64_t t_state = 99;
static unsigned t_rand(unsigned n) {
    uint64_t z = (t_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (unsigned)(z % n);
}

/* The expected output for the whole text at once: the prefix before the first stop string
 * to complete (the longest of those ending at the same byte), with an unfinished trailing
 * UTF-8 character that the following bytes would continue as U+FFFD. */
static size_t expected_output(const char *text, size_t n, const char *const *stops, size_t n_stops,
                              char *out, int *stop_index) {
    size_t end, i, cut = n, len;
    *stop_index = -1;
    for (end = 1; end <= n && *stop_index < 0; end++) {
        size_t best = 0;
        for (i = 0; i < n_stops; i++) {
            size_t l = strlen(stops[i]);
            if (l <= end && l > best && memcmp(text + end - l, stops[i], l) == 0) {
                best = l;
                *stop_index = (int)i;
                cut = end - l;
            }
        }
    }
    memcpy(out, text, cut);
    len = cut;
    /* the text ends inside a character the next bytes continue: at the end, or before a
     * stop string starting with a continuation byte */
    if (cut < n && ((unsigned char)text[cut] & 0xC0) != 0x80) return len;
    for (i = 1; i <= 3 && i <= len; i++) {
        unsigned char c = (unsigned char)out[len - i];
        size_t need = 1;
        if ((c & 0xC0) == 0x80) continue;
        if (c >= 0xC2 && c <= 0xDF)
            need = 2;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 3;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 4;
        if (need > i) {
            len -= i;
            memcpy(out + len, "\xEF\xBF\xBD", 3);
            len += 3;
        }
        break;
    }
    return len;
}

static void hexdump(const char *what, const char *b, size_t n) {
    size_t i;
    fprintf(stderr, "%s:", what);
    for (i = 0; i < n; i++) fprintf(stderr, " %02x", (unsigned char)b[i]);
    fprintf(stderr, "\n");
}

static void test_all_splits_agree(void) {
    /* an alphabet of whole and partial characters, so stops and splits fall everywhere */
    const char *atoms[8] = {"a",    "b", "ab", "\xC3\xA9", "\xE2\x80\x94", "\xF0\x9F\x98\x80",
                            "\xE4", "<"};
    const char *stop_sets[5][3] = {{"abab", "b<a", NULL},
                                   {"\xC3\xA9\x61", "<<", "\x80\x94"},
                                   {"aaaaa", NULL, NULL},
                                   {NULL, NULL, NULL},
                                   {"\x9F\x98", "a\xF0", "\xA9"}};
    const size_t n_stop_sets[5] = {2, 3, 1, 0, 3};
    int trial, mismatches = 0, held_too_much = 0;
    for (trial = 0; trial < 5000; trial++) {
        char text[256], want[300];
        size_t n = 0, want_len, pos = 0;
        int want_idx, set = trial % 5, atoms_n = 1 + (int)t_rand(30), a;
        mc_stopper st;
        sink k;
        memset(&k, 0, sizeof k);
        for (a = 0; a < atoms_n; a++) {
            const char *at = atoms[t_rand(8)];
            memcpy(text + n, at, strlen(at));
            n += strlen(at);
        }
        want_len = expected_output(text, n, stop_sets[set], n_stop_sets[set], want, &want_idx);
        CHECK_OK(mc_stopper_init(&st, stop_sets[set], n_stop_sets[set]));
        while (pos < n && !k.stopped) {
            size_t piece = 1 + t_rand(trial % 2 ? 3 : 9);
            mc_stop_out o;
            if (piece > n - pos) piece = n - pos;
            CHECK_OK(mc_stopper_push(&st, text + pos, piece, &o));
            sink_add(&k, &o);
            pos += piece;
            /* held back: at most (longest stop - 1) + 3 bytes */
            if (!k.stopped && pos - k.len > 4 + 3) held_too_much++;
        }
        if (!k.stopped) flush_to(&st, &k);
        if (k.len != want_len || memcmp(k.text, want, want_len) != 0 || k.stop_index != want_idx) {
            if (mismatches++ < 3) {
                fprintf(stderr, "trial %d: emitted %zu bytes (stop %d), expected %zu (stop %d)\n",
                        trial, k.len, k.stop_index, want_len, want_idx);
                hexdump("  text", text, n);
                hexdump("  emitted", k.text, k.len);
                hexdump("  expected", want, want_len);
            }
        }
        mc_stopper_free(&st);
    }
    CHECK_INT(mismatches, 0);
    CHECK_INT(held_too_much, 0);
}

int main(void) {
    RUN(test_split_over_three_pieces);
    RUN(test_false_start);
    RUN(test_overlapping_prefixes);
    RUN(test_first_to_complete);
    RUN(test_utf8_split);
    RUN(test_utf8_invalid_passes);
    RUN(test_stop_after_unfinished_utf8);
    RUN(test_no_stops);
    RUN(test_init_errors);
    RUN(test_alloc_failures);
    RUN(test_all_splits_agree);
    return t_summary();
}
