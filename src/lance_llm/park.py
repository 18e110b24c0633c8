"""A LoRA run directory parked without its merged weights, and restored on another machine.

    python -m lance_llm.park save runs/experiment-qwen results/experiment-qwen/state
    python -m lance_llm.park restore results/experiment-qwen/state runs/experiment-qwen

A run that outlives one machine (the experiment's hours on a CPU) continues on the next one. `save`
copies the run directory except the merged weights of its checkpoints (GBs; each is its parent plus
its LoRA adapter, or its parent's weights copied when DPO had no pair), the evaluation results
cached for its checkpoints (`<lance cache>/eval/results/<fingerprint>/`) and `lance judge --own`'s
cache. `restore` copies them back where missing, rebuilds every checkpoint's weights in training
order from its parent and its adapter, and checks each against the fingerprint recorded at save and
every stage manifest's output hashes, so `lance run`, `lance eval` and `lance judge` resume from it
as from the original (nothing is redone, nothing trusted unchecked). Park a run while nothing writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import models
from .records import atomic_dir, atomic_write_text
from .rundir import RunDir, hash_path
from .stages.train import ADAPTER

VERSION = 1
PARK_JSON = "park.json"
EVAL_CACHE = "eval_cache"  # beside the parked run: DEST/eval_cache/<fingerprint>/
JUDGE_CACHE = "judge_own.sqlite"  # `lance judge --own`'s sampled answers and scores, all models
RUN = "run"                # the parked run directory: DEST/run/


class ParkError(RuntimeError):
    pass


def _weights(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def _copy(f: Path, out: Path) -> None:
    """Copy a file; a SQLite cache through SQLite's backup (its write-ahead log folded in, consistent
    even while a writer has it open)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if f.suffix != ".sqlite":
        shutil.copy2(f, out)
        return
    with contextlib.closing(sqlite3.connect(str(f))) as src, contextlib.closing(sqlite3.connect(str(out))) as dst:
        src.backup(dst)


def checkpoints(rd: RunDir) -> list[tuple[Path, Path | None]]:
    """(checkpoint, parent checkpoint or None for the base) of every finished checkpoint, in the
    order they were trained: M_0, then per iteration its SFT model and M_t; the seed-only control
    (scripts/experiment.py) last, trained from M_0."""
    out: list[tuple[Path, Path | None]] = []
    parent: Path | None = None
    for t in rd.iterations():
        for name in ("model",) if t == 0 else ("model_sft", "model"):
            if rd.finished(t, name):
                out.append((rd.path(t, name), parent))
                parent = rd.path(t, name)
    control = rd.root / "control" / "model"
    if (rd.root / "control" / "control.json").is_file() and control.is_dir() and rd.finished(0, "model"):
        out.append((control, rd.path(0, "model")))
    return out


def _base(rd: RunDir, cache_dir: str | None) -> tuple[Path, str]:
    run = json.loads(rd.run_json.read_text(encoding="utf-8"))
    base = run.get("base_model") or {}
    m = models.resolve(str(base.get("source")), cache_dir)
    if base.get("fingerprint") and m.fingerprint != base["fingerprint"]:
        raise ParkError(f"base {base.get('source')}: fingerprint {m.fingerprint}, the run was trained on "
                        f"{base['fingerprint']}")
    return m.path, m.fingerprint


def save(run_dir: str | Path, dest: str | Path, cache_dir: str | None = None) -> dict[str, Any]:
    """Park RUN_DIR in DEST (replaced atomically): DEST/run/ (the run without merged weights),
    DEST/eval_cache/, DEST/park.json. Refuses a checkpoint that could not be rebuilt (no adapter
    and not a copy of its parent): a run trained without LoRA cannot be parked."""
    rd, dest = RunDir(run_dir), Path(dest)
    if not rd.run_json.is_file():
        raise ParkError(f"{rd.root}: not a lance run directory (no run.json)")
    _, base_fp = _base(rd, cache_dir)
    entries, skip = [], set()
    fps = {base_fp}
    for ckpt, parent in checkpoints(rd):
        fp = models.fingerprint(ckpt)
        if (ckpt / ADAPTER / "adapter_config.json").is_file():
            how = "adapter"
        elif parent is not None and fp == models.fingerprint(parent):
            how = "copy"
        else:
            raise ParkError(f"{ckpt}: no LoRA adapter and not its parent's weights: it cannot be rebuilt "
                            "(train.method must be lora to park a run)")
        rel = lambda p: None if p is None else p.relative_to(rd.root).as_posix()  # noqa: E731
        entries.append({"checkpoint": rel(ckpt), "parent": rel(parent), "how": how, "fingerprint": fp})
        skip.update(_weights(ckpt))
        fps.add(fp)
    results = models.cache_root(cache_dir) / "eval" / "results"
    with atomic_dir(dest) as tmp:
        for f in sorted(rd.root.rglob("*")):
            rel = f.relative_to(rd.root)
            if (not f.is_file() or f in skip or any(part.startswith(".") for part in rel.parts)
                    or f.name.endswith((".sqlite-wal", ".sqlite-shm"))):
                continue  # hidden: the lock, fingerprint memos, atomic writes' temp folders
            _copy(f, tmp / RUN / rel)
        for fp in sorted(fps):
            if (results / fp).is_dir():
                shutil.copytree(results / fp, tmp / EVAL_CACHE / fp)
        judge = models.cache_root(cache_dir) / "judge_own" / "cache.sqlite"
        if judge.is_file():
            _copy(judge, tmp / JUDGE_CACHE)
        doc = {"version": VERSION, "run": str(rd.root), "checkpoints": entries}
        atomic_write_text(tmp / PARK_JSON, json.dumps(doc, indent=1) + "\n")
    return doc


def _rebuild(ckpt: Path, parent: Path, how: str) -> None:
    """Write CKPT's weight files: PARENT's merged with CKPT/adapter (in float32, as training
    merged it), or PARENT's copied."""
    if how == "copy":
        for w in _weights(parent):
            shutil.copy2(w, ckpt / w.name)
        return
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(parent), dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(ckpt / ADAPTER)).merge_and_unload()
    with tempfile.TemporaryDirectory(dir=ckpt.parent, prefix=f".{ckpt.name}.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for w in _weights(Path(tmp)):
            w.chmod(0o644)  # mkdtemp's folder is private; the weights need not be
            w.replace(ckpt / w.name)


def restore(src: str | Path, run_dir: str | Path, cache_dir: str | None = None,
            echo: Any = print) -> list[str]:
    """Bring a parked run back into RUN_DIR (files it lacks; nothing there is overwritten), rebuild
    the missing weights and check them; return the checkpoints rebuilt. Any mismatch is a
    ParkError naming the checkpoint or stage output, and its weights are removed again."""
    src, root = Path(src), Path(run_dir)
    doc = json.loads((src / PARK_JSON).read_text(encoding="utf-8"))
    if doc.get("version") != VERSION:
        raise ParkError(f"{src / PARK_JSON}: version {doc.get('version')!r}, this lance-llm reads {VERSION}")
    for f in sorted((src / RUN).rglob("*")):
        if f.is_file() and not (root / f.relative_to(src / RUN)).exists():
            _copy(f, root / f.relative_to(src / RUN))
    rd = RunDir(root)
    base, _ = _base(rd, cache_dir)
    rebuilt = []
    for e in doc["checkpoints"]:
        ckpt = root / e["checkpoint"]
        if not _weights(ckpt):
            echo(f"park: rebuilding {e['checkpoint']} ({e['how']}, from {e['parent'] or 'the base'})")
            _rebuild(ckpt, root / e["parent"] if e["parent"] else base, e["how"])
            rebuilt.append(e["checkpoint"])
        got = models.fingerprint(ckpt)
        if got != e["fingerprint"]:
            for w in _weights(ckpt):
                w.unlink()
            raise ParkError(f"{ckpt}: rebuilt with fingerprint {got}, parked with {e['fingerprint']}")
    for t in rd.iterations():  # what `lance run` checks before it skips a stage
        for m in sorted(rd.iter_dir(t).glob("*.manifest.json")):
            for name, digest in (json.loads(m.read_text(encoding="utf-8")).get("outputs") or {}).items():
                if (rd.iter_dir(t) / name).exists() and hash_path(rd.iter_dir(t) / name) != digest:
                    raise ParkError(f"{rd.iter_dir(t) / name}: differs from what {m.name} recorded")
    results = models.cache_root(cache_dir) / "eval" / "results"
    for f in sorted((src / EVAL_CACHE).rglob("*")):
        out = results / f.relative_to(src / EVAL_CACHE)
        if f.is_file() and not out.exists():
            _copy(f, out)
    judge = models.cache_root(cache_dir) / "judge_own" / "cache.sqlite"
    if (src / JUDGE_CACHE).is_file() and not judge.exists():
        _copy(src / JUDGE_CACHE, judge)
    return rebuilt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lance_llm.park", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="park RUN_DIR in DEST without merged weights")
    s.add_argument("run_dir")
    s.add_argument("dest")
    r = sub.add_parser("restore", help="bring a parked run back, its weights rebuilt and checked")
    r.add_argument("src")
    r.add_argument("run_dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "save":
            doc = save(args.run_dir, args.dest)
            print(f"{args.dest}: {len(doc['checkpoints'])} checkpoints parked")
        else:
            done = restore(args.src, args.run_dir)
            print(f"{args.run_dir}: restored ({len(done)} checkpoints rebuilt)")
    except (ParkError, models.ModelError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
