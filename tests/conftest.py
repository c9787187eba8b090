"""Shared fixtures: tiny random-weight models and the default model, found once per session."""
