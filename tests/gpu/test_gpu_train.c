/* test_gpu_train.c - LoRA training on the CUDA backend:
 *  - the PEFT fixture (tiny_tied_f32 + tests/fixtures/peft, 5 AdamW steps): per-step losses
 *    within 2e-3 relative of PEFT's (the CPU matches them to 1e-4; the GPU rounds attention
 *    inputs to bf16), the trained adapter within 5e-2 relative L2 of PEFT's;
 *  - a bf16 model (qwen2_bf16_sharded, fresh adapter on all projections, dropout 0.1,
 *    gradient clipping, activation checkpointing on and off): CUDA loss trajectory within
 *    1e-2 relative of the CPU backend's; the same without dropout on batches of 320 token
 *    rows, whose LoRA products (one for the shared input of q, k and v, and of gate and
 *    up) run in TF32 through cuBLASLt. */
#include <cjson/cJSON.h>

#include "io/io.h"
#include "test.h"

typedef struct loss_log {
    double loss[64];
    int n;
} loss_log;

static int record(const mc_train_progress *p, void *user) {
    loss_log *l = user;
    if (!p->is_eval && l->n < 64) l->loss[l->n++] = p->loss;
    return 0;
}

static mc_model *load(const char *dir, const char *device) {
    mc_model *m = NULL;
    mc_model_params p = mc_model_default_params();
    p.device = device;
    CHECK_OK(mc_model_load(dir, &p, &m));
    return m;
}

/* Relative L2 distance between the F32 tensors of two adapter files (same names). */
static double adapter_rel_l2(const char *a_path, const char *b_path, double *max_abs) {
    mc_st_set a, b;
    double num = 0, den = 0;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    *max_abs = 0;
    CHECK_OK(mc_st_open_file(a_path, &a));
    CHECK_OK(mc_st_open_file(b_path, &b));
    for (size_t i = 0; i < a.n; i++) {
        const mc_st_tensor *t = &a.tensors[i], *u = mc_st_find(&b, t->name);
        CHECK(u != NULL && u->nbytes == t->nbytes);
        if (!u || u->nbytes != t->nbytes) continue;
        for (size_t k = 0; k < t->nbytes / 4; k++) {
            double x = ((const float *)t->data)[k], y = ((const float *)u->data)[k];
            num += (x - y) * (x - y);
            den += y * y;
            if (fabs(x - y) > *max_abs) *max_abs = fabs(x - y);
        }
    }
    mc_st_close(&a);
    mc_st_close(&b);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_peft_fixture(void) {
    char out[1024], ours[1100];
    mc_model *m = load(t_src("tests/fixtures/tiny_tied_f32"), "cuda");
    mc_adapter *a = NULL;
    mc_train_params p = mc_train_default_params();
    mc_train_result res;
    loss_log log = {{0}, 0};
    char *text = NULL;
    size_t len = 0;
    cJSON *ref = NULL;
    char data[1024];
    if (!m) return;
    snprintf(data, sizeof data, "%s", t_src("tests/fixtures/peft/train_data"));
    snprintf(out, sizeof out, "%s", t_tmpdir("gpu_train_peft"));
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &a));
    if (!a) {
        mc_model_free(m);
        return;
    }
    p.train_path = data;
    p.adapter_path = out;
    p.batch_size = 2;
    p.iters = 5;
    p.learning_rate = 1e-2;
    p.weight_decay = 0.01;
    p.lr_schedule = "constant";
    p.max_seq_length = 16;
    p.seed = 0;
    p.save_every = 0;
    p.on_progress = record;
    p.user = &log;
    CHECK_OK(mc_train(m, a, &p, &res));
    CHECK_INT(log.n, 5);
    CHECK_OK(mc_read_file(t_src("tests/fixtures/peft/train_ref.json"), &text, &len));
    ref = text ? cJSON_ParseWithLength(text, len) : NULL;
    CHECK(ref != NULL);
    for (int i = 0; ref && i < 5 && i < log.n; i++) {
        double want = cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "losses"), i)->valuedouble;
        printf("  step %d: loss %.7f (PEFT %.7f, rel %.2e)\n", i + 1, log.loss[i], want,
               fabs(log.loss[i] / want - 1));
        CHECK_NEAR(log.loss[i] / want, 1.0, 2e-3);
    }
    snprintf(ours, sizeof ours, "%s/adapter_model.safetensors", out);
    {
        double mx = 0;
        double e = adapter_rel_l2(ours, t_src("tests/fixtures/peft/trained/adapter_model.safetensors"),
                                  &mx);
        printf("  trained adapter vs PEFT: rel L2 %.2e, max |diff| %.2e (tol rel 5e-2)\n", e, mx);
        CHECK(e <= 5e-2);
    }
    cJSON_Delete(ref);
    mc_free(text);
    mc_adapter_free(a);
    mc_model_free(m);
}

/* A data set of 16 sequences of 40 tokens (8 a batch: 320 rows) in dir; its path. */
static const char *long_data(const char *dir) {
    static char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/train.jsonl", dir);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return dir;
    for (int i = 0; i < 16; i++) {
        fputs("{\"input_ids\": [", f);
        for (int j = 0; j < 40; j++) fprintf(f, "%s%d", j ? ", " : "", (i * 131 + j * 37) % 997);
        fputs("]}\n", f);
    }
    fclose(f);
    return dir;
}

/* Trains 6 steps on device dev and records the losses: dropout 0.1 on the PEFT fixture's
 * two sequences, or (big) no dropout on long_data's batches of 320 rows. */
static void train_bf16(const char *dev, bool ckpt, bool big, loss_log *log) {
    char out[1024], data[1024];
    mc_model *m = load(t_src("tests/fixtures/qwen2_bf16_sharded"), dev);
    mc_adapter *a = NULL;
    mc_lora_params lp = mc_lora_default_params();
    mc_train_params p = mc_train_default_params();
    mc_train_result res;
    if (!m) return;
    lp.rank = 8;
    lp.alpha = 16;
    lp.dropout = big ? 0.0f : 0.1f;
    lp.seed = 11;
    CHECK_OK(mc_adapter_create(m, &lp, &a));
    if (!a) {
        mc_model_free(m);
        return;
    }
    snprintf(data, sizeof data, "%s",
             big ? long_data(t_tmpdir("gpu_train_long")) : t_src("tests/fixtures/peft/train_data"));
    snprintf(out, sizeof out, "%s", t_tmpdir(ckpt ? "gpu_train_bf16_ck" : "gpu_train_bf16"));
    p.train_path = data;
    p.adapter_path = out;
    p.batch_size = big ? 8 : 2;
    p.iters = 6;
    p.learning_rate = 5e-3;
    p.lr_schedule = "constant";
    p.max_seq_length = big ? 40 : 16;
    p.max_grad_norm = 1.0;
    p.grad_checkpoint = ckpt ? 1 : 0;
    p.seed = 1;
    p.save_every = 0;
    p.on_progress = record;
    p.user = log;
    CHECK_OK(mc_train(m, a, &p, &res));
    mc_adapter_free(a);
    mc_model_free(m);
}

static void test_bf16_vs_cpu(void) {
    for (int ck = 0; ck < 3; ck++) {
        loss_log lc = {{0}, 0}, lg = {{0}, 0};
        train_bf16("cpu", ck == 1, ck == 2, &lc);
        train_bf16("cuda", ck == 1, ck == 2, &lg);
        CHECK_INT(lg.n, lc.n);
        for (int i = 0; i < lc.n && i < lg.n; i++) {
            printf("  bf16 model%s step %d: CUDA %.6f, CPU %.6f (rel %.2e)\n",
                   ck == 1 ? " (checkpointing)" : ck == 2 ? " (320 rows, no dropout)" : "", i + 1,
                   lg.loss[i], lc.loss[i], fabs(lg.loss[i] / lc.loss[i] - 1));
            CHECK_NEAR(lg.loss[i] / lc.loss[i], 1.0, 1e-2);
        }
    }
}

int main(void) {
    RUN(test_peft_fixture);
    RUN(test_bf16_vs_cpu);
    return t_summary();
}
