"""lance-llm: the LANCE loop (a language model as its own continuous, self-evolving data engineer).

Start with `lance --help`, `lance_llm.loop.run`, or the stages in `lance_llm.stages`.
"""

__version__ = "0.1.0"
