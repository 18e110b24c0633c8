"""Read seed data (and review examples) from JSONL, JSON, or a saved HF dataset.

Field names are configurable (`data.instruction_field`, `data.response_field`,
`data.input_field`). The Self-Instruct seed-task format (`instruction` + `instances: [{input,
output}]`) is recognised by its `instances` field: one seed per instance. An optional input is
appended to the instruction, as Self-Instruct presents it. Every error names the file and the
line (or row) and the missing field; nothing is skipped silently.

    seeds = load_seed(cfg.data)                   # the shipped default set when seed_path is None
    # data.seed_path: [shipped, ../shared/data/self_instruct/seed_tasks.jsonl] reads both, in order
    examples = load_review_examples(cfg.data)     # the shipped review (EFT) examples
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DataConfig
from .records import RecordError, Sample, iter_jsonl, json_or_error, present_fields, stable_int

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_SEED = DATA_DIR / "seed.jsonl"
DEFAULT_REVIEW_EXAMPLES = DATA_DIR / "review_examples.jsonl"


def _rows(path: Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs; the location is `file:line` or `dataset[row]`, for error messages."""
    if fmt == "auto":
        if path.is_dir():
            fmt = "hf"
        elif path.suffix == ".json":
            fmt = "json"
        else:
            fmt = "jsonl"
    if fmt == "jsonl":
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj
    elif fmt == "json":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError as e:
            raise RecordError(f"{path}: file not found") from e
        except OSError as e:  # a directory given with format=json, no permission, ...
            raise RecordError(f"{path}: cannot read: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise RecordError(f"{path}: not valid UTF-8 ({e.reason})") from e
        data = json_or_error(text, path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of objects")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise RecordError(f"{path}[{i}]: expected an object, got {type(obj).__name__}")
            yield f"{path}[{i}]", obj
    elif fmt == "hf":
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for a bad folder
            raise RecordError(f"{path}: not a saved HF dataset ({e})") from e
        if hasattr(ds, "keys"):  # a DatasetDict: take its train split
            if "train" not in ds:
                raise RecordError(f"{path}: dataset has no 'train' split (splits: {list(ds.keys())})")
            ds = ds["train"]
        for i, obj in enumerate(ds):
            yield f"{path}[{i}]", dict(obj)
    else:
        raise RecordError(f"{path}: unknown format {fmt!r}")


def _field(where: str, row: dict[str, Any], name: str) -> str:
    if name not in row:
        raise RecordError(f"{where}: missing field {name!r} (fields present: {present_fields(row)})")
    value = row[name]
    if not isinstance(value, str):
        raise RecordError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _id(where: str, row: dict[str, Any], default: str) -> str:
    """The record's own `id` (a string or an integer), else `default`; never str() of an object."""
    value = row.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"{where}: field 'id' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def _join(instruction: str, context: str | None) -> str:
    return f"{instruction.strip()}\n\n{context.strip()}" if context and context.strip() else instruction.strip()


SHIPPED = "shipped"  # in data.seed_path: the seed set shipped with lance-llm


def seed_files(cfg: DataConfig) -> list[Path]:
    """The seed files `data.seed_path` names, in order (one path, or a list; "shipped" or no path =
    the shipped set)."""
    paths = cfg.seed_path if isinstance(cfg.seed_path, list) else [cfg.seed_path or SHIPPED]
    return [DEFAULT_SEED if p == SHIPPED else Path(p) for p in paths]


def review_examples_file(cfg: DataConfig) -> Path | None:
    if cfg.review_examples_path == "":
        return None
    return Path(cfg.review_examples_path) if cfg.review_examples_path else DEFAULT_REVIEW_EXAMPLES


def _all_rows(paths: list[Path], fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        yield from _rows(path, fmt)


def load_seed(cfg: DataConfig, seed: int = 0) -> list[Sample]:
    """Every seed file's pairs, in file order (ids must be unique across the files), then the
    seeded shuffle and `limit` over all of them."""
    paths = seed_files(cfg)
    for path in paths:
        if not path.exists():
            raise RecordError(f"{path}: seed file not found")
    samples: list[Sample] = []
    ids: set[str] = set()
    for where, row in _all_rows(paths, cfg.format):
        if "instances" in row:  # Self-Instruct seed tasks
            instruction = _field(where, row, cfg.instruction_field)
            instances = row["instances"]
            if not isinstance(instances, list) or not instances:
                raise RecordError(f"{where}: 'instances' must be a non-empty list")
            pairs = []
            for k, inst in enumerate(instances):
                loc = f"{where} instances[{k}]"
                if not isinstance(inst, dict):
                    raise RecordError(f"{loc}: expected an object")
                context = inst.get("input")
                if context is None:
                    context = ""
                if not isinstance(context, str):  # 0 or [] is an error, not a silently empty input
                    raise RecordError(f"{loc}: field 'input' must be a string, got {type(context).__name__}")
                pairs.append((_join(instruction, context), _field(loc, inst, "output")))
        else:
            context = row.get(cfg.input_field) if cfg.input_field else None
            if context is not None and not isinstance(context, str):
                raise RecordError(f"{where}: field {cfg.input_field!r} must be a string")
            pairs = [(_join(_field(where, row, cfg.instruction_field), context),
                      _field(where, row, cfg.response_field))]
        base = _id(where, row, f"seed-{len(samples):05d}")
        for k, (instruction, response) in enumerate(pairs):
            sid = base if len(pairs) == 1 else f"{base}#{k}"
            if sid in ids:
                raise RecordError(f"{where}: duplicate id {sid!r}")
            if not instruction.strip() or not response.strip():
                raise RecordError(f"{where}: empty instruction or response")
            ids.add(sid)
            samples.append(Sample(id=sid, instruction=instruction, response=response.strip()))
    if not samples:
        raise RecordError(f"{', '.join(map(str, paths))}: the seed set is empty")
    if cfg.shuffle:
        samples.sort(key=lambda s: stable_int(seed, "seed-order", s.id))
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return samples


def load_review_examples(cfg: DataConfig) -> list[dict[str, Any]]:
    """Review (EFT) examples: instruction, response, rationale, integer score 0-10."""
    path = review_examples_file(cfg)
    if path is None:
        return []
    out = []
    for where, row in _rows(path, "auto"):
        ex = {k: _field(where, row, k) for k in ("instruction", "response", "rationale")}
        score = row.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 10:
            raise RecordError(f"{where}: field 'score' must be a number from 0 to 10, got {score!r:.60}")
        ex["score"] = int(score) if float(score).is_integer() else float(score)
        ex["id"] = _id(where, row, f"review-{len(out):05d}")
        out.append(ex)
    return out
