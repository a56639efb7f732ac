/* gen_test_util.h - greedy generation a step ahead (the backend's argmax_queue) against the
 * same generation one step at a time, for the CPU and CUDA tests. */
#ifndef MC_GEN_TEST_UTIL_H
#define MC_GEN_TEST_UTIL_H

#include "gen/gen.h"
#include "model/model.h"
#include "test.h"

/* Generates prompt [n] in sequence 0 of ctx twice with p (greedy): a step ahead (the
 * backend marked async for it, as a GPU's is), then with the backend's argmax_queue hidden
 * (argmax_rows a step at a time). Returns 1 when the tokens, stop reason, decode steps and
 * the sequence's n_past afterwards agree; *ahead keeps the first run's result (cleared by
 * the caller). */
static inline int t_ahead_matches(mc_context *ctx, const int32_t *prompt, size_t n,
                                  mc_generate_params p, mc_generation *ahead) {
    mc_backend *be = ctx->model->be;
    mc_status (*q)(mc_backend *, int32_t *, const void *, int, int) = be->argmax_queue;
    mc_generation one;
    int past_ahead, same;
    const bool async = be->async;
    CHECK(q != NULL);
    be->async = true;
    CHECK_OK(mc_generate(ctx, prompt, n, &p, ahead));
    be->async = async;
    past_ahead = ctx->fwd->n_past[0];
    be->argmax_queue = NULL;
    CHECK_OK(mc_generate(ctx, prompt, n, &p, &one));
    be->argmax_queue = q;
    same = ahead->n_tokens == one.n_tokens && ahead->stop_reason == one.stop_reason &&
           ahead->decode_steps == one.decode_steps && past_ahead == ctx->fwd->n_past[0] &&
           (ahead->n_tokens == 0 ||
            memcmp(ahead->tokens, one.tokens, ahead->n_tokens * sizeof(int32_t)) == 0);
    if (!same)
        fprintf(stderr, "  a step ahead: %zu tokens (%s), %d steps, n_past %d; one at a time: "
                "%zu tokens (%s), %d steps, n_past %d\n", ahead->n_tokens,
                mc_stop_reason_name(ahead->stop_reason), (int)ahead->decode_steps, past_ahead,
                one.n_tokens, mc_stop_reason_name(one.stop_reason), (int)one.decode_steps,
                ctx->fwd->n_past[0]);
    mc_generation_clear(&one);
    return same;
}

/* The stops a generation a step ahead must handle as the loop one step at a time does:
 * max_tokens, the context filling, EOS on the first token (no step queued ahead) and on the
 * first token that differs from the first (a step queued ahead for it and dropped; the
 * prompt must make one within 7 tokens), max_tokens 1 and 2; n_ctx must be prompt + 6.
 * Returns the number of cases that agreed (6 when all did). */
static inline int t_ahead_stops(mc_context *ctx, const int32_t *prompt, size_t n) {
    mc_generate_params p = mc_generate_default_params();
    mc_generation g;
    int32_t eos;
    int ok = 0;
    p.sampler.temperature = 0.0f;
    p.ignore_eos = 1;
    p.max_tokens = 4;
    ok += t_ahead_matches(ctx, prompt, n, p, &g); /* max_tokens */
    CHECK_INT(g.stop_reason, MC_STOP_MAX_TOKENS);
    mc_generation_clear(&g);
    p.max_tokens = 100;
    ok += t_ahead_matches(ctx, prompt, n, p, &g); /* the context fills: 6 + 1 tokens */
    CHECK_INT(g.stop_reason, MC_STOP_CONTEXT_FULL);
    CHECK_INT((int)g.n_tokens, 7);
    {   /* EOS: the first token unlike the first, which ends the generation after it */
        size_t j = 1;
        while (j < g.n_tokens && g.tokens[j] == g.tokens[0]) j++;
        CHECK(j < g.n_tokens); /* else the prompt tests no step dropped */
        eos = j < g.n_tokens ? g.tokens[j] : -1;
        p.ignore_eos = 0;
        p.eos_ids = &eos;
        p.n_eos = 1;
        mc_generation_clear(&g);
        ok += t_ahead_matches(ctx, prompt, n, p, &g);
        CHECK_INT(g.stop_reason, MC_STOP_EOS);
        CHECK_INT((int)g.n_tokens, (int)j);
        CHECK_INT((int)g.decode_steps, (int)j);
        CHECK_INT(ctx->fwd->n_past[0], (int)(n + j));
        eos = g.n_tokens > 0 ? g.tokens[0] : eos;
        mc_generation_clear(&g);
    }
    ok += t_ahead_matches(ctx, prompt, n, p, &g); /* EOS as the first token */
    CHECK_INT((int)g.n_tokens, 0);
    mc_generation_clear(&g);
    p.n_eos = 0;
    p.max_tokens = 1;
    ok += t_ahead_matches(ctx, prompt, n, p, &g); /* one token: no step */
    CHECK_INT((int)g.n_tokens, 1);
    CHECK_INT(g.decode_steps, 0);
    mc_generation_clear(&g);
    p.max_tokens = 2;
    ok += t_ahead_matches(ctx, prompt, n, p, &g); /* two tokens: one step, none ahead */
    CHECK_INT(g.decode_steps, 1);
    mc_generation_clear(&g);
    return ok;
}

#endif /* MC_GEN_TEST_UTIL_H */
