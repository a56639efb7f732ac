#!/usr/bin/env python3
"""Checks that adapters written by metal-candle (mc_adapter_save) load in PEFT and give
the logits metal-candle computed with them.

Run on a machine with torch, transformers, peft and safetensors:
    python3 tests/scripts/check_peft_load.py --base tests/fixtures/tiny_tied_f32 DIR [DIR ...]

Each DIR holds what tests/golden/test_golden_peft.c leaves under
BUILD/tmp/peft_check/<case>/:
    adapter_config.json + adapter_model.safetensors   written by mc_adapter_save
    our_ids.json                                      {"ids": [...]}
    our_logits.npy                                    float32 [T, vocab] from
                                                      mc_model_eval_adapter
For each DIR it loads the base model (float32, eager attention, CPU) with
PeftModel.from_pretrained, checks that every tensor of the file reached the model
unchanged, computes the logits of the ids and prints the relative L2 error against ours.
Exit status 1 when any error is above 2e-5 or a tensor did not load.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch


def check(base_dir, d, tol):
    import peft
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager")
    pm = PeftModel.from_pretrained(base, d)
    pm.eval()
    # every tensor we wrote is in the model, bit for bit, and nothing else is expected
    ours = load_file(os.path.join(d, "adapter_model.safetensors"))
    theirs = get_peft_model_state_dict(pm)
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    differ = [k for k in ours if k in theirs and not torch.equal(ours[k], theirs[k].cpu())]
    ids = json.load(open(os.path.join(d, "our_ids.json")))["ids"]
    with torch.no_grad():
        lo = pm(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        with pm.disable_adapter():
            lb = pm(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    ref = np.load(os.path.join(d, "our_logits.npy"))
    if ref.shape != lo.shape:
        print(f"{d}: FAIL: our logits have shape {ref.shape}, PEFT's {lo.shape}")
        return False
    err = float(np.linalg.norm(lo.astype(np.float64) - ref) / np.linalg.norm(lo.astype(np.float64)))
    effect = float(np.linalg.norm(lo.astype(np.float64) - lb) / np.linalg.norm(lo.astype(np.float64)))
    imax = int(np.argmax(np.abs(lo - ref)))
    ok = err <= tol and not missing and not extra and not differ
    print(f"{d}: peft {peft.__version__}, {len(ours)} tensors "
          f"(missing in PEFT {len(missing)}, unexpected {len(extra)}, changed {len(differ)}); "
          f"logits T={lo.shape[0]}: rel L2 {err:.3g} (tol {tol:g}), max |diff| "
          f"{abs(float(lo.flat[imax]) - float(ref.flat[imax])):.3g}; adapter effect {effect:.3g} "
          f"-> {'OK' if ok else 'FAIL'}")
    for name, keys in (("missing", missing), ("unexpected", extra), ("changed", differ)):
        if keys:
            print(f"  {name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="base model folder (tiny_tied_f32)")
    ap.add_argument("--tol", type=float, default=2e-5)
    ap.add_argument("dirs", nargs="+", help="adapter folders written by mc_adapter_save")
    a = ap.parse_args()
    torch.manual_seed(0)
    results = [check(a.base, d, a.tol) for d in a.dirs]
    print(f"{sum(results)} of {len(results)} adapters load in PEFT with our logits")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
