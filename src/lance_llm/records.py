"""The records that flow through a LANCE iteration, and their JSONL files.

One record type, `Sample`, carries an (instruction, response) pair from the seed through review,
generation, cleaning and review again; it knows where it came from (iteration, stage, model
fingerprint, parent seed). Annotation turns reviewed samples into `SFTExample`s and
`PreferencePair`s, written in TRL's conversational formats so the trainers read them unchanged:

    SFT  : {"prompt": [system, user], "completion": [assistant], ...metadata}
    DPO  : {"prompt": [system, user], "chosen": [assistant], "rejected": [assistant], ...}

Every reader names the file and line of a bad record; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

Origin = Literal["seed", "new", "degraded"]


class RecordError(ValueError):
    """A record file that cannot be read as the records it should hold."""


@dataclass
class Review:
    """The judge's verdict on one (instruction, response) pair.

    `score` is None when no reply parsed: an unscored pair is never selected or paired.
    """

    mode: str  # "sampled" or "expected"
    score: float | None
    samples: list[float | None] = field(default_factory=list)  # one per judge reply; None = failed
    replies: list[str] = field(default_factory=list)  # raw judge text (sampled mode)
    parse_failures: int = 0
    raw_score: float | None = None  # the judge's own score when `score` was rank-scaled

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Review:
        return Review(
            mode=str(d["mode"]),
            score=None if d.get("score") is None else float(d["score"]),
            samples=[None if s is None else float(s) for s in d.get("samples", [])],
            replies=[str(r) for r in d.get("replies", [])],
            parse_failures=int(d.get("parse_failures", 0)),
            raw_score=None if d.get("raw_score") is None else float(d["raw_score"]),
        )


@dataclass
class Sample:
    """An (instruction, response) pair with its provenance and, once reviewed, its review."""

    id: str
    instruction: str
    response: str
    origin: Origin = "seed"
    parent_id: str | None = None  # the seed this was generated from
    iteration: int = 0
    stage: str = "seed"
    model: str = ""  # fingerprint of the model that wrote it ("" for human data)
    review: Review | None = None

    @property
    def score(self) -> float | None:
        return None if self.review is None else self.review.score

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Sample:
        review = d.get("review")
        origin = d.get("origin", "seed")
        if origin not in ("seed", "new", "degraded"):
            raise ValueError(f"unknown origin {origin!r}")
        return Sample(
            id=str(d["id"]),
            instruction=_text(d, "instruction"),
            response=_text(d, "response"),
            origin=origin,
            parent_id=d.get("parent_id"),
            iteration=int(d.get("iteration", 0)),
            stage=str(d.get("stage", "seed")),
            model=str(d.get("model", "")),
            review=None if review is None else Review.from_dict(review),
        )


def _text(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def chat_prompt(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@dataclass
class SFTExample:
    """A supervised example in TRL's conversational prompt-completion format.

    Prompt-completion (rather than one `messages` list) makes TRL compute the loss on the
    response tokens only, which is the method's NLL-on-response objective.
    """

    id: str
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    source: str  # "seed", "review_example" or "generated"
    iteration: int
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SFTExample:
        return SFTExample(
            id=str(d["id"]),
            prompt=_messages(d, "prompt"),
            completion=_messages(d, "completion"),
            source=str(d["source"]),
            iteration=int(d["iteration"]),
            score=None if d.get("score") is None else float(d["score"]),
        )


@dataclass
class PreferencePair:
    """A DPO pair in TRL's conversational preference format, with both scores kept."""

    id: str
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    parent_id: str
    chosen_id: str
    rejected_id: str
    score_chosen: float
    score_rejected: float
    iteration: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PreferencePair:
        return PreferencePair(
            id=str(d["id"]),
            prompt=_messages(d, "prompt"),
            chosen=_messages(d, "chosen"),
            rejected=_messages(d, "rejected"),
            parent_id=str(d["parent_id"]),
            chosen_id=str(d["chosen_id"]),
            rejected_id=str(d["rejected_id"]),
            score_chosen=float(d["score_chosen"]),
            score_rejected=float(d["score_rejected"]),
            iteration=int(d["iteration"]),
        )


def _messages(d: dict[str, Any], key: str) -> list[dict[str, str]]:
    msgs = d[key]
    if not isinstance(msgs, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in msgs
    ):
        raise ValueError(f"field {key!r} must be a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


R = TypeVar("R", Sample, SFTExample, PreferencePair)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise RecordError naming file:line."""
    path = Path(path)
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as e:
        raise RecordError(f"{path}: cannot open: {e.strerror}") from e
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
                if not isinstance(obj, dict):
                    raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError as e:
            raise RecordError(f"{path}:{lineno + 1}: not valid UTF-8 ({e.reason})") from e


def read_records(path: str | Path, cls: type[R]) -> list[R]:
    out: list[R] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(cls.from_dict(obj))  # type: ignore[arg-type]
        except KeyError as e:
            raise RecordError(f"{path}:{lineno}: missing field {e.args[0]!r} for {cls.__name__}") from e
        except (TypeError, ValueError) as e:
            raise RecordError(f"{path}:{lineno}: bad {cls.__name__} record: {e}") from e
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_records(path: str | Path, records: Iterable[Any]) -> int:
    """Atomically write records (dataclasses with to_dict, or dicts) as JSONL; return the count."""
    lines = []
    for r in records:
        d = r if isinstance(r, dict) else r.to_dict()
        lines.append(json.dumps(d, ensure_ascii=False, sort_keys=True))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def stable_int(*parts: object) -> int:
    """A seed derived from its parts, stable across processes (unlike hash())."""
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def make_id(iteration: int, kind: str, parent: str, *index: object) -> str:
    """A deterministic, short id for a generated record: `it1-new-3f2a9c01d4`."""
    digest = hashlib.sha256("\x1f".join(map(str, (iteration, kind, parent, *index))).encode()).hexdigest()
    return f"it{iteration}-{kind}-{digest[:10]}"
