#!/usr/bin/env python3
"""Check a folder written by the engine's GGUF import against transformers.

    target/pyenv/bin/python tools/reference/check_gguf_import.py OUT_DIR GGUF [--no-generate]

transformers reads a GGUF itself (`from_pretrained(dir, gguf_file=name)`):
it dequantizes every tensor to float32 and undoes llama.cpp's q/k row
permutation on its own, and it rebuilds a tokenizer from the GGUF metadata.
This script compares, independently of our Rust code:

1. weights: every tensor of OUT_DIR/model.safetensors (bf16) against
   transformers' float32 tensor: names, shapes, max |diff|, and whether ours
   is exactly transformers' value rounded to bf16 (round to nearest even);
2. tokenizer: OUT_DIR/tokenizer.json (through the `tokenizers` package, and
   through AutoTokenizer on OUT_DIR) against transformers' GGUF tokenizer on a
   few dozen varied strings;
3. generation (unless --no-generate): the imported folder, loaded as a plain
   Hugging Face model, answers a chat prompt greedily.

Prints one line per finding and a final `VERDICT: PASS` or `VERDICT: FAIL`.
A developer check, not CI.

transformers needs `accelerate` (and it `psutil`) to load a GGUF. Without
touching a shared venv:
    pip install --target target/pyextra accelerate psutil
    PYTHONPATH=target/pyextra python tools/reference/check_gguf_import.py OUT_DIR GGUF
The imported folder for SmolLM2 comes from the Rust end-to-end test:
    IGPO_SMOLLM2_GGUF=GGUF IGPO_GGUF_IMPORT_OUT=OUT_DIR \
        cargo test -p igpo --lib model::gguf::import::tests::smollm2
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

STRINGS = [
    "What is the capital of France?",
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "HELLO WORLD, this Is MiXeD case.",
    "don't won't I'm you're we've they'll he'd",
    "In 2024, x=12345; pi ~ 3.14159",
    "0123456789 00 007 1,000,000 1.5e-10",
    "Phone: +1 (555) 010-9999",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?q=a+b&lang=en#frag",
    "email: someone@example.org",
    "line one\nline two\r\nline three\n\n\nend",
    "tabs\tand\tmore\t\ttabs",
    "café naïve résumé façade",
    "Grüße aus München, Straße",
    "東京は日本の首都です。",
    "北京欢迎你",
    "Привет, мир!",
    "مرحبا بالعالم",
    "हिन्दी भाषा",
    "emoji 🙂🚀👍🏽 and ❤️",
    "math: ∑ x² ≤ ∞, α β γ",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>text after end",
    "text<|im_end|>text",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "a" * 50,
    "",
    " ",
    "\n",
]


def compare_weights(ours, ref, tied):
    ok = True
    lines = []
    names = sorted(ours)
    missing = sorted(k for k in ref if k not in ours and not (tied and k == "lm_head.weight"))
    extra = sorted(k for k in ours if k not in ref)
    if missing:
        ok = False
        lines.append(f"FAIL weights: {len(missing)} transformers tensors missing from ours, e.g. {missing[:5]}")
    if extra:
        ok = False
        lines.append(f"FAIL weights: {len(extra)} of our tensors unknown to transformers, e.g. {extra[:5]}")
    worst = (0.0, None)
    worst_rel = (0.0, None)
    n_exact = 0
    for name in names:
        if name not in ref:
            continue
        a = ours[name]
        r = ref[name].detach().to(torch.float32).cpu()
        if tuple(a.shape) != tuple(r.shape):
            ok = False
            lines.append(f"FAIL {name}: shape {tuple(a.shape)} vs transformers {tuple(r.shape)}")
            continue
        if a.dtype != torch.bfloat16:
            ok = False
            lines.append(f"FAIL {name}: dtype {a.dtype}, expected bfloat16")
        a32 = a.to(torch.float32)
        diff = (a32 - r).abs()
        mad = float(diff.max()) if diff.numel() else 0.0
        # bf16 keeps 8 significant bits: round-to-nearest moves a value by at
        # most its unit roundoff, 2^-8 of its magnitude.
        rel = float((diff / r.abs().clamp_min(1e-30)).max()) if diff.numel() else 0.0
        exact = torch.equal(a, r.to(torch.bfloat16))
        n_exact += int(exact)
        if mad > worst[0]:
            worst = (mad, name)
        if rel > worst_rel[0]:
            worst_rel = (rel, name)
        if not exact and rel > 2.0 ** -8:
            ok = False
            lines.append(f"FAIL {name}: max |diff| {mad:.3g}, max rel diff {rel:.3g} (beyond bf16 rounding)")
    lines.append(
        f"weights: {len(names)} tensors, {n_exact} equal to bf16(transformers) bit for bit; "
        f"max |diff| {worst[0]:.3g} ({worst[1]}), max relative diff {worst_rel[0]:.3g} ({worst_rel[1]}; bf16 unit roundoff 2^-8 = {2**-8:.3g})"
    )
    return ok, lines


def compare_tokenizers(out_dir, ref_tok):
    ok = True
    lines = []
    ours = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out_dir)
    n_same = n_auto_same = 0
    for s in STRINGS:
        want = ref_tok(s, add_special_tokens=True)["input_ids"]
        got = ours.encode(s, add_special_tokens=True).ids
        got_auto = auto(s, add_special_tokens=True)["input_ids"]
        if got == want:
            n_same += 1
        else:
            ok = False
            lines.append(f"FAIL tokenizer.json on {s!r}: ours {got[:24]} vs transformers-GGUF {want[:24]}")
        if got_auto == want:
            n_auto_same += 1
        else:
            ok = False
            lines.append(f"FAIL AutoTokenizer(OUT_DIR) on {s!r}: {got_auto[:24]} vs transformers-GGUF {want[:24]}")
        back = ours.decode(got, skip_special_tokens=False)
        if back != s:
            ok = False
            lines.append(f"FAIL decode round trip on {s!r}: got {back!r}")
    lines.append(
        f"tokenizer: {n_same}/{len(STRINGS)} strings encode identically (tokenizers.Tokenizer on tokenizer.json), "
        f"{n_auto_same}/{len(STRINGS)} via AutoTokenizer(OUT_DIR); vocab {ours.get_vocab_size(True)} vs {len(ref_tok)}"
    )
    if ours.get_vocab_size(True) != len(ref_tok):
        ok = False
        lines.append("FAIL tokenizer: vocabulary sizes differ")
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        a, b = getattr(auto, key, None), getattr(ref_tok, key, None)
        if a != b:
            ok = False
            lines.append(f"FAIL tokenizer_config: {key} {a!r} vs transformers-GGUF {b!r}")
    if (auto.chat_template or None) != (ref_tok.chat_template or None):
        ok = False
        lines.append("FAIL tokenizer_config: chat_template differs")
    return ok, lines


def generate(out_dir, question):
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model.eval()
    msgs = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("gguf")
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    try:
        import accelerate  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError:
        sys.exit("check_gguf_import.py: transformers needs `accelerate` to read a GGUF; see the docstring")
    torch.manual_seed(0)

    gdir, gname = os.path.split(os.path.abspath(args.gguf))
    config = json.load(open(os.path.join(args.out_dir, "config.json")))
    tied = bool(config.get("tie_word_embeddings"))
    all_ok = True

    ref_model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    ok, lines = compare_weights(load_file(os.path.join(args.out_dir, "model.safetensors")), ref_model.state_dict(), tied)
    all_ok &= ok
    print("\n".join(lines))

    ref_cfg = ref_model.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps",
                "bos_token_id", "eos_token_id"):
        a, b = config.get(key), getattr(ref_cfg, key, None)
        same = a == b or (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-6 * abs(b))
        if not same:
            all_ok = False
            print(f"FAIL config.json {key}: ours {a!r} vs transformers-GGUF {b!r}")
    theta_ref = getattr(ref_cfg, "rope_theta", None) or (getattr(ref_cfg, "rope_parameters", None) or {}).get("rope_theta")
    if theta_ref is not None and abs(config.get("rope_theta", 0) - theta_ref) > 1e-6 * theta_ref:
        all_ok = False
        print(f"FAIL config.json rope_theta: ours {config.get('rope_theta')} vs transformers-GGUF {theta_ref}")
    print("config: compared with transformers' GGUF config")
    del ref_model

    ref_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    ok, lines = compare_tokenizers(args.out_dir, ref_tok)
    all_ok &= ok
    print("\n".join(lines))

    if not args.no_generate:
        question = "What is the capital of France?"
        answer = generate(args.out_dir, question)
        print(f"generation (greedy, imported folder): {question!r} -> {answer!r}")
        if "Paris" not in answer:
            all_ok = False
            print("FAIL generation: the answer does not mention Paris")

    print("VERDICT:", "PASS" if all_ok else "FAIL")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
