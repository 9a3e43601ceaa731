"""The fast engine: our own audio decode loop on a static KV cache (see engine.py)."""
