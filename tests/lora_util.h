/* lora_util.h - helpers of the LoRA file tests: the PEFT fixture's tensors as an editable
 * list, writing adapter folders (PEFT and mlx-lm) from it, token ids and logits. */
#ifndef MC_TEST_LORA_UTIL_H
#define MC_TEST_LORA_UTIL_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "lora/lora_io.h"
#include "model/model.h"

#define LU_PEFT_DIR "tests/fixtures/peft/adapter"
#define LU_BASE_DIR "tests/fixtures/tiny_tied_f32"

/* An editable list of tensors to write (names and data owned by the caller or by
 * own_data, freed by lu_tensors_free). */
enum { LU_MAX_T = 80 };
typedef struct lu_tensors {
    mc_st_out t[LU_MAX_T];
    char names[LU_MAX_T][128];
    void *own_data[LU_MAX_T];
    size_t n;
} lu_tensors;

static inline void lu_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, strlen(text), f) != strlen(text)) {
        fprintf(stderr, "cannot write %s\n", path);
        abort();
    }
    fclose(f);
}

/* Copies every tensor of set into o (data borrowed from the set's mapping). */
static inline void lu_from_set(lu_tensors *o, const mc_st_set *set) {
    size_t i;
    memset(o, 0, sizeof *o);
    for (i = 0; i < set->n && i < LU_MAX_T; i++) {
        const mc_st_tensor *t = &set->tensors[i];
        snprintf(o->names[i], sizeof o->names[i], "%s", t->name);
        o->t[i].name = o->names[i];
        o->t[i].st_dtype = t->st_dtype;
        o->t[i].ndim = t->ndim;
        memcpy(o->t[i].shape, t->shape, sizeof o->t[i].shape);
        o->t[i].data = t->data;
    }
    o->n = i;
}

/* Index of the tensor whose name contains sub, or -1. */
static inline int lu_find(const lu_tensors *o, const char *sub) {
    size_t i;
    for (i = 0; i < o->n; i++)
        if (strstr(o->names[i], sub)) return (int)i;
    return -1;
}

/* Removes entry i. */
static inline void lu_remove(lu_tensors *o, int i) {
    size_t j;
    free(o->own_data[i]);
    for (j = (size_t)i; j + 1 < o->n; j++) {
        o->t[j] = o->t[j + 1];
        memcpy(o->names[j], o->names[j + 1], sizeof o->names[j]);
        o->t[j].name = o->names[j];
        o->own_data[j] = o->own_data[j + 1];
    }
    o->n--;
    o->own_data[o->n] = NULL;
}

/* Appends a copy of entry i under a new name; returns its index. */
static inline int lu_dup(lu_tensors *o, int i, const char *name) {
    size_t k = o->n++;
    o->t[k] = o->t[i];
    snprintf(o->names[k], sizeof o->names[k], "%s", name);
    o->t[k].name = o->names[k];
    o->own_data[k] = NULL;
    return (int)k;
}

static inline void lu_rename(lu_tensors *o, int i, const char *name) {
    snprintf(o->names[i], sizeof o->names[i], "%s", name);
}

static inline void lu_tensors_free(lu_tensors *o) {
    size_t i;
    for (i = 0; i < o->n; i++) free(o->own_data[i]);
    memset(o, 0, sizeof *o);
}

static inline mc_status lu_write_st(const lu_tensors *o, const char *path) {
    static const char *const meta[2] = {"format", "pt"};
    return mc_st_write(path, o->t, o->n, meta, 1);
}

/* Opens the PEFT fixture's tensor file. */
static inline mc_status lu_open_fixture(mc_st_set *set) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/adapter_model.safetensors", MC_SOURCE_DIR, LU_PEFT_DIR);
    return mc_st_open_file(path, set);
}

/* Writes an mlx-lm adapter folder into dir from the PEFT fixture: tensors renamed and
 * transposed for the projections in targets (bits) on layers >= first_layer, an
 * adapter_config.json with num_layers, the given scale and keys (NULL: no "keys"). */
static inline mc_status lu_make_mlx(const char *dir, unsigned targets, int first_layer,
                                    int num_layers, double scale, const char *keys_json) {
    mc_st_set set;
    lu_tensors o;
    char path[4200], text[1024];
    size_t i;
    mc_status s = lu_open_fixture(&set);
    if (s != MC_OK) return s;
    memset(&o, 0, sizeof o);
    for (i = 0; i < set.n; i++) {
        const mc_st_tensor *t = &set.tensors[i];
        int l = 0;
        mc_lora_module m = MC_LM_Q;
        bool is_b = false;
        size_t k, r, c, rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
        float *tr;
        if (!mc_peft_tensor_id(t->name, &l, &m, &is_b) || l < first_layer || !(targets & (1u << m)))
            continue;
        k = o.n++;
        tr = malloc(rows * cols * sizeof *tr);
        for (r = 0; r < rows; r++)
            for (c = 0; c < cols; c++) {
                float v;
                memcpy(&v, (const char *)t->data + (r * cols + c) * 4, 4);
                tr[c * rows + r] = v;
            }
        o.own_data[k] = tr;
        mc_mlx_tensor_name(o.names[k], sizeof o.names[k], l, m, is_b);
        o.t[k].name = o.names[k];
        o.t[k].st_dtype = MC_ST_F32;
        o.t[k].ndim = 2;
        o.t[k].shape[0] = (int64_t)cols;
        o.t[k].shape[1] = (int64_t)rows;
        o.t[k].data = tr;
    }
    mc_st_close(&set);
    snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
    s = mc_st_write(path, o.t, o.n, NULL, 0);
    lu_tensors_free(&o);
    if (s != MC_OK) return s;
    snprintf(text, sizeof text,
             "{\n  \"model\": \"tiny\",\n  \"fine_tune_type\": \"lora\",\n  \"num_layers\": %d,\n"
             "  \"lora_parameters\": {\"rank\": 4, \"scale\": %.17g, \"dropout\": 0.0%s%s},\n"
             "  \"batch_size\": 2\n}\n",
             num_layers, scale, keys_json ? ", \"keys\": " : "", keys_json ? keys_json : "");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    lu_write_text(path, text);
    return MC_OK;
}

/* Loads a model folder (2 threads; the reference kernels when reference). */
static inline mc_status lu_load(const char *dir, bool reference, mc_model **out) {
    mc_model_params p = mc_model_default_params();
    p.n_threads = 2;
    p.reference = reference;
    return mc_model_load(dir, &p, out);
}

/* The fixture's token ids (adapter_ids.json) in a malloc'd array. */
static inline int32_t *lu_ids(size_t *n) {
    char path[4200];
    char *text = NULL;
    size_t len = 0, i;
    cJSON *root, *ids;
    int32_t *out;
    snprintf(path, sizeof path, "%s/tests/fixtures/peft/adapter_ids.json", MC_SOURCE_DIR);
    if (mc_read_file(path, &text, &len) != MC_OK) abort();
    root = cJSON_ParseWithLength(text, len);
    mc_free(text);
    ids = cJSON_GetObjectItem(root, "ids");
    *n = (size_t)cJSON_GetArraySize(ids);
    out = malloc(*n * sizeof *out);
    for (i = 0; i < *n; i++) out[i] = (int32_t)cJSON_GetArrayItem(ids, (int)i)->valueint;
    cJSON_Delete(root);
    return out;
}

/* Logits [n, V] of model with adapter (NULL: base) on ids; malloc'd. */
static inline float *lu_logits(mc_model *m, const mc_adapter *a, float scale, const int32_t *ids,
                               size_t n) {
    mc_model_info info;
    float *lo;
    mc_model_get_info(m, &info);
    lo = malloc(n * (size_t)info.vocab_size * sizeof *lo);
    if (mc_model_eval_adapter(m, a, scale, ids, n, lo, NULL) != MC_OK) {
        fprintf(stderr, "eval failed: %s\n", mc_last_error());
        free(lo);
        return NULL;
    }
    return lo;
}

/* A host copy of an adapter's parameters (malloc'd). */
static inline float *lu_params(const mc_adapter *a) {
    mc_backend *be = a->model->be;
    float *h = malloc(a->n_params * sizeof *h);
    if (be->to_host(be, h, a->params, a->n_params * sizeof *h) != MC_OK) abort();
    return h;
}

/* True when a and b have the same layout and bit-identical parameters. */
static inline bool lu_same_params(const mc_adapter *a, const mc_adapter *b) {
    float *x, *y;
    bool same;
    if (a->n_params != b->n_params || a->rank != b->rank || a->targets != b->targets ||
        a->first_layer != b->first_layer)
        return false;
    x = lu_params(a);
    y = lu_params(b);
    same = !memcmp(x, y, a->n_params * sizeof *x);
    free(x);
    free(y);
    return same;
}

#endif /* MC_TEST_LORA_UTIL_H */
