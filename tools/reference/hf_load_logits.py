#!/usr/bin/env python3
"""Loads a model folder written by igpo (`igpo model export`, a checkpoint's
`model/`) with transformers as any user would, and prints JSON with what it
found and the logits of one prompt.

    python tools/reference/hf_load_logits.py MODEL_DIR --ids 1,2,3 [--rows 0,5]

`AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype="auto")` keeps the
dtype `config.json` names (bf16 for a default export); the forward then runs
in float32 on those weights (`.float()`), so igpo's f32 forward on the same
folder must agree to float rounding. Printed: the loaded dtype, the
tokenizer's ids of `--text` (when given), the generation config's eos, and
`logits[r]` for each requested row (all rows when --rows is absent).
Used by engine/tests/sft.rs (`cargo xtask test` passes IGPO_PYTHON).
"""
import argparse, json, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--ids", required=True, help="comma-separated token ids")
ap.add_argument("--rows", help="comma-separated positions to print (default: all)")
ap.add_argument("--text", help="also tokenize this text with AutoTokenizer")
a = ap.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype="auto")
loaded_dtype = str(model.dtype).replace("torch.", "")
model = model.float().eval()
ids = [int(x) for x in a.ids.split(",")]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
rows = [int(r) for r in a.rows.split(",")] if a.rows else list(range(len(ids)))
out = {
    "dtype": loaded_dtype,
    "class": type(model).__name__,
    "eos_token_id": GenerationConfig.from_pretrained(a.model).eos_token_id,
    "rows": rows,
    "logits": [logits[r].tolist() for r in rows],
}
if a.text is not None:
    out["text_ids"] = AutoTokenizer.from_pretrained(a.model)(a.text)["input_ids"]
json.dump(out, sys.stdout)
