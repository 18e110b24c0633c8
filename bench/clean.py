"""ROUGE-L near-duplicate cleaning at scale: `stages.clean.clean` on synthetic new instructions.

    python -m bench.clean --n 100000 --sample 2000

Workload: `--n` new instructions under one parent seed (the worst case: the near-duplicate rule
compares within a parent), written from the Self-Instruct seed instructions by word substitution,
with about a quarter being light edits (word drops, swaps, truncations) of earlier ones.
Reference: the same `clean` call with the near-duplicate search forced to the plain all-pairs scan
(`NearDuplicates.LINEAR_MAX` raised), on the first `--sample` candidates: the decisions (kept ids and
every drop reason) must be identical. Then the indexed search alone runs on all `--n`.
"""

from __future__ import annotations

import argparse
import random
import re

from .common import Timer, command, seed_pairs


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pairs = seed_pairs()
    seeds = [p["instruction"].split("\n")[0] for p in pairs]
    # words drawn with their frequency in the seed tasks' texts: common words common, rare ones rare
    pool = [w for p in pairs for w in re.findall(r"[A-Za-z]+", p["instruction"] + " " + p["response"])]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.25:  # a light edit of an earlier instruction
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 3)):
                op = rng.random()
                if op < 0.4 and len(words) > 3:
                    del words[rng.randrange(len(words))]
                elif op < 0.8:
                    words[rng.randrange(len(words))] = rng.choice(pool)
                else:
                    words = words[: max(3, len(words) * 3 // 4)]
        else:  # a fresh one: a seed instruction with about half its words replaced
            words = [w if rng.random() < 0.5 else rng.choice(pool) for w in rng.choice(seeds).split()]
            words += rng.sample(pool, rng.randint(0, 4))
        out.append(" ".join(words))
    return out


def candidates(instructions: list[str], per_parent: int):
    """New candidates, `per_parent` consecutive instructions per parent seed (0: all under one)."""
    from lance_llm.records import Sample

    seeds: dict = {}
    cands = []
    for i, text in enumerate(instructions):
        pid = f"p{i // per_parent if per_parent else 0}"
        seeds.setdefault(pid, Sample(id=pid, instruction="Write a short story about a robot learning to paint.",
                                     response="Once upon a time a small robot found a brush and blue paint."))
        cands.append(Sample(id=f"c{i}", instruction=text, origin="new", parent_id=pid, iteration=1,
                            response=f"Answer {i}: this is a response with enough words to pass."))
    return seeds, cands


def decisions(result) -> list[tuple[str, str]]:
    return [(c.id, "kept") for c in result.kept] + [(d["id"], d["reason"]) for d in result.dropped]


def reference(seeds, cands, cfg):
    """`clean` with every similarity test a plain rouge-score call against every kept text."""
    from lance_llm.stages import clean as cl

    linear, prefilter = cl.NearDuplicates.LINEAR_MAX, cl.similar_to
    cl.NearDuplicates.LINEAR_MAX, cl.similar_to = 10**12, cl.rouge_similar
    try:
        return cl.clean(seeds, cands, cfg)
    finally:
        cl.NearDuplicates.LINEAR_MAX, cl.similar_to = linear, prefilter


def measure(texts: list[str], sample: int, per_parent: int) -> dict:
    from lance_llm.config import CleanConfig
    from lance_llm.stages import clean as cl

    cfg = CleanConfig()
    seeds, cands = candidates(texts[:sample], per_parent)
    with Timer() as t_ref:
        ref = reference(seeds, cands, cfg)
    with Timer() as t_small:
        fast = cl.clean(seeds, cands, cfg)
    seeds, cands = candidates(texts, per_parent)
    with Timer() as t_full:
        big = cl.clean(seeds, cands, cfg)
    # the all-pairs scan grows with the square of the group size (linearly in the number of groups)
    groups = len(texts) / per_parent if per_parent else 1
    size = per_parent or len(texts)
    sample_groups = sample / per_parent if per_parent else 1
    sample_size = min(per_parent, sample) if per_parent else sample
    projected = t_ref.seconds * (groups / sample_groups) * (size / sample_size) ** 2 if not per_parent else \
        t_ref.seconds * len(texts) / sample
    return {"n": len(texts), "seconds": t_full.seconds, "projected_reference": projected,
            "same": decisions(ref) == decisions(fast), "reference_sample_seconds": round(t_ref.seconds, 2),
            "indexed_sample_seconds": round(t_small.seconds, 2), "sample_counts": fast.counts,
            "full_counts": big.counts}


def run(args: argparse.Namespace) -> list[dict]:
    texts = synthetic_instructions(max(args.n, args.one_parent_n))
    rows = []
    for label, n, per_parent, sample in (
            (f"{args.per_parent} per parent seed (the method's grouping)", args.n, args.per_parent, args.sample),
            ("all under one parent (global near-dup search)", args.one_parent_n, 0, args.one_parent_sample)):
        m = measure(texts[:n], sample, per_parent)
        rows.append({
            "metric": f"ROUGE-L near-duplicate cleaning of {n} instructions, {label}", "unit": "s",
            "ours": round(m["seconds"], 1), "baseline": round(m["projected_reference"], 1),
            "baseline_name": f"all-pairs scan, timed on the first {sample}, scaled to n",
            "ratio": round(m["projected_reference"] / m["seconds"], 1),
            "goal": "<= 60 s for 100k, same decisions on the sample",
            "met": m["same"] and n >= 100_000 and m["seconds"] <= 60,
            "details": {**m, "sample": sample, "cores_used": 1},
            "command": command("bench.clean", [f"--n {args.n} --per-parent {args.per_parent} "
                                               f"--one-parent-n {args.one_parent_n} --sample {args.sample} "
                                               f"--one-parent-sample {args.one_parent_sample}"]),
        })
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--per-parent", type=int, default=4, help="new instructions per parent (method: 4)")
    p.add_argument("--one-parent-n", type=int, default=10_000, help="size of the one-parent worst case")
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--one-parent-sample", type=int, default=1000, help="all-pairs reference sample, one parent")


if __name__ == "__main__":
    import json

    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    print(json.dumps(run(ap.parse_args()), indent=1, default=str))
