#!/usr/bin/env python3
"""Generate the cffi (API mode) C source of ``llama_webgpu._cffi``.

The cdef is derived from the vendored llama.cpp headers, not written by hand:

1. ``gcc -E -nostdinc`` runs over a file that includes ``llama.h``, ``ggml-backend.h``,
   ``ggml-cpu.h`` and ``gguf.h``, with tiny stub headers for the C standard library
   (written to a temporary directory), so that only llama.cpp's own declarations matter.
2. GNU ``__attribute__((...))`` is stripped from the preprocessed text; a function that
   carried ``deprecated`` is remembered and dropped.
3. pycparser parses the result.  Only top-level declarations whose line markers point
   into the vendored tree are kept; function definitions, static asserts and pragmas are
   dropped; ``extern`` and ``inline`` are removed (``_Noreturn`` is kept: cffi accepts
   it); initializers of ``static const`` variables are removed; array lengths that are
   not plain integer expressions (``64 / sizeof(int32_t)``) become ``...`` so the C
   compiler fills them in.  pycparser's generator writes the C text back.
4. The simple integer (and string) object-like ``#define`` constants of the included
   vendored headers become ``#define NAME ...`` (or ``static const char *const NAME;``)
   so cffi's API mode takes their values from the compiler.
5. ``python/llama_webgpu/_cdef_extra.h`` is appended (the lwgpu_* proc-table API, kept
   only with ``--procs-header``, and the ``extern "Python"`` callbacks).
6. Whatever cffi's own cdef parser rejects is dropped (declaration by declaration).
7. The C source includes the real headers and, for GCC/Clang, one ``_Static_assert``
   per function, ``extern "Python"`` callback and struct field comparing cffi's view of
   its type with the header's, so drift is a compile error, not a crash at run time
   (cffi itself only compares struct sizes and offsets, at run time).
   ``ffi.emit_c_code`` writes it; nothing is compiled here.

Functions are also left out when they cannot be linked: :data:`UNDEFINED_UPSTREAM`
(declared, defined nowhere), ``--exclude NAME``, and with ``--backend-dl`` (llama.cpp
built with GGML_BACKEND_DL) those of ``ggml-cpu.h``, whose code is in a backend module
that is only dlopen()ed at run time.

Outputs are only rewritten when their content changes, which keeps CMake incremental.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cffi import FFI, CDefError, FFIError, VerificationError, model
from pycparser import c_ast, c_generator, c_parser
from pycparser.c_parser import ParseError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRA = REPO_ROOT / "python" / "llama_webgpu" / "_cdef_extra.h"
DEFAULT_MODULE = "llama_webgpu._cffi"

#: Headers the binding covers (``llama.h`` also pulls in ``ggml.h`` and ``ggml-opt.h``).
HEADERS: tuple[str, ...] = ("llama.h", "ggml-backend.h", "ggml-cpu.h", "gguf.h")
#: Include directories of the vendored tree, relative to ``--llama-dir``.
INCLUDE_SUBDIRS: tuple[str, ...] = ("include", "ggml/include")

#: Functions declared by the pinned headers but defined in none of llama.cpp's libraries:
#: binding them would make the extension fail to load (undefined symbol).
UNDEFINED_UPSTREAM: dict[str, str] = {
    "ggml_threadpool_get_n_threads": "declared in ggml-cpu.h but defined nowhere upstream",
}
#: Headers whose functions live in a backend module when GGML_BACKEND_DL is on (the
#: module is dlopen()ed at run time, so the extension cannot link against it).
DL_MODULE_HEADERS: tuple[str, ...] = ("ggml-cpu.h",)
_DL_REASON = "--backend-dl: defined in the CPU backend module, which is loaded at run time"

PROCS_BEGIN = "// BEGIN lwgpu_procs"
PROCS_END = "// END lwgpu_procs"

# Only what the vendored headers need to preprocess and parse.  The typedefs here are
# dropped from the cdef (they do not come from the vendored tree); cffi knows the names.
STUB_HEADERS: dict[str, str] = {
    "stddef.h": (
        "typedef __SIZE_TYPE__ size_t;\n"
        "typedef __PTRDIFF_TYPE__ ptrdiff_t;\n"
        "typedef __WCHAR_TYPE__ wchar_t;\n"
        "#define NULL ((void *)0)\n"
        "#define offsetof(t, m) __builtin_offsetof(t, m)\n"
    ),
    "stdint.h": (
        "typedef __INT8_TYPE__ int8_t;\n"
        "typedef __INT16_TYPE__ int16_t;\n"
        "typedef __INT32_TYPE__ int32_t;\n"
        "typedef __INT64_TYPE__ int64_t;\n"
        "typedef __UINT8_TYPE__ uint8_t;\n"
        "typedef __UINT16_TYPE__ uint16_t;\n"
        "typedef __UINT32_TYPE__ uint32_t;\n"
        "typedef __UINT64_TYPE__ uint64_t;\n"
        "typedef __INTPTR_TYPE__ intptr_t;\n"
        "typedef __UINTPTR_TYPE__ uintptr_t;\n"
        "typedef __INTMAX_TYPE__ intmax_t;\n"
        "typedef __UINTMAX_TYPE__ uintmax_t;\n"
        "#define INT8_MAX __INT8_MAX__\n"
        "#define INT16_MAX __INT16_MAX__\n"
        "#define INT32_MAX __INT32_MAX__\n"
        "#define INT64_MAX __INT64_MAX__\n"
        "#define UINT8_MAX __UINT8_MAX__\n"
        "#define UINT16_MAX __UINT16_MAX__\n"
        "#define UINT32_MAX __UINT32_MAX__\n"
        "#define UINT64_MAX __UINT64_MAX__\n"
        "#define INTPTR_MAX __INTPTR_MAX__\n"
        "#define UINTPTR_MAX __UINTPTR_MAX__\n"
        "#define SIZE_MAX __SIZE_MAX__\n"
    ),
    "inttypes.h": "#include <stdint.h>\n",
    "stdbool.h": "typedef _Bool bool;\n#define true 1\n#define false 0\n",
    "stdio.h": "#include <stddef.h>\ntypedef struct _IO_FILE FILE;\n",
    "stdarg.h": "typedef __builtin_va_list va_list;\n",
    "stdlib.h": "#include <stddef.h>\n",
    "string.h": "#include <stddef.h>\n",
    "limits.h": "#define INT_MAX __INT_MAX__\n#define LONG_MAX __LONG_MAX__\n",
}

_LINEMARKER = re.compile(r'^#\s*(?:line\s+)?\d+\s+"((?:[^"\\]|\\.)*)"', re.MULTILINE)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(\(?)", re.MULTILINE)
_INT_LITERAL = re.compile(r"^\(?\s*-?\s*(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?$")
_STR_LITERAL = re.compile(r'^"(?:[^"\\\n]|\\.)*"$')
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_EXTERN_PY = re.compile(r'extern\s+"Python(?:\+C)?"[^;]*?\b(\w+)\s*\(')
_MATCHES_NOTE = re.compile(r"//\s*matches:\s*(\w+)")
_NORETURN = re.compile(r"\b_Noreturn\b[^;(]*?\b(\w+)\s*\(")
_KEYWORD_ALIASES = {
    "__restrict__": "restrict",
    "__restrict": "restrict",
    "__inline__": "inline",
    "__inline": "inline",
    "__extension__": "",
    "__const": "const",
    "__volatile__": "volatile",
}


# What cffi's cdef() raises on input it cannot handle.
_CFFI_ERRORS = (CDefError, FFIError, ParseError, NotImplementedError, TypeError, AssertionError)


class GenError(Exception):
    """A failure with a message meant for the person running the build."""


@dataclasses.dataclass
class CdefResult:
    """The generated cdef and what went into it."""

    text: str
    dropped: list[tuple[str, str]]  # (name, reason)
    skipped_macros: list[str]
    vendored_files: list[str]


# --------------------------------------------------------------------------- preprocessing


def _include_dirs(llama_dir: Path) -> list[Path]:
    dirs = [llama_dir / sub for sub in INCLUDE_SUBDIRS]
    for d in dirs:
        if not d.is_dir():
            raise GenError(f"{d} does not exist: is --llama-dir the unpacked llama.cpp tree?")
    if not (dirs[0] / "llama.h").is_file():
        raise GenError(f"{dirs[0] / 'llama.h'} not found")
    return dirs


def _run_cc(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GenError(f"cannot run the C preprocessor {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        raise GenError(
            f"preprocessor failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    return proc.stdout


def preprocess(llama_dir: Path, cc: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """Return (preprocessed text with line markers, final object-like macro table)."""
    stubs = workdir / "stubs"
    stubs.mkdir()
    for name, text in STUB_HEADERS.items():
        (stubs / name).write_text(text)
    wrapper = workdir / "lw_cffi_input.c"
    wrapper.write_text("".join(f'#include "{h}"\n' for h in HEADERS))
    base = [*shlex.split(cc), "-E", "-nostdinc", "-std=c11", f"-I{stubs}"]
    base += [f"-I{d}" for d in _include_dirs(llama_dir)]
    text = _run_cc([*base, str(wrapper)])
    macros: dict[str, str] = {}
    for line in _run_cc([*base, "-dM", str(wrapper)]).splitlines():
        m = re.match(r"#define\s+([A-Za-z_]\w*)(?:\s+(.*))?$", line)
        if m:  # function-like macros have "NAME(" and do not match
            macros[m.group(1)] = (m.group(2) or "").strip()
    return text, macros


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
    raise GenError(f"unbalanced parentheses after offset {open_at} in the preprocessed text")


def _declarator_name_before(text: str, pos: int) -> str | None:
    """Name of the function declarator ``NAME(args)`` that ends just before ``pos``."""
    j = pos - 1
    while j >= 0 and text[j].isspace():
        j -= 1
    if j < 0 or text[j] != ")":
        return None
    depth = 0
    while j >= 0:
        if text[j] == ")":
            depth += 1
        elif text[j] == "(":
            depth -= 1
            if depth == 0:
                break
        j -= 1
    j -= 1
    while j >= 0 and text[j].isspace():
        j -= 1
    end = j + 1
    while j >= 0 and (text[j].isalnum() or text[j] == "_"):
        j -= 1
    name = text[j + 1 : end]
    return name if _IDENT.match(name) else None


def strip_gnu_extensions(text: str) -> tuple[str, set[str], list[str]]:
    """Remove ``__attribute__((...))``/``__asm__(...)``; return (text, deprecated, warnings).

    Newlines inside removed spans are kept so line markers stay right.
    """
    deprecated: set[str] = set()
    warnings: list[str] = []
    out: list[str] = []
    pos = 0
    for m in re.finditer(r"\b(__attribute__|__asm__|__asm)\b", text):
        if m.start() < pos:
            continue  # nested inside a span already removed
        j = m.end()
        while j < len(text) and text[j].isspace():
            j += 1
        if j >= len(text) or text[j] != "(":
            raise GenError(f"unexpected {m.group(1)} without '(' in the preprocessed text")
        close = _matching_paren(text, j)
        body = text[j : close + 1]
        if m.group(1) == "__attribute__" and re.search(r"\b(__)?deprecated(__)?\b", body):
            name = _declarator_name_before(text, m.start())
            if name:
                deprecated.add(name)
            else:
                snippet = text[max(0, m.start() - 60) : close + 1].replace("\n", " ")
                warnings.append(f"deprecated attribute not on a function, kept: {snippet}")
        out.append(text[pos : m.start()])
        out.append(" " + "\n" * body.count("\n"))
        pos = close + 1
    out.append(text[pos:])
    cleaned = "".join(out)
    for alias, keyword in _KEYWORD_ALIASES.items():
        cleaned = re.sub(rf"\b{alias}\b", keyword, cleaned)
    return cleaned, deprecated, warnings


# --------------------------------------------------------------------------- AST filtering


def _c_div(a: int, b: int) -> int:
    """C integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _const_int(node: c_ast.Node | None) -> int | None:
    """Evaluate a plain integer constant expression, or None."""
    if isinstance(node, c_ast.Constant):
        lit = node.value.rstrip("uUlL")
        if re.fullmatch(r"0[0-7]+", lit):
            lit = "0o" + lit[1:]  # C octal
        try:
            return int(lit, 0)
        except ValueError:
            return None  # float, char or string literal
    if isinstance(node, c_ast.UnaryOp) and node.op in ("-", "+", "~"):
        v = _const_int(node.expr)
        if v is None:
            return None
        return -v if node.op == "-" else ~v if node.op == "~" else v
    if isinstance(node, c_ast.BinaryOp):
        a, b = _const_int(node.left), _const_int(node.right)
        if a is None or b is None:
            return None
        ops = {
            "+": lambda: a + b,
            "-": lambda: a - b,
            "*": lambda: a * b,
            "/": lambda: _c_div(a, b) if b else None,
            "%": lambda: a - b * _c_div(a, b) if b else None,
            "<<": lambda: a << b,
            ">>": lambda: a >> b,
            "|": lambda: a | b,
            "&": lambda: a & b,
            "^": lambda: a ^ b,
        }
        fn = ops.get(node.op)
        return fn() if fn else None
    return None


class _ArrayDimFixer(c_ast.NodeVisitor):
    """Fold constant array lengths; make the others ``...`` (API mode computes them)."""

    def visit_ArrayDecl(self, node: c_ast.ArrayDecl) -> None:
        if node.dim is not None and not isinstance(node.dim, c_ast.ID):
            value = _const_int(node.dim)
            if value is None:
                node.dim = c_ast.ID("...")
            elif not isinstance(node.dim, c_ast.Constant):
                node.dim = c_ast.Constant("int", str(value))
        self.generic_visit(node)


def _ext_name(ext: c_ast.Node) -> str:
    name = getattr(ext, "name", None)
    if name:
        return str(name)
    if isinstance(ext, c_ast.FuncDef):
        return str(ext.decl.name)
    inner = getattr(ext, "type", None)
    if isinstance(inner, (c_ast.Struct, c_ast.Union, c_ast.Enum)):
        kind = type(inner).__name__.lower()
        return f"{kind} {inner.name or '<anonymous>'}"
    return type(ext).__name__


def _is_vendored(file: str, roots: Iterable[Path]) -> bool:
    try:
        p = Path(file).resolve()
    except OSError:
        return False
    return any(p.is_relative_to(r) for r in roots)


def filter_declarations(
    ast: c_ast.FileAST,
    roots: Sequence[Path],
    deprecated: set[str],
    omit_functions: dict[str, str] | None = None,
    omit_function_headers: dict[str, str] | None = None,
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Return ([(name, header basename, C text)], [(name, why dropped)]).

    ``omit_functions`` maps function names, ``omit_function_headers`` header basenames
    (whose functions are all left out; their types stay) to the reason given.
    """
    omit_functions = omit_functions or {}
    omit_function_headers = omit_function_headers or {}
    gen = c_generator.CGenerator()
    kept: list[tuple[str, str, str]] = []
    dropped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for ext in ast.ext:
        coord = ext.coord
        if coord is None or not _is_vendored(str(coord.file), roots):
            continue
        name = _ext_name(ext)
        header = os.path.basename(str(coord.file))
        if isinstance(ext, c_ast.FuncDef):
            dropped.append((name, "function definition (static inline) in a header"))
            continue
        if not isinstance(ext, (c_ast.Decl, c_ast.Typedef)):
            dropped.append((name, f"{type(ext).__name__} is not a declaration"))
            continue
        if isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.FuncDecl):
            if ext.name in deprecated:
                dropped.append((name, "marked deprecated"))
                continue
            why = omit_functions.get(ext.name) or omit_function_headers.get(header)
            if why:
                dropped.append((name, why))
                continue
            ext.funcspec = [f for f in ext.funcspec if f == "_Noreturn"]  # cffi accepts it
            ext.storage = [s for s in ext.storage if s not in ("extern", "inline")]
        elif isinstance(ext, c_ast.Decl) and ext.init is not None:
            ext.init = None  # static const X = expr;  API mode takes the value from C
        _ArrayDimFixer().visit(ext)
        text = gen.visit(ext) + ";"
        if text in seen:  # C11 allows repeating a typedef; cffi does not
            dropped.append((name, "repeats an identical earlier declaration"))
            continue
        seen.add(text)
        kept.append((name, header, text))
    return kept, dropped


# --------------------------------------------------------------------------- macros


def collect_macros(
    vendored_files: Sequence[str], macros: dict[str, str], declared: set[str]
) -> tuple[list[str], list[str]]:
    """Return (cdef lines for the usable constants, names of the other macros)."""
    lines: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for file in vendored_files:
        for m in _DEFINE.finditer(Path(file).read_text(errors="replace")):
            name, paren = m.group(1), m.group(2)
            if paren or name in seen:
                continue  # function-like, or #if/#else alternatives of one name
            seen.add(name)
            if name not in macros or name in declared:
                skipped.append(name)  # not defined in this configuration, or clashes
                continue
            value = macros[name]
            for _ in range(16):  # follow NAME -> OTHER_NAME aliases
                if _IDENT.match(value) and value in macros:
                    value = macros[value]
                else:
                    break
            if _INT_LITERAL.match(value):
                lines.append(f"#define {name} ...")
            elif _STR_LITERAL.match(value):
                lines.append(f"static const char *const {name};")
            else:
                skipped.append(name)
    return lines, skipped


# --------------------------------------------------------------------------- cdef assembly


def load_extra(path: Path, with_procs: bool) -> str:
    """The hand-written extra cdef, with the lwgpu_procs block kept or removed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise GenError(f"cannot read the extra cdef {path}: {exc}") from exc
    begin, end = text.find(PROCS_BEGIN), text.find(PROCS_END)
    if begin < 0 or end < begin:
        raise GenError(f"{path}: missing '{PROCS_BEGIN}' ... '{PROCS_END}' block")
    if not with_procs:
        end_line = text.find("\n", end)
        end_line = len(text) if end_line < 0 else end_line
        note = "// lwgpu_procs block left out: gen_cffi.py got no --procs-header"
        text = text[:begin] + note + text[end_line:]
    return text


def _validate_each(chunks: Sequence[tuple[str, str]], prefix: str) -> dict[int, str]:
    """cdef chunk by chunk; return {index: reason} of those cffi rejects."""
    ffi = FFI()
    if prefix:
        ffi.cdef(prefix)
    rejected: dict[int, str] = {}
    for i, (_name, text) in enumerate(chunks):
        try:
            ffi.cdef(text)
        except _CFFI_ERRORS as exc:
            reason = str(exc).strip().replace("\n", " ") or type(exc).__name__
            rejected[i] = f"cffi cannot parse it: {reason}"
    return rejected


def build_cdef(
    llama_dir: Path,
    extra_path: Path,
    with_procs: bool,
    cc: str = "gcc",
    backend_dl: bool = False,
    exclude: Iterable[str] = (),
) -> CdefResult:
    """Derive the cdef text from the headers under ``llama_dir`` plus the extra file.

    ``backend_dl``: llama.cpp is built with GGML_BACKEND_DL, so the functions of
    :data:`DL_MODULE_HEADERS` live in runtime-loaded modules and cannot be linked.
    ``exclude``: more function names to leave out.
    """
    llama_dir = llama_dir.resolve()
    roots = [d.resolve() for d in _include_dirs(llama_dir)]
    with tempfile.TemporaryDirectory(prefix="gen_cffi_") as tmp:
        text, macros = preprocess(llama_dir, cc, Path(tmp))
        cleaned, deprecated, warnings = strip_gnu_extensions(text)
        for w in warnings:
            print(f"gen_cffi: warning: {w}", file=sys.stderr)
        try:
            ast = c_parser.CParser().parse(cleaned, filename="lw_cffi_input.c")
        except ParseError as exc:
            raise GenError(f"pycparser cannot parse the preprocessed headers: {exc}") from exc

    vendored_files: list[str] = []
    for f in _LINEMARKER.findall(text):
        if f not in vendored_files and _is_vendored(f, roots) and Path(f).is_file():
            vendored_files.append(f)

    omit = dict(UNDEFINED_UPSTREAM)
    omit.update((name, "excluded with --exclude") for name in exclude)
    omit_headers = dict.fromkeys(DL_MODULE_HEADERS, _DL_REASON) if backend_dl else {}
    kept, dropped = filter_declarations(ast, roots, deprecated, omit, omit_headers)
    declared = {n for n, _, _ in kept}
    macro_lines, skipped_macros = collect_macros(vendored_files, macros, declared)
    macro_text = "\n".join(macro_lines)

    ffi = FFI()
    try:
        ffi.cdef(macro_text + "\n" + "\n".join(t for _, _, t in kept))
    except _CFFI_ERRORS:
        rejected = _validate_each([(n, t) for n, _, t in kept], macro_text)
        dropped += [(kept[i][0], why) for i, why in rejected.items()]
        kept = [k for i, k in enumerate(kept) if i not in rejected]

    parts = [
        "/* Generated by tools/gen_cffi.py from the vendored llama.cpp headers: do not edit. */",
        "",
        "/* ---- object-like #define constants (API mode takes the values from C) ---- */",
        macro_text,
    ]
    current = None
    for _, header, decl in kept:
        if header != current:
            parts += ["", f"/* ---- {header} ---- */"]
            current = header
        parts.append(decl)
    parts += ["", f"/* ---- {extra_path.name} ---- */", load_extra(extra_path, with_procs)]
    cdef = "\n".join(parts).rstrip() + "\n"
    return CdefResult(cdef, dropped, skipped_macros, vendored_files)


# --------------------------------------------------------------------------- C source


def _callback_notes(cdef: str) -> dict[str, str]:
    """{extern "Python" name: typedef it must match}, from the ``// matches:`` notes."""
    notes: dict[str, str] = {}
    for line in cdef.splitlines():
        m, note = _EXTERN_PY.search(line), _MATCHES_NOTE.search(line)
        if m and note:
            notes[m.group(1)] = note.group(1)
    return notes


def _field_checks(c_name: str, tp: model.StructOrUnion) -> list[str]:
    """``_Static_assert`` lines: each field of a struct/union has cffi's type in C too.

    cffi itself only compares sizes and offsets, and only when the module runs.
    """
    checks: list[str] = []
    for field, ftp, bitsize, _quals in tp.enumfields():
        if bitsize >= 0:
            continue  # __typeof__ does not apply to bit-fields
        access = f"(({c_name} *)0)->{field}"
        if isinstance(ftp, model.ArrayType) and ftp.length == "...":
            access, ftp = f"{access}[0]", ftp.item  # length left to the compiler
        try:
            ctype = ftp.get_c_name("")
        except VerificationError:
            continue
        checks.append(
            f"_Static_assert(__builtin_types_compatible_p(__typeof__({access}), {ctype}), "
            f'"cffi cdef of {c_name}.{field} differs from the C header");'
        )
    return checks


def _type_checks(ffi: FFI, cdef: str) -> list[str]:
    """``_Static_assert`` lines: cffi's type of each function, callback and struct field
    is the one the headers give it."""
    parser = getattr(ffi, "_parser", None)
    decls = getattr(parser, "_declarations", None)
    if not isinstance(decls, dict):
        print(
            "gen_cffi: warning: this cffi version hides its parsed declarations; "
            "the C source will not check function signatures and struct fields",
            file=sys.stderr,
        )
        return []
    # GCC gives _Noreturn functions a distinct ("volatile") type, so those are checked
    # by a plain redeclaration instead: a mismatch is a "conflicting types" error.
    noreturn = set(_NORETURN.findall(cdef))
    checks: list[str] = []
    structs_seen: set[int] = set()
    for key, (tp, _quals) in decls.items():
        kind, _, name = key.partition(" ")
        if isinstance(tp, model.StructOrUnion) and tp.fldnames is not None:
            if id(tp) not in structs_seen:
                structs_seen.add(id(tp))
                with contextlib.suppress(VerificationError):
                    checks += _field_checks(tp.get_c_name(""), tp)
            continue
        if kind != "function":
            continue
        try:
            if name in noreturn:
                checks.append(tp.as_raw_function().get_c_name(" " + name) + ";")
                continue
            checks.append(
                f"_Static_assert(__builtin_types_compatible_p(__typeof__(&{name}), "
                f'{tp.get_c_name("")}), "cffi cdef of {name}() differs from the C header");'
            )
        except VerificationError as exc:  # a type cffi cannot spell in C
            print(f"gen_cffi: warning: {name}() left unchecked: {exc}", file=sys.stderr)
    for name, typedef in _callback_notes(cdef).items():
        entry = decls.get(f"extern_python {name}")
        if entry is None:
            raise GenError(f'"// matches: {typedef}" note on {name}, not an extern "Python"')
        if f"typedef {typedef}" not in decls:
            raise GenError(f"{name} should match typedef {typedef}, which the cdef lacks")
        checks.append(
            f"_Static_assert(__builtin_types_compatible_p({typedef}, "
            f'{entry[0].get_c_name("")}), "extern \\"Python\\" {name} is not a {typedef}");'
        )
    return checks


# Small C functions of our own, declared in python/llama_webgpu/_cdef_extra.h.
C_HELPERS = """\
/* An abort callback for ggml that reads a flag: ggml polls it between graph nodes (hundreds
   of times per token), so it must not enter Python (a Python callback takes the GIL each time
   and stalls every compute thread). Python sets the flag to abort. */
static bool lw_abort_flag(void *flag)
{
    return __atomic_load_n((const int *)flag, __ATOMIC_RELAXED) != 0;
}

/* Greedy sampling with a logit bias: the first maximum of logits[0..n) with biases[j] added
   at ids[j] (distinct, ascending, each below n), given best, the first maximum of the
   unbiased logits (numpy finds that one with SIMD).  Unless best is itself biased only the
   biased entries can change the answer, so the vocabulary is not scanned again; otherwise it
   is, once, with the biases applied.  A few numpy calls did this in 50-100 us per token. */
static int32_t lw_biased_best(const float *logits, int32_t n, int32_t best,
                              const int32_t *ids, const float *biases, int32_t nb)
{
    int32_t pick = best, j;
    float top = logits[best];
    for (j = 0; j < nb; j++) {
        if (ids[j] == best)
            break;
    }
    if (j == nb) {
        for (j = 0; j < nb; j++) {
            float v = logits[ids[j]] + biases[j];
            if (v > top || (v == top && ids[j] < pick)) {
                top = v;
                pick = ids[j];
            }
        }
        return pick;
    }
    pick = -1;
    j = 0;
    for (int32_t i = 0; i < n; i++) {
        float v = logits[i];
        if (j < nb && ids[j] == i)
            v += biases[j++];
        if (pick < 0 || v > top) {
            top = v;
            pick = i;
        }
    }
    return pick;
}

/* The first maximum of x[0..n) (n > 0), as llama.cpp's greedy sampler picks it: index 0 unless
   a later value is greater (NaN never is).  Two passes: the largest value (32 lanes at a time
   with GCC/Clang vector extensions, plain C elsewhere), then its first position (the search
   stops there).  On x86-64 with glibc each pass is also compiled for AVX2 and the loader picks
   the one the CPU runs (262,144 logits, Gemma 3's vocabulary: 44 -> 19 us on the 2-core machine,
   as fast as numpy's argmax). */
#if defined(__GNUC__) || defined(__clang__)
#define LW_VEC8 1
typedef float lw_f8 __attribute__((vector_size(32)));
typedef int32_t lw_i8 __attribute__((vector_size(32)));
#endif
#if defined(LW_VEC8) && defined(__x86_64__) && defined(__GLIBC__)
#define LW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LW_CLONES
#endif

#ifdef LW_VEC8
/* macros, not functions: a function returning a 32-byte vector has another ABI with AVX */
#define LW_F8_LOAD(v, p) memcpy(&(v), (p), sizeof(v))
/* m's lanes replaced by v's where v's are greater (so NaN never replaces a value) */
#define LW_F8_MAX(m, v) \
    do { \
        lw_i8 gt_ = (v) > (m); \
        (m) = (lw_f8)(((lw_i8)(v) & gt_) | ((lw_i8)(m) & ~gt_)); \
    } while (0)
#endif

/* x[0], or the largest later value that is greater than it (NaN: never) */
LW_CLONES static float lw_max_value(const float *x, int32_t n)
{
    float top = x[0];
    int32_t i = 0;
#ifdef LW_VEC8
    lw_f8 a = {top, top, top, top, top, top, top, top}, b = a, c = a, d = a, v;
    for (; i + 32 <= n; i += 32) {
        LW_F8_LOAD(v, x + i);
        LW_F8_MAX(a, v);
        LW_F8_LOAD(v, x + i + 8);
        LW_F8_MAX(b, v);
        LW_F8_LOAD(v, x + i + 16);
        LW_F8_MAX(c, v);
        LW_F8_LOAD(v, x + i + 24);
        LW_F8_MAX(d, v);
    }
    LW_F8_MAX(a, b);
    LW_F8_MAX(c, d);
    LW_F8_MAX(a, c);
    for (int k = 0; k < 8; k++)
        top = a[k] > top ? a[k] : top;
#endif
    for (; i < n; i++)
        top = x[i] > top ? x[i] : top;
    return top;
}

/* the first i with x[i] == top, 0 when none (top is NaN) */
LW_CLONES static int32_t lw_first_equal(const float *x, int32_t n, float top)
{
    int32_t i = 0;
#ifdef LW_VEC8
    lw_f8 t = {top, top, top, top, top, top, top, top}, v0, v1, v2, v3;
    for (; i + 32 <= n; i += 32) {
        LW_F8_LOAD(v0, x + i);
        LW_F8_LOAD(v1, x + i + 8);
        LW_F8_LOAD(v2, x + i + 16);
        LW_F8_LOAD(v3, x + i + 24);
        lw_i8 eq = (v0 == t) | (v1 == t) | (v2 == t) | (v3 == t);
        uint64_t w[4];
        memcpy(w, &eq, sizeof w);
        if (w[0] | w[1] | w[2] | w[3])
            break;
    }
#endif
    for (; i < n; i++) {
        if (x[i] == top)
            return i;
    }
    return 0;
}

static int32_t lw_first_max(const float *x, int32_t n)
{
    return lw_first_equal(x, n, lw_max_value(x, n));
}

/* What a logit bias (ids/biases, see lw_biased_best) followed by llama.cpp's greedy sampler
   chooses from logits[0..n): the one definition Sampler._sample_greedy and lw_decode_greedy
   both use. */
static int32_t lw_greedy(const float *logits, int32_t n, const int32_t *ids,
                         const float *biases, int32_t nb)
{
    int32_t best = lw_first_max(logits, n);
    return nb > 0 ? lw_biased_best(logits, n, best, ids, biases, nb) : best;
}

/* One step of a generation (generate._steps): evaluate token at pos in sequence 0 (batch has
   room for it, its sequence fields already set) and check that ggml-webgpu's device is still
   usable (fault(reg); NULL without WebGPU).  One call instead of a dozen Python lines and calls
   each token, whose cold caches after a decode cost 100-300 us.  Returns 0, llama_decode's
   nonzero result, or LW_STEP_DEVICE_FAULT when the device was lost after a decode that
   returned 0. */
#define LW_STEP_DEVICE_FAULT (-1000)
#define LW_STEP_NO_LOGITS (-1001)
#define LW_STEP_NO_TOKEN (-1002)
static int32_t lw_decode_one(struct llama_context *ctx, struct llama_batch *batch,
                             llama_token token, llama_pos pos,
                             const char *(*fault)(ggml_backend_reg_t), ggml_backend_reg_t reg)
{
    batch->n_tokens = 1;
    batch->token[0] = token;
    batch->pos[0] = pos;
    batch->logits[0] = 1;
    int32_t rc = llama_decode(ctx, *batch);
    if (rc != 0)
        return rc;
    if (fault != NULL && fault(reg) != NULL)
        return LW_STEP_DEVICE_FAULT;
    return 0;
}

/* lw_decode_one, then the next token as a logit bias (ids/biases, see lw_biased_best) and
   greedy would choose it, recorded in chain (as llama_sampler_sample does), in *out;
   LW_STEP_NO_LOGITS when the context kept none. */
static int32_t lw_decode_greedy(struct llama_context *ctx, struct llama_batch *batch,
                                llama_token token, llama_pos pos, int32_t n_vocab,
                                const int32_t *ids, const float *biases, int32_t nb,
                                struct llama_sampler *chain,
                                const char *(*fault)(ggml_backend_reg_t), ggml_backend_reg_t reg,
                                llama_token *out)
{
    int32_t rc = lw_decode_one(ctx, batch, token, pos, fault, reg);
    if (rc != 0)
        return rc;
    const float *logits = llama_get_logits_ith(ctx, -1);
    if (logits == NULL)
        return LW_STEP_NO_LOGITS;
    llama_token best = lw_greedy(logits, n_vocab, ids, biases, nb);
    llama_sampler_accept(chain, best);
    *out = best;
    return 0;
}

/* lw_decode_one, then the next token from chain (llama_sampler_sample: the chain's samplers
   over the logits, and the choice accepted) in *out; LW_STEP_NO_TOKEN when it chose none. */
static int32_t lw_decode_sample(struct llama_context *ctx, struct llama_batch *batch,
                                llama_token token, llama_pos pos, struct llama_sampler *chain,
                                const char *(*fault)(ggml_backend_reg_t), ggml_backend_reg_t reg,
                                llama_token *out)
{
    int32_t rc = lw_decode_one(ctx, batch, token, pos, fault, reg);
    if (rc != 0)
        return rc;
    llama_token next = llama_sampler_sample(chain, ctx, -1);
    if (next < 0)
        return LW_STEP_NO_TOKEN;
    *out = next;
    return 0;
}
"""


def emit_c_source(cdef: str, module: str, procs_header: str | None = None) -> str:
    """Return the cffi API-mode C source for ``cdef`` (nothing is compiled)."""
    ffi = FFI()
    try:
        ffi.cdef(cdef)
    except _CFFI_ERRORS as exc:
        raise GenError(f"cffi rejects the final cdef: {exc}") from exc
    includes = ["#include <math.h>", "#include <string.h>"]  # C_HELPERS: INFINITY, memcpy
    includes += [f'#include "{h}"' for h in HEADERS]
    if procs_header:
        includes.append(f'#include "{os.path.basename(procs_header)}"')
    checks = _type_checks(ffi, cdef)
    source = "\n".join(
        [
            "/* Generated by tools/gen_cffi.py: do not edit. */",
            *includes,
            "",
            C_HELPERS,
            "/* Each function, callback and struct field of the cdef, as cffi sees it, must",
            "   have the type the headers give it: drift is a compile error, not a crash. */",
            "#if (defined(__GNUC__) || defined(__clang__)) && __STDC_VERSION__ >= 201112L",
            *checks,
            "#endif",
            "",
        ]
    )
    ffi.set_source(module, source)
    with tempfile.TemporaryDirectory(prefix="gen_cffi_emit_") as tmp:
        out = Path(tmp) / "module.c"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi prints "generating ..."
            ffi.emit_c_code(str(out))
        return out.read_text()


# --------------------------------------------------------------------------- CLI


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds exactly that; True if written."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def summarize(cdef: str) -> dict[str, int]:
    """Counts of what the cdef declares, as cffi parses it."""
    ffi = FFI()
    ffi.cdef(cdef)
    decls: dict = getattr(getattr(ffi, "_parser", None), "_declarations", {})
    counts = {
        "functions": 0,
        "structs": 0,
        "opaque_structs": 0,
        "unions": 0,
        "enums": 0,
        "typedefs": 0,
        "defines": 0,
        "constants": 0,
        "extern_python": 0,
    }
    for key, (tp, _) in decls.items():
        kind = key.partition(" ")[0]
        if kind == "function":
            counts["functions"] += 1
        elif kind in ("struct", "anonymous"):
            complete = getattr(tp, "fldnames", None) is not None
            if kind == "struct" or complete:
                counts["structs" if complete else "opaque_structs"] += 1
        elif kind == "union":
            counts["unions"] += 1
        elif kind == "enum":
            counts["enums"] += 1
        elif kind == "typedef":
            counts["typedefs"] += 1
        elif kind == "macro":
            counts["defines"] += 1
        elif kind == "constant":
            counts["constants"] += 1
        elif kind == "extern_python":
            counts["extern_python"] += 1
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-dir", required=True, type=Path, help="unpacked llama.cpp tree")
    ap.add_argument("--out-c", required=True, type=Path, help="C source to write")
    ap.add_argument(
        "--procs-header",
        help="llama_webgpu_procs.h (its directory must be on the include path when "
        "compiling); enables the lwgpu_* declarations",
    )
    ap.add_argument("--module", default=DEFAULT_MODULE, help="full module name")
    ap.add_argument("--cdef-out", type=Path, help="also write the cdef text here")
    ap.add_argument(
        "--backend-dl",
        action="store_true",
        help="llama.cpp is built with GGML_BACKEND_DL=ON: leave out the functions of "
        + ", ".join(DL_MODULE_HEADERS)
        + " (their types stay)",
    )
    ap.add_argument(
        "--exclude", action="append", default=[], metavar="NAME", help="leave out a function"
    )
    ap.add_argument("--extra", type=Path, default=DEFAULT_EXTRA, help="hand-written cdef")
    ap.add_argument(
        "--cc",
        default=os.environ.get("CC") or "gcc",
        help="GCC-compatible compiler driver used as the preprocessor (default: $CC or gcc)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="list what was dropped")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build_cdef(
            args.llama_dir,
            args.extra,
            bool(args.procs_header),
            args.cc,
            backend_dl=args.backend_dl,
            exclude=args.exclude,
        )
        source = emit_c_source(result.text, args.module, args.procs_header)
        counts = summarize(result.text)
        wrote = write_if_changed(args.out_c, source)
        if args.cdef_out:
            write_if_changed(args.cdef_out, result.text)
    except GenError as exc:
        print(f"gen_cffi: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, CDefError, FFIError, ParseError) as exc:
        print(f"gen_cffi: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    state = "written" if wrote else "unchanged"
    print(f"gen_cffi: {args.out_c} {state}: {summary}; dropped {len(result.dropped)}")
    if args.verbose:
        for name, why in result.dropped:
            print(f"  dropped {name}: {why}")
        print(f"  macros that are not constants: {' '.join(result.skipped_macros)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
