/* stop.h - stop strings on streamed text: decides, piece by piece, which decoded text can
 * be shown now, which must wait (it may be the start of a stop string, or an unfinished
 * UTF-8 character), and when a stop string has completed.
 *
 * Matching is on bytes, across any number of pieces. The first stop string to complete
 * while reading the text left to right wins (of two completing at the same byte, the
 * longer); the text before it is emitted and the stop string and everything after it are
 * not. How the text is split into pieces never changes what is emitted in total.
 *
 * Text is held back only while it could still become (part of) a stop string or complete
 * a UTF-8 character, and never from the middle of a character: at most (longest stop
 * string - 1) + 3 bytes wait at any time. Bytes pass through unchanged (invalid UTF-8 in
 * the text stays invalid), with one exception: when the text ends inside a character that
 * the following bytes would have continued - at mc_stopper_flush, an unfinished trailing
 * sequence; at a stop string that begins with continuation bytes, the unfinished sequence
 * before it - that sequence is emitted as U+FFFD. So valid UTF-8 text gives valid UTF-8
 * output, in every piece.
 *
 * Use: mc_stopper_init, then mc_stopper_push for each decoded piece (show out.text[0..len)
 * at once; stop generating when out.stopped), mc_stopper_flush when generation ends for
 * another reason, mc_stopper_free. */
#ifndef MC_GEN_STOP_H
#define MC_GEN_STOP_H

#include "../core/core.h"

/* What a push or flush lets through. text points into the stopper and stays valid until
 * the next push, flush, reset or free. */
typedef struct mc_stop_out {
    const char *text; /* [len] bytes to show now (not NUL-terminated; non-NULL) */
    size_t len;
    int stopped;    /* 1 when a stop string has completed (now or earlier) */
    int stop_index; /* index of the stop string that completed, -1 if none */
} mc_stop_out;

typedef struct mc_stopper {
    char **stops;      /* [n_stops] copies of the stop strings (inside mem) */
    size_t *stop_lens; /* [n_stops] byte lengths, each >= 1 */
    size_t n_stops;
    void *mem; /* the one allocation holding stops, stop_lens and the bytes */
    char *buf; /* [cap] pending text: held bytes, then the newest piece */
    size_t len, cap;
    size_t emitted; /* bytes at the front of buf handed out by the last call */
    int stopped, stop_index;
} mc_stopper;

/* Prepares st for the stop strings stops[0..n) (copied; n may be 0: then only unfinished
 * UTF-8 is held back). MC_ERR_INVALID_ARG for a NULL or empty stop string, MC_ERR_OOM. */
mc_status mc_stopper_init(mc_stopper *st, const char *const *stops, size_t n);

/* Frees what init allocated; safe on a zeroed struct and twice. */
void mc_stopper_free(mc_stopper *st);

/* Forgets held text and a completed stop, keeping the stop strings (for a new sequence). */
void mc_stopper_reset(mc_stopper *st);

/* Adds piece[0..len) of decoded text and says what can be shown. After a stop string has
 * completed, further pushes emit nothing and report stopped again. MC_ERR_OOM when the
 * buffer cannot grow (nothing is lost: the push can be retried). */
mc_status mc_stopper_push(mc_stopper *st, const char *piece, size_t len, mc_stop_out *out);

/* Ends the text: emits everything held (an unfinished trailing UTF-8 sequence as U+FFFD)
 * and empties the stopper. Nothing after a completed stop string. */
void mc_stopper_flush(mc_stopper *st, mc_stop_out *out);

#endif /* MC_GEN_STOP_H */
