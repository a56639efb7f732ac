/* test_trainer.c - mc_train's behaviours and error paths on the tiny f32 fixture with small
 * generated data: parameter checks, missing/empty/invalid data, batches without targets,
 * validation with early stopping, epochs, SGD, schedules, gradient clipping, activation
 * checkpointing, LoRA dropout with bit-exact resume, resume mismatches, a NaN loss, a disk
 * that fills while saving, the jsonl log, and an allocation-failure sweep. */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "lora/lora.h"
#include "test.h"

static mc_model *g_model;

/* ---- helpers ---- */

/* path = dir/name in one of a few rotating static buffers. */
static const char *join(const char *dir, const char *name) {
    static char buf[8][1200];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* A fresh scratch folder, copied out of t_tmpdir's static buffer. */
static const char *scratch(const char *name) {
    static char buf[16][1100];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s", t_tmpdir(name));
    return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(data, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* n lines {"input_ids": [...]} of len ids in [0, 512) from an LCG seeded by seed. */
static void write_ids(const char *path, int n, int len, unsigned seed) {
    FILE *f = fopen(path, "wb");
    unsigned x = seed * 2654435761u + 12345u;
    int i, t;
    CHECK(f != NULL);
    if (!f) return;
    for (i = 0; i < n; i++) {
        fputs("{\"input_ids\": [", f);
        for (t = 0; t < len; t++) {
            x = x * 1664525u + 1013904223u;
            fprintf(f, "%s%u", t ? ", " : "", (x >> 8) % 512u);
        }
        fputs("]}\n", f);
    }
    CHECK(fclose(f) == 0);
}

/* A data folder: train.jsonl (8 examples), optionally valid.jsonl (4) and test.jsonl (2). */
static const char *make_data(const char *name, bool valid, bool test) {
    const char *dir = scratch(name);
    write_ids(join(dir, "train.jsonl"), 8, 12, 1);
    if (valid) write_ids(join(dir, "valid.jsonl"), 4, 12, 2);
    if (test) write_ids(join(dir, "test.jsonl"), 2, 10, 3);
    return dir;
}

/* Losses, learning rates, gradient norms and validation losses seen by the callback. */
typedef struct rec {
    double loss[64], lr[64], gn[64], val[64];
    int step[64], total;
    int n, n_val;
    int stop_at; /* > 0: ask to stop after this step */
} rec;

static int record(const mc_train_progress *p, void *user) {
    rec *r = user;
    if (p->is_eval) {
        if (r->n_val < 64) r->val[r->n_val++] = p->val_loss;
        return 0;
    }
    if (r->n < 64) {
        r->loss[r->n] = p->loss;
        r->lr[r->n] = p->lr;
        r->gn[r->n] = p->grad_norm;
        r->step[r->n] = p->step;
        r->n++;
    }
    r->total = p->total_steps;
    return r->stop_at > 0 && p->step >= r->stop_at;
}

static mc_train_params params(const char *data, const char *out, rec *r) {
    mc_train_params p = mc_train_default_params();
    p.train_path = data;
    p.adapter_path = out;
    p.batch_size = 2;
    p.iters = 3;
    p.max_seq_length = 16;
    p.learning_rate = 1e-2;
    p.save_every = 0;
    p.steps_per_eval = 0;
    if (r) {
        memset(r, 0, sizeof *r);
        p.on_progress = record;
        p.user = r;
    }
    return p;
}

static mc_adapter *new_adapter(int rank, float dropout) {
    mc_lora_params lp = mc_lora_default_params();
    mc_adapter *a = NULL;
    lp.rank = rank;
    lp.alpha = 8;
    lp.dropout = dropout;
    lp.seed = 7;
    CHECK_OK(mc_adapter_create(g_model, &lp, &a));
    return a;
}

/* Adapter parameters copied to the host (malloc'ed, a->n_params floats). */
static float *params_host(const mc_adapter *a) {
    float *h = malloc(a->n_params * sizeof *h);
    CHECK(h != NULL);
    if (h) CHECK_OK(g_model->be->to_host(g_model->be, h, a->params, a->n_params * sizeof *h));
    return h;
}

/* 1 when two files hold the same bytes. */
static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same;
    if (mc_read_file(a, &x, &nx) != MC_OK || mc_read_file(b, &y, &ny) != MC_OK) {
        mc_free(x);
        fprintf(stderr, "  cannot read %s or %s\n", a, b);
        return 0;
    }
    same = nx == ny && memcmp(x, y, nx) == 0;
    mc_free(x);
    mc_free(y);
    return same;
}

/* Step recorded in dir's trainer_state.safetensors, or -1. */
static long long checkpoint_step(const char *dir) {
    mc_st_set st;
    const mc_st_tensor *t;
    long long step = -1;
    memset(&st, 0, sizeof st);
    if (mc_st_open_file(join(dir, "trainer_state.safetensors"), &st) != MC_OK) return -1;
    t = mc_st_find(&st, "state");
    if (t && t->st_dtype == MC_ST_I64 && t->nbytes >= 8) {
        int64_t v;
        memcpy(&v, t->data, sizeof v);
        step = v;
    }
    mc_st_close(&st);
    return step;
}

static bool all_finite(const double *v, int n) {
    int i;
    for (i = 0; i < n; i++)
        if (!isfinite(v[i])) return false;
    return true;
}

/* ---- parameters ---- */

static void expect_invalid(const mc_train_params *p, const char *what) {
    mc_adapter *a = new_adapter(2, 0);
    mc_train_result res;
    mc_status s;
    if (!a) return;
    s = mc_train(g_model, a, p, &res);
    if (s != MC_ERR_INVALID_ARG) {
        fprintf(stderr, "  %s: mc_train returned %s (%s), expected MC_ERR_INVALID_ARG\n", what,
                mc_status_name(s), mc_last_error());
        t_checks_failed++;
    }
    mc_adapter_free(a);
}

static void test_invalid_params(void) {
    const char *data = make_data("tr_invalid_data", false, false);
    char out[1100];
    mc_train_params p, b;
    mc_train_result res;
    mc_adapter *a = new_adapter(2, 0), *other = NULL;
    mc_model *m2 = NULL;
    struct stat st;
    snprintf(out, sizeof out, "%s/out", scratch("tr_invalid"));
    b = params(data, out, NULL);
    if (!a) return;
    CHECK_STATUS(mc_train(NULL, a, &b, &res), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_train(g_model, NULL, &b, &res), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_train(g_model, a, NULL, &res), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_train(g_model, a, &b, NULL), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), NULL, &m2));
    if (m2) {
        CHECK_OK(mc_adapter_create(m2, NULL, &other));
        CHECK_STATUS(mc_train(g_model, other, &b, &res), MC_ERR_INVALID_ARG);
        CHECK_MSG("another model");
        mc_adapter_free(other);
        mc_model_free(m2);
    }
    mc_adapter_free(a);
#define BAD(field, value)                                                                   \
    do {                                                                                    \
        p = b;                                                                              \
        p.field = value;                                                                    \
        expect_invalid(&p, #field " = " #value);                                            \
    } while (0)
    BAD(train_path, NULL);
    BAD(adapter_path, NULL);
    BAD(batch_size, 0);
    BAD(batch_size, -3);
    BAD(iters, -1);
    BAD(epochs, -1);
    p = b;
    p.iters = 0;
    p.epochs = 0;
    expect_invalid(&p, "iters = epochs = 0");
    BAD(grad_accumulation, 0);
    BAD(max_seq_length, 1);
    BAD(max_seq_length, 0);
    BAD(learning_rate, -1e-3);
    BAD(learning_rate, NAN);
    BAD(learning_rate, INFINITY);
    BAD(weight_decay, -0.1);
    BAD(weight_decay, NAN);
    BAD(beta1, 1.0);
    BAD(beta1, -0.1);
    BAD(beta2, 1.0);
    BAD(beta2, NAN);
    BAD(eps, 0.0);
    BAD(eps, -1e-8);
    BAD(momentum, 1.0);
    BAD(momentum, -0.5);
    BAD(max_grad_norm, -1.0);
    BAD(max_grad_norm, NAN);
    BAD(min_lr, -1e-5);
    BAD(warmup_steps, -1);
    BAD(steps_per_report, -1);
    BAD(steps_per_eval, -1);
    BAD(val_batches, -2);
    BAD(early_stop_patience, -1);
    BAD(save_every, -1);
    BAD(optimizer, "adam");
    BAD(lr_schedule, "exponential");
#undef BAD
    /* nothing was created for a rejected run */
    CHECK(stat(out, &st) != 0);
}

/* ---- data problems ---- */

static void test_missing_data(void) {
    const char *dir = scratch("tr_missing");
    const char *empty_dir = scratch("tr_missing_folder");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    if (!a) return;
    p = params(join(dir, "nope.jsonl"), join(dir, "out"), NULL);
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("nope.jsonl");
    p.train_path = empty_dir; /* a folder without train.jsonl */
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("train.jsonl");
    /* a validation file named explicitly must exist */
    write_ids(join(dir, "train.jsonl"), 4, 8, 5);
    p.train_path = join(dir, "train.jsonl");
    p.valid_path = join(dir, "valid_missing.jsonl");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("valid_missing.jsonl");
    p.valid_path = NULL;
    p.test_path = join(dir, "test_missing.jsonl");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_FILE_NOT_FOUND);
    /* the adapter path must be a folder (or creatable as one, parents included) */
    p.test_path = NULL;
    p.adapter_path = join(dir, "train.jsonl");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_NOT_DIR);
    p.adapter_path = join(dir, "runs/one/out");
    p.iters = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK(mc_path_exists(join(dir, "runs/one/out/adapter_model.safetensors")));
    mc_adapter_free(a);
}

static void test_empty_data(void) {
    const char *dir = scratch("tr_empty");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    if (!a) return;
    p = params(join(dir, "train.jsonl"), join(dir, "out"), NULL);
    write_text(join(dir, "train.jsonl"), "");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    CHECK_MSG("no training examples");
    write_text(join(dir, "train.jsonl"), "\n\n   \n");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    /* examples of one token have nothing to predict */
    write_text(join(dir, "train.jsonl"), "{\"input_ids\": [5]}\n{\"input_ids\": [7]}\n");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    CHECK_MSG("targets");
    /* all lines invalid and skipped: empty as well */
    write_text(join(dir, "train.jsonl"), "x\ny\n");
    p.skip_invalid = 1;
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    mc_adapter_free(a);
}

static void test_invalid_line(void) {
    const char *dir = scratch("tr_badline");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    if (!a) return;
    write_text(join(dir, "train.jsonl"),
               "{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [5, 6, 7]}\n{\"input_ids\": [1, 2,\n"
               "{\"input_ids\": [9, 10, 11]}\n{\"input_ids\": [600, 1]}\n");
    p = params(dir, join(dir, "out"), &r);
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    CHECK_MSG("train.jsonl:3");
    p.skip_invalid = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.n_skipped, 2); /* the broken line and the id 600 >= 512 */
    CHECK_INT(res.steps, 3);
    /* an invalid validation line is reported with its own file name */
    write_text(join(dir, "valid.jsonl"), "{\"input_ids\": [1, 2]}\n{\"text\": 3}\n");
    p.skip_invalid = 0;
    write_text(join(dir, "train.jsonl"), "{\"input_ids\": [1, 2, 3, 4]}\n");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    CHECK_MSG("valid.jsonl:2");
    mc_adapter_free(a);
}

/* Steps whose batch has no target are skipped with a finite (zero) loss, never NaN. */
static void test_batches_without_targets(void) {
    const char *dir = scratch("tr_notargets");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    char *log = NULL;
    size_t len = 0;
    if (!a) return;
    write_text(join(dir, "train.jsonl"), "{\"input_ids\": [1]}\n{\"input_ids\": [1, 2, 3, 4]}\n"
                                         "{\"input_ids\": [2]}\n{\"input_ids\": [5, 6, 7]}\n");
    p = params(dir, join(dir, "out"), &r);
    p.batch_size = 1;
    p.shuffle = 0;
    p.iters = 4;
    p.log_jsonl = join(dir, "log.jsonl");
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 4);
    CHECK_INT(r.n, 4);
    CHECK(all_finite(r.loss, r.n));
    CHECK(all_finite(r.gn, r.n));
    CHECK(r.loss[0] == 0.0 && r.loss[2] == 0.0);
    CHECK(r.loss[1] > 0 && r.loss[3] > 0);
    CHECK(isfinite(res.final_loss));
    CHECK_OK(mc_read_file(p.log_jsonl, &log, &len));
    CHECK(log && !strstr(log, "nan") && !strstr(log, "inf"));
    mc_free(log);
    mc_adapter_free(a);
}

/* ---- validation, early stopping, epochs ---- */

static void test_validation_early_stop(void) {
    const char *data = make_data("tr_val_data", true, true);
    const char *out = scratch("tr_val");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    int i;
    if (!a) return;
    /* learning rate 0: the validation loss never improves, so patience 2 stops at step 2 */
    p = params(data, out, &r);
    p.learning_rate = 0;
    p.iters = 10;
    p.steps_per_eval = 1;
    p.early_stop_patience = 2;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 2);
    CHECK_INT(res.stopped_early, 1);
    CHECK_INT(r.n_val, 3); /* the baseline before training, then after steps 1 and 2 */
    for (i = 1; i < r.n_val; i++) CHECK(r.val[i] == r.val[0]);
    CHECK(isfinite(res.val_loss) && res.val_loss == r.val[0]);
    CHECK(isfinite(res.test_loss));
    CHECK_INT(checkpoint_step(out), 2); /* a stopped run saves where it stopped */
    mc_adapter_free(a);
    /* training on the validation data itself: the loss falls and nothing stops early */
    a = new_adapter(2, 0);
    if (!a) return;
    p = params(data, scratch("tr_val2"), &r);
    p.valid_path = join(data, "train.jsonl");
    p.iters = 4;
    p.steps_per_eval = 2;
    p.val_batches = -1;
    p.early_stop_patience = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 4);
    CHECK_INT(res.stopped_early, 0);
    CHECK_INT(r.n_val, 3); /* baseline, step 2, the end */
    CHECK(r.n_val == 3 && r.val[1] < r.val[0] && r.val[2] < r.val[1]);
    CHECK(res.val_loss == r.val[r.n_val - 1]);
    mc_adapter_free(a);
    /* no validation or test file: NaN results, no evaluations */
    a = new_adapter(2, 0);
    if (!a) return;
    p = params(make_data("tr_val_none", false, false), scratch("tr_val3"), &r);
    p.steps_per_eval = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK(isnan(res.val_loss) && isnan(res.test_loss));
    CHECK_INT(r.n_val, 0);
    mc_adapter_free(a);
}

static void test_epochs(void) {
    const char *data = make_data("tr_epochs_data", false, false);
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    if (!a) return;
    p = params(data, scratch("tr_epochs"), &r);
    p.iters = 0;
    p.epochs = 2; /* 8 examples in batches of 2: 4 steps an epoch */
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 8);
    CHECK_INT(r.total, 8);
    CHECK_INT(res.tokens, 8 * 2 * 12);
    p = params(data, scratch("tr_epochs2"), &r);
    p.iters = 0;
    p.epochs = 3;
    p.batch_size = 3;
    p.grad_accumulation = 2; /* 3 micro-batches an epoch -> 2 steps */
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 6);
    p = params(data, scratch("tr_epochs3"), &r);
    p.iters = 0;
    p.epochs = 1;
    p.pack = 1; /* 2 x 16 tokens hold 2 examples of 12 */
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 4);
    CHECK(all_finite(r.loss, r.n));
    mc_adapter_free(a);
}

/* ---- optimizer and schedules ---- */

static void test_sgd(void) {
    const char *data = make_data("tr_sgd_data", false, false);
    mc_adapter *a = new_adapter(2, 0), *b = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r1, r2;
    if (!a || !b) goto done;
    p = params(data, scratch("tr_sgd"), &r1);
    p.optimizer = "sgd";
    p.momentum = 0.9;
    p.learning_rate = 0.1;
    p.iters = 6;
    p.shuffle = 0;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(r1.n, 6);
    p = params(data, scratch("tr_sgd_adamw"), &r2);
    p.iters = 2;
    p.shuffle = 0;
    CHECK_OK(mc_train(g_model, b, &p, &res));
    /* the first loss comes before any update: the same for both optimizers */
    CHECK(r1.loss[0] == r2.loss[0]);
    CHECK(r1.loss[1] != r2.loss[1]);
    /* the data repeats every 4 steps: step 5 sees step 1's batch with trained weights */
    CHECK(r1.loss[4] < r1.loss[0]);
    CHECK(all_finite(r1.loss, r1.n));
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
}

/* Hugging Face's schedules with warmup, from c = s - 1 steps taken before step s. */
static double want_lr(const char *kind, double lr, double min_lr, int warmup, int total, int s) {
    int c = s - 1;
    double prog;
    if (c < warmup) return lr * c / warmup;
    prog = (double)(c - warmup) / (total - warmup);
    if (!strcmp(kind, "constant")) return lr;
    if (!strcmp(kind, "linear")) return min_lr + (lr - min_lr) * (1 - prog);
    return min_lr + (lr - min_lr) * 0.5 * (1 + cos(3.14159265358979323846 * prog));
}

static void test_schedules(void) {
    static const char *const kinds[3] = {"constant", "linear", "cosine"};
    const char *data = make_data("tr_sched_data", false, false);
    mc_adapter *a = new_adapter(2, 0);
    int k, i;
    if (!a) return;
    for (k = 0; k < 3; k++) {
        mc_train_params p;
        mc_train_result res;
        rec r;
        p = params(data, scratch("tr_sched"), &r);
        p.lr_schedule = kinds[k];
        p.iters = 6;
        p.warmup_steps = 2;
        p.learning_rate = 1e-2;
        p.min_lr = 1e-3;
        CHECK_OK(mc_train(g_model, a, &p, &res));
        CHECK_INT(r.n, 6);
        for (i = 0; i < r.n; i++) {
            double w = want_lr(kinds[k], 1e-2, 1e-3, 2, 6, i + 1);
            if (fabs(r.lr[i] - w) > 1e-12) {
                fprintf(stderr, "  %s step %d: lr %.12g, expected %.12g\n", kinds[k], i + 1,
                        r.lr[i], w);
                t_checks_failed++;
            }
        }
    }
    mc_adapter_free(a);
}

/* Clipping by global norm bounds the SGD update: |dp| = lr * min(norm, max). */
static void test_grad_clip(void) {
    const char *data = make_data("tr_clip_data", false, false);
    int k;
    for (k = 0; k < 2; k++) {
        double max_norm = k == 0 ? 1e-3 : 1e9, dn = 0, want;
        mc_adapter *a = new_adapter(2, 0);
        mc_train_params p;
        mc_train_result res;
        rec r;
        float *before, *after;
        size_t i;
        if (!a) return;
        p = params(data, scratch("tr_clip"), &r);
        p.optimizer = "sgd";
        p.learning_rate = 1.0;
        p.iters = 1;
        p.max_grad_norm = max_norm;
        before = params_host(a);
        CHECK_OK(mc_train(g_model, a, &p, &res));
        after = params_host(a);
        for (i = 0; before && after && i < a->n_params; i++)
            dn += ((double)after[i] - before[i]) * ((double)after[i] - before[i]);
        dn = sqrt(dn);
        CHECK(r.n == 1 && r.gn[0] > 1e-3); /* the norm reported is the one before clipping */
        want = r.gn[0] > max_norm ? max_norm * r.gn[0] / (r.gn[0] + 1e-6) : r.gn[0];
        if (!(fabs(dn - want) <= 0.01 * want)) {
            fprintf(stderr, "  clip %g: |update| %.6g, expected %.6g (grad norm %.6g)\n",
                    max_norm, dn, want, r.gn[0]);
            t_checks_failed++;
        }
        free(before);
        free(after);
        mc_adapter_free(a);
    }
}

/* ---- activation checkpointing and dropout ---- */

static void test_grad_checkpoint(void) {
    const char *data = make_data("tr_ckpt_data", false, false);
    const char *o1 = scratch("tr_gc1"), *o2 = scratch("tr_gc2");
    mc_adapter *a = new_adapter(2, 0), *b = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r1, r2;
    float *pa, *pb;
    double worst = 0;
    size_t i;
    int k;
    if (!a || !b) goto done;
    p = params(data, o1, &r1);
    CHECK_OK(mc_train(g_model, a, &p, &res));
    p = params(data, o2, &r2);
    p.grad_checkpoint = 1;
    CHECK_OK(mc_train(g_model, b, &p, &res));
    CHECK_INT(r1.n, 3);
    CHECK_INT(r2.n, 3);
    for (k = 0; k < 3; k++) CHECK_NEAR(r2.loss[k], r1.loss[k], 1e-6);
    pa = params_host(a);
    pb = params_host(b);
    for (i = 0; pa && pb && i < a->n_params; i++) worst = fmax(worst, fabs(pa[i] - pb[i]));
    CHECK(worst <= 1e-6);
    free(pa);
    free(pb);
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
}

/* LoRA dropout changes training, and a run with dropout resumes bit for bit. */
static void test_dropout_resume(void) {
    const char *data = make_data("tr_drop_data", false, false);
    const char *full = scratch("tr_drop_full"), *part = scratch("tr_drop_part");
    mc_adapter *a = new_adapter(2, 0.25f), *b = new_adapter(2, 0.25f), *c = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r1, r2, r3, r0;
    int k;
    if (!a || !b || !c) goto done;
    p = params(data, full, &r1);
    p.iters = 4;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    p = params(data, part, &r2);
    p.iters = 2;
    CHECK_OK(mc_train(g_model, b, &p, &res));
    mc_adapter_free(b);
    b = new_adapter(2, 0.25f);
    if (!b) goto done;
    p = params(data, part, &r3);
    p.iters = 4;
    p.resume_dir = part;
    CHECK_OK(mc_train(g_model, b, &p, &res));
    CHECK_INT(res.steps, 4);
    CHECK_INT(r3.n, 2);
    for (k = 0; k < 2; k++) CHECK(r2.loss[k] == r1.loss[k]);
    for (k = 0; k < 2 && k < r3.n; k++) CHECK(r3.loss[k] == r1.loss[2 + k]);
    CHECK(same_file(join(full, "adapter_model.safetensors"), join(part, "adapter_model.safetensors")));
    CHECK(same_file(join(full, "trainer_state.safetensors"), join(part, "trainer_state.safetensors")));
    /* without dropout the second step differs (B is zero at the first, so it agrees) */
    p = params(data, scratch("tr_drop_none"), &r0);
    p.iters = 2;
    CHECK_OK(mc_train(g_model, c, &p, &res));
    CHECK(r0.loss[0] == r1.loss[0]);
    CHECK(r0.loss[1] != r1.loss[1]);
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_adapter_free(c);
}

/* ---- resume errors ---- */

/* Writes dst_dir/trainer_state.safetensors: src_dir's with its "state" tensor cut to
 * n_state entries and, when the layout entry (the ninth) is kept, set to layout. */
static void write_state_variant(const char *src_dir, const char *dst_dir, int n_state,
                                int64_t layout) {
    char src[1024];
    mc_st_set st;
    mc_st_out t[8];
    int64_t state[16];
    size_t i, n = 0;
    snprintf(src, sizeof src, "%s", join(src_dir, "trainer_state.safetensors"));
    memset(&st, 0, sizeof st);
    CHECK_OK(mc_st_open_file(src, &st));
    for (i = 0; i < st.n && n < 8; i++, n++) {
        const mc_st_tensor *x = &st.tensors[i];
        memset(&t[n], 0, sizeof t[n]);
        t[n].name = x->name;
        t[n].st_dtype = x->st_dtype;
        t[n].ndim = 1;
        t[n].shape[0] = x->shape[0];
        t[n].data = x->data;
        if (strcmp(x->name, "state") == 0) {
            CHECK_INT(x->shape[0], 9);
            memcpy(state, x->data, (size_t)x->nbytes);
            state[8] = layout;
            t[n].shape[0] = n_state;
            t[n].data = state;
        }
    }
    CHECK_OK(mc_st_write(join(dst_dir, "trainer_state.safetensors"), t, n, NULL, 0));
    mc_st_close(&st);
}

static void test_resume_mismatch(void) {
    const char *data = make_data("tr_rm_data", false, false);
    const char *out = scratch("tr_rm");
    const char *empty = scratch("tr_rm_empty");
    const char *small = scratch("tr_rm_small");
    mc_adapter *a = new_adapter(2, 0), *b = new_adapter(4, 0);
    mc_train_params p;
    mc_train_result res;
    if (!a || !b) goto done;
    p = params(data, out, NULL);
    p.iters = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    p.iters = 3;
    p.resume_dir = out;
    p.seed = 1;
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_INVALID_ARG);
    CHECK_MSG("seed");
    p.seed = 0;
    CHECK_STATUS(mc_train(g_model, b, &p, &res), MC_ERR_SHAPE); /* rank 4 vs a rank-2 state */
    CHECK_MSG("trainer_state.safetensors");
    p.resume_dir = empty;
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("trainer_state.safetensors");
    /* a data set smaller than the saved position */
    write_ids(join(small, "train.jsonl"), 1, 8, 9);
    p.resume_dir = out;
    p.train_path = small;
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_DATA);
    /* a torn or foreign state file is an error, not a crash */
    write_bytes(join(empty, "trainer_state.safetensors"), "\x10\x00\x00\x00\x00\x00\x00\x00{}", 10);
    p.train_path = data;
    p.resume_dir = empty;
    CHECK(mc_train(g_model, a, &p, &res) != MC_OK);
    write_bytes(join(empty, "trainer_state.safetensors"), "\x02\x00\x00\x00\x00\x00\x00\x00{}", 10);
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_MISSING_TENSOR);
    /* a state from before the parameters were ordered by groups (no layout entry), or of
     * another layout: refused, not read in the wrong order */
    write_state_variant(out, empty, 8, 0);
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_UNSUPPORTED);
    CHECK_MSG("another order");
    write_state_variant(out, empty, 9, 1);
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_UNSUPPORTED);
    CHECK_MSG("layout 1");
    /* the run still resumes from the good checkpoint */
    p.resume_dir = out;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 3);
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
}

/* ---- numeric failure and disk full ---- */

static void test_nan_loss(void) {
    const char *data = make_data("tr_nan_data", false, false);
    const char *out = scratch("tr_nan");
    mc_adapter *a = new_adapter(2, 0), *back = NULL;
    mc_train_params p;
    mc_train_result res;
    rec r;
    if (!a) return;
    p = params(data, out, &r);
    p.learning_rate = 1e30; /* the first update makes every LoRA weight about 1e30 */
    p.iters = 6;
    p.save_every = 1;
    p.log_jsonl = join(out, "log.jsonl");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_NUMERIC);
    CHECK(r.n >= 1 && r.n < 6);
    CHECK(all_finite(r.loss, r.n));
    /* the last checkpoint is the last good step, and it loads */
    CHECK_INT(checkpoint_step(out), r.n);
    CHECK_OK(mc_adapter_load(g_model, out, &back));
    mc_adapter_free(back);
    mc_adapter_free(a);
}

static void test_disk_full(void) {
    const char *data = make_data("tr_full_data", false, false);
    const char *out = scratch("tr_full"), *ref = scratch("tr_full_ref");
    mc_adapter *a = new_adapter(2, 0), *b = NULL;
    mc_train_params p;
    mc_train_result res;
    struct rlimit old, lim;
    char *saved = NULL, *now = NULL;
    size_t n_saved = 0, n_now = 0;
    void (*old_handler)(int);
    mc_status s;
    if (!a) return;
    p = params(data, out, NULL);
    p.iters = 2;
    p.save_every = 1;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_OK(mc_read_file(join(out, "trainer_state.safetensors"), &saved, &n_saved));
    if (!saved) goto done;
    /* a disk that fills up: files cannot grow past half the state's size */
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(n_saved / 2);
    old_handler = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    p.iters = 4;
    p.resume_dir = out;
    s = mc_train(g_model, a, &p, &res);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, old_handler);
    CHECK_STATUS(s, MC_ERR_IO);
    CHECK_MSG("step 3");
    /* the previous checkpoint survives, byte for byte, and no temporary file is left */
    CHECK_OK(mc_read_file(join(out, "trainer_state.safetensors"), &now, &n_now));
    CHECK(now && n_now == n_saved && memcmp(now, saved, n_saved) == 0);
    CHECK(!mc_path_exists(join(out, "trainer_state.safetensors.tmp")));
    CHECK_INT(checkpoint_step(out), 2);
    /* resuming from it gives what an uninterrupted run gives */
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 4);
    b = new_adapter(2, 0);
    if (b) {
        p = params(data, ref, NULL);
        p.iters = 4;
        CHECK_OK(mc_train(g_model, b, &p, &res));
        CHECK(same_file(join(out, "adapter_model.safetensors"), join(ref, "adapter_model.safetensors")));
    }
    /* without root's override a read-only folder fails the same way */
    if (geteuid() != 0) {
        p = params(data, out, NULL);
        p.iters = 6;
        p.resume_dir = out;
        CHECK(chmod(out, 0555) == 0);
        CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_IO);
        CHECK(chmod(out, 0755) == 0);
        CHECK_INT(checkpoint_step(out), 4);
    }
done:
    mc_free(saved);
    mc_free(now);
    mc_adapter_free(a);
    mc_adapter_free(b);
}

/* ---- the log ---- */

/* Checks every line of a log: step objects have step/loss/lr/grad_norm/tokens_per_s,
 * evaluations step/val_loss. Returns the step numbers in steps[] and counts. */
static void read_log(const char *path, int *steps, int *n_steps, int *n_evals) {
    char *text = NULL, *line, *save = NULL;
    size_t len = 0;
    *n_steps = *n_evals = 0;
    CHECK_OK(mc_read_file(path, &text, &len));
    if (!text) return;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *st = cJSON_GetObjectItem(j, "step");
        if (!cJSON_IsObject(j) || !cJSON_IsNumber(st)) {
            fprintf(stderr, "  log line is not an object with a step: %s\n", line);
            t_checks_failed++;
        } else if (cJSON_GetObjectItem(j, "val_loss")) {
            CHECK(cJSON_IsNumber(cJSON_GetObjectItem(j, "val_loss")));
            (*n_evals)++;
        } else {
            static const char *const keys[] = {"loss", "lr", "grad_norm", "tokens_per_s"};
            size_t k;
            for (k = 0; k < 4; k++)
                if (!cJSON_IsNumber(cJSON_GetObjectItem(j, keys[k]))) {
                    fprintf(stderr, "  log line lacks a number \"%s\": %s\n", keys[k], line);
                    t_checks_failed++;
                }
            if (*n_steps < 64) steps[(*n_steps)++] = st->valueint;
        }
        cJSON_Delete(j);
    }
    mc_free(text);
}

static void test_log_jsonl(void) {
    const char *data = make_data("tr_log_data", true, false);
    const char *out = scratch("tr_log");
    const char *log = join(out, "train_log.jsonl");
    mc_adapter *a = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    int steps[64], ns = 0, ne = 0, i;
    FILE *f;
    if (!a) return;
    p = params(data, out, &r);
    p.iters = 4;
    p.steps_per_eval = 2;
    p.log_jsonl = log;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    read_log(log, steps, &ns, &ne);
    CHECK_INT(ns, 4);
    CHECK_INT(ne, 3); /* baseline, step 2, the end */
    for (i = 0; i < ns; i++) CHECK_INT(steps[i], i + 1);
    /* a resumed run drops what the log holds beyond its checkpoint, then appends */
    f = fopen(log, "ab");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"step\":5,\"loss\":1,\"lr\":1,\"grad_norm\":1,\"tokens_per_s\":1}\n", f);
        fclose(f);
    }
    p.iters = 6;
    p.resume_dir = out;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    read_log(log, steps, &ns, &ne);
    CHECK_INT(ns, 6);
    for (i = 0; i < ns; i++) CHECK_INT(steps[i], i + 1);
    /* an unwritable log path is an error before training */
    p = params(data, scratch("tr_log2"), &r);
    p.log_jsonl = join(out, "no/such/folder/log.jsonl");
    CHECK_STATUS(mc_train(g_model, a, &p, &res), MC_ERR_IO);
    CHECK_INT(r.n, 0);
    mc_adapter_free(a);
}

/* The callback can stop a run; it saves where it stopped and resumes from there. */
static void test_callback_stop(void) {
    const char *data = make_data("tr_cb_data", false, false);
    const char *out = scratch("tr_cb"), *ref = scratch("tr_cb_ref");
    mc_adapter *a = new_adapter(2, 0), *b = new_adapter(2, 0);
    mc_train_params p;
    mc_train_result res;
    rec r;
    if (!a || !b) goto done;
    p = params(data, out, &r);
    p.iters = 4;
    r.stop_at = 2;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 2);
    CHECK_INT(res.stopped_early, 1);
    CHECK_INT(checkpoint_step(out), 2);
    p = params(data, out, &r);
    p.iters = 4;
    p.resume_dir = out;
    CHECK_OK(mc_train(g_model, a, &p, &res));
    CHECK_INT(res.steps, 4);
    CHECK_INT(r.n, 2);
    p = params(data, ref, &r);
    p.iters = 4;
    CHECK_OK(mc_train(g_model, b, &p, &res));
    CHECK(same_file(join(out, "adapter_model.safetensors"), join(ref, "adapter_model.safetensors")));
done:
    mc_adapter_free(a);
    mc_adapter_free(b);
}

/* ---- allocation failures ---- */

/* Every allocation of a short run (data with validation, log, checkpoints, resume) fails
 * in turn: each failure is MC_ERR_OOM with a message, never a crash or a leak. */
static void test_fault_injection(void) {
    const char *data = scratch("tr_oom_data");
    mc_adapter *a = new_adapter(2, 0);
    char out[256], cmd[300];
    char *state = NULL;
    size_t n, runs = 0, n_state = 0, used;
    int pass;
    if (!a) return;
    /* hundreds of runs that save checkpoints: on tmpfs when there is one, since each save
     * waits for fsync */
    snprintf(out, sizeof out, "/dev/shm/mc_test_trainer_%ld", (long)getpid());
    if (!mc_path_is_dir("/dev/shm") || mkdir(out, 0755) != 0)
        snprintf(out, sizeof out, "%s", scratch("tr_oom"));
    write_ids(join(data, "train.jsonl"), 3, 6, 11);
    write_ids(join(data, "valid.jsonl"), 1, 5, 12);
    for (pass = 0; pass < 2; pass++) {
        int ok = 0;
        if (pass == 1) /* the step-2 checkpoint that every run of pass 1 resumes from */
            CHECK_OK(mc_read_file(join(out, "trainer_state.safetensors"), &state, &n_state));
        for (n = 1; n < 100000 && !ok; n++) {
            mc_train_params p = params(data, out, NULL);
            mc_train_result res;
            mc_status s;
            p.iters = 2;
            p.save_every = 1;
            p.steps_per_eval = 1;
            p.log_jsonl = join(out, "log.jsonl");
            if (pass == 1) {
                if (state) write_bytes(join(out, "trainer_state.safetensors"), state, n_state);
                p.iters = 3;
                p.save_every = 0;
                p.grad_checkpoint = 1;
                p.resume_dir = out;
            }
            mc_debug_fail_alloc_after(n);
            s = mc_train(g_model, a, &p, &res);
            used = mc_debug_fail_alloc_after(0);
            runs++;
            if (s == MC_OK) {
                ok = 1;
                if (used >= n) { /* allocation n happened and failed, yet the run succeeded */
                    fprintf(stderr, "  pass %d: failing allocation %zu of %zu was ignored\n",
                            pass, n, used);
                    t_checks_failed++;
                }
            } else if (s != MC_ERR_OOM || !*mc_last_error()) {
                fprintf(stderr, "  pass %d, failing allocation %zu: %s (%s), expected "
                        "MC_ERR_OOM\n", pass, n, mc_status_name(s), mc_last_error());
                t_checks_failed++;
            }
        }
        CHECK(ok);
    }
    printf("allocation-failure sweep: %zu runs\n", runs);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
    CHECK(system(cmd) == 0);
    mc_free(state);
    mc_adapter_free(a);
}

/* One thread: the model is tiny, and tests run side by side on few cores. */
static void test_load_model(void) {
    mc_model_params mp = mc_model_default_params();
    mp.n_threads = 1;
    CHECK_OK(mc_model_load(t_src("tests/fixtures/tiny_tied_f32"), &mp, &g_model));
}

int main(void) {
    RUN(test_load_model);
    if (!g_model) return t_summary();
    RUN(test_invalid_params);
    RUN(test_missing_data);
    RUN(test_empty_data);
    RUN(test_invalid_line);
    RUN(test_batches_without_targets);
    RUN(test_validation_early_stop);
    RUN(test_epochs);
    RUN(test_sgd);
    RUN(test_schedules);
    RUN(test_grad_clip);
    RUN(test_grad_checkpoint);
    RUN(test_dropout_resume);
    RUN(test_resume_mismatch);
    RUN(test_nan_loss);
    RUN(test_disk_full);
    RUN(test_log_jsonl);
    RUN(test_callback_stop);
    RUN(test_fault_injection);
    mc_model_free(g_model);
    return t_summary();
}
