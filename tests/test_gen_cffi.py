"""tools/gen_cffi.py: the cffi cdef comes from the vendored headers and the C source it emits
compiles against them, while a cdef that drifts from the headers does not."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "tools" / "gen_cffi.py"
LLAMA_DIR = ROOT / "vendor" / "llama.cpp"
INCLUDE_DIRS = [LLAMA_DIR / "include", LLAMA_DIR / "ggml" / "include"]
MODULE = "llama_webgpu._cffi"
CC = os.environ.get("CC") or "gcc"
# Signature drift must be an error, not a warning; -Wall -Wextra must stay quiet.
WARN_FLAGS = [
    "-Wall",
    "-Wextra",
    "-Werror=implicit-function-declaration",
    "-Werror=incompatible-pointer-types",
]
PROCS_API = """\
#pragma once
#include <stddef.h>
size_t lwgpu_procs_count(void);
const char *lwgpu_procs_name(size_t i);
int lwgpu_procs_set(const char *name, void *fn);
size_t lwgpu_procs_missing(void);
int lwgpu_procs_load_library(const char *path);
const char *lwgpu_procs_last_error(void);
"""

pytestmark = [
    pytest.mark.skipif(
        not (LLAMA_DIR / "include" / "llama.h").is_file(),
        reason="vendor/llama.cpp is not unpacked: run `python vendor/fetch.py`",
    ),
    pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler {CC!r}"),
]


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cffi", GEN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_cffi"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def procs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the generated llama_webgpu_procs.h."""
    d = tmp_path_factory.mktemp("procs")
    (d / "llama_webgpu_procs.h").write_text(PROCS_API)
    return d


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, procs_dir: Path) -> dict[str, Path]:
    """Run the CLI the way CMake does, with the proc table header."""
    out = tmp_path_factory.mktemp("gen")
    c_file, cdef_file = out / "_cffi.c", out / "_cffi_cdef.h"
    cmd = [sys.executable, str(GEN), "--llama-dir", str(LLAMA_DIR), "--out-c", str(c_file)]
    cmd += ["--procs-header", str(procs_dir / "llama_webgpu_procs.h")]
    cmd += ["--module", MODULE, "--cdef-out", str(cdef_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return {"c": c_file, "cdef": cdef_file, "dir": out}


@pytest.fixture(scope="module")
def cdef(generated: dict[str, Path]) -> str:
    return generated["cdef"].read_text()


def compile_c(c_file: Path, procs_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [CC, "-fPIC", f"-I{sysconfig.get_paths()['include']}"]
    cmd += [f"-I{d}" for d in INCLUDE_DIRS] + [f"-I{procs_dir}", *WARN_FLAGS, *extra, str(c_file)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def declares_function(cdef: str, name: str) -> bool:
    return re.search(rf"[\s*]{name}\s*\(", cdef) is not None


def header_struct_fields(header: Path, struct: str) -> list[str]:
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", header.read_text(), flags=re.S)
    body = re.search(rf"struct {struct}\s*{{(.*?)}};", text, re.S)
    assert body, f"struct {struct} not found in {header}"
    return [re.findall(r"\w+", f)[-1] for f in body.group(1).split(";") if f.strip()]


def test_cdef_declares_the_api_the_binding_uses(cdef: str) -> None:
    for name in [
        "llama_tokenize",
        "llama_model_load_from_file",
        "llama_model_free",
        "llama_decode",
        "llama_log_set",
        "ggml_backend_dev_get",
        "ggml_backend_load",
        "ggml_backend_load_all_from_path",
        "ggml_backend_dev_count",
        "gguf_init_from_file",
        "gguf_get_n_kv",
        "ggml_cpu_has_avx2",  # ggml-cpu.h
        "lwgpu_procs_load_library",
        "lwgpu_procs_last_error",
    ]:
        assert declares_function(cdef, name), name
    for callback in ["_lw_log_callback", "_lw_progress_callback", "_lw_abort_callback"]:
        assert re.search(rf'extern "Python" \w+ {callback}\(', cdef), callback


def test_struct_llama_model_params_has_the_headers_fields_in_order(cdef: str, gen) -> None:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef)
    fields = [name for name, _ in ffi.typeof("struct llama_model_params").fields]
    expected = header_struct_fields(LLAMA_DIR / "include" / "llama.h", "llama_model_params")
    assert fields == expected
    assert {"devices", "n_gpu_layers", "progress_callback", "vocab_only"} <= set(fields)
    # array lengths that are not plain integers are left to the compiler
    assert "int32_t op_params[...];" in cdef


def test_integer_and_string_defines_become_api_mode_constants(cdef: str) -> None:
    for name in [
        "LLAMA_DEFAULT_SEED",
        "LLAMA_TOKEN_NULL",
        "LLAMA_FILE_MAGIC_GGSN",
        "LLAMA_SESSION_MAGIC",
        "LLAMA_SESSION_VERSION",
        "LLAMA_STATE_SEQ_VERSION",
        "GGML_MAX_DIMS",
        "GGML_MAX_NAME",
        "GGUF_DEFAULT_ALIGNMENT",
    ]:
        assert f"\n#define {name} ...\n" in cdef, name
    assert "static const char *const GGUF_MAGIC;" in cdef
    # macros that are not constants stay out
    for name in ["LLAMA_API", "GGML_API", "GGML_RESTRICT", "GGML_PAD", "LLAMA_H"]:
        assert not re.search(rf"\b{name}\b", cdef), name


def test_deprecated_stub_and_unimplemented_declarations_are_left_out(cdef: str) -> None:
    for name in [
        "llama_load_model_from_file",  # DEPRECATED(...)
        "llama_free_model",
        "llama_token_bos",
        "ggml_type_sizef",  # GGML_DEPRECATED(...)
        "ggml_threadpool_get_n_threads",  # declared, defined nowhere upstream
    ]:
        assert not declares_function(cdef, name), name
    # the stub C library headers contribute nothing; GNU syntax is gone
    assert not re.search(r"typedef [^;]*\b(int32_t|size_t|bool|FILE)\s*;", cdef)
    assert "__attribute__" not in cdef
    assert not re.search(r"^\s*extern\s+\w", cdef, re.M)


def test_generated_source_compiles_cleanly_against_the_headers(
    generated: dict[str, Path], procs_dir: Path
) -> None:
    source = generated["c"].read_text()
    assert '#include "llama.h"' in source and '#include "llama_webgpu_procs.h"' in source
    assert "__builtin_types_compatible_p(__typeof__(&llama_tokenize)" in source
    assert "__typeof__(((struct llama_model_params *)0)->vocab_only)" in source
    so = generated["dir"] / "_cffi.so"
    # Undefined llama/ggml symbols are fine in a shared object; it is not imported here.
    proc = compile_c(generated["c"], procs_dir, "-shared", "-O0", "-o", str(so))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warning" not in proc.stderr, proc.stderr[-4000:]
    assert so.stat().st_size > 0


DRIFTS = {  # what: (text in the generated cdef, wrong replacement, expected compiler error)
    "return type": (
        "size_t llama_max_devices(void);",
        "int llama_max_devices(void);",
        "cffi cdef of llama_max_devices() differs from the C header",
    ),
    "pointer argument": (
        "llama_token *tokens, int32_t n_tokens_max",
        "float *tokens, int32_t n_tokens_max",
        "cffi cdef of llama_tokenize() differs from the C header",
    ),
    "struct field": (
        "  bool vocab_only;",
        "  int vocab_only;",
        "cffi cdef of struct llama_model_params.vocab_only differs from the C header",
    ),
    "callback": (
        "bool _lw_abort_callback(void *data)",
        "bool _lw_abort_callback(int data)",
        'extern \\"Python\\" _lw_abort_callback is not a ggml_abort_callback',
    ),
    "procs API": (
        "int lwgpu_procs_set(const char *name, void *fn);",
        "int lwgpu_procs_set(const char *name, int fn);",
        "cffi cdef of lwgpu_procs_set() differs from the C header",
    ),
}


@pytest.fixture(scope="module")
def emitted_from_cdef(gen, cdef: str, procs_dir: Path, tmp_path_factory) -> str:
    """emit_c_source() on the unmodified cdef: the baseline the drifts are made from."""
    source = gen.emit_c_source(cdef, MODULE, "llama_webgpu_procs.h")
    good = tmp_path_factory.mktemp("good") / "good.c"
    good.write_text(source)
    proc = compile_c(good, procs_dir, "-fsyntax-only")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return source


@pytest.mark.parametrize("what", DRIFTS)
def test_cdef_that_drifts_from_the_headers_does_not_compile(
    gen, cdef: str, emitted_from_cdef: str, procs_dir: Path, tmp_path: Path, what: str
) -> None:
    right, wrong, message = DRIFTS[what]
    assert cdef.count(right) == 1, f"{what}: {right!r} not in the cdef once"
    bad_source = gen.emit_c_source(cdef.replace(right, wrong), MODULE, "llama_webgpu_procs.h")
    assert bad_source != emitted_from_cdef
    bad = tmp_path / "bad.c"
    bad.write_text(bad_source)
    proc = compile_c(bad, procs_dir, "-fsyntax-only")
    assert proc.returncode != 0, f"a wrong {what} compiled"
    assert f'static assertion failed: "{message}"' in proc.stderr, proc.stderr[-4000:]


def test_without_procs_header_the_lwgpu_api_is_left_out(gen, tmp_path: Path) -> None:
    result = gen.build_cdef(LLAMA_DIR, gen.DEFAULT_EXTRA, with_procs=False)
    assert not declares_function(result.text, "lwgpu_procs_count")
    assert 'extern "Python" void _lw_log_callback(' in result.text
    source = gen.emit_c_source(result.text, MODULE, None)
    assert "llama_webgpu_procs.h" not in source
    c_file = tmp_path / "noprocs.c"
    c_file.write_text(source)
    proc = compile_c(c_file, tmp_path, "-fsyntax-only")
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_backend_dl_leaves_out_the_cpu_backend_functions_but_not_its_types(gen) -> None:
    result = gen.build_cdef(LLAMA_DIR, gen.DEFAULT_EXTRA, with_procs=False, backend_dl=True)
    for name in ["ggml_cpu_has_avx2", "ggml_backend_cpu_init", "ggml_graph_compute"]:
        assert not declares_function(result.text, name), name
    assert "struct ggml_cplan" in result.text
    assert declares_function(result.text, "ggml_backend_load_all_from_path")


def test_unchanged_output_is_not_rewritten(generated: dict[str, Path], procs_dir: Path) -> None:
    c_file = generated["c"]
    os.utime(c_file, (1_000_000_000, 1_000_000_000))
    cmd = [sys.executable, str(GEN), "--llama-dir", str(LLAMA_DIR), "--out-c", str(c_file)]
    cmd += ["--procs-header", str(procs_dir / "llama_webgpu_procs.h"), "--module", MODULE]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "unchanged" in proc.stdout
    assert c_file.stat().st_mtime == 1_000_000_000


def test_bad_llama_dir_exits_nonzero_with_a_message(tmp_path: Path) -> None:
    cmd = [sys.executable, str(GEN), "--llama-dir", str(tmp_path), "--out-c", str(tmp_path / "x.c")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "gen_cffi: error:" in proc.stderr and "--llama-dir" in proc.stderr
    assert not (tmp_path / "x.c").exists()


def test_deprecated_attribute_is_traced_to_its_function(gen) -> None:
    text = (
        "int kept(int a) __attribute__((format(printf, 1, 2)));\n"
        'struct s * old_api(const char * p,\n int n) __attribute__((deprecated("use new_api")));\n'
    )
    cleaned, deprecated, warnings = gen.strip_gnu_extensions(text)
    assert deprecated == {"old_api"}
    assert "__attribute__" not in cleaned and cleaned.count("\n") == text.count("\n")
    assert warnings == []
