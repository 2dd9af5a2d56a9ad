"""devices(): the CPU is always listed; WebGPU when Dawn finds an adapter, else explained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import llama_webgpu as lw

PROBE = (
    "import json, llama_webgpu as lw; d = lw.devices(); "
    "print(json.dumps({'backends': [x.backend for x in d], 'why': d.webgpu_unavailable}))"
)


def probe(**env: str) -> dict:
    """devices() in a fresh process with extra environment variables."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_devices_lists_the_cpu_with_its_memory():
    cpu = [d for d in lw.devices() if d.backend == "CPU"]
    assert len(cpu) == 1
    assert cpu[0].type == "cpu"
    assert cpu[0].memory_total > 100 * 2**20
    assert not cpu[0].software


@pytest.mark.webgpu
def test_devices_lists_the_webgpu_adapter_with_required_features(webgpu_device):
    adapter = webgpu_device.adapter
    assert webgpu_device.type == "gpu"
    assert adapter["found"] is True
    assert {"shader-f16", "implicit-device-synchronization"} <= set(adapter["features"])
    assert adapter["backend_type"] in {"vulkan", "metal", "d3d12"}
    assert webgpu_device.description == adapter["device"]
    assert webgpu_device.memory_total == adapter["limits"]["max_buffer_size"]
    # lavapipe is a CPU adapter and must be reported as software; a real GPU must not be
    assert webgpu_device.software == (adapter["adapter_type"] == "cpu")
    if "llvmpipe" in adapter["device"]:
        assert webgpu_device.software


def test_an_unloadable_dawn_library_is_explained_and_cpu_still_works(tmp_path):
    bogus = tmp_path / "libwebgpu_dawn.so"
    bogus.write_bytes(b"not an ELF file")
    result = probe(LLAMA_WEBGPU_DAWN_LIB=str(bogus))
    assert "WebGPU" not in result["backends"]
    assert "CPU" in result["backends"]
    assert str(bogus) in result["why"]


@pytest.mark.webgpu
def test_no_vulkan_driver_means_no_adapter_explained(webgpu_device, tmp_path):
    if webgpu_device.adapter["backend_type"] != "vulkan":
        pytest.skip("only meaningful where Dawn uses Vulkan")
    result = probe(
        VK_DRIVER_FILES=str(tmp_path / "none.json"), VK_ICD_FILENAMES=str(tmp_path / "none.json")
    )
    assert "WebGPU" not in result["backends"]
    assert "CPU" in result["backends"]
    assert "no WebGPU adapter" in result["why"]
