/* cmd_generate.c - `mcandle generate` (stream a continuation of a prompt) and
 * `mcandle init` (write a random-weight checkpoint). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"

static const char k_gen_help[] =
    "usage: mcandle generate --model DIR (--prompt S | --prompt-ids 1,2,3) [options]\n"
    "\n"
    "Streams a continuation of the prompt to stdout; prefill and decode speed go to stderr.\n"
    "\n"
    "  --prompt S            prompt text (needs tokenizer.json in DIR or --tokenizer)\n"
    "  --prompt-ids 1,2,3    prompt as token ids (no tokenizer needed)\n"
    "  --chat                apply the chat template (user turn + generation prompt)\n"
    "  --system S            system message for --chat\n"
    "  --tokenizer PATH      tokenizer.json or a folder holding it (default: DIR)\n"
    "  --max-tokens N        most tokens to generate (default 256)\n"
    "  --ignore-eos          do not stop at end-of-sequence: exactly --max-tokens tokens\n"
    "  --temp T              temperature; 0 = greedy (default 0.8)\n"
    "  --top-k K             keep the K most likely tokens; 0 = off (default 40)\n"
    "  --top-p P             nucleus sampling in (0, 1]; 1 = off (default 0.95)\n"
    "  --min-p M             drop tokens below M x the top probability (default 0.05)\n"
    "  --repeat-penalty R    Hugging Face repetition penalty; 1 = off (default 1)\n"
    "  --presence-penalty X  OpenAI presence penalty (default 0)\n"
    "  --frequency-penalty X OpenAI frequency penalty (default 0)\n"
    "  --seed N              sampling seed (default 0)\n"
    "  --stop S              stop string (repeatable); needs a tokenizer\n"
    "  --print-ids           print the generated ids (space-separated) instead of text\n"
    "  --stats-json FILE     write prompt/decode statistics as JSON\n"
    "  --ctx N               context positions (default: min(model's, 4096))\n"
    "  --threads N           CPU threads (default: all cores)\n"
    "  --device D            cpu (default) or cuda (builds with the CUDA backend)\n"
    "  --adapter DIR         apply a LoRA adapter (PEFT or mlx-lm folder)\n"
    "  --adapter-scale S     multiply the adapter's scale (default 1)\n"
    "\n"
    "Ctrl-C stops generation cleanly and keeps what was generated.\n";

static const char k_init_help[] =
    "usage: mcandle init (--preset NAME | --config FILE.json) [--dtype bf16|f16|f32]\n"
    "                    [--seed N] [--init-std X] --out DIR\n"
    "\n"
    "Writes a random-weight Hugging Face checkpoint (config.json, generation_config.json,\n"
    "model.safetensors) for demos and benchmarks. Presets: tiny, qwen2.5-coder-0.5b,\n"
    "qwen2.5-coder-1.5b, qwen2.5-coder-3b, qwen2.5-coder-7b (their exact configurations).\n"
    "Default dtype bf16, seed 0. Matrices are uniform with standard deviation --init-std\n"
    "(default 0.02, as Hugging Face initialises); norm weights 1, biases 0.\n";

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

typedef struct stream_state {
    int print_ids;
    int first;
} stream_state;

/* Streams text (or ids) as it becomes visible; stops on Ctrl-C. */
static int on_token(int seq, const char *text, size_t len, int32_t token, float logprob,
                    void *user) {
    stream_state *st = user;
    (void)seq;
    (void)logprob;
    if (st->print_ids) {
        if (token >= 0) {
            printf(st->first ? "%d" : " %d", token);
            st->first = 0;
        }
    } else if (len) {
        fwrite(text, 1, len, stdout);
    }
    fflush(stdout);
    return g_interrupted != 0;
}

/* Options of one generate call. */
typedef struct gen_opts {
    const char *dir, *prompt, *prompt_ids, *system, *tok_path, *stats, *adapter, *device;
    int chat, print_ids;
    long threads, ctx;
    double adapter_scale;
    const char *stops[16];
    int n_stops;
    mc_generate_params gp;
} gen_opts;

/* Parses the options; returns 0, or the exit code of a usage error (or 3 for --help). */
static int parse_gen(int argc, char **argv, gen_opts *o) {
    int i, missing = 0;
    const char *v = NULL;
    double d;
    long n;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(k_gen_help, stdout);
            return 3;
        }
        if (!strcmp(a, "--chat")) { o->chat = 1; continue; }
        if (!strcmp(a, "--print-ids")) { o->print_ids = 1; continue; }
        if (!strcmp(a, "--ignore-eos")) { o->gp.ignore_eos = 1; continue; }
        if (cli_opt(argc, argv, &i, "--model", &o->dir, &missing) ||
            cli_opt(argc, argv, &i, "--prompt", &o->prompt, &missing) ||
            cli_opt(argc, argv, &i, "--prompt-ids", &o->prompt_ids, &missing) ||
            cli_opt(argc, argv, &i, "--system", &o->system, &missing) ||
            cli_opt(argc, argv, &i, "--tokenizer", &o->tok_path, &missing) ||
            cli_opt(argc, argv, &i, "--stats-json", &o->stats, &missing) ||
            cli_opt(argc, argv, &i, "--adapter", &o->adapter, &missing) ||
            cli_opt(argc, argv, &i, "--device", &o->device, &missing)) {
            if (missing) break;
            continue;
        }
        if (cli_opt(argc, argv, &i, "--stop", &v, &missing)) {
            if (missing) break;
            if (o->n_stops == 16) return cli_usage_error("generate", "at most 16 --stop strings");
            if (!*v) return cli_usage_error("generate", "--stop needs a non-empty string");
            o->stops[o->n_stops++] = v;
            continue;
        }
#define INT_OPT(name, lo, hi, dst)                                                          \
        if (cli_opt(argc, argv, &i, name, &v, &missing)) {                                  \
            if (missing) break;                                                             \
            if (cli_parse_int(v, lo, hi, &n) != 0)                                          \
                return cli_usage_error("generate", "%s must be an integer in %ld..%ld (got '%s')", \
                                       name, (long)(lo), (long)(hi), v);                    \
            dst;                                                                            \
            continue;                                                                       \
        }
#define FLOAT_OPT(name, dst)                                                                \
        if (cli_opt(argc, argv, &i, name, &v, &missing)) {                                  \
            if (missing) break;                                                             \
            if (cli_parse_float(v, &d) != 0)                                                \
                return cli_usage_error("generate", "%s must be a number (got '%s')", name, v); \
            dst;                                                                            \
            continue;                                                                       \
        }
        INT_OPT("--max-tokens", 1, 1 << 24, o->gp.max_tokens = (int)n)
        INT_OPT("--top-k", 0, 1 << 30, o->gp.sampler.top_k = (int32_t)n)
        INT_OPT("--seed", 0, 0x7fffffffL, o->gp.sampler.seed = (uint64_t)n)
        INT_OPT("--threads", 1, 4096, o->threads = n)
        INT_OPT("--ctx", 1, 1 << 24, o->ctx = n)
        FLOAT_OPT("--temp", o->gp.sampler.temperature = (float)d)
        FLOAT_OPT("--top-p", o->gp.sampler.top_p = (float)d)
        FLOAT_OPT("--min-p", o->gp.sampler.min_p = (float)d)
        FLOAT_OPT("--repeat-penalty", o->gp.sampler.repetition_penalty = (float)d)
        FLOAT_OPT("--presence-penalty", o->gp.sampler.presence_penalty = (float)d)
        FLOAT_OPT("--frequency-penalty", o->gp.sampler.frequency_penalty = (float)d)
        FLOAT_OPT("--adapter-scale", o->adapter_scale = d)
#undef INT_OPT
#undef FLOAT_OPT
        return cli_usage_error("generate", "unknown option '%s'", a);
    }
    if (missing) return cli_usage_error("generate", "option '%s' needs a value", argv[argc - 1]);
    if (!o->dir) return cli_usage_error("generate", "--model DIR is required");
    if (!o->prompt == !o->prompt_ids)
        return cli_usage_error("generate", "give exactly one of --prompt and --prompt-ids");
    if (o->chat && o->prompt_ids)
        return cli_usage_error("generate", "--chat needs a text --prompt, not --prompt-ids");
    if (o->system && !o->chat) return cli_usage_error("generate", "--system needs --chat");
    return 0;
}

/* Builds the prompt ids from --prompt-ids, or from the (chat-rendered) --prompt text. */
static int prompt_ids(const gen_opts *o, const mc_tokenizer *tok, int32_t **ids, size_t *n) {
    mc_status s;
    char *text = NULL;
    size_t len, cap;
    if (!o->prompt) { /* parse_gen requires exactly one of --prompt and --prompt-ids */
        if (cli_parse_ids(o->prompt_ids, ids, n) != 0)
            return cli_usage_error("generate", "--prompt-ids must be comma-separated token ids");
        return 0;
    }
    if (o->chat) {
        mc_chat_message msgs[2];
        size_t k = 0, need = 0;
        mc_chat_params cp = mc_chat_default_params();
        if (o->system) {
            msgs[k].role = "system";
            msgs[k++].content = o->system;
        }
        msgs[k].role = "user";
        msgs[k++].content = o->prompt;
        s = mc_chat_render(tok, msgs, k, &cp, NULL, 0, &need);
        if (s != MC_OK && s != MC_ERR_BUFFER_TOO_SMALL) return cli_fail("generate", s, "--chat");
        text = malloc(need + 1);
        if (!text) return cli_fail("generate", MC_OK, "out of memory");
        s = mc_chat_render(tok, msgs, k, &cp, text, need + 1, &need);
        if (s != MC_OK) {
            free(text);
            return cli_fail("generate", s, "--chat");
        }
        len = need;
    } else {
        len = strlen(o->prompt);
    }
    cap = len + 8;
    *ids = malloc(cap * sizeof **ids);
    if (!*ids) {
        free(text);
        return cli_fail("generate", MC_OK, "out of memory");
    }
    s = mc_tokenizer_encode(tok, text ? text : o->prompt, len, 1, *ids, cap, n);
    free(text);
    if (s != MC_OK) return cli_fail("generate", s, "cannot tokenize the prompt");
    return 0;
}

static void write_stats(const char *path, const mc_generation *g) {
    FILE *f = fopen(path, "w");
    struct rusage ru;
    double pf = g->prefill_seconds > 0 ? (double)g->prompt_tokens / g->prefill_seconds : 0;
    double dc = g->decode_seconds > 0 ? (double)g->decode_steps / g->decode_seconds : 0;
    int bad;
    if (!f) {
        fprintf(stderr, "mcandle generate: cannot write %s\n", path);
        return;
    }
    getrusage(RUSAGE_SELF, &ru);
    fprintf(f, "{\"prompt_tokens\": %zu, \"prefill_tokens_per_s\": %.3f, \"generated_tokens\": %zu, "
            "\"decode_tokens_per_s\": %.3f, \"peak_rss_bytes\": %llu, \"stop_reason\": \"%s\"}\n",
            g->prompt_tokens, pf, g->n_tokens, dc, (unsigned long long)ru.ru_maxrss * 1024ull,
            mc_stop_reason_name(g->stop_reason));
    bad = ferror(f);
    if (fclose(f) != 0 || bad) fprintf(stderr, "mcandle generate: cannot write %s\n", path);
}

int cmd_generate(int argc, char **argv) {
    gen_opts o;
    mc_model *m = NULL;
    mc_tokenizer *tok = NULL;
    mc_adapter *ad = NULL;
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    mc_model_params mp = mc_model_default_params();
    mc_generation g;
    int32_t *ids = NULL;
    size_t n = 0;
    stream_state st = {0, 1};
    mc_status s;
    int rc;
    memset(&o, 0, sizeof o);
    memset(&g, 0, sizeof g);
    o.gp = mc_generate_default_params();
    o.adapter_scale = 1.0;
    rc = parse_gen(argc, argv, &o);
    if (rc) return rc == 3 ? 0 : rc;
    cli_install_log(0);
    mp.n_threads = (int)o.threads;
    if (o.device) mp.device = o.device;
    s = mc_model_load(o.dir, &mp, &m);
    if (s != MC_OK) return cli_fail("generate", s, "cannot load %s", o.dir);
    rc = 1;
    if (o.prompt || o.n_stops || !o.print_ids) {
        const char *tp = o.tok_path ? o.tok_path : o.dir;
        s = mc_tokenizer_load(tp, &tok);
        if (s != MC_OK && (o.prompt || o.n_stops)) {
            cli_fail("generate", s, "cannot load a tokenizer from %s", tp);
            goto done;
        }
        if (s != MC_OK) st.print_ids = 1; /* ids only: no tokenizer to decode with */
    }
    if (o.print_ids) st.print_ids = 1;
    rc = prompt_ids(&o, tok, &ids, &n);
    if (rc) goto done;
    rc = 1;
    if (o.adapter) {
        s = mc_adapter_load(m, o.adapter, &ad);
        if (s != MC_OK) {
            cli_fail("generate", s, "cannot load the adapter %s", o.adapter);
            goto done;
        }
    }
    cp.n_ctx = (int)o.ctx;
    s = mc_context_create(m, &cp, &ctx);
    if (s == MC_OK && ad) s = mc_context_set_adapter(ctx, ad, (float)o.adapter_scale);
    if (s != MC_OK) {
        cli_fail("generate", s, "cannot create a context");
        goto done;
    }
    o.gp.tokenizer = st.print_ids && !o.n_stops ? NULL : tok;
    o.gp.stop = o.stops;
    o.gp.n_stop = o.n_stops;
    o.gp.on_token = on_token;
    o.gp.user = &st;
    signal(SIGINT, on_sigint);
    s = mc_generate(ctx, ids, n, &o.gp, &g);
    signal(SIGINT, SIG_DFL);
    if (s != MC_OK) {
        cli_fail("generate", s, "generation failed");
        goto done;
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "prompt: %zu tokens, %.2f tokens/s; generated: %zu tokens, %.2f tokens/s; "
            "stop: %s\n", g.prompt_tokens,
            g.prefill_seconds > 0 ? (double)g.prompt_tokens / g.prefill_seconds : 0.0, g.n_tokens,
            g.decode_seconds > 0 ? (double)g.decode_steps / g.decode_seconds : 0.0,
            mc_stop_reason_name(g.stop_reason));
    if (o.stats) write_stats(o.stats, &g);
    rc = 0;
done:
    mc_generation_clear(&g);
    free(ids);
    mc_context_free(ctx);
    mc_adapter_free(ad);
    mc_tokenizer_free(tok);
    mc_model_free(m);
    return rc;
}

int cmd_init(int argc, char **argv) {
    const char *preset = NULL, *config = NULL, *out = NULL, *dt = "bf16", *seed_s = NULL;
    const char *std_s = NULL;
    long seed = 0;
    double init_std = 0.02;
    int i, missing = 0;
    mc_dtype dtype;
    mc_status s;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(k_init_help, stdout);
            return 0;
        }
        if (cli_opt(argc, argv, &i, "--preset", &preset, &missing) ||
            cli_opt(argc, argv, &i, "--config", &config, &missing) ||
            cli_opt(argc, argv, &i, "--out", &out, &missing) ||
            cli_opt(argc, argv, &i, "--dtype", &dt, &missing) ||
            cli_opt(argc, argv, &i, "--seed", &seed_s, &missing) ||
            cli_opt(argc, argv, &i, "--init-std", &std_s, &missing))
            continue;
        return cli_usage_error("init", "unknown option '%s'", argv[i]);
    }
    if (missing) return cli_usage_error("init", "option '%s' needs a value", argv[argc - 1]);
    if (!out) return cli_usage_error("init", "--out DIR is required");
    if (!preset == !config) return cli_usage_error("init", "give exactly one of --preset and --config");
    if (!strcmp(dt, "bf16")) dtype = MC_BF16;
    else if (!strcmp(dt, "f16")) dtype = MC_F16;
    else if (!strcmp(dt, "f32")) dtype = MC_F32;
    else return cli_usage_error("init", "--dtype must be bf16, f16 or f32 (got '%s')", dt);
    if (seed_s && cli_parse_int(seed_s, 0, 0x7fffffffL, &seed) != 0)
        return cli_usage_error("init", "--seed must be a non-negative integer (got '%s')", seed_s);
    if (std_s && (cli_parse_float(std_s, &init_std) != 0 || !(init_std > 0 && init_std <= 10)))
        return cli_usage_error("init", "--init-std must be a number in (0, 10] (got '%s')", std_s);
    s = mc_checkpoint_init_std(preset, config, dtype, (uint64_t)seed, (float)init_std, out);
    if (s != MC_OK) return cli_fail("init", s, "cannot write %s", out);
    printf("wrote %s\n", out);
    return 0;
}
