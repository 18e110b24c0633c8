"""Judge reliability: labelled (gold, corrupted) pairs and the metric that checks the model's own
judge against them (`pairs`, `reliability`). See docs/method.md, "Judge reliability"."""
