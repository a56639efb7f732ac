/* fuzz_tok_encode.c - fuzz target for the tokenizer's encoder: the input is text. Invalid
 * UTF-8 must be refused with MC_ERR_UTF8; valid text must encode, every id must be in the
 * vocabulary, and decoding must give the text back exactly when the text is already in NFC
 * and holds no added token (the round-trip property). The tokenizer is the real Qwen one
 * when MC_TOKENIZER_DIR (or the fetch script's cache folder) has it, else a small byte-level
 * BPE built here with the same pre-tokenizer regex, NFC and added tokens. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *k_qwen_regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+";

/* A byte-level BPE over the 256 byte tokens with a handful of merges. */
static mc_tokenizer *synthetic(void) {
    char *json = malloc(65536);
    size_t n = 0;
    int b;
    mc_tokenizer *tok = NULL;
    n += (size_t)snprintf(
        json + n, 65536 - n,
        "{\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\","
        "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"%s\"},"
        "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":false,\"use_regex\":false}]},\"decoder\":{\"type\":"
        "\"ByteLevel\"},\"added_tokens\":[{\"id\":300,\"content\":\"<|endoftext|>\","
        "\"special\":true},{\"id\":301,\"content\":\"<|im_start|>\",\"special\":true}],"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{",
        k_qwen_regex);
    for (b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t k = mc_utf8_put(mc_bl_char[b], u), i;
        json[n++] = '"';
        for (i = 0; i < k; i++) {
            if (u[i] == '"' || u[i] == '\\') json[n++] = '\\';
            json[n++] = (char)u[i];
        }
        n += (size_t)snprintf(json + n, 65536 - n, "\":%d,", b);
    }
    n += (size_t)snprintf(json + n, 65536 - n,
                          "\"in\":256,\"\xc4\xa0t\":257,\"th\":258,\"\xc4\xa0th\":259,\"er\":260,"
                          "\"\xc4\xa0\xc4\xa0\":261},\"merges\":[\"i n\",\"\xc4\xa0 t\",\"t h\","
                          "\"\xc4\xa0t h\",\"e r\",\"\xc4\xa0 \xc4\xa0\"]}}");
    if (mc_tokenizer_parse(json, n, NULL, 0, "fuzz-synthetic", &tok) != MC_OK) __builtin_trap();
    free(json);
    return tok;
}

static mc_tokenizer *load(void) {
    const char *dir = getenv("MC_TOKENIZER_DIR");
    char path[4096];
    mc_tokenizer *tok = NULL;
    if (!dir || !*dir) {
        const char *home = getenv("HOME");
        snprintf(path, sizeof path, "%s/.cache/metal-candle/tokenizer-qwen3-3.7.2",
                 home ? home : "");
        dir = path;
    }
    if (mc_tokenizer_load(dir, &tok) == MC_OK) return tok;
    return synthetic();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mc_tokenizer *tok;
    const char *text = (const char *)data;
    int32_t *ids;
    size_t n = 0, cap = size + 8, i, len = 0;
    char *back;
    mc_buf nfc = {0};
    mc_status s;
    if (!tok) tok = load();
    ids = malloc(cap * sizeof *ids);
    s = mc_tokenizer_encode(tok, text, size, 1, ids, cap, &n);
    if (mc_utf8_check(data, size) != size) {
        if (s != MC_ERR_UTF8) __builtin_trap();
        free(ids);
        return 0;
    }
    if (s != MC_OK) __builtin_trap(); /* bytes never give more ids than bytes (+ specials) */
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= mc_tokenizer_vocab_size(tok)) __builtin_trap();
    back = malloc(size * 3 + 16);
    if (mc_tokenizer_decode(tok, ids, n, 0, back, size * 3 + 16, &len) != MC_OK) __builtin_trap();
    if (mc_utf8_check((const uint8_t *)back, len) != len) __builtin_trap();
    if (!memchr(data, '<', size) && mc_normalize(MC_NORM_NFC, data, size, &nfc) == MC_OK &&
        nfc.n == size && (size == 0 || memcmp(nfc.p, data, size) == 0)) {
        if (len != size || (size && memcmp(back, data, size) != 0)) __builtin_trap();
    }
    mc_buf_free(&nfc);
    free(back);
    free(ids);
    return 0;
}
