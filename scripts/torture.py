"""Crash torture: SIGKILL a small real `lance run` at random moments, resume it, and prove nothing
was lost, duplicated or changed.

    python scripts/torture.py --trials 10 --out torture-results.json       # the full version (~15 min)
    python scripts/torture.py --trials 2 --kills 1                         # the CI version

1. A reference run of configs/tiny.yaml, never interrupted.
2. Each trial starts the same run in a fresh directory, kills its whole process group with SIGKILL
   after a random delay (uniform over the reference's wall time), `--kills` times, then lets the
   run finish by running the same command again (each start bounded by --timeout seconds).
3. Checks per trial: the run finished; every data artifact (all JSONL files and model weights)
   is byte-identical to the reference (so no record was lost or duplicated); the LLM calls asked
   twice (the cache's write-ahead `attempts` log) are at most one cache chunk per kill.

Exit status 0 when every trial passes; the JSON summary goes to stdout and to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from lance_llm.backends.cache import cache_counts
from lance_llm.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
# data artifacts that must match the reference; manifests, funnels and trainer logs carry times
ARTIFACTS = ("*.jsonl", "model*/model.safetensors", "model*/config.json")
# both branches and DPO run on the tiny config with these (rank scale: 5.0 = the seed's median)
DEFAULT_SET = ["generate.threshold=5.0", "generate.n_degraded=4", "annotate.pair_margin=0.0"]


def lance(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "lance_llm.cli", "run", str(ROOT / "configs" / "tiny.yaml"),
            "--run-dir", str(run_dir), *extra]


def start(run_dir: Path, extra: list[str], log: Path) -> subprocess.Popen:
    fh = log.open("ab")
    # a new session, so the kill reaches every process the run started
    return subprocess.Popen(lance(run_dir, extra), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_to_end(run_dir: Path, extra: list[str], log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.time()
    proc = start(run_dir, extra, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -9
    return rc, time.time() - t0


def artifacts(run_dir: Path) -> dict[str, str]:
    out, rd = {}, RunDir(run_dir)
    for it in map(rd.iter_dir, rd.iterations()):
        for pattern in ARTIFACTS:
            for p in sorted(it.glob(pattern)):
                out[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def trial(i: int, work: Path, extra: list[str], reference: dict[str, str], ref_seconds: float, kills: int,
          chunk: int, timeout: float, rng: random.Random) -> dict:
    run_dir = work / f"trial_{i:02d}"
    log = work / f"trial_{i:02d}.log"
    killed_at = []
    for _ in range(kills):
        delay = rng.uniform(1.0, 0.9 * ref_seconds)  # inside the run, so the kill lands
        proc = start(run_dir, extra, log)
        try:
            proc.wait(timeout=delay)  # it may finish before the kill: then there is nothing to kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at.append(round(delay, 1))
    rc, seconds = run_to_end(run_dir, extra, log, timeout)
    got = artifacts(run_dir) if rc == 0 else {}
    diff = sorted(k for k in set(reference) | set(got) if reference.get(k) != got.get(k))
    cache = RunDir(run_dir).cache
    counts = cache_counts(cache) if cache.exists() else {"calls": 0, "repeated": 0}
    ok = rc == 0 and not diff and counts["repeated"] <= chunk * len(killed_at)
    return {"trial": i, "ok": ok, "exit": rc, "killed_at_s": killed_at, "resume_s": round(seconds, 1),
            "artifacts_differing": diff, "llm_calls": counts["calls"], "repeated_llm_calls": counts["repeated"],
            "allowed_repeats": chunk * len(killed_at)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kills", type=int, default=1, help="SIGKILLs per trial before it may finish")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "torture")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for one start of the run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=list(DEFAULT_SET), metavar="KEY=VALUE",
                    help=f"config override for the tiny run (default: {' '.join(DEFAULT_SET)})")
    args = ap.parse_args()

    import shutil

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    extra = [x for o in args.overrides for x in ("--set", o)]
    from lance_llm.config import load_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml", args.overrides)
    chunk = cfg.backend.batch_size * 2  # CachedBackend's commit unit, as the loop builds it
    t0 = time.time()
    rc, ref_seconds = run_to_end(args.work / "reference", extra, args.work / "reference.log", args.timeout)
    if rc != 0:
        print(f"reference run failed (exit {rc}); see {args.work / 'reference.log'}", file=sys.stderr)
        return 1
    reference = artifacts(args.work / "reference")
    rng = random.Random(args.seed)
    results = []
    for i in range(args.trials):
        r = trial(i, args.work, extra, reference, ref_seconds, args.kills, chunk, args.timeout, rng)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    summary = {
        "ok": all(r["ok"] for r in results),
        "trials": len(results),
        "passed": sum(r["ok"] for r in results),
        "kills": sum(len(r["killed_at_s"]) for r in results),
        "reference_seconds": round(ref_seconds, 1),
        "reference_artifacts": len(reference),
        "total_seconds": round(time.time() - t0, 1),
        "results": results,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
