"""Tokenizer: encode/decode round trips, special tokens, the streaming detokenizer."""

from __future__ import annotations

import pytest

from llama_webgpu.errors import TokenizeError
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

TEXTS = [
    "Hello, world! How are you today?",
    "  leading and trailing spaces  ",
    "line one\nline two\n\ttabbed",
    "日本語のテキスト 🎉👍🏽 café",
    "Ελληνικά, русский, العربية, 한국어",
]


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def tokenizer(request):
    # vocabulary only: tokenizing needs no weights, and loading is instant
    with Model(model_path(request.param), vocab_only=True) as model:
        yield model.tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trips(tokenizer, text):
    tokens = tokenizer.encode(text, add_special=False)
    assert tokens
    assert tokenizer.decode(tokens) == text


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_segments_join_to_decode(tokenizer, text):
    tokens = tokenizer.encode(text, add_special=False)
    detok = tokenizer.detokenizer()
    segments = [detok.add_token(t) for t in tokens]
    segments.append(detok.finalize())
    assert "".join(segments) == tokenizer.decode(tokens) == text
    assert all("\ufffd" not in s for s in segments)  # never half a character
    assert detok.text == text


def test_long_streams_join_to_decode(tokenizer):
    # long enough that the detokenizer moves its decoding window many times, through multi-byte
    # characters, spaces and newlines
    text = "\n".join(TEXTS) * 4
    tokens = tokenizer.encode(text, add_special=False)
    assert len(tokens) > 10 * tokenizer.detokenizer().CONTEXT_TOKENS
    detok = tokenizer.detokenizer()
    segments = [detok.add_token(t) for t in tokens]
    segments.append(detok.finalize())
    assert "".join(segments) == tokenizer.decode(tokens) == text
    assert all("\ufffd" not in s for s in segments)


def test_detokenizer_holds_back_incomplete_utf8():
    # SmolLM2's byte-level BPE splits these characters across tokens
    with Model(model_path(), vocab_only=True) as model:
        tok = model.tokenizer
        text = "日本語のテキスト 🎉👍🏽 café"
        tokens = tok.encode(text, add_special=False)
        detok = tok.detokenizer()
        segments = [detok.add_token(t) for t in tokens]
        assert "" in segments  # some tokens complete no character on their own
        assert "🎉" in segments
        assert "".join(segments) + detok.finalize() == text


def test_add_special_adds_bos_only_when_the_model_wants_it(tokenizer):
    plain = tokenizer.encode("hi", add_special=False)
    special = tokenizer.encode("hi", add_special=True)
    if tokenizer.add_bos:
        assert special == [tokenizer.bos, *plain]
    else:
        assert special == plain


def test_chat_marker_is_one_token_only_with_parse_special():
    with Model(model_path(), vocab_only=True) as model:
        tok = model.tokenizer
        parsed = tok.encode("<|im_start|>", add_special=False, parse_special=True)
        literal = tok.encode("<|im_start|>", add_special=False, parse_special=False)
        assert len(parsed) == 1
        assert len(literal) > 1
        assert tok.is_control(parsed[0])
        # special tokens render as text only when asked to
        assert tok.decode(parsed) == ""
        assert tok.decode(parsed, special=True) == "<|im_start|>"
        assert tok.decode(literal) == "<|im_start|>"


def test_eos_is_end_of_generation(tokenizer):
    assert tokenizer.eos is not None
    assert tokenizer.is_eog(tokenizer.eos)
    assert tokenizer.eos in tokenizer.eog_tokens
    plain = tokenizer.encode("hello", add_special=False)[0]
    assert not tokenizer.is_eog(plain)


def test_token_ids_outside_the_vocabulary_are_rejected(tokenizer):
    with pytest.raises(TokenizeError, match="outside the vocabulary"):
        tokenizer.check_token(tokenizer.n_vocab)
    with pytest.raises(TokenizeError):
        tokenizer.decode([-1])
    with pytest.raises(TypeError):
        tokenizer.check_token(1.0)


def test_token_to_piece_concatenates_to_the_text():
    with Model(model_path(), vocab_only=True) as model:
        tok = model.tokenizer
        text = "The quick brown fox"
        pieces = b"".join(tok.token_to_piece(t) for t in tok.encode(text, add_special=False))
        assert pieces.decode() == text
