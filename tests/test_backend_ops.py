"""llama.cpp's own op tests (test-backend-ops) on the WebGPU backend, checked against the CPU.

test-backend-ops is a C++ program: it reaches Dawn through the proc table filled from a plain
libwebgpu_dawn.so ($LLAMA_WEBGPU_DAWN_LIB) and loads our ggml-webgpu module via
$GGML_BACKEND_PATH. On lavapipe every case is slow, so the default run takes a subset of each op's
cases (a regex over the case parameters); `pytest -m slow` runs every case of every op.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import need

pytestmark = pytest.mark.webgpu

# op -> regex over the case parameters selecting the cases CI runs (None: all of them).
# Chosen to cover the types and shapes LLM inference uses while fitting CI's time.
CI_CASES: dict[str, str | None] = {
    "MUL_MAT": (
        r"type_a=(f32|f16|q4_0|q4_1|q8_0|q4_K|q5_K|q6_K|iq4_nl),type_b=f32,m=16,n=(1|9),k=256,"
        r"bs=\[1,1\]"
    ),
    "MUL_MAT_ID": r"type_a=(f16|q4_0|q4_K),type_b=f32,n_mats=4,n_used=2,b=0,m=512,n=(1|32),k=256",
    "GET_ROWS": None,
    "SET_ROWS": None,
    "CPY": r"type_src=f32,type_dst=(f16|f32|q8_0)",
    "ADD": None,
    "MUL": None,
    "SCALE": None,
    "RMS_NORM": None,
    "NORM": None,
    "ROPE": r"type=f32,ne_a=\[128,",
    "SOFT_MAX": r"type=f32,ne=\[16,16,",
    "GLU": r"type=f32",
    "FLASH_ATTN_EXT": (
        r"hsk=64,hsv=64,nh=4,nr23=\[1,1\],kv=512,nb=(1|8),mask=1,sinks=0,max_bias=0\.000000,"
        r"logit_softcap=0\.000000,prec=f32,type_KV=(f16|q8_0)"
    ),
    "ARGMAX": None,
}


def run_ops(exe: Path, dawn: Path, op: str, params: str | None) -> tuple[int, int, str]:
    """Run one op's cases on WebGPU; returns (passed, total, output)."""
    env = {
        **os.environ,
        "LLAMA_WEBGPU_DAWN_LIB": str(dawn),
        "GGML_BACKEND_PATH": str(exe.parent / "libggml-webgpu.so"),
        # lavapipe can take minutes on one big case; the upstream default would abort at 30 s
        "GGML_WEBGPU_WAIT_TIMEOUT_MS": "900000",
    }
    cmd = [str(exe), "test", "-b", "WebGPU", "-o", op] + (["-p", params] if params else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    m = re.search(r"Backend \d+/\d+: WebGPU\n(.*?)(?:\nBackend \d+/\d+:|\Z)", out, re.S)
    if m is None:
        need(False, f"test-backend-ops found no WebGPU device:\n{out[-2000:]}")
    section = m.group(1)
    counts = re.search(r"(\d+)/(\d+) tests passed", section)
    assert counts, (
        f"no test summary for WebGPU (crash?), exit code {proc.returncode}:\n{out[-3000:]}"
    )
    failed = [ln.strip() for ln in section.splitlines() if "FAIL" in ln]
    assert proc.returncode == 0 and not failed, "\n".join(failed[:20]) or out[-3000:]
    return int(counts.group(1)), int(counts.group(2)), out


@pytest.mark.parametrize("op", list(CI_CASES))
def test_webgpu_op_matches_cpu(op, test_backend_ops, dawn_shared_library):
    passed, total, _ = run_ops(test_backend_ops, dawn_shared_library, op, CI_CASES[op])
    assert total > 0, f"no {op} case selected or supported"
    assert passed == total


@pytest.mark.slow
@pytest.mark.parametrize("op", list(CI_CASES))
def test_webgpu_op_matches_cpu_every_case(op, test_backend_ops, dawn_shared_library):
    passed, total, _ = run_ops(test_backend_ops, dawn_shared_library, op, None)
    assert total > 0
    assert passed == total
