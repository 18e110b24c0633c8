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


#: the templates every run uses; a review mode's own ones count only for that mode
CORE = ("system", "review", "new_instruction", "degrade_response")
CRITERIA = ("criteria", "criterion_question", "criterion_response")
MODE_TEMPLATES = {"criteria": CRITERIA, "combined": CRITERIA, "likelihood": ("neutral_instruction",)}


def templates_hash(names: tuple[str, ...] = CORE) -> str:
    """A hash of the templates a run uses, so it redoes the LLM stages when one of them is edited,
    and a template it does not use (a review mode it is not in) never makes it redo anything."""
    h = hashlib.sha256()
    for path in sorted(HERE / f"{name}.txt" for name in names):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def render(template: str, **values: str) -> str:
    """Fill every `{{name}}` in one pass, so text inside a value is never substituted again."""

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template needs a value for {{{{{m.group(1)}}}}}")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(fill, template)
