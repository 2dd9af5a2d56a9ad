"""Text <-> tokens with a model's vocabulary, and a streaming detokenizer for generation."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native
from ._native import ffi, lib
from .errors import TokenizeError

# what llama.cpp's tokenizer functions return on failure (INT32_MIN)
_FAILED = -(2**31)

if TYPE_CHECKING:
    from .model import Model


class Tokenizer:
    """The vocabulary of a loaded model.

    Thread-safe: its native calls hold the model's lock (so that close() from another thread
    waits for them); once the model is closed every method raises ClosedError. Token ids are
    ints (numpy integers too); an id outside the vocabulary raises TokenizeError, a non-integer
    TypeError.
    """

    def __init__(self, model: Model):
        self.model = model  # keeps the vocabulary alive
        self._n_vocab = model.n_vocab

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(vocab, *args) under the model lock (ClosedError once the model is closed)."""
        with self.model._lock:
            return fn(self.model.vocab, *args)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def bos(self) -> int | None:
        return _opt(self._call(lib.llama_vocab_bos))

    @property
    def eos(self) -> int | None:
        return _opt(self._call(lib.llama_vocab_eos))

    @property
    def eot(self) -> int | None:
        return _opt(self._call(lib.llama_vocab_eot))

    @property
    def add_bos(self) -> bool:
        return bool(self._call(lib.llama_vocab_get_add_bos))

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT and the like)."""
        return bool(self._call(lib.llama_vocab_is_eog, self.check_token(token)))

    def is_control(self, token: int) -> bool:
        self._need_vocab()
        return bool(self._call(lib.llama_vocab_is_control, self.check_token(token)))

    @property
    def has_vocab(self) -> bool:
        """False for models without a vocabulary (tokenizer.ggml.model "none"/"no_vocab"): they
        have placeholder token ids but cannot tokenize, and their tokens have no text."""
        return self._call(lib.llama_vocab_type) != lib.LLAMA_VOCAB_TYPE_NONE

    def _need_vocab(self) -> None:
        # llama.cpp aborts the process (GGML_ASSERT) when such a vocabulary tokenizes, renders a
        # token or reports a token's attributes; found by fuzz/gguf_load.py
        if not self.has_vocab:
            raise TokenizeError("the model has no vocabulary (tokenizer.ggml.model is 'none')")

    @property
    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token (a scan of the vocabulary, done once per model)."""
        with self.model._lock:
            vocab = self.model.vocab
            if self.model._eog_tokens is None:
                self.model._eog_tokens = frozenset(
                    t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(vocab, t)
                )
            return self.model._eog_tokens

    def check_token(self, token: int) -> int:
        """token as an int, if it is a valid id of this vocabulary. TokenizeError for an id
        outside it, TypeError for something that is not an integer (bool included)."""
        if isinstance(token, bool) or not isinstance(token, int | np.integer):
            raise TypeError(f"token ids are ints, not {type(token).__name__}")
        token = int(token)
        if not 0 <= token < self._n_vocab:
            raise TokenizeError(
                f"token id {token} is outside the vocabulary (0..{self._n_vocab - 1})"
            )
        return token

    def check_tokens(self, tokens: Iterable[int]) -> list[int]:
        """check_token() of each; TypeError unless tokens is an iterable of ints."""
        if isinstance(tokens, str | bytes | bytearray) or not isinstance(tokens, Iterable):
            raise TypeError(f"tokens must be a sequence of ints, not {type(tokens).__name__}")
        # the common case, a list of plain ints, checked in bulk (prompts of thousands of tokens)
        if (
            type(tokens) is list
            and all(type(t) is int for t in tokens)
            and (not tokens or (min(tokens) >= 0 and max(tokens) < self._n_vocab))
        ):
            return list(tokens)
        return [self.check_token(t) for t in tokens]

    def encode(
        self, text: str | bytes, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokens of text. add_special adds BOS/EOS as the model wants; parse_special turns
        special-token text such as "<|im_start|>" into those tokens instead of plain text.

        bytes are taken as UTF-8 text. Raises TokenizeError for text that is not valid
        Unicode: bytes that are not valid UTF-8 (decode them first, e.g. with
        errors="replace"), or a str holding a lone surrogate. (llama.cpp's BPE tokenizers abort
        the process on some invalid UTF-8, such as code points above U+10FFFF.)
        """
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TokenizeError(
                    f"text is not valid Unicode: {e.reason} (U+{ord(text[e.start]):04X} at "
                    f"index {e.start})"
                ) from None
        elif isinstance(text, bytes | bytearray | memoryview):
            data = bytes(text)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TokenizeError(
                    f"bytes are not valid UTF-8 ({e.reason} at byte {e.start}): decode them "
                    f"first, e.g. with errors='replace'"
                ) from None
        else:
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        self._need_vocab()
        if len(data) >= 2**31 - 1:
            raise TokenizeError("text is too long to tokenize (2 GiB or more)")
        capacity = len(data) + 8
        while True:
            out = ffi.new("llama_token[]", capacity)
            n = self._call(
                lib.llama_tokenize, data, len(data), out, capacity, add_special, parse_special
            )
            if n >= 0:
                ids = list(ffi.unpack(out, n))
                if ids and (min(ids) < 0 or max(ids) >= self._n_vocab):
                    # e.g. an RWKV vocabulary without an unknown token gives -1 for text it has
                    # no token for (found by fuzz/gguf_load.py)
                    bad = next(t for t in ids if not 0 <= t < self._n_vocab)
                    raise TokenizeError(
                        f"the vocabulary cannot tokenize this text: llama.cpp gave token id "
                        f"{bad}, outside the vocabulary (it has no unknown token)"
                    )
                return ids
            if n == _FAILED:  # overflow, or the vocabulary failed (patches/0008)
                raise _native.fail(TokenizeError, "llama.cpp could not tokenize this text")
            capacity = -n

    def token_to_piece(self, token: int, *, special: bool = True) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        self._need_vocab()
        token = self.check_token(token)
        size = 32
        while True:
            buf = ffi.new("char[]", size)
            n = self._call(lib.llama_token_to_piece, token, buf, size, 0, special)
            if n >= 0:
                return ffi.unpack(buf, n)
            if n == _FAILED:
                raise _native.fail(TokenizeError, f"llama.cpp could not render token {token}")
            size = -n

    def decode_bytes(self, tokens: Sequence[int], *, special: bool = False) -> bytes:
        """The bytes of a token sequence; special=True renders special tokens as text."""
        return self._decode_checked(self.check_tokens(tokens), special)

    def _decode_checked(self, ids: list[int], special: bool) -> bytes:
        """decode_bytes of ids already checked (the streaming detokenizer's window, each token)."""
        if not ids:
            return b""
        arr = ffi.new("llama_token[]", ids)
        size = max(64, 8 * len(ids))
        while True:
            buf = ffi.new("char[]", size)
            n = self._call(lib.llama_detokenize, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return ffi.unpack(buf, n)
            if n == _FAILED:
                raise _native.fail(TokenizeError, "llama.cpp could not detokenize these tokens")
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

    # Decoding is of a window of the latest tokens, not piece by piece (some tokenizers, e.g.
    # SentencePiece, drop a leading space on the first piece) and not of the whole sequence (that
    # grows with every token: quadratic in the length). The window keeps this many tokens that
    # were already given out as context for the next ones.
    CONTEXT_TOKENS = 8

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self.tokens: list[int] = []
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._start = 0  # the window's first token
        self._emitted = 0  # bytes of the window's decode already turned into text
        self._raw = b""

    def add_token(self, token: int) -> str:
        """The text that token completes ("" while a character is incomplete)."""
        token = self.tokenizer.check_token(token)
        self.tokens.append(token)
        raw = self.tokenizer._decode_checked(self.tokens[self._start :], self.special)
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
        if len(self.tokens) - self._start > 2 * self.CONTEXT_TOKENS:
            # every byte decoded so far is given out (or held by the UTF-8 decoder): start the
            # window later, at the same place in the text
            self._start = len(self.tokens) - self.CONTEXT_TOKENS
            window = self.tokens[self._start :]
            self._raw = self.tokenizer._decode_checked(window, self.special)
            self._emitted = len(self._raw)
        return segment

    def finalize(self) -> str:
        segment = self._decoder.decode(b"", final=True)
        self.text += segment
        return segment

    def reset(self) -> None:
        self.__init__(self.tokenizer, special=self.special)  # type: ignore[misc]
