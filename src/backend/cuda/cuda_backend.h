/* cuda_backend.h - C interface of the CUDA backend ("cuda"): creation, and the device
 * facts benchmarks and tools report (memory use, copy bandwidth).
 *
 * The backend fills every entry of the ops table (backend.h) with CUDA kernels and
 * cuBLAS / cuBLASLt calls on one stream of one device. Activations are f32 (act_dtype
 * MC_F32) so the LoRA paths (gemm_f32 on float pointers) work unchanged; each GEMM reads its
 * activation operand converted to the weight's dtype (bf16 or f16; f32 weights stay f32)
 * with f32 accumulation and an f32 result, except that the wide intermediates of a
 * training-sized MLP (gate, up, their SwiGLU, and the gradients of the down projection
 * and the SwiGLU) and the RMSNorm outputs of hidden-size rows are held in bf16 inside their own buffers ("packed"; MC_CUDA_NOFUSE=pack:
 * not), read in place by the ops that take bf16 and expanded to f32 for any other reader,
 * so callers see f32 values rounded to bf16. Weights are uploaded once by be->weights and freed by
 * be->release_weights. Ops that return void queue work and record the first failure; it
 * is reported (MC_ERR_BACKEND, or MC_ERR_OOM for device memory) by the next sync,
 * to_host, to_host_f32 or linear_xent. Built only with MC_CUDA (defines MC_HAVE_CUDA). */
#ifndef MC_BACKEND_CUDA_H
#define MC_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "../backend.h"

/* Creates a backend on CUDA device `device` (0 = the first). MC_ERR_BACKEND with a
 * message when no CUDA device or driver is usable or `device` does not exist; MC_ERR_OOM
 * when the stream, cuBLAS handle or scratch cannot be had. *out is NULL on failure.
 * Environment: MC_CUDA_GRAPHS=0 turns off replaying decode steps as CUDA graphs;
 * MC_CUDA_PDL=0 turns off programmatic dependent launches; MC_CUDA_FUSE=0 turns off fusing
 * consecutive ops (add + RMSNorm, q/k/v GEMVs, RoPE of q and k, SwiGLU + down GEMV);
 * MC_CUDA_GEMM=default runs the GEMMs of many rows through cublasGemmEx's own algorithm
 * choice instead of cuBLASLt's fastest candidate for each shape (timed when the shape comes
 * back after a synchronisation, so a one-off pass does not pay for the choice);
 * MC_CUDA_PROFILE=1 times every kernel (see mc_cuda_profile_report). */
mc_status mc_backend_cuda_create(int device, mc_backend **out);

/* True when `be` is a CUDA backend. */
bool mc_backend_is_cuda(const mc_backend *be);

/* Device memory this backend holds now and at most since creation (or the last reset),
 * in bytes: weights, buffers and the backend's own scratch. */
void mc_cuda_memory(const mc_backend *be, uint64_t *now, uint64_t *peak);
/* Starts peak tracking again from the current use. */
void mc_cuda_memory_reset_peak(mc_backend *be);

/* Device-to-device copy rate of this backend's device in bytes/s (bytes read plus bytes
 * written, best of `rounds` copies of `bytes`); 0 on failure. For roofline figures. */
double mc_cuda_copy_bandwidth(mc_backend *be, size_t bytes, int rounds);

/* bf16 GEMM rate (FLOP/s) of cuBLAS for [M, K] x [K, N] with f32 accumulation (best of
 * rounds, random inputs); 0 on failure. */
double mc_cuda_gemm_rate(mc_backend *be, int M, int N, int K, int rounds);

/* Graph launches, graph builds and direct kernel launches since creation. */
void mc_cuda_stats(const mc_backend *be, long *graph_launches, long *graph_builds,
                   long *kernel_launches);

/* Seconds the host has spent blocked waiting for the device in the backend's stream
 * synchronisations (copies to the host, sync) since creation: what is left of a step's
 * time is host work (when this is small, the host is what a step waits for). */
double mc_cuda_sync_wait(const mc_backend *be);

/* Host time spent updating cached graphs' kernel arguments (and the kernel nodes whose
 * arguments changed) and launching graphs, since creation: parts of a step's host work. */
void mc_cuda_host_stats(const mc_backend *be, double *update_s, long *node_updates,
                        double *graph_launch_s);

/* With MC_CUDA_IDLE=1 set when the backend was made: seconds the device stood idle between
 * the end of the work before each stream synchronisation and the first work queued after
 * it (a decode step's turnaround on the host), summed over *samples such gaps; 0 without. */
double mc_cuda_device_idle(const mc_backend *be, long *samples);

/* Attention backwards (flash path) since creation that took the log-sum-exp rows their
 * forward had left instead of running the forward again. */
long mc_cuda_attention_reuse(const mc_backend *be);

/* Packed activations (the MLP's wide intermediates held in bf16 in their own buffers): the
 * ranges packed now in *live (when not NULL); returns how many ranges were expanded back to
 * f32 since creation because something read them in f32 or wrote part of one. */
long mc_cuda_packed_stats(const mc_backend *be, int *live);

/* How many rank-r LoRA updates of gate and up outputs their GEMMs computed over widened
 * operands (K concatenation) since creation. */
long mc_cuda_kcat_stats(const mc_backend *be);

/* How many pairs of a projection's LoRA products of its output gradient (the B gradient and
 * t = s dy B) one kernel computed in one pass since creation. */
long mc_cuda_dual_stats(const mc_backend *be);

/* How many A-gradient sums over token rows (gA += s T^T x, x read in bf16) the kernel of
 * their own computed since creation. */
long mc_cuda_ga_stats(const mc_backend *be);

/* How many RoPE launches added the held rank-r LoRA updates of their inputs (q, k and v)
 * since creation. */
long mc_cuda_lrope_stats(const mc_backend *be);

/* With MC_CUDA_PROFILE=1 in the environment at creation, every kernel and cuBLAS call is
 * timed with events (launches serialised, no graphs); this formats the per-name device
 * time table into buf (cap bytes, NUL-terminated) and returns its length; reset empties
 * the table. Returns 0 when profiling is off. */
size_t mc_cuda_profile_report(mc_backend *be, char *buf, size_t cap, bool reset);

/* Name of the device ("NVIDIA H100 80GB HBM3"), its multiprocessor count and memory. */
const char *mc_cuda_device_name(const mc_backend *be);
void mc_cuda_device_info(const mc_backend *be, int *n_sm, uint64_t *total_mem);

#ifdef __cplusplus
}
#endif

#endif /* MC_BACKEND_CUDA_H */
