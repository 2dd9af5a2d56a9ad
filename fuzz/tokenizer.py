"""Fuzz target: the tokenizer of the real SmolLM2 vocabulary, from untrusted text and ids.

The model is loaded once (vocab_only). Each input chooses an operation and its arguments:

- encode arbitrary bytes or str, with and without add_special/parse_special: the ids are in
  the vocabulary; text that is valid Unicode tokenizes, and anything else raises
  TokenizeError; without special handling, decode(encode(text)) == text (byte-level BPE is
  lossless);
- decode arbitrary id lists: ids outside the vocabulary raise TokenizeError, others give str;
- StreamingDetokenizer over random ids: the segments joined equal decode() of all ids;
- token_to_piece of any id.

Any exception other than these documented ones, a failed invariant, or a native crash is a
finding.

    python -m fuzz.tokenizer -max_total_time=600 fuzz/corpus/tokenizer
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

import llama_webgpu as lw
from fuzz.common import run
from llama_webgpu.modelinfo import read_gguf

MODEL = lw.Model(lw.model_path(), vocab_only=True, device="cpu")
TOK = MODEL.tokenizer
N = TOK.n_vocab


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: the character standing for each byte in the vocab."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(others)}}


_VOCAB = set(read_gguf(lw.model_path()).metadata["tokenizer.ggml.tokens"])
MISSING = bytes(b for b, c in _byte_chars().items() if c not in _VOCAB)
"""Bytes the vocabulary has no token for (SmolLM2: 0x04 0x06 0x13 0x14 0x16 0x1D); llama.cpp's
BPE tokenizer drops them from the text, so round trips are checked without them."""


def without_missing(data: bytes) -> bytes:
    return data.translate(None, MISSING)


SEEDS = [
    b"\x00Hello world!",
    b"\x01<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "\x02caf\u00e9 \u4f60\u597d \U0001f642 \u0915\u094d\u0937 \r\n\t  x".encode(),
    b"\x03\xff\xfe\x80\xc3",
    b"\x04" + bytes(range(1, 64)),
    b"\x05" + (1).to_bytes(4, "little") + (49151).to_bytes(4, "little") + b"\xff\xff\xff\x7f",
]


def is_unicode(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_ids(ids: list[int]) -> None:
    assert isinstance(ids, list)
    assert all(isinstance(t, int) and 0 <= t < N for t in ids), ids


def encode_bytes(fdp: atheris.FuzzedDataProvider) -> None:
    add_special, parse_special = fdp.ConsumeBool(), fdp.ConsumeBool()
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        ids = TOK.encode(data, add_special=add_special, parse_special=parse_special)
    except lw.TokenizeError:
        assert not is_unicode(data), data  # valid UTF-8 must tokenize
        return
    assert is_unicode(data), data  # invalid UTF-8 must raise
    check_ids(ids)
    if not add_special and not parse_special:
        assert TOK.decode_bytes(ids) == without_missing(data), (data, ids)


def encode_str(fdp: atheris.FuzzedDataProvider) -> None:
    add_special, parse_special = fdp.ConsumeBool(), fdp.ConsumeBool()
    text = fdp.ConsumeUnicode(fdp.remaining_bytes())
    try:
        ids = TOK.encode(text, add_special=add_special, parse_special=parse_special)
    except lw.TokenizeError:
        # only text that is not valid Unicode (a lone surrogate) may be refused
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text), repr(text)
        return
    check_ids(ids)
    assert isinstance(TOK.decode(ids, special=True), str)
    if not add_special and not parse_special:
        assert TOK.decode_bytes(ids) == without_missing(text.encode()), (text, ids)


def ids_from(fdp: atheris.FuzzedDataProvider, in_vocab: bool) -> list[int]:
    count = fdp.ConsumeIntInRange(0, 64)
    if in_vocab:
        return fdp.ConsumeIntListInRange(count, 0, N - 1)
    return fdp.ConsumeIntListInRange(count, -(2**31), 2**31 - 1)


def decode(fdp: atheris.FuzzedDataProvider) -> None:
    special = fdp.ConsumeBool()
    ids = ids_from(fdp, in_vocab=False)
    try:
        text = TOK.decode(ids, special=special)
    except lw.TokenizeError:
        assert any(not 0 <= t < N for t in ids), ids
        return
    assert all(0 <= t < N for t in ids), ids
    assert isinstance(text, str)


def stream(fdp: atheris.FuzzedDataProvider) -> None:
    special = fdp.ConsumeBool()
    ids = ids_from(fdp, in_vocab=True)
    detok = TOK.detokenizer(special=special)
    segments = [detok.add_token(t) for t in ids]
    segments.append(detok.finalize())
    assert all(isinstance(s, str) for s in segments)
    joined = "".join(segments)
    assert joined == detok.text
    assert joined == TOK.decode(ids, special=special), (ids, joined)


def piece(fdp: atheris.FuzzedDataProvider) -> None:
    token = fdp.ConsumeIntInRange(-(2**31), 2**31 - 1)
    try:
        out = TOK.token_to_piece(token, special=fdp.ConsumeBool())
    except lw.TokenizeError:
        assert not 0 <= token < N, token
        return
    assert isinstance(out, bytes)


OPERATIONS = [encode_bytes, encode_str, decode, stream, piece]


def target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    OPERATIONS[fdp.ConsumeIntInRange(0, len(OPERATIONS) - 1)](fdp)


def seed(folder: Path) -> None:
    for i, data in enumerate(SEEDS):
        (folder / f"seed-{i}").write_bytes(data)


def main() -> None:
    run(target, sys.argv, seed)


if __name__ == "__main__":
    main()
