/* test_lora_io.c - adapter files: adapter_config.json of both formats (each bad case with
 * its status and message), adapter folders with bad tensors, mlx-lm's transposed layout
 * against PEFT's, save/load round trips, fusing (errors, dtypes, side files) and
 * allocation-failure sweeps over load, save, fuse and the config parser. */
#include "lora/lora.h"
#include "lora_util.h"
#include "test.h"

#include <sys/stat.h>
#include <unistd.h>

/* ---- adapter_config.json ------------------------------------------------------------------ */

static mc_status parse_l(const char *json, int n_layers, mc_adapter_config *c) {
    return mc_adapter_config_parse(json, strlen(json), "cfg.json", n_layers, c);
}
static mc_status parse(const char *json, mc_adapter_config *c) { return parse_l(json, 2, c); }

/* Parses json (2 layers), expecting status want and (on failure) a message with sub;
 * the config is cleared. */
static void expect(const char *json, mc_status want, const char *sub, int line) {
    mc_adapter_config c;
    mc_status s = parse(json, &c);
    if (s != want) {
        fprintf(stderr, "line %d: %s gave %s (%s), expected %s\n", line, json, mc_status_name(s),
                mc_last_error(), mc_status_name(want));
        t_checks_failed++;
    } else if (s != MC_OK && sub && !strstr(mc_last_error(), sub)) {
        fprintf(stderr, "line %d: message \"%s\" lacks \"%s\"\n", line, mc_last_error(), sub);
        t_checks_failed++;
    }
    if (s != MC_OK && (c.rank || c.base_model || c.targets)) {
        fprintf(stderr, "line %d: config not zeroed on failure\n", line);
        t_checks_failed++;
    }
    mc_adapter_config_clear(&c);
}
#define EXPECT(json, want, sub) expect((json), (want), (sub), __LINE__)

/* Parses json expecting success with the given targets and first layer. */
static void expect_targets(const char *json, unsigned targets, int first, int line) {
    mc_adapter_config c;
    mc_status s = parse(json, &c);
    if (s != MC_OK || c.targets != targets || c.first_layer != first) {
        fprintf(stderr, "line %d: %s gave %s (%s) targets 0x%x first %d, expected 0x%x first %d\n",
                line, json, mc_status_name(s), mc_last_error(), c.targets, c.first_layer, targets,
                first);
        t_checks_failed++;
    }
    mc_adapter_config_clear(&c);
}
#define EXPECT_T(json, targets, first) expect_targets((json), (targets), (first), __LINE__)

#define PEFT_CFG(targets, extra)                                                                    \
    "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": " targets extra "}"
#define PEFT_QV(extra) PEFT_CFG("[\"q_proj\", \"v_proj\"]", extra)

enum {
    Q = MC_LORA_Q, K = MC_LORA_K, V = MC_LORA_V, O = MC_LORA_O, GATE = MC_LORA_GATE,
    UP = MC_LORA_UP, DOWN = MC_LORA_DOWN, ALL = MC_LORA_ALL
};

static void test_peft_config_ok(void) {
    mc_adapter_config c;
    CHECK_OK(parse(PEFT_QV(", \"lora_dropout\": 0.1, \"base_model_name_or_path\": \"/m\""), &c));
    CHECK_INT(c.format, MC_ADAPTER_PEFT);
    CHECK_INT(c.rank, 4);
    CHECK_NEAR(c.alpha, 8, 0);
    CHECK_NEAR(c.scale, 2, 0);
    CHECK_NEAR(c.dropout, 0.1f, 0);
    CHECK(!c.rslora);
    CHECK_INT(c.targets, Q | V);
    CHECK_INT(c.first_layer, 0);
    CHECK(c.base_model && !strcmp(c.base_model, "/m"));
    mc_adapter_config_clear(&c);
    CHECK_OK(parse(PEFT_QV(", \"use_rslora\": true"), &c));
    CHECK_NEAR(c.scale, 4, 0);
    CHECK(c.rslora);
    mc_adapter_config_clear(&c);
    /* the fixture's own config, with every key PEFT 0.21 writes */
    {
        char *text = NULL;
        size_t len = 0;
        CHECK_OK(mc_read_file(t_src(LU_PEFT_DIR "/adapter_config.json"), &text, &len));
        CHECK_OK(mc_adapter_config_parse(text, len, NULL, 2, &c));
        CHECK_INT(c.targets, ALL);
        mc_adapter_config_clear(&c);
        mc_free(text);
    }
    /* options that are harmless when empty or false */
    EXPECT(PEFT_QV(", \"modules_to_save\": [], \"rank_pattern\": {}, \"use_bdlora\": null, "
                   "\"use_dora\": false, \"bias\": \"none\", \"layers_pattern\": \"layers\", "
                   "\"init_lora_weights\": \"gaussian\", \"loftq_config\": {}, "
                   "\"megatron_config\": null, \"arrow_config\": false"),
           MC_OK, NULL);
    EXPECT(PEFT_QV(", \"layers_pattern\": [\"layers\"]"), MC_OK, NULL);
    EXPECT(PEFT_QV(", \"layers_pattern\": \"\""), MC_OK, NULL);
    mc_adapter_config_clear(NULL);
}

static void test_peft_config_errors(void) {
    EXPECT("{", MC_ERR_JSON, "cfg.json");
    EXPECT("[1, 2]", MC_ERR_JSON, "object");
    EXPECT("{\"r\": 4}", MC_ERR_CONFIG_MISSING, "peft_type");
    EXPECT(PEFT_QV(", \"r\": 8"), MC_ERR_DUPLICATE, "'r'");
    EXPECT("{\"peft_type\": \"IA3\", \"r\": 4}", MC_ERR_UNSUPPORTED, "IA3");
    EXPECT("{\"peft_type\": 3}", MC_ERR_CONFIG_TYPE, "peft_type");
    EXPECT(PEFT_QV(", \"use_dora\": true"), MC_ERR_UNSUPPORTED, "DoRA");
    EXPECT(PEFT_QV(", \"use_dora\": 1"), MC_ERR_CONFIG_TYPE, "use_dora");
    EXPECT(PEFT_QV(", \"fan_in_fan_out\": true"), MC_ERR_UNSUPPORTED, "fan_in_fan_out");
    EXPECT(PEFT_QV(", \"lora_bias\": true"), MC_ERR_UNSUPPORTED, "lora_bias");
    EXPECT(PEFT_QV(", \"rank_pattern\": {\"q_proj\": 8}"), MC_ERR_UNSUPPORTED, "rank_pattern");
    EXPECT(PEFT_QV(", \"alpha_pattern\": {\"q_proj\": 8}"), MC_ERR_UNSUPPORTED, "alpha_pattern");
    EXPECT(PEFT_QV(", \"modules_to_save\": [\"lm_head\"]"), MC_ERR_UNSUPPORTED, "modules_to_save");
    EXPECT(PEFT_QV(", \"layer_replication\": [[0, 1]]"), MC_ERR_UNSUPPORTED, "layer_replication");
    EXPECT(PEFT_QV(", \"trainable_token_indices\": [1]"), MC_ERR_UNSUPPORTED, "trainable_token");
    EXPECT(PEFT_QV(", \"bias\": \"all\""), MC_ERR_UNSUPPORTED, "bias");
    EXPECT(PEFT_QV(", \"bias\": 1"), MC_ERR_CONFIG_TYPE, "bias");
    EXPECT(PEFT_QV(", \"layers_pattern\": \"h\""), MC_ERR_UNSUPPORTED, "layers_pattern");
    EXPECT(PEFT_QV(", \"layers_pattern\": [\"h\"]"), MC_ERR_UNSUPPORTED, "layers_pattern");
    EXPECT("{\"peft_type\": \"LORA\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_MISSING, "'r'");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_TYPE, "'r'");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 2.5, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_TYPE, "2.5");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": \"4\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_TYPE, "a string");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_MISSING, "lora_alpha");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": -1, \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_TYPE, "lora_alpha");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": \"8\", \"target_modules\": [\"q_proj\"]}",
           MC_ERR_CONFIG_TYPE, "lora_alpha");
    EXPECT(PEFT_QV(", \"lora_dropout\": 1"), MC_ERR_CONFIG_TYPE, "lora_dropout");
    EXPECT(PEFT_QV(", \"lora_dropout\": \"x\""), MC_ERR_CONFIG_TYPE, "lora_dropout");
    EXPECT(PEFT_QV(", \"use_rslora\": \"yes\""), MC_ERR_CONFIG_TYPE, "use_rslora");
    EXPECT("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}", MC_ERR_CONFIG_MISSING,
           "target_modules");
    EXPECT(PEFT_CFG("5", ""), MC_ERR_CONFIG_TYPE, "target_modules");
    EXPECT(PEFT_CFG("[1]", ""), MC_ERR_CONFIG_TYPE, "target_modules");
    EXPECT(PEFT_QV(", \"exclude_modules\": 7"), MC_ERR_CONFIG_TYPE, "exclude_modules");
    {
        mc_adapter_config c;
        CHECK_STATUS(parse_l("{}", 0, &c), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_config_parse("{}", 2, "x", 2, NULL), MC_ERR_INVALID_ARG);
    }
}

static void test_peft_targets(void) {
    EXPECT_T(PEFT_CFG("[\"self_attn.q_proj\", \"mlp.down_proj\"]", ""), Q | DOWN, 0);
    EXPECT_T(PEFT_CFG("[\"model.layers.1.self_attn.q_proj\"]", ""), Q, 1);
    EXPECT_T(PEFT_CFG("\"all-linear\"", ""), ALL, 0);
    EXPECT_T(PEFT_CFG("\"ALL-LINEAR\"", ""), ALL, 0);
    EXPECT_T(PEFT_CFG("\".*\\\\.(q_proj|v_proj)\"", ""), Q | V, 0);
    EXPECT_T(PEFT_CFG("\"model\\\\.layers\\\\.1\\\\..*_proj\"", ""), ALL, 1);
    EXPECT_T(PEFT_CFG("\"all-linear\"", ", \"exclude_modules\": [\"o_proj\", \"mlp.up_proj\"]"),
             ALL & ~O & ~UP, 0);
    EXPECT_T(PEFT_CFG("\"all-linear\"", ", \"exclude_modules\": \".*layers\\\\.0\\\\..*\""), ALL, 1);
    EXPECT_T(PEFT_QV(", \"layers_to_transform\": 1"), Q | V, 1);
    EXPECT_T(PEFT_QV(", \"layers_to_transform\": [1]"), Q | V, 1);
    EXPECT_T(PEFT_QV(", \"layers_to_transform\": [1, 0]"), Q | V, 0);
    EXPECT_T(PEFT_QV(", \"layers_to_transform\": []"), Q | V, 0);
    EXPECT_T(PEFT_CFG("[\"q_proj\", \"c_attn\"]", ""), Q, 0); /* names matching nothing are ignored */
    /* a plain string is a whole-name regular expression in PEFT: "q_proj" selects nothing */
    EXPECT(PEFT_CFG("\"q_proj\"", ""), MC_ERR_CONFIG_TYPE, "regular expression");
    EXPECT(PEFT_CFG("[\"c_attn\"]", ""), MC_ERR_CONFIG_TYPE, "does not fit");
    EXPECT(PEFT_CFG("\"(\"", ""), MC_ERR_UNSUPPORTED, "regular expression");
    EXPECT(PEFT_CFG("\".*\"", ""), MC_ERR_UNSUPPORTED, "lm_head");
    EXPECT(PEFT_CFG("[\"lm_head\", \"q_proj\"]", ""), MC_ERR_UNSUPPORTED, "lm_head");
    EXPECT(PEFT_CFG("[\"embed_tokens\"]", ""), MC_ERR_UNSUPPORTED, "embed_tokens");
    EXPECT_T(PEFT_CFG("\".*\"", ", \"exclude_modules\": [\"lm_head\", \"embed_tokens\"]"), ALL, 0);
    EXPECT(PEFT_QV(", \"layers_to_transform\": [0]"), MC_ERR_UNSUPPORTED, "layer 1");
    EXPECT(PEFT_QV(", \"layers_to_transform\": [5]"), MC_ERR_CONFIG_TYPE, "layer 5");
    EXPECT(PEFT_QV(", \"layers_to_transform\": 2"), MC_ERR_CONFIG_TYPE, "does not fit");
    EXPECT(PEFT_QV(", \"layers_to_transform\": [-1]"), MC_ERR_CONFIG_TYPE, "layers_to_transform");
    EXPECT(PEFT_QV(", \"layers_to_transform\": [\"1\"]"), MC_ERR_CONFIG_TYPE, "a string");
    EXPECT(PEFT_QV(", \"layers_to_transform\": \"1\""), MC_ERR_CONFIG_TYPE, "layers_to_transform");
    EXPECT(PEFT_CFG("\"all-linear\"", ", \"layers_to_transform\": [1]"), MC_ERR_CONFIG_TYPE,
           "layers_to_transform");
    EXPECT(PEFT_CFG("[\"model.layers.0.self_attn.q_proj\", \"model.layers.1.self_attn.v_proj\"]", ""),
           MC_ERR_UNSUPPORTED, "{q_proj} in layer 0 but {v_proj}");
    /* a pathological pattern hits the match limit instead of running for ages */
    EXPECT(PEFT_CFG("\"(.*)*(.*)*(.*)*(.*)*(.*)*[0-9]\"", ""), MC_ERR_UNSUPPORTED, "too costly");
}

#define MLX_CFG(lp, extra) "{\"fine_tune_type\": \"lora\", \"num_layers\": -1, \"lora_parameters\": {" lp "}" extra "}"
#define MLX_LP "\"rank\": 8, \"scale\": 20.0, \"dropout\": 0.05"

static void test_mlx_config(void) {
    mc_adapter_config c;
    CHECK_OK(parse(MLX_CFG(MLX_LP ", \"keys\": [\"self_attn.q_proj\", \"self_attn.v_proj\"]",
                           ", \"model\": \"Qwen/x\""), &c));
    CHECK_INT(c.format, MC_ADAPTER_MLX);
    CHECK_INT(c.rank, 8);
    CHECK_NEAR(c.scale, 20, 0);
    CHECK_NEAR(c.alpha, 160, 0);
    CHECK_NEAR(c.dropout, 0.05f, 0);
    CHECK_INT(c.targets, Q | V);
    CHECK_INT(c.first_layer, 0);
    CHECK(c.base_model && !strcmp(c.base_model, "Qwen/x"));
    mc_adapter_config_clear(&c);
    EXPECT_T(MLX_CFG(MLX_LP, ""), 0, 0); /* no keys: the tensors decide */
    EXPECT_T("{\"num_layers\": 1, \"lora_parameters\": {" MLX_LP ", \"keys\": [\"mlp.down_proj\"]}}",
             DOWN, 1);
    EXPECT_T("{\"num_layers\": 0, \"lora_parameters\": {" MLX_LP "}}", 0, 0);
    EXPECT_T("{\"num_layers\": 2, \"fine_tune_type\": null, \"lora_parameters\": {" MLX_LP "}}", 0, 0);
    EXPECT("{\"num_layers\": 3, \"lora_parameters\": {" MLX_LP "}}", MC_ERR_CONFIG_TYPE, "num_layers");
    EXPECT("{\"lora_parameters\": {" MLX_LP "}}", MC_ERR_CONFIG_MISSING, "num_layers");
    EXPECT("{\"num_layers\": \"x\", \"lora_parameters\": {" MLX_LP "}}", MC_ERR_CONFIG_TYPE, "num_layers");
    EXPECT("{\"fine_tune_type\": \"dora\", \"num_layers\": 1}", MC_ERR_UNSUPPORTED, "DoRA");
    EXPECT("{\"fine_tune_type\": \"full\", \"num_layers\": 1}", MC_ERR_UNSUPPORTED, "full");
    EXPECT("{\"fine_tune_type\": \"qlora\", \"num_layers\": 1}", MC_ERR_CONFIG_TYPE, "qlora");
    EXPECT("{\"fine_tune_type\": 5, \"num_layers\": 1}", MC_ERR_CONFIG_TYPE, "fine_tune_type");
    EXPECT(MLX_CFG(MLX_LP, ", \"use_dora\": true"), MC_ERR_UNSUPPORTED, "use_dora");
    EXPECT(MLX_CFG(MLX_LP, ", \"use_dora\": 2"), MC_ERR_CONFIG_TYPE, "use_dora");
    EXPECT("{\"fine_tune_type\": \"lora\", \"num_layers\": 1}", MC_ERR_CONFIG_MISSING, "lora_parameters");
    EXPECT("{\"num_layers\": 1, \"lora_parameters\": 3}", MC_ERR_CONFIG_TYPE, "lora_parameters");
    EXPECT(MLX_CFG("\"scale\": 2", ""), MC_ERR_CONFIG_MISSING, "rank");
    EXPECT(MLX_CFG("\"rank\": 2", ""), MC_ERR_CONFIG_MISSING, "scale");
    EXPECT(MLX_CFG("\"rank\": 2, \"scale\": -1", ""), MC_ERR_CONFIG_TYPE, "scale");
    EXPECT(MLX_CFG("\"rank\": 2, \"scale\": \"x\"", ""), MC_ERR_CONFIG_TYPE, "scale");
    EXPECT(MLX_CFG("\"rank\": 2, \"scale\": 1, \"dropout\": 2", ""), MC_ERR_CONFIG_TYPE, "dropout");
    EXPECT(MLX_CFG("\"rank\": 2, \"rank\": 3, \"scale\": 1", ""), MC_ERR_DUPLICATE, "lora_parameters");
    EXPECT(MLX_CFG(MLX_LP ", \"keys\": [\"mlp.gate\"]", ""), MC_ERR_UNSUPPORTED, "mlp.gate");
    EXPECT(MLX_CFG(MLX_LP ", \"keys\": [\"q_proj\"]", ""), MC_ERR_UNSUPPORTED, "q_proj");
    EXPECT(MLX_CFG(MLX_LP ", \"keys\": []", ""), MC_ERR_CONFIG_TYPE, "empty");
    EXPECT(MLX_CFG(MLX_LP ", \"keys\": \"x\"", ""), MC_ERR_CONFIG_TYPE, "keys");
    EXPECT(MLX_CFG(MLX_LP ", \"keys\": [3]", ""), MC_ERR_CONFIG_TYPE, "keys");
}

/* ---- adapter folders ----------------------------------------------------------------------- */

static mc_model *g_model; /* tiny_tied_f32 */

/* A fresh folder under the build tree. */
static const char *fresh_dir(const char *name) { return t_tmpdir(name); }

static void write_file(const char *dir, const char *name, const char *text) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    lu_write_text(path, text);
}

static void write_fixture_config(const char *dir) {
    char *text = NULL, path[4300];
    size_t len = 0;
    CHECK_OK(mc_read_file(t_src(LU_PEFT_DIR "/adapter_config.json"), &text, &len));
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK_OK(mc_write_file_atomic(path, text, len));
    mc_free(text);
}

/* Loads dir into the tiny model expecting status want and a message holding sub. */
static void expect_load(const char *dir, mc_status want, const char *sub, int line) {
    mc_adapter *a = NULL;
    mc_status s = mc_adapter_load(g_model, dir, &a);
    if (s != want) {
        fprintf(stderr, "line %d: loading %s gave %s (%s), expected %s\n", line, dir,
                mc_status_name(s), mc_last_error(), mc_status_name(want));
        t_checks_failed++;
    } else if (s != MC_OK && sub && !strstr(mc_last_error(), sub)) {
        fprintf(stderr, "line %d: message \"%s\" lacks \"%s\"\n", line, mc_last_error(), sub);
        t_checks_failed++;
    }
    if (s != MC_OK && a) {
        fprintf(stderr, "line %d: *out set on failure\n", line);
        t_checks_failed++;
    }
    mc_adapter_free(a);
}
#define EXPECT_LOAD(dir, want, sub) expect_load((dir), (want), (sub), __LINE__)

/* Writes a PEFT folder with the fixture config (or cfg) and the fixture's tensors edited
 * by edit. */
static const char *peft_case(const char *name, const char *cfg, void (*edit)(lu_tensors *)) {
    static char dir[4200];
    mc_st_set set;
    lu_tensors o;
    char path[4300];
    snprintf(dir, sizeof dir, "%s", fresh_dir(name));
    if (cfg)
        write_file(dir, "adapter_config.json", cfg);
    else
        write_fixture_config(dir);
    CHECK_OK(lu_open_fixture(&set));
    lu_from_set(&o, &set);
    if (edit) edit(&o);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_OK(lu_write_st(&o, path));
    lu_tensors_free(&o);
    mc_st_close(&set);
    return dir;
}

#define T_Q0A "layers.0.self_attn.q_proj.lora_A.weight"
#define T_D1B "layers.1.mlp.down_proj.lora_B.weight"

static void edit_swap_shape(lu_tensors *o) {
    int i = lu_find(o, T_Q0A);
    int64_t t = o->t[i].shape[0];
    o->t[i].shape[0] = o->t[i].shape[1];
    o->t[i].shape[1] = t;
}
static void edit_3d(lu_tensors *o) {
    int i = lu_find(o, T_Q0A);
    o->t[i].ndim = 3;
    o->t[i].shape[2] = 1;
}
static void edit_remove(lu_tensors *o) { lu_remove(o, lu_find(o, T_D1B)); }
static void edit_layer7(lu_tensors *o) {
    lu_dup(o, lu_find(o, T_Q0A), "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight");
}
static void edit_unknown(lu_tensors *o) { lu_dup(o, 0, "foo.weight"); }
static void edit_dora(lu_tensors *o) {
    lu_dup(o, 0, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");
}
static void edit_embedding(lu_tensors *o) {
    lu_dup(o, 0, "base_model.model.model.embed_tokens.lora_embedding_A");
}
static void edit_default_dup(lu_tensors *o) {
    lu_dup(o, lu_find(o, T_Q0A),
           "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight");
}
static void edit_default_all(lu_tensors *o) {
    size_t i;
    for (i = 0; i < o->n; i++) {
        char *w = strstr(o->names[i], ".weight");
        if (w) snprintf(w, 32, ".default.weight");
    }
}
static void edit_i32(lu_tensors *o) { o->t[lu_find(o, T_Q0A)].st_dtype = MC_ST_I32; }
static void edit_nan(lu_tensors *o) {
    int i = lu_find(o, T_D1B);
    size_t n = (size_t)(o->t[i].shape[0] * o->t[i].shape[1]);
    float *d = malloc(n * sizeof *d);
    memcpy(d, o->t[i].data, n * sizeof *d);
    d[5] = NAN;
    o->t[i].data = d;
    o->own_data[i] = d;
}
/* Every tensor converted to dtype g_to (F16 or BF16). */
static mc_st_dtype g_to;
static void edit_dtype(lu_tensors *o) {
    size_t i, k;
    for (i = 0; i < o->n; i++) {
        size_t n = (size_t)(o->t[i].shape[0] * o->t[i].shape[1]);
        uint16_t *d = malloc(n * sizeof *d);
        for (k = 0; k < n; k++) {
            float v;
            memcpy(&v, (const char *)o->t[i].data + 4 * k, 4);
            d[k] = g_to == MC_ST_BF16 ? mc_f32_to_bf16(v) : mc_f32_to_f16(v);
        }
        o->t[i].data = d;
        o->t[i].st_dtype = g_to;
        o->own_data[i] = d;
    }
}

static void test_load_folder_errors(void) {
    const char *d;
    char path[4300];
    mc_adapter *a = NULL;
    CHECK_STATUS(mc_adapter_load(NULL, "x", &a), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_adapter_load(g_model, NULL, &a), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_adapter_load(g_model, "x", NULL), MC_ERR_INVALID_ARG);
    d = fresh_dir("lora_empty");
    snprintf(path, sizeof path, "%s/nope", d);
    EXPECT_LOAD(path, MC_ERR_FILE_NOT_FOUND, "nope");
    EXPECT_LOAD(d, MC_ERR_FILE_NOT_FOUND, "adapter_config.json");
    EXPECT_LOAD(t_src(LU_PEFT_DIR "/adapter_config.json"), MC_ERR_NOT_DIR, "not a folder");
    write_file(d, "adapter_config.json", "{\"peft_type\": \"LORA\", ");
    EXPECT_LOAD(d, MC_ERR_JSON, "adapter_config.json");
    write_file(d, "adapter_config.json", PEFT_QV(", \"use_dora\": true"));
    EXPECT_LOAD(d, MC_ERR_UNSUPPORTED, "adapter_config.json: 'use_dora'");
    write_fixture_config(d);
    EXPECT_LOAD(d, MC_ERR_FILE_NOT_FOUND, "adapter_model.safetensors");
    write_file(d, "adapter_model.bin", "PK");
    EXPECT_LOAD(d, MC_ERR_UNSUPPORTED, "pickle");
    write_file(d, "adapter_model.safetensors", "short");
    EXPECT_LOAD(d, MC_ERR_TRUNCATED, "adapter_model.safetensors");
    write_file(d, "adapter_config.json", MLX_CFG(MLX_LP, ""));
    EXPECT_LOAD(d, MC_ERR_FILE_NOT_FOUND, "adapters.safetensors");
}

static void test_load_bad_tensors(void) {
    const char *d;
    d = peft_case("lora_shape", NULL, edit_swap_shape);
    EXPECT_LOAD(d, MC_ERR_SHAPE, "q_proj.lora_A.weight' has shape [64, 4], expected [4, 64]");
    d = peft_case("lora_3d", NULL, edit_3d);
    EXPECT_LOAD(d, MC_ERR_SHAPE, "[4, 64, 1]");
    d = peft_case("lora_missing", NULL, edit_remove);
    EXPECT_LOAD(d, MC_ERR_MISSING_TENSOR,
                "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight' is missing");
    d = peft_case("lora_not_targeted", PEFT_QV(""), NULL);
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "does not adapt");
    d = peft_case("lora_not_targeted_layer", PEFT_CFG("\"all-linear\"", ", \"exclude_modules\": \""
                                                      ".*layers\\\\.0\\\\..*\""), NULL);
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "layers 1..1");
    d = peft_case("lora_layer7", NULL, edit_layer7);
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "layer 7 but the model has 2 layers");
    d = peft_case("lora_unknown", NULL, edit_unknown);
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "unexpected tensor 'foo.weight'");
    d = peft_case("lora_dora_t", NULL, edit_dora);
    EXPECT_LOAD(d, MC_ERR_UNSUPPORTED, "DoRA");
    d = peft_case("lora_emb", NULL, edit_embedding);
    EXPECT_LOAD(d, MC_ERR_UNSUPPORTED, "embedding");
    d = peft_case("lora_dup", NULL, edit_default_dup);
    EXPECT_LOAD(d, MC_ERR_DUPLICATE, "same LoRA matrix");
    d = peft_case("lora_i32", NULL, edit_i32);
    EXPECT_LOAD(d, MC_ERR_DTYPE, "I32");
    d = peft_case("lora_nan", NULL, edit_nan);
    EXPECT_LOAD(d, MC_ERR_NUMERIC, "down_proj.lora_B.weight");
}

/* F16/BF16 tensors and the ".default." names load as the fixture does (after rounding). */
static void test_load_variants(void) {
    mc_adapter *ref = NULL, *a = NULL;
    const char *d;
    int which;
    CHECK_OK(mc_adapter_load(g_model, t_src(LU_PEFT_DIR), &ref));
    if (!ref) return;
    d = peft_case("lora_default", NULL, edit_default_all);
    CHECK_OK(mc_adapter_load(g_model, d, &a));
    CHECK(a && lu_same_params(a, ref));
    mc_adapter_free(a);
    a = NULL;
    for (which = 0; which < 2; which++) {
        g_to = which ? MC_ST_BF16 : MC_ST_F16;
        d = peft_case("lora_dtype", NULL, edit_dtype);
        CHECK_OK(mc_adapter_load(g_model, d, &a));
        if (a) {
            float *x = lu_params(a), *y = lu_params(ref);
            size_t i, bad = 0;
            for (i = 0; i < a->n_params; i++) {
                float want = which ? mc_bf16_to_f32(mc_f32_to_bf16(y[i])) : mc_f16_to_f32(mc_f32_to_f16(y[i]));
                if (x[i] != want) bad++;
            }
            CHECK_INT(bad, 0);
            free(x);
            free(y);
        }
        mc_adapter_free(a);
        a = NULL;
    }
    mc_adapter_free(ref);
}

/* mlx-lm's transposed layout with scale = alpha / r gives the PEFT adapter's logits. */
static void test_mlx_equals_peft(void) {
    mc_adapter *p = NULL, *x = NULL, *y = NULL;
    const char *d;
    size_t n;
    int32_t *ids = lu_ids(&n);
    float *lp = NULL, *lx = NULL;
    CHECK_OK(mc_adapter_load(g_model, t_src(LU_PEFT_DIR), &p));
    d = fresh_dir("lora_mlx_all");
    CHECK_OK(lu_make_mlx(d, ALL, 0, -1, 2.0,
                         "[\"self_attn.q_proj\", \"self_attn.k_proj\", \"self_attn.v_proj\", "
                         "\"self_attn.o_proj\", \"mlp.gate_proj\", \"mlp.up_proj\", \"mlp.down_proj\"]"));
    CHECK_OK(mc_adapter_load(g_model, d, &x));
    d = fresh_dir("lora_mlx_nokeys");
    CHECK_OK(lu_make_mlx(d, ALL, 0, 16, 2.0, NULL));
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "num_layers is 16");
    CHECK_OK(lu_make_mlx(d, ALL, 0, 2, 2.0, NULL));
    CHECK_OK(mc_adapter_load(g_model, d, &y));
    if (p && x && y) {
        CHECK(lu_same_params(x, p));
        CHECK(lu_same_params(y, p));
        CHECK_NEAR(x->scale, p->scale, 0);
        CHECK_NEAR(x->alpha, 8, 0);
        lp = lu_logits(g_model, p, 1.0f, ids, n);
        lx = lu_logits(g_model, x, 1.0f, ids, n);
        CHECK(lp && lx && !memcmp(lp, lx, n * 512 * sizeof *lp));
    }
    free(lp);
    free(lx);
    free(ids);
    mc_adapter_free(p);
    mc_adapter_free(x);
    mc_adapter_free(y);
}

static void test_mlx_bad(void) {
    const char *d = fresh_dir("lora_mlx_bad");
    mc_adapter *a = NULL;
    /* no keys: the file's projections (q, v) on the last layer */
    CHECK_OK(lu_make_mlx(d, Q | V, 1, 1, 1.5, NULL));
    CHECK_OK(mc_adapter_load(g_model, d, &a));
    if (a) {
        CHECK_INT(a->targets, Q | V);
        CHECK_INT(a->first_layer, 1);
        CHECK_NEAR(a->scale, 1.5, 0);
        CHECK(a->base_model && !strcmp(a->base_model, "tiny"));
    }
    mc_adapter_free(a);
    /* tensors of layer 0 while num_layers is 1 */
    CHECK_OK(lu_make_mlx(d, Q | V, 0, 1, 1.5, NULL));
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "layers 1..1");
    /* keys name q only, the file holds v too */
    CHECK_OK(lu_make_mlx(d, Q | V, 0, -1, 1.5, "[\"self_attn.q_proj\"]"));
    EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "{q_proj}");
    /* keys name k, which the file lacks */
    CHECK_OK(lu_make_mlx(d, Q, 0, -1, 1.5, "[\"self_attn.q_proj\", \"self_attn.k_proj\"]"));
    EXPECT_LOAD(d, MC_ERR_MISSING_TENSOR, "model.layers.0.self_attn.k_proj.lora_a");
    /* no tensors at all */
    CHECK_OK(lu_make_mlx(d, 0, 0, -1, 1.5, NULL));
    EXPECT_LOAD(d, MC_ERR_MISSING_TENSOR, "no LoRA tensors");
    /* PEFT names in an mlx-lm file; a DoRA magnitude */
    {
        mc_st_set set;
        lu_tensors o;
        char path[4300];
        CHECK_OK(lu_open_fixture(&set));
        lu_from_set(&o, &set);
        snprintf(path, sizeof path, "%s/adapters.safetensors", d);
        CHECK_OK(lu_write_st(&o, path));
        EXPECT_LOAD(d, MC_ERR_CONFIG_TYPE, "unexpected tensor 'base_model.");
        o.n = 1;
        lu_rename(&o, 0, "model.layers.0.self_attn.q_proj.m");
        CHECK_OK(lu_write_st(&o, path));
        EXPECT_LOAD(d, MC_ERR_UNSUPPORTED, "DoRA");
        lu_tensors_free(&o);
        mc_st_close(&set);
    }
}

/* ---- saving ------------------------------------------------------------------------------- */

static void test_save_round_trip(void) {
    mc_adapter *a = NULL, *b = NULL, *c = NULL, *e = NULL;
    mc_lora_params lp = mc_lora_default_params();
    char dir[4300], path[4400];
    char *text = NULL;
    size_t len = 0;
    CHECK_OK(mc_adapter_load(g_model, t_src(LU_PEFT_DIR), &a));
    snprintf(dir, sizeof dir, "%s/nested/deeper/", fresh_dir("lora_save"));
    if (a) {
        CHECK_OK(mc_adapter_save(a, dir));
        CHECK_OK(mc_adapter_load(g_model, dir, &b));
        CHECK(b && lu_same_params(a, b));
        if (b) {
            CHECK_NEAR(b->alpha, a->alpha, 0);
            CHECK_NEAR(b->scale, a->scale, 0);
            CHECK(b->base_model && !strcmp(b->base_model, "/tmp/fx/tiny_tied_f32"));
        }
        snprintf(path, sizeof path, "%sadapter_config.json", dir);
        CHECK_OK(mc_read_file(path, &text, &len));
        if (text) {
            CHECK(strstr(text, "\"layers_to_transform\":\tnull") != NULL);
            CHECK(strstr(text, "\"lora_alpha\":\t8,") != NULL);
            CHECK(strstr(text, "\"task_type\":\t\"CAUSAL_LM\"") != NULL);
            CHECK(strstr(text, "\"down_proj\"") != NULL);
        }
        mc_free(text);
        text = NULL;
        /* saving over an existing adapter replaces it */
        CHECK_OK(mc_adapter_save(a, dir));
    }
    /* a fresh adapter on the last layer, q/v/down, rsLoRA, odd alpha and dropout */
    lp.rank = 3;
    lp.alpha = 0.1f;
    lp.rslora = 1;
    lp.dropout = 0.1f;
    lp.num_layers = 1;
    lp.targets = MC_LORA_Q | MC_LORA_V | MC_LORA_DOWN;
    lp.seed = 7;
    CHECK_OK(mc_adapter_create(g_model, &lp, &c));
    snprintf(dir, sizeof dir, "%s", fresh_dir("lora_save2"));
    if (c) {
        CHECK_OK(mc_adapter_save(c, dir));
        CHECK_OK(mc_adapter_load(g_model, dir, &e));
        CHECK(e && lu_same_params(c, e));
        if (e) {
            CHECK_NEAR(e->alpha, c->alpha, 0);
            CHECK_NEAR(e->scale, c->scale, 0);
            CHECK_NEAR(e->dropout, c->dropout, 0);
            CHECK(e->rslora);
            CHECK(e->base_model && !e->base_model[0]);
        }
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        CHECK_OK(mc_read_file(path, &text, &len));
        if (text) {
            CHECK(strstr(text, "\"lora_alpha\":\t0.1,") != NULL);
            CHECK(strstr(text, "\"lora_dropout\":\t0.1,") != NULL);
            CHECK(strstr(text, "\"use_rslora\":\ttrue") != NULL);
            CHECK(strstr(text, "\"layers_to_transform\":\t[1]") != NULL);
        }
        mc_free(text);
        /* errors: NULL arguments, a file in the way */
        CHECK_STATUS(mc_adapter_save(NULL, dir), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_save(c, NULL), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_save(c, ""), MC_ERR_INVALID_ARG);
        snprintf(path, sizeof path, "%s/adapter_config.json/sub", dir);
        CHECK_STATUS(mc_adapter_save(c, path), MC_ERR_NOT_DIR);
        CHECK_MSG("not a folder");
        CHECK_STATUS(mc_adapter_save(c, "/proc/mc_no_such_dir/x"), MC_ERR_IO);
    }
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_adapter_free(c);
    mc_adapter_free(e);
}

/* ---- fusing ---------------------------------------------------------------------------------- */

/* Copies the tiny model folder into a scratch folder with tokenizer files beside it. */
static const char *base_copy(void) {
    static char dir[4200];
    static const char *const files[] = {"config.json", "generation_config.json", "model.safetensors"};
    size_t i;
    snprintf(dir, sizeof dir, "%s", fresh_dir("lora_base_copy"));
    for (i = 0; i < 3; i++) {
        char src[4300], dst[4300], *data = NULL;
        size_t len = 0;
        snprintf(src, sizeof src, "%s/%s", t_src(LU_BASE_DIR), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        CHECK_OK(mc_read_file(src, &data, &len));
        CHECK_OK(mc_write_file_atomic(dst, data, len));
        mc_free(data);
    }
    write_file(dir, "tokenizer.json", "{\"model\": {}}");
    write_file(dir, "merges.txt", "#version: 0.2\na b\n");
    return dir;
}

static bool same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t lx = 0, ly = 0;
    bool same = mc_read_file(a, &x, &lx) == MC_OK && mc_read_file(b, &y, &ly) == MC_OK &&
                lx == ly && !memcmp(x, y, lx);
    mc_free(x);
    mc_free(y);
    return same;
}

static void test_fuse_files_and_errors(void) {
    mc_model *m = NULL, *other = NULL;
    mc_adapter *a = NULL, *oa = NULL;
    char base[4200], out[4300], p1[4400], p2[4400];
    snprintf(base, sizeof base, "%s", base_copy());
    CHECK_OK(lu_load(base, false, &m));
    if (!m) return;
    CHECK_OK(mc_adapter_load(m, t_src(LU_PEFT_DIR), &a));
    snprintf(out, sizeof out, "%s", fresh_dir("lora_fused_files"));
    write_file(out, "model.safetensors.index.json", "{\"weight_map\": {}}");
    if (a) {
        CHECK_OK(mc_adapter_fuse(m, a, base, out));
        snprintf(p1, sizeof p1, "%s/model.safetensors.index.json", out);
        CHECK(!mc_path_exists(p1)); /* the stale index is gone */
        snprintf(p1, sizeof p1, "%s/tokenizer.json", base);
        snprintf(p2, sizeof p2, "%s/tokenizer.json", out);
        CHECK(same_file(p1, p2));
        snprintf(p1, sizeof p1, "%s/merges.txt", base);
        snprintf(p2, sizeof p2, "%s/merges.txt", out);
        CHECK(same_file(p1, p2));
        snprintf(p1, sizeof p1, "%s/config.json", base);
        snprintf(p2, sizeof p2, "%s/config.json", out);
        CHECK(same_file(p1, p2));
        snprintf(p2, sizeof p2, "%s/vocab.json", out);
        CHECK(!mc_path_exists(p2));
        /* scale 0 writes the base weights back bit for bit */
        snprintf(out, sizeof out, "%s", fresh_dir("lora_fused_zero"));
        CHECK_OK(mc_lora_fuse(m, a, 0.0f, base, out));
        {
            mc_st_set x, y;
            size_t i;
            snprintf(p1, sizeof p1, "%s/model.safetensors", out);
            CHECK_OK(mc_st_open_file(p1, &x));
            CHECK_OK(mc_st_open_dir(base, &y));
            CHECK_INT(x.n, y.n);
            for (i = 0; i < x.n && i < y.n; i++)
                CHECK(!strcmp(x.tensors[i].name, y.tensors[i].name) &&
                      x.tensors[i].nbytes == y.tensors[i].nbytes &&
                      !memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].nbytes));
            mc_st_close(&x);
            mc_st_close(&y);
        }
        /* errors */
        CHECK_STATUS(mc_adapter_fuse(NULL, a, base, out), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_fuse(m, NULL, base, out), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_fuse(m, a, NULL, out), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_fuse(m, a, base, NULL), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_lora_fuse(m, a, NAN, base, out), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_fuse(m, a, base, base), MC_ERR_INVALID_ARG);
        CHECK_MSG("base model's folder");
        snprintf(p1, sizeof p1, "%s/./", base);
        CHECK_STATUS(mc_adapter_fuse(m, a, base, p1), MC_ERR_INVALID_ARG);
        CHECK_STATUS(mc_adapter_fuse(g_model, a, base, out), MC_ERR_INVALID_ARG);
        CHECK_MSG("another model");
        CHECK_STATUS(mc_adapter_fuse(m, a, t_src("tests/fixtures/llama_f16"), out), MC_ERR_INVALID_ARG);
        CHECK_MSG("describes another model");
        snprintf(p1, sizeof p1, "%s/nope", base);
        CHECK_STATUS(mc_adapter_fuse(m, a, p1, out), MC_ERR_FILE_NOT_FOUND);
        snprintf(p1, sizeof p1, "%s/config.json", base);
        CHECK_STATUS(mc_adapter_fuse(m, a, base, p1), MC_ERR_NOT_DIR);
        snprintf(p1, sizeof p1, "%s/config.json/x", base);
        CHECK_STATUS(mc_adapter_fuse(m, a, base, p1), MC_ERR_NOT_DIR);
        snprintf(p1, sizeof p1, "%s/model.safetensors.index.json", out);
        CHECK(mkdir(p1, 0755) == 0); /* an index that cannot be removed */
        CHECK_STATUS(mc_adapter_fuse(m, a, base, out), MC_ERR_IO);
        CHECK_MSG("stale index");
        CHECK(rmdir(p1) == 0);
    }
    /* an adapter of another model that happens to have the same sizes */
    CHECK_OK(lu_load(t_src(LU_BASE_DIR), false, &other));
    if (other) CHECK_OK(mc_adapter_load(other, t_src(LU_PEFT_DIR), &oa));
    if (oa) CHECK_STATUS(mc_adapter_fuse(m, oa, base, out), MC_ERR_INVALID_ARG);
    mc_adapter_free(oa);
    mc_adapter_free(a);
    mc_model_free(other);
    mc_model_free(m);
}

/* Fusing into a bf16 sharded model: one output file, untouched tensors byte-identical,
 * merged ones rounded to nearest even from W + s * B A. */
static void test_fuse_bf16_sharded(void) {
    const char *src = t_src("tests/fixtures/qwen2_bf16_sharded");
    char base[4200], out[4300], path[4400];
    mc_model *m = NULL, *fm = NULL;
    mc_adapter *a = NULL;
    mc_lora_params lp = mc_lora_default_params();
    mc_st_set x, y;
    size_t i, n_diff = 0, n_same = 0, n_bad = 0;
    float *h = NULL;
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    snprintf(base, sizeof base, "%s", src);
    CHECK_OK(lu_load(base, false, &m));
    if (!m) return;
    lp.rank = 2;
    lp.alpha = 3;
    lp.num_layers = 1;
    lp.targets = MC_LORA_Q | MC_LORA_DOWN;
    CHECK_OK(mc_adapter_create(m, &lp, &a));
    if (!a) goto done;
    /* give B values so the merge changes the weights */
    h = lu_params(a);
    for (i = 0; i < a->n_params; i++) h[i] = (float)((double)((i * 7919) % 97) / 97.0 - 0.5) * 0.05f;
    CHECK_OK(m->be->to_device(m->be, a->params, h, a->n_params * sizeof *h));
    snprintf(out, sizeof out, "%s", fresh_dir("lora_fused_bf16"));
    CHECK_OK(mc_adapter_fuse(m, a, base, out));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    CHECK_OK(mc_st_open_file(path, &x));
    CHECK_OK(mc_st_open_dir(base, &y));
    CHECK_INT(x.n, y.n);
    for (i = 0; i < x.n && i < y.n; i++) {
        const mc_st_tensor *t = &x.tensors[i], *b = &y.tensors[i];
        int l = -1;
        mc_lora_module mod = MC_LM_Q;
        const char *rest = NULL;
        const mc_lora_mod *lm;
        CHECK(!strcmp(t->name, b->name) && t->st_dtype == b->st_dtype && t->nbytes == b->nbytes);
        if (!strncmp(t->name, "model.layers.", 13))
            rest = mc_lora_parse_module_path(t->name + 13, &l, &mod);
        lm = rest && !strcmp(rest, ".weight") ? mc_adapter_mod(a, l, mod) : NULL;
        if (!lm) {
            CHECK(!memcmp(t->data, b->data, t->nbytes));
            n_same++;
            continue;
        }
        {
            const float *A = h + (lm->A - a->params), *B = h + (lm->B - a->params);
            size_t r, c, k;
            for (r = 0; r < (size_t)lm->out; r++)
                for (c = 0; c < (size_t)lm->in; c++) {
                    uint16_t wb, ob;
                    double acc = 0;
                    float w;
                    for (k = 0; k < 2; k++) acc += (double)B[r * 2 + k] * (double)A[k * lm->in + c];
                    memcpy(&wb, (const char *)b->data + 2 * (r * lm->in + c), 2);
                    memcpy(&ob, (const char *)t->data + 2 * (r * lm->in + c), 2);
                    w = (float)((double)mc_bf16_to_f32(wb) + (double)a->scale * acc);
                    if (mc_f32_to_bf16(w) != ob) n_bad++;
                }
        }
        n_diff++;
    }
    CHECK_INT(n_diff, 2);
    CHECK_INT(n_bad, 0);
    printf("bf16 sharded fuse: %zu merged, %zu copied tensors\n", n_diff, n_same);
    /* the fused model scores like the adapter applied unmerged, up to bf16 rounding */
    CHECK_OK(lu_load(out, false, &fm));
    if (fm) {
        int32_t ids[12];
        size_t nv = (size_t)m->cfg.vocab_size;
        float *u, *f;
        for (i = 0; i < 12; i++) ids[i] = (int32_t)((i * 31 + 3) % nv);
        u = lu_logits(m, a, 1.0f, ids, 12);
        f = lu_logits(fm, NULL, 1.0f, ids, 12);
        if (u && f) CHECK_REL_L2(f, u, 12 * nv, 2e-2);
        free(u);
        free(f);
    }
done:
    mc_st_close(&x);
    mc_st_close(&y);
    free(h);
    mc_model_free(fm);
    mc_adapter_free(a);
    mc_model_free(m);
}

/* ---- allocation failures ----------------------------------------------------------------- */

typedef struct sweep_ctx {
    mc_model *m;
    mc_adapter *a;
    const char *dir, *dir2;
} sweep_ctx;

/* Fails the 1st, 2nd, ... allocation of fn until a run completes without reaching the
 * failure; every failing run must return MC_ERR_OOM. */
static void sweep(const char *what, mc_status (*fn)(sweep_ctx *), sweep_ctx *ctx) {
    size_t n, made = 0;
    for (n = 1; n < 100000; n++) {
        mc_status s;
        mc_debug_fail_alloc_after(n);
        s = fn(ctx);
        made = mc_debug_fail_alloc_after(0);
        if (made < n) {
            CHECK_OK(s);
            break;
        }
        if (s != MC_OK && s != MC_ERR_OOM) {
            fprintf(stderr, "%s: failing allocation %zu gave %s: %s\n", what, n, mc_status_name(s),
                    mc_last_error());
            t_checks_failed++;
            break;
        }
    }
    printf("%s: %zu allocation failures, each reported as MC_ERR_OOM\n", what, n - 1);
}

static mc_status do_load(sweep_ctx *c) {
    mc_adapter *a = NULL;
    mc_status s = mc_adapter_load(c->m, c->dir, &a);
    mc_adapter_free(a);
    return s;
}
static mc_status do_save(sweep_ctx *c) { return mc_adapter_save(c->a, c->dir); }
static mc_status do_fuse(sweep_ctx *c) { return mc_adapter_fuse(c->m, c->a, c->dir2, c->dir); }
static mc_status do_parse(sweep_ctx *c) {
    mc_adapter_config cfg;
    mc_status s = parse(c->dir, &cfg);
    mc_adapter_config_clear(&cfg);
    return s;
}

static void test_alloc_failures(void) {
    sweep_ctx c;
    char mlx[4200];
    memset(&c, 0, sizeof c);
    c.m = g_model;
    c.dir = t_src(LU_PEFT_DIR);
    sweep("load PEFT", do_load, &c);
    snprintf(mlx, sizeof mlx, "%s", fresh_dir("lora_sweep_mlx"));
    CHECK_OK(lu_make_mlx(mlx, Q | V, 1, 1, 2.0, NULL));
    c.dir = mlx;
    sweep("load mlx-lm", do_load, &c);
    CHECK_OK(mc_adapter_load(g_model, t_src(LU_PEFT_DIR), &c.a));
    if (!c.a) return;
    c.dir = fresh_dir("lora_sweep_save");
    sweep("save", do_save, &c);
    c.dir = fresh_dir("lora_sweep_fuse");
    c.dir2 = t_src(LU_BASE_DIR);
    sweep("fuse", do_fuse, &c);
    c.dir = PEFT_CFG("\".*(q|v)_proj\"", ", \"exclude_modules\": \".*layers\\\\.0\\\\..*\"");
    sweep("parse with regular expressions", do_parse, &c);
    c.dir = MLX_CFG(MLX_LP ", \"keys\": [\"mlp.up_proj\"]", ", \"model\": \"m\"");
    sweep("parse mlx-lm", do_parse, &c);
    c.dir = PEFT_QV(", \"base_model_name_or_path\": \"m\"");
    sweep("parse PEFT", do_parse, &c);
    mc_adapter_free(c.a);
}

int main(void) {
    RUN(test_peft_config_ok);
    RUN(test_peft_config_errors);
    RUN(test_peft_targets);
    RUN(test_mlx_config);
    CHECK_OK(lu_load(t_src(LU_BASE_DIR), false, &g_model));
    if (g_model) {
        RUN(test_load_folder_errors);
        RUN(test_load_bad_tensors);
        RUN(test_load_variants);
        RUN(test_mlx_equals_peft);
        RUN(test_mlx_bad);
        RUN(test_save_round_trip);
        RUN(test_fuse_files_and_errors);
        RUN(test_fuse_bf16_sharded);
        RUN(test_alloc_failures);
    }
    mc_model_free(g_model);
    return t_summary();
}
