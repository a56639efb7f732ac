/* bench_cuda.c - speed and memory of the CUDA backend on a checkpoint (default: the
 * Qwen2.5-Coder-0.5B preset with random bf16 weights), against the device's own ceilings
 * measured in the same run (device-to-device copy bandwidth, cuBLAS bf16 GEMM rate):
 *   prefill of --prefill (2048) tokens, tokens/s;
 *   decode at batch 1 after a --ctx (512) token prompt: model steps alone and through
 *   mc_generate (greedy sampling included), tokens/s and % of the bandwidth roofline
 *   (weight + KV-cache bytes per token over the copy bandwidth), and mc_generate with the
 *   default sampler;
 *   decode at batch 8 (8 sequences of --ctx tokens stepped together), tokens/s;
 *   LoRA training (rank 16, alpha 32, all 7 projections, --batch 4 x --seq 1024 tokens),
 *   tokens/s, MFU (model FLOPs / 989 TFLOP/s, the H100 SXM dense bf16 peak) and peak device
 *   memory held by the backend.
 * Usage: bench_cuda [--model DIR | --preset NAME] [--ctx 512] [--gen 128] [--prefill 2048]
 *                   [--batch 4] [--seq 1024] [--iters 6] [--grad-checkpoint] [--skip-train]
 *                   [--skip-decode]
 * --grad-checkpoint trains twice: without and with activation checkpointing. With
 * MC_CUDA_PROFILE=1 each section ends with a table of device time per kernel (training: the
 * timed steps only).
 * Built only with MC_CUDA. A preset is written once under $TMPDIR/mcandle-bench-<preset>. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/cuda/cuda_backend.h"
#include "model/model.h"
#include "bench_util.h"

static const double H100_BF16_PEAK = 989.4e12;

/* Prints and clears the per-kernel device-time table (MC_CUDA_PROFILE=1 only). */
static void profile(mc_backend *be, const char *section) {
    static char buf[16384];
    if (mc_cuda_profile_report(be, buf, sizeof buf, true) > 0)
        printf("device time per kernel, %s:\n%s", section, buf);
}

/* Training progress: the timing of bench_util.h, and the per-kernel table (profiling
 * only) cleared after the warm-up steps, so that it shows the timed steps alone (the
 * warm-up's first GEMM calls and the choice of their algorithms excluded). */
typedef struct train_watch {
    timing tm;
    mc_backend *be;
} train_watch;

static int train_progress(const mc_train_progress *p, void *user) {
    train_watch *w = user;
    static char scrap[16384];
    if (!p->is_eval && p->step == w->tm.warm)
        (void)mc_cuda_profile_report(w->be, scrap, sizeof scrap, true);
    return timing_progress(p, &w->tm);
}

/* Prefill of n tokens (logits of the last row to the host): median of 5 after two warm-up
 * calls, whose times go to first[0..1] (the second call of each GEMM shape chooses its
 * algorithm). */
static double bench_prefill(mc_model *m, const int32_t *ids, int n, double first[2]) {
    mc_fwd *f = NULL;
    double t[5];
    float *logits = malloc((size_t)mc_model_dims(m).V * sizeof(float));
    if (!logits || mc_fwd_create(m, 1, n, n, &f) != MC_OK) {
        fprintf(stderr, "prefill: %s\n", mc_last_error());
        free(logits);
        return 0;
    }
    for (int r = -2; r < 5; r++) {
        double t0;
        mc_fwd_truncate(f, 0, 0);
        t0 = mc_time_now();
        if (mc_fwd_run(f, 0, ids, n, MC_LOGITS_LAST, logits) != MC_OK) {
            fprintf(stderr, "prefill: %s\n", mc_last_error());
            break;
        }
        if (r >= 0) t[r] = mc_time_now() - t0;
        else first[r + 2] = mc_time_now() - t0;
    }
    mc_fwd_free(f);
    free(logits);
    qsort(t, 5, sizeof *t, cmp_double);
    return t[2];
}

/* Model-level decode: ctx prompt tokens, then gen steps of 1 token whose logits are read on
 * the host each step: where the step leaves them (mc_fwd_logits: copied by DMA into
 * page-locked memory), or (copy) copied on into a caller's buffer; tokens/s of the steps.
 * Prints how a step's time splits between the host's work and its wait for the device. */
static double bench_decode_steps(mc_backend *be, mc_model *m, const int32_t *ids, int ctx,
                                 int gen, bool copy) {
    mc_fwd *f = NULL;
    int V = mc_model_dims(m).V;
    float *logits = malloc((size_t)V * sizeof(float));
    volatile float sink = 0;
    double t0, t = 0, w0, w = 0, u0 = 0, u = 0, gl0 = 0, gl = 0, id0 = 0, id = 0;
    long nu0 = 0, nu = 0, ni0 = 0, ni = 0;
    if (!logits || mc_fwd_create(m, 1, ctx + gen + 8, ctx, &f) != MC_OK) {
        fprintf(stderr, "decode: %s\n", mc_last_error());
        free(logits);
        return 0;
    }
    for (int rep = 0; rep < 2; rep++) { /* the first pass warms up (graph capture) */
        mc_fwd_truncate(f, 0, 0);
        if (mc_fwd_run(f, 0, ids, ctx, MC_LOGITS_NONE, NULL) != MC_OK) break;
        t0 = mc_time_now();
        w0 = mc_cuda_sync_wait(be);
        mc_cuda_host_stats(be, &u0, &nu0, &gl0);
        id0 = mc_cuda_device_idle(be, &ni0);
        for (int i = 0; i < gen; i++) {
            int32_t tok = ids[(ctx + i) % ctx];
            const float *row = logits;
            if (mc_fwd_run(f, 0, &tok, 1, MC_LOGITS_LAST, copy ? logits : NULL) != MC_OK ||
                (!copy && !(row = mc_fwd_logits(f)))) {
                fprintf(stderr, "decode: %s\n", mc_last_error());
                break;
            }
            sink = sink + row[tok];
        }
        t = mc_time_now() - t0;
        w = mc_cuda_sync_wait(be) - w0;
        mc_cuda_host_stats(be, &u, &nu, &gl);
        id = mc_cuda_device_idle(be, &ni);
    }
    printf("decode steps%s: %.1f us a step, %.1f us of host work, %.1f us waiting for the "
           "device; host: %.1f us updating %.1f graph nodes, %.1f us launching graphs\n",
           copy ? " (logits copied)" : "", 1e6 * t / gen, 1e6 * (t - w) / gen, 1e6 * w / gen,
           1e6 * (u - u0) / gen, (double)(nu - nu0) / gen, 1e6 * (gl - gl0) / gen);
    if (ni > ni0)
        printf("decode steps%s: the device idle %.1f us between steps (%ld gaps, MC_CUDA_IDLE=1)\n",
               copy ? " (logits copied)" : "", 1e6 * (id - id0) / (double)(ni - ni0), ni - ni0);
    mc_fwd_free(f);
    free(logits);
    return t > 0 ? gen / t : 0;
}

/* Batched decode: B sequences of ctx tokens, then gen steps of B tokens (B <=
 * MC_FWD_VIEW_ROWS: logits read in place); tokens/s. */
static double bench_decode_batch(mc_model *m, const int32_t *ids, int ctx, int gen, int B) {
    mc_fwd *f = NULL;
    int seqs[MC_FWD_VIEW_ROWS];
    int32_t tok[MC_FWD_VIEW_ROWS];
    double t0 = mc_time_now(), t = 0;
    if (B > MC_FWD_VIEW_ROWS || mc_fwd_create(m, B, ctx + gen + 8, ctx, &f) != MC_OK) {
        fprintf(stderr, "batched decode: %s\n", mc_last_error());
        return 0;
    }
    for (int s = 0; s < B; s++) {
        seqs[s] = s;
        if (mc_fwd_run(f, s, ids, ctx, MC_LOGITS_NONE, NULL) != MC_OK) {
            fprintf(stderr, "batched decode: %s\n", mc_last_error());
            mc_fwd_free(f);
            return 0;
        }
    }
    for (int i = 0; i < gen + 4; i++) {
        if (i == 4) t0 = mc_time_now(); /* 4 warm-up steps */
        for (int s = 0; s < B; s++) tok[s] = ids[(i * 31 + s * 7) % ctx];
        if (mc_fwd_step(f, seqs, tok, B, NULL) != MC_OK || !mc_fwd_logits(f)) {
            fprintf(stderr, "batched decode: %s\n", mc_last_error());
            break;
        }
        if (i >= 4) t = mc_time_now() - t0;
    }
    mc_fwd_free(f);
    return t > 0 ? (double)B * gen / t : 0;
}

int main(int argc, char **argv) {
    const char *dir = arg_str(argc, argv, "--model"), *preset = arg_str(argc, argv, "--preset");
    int ctx_n = arg_int(argc, argv, "--ctx", 512), gen = arg_int(argc, argv, "--gen", 128);
    int prefill_n = arg_int(argc, argv, "--prefill", 2048), batch = arg_int(argc, argv, "--batch", 4);
    int seq = arg_int(argc, argv, "--seq", 1024), iters = arg_int(argc, argv, "--iters", 6);
    int ckpt = has_flag(argc, argv, "--grad-checkpoint");
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char pdir[512];
    mc_model *m = NULL;
    mc_model_params mp = mc_model_default_params();
    mc_model_info info;
    mc_dims d;
    mc_backend *be;
    int32_t *ids;
    mc_rng rng;
    double bw, gemm, bytes_tok, kv_bytes, t_pre = 0, t_first[2] = {0, 0}, dec_steps = 0;
    double dec_copy = 0, dec_gen = 0, dec_b8 = 0, dec_smp = 0;
    double train_tps = 0, train_mfu = 0, train_tps_ck = 0;
    uint64_t mem_now = 0, mem_peak = 0, mem_model = 0, mem_peak_ck = 0;
    if (!dir) {
        if (!preset) preset = "qwen2.5-coder-0.5b";
        snprintf(pdir, sizeof pdir, "%s/mcandle-bench-%s", tmp, preset);
        dir = pdir;
        if (!mc_path_exists(pdir)) {
            fprintf(stderr, "writing %s ...\n", pdir);
            if (mc_checkpoint_init(preset, NULL, MC_BF16, 0, pdir) != MC_OK) {
                fprintf(stderr, "init: %s\n", mc_last_error());
                return 1;
            }
        }
    }
    mp.device = "cuda";
    if (mc_model_load(dir, &mp, &m) != MC_OK) {
        fprintf(stderr, "load: %s\n", mc_last_error());
        return 1;
    }
    be = m->be;
    mc_model_get_info(m, &info);
    d = mc_model_dims(m);
    mc_cuda_memory(be, &mem_model, NULL);
    bw = mc_cuda_copy_bandwidth(be, (size_t)1 << 30, 5);
    gemm = mc_cuda_gemm_rate(be, 8192, 8192, 8192, 5);
    printf("device: %s; device-to-device copy %.0f GB/s (read + write); cuBLAS bf16 GEMM "
           "8192^3 %.0f TFLOP/s\n", mc_cuda_device_name(be), bw / 1e9, gemm / 1e12);
    printf("model: %s, %d layers, %llu parameters, %s, %.1f MiB of weights on the device\n", dir,
           d.L, (unsigned long long)info.n_params, mc_dtype_name(info.dtype),
           (double)mem_model / 1048576.0);
    ids = malloc((size_t)(prefill_n > ctx_n ? prefill_n : ctx_n) * sizeof *ids);
    if (!ids) return 1;
    mc_rng_seed(&rng, 5);
    for (int i = 0; i < (prefill_n > ctx_n ? prefill_n : ctx_n); i++)
        ids[i] = (int32_t)(mc_rng_next(&rng) % (uint64_t)d.V);

    /* prefill */
    profile(be, "setup");
    t_pre = bench_prefill(m, ids, prefill_n, t_first);
    printf("prefill %d tokens: %.2f ms, %.0f tokens/s (first call %.2f ms, second %.2f ms)\n",
           prefill_n, t_pre * 1e3, t_pre > 0 ? prefill_n / t_pre : 0.0, t_first[0] * 1e3,
           t_first[1] * 1e3);
    profile(be, "prefill (6 runs)");

    /* decode */
    bytes_tok = (double)info.weight_bytes -
                (info.tie_word_embeddings ? 0.0 : (double)d.V * d.D * mc_dtype_size(info.dtype));
    kv_bytes = 2.0 * d.L * (double)ctx_n * d.kv_dim * sizeof(float);
    if (!has_flag(argc, argv, "--skip-decode")) {
        mc_context *ctx = NULL;
        mc_context_params cp = mc_context_default_params();
        mc_generate_params gp = mc_generate_default_params();
        mc_generation g;
        double roof = bw / (bytes_tok + kv_bytes);
        long gl0, gb0, kl0, gl1, gb1, kl1;
        mc_cuda_stats(be, &gl0, &gb0, &kl0);
        dec_steps = bench_decode_steps(be, m, ids, ctx_n, gen, false);
        dec_copy = bench_decode_steps(be, m, ids, ctx_n, gen, true);
        mc_cuda_stats(be, &gl1, &gb1, &kl1);
        printf("decode steps: %ld graph launches, %ld graph builds, %ld direct kernel launches "
               "(prompts included)\n", gl1 - gl0, gb1 - gb0, kl1 - kl0);
        profile(be, "decode (4 x prompt + steps)");
        cp.n_ctx = ctx_n + gen + 8;
        cp.n_batch = ctx_n;
        if (mc_context_create(m, &cp, &ctx) == MC_OK) {
            gp.sampler.temperature = 0;
            gp.ignore_eos = 1;
            gp.max_tokens = gen;
            for (int rep = 0; rep < 2; rep++) {
                long gi0 = 0, gi1 = 0;
                const double gid0 = mc_cuda_device_idle(be, &gi0);
                memset(&g, 0, sizeof g);
                if (mc_generate(ctx, ids, (size_t)ctx_n, &gp, &g) != MC_OK) {
                    fprintf(stderr, "generate: %s\n", mc_last_error());
                    break;
                }
                dec_gen = g.decode_seconds > 0 ? (double)g.decode_steps / g.decode_seconds : 0;
                const double gid1 = mc_cuda_device_idle(be, &gi1);
                if (rep == 1 && gi1 > gi0)
                    printf("mc_generate: the device idle %.1f us between steps (%ld gaps, "
                           "MC_CUDA_IDLE=1)\n", 1e6 * (gid1 - gid0) / (double)(gi1 - gi0),
                           gi1 - gi0);
                mc_generation_clear(&g);
            }
            /* sampled with the default sampler (temperature 0.8): each step's logits go to
             * the host, so it runs a step at a time */
            gp.sampler = mc_sampler_default_params();
            memset(&g, 0, sizeof g);
            if (mc_generate(ctx, ids, (size_t)ctx_n, &gp, &g) != MC_OK)
                fprintf(stderr, "generate (sampled): %s\n", mc_last_error());
            else if (g.decode_seconds > 0)
                dec_smp = (double)g.decode_steps / g.decode_seconds;
            mc_generation_clear(&g);
            mc_context_free(ctx);
        } else {
            fprintf(stderr, "context: %s\n", mc_last_error());
        }
        printf("decode batch 1 at %d context: %.0f tokens/s (model steps + logits to host "
               "memory, read in place), %.0f tokens/s (steps + logits copied to a caller's "
               "buffer), %.0f tokens/s (mc_generate, greedy); %.1f MiB read per token; roofline "
               "%.0f tokens/s; %.0f%% / %.0f%% of roofline\n",
               ctx_n, dec_steps, dec_copy, dec_gen, (bytes_tok + kv_bytes) / 1048576.0, roof,
               100.0 * dec_steps / roof, 100.0 * dec_gen / roof);
        printf("decode batch 1 at %d context through mc_generate with the default sampler "
               "(temperature %.1f): %.0f tokens/s\n", ctx_n,
               (double)mc_sampler_default_params().temperature, dec_smp);
        profile(be, "mc_generate");
        dec_b8 = bench_decode_batch(m, ids, ctx_n, gen, 8);
        printf("decode batch 8 at %d context: %.0f tokens/s\n", ctx_n, dec_b8);
        profile(be, "batch-8 decode");
    }

    /* training: without activation checkpointing, then (--grad-checkpoint) with it */
    for (int mode = 0; mode <= ckpt && !has_flag(argc, argv, "--skip-train"); mode++) {
        char data[600], out[600], path[700];
        mc_adapter *a = NULL;
        mc_lora_params lp = mc_lora_default_params();
        mc_train_params tp = mc_train_default_params();
        mc_train_result res;
        train_watch tw;
        long reuse0, unpack0;
        FILE *fp;
        snprintf(data, sizeof data, "%s/mcandle-bench-cuda-data", tmp);
        snprintf(out, sizeof out, "%s/mcandle-bench-cuda-out", tmp);
        mkdir(data, 0755);
        snprintf(path, sizeof path, "%s/train.jsonl", data);
        fp = fopen(path, "w");
        if (!fp) return 1;
        for (int s = 0; s < batch * (iters + 1); s++) {
            fprintf(fp, "{\"input_ids\": [");
            for (int t = 0; t < seq; t++)
                fprintf(fp, "%s%d", t ? "," : "", (int)(mc_rng_next(&rng) % (uint64_t)d.V));
            fprintf(fp, "]}\n");
        }
        fclose(fp);
        lp.rank = 16;
        lp.alpha = 32;
        if (mc_adapter_create(m, &lp, &a) != MC_OK) {
            fprintf(stderr, "adapter: %s\n", mc_last_error());
            return 1;
        }
        mc_cuda_memory_reset_peak(be);
        reuse0 = mc_cuda_attention_reuse(be);
        unpack0 = mc_cuda_packed_stats(be, NULL);
        tp.train_path = data;
        tp.adapter_path = out;
        tp.batch_size = batch;
        tp.max_seq_length = seq;
        tp.iters = iters;
        tp.learning_rate = 1e-4;
        tp.save_every = 0;
        tp.shuffle = 0;
        tp.grad_checkpoint = mode;
        tp.on_progress = train_progress;
        tp.user = &tw;
        memset(&tw, 0, sizeof tw);
        tw.be = be;
        tw.tm.warm = 2; /* as bench/peft_bench.py; the second step chooses the GEMM algorithms */
        printf("training: LoRA r=16 alpha=32 on all 7 projections (%zu parameters), batch %d x %d "
               "tokens%s\n", mc_adapter_n_params(a), batch, seq,
               mode ? ", activation checkpointing" : "");
        if (mc_train(m, a, &tp, &res) != MC_OK) {
            fprintf(stderr, "train: %s\n", mc_last_error());
        } else {
            double layer_w = (double)info.n_params -
                             (double)d.V * d.D * (info.tie_word_embeddings ? 1 : 2);
            double head_w = (double)d.V * d.D;
            double flops_tok = 4.0 * (layer_w + head_w) + 6.0 * (double)mc_adapter_n_params(a) +
                               3.0 * 2.0 * 2.0 * d.L * (double)d.q_dim * (seq + 1) / 2.0;
            const timing *tm = &tw.tm;
            double tps;
            uint64_t peak = 0;
            mc_cuda_memory(be, &mem_now, &peak);
            tps = (double)(tm->tokens_last - tm->tokens_first) / (tm->t_last - tm->t_first);
            if (mode == 0) {
                train_tps = tps;
                mem_peak = peak;
                train_mfu = tps * flops_tok / H100_BF16_PEAK;
            } else {
                train_tps_ck = tps;
                mem_peak_ck = peak;
            }
            printf("training%s: %.0f tokens/s (steps %d..%d), %.1f TFLOP/s model FLOPs = %.1f%% "
                   "MFU (%.0f%% of the measured GEMM rate); loss %.4f -> %.4f; peak device memory "
                   "%.2f GiB (weights %.2f GiB)\n", mode ? " (checkpointing)" : "",
                   tps, tm->warm + 1, tm->steps, tps * flops_tok / 1e12,
                   100.0 * tps * flops_tok / H100_BF16_PEAK, 100.0 * tps * flops_tok / gemm,
                   tm->loss_first, tm->loss_last,
                   (double)peak / 1073741824.0, (double)mem_model / 1073741824.0);
            printf("training%s: %ld attention backwards took their forward's statistics\n",
                   mode ? " (checkpointing)" : "", mc_cuda_attention_reuse(be) - reuse0);
            printf("training%s: %ld packed bf16 ranges expanded back to f32\n",
                   mode ? " (checkpointing)" : "", mc_cuda_packed_stats(be, NULL) - unpack0);
        }
        mc_adapter_free(a);
        profile(be, mode ? "training with checkpointing" : "training");
    }

    printf("\n| metric | value |\n|---|---|\n");
    printf("| device | %s |\n", mc_cuda_device_name(be));
    printf("| copy bandwidth (r+w) | %.0f GB/s |\n", bw / 1e9);
    printf("| prefill %d tokens | %.0f tokens/s |\n", prefill_n, t_pre > 0 ? prefill_n / t_pre : 0.0);
    printf("| decode b1 @%d (steps) | %.0f tokens/s (%.0f%% of roofline) |\n", ctx_n, dec_steps,
           100.0 * dec_steps / (bw / (bytes_tok + kv_bytes)));
    printf("| decode b1 @%d (mc_generate) | %.0f tokens/s |\n", ctx_n, dec_gen);
    printf("| decode b1 @%d (mc_generate, sampled) | %.0f tokens/s |\n", ctx_n, dec_smp);
    printf("| decode b8 @%d | %.0f tokens/s |\n", ctx_n, dec_b8);
    printf("| LoRA train %dx%d | %.0f tokens/s, MFU %.1f%%, peak %.2f GiB |\n", batch, seq,
           train_tps, 100.0 * train_mfu, (double)mem_peak / 1073741824.0);
    if (ckpt)
        printf("| LoRA train %dx%d, checkpointing | %.0f tokens/s, peak %.2f GiB |\n", batch, seq,
               train_tps_ck, (double)mem_peak_ck / 1073741824.0);
    free(ids);
    mc_model_free(m);
    return 0;
}
