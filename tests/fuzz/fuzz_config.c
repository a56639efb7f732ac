/* fuzz_config.c - fuzz target: the input is config.json text, then (against a valid
 * config) generation_config.json text. Neither may crash, leak or read past the input. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *BASE =
    "{\"model_type\":\"qwen2\",\"vocab_size\":32,\"hidden_size\":16,\"intermediate_size\":40,"
    "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"eos_token_id\":[1,2]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mc_config c;
    const char *text = (const char *)data;
    if (mc_config_parse(text, size, "fuzz/config.json", &c) == MC_OK) {
        if (c.n_eos < 0 || c.n_eos > 8 || c.head_dim <= 0) __builtin_trap();
    }
    if (mc_config_parse(BASE, strlen(BASE), "base.json", &c) != MC_OK) __builtin_trap();
    if (mc_genconfig_parse(text, size, "fuzz/generation_config.json", &c) == MC_OK) {
        if (c.n_eos < 0 || c.n_eos > 8) __builtin_trap();
    }
    return 0;
}
