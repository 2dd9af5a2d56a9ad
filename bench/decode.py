#!/usr/bin/env python3
"""Decode speed of our Python API against llama.cpp's own llama-bench, same run, same model.

    python bench/decode.py [--model smollm2-135m-instruct] [--device cpu|webgpu] [-n 128] [-r 3]

Measures generation tokens/s of `stream_generate` (tokenizer, sampler, detokenizer and stop
handling included; greedy; end-of-generation tokens banned so every run makes n tokens) and of
`llama-bench -p 0 -n N` (the "tg" test: decode only, no sampling), built from the vendored tree
in the package's build directory (`cmake --build build/<tag> --target llama-bench`, done here if
missing). Prints both, and ours / llama-bench. llama-bench reaches WebGPU the way C programs do
here: the ggml-webgpu module through GGML_BACKEND_PATH and Dawn through LLAMA_WEBGPU_DAWN_LIB
(rillfacet's libwebgpu_dawn.so).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_dir() -> Path:
    caches = sorted((ROOT / "build").glob("*/CMakeCache.txt"))
    if not caches:
        sys.exit("no build tree under build/: run `pip install .` from the repository first")
    return caches[-1].parent


def llama_bench(build: Path) -> Path:
    exe = build / "bin" / "llama-bench"
    if not exe.exists():
        print("building llama-bench (once)...", file=sys.stderr, flush=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench"], check=True)
    return exe


def dawn_library(given: str | None = None) -> str | None:
    if given:
        return given
    if os.environ.get("LLAMA_WEBGPU_DAWN_LIB"):
        return os.environ["LLAMA_WEBGPU_DAWN_LIB"]
    spec = importlib.util.find_spec("rillfacet")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "libwebgpu_dawn.so"
        if path.exists():
            return str(path)
    return None


def run_llama_bench(
    exe: Path,
    model: Path,
    device: str,
    n: int,
    reps: int,
    threads: int,
    dawn: str | None,
    load_webgpu: bool = False,
) -> dict:
    # its libraries sit beside it (a copied build has no valid build-tree RPATH)
    env = dict(os.environ, LD_LIBRARY_PATH=str(exe.parent))
    # load_webgpu on the CPU: the WebGPU module loaded (its device made), unused, as in our process
    if device == "webgpu" or load_webgpu:
        dawn = dawn_library(dawn)
        if not dawn:
            sys.exit("llama-bench on WebGPU needs a libwebgpu_dawn.so: pip install rillfacet")
        env["LLAMA_WEBGPU_DAWN_LIB"] = dawn
        env["GGML_BACKEND_PATH"] = str(exe.parent / "libggml-webgpu.so")
    cmd = [str(exe), "-m", str(model), "-p", "0", "-n", str(n), "-r", str(reps), "-o", "json"]
    cmd += ["-t", str(threads)]
    if device == "webgpu":
        cmd += ["-ngl", "99", "-dev", "WebGPU"]
    else:
        cmd += ["-ngl", "0", "-dev", "none"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llama-bench failed:\n{out.stderr[-3000:]}")
    rows = json.loads(out.stdout)
    row = rows[-1]
    return {"avg_ts": row["avg_ts"], "stddev_ts": row["stddev_ts"], "samples_ts": row["samples_ts"]}


def run_ours(model_path: Path, device: str, n: int, reps: int, threads: int) -> dict:
    import llama_webgpu as lw
    from llama_webgpu.generate import stream_generate

    model = lw.Model(model_path, device=device)
    tok = model.tokenizer
    ban = {t: -1000.0 for t in tok.eog_tokens}
    ctx = model.context(n_ctx=n + 64, n_threads=threads)
    prompt = [tok.bos if tok.bos is not None else 0]
    speeds = []
    for rep in range(reps + 1):  # the first run warms up (shader compilation, caches)
        ctx.reset()
        count = 0
        start = None
        for resp in stream_generate(ctx, prompt, max_tokens=n, temperature=0, logit_bias=ban):
            if start is None:
                start = time.perf_counter()  # after the first token: decode only, like tg
            count = resp.generation_tokens
        elapsed = time.perf_counter() - start
        if count != n:
            sys.exit(f"generated {count} tokens, expected {n}")
        if rep > 0:
            speeds.append((n - 1) / elapsed)
    model.close()
    return {
        "avg_ts": statistics.mean(speeds),
        "stddev_ts": statistics.stdev(speeds) if len(speeds) > 1 else 0.0,
        "samples_ts": speeds,
    }


def write_json(args: argparse.Namespace, path: Path, results: dict) -> None:
    """--json: the run's settings and results, dated."""
    if args.json:
        run = {
            "model": path.name,
            "device": args.device,
            "n": args.n,
            "reps": args.r,
            "threads": args.t,
        }
        run.update(results, date=time.strftime("%Y-%m-%d"))
        Path(args.json).write_text(json.dumps(run, indent=1))


def run_ours_process(args: argparse.Namespace, path: Path, without_webgpu: bool) -> dict:
    """run_ours in a Python process of its own; without_webgpu leaves the WebGPU backend
    unloaded there (no Dawn device in the process)."""
    env = dict(os.environ)
    if without_webgpu:
        env["LLAMA_WEBGPU_DAWN_LIB"] = "/nonexistent/libwebgpu_dawn.so"
    cmd = [sys.executable, __file__, "--ours-one", "--model", str(path), "--device", args.device]
    cmd += ["-n", str(args.n), "-r", str(args.r), "-t", str(args.t)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"our run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(args: argparse.Namespace, exe: Path, path: Path) -> None:
    """--rounds K: llama-bench and our API measured in turn K times (each in a process of its
    own), so that a drift of the machine shows as a drift and not as a ratio. On the CPU each
    also with (llama-bench) or without (ours) the WebGPU backend loaded beside it."""
    bench = functools.partial(run_llama_bench, exe, path, args.device, args.n, args.r, args.t)
    kinds = {
        "llama-bench": lambda: bench(args.dawn_lib),
        "llama-bench +webgpu": lambda: bench(args.dawn_lib, load_webgpu=True),
        "ours": lambda: run_ours_process(args, path, without_webgpu=False),
        "ours -webgpu": lambda: run_ours_process(args, path, without_webgpu=True),
    }
    if args.device == "webgpu":  # the probes of the CPU's gap mean nothing here
        del kinds["llama-bench +webgpu"], kinds["ours -webgpu"]
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    print(
        f"model {path.name}, device {args.device}, tg{args.n}, "
        f"{args.r} runs x {args.rounds} rounds, {args.t} threads"
    )
    for i in range(args.rounds):
        for name, run in kinds.items():
            res = run()
            samples[name] += res["samples_ts"]
            print(
                f"  round {i + 1} {name:20s} {res['avg_ts']:9.2f} ± {res['stddev_ts']:.2f}",
                flush=True,
            )
    ref = statistics.mean(samples["llama-bench"])
    for name, vals in samples.items():
        mean = statistics.mean(vals)
        print(
            f"  {name:20s} {mean:9.2f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.2f}"
            f"  /llama-bench {mean / ref:.3f}"
        )
    write_json(args, path, {"rounds": args.rounds, "samples_ts": samples})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="known model name or path")
    ap.add_argument("--device", default="cpu", choices=["cpu", "webgpu"])
    ap.add_argument("-n", type=int, default=128, help="tokens to generate")
    ap.add_argument("-r", type=int, default=3, help="repetitions")
    ap.add_argument("-t", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--llama-bench", help="llama-bench executable (default: the build tree's)")
    ap.add_argument("--dawn-lib", help="libwebgpu_dawn.so for llama-bench (default: rillfacet's)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="measure llama-bench and ours in turn this many times; on the CPU each also with "
        "(llama-bench) or without (ours) the WebGPU backend loaded",
    )
    ap.add_argument("--ours-one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    from llama_webgpu.models import KNOWN_MODELS, model_path

    path = model_path(args.model) if args.model in KNOWN_MODELS else Path(args.model)
    if args.ours_one:
        print(json.dumps(run_ours(path, args.device, args.n, args.r, args.t)))
        return
    exe = Path(args.llama_bench) if args.llama_bench else llama_bench(build_dir())
    if args.rounds:
        rounds(args, exe, path)
        return
    ref = run_llama_bench(exe, path, args.device, args.n, args.r, args.t, args.dawn_lib)
    ours = run_ours(path, args.device, args.n, args.r, args.t)
    ratio = ours["avg_ts"] / ref["avg_ts"]
    print(f"model {path.name}, device {args.device}, tg{args.n}, {args.r} runs, {args.t} threads")
    print(f"  llama-bench       {ref['avg_ts']:9.2f} ± {ref['stddev_ts']:.2f} tokens/s")
    print(f"  stream_generate   {ours['avg_ts']:9.2f} ± {ours['stddev_ts']:.2f} tokens/s")
    print(f"  ours/llama-bench  {ratio:9.3f}")
    write_json(args, path, {"llama_bench": ref, "ours": ours, "ratio": ratio})


if __name__ == "__main__":
    main()
