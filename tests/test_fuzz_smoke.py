"""CI smoke run of the fuzz targets (fuzz/): each runs a few thousand inputs under atheris and
must finish cleanly (no crash, no failed invariant) after a nonzero number of executions. The long
runs and their figures are in docs/reliability.md, "Fuzzing"."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = 2000
"""Executions per target: with a fixed -seed the inputs are the same on every CI run (no
flakiness from timing); about 3-10 s on CI's 2 cores. SECONDS caps a slow machine."""
SECONDS = 20


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not have_atheris(),
    reason=f"atheris is not installed (its wheels cover CPython <= 3.11; this is "
    f"{sys.version_info.major}.{sys.version_info.minor})",
)


@pytest.mark.parametrize("target", ["gguf_load", "tokenizer"])
def test_fuzz_target_runs_clean(target: str, tmp_path: Path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    cmd = [
        sys.executable,
        "-m",
        f"fuzz.{target}",
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-print_final_stats=1",
        "-seed=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=SECONDS + 90
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    executions = re.search(r"^stat::number_of_executed_units:\s+(\d+)", out, re.M)
    assert executions, out[-4000:]
    assert int(executions.group(1)) > 0
    assert any(corpus.iterdir())  # seeded, and grown or kept
    assert not artifacts.exists() or not any(artifacts.iterdir())
