"""A LoRA run directory parked without its merged weights, and restored on another machine.

    python -m lance_llm.park save runs/experiment-qwen results/experiment-qwen/state
    python -m lance_llm.park restore results/experiment-qwen/state runs/experiment-qwen

A run that outlives one machine (the experiment's hours on a CPU) continues on the next one. `save`
copies the run directory except the merged weights of its checkpoints (GBs; each is its parent plus
its LoRA adapter, or its parent's weights copied when DPO had no pair), the evaluation results
cached for its checkpoints (`<lance cache>/eval/results/<fingerprint>/`) and `lance judge --own`'s
call cache. `restore` rebuilds every checkpoint's weights in training order from its parent and its
adapter, checks each against the fingerprint recorded at save and its stage manifest's output hash,
and only then puts the run directory in place and merges the caches back, so `lance run`, `lance
eval` and `lance judge` resume from it as from the original: nothing is redone, nothing trusted
unchecked. A rebuild is bit for bit where the merge's float32 arithmetic is (measured: Qwen's M_0,
trained with AVX2 kernels, rebuilt identically with torch's and MKL's forced down to SSE4.2); where
it is not, restore refuses by name and nothing is put in place.
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
from .lineage import merge_adapters
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


def _keep_models(cache: Path, fps: set[str]) -> None:
    """Drop from a copied call cache the calls of models that are not the run's: the judge cache is
    one per machine (every model `lance judge --own` ever ran on, tests' tiny ones included). A
    call's model is "<weights fingerprint>|<engine numerics>" (backends/__init__.py)."""
    with contextlib.closing(sqlite3.connect(str(cache))) as db:
        with db:
            db.execute("CREATE TEMP TABLE keep (fp TEXT PRIMARY KEY)")
            db.executemany("INSERT INTO keep VALUES (?)", [(fp,) for fp in fps])
            db.execute("DELETE FROM calls WHERE substr(model, 1, instr(model || '|', '|') - 1) NOT IN "
                       "(SELECT fp FROM keep)")
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'attempts'").fetchone():
                db.execute("DELETE FROM attempts WHERE key NOT IN (SELECT key FROM calls)")
        db.execute("VACUUM")


def _recorded(rd: RunDir, t: int, name: str) -> str | None:
    """The output hash a manifest of iteration t recorded for `name`, if any."""
    for m in sorted(rd.iter_dir(t).glob("*.manifest.json")):
        digest = (rd.manifest(t, m.name.removesuffix(".manifest.json")) or {}).get("outputs", {}).get(name)
        if digest:
            return str(digest)
    return None


def checkpoints(rd: RunDir) -> list[tuple[Path, Path | None]]:
    """(checkpoint, parent checkpoint or None for the base) of every finished checkpoint that is
    still what its stage recorded, in training order: M_0, then per iteration its SFT model and M_t
    (up to the first that is not: what follows was trained from it); the seed-only control
    (scripts/experiment.py) last, trained from M_0. Anything else is recomputed on resume anyway."""
    out: list[tuple[Path, Path | None]] = []
    parent: Path | None = None
    for t in rd.iterations():
        for name in ("model",) if t == 0 else ("model_sft", "model"):
            ckpt = rd.path(t, name)
            if not ckpt.is_dir() or not _weights(ckpt):
                break
            if _recorded(rd, t, name) != hash_path(ckpt):
                return out + _control(rd, out)
            out.append((ckpt, parent))
            parent = ckpt
    return out + _control(rd, out)


def _control(rd: RunDir, chain: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path | None]]:
    m0, control, meta = rd.path(0, "model"), rd.root / "control" / "model", rd.root / "control" / "control.json"
    if not meta.is_file() or not _weights(control) or m0 not in [c for c, _ in chain]:
        return []
    doc = json.loads(meta.read_text(encoding="utf-8"))
    if doc.get("fingerprint") != models.fingerprint(control) or doc.get("start_fingerprint") != models.fingerprint(m0):
        return []
    return [(control, m0)]


def _checkpoint_dirs(root: Path) -> list[Path]:
    """Every folder a checkpoint is written to, finished or not."""
    return [p for p in [*root.glob("iter_*/model"), *root.glob("iter_*/model_sft"), root / "control" / "model"]
            if p.is_dir()]


def _base(rd: RunDir, cache_dir: str | None) -> tuple[Path, str]:
    run = json.loads(rd.run_json.read_text(encoding="utf-8"))
    base = run.get("base_model") or {}
    m = models.resolve(str(base.get("source")), cache_dir)
    if base.get("fingerprint") and m.fingerprint != base["fingerprint"]:
        raise ParkError(f"base {base.get('source')}: fingerprint {m.fingerprint}, the run was trained on "
                        f"{base['fingerprint']}")
    return m.path, m.fingerprint


def save(run_dir: str | Path, dest: str | Path, cache_dir: str | None = None) -> dict[str, Any]:
    """Park RUN_DIR in DEST (replaced atomically): DEST/run/ (the run without the merged weights of
    its checkpoints, and without checkpoints that are unfinished or no longer current), DEST/eval_cache/,
    DEST/judge_own.sqlite, DEST/park.json. Refuses a run another process is using, and a checkpoint
    that could not be rebuilt (no adapter, not a copy of its parent): a run trained without LoRA."""
    rd, dest = RunDir(run_dir), Path(dest)
    if not rd.run_json.is_file():
        raise ParkError(f"{rd.root}: not a lance run directory (no run.json)")
    rd.check()  # another process writing it would make the copy inconsistent
    _, base_fp = _base(rd, cache_dir)
    entries, skip, fps = [], set(), {base_fp}
    kept = checkpoints(rd)
    for ckpt, parent in kept:
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
    dropped = [d for d in _checkpoint_dirs(rd.root) if d not in [c for c, _ in kept]]
    results = models.eval_results_dir(cache_dir)
    for old in dest.parent.glob(f".{dest.name}.*"):  # a save killed midway
        shutil.rmtree(old, ignore_errors=True)
    with atomic_dir(dest) as tmp:
        for f in sorted(rd.root.rglob("*")):
            rel = f.relative_to(rd.root)
            if (not f.is_file() or f in skip or any(part.startswith(".") for part in rel.parts)
                    or f.name.endswith((".sqlite-wal", ".sqlite-shm")) or any(d in f.parents for d in dropped)):
                continue  # hidden: the lock, fingerprint memos, atomic writes' temp folders
            _copy(f, tmp / RUN / rel)
        for fp in sorted(fps):
            if (results / fp).is_dir():
                shutil.copytree(results / fp, tmp / EVAL_CACHE / fp)
        if (judge := models.judge_cache_path(cache_dir)).is_file():
            _copy(judge, tmp / JUDGE_CACHE)
            _keep_models(tmp / JUDGE_CACHE, fps)
        doc = {"version": VERSION, "run": str(rd.root), "checkpoints": entries,
               "left_out": [d.relative_to(rd.root).as_posix() for d in dropped]}
        atomic_write_text(tmp / PARK_JSON, json.dumps(doc, indent=1) + "\n")
    return doc


def _rebuild(ckpt: Path, parent: Path, how: str) -> None:
    """Write CKPT's weight files: PARENT's merged with CKPT/adapter (in float32, as training
    merged it), or PARENT's copied."""
    if how == "copy":
        for w in _weights(parent):
            shutil.copy2(w, ckpt / w.name)
        return
    model = merge_adapters(parent, [ckpt / ADAPTER])
    with tempfile.TemporaryDirectory(dir=ckpt.parent, prefix=f".{ckpt.name}.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for w in _weights(Path(tmp)):
            w.chmod(0o644)  # mkdtemp's folder is private; the weights need not be
            w.replace(ckpt / w.name)


def restore(src: str | Path, run_dir: str | Path, cache_dir: str | None = None,
            echo: Any = print) -> list[str]:
    """Bring a parked run back as RUN_DIR, which must not exist yet (or be empty), and return the
    checkpoints rebuilt. The run is assembled in a hidden folder beside it and renamed into place
    only once every checkpoint's weights are rebuilt and match both the fingerprint parked and the
    hash its stage's manifest recorded: a restore that fails or is killed leaves no RUN_DIR behind,
    and running it again starts over. Then the parked evaluation and judge caches are merged in."""
    src, root = Path(src), Path(run_dir)
    doc = json.loads((src / PARK_JSON).read_text(encoding="utf-8"))
    if doc.get("version") != VERSION:
        raise ParkError(f"{src / PARK_JSON}: version {doc.get('version')!r}, this lance-llm reads {VERSION}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ParkError(f"{root}: exists and is not empty; a parked run is restored into a new directory")
    rebuilt = []
    for old in root.parent.glob(f".{root.name}.*"):  # a restore killed midway
        shutil.rmtree(old, ignore_errors=True)
    with atomic_dir(root) as tmp:
        shutil.copytree(src / RUN, tmp, dirs_exist_ok=True)
        rd = RunDir(tmp)
        base, _ = _base(rd, cache_dir)
        for e in doc["checkpoints"]:
            ckpt = tmp / e["checkpoint"]
            echo(f"park: rebuilding {e['checkpoint']} ({e['how']}, from {e['parent'] or 'the base'})")
            _rebuild(ckpt, tmp / e["parent"] if e["parent"] else base, e["how"])
            got = models.fingerprint(ckpt)
            if got != e["fingerprint"]:
                raise ParkError(f"{root / e['checkpoint']}: rebuilt with fingerprint {got}, parked with "
                                f"{e['fingerprint']} (nothing restored)")
            t, name = ckpt.parent.name, ckpt.name
            if t.startswith("iter_") and _recorded(rd, int(t[5:]), name) != hash_path(ckpt):
                raise ParkError(f"{root / e['checkpoint']}: differs from what its stage's manifest recorded "
                                "(nothing restored)")
            rebuilt.append(e["checkpoint"])
    results = models.eval_results_dir(cache_dir)
    for f in sorted((src / EVAL_CACHE).rglob("*")):
        out = results / f.relative_to(src / EVAL_CACHE)
        if f.is_file() and not out.exists():
            _copy(f, out)
    if (src / JUDGE_CACHE).is_file():
        _merge_cache(src / JUDGE_CACHE, models.judge_cache_path(cache_dir))
    return rebuilt


def _merge_cache(parked: Path, cache: Path) -> None:
    """The parked LLM call cache's answers added to CACHE (backends/cache.py's `calls` table);
    answers CACHE already holds are kept."""
    if not cache.exists():
        _copy(parked, cache)
        return
    with contextlib.closing(sqlite3.connect(str(cache))) as db:
        db.execute("ATTACH DATABASE ? AS parked", (str(parked),))
        with db:
            db.execute("INSERT OR IGNORE INTO main.calls SELECT * FROM parked.calls")
        db.execute("DETACH DATABASE parked")


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
            print(f"{args.run_dir}: restored, {len(done)} checkpoints rebuilt and checked")
    except (ParkError, models.ModelError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
