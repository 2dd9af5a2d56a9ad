"""The probe behind ours-pp512-order-probe.txt: is our API's pp512 on Gemma-3-270M slower after
other models ran in the same process? Run on the GPU machine from the repository root:

    python3 ours_pp512_order.py sall,gall      (steps, in order, in one process)

gpp / spp: six pp512 runs through the API on Gemma-3-270M / SmolLM2 (the first compiles);
gall / sall: bench/compare.py's ours_rows (pp512, tg128, tg128 at depth 2048) on them.
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, "bench")
from compare import ours_rows

import llama_webgpu as lw

MODELS = Path("/root/stash/models")
SMOL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = MODELS / "gemma-3-270m-random-Q4_K_M.gguf"


def pp(path: Path, reps: int = 6) -> None:
    model = lw.Model(path, device="webgpu")
    rng = random.Random(0)
    vocab = list(range(model.n_vocab // 4, model.n_vocab - 300))
    speeds = []
    with model.context(n_ctx=512, n_batch=512, flash_attn=True) as ctx:
        for _ in range(reps):
            ctx.reset()
            prompt = [rng.choice(vocab) for _ in range(512)]
            start = time.perf_counter()
            ctx.eval(prompt)
            ctx.logits()
            speeds.append(round(512 / (time.perf_counter() - start)))
    model.close()
    print("pp", path.name, speeds, flush=True)


def all_tests(path: Path) -> None:
    rows = ours_rows(path, 3, [0, 2048])
    print("ours_rows", path.name, {k: round(v["avg_ts"]) for k, v in rows.items()}, flush=True)


STEPS = {
    "gpp": lambda: pp(GEMMA),
    "spp": lambda: pp(SMOL),
    "gall": lambda: all_tests(GEMMA),
    "sall": lambda: all_tests(SMOL),
}
for step in sys.argv[1].split(","):
    STEPS[step]()
