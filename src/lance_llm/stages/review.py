"""Review stage: the model scores (instruction, response) pairs against the constitution.

Reads `Sample`s, returns the same samples with a `Review` attached (new objects; inputs untouched).

The modes (config `review.mode`):
- `sampled` (the method's way): `samples` free-text reviews per pair, each parsed for
  `score: <0-10>`; the pair's score is the mean of the replies that parsed. A pair none of whose
  replies parse has no score: a counted parse failure, never a 0.
- `expected`: force the reply to begin with `score: ` and read the probability of each
  continuation "0".."10" (the two-token "10" included) in one forward pass; the score is the
  expected value. It cannot fail to parse and costs a fraction of one sampled review.
- `criteria` [ours]: the additive rubric asked one criterion at a time (prompts/criteria.txt:
  five about the question, shown alone, five about the response), each read as P(Yes) /
  (P(Yes) + P(No)) in one forward pass; the score is their sum, 0-10 like the rubric's. The
  question-only prompts are identical for every response to one instruction, so the backend
  scores them once; the ten prompts share their opening, which HFBackend runs once.
- `combined` [ours]: the mean of the `expected` and `criteria` scores (both 0-10); unscored when
  either is. On SmolLM2 the two err on different corruption kinds (BENCHMARKS.md).
- `likelihood` [ours]: no rubric prompt; the model's own probabilities of the response, in nats:
  fluency = mean log P(token | instruction) (shuffled, garbled or wrong text is improbable),
  relevance = fluency - mean log P(token | a neutral instruction) (how much the instruction
  explains the answer: another task's answer or an off-topic passage gains nothing from it),
  completeness = min(0, log P(end of turn | instruction, response) + 10) (a cut-off answer does
  not end; one that may end is not penalised, so a short echo of the question cannot win on it).
  raw = weighted sum (`review.likelihood`, weights chosen on the judge pairs' dev split), score
  = 10 * sigmoid(raw + center): 0-10, monotone in raw. It does not read the constitution, so its
  0-10 is no rubric count: use `review.scale: rank`. Three scored sequences per pair (the first
  and the third share one forward pass), no generation; far more accurate than the rubric modes
  on small models (BENCHMARKS.md, "Judge"). An empty response is unscored, not scored. It reads
  the response under the system prompt the generator answered with.

    reviewed, stats = review(samples, backend, cfg.review, system_prompt, seed=0)

The stages REVIEW_SEED (step 1) and REVIEW_GENERATED (step 5) at the end run it inside the loop.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..backends.base import Backend, GenerateRequest, Sampling, ScoreRequest
from ..config import Config, LikelihoodConfig, ReviewConfig
from ..prompts import load, render
from ..records import Review, Sample, stable_int
from ..stage import Column, Stage, StageContext

SCORE_TOKENS = tuple(str(i) for i in range(11))
SCORE_PREFIX = "score: "
# `score: 7`, `Score:7.5`, `**Score:** 8/10`, `score = 6`; the last one in the reply wins, because
# small models often restate the rubric ("score: <points>") before giving their own number
_SCORE_RE = re.compile(
    r"\bscore\s*\**\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)(?![\d.]\d)(\s*/\s*\d+(?![\d.]\d))?", re.IGNORECASE
)


def parse_score(text: str) -> float | None:
    """The last `score: N` in `text` if 0 <= N <= 10 (an `N/10` form is read as N), else None."""
    matches = list(_SCORE_RE.finditer(text or ""))
    if not matches:
        return None
    m = matches[-1]
    value = float(m.group(1))
    if m.group(2) and float(m.group(2).split("/")[1]) != 10:  # "8/10" -> 8; "4/5" is another scale
        return None
    if not math.isfinite(value) or not 0 <= value <= 10:
        return None
    return abs(value)  # "-0" is 0


def review_prompt(instruction: str, response: str) -> str:
    return render(load("review"), instruction=instruction, response=response)


CRITERION_ANSWERS = ("Yes", "No")


def criteria() -> list[str]:
    """The rubric's ten criteria as yes/no questions; the first five are about the question."""
    lines = [x.strip() for x in load("criteria").splitlines() if x.strip()]
    if len(lines) != 10:
        raise ValueError(f"prompts/criteria.txt must hold 10 criteria, one per line, not {len(lines)}")
    return lines


def criteria_prompts(instruction: str, response: str) -> list[str]:
    qs = criteria()
    return ([render(load("criterion_question"), instruction=instruction, criterion=c) for c in qs[:5]]
            + [render(load("criterion_response"), instruction=instruction, response=response, criterion=c)
               for c in qs[5:]])


def yes_probability(logprobs: Sequence[float]) -> float:
    """P(Yes) / (P(Yes) + P(No)); NaN when neither answer has any probability."""
    yes, no = logprobs
    top = max(yes, no)
    if not math.isfinite(top):
        return math.nan
    return 1 / (1 + math.exp(no - yes)) if no - yes < 700 else 0.0


def expected_score(logprobs: Sequence[float]) -> float:
    """Expected score under the model's distribution restricted to the 11 score tokens."""
    top = max(logprobs)
    if not math.isfinite(top):
        return math.nan  # no probability on any score token: the caller counts a failure
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return sum(i * w for i, w in enumerate(weights)) / total


def rank_scale(samples: Sequence[Sample], reference: Sequence[float]) -> list[Sample]:
    """Put scores on the rank scale: 10 x the mid-rank percentile of the judge's raw score within
    `reference` (raw scores of this iteration's seed). The raw score is kept in `raw_score`;
    unscored samples stay unscored. Deterministic and idempotent (it always starts from raw)."""
    ref = sorted(reference)
    if not ref:
        return list(samples)
    out = []
    for s in samples:
        r = s.review
        raw = None if r is None else (r.raw_score if r.raw_score is not None else r.score)
        if r is None or raw is None:
            out.append(s)
            continue
        below = bisect.bisect_left(ref, raw)
        equal = bisect.bisect_right(ref, raw) - below
        scaled = round(10 * (below + 0.5 * equal) / len(ref), 4)
        out.append(replace(s, review=replace(r, score=scaled, raw_score=raw)))
    return out


def raw_scores(samples: Sequence[Sample]) -> list[float]:
    """The judge's own scores (before any rank scaling) of the scored samples."""
    out = []
    for s in samples:
        if s.review is not None and s.review.score is not None:
            out.append(s.review.raw_score if s.review.raw_score is not None else s.review.score)
    return out


@dataclass
class ReviewStats:
    pairs: int = 0
    scored: int = 0
    unscored: int = 0  # pairs with no parsable reply (excluded from selection)
    replies: int = 0
    reply_parse_failures: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def review(
    samples: Sequence[Sample], backend: Backend, cfg: ReviewConfig, system: str, seed: int
) -> tuple[list[Sample], ReviewStats]:
    stats = ReviewStats(pairs=len(samples))
    if not samples:
        return [], stats
    reviews: list[Review]
    if cfg.mode == "expected":
        reviews = _expected(samples, backend, system)
    elif cfg.mode == "criteria":
        reviews = _criteria(samples, backend, system)
    elif cfg.mode == "likelihood":
        reviews = _likelihood(samples, backend, cfg.likelihood, system)
    elif cfg.mode == "checks":
        reviews = _checks(samples, backend, cfg, system, seed)
    elif cfg.mode == "certainty":
        reviews = _certainty(samples, backend, system)
    elif cfg.mode == "combined":
        reviews = []
        for e, c in zip(_expected(samples, backend, system), _criteria(samples, backend, system), strict=True):
            ok = e.score is not None and c.score is not None
            reviews.append(Review(mode="combined", score=round((e.score + c.score) / 2, 4) if ok else None,
                                  samples=[e.score, c.score], parse_failures=0 if ok else 1))
    elif cfg.mode == "sampled":
        sp = cfg.sampling
        reqs = [
            GenerateRequest(p, Sampling(sp.temperature, sp.top_p, sp.max_new_tokens, cfg.samples,
                                        stable_int(seed, "review", s.id)))
            for p, s in zip(_review_chats(samples, system), samples, strict=True)
        ]
        reviews = []
        for replies in backend.generate(reqs):
            parsed = [parse_score(r) for r in replies]
            ok = [v for v in parsed if v is not None]
            reviews.append(Review(mode="sampled", score=round(sum(ok) / len(ok), 4) if ok else None,
                                  samples=parsed, replies=list(replies),
                                  parse_failures=len(parsed) - len(ok)))
    else:
        raise ValueError(f"unknown review.mode {cfg.mode!r}")
    result = []
    for s, r in zip(samples, reviews, strict=True):
        r.judge = judge_id(backend, cfg)
        stats.replies += len(r.samples)
        stats.reply_parse_failures += r.parse_failures
        if r.score is None:
            stats.unscored += 1
        else:
            stats.scored += 1
        result.append(replace(s, review=r))
    return result, stats


def judge_id(backend: Backend, cfg: ReviewConfig) -> str:
    """Who judges: the answering model (weights + engine numerics) and the review mode."""
    return f"{backend.fingerprint}/{cfg.mode}"


def _review_chats(samples: Sequence[Sample], system: str) -> list[tuple]:
    """The rubric review prompt of each sample, as chat messages (the sampled and expected modes)."""
    return [(("system", system), ("user", review_prompt(s.instruction, s.response))) for s in samples]


def _expected(samples: Sequence[Sample], backend: Backend, system: str) -> list[Review]:
    out = backend.score([ScoreRequest(p, SCORE_PREFIX, SCORE_TOKENS) for p in _review_chats(samples, system)])
    reviews = []
    for lp in out:
        value = expected_score(lp)
        if math.isfinite(value):
            reviews.append(Review(mode="expected", score=round(value, 4), samples=[round(value, 4)]))
        else:
            reviews.append(Review(mode="expected", score=None, samples=[None], parse_failures=1))
    return reviews


def _criteria(samples: Sequence[Sample], backend: Backend, system: str) -> list[Review]:
    per = [criteria_prompts(s.instruction, s.response) for s in samples]
    flat = [ScoreRequest((("system", system), ("user", u)), "", CRITERION_ANSWERS) for us in per for u in us]
    out = backend.score(flat)
    reviews = []
    for k in range(len(samples)):
        probs = [yes_probability(lp) for lp in out[10 * k : 10 * k + 10]]
        if all(math.isfinite(p) for p in probs):
            reviews.append(Review(mode="criteria", score=round(sum(probs), 4), samples=[round(p, 4) for p in probs]))
        else:
            reviews.append(Review(mode="criteria", score=None, samples=[None], parse_failures=1))
    return reviews


def likelihood_requests(instruction: str, response: str, system: str) -> list[ScoreRequest]:
    """The three numbers the likelihood judge reads: the response's mean log-probability after its
    instruction and after a neutral one, and the log-probability that the reply ends after it.
    The chat carries the system prompt the loop's generator answers with: the judge reads the
    answer as it was written."""
    asked = (("system", system), ("user", instruction))
    return [ScoreRequest(asked, "", (response,), per_token=True),
            ScoreRequest((("system", system), ("user", load("neutral_instruction"))), "", (response,),
                         per_token=True),
            ScoreRequest(asked, response, ("",), end_of_turn=True)]


def likelihood_score(parts: Sequence[float], cfg: LikelihoodConfig) -> float:
    """0-10 from (fluency, relevance, log P(end)), monotone in their weighted sum."""
    fluency, relevance, end = parts
    raw = cfg.fluency * fluency + cfg.relevance * relevance + cfg.completeness * min(0.0, end + cfg.end_floor)
    return squash(raw + cfg.center)


def squash(x: float) -> float:
    """10 x sigmoid(x): 0-10, monotone in x (exp would overflow below -700; the score is 0 there)."""
    return 10 / (1 + math.exp(-x)) if x > -700 else 0.0


def _likelihood(samples: Sequence[Sample], backend: Backend, cfg: LikelihoodConfig, system: str) -> list[Review]:
    # an empty response has no tokens to read: it stays unscored (a counted failure, not a 0)
    scorable = [k for k, s in enumerate(samples) if s.response.strip()]
    reqs = [r for k in scorable for r in likelihood_requests(samples[k].instruction, samples[k].response, system)]
    out = backend.score(reqs)
    read = {k: [lp[0] for lp in out[3 * i : 3 * i + 3]] for i, k in enumerate(scorable)}
    reviews = []
    for k in range(len(samples)):
        asked, neutral, end = read.get(k, (math.nan,) * 3)
        parts = [asked, asked - neutral, end]
        if all(math.isfinite(x) for x in parts):
            reviews.append(Review(mode="likelihood", score=round(likelihood_score(parts, cfg), 4),
                                  samples=[round(x, 4) for x in parts]))
        else:  # a backend that could not score some part (a server's top-k ran out): not a 0
            reviews.append(Review(mode="likelihood", score=None, samples=[None], parse_failures=1))
    return reviews


CERTAINTY_CENTER = 12.0  # nats; only shifts the 0-10 squashing (ranks never change with it)


def _certainty(samples: Sequence[Sample], backend: Backend, system: str) -> list[Review]:
    """Self-certainty (arXiv 2502.18581): how far from uniform the model's next-token distribution
    is, on average, over the response's tokens, read under the generator's system prompt and the
    instruction; score = 10 x sigmoid(certainty - CERTAINTY_CENTER). Review.samples: (certainty,)."""
    scorable = [k for k, s in enumerate(samples) if s.response.strip()]
    out = backend.score([ScoreRequest((("system", system), ("user", samples[k].instruction)), "",
                                      (samples[k].response,), certainty=True) for k in scorable])
    raw = {k: lp[0] for k, lp in zip(scorable, out, strict=True)}
    reviews = []
    for k in range(len(samples)):
        c = raw.get(k, math.nan)
        if math.isfinite(c):
            reviews.append(Review(mode="certainty", score=round(squash(c - CERTAINTY_CENTER), 4),
                                  samples=[round(c, 4)]))
        else:
            reviews.append(Review(mode="certainty", score=None, samples=[None], parse_failures=1))
    return reviews


CHECK_PREFIX = "```python\ndef check(response: str) -> bool:\n"


def _checks(samples: Sequence[Sample], backend: Backend, cfg: ReviewConfig, system: str, seed: int) -> list[Review]:
    """Per distinct instruction, the model writes `samples` check functions with their own tests
    (prompts/check_writer.txt, its reply prefilled with the `def` line); a check is kept when it
    runs and its own asserts hold (AutoIF's cross-validation, arXiv 2406.13542), and each kept
    check runs on every answer (lance_llm.sandbox). score = 9 x the share of kept checks an answer
    passes + 0.1 x the fallback judge's score (ties broken, 0-10 kept); an instruction without a
    kept check is scored by the fallback judge alone. Review.samples: (share or None, checks kept,
    fallback score); Review.replies: the kept checks' code."""
    from .. import sandbox

    cc = cfg.checks
    fallback = {s.id: s.review for s in review(samples, backend, replace(cfg, mode=cc.fallback), system, seed)[0]}
    instructions = list(dict.fromkeys(s.instruction for s in samples))
    sp = cc.sampling
    reqs = [GenerateRequest((("user", render(load("check_writer"), instruction=ins)),),
                            # seeded by the instruction alone: a seed answer (step 1) and the answers
                            # degraded from it (step 5) meet the same checks, from the cache
                            Sampling(sp.temperature, sp.top_p, sp.max_new_tokens, cc.samples,
                                     stable_int("checks", ins)), prefix=CHECK_PREFIX)
            for ins in instructions]
    codes = {ins: [c for c in (sandbox.check_code(CHECK_PREFIX, r) for r in replies) if c]
             for ins, replies in zip(instructions, backend.generate(reqs), strict=True)}
    flat = [c for ins in instructions for c in codes[ins]]
    start = dict(zip(instructions, itertools.accumulate([0, *(len(codes[i]) for i in instructions)]), strict=False))
    cases = [(start[s.instruction] + k, s.response) for s in samples for k in range(len(codes[s.instruction]))]
    valid, results = sandbox.run_checks(flat, cases)
    outcome = iter(results)
    reviews = []
    for s in samples:
        own = range(start[s.instruction], start[s.instruction] + len(codes[s.instruction]))
        passed = [next(outcome) for _ in own]
        kept = [p is True for p, i in zip(passed, own, strict=True) if valid[i]]
        fb = fallback[s.id]
        if fb is None or fb.score is None:
            reviews.append(Review(mode="checks", score=None, samples=[None], parse_failures=1))
            continue
        share = sum(kept) / len(kept) if kept else None
        score = fb.score if share is None else 9 * share + 0.1 * fb.score
        reviews.append(Review(mode="checks", score=round(score, 4), samples=[share, len(kept), fb.score],
                              replies=[flat[i] for i in own if valid[i]]))
    return reviews


# -- the two review stages (the method's steps 1 and 5) -------------------------------------
#: the templates each mode renders (likelihood renders no rubric and no system prompt)
MODE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sampled": ("system", "review"), "expected": ("system", "review"),
    "criteria": ("system", "criteria", "criterion_question", "criterion_response"),
    "combined": ("system", "review", "criteria", "criterion_question", "criterion_response"),
    "likelihood": ("system", "neutral_instruction"),
    "certainty": ("system",),
}


def review_keys(cfg: Config) -> tuple[str, ...]:
    """The review settings the current mode reads (request seeds only matter when sampling)."""
    keys = ("review.mode", "review.scale", "review.rejudge")
    if cfg.review.mode == "sampled":
        keys += ("review.samples", "review.sampling", "seed")
    if cfg.review.mode == "likelihood":
        keys += ("review.likelihood",)
    if cfg.review.mode == "checks":
        keys += ("review.checks", "review.likelihood" if cfg.review.checks.fallback == "likelihood" else "")
    return tuple(k for k in keys if k)


def _templates(cfg: Config) -> tuple[str, ...]:
    if cfg.review.mode == "checks":  # its own, and its fallback judge's
        return ("check_writer", *MODE_TEMPLATES[cfg.review.checks.fallback])
    return MODE_TEMPLATES[cfg.review.mode]


def rank_reference(seed: Sequence[Sample], seed0: Sequence[Sample]) -> list[float]:
    """The raw scores the rank scale reads: Seed_0's as this iteration's judge scored them (the
    human seed is the fixed yardstick, so how many items clear a threshold says something about
    their quality from iteration 2 on; in iteration 1 the seed is Seed_0)."""
    ids = {s.id for s in seed0}
    return raw_scores([s for s in seed if s.id in ids]) or raw_scores(seed)


def run_review_seed(ctx: StageContext) -> dict:
    """Step 1: review the seed items that have no score yet, and [ours, review.rejudge=changed]
    those another judge scored (an earlier model: raw scores of two models do not compare); on the
    rank scale, rank them all against Seed_0."""
    cfg, seed = ctx.cfg, ctx.read("seed_in")
    judge = judge_id(ctx.backend, cfg.review)
    todo = [s for s in seed if s.review is None or (cfg.review.rejudge == "changed" and s.review.judge != judge)]
    done, st = review(todo, ctx.backend, cfg.review, ctx.system, stable_int(cfg.seed, ctx.t))
    by_id = {s.id: s for s in done}
    seed = [by_id.get(s.id, s) for s in seed]
    if cfg.review.scale == "rank":
        seed = rank_scale(seed, rank_reference(seed, ctx.read("seed@0")))
    ctx.write("seed_reviewed", seed)
    rejudged = sum(1 for s in todo if s.review is not None)
    return {**st.to_dict(), "seed": len(seed), "already_reviewed": len(seed) - len(todo), "rejudged": rejudged}


def run_review_generated(ctx: StageContext) -> dict:
    """Step 5: review the cleaned candidates, on the same scale as the seed they are compared with."""
    cfg = ctx.cfg
    done, st = review(ctx.read("cleaned"), ctx.backend, cfg.review, ctx.system, stable_int(cfg.seed, ctx.t, "gen"))
    if cfg.review.scale == "rank":
        done = rank_scale(done, rank_reference(ctx.read("seed_reviewed"), ctx.read("seed@0")))
    ctx.write("reviewed", done)
    return st.to_dict()


_PARSE_FAIL = "judge replies + generation replies that did not parse"
REVIEW_SEED = Stage(
    name="review_seed", reads=("seed_in", "seed@0"), writes=("seed_reviewed",), config=review_keys,
    templates=_templates,
    needs="backend", run=run_review_seed, parse=(("judge, seed review", "reply_parse_failures", "replies"),),
    funnel=(Column("seeds", "seed items", lambda st: st["seed"]),
            Column("unscored seeds", "seed items whose review did not parse (no score, excluded)",
                   lambda st: st["unscored"]),
            Column("parse fail", _PARSE_FAIL, lambda st: st["reply_parse_failures"], total=True)))
REVIEW_GENERATED = Stage(
    name="review_generated", reads=("cleaned", "seed_reviewed", "seed@0"), writes=("reviewed",), config=review_keys,
    templates=_templates, needs="backend", run=run_review_generated,
    parse=(("judge, generated review", "reply_parse_failures", "replies"),),
    funnel=(Column("reviewed", "cleaned candidates with a score", lambda st: st["scored"]),
            Column("parse fail", _PARSE_FAIL, lambda st: st["reply_parse_failures"], total=True)))
