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

from ..config import Config, ConfigError
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


def run_own_judge(cfg: Config, source: str, modes: list[str], sources: list[str], split: str | None,
                  limit: int | None, n: int, out: Path | None = None) -> dict[str, Any]:
    """`lance judge --own`: the own-sample benchmark (judge/own.py) of `source` (a model, or a run
    dir's latest model) with the config's generation settings, thresholds and scale, every mode in
    `modes` and the no-model rules; writes OUT/judge_own.json and .md. Samples and scores go
    through a durable cache (<lance cache>/judge_own/cache.sqlite): re-runs and new modes re-sample
    nothing."""
    from .. import models
    from ..backends import backend_fingerprint, make_backend
    from ..backends.cache import CachedBackend
    from ..prompts import load
    from ..seeds import load_seed
    from .own import SOURCES, load_items, markdown, run_own

    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ConfigError(f"--sources: unknown {unknown}; known: {', '.join(SOURCES)}")
    src, run_dir = model_of(source)
    out = out or run_dir or Path("judge_results")
    resolved = models.resolve(src, cfg.model.cache_dir)
    fp = backend_fingerprint(cfg, resolved.path)
    backend = CachedBackend(lambda: make_backend(cfg, resolved.path, fp), fp,
                            models.judge_cache_path(cfg.model.cache_dir),
                            chunk_size=cfg.backend.batch_size * 4)
    settings = {"sampling": dataclasses.asdict(cfg.generate.response_sampling), "scale": cfg.review.scale,
                "sft_threshold": cfg.annotate.sft_threshold, "pair_margin": cfg.annotate.pair_margin}
    doc: dict[str, Any] = {}
    try:
        for name in sources:
            items = load_items(name, split, limit, cfg.seed)
            if not items:
                raise ValueError(f"no {name} prompts in split {split!r}")
            backend.label = f"{src} {name}"
            res = run_own(backend, cfg, items, modes, n, load("system"), load_seed(cfg.data, cfg.seed), cfg.seed,
                          progress=lambda s, name=name: log.info("judge --own %s %s: %s", src, name, s))
            doc[f"{src}|{split or 'all'}|{name}"] = {**res, "model": src, "fingerprint": fp, "settings": settings}
    finally:
        backend.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_own.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(doc)
    (out / "judge_own.md").write_text(md, encoding="utf-8")
    return {"results": doc, "markdown": md, "out": str(out)}
