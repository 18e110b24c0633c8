"""Labelled judge pairs: a gold answer against a corrupted version of itself.

Built from the 175 Self-Instruct seed tasks (read at run time from
`../shared/data/self_instruct/seed_tasks.jsonl`, or any file in that format; the shipped
`data/seed.jsonl` is the fallback). For each task, the gold answer (its first instance's output)
is paired with up to five corruptions, each deterministic (seeded by the task id):

- truncated:    the first 40% of the words, cut mid-answer (answers of >= 8 words)
- other_task:   the gold answer of another task from the same split
- shuffled:     the sentences in a new order (one-sentence answers: the words; >= 6 words)
- contradicted: numbers changed (list markers kept), else the first yes/no, true/false,
                more/less, is/is not ... flipped
- irrelevant:   an off-topic passage from a fixed bank (answers no task)

A kind that cannot change a given answer (a one-word answer cannot be truncated) is left out for
that task, and counted in `build_pairs`'s summary. The label is always "gold wins".
Tasks are split into `dev` (choosing judge defaults) and `test` (reported figures) by a hash of
the task id, so the two never share a task.

    python -m lance_llm.judge.pairs [SEED_FILE] --split test   # print a summary
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..records import RecordError, iter_jsonl

KINDS = ("truncated", "other_task", "shuffled", "contradicted", "irrelevant")
SPLITS = ("dev", "test")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SHIPPED_SEED = PACKAGE_DIR / "data" / "seed.jsonl"
# `../shared/data/...` beside the repository root (or beside any folder above it, for a git
# worktree one level deeper), or beside the cwd
SELF_INSTRUCT_REL = Path("shared") / "data" / "self_instruct" / "seed_tasks.jsonl"

# Off-topic passages: fluent, harmless, and an answer to no task in either seed set.
IRRELEVANT = (
    "The lighthouse on the northern cliff was painted red and white in 1923, and its lamp could be "
    "seen from twenty miles out at sea on a clear night.",
    "Tomatoes grow best in full sun with regular watering. Pinch off the side shoots so the plant "
    "puts its energy into the fruit.",
    "Our office will be closed on Friday for the annual staff picnic. Please submit your timesheets "
    "by Thursday afternoon.",
    "The giant panda spends up to fourteen hours a day eating bamboo, and a newborn cub weighs about "
    "as much as a stick of butter.",
    "I went to the market this morning and bought apples, a loaf of bread and some fresh flowers for "
    "the kitchen table.",
    "Jazz emerged in New Orleans in the early twentieth century, blending blues, ragtime and brass "
    "band traditions.",
    "To reset your router, hold the small button on the back for ten seconds until the lights blink, "
    "then wait two minutes.",
    "The train to the coast leaves every hour from platform four, and the journey takes a little "
    "under ninety minutes.",
)

# Word swaps for contradicted facts, applied in one pass (so a swap is never undone).
_SWAPS = {
    "yes": "no", "no": "yes", "true": "false", "false": "true", "correct": "incorrect",
    "incorrect": "correct", "positive": "negative", "negative": "positive", "always": "never",
    "never": "always", "more": "less", "less": "more", "increase": "decrease",
    "decrease": "increase", "higher": "lower", "lower": "higher", "larger": "smaller",
    "smaller": "larger", "before": "after", "after": "before", "best": "worst", "worst": "best",
    "good": "bad", "bad": "good", "agree": "disagree", "disagree": "agree", "can": "cannot",
    "cannot": "can", "is": "is not", "are": "are not", "will": "will not", "does": "does not",
    "should": "should not", "first": "last", "last": "first", "left": "right", "right": "left",
}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(_SWAPS, key=len, reverse=True)) + r")\b(?! not\b)", re.I)
_NUMBER_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]\d)")
_LIST_MARKER_RE = re.compile(r"\d{1,2}[.)]\s")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class JudgePair:
    """One labelled pair: the judge is right when `gold` scores strictly higher than `corrupted`."""

    id: str
    task_id: str
    split: str
    kind: str
    instruction: str
    gold: str
    corrupted: str
    label: str = "gold"  # which side should win; always the gold answer

    def to_dict(self) -> dict:
        return asdict(self)


def split_of(task_id: str) -> str:
    """`dev` for about a third of the tasks, `test` for the rest, by a hash of the task id."""
    h = int.from_bytes(hashlib.sha256(f"judge-split\x1f{task_id}".encode()).digest()[:4], "big")
    return "dev" if h % 3 == 0 else "test"


def _rng(*parts: object) -> random.Random:
    return random.Random(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest())


def truncate(text: str) -> str | None:
    words = list(re.finditer(r"\S+", text))
    if len(words) < 8:
        return None
    return text[: words[max(2, round(len(words) * 0.4)) - 1].end()]  # layout kept, cut mid-answer


def shuffle(text: str, rng: random.Random) -> str | None:
    parts = [p.strip() for p in _SENTENCE_RE.split(text.strip()) if p.strip()]
    sep = " "
    if len(parts) < 3:
        parts = text.split()  # too few sentences: shuffle the words instead
        if len(parts) < 6:
            return None
    elif "\n" in text:
        sep = "\n"
    for _ in range(20):  # a permutation that differs from the original
        order = parts[:]
        rng.shuffle(order)
        if order != parts:
            return sep.join(order)
    return None


def contradict(text: str, rng: random.Random) -> str | None:
    """Change every number (a different value of the same form), else flip the first polar word."""
    def bump(m: re.Match[str]) -> str:
        s = m.group(1)
        if _LIST_MARKER_RE.match(text, m.start()) and (m.start() == 0 or text[m.start() - 1] in " \n"):
            return s  # a list number ("2. ...") is not a fact
        if "." in s:
            return f"{float(s) + rng.randint(1, 9) + 0.5:.{len(s.split('.')[1])}f}"
        return str(int(s) + rng.randint(1, 9))

    out = _NUMBER_RE.sub(bump, text)
    if out == text:
        def swap(m: re.Match[str]) -> str:
            word = m.group(1)
            new = _SWAPS[word.lower()]
            return new.capitalize() if word[0].isupper() else new
        out = _SWAP_RE.sub(swap, text, count=1)  # one flipped fact (two flips may cancel out)
    return out if out != text else None


def load_tasks(path: str | Path | None = None) -> tuple[list[tuple[str, str, str]], Path]:
    """(task id, instruction, gold answer) from a Self-Instruct seed-task file or a seed JSONL
    (`id`, `instruction`, `response`). `path=None`: the Self-Instruct file if present beside the
    repository or the cwd, else the shipped seed set."""
    if path is None:
        roots = [*PACKAGE_DIR.parents[2:], *Path.cwd().resolve().parents]
        for cand in (r / SELF_INSTRUCT_REL for r in roots):
            if cand.exists():
                path = cand
                break
        else:
            path = SHIPPED_SEED
    path = Path(path)
    tasks = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        tid = row.get("id") or f"line-{lineno}"
        instruction = row.get("instruction")
        if "instances" in row:
            inst = row["instances"][0] if isinstance(row["instances"], list) and row["instances"] else None
            if not isinstance(inst, dict) or not isinstance(inst.get("output"), str):
                raise RecordError(f"{where}: 'instances' must hold an object with an 'output' string")
            context = inst.get("input") or ""
            gold = inst["output"]
            if isinstance(instruction, str) and context.strip():
                instruction = f"{instruction.strip()}\n\n{context.strip()}"
        else:
            gold = row.get("response")
        if not isinstance(instruction, str) or not instruction.strip():
            raise RecordError(f"{where}: missing field 'instruction'")
        if not isinstance(gold, str) or not gold.strip():
            raise RecordError(f"{where}: missing gold answer ('instances[0].output' or 'response')")
        tasks.append((str(tid), instruction.strip(), gold.strip()))
    if not tasks:
        raise RecordError(f"{path}: no tasks")
    return tasks, path


def build_pairs(tasks: list[tuple[str, str, str]], seed: int = 0) -> tuple[list[JudgePair], dict]:
    """Every applicable corruption of every task; the summary counts pairs and skipped kinds.
    Order: tasks in a seeded hash order (so `pairs[:n]` is a fair subset), kinds in KINDS order."""
    by_split: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for t in tasks:
        by_split[split_of(t[0])].append(t)
    order = sorted(tasks, key=lambda t: hashlib.sha256(f"{seed}\x1f{t[0]}".encode()).hexdigest())
    pairs: list[JudgePair] = []
    skipped: Counter[str] = Counter()
    for tid, instruction, gold in order:
        split = split_of(tid)
        rng = _rng(seed, tid)
        others = [t for t in by_split[split] if t[0] != tid and t[2] != gold]
        cands = {
            "truncated": truncate(gold),
            "other_task": rng.choice(others)[2] if others else None,
            "shuffled": shuffle(gold, rng),
            "contradicted": contradict(gold, rng),
            "irrelevant": rng.choice(IRRELEVANT),
        }
        for kind in KINDS:
            bad = cands[kind]
            if bad is None or bad.strip() == gold:
                skipped[kind] += 1
                continue
            pairs.append(JudgePair(f"{tid}/{kind}", tid, split, kind, instruction, gold, bad))
    summary = {
        "tasks": len(tasks),
        "pairs": dict(Counter(p.split for p in pairs)),
        "per_kind": {s: dict(Counter(p.kind for p in pairs if p.split == s)) for s in SPLITS},
        "skipped": dict(skipped),
    }
    return pairs, summary


def select(pairs: list[JudgePair], split: str | None = None, limit: int | None = None,
           kinds: tuple[str, ...] | None = None) -> list[JudgePair]:
    """The pairs of one split (None: both), of some kinds, the first `limit` of them (whole
    tasks are kept together where possible, so a gold answer is scored once for all its pairs)."""
    out = [p for p in pairs if (split is None or p.split == split) and (kinds is None or p.kind in kinds)]
    return out if limit is None else out[:limit]


def load_pairs(path: str | Path | None = None, seed: int = 0) -> tuple[list[JudgePair], dict]:
    tasks, src = load_tasks(path)
    pairs, summary = build_pairs(tasks, seed)
    summary["source"] = str(src)
    return pairs, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed_file", nargs="?")
    ap.add_argument("--split", choices=SPLITS)
    ap.add_argument("--show", type=int, default=0, help="print the first N pairs as JSON lines")
    args = ap.parse_args(argv)
    pairs, summary = load_pairs(args.seed_file)
    print(json.dumps(summary, indent=2))
    for p in select(pairs, args.split, args.show):
        print(json.dumps(p.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
