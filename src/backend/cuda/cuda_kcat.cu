/* cuda_kcat.cu - the rank-r LoRA updates of the gate and up outputs inside their GEMMs.
 *
 * The trainer computes gate = x Wg^T, then gate += s (x Ag^T) Bg^T (and the same for up).
 * The update alone reads and writes the whole [rows, F] output for a rank of 16. Written as
 * one product over a longer inner dimension, gate = [x | x Ag^T] [Wg | s Bg]^T, it costs
 * the GEMM 16 more columns of K and nothing else. So a packed GEMM of an MLP projection is
 * held (CU_PEND_MM) until the next op: the update of its output joins it (cu_mm_take).
 * Gate and up read the same x, so they share one widened input [x | x Ag^T | x Au^T] (each
 * block of rank columns rounded up to rp, a multiple of 8, zeros in the gap), gate against
 * [Wg | s Bg | 0] and up against [Wu | 0 | s Bu]: the zeros cost no more than a ragged last
 * K tile would. The widened weights hold a copy
 * of W made once (while they take at most half the bytes of the weight uploads; past that
 * they are made again in scratch on every call) and s B, written before each use, in bf16,
 * as the other LoRA products of training-sized rows read their wide operands
 * (lora_bf16_ops). Any other op launches what is held; a GEMM whose update never comes runs
 * as before. */
#include <string.h>

#include "cuda_internal.h"

/* Columns of bf16 per 16-byte vector. */
enum { KC_V = 8 };

/* Ranks up to this join a held GEMM (as lora_hold's). */
enum { KC_MAX_RANK = 32 };

/* One updated GEMM's part of the widening kernel's work. */
struct KcatPart {
    /* the update's A [M, K] rows (lda) and op(B) (B [N, K] when tb, else [K, N]; ldb) */
    const float *A, *B;
    int lda, ldb, tb, K;
    float alpha;
    __nv_bfloat16 *wa;      /* the widened weight [N, Kw + nu rp] */
    const __nv_bfloat16 *w; /* W [N, Kw] to copy in first, or NULL */
};

struct KcatArgs {
    __nv_bfloat16 *xa;       /* [M, Kw + nu rp]: [x | x A^T of part 0 | of part 1] */
    const __nv_bfloat16 *xc; /* x [M, Kw] */
    int M, N, Kw, rp, nu;
    KcatPart u[2];
};

/* Eight values v(k0 .. k0 + 7) (zero from k = K on) as bf16 in 16 bytes. */
template <typename F>
static __device__ __forceinline__ uint4 kc_pack8(int k0, int K, F v) {
    float f[KC_V];
#pragma unroll
    for (int t = 0; t < KC_V; t++) f[t] = k0 + t < K ? v(k0 + t) : 0.0f;
    return make_uint4(cu_pack_bf16(f[0], f[1]), cu_pack_bf16(f[2], f[3]),
                      cu_pack_bf16(f[4], f[5]), cu_pack_bf16(f[6], f[7]));
}

/* Vector (n, j) of part e's B columns in its widened weight: its own slot s op(B)^T, the
 * other part's slot zeros. */
static __device__ __forceinline__ void kc_b(const KcatArgs &a, int e, unsigned n, unsigned j) {
    const KcatPart &u = a.u[e];
    const int c0 = (int)j * KC_V, k0 = c0 - e * a.rp;
    const auto b = [&](int k) {
        return u.alpha * (u.tb ? u.B[(size_t)n * u.ldb + k] : u.B[(size_t)k * u.ldb + n]);
    };
    const uint4 v = k0 < 0 || k0 >= a.rp ? make_uint4(0u, 0u, 0u, 0u) : kc_pack8(k0, u.K, b);
    *reinterpret_cast<uint4 *>(u.wa + (size_t)n * (a.Kw + a.nu * a.rp) + a.Kw + c0) = v;
}

/* Vector (m, j) of the widened input's row m. */
static __device__ __forceinline__ void kc_x(const KcatArgs &a, unsigned m, unsigned j) {
    const int c0 = (int)j * KC_V;
    uint4 v;
    if (c0 < a.Kw) {
        v = *reinterpret_cast<const uint4 *>(a.xc + (size_t)m * a.Kw + c0);
    } else {
        const int e = (c0 - a.Kw) / a.rp, k0 = c0 - a.Kw - e * a.rp;
        const KcatPart &u = a.u[e];
        v = kc_pack8(k0, u.K, [&](int k) { return u.A[(size_t)m * u.lda + k]; });
    }
    *reinterpret_cast<uint4 *>(a.xa + (size_t)m * (a.Kw + a.nu * a.rp) + c0) = v;
}

/* The widened input, each part's B columns and, where asked, its copy of W: one
 * grid-stride pass over all their 16-byte vectors (fewer than 2^31: cu_flush_mm checks). */
static __global__ void kcat_kernel(const KcatArgs a) {
    cu_dep_wait();
    const unsigned vx = (unsigned)(a.Kw + a.nu * a.rp) / KC_V, vb = (unsigned)(a.nu * a.rp) / KC_V;
    const unsigned vw = (unsigned)a.Kw / KC_V, nx = (unsigned)a.M * vx, nb = (unsigned)a.N * vb;
    unsigned nw[2] = {0u, 0u}, total = nx;
    for (int e = 0; e < a.nu; e++) {
        nw[e] = a.u[e].w ? (unsigned)a.N * vw : 0u;
        total += nb + nw[e];
    }
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned j = i;
        if (j < nx) {
            kc_x(a, j / vx, j % vx);
            continue;
        }
        j -= nx;
        for (int e = 0; e < a.nu; e++) {
            if (j < nb) {
                kc_b(a, e, j / vb, j % vb);
                break;
            }
            j -= nb;
            if (j < nw[e]) {
                const unsigned n = j / vw, k0 = (j % vw) * KC_V;
                *reinterpret_cast<uint4 *>(a.u[e].wa + (size_t)n * (vx * KC_V) + k0) =
                    *reinterpret_cast<const uint4 *>(a.u[e].w + (size_t)n * a.Kw + k0);
                break;
            }
            j -= nw[e];
        }
    }
}

bool cu_mm_hold(mc_cuda *c, float *out, const float *x, const void *xc, mc_wt w, int M, int N,
                int K) {
    cu_pending &p = c->pend;
    const size_t n = (size_t)M * (size_t)N, nx = (size_t)M * (size_t)K;
    if (!c->kcat_on || w.dtype != MC_BF16 || K % KC_V || N % KC_V || !cu_aligned16(xc) ||
        !cu_aligned16(w.data) || !cu_aligned16(out) || cu_f32_overlap(out, n, x, nx))
        return false;
    if (p.kind == CU_PEND_MM && p.n_mm == 1 && p.mm_x == x && p.mm_xc == xc && p.mm_M == M &&
        p.mm_K == K && !cu_f32_overlap(out, n, p.mm[0].out, (size_t)M * p.mm[0].N)) {
        if (!cu_pack_claim_keep(c, out, n)) return false;
    } else {
        if (!cu_pack_claim(c, out, n)) return false; /* it launched what was pending */
        p.kind = CU_PEND_MM;
        p.n_mm = 0;
        p.mm_x = x;
        p.mm_xc = xc;
        p.mm_M = M;
        p.mm_K = K;
    }
    cu_mm_ent &e = p.mm[p.n_mm++];
    memset(&e, 0, sizeof e);
    e.out = out;
    e.w = w.data;
    e.N = N;
    return true;
}

bool cu_mm_take(mc_cuda *c, float *C, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, bool tb) {
    cu_pending &p = c->pend;
    if (p.kind != CU_PEND_MM || p.mm_M != M || K < 1 || K > KC_MAX_RANK) return false;
    const cu_lora_upd u = {C, (__nv_bfloat16 *)C, A, B, lda, ldb, tb ? 1 : 0, K, alpha, N};
    size_t na, nb;
    cu_lora_spans(u, M, N, &na, &nb);
    int hit = -1;
    for (int i = 0; i < p.n_mm; i++) {
        const cu_mm_ent &e = p.mm[i];
        const size_t ne = (size_t)M * (size_t)e.N;
        if (cu_f32_overlap(e.out, ne, A, na) || cu_f32_overlap(e.out, ne, B, nb)) return false;
        if (e.out == C && e.N == N && !e.u.C) hit = i;
    }
    /* the update reads A and B in f32 */
    if (hit < 0 || cu_packed_find(c, A, na) || cu_packed_find(c, B, nb)) return false;
    p.mm[hit].u = u;
    return true;
}

/* The held GEMM e as cu_matmul runs it, then its update (if any) on its own. */
static void mm_plain(mc_cuda *c, const cu_pending *p, const cu_mm_ent &e) {
    const int M = p->mm_M, K = p->mm_K;
    cu_gemm_packed(c, e.out, e.w, K, p->mm_xc, K, M, e.N, K, "cublas matmul bf16 out");
    if (e.u.C) cu_lowrank16(c, e.u, M, e.N);
}

/* The widened weight [N, kk] of W [N, K] for slot `slot` of a GEMM of kk = K + nu rp
 * columns, kept or in scratch; *fresh when W still has to be copied in. NULL when out of
 * memory. */
static __nv_bfloat16 *aug_weight(mc_cuda *c, const void *w, int N, int K, int kk, int slot,
                                 bool *fresh) {
    const size_t bytes = (size_t)N * (size_t)kk * sizeof(__nv_bfloat16);
    *fresh = true;
    for (int i = 0; i < c->n_aug; i++) {
        const cu_aug_ent &a = c->aug[i];
        if (a.w == w && a.N == N && a.K == K && a.kk == kk && a.slot == slot) {
            *fresh = false;
            return a.buf;
        }
    }
    if (c->kkeep_on && c->n_aug < CU_N_AUG && c->aug_bytes + bytes <= c->frozen_bytes / 2 &&
        cu_is_frozen(c, w, (size_t)N * (size_t)K * sizeof(__nv_bfloat16))) {
        __nv_bfloat16 *buf = (__nv_bfloat16 *)cu_malloc(c, bytes, NULL);
        if (buf) {
            cu_aug_ent &a = c->aug[c->n_aug++];
            a.w = w;
            a.buf = buf;
            a.bytes = bytes;
            a.N = N;
            a.K = K;
            a.kk = kk;
            a.slot = slot;
            c->aug_bytes += bytes;
            return buf;
        }
    }
    char *s = (char *)cu_scratch_opt(c, CU_S_KCAT_W, 2 * bytes);
    return s ? (__nv_bfloat16 *)(s + (size_t)slot * bytes) : NULL;
}

void cu_flush_mm(mc_cuda *c, const cu_pending *p) {
    const int M = p->mm_M, K = p->mm_K;
    int idx[2], nu = 0, rp = 0;
    for (int i = 0; i < p->n_mm; i++) {
        if (!p->mm[i].u.C) continue;
        idx[nu++] = i;
        const int r = (p->mm[i].u.K + KC_V - 1) / KC_V * KC_V;
        if (r > rp) rp = r;
    }
    /* two updates share the input only when both GEMMs have the same width (so one pass
     * writes both weights' B columns) */
    if (nu == 2 && p->mm[idx[0]].N != p->mm[idx[1]].N) nu = 1;
    const int kk = K + nu * rp, N = nu ? p->mm[idx[0]].N : 0;
    KcatArgs a;
    memset(&a, 0, sizeof a);
    const double work = (double)M * (kk / KC_V) + 2.0 * N * ((kk + rp) / KC_V);
    if (nu && work < 2e9)
        a.xa = (__nv_bfloat16 *)cu_scratch_opt(c, CU_S_KCAT_X,
                                                (size_t)M * (size_t)kk * sizeof(__nv_bfloat16));
    bool ok = a.xa != NULL;
    for (int e = 0; e < nu && ok; e++) {
        const cu_mm_ent &m = p->mm[idx[e]];
        KcatPart &u = a.u[e];
        bool fresh;
        u.wa = aug_weight(c, m.w, N, K, kk, e, &fresh);
        ok = u.wa != NULL;
        u.A = m.u.A;
        u.B = m.u.B;
        u.lda = m.u.lda;
        u.ldb = m.u.ldb;
        u.tb = m.u.tb;
        u.K = m.u.K;
        u.alpha = m.u.alpha;
        u.w = fresh ? (const __nv_bfloat16 *)m.w : NULL;
    }
    if (!ok) { /* no update, or no memory for the widened operands: as before */
        for (int i = 0; i < p->n_mm; i++) mm_plain(c, p, p->mm[i]);
        return;
    }
    a.xc = (const __nv_bfloat16 *)p->mm_xc;
    a.M = M;
    a.N = N;
    a.Kw = K;
    a.rp = rp;
    a.nu = nu;
    cu_launch(c, kcat_kernel, dim3(cu_blocks((size_t)work, 256, (unsigned)c->n_sm * 16)),
              dim3(256), 0, a, "kcat widen");
    for (int i = 0; i < p->n_mm; i++) {
        const cu_mm_ent &m = p->mm[i];
        const int e = i == idx[0] ? 0 : nu == 2 && i == idx[1] ? 1 : -1;
        if (e < 0) {
            mm_plain(c, p, m);
            continue;
        }
        cu_gemm_packed(c, m.out, a.u[e].wa, kk, a.xa, kk, M, N, kk,
                       "cublas matmul+lora bf16 out");
        c->n_kcat++;
    }
}

void cu_aug_drop(mc_cuda *c, const void *p, size_t bytes) {
    int i = 0;
    while (i < c->n_aug) {
        const uintptr_t w = (uintptr_t)c->aug[i].w;
        if (!p || (w >= (uintptr_t)p && w < (uintptr_t)p + bytes)) {
            const cu_aug_ent a = c->aug[i];
            c->aug[i] = c->aug[--c->n_aug];
            c->aug_bytes -= a.bytes;
            cu_free(c, a.buf);
        } else {
            i++;
        }
    }
}
