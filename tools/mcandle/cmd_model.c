/* cmd_model.c - `mcandle info` and `mcandle eval`: describe a checkpoint, score token ids. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char k_info_help[] =
    "usage: mcandle info --model DIR [--ctx N]\n"
    "\n"
    "Describes a Hugging Face checkpoint folder: architecture, sizes, parameter count,\n"
    "dtype and the memory needed to run it with a context of N positions (default: the\n"
    "model's max_position_embeddings, capped at 4096).\n";

static const char k_eval_help[] =
    "usage: mcandle eval --model DIR --ids 1,2,3,... [--logits-out FILE.npy]\n"
    "                    [--adapter DIR [--adapter-scale S]] [--threads N] [--reference]\n"
    "                    [--device cpu|cuda]\n"
    "\n"
    "Runs the model over the token ids and prints the mean next-token cross-entropy as the\n"
    "last line: loss=<value>. --logits-out writes float32 logits of shape [T, vocab].\n"
    "--adapter applies a LoRA adapter folder (PEFT or mlx-lm) without merging it;\n"
    "--adapter-scale multiplies its scale (default 1 = as trained).\n"
    "--reference uses the plain reference kernels (slow; for checking).\n";

int cmd_info(int argc, char **argv) {
    const char *dir = NULL, *ctx_s = NULL;
    long n_ctx = 0;
    int i, missing = 0;
    mc_model *m = NULL;
    mc_model_info info;
    mc_status s;
    mc_model_params p = mc_model_default_params();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(k_info_help, stdout);
            return 0;
        }
        if (cli_opt(argc, argv, &i, "--model", &dir, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--ctx", &ctx_s, &missing)) continue;
        return cli_usage_error("info", "unknown option '%s'", argv[i]);
    }
    if (missing) return cli_usage_error("info", "option '%s' needs a value", argv[argc - 1]);
    if (!dir) return cli_usage_error("info", "--model DIR is required");
    if (ctx_s && cli_parse_int(ctx_s, 1, 1 << 24, &n_ctx) != 0)
        return cli_usage_error("info", "--ctx must be a positive integer (got '%s')", ctx_s);
    cli_install_log(0);
    p.n_threads = 1;
    s = mc_model_load(dir, &p, &m);
    if (s != MC_OK) return cli_fail("info", s, "cannot load %s", dir);
    mc_model_get_info(m, &info);
    if (n_ctx == 0) n_ctx = info.max_position_embeddings < 4096 ? info.max_position_embeddings : 4096;
    {
        unsigned long long ctx_bytes = (unsigned long long)mc_model_context_bytes(m, (int)n_ctx, 1);
        int e;
        printf("architecture: %s (%s)\n", info.architecture[0] ? info.architecture : "?",
               info.model_type);
        printf("layers: %d\nhidden_size: %d\nintermediate_size: %d\n", info.n_layers,
               info.hidden_size, info.intermediate_size);
        printf("attention: %d query heads, %d key/value heads, head_dim %d%s\n", info.n_heads,
               info.n_kv_heads, info.head_dim, info.has_qkv_bias ? ", q/k/v bias" : "");
        printf("vocab_size: %d\nmax_position_embeddings: %d\n", info.vocab_size,
               info.max_position_embeddings);
        printf("rope_theta: %g\nrms_norm_eps: %g\ntie_word_embeddings: %s\n",
               (double)info.rope_theta, (double)info.rms_norm_eps,
               info.tie_word_embeddings ? "true" : "false");
        printf("bos_token_id: %d\neos_token_ids:", info.bos_token_id);
        for (e = 0; e < info.n_eos_token_ids; e++) printf(" %d", info.eos_token_ids[e]);
        printf("\ndtype: %s\nparameters: %llu (%.3f B)\n", mc_dtype_name(info.dtype),
               (unsigned long long)info.n_params, (double)info.n_params / 1e9);
        printf("weights: %llu bytes (%.1f MiB, memory-mapped)\n",
               (unsigned long long)info.weight_bytes, (double)info.weight_bytes / 1048576.0);
        printf("context of %ld positions: %llu bytes (%.1f MiB KV cache and activations)\n", n_ctx,
               ctx_bytes, (double)ctx_bytes / 1048576.0);
        printf("memory needed: %.1f MiB\n",
               (double)(info.weight_bytes + ctx_bytes) / 1048576.0);
    }
    mc_model_free(m);
    return 0;
}

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *ids_s = NULL, *out = NULL, *thr_s = NULL;
    const char *adapter_dir = NULL, *scale_s = NULL;
    double scale = 1.0;
    mc_adapter *adapter = NULL;
    int i, missing = 0, rc = 1;
    long threads = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    float *logits = NULL;
    double loss = 0;
    mc_model *m = NULL;
    mc_model_info info;
    mc_status s;
    mc_model_params p = mc_model_default_params();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(k_eval_help, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--reference")) {
            p.reference = 1;
            continue;
        }
        if (cli_opt(argc, argv, &i, "--model", &dir, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--ids", &ids_s, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--logits-out", &out, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--threads", &thr_s, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--device", &p.device, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--adapter", &adapter_dir, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--adapter-scale", &scale_s, &missing)) continue;
        return cli_usage_error("eval", "unknown option '%s'", argv[i]);
    }
    if (missing) return cli_usage_error("eval", "option '%s' needs a value", argv[argc - 1]);
    if (!dir) return cli_usage_error("eval", "--model DIR is required");
    if (!ids_s) return cli_usage_error("eval", "--ids 1,2,3,... is required");
    if (thr_s && cli_parse_int(thr_s, 1, 4096, &threads) != 0)
        return cli_usage_error("eval", "--threads must be a positive integer (got '%s')", thr_s);
    if (scale_s && !adapter_dir) return cli_usage_error("eval", "--adapter-scale needs --adapter DIR");
    if (scale_s && cli_parse_float(scale_s, &scale) != 0)
        return cli_usage_error("eval", "--adapter-scale must be a finite number (got '%s')", scale_s);
    if (cli_parse_ids(ids_s, &ids, &n) != 0)
        return cli_usage_error("eval", "--ids must be comma-separated non-negative integers");
    cli_install_log(0);
    p.n_threads = (int)threads;
    s = mc_model_load(dir, &p, &m);
    if (s != MC_OK) {
        rc = cli_fail("eval", s, "cannot load %s", dir);
        goto done;
    }
    mc_model_get_info(m, &info);
    if (adapter_dir) {
        s = mc_adapter_load(m, adapter_dir, &adapter);
        if (s != MC_OK) {
            rc = cli_fail("eval", s, "cannot load the adapter %s", adapter_dir);
            goto done;
        }
    }
    if (out) {
        logits = malloc(n * (size_t)info.vocab_size * sizeof(float));
        if (!logits) {
            rc = cli_fail("eval", MC_OK, "out of memory for %zu x %d logits", n, info.vocab_size);
            goto done;
        }
    }
    s = mc_model_eval_adapter(m, adapter, (float)scale, ids, n, logits, &loss);
    if (s != MC_OK) {
        rc = cli_fail("eval", s, "evaluation failed");
        goto done;
    }
    if (out) {
        size_t shape[2];
        shape[0] = n;
        shape[1] = (size_t)info.vocab_size;
        s = mc_npy_write_f32(out, logits, shape, 2);
        if (s != MC_OK) {
            rc = cli_fail("eval", s, "cannot write %s", out);
            goto done;
        }
    }
    printf("tokens=%zu\n", n);
    printf("loss=%.6f\n", loss);
    rc = 0;
done:
    free(logits);
    free(ids);
    mc_adapter_free(adapter);
    mc_model_free(m);
    return rc;
}
