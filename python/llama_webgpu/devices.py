"""The compute devices llama.cpp can use: the CPU and, when Dawn offers one, a WebGPU adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _native
from ._native import c_str, ffi, lib

_DEVICE_TYPES = {
    lib.GGML_BACKEND_DEVICE_TYPE_CPU: "cpu",
    lib.GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
    lib.GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu",
    lib.GGML_BACKEND_DEVICE_TYPE_ACCEL: "accel",
}


@dataclass(frozen=True)
class Device:
    """One ggml backend device."""

    name: str
    """ggml's device name, e.g. "CPU" or "WebGPU"."""
    description: str
    """What the hardware is, e.g. the processor model or the WebGPU adapter's name."""
    backend: str
    """The backend that drives it: "CPU" or "WebGPU"."""
    type: str
    """"cpu", "gpu", "igpu" or "accel"."""
    software: bool
    """True for a WebGPU adapter that runs on the CPU (lavapipe, SwiftShader)."""
    memory_total: int
    memory_free: int
    adapter: dict[str, Any] | None = field(default=None, compare=False)
    """For WebGPU: vendor, backend type, adapter type, features and limits, as Dawn reports them."""

    @property
    def is_webgpu(self) -> bool:
        return self.backend == _native.WEBGPU_REG_NAME


class DeviceList(list[Device]):
    """The devices, plus why WebGPU is missing from them (None when it is there)."""

    webgpu_unavailable: str | None = None

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.webgpu_unavailable:
            text += f"  # no WebGPU device: {self.webgpu_unavailable}"
        return text


def _device(dev: Any) -> Device:
    props = ffi.new("struct ggml_backend_dev_props *")
    lib.ggml_backend_dev_get_props(dev, props)
    reg = lib.ggml_backend_dev_backend_reg(dev)
    backend = c_str(lib.ggml_backend_reg_name(reg)) if reg != ffi.NULL else ""
    adapter = _native.webgpu_adapter_info() if backend == _native.WEBGPU_REG_NAME else None
    return Device(
        name=c_str(props.name),
        description=c_str(props.description),
        backend=backend,
        type=_DEVICE_TYPES.get(props.type, "unknown"),
        software=bool(adapter and adapter.get("adapter_type") == "cpu"),
        memory_total=int(props.memory_total),
        memory_free=int(props.memory_free),
        adapter=adapter,
    )


def devices() -> DeviceList:
    """Every device the loaded backends offer; `.webgpu_unavailable` says why WebGPU is absent."""
    _native.init()
    count = lib.ggml_backend_dev_count()
    found = DeviceList(_device(lib.ggml_backend_dev_get(i)) for i in range(count))
    found.webgpu_unavailable = _native.webgpu_unavailable()
    return found
