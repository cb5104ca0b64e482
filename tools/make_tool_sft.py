#!/usr/bin/env python3
"""Writes SFT transcripts that teach the agent's tool_call protocol: for SQuAD
questions outside an eval sample, the assistant searches with the question,
reads the real bm25-search result (called through `igpo plugin call`), and
answers in <answer> tags.

    python3 tools/make_tool_sft.py --exclude EVAL.jsonl --n 48 --out OUT.jsonl

The system prompt must be the agent's own: by default it is what
`igpo plugin prompt` prints for the plugin (the prompt a run with this one
tool presents); --system-prompt FILE overrides it. `cargo xtask test` runs
this script to make the tool-calling SmolLM2 its rollout tests use.
"""
import argparse, json, random, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("--squad", default="target/data/squad-dev-v1.1.json")
ap.add_argument("--system-prompt", help="file with the system prompt (default: `igpo plugin prompt`)")
ap.add_argument("--exclude", help="trajectories JSONL whose questions must not be used")
ap.add_argument("--n", type=int, default=48)
ap.add_argument("--igpo", default="target/release/igpo")
ap.add_argument("--plugin", default="target/plugins/bm25-search.wasm")
ap.add_argument("--corpus", default="target/corpus")
ap.add_argument("--tool-config", default='{"k": 2, "max_chars": 600}', help="the tool's init config (JSON)")
ap.add_argument("--out", required=True)
a = ap.parse_args()

if a.system_prompt:
    system = open(a.system_prompt).read()
else:
    r = subprocess.run([a.igpo, "plugin", "prompt", a.plugin, "--dir", a.corpus, "--config", a.tool_config],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"igpo plugin prompt failed: {r.stderr.strip()}")
    system = r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout
skip = set()
if a.exclude:
    skip = {json.loads(l)["question"] for l in open(a.exclude)}
qas = []
for art in json.load(open(a.squad))["data"]:
    for p in art["paragraphs"]:
        for qa in p["qas"]:
            if qa["question"] not in skip and qa["answers"]:
                qas.append((qa["question"].strip(), qa["answers"][0]["text"].strip()))
random.Random(3).shuffle(qas)
out = []
for q, ans in qas[: a.n]:
    args = json.dumps({"query": q})
    r = subprocess.run(
        [a.igpo, "plugin", "call", a.plugin, "--dir", a.corpus, "--config", a.tool_config, "--args", args],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        sys.exit(f"igpo plugin call failed: {r.stderr.strip()}")
    result = r.stdout.strip()
    call = json.dumps({"name": "search", "arguments": {"query": q}})
    out.append({"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": q},
        {"role": "assistant", "content": f"<think>I should search for this.</think>\n<tool_call>\n{call}\n</tool_call>"},
        {"role": "user", "content": f"<tool_response>\n{result}\n</tool_response>"},
        {"role": "assistant", "content": f"<think>The passages answer it.</think>\n<answer>{ans}</answer>"},
    ]})
with open(a.out, "w") as f:
    for o in out:
        f.write(json.dumps(o, ensure_ascii=False) + "\n")
print(f"wrote {len(out)} transcripts to {a.out}", file=sys.stderr)
