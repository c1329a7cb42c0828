"""The load and latency benchmark: `rejoinder bench`."""
