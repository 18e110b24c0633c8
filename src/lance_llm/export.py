"""Export a run's SFT and preference sets for the trainers people already use.

    lance export runs/default --format llamafactory   # alpaca SFT + sharegpt ranking pairs + dataset_info.json
    lance export runs/default --format axolotl        # chat_template SFT + chatml.intel DPO JSONL + YAML snippets
    lance export runs/default --format hf [--push-to-hub USER/NAME]   # datasets save_to_disk + dataset card

Reads `iter_NN/sft.jsonl` and `iter_NN/dpo.jsonl` (TRL's conversational prompt-completion and
preference records, see records.py) of the last iteration whose annotate stage finished, or of
`--iteration N`, and writes to `--out` (default RUN_DIR/export/FORMAT). Records keep the run's
order. A record the target format cannot express (a completion that is not one assistant message,
a prompt that does not end with the user's turn) is an error naming the record, not a silent drop.

The layouts follow the tools' documentation: LLaMA-Factory's data/README.md (dataset_info.json
keys `file_name`, `formatting`, `ranking`, `columns`, `tags`) and axolotl's dataset formats
(`chat_template` with `messages`; `chatml.intel` DPO with `system`, `question`, `chosen`, `rejected`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .records import PreferencePair, SFTExample, atomic_write_text
from .rundir import RunDir

FORMATS = ("llamafactory", "axolotl", "hf")
SFT_NAME, DPO_NAME = "lance_sft", "lance_dpo"  # dataset names in dataset_info.json / the card's configs


class ExportError(ValueError):
    """A run directory or record that cannot be exported as asked."""


# -- reading the run --------------------------------------------------------------------------
def find_iteration(run_dir: Path, iteration: int | None = None) -> int:
    """`iteration`, checked; else the last one whose SFT and DPO sets a finished stage wrote."""
    rd = RunDir(run_dir)

    def complete(t: int) -> bool:
        return rd.finished(t, "sft") and rd.finished(t, "dpo")

    if iteration is not None:
        if not complete(iteration):
            raise ExportError(f"{run_dir}: iteration {iteration} has no finished sft.jsonl/dpo.jsonl")
        return iteration
    done = [t for t in rd.iterations() if complete(t)]
    if not done:
        raise ExportError(f"{run_dir}: no iteration with finished sft.jsonl and dpo.jsonl (is it a run directory?)")
    return done[-1]


def load_sets(run_dir: Path, iteration: int) -> tuple[list[SFTExample], list[PreferencePair]]:
    rd = RunDir(run_dir)
    return rd.read(iteration, "sft"), rd.read(iteration, "dpo")


def split_prompt(prompt: list[dict[str, str]], rid: str) -> tuple[str, list[tuple[str, str]], str]:
    """TRL prompt messages -> (system, earlier (user, assistant) turns, last user message)."""
    msgs = list(prompt)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else ""
    if not msgs or msgs[-1]["role"] != "user":
        raise ExportError(f"record {rid}: the prompt must end with a user message")
    turns = msgs[:-1]
    if len(turns) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
        raise ExportError(f"record {rid}: the prompt's turns must alternate user, assistant")
    history = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]
    return system, history, msgs[-1]["content"]


def _answer(messages: list[dict[str, str]], rid: str, what: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ExportError(f"record {rid}: {what} must be exactly one assistant message")
    return messages[0]["content"]


# -- LLaMA-Factory ----------------------------------------------------------------------------
def llamafactory(sft: list[SFTExample], dpo: list[PreferencePair], out: Path) -> list[Path]:
    """Alpaca SFT (instruction/input/output/system/history) and sharegpt ranking pairs."""
    sft_rows = []
    for r in sft:
        system, history, user = split_prompt(r.prompt, r.id)
        sft_rows.append({"instruction": user, "input": "", "output": _answer(r.completion, r.id, "completion"),
                         "system": system, "history": [list(h) for h in history]})
    dpo_rows = []
    for p in dpo:
        system, history, user = split_prompt(p.prompt, p.id)
        turns = [m for u, a in history for m in ({"from": "human", "value": u}, {"from": "gpt", "value": a})]
        dpo_rows.append({"conversations": [*turns, {"from": "human", "value": user}],
                         "chosen": {"from": "gpt", "value": _answer(p.chosen, p.id, "chosen")},
                         "rejected": {"from": "gpt", "value": _answer(p.rejected, p.id, "rejected")},
                         "system": system})
    info = {
        SFT_NAME: {"file_name": f"{SFT_NAME}.json", "formatting": "alpaca",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output",
                               "system": "system", "history": "history"}},
        DPO_NAME: {"file_name": f"{DPO_NAME}.json", "formatting": "sharegpt", "ranking": True,
                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                               "system": "system"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                            "assistant_tag": "gpt"}},
    }
    files = [(out / f"{SFT_NAME}.json", sft_rows), (out / f"{DPO_NAME}.json", dpo_rows),
             (out / "dataset_info.json", info)]
    for path, obj in files:
        atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
    return [p for p, _ in files]


# -- axolotl ----------------------------------------------------------------------------------
def axolotl(sft: list[SFTExample], dpo: list[PreferencePair], out: Path) -> list[Path]:
    """`chat_template` SFT (messages) and `chatml.intel` DPO (system/question/chosen/rejected)."""
    sft_lines = []
    for r in sft:
        _answer(r.completion, r.id, "completion")
        split_prompt(r.prompt, r.id)
        sft_lines.append({"messages": [*r.prompt, *r.completion]})
    dpo_lines = []
    for p in dpo:
        system, history, user = split_prompt(p.prompt, p.id)
        if history:  # chatml.intel has one question: earlier turns would be lost
            raise ExportError(f"record {p.id}: axolotl's chatml.intel takes single-turn prompts")
        dpo_lines.append({"system": system, "question": user, "chosen": _answer(p.chosen, p.id, "chosen"),
                          "rejected": _answer(p.rejected, p.id, "rejected")})
    sft_path, dpo_path = out / "sft.jsonl", out / "dpo.jsonl"
    sft_cfg = {"datasets": [{"path": str(sft_path.resolve()), "ds_type": "json", "type": "chat_template",
                             "field_messages": "messages",
                             "message_property_mappings": {"role": "role", "content": "content"},
                             "roles_to_train": ["assistant"]}]}
    dpo_cfg = {"rl": "dpo", "datasets": [{"path": str(dpo_path.resolve()), "ds_type": "json", "split": "train",
                                          "type": "chatml.intel"}]}
    for path, lines in ((sft_path, sft_lines), (dpo_path, dpo_lines)):
        atomic_write_text(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    note = "# merge into your axolotl config (see axolotl's dataset formats docs)\n"
    atomic_write_text(out / "axolotl_sft.yaml", note + yaml.safe_dump(sft_cfg, sort_keys=False))
    atomic_write_text(out / "axolotl_dpo.yaml", note + yaml.safe_dump(dpo_cfg, sort_keys=False))
    return [sft_path, dpo_path, out / "axolotl_sft.yaml", out / "axolotl_dpo.yaml"]


# -- Hugging Face datasets --------------------------------------------------------------------
def hf(sft: list[SFTExample], dpo: list[PreferencePair], out: Path, run_dir: Path, iteration: int,
       license_id: str = "other") -> list[Path]:
    """`save_to_disk` of both sets (the TRL records unchanged, so TRL trainers read them directly)
    and a README.md dataset card whose YAML header names the two configs."""
    from datasets import Dataset

    from .records import field_names

    paths = []
    for name, cls, rows in (("sft", SFTExample, [r.to_dict() for r in sft]),
                            ("dpo", PreferencePair, [p.to_dict() for p in dpo])):
        # an empty set (no pair yet) is exported empty, with its columns, not skipped
        ds = Dataset.from_list(rows) if rows else Dataset.from_dict({k: [] for k in field_names(cls)})
        ds.save_to_disk(str(out / name), num_shards=1)  # 1: an empty set still gets its (empty) file
        paths.append(out / name)
    atomic_write_text(out / "README.md", dataset_card(len(sft), len(dpo), run_dir, iteration, license_id))
    return [*paths, out / "README.md"]


def dataset_card(n_sft: int, n_dpo: int, run_dir: Path, iteration: int, license_id: str) -> str:
    header = {
        "license": license_id,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["sft", "dpo", "synthetic", "lance"],
        "configs": [{"config_name": "sft", "data_files": [{"split": "train", "path": "sft/*.arrow"}]},
                    {"config_name": "dpo", "data_files": [{"split": "train", "path": "dpo/*.arrow"}]}],
    }
    body = f"""# LANCE self-generated training data

Written by lance-llm from run `{run_dir.name}`, iteration {iteration}: a model
reviewed its seed data, generated new instructions, responses and degraded responses, cleaned
them, reviewed them again, and kept these sets.

| config | rows | format |
|---|---|---|
| `sft` | {n_sft} | TRL conversational prompt-completion (`prompt`, `completion`), `id`, `source`, `score` |
| `dpo` | {n_dpo} | TRL conversational preference (`prompt`, `chosen`, `rejected`) + both judge scores |

Load with `datasets.load_from_disk("sft")` (this folder) or, once pushed,
`load_dataset(REPO, "sft")`. The licence in the header is `{license_id}`: set the one your seed
data and model allow (`lance export --license`).
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body


def push_to_hub(out: Path, repo: str) -> None:
    """Upload the exported sets and card; refuses clearly when offline (never tries the network then)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ExportError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing was uploaded. The sets "
                          f"are saved in {out}; rerun with HF_HUB_OFFLINE=0 (and HF_TOKEN set) when online")
    from datasets import load_from_disk
    from huggingface_hub import HfApi

    try:
        for name in ("sft", "dpo"):
            load_from_disk(str(out / name)).push_to_hub(repo, config_name=name)
        HfApi().upload_file(path_or_fileobj=str(out / "README.md"), path_in_repo="README.md",
                            repo_id=repo, repo_type="dataset")
    except Exception as e:  # network, auth, permissions: one clear line, the sets stay on disk
        raise ExportError(f"--push-to-hub {repo}: upload failed ({type(e).__name__}: {e}); "
                          f"the sets are saved in {out}") from e


# -- entry point ------------------------------------------------------------------------------
def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, iteration: int | None = None,
           push: str | None = None, license_id: str = "other") -> list[Path]:
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if push and fmt != "hf":
        raise ExportError("--push-to-hub works with --format hf")
    t = find_iteration(run_dir, iteration)
    sft, dpo = load_sets(run_dir, t)
    target = Path(out) if out else RunDir(run_dir).export_dir / fmt
    target.mkdir(parents=True, exist_ok=True)
    if fmt == "llamafactory":
        written = llamafactory(sft, dpo, target)
    elif fmt == "axolotl":
        written = axolotl(sft, dpo, target)
    else:
        written = hf(sft, dpo, target, run_dir, t, license_id)
        if push:
            push_to_hub(target, push)
    return written
