/* fuzz_dataset.c - fuzz target: the input is jsonl training data, parsed without a
 * tokenizer ({"input_ids"} lines only) against a vocabulary of 64 ids, fatally and with
 * skip_invalid; whatever parses is then cut into micro-batches (plain and packed) in a
 * shuffled order. Nothing may crash, leak, read past the input or break an invariant. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "train/dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { VOCAB = 64, MAX_LEN = 24 };

/* Checks what a parse produced: ids in range, lengths within max_seq_length, totals. */
static void check_dataset(const mc_dataset *ds) {
    size_t i, tokens = 0, targets = 0, none = 0;
    for (i = 0; i < ds->n; i++) {
        const mc_example *e = &ds->ex[i];
        size_t t, k = 0;
        int j;
        if (e->n <= 0 || e->n > MAX_LEN) __builtin_trap();
        for (j = 0; j < e->n; j++) {
            if (e->ids[j] < 0 || e->ids[j] >= VOCAB || e->target[j] > 1) __builtin_trap();
            if (j > 0) k += e->target[j];
        }
        t = (size_t)e->n;
        tokens += t;
        targets += k;
        none += k == 0;
    }
    if (tokens != ds->n_tokens || targets != ds->n_targets || none != ds->n_no_targets)
        __builtin_trap();
}

/* Cuts the whole data set into batches and checks each one's rows, segments and targets. */
static void check_batches(const mc_dataset *ds, uint64_t seed, int batch_size, bool pack) {
    size_t *order = mc_malloc((ds->n ? ds->n : 1) * sizeof *order), cursor = 0, seen = 0;
    mc_batch b;
    if (!order) return;
    memset(&b, 0, sizeof b);
    mc_dataset_order(order, ds->n, seed, 1, true);
    while (cursor < ds->n) {
        size_t before = cursor;
        int s, t, n_targets = 0;
        if (mc_dataset_fill_batch(ds, order, ds->n, &cursor, batch_size, pack, MAX_LEN, &b) !=
            MC_OK)
            break; /* out of memory: nothing else to check */
        if (cursor <= before || b.n_seg != (int)(cursor - before)) __builtin_trap();
        if (!pack && b.n_seg > batch_size) __builtin_trap();
        if (pack && b.n_seg > 1 && b.N > batch_size * MAX_LEN) __builtin_trap();
        for (s = 0, t = 0; s < b.n_seg; s++) {
            int k;
            if (b.seg_start[s] != t || b.seg_len[s] <= 0) __builtin_trap();
            for (k = 0; k < b.seg_len[s]; k++, t++) {
                if (b.pos[t] != k) __builtin_trap();
                if (k == b.seg_len[s] - 1 && b.targets[t] != -1) __builtin_trap();
                if (b.targets[t] >= 0) {
                    if (b.targets[t] != b.ids[t + 1]) __builtin_trap();
                    n_targets++;
                }
            }
        }
        if (t != b.N || n_targets != b.n_targets) __builtin_trap();
        seen += (size_t)b.n_seg;
    }
    if (cursor == ds->n && seen != ds->n) __builtin_trap();
    mc_batch_free(&b);
    mc_free(order);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    int pass;
    for (pass = 0; pass < 2; pass++) {
        mc_dataset_opts o;
        mc_dataset ds;
        mc_status s;
        memset(&o, 0, sizeof o);
        memset(&ds, 0, sizeof ds);
        o.max_seq_length = MAX_LEN;
        o.vocab_size = VOCAB;
        o.skip_invalid = pass == 1;
        o.mask_prompt = pass == 1; /* no effect on id lines */
        s = mc_dataset_parse(text, size, "fuzz.jsonl", &o, &ds);
        if (s != MC_OK && s != MC_ERR_DATA && s != MC_ERR_OOM) __builtin_trap();
        if (s == MC_OK) {
            check_dataset(&ds);
            check_batches(&ds, size, 2, false);
            check_batches(&ds, size + 1, 2, true);
        }
        mc_dataset_free(&ds);
    }
    return 0;
}
