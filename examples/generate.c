/* generate.c - example: load a model folder and its tokenizer, and stream a continuation
 * of a prompt to stdout as it is generated.
 *
 *   example_generate MODEL_DIR PROMPT [TOKENIZER]
 *
 * TOKENIZER defaults to MODEL_DIR (a Hugging Face folder holding tokenizer.json). Prints
 * the generated text as it comes, then the stop reason and speed on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcandle.h"

/* Called once per generated token with the text that became visible (it may be empty
 * while a UTF-8 character or a stop string is incomplete). Return non-zero to stop. */
static int on_token(int seq, const char *text, size_t len, int32_t token, float logprob,
                    void *user) {
    (void)seq;
    (void)token;
    (void)logprob;
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    mc_model *model = NULL;
    mc_tokenizer *tok = NULL;
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    mc_generate_params gp = mc_generate_default_params();
    mc_generation out;
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    mc_status s;
    int rc = 1;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s MODEL_DIR PROMPT [TOKENIZER]\n", argv[0]);
        return 2;
    }
    memset(&out, 0, sizeof out);

    /* 1. The model (weights are memory-mapped) and its tokenizer. */
    s = mc_model_load(argv[1], NULL, &model);
    if (s != MC_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], mc_last_error());
        return 1;
    }
    s = mc_tokenizer_load(argc == 4 ? argv[3] : argv[1], &tok);
    if (s != MC_OK) {
        fprintf(stderr, "cannot load the tokenizer: %s\n", mc_last_error());
        goto done;
    }

    /* 2. The prompt as token ids (ask for the count first, then fill). */
    s = mc_tokenizer_encode(tok, argv[2], strlen(argv[2]), 1, NULL, 0, &n_prompt);
    prompt = malloc((n_prompt ? n_prompt : 1) * sizeof *prompt);
    if (!prompt || (s != MC_OK && s != MC_ERR_BUFFER_TOO_SMALL) ||
        mc_tokenizer_encode(tok, argv[2], strlen(argv[2]), 1, prompt, n_prompt, &n_prompt) !=
            MC_OK) {
        fprintf(stderr, "cannot encode the prompt: %s\n", mc_last_error());
        goto done;
    }

    /* 3. A context: the per-run state (KV cache). 1024 positions are plenty here. */
    cp.n_ctx = 1024;
    s = mc_context_create(model, &cp, &ctx);
    if (s != MC_OK) {
        fprintf(stderr, "cannot create a context: %s\n", mc_last_error());
        goto done;
    }

    /* 4. Generate: at most 64 tokens, sampled with the defaults (temperature 0.8, top-k 40,
     *    top-p 0.95, min-p 0.05) from a fixed seed, so runs repeat; text streams through
     *    the callback, and the tokenizer lets stop strings and the result hold text. */
    gp.max_tokens = 64;
    gp.tokenizer = tok;
    gp.sampler.seed = 42;
    gp.on_token = on_token;
    fputs(argv[2], stdout);
    s = mc_generate(ctx, prompt, n_prompt, &gp, &out);
    if (s != MC_OK) {
        fprintf(stderr, "\ngeneration failed: %s\n", mc_last_error());
        goto done;
    }
    printf("\n");
    fprintf(stderr, "%zu prompt tokens, %zu generated (stopped: %s), %.1f tokens/s\n",
            out.prompt_tokens, out.n_tokens, mc_stop_reason_name(out.stop_reason),
            out.decode_seconds > 0 ? (double)out.decode_steps / out.decode_seconds : 0.0);
    rc = 0;
done:
    mc_generation_clear(&out);
    free(prompt);
    mc_context_free(ctx);
    mc_tokenizer_free(tok);
    mc_model_free(model); /* last: the context borrowed it */
    return rc;
}
