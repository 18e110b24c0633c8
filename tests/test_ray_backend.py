"""Generation fanned out over Ray Data actors (backend.distributed=ray) gives the same records as the
single-process path: a local Ray cluster of 2 CPU workers, 2 actors each holding the HF backend on
the real embedded model, runs the review (scoring) and generate (sampling) stages on a few seeds
through the durable cache, exactly as the loop does."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lance_llm import models
from lance_llm.config import build_config
from lance_llm.loop import Runner
from lance_llm.prompts import load
from lance_llm.seeds import load_seed
from lance_llm.stages import generate, review

ray = pytest.importorskip("ray")


def _calls(run_dir: Path) -> dict[str, object]:
    """Every model answer in the run's durable cache, by request key."""
    db = sqlite3.connect(str(run_dir / "cache.sqlite"))
    try:
        return {k: json.loads(v) for k, v in db.execute("SELECT key, result FROM calls")}
    finally:
        db.close()


def _stages(run_dir: Path, distributed: str) -> tuple[list[dict], list[dict], dict, int]:
    cfg = build_config({
        "run_dir": str(run_dir), "data": {"limit": 8},
        # batch 2: shards of 4 requests, so each call of 8 requests is cut into 2 shards over the 2 actors
        "backend": {"batch_size": 2, "hf": {"threads": 1}, "distributed": distributed, "num_actors": 2},
        "review": {"mode": "expected"},
        "generate": {"n_instructions": 2, "n_responses": 1, "n_degraded": 2, "threshold": 0.0,
                     "thought_max_new_tokens": 12,
                     "sampling": {"max_new_tokens": 12}, "response_sampling": {"max_new_tokens": 8}},
    })
    model = models.resolve(cfg.model.source)
    seed = load_seed(cfg.data, cfg.seed)
    system = load("system")
    backend = Runner(cfg).backend(model.path, "test")
    try:
        reviewed, _ = review.review(seed, backend, cfg.review, system, seed=1)
        # half the seeds low (rewrite), half high (degrade): both generate branches run
        scores = sorted(s.review.score for s in reviewed)
        low, high, _ = generate.split(reviewed, (scores[3] + scores[4]) / 2)
        assert len(low) == 4 and len(high) == 4
        cands, _ = generate.generate(low, high, backend, cfg.generate, system, iteration=1, seed=cfg.seed)
        calls, tokens = dict(backend.stats), backend.tokens
    finally:
        backend.close()
    return [s.to_dict() for s in reviewed], [c.to_dict() for c in cands], calls, tokens["generated"]


@pytest.mark.slow
def test_ray_actors_give_the_single_process_records(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:  # backend.hf.threads=1 (as each 1-CPU actor has) sets torch's threads for this whole process
        single = _stages(tmp_path / "single", "none")
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        fanned = _stages(tmp_path / "ray", "ray")
    finally:
        ray.shutdown()
    reviewed, cands, calls, generated = fanned
    answers = _calls(tmp_path / "ray")
    assert answers == _calls(tmp_path / "single")  # every score and every sampled reply, request by request
    texts = [t for a in answers.values() for t in a if isinstance(t, str)]
    assert len(texts) >= 8 and len(set(texts)) > 1 and any(texts)
    assert reviewed == single[0]  # the judge's scores (score requests)
    assert cands == single[1]  # sampled instructions, responses and degraded responses
    assert calls == single[2] and calls["hits"] == 0
    assert generated == single[3] > 0  # the actors' token counts reach the driver
    assert not ray.is_initialized()
