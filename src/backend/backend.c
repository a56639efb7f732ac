/* backend.c - functions common to all backends. */
#include "backend.h"

void mc_backend_free(mc_backend *be) {
    if (be) be->destroy(be);
}

void mc_attention_rows_by_row(mc_backend *be, void *out, const void *q, const void *k_new,
                              const void *v_new, const mc_att_row *rows, int T, int Hq, int Hkv,
                              int hd) {
    const size_t qd = (size_t)Hq * (size_t)hd, kvd = (size_t)Hkv * (size_t)hd;
    const size_t row_bytes = kvd * mc_dtype_size(be->act_dtype);
    int t;
    for (t = 0; t < T; t++) {
        const size_t at = (size_t)rows[t].pos * kvd;
        (void)be->copy(be, mc_act_at(be, rows[t].k, at), mc_act_at_c(be, k_new, t * kvd),
                       row_bytes);
        (void)be->copy(be, mc_act_at(be, rows[t].v, at), mc_act_at_c(be, v_new, t * kvd),
                       row_bytes);
        be->attention(be, mc_act_at(be, out, t * qd), mc_act_at_c(be, q, t * qd), rows[t].k,
                      rows[t].v, 1, rows[t].pos, Hq, Hkv, hd);
    }
}
