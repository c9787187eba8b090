"""The gateway: one OpenAI-compatible endpoint in front of many replicas and models (docs/gateway.md).

A process of its own that speaks HTTP to its backends and nothing else: it never imports torch or the
engine (an import-linter contract in pyproject.toml holds it to that), so it starts in well under a second.
"""
