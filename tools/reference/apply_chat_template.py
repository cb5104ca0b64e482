"""Token ids of a conversation as transformers' `apply_chat_template(...,
tokenize=True)` gives them, for engine/tests/native_tool_calls.rs.

Reads one JSON request on stdin: {tokenizer_json, chat_template,
special_tokens, messages, tools, add_generation_prompt}; prints
{"ids": [...], "text": "..."} (text: the same call with tokenize=False).
The tokenizer is a PreTrainedTokenizerFast over the local tokenizer.json
(no hub access).
"""

import json
import sys

from transformers import PreTrainedTokenizerFast


def main():
    req = json.load(sys.stdin)
    tok = PreTrainedTokenizerFast(tokenizer_file=req["tokenizer_json"], **req["special_tokens"])
    tok.chat_template = req["chat_template"]
    kwargs = dict(tools=req["tools"], add_generation_prompt=req["add_generation_prompt"])
    text = tok.apply_chat_template(req["messages"], tokenize=False, **kwargs)
    ids = tok.apply_chat_template(req["messages"], tokenize=True, **kwargs)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    json.dump({"ids": list(ids), "text": text}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
