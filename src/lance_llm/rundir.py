"""The run directory: layout, lock, snapshots and per-stage manifests that make resume exact.

    runs/NAME/
      run.json            format version, library versions, base model fingerprint, seeds
      config.yaml         the config this run last used
      cache.sqlite        durable LLM call cache (lance_llm.backends.cache)
      iter_00/            seed.jsonl, sft.jsonl, dpo.jsonl (SFT_0, DPO_0), model/ (M_0, optional)
      iter_01/            seed_reviewed, generated, cleaned, clean_dropped, reviewed, sft_new,
                          dpo_new, sft, dpo, next_seed (.jsonl), model_sft/, model/, funnel.{json,md}
      *.manifest.json     one per stage, written last and atomically

A stage is complete when its manifest exists, every output it lists still has the recorded
sha256, and the hashes of its inputs and parameters are unchanged. So re-running the same command
skips finished stages, recomputes a stage whose output was removed, and recomputes exactly the
stages downstream of a changed threshold.
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

from .records import atomic_write_text

FORMAT_VERSION = 1


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


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fh: Any = None

    # -- opening ---------------------------------------------------------------------------
    def open(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        """Lock the directory, refuse one from another format version, snapshot the config."""
        run_json = self.root / "run.json"
        # Every check comes before the first write: a refused directory is left exactly as it was.
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
                    f"reads version {FORMAT_VERSION}; use a new run_dir or the matching lance-llm version"
                )
        else:
            try:
                non_empty = self.root.exists() and any(self.root.iterdir())
            except OSError as e:
                raise RunDirError(f"{self.root}: cannot list: {e.strerror or e}") from e
            if non_empty:
                raise RunDirError(f"{self.root}: exists, is not empty and is not a lance run directory (no run.json)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.root}: cannot create: {e.strerror or e}") from e
        self.lock()
        try:
            atomic_write_text(self.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            meta = {"format_version": FORMAT_VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "libraries": library_versions(), **info}
            atomic_write_text(run_json, json.dumps(meta, indent=2, sort_keys=True))
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
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunDirError(f"{self.root}: another lance process (pid {holder}) is using this run directory") from e
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- layout ----------------------------------------------------------------------------
    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:02d}"

    def path(self, iteration: int, name: str) -> Path:
        return self.iter_dir(iteration) / name

    def manifest_path(self, iteration: int, stage: str) -> Path:
        return self.iter_dir(iteration) / f"{stage}.manifest.json"

    # -- manifests -------------------------------------------------------------------------
    def _fingerprint(self, inputs: dict[str, Path], params: dict[str, Any]) -> dict[str, Any]:
        return {
            "inputs": {k: hash_path(p) for k, p in sorted(inputs.items())},
            "params": hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest(),
        }

    def completed(self, iteration: int, stage: str, inputs: dict[str, Path], params: dict[str, Any]) -> dict | None:
        """The stage's manifest if it is complete and still current, else None."""
        mpath = self.manifest_path(iteration, stage)
        if not mpath.exists():
            return None
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError:
            return None  # a torn manifest cannot happen (atomic writes), but never trust one
        for name, digest in manifest.get("outputs", {}).items():
            p = self.iter_dir(iteration) / name
            if not p.exists() or hash_path(p) != digest:
                return None
        if any(not p.exists() for p in inputs.values()):
            return None
        current = self._fingerprint(inputs, params)
        if manifest.get("inputs") != current["inputs"] or manifest.get("params") != current["params"]:
            return None
        return manifest

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
