"""Small valid GGUF files to start the GGUF fuzzer from, written with the gguf package.

The seeds cover each vocabulary parser llama.cpp has (BPE, SentencePiece, WordPiece, Unigram
with a precompiled charsmap, RWKV, PLaMo-2, none) and a few tensor-carrying files for gguf.cpp's
tensor-info parser. The BPE seed is a slice of the real SmolLM2 vocabulary (its first tokens, the
merges among them, its special tokens and metadata), so it stays a few kilobytes.

    python -m fuzz.seeds fuzz/corpus/gguf      # writes the seeds into that folder
"""

from __future__ import annotations

import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

N_BPE_TOKENS = 400
"""Tokens of the SmolLM2 slice (plus the merges whose parts and result are among them)."""

Writer = Callable[[GGUFWriter], None]


def _smollm2_vocab() -> dict:
    import llama_webgpu as lw
    from llama_webgpu.modelinfo import read_gguf

    return read_gguf(lw.model_path()).metadata


def _bpe(meta: dict) -> Writer:
    tokens = meta["tokenizer.ggml.tokens"][:N_BPE_TOKENS]
    types = meta["tokenizer.ggml.token_type"][:N_BPE_TOKENS]
    known = set(tokens)
    merges = [
        m
        for m in meta["tokenizer.ggml.merges"]
        if m.count(" ") == 1 and set(m.split(" ")) <= known and m.replace(" ", "") in known
    ]

    def write(w: GGUFWriter) -> None:
        for key in ("general.basename", "general.size_label"):
            w.add_string(key, meta[key])
        w.add_uint32("llama.context_length", meta["llama.context_length"])
        w.add_uint32("llama.vocab_size", len(tokens))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
        w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
        w.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
        w.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
        w.add_add_bos_token(False)
        w.add_chat_template(meta["tokenizer.chat_template"])

    return write


def _words(meta: dict, n: int) -> list[str]:
    """Plain words of the SmolLM2 vocabulary ("Ġthe" and the like), for the other vocab types."""
    out = []
    for t in meta["tokenizer.ggml.tokens"][N_BPE_TOKENS:]:
        if t.isascii() and t.replace("Ġ", "").isalpha() and t not in out:
            out.append(t)
        if len(out) == n:
            break
    return out


def _spm(meta: dict) -> Writer:
    special = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    words = [w.replace("Ġ", "\u2581") for w in _words(meta, 120)]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581"]
    tokens = special + byte_tokens + letters + words
    types = (
        [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
        + [TokenType.BYTE] * 256
        + [TokenType.NORMAL] * (len(letters) + len(words))
    )
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(letters) + len(words))]

    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)

    return write


def _wpm(meta: dict) -> Writer:
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]"]
    special.append("[MASK]")
    # llama.cpp's WordPiece vocabularies mark word starts with U+2581 (converted from BERT's
    # "##" continuation prefix the other way round)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = [w.replace("Ġ", "\u2581") for w in _words(meta, 80) if w.startswith("Ġ")]
    tokens = special + letters + ["\u2581" + c for c in letters] + list(dict.fromkeys(words))
    types = [TokenType.CONTROL] * len(special) + [TokenType.NORMAL] * (len(tokens) - len(special))

    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("bert")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_bos_token_id(101)
        w.add_sep_token_id(102)
        w.add_unk_token_id(100)
        w.add_pad_token_id(0)
        w.add_mask_token_id(103)

    return write


def _charsmap() -> bytes:
    """A small valid precompiled charsmap mapping "A" to "a": a 256-unit XOR-compressed double
    array (root base 0, so byte c goes to unit c; unit 0x41 matches "A" as a leaf whose value
    unit, 0x41 ^ 0xC1 = 0x80, holds offset 0 of the replacement strings), then b"a\\0"."""
    units = [0] * 256
    units[0x41] = (0xC1 << 10) | (1 << 8) | 0x41  # BASE 0xC1, LEAF, LCHECK "A"
    units[0x80] = (1 << 31) | 0  # value node: replacement at offset 0
    blob = struct.pack("<256I", *units)
    return struct.pack("<I", len(blob)) + blob + b"a\0"


def _ugm(meta: dict) -> Writer:
    special = ["<pad>", "</s>", "<unk>"]
    words = [w.replace("Ġ", "\u2581") for w in _words(meta, 100)]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581"]
    tokens = special + letters + words
    types = [TokenType.CONTROL, TokenType.CONTROL, TokenType.UNKNOWN]
    types += [TokenType.NORMAL] * (len(tokens) - 3)
    scores = [0.0] * 3 + [-1.0 - 0.01 * i for i in range(len(tokens) - 3)]

    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("t5")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_eos_token_id(1)
        w.add_unk_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_space_prefix(True)
        w.add_remove_extra_whitespaces(True)
        w.add_precompiled_charsmap(_charsmap())

    return write


def _rwkv(meta: dict) -> Writer:
    # RWKV vocabularies hold tokens as Python-escaped strings
    tokens = ["<s>"] + [f"\\x{b:02x}" for b in range(256)]
    tokens += [repr(w.replace("Ġ", " "))[1:-1] for w in _words(meta, 60)]

    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("rwkv")
        w.add_token_list(tokens)
        w.add_token_types([TokenType.CONTROL] + [TokenType.NORMAL] * (len(tokens) - 1))

    return write


def _plamo2(meta: dict) -> Writer:
    special = ["<|plamo:unk|>", "<|plamo:bos|>", "<|plamo:eos|>", "<|plamo:pad|>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    words = [w.replace("Ġ", "\u2581") for w in _words(meta, 60)]
    tokens = special + byte_tokens + words
    types = [TokenType.UNKNOWN] + [TokenType.CONTROL] * 3 + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * len(words)
    scores = [0.0] * 260 + [-float(i) for i in range(len(words))]

    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("plamo2")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)

    return write


def _no_vocab(meta: dict) -> Writer:
    def write(w: GGUFWriter) -> None:
        w.add_tokenizer_model("no_vocab")
        w.add_uint32("llama.vocab_size", 16)

    return write


def _tensors(kinds: list[tuple[str, GGMLQuantizationType, tuple[int, ...]]]) -> Writer:
    """A file with tensors (random data) and a few keys of each scalar type."""

    def write(w: GGUFWriter) -> None:
        rng = np.random.default_rng(0)
        w.add_uint8("fuzz.u8", 7)
        w.add_int16("fuzz.i16", -3)
        w.add_uint64("fuzz.u64", 2**40)
        w.add_float64("fuzz.f64", 0.5)
        w.add_bool("fuzz.flag", True)
        w.add_array("fuzz.ints", [1, 2, 3])
        w.add_array("fuzz.strs", ["a", "bc"])
        w.add_tokenizer_model("no_vocab")
        for name, qtype, shape in kinds:
            if qtype == GGMLQuantizationType.F32:
                data = rng.standard_normal(shape, dtype=np.float32)
                w.add_tensor(name, data)
            elif qtype == GGMLQuantizationType.F16:
                w.add_tensor(name, rng.standard_normal(shape).astype(np.float16))
            else:  # raw quantized bytes: 18 bytes per block of 32 for Q4_0
                rows, cols = shape
                raw = rng.integers(0, 256, (rows, cols // 32 * 18), dtype=np.uint8)
                w.add_tensor(name, raw, raw_dtype=qtype)

    return write


def seeds(meta: dict) -> dict[str, Writer]:
    F32, F16, Q4_0 = GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q4_0
    return {
        "vocab-bpe-smollm2": _bpe(meta),
        "vocab-spm": _spm(meta),
        "vocab-wpm": _wpm(meta),
        "vocab-ugm": _ugm(meta),
        "vocab-rwkv": _rwkv(meta),
        "vocab-plamo2": _plamo2(meta),
        "vocab-none": _no_vocab(meta),
        "tensors-f32": _tensors([("token_embd.weight", F32, (4, 8)), ("norm", F32, (8,))]),
        "tensors-mixed": _tensors(
            [("a.weight", F16, (2, 3, 4)), ("b.weight", Q4_0, (2, 64)), ("c", F32, (1,))]
        ),
    }


def write_seeds(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write the seed GGUFs (every one, or those named) into folder (created if needed) as
    seed-NAME.gguf; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = _smollm2_vocab()
    out = []
    for name, write in seeds(meta).items():
        if names is not None and name not in names:
            continue
        path = folder / f"seed-{name}.gguf"
        w = GGUFWriter(path, "llama")
        w.add_name(f"fuzz seed {name}")
        write(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out.append(path)
    return out


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="lw-fuzz-seeds-")
    for path in write_seeds(folder):
        print(f"{path} {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
