/* bpe.c - the BPE model: the spelling -> id and merge-pair hash maps, the per-thread
 * piece cache, and the merge loop. The merge loop follows Hugging Face `tokenizers`
 * (models/bpe/word.rs) step for step: a min-heap of candidate merges ordered by (rank,
 * position), stale entries recognised by the id their pair would produce, so that even
 * unusual merge tables (several pairs making the same token) give the same ids. */
#include "tok_internal.h"

/* ---- hashing ---------------------------------------------------------------------------- */

uint32_t mc_tok_hash(const uint8_t *s, size_t len) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8;
        len -= 8;
    }
    if (len) {
        uint64_t w = 0;
        memcpy(&w, s, len);
        h = (h ^ w) * 0x94D049BB133111EBull;
        h ^= h >> 29;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

/* Smallest power of two >= 2n (at least 16), or 0 on overflow. */
static size_t table_size(size_t n) {
    size_t c = 16;
    while (c < n * 2) {
        if (c > SIZE_MAX / 4) return 0;
        c *= 2;
    }
    return c;
}

/* ---- spelling -> id --------------------------------------------------------------------- */

mc_status mc_strmap_init(mc_strmap *m, size_t n) {
    size_t c = table_size(n);
    m->slots = c ? mc_calloc(c, sizeof *m->slots) : NULL;
    if (!m->slots) return mc_fail(MC_ERR_OOM, "out of memory for a %zu-entry vocabulary", n);
    m->mask = c - 1;
    return MC_OK;
}

void mc_strmap_free(mc_strmap *m) {
    mc_free(m->slots);
    m->slots = NULL;
}

int32_t mc_strmap_get(const mc_tokenizer *tok, const uint8_t *s, size_t len) {
    const mc_strmap *m = &tok->vocab;
    uint32_t h = mc_tok_hash(s, len);
    size_t i = h & m->mask;
    for (;;) {
        uint64_t slot = m->slots[i];
        if (slot == 0) return -1;
        if ((uint32_t)(slot >> 32) == h) {
            int32_t id = (int32_t)((slot & 0xFFFFFFFFu) - 1);
            if (tok->tok_len[id] == len && memcmp(tok->strs + tok->tok_off[id], s, len) == 0)
                return id;
        }
        i = (i + 1) & m->mask;
    }
}

int32_t mc_strmap_put(mc_tokenizer *tok, int32_t id) {
    mc_strmap *m = &tok->vocab;
    const uint8_t *s = (const uint8_t *)tok->strs + tok->tok_off[id];
    size_t len = tok->tok_len[id];
    uint32_t h = mc_tok_hash(s, len);
    size_t i = h & m->mask;
    for (;;) {
        uint64_t slot = m->slots[i];
        if (slot == 0) {
            m->slots[i] = ((uint64_t)h << 32) | ((uint64_t)id + 1);
            return -1;
        }
        if ((uint32_t)(slot >> 32) == h) {
            int32_t other = (int32_t)((slot & 0xFFFFFFFFu) - 1);
            if (tok->tok_len[other] == len && memcmp(tok->strs + tok->tok_off[other], s, len) == 0)
                return other;
        }
        i = (i + 1) & m->mask;
    }
}

/* ---- merge pair -> (rank, new id) ------------------------------------------------------- */

static size_t merge_index(const mc_mergemap *m, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 29) & m->mask;
}

mc_status mc_mergemap_init(mc_mergemap *m, size_t n) {
    size_t c = table_size(n), i;
    m->slots = c ? mc_malloc(c * sizeof *m->slots) : NULL;
    if (!m->slots) return mc_fail(MC_ERR_OOM, "out of memory for %zu merges", n);
    for (i = 0; i < c; i++) m->slots[i].key = UINT64_MAX;
    m->mask = c - 1;
    m->n = 0;
    return MC_OK;
}

void mc_mergemap_free(mc_mergemap *m) {
    mc_free(m->slots);
    m->slots = NULL;
}

void mc_mergemap_put(mc_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = merge_index(m, key);
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX) m->n++;
    m->slots[i].key = key;
    m->slots[i].rank = rank;
    m->slots[i].new_id = new_id;
}

const mc_merge_slot *mc_mergemap_get(const mc_mergemap *m, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = merge_index(m, key);
    for (;;) {
        const mc_merge_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- piece cache ------------------------------------------------------------------------ */

mc_status mc_bpe_caches_init(mc_tokenizer *tok) {
    int i;
    tok->caches = mc_calloc(MC_TOK_N_CACHES, sizeof *tok->caches);
    if (!tok->caches) return mc_fail(MC_ERR_OOM, "out of memory for the tokenizer cache");
    for (i = 0; i < MC_TOK_N_CACHES; i++) (void)pthread_mutex_init(&tok->caches[i].mu, NULL);
    return MC_OK;
}

static void cache_release(mc_bpe_cache *c) {
    mc_free(c->slots);
    mc_free(c->hashes);
    mc_free(c->key_off);
    mc_free(c->ids_off);
    mc_free(c->key_len);
    mc_free(c->n_ids);
    mc_free(c->keys);
    mc_free(c->ids);
    c->slots = c->hashes = c->key_off = c->ids_off = NULL;
    c->key_len = c->n_ids = NULL;
    c->keys = NULL;
    c->ids = NULL;
    c->ready = false;
}

void mc_bpe_caches_free(mc_tokenizer *tok) {
    int i;
    if (!tok->caches) return;
    for (i = 0; i < MC_TOK_N_CACHES; i++) {
        cache_release(&tok->caches[i]);
        (void)pthread_mutex_destroy(&tok->caches[i].mu);
    }
    mc_free(tok->caches);
    tok->caches = NULL;
}

/* Allocates a cache's arrays on first use; false when memory is short (the caller then
 * encodes without a cache). */
static bool cache_ready(mc_bpe_cache *c) {
    if (c->ready) return true;
    c->slots = mc_calloc(MC_CACHE_SLOTS, sizeof *c->slots);
    c->hashes = mc_malloc(MC_CACHE_SLOTS * sizeof *c->hashes);
    c->key_off = mc_malloc(MC_CACHE_ENTRIES * sizeof *c->key_off);
    c->ids_off = mc_malloc(MC_CACHE_ENTRIES * sizeof *c->ids_off);
    c->key_len = mc_malloc(MC_CACHE_ENTRIES * sizeof *c->key_len);
    c->n_ids = mc_malloc(MC_CACHE_ENTRIES * sizeof *c->n_ids);
    c->keys = mc_malloc(MC_CACHE_KEY_BYTES);
    c->ids = mc_malloc(MC_CACHE_IDS * sizeof *c->ids);
    if (!c->slots || !c->hashes || !c->key_off || !c->ids_off || !c->key_len || !c->n_ids ||
        !c->keys || !c->ids) {
        cache_release(c);
        return false;
    }
    c->n_entries = c->keys_used = c->ids_used = 0;
    c->ready = true;
    return true;
}

mc_bpe_cache *mc_bpe_cache_acquire(const mc_tokenizer *tok) {
    int i;
    for (i = 0; i < MC_TOK_N_CACHES; i++) {
        mc_bpe_cache *c = &tok->caches[i];
        if (pthread_mutex_trylock(&c->mu) != 0) continue;
        if (cache_ready(c)) return c;
        (void)pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    return NULL;
}

void mc_bpe_cache_release(mc_bpe_cache *c) {
    if (c) (void)pthread_mutex_unlock(&c->mu);
}

/* Looks p[0..len) up; on a hit emits its ids and returns true. *slot_out receives the
 * empty slot where it belongs on a miss. */
static bool cache_get(mc_enc *e, const uint8_t *p, size_t len, uint32_t h, size_t *slot_out) {
    const mc_bpe_cache *c = e->cache;
    size_t i = h & (MC_CACHE_SLOTS - 1);
    for (;;) {
        uint32_t s = c->slots[i];
        if (s == 0) {
            *slot_out = i;
            return false;
        }
        if (c->hashes[i] == h) {
            uint32_t en = s - 1;
            if (c->key_len[en] == len && memcmp(c->keys + c->key_off[en], p, len) == 0) {
                const int32_t *ids = c->ids + c->ids_off[en];
                uint32_t k;
                for (k = 0; k < c->n_ids[en]; k++) mc_enc_emit(e, ids[k]);
                return true;
            }
        }
        i = (i + 1) & (MC_CACHE_SLOTS - 1);
    }
}

/* Stores p[0..len) -> ids[0..n) at slot (from cache_get); empties the cache when full. */
static void cache_put(mc_enc *e, const uint8_t *p, size_t len, uint32_t h, size_t slot,
                      const int32_t *ids, size_t n) {
    mc_bpe_cache *c = e->cache;
    uint32_t en;
    if (n > UINT16_MAX) return;
    if (c->n_entries >= MC_CACHE_ENTRIES || c->keys_used + len > MC_CACHE_KEY_BYTES ||
        c->ids_used + n > MC_CACHE_IDS) {
        memset(c->slots, 0, MC_CACHE_SLOTS * sizeof *c->slots);
        c->n_entries = c->keys_used = c->ids_used = 0;
        slot = h & (MC_CACHE_SLOTS - 1);
    }
    en = (uint32_t)c->n_entries++;
    c->key_off[en] = (uint32_t)c->keys_used;
    c->key_len[en] = (uint16_t)len;
    memcpy(c->keys + c->keys_used, p, len);
    c->keys_used += len;
    c->ids_off[en] = (uint32_t)c->ids_used;
    c->n_ids[en] = (uint16_t)n;
    memcpy(c->ids + c->ids_used, ids, n * sizeof *ids);
    c->ids_used += n;
    c->slots[slot] = en + 1;
    c->hashes[slot] = h;
}

/* ---- the merge loop --------------------------------------------------------------------- */

static bool heap_less(const mc_bpe_merge *a, const mc_bpe_merge *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(mc_enc *e, uint32_t rank, uint32_t pos, int32_t new_id) {
    mc_bpe_merge *h = e->heap;
    size_t i = e->heap_n++;
    h[i].rank = rank;
    h[i].pos = pos;
    h[i].new_id = new_id;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        mc_bpe_merge t;
        if (!heap_less(&h[i], &h[parent])) break;
        t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

static mc_bpe_merge heap_pop(mc_enc *e) {
    mc_bpe_merge *h = e->heap;
    mc_bpe_merge top = h[0];
    size_t i = 0, n = --e->heap_n;
    h[0] = h[n];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        mc_bpe_merge t;
        if (l < n && heap_less(&h[l], &h[m])) m = l;
        if (r < n && heap_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

/* Grows the symbol and heap arrays for a word of up to n symbols. Every merge pushes at
 * most two entries and removes a symbol, so 3n heap entries always suffice. */
static mc_status reserve_work(mc_enc *e, size_t n) {
    if (n > e->syms_cap) {
        size_t hn;
        mc_bpe_sym *s;
        mc_bpe_merge *h;
        if (n > UINT32_MAX / 4 || !mc_mul_ok(n, 3, &hn))
            return mc_fail(MC_ERR_OOM, "pre-token of %zu bytes is too long", n);
        s = mc_realloc(e->syms, n * sizeof *s);
        if (!s) return mc_fail(MC_ERR_OOM, "out of memory for a %zu-byte pre-token", n);
        e->syms = s;
        e->syms_cap = n;
        h = mc_realloc(e->heap, hn * sizeof *h);
        if (!h) return mc_fail(MC_ERR_OOM, "out of memory for a %zu-byte pre-token", n);
        e->heap = h;
        e->heap_cap = hn;
    }
    return MC_OK;
}

static void add_sym(mc_enc *e, size_t *n, int32_t id, uint32_t len) {
    mc_bpe_sym *s = &e->syms[*n];
    s->c = id;
    s->prev = (int32_t)*n - 1;
    s->next = (int32_t)*n + 1;
    s->len = len;
    (*n)++;
}

/* Splits p[0..len) into initial symbols: one per byte (byte-level) or per character, with
 * unknown characters mapped to the unk token (fused when fuse_unk) or dropped. */
static size_t initial_symbols(mc_enc *e, const uint8_t *p, size_t len) {
    const mc_tokenizer *tok = e->tok;
    size_t n = 0, i = 0;
    uint32_t unk_len = 0;
    bool unk = false;
    while (i < len) {
        int32_t id;
        uint32_t clen;
        if (tok->byte_level) {
            id = tok->byte_id[p[i]];
            clen = 1;
        } else {
            uint32_t cp;
            clen = (uint32_t)mc_utf8_next(p + i, len - i, &cp);
            id = mc_strmap_get(tok, p + i, clen);
            if (id >= 0 && !(tok->flags[id] & MC_TF_MODEL)) id = -1;
        }
        i += clen;
        if (id >= 0) {
            if (unk) add_sym(e, &n, tok->unk_id, unk_len);
            unk = false;
            add_sym(e, &n, id, clen);
        } else if (tok->unk_id >= 0) {
            if (unk && tok->fuse_unk) {
                unk_len += clen;
            } else {
                if (unk) add_sym(e, &n, tok->unk_id, unk_len);
                unk = true;
                unk_len = clen;
            }
        }
    }
    if (unk) add_sym(e, &n, tok->unk_id, unk_len);
    if (n) e->syms[n - 1].next = -1;
    return n;
}

/* Applies the merges to syms[0..n) (Hugging Face's Word::merge_all without dropout). */
static void merge_all(mc_enc *e, size_t n) {
    const mc_mergemap *mm = &e->tok->merges;
    mc_bpe_sym *sy = e->syms;
    size_t i;
    e->heap_n = 0;
    for (i = 0; i + 1 < n; i++) {
        const mc_merge_slot *m = mc_mergemap_get(mm, sy[i].c, sy[i + 1].c);
        if (m) heap_push(e, m->rank, (uint32_t)i, m->new_id);
    }
    while (e->heap_n > 0) {
        mc_bpe_merge top = heap_pop(e);
        mc_bpe_sym *cur = &sy[top.pos];
        const mc_merge_slot *m;
        int32_t next;
        if (cur->len == 0 || cur->next == -1) continue;
        next = cur->next;
        m = mc_mergemap_get(mm, cur->c, sy[next].c);
        if (!m || m->new_id != top.new_id) continue; /* stale entry */
        cur->c = top.new_id;
        cur->len += sy[next].len;
        cur->next = sy[next].next;
        sy[next].len = 0;
        if (cur->next >= 0) sy[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            m = mc_mergemap_get(mm, sy[cur->prev].c, cur->c);
            if (m) heap_push(e, m->rank, (uint32_t)cur->prev, m->new_id);
        }
        if (cur->next >= 0) {
            m = mc_mergemap_get(mm, cur->c, sy[cur->next].c);
            if (m) heap_push(e, m->rank, top.pos, m->new_id);
        }
    }
}

/* Id of the whole piece as one vocabulary token (ignore_merges), or -1. */
static int32_t whole_word(mc_enc *e, const uint8_t *p, size_t len) {
    const mc_tokenizer *tok = e->tok;
    int32_t id;
    if (tok->byte_level) {
        size_t i;
        e->spell.n = 0;
        if (mc_buf_reserve(&e->spell, len * 2) != MC_OK) return -2;
        for (i = 0; i < len; i++)
            e->spell.n += mc_utf8_put(mc_bl_char[p[i]], e->spell.p + e->spell.n);
        id = mc_strmap_get(tok, e->spell.p, e->spell.n);
    } else {
        id = mc_strmap_get(tok, p, len);
    }
    return id >= 0 && (tok->flags[id] & MC_TF_MODEL) ? id : -1;
}

mc_status mc_bpe_word(mc_enc *e, const uint8_t *p, size_t len) {
    size_t n, i, slot = 0, first;
    uint32_t h = 0;
    bool cached = e->cache && len <= MC_CACHE_MAX_KEY;
    mc_status st;
    if (e->tok->ignore_merges) {
        int32_t id = whole_word(e, p, len);
        if (id == -2) return mc_fail(MC_ERR_OOM, "out of memory for a %zu-byte pre-token", len);
        if (id >= 0) {
            mc_enc_emit(e, id);
            return MC_OK;
        }
    }
    if (cached) {
        h = mc_tok_hash(p, len);
        if (cache_get(e, p, len, h, &slot)) return MC_OK;
    }
    st = reserve_work(e, len);
    if (st != MC_OK) return st;
    n = initial_symbols(e, p, len);
    merge_all(e, n);
    first = e->n;
    for (i = 0; i < n; i++)
        if (e->syms[i].len) mc_enc_emit(e, e->syms[i].c);
    /* Ids that overflowed the caller's buffer were counted, not stored: cache only when
     * they all landed. */
    if (cached && e->n <= e->cap) cache_put(e, p, len, h, slot, e->ids + first, e->n - first);
    return MC_OK;
}
