/* cpu_simd.h - AVX2/FMA/F16C helpers for the fast CPU kernels: 8-wide loads of weights in
 * any stored dtype, horizontal sums, and a vector exp.
 *
 * Everything here is compiled for AVX2 through function attributes only, so the library
 * builds without -mavx2 and runs anywhere; callers check mc_cpu_has_avx2() (the backend's
 * variant) before calling a function marked MC_AVX2. On other architectures MC_CPU_X86 is
 * 0 and this header declares nothing. */
#ifndef MC_BACKEND_CPU_SIMD_H
#define MC_BACKEND_CPU_SIMD_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MC_CPU_X86 1
#else
#define MC_CPU_X86 0
#endif

#if MC_CPU_X86
#include <immintrin.h>

#include "../../core/core.h"

#define MC_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MC_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* 8 bf16 values at p (unaligned) as f32 (exact). */
MC_AVX2_INLINE __m256 mc_ld8_bf16(const uint16_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

/* 8 f16 values at p (unaligned) as f32 (exact). */
MC_AVX2_INLINE __m256 mc_ld8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

/* Elements i..i+7 of a dtype-typed array as f32. t is a constant after inlining. */
MC_AVX2_INLINE __m256 mc_ld8(const void *p /* [>= i+8] */, mc_dtype t, size_t i) {
    switch (t) {
    case MC_BF16: return mc_ld8_bf16((const uint16_t *)p + i);
    case MC_F16: return mc_ld8_f16((const uint16_t *)p + i);
    case MC_F32: break;
    }
    return _mm256_loadu_ps((const float *)p + i);
}

/* Sum of the 8 lanes. */
MC_AVX2_INLINE float mc_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Largest of the 8 lanes. */
MC_AVX2_INLINE float mc_hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) per lane, relative error below 2e-7 over the normal range (Cody-Waite reduction
 * by ln 2 and a degree-6 polynomial, as in Cephes expf). Returns +0 for x < -87.33 (where
 * expf would be subnormal or 0) and +inf for x > 88.72; NaN lanes stay NaN. */
MC_AVX2_INLINE __m256 mc_exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.7228317f);
    const __m256 lo = _mm256_set1_ps(-87.3365479f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln2, ln2 split in two so that n * C1 is exact */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* scale by 2^n in two steps so that n = 128 (x near the top) does not overflow early */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1);
    __m256 s1 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

#endif /* MC_CPU_X86 */
#endif /* MC_BACKEND_CPU_SIMD_H */
