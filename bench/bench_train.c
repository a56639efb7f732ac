/* bench_train.c - LoRA training speed and memory on the CPU against the machine's sgemm
 * rate measured in the same run.
 * Usage: bench_train (--model DIR | --preset NAME) [--batch 4] [--seq 128] [--iters 4]
 *                    [--rank 16] [--threads N] [--grad-checkpoint]
 * Trains LoRA (rank r, alpha 2r, all 7 projections) on random token sequences and reports
 * tokens/s over the steps after the first, the FLOP rate that implies (4 x the frozen
 * matmul weights per token: forward, and input gradients in backward, plus LoRA and
 * attention), its share of sgemm, and peak resident memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model.h"
#include "bench_util.h"
#include "roofline.h"

int main(int argc, char **argv) {
    const char *dir = arg_str(argc, argv, "--model"), *preset = arg_str(argc, argv, "--preset");
    int batch = arg_int(argc, argv, "--batch", 4), seq = arg_int(argc, argv, "--seq", 128);
    int iters = arg_int(argc, argv, "--iters", 4), rank = arg_int(argc, argv, "--rank", 16);
    int nt = arg_int(argc, argv, "--threads", omp_get_max_threads());
    int ckpt = has_flag(argc, argv, "--grad-checkpoint");
    char pdir[512], data[600], out[600], path[700];
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    mc_model *m = NULL;
    mc_model_params mp = mc_model_default_params();
    mc_adapter *a = NULL;
    mc_lora_params lp = mc_lora_default_params();
    mc_train_params tp = mc_train_default_params();
    mc_train_result res;
    mc_model_info info;
    timing tm;
    mc_rng rng;
    FILE *f;
    double gemm, flops_tok, tps, lora_flops = 0;
    mc_dims d;
    if (!dir && preset) {
        snprintf(pdir, sizeof pdir, "%s/mcandle-bench-%s", tmp, preset);
        dir = pdir;
        if (!mc_path_exists(pdir) && mc_checkpoint_init(preset, NULL, MC_BF16, 0, pdir) != MC_OK) {
            fprintf(stderr, "init: %s\n", mc_last_error());
            return 1;
        }
    }
    if (!dir || batch < 1 || seq < 2 || iters < 2 || rank < 1 || nt < 1) {
        fprintf(stderr, "usage: bench_train (--model DIR | --preset NAME) [--batch 4] [--seq 128] "
                "[--iters 4] [--rank 16] [--threads N] [--grad-checkpoint]\n");
        return 2;
    }
    gemm = roofline_sgemm(512, 4864, 896, nt, 5);
    printf("machine: %d threads, sgemm %.1f GFLOP/s\n", nt, gemm / 1e9);
    mp.n_threads = nt;
    if (mc_model_load(dir, &mp, &m) != MC_OK) {
        fprintf(stderr, "load: %s\n", mc_last_error());
        return 1;
    }
    mc_model_get_info(m, &info);
    d = mc_model_dims(m);
    /* random token data: batch * (iters + 1) sequences of seq tokens */
    snprintf(data, sizeof data, "%s/mcandle-bench-train-data", tmp);
    snprintf(out, sizeof out, "%s/mcandle-bench-train-out", tmp);
    mkdir(data, 0755);
    snprintf(path, sizeof path, "%s/train.jsonl", data);
    f = fopen(path, "w");
    if (!f) return 1;
    mc_rng_seed(&rng, 3);
    for (int s = 0; s < batch * (iters + 1); s++) {
        fprintf(f, "{\"input_ids\": [");
        for (int t = 0; t < seq; t++)
            fprintf(f, "%s%d", t ? "," : "", (int)(mc_rng_next(&rng) % (uint64_t)d.V));
        fprintf(f, "]}\n");
    }
    fclose(f);
    lp.rank = rank;
    lp.alpha = 2.0f * (float)rank;
    if (mc_adapter_create(m, &lp, &a) != MC_OK) {
        fprintf(stderr, "adapter: %s\n", mc_last_error());
        return 1;
    }
    tp.train_path = data;
    tp.adapter_path = out;
    tp.batch_size = batch;
    tp.max_seq_length = seq;
    tp.iters = iters;
    tp.learning_rate = 1e-4;
    tp.save_every = 0;
    tp.grad_checkpoint = ckpt;
    tp.on_progress = timing_progress;
    tp.user = &tm;
    memset(&tm, 0, sizeof tm);
    tm.warm = 1;
    printf("model: %s, %d layers, %llu parameters; LoRA r=%d on all projections (%zu parameters); "
           "batch %d x %d tokens%s\n", dir, d.L, (unsigned long long)info.n_params, rank,
           mc_adapter_n_params(a), batch, seq, ckpt ? ", activation checkpointing" : "");
    if (mc_train(m, a, &tp, &res) != MC_OK) {
        fprintf(stderr, "train: %s\n", mc_last_error());
        return 1;
    }
    /* frozen matmul weights per token: layers + lm_head (the embedding is a lookup) */
    {
        double layer_w = (double)info.n_params - (double)d.V * d.D * (info.tie_word_embeddings ? 1 : 2);
        double head_w = (double)d.V * d.D;
        lora_flops = 6.0 * (double)mc_adapter_n_params(a); /* fwd + 2 backward GEMMs */
        flops_tok = 4.0 * (layer_w + head_w) + (ckpt ? 2.0 * layer_w : 0) + lora_flops +
                    3.0 * 2.0 * 2.0 * d.L * (double)d.q_dim * (seq + 1) / 2.0;
    }
    tps = (double)(tm.tokens_last - tm.tokens_first) / (tm.t_last - tm.t_first);
    printf("training: %.1f tokens/s (steps 2..%d), %.1f GFLOP/s = %.0f%% of sgemm; loss %.4f -> %.4f\n",
           tps, tm.steps, tps * flops_tok / 1e9, 100.0 * tps * flops_tok / gemm, tm.loss_first,
           tm.loss_last);
    {
        /* kept per layer: x_in, x_mid, q, att, k, v, gate, up (with checkpointing only x_in,
         * the rest once); plus one layer's recomputed norms and SwiGLU product */
        double saved = 2.0 * d.D + 2.0 * d.q_dim + 2.0 * d.kv_dim + 2.0 * d.F;
        double acts = (double)batch * seq * 4.0 *
                      ((ckpt ? (double)d.L * d.D + saved - d.D : (double)d.L * saved) +
                       2.0 * d.D + d.F);
        double lora = 4.0 * 4.0 * (double)mc_adapter_n_params(a); /* params, grads, 2 moments */
        printf("peak RSS %.1f MiB; weights %.1f MiB + activations %.1f MiB + LoRA state %.1f MiB\n",
               (double)mc_peak_rss_bytes() / 1048576.0, (double)info.weight_bytes / 1048576.0,
               acts / 1048576.0, lora / 1048576.0);
    }
    mc_adapter_free(a);
    mc_model_free(m);
    return 0;
}
