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
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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

    mode: str  # review.mode: sampled, expected, criteria, combined, likelihood or checks
    score: float | None
    # per mode: one per judge reply (None = failed); criteria: P(yes) of each criterion;
    # combined: (expected, criteria); likelihood: (fluency, relevance, log P(end)) in nats;
    # checks: (share of checks passed, checks kept, fallback score)
    samples: list[float | None] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)  # raw judge text (sampled mode), checks' code
    parse_failures: int = 0
    raw_score: float | None = None  # the judge's own score when `score` was rank-scaled
    judge: str = ""  # who judged: the answering model's fingerprint and the mode ("" = not recorded)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Review:
        d = _mapping(d, "review")
        return Review(
            mode=_str(d, "mode"),
            score=_opt_float(d, "score"),
            samples=[_number(s, f"samples[{i}]", optional=True) for i, s in enumerate(_list(d, "samples"))],
            replies=[_string(r, f"replies[{i}]") for i, r in enumerate(_list(d, "replies"))],
            parse_failures=_int(d, "parse_failures", 0),
            raw_score=_opt_float(d, "raw_score"),
            judge=_str(d, "judge", ""),
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
        d = _mapping(d, "record")
        review = d.get("review")
        origin = d.get("origin", "seed")
        if origin not in ("seed", "new", "degraded"):
            raise ValueError(f"unknown origin {origin!r}")
        return Sample(
            id=_str(d, "id"),
            instruction=_str(d, "instruction"),
            response=_str(d, "response"),
            origin=origin,
            parent_id=_opt_str(d, "parent_id"),
            iteration=_int(d, "iteration", 0),
            stage=_str(d, "stage", "seed"),
            model=_str(d, "model", ""),
            review=None if review is None else Review.from_dict(review),
        )


# Field readers for from_dict. They check types instead of converting with str()/int()/float():
# str() turns a dict into "{'a': 1}", int() truncates 3.7 and float() overflows on a 400-digit
# integer (OverflowError, which read_records would not report as a bad record). Every failure is a
# ValueError naming the field, which read_records turns into a RecordError naming file:line.
_MISSING: Any = object()


def _mapping(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    return d


def _get(d: dict[str, Any], key: str, default: Any) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise KeyError(key)
    return default


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _str(d: dict[str, Any], key: str, default: Any = _MISSING) -> str:
    return _string(_get(d, key, default), key)


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return None if value is None else _string(value, key)


def _number(value: Any, key: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    # bool is an int subclass, and a score of `true` is a bug upstream, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {key!r} must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise ValueError(f"field {key!r} is out of range") from None
    if not math.isfinite(out):  # json.loads accepts NaN/Infinity; no stage ever writes them
        raise ValueError(f"field {key!r} must be finite, got {out}")
    return out


def _float(d: dict[str, Any], key: str) -> float:
    return _number(_get(d, key, _MISSING), key)  # type: ignore[return-value]


def _opt_float(d: dict[str, Any], key: str) -> float | None:
    return _number(d.get(key), key, optional=True)


def _int(d: dict[str, Any], key: str, default: Any = _MISSING) -> int:
    value = _get(d, key, default)
    if isinstance(value, float) and value.is_integer():  # 2.0 from a tool that writes all numbers as floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {key!r} must be an integer, got {value!r:.40}")
    return value


def _list(d: dict[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    if not isinstance(value, list):  # a string would otherwise be read as a list of characters
        raise ValueError(f"field {key!r} must be a list, got {type(value).__name__}")
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
        d = _mapping(d, "record")
        return SFTExample(
            id=_str(d, "id"),
            prompt=_messages(d, "prompt"),
            completion=_messages(d, "completion"),
            source=_str(d, "source"),
            iteration=_int(d, "iteration"),
            score=_opt_float(d, "score"),
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
        d = _mapping(d, "record")
        return PreferencePair(
            id=_str(d, "id"),
            prompt=_messages(d, "prompt"),
            chosen=_messages(d, "chosen"),
            rejected=_messages(d, "rejected"),
            parent_id=_str(d, "parent_id"),
            chosen_id=_str(d, "chosen_id"),
            rejected_id=_str(d, "rejected_id"),
            score_chosen=_float(d, "score_chosen"),
            score_rejected=_float(d, "score_rejected"),
            iteration=_int(d, "iteration"),
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


# The longest JSONL line read (in bytes, without its newline). A line is read into memory whole,
# so a corrupt or hostile file with no newline would otherwise be read whole too.
MAX_LINE_BYTES = 64 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


def json_or_error(text: str, path: str | Path, lineno: int | None = None) -> Any:
    """json.loads, with every way it can fail turned into a RecordError naming file:line
    (`lineno` for a JSONL line; else the line the decoder stopped at, when it knows it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = lineno if lineno is not None else e.lineno
        raise RecordError(f"{path}:{line}: invalid JSON: {e.msg} (column {e.colno})") from e
    except RecursionError as e:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise RecordError(f"{where}: invalid JSON: nested too deeply") from e
    except ValueError as e:  # e.g. an integer beyond Python's 4300-digit conversion limit
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise RecordError(f"{where}: invalid JSON: {e}") from e


def iter_jsonl(path: str | Path, max_line_bytes: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise RecordError naming file:line.

    Reads bytes line by line and decodes each line itself, so a non-UTF-8 byte is reported on its
    own line (a text-mode file decodes 8 KiB blocks ahead and would blame an earlier line), and a
    line longer than `max_line_bytes` (default MAX_LINE_BYTES) is refused without being read whole.
    """
    path = Path(path)
    limit = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    try:
        fh = path.open("rb")
    except OSError as e:
        raise RecordError(f"{path}: cannot open: {e.strerror or e}") from e
    with fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline(limit + 1)
            except OSError as e:
                raise RecordError(f"{path}:{lineno + 1}: cannot read: {e.strerror or e}") from e
            if not raw:
                return
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise RecordError(f"{path}:{lineno}: line is {_line_size(fh, len(raw))}, over the limit of "
                                  f"{limit:,} bytes (lance_llm.records.MAX_LINE_BYTES)")
            if lineno == 1 and raw.startswith(_BOM):  # tolerated, as editors on Windows write one
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1}: {e.reason})") from e
            if not line.strip():
                continue
            obj = json_or_error(line, path, lineno)
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _line_size(fh: Any, seen: int, cap: int = 1 << 30) -> str:
    """The length of an over-long line, counted in bounded blocks (never held in memory)."""
    size = seen
    while size < cap:
        block = fh.readline(1 << 20)
        if not block:
            break
        size += len(block) - (1 if block.endswith(b"\n") else 0)
        if block.endswith(b"\n"):
            return f"{size:,} bytes"
    return f"{size:,} bytes" if size < cap else f"over {cap:,} bytes"


def read_records(path: str | Path, cls: type[R], max_line_bytes: int | None = None) -> list[R]:
    """Every record of a JSONL file as `cls`; any bad line is a RecordError naming file:line."""
    out: list[R] = []
    for lineno, obj in iter_jsonl(path, max_line_bytes):
        try:
            out.append(cls.from_dict(obj))  # type: ignore[arg-type]
        except KeyError as e:
            raise RecordError(f"{path}:{lineno}: missing field {e.args[0]!r} for {cls.__name__} "
                              f"(fields present: {present_fields(obj)})") from e
        except (TypeError, ValueError) as e:
            raise RecordError(f"{path}:{lineno}: bad {cls.__name__} record: {e}") from e
    return out


def present_fields(obj: dict[str, Any], limit: int = 20) -> str:
    """The field names of a record, for an error message (a few, for a record with thousands)."""
    names = sorted(obj)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more if names else "none"


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a hidden temp folder beside `out` to fill; when the block ends it replaces `out` in one
    rename, so `out` is never half-written. On an error the temp folder is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files should read like any other
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
