"""Optional compiled kernels, each beside the pure-torch reference it must match.

``make install`` builds the C++ extension (``python -m corral.kernels.build``); without it every caller
falls back to the reference, so nothing requires a compiler.
"""
