"""Chat: OpenAI-style messages rendered with the model's own Jinja chat template, tool calls
parsed back out of the model's text, and JSON mode for the sampler.

Chat templates come from GGUF files, so they are untrusted code. They run in jinja2's
`ImmutableSandboxedEnvironment` made stricter: reaching for an unsafe attribute (`__class__`,
`__globals__`, `mro`, a list's `append`, ...) raises `ChatTemplateError` at once instead of
rendering an empty value; `include`/`import`/`extends` find nothing (no file is ever read);
`*` and `**` are bounded so a template cannot build a gigabyte string or a huge integer.

The rendering follows Hugging Face transformers' `apply_chat_template` (same environment options,
`raise_exception`, `strftime_now`, a `tojson` that does not escape non-ASCII) and llama.cpp's
server (text content parts joined with newlines, a leading BOS dropped when the tokenizer adds
one itself). Templates that know nothing of tools get them the Hermes way: a system prompt
listing the tools, `<tool_call>` blocks for earlier calls, `<tool_response>` user turns for
their results.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError

if TYPE_CHECKING:
    from .model import Model

Message = Mapping[str, Any]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""The template used when a model has none (ChatML, as llama.cpp falls back to)."""

TOOLS_SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
"""Tells a model whose template cannot render tools about them (Hermes / Qwen 2.5 wording)."""

_MAX_SEQUENCE = 10_000_000  # longest string or list a template may build with `*`
_MAX_EXPONENT = 4096


# -- the sandbox ------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (marks assistant text for
    training masks): rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's declared type

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Any:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is too large")
            return left**right
        for seq, n in ((left, right), (right, left)):
            sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
            if sized and len(seq) * n > _MAX_SEQUENCE:
                raise SecurityError("the template tried to build an oversized sequence")
        return left * right


class _NoLoader(jinja2.BaseLoader):
    def get_source(self, environment: Any, template: str) -> Any:
        raise jinja2.TemplateNotFound(
            f"{template} (a chat template cannot include, import or extend other templates)"
        )


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        loader=_NoLoader(),
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


class _Compiled:
    """A parsed template and what it knows how to render."""

    def __init__(self, source: str):
        self.source = source
        try:
            ast = _ENV.parse(source)
            self.template = _ENV.from_string(ast)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template does not parse: {e}") from e
        self.uses_tools = "tools" in meta.find_undeclared_variables(ast)
        self.renders_tool_calls = "tool_calls" in source
        self.renders_tool_role = re.search(r"""['"]tool['"]""", source) is not None

    def render(self, context: dict[str, Any]) -> str:
        try:
            return self.template.render(context)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"the chat template tried something unsafe: {e}") from e
        except Exception as e:  # an untrusted template can fail in any way
            raise ChatTemplateError(
                f"the chat template failed to render: {type(e).__name__}: {e}"
            ) from e


# -- messages ---------------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """The text of a message's content: a string, None, or a list of text parts (joined with
    newlines, as llama.cpp does for templates that take string content)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        text = ""
        for part in content:
            if isinstance(part, str):
                piece = part
            elif isinstance(part, Mapping) and part.get("type") == "text":
                piece = str(part.get("text", ""))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(f"only text content parts are supported, not {kind!r}")
            text = f"{text}\n{piece}" if text else piece
        return text
    raise TypeError(f"message content must be a string or a list of parts, not {content!r}")


def _template_tool_call(call: Any) -> dict[str, Any]:
    """An OpenAI tool call as chat templates expect it: arguments as an object, not a string."""
    if not isinstance(call, Mapping):
        raise TypeError(f"a tool call must be a dict, not {type(call).__name__}")
    out = dict(call)
    fn = dict(call.get("function") or {})
    if isinstance(fn.get("arguments"), str):
        try:
            parsed = json.loads(fn["arguments"])
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            fn["arguments"] = parsed
    out["function"] = fn
    out.setdefault("type", "function")
    return out


def _hermes_tool_call(call: Mapping[str, Any]) -> str:
    fn = call.get("function") or {}
    body = {"name": fn.get("name"), "arguments": fn.get("arguments", {})}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def _prepare_messages(
    messages: Sequence[Message], tools: Sequence[Any] | None, compiled: _Compiled
) -> list[dict[str, Any]]:
    """Copies of messages with string content, plus the polyfills the template needs."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            raise ValueError(f"message {i} needs a 'role' string: {msg!r}")
        m = dict(msg)
        m["content"] = content_text(msg.get("content"))
        calls = [_template_tool_call(c) for c in msg.get("tool_calls") or ()]
        if calls:
            m["tool_calls"] = calls
        elif "tool_calls" in m:
            del m["tool_calls"]
        if calls and not compiled.renders_tool_calls:
            text = "\n".join(_hermes_tool_call(c) for c in calls)
            m["content"] = f"{m['content']}\n{text}" if m["content"] else text
            del m["tool_calls"]
        if m["role"] == "tool" and not compiled.renders_tool_role:
            response = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + response
                continue
            m = {"role": "user", "content": response, "_tool_responses": True}
        out.append(m)
    for m in out:
        m.pop("_tool_responses", None)
    if tools and not compiled.uses_tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        prompt = TOOLS_SYSTEM_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{prompt}" if out[0]["content"] else prompt
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


# -- the formatter ----------------------------------------------------------------------------


class ChatFormatter:
    """Renders conversations into a prompt with a model's chat template.

    `model_or_template` is a Model (its GGUF template, and its `tool_use` template when tools are
    given; bos/eos from its vocabulary), the Jinja source of a template, or None. `template`
    replaces a Model's own template (for a GGUF without one, or a better one). Without any
    template, ChatML is used. When the tokenizer adds BOS itself (a Model's `add_bos`), a BOS the
    template writes is dropped so that the prompt tokenizes with one BOS (`strip_bos` overrides).
    """

    def __init__(
        self,
        model_or_template: Model | str | None = None,
        *,
        template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        strip_bos: bool | None = None,
    ):
        tool_source: str | None = None
        add_bos = add_eos = False
        if model_or_template is None or isinstance(model_or_template, str):
            source = template or model_or_template
        else:
            model = model_or_template
            if template:
                source = template
            else:
                source = model.chat_template
                tool_source = model.meta("tokenizer.chat_template.tool_use")
            tok = model.tokenizer
            if bos_token is None:
                bos_token = _piece(model, tok.bos)
            if eos_token is None:
                eos_token = _piece(model, tok.eos)
            add_bos = tok.add_bos
            add_eos = _add_eos(model)
        self.is_fallback = not source
        self.source: str = source or CHATML_TEMPLATE
        self._compiled = _Compiled(self.source)
        self._tool_compiled = _Compiled(tool_source) if tool_source else None
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.strip_bos = add_bos if strip_bos is None else strip_bos
        self.strip_eos = add_eos

    @property
    def supports_tools(self) -> bool:
        """True if the template itself renders `tools` (else they go into a system prompt)."""
        return (self._tool_compiled or self._compiled).uses_tools

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for messages. add_generation_prompt ends it with the assistant's turn
        header; tools are OpenAI tool definitions; kwargs reach the template as variables
        (e.g. enable_thinking=False)."""
        compiled = self._tool_compiled if tools and self._tool_compiled else self._compiled
        context = {
            "messages": _prepare_messages(messages, tools, compiled),
            "tools": list(tools) if tools else None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **kwargs,
        }
        text = compiled.render(context)
        if self.strip_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.strip_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text

    def __repr__(self) -> str:
        kind = "ChatML fallback" if self.is_fallback else f"{len(self.source)} chars"
        return f"<ChatFormatter {kind}>"


def _piece(model: Model, token: int | None) -> str:
    if token is None:
        return ""
    return model.tokenizer.token_to_piece(token, special=True).decode("utf-8", "replace")


def _add_eos(model: Model) -> bool:
    from ._native import lib

    return bool(lib.llama_vocab_get_add_eos(model.vocab))


# -- tool calls -------------------------------------------------------------------------------

_ID_ALPHABET = string.ascii_letters + string.digits
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.S)
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_NAMED = re.compile(r"\s*([\w.\-]+)(?:\[CALL_ID\]([\w\-]+))?\[ARGS\]")
_PYTHON_TAG = "<|python_tag|>"


def new_tool_call_id() -> str:
    """An OpenAI-style tool call id ("call_" and 24 letters and digits)."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _call_fields(obj: Any) -> tuple[str, Any, str | None] | None:
    """(name, arguments, id) if obj looks like one function call, else None."""
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("function"), Mapping):  # OpenAI shape
        fields = _call_fields(obj["function"])
        if fields is None:
            return None
        call_id = obj.get("id")
        return fields[0], fields[1], call_id if isinstance(call_id, str) else fields[2]
    name = obj.get("name")
    allowed = {"name", "arguments", "parameters", "id", "type"}
    if not isinstance(name, str) or not name or not set(obj) <= allowed:
        return None
    if obj.get("type", "function") != "function":
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, Mapping | str) and args is not None:
        return None
    call_id = obj.get("id")
    return name, args, call_id if isinstance(call_id, str) else None


def _openai_call(fields: tuple[str, Any, str | None], make_id: Callable[[], str]) -> dict:
    name, args, call_id = fields
    if args is None:
        arguments = "{}"
    elif isinstance(args, str):
        arguments = args
    else:
        arguments = json.dumps(args, ensure_ascii=False)
    return {
        "id": call_id or make_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _json_values(text: str) -> list[Any] | None:
    """The JSON values text consists of (separated by whitespace, ',' or ';'), or None."""
    decoder = json.JSONDecoder()
    values = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,;":
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])


def _calls_in(text: str) -> list[tuple[str, Any, str | None]] | None:
    """The calls a JSON text holds (an object, a list, or several), or None if it is not that."""
    fenced = _FENCE.match(text.strip())
    values = _json_values(fenced.group(1) if fenced else text)
    if not values:
        return None
    calls = [_call_fields(v) for v in values]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]


def _mistral_calls(text: str) -> list[tuple[str, Any, str | None]] | None:
    calls: list[tuple[str, Any, str | None]] = []
    for chunk in text.split(_MISTRAL)[1:]:
        named = _MISTRAL_NAMED.match(chunk)
        if named:  # [TOOL_CALLS]name[CALL_ID]id[ARGS]{...} (Mistral tokenizer v11+)
            try:
                args, _ = json.JSONDecoder().raw_decode(chunk, named.end())
            except ValueError:
                return None
            calls.append((named.group(1), args, named.group(2)))
        else:  # [TOOL_CALLS][{"name": ..., "arguments": ..., "id": ...}] (v3)
            found = _calls_in(chunk)
            if found is None:
                return None
            calls.extend(found)
    return calls


def parse_tool_calls(
    text: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    make_id: Callable[[], str] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Split a model's reply into (content, OpenAI tool_calls).

    Understands Hermes/Qwen `<tool_call>{json}</tool_call>` blocks (the last one may lack its
    closing tag), Mistral `[TOOL_CALLS][...]` and `[TOOL_CALLS]name[ARGS]{...}`, and a reply that
    is only JSON: `{"name": ..., "arguments": ...}`, Llama 3's `{"name": ..., "parameters": ...}`
    (optionally after `<|python_tag|>`), or a list of those. A reply of bare JSON counts as a call
    only if its name is one of `tools` (when tools are given). Text that is no tool call comes
    back whole as content with no calls. Arguments come back as JSON strings.
    """
    make_id = make_id or new_tool_call_id
    names = {(t.get("function") or t).get("name") for t in tools or ()}

    def done(content: str, calls: list[tuple[str, Any, str | None]]) -> tuple[str, list[dict]]:
        return content, [_openai_call(c, make_id) for c in calls]

    if "<tool_call>" in text:
        calls = []
        for block in _HERMES.findall(text):
            found = _calls_in(block)
            if found is None:
                return text, []
            calls.extend(found)
        return done(_HERMES.sub("", text).strip(), calls)
    if _MISTRAL in text:
        found = _mistral_calls(text)
        if found is None:
            return text, []
        return done(text.split(_MISTRAL, 1)[0].strip(), found)
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :]
    found = _calls_in(body)
    if found is None or (names and any(c[0] not in names for c in found)):
        return text, []
    return done("", found)


def assistant_message(
    text: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    make_id: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """The OpenAI assistant message for a reply: tool calls parsed out when tools were offered
    (content None when the reply was only calls)."""
    if not tools:
        return {"role": "assistant", "content": text}
    content, calls = parse_tool_calls(text, tools=tools, make_id=make_id)
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


# -- JSON mode --------------------------------------------------------------------------------

JSON_OBJECT_GBNF = r"""root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array  ::= "[" ws ( value ( "," ws value )* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\"" ws
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]{1,4} )? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""
"""GBNF for any JSON object (whitespace bounded so a model cannot pad forever)."""


def response_format_kwargs(response_format: Mapping[str, Any] | None) -> dict[str, Any]:
    """Sampler keyword arguments (for SamplingParams) for an OpenAI `response_format`.

    None or {"type": "text"}: {}; {"type": "json_object"}: {"grammar": JSON_OBJECT_GBNF}
    (or {"json_schema": ...} if it carries a "schema", as llama.cpp's server allows);
    {"type": "json_schema", "json_schema": {"schema": {...}}}: {"json_schema": {...}}.
    """
    if response_format is None:
        return {}
    if not isinstance(response_format, Mapping):
        raise TypeError(f"response_format must be a dict, not {type(response_format).__name__}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        if response_format.get("schema") is not None:
            return {"json_schema": _schema(response_format["schema"])}
        return {"grammar": JSON_OBJECT_GBNF}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, Mapping) and "schema" in spec:
            return {"json_schema": _schema(spec["schema"])}
        if "schema" in response_format:
            return {"json_schema": _schema(response_format["schema"])}
        raise ValueError(
            'response_format type "json_schema" needs {"json_schema": {"schema": ...}}'
        )
    raise ValueError(
        f'response_format type must be "text", "json_object" or "json_schema", not {kind!r}'
    )


def _schema(schema: Any) -> dict[str, Any]:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, Mapping):
        raise ValueError(f"a JSON schema must be an object, not {type(schema).__name__}")
    return dict(schema)
