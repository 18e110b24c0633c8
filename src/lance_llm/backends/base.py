"""The one small interface every inference backend implements.

    generate(requests) -> for each request, `n` sampled completions (strings)
    score(requests)    -> for each request, the log-probability of each given continuation

Stages only see this interface; transformers, vLLM or an OpenAI-compatible server sit behind it.
A request is a plain, hashable value so the durable cache can key on it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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
    """Chat messages, rendered with the model's own chat template, then `n` samples."""

    messages: tuple[Message, ...]
    sampling: Sampling

    def key(self) -> dict:
        return {"kind": "generate", "messages": [list(m) for m in self.messages], **asdict(self.sampling)}


@dataclass(frozen=True)
class ScoreRequest:
    """Log P(continuation | chat + assistant prefix) for each continuation.

    The chat is rendered with the generation prompt, then `prefix` is appended as the start of
    the assistant's reply (e.g. "score: "), so the judge can be read in one forward pass.
    """

    messages: tuple[Message, ...]
    prefix: str
    continuations: tuple[str, ...]

    def key(self) -> dict:
        return {
            "kind": "score",
            "messages": [list(m) for m in self.messages],
            "prefix": self.prefix,
            "continuations": list(self.continuations),
        }


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the token prefix `a` and `b` share (backends reuse the work done for it)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def request_hash(fingerprint: str, request: GenerateRequest | ScoreRequest) -> str:
    blob = json.dumps({"model": fingerprint, **request.key()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
