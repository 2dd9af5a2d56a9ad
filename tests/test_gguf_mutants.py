"""Mutated GGUF files (truncated, wrong magic or version, bit flips and smashed fields in the
header, metadata and tensor-info regions) made from the real cached models: loading each one in
a child process ends in a llama_webgpu exception or a successful load, never a crash or a hang.

This is the CI-sized run; `python tools/gguf_mutants.py --count 600` is the long one
(docs/reliability.md, "Mutated files")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llama_webgpu as lw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from gguf_craft import Gguf, mutants  # noqa: E402
from gguf_mutants import probe, summarize  # noqa: E402

pytestmark = pytest.mark.model

PER_MODEL = {"smollm2-135m-instruct": 80, "gemma-3-270m": 40}
SEED = 1  # its SmolLM2 mutant 9 (a bit flip that duplicates a token) aborted the pinned llama.cpp


def test_mutated_files_never_crash_or_hang_the_loader(tmp_path):
    files = []
    for name, count in PER_MODEL.items():
        stream = mutants(Gguf.parse(lw.model_path(name)), seed=SEED)
        files += [next(stream).build(tmp_path) for _ in range(count)]
    # each file: read_gguf (the header), a vocab_only load and a full CPU load
    outcomes = probe([(p, "all") for p in files], timeout=10.0)
    bad = [f"{o.outcome}: {o.path.name}: {o.type} {o.message[:200]}" for o in outcomes if not o.ok]
    assert not bad, "\n".join(bad)
    assert {o.path for o in outcomes} == set(files)
    counts = summarize(outcomes)
    # the corpus must exercise both sides: most mutants are rejected, a few still load
    assert counts.get("error", 0) >= len(files) // 2, counts
    errors = [o for o in outcomes if o.outcome == "error"]
    assert all(o.type == "ModelLoadError" and o.message for o in errors), counts
