#!/usr/bin/env python3
"""PyTorch (Hugging Face transformers) side of `cargo xtask bench`.

    python tools/bench_torch.py --model DIR --threads 2 --prefill-tokens 512 --decode-tokens 32 \
        --batches 1,16 --repeats 3 --out FILE.json

Loads a Hugging Face model folder (LlamaForCausalLM / Qwen2ForCausalLM via AutoModelForCausalLM) in
float32 on CPU, `torch.set_num_threads(threads)`, and under `torch.inference_mode()` measures:

- prefill: one forward over 1 x N tokens (ids `(i*7919) % vocab`) into a fresh DynamicCache, with
  logits computed for the last position only (`logits_to_keep=1`, as `generate` does; pass
  `--prefill-all-logits` to compute the lm_head over all N positions). tokens/s = N / time,
  median over repeats after one warm-up.
- decode for each batch size B: prefill a 16-token prompt per row (rows differ), then a manual greedy
  loop feeding one token per row per step with the DynamicCache; only the decode steps are timed.
  tokens/s = B * steps / time, median over repeats after one warm-up.

Attention implementation: `sdpa` by default (`--attn eager` to switch); recorded in the output.
"""

import argparse
import inspect
import json
import os
import platform
import statistics
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache


def cache_kwarg(model):
    # transformers >= 5.2x renamed `past_key_values` to `cache` (old name deprecated until 5.40).
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model):
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def prefill_once(model, ids, ckw, all_logits):
    cache = new_cache(model)
    kw = {ckw: cache, "use_cache": True}
    if not all_logits:
        kw["logits_to_keep"] = 1
    t0 = time.perf_counter()
    out = model(input_ids=ids, **kw)
    _ = out.logits[:, -1].argmax(-1)
    return time.perf_counter() - t0


def decode_once(model, prompt, steps, ckw):
    cache = new_cache(model)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{ckw: cache})
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{ckw: cache})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    dt = time.perf_counter() - t0
    assert cache.get_seq_length() == prompt.shape[1] + steps
    return dt


def train_once(model, opt, ids):
    """One forward + backward + AdamW step of the next-token loss on `ids`."""
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face model folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=32, help="decode steps per row")
    ap.add_argument("--decode-prompt-tokens", type=int, default=16)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--prefill-all-logits", action="store_true")
    ap.add_argument("--train-seq", type=int, default=512, help="training step: tokens per sequence")
    ap.add_argument("--train-batch", type=int, default=1, help="training step: sequences (0 skips training)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)

    cfg = AutoConfig.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation=args.attn
    ).eval()
    vocab = model.config.vocab_size
    ckw = cache_kwarg(model)
    batches = [int(b) for b in args.batches.split(",") if b]

    res = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "dtype": "float32",
        "attn_implementation": model.config._attn_implementation,
        "prefill_tokens": args.prefill_tokens,
        "prefill_logits": "all" if args.prefill_all_logits else "last",
        "decode_steps": args.decode_tokens,
        "decode_prompt_tokens": args.decode_prompt_tokens,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
    }

    with torch.inference_mode():
        n = args.prefill_tokens
        ids = torch.tensor([[(i * 7919) % vocab for i in range(n)]], dtype=torch.long)
        prefill_once(model, ids, ckw, args.prefill_all_logits)  # warm-up
        times = [prefill_once(model, ids, ckw, args.prefill_all_logits) for _ in range(args.repeats)]
        res["prefill_seconds"] = times
        res["prefill_tokens_per_s"] = n / statistics.median(times)

        res["decode_tokens_per_s"] = {}
        res["decode_seconds"] = {}
        p = args.decode_prompt_tokens
        for b in batches:
            prompt = torch.tensor(
                [[(i * 7919 + r * 104729 + 1) % vocab for i in range(p)] for r in range(b)], dtype=torch.long
            )
            decode_once(model, prompt, min(args.decode_tokens, 4), ckw)  # warm-up
            times = [decode_once(model, prompt, args.decode_tokens, ckw) for _ in range(args.repeats)]
            res["decode_seconds"][str(b)] = times
            res["decode_tokens_per_s"][str(b)] = b * args.decode_tokens / statistics.median(times)

    if args.train_batch > 0:
        # forward + backward + AdamW on a fresh f32 copy in train mode (dropout is 0 in these configs).
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        t = args.train_seq
        ids = torch.tensor(
            [[(i * 7919 + r * 31) % vocab for i in range(t)] for r in range(args.train_batch)], dtype=torch.long
        )
        train_once(model, opt, ids)  # warm-up (allocates AdamW state)
        times = [train_once(model, opt, ids) for _ in range(args.repeats)]
        res["train_seq"] = t
        res["train_batch"] = args.train_batch
        res["train_seconds"] = times
        res["train_tokens_per_s"] = args.train_batch * t / statistics.median(times)

    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
