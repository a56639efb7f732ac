/* test_safetensors.c - the safetensors parser (one case per kind of bad input, each
 * checking the status and that the message names the file and tensor), tensor sets over
 * single and sharded folders, the writer's round trip, and allocation-failure sweeps. */
#include "test.h"

#include "io/io.h"

#include <stdint.h>
#include <sys/stat.h>

static const char *FNAME = "bad.safetensors";

/* Assembles a safetensors image: 8-byte little-endian header length, header, data. */
static uint8_t *st_image(const char *header, const void *data, size_t dlen, size_t *len) {
    size_t hl = strlen(header), i;
    uint8_t *b = malloc(8 + hl + dlen + 1);
    if (!b) abort();
    for (i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (dlen) memcpy(b + 8 + hl, data, dlen);
    *len = 8 + hl + dlen;
    return b;
}

/* Parses header + dlen zero bytes of data; returns the status (result freed). */
static mc_status parse_hdr(const char *header, size_t dlen) {
    size_t len;
    uint8_t *zeros = calloc(dlen + 1, 1);
    uint8_t *img = st_image(header, zeros, dlen, &len);
    mc_st_file f;
    mc_status s = mc_st_parse(img, len, FNAME, &f);
    if (s == MC_OK) {
        mc_st_file_free(&f);
    } else {
        CHECK(f.tensors == NULL && f.n == 0);
    }
    free(img);
    free(zeros);
    return s;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* Writes a safetensors file made of header and dlen bytes (value i & 0xff at byte i). */
static void write_st(const char *path, const char *header, size_t dlen) {
    size_t len, i;
    uint8_t *d = malloc(dlen + 1);
    uint8_t *img;
    for (i = 0; i < dlen; i++) d[i] = (uint8_t)i;
    img = st_image(header, d, dlen, &len);
    write_bytes(path, img, len);
    free(img);
    free(d);
}

static char *path_in(const char *dir, const char *name) {
    static char buf[8][4096];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

/* Runs op with the n-th allocation failing, for n = 1, 2, ... until it succeeds; every
 * failure must be MC_ERR_OOM. */
static void sweep(mc_status (*op)(void *), void *ctx, const char *what) {
    size_t n;
    int ooms = 0;
    for (n = 1; n < 100000; n++) {
        mc_status s;
        mc_debug_fail_alloc_after(n);
        s = op(ctx);
        mc_debug_fail_alloc_after(0);
        if (s == MC_OK) break;
        if (s != MC_ERR_OOM) {
            fprintf(stderr, "%s: allocation %zu failing gave %s (%s)\n", what, n, mc_status_name(s),
                    mc_last_error());
            CHECK(0);
            return;
        }
        ooms++;
    }
    CHECK(n < 100000);
    CHECK(ooms > 0);
}

/* ---- valid files --------------------------------------------------------------------- */

static void test_parse_valid(void) {
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                    "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]}}   ";
    uint8_t data[40];
    size_t len, i;
    uint8_t *img;
    mc_st_file f;
    for (i = 0; i < sizeof data; i++) data[i] = (uint8_t)i;
    img = st_image(h, data, sizeof data, &len);
    CHECK_OK(mc_st_parse(img, len, FNAME, &f));
    CHECK_INT(f.n, 3);
    if (f.n == 3) {
        const uint8_t *base = img + len - sizeof data;
        CHECK(strcmp(f.tensors[0].name, "b") == 0); /* header order */
        CHECK_INT(f.tensors[0].st_dtype, MC_ST_BF16);
        CHECK_INT(f.tensors[0].ndim, 1);
        CHECK_INT(f.tensors[0].shape[0], 2);
        CHECK(f.tensors[0].data == base + 24);
        CHECK_INT(f.tensors[0].nbytes, 4);
        CHECK(strcmp(f.tensors[0].file, FNAME) == 0);
        CHECK(strcmp(f.tensors[1].name, "a") == 0);
        CHECK_INT(f.tensors[1].ndim, 2);
        CHECK_INT(f.tensors[1].shape[1], 3);
        CHECK(f.tensors[1].data == base);
        CHECK_INT(f.tensors[1].nbytes, 24);
        CHECK_INT(f.tensors[2].ndim, 0); /* a scalar: one element */
        CHECK_INT(f.tensors[2].nbytes, 8);
    }
    mc_st_file_free(&f);
    CHECK(f.tensors == NULL && f.n == 0);
    mc_st_file_free(&f); /* twice is fine */
    mc_st_file_free(NULL);
    free(img);
}

static void test_parse_empty_and_zero_size(void) {
    /* No tensors at all; zero-element tensors, even several at one offset or inside
     * another's range, are fine. */
    CHECK_OK(parse_hdr("{}", 0));
    CHECK_OK(parse_hdr("{\"__metadata__\":{}}", 0));
    CHECK_OK(parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
                       "\"c\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                       "\"d\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[4,4]},"
                       "\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                       8));
    /* A zero dim makes the product zero even when the other dims would overflow. */
    CHECK_OK(parse_hdr("{\"z\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496,0],"
                       "\"data_offsets\":[0,0]}}",
                       0));
    /* Gaps between tensors are allowed, and trailing whitespace after the JSON. */
    CHECK_OK(parse_hdr("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}} \n\t\r", 8));
}

static void test_all_dtypes(void) {
    static const char *names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8",
                                  "U8",  "U16", "U32",  "U64", "BOOL", "F8_E4M3", "F8_E5M2"};
    static const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 2, 4, 8, 1, 1, 1};
    int i;
    for (i = 0; i < 15; i++) {
        char h[256];
        mc_dtype d;
        snprintf(h, sizeof h, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 names[i], 3 * sizes[i]);
        CHECK_OK(parse_hdr(h, 3 * sizes[i]));
        CHECK(strcmp(mc_st_dtype_name((mc_st_dtype)i), names[i]) == 0);
        CHECK_INT(mc_st_dtype_size((mc_st_dtype)i), sizes[i]);
        CHECK(mc_st_dtype_compute((mc_st_dtype)i, &d) == (i <= 2));
        if (i <= 2) CHECK_INT(d, i == 0 ? MC_F32 : i == 1 ? MC_F16 : MC_BF16);
    }
    CHECK(strcmp(mc_st_dtype_name((mc_st_dtype)99), "?") == 0);
    CHECK_INT(mc_st_dtype_size((mc_st_dtype)-1), 0);
}

/* ---- bad files: one case per check --------------------------------------------------- */

static void test_truncated(void) {
    uint8_t b[7] = {2, 0, 0, 0, 0, 0, 0};
    mc_st_file f;
    CHECK_STATUS(mc_st_parse(b, sizeof b, FNAME, &f), MC_ERR_TRUNCATED);
    CHECK_MSG(FNAME);
    CHECK_STATUS(mc_st_parse(NULL, 0, FNAME, &f), MC_ERR_TRUNCATED);
    CHECK_STATUS(mc_st_parse(NULL, 5, FNAME, &f), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_st_parse(b, sizeof b, FNAME, NULL), MC_ERR_INVALID_ARG);
    /* A NULL name still gives a message. */
    CHECK_STATUS(mc_st_parse(b, sizeof b, NULL, &f), MC_ERR_TRUNCATED);
    CHECK_MSG("<buffer>");
}

static void test_header_size(void) {
    size_t len;
    uint8_t *img = st_image("{}", NULL, 0, &len);
    mc_st_file f;
    img[0] = 3; /* one byte more than there is */
    CHECK_STATUS(mc_st_parse(img, len, FNAME, &f), MC_ERR_HEADER_SIZE);
    CHECK_MSG(FNAME);
    CHECK_MSG("header length 3");
    memset(img, 0xff, 8); /* 2^64 - 1: no overflow in the check */
    CHECK_STATUS(mc_st_parse(img, len, FNAME, &f), MC_ERR_HEADER_SIZE);
    free(img);
}

static void test_malformed_json(void) {
    CHECK_STATUS(parse_hdr("{\"a\": {\"dtype\": }", 0), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_MSG("byte 16");
    CHECK_STATUS(parse_hdr("", 0), MC_ERR_JSON); /* header length 0 */
    CHECK_MSG(FNAME);
    CHECK_STATUS(parse_hdr("{} x", 0), MC_ERR_JSON); /* data after the value */
    CHECK_MSG("byte 3");
    CHECK_STATUS(parse_hdr("{\"a\":\"\\", 0), MC_ERR_JSON); /* string ends in a backslash */
    CHECK_STATUS(parse_hdr("[1,2]", 0), MC_ERR_JSON);        /* not an object */
    CHECK_MSG("not a JSON object");
}

static void test_bad_entries(void) {
    CHECK_STATUS(parse_hdr("{\"w1\":[1]}", 0), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_MSG("'w1'");
    CHECK_STATUS(parse_hdr("{\"w2\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), MC_ERR_JSON);
    CHECK_MSG("'w2'");
    CHECK_MSG("dtype");
    CHECK_STATUS(parse_hdr("{\"w3\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                 MC_ERR_JSON);
    CHECK_MSG("'w3'");
    CHECK_STATUS(parse_hdr("{\"w4\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), MC_ERR_JSON);
    CHECK_MSG("'w4'");
    CHECK_MSG("shape");
    CHECK_STATUS(parse_hdr("{\"w5\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), MC_ERR_JSON);
    CHECK_MSG("'w5'");
    CHECK_MSG("data_offsets");
    CHECK_STATUS(parse_hdr("{\"w6\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
                 MC_ERR_JSON);
    CHECK_MSG("'w6'");
    CHECK_STATUS(
        parse_hdr("{\"w7\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4),
        MC_ERR_JSON);
    CHECK_MSG("'w7'");
    CHECK_STATUS(parse_hdr("{\"w8\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
                 MC_ERR_JSON);
    CHECK_MSG("'w8'");
    CHECK_MSG("shape[0]");
    CHECK_STATUS(parse_hdr("{\"w9\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4),
                 MC_ERR_JSON);
    CHECK_MSG("'w9'");
    CHECK_STATUS(
        parse_hdr("{\"w10\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}", 4),
        MC_ERR_JSON);
    CHECK_MSG("'w10'");
    CHECK_STATUS(
        parse_hdr("{\"w11\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
                  4),
        MC_ERR_UNSUPPORTED);
    CHECK_MSG("'w11'");
    CHECK_STATUS(parse_hdr("{\"__metadata__\":{\"format\":1}}", 0), MC_ERR_JSON);
    CHECK_MSG(FNAME);
    CHECK_MSG("format");
    CHECK_STATUS(parse_hdr("{\"__metadata__\":[]}", 0), MC_ERR_JSON);
    CHECK_MSG("__metadata__");
}

static void test_unknown_dtype(void) {
    CHECK_STATUS(parse_hdr("{\"emb\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
                 MC_ERR_DTYPE);
    CHECK_MSG(FNAME);
    CHECK_MSG("'emb'");
    CHECK_MSG("Q4_K");
    CHECK_STATUS(parse_hdr("{\"emb\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                 MC_ERR_DTYPE); /* names are case-sensitive */
}

static void test_offsets(void) {
    /* end beyond the data area */
    CHECK_STATUS(parse_hdr("{\"o1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7),
                 MC_ERR_OFFSETS);
    CHECK_MSG(FNAME);
    CHECK_MSG("'o1'");
    /* begin > end */
    CHECK_STATUS(parse_hdr("{\"o2\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o2'");
    /* negative, fractional, huge, beyond 2^53 */
    CHECK_STATUS(parse_hdr("{\"o3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o3'");
    CHECK_STATUS(parse_hdr("{\"o4\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0.5,1.5]}}", 8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o4'");
    CHECK_STATUS(parse_hdr("{\"o5\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1e300,1e300]}}",
                           8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o5'");
    CHECK_STATUS(parse_hdr("{\"o6\":{\"dtype\":\"U8\",\"shape\":[0],"
                           "\"data_offsets\":[18446744073709551615,18446744073709551615]}}",
                           8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o6'");
    CHECK_STATUS(parse_hdr("{\"o7\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1e999]}}", 8),
                 MC_ERR_OFFSETS);
    CHECK_MSG("'o7'");
}

static void test_tensor_size(void) {
    CHECK_STATUS(parse_hdr("{\"s1\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16),
                 MC_ERR_TENSOR_SIZE);
    CHECK_MSG(FNAME);
    CHECK_MSG("'s1'");
    CHECK_MSG("16 bytes");
    /* product of dims overflows size_t */
    CHECK_STATUS(parse_hdr("{\"s2\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                           "\"data_offsets\":[0,4]}}",
                           4),
                 MC_ERR_TENSOR_SIZE);
    CHECK_MSG("'s2'");
    /* elements fit, bytes overflow */
    CHECK_STATUS(parse_hdr("{\"s3\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],"
                           "\"data_offsets\":[0,4]}}",
                           4),
                 MC_ERR_TENSOR_SIZE);
    CHECK_MSG("'s3'");
}

static void test_overlap(void) {
    CHECK_STATUS(parse_hdr("{\"first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"second\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                           8),
                 MC_ERR_OVERLAP);
    CHECK_MSG(FNAME);
    CHECK_MSG("'first'");
    CHECK_MSG("'second'");
    /* identical ranges, and a range nested in a longer earlier one */
    CHECK_STATUS(parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                           8),
                 MC_ERR_OVERLAP);
    CHECK_STATUS(parse_hdr("{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                           "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]}}",
                           16),
                 MC_ERR_OVERLAP);
    CHECK_MSG("'a'");
    /* adjacent ranges do not overlap */
    CHECK_OK(parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                       8));
}

static void test_duplicate(void) {
    CHECK_STATUS(parse_hdr("{\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                           "\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                           12),
                 MC_ERR_DUPLICATE);
    CHECK_MSG(FNAME);
    CHECK_MSG("'dup'");
}

/* ---- sets and folders ---------------------------------------------------------------- */

static const char *SHARD1 = "{\"__metadata__\":{\"format\":\"pt\"},"
                            "\"model.b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"model.a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}";
static const char *SHARD2 = "{\"lm_head\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}";
static const char *INDEX = "{\"metadata\":{\"total_size\":22},\"weight_map\":{"
                           "\"model.a\":\"model-00001-of-00002.safetensors\","
                           "\"lm_head\":\"model-00002-of-00002.safetensors\","
                           "\"model.b\":\"model-00001-of-00002.safetensors\"}}";

/* A two-shard folder with the given index text. */
static const char *make_sharded(const char *name, const char *index) {
    const char *dir = t_tmpdir(name);
    write_st(path_in(dir, "model-00001-of-00002.safetensors"), SHARD1, 16);
    write_st(path_in(dir, "model-00002-of-00002.safetensors"), SHARD2, 6);
    if (index) write_text(path_in(dir, "model.safetensors.index.json"), index);
    return dir;
}

static void test_open_file_and_find(void) {
    const char *dir = t_tmpdir("st_single");
    const char *p = path_in(dir, "model.safetensors");
    mc_st_set s;
    const mc_st_tensor *t;
    write_st(p, SHARD1, 16);
    CHECK_OK(mc_st_open_file(p, &s));
    CHECK_INT(s.n, 2);
    CHECK_INT(s.n_files, 1);
    t = mc_st_find(&s, "model.b");
    CHECK(t != NULL);
    if (t) {
        CHECK(strcmp(t->file, p) == 0);
        CHECK_INT(t->nbytes, 8);
        CHECK_INT(((const uint8_t *)t->data)[1], 1);
    }
    t = mc_st_find(&s, "model.a");
    CHECK(t && ((const uint8_t *)t->data)[0] == 8);
    CHECK(mc_st_find(&s, "model.c") == NULL);
    CHECK(mc_st_find(&s, "") == NULL);
    CHECK(mc_st_find(NULL, "model.a") == NULL);
    CHECK(strcmp(s.tensors[0].name, "model.a") == 0); /* sorted by name */
    mc_st_close(&s);
    CHECK(s.n == 0 && s.tensors == NULL && s.maps == NULL);
    mc_st_close(&s);
    mc_st_close(NULL);
    /* the folder form finds model.safetensors */
    CHECK_OK(mc_st_open_dir(dir, &s));
    CHECK_INT(s.n, 2);
    mc_st_close(&s);
    /* errors from a file name the file */
    CHECK_STATUS(mc_st_open_file(path_in(dir, "nope.safetensors"), &s), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("nope.safetensors");
    CHECK(s.n == 0 && s.maps == NULL);
    write_bytes(p, "abc", 3);
    CHECK_STATUS(mc_st_open_file(p, &s), MC_ERR_TRUNCATED);
    CHECK_MSG(p);
    write_bytes(p, "", 0);
    CHECK_STATUS(mc_st_open_file(p, &s), MC_ERR_TRUNCATED);
    CHECK_STATUS(mc_st_open_file(dir, &s), MC_ERR_IO); /* a folder is not a file */
    CHECK_STATUS(mc_st_open_file(NULL, &s), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_st_open_file(p, NULL), MC_ERR_INVALID_ARG);
}

static void test_open_sharded(void) {
    const char *dir = make_sharded("st_sharded", INDEX);
    mc_st_set s;
    const mc_st_tensor *t;
    CHECK_OK(mc_st_open_dir(dir, &s));
    CHECK_INT(s.n, 3);
    CHECK_INT(s.n_files, 2);
    t = mc_st_find(&s, "lm_head");
    CHECK(t && strstr(t->file, "model-00002-of-00002.safetensors") != NULL);
    CHECK(t && t->st_dtype == MC_ST_F16 && t->nbytes == 6);
    t = mc_st_find(&s, "model.a");
    CHECK(t && strstr(t->file, "model-00001-of-00002.safetensors") != NULL);
    CHECK(strcmp(s.tensors[0].name, "lm_head") == 0);
    CHECK(strcmp(s.tensors[2].name, "model.b") == 0);
    mc_st_close(&s);
}

static void test_missing_shard(void) {
    const char *dir = make_sharded("st_missing_shard", INDEX);
    mc_st_set s;
    CHECK(remove(path_in(dir, "model-00002-of-00002.safetensors")) == 0);
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("model-00002-of-00002.safetensors");
    CHECK(s.n == 0 && s.maps == NULL && s.paths == NULL);
}

static void test_missing_tensor_in_shard(void) {
    /* the index puts model.b in shard 2, which does not hold it */
    const char *dir = make_sharded("st_missing_tensor",
                                   "{\"weight_map\":{"
                                   "\"model.a\":\"model-00001-of-00002.safetensors\","
                                   "\"model.b\":\"model-00002-of-00002.safetensors\"}}");
    const char *dir2;
    mc_st_set s;
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_MISSING_TENSOR);
    CHECK_MSG("'model.b'");
    CHECK_MSG("model-00002-of-00002.safetensors");
    CHECK_MSG("model.safetensors.index.json");
    /* a name that no shard holds */
    dir2 = make_sharded("st_missing_tensor2",
                        "{\"weight_map\":{\"ghost\":\"model-00001-of-00002.safetensors\"}}");
    CHECK_STATUS(mc_st_open_dir(dir2, &s), MC_ERR_MISSING_TENSOR);
    CHECK_MSG("'ghost'");
    CHECK_MSG("model-00001-of-00002.safetensors");
}

static void test_index_errors(void) {
    mc_st_set s;
    const char *dir = make_sharded("st_traversal",
                                   "{\"weight_map\":{\"model.a\":\"../model-00001-of-00002.safetensors\"}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    CHECK_MSG("model.safetensors.index.json");
    CHECK_MSG("'model.a'");
    dir = make_sharded("st_slash", "{\"weight_map\":{\"model.a\":\"/etc/passwd\"}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    dir = make_sharded("st_empty_name", "{\"weight_map\":{\"model.a\":\"\"}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    dir = make_sharded("st_nonstring", "{\"weight_map\":{\"model.a\":3}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    CHECK_MSG("'model.a'");
    dir = make_sharded("st_no_wm", "{\"metadata\":{}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    CHECK_MSG("weight_map");
    dir = make_sharded("st_idx_array", "[]");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    dir = make_sharded("st_idx_malformed", "{\"weight_map\":{\"a\":}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_JSON);
    CHECK_MSG("model.safetensors.index.json");
    CHECK_MSG("byte 19");
    dir = make_sharded("st_idx_dup",
                       "{\"weight_map\":{\"model.a\":\"model-00001-of-00002.safetensors\","
                       "\"model.a\":\"model-00002-of-00002.safetensors\"}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_DUPLICATE);
    CHECK_MSG("'model.a'");
    /* an empty weight_map opens no shard */
    dir = make_sharded("st_idx_empty", "{\"weight_map\":{}}");
    CHECK_OK(mc_st_open_dir(dir, &s));
    CHECK_INT(s.n, 0);
    CHECK(mc_st_find(&s, "model.a") == NULL);
    mc_st_close(&s);
}

static void test_duplicate_across_shards(void) {
    const char *dir = t_tmpdir("st_dup_shards");
    mc_st_set s;
    write_st(path_in(dir, "s1.safetensors"), SHARD1, 16);
    write_st(path_in(dir, "s2.safetensors"), SHARD1, 16);
    write_text(path_in(dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"model.a\":\"s1.safetensors\",\"model.b\":\"s2.safetensors\"}}");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_DUPLICATE);
    CHECK_MSG("s1.safetensors");
    CHECK_MSG("s2.safetensors");
    CHECK(s.n == 0 && s.tensors == NULL);
}

static void test_bad_shard_content(void) {
    const char *dir = make_sharded("st_bad_shard", INDEX);
    mc_st_set s;
    write_st(path_in(dir, "model-00002-of-00002.safetensors"),
             "{\"lm_head\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 5);
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_OFFSETS);
    CHECK_MSG("model-00002-of-00002.safetensors");
    CHECK_MSG("'lm_head'");
}

static void test_not_a_folder(void) {
    const char *dir = t_tmpdir("st_not_dir");
    const char *file = path_in(dir, "plain.txt");
    mc_st_set s;
    write_text(file, "x");
    CHECK_STATUS(mc_st_open_dir(file, &s), MC_ERR_NOT_DIR);
    CHECK_MSG(file);
    CHECK_STATUS(mc_st_open_dir(path_in(dir, "absent"), &s), MC_ERR_FILE_NOT_FOUND);
    CHECK_MSG("absent");
    CHECK_STATUS(mc_st_open_dir(dir, &s), MC_ERR_FILE_NOT_FOUND); /* no weights in it */
    CHECK_MSG(dir);
    CHECK_MSG("model.safetensors");
    CHECK_STATUS(mc_st_open_dir(NULL, &s), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_st_open_dir(dir, NULL), MC_ERR_INVALID_ARG);
}

static void test_fixtures(void) {
    /* Checkpoints written by transformers (see tests/fixtures/VERSIONS.txt). */
    mc_st_set s;
    const mc_st_tensor *t;
    CHECK_OK(mc_st_open_dir(t_src("tests/fixtures/qwen2_bf16_sharded"), &s));
    CHECK_INT(s.n_files, 5);
    CHECK_INT(s.n, 39);
    t = mc_st_find(&s, "model.embed_tokens.weight");
    CHECK(t && t->st_dtype == MC_ST_BF16 && t->ndim == 2 && t->shape[0] == 1000 &&
          t->shape[1] == 96);
    mc_st_close(&s);
    CHECK_OK(mc_st_open_dir(t_src("tests/fixtures/tiny_tied_f32"), &s));
    CHECK_INT(s.n, 26);
    mc_st_close(&s);
    CHECK_OK(mc_st_open_file(t_src("tests/fixtures/peft/adapter/adapter_model.safetensors"), &s));
    CHECK_INT(s.n, 28);
    mc_st_close(&s);
}

/* ---- writing ------------------------------------------------------------------------- */

static void test_write_roundtrip(void) {
    const char *dir = t_tmpdir("st_write");
    const char *p = path_in(dir, "out.safetensors");
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[3] = {0x3f80, 0x4000, 0x4040};
    uint8_t u[5] = {1, 2, 3, 4, 5};
    double d[2] = {0.5, -0.25};
    mc_st_out ts[5];
    const char *meta[4] = {"format", "pt", "note", "quote \" back \\ nl \n"};
    mc_st_set s;
    mc_st_file f;
    uint64_t hlen = 0;
    int i;
    memset(ts, 0, sizeof ts);
    ts[0] = (mc_st_out){"z.weight", MC_ST_F32, 2, {2, 3}, w};
    ts[1] = (mc_st_out){"a.bias", MC_ST_BF16, 1, {3}, h};
    ts[2] = (mc_st_out){"m.bytes", MC_ST_U8, 1, {5}, u};
    ts[3] = (mc_st_out){"odd \"name\"\t\xc3\xa9", MC_ST_F64, 1, {2}, d};
    ts[4] = (mc_st_out){"empty", MC_ST_F32, 2, {0, 7}, NULL};
    CHECK_OK(mc_st_write(p, ts, 5, meta, 2));
    CHECK(!mc_path_exists(path_in(dir, "out.safetensors.tmp")));
    CHECK_OK(mc_st_open_file(p, &s));
    CHECK_INT(s.n, 5);
    for (i = 0; i < 5; i++) {
        size_t nb = 1, e = mc_st_dtype_size(ts[i].st_dtype);
        int k;
        const mc_st_tensor *t = mc_st_find(&s, ts[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        for (k = 0; k < ts[i].ndim; k++) nb *= (size_t)ts[i].shape[k];
        CHECK_INT(t->nbytes, nb * e);
        CHECK_INT(t->st_dtype, ts[i].st_dtype);
        CHECK_INT(t->ndim, ts[i].ndim);
        CHECK(memcmp(t->shape, ts[i].shape, sizeof(int64_t) * (size_t)ts[i].ndim) == 0);
        if (nb) CHECK(memcmp(t->data, ts[i].data, t->nbytes) == 0);
        /* each tensor aligned to its element size within the file */
        CHECK_INT(((uintptr_t)t->data) % e, 0);
    }
    /* header: length a multiple of 8, names sorted, metadata first, back to back data */
    memcpy(&hlen, s.maps[0].data, 8);
    CHECK_INT(hlen % 8, 0);
    {
        const char *hdr = (const char *)s.maps[0].data + 8;
        const char *pa = strstr(hdr, "\"a.bias\"");
        const char *pm = strstr(hdr, "\"m.bytes\"");
        const char *pz = strstr(hdr, "\"z.weight\"");
        const char *pmeta = strstr(hdr, "\"__metadata__\"");
        CHECK(pa && pm && pz && pmeta && pmeta < pa && pa < pm && pm < pz);
        CHECK_INT(s.maps[0].size, 8 + hlen + 24 + 6 + 5 + 16);
    }
    /* the metadata strings survive escaping */
    CHECK_OK(mc_st_parse(s.maps[0].data, s.maps[0].size, p, &f));
    mc_st_file_free(&f);
    mc_st_close(&s);
    /* no tensors at all */
    CHECK_OK(mc_st_write(p, NULL, 0, NULL, 0));
    CHECK_OK(mc_st_open_file(p, &s));
    CHECK_INT(s.n, 0);
    mc_st_close(&s);
}

static void test_write_errors(void) {
    const char *dir = t_tmpdir("st_write_err");
    const char *p = path_in(dir, "out.safetensors");
    float w[2] = {1, 2};
    mc_st_out ts[2];
    const char *meta[2] = {"format", NULL};
    const char *meta2[4] = {"k", "v", "k", "w"};
    memset(ts, 0, sizeof ts);
    ts[0] = (mc_st_out){"same", MC_ST_F32, 1, {2}, w};
    ts[1] = (mc_st_out){"same", MC_ST_F32, 1, {1}, w};
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_DUPLICATE);
    CHECK_MSG("'same'");
    CHECK(!mc_path_exists(p));
    ts[1].name = NULL;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].name = "__metadata__";
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].name = "other";
    ts[1].data = NULL;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    CHECK_MSG("'other'");
    ts[1].data = w;
    ts[1].ndim = 9;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].ndim = 1;
    ts[1].shape[0] = -1;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].shape[0] = INT64_MAX;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].shape[0] = 1;
    ts[1].st_dtype = (mc_st_dtype)42;
    CHECK_STATUS(mc_st_write(p, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    ts[1].st_dtype = MC_ST_F32;
    CHECK_STATUS(mc_st_write(p, ts, 2, meta, 1), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_st_write(p, ts, 2, meta2, 2), MC_ERR_DUPLICATE);
    CHECK_STATUS(mc_st_write(p, NULL, 2, NULL, 0), MC_ERR_INVALID_ARG);
    CHECK_STATUS(mc_st_write(NULL, ts, 2, NULL, 0), MC_ERR_INVALID_ARG);
    CHECK(!mc_path_exists(p));
    /* a folder that does not exist */
    CHECK_STATUS(mc_st_write(path_in(dir, "no/such/dir/x.safetensors"), ts, 2, NULL, 0), MC_ERR_IO);
    CHECK_MSG("no/such/dir");
    CHECK_OK(mc_st_write(p, ts, 2, NULL, 0));
}

/* ---- allocation failures ------------------------------------------------------------- */

static mc_status op_parse(void *ctx) {
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    uint8_t data[28] = {0};
    size_t len;
    uint8_t *img = st_image(h, data, sizeof data, &len);
    mc_st_file f;
    mc_status s = mc_st_parse(img, len, FNAME, &f);
    (void)ctx;
    mc_st_file_free(&f);
    free(img);
    return s;
}

static mc_status op_open_dir(void *ctx) {
    mc_st_set s;
    mc_status st = mc_st_open_dir((const char *)ctx, &s);
    mc_st_close(&s);
    return st;
}

static mc_status op_write(void *ctx) {
    float w[6] = {1, 2, 3, 4, 5, 6};
    mc_st_out ts[2] = {{"b", MC_ST_F32, 2, {2, 3}, w}, {"a", MC_ST_F16, 1, {2}, w}};
    const char *meta[2] = {"format", "pt"};
    return mc_st_write((const char *)ctx, ts, 2, meta, 1);
}

static void test_fault_injection(void) {
    const char *dir = make_sharded("st_fault", INDEX);
    char out[4096], sharded[4096], single[4096];
    snprintf(out, sizeof out, "%s/w.safetensors", dir);
    snprintf(sharded, sizeof sharded, "%s", dir);
    snprintf(single, sizeof single, "%s", t_src("tests/fixtures/tiny_tied_f32"));
    sweep(op_parse, NULL, "mc_st_parse");
    sweep(op_open_dir, sharded, "mc_st_open_dir sharded");
    sweep(op_open_dir, single, "mc_st_open_dir single");
    sweep(op_write, out, "mc_st_write");
}

int main(void) {
    RUN(test_parse_valid);
    RUN(test_parse_empty_and_zero_size);
    RUN(test_all_dtypes);
    RUN(test_truncated);
    RUN(test_header_size);
    RUN(test_malformed_json);
    RUN(test_bad_entries);
    RUN(test_unknown_dtype);
    RUN(test_offsets);
    RUN(test_tensor_size);
    RUN(test_overlap);
    RUN(test_duplicate);
    RUN(test_open_file_and_find);
    RUN(test_open_sharded);
    RUN(test_missing_shard);
    RUN(test_missing_tensor_in_shard);
    RUN(test_index_errors);
    RUN(test_duplicate_across_shards);
    RUN(test_bad_shard_content);
    RUN(test_not_a_folder);
    RUN(test_fixtures);
    RUN(test_write_roundtrip);
    RUN(test_write_errors);
    RUN(test_fault_injection);
    return t_summary();
}
