"""Split and generate stages: scored seeds become new candidates for cleaning.

Reads reviewed seed `Sample`s; writes candidate `Sample`s with origin "new" (a new instruction
and one response to it, from a low-quality seed) or "degraded" (a deliberately worse response to a
high-quality seed's instruction). Each candidate keeps its parent seed id.

- split: score > threshold is high quality; score <= threshold is low; unscored seeds take
  neither branch (they are counted, never guessed).
- low: the "new instruction" template, `n_instructions` samples; the text after `Final Answer:` is
  the new instruction (replies without it are counted parse failures); then `n_responses`
  answers per new instruction, sampled with the system prompt.
- high: the "degrade response" template, `n_degraded` samples, parsed the same way.
- `generate.format`: "fill" (default) prefills the reply with the template's sections in two
  calls: "Thought Process:" (the model's thought, stopped at its own "Final Answer"), then the
  thought + "\nFinal Answer:" (the answer, stopped at the next section label), so the model only
  fills the sections; an empty answer is the parse failure. "free": one reply, parsed after.

    low, high, unscored = split(seeds, cfg.generate.threshold)
    candidates, stats = generate(low, high, backend, cfg.generate, system, iteration=1, seed=0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends.base import Backend, GenerateRequest, Sampling
from ..config import GenerateConfig, SamplingConfig
from ..prompts import load, render
from ..records import Sample, make_id, stable_int
from ..stage import Column, Stage, StageContext

_FINAL_RE = re.compile(r"final\s*answer\s*\**\s*[:：]\s*\**", re.IGNORECASE)
# Small models keep writing after their answer, often a new worked example; a template section
# label at the start of a line ends the answer.
_SECTION_RE = re.compile(
    r"\n\s*\**\s*((original\s+(instruction|answer|response)|thought\s+process|instruction|example\s*\d*)\s*\**\s*:"
    r"|example\s+\d+\s*\**\s*(\n|$))",
    re.IGNORECASE,
)
_FENCE_RE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.DOTALL)


def parse_final_answer(text: str) -> str | None:
    """The text after the last `Final Answer:`, up to the next template section label, with a
    wrapping code fence, bold marker or pair of quotes removed; None if absent or empty."""
    parts = _FINAL_RE.split(text or "")
    if len(parts) < 2:
        return None
    answer = _SECTION_RE.split("\n" + parts[-1].strip(), maxsplit=1)[0].strip()
    fence = _FENCE_RE.match(answer)
    if fence:
        answer = fence.group(1).strip()
    if answer.endswith("**") and "**" not in answer[:-2]:  # the marker regex ate the opening **
        answer = answer[:-2].strip()
    elif len(answer) > 4 and answer.startswith("**") and answer.endswith("**") and "**" not in answer[2:-2]:
        answer = answer[2:-2].strip()
    # a pair of quotes wrapping the whole answer is presentation; "A" vs "B" is content
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'" and answer[0] not in answer[1:-1]:
        answer = answer[1:-1].strip()
    return answer or None


THOUGHT, FINAL = "Thought Process:", "Final Answer:"
# fill: the model's own "Final Answer" ends its thought (we write the header ourselves) ...
THOUGHT_STOP = ("Final Answer", "final answer", "FINAL ANSWER", "Final answer")
# ... and the template's next section label ends its answer (parse_final_answer cuts the variants)
ANSWER_STOP = ("\nOriginal instruction", "\nOriginal answer", "\nOriginal response", "\nInstruction:",
               "\nThought Process", "\nFinal Answer", "\nExample ", "\nNow do the same")


def split(seeds: Sequence[Sample], threshold: float) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(low, high, unscored) in input order."""
    low, high, unscored = [], [], []
    for s in seeds:
        if s.score is None:
            unscored.append(s)
        elif s.score > threshold:
            high.append(s)
        else:
            low.append(s)
    return low, high, unscored


@dataclass
class GenerateStats:
    low_seeds: int = 0
    high_seeds: int = 0
    instruction_replies: int = 0
    instruction_parse_failures: int = 0
    new_instructions: int = 0
    new_responses: int = 0
    degrade_replies: int = 0
    degrade_parse_failures: int = 0
    degraded_responses: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def templated_replies(jobs: Sequence[tuple[Sample, str, int, str]], backend: Backend, cfg: GenerateConfig,
                      system: str, iteration: int, seed: int) -> list[list[str]]:
    """For each (seed sample, template, n, tag): `n` replies in the template's format (the "free"
    reply, or, with format "fill", "Thought Process: ...\nFinal Answer: ..." assembled from the two
    prefilled calls), ready for `parse_final_answer`."""
    def chat(s: Sample, template: str) -> tuple[tuple[str, str], ...]:
        return (("system", system), ("user", render(load(template), instruction=s.instruction, response=s.response)))

    if cfg.format == "free":
        return backend.generate([GenerateRequest(chat(s, tpl), _sampling(cfg.sampling, n, stable_int(seed, iteration,
                                                                                                     tag, s.id)))
                                 for s, tpl, n, tag in jobs])
    thought_cfg = SamplingConfig(cfg.sampling.temperature, cfg.sampling.top_p, cfg.thought_max_new_tokens)
    thoughts = backend.generate([
        GenerateRequest(chat(s, tpl), _sampling(thought_cfg, n, stable_int(seed, iteration, tag, "thought", s.id)),
                        prefix=THOUGHT, stop=THOUGHT_STOP)
        for s, tpl, n, tag in jobs])
    heads = [[f"{THOUGHT} {t.strip()}\n{FINAL}" for t in ts] for ts in thoughts]
    answers = iter(backend.generate([
        GenerateRequest(chat(s, tpl), _sampling(cfg.sampling, 1, stable_int(seed, iteration, tag, "answer", s.id, k)),
                        prefix=head, stop=ANSWER_STOP)
        for (s, tpl, _, tag), hs in zip(jobs, heads, strict=True) for k, head in enumerate(hs)]))
    return [[head + next(answers)[0] for head in hs] for hs in heads]


def _parse_all(replies: Sequence[str]) -> tuple[list[tuple[int, str]], int]:
    """(index, parsed Final Answer) for the replies that have one, and the number that do not."""
    parsed = [(k, parse_final_answer(text)) for k, text in enumerate(replies)]
    ok = [(k, text) for k, text in parsed if text is not None]
    return ok, len(parsed) - len(ok)


def _sampling(cfg: SamplingConfig, n: int, seed: int) -> Sampling:
    return Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, n, seed)


def generate(
    low: Sequence[Sample],
    high: Sequence[Sample],
    backend: Backend,
    cfg: GenerateConfig,
    system: str,
    iteration: int,
    seed: int,
) -> tuple[list[Sample], GenerateStats]:
    stats = GenerateStats(low_seeds=len(low), high_seeds=len(high))
    fp = backend.fingerprint
    # every request of both branches goes to the backend in one call, so it can batch them all
    jobs = [(s, "new_instruction", cfg.n_instructions, "instruction") for s in low]
    jobs += [(s, "degrade_response", cfg.n_degraded, "degrade") for s in high]
    replies = templated_replies(jobs, backend, cfg, system, iteration, seed)
    instr_replies, degrade_replies = replies[: len(low)], replies[len(low) :]

    # low branch: parse new instructions, then answer each of them
    new_instructions: list[tuple[Sample, int, str]] = []  # (parent, index, instruction)
    for parent, outs in zip(low, instr_replies, strict=True):
        parsed, failures = _parse_all(outs)
        stats.instruction_replies += len(outs)
        stats.instruction_parse_failures += failures
        new_instructions.extend((parent, k, text) for k, text in parsed)
    stats.new_instructions = len(new_instructions)
    answer_reqs = [
        GenerateRequest(
            (("system", system), ("user", instr)),
            _sampling(cfg.response_sampling, cfg.n_responses, stable_int(seed, iteration, "answer", p.id, k)),
        )
        for p, k, instr in new_instructions
    ]
    candidates: list[Sample] = []
    for (parent, k, instr), answers in zip(new_instructions, backend.generate(answer_reqs), strict=True):
        for j, answer in enumerate(answers):
            candidates.append(Sample(
                id=make_id(iteration, "new", parent.id, k, j), instruction=instr, response=answer,
                origin="new", parent_id=parent.id, iteration=iteration, stage="generate", model=fp,
            ))
            stats.new_responses += 1

    # high branch: degraded responses to the seed's own instruction
    for parent, outs in zip(high, degrade_replies, strict=True):
        parsed, failures = _parse_all(outs)
        stats.degrade_replies += len(outs)
        stats.degrade_parse_failures += failures
        for k, text in parsed:
            candidates.append(Sample(
                id=make_id(iteration, "degraded", parent.id, k), instruction=parent.instruction,
                response=text, origin="degraded", parent_id=parent.id, iteration=iteration,
                stage="generate", model=fp,
            ))
        stats.degraded_responses += len(parsed)
    return candidates, stats


def run_generate(ctx: StageContext) -> dict:
    """Steps 2 and 3: split the reviewed seed on the threshold, then write for both branches."""
    cfg, v = ctx.cfg, ctx.cfg.generate.threshold
    low, high, unscored = split(ctx.read("seed_reviewed"), v)
    cands, st = generate(low, high, ctx.backend, cfg.generate, ctx.system, ctx.t, cfg.seed)
    ctx.write("generated", cands)
    scores = [s.score for s in (*low, *high) if s.score is not None]
    empty = {}  # a branch empty because of the scores (not because there is no seed), and why
    if scores and not high:
        empty["high"] = f"no seed scored above {v} (best {max(scores):.2f})"
    if scores and not low:
        empty["low"] = f"every seed scored above {v} (lowest {min(scores):.2f})"
    return {**st.to_dict(), "unscored_seeds": len(unscored), "candidates": len(cands), "empty": empty}


GENERATE = Stage(
    name="generate", reads=("seed_reviewed",), writes=("generated",), config=("generate", "seed"),
    templates=("system", "new_instruction", "degrade_response"), needs="backend", run=run_generate,
    parse=(("generator, new instructions", "instruction_parse_failures", "instruction_replies"),
           ("generator, degraded answers", "degrade_parse_failures", "degrade_replies")),
    funnel=(Column("low", "score <= threshold: rewrite branch", lambda st: st["low_seeds"]),
            Column("high", "score > threshold: degrade branch", lambda st: st["high_seeds"]),
            Column("new instr.", "new instructions parsed from the model's replies", lambda st: st["new_instructions"]),
            Column("new resp.", "responses written to new instructions", lambda st: st["new_responses"]),
            Column("degraded", "degraded responses parsed", lambda st: st["degraded_responses"]),
            Column("parse fail", "judge replies + generation replies that did not parse",
                   lambda st: st["instruction_parse_failures"] + st["degrade_parse_failures"], total=True),
            Column("empty", "Empty for lack of quality", lambda st: st.get("empty", {}), total=True, style="line")))
