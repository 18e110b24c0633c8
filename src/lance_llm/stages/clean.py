"""Step 4 of a LANCE iteration: clean the generated candidates before they are reviewed.

Reads the seed samples (by id), the generate stage's candidates and, optionally, the texts already
in the data (seed and earlier iterations) and the word n-grams of evaluation prompts. A candidate
is a `Sample` with origin "new" (a new instruction written from a low-scored seed, with one of its
responses; several candidates share one instruction) or "degraded" (a high-scored seed's own
instruction with a degraded response). Returns the surviving candidates in input order, one record
per dropped candidate with its reason, and counts. Writes nothing; the only disk access is reading
the decontamination files. CLEAN, at the end, is the step as the loop runs it.

    grams = load_decontamination(cfg.clean.decontaminate_paths, cfg.clean.decontaminate_field,
                                 cfg.clean.decontaminate_ngram)
    result = clean(seeds_by_id, candidates, cfg.clean, seen=earlier_texts, contamination=grams)

Each dropped candidate gets exactly one reason: the first of these that applies.

    contaminated                 instruction or response shares a word n-gram with an eval prompt
    exact_duplicate              [cfg.exact_dedup] a new instruction equal (after `normalize`) to a
                                 text in `seen` or to the instruction of a kept candidate of another
                                 parent; or a response equal to a text in `seen` or to the response
                                 of a candidate kept earlier in this call
    instruction_length           new instruction outside [instruction_min_words, instruction_max_words]
    instruction_similar_to_seed  new instruction ROUGE-L-similar to the parent's instruction
    instruction_near_duplicate   new instruction similar to one kept before it for the same parent
    response_length              response outside [response_min_words, response_max_words]
    response_similar_to_seed     response similar to the parent's original response
    response_near_duplicate      response similar to one kept before it for the same new instruction
                                 (new) or among the parent's degraded responses (degraded)

Candidates are visited once, in input order, so "before" and "earlier" mean earlier in the input.
As in the reference code, new instructions are filtered on their own before their responses are
looked at: an instruction counts as kept for the near-duplicate rule once it passes the
instruction rules (including contamination and the `seen` check), whether or not any of its
responses survive. Instructions are grouped by `normalize`, so variants that differ only in case
or whitespace are one instruction.

The "similar" tests are ROUGE-L (rouge-score) as in the reference code; the near-duplicate rules
find their candidates through an exact index (`NearDuplicates`), so 100k instructions do not cost
100k^2 / 2 ROUGE-L computations and the decisions stay those of the all-pairs scan.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer, tokenizers

from ..config import CleanConfig
from ..records import RecordError, Sample, iter_jsonl
from ..stage import Column, Stage, StageContext

REASONS: tuple[str, ...] = (
    "contaminated",
    "exact_duplicate",
    "instruction_length",
    "instruction_similar_to_seed",
    "instruction_near_duplicate",
    "response_length",
    "response_similar_to_seed",
    "response_near_duplicate",
)

# One scorer for the process: building it is cheap, but it is called O(n^2) times per parent.
# Its default tokenizer keeps only ASCII letters and digits (as in the reference code), so text in
# other scripts scores 0 and is never "similar".
_SCORER = rouge_scorer.RougeScorer(["rougeL"])
# The scorer's own default tokenizer, for the candidate search below (same tokens, same LCS bound).
_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)
_WORD = re.compile(r"\w+")


@dataclass
class CleanResult:
    kept: list[Sample]  # surviving candidates, in input order
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {id, parent_id, origin, reason}
    counts: dict[str, int] = field(default_factory=dict)  # reason -> dropped; plus "input", "kept"


def normalize(text: str) -> str:
    """The key for exact deduplication: casefolded, whitespace collapsed and stripped."""
    return " ".join(text.casefold().split())


def rouge_similar(a: str, b: str, threshold: float) -> bool:
    """True when ROUGE-L recall, precision or F1 between `a` and `b` exceeds `threshold`.

    Taking the maximum makes the test symmetric and catches a short text contained in a long one
    (recall or precision near 1 while F1 is low).
    """
    s = _SCORER.score(a, b)["rougeL"]
    return max(s.precision, s.recall, s.fmeasure) > threshold


@functools.lru_cache(maxsize=1 << 18)
def _elements(text: str) -> tuple[tuple[str, int], ...]:
    """ROUGE tokens as a set: the k-th occurrence of a word is the element (word, k).

    The size of the intersection of two such sets is the multiset overlap of the token lists,
    an upper bound on their longest common subsequence. Cached: a text is looked up several times.
    """
    seen: Counter[str] = Counter()
    out = []
    for tok in _TOKENIZER.tokenize(text):
        out.append((tok, seen[tok]))
        seen[tok] += 1
    return tuple(out)


def _min_overlap(length: int, threshold: float) -> int:
    """Fewest shared elements a pair whose shorter text has `length` tokens needs to be similar.

    `rouge_similar` is true only if LCS / min(len a, len b) > threshold (max(P, R) is LCS over the
    shorter length, and F1 never exceeds it); LCS <= overlap. Rounded down a hair, so float
    rounding can only add candidates, never lose one.
    """
    return max(1, math.ceil(threshold * length - 1e-6))


def similar_to(text: str, other: str, threshold: float) -> bool:
    """`rouge_similar`, skipping the ROUGE-L computation when the overlap bound already says no."""
    a, b = _elements(text), _elements(other)
    if len(set(a).intersection(b)) < _min_overlap(min(len(a), len(b)), threshold):
        return False
    return rouge_similar(text, other, threshold)


def element_ranks(texts: Iterable[str]) -> dict[tuple[str, int], int]:
    """Each ROUGE element of `texts` -> its rank by how many texts hold it, rarest first."""
    frequency: Counter = Counter()
    for text in texts:
        frequency.update(_elements(text))
    return {e: i for i, e in enumerate(sorted(frequency, key=lambda e: (frequency[e], e)))}


class NearDuplicates:
    """Texts kept so far, and an exact search for kept texts ROUGE-L-similar to a new one.

    `similar(text)` answers exactly `any(rouge_similar(text, k, threshold) for k in kept)`, but
    runs ROUGE-L only on candidates found by prefix filtering (a set-similarity join technique,
    as in PPJoin): order each text's elements by a fixed global rank, rarest first. A pair needs
    an overlap of at least a = _min_overlap(min length); by pigeonhole the first L - a + 1
    elements of each text must contain a shared element, and the overlap is at most 1 + the
    elements left after the first shared one, in either text. A new text q finds
    - kept texts at least as long through q's own prefix (a = a(len q)), meeting theirs (read
      from an index of every element with its rank);
    - shorter kept texts through their own prefixes (indexed when they were added).
    No similar pair can be missed, unlike MinHash LSH (which also estimates Jaccard similarity,
    while this rule flags a short text contained in a long one). Small sets are scanned linearly.
    """

    LINEAR_MAX = 24  # below this many kept texts a plain scan is as fast as the index

    def __init__(self, threshold: float, rank: dict[tuple[str, int], int] | None = None) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        # element -> integer rank (rare elements first, see `element_ranks`); an element it lacks
        # gets the next free rank here. Any fixed order keeps the search exact; rare-first is fast.
        self.rank = rank if rank is not None else {}
        self.extra: dict[tuple[str, int], int] = {}
        self.texts: list[str] = []
        self.sizes: list[int] = []
        self.elements: list[frozenset[int]] = []
        self.full: dict[int, list[tuple[int, int]]] = defaultdict(list)  # element -> (text, its rank in it)
        self.prefix: dict[int, list[tuple[int, int]]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.texts)

    def _ranked(self, text: str) -> list[int]:
        out = []
        for e in _elements(text):
            r = self.rank.get(e)
            if r is None:
                r = self.extra.setdefault(e, len(self.rank) + len(self.extra))
            out.append(r)
        out.sort()
        return out

    def add(self, text: str) -> None:
        self.texts.append(text)
        elems = self._ranked(text)
        k = len(self.texts) - 1
        self.sizes.append(len(elems))
        self.elements.append(frozenset(elems))
        for pos, e in enumerate(elems):
            self.full[e].append((k, pos))
        for pos, e in enumerate(elems[: len(elems) - _min_overlap(len(elems), self.threshold) + 1]):
            self.prefix[e].append((k, pos))

    def similar(self, text: str) -> bool:
        if len(self.texts) <= self.LINEAR_MAX:
            return any(similar_to(text, k, self.threshold) for k in self.texts)
        elems = self._ranked(text)
        n = len(elems)
        if n == 0:
            return False  # no ROUGE token: every score is 0, never above a threshold >= 0
        t, sizes = self.threshold, self.sizes
        found: set[int] = set()
        need = _min_overlap(n, t)
        for i, e in enumerate(elems[: n - need + 1]):
            left = n - i  # q's elements from here on, this one included
            found.update(k for k, j in self.full.get(e, ()) if sizes[k] >= n and j <= sizes[k] - need
                         and min(left, sizes[k] - j) >= need)
        alpha = [_min_overlap(m, t) for m in range(n + 1)]  # by the shorter text's length
        for i, e in enumerate(elems):
            left = n - i
            found.update(k for k, j in self.prefix.get(e, ()) if sizes[k] < n
                         and min(left, sizes[k] - j) >= alpha[sizes[k]])
        mine = set(elems)
        for k in sorted(found):  # in the order kept, as the plain scan would meet them
            # the overlap bound is cheap; ROUGE-L (a Python LCS table) only when it can pass
            if len(mine.intersection(self.elements[k])) >= alpha[min(n, sizes[k])] and \
                    rouge_similar(text, self.texts[k], t):
                return True
        return False


def _word_count(text: str) -> int:
    return len(text.split())


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased `\\w+` token n-grams; a text shorter than n words has none."""
    tokens = _WORD.findall(text.lower())
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def load_decontamination(paths: list[str], field: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of the `field` text of every record in the JSONL files at `paths`.

    A record without a string `field` is an error naming file:line: skipping it would silently
    leave that eval prompt free to leak into training data. Prompts shorter than n words yield no
    n-gram and so cannot be matched (the usual trade-off of n-gram decontamination).
    """
    if n < 1:
        raise ValueError(f"decontamination n-gram size must be >= 1, got {n}")
    grams: set[tuple[str, ...]] = set()
    for path in paths:
        for lineno, obj in iter_jsonl(path):
            if field not in obj:
                raise RecordError(f"{path}:{lineno}: missing field {field!r}")
            value = obj[field]
            if not isinstance(value, str):
                raise RecordError(
                    f"{path}:{lineno}: field {field!r} must be a string, got {type(value).__name__}"
                )
            grams |= _word_ngrams(value, n)
    return grams


def _check_candidates(seeds: dict[str, Sample], candidates: list[Sample]) -> None:
    # Validate everything up front: a bad candidate means the generate stage and the seed file
    # disagree, and dropping it would hide that.
    ids: set[str] = set()
    for c in candidates:
        if c.origin not in ("new", "degraded"):
            raise ValueError(f"candidate {c.id!r}: origin must be 'new' or 'degraded', got {c.origin!r}")
        if c.parent_id is None or c.parent_id not in seeds:
            raise ValueError(f"candidate {c.id!r}: parent seed {c.parent_id!r} is not among the seeds")
        if c.id in ids:
            raise ValueError(f"candidate {c.id!r} appears more than once")
        ids.add(c.id)


class _Cleaner:
    """The state of one `clean` call: what has been kept so far, per parent and overall."""

    def __init__(
        self,
        seeds: dict[str, Sample],
        candidates: list[Sample],
        cfg: CleanConfig,
        seen: Iterable[str],
        contamination: set[tuple[str, ...]],
    ) -> None:
        self.seeds = seeds
        self.cfg = cfg
        self.seen = {normalize(t) for t in seen}
        self.contamination = contamination
        self._contaminated_cache: dict[str, bool] = {}
        # Distinct new instructions per parent, only for the reference's one-instruction quirk.
        self.n_instructions: dict[str, set[str]] = defaultdict(set)
        for c in candidates:
            if c.origin == "new":
                self.n_instructions[str(c.parent_id)].add(normalize(c.instruction))
        self.verdicts: dict[tuple[str, str], str | None] = {}  # (parent, instruction key) -> reason
        # The near-duplicate search looks rare ROUGE elements up first (see NearDuplicates).
        rank = element_ranks(self._distinct_new(candidates))
        self.kept_instructions: dict[str, NearDuplicates] = defaultdict(
            lambda: NearDuplicates(cfg.rouge_threshold, rank))  # parent -> texts
        self.instruction_owner: dict[str, str] = {}  # instruction key -> parent of its kept candidates
        self.kept_response_keys: set[str] = set()
        # (parent, instruction key) for new responses, (parent, "") for degraded ones -> texts.
        self.kept_responses: dict[tuple[str, str], NearDuplicates] = defaultdict(
            lambda: NearDuplicates(cfg.rouge_threshold))

    @staticmethod
    def _distinct_new(candidates: list[Sample]) -> list[str]:
        first: dict[str, str] = {}
        for c in candidates:
            if c.origin == "new":
                first.setdefault(normalize(c.instruction), c.instruction)
        return list(first.values())

    def contaminated(self, text: str) -> bool:
        if not self.contamination:
            return False
        hit = self._contaminated_cache.get(text)
        if hit is None:
            n = self.cfg.decontaminate_ngram
            hit = not self.contamination.isdisjoint(_word_ngrams(text, n))
            self._contaminated_cache[text] = hit
        return hit

    def instruction_verdict(self, parent: str, key: str, text: str) -> str | None:
        """The instruction-only reason to drop a new instruction, decided at its first appearance."""
        if (parent, key) in self.verdicts:
            return self.verdicts[(parent, key)]
        cfg = self.cfg
        reason: str | None = None
        # The reference code skips these filters when a parent has a single new instruction.
        filtered = cfg.always_filter or len(self.n_instructions[parent]) != 1
        if self.contaminated(text):
            reason = "contaminated"
        elif cfg.exact_dedup and key in self.seen:
            reason = "exact_duplicate"
        elif filtered and not cfg.instruction_min_words <= _word_count(text) <= cfg.instruction_max_words:
            reason = "instruction_length"
        elif filtered and similar_to(text, self.seeds[parent].instruction, cfg.rouge_threshold):
            reason = "instruction_similar_to_seed"
        elif filtered and self.kept_instructions[parent].similar(text):
            reason = "instruction_near_duplicate"
        else:
            self.kept_instructions[parent].add(text)
        self.verdicts[(parent, key)] = reason
        return reason

    def response_rule(self, text: str, seed: Sample, kept: NearDuplicates) -> str | None:
        cfg = self.cfg
        if not cfg.response_min_words <= _word_count(text) <= cfg.response_max_words:
            return "response_length"
        if similar_to(text, seed.response, cfg.rouge_threshold):
            return "response_similar_to_seed"
        if kept.similar(text):
            return "response_near_duplicate"
        return None

    def visit(self, c: Sample) -> str | None:
        """The reason to drop `c`, or None after recording it as kept."""
        parent = str(c.parent_id)
        seed = self.seeds[parent]
        new = c.origin == "new"
        ikey = normalize(c.instruction)
        rkey = normalize(c.response)
        # Decide the instruction first (even if a higher-priority rule drops this candidate) so
        # the order of kept instructions is their order of first appearance.
        verdict = self.instruction_verdict(parent, ikey, c.instruction) if new else None

        if verdict == "contaminated" or self.contaminated(c.response):
            return "contaminated"
        # A degraded candidate carries the seed's instruction, which may itself leak an eval prompt.
        if not new and self.contaminated(c.instruction):
            return "contaminated"
        if self.cfg.exact_dedup:
            if verdict == "exact_duplicate":
                return "exact_duplicate"
            if new and self.instruction_owner.get(ikey, parent) != parent:
                return "exact_duplicate"
            # A repeated (instruction, response) pair has a repeated response, so this covers both.
            if rkey in self.seen or rkey in self.kept_response_keys:
                return "exact_duplicate"
        if verdict is not None:
            return verdict

        group = (parent, ikey if new else "")
        reason = self.response_rule(c.response, seed, self.kept_responses[group])
        if reason is None:
            self.kept_responses[group].add(c.response)
            self.kept_response_keys.add(rkey)
            if new:
                self.instruction_owner.setdefault(ikey, parent)
        return reason


def clean(
    seeds: dict[str, Sample],
    candidates: list[Sample],
    cfg: CleanConfig,
    seen: set[str] | None = None,
    contamination: set[tuple[str, ...]] | None = None,
) -> CleanResult:
    """Filter `candidates` (see the module docstring for the rules and their order).

    `seeds` maps seed id -> seed; every candidate's parent_id must be one of them (ValueError
    otherwise). `seen` holds the instructions and responses already in the data. `contamination`
    is the output of `load_decontamination` with n = cfg.decontaminate_ngram (ValueError if its
    n-grams have another size); None or empty turns decontamination off.
    """
    _check_candidates(seeds, candidates)
    # n-grams of another size would never match: decontamination would be silently off.
    if contamination and any(len(g) != cfg.decontaminate_ngram for g in contamination):
        raise ValueError(
            f"contamination n-grams are not all of size decontaminate_ngram={cfg.decontaminate_ngram}"
        )
    cleaner = _Cleaner(seeds, candidates, cfg, seen or set(), contamination or set())
    result = CleanResult(kept=[])
    counts = dict.fromkeys(REASONS, 0)
    for c in candidates:
        reason = cleaner.visit(c)
        if reason is None:
            result.kept.append(c)
            continue
        counts[reason] += 1
        result.dropped.append({"id": c.id, "parent_id": c.parent_id, "origin": c.origin, "reason": reason})
    counts["input"] = len(candidates)
    counts["kept"] = len(result.kept)
    assert counts["input"] == counts["kept"] + sum(counts[r] for r in REASONS), counts
    result.counts = counts
    return result


def run_clean(ctx: StageContext) -> dict:
    """Step 4 inside the loop: `seen` = the texts of this iteration's seed, Seed_0 and every
    earlier iteration's cleaned candidates."""
    cfg = ctx.cfg.clean
    seed = ctx.read("seed_reviewed")
    seen: set[str] = set()
    for s in [*seed, *ctx.read("seed@0"), *ctx.read("cleaned@earlier")]:
        seen.update((normalize(s.instruction), normalize(s.response)))
    contamination = load_decontamination(cfg.decontaminate_paths, cfg.decontaminate_field, cfg.decontaminate_ngram)
    result = clean({s.id: s for s in seed}, ctx.read("generated"), cfg, seen=seen, contamination=contamination)
    ctx.write("cleaned", result.kept)
    ctx.write("clean_dropped", result.dropped)
    return dict(result.counts)


CLEAN = Stage(
    name="clean", reads=("generated", "seed_reviewed", "seed@0", "cleaned@earlier"),
    writes=("cleaned", "clean_dropped"), config=("clean",), run=run_clean,
    files=lambda cfg: {f"decontam{i}": Path(p) for i, p in enumerate(cfg.clean.decontaminate_paths)},
    funnel=(Column("generated", "candidates entering cleaning", lambda st: st["input"]),
            Column("cleaned", "candidates kept by cleaning", lambda st: st["kept"]),
            Column("clean drops", "Clean drops by rule", style="line",
                   value=lambda st: {k: v for k, v in st.items() if k not in ("input", "kept") and v})))
