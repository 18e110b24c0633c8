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
    instr_reqs = [
        GenerateRequest(
            (("system", system), ("user", render(load("new_instruction"), instruction=s.instruction,
                                                 response=s.response))),
            _sampling(cfg.sampling, cfg.n_instructions, stable_int(seed, iteration, "instruction", s.id)),
        )
        for s in low
    ]
    degrade_reqs = [
        GenerateRequest(
            (("system", system), ("user", render(load("degrade_response"), instruction=s.instruction,
                                                 response=s.response))),
            _sampling(cfg.sampling, cfg.n_degraded, stable_int(seed, iteration, "degrade", s.id)),
        )
        for s in high
    ]
    replies = backend.generate(instr_reqs + degrade_reqs)
    instr_replies, degrade_replies = replies[: len(low)], replies[len(low) :]

    # low branch: parse new instructions, then answer each of them
    new_instructions: list[tuple[Sample, int, str]] = []  # (parent, index, instruction)
    for parent, outs in zip(low, instr_replies, strict=True):
        for k, text in enumerate(outs):
            stats.instruction_replies += 1
            parsed = parse_final_answer(text)
            if parsed is None:
                stats.instruction_parse_failures += 1
            else:
                new_instructions.append((parent, k, parsed))
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
        for k, text in enumerate(outs):
            stats.degrade_replies += 1
            parsed = parse_final_answer(text)
            if parsed is None:
                stats.degrade_parse_failures += 1
                continue
            candidates.append(Sample(
                id=make_id(iteration, "degraded", parent.id, k), instruction=parent.instruction,
                response=parsed, origin="degraded", parent_id=parent.id, iteration=iteration,
                stage="generate", model=fp,
            ))
            stats.degraded_responses += 1
    return candidates, stats
