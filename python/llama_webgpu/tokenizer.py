"""Text <-> tokens with a model's vocabulary, and a streaming detokenizer for generation."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ._native import ffi, lib
from .errors import TokenizeError

if TYPE_CHECKING:
    from .model import Model


class Tokenizer:
    """The vocabulary of a loaded model. Thread-safe (llama.cpp's tokenizer is)."""

    def __init__(self, model: Model):
        self.model = model  # keeps the vocabulary alive

    @property
    def _vocab(self):
        return self.model.vocab

    @property
    def n_vocab(self) -> int:
        return int(lib.llama_vocab_n_tokens(self._vocab))

    @property
    def bos(self) -> int | None:
        return _opt(lib.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int | None:
        return _opt(lib.llama_vocab_eos(self._vocab))

    @property
    def eot(self) -> int | None:
        return _opt(lib.llama_vocab_eot(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(lib.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT and the like)."""
        return bool(lib.llama_vocab_is_eog(self._vocab, self.check_token(token)))

    def is_control(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_control(self._vocab, self.check_token(token)))

    @functools.cached_property
    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token (a scan of the vocabulary, done once)."""
        return frozenset(t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, t))

    def check_token(self, token: int) -> int:
        """token, if it is a valid id of this vocabulary; else TokenizeError."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"token ids are ints, not {type(token).__name__}")
        if not 0 <= token < self.n_vocab:
            raise TokenizeError(
                f"token id {token} is outside the vocabulary (0..{self.n_vocab - 1})"
            )
        return token

    def check_tokens(self, tokens: Iterable[int]) -> list[int]:
        return [self.check_token(t) for t in tokens]

    def encode(
        self, text: str | bytes, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokens of text. add_special adds BOS/EOS as the model wants; parse_special turns
        special-token text such as "<|im_start|>" into those tokens instead of plain text."""
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, bytes | bytearray | memoryview):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        if len(data) >= 2**31 - 1:
            raise TokenizeError("text is too long to tokenize (2 GiB or more)")
        capacity = len(data) + 8
        while True:
            out = ffi.new("llama_token[]", capacity)
            n = lib.llama_tokenize(
                self._vocab, data, len(data), out, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(ffi.unpack(out, n))
            if n == -(2**31):
                raise TokenizeError("tokenization overflowed")
            capacity = -n

    def token_to_piece(self, token: int, *, special: bool = True) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        self.check_token(token)
        size = 32
        while True:
            buf = ffi.new("char[]", size)
            n = lib.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return ffi.unpack(buf, n)
            size = -n

    def decode_bytes(self, tokens: Sequence[int], *, special: bool = False) -> bytes:
        """The bytes of a token sequence; special=True renders special tokens as text."""
        ids = self.check_tokens(tokens)
        if not ids:
            return b""
        arr = ffi.new("llama_token[]", ids)
        size = max(64, 8 * len(ids))
        while True:
            buf = ffi.new("char[]", size)
            n = lib.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return ffi.unpack(buf, n)
            size = -n

    def decode(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of a token sequence (invalid UTF-8 becomes U+FFFD)."""
        return self.decode_bytes(tokens, special=special).decode("utf-8", "replace")

    def detokenizer(self, *, special: bool = False) -> StreamingDetokenizer:
        return StreamingDetokenizer(self, special=special)


def _opt(token: int) -> int | None:
    return None if token == lib.LLAMA_TOKEN_NULL else int(token)


class StreamingDetokenizer:
    """Turns tokens into text one at a time without ever emitting a broken UTF-8 character.

    add_token() returns the new text segment (possibly ""); bytes of an incomplete character are
    held back until the character is complete. finalize() flushes what is left. The segments
    joined equal tokenizer.decode(all tokens).
    """

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self.tokens: list[int] = []
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._emitted = 0  # bytes of the full decode already turned into text
        self._raw = b""

    def add_token(self, token: int) -> str:
        self.tokens.append(token)
        # Decode the whole sequence, not piece by piece: some tokenizers (SentencePiece) drop a
        # leading space on the first piece, and detokenize handles that exactly as decode() does.
        raw = self.tokenizer.decode_bytes(self.tokens, special=self.special)
        if not raw.startswith(self._raw[: self._emitted]):
            # the earlier text changed (rare; tokenizer-dependent cleanups): emit only new bytes
            common = 0
            while common < min(len(raw), self._emitted) and raw[common] == self._raw[common]:
                common += 1
            self._emitted = common
        new = raw[self._emitted :]
        self._raw = raw
        self._emitted = len(raw)
        segment = self._decoder.decode(new)
        self.text += segment
        return segment

    def finalize(self) -> str:
        segment = self._decoder.decode(b"", final=True)
        self.text += segment
        return segment

    def reset(self) -> None:
        self.__init__(self.tokenizer, special=self.special)  # type: ignore[misc]
