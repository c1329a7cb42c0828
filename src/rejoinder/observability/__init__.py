"""Logging with the call id in context, and the per-turn trace record."""
