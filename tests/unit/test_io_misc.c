/* test_io_misc.c - the rest of the io layer: .npy writing and reading (v1.0 and v2.0,
 * every rejected form), paths, mmap and whole-file reads, atomic writes, JSON parsing
 * with byte offsets, and allocation-failure sweeps. */
#include "test.h"

#include "io/io.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][4096];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

/* Reads a whole file with stdio into a malloc'd buffer. */
static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long sz;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)sz + 1);
    if (!b || fread(b, 1, (size_t)sz, f) != (size_t)sz) abort();
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* Writes a .npy file: given version (1 or 2), header dict text (padded here), data. */
static void write_npy(const char *path, int version, const char *dict, const void *data,
                      size_t n) {
    size_t dl = strlen(dict), pre = version == 1 ? 10 : 12, hl = dl + 1, total;
    uint8_t *b;
    while ((pre + hl) % 64) hl++;
    total = pre + hl + n;
    b = malloc(total);
    if (!b) abort();
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (uint8_t)version;
    b[7] = 0;
    b[8] = (uint8_t)(hl & 0xff);
    b[9] = (uint8_t)(hl >> 8);
    if (version == 2) {
        b[10] = (uint8_t)(hl >> 16);
        b[11] = (uint8_t)(hl >> 24);
    }
    memset(b + pre, ' ', hl);
    memcpy(b + pre, dict, dl);
    b[pre + hl - 1] = '\n';
    if (n) memcpy(b + pre + hl, data, n);
    write_bytes(path, b, total);
    free(b);
}

/* ---- .npy ---------------------------------------------------------------------------- */

static void test_npy_roundtrip(void) {
    const char *dir = t_tmpdir("npy_rt");
    const char *p = path_in(dir, "a.npy");
    float data[24];
    size_t shape[3] = {2, 3, 4}, got[MC_MAX_DIMS], n;
    int ndim = -1, i;
    bool is_int = true;
    void *out = NULL;
    uint8_t *raw;
    for (i = 0; i < 24; i++) data[i] = (float)i * 0.5f - 3.0f;
    CHECK_OK(mc_npy_write_f32(p, data, shape, 3));
    CHECK(!mc_path_exists(path_in(dir, "a.npy.tmp")));
    raw = slurp(p, &n);
    CHECK(raw && memcmp(raw, "\x93NUMPY\x01\x00", 8) == 0);
    CHECK_INT(n, 128 + sizeof data); /* header padded to 64 */
    CHECK(raw && strstr((const char *)raw + 10,
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }") != NULL);
    CHECK(raw && raw[127] == '\n');
    free(raw);
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK_INT(ndim, 3);
    CHECK(!is_int);
    CHECK(got[0] == 2 && got[1] == 3 && got[2] == 4);
    CHECK(out && memcmp(out, data, sizeof data) == 0);
    mc_free(out);
    /* one dim: "(5,)"; zero dims: "()" */
    shape[0] = 5;
    CHECK_OK(mc_npy_write_f32(p, data, shape, 1));
    raw = slurp(p, &n);
    CHECK(raw && strstr((const char *)raw + 10, "'shape': (5,), }") != NULL);
    free(raw);
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK(ndim == 1 && got[0] == 5);
    mc_free(out);
    CHECK_OK(mc_npy_write_f32(p, data, NULL, 0));
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK_INT(ndim, 0);
    CHECK(out && ((float *)out)[0] == data[0]);
    mc_free(out);
    /* an empty array */
    shape[0] = 0;
    CHECK_OK(mc_npy_write_f32(p, NULL, shape, 1));
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK(ndim == 1 && got[0] == 0);
    mc_free(out);
    /* writer argument errors */
    CHECK_STATUS(mc_npy_write_f32(p, data, shape, 9), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_npy_write_f32(p, data, NULL, 2), MC_ERR_INVALID_ARG);
    shape[0] = 3;
    CHECK_STATUS(mc_npy_write_f32(p, NULL, shape, 1), MC_ERR_INVALID_ARG);
    shape[0] = SIZE_MAX;
    CHECK_STATUS(mc_npy_write_f32(p, data, shape, 1), MC_ERR_INVALID_ARG);
    shape[0] = SIZE_MAX / 2;
    shape[1] = 4;
    CHECK_STATUS(mc_npy_write_f32(p, data, shape, 2), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_npy_write_f32(NULL, data, shape, 1), MC_ERR_INVALID_ARG);
    shape[0] = 1;
    CHECK_STATUS(mc_npy_write_f32(path_in(dir, "no/dir/x.npy"), data, shape, 1), MC_ERR_IO);
}

static void test_npy_read_forms(void) {
    const char *dir = t_tmpdir("npy_forms");
    const char *p = path_in(dir, "b.npy");
    int32_t ids[6] = {1, -2, 3, 151643, 5, 6};
    size_t got[MC_MAX_DIMS];
    int ndim;
    bool is_int = false;
    void *out = NULL;
    /* int32, v1.0, numpy's own spacing */
    write_npy(p, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", ids, sizeof ids);
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK(is_int && ndim == 2 && got[0] == 2 && got[1] == 3);
    CHECK(out && memcmp(out, ids, sizeof ids) == 0);
    mc_free(out);
    /* v2.0, keys reordered, double quotes, no trailing comma, no spaces */
    write_npy(p, 2, "{\"shape\":(6,),\"fortran_order\":False,\"descr\":\"<f4\"}", ids, sizeof ids);
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    CHECK(!is_int && ndim == 1 && got[0] == 6);
    mc_free(out);
    /* (6) without a comma is accepted too */
    write_npy(p, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': ( 6 ) }", ids, sizeof ids);
    CHECK_OK(mc_npy_read(p, &out, got, &ndim, &is_int));
    mc_free(out);
}

/* Expects reading a file holding dict + n bytes (v1.0) to fail with s naming the file. */
static void npy_expect(const char *dict, size_t n, mc_status s) {
    const char *dir = t_tmpdir("npy_bad");
    const char *p = path_in(dir, "bad.npy");
    uint8_t zeros[64] = {0};
    size_t got[MC_MAX_DIMS];
    int ndim = 0;
    bool is_int;
    void *out = (void *)1;
    write_npy(p, 1, dict, zeros, n);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), s);
    CHECK_MSG("bad.npy");
    CHECK(out == NULL);
}

static void test_npy_bad(void) {
    char p[4096];
    size_t got[MC_MAX_DIMS];
    int ndim;
    bool is_int;
    void *out;
    uint8_t v3[16] = {0x93, 'N', 'U', 'M', 'P', 'Y', 3, 0, 4, 0, '{', '}', ' ', '\n'};
    uint8_t longhdr[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xff, 0x00, '{', '}'};
    uint8_t v2short[11] = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 1, 0, 0};
    snprintf(p, sizeof p, "%s", path_in(t_tmpdir("npy_bad2"), "x.npy"));
    npy_expect("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, MC_ERR_DTYPE);
    CHECK_MSG(">f4");
    npy_expect("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16, MC_ERR_DTYPE);
    npy_expect("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8, MC_ERR_UNSUPPORTED);
    CHECK_MSG("fortran_order");
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4,
               MC_ERR_UNSUPPORTED);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 12, MC_ERR_TRUNCATED);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 20, MC_ERR_TENSOR_SIZE);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 4,
               MC_ERR_TENSOR_SIZE);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 4,
               MC_ERR_TENSOR_SIZE);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }", 4,
               MC_ERR_TRUNCATED);
    npy_expect("{'descr': '<f4', 'fortran_order': False}", 4, MC_ERR_JSON);
    CHECK_MSG("missing");
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8,
               MC_ERR_JSON);
    npy_expect("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (2,x)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f\\4', 'fortran_order': False, 'shape': (2,)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4", 8, MC_ERR_JSON);
    npy_expect("{'descr': 4, 'fortran_order': False, 'shape': (2,)}", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x", 8, MC_ERR_JSON);
    npy_expect("{'descr' '<f4'}", 8, MC_ERR_JSON);
    npy_expect("('descr', '<f4')", 8, MC_ERR_JSON);
    npy_expect("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", 8, MC_ERR_JSON);
    /* not .npy at all, other versions, short files */
    write_bytes(p, "PK\x03\x04 zip file", 14);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_UNSUPPORTED);
    CHECK_MSG("x.npy");
    write_bytes(p, v3, sizeof v3);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_UNSUPPORTED);
    CHECK_MSG("3.0");
    write_bytes(p, longhdr, sizeof longhdr);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_TRUNCATED);
    write_bytes(p, v2short, sizeof v2short);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_TRUNCATED);
    write_bytes(p, "\x93NUM", 4);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_TRUNCATED);
    write_bytes(p, "", 0);
    CHECK_STATUS(mc_npy_read(p, &out, got, &ndim, &is_int), MC_ERR_TRUNCATED);
    CHECK_STATUS(mc_npy_read(path_in(t_tmpdir("npy_bad3"), "absent.npy"), &out, got, &ndim, &is_int),
                 MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("absent.npy");
    CHECK_STATUS(mc_npy_read(p, NULL, got, &ndim, &is_int), MC_ERR_INVALID_ARG);
}

static void test_npy_fixture(void) {
    /* logits written by numpy (tests/scripts/make_fixtures.py) */
    size_t got[MC_MAX_DIMS];
    int ndim;
    bool is_int;
    void *out = NULL;
    CHECK_OK(mc_npy_read(t_src("tests/fixtures/tiny_tied_f32/ref/logits_0.npy"), &out, got, &ndim,
                         &is_int));
    CHECK(!is_int);
    CHECK(ndim >= 1);
    mc_free(out);
}

/* ---- files and paths ----------------------------------------------------------------- */

static void test_paths(void) {
    const char *dir = t_tmpdir("paths");
    char *j = mc_path_join("a/b", "c.json");
    CHECK(j && strcmp(j, "a/b/c.json") == 0);
    mc_free(j);
    j = mc_path_join("a/b/", "c.json");
    CHECK(j && strcmp(j, "a/b/c.json") == 0);
    mc_free(j);
    j = mc_path_join("", "c.json");
    CHECK(j && strcmp(j, "c.json") == 0);
    mc_free(j);
    j = mc_path_join("/", "etc");
    CHECK(j && strcmp(j, "/etc") == 0);
    mc_free(j);
    CHECK(mc_path_join(NULL, "x") == NULL);
    mc_debug_fail_alloc_after(1);
    CHECK(mc_path_join("a", "b") == NULL);
    mc_debug_fail_alloc_after(0);
    CHECK(mc_path_exists(dir));
    CHECK(mc_path_is_dir(dir));
    write_bytes(path_in(dir, "f"), "x", 1);
    CHECK(mc_path_exists(path_in(dir, "f")));
    CHECK(!mc_path_is_dir(path_in(dir, "f")));
    CHECK(!mc_path_exists(path_in(dir, "g")));
    CHECK(!mc_path_is_dir(path_in(dir, "g")));
    CHECK(!mc_path_exists(NULL));
    CHECK(!mc_path_is_dir(NULL));
}

static void test_map_and_read(void) {
    char dir[4096], p[4096];
    mc_mapped m;
    char *text = NULL;
    size_t len = 0;
    snprintf(dir, sizeof dir, "%s", t_tmpdir("map_read"));
    snprintf(p, sizeof p, "%s", path_in(dir, "data.bin"));
    write_bytes(p, "hello\0world", 11);
    CHECK_OK(mc_map_file(p, &m));
    CHECK_INT(m.size, 11);
    CHECK(m.data && memcmp(m.data, "hello\0world", 11) == 0);
    mc_unmap(&m);
    CHECK(m.data == NULL && m.size == 0);
    mc_unmap(&m);
    mc_unmap(NULL);
    CHECK_OK(mc_read_file(p, &text, &len));
    CHECK_INT(len, 11);
    CHECK(text && memcmp(text, "hello\0world", 12) == 0); /* NUL-terminated */
    mc_free(text);
    /* empty file */
    write_bytes(p, "", 0);
    CHECK_OK(mc_map_file(p, &m));
    CHECK(m.data == NULL && m.size == 0);
    mc_unmap(&m);
    CHECK_OK(mc_read_file(p, &text, &len));
    CHECK(len == 0 && text && text[0] == '\0');
    mc_free(text);
    /* absent, a folder, a path through a file */
    CHECK_STATUS(mc_map_file(path_in(dir, "none"), &m), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("none");
    CHECK_STATUS(mc_read_file(path_in(dir, "none"), &text, &len), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("none");
    CHECK_STATUS(mc_map_file(dir, &m), MC_ERR_IO);
    CHECK_MSG("not a regular file");
    CHECK_STATUS(mc_read_file(dir, &text, &len), MC_ERR_IO);
    CHECK_STATUS(mc_map_file(path_in(dir, "data.bin/x"), &m), MC_ERR_FILE_NOT_FOUND);
    CHECK_STATUS(mc_map_file(NULL, &m), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_map_file(p, NULL), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_read_file(NULL, &text, &len), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_read_file(p, NULL, &len), MC_ERR_INVALID_ARG);
    /* unreadable (skipped when running as root, which reads anything) */
    write_bytes(p, "x", 1);
    if (chmod(p, 0) == 0 && geteuid() != 0) {
        CHECK_STATUS(mc_map_file(p, &m), MC_ERR_IO);
        CHECK_STATUS(mc_read_file(p, &text, &len), MC_ERR_IO);
    }
}

static void test_atomic_write(void) {
    char dir[4096], p[4096];
    char *text = NULL;
    size_t len = 0;
    snprintf(dir, sizeof dir, "%s", t_tmpdir("atomic"));
    snprintf(p, sizeof p, "%s", path_in(dir, "out.txt"));
    CHECK_OK(mc_write_file_atomic(p, "first", 5));
    CHECK_OK(mc_write_file_atomic(p, "second!", 7)); /* replaces */
    CHECK_OK(mc_read_file(p, &text, &len));
    CHECK(len == 7 && strcmp(text, "second!") == 0);
    mc_free(text);
    CHECK(!mc_path_exists(path_in(dir, "out.txt.tmp")));
    CHECK_OK(mc_write_file_atomic(p, NULL, 0));
    CHECK_OK(mc_read_file(p, &text, &len));
    CHECK_INT(len, 0);
    mc_free(text);
    /* failures leave the target alone and no temporary behind */
    CHECK_OK(mc_write_file_atomic(p, "keep", 4));
    CHECK_STATUS(mc_write_file_atomic(path_in(dir, "missing/out.txt"), "x", 1), MC_ERR_IO);
    CHECK_MSG("missing/out.txt");
    {
        /* the target is a non-empty folder: the rename fails */
        char sub[4200];
        snprintf(sub, sizeof sub, "%s/dirtarget", dir);
        CHECK(mkdir(sub, 0755) == 0);
        write_bytes(path_in(sub, "inner"), "x", 1);
        CHECK_STATUS(mc_write_file_atomic(sub, "x", 1), MC_ERR_IO);
        CHECK_MSG("rename");
        CHECK(!mc_path_exists(path_in(dir, "dirtarget.tmp")));
    }
    CHECK_STATUS(mc_write_file_atomic(p, NULL, 3), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_write_file_atomic(NULL, "x", 1), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_write_file_atomic("", "x", 1), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_read_file(p, &text, &len));
    CHECK(len == 4 && strcmp(text, "keep") == 0);
    mc_free(text);
    /* a bare file name lives in the current folder; "/name" in the root (not written) */
    CHECK(chdir(dir) == 0);
    CHECK_OK(mc_write_file_atomic("bare.txt", "b", 1));
    CHECK(mc_path_exists(path_in(dir, "bare.txt")));
}

static void test_json_parse(void) {
    cJSON *j = NULL;
    const char *t = "{\"a\": [1, 2,]}";
    CHECK_OK(mc_json_parse("{\"a\":1}  \n", 10, "x.json", &j));
    CHECK(cJSON_IsObject(j));
    cJSON_Delete(j);
    CHECK_STATUS(mc_json_parse(t, strlen(t), "x.json", &j), MC_ERR_JSON);
    CHECK(j == NULL);
    CHECK_MSG("x.json");
    CHECK_MSG("byte 12");
    /* only len bytes are read: a prefix of a valid text is malformed */
    CHECK_STATUS(mc_json_parse("{\"a\":1}", 6, "x.json", &j), MC_ERR_JSON);
    CHECK_STATUS(mc_json_parse("\"abc\\", 5, "x.json", &j), MC_ERR_JSON);
    CHECK_STATUS(mc_json_parse("1 2", 3, "x.json", &j), MC_ERR_JSON);
    CHECK_MSG("byte 2");
    CHECK_STATUS(mc_json_parse(NULL, 0, "x.json", &j), MC_ERR_JSON);
    CHECK_MSG("empty");
    CHECK_STATUS(mc_json_parse(NULL, 1, "x.json", &j), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_json_parse("{}", 2, "x.json", NULL), MC_ERR_INVALID_ARG);
    CHECK_OK(mc_json_parse("[]", 2, NULL, &j));
    cJSON_Delete(j);
    /* deep nesting is refused, not a stack overflow */
    {
        char deep[3000];
        memset(deep, '[', sizeof deep);
        CHECK_STATUS(mc_json_parse(deep, sizeof deep, "deep.json", &j), MC_ERR_JSON);
    }
}

/* ---- allocation failures ------------------------------------------------------------- */

static void test_fault_injection(void) {
    char p[4096], q[4096];
    float data[6] = {1, 2, 3, 4, 5, 6};
    size_t shape[2] = {2, 3}, got[MC_MAX_DIMS];
    const char *json = "{\"a\":[1,2,{\"b\":\"c\"}],\"d\":null}";
    size_t n;
    int step;
    snprintf(p, sizeof p, "%s", path_in(t_tmpdir("misc_fault"), "f.npy"));
    snprintf(q, sizeof q, "%s/g.txt", MC_BINARY_DIR "/tmp/misc_fault");
    for (step = 0; step < 4; step++) {
        int ooms = 0;
        for (n = 1; n < 10000; n++) {
            mc_status s = MC_OK;
            void *out = NULL;
            int ndim;
            bool is_int;
            char *text = NULL;
            size_t len;
            cJSON *j = NULL;
            mc_debug_fail_alloc_after(n);
            switch (step) {
            case 0: s = mc_npy_write_f32(p, data, shape, 2); break;
            case 1: s = mc_npy_read(p, &out, got, &ndim, &is_int); break;
            case 2:
                s = mc_write_file_atomic(q, "abc", 3);
                if (s == MC_OK) s = mc_read_file(q, &text, &len);
                break;
            default: s = mc_json_parse(json, strlen(json), "j.json", &j); break;
            }
            mc_debug_fail_alloc_after(0);
            mc_free(out);
            mc_free(text);
            cJSON_Delete(j);
            if (s == MC_OK) break;
            if (s != MC_ERR_OOM) {
                fprintf(stderr, "step %d: allocation %zu failing gave %s (%s)\n", step, n,
                        mc_status_name(s), mc_last_error());
                CHECK(0);
                break;
            }
            ooms++;
        }
        CHECK(ooms > 0);
    }
}

int main(void) {
    RUN(test_npy_roundtrip);
    RUN(test_npy_read_forms);
    RUN(test_npy_bad);
    RUN(test_npy_fixture);
    RUN(test_paths);
    RUN(test_map_and_read);
    RUN(test_atomic_write);
    RUN(test_json_parse);
    RUN(test_fault_injection);
    return t_summary();
}
