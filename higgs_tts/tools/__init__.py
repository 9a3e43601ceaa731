"""Tools beside the serving stack: the benchmark, the checkpoint converter, the tiny test checkpoint."""
