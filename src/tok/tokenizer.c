/* tokenizer.c - the public tokenizer API: loading from a file, a folder or memory, encoding
 * through the pipeline (added tokens, normalizer, added tokens again, pre-tokenizer, BPE,
 * post-processor), decoding with lossy UTF-8 repair, and lookups. */
#include "tok_internal.h"

#include "../io/io.h"

/* ---- loading ---------------------------------------------------------------------------- */

mc_status mc_tokenizer_parse(const char *json, size_t len, const char *config, size_t config_len,
                             const char *name, mc_tokenizer **out) {
    mc_tokenizer *tok = NULL;
    mc_status s;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_parse: out is NULL");
    *out = NULL;
    if (!json && len) return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_parse: json is NULL");
    if (!config && config_len)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_parse: config is NULL");
    tok = mc_calloc(1, sizeof *tok);
    if (!tok) return mc_fail(MC_ERR_OOM, "out of memory for a tokenizer");
    tok->name = mc_strdup(name ? name : "tokenizer.json");
    tok->gctx = mc_regex_context();
    if (!tok->name || !tok->gctx) {
        s = mc_fail(MC_ERR_OOM, "out of memory for a tokenizer");
        goto fail;
    }
    s = mc_bpe_caches_init(tok);
    if (s == MC_OK) s = mc_tok_parse_json(tok, json ? json : "", len);
    if (s == MC_OK && config) s = mc_tok_parse_config(tok, config, config_len);
    if (s != MC_OK) goto fail;
    *out = tok;
    return MC_OK;
fail:
    mc_tokenizer_free(tok);
    return s;
}

mc_status mc_tokenizer_load_files(const char *tokenizer_json, const char *config_json,
                                  mc_tokenizer **out) {
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    mc_status s;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_load_files: out is NULL");
    *out = NULL;
    if (!tokenizer_json)
        return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_load_files: path is NULL");
    s = mc_read_file(tokenizer_json, &json, &len);
    if (s == MC_OK && config_json) s = mc_read_file(config_json, &cfg, &cfg_len);
    if (s == MC_OK) s = mc_tokenizer_parse(json, len, cfg, cfg_len, tokenizer_json, out);
    mc_free(json);
    mc_free(cfg);
    return s;
}

mc_status mc_tokenizer_load(const char *path, mc_tokenizer **out) {
    char *tj = NULL, *cj = NULL;
    mc_status s;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_load: path is NULL");
    if (!mc_path_is_dir(path)) return mc_tokenizer_load_files(path, NULL, out);
    tj = mc_path_join(path, "tokenizer.json");
    cj = mc_path_join(path, "tokenizer_config.json");
    if (!tj || !cj) {
        s = mc_fail(MC_ERR_OOM, "out of memory");
    } else if (!mc_path_exists(tj)) {
        s = mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: no tokenizer.json in this folder", path);
    } else {
        s = mc_tokenizer_load_files(tj, mc_path_exists(cj) ? cj : NULL, out);
    }
    mc_free(tj);
    mc_free(cj);
    return s;
}

void mc_tokenizer_free(mc_tokenizer *tok) {
    if (!tok) return;
    mc_tok_release(tok);
    pcre2_general_context_free(tok->gctx);
    mc_free(tok);
}

/* ---- encoding --------------------------------------------------------------------------- */

/* Text between added tokens, after normalization. */
static mc_status seg_normalized(mc_enc *e, const uint8_t *p, size_t len) {
    return mc_pretok_run(e, 0, p, len);
}

/* Text between the raw-matched added tokens: normalize, then look for the added tokens
 * that match normalized text. */
static mc_status seg_raw(mc_enc *e, const uint8_t *p, size_t len) {
    const mc_tokenizer *tok = e->tok;
    int i;
    for (i = 0; i < tok->n_norms; i++) {
        mc_buf *dst;
        mc_status s;
        if (mc_norm_quick(tok->norms[i], p, len)) continue;
        dst = p == e->norm.p ? &e->norm2 : &e->norm;
        s = mc_normalize(tok->norms[i], p, len, dst);
        if (s != MC_OK) return s;
        p = dst->p;
        len = dst->n;
    }
    return mc_added_split(e, &tok->norm_set, p, len, seg_normalized);
}

static void enc_release(mc_enc *e) {
    int i;
    mc_bpe_cache_release(e->cache);
    pcre2_match_data_free(e->md);
    for (i = 0; i < MC_TOK_MAX_STEPS; i++) mc_buf_free(&e->scratch[i]);
    mc_buf_free(&e->norm);
    mc_buf_free(&e->norm2);
    mc_buf_free(&e->spell);
    mc_free(e->syms);
    mc_free(e->heap);
}

mc_status mc_tokenizer_encode(const mc_tokenizer *tok, const char *text, size_t len,
                              int add_special, int32_t *ids, size_t cap, size_t *n_out) {
    mc_enc e;
    size_t bad, i;
    mc_status s = MC_OK;
    if (n_out) *n_out = 0;
    if (!tok || !n_out || (!text && len) || (!ids && cap))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_encode: NULL argument");
    bad = mc_utf8_check((const uint8_t *)text, len);
    if (bad != len) return mc_fail(MC_ERR_UTF8, "invalid UTF-8 at byte offset %zu", bad);
    memset(&e, 0, sizeof e);
    e.tok = tok;
    e.ids = ids;
    e.cap = cap;
    if (tok->n_steps > 0) {
        e.md = pcre2_match_data_create(tok->max_captures + 1, tok->gctx);
        if (!e.md) {
            s = mc_fail(MC_ERR_OOM, "out of memory for regex match data");
            goto done;
        }
    }
    e.cache = mc_bpe_cache_acquire(tok);
    if (add_special)
        for (i = 0; i < tok->n_pre; i++) mc_enc_emit(&e, tok->pre_ids[i]);
    if (len) s = mc_added_split(&e, &tok->raw_set, (const uint8_t *)text, len, seg_raw);
    if (add_special)
        for (i = 0; i < tok->n_post; i++) mc_enc_emit(&e, tok->post_ids[i]);
    if (s != MC_OK) goto done;
    *n_out = e.n;
    if (e.n > cap)
        s = mc_fail(MC_ERR_BUFFER_TOO_SMALL, "%zu token ids do not fit a buffer of %zu", e.n, cap);
done:
    enc_release(&e);
    return s;
}

/* ---- decoding --------------------------------------------------------------------------- */

static bool valid_id(const mc_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && (tok->flags[id] & MC_TF_PRESENT);
}

mc_status mc_tokenizer_decode(const mc_tokenizer *tok, const int32_t *ids, size_t n,
                              int skip_special, char *buf, size_t cap, size_t *len_out) {
    mc_buf raw = {0};
    size_t i, len;
    bool first = true;
    mc_status s = MC_OK;
    if (len_out) *len_out = 0;
    if (!tok || !len_out || (!ids && n) || (!buf && cap))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_decode: NULL argument");
    for (i = 0; i < n && s == MC_OK; i++) {
        int32_t id = ids[i];
        if (!valid_id(tok, id)) {
            s = mc_fail(MC_ERR_TOKEN_ID, "token id %d at position %zu is not in the vocabulary", id,
                        i);
            break;
        }
        if (skip_special && (tok->flags[id] & MC_TF_SPECIAL)) continue;
        if (tok->dec_join_space && !first) s = mc_buf_append(&raw, " ", 1);
        if (s == MC_OK)
            s = mc_buf_append(&raw, tok->dec + tok->dec_off[id],
                              tok->dec_off[id + 1] - tok->dec_off[id]);
        first = false;
    }
    if (s != MC_OK) goto done;
    len = mc_utf8_lossy(raw.p, raw.n, (uint8_t *)buf, cap);
    *len_out = len;
    if (!buf || len + 1 > cap) {
        s = mc_fail(MC_ERR_BUFFER_TOO_SMALL,
                    "decoded text of %zu bytes does not fit a buffer of %zu", len, cap);
        goto done;
    }
    buf[len] = '\0';
done:
    mc_buf_free(&raw);
    return s;
}

mc_status mc_tokenizer_token_bytes(const mc_tokenizer *tok, int32_t id, char *buf, size_t cap,
                                   size_t *len_out) {
    size_t len;
    if (len_out) *len_out = 0;
    if (!tok || !len_out || (!buf && cap))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_tokenizer_token_bytes: NULL argument");
    if (!valid_id(tok, id))
        return mc_fail(MC_ERR_TOKEN_ID, "token id %d is not in the vocabulary", id);
    len = tok->dec_off[id + 1] - tok->dec_off[id];
    *len_out = len;
    if (len > cap)
        return mc_fail(MC_ERR_BUFFER_TOO_SMALL, "token %d needs %zu bytes, buffer holds %zu", id,
                       len, cap);
    if (len) memcpy(buf, tok->dec + tok->dec_off[id], len);
    if (len < cap) buf[len] = '\0';
    return MC_OK;
}

/* ---- lookups ---------------------------------------------------------------------------- */

int32_t mc_tokenizer_vocab_size(const mc_tokenizer *tok) { return tok ? tok->n_ids : 0; }

int32_t mc_tokenizer_token_to_id(const mc_tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    return mc_strmap_get(tok, (const uint8_t *)token, strlen(token));
}

const char *mc_tokenizer_id_to_token(const mc_tokenizer *tok, int32_t id) {
    if (!tok || !valid_id(tok, id)) return NULL;
    return mc_tok_str(tok, id);
}

int mc_tokenizer_is_special(const mc_tokenizer *tok, int32_t id) {
    return tok && valid_id(tok, id) && (tok->flags[id] & MC_TF_SPECIAL) ? 1 : 0;
}

int32_t mc_tokenizer_special_id(const mc_tokenizer *tok, mc_special_token which) {
    if (!tok || (int)which < 0 || (int)which >= MC_N_SPECIAL) return -1;
    return tok->special[which];
}
