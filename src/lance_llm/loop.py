"""The LANCE loop: runs the declared stages in order, persists what they write, skips what is done.

    from lance_llm.config import load_config
    from lance_llm.loop import run
    summary = run(load_config("configs/default.yaml"))            # real model and trainer
    summary = run(cfg, backends=ScriptedFactory(), trainer=fake)   # what the fast tests inject

Iteration 0 runs `stages.PREPARE` (Seed_0, SFT_0, DPO_0; M_0), iteration t = 1..T runs
`stages.ITERATION` with the current model M_t. Each stage declares its inputs, outputs, settings
and templates (lance_llm.stage); a stage whose manifest is current is skipped (rundir.py), else
it runs with a StageContext and its manifest is written last.
"""

from __future__ import annotations

import json
import shutil
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
from .peakrss import PeakRSS
from .prompts import digest, load
from .records import atomic_write_text
from .report import write_report
from .rundir import RunDir
from .seeds import load_review_examples, load_seed
from .stage import Stage, StageContext, Trainer, config_value
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
    """Check every input before anything is written, converted or loaded: a bad seed file, system
    prompt, decontamination file, eval setting or run directory fails here, naming it."""
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
        """The backend answering for `model`, through the run's durable cache (built lazily)."""
        cfg, chunk = self.cfg, self.cfg.backend.batch_size * 2
        if cfg.backend.distributed == "ray":  # whole multiples of a Ray shard (same records)
            from .backends.ray_backend import SHARDS_PER_ACTOR

            chunk *= cfg.backend.num_actors * SHARDS_PER_ACTOR
        fp = self.backends.fingerprint(cfg, model)
        b = CachedBackend(lambda: self.backends(cfg, model, fp), fp, self.rd.cache, chunk_size=chunk)
        b.label = label
        return b

    def execute(self, stage: Stage, t: int, model: Path, backend: CachedBackend | None) -> dict[str, Any]:
        cfg, rd = self.cfg, self.rd
        inputs = {k: p for ref in stage.reads for k, p in rd.resolve(t, ref)}
        inputs |= stage.files(cfg) if stage.files else {}
        params: dict[str, Any] = {
            "config": {k: config_value(cfg, k) for k in stage.config_keys(cfg)},
            "templates": {n: digest(n, self.system if n == "system" else None) for n in stage.template_names(cfg)}}
        if stage.needs != "data":
            params["model"] = backend.fingerprint if backend is not None else models.fingerprint(model)
        why = rd.stale(t, stage.name, inputs, params)
        if why is None:
            self.echo(f"[iter {t}] {stage.name}: done earlier, skipped")
            return rd.manifest(t, stage.name)["stats"]  # type: ignore[index]
        self.echo(f"[iter {t}] {stage.name} ... ({why})")
        outputs = [rd.path(t, n).name for n in stage.writes]
        for p in (p for name in outputs for p in rd.iter_dir(t).glob(f".{name}.*")):  # a killed attempt's leftovers
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        ctx = StageContext(stage, t, cfg, rd, self.system, model, backend, self.trainer, self.echo)
        t0, before, tokens = time.time(), dict(backend.stats) if backend else {}, backend.tokens if backend else {}
        if backend is not None:
            backend.label = f"iter {t} {stage.name}"
        with PeakRSS() as peak:
            stats = stage.run(ctx)
        if backend is not None:
            stats["llm_calls"] = {k: backend.stats[k] - before[k] for k in before}
            stats["tokens"] = {k: v - tokens.get(k, 0) for k, v in backend.tokens.items()}
            self.calls = {k: self.calls[k] + stats["llm_calls"][k] for k in self.calls}
        missing = [n for n in stage.writes if not rd.path(t, n).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name} declares {missing} among its outputs but did not write them")
        rd.write_manifest(t, stage.name, inputs, params, outputs, stats, time.time() - t0,
                          resources={"peak_rss_mb": peak.mb, "children_peak_rss_mb": peak.children_mb})
        self.echo(f"[iter {t}] {stage.name}: {time.time() - t0:.1f}s")
        return stats

    def iteration(self, t: int, stages: tuple[Stage, ...], model: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
        """Run `stages` for iteration t from `model`; the model after it (a stage wrote `model`) and
        each stage's stats. One cached backend serves the iteration's LLM stages; it is closed
        before a training stage takes the memory."""
        backend, stats = None, {}
        for stage in (s for s in stages if s.when(self.cfg)):
            if stage.needs == "backend" and backend is None:
                backend = self.backend(model, f"iter {t}")
            if stage.needs == "trainer" and backend is not None:
                backend.close()
                backend = None
            stats[stage.name] = self.execute(stage, t, model, backend if stage.needs == "backend" else None)
        if backend is not None:
            backend.close()
        return (self.rd.path(t, "model") if "model" in self._written(stages) else model), stats

    def _written(self, stages: tuple[Stage, ...]) -> set[str]:
        return {n for s in stages if s.when(self.cfg) for n in s.writes}

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
                atomic_write_text(rd.funnel_json(t), json.dumps(summary.funnels[-1], indent=2, default=str))
                atomic_write_text(rd.funnel_md, funnel_markdown(summary.funnels, self.stages) + "\n")
                self.echo("\n" + funnel_markdown(summary.funnels, self.stages) + "\n")
                summary.best = self.evaluate() or summary.best
            self.echo(f"report: {write_report(rd.root)}")
            summary.final_model, summary.llm_calls, summary.seconds = model, dict(self.calls), time.time() - t_start
            return summary
        finally:
            rd.close()


def run(cfg: Config, echo: Callable[[str], None] | None = None, backends: Factory | None = None,
        trainer: Trainer | None = None) -> RunSummary:
    return Runner(cfg, echo, backends, trainer).run()
