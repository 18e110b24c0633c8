"""`lance eval MODEL_OR_RUN`: evaluate one model, or every model of a run, and write the table.

    lance eval runs/default --limit 100 --ifeval-limit 100     # base, M_0, M_1, ... of a run
    lance eval smollm2-135m --limit 8 --out /tmp/ev             # one model (built-in, dir or .gguf)

A run directory (it has run.json) gives the rows base (run.json's base model), M_0
(iter_00/model, when trained) and M_t (iter_NN/model) for every finished train stage. Each
(model fingerprint, part, settings) result is cached under `<lance cache>/eval/results/` and
written atomically, so re-running skips finished models, and the base model evaluated for one
run is reused by any other run with the same settings. Results go to OUT/results.json and
OUT/results.md (OUT defaults to RUN_DIR/eval for a run).

Dev vs reported: IFEval on `ifeval_path` (default ../shared/data/ifeval/dev.jsonl) is the dev set;
the best iteration is the row with the highest `select_on` (IFEval prompt-level strict) there.
The multiple-choice benchmarks are reported only and never used for choosing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import models
from ..config import EvalConfig
from ..records import atomic_write_text
from ..rundir import RunDir
from . import gsm8k, harness, ifeval, table
from .data import SOURCES, EvalDataError
from .ifeval import IFEvalError

log = logging.getLogger(__name__)


#: rows per batch of our generation (IFEval, GSM8K): where the HF backend's decode loop runs fastest
GEN_BATCH = 32


class EvalError(ValueError):
    """Settings or a model/run that cannot be evaluated."""


#: errors `lance eval` reports as one line (no traceback)
EVAL_ERRORS: tuple[type[Exception], ...] = (EvalError, EvalDataError, IFEvalError)


@dataclass(frozen=True)
class Target:
    model: str  # row label: base, M_0, M_1, ... or the model source
    iteration: int | None
    path: Path
    fingerprint: str


def check(cfg: EvalConfig) -> None:
    """Fail before any model is loaded: unknown benchmark, unreadable IFEval file, bad selection metric."""
    import importlib.util

    missing = [m for m in ("lm_eval", "langdetect", "immutabledict", "nltk") if importlib.util.find_spec(m) is None]
    if missing:
        raise EvalError(f"evaluation needs {', '.join(missing)}: pip install -c requirements/constraints.txt "
                        "-e '.[eval]' (make setup installs it)")
    unknown = [b for b in cfg.benchmarks if b not in SOURCES]
    if unknown:
        raise EvalError(f"eval.benchmarks: unknown {unknown}; known: {', '.join(SOURCES)}")
    if cfg.ifeval_path:
        ifeval.load(cfg.ifeval_path, cfg.ifeval_limit, cfg.seed)  # validates every line
    evaluated = (*(table.IFEVAL_METRICS if cfg.ifeval_path else ()), *cfg.benchmarks)
    if cfg.select_on not in evaluated:
        raise EvalError(f"eval.select_on: {cfg.select_on!r} is not an evaluated metric (evaluated: "
                        f"{', '.join(evaluated) or 'none'})")


def run_targets(run_dir: Path, cache_dir: str | None = None) -> list[Target]:
    """base, M_0 (if trained), M_1..M_T of a run directory, in order; unfinished iterations skipped."""
    rd = RunDir(run_dir)
    try:
        info = json.loads(rd.run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalError(f"{rd.run_json}: unreadable ({e}); is this a lance run directory?") from e
    base = info.get("base_model") or {}
    base_path = Path(str(base.get("path", "")))
    if base_path.is_dir() and (base_path / "config.json").exists():
        targets = [Target("base", None, base_path, models.fingerprint(base_path))]
    else:  # the cache moved: resolve the configured source again
        src = base.get("source") or "smollm2-135m"
        m = models.resolve(src, cache_dir)
        targets = [Target("base", None, m.path, m.fingerprint)]
    for t, path in rd.finished_models():
        targets.append(Target(f"M_{t}", t, path, models.fingerprint(path)))
    return targets


def targets_for(source: str, cache_dir: str | None = None) -> tuple[list[Target], Path | None]:
    """Targets for MODEL_OR_RUN, and the run directory when it is one."""
    p = Path(source).expanduser()
    if p.is_dir() and RunDir(p).run_json.exists():
        return run_targets(p, cache_dir), p
    m = models.resolve(source, cache_dir)
    return [Target(source, None, m.path, m.fingerprint)], None


def _key(part: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"part": part, **params}, sort_keys=True).encode()).hexdigest()[:16]


class Evaluator:
    def __init__(self, cfg: EvalConfig, dtype: str = "auto", results_cache: Path | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        from ..backends.hf import pick_dtype

        self.cfg, self.dtype = cfg, dtype
        self.results_cache = results_cache or models.eval_results_dir()
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        self.docs = ifeval.load(cfg.ifeval_path, cfg.ifeval_limit, cfg.seed) if cfg.ifeval_path else []
        lm_eval_version = metadata.version("lm_eval")
        common = {"seed": cfg.seed, "dtype": str(pick_dtype(dtype)), "lm_eval": lm_eval_version}
        self.params: dict[str, dict[str, Any]] = {}
        if self.docs:
            digest = hashlib.sha256(Path(cfg.ifeval_path).read_bytes()).hexdigest()
            self.params["ifeval"] = {**common, "file": digest, "limit": cfg.ifeval_limit,
                                     "max_new_tokens": cfg.max_new_tokens, "decoding": "greedy+chat_template"}
        for b in cfg.benchmarks:  # scored or generated by our HF backend, not lm-eval's hf model
            self.params[b] = {**common, "limit": cfg.limit, "metric": harness.METRIC[b], "engine": "lance-hf"}

    def _path(self, target: Target, part: str) -> Path:
        return self.results_cache / target.fingerprint / f"{part}-{_key(part, self.params[part])}.json"

    def model_results(self, target: Target) -> dict[str, Any]:
        """{part: {"items": [...], "seconds": s}} for one model, computing only what is not cached."""
        out: dict[str, Any] = {}
        for part in self.params:
            p = self._path(target, part)
            if p.exists():
                try:
                    out[part] = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:  # cannot be torn (atomic writes), but never trust one
                    self.echo(f"[eval] {p}: unreadable ({e}); computing it again")
        if "ifeval" in self.params and "ifeval" not in out:
            out["ifeval"] = self._ifeval(target)
        if "gsm8k" in self.params and "gsm8k" not in out:
            out["gsm8k"] = self._gsm8k(target)
        todo = [b for b in self.cfg.benchmarks if b not in out]
        if todo:
            self.echo(f"[eval] {target.model}: lm-eval {', '.join(todo)} "
                      f"({'full sets' if self.cfg.limit is None else f'{self.cfg.limit} items each'}) ...")
            t0 = time.time()

            def progress(done: int, total: int) -> None:
                secs = time.time() - t0
                self.echo(f"[eval] {target.model}: {done}/{total} contexts scored, {secs:.0f}s, "
                          f"~{secs / done * (total - done):.0f}s left")
            per = harness.run(target.path, {b: self.cfg.limit for b in todo}, self.cfg.seed,
                              self.cfg.batch_size, self.dtype, fingerprint=target.fingerprint, progress=progress)
            secs = time.time() - t0
            for b in todo:  # lm-eval runs them together; time is split by item count (approximate)
                share = secs * len(per[b]) / max(1, sum(len(v) for v in per.values()))
                out[b] = self._save(target, b, per[b], share)
            self.echo(f"[eval] {target.model}: lm-eval done in {secs:.0f}s: "
                      + ", ".join(f"{b} {sum(i['correct'] for i in out[b]['items']) / len(out[b]['items']):.3f}"
                                  for b in todo))
        return out

    def _progress(self, target: Target, what: str, n: int) -> Callable[[int], None]:
        done, t0 = 0, time.time()

        def progress(k: int) -> None:
            nonlocal done
            done += k
            rate = (time.time() - t0) / done
            self.echo(f"[eval] {target.model}: {what} {done}/{n}, {time.time() - t0:.0f}s, "
                      f"~{rate * (n - done):.0f}s left")
        return progress

    def _ifeval(self, target: Target) -> dict[str, Any]:
        n, t0 = len(self.docs), time.time()
        self.echo(f"[eval] {target.model}: IFEval, {n} prompts, greedy, <= {self.cfg.max_new_tokens} new tokens ...")
        responses = ifeval.generate(target.path, target.fingerprint, self.docs, self.cfg.max_new_tokens,
                                    max(GEN_BATCH, self.cfg.batch_size), self.dtype,
                                    self._progress(target, "IFEval prompts", n))
        res = self._save(target, "ifeval", ifeval.items(self.docs, responses), time.time() - t0)
        strict = sum(r["prompt_strict"] for r in res["items"]) / n
        self.echo(f"[eval] {target.model}: IFEval prompt-level strict {strict:.3f} ({time.time() - t0:.0f}s)")
        return res

    def _gsm8k(self, target: Target) -> dict[str, Any]:
        docs, t0 = gsm8k.load(self.cfg.limit, self.cfg.seed), time.time()
        self.echo(f"[eval] {target.model}: GSM8K, {len(docs)} questions, greedy, <= {harness.GSM8K_MAX_TOKENS} "
                  "new tokens ...")
        items = gsm8k.run(target.path, target.fingerprint, docs, max(GEN_BATCH, self.cfg.batch_size), self.dtype,
                          self._progress(target, "GSM8K questions", len(docs)))
        res = self._save(target, "gsm8k", items, time.time() - t0)
        self.echo(f"[eval] {target.model}: GSM8K exact match "
                  f"{sum(i['correct'] for i in items) / max(1, len(items)):.3f} ({time.time() - t0:.0f}s)")
        return res

    def _save(self, target: Target, part: str, items: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        res = {"model": target.model, "fingerprint": target.fingerprint, "checkpoint": str(target.path),
               "part": part, "params": self.params[part], "seconds": round(seconds, 1), "items": items}
        atomic_write_text(self._path(target, part), json.dumps(res, ensure_ascii=False))
        return res

    def evaluate(self, targets: list[Target], out_dir: Path) -> dict[str, Any]:
        """Evaluate every target (cached parts skipped); write OUT/results.json and OUT/results.md,
        rewritten after each model so a long evaluation can be read while it runs."""
        rows: list[table.Row] = []
        results: dict[str, Any] = {}
        for i, target in enumerate(targets, 1):
            self.echo(f"[eval] model {i}/{len(targets)}: {target.model} ({target.path})")
            res = self.model_results(target)
            row = table.Row(target.model, target.iteration, info={
                "checkpoint": str(target.path), "fingerprint": target.fingerprint,
                "seconds": {part: r["seconds"] for part, r in res.items()}})
            if "ifeval" in res:
                row.items.update(table.ifeval_items(res["ifeval"]["items"]))
            for b in self.cfg.benchmarks:
                row.items[b] = table.mc_items(res[b]["items"])
            rows.append(row)
            results = self._write(rows, out_dir, pending=[t.model for t in targets[i:]])
        return results

    def _write(self, rows: list[table.Row], out_dir: Path, pending: list[str]) -> dict[str, Any]:
        built = table.build(rows, self.cfg.bootstrap, self.cfg.seed)
        results: dict[str, Any] = {
            "settings": {**asdict(self.cfg), "dtype": self.dtype},
            "selection": {
                "dev": (f"IFEval {self.cfg.ifeval_path} ({len(self.docs)} prompts), metric {self.cfg.select_on}"
                        if self.docs else f"{self.cfg.select_on}"),
                "reported_only": [b for b in self.cfg.benchmarks if b != self.cfg.select_on],
            },
            "splits": {b: SOURCES[b].split for b in self.cfg.benchmarks},
            "rows": built,
            "best": table.select_best(built, self.cfg.select_on) if len(built) > 1 else None,
            "pending": pending,  # models not evaluated yet (non-empty only while an evaluation runs)
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, ensure_ascii=False))
        # per-item verdicts (model -> metric -> item key -> [numerator, denominator]): what paired
        # tests between any two models need (evaluate/paired.py), small enough to keep with results
        atomic_write_text(out_dir / "items.json", json.dumps({r.model: r.items for r in rows}, sort_keys=True))
        atomic_write_text(out_dir / "results.md", table.markdown(results))
        return results


def default_out(source: str, run_dir: Path | None) -> Path:
    if run_dir is not None:
        return RunDir(run_dir).eval_dir
    name = Path(source).name.removesuffix(".gguf") or "model"
    return Path("eval") / name


def cli_eval(args: Any) -> int:
    """`lance eval`: flags over EvalConfig's defaults, then evaluate and print the table."""
    cfg = EvalConfig()
    if args.ifeval is not None:
        cfg.ifeval_path = "" if args.ifeval.lower() == "none" else args.ifeval
    if args.limit is not None:
        if args.limit.lower() in ("full", "all"):
            cfg.limit = None
        elif not args.limit.isdigit() or int(args.limit) <= 0:
            raise EvalError(f"--limit: expected a positive number or 'full', got {args.limit!r}")
        else:
            cfg.limit = int(args.limit)
    if args.benchmarks is not None:
        cfg.benchmarks = [] if args.benchmarks.lower() == "none" else [
            b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for flag, name in (("ifeval_limit", "ifeval_limit"), ("max_new_tokens", "max_new_tokens"),
                       ("batch_size", "batch_size"), ("seed", "seed"), ("bootstrap", "bootstrap")):
        value = getattr(args, flag)
        if value is not None:
            if value <= 0 and flag != "seed":
                raise EvalError(f"--{flag.replace('_', '-')}: must be > 0, got {value}")
            setattr(cfg, name, value)
    if not cfg.ifeval_path and not cfg.benchmarks:
        raise EvalError("nothing to evaluate: IFEval is off and no benchmark is selected")
    if not cfg.ifeval_path and cfg.select_on.startswith("ifeval_"):
        cfg.select_on = cfg.benchmarks[0]  # without the dev set, say so in the results' selection line
    check(cfg)
    if args.models and not RunDir(Path(args.source).expanduser()).run_json.exists():
        raise EvalError(f"--models picks rows of a run directory; {args.source} is not one")
    targets, run_dir = targets_for(args.source)
    if args.models:
        want = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in want if m not in {t.model for t in targets}]
        if unknown:
            raise EvalError(f"--models: {', '.join(unknown)} not in {run_dir} (it has "
                            f"{', '.join(t.model for t in targets)})")
        targets = [t for t in targets if t.model in want]
    out = Path(args.out) if args.out else default_out(args.source, run_dir)
    results = Evaluator(cfg, dtype=args.dtype).evaluate(targets, out)
    print(table.markdown(results), end="")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
