/* io_internal.h - helpers shared by the io layer's files: JSON member checks, a string
 * builder for writing JSON, and a streaming atomic file writer. Not for use outside
 * src/io/. */
#ifndef MC_IO_INTERNAL_H
#define MC_IO_INTERNAL_H

#include "io.h"

#include <cjson/cJSON.h>

/* "<buffer>" when a parser is given no file name for its messages. */
static inline const char *mc_io_name(const char *fname) { return fname ? fname : "<buffer>"; }

/* ---- JSON ---------------------------------------------------------------------------- */

/* Largest integer a JSON number (a double) holds exactly: 2^53. */
#define MC_JSON_MAX_EXACT 9007199254740992.0

/* True when item is a JSON number holding an integer in [lo, hi] (hi <= 2^53); the
 * value goes to *out. A fractional, non-finite or out-of-range number gives false. */
bool mc_json_int_in(const cJSON *item, double lo, double hi, int64_t *out);

/* Short name of an item's JSON type for messages ("string", "number", "null", ...). */
const char *mc_json_type_name(const cJSON *item);

/* Checks that no two members of the object obj share a key. On a repeat returns code
 * with "fname: <what> '<key>' occurs twice"; MC_ERR_OOM when out of memory. */
mc_status mc_json_check_unique(const cJSON *obj, const char *fname, const char *what,
                               mc_status code);

/* A growing NUL-terminated string. Errors are sticky: after an allocation failure every
 * append is a no-op and oom stays true; check it once at the end. */
typedef struct mc_sb {
    char *buf; /* [cap]; NULL until the first append */
    size_t len;
    size_t cap;
    bool oom;
} mc_sb;

void mc_sb_put(mc_sb *b, const char *s, size_t n);
void mc_sb_puts(mc_sb *b, const char *s);
void mc_sb_printf(mc_sb *b, const char *fmt, ...) MC_PRINTF(2, 3);
/* Appends s as a quoted JSON string (escaping '"', '\\' and control characters). */
void mc_sb_json_str(mc_sb *b, const char *s);
void mc_sb_free(mc_sb *b);

/* ---- atomic file writing ------------------------------------------------------------- */

/* A file being written to path.tmp; mc_atomic_commit renames it over path. */
typedef struct mc_atomic_file {
    int fd;     /* -1 when closed */
    char *path; /* target path (owned) */
    char *tmp;  /* path + ".tmp" (owned) */
} mc_atomic_file;

/* Creates path.tmp for writing (truncating any old one). On failure f is left closed. */
mc_status mc_atomic_open(mc_atomic_file *f, const char *path);
/* Appends len bytes (retrying short writes). */
mc_status mc_atomic_write(mc_atomic_file *f, const void *data, size_t len);
/* fsync, close, rename over path, fsync of the folder. Always releases f; on failure
 * removes path.tmp. */
mc_status mc_atomic_commit(mc_atomic_file *f);
/* Closes and removes path.tmp and releases f; a no-op once released (tmp == NULL), which
 * includes a zeroed struct. */
void mc_atomic_abort(mc_atomic_file *f);

#endif /* MC_IO_INTERNAL_H */
