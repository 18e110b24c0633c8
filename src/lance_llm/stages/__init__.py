"""The LANCE method, one module per step, and the ordered lists of stages the loop runs.

    PREPARE    iteration 0: Seed_0, SFT_0, DPO_0; M_0 = SFT of the base on SFT_0 (train.m0_sft)
    ITERATION  iteration t: review seed -> generate -> clean -> review generated -> annotate -> train

Each stage declares what it reads and writes, the config keys and templates it depends on and
its funnel columns (lance_llm.stage); the loop, funnel, report, export and drift read these lists.
Adding a stage is one module and one entry here (docs/stages.md).
"""

from .annotate import ANNOTATE
from .clean import CLEAN
from .generate import GENERATE
from .prepare import PREPARE as _PREPARE
from .review import REVIEW_GENERATED, REVIEW_SEED
from .train import TRAIN, TRAIN_M0

PREPARE = (_PREPARE, TRAIN_M0)
ITERATION = (REVIEW_SEED, GENERATE, CLEAN, REVIEW_GENERATED, ANNOTATE, TRAIN)


def producer(name: str, stages: tuple = ITERATION) -> str:
    """The name of the stage that writes the record set `name`."""
    for s in stages:
        if name in s.writes:
            return s.name
    raise KeyError(f"no stage writes {name!r}")
