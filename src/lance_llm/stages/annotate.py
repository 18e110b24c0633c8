"""Annotate stage: reviewed samples become SFT examples, preference pairs and the next seed.

Reads the reviewed candidates of this iteration and the reviewed seed; writes
- SFT examples: "new" candidates scored > `sft_threshold` (instruction and response longer than
  `min_chars`), with the system prompt, in TRL's prompt-completion format;
- preference pairs: per seed with degraded candidates (the generate stage degrades the
  high-quality seeds only), candidates = its surviving degraded responses + the original
  response. r = the lowest-scored candidate; every candidate c with score(c) - score(r) >
  `pair_margin` gives (chosen=c, rejected=r). Unscored candidates take no
  part, and ties never form a pair (the margin is strict and never negative);
- the next seed: "code" rule (reference implementation) = this iteration's reviewed new pairs
  (both branches) + reviewed Seed_0; "paper" rule = the current seed + this iteration's pairs;
- accumulation: SFT_t = SFT of iteration t + SFT_{t-1}; DPO likewise; shuffled with a fixed seed.

    sft = select_sft(reviewed, cfg.annotate, system, iteration=1)
    pairs = make_pairs(seeds, reviewed, cfg.annotate, system, iteration=1)

ANNOTATE, at the end, is the step as the loop runs it (step 6).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from ..config import AnnotateConfig
from ..records import PreferencePair, Sample, SFTExample, assistant, chat_prompt, stable_int
from ..stage import Column, Stage, StageContext

T = TypeVar("T", SFTExample, PreferencePair, Sample)


def select_sft(reviewed: Sequence[Sample], cfg: AnnotateConfig, system: str, iteration: int) -> list[SFTExample]:
    out = []
    for s in reviewed:
        if s.origin != "new" or s.score is None or s.score <= cfg.sft_threshold:
            continue
        if len(s.instruction.strip()) <= cfg.min_chars or len(s.response.strip()) <= cfg.min_chars:
            continue
        out.append(SFTExample(id=f"sft-{s.id}", prompt=chat_prompt(system, s.instruction),
                              completion=assistant(s.response), source="generated", iteration=iteration,
                              score=s.score))
    return out


def make_pairs(
    seeds: Sequence[Sample], reviewed: Sequence[Sample], cfg: AnnotateConfig, system: str, iteration: int
) -> list[PreferencePair]:
    """Pairs for the seeds (in their order) that have degraded candidates among `reviewed`."""
    degraded: dict[str, list[Sample]] = {}
    for s in reviewed:
        if s.origin == "degraded" and s.parent_id is not None:
            degraded.setdefault(s.parent_id, []).append(s)
    pairs = []
    for seed in seeds:
        # the original first, so that among equally low candidates the choice of r is stable
        candidates = [c for c in [seed, *degraded.get(seed.id, [])] if c.score is not None]
        if len(candidates) < 2:
            continue
        rejected = min(candidates, key=lambda c: c.score)  # type: ignore[arg-type, return-value]
        low = rejected.score
        assert low is not None
        for c in candidates:
            assert c.score is not None
            # rounded: 5.3333 - 3.3333 is 2.0000000000000004 in floats, which must not pass a 2.0 margin
            if c is rejected or not round(c.score - low, 6) > cfg.pair_margin:
                continue
            pairs.append(PreferencePair(
                id=f"pair-{c.id}-{rejected.id}", prompt=chat_prompt(system, seed.instruction),
                chosen=assistant(c.response), rejected=assistant(rejected.response), parent_id=seed.id,
                chosen_id=c.id, rejected_id=rejected.id, score_chosen=c.score, score_rejected=low,
                iteration=iteration,
            ))
    return pairs


def next_seed(
    reviewed_new: Sequence[Sample], seed0: Sequence[Sample], current: Sequence[Sample], rule: str, rng_seed: int,
    limit: int | None = None,
) -> list[Sample]:
    """Seed_{t+1}: ("code") new pairs + reviewed Seed_0, or ("paper") Seed_t + new pairs; shuffled,
    then the first `limit` (a seeded uniform sample) when a limit is set."""
    base = seed0 if rule == "code" else current
    return shuffled(union_by_id(base, reviewed_new), rng_seed)[:limit]


def seed_sft(seed0: Sequence[Sample], review_examples: Sequence[dict], system: str, review_prompt) -> list[SFTExample]:
    """SFT_0: the seed pairs as chat examples plus the review (EFT) examples, which teach the
    model to review: the constitution prompt -> rationale and `score: N`."""
    out = [SFTExample(id=f"sft-{s.id}", prompt=chat_prompt(system, s.instruction), completion=assistant(s.response),
                      source="seed", iteration=0) for s in seed0]
    for ex in review_examples:
        reply = f"{ex['rationale'].strip()}\nscore: {ex['score']}"
        out.append(SFTExample(id=f"sft-{ex['id']}", prompt=chat_prompt(system, review_prompt(ex["instruction"],
                              ex["response"])), completion=assistant(reply), source="review_example",
                              iteration=0, score=float(ex["score"])))
    return out


def union_by_id(previous: Sequence[T], new: Sequence[T]) -> list[T]:
    """Previous records then new ones, dropping repeated ids (a resumed run never doubles data)."""
    seen: set[str] = set()
    out = []
    for r in [*previous, *new]:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out


def shuffled(records: Sequence[T], rng_seed: int) -> list[T]:
    out = list(records)
    random.Random(rng_seed).shuffle(out)
    return out


def accumulate(previous: Sequence[T], new: Sequence[T], rng_seed: int) -> list[T]:
    return shuffled(union_by_id(previous, new), rng_seed)


def run_annotate(ctx: StageContext) -> dict:
    cfg, t = ctx.cfg, ctx.t
    reviewed, seed = ctx.read("reviewed"), ctx.read("seed_reviewed")
    sft_new = select_sft(reviewed, cfg.annotate, ctx.system, t)
    pairs = make_pairs(seed, reviewed, cfg.annotate, ctx.system, t)
    # Seed_0 as reviewed in this iteration's step 1 (ids of Seed_0 are kept through the loop)
    seed0_ids = {s.id for s in ctx.read("seed@0")}
    nxt = next_seed(reviewed, [s for s in seed if s.id in seed0_ids], seed, cfg.annotate.next_seed,
                    stable_int(cfg.seed, "next", t), cfg.annotate.next_seed_limit)
    sft = accumulate(ctx.read("sft@prev"), sft_new, stable_int(cfg.seed, "sft", t))
    dpo = accumulate(ctx.read("dpo@prev"), pairs, stable_int(cfg.seed, "dpo", t))
    for name, records in (("sft_new", sft_new), ("dpo_new", pairs), ("sft", sft), ("dpo", dpo), ("next_seed", nxt)):
        ctx.write(name, records)
    return {"sft_new": len(sft_new), "pairs_new": len(pairs), "sft_total": len(sft), "dpo_total": len(dpo),
            "next_seed": len(nxt), "paired_seeds": len({p.parent_id for p in pairs}),
            "empty": empty_reasons(reviewed, seed, cfg.annotate)}


def empty_reasons(reviewed: Sequence[Sample], seed: Sequence[Sample], cfg: AnnotateConfig) -> dict[str, str]:
    """Why no SFT example or no pair was made when there were candidates for them: the scores."""
    out = {}
    new = [s.score for s in reviewed if s.origin == "new" and s.score is not None]
    if new and not any(x > cfg.sft_threshold for x in new):
        out["SFT"] = f"no new answer scored above {cfg.sft_threshold} (best {max(new):.2f})"
    parents = {s.parent_id for s in reviewed if s.origin == "degraded" and s.score is not None}
    margins = []
    for p in (s for s in seed if s.id in parents and s.score is not None):
        group = [p.score] + [s.score for s in reviewed if s.parent_id == p.id and s.origin == "degraded"
                             and s.score is not None]
        margins.append(max(group) - min(group))
    if margins and max(margins) <= cfg.pair_margin:
        out["pairs"] = f"no candidate beat the lowest of its seed's by more than {cfg.pair_margin} " \
                       f"(best margin {max(margins):.2f})"
    return out


ANNOTATE = Stage(
    name="annotate", reads=("reviewed", "seed_reviewed", "seed@0", "sft@prev", "dpo@prev"),
    writes=("sft_new", "dpo_new", "sft", "dpo", "next_seed"), config=("annotate", "seed"), templates=("system",),
    run=run_annotate,
    funnel=(Column("SFT kept", "new pairs scored above the SFT threshold", lambda st: st["sft_new"]),
            Column("pairs", "preference pairs made", lambda st: st["pairs_new"]),
            Column("SFT total", "accumulated SFT examples trained on", lambda st: st["sft_total"]),
            Column("DPO total", "accumulated preference pairs trained on", lambda st: st["dpo_total"]),
            Column("empty", "Empty for lack of quality", lambda st: st.get("empty", {}), total=True, style="line")))
