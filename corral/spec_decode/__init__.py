"""Proposers for speculative decoding (``engine/proposer.py``): n-gram prompt lookup and a draft model."""
