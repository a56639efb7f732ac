/* test_tokenizer.c - the tokenizer without the real Qwen files: every component against
 * Hugging Face on the synthetic tokenizers (tests/fixtures/tokenizer/synthetic.jsonl), and
 * unit tests of loading errors, invalid UTF-8, buffer sizes, lookups, chat templates, FIM,
 * allocation failures and concurrent use. */
#include <pthread.h>

#include "tok_test_util.h"

#define FIX(name) t_src("tests/fixtures/tokenizer/" name)

/* Parses a tokenizer from a JSON string. */
static mc_status parse(const char *json, mc_tokenizer **tok) {
    return mc_tokenizer_parse(json, strlen(json), NULL, 0, "test.json", tok);
}

/* A small byte-level BPE: the 256 byte tokens plus a few merges, as JSON text with
 * %s slots for extra top-level members and extra model members. */
static char *g_vocab_json; /* "\"<bytes>\":0,...,\"ab\":256,..." */

static void build_vocab_json(void) {
    size_t cap = 16384, n = 0;
    int b;
    g_vocab_json = malloc(cap);
    for (b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t k = mc_utf8_put(mc_bl_char[b], u), i;
        g_vocab_json[n++] = '"';
        for (i = 0; i < k; i++) {
            if (u[i] == '"' || u[i] == '\\') g_vocab_json[n++] = '\\';
            g_vocab_json[n++] = (char)u[i];
        }
        n += (size_t)snprintf(g_vocab_json + n, cap - n, "\":%d,", b);
    }
    n += (size_t)snprintf(g_vocab_json + n, cap - n,
                          "\"ab\":256,\"abc\":257,\"\xc4\xa0"
                          "a\":258,\"\xc4\xa0"
                          "ab\":259,\"bc\":260");
}

/* A complete tokenizer.json: extra_top is inserted at top level (starting with a comma),
 * model_extra into the model (starting with a comma), merges replaces the merges. */
static char *mini_json(const char *extra_top, const char *model_extra, const char *merges) {
    size_t cap =
        strlen(g_vocab_json) + strlen(extra_top) + strlen(model_extra) + strlen(merges) + 512;
    char *s = malloc(cap);
    snprintf(s, cap,
             "{\"version\":\"1.0\"%s,\"model\":{\"type\":\"BPE\",\"vocab\":{%s},\"merges\":%s%s}}",
             extra_top, g_vocab_json, merges, model_extra);
    return s;
}

#define BL_PRE \
    ",\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define BL_DEC ",\"decoder\":{\"type\":\"ByteLevel\"}"
#define MERGES                                    \
    "[\"a b\",\"ab c\",\"\xc4\xa0 a\",\"\xc4\xa0" \
    "a b\",\"b c\"]"

/* Loads mini_json(...) and checks the status (and a message fragment when failing). */
static void expect_load(const char *top, const char *model, const char *merges, mc_status want,
                        const char *msg) {
    char *j = mini_json(top, model, merges);
    mc_tokenizer *tok = NULL;
    mc_status s = parse(j, &tok);
    if (s != want) {
        fprintf(stderr, "load of [%.300s...] gave %s (%s), expected %s\n", top, mc_status_name(s),
                mc_last_error(), mc_status_name(want));
        t_checks_failed++;
    } else if (msg) {
        CHECK_MSG(msg);
    }
    CHECK((s == MC_OK) == (tok != NULL));
    mc_tokenizer_free(tok);
    free(j);
}

/* ---- Hugging Face parity on the synthetic tokenizers -------------------------------------- */

static void test_synthetic_parity(void) {
    size_t len = 0, n, i, bad = 0, loaded = 0;
    char *buf = tt_read(FIX("synthetic.jsonl"), &len);
    char **lines = NULL;
    char cur[128] = "";
    mc_tokenizer *tok = NULL;
    CHECK(buf != NULL);
    if (!buf) return;
    n = tt_lines(buf, &lines);
    CHECK(n > 1000);
    for (i = 0; i < n; i++) {
        cJSON *row = cJSON_Parse(lines[i]);
        const char *name = cJSON_GetObjectItem(row, "tokenizer")->valuestring;
        size_t tlen = 0, dlen = 0, slen = 0, n_want, n_got = 0, out_len = 0;
        char *text, *dec, *dec_skip, *out;
        int32_t *want, *got;
        int add = cJSON_IsTrue(cJSON_GetObjectItem(row, "add_special")), ok;
        CHECK(cJSON_GetObjectItem(row, "load_error") == NULL);
        if (strcmp(name, cur) != 0) {
            char path[4200];
            mc_tokenizer_free(tok);
            tok = NULL;
            snprintf(cur, sizeof cur, "%s", name);
            snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/synthetic/%s.json",
                     MC_SOURCE_DIR, name);
            CHECK_OK(mc_tokenizer_load(path, &tok));
            loaded++;
        }
        text = tt_field(lines[i], "text", &tlen);
        dec = tt_field(lines[i], "decoded", &dlen);
        dec_skip = tt_field(lines[i], "decoded_skip", &slen);
        want = tt_ids(cJSON_GetObjectItem(row, "ids"), &n_want);
        got = tok ? tt_encode(tok, text, tlen, add, &n_got) : NULL;
        ok = got && tt_same_ids(name, text, tlen, got, n_got, want, n_want);
        out = got ? tt_decode(tok, want, n_want, 0, &out_len) : NULL;
        if (ok && !(out && out_len == dlen && !memcmp(out, dec, dlen))) {
            fprintf(stderr, "%s: decode differs\n", name);
            if (out) tt_print_text("got", out, out_len);
            tt_print_text("expected", dec, dlen);
            ok = 0;
        }
        free(out);
        out = got ? tt_decode(tok, want, n_want, 1, &out_len) : NULL;
        if (ok && !(out && out_len == slen && !memcmp(out, dec_skip, slen))) {
            fprintf(stderr, "%s: decode(skip_special) differs\n", name);
            if (out) tt_print_text("got", out, out_len);
            tt_print_text("expected", dec_skip, slen);
            ok = 0;
        }
        if (!ok && ++bad <= 10) fprintf(stderr, "  (synthetic.jsonl line %zu)\n", i + 1);
        if (!ok) t_checks_failed++;
        free(out);
        free(got);
        free(want);
        free(text);
        free(dec);
        free(dec_skip);
        cJSON_Delete(row);
    }
    printf("synthetic.jsonl: %zu cases over %zu tokenizers, %zu differ\n", n, loaded, bad);
    CHECK(loaded >= 13);
    mc_tokenizer_free(tok);
    free(lines);
    free(buf);
}

/* ---- loading errors ----------------------------------------------------------------------- */

static void test_load_errors_json(void) {
    mc_tokenizer *tok = NULL;
    CHECK_STATUS(parse("{\"model\": ", &tok), MC_ERR_JSON);
    CHECK_MSG("byte");
    CHECK_STATUS(parse("", &tok), MC_ERR_JSON);
    CHECK_STATUS(parse("[1, 2]", &tok), MC_ERR_TOKENIZER);
    CHECK_STATUS(parse("{}", &tok), MC_ERR_TOKENIZER);
    CHECK_MSG("'model'");
    CHECK_STATUS(parse("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", &tok),
                 MC_ERR_UNSUPPORTED);
    CHECK_MSG("Unigram");
    CHECK_STATUS(parse("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", &tok),
                 MC_ERR_UNSUPPORTED);
    CHECK_MSG("WordPiece");
    CHECK_STATUS(parse("{\"model\":{\"vocab\":{}}}", &tok), MC_ERR_UNSUPPORTED);
    CHECK_STATUS(parse("{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}", &tok),
                 MC_ERR_TOKENIZER);
    CHECK_STATUS(parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":{}}}", &tok),
                 MC_ERR_TOKENIZER);
    CHECK_STATUS(parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", &tok),
                 MC_ERR_TOKENIZER);
    CHECK_MSG("empty");
    CHECK_STATUS(mc_tokenizer_parse(NULL, 5, NULL, 0, NULL, &tok), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_parse("{}", 2, NULL, 3, NULL, &tok), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_parse("{}", 2, NULL, 0, NULL, NULL), MC_ERR_INVALID_ARG);
    CHECK(tok == NULL);
}

static void test_load_errors_components(void) {
    expect_load("", "", MERGES, MC_OK, NULL);
    expect_load(",\"normalizer\":{\"type\":\"Lowercase\"}", "", MERGES, MC_ERR_UNSUPPORTED,
                "Lowercase");
    expect_load(",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
                "{\"type\":\"Strip\"}]}",
                "", MERGES, MC_ERR_UNSUPPORTED, "Strip");
    expect_load(",\"normalizer\":{\"type\":\"Sequence\"}", "", MERGES, MC_ERR_TOKENIZER,
                "normalizers");
    expect_load(",\"normalizer\":5", "", MERGES, MC_ERR_TOKENIZER, "normalizer");
    expect_load(",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
                "{\"type\":\"NFC\"},{\"type\":\"NFC\"},{\"type\":\"NFC\"},{\"type\":\"NFC\"},"
                "{\"type\":\"NFC\"},{\"type\":\"NFC\"},{\"type\":\"NFC\"},{\"type\":\"NFC\"}]}",
                "", MERGES, MC_ERR_TOKENIZER, "normalizers");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Metaspace\"}", "", MERGES, MC_ERR_UNSUPPORTED,
                "Metaspace");
    expect_load(",\"pre_tokenizer\":[]", "", MERGES, MC_ERR_TOKENIZER, "pre_tokenizer");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":3}", "", MERGES,
                MC_ERR_TOKENIZER, "pretokenizers");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"behavior\":\"Isolated\"}", "", MERGES,
                MC_ERR_TOKENIZER, "pattern");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Other\":\"x\"},"
                "\"behavior\":\"Isolated\"}",
                "", MERGES, MC_ERR_TOKENIZER, "Regex");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"}}", "", MERGES,
                MC_ERR_TOKENIZER, "behavior");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},"
                "\"behavior\":\"Sideways\"}",
                "", MERGES, MC_ERR_UNSUPPORTED, "Sideways");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(x\"},"
                "\"behavior\":\"Isolated\"}",
                "", MERGES, MC_ERR_UNSUPPORTED, "regex");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\\\\S]\"},"
                "\"behavior\":\"Isolated\"}",
                "", MERGES, MC_ERR_UNSUPPORTED, "character class");
    expect_load(",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},"
                "\"behavior\":\"Isolated\",\"invert\":\"no\"}",
                "", MERGES, MC_ERR_TOKENIZER, "invert");
    expect_load(
        ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},"
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},\"behavior\":\"Isolated\"}]}",
        "", MERGES, MC_ERR_UNSUPPORTED, "after ByteLevel");
    {
        char top[2048] = ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[";
        int i;
        for (i = 0; i < 9; i++)
            strcat(
                top,
                i ? ",{\"type\":\"Split\",\"pattern\":{\"String\":\"x\"},\"behavior\":\"Isolated\"}"
                  : "{\"type\":\"Split\",\"pattern\":{\"String\":\"x\"},\"behavior\":"
                    "\"Isolated\"}");
        strcat(top, "]}");
        expect_load(top, "", MERGES, MC_ERR_TOKENIZER, "pre-tokenizers");
    }
    expect_load(",\"decoder\":{\"type\":\"WordPiece\"}", "", MERGES, MC_ERR_UNSUPPORTED,
                "WordPiece");
    expect_load(",\"decoder\":7", "", MERGES, MC_ERR_TOKENIZER, "decoder");
    expect_load(",\"post_processor\":{\"type\":\"Mystery\"}", "", MERGES, MC_ERR_UNSUPPORTED,
                "Mystery");
    expect_load(",\"post_processor\":\"x\"", "", MERGES, MC_ERR_TOKENIZER, "post_processor");
    expect_load(",\"post_processor\":{\"type\":\"Sequence\"}", "", MERGES, MC_ERR_TOKENIZER,
                "processors");
    expect_load(
        ",\"post_processor\":{\"type\":\"BertProcessing\",\"cls\":[\"a\"],\"sep\":[\"b\",1]}", "",
        MERGES, MC_ERR_TOKENIZER, "cls");
    expect_load(",\"post_processor\":{\"type\":\"RobertaProcessing\",\"cls\":[\"a\",0],"
                "\"sep\":[\"x\",9999]}",
                "", MERGES, MC_ERR_TOKENIZER, "9999");
    expect_load(",\"post_processor\":{\"type\":\"TemplateProcessing\"}", "", MERGES,
                MC_ERR_TOKENIZER, "single");
    expect_load(
        ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"Sequence\":{\"id\":"
        "\"B\",\"type_id\":0}}],\"special_tokens\":{}}",
        "", MERGES, MC_ERR_UNSUPPORTED, "$A");
    expect_load(
        ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{"
        "\"id\":\"<s>\",\"type_id\":0}}],\"special_tokens\":{}}",
        "", MERGES, MC_ERR_TOKENIZER, "<s>");
    expect_load(
        ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{"
        "\"id\":\"<s>\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"ids\":[1]}}}",
        "", MERGES, MC_ERR_UNSUPPORTED, "$A");
    expect_load(",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[7],"
                "\"special_tokens\":{}}",
                "", MERGES, MC_ERR_TOKENIZER, "SpecialToken");
    expect_load(",\"truncation\":{\"max_length\":5}", "", MERGES, MC_ERR_UNSUPPORTED, "truncation");
    expect_load(",\"padding\":{}", "", MERGES, MC_ERR_UNSUPPORTED, "padding");
    expect_load(",\"added_tokens\":{}", "", MERGES, MC_ERR_TOKENIZER, "added_tokens");
}

static void test_load_errors_model(void) {
    expect_load("", ",\"dropout\":0.1", MERGES, MC_ERR_UNSUPPORTED, "dropout");
    expect_load("", ",\"dropout\":0", MERGES, MC_OK, NULL);
    expect_load("", ",\"byte_fallback\":true", MERGES, MC_ERR_UNSUPPORTED, "byte_fallback");
    expect_load("", ",\"byte_fallback\":1", MERGES, MC_ERR_TOKENIZER, "byte_fallback");
    expect_load("", ",\"continuing_subword_prefix\":\"##\"", MERGES, MC_ERR_UNSUPPORTED, "prefix");
    expect_load("", ",\"end_of_word_suffix\":\"</w>\"", MERGES, MC_ERR_UNSUPPORTED, "suffix");
    expect_load("", ",\"continuing_subword_prefix\":\"\",\"end_of_word_suffix\":null", MERGES,
                MC_OK, NULL);
    expect_load("", ",\"unk_token\":\"<unk>\"", MERGES, MC_ERR_TOKENIZER, "unk_token");
    expect_load("", ",\"unk_token\":3", MERGES, MC_ERR_TOKENIZER, "unk_token");
    expect_load("", "", "[\"a zz\"]", MC_ERR_TOKENIZER, "zz");
    expect_load("", "", "[[\"q\",\"a\"]]", MC_ERR_TOKENIZER, "not in the vocabulary");
    expect_load("", "", "[\"c a\"]", MC_ERR_TOKENIZER, "makes 'ca'");
    expect_load("", "", "[\"a b c\"]", MC_ERR_TOKENIZER, "one space");
    expect_load("", "", "[\"ab\"]", MC_ERR_TOKENIZER, "one space");
    expect_load("", "", "[[\"a\"]]", MC_ERR_TOKENIZER, "merges[0]");
    expect_load("", "", "[5]", MC_ERR_TOKENIZER, "merges[0]");
    expect_load("", "", "[\"#version: 0.2\",\"a b\"]", MC_OK, NULL);
    /* Vocabulary ids. */
    {
        mc_tokenizer *tok = NULL;
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", &tok),
            MC_ERR_TOKENIZER);
        CHECK_MSG("duplicate id 0");
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}", &tok),
            MC_ERR_TOKENIZER);
        CHECK_MSG("occurs twice");
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1.5},\"merges\":[]}}", &tok),
            MC_ERR_TOKENIZER);
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}}", &tok),
            MC_ERR_TOKENIZER);
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":900000},\"merges\":[]}}",
                  &tok),
            MC_ERR_TOKENIZER);
        CHECK_MSG("far beyond");
        CHECK_STATUS(
            parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":3e12},\"merges\":[]}}", &tok),
            MC_ERR_TOKENIZER);
    }
    /* Added tokens. */
    expect_load(",\"added_tokens\":[{\"id\":5,\"content\":\"<x>\"}]", "", MERGES, MC_ERR_TOKENIZER,
                "which");
    expect_load(",\"added_tokens\":[{\"id\":300,\"content\":\"\"}]", "", MERGES, MC_ERR_TOKENIZER,
                "content");
    expect_load(",\"added_tokens\":[{\"id\":300}]", "", MERGES, MC_ERR_TOKENIZER, "content");
    expect_load(",\"added_tokens\":[{\"content\":\"<x>\"}]", "", MERGES, MC_ERR_TOKENIZER,
                "token id");
    expect_load(",\"added_tokens\":[7]", "", MERGES, MC_ERR_TOKENIZER, "objects");
    expect_load(",\"added_tokens\":[{\"id\":300,\"content\":\"ab\"}]", "", MERGES, MC_ERR_TOKENIZER,
                "also id");
    expect_load(",\"added_tokens\":[{\"id\":256,\"content\":\"ab\",\"special\":true}]", "", MERGES,
                MC_OK, NULL);
    expect_load(",\"added_tokens\":[{\"id\":300,\"content\":\"<x>\",\"lstrip\":\"yes\"}]", "",
                MERGES, MC_ERR_TOKENIZER, "lstrip");
    expect_load(
        ",\"added_tokens\":[{\"id\":300,\"content\":\"<x>\"},{\"id\":301,\"content\":\"<x>\"}]", "",
        MERGES, MC_ERR_TOKENIZER, "also id");
    expect_load(",\"added_tokens\":[{\"id\":300,\"content\":\"\xff"
                "x\",\"normalized\":true}]",
                "", MERGES, MC_ERR_TOKENIZER, "not valid UTF-8");
}

static void test_load_files_and_folders(void) {
    const char *dir = t_tmpdir("tok_load");
    char path[4200], cfg[4200], *j = mini_json(BL_PRE BL_DEC, "", MERGES);
    FILE *f;
    mc_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    CHECK_STATUS(mc_tokenizer_load(dir, &tok), MC_ERR_FILE_NOT_FOUND);
    CHECK_STATUS(mc_tokenizer_load(path, &tok), MC_ERR_FILE_NOT_FOUND);
    CHECK_STATUS(mc_tokenizer_load(NULL, &tok), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_load(dir, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_load_files(NULL, NULL, &tok), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_load_files(path, NULL, NULL), MC_ERR_INVALID_ARG);
    f = fopen(path, "w");
    fputs(j, f);
    fclose(f);
    CHECK_OK(mc_tokenizer_load(dir, &tok));
    CHECK(mc_tokenizer_chat_template(tok) == NULL);
    CHECK_INT(mc_tokenizer_special_id(tok, MC_TOKEN_EOS), -1);
    mc_tokenizer_free(tok);
    tok = NULL;
    f = fopen(cfg, "w");
    fputs("{\"eos_token\":{\"content\":\"ab\"},\"bos_token\":\"abc\",\"pad_token\":null,"
          "\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"x\"},{\"name\":\"default\","
          "\"template\":\"{{'<|im_start|>' + m + '<|im_end|>'}}\"}]}",
          f);
    fclose(f);
    CHECK_OK(mc_tokenizer_load(dir, &tok));
    CHECK_INT(mc_tokenizer_special_id(tok, MC_TOKEN_EOS), 256);
    CHECK_INT(mc_tokenizer_special_id(tok, MC_TOKEN_BOS), 257);
    CHECK_INT(mc_tokenizer_special_id(tok, MC_TOKEN_PAD), -1);
    CHECK_INT(mc_tokenizer_special_id(tok, (mc_special_token)99), -1);
    CHECK(mc_tokenizer_chat_template(tok) && !strcmp(mc_tokenizer_chat_template(tok), "chatml"));
    mc_tokenizer_free(tok);
    tok = NULL;
    CHECK_STATUS(mc_tokenizer_load_files(path, "/nonexistent/tokenizer_config.json", &tok),
                 MC_ERR_FILE_NOT_FOUND);
    /* Broken configs. */
    {
        static const char *const bad[] = {"[1]", "{\"eos_token\":5}", "{\"chat_template\":5}", "{"};
        static const mc_status want[] = {MC_ERR_TOKENIZER, MC_ERR_TOKENIZER, MC_ERR_TOKENIZER,
                                         MC_ERR_JSON};
        int i;
        for (i = 0; i < 4; i++) {
            CHECK_STATUS(mc_tokenizer_parse(j, strlen(j), bad[i], strlen(bad[i]), "t", &tok),
                         want[i]);
            CHECK(tok == NULL);
        }
    }
    free(j);
}

/* ---- encoding and decoding ----------------------------------------------------------------- */

static void test_invalid_utf8(void) {
    static const struct {
        const char *s;
        size_t len, offset;
    } cases[] = {
        {"ab\xc0\x80", 4, 2},          /* overlong */
        {"\xed\xa0\x80", 3, 0},        /* surrogate */
        {"xyz\xf5\x80\x80\x80", 7, 3}, /* beyond U+10FFFF */
        {"\xe4\xb8", 2, 0},            /* truncated */
        {"ok \x80", 4, 3},             /* lone continuation */
        {"12345678901234\xff", 15, 14},
        {"\xf4\x90\x80\x80", 4, 0},
        {"\xe0\x80\x80", 3, 0},
    };
    char *j = mini_json(BL_PRE BL_DEC, "", MERGES);
    mc_tokenizer *tok = NULL;
    size_t i, n = 0;
    int32_t ids[16];
    CHECK_OK(parse(j, &tok));
    for (i = 0; tok && i < sizeof cases / sizeof cases[0]; i++) {
        char want[64];
        CHECK_STATUS(mc_tokenizer_encode(tok, cases[i].s, cases[i].len, 1, ids, 16, &n),
                     MC_ERR_UTF8);
        snprintf(want, sizeof want, "byte offset %zu", cases[i].offset);
        CHECK_MSG(want);
    }
    CHECK_OK(mc_tokenizer_encode(tok, "a\0b", 3, 1, ids, 16, &n)); /* NUL is valid text */
    CHECK_INT(n, 3);
    mc_tokenizer_free(tok);
    free(j);
}

static void test_buffers_and_lookups(void) {
    char *j = mini_json(BL_PRE BL_DEC ",\"added_tokens\":[{\"id\":300,\"content\":\"<s>\","
                                      "\"special\":true},{\"id\":302,\"content\":\"<x>\"}]",
                        "", MERGES);
    mc_tokenizer *tok = NULL;
    int32_t ids[8], bad_ids[2] = {0, 301};
    size_t n = 99, len = 99;
    char buf[64];
    CHECK_OK(parse(j, &tok));
    if (!tok) return;
    /* " ab": "a b" (rank 0) merges before "Ġ a" (rank 2), and there is no "Ġ ab". */
    CHECK_OK(mc_tokenizer_encode(tok, "abc ab", 6, 1, ids, 8, &n));
    CHECK_INT(n, 3);
    CHECK_INT(ids[0], 257);
    CHECK_INT(ids[1], 32);
    CHECK_INT(ids[2], 256);
    CHECK_STATUS(mc_tokenizer_encode(tok, "abc ab<s>", 9, 1, ids, 2, &n), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_INT(n, 4);
    CHECK_STATUS(mc_tokenizer_encode(tok, "abc", 3, 1, NULL, 0, &n), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_INT(n, 1);
    CHECK_OK(mc_tokenizer_encode(tok, "", 0, 1, NULL, 0, &n));
    CHECK_INT(n, 0);
    CHECK_STATUS(mc_tokenizer_encode(NULL, "a", 1, 1, ids, 8, &n), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_encode(tok, NULL, 1, 1, ids, 8, &n), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_encode(tok, "a", 1, 1, NULL, 8, &n), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_encode(tok, "a", 1, 1, ids, 8, NULL), MC_ERR_INVALID_ARG);
    /* Decode: exact fit, one short, bad ids, hole ids. */
    ids[0] = 257;
    ids[1] = 300;
    ids[2] = 259;
    CHECK_OK(mc_tokenizer_decode(tok, ids, 3, 0, buf, 10, &len));
    CHECK_INT(len, 9);
    CHECK(!strcmp(buf, "abc<s> ab"));
    CHECK_STATUS(mc_tokenizer_decode(tok, ids, 3, 0, buf, 9, &len), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_INT(len, 9);
    CHECK_OK(mc_tokenizer_decode(tok, ids, 3, 1, buf, sizeof buf, &len));
    CHECK(!strcmp(buf, "abc ab"));
    CHECK_OK(mc_tokenizer_decode(tok, ids, 0, 0, buf, 1, &len));
    CHECK_INT(len, 0);
    CHECK_STATUS(mc_tokenizer_decode(tok, bad_ids, 2, 0, buf, sizeof buf, &len), MC_ERR_TOKEN_ID);
    CHECK_MSG("position 1");
    bad_ids[1] = -5;
    CHECK_STATUS(mc_tokenizer_decode(tok, bad_ids, 2, 0, buf, sizeof buf, &len), MC_ERR_TOKEN_ID);
    CHECK_STATUS(mc_tokenizer_decode(tok, NULL, 2, 0, buf, sizeof buf, &len), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_tokenizer_decode(tok, ids, 1, 0, NULL, 5, &len), MC_ERR_INVALID_ARG);
    /* token_bytes: byte tokens are raw bytes, possibly half a character. */
    CHECK_OK(mc_tokenizer_token_bytes(tok, 0xC3, buf, sizeof buf, &len));
    CHECK_INT(len, 1);
    CHECK_INT((unsigned char)buf[0], 0xC3);
    CHECK_OK(mc_tokenizer_token_bytes(tok, 259, buf, 3, &len));
    CHECK_INT(len, 3);
    CHECK(!memcmp(buf, " ab", 3));
    CHECK_STATUS(mc_tokenizer_token_bytes(tok, 259, buf, 2, &len), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_INT(len, 3);
    CHECK_STATUS(mc_tokenizer_token_bytes(tok, 301, buf, sizeof buf, &len), MC_ERR_TOKEN_ID);
    CHECK_STATUS(mc_tokenizer_token_bytes(tok, 5, NULL, 3, &len), MC_ERR_INVALID_ARG);
    /* Lookups. */
    CHECK_INT(mc_tokenizer_vocab_size(tok), 303);
    CHECK_INT(mc_tokenizer_vocab_size(NULL), 0);
    CHECK_INT(mc_tokenizer_token_to_id(tok, "\xc4\xa0"
                                            "ab"),
              259);
    CHECK_INT(mc_tokenizer_token_to_id(tok, "<x>"), 302);
    CHECK_INT(mc_tokenizer_token_to_id(tok, "nope"), -1);
    CHECK_INT(mc_tokenizer_token_to_id(tok, NULL), -1);
    CHECK(mc_tokenizer_id_to_token(tok, 301) == NULL);
    CHECK(mc_tokenizer_id_to_token(tok, 303) == NULL);
    CHECK(mc_tokenizer_id_to_token(tok, -1) == NULL);
    CHECK(!strcmp(mc_tokenizer_id_to_token(tok, 257), "abc"));
    CHECK_INT(mc_tokenizer_is_special(tok, 300), 1);
    CHECK_INT(mc_tokenizer_is_special(tok, 302), 0);
    CHECK_INT(mc_tokenizer_is_special(tok, 9999), 0);
    CHECK_INT(mc_tokenizer_special_id(NULL, MC_TOKEN_EOS), -1);
    mc_tokenizer_free(tok);
    mc_tokenizer_free(NULL);
    free(j);
}

/* Lossy decoding of byte tokens, and the UTF-8 helpers directly. */
static void test_utf8_helpers(void) {
    uint8_t out[64];
    mc_buf b = {0};
    uint32_t cp;
    CHECK_INT(mc_utf8_lossy((const uint8_t *)"a\xe4\xb8z", 4, out, sizeof out), 5);
    CHECK(!memcmp(out, "a\xef\xbf\xbdz", 5));
    CHECK_INT(mc_utf8_lossy((const uint8_t *)"\xed\xa0\x80", 3, out, sizeof out), 9);
    CHECK_INT(mc_utf8_lossy((const uint8_t *)"\xf0\x9f\x98", 3, out, 2), 3);
    CHECK_INT(mc_utf8_prev((const uint8_t *)"a\xf0\x9f\x98\x80", 5, &cp), 4);
    CHECK_INT(cp, 0x1F600);
    CHECK(mc_uc_is_space(0x85) && mc_uc_is_space(0x3000) && !mc_uc_is_space(0x200B));
    CHECK(mc_uc_is_word('_') && mc_uc_is_word(0x4E2D) && mc_uc_is_word(0x0301) &&
          mc_uc_is_word(0x24B6) && mc_uc_is_word(0x200D) && !mc_uc_is_word('-') &&
          !mc_uc_is_word(0x1F600) && !mc_uc_is_word(' '));
    CHECK_INT(mc_bl_byte(0x120), 0x20);
    CHECK_INT(mc_bl_byte(0x143), 0xAD);
    CHECK_INT(mc_bl_byte(0x144), -1);
    CHECK_INT(mc_bl_byte(0xAD), -1);
    CHECK_INT(mc_bl_byte(0x20), -1);
    CHECK_INT(mc_bl_byte('a'), 'a');
    /* Normalization forms. */
    CHECK_OK(mc_normalize(MC_NORM_NFD, (const uint8_t *)"\xc3\xa9", 2, &b));
    CHECK(b.n == 3 && !memcmp(b.p, "e\xcc\x81", 3));
    CHECK_OK(mc_normalize(MC_NORM_NFKC, (const uint8_t *)"\xef\xac\x81", 3, &b));
    CHECK(b.n == 2 && !memcmp(b.p, "fi", 2));
    CHECK_OK(mc_normalize(MC_NORM_NFKD, (const uint8_t *)"\xc2\xb2", 2, &b));
    CHECK(b.n == 1 && b.p[0] == '2');
    CHECK_OK(mc_normalize(MC_NORM_NFC, (const uint8_t *)"", 0, &b));
    CHECK_INT(b.n, 0);
    CHECK(mc_norm_quick(MC_NORM_NFC, (const uint8_t *)"caf\xc3\xa9", 5));
    CHECK(!mc_norm_quick(MC_NORM_NFD, (const uint8_t *)"caf\xc3\xa9", 5));
    CHECK(!mc_norm_quick(MC_NORM_NFKC, (const uint8_t *)"\xc2\xa0", 2));
    /* JSON string literals. */
    CHECK_INT(mc_json_string_decode("\"a\\u0000\\ud83d\\ude00\\n\"", 23, &b), 23);
    CHECK(b.n == 7 && !memcmp(b.p, "a\0\xf0\x9f\x98\x80\n", 7));
    CHECK_INT(mc_json_string_decode("\"\\/\\b\\f\\r\\t\\\"\\\\\"", 16, &b), 16);
    CHECK_INT(b.n, 7);
    CHECK_INT(mc_json_string_decode("\"abc", 4, &b), 0);
    CHECK_INT(mc_json_string_decode("abc\"", 4, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\q\"", 4, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\ud800x\"", 9, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\udc00\"", 8, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\u12g4\"", 8, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\u00", 5, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\x01\"", 3, &b), 0);
    CHECK_INT(mc_json_string_decode("\"\\", 2, &b), 0);
    CHECK_INT(mc_json_string_decode("", 0, &b), 0);
    mc_buf_free(&b);
}

/* Pieces far larger than the cache's keys, inputs with huge whitespace runs, and more
 * distinct pieces than the cache holds: the results must not depend on the cache. */
static void test_long_inputs_and_cache(void) {
    char *j = mini_json(BL_PRE BL_DEC, "", MERGES);
    mc_tokenizer *tok = NULL;
    size_t big = 300000, i, n = 0, pos = 0, total = 0;
    char *text = malloc(big * 8);
    int32_t *ids;
    CHECK_OK(parse(j, &tok));
    if (!tok) return;
    memset(text, ' ', big);
    ids = tt_encode(tok, text, big, 1, &n);
    CHECK(ids && n == big); /* one piece; no merges of spaces in this vocabulary */
    free(ids);
    for (i = 0; i < big; i++) text[i] = (char)('a' + i % 3);
    ids = tt_encode(tok, text, big, 1, &n);
    CHECK(ids && n == big / 3); /* "abc" x 100000 as one piece */
    free(ids);
    /* 60000 distinct words overflow the cache's 32768 entries. */
    for (i = 0; i < 60000; i++) pos += (size_t)sprintf(text + pos, " w%zux", i * 7919);
    ids = tt_encode(tok, text, pos, 1, &n);
    CHECK(ids != NULL);
    for (i = 0, pos = 0; ids && i < 60000; i += 997) {
        char word[32];
        size_t k = 0, wl = (size_t)sprintf(word, " w%zux", i * 7919);
        int32_t *one = tt_encode(tok, word, wl, 1, &k);
        total += k;
        CHECK(one != NULL);
        free(one);
    }
    CHECK(total > 0);
    /* Encoding twice gives the same ids (the second run hits the cache). */
    {
        size_t n2 = 0;
        int32_t *again = tt_encode(tok, text, strlen(text), 1, &n2);
        CHECK(again && ids && n2 == n && !memcmp(again, ids, n * sizeof *ids));
        free(again);
    }
    free(ids);
    mc_tokenizer_free(tok);
    free(text);
    free(j);
}

/* Oniguruma escapes rewritten for PCRE2 (\\uHHHH, \\h, \\w in a class, POSIX classes), and
 * a regex that exhausts PCRE2's match limit: a clean error, not a hang. */
static void test_regex_translation(void) {
    static const struct {
        const char *regex, *behavior, *text;
        size_t n_ids;
        mc_status want;
    } cases[] = {
        {"\\\\u0078", "Removed", "axbxc", 3, MC_OK}, /* \u0078 = x */
        {"[[:digit:]]+", "Removed", "a12b345c", 3, MC_OK},
        {"\\\\h+", "Removed", "zz0fz", 3, MC_OK},   /* \h = hex digit: "zz", "z" */
        {"[\\\\w]+", "Removed", "ab, c", 2, MC_OK}, /* ", " is left */
        {"\\\\W", "Removed", "a,b", 2, MC_OK},
        {"(x+x+)+y", "Isolated", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxz y", 0, MC_ERR_UNSUPPORTED},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char top[512];
        char *j;
        mc_tokenizer *tok = NULL;
        int32_t ids[64];
        size_t n = 0;
        snprintf(top, sizeof top,
                 ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                 "\"pattern\":{\"Regex\":\"%s\"},\"behavior\":\"%s\"},{\"type\":\"ByteLevel\","
                 "\"use_regex\":false,\"add_prefix_space\":false}]}" BL_DEC,
                 cases[i].regex, cases[i].behavior);
        j = mini_json(top, "", "[]");
        CHECK_OK(parse(j, &tok));
        if (tok) {
            mc_status s =
                mc_tokenizer_encode(tok, cases[i].text, strlen(cases[i].text), 1, ids, 64, &n);
            CHECK_STATUS(s, cases[i].want);
            if (s == MC_OK && n != cases[i].n_ids) {
                fprintf(stderr, "regex %s on %s: %zu ids, expected %zu\n", cases[i].regex,
                        cases[i].text, n, cases[i].n_ids);
                t_checks_failed++;
            }
        }
        mc_tokenizer_free(tok);
        free(j);
    }
}

/* ---- concurrency ------------------------------------------------------------------------- */

typedef struct worker {
    const mc_tokenizer *tok;
    const char *text;
    size_t len, n;
    int32_t *ids;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    int r;
    for (r = 0; r < 20; r++) {
        free(w->ids);
        w->ids = tt_encode(w->tok, w->text, w->len, 1, &w->n);
    }
    return NULL;
}

static void test_threads(void) {
    char *j = mini_json(BL_PRE BL_DEC, "", MERGES);
    mc_tokenizer *tok = NULL;
    worker w[6];
    pthread_t th[6];
    char text[20000];
    size_t i, pos = 0;
    CHECK_OK(parse(j, &tok));
    if (!tok) return;
    for (i = 0; pos + 16 < sizeof text; i++) pos += (size_t)sprintf(text + pos, "abc %zu ab, ", i);
    for (i = 0; i < 6; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].tok = tok;
        w[i].text = text;
        w[i].len = pos;
        CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
    }
    for (i = 0; i < 6; i++) pthread_join(th[i], NULL);
    for (i = 1; i < 6; i++)
        CHECK(w[i].ids && w[0].ids && w[i].n == w[0].n && !memcmp(w[i].ids, w[0].ids, w[0].n * 4));
    for (i = 0; i < 6; i++) free(w[i].ids);
    mc_tokenizer_free(tok);
    free(j);
}

/* ---- allocation failures ------------------------------------------------------------------ */

/* Fails the k-th allocation for k = 1, 2, ... through loading, encoding and decoding a
 * tokenizer with every component, until a run needs no more allocations than k. Each
 * failing run must report MC_ERR_OOM (or succeed), free everything and never crash. */
static void test_alloc_failures(void) {
    char path[4200];
    char *json = NULL;
    size_t len = 0, k;
    static const char text[] = "Hello  world <s> [MASK] word \xc3\xa9t\xc3\xa9 e\xcc\x81 in x";
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/synthetic/added_flags.json",
             MC_SOURCE_DIR);
    json = tt_read(path, &len);
    CHECK(json != NULL);
    for (k = 1; json && k < 100000; k++) {
        mc_tokenizer *tok = NULL;
        int32_t ids[256];
        char out[512];
        size_t n = 0, used;
        mc_status s;
        (void)mc_debug_fail_alloc_after(k);
        s = mc_tokenizer_parse(json, len,
                               "{\"chat_template\":\"<|im_start|>system\\nHi<|im_end|>\"}", 52,
                               "added_flags.json", &tok);
        if (s == MC_OK) s = mc_tokenizer_encode(tok, text, sizeof text - 1, 1, ids, 256, &n);
        if (s == MC_OK) s = mc_tokenizer_decode(tok, ids, n, 1, out, sizeof out, &n);
        used = mc_debug_fail_alloc_after(0);
        mc_tokenizer_free(tok);
        if (s != MC_OK && s != MC_ERR_OOM) {
            fprintf(stderr, "allocation %zu failing gave %s (%s)\n", k, mc_status_name(s),
                    mc_last_error());
            t_checks_failed++;
            break;
        }
        if (s == MC_OK && used < k) break; /* the whole run needed fewer allocations */
    }
    CHECK(k > 20);
    free(json);
}

/* ---- chat templates and FIM ---------------------------------------------------------------- */

static mc_status render(const mc_tokenizer *tok, const char *name, const mc_chat_message *m,
                        size_t n, int gen, char *buf, size_t cap) {
    mc_chat_params p = mc_chat_default_params();
    size_t len = 0;
    p.template_name = name;
    p.add_generation_prompt = gen;
    return mc_chat_render(tok, m, n, &p, buf, cap, &len);
}

static void test_chat_templates(void) {
    static const mc_chat_message conv[] = {{"user", "hi"}, {"assistant", "yo"}, {"developer", "x"}};
    char buf[1024];
    char *j = mini_json("", "", MERGES);
    mc_tokenizer *tok = NULL;
    mc_chat_message bad[1] = {{NULL, "x"}};
    size_t len = 0;
    CHECK_OK(render(NULL, "chatml", conv, 2, 1, buf, sizeof buf));
    CHECK(!strcmp(buf, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
                       "<|im_start|>assistant\n"));
    CHECK_OK(render(NULL, "qwen2.5-coder", conv, 3, 0, buf, sizeof buf));
    CHECK(!strcmp(buf, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                       "helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\nyo<|im_end|>\n"));
    CHECK_OK(render(NULL, "qwen3", conv, 2, 1, buf, sizeof buf));
    {
        mc_chat_params p = mc_chat_default_params();
        p.template_name = "qwen3";
        p.enable_thinking = 0;
        CHECK_OK(mc_chat_render(NULL, conv, 1, &p, buf, sizeof buf, &len));
        CHECK(strstr(buf, "<|im_start|>assistant\n<think>\n\n</think>\n\n") != NULL);
        CHECK_STATUS(mc_chat_render(NULL, conv, 1, NULL, buf, sizeof buf, &len),
                     MC_ERR_INVALID_ARG);
    }
    CHECK_STATUS(render(NULL, "chatml", conv, 2, 1, buf, 10), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_STATUS(render(NULL, "llama3", conv, 2, 1, buf, sizeof buf), MC_ERR_INVALID_ARG);
    CHECK_MSG("llama3");
    CHECK_STATUS(render(NULL, "chatml", conv, 0, 1, buf, sizeof buf), MC_ERR_INVALID_ARG);
    CHECK_STATUS(render(NULL, "chatml", bad, 1, 1, buf, sizeof buf), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_chat_render(NULL, conv, 1, NULL, buf, sizeof buf, NULL), MC_ERR_INVALID_ARG);
    /* Templates from tokenizer_config.json. */
    {
        static const struct {
            const char *cfg;
            const char *style;
            mc_status render;
            const char *expect;
        } cases[] = {
            {"{}", NULL, MC_ERR_UNSUPPORTED, NULL},
            {"{\"chat_template\":null}", NULL, MC_ERR_UNSUPPORTED, NULL},
            {"{\"chat_template\":\"{{ bos_token }}{% for m in messages %}[INST]{{m.content}}{% "
             "endfor %}\"}",
             NULL, MC_ERR_UNSUPPORTED, NULL},
            /* Qwen2-Instruct's template: a literal default system prompt. */
            {"{\"chat_template\":\"{% for message in messages %}{% if loop.first and "
             "messages[0]['role'] "
             "!= 'system' %}{{ '<|im_start|>system\\\\nYou are a helpful "
             "assistant.<|im_end|>\\\\n' }}"
             "{% endif %}{{'<|im_start|>' + message['role'] + '\\\\n' + message['content'] + "
             "'<|im_end|>' + '\\\\n'}}{% endfor %}\"}",
             "qwen2.5", MC_OK,
             "<|im_start|>system\nYou are a helpful "
             "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"},
            /* A system prompt with escapes, written with a real newline. */
            {"{\"chat_template\":\"{{ '<|im_start|>system\\nIt\\\\'s "
             "\\\\\\\"me\\\\\\\"\\\\t!<|im_end|>\\n' }}\"}",
             "qwen2.5", MC_OK,
             "<|im_start|>system\nIt's \"me\"\t!<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"},
            /* Only dynamic system text: plain ChatML. */
            {"{\"chat_template\":\"{{ '<|im_start|>system\\\\n' + messages[0]['content'] + "
             "'<|im_end|>' }}{{ '<|im_start|>system\\\\nA' + x + 'B<|im_end|>' }}\"}",
             "chatml", MC_OK, "<|im_start|>user\nhi<|im_end|>\n"},
            {"{\"chat_template\":[{\"name\":\"x\",\"template\":\"<|im_start|><|im_end|>\"}]}",
             "chatml", MC_OK, "<|im_start|>user\nhi<|im_end|>\n"},
            {"{\"chat_template\":[]}", NULL, MC_ERR_UNSUPPORTED, NULL},
        };
        size_t i;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const char *style;
            mc_status s;
            CHECK_OK(
                mc_tokenizer_parse(j, strlen(j), cases[i].cfg, strlen(cases[i].cfg), "t", &tok));
            if (!tok) continue;
            style = mc_tokenizer_chat_template(tok);
            CHECK((style == NULL && cases[i].style == NULL) ||
                  (style && cases[i].style && !strcmp(style, cases[i].style)));
            s = render(tok, NULL, conv, 1, 0, buf, sizeof buf);
            CHECK_STATUS(s, cases[i].render);
            if (s == MC_OK && cases[i].expect && strcmp(buf, cases[i].expect) != 0) {
                fprintf(stderr, "case %zu rendered [%s]\n", i, buf);
                t_checks_failed++;
            }
            CHECK_OK(render(tok, "chatml", conv, 1, 0, buf, sizeof buf));
            mc_tokenizer_free(tok);
            tok = NULL;
        }
    }
    CHECK(mc_tokenizer_chat_template(NULL) == NULL);
    free(j);
}

static void test_fim(void) {
    char buf[256];
    size_t len = 0;
    mc_repo_file files[2] = {{"a.py", "x = 1"}, {"b.py", ""}};
    char *j = mini_json("", "", MERGES);
    mc_tokenizer *tok = NULL;
    CHECK_OK(mc_fim_render(NULL, "def f():\n", "\n", buf, sizeof buf, &len));
    CHECK(!strcmp(buf, "<|fim_prefix|>def f():\n<|fim_suffix|>\n<|fim_middle|>"));
    CHECK_INT(len, strlen(buf));
    CHECK_STATUS(mc_fim_render(NULL, "p", "s", buf, 5, &len), MC_ERR_BUFFER_TOO_SMALL);
    CHECK_INT(len, 44);
    CHECK_STATUS(mc_fim_render(NULL, NULL, "s", buf, sizeof buf, &len), MC_ERR_INVALID_ARG);
    CHECK_OK(
        mc_fim_render_repo(NULL, "r", files, 2, "c.py", "import a", NULL, buf, sizeof buf, &len));
    CHECK(!strcmp(buf, "<|repo_name|>r\n<|file_sep|>a.py\nx = 1\n<|file_sep|>b.py\n\n"
                       "<|file_sep|>c.py\nimport a"));
    CHECK_OK(mc_fim_render_repo(NULL, "r", NULL, 0, "c.py", "p", "s", buf, sizeof buf, &len));
    CHECK(!strcmp(
        buf, "<|repo_name|>r\n<|file_sep|>c.py\n<|fim_prefix|>p<|fim_suffix|>s<|fim_middle|>"));
    files[1].content = NULL;
    CHECK_STATUS(mc_fim_render_repo(NULL, "r", files, 2, "c", "p", NULL, buf, sizeof buf, &len),
                 MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_fim_render_repo(NULL, NULL, files, 0, "c", "p", NULL, buf, sizeof buf, &len),
                 MC_ERR_INVALID_ARG);
    CHECK_OK(parse(j, &tok));
    CHECK_STATUS(mc_fim_render(tok, "p", "s", buf, sizeof buf, &len), MC_ERR_UNSUPPORTED);
    CHECK_MSG("<|fim_prefix|>");
    CHECK_STATUS(mc_fim_render_repo(tok, "r", NULL, 0, "c", "p", NULL, buf, sizeof buf, &len),
                 MC_ERR_UNSUPPORTED);
    CHECK_MSG("<|repo_name|>");
    mc_tokenizer_free(tok);
    free(j);
}

int main(void) {
    build_vocab_json();
    RUN(test_synthetic_parity);
    RUN(test_load_errors_json);
    RUN(test_load_errors_components);
    RUN(test_load_errors_model);
    RUN(test_load_files_and_folders);
    RUN(test_invalid_utf8);
    RUN(test_buffers_and_lookups);
    RUN(test_utf8_helpers);
    RUN(test_long_inputs_and_cache);
    RUN(test_regex_translation);
    RUN(test_threads);
    RUN(test_alloc_failures);
    RUN(test_chat_templates);
    RUN(test_fim);
    free(g_vocab_json);
    return t_summary();
}
