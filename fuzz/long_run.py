"""Run a fuzz target for a set time, restarting it after each crash, and sum up the figures.

libFuzzer stops at the first crash (atheris has no working fork mode), so this runs the target
in a subprocess again and again until the time is used, with one corpus folder growing across
the runs and every crash file kept in the artifacts folder.

    nice -n 15 python -m fuzz.long_run gguf_load --minutes 20
    nice -n 15 python -m fuzz.long_run tokenizer --minutes 10

Prints (and writes to fuzz/artifacts/<target>/summary.json) executions, exec/s, corpus size and
crashes.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


def run_once(target: str, seconds: int, corpus: Path, artifacts: Path, log) -> dict[str, int]:
    cmd = [
        sys.executable,
        "-m",
        f"fuzz.{target}",
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, errors="replace")
    out = proc.stdout + proc.stderr
    log.write(out)
    stats = {k: int(v) for k, v in STAT.findall(out)}
    stats["returncode"] = proc.returncode
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["gguf_load", "tokenizer"])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--corpus", type=Path, help="default: fuzz/corpus/<target>")
    parser.add_argument("--artifacts", type=Path, help="default: fuzz/artifacts/<target>")
    args = parser.parse_args()
    corpus = args.corpus or HERE / "corpus" / args.target
    artifacts = args.artifacts or HERE / "artifacts" / args.target
    artifacts.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + args.minutes * 60
    runs: list[dict[str, int]] = []
    start = time.monotonic()
    with open(artifacts / "log.txt", "a") as log:
        while (left := int(end - time.monotonic())) > 5:
            stats = run_once(args.target, left, corpus, artifacts, log)
            runs.append(stats)
            print(f"run {len(runs)}: {stats}", flush=True)
    executions = sum(r.get("number_of_executed_units", 0) for r in runs)
    elapsed = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    corpus_files = [p for p in corpus.iterdir() if p.is_file()]
    summary = {
        "target": args.target,
        "seconds": round(elapsed),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime),
        "runs": len(runs),
        "executions": executions,
        "exec_per_s": round(executions / elapsed, 1),
        "crashing_runs": sum(1 for r in runs if r["returncode"] != 0),
        "corpus_files": len(corpus_files),
        "corpus_bytes": sum(p.stat().st_size for p in corpus_files),
        "artifacts": sorted(p.name for p in artifacts.iterdir() if "-" in p.name),
    }
    (artifacts / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
