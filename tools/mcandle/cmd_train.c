/* cmd_train.c - `mcandle train`: LoRA fine-tuning from jsonl data, flags named like
 * mlx-lm's where they mean the same, plus --config FILE.json holding the same keys. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char k_train_help[] =
    "usage: mcandle train --model DIR --data DIR|FILE --adapter-path OUT [options]\n"
    "\n"
    "Fine-tunes a LoRA adapter. --data is a folder with train.jsonl (and optionally\n"
    "valid.jsonl, test.jsonl) or a train.jsonl file. Lines: {\"text\"}, {\"prompt\",\n"
    "\"completion\"}, {\"messages\": [...]}, or {\"input_ids\": [...]}. The adapter (PEFT format)\n"
    "and a resumable checkpoint are written to OUT.\n"
    "\n"
    "data:       --max-seq-length N (2048)  --mask-prompt  --pack  --no-shuffle\n"
    "            --skip-invalid  --tokenizer PATH (default: the model folder)\n"
    "schedule:   --iters N (1000)  --epochs N  --batch-size N (4)\n"
    "            --grad-accumulation-steps N (1)  --grad-checkpoint\n"
    "optimizer:  --optimizer adamw|sgd  --learning-rate X (1e-5)  --weight-decay X (0)\n"
    "            --adam-beta1 X (0.9)  --adam-beta2 X (0.999)  --adam-eps X (1e-8)\n"
    "            --momentum X (sgd, 0)  --grad-clip X (0 = off)\n"
    "            --lr-schedule constant|linear|cosine  --warmup N (0)  --min-lr X (0)\n"
    "LoRA:       --rank N (8)  --alpha X (16)  --lora-dropout X (0)  --rslora\n"
    "            --lora-targets q,k,v,o,gate,up,down|all (all)  --num-layers N (all)\n"
    "            --resume-adapter-file DIR (start from this adapter: its rank, alpha, targets)\n"
    "evaluation: --steps-per-report N (10)  --steps-per-eval N (200)  --val-batches N (25,\n"
    "            -1 = all)  --early-stop N (patience in evaluations; 0 = off)\n"
    "output:     --save-every N (100)  --resume OUT (continue an interrupted run)\n"
    "            --log-jsonl FILE  --seed N (0)  --threads N  --config FILE.json\n"
    "            --device cpu|cuda (cuda in builds with the CUDA backend)\n"
    "\n"
    "--config takes a JSON object with the same names (dashes or underscores), e.g.\n"
    "{\"batch_size\": 2, \"learning_rate\": 1e-4, \"mask_prompt\": true}; flags given on the\n"
    "command line win.\n";

/* Parsed options. */
typedef struct train_opts {
    const char *model, *tok_path, *resume_adapter, *targets, *device;
    long threads;
    mc_lora_params lora;
    mc_train_params tp;
} train_opts;

static int parse_targets(const char *s, unsigned *out) {
    static const char *const names[7] = {"q", "k", "v", "o", "gate", "up", "down"};
    char buf[128], *tok, *save = NULL;
    size_t len = strlen(s);
    unsigned mask = 0;
    int k;
    if (!strcmp(s, "all")) {
        *out = MC_LORA_ALL;
        return 0;
    }
    if (len >= sizeof buf) return -1;
    memcpy(buf, s, len + 1);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t n = strlen(tok);
        if (n > 5 && !strcmp(tok + n - 5, "_proj")) tok[n - 5] = '\0';
        for (k = 0; k < 7; k++)
            if (!strcmp(tok, names[k])) break;
        if (k == 7) return -1;
        mask |= 1u << k;
    }
    *out = mask;
    return mask ? 0 : -1;
}

/* Applies one option; *i advances past its value. Returns 0, 2 (usage error) or 3
 * (--help). */
static int apply_opt(train_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v = NULL;
    mc_train_params *t = &o->tp;
    int missing = 0;
    long n;
    double d;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 3;
    if (!strcmp(a, "--mask-prompt")) { t->mask_prompt = 1; return 0; }
    if (!strcmp(a, "--pack")) { t->pack = 1; return 0; }
    if (!strcmp(a, "--no-shuffle")) { t->shuffle = 0; return 0; }
    if (!strcmp(a, "--grad-checkpoint")) { t->grad_checkpoint = 1; return 0; }
    if (!strcmp(a, "--skip-invalid")) { t->skip_invalid = 1; return 0; }
    if (!strcmp(a, "--rslora")) { o->lora.rslora = 1; return 0; }
    if (cli_opt(argc, argv, i, "--model", &o->model, &missing) ||
        cli_opt(argc, argv, i, "--data", &t->train_path, &missing) ||
        cli_opt(argc, argv, i, "--adapter-path", &t->adapter_path, &missing) ||
        cli_opt(argc, argv, i, "--resume", &t->resume_dir, &missing) ||
        cli_opt(argc, argv, i, "--resume-adapter-file", &o->resume_adapter, &missing) ||
        cli_opt(argc, argv, i, "--log-jsonl", &t->log_jsonl, &missing) ||
        cli_opt(argc, argv, i, "--tokenizer", &o->tok_path, &missing) ||
        cli_opt(argc, argv, i, "--optimizer", &t->optimizer, &missing) ||
        cli_opt(argc, argv, i, "--lr-schedule", &t->lr_schedule, &missing) ||
        cli_opt(argc, argv, i, "--lora-targets", &o->targets, &missing) ||
        cli_opt(argc, argv, i, "--device", &o->device, &missing))
        return missing ? cli_usage_error("train", "option '%s' needs a value", a) : 0;
#define INT_OPT(name, lo, hi, dst)                                                          \
    if (cli_opt(argc, argv, i, name, &v, &missing)) {                                       \
        if (missing || cli_parse_int(v, lo, hi, &n) != 0)                                   \
            return cli_usage_error("train", "%s needs an integer in %ld..%ld", name, (long)(lo), \
                                   (long)(hi));                                             \
        dst;                                                                                \
        return 0;                                                                           \
    }
#define NUM_OPT(name, lo, dst)                                                              \
    if (cli_opt(argc, argv, i, name, &v, &missing)) {                                       \
        if (missing || cli_parse_float(v, &d) != 0 || d < (lo))                             \
            return cli_usage_error("train", "%s needs a number >= %g", name, (double)(lo)); \
        dst;                                                                                \
        return 0;                                                                           \
    }
    INT_OPT("--batch-size", 1, 1 << 20, t->batch_size = (int)n)
    INT_OPT("--iters", 0, 1 << 30, t->iters = (int)n)
    INT_OPT("--epochs", 0, 1 << 20, t->epochs = (int)n)
    INT_OPT("--grad-accumulation-steps", 1, 1 << 20, t->grad_accumulation = (int)n)
    INT_OPT("--max-seq-length", 2, 1 << 24, t->max_seq_length = (int)n)
    INT_OPT("--warmup", 0, 1 << 30, t->warmup_steps = (int)n)
    INT_OPT("--steps-per-report", 1, 1 << 30, t->steps_per_report = (int)n)
    INT_OPT("--steps-per-eval", 0, 1 << 30, t->steps_per_eval = (int)n)
    INT_OPT("--val-batches", -1, 1 << 30, t->val_batches = (int)n)
    INT_OPT("--early-stop", 0, 1 << 20, t->early_stop_patience = (int)n)
    INT_OPT("--save-every", 0, 1 << 30, t->save_every = (int)n)
    INT_OPT("--seed", 0, 0x7fffffffL, t->seed = (uint64_t)n; o->lora.seed = (uint64_t)n)
    INT_OPT("--threads", 1, 4096, o->threads = n)
    INT_OPT("--rank", 1, 4096, o->lora.rank = (int)n)
    INT_OPT("--num-layers", -1, 1 << 20, o->lora.num_layers = (int)n)
    NUM_OPT("--learning-rate", 0, t->learning_rate = d)
    NUM_OPT("--weight-decay", 0, t->weight_decay = d)
    NUM_OPT("--adam-beta1", 0, t->beta1 = d)
    NUM_OPT("--adam-beta2", 0, t->beta2 = d)
    NUM_OPT("--adam-eps", 0, t->eps = d)
    NUM_OPT("--momentum", 0, t->momentum = d)
    NUM_OPT("--grad-clip", 0, t->max_grad_norm = d)
    NUM_OPT("--min-lr", 0, t->min_lr = d)
    NUM_OPT("--alpha", 0, o->lora.alpha = (float)d)
    NUM_OPT("--lora-dropout", 0, o->lora.dropout = (float)d)
#undef INT_OPT
#undef NUM_OPT
    return cli_usage_error("train", "unknown option '%s'", a);
}

static void free_args(char **args, int n) {
    int k;
    if (!args) return;
    for (k = 0; k < n; k++) free(args[k]);
    free(args);
}

/* The value of --config key e as one argument (heap string, free()); NULL when out of
 * memory or *bad when the value is not a number, string or array of strings that fits. */
static char *config_value(const cJSON *e, int *bad) {
    char val[512];
    if (cJSON_IsString(e)) return strdup(e->valuestring);
    if (cJSON_IsNumber(e)) {
        snprintf(val, sizeof val, "%.17g", e->valuedouble);
    } else if (cJSON_IsArray(e)) {
        const cJSON *x;
        size_t off = 0;
        val[0] = '\0';
        cJSON_ArrayForEach(x, e) {
            int w;
            if (!cJSON_IsString(x)) continue;
            w = snprintf(val + off, sizeof val - off, "%s%s", off ? "," : "", x->valuestring);
            if (w < 0 || (size_t)w >= sizeof val - off) {
                *bad = 1;
                return NULL;
            }
            off += (size_t)w;
        }
    } else {
        *bad = 1;
        return NULL;
    }
    return strdup(val);
}

/* Turns the JSON object of --config into "--key value" arguments (*out, n_out of them;
 * free with free_args). Returns 0 or the exit code of an error. */
static int config_args(const char *path, char ***out, int *n_out) {
    FILE *f = fopen(path, "rb");
    long len;
    char *text;
    cJSON *j, *e;
    char **args;
    int n = 0;
    if (!f) return cli_usage_error("train", "cannot read --config %s", path);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)(len > 0 ? len : 0) + 1);
    if (!text || len < 0 || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(text);
        return cli_usage_error("train", "cannot read --config %s", path);
    }
    fclose(f);
    text[len] = '\0';
    j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return cli_usage_error("train", "--config %s is not a JSON object", path);
    }
    args = calloc((size_t)cJSON_GetArraySize(j) * 2 + 1, sizeof *args);
    if (!args) {
        cJSON_Delete(j);
        return cli_fail("train", MC_OK, "out of memory reading --config %s", path);
    }
    cJSON_ArrayForEach(e, j) {
        char key[96];
        size_t k;
        int bad = 0;
        snprintf(key, sizeof key, "--%s", e->string);
        for (k = 2; key[k]; k++)
            if (key[k] == '_') key[k] = '-';
        if (cJSON_IsBool(e) && !cJSON_IsTrue(e)) continue;
        args[n] = strdup(key);
        if (args[n] && !cJSON_IsBool(e)) args[++n] = config_value(e, &bad);
        if (!args[n]) {
            int rc = bad ? cli_usage_error("train", "--config key '%s' has an unsupported value",
                                           e->string)
                         : cli_fail("train", MC_OK, "out of memory reading --config %s", path);
            cJSON_Delete(j);
            free_args(args, n);
            return rc;
        }
        n++;
    }
    cJSON_Delete(j);
    *out = args;
    *n_out = n;
    return 0;
}

static int on_progress(const mc_train_progress *p, void *user) {
    (void)user;
    if (p->is_eval) {
        printf("step %d/%d | val loss %.4f | val ppl %.2f\n", p->step, p->total_steps, p->val_loss,
               exp(p->val_loss));
    } else {
        long eta = (long)(p->eta_s + 0.5);
        printf("step %d/%d | loss %.4f | lr %.3e | grad %.3f | %.0f tok/s | ETA %02ld:%02ld:%02ld | "
               "peak %.2f GB\n", p->step, p->total_steps, p->loss, p->lr, p->grad_norm,
               p->tokens_per_s, eta / 3600, eta / 60 % 60, eta % 60, (double)p->peak_rss / 1e9);
    }
    fflush(stdout);
    return 0;
}

int cmd_train(int argc, char **argv) {
    train_opts o;
    char **cargs = NULL;
    int n_cargs = 0, i, rc;
    mc_model *m = NULL;
    mc_tokenizer *tok = NULL;
    mc_adapter *a = NULL;
    mc_model_params mp = mc_model_default_params();
    mc_train_result res;
    mc_status s;
    memset(&o, 0, sizeof o);
    o.tp = mc_train_default_params();
    o.tp.steps_per_report = 10;
    o.lora = mc_lora_default_params();
    for (i = 1; i < argc; i++) /* --config first, so command-line flags override it */
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            free_args(cargs, n_cargs); /* the last --config wins */
            cargs = NULL;
            n_cargs = 0;
            rc = config_args(argv[i + 1], &cargs, &n_cargs);
            if (rc) return rc;
        }
    for (i = 0; i < n_cargs; i++) {
        rc = apply_opt(&o, n_cargs, cargs, &i);
        if (rc) goto out;
    }
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (++i >= argc) {
                rc = cli_usage_error("train", "--config needs a file");
                goto out;
            }
            continue;
        }
        rc = apply_opt(&o, argc, argv, &i);
        if (rc) goto out;
    }
    rc = 2;
    if (!o.model) { cli_usage_error("train", "--model DIR is required"); goto out; }
    if (!o.tp.train_path) { cli_usage_error("train", "--data is required"); goto out; }
    if (!o.tp.adapter_path) { cli_usage_error("train", "--adapter-path OUT is required"); goto out; }
    if (o.targets && parse_targets(o.targets, &o.lora.targets) != 0) {
        cli_usage_error("train", "--lora-targets takes q,k,v,o,gate,up,down or all");
        goto out;
    }
    rc = 1;
    cli_install_log(0);
    mp.n_threads = (int)o.threads;
    if (o.device) mp.device = o.device;
    s = mc_model_load(o.model, &mp, &m);
    if (s != MC_OK) { cli_fail("train", s, "cannot load %s", o.model); goto out; }
    s = mc_tokenizer_load(o.tok_path ? o.tok_path : o.model, &tok);
    if (s != MC_OK && o.tok_path) { cli_fail("train", s, "cannot load the tokenizer"); goto out; }
    o.tp.tokenizer = s == MC_OK ? tok : NULL;
    s = o.resume_adapter ? mc_adapter_load(m, o.resume_adapter, &a) : mc_adapter_create(m, &o.lora, &a);
    if (s != MC_OK) { cli_fail("train", s, "cannot set up the adapter"); goto out; }
    printf("training %zu LoRA parameters on %s\n", mc_adapter_n_params(a), o.tp.train_path);
    o.tp.on_progress = on_progress;
    s = mc_train(m, a, &o.tp, &res);
    if (s != MC_OK) { cli_fail("train", s, "training stopped"); goto out; }
    if (res.n_truncated) printf("%zu training examples were truncated to %d tokens\n",
                                res.n_truncated, o.tp.max_seq_length);
    if (!isnan(res.val_loss)) printf("final val loss %.4f (ppl %.2f)\n", res.val_loss, exp(res.val_loss));
    if (!isnan(res.test_loss)) printf("test loss %.4f (ppl %.2f)\n", res.test_loss, exp(res.test_loss));
    printf("saved adapter to %s (%d steps, %lld tokens, %.1f s)\n", o.tp.adapter_path, res.steps,
           res.tokens, res.seconds);
    rc = 0;
out:
    if (rc == 3) {
        fputs(k_train_help, stdout);
        rc = 0;
    }
    free_args(cargs, n_cargs);
    mc_adapter_free(a);
    mc_tokenizer_free(tok);
    mc_model_free(m);
    return rc;
}
