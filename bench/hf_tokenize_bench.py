#!/usr/bin/env python3
"""hf_tokenize_bench.py - the Hugging Face `tokenizers` side of the tokenizer benchmark.

Encodes a corpus single-threaded, chunk by chunk (the same chunking as
bench_tokenize.c: a chunk ends at the first newline at or after CHUNK bytes from its
start), and prints throughput in MB/s (1 MB = 1e6 bytes) plus a digest of all ids, so the
C encoder's output can be compared in the same run.

Usage: hf_tokenize_bench.py TOKENIZER_JSON CORPUS [--chunk 4096] [--repeat 1]
                            [--digests FILE] [--ids-out FILE.gz]
"""
import argparse
import gzip
import os
import struct
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

FNV_OFFSET = 0xcbf29ce484222325
FNV_PRIME = 0x100000001b3
MASK = (1 << 64) - 1


def chunks_of(data: bytes, chunk: int):
    """Yields (start, end) byte ranges; mirrors split_chunks() in bench_tokenize.c."""
    n = len(data)
    start = 0
    while start < n:
        end = start + chunk
        if end >= n:
            end = n
        else:
            nl = data.find(b"\n", end - 1)
            end = n if nl < 0 else nl + 1
        yield start, end
        start = end


def fnv_bytes(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def fnv_ids(ids) -> int:
    """FNV-1a 64 over the ids as little-endian int32."""
    return fnv_bytes(FNV_OFFSET, struct.pack(f"<{len(ids)}i", *ids))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("corpus")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--digests", help="write 'index count fnv64' per chunk")
    ap.add_argument("--ids-out", help="write all ids as little-endian int32, gzip")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    data = open(args.corpus, "rb").read()
    ranges = list(chunks_of(data, args.chunk))
    texts = [data[s:e].decode("utf-8") for s, e in ranges]

    best = None
    all_ids = None
    for _ in range(args.repeat):
        out = []
        t0 = time.perf_counter()
        for t in texts:
            out.append(tok.encode(t, add_special_tokens=True).ids)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        all_ids = out

    n_tokens = sum(len(x) for x in all_ids)
    # Total digest: FNV-1a 64 over the per-chunk digests (little-endian uint64).
    digest = FNV_OFFSET
    lines = []
    for i, ids in enumerate(all_ids):
        d = fnv_ids(ids)
        lines.append(f"{i} {len(ids)} {d:016x}\n")
        digest = fnv_bytes(digest, struct.pack("<Q", d))
    if args.digests:
        with open(args.digests, "w") as f:
            f.writelines(lines)
    if args.ids_out:
        with gzip.open(args.ids_out, "wb") as f:
            for ids in all_ids:
                f.write(struct.pack(f"<{len(ids)}i", *ids))
    mb = len(data) / 1e6
    print(f"hf-tokenizers {tokenizers.__version__}: {mb:.2f} MB, {len(texts)} chunks, "
          f"{n_tokens} tokens, {best:.3f} s, {mb / best:.3f} MB/s, digest {digest:016x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
