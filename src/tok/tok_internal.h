/* tok_internal.h - internal structures of the tokenizer: UTF-8 helpers, normalizers,
 * pre-tokenizer steps, the byte-level BPE model with its hash maps and cache, added-token
 * matching, and the tokenizer object that ties them together (see mcandle.h for the
 * pipeline). Shared by utf8.c, pretok.c, bpe.c, added.c, load.c, tokenizer.c, chat.c and
 * fim.c. */
#ifndef MC_TOK_INTERNAL_H
#define MC_TOK_INTERNAL_H

#include "../core/core.h"

#include <pthread.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- growable byte buffer ------------------------------------------------------------ */

typedef struct mc_buf {
    uint8_t *p; /* [cap] bytes, n used */
    size_t n;
    size_t cap;
} mc_buf;

/* Makes room for extra more bytes; MC_ERR_OOM on failure (message set). */
mc_status mc_buf_reserve(mc_buf *b, size_t extra);
/* Appends data[0..len). */
mc_status mc_buf_append(mc_buf *b, const void *data, size_t len);
void mc_buf_free(mc_buf *b);

/* ---- UTF-8 (utf8.c) ------------------------------------------------------------------ */

/* Returns len when s[0..len) is valid UTF-8, else the offset of the first byte of the
 * first invalid sequence. */
size_t mc_utf8_check(const uint8_t *s, size_t len);
/* Decodes the character at s (valid UTF-8, at least one byte); returns its length. */
size_t mc_utf8_next(const uint8_t *s, size_t len, uint32_t *cp);
/* Decodes the character that ends at s[end - 1] (valid UTF-8, end > 0); returns its
 * length. */
size_t mc_utf8_prev(const uint8_t *s, size_t end, uint32_t *cp);
/* Encodes cp (<= 0x10FFFF, not a surrogate) into out; returns 1..4. */
size_t mc_utf8_put(uint32_t cp, uint8_t out[4]);
/* Writes s[0..len) with every maximal invalid subsequence replaced by U+FFFD (the
 * Unicode / Rust from_utf8_lossy rule) into out[0..cap); returns the full length. */
size_t mc_utf8_lossy(const uint8_t *s, size_t len, uint8_t *out, size_t cap);
/* Unicode White_Space (what \s matches in Oniguruma and Rust's regex). */
bool mc_uc_is_space(uint32_t cp);
/* Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, joiners. */
bool mc_uc_is_word(uint32_t cp);

/* The GPT-2 byte-level alphabet: byte b is written as code point mc_bl_char[b]. */
extern const uint16_t mc_bl_char[256];
/* Byte for a byte-level code point, or -1 when cp is not in the alphabet. */
int mc_bl_byte(uint32_t cp);

/* Unicode normalization forms (utf8proc). */
typedef enum mc_norm_form { MC_NORM_NFC, MC_NORM_NFD, MC_NORM_NFKC, MC_NORM_NFKD } mc_norm_form;

/* True when s[0..len) is certainly unchanged by form (all code points below the form's
 * first affected one), so normalization can be skipped. */
bool mc_norm_quick(mc_norm_form form, const uint8_t *s, size_t len);
/* Normalizes valid UTF-8 s[0..len) into out (replacing its contents). */
mc_status mc_normalize(mc_norm_form form, const uint8_t *s, size_t len, mc_buf *out);

/* Decodes the JSON string literal at s[0..len) (starting at its opening quote) into out,
 * which receives the bytes (NUL allowed). Returns the bytes consumed, 0 on malformed input
 * (bad escape, raw control character, unpaired surrogate, missing quote). */
size_t mc_json_string_decode(const char *s, size_t len, mc_buf *out);

/* ---- pre-tokenizer (pretok.c) ---------------------------------------------------------- */

typedef enum mc_split_behavior {
    MC_SPLIT_REMOVED,
    MC_SPLIT_ISOLATED,
    MC_SPLIT_MERGED_PREV,
    MC_SPLIT_MERGED_NEXT,
    MC_SPLIT_CONTIGUOUS
} mc_split_behavior;

typedef enum mc_pretok_kind { MC_PT_SPLIT, MC_PT_BYTELEVEL } mc_pretok_kind;

#define MC_TOK_MAX_STEPS 8
#define MC_TOK_MAX_NORMS 8

typedef struct mc_pretok_step {
    mc_pretok_kind kind;
    pcre2_code *re;             /* SPLIT: its pattern; BYTELEVEL: GPT-2 regex or NULL */
    mc_split_behavior behavior; /* SPLIT */
    bool invert;                /* SPLIT */
    bool add_prefix_space;      /* BYTELEVEL */
} mc_pretok_step;

/* Compiles a tokenizer.json regex (Oniguruma syntax) or, with literal, a plain string,
 * for PCRE2 with UTF, UCP and JIT. \s and \S are rewritten to Unicode White_Space as
 * Oniguruma defines them. what names the component in messages. */
mc_status mc_regex_compile(const char *pattern, size_t len, bool literal, const char *what,
                           pcre2_code **out);
/* A PCRE2 general context that allocates through mc_malloc (fault injection reaches
 * PCRE2 too); NULL when memory is short. */
pcre2_general_context *mc_regex_context(void);
/* The GPT-2 pre-tokenizer regex (ByteLevel use_regex). */
extern const char mc_gpt2_pattern[];

/* ---- tokenizer object ------------------------------------------------------------------ */

/* Per-id flags. */
enum { MC_TF_SPECIAL = 1, MC_TF_ADDED = 2, MC_TF_PRESENT = 4, MC_TF_MODEL = 8 };

/* An added token. */
typedef struct mc_added_tok {
    int32_t id;
    uint32_t off, len; /* pattern bytes in tok->strs: content, or its normalized form */
    bool special, lstrip, rstrip, normalized, single_word;
} mc_added_tok;

/* A set of added tokens matched leftmost-longest: candidates grouped by first byte,
 * longest first. */
typedef struct mc_added_set {
    uint32_t *order;     /* [n] indices into tok->added */
    uint32_t first[257]; /* order[first[b]..first[b+1]) start with byte b */
    size_t n;
    int n_first;       /* distinct first bytes; with 1, memchr finds candidates */
    uint8_t only_byte; /* that byte when n_first == 1 */
} mc_added_set;

/* Open-addressing map from a token's spelling to its id (keys live in tok->strs). */
typedef struct mc_strmap {
    uint64_t *slots; /* (hash32 << 32) | (id + 1); 0 = empty */
    size_t mask;
} mc_strmap;

/* Open-addressing map from a merge pair to (rank, new id). */
typedef struct mc_merge_slot {
    uint64_t key; /* (a << 32) | b; UINT64_MAX = empty */
    uint32_t rank;
    int32_t new_id;
} mc_merge_slot;

typedef struct mc_mergemap {
    mc_merge_slot *slots;
    size_t mask;
    size_t n;
} mc_mergemap;

/* A cache of piece -> ids for one thread at a time (tok->caches[i]). */
typedef struct mc_bpe_cache {
    pthread_mutex_t mu;
    bool ready;        /* arrays allocated */
    uint32_t *slots;   /* [MC_CACHE_SLOTS] entry index + 1, 0 = empty */
    uint32_t *hashes;  /* [MC_CACHE_SLOTS] */
    uint32_t *key_off; /* [MC_CACHE_ENTRIES] */
    uint32_t *ids_off; /* [MC_CACHE_ENTRIES] */
    uint16_t *key_len; /* [MC_CACHE_ENTRIES] */
    uint16_t *n_ids;   /* [MC_CACHE_ENTRIES] */
    uint8_t *keys;     /* [MC_CACHE_KEY_BYTES] */
    int32_t *ids;      /* [MC_CACHE_IDS] */
    size_t n_entries, keys_used, ids_used;
} mc_bpe_cache;

#define MC_CACHE_SLOTS (1u << 16)
#define MC_CACHE_ENTRIES (1u << 15)
#define MC_CACHE_KEY_BYTES (1u << 20)
#define MC_CACHE_IDS (1u << 18)
#define MC_CACHE_MAX_KEY 256
#define MC_TOK_N_CACHES 4

typedef enum mc_chat_style {
    MC_CHAT_NONE,
    MC_CHAT_CHATML,
    MC_CHAT_QWEN25,
    MC_CHAT_QWEN3,
    MC_CHAT_OTHER
} mc_chat_style;

#define MC_N_SPECIAL 12

struct mc_tokenizer {
    char *name; /* for messages */
    /* strings: every token spelling, NUL-terminated, and added-token patterns */
    char *strs;
    size_t strs_len, strs_cap;
    /* ids [0, n_ids) */
    int32_t n_ids;
    uint32_t *tok_off; /* [n_ids] spelling offset in strs */
    uint32_t *tok_len; /* [n_ids] */
    uint8_t *flags;    /* [n_ids] MC_TF_* */
    uint8_t *dec;      /* decoded bytes of every id, concatenated */
    uint32_t *dec_off; /* [n_ids + 1] id i decodes to dec[dec_off[i]..dec_off[i+1]) */
    mc_strmap vocab;   /* spelling -> id (model vocabulary and added tokens) */
    /* normalizer */
    int n_norms;
    mc_norm_form norms[MC_TOK_MAX_NORMS];
    /* pre-tokenizer */
    int n_steps;
    mc_pretok_step steps[MC_TOK_MAX_STEPS];
    bool byte_level;             /* pieces are raw bytes read through the byte alphabet */
    uint32_t max_captures;       /* largest capture count of the regexes */
    pcre2_general_context *gctx; /* allocator for match data */
    /* BPE model */
    mc_mergemap merges;
    int32_t byte_id[256]; /* id of the one-byte token of each byte, or -1 */
    bool ignore_merges;
    int32_t unk_id; /* -1 when no unk_token */
    bool fuse_unk;
    mc_bpe_cache *caches; /* [MC_TOK_N_CACHES]; mutable state behind a const tokenizer */
    /* added tokens */
    mc_added_tok *added;
    size_t n_added;
    mc_added_set raw_set;  /* normalized == false: matched before normalization */
    mc_added_set norm_set; /* normalized == true: matched after */
    /* post-processor: single-sequence special tokens */
    int32_t *pre_ids, *post_ids;
    size_t n_pre, n_post;
    /* decoder */
    bool dec_join_space; /* no decoder: tokens joined with " " */
    /* tokenizer_config.json */
    int32_t special[MC_N_SPECIAL];
    mc_chat_style chat_style;
    char *chat_system; /* default system prompt of a qwen2.5-style template */
};

/* ---- hash maps, BPE and cache (bpe.c) ------------------------------------------------- */

uint32_t mc_tok_hash(const uint8_t *s, size_t len);
mc_status mc_strmap_init(mc_strmap *m, size_t n);
void mc_strmap_free(mc_strmap *m);
/* Id of the spelling s[0..len), or -1. */
int32_t mc_strmap_get(const mc_tokenizer *tok, const uint8_t *s, size_t len);
/* Inserts id (whose spelling is already in tok->strs); returns the id already holding
 * that spelling, or -1 when it was new. */
int32_t mc_strmap_put(mc_tokenizer *tok, int32_t id);

mc_status mc_mergemap_init(mc_mergemap *m, size_t n);
void mc_mergemap_free(mc_mergemap *m);
/* Adds or replaces (a, b) -> (rank, new_id) (a later duplicate pair wins, as in HF). */
void mc_mergemap_put(mc_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
const mc_merge_slot *mc_mergemap_get(const mc_mergemap *m, int32_t a, int32_t b);

mc_status mc_bpe_caches_init(mc_tokenizer *tok);
void mc_bpe_caches_free(mc_tokenizer *tok);
/* Locks a free piece cache for the calling encode (allocating it on first use); NULL when
 * all are busy or memory is short (the call then runs uncached). */
struct mc_bpe_cache *mc_bpe_cache_acquire(const mc_tokenizer *tok);
void mc_bpe_cache_release(struct mc_bpe_cache *c);

/* ---- encoding state (tokenizer.c, pretok.c, bpe.c, added.c) ---------------------------- */

typedef struct mc_bpe_sym {
    int32_t c;    /* token id */
    int32_t prev; /* index of the previous live symbol, -1 at the start */
    int32_t next; /* index of the next live symbol, -1 at the end */
    uint32_t len; /* bytes covered; 0 = merged away */
} mc_bpe_sym;

typedef struct mc_bpe_merge {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} mc_bpe_merge;

typedef struct mc_enc {
    const mc_tokenizer *tok;
    int32_t *ids; /* caller buffer [cap] */
    size_t cap, n;
    pcre2_match_data *md;             /* for the pre-tokenizer regexes */
    mc_buf scratch[MC_TOK_MAX_STEPS]; /* prefix-space copies, one per step */
    mc_buf norm, norm2;               /* the current normalized segment (and a spare) */
    mc_buf spell;                     /* byte-level spelling for ignore_merges lookups */
    mc_bpe_sym *syms;
    mc_bpe_merge *heap;
    size_t syms_cap, heap_cap, heap_n;
    mc_bpe_cache *cache; /* locked by this call, or NULL */
} mc_enc;

static inline void mc_enc_emit(mc_enc *e, int32_t id) {
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

/* Runs pre-tokenizer steps [i, n_steps) over piece p[0..len), then the model. */
mc_status mc_pretok_run(mc_enc *e, int i, const uint8_t *p, size_t len);
/* Encodes one pre-token with BPE and emits its ids. */
mc_status mc_bpe_word(mc_enc *e, const uint8_t *p, size_t len);

/* Callback for text between added tokens. */
typedef mc_status (*mc_segment_fn)(mc_enc *e, const uint8_t *p, size_t len);
/* Splits s[0..len) on the tokens of set (HF AddedVocabulary::find_matches): emits the
 * ids of matched tokens and calls fn on the text between them. */
mc_status mc_added_split(mc_enc *e, const mc_added_set *set, const uint8_t *s, size_t len,
                         mc_segment_fn fn);
/* Builds a set from the added tokens whose normalized flag equals normalized. */
mc_status mc_added_set_build(mc_tokenizer *tok, mc_added_set *set, bool normalized);
void mc_added_set_free(mc_added_set *set);

/* ---- loading (load.c) ----------------------------------------------------------------- */

/* Appends s[0..len) and a NUL to tok->strs; *off receives its offset. */
mc_status mc_tok_add_str(mc_tokenizer *tok, const char *s, size_t len, uint32_t *off);
/* Fills tok from tokenizer.json text (the object is zeroed and named already). */
mc_status mc_tok_parse_json(mc_tokenizer *tok, const char *json, size_t len);
/* Reads tokenizer_config.json text: special tokens and chat template. */
mc_status mc_tok_parse_config(mc_tokenizer *tok, const char *json, size_t len);
/* Frees everything tok owns (not tok itself). */
void mc_tok_release(mc_tokenizer *tok);

/* Spelling of id (NUL-terminated). */
static inline const char *mc_tok_str(const mc_tokenizer *tok, int32_t id) {
    return tok->strs + tok->tok_off[id];
}

/* ---- chat and FIM text (chat.c, fim.c) ------------------------------------------------- */

/* Text written into a caller buffer, counting what does not fit. */
typedef struct mc_out {
    char *buf; /* [cap] */
    size_t cap;
    size_t n; /* bytes produced so far (may exceed cap) */
} mc_out;

static inline void mc_out_put(mc_out *o, const char *s, size_t len) {
    if (o->buf && len && o->n + len <= o->cap) memcpy(o->buf + o->n, s, len);
    o->n += len;
}
static inline void mc_out_puts(mc_out *o, const char *s) { mc_out_put(o, s, strlen(s)); }
/* NUL-terminates; *len_out = length; MC_ERR_BUFFER_TOO_SMALL when the text and its NUL do
 * not fit. */
mc_status mc_out_finish(mc_out *o, size_t *len_out);

/* Classifies a chat_template text; *system receives a heap copy of the default system
 * prompt of a qwen2.5-style template (NULL otherwise). */
mc_status mc_chat_detect(const char *tmpl, size_t len, mc_chat_style *style, char **system);

#endif /* MC_TOK_INTERNAL_H */
