"""Generation throughput of the response stage: HFBackend.generate against naive HF `generate`.

    python -m bench.gen --prompts 8 --n 4 --max-new 192

Workload: the response stage's shape: `--prompts` Self-Instruct seed instructions of mixed length,
each answered `--n` times with the method's sampling (T=0.7, top-p 0.9), up to `--max-new` tokens.
Baseline: the same rows through `model.generate` in fp32, 8 rows per call in input order, one call
per batch (what a first implementation does). Ours: `HFBackend.generate` with its defaults.
Bound: this CPU's best measured matmul throughput (bf16 and fp32, large square matrices) divided
by 2 x parameters FLOPs per token.
"""

from __future__ import annotations

import argparse
import random

import torch

from .common import Timer, command, model_path, seed_pairs

SAMPLING = {"temperature": 0.7, "top_p": 0.9}


def matmul_gflops(dtype: torch.dtype, size: int = 2048, reps: int = 6) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up (thread pool, kernel selection)
    best = float("inf")
    for _ in range(reps):
        with Timer() as t:
            torch.matmul(a, b)
        best = min(best, t.seconds)
    return 2 * size**3 / best / 1e9


def workload(prompts: int, seed: int = 0) -> list[str]:
    pairs = seed_pairs()
    random.Random(seed).shuffle(pairs)
    return [p["instruction"] for p in pairs[:prompts]]


def naive(path, instructions: list[str], n: int, max_new: int) -> int:
    """fp32 HF generate, batch 8, rows in input order; returns new tokens (up to and incl. EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    rows = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in instructions for _ in range(n)]
    total = 0
    torch.manual_seed(0)
    with torch.inference_mode():
        for i in range(0, len(rows), 8):
            enc = tok(rows[i : i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=max_new,
                                 pad_token_id=tok.pad_token_id, **SAMPLING)
            new = out[:, enc["input_ids"].shape[1] :]
            eos = new == tok.eos_token_id
            # tokens up to and including the first EOS (what the backend counts)
            lengths = torch.where(eos.any(1), eos.int().argmax(1) + 1, torch.full_like(eos[:, 0], new.shape[1],
                                                                                       dtype=torch.long))
            total += int(lengths.sum())
    return total


def ours(path, instructions: list[str], n: int, max_new: int) -> int:
    from lance_llm.backends.base import GenerateRequest, Sampling
    from lance_llm.backends.hf import HFBackend

    backend = HFBackend(path, "bench")
    reqs = [GenerateRequest((("user", q),), Sampling(max_new_tokens=max_new, n=n, seed=i, **SAMPLING))
            for i, q in enumerate(instructions)]
    backend.generate(reqs)
    return backend.tokens["generated"]


def run(args: argparse.Namespace) -> list[dict]:
    from transformers import AutoConfig

    path = model_path()
    instructions = workload(args.prompts)
    with Timer() as tb:
        base_tokens = naive(path, instructions, args.n, args.max_new)
    with Timer() as to:
        our_tokens = ours(path, instructions, args.n, args.max_new)
    base_tps, our_tps = base_tokens / tb.seconds, our_tokens / to.seconds
    cfg = AutoConfig.from_pretrained(str(path))
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    gflops = {str(d).split(".")[-1]: matmul_gflops(d) for d in (torch.float32, torch.bfloat16)}
    bound = max(gflops.values()) * 1e9 / (2 * params)
    cmd = command("bench.gen", [f"--prompts {args.prompts} --n {args.n} --max-new {args.max_new}"])
    details = {"rows": len(instructions) * args.n, "max_new_tokens": args.max_new,
               "baseline_tokens": base_tokens, "baseline_seconds": round(tb.seconds, 1),
               "our_tokens": our_tokens, "our_seconds": round(to.seconds, 1), "params": params,
               "matmul_gflops": {k: round(v, 1) for k, v in gflops.items()}, "bound_tokens_per_s": round(bound)}
    return [
        {"metric": "generation tokens/s, response stage", "unit": "tokens/s", "ours": round(our_tps, 1),
         "baseline": round(base_tps, 1), "baseline_name": "naive HF generate, fp32, batch 8",
         "ratio": round(our_tps / base_tps, 2), "goal": ">= 3x", "met": our_tps / base_tps >= 3,
         "details": details, "command": cmd},
        {"metric": "generation tokens/s vs matmul bound", "unit": "tokens/s", "ours": round(our_tps, 1),
         "baseline": round(bound, 1), "baseline_name": "measured matmul GFLOPS / (2 x params)",
         "ratio": round(our_tps / bound, 3), "goal": ">= 0.40 of bound", "met": our_tps / bound >= 0.4,
         "details": details, "command": cmd},
    ]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new", type=int, default=192)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    import json

    print(json.dumps(run(ap.parse_args()), indent=1))
