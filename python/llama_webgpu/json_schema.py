"""JSON schema -> GBNF grammar, so that sampling can be constrained to JSON matching a schema.

llama.cpp's own converter is C++ in common/ (not part of the library we bind), so this is a
compact one of ours, following the same conventions (rule names, whitespace rule, primitives).

Supported: `type` (object, array, string, number, integer, boolean, null, or a list of them),
`properties`, `required`, `additionalProperties` (absent or false: no other keys; true or a
schema: other keys allowed), `items`, `prefixItems`, `minItems`/`maxItems`,
`minLength`/`maxLength`, `enum`, `const`, `anyOf`/`oneOf` (both as "any of"), and local `$ref`s
(`#/$defs/...`, `#/definitions/...`, `#`), recursive ones included. Annotations (`title`,
`description`, `default`, `examples`, `format`...) are ignored. Any other keyword (`pattern`,
`minimum`, `allOf`...) raises GrammarError instead of being silently dropped. Required
properties come first in the output, in declared order, then the optional ones.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import GrammarError

SPACE = r'| " " | "\n"{1,2} [ \t]{0,20}'
# name -> (body, rules it uses)
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false") space', ()),
    "char": (r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": (r'"\"" char* "\"" space', ("char",)),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "number": (
        '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
        ("integral-part", "decimal-part"),
    ),
    "integer": ('("-"? integral-part) space', ("integral-part",)),
    "null": ('"null" space', ()),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
        ("string", "value"),
    ),
    "array": ('"[" space ( value ("," space value)* )? "]" space', ("value",)),
}
_SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "oneOf",
    "$ref", "$defs", "definitions",
}  # fmt: skip
_IGNORED = {
    "title", "description", "default", "examples", "format", "$schema", "$id", "$comment",
    "readOnly", "writeOnly", "deprecated", "contentMediaType", "contentEncoding",
}  # fmt: skip
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_BAD_NAME = re.compile(r"[^a-zA-Z0-9-]+")


def gbnf_literal(text: str) -> str:
    """text as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_literal(value: Any) -> str:
    return gbnf_literal(json.dumps(value, ensure_ascii=False)) + " space"


def _repeat(lo: int, hi: int | None) -> str:
    return f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"


class _Converter:
    def __init__(self, root: Any):
        self.root = root
        self.rules: dict[str, str] = {"space": SPACE}
        self.refs: dict[str, str] = {}

    def add(self, name: str, body: str) -> str:
        """Add a rule (reusing an identical one of the same name); returns its name."""
        base = _BAD_NAME.sub("-", name).strip("-") or "rule"
        key, i = base, 1
        while self.rules.get(key, body) != body:
            i += 1
            key = f"{base}-{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        body, deps = _PRIMITIVES[name]
        if name not in self.rules:
            self.rules[name] = body
            for dep in deps:
                self.primitive(dep)
        return name

    def ref(self, ref: str, path: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise GrammarError(f"{path}: only local $refs (#/...) are supported, not {ref!r}")
        target = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise GrammarError(f"{path}: $ref {ref!r} does not resolve")
            target = target[part]
        base = "ref-" + (_BAD_NAME.sub("-", ref.rsplit("/", 1)[-1]).strip("-") or "root")
        name, i = base, 1
        while name in self.rules:
            i += 1
            name = f"{base}-{i}"
        self.refs[ref] = name
        self.rules[name] = ""  # reserved: the target may refer back to it
        self.rules[name] = self.visit(target, f"{name}-value", ref)
        return name

    def visit(self, schema: Any, name: str, path: str) -> str:
        """The name of a rule matching JSON text valid under schema."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise GrammarError(f"{path}: the schema `false` allows no value")
        if not isinstance(schema, dict):
            raise GrammarError(f"{path}: a schema is an object or a boolean, not {schema!r}")
        unknown = sorted(set(schema) - _SUPPORTED - _IGNORED)
        if unknown:
            raise GrammarError(f"{path}: unsupported JSON schema keyword(s): {', '.join(unknown)}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "const" in schema:
            return self.add(name, _json_literal(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"{path}: enum must be a non-empty list")
            return self.add(name, " | ".join(_json_literal(v) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise GrammarError(f"{path}: {key} must be a non-empty list")
                alts = [
                    self.visit(s, f"{name}-{i}", f"{path}/{key}/{i}") for i, s in enumerate(subs)
                ]
                return self.add(name, " | ".join(alts))
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.primitive("value")
        if isinstance(kind, list):
            alts = [self.visit({**schema, "type": k}, f"{name}-{k}", path) for k in kind]
            return self.add(name, " | ".join(alts))
        if kind not in _TYPES:
            raise GrammarError(f"{path}: unknown type {kind!r}")
        if kind == "object":
            return self.object(schema, name, path)
        if kind == "array":
            return self.array(schema, name, path)
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            lo, hi = self.bounds(schema, "minLength", "maxLength", path)
            self.primitive("char")
            return self.add(name, f'"\\"" char{_repeat(lo, hi)} "\\"" space')
        return self.primitive(kind)

    def bounds(self, schema: dict, lo_key: str, hi_key: str, path: str) -> tuple[int, int | None]:
        lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
        for key, v in ((lo_key, lo), (hi_key, hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise GrammarError(f"{path}: {key} must be a non-negative integer")
        if hi is not None and hi < lo:
            raise GrammarError(f"{path}: {hi_key} is less than {lo_key}")
        return lo, hi

    def object(self, schema: dict, name: str, path: str) -> str:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        additional = schema.get("additionalProperties")
        if not isinstance(props, dict) or not isinstance(required, list):
            raise GrammarError(f"{path}: properties must be an object and required a list")
        if not props and not required and additional in (None, True):
            return self.primitive("object")
        order = [p for p in props if p in required] + [p for p in required if p not in props]
        order += [p for p in props if p not in required]
        pairs = []
        for prop in order:
            value = self.visit(props.get(prop, True), f"{name}-{prop}", f"{path}/properties/{prop}")
            kv = self.add(
                f"{name}-{prop}-kv", f'{gbnf_literal(json.dumps(prop))} space ":" space {value}'
            )
            pairs.append((kv, prop in required))
        req = [kv for kv, is_req in pairs if is_req]
        opt = [kv for kv, is_req in pairs if not is_req]
        extra_tail = ""
        extra = None
        if additional not in (None, False):
            value = self.visit(additional, f"{name}-additional", f"{path}/additionalProperties")
            extra = self.add(f"{name}-additional-kv", f'string ":" space {value}')
            self.primitive("string")
            extra_tail = f' ( "," space {extra} )*'

        def tail(kvs: list[str]) -> str:
            return "".join(f' ( "," space {kv} )?' for kv in kvs)

        if req:
            inner = ' "," space '.join(req) + tail(opt) + extra_tail
        else:
            alts = [kv + tail(opt[i + 1 :]) + extra_tail for i, kv in enumerate(opt)]
            if extra:
                alts.append(extra + extra_tail)
            inner = f"( {' | '.join(alts)} )?" if alts else ""
        return self.add(name, f'"{{" space {inner} "}}" space'.replace("  ", " "))

    def array(self, schema: dict, name: str, path: str) -> str:
        if "prefixItems" in schema:
            subs = schema["prefixItems"]
            if not isinstance(subs, list):
                raise GrammarError(f"{path}: prefixItems must be a list")
            items = [
                self.visit(s, f"{name}-{i}", f"{path}/prefixItems/{i}") for i, s in enumerate(subs)
            ]
            inner = ' "," space '.join(items)
            return self.add(name, f'"[" space {inner} "]" space'.replace("  ", " "))
        item = self.visit(schema.get("items", True), f"{name}-item", f"{path}/items")
        lo, hi = self.bounds(schema, "minItems", "maxItems", path)
        if hi == 0:
            inner = ""
        elif lo == 0:
            more = "*" if hi is None else _repeat(0, hi - 1)
            inner = f'( {item} ( "," space {item} ){more} )?'
        else:
            more = _repeat(lo - 1, None if hi is None else hi - 1)
            inner = f'{item} ( "," space {item} ){more}'
        return self.add(name, f'"[" space {inner} "]" space'.replace("  ", " "))


def json_schema_to_gbnf(schema: dict[str, Any] | bool | str) -> str:
    """A GBNF grammar (root rule `root`) for JSON text valid under schema (a dict or JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    conv = _Converter(schema)
    top = conv.visit(schema, "root", "#")
    if top != "root":
        conv.rules = {"root": top, **conv.rules}
    rules = {"root": conv.rules.pop("root"), **conv.rules}
    return "".join(f"{k} ::= {v}\n" for k, v in rules.items())
