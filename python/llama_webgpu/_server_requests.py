"""OpenAI request bodies for server.py: checked field by field and turned into the keyword
arguments of compat.Llama's create_completion / create_chat_completion, or rejected with an
OpenAI-style error (`APIError`) that names the offending parameter.

Unknown fields are ignored (clients send `user`, `store`, `metadata`...). Sampling defaults are
llama.cpp server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05), not OpenAI's.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .compat import LlamaGrammar

MAX_STOP = 16
MAX_LOGPROBS = 20
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


class APIError(Exception):
    """An error answered as OpenAI answers them: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ModelFacts:
    """What request checking needs to know of the served model."""

    n_vocab: int
    eog_tokens: frozenset[int]


@dataclass
class Request:
    """A checked generation request: the Llama keyword arguments and the streaming options."""

    kwargs: dict[str, Any]
    stream: bool
    include_usage: bool


# -- fields -------------------------------------------------------------------------------------


def _present(body: Mapping[str, Any], name: str) -> bool:
    return body.get(name) is not None


def number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{name} must be a number, not {type(value).__name__}", name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise bad(f"{name} must be between {lo} and {hi}, not {value}", name)
    return float(value)


def integer(body: Mapping[str, Any], name: str, default: Any, lo: int, hi: int = 2**63 - 1) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer, not {type(value).__name__}", name)
    if not lo <= value <= hi:
        limit = f"at least {lo}" if hi == 2**63 - 1 else f"between {lo} and {hi}"
        raise bad(f"{name} must be {limit}, not {value}", name)
    return value


def boolean(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, not {value!r}", name)
    return value


def _stop(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} strings, not {len(stops)}", "stop")
    return stops


def _logit_bias(body: Mapping[str, Any], facts: ModelFacts) -> dict[int, float] | None:
    bias = body.get("logit_bias")
    out: dict[int, float] = {}
    if bias is not None:
        if not isinstance(bias, Mapping):
            raise bad("logit_bias must be an object of token id -> bias", "logit_bias")
        for key, value in bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise bad(f"logit_bias: {key!r} is not a token id", "logit_bias") from None
            if not 0 <= token < facts.n_vocab:
                raise bad(f"logit_bias: token {token} is outside the vocabulary", "logit_bias")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad(f"logit_bias[{key}] must be a number", "logit_bias")
            if not -100 <= value <= 100:
                raise bad(f"logit_bias[{key}] must be between -100 and 100", "logit_bias")
            out[token] = float(value)
    if boolean(body, "ignore_eos"):  # llama.cpp server's extension
        out.update(dict.fromkeys(facts.eog_tokens, -math.inf))
    return out or None


def _grammar(body: Mapping[str, Any]) -> LlamaGrammar | None:
    grammar = body.get("grammar")  # llama.cpp server's extension: GBNF text
    if grammar is None:
        return None
    if not isinstance(grammar, str) or not grammar.strip():
        raise bad("grammar must be non-empty GBNF text", "grammar")
    return LlamaGrammar.from_string(grammar)


def _single_choice(body: Mapping[str, Any]) -> None:
    for name in ("n", "best_of"):
        if integer(body, name, 1, 1) != 1:
            raise bad(f"{name} > 1 is not supported: ask {body[name]} times instead", name)


def _sampling(body: Mapping[str, Any], facts: ModelFacts) -> dict[str, Any]:
    seed = integer(body, "seed", None, -(2**63), 2**64 - 1)
    return {
        "temperature": number(body, "temperature", 0.8, 0.0, 2.0),
        "top_p": number(body, "top_p", 0.95, 0.0, 1.0),
        "top_k": integer(body, "top_k", 40, 0),
        "min_p": number(body, "min_p", 0.05, 0.0, 1.0),
        "typical_p": number(body, "typical_p", 1.0, 0.0, 1.0),
        "presence_penalty": number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "repeat_penalty": number(body, "repeat_penalty", 1.0, 0.0, 10.0),
        "seed": secrets.randbelow(0xFFFFFFFF) if seed is None else seed,
        "stop": _stop(body),
        "logit_bias": _logit_bias(body, facts),
    }


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise bad("stream_options must be an object", "stream_options")
    if not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    return boolean(options, "include_usage")


# -- endpoints ------------------------------------------------------------------------------------


def _check_message(i: int, msg: Any) -> None:
    param = f"messages[{i}]"
    if not isinstance(msg, Mapping):
        raise bad(f"{param} must be an object", param)
    role = msg.get("role")
    if role not in _ROLES:
        raise bad(f"{param}.role must be one of {', '.join(_ROLES)}, not {role!r}", param)
    content = msg.get("content")
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else part
                raise bad(f"{param}: only text content parts are supported, not {kind!r}", param)
            if not isinstance(part.get("text"), str):
                raise bad(f"{param}: a text part needs a 'text' string", param)
    elif content is not None and not isinstance(content, str):
        raise bad(f"{param}.content must be a string, a list of parts or null", param)
    calls = msg.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise bad(f"{param}.tool_calls must be a list", param)
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                raise bad(f"{param}.tool_calls: each call needs function.name", param)


def _check_functions(tools: Any, param: str, wrapped: bool) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad(f"{param} must be a list", param)
    for tool in tools:
        fn = tool.get("function") if wrapped and isinstance(tool, Mapping) else tool
        if wrapped and isinstance(tool, Mapping) and tool.get("type", "function") != "function":
            raise bad(f"{param}: only function tools are supported", param)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise bad(f"{param}: each function needs a name", param)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise bad(f"{param}: function parameters must be a JSON schema object", param)
    return tools


def _check_choice(choice: Any, param: str) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    fn = choice.get("function", choice) if isinstance(choice, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise bad(f'{param} must be "none", "auto", "required" or name a function', param)
    return choice


def chat_request(body: Mapping[str, Any], facts: ModelFacts, model: str) -> Request:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    for i, msg in enumerate(messages):
        _check_message(i, msg)
    _single_choice(body)
    stream = boolean(body, "stream")
    logprobs = boolean(body, "logprobs")
    top = integer(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    fmt = body.get("response_format")
    if fmt is not None and not isinstance(fmt, Mapping):
        raise bad("response_format must be an object", "response_format")
    max_tokens = integer(body, "max_completion_tokens", None, 1)
    max_tokens = integer(body, "max_tokens", max_tokens, 1)
    kwargs = {
        "messages": messages,
        "tools": _check_functions(body.get("tools"), "tools", True),
        "tool_choice": _check_choice(body.get("tool_choice"), "tool_choice"),
        "functions": _check_functions(body.get("functions"), "functions", False),
        "function_call": _check_choice(body.get("function_call"), "function_call"),
        "response_format": fmt,
        "grammar": _grammar(body),
        "max_tokens": max_tokens,
        "logprobs": logprobs,
        "top_logprobs": top,
        "model": model,
        **_sampling(body, facts),
    }
    return Request(kwargs, stream, _stream_options(body, stream))


def _prompt(body: Mapping[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad("batches of prompts are not supported: send one prompt per request", "prompt")
    raise bad("prompt must be a string or a list of token ids", "prompt")


def completion_request(body: Mapping[str, Any], facts: ModelFacts, model: str) -> Request:
    prompt = _prompt(body)
    if body.get("suffix"):
        raise bad("suffix (fill-in-the-middle) is not supported", "suffix")
    _single_choice(body)
    stream = boolean(body, "stream")
    kwargs = {
        "prompt": prompt,
        "max_tokens": integer(body, "max_tokens", 16, 1),
        "logprobs": integer(body, "logprobs", None, 0, MAX_LOGPROBS),
        "echo": boolean(body, "echo"),
        "grammar": _grammar(body),
        "model": model,
        **_sampling(body, facts),
    }
    return Request(kwargs, stream, _stream_options(body, stream))


def embedding_inputs(body: Mapping[str, Any]) -> tuple[list[str | list[int]], str]:
    """The texts (or token id lists) to embed, and the encoding_format ("float" or "base64")."""
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and type(raw[0]) is int):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise bad("input must be a string, a list of strings or of token id lists", "input")
    for item in raw:
        ok = isinstance(item, str) or (
            isinstance(item, list) and item and all(type(t) is int for t in item)
        )
        if not ok:
            raise bad("input must be a string, a list of strings or of token id lists", "input")
        if isinstance(item, str) and not item:
            raise bad("input must not contain empty strings", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad('encoding_format must be "float" or "base64"', "encoding_format")
    return raw, fmt


def tokens_field(body: Mapping[str, Any], name: str = "tokens") -> list[int]:
    tokens = body.get(name)
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise bad(f"{name} must be a list of token ids", name)
    return tokens


def content_field(body: Mapping[str, Any]) -> str:
    content = body.get("content")
    if not isinstance(content, str):
        raise bad("content must be a string", "content")
    return content


__all__ = [
    "APIError",
    "ModelFacts",
    "Request",
    "bad",
    "chat_request",
    "completion_request",
    "content_field",
    "embedding_inputs",
    "tokens_field",
]
