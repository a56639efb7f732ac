/* cpu_convert.h - weights (bf16/f16/f32) to f32 tiles for CPU kernels that multiply with
 * OpenBLAS sgemm: a contiguous run (AVX2/F16C when the caller's variant allows it) and a
 * strided block of a row-major matrix. Conversion is exact. Header-only so that the
 * forward matmul and the training kernels share it. */
#ifndef MC_BACKEND_CPU_CONVERT_H
#define MC_BACKEND_CPU_CONVERT_H

#include "cpu_simd.h"

#include "../../core/core.h"

#include <stdbool.h>

#if MC_CPU_X86
/* n elements of dtype t at src to f32 at dst, 8 at a time. Call only when the processor
 * has AVX2/F16C (an mc_cpu of variant MC_CPU_AVX2). */
static inline MC_AVX2 void mc_cpu_convert_avx2(float *dst /* [n] */, const void *src /* [n] */,
                                               mc_dtype t, size_t n) {
    size_t i = 0;
    switch (t) {
    case MC_BF16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, mc_ld8(src, MC_BF16, i));
        break;
    case MC_F16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, mc_ld8(src, MC_F16, i));
        break;
    case MC_F32: break;
    }
    if (i < n) mc_convert_to_f32(dst + i, (const char *)src + i * mc_dtype_size(t), t, n - i);
}
#endif

/* dst[r, c] = W[r0 + r, c0 + c] as f32 for r < nr, c < nc: a block of the row-major weight
 * matrix W [*, ldw] of dtype t into a dense [nr, nc] tile. avx2: use the AVX2 loop. */
static inline void mc_cpu_convert_block(bool avx2, float *dst /* [nr, nc] */,
                                        const void *w /* [*, ldw] */, mc_dtype t, size_t ldw,
                                        size_t r0, size_t c0, size_t nr, size_t nc) {
    size_t es = mc_dtype_size(t);
    for (size_t r = 0; r < nr; r++) {
        const void *src = (const char *)w + ((r0 + r) * ldw + c0) * es; /* [nc] */
#if MC_CPU_X86
        if (avx2) {
            mc_cpu_convert_avx2(dst + r * nc, src, t, nc);
            continue;
        }
#endif
        mc_convert_to_f32(dst + r * nc, src, t, nc);
    }
    (void)avx2;
}

#endif /* MC_BACKEND_CPU_CONVERT_H */
