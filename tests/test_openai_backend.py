"""The OpenAI-compatible backend against scripted local HTTP servers (no model, fast).

What is checked: request translation (n, sampling params, seed), filling up `n` from a server that
returns one choice, retries on 429/5xx, the timeout, the concurrency cap, both scoring methods
(echo and top-logprobs walk, the two-token "10" included) and the clear error for a server that
cannot score, the cache fingerprint, and the config rules (no key in YAML, key from env only).
The same backend against a real llama.cpp server is tests/test_openai_server_real.py.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import free_port

pytest.importorskip("openai")

from lance_llm.backends import backend_fingerprint
from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest
from lance_llm.backends.cache import CachedBackend
from lance_llm.backends.openai_compat import OpenAIBackend, ScoringUnsupportedError, remote_fingerprint
from lance_llm.config import ConfigError, OpenAIBackendConfig, build_config

Reply = tuple[int, dict[str, Any], dict[str, str]]


class Server:
    """A local HTTP server whose replies come from `handle(path, body, call_number)`."""

    def __init__(self, handle: Callable[[str, dict[str, Any], int], Reply]) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: dict[str, Any]) -> None:
                with lock:
                    outer.calls.append((self.path, body))
                    n = len(outer.calls)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload, headers = handle(self.path, body, n)
                finally:
                    with lock:
                        outer.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply({})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                self._reply(json.loads(self.rfile.read(length) or b"{}"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign] # a client that gave up
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self, suffix: str) -> list[dict[str, Any]]:
        return [b for p, b in self.calls if p.endswith(suffix)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, dict[str, Any], int], Reply]], Server]]:
    servers: list[Server] = []

    def start(handle: Callable[[str, dict[str, Any], int], Reply]) -> Server:
        servers.append(Server(handle))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


class FakeTok:
    """Stands in for the checkpoint's tokenizer: a chat template, one token per character."""

    def apply_chat_template(self, chat: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool = False
                            ) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" + ("<eot>" if m["role"] == "assistant" else "") + "\n"
                       for m in chat)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(map(chr, ids))


def chat_reply(texts: list[str]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3 * len(texts), "total_tokens": 5 + 3 * len(texts)}}


def completion_reply(logprobs: dict[str, Any]) -> dict[str, Any]:
    return {"id": "t", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}


def make(url: str, **kw: Any) -> OpenAIBackend:
    cfg = OpenAIBackendConfig(base_url=url, served_model="m", **{"max_retries": 0, "timeout_s": 10.0, **kw})
    b = OpenAIBackend(cfg, fingerprint="openai:test")
    b._tok = FakeTok()
    return b


def char_logprob(c: str) -> float:
    return -((ord(c) % 7) + 1) / 10


def echo_server(path: str, body: dict[str, Any], n: int) -> Reply:
    """echo=true: one token per character, each with a fixed log-probability, then one new token."""
    if not path.endswith("/completions") or not body.get("echo"):
        return 400, {"error": {"message": "unsupported"}}, {}
    text = body["prompt"]
    tokens = [*text, "!"]
    # offsets as llama-cpp-python counts them (special tokens dropped): the backend must not rely on them
    return 200, completion_reply({"tokens": tokens, "text_offset": [0] * len(tokens),
                                  "token_logprobs": [None] + [char_logprob(c) for c in text[1:]] + [-0.01],
                                  "top_logprobs": None}), {}


def test_generate_sends_sampling_and_fills_n_from_single_choice_server(serve: Any) -> None:
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        return 200, chat_reply([f" reply seed={body['seed']} "]), {}  # like llama-cpp-python: one choice

    srv = serve(handle)
    b = make(srv.url)
    req = GenerateRequest((("system", "be brief"), ("user", "hi")), Sampling(0.7, 0.9, 33, n=3, seed=11))
    assert b.generate([req]) == [["reply seed=11", "reply seed=12", "reply seed=13"]]
    sent = srv.posts("/chat/completions")
    assert [s["n"] for s in sent] == [3, 2, 1]
    assert sent[0]["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (sent[0]["temperature"], sent[0]["top_p"], sent[0]["max_tokens"], sent[0]["model"]) == (0.7, 0.9, 33, "m")
    assert (sent[0]["top_k"], sent[0]["min_p"], sent[0]["repeat_penalty"]) == (0, 0.0, 1.0)  # plain_sampling
    assert b.tokens == {"prompt": 15, "generated": 9}


def test_generate_sends_stop_strings_and_cuts_at_them(serve: Any) -> None:
    srv = serve(lambda p, body, n: (200, chat_reply(["Thought: x\nFinal Answer: y"]), {}))  # a server that ignores stop
    b = make(srv.url)
    req = GenerateRequest((("user", "q"),), Sampling(0.0, 1.0, 8), stop=("Final Answer", "\nExample"))
    assert b.generate([req]) == [["Thought: x"]]
    assert srv.posts("/chat/completions")[0]["stop"] == ["Final Answer", "\nExample"]
    assert req.key()["stop"] == ["Final Answer", "\nExample"]
    assert "stop" not in GenerateRequest((("user", "q"),), Sampling()).key()  # old cache keys unchanged


def test_generate_takes_all_n_choices_when_the_server_returns_them(serve: Any) -> None:
    srv = serve(lambda p, body, n: (200, chat_reply([f"s{i}" for i in range(body["n"])]), {}))
    b = make(srv.url)
    greedy = GenerateRequest((("user", "q"),), Sampling(temperature=0.0, top_p=0.9, max_new_tokens=8, n=2))
    assert b.generate([greedy, greedy]) == [["s0", "s1"], ["s0", "s1"]]
    assert all(s["temperature"] == 0.0 and s["top_p"] == 1.0 for s in srv.posts("/chat/completions"))
    strict = make(srv.url, plain_sampling=False)  # for APIs that refuse parameters they do not know
    strict.generate([greedy])
    assert "top_k" not in srv.posts("/chat/completions")[-1]


def test_retries_429_and_5xx_then_succeeds(serve: Any) -> None:
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        if n == 1:
            return 429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"}
        if n == 2:
            return 503, {"error": {"message": "busy"}}, {"retry-after-ms": "10"}
        return 200, chat_reply(["ok"]), {}

    srv = serve(handle)
    b = make(srv.url, max_retries=2)
    assert b.generate([GenerateRequest((("user", "q"),), Sampling(n=1))]) == [["ok"]]
    assert len(srv.calls) == 3


def test_gives_up_after_max_retries(serve: Any) -> None:
    import openai

    srv = serve(lambda p, body, n: (500, {"error": {"message": "down"}}, {"retry-after-ms": "10"}))
    b = make(srv.url, max_retries=2)
    with pytest.raises(openai.InternalServerError):
        b.generate([GenerateRequest((("user", "q"),), Sampling(n=1))])
    assert len(srv.calls) == 3  # the first try and two retries


def test_timeout_is_enforced(serve: Any) -> None:
    import openai

    def slow(path: str, body: dict[str, Any], n: int) -> Reply:
        time.sleep(2.0)
        return 200, chat_reply(["late"]), {}

    srv = serve(slow)
    b = make(srv.url, timeout_s=0.3)
    with pytest.raises(openai.APITimeoutError):
        b.generate([GenerateRequest((("user", "q"),), Sampling(n=1))])


def test_concurrency_is_capped(serve: Any) -> None:
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        time.sleep(0.05)
        return 200, chat_reply([body["messages"][0]["content"]]), {}

    srv = serve(handle)
    b = make(srv.url, concurrency=2)
    reqs = [GenerateRequest((("user", f"q{i}"),), Sampling(n=1)) for i in range(8)]
    assert b.generate(reqs) == [[f"q{i}"] for i in range(8)]  # order kept
    assert 1 <= srv.max_in_flight <= 2


def test_score_with_echo_sums_the_continuation_tokens(serve: Any) -> None:
    srv = serve(echo_server)  # answers echo only: auto falls back to it
    b = make(srv.url)
    req = ScoreRequest((("user", "rate it"),), "score: ", ("7", "10"))
    [[seven, ten]] = b.score([req])
    assert seven == pytest.approx(char_logprob("7"))
    assert ten == pytest.approx(char_logprob("1") + char_logprob("0"))
    prompts = [s["prompt"] for s in srv.posts("/completions")]
    # rendered locally, prefix + continuation (calls run concurrently: any order)
    assert "<user>rate it\n<assistant>score: 10" in prompts and "<user>rate it\n<assistant>score: 7" in prompts
    assert b._method == "echo"


def test_score_per_token_mean_and_end_of_turn_over_echo(serve: Any) -> None:
    srv = serve(echo_server)
    b = make(srv.url, score_method="echo")
    [[mean], [end]] = b.score([ScoreRequest((("user", "q"),), "", ("abcd",), per_token=True),
                               ScoreRequest((("user", "q"),), "abcd", ("",), end_of_turn=True)])
    assert mean == pytest.approx(sum(map(char_logprob, "abcd")) / 4)  # 4 tokens by the local tokenizer
    assert end == pytest.approx(sum(map(char_logprob, "<eot>")))  # the template's end marker, sent as text
    assert "<user>q\n<assistant>abcd<eot>" in [s["prompt"] for s in srv.posts("/completions")]


def test_score_echo_counts_a_token_that_straddles_the_prefix(serve: Any) -> None:
    # "score:" + " 7" as the server tokenises it: the token " 7" starts inside the prefix "score: "
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        text = body["prompt"]
        head = text[: -len("score: 7")]
        tokens = [head, "score", ":", " 7", "!"]
        offsets = [0, len(head), len(head) + 5, len(head) + 6, len(text)]
        return 200, completion_reply({"tokens": tokens, "text_offset": offsets,
                                      "token_logprobs": [None, -1.0, -2.0, -0.25, -9.0], "top_logprobs": None}), {}

    b = make(serve(handle).url, score_method="echo")
    assert b.score([ScoreRequest((("user", "x"),), "score: ", ("7",))]) == [[-0.25]]


def test_score_echo_without_a_listed_generated_token(serve: Any) -> None:
    # the server stopped at end-of-sequence: usage says 0 generated, the list ends with the prompt
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        reply = completion_reply({"tokens": ["<x>", "score", ":", " ", "1", "0"], "text_offset": [0] * 6,
                                  "token_logprobs": [None, -1.0, -2.0, -0.5, -0.25, -0.125], "top_logprobs": None})
        reply["usage"]["completion_tokens"] = 0
        return 200, reply, {}

    b = make(serve(handle).url, score_method="echo")
    assert b.score([ScoreRequest((("user", "x"),), "score: ", ("10",))]) == [[-0.375]]


def test_score_echo_refuses_tokens_that_do_not_spell_the_continuation(serve: Any) -> None:
    def handle(path: str, body: dict[str, Any], n: int) -> Reply:
        return 200, completion_reply({"tokens": ["<x>", "score", ": 8", "!"], "text_offset": [0] * 4,
                                      "token_logprobs": [None, -1.0, -2.0, -0.5], "top_logprobs": None}), {}

    b = make(serve(handle).url, score_method="echo")
    with pytest.raises(ScoringUnsupportedError, match="does not end with the continuation"):
        b.score([ScoreRequest((("user", "x"),), "score: ", ("7",))])


def top_logprob_server(path: str, body: dict[str, Any], n: int) -> Reply:
    if body.get("echo"):
        return 400, {"error": {"message": "echo is not supported"}}, {}
    prompt = body["prompt"]
    if prompt.endswith("score: "):
        top = {"1": -0.5, "7": -1.5, " ": -3.0}
    elif prompt.endswith("score: 1"):
        top = {"0": -0.2, "\n": -2.0}
    else:
        top = {"?": -0.1}
    assert body["logprobs"] == 20 and body["max_tokens"] == 1
    return 200, completion_reply({"tokens": ["x"], "token_logprobs": [-0.1], "text_offset": [len(prompt)],
                                  "top_logprobs": [top]}), {}


def test_score_falls_back_to_top_logprobs_walk(serve: Any) -> None:
    srv = serve(top_logprob_server)
    b = make(srv.url)
    req = ScoreRequest((("user", "rate it"),), "score: ", ("1", "7", "10", "5"))
    [[one, seven, ten, five]] = b.score([req, req][:1])
    assert (one, seven) == (-0.5, -1.5)
    assert ten == pytest.approx(-0.7)  # P("1") * P("0" | "score: 1")
    assert five == -math.inf  # not in the server's top 20: probability 0
    assert b._method == "top_logprobs"
    walk_calls = [s for s in srv.posts("/completions") if not s.get("echo")]
    # the probe's walk (1 call), then one call per distinct step: after "score: " and "score: 1"
    assert len(walk_calls) == 3
    assert not [s for s in srv.posts("/completions") if s.get("echo")]  # top_logprobs is tried first


def test_server_that_cannot_score_fails_clearly(serve: Any) -> None:
    srv = serve(lambda p, body, n: (404, {"error": {"message": "no such endpoint"}}, {}))
    b = make(srv.url)
    with pytest.raises(ScoringUnsupportedError, match=r"cannot score continuations.*review.mode=sampled"):
        b.score([ScoreRequest((("user", "x"),), "score: ", ("1",))])


def test_a_failing_server_is_not_reported_as_unable_to_score(serve: Any) -> None:
    import openai

    srv = serve(lambda p, body, n: (503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "10"}))
    with pytest.raises(openai.InternalServerError):
        make(srv.url).score([ScoreRequest((("user", "x"),), "score: ", ("1",))])


def test_cache_answers_repeats_without_the_server(serve: Any, tmp_path: Any) -> None:
    srv = serve(echo_server)
    fp = remote_fingerprint("m", srv.url)
    cached = CachedBackend(lambda: make(srv.url), fp, tmp_path / "cache.sqlite", progress=False)
    req = ScoreRequest((("user", "q"),), "score: ", ("3",))
    first = cached.score([req])
    n_calls = len(srv.calls)
    assert cached.score([req]) == first and len(srv.calls) == n_calls
    assert cached.stats == {"hits": 1, "misses": 1}
    cached.close()


def test_fingerprint_comes_from_config(tmp_path: Any) -> None:
    cfg = build_config({"backend": {"kind": "openai", "openai": {"base_url": "http://h:1/v1/", "served_model": "s",
                                                                 "revision": "r2"}}})
    numerics = "|openai:plain_sampling=True,score_method=auto"
    assert backend_fingerprint(cfg, tmp_path) == "openai:s@http://h:1/v1#r2" + numerics
    other = build_config({"backend": {"kind": "openai", "openai": {"base_url": "http://h:1/v1", "served_model": "s"}}})
    assert backend_fingerprint(other, tmp_path) == "openai:s@http://h:1/v1" + numerics
    echo = build_config({"backend": {"kind": "openai", "openai": {"base_url": "http://h:1/v1", "served_model": "s",
                                                                  "score_method": "echo"}}})
    assert backend_fingerprint(echo, tmp_path) != backend_fingerprint(other, tmp_path)  # other numbers


def test_api_key_only_from_the_named_environment_variable(monkeypatch: Any) -> None:
    with pytest.raises(ConfigError, match="environment only"):
        build_config({"backend": {"openai": {"api_key": "sk-x"}}})
    monkeypatch.delenv("LANCE_TEST_KEY", raising=False)
    cfg = OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1", served_model="m", key_env="LANCE_TEST_KEY")
    with pytest.raises(ValueError, match="LANCE_TEST_KEY is not set"):
        OpenAIBackend(cfg, "fp")
    monkeypatch.setenv("LANCE_TEST_KEY", "sk-from-env")
    assert OpenAIBackend(cfg, "fp").client.api_key == "sk-from-env"


@pytest.mark.parametrize("key, value", [("concurrency", 0), ("timeout_s", 0), ("max_retries", -1),
                                        ("score_method", "logits")])
def test_bad_openai_settings_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"backend.openai.{key}"):
        build_config({"backend": {"kind": "openai", "openai": {key: value}}})


def test_serve_command_starts_waits_and_stops_the_server(tmp_path: Any) -> None:
    import shlex
    import sys

    from lance_llm.backends.openai_compat import ManagedServer

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "models").write_text("{}")  # what GET {base_url}/models finds
    port = free_port()
    # {model} is replaced by the (quoted) checkpoint directory: here the folder a static server serves
    command = f"{shlex.quote(sys.executable)} -m http.server {port} --bind 127.0.0.1 --directory {{model}}"
    server = ManagedServer(command, tmp_path / "ckpt", f"http://127.0.0.1:{port}", wait_s=30)
    assert server.proc.poll() is None
    server.stop()
    assert server.proc.poll() is not None and not server.log_path.exists()  # a clean stop leaves no log
    server.stop()  # idempotent


def test_serve_command_that_exits_or_never_answers_fails_clearly(tmp_path: Any) -> None:
    import sys

    from lance_llm.backends.openai_compat import ManagedServer

    with pytest.raises(RuntimeError, match="exited with status 3"):
        ManagedServer(f"{sys.executable} -c 'import sys; sys.exit(3)'", tmp_path, "http://127.0.0.1:9/v1", wait_s=30)
    with pytest.raises(RuntimeError, match="no answer at"):
        ManagedServer(f"{sys.executable} -c 'import time; time.sleep(60)'", tmp_path,
                      f"http://127.0.0.1:{free_port()}/v1", wait_s=1)


# A served model for the managed-server tests: answers GET /models and chat completions; the first
# `crashes` POSTs (counted in a file, so across restarts) end the process with status 7 instead.
DYING_SERVER = """
import http.server, json, os, pathlib, sys
port, count, crashes = int(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.send({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]})
    def do_POST(self):
        n = int(count.read_text()) if count.exists() else 0
        count.write_text(str(n + 1))
        if n < crashes:
            print("crash number", n + 1, flush=True)
            os._exit(7)
        self.send(json.loads(sys.argv[4]))
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _dying(tmp_path: Any, crashes: int) -> OpenAIBackend:
    import shlex
    import sys

    from lance_llm.backends.openai_compat import ManagedServer

    (tmp_path / "srv.py").write_text(DYING_SERVER)
    port = free_port()
    command = shlex.join([sys.executable, str(tmp_path / "srv.py"), str(port), str(tmp_path / "posts"), str(crashes),
                          json.dumps(chat_reply(["hello"]))])
    url = f"http://127.0.0.1:{port}/v1"
    return OpenAIBackend(OpenAIBackendConfig(base_url=url, max_retries=0), "served:x",
                         server=ManagedServer(command, tmp_path, url, wait_s=30))


def test_a_managed_server_that_dies_is_started_again_and_its_output_kept(tmp_path: Any) -> None:
    b = _dying(tmp_path, crashes=1)
    log_path = b.server.log_path
    assert b.generate([GenerateRequest((("user", "q"),), Sampling(0.0, 1.0, 8))]) == [["hello"]]
    assert b.server.restarts == 1 and (tmp_path / "posts").read_text() == "2"
    proc = b.server.proc
    b.close()
    assert proc.poll() is not None
    assert "crash number 1" in log_path.read_text()  # kept: it explains the restart


def test_a_managed_server_that_keeps_dying_fails_with_its_status_and_output(tmp_path: Any) -> None:
    from lance_llm.backends.openai_compat import MAX_RESTARTS

    b = _dying(tmp_path, crashes=MAX_RESTARTS + 1)
    with pytest.raises(RuntimeError, match=r"exited with status 7[\s\S]*crash number 3[\s\S]*restarted 2 times"):
        b.generate([GenerateRequest((("user", "q"),), Sampling(0.0, 1.0, 8))])
    b.close()
