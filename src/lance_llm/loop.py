"""The LANCE iteration driver: runs the stages in order, persists their records, skips what is done.

    from lance_llm.config import load_config
    from lance_llm.loop import run
    summary = run(load_config("configs/default.yaml"))

Iteration 0 prepares Seed_0, SFT_0 (seed pairs + review examples) and DPO_0 (empty), and
optionally fine-tunes the base on SFT_0 (M_0). Iteration t = 1..T, with the current model M_t:

  seed --review--> seed_reviewed --split+generate--> generated --clean--> cleaned
       --review--> reviewed --annotate--> sft/dpo (accumulated), next_seed --train--> M_{t+1}

Stages are pure (lance_llm.stages.*); this module is the only one that knows both the disk and
the stages. Each stage's output is written atomically, then its manifest (see rundir.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import launch, models
from .backends.base import Backend
from .backends.cache import CachedBackend
from .config import Config, ConfigError, ReviewConfig, TrainConfig
from .funnel import funnel_markdown, funnel_row
from .peakrss import PeakRSS
from .prompts import CORE, MODE_TEMPLATES, load, templates_hash
from .records import (
    PreferencePair,
    Sample,
    SFTExample,
    atomic_write_text,
    read_records,
    stable_int,
    write_records,
)
from .report import write_report
from .rundir import RunDir
from .seeds import load_review_examples, load_seed
from .stages import annotate, clean, generate, review

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    final_model: Path
    funnels: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # best iteration on the eval dev set, when eval.enabled


def _repr_without(obj: Any, skip: set[str]) -> str:
    """A config dataclass's repr (what a stage manifest records of it) without the fields in `skip`."""
    shown = ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in fields(obj) if f.name not in skip)
    return f"{type(obj).__qualname__}({shown})"


def train_params(train: TrainConfig) -> str:
    """What a train stage's manifest records of the training settings: the config's repr (as for
    every stage), without the launcher keys while training runs in this process. They only count
    when it does not (several processes change the effective batch), so runs made before the keys
    existed, or with them unset, resume without retraining."""
    return _repr_without(train, {"launcher", "accelerate_config", "num_processes"} if train.launcher == "inprocess"
                         else set())


def review_params(review: ReviewConfig) -> str:
    """The review settings a manifest records: the likelihood judge's weights only in that mode
    (runs made before they existed, in another mode, resume without reviewing again)."""
    return _repr_without(review, set() if review.mode == "likelihood" else {"likelihood"})


def make_backend(cfg: Config, model_path: Path, fingerprint: str) -> Backend:
    """The inference backend named by `backend.kind`: hf (in-process), openai (a server), vllm;
    fanned out over Ray actors (each building this same backend) when `backend.distributed` is `ray`."""
    if cfg.backend.distributed == "ray":
        from .backends.ray_backend import RayBackend

        return RayBackend(cfg.to_dict(), model_path, fingerprint, num_actors=cfg.backend.num_actors,
                          shard_size=cfg.backend.batch_size * 2, address=cfg.backend.ray_address,
                          actor_num_cpus=cfg.backend.actor_num_cpus, actor_num_gpus=cfg.backend.actor_num_gpus)
    if cfg.backend.kind == "openai":
        from .backends.openai_compat import ManagedServer, OpenAIBackend

        oc = cfg.backend.openai
        if not oc.serve_command:
            log.warning("backend.openai: the server at %s keeps serving its own weights; this run trains %s, "
                        "which that server never sees (set backend.openai.serve_command, see README)",
                        oc.base_url, model_path)
        server = ManagedServer(oc.serve_command, model_path, oc.base_url, oc.serve_wait_s) if oc.serve_command else None
        try:  # the checkpoint gives the chat template that scoring renders locally
            return OpenAIBackend(oc, fingerprint, tokenizer_path=model_path, server=server)
        except BaseException:
            if server is not None:
                server.stop()
            raise
    if cfg.backend.kind == "vllm":
        from .backends.vllm import VLLMBackend

        return VLLMBackend(model_path, fingerprint, cfg.backend.vllm, dtype=cfg.model.dtype,
                           trust_remote_code=cfg.model.trust_remote_code)
    from .backends.hf import HFBackend

    return HFBackend(model_path, fingerprint, batch_size=cfg.backend.batch_size, dtype=cfg.model.dtype,
                     threads=cfg.backend.threads, trust_remote_code=cfg.model.trust_remote_code)


def backend_fingerprint(cfg: Config, model_path: Path) -> str:
    """Cache identity of the model that answers: the local checkpoint's hash, except for a server we
    do not start ourselves, whose weights we cannot see (name + address + backend.openai.revision)."""
    oc = cfg.backend.openai
    if cfg.backend.kind == "openai" and not oc.serve_command:
        from .backends.openai_compat import remote_fingerprint

        return remote_fingerprint(oc.served_model or "default", oc.base_url, oc.revision)
    fp = models.fingerprint(model_path)
    if cfg.backend.kind == "openai":  # served from this checkpoint, perhaps converted: other numerics
        return f"served:{fp}" + (f"#{oc.revision}" if oc.revision else "")
    return f"vllm:{fp}" if cfg.backend.kind == "vllm" else fp


class Runner:
    def __init__(self, cfg: Config, echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.rd = RunDir(cfg.run_dir)
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        self.calls = {"hits": 0, "misses": 0}
        self.system = ""
        self.templates = CORE + MODE_TEMPLATES.get(cfg.review.mode, ())

    # -- stage plumbing --------------------------------------------------------------------
    def stage(self, t: int, name: str, inputs: dict[str, Path], params: dict[str, Any], outputs: list[str],
              body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        params = {**params, "seed": self.cfg.seed, "system": self.system, "prompts": templates_hash(self.templates)}
        done = self.rd.completed(t, name, inputs, params)
        if done is not None:
            self.echo(f"[iter {t}] {name}: done earlier, skipped")
            return done["stats"]
        self.echo(f"[iter {t}] {name} ...")
        self._clear_partial(t, outputs)
        t0 = time.time()
        with PeakRSS() as peak:
            stats = body()
        self.rd.write_manifest(t, name, inputs, params, outputs, stats, time.time() - t0,
                               resources={"peak_rss_mb": peak.mb, "children_peak_rss_mb": peak.children_mb})
        self.echo(f"[iter {t}] {name}: {time.time() - t0:.1f}s")
        return stats

    def _clear_partial(self, t: int, outputs: list[str]) -> None:
        """Remove what a killed attempt at this stage left: temp files of atomic writes
        (`.NAME.*.tmp`), half-saved checkpoints (`.NAME.*`) and trainer scratch (`.NAME.work`)."""
        folder = self.rd.iter_dir(t)
        if not folder.is_dir():
            return
        for name in outputs:
            for p in folder.glob(f".{name}.*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def backend(self, model_path: Path, label: str) -> CachedBackend:
        chunk = self.cfg.backend.batch_size * 2
        if self.cfg.backend.distributed == "ray":
            # whole multiples of the single-process chunk: Ray's shards are those chunks (same records)
            from .backends.ray_backend import SHARDS_PER_ACTOR

            chunk *= self.cfg.backend.num_actors * SHARDS_PER_ACTOR
        fp = backend_fingerprint(self.cfg, model_path)
        b = CachedBackend(lambda: make_backend(self.cfg, model_path, fp), fp, self.rd.root / "cache.sqlite",
                          chunk_size=chunk)
        b.label = label
        return b

    def _llm_stage(self, backend: CachedBackend, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before, tokens_before = dict(backend.stats), backend.tokens
        stats = fn()
        stats["llm_calls"] = {k: backend.stats[k] - before[k] for k in before}
        stats["tokens"] = {k: v - tokens_before.get(k, 0) for k, v in backend.tokens.items()}
        for k in self.calls:
            self.calls[k] += stats["llm_calls"][k]
        return stats

    # -- iteration 0 -----------------------------------------------------------------------
    def preflight(self) -> tuple[models.ResolvedModel, list[Sample], list[dict[str, Any]]]:
        """Check every input before the run directory is touched: a bad seed file, system prompt or
        decontamination file fails here, with its name, not an hour into the run."""
        cfg = self.cfg
        for i, p in enumerate(cfg.clean.decontaminate_paths):
            if not Path(p).is_file():
                raise ConfigError(f"clean.decontaminate_paths[{i}]: file not found: {p}")
        # read (and so validate) their contents too; the clean stage reads them again, cheaply
        clean.load_decontamination(cfg.clean.decontaminate_paths, cfg.clean.decontaminate_field,
                                   cfg.clean.decontaminate_ngram)
        self.system = load("system")
        if cfg.system_prompt_path:
            try:
                self.system = Path(cfg.system_prompt_path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"system_prompt_path: cannot read {cfg.system_prompt_path}: {e}") from e
        seed0 = load_seed(cfg.data, cfg.seed)
        examples = load_review_examples(cfg.data)
        if cfg.eval.enabled:  # a bad eval setting fails now, not after the first iteration's training
            from .evaluate.runner import check

            check(cfg.eval)
        base = models.resolve(cfg.model.source, cfg.model.cache_dir)
        return base, seed0, examples

    def prepare(self, base: models.ResolvedModel, seed0: list[Sample], examples: list[dict[str, Any]]) -> Path:
        cfg, rd = self.cfg, self.rd

        def body() -> dict[str, Any]:
            write_records(rd.path(0, "seed.jsonl"), seed0)
            sft0 = annotate.seed_sft(seed0, examples, self.system, review.review_prompt)
            write_records(rd.path(0, "sft.jsonl"), annotate.shuffled(sft0, stable_int(cfg.seed, "sft", 0)))
            write_records(rd.path(0, "dpo.jsonl"), [])
            return {"seed": len(seed0), "review_examples": len(examples), "sft": len(sft0)}

        self.stage(0, "prepare", {}, {"data": cfg.data, "seed_items": [s.to_dict() for s in seed0],
                                      "examples": examples},
                   ["seed.jsonl", "sft.jsonl", "dpo.jsonl"], body)
        if not cfg.train.m0_sft:
            return base.path
        out = rd.path(0, "model")

        def train0() -> dict[str, Any]:
            res = launch.train("sft", base.path, rd.path(0, "sft.jsonl"), out, cfg.train, cfg.seed,
                               cfg.model.trust_remote_code)
            return {"sft": res.to_dict()}

        self.stage(0, "train", {"sft": rd.path(0, "sft.jsonl")},
                   {"train": train_params(cfg.train), "model": base.fingerprint}, ["model"], train0)
        return out

    # -- iteration t -----------------------------------------------------------------------
    def iteration(self, t: int, model_path: Path) -> tuple[Path, dict[str, Any]]:
        cfg, rd = self.cfg, self.rd
        prev_seed = rd.path(0, "seed.jsonl") if t == 1 else rd.path(t - 1, "next_seed.jsonl")
        fp = backend_fingerprint(cfg, model_path)
        backend = self.backend(model_path, f"iter {t}")
        stats: dict[str, dict[str, Any]] = {}
        P = {"model": fp}  # noqa: N806 - parameters every LLM stage depends on

        def review_seed() -> dict[str, Any]:
            seed = read_records(prev_seed, Sample)
            todo = [s for s in seed if s.review is None]  # the method reviews unscored seeds only
            backend.label = f"iter {t} review seed"
            done, st = review.review(todo, backend, cfg.review, self.system, stable_int(cfg.seed, t))
            by_id = {s.id: s for s in done}
            seed = [by_id.get(s.id, s) for s in seed]
            if cfg.review.scale == "rank":
                seed = review.rank_scale(seed, review.raw_scores(seed))
            write_records(rd.path(t, "seed_reviewed.jsonl"), seed)
            return {**st.to_dict(), "seed": len(seed), "already_reviewed": len(seed) - len(todo)}

        stats["review_seed"] = self.stage(t, "review_seed", {"seed": prev_seed},
                                          {**P, "review": review_params(cfg.review)}, ["seed_reviewed.jsonl"],
                                          lambda: self._llm_stage(backend, review_seed))

        def gen() -> dict[str, Any]:
            seed = read_records(rd.path(t, "seed_reviewed.jsonl"), Sample)
            low, high, unscored = generate.split(seed, cfg.generate.threshold)
            backend.label = f"iter {t} generate"
            cands, st = generate.generate(low, high, backend, cfg.generate, self.system, t, cfg.seed)
            write_records(rd.path(t, "generated.jsonl"), cands)
            return {**st.to_dict(), "unscored_seeds": len(unscored), "candidates": len(cands)}

        stats["generate"] = self.stage(t, "generate", {"seed": rd.path(t, "seed_reviewed.jsonl")},
                                       {**P, "generate": cfg.generate}, ["generated.jsonl"],
                                       lambda: self._llm_stage(backend, gen))

        history = [rd.path(0, "seed.jsonl")] + [rd.path(s, "cleaned.jsonl") for s in range(1, t)]
        decontam = {f"decontam{i}": Path(p) for i, p in enumerate(cfg.clean.decontaminate_paths)}

        def clean_stage() -> dict[str, Any]:
            seed = read_records(rd.path(t, "seed_reviewed.jsonl"), Sample)
            seen: set[str] = set()
            for path in [rd.path(t, "seed_reviewed.jsonl"), *history]:
                for s in read_records(path, Sample):
                    seen.update((clean.normalize(s.instruction), clean.normalize(s.response)))
            contamination = clean.load_decontamination(cfg.clean.decontaminate_paths, cfg.clean.decontaminate_field,
                                                       cfg.clean.decontaminate_ngram)
            result = clean.clean({s.id: s for s in seed}, read_records(rd.path(t, "generated.jsonl"), Sample),
                                 cfg.clean, seen=seen, contamination=contamination)
            write_records(rd.path(t, "cleaned.jsonl"), result.kept)
            write_records(rd.path(t, "clean_dropped.jsonl"), result.dropped)
            return dict(result.counts)

        stats["clean"] = self.stage(
            t, "clean",
            {"generated": rd.path(t, "generated.jsonl"), "seed": rd.path(t, "seed_reviewed.jsonl"),
             **{f"history{i}": p for i, p in enumerate(history)}, **decontam},
            {"clean": cfg.clean}, ["cleaned.jsonl", "clean_dropped.jsonl"], clean_stage)

        def review_gen() -> dict[str, Any]:
            cands = read_records(rd.path(t, "cleaned.jsonl"), Sample)
            backend.label = f"iter {t} review generated"
            done, st = review.review(cands, backend, cfg.review, self.system, stable_int(cfg.seed, t, "gen"))
            if cfg.review.scale == "rank":  # on the same scale as the seed they are compared with
                reference = review.raw_scores(read_records(rd.path(t, "seed_reviewed.jsonl"), Sample))
                done = review.rank_scale(done, reference)
            write_records(rd.path(t, "reviewed.jsonl"), done)
            return st.to_dict()

        stats["review_generated"] = self.stage(t, "review_generated", {"cleaned": rd.path(t, "cleaned.jsonl"),
                                                                             "seed": rd.path(t, "seed_reviewed.jsonl")},
                                               {**P, "review": review_params(cfg.review)}, ["reviewed.jsonl"],
                                               lambda: self._llm_stage(backend, review_gen))
        backend.close()

        prev = t - 1
        annotate_inputs = {"reviewed": rd.path(t, "reviewed.jsonl"), "seed": rd.path(t, "seed_reviewed.jsonl"),
                           "seed0": rd.path(0, "seed.jsonl"), "sft_prev": rd.path(prev, "sft.jsonl"),
                           "dpo_prev": rd.path(prev, "dpo.jsonl")}

        def annotate_stage() -> dict[str, Any]:
            reviewed = read_records(rd.path(t, "reviewed.jsonl"), Sample)
            seed = read_records(rd.path(t, "seed_reviewed.jsonl"), Sample)
            _, high, _ = generate.split(seed, cfg.generate.threshold)
            sft_new = annotate.select_sft(reviewed, cfg.annotate, self.system, t)
            pairs = annotate.make_pairs(high, reviewed, cfg.annotate, self.system, t)
            # Seed_0 as reviewed in this iteration's step 1 (ids of Seed_0 are kept through the loop)
            seed0_ids = {s.id for s in read_records(rd.path(0, "seed.jsonl"), Sample)}
            seed0 = [s for s in seed if s.id in seed0_ids]
            nxt = annotate.next_seed(reviewed, seed0, seed, cfg.annotate.next_seed, stable_int(cfg.seed, "next", t))
            sft = annotate.accumulate(read_records(rd.path(prev, "sft.jsonl"), SFTExample), sft_new,
                                      stable_int(cfg.seed, "sft", t))
            dpo = annotate.accumulate(read_records(rd.path(prev, "dpo.jsonl"), PreferencePair), pairs,
                                      stable_int(cfg.seed, "dpo", t))
            write_records(rd.path(t, "sft_new.jsonl"), sft_new)
            write_records(rd.path(t, "dpo_new.jsonl"), pairs)
            write_records(rd.path(t, "sft.jsonl"), sft)
            write_records(rd.path(t, "dpo.jsonl"), dpo)
            write_records(rd.path(t, "next_seed.jsonl"), nxt)
            return {"sft_new": len(sft_new), "pairs_new": len(pairs), "sft_total": len(sft), "dpo_total": len(dpo),
                    "next_seed": len(nxt), "high_seeds": len(high)}

        stats["annotate"] = self.stage(t, "annotate", annotate_inputs, {"annotate": cfg.annotate,
                                                                        "threshold": cfg.generate.threshold},
                                       ["sft_new.jsonl", "dpo_new.jsonl", "sft.jsonl", "dpo.jsonl",
                                        "next_seed.jsonl"], annotate_stage)

        def train_stage() -> dict[str, Any]:
            out: dict[str, Any] = {}
            sft_res = launch.train("sft", model_path, rd.path(t, "sft.jsonl"), rd.path(t, "model_sft"), cfg.train,
                                   stable_int(cfg.seed, "train", t), cfg.model.trust_remote_code)
            out["sft"] = sft_res.to_dict()
            if stats["annotate"]["dpo_total"] > 0:
                dpo_res = launch.train("dpo", sft_res.path, rd.path(t, "dpo.jsonl"), rd.path(t, "model"), cfg.train,
                                       stable_int(cfg.seed, "dpo", t), cfg.model.trust_remote_code)
                out["dpo"] = dpo_res.to_dict()
            else:
                # no preference pair yet: M_{t+1} is the SFT model (said in the funnel, not hidden)
                self.echo(f"[iter {t}] train: no preference pairs, DPO skipped")
                if rd.path(t, "model").exists():
                    shutil.rmtree(rd.path(t, "model"))
                shutil.copytree(sft_res.path, rd.path(t, "model"))
                out["dpo"] = None
            return out

        stats["train"] = self.stage(t, "train", {"sft": rd.path(t, "sft.jsonl"), "dpo": rd.path(t, "dpo.jsonl")},
                                    {**P, "train": train_params(cfg.train)}, ["model_sft", "model"], train_stage)
        return rd.path(t, "model"), stats

    # -- held-out evaluation (optional) ----------------------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        """Evaluate every finished model of the run (cached ones are skipped) into run_dir/eval/;
        the best iteration is chosen on the dev set only (see docs/evaluation.md)."""
        if not self.cfg.eval.enabled:
            return None
        from .evaluate.runner import Evaluator, run_targets

        targets = run_targets(self.rd.root, self.cfg.model.cache_dir)
        results = Evaluator(self.cfg.eval, dtype=self.cfg.model.dtype, echo=self.echo).evaluate(
            targets, self.rd.root / "eval")
        best = results.get("best")
        if best:
            self.echo(f"[eval] best so far: {best['model']} ({best['reason']})")
        return best

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        cfg = self.cfg
        t_start = time.time()
        base, seed0, examples = self.preflight()
        self.rd.open(cfg.to_dict(), {"base_model": base.to_dict(), "seed": cfg.seed})
        try:
            summary = RunSummary(run_dir=self.rd.root, final_model=base.path)
            model_path = self.prepare(base, seed0, examples)
            summary.best = self.evaluate()
            for t in range(1, cfg.iterations + 1):
                model_path, stats = self.iteration(t, model_path)
                row = funnel_row(t, stats)
                summary.funnels.append(row)
                table = funnel_markdown(summary.funnels)
                atomic_write_text(self.rd.path(t, "funnel.json"), json.dumps(row, indent=2, default=str))
                atomic_write_text(self.rd.root / "funnel.md", table + "\n")
                self.echo("\n" + table + "\n")
                summary.best = self.evaluate() or summary.best
            self.echo(f"report: {write_report(self.rd.root)}")
            summary.final_model = model_path
            summary.llm_calls = dict(self.calls)
            summary.seconds = time.time() - t_start
            return summary
        finally:
            self.rd.close()


def run(cfg: Config, echo: Callable[[str], None] | None = None) -> RunSummary:
    return Runner(cfg, echo).run()
