"""Renders every committed chat template x conversation with transformers'
`apply_chat_template` and writes the expected strings the engine's renderer
must reproduce byte for byte (engine/tests/chat_templates.rs).

Inputs (tests/fixtures/chat_templates/):
  templates.json      name -> {file, special_tokens}: the template file and
                      the special tokens its model's tokenizer_config.json
                      declares (bos_token, eos_token, ...)
  conversations.json  {extra_kwargs, conversations: [{name, messages, tools,
                      add_generation_prompt}]}; extra_kwargs go to every
                      call (date_string pins Llama 3.2's strftime_now date)
Output:
  expected.json       {transformers, extra_kwargs_json, conversations:
                      [{name, messages_json, tools_json,
                      add_generation_prompt}], templates: {template:
                      {conversation: {"text": str} | {"error": str}}}}: the
                      inputs as JSON text (key order kept for readers that
                      sort keys), and the rendered text or the template's
                      raise_exception message

No hub access: the tokenizer is a PreTrainedTokenizerFast built from a local
tokenizer.json (rendering to text does not depend on its vocabulary) with the
template's special tokens and `chat_template` set.

Usage: render_chat_templates.py TOKENIZER_JSON [FIXTURE_DIR]
"""

import json
import os
import sys

import transformers
from transformers import PreTrainedTokenizerFast


def main():
    tokenizer_json = sys.argv[1]
    here = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/chat_templates"
    templates = json.load(open(os.path.join(here, "templates.json"), encoding="utf-8"))
    spec = json.load(open(os.path.join(here, "conversations.json"), encoding="utf-8"))
    extra = spec["extra_kwargs"]
    out = {
        "transformers": transformers.__version__,
        "extra_kwargs_json": json.dumps(extra, ensure_ascii=False),
        "conversations": [
            {
                "name": c["name"],
                "messages_json": json.dumps(c["messages"], ensure_ascii=False),
                "tools_json": json.dumps(c["tools"], ensure_ascii=False),
                "add_generation_prompt": c["add_generation_prompt"],
            }
            for c in spec["conversations"]
        ],
        "templates": {},
    }
    for name, t in templates.items():
        text = open(os.path.join(here, t["file"]), encoding="utf-8").read()
        tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, **t["special_tokens"])
        tok.chat_template = text
        rendered = {}
        for conv in spec["conversations"]:
            try:
                s = tok.apply_chat_template(
                    conv["messages"],
                    tools=conv["tools"],
                    add_generation_prompt=conv["add_generation_prompt"],
                    tokenize=False,
                    **extra,
                )
                rendered[conv["name"]] = {"text": s}
            except Exception as e:  # the template's raise_exception
                if type(e).__name__ != "TemplateError":
                    raise
                rendered[conv["name"]] = {"error": str(e)}
        out["templates"][name] = rendered
        errors = sum("error" in r for r in rendered.values())
        print(f"{name}: {len(rendered)} conversations, {errors} raised", file=sys.stderr)
    with open(os.path.join(here, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
