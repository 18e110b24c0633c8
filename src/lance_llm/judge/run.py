"""`lance judge`: measure a model's own judge on the labelled pairs, write JSON + Markdown.

    lance judge smollm2-135m --mode expected --mode sampled --split test --limit 60
    lance judge runs/default                 # a run dir: its latest model; writes RUN_DIR/judge.json
    lance judge PATH --set review.samples=1 --out /tmp/judge

Each mode is one `ReviewConfig` (the config file + `--set` overrides, `review.mode` replaced); the
model is loaded once for all modes. Outputs: OUT/judge.json ({model, split, pairs summary,
results: {mode: judge_reliability dict}, agreement}) and OUT/judge.md (the table).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from itertools import combinations
from pathlib import Path
from typing import Any

from ..config import Config
from ..rundir import RunDir
from .pairs import load_pairs, select
from .reliability import agreement, judge_reliability, markdown

log = logging.getLogger(__name__)


def model_of(source: str) -> tuple[str, Path | None]:
    """(model source, run dir or None): a run dir stands for its latest trained model."""
    rd = RunDir(source)
    if rd.run_json.exists():
        latest = rd.latest_model()
        if latest is None:
            raise FileNotFoundError(f"{source}: no trained model in this run dir yet")
        return str(latest), rd.root
    return source, None


def run_judge(cfg: Config, source: str, modes: list[str], split: str | None, limit: int | None,
              out: Path | None, seed_file: str | None = None, backend: Any = None) -> dict[str, Any]:
    from .. import models
    from ..backends import make_backend
    from ..prompts import load

    src, run_dir = model_of(source)
    out = out or run_dir or Path("judge_results")
    pairs, summary = load_pairs(seed_file)
    chosen = select(pairs, split, limit)
    if not chosen:
        raise ValueError(f"no pairs in split {split!r}")
    system = load("system")
    fp = None
    if backend is None:
        resolved = models.resolve(src, cfg.model.cache_dir)
        fp = resolved.fingerprint
        backend = make_backend(cfg, resolved.path, resolved.fingerprint)
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rcfg = dataclasses.replace(cfg.review, mode=mode)
        log.info("judge %s: mode %s on %d pairs", src, mode, len(chosen))
        results[mode] = judge_reliability(backend, rcfg, chosen, system, seed=cfg.seed)
    agree = {f"{a} vs {b}": agreement(results[a]["outcomes"], results[b]["outcomes"])
             for a, b in combinations(results, 2)}
    doc = {"model": src, "fingerprint": fp, "split": split, "limit": limit, "pairs": len(chosen),
           "pair_set": summary, "review": cfg.to_dict()["review"], "results": results, "agreement": agree}
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(results, f"Judge reliability: {src}, split {split or 'all'}, {len(chosen)} pairs")
    if agree:
        md += "\n" + "".join(f"- agreement {k}: {v['agreement']} on {v['pairs']} pairs\n" for k, v in agree.items())
    (out / "judge.md").write_text(md, encoding="utf-8")
    doc["markdown"] = md
    doc["out"] = str(out)
    return doc
