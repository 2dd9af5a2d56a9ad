"""llama-webgpu: llama.cpp with its WebGPU backend (Dawn), for Python."""

from __future__ import annotations

from .chat import ChatFormatter, assistant_message, parse_tool_calls, response_format_kwargs
from .compat import Llama, LlamaGrammar, LlamaState
from .context import Context, ContextParams
from .devices import Device, DeviceList, devices
from .errors import (
    BackendError,
    ChatTemplateError,
    ClosedError,
    ContextError,
    ContextFullError,
    DecodeError,
    DeviceLostError,
    GrammarError,
    LlamaError,
    ModelLoadError,
    TokenizeError,
)
from .generate import (
    GenerationResponse,
    GenerationResult,
    generate,
    generate_step,
    stream_generate,
)
from .hub import download_gguf
from .json_schema import json_schema_to_gbnf
from .model import LoraAdapter, Model, ModelParams
from .models import DEFAULT_MODEL, KNOWN_MODELS, model_path
from .sampling import Sampler, SamplingParams, make_sampler, token_logprobs
from .tokenizer import StreamingDetokenizer, Tokenizer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "BackendError",
    "ChatFormatter",
    "ChatTemplateError",
    "ClosedError",
    "Context",
    "ContextError",
    "ContextFullError",
    "ContextParams",
    "DecodeError",
    "Device",
    "DeviceList",
    "DeviceLostError",
    "GenerationResponse",
    "GenerationResult",
    "GrammarError",
    "Llama",
    "LlamaError",
    "LlamaGrammar",
    "LlamaState",
    "LoraAdapter",
    "Model",
    "ModelLoadError",
    "ModelParams",
    "Sampler",
    "SamplingParams",
    "StreamingDetokenizer",
    "TokenizeError",
    "Tokenizer",
    "__version__",
    "assistant_message",
    "devices",
    "download_gguf",
    "generate",
    "generate_step",
    "json_schema_to_gbnf",
    "make_sampler",
    "model_path",
    "parse_tool_calls",
    "response_format_kwargs",
    "stream_generate",
    "token_logprobs",
]
