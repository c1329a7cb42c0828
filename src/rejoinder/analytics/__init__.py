"""Post-call analytics: after a call ends, a background job reads its stored (redacted)
transcript and has the configured LLM fill in a form held to a JSON schema.

    fields   the extra fields an agent asks for (``[analytics] fields``)
    schema   the JSON schema, the pydantic models that validate an answer, the prompt
    jobs     the ``call_analytics`` table: one job per call, a row, so it survives a restart
    worker   the background worker: bounded concurrency, retries with a growing pause

Imports nothing heavy here: the configuration reads ``fields``.
"""
