#!/usr/bin/env python3
"""Write dequantization test vectors for engine/src/model/gguf/dequant.rs.

For every ggml type the Rust importer dequantizes (and the `gguf` Python
package can dequantize), build a few blocks, dequantize them with
`gguf.quants.dequantize`, and store the raw block bytes and the expected f32
bits (both as hex) in a small JSON fixture.

Blocks come from `gguf.quants.quantize` where the package can quantize the
type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16); for the others (K-quants, IQ4_*),
they are random bytes whose f16 scale fields are overwritten with finite
values in a sensible range, so every bit pattern of the quants and packed
scales is exercised.

    target/pyenv/bin/python tools/reference/gguf_dequant_vectors.py \
        --out engine/src/model/gguf/testdata/dequant_vectors.json

Deterministic (fixed seed); the output is byte-identical across runs.
"""

import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

SEED = 20240611


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8)


def random_blocks(rng, qtype, n_blocks):
    """Random block bytes with the f16 scale fields set to finite values."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # byte offsets of f16 scale fields, per type (see ggml-common.h)
    fields = {
        T.Q2_K: [80, 82],  # d, dmin after scales[16] + qs[64]
        T.Q3_K: [108],  # d after hmask[32] + qs[64] + scales[12]
        T.Q4_K: [0, 2],  # d, dmin first
        T.Q5_K: [0, 2],
        T.Q6_K: [208],  # d after ql[128] + qh[64] + scales[16]
        T.IQ4_NL: [0],
        T.IQ4_XS: [0],
    }[qtype]
    for off in fields:
        scale = rng.uniform(-0.05, 0.05, size=n_blocks)
        raw[:, off:off + 2] = f16_bytes(scale).reshape(n_blocks, 2)
    return raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="engine/src/model/gguf/testdata/dequant_vectors.json")
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    cases = []

    def add(qtype, blocks_u8, note):
        blocks_u8 = np.ascontiguousarray(blocks_u8, dtype=np.uint8)
        n_blocks = blocks_u8.shape[0]
        block, size = GGML_QUANT_SIZES[qtype]
        assert blocks_u8.shape == (n_blocks, size), (qtype.name, blocks_u8.shape)
        # one row of n_blocks*block elements
        row = blocks_u8.reshape(1, n_blocks * size)
        expected = gguf.quants.dequantize(row, qtype).astype(np.float32).reshape(-1)
        assert expected.size == n_blocks * block
        assert np.all(np.isfinite(expected)), qtype.name
        cases.append({
            "type": qtype.name,
            "id": int(qtype),
            "n_elements": int(expected.size),
            "source": note,
            "blocks": blocks_u8.tobytes().hex(),
            "expected_f32_le": expected.astype("<f4").tobytes().hex(),
        })

    # Plain floats.
    x = rng.normal(0, 1, size=64).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e-30, 65504.0]
    add(T.F32, x.view(np.uint8).reshape(64, 4), "random normal f32")
    h = rng.normal(0, 2, size=64).astype(np.float16)
    h[:3] = [np.float16(6e-8), np.float16(-0.0), np.float16(65504)]  # subnormal, -0, max
    add(T.F16, h.view(np.uint8).reshape(64, 2), "random normal f16 incl. subnormal")
    b = gguf.quants.quantize(rng.normal(0, 3, size=(1, 64)).astype(np.float32), T.BF16)
    add(T.BF16, b.reshape(64, 2), "gguf.quants.quantize(BF16)")

    # Types the package can quantize: real quantized blocks of random data.
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        block, size = GGML_QUANT_SIZES[qtype]
        n_blocks = 4
        data = rng.normal(0, 1, size=(1, n_blocks * block)).astype(np.float32)
        data[0, :block] *= 0.01  # one block with a small scale
        q = gguf.quants.quantize(data, qtype)
        add(qtype, q.reshape(n_blocks, size), f"gguf.quants.quantize({qtype.name}) of N(0,1) data")
        # and random bytes with a finite scale, covering every nibble/bit pattern
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        raw[:, 0:2] = f16_bytes(rng.uniform(-0.1, 0.1, size=n_blocks)).reshape(n_blocks, 2)
        if qtype in (T.Q4_1, T.Q5_1):
            raw[:, 2:4] = f16_bytes(rng.uniform(-1, 1, size=n_blocks)).reshape(n_blocks, 2)
        add(qtype, raw, "random bytes, finite f16 scale(s)")

    # Types it can only dequantize: random blocks with valid scales.
    for qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS):
        n_blocks = 2 if GGML_QUANT_SIZES[qtype][0] == 256 else 4
        add(qtype, random_blocks(rng, qtype, n_blocks), "random bytes, finite f16 scale(s)")

    doc = {
        "generator": "tools/reference/gguf_dequant_vectors.py",
        "gguf_version": getattr(gguf, "__version__", None) or _pkg_version(),
        "numpy": np.__version__,
        "seed": SEED,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out} ({os.path.getsize(args.out)} bytes)")


def _pkg_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
