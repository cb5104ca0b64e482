"""Reads a run folder's TensorBoard event files with TensorBoard's own reader
and prints them as JSON (engine/tests/tensorboard.rs compares this with
metrics.jsonl / eval.jsonl).

    python tools/reference/read_tensorboard.py RUN_DIR/tb

Output: {"files": [name, ...], "file_version": str, "events": [{"file": name,
"step": int, "wall_time": float, "scalars": {tag: value}, "plugins": {tag:
plugin_name}}, ...]} with the events of every file in order (one file is
expected). Records are read twice: raw (RawEventFileLoader: each record's
length and CRCs checked; its bytes must add up to the file's size, since the
loader stops quietly at a bad record) and parsed (EventFileLoader: the events
as TensorBoard's scalar dashboard sees them after its compat migrations, a
`simple_value` becoming a scalar-plugin tensor).
"""

import json
import os
import sys

from tensorboard.backend.event_processing.event_file_loader import (
    EventFileLoader,
    RawEventFileLoader,
)
from tensorboard.util import tensor_util


def value_of(v):
    """(value, plugin name) of one summary Value."""
    if v.HasField("tensor"):
        return float(tensor_util.make_ndarray(v.tensor).item()), v.metadata.plugin_data.plugin_name
    if v.HasField("simple_value"):
        return float(v.simple_value), "simple_value"
    raise SystemExit(f"tag {v.tag}: neither a tensor nor a simple_value")


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: read_tensorboard.py TB_DIR")
    tb_dir = sys.argv[1]
    names = sorted(n for n in os.listdir(tb_dir) if "tfevents" in n)
    out = {"files": names, "file_version": None, "events": []}
    for name in names:
        path = os.path.join(tb_dir, name)
        raw = list(RawEventFileLoader(path).Load())
        size = os.path.getsize(path)
        read = sum(len(r) + 16 for r in raw)
        if read != size:
            raise SystemExit(f"{path}: read {read} bytes of records out of {size}")
        for event in EventFileLoader(path).Load():
            if event.HasField("file_version"):
                out["file_version"] = event.file_version
                continue
            scalars, plugins = {}, {}
            for v in event.summary.value:
                if v.tag in scalars:
                    raise SystemExit(f"{path}: tag {v.tag} twice at step {event.step}")
                scalars[v.tag], plugins[v.tag] = value_of(v)
            out["events"].append(
                {
                    "file": name,
                    "step": event.step,
                    "wall_time": event.wall_time,
                    "scalars": scalars,
                    "plugins": plugins,
                }
            )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
