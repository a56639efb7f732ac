/* safetensors.c - reading safetensors files: dtype table, the validating parser over a
 * file image, and tensor sets over one file or a sharded checkpoint folder
 * (model.safetensors.index.json), searchable by name. Tensor data stays in the mapping.
 *
 * File layout: [8-byte little-endian N][N bytes of JSON header][data area]. The header
 * maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
 * relative to the data area; "__metadata__" holds string pairs. */
#include "io_internal.h"

#include <stdlib.h>

/* ---- dtypes -------------------------------------------------------------------------- */

typedef struct st_dtype_info {
    const char *name;
    size_t size;
} st_dtype_info;

/* Indexed by mc_st_dtype. */
static const st_dtype_info k_dtypes[] = {
    {"F32", 4},  {"F16", 2}, {"BF16", 2}, {"F64", 8},  {"I64", 8},     {"I32", 4},
    {"I16", 2},  {"I8", 1},  {"U8", 1},   {"U16", 2},  {"U32", 4},     {"U64", 8},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};
enum { N_DTYPES = (int)(sizeof k_dtypes / sizeof k_dtypes[0]) };
_Static_assert(N_DTYPES == (int)MC_ST_F8_E5M2 + 1, "k_dtypes must list every mc_st_dtype");

static bool dtype_valid(mc_st_dtype t) { return (int)t >= 0 && (int)t < N_DTYPES; }

const char *mc_st_dtype_name(mc_st_dtype t) { return dtype_valid(t) ? k_dtypes[t].name : "?"; }

size_t mc_st_dtype_size(mc_st_dtype t) { return dtype_valid(t) ? k_dtypes[t].size : 0; }

bool mc_st_dtype_compute(mc_st_dtype t, mc_dtype *out) {
    switch (t) {
    case MC_ST_F32: *out = MC_F32; return true;
    case MC_ST_F16: *out = MC_F16; return true;
    case MC_ST_BF16: *out = MC_BF16; return true;
    case MC_ST_F64:
    case MC_ST_I64:
    case MC_ST_I32:
    case MC_ST_I16:
    case MC_ST_I8:
    case MC_ST_U8:
    case MC_ST_U16:
    case MC_ST_U32:
    case MC_ST_U64:
    case MC_ST_BOOL:
    case MC_ST_F8_E4M3:
    case MC_ST_F8_E5M2:
    default: return false;
    }
}

/* Looks a dtype up by its safetensors name; false when unknown. */
static bool dtype_from_name(const char *s, mc_st_dtype *out) {
    int i;
    for (i = 0; i < N_DTYPES; i++) {
        if (strcmp(k_dtypes[i].name, s) == 0) {
            *out = (mc_st_dtype)i;
            return true;
        }
    }
    return false;
}

/* ---- parsing one file image ---------------------------------------------------------- */

/* Checks "__metadata__": an object whose values are all strings. */
static mc_status check_metadata(const cJSON *m, const char *fname) {
    const cJSON *c;
    if (!cJSON_IsObject(m))
        return mc_fail(MC_ERR_JSON, "%s: \"__metadata__\" must be an object of strings, not %s",
                       fname, mc_json_type_name(m));
    for (c = m->child; c; c = c->next)
        if (!cJSON_IsString(c))
            return mc_fail(MC_ERR_JSON, "%s: \"__metadata__\" value '%.200s' is %s, not a string",
                           fname, c->string ? c->string : "", mc_json_type_name(c));
    return MC_OK;
}

/* Reads the "shape" array of entry e (tensor name) into t->ndim / t->shape. */
static mc_status parse_shape(const cJSON *e, const char *name, const char *fname, mc_st_tensor *t) {
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *d;
    int ndim = 0;
    if (!cJSON_IsArray(shape))
        return mc_fail(MC_ERR_JSON, "%s: tensor '%.200s': \"shape\" must be an array, not %s",
                       fname, name, mc_json_type_name(shape));
    for (d = shape->child; d; d = d->next) {
        int64_t v;
        if (ndim == MC_MAX_DIMS)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: tensor '%.200s' has more than %d dims",
                           fname, name, MC_MAX_DIMS);
        if (!mc_json_int_in(d, 0, MC_JSON_MAX_EXACT, &v))
            return mc_fail(MC_ERR_JSON,
                           "%s: tensor '%.200s': shape[%d] is not a non-negative integer",
                           fname, name, ndim);
        t->shape[ndim++] = v;
    }
    t->ndim = ndim;
    return MC_OK;
}

/* Reads "data_offsets" of entry e into *begin, *end (validated against data_size). */
static mc_status parse_offsets(const cJSON *e, const char *name, const char *fname,
                               size_t data_size, size_t *begin, size_t *end) {
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    const cJSON *b, *en;
    int64_t v[2];
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !cJSON_IsNumber(off->child) ||
        !cJSON_IsNumber(off->child->next))
        return mc_fail(MC_ERR_JSON,
                       "%s: tensor '%.200s': \"data_offsets\" must be an array of two integers",
                       fname, name);
    b = off->child;
    en = b->next;
    if (!mc_json_int_in(b, 0, MC_JSON_MAX_EXACT, &v[0]) ||
        !mc_json_int_in(en, 0, MC_JSON_MAX_EXACT, &v[1]))
        return mc_fail(MC_ERR_OFFSETS,
                       "%s: tensor '%.200s': data_offsets [%.17g, %.17g] are not non-negative "
                       "integers below 2^53",
                       fname, name, b->valuedouble, en->valuedouble);
    if ((uint64_t)v[1] > (uint64_t)data_size || v[0] > v[1])
        return mc_fail(MC_ERR_OFFSETS,
                       "%s: tensor '%.200s': data_offsets [%lld, %lld] outside the %zu-byte data "
                       "area or reversed",
                       fname, name, (long long)v[0], (long long)v[1], data_size);
    *begin = (size_t)v[0];
    *end = (size_t)v[1];
    return MC_OK;
}

/* Parses one header entry e into t (name copied), checking dtype, shape, offsets and
 * size. data[0..data_size) is the data area. On failure t owns nothing. */
static mc_status parse_entry(const cJSON *e, const uint8_t *data, size_t data_size,
                             const char *fname, mc_st_tensor *t) {
    const char *name = e->string ? e->string : "";
    const cJSON *dt;
    size_t begin = 0, end = 0, nelem = 1, nbytes;
    bool zero = false;
    int i;
    mc_status st;
    if (!cJSON_IsObject(e))
        return mc_fail(MC_ERR_JSON, "%s: tensor '%.200s': entry is %s, not an object", fname,
                       name, mc_json_type_name(e));
    dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return mc_fail(MC_ERR_JSON, "%s: tensor '%.200s': \"dtype\" must be a string, not %s",
                       fname, name, mc_json_type_name(dt));
    if (!dtype_from_name(dt->valuestring, &t->st_dtype))
        return mc_fail(MC_ERR_DTYPE, "%s: tensor '%.200s': unknown dtype '%.40s'", fname, name,
                       dt->valuestring);
    st = parse_shape(e, name, fname, t);
    if (st != MC_OK) return st;
    st = parse_offsets(e, name, fname, data_size, &begin, &end);
    if (st != MC_OK) return st;
    for (i = 0; i < t->ndim; i++) zero = zero || t->shape[i] == 0;
    for (i = 0; i < t->ndim && !zero; i++)
        if (!mc_mul_ok(nelem, (size_t)t->shape[i], &nelem))
            return mc_fail(MC_ERR_TENSOR_SIZE, "%s: tensor '%.200s': element count overflows",
                           fname, name);
    if (zero) nelem = 0;
    if (!mc_mul_ok(nelem, k_dtypes[t->st_dtype].size, &nbytes))
        return mc_fail(MC_ERR_TENSOR_SIZE, "%s: tensor '%.200s': byte size overflows", fname,
                       name);
    if (nbytes != end - begin)
        return mc_fail(MC_ERR_TENSOR_SIZE,
                       "%s: tensor '%.200s': %zu elements of %s need %zu bytes but data_offsets "
                       "span %zu",
                       fname, name, nelem, k_dtypes[t->st_dtype].name, nbytes, end - begin);
    t->name = mc_strdup(name);
    if (!t->name) return mc_fail(MC_ERR_OOM, "%s: out of memory", fname);
    t->data = data + begin;
    t->nbytes = nbytes;
    t->file = fname;
    return MC_OK;
}

/* A tensor's byte range [begin, end) in the data area, and its index. */
typedef struct st_range {
    size_t begin, end, idx;
} st_range;

/* Orders ranges by begin, then by end. */
static int cmp_range(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Fails with MC_ERR_OVERLAP when two non-empty tensors of ts[0..n) share a byte.
 * data is the data area start. */
static mc_status check_overlaps(const mc_st_tensor *ts, size_t n, const uint8_t *data,
                                const char *fname) {
    st_range *r = NULL; /* [m] non-empty tensors */
    size_t m = 0, i, bytes, far = 0; /* far: index into r of the range reaching furthest */
    mc_status st = MC_OK;
    if (n < 2) return MC_OK;
    if (!mc_mul_ok(n, sizeof *r, &bytes)) return mc_fail(MC_ERR_OOM, "%s: too many tensors", fname);
    r = mc_malloc(bytes);
    if (!r) return mc_fail(MC_ERR_OOM, "%s: out of memory", fname);
    for (i = 0; i < n; i++) {
        if (ts[i].nbytes == 0) continue;
        r[m].begin = (size_t)((const uint8_t *)ts[i].data - data);
        r[m].end = r[m].begin + ts[i].nbytes;
        r[m].idx = i;
        m++;
    }
    qsort(r, m, sizeof *r, cmp_range);
    for (i = 1; i < m; i++) {
        if (r[i].begin < r[far].end) {
            st = mc_fail(MC_ERR_OVERLAP,
                         "%s: tensors '%.200s' [%zu, %zu) and '%.200s' [%zu, %zu) overlap", fname,
                         ts[r[far].idx].name, r[far].begin, r[far].end, ts[r[i].idx].name,
                         r[i].begin, r[i].end);
            break;
        }
        if (r[i].end > r[far].end) far = i;
    }
    mc_free(r);
    return st;
}

void mc_st_file_free(mc_st_file *f) {
    size_t i;
    if (!f) return;
    for (i = 0; f->tensors && i < f->n; i++) mc_free(f->tensors[i].name);
    mc_free(f->tensors);
    f->tensors = NULL;
    f->n = 0;
}

mc_status mc_st_parse(const uint8_t *buf, size_t len, const char *fname, mc_st_file *out) {
    cJSON *root = NULL;
    const cJSON *c;
    mc_st_tensor *ts = NULL; /* [cap] */
    size_t cap = 0, n = 0, data_size, i;
    uint64_t hlen = 0;
    const uint8_t *data;
    mc_status st;
    fname = mc_io_name(fname);
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_st_parse: out is NULL", fname);
    out->tensors = NULL;
    out->n = 0;
    if (!buf && len) return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_st_parse: buf is NULL", fname);
    if (len < 8)
        return mc_fail(MC_ERR_TRUNCATED,
                       "%s: file is %zu bytes, too short for the 8-byte header length", fname,
                       len);
    for (i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    if (hlen > (uint64_t)(len - 8))
        return mc_fail(MC_ERR_HEADER_SIZE,
                       "%s: header length %llu exceeds the %zu bytes that follow it", fname,
                       (unsigned long long)hlen, len - 8);
    data = buf + 8 + hlen;
    data_size = len - 8 - (size_t)hlen;
    st = mc_json_parse((const char *)buf + 8, (size_t)hlen, fname, &root);
    if (st != MC_OK) goto done;
    if (!cJSON_IsObject(root)) {
        st = mc_fail(MC_ERR_JSON, "%s: header is %s, not a JSON object", fname,
                     mc_json_type_name(root));
        goto done;
    }
    st = mc_json_check_unique(root, fname, "tensor", MC_ERR_DUPLICATE);
    if (st != MC_OK) goto done;
    for (c = root->child; c; c = c->next) cap++;
    ts = mc_calloc(cap, sizeof *ts);
    if (!ts) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory for %zu tensors", fname, cap);
        goto done;
    }
    for (c = root->child; c; c = c->next) {
        if (c->string && strcmp(c->string, "__metadata__") == 0) {
            st = check_metadata(c, fname);
        } else {
            st = parse_entry(c, data, data_size, fname, &ts[n]);
            if (st == MC_OK) n++;
        }
        if (st != MC_OK) goto done;
    }
    st = check_overlaps(ts, n, data, fname);
    if (st != MC_OK) goto done;
    out->tensors = ts;
    out->n = n;
    ts = NULL;
done:
    for (i = 0; ts && i < n; i++) mc_free(ts[i].name);
    mc_free(ts);
    cJSON_Delete(root);
    return st;
}

/* ---- tensor sets --------------------------------------------------------------------- */

static int cmp_tensor_name(const void *a, const void *b) {
    const mc_st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* bsearch comparator: key is a name (const char *), elem an mc_st_tensor. */
static int cmp_name_tensor(const void *key, const void *elem) {
    const mc_st_tensor *t = elem;
    return strcmp((const char *)key, t->name);
}

/* Orders pointers to C strings. */
static int cmp_cstr_ptr(const void *a, const void *b) {
    const char *const *x = a;
    const char *const *y = b;
    return strcmp(*x, *y);
}

const mc_st_tensor *mc_st_find(const mc_st_set *s, const char *name) {
    if (!s || !name || s->n == 0) return NULL;
    return bsearch(name, s->tensors, s->n, sizeof *s->tensors, cmp_name_tensor);
}

void mc_st_close(mc_st_set *s) {
    size_t i;
    if (!s) return;
    for (i = 0; s->tensors && i < s->n; i++) mc_free(s->tensors[i].name);
    mc_free(s->tensors);
    for (i = 0; i < s->n_files; i++) {
        if (s->maps) mc_unmap(&s->maps[i]);
        if (s->paths) mc_free(s->paths[i]);
    }
    mc_free(s->maps);
    mc_free(s->paths);
    memset(s, 0, sizeof *s);
}

/* Allocates s's per-file arrays for n_files files (paths still NULL). */
static mc_status set_alloc_files(mc_st_set *s, size_t n_files, const char *where) {
    s->maps = mc_calloc(n_files, sizeof *s->maps);
    s->paths = mc_calloc(n_files, sizeof *s->paths);
    s->n_files = n_files;
    if (!s->maps || !s->paths) return mc_fail(MC_ERR_OOM, "%s: out of memory", where);
    return MC_OK;
}

/* Maps and parses s->paths[0..n_files) into s->maps and gathers all tensors into
 * s->tensors sorted by name (MC_ERR_DUPLICATE when a name occurs in two files). where
 * names the checkpoint in messages. On failure the caller closes s. */
static mc_status set_load(mc_st_set *s, const char *where) {
    mc_st_file *files = NULL; /* [n_files] */
    size_t total = 0, i, j, k = 0;
    mc_status st = MC_OK;
    files = mc_calloc(s->n_files, sizeof *files);
    if (!files) return mc_fail(MC_ERR_OOM, "%s: out of memory", where);
    for (i = 0; i < s->n_files; i++) {
        st = mc_map_file(s->paths[i], &s->maps[i]);
        if (st != MC_OK) goto done;
        st = mc_st_parse(s->maps[i].data, s->maps[i].size, s->paths[i], &files[i]);
        if (st != MC_OK) goto done;
        if (!mc_add_ok(total, files[i].n, &total)) {
            st = mc_fail(MC_ERR_OOM, "%s: too many tensors", where);
            goto done;
        }
    }
    s->tensors = mc_calloc(total, sizeof *s->tensors);
    if (!s->tensors) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory for %zu tensors", where, total);
        goto done;
    }
    for (i = 0; i < s->n_files; i++) {
        for (j = 0; j < files[i].n; j++) {
            s->tensors[k] = files[i].tensors[j];
            s->tensors[k].file = s->paths[i];
            files[i].tensors[j].name = NULL; /* moved into the set */
            k++;
        }
    }
    s->n = total;
    qsort(s->tensors, s->n, sizeof *s->tensors, cmp_tensor_name);
    for (i = 1; i < s->n; i++) {
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0) {
            st = mc_fail(MC_ERR_DUPLICATE, "%s: tensor '%.200s' occurs in both %s and %s", where,
                         s->tensors[i].name, s->tensors[i - 1].file, s->tensors[i].file);
            goto done;
        }
    }
done:
    for (i = 0; i < s->n_files; i++) mc_st_file_free(&files[i]);
    mc_free(files);
    return st;
}

mc_status mc_st_open_file(const char *path, mc_st_set *out) {
    mc_status st;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_st_open_file: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_st_open_file: path is NULL");
    st = set_alloc_files(out, 1, path);
    if (st != MC_OK) goto done;
    out->paths[0] = mc_strdup(path);
    if (!out->paths[0]) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", path);
        goto done;
    }
    st = set_load(out, path);
done:
    if (st != MC_OK) mc_st_close(out);
    return st;
}

/* True when a shard file name from an index is a plain name inside the folder. */
static bool shard_name_ok(const char *s) {
    return *s && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..");
}

/* Checks that each tensor the index lists lives in the shard it names. keys[i] is the
 * tensor, shard_of[i] its shard's index into s->paths. */
static mc_status verify_index(const mc_st_set *s, const cJSON *wm, const size_t *shard_of,
                              const char *idx_path) {
    const cJSON *c;
    size_t i = 0;
    for (c = wm->child; c; c = c->next, i++) {
        const mc_st_tensor *t = mc_st_find(s, c->string);
        if (!t || t->file != s->paths[shard_of[i]])
            return mc_fail(MC_ERR_MISSING_TENSOR, "%s: tensor '%.200s' is not in shard %s%s%s",
                           idx_path, c->string, s->paths[shard_of[i]],
                           t ? " (it is in " : "", t ? t->file : "");
    }
    return MC_OK;
}

/* Opens the shards that the index file idx_path (in folder dir) lists. */
static mc_status open_index(const char *dir, const char *idx_path, mc_st_set *out) {
    char *text = NULL;
    size_t len = 0, n = 0, n_files = 0, i, bytes;
    cJSON *root = NULL;
    const cJSON *wm, *c;
    const char **names = NULL; /* [n] distinct shard names after sorting */
    size_t *shard_of = NULL;   /* [n] per weight_map entry: index into names */
    mc_status st;
    st = mc_read_file(idx_path, &text, &len);
    if (st != MC_OK) goto done;
    st = mc_json_parse(text, len, idx_path, &root);
    if (st != MC_OK) goto done;
    wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!wm || !cJSON_IsObject(wm)) {
        st = mc_fail(MC_ERR_JSON, "%s: expected an object with a \"weight_map\" object", idx_path);
        goto done;
    }
    st = mc_json_check_unique(wm, idx_path, "weight_map tensor", MC_ERR_DUPLICATE);
    if (st != MC_OK) goto done;
    for (c = wm->child; c; c = c->next) {
        if (!cJSON_IsString(c) || !shard_name_ok(c->valuestring)) {
            st = mc_fail(MC_ERR_JSON,
                         "%s: weight_map['%.200s'] must be a file name in the folder (no '/', "
                         "'\\\\' or '..')",
                         idx_path, c->string);
            goto done;
        }
        n++;
    }
    if (!mc_mul_ok(n ? n : 1, sizeof(size_t), &bytes)) {
        st = mc_fail(MC_ERR_OOM, "%s: too many entries", idx_path);
        goto done;
    }
    names = mc_malloc(bytes);
    shard_of = mc_malloc(bytes);
    if (!names || !shard_of) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", idx_path);
        goto done;
    }
    i = 0;
    for (c = wm->child; c; c = c->next) names[i++] = c->valuestring;
    qsort(names, n, sizeof *names, cmp_cstr_ptr);
    for (i = 0; i < n; i++)
        if (n_files == 0 || strcmp(names[n_files - 1], names[i]) != 0) names[n_files++] = names[i];
    i = 0;
    for (c = wm->child; c; c = c->next) {
        const char *key = c->valuestring;
        const char **hit = bsearch(&key, names, n_files, sizeof *names, cmp_cstr_ptr);
        if (!hit) { /* every shard name was put in names above */
            st = mc_fail(MC_ERR_INTERNAL, "%s: shard lookup failed", idx_path);
            goto done;
        }
        shard_of[i++] = (size_t)(hit - names);
    }
    st = set_alloc_files(out, n_files, dir);
    if (st != MC_OK) goto done;
    for (i = 0; i < n_files; i++) {
        out->paths[i] = mc_path_join(dir, names[i]);
        if (!out->paths[i]) {
            st = mc_fail(MC_ERR_OOM, "%s: out of memory", dir);
            goto done;
        }
    }
    st = set_load(out, dir);
    if (st != MC_OK) goto done;
    st = verify_index(out, wm, shard_of, idx_path);
done:
    mc_free(names);
    mc_free(shard_of);
    cJSON_Delete(root);
    mc_free(text);
    return st;
}

mc_status mc_st_open_dir(const char *dir, mc_st_set *out) {
    char *idx = NULL, *single = NULL;
    mc_status st;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_st_open_dir: out is NULL");
    memset(out, 0, sizeof *out);
    if (!dir) return mc_fail(MC_ERR_INVALID_ARG, "mc_st_open_dir: dir is NULL");
    if (!mc_path_exists(dir)) return mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: no such folder", dir);
    if (!mc_path_is_dir(dir)) return mc_fail(MC_ERR_NOT_DIR, "%s: not a folder", dir);
    idx = mc_path_join(dir, "model.safetensors.index.json");
    single = mc_path_join(dir, "model.safetensors");
    if (!idx || !single) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", dir);
        goto done;
    }
    if (mc_path_exists(idx)) {
        st = open_index(dir, idx, out);
    } else if (mc_path_exists(single)) {
        st = mc_st_open_file(single, out);
    } else {
        st = mc_fail(MC_ERR_FILE_NOT_FOUND,
                     "%s: no model.safetensors or model.safetensors.index.json in the folder", dir);
    }
done:
    if (st != MC_OK) mc_st_close(out);
    mc_free(idx);
    mc_free(single);
    return st;
}
