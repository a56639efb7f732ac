/* fuzz_tok_load.c - fuzz target for the tokenizer.json loader: the input is tokenizer.json
 * text (and, against a fixed valid tokenizer, tokenizer_config.json text). Loading must
 * fail cleanly or give a tokenizer that encodes and decodes a sample without crashing,
 * leaking or producing ids outside its vocabulary. */
#include <stdint.h>
#include <string.h>

#include "mcandle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char k_base[] =
    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<|im_start|>\":3},"
    "\"merges\":[\"a b\"]}}";

static const char k_sample[] = "ab  ba\n<|im_start|>x\xc3\xa9\xe4\xb8\xad 12'S";

static void exercise(const mc_tokenizer *tok) {
    int32_t ids[256];
    char out[1024];
    size_t n = 0, len = 0, i;
    mc_chat_message m[2] = {{"system", "s"}, {"user", "u"}};
    mc_status s = mc_tokenizer_encode(tok, k_sample, sizeof k_sample - 1, 1, ids, 256, &n);
    if (s == MC_OK) {
        for (i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= mc_tokenizer_vocab_size(tok)) __builtin_trap();
        (void)mc_tokenizer_decode(tok, ids, n, 1, out, sizeof out, &len);
    }
    (void)mc_chat_render(tok, m, 2, NULL, out, sizeof out, &len);
    (void)mc_tokenizer_token_to_id(tok, "ab");
    (void)mc_tokenizer_id_to_token(tok, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mc_tokenizer *tok = NULL;
    if (mc_tokenizer_parse((const char *)data, size, NULL, 0, "fuzz.json", &tok) == MC_OK) {
        exercise(tok);
        mc_tokenizer_free(tok);
        tok = NULL;
    }
    if (mc_tokenizer_parse(k_base, sizeof k_base - 1, (const char *)data, size, "base.json",
                           &tok) == MC_OK) {
        exercise(tok);
        mc_tokenizer_free(tok);
    }
    return 0;
}
