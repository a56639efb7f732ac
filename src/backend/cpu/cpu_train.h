/* cpu_train.h - the training ops of the CPU backends: reference kernels (cpu_train_ref.c,
 * the specification: plain loops, one thread) and fast kernels (cpu_train.c: OpenMP,
 * OpenBLAS sgemm on weight tiles converted on the fly, AVX2 where the variant allows),
 * and the function that puts either set into an ops table.
 *
 * Signatures, shapes and semantics are those of the "training ops" section of backend.h;
 * shapes are repeated here. Activations and gradients are f32 (the CPU act_dtype). */
#ifndef MC_BACKEND_CPU_TRAIN_H
#define MC_BACKEND_CPU_TRAIN_H

#include "cpu.h"

/* Fills be->gemm_f32, matmul_dx, rmsnorm_backward, rope_backward, attention_backward,
 * swiglu_backward, linear_xent, dropout, adamw, sumsq_f32, scale_f32 and zero with the
 * reference kernels (reference = true) or the fast ones. Idempotent. The fast kernels
 * need be->impl to be an mc_cpu (any variant; a reference-variant context runs the
 * portable code on its one thread). */
void mc_cpu_install_train_ops(mc_backend *be, bool reference);

/* splitmix64's output for counter i of the stream seeded with `seed`. */
static inline uint64_t mc_dropout_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Dropout mask: element i of the mask with this seed is kept when mc_dropout_hash(seed, i)
 * as a uniform double in [0, 1) (its top 53 bits) is >= p. A pure function of (seed, i),
 * the definition both kernels (and other backends) follow bit for bit. */
static inline bool mc_dropout_keep(uint64_t seed, uint64_t i, double p) {
    return (double)(mc_dropout_hash(seed, i) >> 11) * 0x1.0p-53 >= p;
}

/* ---- reference kernels (cpu_train_ref.c); be->impl unused ---- */
void mc_ref_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                     const float *A /* [M, lda] or [K, lda] when ta */, int lda,
                     const float *B /* [K, ldb] or [N, ldb] when tb */, int ldb, float beta,
                     float *C /* [M, ldc] */, int ldc);
void mc_ref_matmul_dx(mc_backend *be, void *dx /* [M, K] */, const void *dy /* [M, N] */,
                      mc_wt w /* [N, K] */, int M, int N, int K, bool accumulate);
void mc_ref_rmsnorm_backward(mc_backend *be, void *dx /* [T, D] += */, void *xn /* or NULL */,
                             const void *dy /* [T, D] */, const void *x /* [T, D] */,
                             mc_wt w /* [D] */, int T, int D, float eps);
void mc_ref_rope_backward(mc_backend *be, void *dx /* [T, ldx] */, int ldx,
                          const int32_t *pos /* [T] */, int T, int H, int hd, float theta);
void mc_ref_attention_backward(mc_backend *be, void *dq /* [T, Hq*hd] */,
                               void *dk /* [T, Hkv*hd] */, void *dv /* [T, Hkv*hd] */,
                               const void *dout /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                               const void *k /* [T, Hkv*hd] */, const void *v /* [T, Hkv*hd] */,
                               int T, int Hq, int Hkv, int hd);
void mc_ref_swiglu_backward(mc_backend *be, void *dgate /* [n] */, void *dup /* [n] */,
                            void *h /* [n] or NULL */, const void *dout /* [n] */,
                            const void *gate /* [n] */, const void *up /* [n] */, size_t n);
mc_status mc_ref_linear_xent(mc_backend *be, void *dh /* [T, D] or NULL */, double *loss_sum,
                             const void *h /* [T, D] */, mc_wt w /* [V, D] */,
                             const int32_t *targets /* [T] */, int T, int D, int V,
                             float grad_scale);
void mc_ref_dropout(mc_backend *be, void *out /* [n] */, const void *x /* [n] */, size_t n, float p,
                    uint64_t seed);
/* AdamW's scalars for one step: k = {1 - lr wd, 1 - b1, b2, 1 - b2, sqrt(1 - b2^step), eps,
 * -lr / (1 - b1^step)}, computed in double and rounded to f32 once. */
void mc_adamw_constants(float k[7], float lr, float b1, float b2, float eps, float wd, int step);
/* The AdamW update of elements [i0, i1), one rounding per operation (the reference's
 * arithmetic; the vector kernel matches it bit for bit). */
void mc_adamw_range(float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                    float *v /* [n] */, size_t i0, size_t i1, const float *k /* [7] */);
void mc_ref_adamw(mc_backend *be, float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                  float *v /* [n] */, size_t n, float lr, float b1, float b2, float eps, float wd,
                  int step);
double mc_ref_sumsq_f32(mc_backend *be, const float *x /* [n] */, size_t n);
void mc_ref_scale_f32(mc_backend *be, float *x /* [n] */, size_t n, float alpha);
void mc_ref_zero(mc_backend *be, void *p /* [bytes] */, size_t bytes);

/* ---- fast kernels (cpu_train.c); be->impl is an mc_cpu ---- */
void mc_fast_gemm_f32(mc_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                      const float *A /* [M, lda] or [K, lda] when ta */, int lda,
                      const float *B /* [K, ldb] or [N, ldb] when tb */, int ldb, float beta,
                      float *C /* [M, ldc] */, int ldc);
void mc_fast_matmul_dx(mc_backend *be, void *dx /* [M, K] */, const void *dy /* [M, N] */,
                       mc_wt w /* [N, K] */, int M, int N, int K, bool accumulate);
void mc_fast_rmsnorm_backward(mc_backend *be, void *dx /* [T, D] += */, void *xn /* or NULL */,
                              const void *dy /* [T, D] */, const void *x /* [T, D] */,
                              mc_wt w /* [D] */, int T, int D, float eps);
void mc_fast_rope_backward(mc_backend *be, void *dx /* [T, ldx] */, int ldx,
                           const int32_t *pos /* [T] */, int T, int H, int hd, float theta);
void mc_fast_attention_backward(mc_backend *be, void *dq /* [T, Hq*hd] */,
                                void *dk /* [T, Hkv*hd] */, void *dv /* [T, Hkv*hd] */,
                                const void *dout /* [T, Hq*hd] */, const void *q /* [T, Hq*hd] */,
                                const void *k /* [T, Hkv*hd] */, const void *v /* [T, Hkv*hd] */,
                                int T, int Hq, int Hkv, int hd);
void mc_fast_swiglu_backward(mc_backend *be, void *dgate /* [n] */, void *dup /* [n] */,
                             void *h /* [n] or NULL */, const void *dout /* [n] */,
                             const void *gate /* [n] */, const void *up /* [n] */, size_t n);
mc_status mc_fast_linear_xent(mc_backend *be, void *dh /* [T, D] or NULL */, double *loss_sum,
                              const void *h /* [T, D] */, mc_wt w /* [V, D] */,
                              const int32_t *targets /* [T] */, int T, int D, int V,
                              float grad_scale);
void mc_fast_dropout(mc_backend *be, void *out /* [n] */, const void *x /* [n] */, size_t n,
                     float p, uint64_t seed);
void mc_fast_adamw(mc_backend *be, float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                   float *v /* [n] */, size_t n, float lr, float b1, float b2, float eps, float wd,
                   int step);
double mc_fast_sumsq_f32(mc_backend *be, const float *x /* [n] */, size_t n);
void mc_fast_scale_f32(mc_backend *be, float *x /* [n] */, size_t n, float alpha);
void mc_fast_zero(mc_backend *be, void *p /* [bytes] */, size_t bytes);

#endif /* MC_BACKEND_CPU_TRAIN_H */
