/* cmd_fuse.c - `mcandle fuse`: merge a LoRA adapter into its base model and write a
 * Hugging Face checkpoint. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char k_fuse_help[] =
    "usage: mcandle fuse --model DIR --adapter DIR --out DIR\n"
    "\n"
    "Merges a LoRA adapter folder (PEFT or mlx-lm) into its base model and writes a Hugging\n"
    "Face checkpoint to --out (created if needed; it must not be the base folder):\n"
    "model.safetensors, where each adapted projection is W + scale * B A in the base model's\n"
    "dtype and every other tensor is copied unchanged, plus config.json,\n"
    "generation_config.json and the tokenizer files of the base folder.\n";

int cmd_fuse(int argc, char **argv) {
    const char *dir = NULL, *adapter_dir = NULL, *out = NULL;
    int i, missing = 0, rc = 1;
    mc_model *m = NULL;
    mc_adapter *a = NULL;
    mc_status s;
    mc_model_params p = mc_model_default_params();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(k_fuse_help, stdout);
            return 0;
        }
        if (cli_opt(argc, argv, &i, "--model", &dir, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--adapter", &adapter_dir, &missing)) continue;
        if (cli_opt(argc, argv, &i, "--out", &out, &missing)) continue;
        return cli_usage_error("fuse", "unknown option '%s'", argv[i]);
    }
    if (missing) return cli_usage_error("fuse", "option '%s' needs a value", argv[argc - 1]);
    if (!dir) return cli_usage_error("fuse", "--model DIR is required");
    if (!adapter_dir) return cli_usage_error("fuse", "--adapter DIR is required");
    if (!out) return cli_usage_error("fuse", "--out DIR is required");
    cli_install_log(0);
    p.n_threads = 1;
    s = mc_model_load(dir, &p, &m);
    if (s != MC_OK) return cli_fail("fuse", s, "cannot load %s", dir);
    s = mc_adapter_load(m, adapter_dir, &a);
    if (s != MC_OK) {
        rc = cli_fail("fuse", s, "cannot load the adapter %s", adapter_dir);
        goto done;
    }
    s = mc_adapter_fuse(m, a, dir, out);
    if (s != MC_OK) {
        rc = cli_fail("fuse", s, "cannot fuse into %s", out);
        goto done;
    }
    printf("fused %s into %s: %s/model.safetensors\n", adapter_dir, dir, out);
    rc = 0;
done:
    mc_adapter_free(a);
    mc_model_free(m);
    return rc;
}
