/* test_init.c - random-weight checkpoints (mc_checkpoint_init): argument errors, configs
 * copied from config.json files (qwen2, qwen3, llama; every dtype) that load back with the
 * same architecture, the initialisation (norms 1, biases 0, matrices uniform with std
 * 0.02), determinism by seed, the tiny preset end to end, the published sizes of the
 * Qwen2.5-Coder presets, and allocation failures. */
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "io/io.h"
#include "test.h"

/* A small qwen2 config (untied, GQA) written to <tmp>/<name>.json; returns its path. */
static const char *small_config(const char *tmp, const char *name, const char *extra) {
    static char path[4200];
    char text[1024];
    snprintf(path, sizeof path, "%s/%s.json", tmp, name);
    snprintf(text, sizeof text,
             "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
             "\"hidden_act\": \"silu\", \"vocab_size\": 96, \"hidden_size\": 32, "
             "\"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"max_position_embeddings\": 128, "
             "\"rope_theta\": 5000.0, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": false, "
             "\"bos_token_id\": 5, \"eos_token_id\": 7, \"use_sliding_window\": false%s}",
             extra ? extra : "");
    CHECK_OK(mc_write_file_atomic(path, text, strlen(text)));
    return path;
}

/* out = dir/name in a caller buffer of 4200 bytes. */
static const char *join(char *out, const char *dir, const char *name) {
    snprintf(out, 4200, "%s/%s", dir, name);
    return out;
}

/* The written config.json describes the same architecture as want. */
static void check_same_config(const mc_config *got, const mc_config *want) {
    CHECK_INT(got->arch, want->arch);
    CHECK(strcmp(got->architecture, want->architecture) == 0);
    CHECK(strcmp(got->model_type, want->model_type) == 0);
    CHECK_INT(got->vocab_size, want->vocab_size);
    CHECK_INT(got->hidden_size, want->hidden_size);
    CHECK_INT(got->intermediate_size, want->intermediate_size);
    CHECK_INT(got->num_hidden_layers, want->num_hidden_layers);
    CHECK_INT(got->num_attention_heads, want->num_attention_heads);
    CHECK_INT(got->num_key_value_heads, want->num_key_value_heads);
    CHECK_INT(got->head_dim, want->head_dim);
    CHECK_INT(got->max_position_embeddings, want->max_position_embeddings);
    CHECK_NEAR(got->rope_theta, want->rope_theta, 0);
    CHECK_NEAR(got->rms_norm_eps, want->rms_norm_eps, 0);
    CHECK_INT(got->tie_word_embeddings, want->tie_word_embeddings);
    CHECK_INT(got->qkv_bias, want->qkv_bias);
    CHECK_INT(got->qk_norm, want->qk_norm);
    CHECK_INT(got->bos_token_id, want->bos_token_id);
    CHECK_INT(got->n_eos, want->n_eos > 0 ? 1 : 0); /* config.json's eos only */
    if (want->n_eos > 0) CHECK_INT(got->eos_token_ids[0], want->eos_token_ids[0]);
}

/* Norms are 1, biases 0, matrices uniform in (-a, a) with std 0.02 and mean 0. */
static void check_init_values(const char *dir, mc_st_dtype want_dtype) {
    char path[4200];
    mc_st_set st;
    size_t i, k;
    const double a = 0.02 * sqrt(3.0);
    memset(&st, 0, sizeof st);
    CHECK_OK(mc_st_open_file(join(path, dir, "model.safetensors"), &st));
    for (i = 0; i < st.n; i++) {
        const mc_st_tensor *t = &st.tensors[i];
        size_t n = (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
        double sum = 0, sq = 0, mx = 0;
        mc_dtype dt = MC_F32;
        CHECK_INT(t->st_dtype, want_dtype);
        CHECK(mc_st_dtype_compute(t->st_dtype, &dt));
        for (k = 0; k < n; k++) {
            double v = mc_load_f32(t->data, dt, k);
            sum += v;
            sq += v * v;
            if (fabs(v) > mx) mx = fabs(v);
        }
        if (strstr(t->name, "norm.weight")) {
            CHECK_NEAR(sum, (double)n, 0);
            CHECK_NEAR(mx, 1.0, 0);
        } else if (strstr(t->name, ".bias")) {
            CHECK_NEAR(mx, 0.0, 0);
        } else {
            double mean = sum / (double)n, sd = sqrt(sq / (double)n - mean * mean);
            CHECK(t->ndim == 2);
            CHECK(mx <= a * 1.01); /* bf16 rounding may add 0.4% */
            CHECK_NEAR(mean, 0.0, 5.0 * 0.02 / sqrt((double)n));
            CHECK_NEAR(sd, 0.02, n >= 1000 ? 0.002 : 0.006);
        }
    }
    mc_st_close(&st);
}

static void test_bad_arguments(void) {
    const char *tmp = t_tmpdir("init_args");
    const char *cfg = small_config(tmp, "small", NULL);
    char out[4200], file[4200], bad_json[4200];
    CHECK_STATUS(mc_checkpoint_init("tiny", NULL, MC_BF16, 0, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_checkpoint_init(NULL, NULL, MC_BF16, 0, tmp), MC_ERR_INVALID_ARG);
    CHECK_MSG("exactly one");
    CHECK_STATUS(mc_checkpoint_init("tiny", cfg, MC_BF16, 0, tmp), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_checkpoint_init("tiny", NULL, (mc_dtype)7, 0, tmp), MC_ERR_INVALID_ARG);
    CHECK_MSG("dtype 7");
    CHECK_STATUS(mc_checkpoint_init("huge", NULL, MC_BF16, 0, tmp), MC_ERR_INVALID_ARG);
    CHECK_MSG("'huge'");
    CHECK_MSG("qwen2.5-coder-7b");
    CHECK_STATUS(mc_checkpoint_init(NULL, join(file, tmp, "none.json"), MC_BF16, 0, tmp),
                 MC_ERR_FILE_NOT_FOUND);
    join(bad_json, tmp, "bad.json");
    CHECK_OK(mc_write_file_atomic(bad_json, "{\"model_type\": ", 15));
    CHECK_STATUS(mc_checkpoint_init(NULL, bad_json, MC_BF16, 0, tmp), MC_ERR_JSON);
    CHECK_MSG("bad.json");
    CHECK_OK(mc_write_file_atomic(bad_json, "{\"model_type\": \"gpt2\"}", 22));
    CHECK_STATUS(mc_checkpoint_init(NULL, bad_json, MC_BF16, 0, tmp), MC_ERR_UNSUPPORTED);
    /* the output is a file, or lies under one; missing parent folders are created */
    CHECK_STATUS(mc_checkpoint_init(NULL, cfg, MC_F32, 0, cfg), MC_ERR_NOT_DIR);
    {
        char under[4400];
        snprintf(under, sizeof under, "%s/sub", cfg);
        CHECK_STATUS(mc_checkpoint_init(NULL, cfg, MC_F32, 0, under), MC_ERR_NOT_DIR);
    }
    CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_F32, 0, join(out, tmp, "new/parent/folder")));
    CHECK_STATUS(mc_checkpoint_init_std(NULL, cfg, MC_F32, 0, 0.0f, out), MC_ERR_INVALID_ARG);
    CHECK_MSG("init_std");
    CHECK_STATUS(mc_checkpoint_init_std(NULL, cfg, MC_F32, 0, 11.0f, out), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_checkpoint_init_std(NULL, cfg, MC_F32, 0, 0.5f, out));
}

/* A config file copied into a checkpoint: same architecture, loads, scores close to
 * uniform (ln V), in each dtype; the output folder may already exist. */
static void test_from_config(void) {
    const char *tmp = t_tmpdir("init_config");
    const char *cfg = small_config(tmp, "small", NULL);
    static const mc_dtype dtypes[3] = {MC_F32, MC_F16, MC_BF16};
    static const mc_st_dtype st_dtypes[3] = {MC_ST_F32, MC_ST_F16, MC_ST_BF16};
    mc_config want, got;
    char text_buf[2048];
    int k;
    {
        char *text = NULL;
        size_t len = 0;
        CHECK_OK(mc_read_file(cfg, &text, &len));
        CHECK_OK(mc_config_parse(text, len, cfg, &want));
        mc_free(text);
    }
    for (k = 0; k < 3; k++) {
        char out[4200];
        mc_model *m = NULL;
        mc_model_info info;
        int32_t ids[6] = {1, 9, 33, 4, 95, 0};
        double loss = 0;
        snprintf(text_buf, sizeof text_buf, "out_%s", mc_dtype_name(dtypes[k]));
        join(out, tmp, text_buf);
        if (k == 1) CHECK(mkdir(out, 0755) == 0); /* an existing folder is fine */
        CHECK_OK(mc_checkpoint_init(NULL, cfg, dtypes[k], 3, out));
        CHECK_OK(mc_config_load(out, &got));
        check_same_config(&got, &want);
        CHECK_INT(got.has_dtype, 1);
        CHECK_INT(got.dtype, dtypes[k]);
        check_init_values(out, st_dtypes[k]);
        CHECK_OK(mc_model_load(out, NULL, &m));
        if (!m) continue;
        CHECK_OK(mc_model_get_info(m, &info));
        CHECK_INT(info.dtype, dtypes[k]);
        /* 2 V D + L (D q + 2 D kv + q D + q + 2 kv + 3 D F + 2 D) + D with q = 32, kv = 16 */
        CHECK_INT(info.n_params,
                  2 * 96 * 32 + 2 * (32 * 32 * 2 + 2 * 32 * 16 + 32 + 32 + 3 * 32 * 48 + 2 * 32) +
                      32);
        CHECK_INT(info.weight_bytes, info.n_params * mc_dtype_size(dtypes[k]));
        CHECK_OK(mc_model_eval(m, ids, 6, NULL, &loss));
        CHECK_NEAR(loss, log(96.0), 0.3); /* logits have std 0.02 x sqrt(32) */
        mc_model_free(m);
    }
}

/* qwen3 (q/k norms, head_dim 32 != hidden / heads) and llama (no biases) fixtures' configs
 * give checkpoints that load with the fixtures' shapes; a llama or qwen2 head_dim that is
 * not hidden / heads is kept. */
static void test_other_architectures(void) {
    const char *tmp = t_tmpdir("init_arch");
    static const char *const names[2] = {"qwen3_bf16", "llama_f16"};
    char src[4200], out[4200], cfg_text[2048];
    int k;
    for (k = 0; k < 2; k++) {
        mc_model *ours = NULL, *theirs = NULL;
        mc_model_info a, b;
        snprintf(src, sizeof src, "%s/tests/fixtures/%s/config.json", MC_SOURCE_DIR, names[k]);
        join(out, tmp, names[k]);
        CHECK_OK(mc_checkpoint_init(NULL, src, MC_BF16, 1, out));
        CHECK_OK(mc_model_load(out, NULL, &ours));
        snprintf(src, sizeof src, "%s/tests/fixtures/%s", MC_SOURCE_DIR, names[k]);
        CHECK_OK(mc_model_load(src, NULL, &theirs));
        if (ours && theirs) {
            CHECK_OK(mc_model_get_info(ours, &a));
            CHECK_OK(mc_model_get_info(theirs, &b));
            CHECK(strcmp(a.architecture, b.architecture) == 0);
            CHECK_INT(a.head_dim, b.head_dim);
            CHECK_INT(a.has_qkv_bias, b.has_qkv_bias);
            CHECK_INT(a.tie_word_embeddings, b.tie_word_embeddings);
            CHECK_INT(a.n_params, b.n_params);
            CHECK_NEAR(a.rope_theta, b.rope_theta, 0);
        }
        mc_model_free(ours);
        mc_model_free(theirs);
    }
    /* head_dim 16 with hidden 32 and 4 heads, for qwen2 and llama */
    {
        const char *cfg = small_config(tmp, "hd16", ", \"head_dim\": 16");
        mc_model *m = NULL;
        mc_model_info info;
        join(out, tmp, "hd16_out");
        CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_F32, 0, out));
        CHECK_OK(mc_model_load(out, NULL, &m));
        if (m) {
            CHECK_OK(mc_model_get_info(m, &info));
            CHECK_INT(info.head_dim, 16);
            mc_model_free(m);
        }
    }
    {
        const char *path = join(src, tmp, "llama.json");
        mc_model *m = NULL;
        mc_model_info info;
        snprintf(cfg_text, sizeof cfg_text,
                 "{\"model_type\": \"llama\", \"hidden_act\": \"silu\", \"vocab_size\": 50, "
                 "\"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 1, "
                 "\"num_attention_heads\": 4, \"head_dim\": 16, \"attention_bias\": true, "
                 "\"tie_word_embeddings\": true}");
        CHECK_OK(mc_write_file_atomic(path, cfg_text, strlen(cfg_text)));
        join(out, tmp, "llama_out");
        CHECK_OK(mc_checkpoint_init(NULL, path, MC_F16, 0, out));
        CHECK_OK(mc_model_load(out, NULL, &m));
        if (m) {
            CHECK_OK(mc_model_get_info(m, &info));
            CHECK_INT(info.head_dim, 16);
            CHECK_INT(info.has_qkv_bias, 1);
            CHECK(strcmp(info.architecture, "LlamaForCausalLM") == 0);
            CHECK_INT(info.bos_token_id, -1);
            CHECK_INT(info.n_eos_token_ids, 0);
            mc_model_free(m);
        }
    }
}

/* Reads a whole file (mc_free). */
static char *slurp(const char *path, size_t *len) {
    char *text = NULL;
    CHECK_OK(mc_read_file(path, &text, len));
    return text;
}

/* The same seed writes the same bytes; another seed other weights. */
static void test_seed_determinism(void) {
    const char *tmp = t_tmpdir("init_seed");
    const char *cfg = small_config(tmp, "small", NULL);
    char a[4200], b[4200], c[4200], p[4200];
    char *ta, *tb, *tc;
    size_t la = 0, lb = 0, lc = 0;
    CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_BF16, 42, join(a, tmp, "a")));
    CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_BF16, 42, join(b, tmp, "b")));
    CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_BF16, 43, join(c, tmp, "c")));
    ta = slurp(join(p, a, "model.safetensors"), &la);
    tb = slurp(join(p, b, "model.safetensors"), &lb);
    tc = slurp(join(p, c, "model.safetensors"), &lc);
    CHECK(ta && tb && tc && la == lb && la == lc);
    if (ta && tb && tc && la == lb && la == lc) {
        CHECK(memcmp(ta, tb, la) == 0);
        CHECK(memcmp(ta, tc, la) != 0);
    }
    mc_free(ta);
    mc_free(tb);
    mc_free(tc);
}

/* The tiny preset end to end: the documented shape, loads and scores. */
static void test_tiny_preset(void) {
    const char *tmp = t_tmpdir("init_tiny");
    char out[4200];
    mc_model *m = NULL;
    mc_model_info info;
    int32_t ids[4] = {151643, 0, 100, 151935};
    double loss = 0;
    join(out, tmp, "tiny");
    CHECK_OK(mc_checkpoint_init("tiny", NULL, MC_BF16, 0, out));
    CHECK_OK(mc_model_load(out, NULL, &m));
    if (!m) return;
    CHECK_OK(mc_model_get_info(m, &info));
    CHECK(strcmp(info.architecture, "Qwen2ForCausalLM") == 0);
    CHECK(strcmp(info.model_type, "qwen2") == 0);
    CHECK_INT(info.vocab_size, 151936);
    CHECK_INT(info.hidden_size, 64);
    CHECK_INT(info.intermediate_size, 160);
    CHECK_INT(info.n_layers, 2);
    CHECK_INT(info.n_heads, 4);
    CHECK_INT(info.n_kv_heads, 2);
    CHECK_INT(info.head_dim, 16);
    CHECK_INT(info.max_position_embeddings, 32768);
    CHECK_INT(info.tie_word_embeddings, 1);
    CHECK_INT(info.has_qkv_bias, 1);
    CHECK_NEAR(info.rope_theta, 1e6, 0);
    CHECK_NEAR(info.rms_norm_eps, 1e-6, 1e-12);
    CHECK_INT(info.bos_token_id, 151643);
    CHECK_INT(info.n_eos_token_ids, 1);
    CHECK_INT(info.eos_token_ids[0], 151643);
    CHECK_INT(info.dtype, MC_BF16);
    CHECK_OK(mc_model_eval(m, ids, 4, NULL, &loss));
    CHECK_NEAR(loss, log(151936.0), 0.3); /* logits have std 0.02 x sqrt(64) */
    mc_model_free(m);
}

/* The published presets, without writing gigabytes: the allocation of the weight buffer
 * is made to fail, after config.json is written. Its index is found on the tiny preset
 * (the allocations before it do not depend on the preset), so a failure that were ignored
 * costs 40 MB, not 30 GB. The byte count in the message is the published parameter count
 * times 4 (f32). */
static void test_published_presets(void) {
    static const struct {
        const char *name;
        int hidden, inter, layers, heads, kv, vocab, tied;
        unsigned long long params;
    } k[5] = {
        {"tiny", 64, 160, 2, 4, 2, 151936, 1, 9810496ull},
        {"qwen2.5-coder-0.5b", 896, 4864, 24, 14, 2, 151936, 1, 494032768ull},
        {"qwen2.5-coder-1.5b", 1536, 8960, 28, 12, 2, 151936, 1, 1543714304ull},
        {"qwen2.5-coder-3b", 2048, 11008, 36, 16, 2, 151936, 1, 3085938688ull},
        {"qwen2.5-coder-7b", 3584, 18944, 28, 28, 4, 152064, 0, 7615616512ull},
    };
    const char *tmp = t_tmpdir("init_presets");
    size_t n_data = 0, nth;
    int i;
    for (i = 0; i < 5; i++) {
        char out[4200], want[64];
        mc_config c;
        mc_status s = MC_OK;
        join(out, tmp, k[i].name);
        for (nth = i == 0 ? 1 : n_data; nth <= (i == 0 ? 500 : n_data); nth++) {
            mc_debug_fail_alloc_after(nth);
            s = mc_checkpoint_init(k[i].name, NULL, MC_F32, 0, out);
            mc_debug_fail_alloc_after(0);
            if (s != MC_ERR_OOM || strstr(mc_last_error(), "of weights")) break;
        }
        CHECK_INT(s, MC_ERR_OOM);
        if (s != MC_ERR_OOM) return;
        if (i == 0) n_data = nth;
        snprintf(want, sizeof want, "%llu bytes", k[i].params * 4ull);
        CHECK_MSG(want);
        CHECK_OK(mc_config_load(out, &c));
        CHECK_INT(c.hidden_size, k[i].hidden);
        CHECK_INT(c.intermediate_size, k[i].inter);
        CHECK_INT(c.num_hidden_layers, k[i].layers);
        CHECK_INT(c.num_attention_heads, k[i].heads);
        CHECK_INT(c.num_key_value_heads, k[i].kv);
        CHECK_INT(c.vocab_size, k[i].vocab);
        CHECK_INT(c.tie_word_embeddings, k[i].tied);
        CHECK_INT(c.head_dim, k[i].hidden / k[i].heads);
        CHECK_INT(c.max_position_embeddings, 32768);
        CHECK_INT(c.dtype, MC_F32);
    }
}

/* Every allocation failure is MC_ERR_OOM; the sweep ends with a checkpoint that loads. */
static void test_alloc_failures(void) {
    const char *tmp = t_tmpdir("init_oom");
    const char *cfg = small_config(tmp, "small", NULL);
    char out[4200];
    size_t nth;
    mc_status s = MC_OK;
    join(out, tmp, "out");
    for (nth = 1; nth < 2000; nth++) {
        mc_debug_fail_alloc_after(nth);
        s = mc_checkpoint_init(NULL, cfg, MC_BF16, 0, out);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) break;
        if (s != MC_ERR_OOM) {
            fprintf(stderr, "allocation %zu: %s (%s)\n", nth, mc_status_name(s), mc_last_error());
            CHECK_INT(s, MC_ERR_OOM);
            break;
        }
    }
    CHECK_OK(s);
    {
        mc_model *m = NULL;
        CHECK_OK(mc_model_load(out, NULL, &m));
        mc_model_free(m);
    }
}

int main(void) {
    RUN(test_bad_arguments);
    RUN(test_alloc_failures); /* first: config parsing routes cJSON through mc_malloc */
    RUN(test_from_config);
    RUN(test_other_architectures);
    RUN(test_seed_determinism);
    RUN(test_tiny_preset);
    RUN(test_published_presets);
    return t_summary();
}
