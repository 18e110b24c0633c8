"""Train stage: TRL's SFTTrainer on the accumulated SFT set, then DPOTrainer on the accumulated
preference set with the SFT result as reference. Reads the JSONL files annotate wrote (TRL's
conversational formats, unchanged) and writes plain safetensors checkpoints.

    sft = train_sft(base_dir, "sft.jsonl", out_dir / "sft", cfg.train, seed=0)
    final = train_dpo(sft.path, "dpo.jsonl", out_dir / "dpo", cfg.train, seed=0)

TRAIN_M0 (iteration 0: SFT on SFT_0, when train.m0_sft) and TRAIN (iteration t: SFT then DPO) at
the end are the steps as the loop runs them, through an injected trainer (lance_llm.launch.train).

Why thin: TRL does the loss masking (prompt-completion data -> loss on the response only, i.e.
the method's NLL objective), the sigmoid DPO loss and LoRA via peft. We only choose defaults and
make the output a plain checkpoint the next iteration (or any tool) can load. With LoRA the
adapters are merged before saving, and the DPO reference is the base with adapters disabled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, StepConfig, TrainConfig
from ..records import atomic_dir, stable_int
from ..stage import Column, Stage, StageContext

ADAPTER = "adapter"  # with LoRA, the trained adapter's folder inside a saved checkpoint
log = logging.getLogger(__name__)
# TRL still passes `gradient_checkpointing`; the rename warning is transformers' business, not the user's
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


@dataclass
class TrainResult:
    path: Path  # the checkpoint directory written
    steps: int
    examples: int
    loss: float | None
    seconds: float
    too_long: int = 0  # SFT examples left out: a prompt fills max_length, a review example is cut (_trainable)
    # bf16 autocast as resolved on the machine that trained: the stage key holds `train.bf16` ("auto"),
    # so a run resumed on another CPU kind can mix float32 and bf16 iterations; the manifest says which
    bf16: bool | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "steps": self.steps, "examples": self.examples,
                "loss": self.loss, "seconds": round(self.seconds, 2), "too_long": self.too_long, "bf16": self.bf16}


def _use_bf16(setting: str) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    import torch

    from ..backends.hf import cpu_has_bf16

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def _common_args(step: StepConfig, cfg: TrainConfig, out: Path, seed: int) -> dict:
    import torch

    return {
        "output_dir": str(out),
        "learning_rate": step.learning_rate,
        "num_train_epochs": step.epochs,
        "max_steps": step.max_steps,
        "per_device_train_batch_size": step.batch_size,
        "gradient_accumulation_steps": step.grad_accum,
        "max_length": step.max_length,
        "gradient_checkpointing": step.gradient_checkpointing,
        "bf16": _use_bf16(cfg.bf16),
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        "dataset_num_proc": None,
        "use_cpu": not torch.cuda.is_available(),
    }


def sft_args(cfg: TrainConfig, out: Path, seed: int):
    """TRL's SFTConfig as lance trains: completion-only loss, packed padding-free batches.

    Packing (TRL's best-fit-decreasing, no example split): examples are laid end to end in rows of
    up to `max_length` tokens, position ids restarting at 0 for each; transformers turns those
    into a block-diagonal attention mask (sdpa or eager), so no compute goes to pad tokens and no
    attention crosses two examples. A step is then `batch_size` such rows (several examples
    each), so an epoch takes fewer, fuller steps. Measured in bench/train.py.
    """
    from trl import SFTConfig

    return SFTConfig(**_common_args(cfg.sft, cfg, out, seed), completion_only_loss=True, packing=True,
                     packing_strategy="bfd")


def dpo_args(cfg: TrainConfig, out: Path, seed: int):
    """TRL's DPOConfig as lance trains: sigmoid loss, bf16 and no gradient checkpointing (config).

    Not `precompute_ref_log_probs`: for one epoch it does the same reference forward passes up
    front, and bench/train.py measured DPO 0.87x TRL's defaults with it (13:40 run).
    """
    from trl import DPOConfig

    step = cfg.dpo
    return DPOConfig(**_common_args(step, cfg, out, seed), beta=step.beta, loss_type=["sigmoid"])


@contextlib.contextmanager
def _labelled_positions_only() -> Iterator[None]:
    """While TRL trains: its fused LM head scores only the positions that have a label.

    TRL computes per-token log-probabilities with a chunked LM head; on devices without Triton it
    scores every position (prompt and padding too: fixed tile shapes keep compilers such as
    Neuron from recompiling) and masks afterwards. Nothing compiles on a CPU, and there the head
    (a 49k-token vocabulary for SmolLM2) was 55% of a DPO step (profiled); scoring the labelled
    positions alone gives the same log-probabilities. TRL reads the choice from
    `trl.trainer.utils._use_triton`; where that name is gone (another TRL) nothing is changed.
    """
    import torch
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or torch.cuda.is_available():
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def sft_trainer_class():
    """TRL's SFTTrainer, its LM head scoring only labelled positions (_labelled_positions_only)."""
    from trl import SFTTrainer

    class LanceSFTTrainer(SFTTrainer):
        def train(self, *args, **kwargs):
            with _labelled_positions_only():
                return super().train(*args, **kwargs)

    return LanceSFTTrainer


def length_grouped_order(lengths: list[int], batch: int, seed: int, group: int = 50) -> list[int]:
    """An epoch's order in which each run of `batch` indices has about one length: the indices in a
    seeded random order, cut into groups of `group` batches, each group sorted by length and cut
    into batches, then the batches shuffled. A small set (up to `group` batches) is one group."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for g in range(0, len(order), group * batch):
        part = sorted(order[g : g + group * batch], key=lambda i: lengths[i])
        batches += [part[k : k + batch] for k in range(0, len(part), batch)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


def dpo_trainer_class():
    """TRL's DPOTrainer with batches of pairs of similar length (length_grouped_order), its LM head
    scoring only labelled positions (_labelled_positions_only).

    A DPO batch is every chosen and rejected sequence of its pairs, padded to the longest of them
    (TRL 1.16 has no padding-free DPO): drawn at random, one long pair pads the whole batch. The
    length of a pair is its prompt plus its longer answer. Every pair is still seen once per
    epoch, in a seeded order. Measured in bench/train.py.
    """
    from trl import DPOTrainer

    class LanceDPOTrainer(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset if train_dataset is None else train_dataset
            if ds is None or "prompt_ids" not in getattr(ds, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                       zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)]
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return length_grouped_order(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        seed)

        def train(self, *args, **kwargs):
            with _labelled_positions_only():
                return super().train(*args, **kwargs)

    return LanceDPOTrainer


def _peft(cfg: TrainConfig):
    if cfg.method != "lora":
        return None
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def _load_model(path: Path, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights; bf16 (when on) is autocast by the Trainer
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True,
                                                trust_remote_code=trust_remote_code)


def _dataset(path: str | Path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


def _save(trainer, tokenizer, out: Path) -> None:
    """Write a plain (merged) safetensors checkpoint atomically: out/ appears only when complete.
    Under several processes (lance_llm.launch) every rank calls this; only rank 0 writes."""
    model, state_dict = trainer.model, None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # sharded weights: every rank takes part in gathering the full state dict onto rank 0
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return
    with atomic_dir(out) as tmp:
        if hasattr(model, "merge_and_unload"):
            # LoRA: the adapter alone too (a few MB), so that base + the adapters of a lineage, merged
            # in order, rebuild this checkpoint (lance_llm.lineage)
            model.save_pretrained(tmp / ADAPTER, safe_serialization=True)
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)


def _trainable(ds, tok, max_length: int, data: str | Path):
    """`ds` without the examples packing would cut so they teach nothing or the wrong thing, and
    how many those were (counted in the stage's stats as `too_long`, never silently lost):
    - an example whose prompt alone has `max_length` tokens or more keeps none of its completion
      (the only tokens with a loss): a step made of them trains on nothing, which is how the
      256-token test config once trained on ~500-token review examples;
    - a review example (source `review_example`) that does not fit whole: cut, it would teach a
      review without its `score:` line, which is what the judge reads."""
    def tokens(messages: list, generation_prompt: bool) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def fits(ex: dict) -> bool:
        if ex.get("source") == "review_example":
            return tokens(ex["prompt"] + ex["completion"], False) <= max_length
        return tokens(ex["prompt"], True) < max_length

    keep = [i for i, ex in enumerate(ds) if fits(ex)]
    if not keep:
        raise ValueError(f"{data}: no SFT example fits max_length={max_length} tokens (a prompt fills it, or a "
                         "review example does not fit whole); raise train.sft.max_length")
    if len(keep) < len(ds):
        log.warning("%s: %d of %d SFT examples left out: a prompt fills max_length=%d, or a review example does "
                    "not fit whole", data, len(ds) - len(keep), len(ds), max_length)
    return ds.select(keep), len(ds) - len(keep)


def _finish(trainer, tokenizer, out: Path, n: int, t0: float, too_long: int = 0) -> TrainResult:
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    _save(trainer, tokenizer, out)
    if trainer.is_world_process_zero():
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # Trainer scratch (save_strategy="no")
        with (out / "train_log.json").open("w") as fh:
            json.dump(state.log_history, fh, indent=1)
    return TrainResult(out, state.global_step, n, losses[-1] if losses else None, time.time() - t0, too_long,
                       bool(trainer.args.bf16))


def train_sft(model_path: Path, data: str | Path, out: Path, cfg: TrainConfig, seed: int,
              trust_remote_code: bool = False) -> TrainResult:
    """Supervised fine-tuning on prompt-completion conversations (loss on completions only)."""
    from transformers import AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    ds, too_long = _trainable(_dataset(data), tok, cfg.sft.max_length, data)
    args = sft_args(cfg, out.parent / f".{out.name}.work", seed)
    trainer = sft_trainer_class()(model=_load_model(model_path, trust_remote_code), args=args, train_dataset=ds,
                                  processing_class=tok, peft_config=_peft(cfg))
    trainer.train()
    return _finish(trainer, tok, out, len(ds), t0, too_long)


def train_dpo(model_path: Path, data: str | Path, out: Path, cfg: TrainConfig, seed: int,
              trust_remote_code: bool = False) -> TrainResult:
    """DPO (sigmoid loss) with `model_path` as both the start and the frozen reference."""
    from transformers import AutoTokenizer

    t0 = time.time()
    ds = _dataset(data)
    tok = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    args = dpo_args(cfg, out.parent / f".{out.name}.work", seed)
    model = _load_model(model_path, trust_remote_code)
    # full fine-tuning: an explicit frozen copy as reference; LoRA: TRL disables the adapters instead
    ref = None if cfg.method == "lora" else _load_model(model_path, trust_remote_code)
    trainer = dpo_trainer_class()(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                                  peft_config=_peft(cfg))
    trainer.train()
    return _finish(trainer, tok, out, len(ds), t0)


# -- the training stages ---------------------------------------------------------------------
def train_keys(steps: tuple[str, ...]):
    """The training settings a stage reads: its steps, LoRA only when training LoRA, and the
    launcher only when it is not this process (several processes change the effective batch)."""
    def keys(cfg: Config) -> tuple[str, ...]:
        out = ("seed", "train.method", "train.bf16", *(f"train.{s}" for s in steps))
        if cfg.train.method == "lora":
            out += ("train.lora",)
        if cfg.train.launcher != "inprocess":
            out += ("train.launcher", "train.accelerate_config", "train.num_processes")
        return out
    return keys


def _launcher_files(cfg: Config) -> dict[str, Path]:
    if cfg.train.launcher != "inprocess" and cfg.train.accelerate_config:
        return {"accelerate_config": Path(cfg.train.accelerate_config)}
    return {}


def run_train_m0(ctx: StageContext) -> dict:
    cfg = ctx.cfg
    res = ctx.trainer("sft", ctx.model, ctx.input_path("sft"), ctx.output("model"), cfg.train, cfg.seed,
                      cfg.model.trust_remote_code)
    return {"sft": res.to_dict()}


def run_train(ctx: StageContext) -> dict:
    """Step 7: SFT on the accumulated SFT set, then DPO with the SFT model as reference; without
    any preference pair M_{t+1} is the SFT model (said in the stats and on the console)."""
    cfg, t = ctx.cfg, ctx.t
    sft = ctx.trainer("sft", ctx.model, ctx.input_path("sft"), ctx.output("model_sft"), cfg.train,
                      stable_int(cfg.seed, "train", t), cfg.model.trust_remote_code)
    out = ctx.output("model")
    if ctx.read("dpo"):
        dpo = ctx.trainer("dpo", sft.path, ctx.input_path("dpo"), out, cfg.train, stable_int(cfg.seed, "dpo", t),
                          cfg.model.trust_remote_code)
        return {"sft": sft.to_dict(), "dpo": dpo.to_dict()}
    ctx.echo(f"[iter {t}] train: no preference pairs, DPO skipped")
    with atomic_dir(out) as tmp:  # the same weights: no adapter of its own
        shutil.copytree(sft.path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ADAPTER))
    return {"sft": sft.to_dict(), "dpo": None}


TRAIN_M0 = Stage(name="train", reads=("sft",), writes=("model",), config=train_keys(("sft",)),
                 needs="trainer", run=run_train_m0, files=_launcher_files, when=lambda cfg: cfg.train.m0_sft)
TRAIN = Stage(name="train", reads=("sft", "dpo"), writes=("model_sft", "model"), config=train_keys(("sft", "dpo")),
              needs="trainer", run=run_train, files=_launcher_files,
              funnel=(Column("train", "training steps, examples and loss", lambda st: st, style="json"),))
