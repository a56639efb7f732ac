/* bench_gemm_floor.cu - the time the frozen-weight GEMMs of one LoRA training step take in
 * cuBLAS on this device, whatever else the step does: a floor under the step's time, and
 * so a ceiling on its tokens/s.
 *
 * A step of M tokens (4 x 1024 by default) through a Qwen2 model (the 0.5B preset's shapes
 * by default: hidden 896, 2 key/value heads of 64, MLP 4864, 24 layers, vocabulary 151936)
 * multiplies every frozen weight W [N, K] twice: y = x W^T forward and dx = dy W backward
 * (no weight gradient: W is frozen), seven projections a layer plus the vocabulary
 * projection. Each distinct shape is timed with bf16 operands and f32 accumulation:
 * cublasGemmEx with its default algorithm and an f32 result, cuBLASLt's first heuristic
 * choice (64 MiB of workspace) with an f32 result, and the fastest of its heuristic
 * algorithms (up to 16) with an f32 and with a bf16 result. Times are the mean of 20 calls
 * after 3 warm-up calls, in one stream, nothing else running. Prints each shape and the
 * sums for a step.
 * Usage: bench_gemm_floor [M] (a CUDA device with bf16 tensor cores). Built only with
 * MC_CUDA. */
#include <cstdio>
#include <cstdlib>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kWarm = 3, kTimed = 20, kAlgos = 16;
constexpr size_t kWorkspace = (size_t)64 << 20;

struct Shape {
    const char *name;
    int N, K;  /* the weight is [N, K] */
    int count; /* weights of this shape in the model */
};

bool ok_cuda(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    std::fprintf(stderr, "bench_gemm_floor: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

/* Values in [-0.05, 0.05] that vary from element to element (the GEMMs' inputs). */
__global__ void fill_kernel(__nv_bfloat16 *p, size_t n, float phase) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16(0.05f * __sinf((float)(i % 100003u) * 0.61803f + phase));
}

/* Mean seconds per call of f() over kTimed calls after kWarm; negative on failure. */
template <typename F> double time_calls(cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1, F f) {
    for (int i = 0; i < kWarm; i++)
        if (!f()) return -1.0;
    (void)cudaEventRecord(e0, s);
    for (int i = 0; i < kTimed; i++)
        if (!f()) return -1.0;
    (void)cudaEventRecord(e1, s);
    if (cudaEventSynchronize(e1) != cudaSuccess) return -1.0;
    float ms = 0.0f;
    (void)cudaEventElapsedTime(&ms, e0, e1);
    return (double)ms * 1e-3 / kTimed;
}

struct Ctx {
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    cudaStream_t s;
    cudaEvent_t e0, e1;
    void *work;
    const __nv_bfloat16 *w, *act; /* weight [N, K]; input [M, K] or [M, N] */
    void *out;
};

/* Column-major view of the row-major products: forward y^T [N, M] = W [K, N]^T x^T [K, M];
 * backward dx^T [K, M] = W [K, N] dy^T [N, M]. */
struct Gemm {
    bool dx;
    int M, N, K;
    int rows() const { return dx ? K : N; }
    int inner() const { return dx ? N : K; }
};

double time_default(const Ctx &c, const Gemm &g) {
    const float one = 1.0f, zero = 0.0f;
    return time_calls(c.s, c.e0, c.e1, [&] {
        return cublasGemmEx(c.blas, g.dx ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, g.rows(), g.M,
                            g.inner(), &one, c.w, CUDA_R_16BF, g.K, c.act, CUDA_R_16BF, g.inner(),
                            &zero, c.out, CUDA_R_32F, g.rows(), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
    });
}

/* The fastest of cuBLASLt's heuristic algorithms for g with an out_type result (first:
 * only the heuristic's first choice). */
double time_lt(const Ctx &c, const Gemm &g, cudaDataType_t out_type, bool first) {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t res[kAlgos];
    const cublasOperation_t ta = g.dx ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const float one = 1.0f, zero = 0.0f;
    int n = 0;
    double best = -1.0;
    if (cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS)
        return -1.0;
    (void)cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    (void)cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    /* A: W as stored, [K, N] column-major; B: the activation [inner, M]; C: [rows, M] */
    if (cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, (uint64_t)g.K, (uint64_t)g.N, g.K) ==
            CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, (uint64_t)g.inner(), (uint64_t)g.M,
                                   g.inner()) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&lc, out_type, (uint64_t)g.rows(), (uint64_t)g.M, g.rows()) ==
            CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS) {
        const size_t ws = kWorkspace;
        (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws, sizeof ws);
        if (cublasLtMatmulAlgoGetHeuristic(c.lt, desc, la, lb, lc, lc, pref, kAlgos, res, &n) !=
            CUBLAS_STATUS_SUCCESS)
            n = 0;
    }
    for (int i = 0; i < (first && n > 0 ? 1 : n); i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        const double t = time_calls(c.s, c.e0, c.e1, [&] {
            return cublasLtMatmul(c.lt, desc, &one, c.w, la, c.act, lb, &zero, c.out, lc, c.out,
                                  lc, &res[i].algo, c.work, kWorkspace,
                                  c.s) == CUBLAS_STATUS_SUCCESS;
        });
        if (t > 0 && (best < 0 || t < best)) best = t;
    }
    (void)cudaGetLastError();
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (lc) (void)cublasLtMatrixLayoutDestroy(lc);
    if (lb) (void)cublasLtMatrixLayoutDestroy(lb);
    if (la) (void)cublasLtMatrixLayoutDestroy(la);
    (void)cublasLtMatmulDescDestroy(desc);
    return best;
}

} // namespace

int main(int argc, char **argv) {
    const int M = argc > 1 ? std::atoi(argv[1]) : 4096;
    const int L = 24, D = 896, KV = 128, F = 4864, V = 151936;
    const Shape shapes[] = {{"q, o (896 x 896)", D, D, 2 * L},
                            {"k, v (128 x 896)", KV, D, 2 * L},
                            {"gate, up (4864 x 896)", F, D, 2 * L},
                            {"down (896 x 4864)", D, F, L},
                            {"vocabulary (151936 x 896)", V, D, 1}};
    Ctx c = {};
    size_t wmax = 0, amax = 0;
    if (M <= 0) {
        std::fprintf(stderr, "usage: bench_gemm_floor [tokens > 0]\n");
        return 2;
    }
    for (const Shape &s : shapes) {
        wmax = (size_t)s.N * s.K > wmax ? (size_t)s.N * s.K : wmax;
        const size_t big = (size_t)(s.N > s.K ? s.N : s.K);
        amax = (size_t)M * big > amax ? (size_t)M * big : amax;
    }
    void *w = nullptr, *act = nullptr;
    if (!ok_cuda(cudaStreamCreate(&c.s), "stream") || !ok_cuda(cudaEventCreate(&c.e0), "event") ||
        !ok_cuda(cudaEventCreate(&c.e1), "event") ||
        !ok_cuda(cudaMalloc(&w, wmax * 2), "weights") ||
        !ok_cuda(cudaMalloc(&act, amax * 2), "activations") ||
        !ok_cuda(cudaMalloc(&c.out, amax * 4), "output") ||
        !ok_cuda(cudaMalloc(&c.work, kWorkspace), "workspace"))
        return 1;
    if (cublasCreate(&c.blas) != CUBLAS_STATUS_SUCCESS ||
        cublasLtCreate(&c.lt) != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "bench_gemm_floor: cuBLAS initialisation failed\n");
        return 1;
    }
    (void)cublasSetStream(c.blas, c.s);
    fill_kernel<<<1024, 256, 0, c.s>>>((__nv_bfloat16 *)w, wmax, 0.0f);
    fill_kernel<<<1024, 256, 0, c.s>>>((__nv_bfloat16 *)act, amax, 1.0f);
    if (!ok_cuda(cudaStreamSynchronize(c.s), "fill")) return 1;
    c.w = (const __nv_bfloat16 *)w;
    c.act = (const __nv_bfloat16 *)act;
    cudaDeviceProp prop;
    (void)cudaGetDeviceProperties(&prop, 0);
    std::printf("device: %s; one LoRA training step of %d tokens: every frozen weight forward "
                "(y = x W^T) and backward (dx = dy W)\n", prop.name, M);
    std::printf("%-27s %-8s %5s %21s %21s %21s %21s\n", "weight", "product", "count",
                "GemmEx default, f32", "Lt first choice, f32", "best Lt, f32", "best Lt, bf16");
    double sum[4] = {0, 0, 0, 0}, flops = 0;
    for (const Shape &s : shapes) {
        for (int dx = 0; dx < 2; dx++) {
            const Gemm g = {dx == 1, M, s.N, s.K};
            const double f = 2.0 * M * (double)s.N * s.K;
            const double t[4] = {time_default(c, g), time_lt(c, g, CUDA_R_32F, true),
                                 time_lt(c, g, CUDA_R_32F, false),
                                 time_lt(c, g, CUDA_R_16BF, false)};
            std::printf("%-27s %-8s %5d", s.name, dx ? "dy W" : "x W^T", s.count);
            for (int k = 0; k < 4; k++) {
                if (t[k] <= 0) {
                    std::printf(" %21s", "failed");
                    continue;
                }
                sum[k] += t[k] * s.count;
                std::printf(" %8.1f us %4.0f TF/s", t[k] * 1e6, f / t[k] / 1e12);
            }
            std::printf("\n");
            flops += f * s.count;
        }
    }
    std::printf("step (%.2f TFLOP): GemmEx default f32 %.2f ms, cuBLASLt first choice f32 %.2f "
                "ms, best cuBLASLt f32 %.2f ms, bf16 %.2f ms\n", flops / 1e12, sum[0] * 1e3,
                sum[1] * 1e3, sum[2] * 1e3, sum[3] * 1e3);
    const double floor_s = sum[2] < sum[3] ? sum[2] : sum[3];
    std::printf("ceiling if the step did nothing but these GEMMs: %.0f tokens/s (%.0f TFLOP/s)\n",
                M / floor_s, flops / floor_s / 1e12);
    return 0;
}
