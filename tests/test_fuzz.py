"""Property tests: record readers, seed loaders and the config never raise anything but their own
error type (RecordError, ConfigError) on any input, and what they accept is well-typed.

A KeyError, TypeError, OverflowError or UnicodeDecodeError escaping from here would reach the
user as a traceback instead of `lance: error: FILE:LINE: ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_llm.config import Config, ConfigError, DataConfig, build_config, load_config, parse_override
from lance_llm.records import (
    PreferencePair,
    RecordError,
    Review,
    Sample,
    SFTExample,
    field_names,
    iter_jsonl,
    read_records,
    write_records,
)
from lance_llm.seeds import load_review_examples, load_seed

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # module-scoped: hypothesis re-runs the test body many times within one function-scoped fixture
    return tmp_path_factory.mktemp("fuzz")


def write(scratch: Path, data: bytes, suffix: str = ".jsonl") -> Path:
    path = scratch / f"f{next(_counter)}{suffix}"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

# values that break naive conversions: float() of a 400-digit int overflows, int() of inf too,
# str() of a dict "works", bool is an int
EDGE = st.sampled_from([10**400, -(10**400), 2**64, math.inf, -math.inf, math.nan, True, False, None, "", "7",
                        "nan", " ", [], {}, [None], {"role": "user"}, -1, 0, 1.5, 11])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), EDGE)
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()})
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=3), JSON)
REVIEW = st.one_of(JSON, st.dictionaries(st.sampled_from(field_names(Review)), JSON, max_size=6))
KNOWN = {
    Sample: field_names(Sample),
    SFTExample: field_names(SFTExample),
    PreferencePair: field_names(PreferencePair),
}
SEED_FIELDS = ["instruction", "response", "input", "id", "instances", "output", "rationale", "score"]


def record_like(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with mostly the right keys and arbitrary values: they reach every field check."""
    value = st.one_of(JSON, MESSAGES, REVIEW)
    return st.dictionaries(st.sampled_from([*keys, "extra"]), value, max_size=len(keys) + 1)


def json_line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


# raw lines that are not JSON objects, or JSON that Python's json cannot build
ODD_LINES = st.sampled_from([
    b"", b"   ", b"\t", b"[1, 2]", b"17", b'"text"', b"null", b"{", b"}", b"NaN", b'{"a": NaN}',
    b'{"id": ' + b"1" * 5000 + b"}",  # beyond Python's int digit limit: ValueError, not JSONDecodeError
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError in the decoder
    b"\xef\xbb\xbf{}", b"\xff\xfe", b"\xc3", b'{"a": "\xed\xa0\x80"}', b"\x00", b"\r", b"\x1c",
])


def file_bytes(keys: list[str]) -> st.SearchStrategy[bytes]:
    line = st.one_of(record_like(keys).map(json_line), st.binary(max_size=60), ODD_LINES,
                     JSON.map(json_line))
    return st.one_of(st.binary(max_size=300), st.lists(line, max_size=5).map(lambda ls: b"\n".join(ls)))


# --------------------------------------------------------------------------------------------
# record readers
# --------------------------------------------------------------------------------------------

def check_types(r: Any) -> None:
    """Accepted records have the declared field types (no dict where a string belongs)."""
    if isinstance(r, Sample):
        assert all(isinstance(v, str) for v in (r.id, r.instruction, r.response, r.stage, r.model))
        assert r.parent_id is None or isinstance(r.parent_id, str)
        assert type(r.iteration) is int and r.origin in ("seed", "new", "degraded")
        if r.review is not None:
            rv = r.review
            assert isinstance(rv.mode, str) and type(rv.parse_failures) is int
            assert all(isinstance(x, str) for x in rv.replies)
            for x in (rv.score, rv.raw_score, *rv.samples):
                assert x is None or (type(x) is float and math.isfinite(x))
    else:
        assert isinstance(r.id, str) and type(r.iteration) is int
        for name in ("prompt", "completion", "chosen", "rejected"):
            for m in getattr(r, name, []):
                assert set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
        if isinstance(r, PreferencePair):
            assert all(isinstance(v, str) for v in (r.parent_id, r.chosen_id, r.rejected_id))
            assert all(type(x) is float and math.isfinite(x) for x in (r.score_chosen, r.score_rejected))
        else:
            assert isinstance(r.source, str)
            assert r.score is None or (type(r.score) is float and math.isfinite(r.score))


@pytest.mark.parametrize("cls", [Sample, SFTExample, PreferencePair], ids=lambda c: c.__name__)
def test_read_records_on_any_bytes_returns_records_or_raises_record_error(cls: type, scratch: Path) -> None:
    @FUZZ
    @given(data=file_bytes(KNOWN[cls]))
    def prop(data: bytes) -> None:
        path = write(scratch, data)
        try:
            out = read_records(path, cls)
        except RecordError as e:
            assert str(path) in str(e)
            return
        for r in out:
            assert isinstance(r, cls)
            check_types(r)
        # what was accepted survives our own writer unchanged
        again = write(scratch, b"")
        write_records(again, out)
        assert read_records(again, cls) == out

    prop()


@pytest.mark.parametrize("cls", [Sample, SFTExample, PreferencePair], ids=lambda c: c.__name__)
def test_any_json_object_as_a_line_is_a_record_or_a_record_error(cls: type, scratch: Path) -> None:
    @FUZZ
    @given(obj=st.one_of(st.dictionaries(st.text(max_size=8), JSON, max_size=5), record_like(KNOWN[cls])))
    def prop(obj: dict[str, Any]) -> None:
        path = write(scratch, json_line(obj) + b"\n")
        try:
            out = read_records(path, cls)
        except RecordError as e:
            assert f"{path}:1:" in str(e)
            return
        assert len(out) == 1
        check_types(out[0])

    prop()


def test_valid_records_round_trip(scratch: Path) -> None:
    sample = st.builds(
        Sample, id=st.text(), instruction=st.text(), response=st.text(),
        origin=st.sampled_from(["seed", "new", "degraded"]), parent_id=st.none() | st.text(),
        iteration=st.integers(0, 100), stage=st.text(), model=st.text(),
        review=st.none() | st.builds(Review, mode=st.sampled_from(["sampled", "expected"]),
                                     score=st.none() | st.floats(0, 10), samples=st.lists(st.none() | st.floats(0, 10)),
                                     replies=st.lists(st.text()), parse_failures=st.integers(0, 5),
                                     raw_score=st.none() | st.floats(0, 10)))

    @FUZZ
    @given(samples=st.lists(sample, max_size=4))
    def prop(samples: list[Sample]) -> None:
        path = write(scratch, b"")
        write_records(path, samples)
        assert read_records(path, Sample) == samples

    prop()


def test_max_line_bytes_parameter_boundaries(scratch: Path) -> None:
    line = b'{"a": "' + b"x" * 91 + b'"}'  # 100 bytes
    assert len(line) == 100
    path = write(scratch, line + b"\n" + line)  # the last line without a newline
    assert [n for n, _ in iter_jsonl(path, max_line_bytes=100)] == [1, 2]
    with pytest.raises(RecordError, match=r":1: line is 100 bytes, over the limit of 99 bytes"):
        list(iter_jsonl(path, max_line_bytes=99))
    crlf = write(scratch, line + b"\r\n")  # the \r counts, the \n does not
    with pytest.raises(RecordError, match=r":1: line is 101 bytes"):
        list(iter_jsonl(crlf, max_line_bytes=100))
    assert len(list(iter_jsonl(crlf, max_line_bytes=101))) == 1


def test_over_long_line_is_refused_by_read_records_before_later_lines(scratch: Path) -> None:
    good = json.dumps(Sample(id="a", instruction="i", response="r").to_dict()).encode()
    path = write(scratch, good + b"\n" + b"y" * 10_000 + b"\n" + good + b"\n")
    with pytest.raises(RecordError) as ei:
        read_records(path, Sample, max_line_bytes=4096)
    assert f"{path}:2: line is 10,000 bytes, over the limit of 4,096 bytes" in str(ei.value)


def test_five_megabyte_line_is_read_correctly(scratch: Path) -> None:
    response = "word " * 1_000_000  # 5 MB: far below MAX_LINE_BYTES
    s = Sample(id="big", instruction="Write five megabytes.", response=response)
    path = write(scratch, b"")
    write_records(path, [s, Sample(id="next", instruction="i", response="r")])
    assert path.stat().st_size > 5_000_000
    out = read_records(path, Sample)
    assert out[0] == s and out[1].id == "next"


def test_non_utf8_byte_is_reported_on_its_own_line(scratch: Path) -> None:
    # a text-mode reader decodes 8 KiB ahead and would blame line 1
    path = write(scratch, b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(RecordError, match=r":2: not valid UTF-8"):
        list(iter_jsonl(path))


def test_utf8_bom_on_the_first_line_is_tolerated(scratch: Path) -> None:
    path = write(scratch, b'\xef\xbb\xbf{"a": 1}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1})]


@pytest.mark.parametrize(("obj", "message"), [
    ({"id": {"x": 1}, "instruction": "i", "response": "r"}, "'id' must be a string"),
    ({"id": "a", "instruction": "i", "response": "r", "parent_id": {"x": 1}}, "'parent_id' must be a string"),
    ({"id": "a", "instruction": "i", "response": "r", "iteration": 3.5}, "'iteration' must be an integer"),
    ({"id": "a", "instruction": "i", "response": "r", "review": {"mode": "x", "score": 10**400}}, "out of range"),
    ({"id": "a", "instruction": "i", "response": "r", "review": {"mode": "x", "replies": "abc"}},
     "'replies' must be a list"),
    ({"id": "a", "instruction": "i", "response": "r", "review": {"mode": "x", "score": True}},
     "'score' must be a number"),
    ({"id": "a", "instruction": "i", "response": "r", "review": "good"}, "review must be a JSON object"),
])
def test_fields_of_the_wrong_type_are_named(obj: dict[str, Any], message: str, scratch: Path) -> None:
    path = write(scratch, json_line(obj) + b"\n")
    with pytest.raises(RecordError, match=message):
        read_records(path, Sample)


def test_missing_field_lists_the_fields_present(scratch: Path) -> None:
    path = write(scratch, json_line({"id": "a", "prompt": "p", "response": "r"}) + b"\n")
    with pytest.raises(RecordError) as ei:
        read_records(path, Sample)
    assert f"{path}:1: missing field 'instruction' for Sample (fields present: 'id', 'prompt', 'response')" in str(
        ei.value)


# --------------------------------------------------------------------------------------------
# seed and review-example loaders
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_load_seed_on_any_bytes(suffix: str, scratch: Path) -> None:
    instances = st.lists(st.dictionaries(st.sampled_from(["input", "output", "x"]), JSON, max_size=3), max_size=3)
    row = st.dictionaries(st.sampled_from(SEED_FIELDS), st.one_of(JSON, instances), max_size=5)

    @FUZZ
    @given(data=st.one_of(file_bytes(SEED_FIELDS), st.lists(row, max_size=4).map(
        lambda rows: b"\n".join(map(json_line, rows)) if suffix == ".jsonl" else json_line(rows))))
    def prop(data: bytes) -> None:
        path = write(scratch, data, suffix)
        try:
            seeds = load_seed(DataConfig(seed_path=str(path)))
        except RecordError as e:
            assert str(path) in str(e)
            return
        assert seeds and len({s.id for s in seeds}) == len(seeds)
        for s in seeds:
            assert isinstance(s.id, str) and s.instruction.strip() and s.response.strip()

    prop()


def test_load_review_examples_on_any_bytes(scratch: Path) -> None:
    @FUZZ
    @given(data=file_bytes(["instruction", "response", "rationale", "score", "id"]))
    def prop(data: bytes) -> None:
        path = write(scratch, data)
        try:
            examples = load_review_examples(DataConfig(review_examples_path=str(path)))
        except RecordError as e:
            assert str(path) in str(e)
            return
        for ex in examples:
            assert isinstance(ex["id"], str) and 0 <= ex["score"] <= 10
            assert all(isinstance(ex[k], str) for k in ("instruction", "response", "rationale"))

    prop()


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

def _schema_keys(cls: type) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        out.append(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _schema_keys(type(default))
    return sorted(set(out))


CONFIG_KEYS = _schema_keys(Config)
# what YAML can produce besides JSON: dates, bytes, sets, non-string keys
YAML_SCALARS = st.one_of(SCALARS, st.dates(), st.datetimes(), st.binary(max_size=4),
                         st.sets(st.integers(), max_size=3))
CONFIG_VALUES = st.recursive(
    YAML_SCALARS,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6),
                                                                  st.integers(), st.none()), c, max_size=4),
    max_leaves=10)
CONFIG_DICT = st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)), CONFIG_VALUES,
                              max_size=5)


def test_build_config_on_any_nested_dict_raises_only_config_error() -> None:
    @FUZZ
    @given(data=CONFIG_DICT)
    def prop(data: dict[Any, Any]) -> None:
        try:
            cfg = build_config(data)
        except ConfigError:
            return
        assert isinstance(cfg, Config)

    prop()


def test_build_config_accepts_every_value_it_prints() -> None:
    # the resolved config (what `lance config` prints and config.yaml holds) loads again unchanged
    cfg = build_config()
    assert build_config(cfg.to_dict()) == cfg


def test_parse_override_and_overrides_raise_only_config_error() -> None:
    key = st.one_of(st.text(max_size=10), st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3).map(".".join))
    text = st.one_of(st.text(max_size=40), st.tuples(key, st.text(max_size=20)).map("=".join),
                     st.tuples(key, st.sampled_from(["2024-13-45", "[[[]]", "!!python/object:os.system",
                                                     "1" * 500, ".nan", "{a: 1}", "[1]", "*x", "&a b"]))
                     .map("=".join))

    @FUZZ
    @given(text=text)
    def prop(text: str) -> None:
        try:
            path, _ = parse_override(text)
            assert path and all(isinstance(p, str) for p in path)
        except ConfigError:
            pass
        with contextlib.suppress(ConfigError):
            build_config(overrides=[text])

    prop()


def test_load_config_on_any_bytes_raises_only_config_error(scratch: Path) -> None:
    yaml_lines = st.lists(st.one_of(
        st.tuples(st.sampled_from(CONFIG_KEYS), st.sampled_from(
            ["1", "two", "[1]", "{x: 1}", "2024-13-45", "2024-01-01", ".nan", "!!binary aGk=", "~", "1e400",
             "1" * 400, "&a 1", "*a", "!!set {a}", "? [a]\n  : 1"])).map(": ".join),
        st.text(max_size=20)), max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))

    @FUZZ
    @given(data=st.one_of(st.binary(max_size=200), yaml_lines))
    def prop(data: bytes) -> None:
        path = write(scratch, data, ".yaml")
        try:
            load_config(path)
        except ConfigError as e:
            assert str(path) in str(e)

    prop()


def test_deeply_nested_yaml_is_a_config_error(scratch: Path) -> None:
    nested = "[" * 1000 + "]" * 1000  # PyYAML's composer recurses: RecursionError, not YAMLError
    path = write(scratch, f"seed: {nested}\n".encode(), ".yaml")
    with pytest.raises(ConfigError, match=f"{path}: invalid YAML value"):
        load_config(path)
    with pytest.raises(ConfigError, match="seed: expected an integer"):  # --set keeps the text
        build_config(overrides=[f"seed={nested}"])


def test_yaml_only_types_are_named_type_errors_not_crashes() -> None:
    with pytest.raises(ConfigError, match="run_dir: expected a string"):
        build_config({"run_dir": datetime.date(2024, 1, 1)})
    with pytest.raises(ConfigError, match="unknown key '1'"):
        build_config({1: "x"})


def test_bf16_accepts_yaml_booleans() -> None:
    assert build_config(overrides=["train.bf16=true"]).train.bf16 == "true"
    assert build_config({"train": {"bf16": False}}).train.bf16 == "false"
