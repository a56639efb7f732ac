/* status.c - status names, the thread-local last-error message, and the log callback. */
#include "core.h"

#include <stdarg.h>
#include <stdio.h>

enum { MC_ERRMSG_CAP = 1024 };

static _Thread_local char g_errmsg[MC_ERRMSG_CAP];
static mc_log_fn g_log_fn;
static void *g_log_user;

const char *mc_status_name(mc_status s) {
    switch (s) {
    case MC_OK: return "MC_OK";
    case MC_ERR_INVALID_ARG: return "MC_ERR_INVALID_ARG";
    case MC_ERR_OOM: return "MC_ERR_OOM";
    case MC_ERR_IO: return "MC_ERR_IO";
    case MC_ERR_NOT_DIR: return "MC_ERR_NOT_DIR";
    case MC_ERR_FILE_NOT_FOUND: return "MC_ERR_FILE_NOT_FOUND";
    case MC_ERR_TRUNCATED: return "MC_ERR_TRUNCATED";
    case MC_ERR_HEADER_SIZE: return "MC_ERR_HEADER_SIZE";
    case MC_ERR_JSON: return "MC_ERR_JSON";
    case MC_ERR_DTYPE: return "MC_ERR_DTYPE";
    case MC_ERR_OFFSETS: return "MC_ERR_OFFSETS";
    case MC_ERR_OVERLAP: return "MC_ERR_OVERLAP";
    case MC_ERR_TENSOR_SIZE: return "MC_ERR_TENSOR_SIZE";
    case MC_ERR_DUPLICATE: return "MC_ERR_DUPLICATE";
    case MC_ERR_MISSING_TENSOR: return "MC_ERR_MISSING_TENSOR";
    case MC_ERR_SHAPE: return "MC_ERR_SHAPE";
    case MC_ERR_CONFIG_MISSING: return "MC_ERR_CONFIG_MISSING";
    case MC_ERR_CONFIG_TYPE: return "MC_ERR_CONFIG_TYPE";
    case MC_ERR_UNSUPPORTED: return "MC_ERR_UNSUPPORTED";
    case MC_ERR_TOKENIZER: return "MC_ERR_TOKENIZER";
    case MC_ERR_UTF8: return "MC_ERR_UTF8";
    case MC_ERR_BUFFER_TOO_SMALL: return "MC_ERR_BUFFER_TOO_SMALL";
    case MC_ERR_TOKEN_ID: return "MC_ERR_TOKEN_ID";
    case MC_ERR_CONTEXT_FULL: return "MC_ERR_CONTEXT_FULL";
    case MC_ERR_BACKEND: return "MC_ERR_BACKEND";
    case MC_ERR_DATA: return "MC_ERR_DATA";
    case MC_ERR_NUMERIC: return "MC_ERR_NUMERIC";
    case MC_ERR_CANCELLED: return "MC_ERR_CANCELLED";
    case MC_ERR_INTERNAL: return "MC_ERR_INTERNAL";
    }
    return "MC_ERR_UNKNOWN";
}

const char *mc_last_error(void) { return g_errmsg; }

void mc_error_clear(void) { g_errmsg[0] = '\0'; }

mc_status mc_fail(mc_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(g_errmsg, sizeof g_errmsg, fmt, ap);
    va_end(ap);
    return s;
}

void mc_error_prefix(const char *fmt, ...) {
    char prefix[512];
    char old[MC_ERRMSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_errmsg, sizeof old);
    /* Too long a message loses its tail; the context at its start is what matters. */
    if (snprintf(g_errmsg, sizeof g_errmsg, "%s: %s", prefix, old) < 0) g_errmsg[0] = '\0';
}

void mc_set_log(mc_log_fn fn, void *user) {
    g_log_fn = fn;
    g_log_user = user;
}

void mc_log(mc_log_level level, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    if (!g_log_fn) return;
    va_start(ap, fmt);
    (void)vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_fn(level, buf, g_log_user);
}

const char *mc_dtype_name(mc_dtype t) {
    switch (t) {
    case MC_F32: return "F32";
    case MC_F16: return "F16";
    case MC_BF16: return "BF16";
    }
    return "?";
}

size_t mc_dtype_size(mc_dtype t) { return t == MC_F32 ? 4 : 2; }
