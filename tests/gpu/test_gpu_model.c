/* test_gpu_model.c - whole models on the CUDA backend:
 *  - logits of every fixture model on CUDA against the CPU backend: relative L2 < 1e-2
 *    (bf16 tensor-core GEMMs and attention), and printed against Hugging Face's;
 *  - decode == prefill on the GPU: token-by-token decoding (GEMV, split-key attention, CUDA
 *    graphs) and chunked prefill (flash attention with pos0 > 0) give the logits of one
 *    prefill of the whole sequence (relative L2 < 1e-2), for the fixtures, a 151,936-token
 *    "tiny" checkpoint and a head_dim-64 model; batched steps over 3 sequences give each
 *    sequence's own logits. MC_GPU_TEST_QUICK=1 shortens the generated sequences. */
#include <cjson/cJSON.h>

#include "backend/cuda/cuda_backend.h"
#include "gen_test_util.h"
#include "io/io.h"
#include "model/model.h"
#include "test.h"

static const char *const k_models[] = {"tiny_tied_f32", "qwen2_bf16_sharded", "llama_f16",
                                       "qwen3_bf16"};

static double cmp(const char *what, const float *got, const float *want, size_t n, double tol) {
    double e = t_check_rel_l2(__FILE__, __LINE__, what, got, want, n, tol);
    printf("  %-60s rel L2 %.2e (tol %.0e)%s\n", what, e, tol, e <= tol ? "" : "  FAIL");
    return e;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static mc_model *load(const char *dir, const char *device) {
    mc_model *m = NULL;
    mc_model_params p = mc_model_default_params();
    p.device = device;
    CHECK_OK(mc_model_load(dir, &p, &m));
    return m;
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    cJSON *root;
    if (mc_read_file(path, &text, &len) != MC_OK) return NULL;
    root = cJSON_ParseWithLength(text, len);
    mc_free(text);
    return root;
}

/* Fixture logits: CUDA vs CPU (checked) and vs Hugging Face (printed). */
static void check_fixture(const char *name) {
    char dir[1024], path[1100];
    mc_model *mg, *mc;
    mc_model_info info;
    cJSON *root, *seqs;
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MC_SOURCE_DIR, name);
    mg = load(dir, "cuda");
    mc = load(dir, "cpu");
    snprintf(path, sizeof path, "%s/ref/ids.json", dir);
    root = read_json(path);
    CHECK(root != NULL && mg && mc);
    if (!root || !mg || !mc) goto done;
    CHECK_OK(mc_model_get_info(mg, &info));
    seqs = cJSON_GetObjectItem(root, "sequences");
    for (int si = 0; si < cJSON_GetArraySize(seqs); si++) {
        cJSON *seq = cJSON_GetArrayItem(seqs, si);
        size_t n = (size_t)cJSON_GetArraySize(seq), nl = n * (size_t)info.vocab_size;
        size_t shape[MC_MAX_DIMS];
        int32_t *ids = mc_malloc(n * sizeof *ids);
        float *lg = mc_malloc(nl * sizeof(float)), *lc = mc_malloc(nl * sizeof(float));
        void *ref = NULL;
        int ndim = 0;
        bool is_int = false;
        double loss_g = -1, loss_c = -1;
        char what[160];
        for (size_t i = 0; i < n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(seq, (int)i)->valueint;
        CHECK_OK(mc_model_eval(mg, ids, n, lg, &loss_g));
        CHECK_OK(mc_model_eval(mc, ids, n, lc, &loss_c));
        snprintf(what, sizeof what, "%s seq %d (T=%zu): CUDA vs CPU logits", name, si, n);
        cmp(what, lg, lc, nl, 1e-2);
        snprintf(path, sizeof path, "%s/ref/logits_%d.npy", dir, si);
        if (mc_npy_read(path, &ref, shape, &ndim, &is_int) == MC_OK && ndim == 2 &&
            shape[0] * shape[1] == nl)
            printf("  %-60s rel L2 %.2e; loss %.6f (CPU %.6f)\n", "  ... CUDA vs Hugging Face",
                   rel_l2(lg, (const float *)ref, nl), loss_g, loss_c);
        CHECK_NEAR(loss_g, loss_c, 1e-2 * fabs(loss_c));
        mc_free(ref);
        mc_free(ids);
        mc_free(lg);
        mc_free(lc);
    }
done:
    cJSON_Delete(root);
    mc_model_free(mg);
    mc_model_free(mc);
}

static void test_fixtures(void) {
    for (size_t i = 0; i < sizeof k_models / sizeof *k_models; i++) check_fixture(k_models[i]);
}

/* Copies the logits a call with logits_host == NULL left readable (on the GPU: copied by
 * DMA into page-locked host memory), rows x V, into out. */
static void take_view(const mc_fwd *f, float *out, size_t n) {
    const float *v = mc_fwd_logits(f);
    CHECK(v != NULL);
    if (v) memcpy(out, v, n * sizeof(float));
}

/* Decode == prefill for model m over n random tokens: one prefill (all logits), decoding
 * token by token, two prefill chunks, and batched steps over 3 sequences. Decode steps
 * alternate between logits copied out and logits read in place (mc_fwd_logits). */
static void decode_vs_prefill(const char *label, mc_model *m, int n) {
    mc_dims d = mc_model_dims(m);
    size_t V = (size_t)d.V;
    int32_t *ids = mc_malloc(3 * (size_t)n * sizeof *ids);
    float *pre = mc_malloc(3 * (size_t)n * V * sizeof(float));
    float *dec = mc_malloc((size_t)n * V * sizeof(float));
    float *chunk = mc_malloc((size_t)n * V * sizeof(float));
    float *step = mc_malloc(3 * V * sizeof(float));
    float *bat = mc_malloc(3 * (size_t)n * V * sizeof(float));
    mc_fwd *f = NULL;
    mc_rng rng;
    char what[160];
    int half = n / 2;
    if (!ids || !pre || !dec || !chunk || !step || !bat) exit(2);
    mc_rng_seed(&rng, 77);
    for (int i = 0; i < 3 * n; i++) ids[i] = (int32_t)(mc_rng_next(&rng) % V);
    /* one prefill per sequence */
    CHECK_OK(mc_fwd_create(m, 1, n, n, &f));
    for (int s = 0; f && s < 3; s++) {
        mc_fwd_truncate(f, 0, 0);
        CHECK_OK(mc_fwd_run(f, 0, ids + (size_t)s * n, n, MC_LOGITS_ALL, pre + (size_t)s * n * V));
    }
    mc_fwd_free(f);
    /* token by token */
    CHECK_OK(mc_fwd_create(m, 1, n, 1, &f));
    for (int t = 0; f && t < n; t++) {
        CHECK_OK(mc_fwd_run(f, 0, ids + t, 1, MC_LOGITS_ALL, t % 2 ? NULL : dec + (size_t)t * V));
        if (t % 2) take_view(f, dec + (size_t)t * V, V);
    }
    mc_fwd_free(f);
    snprintf(what, sizeof what, "%s: decode 1 token at a time vs prefill (%d tokens)", label, n);
    cmp(what, dec, pre, (size_t)n * V, 1e-2);
    /* two chunks: the second attends to the cached first */
    CHECK_OK(mc_fwd_create(m, 1, n, n, &f));
    if (f) {
        CHECK_OK(mc_fwd_run(f, 0, ids, half, MC_LOGITS_ALL, chunk));
        CHECK_OK(mc_fwd_run(f, 0, ids + half, n - half, MC_LOGITS_ALL, chunk + (size_t)half * V));
    }
    mc_fwd_free(f);
    snprintf(what, sizeof what, "%s: prefill in 2 chunks vs 1", label);
    cmp(what, chunk, pre, (size_t)n * V, 1e-2);
    /* 3 sequences stepped together */
    CHECK_OK(mc_fwd_create(m, 3, n, 3, &f));
    for (int t = 0; f && t < n; t++) {
        int seqs[3] = {0, 1, 2};
        int32_t tok[3];
        for (int s = 0; s < 3; s++) tok[s] = ids[(size_t)s * n + t];
        CHECK_OK(mc_fwd_step(f, seqs, tok, 3, t % 2 ? NULL : step));
        if (t % 2) take_view(f, step, 3 * V);
        for (int s = 0; s < 3; s++)
            memcpy(bat + ((size_t)s * n + t) * V, step + (size_t)s * V, V * sizeof(float));
    }
    mc_fwd_free(f);
    snprintf(what, sizeof what, "%s: batched steps of 3 sequences vs prefill", label);
    cmp(what, bat, pre, 3 * (size_t)n * V, 1e-2);
    mc_free(ids);
    mc_free(pre);
    mc_free(dec);
    mc_free(chunk);
    mc_free(step);
    mc_free(bat);
}

static void test_decode_fixtures(void) {
    for (size_t i = 0; i < sizeof k_models / sizeof *k_models; i++) {
        char dir[1024];
        mc_model *m;
        snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MC_SOURCE_DIR, k_models[i]);
        m = load(dir, "cuda");
        if (m) decode_vs_prefill(k_models[i], m, 40);
        mc_model_free(m);
    }
}

/* Writes a random bf16 checkpoint with the fixture tiny_tied_f32's architecture but the
 * given sizes into dir. */
static void make_model(const char *dir, int hidden, int heads, int kv_heads, int inter, int vocab,
                       int layers) {
    char src[1100], cfg[1100];
    cJSON *root;
    char *text;
    FILE *fp;
    snprintf(src, sizeof src, "%s/tests/fixtures/qwen2_bf16_sharded/config.json", MC_SOURCE_DIR);
    root = read_json(src);
    CHECK(root != NULL);
    if (!root) return;
    cJSON_ReplaceItemInObject(root, "hidden_size", cJSON_CreateNumber(hidden));
    cJSON_ReplaceItemInObject(root, "num_attention_heads", cJSON_CreateNumber(heads));
    cJSON_ReplaceItemInObject(root, "num_key_value_heads", cJSON_CreateNumber(kv_heads));
    cJSON_ReplaceItemInObject(root, "intermediate_size", cJSON_CreateNumber(inter));
    cJSON_ReplaceItemInObject(root, "vocab_size", cJSON_CreateNumber(vocab));
    cJSON_ReplaceItemInObject(root, "num_hidden_layers", cJSON_CreateNumber(layers));
    text = cJSON_Print(root);
    snprintf(cfg, sizeof cfg, "%s/config.json", t_tmpdir("gpu_model_cfg"));
    fp = fopen(cfg, "w");
    CHECK(fp != NULL && text != NULL);
    if (fp && text) {
        fputs(text, fp);
        fclose(fp);
    }
    cJSON_free(text);
    cJSON_Delete(root);
    CHECK_OK(mc_checkpoint_init(NULL, cfg, MC_BF16, 5, dir));
}

static void test_decode_generated(void) {
    const char *q = getenv("MC_GPU_TEST_QUICK");
    const bool quick = q && q[0] == '1'; /* shorter sequences under compute-sanitizer */
    char dir[1024];
    mc_model *m;
    /* the "tiny" preset: Qwen's 151,936-token vocabulary, head_dim 16 */
    snprintf(dir, sizeof dir, "%s", t_tmpdir("gpu_tiny"));
    CHECK_OK(mc_checkpoint_init("tiny", NULL, MC_BF16, 3, dir));
    m = load(dir, "cuda");
    if (m) decode_vs_prefill("tiny preset", m, quick ? 40 : 150);
    mc_model_free(m);
    /* head_dim 64 and 14/2 heads like Qwen2.5-0.5B, 300 positions (5 key splits) */
    snprintf(dir, sizeof dir, "%s", t_tmpdir("gpu_hd64"));
    make_model(dir, 896, 14, 2, 1024, 2000, 2);
    m = load(dir, "cuda");
    if (m) decode_vs_prefill("hd64 model", m, quick ? 70 : 300);
    mc_model_free(m);
}

/* 1 when the generations a[i] and b[i] (i < n) hold the same nt tokens; clears them all. */
static int same_tokens(mc_generation *a, mc_generation *b, int n, int nt) {
    int same = 1;
    for (int i = 0; i < n; i++) {
        CHECK_INT((int)a[i].n_tokens, nt);
        if (!a[i].tokens || !b[i].tokens || a[i].n_tokens != b[i].n_tokens ||
            memcmp(a[i].tokens, b[i].tokens, (size_t)nt * sizeof(int32_t)) != 0)
            same = 0;
        mc_generation_clear(&a[i]);
        mc_generation_clear(&b[i]);
    }
    return same;
}

/* Greedy generation on CUDA: the tokens the backend picks on the device (argmax_rows) equal
 * those the sampler picks from each step's logits on the host (forced by a token callback). */
static void test_generate_greedy(void) {
    enum { NS = 3, NT = 24 };
    char dir[1024];
    mc_model *m;
    mc_context *ctx = NULL;
    mc_context_params cp = mc_context_default_params();
    mc_generate_params p = mc_generate_default_params();
    const int32_t a[4] = {9, 1500, 77, 20000}, b[2] = {151000, 3}, c[1] = {42};
    const int32_t *prompts[NS] = {a, b, c};
    size_t lens[NS] = {4, 2, 1};
    mc_generation dev[NS], host[NS];
    int same = 1;
    snprintf(dir, sizeof dir, "%s", t_tmpdir("gpu_tiny_gen"));
    CHECK_OK(mc_checkpoint_init("tiny", NULL, MC_BF16, 3, dir));
    m = load(dir, "cuda");
    if (!m) return;
    cp.n_seq = NS;
    cp.n_ctx = 64;
    p.sampler.temperature = 0.0f;
    p.max_tokens = NT;
    p.ignore_eos = 1;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    CHECK_INT(t_generate_both(ctx, prompts, lens, NS, p, dev, host), NS * NT);
    same = same_tokens(dev, host, NS, NT);
    printf("  %-60s %s\n", "greedy tokens: argmax on the device vs the host sampler",
           same ? "identical" : "DIFFER");
    CHECK(same);
    {   /* batch steps without attention_rows (a copy and a launch a row): the same tokens */
        void (*ar)(mc_backend *, void *, const void *, const void *, const void *,
                   const mc_att_row *, int, int, int, int) = m->be->attention_rows;
        mc_generation loop[NS];
        CHECK(ar != NULL);
        CHECK_OK(mc_generate_batch(ctx, prompts, lens, NS, &p, dev));
        m->be->attention_rows = NULL;
        CHECK_OK(mc_generate_batch(ctx, prompts, lens, NS, &p, loop));
        m->be->attention_rows = ar;
        same = same_tokens(dev, loop, NS, NT);
        printf("  %-60s %s\n", "batch steps: attention_rows vs a launch a row",
               same ? "identical" : "DIFFER");
        CHECK(same);
    }
    mc_context_free(ctx);
    /* one sequence a step ahead (argmax_queue) vs a step at a time: 24 tokens of each
     * prompt, then the stops in a context of prompt + 6 positions */
    cp.n_seq = 1;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    same = 1;
    for (int i = 0; i < NS; i++) {
        mc_generation g;
        same &= t_ahead_matches(ctx, prompts[i], lens[i], p, &g);
        CHECK_INT((int)g.n_tokens, NT);
        mc_generation_clear(&g);
    }
    mc_context_free(ctx);
    {   /* the stops need a prompt whose first 7 greedy tokens are not all one token */
        const int32_t d[10] = {5, 17, 200, 3, 99, 42, 7, 1, 60, 8}, e[4] = {100, 2000, 30000, 7};
        const int32_t *cand[5] = {a, b, c, d, e};
        const size_t clen[5] = {4, 2, 1, 10, 4};
        int pick = -1;
        mc_generate_params q = p;
        q.max_tokens = 7;
        cp.n_ctx = 32;
        CHECK_OK(mc_context_create(m, &cp, &ctx));
        for (int i = 0; i < 5 && pick < 0; i++) {
            mc_generation g;
            CHECK_OK(mc_generate(ctx, cand[i], clen[i], &q, &g));
            for (size_t j = 1; j < g.n_tokens && pick < 0; j++)
                if (g.tokens[j] != g.tokens[0]) pick = i;
            mc_generation_clear(&g);
        }
        mc_context_free(ctx);
        CHECK(pick >= 0);
        if (pick < 0) pick = 0;
        prompts[0] = cand[pick];
        lens[0] = clen[pick];
    }
    cp.n_ctx = (int)lens[0] + 6;
    CHECK_OK(mc_context_create(m, &cp, &ctx));
    const int stops = t_ahead_stops(ctx, prompts[0], lens[0]);
    printf("  %-60s %s, %d of 6 stops\n", "greedy a step ahead vs a step at a time",
           same ? "identical" : "DIFFER", stops);
    CHECK(same);
    CHECK_INT(stops, 6);
    mc_context_free(ctx);
    mc_model_free(m);
}

int main(void) {
    RUN(test_fixtures);
    RUN(test_decode_fixtures);
    RUN(test_decode_generated);
    RUN(test_generate_greedy);
    return t_summary();
}
