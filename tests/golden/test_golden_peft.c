/* test_golden_peft.c - LoRA adapters against PEFT 0.21 (fixtures made by
 * tests/scripts/make_fixtures.py on tiny_tied_f32): logits with the fixture adapter applied
 * unmerged (fast and reference kernels) within relative L2 2e-5; the fused checkpoint's
 * projections against merge_and_unload within 1e-6 and its logits against the adapter's;
 * the trained adapter loads. It also leaves, under BUILD/tmp/peft_check/, adapters written
 * by mc_adapter_save with our logits for tests/scripts/check_peft_load.py. */
#include "lora/lora.h"
#include "lora_util.h"
#include "test.h"

#include <sys/stat.h>

static mc_model *load_base(int reference) {
    mc_model *m = NULL;
    CHECK_OK(lu_load(t_src(LU_BASE_DIR), reference != 0, &m));
    return m;
}

/* PEFT logits reference [n, V]. */
static float *ref_logits(size_t n, size_t V) {
    void *ref = NULL;
    size_t shape[MC_MAX_DIMS];
    int ndim = 0;
    bool is_int = false;
    CHECK_OK(mc_npy_read(t_src("tests/fixtures/peft/adapter_logits.npy"), &ref, shape, &ndim, &is_int));
    if (!ref || ndim != 2 || shape[0] != n || shape[1] != V || is_int) {
        CHECK(!"adapter_logits.npy has an unexpected shape");
        mc_free(ref);
        return NULL;
    }
    return ref;
}

static void check_eval(int reference) {
    mc_model *m = load_base(reference);
    mc_adapter *a = NULL;
    size_t n;
    int32_t *ids = lu_ids(&n);
    float *lo = NULL, *ref = NULL, *base = NULL;
    if (!m) goto done;
    CHECK_OK(mc_adapter_load(m, t_src(LU_PEFT_DIR), &a));
    if (!a) goto done;
    CHECK_INT(a->rank, 4);
    CHECK_NEAR(a->scale, 2.0, 0);
    CHECK_INT(a->targets, MC_LORA_ALL);
    CHECK_INT(a->first_layer, 0);
    ref = ref_logits(n, 512);
    lo = lu_logits(m, a, 1.0f, ids, n);
    base = lu_logits(m, NULL, 1.0f, ids, n);
    if (ref && lo && base) {
        double err = CHECK_REL_L2(lo, ref, n * 512, 2e-5);
        double dist = t_check_rel_l2(__FILE__, __LINE__, "base vs adapter", base, ref, n * 512, 1e9);
        printf("PEFT adapter logits%s (T=%zu): rel L2 %.3g (base model differs by %.3g)\n",
               reference ? " [ref]" : "", n, err, dist);
        CHECK(dist > 1e-3); /* the adapter does change the outputs */
    }
done:
    free(lo);
    free(base);
    mc_free(ref);
    free(ids);
    mc_adapter_free(a);
    mc_model_free(m);
}

static void test_eval_fast(void) { check_eval(0); }
static void test_eval_reference(void) { check_eval(1); }

/* Fuses the fixture adapter and compares with merge_and_unload and the adapter's logits. */
static void test_fuse(void) {
    mc_model *m = load_base(0), *fused = NULL;
    mc_adapter *a = NULL;
    mc_st_set ref, out;
    char dir[4200], path[4300];
    size_t n, i, n_checked = 0;
    int32_t *ids = lu_ids(&n);
    float *lo = NULL, *alo = NULL;
    double worst = 0;
    memset(&ref, 0, sizeof ref);
    memset(&out, 0, sizeof out);
    snprintf(dir, sizeof dir, "%s", t_tmpdir("golden_peft_fused"));
    if (!m) goto done;
    CHECK_OK(mc_adapter_load(m, t_src(LU_PEFT_DIR), &a));
    if (!a) goto done;
    CHECK_OK(mc_adapter_fuse(m, a, t_src(LU_BASE_DIR), dir));
    CHECK_OK(mc_st_open_file(t_src("tests/fixtures/peft/merged_proj.safetensors"), &ref));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_OK(mc_st_open_file(path, &out));
    for (i = 0; i < ref.n; i++) {
        const mc_st_tensor *r = &ref.tensors[i], *o = mc_st_find(&out, r->name);
        size_t k, ne = r->nbytes / 4;
        if (!o) {
            fprintf(stderr, "fused checkpoint lacks %s\n", r->name);
            CHECK(o != NULL);
            continue;
        }
        CHECK(o->st_dtype == MC_ST_F32 && o->nbytes == r->nbytes);
        if (o->nbytes != r->nbytes) continue;
        for (k = 0; k < ne; k++) {
            float x, y;
            memcpy(&x, (const char *)o->data + 4 * k, 4);
            memcpy(&y, (const char *)r->data + 4 * k, 4);
            if (fabs((double)x - (double)y) > worst) worst = fabs((double)x - (double)y);
        }
        n_checked++;
    }
    printf("fused projections vs merge_and_unload: %zu tensors, max |diff| %.3g\n", n_checked, worst);
    CHECK_INT(n_checked, 20);
    CHECK(worst <= 1e-6);
    /* config.json and generation_config.json came along; the fused model gives the adapter's logits */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    CHECK(mc_path_exists(path));
    CHECK_OK(lu_load(dir, false, &fused));
    if (fused) {
        lo = lu_logits(fused, NULL, 1.0f, ids, n);
        alo = lu_logits(m, a, 1.0f, ids, n);
        if (lo && alo) {
            float *pref = ref_logits(n, 512);
            double e1 = CHECK_REL_L2(lo, alo, n * 512, 2e-5);
            double e2 = pref ? CHECK_REL_L2(lo, pref, n * 512, 2e-5) : -1;
            printf("fused model logits: rel L2 %.3g vs unmerged, %.3g vs PEFT\n", e1, e2);
            mc_free(pref);
        }
    }
done:
    mc_st_close(&ref);
    mc_st_close(&out);
    free(lo);
    free(alo);
    free(ids);
    mc_model_free(fused);
    mc_adapter_free(a);
    mc_model_free(m);
}

/* The adapter PEFT trained for 5 AdamW steps loads, with its weights. */
static void test_trained_loads(void) {
    mc_model *m = load_base(0);
    mc_adapter *a = NULL, *b = NULL;
    if (!m) return;
    CHECK_OK(mc_adapter_load(m, t_src("tests/fixtures/peft/trained"), &a));
    CHECK_OK(mc_adapter_load(m, t_src(LU_PEFT_DIR), &b));
    if (a && b) {
        CHECK_INT(a->n_params, b->n_params);
        /* per layer r * (in + out) summed: 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192) */
        CHECK_INT(mc_adapter_n_params(a), 2 * 4096);
        CHECK(!lu_same_params(a, b));
    }
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_model_free(m);
}

/* Saves adapter a into dir with our logits and the ids, for check_peft_load.py. */
static void write_check_case(mc_model *m, const mc_adapter *a, const char *dir, const int32_t *ids,
                             size_t n) {
    char path[4300];
    float *lo = lu_logits(m, a, 1.0f, ids, n);
    size_t shape[2], i;
    FILE *f;
    CHECK_OK(mc_adapter_save(a, dir));
    CHECK(lo != NULL);
    if (!lo) return;
    shape[0] = n;
    shape[1] = 512;
    snprintf(path, sizeof path, "%s/our_logits.npy", dir);
    CHECK_OK(mc_npy_write_f32(path, lo, shape, 2));
    snprintf(path, sizeof path, "%s/our_ids.json", dir);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fprintf(f, "{\"ids\": [");
        for (i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", ids[i]);
        fprintf(f, "]}\n");
        fclose(f);
    }
    free(lo);
}

/* Adapters written by mc_adapter_save for the PEFT load check: the fixture re-saved, and
 * an mlx-lm adapter on q/v/down of the last layer with an absolute scale, saved as PEFT
 * (layers_to_transform [1], lora_alpha = scale * r). */
static void test_write_peft_check_inputs(void) {
    mc_model *m = load_base(0);
    mc_adapter *a = NULL, *b = NULL, *c = NULL;
    char root[4200], dir[4300], mlx[4300];
    size_t n;
    int32_t *ids = lu_ids(&n);
    snprintf(root, sizeof root, "%s", t_tmpdir("peft_check"));
    if (!m) goto done;
    CHECK_OK(mc_adapter_load(m, t_src(LU_PEFT_DIR), &a));
    snprintf(dir, sizeof dir, "%s/resaved", root);
    if (a) write_check_case(m, a, dir, ids, n);
    snprintf(mlx, sizeof mlx, "%s/mlx_src", root);
    CHECK(mkdir(mlx, 0755) == 0);
    CHECK_OK(lu_make_mlx(mlx, (1u << MC_LM_Q) | (1u << MC_LM_V) | (1u << MC_LM_DOWN), 1, 1, 3.0,
                         "[\"self_attn.q_proj\", \"self_attn.v_proj\", \"mlp.down_proj\"]"));
    CHECK_OK(mc_adapter_load(m, mlx, &b));
    snprintf(dir, sizeof dir, "%s/mlx_subset", root);
    if (b) {
        CHECK_INT(b->first_layer, 1);
        CHECK_NEAR(b->scale, 3.0, 0);
        write_check_case(m, b, dir, ids, n);
        /* what we wrote reads back as the same adapter */
        CHECK_OK(mc_adapter_load(m, dir, &c));
        if (c) {
            CHECK_INT(c->first_layer, 1);
            CHECK_INT(c->targets, b->targets);
            CHECK_NEAR(c->alpha, 12.0, 0);
            CHECK_NEAR(c->scale, 3.0, 0);
            CHECK(lu_same_params(c, b));
        }
    }
    printf("PEFT load-check inputs written to %s (resaved, mlx_subset)\n", root);
done:
    free(ids);
    mc_adapter_free(a);
    mc_adapter_free(b);
    mc_adapter_free(c);
    mc_model_free(m);
}

int main(void) {
    RUN(test_eval_fast);
    RUN(test_eval_reference);
    RUN(test_fuse);
    RUN(test_trained_loads);
    RUN(test_write_peft_check_inputs);
    return t_summary();
}
