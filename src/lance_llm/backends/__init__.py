"""Inference backends behind one small interface (base.Backend), built by kind from the config.

Every backend module registers itself (`register(BackendSpec(...))`) with
- `kind`: the value of `backend.kind` that selects it;
- `build(cfg, model_path, fingerprint)`: the backend, from its own config section
  (`backend.hf`, `backend.openai`, `backend.vllm`) and the shared `model` settings;
- `numerics(cfg)`: the settings that change its numbers (engine, resolved dtype, device, ...);
  they are part of the fingerprint, so of every cache key and every stage manifest;
- `identity(cfg, model_path)` (optional): the weights' identity where it is not the local
  checkpoint's hash (a server we do not start ourselves).

    fp = backend_fingerprint(cfg, model_path)      # e.g. "3f2a9c01d4e5b6a7|hf:decode=2,device=cpu,dtype=bfloat16"
    backend = make_backend(cfg, model_path, fp)

Modules are found in this package (no central list): adding a backend is one module that calls
`register`. `backend.distributed: ray` wraps whichever backend in Ray actors (ray_backend.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from .base import Backend


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    build: Callable[[Config, Path, str], Backend]
    numerics: Callable[[Config], dict[str, Any]]
    identity: Callable[[Config, Path], str] | None = None


_REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    _REGISTRY[spec.kind] = spec
    return spec


def spec(kind: str) -> BackendSpec:
    """The registered backend `kind`, importing this package's modules on first use."""
    if kind not in _REGISTRY:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backend.kind {kind!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def backend_fingerprint(cfg: Config, model_path: Path) -> str:
    """Cache identity of the model that answers: its weights (the checkpoint's hash, or what the
    backend says identifies them) and the numerics of the engine that runs them."""
    from .. import models

    s = spec(cfg.backend.kind)
    weights = s.identity(cfg, model_path) if s.identity else models.fingerprint(model_path)
    numerics = ",".join(f"{k}={v}" for k, v in sorted(s.numerics(cfg).items()))
    return f"{weights}|{s.kind}:{numerics}"


def make_backend(cfg: Config, model_path: Path, fingerprint: str) -> Backend:
    """The backend named by `backend.kind`; fanned out over Ray actors (each building this same
    backend) when `backend.distributed` is `ray`."""
    if cfg.backend.distributed == "ray":
        from .ray_backend import RayBackend

        return RayBackend(cfg.to_dict(), model_path, fingerprint, num_actors=cfg.backend.num_actors,
                          shard_size=cfg.backend.batch_size * 2, address=cfg.backend.ray_address,
                          actor_num_cpus=cfg.backend.actor_num_cpus, actor_num_gpus=cfg.backend.actor_num_gpus)
    return spec(cfg.backend.kind).build(cfg, Path(model_path), fingerprint)


class Factory:
    """What the loop is given to make backends (tests pass a scripted one): a fingerprint for a
    checkpoint, and a backend for it."""

    def fingerprint(self, cfg: Config, model_path: Path) -> str:
        return backend_fingerprint(cfg, model_path)

    def __call__(self, cfg: Config, model_path: Path, fingerprint: str) -> Backend:
        return make_backend(cfg, model_path, fingerprint)
