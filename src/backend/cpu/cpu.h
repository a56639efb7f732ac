/* cpu.h - internals shared by the CPU backends: the private context, the kernel variants,
 * and the prototypes of the reference ("cpu-ref") and fast ("cpu") kernels.
 *
 * Activation buffers of both CPU backends hold f32. Kernel arguments follow backend.h
 * (outputs first, then inputs, then sizes); shapes are given there and repeated here. */
#ifndef MC_BACKEND_CPU_H
#define MC_BACKEND_CPU_H

#include "../backend.h"

#include <stdatomic.h>

/* Which kernels a CPU backend runs. */
typedef enum mc_cpu_variant {
    MC_CPU_REF = 0,      /* plain loops, one thread: the specification */
    MC_CPU_PORTABLE = 1, /* fast structure (threads, tiles, OpenBLAS) with scalar inner loops */
    MC_CPU_AVX2 = 2      /* MC_CPU_PORTABLE plus AVX2/FMA/F16C inner loops */
} mc_cpu_variant;

/* Default of mc_cpu.gemv_max_m: the measured crossover between the GEMV path and the
 * tiled OpenBLAS path for bf16 weights (bench/bench_kernels.c prints both). */
#define MC_GEMV_MAX_M 8

/* Floats of per-thread scratch for f32 weight tiles in the prefill GEMM (4 MiB). */
#define MC_CPU_SCRATCH_FLOATS ((size_t)1 << 20)

/* Private context of a CPU backend (be->impl). */
typedef struct mc_cpu {
    mc_cpu_variant variant;
    int n_threads;            /* OpenMP threads per op (1 for the reference) */
    int gemv_max_m;           /* matmuls with M <= this take the GEMV path (benchmarks tune it) */
    float *scratch;           /* [n_threads, MC_CPU_SCRATCH_FLOATS]; NULL for the reference */
    atomic_flag scratch_busy; /* held while a matmul uses scratch (ops are reentrant) */
    /* argmax_queue's results not yet waited for: a ring of two, each with its rows' ids,
     * or its failure's status and message */
    struct {
        int rows;
        mc_status st;
        int32_t ids[MC_ARGMAX_QUEUE_ROWS];
        char msg[256];
    } aq[2];
    int aq_head, aq_count;
} mc_cpu;

/* Creates a CPU backend running the given kernels on n_threads (0 = OpenMP's default,
 * i.e. all cores or OMP_NUM_THREADS). MC_CPU_AVX2 falls back to MC_CPU_PORTABLE when the
 * processor lacks AVX2/FMA/F16C. mc_backend_cpu_create() is this with REF or the best
 * variant. Tests use it to run the portable kernels on an AVX2 machine. */
mc_status mc_cpu_create(int n_threads, mc_cpu_variant variant, mc_backend **out);

/* True when this processor and build can run the AVX2/FMA/F16C kernels. */
bool mc_cpu_has_avx2(void);

/* ---- reference kernels (cpu_ref.c); be->impl unused ---- */
void mc_ref_embedding(mc_backend *be, void *out /* [T, D] */, const int32_t *ids /* [T] */,
                      mc_wt table /* [V, D] */, int T, int D);
void mc_ref_rmsnorm(mc_backend *be, void *out /* [T, D] */, const void *x /* [T, D] */,
                    mc_wt w /* [D] */, int T, int D, float eps);
void mc_ref_matmul(mc_backend *be, void *out /* [M, ldo] */, int ldo, const void *x /* [M, K] */,
                   mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, int M, int N, int K);
void mc_ref_rope(mc_backend *be, void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */,
                 int T, int H, int hd, float theta);
void mc_ref_attention(mc_backend *be, void *out /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                      const void *k /* [>= pos0+T, Hkv*hd] */, const void *v /* same */, int T,
                      int pos0, int Hq, int Hkv, int hd);
void mc_ref_swiglu(mc_backend *be, void *out /* [n] */, const void *gate /* [n] */,
                   const void *up /* [n] */, size_t n);
void mc_ref_add(mc_backend *be, void *y /* [n] */, const void *x /* [n] */, size_t n);

/* RoPE inverse frequency of pair i of a head of hd, computed as Hugging Face does in f32:
 * 1 / theta^(float(2i) / hd). Shared by both backends so they agree bit for bit. */
float mc_rope_inv_freq(float theta, int i, int hd);
/* RoPE rotation by dir * angle (dir = +1: the forward; -1: its backward), in place. */
void mc_ref_rope_dir(void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */, int T, int H,
                     int hd, float theta, float dir);

/* ---- fast kernels (cpu_fast.c, cpu_matmul.c); be->impl is an mc_cpu ---- */
void mc_fast_embedding(mc_backend *be, void *out /* [T, D] */, const int32_t *ids /* [T] */,
                       mc_wt table /* [V, D] */, int T, int D);
void mc_fast_rmsnorm(mc_backend *be, void *out /* [T, D] */, const void *x /* [T, D] */,
                     mc_wt w /* [D] */, int T, int D, float eps);
void mc_fast_matmul(mc_backend *be, void *out /* [M, ldo] */, int ldo, const void *x /* [M, K] */,
                    mc_wt w /* [N, K] */, mc_wt bias /* [N] or absent */, int M, int N, int K);
void mc_fast_matmul_multi(mc_backend *be, int n, const mc_matmul_out *outs,
                          const void *x /* [M, K] */, int M, int K);
void mc_fast_rope_dir(mc_backend *be, void *x /* [T, ldx] */, int ldx,
                      const int32_t *pos /* [T] */, int T, int H, int hd, float theta, float dir);
void mc_fast_rope(mc_backend *be, void *x /* [T, ldx] */, int ldx, const int32_t *pos /* [T] */,
                  int T, int H, int hd, float theta);
void mc_fast_attention(mc_backend *be, void *out /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                       const void *k /* [>= pos0+T, Hkv*hd] */, const void *v /* same */, int T,
                       int pos0, int Hq, int Hkv, int hd);
void mc_fast_swiglu(mc_backend *be, void *out /* [n] */, const void *gate /* [n] */,
                    const void *up /* [n] */, size_t n);
void mc_fast_add(mc_backend *be, void *y /* [n] */, const void *x /* [n] */, size_t n);

#endif /* MC_BACKEND_CPU_H */
