"""llama.cpp's own op tests (test-backend-ops) on the WebGPU backend, checked against the CPU.

test-backend-ops is a C++ program: it reaches Dawn through the proc table filled from a plain
libwebgpu_dawn.so ($LLAMA_WEBGPU_DAWN_LIB) and loads our ggml-webgpu module via
$GGML_BACKEND_PATH. Each case builds one small graph, runs it on WebGPU and on the CPU (reference
implementation) and compares the results.

Without a GPU the adapter is Mesa's lavapipe, where the cost is mostly compiling shaders: each new
pipeline (an op, a type, a shape class) is compiled by LLVM, from well under a second up to
minutes for the flash-attention variants, while the cases themselves are cheap. Mesa keeps
compiled shaders in ~/.cache/mesa_shader_cache_db, so a second run is much faster; the times
below are for a cold cache (a fresh CI machine), measured on a shared 2-core x86-64 machine.

Default run (`-m "not slow"`): every case of the ops whose full run is short, and for the big ops
a regex over the case parameters (CI_CASES) keeping the types and shapes LLM inference uses: about
6.5 minutes of lavapipe time in all (per-op numbers beside CI_CASES), within CI_TIMEOUT_S per op.

`pytest -m slow` runs every case of every op. On lavapipe MUL_MAT (1103 cases) takes ~5 min,
MUL_MAT_ID (847) ~6 min and the other ops what is noted beside CI_CASES (~15 min together), but
FLASH_ATTN_EXT (3617 supported cases) is impractical: its ~85 tiled (n >= 32) shader variants
compile for 1-5 min each (one f16 hsk=80 variant took 5 min, a q8_0 one 3 min), so the full op is
estimated, from slices, at 4-5 hours. Run the slow variant on a GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import need

# test-backend-ops -o filter (op names as ggml_op_desc() prints them, comma-separated)
#   -> regex (-p, std::regex_search over the case's parameter string) selecting the cases CI runs;
#      None: every case.
# Numbers: supported cases selected/total, cold-cache lavapipe time of the selection (full op).
_FA_TAIL = r"sinks=0,max_bias=0\.000000,logit_softcap=0\.000000,prec=f32,"
CI_CASES: dict[str, str | None] = {
    # 792/1103, 75-110 s (full: 4.7 min). The LLM weight types, all their cases: mat-vec n=1,
    # small batches n=2..9 (mat-vec and the Q4_K/Q5_K multi-column paths), k up to 4096, m up to
    # 6273, broadcast/permuted/1536 batches, prefill-like n=16..512. Left out: the grid IQ types
    # (iq1_*, iq2_*, iq3_*: 130 cases, 3-23 s each, ~4 min together; iq4_nl/iq4_xs stand for IQ)
    # and the 3 float cases with 1536 batches (~40 s each).
    "MUL_MAT": (
        r"^type_a=(?!f(16|32),.*bs=\[1536,)"
        r"(f32|f16|q4_0|q4_1|q5_0|q8_0|q4_K|q5_K|q6_K|iq4_nl|iq4_xs),type_b=f(32|16),"
    ),
    # 390/847, 39 s (full: 5.7 min; the n_mats=512/1024 iq3_s cases take 25-55 s each). MoE
    # experts 4 or 8, 1/2/4 used, n = 1, 4, 5, 17, 32 (mul_mm_id from 32 tokens up), 129, with and
    # without broadcast b, for the LLM weight types.
    "MUL_MAT_ID": (
        r"^type_a=(f32|f16|q4_0|q8_0|q4_K|q5_K|q6_K|iq4_nl),type_b=f32,n_mats=(4|8),"
        r"n_used=(1|2|4),b=[01],m=512,"
    ),
    "GET_ROWS": None,  # 204/204, 57 s (most of it CPU-side init of the IQ grid types)
    "SET_ROWS": None,  # 67/67, 12 s (660 more not supported: quantized destinations but q4_0/q8_0)
    "CPY": None,  # 142/142, 3 s (456 not supported: copies to/from quantized types)
    "CONT": None,  # 72/72, 12 s
    "ADD": None,  # 103/103, 13 s
    "SUB": None,  # 93/93, 8 s
    "MUL": None,  # 93/93, 10 s
    "DIV": None,  # 93/93, 9 s
    "SCALE": None,  # 4/4, 1 s
    "RMS_NORM": None,  # 51/51, 3 s
    "NORM": None,  # 50/50, 2 s
    "ROPE": None,  # 464/464, 32 s
    # the fused chains: RMS_NORM with its MUL, the ADDs before and the ROPE after it (80 cases
    # take patches/0034's dispatch), 222/222, 11 s
    "RMS_NORM_MUL_ROPE": None,
    "RMS_NORM_MUL_ADD": None,  # 36/36, 2 s
    "SOFT_MAX": None,  # 214/214, 19 s
    "SWIGLU,GEGLU": None,  # GLU: 48/48, 3 s
    "SILU,GELU": None,  # UNARY: 16/16, 3 s
    "ARGMAX": None,  # 7/7, 2 s
    # 40/3617, 87 s (full: many hours, see above). Head sizes 64 and 128, f16 K/V, kv 113 and
    # 512, with and without GQA (nr2=4), n=1 and 3 (vector path) and 32 (prefill tiles), with and
    # without mask; plus q8_0 K/V for n=1 and 3. The hsk=64 tile shader alone takes 40-110 s to
    # compile on lavapipe, so only its masked variant is kept (llama.cpp always passes a KQ mask);
    # quantized K/V tiles (n=32) are left out for the same reason (~3 min each).
    "FLASH_ATTN_EXT": (
        r"^(?!hsk=64,.*,nb=32,mask=0,)hsk=(64|128),hsv=(64|128),nh=4,nr23=\[(1|4),1\],"
        r"kv=(113|512),nb=(1|3|32),mask=[01]," + _FA_TAIL + r"type_K=f16,type_V=f16,"
        r"permute=\[0,1,2,3\]"
        r"|^hsk=64,hsv=64,nh=4,nr23=\[(1|4),1\],kv=(113|512),nb=(1|3),mask=1,"
        + _FA_TAIL
        + r"type_K=q8_0,type_V=q8_0,permute=\[0,1,2,3\]"
    ),
}

# One op's selection must finish within this (the whole default run takes ~6.5 min).
CI_TIMEOUT_S = 15 * 60
# A slow (every case) run of one op; FLASH_ATTN_EXT needs many hours on lavapipe.
FULL_TIMEOUT_S = 24 * 3600

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A case's result line. Failure details ("[MUL_MAT] NMSE = ... > ...") are printed before the
# case name on the same line, hence search rather than match.
_CASE = re.compile(r"  ([A-Z0-9_]+\(.*?\)): (OK|FAIL|not supported.*)$")


@dataclass
class OpRun:
    """What one test-backend-ops run printed, parsed."""

    cmd: list[str]
    returncode: int | None  # None: killed at the timeout; < 0: killed by a signal (abort)
    stdout: str  # without colour codes
    stderr: str
    webgpu_tested: bool = False  # a "Backend i/n: WebGPU" section that did not say Skipping
    passed: int | None = None  # from "  N/M tests passed"
    total: int | None = None
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # "not supported": skipped, not counted

    def tail(self) -> str:
        """The command, its exit status and the ends of its stdout and stderr."""
        return (
            f"$ {' '.join(self.cmd)}\nexit status: {self.returncode}\n"
            f"--- stdout (end) ---\n{self.stdout[-2500:]}\n"
            f"--- stderr (end) ---\n{self.stderr[-2500:]}"
        )


def parse(cmd: list[str], returncode: int | None, stdout: str, stderr: str) -> OpRun:
    """Parse test-backend-ops' console output (test mode)."""
    stdout, stderr = _ANSI.sub("", stdout), _ANSI.sub("", stderr)
    run = OpRun(cmd, returncode, stdout, stderr)
    m = re.search(r"^Backend \d+/\d+: WebGPU\n(.*?)(?=^Backend \d+/\d+: |\Z)", stdout, re.M | re.S)
    if m is None:
        return run
    section = m.group(1)
    run.webgpu_tested = not section.startswith("  Skipping")
    buckets = {"OK": run.ok, "FAIL": run.failed}
    for line in section.splitlines():
        case = _CASE.search(line)
        if case:
            buckets.get(case.group(2), run.unsupported).append(case.group(1))
    # the final list also names cases that failed without a result line of their own
    # (e.g. "failed to allocate tensors")
    failing = re.search(r"^Failing tests:\n((?:  [A-Z0-9_]+\(.*\)\n?)*)", section, re.M)
    if failing:
        for name in failing.group(1).splitlines():
            if name.strip() not in run.failed:
                run.failed.append(name.strip())
    # (may follow an unterminated "failed to allocate tensors" on the same line)
    counts = re.search(r"(\d+)/(\d+) tests passed$", section, re.M)
    if counts:
        run.passed, run.total = int(counts.group(1)), int(counts.group(2))
    return run


def run_ops(
    exe: Path,
    dawn: Path,
    ops: str,
    params: str | None,
    timeout: float,
    extra_env: dict[str, str] | None = None,
) -> OpRun:
    """Run the cases of `ops` (matching `params`) on WebGPU."""
    env = {
        **os.environ,
        "LLAMA_WEBGPU_DAWN_LIB": str(dawn),
        "GGML_BACKEND_PATH": str(exe.parent / "libggml-webgpu.so"),
        # one submission can take minutes on lavapipe (a cold shader compile); the upstream
        # default would abort at 30 s
        "GGML_WEBGPU_WAIT_TIMEOUT_MS": os.environ.get("GGML_WEBGPU_WAIT_TIMEOUT_MS", "900000"),
        # Dawn's validation is off in normal runs (patches/0014); the op tests keep it on, so a
        # malformed command (e.g. a stale cached bind group) fails here
        "GGML_WEBGPU_VALIDATE": "1",
        **(extra_env or {}),
    }
    cmd = [str(exe), "test", "-b", "WebGPU", "-o", ops] + (["-p", params] if params else [])
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return parse(cmd, None, _text(e.stdout), _text(e.stderr))
    return parse(cmd, proc.returncode, _text(proc.stdout), _text(proc.stderr))


def _text(b: bytes | None) -> str:
    return b.decode(errors="replace") if b else ""


def check(run: OpRun) -> None:
    """Fail unless every selected case ran on WebGPU and passed."""
    if run.returncode is None:
        pytest.fail(f"timed out after {len(run.ok)} passing cases:\n{run.tail()}")
    if not run.webgpu_tested:
        if run.returncode != 0:
            pytest.fail(f"test-backend-ops failed before testing WebGPU:\n{run.tail()}")
        need(False, f"test-backend-ops found no WebGPU device:\n{run.tail()}")
    if run.failed:
        shown = "\n".join(run.failed[:30])
        more = f"\n... and {len(run.failed) - 30} more" if len(run.failed) > 30 else ""
        pytest.fail(f"{len(run.failed)} case(s) FAILED on WebGPU:\n{shown}{more}\n\n{run.tail()}")
    if run.total is None:
        # a crash (GGML_ABORT, a signal) before the summary line
        pytest.fail(
            f"no test summary for WebGPU: crashed after {len(run.ok)} passing cases:\n{run.tail()}"
        )
    if run.returncode != 0:
        pytest.fail(f"test-backend-ops exited with status {run.returncode}:\n{run.tail()}")
    if run.total == 0:
        pytest.fail(
            "no case ran: none matched the selection, or WebGPU supports none of them "
            f"({len(run.unsupported)} not supported):\n{run.tail()}"
        )
    assert run.passed == run.total == len(run.ok), (
        f"the summary says {run.passed}/{run.total} passed, but {len(run.ok)} OK lines were "
        f"parsed:\n{run.tail()}"
    )


@pytest.mark.webgpu
@pytest.mark.parametrize("ops", list(CI_CASES))
def test_webgpu_op_matches_cpu(ops, test_backend_ops, dawn_shared_library):
    run = run_ops(test_backend_ops, dawn_shared_library, ops, CI_CASES[ops], CI_TIMEOUT_S)
    check(run)
    print(f"{run.passed}/{run.total} passed; {len(run.unsupported)} not supported (skipped)")


# Prefill-like products (n >= 9 columns, k >= 512) of a float and two quantized weight types.
# patches/0025 splits K only where the subgroup-matrix kernel leaves the GPU idle, which lavapipe
# does not have; GGML_WEBGPU_MUL_MAT_SPLIT_K=force applies the same rule to the register-tile
# kernel. (Checked: with the reduction made to skip one partial sum, 2 of these cases fail.)
SPLIT_K_CASES = r"^type_a=(f16|q4_0|q4_K),type_b=f32,m=\d+,n=(9|[1-9]\d+),k=([5-9]\d\d|\d{4,}),"

# One mat-mul case (n > 8: not the mat-vec path) of each weight type with a loader of its own in
# mul_mat_decls.tmpl. patches/0026 pads the staged tile rows of the subgroup-matrix kernel, which
# lavapipe does not have; GGML_WEBGPU_MUL_MAT_SHMEM_ROW_PAD=8 pads the register-tile kernel's rows
# the same way, so every loader's stores go through the padded index here. (Checked: with Q4_1's
# loader storing its high nibbles at the unpadded index, its cases fail.)
PADDED_ROWS_CASES = (
    r"^type_a=(f32|f16|q4_0|q4_1|q5_0|q5_1|q8_0|mxfp4|q2_K|q3_K|q4_K|q5_K|q6_K|iq4_nl|iq4_xs),"
    r"type_b=f32,m=(16,n=9|1,n=64),k=256,bs=\[1,1\],nr=\[1,1\],"
)


# The mat-vec cases (n = 1..8) of the weight types with an MMVQ kernel (integer dot products with
# the vector quantized to q8), which GPUs other than AMD, Intel and NVIDIA (lavapipe among them)
# are not given; GGML_WEBGPU_MMVQ=force (patches/0030) selects it. Rows of 1 to 128 blocks of 32
# (k = 32 to 4096): one workgroup takes 4 rows of the short ones (patches/0031).
MMVQ_CASES = r"^type_a=(q4_0|q4_1|q8_0|q2_K|q4_K),type_b=f32,m=\d+,n=[1-8],"


# Paths that lavapipe is not given, forced (the subgroup-matrix ones onto the register-tile kernel):
# (environment, cases, the fewest cases that must have run)
FORCED_MAT_MUL_PATHS = {
    "split_k": ({"GGML_WEBGPU_MUL_MAT_SPLIT_K": "force"}, SPLIT_K_CASES, 4),
    "padded_tile_rows": ({"GGML_WEBGPU_MUL_MAT_SHMEM_ROW_PAD": "8"}, PADDED_ROWS_CASES, 30),
    "mmvq": ({"GGML_WEBGPU_MMVQ": "force"}, MMVQ_CASES, 100),
}


@pytest.mark.webgpu
@pytest.mark.parametrize("path", list(FORCED_MAT_MUL_PATHS))
def test_forced_mat_mul_path_matches_cpu(path, test_backend_ops, dawn_shared_library):
    env, cases, at_least = FORCED_MAT_MUL_PATHS[path]
    run = run_ops(test_backend_ops, dawn_shared_library, "MUL_MAT", cases, CI_TIMEOUT_S, env)
    check(run)
    assert run.passed is not None and run.passed >= at_least, run.tail()


# The vec flash-attention path (up to 20 query rows) with other KV tiles than the 8 rows that
# patches/0035 picks for caches this short: 4 splits a cache of 512 rows 32 ways, the most its
# reduce takes; 32 is upstream's tile, which 0035 keeps for caches of 2048 rows and more.
FA_VEC_CASES = (
    r"^hsk=(64|128),hsv=(64|128),nh=4,nr23=\[(1|4),1\],kv=(113|512),nb=(1|3),mask=1,"
    + _FA_TAIL
    + r"type_K=(f16|q8_0),type_V=(f16|q8_0),permute=\[0,1,2,3\]"
)


@pytest.mark.webgpu
@pytest.mark.parametrize("kv_tile", ["4", "32"])
def test_flash_attn_vec_kv_tiles_match_cpu(kv_tile, test_backend_ops, dawn_shared_library):
    env = {"GGML_WEBGPU_FLASH_ATTN_VEC_KV_TILE": kv_tile}
    run = run_ops(
        test_backend_ops, dawn_shared_library, "FLASH_ATTN_EXT", FA_VEC_CASES, CI_TIMEOUT_S, env
    )
    check(run)
    assert run.passed is not None and run.passed >= 16, run.tail()


@pytest.mark.webgpu
@pytest.mark.slow
@pytest.mark.parametrize("ops", list(CI_CASES))
def test_webgpu_op_matches_cpu_every_case(ops, test_backend_ops, dawn_shared_library):
    run = run_ops(test_backend_ops, dawn_shared_library, ops, None, FULL_TIMEOUT_S)
    check(run)
    print(f"{run.passed}/{run.total} passed; {len(run.unsupported)} not supported (skipped)")


# The parsing and the verdicts, on output in test-backend-ops' format (no GPU needed).
_HEAD = (
    "Testing 2 devices\n\nBackend 1/2: CPU\n  Skipping\nBackend 2/2: WebGPU\n"
    "  Device description: llvmpipe (LLVM 15.0.6, 256 bits)\n  Device memory: 4095 MB\n\n"
)
_OK = "\x1b[1;32mOK\x1b[0m"
_FAIL = "\x1b[1;31mFAIL\x1b[0m"


def _sample(body: str, passed: int, total: int, failing: tuple[str, ...] = ()) -> str:
    status = _FAIL if failing else _OK
    listed = "".join(f"  {name}\n" for name in failing)
    return (
        f"{_HEAD}{body}  {passed}/{total} tests passed\n"
        + (f"\nFailing tests:\n{listed}" if failing else "")
        + f"  Backend WebGPU: WebGPU: {status}\n{int(not failing)}/1 backends passed\n{status}\n"
    )


def test_parse_passing_run():
    out = _sample(
        f"  ADD(type=f32,ne=[1,1,8,1]): {_OK}\n"
        "  ADD(type=bf16,ne=[1,1,8,1]): not supported [WebGPU] \n"
        f"  ADD(type=f16,ne=[1,1,8,1]): {_OK}\n",
        2,
        2,
    )
    run = parse(["t"], 0, out, "load_backend: loaded WebGPU backend\n")
    assert run.webgpu_tested and (run.passed, run.total) == (2, 2)
    assert run.ok == ["ADD(type=f32,ne=[1,1,8,1])", "ADD(type=f16,ne=[1,1,8,1])"]
    assert run.unsupported == ["ADD(type=bf16,ne=[1,1,8,1])"] and not run.failed
    check(run)


def test_parse_failing_run():
    case = "SOFT_MAX(type=f32,ne=[1024,16,1,1],mask=1)"
    out = _sample(
        f"  ARGMAX(type=f32,ne=[32,1,1,1]): {_OK}\n"
        f"[SOFT_MAX] NMSE = 0.000000103 > 0.000000100   {case}: {_FAIL}\n"
        "failed to allocate tensors [WebGPU] ",
        1,
        3,
        (case, "MUL_MAT(type_a=f32,m=1)"),
    )
    run = parse(["t"], 1, out, "")
    assert run.failed == [case, "MUL_MAT(type_a=f32,m=1)"] and (run.passed, run.total) == (1, 3)
    with pytest.raises(pytest.fail.Exception, match=r"2 case\(s\) FAILED.*\n.*SOFT_MAX"):
        check(run)


def test_parse_crash_and_empty_selection():
    crashed = parse(
        ["t"], -6, f"{_HEAD}  ARGMAX(type=f32,ne=[32,1,1,1]): {_OK}\n", "GGML_ABORT: timeout\n"
    )
    with pytest.raises(pytest.fail.Exception, match=r"(?s)crashed after 1 passing.*GGML_ABORT"):
        check(crashed)
    empty = parse(["t"], 0, _sample("", 0, 0), "")
    with pytest.raises(pytest.fail.Exception, match="no case ran"):
        check(empty)
    timed_out = parse(["t"], None, _HEAD, "")
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        check(timed_out)
