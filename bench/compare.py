#!/usr/bin/env python3
"""Side-by-side speed of llama.cpp backends and of our Python API: same commit, models and counts.

    python bench/compare.py --model smollm2=SmolLM2.gguf --model llama-1b=1b-q4_k_m.gguf \\
        --bench cuda=build-cuda/bin/llama-bench --bench vulkan=build-vk/bin/llama-bench \\
        --bench webgpu=tools/bin/llama-bench --bench cpu=tools/bin/llama-bench \\
        --webgpu-lib patched=variants/patched/libggml-webgpu.so --ours --json results.json

For every model and backend it runs llama-bench for pp512, tg128 and tg128 at depth 2048 (flash
attention on), and with --ours the same three tests through the package's Python API on WebGPU.
A `webgpu...` or `cpu` bench is our DL build (libraries beside the executable; WebGPU reached
through GGML_BACKEND_PATH and Dawn through --dawn-lib); `--webgpu-lib NAME=LIB` adds a column for
another build of libggml-webgpu.so with the same llama-bench (patched variants, measured in the
same run). It prints tokens/s per test and the ratios WebGPU/CUDA, WebGPU/Vulkan and
ours/llama-bench, and writes every raw figure to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path


def llama_bench_rows(
    exe: Path, kind: str, model: Path, reps: int, depths: list[int], env_extra: dict, threads: int
) -> dict[str, dict]:
    env = dict(os.environ, **env_extra)
    env["LD_LIBRARY_PATH"] = f"{exe.parent}:{env.get('LD_LIBRARY_PATH', '')}"
    cmd = [str(exe), "-m", str(model), "-p", "512", "-n", "128", "-r", str(reps), "-fa", "1"]
    cmd += ["-d", ",".join(map(str, depths)), "-o", "json"]
    if kind == "cpu":
        cmd += ["-ngl", "0", "-t", str(threads), "-dev", "none"]
    elif kind.startswith("webgpu"):
        cmd += ["-ngl", "99", "-dev", "WebGPU"]
    else:
        cmd += ["-ngl", "99"]
    start = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(
            f"  llama-bench failed ({kind}, {model.name}):\n{out.stderr[-2000:]}", file=sys.stderr
        )
        return {}
    rows = {}
    for row in json.loads(out.stdout):
        if row["n_prompt"] == 512 and row["n_gen"] == 0 and row["n_depth"] == 0:
            test = "pp512"
        elif row["n_gen"] == 128 and row["n_prompt"] == 0:
            test = "tg128" if row["n_depth"] == 0 else f"tg128@d{row['n_depth']}"
        else:
            continue
        rows[test] = {
            "avg_ts": row["avg_ts"],
            "stddev_ts": row["stddev_ts"],
            "samples_ts": row["samples_ts"],
            "backends": row.get("backends"),
            "gpu_info": row.get("gpu_info"),
            "build_commit": row.get("build_commit"),
        }
    print(f"  {kind:16s} {model.name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


def ours_rows(
    model_path: Path, reps: int, depths: list[int], gpu_sampling: bool = False
) -> dict[str, dict]:
    """pp512 / tg128 / tg128 at depth through the Python API on WebGPU, timed like llama-bench.
    gpu_sampling=True picks the greedy tokens on the GPU (ContextParams.gpu_sampling)."""
    import llama_webgpu as lw
    from llama_webgpu.generate import stream_generate

    model = lw.Model(model_path, device="webgpu")
    tok = model.tokenizer
    ban = {t: -1000.0 for t in tok.eog_tokens}
    rng = random.Random(0)
    specials = set(tok.eog_tokens) | {tok.bos}
    vocab = [t for t in range(model.n_vocab // 4, model.n_vocab) if t not in specials]
    rows: dict[str, dict] = {}

    # contexts sized as llama-bench sizes its own (n_prompt + n_gen + n_depth): the KV cache
    # length changes attention cost, which shows on small models
    speeds = []
    with model.context(n_ctx=512, n_batch=512, flash_attn=True) as ctx:
        for rep in range(reps + 1):
            ctx.reset()
            prompt = [rng.choice(vocab) for _ in range(512)]
            t0 = time.perf_counter()
            ctx.eval(prompt)
            ctx.logits()
            if rep:  # the first run warms up (shader compilation)
                speeds.append(512 / (time.perf_counter() - t0))
    rows["pp512"] = _stats(speeds)

    for depth in depths:
        speeds = []
        context = [rng.choice(vocab) for _ in range(depth)] + [tok.bos or 1]
        with model.context(
            n_ctx=depth + 1 + 128, n_batch=512, flash_attn=True, gpu_sampling=gpu_sampling
        ) as ctx:
            for rep in range(reps + 1):
                ctx.reset()
                if depth:
                    ctx.eval(context[:-1])
                count, start = 0, None
                steps = stream_generate(ctx, context, max_tokens=128, temperature=0, logit_bias=ban)
                for resp in steps:
                    if start is None:
                        start = time.perf_counter()  # decode only, as llama-bench's tg
                    count = resp.generation_tokens
                if count != 128:
                    raise RuntimeError(f"generated {count} tokens, expected 128")
                if rep:
                    speeds.append(127 / (time.perf_counter() - start))
        rows["tg128" if depth == 0 else f"tg128@d{depth}"] = _stats(speeds)
    model.close()
    return rows


def _stats(speeds: list[float]) -> dict:
    return {
        "avg_ts": statistics.mean(speeds),
        "stddev_ts": statistics.stdev(speeds) if len(speeds) > 1 else 0.0,
        "samples_ts": speeds,
    }


def ratio(results: dict, model: str, test: str, num: str, den: str) -> float | None:
    a = results.get(model, {}).get(num, {}).get(test)
    b = results.get(model, {}).get(den, {}).get(test)
    return a["avg_ts"] / b["avg_ts"] if a and b else None


def report(results: dict, columns: list[str], depth: int) -> str:
    tests = ("pp512", "tg128", f"tg128@d{depth}")
    lines = []
    for model, by_backend in results.items():
        lines.append(f"\n{model}")
        lines.append("  " + f"{'test':12s}" + "".join(f"{c:>18s}" for c in columns))
        for test in tests:
            cells = []
            for c in columns:
                r = by_backend.get(c, {}).get(test)
                cells.append(
                    f"{r['avg_ts']:10.1f} ± {r['stddev_ts']:<5.1f}" if r else f"{'-':>18s}"
                )
            lines.append("  " + f"{test:12s}" + "".join(f"{x:>18s}" for x in cells))
        webgpus = [c for c in columns if c.startswith("webgpu")]
        for test in tests:
            parts = []
            for w in webgpus:
                for den in ("cuda", "vulkan"):
                    r = ratio(results, model, test, w, den)
                    if r is not None:
                        parts.append(f"{w}/{den} {r:.3f}")
            for ours in ("ours", "ours-gpu"):
                r = ratio(results, model, test, ours, "webgpu")
                if r is not None:
                    parts.append(f"{ours}/llama-bench {r:.3f}")
            if parts:
                lines.append(f"  {test:12s} " + ", ".join(parts))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument(
        "--bench", action="append", default=[], help="KIND=llama-bench (cuda, vulkan, webgpu, cpu)"
    )
    ap.add_argument(
        "--webgpu-lib", action="append", default=[], help="NAME=libggml-webgpu.so variant"
    )
    ap.add_argument("--dawn-lib", help="libwebgpu_dawn.so for the WebGPU llama-bench")
    ap.add_argument("--ours", action="store_true", help="also the Python API on WebGPU")
    ap.add_argument(
        "--ours-gpu",
        action="store_true",
        help="also the Python API with greedy tokens picked on the GPU (gpu_sampling=True)",
    )
    ap.add_argument(
        "--cpu-models", default="", help="comma list of models the CPU runs (default all)"
    )
    ap.add_argument("-r", type=int, default=3, help="repetitions")
    ap.add_argument("-t", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--json", help="write all raw figures here")
    ap.add_argument("--commit", default=os.environ.get("LLAMA_WEBGPU_COMMIT", ""))
    ap.add_argument("--ours-one", metavar="GGUF", help=argparse.SUPPRESS)  # one model's --ours
    ap.add_argument("--gpu-sampling", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours_one:
        rows = ours_rows(Path(args.ours_one), args.r, [0, args.depth], args.gpu_sampling)
        print(json.dumps(rows))
        return

    models = dict(m.split("=", 1) for m in args.model)
    benches = dict(b.split("=", 1) for b in args.bench)
    variants = dict(v.split("=", 1) for v in args.webgpu_lib)
    cpu_models = set(filter(None, args.cpu_models.split(","))) or set(models)
    depths = [0, args.depth]
    results: dict[str, dict] = {name: {} for name in models}
    columns: list[str] = []

    runs = []  # (column, kind, exe, env)
    for kind, exe in benches.items():
        env = {}
        if kind.startswith("webgpu"):
            env = {"GGML_BACKEND_PATH": str(Path(exe).parent / "libggml-webgpu.so")}
            if args.dawn_lib:
                env["LLAMA_WEBGPU_DAWN_LIB"] = args.dawn_lib
            runs.append((kind, kind, Path(exe), env))
            for name, lib in variants.items():
                runs.append(
                    (f"webgpu-{name}", "webgpu", Path(exe), dict(env, GGML_BACKEND_PATH=lib))
                )
        else:
            runs.append((kind, kind, Path(exe), env))
    for column, kind, exe, env in runs:
        columns.append(column)
        for name, path in models.items():
            if kind == "cpu" and name not in cpu_models:
                continue
            results[name][column] = llama_bench_rows(
                exe, kind, Path(path), args.r, depths, env, args.t
            )
    ours_columns = [("ours", False)] if args.ours else []
    ours_columns += [("ours-gpu", True)] if args.ours_gpu else []
    for column, on_gpu in ours_columns:
        columns.append(column)
        for name, path in models.items():
            # a process of its own per model, as llama-bench has
            start = time.time()
            cmd = [sys.executable, __file__, "--ours-one", path, "-r", str(args.r)]
            cmd += ["--depth", str(args.depth)] + (["--gpu-sampling"] if on_gpu else [])
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if out.returncode == 0:
                results[name][column] = json.loads(out.stdout.splitlines()[-1])
            else:  # report and go on: one model must not lose the others
                print(f"  {column} failed on {name}:\n{out.stderr[-2000:]}", file=sys.stderr)
            print(
                f"  {column:16s} {name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True
            )

    text = report(results, columns, args.depth)
    print(text)
    if args.json:
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": args.commit,
            "host": platform.node(),
            "cpu_threads": args.t,
            "reps": args.r,
            "models": {k: Path(v).name for k, v in models.items()},
            "benches": benches,
            "webgpu_variants": variants,
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
