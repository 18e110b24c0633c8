"""The train stage on the real embedded model with LoRA: adapters train, merge, and save as a plain
checkpoint with the base's tensor names. (Full fine-tuning is covered by test_loop_real.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lance_llm import models
from lance_llm.config import LoraConfig, StepConfig, TrainConfig
from lance_llm.records import assistant, chat_prompt, write_records
from lance_llm.stages.train import train_dpo, train_sft

pytestmark = pytest.mark.slow
SYSTEM = "You are a helpful assistant."


def test_lora_sft_then_dpo_merges_into_a_plain_checkpoint(tmp_path: Path, train_data: tuple[Path, Path]) -> None:
    base_path = models.resolve("smollm2-135m").path
    sft, dpo = train_data
    cfg = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                      sft=StepConfig(max_steps=2, learning_rate=1e-3, max_length=128),
                      dpo=StepConfig(max_steps=1, learning_rate=1e-3, max_length=128))
    after_sft = train_sft(base_path, sft, tmp_path / "sft_model", cfg, seed=0)
    after_dpo = train_dpo(after_sft.path, dpo, tmp_path / "dpo_model", cfg, seed=0)
    assert after_sft.steps == 2 and after_dpo.steps == 1

    base = load_file(str(base_path / "model.safetensors"))
    s = load_file(str(after_sft.path / "model.safetensors"))
    d = load_file(str(after_dpo.path / "model.safetensors"))
    assert set(s) == set(base) == set(d)  # merged: no adapter tensors left, same names as the base
    targeted = [k for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert len(targeted) == 60
    assert all(not torch.equal(base[k], s[k]) for k in targeted)  # every adapted matrix moved
    assert all(not torch.equal(s[k], d[k]) for k in targeted)
    untouched = [k for k in base if k not in targeted]
    assert all(torch.equal(base[k], s[k]) for k in untouched)  # LoRA leaves the rest frozen

    # each step kept its adapter; base + the two adapters merged in order rebuild the DPO checkpoint
    # bit for bit (lance_llm.lineage), and a wrong recorded fingerprint is refused
    import json

    from lance_llm.lineage import LineageError, rebuild

    for step in (after_sft.path, after_dpo.path):
        assert (step / "adapter" / "adapter_config.json").exists() and (step / "adapter").stat().st_size
    doc = {"version": 1, "base": {"source": str(base_path), "fingerprint": models.fingerprint(base_path)},
           "checkpoints": {"M_1": {"fingerprint": models.fingerprint(after_dpo.path),
                                   "adapters": ["../sft_model/adapter", "../dpo_model/adapter"]},
                           "bad": {"fingerprint": "0" * 16, "adapters": ["../sft_model/adapter"]}}}
    (tmp_path / "lin").mkdir()
    (tmp_path / "lin" / "lineage.json").write_text(json.dumps(doc))
    rebuilt = rebuild(tmp_path / "lin" / "lineage.json", "M_1", tmp_path / "rebuilt")
    r = load_file(str(rebuilt / "model.safetensors"))
    assert set(r) == set(d) and all(torch.equal(r[k], d[k]) for k in d)
    with pytest.raises(LineageError, match="recorded 0000"):
        rebuild(tmp_path / "lin" / "lineage.json", "bad", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing left behind


def test_sft_leaves_out_examples_whose_prompt_fills_max_length(tmp_path: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from lance_llm.stages.train import _trainable

    tok = AutoTokenizer.from_pretrained(str(models.resolve("smollm2-135m").path))
    rows = [{"id": "short", "prompt": chat_prompt(SYSTEM, "What is 2 plus 2?"), "completion": assistant("4.")},
            {"id": "long", "prompt": chat_prompt(SYSTEM, "Count: " + " ".join(["one two three"] * 40)),
             "completion": assistant("Done.")}]
    write_records(tmp_path / "sft.jsonl", rows)
    ds = load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    kept, too_long = _trainable(ds, tok, 64, "sft.jsonl")
    assert kept["id"] == ["short"] and too_long == 1  # packing would cut "long" before its completion
    kept, too_long = _trainable(ds, tok, 1024, "sft.jsonl")
    assert kept["id"] == ["short", "long"] and too_long == 0
    with pytest.raises(ValueError, match=r"raise train\.sft\.max_length"):
        _trainable(ds, tok, 8, "sft.jsonl")
    # a review example trains whole or not at all: cut, it would lose its `score:` line
    review = {"id": "review", "source": "review_example", "prompt": chat_prompt(SYSTEM, "Review this answer."),
              "completion": assistant("A fine answer, " * 30 + "\nscore: 8")}
    write_records(tmp_path / "sft2.jsonl", [{**rows[0], "source": "seed"}, review])
    ds2 = load_dataset("json", data_files=str(tmp_path / "sft2.jsonl"), split="train")
    kept, too_long = _trainable(ds2, tok, 64, "sft2.jsonl")
    assert kept["id"] == ["short"] and too_long == 1
    assert _trainable(ds2, tok, 512, "sft2.jsonl")[0]["id"] == ["short", "review"]


def test_lance_trainers_score_the_same_log_probs_and_group_pairs_by_length(tmp_path: Path) -> None:
    """The DPO trainer lance uses (stages.train.dpo_trainer_class) gives TRL's loss on the same
    batch while its LM head scores only labelled positions, and its batches hold pairs of about
    one length."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lance_llm.stages.train import _labelled_positions_only, dpo_args, dpo_trainer_class

    path = models.resolve("smollm2-135m").path
    tok = AutoTokenizer.from_pretrained(str(path))
    words = ("the cat sat on a mat and looked at the bright red door for a long time " * 2).split(" ")
    rows = [{"prompt": [{"role": "user", "content": f"Say something, number {i}."}],
             "chosen": [{"role": "assistant", "content": " ".join(words[: 2 + 5 * (i % 3)])}],
             "rejected": [{"role": "assistant", "content": " ".join(words[: 3 + 4 * ((i + 1) % 3)])}]}
            for i in range(12)]
    step = StepConfig(max_steps=1, batch_size=3, max_length=128, learning_rate=1e-6)
    args = dpo_args(TrainConfig(dpo=step), tmp_path / "work", seed=0)
    load = lambda: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)  # noqa: E731
    trainer = dpo_trainer_class()(model=load(), ref_model=load(), args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        every_position = trainer.compute_loss(trainer.model, batch)
        with _labelled_positions_only():
            labelled_only = trainer.compute_loss(trainer.model, batch)
    assert torch.allclose(every_position, labelled_only, atol=1e-4)

    ds = trainer.train_dataset
    length = [len(p) + max(len(c), len(r)) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"],
                                                               strict=True)]
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(12))  # every pair once
    # 12 pairs are one group: each batch of 3 holds neighbours in the sorted lengths
    ranked = sorted(length)
    batches = sorted(sorted(length[i] for i in order[k:k + 3]) for k in range(0, 12, 3))
    assert batches == [ranked[k:k + 3] for k in range(0, 12, 3)]
    assert len(set(length)) > 3 and order != sorted(order, key=lambda i: length[i])  # batches in a seeded order
