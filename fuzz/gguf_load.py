"""Fuzz target: the GGUF load path, from untrusted bytes.

Each input is written to a file in /dev/shm and read the ways llama-webgpu reads a model file:

1. `modelinfo.read_gguf` (gguf.h's gguf_init_from_file with no_alloc, then every key and
   tensor info through our Python), and the facts `llama-webgpu info` derives from it
   (`memory_estimate`, `report` with the CPU pre-flight check);
2. `Model(path, vocab_only=True, device="cpu")`: llama.cpp's model loader and vocabulary
   parsers, and, when that loads, the tokenizer over a fixed text, every token's piece and the
   model's metadata accessors.

Expected failures are llama-webgpu's exceptions (`ModelLoadError`, `TokenizeError`, other
`LlamaError`s); any other exception, or a native crash, is a finding.

    python -m fuzz.gguf_load -max_total_time=1200 fuzz/corpus/gguf
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import llama_webgpu as lw
from fuzz.common import run
from llama_webgpu._native import ffi, lib
from llama_webgpu.modelinfo import GGUFInfo, memory_estimate, read_gguf, report

SCRATCH = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
PATH = SCRATCH / f"lw-fuzz-gguf-{os.getpid()}.gguf"
TEXT = "Hello world! <s></s><|im_start|>user\n[CLS] 12 345 éàü 你好 🙂\t\r\n  x"
MAX_PIECES = 512
"""Tokens whose piece is read (from the start of the vocabulary) per loaded input."""


def check_vocab(model: lw.Model, tokenize: bool) -> None:
    tok = model.tokenizer
    n = tok.n_vocab
    assert n >= 0, n
    for text in (TEXT, b"\xff\xfe\x80 bytes", "") if tokenize else ():
        for parse_special in (False, True):
            try:
                ids = tok.encode(text, add_special=True, parse_special=parse_special)
            except lw.TokenizeError:
                continue
            assert all(0 <= t < n for t in ids), (ids, n)
            assert isinstance(tok.decode(ids), str)
            assert isinstance(tok.decode(ids, special=True), str)
    for t in range(min(n, MAX_PIECES)):
        assert isinstance(tok.token_to_piece(t), bytes)
        tok.is_eog(t)
    for special in (tok.bos, tok.eos, tok.eot):
        if special is not None and 0 <= special < n:
            tok.token_to_piece(special)
    assert isinstance(model.metadata, dict)
    assert isinstance(model.description, str)
    model.chat_template  # noqa: B018


def _vocab_keys(path: Path) -> tuple[bytes, list[bytes] | None, bool] | None:
    """What llama.cpp's vocabulary loader reads (C strings): tokenizer.ggml.model, the token
    texts, and whether a precompiled charsmap is there; None if gguf.h rejects the file."""
    params = ffi.new("struct gguf_init_params *")
    params.no_alloc = True
    g = lib.gguf_init_from_file(os.fsencode(path), params[0])
    if g == ffi.NULL:
        return None
    try:
        model = b""
        key = lib.gguf_find_key(g, b"tokenizer.ggml.model")
        if key >= 0 and lib.gguf_get_kv_type(g, key) == lib.GGUF_TYPE_STRING:
            model = ffi.string(lib.gguf_get_val_str(g, key))
        texts = None
        key = lib.gguf_find_key(g, b"tokenizer.ggml.tokens")
        if (
            key >= 0
            and lib.gguf_get_kv_type(g, key) == lib.GGUF_TYPE_ARRAY
            and lib.gguf_get_arr_type(g, key) == lib.GGUF_TYPE_STRING
        ):
            n = lib.gguf_get_arr_n(g, key)
            texts = [ffi.string(lib.gguf_get_arr_str(g, key, i)) for i in range(n)]
        charsmap = lib.gguf_find_key(g, b"tokenizer.ggml.precompiled_charsmap") >= 0
        return model, texts, charsmap
    finally:
        lib.gguf_free(g)


def _rwkv_unescape(text: bytes) -> bytes:
    """llama_unescape_rwkv_token (llama-vocab.cpp) in Python, byte arithmetic included."""
    out = bytearray()
    escaping, hex_left, acc = False, 0, 0
    for c in text:
        if hex_left:
            # char is signed there: bytes >= 0x80 are below 'a'
            acc = ((acc << 4) + ((c - 87) if 97 <= c < 128 else (c - 48))) & 0xFF
            hex_left -= 1
            if not hex_left:
                out.append(acc)
                acc = 0
        elif escaping:
            escaping = False
            if c == 0x78:  # x
                hex_left = 2
            else:
                out.append({0x74: 9, 0x6E: 10, 0x72: 13}.get(c, c))
        elif c == 0x5C:  # backslash
            escaping = True
        else:
            out.append(c)
    return bytes(out)


def _ggml_rejects(shape: tuple[int, ...]) -> bool:
    """ggml_new_tensor_impl's element-count check (ggml.c), which skips dimensions of 0 and 1
    where gguf.cpp's multiplies by them: a shape like (2**50, 0, 2**27) passes gguf's check
    (0 elements) and then fails ggml's GGML_ASSERT."""
    ne = [*shape, 1, 1, 1][:4]
    count = ne[0]
    for n in ne[1:]:
        if n > 1:
            if not (2**63 - 1) // n > count:
                return True
            count *= n
    return False


def known_aborts(path: Path, info: GGUFInfo | None) -> tuple[str | None, str | None]:
    """(why loading, why tokenizing) this file would hit a native abort already found and
    reported (docs/reliability.md, "Fuzzing"), so that the fuzzer skips that step and looks
    for new failures. LW_FUZZ_KNOWN=1 turns the skipping off (to reproduce those aborts)."""
    keys = _vocab_keys(path)
    if os.environ.get("LW_FUZZ_KNOWN") == "1" or keys is None:
        return None, None
    # (an SPM vocabulary without a byte token and a bad Unigram charsmap threw through
    # llama_tokenize: TokenizeError since patches/0008, so the fuzzer no longer skips them)
    model, texts, _charsmap = keys
    if info is not None and any(_ggml_rejects(t.shape) for t in info.tensors):
        return "empty tensor with an element count over INT64_MAX (GGML_ASSERT in ggml.c)", None
    if info is not None and model in (b"no_vocab", b"none"):
        size = info.arch_key("vocab_size", 0)
        if isinstance(size, int) and size > 1 << 20:
            return (
                "no_vocab with a huge vocab_size (resize to GBs in llama_vocab::impl::load)",
                None,
            )
    if info is not None and model == b"bert":
        types = info.metadata.get("tokenizer.ggml.token_type")
        if isinstance(types, list) and 6 in types[: len(texts or ())]:
            return "WordPiece token of type BYTE (GGML_ABORT in token_to_byte)", None
    if texts is not None:
        words = [t or b"[EMPTY_%d]" % i for i, t in enumerate(texts)]
        if len(set(words)) != len(words):
            return "duplicate token texts (GGML_ASSERT in llama_vocab::impl::load)", None
    if model == b"rwkv" and not all(
        bytes([b]) in {_rwkv_unescape(t) for t in texts or ()} for b in range(256)
    ):
        return None, "RWKV vocabulary without a one-byte token (endless loop in tokenize)"
    return None, None


def target(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        info = read_gguf(PATH)
    except lw.ModelLoadError:
        info = None
    else:
        memory_estimate(info, 0)
        report(info, None)
    skip_load, skip_tokenize = known_aborts(PATH, info)
    if skip_load:
        return
    try:
        model = lw.Model(PATH, vocab_only=True, device="cpu")
    except lw.ModelLoadError:
        return
    try:
        check_vocab(model, tokenize=not skip_tokenize)
    except lw.LlamaError:
        pass
    finally:
        model.close()


def seed(folder: Path) -> None:
    from fuzz.seeds import write_seeds

    write_seeds(folder)


def main() -> None:
    try:
        run(target, sys.argv, seed)
    finally:
        PATH.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
