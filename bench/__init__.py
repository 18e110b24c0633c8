"""Benchmarks for lance-llm (`make bench`): each module measures one row of BENCHMARKS.md."""
