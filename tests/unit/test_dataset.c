/* test_dataset.c - training data: every jsonl line format (ids, text + EOS, prompt/completion
 * and messages through the chat template, with and without prompt masking, checked token by
 * token), truncation, invalid lines (file:line messages, skip_invalid), blank lines, empty
 * data, examples without targets, micro-batches (batch size, packing, targets, segments,
 * positions) and the seeded epoch order. Text formats use the real Qwen tokenizer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "test.h"
#include "train/dataset.h"

static mc_tokenizer *g_tok; /* NULL when absent and MC_ALLOW_NO_TOKENIZER=1 */

/* Loads the test tokenizer from $MC_TOKENIZER_DIR or the fetch script's cache folder.
 * Missing is a failure unless MC_ALLOW_NO_TOKENIZER=1. */
static mc_tokenizer *load_tokenizer(void) {
    const char *dir = getenv("MC_TOKENIZER_DIR"), *allow = getenv("MC_ALLOW_NO_TOKENIZER");
    const char *home = getenv("HOME");
    char path[4096];
    mc_tokenizer *tok = NULL;
    if (dir && *dir)
        snprintf(path, sizeof path, "%s", dir);
    else
        snprintf(path, sizeof path, "%s/.cache/metal-candle/tokenizer-qwen3-3.7.2",
                 home ? home : "");
    if (mc_tokenizer_load(path, &tok) == MC_OK) return tok;
    if (allow && !strcmp(allow, "1")) {
        printf("no tokenizer at %s: text-format cases skipped (MC_ALLOW_NO_TOKENIZER=1)\n", path);
        return NULL;
    }
    fprintf(stderr, "no tokenizer at %s (%s): run scripts/fetch_tokenizer.sh or set "
            "MC_TOKENIZER_DIR (MC_ALLOW_NO_TOKENIZER=1 skips the text cases)\n", path,
            mc_last_error());
    t_checks_failed++;
    return NULL;
}

static mc_dataset_opts ids_opts(int vocab, int max_len) {
    mc_dataset_opts o;
    memset(&o, 0, sizeof o);
    o.max_seq_length = max_len;
    o.vocab_size = vocab;
    return o;
}

static mc_dataset_opts text_opts(bool mask) {
    mc_dataset_opts o = ids_opts(mc_tokenizer_vocab_size(g_tok), 4096);
    o.tok = g_tok;
    o.mask_prompt = mask;
    return o;
}

static mc_status parse(const char *text, const mc_dataset_opts *o, mc_dataset *ds) {
    memset(ds, 0, sizeof *ds);
    return mc_dataset_parse(text, strlen(text), "d.jsonl", o, ds);
}

/* Appends the ids of text[0..len) (no special tokens) to ids[*n..]; cap entries in all. */
static void encode_into(const char *text, size_t len, int32_t *ids, size_t cap, size_t *n) {
    size_t got = 0;
    CHECK_OK(mc_tokenizer_encode(g_tok, text, len, 0, ids + *n, cap - *n, &got));
    *n += got;
}

/* The chat template's rendering of msgs[0..n) (static buffer per slot). */
static const char *render(const mc_chat_message *msgs, size_t n, int gen, int slot) {
    static char buf[2][8192];
    mc_chat_params cp = mc_chat_default_params();
    size_t len = 0;
    cp.add_generation_prompt = gen;
    CHECK_OK(mc_chat_render(g_tok, msgs, n, &cp, buf[slot], sizeof buf[slot], &len));
    return buf[slot];
}

/* Checks one example against expected ids and a target split: tokens [0, n_prompt) are
 * not targets, the rest are. Prints the first difference. */
static void check_example(const mc_example *e, const int32_t *want, size_t n, size_t n_prompt) {
    size_t i;
    CHECK_INT(e->n, n);
    for (i = 0; i < n && i < (size_t)e->n; i++) {
        if (e->ids[i] != want[i] || e->target[i] != (i >= n_prompt)) {
            fprintf(stderr, "  token %zu: id %d target %d, expected id %d target %d\n", i,
                    e->ids[i], e->target[i], want[i], i >= n_prompt);
            t_checks_failed++;
            return;
        }
    }
}

/* Decodes ids[0..n) into a static buffer. */
static const char *decode(const int32_t *ids, size_t n) {
    static char buf[8192];
    size_t len = 0;
    CHECK_OK(mc_tokenizer_decode(g_tok, ids, n, 0, buf, sizeof buf, &len));
    return buf;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* ---- {"input_ids"} ---- */

static void test_input_ids(void) {
    mc_dataset_opts o = ids_opts(10, 64);
    mc_dataset ds;
    static const int32_t a[3] = {1, 2, 3}, b[2] = {9, 0};
    CHECK_OK(parse("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\":[9,0]}\n", &o, &ds));
    CHECK_INT(ds.n, 2);
    if (ds.n == 2) {
        check_example(&ds.ex[0], a, 3, 0);
        check_example(&ds.ex[1], b, 2, 0);
    }
    CHECK_INT(ds.n_tokens, 5);
    CHECK_INT(ds.n_targets, 3); /* the first token of an example predicts nothing */
    CHECK_INT(ds.n_truncated, 0);
    CHECK_INT(ds.n_skipped, 0);
    CHECK_INT(ds.n_no_targets, 0);
    /* a second parse appends */
    CHECK_OK(mc_dataset_parse("{\"input_ids\":[4]}", 17, "e.jsonl", &o, &ds));
    CHECK_INT(ds.n, 3);
    CHECK_INT(ds.n_no_targets, 1);
    mc_dataset_free(&ds);
    mc_dataset_free(&ds); /* freeing twice is harmless */
    mc_dataset_free(NULL);
}

static void test_truncation(void) {
    mc_dataset_opts o = ids_opts(100, 4);
    mc_dataset ds;
    static const int32_t a[4] = {10, 11, 12, 13}, b[4] = {5, 6, 7, 8};
    CHECK_OK(parse("{\"input_ids\":[10,11,12,13,14,15]}\n{\"input_ids\":[5,6,7,8]}\n"
                   "{\"input_ids\":[1,2,3,4,5]}\n", &o, &ds));
    CHECK_INT(ds.n, 3);
    CHECK_INT(ds.n_truncated, 2); /* exactly max_seq_length is not truncated */
    if (ds.n == 3) {
        check_example(&ds.ex[0], a, 4, 0);
        check_example(&ds.ex[1], b, 4, 0);
        CHECK_INT(ds.ex[2].n, 4);
    }
    CHECK_INT(ds.n_tokens, 12);
    CHECK_INT(ds.n_targets, 9);
    mc_dataset_free(&ds);
}

static void test_blank_lines_and_empty(void) {
    mc_dataset_opts o = ids_opts(10, 8);
    mc_dataset ds;
    CHECK_OK(parse("", &o, &ds));
    CHECK_INT(ds.n, 0);
    CHECK_INT(ds.n_targets, 0);
    mc_dataset_free(&ds);
    CHECK_OK(parse("\n\n  \t\r\n\r\n", &o, &ds));
    CHECK_INT(ds.n, 0);
    mc_dataset_free(&ds);
    /* CRLF line ends, no final newline, blank lines between */
    CHECK_OK(parse("\n{\"input_ids\":[1,2]}\r\n\n   \n{\"input_ids\":[3,4,5]}", &o, &ds));
    CHECK_INT(ds.n, 2);
    CHECK_INT(ds.n_tokens, 5);
    mc_dataset_free(&ds);
    /* an empty id list adds no example */
    CHECK_OK(parse("{\"input_ids\":[]}\n", &o, &ds));
    CHECK_INT(ds.n, 0);
    mc_dataset_free(&ds);
    /* line numbers count blank lines */
    CHECK_STATUS(parse("\n\n{\"input_ids\":[1]}\n\nnope\n", &o, &ds), MC_ERR_DATA);
    CHECK_MSG("d.jsonl:5");
    mc_dataset_free(&ds);
}

/* Each bad line alone: MC_ERR_DATA naming d.jsonl:2 and the problem. */
static void test_invalid_lines(void) {
    static const struct {
        const char *line, *msg;
    } cases[] = {
        {"{\"input_ids\": [1, 2", "JSON"},
        {"not json at all", "JSON"},
        {"{\"input_ids\": [1]} trailing", "JSON"},
        {"[1, 2, 3]", "object"},
        {"42", "object"},
        {"{}", "input_ids"},
        {"{\"other\": 1}", "input_ids"},
        {"{\"input_ids\": \"1 2 3\"}", "not an array"},
        {"{\"input_ids\": {\"a\": 1}}", "not an array"},
        {"{\"input_ids\": [1, \"2\"]}", "non-number"},
        {"{\"input_ids\": [1, null]}", "non-number"},
        {"{\"input_ids\": [1, [2]]}", "non-number"},
        {"{\"input_ids\": [1, 2.5]}", "out of range"},
        {"{\"input_ids\": [-1]}", "out of range"},
        {"{\"input_ids\": [10]}", "below 10"},
        {"{\"input_ids\": [1e30]}", "out of range"},
        {"{\"text\": \"hello\"}", "tokenizer"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "tokenizer"},
    };
    mc_dataset_opts o = ids_opts(10, 16);
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        mc_dataset ds;
        snprintf(text, sizeof text, "{\"input_ids\":[1,2]}\n%s\n{\"input_ids\":[3,4]}\n",
                 cases[i].line);
        CHECK_STATUS(parse(text, &o, &ds), MC_ERR_DATA);
        if (!strstr(mc_last_error(), "d.jsonl:2") || !strstr(mc_last_error(), cases[i].msg)) {
            fprintf(stderr, "  line '%s': message \"%s\" lacks d.jsonl:2 or \"%s\"\n",
                    cases[i].line, mc_last_error(), cases[i].msg);
            t_checks_failed++;
        }
        mc_dataset_free(&ds);
    }
}

static void test_wrong_types_text(void) {
    static const char *const lines[] = {
        "{}",
        "{\"other\": 1}",
        "{\"text\": 5}",
        "{\"text\": [\"a\"]}",
        "{\"prompt\": \"p\"}",
        "{\"completion\": \"c\"}",
        "{\"prompt\": \"p\", \"completion\": 3}",
        "{\"messages\": []}",
        "{\"messages\": \"hi\"}",
        "{\"messages\": [{\"role\": \"user\"}]}",
        "{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",
        "{\"messages\": [\"user\"]}",
    };
    mc_dataset_opts o;
    size_t i;
    if (!g_tok) return;
    o = text_opts(false);
    for (i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        mc_dataset ds;
        CHECK_STATUS(parse(lines[i], &o, &ds), MC_ERR_DATA);
        if (!strstr(mc_last_error(), "d.jsonl:1")) {
            fprintf(stderr, "  line '%s': message \"%s\" lacks d.jsonl:1\n", lines[i],
                    mc_last_error());
            t_checks_failed++;
        }
        mc_dataset_free(&ds);
    }
}

static void test_skip_invalid(void) {
    mc_dataset_opts o = ids_opts(10, 16);
    mc_dataset ds;
    o.skip_invalid = true;
    CHECK_OK(parse("{\"input_ids\":[1,2]}\nbad\n{\"input_ids\":[12]}\n\n{\"input_ids\":[3,4,5]}\n"
                   "{\"text\":\"x\"}\n{}\n", &o, &ds));
    CHECK_INT(ds.n, 2);
    CHECK_INT(ds.n_skipped, 4);
    CHECK_INT(ds.n_tokens, 5);
    if (ds.n == 2) CHECK_INT(ds.ex[1].ids[2], 5);
    mc_dataset_free(&ds);
    /* only invalid lines: an empty data set, no error */
    CHECK_OK(parse("x\ny\n", &o, &ds));
    CHECK_INT(ds.n, 0);
    CHECK_INT(ds.n_skipped, 2);
    mc_dataset_free(&ds);
}

static void test_bad_options(void) {
    mc_dataset_opts o = ids_opts(10, 0);
    mc_dataset ds;
    CHECK_STATUS(parse("{\"input_ids\":[1]}", &o, &ds), MC_ERR_INVALID_ARG);
    o = ids_opts(0, 8);
    CHECK_STATUS(parse("{\"input_ids\":[1]}", &o, &ds), MC_ERR_INVALID_ARG);
    mc_dataset_free(&ds);
    o = ids_opts(10, 8);
    memset(&ds, 0, sizeof ds);
    CHECK_STATUS(mc_dataset_load(t_src("tests/fixtures/no/such/train.jsonl"), &o, &ds),
                 MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("train.jsonl");
    mc_dataset_free(&ds);
}

static void test_load_file(void) {
    mc_dataset_opts o = ids_opts(512, 16);
    mc_dataset ds;
    memset(&ds, 0, sizeof ds);
    CHECK_OK(mc_dataset_load(t_src("tests/fixtures/peft/train_data/train.jsonl"), &o, &ds));
    CHECK(ds.n >= 2);
    CHECK_INT(ds.n_truncated, 0);
    CHECK_INT(ds.n_tokens, 16 * ds.n);
    mc_dataset_free(&ds);
}

/* ---- text formats (real tokenizer) ---- */

static void test_text_appends_eos(void) {
    static const char *const text = "def add(a, b):\n    return a + b\n";
    int32_t want[256];
    size_t n = 0;
    int32_t eos;
    mc_dataset_opts o;
    mc_dataset ds;
    char line[512];
    if (!g_tok) return;
    o = text_opts(false);
    eos = mc_tokenizer_special_id(g_tok, MC_TOKEN_EOS);
    CHECK(eos >= 0);
    encode_into(text, strlen(text), want, 256, &n);
    want[n++] = eos;
    CHECK_OK(parse("{\"text\": \"def add(a, b):\\n    return a + b\\n\"}", &o, &ds));
    CHECK_INT(ds.n, 1);
    if (ds.n == 1) check_example(&ds.ex[0], want, n, 0); /* every token is a target */
    CHECK_INT(ds.n_targets, n - 1);
    mc_dataset_free(&ds);
    /* a text that already ends with EOS gets no second one */
    snprintf(line, sizeof line, "{\"text\": \"hi%s\"}", mc_tokenizer_id_to_token(g_tok, eos));
    CHECK_OK(parse(line, &o, &ds));
    CHECK_INT(ds.n, 1);
    if (ds.n == 1) {
        CHECK(ds.ex[0].n >= 2);
        CHECK_INT(ds.ex[0].ids[ds.ex[0].n - 1], eos);
        CHECK(ds.ex[0].ids[ds.ex[0].n - 2] != eos);
    }
    mc_dataset_free(&ds);
    /* an empty text is just EOS: an example without targets */
    CHECK_OK(parse("{\"text\": \"\"}", &o, &ds));
    CHECK_INT(ds.n, 1);
    if (ds.n == 1) {
        CHECK_INT(ds.ex[0].n, 1);
        CHECK_INT(ds.ex[0].ids[0], eos);
    }
    CHECK_INT(ds.n_no_targets, 1);
    CHECK_INT(ds.n_targets, 0);
    mc_dataset_free(&ds);
}

/* Expected tokens of a chat: with mask, the rendering of msgs[0..n-1) with a generation
 * prompt, then the rest of the full rendering; targets only in the rest. */
static void check_chat(const char *line, const mc_chat_message *msgs, size_t n, bool mask,
                       const char *want_target_suffix) {
    mc_dataset_opts o = text_opts(mask);
    mc_dataset ds;
    const char *full = render(msgs, n, 0, 0);
    int32_t want[2048];
    size_t nw = 0, n_prompt = 0;
    if (mask) {
        const char *prefix = render(msgs, n - 1, 1, 1);
        size_t pl = strlen(prefix);
        CHECK(strncmp(prefix, full, pl) == 0);
        encode_into(full, pl, want, 2048, &nw);
        n_prompt = nw;
        encode_into(full + pl, strlen(full) - pl, want, 2048, &nw);
    } else {
        encode_into(full, strlen(full), want, 2048, &nw);
    }
    CHECK_OK(parse(line, &o, &ds));
    CHECK_INT(ds.n, 1);
    if (ds.n == 1) {
        const mc_example *e = &ds.ex[0];
        check_example(e, want, nw, n_prompt);
        if (mask && e->n == (int)nw) {
            const char *p = decode(e->ids, n_prompt);
            if (!ends_with(p, "<|im_start|>assistant\n")) {
                fprintf(stderr, "  masked prompt ends: \"%s\"\n", p);
                t_checks_failed++;
            }
            p = decode(e->ids + n_prompt, nw - n_prompt);
            if (!ends_with(p, want_target_suffix)) {
                fprintf(stderr, "  targets \"%s\" lack the suffix \"%s\"\n", p, want_target_suffix);
                t_checks_failed++;
            }
            CHECK_INT(ds.n_targets, nw - n_prompt);
        } else {
            CHECK_INT(ds.n_targets, nw - 1);
        }
    }
    mc_dataset_free(&ds);
}

static void test_prompt_completion(void) {
    static const char *const line =
        "{\"prompt\": \"Write add in C.\", \"completion\": \"int add(int a, int b) { return a + b; }\"}";
    mc_chat_message m[2];
    if (!g_tok) return;
    m[0].role = "user";
    m[0].content = "Write add in C.";
    m[1].role = "assistant";
    m[1].content = "int add(int a, int b) { return a + b; }";
    check_chat(line, m, 2, false, NULL);
    check_chat(line, m, 2, true, "int add(int a, int b) { return a + b; }<|im_end|>\n");
}

static void test_messages(void) {
    static const char *const line =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"You write C.\"},"
        " {\"role\": \"user\", \"content\": \"first?\"},"
        " {\"role\": \"assistant\", \"content\": \"one\"},"
        " {\"role\": \"user\", \"content\": \"second?\"},"
        " {\"role\": \"assistant\", \"content\": \"two\"}]}";
    mc_chat_message m[5] = {{"system", "You write C."}, {"user", "first?"}, {"assistant", "one"},
                            {"user", "second?"}, {"assistant", "two"}};
    mc_dataset_opts o;
    mc_dataset ds;
    if (!g_tok) return;
    check_chat(line, m, 5, false, NULL);
    /* masked: the first assistant turn is prompt, only the last one is a target */
    check_chat(line, m, 5, true, "two<|im_end|>\n");
    /* masking needs the last turn to be the assistant's */
    o = text_opts(true);
    CHECK_STATUS(parse("\n{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"},"
                       " {\"role\": \"user\", \"content\": \"u\"}]}", &o, &ds), MC_ERR_DATA);
    CHECK_MSG("d.jsonl:2");
    CHECK_MSG("assistant");
    mc_dataset_free(&ds);
    /* unmasked, any last role works */
    o = text_opts(false);
    CHECK_OK(parse("{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}", &o, &ds));
    CHECK_INT(ds.n, 1);
    mc_dataset_free(&ds);
}

/* Tokenizer ids beyond the model's vocabulary are a data error, not an out-of-range read. */
static void test_text_ids_beyond_model_vocab(void) {
    mc_dataset_opts o;
    mc_dataset ds;
    if (!g_tok) return;
    o = text_opts(false);
    o.vocab_size = 512; /* the tiny fixture model: EOS (151645) does not fit */
    CHECK_STATUS(parse("{\"text\": \"hello\"}", &o, &ds), MC_ERR_DATA);
    CHECK_MSG("d.jsonl:1");
    mc_dataset_free(&ds);
    o.skip_invalid = true;
    CHECK_OK(parse("{\"text\": \"hello\"}\n{\"input_ids\": [1, 2]}", &o, &ds));
    CHECK_INT(ds.n, 1);
    CHECK_INT(ds.n_skipped, 1);
    mc_dataset_free(&ds);
}

static void test_text_truncated(void) {
    mc_dataset_opts o;
    mc_dataset ds;
    if (!g_tok) return;
    o = text_opts(false);
    o.max_seq_length = 3;
    CHECK_OK(parse("{\"text\": \"one two three four five six\"}\n{\"text\": \"a\"}", &o, &ds));
    CHECK_INT(ds.n, 2);
    CHECK_INT(ds.n_truncated, 1);
    if (ds.n == 2) {
        CHECK_INT(ds.ex[0].n, 3);
        CHECK_INT(ds.ex[1].n, 2); /* "a" + EOS */
    }
    mc_dataset_free(&ds);
}

/* ---- batches ---- */

/* Four examples of lengths 3, 5, 2, 4 (ids 10*i + t); example 1's tokens 1..2 masked. */
static void make_four(mc_dataset *ds) {
    mc_dataset_opts o = ids_opts(100, 8);
    CHECK_OK(parse("{\"input_ids\":[0,1,2]}\n{\"input_ids\":[10,11,12,13,14]}\n"
                   "{\"input_ids\":[20,21]}\n{\"input_ids\":[30,31,32,33]}\n", &o, ds));
    CHECK_INT(ds->n, 4);
    if (ds->n == 4) {
        ds->ex[1].target[1] = 0;
        ds->ex[1].target[2] = 0;
    }
}

static void test_fill_batch(void) {
    static const int32_t ids0[8] = {0, 1, 2, 10, 11, 12, 13, 14};
    static const int32_t tg0[8] = {1, 2, -1, -1, -1, 13, 14, -1};
    static const int32_t pos0[8] = {0, 1, 2, 0, 1, 2, 3, 4};
    static const int32_t ids1[6] = {20, 21, 30, 31, 32, 33};
    static const int32_t tg1[6] = {21, -1, 31, 32, 33, -1};
    mc_dataset ds;
    mc_batch b;
    size_t order[4] = {0, 1, 2, 3}, cursor = 0;
    int t;
    make_four(&ds);
    if (ds.n != 4) return;
    memset(&b, 0, sizeof b);
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, false, 8, &b));
    CHECK_INT(cursor, 2);
    CHECK_INT(b.N, 8);
    CHECK_INT(b.n_seg, 2);
    CHECK_INT(b.n_targets, 4);
    if (b.n_seg == 2) {
        CHECK_INT(b.seg_start[0], 0);
        CHECK_INT(b.seg_len[0], 3);
        CHECK_INT(b.seg_start[1], 3);
        CHECK_INT(b.seg_len[1], 5);
    }
    for (t = 0; t < 8 && b.N == 8; t++) {
        CHECK_INT(b.ids[t], ids0[t]);
        CHECK_INT(b.targets[t], tg0[t]);
        CHECK_INT(b.pos[t], pos0[t]);
    }
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, false, 8, &b));
    CHECK_INT(cursor, 4);
    CHECK_INT(b.N, 6); /* cleared first, then examples 2 and 3 */
    CHECK_INT(b.n_seg, 2);
    CHECK_INT(b.n_targets, 4);
    for (t = 0; t < 6 && b.N == 6; t++) {
        CHECK_INT(b.ids[t], ids1[t]);
        CHECK_INT(b.targets[t], tg1[t]);
    }
    /* at the end: nothing left, an empty batch */
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, false, 8, &b));
    CHECK_INT(cursor, 4);
    CHECK_INT(b.N, 0);
    CHECK_INT(b.n_targets, 0);
    /* the order decides which examples come: 3 then 0 */
    {
        size_t rev[4] = {3, 0, 2, 1};
        cursor = 0;
        CHECK_OK(mc_dataset_fill_batch(&ds, rev, 4, &cursor, 2, false, 8, &b));
        CHECK_INT(b.N, 7);
        if (b.N == 7) {
            CHECK_INT(b.ids[0], 30);
            CHECK_INT(b.ids[4], 0);
            CHECK_INT(b.pos[4], 0);
            CHECK_INT(b.targets[3], -1);
        }
    }
    /* a last, short batch */
    cursor = 3;
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 3, false, 8, &b));
    CHECK_INT(b.n_seg, 1);
    CHECK_INT(cursor, 4);
    /* examples longer than max_seq_length are cut to it */
    cursor = 1;
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 1, false, 3, &b));
    CHECK_INT(b.N, 3);
    if (b.N == 3) CHECK_INT(b.targets[2], -1);
    mc_batch_free(&b);
    mc_dataset_free(&ds);
}

static void test_fill_batch_pack(void) {
    mc_dataset ds;
    mc_batch b;
    size_t order[4] = {0, 1, 2, 3}, cursor = 0;
    make_four(&ds);
    if (ds.n != 4) return;
    memset(&b, 0, sizeof b);
    /* budget 2 x 5 = 10 tokens: 3 + 5 + 2 fit, 4 more do not */
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, true, 5, &b));
    CHECK_INT(cursor, 3);
    CHECK_INT(b.N, 10);
    CHECK_INT(b.n_seg, 3);
    if (b.n_seg == 3) {
        CHECK_INT(b.seg_start[2], 8);
        CHECK_INT(b.seg_len[2], 2);
        CHECK_INT(b.pos[8], 0);
        CHECK_INT(b.targets[9], -1);
        CHECK_INT(b.targets[7], -1); /* the end of a segment predicts nothing */
    }
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, true, 5, &b));
    CHECK_INT(cursor, 4);
    CHECK_INT(b.N, 4);
    CHECK_INT(b.n_seg, 1);
    /* budget 1 x 5: at least one example, even alone */
    cursor = 0;
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 1, true, 5, &b));
    CHECK_INT(cursor, 1);
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 1, true, 5, &b));
    CHECK_INT(cursor, 2);
    CHECK_INT(b.N, 5);
    /* a big budget takes everything */
    cursor = 0;
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 8, true, 8, &b));
    CHECK_INT(cursor, 4);
    CHECK_INT(b.N, 14);
    CHECK_INT(b.n_seg, 4);
    CHECK_INT(b.n_targets, 8);
    mc_batch_free(&b);
    mc_dataset_free(&ds);
}

/* A batch refilled many times keeps a capacity near its largest content. */
static void test_batch_capacity_bounded(void) {
    mc_dataset ds;
    mc_batch b;
    size_t order[4] = {0, 1, 2, 3};
    int k;
    make_four(&ds);
    if (ds.n != 4) return;
    memset(&b, 0, sizeof b);
    for (k = 0; k < 200; k++) {
        size_t cursor = 0;
        while (cursor < 4) CHECK_OK(mc_dataset_fill_batch(&ds, order, 4, &cursor, 2, false, 8, &b));
    }
    CHECK(b.cap_rows <= 2 * 16);
    CHECK(b.cap_seg <= 2 * 2);
    mc_batch_free(&b);
    mc_dataset_free(&ds);
}

/* Examples with no targets give batches with n_targets 0, never a division. */
static void test_no_targets(void) {
    mc_dataset_opts o = ids_opts(10, 8);
    mc_dataset ds;
    mc_batch b;
    size_t order[3] = {0, 1, 2}, cursor = 0;
    CHECK_OK(parse("{\"input_ids\":[1]}\n{\"input_ids\":[2]}\n{\"input_ids\":[3,4]}\n", &o, &ds));
    CHECK_INT(ds.n, 3);
    CHECK_INT(ds.n_no_targets, 2);
    CHECK_INT(ds.n_targets, 1);
    memset(&b, 0, sizeof b);
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 3, &cursor, 2, false, 8, &b));
    CHECK_INT(b.N, 2);
    CHECK_INT(b.n_targets, 0);
    CHECK_INT(b.targets[0], -1);
    CHECK_INT(b.targets[1], -1);
    CHECK_OK(mc_dataset_fill_batch(&ds, order, 3, &cursor, 2, false, 8, &b));
    CHECK_INT(b.n_targets, 1);
    mc_batch_free(&b);
    mc_dataset_free(&ds);
}

/* ---- order ---- */

static bool is_permutation(const size_t *order, size_t n) {
    unsigned char *seen = calloc(n ? n : 1, 1);
    size_t i;
    bool ok = seen != NULL;
    for (i = 0; ok && i < n; i++) {
        if (order[i] >= n || seen[order[i]]) ok = false;
        else seen[order[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_order(void) {
    enum { N = 100 };
    size_t a[N], b[N], c[N], d[N];
    size_t i, same_ec = 0, same_sd = 0, moved = 0;
    mc_dataset_order(a, N, 7, 3, true);
    mc_dataset_order(b, N, 7, 3, true);
    mc_dataset_order(c, N, 7, 4, true);
    mc_dataset_order(d, N, 8, 3, true);
    CHECK(is_permutation(a, N));
    CHECK(is_permutation(c, N));
    CHECK(is_permutation(d, N));
    CHECK(memcmp(a, b, sizeof a) == 0); /* same seed and epoch: the same order */
    for (i = 0; i < N; i++) {
        same_ec += a[i] == c[i];
        same_sd += a[i] == d[i];
        moved += a[i] != i;
    }
    CHECK(same_ec < N / 2); /* another epoch or seed: another order */
    CHECK(same_sd < N / 2);
    CHECK(moved > N / 2);
    mc_dataset_order(a, N, 7, 3, false);
    for (i = 0; i < N; i++) CHECK_INT(a[i], i);
    mc_dataset_order(a, 1, 7, 3, true);
    CHECK_INT(a[0], 0);
    mc_dataset_order(a, 0, 7, 3, true);
    mc_dataset_order(a, 2, 1, 0, true);
    CHECK(is_permutation(a, 2));
    /* every position is reachable: over many seeds, element 0 lands everywhere of 5 */
    {
        int hits[5] = {0};
        uint64_t s;
        for (s = 0; s < 200; s++) {
            mc_dataset_order(b, 5, s, 0, true);
            for (i = 0; i < 5; i++)
                if (b[i] == 0) hits[i]++;
        }
        for (i = 0; i < 5; i++) CHECK(hits[i] > 10);
    }
}

/* ---- allocation failures ---- */

static void test_fault_injection(void) {
    static const char *const ids_text =
        "{\"input_ids\":[1,2,3,4,5,6,7,8,9,1,2,3]}\nbad\n{\"input_ids\":[4,5]}\n";
    size_t n, used;
    int ok = 0;
    for (n = 1; n < 10000 && !ok; n++) {
        mc_dataset_opts o = ids_opts(10, 8);
        mc_dataset ds;
        mc_status s;
        o.skip_invalid = true;
        o.tok = g_tok;
        memset(&ds, 0, sizeof ds);
        mc_debug_fail_alloc_after(n);
        s = mc_dataset_parse(ids_text, strlen(ids_text), "f.jsonl", &o, &ds);
        used = mc_debug_fail_alloc_after(0);
        if (s == MC_OK) {
            ok = 1;
            CHECK(used < n); /* no failed allocation was ignored */
            CHECK_INT(ds.n, 2);
            CHECK_INT(ds.n_skipped, 1);
        } else if (s != MC_ERR_OOM) {
            fprintf(stderr, "  failing allocation %zu: %s (%s), expected MC_ERR_OOM\n", n,
                    mc_status_name(s), mc_last_error());
            t_checks_failed++;
        }
        mc_dataset_free(&ds);
    }
    CHECK(ok);
    if (!g_tok) return;
    for (ok = 0, n = 1; n < 100000 && !ok; n++) {
        static const char *const chat =
            "{\"prompt\": \"p?\", \"completion\": \"c.\"}\n{\"text\": \"t\"}\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"},"
            " {\"role\": \"assistant\", \"content\": \"a\"}]}\n";
        mc_dataset_opts o = text_opts(true);
        mc_dataset ds;
        mc_status s;
        memset(&ds, 0, sizeof ds);
        mc_debug_fail_alloc_after(n);
        s = mc_dataset_parse(chat, strlen(chat), "f.jsonl", &o, &ds);
        used = mc_debug_fail_alloc_after(0);
        if (s == MC_OK) {
            ok = 1;
            CHECK(used < n); /* no failed allocation was ignored */
            CHECK_INT(ds.n, 3);
        } else if (s != MC_ERR_OOM) {
            fprintf(stderr, "  failing allocation %zu of a chat: %s (%s), expected MC_ERR_OOM\n",
                    n, mc_status_name(s), mc_last_error());
            t_checks_failed++;
        }
        mc_dataset_free(&ds);
    }
    CHECK(ok);
}

/* The tokenizer is there (or MC_ALLOW_NO_TOKENIZER=1 says it may be missing). */
static void test_tokenizer_present(void) { g_tok = load_tokenizer(); }

int main(void) {
    RUN(test_tokenizer_present);
    RUN(test_input_ids);
    RUN(test_truncation);
    RUN(test_blank_lines_and_empty);
    RUN(test_invalid_lines);
    RUN(test_wrong_types_text);
    RUN(test_skip_invalid);
    RUN(test_bad_options);
    RUN(test_load_file);
    RUN(test_text_appends_eos);
    RUN(test_prompt_completion);
    RUN(test_messages);
    RUN(test_text_ids_beyond_model_vocab);
    RUN(test_text_truncated);
    RUN(test_fill_batch);
    RUN(test_fill_batch_pack);
    RUN(test_batch_capacity_bounded);
    RUN(test_no_targets);
    RUN(test_order);
    RUN(test_fault_injection);
    mc_tokenizer_free(g_tok);
    return t_summary();
}
