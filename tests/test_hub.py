"""download_gguf and Model.from_pretrained against a fake Hugging Face cache, offline.

Nothing is fetched: the cache under tmp_path has the layout huggingface_hub writes
(models--owner--name/refs/<branch>, snapshots/<commit>/<files>), with the real SmolLM2 GGUF
linked in, and HF_HUB_OFFLINE=1 or local_files_only=True.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llama_webgpu.hub import download_gguf, resolve_gguf
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

pytest.importorskip("huggingface_hub")

REPO = "someone/SmolLM2-135M-Instruct-GGUF"
MAIN = "a" * 40
DEV = "b" * 40
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
FILES = [
    SMOL,
    "SmolLM2-135M-Instruct.Q8_0.gguf",
    "README.md",
    "big/Big-Q4_K_M-00001-of-00002.gguf",
    "big/Big-Q4_K_M-00002-of-00002.gguf",
    "broken-Q2_K-00001-of-00003.gguf",
    "broken-Q2_K-00003-of-00003.gguf",
]


def add_snapshot(cache: Path, commit: str, files: list[str], ref: str | None) -> Path:
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for name in files:
        path = snapshot / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == SMOL:
            path.symlink_to(model_path())
        else:
            path.write_bytes(b"GGUF-placeholder " + name.encode())
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_snapshot(tmp_path, MAIN, FILES, "main")
    add_snapshot(tmp_path, DEV, ["SmolLM2-dev.Q4_1.gguf"], "dev")
    return tmp_path


def snapshot_file(cache: Path, commit: str, name: str) -> Path:
    return cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit / name


def test_glob_resolves_to_the_one_matching_file(cache):
    path = download_gguf(REPO, "*Q4_1.gguf", cache_dir=cache)
    assert path == snapshot_file(cache, MAIN, SMOL)
    assert path.resolve() == model_path().resolve()


def test_exact_filename_is_found_in_the_cache(cache):
    assert download_gguf(REPO, SMOL, cache_dir=cache) == snapshot_file(cache, MAIN, SMOL)


def test_no_match_lists_the_gguf_files_there(cache):
    with pytest.raises(ValueError, match=r"no file .* matches '\*Q5_K_M\.gguf'") as e:
        download_gguf(REPO, "*Q5_K_M.gguf", cache_dir=cache)
    message = str(e.value)
    assert "SmolLM2-135M-Instruct.Q8_0.gguf" in message
    assert "big/Big-Q4_K_M-00001-of-00002.gguf" in message
    assert "README.md" not in message and "00002-of-00002" not in message


def test_ambiguous_glob_lists_the_candidates(cache):
    with pytest.raises(ValueError, match="matches several models") as e:
        download_gguf(REPO, "SmolLM2-135M-Instruct.*.gguf", cache_dir=cache)
    assert SMOL in str(e.value) and "SmolLM2-135M-Instruct.Q8_0.gguf" in str(e.value)


def test_split_gguf_fetches_every_part_and_returns_the_first(cache, monkeypatch):
    import huggingface_hub

    fetched = []
    real = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kw):
        fetched.append(filename)
        return real(repo_id, filename, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    path = download_gguf(REPO, "*Q4_K_M*", cache_dir=cache)
    assert path == snapshot_file(cache, MAIN, "big/Big-Q4_K_M-00001-of-00002.gguf")
    assert fetched == ["big/Big-Q4_K_M-00001-of-00002.gguf", "big/Big-Q4_K_M-00002-of-00002.gguf"]


def test_incomplete_split_gguf_is_refused(cache):
    with pytest.raises(ValueError, match=r"incomplete; missing broken-Q2_K-00002-of-00003\.gguf"):
        download_gguf(REPO, "broken-Q2_K-00001-of-00003.gguf", cache_dir=cache)


def test_revision_selects_that_snapshot(cache):
    path = download_gguf(REPO, "*.gguf", cache_dir=cache, revision="dev")
    assert path == snapshot_file(cache, DEV, "SmolLM2-dev.Q4_1.gguf")


def test_local_files_only_works_without_the_offline_variable(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = download_gguf(REPO, "*Q8_0.gguf", cache_dir=cache, local_files_only=True)
    assert path == snapshot_file(cache, MAIN, "SmolLM2-135M-Instruct.Q8_0.gguf")


def test_uncached_repo_offline_says_so(cache):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        download_gguf("nobody/nothing", "*.gguf", cache_dir=cache)


def test_missing_huggingface_hub_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        download_gguf(REPO, SMOL)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch):
    """As if the Hub were reachable (huggingface_hub may have read HF_HUB_OFFLINE=1 already)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return huggingface_hub


def test_online_lists_the_repo_and_downloads_the_match(online, monkeypatch):
    calls = []

    def list_repo_files(repo_id, *, revision=None):
        calls.append(("list", repo_id, revision))
        return FILES

    def hf_hub_download(repo_id, filename, **kw):
        calls.append(("get", filename, kw["revision"], kw["local_files_only"]))
        return f"/hub/{filename}"

    monkeypatch.setattr(online, "list_repo_files", list_repo_files)
    monkeypatch.setattr(online, "hf_hub_download", hf_hub_download)
    assert download_gguf(REPO, "*Q8_0.gguf", revision="v1") == (
        Path("/hub/SmolLM2-135M-Instruct.Q8_0.gguf")
    )
    assert calls == [
        ("list", REPO, "v1"),
        ("get", "SmolLM2-135M-Instruct.Q8_0.gguf", "v1", False),
    ]


def test_unreachable_hub_falls_back_to_the_cache(online, cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def list_repo_files(repo_id, *, revision=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(online, "list_repo_files", list_repo_files)
    assert download_gguf(REPO, "*Q4_1.gguf", cache_dir=cache) == snapshot_file(cache, MAIN, SMOL)
    with pytest.raises(ConnectionError):
        download_gguf("nobody/nothing", "*.gguf", cache_dir=cache)


def test_resolve_matches_basenames_in_folders_and_any_case():
    assert resolve_gguf("*Q8_0.gguf", FILES) == ["SmolLM2-135M-Instruct.Q8_0.gguf"]
    assert resolve_gguf("*q8_0.GGUF", FILES) == ["SmolLM2-135M-Instruct.Q8_0.gguf"]
    assert resolve_gguf("Big-Q4_K_M-*", FILES) == [
        "big/Big-Q4_K_M-00001-of-00002.gguf",
        "big/Big-Q4_K_M-00002-of-00002.gguf",
    ]


@pytest.mark.model
def test_from_pretrained_loads_and_tokenizes(cache):
    with Model.from_pretrained(
        REPO, "*Q4_1.gguf", cache_dir=cache, device="cpu", vocab_only=True
    ) as model:
        assert model.path == snapshot_file(cache, MAIN, SMOL)
        tokens = model.tokenizer.encode("Hello, world!", add_special=False)
        assert tokens and model.tokenizer.decode(tokens) == "Hello, world!"
        assert "<|im_start|>" in (model.chat_template or "")
