"""Iteration 0: Seed_0, SFT_0 and DPO_0, the data the loop starts from (the method's seed step).

Seed_0 is the seed file as `data` selects it (limit, seeded shuffle); SFT_0 is its pairs as chat
examples plus the review (EFT) examples, which teach the model to review: the constitution
prompt -> rationale and `score: N`; DPO_0 is empty. The loop validated both files before the run
directory was touched (loop.preflight), so reading them again here cannot fail halfway.
"""

from __future__ import annotations

from pathlib import Path

from ..records import stable_int
from ..seeds import load_review_examples, load_seed, review_examples_file, seed_files
from ..stage import Stage, StageContext
from . import annotate, review


def run_prepare(ctx: StageContext) -> dict:
    cfg = ctx.cfg
    seed0, examples = load_seed(cfg.data, cfg.seed), load_review_examples(cfg.data)
    sft0 = annotate.seed_sft(seed0, examples, ctx.system, review.review_prompt)
    ctx.write("seed", seed0)
    ctx.write("sft", annotate.shuffled(sft0, stable_int(cfg.seed, "sft", 0)))
    ctx.write("dpo", [])
    return {"seed": len(seed0), "review_examples": len(examples), "sft": len(sft0)}


def _files(cfg) -> dict[str, Path]:
    examples = review_examples_file(cfg.data)
    seeds = {("seed_file" if k == 0 else f"seed_file_{k}"): p for k, p in enumerate(seed_files(cfg.data))}
    return {**seeds, **({"review_examples": examples} if examples else {})}


PREPARE = Stage(name="prepare", reads=(), writes=("seed", "sft", "dpo"), config=("data", "seed"),
                templates=("system", "review"), files=_files, run=run_prepare)
