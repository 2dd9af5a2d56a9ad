"""The exceptions llama-webgpu raises. Every failure of the native layer becomes one of these."""

from __future__ import annotations


class LlamaError(Exception):
    """Base class: something llama.cpp, ggml or Dawn reported, or an invalid request."""


class BackendError(LlamaError):
    """A compute backend or device could not be loaded, found or used (e.g. no WebGPU adapter)."""


class ModelLoadError(LlamaError):
    """A model file is missing, unreadable, corrupt or unsupported."""


class ContextError(LlamaError):
    """An inference context could not be created, or is in use by another generation."""


class DecodeError(LlamaError):
    """Evaluating a batch of tokens failed."""


class DeviceLostError(DecodeError, BackendError):
    """The WebGPU device was lost or stopped answering (a driver reset, a failed or timed-out wait).
    It stays unusable in this process; models on the CPU still work."""


class ContextFullError(DecodeError):
    """The tokens do not fit: the prompt or the generation exceeds the context size."""


class TokenizeError(LlamaError):
    """Text could not be tokenized or tokens could not be turned back into text."""


class GrammarError(LlamaError):
    """A GBNF grammar or JSON schema could not be parsed or compiled."""


class ChatTemplateError(LlamaError):
    """A chat template could not be parsed or rendered, or tried something the sandbox forbids."""


class ClosedError(LlamaError):
    """An object was used after close()."""
