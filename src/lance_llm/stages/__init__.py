"""The LANCE method, one module per step, in the order data flows through them:
review -> generate -> clean -> review -> annotate -> train. Stages are pure functions of records,
config and a backend; the loop (lance_llm.loop) reads and writes the disk."""
