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
