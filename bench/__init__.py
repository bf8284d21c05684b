"""Benchmarks: our stub against its peers, measured in the same run."""
