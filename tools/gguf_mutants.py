"""Load broken GGUF files in child processes and count crashes and hangs.

`probe(jobs)` loads each (path, mode) in a child Python process through llama_webgpu's own API,
several files per child, and reports for each file what happened: "loaded", "error" (a
llama_webgpu exception), "untyped" (another Python exception), "crash" (the child died: abort,
segfault) or "hang" (no answer within the timeout). After a crash or hang the next child goes on
with the remaining files.

As a script, it generates mutants of the cached real models (tools/gguf_craft.py) and probes
them; the long run of docs/reliability.md ("Mutated files"):

    nice -n 10 python tools/gguf_mutants.py --count 600 --out /tmp/gguf-mutants

Modes: "gguf" reads the header (llama_webgpu.modelinfo.read_gguf, i.e. gguf_init_from_file),
"vocab" loads with vocab_only=True and tokenizes a string, "cpu" loads all weights on the CPU,
"all" does the three in turn (a failure in one step does not skip the next).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = r"""
import json, sys
jobs = json.loads(sys.stdin.readline())
import llama_webgpu as lw
from llama_webgpu.modelinfo import read_gguf
lw.devices()  # initialize the native side before the first timed load

def step(kind, path):
    try:
        if kind == "gguf":
            read_gguf(path)
        else:
            with lw.Model(path, device="cpu", vocab_only=kind == "vocab") as m:
                m.tokenizer.decode(m.tokenizer.encode("Hello world, 123 <0x41> \u00e9\u6f22!"))
        return {"outcome": "loaded"}
    except lw.LlamaError as e:
        return {"outcome": "error", "type": type(e).__name__, "message": str(e)}
    except Exception as e:
        return {"outcome": "untyped", "type": type(e).__name__, "message": str(e)}

def say(msg):
    print("@gguf@" + json.dumps(msg), flush=True)

say({"ready": True})
for i, (path, mode) in enumerate(jobs):
    steps = ["gguf", "vocab", "cpu"] if mode == "all" else [mode]
    for kind in steps:
        say({"start": i, "step": kind})
        say({"index": i, "step": kind, **step(kind, path)})
"""

FAILURES = ("untyped", "crash", "hang")
MARK = b"@gguf@"  # starts the child's protocol lines on its stdout


@dataclass
class Outcome:
    path: Path
    mode: str
    step: str
    outcome: str
    """loaded, error, untyped, crash or hang."""
    type: str = ""
    message: str = ""
    seconds: float = 0.0
    child: int = 0
    """Which child process ran it (a crash or hang starts the next one)."""

    @property
    def ok(self) -> bool:
        return self.outcome not in FAILURES


def probe(
    jobs: list[tuple[Path, str]], timeout: float = 10.0, startup_timeout: float = 120.0
) -> list[Outcome]:
    """Load each (path, mode) in child processes; one Outcome per step (see the module doc)."""
    results: list[Outcome] = []
    remaining = list(jobs)
    child = 0
    while remaining:
        done, consumed = _run_child(remaining, timeout, startup_timeout)
        for o in done:
            o.child = child
        results += done
        remaining = remaining[consumed:]
        child += 1
    return results


def _run_child(
    jobs: list[tuple[Path, str]], timeout: float, startup_timeout: float
) -> tuple[list[Outcome], int]:
    """Run one child over jobs until it finishes, dies or hangs. Returns the outcomes and how
    many jobs it consumed (finished, or the one it died on)."""
    with tempfile.TemporaryFile() as stderr:
        return _drive_child(jobs, timeout, startup_timeout, stderr)


def _drive_child(
    jobs: list[tuple[Path, str]], timeout: float, startup_timeout: float, stderr: Any
) -> tuple[list[Outcome], int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write((json.dumps([[str(p), m] for p, m in jobs]) + "\n").encode())
    proc.stdin.close()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    outcomes: list[Outcome] = []
    current: tuple[int, str] | None = None
    started = time.monotonic()
    deadline = started + startup_timeout
    buf = b""
    finished = 0
    try:
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0 or not sel.select(wait):
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError(f"the child did not start: {_tail(stderr)}")
                i, step = current
                outcomes.append(
                    Outcome(
                        jobs[i][0], jobs[i][1], step, "hang", seconds=time.monotonic() - started
                    )
                )
                return outcomes, i + 1
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the child exited
                code = proc.wait()
                if current is None:
                    if finished == len(jobs) and code == 0:
                        return outcomes, len(jobs)
                    raise RuntimeError(f"the child exited with {code}: {_tail(stderr)}")
                i, step = current
                message = f"exit status {code}: {_tail(stderr)}"  # -6: SIGABRT
                outcomes.append(
                    Outcome(
                        jobs[i][0],
                        jobs[i][1],
                        step,
                        "crash",
                        message=message,
                        seconds=time.monotonic() - started,
                    )
                )
                return outcomes, i + 1
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.startswith(MARK):
                    continue  # something native wrote to stdout
                msg = json.loads(line[len(MARK) :])
                if "start" in msg:
                    current = (msg["start"], msg["step"])
                    started = time.monotonic()
                    deadline = started + timeout
                elif "index" in msg:
                    i = msg["index"]
                    outcomes.append(
                        Outcome(
                            jobs[i][0],
                            jobs[i][1],
                            msg["step"],
                            msg["outcome"],
                            msg.get("type", ""),
                            msg.get("message", ""),
                            time.monotonic() - started,
                        )
                    )
                    current = None
                    finished = i + 1 if _last_step(jobs[i][1], msg["step"]) else i
                    deadline = time.monotonic() + timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _last_step(mode: str, step: str) -> bool:
    return mode != "all" or step == "cpu"


def _tail(f, n: int = 1500) -> str:
    """What the child wrote to stderr: the ggml assert line if there is one, else the end."""
    f.seek(0)
    text = f.read().decode("utf-8", "replace")
    found = re.search(r"^.*\.(?:c|cpp|h):\d+: .*$", text, re.MULTILINE)
    return found.group(0).strip() if found else text[-n:].strip()


def summarize(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(Counter(o.outcome for o in outcomes))


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_craft import Gguf, mutants

    import llama_webgpu as lw

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="mutants in all (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", default="all", choices=["gguf", "vocab", "cpu", "all"])
    parser.add_argument("--batch", type=int, default=25, help="files per child process")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a load may take")
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the files that passed")
    args = parser.parse_args(argv)

    sources = [lw.model_path(), lw.model_path("gemma-3-270m")]
    out = args.out or Path(tempfile.mkdtemp(prefix="gguf-mutants-"))
    out.mkdir(parents=True, exist_ok=True)
    streams = [mutants(Gguf.parse(s), args.seed) for s in sources]
    t0 = time.monotonic()
    files = []
    for k in range(args.count):
        files.append(next(streams[k % len(streams)]).build(out))
    t_gen = time.monotonic() - t0
    outcomes: list[Outcome] = []
    for start in range(0, len(files), args.batch):
        batch = files[start : start + args.batch]
        outcomes += probe([(p, args.mode) for p in batch], args.timeout)
        print(f"{start + len(batch)}/{len(files)}: {summarize(outcomes)}", flush=True)
    t_all = time.monotonic() - t0
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        print(f"{o.outcome}: {o.path.name} [{o.step}] {o.type} {o.message[:300]}")
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(
        json.dumps(
            {
                "files": len(files),
                "loads": len(outcomes),
                "outcomes": summarize(outcomes),
                "failures": len(bad),
                "generate_s": round(t_gen, 1),
                "total_s": round(t_all, 1),
                "slowest_load_s": round(slowest.seconds, 2),
                "slowest": f"{slowest.path.name} [{slowest.step}]",
            }
        )
    )
    if not args.keep:
        for p in files:
            if all(o.ok for o in outcomes if o.path == p):
                p.unlink()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
