#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers on tiny, deterministically-initialised models.

Produces tests/fixtures/hf/tiny-qwen2.json, tiny-llama.json and the RoPE-scaling / Qwen3 fixtures
(tiny-llama31 `llama3`, tiny-llama-linear, tiny-llama-dynamic, tiny-llama-yarn, tiny-qwen3 tied,
tiny-qwen3-untied: see EXTRAS), which the Rust engine's tests compare against. Weights are NOT stored: they are a closed-form function of the
parameter name and the element index (see WEIGHTS_RULE / `rule_values`), which the Rust test
recomputes identically.

Usage:
    python tools/reference/hf_logits.py --tokenizer target/data/qwen2.5-tokenizer.json \
        --out tests/fixtures/hf
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

GENERATOR = "tools/reference/hf_logits.py"
VOCAB = 151936
PAD_ID = 151643  # <|endoftext|>
PROBE_IDS = [k * 997 for k in range(math.ceil(VOCAB / 997))]

WEIGHTS_RULE = (
    "for param with HF name N, flat row-major index i: s=sum(utf8 bytes of N); "
    "x=2*(splitmix64((s<<32)|i)>>11)*2^-53-1 in f64 (uniform in [-1,1)); N ends with 'norm.weight' -> 1+0.1*x; N ends with '.bias' -> 0.1*x; "
    "N=='model.embed_tokens.weight' -> x; other 2-D [out,in] weight (incl. untied lm_head.weight) -> x/sqrt(in); "
    "cast f64->f32 last; tied lm_head = embed_tokens"
)

PROMPTS = [
    "Hello, world!",
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "Ünïcödé — 東京 🚀 1234567 def f(x):\n    return x**2",
]
PADDED_BATCH = [0, 1, 3]  # prompts 1, 2, 4 (1-based in the spec)


def build_models():
    qwen = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    llama = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )
    models = [("tiny-qwen2", Qwen2ForCausalLM, qwen), ("tiny-llama", LlamaForCausalLM, llama)]
    return models + build_rope_and_qwen3_models()


def tiny_llama(tied, max_pos, rope_scaling, theta=10000.0):
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
        rope_theta=theta, rope_scaling=rope_scaling, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        attention_bias=False, mlp_bias=False, attn_implementation="eager",
    )


def tiny_qwen3(tied):
    # head_dim 32 != hidden 64 / 4 heads: the explicit head_dim is exercised.
    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied, attention_bias=False,
        attn_implementation="eager",
    )


def build_rope_and_qwen3_models():
    """Tiny Llama 3.x models with each RoPE scaling type, and Qwen3 tied/untied. Scaling parameters
    are chosen for head_dim 16 so every branch of each formula is taken: llama3 (original context 64)
    keeps pair 0, blends pair 1 and divides pairs 2..7; yarn (original 32) ramps over pairs 0..2;
    dynamic (max_position_embeddings 16) rescales every prompt longer than 16 tokens."""
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    return [
        ("tiny-llama31", LlamaForCausalLM, tiny_llama(True, 512, llama3, theta=500000.0)),
        ("tiny-llama-linear", LlamaForCausalLM, tiny_llama(False, 256, {"rope_type": "linear", "factor": 2.0})),
        ("tiny-llama-dynamic", LlamaForCausalLM, tiny_llama(True, 16, {"rope_type": "dynamic", "factor": 2.0})),
        ("tiny-llama-yarn", LlamaForCausalLM, tiny_llama(False, 128, {"rope_type": "yarn", "factor": 4.0,
                                                                      "original_max_position_embeddings": 32})),
        ("tiny-qwen3", Qwen3ForCausalLM, tiny_qwen3(True)),
        ("tiny-qwen3-untied", Qwen3ForCausalLM, tiny_qwen3(False)),
    ]


# Per-model fixture options for the models added after tiny-qwen2/tiny-llama: a coarser probe set
# (smaller files; top-5 and logsumexp still cover every row) and one more case, prompt 3 at positions
# OFFSET.., past every scaled model's original context.
OFFSET = 100
EXTRAS = {name: {"probe_stride": 3989, "offset_case": True} for name, _, _ in build_rope_and_qwen3_models()}


def reset_rope_state(model):
    """transformers' dynamic RoPE keeps frequencies grown by an earlier, longer forward; restore the
    freshly-built state so every forward here is what a new model computes (the engine's semantics)."""
    for m in model.modules():
        if type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "original_inv_freq"):
            m.register_buffer("inv_freq", m.original_inv_freq.clone(), persistent=False)
            m.max_seq_len_cached = m.original_max_seq_len


def splitmix64(v):
    """SplitMix64 finalizer over uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = v + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rule_x(name, idx):
    """Full-rank pseudo-random values in [-1, 1) for flat indices `idx` of tensor `name`.

    An integer hash (not sin of the index) so every matrix has full rank and
    Rust reproduces the values bit for bit without depending on libm."""
    s = np.uint64(sum(name.encode("utf-8")))
    z = splitmix64((s << np.uint64(32)) | idx.astype(np.uint64))
    return 2.0 * (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 1.0


def rule_values(name, shape):
    """float32 numpy array for parameter `name` of `shape` per the weights rule."""
    n = int(np.prod(shape))
    x = rule_x(name, np.arange(n, dtype=np.uint64))
    if name.endswith("norm.weight"):
        v = 1.0 + 0.1 * x
    elif name.endswith(".bias"):
        v = 0.1 * x
    elif name == "model.embed_tokens.weight":
        v = x
    elif len(shape) == 2:
        v = x / math.sqrt(shape[1])
    else:
        raise ValueError(f"no weights rule for {name} {tuple(shape)}")
    return v.astype(np.float32).reshape(shape)


def fill_weights(model):
    tied = bool(model.config.tie_word_embeddings)
    names = []
    with torch.no_grad():
        # named_parameters() de-duplicates shared tensors, so a tied lm_head is not visited.
        for name, p in model.named_parameters():
            if name == "lm_head.weight" and tied:
                continue
            p.copy_(torch.from_numpy(rule_values(name, tuple(p.shape))))
            names.append(name)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    else:
        assert "lm_head.weight" in names
    # Spot-check a few values against a scalar re-derivation.
    sd = model.state_dict()
    for name, idx in [("model.embed_tokens.weight", 12345 * 64 + 7),
                      ("model.layers.1.self_attn.q_proj.weight", 100),
                      ("model.layers.0.input_layernorm.weight", 3),
                      ("model.norm.weight", 63)] + (
                      [("model.layers.0.self_attn.k_proj.bias", 5)] if "model.layers.0.self_attn.k_proj.bias" in sd else []) + (
                      [] if tied else [("lm_head.weight", 151935 * 64 + 63)]):
        t = sd[name]
        x = float(rule_x(name, np.array([idx], dtype=np.uint64))[0])
        if name.endswith("norm.weight"):
            want = 1 + 0.1 * x
        elif name.endswith(".bias"):
            want = 0.1 * x
        elif name == "model.embed_tokens.weight":
            want = x
        else:
            want = x / math.sqrt(t.shape[1])
        got = t.reshape(-1)[idx].item()
        assert float(np.float32(want)) == got, (name, idx, want, got)
    return names


def f32(v):
    """Shortest decimal that round-trips the float32 value, as a Python float."""
    return float(repr(np.float32(v)).removeprefix("np.float32(").removesuffix(")"))


def summarize(logits_row_positions, probe_ids=PROBE_IDS):
    """logits: [T, V] float32 tensor -> dict of per-position records."""
    probe = torch.tensor(probe_ids)
    lg = logits_row_positions
    top = torch.topk(lg, 5, dim=-1)
    lse = torch.logsumexp(lg.double(), dim=-1)
    return {
        "logits": [[f32(v) for v in row] for row in lg[:, probe].tolist()],
        "top5_ids": top.indices.tolist(),
        "top5_logits": [[f32(v) for v in row] for row in top.values.tolist()],
        "logsumexp": [f32(v) for v in lse.tolist()],
    }


def jsonable_config(cfg):
    out = {}
    for k, v in cfg.to_dict().items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def decode_case(model, ids, probe_ids, prefill=3):
    """Prompt `ids` as generate() runs it: a `prefill`-token forward, then one token per forward
    through the KV cache. With dynamic RoPE each step recomputes the frequencies for its own length
    (the cached keys keep theirs), so these logits differ from one full forward."""
    from transformers import DynamicCache
    reset_rope_state(model)
    cache = DynamicCache(config=model.config)
    rows = []
    for a, b in [(0, prefill)] + [(t, t + 1) for t in range(prefill, len(ids))]:
        out = model(input_ids=torch.tensor([ids[a:b]]), position_ids=torch.arange(a, b).unsqueeze(0),
                    past_key_values=cache, use_cache=True)
        rows.append(out.logits[0].float())
    row = {"text": PROMPTS[2], "ids": ids, "positions": list(range(len(ids))), "prefill": prefill}
    row.update(summarize(torch.cat(rows), probe_ids))
    return {"name": f"decode_3_prefill_{prefill}_then_1", "rows": [row]}


def run_model(name, cls, cfg, tok):
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32).eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    fill_weights(model)

    extras = EXTRAS.get(name, {})
    probe_ids = [k * extras["probe_stride"] for k in range(math.ceil(VOCAB / extras["probe_stride"]))] \
        if "probe_stride" in extras else PROBE_IDS
    enc = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    cases = []
    single_logits = []
    with torch.no_grad():
        for k, (text, ids) in enumerate(zip(PROMPTS, enc)):
            T = len(ids)
            input_ids = torch.tensor([ids])
            pos = torch.arange(T).unsqueeze(0)
            reset_rope_state(model)
            out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                        position_ids=pos, use_cache=False)
            lg = out.logits[0].float()
            single_logits.append(lg)
            row = {"text": text, "ids": ids, "positions": list(range(T))}
            row.update(summarize(lg, probe_ids))
            cases.append({"name": f"single_{k + 1}", "rows": [row]})
        if extras.get("offset_case"):
            ids = enc[2]
            pos = list(range(OFFSET, OFFSET + len(ids)))
            reset_rope_state(model)
            out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        position_ids=torch.tensor([pos]), use_cache=False)
            row = {"text": PROMPTS[2], "ids": ids, "positions": pos}
            row.update(summarize(out.logits[0].float(), probe_ids))
            cases.append({"name": f"single_3_at_position_{OFFSET}", "rows": [row]})
        if cfg.rope_parameters["rope_type"] == "dynamic":
            cases.append(decode_case(model, enc[2], probe_ids))

        # Left-padded batch of prompts 1, 2, 4.
        seqs = [enc[k] for k in PADDED_BATCH]
        L = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for b, s in enumerate(seqs):
            input_ids[b, L - len(s):] = torch.tensor(s)
            mask[b, L - len(s):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        reset_rope_state(model)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        rows = []
        max_diff = 0.0
        for b, k in enumerate(PADDED_BATCH):
            real = mask[b].bool()
            lg = out.logits[b][real].float()
            d = (lg - single_logits[k]).abs().max().item()
            max_diff = max(max_diff, d)
            row = {"text": PROMPTS[k], "ids": input_ids[b][real].tolist(),
                   "positions": position_ids[b][real].tolist(), "pad_left": int(L - len(seqs[b]))}
            assert row["ids"] == enc[k]
            row.update(summarize(lg, probe_ids))
            rows.append(row)
        cases.append({"name": "padded_left_1_2_4", "padding": "left", "pad_id": PAD_ID,
                      "position_ids": "cumsum(attention_mask)-1 clamped at 0", "rows": rows})
        print(f"[{name}] self-check padded vs single: max |diff| over real positions = {max_diff:.3e}")
        if cfg.rope_parameters["rope_type"] == "dynamic":
            # The batch's longest prompt sets every row's frequencies: no self-check.
            print(f"[{name}] (dynamic RoPE: padded rows legitimately differ from single prompts)")
        elif max_diff > 1e-4:
            print(f"[{name}] SELF-CHECK FAILED", file=sys.stderr)
            sys.exit(1)

    return {
        "model": name,
        "generator": GENERATOR,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": jsonable_config(model.config),
        "probe_ids": probe_ids,
        "weights_rule": WEIGHTS_RULE,
        "pad_id": PAD_ID,
        "padded_self_check_max_abs_diff": f32(max_diff),
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="Qwen2.5 tokenizer.json")
    ap.add_argument("--out", required=True, help="output folder (e.g. tests/fixtures/hf)")
    ap.add_argument("--only", default=None, help="only this model name")
    args = ap.parse_args()

    torch.set_num_threads(1)  # bitwise-reproducible CPU reductions
    torch.use_deterministic_algorithms(True)
    tok = Tokenizer.from_file(args.tokenizer)
    assert tok.token_to_id("<|im_start|>") == 151644 and tok.token_to_id("<|endoftext|>") == PAD_ID

    os.makedirs(args.out, exist_ok=True)
    for name, cls, cfg in build_models():
        if args.only and name != args.only:
            continue
        data = run_model(name, cls, cfg, tok)
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
