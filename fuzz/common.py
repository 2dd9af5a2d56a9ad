"""What the fuzz targets share: atheris set-up with our modules instrumented, and seeding."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import atheris

import llama_webgpu.modelinfo
import llama_webgpu.tokenizer

LOADED = (llama_webgpu.modelinfo, llama_webgpu.tokenizer)
"""Imported here so that instrument_package() finds them."""


def instrument_package(prefix: str = "llama_webgpu") -> int:
    """Add atheris's coverage instrumentation to every function and method defined in the
    loaded modules of a package; returns how many were instrumented.

    atheris.instrument_imports() cannot see our modules in an editable install (scikit-build-
    core's import hook wraps the loader), so the functions are instrumented in place instead
    (atheris patches their code objects, nested functions included)."""
    done: set[int] = set()

    def visit(fn: object) -> None:
        if isinstance(fn, staticmethod | classmethod):
            fn = fn.__func__
        if isinstance(fn, property):
            for part in (fn.fget, fn.fset, fn.fdel):
                visit(part)
        elif isinstance(fn, functools.cached_property):
            visit(fn.func)
        elif (
            isinstance(fn, types.FunctionType)
            and fn.__module__.startswith(prefix)
            and id(fn) not in done
        ):
            done.add(id(fn))
            atheris.instrument_func(fn)

    for name, module in list(sys.modules.items()):
        if module is None or not (name == prefix or name.startswith(prefix + ".")):
            continue
        for value in list(vars(module).values()):
            if inspect.isclass(value) and value.__module__ == name:
                for member in list(vars(value).values()):
                    visit(member)
            else:
                visit(value)
    return len(done)


def corpus_dirs(argv: list[str]) -> list[Path]:
    """The corpus folders among libFuzzer's arguments (the arguments not starting with '-')."""
    return [Path(a) for a in argv[1:] if not a.startswith("-")]


def run(target: Callable[[bytes], None], argv: list[str], seed: Callable[[Path], None]) -> None:
    """Seed an empty first corpus folder, instrument llama_webgpu, then hand over to libFuzzer
    (which exits the process)."""
    logging.getLogger("llama_webgpu").setLevel(logging.CRITICAL)
    # ggml's abort handler attaches gdb for a backtrace (seconds per crash); the crash file
    # libFuzzer writes reproduces it, so skip that unless asked for
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    for arg in argv:
        if arg.startswith("-artifact_prefix=") and arg.endswith("/"):
            Path(arg.split("=", 1)[1]).mkdir(parents=True, exist_ok=True)
    dirs = corpus_dirs(argv)
    if dirs and not dirs[0].is_file() and not (dirs[0].is_dir() and any(dirs[0].iterdir())):
        dirs[0].mkdir(parents=True, exist_ok=True)
        seed(dirs[0])
    print(f"fuzz: {instrument_package()} functions of llama_webgpu instrumented", flush=True)
    atheris.Setup(argv, target)
    atheris.Fuzz()
