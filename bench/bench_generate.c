/* bench_generate.c - decode and prefill speed and memory of a checkpoint on the CPU,
 * reported against the machine's own ceilings measured in the same run:
 *   decode tokens/s at batch 1 with a 512-token context, as % of the bandwidth roofline
 *   (weight bytes read per token / measured read bandwidth). The VM's bandwidth drifts, so
 *   decode steps and plain reads of the same number of bytes alternate, and the median of
 *   the paired ratios is the figure (the end-to-end mc_generate rate is printed too);
 *   prefill tokens/s for a 512-token prompt, as % of the measured sgemm rate;
 *   peak resident memory (VmHWM, reset after the ceilings are measured) against weights +
 *   KV cache.
 * Usage: bench_generate (--model DIR | --preset NAME) [--ctx 512] [--gen 64] [--threads N]
 * A preset is written once (bf16, seed 0) under $TMPDIR/mcandle-bench-<preset>. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model.h"
#include "bench_util.h"
#include "roofline.h"

/* Peak resident set (VmHWM) in bytes, from /proc/self/status; 0 when unknown. */
static double vm_hwm(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtod(line + 6, NULL);
    fclose(f);
    return kb * 1024.0;
}

/* Resets the peak resident set to the current one (Linux: 5 > /proc/self/clear_refs). */
static void reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return;
    fputs("5", f);
    fclose(f);
}

int main(int argc, char **argv) {
    const char *dir = arg_str(argc, argv, "--model"), *preset = arg_str(argc, argv, "--preset");
    int ctx_n = arg_int(argc, argv, "--ctx", 512), gen = arg_int(argc, argv, "--gen", 64);
    int nt = arg_int(argc, argv, "--threads", omp_get_max_threads());
    char pdir[512];
    mc_model *m = NULL;
    mc_model_params mp = mc_model_default_params();
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    mc_generate_params gp = mc_generate_default_params();
    mc_generation g;
    mc_model_info info;
    int32_t *prompt = NULL;
    float *logits = NULL;
    double bw, gemm, t, best_prefill = 1e30, flops_prefill, bytes_tok, kv_bytes, embed_bytes;
    mc_dims d;
    int rc = 1;
    memset(&g, 0, sizeof g);
    if (!dir && preset) {
        snprintf(pdir, sizeof pdir, "%s/mcandle-bench-%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                 preset);
        dir = pdir;
        if (!mc_path_exists(pdir)) {
            fprintf(stderr, "writing %s ...\n", pdir);
            if (mc_checkpoint_init(preset, NULL, MC_BF16, 0, pdir) != MC_OK) {
                fprintf(stderr, "init: %s\n", mc_last_error());
                return 1;
            }
        }
    }
    if (!dir || ctx_n < 2 || gen < 1 || gen >= ctx_n || nt < 1) {
        fprintf(stderr, "usage: bench_generate (--model DIR | --preset NAME) [--ctx 512] [--gen 64] "
                "[--threads N]   (1 <= gen < ctx)\n");
        return 2;
    }
    bw = roofline_bandwidth(nt, 8);
    gemm = roofline_sgemm(512, 4864, 896, nt, 5);
    printf("machine: %d threads, read bandwidth %.2f GB/s, sgemm %.1f GFLOP/s\n", nt, bw / 1e9,
           gemm / 1e9);
    reset_hwm(); /* the 1 GiB bandwidth buffer is gone; measure the model from here */
    mp.n_threads = nt;
    if (mc_model_load(dir, &mp, &m) != MC_OK) {
        fprintf(stderr, "load: %s\n", mc_last_error());
        goto done;
    }
    mc_model_get_info(m, &info);
    d = mc_model_dims(m);
    cp.n_ctx = ctx_n;
    if (mc_context_create(m, &cp, &ctx) != MC_OK) {
        fprintf(stderr, "context: %s\n", mc_last_error());
        goto done;
    }
    prompt = malloc((size_t)ctx_n * sizeof *prompt);
    logits = malloc((size_t)d.V * sizeof *logits);
    if (!prompt || !logits) {
        fprintf(stderr, "out of memory\n");
        goto done;
    }
    for (int i = 0; i < ctx_n; i++) prompt[i] = (int32_t)((i * 7919u + 13u) % (unsigned)d.V);
    printf("model: %s, %d layers, %llu parameters, %s, %.1f MiB of weights\n", dir, d.L,
           (unsigned long long)info.n_params, mc_dtype_name(info.dtype),
           (double)info.weight_bytes / 1048576.0);

    /* prefill of a ctx_n-token prompt, best of 3 */
    for (int r = 0; r < 3; r++) {
        mc_context_reset(ctx, -1);
        t = mc_time_now();
        if (mc_context_decode(ctx, 0, prompt, (size_t)ctx_n, logits) != MC_OK) {
            fprintf(stderr, "prefill: %s\n", mc_last_error());
            goto done;
        }
        t = mc_time_now() - t;
        if (t < best_prefill) best_prefill = t;
    }
    embed_bytes = (double)d.V * d.D * (double)mc_dtype_size(info.dtype);
    /* matmul FLOPs per token (embedding is a lookup) + causal attention + one lm_head row */
    flops_prefill = 2.0 * ((double)info.n_params - (double)d.V * d.D * (info.tie_word_embeddings ? 1 : 2)) * ctx_n +
                    2.0 * 2.0 * d.L * (double)d.q_dim * ctx_n * (ctx_n + 1) / 2.0 + 2.0 * d.V * d.D;
    printf("prefill %d tokens: %.3f s, %.1f tokens/s, %.1f GFLOP/s = %.0f%% of sgemm\n", ctx_n,
           best_prefill, ctx_n / best_prefill, flops_prefill / best_prefill / 1e9,
           100.0 * flops_prefill / best_prefill / gemm);

    /* decode, end to end: fill the context to ctx_n - gen, then gen greedy tokens */
    gp.sampler.temperature = 0;
    gp.ignore_eos = 1;
    gp.max_tokens = gen;
    if (mc_generate(ctx, prompt, (size_t)(ctx_n - gen), &gp, &g) != MC_OK) {
        fprintf(stderr, "generate: %s\n", mc_last_error());
        goto done;
    }
    bytes_tok = (double)info.weight_bytes - (info.tie_word_embeddings ? 0.0 : embed_bytes) +
                (double)d.D * (double)mc_dtype_size(info.dtype);
    kv_bytes = 2.0 * d.L * (double)ctx_n * d.kv_dim * sizeof(float);
    printf("decode at %d context (mc_generate, greedy): %zu steps, %.2f tokens/s; weights read "
           "per token %.1f MiB (+ up to %.1f MiB KV cache); roofline at the bandwidth above %.2f "
           "tokens/s\n", ctx_n, g.decode_steps, (double)g.decode_steps / g.decode_seconds,
           bytes_tok / 1048576.0, kv_bytes / 1048576.0, bw / bytes_tok);
    {
        double rss = vm_hwm();
        double budget = (double)info.weight_bytes + kv_bytes;
        printf("peak RSS %.1f MiB; weights + KV cache %.1f MiB; ratio %.3f (target <= 1.10)\n",
               rss / 1048576.0, budget / 1048576.0, rss / budget);
    }
    /* decode, paired: one step (the same forward pass, greedy argmax on the host), then a
     * plain read of bytes_tok bytes; ratio = read time / step time */
    {
        size_t words = (size_t)(bytes_tok / sizeof(uint64_t)), n_buf = words + (words >> 3);
        uint64_t *buf = mc_aligned_alloc(n_buf * sizeof(uint64_t));
        double *ratio = malloc((size_t)gen * sizeof *ratio), best_step = 1e30, best_read = 1e30;
        int32_t tok = prompt[0];
        if (!buf || !ratio) {
            fprintf(stderr, "out of memory\n");
            mc_aligned_free(buf);
            free(ratio);
            goto done;
        }
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n_buf; i++) buf[i] = i;
        mc_context_reset(ctx, -1);
        if (mc_context_decode(ctx, 0, prompt, (size_t)(ctx_n - gen), logits) != MC_OK) {
            fprintf(stderr, "prefill: %s\n", mc_last_error());
            mc_aligned_free(buf);
            free(ratio);
            goto done;
        }
        for (int k = 0; k < gen; k++) {
            double ts, tr;
            int best = 0;
            for (int v = 1; v < d.V; v++)
                if (logits[v] > logits[best]) best = v;
            tok = best;
            ts = mc_time_now();
            (void)mc_context_decode(ctx, 0, &tok, 1, logits);
            ts = mc_time_now() - ts;
            tr = mc_time_now();
            (void)roofline_read(nt, buf + (size_t)(k & 7) * (words >> 6), words);
            tr = mc_time_now() - tr;
            ratio[k] = tr / ts;
            best_step = MC_MIN(best_step, ts);
            best_read = MC_MIN(best_read, tr);
        }
        qsort(ratio, (size_t)gen, sizeof *ratio, cmp_double);
        printf("decode at %d context (paired with reads of the same bytes, %d steps): best step "
               "%.2f tokens/s, best read %.2f GB/s; median step / read %.0f%% of roofline\n",
               ctx_n, gen, 1.0 / best_step, bytes_tok / best_read / 1e9, 100.0 * ratio[gen / 2]);
        mc_aligned_free(buf);
        free(ratio);
    }
    rc = 0;
done:
    mc_generation_clear(&g);
    free(prompt);
    free(logits);
    mc_context_free(ctx);
    mc_model_free(m);
    return rc;
}
