#!/usr/bin/env python3
"""PyTorch (Hugging Face transformers) side of `cargo xtask bench`: the same measurements as
`igpo bench forward` and `igpo bench score`, written as JSON with the same keys.

    python tools/bench_torch.py forward --model DIR [--device cpu|cuda] [--threads 2] \
        [--prefill-tokens 512] [--decode-tokens 32] [--batches 1,16] [--decode loop|generate] \
        [--train-seq 512] [--train-batch 1] [--train-micro-batch 0] [--compile] [--repeats 3] \
        [--out FILE.json]
    python tools/bench_torch.py score [--device cpu|cuda] --tokens 8192 --hidden 896 \
        [--vocab 151936] [--repeats 3] [--out FILE.json]
    python tools/bench_torch.py attention [--device cpu|cuda] [--seq 2048] [--heads 12] [--kv-heads 2] \
        [--head-dim 128] [--repeats 3] [--out FILE.json]

forward: loads a Hugging Face model folder (AutoModelForCausalLM). CPU: float32, `torch.set_num_threads`.
CUDA: bfloat16 weights for prefill and decode; training on a float32 copy under
`torch.autocast(bfloat16)` with fused AdamW (the engine's layout: bf16 compute, f32 master weights and
optimizer state). Medians over repeats after one warm-up; on CUDA every timing ends with a synchronize.

- prefill: one forward over 1 x N tokens (ids `(i*7919) % vocab`) into a fresh DynamicCache, logits for
  the last position only (`logits_to_keep=1`, as `generate` does). tokens/s = N / time.
- decode at each batch size B (16-token prompts, rows differ), greedy:
  `--decode loop` (default on CPU): a manual loop feeding one token per row per step with the
  DynamicCache; only the decode steps are timed.
  `--decode generate` (default on CUDA): transformers `generate` (greedy, `min_new_tokens` =
  `max_new_tokens` so every row makes N tokens); decode time = time(N tokens) - time(1 token), which
  removes the prompt prefill as the loop does. tokens/s = B * (N - 1) / decode time.
- train: forward + backward + AdamW of the next-token loss on B x T tokens; with
  `--train-micro-batch M` the B sequences go through forward + backward M at a time (each loss
  scaled by M / B, gradients accumulated) before one AdamW step. On CUDA attention runs on SDPA's
  FlashAttention backend (`sdpa_kernel(FLASH_ATTENTION)`: it fails rather than fall back) and AdamW
  is the fused one. `--compile`: the same step once more with `torch.compile(model)`, reported as
  `train_compiled_tokens_per_s` (or `train_compiled_error` when compiling fails on the machine).

score: the lm-head log-prob of chosen tokens the unfused way, as verl/TRL compute it:
`log_softmax((h @ W.T).float(), -1).gather(-1, ids)` with h [tokens, hidden] and W [vocab, hidden] in
bfloat16 (float32 on CPU); forward alone (no grad), and forward + backward of the sum into h and W.
Peak memory = the most allocated during the op minus what was allocated before it
(`torch.cuda.max_memory_allocated`; on CPU the process's resident set, VmHWM - VmRSS).
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


# ---------------------------------------------------------------------------- timing, memory


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_time(device, fn, repeats):
    fn()  # warm-up
    times = [timed(device, fn) for _ in range(max(repeats, 1))]
    return statistics.median(times), times


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return None


def peak_bytes(device, fn):
    """The most memory held while `fn` runs, above what was held before."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = proc_status("VmRSS:")
        fn()
        peak = proc_status("VmHWM:")
        return None if base is None or peak is None else max(peak - base, 0)
    except OSError:
        return None


def describe(device, threads):
    d = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
        d["cuda"] = torch.version.cuda
    else:
        d["threads"] = torch.get_num_threads()
    return d


# ---------------------------------------------------------------------------- forward


def cache_kwarg(model):
    # transformers >= 5.2x renamed `past_key_values` to `cache` (old name deprecated until 5.40).
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model):
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def load_model(path, dtype, attn):
    # transformers >= 4.56 takes `dtype`; older ones only `torch_dtype`.
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn)


def prefill_once(model, ids, ckw):
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{ckw: new_cache(model)})
    return out.logits[:, -1].argmax(-1)


def decode_loop(model, prompt, steps, ckw, device):
    """Seconds of `steps` greedy decode steps after the prompt's prefill."""
    cache = new_cache(model)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{ckw: cache})
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{ckw: cache})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    dt = time.perf_counter() - t0
    assert cache.get_seq_length() == prompt.shape[1] + steps
    return dt


def generate_once(model, prompt, new_tokens, pad_id):
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    made = out.shape[1] - prompt.shape[1]
    assert made == new_tokens, f"generate made {made} tokens, asked {new_tokens}"
    return out


def train_once(model, opt, ids, device, micro):
    """One optimizer step of the next-token loss on `ids`: forward + backward of `micro` rows at a
    time (gradients accumulated), then AdamW."""
    parts = ids.split(micro) if micro > 0 else [ids]
    for part in parts:
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                out = model(input_ids=part, labels=part)
                (out.loss * (part.shape[0] / ids.shape[0])).backward()
        else:
            out = model(input_ids=part, labels=part)
            (out.loss * (part.shape[0] / ids.shape[0])).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_forward(args, device):
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    decode_mode = args.decode or ("generate" if cuda else "loop")
    cfg = AutoConfig.from_pretrained(args.model)
    model = load_model(args.model, dtype, args.attn).to(device).eval()
    vocab = model.config.vocab_size
    ckw = cache_kwarg(model)
    batches = [int(b) for b in args.batches.split(",") if b]
    res = describe(device, args.threads)
    res.update(
        {
            "model": args.model,
            "architecture": (cfg.architectures or [type(model).__name__])[0],
            "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": model.config._attn_implementation,
            "prefill_tokens": args.prefill_tokens,
            "decode_tokens": args.decode_tokens,
            "decode_prompt_tokens": args.decode_prompt_tokens,
            "decode_mode": decode_mode,
            "repeats": args.repeats,
        }
    )

    with torch.inference_mode():
        n = args.prefill_tokens
        ids = torch.tensor([[(i * 7919) % vocab for i in range(n)]], dtype=torch.long, device=device)
        t, times = median_time(device, lambda: prefill_once(model, ids, ckw), args.repeats)
        res["prefill_seconds"] = times
        res["prefill_tokens_per_s"] = n / t

        res["decode_tokens_per_s"] = {}
        res["decode_seconds"] = {}
        p, steps = args.decode_prompt_tokens, args.decode_tokens
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        for b in batches:
            prompt = torch.tensor(
                [[(i * 7919 + r * 104729 + 1) % vocab for i in range(p)] for r in range(b)],
                dtype=torch.long,
                device=device,
            )
            if decode_mode == "loop":
                decode_loop(model, prompt, min(steps, 4), ckw, device)  # warm-up
                times = [decode_loop(model, prompt, steps, ckw, device) for _ in range(args.repeats)]
                made = b * steps
            else:
                full, _ = median_time(device, lambda: generate_once(model, prompt, steps, pad_id), args.repeats)
                first, _ = median_time(device, lambda: generate_once(model, prompt, 1, pad_id), args.repeats)
                times = [full - first]
                made = b * (steps - 1)
            res["decode_seconds"][str(b)] = times
            res["decode_tokens_per_s"][str(b)] = made / statistics.median(times)

    if args.train_batch > 0:
        # A fresh float32 copy in train mode (dropout is 0 in these configs).
        del model
        if cuda:
            torch.cuda.empty_cache()
        model = load_model(args.model, torch.float32, args.attn).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, **({"fused": True} if cuda else {}))
        t = args.train_seq
        ids = torch.tensor(
            [[(i * 7919 + r * 31) % vocab for i in range(t)] for r in range(args.train_batch)],
            dtype=torch.long,
            device=device,
        )
        micro = min(args.train_micro_batch, args.train_batch) if args.train_micro_batch > 0 else args.train_batch
        step = lambda m: train_once(m, opt, ids, device, micro)  # noqa: E731
        secs, times = median_time(device, lambda: step(model), args.repeats)
        res["train_seq"] = t
        res["train_batch"] = args.train_batch
        res["train_micro_batch"] = micro
        res["train_precision"] = "autocast bfloat16, float32 weights and AdamW" if cuda else "float32"
        res["train_attention"] = "sdpa flash backend" if cuda else model.config._attn_implementation
        res["train_seconds"] = times
        res["train_tokens_per_s"] = args.train_batch * t / secs
        if cuda:
            res["train_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        if args.compile:
            try:
                compiled = torch.compile(model)
                secs, times = median_time(device, lambda: step(compiled), args.repeats)
                res["train_compiled_seconds"] = times
                res["train_compiled_tokens_per_s"] = args.train_batch * t / secs
            except Exception as e:  # noqa: BLE001 - reported, the eager numbers stand
                res["train_compiled_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return res


# ---------------------------------------------------------------------------- score


def bench_score(args, device):
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    t, d, v = args.tokens, args.hidden, args.vocab
    g = torch.Generator().manual_seed(0)
    h = (torch.rand(t, d, generator=g) * 3.4 - 1.7).to(device=device, dtype=dtype)
    w = ((torch.rand(v, d, generator=g) * 3.4 - 1.7) * 0.02).to(device=device, dtype=dtype)
    ids = torch.tensor([(i * 7919) % v for i in range(t)], dtype=torch.long, device=device)

    def forward():
        with torch.no_grad():
            logits = h @ w.T
            return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, None]).squeeze(-1)

    hg = h.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)

    def forward_backward():
        logits = hg @ wg.T
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        logp.sum().backward()
        hg.grad = None
        wg.grad = None

    res = describe(device, args.threads)
    res.update({"tokens": t, "hidden": d, "vocab": v, "dtype": str(dtype).replace("torch.", "")})
    res["forward_seconds"], _ = median_time(device, forward, args.repeats)
    res["forward_peak_bytes"] = peak_bytes(device, forward)
    res["forward_backward_seconds"], _ = median_time(device, forward_backward, args.repeats)
    res["forward_backward_peak_bytes"] = peak_bytes(device, forward_backward)
    res["full_logits_f32_bytes"] = t * v * 4
    return res


# ---------------------------------------------------------------------------- main


def bench_attention(args, device):
    """Causal SDPA on one sequence: q [1, heads, seq, d], k/v [1, kv_heads, seq, d] (GQA), bf16 on CUDA
    under the FlashAttention backend (f32 on CPU); forward alone, then backward alone (retained graph).
    TFLOP/s by FlashAttention's count, as `igpo bench attention`: forward 4 seq^2 d heads / 2 (causal),
    backward 2.5x that."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    s, h, kvh, d = args.seq, args.heads, args.kv_heads, args.head_dim
    q = torch.randn(1, h, s, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kvh, s, d, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(1, kvh, s, d, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn(1, h, s, d, device=device, dtype=dtype)
    F = torch.nn.functional

    def attend():
        if cuda:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    with torch.no_grad():
        fwd, fwd_times = median_time(device, attend, args.repeats)
    out = attend()
    bwd, bwd_times = median_time(device, lambda: out.backward(dout, retain_graph=True), args.repeats)
    flops = 4.0 * s * s * d * h / 2.0
    res = describe(device, args.threads)
    res.update({"seq": s, "heads": h, "kv_heads": kvh, "head_dim": d, "dtype": str(dtype).replace("torch.", ""),
                "sdpa_backend": "flash" if cuda else "default",
                "forward_seconds": fwd, "forward_times": fwd_times, "backward_seconds": bwd,
                "backward_times": bwd_times, "forward_tflops": flops / fwd / 1e12,
                "backward_tflops": 2.5 * flops / bwd / 1e12})
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    fw = sub.add_parser("forward", help="prefill, decode and a training step of a model")
    fw.add_argument("--model", required=True, help="Hugging Face model folder")
    fw.add_argument("--prefill-tokens", type=int, default=512)
    fw.add_argument("--decode-tokens", type=int, default=32, help="decode steps per row")
    fw.add_argument("--decode-prompt-tokens", type=int, default=16)
    fw.add_argument("--batches", default="1,16")
    fw.add_argument("--decode", choices=["loop", "generate"], default=None)
    fw.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    fw.add_argument("--train-seq", type=int, default=512, help="training step: tokens per sequence")
    fw.add_argument("--train-batch", type=int, default=1, help="training step: sequences (0 skips training)")
    fw.add_argument("--train-micro-batch", type=int, default=0,
                    help="sequences per forward+backward, gradients accumulated (0: all at once)")
    fw.add_argument("--compile", action="store_true", help="also time the training step under torch.compile")
    sc = sub.add_parser("score", help="log_softmax(...).gather(...) on a [tokens, vocab] lm head")
    sc.add_argument("--tokens", type=int, default=4096)
    sc.add_argument("--hidden", type=int, default=896)
    sc.add_argument("--vocab", type=int, default=151936)
    at = sub.add_parser("attention", help="causal scaled_dot_product_attention forward and backward")
    at.add_argument("--seq", type=int, default=2048)
    at.add_argument("--heads", type=int, default=12)
    at.add_argument("--kv-heads", type=int, default=2)
    at.add_argument("--head-dim", type=int, default=128)
    for p in (fw, sc, at):
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--threads", type=int, default=2, help="CPU threads")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--out", default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)

    res = {"forward": bench_forward, "score": bench_score, "attention": bench_attention}[args.what](args, device)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
