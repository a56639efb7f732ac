/* tokenize.c - example: encode text into token ids with a Hugging Face tokenizer.json and
 * decode them back.
 *
 *   example_tokenize TOKENIZER TEXT
 *
 * TOKENIZER is a tokenizer.json file or a model folder holding one. Prints the ids, the
 * text each id stands for, and the decoded text; exits 1 when decoding does not give the
 * input back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcandle.h"

int main(int argc, char **argv) {
    mc_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t n = 0, len = 0, i;
    mc_status s;
    int rc = 1;
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOKENIZER TEXT\n", argv[0]);
        return 2;
    }

    /* 1. Load the tokenizer (tokenizer_config.json beside it is read too, when present). */
    s = mc_tokenizer_load(argv[1], &tok);
    if (s != MC_OK) {
        fprintf(stderr, "cannot load the tokenizer: %s\n", mc_last_error());
        return 1;
    }

    /* 2. Encode. A first call with no buffer reports how many ids there are
     *    (MC_ERR_BUFFER_TOO_SMALL with n set); the second fills the buffer. */
    s = mc_tokenizer_encode(tok, argv[2], strlen(argv[2]), 0, NULL, 0, &n);
    if (s != MC_OK && s != MC_ERR_BUFFER_TOO_SMALL) {
        fprintf(stderr, "cannot encode: %s\n", mc_last_error());
        goto done;
    }
    ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids || mc_tokenizer_encode(tok, argv[2], strlen(argv[2]), 0, ids, n, &n) != MC_OK) {
        fprintf(stderr, "cannot encode: %s\n", ids ? mc_last_error() : "out of memory");
        goto done;
    }
    printf("%zu tokens:", n);
    for (i = 0; i < n; i++) printf(" %d", (int)ids[i]);
    printf("\n");
    for (i = 0; i < n; i++) /* the spelling of each token in tokenizer.json */
        printf("  %6d  %s\n", (int)ids[i], mc_tokenizer_id_to_token(tok, ids[i]));

    /* 3. Decode, with the same two-call pattern (the length excludes the final NUL). */
    s = mc_tokenizer_decode(tok, ids, n, 0, NULL, 0, &len);
    if (s != MC_OK && s != MC_ERR_BUFFER_TOO_SMALL) {
        fprintf(stderr, "cannot decode: %s\n", mc_last_error());
        goto done;
    }
    text = malloc(len + 1);
    if (!text || mc_tokenizer_decode(tok, ids, n, 0, text, len + 1, &len) != MC_OK) {
        fprintf(stderr, "cannot decode: %s\n", text ? mc_last_error() : "out of memory");
        goto done;
    }
    printf("decoded: %s\n", text);

    /* 4. Byte-level BPE is lossless: decoding gives the input back. */
    rc = len == strlen(argv[2]) && memcmp(text, argv[2], len) == 0 ? 0 : 1;
    printf("round trip: %s\n", rc == 0 ? "ok" : "DIFFERENT");
done:
    free(text);
    free(ids);
    mc_tokenizer_free(tok);
    return rc;
}
