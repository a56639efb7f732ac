/* chat.c - chat prompts: recognising ChatML-family chat templates in tokenizer_config.json
 * and rendering conversations natively, byte for byte as transformers' apply_chat_template
 * renders Qwen2.5's and Qwen3's templates (tool calls aside: messages carry text only).
 * No Jinja interpreter: a template is classified, then rendered by the C code below. */
#include "tok_internal.h"

#define QWEN25_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

mc_status mc_out_finish(mc_out *o, size_t *len_out) {
    *len_out = o->n;
    if (o->n + 1 > o->cap)
        return mc_fail(MC_ERR_BUFFER_TOO_SMALL, "text of %zu bytes does not fit a buffer of %zu",
                       o->n, o->cap);
    o->buf[o->n] = '\0';
    return MC_OK;
}

/* Finds needle in s[0..len). */
static const char *find(const char *s, size_t len, const char *needle) {
    size_t k = strlen(needle), i;
    for (i = 0; k <= len && i <= len - k; i++)
        if (s[i] == needle[0] && memcmp(s + i, needle, k) == 0) return s + i;
    return NULL;
}

/* Reads the literal default system prompt that follows "<|im_start|>system\n" inside a
 * template string (Jinja escapes \n, \t, \', \", \\ decoded), up to "<|im_end|>". Returns
 * a heap string or NULL when the text there is not a literal. */
static char *literal_system(const char *s, size_t len) {
    static const char *const k_heads[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    size_t h;
    for (h = 0; h < 2; h++) {
        const char *p = s, *end = s + len;
        size_t hl = strlen(k_heads[h]);
        while ((p = find(p, (size_t)(end - p), k_heads[h])) != NULL) {
            const char *q = p + hl, *stop = find(q, (size_t)(end - q), "<|im_end|>");
            p = q;
            if (!stop || q == stop || *q == '\'' || *q == '"') continue;
            {
                char *out = mc_malloc((size_t)(stop - q) + 1);
                size_t n = 0;
                if (!out) return NULL;
                while (q < stop) {
                    char c = *q++;
                    if (c == '\'' || c == '"') break; /* the literal ended: not a plain prompt */
                    if (c == '\\' && q < stop) {
                        char d = *q++;
                        c = d == 'n' ? '\n' : d == 't' ? '\t' : d;
                    }
                    out[n++] = c;
                }
                if (q < stop) {
                    mc_free(out);
                    continue;
                }
                out[n] = '\0';
                return out;
            }
        }
    }
    return NULL;
}

mc_status mc_chat_detect(const char *tmpl, size_t len, mc_chat_style *style, char **system) {
    *system = NULL;
    if (!find(tmpl, len, "<|im_start|>") || !find(tmpl, len, "<|im_end|>")) {
        *style = MC_CHAT_OTHER;
        return MC_OK;
    }
    if (find(tmpl, len, "<think>") && find(tmpl, len, "last_query_index")) {
        *style = MC_CHAT_QWEN3;
        return MC_OK;
    }
    *system = literal_system(tmpl, len);
    *style = *system ? MC_CHAT_QWEN25 : MC_CHAT_CHATML;
    return MC_OK;
}

const char *mc_tokenizer_chat_template(const mc_tokenizer *tok) {
    if (!tok) return NULL;
    switch (tok->chat_style) {
    case MC_CHAT_CHATML: return "chatml";
    case MC_CHAT_QWEN25: return "qwen2.5";
    case MC_CHAT_QWEN3: return "qwen3";
    case MC_CHAT_NONE:
    case MC_CHAT_OTHER:
    default: return NULL;
    }
}

mc_chat_params mc_chat_default_params(void) {
    mc_chat_params p;
    p.template_name = NULL;
    p.add_generation_prompt = 1;
    p.enable_thinking = 1;
    return p;
}

static bool is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* One "<|im_start|>{role}\n{content}<|im_end|>\n" turn. */
static void turn(mc_out *o, const char *role, const char *content) {
    mc_out_puts(o, "<|im_start|>");
    mc_out_puts(o, role);
    mc_out_puts(o, "\n");
    mc_out_puts(o, content);
    mc_out_puts(o, "<|im_end|>\n");
}

/* A tool result; consecutive ones share one user turn. */
static void tool_turn(mc_out *o, const mc_chat_message *m, size_t i, size_t n) {
    if (i == 0 || !is(m[i - 1].role, "tool")) mc_out_puts(o, "<|im_start|>user");
    mc_out_puts(o, "\n<tool_response>\n");
    mc_out_puts(o, m[i].content);
    mc_out_puts(o, "\n</tool_response>");
    if (i + 1 == n || !is(m[i + 1].role, "tool")) mc_out_puts(o, "<|im_end|>\n");
}

static void render_qwen25(mc_out *o, const mc_chat_message *m, size_t n, const char *system) {
    size_t i;
    if (is(m[0].role, "system"))
        turn(o, "system", m[0].content);
    else
        turn(o, "system", system);
    for (i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (is(r, "user") || (is(r, "system") && i > 0) || is(r, "assistant"))
            turn(o, r, m[i].content);
        else if (is(r, "tool"))
            tool_turn(o, m, i, n);
    }
}

/* Appends s[a..b) with '\n' stripped from the chosen ends. */
static void put_stripped(mc_out *o, const char *a, const char *b, bool left, bool right) {
    while (left && a < b && *a == '\n') a++;
    while (right && b > a && b[-1] == '\n') b--;
    mc_out_put(o, a, (size_t)(b - a));
}

/* Last occurrence of needle in [a, b), or NULL. */
static const char *find_last(const char *a, const char *b, const char *needle) {
    const char *p = a, *last = NULL;
    while ((p = find(p, (size_t)(b - p), needle)) != NULL) last = p++;
    return last;
}

/* Qwen3's assistant turn: a "<think>...</think>" part is split off the content, and turns
 * after the last user query show it in a think block. */
static void qwen3_assistant(mc_out *o, const char *content, bool after_query, bool last) {
    const char *end = content + strlen(content);
    const char *c0 = content, *c1 = end, *r0 = content, *r1 = content;
    const char *close = find(content, (size_t)(end - content), "</think>");
    if (close) {
        const char *last_close = find_last(content, end, "</think>"), *open;
        c0 = last_close + 8;
        while (c0 < c1 && *c0 == '\n') c0++;
        r1 = close;
        while (r1 > content && r1[-1] == '\n') r1--;
        open = find_last(content, r1, "<think>");
        r0 = open ? open + 7 : content;
        while (r0 < r1 && *r0 == '\n') r0++;
    }
    mc_out_puts(o, "<|im_start|>assistant\n");
    if (after_query && (last || r1 > r0)) {
        mc_out_puts(o, "<think>\n");
        put_stripped(o, r0, r1, true, true);
        mc_out_puts(o, "\n</think>\n\n");
        put_stripped(o, c0, c1, true, false);
    } else {
        mc_out_put(o, c0, (size_t)(c1 - c0));
    }
    mc_out_puts(o, "<|im_end|>\n");
}

static bool is_tool_response(const char *s) {
    size_t n = strlen(s);
    return n >= 15 && !strncmp(s, "<tool_response>", 15) && n >= 16 &&
           !strcmp(s + n - 16, "</tool_response>");
}

static void render_qwen3(mc_out *o, const mc_chat_message *m, size_t n) {
    size_t i, last_query = n - 1;
    if (is(m[0].role, "system")) turn(o, "system", m[0].content);
    for (i = n; i-- > 0;)
        if (is(m[i].role, "user") && !is_tool_response(m[i].content)) {
            last_query = i;
            break;
        }
    for (i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (is(r, "user") || (is(r, "system") && i > 0))
            turn(o, r, m[i].content);
        else if (is(r, "assistant"))
            qwen3_assistant(o, m[i].content, i > last_query, i + 1 == n);
        else if (is(r, "tool"))
            tool_turn(o, m, i, n);
    }
}

/* Resolves the template style and default system prompt for a render call. */
static mc_status pick_style(const mc_tokenizer *tok, const char *name, mc_chat_style *style,
                            const char **system) {
    *system = QWEN25_SYSTEM;
    if (!name) {
        if (!tok)
            return mc_fail(MC_ERR_INVALID_ARG, "mc_chat_render: no tokenizer and no template name");
        *style = tok->chat_style;
        if (tok->chat_system) *system = tok->chat_system;
        if (*style == MC_CHAT_NONE)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: no chat template in tokenizer_config.json; "
                           "choose one by name (chatml, qwen2.5, qwen3)",
                           tok->name);
        if (*style == MC_CHAT_OTHER)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: the chat template in tokenizer_config.json is "
                           "not ChatML; choose one by name (chatml, qwen2.5, "
                           "qwen3)",
                           tok->name);
        return MC_OK;
    }
    if (is(name, "chatml"))
        *style = MC_CHAT_CHATML;
    else if (is(name, "qwen2.5") || is(name, "qwen2.5-coder"))
        *style = MC_CHAT_QWEN25;
    else if (is(name, "qwen3"))
        *style = MC_CHAT_QWEN3;
    else
        return mc_fail(MC_ERR_INVALID_ARG, "unknown chat template '%s' (chatml, qwen2.5, qwen3)",
                       name);
    return MC_OK;
}

mc_status mc_chat_render(const mc_tokenizer *tok, const mc_chat_message *messages, size_t n,
                         const mc_chat_params *params, char *buf, size_t cap, size_t *len_out) {
    mc_chat_params p = params ? *params : mc_chat_default_params();
    mc_chat_style style = MC_CHAT_NONE;
    const char *system = NULL;
    mc_out o;
    size_t i;
    mc_status s;
    if (len_out) *len_out = 0;
    if (!len_out || (!buf && cap) || (!messages && n))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_chat_render: NULL argument");
    if (n == 0) return mc_fail(MC_ERR_INVALID_ARG, "mc_chat_render: no messages");
    for (i = 0; i < n; i++)
        if (!messages[i].role || !messages[i].content)
            return mc_fail(MC_ERR_INVALID_ARG, "message %zu has a NULL role or content", i);
    s = pick_style(tok, p.template_name, &style, &system);
    if (s != MC_OK) return s;
    o.buf = buf;
    o.cap = cap;
    o.n = 0;
    if (style == MC_CHAT_QWEN25) {
        render_qwen25(&o, messages, n, system);
    } else if (style == MC_CHAT_QWEN3) {
        render_qwen3(&o, messages, n);
    } else {
        for (i = 0; i < n; i++) turn(&o, messages[i].role, messages[i].content);
    }
    if (p.add_generation_prompt) {
        mc_out_puts(&o, "<|im_start|>assistant\n");
        if (style == MC_CHAT_QWEN3 && !p.enable_thinking)
            mc_out_puts(&o, "<think>\n\n</think>\n\n");
    }
    return mc_out_finish(&o, len_out);
}
