/* sampler.c - the sampler chain: logit bias, repetition / presence / frequency penalties,
 * then greedy argmax, or temperature with top-k, top-p and min-p truncation and one draw
 * from a seeded RNG. The contract and the stage order are in mcandle.h ("Sampling").
 *
 * Cost of one step over a vocabulary of V tokens: a copy of the logits, the penalties
 * over the history only, one pass for the maximum, one pass that tempers and gathers the
 * candidates (for small k, straight into a k-entry heap), then for a large top-k a
 * quickselect by count and for top-p a quickselect by probability mass (three-way
 * partitions, expected O(V); only the last few entries are sorted). The vocabulary is never sorted, yet each stage keeps the same set as a full
 * sort would (up to the rounding of the probability sums at the top-p boundary). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

/* A candidate token: x = (logit - max) / temperature (0 for the most probable token) and
 * its unnormalized probability e = exp(x). */
typedef struct mc_cand {
    float x;
    float e;
    int32_t id;
} mc_cand;

struct mc_sampler {
    mc_sampler_params p; /* validated copy; p.logit_bias points at bias */
    int32_t n_vocab;
    mc_logit_bias *bias; /* [p.n_logit_bias] owned copy */
    float *work;         /* [n_vocab] logits after bias and penalties, when there are any */
    const float *cur;    /* the logits the later stages read: work, or the caller's */
    mc_cand *cand;       /* [n_vocab] candidate tokens of the current step */
    /* repetition penalty; allocated only when repetition_penalty != 1 */
    int32_t *hist; /* [cap_hist] accepted tokens (prompt and generated), oldest first */
    size_t n_hist, cap_hist;
    uint32_t *stamp; /* [n_vocab] stamp[id] == epoch: id already penalized this step */
    uint32_t epoch;
    /* presence / frequency penalties; allocated only when either is non-zero */
    int32_t *gen_count; /* [n_vocab] times each id was generated */
    int32_t *gen_ids;   /* [n_vocab] distinct generated ids, n_gen_ids of them */
    size_t n_gen_ids;
    mc_rng rng;
};

mc_sampler_params mc_sampler_default_params(void) {
    mc_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repetition_penalty = 1.0f;
    p.repetition_last_n = 0;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.logit_bias = NULL;
    p.n_logit_bias = 0;
    p.seed = 0;
    return p;
}

/* Checks every parameter; the message names the first bad one and its value. */
static mc_status check_params(const mc_sampler_params *p, int32_t n_vocab) {
    size_t i;
    if (n_vocab <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "sampler: vocab_size = %d is invalid (must be > 0)",
                       (int)n_vocab);
    if (!isfinite(p->temperature) || p->temperature < 0)
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: temperature = %g is invalid (must be finite and >= 0; "
                       "0 = greedy)",
                       (double)p->temperature);
    if (p->top_k < 0)
        return mc_fail(MC_ERR_INVALID_ARG, "sampler: top_k = %d is invalid (must be >= 0; 0 = off)",
                       (int)p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: top_p = %g is invalid (must be in (0, 1]; 1 = off)",
                       (double)p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: min_p = %g is invalid (must be in [0, 1]; 0 = off)",
                       (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0)
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: repetition_penalty = %g is invalid (must be finite and > 0; "
                       "1 = off)",
                       (double)p->repetition_penalty);
    if (p->repetition_last_n < 0)
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: repetition_last_n = %d is invalid (must be >= 0; 0 = all)",
                       (int)p->repetition_last_n);
    if (!isfinite(p->presence_penalty))
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: presence_penalty = %g is invalid (must be finite)",
                       (double)p->presence_penalty);
    if (!isfinite(p->frequency_penalty))
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: frequency_penalty = %g is invalid (must be finite)",
                       (double)p->frequency_penalty);
    if (p->n_logit_bias > 0 && !p->logit_bias)
        return mc_fail(MC_ERR_INVALID_ARG, "sampler: logit_bias is NULL but n_logit_bias = %zu",
                       p->n_logit_bias);
    for (i = 0; i < p->n_logit_bias; i++) {
        const mc_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab)
            return mc_fail(MC_ERR_INVALID_ARG,
                           "sampler: logit_bias[%zu]: token %d is outside the vocabulary "
                           "[0, %d)",
                           i, (int)b->token, (int)n_vocab);
        if (isnan(b->bias) || b->bias == INFINITY)
            return mc_fail(MC_ERR_INVALID_ARG,
                           "sampler: logit_bias[%zu]: bias %g for token %d is invalid (must be "
                           "finite or -inf)",
                           i, (double)b->bias, (int)b->token);
    }
    return MC_OK;
}

mc_status mc_sampler_create(const mc_sampler_params *params, int32_t vocab_size, mc_sampler **out) {
    mc_sampler_params p = params ? *params : mc_sampler_default_params();
    mc_sampler *s = NULL;
    size_t nv, bytes;
    mc_status st;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_create: out is NULL");
    *out = NULL;
    st = check_params(&p, vocab_size);
    if (st != MC_OK) return st;
    nv = (size_t)vocab_size;
    s = mc_calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = p;
    s->n_vocab = vocab_size;
    s->p.logit_bias = NULL;
    if (p.n_logit_bias > 0) {
        if (!mc_mul_ok(p.n_logit_bias, sizeof *s->bias, &bytes)) goto oom;
        s->bias = mc_malloc(bytes);
        if (!s->bias) goto oom;
        memcpy(s->bias, p.logit_bias, bytes);
        s->p.logit_bias = s->bias;
    }
    if (!mc_mul_ok(nv, sizeof(mc_cand), &bytes)) goto oom;
    s->work = mc_malloc(nv * sizeof(float));
    s->cand = mc_malloc(bytes);
    if (!s->work || !s->cand) goto oom;
    if (p.repetition_penalty != 1.0f) {
        s->stamp = mc_calloc(nv, sizeof(uint32_t));
        if (!s->stamp) goto oom;
    }
    if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
        s->gen_count = mc_calloc(nv, sizeof(int32_t));
        s->gen_ids = mc_malloc(nv * sizeof(int32_t));
        if (!s->gen_count || !s->gen_ids) goto oom;
    }
    mc_rng_seed(&s->rng, p.seed);
    *out = s;
    return MC_OK;
oom:
    mc_sampler_free(s);
    return mc_fail(MC_ERR_OOM, "sampler: out of memory for a vocabulary of %d tokens",
                   (int)vocab_size);
}

void mc_sampler_free(mc_sampler *s) {
    if (!s) return;
    mc_free(s->bias);
    mc_free(s->work);
    mc_free(s->cand);
    mc_free(s->hist);
    mc_free(s->stamp);
    mc_free(s->gen_count);
    mc_free(s->gen_ids);
    mc_free(s);
}

void mc_sampler_reset(mc_sampler *s) {
    size_t i;
    if (!s) return;
    s->n_hist = 0;
    for (i = 0; i < s->n_gen_ids; i++) s->gen_count[s->gen_ids[i]] = 0;
    s->n_gen_ids = 0;
    mc_rng_seed(&s->rng, s->p.seed);
}

size_t mc_sampler_history_len(const mc_sampler *s) { return s->n_hist; }

/* ---- history ------------------------------------------------------------------------ */

/* Makes room for `extra` more history entries so that hist_push cannot fail. With a window
 * of last_n tokens the history never holds more than 2 * last_n (see hist_push). */
static mc_status hist_reserve(mc_sampler *s, size_t extra) {
    size_t need, cap, bytes, limit = 0;
    int32_t *h;
    if (!s->stamp) return MC_OK; /* repetition penalty off: no history kept */
    if (s->p.repetition_last_n > 0) limit = 2 * (size_t)s->p.repetition_last_n;
    if (!mc_add_ok(s->n_hist, extra, &need)) need = SIZE_MAX;
    if (limit && need > limit) need = limit;
    if (need <= s->cap_hist) return MC_OK;
    cap = s->cap_hist ? s->cap_hist : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (limit && cap > limit) cap = limit;
    if (!mc_mul_ok(cap, sizeof *h, &bytes))
        return mc_fail(MC_ERR_OOM, "sampler: a history of %zu tokens is too large", need);
    h = mc_realloc(s->hist, bytes);
    if (!h) return mc_fail(MC_ERR_OOM, "sampler: out of memory for a history of %zu tokens", need);
    s->hist = h;
    s->cap_hist = cap;
    return MC_OK;
}

/* Appends id to the repetition history (room reserved by hist_reserve). With a window of
 * w tokens, a full history of 2w entries first drops its oldest w: amortized O(1). */
static void hist_push(mc_sampler *s, int32_t id) {
    size_t w = (size_t)s->p.repetition_last_n;
    if (!s->stamp) return;
    if (w > 0 && s->n_hist == 2 * w) {
        memmove(s->hist, s->hist + w, w * sizeof *s->hist);
        s->n_hist = w;
    }
    s->hist[s->n_hist++] = id;
}

/* Counts id as generated for the presence and frequency penalties. */
static void gen_push(mc_sampler *s, int32_t id) {
    if (!s->gen_count) return;
    if (s->gen_count[id] == 0) s->gen_ids[s->n_gen_ids++] = id;
    if (s->gen_count[id] < INT32_MAX) s->gen_count[id]++;
}

mc_status mc_sampler_accept_prompt(mc_sampler *s, const int32_t *ids, size_t n) {
    size_t i;
    mc_status st;
    if (!s || (n > 0 && !ids))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_accept_prompt: %s is NULL",
                       !s ? "sampler" : "ids");
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return mc_fail(MC_ERR_TOKEN_ID,
                           "sampler: prompt token %zu has id %d, outside the vocabulary [0, %d)", i,
                           (int)ids[i], (int)s->n_vocab);
    st = hist_reserve(s, n);
    if (st != MC_OK) return st;
    for (i = 0; i < n; i++) hist_push(s, ids[i]);
    return MC_OK;
}

mc_status mc_sampler_accept(mc_sampler *s, int32_t token) {
    mc_status st;
    if (!s) return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_accept: sampler is NULL");
    if (token < 0 || token >= s->n_vocab)
        return mc_fail(MC_ERR_TOKEN_ID, "sampler: token %d is outside the vocabulary [0, %d)",
                       (int)token, (int)s->n_vocab);
    st = hist_reserve(s, 1);
    if (st != MC_OK) return st;
    hist_push(s, token);
    gen_push(s, token);
    return MC_OK;
}

/* ---- stages 1-3: bias and penalties --------------------------------------------------- */

/* Copies logits into s->work and applies the logit bias, the repetition penalty and the
 * presence/frequency penalties, in that order; s->cur is then s->work, or the logits
 * themselves when there is nothing to apply. */
static void apply_bias_penalties(mc_sampler *s, const float *logits) {
    float *w = s->work; /* [n_vocab] */
    size_t i;
    if (s->p.n_logit_bias == 0 && !s->stamp && !s->gen_count) {
        s->cur = logits; /* nothing to apply: the later stages read the logits in place */
        return;
    }
    s->cur = w;
    memcpy(w, logits, (size_t)s->n_vocab * sizeof *w);
    for (i = 0; i < s->p.n_logit_bias; i++) w[s->bias[i].token] += s->bias[i].bias;
    if (s->stamp) {
        const float pen = s->p.repetition_penalty;
        size_t win = s->n_hist;
        if (s->p.repetition_last_n > 0 && win > (size_t)s->p.repetition_last_n)
            win = (size_t)s->p.repetition_last_n;
        if (++s->epoch == 0) { /* wrapped: forget every old mark */
            memset(s->stamp, 0, (size_t)s->n_vocab * sizeof *s->stamp);
            s->epoch = 1;
        }
        for (i = s->n_hist - win; i < s->n_hist; i++) {
            int32_t id = s->hist[i];
            if (s->stamp[id] == s->epoch) continue; /* each distinct id once */
            s->stamp[id] = s->epoch;
            w[id] = w[id] > 0 ? w[id] / pen : w[id] * pen;
        }
    }
    if (s->gen_count) {
        for (i = 0; i < s->n_gen_ids; i++) {
            int32_t id = s->gen_ids[i];
            w[id] -= (float)s->gen_count[id] * s->p.frequency_penalty + s->p.presence_penalty;
        }
    }
}

/* Four float lanes (SSE2 / NEON registers): the block maxima below are written with
 * vector types rather than left to the auto-vectoriser, whose results differ from one
 * compiler and optimisation level to another by up to 4x on this loop. */
typedef float mc_v4f __attribute__((vector_size(16)));
typedef int32_t mc_v4i __attribute__((vector_size(16)));

enum { SCAN_BLOCK = 2048 };

/* The largest of w[0..n) (n a multiple of 16), with *bad set when one of them is NaN or
 * +inf. */
static float block_max(const float *w, int32_t n, mc_v4i *bad) {
    const mc_v4f inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    mc_v4f l[4] = {-inf, -inf, -inf, -inf};
    float m = -INFINITY;
    int32_t i, u, j;
    for (i = 0; i < n; i += 16)
        for (u = 0; u < 4; u++) {
            mc_v4f a;
            mc_v4i gt;
            memcpy(&a, w + i + 4 * u, sizeof a);
            *bad |= ~(a < inf);
            gt = a > l[u];
            l[u] = (mc_v4f)((gt & (mc_v4i)a) | (~gt & (mc_v4i)l[u]));
        }
    for (u = 0; u < 4; u++)
        for (j = 0; j < 4; j++) m = l[u][j] > m ? l[u][j] : m;
    return m;
}

/* The largest of w[0..nv) (nv a multiple of 16) by blocks of SCAN_BLOCK, *b0 the start of
 * the first block holding it (-1 when every value is -inf), *bad as block_max sets it. */
static float blocks_max(const float *w, int32_t nv, int32_t *b0, mc_v4i *bad) {
    float m = -INFINITY;
    int32_t i;
    *b0 = -1;
    for (i = 0; i < nv; i += SCAN_BLOCK) {
        const float bm = block_max(w + i, nv - i < SCAN_BLOCK ? nv - i : SCAN_BLOCK, bad);
        if (bm > m) {
            m = bm;
            *b0 = i;
        }
    }
    return m;
}

/* Finds the largest processed logit (*imax: the lowest id among equals). MC_ERR_NUMERIC
 * for a NaN or +inf logit, or when every logit is -inf. One pass takes the maximum of each
 * block of SCAN_BLOCK logits (vector lanes) and keeps the first block holding the largest;
 * the id is then found in that block alone. A bad logit sends a scalar pass to name it. */
static mc_status scan_max(const mc_sampler *s, float *m_out, int32_t *imax_out) {
    const float *w = s->cur;
    const int32_t n = s->n_vocab, nv = n - n % 16;
    int32_t i, b0, imax = -1, bad;
    mc_v4i badv = {0, 0, 0, 0};
    float m = blocks_max(w, nv, &b0, &badv);
    bad = badv[0] | badv[1] | badv[2] | badv[3];
    if (b0 >= 0 && !bad)
        for (imax = b0; w[imax] != m; imax++) {}
    i = bad ? 0 : nv; /* the tail past the blocks, or everything again to name a bad logit */
    if (bad) {
        m = -INFINITY;
        imax = -1;
    }
    for (; i < n; i++) {
        float v = w[i];
        if (!(v < INFINITY))
            return mc_fail(MC_ERR_NUMERIC,
                           "sampler: the logit of token %d is %s (after logit bias and "
                           "penalties)",
                           (int)i, isnan(v) ? "NaN" : "+inf");
        if (v > m) {
            m = v;
            imax = i;
        }
    }
    if (imax < 0)
        return mc_fail(MC_ERR_NUMERIC, "sampler: every logit is -inf (all %d tokens banned)",
                       (int)s->n_vocab);
    *m_out = m;
    *imax_out = imax;
    return MC_OK;
}

/* ---- stages 5-8: temperature and truncation --------------------------------------------- */

/* The total order of candidates: more probable first, then lower id first. */
static int cand_before(const mc_cand *a, const mc_cand *b) {
    return a->x > b->x || (a->x == b->x && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
    const mc_cand *a = pa, *b = pb;
    if (cand_before(a, b)) return -1;
    return cand_before(b, a) ? 1 : 0;
}

static void cand_swap(mc_cand *a, mc_cand *b) {
    mc_cand t = *a;
    *a = *b;
    *b = t;
}

/* Stage 5 and the candidate list: x = (l - m) / temperature for every token; the tokens
 * with x > -inf go to s->cand in id order. with_e: also e = exp(x) and only tokens with
 * e >= gate are kept. Returns how many were kept (at least 1: the maximum has x = 0,
 * e = 1). */
static size_t gather(mc_sampler *s, float m, int with_e, float gate) {
    const float *w = s->cur;
    const float t = s->p.temperature;
    mc_cand *c = s->cand;
    size_t n = 0;
    int32_t i;
    for (i = 0; i < s->n_vocab; i++) {
        float x = (w[i] - m) / t, e = 0;
        if (!(x > -INFINITY)) continue;
        if (with_e) {
            e = expf(x);
            if (e < gate) continue;
        }
        c[n].x = x;
        c[n].e = e;
        c[n].id = i;
        n++;
    }
    return n;
}

/* Like gather with e, for top-p: tokens with e >= gate go to the front of s->cand (their
 * count is returned, their mass in *kept); with keep_rest, the other tokens with x > -inf
 * go to the back, from the end of the array down (*n_rest of them). *z receives the mass of
 * every token with x > -inf. */
static size_t gather_split(mc_sampler *s, float m, float gate, int keep_rest, double *z,
                           double *kept, size_t *n_rest) {
    const float *w = s->cur;
    const float t = s->p.temperature;
    mc_cand *c = s->cand;
    double sum = 0, sum_kept = 0;
    size_t n = 0, back = (size_t)s->n_vocab;
    int32_t i;
    for (i = 0; i < s->n_vocab; i++) {
        float x = (w[i] - m) / t, e;
        size_t at;
        if (!(x > -INFINITY)) continue;
        e = expf(x);
        sum += (double)e;
        if (e >= gate) {
            sum_kept += (double)e;
            at = n++;
        } else if (keep_rest) {
            at = --back;
        } else {
            continue;
        }
        c[at].x = x;
        c[at].e = e;
        c[at].id = i;
    }
    *z = sum;
    *kept = sum_kept;
    *n_rest = (size_t)s->n_vocab - back;
    return n;
}

/* Restores the heap (root = the candidate that comes last) below node i of h[0..n). */
static void heap_down(mc_cand *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, last = i;
        if (l < n && cand_before(&h[last], &h[l])) last = l;
        if (r < n && cand_before(&h[last], &h[r])) last = r;
        if (last == i) return;
        cand_swap(&h[i], &h[last]);
        i = last;
    }
}

/* Restores the heap above node i. */
static void heap_up(mc_cand *h, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&h[parent], &h[i])) return;
        cand_swap(&h[i], &h[parent]);
        i = parent;
    }
}

/* True when one of w[0..16) is above v. */
static int any16_above(const float *w, float v) {
    const mc_v4f vv = {v, v, v, v};
    mc_v4i any = {0, 0, 0, 0};
    int u;
    for (u = 0; u < 4; u++) {
        mc_v4f a;
        memcpy(&a, w + 4 * u, sizeof a);
        any |= a > vv;
    }
    return (any[0] | any[1] | any[2] | any[3]) != 0;
}

/* Stages 5 and 6 for a small k: the first k tokens in cand order (fewer when fewer have
 * x > -inf) into s->cand[0..return) through a k-entry heap, without a candidate list.
 * Once the heap is full, a logit at or below the root's raw logit is passed over without
 * computing its x: x = (l - m) / t does not decrease as l grows (t > 0), so its x is at
 * most the root's, and an equal x comes later in id order, never better. Blocks of 16
 * such logits are passed over together, so most of the vocabulary costs a vector compare. */
static size_t heap_top_k(mc_sampler *s, float m, size_t k) {
    mc_cand *h = s->cand; /* [k] heap; root = the worst kept candidate */
    const float *w = s->cur;
    const float t = s->p.temperature;
    size_t n = 0;
    float wroot = -INFINITY; /* the root's raw logit, once the heap is full */
    int32_t i = 0;
    while (i < s->n_vocab) {
        mc_cand c;
        if (n == k && i % 16 == 0 && i + 16 <= s->n_vocab && !any16_above(w + i, wroot)) {
            i += 16;
            continue;
        }
        if (n == k && !(w[i] > wroot)) {
            i++;
            continue;
        }
        c.x = (w[i] - m) / t;
        c.e = 0;
        c.id = i++;
        if (!(c.x > -INFINITY)) continue;
        if (n < k) {
            h[n] = c;
            heap_up(h, n++);
        } else if (c.x > h[0].x) { /* equal x comes later in id order: never better */
            h[0] = c;
            heap_down(h, k, 0);
        } else {
            continue;
        }
        if (n == k) wroot = w[h[0].id];
    }
    return n;
}

/* Three-way partition of c[0..n) by x around pv: [x > pv | x == pv | x < pv]. */
static void partition3(mc_cand *c, size_t n, float pv, size_t *n_gt, size_t *n_eq) {
    size_t gt = 0, i = 0, lt = n;
    while (i < lt) {
        if (c[i].x > pv) {
            cand_swap(&c[i++], &c[gt++]);
        } else if (c[i].x < pv) {
            cand_swap(&c[i], &c[--lt]);
        } else {
            i++;
        }
    }
    *n_gt = gt;
    *n_eq = lt - gt;
}

/* The median of the x of the first, middle and last entries of c[0..n), n >= 1. */
static float pivot3(const mc_cand *c, size_t n) {
    float a = c[0].x, b = c[n / 2].x, d = c[n - 1].x;
    if (a > b) {
        float t = a;
        a = b;
        b = t;
    }
    return d < a ? a : (d > b ? b : d);
}

/* Below this many entries, or after this many rounds, selection sorts what is left. Top-k
 * up to HEAP_MAX_K uses a heap, larger k a quickselect. */
enum { SELECT_SMALL = 16, SELECT_ROUNDS = 64, HEAP_MAX_K = 256 };

/* Top-p over more than HIST_MIN candidates starts with a histogram of HIST_BUCKETS. */
enum { HIST_MIN = 2048, HIST_BUCKETS = 1024 };

/* Top-p without top-k first looks only at tokens with exp(x) >= this (e^-16). */
#define TOP_P_GATE 1.12535175e-07f

/* Bucket of x among HIST_BUCKETS equal slices of [xmin, xmax], 0 for the top slice: a
 * non-increasing function of x, so buckets follow cand order. */
static size_t hist_bucket(float x, float xmin, double scale) {
    size_t idx = (size_t)(((double)x - (double)xmin) * scale);
    return HIST_BUCKETS - 1 - MC_MIN(idx, (size_t)HIST_BUCKETS - 1);
}

/* First step of select_mass (by_count = 0: weights e) and select_count (by_count = 1:
 * weight 1 each) for many candidates: a histogram of the weight over slices of x finds
 * the slice where the prefix weight reaches target, and one partition pass moves the
 * slices above it to c[0..*lo) (weight *kept) and that slice to c[*lo..*hi). Leaves the
 * range as it is when all x are equal. */
static void hist_narrow(mc_cand *c, size_t n, double target, int by_count, size_t *lo, size_t *hi,
                        double *kept) {
    double mass[HIST_BUCKETS] = {0}, cum = 0, scale;
    float xmin = c[0].x, xmax = c[0].x;
    size_t j, bb, gt = 0, lt = n;
    for (j = 1; j < n; j++) {
        xmin = MC_MIN(xmin, c[j].x);
        xmax = MC_MAX(xmax, c[j].x);
    }
    if (!(xmax > xmin)) return;
    scale = HIST_BUCKETS / ((double)xmax - (double)xmin);
    for (j = 0; j < n; j++)
        mass[hist_bucket(c[j].x, xmin, scale)] += by_count ? 1.0 : (double)c[j].e;
    for (bb = 0; bb < HIST_BUCKETS && cum + mass[bb] < target; bb++) cum += mass[bb];
    j = 0; /* three-way partition by bucket: [< bb | == bb | > bb (dropped)] */
    while (j < lt) {
        size_t b = hist_bucket(c[j].x, xmin, scale);
        if (b < bb) {
            cand_swap(&c[j++], &c[gt++]);
        } else if (b > bb) {
            cand_swap(&c[j], &c[--lt]);
        } else {
            j++;
        }
    }
    *lo = gt;
    *hi = lt;
    *kept = cum;
}

/* Reorders c[0..n) so that c[0..k) hold the k smallest ids (0 < k <= n; ids are
 * distinct). Quickselect on id: expected O(n). Used inside a group of equal x, where cand
 * order is id order. */
static void select_ids(mc_cand *c, size_t n, size_t k) {
    size_t lo = 0, hi = n; /* c[0..lo) are taken, c[hi..n) are not; lo < k < hi */
    while (lo < k && k < hi) {
        int32_t a = c[lo].id, b = c[lo + (hi - lo) / 2].id, d = c[hi - 1].id, pv;
        size_t i, lt = lo;
        if (a > b) {
            int32_t t = a;
            a = b;
            b = t;
        }
        pv = d < a ? a : (d > b ? b : d);
        for (i = lo; i < hi; i++)
            if (c[i].id < pv) cand_swap(&c[i], &c[lt++]);
        for (i = lt; c[i].id != pv; i++) {}
        cand_swap(&c[i], &c[lt]); /* c[lo..lt) < pv == c[lt] < c[lt+1..hi) */
        if (k <= lt) {
            hi = lt;
        } else {
            lo = lt + 1;
        }
    }
}

/* Stage 6: reorders c[0..n) so that c[0..k) are the first k in cand order (k < n).
 * Quickselect with a three-way partition: expected O(n). */
static void select_count(mc_cand *c, size_t n, size_t k) {
    size_t lo = 0, hi = n, round = 0; /* c[0..lo) are taken; the boundary lies in [lo, hi) */
    double taken = 0;
    if (n > HIST_MIN) hist_narrow(c, n, (double)k, 1, &lo, &hi, &taken);
    while (hi - lo > SELECT_SMALL && round++ < SELECT_ROUNDS) {
        size_t g, e;
        partition3(c + lo, hi - lo, pivot3(c + lo, hi - lo), &g, &e);
        if (k <= lo + g) {
            hi = lo + g;
        } else if (k <= lo + g + e) {
            lo += g;
            select_ids(c + lo, e, k - lo); /* equal x: the lowest ids come first */
            return;
        } else {
            lo += g + e;
        }
    }
    qsort(c + lo, hi - lo, sizeof *c, cand_cmp);
}

/* Stage 7: reorders c[0..n) (with e set) so that c[0..r) is the shortest prefix in cand
 * order whose mass sum(e) reaches target, and returns r (n when all of them fall short).
 * A histogram step, then quickselect on mass: expected O(n), no full sort. */
static size_t select_mass(mc_cand *c, size_t n, double target) {
    size_t lo = 0, hi = n, round = 0, j;
    double kept = 0; /* mass of c[0..lo), all taken, always < target */
    if (n > HIST_MIN) hist_narrow(c, n, target, 0, &lo, &hi, &kept);
    while (hi - lo > SELECT_SMALL && round++ < SELECT_ROUNDS) {
        size_t g, e;
        double mg = 0, me = 0;
        partition3(c + lo, hi - lo, pivot3(c + lo, hi - lo), &g, &e);
        for (j = lo; j < lo + g; j++) mg += (double)c[j].e;
        if (kept + mg >= target) {
            hi = lo + g;
            continue;
        }
        kept += mg;
        lo += g;
        for (j = lo; j < lo + e; j++) me += (double)c[j].e;
        if (kept + me >= target) { /* equal x (and e): count, then take the lowest ids */
            size_t take = 0;
            while (take < e && kept < target) {
                kept += (double)c[lo].e;
                take++;
            }
            select_ids(c + lo, e, take);
            return lo + take;
        }
        kept += me;
        lo += e;
    }
    qsort(c + lo, hi - lo, sizeof *c, cand_cmp);
    for (j = lo; j < hi; j++) {
        kept += (double)c[j].e;
        if (kept >= target) return j + 1;
    }
    return hi; /* rounding: the parts' sums reached target, the entries' sum fell short */
}

/* Stage 8: keeps the entries of c[0..n) with e >= min_p (in place). Returns how many. */
static size_t filter_min_p(mc_cand *c, size_t n, float min_p) {
    size_t i, k = 0;
    for (i = 0; i < n; i++)
        if (c[i].e >= min_p) c[k++] = c[i];
    return k;
}

/* Runs stages 1-8 on logits. Greedy: s->cand[0] is the argmax and *greedy = 1. Otherwise
 * the surviving tokens are s->cand[0..*n) (in no particular order) with weights e, and
 * *total is the sum of their e. */
static mc_status run_chain(mc_sampler *s, const float *logits, size_t *n_out, double *total,
                           int *greedy) {
    const mc_sampler_params *p = &s->p;
    const int use_p = (p->top_p < 1.0f), use_min = (p->min_p > 0.0f);
    float m = 0;
    int32_t imax = 0;
    size_t n, j;
    double z = 0, sum = 0;
    mc_status st;
    apply_bias_penalties(s, logits);
    st = scan_max(s, &m, &imax);
    if (st != MC_OK) return st;
    *greedy = p->temperature == 0.0f;
    if (*greedy) {
        s->cand[0].x = 0.0f;
        s->cand[0].e = 1.0f;
        s->cand[0].id = imax;
        *n_out = 1;
        *total = 1.0;
        return MC_OK;
    }
    if (p->top_k > 0) {
        const size_t k = (size_t)p->top_k;
        if (k <= HEAP_MAX_K) {
            n = heap_top_k(s, m, k);
        } else {
            n = gather(s, m, 0, 0.0f);
            if (k < n) {
                select_count(s->cand, n, k);
                n = k;
            }
        }
        for (j = 0; j < n; j++) {
            s->cand[j].e = expf(s->cand[j].x);
            z += (double)s->cand[j].e;
        }
        if (use_p) n = select_mass(s->cand, n, (double)p->top_p * z);
        if (use_min) n = filter_min_p(s->cand, n, p->min_p);
    } else if (!use_p) {
        n = gather(s, m, 1, use_min ? p->min_p : 0.0f);
    } else {
        /* Top-p and min-p each keep a top slice of the tokens, so the final set lies within
         * min-p's slice, or within the tokens above a small gate when those hold top_p of
         * the mass (else all tokens are candidates). Top-p measures against all the mass. */
        double kept;
        size_t n_rest;
        n = gather_split(s, m, use_min ? p->min_p : TOP_P_GATE, !use_min, &z, &kept, &n_rest);
        if (!use_min && kept < (double)p->top_p * z && n_rest > 0) {
            memmove(s->cand + n, s->cand + (size_t)s->n_vocab - n_rest, n_rest * sizeof *s->cand);
            n += n_rest;
        }
        n = select_mass(s->cand, n, (double)p->top_p * z);
    }
    for (j = 0; j < n; j++) sum += (double)s->cand[j].e;
    *n_out = n;
    *total = sum;
    return MC_OK;
}

/* Stage 9: one uniform draw over the weights s->cand[0..n) that sum to total. */
static int32_t draw(mc_sampler *s, size_t n, double total) {
    const double target = mc_rng_uniform(&s->rng) * total;
    double acc = 0;
    size_t j;
    for (j = 0; j + 1 < n; j++) {
        acc += (double)s->cand[j].e;
        if (target < acc) break;
    }
    return s->cand[j].id;
}

/* exp(t) for t <= 0 (or -inf) in each lane, to about 2e-7 relative, in float and integer
 * arithmetic: t is clamped to -87 on its bits (for t <= 0 a larger unsigned pattern is a
 * more negative value; exp(-87) < 2e-38 is nothing next to the normaliser's 1),
 * t = k ln2 + r with |r| <= ln2/2 (k rounded with the 1.5 * 2^23 trick), a degree-6
 * Taylor polynomial for exp(r), and 2^k built in the exponent bits. */
static mc_v4f exp_nonpos4(mc_v4f t) {
    typedef uint32_t v4u __attribute__((vector_size(16)));
    const mc_v4f magic = {12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f}; /* 1.5 * 2^23 */
    const v4u lim = {0xC2AE0000u, 0xC2AE0000u, 0xC2AE0000u, 0xC2AE0000u};    /* -87.0f */
    v4u tb, over;
    mc_v4f tc, kf, r, p;
    memcpy(&tb, &t, sizeof tb);
    over = (v4u)(tb > lim);
    tb = (over & lim) | (~over & tb);
    memcpy(&tc, &tb, sizeof tc);
    kf = (tc * 1.44269504f + magic) - magic;
    r = (tc - kf * 0.693145752f) - kf * 1.42860677e-6f;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f +
                                         r * (4.16666667e-2f + r * (8.33333333e-3f +
                                                                    r * 1.38888889e-3f)))));
    tb = (v4u)((__builtin_convertvector(kf, mc_v4i) + 127) << 23);
    memcpy(&tc, &tb, sizeof tc);
    return p * tc;
}

static float exp_nonpos(float t) {
    const mc_v4f v = {t, t, t, t};
    return exp_nonpos4(v)[0];
}

/* log_softmax(logits)[tok]; logits are free of NaN and +inf (checked by the chain) and
 * logits[tok] is finite. The normaliser sums exp(x - max) in eight float lanes (two
 * vectors) per block of 2,048 logits and the blocks in double: within 1e-6 of the exact
 * value over a 151,936-token vocabulary, at a fraction of the cost of expf on every logit. */
static float raw_logprob(const float *logits, size_t n, int32_t tok) {
    const size_t nv = n - n % 16;
    mc_v4i bad = {0, 0, 0, 0};
    int32_t b0;
    const float bm = blocks_max(logits, (int32_t)nv, &b0, &bad);
    float m = bm > logits[tok] ? bm : logits[tok];
    double z = 0.0;
    size_t i, b, j;
    for (i = nv; i < n; i++)
        if (logits[i] > m) m = logits[i];
    for (b = 0; b < n; b += SCAN_BLOCK) {
        const size_t e = b + SCAN_BLOCK < n ? b + SCAN_BLOCK : n;
        const mc_v4f mv = {m, m, m, m};
        mc_v4f acc[2] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
        float part = 0.0f;
        for (i = b; i + 8 <= e; i += 8)
            for (j = 0; j < 2; j++) {
                mc_v4f x;
                memcpy(&x, logits + i + 4 * j, sizeof x);
                acc[j] += exp_nonpos4(x - mv);
            }
        for (; i < e; i++) part += exp_nonpos(logits[i] - m);
        for (j = 0; j < 8; j++) part += acc[j / 4][j % 4];
        z += (double)part;
    }
    if (z < 1.0) z = 1.0; /* cannot happen: the maximum adds exp(0) = 1 */
    return (float)((double)(logits[tok] - m) - log(z));
}

mc_status mc_sampler_sample(mc_sampler *s, const float *logits, int32_t *token_out,
                            float *logprob_out) {
    size_t n;
    double total;
    int greedy;
    int32_t tok;
    mc_status st;
    if (!s || !logits || !token_out)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_sample: %s is NULL",
                       !s        ? "sampler"
                       : !logits ? "logits"
                                 : "token_out");
    st = hist_reserve(s, 1); /* so that recording the token cannot fail after the draw */
    if (st != MC_OK) return st;
    st = run_chain(s, logits, &n, &total, &greedy);
    if (st != MC_OK) return st;
    tok = greedy ? s->cand[0].id : draw(s, n, total);
    hist_push(s, tok);
    gen_push(s, tok);
    *token_out = tok;
    if (logprob_out) *logprob_out = raw_logprob(logits, (size_t)s->n_vocab, tok);
    return MC_OK;
}

mc_status mc_sampler_dist(mc_sampler *s, const float *logits, int32_t *ids, float *probs,
                          size_t *n) {
    size_t j, k;
    double total;
    int greedy;
    mc_status st;
    if (!s || !logits || !ids || !probs || !n)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_dist: a pointer argument is NULL");
    st = run_chain(s, logits, &k, &total, &greedy);
    if (st != MC_OK) return st;
    for (j = 0; j < k; j++) {
        ids[j] = s->cand[j].id;
        probs[j] = (float)((double)s->cand[j].e / total);
    }
    *n = k;
    return MC_OK;
}

void mc_sampler_get_rng_state(const mc_sampler *s, uint64_t state[4]) {
    memcpy(state, s->rng.s, sizeof s->rng.s);
}

mc_status mc_sampler_set_rng_state(mc_sampler *s, const uint64_t state[4]) {
    if (!s || !state)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_sampler_set_rng_state: %s is NULL",
                       !s ? "sampler" : "state");
    if ((state[0] | state[1] | state[2] | state[3]) == 0)
        return mc_fail(MC_ERR_INVALID_ARG,
                       "sampler: the all-zero RNG state is invalid (no seed produces it)");
    memcpy(s->rng.s, state, sizeof s->rng.s);
    return MC_OK;
}
