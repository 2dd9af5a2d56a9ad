"""Checks that two WebGPU builds (or WebGPU and the CPU) compute the same logits.

    python bench/same_logits.py MODEL --save A.npy                  # with the installed build
    python bench/same_logits.py MODEL --compare A.npy [--device cpu] [--atol X]

Evaluates a fixed prompt and then decodes 16 single tokens (the mat-vec path) greedily, and
keeps the logits of every step. --compare prints the largest difference against a saved run and
whether the greedy tokens agree, and exits 1 when they do not (or when a difference exceeds
--atol). For speed patches that do not change the arithmetic (bench/webgpu_variants.sh builds
against the shipped one) the logits must be identical; against the CPU, tokens must agree.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import llama_webgpu as lw

PROMPT = "The history of the printing press begins"


def run(model_path: str, device: str, steps: int = 16) -> tuple[np.ndarray, list[int]]:
    model = lw.Model(model_path, device=device)
    tokens = model.tokenizer.encode(PROMPT)
    rows, chosen = [], []
    with model.context(n_ctx=256) as ctx:
        ctx.eval(tokens)
        for _ in range(steps):
            logits = ctx.logits().copy()
            rows.append(logits)
            chosen.append(int(logits.argmax()))
            ctx.eval([chosen[-1]])
    model.close()
    return np.stack(rows), chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="webgpu")
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--atol", type=float, default=None, help="largest allowed difference")
    args = ap.parse_args()
    logits, chosen = run(args.model, args.device)
    if args.save:
        np.save(args.save, logits)
        print(f"saved {logits.shape[0]} steps, tokens {chosen}")
    if args.compare:
        ref = np.load(args.compare)
        diff = float(np.abs(ref - logits).max())
        same_tokens = [int(r.argmax()) for r in ref] == chosen
        verdict = "agree" if same_tokens else "DIFFER"
        print(f"max |logit difference| {diff:.6g}; greedy tokens {verdict}")
        if not same_tokens or (args.atol is not None and diff > args.atol):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
