/* test_golden_models.c - logits and loss of every fixture model against Hugging Face
 * transformers (references made by tests/scripts/make_fixtures.py), with the fast and the
 * reference CPU kernels: relative L2 error <= 2e-5, loss within 1e-5. */
#include <cjson/cJSON.h>

#include "io/io.h"
#include "test.h"

static const char *const k_models[] = {"tiny_tied_f32", "qwen2_bf16_sharded", "llama_f16",
                                       "qwen3_bf16"};

/* Reads ref/ids.json of a fixture: sequences and HF losses. Returns the parsed root. */
static cJSON *read_ids(const char *dir) {
    char path[1100];
    char *text = NULL;
    size_t len = 0;
    cJSON *root;
    snprintf(path, sizeof path, "%s/ref/ids.json", dir);
    if (mc_read_file(path, &text, &len) != MC_OK) return NULL;
    root = cJSON_ParseWithLength(text, len);
    mc_free(text);
    return root;
}

static void check_model(const char *name, int reference) {
    char dir[1024];
    mc_model *m = NULL;
    mc_model_params p = mc_model_default_params();
    mc_model_info info;
    cJSON *root, *seqs, *losses;
    int si;
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MC_SOURCE_DIR, name);
    p.reference = reference;
    p.n_threads = 2;
    CHECK_OK(mc_model_load(dir, &p, &m));
    if (!m) return;
    CHECK_OK(mc_model_get_info(m, &info));
    root = read_ids(dir);
    CHECK(root != NULL);
    if (!root) {
        mc_model_free(m);
        return;
    }
    seqs = cJSON_GetObjectItem(root, "sequences");
    losses = cJSON_GetObjectItem(root, "losses");
    for (si = 0; si < cJSON_GetArraySize(seqs); si++) {
        cJSON *seq = cJSON_GetArrayItem(seqs, si);
        size_t n = (size_t)cJSON_GetArraySize(seq), i, shape[MC_MAX_DIMS];
        int32_t *ids = mc_malloc(n * sizeof *ids);
        float *logits = mc_malloc(n * (size_t)info.vocab_size * sizeof *logits);
        void *ref = NULL;
        int ndim = 0;
        bool is_int = false;
        double loss = -1;
        char path[1100];
        for (i = 0; i < n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(seq, (int)i)->valueint;
        snprintf(path, sizeof path, "%s/ref/logits_%d.npy", dir, si);
        CHECK_OK(mc_npy_read(path, &ref, shape, &ndim, &is_int));
        CHECK_OK(mc_model_eval(m, ids, n, logits, &loss));
        if (ref && ndim == 2 && shape[0] == n && shape[1] == (size_t)info.vocab_size) {
            double err = CHECK_REL_L2(logits, (const float *)ref, n * shape[1], 2e-5);
            printf("%s%s seq %d (T=%zu): rel L2 %.3g, loss %.7f (HF %.7f)\n", name,
                   reference ? " [ref]" : "", si, n, err, loss,
                   cJSON_GetArrayItem(losses, si)->valuedouble);
        } else {
            CHECK(!"reference logits have an unexpected shape");
        }
        CHECK_NEAR(loss, cJSON_GetArrayItem(losses, si)->valuedouble, 1e-5);
        mc_free(ref);
        mc_free(logits);
        mc_free(ids);
    }
    cJSON_Delete(root);
    mc_model_free(m);
}

static void test_fast(void) {
    size_t i;
    for (i = 0; i < sizeof k_models / sizeof *k_models; i++) check_model(k_models[i], 0);
}

static void test_reference(void) {
    size_t i;
    for (i = 0; i < sizeof k_models / sizeof *k_models; i++) check_model(k_models[i], 1);
}

/* The loss alone (no logits buffer) equals the loss with logits. */
static void test_loss_without_logits(void) {
    mc_model *m = NULL;
    int32_t ids[40];
    double a = 0, b = 0;
    float *logits;
    int i;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    if (!m) return;
    for (i = 0; i < 40; i++) ids[i] = (i * 37 + 5) % 512;
    logits = mc_malloc(40 * 512 * sizeof *logits);
    CHECK_OK(mc_model_eval(m, ids, 40, logits, &a));
    CHECK_OK(mc_model_eval(m, ids, 40, NULL, &b));
    CHECK_NEAR(a, b, 1e-12);
    mc_free(logits);
    mc_model_free(m);
}

int main(void) {
    RUN(test_fast);
    RUN(test_reference);
    RUN(test_loss_without_logits);
    return t_summary();
}
