/* cuda_backend.cu - the CUDA backend's context: creation and the ops table, device
 * memory with accounting, host copies, sticky errors, and the launch queue that replays
 * repeated segments of kernels (decode steps) as CUDA graphs. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_internal.h"

/* ---- errors ---- */

void cu_set_error(mc_cuda *c, mc_status s, const char *fmt, ...) {
    va_list ap;
    if (c->err != MC_OK) return; /* the first failure explains the rest */
    c->err = s;
    va_start(ap, fmt);
    (void)vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    va_end(ap);
    mc_log(MC_LOG_ERROR, "cuda: %s", c->err_msg);
}

void cu_smem_limit(mc_cuda *c, const void *func, int bytes, const char *what) {
    const cudaFuncAttribute at = cudaFuncAttributeMaxDynamicSharedMemorySize;
    (void)cu_check(c, cudaFuncSetAttribute(func, at, bytes), what);
}

bool cu_check(mc_cuda *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    cu_set_error(c, e == cudaErrorMemoryAllocation ? MC_ERR_OOM : MC_ERR_BACKEND,
                 "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}

bool cu_check_blas(mc_cuda *c, cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_SUCCESS) return true;
    cu_set_error(c, st == CUBLAS_STATUS_ALLOC_FAILED ? MC_ERR_OOM : MC_ERR_BACKEND,
                 "%s: cuBLAS status %d", what, (int)st);
    return false;
}

mc_status cu_take_error(mc_cuda *c) {
    mc_status s = c->err;
    if (s == MC_OK) return MC_OK;
    c->err = MC_OK;
    return mc_fail(s, "cuda device %d: %s", c->device, c->err_msg);
}

/* ---- allocation registry ---- */

/* Index of the first record with p >= key. */
static size_t reg_lower(const mc_cuda *c, uintptr_t key) {
    size_t lo = 0, hi = c->n_allocs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->allocs[mid].p < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static bool reg_add(mc_cuda *c, void *p, size_t bytes) {
    size_t i;
    if (c->n_allocs == c->cap_allocs) {
        size_t cap = c->cap_allocs ? 2 * c->cap_allocs : 256;
        cu_alloc_rec *n = (cu_alloc_rec *)mc_realloc(c->allocs, cap * sizeof *n);
        if (!n) return false;
        c->allocs = n;
        c->cap_allocs = cap;
    }
    i = reg_lower(c, (uintptr_t)p);
    memmove(c->allocs + i + 1, c->allocs + i, (c->n_allocs - i) * sizeof *c->allocs);
    c->allocs[i].p = (uintptr_t)p;
    c->allocs[i].bytes = bytes;
    c->allocs[i].frozen = false;
    c->n_allocs++;
    c->bytes_now += bytes;
    if (c->bytes_now > c->bytes_peak) c->bytes_peak = c->bytes_now;
    return true;
}

/* Removes p's record; false when p is not a live allocation of this backend. */
static bool reg_remove(mc_cuda *c, const void *p) {
    size_t i = reg_lower(c, (uintptr_t)p);
    if (i == c->n_allocs || c->allocs[i].p != (uintptr_t)p) return false;
    c->bytes_now -= c->allocs[i].bytes;
    memmove(c->allocs + i, c->allocs + i + 1, (c->n_allocs - i - 1) * sizeof *c->allocs);
    c->n_allocs--;
    return true;
}

/* The record holding [p, p + bytes), or NULL. */
static const cu_alloc_rec *reg_find(const mc_cuda *c, const void *p, size_t bytes) {
    uintptr_t a = (uintptr_t)p;
    size_t i = reg_lower(c, a + 1); /* first record starting after a */
    if (i == 0) return NULL;
    i--;
    return a >= c->allocs[i].p && a - c->allocs[i].p + bytes <= c->allocs[i].bytes ? &c->allocs[i]
                                                                                   : NULL;
}

bool cu_is_device(const mc_cuda *c, const void *p, size_t bytes) { return reg_find(c, p, bytes) != NULL; }

bool cu_alloc_of(const mc_cuda *c, const void *p, size_t bytes, const void **base, size_t *size) {
    const cu_alloc_rec *r = reg_find(c, p, bytes);
    if (!r) return false;
    *base = (const void *)r->p;
    *size = r->bytes;
    return true;
}

void cu_track_write(mc_cuda *c, const void *p, size_t bytes) {
    const uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    int i;
    if (c->wr_full) return;
    for (i = c->n_wr - 1; i >= 0 && i >= c->n_wr - 8; i--) /* a buffer rewritten layer after layer */
        if (c->wr[i].lo == lo && c->wr[i].hi == hi) {
            c->wr[i].epoch = c->wr_epoch;
            return;
        }
    if (c->n_wr == CU_WR_MAX) {
        c->wr_full = true;
        return;
    }
    c->wr[c->n_wr].lo = lo;
    c->wr[c->n_wr].hi = hi;
    c->wr[c->n_wr].epoch = c->wr_epoch;
    c->n_wr++;
}

void cu_retire_writes(mc_cuda *c, unsigned epoch) {
    int i, n = 0;
    if (c->wr_full) return; /* ranges were lost: only a stream synchronisation clears them */
    for (i = 0; i < c->n_wr; i++)
        if ((int)(c->wr[i].epoch - epoch) > 0) c->wr[n++] = c->wr[i]; /* newer: kept */
    c->n_wr = n;
}

bool cu_unwritten(const mc_cuda *c, const void *p, size_t bytes) {
    const uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    int i;
    if (c->wr_full || !reg_find(c, p, bytes)) return false;
    for (i = 0; i < c->n_wr; i++)
        if (lo < c->wr[i].hi && c->wr[i].lo < hi) return false;
    return true;
}

/* After a completed stream synchronisation: every queued write has finished. */
static void sync_done(mc_cuda *c) {
    c->n_wr = 0;
    c->wr_full = c->wr == NULL;
    cu_lse_drop_all(c);
}

bool cu_is_frozen(const mc_cuda *c, const void *p, size_t bytes) {
    const cu_alloc_rec *r = reg_find(c, p, bytes);
    return r && r->frozen;
}

void *cu_malloc(mc_cuda *c, size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e;
    if (bytes == 0) bytes = 256;
    e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        (void)cudaGetLastError(); /* an allocation failure does not poison the context */
        (void)cudaMemGetInfo(&fr, &tot);
        mc_log(MC_LOG_WARN, "cuda: cannot allocate %zu bytes of device memory (%zu of %zu free)",
               bytes, fr, tot);
        if (what)
            cu_set_error(c, MC_ERR_OOM, "%s: out of device memory for %zu bytes (%zu of %zu free)",
                         what, bytes, fr, tot);
        return NULL;
    }
    if (!reg_add(c, p, bytes)) {
        (void)cudaFree(p);
        if (what) cu_set_error(c, MC_ERR_OOM, "%s: out of host memory", what);
        return NULL;
    }
    return p;
}

void cu_free(mc_cuda *c, void *p) {
    size_t i;
    if (!p) return;
    cu_end_segment(c); /* queued launches may still read p */
    i = reg_lower(c, (uintptr_t)p);
    if (i < c->n_allocs && c->allocs[i].p == (uintptr_t)p) {
        cu_note_write(c, p, c->allocs[i].bytes); /* drop shadows of p's contents */
        if (c->n_bias) cu_bias_drop(c, p, c->allocs[i].bytes);
        if (c->n_aug) cu_aug_drop(c, p, c->allocs[i].bytes);
        if (c->allocs[i].frozen) c->frozen_bytes -= c->allocs[i].bytes;
    }
    if (!reg_remove(c, p)) {
        cu_set_error(c, MC_ERR_INTERNAL, "free of %p, which this backend did not allocate", p);
        return;
    }
    (void)cu_check(c, cudaFree(p), "cudaFree");
}

/* cu_scratch; record: a failure is recorded as an OOM. */
static void *scratch_get(mc_cuda *c, int id, size_t bytes, bool zero_new, bool record) {
    void *p;
    if (c->scratch[id] && c->scratch_cap[id] >= bytes) return c->scratch[id];
    cu_break(c);
    if (c->scratch[id]) {
        cu_free(c, c->scratch[id]);
        c->scratch[id] = NULL;
        c->scratch_cap[id] = 0;
    }
    bytes += bytes / 4; /* grow with room, so slowly growing uses do not reallocate often */
    p = cu_malloc(c, bytes, record ? "scratch" : NULL);
    if (!p) return NULL;
    if (zero_new && !cu_check(c, cudaMemsetAsync(p, 0, bytes, c->stream), "cudaMemsetAsync")) {
        cu_free(c, p);
        return NULL;
    }
    c->scratch[id] = p;
    c->scratch_cap[id] = bytes;
    return p;
}

void *cu_scratch(mc_cuda *c, int id, size_t bytes, bool zero_new) {
    return scratch_get(c, id, bytes, zero_new, true);
}

void *cu_scratch_opt(mc_cuda *c, int id, size_t bytes) {
    return scratch_get(c, id, bytes, false, false);
}

/* ---- launch queue and graphs ---- */

/* ---- profiling ---- */

/* Adds the finished events' times to the per-name table and empties the pool. */
static void prof_flush(mc_cuda *c) {
    int i, j;
    if (!c->pn) return;
    (void)cudaEventSynchronize(c->pev[c->pn - 1].b);
    for (i = 0; i < c->pn; i++) {
        float ms = 0;
        (void)cudaEventElapsedTime(&ms, c->pev[i].a, c->pev[i].b);
        for (j = 0; j < c->nrow; j++)
            if (c->prow[j].name == c->pev[i].name) break;
        if (j == c->nrow) {
            if (c->nrow == c->caprow) {
                int cap = c->caprow ? 2 * c->caprow : 64;
                cu_prof_row *r = (cu_prof_row *)mc_realloc(c->prow, (size_t)cap * sizeof *r);
                if (!r) continue;
                c->prow = r;
                c->caprow = cap;
            }
            c->prow[j].name = c->pev[i].name;
            c->prow[j].ms = 0;
            c->prow[j].calls = 0;
            c->nrow++;
        }
        c->prow[j].ms += ms;
        c->prow[j].calls++;
    }
    c->pn = 0;
}

int cu_prof_begin(mc_cuda *c, const char *name) {
    int slot;
    if (!c->prof_on) return -1;
    if (!c->pev) {
        c->pcap = 4096;
        c->pev = (cu_prof_ev *)mc_calloc((size_t)c->pcap, sizeof *c->pev);
        if (!c->pev) {
            c->prof_on = false;
            return -1;
        }
        for (int i = 0; i < c->pcap; i++)
            if (cudaEventCreate(&c->pev[i].a) != cudaSuccess ||
                cudaEventCreate(&c->pev[i].b) != cudaSuccess) {
                c->prof_on = false;
                return -1;
            }
    }
    if (c->pn == c->pcap) prof_flush(c);
    slot = c->pn++;
    c->pev[slot].name = name;
    (void)cudaEventRecord(c->pev[slot].a, c->stream);
    return slot;
}

void cu_prof_end(mc_cuda *c, int slot) {
    if (slot >= 0) (void)cudaEventRecord(c->pev[slot].b, c->stream);
}

/* Launches one kernel on the stream, as a programmatic dependent of the previous kernel
 * when PDL is on (every kernel waits for its predecessor first: cu_dep_wait). */
static void launch_direct(mc_cuda *c, const void *func, dim3 grid, dim3 block, unsigned smem,
                          const void *args, const char *name) {
    void *params[1];
    int ps = cu_prof_begin(c, name);
    params[0] = (void *)args;
    c->n_launch++;
    if (c->pdl_on) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = c->stream;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        (void)cu_check(c, cudaLaunchKernelExC(&cfg, func, params), name);
    } else {
        (void)cu_check(c, cudaLaunchKernel(func, grid, block, params, smem, c->stream), name);
    }
    cu_prof_end(c, ps);
}

static void launch_node(mc_cuda *c, const cu_node *n) {
    launch_direct(c, n->func, n->grid, n->block, n->smem, n->args, n->name);
}

void cu_pending_flush(mc_cuda *c) {
    if (cu_deferred(c)) cu_deferred_flush(c); /* queued before any pending op */
    cu_pending p = c->pend;
    if (p.kind == CU_PEND_NONE) return;
    c->pend.kind = CU_PEND_NONE; /* before launching: the launch comes back through here */
    switch (p.kind) {
    case CU_PEND_ADD: cu_flush_add(c, &p); break;
    case CU_PEND_COPY: cu_flush_copy(c, &p); break;
    case CU_PEND_SWIGLU: cu_flush_swiglu(c, &p); break;
    case CU_PEND_ROPE: cu_flush_rope(c, &p); break;
    case CU_PEND_GEMV: cu_flush_gemv(c, &p); break;
    case CU_PEND_ATTBWD: cu_flush_attbwd(c); break;
    case CU_PEND_ATTFWD: cu_flush_attfwd(c); break;
    case CU_PEND_LORA: cu_flush_lora(c, &p); break;
    case CU_PEND_MM: cu_flush_mm(c, &p); break;
    case CU_PEND_DUAL: cu_flush_dual(c, &p); break;
    default: break;
    }
}

/* True when func's shared-memory split was set already; else records it (an open-addressing
 * set of kernels, looked up on every launch; past half full, every kernel counts as set). */
static bool carved_before(mc_cuda *c, const void *func) {
    unsigned h = (unsigned)(((uintptr_t)func >> 4) * 2654435761u) % CU_N_CARVED;
    while (c->carved[h] && c->carved[h] != func) h = (h + 1) % CU_N_CARVED;
    if (c->carved[h] || c->n_carved >= CU_N_CARVED / 2) return true;
    c->carved[h] = func;
    c->n_carved++;
    return false;
}

void cu_launch_raw(mc_cuda *c, const void *func, dim3 grid, dim3 block, unsigned smem,
                   const void *args, unsigned size, const char *name) {
    cu_node *n;
    const bool keep_l1 = c->keep_l1;
    c->keep_l1 = false;
    if (c->smem_on && !keep_l1) {
        /* the largest shared-memory split: an SM changes its split only when idle, and the
         * staged GEMV's blocks must fit beside the kernels still running before it */
        if (!carved_before(c, func)) {
            const cudaFuncAttribute at = cudaFuncAttributePreferredSharedMemoryCarveout;
            (void)cu_check(c, cudaFuncSetAttribute(func, at, (int)cudaSharedmemCarveoutMaxShared),
                           name);
        }
    }
    if (c->pend.kind != CU_PEND_NONE || cu_deferred(c)) cu_pending_flush(c);
    if (!c->graphs_on || c->rec_broken) {
        launch_direct(c, func, grid, block, smem, args, name);
        return;
    }
    if (c->qn == c->qcap) {
        int cap = c->qcap ? 2 * c->qcap : 512;
        cu_node *q = (cu_node *)mc_realloc(c->q, (size_t)cap * sizeof *q);
        if (!q) { /* no room to queue: launch what is queued and go on directly */
            cu_break(c);
            cu_launch_raw(c, func, grid, block, smem, args, size, name);
            return;
        }
        c->q = q;
        c->qcap = cap;
    }
    n = &c->q[c->qn++];
    n->func = func;
    n->grid = grid;
    n->block = block;
    n->smem = smem;
    n->size = size;
    n->name = name;
    memcpy(n->args, args, size);
    if (size < CU_ARGS_MAX) memset(n->args + size, 0, CU_ARGS_MAX - size);
    const int seg = c->aq_count ? CU_SEG_AHEAD : c->seg_split ? c->seg_max : c->seg_first;
    if (c->qn >= seg && c->pend.kind == CU_PEND_NONE) {
        cu_end_segment(c);
        c->seg_split = true;
    }
}

void cu_break(mc_cuda *c) {
    int i;
    cu_pending_flush(c);
    for (i = 0; i < c->qn; i++) launch_node(c, &c->q[i]);
    c->qn = 0;
    if (c->graphs_on) c->rec_broken = true;
}

static bool same_shape(const cu_node *a, const cu_node *b) {
    return a->func == b->func && a->grid.x == b->grid.x && a->grid.y == b->grid.y &&
           a->grid.z == b->grid.z && a->block.x == b->block.x && a->block.y == b->block.y &&
           a->block.z == b->block.z && a->smem == b->smem && a->size == b->size;
}

static bool same_sequence(const cu_node *a, int na, const cu_node *b, int nb) {
    int i;
    if (na != nb) return false;
    for (i = 0; i < na; i++)
        if (!same_shape(&a[i], &b[i])) return false;
    return true;
}

static void graph_drop(cu_graph *g) {
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->graph) (void)cudaGraphDestroy(g->graph);
    mc_free(g->gnodes);
    mc_free(g->nodes);
    memset(g, 0, sizeof *g);
}

static cudaKernelNodeParams node_params(const cu_node *n, void **params) {
    cudaKernelNodeParams p = {};
    params[0] = (void *)n->args;
    p.func = (void *)n->func;
    p.gridDim = n->grid;
    p.blockDim = n->block;
    p.sharedMemBytes = n->smem;
    p.kernelParams = params;
    p.extra = NULL;
    return p;
}

/* Builds and instantiates into g a graph of the queued launches: a chain whose edges are
 * programmatic (PDL) when pdl is set; false on failure. */
static bool graph_build_edges(mc_cuda *c, cu_graph *g, bool pdl) {
    cudaGraphEdgeData *edges = NULL;
    int i;
    graph_drop(g);
    g->gnodes = (cudaGraphNode_t *)mc_calloc((size_t)c->qn, sizeof *g->gnodes);
    g->nodes = (cu_node *)mc_malloc((size_t)c->qn * sizeof *g->nodes);
    edges = (cudaGraphEdgeData *)mc_calloc((size_t)c->qn, sizeof *edges);
    if (!g->gnodes || !g->nodes || !edges || cudaGraphCreate(&g->graph, 0) != cudaSuccess) goto fail;
    for (i = 0; i < c->qn; i++) {
        void *params[1];
        cudaKernelNodeParams p = node_params(&c->q[i], params);
        if (cudaGraphAddKernelNode(&g->gnodes[i], g->graph, NULL, 0, &p) != cudaSuccess) goto fail;
        if (pdl) {
            edges[i].from_port = cudaGraphKernelNodePortProgrammatic;
            edges[i].type = cudaGraphDependencyTypeProgrammatic;
        }
    }
    if (c->qn > 1 && cudaGraphAddDependencies(g->graph, g->gnodes, g->gnodes + 1, edges,
                                              (size_t)c->qn - 1) != cudaSuccess)
        goto fail;
    if (cudaGraphInstantiate(&g->exec, g->graph, 0) != cudaSuccess) goto fail;
    mc_free(edges);
    memcpy(g->nodes, c->q, (size_t)c->qn * sizeof *c->q);
    g->n = c->qn;
    c->n_graph_build++;
    return true;
fail:
    (void)cudaGetLastError();
    mc_free(edges);
    graph_drop(g);
    return false;
}

static bool graph_build(mc_cuda *c, cu_graph *g) {
    if (c->pdl_on && graph_build_edges(c, g, true)) return true;
    return graph_build_edges(c, g, false);
}

/* Puts the queued launches' arguments into the cached graph g; false on failure. */
static bool graph_update(mc_cuda *c, cu_graph *g) {
    const double t0 = mc_time_now();
    bool ok = true;
    for (int i = 0; ok && i < c->qn; i++) {
        if (memcmp(g->nodes[i].args, c->q[i].args, c->q[i].size) == 0) continue;
        void *params[1];
        cudaKernelNodeParams p = node_params(&c->q[i], params);
        c->n_node_update++;
        ok = cudaGraphExecKernelNodeSetParams(g->exec, g->gnodes[i], &p) == cudaSuccess;
        if (ok) memcpy(g->nodes[i].args, c->q[i].args, CU_ARGS_MAX);
        else (void)cudaGetLastError();
    }
    c->update_s += mc_time_now() - t0;
    return ok;
}

/* The cached graph of the queued sequence, or NULL. */
static cu_graph *graph_find(mc_cuda *c) {
    for (int i = 0; i < CU_NGRAPH; i++)
        if (c->g[i].exec && same_sequence(c->q, c->qn, c->g[i].nodes, c->g[i].n)) return &c->g[i];
    return NULL;
}

/* True when the queued sequence is one of the recent segments. */
static bool seen_recently(const mc_cuda *c) {
    for (int i = 0; i < CU_NGRAPH; i++)
        if (same_sequence(c->q, c->qn, c->recent[i].nodes, c->recent[i].n)) return true;
    return false;
}

/* The least recently launched graph slot (an empty one first), emptied. */
static cu_graph *graph_slot(mc_cuda *c) {
    cu_graph *v = &c->g[0];
    for (int i = 0; i < CU_NGRAPH; i++) {
        if (!c->g[i].exec) {
            v = &c->g[i];
            break;
        }
        if (c->g[i].used < v->used) v = &c->g[i];
    }
    graph_drop(v);
    return v;
}

/* Remembers the queued sequence in the ring of recent segments. */
static void remember(mc_cuda *c) {
    cu_seq *r = &c->recent[c->recent_next];
    c->recent_next = (c->recent_next + 1) % CU_NGRAPH;
    if (r->cap < c->qn) {
        cu_node *p = (cu_node *)mc_realloc(r->nodes, (size_t)c->qn * sizeof *p);
        if (!p) {
            r->n = 0;
            return;
        }
        r->nodes = p;
        r->cap = c->qn;
    }
    memcpy(r->nodes, c->q, (size_t)c->qn * sizeof *c->q);
    r->n = c->qn;
}

/* MC_CUDA_IDLE=1: marks the first work queued after a synchronisation. */
static void idle_mark(mc_cuda *c) {
    if (!c->idle_on || !c->idle_have_end || c->idle_have_start) return;
    c->idle_have_start = cudaEventRecord(c->idle_start, c->stream) == cudaSuccess;
}

void cu_end_segment(mc_cuda *c) {
    cu_pending_flush(c);
    if (c->qn > 0) {
        idle_mark(c);
        cu_graph *g = graph_find(c);
        bool done = false;
        if (g && !graph_update(c, g)) {
            graph_drop(g);
            g = NULL;
        }
        if (!g && seen_recently(c)) {
            g = graph_slot(c);
            if (!graph_build(c, g)) g = NULL;
        }
        if (g) {
            const double t0 = mc_time_now();
            done = cu_check(c, cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch");
            c->glaunch_s += mc_time_now() - t0;
            g->used = ++c->g_clock;
            c->n_graph_launch++;
        }
        if (!done) {
            for (int i = 0; i < c->qn; i++) launch_node(c, &c->q[i]);
            remember(c);
        }
    }
    c->qn = 0;
    c->rec_broken = false;
    c->seg_split = false;
}

/* ---- the memory entries of the ops table ---- */

static void *cuda_alloc(mc_backend *be, size_t bytes) {
    return cu_malloc(cu_ctx(be), bytes, NULL);
}

static void cuda_free(mc_backend *be, void *p) { cu_free(cu_ctx(be), p); }

static mc_status cuda_to_device(mc_backend *be, void *dst, const void *host_src, size_t bytes) {
    mc_cuda *c = cu_ctx(be);
    cu_end_segment(c);
    if (!bytes) return cu_take_error(c);
    cu_note_write(c, dst, bytes);
    idle_mark(c);
    (void)cu_check(c, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream),
                   "copy to the device");
    return cu_take_error(c);
}

/* Copies to the host of up to this many bytes (a decode step's logits) go through a
 * page-locked staging buffer: a DMA into it and a host memcpy out of it cost less than
 * the driver's staged copy into pageable memory. */
enum { CU_PINNED_MAX = 16u << 20 };

/* Waits for the stream, adding the time the host spent blocked to sync_wait_s (and, with
 * MC_CUDA_IDLE=1, the device's idle time since the previous synchronisation to idle_s). */
static bool cu_sync_stream(mc_cuda *c) {
    const double t0 = mc_time_now();
    const bool mark = c->idle_on && cudaEventRecord(c->idle_cur, c->stream) == cudaSuccess;
    const bool ok = cu_check(c, cudaStreamSynchronize(c->stream), "a queued kernel");
    c->sync_wait_s += mc_time_now() - t0;
    c->n_sync++;
    if (mark) {
        float ms = 0;
        if (c->idle_have_start && cudaEventElapsedTime(&ms, c->idle_end, c->idle_start) ==
                                      cudaSuccess) {
            c->idle_s += 1e-3 * ms;
            c->n_idle++;
        }
        std::swap(c->idle_end, c->idle_cur);
        c->idle_have_end = true;
        c->idle_have_start = false;
    }
    return ok;
}

static void *pinned_for(mc_cuda *c, size_t bytes) {
    if (bytes > CU_PINNED_MAX) return NULL;
    if (c->pinned_cap < bytes) {
        size_t cap = bytes < (1u << 20) ? (1u << 20) : bytes;
        void *p = NULL;
        if (c->pinned) (void)cudaFreeHost(c->pinned);
        c->pinned = NULL;
        c->pinned_cap = 0;
        if (cudaMallocHost(&p, cap) != cudaSuccess) {
            (void)cudaGetLastError();
            return NULL; /* an optimisation: the copy goes direct */
        }
        c->pinned = p;
        c->pinned_cap = cap;
    }
    return c->pinned;
}

/* True when host memory p is page-locked (alloc_host's, or registered by the caller): the
 * copy engine writes it directly. */
static bool host_pinned(const void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return at.type == cudaMemoryTypeHost;
}

static void *cuda_alloc_host(mc_backend *be, size_t bytes) {
    void *p = NULL;
    (void)be;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        mc_log(MC_LOG_WARN, "cuda: cannot allocate %zu bytes of page-locked host memory", bytes);
        return NULL;
    }
    return p;
}

static void cuda_free_host(mc_backend *be, void *p) {
    cu_end_segment(cu_ctx(be)); /* a queued copy may still write p */
    (void)cudaStreamSynchronize(cu_ctx(be)->stream);
    if (p) (void)cudaFreeHost(p);
}

static mc_status cuda_to_host(mc_backend *be, void *host_dst, const void *src, size_t bytes) {
    mc_cuda *c = cu_ctx(be);
    cu_unpack(c, src, bytes);
    cu_end_segment(c);
    if (bytes) {
        void *stage = host_pinned(host_dst) ? NULL : pinned_for(c, bytes);
        if (cu_check(c, cudaMemcpyAsync(stage ? stage : host_dst, src, bytes,
                                        cudaMemcpyDeviceToHost, c->stream),
                     "copy to the host") &&
            cu_sync_stream(c) && stage)
            memcpy(host_dst, stage, bytes);
    } else {
        (void)cu_sync_stream(c);
    }
    if (c->err == MC_OK) sync_done(c);
    return cu_take_error(c);
}

static mc_status cuda_to_host_f32(mc_backend *be, float *host_dst, const void *src, size_t n) {
    return cuda_to_host(be, host_dst, src, n * sizeof(float));
}

static mc_status cuda_copy(mc_backend *be, void *dst, const void *src, size_t bytes) {
    mc_cuda *c = cu_ctx(be);
    if (!bytes) return MC_OK;
    cu_unpack(c, src, bytes);
    cu_note_write(c, dst, bytes);
    if (cu_aligned16(dst) && cu_aligned16(src) && bytes % 16 == 0) {
        const size_t nf = bytes / sizeof(float);
        if (c->fuse_on && !cu_f32_overlap((const float *)dst, nf, (const float *)src, nf)) {
            /* an add into dst may follow */
            cu_pending_flush(c);
            c->pend.kind = CU_PEND_COPY;
            c->pend.y = (float *)dst;
            c->pend.x = (const float *)src;
            c->pend.n = nf;
            return MC_OK;
        }
        cu_copy_kernel(c, dst, src, bytes); /* a kernel, so decode steps stay one graph */
    } else {
        cu_break(c);
        (void)cu_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream),
                       "device copy");
    }
    return MC_OK;
}

static mc_status cuda_weights(mc_backend *be, const void *host, size_t bytes, const void **dev) {
    mc_cuda *c = cu_ctx(be);
    void *p;
    cu_end_segment(c);
    *dev = NULL;
    p = cu_malloc(c, bytes, NULL);
    if (!p) {
        size_t fr = 0, tot = 0;
        (void)cudaMemGetInfo(&fr, &tot);
        return mc_fail(MC_ERR_OOM, "cuda device %d: out of device memory uploading a weight of "
                       "%zu bytes (%llu bytes held, %zu of %zu free)", c->device, bytes,
                       (unsigned long long)c->bytes_now, fr, tot);
    }
    if (!cu_check(c, cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "weight upload")) {
        cu_free(c, p);
        return cu_take_error(c);
    }
    c->allocs[reg_lower(c, (uintptr_t)p)].frozen = true; /* the record cu_malloc added */
    c->frozen_bytes += bytes;
    *dev = p;
    return MC_OK;
}

static void cuda_release_weights(mc_backend *be, const void *dev) {
    cu_free(cu_ctx(be), (void *)dev);
}

static mc_status cuda_sync(mc_backend *be) {
    mc_cuda *c = cu_ctx(be);
    cu_end_segment(c);
    (void)cu_sync_stream(c);
    if (c->err == MC_OK) sync_done(c);
    return cu_take_error(c);
}

static void cuda_destroy(mc_backend *be) {
    mc_cuda *c;
    int i;
    if (!be) return;
    c = cu_ctx(be);
    if (c) {
        cu_end_segment(c);
        (void)cudaStreamSynchronize(c->stream);
        for (i = 0; i < CU_NGRAPH; i++) {
            graph_drop(&c->g[i]);
            mc_free(c->recent[i].nodes);
        }
        for (i = 0; i < CU_S_COUNT; i++)
            if (c->scratch[i]) cu_free(c, c->scratch[i]);
        for (i = 0; i < CU_N_SHADOW_ALL; i++)
            if (c->shadow[i].buf) cu_free(c, c->shadow[i].buf);
        for (i = 0; i < c->n_bias; i++) cu_free(c, c->bias_tab[i].f32);
        c->n_bias = 0;
        cu_aug_drop(c, NULL, 0);
        for (i = 0; i < CU_N_LSE; i++)
            if (c->lse[i].lse) cu_free(c, c->lse[i].lse);
        if (c->gemv_cnt) cu_free(c, c->gemv_cnt);
        if (c->am_keys) cu_free(c, c->am_keys);
        cu_ahead_destroy(c);
        cu_lt_destroy(c);
        if (c->idle_on) {
            (void)cudaEventDestroy(c->idle_end);
            (void)cudaEventDestroy(c->idle_start);
            (void)cudaEventDestroy(c->idle_cur);
        }
        if (c->pinned) (void)cudaFreeHost(c->pinned);
        if (c->n_allocs)
            mc_log(MC_LOG_WARN, "cuda: %zu device buffers (%llu bytes) still allocated at destroy",
                   c->n_allocs, (unsigned long long)c->bytes_now);
        for (size_t k = 0; k < c->n_allocs; k++) (void)cudaFree((void *)c->allocs[k].p);
        if (c->pev) {
            for (int k = 0; k < c->pcap; k++) {
                if (c->pev[k].a) (void)cudaEventDestroy(c->pev[k].a);
                if (c->pev[k].b) (void)cudaEventDestroy(c->pev[k].b);
            }
        }
        mc_free(c->pev);
        mc_free(c->prow);
        if (c->blas) (void)cublasDestroy(c->blas);
        if (c->stream) (void)cudaStreamDestroy(c->stream);
        mc_free(c->allocs);
        mc_free(c->wr);
        mc_free(c->q);
        mc_free(c);
    }
    mc_free(be);
}

/* ---- creation ---- */

static void fill_table(mc_backend *be) {
    be->name = "cuda";
    be->async = true;
    be->act_dtype = MC_F32;
    be->n_threads = 1;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->alloc_host = cuda_alloc_host;
    be->free_host = cuda_free_host;
    be->to_device = cuda_to_device;
    be->to_host = cuda_to_host;
    be->copy = cuda_copy;
    be->weights = cuda_weights;
    be->release_weights = cuda_release_weights;
    be->sync = cuda_sync;
    be->destroy = cuda_destroy;
    be->embedding = cu_embedding;
    be->rmsnorm = cu_rmsnorm;
    be->matmul = cu_matmul;
    be->rope = cu_rope;
    be->attention = cu_attention;
    be->swiglu = cu_swiglu;
    be->add = cu_add;
    be->to_host_f32 = cuda_to_host_f32;
    be->argmax_rows = cu_argmax_rows;
    if (cu_ctx(be)->ahead_on) {
        be->argmax_queue = cu_argmax_queue;
        be->argmax_wait = cu_argmax_wait;
    }
    be->fill_positions = cu_fill_positions;
    if (cu_ctx(be)->rows_on) be->attention_rows = cu_attention_rows;
    be->gemm_f32 = cu_gemm_f32;
    be->matmul_dx = cu_matmul_dx;
    be->rmsnorm_backward = cu_rmsnorm_backward;
    be->rope_backward = cu_rope_backward;
    be->attention_backward = cu_attention_backward;
    be->swiglu_backward = cu_swiglu_backward;
    be->linear_xent = cu_linear_xent;
    be->dropout = cu_dropout;
    be->adamw = cu_adamw;
    be->sumsq_f32 = cu_sumsq_f32;
    be->scale_f32 = cu_scale_f32;
    be->zero = cu_zero;
}

extern "C" mc_status mc_backend_cuda_create(int device, mc_backend **out) {
    mc_backend *be = NULL;
    mc_cuda *c = NULL;
    int count = 0;
    cudaError_t e;
    const char *env;
    *out = NULL;
    e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return mc_fail(MC_ERR_BACKEND, "no usable CUDA device: %s (%s)", cudaGetErrorString(e),
                       cudaGetErrorName(e));
    }
    if (count == 0) return mc_fail(MC_ERR_BACKEND, "no CUDA device found");
    if (device < 0 || device >= count)
        return mc_fail(MC_ERR_BACKEND, "CUDA device %d does not exist (%d device%s: 0..%d)", device,
                       count, count == 1 ? "" : "s", count - 1);
    be = (mc_backend *)mc_calloc(1, sizeof *be);
    c = (mc_cuda *)mc_calloc(1, sizeof *c);
    if (!be || !c) {
        mc_free(be);
        mc_free(c);
        return mc_fail(MC_ERR_OOM, "out of host memory creating the CUDA backend");
    }
    c->device = device;
    c->shadow_hint = MC_F32;
    env = getenv("MC_CUDA_GRAPHS");
    c->graphs_on = !(env && env[0] == '0');
    env = getenv("MC_CUDA_PDL");
    c->pdl_on = !(env && env[0] == '0');
    c->seg_first = CU_SEG_FIRST;
    c->seg_max = CU_SEG_MAX;
    env = getenv("MC_CUDA_SEG"); /* "first,max": the segments' lengths in launches */
    if (env) {
        int f = 0, mx = 0;
        if (sscanf(env, "%d,%d", &f, &mx) == 2 && f >= 1 && mx >= 1) {
            c->seg_first = f;
            c->seg_max = mx;
        }
    }
    env = getenv("MC_CUDA_FUSE");
    c->fuse_on = !(env && env[0] == '0');
    env = getenv("MC_CUDA_NOFUSE"); /* e.g. "rope,glu": those fusions off */
    c->fuse_rope = c->fuse_on && !(env && strstr(env, "rope"));
    c->fuse_glu = c->fuse_on && !(env && strstr(env, "glu"));
    c->lsw_fwd = c->fuse_on && !(env && strstr(env, "lswf"));
    c->lsw_bwd = c->fuse_on && !(env && strstr(env, "lswb"));
    c->kcat_on = c->fuse_on && !(env && strstr(env, "kcat"));
    c->qkvupd_on = c->fuse_on && !(env && strstr(env, "qkvupd"));
    c->dsum4_on = !(env && strstr(env, "dsum4"));
    c->kkeep_on = !(env && strstr(env, "kkeep"));
    c->dual_on = c->fuse_on && !(env && strstr(env, "dual"));
    c->ga_on = c->fuse_on && !(env && strstr(env, "agrad"));
    c->xq_on = !(env && strstr(env, "xq"));
    c->bias_epi = !(env && strstr(env, "biasepi"));
    c->pack_on = !(env && strstr(env, "pack"));
    c->lse_on = c->fuse_on && !(env && strstr(env, "lse"));
    c->kv16_on = c->fuse_on && !(env && strstr(env, "kv16"));
    c->attb_on = c->fuse_on && !(env && strstr(env, "attb"));
    c->smem_on = !(env && strstr(env, "smem"));
    c->fuse_am = c->fuse_on && !(env && strstr(env, "argmax"));
    c->ahead_on = !(env && strstr(env, "ahead"));
    c->rows_on = !(env && strstr(env, "attrows"));
    env = getenv("MC_CUDA_GEMM"); /* "default": cublasGemmEx's own algorithms */
    c->lt_on = !(env && strcmp(env, "default") == 0);
    env = getenv("MC_CUDA_XENT");
    c->xent16 = !(env && strcmp(env, "f32") == 0);
    env = getenv("MC_CUDA_LORA");
    c->lora_lt = !(env && strcmp(env, "f32") == 0);
    c->lora16 = c->lora_lt && !(env && strcmp(env, "tf32") == 0);
    env = getenv("MC_CUDA_DECODE_ATT"); /* "row": the older one-block-per-split decode attention */
    c->dec_cluster = !(env && strcmp(env, "row") == 0);
    c->kv_pre_on = !getenv("MC_CUDA_NOKVPRE"); /* for comparisons */
    env = getenv("MC_CUDA_IDLE");
    c->idle_on = env && env[0] == '1';
    env = getenv("MC_CUDA_PROFILE");
    if (env && env[0] == '1') { /* per-kernel timing: direct, serialised launches */
        c->prof_on = true;
        c->graphs_on = false;
        c->pdl_on = false;
    }
    be->impl = c;
    fill_table(be);
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&c->prop, device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        (void)cudaGetLastError();
        cuda_destroy(be);
        return mc_fail(e == cudaErrorMemoryAllocation ? MC_ERR_OOM : MC_ERR_BACKEND,
                       "CUDA device %d: %s (%s)", device, cudaGetErrorString(e),
                       cudaGetErrorName(e));
    }
    if (c->prop.major < 8) {
        int major = c->prop.major, minor = c->prop.minor;
        cuda_destroy(be);
        return mc_fail(MC_ERR_BACKEND, "CUDA device %d has compute capability %d.%d; this build "
                       "needs 9.0 (Hopper)", device, major, minor);
    }
    c->n_sm = c->prop.multiProcessorCount;
    c->wr = (cu_wr_range *)mc_calloc(CU_WR_MAX, sizeof *c->wr);
    c->wr_full = true; /* until the first synchronisation */
    c->wr_epoch = 1;
    snprintf(c->name, sizeof c->name, "%s", c->prop.name);
    {
        cublasStatus_t st = cublasCreate(&c->blas);
        if (st != CUBLAS_STATUS_SUCCESS) {
            c->blas = NULL;
            cuda_destroy(be);
            return mc_fail(st == CUBLAS_STATUS_ALLOC_FAILED ? MC_ERR_OOM : MC_ERR_BACKEND,
                           "CUDA device %d: cuBLAS initialisation failed (status %d)", device,
                           (int)st);
        }
        (void)cublasSetStream(c->blas, c->stream);
    }
    if (c->idle_on && (cudaEventCreate(&c->idle_end) != cudaSuccess ||
                       cudaEventCreate(&c->idle_start) != cudaSuccess ||
                       cudaEventCreate(&c->idle_cur) != cudaSuccess)) {
        (void)cudaGetLastError();
        c->idle_on = false;
    }
    cu_attention_init(c);
    cu_matmul_init(c);
    cu_xent_init(c);
    cu_dual_init(c);
    c->gemv_cnt = (int *)cu_malloc(c, sizeof(int), "setup");
    if (c->gemv_cnt) (void)cu_check(c, cudaMemset(c->gemv_cnt, 0, sizeof(int)), "setup");
    c->am_keys = (unsigned long long *)cu_malloc(c, 2 * CU_AM_SLOT * sizeof *c->am_keys, "setup");
    if (c->am_keys)
        (void)cu_check(c, cudaMemset(c->am_keys, 0, 2 * CU_AM_SLOT * sizeof *c->am_keys), "setup");
    if (be->argmax_queue && !cu_ahead_init(c)) { /* an optimisation: without it, argmax_rows */
        be->argmax_queue = NULL;
        be->argmax_wait = NULL;
    }
    if (c->err != MC_OK) {
        mc_status s = cu_take_error(c);
        cuda_destroy(be);
        return s;
    }
    mc_log(MC_LOG_INFO, "cuda: device %d, %s, %d SMs, %.1f GiB%s%s%s", device, c->name, c->n_sm,
           (double)c->prop.totalGlobalMem / 1073741824.0, c->graphs_on ? "" : ", graphs off",
           c->pdl_on ? "" : ", PDL off", c->fuse_on ? "" : ", fusion off");
    *out = be;
    return MC_OK;
}

/* ---- facts for tools and benchmarks ---- */

extern "C" bool mc_backend_is_cuda(const mc_backend *be) {
    return be && be->destroy == cuda_destroy;
}

extern "C" void mc_cuda_memory(const mc_backend *be, uint64_t *now, uint64_t *peak) {
    const mc_cuda *c = cu_ctx_c(be);
    if (now) *now = c->bytes_now;
    if (peak) *peak = c->bytes_peak;
}

extern "C" void mc_cuda_memory_reset_peak(mc_backend *be) {
    mc_cuda *c = cu_ctx(be);
    c->bytes_peak = c->bytes_now;
}

extern "C" const char *mc_cuda_device_name(const mc_backend *be) { return cu_ctx_c(be)->name; }

extern "C" void mc_cuda_device_info(const mc_backend *be, int *n_sm, uint64_t *total_mem) {
    const mc_cuda *c = cu_ctx_c(be);
    if (n_sm) *n_sm = c->n_sm;
    if (total_mem) *total_mem = (uint64_t)c->prop.totalGlobalMem;
}

extern "C" double mc_cuda_copy_bandwidth(mc_backend *be, size_t bytes, int rounds) {
    mc_cuda *c = cu_ctx(be);
    void *a, *b;
    cudaEvent_t e0, e1;
    float best = 1e30f;
    int r;
    cu_end_segment(c);
    a = cu_malloc(c, bytes, NULL);
    b = cu_malloc(c, bytes, NULL);
    if (!a || !b || cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        cu_free(c, a);
        cu_free(c, b);
        return 0;
    }
    (void)cudaMemsetAsync(a, 1, bytes, c->stream);
    (void)cudaMemsetAsync(b, 2, bytes, c->stream);
    for (r = 0; r < rounds + 1; r++) {
        float ms = 0;
        (void)cudaEventRecord(e0, c->stream);
        (void)cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, c->stream);
        (void)cudaEventRecord(e1, c->stream);
        (void)cudaEventSynchronize(e1);
        (void)cudaEventElapsedTime(&ms, e0, e1);
        if (r > 0 && ms < best) best = ms; /* round 0 warms up */
    }
    (void)cudaEventDestroy(e0);
    (void)cudaEventDestroy(e1);
    cu_free(c, a);
    cu_free(c, b);
    if (cu_take_error(c) != MC_OK) return 0;
    return 2.0 * (double)bytes / ((double)best * 1e-3);
}

/* Fills n bf16 values with a hash of their index (uniform in [-1, 1)). */
static __global__ void bench_fill_kernel(__nv_bfloat16 *p, size_t n, uint32_t seed) {
    cu_dep_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16((float)(h & 0xffffu) / 32768.0f - 1.0f);
    }
}

extern "C" double mc_cuda_gemm_rate(mc_backend *be, int M, int N, int K, int rounds) {
    mc_cuda *c = cu_ctx(be);
    size_t na = (size_t)M * (size_t)K, nb = (size_t)N * (size_t)K, nc = (size_t)M * (size_t)N;
    __nv_bfloat16 *a, *b;
    float *d;
    cudaEvent_t e0, e1;
    float best = 1e30f, one = 1.0f, zero = 0.0f;
    int r;
    cu_end_segment(c);
    a = (__nv_bfloat16 *)cu_malloc(c, na * 2, NULL);
    b = (__nv_bfloat16 *)cu_malloc(c, nb * 2, NULL);
    d = (float *)cu_malloc(c, nc * 4, NULL);
    if (!a || !b || !d || cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        cu_free(c, a);
        cu_free(c, b);
        cu_free(c, d);
        return 0;
    }
    bench_fill_kernel<<<1024, 256, 0, c->stream>>>(a, na, 1u);
    bench_fill_kernel<<<1024, 256, 0, c->stream>>>(b, nb, 2u);
    (void)cu_check(c, cudaGetLastError(), "gemm rate fill");
    for (r = 0; r < rounds + 1; r++) {
        float ms = 0;
        (void)cudaEventRecord(e0, c->stream);
        (void)cu_check_blas(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, b,
                                            CUDA_R_16BF, K, a, CUDA_R_16BF, K, &zero, d,
                                            CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                            "gemm rate");
        (void)cudaEventRecord(e1, c->stream);
        (void)cudaEventSynchronize(e1);
        (void)cudaEventElapsedTime(&ms, e0, e1);
        if (r > 0 && ms < best) best = ms;
    }
    (void)cudaEventDestroy(e0);
    (void)cudaEventDestroy(e1);
    cu_free(c, a);
    cu_free(c, b);
    cu_free(c, d);
    if (cu_take_error(c) != MC_OK) return 0;
    return 2.0 * (double)M * (double)N * (double)K / ((double)best * 1e-3);
}

extern "C" void mc_cuda_stats(const mc_backend *be, long *graph_launches, long *graph_builds,
                              long *kernel_launches) {
    const mc_cuda *c = cu_ctx_c(be);
    if (graph_launches) *graph_launches = c->n_graph_launch;
    if (graph_builds) *graph_builds = c->n_graph_build;
    if (kernel_launches) *kernel_launches = c->n_launch;
}

extern "C" double mc_cuda_sync_wait(const mc_backend *be) { return cu_ctx_c(be)->sync_wait_s; }

extern "C" void mc_cuda_host_stats(const mc_backend *be, double *update_s, long *node_updates,
                                   double *graph_launch_s) {
    const mc_cuda *c = cu_ctx_c(be);
    if (update_s) *update_s = c->update_s;
    if (node_updates) *node_updates = c->n_node_update;
    if (graph_launch_s) *graph_launch_s = c->glaunch_s;
}

extern "C" double mc_cuda_device_idle(const mc_backend *be, long *samples) {
    const mc_cuda *c = cu_ctx_c(be);
    if (samples) *samples = c->n_idle;
    return c->idle_s;
}

extern "C" long mc_cuda_attention_reuse(const mc_backend *be) { return cu_ctx_c(be)->n_lse_hit; }

extern "C" long mc_cuda_kcat_stats(const mc_backend *be) { return cu_ctx_c(be)->n_kcat; }

extern "C" long mc_cuda_dual_stats(const mc_backend *be) { return cu_ctx_c(be)->n_dual; }
extern "C" long mc_cuda_ga_stats(const mc_backend *be) { return cu_ctx_c(be)->n_ga; }

extern "C" long mc_cuda_lrope_stats(const mc_backend *be) { return cu_ctx_c(be)->n_lrope; }

extern "C" long mc_cuda_packed_stats(const mc_backend *be, int *live) {
    const mc_cuda *c = cu_ctx_c(be);
    if (live) *live = c->n_packed;
    return c->n_unpack;
}

static int prof_cmp(const void *x, const void *y) {
    const cu_prof_row *a = (const cu_prof_row *)x, *b = (const cu_prof_row *)y;
    return a->ms < b->ms ? 1 : a->ms > b->ms ? -1 : 0;
}

extern "C" size_t mc_cuda_profile_report(mc_backend *be, char *buf, size_t cap, bool reset) {
    mc_cuda *c = cu_ctx(be);
    size_t off = 0;
    double total = 0;
    int i;
    if (cap) buf[0] = '\0';
    if (!c->prof_on) return 0;
    cu_end_segment(c);
    prof_flush(c);
    qsort(c->prow, (size_t)c->nrow, sizeof *c->prow, prof_cmp);
    for (i = 0; i < c->nrow; i++) total += c->prow[i].ms;
    for (i = 0; i < c->nrow && off < cap; i++) {
        int k = snprintf(buf + off, cap - off, "  %-24s %8ld calls %10.3f ms %5.1f%% %9.2f us/call\n",
                         c->prow[i].name, c->prow[i].calls, c->prow[i].ms,
                         total > 0 ? 100.0 * c->prow[i].ms / total : 0.0,
                         1e3 * c->prow[i].ms / (double)c->prow[i].calls);
        if (k < 0) break;
        off += (size_t)k;
    }
    if (off < cap) {
        int k = snprintf(buf + off, cap - off, "  %-24s %10.3f ms of device time\n", "total", total);
        if (k > 0) off += (size_t)k;
    }
    if (reset) c->nrow = 0;
    return off < cap ? off : cap;
}
