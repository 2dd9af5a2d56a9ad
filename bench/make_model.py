#!/usr/bin/env python3
"""GGUF files with the exact shapes of real models and random weights, for speed measurements.

Speed does not depend on weight values, and the GPU machine reaches no model hub and takes at
most 64 MiB of files per call, so large models are made there:

    python bench/make_model.py shape llama-1b  OUT.gguf   # Llama-3.2-1B shapes, F16 weights
    python bench/make_model.py shape llama-8b  OUT.gguf   # Llama-3.1-8B shapes, F16 weights
    llama-quantize OUT.gguf OUT-Q4_K_M.gguf Q4_K_M        # then quantize as usual

and small real files travel without their weights and get random ones there:

    python bench/make_model.py head REAL.gguf OUT.head   # metadata + tensor table (a few MB)
    python bench/make_model.py fill OUT.head OUT.gguf    # the same file, random tensor data

`shape` files carry a synthetic SentencePiece-style vocabulary of the right size (control, byte
and filler tokens), so they load, tokenize and generate; text is meaningless. `fill` writes bytes
in [0, 0x3b] only, so every f16/f32 value in the file is finite (no NaN or infinity in scales or
norms). Only numpy is needed (the GPU machine has no gguf package): the writer is below.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# gguf value types
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64 = 4, 5, 6, 7, 8, 9, 10
# ggml tensor types
GGML_F32, GGML_F16 = 0, 1

# token types (llama.cpp's llama_token_type)
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_BYTE = 1, 2, 3, 6


@dataclass(frozen=True)
class Shape:
    """The hyperparameters that decide a Llama-architecture model's tensor shapes."""

    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    rope_base: float
    n_ctx_train: int
    tied_output: bool


SHAPES = {
    # published configurations (config.json of meta-llama/Llama-3.2-1B and Llama-3.1-8B)
    "llama-1b": Shape("Llama-3.2-1B shape", 16, 2048, 8192, 32, 8, 128256, 500000.0, 131072, True),
    "tiny": Shape("tiny Llama shape (tests)", 2, 256, 512, 4, 2, 1000, 10000.0, 4096, True),
    "llama-8b": Shape(
        "Llama-3.1-8B shape", 32, 4096, 14336, 32, 8, 128256, 500000.0, 131072, False
    ),
}


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value) -> bytes:
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == T_STRING:
        return out + _str(value)
    if vtype == T_ARRAY:
        etype, items = value
        out += struct.pack("<IQ", etype, len(items))
        if etype == T_STRING:
            return out + b"".join(_str(s) for s in items)
        fmt = {T_FLOAT32: "f", T_INT32: "i", T_UINT32: "I"}[etype]
        return out + np.asarray(items, dtype="<" + fmt).tobytes()
    fmt = {T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q"}[vtype]
    return out + struct.pack(fmt, value)


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TOK_UNKNOWN, TOK_CONTROL, TOK_CONTROL] + [TOK_BYTE] * 256
    n_fill = n_vocab - len(tokens)
    tokens += [f"\u2581w{i}" for i in range(n_fill)]
    types += [TOK_NORMAL] * n_fill
    scores = [0.0] * 259 + [-float(i) for i in range(n_fill)]
    return tokens, scores, types


def write_shape(shape: Shape, out: Path, seed: int = 0) -> None:
    head_dim = shape.n_embd // shape.n_head
    kvs = [
        _kv("general.architecture", T_STRING, "llama"),
        _kv("general.name", T_STRING, f"{shape.name}, random weights"),
        _kv("general.file_type", T_UINT32, 1),  # mostly F16
        _kv("general.alignment", T_UINT32, ALIGNMENT),
        _kv("llama.block_count", T_UINT32, shape.n_layer),
        _kv("llama.context_length", T_UINT32, shape.n_ctx_train),
        _kv("llama.embedding_length", T_UINT32, shape.n_embd),
        _kv("llama.feed_forward_length", T_UINT32, shape.n_ff),
        _kv("llama.attention.head_count", T_UINT32, shape.n_head),
        _kv("llama.attention.head_count_kv", T_UINT32, shape.n_head_kv),
        _kv("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, 1e-5),
        _kv("llama.rope.freq_base", T_FLOAT32, shape.rope_base),
        _kv("llama.rope.dimension_count", T_UINT32, head_dim),
        _kv("llama.vocab_size", T_UINT32, shape.n_vocab),
    ]
    tokens, scores, types = _vocab(shape.n_vocab)
    kvs += [
        _kv("tokenizer.ggml.model", T_STRING, "llama"),
        _kv("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, tokens)),
        _kv("tokenizer.ggml.scores", T_ARRAY, (T_FLOAT32, scores)),
        _kv("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, types)),
        _kv("tokenizer.ggml.unknown_token_id", T_UINT32, 0),
        _kv("tokenizer.ggml.bos_token_id", T_UINT32, 1),
        _kv("tokenizer.ggml.eos_token_id", T_UINT32, 2),
        _kv("tokenizer.ggml.add_bos_token", T_BOOL, True),
    ]

    # (name, ggml dims innermost first, type)
    E, F, V, kv = shape.n_embd, shape.n_ff, shape.n_vocab, shape.n_head_kv * head_dim
    tensors = [("token_embd.weight", (E, V), GGML_F16), ("output_norm.weight", (E,), GGML_F32)]
    if not shape.tied_output:
        tensors.append(("output.weight", (E, V), GGML_F16))
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (E,), GGML_F32),
            (p + "attn_q.weight", (E, E), GGML_F16),
            (p + "attn_k.weight", (E, kv), GGML_F16),
            (p + "attn_v.weight", (E, kv), GGML_F16),
            (p + "attn_output.weight", (E, E), GGML_F16),
            (p + "ffn_norm.weight", (E,), GGML_F32),
            (p + "ffn_gate.weight", (E, F), GGML_F16),
            (p + "ffn_up.weight", (E, F), GGML_F16),
            (p + "ffn_down.weight", (F, E), GGML_F16),
        ]

    infos, offset = [], 0
    for name, dims, ttype in tensors:
        nbytes = int(np.prod(dims)) * (4 if ttype == GGML_F32 else 2)
        infos.append(
            _str(name)
            + struct.pack("<I", len(dims))
            + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ttype, offset)
        )
        offset += -(-nbytes // ALIGNMENT) * ALIGNMENT

    # one random block, reused for every matrix: values do not change speed
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype("<f2").tobytes()
    with open(out, "wb") as f:
        f.write(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs)))
        f.write(b"".join(kvs) + b"".join(infos))
        f.write(b"\0" * (-f.tell() % ALIGNMENT))
        for _name, dims, ttype in tensors:
            n = int(np.prod(dims))
            if ttype == GGML_F32:
                data = np.ones(n, dtype="<f4").tobytes()
            else:
                reps, rest = divmod(2 * n, len(block))
                for _ in range(reps):
                    f.write(block)
                data = block[:rest]
            f.write(data)
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
    print(f"{out}: {shape.name}, {len(tensors)} tensors, {out.stat().st_size / 2**30:.2f} GiB")


def data_offset(path: Path) -> int:
    """Where tensor data starts in a GGUF file (after the header, key/values and tensor table)."""
    with open(path, "rb") as f:
        buf = f.read(64 << 20)
    pos = 4  # after the magic

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return vals if len(vals) > 1 else vals[0]

    def skip_value(vtype: int) -> None:
        nonlocal pos
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if vtype == T_STRING:
            n = take("<Q")
            pos += n
        elif vtype == T_ARRAY:
            etype, count = take("<IQ")
            for _ in range(count) if etype in (T_STRING, T_ARRAY) else ():
                skip_value(etype)
            if etype not in (T_STRING, T_ARRAY):
                pos += sizes[etype] * count
        else:
            pos += sizes[vtype]

    if buf[:4] != GGUF_MAGIC:
        sys.exit(f"{path} is not a GGUF file")
    _, n_tensors, n_kv = take("<IQQ")
    alignment = ALIGNMENT
    for _ in range(n_kv):
        klen = take("<Q")
        key = buf[pos : pos + klen].decode()
        pos += klen
        vtype = take("<I")
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", buf, pos)[0]
        skip_value(vtype)
    for _ in range(n_tensors):
        n = take("<Q")
        pos += n
        n_dims = take("<I")
        pos += 8 * n_dims + 4 + 8
    return -(-pos // alignment) * alignment


def write_head(src: Path, out: Path) -> None:
    start = data_offset(src)
    with open(src, "rb") as f:
        out.write_bytes(f.read(start))
    meta = {"source": src.name, "data_offset": start, "size": src.stat().st_size}
    Path(str(out) + ".json").write_text(json.dumps(meta))
    print(f"{out}: {start} bytes of {meta['size']} ({src.name})")


def fill(head: Path, out: Path, seed: int = 0) -> None:
    meta = json.loads(Path(str(head) + ".json").read_text())
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 0x3C, size=1 << 24, dtype=np.uint8).tobytes()
    remaining = meta["size"] - meta["data_offset"]
    with open(out, "wb") as f:
        f.write(head.read_bytes())
        while remaining > 0:
            chunk = block[: min(remaining, len(block))]
            f.write(chunk)
            remaining -= len(chunk)
    print(f"{out}: {meta['source']} with random tensor data, {meta['size']} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("shape", help="random F16 weights in a known model's shapes")
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out", type=Path)
    p = sub.add_parser("head", help="a real GGUF's metadata and tensor table, no weights")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("fill", help="a head file completed with random tensor data")
    p.add_argument("head", type=Path)
    p.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "shape":
        write_shape(SHAPES[args.shape], args.out)
    elif args.cmd == "head":
        write_head(args.src, args.out)
    else:
        fill(args.head, args.out)


if __name__ == "__main__":
    main()
