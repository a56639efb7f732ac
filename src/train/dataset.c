/* dataset.c - jsonl training data into token sequences with loss masks; seeded epoch
 * orders; micro-batches as segments (see dataset.h for the line formats). */
#include <assert.h>
#include <cjson/cJSON.h>

#include "../io/io.h"
#include "dataset.h"

void mc_dataset_free(mc_dataset *ds) {
    size_t i;
    if (!ds) return;
    for (i = 0; i < ds->n; i++) {
        mc_free(ds->ex[i].ids);
        mc_free(ds->ex[i].target);
    }
    mc_free(ds->ex);
    memset(ds, 0, sizeof *ds);
}

/* A token sequence being built for one line. */
typedef struct seq_buf {
    int32_t *ids;
    uint8_t *target;
    size_t n, cap;
} seq_buf;

static mc_status seq_push(seq_buf *q, const int32_t *ids, size_t n, uint8_t target) {
    size_t i;
    if (q->n + n > q->cap) {
        size_t cap = MC_MAX(q->n + n, 2 * q->cap + 64);
        int32_t *a = mc_realloc(q->ids, cap * sizeof *a);
        uint8_t *b;
        if (!a) return mc_fail(MC_ERR_OOM, "out of memory reading training data");
        q->ids = a;
        b = mc_realloc(q->target, cap);
        if (!b) return mc_fail(MC_ERR_OOM, "out of memory reading training data");
        q->target = b;
        q->cap = cap;
    }
    for (i = 0; i < n; i++) {
        q->ids[q->n + i] = ids[i];
        q->target[q->n + i] = target;
    }
    q->n += n;
    return MC_OK;
}

/* Encodes text[0..len) (no special-token post-processing) and appends it. */
static mc_status push_text(seq_buf *q, const mc_tokenizer *tok, const char *text, size_t len,
                           uint8_t target) {
    size_t cap = len + 16, n = 0;
    int32_t *ids = mc_malloc(cap * sizeof *ids);
    mc_status s;
    if (!ids) return mc_fail(MC_ERR_OOM, "out of memory tokenizing");
    s = mc_tokenizer_encode(tok, text, len, 0, ids, cap, &n);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        int32_t *more = mc_realloc(ids, n * sizeof *ids);
        if (!more) {
            mc_free(ids);
            return mc_fail(MC_ERR_OOM, "out of memory tokenizing");
        }
        ids = more;
        s = mc_tokenizer_encode(tok, text, len, 0, ids, n, &n);
    }
    if (s == MC_OK) s = seq_push(q, ids, n, target);
    mc_free(ids);
    return s;
}

/* Renders messages[0..n) with the chat template (generation prompt when gen) to text. */
static mc_status render(const mc_tokenizer *tok, const mc_chat_message *msgs, size_t n, bool gen,
                        char **out, size_t *len) {
    size_t cap = 256, need = 0;
    char *buf = mc_malloc(cap);
    mc_chat_params cp = mc_chat_default_params();
    mc_status s;
    cp.add_generation_prompt = gen ? 1 : 0;
    if (!buf) return mc_fail(MC_ERR_OOM, "out of memory rendering a chat");
    s = mc_chat_render(tok, msgs, n, &cp, buf, cap, &need);
    if (s == MC_ERR_BUFFER_TOO_SMALL) {
        char *more = mc_realloc(buf, need + 1);
        if (!more) {
            mc_free(buf);
            return mc_fail(MC_ERR_OOM, "out of memory rendering a chat");
        }
        buf = more;
        s = mc_chat_render(tok, msgs, n, &cp, buf, need + 1, &need);
    }
    if (s != MC_OK) {
        mc_free(buf);
        return s;
    }
    *out = buf;
    *len = need;
    return MC_OK;
}

/* A chat as tokens: everything is a target unless mask_prompt, in which case only what
 * follows the rendering of messages[0..n-1) with a generation prompt (the last assistant
 * turn) is. */
static mc_status push_chat(seq_buf *q, const mc_tokenizer *tok, const mc_chat_message *msgs,
                           size_t n, bool mask_prompt) {
    char *full = NULL, *prefix = NULL;
    size_t full_len = 0, prefix_len = 0;
    mc_status s = render(tok, msgs, n, false, &full, &full_len);
    if (s != MC_OK) return s;
    if (!mask_prompt) {
        s = push_text(q, tok, full, full_len, 1);
        goto done;
    }
    s = render(tok, msgs, n - 1, true, &prefix, &prefix_len);
    if (s != MC_OK) goto done;
    assert(full && prefix); /* render returns MC_OK only with a buffer */
    if (prefix_len > full_len || memcmp(prefix, full, prefix_len) != 0) {
        s = mc_fail(MC_ERR_DATA, "the chat template does not render the prompt as a prefix of "
                    "the conversation; cannot mask the prompt");
        goto done;
    }
    s = push_text(q, tok, full, prefix_len, 0);
    if (s == MC_OK) s = push_text(q, tok, full + prefix_len, full_len - prefix_len, 1);
done:
    mc_free(full);
    mc_free(prefix);
    return s;
}

/* Turns one parsed line into tokens. */
static mc_status line_tokens(const cJSON *j, const mc_dataset_opts *o, seq_buf *q) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "input_ids");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *completion = cJSON_GetObjectItemCaseSensitive(j, "completion");
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (!cJSON_IsObject(j)) return mc_fail(MC_ERR_DATA, "the line is not a JSON object");
    if (ids) {
        const cJSON *e;
        if (!cJSON_IsArray(ids)) return mc_fail(MC_ERR_DATA, "\"input_ids\" is not an array");
        cJSON_ArrayForEach(e, ids) {
            double v = cJSON_IsNumber(e) ? e->valuedouble : -1.0;
            int32_t id;
            mc_status s;
            if (!(v >= 0 && v < (double)o->vocab_size) || v != (double)(int32_t)v)
                return mc_fail(MC_ERR_DATA, "\"input_ids\" holds %s, not a token id below %d",
                               cJSON_IsNumber(e) ? "a number out of range" : "a non-number",
                               o->vocab_size);
            id = (int32_t)v;
            s = seq_push(q, &id, 1, 1);
            if (s != MC_OK) return s;
        }
        return MC_OK;
    }
    if (!o->tok)
        return mc_fail(MC_ERR_DATA, "text lines need a tokenizer (only {\"input_ids\": [...]} "
                       "lines work without one)");
    if (text) {
        int32_t eos = mc_tokenizer_special_id(o->tok, MC_TOKEN_EOS);
        mc_status s;
        if (!cJSON_IsString(text)) return mc_fail(MC_ERR_DATA, "\"text\" is not a string");
        s = push_text(q, o->tok, text->valuestring, strlen(text->valuestring), 1);
        if (s == MC_OK && eos >= 0 && (q->n == 0 || q->ids[q->n - 1] != eos))
            s = seq_push(q, &eos, 1, 1);
        return s;
    }
    if (prompt || completion) {
        mc_chat_message m[2];
        if (!prompt || !completion || !cJSON_IsString(prompt) || !cJSON_IsString(completion))
            return mc_fail(MC_ERR_DATA, "\"prompt\" and \"completion\" must both be strings");
        m[0].role = "user";
        m[0].content = prompt->valuestring;
        m[1].role = "assistant";
        m[1].content = completion->valuestring;
        return push_chat(q, o->tok, m, 2, o->mask_prompt);
    }
    if (messages) {
        size_t n = (size_t)cJSON_GetArraySize(messages), i = 0;
        mc_chat_message *m;
        const cJSON *e;
        mc_status s;
        if (!cJSON_IsArray(messages) || n == 0)
            return mc_fail(MC_ERR_DATA, "\"messages\" is not a non-empty array");
        m = mc_calloc(n, sizeof *m);
        if (!m) return mc_fail(MC_ERR_OOM, "out of memory");
        cJSON_ArrayForEach(e, messages) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
            if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
                mc_free(m);
                return mc_fail(MC_ERR_DATA, "message %zu lacks a string \"role\" and \"content\"", i);
            }
            m[i].role = role->valuestring;
            m[i].content = content->valuestring;
            i++;
        }
        if (o->mask_prompt && strcmp(m[n - 1].role, "assistant") != 0) {
            mc_free(m);
            return mc_fail(MC_ERR_DATA, "--mask-prompt needs the last message to be the assistant's");
        }
        s = push_chat(q, o->tok, m, n, o->mask_prompt);
        mc_free(m);
        return s;
    }
    return mc_fail(MC_ERR_DATA, "the line has none of \"text\", \"prompt\"/\"completion\", "
                   "\"messages\", \"input_ids\"");
}

/* Appends the finished sequence (truncated to max_seq_length) as an example. */
static mc_status add_example(mc_dataset *ds, seq_buf *q, const mc_dataset_opts *o) {
    mc_example *e;
    size_t i;
    for (i = 0; i < q->n; i++) /* tokenizer ids must fit the model too */
        if (q->ids[i] < 0 || q->ids[i] >= o->vocab_size)
            return mc_fail(MC_ERR_DATA, "token id %d is outside the model's vocabulary of %d "
                           "(does the tokenizer belong to the model?)", q->ids[i], o->vocab_size);
    if (q->n > (size_t)o->max_seq_length) {
        q->n = (size_t)o->max_seq_length;
        ds->n_truncated++;
    }
    if (q->n == 0) return MC_OK;
    e = mc_realloc(ds->ex, (ds->n + 1) * sizeof *ds->ex);
    if (!e) return mc_fail(MC_ERR_OOM, "out of memory reading training data");
    ds->ex = e;
    e = &ds->ex[ds->n];
    e->ids = q->ids;
    e->target = q->target;
    e->n = (int)q->n;
    q->ids = NULL;
    q->target = NULL;
    q->n = q->cap = 0;
    ds->n++;
    ds->n_tokens += (size_t)e->n;
    {
        size_t t = 0;
        for (i = 1; i < (size_t)e->n; i++) t += e->target[i];
        ds->n_targets += t;
        if (t == 0) ds->n_no_targets++;
    }
    return MC_OK;
}

mc_status mc_dataset_parse(const char *text, size_t len, const char *fname,
                           const mc_dataset_opts *o, mc_dataset *ds) {
    size_t pos = 0, line = 0;
    seq_buf q;
    mc_status s = MC_OK;
    memset(&q, 0, sizeof q);
    if (o->max_seq_length <= 0 || o->vocab_size <= 0)
        return mc_fail(MC_ERR_INVALID_ARG, "dataset options: max_seq_length and vocab_size must be > 0");
    while (pos < len) {
        const char *start = text + pos, *nl = memchr(start, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - start) : len - pos, k;
        cJSON *j;
        pos += n + (nl ? 1 : 0);
        line++;
        for (k = 0; k < n && (start[k] == ' ' || start[k] == '\t' || start[k] == '\r'); k++) {
        }
        if (k == n) continue;
        /* mc_json_parse tells an allocation failure (MC_ERR_OOM) from bad JSON, never
         * reads past the line, and rejects data after the object */
        j = NULL;
        s = mc_json_parse(start, n, "line", &j);
        if (s == MC_OK) s = line_tokens(j, o, &q);
        else if (s == MC_ERR_JSON) s = mc_fail(MC_ERR_DATA, "invalid JSON");
        cJSON_Delete(j);
        if (s == MC_OK) s = add_example(ds, &q, o);
        q.n = 0;
        if (s == MC_ERR_OOM) break;
        if (s != MC_OK) {
            if (!o->skip_invalid) {
                mc_error_prefix("%s:%zu", fname ? fname : "<data>", line);
                break;
            }
            mc_log(MC_LOG_WARN, "%s:%zu: %s (skipped)", fname ? fname : "<data>", line,
                   mc_last_error());
            ds->n_skipped++;
            s = MC_OK;
        }
    }
    mc_free(q.ids);
    mc_free(q.target);
    return s;
}

mc_status mc_dataset_load(const char *path, const mc_dataset_opts *o, mc_dataset *ds) {
    char *text = NULL;
    size_t len = 0;
    mc_status s = mc_read_file(path, &text, &len);
    if (s != MC_OK) return s;
    s = mc_dataset_parse(text, len, path, o, ds);
    mc_free(text);
    return s;
}

void mc_dataset_order(size_t *order, size_t n, uint64_t seed, uint64_t epoch, bool shuffle) {
    mc_rng rng;
    size_t i;
    for (i = 0; i < n; i++) order[i] = i;
    if (!shuffle || n < 2) return;
    mc_rng_seed(&rng, seed ^ (epoch * 0xd1b54a32d192ed03ull + 0x8bb84b93962eacc9ull));
    for (i = n - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(mc_rng_next(&rng) % (uint64_t)(i + 1));
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

mc_status mc_dataset_fill_batch(const mc_dataset *ds, const size_t *order, size_t n_order,
                                size_t *cursor, int batch_size, bool pack, int max_seq_length,
                                mc_batch *b) {
    int32_t *tg = NULL;
    size_t budget = (size_t)batch_size * (size_t)max_seq_length;
    int taken = 0;
    mc_status s = MC_OK;
    mc_batch_clear(b);
    tg = mc_malloc((size_t)max_seq_length * sizeof *tg);
    if (!tg) return mc_fail(MC_ERR_OOM, "out of memory for a batch");
    while (*cursor < n_order) {
        const mc_example *e = &ds->ex[order[*cursor]];
        int t, n = MC_MIN(e->n, max_seq_length);
        if (pack ? (taken > 0 && (size_t)b->N + (size_t)n > budget) : taken >= batch_size) break;
        for (t = 0; t < n; t++) tg[t] = t + 1 < n && e->target[t + 1] ? e->ids[t + 1] : -1;
        s = mc_batch_add(b, e->ids, tg, n);
        if (s != MC_OK) break;
        (*cursor)++;
        taken++;
    }
    mc_free(tg);
    return s;
}
