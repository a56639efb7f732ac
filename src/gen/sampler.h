/* sampler.h - internal view of the sampler chain (public API in mcandle.h, "Sampling"):
 * the final distribution without a draw, for tests and for callers that want to inspect
 * what the chain keeps. */
#ifndef MC_GEN_SAMPLER_H
#define MC_GEN_SAMPLER_H

#include "../core/core.h"

/* Runs stages 1-8 of the chain on logits[0..vocab_size) (see mcandle.h) and writes the
 * tokens that survive truncation to ids[0..*n) with their probabilities (sum 1) in
 * probs[0..*n) (a tiny probability may round to 0). ids and probs must hold vocab_size entries. The order of the entries is
 * unspecified. The history and the RNG are not changed. Greedy gives one entry with
 * probability 1. Errors as mc_sampler_sample. */
mc_status mc_sampler_dist(mc_sampler *s, const float *logits, int32_t *ids, float *probs,
                          size_t *n);

/* Number of tokens the sampler holds in its repetition history (prompt and generated,
 * possibly more than repetition_last_n; 0 when the repetition penalty is off). */
size_t mc_sampler_history_len(const mc_sampler *s);

#endif /* MC_GEN_SAMPLER_H */
