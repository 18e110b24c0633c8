"""Prompt templates, kept as text files beside this module so they can be read and edited
without touching code. Placeholders are `{{name}}`; `render` fails loudly on a missing one.

    from lance_llm.prompts import load, render
    text = render(load("review"), instruction="...", response="...")
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@cache
def load(name: str) -> str:
    """The template `name` (system, review, new_instruction, degrade_response)."""
    path = HERE / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no prompt template {path}")
    return path.read_text(encoding="utf-8").strip()


def digest(name: str, text: str | None = None) -> str:
    """A short hash of template `name` (or of `text`, the form a run uses, e.g. its own system
    prompt); stage manifests record one per template the stage renders."""
    body = (HERE / f"{name}.txt").read_bytes() if text is None else text.encode("utf-8")
    return hashlib.sha256(body).hexdigest()[:16]


def render(template: str, **values: str) -> str:
    """Fill every `{{name}}` in one pass, so text inside a value is never substituted again."""

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template needs a value for {{{{{m.group(1)}}}}}")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(fill, template)
