"""Fixtures and fakes shared by test files: the one scripted backend, its factory, the fake trainer,
a fake base checkpoint, and a tiny SFT/DPO set. Import the classes with `from conftest import ...`.

ScriptedBackend answers from functions of the request (so a test says what the "model" does);
ScriptedFactory hands ScriptedBackends to the loop; FakeTrainer writes a checkpoint whose weights
are a hash of what it was given (a new fingerprint per step, deterministically); `lance_script`
is a scripted model that plays the whole LANCE loop (review, new instructions, answers, degraded
answers), so the loop runs in seconds without a model.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lance_llm import models
from lance_llm.backends.base import Backend, GenerateRequest, ScoreRequest, tidy
from lance_llm.config import Config
from lance_llm.records import assistant, atomic_dir, chat_prompt, write_records
from lance_llm.stages.train import TrainResult

SYSTEM = "You are a helpful assistant."


class ScriptedBackend(Backend):
    """Deterministic backend: `gen(request)` gives the request's `n` replies, `score(request)` one
    log-probability per continuation; every call is recorded; the `fail_on_call`-th generate call
    raises (a crash in flight)."""

    def __init__(self, gen: Callable[[GenerateRequest], Sequence[str]] | None = None,
                 score: Callable[[ScoreRequest], Sequence[float]] | None = None, fingerprint: str = "scripted",
                 fail_on_call: int | None = None) -> None:
        self._gen, self._score, self.fail_on_call = gen, score, fail_on_call
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        self.generate_calls: list[list[GenerateRequest]] = []
        self.score_calls: list[list[ScoreRequest]] = []
        self.closed = False

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        self.generate_calls.append(list(requests))
        if self.fail_on_call is not None and len(self.generate_calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        if self._gen is None:
            raise AssertionError("generate was not expected")
        out = []
        for r in requests:
            replies = [tidy(x, r) for x in self._gen(r)]  # cut at stop strings and stripped, as backends do
            assert len(replies) == r.sampling.n, "a script must return exactly n replies"
            self.tokens["generated"] += sum(len(x.split()) for x in replies)
            out.append(replies)
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        self.score_calls.append(list(requests))
        if self._score is None:
            raise AssertionError("score was not expected")
        self.tokens["prompt"] += len(requests)
        return [list(self._score(r)) for r in requests]

    def close(self) -> None:
        self.closed = True

    @property
    def generated_requests(self) -> list[GenerateRequest]:
        return [r for call in self.generate_calls for r in call]

    @property
    def scored_requests(self) -> list[ScoreRequest]:
        return [r for call in self.score_calls for r in call]


class ScriptedFactory:
    """The loop's backend factory for tests: ScriptedBackends made by `make()`, fingerprinted by the
    checkpoint they stand for; remembers every backend it built."""

    def __init__(self, make: Callable[[], ScriptedBackend]) -> None:
        self.make = make
        self.built: list[ScriptedBackend] = []

    def fingerprint(self, cfg: Config, model_path: Path) -> str:
        return f"scripted:{models.fingerprint(model_path)}|dtype={cfg.model.dtype}"

    def __call__(self, cfg: object, model_path: Path, fingerprint: str) -> ScriptedBackend:
        backend = self.make()
        backend.fingerprint = fingerprint
        self.built.append(backend)
        return backend


class FakeTrainer:
    """Writes `out` as a checkpoint whose weights are sha256(start weights, data, kind, seed):
    deterministic, and a new model fingerprint for every step. Records (kind, start, data, out)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, Path, Path]] = []

    def __call__(self, kind: str, model_path: Path, data: Path, out: Path, cfg: object, seed: int,
                 trust_remote_code: bool = False) -> TrainResult:
        self.calls.append((kind, Path(model_path), Path(data), Path(out)))
        h = hashlib.sha256((Path(model_path) / "model.safetensors").read_bytes())
        h.update(Path(data).read_bytes())
        h.update(f"{kind}:{seed}".encode())
        with atomic_dir(out) as tmp:
            for name in ("config.json", "tokenizer_config.json"):
                shutil.copy(Path(model_path) / name, tmp / name)
            (tmp / "model.safetensors").write_bytes(h.digest())
        examples = sum(1 for line in Path(data).read_text().splitlines() if line.strip())
        return TrainResult(Path(out), steps=1, examples=examples, loss=0.5, seconds=0.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_checkpoint(path: Path) -> Path:
    """A folder models.resolve accepts as a checkpoint (config, weights, chat template); no model."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (path / "model.safetensors").write_bytes(b"base weights")
    return path


# -- a scripted model that plays the LANCE loop ------------------------------------------------
WORDS = (
    "river", "stone", "garden", "window", "lantern", "copper", "meadow", "violin", "harbor", "pepper",
    "canyon", "ribbon", "orchard", "glacier", "compass", "velvet", "thunder", "almond", "beacon", "cobalt",
    "prairie", "marble", "falcon", "saddle", "willow", "cedar", "ember", "quartz", "tundra", "walnut",
    "summit", "lagoon", "pebble", "maple", "cinder", "harvest",
)
_RESPONSE = re.compile(r"<response>\n(.*)\n</response>", re.DOTALL)


def _words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _lance_reply(user: str, seed: int, k: int) -> str:
    """Sample k of a request seeded `seed`, in the template's free format where it has one."""
    if user.startswith("Your job is to write one new instruction"):
        # k = 1 repeats k = 0's instruction but for one word: the near-duplicate rule drops it;
        # k = 3 has no Final Answer: a parse failure
        text = _words(seed + (7 if k == 2 else 0), 9) + (" please" if k == 1 else "")
        return f"Thought Process: a new task.\nFinal Answer: Describe the {text}." if k < 3 else "no idea"
    if user.startswith("Your job is to write a new, worse response"):
        return f"Thought Process: worse.\nFinal Answer: {_words(seed * 31 + k, 14)} [bad]"
    return f"{_words(seed * 31 + k, 14)} {'[good]' if k % 2 == 0 else '[bad]'}"


_FILLED = re.compile(r"^Thought Process: thinking \[(\d+):(\d+)\]\nFinal Answer:$")


def lance_generate(req: GenerateRequest) -> list[str]:
    """New instructions (Final Answer), degraded answers (tagged [bad]) and answers: half of the
    answers to a new instruction [good], half [bad]. Replies differ by request seed and sample.
    The "fill" format gives the same texts: the thought (prefix "Thought Process:") carries the
    request's seed and sample index, and the answer (prefix "...Final Answer:") is the free reply's,
    or, where that has no Final Answer, a section label at once (an empty answer: a parse failure)."""
    user, s = req.messages[-1][1], req.sampling
    if req.prefix == "Thought Process:":
        return [f" thinking [{s.seed}:{k}]" for k in range(s.n)]
    if m := _FILLED.match(req.prefix):
        free = _lance_reply(user, int(m.group(1)), int(m.group(2)))
        return [" " + free.split("Final Answer: ", 1)[1] if "Final Answer: " in free else "\nOriginal instruction:"]
    return [_lance_reply(user, s.seed, k) for k in range(s.n)]


def lance_score(req: ScoreRequest) -> list[float]:
    """The expected-score judge: all probability on 9 for a [good] or [hi] response, 2 for [bad],
    3 for [lo] (seed answers say which branch they should take)."""
    m = _RESPONSE.search(req.messages[-1][1])
    response = m.group(1) if m else ""
    target = 9 if ("[good]" in response or "[hi]" in response) else 3 if "[lo]" in response else 2
    return [0.0 if i == target else -40.0 for i in range(len(req.continuations))]


def lance_script() -> ScriptedBackend:
    return ScriptedBackend(gen=lance_generate, score=lance_score)


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    """Two seeds the scripted judge scores 9 (degrade branch) and two it scores 3 (rewrite branch)."""
    path = tmp_path / "seed.jsonl"
    rows = [{"id": f"s{i}", "instruction": f"Explain topic number {i} in a short paragraph for a student.",
             "response": f"Topic {i} is explained here in plain words. [{'hi' if i < 2 else 'lo'}]"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_base(tmp_path: Path) -> Path:
    return fake_checkpoint(tmp_path / "base")


@pytest.fixture
def train_data(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny SFT set and preference set in TRL's formats (4 sums each; the rejected answer is off by 3)."""
    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    write_records(sft, [
        {"id": f"s{i}", "prompt": chat_prompt(SYSTEM, f"What is {i} plus {i}?"),
         "completion": assistant(f"{i} plus {i} is {2 * i}."), "source": "seed", "iteration": 0, "score": None}
        for i in range(4)])
    write_records(dpo, [
        {"id": f"p{i}", "prompt": chat_prompt(SYSTEM, f"What is {i} plus {i}?"),
         "chosen": assistant(f"{i} plus {i} is {2 * i}."), "rejected": assistant(f"{i} plus {i} is {2 * i + 3}."),
         "parent_id": "x", "chosen_id": "c", "rejected_id": "r", "score_chosen": 9.0, "score_rejected": 2.0,
         "iteration": 1}
        for i in range(4)])
    return sft, dpo
