"""The one small interface every inference backend implements.

    generate(requests) -> for each request, `n` sampled completions (strings)
    score(requests)    -> for each request, the log-probability of each given continuation
                          (or its mean per token, or with the chat's end-of-turn marker after it)

Stages only see this interface; transformers, vLLM or an OpenAI-compatible server sit behind it.
A request is a plain, hashable value so the durable cache can key on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    n: int = 1
    seed: int = 0  # per-request seed; part of the cache key


@dataclass(frozen=True)
class GenerateRequest:
    """Chat messages, rendered with the model's own chat template, then `n` samples (surrounding
    whitespace stripped). `prefix` starts the assistant's reply: the model continues it, and the
    returned text is the continuation alone, its leading whitespace kept (it may be indentation).
    `stop`: a sample ends where one of these strings first appears; the text is cut before it.
    No messages: a raw completion of `prefix`, no chat template (how base-model benchmarks such
    as lm-eval's GSM8K prompt a model)."""

    messages: tuple[Message, ...]
    sampling: Sampling
    prefix: str = ""
    stop: tuple[str, ...] = ()

    def key(self) -> dict:
        key = {"kind": "generate", "messages": [list(m) for m in self.messages], **asdict(self.sampling)}
        if self.prefix:  # only when set, so the cache keys of plain requests stay what they were
            key["prefix"] = self.prefix
        if self.stop:
            key["stop"] = list(self.stop)
        return key


@dataclass(frozen=True)
class ScoreRequest:
    """Log P(continuation | chat + assistant prefix) for each continuation.

    The chat is rendered with the generation prompt, then `prefix` is appended as the start of
    the assistant's reply (e.g. "score: "), so the judge can be read in one forward pass.
    `end_of_turn`: each continuation is followed by the chat template's end-of-turn marker
    (`<|im_end|>` for ChatML), whose log-probability counts too; with an empty continuation that
    is log P(the reply ends here). `per_token`: the mean log-probability per token, not the sum.
    `certainty`: instead of log-probabilities, the continuation's self-certainty (arXiv
    2502.18581): the mean over its tokens' positions of KL(uniform || the model's next-token
    distribution), in nats; higher = more confident. Needs the whole distribution: in-process only.
    """

    messages: tuple[Message, ...]
    prefix: str
    continuations: tuple[str, ...]
    end_of_turn: bool = False
    per_token: bool = False
    certainty: bool = False

    def key(self) -> dict:
        key = {
            "kind": "score",
            "messages": [list(m) for m in self.messages],
            "prefix": self.prefix,
            "continuations": list(self.continuations),
        }
        # only when set, so the cache keys of plain requests stay what they were
        key.update({k: True for k in ("end_of_turn", "per_token", "certainty") if getattr(self, k)})
        return key


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the token prefix `a` and `b` share (backends reuse the work done for it)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest of the `stop` strings, and whether one was found."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def tidy(text: str, req: GenerateRequest) -> str:
    """A sampled reply as GenerateRequest promises it: cut at its first stop string (servers cut
    there already; this makes every backend agree), then stripped, or only at its end after a prefix."""
    text = cut_at_stop(text, req.stop)[0]
    return text.rstrip() if req.prefix else text.strip()


def end_of_turn_text(tok: Any) -> str:
    """The text a chat template puts after an assistant reply (`<|im_end|>`, `<|eot_id|>`), read
    off the template itself; the tokenizer's eos token where the template adds nothing."""
    probe = "\x1fLANCE-REPLY\x1f"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text = tok.apply_chat_template(chat, tokenize=False)
    tail = text.split(probe, 1)[1].strip() if probe in text else ""
    return tail or (tok.eos_token or "")


def score_targets(req: ScoreRequest, base_text: str, ids: Callable[[str], list[int]], end: str
                  ) -> list[tuple[list[int], int]]:
    """For each continuation of `req` (its prompt already rendered as `base_text`, `end` the
    end-of-turn text where `req.end_of_turn`): the full token sequence and where the
    continuation's own tokens start. Tokenising prefix and continuation together (not
    separately) keeps BPE merges honest; the first token that differs from the prefix's counts
    as the continuation's."""
    base = ids(base_text)
    out = []
    for c in req.continuations:
        full = ids(base_text + c + end)
        start = common_prefix(base, full)
        if start == 0 or start >= len(full):
            raise ValueError(f"continuation {c!r} adds no token after the prefix")
        out.append((full, start))
    return out


def reduce_logprobs(values: Sequence[float], per_token: bool) -> float:
    """A continuation's score from its tokens' log-probabilities: the sum, or the mean per token."""
    total = sum(values)
    return total / len(values) if per_token else total


def request_hash(fingerprint: str, request: GenerateRequest | ScoreRequest) -> str:
    blob = json.dumps({"model": fingerprint, **request.key()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ChatTemplate:
    """Prompts rendered with the model's own chat template, for every backend that holds the
    checkpoint's Hugging Face tokenizer as `self.tok` (in-process, vLLM, a server scored locally)."""

    tok: Any

    def render(self, messages: Sequence[Message]) -> str:
        if not messages:  # a raw completion: the request's prefix is the whole prompt
            return ""
        chat = [{"role": r, "content": c} for r, c in messages]
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    @functools.cached_property
    def end_of_turn(self) -> str:
        return end_of_turn_text(self.tok)

    def _ids(self, text: str) -> list[int]:
        # the chat template already carries any special tokens the model needs
        return list(self.tok(text, add_special_tokens=False)["input_ids"])


class Backend(ABC):
    """An LLM that can sample chat completions and score continuations."""

    #: identifies the exact weights + chat template; part of every cache key
    fingerprint: str = ""
    #: tokens processed so far, {"prompt": n, "generated": n}, where the backend can count them
    tokens: dict[str, int]

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        """Return, per request, exactly `request.sampling.n` completions."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Return, per request, one log-probability per continuation."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release weights/devices (before training reuses the memory)."""
