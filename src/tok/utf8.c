/* utf8.c - UTF-8 validation, decoding and lossy repair, the Unicode character classes the
 * tokenizer needs (White_Space, regex word characters), the GPT-2 byte-level alphabet,
 * Unicode normalization through utf8proc, a JSON string-literal decoder, and the growable
 * byte buffer used throughout src/tok. */
#include "tok_internal.h"

#include <utf8proc.h>

/* ---- byte buffer --------------------------------------------------------------------- */

mc_status mc_buf_reserve(mc_buf *b, size_t extra) {
    size_t need, cap;
    uint8_t *p;
    if (!mc_add_ok(b->n, extra, &need)) return mc_fail(MC_ERR_OOM, "buffer size overflow");
    if (need <= b->cap) return MC_OK;
    cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = mc_realloc(b->p, cap);
    if (!p) return mc_fail(MC_ERR_OOM, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return MC_OK;
}

mc_status mc_buf_append(mc_buf *b, const void *data, size_t len) {
    mc_status s;
    if (len == 0) return MC_OK;
    s = mc_buf_reserve(b, len);
    if (s != MC_OK) return s;
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return MC_OK;
}

void mc_buf_free(mc_buf *b) {
    mc_free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* ---- UTF-8 ----------------------------------------------------------------------------- */

/* Length of the valid prefix of a sequence starting with lead byte s[0]: the sequence
 * length when it is complete and valid, else the number of bytes that could still begin a
 * valid sequence (at least 1), negated. Implements the Unicode "maximal subpart" rule. */
static long seq_len(const uint8_t *s, size_t avail) {
    uint8_t c = s[0];
    size_t need, i;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return -1;
    }
    for (i = 1; i < need; i++) {
        uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (i >= avail || s[i] < lo_i || s[i] > hi_i) return -(long)i;
    }
    return (long)need;
}

size_t mc_utf8_check(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        long k;
        /* ASCII fast path, 8 bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        k = seq_len(s + i, len - i);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return len;
}

size_t mc_utf8_next(const uint8_t *s, size_t len, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80 || len < 2) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0 || len < 3) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0 || len < 4) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

size_t mc_utf8_prev(const uint8_t *s, size_t end, uint32_t *cp) {
    size_t start = end - 1;
    while (start > 0 && end - start < 4 && (s[start] & 0xC0) == 0x80) start--;
    (void)mc_utf8_next(s + start, end - start, cp);
    return end - start;
}

size_t mc_utf8_put(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

size_t mc_utf8_lossy(const uint8_t *s, size_t len, uint8_t *out, size_t cap) {
    static const uint8_t k_fffd[3] = {0xEF, 0xBF, 0xBD};
    size_t i = 0, n = 0;
    while (i < len) {
        long k = seq_len(s + i, len - i);
        const uint8_t *src = s + i;
        size_t w = (size_t)(k > 0 ? k : 0);
        if (k < 0) {
            src = k_fffd;
            w = 3;
            i += (size_t)(-k);
        } else {
            i += w;
        }
        if (n + w <= cap) memcpy(out + n, src, w);
        n += w;
    }
    return n;
}

bool mc_uc_is_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool mc_uc_is_word(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
               cp == '_';
    if (cp == 0x200C || cp == 0x200D) return true;
    /* Other_Alphabetic symbols (circled and squared letters). */
    if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
        (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189))
        return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC: return true;
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
    case UTF8PROC_CATEGORY_SM:
    case UTF8PROC_CATEGORY_SC:
    case UTF8PROC_CATEGORY_SK:
    case UTF8PROC_CATEGORY_SO:
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    default: return false;
    }
}

/* ---- byte-level alphabet --------------------------------------------------------------- */

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes (0x00-0x20, 0x7F-0xA0,
 * 0xAD) take U+0100..U+0143 in byte order. */
const uint16_t mc_bl_char[256] = {
    0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10A, 0x10B, 0x10C,
    0x10D, 0x10E, 0x10F, 0x110, 0x111, 0x112, 0x113, 0x114, 0x115, 0x116, 0x117, 0x118, 0x119,
    0x11A, 0x11B, 0x11C, 0x11D, 0x11E, 0x11F, 0x120, 0x021, 0x022, 0x023, 0x024, 0x025, 0x026,
    0x027, 0x028, 0x029, 0x02A, 0x02B, 0x02C, 0x02D, 0x02E, 0x02F, 0x030, 0x031, 0x032, 0x033,
    0x034, 0x035, 0x036, 0x037, 0x038, 0x039, 0x03A, 0x03B, 0x03C, 0x03D, 0x03E, 0x03F, 0x040,
    0x041, 0x042, 0x043, 0x044, 0x045, 0x046, 0x047, 0x048, 0x049, 0x04A, 0x04B, 0x04C, 0x04D,
    0x04E, 0x04F, 0x050, 0x051, 0x052, 0x053, 0x054, 0x055, 0x056, 0x057, 0x058, 0x059, 0x05A,
    0x05B, 0x05C, 0x05D, 0x05E, 0x05F, 0x060, 0x061, 0x062, 0x063, 0x064, 0x065, 0x066, 0x067,
    0x068, 0x069, 0x06A, 0x06B, 0x06C, 0x06D, 0x06E, 0x06F, 0x070, 0x071, 0x072, 0x073, 0x074,
    0x075, 0x076, 0x077, 0x078, 0x079, 0x07A, 0x07B, 0x07C, 0x07D, 0x07E, 0x121, 0x122, 0x123,
    0x124, 0x125, 0x126, 0x127, 0x128, 0x129, 0x12A, 0x12B, 0x12C, 0x12D, 0x12E, 0x12F, 0x130,
    0x131, 0x132, 0x133, 0x134, 0x135, 0x136, 0x137, 0x138, 0x139, 0x13A, 0x13B, 0x13C, 0x13D,
    0x13E, 0x13F, 0x140, 0x141, 0x142, 0x0A1, 0x0A2, 0x0A3, 0x0A4, 0x0A5, 0x0A6, 0x0A7, 0x0A8,
    0x0A9, 0x0AA, 0x0AB, 0x0AC, 0x143, 0x0AE, 0x0AF, 0x0B0, 0x0B1, 0x0B2, 0x0B3, 0x0B4, 0x0B5,
    0x0B6, 0x0B7, 0x0B8, 0x0B9, 0x0BA, 0x0BB, 0x0BC, 0x0BD, 0x0BE, 0x0BF, 0x0C0, 0x0C1, 0x0C2,
    0x0C3, 0x0C4, 0x0C5, 0x0C6, 0x0C7, 0x0C8, 0x0C9, 0x0CA, 0x0CB, 0x0CC, 0x0CD, 0x0CE, 0x0CF,
    0x0D0, 0x0D1, 0x0D2, 0x0D3, 0x0D4, 0x0D5, 0x0D6, 0x0D7, 0x0D8, 0x0D9, 0x0DA, 0x0DB, 0x0DC,
    0x0DD, 0x0DE, 0x0DF, 0x0E0, 0x0E1, 0x0E2, 0x0E3, 0x0E4, 0x0E5, 0x0E6, 0x0E7, 0x0E8, 0x0E9,
    0x0EA, 0x0EB, 0x0EC, 0x0ED, 0x0EE, 0x0EF, 0x0F0, 0x0F1, 0x0F2, 0x0F3, 0x0F4, 0x0F5, 0x0F6,
    0x0F7, 0x0F8, 0x0F9, 0x0FA, 0x0FB, 0x0FC, 0x0FD, 0x0FE, 0x0FF,
};

int mc_bl_byte(uint32_t cp) {
    if (cp < 0x100)
        return ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE) ? (int)cp
                                                                                        : -1;
    if (cp < 0x121) return (int)(cp - 0x100);
    if (cp < 0x143) return (int)(0x7F + (cp - 0x121));
    return cp == 0x143 ? 0xAD : -1;
}

/* ---- normalization --------------------------------------------------------------------- */

bool mc_norm_quick(mc_norm_form form, const uint8_t *s, size_t len) {
    /* First code point each form can change: NFC U+0300 (combining marks; no character
     * below composes or changes), NFD U+00C0, the compatibility forms U+00A0. */
    uint32_t limit = form == MC_NORM_NFC ? 0x300 : form == MC_NORM_NFD ? 0xC0 : 0xA0;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        i += mc_utf8_next(s + i, len - i, &cp);
        if (cp >= limit) return false;
    }
    return true;
}

mc_status mc_normalize(mc_norm_form form, const uint8_t *s, size_t len, mc_buf *out) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    utf8proc_ssize_t n, m;
    mc_status st;
    size_t bytes;
    switch (form) {
    case MC_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case MC_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case MC_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case MC_NORM_NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    default: return mc_fail(MC_ERR_INTERNAL, "unknown normalization form");
    }
    out->n = 0;
    if (len == 0) return MC_OK;
    if (len > (size_t)PTRDIFF_MAX / 8) return mc_fail(MC_ERR_OOM, "text too long to normalize");
    n = utf8proc_decompose(s, (utf8proc_ssize_t)len, NULL, 0, opt);
    if (n < 0) return mc_fail(MC_ERR_UTF8, "normalization failed: %s", utf8proc_errmsg(n));
    if (!mc_mul_ok((size_t)n + 1, sizeof(utf8proc_int32_t), &bytes))
        return mc_fail(MC_ERR_OOM, "text too long to normalize");
    st = mc_buf_reserve(out, bytes);
    if (st != MC_OK) return st;
    /* The buffer is reused as code points, then re-encoded in place as UTF-8. */
    n = utf8proc_decompose(s, (utf8proc_ssize_t)len, (utf8proc_int32_t *)(void *)out->p, n, opt);
    if (n < 0) return mc_fail(MC_ERR_UTF8, "normalization failed: %s", utf8proc_errmsg(n));
    m = utf8proc_reencode((utf8proc_int32_t *)(void *)out->p, n, opt);
    if (m < 0) return mc_fail(MC_ERR_UTF8, "normalization failed: %s", utf8proc_errmsg(m));
    out->n = (size_t)m;
    return MC_OK;
}

/* ---- JSON string literals -------------------------------------------------------------- */

static int hex4(const char *s, uint32_t *v) {
    int i;
    *v = 0;
    for (i = 0; i < 4; i++) {
        char c = s[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            return -1;
        *v = (*v << 4) | d;
    }
    return 0;
}

size_t mc_json_string_decode(const char *s, size_t len, mc_buf *out) {
    size_t i = 1;
    out->n = 0;
    if (len == 0 || s[0] != '"') return 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        uint8_t u[4];
        uint32_t cp, lo;
        if (c == '"') return i + 1;
        if (c < 0x20) return 0;
        if (c != '\\') {
            if (mc_buf_append(out, &c, 1) != MC_OK) return 0;
            i++;
            continue;
        }
        if (i + 1 >= len) return 0;
        c = (unsigned char)s[i + 1];
        i += 2;
        switch (c) {
        case '"':
        case '\\':
        case '/': u[0] = c; break;
        case 'b': u[0] = '\b'; break;
        case 'f': u[0] = '\f'; break;
        case 'n': u[0] = '\n'; break;
        case 'r': u[0] = '\r'; break;
        case 't': u[0] = '\t'; break;
        case 'u':
            if (i + 4 > len || hex4(s + i, &cp) != 0) return 0;
            i += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return 0;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (i + 6 > len || s[i] != '\\' || s[i + 1] != 'u' || hex4(s + i + 2, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return 0;
                i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (mc_buf_append(out, u, mc_utf8_put(cp, u)) != MC_OK) return 0;
            continue;
        default: return 0;
        }
        if (mc_buf_append(out, u, 1) != MC_OK) return 0;
    }
    return 0;
}
