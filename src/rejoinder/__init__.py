"""rejoinder: a self-hostable, latency-first voice agent server."""

__version__ = "0.1.0"
