"""Backend for any OpenAI-compatible server (llama.cpp's llama-cpp-python server, vLLM, TGI, ...).

    backend = OpenAIBackend(OpenAIBackendConfig(base_url="http://127.0.0.1:8000/v1"),
                            fingerprint="openai:...", tokenizer_path="/path/to/checkpoint")
    backend.generate([GenerateRequest(messages=(("user", "Hi"),), sampling=Sampling(n=2))])

A thin wrapper over the `openai` client, which already retries 429, 408, 409, 5xx and connection
errors with exponential backoff (`max_retries`) and enforces `timeout_s`; we add a thread pool
capped at `concurrency` requests in flight.

generate: one /v1/chat/completions call per request (the server renders its chat template) with
`n`, temperature, top_p, max_tokens and seed, and (plain_sampling) the server's extra samplers
off. A server that returns fewer than `n` choices (the llama-cpp-python server returns one) is
asked again for the rest with seeds seed+1, seed+2, ...

score: log P(continuation | chat + assistant prefix). Chat completions cannot start the assistant
reply with a given prefix on every server, so scoring uses /v1/completions on the prompt rendered
locally with the model's own chat template (from `tokenizer_path`, the run's checkpoint):
- `echo`: one call per continuation with `echo=true, logprobs=1` returns the log-probability of
  every prompt token; the continuation's log-probability is the sum over the last prompt tokens
  that spell it (the first may reach into the prefix, as the in-process backend counts it).
  Exact. llama-cpp-python and vLLM servers support it.
- `top_logprobs`: for servers without echo: ask for the top-k next tokens after the prefix and walk
  the continuation token by token (longest matching token first), one call per distinct step
  ("10" costs a second call after "1"). A continuation token outside the top k counts as
  probability 0 (log-prob -inf): exact for every continuation inside the top k.
- `auto` (default) tries top_logprobs, then echo, and raises ScoringUnsupportedError naming both
  failures when the server can do neither (OpenAI's own API for chat models: use
  review.mode=sampled there). top_logprobs first because it is far cheaper: the judge needs 2
  calls per pair instead of 11, and llama-cpp-python spends seconds per echo call (it sorts the
  whole vocabulary in Python for every prompt token). On the embedded model all 11 score tokens
  are inside the top 20, and both methods give the same numbers (the server test checks it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import BackendSpec, register
from .base import Backend, ChatTemplate, GenerateRequest, ScoreRequest, score_targets, tidy

log = logging.getLogger(__name__)


class ScoringUnsupportedError(RuntimeError):
    """The server cannot return the log-probabilities `score` needs."""


# Sampler settings beyond the OpenAI API, switched off so that temperature and top-p alone shape
# sampling, as in the in-process backend: llama-cpp-python's server otherwise applies top_k=40,
# min_p=0.05 and repeat_penalty=1.1 (the last even to greedy decoding); vLLM names the penalty
# repetition_penalty. Servers ignore the names they do not know; OpenAI's own API refuses them
# (set backend.openai.plain_sampling=false there).
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}

# How often a server that lance started and that died is started again, per backend.
MAX_RESTARTS = 2


def remote_fingerprint(model: str, base_url: str, revision: str = "") -> str:
    """Cache identity of a model behind a server we do not control: its name, address and a
    user-given revision (bump it whenever the server starts serving other weights)."""
    return f"openai:{model}@{base_url.rstrip('/')}" + (f"#{revision}" if revision else "")


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when lance dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def serve_argv(command: str, model_path: str | Path) -> list[str]:
    """`backend.openai.serve_command` as argv: `{model}` is the checkpoint directory, `{gguf}` that
    checkpoint converted to a bf16 GGUF file (once per checkpoint, cached; lance_llm.llamacpp) and
    `{llama-server}` llama.cpp's own server binary, built from the pinned source on first use:
    `{llama-server} -m {gguf} --port 8080 -np 8` serves each iteration's weights with llama.cpp."""
    if "{gguf}" in command or "{llama-server}" in command:
        from .. import llamacpp

        if "{gguf}" in command:
            command = command.replace("{gguf}", shlex.quote(str(llamacpp.gguf(model_path))))
        if "{llama-server}" in command:
            command = command.replace("{llama-server}", shlex.quote(str(llamacpp.server_binary())))
    return shlex.split(command.replace("{model}", shlex.quote(str(model_path))))


class ManagedServer:
    """A server process started by `backend.openai.serve_command` and stopped by `stop()`.

    The command serves the checkpoint the loop is at (see serve_argv), so each iteration serves its
    freshly trained weights, and the server (and its GPU memory) is gone while the next model
    trains. The command runs in its own process group; stop() ends the group. Its output goes to a
    log file (`log_path`, a temporary file removed by a clean stop), so that a server that dies can
    be explained: `died()` says how, with the log's last lines, and `restart()` starts it again.
    """

    def __init__(self, command: str, model_path: str | Path, base_url: str, wait_s: float) -> None:
        self.command, self.wait_s, self.restarts = command, wait_s, 0
        self.argv = serve_argv(command, model_path)
        self.url = base_url.rstrip("/") + "/models"
        fd, name = tempfile.mkstemp(prefix="lance-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._start()

    def _start(self) -> None:
        log.info("starting server (its output: %s): %s", self.log_path, " ".join(self.argv))
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + self.wait_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend.openai.serve_command exited with status {self.proc.returncode}: "
                                   f"{self.command}{self._tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.stop(keep_log=True)
                raise RuntimeError(f"backend.openai.serve_command: no answer at {self.url} after {self.wait_s:.0f} s: "
                                   f"{self.command}{self._tail()}")
            time.sleep(0.5)

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\nlast lines of its output ({self.log_path}):\n" + "\n".join(text) if text else ""

    def died(self) -> str | None:
        """None while the server runs; else how it ended, with the last lines of its output."""
        if self.proc.poll() is None:
            return None
        return f"the server ({self.command}) exited with status {self.proc.returncode}{self._tail()}"

    def restart(self) -> None:
        self.restarts += 1
        self._start()

    def stop(self, keep_log: bool = False) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not keep_log and not self.restarts:  # a log that explains a restart is kept for the user
            self.log_path.unlink(missing_ok=True)


class OpenAIBackend(ChatTemplate, Backend):
    def __init__(self, cfg: Any, fingerprint: str, tokenizer_path: str | Path | None = None,
                 server: ManagedServer | None = None) -> None:
        from openai import OpenAI  # the client is an optional dependency: lance-llm[openai]

        self.server = server
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        self._lock = threading.Lock()
        key = "not-needed"  # local servers accept any key; the client refuses to start without one
        if cfg.key_env:
            key = os.environ.get(cfg.key_env, "")
            if not key:
                raise ValueError(f"backend.openai.key_env: environment variable {cfg.key_env} is not set")
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=cfg.max_retries)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="openai")
        self.model = cfg.served_model or self._first_model()
        self._tokenizer_path = tokenizer_path
        self._tok: Any = None
        self._method: str | None = None if cfg.score_method == "auto" else cfg.score_method

    def _first_model(self) -> str:
        models = self.client.models.list().data
        if not models:
            raise RuntimeError(f"{self.cfg.base_url}: the server lists no model; set backend.openai.served_model")
        return models[0].id

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))

    def _count(self, usage: Any) -> None:
        if usage is not None:
            with self._lock:  # called from the worker threads
                self.tokens["prompt"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.tokens["generated"] += int(getattr(usage, "completion_tokens", 0) or 0)

    # -- generation ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return self._revive(lambda: self._map(self._generate_one, requests))

    def _revive(self, call: Callable[[], Any]) -> Any:
        """call(); if it fails because the server we started has died, say how, start it again and
        repeat the call (requests are pure, so a batch cut short is simply asked again), at most
        MAX_RESTARTS times per backend."""
        import openai

        while True:
            try:
                return call()
            except openai.APIConnectionError as e:
                why = self.server.died() if self.server is not None else None
                if why is None:
                    raise
                if self.server.restarts >= MAX_RESTARTS:
                    raise RuntimeError(f"{why}\n(restarted {self.server.restarts} times already)") from e
                log.warning("%s\nstarting it again", why)
                self.server.restart()

    def _generate_one(self, req: GenerateRequest) -> list[str]:
        s = req.sampling
        messages = [{"role": r, "content": c} for r, c in req.messages]
        out: list[str] = []
        while len(out) < s.n:
            common = dict(model=self.model, n=s.n - len(out), temperature=s.temperature,
                          top_p=s.top_p if s.temperature > 0 else 1.0, max_tokens=s.max_new_tokens,
                          seed=s.seed + len(out), extra_body=PLAIN_SAMPLING if self.cfg.plain_sampling else None)
            if req.stop:
                common["stop"] = list(req.stop)
            if req.prefix:  # chat completions cannot start the reply: the prompt rendered here, as in scoring
                resp = self.client.completions.create(prompt=self.render(req.messages) + req.prefix, **common)
                texts = [c.text or "" for c in resp.choices]
            else:
                resp = self.client.chat.completions.create(messages=messages, **common)
                texts = [c.message.content or "" for c in resp.choices]
            self._count(resp.usage)
            if not resp.choices:
                raise RuntimeError(f"{self.cfg.base_url}: chat completion returned no choices")
            out.extend(tidy(t, req) for t in texts)
        return out[: s.n]

    # -- scoring ---------------------------------------------------------------------------
    @property
    def tok(self) -> Any:
        if self._tok is None:
            if self._tokenizer_path is None:
                raise ScoringUnsupportedError("scoring renders the chat template locally: give a tokenizer path")
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self._tokenizer_path))
        return self._tok

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        return self._revive(lambda: self._score(requests))

    def _score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        if any(r.certainty for r in requests):
            raise ScoringUnsupportedError("self-certainty needs the whole next-token distribution: use backend.kind=hf")
        # The server scores text. Whole responses (the likelihood judge: per-token means, the
        # end-of-turn marker) go through echo under `auto`: the top-k walk would cost a call per
        # token and lose any token outside the top k. The end-of-turn marker is sent as text, which
        # llama.cpp and vLLM servers read as the special token; token counts and the tokens the
        # echo must end with come from the local tokenizer (the checkpoint's own).
        jobs: list[tuple[str, str, list[str]]] = []
        counts: list[int] = []
        whole = any(r.per_token or r.end_of_turn for r in requests)
        for r in requests:
            base = self.render(r.messages) + r.prefix
            end = self.end_of_turn if r.end_of_turn else ""
            targets = score_targets(r, base, self._ids, end) if whole else [([], 0)] * len(r.continuations)
            for c, (full, start) in zip(r.continuations, targets, strict=True):
                jobs.append((base, c + end, [self.tok.decode([t], skip_special_tokens=True) for t in full[start:]]))
                counts.append(len(full) - start if r.per_token else 1)
        method = self._method
        if whole and self.cfg.score_method == "auto":
            method = "echo"
        elif jobs and method is None:
            method = self._method = self._probe(*jobs[0][:2])
        if method == "echo":
            flat = self._map(lambda job: self._echo_logprob(*job), jobs)
        else:
            memo: dict[str, dict[str, float]] = {}
            flat = [self._walk_logprob(base, cont, memo) for base, cont, _ in jobs]
        flat = [v / n for v, n in zip(flat, counts, strict=True)]
        out, i = [], 0
        for r in requests:
            out.append(flat[i : i + len(r.continuations)])
            i += len(r.continuations)
        return out

    def _probe(self, base: str, cont: str) -> str:
        """Pick the scoring method the server supports (once per backend)."""
        import openai

        errors = []
        for method, fn in (("top_logprobs", lambda: self._walk_logprob(base, cont, {})),
                           ("echo", lambda: self._echo_logprob(base, cont))):
            try:
                fn()
                log.info("%s: scoring with %s", self.cfg.base_url, method)
                return method
            except openai.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (401, 403, 429):
                    raise  # a server or account problem, not a missing feature: say so as it is
                errors.append(f"{method}: {type(e).__name__}: {e}")
            except (ScoringUnsupportedError, AttributeError, TypeError, IndexError, KeyError) as e:
                errors.append(f"{method}: {type(e).__name__}: {e}")  # answered, but not what scoring needs
        raise ScoringUnsupportedError(
            f"{self.cfg.base_url} cannot score continuations ({'; '.join(errors)}). Scoring needs /v1/completions "
            "with logprobs (llama-cpp-python and vLLM servers have it); use review.mode=sampled with this server."
        )

    def _echo_logprob(self, base: str, cont: str, pieces: Sequence[str] = ()) -> float:
        # max_tokens=1: some servers read 0 as "no limit"; the generated token is dropped below
        resp = self.client.completions.create(model=self.model, prompt=base + cont, max_tokens=1, temperature=0.0,
                                              echo=True, logprobs=1)
        self._count(resp.usage)
        lp = resp.choices[0].logprobs
        if lp is None or not lp.tokens or lp.token_logprobs is None:
            raise ScoringUnsupportedError("the server returned no prompt log-probabilities for echo=true")
        # The echoed list is the prompt's tokens, then the generated ones (usage says how many; an
        # end-of-sequence token may not be listed). Text offsets are not used: llama-cpp-python
        # counts them in text without special tokens. Instead walk back from the end of the prompt
        # until the tokens cover the continuation; the first of them may reach into the prefix,
        # the same rule as the in-process backend (first token that differs from the prefix's).
        generated = int(getattr(resp.usage, "completion_tokens", 1) or 0) if resp.usage is not None else 1
        tokens = list(lp.tokens[: len(lp.tokens) - generated])
        values = list(lp.token_logprobs[: len(tokens)])
        n = len(pieces)
        if 0 < n < len(tokens) and tokens[-n:] == list(pieces):
            # the prompt ends with the continuation's tokens as the local tokenizer makes them (a
            # special token such as the end-of-turn marker echoes as empty text, so text alone
            # cannot find it)
            if any(v is None for v in values[-n:]):
                raise ScoringUnsupportedError("no log-probability for a continuation token")
            return sum(values[-n:])
        total, text, i = 0.0, "", len(tokens)
        while len(text) < len(cont) and i > 1:
            i -= 1
            if values[i] is None:
                raise ScoringUnsupportedError(f"no log-probability for prompt token {tokens[i]!r}")
            text = tokens[i] + text
            total += values[i]
        if not text.endswith(cont):
            raise ScoringUnsupportedError(f"the echoed prompt does not end with the continuation {cont!r} "
                                          f"(last tokens {tokens[-4:]!r})")
        return total

    def _next_tokens(self, prompt: str, memo: dict[str, dict[str, float]]) -> dict[str, float]:
        if prompt not in memo:
            resp = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=1, temperature=0.0,
                                                  logprobs=self.cfg.top_logprobs)
            self._count(resp.usage)
            lp = resp.choices[0].logprobs
            if lp is None or not lp.top_logprobs or not lp.top_logprobs[0]:
                raise ScoringUnsupportedError("the server returned no top log-probabilities")
            memo[prompt] = dict(lp.top_logprobs[0])
        return memo[prompt]

    def _walk_logprob(self, base: str, cont: str, memo: dict[str, dict[str, float]]) -> float:
        total, done = 0.0, ""
        while done != cont:
            top = self._next_tokens(base + done, memo)
            rest = cont[len(done) :]
            fits = [t for t in top if t and rest.startswith(t)]
            if not fits:
                return -math.inf  # below the server's top k
            best = max(fits, key=len)
            total += top[best]
            done += best
        return total

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def _build(cfg: Any, path: Path, fingerprint: str) -> OpenAIBackend:
    oc = cfg.backend.openai
    if not oc.serve_command:
        log.warning("backend.openai: the server at %s keeps serving its own weights; this run trains %s, "
                    "which that server never sees (set backend.openai.serve_command, see README)", oc.base_url, path)
    server = ManagedServer(oc.serve_command, path, oc.base_url, oc.serve_wait_s) if oc.serve_command else None
    try:  # the checkpoint gives the chat template that scoring renders locally
        return OpenAIBackend(oc, fingerprint, tokenizer_path=path, server=server)
    except BaseException:
        if server is not None:
            server.stop()
        raise


def _identity(cfg: Any, path: Path) -> str:
    """A server we start on the checkpoint serves its weights (perhaps converted: other numerics);
    one we do not start is known only by name, address and the user's revision."""
    oc = cfg.backend.openai
    if not oc.serve_command:
        return remote_fingerprint(oc.served_model or "default", oc.base_url, oc.revision)
    from .. import models

    return f"served:{models.fingerprint(path)}" + (f"#{oc.revision}" if oc.revision else "")


def _numerics(cfg: Any) -> dict[str, Any]:
    oc = cfg.backend.openai
    out: dict[str, Any] = {"score_method": oc.score_method, "plain_sampling": oc.plain_sampling}
    if oc.serve_command:  # the engine and the format it serves (vLLM, llama.cpp on a bf16 GGUF, ...)
        out["serve"] = oc.serve_command
    return out


register(BackendSpec("openai", build=_build, identity=_identity, numerics=_numerics))
