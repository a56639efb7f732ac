/* st_write.c - writing safetensors files: validates the tensors, lays the data out back to
 * back (largest element size first, so every tensor is aligned to its element size), writes
 * a name-sorted header padded to 8 bytes, and streams it all to path atomically. */
#include "io_internal.h"

#include <stdlib.h>

/* One tensor being written: the caller's description, its byte size and data offset. */
typedef struct st_item {
    const mc_st_out *t;
    size_t nbytes;
    size_t begin; /* offset in the data area */
} st_item;

/* Orders items by tensor name. */
static int cmp_item_name(const void *a, const void *b) {
    const st_item *x = a, *y = b;
    return strcmp(x->t->name, y->t->name);
}

/* Orders items by element size (largest first), then by name. */
static int cmp_item_layout(const void *a, const void *b) {
    const st_item *x = a, *y = b;
    size_t sx = mc_st_dtype_size(x->t->st_dtype), sy = mc_st_dtype_size(y->t->st_dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->t->name, y->t->name);
}

/* Validates tensor t and computes its byte size. */
static mc_status out_nbytes(const mc_st_out *t, const char *path, size_t *nbytes) {
    size_t n;
    int i;
    if (!t->name) return mc_fail(MC_ERR_INVALID_ARG, "%s: a tensor has a NULL name", path);
    if (strcmp(t->name, "__metadata__") == 0)
        return mc_fail(MC_ERR_INVALID_ARG, "%s: \"__metadata__\" is not a valid tensor name", path);
    n = mc_st_dtype_size(t->st_dtype);
    if (n == 0)
        return mc_fail(MC_ERR_INVALID_ARG, "%s: tensor '%.200s': invalid dtype %d", path, t->name,
                       (int)t->st_dtype);
    if (t->ndim < 0 || t->ndim > MC_MAX_DIMS)
        return mc_fail(MC_ERR_INVALID_ARG, "%s: tensor '%.200s': ndim %d outside 0..%d", path,
                       t->name, t->ndim, MC_MAX_DIMS);
    for (i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || (uint64_t)t->shape[i] > (uint64_t)SIZE_MAX)
            return mc_fail(MC_ERR_INVALID_ARG, "%s: tensor '%.200s': shape[%d] = %lld", path,
                           t->name, i, (long long)t->shape[i]);
        if (!mc_mul_ok(n, (size_t)t->shape[i], &n))
            return mc_fail(MC_ERR_INVALID_ARG, "%s: tensor '%.200s': size overflows", path,
                           t->name);
    }
    if (n > 0 && !t->data)
        return mc_fail(MC_ERR_INVALID_ARG, "%s: tensor '%.200s': data is NULL", path, t->name);
    *nbytes = n;
    return MC_OK;
}

/* Appends the header JSON for items by_name[0..n) and the metadata pairs, padded with
 * spaces to a multiple of 8 bytes. */
static void build_header(mc_sb *sb, const st_item *by_name, size_t n, const char *const *meta,
                         size_t n_meta) {
    size_t i;
    int d;
    mc_sb_puts(sb, "{");
    if (n_meta > 0) {
        mc_sb_puts(sb, "\"__metadata__\":{");
        for (i = 0; i < n_meta; i++) {
            if (i) mc_sb_puts(sb, ",");
            mc_sb_json_str(sb, meta[2 * i]);
            mc_sb_puts(sb, ":");
            mc_sb_json_str(sb, meta[2 * i + 1]);
        }
        mc_sb_puts(sb, "}");
    }
    for (i = 0; i < n; i++) {
        const mc_st_out *t = by_name[i].t;
        if (i || n_meta) mc_sb_puts(sb, ",");
        mc_sb_json_str(sb, t->name);
        mc_sb_printf(sb, ":{\"dtype\":\"%s\",\"shape\":[", mc_st_dtype_name(t->st_dtype));
        for (d = 0; d < t->ndim; d++) mc_sb_printf(sb, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        mc_sb_printf(sb, "],\"data_offsets\":[%zu,%zu]}", by_name[i].begin,
                     by_name[i].begin + by_name[i].nbytes);
    }
    mc_sb_puts(sb, "}");
    while (!sb->oom && sb->len % 8 != 0) mc_sb_puts(sb, " ");
}

mc_status mc_st_write(const char *path, const mc_st_out *ts, size_t n, const char *const *meta,
                      size_t n_meta) {
    st_item *lay = NULL, *by_name = NULL; /* [n] each: data order, name order */
    size_t i, j, off = 0, bytes;
    mc_sb sb = {0};
    mc_atomic_file f = {-1, NULL, NULL};
    uint8_t len8[8];
    mc_status st = MC_OK;
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_st_write: path is NULL");
    if ((!ts && n) || (!meta && n_meta))
        return mc_fail(MC_ERR_INVALID_ARG, "%s: mc_st_write: NULL tensors or metadata", path);
    for (i = 0; i < 2 * n_meta; i++)
        if (!meta[i]) return mc_fail(MC_ERR_INVALID_ARG, "%s: metadata string %zu is NULL", path, i);
    for (i = 0; i < n_meta; i++)
        for (j = 0; j < i; j++)
            if (strcmp(meta[2 * i], meta[2 * j]) == 0)
                return mc_fail(MC_ERR_DUPLICATE, "%s: metadata key '%.200s' occurs twice", path,
                               meta[2 * i]);
    if (!mc_mul_ok(n, sizeof *lay, &bytes))
        return mc_fail(MC_ERR_INVALID_ARG, "%s: too many tensors", path);
    lay = mc_malloc(bytes);
    by_name = mc_malloc(bytes);
    if (!lay || !by_name) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", path);
        goto done;
    }
    for (i = 0; i < n; i++) {
        lay[i].t = &ts[i];
        lay[i].begin = 0;
        st = out_nbytes(&ts[i], path, &lay[i].nbytes);
        if (st != MC_OK) goto done;
    }
    qsort(lay, n, sizeof *lay, cmp_item_layout);
    for (i = 0; i < n; i++) {
        lay[i].begin = off;
        if (!mc_add_ok(off, lay[i].nbytes, &off)) {
            st = mc_fail(MC_ERR_INVALID_ARG, "%s: total size overflows", path);
            goto done;
        }
    }
    if (n) memcpy(by_name, lay, bytes);
    qsort(by_name, n, sizeof *by_name, cmp_item_name);
    for (i = 1; i < n; i++) {
        if (strcmp(by_name[i - 1].t->name, by_name[i].t->name) == 0) {
            st = mc_fail(MC_ERR_DUPLICATE, "%s: tensor '%.200s' occurs twice", path,
                         by_name[i].t->name);
            goto done;
        }
    }
    build_header(&sb, by_name, n, meta, n_meta);
    if (sb.oom) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory building the header", path);
        goto done;
    }
    for (i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)sb.len >> (8 * i));
    st = mc_atomic_open(&f, path);
    if (st != MC_OK) goto done;
    st = mc_atomic_write(&f, len8, sizeof len8);
    if (st == MC_OK) st = mc_atomic_write(&f, sb.buf, sb.len);
    for (i = 0; i < n && st == MC_OK; i++) st = mc_atomic_write(&f, lay[i].t->data, lay[i].nbytes);
    if (st == MC_OK) st = mc_atomic_commit(&f); /* releases f */
done:
    mc_atomic_abort(&f); /* no-op once committed or never opened */
    mc_sb_free(&sb);
    mc_free(lay);
    mc_free(by_name);
    return st;
}
