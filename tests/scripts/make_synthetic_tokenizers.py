#!/usr/bin/env python3
"""make_synthetic_tokenizers.py - writes small tokenizer.json files that exercise every
component the metal-candle tokenizer implements (normalizers, Split behaviours, ByteLevel
options, added-token flags, legacy merges, ignore_merges, unk tokens, post-processors).

Pure standard library: a tiny deterministic byte-level BPE trainer makes the vocabulary.
make_tokenizer_fixtures.py then encodes test strings with each file through Hugging Face
`tokenizers`, so these components are checked against the reference implementation too.

Usage: make_synthetic_tokenizers.py OUT_DIR
"""
import json
import os
import re
import sys
from collections import Counter

TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. Hello world, hello again! It's what they're
doing: we've seen it, I'm sure, you'll see, he'd know. int main(void) { return 0; }
def tokenize(text): return [t for t in text.split() if t] # comment in the code
for (size_t i = 0; i < n; i++) { sum += x[i] * y[i]; }  1234567890 3.14159 2024-01-01
    indented line with spaces\n\tindented with a tab\r\n windows line ending
inside insight instance install instant information international interesting in
"""

GPT2_REGEX_PY = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe(words, n_merges, alphabet):
    """Deterministic BPE: most frequent pair first, ties broken by the pair's text."""
    vocab = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    seqs = Counter()
    for w in words:
        seqs[tuple(w)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for seq, c in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 1:
            break
        merges.append(best)
        new = best[0] + best[1]
        vocab.setdefault(new, len(vocab))
        nseqs = Counter()
        for seq, c in seqs.items():
            out = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            nseqs[tuple(out)] += c
        seqs = nseqs
    return vocab, merges


def byte_level_model():
    b2u = bytes_to_unicode()
    words = [''.join(b2u[b] for b in w.encode()) for w in re.findall(GPT2_REGEX_PY, TRAIN_TEXT)]
    alphabet = [b2u[b] for b in range(256)]
    return train_bpe(words, 300, alphabet)


def char_model():
    words = re.findall(r"\S+", TRAIN_TEXT.lower())
    words = [re.sub(r"[^a-z0-9]", "", w) for w in words]
    words = [w for w in words if w]
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789")
    return train_bpe(words, 60, alphabet)


def added(id_, content, special=True, lstrip=False, rstrip=False, normalized=False,
          single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def bpe(vocab, merges, *, legacy=False, ignore_merges=False, unk=None, fuse_unk=False):
    return {"type": "BPE", "dropout": None, "unk_token": unk,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": fuse_unk, "byte_fallback": False, "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges] if legacy else [[a, b] for a, b in merges]}


def byte_level(add_prefix_space=False, use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
            "use_regex": use_regex}


def split(pattern, behavior, invert=False, literal=False):
    return {"type": "Split", "pattern": {"String" if literal else "Regex": pattern},
            "behavior": behavior, "invert": invert}


def template(single_pre, single_post, ids):
    def pieces(pre, post):
        p = [{"SpecialToken": {"id": t, "type_id": 0}} for t in pre]
        p.append({"Sequence": {"id": "A", "type_id": 0}})
        p += [{"SpecialToken": {"id": t, "type_id": 0}} for t in post]
        return p
    pair = pieces(single_pre, single_post) + [{"Sequence": {"id": "B", "type_id": 1}}]
    return {"type": "TemplateProcessing", "single": pieces(single_pre, single_post),
            "pair": pair,
            "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]}
                               for t in set(single_pre) | set(single_post)}}


def tokenizer(model, *, normalizer=None, pre=None, post=None, decoder=None, added_tokens=()):
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": list(added_tokens), "normalizer": normalizer,
            "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    vocab, merges = byte_level_model()
    n = len(vocab)
    bl_dec = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
              "use_regex": True}
    files = {}

    # 1. Added-token flags, NFC, ByteLevel with add_prefix_space and its regex, template.
    ids = {"<s>": n, "</s>": n + 1, "<pad>": n + 2}
    toks = [added(n, "<s>"), added(n + 1, "</s>"), added(n + 2, "<pad>"),
            added(n + 3, "[MASK]", lstrip=True, rstrip=True),
            added(n + 4, "<L>", lstrip=True), added(n + 5, "<R>", rstrip=True),
            added(n + 6, "word", special=False, single_word=True),
            added(n + 7, "\u00e9t\u00e9", special=False, normalized=True),
            added(n + 8, "A\u030angstr", special=False, normalized=True),
            added(vocab["in"], "in", special=False, normalized=True),
            added(n + 9, "<|sp ecial|>", special=True)]
    files["added_flags"] = tokenizer(
        bpe(vocab, merges), normalizer={"type": "NFC"},
        pre=byte_level(add_prefix_space=True, use_regex=True),
        post=template(["<s>"], ["</s>"], ids), decoder=bl_dec, added_tokens=toks)

    # 2. Split behaviours over whitespace, then ByteLevel without its regex.
    for name, beh, inv, pat, lit in [
            ("split_removed", "Removed", False, r"\s+", False),
            ("split_isolated", "Isolated", False, r"\s+", False),
            ("split_merged_prev", "MergedWithPrevious", False, r"\s+", False),
            ("split_merged_next", "MergedWithNext", False, r"\s+", False),
            ("split_contiguous", "Contiguous", False, r"[0-9]", False),
            ("split_invert", "MergedWithNext", True, r"\p{L}+", False),
            ("split_literal", "Isolated", False, "--", True),
            ("split_empty_match", "Isolated", False, r"x*", False)]:
        files[name] = tokenizer(
            bpe(vocab, merges),
            pre={"type": "Sequence", "pretokenizers": [split(pat, beh, inv, lit),
                                                         byte_level(False, False)]},
            post=None, decoder=bl_dec, added_tokens=[added(n, "<|endoftext|>")])

    # 3. Llama-3-like: legacy string merges, ignore_merges, NFD then NFKC, BOS template.
    vocab3 = dict(vocab)
    b2u = bytes_to_unicode()
    for w in [" HelloWorld", "ignore_merges", " 123"]:
        vocab3.setdefault("".join(b2u[b] for b in w.encode()), len(vocab3))
    n3 = len(vocab3)
    files["llama3_like"] = tokenizer(
        bpe(vocab3, merges, legacy=True, ignore_merges=True),
        normalizer={"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "NFKC"}]},
        pre={"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX, "Isolated"),
                                                     byte_level(False, False)]},
        post={"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            template(["<|begin_of_text|>"], [], {"<|begin_of_text|>": n3})]},
        decoder=bl_dec,
        added_tokens=[added(n3, "<|begin_of_text|>"), added(n3 + 1, "<|eot_id|>")])

    # 4. GPT-2-like: ByteLevel with its own regex, no normalizer, ByteLevel post-processor.
    files["gpt2_like"] = tokenizer(
        bpe(vocab, merges), pre=byte_level(False, True),
        post={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
              "use_regex": True},
        decoder=bl_dec, added_tokens=[added(n, "<|endoftext|>")])

    # 5. Character BPE with an unk token (fused or not), NFKC, no decoder, Bert/Roberta.
    cvocab, cmerges = char_model()
    cn = len(cvocab)
    cvocab["[UNK]"] = cn
    for name, fuse, post in [
            ("char_unk_fused", True, {"type": "BertProcessing", "sep": ["[SEP]", cn + 2],
                                      "cls": ["[CLS]", cn + 1]}),
            ("char_unk", False, {"type": "RobertaProcessing", "sep": ["[SEP]", cn + 2],
                                 "cls": ["[CLS]", cn + 1], "trim_offsets": True,
                                 "add_prefix_space": False})]:
        files[name] = tokenizer(
            bpe(cvocab, cmerges, unk="[UNK]", fuse_unk=fuse), normalizer={"type": "NFKC"},
            pre=split(r"\s+", "Removed"), post=post, decoder=None,
            added_tokens=[added(cn, "[UNK]"), added(cn + 1, "[CLS]"), added(cn + 2, "[SEP]")])

    for name, obj in files.items():
        with open(os.path.join(out, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
    print(f"wrote {len(files)} tokenizers to {out}")


if __name__ == "__main__":
    main()
