"""The session manager: a separate process that owns sessions and captured flows."""
