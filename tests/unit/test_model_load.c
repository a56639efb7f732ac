/* test_model_load.c - model-level load checks: every tensor the config implies must be
 * present with the exact shape and a float dtype; bad folders and configs are reported
 * with their own status and a message naming the file, tensor or key. */
#include <stdio.h>

#include "io/io.h"
#include "test.h"

/* Copies the tiny fixture to a scratch folder and returns its path. */
static const char *copy_tiny(const char *name) {
    const char *dir = t_tmpdir(name);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cp '%s/tests/fixtures/tiny_tied_f32/'*.json '%s/tests/fixtures/"
             "tiny_tied_f32/model.safetensors' '%s/'", MC_SOURCE_DIR, MC_SOURCE_DIR, dir);
    CHECK(system(cmd) == 0); /* NOLINT(cert-env33-c): test code copying fixture files */
    return dir;
}

/* Rewrites dir/model.safetensors through `edit`, which may drop or change one tensor. */
typedef void (*edit_fn)(mc_st_out *t, bool *keep);
static void rewrite_weights(const char *dir, edit_fn edit) {
    char path[2048];
    mc_st_set st;
    mc_st_out *outs;
    size_t i, n = 0;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_OK(mc_st_open_file(path, &st));
    outs = mc_calloc(st.n, sizeof *outs);
    for (i = 0; i < st.n; i++) {
        bool keep = true;
        mc_st_out *o = &outs[n];
        o->name = st.tensors[i].name;
        o->st_dtype = st.tensors[i].st_dtype;
        o->ndim = st.tensors[i].ndim;
        memcpy(o->shape, st.tensors[i].shape, sizeof o->shape);
        o->data = st.tensors[i].data;
        edit(o, &keep);
        if (keep) n++;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.new", dir);
    CHECK_OK(mc_st_write(path, outs, n, NULL, 0));
    mc_free(outs);
    mc_st_close(&st);
    {
        char from[2048], to[2048];
        snprintf(from, sizeof from, "%s/model.safetensors.new", dir);
        snprintf(to, sizeof to, "%s/model.safetensors", dir);
        CHECK(rename(from, to) == 0);
    }
}

static void drop_k_proj(mc_st_out *t, bool *keep) {
    if (!strcmp(t->name, "model.layers.1.self_attn.k_proj.weight")) *keep = false;
}

/* Reinterprets o_proj [64, 64] as [32, 128] (same bytes, wrong shape). */
static void reshape_o_proj(mc_st_out *t, bool *keep) {
    (void)keep;
    if (!strcmp(t->name, "model.layers.0.self_attn.o_proj.weight")) {
        t->shape[0] = 32;
        t->shape[1] = 128;
    }
}

/* Reinterprets the final norm's f32 bytes as I32. */
static void int_norm(mc_st_out *t, bool *keep) {
    (void)keep;
    if (!strcmp(t->name, "model.norm.weight")) t->st_dtype = MC_ST_I32;
}

static void keep_all(mc_st_out *t, bool *keep) {
    (void)t;
    (void)keep;
}

static void test_missing_tensor(void) {
    const char *dir = copy_tiny("missing_tensor");
    mc_model *m = NULL;
    rewrite_weights(dir, drop_k_proj);
    CHECK_STATUS(mc_model_load(dir, NULL, &m), MC_ERR_MISSING_TENSOR);
    CHECK_MSG("model.layers.1.self_attn.k_proj.weight");
    CHECK(m == NULL);
}

static void test_shape_mismatch(void) {
    const char *dir = copy_tiny("shape_mismatch");
    mc_model *m = NULL;
    rewrite_weights(dir, reshape_o_proj);
    CHECK_STATUS(mc_model_load(dir, NULL, &m), MC_ERR_SHAPE);
    CHECK_MSG("model.layers.0.self_attn.o_proj.weight");
    CHECK_MSG("[32, 128]");
    CHECK_MSG("model.safetensors");
}

static void test_non_float_dtype(void) {
    const char *dir = copy_tiny("int_dtype");
    mc_model *m = NULL;
    rewrite_weights(dir, int_norm);
    CHECK_STATUS(mc_model_load(dir, NULL, &m), MC_ERR_DTYPE);
    CHECK_MSG("model.norm.weight");
}

static void test_rewritten_loads(void) {
    const char *dir = copy_tiny("rewritten");
    mc_model *m = NULL;
    rewrite_weights(dir, keep_all);
    CHECK_OK(mc_model_load(dir, NULL, &m));
    mc_model_free(m);
}

static void test_not_a_folder(void) {
    mc_model *m = NULL;
    CHECK_STATUS(mc_model_load(t_src("tests/fixtures/tiny_tied_f32/config.json"), NULL, &m),
                 MC_ERR_NOT_DIR);
    CHECK_MSG("config.json");
    CHECK_STATUS(mc_model_load(t_src("tests/fixtures/no_such_model"), NULL, &m),
                 MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("no_such_model");
}

static void test_bad_params(void) {
    mc_model *m = NULL;
    mc_model_params p = mc_model_default_params();
    mc_model_info info;
    CHECK_STATUS(mc_model_load(NULL, NULL, &m), MC_ERR_INVALID_ARG);
    p.n_threads = -1;
    CHECK_STATUS(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), &p, &m), MC_ERR_INVALID_ARG);
    p.n_threads = 0;
    p.device = "tpu";
    CHECK_STATUS(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), &p, &m), MC_ERR_UNSUPPORTED);
    CHECK_MSG("tpu");
    CHECK_STATUS(mc_model_get_info(NULL, &info), MC_ERR_INVALID_ARG);
    mc_model_free(NULL);
}

static void test_eval_errors(void) {
    mc_model *m = NULL;
    int32_t ids[3] = {1, 600, 2};
    double loss;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    if (!m) return;
    CHECK_STATUS(mc_model_eval(m, ids, 3, NULL, &loss), MC_ERR_TOKEN_ID);
    CHECK_MSG("600");
    CHECK_STATUS(mc_model_eval(m, ids, 0, NULL, &loss), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_model_eval(NULL, ids, 1, NULL, &loss), MC_ERR_INVALID_ARG);
    ids[1] = 5;
    CHECK_OK(mc_model_eval(m, ids, 1, NULL, &loss));
    CHECK_NEAR(loss, 0.0, 0.0);
    mc_model_free(m);
}

static void test_info(void) {
    mc_model *m = NULL;
    mc_model_info info;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/qwen2_bf16_sharded"), NULL, &m));
    if (!m) return;
    CHECK_OK(mc_model_get_info(m, &info));
    CHECK_INT(info.n_layers, 3);
    CHECK_INT(info.n_heads, 6);
    CHECK_INT(info.n_kv_heads, 2);
    CHECK_INT(info.head_dim, 16);
    CHECK_INT(info.vocab_size, 1000);
    CHECK_INT(info.tie_word_embeddings, 0);
    CHECK_INT(info.dtype, MC_BF16);
    CHECK_NEAR(info.rope_theta, 1e6, 0);
    CHECK_NEAR(info.rms_norm_eps, 1e-5, 1e-12);
    CHECK_INT(info.n_eos_token_ids, 2);
    CHECK_INT(info.eos_token_ids[0], 2);
    CHECK_INT(info.eos_token_ids[1], 3);
    /* 2*V*D + L*(D*q + 2*D*kv + q*D + q + 2*kv + 3*D*F + 2*D) + D */
    CHECK_INT(info.n_params, 2ull * 1000 * 96 + 3ull * (96 * 96 * 2 + 2 * 96 * 32 + 96 + 64 +
                                                        3 * 96 * 160 + 2 * 96) + 96);
    CHECK_INT(info.weight_bytes, info.n_params * 2);
    CHECK(mc_model_context_bytes(m, 128, 1) > 0);
    CHECK_INT(mc_model_context_bytes(m, 0, 1), 0);
    mc_model_free(m);
}

/* Every allocation failure during load and eval surfaces as MC_ERR_OOM, never a crash. */
static void test_alloc_failures(void) {
    size_t nth;
    int32_t ids[5] = {1, 2, 3, 4, 5};
    for (nth = 1; nth < 4000; nth++) {
        mc_model *m = NULL;
        mc_status s;
        double loss;
        mc_debug_fail_alloc_after(nth);
        s = mc_model_load(t_src("tests/fixtures/qwen2_bf16_sharded"), NULL, &m);
        if (s == MC_OK) s = mc_model_eval(m, ids, 5, NULL, &loss);
        mc_debug_fail_alloc_after(0);
        mc_model_free(m);
        if (s == MC_OK) break;
        if (s != MC_ERR_OOM) {
            fprintf(stderr, "allocation %zu: %s (%s)\n", nth, mc_status_name(s), mc_last_error());
            CHECK(s == MC_ERR_OOM);
            break;
        }
    }
    CHECK(nth < 4000);
}

int main(void) {
    RUN(test_missing_tensor);
    RUN(test_shape_mismatch);
    RUN(test_non_float_dtype);
    RUN(test_rewritten_loads);
    RUN(test_not_a_folder);
    RUN(test_bad_params);
    RUN(test_eval_errors);
    RUN(test_info);
    RUN(test_alloc_failures);
    return t_summary();
}
