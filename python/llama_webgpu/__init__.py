"""llama-webgpu: llama.cpp with its WebGPU backend (Dawn), for Python."""

from __future__ import annotations

from .devices import Device, DeviceList, devices
from .errors import (
    BackendError,
    ClosedError,
    ContextError,
    ContextFullError,
    DecodeError,
    GrammarError,
    LlamaError,
    ModelLoadError,
    TokenizeError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ClosedError",
    "ContextError",
    "ContextFullError",
    "DecodeError",
    "Device",
    "DeviceList",
    "GrammarError",
    "LlamaError",
    "ModelLoadError",
    "TokenizeError",
    "__version__",
    "devices",
]
