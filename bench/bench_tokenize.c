/* bench_tokenize.c - tokenizer encoding throughput, single thread, over a corpus file.
 *
 * The corpus is cut into chunks exactly as bench/hf_tokenize_bench.py cuts it (a chunk
 * ends at the first newline at or after CHUNK bytes from its start), every chunk is
 * encoded with add_special = 1, and the best of REPEAT passes is reported in MB/s
 * (1 MB = 1e6 bytes). The FNV-1a digest of the ids (per chunk, then over the chunk
 * digests) is printed and, with --digests, written per chunk, so the output can be compared
 * with Hugging Face's on the same corpus.
 *
 * Usage: bench_tokenize --tokenizer PATH --corpus FILE [--chunk 4096] [--repeat 3]
 *                       [--digests OUT.txt] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mcandle.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Little-endian bytes of the ids, as the Python side packs them. */
static uint64_t fnv_ids(const int32_t *ids, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                              (unsigned char)(v >> 24)};
        h = fnv(h, b, 4);
    }
    return h;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        if (buf) *len = (size_t)n;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    const char *tok_path = NULL, *corpus = NULL, *digests = NULL;
    size_t chunk = 4096, len = 0, n_chunks = 0, i, *starts = NULL, total_ids = 0, cap = 1 << 16;
    int repeat = 3, r, rc = 1;
    char *data = NULL;
    int32_t *ids = NULL;
    uint64_t *dig = NULL, total = 0xcbf29ce484222325ull;
    size_t *counts = NULL;
    double best = 1e30;
    mc_tokenizer *tok = NULL;
    mc_status s;
    for (i = 1; i < (size_t)argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < (size_t)argc)
            tok_path = argv[++i];
        else if (!strcmp(argv[i], "--corpus") && i + 1 < (size_t)argc)
            corpus = argv[++i];
        else if (!strcmp(argv[i], "--chunk") && i + 1 < (size_t)argc)
            chunk = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < (size_t)argc)
            repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--digests") && i + 1 < (size_t)argc)
            digests = argv[++i];
        else {
            fprintf(stderr, "usage: bench_tokenize --tokenizer PATH --corpus FILE [--chunk N] "
                            "[--repeat N] [--digests FILE]\n");
            return 2;
        }
    }
    if (!tok_path || !corpus || chunk == 0 || repeat < 1) {
        fprintf(stderr, "bench_tokenize: --tokenizer and --corpus are required\n");
        return 2;
    }
    s = mc_tokenizer_load(tok_path, &tok);
    if (s != MC_OK) {
        fprintf(stderr, "bench_tokenize: %s: %s\n", mc_status_name(s), mc_last_error());
        return 1;
    }
    data = read_all(corpus, &len);
    if (!data) {
        fprintf(stderr, "bench_tokenize: cannot read %s\n", corpus);
        goto done;
    }
    /* Chunk boundaries (mirrors chunks_of() in hf_tokenize_bench.py). */
    starts = malloc((len / chunk + 2) * sizeof *starts);
    {
        size_t start = 0;
        while (start < len) {
            size_t end = start + chunk;
            starts[n_chunks++] = start;
            if (end >= len) {
                end = len;
            } else {
                const char *nl = memchr(data + end - 1, '\n', len - (end - 1));
                end = nl ? (size_t)(nl - data) + 1 : len;
            }
            start = end;
        }
        starts[n_chunks] = len;
    }
    ids = malloc(cap * sizeof *ids);
    dig = malloc(n_chunks * sizeof *dig);
    counts = malloc(n_chunks * sizeof *counts);
    if (!ids || !dig || !counts) goto done;
    for (r = 0; r < repeat; r++) {
        double t0 = now_s(), dt;
        for (i = 0; i < n_chunks; i++) {
            size_t n = 0;
            s = mc_tokenizer_encode(tok, data + starts[i], starts[i + 1] - starts[i], 1, ids, cap,
                                    &n);
            if (s == MC_ERR_BUFFER_TOO_SMALL) {
                int32_t *bigger = realloc(ids, n * sizeof *ids);
                if (!bigger) goto done;
                ids = bigger;
                cap = n;
                s = mc_tokenizer_encode(tok, data + starts[i], starts[i + 1] - starts[i], 1, ids,
                                        cap, &n);
            }
            if (s != MC_OK) {
                fprintf(stderr, "bench_tokenize: chunk %zu: %s: %s\n", i, mc_status_name(s),
                        mc_last_error());
                goto done;
            }
            if (r == 0) {
                counts[i] = n;
                dig[i] = fnv_ids(ids, n);
                total_ids += n;
            }
        }
        dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    for (i = 0; i < n_chunks; i++) {
        unsigned char b[8];
        int k;
        for (k = 0; k < 8; k++) b[k] = (unsigned char)(dig[i] >> (8 * k));
        total = fnv(total, b, 8);
    }
    if (digests) {
        FILE *f = fopen(digests, "w");
        if (!f) {
            fprintf(stderr, "bench_tokenize: cannot write %s\n", digests);
            goto done;
        }
        for (i = 0; i < n_chunks; i++)
            fprintf(f, "%zu %zu %016llx\n", i, counts[i], (unsigned long long)dig[i]);
        fclose(f);
    }
    printf("metal-candle %s: %.2f MB, %zu chunks, %zu tokens, %.3f s, %.3f MB/s, digest %016llx\n",
           MC_VERSION_STRING, (double)len / 1e6, n_chunks, total_ids, best,
           (double)len / 1e6 / best, (unsigned long long)total);
    rc = 0;
done:
    free(starts);
    free(ids);
    free(dig);
    free(counts);
    free(data);
    mc_tokenizer_free(tok);
    return rc;
}
