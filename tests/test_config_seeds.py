"""Tests for the run configuration (defaults = the method's numbers, overrides, errors naming the
key or file) and for seed loading (shipped set, custom fields, Self-Instruct, JSON, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lance_llm.config import (
    Config,
    ConfigError,
    DataConfig,
    build_config,
    load_config,
    parse_override,
)
from lance_llm.records import RecordError
from lance_llm.seeds import load_review_examples, load_seed

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# config defaults
# --------------------------------------------------------------------------------------------


def test_defaults_are_method_numbers() -> None:
    for cfg in (Config(), load_config(None), build_config()):
        assert cfg.generate.threshold == 7.0
        assert cfg.annotate.sft_threshold == 8.0
        assert cfg.annotate.pair_margin == 2.0
        assert cfg.annotate.min_chars == 5
        assert cfg.annotate.next_seed == "code"
        assert cfg.clean.rouge_threshold == 0.7
        assert (cfg.clean.instruction_min_words, cfg.clean.instruction_max_words) == (5, 4096)
        assert (cfg.clean.response_min_words, cfg.clean.response_max_words) == (10, 4096)
        assert cfg.clean.always_filter is True
        assert cfg.review.mode == "sampled"
        assert cfg.review.samples == 3
        assert (cfg.generate.n_instructions, cfg.generate.n_responses, cfg.generate.n_degraded) == (4, 4, 4)
        for sp in (cfg.review.sampling, cfg.generate.sampling, cfg.generate.response_sampling):
            assert (sp.temperature, sp.top_p, sp.max_new_tokens) == (0.7, 0.9, 512)


def test_sampling_sections_are_independent_objects() -> None:
    cfg = Config()
    cfg.review.sampling.temperature = 0.1
    assert Config().review.sampling.temperature == 0.7
    assert cfg.generate.sampling.temperature == 0.7


def test_shipped_yaml_configs_load() -> None:
    for name in ("default.yaml", "tiny.yaml"):
        path = REPO / "configs" / name
        if not path.exists():
            pytest.skip(f"{path} not present")
        cfg = load_config(path)
        assert isinstance(cfg, Config)
    cfg = load_config(REPO / "configs" / "default.yaml")
    # keys the file does not set keep the method's values
    assert cfg.generate.threshold == 7.0 and cfg.annotate.pair_margin == 2.0


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------


def test_overrides_parse_types() -> None:
    cfg = build_config(overrides=[
        "iterations=5",
        "generate.threshold=6",
        "annotate.pair_margin=1.5",
        "clean.exact_dedup=false",
        "data.shuffle=true",
        "train.lora.target_modules=[q_proj, v_proj]",
        "review.mode=expected",
        "data.limit=null",
        "review.sampling.top_p=0.5",
        "clean.decontaminate_paths=[a.jsonl]",
        "model.source=my/model",
    ])
    assert cfg.iterations == 5 and isinstance(cfg.iterations, int)
    assert cfg.generate.threshold == 6.0 and isinstance(cfg.generate.threshold, float)
    assert cfg.annotate.pair_margin == 1.5
    assert cfg.clean.exact_dedup is False
    assert cfg.data.shuffle is True
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.review.mode == "expected"
    assert cfg.data.limit is None
    assert cfg.review.sampling.top_p == 0.5
    assert cfg.generate.sampling.top_p == 0.9  # a sibling section is untouched
    assert cfg.clean.decontaminate_paths == ["a.jsonl"]
    assert cfg.model.source == "my/model"


def test_override_on_top_of_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("iterations: 3\ngenerate:\n  threshold: 6.5\n  n_responses: 2\n")
    cfg = load_config(p, overrides=["generate.threshold=5"])
    assert (cfg.iterations, cfg.generate.threshold, cfg.generate.n_responses) == (3, 5.0, 2)
    assert cfg.generate.n_instructions == 4


def test_parse_override() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=0.25") == (["a"], 0.25)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")
    assert parse_override(" a.b =[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("iterations")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing here\n")
    assert load_config(p) == Config()


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(n: int, **extra: object) -> list[dict]:
    return [{"id": f"r{i}", "instruction": f"Instruction {i}", "response": f"Response {i}", **extra} for i in range(n)]


def test_shipped_seed_loads() -> None:
    seeds = load_seed(DataConfig())
    assert len(seeds) >= 40
    assert len({s.id for s in seeds}) == len(seeds)
    for s in seeds:
        assert s.instruction.strip() and s.response.strip()
        assert s.origin == "seed" and s.review is None and s.iteration == 0


def test_shipped_review_examples() -> None:
    examples = load_review_examples(DataConfig())
    assert len(examples) >= 10
    for ex in examples:
        assert isinstance(ex["score"], int) and not isinstance(ex["score"], bool)
        assert 0 <= ex["score"] <= 10
        assert ex["instruction"].strip() and ex["response"].strip() and ex["rationale"].strip()
    assert len({ex["id"] for ex in examples}) == len(examples)
    # a spread of scores, so that the judge learns more than one verdict
    assert len({ex["score"] for ex in examples}) >= 3
    assert load_review_examples(DataConfig(review_examples_path="")) == []


def test_custom_field_names(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "What is 2+2?", "answer": "4", "context": "Arithmetic."},
        {"question": "Name a prime.", "answer": "7"},
    ])
    cfg = DataConfig(seed_path=str(p), instruction_field="question", response_field="answer", input_field="context")
    seeds = load_seed(cfg)
    assert [(s.instruction, s.response) for s in seeds] == [
        ("What is 2+2?\n\nArithmetic.", "4"),
        ("Name a prime.", "7"),
    ]
    assert [s.id for s in seeds] == ["seed-00000", "seed-00001"]
    # with the default field names the same file is missing 'instruction'
    with pytest.raises(RecordError, match="'instruction'"):
        load_seed(DataConfig(seed_path=str(p)))


def test_input_field_appended(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "instruction": "Translate to French.", "input": "  Good morning  ", "response": "Bonjour"},
        {"id": "b", "instruction": "Say hi.", "input": "", "response": "Hi"},
    ])
    seeds = load_seed(DataConfig(seed_path=str(p)))
    assert seeds[0].instruction == "Translate to French.\n\nGood morning"
    assert seeds[1].instruction == "Say hi."
    no_input = load_seed(DataConfig(seed_path=str(p), input_field=None))
    assert no_input[0].instruction == "Translate to French."


def test_self_instruct_format(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "seed_tasks.jsonl", [
        {"id": "seed_task_0", "name": "breakfast", "instruction": "Suggest a breakfast.",
         "instances": [{"input": "", "output": "Oatmeal with berries."}], "is_classification": False},
        {"id": "seed_task_1", "name": "sentiment", "instruction": "Classify the sentiment.",
         "instances": [{"input": "I love it.", "output": "positive"}, {"input": "I hate it.", "output": "negative"}],
         "is_classification": True},
    ])
    seeds = load_seed(DataConfig(seed_path=str(p)))
    assert [(s.id, s.instruction, s.response) for s in seeds] == [
        ("seed_task_0", "Suggest a breakfast.", "Oatmeal with berries."),
        ("seed_task_1#0", "Classify the sentiment.\n\nI love it.", "positive"),
        ("seed_task_1#1", "Classify the sentiment.\n\nI hate it.", "negative"),
    ]


def test_json_list_format(tmp_path: Path) -> None:
    p = tmp_path / "seed.json"
    p.write_text(json.dumps(rows(3), indent=2))
    seeds = load_seed(DataConfig(seed_path=str(p)))
    assert [(s.id, s.instruction, s.response) for s in seeds] == [
        (f"r{i}", f"Instruction {i}", f"Response {i}") for i in range(3)]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": rows(2)}))
    assert [s.id for s in load_seed(DataConfig(seed_path=str(wrapped)))] == ["r0", "r1"]
    # an explicit format wins over the file suffix
    as_json = tmp_path / "seed.txt"
    as_json.write_text(json.dumps(rows(2)))
    assert len(load_seed(DataConfig(seed_path=str(as_json), format="json"))) == 2


def test_limit(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", rows(10))
    assert [s.id for s in load_seed(DataConfig(seed_path=str(p), limit=3))] == ["r0", "r1", "r2"]
    assert len(load_seed(DataConfig(seed_path=str(p), limit=50))) == 10


def test_seeded_shuffle_is_deterministic(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", rows(30))
    cfg = DataConfig(seed_path=str(p), shuffle=True)
    a = [s.id for s in load_seed(cfg, seed=0)]
    b = [s.id for s in load_seed(cfg, seed=0)]
    c = [s.id for s in load_seed(cfg, seed=1)]
    assert a == b
    assert a != c
    assert sorted(a) == sorted(c) == sorted(f"r{i}" for i in range(30))
    assert a != [f"r{i}" for i in range(30)]
    # limit applies after the shuffle: the first N of the shuffled order
    limited = [s.id for s in load_seed(DataConfig(seed_path=str(p), shuffle=True, limit=5), seed=0)]
    assert limited == a[:5]


def test_shuffle_of_shipped_seed_with_limit() -> None:
    full = load_seed(DataConfig())
    lim = load_seed(DataConfig(shuffle=True, limit=24), seed=0)
    assert len(lim) == 24
    assert {s.id for s in lim} <= {s.id for s in full}
    assert [s.id for s in lim] == [s.id for s in load_seed(DataConfig(shuffle=True, limit=24), seed=0)]


def test_saved_hf_dataset_seed_with_custom_fields(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([
        {"id": "h1", "prompt": "Name a prime number.", "answer": "Seven is a prime number."},
        {"id": "h2", "prompt": "Name an even number.", "answer": "Eight is an even number."},
    ]).save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(seed_path=str(tmp_path / "ds"), instruction_field="prompt", response_field="answer")
    seeds = load_seed(cfg)
    assert [(s.id, s.instruction, s.response) for s in seeds] == [
        ("h1", "Name a prime number.", "Seven is a prime number."),
        ("h2", "Name an even number.", "Eight is an even number."),
    ]


def test_the_real_self_instruct_seed_tasks_load_when_present() -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared/ data not beside this checkout")
    seeds = load_seed(DataConfig(seed_path=str(path)))
    assert len(seeds) >= 175  # one seed per instance
    assert all(s.instruction.strip() and s.response.strip() for s in seeds)


def test_the_real_self_instruct_file_reads_instruction_input_and_output() -> None:
    """The Self-Instruct seed tasks as the experiment reads them, alone and after the shipped seed."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared/ data not beside this checkout")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    seeds = load_seed(DataConfig(seed_path=str(path)))
    assert len(seeds) == sum(len(r["instances"]) for r in rows) == 175
    by_id = {s.id: s for s in seeds}
    first = by_id["seed_task_0"]  # no input: the instruction alone
    assert first.instruction == rows[0]["instruction"].strip()
    assert first.response == rows[0]["instances"][0]["output"].strip()
    with_input = next(r for r in rows if r["instances"][0]["input"].strip())
    s = by_id[with_input["id"]]  # an input is appended to the instruction after a blank line
    assert s.instruction == with_input["instruction"].strip() + "\n\n" + with_input["instances"][0]["input"].strip()

    shipped = load_seed(DataConfig())
    both = load_seed(DataConfig(seed_path=["shipped", str(path)]))
    assert [x.id for x in both] == [x.id for x in shipped] + [x.id for x in seeds]
    limited = load_seed(DataConfig(seed_path=["shipped", str(path)], shuffle=True, limit=50), seed=3)
    assert len(limited) == 50 and {x.id for x in limited} <= {x.id for x in both}
    assert any(x.id.startswith("seed_task_") for x in limited) and any(x.id.startswith("seed-") for x in limited)


def test_seed_path_list_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.seed_path: an empty list"):
        build_config({"data": {"seed_path": []}})
    a = tmp_path / "a.jsonl"
    a.write_text('{"id": "x", "instruction": "i", "response": "r"}\n')
    with pytest.raises(RecordError, match=r"b\.jsonl:1: duplicate id 'x'"):
        (tmp_path / "b.jsonl").write_text('{"id": "x", "instruction": "j", "response": "s"}\n')
        load_seed(DataConfig(seed_path=[str(a), str(tmp_path / "b.jsonl")]))
    with pytest.raises(RecordError, match=r"missing\.jsonl: seed file not found"):
        load_seed(DataConfig(seed_path=[str(a), str(tmp_path / "missing.jsonl")]))


def test_values_that_look_like_other_types_are_kept(tmp_path: Path) -> None:
    """What the fuzzers found that must load, not fail: errors are in test_bad_input.py."""
    assert build_config(overrides=["run_dir=2024-13-45"]).run_dir == "2024-13-45"  # not a date
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": 7, "instruction": "i", "response": "r"}])
    assert load_seed(DataConfig(seed_path=str(p)))[0].id == "7"
    good = {"instruction": "a", "response": "b", "rationale": "c"}
    p = write_jsonl(tmp_path / "rev.jsonl", [{**good, "score": 7.0}, {**good, "score": 6.5}])
    scores = [ex["score"] for ex in load_review_examples(DataConfig(review_examples_path=str(p)))]
    assert scores == [7, 6.5] and isinstance(scores[0], int)
