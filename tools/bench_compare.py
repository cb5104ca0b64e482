#!/usr/bin/env python3
"""Side-by-side table of the engine and PyTorch from the JSON files that `igpo bench forward|score` and
`tools/bench_torch.py forward|score` write (one run, one machine), with the ratios.

    python3 tools/bench_compare.py --title "Qwen2.5-0.5B shape, H200" \
        --forward IGPO.json TORCH.json [--forward IGPO2.json TORCH2.json ...] \
        [--score IGPO.json TORCH.json] [--attention IGPO.json TORCH.json] [--peak-tflops 989] \
        [--machine MACHINE.json] \
        [--out COMBINED.json] [--markdown TABLE.md]

Each `--forward` pair adds its rows (e.g. one run at 1x2048 and one at 8x2048 with gradient
accumulation, whose prefill and decode rows are left out when they repeat the first pair's sizes).
A PyTorch file with `train_compiled_tokens_per_s` adds a row against `torch.compile`; an igpo file
with a `profile` (IGPO_PROFILE=1) adds its per-phase breakdown below the table.

Ratios are "how many times better igpo is": throughput igpo / pytorch, time pytorch / igpo, memory
pytorch / igpo; above 1 the engine wins. MFU = tokens/s x training FLOPs per token (igpo's
`train_flops_per_token`, PaLM's formula, the same number for both sides) / the device's peak
(`--peak-tflops`; dense bf16 of an H100 SXM or H200 is 989 TFLOP/s). On a CPU, `--machine` takes
`igpo bench machine`'s JSON instead: the measured f32 GEMM peak of this machine becomes the peak, and
prefill, training and scoring get a row with their share of it. Standard library only.
"""

import argparse
import json
import math


# What the peak is called in the rows: the GPU's datasheet peak (MFU) or the CPU's measured GEMM peak.
PEAK_NAME = "MFU"


def load(path):
    with open(path) as f:
        return json.load(f)


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    return float(d)


def fmt(x, unit):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if unit == "MiB":
        x /= 2**20
        return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"
    if unit == "ms":
        return f"{x * 1e3:,.1f}"
    if unit == "%":
        return f"{x * 100:.1f}"
    return f"{x:,.1f}" if abs(x) >= 10 else f"{x:.3g}"


def bandwidth_share(tokens_per_s, batch, step_bytes, peak_gbs):
    """Bytes a decode step must read (igpo's count: weights + KV) over its time, as a share of the peak."""
    if tokens_per_s is None or step_bytes is None or not peak_gbs:
        return None
    return step_bytes * tokens_per_s / int(batch) / 1e9 / peak_gbs


def forward_rows(a, b, peak_tflops, with_inference, peak_gbs=None):
    out = []
    if with_inference:
        prefill = f"prefill 1x{int(get(a, 'prefill_tokens') or 0)}"
        pa, pb = get(a, "prefill_tokens_per_s"), get(b, "prefill_tokens_per_s")
        out.append((prefill, "tokens/s", pa, pb, "higher"))
        flops = get(a, "prefill_flops_per_token")
        if peak_tflops and flops:
            out.append((f"{prefill} {PEAK_NAME}", "%",
                        *[None if x is None else x * flops / 1e12 / peak_tflops for x in (pa, pb)], "higher"))
        for batch in sorted(a.get("decode_tokens_per_s", {}), key=int):
            ta, tb = get(a, "decode_tokens_per_s", batch), get(b, "decode_tokens_per_s", batch)
            out.append((f"decode batch {batch}", "tokens/s", ta, tb, "higher"))
            step_bytes = get(a, "decode_bytes_per_step", batch)
            if peak_gbs and step_bytes:
                out.append((f"decode batch {batch} of the bandwidth limit", "%",
                            bandwidth_share(ta, batch, step_bytes, peak_gbs),
                            bandwidth_share(tb, batch, step_bytes, peak_gbs), "higher"))
    ta, tb = get(a, "train_tokens_per_s"), get(b, "train_tokens_per_s")
    if ta is not None or tb is not None:
        seq, batch = int(get(a, "train_seq") or 0), int(get(a, "train_batch") or 0)
        micro = int(get(a, "train_micro_batch") or batch)
        shape = f"{batch}x{seq}" + (f" (micro-batches of {micro})" if 0 < micro < batch else "")
        out.append((f"train {shape} fwd+bwd+AdamW", "tokens/s", ta, tb, "higher"))
        flops = get(a, "train_flops_per_token")
        if flops:
            tf = [None if x is None else x * flops / 1e12 for x in (ta, tb)]
            out.append((f"train {shape} achieved", "TFLOP/s", tf[0], tf[1], "higher"))
            if peak_tflops:
                out.append((f"train {shape} {PEAK_NAME}", "%",
                            *[None if x is None else x / peak_tflops for x in tf], "higher"))
        tc = get(b, "train_compiled_tokens_per_s")
        if tc is not None:
            out.append((f"train {shape} vs torch.compile", "tokens/s", ta, tc, "higher"))
    return out


def attention_rows(a, b):
    shape = f"seq {int(get(a, 'seq') or 0)}, {int(get(a, 'heads') or 0)}/{int(get(a, 'kv_heads') or 0)} heads x {int(get(a, 'head_dim') or 0)}"
    return [(f"attention {shape} forward", "TFLOP/s", get(a, "forward_tflops"), get(b, "forward_tflops"), "higher"),
            (f"attention {shape} backward", "TFLOP/s", get(a, "backward_tflops"), get(b, "backward_tflops"), "higher")]


def rows(forwards, score, peak_tflops, peak_gbs=None):
    """(label, unit, igpo, pytorch, better-when) for every measurement both files hold."""
    out = []
    seen = set()
    for a, b in forwards:
        sizes = (get(a, "prefill_tokens"), tuple(sorted(a.get("decode_tokens_per_s", {}))))
        out += forward_rows(a, b, peak_tflops, with_inference=sizes not in seen, peak_gbs=peak_gbs)
        seen.add(sizes)
    if score:
        a, b = score
        shape = f"{int(get(a, 'tokens') or 0)}x{int(get(a, 'vocab') or 0)}"
        fa, fb = get(a, "forward_seconds"), get(b, "forward_seconds")
        ba, bb = get(a, "forward_backward_seconds"), get(b, "forward_backward_seconds")
        out.append((f"score {shape} forward", "ms", fa, fb, "lower"))
        # lm-head FLOPs: 2 T H V forward, 3 times that with the backward.
        lm = 2 * (get(a, "tokens") or 0) * (get(a, "hidden") or 0) * (get(a, "vocab") or 0)
        if peak_tflops and lm:
            out.append((f"score {shape} forward {PEAK_NAME}", "%",
                        *[None if t is None else lm / t / 1e12 / peak_tflops for t in (fa, fb)], "higher"))
        out.append((f"score {shape} fwd+bwd", "ms", ba, bb, "lower"))
        if peak_tflops and lm:
            out.append((f"score {shape} fwd+bwd {PEAK_NAME}", "%",
                        *[None if t is None else 3 * lm / t / 1e12 / peak_tflops for t in (ba, bb)], "higher"))
        out.append((f"score {shape} forward peak", "MiB", get(a, "forward_peak_bytes"),
                    get(b, "forward_peak_bytes"), "lower"))
        out.append((f"score {shape} fwd+bwd peak", "MiB", get(a, "forward_backward_peak_bytes"),
                    get(b, "forward_backward_peak_bytes"), "lower"))
    return out


def profile_lines(igpo):
    """The igpo run's IGPO_PROFILE breakdown: one table per profiled measurement."""
    out = []
    for label, run in igpo.get("profile", {}).items():
        wall = run["wall_seconds"]
        dev = run.get("device")
        dev = (f"; device: {dev['launches']} launches, {dev['allocations']} allocations, "
               f"{dev['host_waits']} host waits") if dev else ""
        out += ["", f"igpo `IGPO_PROFILE=1`, {label}: wall {wall * 1e3:,.1f} ms, "
                f"{run.get('host_reads', 'n/a')} host reads{dev}", "",
                "| phase | ms | share | ops |", "|---|---:|---:|---:|"]
        covered = 0.0
        for phase, t in run["phases"].items():
            covered += t["seconds"]
            out.append(f"| {phase} | {t['seconds'] * 1e3:,.2f} | {100 * t['seconds'] / wall:.1f} % | {t['ops']} |")
        rest = max(wall - covered, 0.0)
        out.append(f"| outside ops (host, launches, idle) | {rest * 1e3:,.2f} | {100 * rest / wall:.1f} % | |")
    return out


def ratio(x, y, better):
    if x is None or y is None or x <= 0 or y <= 0:
        return None
    return x / y if better == "higher" else y / x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--title", default="igpo vs PyTorch")
    ap.add_argument("--forward", nargs=2, metavar=("IGPO", "TORCH"), action="append", default=[])
    ap.add_argument("--score", nargs=2, metavar=("IGPO", "TORCH"))
    ap.add_argument("--attention", nargs=2, metavar=("IGPO", "TORCH"))
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--peak-gbs", type=float, default=None,
                    help="the device's peak memory bandwidth, GB/s: decode rows get their share of it")
    ap.add_argument("--machine", help="`igpo bench machine` JSON: its GEMM peak is the peak")
    ap.add_argument("--out", help="combined JSON (inputs, table, ratios)")
    ap.add_argument("--markdown", help="write the table here too")
    args = ap.parse_args()
    if not args.forward and not args.score and not args.attention:
        ap.error("give --forward, --score and/or --attention")
    global PEAK_NAME
    machine = load(args.machine) if args.machine else None
    if machine:
        args.peak_tflops = machine["peak_gflops"] / 1e3
        PEAK_NAME = "of the GEMM peak"
    forwards = [tuple(load(p) for p in pair) for pair in args.forward]
    score = tuple(load(p) for p in args.score) if args.score else None

    table = rows(forwards, score, args.peak_tflops, args.peak_gbs)
    attention = tuple(load(p) for p in args.attention) if args.attention else None
    if attention:
        table += attention_rows(*attention)
    lines = [f"### {args.title}", ""]
    if machine:
        lines += [f"This machine (`igpo bench machine`, {machine['threads']} threads): f32 GEMM peak "
                  f"{machine['peak_gflops']:.0f} GFLOP/s ({machine['gemm_size']}^3: packed kernel "
                  f"{machine['packed_gflops']:.0f}, gemm crate {machine['gemm_crate_gflops']:.0f}); memory read "
                  f"{machine['read_gb_per_s']:.1f} GB/s, copy {machine['copy_gb_per_s']:.1f} GB/s "
                  f"(read + written).", ""]
    lines += ["| measurement | unit | igpo | pytorch | igpo better by |", "|---|---|---:|---:|---:|"]
    result = []
    for label, unit, x, y, better in table:
        r = ratio(x, y, better)
        lines.append(f"| {label} | {unit} | {fmt(x, unit)} | {fmt(y, unit)} | "
                     f"{'n/a' if r is None else f'{r:.2f}x'} |")
        result.append({"measurement": label, "unit": unit, "igpo": x, "pytorch": y, "better": better,
                       "igpo_better_by": r})
    for a, _ in forwards:
        lines += profile_lines(a)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.out:
        combined = {"title": args.title, "peak_tflops": args.peak_tflops, "machine": machine, "table": result,
                    "forward": [{"igpo": a, "pytorch": b} for a, b in forwards],
                    "score": {"igpo": score[0], "pytorch": score[1]} if score else None,
                    "attention": {"igpo": attention[0], "pytorch": attention[1]} if attention else None}
        with open(args.out, "w") as f:
            json.dump(combined, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
