"""Shared fixtures: where the build tree, llama.cpp's test tools and a C-loadable Dawn are."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# CI sets these to 1 so that tests needing a WebGPU adapter (or a browser) fail instead of
# skipping when none is found.
REQUIRE_WEBGPU_ENV = "LLAMA_WEBGPU_REQUIRE_WEBGPU"
REQUIRE_BROWSER_ENV = "LLAMA_WEBGPU_REQUIRE_BROWSER"


def need(condition: bool, reason: str, require_env: str = REQUIRE_WEBGPU_ENV) -> None:
    """Skip when a prerequisite is missing, or fail when $require_env is 1 (CI)."""
    if not condition:
        if os.environ.get(require_env) == "1":
            pytest.fail(f"{require_env}=1: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def webgpu_device():
    """The WebGPU device of the installed package (lavapipe without a GPU)."""
    import llama_webgpu as lw

    found = lw.devices()
    gpu = [d for d in found if d.is_webgpu]
    need(bool(gpu), f"no WebGPU device: {found.webgpu_unavailable}")
    return gpu[0]


@pytest.fixture(scope="module")
def gpu(webgpu_device):
    """The default model (SmolLM2) on the WebGPU device, loaded once per test module."""
    from llama_webgpu.model import Model
    from llama_webgpu.models import model_path

    with Model(model_path(), device="webgpu") as m:
        yield m


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """The CMake build tree that `pip install .` left (pyproject.toml: build-dir)."""
    caches = sorted((ROOT / "build").glob("*/CMakeCache.txt"))
    need(bool(caches), "no build tree under build/: run `pip install .` from the repository")
    return caches[-1].parent


@pytest.fixture(scope="session")
def test_backend_ops(build_dir: Path) -> Path:
    """llama.cpp's test-backend-ops in the package's build tree, built there if it is missing.

    An existing binary is used as it is (it links the tree's ggml libraries, so it follows a
    rebuilt package); delete it to have it rebuilt.
    """
    exe = build_dir / "bin" / "test-backend-ops"
    if not exe.exists():
        proc = subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "test-backend-ops"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.fail(f"building test-backend-ops failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    assert exe.exists(), f"{exe} was not built"
    return exe


@pytest.fixture(scope="session")
def dawn_shared_library() -> Path:
    """A plain libwebgpu_dawn.so for C-only tools (from the rillfacet wheel, a test extra)."""
    spec = importlib.util.find_spec("rillfacet")
    path = Path(spec.origin).parent / "libwebgpu_dawn.so" if spec and spec.origin else None
    need(path is not None and path.exists(), "rillfacet (a C-loadable Dawn) is not installed")
    return path
