"""A durable call cache that every backend goes through.

Each result is stored in SQLite under sha256(model fingerprint, request, sampling params, seed)
and committed after every batch, so a crash loses at most the batch in flight and a resumed run
asks the model only for what it has not answered yet. The wrapped backend is built lazily: a
stage whose calls are all cached never loads the model.

    cached = CachedBackend(lambda: HFBackend(path, fp), fingerprint=fp, path=run_dir / "cache.sqlite")
    cached.label = "review seed"        # shown on the progress bar
    cached.generate(requests); cached.stats  # {"hits": ..., "misses": ...}
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .base import Backend, GenerateRequest, ScoreRequest, request_hash


class CachedBackend(Backend):
    def __init__(
        self,
        make_inner: Callable[[], Backend],
        fingerprint: str,
        path: str | Path,
        chunk_size: int = 16,
        progress: bool = True,
    ) -> None:
        self._make_inner = make_inner
        self._inner: Backend | None = None
        self.fingerprint = fingerprint
        self.chunk_size = chunk_size
        self.progress = progress
        self.label = ""
        self.stats = {"hits": 0, "misses": 0}
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "model TEXT NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL)"
        )
        # A write-ahead record of every request handed to the model. A key attempted twice was lost
        # in flight by a crash; this is how a resumed run proves it repeated no more than one chunk.
        self.db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT NOT NULL, at REAL NOT NULL)")
        self.db.commit()

    @property
    def tokens(self) -> dict[str, int]:  # type: ignore[override]
        """Tokens the model processed for this backend's misses (cached answers cost none)."""
        return dict(getattr(self._inner, "tokens", None) or {"prompt": 0, "generated": 0})

    @property
    def inner(self) -> Backend:
        if self._inner is None:
            self._inner = self._make_inner()
        return self._inner

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return self._run(requests, lambda batch: self.inner.generate(batch))  # type: ignore[arg-type]

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        return self._run(requests, lambda batch: self.inner.score(batch))  # type: ignore[arg-type]

    def _run(self, requests: Sequence[Any], call: Callable[[list[Any]], list[Any]]) -> list[Any]:
        keys = [request_hash(self.fingerprint, r) for r in requests]
        results: dict[str, Any] = {}
        distinct = list(dict.fromkeys(keys))
        for i in range(0, len(distinct), 500):  # SQLite caps the number of bound parameters
            part = distinct[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, blob in self.db.execute(f"SELECT key, result FROM calls WHERE key IN ({marks})", part):
                results[key] = json.loads(blob)
        multiplicity = Counter(keys)
        todo = [(k, r) for k, r in dict(zip(keys, requests, strict=True)).items() if k not in results]
        self.stats["hits"] += len(keys) - len(todo)
        bar = tqdm(
            total=len(keys),
            initial=len(keys) - len(todo),
            desc=self.label or "llm",
            unit="req",
            disable=not self.progress or not todo,
            file=sys.stderr,
            leave=False,
        )
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            with self.db:
                now = time.time()
                self.db.executemany("INSERT INTO attempts VALUES (?, ?)", [(k, now) for k, _ in chunk])
            answers = call([r for _, r in chunk])
            if len(answers) != len(chunk):
                raise RuntimeError(f"backend returned {len(answers)} results for {len(chunk)} requests")
            rows = []
            for (key, req), ans in zip(chunk, answers, strict=True):
                results[key] = ans
                rows.append((key, req.key()["kind"], self.fingerprint, json.dumps(req.key()), json.dumps(ans)))
            # one transaction per chunk: a crash loses at most the chunk in flight
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?)", rows)
            self.stats["misses"] += len(chunk)
            bar.update(sum(multiplicity[k] for k, _ in chunk))
        bar.close()
        return [results[k] for k in keys]

    def count(self) -> int:
        return cache_counts(self.path)["calls"]

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        self.db.close()


def cache_counts(path: str | Path) -> dict[str, int]:
    """Answers stored, and requests the model was asked more than once (each extra ask counts
    once: a crash lost that answer in flight). Read-only; the torture script audits runs with it."""
    db = sqlite3.connect(str(path))
    try:
        calls = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        repeated = db.execute("SELECT COUNT(*) - COUNT(DISTINCT key) FROM attempts").fetchone()[0]
    finally:
        db.close()
    return {"calls": int(calls), "repeated": int(repeated)}
