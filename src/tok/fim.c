/* fim.c - Qwen2.5-Coder fill-in-the-middle prompts: the prefix-suffix-middle form
 * "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>" and the repository-level form with
 * "<|repo_name|>" and "<|file_sep|>" (see mc_fim_render_repo in mcandle.h). Encoding the
 * text with mc_tokenizer_encode turns the markers into their token ids. */
#include "tok_internal.h"

/* MC_ERR_UNSUPPORTED unless tok (when given) has every token in which[0..n). */
static mc_status need_tokens(const mc_tokenizer *tok, const mc_special_token *which, size_t n) {
    static const char *const k_names[MC_N_SPECIAL] = {"bos",
                                                      "eos",
                                                      "pad",
                                                      "<|endoftext|>",
                                                      "<|im_start|>",
                                                      "<|im_end|>",
                                                      "<|fim_prefix|>",
                                                      "<|fim_middle|>",
                                                      "<|fim_suffix|>",
                                                      "<|fim_pad|>",
                                                      "<|repo_name|>",
                                                      "<|file_sep|>"};
    size_t i;
    if (!tok) return MC_OK;
    for (i = 0; i < n; i++)
        if (tok->special[which[i]] < 0)
            return mc_fail(MC_ERR_UNSUPPORTED,
                           "%s: the tokenizer has no %s token, needed for "
                           "fill-in-the-middle prompts",
                           tok->name, k_names[which[i]]);
    return MC_OK;
}

static void put_fim(mc_out *o, const char *prefix, const char *suffix) {
    mc_out_puts(o, "<|fim_prefix|>");
    mc_out_puts(o, prefix);
    mc_out_puts(o, "<|fim_suffix|>");
    mc_out_puts(o, suffix);
    mc_out_puts(o, "<|fim_middle|>");
}

static const mc_special_token k_fim[] = {MC_TOKEN_FIM_PREFIX, MC_TOKEN_FIM_SUFFIX,
                                         MC_TOKEN_FIM_MIDDLE};

mc_status mc_fim_render(const mc_tokenizer *tok, const char *prefix, const char *suffix, char *buf,
                        size_t cap, size_t *len_out) {
    mc_out o;
    mc_status s;
    if (len_out) *len_out = 0;
    if (!prefix || !suffix || !len_out || (!buf && cap))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_fim_render: NULL argument");
    s = need_tokens(tok, k_fim, 3);
    if (s != MC_OK) return s;
    o.buf = buf;
    o.cap = cap;
    o.n = 0;
    put_fim(&o, prefix, suffix);
    return mc_out_finish(&o, len_out);
}

mc_status mc_fim_render_repo(const mc_tokenizer *tok, const char *repo, const mc_repo_file *files,
                             size_t n_files, const char *path, const char *prefix,
                             const char *suffix, char *buf, size_t cap, size_t *len_out) {
    static const mc_special_token k_repo[] = {MC_TOKEN_REPO_NAME, MC_TOKEN_FILE_SEP};
    mc_out o;
    size_t i;
    mc_status s;
    if (len_out) *len_out = 0;
    if (!repo || !path || !prefix || !len_out || (!buf && cap) || (!files && n_files))
        return mc_fail(MC_ERR_INVALID_ARG, "mc_fim_render_repo: NULL argument");
    for (i = 0; i < n_files; i++)
        if (!files[i].path || !files[i].content)
            return mc_fail(MC_ERR_INVALID_ARG, "repository file %zu has a NULL path or content", i);
    s = need_tokens(tok, k_repo, 2);
    if (s == MC_OK && suffix) s = need_tokens(tok, k_fim, 3);
    if (s != MC_OK) return s;
    o.buf = buf;
    o.cap = cap;
    o.n = 0;
    mc_out_puts(&o, "<|repo_name|>");
    mc_out_puts(&o, repo);
    mc_out_puts(&o, "\n");
    for (i = 0; i < n_files; i++) {
        mc_out_puts(&o, "<|file_sep|>");
        mc_out_puts(&o, files[i].path);
        mc_out_puts(&o, "\n");
        mc_out_puts(&o, files[i].content);
        mc_out_puts(&o, "\n");
    }
    mc_out_puts(&o, "<|file_sep|>");
    mc_out_puts(&o, path);
    mc_out_puts(&o, "\n");
    if (suffix)
        put_fim(&o, prefix, suffix);
    else
        mc_out_puts(&o, prefix);
    return mc_out_finish(&o, len_out);
}
