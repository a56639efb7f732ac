/* trainer.c - the LoRA training loop: data, micro-batches, loss normalisation over the
 * whole optimizer step, clipping, the optimizer, schedules, validation, early stopping,
 * logging, and checkpoints that resume bit for bit.
 *
 * Checkpoint = <adapter_path>/trainer_state.safetensors, one file written atomically:
 * tensors "lora" (adapter parameters), "opt.m", "opt.v" (moments) and metadata (step,
 * data position, best validation loss, ...). The PEFT adapter files beside it are for
 * users; resuming reads only the state file, so a crash never leaves a torn pair. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "../io/io.h"
#include "../lora/lora_io.h"
#include "dataset.h"
#include "optim.h"

mc_train_params mc_train_default_params(void) {
    mc_train_params p;
    memset(&p, 0, sizeof p);
    p.batch_size = 4;
    p.iters = 1000;
    p.grad_accumulation = 1;
    p.max_seq_length = 2048;
    p.shuffle = 1;
    p.optimizer = "adamw";
    p.learning_rate = 1e-5;
    p.beta1 = 0.9;
    p.beta2 = 0.999;
    p.eps = 1e-8;
    p.lr_schedule = "constant";
    p.steps_per_report = 1;
    p.steps_per_eval = 200;
    p.val_batches = 25;
    p.save_every = 100;
    return p;
}

/* Everything a run holds. */
typedef struct run {
    mc_model *m;
    mc_adapter *a;
    const mc_train_params *p;
    mc_dataset train, valid, test;
    bool has_valid, has_test;
    size_t *order;           /* [train.n] */
    mc_trainer_core *core;
    mc_optim opt;
    mc_optim_hparams hp;
    mc_lr_kind sched;
    mc_batch *mb;            /* [grad_accumulation] */
    FILE *log;
    /* position (saved in checkpoints) */
    int step;
    uint64_t epoch;
    size_t cursor;
    double best_val;
    int bad_evals;
    long long tokens;
} run;

/* ---- validation of parameters ---- */

static mc_status check_params(const mc_train_params *p) {
    if (!p->train_path) return mc_fail(MC_ERR_INVALID_ARG, "training data path is required");
    if (!p->adapter_path) return mc_fail(MC_ERR_INVALID_ARG, "adapter output path is required");
    if (p->batch_size <= 0) return mc_fail(MC_ERR_INVALID_ARG, "batch size must be > 0 (got %d)", p->batch_size);
    if (p->iters < 0 || p->epochs < 0 || (p->iters == 0 && p->epochs == 0))
        return mc_fail(MC_ERR_INVALID_ARG, "give iters > 0 or epochs > 0 (got %d, %d)", p->iters,
                       p->epochs);
    if (p->grad_accumulation <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "gradient accumulation steps must be > 0 (got %d)",
                       p->grad_accumulation);
    if (p->max_seq_length < 2)
        return mc_fail(MC_ERR_INVALID_ARG, "max sequence length must be >= 2 (got %d)",
                       p->max_seq_length);
    if (!(p->learning_rate >= 0) || !isfinite(p->learning_rate))
        return mc_fail(MC_ERR_INVALID_ARG, "learning rate must be >= 0 (got %g)", p->learning_rate);
    if (!(p->weight_decay >= 0) || !isfinite(p->weight_decay))
        return mc_fail(MC_ERR_INVALID_ARG, "weight decay must be >= 0 (got %g)", p->weight_decay);
    if (!(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1) || !(p->eps > 0))
        return mc_fail(MC_ERR_INVALID_ARG, "AdamW needs 0 <= beta1, beta2 < 1 and eps > 0");
    if (!(p->momentum >= 0 && p->momentum < 1))
        return mc_fail(MC_ERR_INVALID_ARG, "momentum must be in [0, 1) (got %g)", p->momentum);
    if (!(p->max_grad_norm >= 0)) return mc_fail(MC_ERR_INVALID_ARG, "gradient clip must be >= 0");
    if (!(p->min_lr >= 0) || p->warmup_steps < 0 || p->steps_per_report < 0 ||
        p->steps_per_eval < 0 || p->save_every < 0 || p->early_stop_patience < 0 ||
        p->val_batches < -1)
        return mc_fail(MC_ERR_INVALID_ARG, "min_lr, warmup, report/eval/save cadences, patience and "
                       "val_batches must not be negative");
    if (p->optimizer && strcmp(p->optimizer, "adamw") != 0 && strcmp(p->optimizer, "sgd") != 0)
        return mc_fail(MC_ERR_INVALID_ARG, "unknown optimizer '%s' (adamw, sgd)", p->optimizer);
    return MC_OK;
}

/* ---- data ---- */

static mc_status load_split(run *r, const char *path, mc_dataset *ds) {
    mc_dataset_opts o;
    memset(&o, 0, sizeof o);
    o.tok = r->p->tokenizer;
    o.max_seq_length = r->p->max_seq_length;
    o.mask_prompt = r->p->mask_prompt != 0;
    o.skip_invalid = r->p->skip_invalid != 0;
    o.vocab_size = r->m->cfg.vocab_size;
    return mc_dataset_load(path, &o, ds);
}

/* Resolves the train/valid/test files (a folder holds train.jsonl, valid.jsonl, test.jsonl). */
static mc_status load_data(run *r) {
    const mc_train_params *p = r->p;
    char *tr = NULL, *va = NULL, *te = NULL;
    bool dir = mc_path_is_dir(p->train_path);
    mc_status s;
    if (dir) {
        tr = mc_path_join(p->train_path, "train.jsonl");
        va = p->valid_path ? mc_strdup(p->valid_path) : mc_path_join(p->train_path, "valid.jsonl");
        te = p->test_path ? mc_strdup(p->test_path) : mc_path_join(p->train_path, "test.jsonl");
    } else {
        tr = mc_strdup(p->train_path);
        va = p->valid_path ? mc_strdup(p->valid_path) : NULL;
        te = p->test_path ? mc_strdup(p->test_path) : NULL;
    }
    if (!tr || ((dir || p->valid_path) && !va) || ((dir || p->test_path) && !te)) {
        s = mc_fail(MC_ERR_OOM, "out of memory");
        goto done;
    }
    s = load_split(r, tr, &r->train);
    if (s != MC_OK) goto done;
    if (r->train.n == 0 || r->train.n_targets == 0) {
        s = mc_fail(MC_ERR_DATA, "%s: no training examples with loss targets", tr);
        goto done;
    }
    if (r->train.n_truncated)
        mc_log(MC_LOG_WARN, "%s: %zu of %zu examples were longer than %d tokens and were truncated",
               tr, r->train.n_truncated, r->train.n, p->max_seq_length);
    if (r->train.n_skipped) mc_log(MC_LOG_WARN, "%s: skipped %zu invalid lines", tr, r->train.n_skipped);
    if (va && (p->valid_path || mc_path_exists(va))) {
        s = load_split(r, va, &r->valid);
        if (s != MC_OK) goto done;
        r->has_valid = r->valid.n_targets > 0;
    }
    if (te && (p->test_path || mc_path_exists(te))) {
        s = load_split(r, te, &r->test);
        if (s != MC_OK) goto done;
        r->has_test = r->test.n_targets > 0;
    }
done:
    mc_free(tr);
    mc_free(va);
    mc_free(te);
    return s;
}

/* Next micro-batch of the training stream (wrapping into a new shuffled epoch). */
static mc_status next_batch(run *r, mc_batch *b) {
    const mc_train_params *p = r->p;
    if (r->cursor >= r->train.n) {
        r->epoch++;
        r->cursor = 0;
        mc_dataset_order(r->order, r->train.n, p->seed, r->epoch, p->shuffle != 0);
    }
    return mc_dataset_fill_batch(&r->train, r->order, r->train.n, &r->cursor, p->batch_size,
                                 p->pack != 0, p->max_seq_length, b);
}

/* Optimizer steps in one epoch (for --epochs). */
static int steps_per_epoch(run *r) {
    mc_batch b;
    size_t cursor = 0;
    int batches = 0;
    memset(&b, 0, sizeof b);
    while (cursor < r->train.n) {
        if (mc_dataset_fill_batch(&r->train, r->order, r->train.n, &cursor, r->p->batch_size,
                                  r->p->pack != 0, r->p->max_seq_length, &b) != MC_OK)
            break;
        batches++;
    }
    mc_batch_free(&b);
    return MC_MAX(1, (batches + r->p->grad_accumulation - 1) / r->p->grad_accumulation);
}

/* Mean loss over a dataset's first n_batches micro-batches (-1 = all), in order. */
static mc_status eval_loss(run *r, const mc_dataset *ds, int n_batches, double *out) {
    mc_batch b;
    size_t cursor = 0, *order = mc_malloc(MC_MAX(ds->n, (size_t)1) * sizeof *order);
    double sum = 0;
    long long count = 0;
    int k = 0;
    mc_status s = MC_OK;
    memset(&b, 0, sizeof b);
    if (!order) return mc_fail(MC_ERR_OOM, "out of memory for evaluation");
    mc_dataset_order(order, ds->n, 0, 0, false);
    while (cursor < ds->n && (n_batches < 0 || k < n_batches)) {
        s = mc_dataset_fill_batch(ds, order, ds->n, &cursor, r->p->batch_size, r->p->pack != 0,
                                  r->p->max_seq_length, &b);
        if (s != MC_OK) break;
        k++;
        if (b.n_targets == 0) continue;
        s = mc_train_microbatch(r->core, &b, 0.0f, false, &sum);
        if (s != MC_OK) break;
        count += b.n_targets;
    }
    mc_batch_free(&b);
    mc_free(order);
    *out = count ? sum / (double)count : NAN;
    return s;
}

/* ---- checkpoints ---- */

/* Checkpoint position fields, stored as the I64 tensor "state". */
enum { ST_STEP, ST_EPOCH, ST_CURSOR, ST_OPT_STEP, ST_BAD_EVALS, ST_TOKENS, ST_SEED, ST_NPARAMS,
       ST_LAYOUT, ST_COUNT };

/* The order of the LoRA parameters in the checkpoint's flat tensors (a->params): 2 = by
 * groups of projections that share an input (mc_lora_group). Checkpoints without the
 * field (written before it) kept every A then B projection by projection. */
enum { CKPT_LAYOUT = 2 };

static mc_status save_checkpoint(run *r) {
    mc_backend *be = r->m->be;
    size_t n = r->a->n_params, bytes = n * sizeof(float);
    float *host = mc_malloc(3 * MC_MAX(bytes, (size_t)4));
    int64_t state[ST_COUNT];
    double best = r->best_val;
    mc_st_out t[5];
    char *path = mc_path_join(r->p->adapter_path, "trainer_state.safetensors");
    mc_status s = MC_OK;
    int i;
    if (!host || !path) {
        s = mc_fail(MC_ERR_OOM, "out of memory saving a checkpoint");
        goto done;
    }
    memset(t, 0, sizeof t);
    s = be->to_host(be, host, r->a->params, bytes);
    if (s == MC_OK) s = be->to_host(be, host + n, r->opt.m, bytes);
    if (s == MC_OK && r->opt.v) s = be->to_host(be, host + 2 * n, r->opt.v, bytes);
    else memset(host + 2 * n, 0, bytes);
    if (s != MC_OK) goto done;
    state[ST_STEP] = r->step;
    state[ST_EPOCH] = (int64_t)r->epoch;
    state[ST_CURSOR] = (int64_t)r->cursor;
    state[ST_OPT_STEP] = r->opt.step;
    state[ST_BAD_EVALS] = r->bad_evals;
    state[ST_TOKENS] = r->tokens;
    state[ST_SEED] = (int64_t)r->p->seed;
    state[ST_NPARAMS] = (int64_t)n;
    state[ST_LAYOUT] = CKPT_LAYOUT;
    t[0].name = "lora";
    t[1].name = "opt.m";
    t[2].name = "opt.v";
    for (i = 0; i < 3; i++) {
        t[i].st_dtype = MC_ST_F32;
        t[i].ndim = 1;
        t[i].shape[0] = (int64_t)n;
        t[i].data = host + (size_t)i * n;
    }
    t[3].name = "state";
    t[3].st_dtype = MC_ST_I64;
    t[3].ndim = 1;
    t[3].shape[0] = ST_COUNT;
    t[3].data = state;
    t[4].name = "state.best_val";
    t[4].st_dtype = MC_ST_F64;
    t[4].ndim = 1;
    t[4].shape[0] = 1;
    t[4].data = &best;
    s = mc_st_write(path, t, 5, NULL, 0);
    if (s == MC_OK) s = mc_adapter_save(r->a, r->p->adapter_path);
done:
    mc_free(host);
    mc_free(path);
    if (s != MC_OK) mc_error_prefix("saving the checkpoint at step %d", r->step);
    return s;
}

static mc_status load_checkpoint(run *r, const char *dir) {
    char *path = mc_path_join(dir, "trainer_state.safetensors");
    mc_st_set st;
    const mc_st_tensor *tl, *tm, *tv, *ts, *tb;
    mc_backend *be = r->m->be;
    size_t n = r->a->n_params;
    int64_t state[ST_COUNT];
    double best;
    mc_status s;
    if (!path) return mc_fail(MC_ERR_OOM, "out of memory");
    memset(&st, 0, sizeof st);
    s = mc_st_open_file(path, &st);
    if (s != MC_OK) goto done;
    tl = mc_st_find(&st, "lora");
    tm = mc_st_find(&st, "opt.m");
    tv = mc_st_find(&st, "opt.v");
    ts = mc_st_find(&st, "state");
    tb = mc_st_find(&st, "state.best_val");
    if (ts && ts->st_dtype == MC_ST_I64 && ts->nbytes == ST_LAYOUT * sizeof(int64_t)) {
        s = mc_fail(MC_ERR_UNSUPPORTED, "%s: an earlier version wrote this checkpoint with its "
                    "LoRA parameters in another order; it cannot be resumed (the adapter files "
                    "beside it still load)", path);
        goto done;
    }
    if (!tl || !tm || !tv || !ts || !tb || tl->st_dtype != MC_ST_F32 || tm->st_dtype != MC_ST_F32 ||
        tv->st_dtype != MC_ST_F32 || ts->st_dtype != MC_ST_I64 || tb->st_dtype != MC_ST_F64 ||
        ts->nbytes != sizeof state || tb->nbytes != sizeof best) {
        s = mc_fail(MC_ERR_MISSING_TENSOR, "%s: not a trainer checkpoint (tensors lora, opt.m, "
                    "opt.v, state, state.best_val expected)", path);
        goto done;
    }
    memcpy(state, ts->data, sizeof state);
    memcpy(&best, tb->data, sizeof best);
    if (state[ST_LAYOUT] != CKPT_LAYOUT) {
        s = mc_fail(MC_ERR_UNSUPPORTED, "%s: LoRA parameter layout %lld (this version reads %d)",
                    path, (long long)state[ST_LAYOUT], CKPT_LAYOUT);
        goto done;
    }
    if (tl->nbytes != n * sizeof(float) || tm->nbytes != tl->nbytes || tv->nbytes != tl->nbytes ||
        state[ST_NPARAMS] != (int64_t)n) {
        s = mc_fail(MC_ERR_SHAPE, "%s: the checkpoint holds %lld LoRA parameters; this adapter "
                    "has %zu", path, (long long)state[ST_NPARAMS], n);
        goto done;
    }
    if ((uint64_t)state[ST_SEED] != r->p->seed) {
        s = mc_fail(MC_ERR_INVALID_ARG, "%s: the checkpoint was made with seed %llu, this run has "
                    "seed %llu", path, (unsigned long long)state[ST_SEED],
                    (unsigned long long)r->p->seed);
        goto done;
    }
    if (state[ST_STEP] < 0 || state[ST_EPOCH] < 0 || state[ST_CURSOR] < 0 ||
        (uint64_t)state[ST_CURSOR] > r->train.n || state[ST_OPT_STEP] < 0) {
        s = mc_fail(MC_ERR_DATA, "%s: the checkpoint's position does not fit this data set", path);
        goto done;
    }
    s = be->to_device(be, r->a->params, tl->data, tl->nbytes);
    if (s == MC_OK) s = be->to_device(be, r->opt.m, tm->data, tm->nbytes);
    if (s == MC_OK && r->opt.v) s = be->to_device(be, r->opt.v, tv->data, tv->nbytes);
    if (s != MC_OK) goto done;
    r->step = (int)state[ST_STEP];
    r->epoch = (uint64_t)state[ST_EPOCH];
    r->cursor = (size_t)state[ST_CURSOR];
    r->opt.step = (int)state[ST_OPT_STEP];
    r->bad_evals = (int)state[ST_BAD_EVALS];
    r->tokens = state[ST_TOKENS];
    r->best_val = best;
    mc_dataset_order(r->order, r->train.n, r->p->seed, r->epoch, r->p->shuffle != 0);
    mc_log(MC_LOG_INFO, "resuming from %s at step %d", path, r->step);
done:
    mc_st_close(&st);
    mc_free(path);
    return s;
}

/* Reads the number after "key": in a JSON line. */
static bool json_line_num(const char *line, const char *key, double *out) {
    char pat[64];
    const char *q;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    q = strstr(line, pat);
    if (!q) return false;
    *out = strtod(q + strlen(pat), NULL);
    return true;
}

/* Opens the jsonl log; a resumed run first drops the lines of steps after its checkpoint. */
static mc_status open_log(run *r, bool resumed) {
    const char *path = r->p->log_jsonl;
    if (!path) return MC_OK;
    if (resumed && mc_path_exists(path)) {
        char *text = NULL, *line, *save = NULL, *kept = NULL;
        size_t len = 0, kept_len = 0;
        FILE *mem;
        mc_status s = mc_read_file(path, &text, &len);
        if (s != MC_OK) return s;
        mem = open_memstream(&kept, &kept_len);
        if (!mem) {
            mc_free(text);
            return mc_fail(MC_ERR_OOM, "out of memory rewriting %s", path);
        }
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            double st = 0;
            if (json_line_num(line, "step", &st) && st > r->step) continue;
            fprintf(mem, "%s\n", line);
        }
        fclose(mem);
        s = mc_write_file_atomic(path, kept ? kept : "", kept_len);
        free(kept);
        mc_free(text);
        if (s != MC_OK) return s;
    }
    r->log = fopen(path, resumed ? "a" : "w");
    if (!r->log) return mc_fail(MC_ERR_IO, "%s: cannot open the log for writing", path);
    return MC_OK;
}

/* ---- the loop ---- */

static void log_step(run *r, const mc_train_progress *pr) {
    if (!r->log) return;
    if (pr->is_eval)
        fprintf(r->log, "{\"step\":%d,\"val_loss\":%.9g}\n", pr->step, pr->val_loss);
    else
        fprintf(r->log, "{\"step\":%d,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
                "\"tokens_per_s\":%.3f,\"tokens\":%lld,\"peak_rss\":%llu}\n", pr->step, pr->loss,
                pr->lr, pr->grad_norm, pr->tokens_per_s, pr->tokens,
                (unsigned long long)pr->peak_rss);
    fflush(r->log);
}

/* One optimizer step: grad_accumulation micro-batches, loss averaged over all of their
 * targets, clip, update. */
static mc_status train_step(run *r, int total, mc_train_progress *pr) {
    const mc_train_params *p = r->p;
    mc_backend *be = r->m->be;
    double loss_sum = 0, t0 = mc_time_now();
    long long n_targets = 0, n_tokens = 0;
    int k;
    mc_status s;
    for (k = 0; k < p->grad_accumulation; k++) {
        s = next_batch(r, &r->mb[k]);
        if (s != MC_OK) return s;
        n_targets += r->mb[k].n_targets;
        n_tokens += r->mb[k].N;
    }
    r->step++;
    r->hp.lr = mc_lr_at(r->sched, p->learning_rate, p->min_lr, p->warmup_steps, total, r->step);
    be->zero(be, r->core->grads, r->a->n_params * sizeof(float));
    r->core->dropout_seed = p->seed * 0x9e3779b97f4a7c15ull + (uint64_t)r->step;
    memset(pr, 0, sizeof *pr);
    if (n_targets == 0) {
        mc_log(MC_LOG_WARN, "step %d: the batch has no loss targets; skipped", r->step);
    } else {
        for (k = 0; k < p->grad_accumulation; k++) {
            if (r->mb[k].n_targets == 0) continue;
            s = mc_train_microbatch(r->core, &r->mb[k], (float)(1.0 / (double)n_targets), true,
                                    &loss_sum);
            if (s != MC_OK) {
                mc_error_prefix("step %d", r->step);
                return s;
            }
        }
        pr->grad_norm = mc_clip_grads(be, r->core->grads, r->a->n_params, p->max_grad_norm);
        if (!isfinite(pr->grad_norm))
            return mc_fail(MC_ERR_NUMERIC, "step %d: the gradient norm is %g", r->step,
                           pr->grad_norm);
        s = mc_optim_step(&r->opt, r->a->params, r->core->grads, &r->hp);
        if (s != MC_OK) return s;
    }
    r->tokens += n_tokens;
    pr->step = r->step;
    pr->total_steps = total;
    pr->loss = n_targets ? loss_sum / (double)n_targets : 0.0;
    pr->lr = r->hp.lr;
    pr->tokens_per_s = (double)n_tokens / MC_MAX(mc_time_now() - t0, 1e-9);
    pr->peak_rss = mc_peak_rss_bytes();
    pr->tokens = r->tokens;
    return MC_OK;
}

/* Validation at this step; updates early stopping. Returns true in *stop when patience
 * ran out. */
static mc_status validate(run *r, int total, double *val, bool *stop) {
    mc_train_progress pr;
    mc_status s = eval_loss(r, &r->valid, r->p->val_batches, val);
    if (s != MC_OK) return s;
    if (*val < r->best_val) {
        r->best_val = *val;
        r->bad_evals = 0;
    } else {
        r->bad_evals++;
    }
    *stop = r->p->early_stop_patience > 0 && r->bad_evals >= r->p->early_stop_patience;
    memset(&pr, 0, sizeof pr);
    pr.step = r->step;
    pr.total_steps = total;
    pr.is_eval = 1;
    pr.val_loss = *val;
    pr.peak_rss = mc_peak_rss_bytes();
    pr.tokens = r->tokens;
    log_step(r, &pr);
    if (r->p->on_progress) (void)r->p->on_progress(&pr, r->p->user);
    return MC_OK;
}

static void run_free(run *r) {
    if (r->mb) {
        int k;
        for (k = 0; k < r->p->grad_accumulation; k++) mc_batch_free(&r->mb[k]);
    }
    mc_free(r->mb);
    mc_optim_free(&r->opt);
    mc_trainer_core_free(r->core);
    mc_free(r->order);
    mc_dataset_free(&r->train);
    mc_dataset_free(&r->valid);
    mc_dataset_free(&r->test);
    if (r->log) fclose(r->log);
}

/* Most token rows one micro-batch can hold: batch_size of the longest examples, or the
 * packing budget (activations are sized by this, not by max_seq_length alone). */
static int max_batch_rows(const run *r) {
    size_t longest = 2, i, rows;
    const mc_dataset *sets[3];
    int k;
    sets[0] = &r->train;
    sets[1] = &r->valid;
    sets[2] = &r->test;
    for (k = 0; k < 3; k++)
        for (i = 0; i < sets[k]->n; i++) longest = MC_MAX(longest, (size_t)sets[k]->ex[i].n);
    longest = MC_MIN(longest, (size_t)r->p->max_seq_length);
    rows = (size_t)r->p->batch_size * (r->p->pack ? (size_t)r->p->max_seq_length : longest);
    return (int)MC_MIN(rows, (size_t)INT32_MAX / 2);
}

/* Sets up data, state and (when resuming) the checkpoint; computes the step count. */
static mc_status run_setup(run *r, int *total) {
    const mc_train_params *p = r->p;
    mc_status s = load_data(r);
    if (s != MC_OK) return s;
    r->order = mc_malloc(r->train.n * sizeof *r->order);
    r->mb = mc_calloc((size_t)p->grad_accumulation, sizeof *r->mb);
    if (!r->order || !r->mb) return mc_fail(MC_ERR_OOM, "out of memory for the data order");
    mc_dataset_order(r->order, r->train.n, p->seed, 0, p->shuffle != 0);
    *total = p->iters > 0 ? p->iters : steps_per_epoch(r) * p->epochs;
    s = mc_trainer_core_create(r->m, r->a, max_batch_rows(r), p->grad_checkpoint != 0, &r->core);
    if (s != MC_OK) return s;
    s = mc_optim_init(&r->opt, r->m->be, p->optimizer && !strcmp(p->optimizer, "sgd") ? MC_OPT_SGD
                      : MC_OPT_ADAMW, r->a->n_params);
    if (s != MC_OK) return s;
    r->best_val = INFINITY;
    s = mc_mkdir_p(p->adapter_path); /* with its parents, as mc_adapter_save does */
    if (s != MC_OK) return s;
    if (p->resume_dir) {
        s = load_checkpoint(r, p->resume_dir);
        if (s != MC_OK) return s;
    }
    return open_log(r, p->resume_dir != NULL);
}

mc_status mc_train(mc_model *model, mc_adapter *adapter, const mc_train_params *params,
                   mc_train_result *result) {
    run r;
    int total = 0, start;
    double t_start = mc_time_now(), val = NAN;
    bool stop = false;
    int saved_step = -1; /* step of this call's last checkpoint */
    mc_status s;
    if (!model || !adapter || !params || !result)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_train: NULL argument");
    if (adapter->model != model) return mc_fail(MC_ERR_INVALID_ARG, "the adapter belongs to another model");
    s = check_params(params);
    if (s != MC_OK) return s;
    memset(result, 0, sizeof *result);
    memset(&r, 0, sizeof r);
    r.m = model;
    r.a = adapter;
    r.p = params;
    r.hp.beta1 = params->beta1;
    r.hp.beta2 = params->beta2;
    r.hp.eps = params->eps;
    r.hp.weight_decay = params->weight_decay;
    r.hp.momentum = params->momentum;
    s = mc_lr_schedule_parse(params->lr_schedule, &r.sched);
    if (s == MC_OK) s = run_setup(&r, &total);
    if (s != MC_OK) goto done;
    start = r.step;
    result->n_truncated = r.train.n_truncated;
    if (r.has_valid && !params->resume_dir && params->steps_per_eval > 0) {
        bool es = false; /* the loss before training, as a baseline */
        s = validate(&r, total, &val, &es);
        if (s != MC_OK) goto done;
    }
    result->n_skipped = r.train.n_skipped;
    while (r.step < total && !stop) {
        mc_train_progress pr;
        s = train_step(&r, total, &pr);
        if (s != MC_OK) goto done;
        pr.eta_s = (mc_time_now() - t_start) / (double)(r.step - start) * (double)(total - r.step);
        result->final_loss = pr.loss;
        log_step(&r, &pr);
        if (params->on_progress && params->steps_per_report > 0 &&
            (r.step % params->steps_per_report == 0 || r.step == total) &&
            params->on_progress(&pr, params->user)) {
            stop = true;
            result->stopped_early = 1;
        }
        if (r.has_valid && params->steps_per_eval > 0 && r.step % params->steps_per_eval == 0 &&
            r.step < total) {
            bool es = false;
            s = validate(&r, total, &val, &es);
            if (s != MC_OK) goto done;
            if (es) {
                stop = true;
                result->stopped_early = 1;
            }
        }
        if ((params->save_every > 0 && r.step % params->save_every == 0) || stop) {
            s = save_checkpoint(&r);
            if (s != MC_OK) goto done;
            saved_step = r.step;
        }
    }
    if (r.has_valid && !stop) {
        bool es = false;
        s = validate(&r, total, &val, &es);
        if (s != MC_OK) goto done;
    }
    /* also when a resumed run had nothing left to train: a crash may have cut the adapter
     * files short after the state file of the last step was written */
    if (saved_step != r.step) {
        s = save_checkpoint(&r);
        if (s != MC_OK) goto done;
    }
    result->test_loss = NAN;
    if (r.has_test) {
        s = eval_loss(&r, &r.test, -1, &result->test_loss);
        if (s != MC_OK) goto done;
    }
    result->val_loss = r.has_valid ? val : NAN;
    result->steps = r.step;
    result->tokens = r.tokens;
done:
    result->seconds = mc_time_now() - t_start;
    run_free(&r);
    return s;
}
