"""The stage contract: what each LANCE step declares, and what it is handed when it runs.

    CLEAN = Stage(
        name="clean", reads=("generated", "seed_reviewed", "seed@0", "cleaned@earlier"),
        writes=("cleaned", "clean_dropped"), config=("clean",), run=run_clean,
        files=lambda cfg: {f"decontam{i}": Path(p) for i, p in enumerate(cfg.clean.decontaminate_paths)},
        funnel=(Column("cleaned", "candidates kept by cleaning", lambda st: st["kept"]),))

`run(ctx)` reads its declared inputs (`ctx.read("generated")`), writes its declared outputs
(`ctx.write("cleaned", records)`) and returns its stats (a JSON-able dict). It never builds a
path, a backend or a trainer; the context holds them, and refuses a read or write the stage did
not declare. The ordered lists the loop runs are in stages/__init__.py; funnel, report, export
and drift read the same lists. docs/stages.md adds a stage, step by step.

A stage's manifest (rundir.py) hashes exactly what it depends on, so it runs again when one of
these changes and only then:
- its inputs: `reads` resolved by RunDir (`NAME`, `NAME@prev`, `NAME@0`, `NAME@earlier`,
  `seed_in`), and `files(cfg)`, files outside the run (a seed file, decontamination lists);
- the values of its config keys (`config`, dotted paths; a function of the config where the
  keys depend on a mode);
- its prompt templates (`templates`; `system` is the run's system prompt);
- the model it uses: the backend's fingerprint (weights + engine numerics) for `needs="backend"`,
  the start checkpoint's for `needs="trainer"`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import models
from .peakrss import PeakRSS
from .prompts import digest

if TYPE_CHECKING:
    from .backends.cache import CachedBackend
    from .config import Config, TrainConfig
    from .rundir import RunDir

Stats = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One funnel column a stage contributes. `total`: several stages contribute, their values are
    summed (such columns come after the per-stage ones). `style`: a table cell, a line under the
    table (a {key: count} dict), or funnel.json only."""

    name: str
    description: str
    value: Callable[[Stats], Any]
    total: bool = False
    style: Literal["cell", "line", "json"] = "cell"


class Trainer(Protocol):
    """Trains `kind` ("sft" or "dpo") from `model_path` on the JSONL `data`, writing a checkpoint
    to `out`; lance_llm.launch.train is the real one."""

    def __call__(self, kind: str, model_path: Path, data: Path, out: Path, cfg: TrainConfig, seed: int,
                 trust_remote_code: bool = False) -> Any: ...


Keys = tuple[str, ...] | Callable[["Config"], tuple[str, ...]]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    config: Keys
    run: Callable[[StageContext], Stats]
    templates: Keys = ()
    needs: Literal["data", "backend", "trainer"] = "data"
    funnel: tuple[Column, ...] = ()
    # the report's parse-failure table: (label, stat of replies that failed, stat of all replies)
    parse: tuple[tuple[str, str, str], ...] = ()
    files: Callable[[Config], dict[str, Path]] | None = None
    when: Callable[[Config], bool] = lambda cfg: True

    def config_keys(self, cfg: Config) -> tuple[str, ...]:
        return self.config(cfg) if callable(self.config) else self.config

    def template_names(self, cfg: Config) -> tuple[str, ...]:
        return self.templates(cfg) if callable(self.templates) else self.templates


def config_value(cfg: Config, key: str) -> Any:
    """The value at a dotted config key (a section as a plain dict)."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


@dataclass
class StageContext:
    """What a running stage is handed: its iteration, the config, the run's system prompt, the
    checkpoint the iteration starts from, and a backend or trainer where the stage needs one."""

    stage: Stage
    t: int
    cfg: Config
    rd: RunDir
    system: str
    model: Path
    backend: CachedBackend | None = None
    trainer: Trainer | None = None
    echo: Callable[[str], None] = print

    def _declared(self, name: str, kind: str) -> None:
        declared = self.stage.reads if kind == "reads" else self.stage.writes
        if name not in declared:
            raise KeyError(f"stage {self.stage.name} {kind} {name!r} without declaring it ({kind}: {declared})")

    def read(self, ref: str) -> list:
        """The records of a declared input (all of them, in iteration order, for `NAME@earlier`)."""
        self._declared(ref, "reads")
        out: list = []
        for key, path in self.rd.resolve(self.t, ref):  # key: the set's own name @ its iteration
            out.extend(self.rd.read_path(path, key.partition("@")[0]))
        return out

    def input_path(self, ref: str) -> Path:
        """The file of a declared single input (what a trainer reads)."""
        self._declared(ref, "reads")
        (_, path), = self.rd.resolve(self.t, ref)
        return path

    def output(self, name: str) -> Path:
        """Where a declared output goes (a checkpoint folder is written there by the trainer)."""
        self._declared(name, "writes")
        return self.rd.path(self.t, name)

    def write(self, name: str, records: list) -> int:
        self.output(name)
        return self.rd.write(self.t, name, records)


def execute(ctx: StageContext) -> Stats:
    """Run `ctx.stage` for iteration `ctx.t` unless its manifest is current; return its stats.

    What the manifest hashes is computed here from the declaration (module docstring). Before a
    run, what a killed attempt left beside the outputs (`.NAME.*` temp files and checkpoint
    folders) is removed; after it, the LLM calls and tokens of an LLM stage and the peak memory
    are added to its stats, every declared output must exist, and the manifest is written last.
    """
    stage, t, cfg, rd, backend = ctx.stage, ctx.t, ctx.cfg, ctx.rd, ctx.backend
    inputs = {k: p for ref in stage.reads for k, p in rd.resolve(t, ref)}
    inputs |= stage.files(cfg) if stage.files else {}
    params: dict[str, Any] = {
        "config": {k: config_value(cfg, k) for k in stage.config_keys(cfg)},
        "templates": {n: digest(n, ctx.system if n == "system" else None) for n in stage.template_names(cfg)}}
    if stage.needs != "data":
        params["model"] = backend.fingerprint if backend is not None else models.fingerprint(ctx.model)
    why = rd.stale(t, stage.name, inputs, params)
    if why is None:
        ctx.echo(f"[iter {t}] {stage.name}: done earlier, skipped")
        return rd.manifest(t, stage.name)["stats"]  # type: ignore[index]
    ctx.echo(f"[iter {t}] {stage.name} ... ({why})")
    outputs = [rd.path(t, n).name for n in stage.writes]
    for p in (p for name in outputs for p in rd.iter_dir(t).glob(f".{name}.*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    t0, calls, tokens = time.time(), dict(backend.stats) if backend else {}, backend.tokens if backend else {}
    if backend is not None:
        backend.label = f"iter {t} {stage.name}"
    with PeakRSS() as peak:
        stats = stage.run(ctx)
    if backend is not None:
        stats["llm_calls"] = {k: backend.stats[k] - calls[k] for k in calls}
        stats["tokens"] = {k: v - tokens.get(k, 0) for k, v in backend.tokens.items()}
    missing = [n for n in stage.writes if not rd.path(t, n).exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name} declares {missing} among its outputs but did not write them")
    rd.write_manifest(t, stage.name, inputs, params, outputs, stats, time.time() - t0,
                      resources={"peak_rss_mb": peak.mb, "children_peak_rss_mb": peak.children_mb})
    ctx.echo(f"[iter {t}] {stage.name}: {time.time() - t0:.1f}s")
    return stats
