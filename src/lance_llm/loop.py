"""The LANCE loop: runs the declared stages in order; a stage whose manifest is current is skipped.

    from lance_llm.config import load_config
    from lance_llm.loop import run
    summary = run(load_config("configs/default.yaml"))            # the real model and trainer
    summary = run(cfg, backends=ScriptedFactory(...), trainer=fake)  # what the fast tests inject

Iteration 0 runs `stages.PREPARE` (Seed_0, SFT_0, DPO_0; M_0), iteration t = 1..T runs
`stages.ITERATION` from the model M_t. What a stage reads, writes and depends on is in its
declaration (lance_llm.stage); running one and writing its manifest is `stage.execute`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import launch, models
from .backends import Factory
from .backends.cache import CachedBackend
from .config import Config, ConfigError
from .funnel import funnel_markdown, funnel_row
from .prompts import load
from .records import atomic_write_text
from .report import write_report
from .rundir import RunDir
from .seeds import load_review_examples, load_seed
from .stage import Stage, StageContext, Trainer, execute
from .stages import ITERATION, PREPARE, clean


@dataclass
class RunSummary:
    run_dir: Path
    final_model: Path
    funnels: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # best iteration on the eval dev set, when eval.enabled


def preflight(cfg: Config, rd: RunDir) -> tuple[str, models.ResolvedModel]:
    """(system prompt, base model). Every input is checked before anything is written, converted or
    loaded: a bad seed file, system prompt, decontamination file, eval setting or run directory
    fails here, naming it."""
    for i, p in enumerate(cfg.clean.decontaminate_paths):
        if not Path(p).is_file():
            raise ConfigError(f"clean.decontaminate_paths[{i}]: file not found: {p}")
    clean.load_decontamination(cfg.clean.decontaminate_paths, cfg.clean.decontaminate_field,
                               cfg.clean.decontaminate_ngram)
    system = load("system")
    if cfg.system_prompt_path:
        try:
            system = Path(cfg.system_prompt_path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"system_prompt_path: cannot read {cfg.system_prompt_path}: {e}") from e
    load_seed(cfg.data, cfg.seed)
    load_review_examples(cfg.data)
    if cfg.eval.enabled:
        from .evaluate.runner import check

        check(cfg.eval)
    rd.check()
    return system, models.resolve(cfg.model.source, cfg.model.cache_dir)


class Runner:
    def __init__(self, cfg: Config, echo: Callable[[str], None] | None = None, backends: Factory | None = None,
                 trainer: Trainer | None = None, stages: tuple[tuple[Stage, ...], tuple[Stage, ...]] | None = None):
        self.cfg, self.rd = cfg, RunDir(cfg.run_dir)
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        self.backends, self.trainer = backends or Factory(), trainer or launch.train
        self.prepare, self.stages = stages or (PREPARE, ITERATION)
        self.calls, self.system = {"hits": 0, "misses": 0}, load("system")

    def backend(self, model: Path, label: str) -> CachedBackend:
        """The backend answering for `model`, behind the run's durable cache (built on the first miss)."""
        cfg, chunk = self.cfg, self.cfg.backend.batch_size * 2
        if cfg.backend.distributed == "ray":  # whole multiples of a Ray shard (same records)
            from .backends.ray_backend import SHARDS_PER_ACTOR

            chunk *= cfg.backend.num_actors * SHARDS_PER_ACTOR
        fp = self.backends.fingerprint(cfg, model)
        b = CachedBackend(lambda: self.backends(cfg, model, fp), fp, self.rd.cache, chunk_size=chunk)
        b.label = label
        return b

    def iteration(self, t: int, stages: tuple[Stage, ...], model: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
        """Run `stages` for iteration t from `model`: the model after it, and each stage's stats. One
        backend serves the iteration's LLM stages; it is closed before training takes the memory."""
        backend, stats, enabled = None, {}, [s for s in stages if s.when(self.cfg)]
        for stage in enabled:
            if stage.needs == "backend" and backend is None:
                backend = self.backend(model, f"iter {t}")
            elif stage.needs == "trainer" and backend is not None:
                self._close(backend)
                backend = None
            ctx = StageContext(stage, t, self.cfg, self.rd, self.system, model,
                               backend if stage.needs == "backend" else None, self.trainer, self.echo)
            stats[stage.name] = execute(ctx)
        if backend is not None:
            self._close(backend)
        return (self.rd.path(t, "model") if any("model" in s.writes for s in enabled) else model), stats

    def _close(self, backend: CachedBackend) -> None:
        """Release the model; count the calls it answered and those the cache did (this process only)."""
        self.calls = {k: v + backend.stats[k] for k, v in self.calls.items()}
        backend.close()

    def evaluate(self) -> dict[str, Any] | None:
        """Evaluate every finished model of the run into run_dir/eval/ (cached ones are skipped);
        the best iteration is chosen on the dev set only (docs/evaluation.md)."""
        if not self.cfg.eval.enabled:
            return None
        from .evaluate.runner import Evaluator, run_targets

        results = Evaluator(self.cfg.eval, dtype=self.cfg.model.dtype, echo=self.echo).evaluate(
            run_targets(self.rd.root, self.cfg.model.cache_dir), self.rd.eval_dir)
        if best := results.get("best"):
            self.echo(f"[eval] best so far: {best['model']} ({best['reason']})")
        return best

    def run(self) -> RunSummary:
        cfg, rd, t_start = self.cfg, self.rd, time.time()
        self.system, base = preflight(cfg, rd)
        rd.open(cfg.to_dict(), {"base_model": base.to_dict(), "seed": cfg.seed})
        try:
            summary = RunSummary(run_dir=rd.root, final_model=base.path)
            model, _ = self.iteration(0, self.prepare, base.path)
            summary.best = self.evaluate()
            for t in range(1, cfg.iterations + 1):
                model, stats = self.iteration(t, self.stages, model)
                summary.funnels.append(funnel_row(t, stats, self.stages))
                table = funnel_markdown(summary.funnels, self.stages)
                atomic_write_text(rd.funnel_json(t), json.dumps(summary.funnels[-1], indent=2, default=str))
                atomic_write_text(rd.funnel_md, table + "\n")
                self.echo("\n" + table + "\n")
                summary.best = self.evaluate() or summary.best
            self.echo(f"report: {write_report(rd.root)}")
            summary.final_model, summary.llm_calls, summary.seconds = model, dict(self.calls), time.time() - t_start
            return summary
        finally:
            rd.close()


def run(cfg: Config, echo: Callable[[str], None] | None = None, backends: Factory | None = None,
        trainer: Trainer | None = None) -> RunSummary:
    return Runner(cfg, echo, backends, trainer).run()
