/* dataset.h - training data: jsonl files turned into token sequences with loss masks, and
 * batches drawn from them in a seeded order.
 *
 * Line formats (one JSON object per line; blank lines are skipped):
 *   {"text": "..."}                       all tokens are targets; EOS appended if missing
 *   {"prompt": "...", "completion": "..."} rendered with the chat template as a user turn and
 *                                         an assistant turn; --mask-prompt: only the
 *                                         assistant part is a target
 *   {"messages": [{"role", "content"}...]} chat template; --mask-prompt: only the last
 *                                         assistant turn is a target
 *   {"input_ids": [..]}                   pre-tokenised; all tokens are targets
 * Text formats need a tokenizer. Sequences longer than max_seq_length are truncated (and
 * counted). An invalid line is an error naming file:line (MC_ERR_DATA), or, with
 * skip_invalid, counted and skipped. */
#ifndef MC_TRAIN_DATASET_H
#define MC_TRAIN_DATASET_H

#include "train.h"

typedef struct mc_example {
    int32_t *ids;     /* [n] tokens */
    uint8_t *target;  /* [n] 1 when token i is a loss target (predicted from i-1) */
    int n;
} mc_example;

typedef struct mc_dataset {
    mc_example *ex;       /* [n] */
    size_t n;
    size_t n_truncated;   /* examples cut to max_seq_length */
    size_t n_skipped;     /* invalid lines skipped (skip_invalid) */
    size_t n_no_targets;  /* examples without a single target (kept; they add no loss) */
    size_t n_tokens;      /* total tokens */
    size_t n_targets;     /* total target tokens (what the loss averages over) */
} mc_dataset;

typedef struct mc_dataset_opts {
    const mc_tokenizer *tok; /* NULL: only {"input_ids"} lines are accepted */
    int max_seq_length;      /* > 0 */
    bool mask_prompt;
    bool skip_invalid;
    int vocab_size;          /* ids must be in [0, vocab_size) */
} mc_dataset_opts;

/* Parses jsonl text[0..len) (fname for messages) into ds (appending). */
mc_status mc_dataset_parse(const char *text, size_t len, const char *fname,
                           const mc_dataset_opts *o, mc_dataset *ds);
/* Reads and parses a jsonl file. */
mc_status mc_dataset_load(const char *path, const mc_dataset_opts *o, mc_dataset *ds);
void mc_dataset_free(mc_dataset *ds);

/* Fills b (cleared first) with examples order[*cursor], order[*cursor + 1], ... : either
 * batch_size of them, or with pack, as many as fit in batch_size * max_seq_length tokens
 * (at least one). Each example is one segment; target[t] of the batch is ids[t+1] when
 * that token is a target, else -1 (the last token of an example predicts nothing).
 * Advances *cursor; stops at n_order. */
mc_status mc_dataset_fill_batch(const mc_dataset *ds, const size_t *order, size_t n_order,
                                size_t *cursor, int batch_size, bool pack, int max_seq_length,
                                mc_batch *b);

/* order[0..n) = a permutation of 0..n-1 drawn from (seed, epoch); shuffle false gives
 * the identity. */
void mc_dataset_order(size_t *order, size_t n, uint64_t seed, uint64_t epoch, bool shuffle);

#endif /* MC_TRAIN_DATASET_H */
