"""vendor/fetch.py keeps a changed patch series' rebuild incremental: files that come out of a
restore with the content they had keep their mtime; changed ones get a new one."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fetch(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lw_fetch", ROOT / "vendor" / "fetch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TREE", tmp_path)
    return module


def test_restored_file_with_same_content_keeps_its_mtime(fetch, tmp_path):
    same, changed = tmp_path / "same.cpp", tmp_path / "changed.cpp"
    same.write_text("int a;\n")
    changed.write_text("int b;\n")
    old_ns = 1_600_000_000 * 10**9
    for f in (same, changed):
        os.utime(f, ns=(old_ns, old_ns))
    before = fetch.snapshot({"same.cpp", "changed.cpp", "missing.cpp"})
    assert set(before) == {"same.cpp", "changed.cpp"}
    # a restore rewrites both files; a patch then changes one of them
    same.write_text("int a;\n")
    changed.write_text("int b; int c;\n")
    fetch.keep_mtimes(before)
    assert same.stat().st_mtime_ns == old_ns
    assert changed.stat().st_mtime_ns != old_ns
