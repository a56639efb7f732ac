/* load.c - reads tokenizer.json (the Hugging Face `tokenizers` serialization) and
 * tokenizer_config.json into an mc_tokenizer.
 *
 * tokenizer.json, as far as this library reads it:
 *   {"version": "1.0", "truncation": null, "padding": null,
 *    "added_tokens": [{"id": 151643, "content": "<|endoftext|>", "single_word": false,
 *                      "lstrip": false, "rstrip": false, "normalized": false,
 *                      "special": true}, ...],
 *    "normalizer": null | {"type": "NFC"} | {"type": "Sequence", "normalizers": [...]},
 *    "pre_tokenizer": null | {"type": "Split", "pattern": {"Regex": "..."} | {"String":
 *                     "..."}, "behavior": "Isolated", "invert": false}
 *                   | {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}
 *                   | {"type": "Sequence", "pretokenizers": [...]},
 *    "post_processor": null | ByteLevel | TemplateProcessing | BertProcessing
 *                    | RobertaProcessing | Sequence,
 *    "decoder": null | {"type": "ByteLevel", ...},
 *    "model": {"type": "BPE", "vocab": {"token": id, ...},
 *              "merges": ["a b", ...] or [["a", "b"], ...], "unk_token": null,
 *              "ignore_merges": false, "fuse_unk": false, "byte_fallback": false,
 *              "dropout": null, "continuing_subword_prefix": null,
 *              "end_of_word_suffix": null}}
 * Every number that sizes an array is checked before use. */
#include "tok_internal.h"

#include "../io/io.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

/* MC_ERR_TOKENIZER with the tokenizer's name in front. */
static mc_status tok_err(const mc_tokenizer *tok, const char *fmt, ...) MC_PRINTF(2, 3);

static mc_status tok_err(const mc_tokenizer *tok, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mc_fail(MC_ERR_TOKENIZER, "%s: %s", tok->name, msg);
}

static mc_status unsupported(const mc_tokenizer *tok, const char *what, const char *name) {
    return mc_fail(MC_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", tok->name, what, name);
}

mc_status mc_tok_add_str(mc_tokenizer *tok, const char *s, size_t len, uint32_t *off) {
    size_t need;
    if (!mc_add_ok(tok->strs_len, len + 1, &need) || need > UINT32_MAX)
        return mc_fail(MC_ERR_TOKENIZER, "%s: token strings exceed 4 GiB", tok->name);
    if (need > tok->strs_cap) {
        size_t cap = tok->strs_cap ? tok->strs_cap : 4096;
        char *p;
        while (cap < need) cap *= 2;
        p = mc_realloc(tok->strs, cap);
        if (!p) return mc_fail(MC_ERR_OOM, "%s: out of memory for token strings", tok->name);
        tok->strs = p;
        tok->strs_cap = cap;
    }
    memcpy(tok->strs + tok->strs_len, s, len);
    tok->strs[tok->strs_len + len] = '\0';
    *off = (uint32_t)tok->strs_len;
    tok->strs_len = need;
    return MC_OK;
}

/* ---- small JSON accessors ---------------------------------------------------------------- */

static const cJSON *member(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Reads a boolean member: missing or null gives def. */
static mc_status get_bool(const mc_tokenizer *tok, const cJSON *obj, const char *key, bool def,
                          const char *ctx, bool *out) {
    const cJSON *v = member(obj, key);
    *out = def;
    if (!v || cJSON_IsNull(v)) return MC_OK;
    if (!cJSON_IsBool(v)) return tok_err(tok, "%s.%s must be true or false", ctx, key);
    *out = cJSON_IsTrue(v) != 0;
    return MC_OK;
}

/* A token id: an integer in [0, 2^30). */
static mc_status get_id(const mc_tokenizer *tok, const cJSON *v, const char *ctx, int32_t *out) {
    double d;
    if (!cJSON_IsNumber(v)) return tok_err(tok, "%s: token id must be a number", ctx);
    d = v->valuedouble;
    if (!(d >= 0 && d < 1073741824.0) || floor(d) != d)
        return tok_err(tok, "%s: token id %g is not an integer in [0, 2^30)", ctx, d);
    *out = (int32_t)d;
    return MC_OK;
}

/* The "type" string of a component object, or NULL. */
static const char *type_of(const cJSON *obj) {
    const cJSON *t = member(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* ---- normalizer --------------------------------------------------------------------------- */

static mc_status parse_normalizer(mc_tokenizer *tok, const cJSON *j, int depth) {
    const char *type;
    mc_norm_form form;
    if (!j || cJSON_IsNull(j)) return MC_OK;
    type = type_of(j);
    if (!cJSON_IsObject(j) || !type)
        return tok_err(tok, "normalizer must be an object with a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = member(j, "normalizers"), *it;
        if (!cJSON_IsArray(list) || depth > 4)
            return tok_err(tok, "normalizer Sequence needs a 'normalizers' array");
        cJSON_ArrayForEach(it, list) {
            mc_status s = parse_normalizer(tok, it, depth + 1);
            if (s != MC_OK) return s;
        }
        return MC_OK;
    }
    if (!strcmp(type, "NFC"))
        form = MC_NORM_NFC;
    else if (!strcmp(type, "NFD"))
        form = MC_NORM_NFD;
    else if (!strcmp(type, "NFKC"))
        form = MC_NORM_NFKC;
    else if (!strcmp(type, "NFKD"))
        form = MC_NORM_NFKD;
    else
        return unsupported(tok, "normalizer", type);
    if (tok->n_norms >= MC_TOK_MAX_NORMS)
        return tok_err(tok, "more than %d normalizers", MC_TOK_MAX_NORMS);
    tok->norms[tok->n_norms++] = form;
    return MC_OK;
}

/* ---- pre-tokenizer ------------------------------------------------------------------------ */

/* The next free step (zeroed), or NULL when all are used. */
static mc_pretok_step *add_step(mc_tokenizer *tok) {
    mc_pretok_step *st;
    if (tok->n_steps >= MC_TOK_MAX_STEPS) return NULL;
    st = &tok->steps[tok->n_steps++];
    memset(st, 0, sizeof *st);
    return st;
}

static mc_status note_captures(mc_tokenizer *tok, const pcre2_code *re) {
    uint32_t n = 0;
    (void)pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &n);
    if (n > tok->max_captures) tok->max_captures = n;
    return MC_OK;
}

static mc_status parse_split(mc_tokenizer *tok, const cJSON *j) {
    static const char *const k_beh[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    const cJSON *pat = member(j, "pattern"), *beh = member(j, "behavior"), *p;
    mc_pretok_step *st = NULL;
    bool literal;
    int b;
    mc_status s;
    if (tok->byte_level)
        return mc_fail(MC_ERR_UNSUPPORTED,
                       "%s: a Split pre-tokenizer after ByteLevel is not supported", tok->name);
    if (!cJSON_IsObject(pat)) return tok_err(tok, "Split needs a 'pattern' object");
    p = member(pat, "Regex");
    literal = p == NULL;
    if (literal) p = member(pat, "String");
    if (!cJSON_IsString(p))
        return tok_err(tok, "Split pattern must be {\"Regex\": s} or {\"String\": s}");
    if (!cJSON_IsString(beh)) return tok_err(tok, "Split needs a 'behavior' string");
    for (b = 0; b < 5; b++)
        if (!strcmp(beh->valuestring, k_beh[b])) break;
    if (b == 5) return unsupported(tok, "Split behavior", beh->valuestring);
    st = add_step(tok);
    if (!st) return tok_err(tok, "more than %d pre-tokenizers", MC_TOK_MAX_STEPS);
    st->kind = MC_PT_SPLIT;
    st->behavior = (mc_split_behavior)b;
    s = get_bool(tok, j, "invert", false, "Split", &st->invert);
    if (s == MC_OK)
        s = mc_regex_compile(p->valuestring, strlen(p->valuestring), literal, tok->name, &st->re);
    if (s == MC_OK) s = note_captures(tok, st->re);
    return s;
}

static mc_status parse_pretok(mc_tokenizer *tok, const cJSON *j, int depth) {
    const char *type;
    if (!j || cJSON_IsNull(j)) return MC_OK;
    type = type_of(j);
    if (!cJSON_IsObject(j) || !type)
        return tok_err(tok, "pre_tokenizer must be an object with a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = member(j, "pretokenizers"), *it;
        if (!cJSON_IsArray(list) || depth > 4)
            return tok_err(tok, "pre_tokenizer Sequence needs a 'pretokenizers' array");
        cJSON_ArrayForEach(it, list) {
            mc_status s = parse_pretok(tok, it, depth + 1);
            if (s != MC_OK) return s;
        }
        return MC_OK;
    }
    if (!strcmp(type, "Split")) return parse_split(tok, j);
    if (!strcmp(type, "ByteLevel")) {
        mc_pretok_step *st = add_step(tok);
        bool use_regex = true;
        mc_status s;
        if (!st) return tok_err(tok, "more than %d pre-tokenizers", MC_TOK_MAX_STEPS);
        st->kind = MC_PT_BYTELEVEL;
        s = get_bool(tok, j, "add_prefix_space", true, "ByteLevel", &st->add_prefix_space);
        if (s == MC_OK) s = get_bool(tok, j, "use_regex", true, "ByteLevel", &use_regex);
        if (s == MC_OK && use_regex)
            s = mc_regex_compile(mc_gpt2_pattern, strlen(mc_gpt2_pattern), false, tok->name,
                                 &st->re);
        if (s == MC_OK && st->re) s = note_captures(tok, st->re);
        tok->byte_level = true;
        return s;
    }
    return unsupported(tok, "pre-tokenizer", type);
}

/* ---- model: vocabulary, added tokens, merges ---------------------------------------------- */

static mc_status check_model(mc_tokenizer *tok, const cJSON *m) {
    const char *type = type_of(m);
    const cJSON *v;
    bool b;
    mc_status s;
    if (!cJSON_IsObject(m)) return tok_err(tok, "'model' must be an object");
    if (type && strcmp(type, "BPE") != 0) return unsupported(tok, "model type", type);
    if (!type && !member(m, "merges"))
        return unsupported(tok, "model type", "(untyped, no merges)");
    v = member(m, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
        return unsupported(tok, "BPE option", "dropout");
    s = get_bool(tok, m, "byte_fallback", false, "model", &b);
    if (s == MC_OK && b) return unsupported(tok, "BPE option", "byte_fallback");
    if (s == MC_OK) s = get_bool(tok, m, "ignore_merges", false, "model", &tok->ignore_merges);
    if (s == MC_OK) s = get_bool(tok, m, "fuse_unk", false, "model", &tok->fuse_unk);
    if (s != MC_OK) return s;
    v = member(m, "continuing_subword_prefix");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return unsupported(tok, "BPE option", "continuing_subword_prefix");
    v = member(m, "end_of_word_suffix");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return unsupported(tok, "BPE option", "end_of_word_suffix");
    if (!cJSON_IsObject(member(m, "vocab"))) return tok_err(tok, "model.vocab must be an object");
    if (!cJSON_IsArray(member(m, "merges"))) return tok_err(tok, "model.merges must be an array");
    return MC_OK;
}

/* Sizes the id arrays from the largest id of the vocabulary and the added tokens. */
static mc_status alloc_ids(mc_tokenizer *tok, const cJSON *vocab, const cJSON *added) {
    const cJSON *it;
    int32_t max_id = -1, id = 0;
    size_t count = 0, limit;
    mc_status s;
    cJSON_ArrayForEach(it, vocab) {
        s = get_id(tok, it, "model.vocab", &id);
        if (s != MC_OK) return s;
        max_id = MC_MAX(max_id, id);
        count++;
    }
    cJSON_ArrayForEach(it, added) {
        if (!cJSON_IsObject(it)) return tok_err(tok, "added_tokens entries must be objects");
        s = get_id(tok, member(it, "id"), "added_tokens", &id);
        if (s != MC_OK) return s;
        max_id = MC_MAX(max_id, id);
        count++;
    }
    if (max_id < 0) return tok_err(tok, "the vocabulary is empty");
    /* Ids may have gaps, but not so many that a small file sizes a huge table. */
    limit = count * 4 + 1024;
    if ((size_t)max_id >= limit)
        return tok_err(tok, "token id %d is far beyond the %zu tokens defined", max_id, count);
    tok->n_ids = max_id + 1;
    tok->tok_off = mc_calloc((size_t)tok->n_ids, sizeof *tok->tok_off);
    tok->tok_len = mc_calloc((size_t)tok->n_ids, sizeof *tok->tok_len);
    tok->flags = mc_calloc((size_t)tok->n_ids, 1);
    if (!tok->tok_off || !tok->tok_len || !tok->flags)
        return mc_fail(MC_ERR_OOM, "%s: out of memory for %d token ids", tok->name, tok->n_ids);
    return mc_strmap_init(&tok->vocab, count);
}

static mc_status read_vocab(mc_tokenizer *tok, const cJSON *vocab) {
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble, other;
        size_t len = strlen(it->string);
        mc_status s;
        if (tok->flags[id] & MC_TF_PRESENT)
            return tok_err(tok, "duplicate id %d in model.vocab ('%s' and '%s')", id,
                           mc_tok_str(tok, id), it->string);
        s = mc_tok_add_str(tok, it->string, len, &tok->tok_off[id]);
        if (s != MC_OK) return s;
        tok->tok_len[id] = (uint32_t)len;
        tok->flags[id] = MC_TF_PRESENT | MC_TF_MODEL;
        other = mc_strmap_put(tok, id);
        if (other >= 0)
            return tok_err(tok, "token '%s' occurs twice in model.vocab (ids %d and %d)",
                           it->string, other, id);
    }
    return MC_OK;
}

/* The text an added token is matched against: its content, normalized when it is flagged
 * normalized and a normalizer exists (as Hugging Face does). */
static mc_status added_pattern(mc_tokenizer *tok, mc_added_tok *t, const char *content) {
    mc_buf a = {0}, b = {0};
    const uint8_t *p = (const uint8_t *)content;
    size_t len = strlen(content);
    mc_status s = MC_OK;
    int i;
    if (t->normalized && mc_utf8_check(p, len) != len)
        return tok_err(tok, "added token '%s' is not valid UTF-8", content);
    for (i = 0; t->normalized && i < tok->n_norms && s == MC_OK; i++) {
        mc_buf *dst = (i % 2) ? &b : &a;
        s = mc_normalize(tok->norms[i], p, len, dst);
        p = dst->p;
        len = dst->n;
    }
    if (s == MC_OK) s = mc_tok_add_str(tok, (const char *)p, len, &t->off);
    t->len = (uint32_t)len;
    mc_buf_free(&a);
    mc_buf_free(&b);
    return s;
}

static mc_status read_added(mc_tokenizer *tok, const cJSON *added) {
    const cJSON *it;
    size_t n = (size_t)cJSON_GetArraySize(added);
    if (n == 0) return MC_OK;
    tok->added = mc_calloc(n, sizeof *tok->added);
    if (!tok->added) return mc_fail(MC_ERR_OOM, "%s: out of memory for added tokens", tok->name);
    cJSON_ArrayForEach(it, added) {
        const cJSON *c = member(it, "content");
        mc_added_tok *t = &tok->added[tok->n_added];
        int32_t id = (int32_t)member(it, "id")->valuedouble;
        mc_status s;
        if (!cJSON_IsString(c) || !c->valuestring[0])
            return tok_err(tok, "added token %d needs a non-empty 'content' string", id);
        t->id = id;
        s = get_bool(tok, it, "special", false, "added_tokens", &t->special);
        if (s == MC_OK) s = get_bool(tok, it, "lstrip", false, "added_tokens", &t->lstrip);
        if (s == MC_OK) s = get_bool(tok, it, "rstrip", false, "added_tokens", &t->rstrip);
        if (s == MC_OK)
            s = get_bool(tok, it, "single_word", false, "added_tokens", &t->single_word);
        if (s == MC_OK)
            s = get_bool(tok, it, "normalized", !t->special, "added_tokens", &t->normalized);
        if (s != MC_OK) return s;
        if (tok->flags[id] & MC_TF_PRESENT) {
            if (strcmp(mc_tok_str(tok, id), c->valuestring) != 0)
                return tok_err(tok, "added token '%s' has id %d, which '%s' already has",
                               c->valuestring, id, mc_tok_str(tok, id));
        } else {
            int32_t other;
            s = mc_tok_add_str(tok, c->valuestring, strlen(c->valuestring), &tok->tok_off[id]);
            if (s != MC_OK) return s;
            tok->tok_len[id] = (uint32_t)strlen(c->valuestring);
            tok->flags[id] = MC_TF_PRESENT;
            other = mc_strmap_put(tok, id);
            if (other >= 0)
                return tok_err(tok, "added token '%s' has id %d but also id %d", c->valuestring, id,
                               other);
        }
        tok->flags[id] |= MC_TF_ADDED | (t->special ? MC_TF_SPECIAL : 0);
        s = added_pattern(tok, t, c->valuestring);
        if (s != MC_OK) return s;
        tok->n_added++;
    }
    return MC_OK;
}

/* Model-vocabulary id of s[0..len), or -1. */
static int32_t model_id(const mc_tokenizer *tok, const char *s, size_t len) {
    int32_t id = mc_strmap_get(tok, (const uint8_t *)s, len);
    return id >= 0 && (tok->flags[id] & MC_TF_MODEL) ? id : -1;
}

static mc_status read_merges(mc_tokenizer *tok, const cJSON *merges) {
    const cJSON *it;
    mc_buf cat = {0};
    uint32_t rank = 0;
    size_t idx = 0;
    mc_status s = mc_mergemap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges));
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t la, lb;
        int32_t ia, ib, inew;
        if (s != MC_OK) break;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!strncmp(it->valuestring, "#version", 8)) {
                idx++;
                continue;
            }
            if (!sp || strchr(sp + 1, ' ')) {
                s = tok_err(tok, "merges[%zu] '%s' is not two tokens separated by one space", idx,
                            it->valuestring);
                break;
            }
            a = it->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            a = it->child->valuestring;
            la = strlen(a);
            b = it->child->next->valuestring;
            lb = strlen(b);
        } else {
            s = tok_err(tok, "merges[%zu] must be \"a b\" or [\"a\", \"b\"]", idx);
            break;
        }
        ia = model_id(tok, a, la);
        ib = model_id(tok, b, lb);
        if (ia < 0 || ib < 0) {
            s = tok_err(tok, "merges[%zu] names '%.*s', which is not in the vocabulary", idx,
                        (int)(ia < 0 ? la : lb), ia < 0 ? a : b);
            break;
        }
        cat.n = 0;
        s = mc_buf_append(&cat, a, la);
        if (s == MC_OK) s = mc_buf_append(&cat, b, lb);
        if (s != MC_OK) break;
        inew = model_id(tok, (const char *)cat.p, cat.n);
        if (inew < 0) {
            s = tok_err(tok, "merges[%zu] makes '%.*s', which is not in the vocabulary", idx,
                        (int)cat.n, (const char *)cat.p);
            break;
        }
        mc_mergemap_put(&tok->merges, ia, ib, rank++, inew);
        idx++;
    }
    mc_buf_free(&cat);
    return s;
}

/* ---- post-processor and decoder ----------------------------------------------------------- */

/* Appends ids to *arr (prepending when front). */
static mc_status add_ids(const mc_tokenizer *tok, int32_t **arr, size_t *n, const int32_t *ids,
                         size_t k, bool front) {
    int32_t *p;
    size_t i;
    if (k == 0) return MC_OK;
    for (i = 0; i < k; i++)
        if (ids[i] < 0 || ids[i] >= tok->n_ids || !(tok->flags[ids[i]] & MC_TF_PRESENT))
            return tok_err(tok, "post_processor uses token id %d, which is not in the vocabulary",
                           ids[i]);
    p = mc_realloc(*arr, (*n + k + 1) * sizeof *p);
    if (!p) return mc_fail(MC_ERR_OOM, "%s: out of memory", tok->name);
    if (front) {
        memmove(p + k, p, *n * sizeof *p);
        memcpy(p, ids, k * sizeof *p);
    } else {
        memcpy(p + *n, ids, k * sizeof *p);
    }
    *arr = p;
    *n += k;
    return MC_OK;
}

/* ["[CLS]", 101] -> 101 */
static mc_status pair_id(const mc_tokenizer *tok, const cJSON *pair, const char *ctx, int32_t *id) {
    if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
        return tok_err(tok, "%s must be [token, id]", ctx);
    return get_id(tok, pair->child->next, ctx, id);
}

static mc_status parse_template(mc_tokenizer *tok, const cJSON *j, int32_t **pre, size_t *n_pre,
                                int32_t **post, size_t *n_post) {
    const cJSON *single = member(j, "single"), *specials = member(j, "special_tokens"), *it;
    int seqs = 0;
    mc_status s = MC_OK;
    if (!cJSON_IsArray(single) || !cJSON_IsObject(specials))
        return tok_err(tok, "TemplateProcessing needs 'single' and 'special_tokens'");
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = member(it, "SpecialToken"), *sq = member(it, "Sequence"), *name, *ids, *x;
        if (sq) {
            const cJSON *sid = member(sq, "id");
            if (!cJSON_IsString(sid) || strcmp(sid->valuestring, "A") != 0 || ++seqs > 1)
                return unsupported(tok, "TemplateProcessing single template", "other than one $A");
            continue;
        }
        name = sp ? member(sp, "id") : NULL;
        if (!name || !cJSON_IsString(name))
            return tok_err(tok, "TemplateProcessing piece must be SpecialToken or Sequence");
        ids = member(member(specials, name->valuestring), "ids");
        if (!cJSON_IsArray(ids))
            return tok_err(tok, "TemplateProcessing names unknown special token '%s'",
                           name->valuestring);
        cJSON_ArrayForEach(x, ids) {
            int32_t id = 0;
            s = get_id(tok, x, "TemplateProcessing", &id);
            if (s == MC_OK)
                s = seqs ? add_ids(tok, post, n_post, &id, 1, false)
                         : add_ids(tok, pre, n_pre, &id, 1, false);
            if (s != MC_OK) return s;
        }
    }
    if (seqs != 1) return unsupported(tok, "TemplateProcessing single template", "without $A");
    return s;
}

static mc_status parse_post(mc_tokenizer *tok, const cJSON *j, int depth) {
    const char *type;
    int32_t *pre = NULL, *post = NULL;
    size_t n_pre = 0, n_post = 0;
    mc_status s = MC_OK;
    if (!j || cJSON_IsNull(j)) return MC_OK;
    type = type_of(j);
    if (!cJSON_IsObject(j) || !type)
        return tok_err(tok, "post_processor must be an object with a type");
    if (!strcmp(type, "ByteLevel")) return MC_OK;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = member(j, "processors"), *it;
        if (!cJSON_IsArray(list) || depth > 4)
            return tok_err(tok, "post_processor Sequence needs a 'processors' array");
        cJSON_ArrayForEach(it, list) {
            s = parse_post(tok, it, depth + 1);
            if (s != MC_OK) return s;
        }
        return MC_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        s = parse_template(tok, j, &pre, &n_pre, &post, &n_post);
    } else if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        int32_t cls = 0, sep = 0;
        s = pair_id(tok, member(j, "cls"), "cls", &cls);
        if (s == MC_OK) s = pair_id(tok, member(j, "sep"), "sep", &sep);
        if (s == MC_OK) s = add_ids(tok, &pre, &n_pre, &cls, 1, false);
        if (s == MC_OK) s = add_ids(tok, &post, &n_post, &sep, 1, false);
    } else {
        return unsupported(tok, "post-processor", type);
    }
    /* Each processor wraps what the previous ones produced. */
    if (s == MC_OK) s = add_ids(tok, &tok->pre_ids, &tok->n_pre, pre, n_pre, true);
    if (s == MC_OK) s = add_ids(tok, &tok->post_ids, &tok->n_post, post, n_post, false);
    mc_free(pre);
    mc_free(post);
    return s;
}

/* Precomputes the bytes each id decodes to (Hugging Face's ByteLevel decoder: a token
 * whose characters are all in the byte alphabet gives those bytes, any other token its
 * UTF-8 text). An added token flagged normalized decodes from its normalized text, as in
 * Hugging Face. */
static mc_status build_decode(mc_tokenizer *tok, const cJSON *dec) {
    const char *type = type_of(dec);
    bool byte_level = false;
    mc_buf out = {0};
    uint32_t *norm_of = NULL; /* [n_ids] 1 + index of a normalized added token, or 0 */
    int32_t id;
    size_t k;
    mc_status s = MC_OK;
    if (dec && !cJSON_IsNull(dec)) {
        if (!cJSON_IsObject(dec) || !type)
            return tok_err(tok, "decoder must be an object with a type");
        if (strcmp(type, "ByteLevel") != 0) return unsupported(tok, "decoder", type);
        byte_level = true;
    }
    tok->dec_join_space = !byte_level;
    tok->dec_off = mc_malloc(((size_t)tok->n_ids + 1) * sizeof *tok->dec_off);
    norm_of = mc_calloc((size_t)tok->n_ids, sizeof *norm_of);
    if (!tok->dec_off || !norm_of) {
        mc_free(norm_of);
        return mc_fail(MC_ERR_OOM, "%s: out of memory", tok->name);
    }
    for (k = 0; k < tok->n_added; k++)
        if (tok->added[k].normalized) norm_of[tok->added[k].id] = (uint32_t)k + 1;
    for (id = 0; id < tok->n_ids && s == MC_OK; id++) {
        const mc_added_tok *t = norm_of[id] ? &tok->added[norm_of[id] - 1] : NULL;
        const uint8_t *p = (const uint8_t *)(t ? tok->strs + t->off : mc_tok_str(tok, id));
        size_t len = t ? t->len : tok->tok_len[id], i = 0, start = out.n;
        bool mapped = byte_level && mc_utf8_check(p, len) == len;
        if (out.n > UINT32_MAX - 4 * (size_t)len) {
            s = tok_err(tok, "decoded vocabulary exceeds 4 GiB");
            break;
        }
        tok->dec_off[id] = (uint32_t)out.n;
        if (!(tok->flags[id] & MC_TF_PRESENT)) continue;
        s = mc_buf_reserve(&out, len);
        while (mapped && s == MC_OK && i < len) {
            uint32_t cp;
            int b;
            i += mc_utf8_next(p + i, len - i, &cp);
            b = mc_bl_byte(cp);
            if (b < 0) break;
            out.p[out.n++] = (uint8_t)b;
        }
        if (s == MC_OK && (!mapped || i < len)) {
            out.n = start;
            s = mc_buf_append(&out, p, len);
        }
    }
    tok->dec_off[tok->n_ids] = (uint32_t)out.n;
    tok->dec = out.p;
    mc_free(norm_of);
    return s;
}

/* ---- whole file --------------------------------------------------------------------------- */

static mc_status check_unsupported_top(const mc_tokenizer *tok, const cJSON *root) {
    const cJSON *t = member(root, "truncation"), *p = member(root, "padding");
    if (t && !cJSON_IsNull(t)) return unsupported(tok, "setting", "truncation");
    if (p && !cJSON_IsNull(p)) return unsupported(tok, "setting", "padding");
    return MC_OK;
}

static void default_specials(mc_tokenizer *tok) {
    static const char *const k_names[MC_N_SPECIAL] = {NULL,
                                                      "<|endoftext|>",
                                                      NULL,
                                                      "<|endoftext|>",
                                                      "<|im_start|>",
                                                      "<|im_end|>",
                                                      "<|fim_prefix|>",
                                                      "<|fim_middle|>",
                                                      "<|fim_suffix|>",
                                                      "<|fim_pad|>",
                                                      "<|repo_name|>",
                                                      "<|file_sep|>"};
    int i;
    for (i = 0; i < MC_N_SPECIAL; i++)
        tok->special[i] =
            k_names[i] ? mc_strmap_get(tok, (const uint8_t *)k_names[i], strlen(k_names[i])) : -1;
    if (tok->n_pre == 1) tok->special[MC_TOKEN_BOS] = tok->pre_ids[0];
}

mc_status mc_tok_parse_json(mc_tokenizer *tok, const char *json, size_t len) {
    cJSON *root = NULL;
    const cJSON *model, *added;
    int b;
    mc_status s = mc_json_parse(json, len, tok->name, &root);
    if (s != MC_OK) return s;
    if (!cJSON_IsObject(root)) {
        s = tok_err(tok, "the top level is not an object");
        goto done;
    }
    model = member(root, "model");
    added = member(root, "added_tokens");
    if (cJSON_IsNull(added)) added = NULL; /* iterating NULL visits nothing */
    if (added && !cJSON_IsArray(added)) {
        s = tok_err(tok, "'added_tokens' must be an array");
        goto done;
    }
    s = check_unsupported_top(tok, root);
    if (s == MC_OK) s = check_model(tok, model);
    if (s == MC_OK) s = parse_normalizer(tok, member(root, "normalizer"), 0);
    if (s == MC_OK) s = alloc_ids(tok, member(model, "vocab"), added);
    if (s == MC_OK) s = read_vocab(tok, member(model, "vocab"));
    if (s == MC_OK) s = read_added(tok, added);
    if (s == MC_OK) {
        const cJSON *unk = member(model, "unk_token");
        tok->unk_id = -1;
        if (cJSON_IsString(unk)) {
            tok->unk_id = model_id(tok, unk->valuestring, strlen(unk->valuestring));
            if (tok->unk_id < 0)
                s = tok_err(tok, "unk_token '%s' is not in the vocabulary", unk->valuestring);
        } else if (unk && !cJSON_IsNull(unk)) {
            s = tok_err(tok, "model.unk_token must be a string or null");
        }
    }
    if (s == MC_OK) s = parse_pretok(tok, member(root, "pre_tokenizer"), 0);
    if (s == MC_OK) s = parse_post(tok, member(root, "post_processor"), 0);
    if (s == MC_OK) s = build_decode(tok, member(root, "decoder"));
    if (s == MC_OK) s = read_merges(tok, member(model, "merges"));
    for (b = 0; b < 256 && s == MC_OK; b++) {
        uint8_t u[4];
        size_t n = mc_utf8_put(mc_bl_char[b], u);
        tok->byte_id[b] = model_id(tok, (const char *)u, n);
    }
    if (s == MC_OK) s = mc_added_set_build(tok, &tok->raw_set, false);
    if (s == MC_OK) s = mc_added_set_build(tok, &tok->norm_set, true);
    if (s == MC_OK) default_specials(tok);
done:
    cJSON_Delete(root);
    return s;
}

/* ---- tokenizer_config.json ---------------------------------------------------------------- */

/* A special-token setting: "text", {"content": "text", ...} or null. Missing keys keep the
 * default; unknown tokens give -1. */
static mc_status config_token(mc_tokenizer *tok, const cJSON *root, const char *key, int which) {
    const cJSON *v = member(root, key);
    if (!v) return MC_OK;
    if (cJSON_IsObject(v)) v = member(v, "content");
    if (!v || cJSON_IsNull(v)) {
        tok->special[which] = -1;
        return MC_OK;
    }
    if (!cJSON_IsString(v))
        return tok_err(tok, "tokenizer_config.json: %s must be a string, an object or null", key);
    tok->special[which] =
        mc_strmap_get(tok, (const uint8_t *)v->valuestring, strlen(v->valuestring));
    return MC_OK;
}

mc_status mc_tok_parse_config(mc_tokenizer *tok, const char *json, size_t len) {
    cJSON *root = NULL;
    const cJSON *tmpl;
    mc_status s = mc_json_parse(json, len, "tokenizer_config.json", &root);
    if (s != MC_OK) return s;
    if (!cJSON_IsObject(root)) {
        s = tok_err(tok, "tokenizer_config.json: the top level is not an object");
        goto done;
    }
    s = config_token(tok, root, "bos_token", MC_TOKEN_BOS);
    if (s == MC_OK) s = config_token(tok, root, "eos_token", MC_TOKEN_EOS);
    if (s == MC_OK) s = config_token(tok, root, "pad_token", MC_TOKEN_PAD);
    if (s != MC_OK) goto done;
    tmpl = member(root, "chat_template");
    if (cJSON_IsArray(tmpl)) {
        /* [{"name": "default", "template": "..."}, ...]: the default one, else the first. */
        const cJSON *it, *pick = tmpl->child;
        cJSON_ArrayForEach(it, tmpl) {
            const cJSON *name = member(it, "name");
            if (cJSON_IsString(name) && !strcmp(name->valuestring, "default")) pick = it;
        }
        tmpl = pick ? member(pick, "template") : NULL;
    }
    if (tmpl && !cJSON_IsNull(tmpl)) {
        if (!cJSON_IsString(tmpl)) {
            s = tok_err(tok, "tokenizer_config.json: chat_template must be a string");
            goto done;
        }
        s = mc_chat_detect(tmpl->valuestring, strlen(tmpl->valuestring), &tok->chat_style,
                           &tok->chat_system);
    }
done:
    cJSON_Delete(root);
    return s;
}

void mc_tok_release(mc_tokenizer *tok) {
    int i;
    for (i = 0; i < tok->n_steps; i++) pcre2_code_free(tok->steps[i].re);
    mc_added_set_free(&tok->raw_set);
    mc_added_set_free(&tok->norm_set);
    mc_mergemap_free(&tok->merges);
    mc_strmap_free(&tok->vocab);
    mc_bpe_caches_free(tok);
    mc_free(tok->added);
    mc_free(tok->pre_ids);
    mc_free(tok->post_ids);
    mc_free(tok->dec);
    mc_free(tok->dec_off);
    mc_free(tok->tok_off);
    mc_free(tok->tok_len);
    mc_free(tok->flags);
    mc_free(tok->strs);
    mc_free(tok->chat_system);
    mc_free(tok->name);
}
