"""GGUF files from the Hugging Face Hub, through `huggingface_hub` and its cache.

`download_gguf` resolves a file name or glob against the repository's file list (online) or the
cached snapshot (offline: `local_files_only=True` or HF_HUB_OFFLINE=1), fetches every part of a
split GGUF (`name-00001-of-00003.gguf`), and returns the local path of the first part, which is
what llama.cpp loads. huggingface_hub draws its progress bars when stderr is a terminal.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_LISTED = 40


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise ImportError(
            "downloading models from the Hugging Face Hub needs huggingface_hub: "
            "pip install huggingface_hub (or pip install 'llama-webgpu[hub]')"
        ) from None
    return huggingface_hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline(hub: Any) -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported; read it again in case it was set
    # afterwards.
    return bool(getattr(hub.constants, "HF_HUB_OFFLINE", False)) or _env_true("HF_HUB_OFFLINE")


def _cached_files(
    hub: Any, repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None
) -> list[str] | None:
    """The files of the cached snapshot of repo_id at revision, or None if none is cached."""
    root = Path(cache_dir) if cache_dir is not None else Path(hub.constants.HF_HUB_CACHE)
    repo = root / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return sorted(
        PurePosixPath(p.relative_to(snapshot).as_posix()).as_posix()
        for p in snapshot.rglob("*")
        if p.is_file()
    )


def _split_group(name: str, files: list[str]) -> list[str]:
    """All parts of the split GGUF that name belongs to (in order), or [name]."""
    m = _SPLIT.match(name)
    if not m:
        return [name]
    total = int(m["total"])
    parts = [f"{m['stem']}-{i:05d}-of-{m['total']}.gguf" for i in range(1, total + 1)]
    missing = [p for p in parts if p not in files]
    if missing and files:
        raise ValueError(f"split GGUF {parts[0]} is incomplete; missing {', '.join(missing)}")
    return parts


def _candidates(files: list[str]) -> list[str]:
    """The GGUF models among files: plain files and the first part of each split."""
    out = []
    for f in files:
        if not f.endswith(".gguf"):
            continue
        m = _SPLIT.match(f)
        if m is None or int(m["part"]) == 1:
            out.append(f)
    return out


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _listing(names: list[str]) -> str:
    shown = names[:_MAX_LISTED]
    more = f" (and {len(names) - len(shown)} more)" if len(names) > len(shown) else ""
    return ", ".join(shown) + more if shown else "none"


def resolve_gguf(filename: str, files: list[str], repo_id: str = "the repository") -> list[str]:
    """The files to fetch for filename (a name or fnmatch glob) among a repo's files: one GGUF,
    or every part of a split one, first part first. ValueError on no match or several."""
    # Exact case first, then any case ("*q4_k_m.gguf"); the whole path, then the base name
    # ("*Q4_K_M.gguf" also finds "sub/x-Q4_K_M.gguf").
    matches: list[str] = []
    for fold in (str, str.lower):
        for key in (str, _basename):
            if not matches and (key is str or "/" not in filename):
                pattern = fold(filename)
                matches = [f for f in files if fnmatch.fnmatchcase(fold(key(f)), pattern)]
    models: dict[str, list[str]] = {}
    for f in matches:
        group = _split_group(f, files)
        models.setdefault(group[0], group)
    if not models:
        raise ValueError(
            f"no file in {repo_id} matches {filename!r}; GGUF files there: "
            f"{_listing(_candidates(files))}"
        )
    if len(models) > 1:
        raise ValueError(
            f"{filename!r} matches several models in {repo_id}: {_listing(sorted(models))}; "
            "give a more specific name or pattern"
        )
    return next(iter(models.values()))


def download_gguf(
    repo_id: str,
    filename: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
) -> Path:
    """The local path of a GGUF from a Hugging Face Hub model repo, downloading it if needed.

    filename may be a glob ("*Q4_K_M.gguf"); it must match exactly one model. For a split GGUF
    all parts are fetched and the first is returned. Offline (local_files_only=True or
    HF_HUB_OFFLINE=1) only the huggingface_hub cache (cache_dir, else HF_HUB_CACHE) is used.
    """
    hub = _hub()
    offline = local_files_only or _offline(hub)
    files: list[str] | None = None
    if _GLOB_CHARS.search(filename) or _SPLIT.match(filename):
        if not offline:
            try:
                files = hub.list_repo_files(repo_id, revision=revision)
            except hub.errors.HfHubHTTPError:
                raise  # the Hub answered: no such repo or revision, gated, ...
            except Exception:  # unreachable: fall back to the cache, as hf_hub_download does
                files = _cached_files(hub, repo_id, revision, cache_dir)
                if files is None:
                    raise
                offline = True
        else:
            files = _cached_files(hub, repo_id, revision, cache_dir)
            if files is None:
                raise FileNotFoundError(
                    f"{repo_id} (revision {revision or 'main'}) is not in the Hugging Face cache "
                    f"{cache_dir or hub.constants.HF_HUB_CACHE}, and downloading is off "
                    "(local_files_only or HF_HUB_OFFLINE)"
                )
        parts = resolve_gguf(filename, files, repo_id)
    else:
        parts = [filename]
    paths = [
        hub.hf_hub_download(
            repo_id,
            part,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
        for part in parts
    ]
    return Path(paths[0])
