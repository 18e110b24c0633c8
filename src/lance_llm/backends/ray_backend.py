"""Generation and scoring fanned out over a Ray cluster with Ray Data: `backend.distributed: ray`.

    lance run CONFIG --set backend.distributed=ray --set backend.num_actors=4 [--set backend.ray_address=auto]

Each `generate`/`score` call becomes one Ray Data job: the requests are cut into shards of
`batch_size * 2` (exactly the chunks the single-process path hands its backend), `map_batches`
sends one shard at a time to a pool of `num_actors` actors, each holding the backend `make_backend`
builds from the run's config (the HF backend with the model path, or any other kind), and the
answers come back keyed by shard, in the input order. Stages do not change: this is one more
Backend behind the durable cache.

Why the records equal the single-process path's: a backend answers a list of requests
deterministically (the HF backend seeds each of its batches from the requests' seeds), but which
requests share a batch changes the sampled text. So shards follow the single-process chunk
boundaries, and the loop gives the cache chunks that are whole multiples of a shard.

The model path must be readable at the same path on every node (shared disk). A call loads the
model once per actor; the loop hands over `num_actors * SHARDS_PER_ACTOR` shards per call, so a
crash loses at most that many shards of answers (the single-process path: one chunk).
Needs `pip install "lance-llm[ray]"`.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Backend, GenerateRequest, ScoreRequest

log = logging.getLogger(__name__)

SHARDS_PER_ACTOR = 4  # shards per actor in one call (one Ray Data job): amortizes the model load
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # a local cluster only moves text; Ray's default is 30% of RAM


class _Worker:
    """A Ray Data actor: builds the backend once, then answers one shard per call."""

    def __init__(self, config: dict[str, Any], model_path: str, fingerprint: str) -> None:
        from ..config import build_config
        from . import make_backend

        config = {**config, "backend": {**config["backend"], "distributed": "none"}}
        self.backend = make_backend(build_config(config), Path(model_path), fingerprint)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results, tokens = [], []
        for kind, payload in zip(batch["kind"], batch["payload"], strict=True):
            before = dict(getattr(self.backend, "tokens", None) or {})
            reqs = pickle.loads(payload)  # written by RayBackend in this same program
            answers = self.backend.generate(reqs) if kind == "generate" else self.backend.score(reqs)
            after = dict(getattr(self.backend, "tokens", None) or {})
            results.append(json.dumps(answers))
            tokens.append(json.dumps({k: v - before.get(k, 0) for k, v in after.items()}))
        return {"shard": batch["shard"], "result": np.array(results, dtype=object),
                "tokens": np.array(tokens, dtype=object)}


class RayBackend(Backend):
    def __init__(self, config: dict[str, Any], model_path: str | Path, fingerprint: str, num_actors: int = 2,
                 shard_size: int = 16, address: str | None = None, actor_num_cpus: float = 1.0,
                 actor_num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError as e:
            raise RuntimeError('backend.distributed=ray needs Ray Data: pip install "lance-llm[ray]"') from e
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        self.config, self.model_path = config, str(model_path)
        self.num_actors, self.shard_size = num_actors, shard_size
        self.actor_num_cpus, self.actor_num_gpus = actor_num_cpus, actor_num_gpus
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:  # a local cluster: keep its shared memory small
                kwargs["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
            ray.init(address=address, **kwargs)
            self._started = True

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return self._fan_out("generate", requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        return self._fan_out("score", requests)

    def shards(self, requests: Sequence[Any]) -> list[list[Any]]:
        return [list(requests[i : i + self.shard_size]) for i in range(0, len(requests), self.shard_size)]

    def _fan_out(self, kind: str, requests: Sequence[Any]) -> list[Any]:
        import ray.data

        shards = self.shards(requests)
        if not shards:
            return []
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        rows = [{"shard": i, "kind": kind, "payload": pickle.dumps(s)} for i, s in enumerate(shards)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block per shard: all can run at once
        out = ds.map_batches(
            _Worker,
            fn_constructor_kwargs={"config": self.config, "model_path": self.model_path,
                                   "fingerprint": self.fingerprint},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.num_actors, len(shards))),
            num_cpus=self.actor_num_cpus,
            num_gpus=self.actor_num_gpus,
        ).take_all()
        by_shard = {int(r["shard"]): r for r in out}
        if sorted(by_shard) != list(range(len(shards))):
            raise RuntimeError(f"Ray returned shards {sorted(by_shard)} for {len(shards)} sent")
        answers: list[Any] = []
        for i, shard in enumerate(shards):
            got = json.loads(by_shard[i]["result"])
            if len(got) != len(shard):
                raise RuntimeError(f"shard {i}: {len(got)} answers for {len(shard)} requests")
            answers.extend(got)
            for k, v in json.loads(by_shard[i]["tokens"]).items():
                self.tokens[k] = self.tokens.get(k, 0) + v
        return answers

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
