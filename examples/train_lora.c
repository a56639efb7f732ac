/* train_lora.c - example: fine-tune a LoRA adapter on jsonl data and save it.
 *
 *   example_train_lora MODEL_DIR DATA OUT [ITERS]
 *
 * DATA is a folder holding train.jsonl (and optionally valid.jsonl and test.jsonl) or a
 * single .jsonl file; lines are {"text"}, {"prompt", "completion"}, {"messages": [...]} or
 * {"input_ids": [...]}. Text lines need tokenizer.json in MODEL_DIR. The resumable
 * checkpoint goes to OUT/checkpoint and the finished adapter (PEFT format: load it with
 * `mcandle generate --adapter OUT` or Hugging Face peft) to OUT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcandle.h"

/* Called after every optimizer step and every validation; return non-zero to stop. */
static int on_progress(const mc_train_progress *p, void *user) {
    (void)user;
    if (p->is_eval)
        printf("step %d/%d  validation loss %.4f\n", p->step, p->total_steps, p->val_loss);
    else
        printf("step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s\n", p->step, p->total_steps,
               p->loss, p->lr, p->tokens_per_s);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    mc_model *model = NULL;
    mc_tokenizer *tok = NULL;
    mc_adapter *adapter = NULL;
    mc_lora_params lp = mc_lora_default_params();
    mc_train_params tp = mc_train_default_params();
    mc_train_result res;
    char checkpoint[4096];
    mc_status s;
    int rc = 1;
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL_DIR DATA OUT [ITERS]\n", argv[0]);
        return 2;
    }
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", argv[3]);

    /* 1. The base model, and its tokenizer when the folder has one (without it only
     *    {"input_ids": [...]} lines can be read). */
    s = mc_model_load(argv[1], NULL, &model);
    if (s != MC_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], mc_last_error());
        return 1;
    }
    if (mc_tokenizer_load(argv[1], &tok) != MC_OK) tok = NULL;

    /* 2. A fresh adapter: rank 8, alpha 16 on all seven projections of every layer.
     *    B starts at zero, so the adapted model starts out equal to the base model. */
    lp.rank = 8;
    lp.alpha = 16.0f;
    lp.targets = MC_LORA_ALL;
    s = mc_adapter_create(model, &lp, &adapter);
    if (s != MC_OK) {
        fprintf(stderr, "cannot create the adapter: %s\n", mc_last_error());
        goto done;
    }
    printf("training %zu LoRA parameters\n", mc_adapter_n_params(adapter));

    /* 3. Train. Every field has a default (mc_train_default_params); these are the ones
     *    people change most. The trainer checkpoints to adapter_path every save_every steps
     *    and at the end; set resume_dir to that folder to continue an interrupted run. */
    tp.train_path = argv[2];
    tp.tokenizer = tok;
    tp.adapter_path = checkpoint;
    tp.iters = 100;
    if (argc == 5) {
        char *end = NULL;
        long n = strtol(argv[4], &end, 10);
        if (!*argv[4] || *end || n < 1 || n > 1000000) {
            fprintf(stderr, "ITERS must be a number of steps (got '%s')\n", argv[4]);
            goto done;
        }
        tp.iters = (int)n;
    }
    tp.batch_size = 4;
    tp.learning_rate = 1e-4;
    tp.lr_schedule = "cosine";
    tp.warmup_steps = tp.iters / 10;
    tp.max_seq_length = 512;
    tp.steps_per_eval = 50;
    tp.save_every = 50;
    tp.on_progress = on_progress;
    s = mc_train(model, adapter, &tp, &res);
    if (s != MC_OK) {
        fprintf(stderr, "training failed: %s\n", mc_last_error());
        goto done;
    }
    printf("%d steps, %lld tokens in %.1f s; final loss %.4f\n", res.steps, res.tokens,
           res.seconds, res.final_loss);

    /* 4. Save the trained adapter on its own (adapter_config.json and
     *    adapter_model.safetensors, without the optimizer state). */
    s = mc_adapter_save(adapter, argv[3]);
    if (s != MC_OK) {
        fprintf(stderr, "cannot save the adapter: %s\n", mc_last_error());
        goto done;
    }
    printf("adapter saved to %s\n", argv[3]);
    rc = 0;
done:
    mc_adapter_free(adapter);
    mc_tokenizer_free(tok);
    mc_model_free(model); /* last: the adapter borrowed it */
    return rc;
}
