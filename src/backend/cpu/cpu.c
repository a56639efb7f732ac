/* cpu.c - the CPU backends' memory functions and ops-table construction ("cpu-ref": the
 * reference kernels on one thread; "cpu": the fast kernels on OpenMP threads). Device
 * memory is host memory; weights are used in place (e.g. straight from an mmapped file). */
#include "cpu.h"
#include "cpu_train.h"

#include "cpu_simd.h"

#include <omp.h>
#include <stdio.h>
#if MC_CPU_X86
#include <cpuid.h>
#endif

/* 64-byte-aligned host memory; NULL on failure (including injected failures). */
static void *cpu_alloc(mc_backend *be, size_t bytes) {
    (void)be;
    return mc_aligned_alloc(bytes);
}

static void cpu_free(mc_backend *be, void *p) {
    (void)be;
    mc_aligned_free(p);
}

/* Host <-> device copies are plain memory copies; regions may overlap for copy(). */
static mc_status cpu_to_device(mc_backend *be, void *dst, const void *host_src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, host_src, bytes);
    return MC_OK;
}

static mc_status cpu_to_host(mc_backend *be, void *host_dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(host_dst, src, bytes);
    return MC_OK;
}

static mc_status cpu_copy(mc_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return MC_OK;
}

/* Weights are used where they lie: nothing is copied or kept. */
static mc_status cpu_weights(mc_backend *be, const void *host, size_t bytes, const void **dev) {
    (void)be;
    (void)bytes;
    *dev = host;
    return MC_OK;
}

static void cpu_release_weights(mc_backend *be, const void *dev) {
    (void)be;
    (void)dev;
}

static mc_status cpu_sync(mc_backend *be) {
    (void)be;
    return MC_OK;
}

/* Activations are f32 already. */
static mc_status cpu_to_host_f32(mc_backend *be, float *host_dst, const void *src, size_t n) {
    (void)be;
    if (n) memcpy(host_dst, src, n * sizeof(float));
    return MC_OK;
}

static mc_status cpu_argmax_rows(mc_backend *be, int32_t *out, const void *x, int rows, int n) {
    (void)be;
    for (int r = 0; r < rows; r++) {
        mc_status s = mc_argmax_row((const float *)x + (size_t)r * (size_t)n, n, r, &out[r]);
        if (s != MC_OK) return s;
    }
    return MC_OK;
}

/* The argmax now (the CPU has nothing queued), kept for argmax_wait. */
static mc_status cpu_argmax_queue(mc_backend *be, int32_t *ids, const void *x, int rows, int n) {
    mc_cpu *cpu = be->impl;
    int slot, r;
    if (rows <= 0 || rows > MC_ARGMAX_QUEUE_ROWS || n <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_queue: %d rows of %d (1 to %d rows)", rows, n,
                       MC_ARGMAX_QUEUE_ROWS);
    if (cpu->aq_count == 2)
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_queue: two argmaxes queued and not waited for");
    slot = (cpu->aq_head + cpu->aq_count) & 1;
    cpu->aq[slot].rows = rows;
    cpu->aq[slot].st = MC_OK;
    for (r = 0; r < rows; r++) {
        mc_status s = mc_argmax_row((const float *)x + (size_t)r * (size_t)n, n, r, &ids[r]);
        if (s != MC_OK) {
            ids[r] = 0; /* a valid token for a step that will not be kept */
            if (cpu->aq[slot].st == MC_OK) {
                cpu->aq[slot].st = s;
                snprintf(cpu->aq[slot].msg, sizeof cpu->aq[slot].msg, "%s", mc_last_error());
            }
        }
        cpu->aq[slot].ids[r] = ids[r];
    }
    cpu->aq_count++;
    mc_error_clear();
    return MC_OK;
}

static mc_status cpu_argmax_wait(mc_backend *be, int32_t *out, int rows) {
    mc_cpu *cpu = be->impl;
    int slot;
    if (cpu->aq_count == 0) return mc_fail(MC_ERR_INVALID_ARG, "argmax_wait: no argmax is queued");
    slot = cpu->aq_head;
    cpu->aq_head ^= 1;
    cpu->aq_count--;
    if (rows != cpu->aq[slot].rows)
        return mc_fail(MC_ERR_INVALID_ARG, "argmax_wait: %d rows asked, %d queued", rows,
                       cpu->aq[slot].rows);
    if (cpu->aq[slot].st != MC_OK) return mc_fail(cpu->aq[slot].st, "%s", cpu->aq[slot].msg);
    memcpy(out, cpu->aq[slot].ids, (size_t)rows * sizeof *out);
    return MC_OK;
}

static void cpu_fill_positions(mc_backend *be, int32_t *pos, int start, int T) {
    (void)be;
    for (int t = 0; t < T; t++) pos[t] = start + t;
}

static void cpu_destroy(mc_backend *be) {
    mc_cpu *cpu;
    if (!be) return;
    cpu = be->impl;
    if (cpu) mc_aligned_free(cpu->scratch);
    mc_free(cpu);
    mc_free(be);
}

bool mc_cpu_has_avx2(void) {
#if MC_CPU_X86
    unsigned a, b, c, d;
    __builtin_cpu_init();
    /* F16C through cpuid: clang's __builtin_cpu_supports does not know the name */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C)) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

/* Fills the memory entries (shared by all variants) and the op entries of one variant. */
static void cpu_fill_table(mc_backend *be, mc_cpu_variant variant) {
    be->act_dtype = MC_F32;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->to_device = cpu_to_device;
    be->to_host = cpu_to_host;
    be->copy = cpu_copy;
    be->weights = cpu_weights;
    be->release_weights = cpu_release_weights;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;
    be->to_host_f32 = cpu_to_host_f32;
    be->argmax_rows = cpu_argmax_rows;
    be->argmax_queue = cpu_argmax_queue;
    be->argmax_wait = cpu_argmax_wait;
    be->fill_positions = cpu_fill_positions;
    be->attention_rows = mc_attention_rows_by_row;
    if (variant == MC_CPU_REF) {
        be->name = "cpu-ref";
        be->embedding = mc_ref_embedding;
        be->rmsnorm = mc_ref_rmsnorm;
        be->matmul = mc_ref_matmul;
        be->rope = mc_ref_rope;
        be->attention = mc_ref_attention;
        be->swiglu = mc_ref_swiglu;
        be->add = mc_ref_add;
    } else {
        be->name = "cpu";
        be->embedding = mc_fast_embedding;
        be->rmsnorm = mc_fast_rmsnorm;
        be->matmul = mc_fast_matmul;
        be->matmul_multi = mc_fast_matmul_multi;
        be->rope = mc_fast_rope;
        be->attention = mc_fast_attention;
        be->swiglu = mc_fast_swiglu;
        be->add = mc_fast_add;
    }
}

mc_status mc_cpu_create(int n_threads, mc_cpu_variant variant, mc_backend **out) {
    mc_backend *be = NULL;
    mc_cpu *cpu = NULL;
    size_t bytes;
    *out = NULL;
    if (n_threads < 0)
        return mc_fail(MC_ERR_INVALID_ARG, "cpu backend: n_threads %d < 0", n_threads);
    if (variant == MC_CPU_AVX2 && !mc_cpu_has_avx2()) variant = MC_CPU_PORTABLE;
    be = mc_calloc(1, sizeof *be);
    cpu = mc_calloc(1, sizeof *cpu);
    if (!be || !cpu) goto oom;
    cpu->variant = variant;
    cpu->n_threads =
        variant == MC_CPU_REF ? 1 : (n_threads > 0 ? n_threads : omp_get_max_threads());
    if (cpu->n_threads < 1) cpu->n_threads = 1;
    cpu->gemv_max_m = MC_GEMV_MAX_M;
    atomic_flag_clear(&cpu->scratch_busy);
    if (variant != MC_CPU_REF) {
        if (!mc_mul_ok((size_t)cpu->n_threads, MC_CPU_SCRATCH_FLOATS * sizeof(float), &bytes))
            goto oom;
        cpu->scratch = mc_aligned_alloc(bytes);
        if (!cpu->scratch) goto oom;
    }
    be->impl = cpu;
    be->n_threads = cpu->n_threads;
    cpu_fill_table(be, variant);
    mc_cpu_install_train_ops(be, variant == MC_CPU_REF);
    *out = be;
    return MC_OK;
oom:
    if (cpu) mc_aligned_free(cpu->scratch);
    mc_free(cpu);
    mc_free(be);
    return mc_fail(MC_ERR_OOM, "cpu backend: out of memory for %d threads' scratch", n_threads);
}

mc_status mc_backend_cpu_create(int n_threads, bool reference, mc_backend **out) {
    return mc_cpu_create(n_threads, reference ? MC_CPU_REF : MC_CPU_AVX2, out);
}
