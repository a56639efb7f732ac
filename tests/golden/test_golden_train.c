/* test_golden_train.c - LoRA training against PEFT: 5 AdamW steps (weight decay 0.01) from
 * a PEFT adapter on a fixed batch give PEFT's per-step losses (1e-4 relative) and final
 * adapter (1e-4); resuming from a checkpoint continues bit for bit; gradient accumulation
 * equals one large batch. */
#include <cjson/cJSON.h>
#include <stdio.h>

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

static char g_train_data[4096]; /* as large as t_src's buffer */

static mc_train_params base_params(const char *out, loss_log *log) {
    mc_train_params p = mc_train_default_params();
    snprintf(g_train_data, sizeof g_train_data, "%s", t_src("tests/fixtures/peft/train_data"));
    p.train_path = g_train_data;
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
    p.user = log;
    return p;
}

/* Largest |a - b| over the tensors of two adapter files with the same names. */
static double adapter_max_diff(const char *a_path, const char *b_path) {
    mc_st_set a, b;
    double worst = 0;
    size_t i, k;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    CHECK_OK(mc_st_open_file(a_path, &a));
    CHECK_OK(mc_st_open_file(b_path, &b));
    CHECK_INT(a.n, b.n);
    for (i = 0; i < a.n; i++) {
        const mc_st_tensor *t = &a.tensors[i], *u = mc_st_find(&b, t->name);
        CHECK(u != NULL && u->nbytes == t->nbytes && t->st_dtype == MC_ST_F32 &&
              u->st_dtype == MC_ST_F32);
        if (!u || u->nbytes != t->nbytes) continue;
        for (k = 0; k < t->nbytes / 4; k++) {
            double d = fabs((double)((const float *)t->data)[k] - (double)((const float *)u->data)[k]);
            if (d > worst || d != d) worst = d;
        }
    }
    mc_st_close(&a);
    mc_st_close(&b);
    return worst;
}

static void test_peft_training(void) {
    mc_model *m = NULL;
    mc_adapter *a = NULL;
    mc_train_result res;
    loss_log log = {{0}, 0};
    const char *out = t_tmpdir("train_peft");
    char outdir[1024], ours[1100], log_path[1100];
    cJSON *ref = NULL;
    char *text = NULL;
    size_t len = 0;
    int i;
    mc_train_params p;
    snprintf(outdir, sizeof outdir, "%s", out);
    snprintf(log_path, sizeof log_path, "%s/L.jsonl", outdir);
    p = base_params(outdir, &log);
    p.log_jsonl = log_path;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    if (!m) return;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &a));
    if (!a) {
        mc_model_free(m);
        return;
    }
    CHECK_OK(mc_train(m, a, &p, &res));
    CHECK_INT(res.steps, 5);
    CHECK_INT(log.n, 5);
    CHECK_OK(mc_read_file(t_src("tests/fixtures/peft/train_ref.json"), &text, &len));
    ref = text ? cJSON_ParseWithLength(text, len) : NULL;
    CHECK(ref != NULL);
    for (i = 0; ref && i < 5 && i < log.n; i++) {
        double want = cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "losses"), i)->valuedouble;
        printf("step %d: loss %.7f (PEFT %.7f)\n", i + 1, log.loss[i], want);
        CHECK_NEAR(log.loss[i] / want, 1.0, 1e-4);
    }
    snprintf(ours, sizeof ours, "%s/adapter_model.safetensors", outdir);
    {
        double d = adapter_max_diff(ours, t_src("tests/fixtures/peft/trained/adapter_model.safetensors"));
        printf("final adapter: max |ours - PEFT| = %.3g\n", d);
        CHECK(d <= 1e-4);
    }
    /* the log has one object per step with "step" and "loss" */
    {
        char *lt = NULL;
        size_t ll = 0;
        int lines = 0;
        const char *q;
        CHECK_OK(mc_read_file(log_path, &lt, &ll));
        for (q = lt; q && (q = strstr(q, "\"loss\":")) != NULL; q++) lines++;
        CHECK_INT(lines, 5);
        CHECK(lt && strstr(lt, "{\"step\":1,") == lt);
        mc_free(lt);
    }
    cJSON_Delete(ref);
    mc_free(text);
    mc_adapter_free(a);
    mc_model_free(m);
}

/* 3 steps + resume to 5 == 5 steps, bit for bit. */
static void test_resume_bit_exact(void) {
    mc_model *m = NULL;
    mc_adapter *a = NULL, *b = NULL;
    mc_train_result res;
    loss_log l1 = {{0}, 0}, l2 = {{0}, 0}, l3 = {{0}, 0};
    char full[1024], part[1024], fa[1100], pa[1100];
    mc_train_params p;
    int i;
    snprintf(full, sizeof full, "%s", t_tmpdir("train_full"));
    snprintf(part, sizeof part, "%s", t_tmpdir("train_part"));
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    if (!m) return;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &a));
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &b));
    if (!a || !b) goto done;
    p = base_params(full, &l1);
    p.save_every = 2;
    CHECK_OK(mc_train(m, a, &p, &res));
    p = base_params(part, &l2);
    p.save_every = 2;
    p.iters = 3; /* "interrupted" after step 3: the last checkpoint is step 2 */
    CHECK_OK(mc_train(m, b, &p, &res));
    mc_adapter_free(b);
    b = NULL;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &b));
    p = base_params(part, &l3);
    p.save_every = 2;
    p.resume_dir = part;
    /* the checkpoint of step 3 (the end of that run) is what resume continues from */
    CHECK_OK(mc_train(m, b, &p, &res));
    CHECK_INT(res.steps, 5);
    CHECK_INT(l3.n, 2);
    for (i = 0; i < 3; i++) CHECK(l1.loss[i] == l2.loss[i]);
    for (i = 0; i < 2 && i < l3.n; i++) CHECK(l1.loss[3 + i] == l3.loss[i]);
    snprintf(fa, sizeof fa, "%s/adapter_model.safetensors", full);
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", part);
    CHECK(adapter_max_diff(fa, pa) == 0.0);
    /* a crash after the last step's state file but before its adapter files: resuming with
     * nothing left to train still writes the adapter */
    CHECK(remove(pa) == 0);
    mc_adapter_free(b);
    b = NULL;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &b));
    if (!b) goto done;
    l3.n = 0;
    p = base_params(part, &l3);
    p.save_every = 1; /* 5 % 1 == 0: the loop's own last save would have been at step 5 */
    p.resume_dir = part;
    CHECK_OK(mc_train(m, b, &p, &res));
    CHECK_INT(l3.n, 0);
    CHECK(adapter_max_diff(fa, pa) == 0.0);
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_model_free(m);
}

/* batch 2 x 1 micro-batch == batch 1 x 2 accumulated micro-batches (no shuffle). */
static void test_accumulation(void) {
    mc_model *m = NULL;
    mc_adapter *a = NULL, *b = NULL;
    mc_train_result res;
    loss_log l1 = {{0}, 0}, l2 = {{0}, 0};
    char d1[1024], d2[1024], f1[1100], f2[1100];
    mc_train_params p;
    int i;
    snprintf(d1, sizeof d1, "%s", t_tmpdir("train_acc1"));
    snprintf(d2, sizeof d2, "%s", t_tmpdir("train_acc2"));
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m));
    if (!m) return;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &a));
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/adapter"), &b));
    if (!a || !b) goto done;
    p = base_params(d1, &l1);
    p.iters = 3;
    p.shuffle = 0;
    CHECK_OK(mc_train(m, a, &p, &res));
    p = base_params(d2, &l2);
    p.iters = 3;
    p.shuffle = 0;
    p.batch_size = 1;
    p.grad_accumulation = 2;
    CHECK_OK(mc_train(m, b, &p, &res));
    for (i = 0; i < 3; i++) CHECK_NEAR(l1.loss[i], l2.loss[i], 1e-6);
    snprintf(f1, sizeof f1, "%s/adapter_model.safetensors", d1);
    snprintf(f2, sizeof f2, "%s/adapter_model.safetensors", d2);
    CHECK(adapter_max_diff(f1, f2) <= 1e-6);
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_model_free(m);
}

int main(void) {
    RUN(test_peft_training);
    RUN(test_resume_bit_exact);
    RUN(test_accumulation);
    return t_summary();
}
