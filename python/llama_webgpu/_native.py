"""The C boundary: the one place that touches llama.cpp, ggml and Dawn through cffi.

`ffi` and `lib` come from the API-mode extension `_cffi`, generated from the vendored llama.h by
tools/gen_cffi.py. `init()` prepares the native side once per process:

1. native log lines go to the `llama_webgpu.native` logger instead of stderr;
2. the Dawn proc table (tools/gen_dawn.py) is filled from the `wgpudawn` package, or from the
   shared library named by $LLAMA_WEBGPU_DAWN_LIB, so the WebGPU backend calls a real Dawn;
3. the CPU backend (the best variant for this processor) and the WebGPU backend are loaded from
   the package's lib/ folder.

A missing or unusable WebGPU adapter is not an error here: the CPU backend still works and
`webgpu_unavailable()` says why WebGPU is absent.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from . import _cffi
from ._cffi import ffi, lib
from .errors import BackendError, LlamaError

# The shared libraries sit beside the compiled extension (in an editable install that is
# site-packages, not the source tree).
LIB_DIR = Path(_cffi.__file__).resolve().parent / "lib"
WEBGPU_MODULE = LIB_DIR / "libggml-webgpu.so"
WEBGPU_REG_NAME = "WebGPU"
DAWN_LIB_ENV = "LLAMA_WEBGPU_DAWN_LIB"

native_log = logging.getLogger("llama_webgpu.native")
# quiet unless the application configures logging (llama.cpp warns about many harmless things)
logging.getLogger("llama_webgpu").addHandler(logging.NullHandler())

_init_lock = threading.Lock()
_initialized = False
_webgpu_unavailable: str | None = "not initialized"
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_log_partial: list[str] = []

_LOG_LEVELS = {
    lib.GGML_LOG_LEVEL_NONE: logging.DEBUG,
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_last_level = logging.INFO


@ffi.def_extern()
def _lw_log_callback(level: int, text: Any, user_data: Any) -> None:
    """Receives llama.cpp/ggml log output; lines may arrive in pieces (GGML_LOG_LEVEL_CONT)."""
    global _last_level
    if text == ffi.NULL:
        return
    piece = ffi.string(text).decode("utf-8", "replace")
    if level != lib.GGML_LOG_LEVEL_CONT:
        _last_level = _LOG_LEVELS.get(level, logging.INFO)
    _log_partial.append(piece)
    if not piece.endswith("\n"):
        return
    message = "".join(_log_partial).rstrip("\n")
    _log_partial.clear()
    if _last_level >= logging.WARNING:
        _recent_errors.append(message.strip())
    native_log.log(_last_level, "%s", message)


def take_native_errors() -> str:
    """The warnings and errors llama.cpp logged since the last call, joined; clears them."""
    text = "; ".join(m for m in _recent_errors if m)
    _recent_errors.clear()
    return text


def drop_native_errors() -> None:
    """Forget what llama.cpp logged so far (cheaper than take_native_errors on a hot path)."""
    _recent_errors.clear()


def fail(exc_type: type[LlamaError], message: str) -> LlamaError:
    """An exception of exc_type carrying message plus what the native side logged about it."""
    native = take_native_errors()
    return exc_type(f"{message}: {native}" if native else message)


def c_str(ptr: Any) -> str:
    """A C string as str ('' for NULL)."""
    return "" if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")


def _fill_dawn_procs() -> str | None:
    """Point the proc table at a real Dawn. Returns why that failed, or None."""
    path = os.environ.get(DAWN_LIB_ENV)
    if path:
        if lib.lwgpu_procs_load_library(path.encode()) != 0:
            return f"{DAWN_LIB_ENV}={path}: {c_str(lib.lwgpu_procs_last_error())}"
        return None
    try:
        from wgpudawn._lib import ffi as dawn_ffi
        from wgpudawn._lib import lib as dawn_lib
    except Exception as e:  # ImportError, or an OSError from a broken install
        return f"the wgpudawn package (Dawn) could not be imported: {e}"
    filled = 0
    for i in range(lib.lwgpu_procs_count()):
        name = ffi.string(lib.lwgpu_procs_name(i))
        try:
            fn = dawn_ffi.addressof(dawn_lib, name.decode())
        except (AttributeError, ffi.error):
            continue  # not in this Dawn build; calling it would stop with a clear message
        address = int(dawn_ffi.cast("uintptr_t", fn))
        if lib.lwgpu_procs_set(name, ffi.cast("void *", address)) == 0:
            filled += 1
    if filled == 0:
        return "wgpudawn provided none of the WebGPU functions"
    return None


def _load_webgpu() -> str | None:
    """Load the WebGPU backend module. Returns why WebGPU is unavailable, or None."""
    reason = _fill_dawn_procs()
    if reason:
        return reason
    if not WEBGPU_MODULE.exists():
        return f"this build has no WebGPU backend ({WEBGPU_MODULE.name} is missing)"
    reg = lib.ggml_backend_load(str(WEBGPU_MODULE).encode())
    if reg == ffi.NULL:
        detail = take_native_errors() or "no detail"
        return f"the WebGPU backend module could not be loaded ({detail})"
    if lib.ggml_backend_reg_dev_count(reg) == 0:
        info = webgpu_adapter_info() or {}
        if not info.get("found"):
            return (
                "Dawn found no WebGPU adapter (on Linux it needs a Vulkan driver; without a GPU, "
                "Mesa's lavapipe 25 or newer)"
            )
        missing = {"shader-f16", "implicit-device-synchronization"} - set(info.get("features", []))
        return (
            f"the WebGPU adapter {info.get('device')!r} lacks "
            f"{', '.join(sorted(missing)) or 'a required feature'}"
        )
    return None


def init() -> None:
    """Prepare the native side (idempotent, thread-safe)."""
    global _initialized, _webgpu_unavailable
    if _initialized:
        return
    with _init_lock:
        if _initialized:
            return
        lib.llama_log_set(lib._lw_log_callback, ffi.NULL)
        lib.ggml_log_set(lib._lw_log_callback, ffi.NULL)
        # WebGPU first: the proc table must be filled before anything could call into Dawn.
        _webgpu_unavailable = _load_webgpu()
        lib.ggml_backend_load_all_from_path(str(LIB_DIR).encode())
        lib.llama_backend_init()
        take_native_errors()
        _initialized = True


def webgpu_unavailable() -> str | None:
    """Why the WebGPU backend has no device, or None when it has one."""
    init()
    return _webgpu_unavailable


def _webgpu_text_proc(name: bytes) -> tuple[Any, Any] | None:
    """(function, registry) of a `const char *f(ggml_backend_reg_t)` that ggml-webgpu exports
    through get_proc_address (our patches add them); None without WebGPU or that function."""
    reg = lib.ggml_backend_reg_by_name(WEBGPU_REG_NAME.encode())
    if reg == ffi.NULL:
        return None
    fn = lib.ggml_backend_reg_get_proc_address(reg, name)
    if fn == ffi.NULL:
        return None
    return ffi.cast("const char *(*)(ggml_backend_reg_t)", fn), reg


_fault_check: tuple[Any, Any] | None = None


def webgpu_fault_check() -> tuple[Any, Any]:
    """ggml-webgpu's device check (patches/0009) as (function, registry), for C code to call
    (lw_decode_one); two NULLs when there is none (no WebGPU backend loaded)."""
    global _fault_check
    if _fault_check is None:
        _fault_check = _webgpu_text_proc(b"ggml_backend_webgpu_device_fault")
        if _fault_check is None:
            return ffi.NULL, ffi.NULL
    return _fault_check


def webgpu_device_fault() -> str | None:
    """Why the WebGPU device can no longer be used (lost, a failed or timed-out wait; patches/0009),
    or None while it can (or when there is no WebGPU backend)."""
    fn, reg = webgpu_fault_check()
    if fn == ffi.NULL:
        return None
    reason = fn(reg)
    return None if reason == ffi.NULL else c_str(reason)


def webgpu_adapter_info() -> dict | None:
    """What ggml-webgpu found when it probed Dawn for an adapter (patches/0003), or None."""
    proc = _webgpu_text_proc(b"ggml_backend_webgpu_adapter_info")
    text = c_str(proc[0](proc[1])) if proc is not None else None
    return json.loads(text) if text else None


class CpuThreadpool:
    """ggml's CPU worker threads, kept alive between graph computations (as llama-bench does).

    Without one, the CPU backend starts and joins its worker threads for every decode call,
    which made multi-threaded CPU decode through the API less than half as fast as llama-bench.
    The functions live in the CPU backend module (loaded at run time), reached through its
    registry's get_proc_address. Freed by free() or when collected (after the contexts using
    it: Context holds it until its own llama_free).
    """

    _fns: tuple[Any, Any] | None = None

    def __init__(self, n_threads: int):
        if CpuThreadpool._fns is None:
            reg = lib.ggml_backend_reg_by_name(b"CPU")
            new = free = ffi.NULL
            if reg != ffi.NULL:
                new = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new")
                free = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free")
            if new == ffi.NULL or free == ffi.NULL:
                raise BackendError("the CPU backend offers no threadpool functions")
            CpuThreadpool._fns = (
                ffi.cast("struct ggml_threadpool *(*)(struct ggml_threadpool_params *)", new),
                ffi.cast("void (*)(struct ggml_threadpool *)", free),
            )
        new_fn, free_fn = CpuThreadpool._fns
        params = ffi.new(
            "struct ggml_threadpool_params *", lib.ggml_threadpool_params_default(n_threads)
        )
        ptr = new_fn(params)
        if ptr == ffi.NULL:
            raise fail(BackendError, f"could not start {n_threads} CPU worker threads")
        self.ptr = ffi.gc(ptr, free_fn)

    def free(self) -> None:
        if self.ptr != ffi.NULL:
            ptr, self.ptr = self.ptr, ffi.NULL
            ffi.release(ptr)
