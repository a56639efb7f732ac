#!/usr/bin/env python3
"""Makes the golden fixtures under tests/fixtures/ with Hugging Face transformers and peft.

Run on a machine with torch, transformers, peft and safetensors:
    python3 tests/scripts/make_fixtures.py --out tests/fixtures
Every model is random-initialised from a fixed seed; norm weights and biases are
randomised too (the default init leaves them 1 and 0, which hides bugs). References are
computed on the CPU in float32 from a fresh from_pretrained(..., dtype=float32), so bf16
checkpoints are upcast exactly and RoPE buffers stay float32.

Outputs per model folder: config.json (+ generation_config.json), safetensors weights,
ref/ids.json ({"sequences": [[...], ...], "losses": [...]}) and ref/logits_<i>.npy.
"""
import argparse, json, os, shutil, sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

SEQ_LENS = [1, 7, 33, 80]


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.06)


def dtype_key(cfg):
    return "dtype" if "dtype" in cfg else "torch_dtype"


def rewrite_config(path, style, theta):
    cfg = json.load(open(path))
    dt = cfg.pop("dtype", None) or cfg.pop("torch_dtype", None)
    cfg.pop("rope_theta", None)
    rp = cfg.pop("rope_parameters", None)
    cfg.pop("rope_scaling", None)
    if style == "old":
        cfg["rope_theta"] = theta
        cfg["torch_dtype"] = dt
        cfg["rope_scaling"] = None
    else:
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        cfg["dtype"] = dt
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)


def loaded_theta(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return rp["rope_theta"]
    return getattr(cfg, "rope_theta")


def make_model(out, name, model_type, cfg_kwargs, save_dtype, style, shard, seed):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    cls_cfg = transformers.AutoConfig.for_model(model_type, **cfg_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cls_cfg, attn_implementation="eager")
    randomise(model, seed)
    model = model.to(save_dtype)
    model.generation_config.eos_token_id = cfg_kwargs.get("gen_eos", [2, 3])
    model.generation_config.bos_token_id = 1
    model.save_pretrained(d, max_shard_size=shard, safe_serialization=True)
    theta = cfg_kwargs["rope_theta"]
    rewrite_config(os.path.join(d, "config.json"), style, theta)
    # Fresh load in float32 for the references.
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    assert abs(loaded_theta(ref.config) - theta) < 1e-6, "rope_theta not read back"
    os.makedirs(os.path.join(d, "ref"), exist_ok=True)
    g = torch.Generator().manual_seed(seed + 1)
    seqs, losses = [], []
    for i, T in enumerate(SEQ_LENS):
        ids = torch.randint(0, cfg_kwargs["vocab_size"], (1, T), generator=g)
        with torch.no_grad():
            o = ref(input_ids=ids, labels=ids if T > 1 else None)
        np.save(os.path.join(d, "ref", f"logits_{i}.npy"), o.logits[0].float().numpy())
        seqs.append(ids[0].tolist())
        losses.append(float(o.loss) if T > 1 else 0.0)
    json.dump({"sequences": seqs, "losses": losses}, open(os.path.join(d, "ref", "ids.json"), "w"))
    print(name, "files:", sorted(os.listdir(d)))
    return d


def make_peft(out, base_dir, seed):
    """PEFT fixtures on an f32 base: adapter with non-zero B and its logits, merged
    weights, and a 5-step AdamW training run on a fixed batch."""
    import peft
    from peft import LoraConfig, get_peft_model, PeftModel
    from safetensors.torch import save_file
    d = os.path.join(out, "peft")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM", init_lora_weights=True)
    torch.manual_seed(seed)
    pm = get_peft_model(base, lcfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(os.path.join(d, "adapter"))
    ids = json.load(open(os.path.join(base_dir, "ref", "ids.json")))["sequences"][3]
    with torch.no_grad():
        lo = pm(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    np.save(os.path.join(d, "adapter_logits.npy"), lo)
    json.dump({"ids": ids}, open(os.path.join(d, "adapter_ids.json"), "w"))
    # merge_and_unload weights
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager"),
        os.path.join(d, "adapter")).merge_and_unload()
    sd = {k: v.contiguous() for k, v in merged.state_dict().items() if "proj" in k}
    save_file(sd, os.path.join(d, "merged_proj.safetensors"))
    # training: 5 AdamW steps on a fixed batch of 2 x 16 tokens from the adapter above
    tm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager"),
        os.path.join(d, "adapter"), is_trainable=True)
    tm.train()
    g2 = torch.Generator().manual_seed(seed + 7)
    vocab = tm.config.vocab_size
    batch = torch.randint(0, vocab, (2, 16), generator=g2)
    os.makedirs(os.path.join(d, "train_data"))
    with open(os.path.join(d, "train_data", "train.jsonl"), "w") as f:
        for row in batch.tolist():
            f.write(json.dumps({"input_ids": row}) + "\n")
    params = [p for p in tm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = tm(input_ids=batch, labels=batch).loss
        loss.backward()
        losses.append(float(loss))
        opt.step()
    tm.save_pretrained(os.path.join(d, "trained"))
    json.dump({"losses": losses, "lr": 1e-2, "weight_decay": 0.01, "steps": 5, "batch_size": 2,
               "max_seq_length": 16}, open(os.path.join(d, "train_ref.json"), "w"), indent=1)
    print("peft", peft.__version__, "losses", losses)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import peft
    print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
    tiny = make_model(a.out, "tiny_tied_f32", "qwen2", dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2), torch.float32, "old", "10MB", 11)
    make_model(a.out, "qwen2_bf16_sharded", "qwen2", dict(
        vocab_size=1000, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2), torch.bfloat16, "new", "150KB", 22)
    make_model(a.out, "llama_f16", "llama", dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, attention_bias=False, mlp_bias=False), torch.float16, "new", "10MB", 33)
    make_model(a.out, "qwen3_bf16", "qwen3", dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, attention_bias=False), torch.bfloat16, "new", "10MB", 44)
    make_peft(a.out, tiny, 55)
    with open(os.path.join(a.out, "VERSIONS.txt"), "w") as f:
        import peft
        f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\npeft {peft.__version__}\n")


if __name__ == "__main__":
    sys.exit(main())
