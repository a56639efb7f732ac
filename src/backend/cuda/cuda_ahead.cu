/* cuda_ahead.cu - greedy decoding a step ahead: argmax_queue leaves each row's argmax keys on
 * the device for the next step's embedding, which also writes each row's argmax to mapped
 * page-locked memory as one word tagged with a sequence number (cu_am_word); argmax_wait
 * waits for the words. The token ids
 * (and fill_positions' positions) are written by the embedding that reads them, or by a
 * small kernel of their own when something else comes first (cu_deferred_flush), so steps
 * queued ahead follow one another with no copy or event between them. */
#include "cuda_internal.h"

struct DeferArgs {
    int32_t *ids;                   /* [rows] or NULL */
    const unsigned long long *keys; /* argmax keys (CU_AM_SLOT) */
    unsigned long long *host, seq;  /* each row's cu_am_word to mapped host memory */
    int rows;
    int32_t *pos; /* [T] or NULL */
    int start, T;
};

static __global__ void defer_kernel(const DeferArgs a) {
    cu_dep_wait();
    if (a.ids && (int)threadIdx.x < a.rows) cu_dfr_row(a.keys, a.ids, a.host, a.seq, threadIdx.x);
    if (a.pos)
        for (int t = threadIdx.x; t < a.T; t += blockDim.x) a.pos[t] = a.start + t;
}

void cu_deferred_flush(mc_cuda *c) {
    DeferArgs a;
    if (!cu_deferred(c)) return;
    memset(&a, 0, sizeof a);
    a.ids = c->dfr_ids;
    a.keys = c->dfr_keys;
    a.host = c->dfr_host;
    a.seq = c->dfr_seq;
    a.rows = c->dfr_rows;
    a.pos = c->dfr_pos;
    a.start = c->dfr_start;
    a.T = c->dfr_T;
    c->dfr_ids = NULL;
    c->dfr_pos = NULL;
    cu_launch(c, defer_kernel, dim3(1), dim3(128), 0, a, "deferred_ids");
}

mc_status cu_argmax_queue(mc_backend *be, int32_t *ids, const void *x, int rows, int n) {
    mc_cuda *c = cu_ctx(be);
    if (rows <= 0 || rows > CU_GEMV_MAX_M || n <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_queue: %d rows of %d (1 to %d rows)", rows, n,
                       CU_GEMV_MAX_M);
    if (c->aq_count == 2)
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_queue: two argmaxes queued and not waited for");
    cu_unpack(c, x, (size_t)rows * (size_t)n * sizeof(float));
    const unsigned long long *keys = cu_gemv_take_argmax(c, (const float *)x, rows, n);
    if (!keys) keys = cu_argmax_keys(c, (const float *)x, rows, n);
    cu_end_segment(c);
    const mc_status st = cu_take_error(c); /* a failure while the step was queued */
    if (st != MC_OK) return st;            /* nothing queued: nothing to wait for */
    const int slot = (c->aq_head + c->aq_count) & 1;
    if ((++c->aq_seq & 0xffffffull) == 0) c->aq_seq++; /* a zeroed word never matches */
    c->aq_want[slot] = c->aq_seq;
    c->aq_rows[slot] = rows;
    c->aq_n[slot] = n;
    c->aq_epoch[slot] = c->wr_epoch++; /* the event ends the writes noted so far */
    c->aq_count++;
    cu_note_write(c, ids, (size_t)rows * sizeof *ids);
    c->dfr_ids = ids;
    c->dfr_keys = keys;
    c->dfr_rows = rows;
    c->dfr_host = c->aq_dev + (size_t)slot * CU_AQ_SLOT;
    c->dfr_seq = c->aq_want[slot];
    return MC_OK;
}

/* True when every row's word of slot carries the awaited sequence number. */
static bool slot_arrived(const mc_cuda *c, int slot) {
    const volatile unsigned long long *w = c->aq_host + (size_t)slot * CU_AQ_SLOT;
    for (int r = 0; r < c->aq_rows[slot]; r++)
        if ((w[r] >> 40) != (c->aq_want[slot] & 0xffffffull)) return false;
    return true;
}

/* Waits until slot's words arrive in mapped memory; false on a failure of the stream
 * (recorded), or when the stream is idle without them. */
static bool await_slot(mc_cuda *c, int slot) {
    for (unsigned spin = 1; !slot_arrived(c, slot); spin++) {
        if (spin % 4096) continue; /* a few microseconds of spinning between queries */
        const cudaError_t e = cudaStreamQuery(c->stream); /* a failed kernel never writes it */
        if (e == cudaErrorNotReady) continue;
        if (e != cudaSuccess) return cu_check(c, e, "a queued kernel");
        if (slot_arrived(c, slot)) break;
        cu_set_error(c, MC_ERR_INTERNAL, "argmax_wait: the queued work ended without argmax %llu",
                     c->aq_want[slot]);
        return false;
    }
    return true;
}

mc_status cu_argmax_wait(mc_backend *be, int32_t *out, int rows) {
    mc_cuda *c = cu_ctx(be);
    if (c->aq_count == 0) return mc_fail(MC_ERR_INVALID_ARG, "argmax_wait: no argmax is queued");
    const int slot = c->aq_head;
    c->aq_head ^= 1;
    c->aq_count--;
    if (rows != c->aq_rows[slot])
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_wait: %d rows asked, %d queued", rows,
                       c->aq_rows[slot]);
    /* the kernel that writes this argmax's number must be launched: the deferred writes
     * when nothing took them over, or launches still queued; a newer argmax's deferred
     * writes stay for the next step's embedding */
    if (c->dfr_ids && c->dfr_seq == c->aq_want[slot]) {
        cu_deferred_flush(c);
        cu_end_segment(c);
    } else if (c->qn > 0 || c->pend.kind != CU_PEND_NONE) {
        cu_end_segment(c);
    }
    if (!await_slot(c, slot)) return cu_take_error(c);
    if (c->err == MC_OK) cu_retire_writes(c, c->aq_epoch[slot]);
    mc_status s = cu_take_error(c);
    for (int r = 0; s == MC_OK && r < rows; r++) { /* the words as argmax_rows reports */
        const unsigned long long w = c->aq_host[(size_t)slot * CU_AQ_SLOT + r];
        const unsigned kind = (unsigned)(w >> 32) & 0xffu, idx = (unsigned)w;
        if (kind == 0) out[r] = (int32_t)idx;
        else s = mc_argmax_fail(r, kind == 1 ? -1 : (int)idx, kind == 2, c->aq_n[slot]);
    }
    return s;
}

void cu_fill_positions(mc_backend *be, int32_t *pos, int start, int T) {
    mc_cuda *c = cu_ctx(be);
    if (T <= 0) return;
    if (c->pend.kind != CU_PEND_NONE || c->dfr_pos) cu_pending_flush(c);
    cu_note_write(c, pos, (size_t)T * sizeof *pos);
    c->dfr_pos = pos;
    c->dfr_start = start;
    c->dfr_T = T;
}

bool cu_ahead_init(mc_cuda *c) {
    const size_t bytes = 2 * CU_AQ_SLOT * sizeof *c->aq_host;
    if (cudaHostAlloc((void **)&c->aq_host, bytes, cudaHostAllocMapped) != cudaSuccess ||
        cudaHostGetDevicePointer((void **)&c->aq_dev, c->aq_host, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        cu_ahead_destroy(c);
        return false;
    }
    memset(c->aq_host, 0, bytes); /* no awaited sequence number has its low 24 bits 0 */
    return true;
}

void cu_ahead_destroy(mc_cuda *c) {
    if (c->aq_host) (void)cudaFreeHost(c->aq_host);
    c->aq_host = NULL;
    c->aq_dev = NULL;
}
