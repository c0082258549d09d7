"""Serving: what sits between clients and the runtime (OpenAI-compatible requests, and later the Triton server).
Like runtime/, it imports no torch."""
