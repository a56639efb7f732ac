/* npy.c - NumPy .npy files: a float32 writer (format 1.0) and a float32/int32 reader
 * (formats 1.0 and 2.0), used for golden data and debugging dumps.
 *
 * Layout: "\x93NUMPY", major, minor, header length (u16 LE for 1.0, u32 LE for 2.0),
 * then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and ended by '\n', then the C-order data. */
#include "io_internal.h"

#include <stdio.h>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c reads and writes little-endian data in place"
#endif
#endif

static const char k_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

mc_status mc_npy_write_f32(const char *path, const float *data, const size_t *shape, int ndim) {
    mc_sb h = {0};
    mc_atomic_file f = {-1, NULL, NULL};
    size_t count = 1, nbytes, total;
    uint8_t pre[10];
    int i;
    mc_status st = MC_OK;
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_npy_write_f32: path is NULL");
    if (ndim < 0 || ndim > MC_MAX_DIMS || (ndim > 0 && !shape))
        return mc_fail(MC_ERR_INVALID_ARG, "%s: ndim %d outside 0..%d", path, ndim, MC_MAX_DIMS);
    for (i = 0; i < ndim; i++)
        if (!mc_mul_ok(count, shape[i], &count))
            return mc_fail(MC_ERR_INVALID_ARG, "%s: element count overflows", path);
    if (!mc_mul_ok(count, sizeof(float), &nbytes))
        return mc_fail(MC_ERR_INVALID_ARG, "%s: byte size overflows", path);
    if (nbytes > 0 && !data) return mc_fail(MC_ERR_INVALID_ARG, "%s: data is NULL", path);
    mc_sb_puts(&h, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (i = 0; i < ndim; i++) mc_sb_printf(&h, "%s%zu", i ? ", " : "", shape[i]);
    mc_sb_puts(&h, ndim == 1 ? ",), }" : "), }");
    /* Pad with spaces so that the data starts at a multiple of 64; end with '\n'. */
    while (!h.oom && (sizeof pre + h.len + 1) % 64 != 0) mc_sb_puts(&h, " ");
    mc_sb_puts(&h, "\n");
    if (h.oom) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory", path);
        goto done;
    }
    total = h.len; /* at most a few hundred bytes: fits the u16 of format 1.0 */
    memcpy(pre, k_magic, sizeof k_magic);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(total & 0xff);
    pre[9] = (uint8_t)(total >> 8);
    st = mc_atomic_open(&f, path);
    if (st != MC_OK) goto done;
    st = mc_atomic_write(&f, pre, sizeof pre);
    if (st == MC_OK) st = mc_atomic_write(&f, h.buf, h.len);
    if (st == MC_OK) st = mc_atomic_write(&f, data, nbytes);
    if (st == MC_OK) st = mc_atomic_commit(&f);
done:
    mc_atomic_abort(&f);
    mc_sb_free(&h);
    return st;
}

/* ---- reading ------------------------------------------------------------------------- */

/* A cursor over the header dict text. */
typedef struct npy_cur {
    const char *p, *start, *end;
    const char *path;
} npy_cur;

static void skip_ws(npy_cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static mc_status syntax(const npy_cur *c, const char *what) {
    return mc_fail(MC_ERR_JSON, "%s: malformed .npy header: %s at byte %zu of the header", c->path,
                   what, (size_t)(c->p - c->start));
}

/* Consumes character ch (after whitespace); false if it is not next. */
static bool eat(npy_cur *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

/* Reads a quoted string ('...' or "...", no escapes) into *s / *n (not terminated). */
static mc_status read_str(npy_cur *c, const char **s, size_t *n) {
    char q;
    const char *b;
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return syntax(c, "expected a string");
    q = *c->p++;
    b = c->p;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\') return syntax(c, "escape in a string");
        c->p++;
    }
    if (c->p >= c->end) return syntax(c, "unterminated string");
    *s = b;
    *n = (size_t)(c->p - b);
    c->p++;
    return MC_OK;
}

/* True when the next n bytes are word. */
static bool next_is(const npy_cur *c, const char *word, size_t n) {
    return (size_t)(c->end - c->p) >= n && memcmp(c->p, word, n) == 0;
}

/* Reads True or False. */
static mc_status read_bool(npy_cur *c, bool *out) {
    skip_ws(c);
    if (next_is(c, "True", 4)) {
        c->p += 4;
        *out = true;
        return MC_OK;
    }
    if (next_is(c, "False", 5)) {
        c->p += 5;
        *out = false;
        return MC_OK;
    }
    return syntax(c, "expected True or False");
}

/* Reads a tuple of non-negative integers: (), (n,), (a, b), (a, b,). */
static mc_status read_shape(npy_cur *c, size_t *shape, int *ndim) {
    *ndim = 0;
    if (!eat(c, '(')) return syntax(c, "expected '(' for the shape");
    for (;;) {
        size_t v = 0;
        skip_ws(c);
        if (eat(c, ')')) return MC_OK;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return syntax(c, "expected a dimension");
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (!mc_mul_ok(v, 10, &v) || !mc_add_ok(v, (size_t)(*c->p - '0'), &v))
                return mc_fail(MC_ERR_TENSOR_SIZE, "%s: .npy dimension overflows", c->path);
            c->p++;
        }
        if (*ndim == MC_MAX_DIMS)
            return mc_fail(MC_ERR_UNSUPPORTED, "%s: .npy array has more than %d dims", c->path,
                           MC_MAX_DIMS);
        shape[(*ndim)++] = v;
        if (eat(c, ')')) return MC_OK;
        if (!eat(c, ',')) return syntax(c, "expected ',' or ')' in the shape");
    }
}

/* Parses the header dict into descr / fortran / shape. */
static mc_status parse_dict(npy_cur *c, bool *is_int, size_t *shape, int *ndim) {
    bool got_descr = false, got_order = false, got_shape = false, fortran = false;
    if (!eat(c, '{')) return syntax(c, "expected '{'");
    while (!eat(c, '}')) {
        const char *k = NULL, *v = NULL;
        size_t kn = 0, vn = 0;
        mc_status st = read_str(c, &k, &kn);
        if (st != MC_OK) return st;
        if (!eat(c, ':')) return syntax(c, "expected ':'");
        if (kn == 5 && memcmp(k, "descr", 5) == 0 && !got_descr) {
            st = read_str(c, &v, &vn);
            if (st != MC_OK) return st;
            if (vn == 3 && memcmp(v, "<f4", 3) == 0) {
                *is_int = false;
            } else if (vn == 3 && memcmp(v, "<i4", 3) == 0) {
                *is_int = true;
            } else {
                return mc_fail(MC_ERR_DTYPE, "%s: .npy dtype '%.*s' is not '<f4' or '<i4'",
                               c->path, (int)MC_MIN(vn, 40), v);
            }
            got_descr = true;
        } else if (kn == 13 && memcmp(k, "fortran_order", 13) == 0 && !got_order) {
            st = read_bool(c, &fortran);
            if (st != MC_OK) return st;
            got_order = true;
        } else if (kn == 5 && memcmp(k, "shape", 5) == 0 && !got_shape) {
            st = read_shape(c, shape, ndim);
            if (st != MC_OK) return st;
            got_shape = true;
        } else {
            return syntax(c, "unknown or repeated key");
        }
        if (!eat(c, ',')) {
            if (!eat(c, '}')) return syntax(c, "expected ',' or '}'");
            break;
        }
    }
    skip_ws(c);
    if (c->p != c->end) return syntax(c, "unexpected text after the dict");
    if (!got_descr || !got_order || !got_shape)
        return syntax(c, "missing 'descr', 'fortran_order' or 'shape'");
    if (fortran)
        return mc_fail(MC_ERR_UNSUPPORTED, "%s: fortran_order True is not supported", c->path);
    return MC_OK;
}

mc_status mc_npy_read(const char *path, void **out, size_t *shape, int *ndim, bool *is_int) {
    mc_mapped m = {NULL, 0};
    npy_cur c;
    size_t hlen, pre, count = 1, nbytes, avail;
    size_t dims[MC_MAX_DIMS];
    int nd = 0, i;
    bool isi = false;
    void *buf = NULL;
    mc_status st;
    if (!out || !shape || !ndim || !is_int || !path)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_npy_read: NULL argument");
    *out = NULL;
    *ndim = 0;
    st = mc_map_file(path, &m);
    if (st != MC_OK) return st;
    if (m.size == 0 || memcmp(m.data, k_magic, MC_MIN(m.size, sizeof k_magic)) != 0) {
        st = mc_fail(m.size == 0 ? MC_ERR_TRUNCATED : MC_ERR_UNSUPPORTED,
                     "%s: not a .npy file (%s)", path, m.size == 0 ? "empty" : "bad magic");
        goto done;
    }
    if (m.size < 10 || (m.data[6] == 2 && m.size < 12)) {
        st = mc_fail(MC_ERR_TRUNCATED, "%s: .npy file ends inside its preamble", path);
        goto done;
    }
    if (m.data[6] == 1) {
        pre = 10;
        hlen = (size_t)m.data[8] | (size_t)m.data[9] << 8;
    } else if (m.data[6] == 2) {
        pre = 12;
        hlen = (size_t)m.data[8] | (size_t)m.data[9] << 8 | (size_t)m.data[10] << 16 |
               (size_t)m.data[11] << 24;
    } else {
        st = mc_fail(MC_ERR_UNSUPPORTED, "%s: .npy format version %d.%d is not supported", path,
                     m.data[6], m.data[7]);
        goto done;
    }
    if (hlen > m.size - pre) {
        st = mc_fail(MC_ERR_TRUNCATED, "%s: .npy header of %zu bytes runs past the end of the file",
                     path, hlen);
        goto done;
    }
    c.start = (const char *)m.data + pre;
    c.p = c.start;
    c.end = c.start + hlen;
    c.path = path;
    st = parse_dict(&c, &isi, dims, &nd);
    if (st != MC_OK) goto done;
    for (i = 0; i < nd; i++) {
        if (!mc_mul_ok(count, dims[i], &count)) {
            st = mc_fail(MC_ERR_TENSOR_SIZE, "%s: .npy element count overflows", path);
            goto done;
        }
    }
    avail = m.size - pre - hlen;
    if (!mc_mul_ok(count, 4, &nbytes) || nbytes > avail) {
        st = mc_fail(MC_ERR_TRUNCATED, "%s: .npy data needs %zu elements but the file holds %zu bytes",
                     path, count, avail);
        goto done;
    }
    if (nbytes < avail) {
        st = mc_fail(MC_ERR_TENSOR_SIZE, "%s: %zu bytes follow the .npy data", path, avail - nbytes);
        goto done;
    }
    buf = mc_malloc(nbytes);
    if (!buf) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory for %zu bytes", path, nbytes);
        goto done;
    }
    if (nbytes) memcpy(buf, m.data + pre + hlen, nbytes);
    for (i = 0; i < nd; i++) shape[i] = dims[i];
    *ndim = nd;
    *is_int = isi;
    *out = buf;
done:
    mc_unmap(&m);
    return st;
}
