#!/usr/bin/env python3
"""Writes the bit-exactness fixtures of the surplus-quant crate (crates/quant/tests/data/).

The expected values come from an implementation independent of ours: the `gguf` PyPI
package (gguf-py, version 0.19.0) with numpy. Its dequantizers perform the same f32
operations in the same order as ggml's reference C code (`dequantize_row_*` in
ggml-quants.c), so their output is bit-exact with it.

Outputs:
  blocks.json        random raw blocks of every type the crate supports, with their
                     dequantized values; plus f32 -> F16/BF16 conversions.
  real_tensors.json  tensors of the three test models: the first values and the sha256
                     of the whole dequantized tensor.

Usage: python3 scripts/make_quant_fixtures.py MODELS_DIR [OUT_DIR]
  MODELS_DIR holds the test models (normally ~/.cache/surplus/models).
  OUT_DIR defaults to crates/quant/tests/data next to this script.

Every f32 is written as its bit pattern: 8 hex digits per value (the u32, most
significant digit first), concatenated into one string. Raw bytes are plain hex.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

GGUF_PY_VERSION = "0.19.0"
SEED = 20240611

# Layout (elements per block, bytes per block) as ggml defines it. gguf-py's own table
# says 40 bytes for Q8_1; ggml's block_q8_1 is 36 (f16 d, f16 s, 32 x i8).
LAYOUT = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q8_1": (32, 36),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
}

# Byte offsets of each block's f16 scale fields (d, dmin, m, s), overwritten with sane
# finite values so that the outputs are finite. Q8_K's scale is an f32 at offset 0.
F16_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q8_1": [0, 2],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
    "IQ4_NL": [0],
    "IQ4_XS": [0],
}

# Per type: how many random blocks (elements for the float types).
N_BLOCKS = {"F32": 64, "F16": 64, "BF16": 64}
DEFAULT_BLOCKS_SMALL = 4  # 32-element blocks
DEFAULT_BLOCKS_K = 3  # 256-element blocks

# The test models: registry name -> file name in MODELS_DIR.
MODELS = {
    "smollm2-135m": "smollm2-135m-instruct-q4_1.gguf",
    "gemma3-270m": "gemma3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4.gguf",
}
TENSORS_PER_TYPE = 2
# Prefer tensors up to this many elements (keeps the Rust test fast); a type whose
# tensors are all bigger still gets its smallest one.
PREFERRED_MAX_ELEMENTS = 8 * 1024 * 1024
F32_HEAD = 64


def f32_bits_hex(values: np.ndarray) -> str:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).ravel()
    return "".join(f"{int(b):08x}" for b in bits)


def sane_f16(rng: np.random.Generator) -> np.float16:
    """A finite, non-zero f16 scale: random sign, magnitude 10^-4 .. 10^0.5."""
    mag = 10.0 ** rng.uniform(-4.0, 0.5)
    return np.float16(mag if rng.random() < 0.7 else -mag)


def finite_floats(rng: np.random.Generator, n: int, uint, flt) -> np.ndarray:
    """n random bit patterns of a float type (every exponent, subnormals and zeros
    included), with the non-finite ones redrawn."""
    bits = rng.integers(0, np.iinfo(uint).max, size=n, dtype=uint, endpoint=True)
    for _ in range(100):
        bad = ~np.isfinite(bits.view(flt).astype(np.float32))
        if not bad.any():
            break
        bits[bad] = rng.integers(0, np.iinfo(uint).max, size=int(bad.sum()), dtype=uint, endpoint=True)
    bits[:4] = np.array([0.0, -0.0, 1.0, -2.5], dtype=flt).view(uint)
    return bits


def random_blocks(name: str, rng: np.random.Generator) -> bytes:
    bs, ts = LAYOUT[name]
    if name == "F32":
        return finite_floats(rng, N_BLOCKS[name], np.uint32, np.float32).astype("<u4").tobytes()
    if name == "F16":
        return finite_floats(rng, N_BLOCKS[name], np.uint16, np.float16).astype("<u2").tobytes()
    if name == "BF16":
        # No numpy bf16 dtype: an f32 whose low 16 bits are zero has the same exponent.
        hi = finite_floats(rng, N_BLOCKS[name], np.uint32, np.float32) >> np.uint32(16)
        return hi.astype("<u2").tobytes()
    n = DEFAULT_BLOCKS_K if bs == 256 else DEFAULT_BLOCKS_SMALL
    raw = bytearray(rng.integers(0, 256, size=n * ts, dtype=np.uint8).tobytes())
    for b in range(n):
        base = b * ts
        if name == "Q8_K":
            d = np.float32(10.0 ** rng.uniform(-5.0, -1.0) * (1 if rng.random() < 0.7 else -1))
            raw[base : base + 4] = np.array([d], dtype="<f4").tobytes()
            continue
        for off in F16_FIELDS[name]:
            raw[base + off : base + off + 2] = np.array([sane_f16(rng)], dtype="<f2").tobytes()
        if b == 0:
            # One subnormal f16 scale, to cover that conversion too.
            raw[base + F16_FIELDS[name][0] : base + F16_FIELDS[name][0] + 2] = bytes([0x37, 0x02])
    return bytes(raw)


def reference_dequantize(name: str, raw: bytes) -> tuple[np.ndarray, str]:
    """(values, source): gguf-py's dequantizer, or the format definition in numpy for
    the types gguf-py cannot dequantize."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if name == "Q8_1":
        # Not in gguf-py (and ggml's C has no Q8_1 dequantizer): y = d * qs, the value the
        # format defines (ggml's dot products use it that way); s is not used.
        blocks = data.reshape(-1, 36)
        d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
        qs = blocks[:, 4:36].copy().view(np.int8).astype(np.float32)
        return (d * qs).ravel(), "numpy, from the format definition: y = f16(d) * qs"
    if name == "Q8_K":
        # Not in gguf-py: ggml's dequantize_row_q8_K computes y = d * qs with an f32 d.
        blocks = data.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view("<f4")
        qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * qs).ravel(), "numpy, from the format definition: y = f32(d) * qs"
    out = dequantize(data, T[name]).astype(np.float32, copy=False)
    return out.ravel(), f"gguf-py {GGUF_PY_VERSION} gguf.quants.dequantize"


def conversions(rng: np.random.Generator) -> dict:
    """f32 -> F16 (numpy, round to nearest even) and f32 -> BF16 (gguf-py, ggml's
    rounding: nearest even, NaN made quiet) on tricky inputs."""
    specials = np.array(
        [
            0x00000000, 0x80000000, 0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001,
            0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF,
            0x477FE000, 0x477FF000, 0x38800000, 0x33800000, 0x33000001, 0x7FC00000,
            0x7F800001, 0xFFA00000,
        ],
        dtype=np.uint32,
    )
    bits = np.concatenate([specials, rng.integers(0, 2**32, size=44, dtype=np.uint32)])
    x = bits.view(np.float32)
    # f16 of NaN differs between libraries in the payload kept; the test skips NaN inputs
    # for F16 and checks only that the output is a NaN.
    with np.errstate(over="ignore", invalid="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    bf16 = gguf.quants.quantize(x.reshape(1, -1), T.BF16).view("<u2").ravel()
    return {
        "input_f32_bits": "".join(f"{int(b):08x}" for b in bits),
        "f16_bits": "".join(f"{int(b):04x}" for b in f16),
        "bf16_bits": "".join(f"{int(b):04x}" for b in bf16),
        "f16_source": "numpy astype(float16)",
        "bf16_source": f"gguf-py {GGUF_PY_VERSION} gguf.quants.quantize(BF16)",
    }


def make_blocks(out_dir: Path) -> None:
    rng = np.random.default_rng(SEED)
    types = []
    for name in LAYOUT:
        raw = random_blocks(name, rng)
        values, source = reference_dequantize(name, raw)
        assert values.size == len(raw) // LAYOUT[name][1] * LAYOUT[name][0], name
        assert np.isfinite(values).all(), name
        types.append({"type": name, "source": source, "blocks": raw.hex(), "expected_f32_bits": f32_bits_hex(values)})
    doc = {
        "about": "Random raw blocks and their dequantized values (f32 bit patterns); "
        "written by scripts/make_quant_fixtures.py",
        "seed": SEED,
        "types": types,
        "conversions": conversions(rng),
    }
    (out_dir / "blocks.json").write_text(json.dumps(doc, indent=1) + "\n")


def pick_tensors(reader: gguf.GGUFReader) -> list:
    by_type: dict[str, list] = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t)
    chosen = []
    for name in sorted(by_type):
        ts = by_type[name]
        small = [t for t in ts if int(t.n_elements) <= PREFERRED_MAX_ELEMENTS]
        picked = small[:TENSORS_PER_TYPE] or [min(ts, key=lambda t: int(t.n_elements))]
        chosen.extend(picked)
    return chosen


def make_real(models_dir: Path, out_dir: Path) -> None:
    models = []
    for model, file in MODELS.items():
        reader = gguf.GGUFReader(models_dir / file)
        tensors = []
        for t in pick_tensors(reader):
            name = t.tensor_type.name
            if name not in LAYOUT:
                raise SystemExit(f"{file}: tensor {t.name} has type {name}, not covered by the crate")
            values = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).ravel()
            assert values.size == int(t.n_elements)
            bs = LAYOUT[name][0]
            head = F32_HEAD if bs == 1 else 2 * bs
            tensors.append(
                {
                    "name": t.name,
                    "type": name,
                    "shape": [int(d) for d in t.shape],
                    "head_f32_bits": f32_bits_hex(values[:head]),
                    "sha256": hashlib.sha256(values.astype("<f4").tobytes()).hexdigest(),
                }
            )
        models.append({"model": model, "file": file, "tensors": tensors})
    doc = {
        "about": "Tensors of the test models dequantized by gguf-py "
        f"{GGUF_PY_VERSION}: the first values (two blocks, or {F32_HEAD} elements of F32) "
        "as f32 bit patterns, and the sha256 of the whole tensor as little-endian f32; "
        "written by scripts/make_quant_fixtures.py",
        "models": models,
    }
    (out_dir / "real_tensors.json").write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    models_dir = Path(sys.argv[1]).expanduser()
    default_out = Path(__file__).resolve().parent.parent / "crates" / "quant" / "tests" / "data"
    out_dir = Path(sys.argv[2]) if len(sys.argv) == 3 else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    make_blocks(out_dir)
    make_real(models_dir, out_dir)
    for f in ("blocks.json", "real_tensors.json"):
        print(f"{out_dir / f}: {(out_dir / f).stat().st_size} bytes")


if __name__ == "__main__":
    main()
