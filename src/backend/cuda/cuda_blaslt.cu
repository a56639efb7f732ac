/* cuda_blaslt.cu - the GEMMs of the frozen weights, and the LoRA products of training-sized
 * batches (f32 operands, TF32 on the tensor cores), through cuBLASLt, each shape with the
 * fastest of the library's first heuristic algorithms.
 *
 * cublasGemmEx picks one algorithm per shape by heuristics alone; on this model's training
 * shapes that choice is up to 20% slower than the best of cuBLASLt's candidates
 * (bench_gemm_floor prints both). Choosing costs tens of milliseconds the first time
 * (each candidate's kernels load on their first launch), which pays only for shapes that
 * come back pass after pass, as a training step's do; a one-off prefill of a new length
 * must not pay it (its 24 layers call each shape 24 times in one pass). So a shape goes to
 * cublasGemmEx until it comes back after a stream synchronisation (the end of a pass: the
 * logits or the loss read back); then cuBLASLt gives up to CU_LT_TRIES algorithms that fit
 * the workspace, each is timed (two calls, after one to warm up) on the backend's stream and
 * the fastest serves every later call. A shape whose candidates all fail, and a new shape
 * once the table holds only chosen ones, goes to cublasGemmEx. Every algorithm is
 * deterministic for a given device and library, so a shape's results do not change once
 * chosen; which algorithm wins may differ between processes when two run equally fast
 * (MC_CUDA_GEMM=default: cublasGemmEx only). */
#include <string.h>

#include "cuda_internal.h"

enum { CU_LT_TRIES = 8 };
static const size_t CU_LT_WORKSPACE = (size_t)32 << 20;

/* Whether entry e is for shape s at these alignments: everything its descriptors and
 * algorithm depend on. */
static bool lt_same(const cu_lt_ent &e, const cu_lt_shape &s, const unsigned (&align)[3]) {
    const cu_lt_shape &a = e.s;
    return a.ta == s.ta && a.tb == s.tb && a.m == s.m && a.n == s.n && a.k == s.k &&
           a.lda == s.lda && a.ldb == s.ldb && a.ldc == s.ldc && a.ab == s.ab &&
           a.tf32 == s.tf32 && a.c16 == s.c16 && a.bias == s.bias &&
           a.accumulate == s.accumulate && e.align[0] == align[0] && e.align[1] == align[1] &&
           e.align[2] == align[2];
}

/* The largest power of two up to 256 that divides p's address. */
static unsigned align_of(const void *p) {
    const uintptr_t u = (uintptr_t)p | 256u;
    return (unsigned)(u & (~u + 1u));
}

/* Frees e's descriptors (its key and state stay). */
static void lt_release(cu_lt_ent *e) {
    if (e->la) (void)cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) (void)cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) (void)cublasLtMatrixLayoutDestroy(e->lc);
    if (e->desc) (void)cublasLtMatmulDescDestroy(e->desc);
    e->la = e->lb = e->lc = NULL;
    e->desc = NULL;
}

void cu_lt_destroy(mc_cuda *c) {
    for (int i = 0; i < c->n_lt; i++) lt_release(&c->lt_ent[i]);
    c->n_lt = 0;
    if (c->lt_ws) cu_free(c, c->lt_ws);
    c->lt_ws = NULL;
    if (c->lt) (void)cublasLtDestroy(c->lt);
    c->lt = NULL;
}

/* s.tf32: f32 operands multiply in TF32 on the tensor cores (f32 accumulation). */
static cublasComputeType_t lt_compute(const cu_lt_shape &s) {
    return s.tf32 && s.ab == CUDA_R_32F ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* The type of C and D. */
static cudaDataType_t lt_ctype(const cu_lt_shape &s) { return s.c16 ? CUDA_R_16BF : CUDA_R_32F; }

/* Descriptors of e's shape; false on failure. */
static bool lt_describe(cu_lt_ent *e) {
    const cu_lt_shape &s = e->s;
    const cublasOperation_t ta = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cublasLtMatmulDescCreate(&e->desc, lt_compute(s), CUDA_R_32F) !=
        CUBLAS_STATUS_SUCCESS)
        return false;
    (void)cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    (void)cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s.bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const cudaDataType_t bt = CUDA_R_32F;
        if (cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                           sizeof epi) != CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                           sizeof bt) != CUBLAS_STATUS_SUCCESS)
            return false;
    }
    /* stored shapes (before the transposes), column-major */
    return cublasLtMatrixLayoutCreate(&e->la, s.ab, (uint64_t)(s.ta ? s.k : s.m),
                                      (uint64_t)(s.ta ? s.m : s.k), s.lda) ==
               CUBLAS_STATUS_SUCCESS &&
           cublasLtMatrixLayoutCreate(&e->lb, s.ab, (uint64_t)(s.tb ? s.n : s.k),
                                      (uint64_t)(s.tb ? s.k : s.n), s.ldb) ==
               CUBLAS_STATUS_SUCCESS &&
           cublasLtMatrixLayoutCreate(&e->lc, lt_ctype(s), (uint64_t)s.m, (uint64_t)s.n,
                                      s.ldc) == CUBLAS_STATUS_SUCCESS;
}

/* Sets the bias pointer of a shape with an epilogue on its descriptor, before each use
 * (tuning included). */
static void lt_set_bias(cu_lt_ent *e, const float *bias) {
    if (e->s.bias && e->desc)
        (void)cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                             sizeof bias);
}

static bool lt_run(mc_cuda *c, const cu_lt_ent *e, const cublasLtMatmulAlgo_t *algo, float alpha,
                   float beta, const void *A, const void *B, void *C) {
    return cublasLtMatmul(c->lt, e->desc, &alpha, A, e->la, B, e->lb, &beta, C, e->lc, C, e->lc,
                          algo, c->lt_ws, CU_LT_WORKSPACE, c->stream) == CUBLAS_STATUS_SUCCESS;
}

/* Chooses e's algorithm: the fastest candidate on these operands. An accumulating shape
 * is timed into a scratch output so that C keeps its values. */
static bool lt_tune(mc_cuda *c, cu_lt_ent *e, const void *A, const void *B, void *C) {
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[CU_LT_TRIES];
    cudaEvent_t e0 = NULL, e1 = NULL;
    void *out = C;
    float best = 0.0f;
    int n = 0, won = -1;
    const size_t ws = CU_LT_WORKSPACE;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return false;
    const uint32_t al[3] = {e->align[0], e->align[1], e->align[2]};
    (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                               sizeof ws);
    /* candidates that work at these pointers' alignment (C is also D) */
    (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                               &al[0], sizeof al[0]);
    (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                               &al[1], sizeof al[1]);
    (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                               &al[2], sizeof al[2]);
    (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                               &al[2], sizeof al[2]);
    if (cublasLtMatmulAlgoGetHeuristic(c->lt, e->desc, e->la, e->lb, e->lc, e->lc, pref,
                                       CU_LT_TRIES, res, &n) != CUBLAS_STATUS_SUCCESS)
        n = 0;
    (void)cublasLtMatmulPreferenceDestroy(pref);
    if (n > 0 && e->s.accumulate)
        out = cu_malloc(c, (size_t)e->s.ldc * (size_t)e->s.n * sizeof(float), NULL);
    if (n > 0 && out && cudaEventCreate(&e0) == cudaSuccess &&
        cudaEventCreate(&e1) == cudaSuccess) {
        for (int i = 0; i < n; i++) {
            float ms = 0.0f;
            if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > ws) continue;
            if (!lt_run(c, e, &res[i].algo, 1.0f, 0.0f, A, B, out) ||
                cudaEventRecord(e0, c->stream) != cudaSuccess ||
                !lt_run(c, e, &res[i].algo, 1.0f, 0.0f, A, B, out) ||
                !lt_run(c, e, &res[i].algo, 1.0f, 0.0f, A, B, out) ||
                cudaEventRecord(e1, c->stream) != cudaSuccess ||
                cudaEventSynchronize(e1) != cudaSuccess ||
                cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
                continue;
            if (won < 0 || ms < best) {
                won = i;
                best = ms;
            }
        }
    }
    (void)cudaGetLastError(); /* a candidate that failed to run leaves nothing behind */
    if (e0) (void)cudaEventDestroy(e0);
    if (e1) (void)cudaEventDestroy(e1);
    if (out && out != C) cu_free(c, out);
    if (won < 0) return false;
    e->algo = res[won].algo;
    return true;
}

/* Notes shape s at these alignments, seen for the first time: a free entry, else the oldest
 * entry of a shape not chosen yet. */
static void lt_note(mc_cuda *c, const cu_lt_shape &s, const unsigned (&align)[3]) {
    cu_lt_ent *e = NULL;
    if (c->n_lt < CU_N_LT) {
        e = &c->lt_ent[c->n_lt++];
    } else {
        for (int i = 0; i < CU_N_LT && !e; i++) {
            cu_lt_ent *o = &c->lt_ent[(c->lt_next + i) % CU_N_LT];
            if (o->state == CU_LT_SEEN) {
                e = o;
                c->lt_next = (c->lt_next + i + 1) % CU_N_LT;
            }
        }
        if (!e) return; /* every entry holds a chosen algorithm: cublasGemmEx serves s */
    }
    memset(e, 0, sizeof *e);
    e->s = s;
    for (int i = 0; i < 3; i++) e->align[i] = align[i];
    e->state = CU_LT_SEEN;
    e->seen = c->n_sync;
}

/* The entry of shape s with its algorithm, chosen on the shape's first call after a
 * synchronisation that followed its first sighting; NULL when cublasGemmEx is to run this
 * call. */
static cu_lt_ent *lt_entry(mc_cuda *c, const cu_lt_shape &s, const void *A, const void *B,
                           void *C, const float *bias) {
    const unsigned align[3] = {align_of(A), align_of(B), align_of(C)};
    cu_lt_ent *e = NULL;
    if (!c->lt_on) return NULL;
    for (int i = 0; i < c->n_lt && !e; i++)
        if (lt_same(c->lt_ent[i], s, align)) e = &c->lt_ent[i];
    if (!e) {
        lt_note(c, s, align);
        return NULL;
    }
    if (e->state != CU_LT_SEEN) return e->state == CU_LT_CHOSEN ? e : NULL;
    if (e->seen == c->n_sync) return NULL; /* still the pass that first saw it */
    if (!c->lt) {
        if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
            c->lt = NULL;
            c->lt_on = false;
            return NULL;
        }
        c->lt_ws = cu_malloc(c, CU_LT_WORKSPACE, NULL);
        if (!c->lt_ws) { /* no room for the workspace: cublasGemmEx serves */
            c->lt_on = false;
            return NULL;
        }
    }
    bool tuned = lt_describe(e);
    if (tuned) {
        lt_set_bias(e, bias);
        tuned = lt_tune(c, e, A, B, C);
    }
    if (tuned) {
        e->state = CU_LT_CHOSEN;
        return e;
    }
    lt_release(e); /* kept as failed, so the shape is not tried again */
    e->state = CU_LT_FAILED;
    return NULL;
}

bool cu_gemm_lt(mc_cuda *c, const cu_lt_shape &s, float alpha, const void *A, const void *B,
                void *C, const char *what, const float *bias, bool *added) {
    const float beta = s.accumulate ? 1.0f : 0.0f;
    cu_lt_ent *e = lt_entry(c, s, A, B, C, bias);
    int ps = cu_prof_begin(c, what);
    bool ok;
    if (added) *added = e != NULL && s.bias;
    if (e) {
        lt_set_bias(e, bias);
        ok = lt_run(c, e, &e->algo, alpha, beta, A, B, C);
        if (!ok) cu_set_error(c, MC_ERR_BACKEND, "%s: cuBLASLt matmul failed", what);
    } else {
        ok = cu_check_blas(c, cublasGemmEx(c->blas, s.ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           s.tb ? CUBLAS_OP_T : CUBLAS_OP_N, s.m, s.n, s.k,
                                           &alpha, A, s.ab, s.lda, B, s.ab, s.ldb, &beta, C,
                                           lt_ctype(s), s.ldc, lt_compute(s),
                                           CUBLAS_GEMM_DEFAULT),
                           what);
    }
    cu_prof_end(c, ps);
    return ok;
}
