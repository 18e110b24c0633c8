"""Multiple-choice benchmarks through lm-evaluation-harness, offline, on local files.

    from lance_llm.evaluate import harness
    per_item = harness.run(checkpoint, {"arc_easy": 8, "winogrande": 8}, seed=0)
    # {"arc_easy": [{"idx": 12, "correct": 1.0}, ...], ...}

Each benchmark is lm-eval's own task definition (prompt, choices, target, metric) with its data
source swapped for the seeded subset file from `data.py` (`dataset_path: json`, `data_files`), so
`HF_DATASETS_OFFLINE=1` holds and nothing is fetched. lm-eval scores every choice by its
log-likelihood after the prompt (zero-shot, no chat template: the harness's standard setting for
these tasks); the log-likelihoods come from our scoring path (evaluate/mc.py, `engine="lance"`)
or from lm-eval's `hf` model (`engine="hf"`), which that path is checked against. The metric per
benchmark is the one usually reported for it:
  arc_easy, arc_challenge, hellaswag: acc_norm (length-normalised log-likelihood);
  winogrande (partial scoring of the sentence after the blank), mmlu (letter A-D): acc.
MMLU is one task over a seeded subset of all 57 subjects' test questions, each prompt starting with
lm-eval's subject line ("The following are multiple choice questions (with answers) about ...").
Optional `gsm8k` (not in the defaults): lm-eval's gsm8k task, generation (greedy, at most 256 new
tokens, no chat template), zero-shot (the wheel ships no train split), exact match of the last
number in the answer (lm-eval's "flexible-extract" filter). `lance eval` runs its generation
through our batched backend instead (evaluate/gsm8k.py, same prompt, stops and scoring); the task
here is what that path is checked against.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import subset_file

log = logging.getLogger(__name__)

#: how the log-likelihoods are computed (see run)
ENGINES = ("lance", "hf")

# benchmark -> the lm-eval metric reported for it
METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
          "winogrande": "acc", "mmlu": "acc", "gsm8k": "exact_match"}

# GSM8K as lm-eval's gsm8k.yaml defines it, zero-shot; read by task_config and by evaluate/gsm8k.py
GSM8K_MAX_TOKENS = 256  # new tokens per GSM8K answer (greedy)
GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
GSM8K_EXTRACT = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # its "flexible-extract" filter: the last number
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")  # exact_match's regexes_to_ignore


def gsm8k_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"

_MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
               {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def _mmlu_text(doc: dict[str, Any]) -> str:
    subject = doc["subject"].replace("_", " ")
    letters = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", doc["choices"], strict=False))
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{doc['question'].strip()}{letters}\nAnswer:")


def task_config(benchmark: str, data_file: Path) -> dict[str, Any]:
    """lm-eval's config for `benchmark`, reading `data_file` (JSONL) as its only split."""
    base: dict[str, Any] = {
        "task": f"lance_{benchmark}",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "metric_list": _MC_METRICS,
        "metadata": {"version": 1.0},
    }
    if benchmark in ("arc_easy", "arc_challenge"):  # lm_eval/tasks/arc/arc_easy.yaml
        return {**base, "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}"}
    if benchmark == "hellaswag":  # lm_eval/tasks/hellaswag/hellaswag.yaml
        from lm_eval.tasks.hellaswag.utils import process_docs

        return {**base, "process_docs": process_docs, "doc_to_text": "{{query}}", "doc_to_target": "{{label}}",
                "doc_to_choice": "choices"}
    if benchmark == "winogrande":  # lm_eval/tasks/winogrande/default.yaml
        from lm_eval.tasks.winogrande import preprocess_winogrande as w

        return {**base, "doc_to_text": w.doc_to_text, "doc_to_target": w.doc_to_target,
                "doc_to_choice": w.doc_to_choice, "metric_list": _MC_METRICS[:1]}
    if benchmark == "mmlu":  # lm_eval/tasks/mmlu/default/_default_template_yaml + its description
        return {**base, "doc_to_text": _mmlu_text, "doc_to_choice": ["A", "B", "C", "D"],
                "doc_to_target": "answer", "metric_list": _MC_METRICS[:1]}
    if benchmark == "gsm8k":  # lm_eval/tasks/gsm8k/gsm8k.yaml, zero-shot, its flexible-extract filter
        return {**base, "output_type": "generate_until", "doc_to_text": gsm8k_prompt("{{question}}"),
                "doc_to_target": "{{answer}}", "num_fewshot": 0,
                "generation_kwargs": {"until": list(GSM8K_UNTIL), "do_sample": False,
                                      "temperature": 0.0, "max_gen_toks": GSM8K_MAX_TOKENS},
                "filter_list": [{"name": "flexible-extract", "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": GSM8K_EXTRACT},
                    {"function": "take_first"}]}],
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                 "ignore_case": True, "ignore_punctuation": False,
                                 "regexes_to_ignore": list(GSM8K_IGNORE)}]}
    raise ValueError(f"unknown multiple-choice benchmark {benchmark!r}; known: {', '.join(METRIC)}")


def run(checkpoint: Path, sizes: dict[str, int | None], seed: int, batch_size: int = 8,
        dtype: str = "auto", engine: str = "lance", fingerprint: str = "",
        progress: Callable[[int, int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Evaluate one checkpoint on the given benchmarks ({name: items or None for all}); per-item results.

    engine "lance": the multiple-choice log-likelihoods through our scoring path (evaluate/mc.py,
    `progress` gets (contexts done, contexts in all)); "hf": lm-eval's own `hf` model, which the
    other is checked against, and the only one that generates (lm-eval's gsm8k)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine == "lance" and "gsm8k" in sizes:
        raise ValueError("gsm8k generates: engine='hf' here, or evaluate/gsm8k.py (what lance eval runs)")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.api.task import ConfigurableTask

    from ..backends.hf import pick_dtype

    tasks, files = [], {}
    for name, size in sizes.items():
        path, _ = subset_file(name, size, seed)
        files[name] = path
        tasks.append(ConfigurableTask(config=task_config(name, path)))
    torch_dtype = str(pick_dtype(dtype)).removeprefix("torch.")
    for noisy in ("lm_eval", "lm-eval"):  # per-task INFO lines would drown our progress lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model: Any = "hf"
    model_args = {"pretrained": str(checkpoint), "dtype": torch_dtype} if engine == "hf" else None
    if engine == "lance":
        from .mc import LanceLM

        model = LanceLM(checkpoint, fingerprint, batch_size=batch_size, dtype=dtype, progress=progress)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # lm-eval prints tables and notes to stdout
            res = lm_eval.simple_evaluate(
                model=model, model_args=model_args,
                tasks=tasks, batch_size=batch_size, device="cpu" if not _cuda() else "cuda",
                log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed)
    finally:
        if engine == "lance":
            model.close()
    out: dict[str, list[dict[str, Any]]] = {}
    for name in sizes:
        samples = sorted(res["samples"][f"lance_{name}"], key=lambda s: s["doc_id"])
        metric = METRIC[name]
        out[name] = [{"idx": s["doc"]["_idx"], "correct": float(s[metric]),
                      **({"response": s["resps"][0][0]} if name == "gsm8k" else {})} for s in samples]
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
