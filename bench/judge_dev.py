"""Judge defaults on the dev split (issue 7): per-item scores of each mode, then accuracy of each
mode and of each single criterion, per corruption kind. Chooses nothing by itself; the rule used
(docs/method.md): the most accurate mode on dev among those within the cost goal (<= 1/20 of
the sampled judge), a difference inside the 95% interval going to the cheaper mode.

    flock /tmp/lance-cpu.lock python bench/judge_dev.py smollm2-135m --limit 120 --modes expected,criteria
    flock /tmp/lance-cpu.lock python bench/judge_dev.py qwen2.5-coder-0.5b --limit 0 --modes likelihood
    python bench/judge_dev.py --analyze /tmp/judge/dev-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lance_llm.judge.pairs import KINDS, load_pairs, select
from lance_llm.judge.reliability import _sid


def collect(model: str, limit: int, modes: list[str], out: Path) -> None:
    from lance_llm import models
    from lance_llm.backends import make_backend
    from lance_llm.config import Config, ReviewConfig
    from lance_llm.prompts import load
    from lance_llm.records import Sample
    from lance_llm.stages.review import review

    pairs = select(load_pairs()[0], "dev", limit or None)  # 0: every dev pair
    items: dict[str, Sample] = {}
    for p in pairs:
        for r in (p.gold, p.corrupted):
            items.setdefault(_sid(p.instruction, r), Sample(_sid(p.instruction, r), p.instruction, r))
    m = models.resolve(model)
    backend = make_backend(Config(), m.path, m.fingerprint)
    doc: dict = {"model": model, "pairs": [p.to_dict() for p in pairs], "items": {}, "seconds": {}}
    for mode in modes:
        t0 = time.perf_counter()
        done, _ = review(list(items.values()), backend, ReviewConfig(mode=mode), load("system"), 0)
        doc["seconds"][mode] = time.perf_counter() - t0
        for s in done:  # criteria: the ten P(yes); likelihood: its three parts; other modes: the score
            keep = s.review.samples if mode in ("criteria", "likelihood") else s.review.score
            doc["items"].setdefault(s.id, {})[mode] = keep
    out.write_text(json.dumps(doc))


def analyze(path: Path) -> None:
    d = json.loads(path.read_text())
    pairs, items = d["pairs"], d["items"]
    print(f"{d.get('model', '')}: {len(pairs)} dev pairs; s/pair",
          {m: round(s / len(pairs), 3) for m, s in d["seconds"].items()})

    def acc(fn, name: str) -> None:
        tot: collections.Counter = collections.Counter()
        right: collections.Counter = collections.Counter()
        for p in pairs:
            g, b = (items[_sid(p["instruction"], r)] for r in (p["gold"], p["corrupted"]))
            for k in ("ALL", p["kind"]):
                tot[k] += 1
                right[k] += fn(g) > fn(b)
        print(f"{name:20s}", " ".join(f"{k}={right[k] / tot[k]:.2f}" for k in ("ALL", *KINDS) if tot[k]))

    first = next(iter(items.values()))
    if "expected" in first:
        acc(lambda x: x["expected"], "expected")
    if "criteria" in first:
        acc(lambda x: sum(x["criteria"]), "criteria")
        for k in range(5, 10):
            acc(lambda x, k=k: x["criteria"][k], f"criterion {k + 1}")
        if "expected" in first:
            acc(lambda x: (sum(x["criteria"]) + x["expected"]) / 2, "combined")
    if "likelihood" in first:  # the weights of review.likelihood, over a grid (default marked *)
        from lance_llm.config import LikelihoodConfig
        from lance_llm.stages.review import likelihood_score

        default = LikelihoodConfig()
        for rel in (0.5, 1.0, 1.5):
            # floor 0: log P(end) counted linearly (it is <= 0)
            for comp, floor in ((0.15, 0.0), (0.25, 10.0), (0.5, 8.0), (0.5, 10.0), (0.5, 12.0), (1.0, 10.0)):
                lk = LikelihoodConfig(relevance=rel, completeness=comp, end_floor=floor)
                mark = "*" if lk == default else ""
                name = f"lik r{rel} c{comp} f{floor:g}{mark}"
                acc(lambda x, lk=lk: likelihood_score(x["likelihood"], lk), name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--limit", type=int, default=120, help="dev pairs (0: all 213)")
    ap.add_argument("--modes", default="expected,criteria")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--analyze", type=Path, help="only print the accuracies of a stored file")
    args = ap.parse_args()
    if args.analyze:
        analyze(args.analyze)
        return 0
    out = args.out or Path(f"/tmp/judge/dev-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    collect(args.model, args.limit, args.modes.split(","), out)
    analyze(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
