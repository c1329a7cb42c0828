"""No tools here."""

VALUE = 1
