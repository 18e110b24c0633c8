"""IFEval for `lance eval`: greedy chat generation with our HF backend, scored by lm-eval's checker.

    from lance_llm.evaluate import ifeval
    docs = ifeval.load("../shared/data/ifeval/dev.jsonl")
    verdict = ifeval.score(docs[0], "some response")   # {"prompt_strict": bool, "inst_strict": [...], ...}

The checker is the one that ships in lm-eval (`lm_eval.tasks.ifeval`), used as is. Two offline
fixes, both applied in `checker()` before it is used (and langdetect, which the language check
uses, is seeded: unseeded it can give another verdict on the same text in another run):
- its module calls `nltk.download("punkt_tab")` at import, which fails offline: the download is
  replaced by a no-op during that import;
- the two places that need trained Punkt data (sentence counting, `word_tokenize` in the capital
  words check) use NLTK's untrained `PunktSentenceTokenizer` instead. Sentence splits can differ
  slightly from the published scorer's on abbreviations; every other check is unchanged.

Generation: the prompt is the single user message, rendered with the model's own chat template
by `HFBackend` exactly as in the loop (no system prompt added), greedy (temperature 0), at most
`max_new_tokens` new tokens (256 by default).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


class IFEvalError(ValueError):
    """An IFEval file that cannot be used; the message names the file and line."""


def load(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """IFEval-format JSONL (key, prompt, instruction_id_list, kwargs); a seeded subset when limit is set."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IFEvalError(f"{path}: cannot read: {e}") from e
    registry = checker()[1]
    docs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise IFEvalError(f"{path}:{n}: not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("prompt"), str):
            raise IFEvalError(f"{path}:{n}: expected an object with a string 'prompt'")
        ids, kwargs = doc.get("instruction_id_list"), doc.get("kwargs")
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs) or not ids:
            raise IFEvalError(f"{path}:{n}: 'instruction_id_list' and 'kwargs' must be non-empty lists of equal length")
        unknown = [i for i in ids if i not in registry]
        if unknown:
            raise IFEvalError(f"{path}:{n}: unknown instruction id(s) {unknown}")
        doc.setdefault("key", n)
        docs.append(doc)
    if not docs:
        raise IFEvalError(f"{path}: no prompts")
    if limit is not None and limit < len(docs):
        keep = sorted(random.Random(f"ifeval:{seed}").sample(range(len(docs)), limit))
        docs = [docs[i] for i in keep]
    return docs


@functools.lru_cache(maxsize=1)
def checker() -> tuple[Callable[[dict, list[str]], dict[str, Any]], dict[str, Any]]:
    """(lm-eval's process_results, its instruction registry), made to run offline."""
    import nltk
    from nltk.tokenize import PunktSentenceTokenizer

    real_download = nltk.download
    nltk.download = lambda *a, **k: False  # the import-time punkt_tab fetch; we never need it
    try:  # it also prints "Downloaded punkt_tab", which would be false: silenced
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils
    finally:
        nltk.download = real_download
    punkt = PunktSentenceTokenizer()  # untrained: no data file, so no download

    def word_tokenize(text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        # nltk.word_tokenize, with our sentence splitter instead of the trained punkt_tab one
        sentences = [text] if preserve_line else punkt.tokenize(text)
        return [tok for s in sentences for tok in nltk.word_tokenize(s, language, preserve_line=True)]

    instructions_util._get_sentence_tokenizer = lambda: punkt
    instructions_util.nltk = _NltkProxy(nltk, word_tokenize)
    import langdetect

    langdetect.DetectorFactory.seed = 0  # the language check samples: the same verdict on every run
    return utils.process_results, instructions_registry.INSTRUCTION_DICT


class _NltkProxy(ModuleType):
    """The nltk module as lm-eval's instruction code sees it, with `word_tokenize` replaced."""

    def __init__(self, real: ModuleType, word_tokenize: Callable[..., list[str]]) -> None:
        super().__init__("nltk")
        self._real = real
        self.word_tokenize = word_tokenize

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def score(doc: dict[str, Any], response: str) -> dict[str, Any]:
    """lm-eval's verdicts for one response: prompt-level bools and per-instruction lists."""
    out = checker()[0](doc, [response])
    return {
        "prompt_strict": bool(out["prompt_level_strict_acc"]),
        "inst_strict": [bool(x) for x in out["inst_level_strict_acc"]],
        "prompt_loose": bool(out["prompt_level_loose_acc"]),
        "inst_loose": [bool(x) for x in out["inst_level_loose_acc"]],
    }


def generate(model_path: Path, fingerprint: str, docs: list[dict[str, Any]], max_new_tokens: int,
             batch_size: int, dtype: str = "auto", progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy chat completions, one per prompt, in the order of `docs`."""
    from ..backends.base import GenerateRequest, Sampling
    from . import greedy

    sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, n=1, seed=0)
    reqs = [GenerateRequest(messages=(("user", d["prompt"]),), sampling=sampling) for d in docs]
    return greedy.replies(model_path, fingerprint, reqs, batch_size, dtype, progress)


def items(docs: list[dict[str, Any]], responses: list[str]) -> list[dict[str, Any]]:
    """Per-prompt records: key, response and the four verdicts."""
    return [{"key": d["key"], "response": r, **score(d, r)} for d, r in zip(docs, responses, strict=True)]
