#!/usr/bin/env python3
"""Loads a model folder written by igpo (`igpo model export`) with
transformers as any user would, and writes what it found as the committed
fixture of engine/tests/sft.rs (`tests/fixtures/hf/export-bf16.json`):

    target/pyenv/bin/python tools/reference/hf_load_logits.py MODEL_DIR \\
        --text "The capital of France is Paris." --fixture tests/fixtures/hf/export-bf16.json

`AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype="auto")` keeps the
dtype `config.json` names (bf16 for a default export); the forward then runs
in float32 on those weights (`.float()`), so igpo's f32 forward on the same
folder must agree to float rounding. Written: the sha256 of every file of
the folder (the test first checks its own export is these bytes), the loaded
dtype and class, the generation config's eos, AutoTokenizer's ids of
`--text`, and per position the logits at every `--probe-every`-th vocab id
and the row's logsumexp (float64). The suite thus checks the export against
transformers without torch installed; this script needs torch
(`tools/reference/requirements-torch.txt`).
"""
import argparse, hashlib, json, os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--text", required=True, help="the prompt, tokenized with AutoTokenizer")
ap.add_argument("--fixture", required=True, help="the fixture JSON to write")
ap.add_argument("--probe-every", type=int, default=997, help="logits at every Nth vocab id")
a = ap.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype="auto")
loaded_dtype = str(model.dtype).replace("torch.", "")
model = model.float().eval()
ids = AutoTokenizer.from_pretrained(a.model)(a.text)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].double()

files = {}
for name in sorted(os.listdir(a.model)):
    with open(os.path.join(a.model, name), "rb") as f:
        files[name] = hashlib.sha256(f.read()).hexdigest()
probe_ids = list(range(0, logits.shape[1], a.probe_every))
fixture = {
    "made_by": f"tools/reference/hf_load_logits.py (transformers {transformers.__version__}, "
    f"torch {torch.__version__})",
    "files_sha256": files,
    "dtype": loaded_dtype,
    "class": type(model).__name__,
    "eos_token_id": GenerationConfig.from_pretrained(a.model).eos_token_id,
    "text": a.text,
    "ids": ids,
    "probe_ids": probe_ids,
    "rows": [
        {"probe": [logits[r, i].item() for i in probe_ids], "lse": torch.logsumexp(logits[r], 0).item()}
        for r in range(len(ids))
    ],
}
with open(a.fixture, "w") as f:
    json.dump(fixture, f, indent=1)
    f.write("\n")
print(f"wrote {a.fixture}: {len(ids)} positions x {len(probe_ids)} probes, {len(files)} files")
