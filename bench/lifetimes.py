"""Load/free cycles: is resident memory flat once warmed up?

Each cycle loads a model, uses it and frees it:

- vocab: a vocab-only load, tokenize and detokenize a sentence, close();
- full: a full load on the device, a context (n_ctx 64), a greedy generation of a few tokens
  through a sampler, then close() of all of it (or, with --drop, only dropping the references
  and letting the garbage collector free them).

RSS (VmRSS from /proc/self/status) is read after the warm-up cycles and at the end; the growth
between them is the figure to watch (the check in tests/test_lifetimes.py wants < 5 %).

    python bench/lifetimes.py --kind vocab --device cpu --cycles 1000
    python bench/lifetimes.py --kind full --device webgpu --cycles 100 --warmup 20
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_webgpu as lw

SENTENCE = "Lifetimes: the quick brown fox jumps over the lazy dog. Ünïcödé ✓ 日本語"


def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def one_cycle(path: Path, kind: str, device: str, drop: bool = False) -> None:
    """Load, use and free one model (raises if the model misbehaves)."""
    if kind == "vocab":
        model = lw.Model(path, vocab_only=True)
        tokens = model.tokenizer.encode(SENTENCE)
        if model.tokenizer.decode(tokens, special=False).strip() != SENTENCE:
            raise AssertionError("tokenize/detokenize round trip changed the text")
        if not drop:
            model.close()
        return
    model = lw.Model(path, device=device)
    ctx = model.context(n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1)
    sampler = lw.make_sampler(model, temperature=0, logit_bias={0: -1.0})
    result = lw.generate(ctx, "The capital of France is", max_tokens=3, sampler=sampler)
    if len(result.tokens) == 0:
        raise AssertionError("no tokens generated")
    if not drop:
        sampler.close()
        ctx.close()
        model.close()


@dataclass
class Report:
    kind: str
    device: str
    drop: bool
    cycles: int
    warmup: int
    rss_start_kib: int
    rss_warm_kib: int
    rss_end_kib: int
    growth_pct: float
    seconds_per_cycle: float
    first_cycle_s: float


def run(
    kind: str,
    device: str,
    cycles: int,
    warmup: int,
    *,
    drop: bool = False,
    path: Path | None = None,
    progress: bool = False,
) -> Report:
    """Run warmup + cycles cycles; growth is measured over the last `cycles`."""
    path = path or lw.model_path()
    gc.collect()
    start_rss = rss_kib()
    t0 = time.perf_counter()
    one_cycle(path, kind, device, drop)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        one_cycle(path, kind, device, drop)
    gc.collect()
    warm_rss = rss_kib()
    t1 = time.perf_counter()
    for i in range(cycles):
        one_cycle(path, kind, device, drop)
        if progress and (i + 1) % max(1, cycles // 10) == 0:
            print(f"  {i + 1}/{cycles}: {rss_kib()} KiB", file=sys.stderr, flush=True)
    per_cycle = (time.perf_counter() - t1) / max(1, cycles)
    gc.collect()
    end_rss = rss_kib()
    return Report(
        kind=kind,
        device=device,
        drop=drop,
        cycles=cycles,
        warmup=warmup,
        rss_start_kib=start_rss,
        rss_warm_kib=warm_rss,
        rss_end_kib=end_rss,
        growth_pct=100.0 * (end_rss - warm_rss) / warm_rss,
        seconds_per_cycle=per_cycle,
        first_cycle_s=first,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("vocab", "full"), default="vocab")
    ap.add_argument("--device", choices=("cpu", "webgpu"), default="cpu")
    ap.add_argument("--cycles", type=int, default=1000, help="measured cycles after warm-up")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--drop", action="store_true", help="drop references instead of close()")
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = ap.parse_args(argv)
    report = run(
        args.kind,
        args.device,
        args.cycles,
        args.warmup,
        drop=args.drop,
        path=args.model,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        r = report
        print(
            f"{r.kind} on {r.device}{' (drop)' if r.drop else ''}: {r.warmup} warm-up + "
            f"{r.cycles} cycles, RSS start {r.rss_start_kib / 1024:.1f} MiB, after warm-up "
            f"{r.rss_warm_kib / 1024:.1f} MiB, end {r.rss_end_kib / 1024:.1f} MiB, growth "
            f"{r.growth_pct:+.2f} %, {1000 * r.seconds_per_cycle:.1f} ms/cycle "
            f"(first {1000 * r.first_cycle_s:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
