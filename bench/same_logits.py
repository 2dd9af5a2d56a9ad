"""Checks that two WebGPU builds (or WebGPU and the CPU) compute the same logits.

    python bench/same_logits.py MODEL --save A.npy                  # with the installed build
    python bench/same_logits.py MODEL --compare A.npy [--device cpu] [--atol X] [--min-agree N]
    python bench/same_logits.py MODEL --prompt-tokens 512 ...       # a prefill-sized prompt

Evaluates a fixed prompt and then 16 fixed tokens one at a time (the mat-vec path; the inputs
are the same in every run, so a near tie that one build breaks the other way does not change
what follows), and keeps the logits of every step. --compare prints the largest difference
against a saved run and at how many steps the top tokens agree, and exits 1 when a difference
exceeds --atol or fewer than --min-agree steps agree. For speed patches that do not change the
arithmetic (bench/webgpu_variants.sh builds against the shipped one) use --atol 0.
--prompt-tokens N makes the prompt N tokens long (the text repeated), so that it goes through the
mat-mul kernels of prefill rather than those of a short prompt.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import llama_webgpu as lw

PROMPT = "The history of the printing press begins"
FOLLOW = " in the fifteenth century, when Johannes Gutenberg, a goldsmith from Mainz, built a press"


def run(model_path: str, device: str, steps: int = 16, prompt_tokens: int = 0) -> np.ndarray:
    model = lw.Model(model_path, device=device)
    follow = model.tokenizer.encode(FOLLOW, add_special=False)
    follow = (follow * steps)[:steps]
    prompt = model.tokenizer.encode(PROMPT)
    if prompt_tokens:
        text = model.tokenizer.encode(PROMPT + FOLLOW, add_special=False)
        prompt = (prompt + text * (prompt_tokens // len(text) + 1))[:prompt_tokens]
    rows = []
    with model.context(n_ctx=max(256, len(prompt) + steps), n_batch=max(512, len(prompt))) as ctx:
        ctx.eval(prompt)
        for token in follow:
            rows.append(ctx.logits().copy())
            ctx.eval([token])
    model.close()
    return np.stack(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="webgpu")
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--atol", type=float, default=None, help="largest allowed difference")
    ap.add_argument("--min-agree", type=int, default=0, help="fewest steps whose top tokens agree")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="prompt length (default: short)")
    args = ap.parse_args()
    logits = run(args.model, args.device, prompt_tokens=args.prompt_tokens)
    if args.save:
        np.save(args.save, logits)
        print(f"saved {logits.shape[0]} steps")
    if args.compare:
        ref = np.load(args.compare)
        diff = float(np.abs(ref - logits).max())
        agree = int((ref.argmax(axis=1) == logits.argmax(axis=1)).sum())
        print(f"max |logit difference| {diff:.6g}; top tokens agree at {agree} of {len(ref)} steps")
        if (args.atol is not None and diff > args.atol) or agree < args.min_agree:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
