/* test_config.c - config.json and generation_config.json: both config styles, defaults,
 * one case per missing or mistyped key (status and message naming file and key),
 * unsupported features, the generation-config merge, loading from a folder, and an
 * allocation-failure sweep. */
#include "test.h"

#include "io/io.h"

#include <cjson/cJSON.h>

static const char *FNAME = "cfg/config.json";

/* Qwen2.5-0.5B-Instruct's config.json (transformers 4 style). */
static const char *QWEN25 =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,"
    "\"bos_token_id\":151643,\"eos_token_id\":151645,\"hidden_act\":\"silu\","
    "\"hidden_size\":896,\"initializer_range\":0.02,\"intermediate_size\":4864,"
    "\"max_position_embeddings\":32768,\"max_window_layers\":21,\"model_type\":\"qwen2\","
    "\"num_attention_heads\":14,\"num_hidden_layers\":24,\"num_key_value_heads\":2,"
    "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,\"sliding_window\":32768,"
    "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.43.1\",\"use_cache\":true,\"use_sliding_window\":false,"
    "\"vocab_size\":151936}";

/* The same model family as transformers 5 writes it. */
static const char *QWEN2_V5 =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"bos_token_id\":1,\"dtype\":\"float16\","
    "\"eos_token_id\":[2,3],\"hidden_act\":\"silu\",\"hidden_size\":96,"
    "\"intermediate_size\":160,\"layer_types\":[\"full_attention\",\"full_attention\","
    "\"full_attention\"],\"max_position_embeddings\":512,\"model_type\":\"qwen2\","
    "\"num_attention_heads\":6,\"num_hidden_layers\":3,\"num_key_value_heads\":2,"
    "\"pad_token_id\":null,\"rms_norm_eps\":1e-05,"
    "\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"default\"},"
    "\"sliding_window\":null,\"tie_word_embeddings\":false,\"use_sliding_window\":false,"
    "\"vocab_size\":1000}";

static mc_status parse(const char *text, mc_config *c) {
    return mc_config_parse(text, strlen(text), FNAME, c);
}

/* QWEN25 with key set to the JSON value (NULL removes it); caller frees (cJSON_free). */
static char *with_key(const char *base, const char *key, const char *value) {
    cJSON *root = cJSON_Parse(base);
    char *out;
    if (!root) abort();
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    if (value) {
        cJSON *v = cJSON_Parse(value);
        if (!v) abort();
        cJSON_AddItemToObject(root, key, v);
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out) abort();
    return out;
}

/* Expects config QWEN25 with key = value to fail with status s, naming the file and
 * the key (or `named` when not NULL). */
static void expect_key(const char *key, const char *value, mc_status s, const char *named) {
    char *text = with_key(QWEN25, key, value);
    mc_config c;
    mc_status got = parse(text, &c);
    if (got != s) {
        fprintf(stderr, "%s = %s: got %s, expected %s (%s)\n", key, value ? value : "(removed)",
                mc_status_name(got), mc_status_name(s), mc_last_error());
        CHECK(0);
    }
    CHECK_MSG(FNAME);
    CHECK_MSG(named ? named : key);
    cJSON_free(text);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, strlen(text), f) != strlen(text)) abort();
    fclose(f);
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][4096];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

/* ---- valid configs ------------------------------------------------------------------- */

static void test_old_style(void) {
    mc_config c;
    CHECK_OK(parse(QWEN25, &c));
    CHECK_INT(c.arch, MC_ARCH_QWEN2);
    CHECK(strcmp(c.architecture, "Qwen2ForCausalLM") == 0);
    CHECK(strcmp(c.model_type, "qwen2") == 0);
    CHECK_INT(c.vocab_size, 151936);
    CHECK_INT(c.hidden_size, 896);
    CHECK_INT(c.intermediate_size, 4864);
    CHECK_INT(c.num_hidden_layers, 24);
    CHECK_INT(c.num_attention_heads, 14);
    CHECK_INT(c.num_key_value_heads, 2);
    CHECK_INT(c.head_dim, 64);
    CHECK_INT(c.max_position_embeddings, 32768);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 0);
    CHECK(c.tie_word_embeddings);
    CHECK(c.qkv_bias);
    CHECK(!c.qk_norm);
    CHECK(c.has_dtype);
    CHECK_INT(c.dtype, MC_BF16);
    CHECK_INT(c.bos_token_id, 151643);
    CHECK_INT(c.n_eos, 1);
    CHECK_INT(c.eos_token_ids[0], 151645);
}

static void test_new_style(void) {
    mc_config c;
    CHECK_OK(parse(QWEN2_V5, &c));
    CHECK_NEAR(c.rope_theta, 500000.0, 0);
    CHECK(c.has_dtype);
    CHECK_INT(c.dtype, MC_F16);
    CHECK_INT(c.head_dim, 16);
    CHECK_INT(c.num_key_value_heads, 2);
    CHECK(!c.tie_word_embeddings);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 0);
    CHECK_INT(c.n_eos, 2); /* eos list */
    CHECK_INT(c.eos_token_ids[0], 2);
    CHECK_INT(c.eos_token_ids[1], 3);
    CHECK_INT(c.bos_token_id, 1);
}

static void test_rope_precedence_and_default(void) {
    mc_config c;
    char *t = with_key(QWEN2_V5, "rope_theta", "1234.0");
    CHECK_OK(parse(t, &c));
    CHECK_NEAR(c.rope_theta, 500000.0, 0); /* rope_parameters wins */
    cJSON_free(t);
    t = with_key(QWEN25, "rope_theta", NULL);
    CHECK_OK(parse(t, &c));
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    cJSON_free(t);
    t = with_key(QWEN2_V5, "rope_parameters", "{\"rope_type\":\"default\"}");
    CHECK_OK(parse(t, &c));
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    cJSON_free(t);
    t = with_key(QWEN25, "rope_scaling", "{\"type\":\"default\"}");
    CHECK_OK(parse(t, &c));
    cJSON_free(t);
    t = with_key(QWEN25, "rope_scaling", "null");
    CHECK_OK(parse(t, &c));
    cJSON_free(t);
    /* dtype wins over torch_dtype */
    t = with_key(QWEN25, "dtype", "\"float32\"");
    CHECK_OK(parse(t, &c));
    CHECK_INT(c.dtype, MC_F32);
    cJSON_free(t);
}

static void test_defaults(void) {
    const char *minimal = "{\"model_type\":\"llama\",\"vocab_size\":32,\"hidden_size\":16,"
                          "\"intermediate_size\":40,\"num_hidden_layers\":1,"
                          "\"num_attention_heads\":2}";
    mc_config c;
    CHECK_OK(parse(minimal, &c));
    CHECK_INT(c.arch, MC_ARCH_LLAMA);
    CHECK(strcmp(c.architecture, "LlamaForCausalLM") == 0);
    CHECK_INT(c.num_key_value_heads, 2);
    CHECK_INT(c.head_dim, 8);
    CHECK_INT(c.max_position_embeddings, 32768);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 0);
    CHECK(!c.tie_word_embeddings);
    CHECK(!c.qkv_bias);
    CHECK(!c.qk_norm);
    CHECK(!c.has_dtype);
    CHECK_INT(c.bos_token_id, -1);
    CHECK_INT(c.n_eos, 0);
    /* null optional keys take defaults too */
    {
        char *t = with_key(QWEN25, "head_dim", "null");
        char *t2 = with_key(t, "bos_token_id", "null");
        char *t3 = with_key(t2, "eos_token_id", "null");
        char *t4 = with_key(t3, "torch_dtype", "null");
        CHECK_OK(parse(t4, &c));
        CHECK_INT(c.head_dim, 64);
        CHECK_INT(c.bos_token_id, -1);
        CHECK_INT(c.n_eos, 0);
        CHECK(!c.has_dtype);
        cJSON_free(t);
        cJSON_free(t2);
        cJSON_free(t3);
        cJSON_free(t4);
    }
}

static void test_qwen3_and_llama(void) {
    mc_config c;
    char *t = with_key(QWEN2_V5, "model_type", "\"qwen3\"");
    char *t2 = with_key(t, "head_dim", "32");
    char *t3 = with_key(t2, "attention_bias", "true");
    CHECK_OK(parse(t2, &c));
    CHECK_INT(c.arch, MC_ARCH_QWEN3);
    CHECK(c.qk_norm);
    CHECK(!c.qkv_bias);
    CHECK_INT(c.head_dim, 32); /* not hidden / heads */
    CHECK_OK(parse(t3, &c));
    CHECK(c.qkv_bias);
    cJSON_free(t);
    cJSON_free(t2);
    cJSON_free(t3);
    /* qwen2 always has q/k/v biases */
    t = with_key(QWEN25, "attention_bias", "false");
    CHECK_OK(parse(t, &c));
    CHECK(c.qkv_bias);
    cJSON_free(t);
    /* the fixtures written by transformers 5 */
    {
        static const char *dirs[] = {"tests/fixtures/llama_f16", "tests/fixtures/qwen3_bf16",
                                     "tests/fixtures/qwen2_bf16_sharded",
                                     "tests/fixtures/tiny_tied_f32"};
        int i;
        for (i = 0; i < 4; i++) CHECK_OK(mc_config_load(t_src(dirs[i]), &c));
        CHECK_OK(mc_config_load(t_src("tests/fixtures/llama_f16"), &c));
        CHECK_INT(c.arch, MC_ARCH_LLAMA);
        CHECK_INT(c.head_dim, 16);
        CHECK_NEAR(c.rope_theta, 50000.0, 0);
        CHECK_INT(c.n_eos, 2); /* from generation_config.json: [2, 3] */
        CHECK_INT(c.eos_token_ids[1], 3);
    }
}

/* ---- bad configs --------------------------------------------------------------------- */

static void test_missing_keys(void) {
    static const char *required[] = {"vocab_size", "hidden_size", "intermediate_size",
                                     "num_hidden_layers", "num_attention_heads", "model_type"};
    int i;
    for (i = 0; i < 6; i++) expect_key(required[i], NULL, MC_ERR_CONFIG_MISSING, NULL);
}

static void test_mistyped_keys(void) {
    static const char *ints[] = {"vocab_size", "hidden_size", "intermediate_size",
                                 "num_hidden_layers", "num_attention_heads",
                                 "num_key_value_heads", "max_position_embeddings", "head_dim"};
    int i;
    for (i = 0; i < 8; i++) {
        expect_key(ints[i], "\"64\"", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "64.5", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "-2", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "0", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "true", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "[1]", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "1e300", MC_ERR_CONFIG_TYPE, NULL);
        expect_key(ints[i], "4294967296", MC_ERR_CONFIG_TYPE, NULL);
    }
    expect_key("hidden_size", "null", MC_ERR_CONFIG_TYPE, NULL); /* required and null */
    expect_key("model_type", "2", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rope_theta", "\"1e6\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rope_theta", "0", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rope_theta", "-5", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rope_parameters", "{\"rope_theta\":\"x\"}", MC_ERR_CONFIG_TYPE,
               "rope_parameters.rope_theta");
    expect_key("rope_parameters", "{\"rope_type\":7}", MC_ERR_CONFIG_TYPE, "rope_type");
    expect_key("rope_parameters", "[]", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rope_scaling", "\"linear\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rms_norm_eps", "\"tiny\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("rms_norm_eps", "0", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("tie_word_embeddings", "\"true\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("tie_word_embeddings", "1", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("use_sliding_window", "0", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("hidden_act", "1", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("torch_dtype", "\"int8\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("torch_dtype", "16", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("dtype", "\"float64\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("bos_token_id", "-1", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("bos_token_id", "\"<s>\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("eos_token_id", "1.5", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("eos_token_id", "[1,\"x\"]", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("eos_token_id", "{}", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("architectures", "\"Qwen2ForCausalLM\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("architectures", "[3]", MC_ERR_CONFIG_TYPE, "architectures[0]");
    expect_key("architectures",
               "[\"AVeryLongArchitectureNameThatDoesNotFitInSixtyFourBytesForSureYes\"]",
               MC_ERR_CONFIG_TYPE, "architectures[0]");
    expect_key("layer_types", "\"full_attention\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("layer_types", "[1]", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("attention_bias", "\"no\"", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("mlp_bias", "3", MC_ERR_CONFIG_TYPE, NULL);
}

static void test_impossible_values(void) {
    char *t;
    mc_config c;
    /* 14 heads are not a multiple of 4 kv heads; more kv heads than heads */
    expect_key("num_key_value_heads", "4", MC_ERR_CONFIG_TYPE, NULL);
    expect_key("num_key_value_heads", "28", MC_ERR_CONFIG_TYPE, NULL);
    /* an odd head_dim cannot be rotated */
    expect_key("head_dim", "63", MC_ERR_CONFIG_TYPE, NULL);
    /* hidden not a multiple of heads and no head_dim */
    expect_key("hidden_size", "900", MC_ERR_CONFIG_TYPE, "hidden_size");
    /* heads * head_dim overflows int */
    expect_key("head_dim", "2000000000", MC_ERR_CONFIG_TYPE, NULL);
    /* hidden 900 is fine when head_dim is given */
    t = with_key(QWEN25, "hidden_size", "900");
    {
        char *t2 = with_key(t, "head_dim", "64");
        CHECK_OK(parse(t2, &c));
        cJSON_free(t2);
    }
    cJSON_free(t);
}

static void test_unsupported(void) {
    expect_key("model_type", "\"gpt2\"", MC_ERR_UNSUPPORTED, "unsupported architecture 'gpt2'");
    expect_key("model_type", "\"Qwen2\"", MC_ERR_UNSUPPORTED, "unsupported architecture");
    expect_key("use_sliding_window", "true", MC_ERR_UNSUPPORTED,
               "sliding-window attention is not supported");
    expect_key("rope_scaling", "{\"type\":\"yarn\",\"factor\":4.0}", MC_ERR_UNSUPPORTED, "yarn");
    expect_key("rope_scaling", "{\"rope_type\":\"dynamic\"}", MC_ERR_UNSUPPORTED, "dynamic");
    expect_key("rope_scaling", "{\"factor\":4.0}", MC_ERR_UNSUPPORTED, "rope_scaling");
    expect_key("rope_parameters", "{\"rope_type\":\"llama3\",\"rope_theta\":500000.0}",
               MC_ERR_UNSUPPORTED, "llama3");
    expect_key("hidden_act", "\"gelu\"", MC_ERR_UNSUPPORTED, "gelu");
    expect_key("quantization_config", "{\"quant_method\":\"awq\"}", MC_ERR_UNSUPPORTED,
               "quantization_config");
    expect_key("mlp_bias", "true", MC_ERR_UNSUPPORTED, "mlp_bias");
    expect_key("layer_types", "[\"full_attention\",\"sliding_attention\"]", MC_ERR_UNSUPPORTED,
               "sliding_attention");
    expect_key("eos_token_id", "[1,2,3,4,5,6,7,8,9]", MC_ERR_UNSUPPORTED, "eos_token_id");
}

static void test_malformed(void) {
    mc_config c;
    const char *bad = "{\"model_type\": \"qwen2\",\n \"hidden_size\": 12,,}";
    CHECK_STATUS(parse(bad, &c), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_MSG("byte 44"); /* cJSON stops just past the second ',' */
    CHECK_MSG("line 2");
    CHECK_STATUS(parse("[]", &c), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_STATUS(parse("", &c), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_STATUS(parse("{\"model_type\":\"qwen2\",\"model_type\":\"llama\"}", &c), MC_ERR_DUPLICATE);
    CHECK_MSG("'model_type'");
    /* not NUL-terminated: only len bytes count */
    CHECK_STATUS(mc_config_parse(QWEN25, 20, FNAME, &c), MC_ERR_JSON);
    CHECK_STATUS(mc_config_parse(QWEN25, strlen(QWEN25), FNAME, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_config_parse(NULL, 3, FNAME, &c), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_config_parse("{", 1, NULL, &c), MC_ERR_JSON);
    CHECK_MSG("<buffer>");
}

/* ---- generation config and loading --------------------------------------------------- */

static void test_genconfig_merge(void) {
    const char *gen = "{\"bos_token_id\":151643,\"pad_token_id\":151643,\"do_sample\":true,"
                      "\"eos_token_id\":[151645,151643],\"repetition_penalty\":1.1,"
                      "\"temperature\":0.7,\"top_p\":0.8,\"top_k\":20}";
    mc_config c, before;
    CHECK_OK(parse(QWEN25, &c));
    CHECK_OK(mc_genconfig_parse(gen, strlen(gen), "generation_config.json", &c));
    CHECK_INT(c.n_eos, 2);
    CHECK_INT(c.eos_token_ids[0], 151645);
    CHECK_INT(c.eos_token_ids[1], 151643);
    CHECK_INT(c.bos_token_id, 151643);
    /* absent and null keys leave the config alone; an int replaces the list */
    CHECK_OK(mc_genconfig_parse("{\"eos_token_id\":null}", 21, "g.json", &c));
    CHECK_INT(c.n_eos, 2);
    CHECK_OK(mc_genconfig_parse("{\"eos_token_id\":7}", 18, "g.json", &c));
    CHECK_INT(c.n_eos, 1);
    CHECK_INT(c.eos_token_ids[0], 7);
    CHECK_OK(mc_genconfig_parse("{\"eos_token_id\":[]}", 19, "g.json", &c));
    CHECK_INT(c.n_eos, 0);
    CHECK_INT(c.bos_token_id, 151643);
    /* errors leave cfg unchanged and name the file */
    before = c;
    CHECK_STATUS(mc_genconfig_parse("{\"bos_token_id\":5,\"eos_token_id\":\"x\"}", 37, "g.json", &c),
                 MC_ERR_CONFIG_TYPE);
    CHECK_MSG("g.json");
    CHECK_MSG("eos_token_id");
    CHECK(memcmp(&before, &c, sizeof c) == 0);
    CHECK_STATUS(mc_genconfig_parse("{\"eos_token_id\":[1,}", 20, "g.json", &c), MC_ERR_JSON);
    CHECK_MSG("g.json");
    CHECK_STATUS(mc_genconfig_parse("3", 1, "g.json", &c), MC_ERR_JSON);
    CHECK_STATUS(mc_genconfig_parse("{}", 2, "g.json", NULL), MC_ERR_INVALID_ARG);
}

static void test_config_load(void) {
    const char *dir = t_tmpdir("cfg_load");
    mc_config c;
    CHECK_STATUS(mc_config_load(dir, &c), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("config.json");
    write_text(path_in(dir, "config.json"), QWEN25);
    CHECK_OK(mc_config_load(dir, &c)); /* generation_config.json is optional */
    CHECK_INT(c.n_eos, 1);
    write_text(path_in(dir, "generation_config.json"), "{\"eos_token_id\":[151645,151643]}");
    CHECK_OK(mc_config_load(dir, &c));
    CHECK_INT(c.n_eos, 2);
    CHECK_INT(c.hidden_size, 896);
    write_text(path_in(dir, "generation_config.json"), "{\"eos_token_id\":[151645,");
    CHECK_STATUS(mc_config_load(dir, &c), MC_ERR_JSON);
    CHECK_MSG("generation_config.json");
    CHECK_INT(c.hidden_size, 0); /* zeroed on failure */
    write_text(path_in(dir, "config.json"), "{\"model_type\":\"qwen2\"}");
    CHECK_STATUS(mc_config_load(dir, &c), MC_ERR_CONFIG_MISSING);
    CHECK_MSG("config.json");
    CHECK_MSG("vocab_size");
    CHECK_STATUS(mc_config_load(path_in(dir, "config.json"), &c), MC_ERR_NOT_DIR);
    CHECK_MSG("config.json");
    CHECK_STATUS(mc_config_load(path_in(dir, "nope"), &c), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("nope");
    CHECK_STATUS(mc_config_load(NULL, &c), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_config_load(dir, NULL), MC_ERR_INVALID_ARG);
}

/* ---- allocation failures ------------------------------------------------------------- */

static void test_fault_injection(void) {
    const char *dir = t_tmpdir("cfg_fault");
    size_t n;
    int ooms = 0;
    write_text(path_in(dir, "config.json"), QWEN2_V5);
    write_text(path_in(dir, "generation_config.json"), "{\"eos_token_id\":[5,6],\"bos_token_id\":4}");
    for (n = 1; n < 100000; n++) {
        mc_config c;
        mc_status s;
        mc_debug_fail_alloc_after(n);
        s = mc_config_load(dir, &c);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) {
            CHECK_INT(c.n_eos, 2);
            break;
        }
        if (s != MC_ERR_OOM) {
            fprintf(stderr, "allocation %zu failing gave %s (%s)\n", n, mc_status_name(s),
                    mc_last_error());
            CHECK(0);
            break;
        }
        ooms++;
    }
    CHECK(ooms > 5);
    CHECK(n < 100000);
}

int main(void) {
    RUN(test_old_style);
    RUN(test_new_style);
    RUN(test_rope_precedence_and_default);
    RUN(test_defaults);
    RUN(test_qwen3_and_llama);
    RUN(test_missing_keys);
    RUN(test_mistyped_keys);
    RUN(test_impossible_values);
    RUN(test_unsupported);
    RUN(test_malformed);
    RUN(test_genconfig_merge);
    RUN(test_config_load);
    RUN(test_fault_injection);
    return t_summary();
}
