"""OpenAI-shaped output for the llama-cpp-python compatibility layer (compat.py).

- `completion_chunks` turns a generator of sampled tokens into "text_completion" chunks: text
  decoded without breaking UTF-8, stop strings cut (text that could begin one is held back until
  it cannot), per-token logprobs, finish reasons; `collect` joins the chunks into the whole
  completion, so a streamed completion and a plain one are the same by construction.
- `tool_plan` and `ChatReply` make chat completions of completions: assistant messages, tool
  calls (forced by a grammar, or parsed out of the reply), "chat.completion.chunk" streams.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .chat import JSON_OBJECT_GBNF, assistant_message, new_tool_call_id
from .errors import GrammarError
from .generate import held_back
from .json_schema import json_schema_to_gbnf
from .sampling import token_logprobs

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

Completion = dict[str, Any]
ChatCompletion = dict[str, Any]
Logprobs = dict[str, list[Any]]


@dataclass
class Run:
    """What one generation learnt on the way, for the code around it."""

    logits: np.ndarray | None = None  # the raw logits the last token was sampled from
    stopped: bool = False  # a stopping criterion ended it
    n_prompt: int = 0
    n_completion: int = 0


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    for s in stops:
        if not isinstance(s, str):
            raise TypeError(f"stop strings must be strings, not {type(s).__name__}")
    return [s for s in stops if s]


def empty_logprobs() -> Logprobs:
    return {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}


def logprob_entry(
    tok: Tokenizer, token: int, logits: np.ndarray, n: int, offset: int, special: bool = False
) -> Logprobs:
    """One token's logprobs, keyed by token text: the n likeliest tokens plus the chosen one."""

    def piece(t: int) -> str:
        return tok.token_to_piece(t, special=special).decode("utf-8", "ignore")

    lp, top = token_logprobs(logits, token, n)
    text = piece(token)
    tops = {piece(t): v for t, v in top.items()}
    tops[text] = lp
    return {
        "tokens": [text],
        "text_offset": [offset],
        "token_logprobs": [lp],
        "top_logprobs": [tops],
    }


def completion_chunks(
    tok: Tokenizer,
    gen: Generator[int, Any, None],
    run: Run,
    head: dict[str, Any],
    *,
    tokens: list[int],
    prompt: str,
    max_tokens: int,
    stops: list[str],
    logprobs: int | None,
    echo: bool,
    prompt_logprobs: Callable[[], Logprobs],
) -> Iterator[Completion]:
    """ "text_completion" chunks for the tokens gen yields after the prompt; the last one has
    the finish reason and no text. gen is closed at the end."""

    def chunk(text: str, lp: Logprobs | None, finish: str | None) -> Completion:
        choice = {"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}
        return {**head, "choices": [choice]}

    try:
        if echo:
            yield chunk(prompt, prompt_logprobs() if logprobs is not None else None, None)
        detok = tok.detokenizer()
        for t in tokens[-1:]:  # so that a first piece keeps its leading space
            detok.add_token(t)
        pending = ""
        produced = len(prompt)  # text offsets count the prompt, as OpenAI's do
        finish: str | None = None
        for token in gen:
            if tok.is_eog(token):
                finish = "stop"
                break
            run.n_completion += 1
            entry = None
            if logprobs is not None:
                assert run.logits is not None
                entry = logprob_entry(tok, token, run.logits, logprobs, produced)
            piece = detok.add_token(token)
            produced += len(piece)
            pending += piece
            cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                out, pending, finish = pending[:cut], "", "stop"
            elif run.n_completion >= max_tokens:
                out, pending, finish = pending, "", "length"
            else:
                keep = held_back(pending, stops)
                out, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            if out or entry:
                yield chunk(out, entry, None)
            if finish is not None:
                break
        if finish is None:  # a stopping criterion, or the context is full
            finish = "stop" if run.stopped else "length"
        if pending:
            yield chunk(pending, None, None)
        yield chunk("", None, finish)
    finally:
        gen.close()


def collect(chunks: Iterator[Completion], run: Run, with_logprobs: bool) -> Completion:
    """The whole completion from its chunks."""
    texts: list[str] = []
    lps = empty_logprobs()
    last: Completion = {}
    for last in chunks:
        choice = last["choices"][0]
        texts.append(choice["text"])
        for key, value in (choice["logprobs"] or {}).items():
            lps[key] += value
    choice = {
        "text": "".join(texts),
        "index": 0,
        "logprobs": lps if with_logprobs else None,
        "finish_reason": last["choices"][0]["finish_reason"],
    }
    return {
        **{k: last[k] for k in ("id", "object", "created", "model")},
        "choices": [choice],
        "usage": {
            "prompt_tokens": run.n_prompt,
            "completion_tokens": run.n_completion,
            "total_tokens": run.n_prompt + run.n_completion,
        },
    }


def tool_plan(
    tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(the name of a forced function, the grammar forcing the reply) for a tool_choice."""
    names = [(t.get("function") or {}).get("name") for t in tools]
    if tool_choice in (None, "auto", "none"):
        return None, None
    if tool_choice == "required":
        if not tools:
            raise ValueError('tool_choice "required" needs tools')
        if len(tools) > 1:
            calls = [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": tool_parameters(tool)},
                    "required": ["name", "arguments"],
                }
                for name, tool in zip(names, tools, strict=True)
            ]
            try:
                return None, json_schema_to_gbnf({"anyOf": calls})
            except GrammarError:
                loose = {"type": "object", "additionalProperties": True}
                schema = {
                    "type": "object",
                    "properties": {"name": {"enum": names}, "arguments": loose},
                    "required": ["name", "arguments"],
                }
                return None, json_schema_to_gbnf(schema)
        tool_choice = {"type": "function", "function": {"name": names[0]}}
    if not isinstance(tool_choice, dict):
        raise ValueError(f'tool_choice must be "auto", "none", "required" or a dict: {tool_choice}')
    name = (tool_choice.get("function") or {}).get("name")
    if name not in names:
        raise ValueError(f"Tool choice '{name}' not found in tools.")
    try:
        return name, json_schema_to_gbnf(tool_parameters(tools[names.index(name)]))
    except GrammarError:
        return name, JSON_OBJECT_GBNF


def tool_parameters(tool: dict[str, Any]) -> Any:
    params = (tool.get("function") or {}).get("parameters")
    return params if params is not None else {"type": "object", "properties": {}}


class ChatReply:
    """Turns completion output into chat completion output."""

    def __init__(self, forced: str | None, tools: list[dict[str, Any]] | None, legacy: bool):
        self.forced = forced  # the reply is this function's arguments
        self.tools = tools  # parse tool calls out of the reply
        self.legacy = legacy

    @staticmethod
    def logprobs(lp: dict[str, list[Any]] | None) -> dict[str, Any] | None:
        if lp is None:
            return None
        content = [
            {
                "token": token,
                "logprob": value,
                "bytes": None,
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": None} for t, v in (top or {}).items()
                ],
            }
            for token, value, top in zip(
                lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
            )
        ]
        return {"content": content, "refusal": None}

    def message(self, text: str, finish: str) -> tuple[dict[str, Any], str]:
        if self.forced is not None:
            call = {
                "id": new_tool_call_id(),
                "type": "function",
                "function": {"name": self.forced, "arguments": text.rstrip()},
            }
            msg: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            msg = assistant_message(text, tools=self.tools)
        if msg.get("tool_calls"):
            finish = "tool_calls" if finish == "stop" else finish
            if self.legacy:
                msg["function_call"] = dict(msg["tool_calls"][0]["function"])
        return msg, finish

    def complete(self, completion: Completion) -> ChatCompletion:
        choice = completion["choices"][0]
        msg, finish = self.message(choice["text"], choice["finish_reason"])
        return {
            "id": "chat" + completion["id"],
            "object": "chat.completion",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [
                {
                    "index": 0,
                    "message": msg,
                    "logprobs": self.logprobs(choice["logprobs"]),
                    "finish_reason": finish,
                }
            ],
            "usage": completion["usage"],
        }

    @staticmethod
    def _chunk(c: Completion, delta: dict[str, Any], lp: Any, end: str | None) -> ChatCompletion:
        return {
            "id": "chat" + c["id"],
            "object": "chat.completion.chunk",
            "created": c["created"],
            "model": c["model"],
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": end}],
        }

    def stream(self, chunks: Iterator[Completion]) -> Iterator[ChatCompletion]:
        held: list[Completion] = []  # auto tools: what the reply is is known only at the end
        call_id: str | None = new_tool_call_id()
        spaces = ""  # forced arguments: trailing whitespace, sent only if more text follows
        for i, c in enumerate(chunks):
            choice = c["choices"][0]
            finish = choice["finish_reason"]
            if i == 0:
                yield self._chunk(c, {"role": "assistant"}, None, None)
            if finish is None and self.tools is not None:
                held.append(c)
            elif finish is None:
                delta: dict[str, Any] = {"content": choice["text"]}
                if self.forced is not None:  # the text is the forced call's arguments
                    text = spaces + choice["text"]
                    body = text.rstrip()
                    spaces = text[len(body) :]
                    if not body and choice["logprobs"] is None:
                        continue
                    fn = {"arguments": body}
                    call: dict[str, Any] = {"index": 0, "function": fn}
                    if call_id is not None:  # the first piece names the call
                        call.update(id=call_id, type="function")
                        fn["name"] = self.forced
                        call_id = None
                    delta = {"tool_calls": [call]}
                yield self._chunk(c, delta, self.logprobs(choice["logprobs"]), None)
            else:
                if self.forced is not None and finish == "stop":
                    finish = "tool_calls"
                if self.tools is not None:
                    text = "".join(h["choices"][0]["text"] for h in held)
                    msg, finish = self.message(text, finish)
                    delta = {"content": msg.get("content")}
                    if msg.get("tool_calls"):
                        delta["tool_calls"] = [
                            {"index": n, **call} for n, call in enumerate(msg["tool_calls"])
                        ]
                    lp = merge_logprobs([h["choices"][0]["logprobs"] for h in held])
                    yield self._chunk(c, delta, self.logprobs(lp), None)
                yield self._chunk(c, {}, None, finish)


def merge_logprobs(parts: list[dict[str, list[Any]] | None]) -> dict[str, list[Any]] | None:
    present = [p for p in parts if p]
    if not present:
        return None
    merged: dict[str, list[Any]] = {k: [] for k in present[0]}
    for p in present:
        for k, v in p.items():
            merged[k] += v
    return merged
