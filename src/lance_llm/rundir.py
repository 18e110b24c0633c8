"""The run directory: the only owner of its layout, plus the lock, snapshots and per-stage
manifests that make resume exact.

    runs/NAME/
      run.json            format version, library versions, base model fingerprint, seeds
      config.yaml         the config this run last used
      cache.sqlite        durable LLM call cache (lance_llm.backends.cache)
      funnel.md           the data funnel of every finished iteration
      report.html         `lance report`; eval/ (`lance eval`), judge.json (`lance judge`),
                          export/FORMAT/ (`lance export`)
      iter_00/            seed, sft, dpo (.jsonl: Seed_0, SFT_0, DPO_0), model/ (M_0, optional)
      iter_01/            seed_reviewed, generated, cleaned, clean_dropped, reviewed, sft_new,
                          dpo_new, sft, dpo, next_seed (.jsonl), model_sft/, model/, funnel.json
      iter_NN/STAGE.manifest.json   one per stage, written last and atomically

Record sets are named (`seed_reviewed`, `sft`, ...) and live in `iter_NN/NAME.jsonl`; names in
CHECKPOINTS are model folders. Code outside this module asks for them by name and iteration:

    rd.path(1, "reviewed"), rd.read(1, "reviewed"), rd.write(1, "reviewed", samples)
    rd.resolve(2, "sft@prev")          # the accumulated SFT set of iteration 1
    rd.seed_in(t), rd.iterations(), rd.finished_models(), rd.latest_model()

A stage is complete when its manifest exists, every output it lists still has the recorded
sha256, and the hashes of its inputs and parameters are unchanged. So re-running the same command
skips finished stages, recomputes a stage whose output was removed, and recomputes exactly the
stages whose inputs or declared settings changed (and, through their outputs, those downstream).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .records import PreferencePair, Sample, SFTExample, atomic_write_text, read_records, write_records

# 2: manifests hash each stage's own config keys, templates and the answering engine's numerics
FORMAT_VERSION = 2
#: record sets whose records have a class (others are read as plain JSON objects)
RECORD_TYPES: dict[str, type] = {
    "seed": Sample, "seed_reviewed": Sample, "generated": Sample, "cleaned": Sample, "reviewed": Sample,
    "next_seed": Sample, "sft": SFTExample, "sft_new": SFTExample, "dpo": PreferencePair,
    "dpo_new": PreferencePair,
}
CHECKPOINTS = ("model_sft", "model")  # model folders, not record files


class RunDirError(RuntimeError):
    """A run directory that cannot be used (locked, or written by an incompatible version)."""


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's (relative name, file hash) list; hidden files skipped."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
                h.update(str(p.relative_to(path)).encode())
                h.update(hash_path(p).encode())
        return h.hexdigest()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("lance-llm", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "rouge-score"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as the JSON a manifest stores (dataclasses, paths and tuples as JSON values)."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_plain(params), sort_keys=True).encode()).hexdigest()


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fh: Any = None
        # the run's own files, beside the iteration folders
        self.run_json = self.root / "run.json"
        self.config_yaml = self.root / "config.yaml"
        self.cache = self.root / "cache.sqlite"
        self.funnel_md = self.root / "funnel.md"
        self.report = self.root / "report.html"
        self.eval_dir = self.root / "eval"
        self.export_dir = self.root / "export"
        self.judge_json = self.root / "judge.json"

    # -- opening ---------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a directory this version cannot use (not a directory, another format version, a
        non-empty folder that is no run) without writing anything: called before any model is
        converted or loaded, so a refused run costs nothing and changes nothing."""
        run_json = self.run_json
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"{self.root}: exists and is not a directory")
        if run_json.exists():
            try:
                old = json.loads(run_json.read_text(encoding="utf-8"))
            except (ValueError, OSError, RecursionError) as e:
                raise RunDirError(f"{run_json}: unreadable ({e}); is this a lance run directory?") from e
            if not isinstance(old, dict):
                raise RunDirError(f"{run_json}: not a lance run.json (a JSON {type(old).__name__}, not an object)")
            if old.get("format_version") != FORMAT_VERSION:
                raise RunDirError(
                    f"{run_json}: written by format version {old.get('format_version')!r}, this lance-llm "
                    f"reads version {FORMAT_VERSION} (version 2 stage manifests hash each stage's own settings, "
                    "templates and engine numerics, so older ones cannot say what is still current); use a "
                    "new run_dir or the matching lance-llm version"
                )
            self._check_unlocked()
        else:
            try:
                non_empty = self.root.exists() and any(self.root.iterdir())
            except OSError as e:
                raise RunDirError(f"{self.root}: cannot list: {e.strerror or e}") from e
            if non_empty:
                raise RunDirError(f"{self.root}: exists, is not empty and is not a lance run directory (no run.json)")

    def _check_unlocked(self) -> None:
        """Fail now if another process holds the lock (tried and let go at once; nothing written)."""
        path = self.root / ".lock"
        if self._lock_fh is not None or not path.is_file():
            return
        try:
            fh = path.open("r")
        except OSError:
            return  # unreadable: open() will say why when it takes the lock
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise self._locked(fh) from e
            fcntl.flock(fh, fcntl.LOCK_UN)

    def open(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        """Lock the directory, refuse one from another format version, snapshot the config."""
        self.check()  # every check comes before the first write: a refused directory is left as it was
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.root}: cannot create: {e.strerror or e}") from e
        self.lock()
        try:
            atomic_write_text(self.config_yaml, yaml.safe_dump(config, sort_keys=False))
            meta = {"format_version": FORMAT_VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "libraries": library_versions(), **info}
            atomic_write_text(self.run_json, json.dumps(meta, indent=2, sort_keys=True))
        except BaseException:
            self.close()  # the caller only closes a directory that opened
            raise

    def lock(self) -> None:
        path = self.root / ".lock"
        try:
            fh = path.open("a+")
        except OSError as e:
            raise RunDirError(f"{self.root}: cannot create the lock file: {e.strerror or e}") from e
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            fh.seek(0)
            err = self._locked(fh)
            fh.close()
            raise err from e
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def _locked(self, fh: Any) -> RunDirError:
        holder = fh.read().strip() or "unknown"
        return RunDirError(f"{self.root}: another lance process (pid {holder}) is using this run directory")

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- layout ----------------------------------------------------------------------------
    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:02d}"

    def path(self, iteration: int, name: str) -> Path:
        """The file (`NAME.jsonl`) or, for CHECKPOINTS, the folder of `name` in an iteration."""
        return self.iter_dir(iteration) / (name if name in CHECKPOINTS else f"{name}.jsonl")

    def funnel_json(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "funnel.json"

    def manifest_path(self, iteration: int, stage: str) -> Path:
        return self.iter_dir(iteration) / f"{stage}.manifest.json"

    def read(self, iteration: int, name: str) -> list:
        """The records of a set (Sample, SFTExample, PreferencePair, or dicts for other sets)."""
        return self.read_path(self.path(iteration, name), name)

    @staticmethod
    def read_path(path: Path, name: str) -> list:
        cls = RECORD_TYPES.get(name)
        if cls is not None:
            return read_records(path, cls)
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write(self, iteration: int, name: str, records: list) -> int:
        return write_records(self.path(iteration, name), records)

    def seed_in(self, iteration: int) -> tuple[str, int]:
        """(set, iteration) of the seed iteration t starts from: Seed_0, then the previous next_seed."""
        return ("seed", 0) if iteration <= 1 else ("next_seed", iteration - 1)

    def resolve(self, iteration: int, ref: str) -> list[tuple[str, Path]]:
        """A stage's input reference as (key, path) pairs. `NAME` is this iteration's set,
        `NAME@prev` the previous iteration's, `NAME@0` iteration 0's, `NAME@earlier` the set of
        every iteration from 1 to t-1 (none in iteration 1); `seed_in` is the seed t starts from.
        The key (`NAME@N`) names the input in the stage's manifest."""
        name, _, at = ref.partition("@")
        if name == "seed_in" and not at:
            name, t = self.seed_in(iteration)
            its = [t]
        elif at == "" or at == "this":
            its = [iteration]
        elif at == "prev":
            its = [iteration - 1]
        elif at == "earlier":
            its = list(range(1, iteration))
        elif at.isdigit():
            its = [int(at)]
        else:
            raise ValueError(f"bad record reference {ref!r} (NAME, NAME@prev, NAME@earlier, NAME@N, seed_in)")
        return [(f"{name}@{t}", self.path(t, name)) for t in its]

    # -- what a run holds ------------------------------------------------------------------
    def iterations(self) -> list[int]:
        """Iteration numbers that have a folder, in order (0 included)."""
        found = [p.name[5:] for p in self.root.glob("iter_[0-9][0-9]*") if p.is_dir()]
        return sorted(int(n) for n in found if n.isdigit())

    def manifest(self, iteration: int, stage: str) -> dict[str, Any] | None:
        """A stage's manifest as written (not checked for being current); None if absent or unreadable."""
        try:
            m = json.loads(self.manifest_path(iteration, stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def stats(self, iteration: int, stage: str) -> dict[str, Any] | None:
        m = self.manifest(iteration, stage)
        return m.get("stats") if m else None

    def finished(self, iteration: int, name: str) -> bool:
        """`name` exists in the iteration and a stage manifest there lists it among its outputs
        (manifests are written last: the stage that wrote it completed)."""
        if not self.path(iteration, name).exists():
            return False
        out = self.path(iteration, name).name
        for m in self.iter_dir(iteration).glob("*.manifest.json"):
            try:
                if out in json.loads(m.read_text(encoding="utf-8")).get("outputs", {}):
                    return True
            except (OSError, ValueError, AttributeError):
                continue
        return False

    def finished_models(self) -> list[tuple[int, Path]]:
        """(iteration, checkpoint) of every model a finished stage wrote: M_0 (when trained), M_t."""
        return [(t, self.path(t, "model")) for t in self.iterations() if self.finished(t, "model")]

    def latest_model(self) -> Path | None:
        models = self.finished_models()
        return models[-1][1] if models else None

    # -- manifests -------------------------------------------------------------------------
    def _fingerprint(self, inputs: dict[str, Path], params: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": {k: hash_path(p) for k, p in sorted(inputs.items())}, "params": _plain(params),
                "params_hash": _digest(params)}

    def stale(self, iteration: int, stage: str, inputs: dict[str, Path], params: dict[str, Any]) -> str | None:
        """Why the stage must run (no manifest, an output changed, an input or a setting changed),
        or None when it is complete and current."""
        m = self.manifest(iteration, stage)
        if m is None:
            return "not run yet" if not self.manifest_path(iteration, stage).exists() else "unreadable manifest"
        for name, digest in (m.get("outputs") or {}).items():
            p = self.iter_dir(iteration) / name
            if not p.exists():
                return f"output {name} missing"
            if hash_path(p) != digest:
                return f"output {name} changed"
        missing = [k for k, p in inputs.items() if not p.exists()]
        if missing:
            return f"input {', '.join(missing)} missing"
        current = self._fingerprint(inputs, params)
        if m.get("inputs") != current["inputs"]:
            old = m.get("inputs") or {}
            changed = sorted(k for k in set(old) | set(current["inputs"]) if old.get(k) != current["inputs"].get(k))
            return f"input {', '.join(changed)} changed"
        if m.get("params_hash") != current["params_hash"]:
            old = m.get("params") if isinstance(m.get("params"), dict) else {}
            changed = sorted(k for k in set(old) | set(current["params"]) if old.get(k) != current["params"].get(k))
            return f"{', '.join(changed) or 'settings'} changed"
        return None

    def completed(self, iteration: int, stage: str, inputs: dict[str, Path], params: dict[str, Any]) -> dict | None:
        """The stage's manifest if it is complete and still current, else None."""
        return None if self.stale(iteration, stage, inputs, params) else self.manifest(iteration, stage)

    def write_manifest(
        self,
        iteration: int,
        stage: str,
        inputs: dict[str, Path],
        params: dict[str, Any],
        outputs: list[str],
        stats: dict[str, Any],
        seconds: float,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a finished stage. `outputs` are names inside the iteration folder (files or folders)."""
        manifest = {
            "stage": stage,
            "iteration": iteration,
            **self._fingerprint(inputs, params),
            "outputs": {name: hash_path(self.iter_dir(iteration) / name) for name in outputs},
            "stats": stats,
            "seconds": round(seconds, 2),
            **({"resources": resources} if resources else {}),  # e.g. the stage's peak RSS
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(self.manifest_path(iteration, stage), json.dumps(manifest, indent=2, sort_keys=True))
        return manifest
