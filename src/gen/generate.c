/* generate.c - the generation loop: prefill, then sample / stream / step until a stop
 * condition, for one sequence or several decoded together. */
#include <math.h>

#include "gen.h"
#include "sampler.h"
#include "stop.h"

const char *mc_stop_reason_name(mc_stop_reason r) {
    switch (r) {
    case MC_STOP_NONE: return "none";
    case MC_STOP_EOS: return "eos";
    case MC_STOP_MAX_TOKENS: return "max_tokens";
    case MC_STOP_STRING: return "stop_string";
    case MC_STOP_CONTEXT_FULL: return "context_full";
    case MC_STOP_CALLBACK: return "callback";
    }
    return "none";
}

mc_generate_params mc_generate_default_params(void) {
    mc_generate_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = 256;
    p.sampler = mc_sampler_default_params();
    return p;
}

void mc_generation_clear(mc_generation *g) {
    if (!g) return;
    mc_free(g->tokens);
    mc_free(g->text);
    memset(g, 0, sizeof *g);
}

/* State of one sequence being generated. */
typedef struct gen_seq {
    mc_sampler *sampler;
    mc_stopper stopper;
    float *own;          /* [V] this sequence's buffer: its prompt's last logits */
    const float *logits; /* [V] logits for the next token: own, or a row of the last step's */
    int32_t next;        /* the next token when chosen on the device (has_next) */
    bool has_next;
    mc_generation *out;
    size_t tok_cap, text_cap;
    bool active;
} gen_seq;

/* Appends bytes to the result text (kept NUL-terminated). */
static mc_status append_text(gen_seq *g, const char *s, size_t n) {
    mc_generation *o = g->out;
    if (o->text_len + n + 1 > g->text_cap) {
        size_t cap = MC_MAX(2 * g->text_cap, o->text_len + n + 64);
        char *t = mc_realloc(o->text, cap);
        if (!t) return mc_fail(MC_ERR_OOM, "out of memory for generated text");
        o->text = t;
        g->text_cap = cap;
    }
    memcpy(o->text + o->text_len, s, n);
    o->text_len += n;
    o->text[o->text_len] = '\0';
    return MC_OK;
}

static mc_status append_token(gen_seq *g, int32_t tok) {
    mc_generation *o = g->out;
    if (o->n_tokens == g->tok_cap) {
        size_t cap = MC_MAX(2 * g->tok_cap, (size_t)64);
        int32_t *t = mc_realloc(o->tokens, cap * sizeof *t);
        if (!t) return mc_fail(MC_ERR_OOM, "out of memory for generated tokens");
        o->tokens = t;
        g->tok_cap = cap;
    }
    o->tokens[o->n_tokens++] = tok;
    return MC_OK;
}

static bool is_eos(const mc_generate_params *p, const int32_t *eos, int n_eos, int32_t tok) {
    int i;
    if (p->ignore_eos) return false;
    for (i = 0; i < n_eos; i++)
        if (eos[i] == tok) return true;
    return false;
}

/* Ends sequence i: flushes held-back text (to the result and the callback). */
static mc_status finish(gen_seq *g, int i, mc_stop_reason why, const mc_generate_params *p) {
    mc_stop_out so;
    g->active = false;
    g->out->stop_reason = why;
    if (!p->tokenizer) return MC_OK;
    mc_stopper_flush(&g->stopper, &so);
    if (so.len == 0) return MC_OK;
    if (p->on_token) (void)p->on_token(i, so.text, so.len, -1, 0.0f, p->user);
    return append_text(g, so.text, so.len);
}

/* Decodes token id and pushes its bytes through the stop-string matcher; what becomes
 * visible (*so) is appended to the result text. A padded-vocabulary id (beyond the
 * tokenizer's) has no text; a token longer than the stack buffer goes through the heap. */
static mc_status push_token_text(gen_seq *g, const mc_tokenizer *tk, int32_t id, mc_stop_out *so) {
    char piece[256], *big = NULL;
    const char *text = piece;
    size_t plen = 0;
    mc_status s = mc_tokenizer_token_bytes(tk, id, piece, sizeof piece, &plen);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        big = mc_malloc(plen);
        if (!big) return mc_fail(MC_ERR_OOM, "out of memory for a token of %zu bytes", plen);
        s = mc_tokenizer_token_bytes(tk, id, big, plen, &plen);
        text = big;
    }
    if (s == MC_ERR_TOKEN_ID) {
        plen = 0;
        s = MC_OK;
    }
    if (s == MC_OK) s = mc_stopper_push(&g->stopper, text, plen, so);
    if (s == MC_OK && so->len) s = append_text(g, so->text, so->len);
    mc_free(big);
    return s;
}

/* Samples the next token of sequence i and handles it. Returns MC_OK with g->active
 * telling whether the sequence needs a decode step for `*tok`. */
static mc_status next_token(gen_seq *g, int i, const mc_generate_params *p, const int32_t *eos,
                            int n_eos, int n_past, int n_ctx, int32_t *tok) {
    float lp = 0.0f;
    mc_stop_out so;
    int stop_cb;
    mc_status s;
    if (g->has_next) { /* the backend's argmax (device_greedy): recorded as the sampler would */
        g->has_next = false;
        *tok = g->next;
        s = mc_sampler_accept(g->sampler, *tok);
    } else { /* the log-probability (a pass over the vocabulary) only for a callback */
        s = mc_sampler_sample(g->sampler, g->logits, tok, p->on_token ? &lp : NULL);
    }
    if (s != MC_OK) return s;
    if (is_eos(p, eos, n_eos, *tok)) return finish(g, i, MC_STOP_EOS, p);
    s = append_token(g, *tok);
    if (s != MC_OK) return s;
    so.text = "";
    so.len = 0;
    so.stopped = 0;
    if (p->tokenizer) {
        s = push_token_text(g, p->tokenizer, *tok, &so);
        if (s != MC_OK) return s;
    }
    stop_cb = p->on_token ? p->on_token(i, so.text, so.len, *tok, lp, p->user) : 0;
    if (so.stopped) return finish(g, i, MC_STOP_STRING, p);
    if (stop_cb) return finish(g, i, MC_STOP_CALLBACK, p);
    if (g->out->n_tokens >= (size_t)p->max_tokens) return finish(g, i, MC_STOP_MAX_TOKENS, p);
    if (n_past >= n_ctx) return finish(g, i, MC_STOP_CONTEXT_FULL, p);
    return MC_OK;
}

/* True when each next token is the argmax of the raw logits and nothing else reads them
 * (greedy, no logit bias or penalty, no token callback, whose log-probability needs the
 * logits): the backend then picks it where the logits are, and a decode step moves one
 * int per sequence instead of a row of logits. */
static bool device_greedy(const mc_generate_params *p, const mc_backend *be) {
    const mc_sampler_params *sp = &p->sampler;
    return be->argmax_rows && sp->temperature == 0.0f && sp->n_logit_bias == 0 &&
           sp->repetition_penalty == 1.0f && sp->presence_penalty == 0.0f &&
           sp->frequency_penalty == 0.0f && !p->on_token;
}

/* Greedy decoding of sequence 0 a step ahead (device_greedy, one sequence, an async
 * backend with argmax_queue): while the device runs the step of one token, the step of the
 * next (the argmax the running step leaves on the device) is queued already, so the device
 * never waits for the host between steps. Tokens, stops and n_past come out as the loop of
 * mc_generate_batch gives them: a step queued for a token that ends the generation is
 * dropped (mc_fwd_step_drop). */
static mc_status generate_ahead(gen_seq *g, const mc_generate_params *p, const int32_t *eos,
                                int n_eos, mc_fwd *f) {
    int32_t tok;
    int queued = 0; /* steps queued and not waited for */
    mc_status s = next_token(g, 0, p, eos, n_eos, f->n_past[0], f->n_ctx, &tok);
    if (s == MC_OK && g->active) {
        s = mc_fwd_step_queue(f, 0, &tok);
        queued = s == MC_OK;
    }
    while (s == MC_OK && g->active) {
        /* the next token's step, queued when a token then would not stop the generation
         * by count or context (exactly next_token's tests) */
        const int n_past = f->n_past[0];
        const bool ahead = g->out->n_tokens + 1 < (size_t)p->max_tokens && n_past < f->n_ctx;
        if (ahead) {
            s = mc_fwd_step_queue(f, 0, NULL);
            if (s != MC_OK) break;
            queued++;
        }
        s = mc_fwd_step_wait(f, &g->next);
        queued--;
        if (s != MC_OK) break;
        g->out->decode_steps++;
        g->has_next = true;
        s = next_token(g, 0, p, eos, n_eos, ahead ? n_past : f->n_past[0], f->n_ctx, &tok);
        if (s != MC_OK) break;
        if (!g->active && ahead) mc_fwd_step_drop(f, 0);
    }
    while (queued-- > 0) { /* a dropped step: its argmax is not used, nor its failure */
        int32_t unused;
        (void)mc_fwd_step_wait(f, &unused);
    }
    return s;
}

/* Checks the parameters shared by single and batch generation. */
static mc_status check_params(const mc_generate_params *p) {
    int i;
    if (p->max_tokens <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "max_tokens must be > 0 (got %d)", p->max_tokens);
    if (p->n_stop < 0 || p->n_eos < 0 || (p->n_stop > 0 && !p->stop) || (p->n_eos > 0 && !p->eos_ids))
        return mc_fail(MC_ERR_INVALID_ARG, "stop strings or eos ids: count and array disagree");
    if (p->n_stop > 0 && !p->tokenizer)
        return mc_fail(MC_ERR_INVALID_ARG, "stop strings need a tokenizer to decode text");
    for (i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0])
            return mc_fail(MC_ERR_INVALID_ARG, "stop string %d is empty", i);
    return MC_OK;
}

static void seqs_free(gen_seq *g, int n) {
    int i;
    if (!g) return;
    for (i = 0; i < n; i++) {
        mc_sampler_free(g[i].sampler);
        mc_stopper_free(&g[i].stopper);
        mc_free(g[i].own);
    }
    mc_free(g);
}

mc_status mc_generate_batch(mc_context *ctx, const int32_t *const *prompts, const size_t *n_prompt,
                            int n, const mc_generate_params *params, mc_generation *results) {
    mc_generate_params p = params ? *params : mc_generate_default_params();
    gen_seq *g = NULL;
    int *seqs = NULL, i, B, V, n_eos;
    int32_t *step_ids = NULL, *next_ids = NULL;
    bool on_device;
    float *step_logits = NULL;
    const int32_t *eos;
    mc_fwd *f;
    double t0;
    mc_status s;
    if (!ctx || !prompts || !n_prompt || !results)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_generate: NULL argument");
    f = ctx->fwd;
    if (n <= 0 || n > f->n_seq)
        return mc_fail(MC_ERR_INVALID_ARG, "%d prompts for a context of %d sequences", n, f->n_seq);
    /* every result is empty from here on, so a failure can clear them all */
    memset(results, 0, (size_t)n * sizeof *results);
    s = check_params(&p);
    if (s != MC_OK) return s;
    V = ctx->model->cfg.vocab_size;
    eos = p.eos_ids ? p.eos_ids : ctx->model->cfg.eos_token_ids;
    n_eos = p.eos_ids ? p.n_eos : ctx->model->cfg.n_eos;
    for (i = 0; i < n; i++) {
        if (!prompts[i] || n_prompt[i] == 0)
            return mc_fail(MC_ERR_INVALID_ARG, "prompt %d is empty", i);
        if (n_prompt[i] >= (size_t)f->n_ctx)
            return mc_fail(MC_ERR_CONTEXT_FULL, "prompt %d has %zu tokens; the context holds %d "
                           "positions, which leaves no room to generate", i, n_prompt[i], f->n_ctx);
    }
    g = mc_calloc((size_t)n, sizeof *g);
    seqs = mc_calloc((size_t)n, sizeof *seqs);
    step_ids = mc_calloc((size_t)n, sizeof *step_ids);
    next_ids = mc_calloc((size_t)n, sizeof *next_ids);
    on_device = device_greedy(&p, ctx->model->be);
    if (n > f->view_rows && !on_device)
        step_logits = mc_malloc((size_t)n * (size_t)V * sizeof *step_logits);
    if (!g || !seqs || !step_ids || !next_ids || (n > f->view_rows && !on_device && !step_logits)) {
        s = mc_fail(MC_ERR_OOM, "out of memory for generation state");
        goto done;
    }
    for (i = 0; i < n; i++) {
        mc_sampler_params sp = p.sampler;
        g[i].out = &results[i];
        sp.seed += (uint64_t)i;
        s = mc_sampler_create(&sp, V, &g[i].sampler);
        if (s == MC_OK) s = mc_sampler_accept_prompt(g[i].sampler, prompts[i], n_prompt[i]);
        if (s == MC_OK && p.tokenizer) s = mc_stopper_init(&g[i].stopper, p.stop, (size_t)p.n_stop);
        if (s != MC_OK) goto done;
        g[i].own = mc_malloc((size_t)V * sizeof(float));
        g[i].logits = g[i].own;
        if (!g[i].own) {
            s = mc_fail(MC_ERR_OOM, "out of memory for logits");
            goto done;
        }
    }
    /* prefill each prompt in its own sequence */
    for (i = 0; i < n; i++) {
        t0 = mc_time_now();
        mc_context_reset(ctx, i);
        s = mc_context_decode(ctx, i, prompts[i], n_prompt[i], g[i].own);
        if (s != MC_OK) goto done;
        results[i].prompt_tokens = n_prompt[i];
        results[i].prefill_seconds = mc_time_now() - t0;
        g[i].active = true;
    }
    /* sample, then one batched step for the sequences still running */
    t0 = mc_time_now();
    if (on_device && n == 1 && ctx->model->be->argmax_queue && ctx->model->be->async) {
        s = generate_ahead(&g[0], &p, eos, n_eos, f);
        if (s != MC_OK) goto done;
    }
    for (;;) { /* after generate_ahead, nothing is active */
        B = 0;
        for (i = 0; i < n; i++) {
            if (!g[i].active) continue;
            s = next_token(&g[i], i, &p, eos, n_eos, f->n_past[i], f->n_ctx, &step_ids[B]);
            if (s != MC_OK) goto done;
            if (g[i].active) seqs[B++] = i;
        }
        if (B == 0) break;
        if (on_device) {
            s = mc_fwd_step_argmax(f, seqs, step_ids, B, next_ids);
            if (s != MC_OK) goto done;
            for (i = 0; i < B; i++) {
                results[seqs[i]].decode_steps++;
                g[seqs[i]].next = next_ids[i];
                g[seqs[i]].has_next = true;
            }
            continue;
        }
        /* up to f->view_rows rows are read where the step leaves them (on a GPU: the
         * page-locked memory its copy engine wrote), more from a copy */
        s = mc_fwd_step(f, seqs, step_ids, B, B <= f->view_rows ? NULL : step_logits);
        if (s != MC_OK) goto done;
        {   /* a successful step of at most view_rows rows leaves them readable */
            const float *rows = B <= f->view_rows ? mc_fwd_logits(f) : step_logits;
            for (i = 0; i < B; i++) {
                results[seqs[i]].decode_steps++;
                g[seqs[i]].logits = rows + (size_t)i * (size_t)V;
            }
        }
    }
    for (i = 0; i < n; i++) results[i].decode_seconds = mc_time_now() - t0;
done:
    if (s != MC_OK && g)
        for (i = 0; i < n; i++) mc_generation_clear(&results[i]);
    seqs_free(g, n);
    mc_free(seqs);
    mc_free(step_ids);
    mc_free(next_ids);
    mc_free(step_logits);
    return s;
}

mc_status mc_generate(mc_context *ctx, const int32_t *prompt, size_t n_prompt,
                      const mc_generate_params *params, mc_generation *out) {
    return mc_generate_batch(ctx, &prompt, &n_prompt, 1, params, out);
}
