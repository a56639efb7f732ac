/* cuda_internal.h - internals shared by the CUDA backend's translation units (CUDA C++
 * only; C code sees cuda_backend.h): the private context, sticky errors, the launch
 * queue that replays decode steps as CUDA graphs, the bf16 shadow cache of activations,
 * scratch buffers, the op entry points of each .cu file, and small device helpers.
 *
 * Every kernel takes exactly one argument, a plain struct, so a launch can be queued as
 * (function, grid, block, shared bytes, argument bytes) and later either launched
 * directly or turned into a graph node whose arguments are updated in place. Every kernel
 * starts with cu_dep_wait() (after reading frozen weights or hinting L2, if anything), so
 * kernels can be launched as programmatic dependents of the previous one (Hopper's PDL):
 * the next kernel's blocks are scheduled while the previous kernel runs, hiding the launch
 * gap and the weight fetch of small decode kernels. */
#ifndef MC_BACKEND_CUDA_INTERNAL_H
#define MC_BACKEND_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_backend.h"

/* ---- launch queue and graph cache ---- */

enum { CU_ARGS_MAX = 256 };

/* One queued kernel launch. */
struct cu_node {
    const void *func;
    dim3 grid, block;
    unsigned smem, size;
    alignas(16) unsigned char args[CU_ARGS_MAX];
    const char *name;
};

/* A cached executable graph of a segment of launches and the arguments it holds now. */
struct cu_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaGraphNode_t *gnodes; /* [n] */
    cu_node *nodes;          /* [n] */
    int n;
    unsigned long used;      /* when it was last launched (LRU) */
};

/* A recent segment's sequence of launches: a graph is built for a sequence seen twice. */
struct cu_seq {
    cu_node *nodes;
    int n, cap;
};

/* A segment ends after CU_SEG_MAX queued launches (CU_SEG_FIRST for the first after a
 * synchronisation) when no op is held back, so the device starts on a decode step while
 * the host still queues its later layers; a step is then a few graphs, and the cache holds
 * CU_NGRAPH of them (a batch-8 step is about a dozen). */
enum { CU_SEG_FIRST = 16, CU_SEG_MAX = 64, CU_NGRAPH = 16 };
/* While a queued argmax is not waited for (a greedy step queued ahead: the host is a step
 * ahead of the device), a segment ends after CU_SEG_AHEAD launches, so a decode step is one
 * graph and the device runs from step to step without a boundary between graphs. */
enum { CU_SEG_AHEAD = 256 };

/* A bf16/f16 copy of an f32 activation range, reused by GEMMs that read the same input
 * (q/k/v read one normed input) and written by producers next to their f32 output. */
struct cu_shadow {
    const void *src; /* f32 source; NULL when unused */
    size_t n;        /* elements */
    mc_dtype dt;
    void *buf;       /* [cap bytes] device */
    size_t cap;
    bool valid;
    unsigned long stamp;
};

/* An f32 activation range held in bf16 in the first half of its own bytes ("packed"):
 * element i of [base, base + n) is the bf16 at byte 2 i of base. The wide intermediates of
 * a training-sized MLP (the gate/up GEMMs' outputs, the SwiGLU's, the input gradient of
 * the down projection and the SwiGLU backward's) are written so, moving half the bytes of
 * f32; the readers that take bf16 (cuBLAS GEMMs, the LoRA products, the SwiGLU and its
 * backward) read them in place, and any other reader, or a write of part of the range,
 * first expands it to f32 (cu_unpack, cu_note_write): the op's contract is unchanged but
 * for the bf16 rounding of those values (MC_CUDA_NOFUSE=pack: none packed). */
struct cu_packed {
    float *base;
    size_t n;
};
enum { CU_N_PACKED = 256 };

/* CU_N_SHADOW slots for activations, then CU_N_SMALL_SHADOW for the small operands of the
 * bf16 LoRA products (cu_small_as). */
enum { CU_N_SHADOW = 4, CU_N_SMALL_SHADOW = 3, CU_N_SHADOW_ALL = CU_N_SHADOW + CU_N_SMALL_SHADOW };
static const size_t CU_SMALL_WHOLE = (size_t)64 << 20;

/* Slots of the set of kernels whose shared-memory split cu_launch_raw has set (there are
 * far fewer kernels than half of them). */
enum { CU_N_CARVED = 256 };

/* The log-sum-exp rows a flash-attention forward (pos0 == 0) computed, kept so that the
 * backward of the same attention (same q, k, v and shape, none of them nor the forward's
 * output written since: cu_note_write drops the entry) need not run the forward again;
 * it then takes D = rowsum(dO * O) from the kept output. Entries go at a synchronisation
 * (to_host, sync); a training step's forward and backward sit between two of them. */
struct cu_lse_slot {
    const void *q, *k, *v, *out;
    int T, Hq, Hkv, hd;
    float *lse; /* [Hq, T] */
    size_t cap; /* floats */
    bool valid;
    unsigned long stamp;
};

enum { CU_N_LSE = 128, CU_LSE_MIN = 16384 /* floats a kept entry's buffer holds at least */ };

/* Named scratch buffers (grown on demand, freed at destroy). */
enum cu_scratch_id {
    CU_S_ATT_PART = 0, /* attention split partials */
    CU_S_ATT_CNT,      /* attention split counters (kept zero between uses) */
    CU_S_ATT_STATS,    /* attention backward: LSE and D per row and head */
    CU_S_ATT_BF16,     /* attention backward: bf16 copies of q and dout */
    CU_S_XENT_LOGITS,  /* linear_xent: [rows, V] f32 logits */
    CU_S_XENT_GRAD,    /* linear_xent: [rows, V] gradient in the weight dtype */
    CU_S_XENT_LOSS,    /* linear_xent: [T] double per-row losses */
    CU_S_REDUCE,       /* sumsq partials */
    CU_S_ROPE,         /* RoPE inverse frequencies */
    CU_S_GEMM,         /* split-K partial sums of the skinny f32 GEMMs */
    CU_S_BENCH,        /* benchmarks */
    CU_S_PACK,         /* cu_unpack: a packed range's bf16 while it expands */
    CU_S_KCAT_X,       /* cu_flush_mm: [x A^T | x | x A^T] rows in bf16 */
    CU_S_KCAT_W,       /* cu_flush_mm: [W | B] weights not kept (past the budget) */
    CU_S_COUNT
};

/* One device allocation made by this backend (for memory accounting and the check that
 * gemm_f32 operands are device memory). */
struct cu_alloc_rec {
    uintptr_t p;
    size_t bytes;
    bool frozen; /* uploaded by the weights entry: no kernel ever writes it */
};

/* A device range written by work queued since the last stream synchronisation, in epoch
 * `epoch` (the queued argmaxes of decoding a step ahead end epochs: cu_retire_writes). */
struct cu_wr_range {
    uintptr_t lo, hi;
    unsigned epoch;
};

/* The ranges kept (a decode step writes about ten per layer); past that, every range
 * counts as written until the next synchronisation. */
enum { CU_WR_MAX = 1024 };

/* ---- cuBLASLt GEMMs (cuda_blaslt.cu) ---- */

/* A GEMM's shape in cublasGemmEx's column-major terms: C [m, n] (f32, ldc) = alpha op(A)
 * op(B) (+ C when accumulate); A and B of type ab (bf16, f16 or f32), f32 accumulation. */
struct cu_lt_shape {
    bool ta, tb, accumulate;
    int m, n, k, lda, ldb, ldc;
    cudaDataType_t ab;
    bool tf32; /* f32 operands multiplied in TF32 on the tensor cores (else in f32) */
    bool c16;  /* C (and D) in bf16 instead of f32 */
    bool bias; /* D = op(A) op(B) + bias (a vector of m f32, the column-major rows) */
};

/* An f32 copy of a frozen bias vector of n values at src. */
struct cu_bias_ent {
    const void *src;
    float *f32;
    int n;
};
enum { CU_N_BIAS = 256 };

/* What the backend knows of a shape: seen, but not since a synchronisation (cublasGemmEx
 * runs it), its algorithm chosen, or no candidate worked (cublasGemmEx runs it). */
enum cu_lt_state { CU_LT_SEEN = 1, CU_LT_CHOSEN, CU_LT_FAILED };

/* A shape's descriptors and chosen algorithm. */
struct cu_lt_ent {
    cu_lt_shape s;
    unsigned align[3];  /* of A, B and C's addresses: part of the key, as the candidates need */
    int state;          /* cu_lt_state */
    unsigned long seen; /* n_sync when the shape was first seen */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

enum { CU_N_LT = 128 };

/* An op whose launch is held back so the next op can fuse with it (MC_CUDA_FUSE, on by
 * default): a residual add feeds the next RMSNorm (and a copy of its destination just
 * before it becomes the add's source: y = src + x), RoPE on q waits for RoPE on k, small
 * GEMVs reading the same input (q/k/v, gate/up) go out as one launch, RoPE on q and k is
 * applied in the q/k/v GEMV's epilogue, and SwiGLU in the gate/up GEMV's (or else inside
 * the down projection's GEMV, which stages it). Any launch, cuBLAS call or host copy first
 * launches what is pending (cu_pending_flush), unless it is the op that fuses with it. */
enum cu_pend_kind {
    CU_PEND_NONE = 0,
    CU_PEND_ADD,
    CU_PEND_ROPE,
    CU_PEND_GEMV,
    CU_PEND_SWIGLU,
    CU_PEND_COPY,
    CU_PEND_ATTFWD,
    CU_PEND_ATTBWD,
    CU_PEND_LORA,
    CU_PEND_MM,
    CU_PEND_DUAL
};

/* Flash attention forwards (position 0 on, keeping their log-sum-exp rows) or backwards
 * (with their forwards' kept rows) of consecutive segments held back (CU_PEND_ATTFWD /
 * ATTBWD) to go out as one launch (MC_CUDA_NOFUSE=attb: off): the trainer calls one per
 * segment, and one segment's causal tiles alone leave most of the card idle while its
 * longest tiles run. Every buffer of segment s starts where segment s - 1's ends. */
enum { CU_ATT_BATCH = 10 };

struct cu_att_seg {
    int r0, T;  /* first row (from the first segment's) and rows */
    float *lse; /* [Hq, T], kept by the forward */
};

struct cu_att_batch {
    float *dq, *dk, *dv, *o;        /* the first segment's (o: a forward's output) */
    const float *q, *k, *v, *dout, *out;
    int Hq, Hkv, hd, n, rows;
    cu_att_seg seg[CU_ATT_BATCH];
};

/* Up to CU_GEMV_MAX_M rows run as GEMVs (decode); a GEMV of up to CU_GEMV_MAX_ENT weights
 * on one input is one launch. */
enum { CU_GEMV_MAX_M = 8, CU_GEMV_MAX_ENT = 3 };

/* Argmax keys of a GEMV's output rows (cu_gemv_take_argmax): per row m, keys[m] is the
 * largest finite value's key (cu_am_key; 0: none above -inf) and keys[CU_GEMV_MAX_M + m]
 * the first NaN or +inf's (0: none). Two slots alternate; each GEMV clears the other. */
enum { CU_AM_SLOT = 2 * CU_GEMV_MAX_M, CU_AQ_SLOT = CU_GEMV_MAX_M };

/* One output of a (multi-)GEMV: out[m, n] = x[m, :] . W[n, :] (+ b[n]), rotated by RoPE
 * in the epilogue when rope is set (N = heads x head_dim). */
struct cu_gemv_ent {
    float *out;       /* [M, ldo] */
    const void *w;    /* [N, K] */
    const void *bias; /* [N] or NULL */
    int ldo, N, bias_dt, rope;
};

/* C [M, N] (leading dimension N) += alpha A op(B), A [M, K] (lda), op(B) [K, N]: B^T of
 * B [N, K] when tb, else B [K, N] (ldb). */
/* Rank-r updates held at once (gate and up; q, k and v). */
enum { CU_LORA_HELD = 3 };

struct cu_lora_upd {
    float *C;
    __nv_bfloat16 *C16; /* C's packed bf16 (cu_packed), or NULL: C is f32 */
    const float *A, *B;
    int lda, ldb, tb, K;
    float alpha;
    int N; /* C's columns (held updates of different widths, cu_flush_lora) */
};

/* The floats update u's A and B span for an [M, N] output. */
static inline void cu_lora_spans(const cu_lora_upd &u, int M, int N, size_t *na, size_t *nb) {
    *na = (size_t)(M - 1) * (size_t)u.lda + (size_t)u.K;
    *nb = u.tb ? (size_t)(N - 1) * (size_t)u.ldb + (size_t)u.K
               : (size_t)(u.K - 1) * (size_t)u.ldb + (size_t)N;
}

/* A GEMM of the frozen weight w [N, K] (bf16) over training-sized rows with a packed output
 * (gate, up), held (CU_PEND_MM) for the rank-r update of its output that comes next
 * (cuda_kcat.cu): u.C is NULL until one is taken. */
struct cu_mm_ent {
    float *out;
    const void *w;
    int N;
    cu_lora_upd u;
};

/* A projection's B-gradient product gB [N, ldg] += alpha_b dy^T xa over the token rows of
 * a dy [rows, ldy] that is packed or has a bf16 shadow (dy16), held for the t [rows, ldt] =
 * alpha_t dy B that reads the same dy (taken: it came); pairs of up to CU_DUAL_MAX
 * projections go out in one launch (cuda_lora_dual.cu). */
enum { CU_DUAL_MAX = 3 };

struct cu_dual_ent {
    const float *dy, *xa, *B;
    const void *dy16;
    float *gB, *t;
    int ldy, ldx, ldb, ldg, ldt, N, r;
    float alpha_b, alpha_t;
    bool taken;
};

struct cu_pending {
    int kind;
    /* add: y[0..n) = (src ? src : y)[0..n) + x[0..n); copy: y[0..n) = x[0..n) (floats) */
    float *y;
    const float *x;
    const float *src;
    size_t n;
    /* swiglu: out = silu(gate) * up over n */
    float *s_out;
    const float *gate, *up;
    /* rope (forward or backward) of one tensor */
    float *rx;
    int ldx, T, H, hd, backward;
    const int32_t *pos;
    const float *inv;
    __nv_bfloat16 *rsh;
    /* gemv: entries sharing x [M, K] and the weight dtype */
    const float *gx;
    int M, K;
    mc_dtype wdt;
    cu_gemv_ent ent[CU_GEMV_MAX_ENT];
    int nent;
    float *glu_out; /* a SwiGLU of entries 0 and 1 taken over by the GEMV, or NULL */
    /* RoPE of the entries flagged rope, taken over by the GEMV (rpos NULL: none) */
    const int32_t *rpos;
    const float *rinv;
    int rhd;
    /* the argmax keys of the rows, taken over by the GEMV (NULL: none), and the slot the
     * GEMV clears for the next one */
    unsigned long long *am, *am_clear;
    /* lora: rank-r updates C += alpha A op(B) of [lu_M, lu_N] outputs (lu_N 0: of different
     * widths, lu[i].N each), held for the SwiGLU (gate and up) or its backward (dout) that
     * reads them next, or for the RoPE of q and k (q, k and v); with kind CU_PEND_ROPE and
     * n_lu > 0, the updates that RoPE launch adds first (cuda_embed_rope.cu) */
    cu_lora_upd lu[CU_LORA_HELD];
    int n_lu, lu_M, lu_N;
    /* mm: GEMMs of one input x [mm_M, mm_K] (its bf16 view mm_xc), each with the rank-r
     * update of its output taken so far */
    cu_mm_ent mm[2];
    int n_mm, mm_M, mm_K;
    const float *mm_x;
    const void *mm_xc;
    /* dual: the pairs of up to CU_DUAL_MAX projections over du_M token rows
     * (cuda_lora_dual.cu), all but the last taken */
    cu_dual_ent du[CU_DUAL_MAX];
    int n_du, du_M;
};

/* A frozen weight W [N, K] (bf16) widened for the rank-r updates of a GEMM of kk columns
 * (cuda_kcat.cu): rows [W | B columns of slot 0 | of slot 1], this weight's s B in its
 * slot, zeros in the other; the B columns are written before each use. */
struct cu_aug_ent {
    const void *w;
    __nv_bfloat16 *buf;
    size_t bytes;
    int N, K, kk, slot;
};
enum { CU_N_AUG = 96 };

/* Profiling (MC_CUDA_PROFILE=1): a pair of events around every kernel launch and cuBLAS
 * call, summed per name. */
struct cu_prof_ev {
    cudaEvent_t a, b;
    const char *name;
};
struct cu_prof_row {
    const char *name;
    double ms;
    long calls;
};

/* Private context of a CUDA backend (be->impl). */
struct mc_cuda {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    /* cuBLASLt (MC_CUDA_GEMM=default: off): handle, workspace, the shapes seen so far */
    bool lt_on;
    bool lora_lt; /* gemm_f32 of CU_LORA_LT_ROWS+ token rows through cu_gemm_lt in TF32
                   * (MC_CUDA_LORA=f32: the f32 skinny kernels) */
    bool lora16;  /* those whose wide token operand has a bf16 shadow read it in bf16
                   * (MC_CUDA_LORA=tf32 or f32: off) */
    bool xent16; /* bf16 logits in linear_xent for bf16 weights (MC_CUDA_XENT=f32: f32) */
    bool xq_on;  /* and each row of them read once, by a cluster (MC_CUDA_NOFUSE=xq: twice) */
    cublasLtHandle_t lt;
    void *lt_ws;
    /* f32 copies of frozen bias vectors for the GEMM epilogue (cu_bias_f32; MC_CUDA_NOFUSE=
     * biasepi: none, the bias kernel after the GEMM) */
    bool bias_epi;
    cu_bias_ent bias_tab[CU_N_BIAS];
    int n_bias;
    cu_lt_ent lt_ent[CU_N_LT];
    int n_lt, lt_next; /* entries used; where the search for a seen-once entry to reuse starts */
    cudaDeviceProp prop;
    int n_sm;
    char name[256];

    /* first failure since it was last reported */
    mc_status err;
    char err_msg[512];

    /* the ranges written since the last completed stream synchronisation (cu_unwritten);
     * wr_full: more than CU_WR_MAX of them (or no list) */
    cu_wr_range *wr;
    int n_wr;
    bool wr_full;
    unsigned wr_epoch; /* the epoch of ranges noted now */

    /* allocations, sorted by address */
    cu_alloc_rec *allocs;
    size_t n_allocs, cap_allocs;
    uint64_t bytes_now, bytes_peak;

    /* scratch */
    void *scratch[CU_S_COUNT];
    size_t scratch_cap[CU_S_COUNT];
    float rope_theta;
    int rope_hd;

    /* page-locked staging of copies to the host */
    void *pinned;
    size_t pinned_cap;

    /* activation shadows */
    cu_shadow shadow[CU_N_SHADOW_ALL];
    unsigned long shadow_clock;
    cu_lse_slot lse[CU_N_LSE];
    bool lse_on; /* kept log-sum-exp rows (MC_CUDA_NOFUSE=lse: off) */
    bool kv16_on; /* flash attention reads bf16 copies of k and v (MC_CUDA_NOFUSE=kv16: off) */
    bool attb_on; /* attention of consecutive segments batched (MC_CUDA_NOFUSE=attb: off) */
    cu_att_batch attb; /* the batch pending (pend.kind CU_PEND_ATTFWD or CU_PEND_ATTBWD) */
    /* one-row GEMVs of long rows staged in shared memory, and every kernel but the
     * several-row GEMVs asking for the largest shared-memory split (MC_CUDA_NOFUSE=smem:
     * neither) */
    bool smem_on;
    bool keep_l1; /* the launch being queued keeps the default split */
    const void *carved[CU_N_CARVED]; /* kernels whose split was set (hashed; NULL: free) */
    int n_carved;
    int n_lse_valid;
    unsigned long lse_clock;
    long n_lse_hit; /* attention backwards that reused their forward's log-sum-exp */
    mc_dtype shadow_hint; /* dtype of the last GEMM weight; producers shadow in it */
    /* packed ranges (cu_packed), and how many were expanded back to f32 */
    bool pack_on;
    cu_packed packed[CU_N_PACKED];
    int n_packed;
    long n_unpack;

    /* launch queue and graphs */
    bool graphs_on;
    bool pdl_on; /* programmatic dependent launch: kernels start while their predecessor ends */
    bool rec_broken;
    cu_node *q;
    int qn, qcap;
    cu_seq recent[CU_NGRAPH]; /* the last segments launched without a graph (a ring) */
    int recent_next;
    bool seg_split; /* the open segment follows one that ended at seg_first or seg_max */
    int seg_first, seg_max; /* CU_SEG_FIRST, CU_SEG_MAX (MC_CUDA_SEG=first,max) */
    cu_graph g[CU_NGRAPH];
    unsigned long g_clock;
    long n_graph_launch, n_graph_build, n_launch;
    double sync_wait_s; /* host time spent blocked in stream synchronisations */
    double update_s, glaunch_s; /* host time in graph argument updates and graph launches */
    long n_node_update;         /* kernel nodes whose arguments a graph update changed */
    /* MC_CUDA_IDLE=1: events at each synchronisation's end of work and at the first work
     * queued after it; idle_s sums the device time between them (the stream was empty) */
    bool idle_on, idle_have_end, idle_have_start;
    cudaEvent_t idle_end, idle_start, idle_cur;
    double idle_s;
    long n_idle;
    unsigned long n_sync; /* stream synchronisations of the backend's own (to_host, sync) */

    /* op fusion (MC_CUDA_FUSE=0: none; MC_CUDA_NOFUSE=rope,glu,lse: not those) */
    bool fuse_on;
    bool fuse_rope, fuse_glu; /* RoPE and SwiGLU taken over by the GEMVs before them */
    bool dec_cluster;         /* decode attention by clusters of blocks (else one block per split) */
    bool kv_pre_on;           /* decode attention may read older cache rows before its wait */
    cu_pending pend;
    /* rank-r LoRA updates of training-sized outputs folded into the SwiGLU that reads them
     * (forward: gate and up, written back; backward: dout) instead of a read and write of
     * each output of their own (MC_CUDA_NOFUSE=lswf: not the forward's, lswb: not the
     * backward's) */
    bool lsw_fwd, lsw_bwd;
    /* the q, k and v projections' rank-r updates held for the RoPE of q and k, whose launch
     * adds them (cuda_embed_rope.cu) and leaves the bf16 copies of k and v that the attention reads
     * (MC_CUDA_NOFUSE=qkvupd: off); n_lrope: launches so made */
    bool qkvupd_on;
    long n_lrope;
    /* the attention backward's D rows by 16-byte loads, a row's threads summing by shuffles
     * (MC_CUDA_NOFUSE=dsum4: a warp a row) */
    bool dsum4_on;
    /* a projection's B-gradient and t products reading its output gradient's bf16 in one
     * pass (cuda_lora_dual.cu; MC_CUDA_NOFUSE=dual: off); dual_busy while a held one runs
     * on its own; n_dual: pairs so computed */
    bool dual_on, dual_busy;
    long n_dual;
    /* the A gradients' sums over rows of x read in bf16 by a kernel of their own (cuda_lora_
     * dual.cu; MC_CUDA_NOFUSE=agrad: cuBLASLt's split-K GEMM); n_ga: products so computed */
    bool ga_on;
    long n_ga;
    /* the rank-r updates of the gate and up outputs computed by their GEMMs, over the
     * input widened by x A^T and the weight by B (K concatenation, cuda_kcat.cu;
     * MC_CUDA_NOFUSE=kcat: off), the widened weights kept while they take at most half the
     * bytes of the weight uploads (MC_CUDA_NOFUSE=kkeep: made again on every call) */
    bool kcat_on, kkeep_on;
    cu_aug_ent aug[CU_N_AUG];
    int n_aug;
    size_t aug_bytes, frozen_bytes;
    long n_kcat; /* updates computed so */
    int *gemv_cnt; /* [1] device counter of the SwiGLU-fused GEMV, zero between launches */
    bool fuse_am;  /* argmax_rows taken over by the GEMV before it (MC_CUDA_NOFUSE=argmax) */
    unsigned long long *am_keys; /* [2, CU_AM_SLOT] argmax keys, zeroed at setup */
    int am_slot;                 /* the slot the next fused argmax uses */

    /* greedy decoding a step ahead (cuda_ahead.cu): a ring of two queued argmaxes, each
     * with its slot of mapped page-locked memory (CU_AQ_SLOT words, one a row: cu_am_word,
     * written by the kernel that reads the keys), the sequence number awaited, its rows,
     * row length and the write epoch it ends */
    unsigned long long *aq_host, *aq_dev; /* [2, CU_AQ_SLOT]: the host's and device's view */
    unsigned long long aq_seq, aq_want[2];
    int aq_rows[2], aq_n[2];
    unsigned aq_epoch[2];
    int aq_head, aq_count;
    bool ahead_on; /* MC_CUDA_NOFUSE=ahead: no argmax_queue */
    bool rows_on;  /* MC_CUDA_NOFUSE=attrows: no attention_rows (a copy and a launch a row) */
    /* writes deferred to the next embedding (cu_deferred_flush launches them otherwise):
     * dfr_ids[r] = the argmax in keys dfr_keys for r < dfr_rows; dfr_pos[t] = dfr_start + t
     * for t < dfr_T */
    int32_t *dfr_ids;
    const unsigned long long *dfr_keys;
    int dfr_rows;
    unsigned long long *dfr_host; /* the keys and then dfr_seq go there too (device view) */
    unsigned long long dfr_seq;
    int32_t *dfr_pos;
    int dfr_start, dfr_T;

    /* profiling */
    bool prof_on;
    cu_prof_ev *pev;
    int pn, pcap;
    cu_prof_row *prow;
    int nrow, caprow;
};

static inline mc_cuda *cu_ctx(mc_backend *be) { return (mc_cuda *)be->impl; }
static inline const mc_cuda *cu_ctx_c(const mc_backend *be) { return (const mc_cuda *)be->impl; }

/* Drops every kept log-sum-exp entry (cuda_attention.cu). */
void cu_lse_drop_all(mc_cuda *c);
/* Drops the kept entries whose inputs or output overlap [a, b) (cuda_attention.cu). */
void cu_lse_drop_range(mc_cuda *c, uintptr_t a, uintptr_t b);

/* ---- errors (cuda_backend.cu) ---- */

/* Records the first failure (status s, message) until it is reported. */
void cu_set_error(mc_cuda *c, mc_status s, const char *fmt, ...) MC_PRINTF(3, 4);
/* Records e (if not cudaSuccess) as a failure of `what`; returns e == cudaSuccess. */
bool cu_check(mc_cuda *c, cudaError_t e, const char *what);
/* Lets kernel func use up to `bytes` of dynamic shared memory (a failure is recorded as
 * `what`'s). */
void cu_smem_limit(mc_cuda *c, const void *func, int bytes, const char *what);
/* Records a cuBLAS failure of `what`; returns st == CUBLAS_STATUS_SUCCESS. */
bool cu_check_blas(mc_cuda *c, cublasStatus_t st, const char *what);
/* Reports and clears the recorded failure through mc_fail; MC_OK when none. */
mc_status cu_take_error(mc_cuda *c);

/* ---- launches (cuda_backend.cu) ---- */

/* Queues (while recording) or launches one kernel. */
void cu_launch_raw(mc_cuda *c, const void *func, dim3 grid, dim3 block, unsigned smem,
                   const void *args, unsigned size, const char *name);

template <typename A>
static inline void cu_launch(mc_cuda *c, void (*kern)(A), dim3 grid, dim3 block, unsigned smem,
                             const A &args, const char *name) {
    static_assert(sizeof(A) <= CU_ARGS_MAX, "kernel argument struct too large");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    cu_launch_raw(c, (const void *)kern, grid, block, smem, &args, (unsigned)sizeof(A), name);
}

/* Profiling: an event before a kernel or cuBLAS call named `name` (a static string);
 * returns a slot for cu_prof_end, or -1 when profiling is off. */
int cu_prof_begin(mc_cuda *c, const char *name);
void cu_prof_end(mc_cuda *c, int slot);

/* Launches the pending op, if any (cuda_backend.cu dispatches to the families). */
void cu_pending_flush(mc_cuda *c);
/* The families' launches of a pending op on its own. */
void cu_flush_add(mc_cuda *c, const cu_pending *p);
void cu_flush_copy(mc_cuda *c, const cu_pending *p);
void cu_flush_swiglu(mc_cuda *c, const cu_pending *p);
/* The f32 copy of frozen bias b [n] (made once), or NULL (not frozen, table full, no
 * memory: the caller adds the bias itself). */
const float *cu_bias_f32(mc_cuda *c, mc_wt b, int n);
/* Drops the copies of biases inside [p, p + bytes) (a weight upload being freed). */
void cu_bias_drop(mc_cuda *c, const void *p, size_t bytes);
/* Launches held rank-r updates (cuda_gemm_f32.cu). */
void cu_flush_lora(mc_cuda *c, const cu_pending *p);
/* ---- one pass for a projection's two products of dy (cuda_lora_dual.cu) ---- */
/* Holds gB [N, ldg] += alpha dy^T xa (dy [M, ldy] packed or with a bf16 shadow, xa [M,
 * ldx], rank r); false when it does not qualify (nothing changed). */
bool cu_dual_hold(mc_cuda *c, int N, int r, int M, float alpha, const float *dy, int ldy,
                  const float *xa, int ldx, float *gB, int ldg);
/* Runs the held product with t [M, ldt] = alpha dy B (B [N, ldb]) in one kernel; false
 * when this is not the held product's partner. */
bool cu_dual_take(mc_cuda *c, int M, int r, int N, float alpha, const float *dy, int ldy,
                  const float *B, int ldb, float *t, int ldt);
/* Launches the held pairs (a last B-gradient product whose t never came on its own). */
void cu_flush_dual(mc_cuda *c, const cu_pending *p);
/* gemm_f32 on the backend's context. */
void cu_gemm_f32_c(mc_cuda *c, bool ta, bool tb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C,
                   int ldc);
/* gA [R, ldg] += alpha T^T x (T [M, ldt] f32, R <= 48 ranks; x [M, ldx] packed or with a
 * bf16 shadow) in one kernel; false when it does not qualify (nothing changed). */
bool cu_ga_run(mc_cuda *c, int R, int N, int M, float alpha, const float *T, int ldt,
               const float *x, int ldx, float *gA, int ldg);
/* Raises the dual kernel's shared-memory limit (setup). */
void cu_dual_init(mc_cuda *c);
/* The rank-r update u of a packed [M, N] output in bf16 on the tensor cores. */
void cu_lowrank16(mc_cuda *c, const cu_lora_upd &u, int M, int N);
/* ---- K concatenation (cuda_kcat.cu) ---- */
/* Holds the GEMM out = x W^T (xc: x in bf16) of a packed output, claiming out as packed,
 * or adds it to a held one of the same input; false when it cannot (nothing changed: the
 * caller runs it). */
bool cu_mm_hold(mc_cuda *c, float *out, const float *x, const void *xc, mc_wt w, int M, int N,
                int K);
/* Gives C += alpha A op(B) (rank K) to the held GEMM that writes C; false when none can
 * take it. */
bool cu_mm_take(mc_cuda *c, float *C, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, bool tb);
void cu_flush_mm(mc_cuda *c, const cu_pending *p);
/* out [M, N] (packed: bf16 in place) = x W^T in bf16 on the tensor cores, w [N, ldw] and
 * x [M, ldx] of K columns (cuda_matmul.cu). */
void cu_gemm_packed(mc_cuda *c, float *out, const void *w, int ldw, const void *x, int ldx,
                    int M, int N, int K, const char *name);
/* Frees the widened copies of weights inside [p, p + bytes) (all of them: p NULL). */
void cu_aug_drop(mc_cuda *c, const void *p, size_t bytes);
/* Claims [p, p + n) as packed without launching what is pending; false when the table is
 * full. */
bool cu_pack_claim_keep(mc_cuda *c, float *p, size_t n);
void cu_flush_rope(mc_cuda *c, const cu_pending *p);
void cu_flush_gemv(mc_cuda *c, const cu_pending *p);
void cu_flush_attbwd(mc_cuda *c);
void cu_flush_attfwd(mc_cuda *c);
/* Hands the argmax of the pending one-weight GEMV's rows (out == x, [rows, n]) to the GEMV
 * and launches it; the slot of keys it fills (see CU_AM_SLOT), or NULL when no such GEMV is
 * pending. */
unsigned long long *cu_gemv_take_argmax(mc_cuda *c, const float *x, int rows, int n);
/* Lets a pending two-entry GEMV (gate and up of a decode step) also compute
 * out = silu(gate) * up in its epilogue; false when the pending op is not such a GEMV. */
bool cu_gemv_take_swiglu(mc_cuda *c, float *out, const float *gate, const float *up, size_t n);
/* Lets a pending GEMV whose entry writes x also apply RoPE to it in its epilogue; false
 * when no pending entry matches. */
bool cu_gemv_take_rope(mc_cuda *c, float *x, int ldx, const int32_t *pos, int T, int H, int hd,
                       const float *inv);

/* Launches queued kernels directly before a call that cannot be queued (cuBLAS, copies
 * from the host, allocation); the rest of the segment launches directly. */
void cu_break(mc_cuda *c);
/* Ends a segment at a synchronisation point (host copies, sync, free): launches what is
 * queued, as a graph when the same sequence of kernels was seen in the last segment. */
void cu_end_segment(mc_cuda *c);

/* ---- memory (cuda_backend.cu) ---- */

/* cudaMalloc with accounting; NULL (and a recorded OOM when `what` is not NULL) on
 * failure. */
void *cu_malloc(mc_cuda *c, size_t bytes, const char *what);
void cu_free(mc_cuda *c, void *p);
/* True when [p, p + bytes) lies inside one allocation of this backend. */
bool cu_is_device(const mc_cuda *c, const void *p, size_t bytes);
/* The allocation holding [p, p + bytes): its start and size; false when none does. */
bool cu_alloc_of(const mc_cuda *c, const void *p, size_t bytes, const void **base, size_t *size);
/* True when [p, p + bytes) lies in one weight upload (the weights entry): kernels may read
 * it before cu_dep_wait(), since no kernel writes it. */
bool cu_is_frozen(const mc_cuda *c, const void *p, size_t bytes);
/* Records that queued work writes [p, p + bytes) (cu_note_write calls it). */
void cu_track_write(mc_cuda *c, const void *p, size_t bytes);
/* True when [p, p + bytes) lies in one allocation of this backend and nothing queued since
 * the last completed stream synchronisation (or in an epoch not yet retired) writes to it:
 * every write to it has finished, so a kernel may read it before cu_dep_wait() (the older
 * rows of a KV cache). */
bool cu_unwritten(const mc_cuda *c, const void *p, size_t bytes);
/* Forgets the ranges of epochs <= epoch: the work that wrote them has completed. */
void cu_retire_writes(mc_cuda *c, unsigned epoch);
/* Scratch buffer `id` of at least `bytes` bytes (contents kept only while not grown);
 * NULL with a recorded OOM on failure. zero_new: clear a newly allocated buffer. */
void *cu_scratch(mc_cuda *c, int id, size_t bytes, bool zero_new);
/* cu_scratch without recording a failure (for work that can go on without it). */
void *cu_scratch_opt(mc_cuda *c, int id, size_t bytes);

/* ---- cuBLASLt GEMMs (cuda_blaslt.cu) ---- */

/* C = alpha op(A) op(B) (+ C) for shape s (column-major, as cuBLAS): cuBLASLt with the
 * shape's fastest algorithm (chosen when the shape comes back after a synchronisation),
 * else cublasGemmEx. 16-bit operands multiply as they are, f32 ones in f32 or (s.tf32)
 * TF32; the sums are f32, and so is C unless s.c16 (bf16). Profiled as `what`; false on
 * failure (recorded). */
/* A shape with s.bias adds bias (f32) in the GEMM's epilogue when a chosen cuBLASLt
 * algorithm runs it (*added set); cublasGemmEx runs it without (*added clear). */
bool cu_gemm_lt(mc_cuda *c, const cu_lt_shape &s, float alpha, const void *A, const void *B,
                void *C, const char *what, const float *bias = nullptr, bool *added = nullptr);
/* Frees the handle, workspace and descriptors. */
void cu_lt_destroy(mc_cuda *c);

/* ---- shadows (cuda_matmul.cu) ---- */

/* Tells the shadow cache (and the write tracking of cu_unwritten) that [p, p + bytes) is
 * about to be written. Every op calls it for each of its outputs. */
void cu_note_write(mc_cuda *c, const void *p, size_t bytes);
/* cu_note_write for an op that writes a packed range in bf16 over its own values (the
 * range stays packed). */
void cu_note_write_keep(mc_cuda *c, const void *p, size_t bytes);
/* The f32 activations x[0..n) as dtype dt (x itself for MC_F32): a cached shadow, or a
 * fresh conversion. NULL on failure (recorded). */
const void *cu_act_as(mc_cuda *c, const float *x, size_t n, mc_dtype dt);
/* cu_act_as for an optional copy: NULL on an allocation failure, nothing recorded. */
const void *cu_act_as_opt(mc_cuda *c, const float *x, size_t n, mc_dtype dt);
/* A bf16 buffer for a producer to write the shadow of dst[0..n) into, next to its f32
 * output (call after cu_note_write(dst)); NULL when no shadow is wanted (the last GEMM
 * weight was not bf16, or few rows: small outputs feed the GEMV path, which reads f32). */
void *cu_shadow_for(mc_cuda *c, const void *dst, size_t n, int rows);
/* The bf16 copy of x[0..n) inside a valid shadow (any part of one), or NULL; no launch. */
const void *cu_shadow_find(mc_cuda *c, const float *x, size_t n);
/* x[0..n) in bf16 for a small operand: the shadow of the whole allocation holding it when
 * that takes at most CU_SMALL_WHOLE bytes (the LoRA weights, the saved x A^T products:
 * converted once and kept until written), else of the span; NULL when no memory. */
const void *cu_small_as(mc_cuda *c, const float *x, size_t n);
/* The packed bf16 of x[0..n) (inside one packed range), or NULL. */
__nv_bfloat16 *cu_packed_find(const mc_cuda *c, const float *x, size_t n);
/* Whether [p, p + n) is exactly one packed range. */
bool cu_packed_whole(const mc_cuda *c, const float *p, size_t n);
/* Registers [p, p + n) as packed (its producer writes bf16 there); false when the table is
 * full (the producer writes f32). Call after cu_note_write of the range, and after taking
 * over any pending op the producer fuses with: what is still pending is launched first
 * (it may read the range's old values or look a range up). */
bool cu_pack_claim(mc_cuda *c, float *p, size_t n);
/* Expands to f32 every packed range that meets [p, p + bytes), so f32 readers see its
 * values (pending work first); a no-op when none does. */
void cu_unpack(mc_cuda *c, const void *p, size_t bytes);
/* Whether an output of M rows, n values in all, is one a producer packs (pack_on, a
 * training-sized row count). */
bool cu_pack_rows(const mc_cuda *c, int M);

/* ---- ops (one .cu per family) ---- */

/* cuda_embed_rope.cu */
void cu_embedding(mc_backend *be, void *out, const int32_t *ids, mc_wt table, int T, int D);
void cu_rope(mc_backend *be, void *x, int ldx, const int32_t *pos, int T, int H, int hd,
             float theta);
void cu_rope_backward(mc_backend *be, void *dx, int ldx, const int32_t *pos, int T, int H, int hd,
                      float theta);
/* cuda_rmsnorm.cu */
void cu_rmsnorm(mc_backend *be, void *out, const void *x, mc_wt w, int T, int D, float eps);
void cu_rmsnorm_backward(mc_backend *be, void *dx, void *xn, const void *dy, const void *x,
                         mc_wt w, int T, int D, float eps);
/* cuda_matmul.cu */
void cu_matmul(mc_backend *be, void *out, int ldo, const void *x, mc_wt w, mc_wt bias, int M,
               int N, int K);
void cu_matmul_dx(mc_backend *be, void *dx, const void *dy, mc_wt w, int M, int N, int K,
                  bool accumulate);
/* cuda_gemm_f32.cu */
void cu_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* C[m, n] = alpha sum_p part[p, m, n] + beta C[m, n] for the `parts` partial sums
 * [parts, M, N] of a split reduction, added in order (the result does not depend on
 * scheduling); one launch named `name`. */
void cu_sum_parts(mc_cuda *c, float *C, int ldc, const float *part, int M, int N, int parts,
                  float alpha, float beta, const char *name);
/* cuda_attention.cu */
void cu_attention(mc_backend *be, void *out, const void *q, const void *k, const void *v, int T,
                  int pos0, int Hq, int Hkv, int hd);
void cu_attention_rows(mc_backend *be, void *out, const void *q, const void *k_new,
                       const void *v_new, const mc_att_row *rows, int T, int Hq, int Hkv, int hd);
void cu_attention_backward(mc_backend *be, void *dq, void *dk, void *dv, const void *dout,
                           const void *q, const void *k, const void *v, int T, int Hq, int Hkv,
                           int hd);
void cu_attention_init(mc_cuda *c);
void cu_matmul_init(mc_cuda *c);
/* Raises the dynamic shared-memory limit of the one-pass cross-entropy kernel. */
void cu_xent_init(mc_cuda *c);
/* cuda_elementwise.cu */
void cu_swiglu(mc_backend *be, void *out, const void *gate, const void *up, size_t n);
void cu_swiglu_backward(mc_backend *be, void *dgate, void *dup, void *h, const void *dout,
                        const void *gate, const void *up, size_t n);
void cu_add(mc_backend *be, void *y, const void *x, size_t n);
void cu_dropout(mc_backend *be, void *out, const void *x, size_t n, float p, uint64_t seed);
void cu_copy_kernel(mc_cuda *c, void *dst, const void *src, size_t bytes);
void cu_zero(mc_backend *be, void *p, size_t bytes);
/* cuda_ahead.cu: greedy decoding a step ahead, and the writes deferred to an embedding */
mc_status cu_argmax_queue(mc_backend *be, int32_t *ids, const void *x, int rows, int n);
mc_status cu_argmax_wait(mc_backend *be, int32_t *out, int rows);
void cu_fill_positions(mc_backend *be, int32_t *pos, int start, int T);
/* Launches the deferred writes (dfr_*) as a kernel of their own. */
void cu_deferred_flush(mc_cuda *c);
static inline bool cu_deferred(const mc_cuda *c) { return c->dfr_ids || c->dfr_pos; }
/* Sets up (at backend creation) and frees the ring of queued argmaxes; false on failure. */
bool cu_ahead_init(mc_cuda *c);
void cu_ahead_destroy(mc_cuda *c);
/* cuda_xent.cu */
mc_status cu_argmax_rows(mc_backend *be, int32_t *out, const void *x, int rows, int n);
/* Launches the keys of x's rows (rows <= CU_GEMV_MAX_M, [rows, n]) into the next slot of
 * argmax keys, as a GEMV's epilogue would (the other slot cleared); the slot. */
unsigned long long *cu_argmax_keys(mc_cuda *c, const float *x, int rows, int n);
mc_status cu_linear_xent(mc_backend *be, void *dh, double *loss_sum, const void *h, mc_wt w,
                         const int32_t *targets, int T, int D, int V, float grad_scale);
/* cuda_optim.cu */
void cu_adamw(mc_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, float wd, int step);
double cu_sumsq_f32(mc_backend *be, const float *x, size_t n);
void cu_scale_f32(mc_backend *be, float *x, size_t n, float alpha);

/* ---- helpers ---- */

/* Blocks of `threads` covering n items, capped for grid-stride loops. */
static inline unsigned cu_blocks(size_t n, unsigned threads, unsigned cap = 65535u * 8u) {
    size_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > cap) b = cap;
    return (unsigned)b;
}

static inline __host__ __device__ bool cu_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* True when the floats [a, a + na) and [b, b + nb) overlap. */
static inline bool cu_f32_overlap(const float *a, size_t na, const float *b, size_t nb) {
    return a < b + nb && b < a + na;
}

/* ---- device helpers ---- */

#ifdef __CUDACC__
/* First statement of every kernel (after its pre-wait work, if any): lets the next kernel
 * of the stream start launching, then waits until the previous kernel has finished and
 * its writes are visible (a no-op unless launched as a programmatic dependent). The next
 * kernel's blocks may thus become resident while this one runs; before their own wait
 * they only read frozen weights (cu_is_frozen) or issue L2 hints, and the completion order
 * still chains (kernel n + 2 waits for n + 1, which waited for n). */
static __device__ __forceinline__ void cu_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* Asks L2 to fetch [p, p + bytes) (16-byte aligned, bytes a multiple of 16) and returns
 * at once. Kernels issue it before cu_dep_wait() for what they will read that the
 * previous kernels do not produce (weights, older KV-cache rows), so the fetch overlaps
 * the previous kernel's tail. Only a hint: L2 is where the device's memory is coherent,
 * so a prefetched line never hides a later write. */
static __device__ __forceinline__ void cu_prefetch_l2(const void *p, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
    (void)p;
    (void)bytes;
#endif
}

static __device__ __forceinline__ float cu_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float cu_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ double cu_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The argmax key of value v (finite, above -inf) at index n: a larger value, or an equal
 * one at a smaller index, has the larger key (-0 counts as +0); 0 is below every key. */
static __device__ __forceinline__ unsigned long long cu_am_key(float v, int n) {
    const unsigned b = __float_as_uint(v == 0.0f ? 0.0f : v);
    const unsigned o = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)o << 32) | (0xffffffffu - (unsigned)n);
}
/* The key of a NaN (is_nan) or +inf at index n: the smaller index has the larger key. */
static __device__ __forceinline__ unsigned long long cu_am_bad_key(int n, bool is_nan) {
    return ((unsigned long long)(0xffffffffu - (unsigned)n) << 1) | (is_nan ? 1u : 0u);
}
/* Folds value v at index n into a row's keys (best: finite values, bad: NaN and +inf). */
static __device__ __forceinline__ void cu_am_fold(unsigned long long &best,
                                                  unsigned long long &bad, float v, int n) {
    if (!(v < INFINITY)) {
        const unsigned long long k = cu_am_bad_key(n, isnan(v));
        if (k > bad) bad = k;
    } else if (v > -INFINITY) {
        const unsigned long long k = cu_am_key(v, n);
        if (k > best) best = k;
    }
}
/* The token of an argmax key (cu_am_key; 0, no finite value: token 0). */
static __device__ __forceinline__ int32_t cu_am_token(unsigned long long k) {
    return k ? (int32_t)(0xffffffffu - (unsigned)(k & 0xffffffffu)) : 0;
}
/* Row r's argmax in one 64-bit word for the host, tagged with the low 24 bits of sequence
 * number seq (bits 40-63), so that one aligned store carries it whole and no fence orders
 * it after anything: bits 32-39 the kind (0 the token in bits 0-31; 1 no finite value; 2
 * and 3 the first NaN or +inf, at the index in bits 0-31). */
static __device__ __forceinline__ unsigned long long cu_am_word(const unsigned long long *keys,
                                                                int r, unsigned long long seq) {
    const unsigned long long best = keys[r], bad = keys[CU_GEMV_MAX_M + r];
    unsigned kind = 0, idx;
    if (bad) {
        kind = (bad & 1) ? 2u : 3u;
        idx = 0xffffffffu - (unsigned)(bad >> 1);
    } else if (!best) {
        kind = 1;
        idx = 0;
    } else {
        idx = 0xffffffffu - (unsigned)(best & 0xffffffffu);
    }
    return ((seq & 0xffffffull) << 40) | ((unsigned long long)kind << 32) | idx;
}
/* The deferred writes of row t of a queued argmax, by one thread (the embedding that takes
 * them over, or cu_deferred_flush's kernel): its token into ids[t] and its word into the
 * host's mapped slot. */
static __device__ __forceinline__ void cu_dfr_row(const unsigned long long *keys, int32_t *ids,
                                                  unsigned long long *host,
                                                  unsigned long long seq, int t) {
    ids[t] = cu_am_token(keys[t]);
    *(volatile unsigned long long *)(host + t) = cu_am_word(keys, t, seq);
}

/* Raises *p to k; the atomic only when k is above the value read first. */
static __device__ __forceinline__ void cu_am_push(unsigned long long *p, unsigned long long k) {
    if (k != 0ull && k > *(volatile unsigned long long *)p) atomicMax(p, k);
}

/* Element i of a weight array of dtype dt as f32. */
static __device__ __forceinline__ float cu_load_w(const void *p, int dt, size_t i) {
    if (dt == MC_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == MC_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* silu(g) as the reference computes it: g / (1 + expf(-g)), each operation rounded. */
static __device__ __forceinline__ float cu_silu(float g) {
    return __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
}

/* RoPE of the pair (x1, x2) at position pos with inverse frequency inv, rounded as the
 * reference does (backward: rotated by -angle). The rope kernel and the q/k/v GEMV's
 * epilogue both use it, so the fused path gives the same bits. */
static __device__ __forceinline__ void cu_rope_rotate(float x1, float x2, int32_t pos, float inv,
                                                      bool backward, float &y1, float &y2) {
    const float ang = __fmul_rn((float)pos, inv);
    float s, co;
    sincosf(ang, &s, &co);
    if (!backward) {
        y1 = __fsub_rn(__fmul_rn(x1, co), __fmul_rn(x2, s));
        y2 = __fadd_rn(__fmul_rn(x2, co), __fmul_rn(x1, s));
    } else {
        y1 = __fadd_rn(__fmul_rn(x1, co), __fmul_rn(x2, s));
        y2 = __fsub_rn(__fmul_rn(x2, co), __fmul_rn(x1, s));
    }
}

/* d += a b for one m16n8k16 bf16 tile on the tensor cores (f32 accumulators). */
static __device__ __forceinline__ void cu_mma16816(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8x8 b16 matrices from shared memory, transposed; lane L gives the row address of
 * row L % 8 of matrix L / 8. */
static __device__ __forceinline__ void cu_ldsm_x4_t(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* One 16-byte cp.async from global src into shared dst, zero-filled past `bytes` (0 or 16:
 * a row past the end reads nothing); the caller commits and waits for the group. */
static __device__ __forceinline__ void cu_cp_async16(void *dst, const void *src, int bytes) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes)
                 : "memory");
}

/* The same, not transposed. */
static __device__ __forceinline__ void cu_ldsm_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* Two floats as a packed bf16x2 register (lo in the low half). */
static __device__ __forceinline__ uint32_t cu_pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}
#endif

#endif /* MC_BACKEND_CUDA_INTERNAL_H */
