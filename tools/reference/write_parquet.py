"""Writes a Search-R1/FlashRAG JSONL file as parquet with pyarrow, in one of
the two layouts the qa-dataset plugin reads (engine/tests/qa_parquet.rs
checks the plugin reads back the JSONL's questions, answers and ids):

  search-r1  columns id, question, golden_answers (list<string>), data_source
  verl       columns id, data_source, prompt (list<struct<role, content>>:
             a system message, then the question as the user message),
             ability, reward_model (struct<style, ground_truth:
             struct<target: list<string>>>), extra_info (struct<index,
             question, split>): the columns verl's Search-R1 preprocessing
             writes, with the bare question as the user message

Options:
  --compression C       snappy (pyarrow's default), gzip, lz4, zstd, none
  --drop COLUMN         leave a top-level column out (error-path tests)
  --target-string       verl: `target` is the first answer as one string
  --few-shot            verl: a user/assistant example pair before the
                        question (the question is the last user message)
  --row-group-size N    rows per row group (several groups keep their order)

Usage: write_parquet.py IN.jsonl OUT.parquet --layout search-r1|verl [options]
"""

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq

SYSTEM = "You are a helpful and harmless assistant."


def search_r1_table(records):
    return pa.table(
        {
            "id": [r["id"] for r in records],
            "question": [r["question"] for r in records],
            "golden_answers": pa.array(
                [r["golden_answers"] for r in records], type=pa.list_(pa.string())
            ),
            "data_source": ["squad"] * len(records),
        }
    )


def verl_table(records, target_string, few_shot):
    def prompt(question):
        messages = [{"role": "system", "content": SYSTEM}]
        if few_shot:
            messages += [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        return messages + [{"role": "user", "content": question}]

    def target(answers):
        return answers[0] if target_string else answers

    target_type = pa.string() if target_string else pa.list_(pa.string())
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    reward_model = pa.struct(
        [
            ("style", pa.string()),
            ("ground_truth", pa.struct([("target", target_type)])),
        ]
    )
    extra_info = pa.struct(
        [("index", pa.int64()), ("question", pa.string()), ("split", pa.string())]
    )
    return pa.table(
        {
            "id": [r["id"] for r in records],
            "data_source": ["squad"] * len(records),
            "prompt": pa.array(
                [prompt(r["question"]) for r in records], type=pa.list_(message)
            ),
            "ability": ["fact-reasoning"] * len(records),
            "reward_model": pa.array(
                [
                    {"style": "rule", "ground_truth": {"target": target(r["golden_answers"])}}
                    for r in records
                ],
                type=reward_model,
            ),
            "extra_info": pa.array(
                [
                    {"index": i, "question": r["question"], "split": "test"}
                    for i, r in enumerate(records)
                ],
                type=extra_info,
            ),
        }
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("out")
    ap.add_argument("--layout", choices=["search-r1", "verl"], required=True)
    ap.add_argument("--compression", default="snappy")
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--target-string", action="store_true")
    ap.add_argument("--few-shot", action="store_true")
    ap.add_argument("--row-group-size", type=int, default=None)
    args = ap.parse_args()

    with open(args.jsonl, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if args.layout == "search-r1":
        table = search_r1_table(records)
    else:
        table = verl_table(records, args.target_string, args.few_shot)
    table = table.drop_columns(args.drop)
    pq.write_table(
        table,
        args.out,
        compression=args.compression,
        row_group_size=args.row_group_size,
    )
    # What was written, for the test's failure messages.
    meta = pq.ParquetFile(args.out).metadata
    codecs = sorted(
        {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
    )
    print(json.dumps({"rows": meta.num_rows, "row_groups": meta.num_row_groups,
                      "codecs": codecs, "columns": table.column_names}))


if __name__ == "__main__":
    main()
