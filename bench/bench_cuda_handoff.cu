/* bench_cuda_handoff.cu - what it costs one kernel of a CUDA graph to wait for the one
 * before it, the way a decode step's kernels do, against a hand-over through a counter in
 * device memory (the way a persistent kernel's phases would hand over).
 *
 * A chain of 168 kernels (seven per layer of a 24-layer model) is captured as one graph of
 * programmatic dependent launches. Kernel i reads the 896 floats kernel i - 1 wrote (work
 * 1; work 0 reads nothing) and writes its own 896, spread over its blocks. It waits for
 * kernel i - 1 either with griddepcontrol.wait (the grid has finished and its writes are
 * visible) or by polling a counter that every block of kernel i - 1 raises with a release
 * add once its writes are done (an acquire load sees them). Every kernel lets the next one
 * launch at its start, as the backend's kernels do. Prints the time per kernel, best and
 * mean of 30 graph launches, for grids of 1 to 448 blocks of 128 threads.
 * Usage: bench_cuda_handoff (a CUDA device of compute capability 9.0). Built only with
 * MC_CUDA. */
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace {

constexpr int kWidth = 896;   /* floats handed from kernel to kernel (a hidden row) */
constexpr int kChain = 168;   /* kernels in the graph */
constexpr int kThreads = 128; /* threads a block */
constexpr int kLaunches = 30; /* graph launches timed per case (the first 10 warm up) */

struct HandoffArgs {
    const float *in;          /* [kWidth] written by the previous kernel */
    float *out;               /* [kWidth] */
    const unsigned *wait_cnt; /* counter of the previous kernel, or nullptr (first kernel) */
    unsigned *done_cnt;       /* this kernel's counter */
    unsigned target;          /* blocks of the previous kernel */
    int flag;                 /* 1: hand over through the counters, 0: griddepcontrol.wait */
    int work;                 /* 1: read the previous kernel's output */
};

__device__ __forceinline__ unsigned load_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void add_release(unsigned *p, unsigned v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__global__ void __launch_bounds__(kThreads) handoff_kernel(const HandoffArgs a) {
    __shared__ float part[kThreads / 32];
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (!a.flag || !a.wait_cnt) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else {
        if (threadIdx.x == 0)
            while (load_acquire(a.wait_cnt) < a.target) {
            }
        __syncthreads();
    }
    float s = 0.0f;
    if (a.work)
        for (int i = (int)threadIdx.x; i < kWidth; i += kThreads)
            s += __ldcg(a.in + i) * (float)(i & 7);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; w++) total += part[w];
    const int per = (kWidth + (int)gridDim.x - 1) / (int)gridDim.x;
    for (int i = (int)threadIdx.x; i < per; i += kThreads) {
        const int j = (int)blockIdx.x * per + i;
        if (j < kWidth) a.out[j] = total * 1e-3f + (float)j;
    }
    if (a.flag) {
        __syncthreads(); /* the block's writes are issued before its release */
        if (threadIdx.x == 0) add_release(a.done_cnt, 1u);
    }
}

bool ok(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    std::fprintf(stderr, "bench_cuda_handoff: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

/* Times one case; false on a CUDA failure. */
bool run_case(cudaStream_t s, float *buf, unsigned *cnt, int grid, int flag, int work) {
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ge = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    float best = 1e30f, sum = 0.0f;
    bool good = ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "capture");
    for (int i = 0; good && i < kChain; i++) {
        HandoffArgs a;
        a.in = buf + (size_t)i * kWidth;
        a.out = buf + (size_t)(i + 1) * kWidth;
        a.wait_cnt = i > 0 ? cnt + i - 1 : nullptr;
        a.done_cnt = cnt + i;
        a.target = (unsigned)grid;
        a.flag = flag;
        a.work = work;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)grid);
        cfg.blockDim = dim3(kThreads);
        cfg.stream = s;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        good = ok(cudaLaunchKernelEx(&cfg, handoff_kernel, a), "launch");
    }
    good = ok(cudaStreamEndCapture(s, &g), "end capture") && good;
    good = good && ok(cudaGraphInstantiate(&ge, g, 0), "instantiate");
    good = good && ok(cudaEventCreate(&e0), "event") && ok(cudaEventCreate(&e1), "event");
    for (int r = 0; good && r < kLaunches; r++) {
        float ms = 0.0f;
        good = ok(cudaMemsetAsync(cnt, 0, (kChain + 1) * sizeof(unsigned), s), "memset") &&
               ok(cudaEventRecord(e0, s), "record") && ok(cudaGraphLaunch(ge, s), "graph launch") &&
               ok(cudaEventRecord(e1, s), "record") && ok(cudaEventSynchronize(e1), "sync") &&
               ok(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        if (ms < best) best = ms;
        if (r >= 10) sum += ms;
    }
    if (good)
        std::printf("%-6s work %d  grid %4d blocks: %6.2f us per kernel (best), %6.2f (mean)\n",
                    flag ? "flag" : "wait", work, grid, 1e3f * best / kChain,
                    1e3f * sum / (kLaunches - 10) / kChain);
    if (e0) (void)cudaEventDestroy(e0);
    if (e1) (void)cudaEventDestroy(e1);
    if (ge) (void)cudaGraphExecDestroy(ge);
    if (g) (void)cudaGraphDestroy(g);
    return good;
}

} /* namespace */

int main() {
    const int grids[] = {1, 112, 224, 448};
    float *buf = nullptr;
    unsigned *cnt = nullptr;
    cudaStream_t s = nullptr;
    bool good = ok(cudaMalloc(&buf, (size_t)(kChain + 1) * kWidth * sizeof(float)), "cudaMalloc") &&
                ok(cudaMemset(buf, 0, (size_t)(kChain + 1) * kWidth * sizeof(float)), "memset") &&
                ok(cudaMalloc(&cnt, (kChain + 1) * sizeof(unsigned)), "cudaMalloc") &&
                ok(cudaStreamCreate(&s), "stream");
    for (int work = 0; good && work < 2; work++)
        for (int flag = 0; good && flag < 2; flag++)
            for (int grid : grids) good = good && run_case(s, buf, cnt, grid, flag, work);
    if (s) (void)cudaStreamDestroy(s);
    if (cnt) (void)cudaFree(cnt);
    if (buf) (void)cudaFree(buf);
    return good ? EXIT_SUCCESS : EXIT_FAILURE;
}
