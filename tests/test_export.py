"""`lance export`: each format round-trips (read back as the tool documents, the same
conversations as the run's records, in order) and matches the tool's documented schema. A tiny run
directory is written with records.write_records; no model is loaded."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml

from lance_llm import cli
from lance_llm.export import ExportError, export, find_iteration
from lance_llm.records import PreferencePair, SFTExample, assistant, chat_prompt
from lance_llm.rundir import RunDir

SYSTEM = "You are a helpful assistant."
# LLaMA-Factory data/README.md: the keys a dataset_info.json entry may have
LF_KEYS = {"hf_hub_url", "ms_hub_url", "script_url", "file_name", "formatting", "ranking", "subset", "folder",
           "columns", "tags"}
LF_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "chosen",
              "rejected", "kto_tag"}
LF_TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}


def _sft(i: int, iteration: int = 1, history: bool = False) -> SFTExample:
    prompt = chat_prompt(SYSTEM, f"Explain item {i} «unicode» in one line.")
    if history:  # a multi-turn prompt: earlier user/assistant turns before the last user message
        prompt = [prompt[0], {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  prompt[1]]
    return SFTExample(id=f"sft{i}", prompt=prompt, completion=assistant(f"Item {i} is\nthe answer {i}."),
                      source="generated", iteration=iteration, score=8.5)


def _pair(i: int) -> PreferencePair:
    return PreferencePair(id=f"p{i}", prompt=chat_prompt(SYSTEM, f"What is {i} + {i}?"),
                          chosen=assistant(f"{2 * i}."), rejected=assistant(f"{2 * i + 1}, surely."),
                          parent_id=f"s{i}", chosen_id=f"c{i}", rejected_id=f"r{i}", score_chosen=9.0,
                          score_rejected=3.0, iteration=1)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    rd = RunDir(root)
    rd.write(0, "sft", [_sft(9, iteration=0)])
    rd.write(0, "dpo", [])
    rd.write_manifest(0, "prepare", {}, {}, ["sft.jsonl", "dpo.jsonl"], {}, 0.0)
    rd.write(1, "sft", [_sft(0), _sft(1, history=True), _sft(2)])
    rd.write(1, "dpo", [_pair(0), _pair(1)])
    rd.write_manifest(1, "annotate", {}, {}, ["sft.jsonl", "dpo.jsonl"], {}, 0.0)
    # an unfinished iteration (no manifest lists its sets) is not the default
    rd.write(2, "sft", [_sft(5)])
    return root


def _records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rd = RunDir(run_dir)
    return ([json.loads(x) for x in rd.path(1, "sft").read_text().splitlines()],
            [json.loads(x) for x in rd.path(1, "dpo").read_text().splitlines()])


def test_default_iteration_is_the_last_finished(run_dir: Path) -> None:
    assert find_iteration(run_dir) == 1
    assert find_iteration(run_dir, 0) == 0
    with pytest.raises(ExportError, match="iteration 2"):
        find_iteration(run_dir, 2)
    with pytest.raises(ExportError, match="no iteration"):
        find_iteration(RunDir(run_dir).iter_dir(1))


def test_llamafactory_matches_its_dataset_info_and_round_trips(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lf"
    export(run_dir, "llamafactory", out)
    info = json.loads((out / "dataset_info.json").read_text())
    sft_recs, dpo_recs = _records(run_dir)
    loaded = {}
    for name, entry in info.items():
        assert set(entry) <= LF_KEYS and set(entry.get("columns", {})) <= LF_COLUMNS
        assert set(entry.get("tags", {})) <= LF_TAGS
        assert entry.get("formatting", "alpaca") in ("alpaca", "sharegpt")
        rows = json.loads((out / entry["file_name"]).read_text())
        assert isinstance(rows, list) and rows
        for row in rows:  # every mapped column exists in every row
            assert all(col in row for col in entry["columns"].values())
        loaded[name] = (entry, rows)

    # alpaca SFT, read the way LLaMA-Factory documents: prompt = instruction (+ "\n" + input)
    entry, rows = next(v for v in loaded.values() if not v[0].get("ranking"))
    assert entry.get("formatting", "alpaca") == "alpaca"
    c = entry["columns"]
    back = []
    for row in rows:
        assert all(isinstance(row[c[k]], str) for k in ("prompt", "query", "response", "system"))
        assert all(isinstance(h, list) and len(h) == 2 for h in row[c["history"]])
        prompt = [{"role": "system", "content": row[c["system"]]}]
        for user, reply in row[c["history"]]:
            prompt += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        text = row[c["prompt"]] + (f"\n{row[c['query']]}" if row[c["query"]] else "")
        back.append({"prompt": [*prompt, {"role": "user", "content": text}],
                     "completion": assistant(row[c["response"]])})
    assert back == [{"prompt": r["prompt"], "completion": r["completion"]} for r in sft_recs]
    assert rows[1]["history"] == [["Hi", "Hello!"]]

    # sharegpt ranking pairs: human at odd positions, the last one the question; chosen/rejected from gpt
    entry, rows = next(v for v in loaded.values() if v[0].get("ranking"))
    assert entry["formatting"] == "sharegpt" and entry["ranking"] is True
    c, tags = entry["columns"], entry["tags"]
    role, content = tags["role_tag"], tags["content_tag"]
    back = []
    for row in rows:
        conv = row[c["messages"]]
        assert [m[role] for m in conv][::2] == [tags["user_tag"]] * len(conv[::2]) and len(conv) % 2 == 1
        assert row[c["chosen"]][role] == row[c["rejected"]][role] == tags["assistant_tag"]
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
        prompt = [{"role": "system", "content": row[c["system"]]}] + [
            {"role": roles[m[role]], "content": m[content]} for m in conv]
        back.append({"prompt": prompt, "chosen": assistant(row[c["chosen"]][content]),
                     "rejected": assistant(row[c["rejected"]][content])})
    assert back == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in dpo_recs]


def test_axolotl_files_and_yaml_round_trip(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ax"
    export(run_dir, "axolotl", out)
    sft_recs, dpo_recs = _records(run_dir)
    sft_cfg = yaml.safe_load((out / "axolotl_sft.yaml").read_text())
    dpo_cfg = yaml.safe_load((out / "axolotl_dpo.yaml").read_text())
    (ds,) = sft_cfg["datasets"]
    assert ds["type"] == "chat_template" and ds["ds_type"] == "json" and ds["roles_to_train"] == ["assistant"]
    rows = [json.loads(x) for x in Path(ds["path"]).read_text().splitlines()]
    field = ds["field_messages"]
    assert [row[field] for row in rows] == [r["prompt"] + r["completion"] for r in sft_recs]
    assert all(set(m) == {"role", "content"} for row in rows for m in row[field])

    assert dpo_cfg["rl"] == "dpo"
    (ds,) = dpo_cfg["datasets"]
    assert ds["type"] == "chatml.intel"
    rows = [json.loads(x) for x in Path(ds["path"]).read_text().splitlines()]
    assert all(set(row) == {"system", "question", "chosen", "rejected"} for row in rows)  # chatml.intel's fields
    assert [{"prompt": chat_prompt(row["system"], row["question"]), "chosen": assistant(row["chosen"]),
             "rejected": assistant(row["rejected"])} for row in rows] == [
        {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in dpo_recs]


def test_hf_save_to_disk_and_card(run_dir: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    out = tmp_path / "hf"
    export(run_dir, "hf", out, license_id="apache-2.0")
    sft_recs, dpo_recs = _records(run_dir)
    assert load_from_disk(str(out / "sft")).to_list() == sft_recs
    assert load_from_disk(str(out / "dpo")).to_list() == dpo_recs
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "apache-2.0" and header["task_categories"] == ["text-generation"]
    assert [c["config_name"] for c in header["configs"]] == ["sft", "dpo"]
    for conf in header["configs"]:  # every config's data files exist
        for f in conf["data_files"]:
            assert glob.glob(str(out / f["path"])), f
    assert f"| `sft` | {len(sft_recs)} |" in text and f"| `dpo` | {len(dpo_recs)} |" in text

    # an iteration with no pair yet exports an empty preference set with its columns
    export(run_dir, "hf", tmp_path / "hf0", iteration=0)
    empty = load_from_disk(str(tmp_path / "hf0" / "dpo"))
    assert len(empty) == 0 and "chosen" in empty.column_names


def test_push_to_hub_refuses_offline_and_keeps_the_files(run_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("the hub was called")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    assert cli.main(["export", str(run_dir), "--format", "hf", "--out", str(out), "--push-to-hub", "me/lance"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "nothing was uploaded" in err and str(out) in err
    assert (out / "sft").is_dir() and (out / "README.md").is_file()
    with pytest.raises(ExportError, match="--format hf"):
        export(run_dir, "axolotl", tmp_path / "x", push="me/lance")


def test_cli_prints_the_written_files(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", str(run_dir), "--format", "llamafactory"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).is_file() for p in printed)
    assert Path(printed[0]).parent == RunDir(run_dir).export_dir / "llamafactory"


def test_a_record_the_format_cannot_hold_is_named(run_dir: Path, tmp_path: Path) -> None:
    bad = _sft(7)
    bad.completion = [*bad.completion, {"role": "user", "content": "and?"}]
    RunDir(run_dir).write(1, "sft", [_sft(0), bad])
    with pytest.raises(ExportError, match="sft7"):
        export(run_dir, "llamafactory", tmp_path / "lf")
    RunDir(run_dir).write(1, "sft", [_sft(0)])
    multi = _pair(3)
    multi.prompt = [multi.prompt[0], {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                    multi.prompt[1]]
    RunDir(run_dir).write(1, "dpo", [multi])
    with pytest.raises(ExportError, match=r"p3.*single-turn"):
        export(run_dir, "axolotl", tmp_path / "ax")
