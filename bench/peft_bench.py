#!/usr/bin/env python3
"""peft_bench.py - the Hugging Face transformers + PEFT peer of bench/bench_cuda.c: the same
checkpoint (default: the random bf16 Qwen2.5-Coder-0.5B preset that bench_cuda writes), the
same shapes, on the same GPU:

  LoRA training: r=16, alpha=32, dropout 0, all 7 projections, batch 4 x 1024 tokens,
    AdamW; tokens/s over the timed steps and peak torch.cuda.max_memory_allocated;
  prefill of 2048 tokens (logits of the last row only), tokens/s;
  greedy decode at batch 1 and batch 8 after a 512-token prompt, tokens/s (KV cache, the
    next token chosen on the GPU).

Usage: peft_bench.py --model DIR [--ctx 512] [--gen 128] [--prefill 2048] [--batch 4]
                     [--seq 1024] [--iters 5] [--json OUT.json]
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sync():
    torch.cuda.synchronize()


def bench_prefill(model, n, vocab):
    ids = torch.randint(0, vocab, (1, n), device="cuda")
    times = []
    with torch.no_grad():
        for r in range(6):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            sync()
            if r > 0:
                times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def bench_decode(model, batch, ctx, gen, vocab):
    ids = torch.randint(0, vocab, (batch, ctx), device="cuda")
    best = 0.0
    with torch.no_grad():
        for _ in range(2):  # the first pass warms up
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            sync()
            t0 = time.perf_counter()
            for _ in range(gen):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            sync()
            best = max(best, batch * gen / (time.perf_counter() - t0))
    return best


def bench_train(model, batch, seq, iters, vocab):
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    pm.train()
    pm.config.use_cache = False
    params = [p for p in pm.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    warm = 2
    times = []
    for step in range(warm + iters):
        x = torch.randint(0, vocab, (batch, seq), device="cuda")
        sync()
        t0 = time.perf_counter()
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= warm:
            times.append(time.perf_counter() - t0)
        print(f"  step {step + 1}: loss {loss.item():.4f}, {batch * seq / (time.perf_counter() - t0):.0f} tokens/s",
              flush=True)
    tps = batch * seq * len(times) / sum(times)
    return tps, torch.cuda.max_memory_allocated(), n_lora


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    import peft
    import transformers
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}", flush=True)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    print(f"attention implementation: {model.config._attn_implementation}", flush=True)
    res = {"device": dev}
    res["prefill_tps"] = bench_prefill(model, a.prefill, vocab)
    print(f"prefill {a.prefill} tokens: {res['prefill_tps']:.0f} tokens/s", flush=True)
    res["decode_b1_tps"] = bench_decode(model, 1, a.ctx, a.gen, vocab)
    print(f"decode batch 1 at {a.ctx} context: {res['decode_b1_tps']:.0f} tokens/s", flush=True)
    res["decode_b8_tps"] = bench_decode(model, 8, a.ctx, a.gen, vocab)
    print(f"decode batch 8 at {a.ctx} context: {res['decode_b8_tps']:.0f} tokens/s", flush=True)
    torch.cuda.empty_cache()
    tps, peak, n_lora = bench_train(model, a.batch, a.seq, a.iters, vocab)
    res["train_tps"] = tps
    res["train_peak_bytes"] = peak
    print(f"training: LoRA r=16 ({n_lora} parameters), batch {a.batch} x {a.seq}: {tps:.0f} tokens/s, "
          f"peak memory allocated {peak / 2**30:.2f} GiB", flush=True)
    print("\n| metric (PEFT) | value |\n|---|---|")
    print(f"| prefill {a.prefill} tokens | {res['prefill_tps']:.0f} tokens/s |")
    print(f"| decode b1 @{a.ctx} | {res['decode_b1_tps']:.0f} tokens/s |")
    print(f"| decode b8 @{a.ctx} | {res['decode_b8_tps']:.0f} tokens/s |")
    print(f"| LoRA train {a.batch}x{a.seq} | {tps:.0f} tokens/s, peak {peak / 2**30:.2f} GiB |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
